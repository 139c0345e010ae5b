//! The agent's identity (design.md §3): enrollment with a one-time token and a pinned CA,
//! the identity file under the state dir, and certificate renewal over mutual TLS.
//!
//! Everything the agent is lives in one file, `<state-dir>/identity.json` (mode 0600,
//! written atomically: temp file, fsync, rename, fsync of the directory): its name and id,
//! its P-256 private key and client certificate, the Wharf CA certificate and its X25519
//! sealing key. One file, so a renewal swaps key and certificate together: a kill at any
//! moment leaves the old pair or the new one, never a key with another key's certificate.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_core::directory::{EnrollRequest, EnrollResponse};
use wharf_core::pki::{
    agent_client_config, cert_info, certs_from_pem, enrollment_client_config, find_pki_error,
    generate_agent_key_and_csr, read_secret_file, write_secret_file, CaFingerprint, PkiError,
    SecretString, TlsIdentity, ALPN_HTTP11,
};
use wharf_protocol::seal::AgentSealKey;
use wharf_protocol::{Timestamp, ENROLL_PATH};
use zeroize::Zeroizing;

/// The HTTP path of certificate renewal (mutual TLS, the current certificate).
pub const RENEW_PATH: &str = "/agent/v1/renew";

/// The identity file's name under the state dir.
pub const IDENTITY_FILE: &str = "identity.json";

/// How long one enrollment or renewal request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest error body quoted from core.
const MAX_QUOTED_BODY: usize = 500;

/// Why the identity could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The file (or the state dir) cannot be read or written, or its permissions are too
    /// open.
    #[error("identity file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The parts given to [`Identity::new`] do not make an identity.
    #[error("not a usable agent identity: {0}")]
    Invalid(String),
    /// The file exists but does not hold a usable identity.
    #[error(
        "identity file {path} is not usable: {reason}; move it away and enroll again with \
         --token and --ca-hash"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why an enrollment or a renewal failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The arguments are wrong before anything was sent (a `--ca-hash` that is not
    /// `sha256:<64 hex>`, an agent name core would not accept in a certificate).
    #[error("invalid enrollment input: {0}")]
    Invalid(String),
    /// The server did not present the pinned CA. The message names the expected and the
    /// presented fingerprints.
    #[error("{0}; check --ca-hash against the fingerprint core prints at start")]
    CaMismatch(String),
    /// Core answered with an error (`410` for a used or expired token, `401` for an
    /// unknown one, `403` for a revoked agent's renewal...).
    #[error("core refused the {what}: HTTP {status} {code}: {message}")]
    Refused {
        /// `enrollment` or `certificate renewal`.
        what: &'static str,
        /// The HTTP status.
        status: u16,
        /// The API error code.
        code: String,
        /// Core's message.
        message: String,
    },
    /// No answer (connection refused, TLS failure other than the pin, timeout): worth
    /// retrying.
    #[error("request to {url} failed: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// What went wrong, with its causes.
        reason: String,
    },
    /// Core's answer is not what the API promises.
    #[error("core's answer is not usable: {0}")]
    BadResponse(String),
}

impl EnrollError {
    /// Whether trying again later may succeed (core unreachable, or core failed
    /// internally), as opposed to a refusal that stays a refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            EnrollError::Transport { .. } => true,
            EnrollError::Refused { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// An enrolled agent: its id, TLS key and certificate, the CA it trusts, its X25519
/// sealing key. Cheap to clone. `Debug` shows no key.
#[derive(Clone)]
pub struct Identity {
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
    /// Start of the certificate's validity.
    pub not_before: Timestamp,
    /// End of the certificate's validity.
    pub not_after: Timestamp,
    /// The agent's X25519 key for sealed registry credentials.
    pub seal_key: Arc<AgentSealKey>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("agent_id", &self.agent_id)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The identity file's content.
#[derive(Serialize, Deserialize)]
struct IdentityFile {
    version: u32,
    name: String,
    agent_id: Uuid,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    /// The X25519 secret, standard base64.
    seal_key: String,
}

impl Drop for IdentityFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pem);
        zeroize::Zeroize::zeroize(&mut self.seal_key);
    }
}

