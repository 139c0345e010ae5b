//! The directory (design.md §3, PKI, Credentials, Operator API): enrolled agents,
//! one-time enrollment tokens, operator API tokens with roles, and registry credentials
//! encrypted at rest.
//!
//! # Shape
//!
//! [`Directory`] is a cheap handle (clone it into every task) over the store, the CA,
//! the shared [`RevocationList`] of the TLS verifiers, the [`MasterKey`] and the
//! [`AuditLog`]. Agents, tokens and registries are few, so all of them are loaded into
//! memory at [`open`](Directory::open) and every change is written through:
//!
//! - every change is committed to the store, **together with its audit entry in the same
//!   batch**, before the method returns; the in-memory view is updated only after the
//!   commit succeeded, so a failed commit changes nothing;
//! - changes are serialized by one async lock, so check-then-act steps (burning a token,
//!   refusing a taken name, keeping one admin token) cannot race;
//! - reads ([`authenticate`](Directory::authenticate), [`agent_by_id`](Directory::agent_by_id),
//!   listings...) are synchronous and never wait for a commit.
//!
//! The directory's tables live in the audit log's store ([`AuditLog::store`]), which is
//! what lets a change and its audit entry commit as one batch.
//!
//! # Storage
//!
//! | table | key | value (JSON) |
//! |---|---|---|
//! | [`Table::Agents`] | agent id | [`AgentRecord`] |
//! | [`Table::EnrollTokens`] | SHA-256 of the token, hex | name, expiry, used flag (never the token) |
//! | [`Table::ApiTokens`] | `tok/<id>`, `used/<id>` | name, role, SHA-256 of the token; last use |
//! | [`Table::Registries`] | host | user name, AES-256-GCM ciphertext of `{username, password}` |
//! | [`Table::Meta`] | `directory.master_key_check` | a known text encrypted under the master key |
//!
//! Token plaintexts carry 256 random bits, so their unsalted SHA-256 is stored and looked
//! up directly (see [`crate::pki`]); the presented token is then compared with the stored
//! hash in constant time.
//!
//! # Secrets
//!
//! Token plaintexts and registry passwords are [`SecretString`]s (wiped on drop, redacted
//! in `Debug`). A registry password is encrypted before it is put into a batch and is
//! decrypted only in memory by [`credentials_for_registry`](Directory::credentials_for_registry),
//! for sealing to an agent at dispatch. No error message, log line or audit entry holds
//! one.

mod crypto;
mod error;
mod model;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;
use wharf_protocol::seal::{RegistryCredentials, SealError};
use wharf_protocol::{ImageRef, Timestamp};
use zeroize::Zeroizing;

use crate::audit::{AuditLog, AuditRecord, Clock};
use crate::pki::{
    AgentKeyRequest, ApiToken, CertificateAuthority, EnrollToken, RevocationList, SecretString,
    TokenHash, DEFAULT_AGENT_CERT_VALIDITY,
};
use crate::store::{Batch, Store, StoreError, StoreExt, Table};

pub use crypto::MasterKey;
pub use error::{DirectoryError, ErrorKind};
pub use model::{
    check_name, parse_key32, Action, AgentRecord, ApiTokenInfo, EnrollRequest, EnrollResponse,
    EnrollTokenInfo, Principal, RegistryInfo, Role, UnknownRole, NAME_MAX_LEN,
};
use model::{ApiTokenRecord, EnrollTokenRecord, RegistryRecord};

/// Result alias of the directory.
pub type Result<T, E = DirectoryError> = std::result::Result<T, E>;

/// Default lifetime of an enrollment token (`wharf agent token create` without `--ttl`).
pub const DEFAULT_ENROLL_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime of an enrollment token: 30 days.
pub const MAX_ENROLL_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Enrollment tokens are forgotten this long after they expired (used or not); until then
/// a late use gets "expired" or "already used" rather than "unknown".
pub const ENROLL_TOKEN_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often core writes the agents' `last_seen` times (kept exact in memory; see
/// [`Directory::persist_last_seen`]).
pub const LAST_SEEN_PERSIST_INTERVAL: Duration = Duration::from_secs(30);
/// Most agent records one batch of [`Directory::persist_last_seen`] writes.
pub const LAST_SEEN_BATCH: usize = 1024;
/// An API token's `last_used` is written to the store at most this often.
pub const LAST_USED_PERSIST_INTERVAL: Duration = Duration::from_secs(60);
/// Certificate serials kept per agent.
pub const MAX_CERT_SERIALS: usize = 16;
/// Name of the admin token created by [`Directory::bootstrap_admin_token`].
pub const BOOTSTRAP_ADMIN_NAME: &str = "admin";
/// Actor of the entries core writes on its own behalf.
pub const CORE_ACTOR: &str = "wharf-core";
/// The registry host of images without one (Docker Hub).
pub const DOCKER_HUB: &str = "docker.io";

const MASTER_KEY_CHECK_KEY: &[u8] = b"directory.master_key_check";
const MASTER_KEY_CHECK_AAD: &[u8] = b"wharf master key check";
const MASTER_KEY_CHECK_TEXT: &[u8] = b"wharf.master-key/v1";
const API_TOKEN_PREFIX: &[u8] = b"tok/";
const API_USED_PREFIX: &[u8] = b"used/";

const MAX_CSR_LEN: usize = 16 * 1024;
const MAX_VERSION_LEN: usize = 64;
const MAX_CAPABILITIES: usize = 64;
const MAX_CAPABILITY_LEN: usize = 64;
const MAX_TRANSPORT_LEN: usize = 16;
const MAX_USERNAME_LEN: usize = 256;
const MAX_PASSWORD_LEN: usize = 16 * 1024;
const MAX_HOST_LEN: usize = 255;
const MAX_ACTOR_LEN: usize = 256;

/// What [`Directory::open`] needs.
pub struct DirectoryConfig {
    /// The audit log; the directory keeps its tables in the log's store.
    pub audit: AuditLog,
    /// The CA that issues agent certificates.
    pub ca: Arc<CertificateAuthority>,
    /// The master key for registry credentials.
    pub master_key: MasterKey,
    /// The revocation set shared with the TLS verifiers; filled with the revoked agents
    /// at open.
    pub revocations: RevocationList,
    /// The wall clock (tests inject one).
    pub clock: Clock,
    /// Validity of issued agent certificates (default 30 days).
    pub agent_cert_validity: Duration,
}

