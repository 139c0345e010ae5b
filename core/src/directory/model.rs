//! The directory's records (as stored, JSON), its request and response types, roles and
//! names.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_protocol::Timestamp;

use crate::pki::{SecretString, TokenHash};

/// Longest agent or token name.
pub const NAME_MAX_LEN: usize = 63;

/// Checks an agent (or API token) name: `[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}`. Returns why it
/// is refused.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    let Some(first) = bytes.first() else {
        return Err("it is empty");
    };
    if bytes.len() > NAME_MAX_LEN {
        return Err("it is longer than 63 characters");
    }
    if !first.is_ascii_alphanumeric() {
        return Err("it must start with a letter or digit");
    }
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("it may only hold letters, digits, `_`, `.` and `-`");
    }
    Ok(())
}

/// An operator API role (design.md §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Submit, cancel and read tasks; read agents.
    Deployer,
    /// Read-only, including the audit log and the fleet sticker audit.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Admin, Role::Deployer, Role::Auditor];

    /// The role's name: `admin`, `deployer`, `auditor`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Deployer => "deployer",
            Role::Auditor => "auditor",
        }
    }

    /// Whether this role may perform `action`: admin everything; deployer
    /// [`SubmitTask`](Action::SubmitTask), [`CancelTask`](Action::CancelTask),
    /// [`ReadTasks`](Action::ReadTasks) and [`ReadAgents`](Action::ReadAgents); auditor
    /// every [read-only](Action::is_read_only) action.
    pub const fn allows(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Deployer => matches!(
                action,
                Action::SubmitTask | Action::CancelTask | Action::ReadTasks | Action::ReadAgents
            ),
            Role::Auditor => action.is_read_only(),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not `admin`, `deployer` or `auditor`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}; the roles are admin, deployer and auditor")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownRole(s.chars().take(64).collect()))
    }
}

/// What an API call does, for [`Role::allows`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Submit a task (deploy, rollback, inspect, health, sticker read, compose...).
    SubmitTask,
    /// Cancel a task.
    CancelTask,
    /// Read tasks, their events and evidence, and history.
    ReadTasks,
    /// List agents.
    ReadAgents,
    /// Create enrollment tokens, revoke agents.
    ManageAgents,
    /// List API tokens (ids, names, roles; never the tokens).
    ReadTokens,
    /// Create and revoke API tokens.
    ManageTokens,
    /// List registries (host and user name only).
    ReadRegistries,
    /// Store registry credentials.
    ManageRegistries,
    /// Read and verify the audit log.
    ReadAuditLog,
    /// Run the fleet sticker audit (`wharf audit`), which only reads.
    RunAudit,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 11] = [
        Action::SubmitTask,
        Action::CancelTask,
        Action::ReadTasks,
        Action::ReadAgents,
        Action::ManageAgents,
        Action::ReadTokens,
        Action::ManageTokens,
        Action::ReadRegistries,
        Action::ManageRegistries,
        Action::ReadAuditLog,
        Action::RunAudit,
    ];

    /// Whether the action changes nothing (the fleet audit only reads stickers).
    pub const fn is_read_only(self) -> bool {
        matches!(
            self,
            Action::ReadTasks
                | Action::ReadAgents
                | Action::ReadTokens
                | Action::ReadRegistries
                | Action::ReadAuditLog
                | Action::RunAudit
        )
    }
}

/// Who an authenticated API call comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The API token's id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

impl Principal {
    /// Whether the principal's role allows `action`.
    pub fn allows(&self, action: Action) -> bool {
        self.role.allows(action)
    }

    /// How the principal appears as the actor of audit entries: `NAME (token ID)`.
    pub fn actor(&self) -> String {
        format!("{} (token {})", self.name, self.token_id)
    }
}