const IDENTITY_VERSION: u32 = 1;

impl Identity {
    /// An identity from its parts (as an enrollment answer gives them), checked: key and
    /// certificate belong together, the certificate names `agent_id`, the CA parses.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Invalid`] naming what does not fit.
    pub fn new(
        name: String,
        agent_id: Uuid,
        key_pem: SecretString,
        cert_pem: String,
        ca_pem: String,
        seal_key: Arc<AgentSealKey>,
    ) -> Result<Identity, IdentityError> {
        Identity::from_parts(name, agent_id, key_pem, cert_pem, ca_pem, seal_key)
            .map_err(IdentityError::Invalid)
    }

    /// Builds an identity from its parts, checking that key and certificate belong
    /// together and reading the certificate's validity.
    fn from_parts(
        name: String,
        agent_id: Uuid,
        key_pem: SecretString,
        cert_pem: String,
        ca_pem: String,
        seal_key: Arc<AgentSealKey>,
    ) -> Result<Identity, String> {
        TlsIdentity::from_pem(&cert_pem, key_pem.expose()).map_err(|e| e.to_string())?;
        let certs =
            certs_from_pem("agent certificate", cert_pem.as_bytes()).map_err(|e| e.to_string())?;
        let leaf = certs
            .first()
            .ok_or_else(|| "no agent certificate".to_string())?;
        let info = cert_info(leaf).map_err(|e| e.to_string())?;
        if info.agent_id.as_deref() != Some(agent_id.to_string().as_str()) {
            return Err(format!(
                "the certificate names agent {:?}, not {agent_id}",
                info.agent_id
            ));
        }
        certs_from_pem("CA certificate", ca_pem.as_bytes()).map_err(|e| e.to_string())?;
        Ok(Identity {
            name,
            agent_id,
            key_pem,
            cert_pem,
            ca_pem,
            not_before: Timestamp::from_system_time(info.not_before),
            not_after: Timestamp::from_system_time(info.not_after),
            seal_key,
        })
    }