impl DirectoryConfig {
    /// A configuration with a new, empty revocation list, the audit log's clock and
    /// 30-day agent certificates.
    pub fn new(audit: AuditLog, ca: Arc<CertificateAuthority>, master_key: MasterKey) -> Self {
        DirectoryConfig {
            clock: audit.clock().clone(),
            audit,
            ca,
            master_key,
            revocations: RevocationList::new(),
            agent_cert_validity: DEFAULT_AGENT_CERT_VALIDITY,
        }
    }

    /// Uses this revocation list (the one the TLS server configs check).
    pub fn with_revocations(mut self, revocations: RevocationList) -> Self {
        self.revocations = revocations;
        self
    }

    /// Uses this clock.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Issues agent certificates valid for `validity`.
    pub fn with_agent_cert_validity(mut self, validity: Duration) -> Self {
        self.agent_cert_validity = validity;
        self
    }
}

impl fmt::Debug for DirectoryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectoryConfig")
            .field("ca", &self.ca)
            .field("agent_cert_validity", &self.agent_cert_validity)
            .finish_non_exhaustive()
    }
}

/// The last use of an API token: exact in memory, written at a coarse grain.
#[derive(Debug, Clone, Copy)]
struct LastUse {
    at: Timestamp,
    persisted: Option<Timestamp>,
}

/// The in-memory view of the directory's tables.
#[derive(Default)]
struct Cache {
    agents: HashMap<Uuid, AgentRecord>,
    /// The ids of the agents of each name (a name is enrolled again after a revocation);
    /// put agents with [`Cache::put_agent`] so that it stays in step.
    agents_by_name: HashMap<String, Vec<Uuid>>,
    /// `last_seen` as last written to the store, per agent.
    seen_persisted: HashMap<Uuid, Option<Timestamp>>,
    enroll_tokens: HashMap<TokenHash, EnrollTokenRecord>,
    api_tokens: HashMap<String, ApiTokenRecord>,
    api_by_hash: HashMap<TokenHash, String>,
    registries: BTreeMap<String, RegistryRecord>,
}

impl Cache {
    fn load(store: &dyn Store) -> Result<Cache, StoreError> {
        let mut cache = Cache::default();
        for (_, agent) in store.scan_prefix_json::<AgentRecord>(Table::Agents, b"")? {
            cache.seen_persisted.insert(agent.id, agent.last_seen);
            cache.put_agent(agent);
        }
        for (_, token) in store.scan_prefix_json::<EnrollTokenRecord>(Table::EnrollTokens, b"")? {
            cache.enroll_tokens.insert(token.hash, token);
        }
        for (_, token) in
            store.scan_prefix_json::<ApiTokenRecord>(Table::ApiTokens, API_TOKEN_PREFIX)?
        {
            cache.api_by_hash.insert(token.hash, token.id.clone());
            cache.api_tokens.insert(token.id.clone(), token);
        }
        for (_, reg) in store.scan_prefix_json::<RegistryRecord>(Table::Registries, b"")? {
            cache.registries.insert(reg.host.clone(), reg);
        }
        Ok(cache)
    }

    /// Inserts or replaces an agent's record (an agent's name never changes).
    fn put_agent(&mut self, agent: AgentRecord) {
        let ids = self.agents_by_name.entry(agent.name.clone()).or_default();
        if !ids.contains(&agent.id) {
            ids.push(agent.id);
        }
        self.agents.insert(agent.id, agent);
    }

    /// The agents with this name (a submit asks for every task: no scan of all agents).
    fn agents_named<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a AgentRecord> {
        self.agents_by_name
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|id| self.agents.get(id))
    }

    /// The non-revoked agent with this name, if any.
    fn live_agent_named(&self, name: &str) -> Option<&AgentRecord> {
        self.agents_named(name).find(|a| !a.is_revoked())
    }

    /// The agent with this name: the live one, else the last one enrolled.
    fn agent_named(&self, name: &str) -> Option<&AgentRecord> {
        self.agents_named(name)
            .max_by_key(|a| (!a.is_revoked(), a.enrolled_at, a.id))
    }

    fn live_admin_tokens(&self) -> impl Iterator<Item = &ApiTokenRecord> {
        self.api_tokens
            .values()
            .filter(|t| t.role == Role::Admin && t.revoked_at.is_none())
    }
}

struct Inner {
    store: Arc<dyn Store>,
    audit: AuditLog,
    ca: Arc<CertificateAuthority>,
    revocations: RevocationList,
    master_key: MasterKey,
    clock: Clock,
    agent_cert_validity: Duration,
    /// Serializes every change (check, commit, then update the cache).
    write: tokio::sync::Mutex<()>,
    cache: RwLock<Cache>,
    last_used: Mutex<HashMap<String, LastUse>>,
}

/// Agents, enrollment, API tokens and registry credentials; see the module docs.
///
/// Cheap to clone: clones share one directory.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.read();
        f.debug_struct("Directory")
            .field("agents", &cache.agents.len())
            .field("api_tokens", &cache.api_tokens.len())
            .field("registries", &cache.registries.len())
            .finish_non_exhaustive()
    }
}

/// The stored master-key check: a known text encrypted under the master key.
#[derive(Serialize, Deserialize)]
struct KeyCheck {
    nonce: String,
    ciphertext: String,
}

/// The encrypted part of a registry record.
#[derive(Serialize, Deserialize)]
struct RegistrySecret {
    username: String,
    password: String,
}

impl Drop for RegistrySecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

fn ts(t: SystemTime) -> Timestamp {
    Timestamp::from_system_time(t)
}

/// `later - earlier`, zero when `later` is not later.
/// `agent` (the record of `id`, if any) if it exists and is not revoked.
fn check_live(id: Uuid, agent: Option<&AgentRecord>) -> Result<&AgentRecord> {
    let agent = agent.ok_or_else(|| DirectoryError::UnknownAgent {
        agent: id.to_string(),
    })?;
    match agent.revoked_at {
        Some(revoked_at) => Err(DirectoryError::AgentRevoked {
            name: agent.name.clone(),
            agent_id: id.to_string(),
            revoked_at,
        }),
        None => Ok(agent),
    }
}

