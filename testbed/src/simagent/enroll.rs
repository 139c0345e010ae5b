//! Enrollment of a simulated agent (`POST /agent/v1/enroll`) and its identity on disk.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_core::directory::{EnrollRequest, EnrollResponse};
use wharf_core::pki::{
    enrollment_client_config, find_pki_error, generate_agent_key_and_csr, read_secret_file,
    write_public_file, write_secret_file, CaFingerprint, PkiError, SecretString, TlsIdentity,
    ALPN_HTTP11,
};
use wharf_protocol::seal::AgentSealKey;
use wharf_protocol::{Timestamp, ENROLL_PATH};

use super::SIM_AGENT_VERSION;

/// How long one enrollment request may take.
const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The arguments are wrong before anything was sent (a `--ca-hash` that is not
    /// `sha256:<64 hex>`, an invalid name).
    #[error("invalid enrollment input: {0}")]
    Invalid(String),
    /// The server did not present the pinned CA: the message is core's PKI error, which
    /// names the expected and the presented fingerprints.
    #[error("{0}")]
    CaMismatch(String),
    /// Core answered with an error, e.g. `410 gone` for a used or expired token or
    /// `401 unauthorized` for an unknown one.
    #[error("core refused the enrollment: HTTP {status} {code}: {message}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The API error code (`gone`, `unauthorized`, `invalid`...).
        code: String,
        /// Core's message.
        message: String,
    },
    /// The request did not get an answer (connection refused, TLS failure other than the
    /// pin, timeout).
    #[error("enrollment request to {url} failed: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// The answer was not what the enrollment API promises.
    #[error("core's enrollment answer is not usable: {0}")]
    BadResponse(String),
}

impl EnrollError {
    /// The HTTP status for [`EnrollError::Refused`], if that is what happened.
    pub fn status(&self) -> Option<u16> {
        match self {
            EnrollError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// An enrolled agent's identity: its id, TLS key and certificate, the CA to trust, and
/// its X25519 sealing key. Cheap to clone (the sealing key is shared).
#[derive(Clone)]
pub struct Enrolled {
    /// The agent's name.
    pub name: String,
    /// The agent's id (its certificate's SAN `wharf://agent/<id>`).
    pub agent_id: Uuid,
    /// The agent's private key, PEM.
    pub key_pem: SecretString,
    /// The agent's client certificate, PEM.
    pub cert_pem: String,
    /// The Wharf CA certificate, PEM.
    pub ca_pem: String,
    /// End of the certificate's validity.
    pub not_after: Timestamp,
    /// The agent's X25519 key for sealed registry credentials.
    pub seal_key: Arc<AgentSealKey>,
}

impl fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enrolled")
            .field("name", &self.name)
            .field("agent_id", &self.agent_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// `agent.json` in a state dir: what is not a key or a certificate.
#[derive(Serialize, Deserialize)]
struct IdentityFile {
    name: String,
    agent_id: Uuid,
    not_after: Timestamp,
}

/// File names of a saved identity.
mod files {
    pub const IDENTITY: &str = "agent.json";
    pub const KEY: &str = "agent.key";
    pub const CERT: &str = "agent.pem";
    pub const CA: &str = "ca.pem";
    pub const SEAL_KEY: &str = "seal.key";
}

impl Enrolled {
    /// The TLS identity (certificate and key) for the QUIC client configuration.
    ///
    /// # Errors
    ///
    /// A certificate or key that does not parse, or that do not belong together.
    pub fn tls_identity(&self) -> Result<TlsIdentity, PkiError> {
        TlsIdentity::from_pem(&self.cert_pem, self.key_pem.expose())
    }

    /// Writes the identity into `dir` (created if missing): `agent.json`, `agent.pem`,
    /// `ca.pem` (0644) and the keys `agent.key`, `seal.key` (0600), each atomically.
    ///
    /// # Errors
    ///
    /// The directory or a file cannot be written.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        use anyhow::Context as _;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the state dir {}", dir.display()))?;
        let meta = serde_json::to_vec_pretty(&IdentityFile {
            name: self.name.clone(),
            agent_id: self.agent_id,
            not_after: self.not_after,
        })?;
        write_public_file(&dir.join(files::IDENTITY), &meta)?;
        write_public_file(&dir.join(files::CERT), self.cert_pem.as_bytes())?;
        write_public_file(&dir.join(files::CA), self.ca_pem.as_bytes())?;
        write_secret_file(&dir.join(files::KEY), self.key_pem.as_bytes())?;
        let seal = hex_encode(self.seal_key.to_bytes().as_ref());
        write_secret_file(&dir.join(files::SEAL_KEY), seal.as_bytes())?;
        Ok(())
    }

    /// Loads an identity saved by [`Enrolled::save`]: `Ok(None)` if `dir` holds none.
    /// Key files readable by group or others are refused.
    ///
    /// # Errors
    ///
    /// A partial or unreadable identity, or key files with loose permissions.
    pub fn load(dir: &Path) -> anyhow::Result<Option<Enrolled>> {
        use anyhow::Context as _;
        let meta_path = dir.join(files::IDENTITY);
        if !meta_path.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))
        };
        let meta: IdentityFile = serde_json::from_str(&read(files::IDENTITY)?)
            .with_context(|| format!("{} does not parse", meta_path.display()))?;
        let key_pem = read_secret_file(&dir.join(files::KEY))?;
        let seal_hex = read_secret_file(&dir.join(files::SEAL_KEY))?;
        let seal_bytes = hex_decode32(seal_hex.expose().trim())
            .with_context(|| format!("{} is not 64 hex digits", files::SEAL_KEY))?;
        let enrolled = Enrolled {
            name: meta.name,
            agent_id: meta.agent_id,
            key_pem,
            cert_pem: read(files::CERT)?,
            ca_pem: read(files::CA)?,
            not_after: meta.not_after,
            seal_key: Arc::new(AgentSealKey::from_bytes(seal_bytes)),
        };
        enrolled
            .tls_identity()
            .with_context(|| format!("the identity in {} is not usable", dir.display()))?;
        Ok(Some(enrolled))
    }
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_decode32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The error body of the operator and agent HTTPS API.
#[derive(Deserialize)]
pub(crate) struct ApiErrorBody {
    pub(crate) error: ApiErrorDetail,
}

/// One API error.
#[derive(Deserialize)]
pub(crate) struct ApiErrorDetail {
    pub(crate) code: String,
    pub(crate) message: String,
}

/// Renders an error and its sources on one line (`a: b: c`).
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let s = e.to_string();
        if !text.contains(&s) {
            text.push_str(": ");
            text.push_str(&s);
        }
        source = e.source();
    }
    text
}