    /// The path of the identity file in `state_dir`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(IDENTITY_FILE)
    }

    /// The TLS identity (certificate and key) for the client configurations.
    ///
    /// # Errors
    ///
    /// A certificate or key that does not parse (checked at load, so not expected).
    pub fn tls_identity(&self) -> Result<TlsIdentity, PkiError> {
        TlsIdentity::from_pem(&self.cert_pem, self.key_pem.expose())
    }

    /// The fingerprint of the CA this identity trusts.
    ///
    /// # Errors
    ///
    /// The CA PEM does not parse (checked at load, so not expected).
    pub fn ca_fingerprint(&self) -> Result<CaFingerprint, PkiError> {
        let ca = certs_from_pem("CA certificate", self.ca_pem.as_bytes())?;
        ca.first()
            .map(|der| CaFingerprint::of_der(der))
            .ok_or(PkiError::InvalidPem {
                what: "CA certificate",
                label: "CERTIFICATE",
                reason: "no certificate found".into(),
            })
    }

    /// A rustls client configuration presenting this identity and trusting only the
    /// Wharf CA, with the given ALPN protocols.
    ///
    /// # Errors
    ///
    /// The identity's PEM does not parse, or rustls refuses the configuration.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, PkiError> {
        let identity = self.tls_identity()?;
        let ca = certs_from_pem("CA certificate", self.ca_pem.as_bytes())?;
        let ca = ca.first().ok_or(PkiError::InvalidPem {
            what: "CA certificate",
            label: "CERTIFICATE",
            reason: "no certificate found".into(),
        })?;
        agent_client_config(&identity, ca, alpn)
    }

    /// Whether the certificate should be renewed at `now`: less than `fraction` of its
    /// lifetime is left (e.g. `1.0 / 3.0`), or it has expired.
    pub fn renewal_due(&self, now: SystemTime, fraction: f64) -> bool {
        let lifetime = self
            .not_after
            .as_millis()
            .saturating_sub(self.not_before.as_millis());
        let left = self
            .not_after
            .as_millis()
            .saturating_sub(Timestamp::from_system_time(now).as_millis());
        (left as f64) < (lifetime.max(0) as f64) * fraction.max(0.0)
    }

    /// Writes the identity into `state_dir` (created if missing, mode 0700 for a new one)
    /// as [`IDENTITY_FILE`], mode 0600, atomically.
    ///
    /// # Errors
    ///
    /// [`IdentityError::File`] when the directory or the file cannot be written.
    pub fn save(&self, state_dir: &Path) -> Result<(), IdentityError> {
        let path = Self::path(state_dir);
        create_state_dir(state_dir).map_err(|reason| IdentityError::File {
            path: path.clone(),
            reason,
        })?;
        let file = IdentityFile {
            version: IDENTITY_VERSION,
            name: self.name.clone(),
            agent_id: self.agent_id,
            key_pem: self.key_pem.expose().to_string(),
            cert_pem: self.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            seal_key: base64::engine::general_purpose::STANDARD
                .encode(self.seal_key.to_bytes().as_ref()),
        };
        let bytes =
            Zeroizing::new(
                serde_json::to_vec_pretty(&file).map_err(|e| IdentityError::File {
                    path: path.clone(),
                    reason: format!("cannot encode: {e}"),
                })?,
            );
        write_secret_file(&path, &bytes).map_err(|e| IdentityError::File {
            path: path.clone(),
            reason: e.to_string(),
        })
    }

    /// Loads the identity saved by [`Identity::save`]: `Ok(None)` if `state_dir` holds
    /// none. A file readable by group or others is refused.
    ///
    /// # Errors
    ///
    /// [`IdentityError::File`] for an unreadable file or loose permissions,
    /// [`IdentityError::Corrupt`] for a file that does not hold a usable identity.
    pub fn load(state_dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let path = Self::path(state_dir);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(IdentityError::File {
                    path,
                    reason: e.to_string(),
                })
            }
            Ok(_) => {}
        }
        let text = read_secret_file(&path).map_err(|e| IdentityError::File {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let corrupt = |reason: String| IdentityError::Corrupt {
            path: path.clone(),
            reason,
        };
        let file: IdentityFile =
            serde_json::from_str(text.expose()).map_err(|e| corrupt(e.to_string()))?;
        if file.version != IDENTITY_VERSION {
            return Err(corrupt(format!(
                "version {} (this agent reads version {IDENTITY_VERSION})",
                file.version
            )));
        }
        let seal = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(file.seal_key.as_bytes())
                .map_err(|e| corrupt(format!("seal_key: {e}")))?,
        );
        let seal: [u8; 32] = seal
            .as_slice()
            .try_into()
            .map_err(|_| corrupt(format!("seal_key: {} bytes, not 32", seal.len())))?;
        Identity::from_parts(
            file.name.clone(),
            file.agent_id,
            SecretString::new(file.key_pem.clone()),
            file.cert_pem.clone(),
            file.ca_pem.clone(),
            Arc::new(AgentSealKey::from_bytes(seal)),
        )
        .map(Some)
        .map_err(corrupt)
    }
}

/// Creates the state dir (mode 0700) if it does not exist.
pub(crate) fn create_state_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the state dir {}: {e}", dir.display()))
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

/// The error body of core's HTTPS API.
#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiErrorDetail,
}

#[derive(Deserialize)]
struct ApiErrorDetail {
    code: String,
    message: String,
}

/// What an enrollment sends besides the token.
#[derive(Debug, Clone)]
pub struct EnrollInput<'a> {
    /// Core's HTTPS address, `HOST:PORT`.
    pub core_addr: &'a str,
    /// The TLS server name of core's certificate (`None`: the host of `core_addr`).
    pub server_name: Option<&'a str>,
    /// The one-time token.
    pub token: &'a SecretString,
    /// The pinned CA fingerprint, `sha256:<64 hex>`.
    pub ca_hash: &'a str,
    /// The agent's name.
    pub name: &'a str,
    /// The agent's version.
    pub version: &'a str,
    /// The agent's capabilities.
    pub capabilities: Vec<String>,
}