fn elapsed(later: Timestamp, earlier: Timestamp) -> Duration {
    Duration::from_millis(u64::try_from(later.0.saturating_sub(earlier.0)).unwrap_or(0))
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

fn check_agent_name(name: &str) -> Result<()> {
    check_name(name).map_err(|reason| DirectoryError::InvalidName {
        what: "agent",
        name: name.chars().take(100).collect(),
        reason,
    })
}

fn check_text(field: &'static str, value: &str, max: usize, allow_empty: bool) -> Result<()> {
    if !allow_empty && value.is_empty() {
        return Err(DirectoryError::invalid(field, "it is empty"));
    }
    if value.len() > max {
        return Err(DirectoryError::invalid(
            field,
            format!("it is longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(DirectoryError::invalid(
            field,
            "it contains control characters",
        ));
    }
    Ok(())
}

fn check_capabilities(capabilities: &[String]) -> Result<()> {
    if capabilities.len() > MAX_CAPABILITIES {
        return Err(DirectoryError::invalid(
            "capabilities",
            format!("more than {MAX_CAPABILITIES} capabilities"),
        ));
    }
    capabilities
        .iter()
        .try_for_each(|c| check_text("capabilities", c, MAX_CAPABILITY_LEN, false))
}

/// Refuses an X25519 public key that credentials cannot be sealed to (a low-order point,
/// which would give an all-zero shared secret), by trying the real sealing code on it.
fn check_x25519_public(key: &[u8; 32]) -> Result<()> {
    match wharf_protocol::seal::seal(&[], key, Uuid::nil(), "") {
        Ok(_) => Ok(()),
        Err(SealError::WeakKey) => Err(DirectoryError::invalid(
            "x25519_public",
            "it is a low-order point that credentials cannot be sealed to; the agent must \
             generate a fresh X25519 key",
        )),
        Err(_) => Err(DirectoryError::Crypto {
            what: "check the agent's X25519 key",
        }),
    }
}

/// Normalizes a registry host as written by an operator or found in an image reference:
/// trims, drops an `https://` (or `http://`) scheme and a trailing `/`, lowercases, and
/// maps Docker Hub's aliases (`index.docker.io`, `registry-1.docker.io`,
/// `registry.hub.docker.com`) to `docker.io`. Accepts `HOST[:PORT]` with letters,
/// digits, `-` and `.` in the host.
pub fn normalize_registry_host(host: &str) -> Result<String> {
    let mut h = host.trim();
    for scheme in ["https://", "http://"] {
        if h.get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
        {
            h = &h[scheme.len()..];
        }
    }
    let h = h.trim_end_matches('/').to_ascii_lowercase();
    let invalid = |reason: &str| {
        DirectoryError::invalid(
            "registry host",
            format!(
                "{:?} {reason}; write HOST or HOST:PORT, e.g. registry.example.com:5000",
                host.chars().take(100).collect::<String>()
            ),
        )
    };
    if h.is_empty() {
        return Err(invalid("is empty"));
    }
    if h.len() > MAX_HOST_LEN {
        return Err(invalid("is too long"));
    }
    let (name, port) = match h.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (h.as_str(), None),
    };
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.'])
        && !name.ends_with(['-', '.']);
    if !name_ok {
        return Err(invalid(
            "is not a host name (letters, digits, `-` and `.` only)",
        ));
    }
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("has an invalid port"));
        }
    }
    Ok(match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => h,
    })
}

impl Directory {
    /// Opens the directory: loads agents, tokens and registries from the audit log's
    /// store, checks the master key against the one the store was set up with (recording
    /// it on first start), and adds every revoked agent to the revocation list.
    ///
    /// Errors: [`DirectoryError::MasterKeyMismatch`] when the master key is not the
    /// original one; [`DirectoryError::Store`] when a record does not decode (the
    /// message names the table and key).
    pub async fn open(config: DirectoryConfig) -> Result<Directory> {
        let store = config.audit.store().clone();
        check_master_key(store.as_ref(), &config.master_key).await?;
        let cache = Cache::load(store.as_ref())?;
        for agent in cache.agents.values().filter(|a| a.is_revoked()) {
            config.revocations.revoke_agent(&agent.id.to_string());
        }
        let last_used = store
            .scan_prefix_json::<Timestamp>(Table::ApiTokens, API_USED_PREFIX)?
            .into_iter()
            .filter_map(|(key, at)| {
                let id = String::from_utf8(key.get(API_USED_PREFIX.len()..)?.to_vec()).ok()?;
                Some((
                    id,
                    LastUse {
                        at,
                        persisted: Some(at),
                    },
                ))
            })
            .collect();
        Ok(Directory {
            inner: Arc::new(Inner {
                store,
                audit: config.audit,
                ca: config.ca,
                revocations: config.revocations,
                master_key: config.master_key,
                clock: config.clock,
                agent_cert_validity: config.agent_cert_validity,
                write: tokio::sync::Mutex::new(()),
                cache: RwLock::new(cache),
                last_used: Mutex::new(last_used),
            }),
        })
    }

    /// The revocation list the directory maintains (share it with the TLS configs).
    pub fn revocations(&self) -> &RevocationList {
        &self.inner.revocations
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.inner.ca
    }

    /// The audit log the directory writes to.
    pub fn audit(&self) -> &AuditLog {
        &self.inner.audit
    }