/// Enrolls: generates a P-256 key and CSR and an X25519 sealing key, and calls
/// `POST https://<core_addr>/agent/v1/enroll` pinning the CA by `ca_hash`.
pub(crate) async fn enroll(
    core_addr: &str,
    token: &str,
    ca_hash: &str,
    name: &str,
) -> Result<Enrolled, EnrollError> {
    let pin: CaFingerprint = ca_hash
        .parse()
        .map_err(|e: PkiError| EnrollError::Invalid(format!("--ca-hash: {e}")))?;
    let (key_pem, csr_pem) = generate_agent_key_and_csr(name)
        .map_err(|e| EnrollError::Invalid(format!("agent name: {e}")))?;
    let seal_key =
        AgentSealKey::generate().map_err(|e| EnrollError::Invalid(format!("X25519 key: {e}")))?;
    let tls = enrollment_client_config(pin, &[ALPN_HTTP11])
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let url = format!("https://{core_addr}{ENROLL_PATH}");
    let transport = |err: &reqwest::Error| EnrollError::Transport {
        url: url.clone(),
        reason: error_chain(err),
    };
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(ENROLL_TIMEOUT)
        .build()
        .map_err(|e| transport(&e))?;
    let request = EnrollRequest {
        token: SecretString::new(token.to_string()),
        name: name.to_string(),
        csr_pem,
        x25519_public: seal_key.public(),
        version: SIM_AGENT_VERSION.to_string(),
        capabilities: super::default_capabilities(),
    };
    let response = match client.post(&url).json(&request).send().await {
        Ok(r) => r,
        Err(err) => {
            return Err(match find_pki_error(&err) {
                Some(pki @ PkiError::CaFingerprintMismatch { .. }) => {
                    EnrollError::CaMismatch(pki.to_string())
                }
                _ => transport(&err),
            })
        }
    };
    let status = response.status();
    let body = response.bytes().await.map_err(|e| transport(&e))?;
    if !status.is_success() {
        let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&body) {
            Ok(b) => (b.error.code, b.error.message),
            Err(_) => (
                status.canonical_reason().unwrap_or("error").to_string(),
                String::from_utf8_lossy(&body).chars().take(500).collect(),
            ),
        };
        return Err(EnrollError::Refused {
            status: status.as_u16(),
            code,
            message,
        });
    }
    let answer: EnrollResponse = serde_json::from_slice(&body)
        .map_err(|e| EnrollError::BadResponse(format!("{e} in {} bytes", body.len())))?;
    let enrolled = Enrolled {
        name: name.to_string(),
        agent_id: answer.agent_id,
        key_pem,
        cert_pem: answer.cert_pem,
        ca_pem: answer.ca_pem,
        not_after: answer.not_after,
        seal_key: Arc::new(seal_key),
    };
    enrolled
        .tls_identity()
        .map_err(|e| EnrollError::BadResponse(e.to_string()))?;
    Ok(enrolled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 7) as u8);
        assert_eq!(hex_decode32(&hex_encode(&bytes)), Some(bytes));
        assert_eq!(hex_decode32("zz"), None);
        assert_eq!(hex_decode32(&"g".repeat(64)), None);
    }

    #[tokio::test]
    async fn a_bad_ca_hash_is_refused_before_sending() {
        let err = enroll("127.0.0.1:1", "t", "md5:abc", "a")
            .await
            .unwrap_err();
        assert!(matches!(err, EnrollError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("--ca-hash"), "{err}");
    }
}