/// The server name to verify for `core_addr` (`HOST:PORT`): `server_name`, else the host.
pub(crate) fn server_name_for(
    core_addr: &str,
    server_name: Option<&str>,
) -> Result<String, String> {
    let (host, port) = core_addr
        .rsplit_once(':')
        .ok_or_else(|| format!("core address {core_addr:?} is not HOST:PORT"))?;
    port.parse::<u16>()
        .map_err(|_| format!("core address {core_addr:?}: {port:?} is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(server_name.unwrap_or(host).to_string())
}

/// A reqwest client over `tls` that connects to `core_addr` but verifies `server_name`.
pub(crate) async fn http_client(
    tls: rustls::ClientConfig,
    core_addr: &str,
    server_name: &str,
    timeout: Duration,
) -> Result<(reqwest::Client, String), EnrollError> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(core_addr)
        .await
        .map_err(|e| EnrollError::Transport {
            url: core_addr.to_string(),
            reason: format!("cannot resolve: {e}"),
        })?
        .collect();
    let port = addrs.first().map(|a| a.port()).unwrap_or(0);
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(timeout)
        .resolve_to_addrs(server_name, &addrs)
        .build()
        .map_err(|e| EnrollError::Invalid(error_chain(&e)))?;
    let host = if server_name.contains(':') {
        format!("[{server_name}]")
    } else {
        server_name.to_string()
    };
    Ok((client, format!("https://{host}:{port}")))
}

/// Posts `body` to `url` and decodes an [`EnrollResponse`].
async fn post_for_certificate<B: Serialize>(
    what: &'static str,
    client: &reqwest::Client,
    url: &str,
    body: &B,
) -> Result<EnrollResponse, EnrollError> {
    let transport = |err: &reqwest::Error| EnrollError::Transport {
        url: url.to_string(),
        reason: error_chain(err),
    };
    let response = match client.post(url).json(body).send().await {
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
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(MAX_QUOTED_BODY)
                    .collect(),
            ),
        };
        return Err(EnrollError::Refused {
            what,
            status: status.as_u16(),
            code,
            message,
        });
    }
    serde_json::from_slice(&body)
        .map_err(|e| EnrollError::BadResponse(format!("{e} in {} bytes", body.len())))
}

/// Enrolls: generates a P-256 key and CSR and an X25519 sealing key, and calls
/// `POST https://<core>/agent/v1/enroll` trusting only a server whose chain holds the CA
/// with the pinned fingerprint. Nothing is written to disk here.
///
/// # Errors
///
/// [`EnrollError::Invalid`] before sending, [`EnrollError::CaMismatch`] when core does not
/// present the pinned CA, [`EnrollError::Refused`] when core refuses the token,
/// [`EnrollError::Transport`] when core cannot be reached.
pub async fn enroll(input: EnrollInput<'_>) -> Result<Identity, EnrollError> {
    let pin: CaFingerprint = input
        .ca_hash
        .parse()
        .map_err(|e: PkiError| EnrollError::Invalid(format!("--ca-hash: {e}")))?;
    let server_name =
        server_name_for(input.core_addr, input.server_name).map_err(EnrollError::Invalid)?;
    let (key_pem, csr_pem) = generate_agent_key_and_csr(input.name)
        .map_err(|e| EnrollError::Invalid(format!("agent name {:?}: {e}", input.name)))?;
    let seal_key =
        AgentSealKey::generate().map_err(|e| EnrollError::Invalid(format!("X25519 key: {e}")))?;
    let tls = enrollment_client_config(pin, &[ALPN_HTTP11])
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let (client, base) = http_client(tls, input.core_addr, &server_name, REQUEST_TIMEOUT).await?;
    let request = EnrollRequest {
        token: input.token.clone(),
        name: input.name.to_string(),
        csr_pem,
        x25519_public: seal_key.public(),
        version: input.version.to_string(),
        capabilities: input.capabilities,
    };
    let url = format!("{base}{ENROLL_PATH}");
    let answer = post_for_certificate("enrollment", &client, &url, &request).await?;
    let identity = Identity::from_parts(
        input.name.to_string(),
        answer.agent_id,
        key_pem,
        answer.cert_pem,
        answer.ca_pem,
        Arc::new(seal_key),
    )
    .map_err(EnrollError::BadResponse)?;
    // The CA core hands out must be the one that was pinned.
    match identity.ca_fingerprint() {
        Ok(fp) if fp == pin => Ok(identity),
        Ok(fp) => Err(EnrollError::CaMismatch(format!(
            "core returned CA {fp}, which did not match --ca-hash {pin}"
        ))),
        Err(e) => Err(EnrollError::BadResponse(e.to_string())),
    }
}