    fn now(&self) -> SystemTime {
        (self.inner.clock)()
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        // Cache updates are plain inserts after a successful commit: a panic cannot leave
        // one half-done, so a poisoned lock still holds consistent data.
        self.inner
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_cache(&self) -> RwLockWriteGuard<'_, Cache> {
        self.inner
            .cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Commits `batch` with the audit entry for `record`.
    async fn commit(&self, batch: Batch, record: AuditRecord) -> Result<()> {
        self.inner.audit.commit_with(batch, record).await?;
        Ok(())
    }

    // ---- enrollment tokens ----

    /// Creates a one-time enrollment token for the agent `name`, valid for `ttl` (at most
    /// [`MAX_ENROLL_TOKEN_TTL`]). Returns the token (show it once) and its expiry.
    ///
    /// Refuses an invalid name ([`DirectoryError::InvalidName`]) and a name an enrolled,
    /// non-revoked agent has ([`DirectoryError::NameTaken`]). Tokens that expired more
    /// than [`ENROLL_TOKEN_RETENTION`] ago are removed in the same batch.
    pub async fn create_enroll_token(
        &self,
        name: &str,
        ttl: Duration,
        created_by: &str,
    ) -> Result<(SecretString, Timestamp)> {
        check_agent_name(name)?;
        check_text("actor", created_by, MAX_ACTOR_LEN, false)?;
        if ttl.is_zero() || ttl > MAX_ENROLL_TOKEN_TTL {
            return Err(DirectoryError::invalid(
                "ttl",
                "an enrollment token lives between 1 second and 30 days (e.g. --ttl 1h)",
            ));
        }
        let _write = self.inner.write.lock().await;
        let now_sys = self.now();
        let now = ts(now_sys);
        let expires_at = ts(now_sys + ttl);
        let purge: Vec<TokenHash> = {
            let cache = self.read();
            if let Some(agent) = cache.live_agent_named(name) {
                return Err(DirectoryError::NameTaken {
                    name: name.to_string(),
                    agent_id: agent.id.to_string(),
                });
            }
            cache
                .enroll_tokens
                .values()
                .filter(|t| elapsed(now, t.expires_at) > ENROLL_TOKEN_RETENTION)
                .map(|t| t.hash)
                .collect()
        };
        let (token, hash) = EnrollToken::generate()?;
        let record = EnrollTokenRecord {
            hash,
            name: name.to_string(),
            created_at: now,
            created_by: created_by.to_string(),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            expires_at,
            used_at: None,
            agent_id: None,
        };
        let mut batch = Batch::new();
        for old in &purge {
            batch.remove(Table::EnrollTokens, old.to_hex().into_bytes());
        }
        batch.put_json(Table::EnrollTokens, hash.to_hex().into_bytes(), &record)?;
        let audit = AuditRecord::new(created_by, "agent.token.create", name).with_detail(json!({
            "expires_at": expires_at.to_string(),
            "ttl_secs": ttl.as_secs(),
        }));
        self.commit(batch, audit).await?;
        let mut cache = self.write_cache();
        for old in &purge {
            cache.enroll_tokens.remove(old);
        }
        cache.enroll_tokens.insert(hash, record);
        Ok((token, expires_at))
    }

    /// Enrollment tokens that are still remembered (see [`ENROLL_TOKEN_RETENTION`]), by
    /// creation time; never the tokens themselves.
    pub fn list_enroll_tokens(&self) -> Vec<EnrollTokenInfo> {
        let mut out: Vec<EnrollTokenInfo> = self
            .read()
            .enroll_tokens
            .values()
            .map(EnrollTokenInfo::from)
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
        out
    }

    // ---- agents ----

    /// Enrolls an agent (`POST /agent/v1/enroll`).
    ///
    /// The token is looked up by its hash and compared in constant time; it must be
    /// known ([`DirectoryError::EnrollTokenUnknown`]), unused
    /// ([`EnrollTokenUsed`](DirectoryError::EnrollTokenUsed)), unexpired
    /// ([`EnrollTokenExpired`](DirectoryError::EnrollTokenExpired)) and issued for
    /// `request.name` ([`EnrollTokenWrongName`](DirectoryError::EnrollTokenWrongName)); no
    /// live agent may have the name ([`NameTaken`](DirectoryError::NameTaken)). Everything
    /// is checked (CSR, X25519 key, version...) before the token is burned, so a
    /// malformed request leaves the token usable. The agent gets a new UUID v4 and a
    /// client certificate from the CA; the agent record, the burned token and the audit
    /// entry are committed in one batch.
    pub async fn enroll(&self, request: EnrollRequest) -> Result<EnrollResponse> {
        check_agent_name(&request.name)?;
        check_text("version", &request.version, MAX_VERSION_LEN, false)?;
        check_capabilities(&request.capabilities)?;
        if request.csr_pem.len() > MAX_CSR_LEN {
            return Err(DirectoryError::invalid(
                "csr_pem",
                format!("it is longer than {MAX_CSR_LEN} bytes"),
            ));
        }
        let presented = request.token.expose().trim();

        let _write = self.inner.write.lock().await;
        let now_sys = self.now();
        let now = ts(now_sys);
        let mut token = {
            let cache = self.read();
            let token = cache
                .enroll_tokens
                .get(&EnrollToken::hash(presented))
                .filter(|t| EnrollToken::verify(presented, &t.hash))
                .cloned()
                .ok_or(DirectoryError::EnrollTokenUnknown)?;
            if let Some(used_at) = token.used_at {
                return Err(DirectoryError::EnrollTokenUsed {
                    name: token.name,
                    used_at,
                });
            }
            if now >= token.expires_at {
                return Err(DirectoryError::EnrollTokenExpired {
                    name: token.name,
                    expired_at: token.expires_at,
                });
            }
            if token.name != request.name {
                return Err(DirectoryError::EnrollTokenWrongName {
                    token_name: token.name,
                    requested: request.name,
                });
            }
            if let Some(agent) = cache.live_agent_named(&request.name) {
                return Err(DirectoryError::NameTaken {
                    name: request.name,
                    agent_id: agent.id.to_string(),
                });
            }
            token
        };
        check_x25519_public(&request.x25519_public)?;

        let id = Uuid::new_v4();
        let cert = self.inner.ca.issue_agent_cert(
            &id.to_string(),
            &request.name,
            AgentKeyRequest::from_pem(&request.csr_pem),
            now_sys,
            self.inner.agent_cert_validity,
        )?;
        let not_after = ts(cert.not_after);
        let agent = AgentRecord {
            id,
            name: request.name.clone(),
            x25519_public: request.x25519_public,
            cert_serials: vec![cert.serial.clone()],
            not_after,
            enrolled_at: now,
            version: request.version.clone(),
            capabilities: request.capabilities.clone(),
            revoked_at: None,
            revoked_by: None,
            last_seen: None,
            transport: None,
        };
        token.used_at = Some(now);
        token.agent_id = Some(id);

        let mut batch = Batch::new();
        batch.put_json(Table::Agents, id.to_string().into_bytes(), &agent)?;
        batch.put_json(
            Table::EnrollTokens,
            token.hash.to_hex().into_bytes(),
            &token,
        )?;
        let audit = AuditRecord::new(
            format!("agent:{}", request.name),
            "agent.enroll",
            &request.name,
        )
        .with_detail(json!({
            "agent_id": id.to_string(),
            "cert_serial": cert.serial,
            "not_after": not_after.to_string(),
            "version": request.version,
            "capabilities": request.capabilities,
            "token_created_by": token.created_by,
        }));
        self.commit(batch, audit).await?;

        let mut cache = self.write_cache();
        cache.enroll_tokens.insert(token.hash, token);
        cache.seen_persisted.insert(id, None);
        cache.put_agent(agent);
        drop(cache);
        Ok(EnrollResponse {
            agent_id: id,
            cert_pem: cert.pem,
            ca_pem: self.inner.ca.cert_pem().to_string(),
            not_after,
        })
    }

    /// Issues a new certificate to a live agent (renewal over mTLS; the caller has
    /// authenticated the agent by its current certificate) and records its serial.
    ///
    /// [`UnknownAgent`](DirectoryError::UnknownAgent) or
    /// [`AgentRevoked`](DirectoryError::AgentRevoked) otherwise.
    pub async fn renew(&self, agent_id: Uuid, csr_pem: &str) -> Result<EnrollResponse> {
        if csr_pem.len() > MAX_CSR_LEN {
            return Err(DirectoryError::invalid(
                "csr_pem",
                format!("it is longer than {MAX_CSR_LEN} bytes"),
            ));
        }
        let _write = self.inner.write.lock().await;
        let mut agent = self.live_agent(agent_id)?;
        let now_sys = self.now();
        let cert = self.inner.ca.issue_agent_cert(
            &agent_id.to_string(),
            &agent.name,
            AgentKeyRequest::from_pem(csr_pem),
            now_sys,
            self.inner.agent_cert_validity,
        )?;
        let not_after = ts(cert.not_after);
        agent.cert_serials.push(cert.serial.clone());
        if agent.cert_serials.len() > MAX_CERT_SERIALS {
            let excess = agent.cert_serials.len() - MAX_CERT_SERIALS;
            agent.cert_serials.drain(..excess);
        }
        agent.not_after = not_after;
        let mut batch = Batch::new();
        batch.put_json(Table::Agents, agent_id.to_string().into_bytes(), &agent)?;
        let audit = AuditRecord::new(format!("agent:{}", agent.name), "agent.renew", &agent.name)
            .with_detail(json!({
                "agent_id": agent_id.to_string(),
                "cert_serial": cert.serial,
                "not_after": not_after.to_string(),
            }));
        self.commit(batch, audit).await?;
        self.write_cache().put_agent(agent);
        Ok(EnrollResponse {
            agent_id,
            cert_pem: cert.pem,
            ca_pem: self.inner.ca.cert_pem().to_string(),
            not_after,
        })
    }

    /// The agent `id`, which must exist and not be revoked.
    fn live_agent(&self, id: Uuid) -> Result<AgentRecord> {
        let cache = self.read();
        check_live(id, cache.agents.get(&id)).cloned()
    }

    /// Every agent ever enrolled (revoked ones included), by name then enrollment time.
    pub fn list_agents(&self) -> Vec<AgentRecord> {
        let mut out: Vec<AgentRecord> = self.read().agents.values().cloned().collect();
        out.sort_by(|a, b| (&a.name, a.enrolled_at, a.id).cmp(&(&b.name, b.enrolled_at, b.id)));
        out
    }

    /// The agent with this id.
    pub fn agent_by_id(&self, id: Uuid) -> Option<AgentRecord> {
        self.read().agents.get(&id).cloned()
    }

    /// The agent with this name: the live one, or else the most recently enrolled revoked
    /// one.
    pub fn agent_by_name(&self, name: &str) -> Option<AgentRecord> {
        self.read().agent_named(name).cloned()
    }

    /// Records a session of a live agent (its `Hello`, or a poll): `last_seen = now`,
    /// and the version, capabilities and transport it reported. Returns the updated
    /// record.
    ///
    /// A change of version, capabilities or transport is written at once (awaited).
    /// `last_seen` alone is kept in memory only: a session of an agent whose facts did not
    /// change writes nothing and waits for nothing (after a restart, 10,000 reconnecting
    /// agents must not queue behind 10,000 flushes); [`persist_last_seen`](Self::persist_last_seen)
    /// writes the times in batches (every [`LAST_SEEN_PERSIST_INTERVAL`] with
    /// [`spawn_last_seen_writer`](Self::spawn_last_seen_writer)).
    /// [`AgentRevoked`](DirectoryError::AgentRevoked) for a revoked agent: refuse the
    /// session.
    pub async fn record_session(
        &self,
        agent_id: Uuid,
        version: &str,
        capabilities: &[String],
        transport: &str,
        now: SystemTime,
    ) -> Result<AgentRecord> {
        check_text("version", version, MAX_VERSION_LEN, false)?;
        check_capabilities(capabilities)?;
        check_text("transport", transport, MAX_TRANSPORT_LEN, false)?;
        let same = |agent: &AgentRecord| {
            agent.version == version
                && agent.capabilities == capabilities
                && agent.transport.as_deref() == Some(transport)
        };
        if let Some(agent) = self.note_seen(agent_id, ts(now), same)? {
            return Ok(agent);
        }
        // The facts changed: write them (with the last-seen time) and wait.
        let _write = self.inner.write.lock().await;
        let mut agent = self.live_agent(agent_id)?;
        agent.version = version.to_string();
        agent.capabilities = capabilities.to_vec();
        agent.transport = Some(transport.to_string());
        agent.last_seen = Some(agent.last_seen.map_or(ts(now), |seen| seen.max(ts(now))));
        let mut batch = Batch::new();
        batch.put_json(Table::Agents, agent_id.to_string().into_bytes(), &agent)?;
        self.inner.store.commit(batch).await?;
        let mut cache = self.write_cache();
        cache.seen_persisted.insert(agent_id, agent.last_seen);
        // A concurrent `note_seen` may have moved the time on meanwhile: keep the later.
        if let Some(current) = cache.agents.get(&agent_id) {
            agent.last_seen = agent.last_seen.max(current.last_seen);
        }
        cache.put_agent(agent.clone());
        Ok(agent)
    }

    /// Records that a live agent was seen at `now` (a heartbeat): in memory only, like the
    /// last-seen time of [`record_session`](Self::record_session).
    pub async fn touch(&self, agent_id: Uuid, now: SystemTime) -> Result<AgentRecord> {
        self.note_seen(agent_id, ts(now), |_| true)?
            .ok_or_else(|| DirectoryError::UnknownAgent {
                agent: agent_id.to_string(),
            })
    }

    /// Moves the in-memory `last_seen` of the live agent to `now` (never back) if `same`
    /// says its recorded facts stand, and returns the record; `None` if they do not (the
    /// caller writes them). Checked and updated in place under the cache lock, so a
    /// concurrent revocation is never overwritten.
    fn note_seen(
        &self,
        agent_id: Uuid,
        now: Timestamp,
        same: impl FnOnce(&AgentRecord) -> bool,
    ) -> Result<Option<AgentRecord>> {
        let mut cache = self.write_cache();
        let agent = cache.agents.get_mut(&agent_id);
        check_live(agent_id, agent.as_deref())?;
        // (`check_live` found it; `None` would only send the caller the slow way.)
        let Some(agent) = agent else {
            return Ok(None);
        };
        if !same(agent) {
            return Ok(None);
        }
        agent.last_seen = Some(agent.last_seen.map_or(now, |seen| seen.max(now)));
        Ok(Some(agent.clone()))
    }

    /// Writes the in-memory `last_seen` of every agent whose time moved since it was last
    /// written, in batches of at most [`LAST_SEEN_BATCH`] agents (one flush each, shared
    /// with whatever else commits at the time). Returns how many agents were written.
    ///
    /// Crash safety: `last_seen` is not an acknowledged state change (nothing is answered
    /// or decided on it being durable), so a crash loses at most the times since the
    /// last call: after a restart an agent shows the older time until it is next seen.
    ///
    /// # Errors
    ///
    /// The store failed.
    pub async fn persist_last_seen(&self) -> Result<usize> {
        let dirty = |cache: &Cache, agent: &AgentRecord| {
            let persisted = cache.seen_persisted.get(&agent.id).copied().flatten();
            agent.last_seen.is_some() && agent.last_seen > persisted
        };
        let ids: Vec<Uuid> = {
            let cache = self.read();
            cache
                .agents
                .values()
                .filter(|agent| dirty(&cache, agent))
                .map(|agent| agent.id)
                .collect()
        };
        let mut written = 0;
        for chunk in ids.chunks(LAST_SEEN_BATCH) {
            let (commit, seen) = {
                // Under the write lock, so that the batch is submitted in order with the
                // other writers of agent records: a later revocation (submitted after
                // this batch) wins on disk as it does in memory.
                let _write = self.inner.write.lock().await;
                let cache = self.read();
                let mut batch = Batch::new();
                let mut seen = Vec::with_capacity(chunk.len());
                for agent in chunk.iter().filter_map(|id| cache.agents.get(id)) {
                    if dirty(&cache, agent) {
                        batch.put_json(Table::Agents, agent.id.to_string().into_bytes(), agent)?;
                        seen.push((agent.id, agent.last_seen));
                    }
                }
                if seen.is_empty() {
                    continue;
                }
                (self.inner.store.commit(batch), seen)
            };
            commit.await?;
            let mut cache = self.write_cache();
            for (id, at) in &seen {
                let persisted = cache.seen_persisted.entry(*id).or_insert(None);
                *persisted = (*persisted).max(*at);
            }
            written += seen.len();
        }
        Ok(written)
    }

    /// Runs [`persist_last_seen`](Self::persist_last_seen) every `every` until the
    /// directory is dropped (the task holds no strong reference to it). Must be called
    /// inside a tokio runtime. A failed write is logged and retried at the next tick.
    pub fn spawn_last_seen_writer(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let directory = Directory { inner };
                if let Err(error) = directory.persist_last_seen().await {
                    tracing::warn!(%error, "could not write the agents' last-seen times; retrying later");
                }
            }
        })
    }

    /// Revokes an agent given by name (or id): durable, then its id is added to the
    /// revocation list so that every later handshake with any of its certificates fails.
    /// The caller closes its live connections.
    ///
    /// Revoking a revoked agent changes nothing and returns its record.
    pub async fn revoke_agent(&self, name_or_id: &str, by: &str) -> Result<AgentRecord> {
        check_text("actor", by, MAX_ACTOR_LEN, false)?;
        let _write = self.inner.write.lock().await;
        let found = {
            let cache = self.read();
            Uuid::parse_str(name_or_id)
                .ok()
                .and_then(|id| cache.agents.get(&id))
                .or_else(|| cache.agent_named(name_or_id))
                .cloned()
        };
        let mut agent = found.ok_or_else(|| DirectoryError::UnknownAgent {
            agent: name_or_id.chars().take(100).collect(),
        })?;
        if !agent.is_revoked() {
            agent.revoked_at = Some(ts(self.now()));
            agent.revoked_by = Some(by.to_string());
            let mut batch = Batch::new();
            batch.put_json(Table::Agents, agent.id.to_string().into_bytes(), &agent)?;
            let audit = AuditRecord::new(by, "agent.revoke", &agent.name).with_detail(json!({
                "agent_id": agent.id.to_string(),
                "cert_serials": agent.cert_serials,
            }));
            self.commit(batch, audit).await?;
            self.write_cache().put_agent(agent.clone());
        }
        self.inner.revocations.revoke_agent(&agent.id.to_string());
        for serial in &agent.cert_serials {
            self.inner.revocations.revoke_serial(serial);
        }
        Ok(agent)
    }

    // ---- API tokens ----

    /// Creates an API token with `role`. `name` follows the agent name rules; empty means
    /// the role's name. Returns the token's id and the token (show it once).
    pub async fn create_api_token(
        &self,
        role: Role,
        name: &str,
        created_by: &str,
    ) -> Result<(String, SecretString)> {
        let name = if name.is_empty() { role.as_str() } else { name };
        check_name(name).map_err(|reason| DirectoryError::InvalidName {
            what: "API token",
            name: name.chars().take(100).collect(),
            reason,
        })?;
        check_text("actor", created_by, MAX_ACTOR_LEN, false)?;
        let _write = self.inner.write.lock().await;
        self.create_api_token_locked(role, name, created_by, "token.create")
            .await
    }

    async fn create_api_token_locked(
        &self,
        role: Role,
        name: &str,
        created_by: &str,
        action: &str,
    ) -> Result<(String, SecretString)> {
        let (token, hash) = ApiToken::generate()?;
        let id = Uuid::new_v4().to_string();
        let record = ApiTokenRecord {
            id: id.clone(),
            name: name.to_string(),
            role,
            hash,
            created_at: ts(self.now()),
            created_by: created_by.to_string(),
            revoked_at: None,
            revoked_by: None,
        };
        let mut batch = Batch::new();
        batch.put_json(Table::ApiTokens, api_token_key(&id), &record)?;
        let audit = AuditRecord::new(created_by, action, &id)
            .with_detail(json!({"name": name, "role": role.as_str()}));
        self.commit(batch, audit).await?;
        let mut cache = self.write_cache();
        cache.api_by_hash.insert(hash, id.clone());
        cache.api_tokens.insert(id.clone(), record);
        Ok((id, token))
    }

    /// On first start: creates an admin token named [`BOOTSTRAP_ADMIN_NAME`] when no
    /// admin token that is not revoked exists, and returns it (the caller prints it once
    /// and writes `admin.token`, 0600). `None` when a live admin token exists.
    ///
    /// So if every admin token gets revoked, the next start of core makes a new one:
    /// whoever can read the data dir can recover access.
    pub async fn bootstrap_admin_token(&self) -> Result<Option<(String, SecretString)>> {
        let _write = self.inner.write.lock().await;
        if self.read().live_admin_tokens().next().is_some() {
            return Ok(None);
        }
        self.create_api_token_locked(
            Role::Admin,
            BOOTSTRAP_ADMIN_NAME,
            CORE_ACTOR,
            "token.bootstrap",
        )
        .await
        .map(Some)
    }

    /// Every API token (revoked ones included), by creation time: ids, names, roles and
    /// times, never the tokens or their hashes.
    pub fn list_api_tokens(&self) -> Vec<ApiTokenInfo> {
        let last_used = self
            .inner
            .last_used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out: Vec<ApiTokenInfo> = self
            .read()
            .api_tokens
            .values()
            .map(|t| ApiTokenInfo {
                id: t.id.clone(),
                name: t.name.clone(),
                role: t.role,
                created_at: t.created_at,
                created_by: t.created_by.clone(),
                last_used: last_used.get(&t.id).map(|u| u.at),
                revoked_at: t.revoked_at,
                revoked_by: t.revoked_by.clone(),
            })
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    /// Revokes an API token: it stops authenticating at once. Revoking a revoked token
    /// changes nothing. Refuses to revoke the last live admin token
    /// ([`DirectoryError::LastAdminToken`]).
    pub async fn revoke_api_token(&self, id: &str, by: &str) -> Result<ApiTokenInfo> {
        check_text("actor", by, MAX_ACTOR_LEN, false)?;
        let _write = self.inner.write.lock().await;
        let mut token = {
            let cache = self.read();
            let token = cache.api_tokens.get(id).cloned().ok_or_else(|| {
                DirectoryError::UnknownApiToken {
                    id: id.chars().take(100).collect(),
                }
            })?;
            if token.role == Role::Admin
                && token.revoked_at.is_none()
                && cache.live_admin_tokens().count() == 1
            {
                return Err(DirectoryError::LastAdminToken { id: token.id });
            }
            token
        };
        if token.revoked_at.is_none() {
            token.revoked_at = Some(ts(self.now()));
            token.revoked_by = Some(by.to_string());
            let mut batch = Batch::new();
            batch.put_json(Table::ApiTokens, api_token_key(id), &token)?;
            let audit = AuditRecord::new(by, "token.revoke", id)
                .with_detail(json!({"name": token.name, "role": token.role.as_str()}));
            self.commit(batch, audit).await?;
            self.write_cache().api_tokens.insert(id.to_string(), token);
        }
        self.list_api_tokens()
            .into_iter()
            .find(|t| t.id == id)
            .ok_or_else(|| DirectoryError::UnknownApiToken { id: id.to_string() })
    }

    /// Authenticates a bearer token (with or without the `Bearer ` prefix): the principal
    /// of a known, non-revoked API token, `None` otherwise.
    ///
    /// The token is looked up by its SHA-256 and compared in constant time. Its
    /// `last_used` is updated in memory, and submitted to the store (without waiting) at
    /// most every [`LAST_USED_PERSIST_INTERVAL`].
    pub fn authenticate(&self, bearer: &str) -> Option<Principal> {
        let mut presented = bearer.trim();
        if presented
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
        {
            presented = presented[7..].trim();
        }
        if presented.is_empty() || presented.len() > 512 {
            return None;
        }
        let principal = {
            let cache = self.read();
            let id = cache.api_by_hash.get(&ApiToken::hash(presented))?;
            let token = cache.api_tokens.get(id)?;
            if !ApiToken::verify(presented, &token.hash) || token.revoked_at.is_some() {
                return None;
            }
            Principal {
                token_id: token.id.clone(),
                name: token.name.clone(),
                role: token.role,
            }
        };
        self.note_token_use(&principal.token_id);
        Some(principal)
    }

    fn note_token_use(&self, id: &str) {
        let now = ts(self.now());
        let persist = {
            let mut map = self
                .inner
                .last_used
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = map.entry(id.to_string()).or_insert(LastUse {
                at: now,
                persisted: None,
            });
            entry.at = entry.at.max(now);
            let due = entry
                .persisted
                .is_none_or(|p| elapsed(now, p) >= LAST_USED_PERSIST_INTERVAL);
            if due {
                entry.persisted = Some(now);
            }
            due
        };
        if !persist {
            return;
        }
        let mut batch = Batch::new();
        if batch
            .put_json(Table::ApiTokens, api_used_key(id), &now)
            .is_err()
        {
            return;
        }
        // The batch is submitted by `commit` itself; waiting for it is not needed (this is
        // not critical state), only reporting a failure.
        let commit = self.inner.store.commit(batch);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = commit.await {
                    tracing::warn!(error = %e, "could not record an API token's last use");
                }
            });
        }
    }

    // ---- registry credentials ----

    /// Stores credentials for a registry (`wharf registry login`), replacing earlier
    /// ones: `{username, password}` is encrypted with AES-256-GCM under the master key,
    /// with a random nonce and the (normalized) host as associated data. Only the
    /// ciphertext, the user name and the host reach the store and the audit log.
    pub async fn registry_login(
        &self,
        host: &str,
        username: &str,
        password: SecretString,
        by: &str,
    ) -> Result<RegistryInfo> {
        let host = normalize_registry_host(host)?;
        check_text("username", username, MAX_USERNAME_LEN, false)?;
        check_text("actor", by, MAX_ACTOR_LEN, false)?;
        if password.expose().is_empty() {
            return Err(DirectoryError::invalid(
                "password",
                "it is empty; pipe it to `wharf registry login HOST --username U --password-stdin`",
            ));
        }
        if password.expose().len() > MAX_PASSWORD_LEN {
            return Err(DirectoryError::invalid(
                "password",
                format!("it is longer than {MAX_PASSWORD_LEN} bytes"),
            ));
        }
        let secret = RegistrySecret {
            username: username.to_string(),
            password: password.expose().to_string(),
        };
        let plaintext =
            Zeroizing::new(
                serde_json::to_vec(&secret).map_err(|_| DirectoryError::Crypto {
                    what: "encode the credentials",
                })?,
            );
        drop(secret);
        let (nonce, ciphertext) = self.inner.master_key.encrypt(host.as_bytes(), &plaintext)?;
        drop(plaintext);

        let _write = self.inner.write.lock().await;
        let record = RegistryRecord {
            host: host.clone(),
            username: username.to_string(),
            nonce: hex::encode(nonce),
            ciphertext: b64().encode(&ciphertext),
            updated_at: ts(self.now()),
            updated_by: by.to_string(),
        };
        let mut batch = Batch::new();
        batch.put_json(Table::Registries, host.clone().into_bytes(), &record)?;
        let audit = AuditRecord::new(by, "registry.login", &host)
            .with_detail(json!({"username": username}));
        self.commit(batch, audit).await?;
        let info = RegistryInfo::from(&record);
        self.write_cache().registries.insert(host, record);
        Ok(info)
    }

    /// Registries with stored credentials, by host: host, user name and update time only.
    pub fn list_registries(&self) -> Vec<RegistryInfo> {
        self.read()
            .registries
            .values()
            .map(RegistryInfo::from)
            .collect()
    }

    /// The decrypted credentials for a registry host (normalized as by
    /// [`normalize_registry_host`]), in memory only, to be sealed to an agent at dispatch
    /// ([`RegistryCredentials::seal`]). `None` when none are stored (or the host is not
    /// a valid host).
    ///
    /// [`DirectoryError::CredentialsUnreadable`] when the record does not decrypt.
    pub fn credentials_for_registry(&self, host: &str) -> Result<Option<RegistryCredentials>> {
        let Ok(host) = normalize_registry_host(host) else {
            return Ok(None);
        };
        let Some(record) = self.read().registries.get(&host).cloned() else {
            return Ok(None);
        };
        let unreadable = || DirectoryError::CredentialsUnreadable { host: host.clone() };
        let mut nonce = [0u8; 12];
        hex::decode_to_slice(&record.nonce, &mut nonce).map_err(|_| unreadable())?;
        let ciphertext = b64().decode(&record.ciphertext).map_err(|_| unreadable())?;
        let plaintext = self
            .inner
            .master_key
            .decrypt(host.as_bytes(), nonce, &ciphertext)
            .ok_or_else(unreadable)?;
        let secret: RegistrySecret =
            serde_json::from_slice(&plaintext).map_err(|_| unreadable())?;
        Ok(Some(RegistryCredentials {
            registry: host.clone(),
            username: secret.username.clone(),
            password: secret.password.clone(),
        }))
    }

    /// [`credentials_for_registry`](Self::credentials_for_registry) for the registry of
    /// an image reference ([`DOCKER_HUB`] when it names none).
    pub fn credentials_for_image(&self, image: &ImageRef) -> Result<Option<RegistryCredentials>> {
        self.credentials_for_registry(image.registry().unwrap_or(DOCKER_HUB))
    }
}