/// An enrolled agent, as kept in [`Table::Agents`](crate::store::Table::Agents) (JSON,
/// key: the id) and listed by `/v1/agents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's id (in its certificate's SAN `wharf://agent/<id>`).
    pub id: Uuid,
    /// The agent's name.
    pub name: String,
    /// The agent's X25519 public key for credential sealing (hex in JSON).
    #[serde(with = "key32")]
    pub x25519_public: [u8; 32],
    /// Serials (lowercase hex) of the certificates issued to the agent, oldest first; the
    /// last one is current. The last 16 are kept.
    pub cert_serials: Vec<String>,
    /// End of validity of the current certificate.
    pub not_after: Timestamp,
    /// When the agent enrolled.
    pub enrolled_at: Timestamp,
    /// The agent's version, as last reported.
    pub version: String,
    /// The agent's capabilities, as last reported.
    pub capabilities: Vec<String>,
    /// When the agent was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
    /// When the agent was last seen (a session or a heartbeat); kept in the store at a
    /// coarse grain (see [`LAST_SEEN_PERSIST_INTERVAL`](super::LAST_SEEN_PERSIST_INTERVAL)).
    pub last_seen: Option<Timestamp>,
    /// The transport of its last session (`quic` or `poll`).
    pub transport: Option<String>,
}

impl AgentRecord {
    /// Whether the agent was revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }

    /// The serial of the current certificate.
    pub fn current_serial(&self) -> Option<&str> {
        self.cert_serials.last().map(String::as_str)
    }
}

/// `POST /agent/v1/enroll` body (JSON, over server-auth TLS pinning the CA).
#[derive(Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The one-time enrollment token.
    #[serde(with = "secret")]
    pub token: SecretString,
    /// The agent's name; must be the one the token was issued for.
    pub name: String,
    /// A PEM `CERTIFICATE REQUEST` (preferred: proves possession of the key) or a PEM
    /// `PUBLIC KEY`.
    pub csr_pem: String,
    /// The agent's X25519 public key for credential sealing: 64 hex digits (base64 is
    /// accepted too).
    #[serde(with = "key32")]
    pub x25519_public: [u8; 32],
    /// The agent's version.
    pub version: String,
    /// The agent's capabilities.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

impl fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("token", &self.token)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// The answer to an enrollment or a renewal (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The agent's id.
    pub agent_id: Uuid,
    /// The agent's client certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, PEM (the chain to trust for the core's server certificate).
    pub ca_pem: String,
    /// End of the certificate's validity: renew before it.
    pub not_after: Timestamp,
}

/// A one-time enrollment token as stored in
/// [`Table::EnrollTokens`](crate::store::Table::EnrollTokens) (JSON, key: the hash in hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EnrollTokenRecord {
    pub hash: TokenHash,
    pub name: String,
    pub created_at: Timestamp,
    pub created_by: String,
    pub ttl_ms: u64,
    pub expires_at: Timestamp,
    pub used_at: Option<Timestamp>,
    pub agent_id: Option<Uuid>,
}

/// An enrollment token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenInfo {
    /// The agent name it was issued for.
    pub name: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// Who created it.
    pub created_by: String,
    /// When it expires (or expired).
    pub expires_at: Timestamp,
    /// When it was used, if it was.
    pub used_at: Option<Timestamp>,
    /// The agent that enrolled with it, if any.
    pub agent_id: Option<Uuid>,
}

impl From<&EnrollTokenRecord> for EnrollTokenInfo {
    fn from(r: &EnrollTokenRecord) -> Self {
        EnrollTokenInfo {
            name: r.name.clone(),
            created_at: r.created_at,
            created_by: r.created_by.clone(),
            expires_at: r.expires_at,
            used_at: r.used_at,
            agent_id: r.agent_id,
        }
    }
}

/// An API token as stored in [`Table::ApiTokens`](crate::store::Table::ApiTokens) (JSON,
/// key `tok/<id>`; its last use is kept apart under `used/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ApiTokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub hash: TokenHash,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<String>,
}

/// An API token as listed by `/v1/tokens` (never the token itself, nor its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiTokenInfo {
    /// The token's id (what `wharf token revoke` takes).
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it was created.
    pub created_at: Timestamp,
    /// Who created it.
    pub created_by: String,
    /// When it was last used to authenticate (kept at a coarse grain).
    pub last_used: Option<Timestamp>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// Who revoked it.
    pub revoked_by: Option<String>,
}