/// Renews the certificate of `current` over mutual TLS (`POST /agent/v1/renew` with the
/// current certificate): a new P-256 key and CSR, the same id and sealing key. Nothing is
/// written to disk here.
///
/// # Errors
///
/// [`EnrollError::Refused`] when core refuses (a revoked agent), [`EnrollError::Transport`]
/// when core cannot be reached, [`EnrollError::BadResponse`] for an unusable answer.
pub async fn renew(
    current: &Identity,
    core_addr: &str,
    server_name: Option<&str>,
) -> Result<Identity, EnrollError> {
    #[derive(Serialize)]
    struct RenewRequest {
        csr_pem: String,
    }
    let name = server_name_for(core_addr, server_name).map_err(EnrollError::Invalid)?;
    let tls = current
        .client_config(&[ALPN_HTTP11])
        .map_err(|e| EnrollError::Invalid(e.to_string()))?;
    let (client, base) = http_client(tls, core_addr, &name, REQUEST_TIMEOUT).await?;
    let (key_pem, csr_pem) = generate_agent_key_and_csr(&current.name)
        .map_err(|e| EnrollError::Invalid(format!("agent name {:?}: {e}", current.name)))?;
    let url = format!("{base}{RENEW_PATH}");
    let answer = post_for_certificate(
        "certificate renewal",
        &client,
        &url,
        &RenewRequest { csr_pem },
    )
    .await?;
    if answer.agent_id != current.agent_id {
        return Err(EnrollError::BadResponse(format!(
            "the renewed certificate is for agent {}, not {}",
            answer.agent_id, current.agent_id
        )));
    }
    Identity::from_parts(
        current.name.clone(),
        current.agent_id,
        key_pem,
        answer.cert_pem,
        answer.ca_pem,
        current.seal_key.clone(),
    )
    .map_err(EnrollError::BadResponse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_name_comes_from_the_address() {
        assert_eq!(
            server_name_for("core.example:7443", None).unwrap(),
            "core.example"
        );
        assert_eq!(server_name_for("[::1]:7443", None).unwrap(), "::1");
        assert_eq!(
            server_name_for("10.0.0.1:7443", Some("core")).unwrap(),
            "core"
        );
        assert!(server_name_for("core.example", None).is_err());
        assert!(server_name_for("core:http", None).is_err());
    }

    #[tokio::test]
    async fn a_bad_ca_hash_is_refused_before_sending() {
        let token = SecretString::new("t".into());
        let err = enroll(EnrollInput {
            core_addr: "127.0.0.1:1",
            server_name: None,
            token: &token,
            ca_hash: "md5:abc",
            name: "a",
            version: "0.1.0",
            capabilities: vec![],
        })
        .await
        .unwrap_err();
        assert!(matches!(err, EnrollError::Invalid(_)), "{err}");
        assert!(err.to_string().contains("--ca-hash"), "{err}");
    }

    #[test]
    fn no_identity_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn a_readable_identity_file_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = Identity::path(dir.path());
        std::fs::write(&path, b"{}").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::File { .. }), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("enroll again"), "{err}");
    }
}