fn api_token_key(id: &str) -> Vec<u8> {
    [API_TOKEN_PREFIX, id.as_bytes()].concat()
}

fn api_used_key(id: &str) -> Vec<u8> {
    [API_USED_PREFIX, id.as_bytes()].concat()
}

/// Checks the master key against the check record, writing the record on first start.
async fn check_master_key(store: &dyn Store, key: &MasterKey) -> Result<()> {
    match store.get_json::<KeyCheck>(Table::Meta, MASTER_KEY_CHECK_KEY)? {
        Some(check) => {
            let mut nonce = [0u8; 12];
            let plain = hex::decode_to_slice(&check.nonce, &mut nonce)
                .ok()
                .and_then(|()| b64().decode(&check.ciphertext).ok())
                .and_then(|ct| key.decrypt(MASTER_KEY_CHECK_AAD, nonce, &ct));
            match plain {
                Some(p) if p.as_slice() == MASTER_KEY_CHECK_TEXT => Ok(()),
                _ => Err(DirectoryError::MasterKeyMismatch),
            }
        }
        None => {
            let (nonce, ciphertext) = key.encrypt(MASTER_KEY_CHECK_AAD, MASTER_KEY_CHECK_TEXT)?;
            let check = KeyCheck {
                nonce: hex::encode(nonce),
                ciphertext: b64().encode(ciphertext),
            };
            let mut batch = Batch::new();
            batch.put_json(Table::Meta, MASTER_KEY_CHECK_KEY.to_vec(), &check)?;
            store.commit(batch).await?;
            Ok(())
        }
    }
}