/// Registry credentials as stored in [`Table::Registries`](crate::store::Table::Registries)
/// (JSON, key: the host): the user name in clear for listing, and `{username, password}`
/// encrypted with AES-256-GCM under the master key, AAD = the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RegistryRecord {
    pub host: String,
    pub username: String,
    /// 12 bytes, hex.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub ciphertext: String,
    pub updated_at: Timestamp,
    pub updated_by: String,
}

/// A registry with stored credentials, as listed by `/v1/registries` (never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryInfo {
    /// The registry host (and port), normalized (`docker.io` for Docker Hub).
    pub host: String,
    /// The user name.
    pub username: String,
    /// When the credentials were last stored.
    pub updated_at: Timestamp,
    /// Who stored them.
    pub updated_by: String,
}

impl From<&RegistryRecord> for RegistryInfo {
    fn from(r: &RegistryRecord) -> Self {
        RegistryInfo {
            host: r.host.clone(),
            username: r.username.clone(),
            updated_at: r.updated_at,
            updated_by: r.updated_by.clone(),
        }
    }
}

/// serde for a `SecretString` as a plain JSON string.
mod secret {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::pki::SecretString;

    pub fn serialize<S: Serializer>(s: &SecretString, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<SecretString, D::Error> {
        Ok(SecretString::new(String::deserialize(de)?))
    }
}

/// Parses a 32-byte key written as 64 hex digits or as base64 (standard or URL-safe,
/// padded or not).
pub fn parse_key32(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    let mut out = [0u8; 32];
    if text.len() == 64 && hex::decode_to_slice(text, &mut out).is_ok() {
        return Some(out);
    }
    let engines = [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ];
    engines.iter().find_map(|e| {
        let bytes = zeroize::Zeroizing::new(e.decode(text).ok()?);
        <[u8; 32]>::try_from(bytes.as_slice()).ok()
    })
}

/// serde for a 32-byte public key: lowercase hex out; hex or base64 in.
mod key32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &[u8; 32], ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(&hex::encode(key))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(de)?;
        super::parse_key32(&text).ok_or_else(|| {
            serde::de::Error::custom(
                "an X25519 public key is 32 bytes written as 64 hex digits or as base64",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "web-1", "Web_1.prod", "0", &"a".repeat(63)] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            ".a",
            "_a",
            "a b",
            "a/b",
            "é",
            &"a".repeat(64),
            "a\n",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roles() {
        for a in Action::ALL {
            assert!(Role::Admin.allows(a));
            assert_eq!(Role::Auditor.allows(a), a.is_read_only(), "{a:?}");
        }
        let deployer: Vec<Action> = Action::ALL
            .into_iter()
            .filter(|a| Role::Deployer.allows(*a))
            .collect();
        assert_eq!(
            deployer,
            [
                Action::SubmitTask,
                Action::CancelTask,
                Action::ReadTasks,
                Action::ReadAgents
            ]
        );
        assert!(!Role::Auditor.allows(Action::SubmitTask));
        assert!(Role::Auditor.allows(Action::ReadAuditLog));
        assert!(!Role::Deployer.allows(Action::ReadAuditLog));
        assert_eq!("Deployer".parse::<Role>(), Ok(Role::Deployer));
        assert!("root"
            .parse::<Role>()
            .unwrap_err()
            .to_string()
            .contains("admin, deployer and auditor"));
        assert_eq!(
            serde_json::to_string(&Role::Auditor).unwrap(),
            "\"auditor\""
        );
    }

    #[test]
    fn enroll_request_json() {
        let json = serde_json::json!({
            "token": "wharf-enroll-abc",
            "name": "web-1",
            "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----",
            "x25519_public": "11".repeat(32),
            "version": "0.1.0",
        });
        let req: EnrollRequest = serde_json::from_value(json).unwrap();
        assert_eq!(req.x25519_public, [0x11; 32]);
        assert!(req.capabilities.is_empty());
        assert!(!format!("{req:?}").contains("wharf-enroll-abc"));
        let back = serde_json::to_value(&req).unwrap();
        assert_eq!(back["token"], "wharf-enroll-abc");
        assert_eq!(back["x25519_public"], "11".repeat(32));

        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key32(&b64), Some([7; 32]));
        assert_eq!(parse_key32(b64.trim_end_matches('=')), Some([7; 32]));
        assert_eq!(parse_key32("abcd"), None);
    }
}
