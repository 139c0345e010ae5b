//! rustls configurations for every Wharf connection, and the verifiers behind them.
//!
//! All configurations use the ring crypto provider and TLS 1.3 only (QUIC requires 1.3;
//! every Wharf client speaks it, so the HTTPS listener uses it too). ALPN protocols are
//! given by the caller: [`ALPN_WHARF`](super::ALPN_WHARF) for QUIC,
//! [`ALPN_HTTP11`](super::ALPN_HTTP11) for HTTPS.
//!
//! The server sends its certificate chain as `[server certificate, CA certificate]`:
//! agents that enroll pin the CA by fingerprint and need to see it.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::ca::{server_names_with_defaults, ServerIdentity};
use super::error::{PkiError, Result};
use super::inspect::{cert_info, certs_from_pem, CaFingerprint};

/// The crypto provider of every Wharf TLS configuration: rustls' ring provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn to_unix_time(t: SystemTime) -> UnixTime {
    UnixTime::since_unix_epoch(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

/// A certificate chain and its private key, ready for rustls. `Debug` never shows the key.
pub struct TlsIdentity {
    /// The end-entity certificate first, then any certificate to send along with it.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the first certificate.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field(
                "chain",
                &self
                    .chain
                    .iter()
                    .map(|c| CaFingerprint::of_der(c))
                    .collect::<Vec<_>>(),
            )
            .field("key", &"[redacted]")
            .finish()
    }
}

impl TlsIdentity {
    /// Loads a chain (one or more PEM `CERTIFICATE` blocks, end entity first) and a PEM
    /// private key (PKCS#8, SEC1 or PKCS#1).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Self> {
        let chain = certs_from_pem("certificate chain", chain_pem.as_bytes())?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            PkiError::InvalidKey {
                what: "TLS key",
                reason: match e {
                    rustls_pki_types::pem::Error::NoItemsFound => {
                        "no private key found".to_string()
                    }
                    other => other.to_string(),
                },
            }
        })?;
        // Check the key really belongs to the certificate, so a mix-up is reported here
        // rather than as an obscure handshake failure.
        let signing = crypto_provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| PkiError::InvalidKey {
                what: "TLS key",
                reason: e.to_string(),
            })?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(PkiError::KeyMismatch { what: "TLS key" })
            }
            Err(e) => return Err(PkiError::cert("certificate chain", e)),
        }
        Ok(TlsIdentity { chain, key })
    }

    /// The core's server identity, sending the CA certificate along with the server's.
    pub fn for_server(server: &ServerIdentity, ca_cert: &CertificateDer<'_>) -> Result<Self> {
        let mut identity = Self::from_pem(&server.cert.pem, server.key_pem.expose())?;
        identity.chain.push(ca_cert.clone().into_owned());
        Ok(identity)
    }
}

/// Decides whether an agent certificate has been revoked. Consulted during every TLS
/// handshake that presents a client certificate, so a revoked agent is refused before any
/// request is read.
pub trait RevocationCheck: Send + Sync + fmt::Debug {
    /// Whether the certificate of agent `agent_id` with serial `serial` (lowercase hex, as
    /// [`cert_serial`](super::cert_serial) gives) must be refused.
    fn is_revoked(&self, agent_id: &str, serial: &str) -> bool;
}

#[derive(Debug, Default)]
struct RevokedSets {
    agents: HashSet<String>,
    serials: HashSet<String>,
}

/// The revocation set shared by core and its TLS verifiers: revoked agent ids (every
/// certificate of that agent is refused) and revoked serials (one certificate).
///
/// Cheap to clone; all clones share one set. Core fills it from its store at start and
/// adds to it on `wharf agent revoke`.
#[derive(Clone, Debug, Default)]
pub struct RevocationList {
    inner: Arc<RwLock<RevokedSets>>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    fn normalize_id(agent_id: &str) -> String {
        uuid::Uuid::parse_str(agent_id)
            .map(|u| u.hyphenated().to_string())
            .unwrap_or_else(|_| agent_id.to_ascii_lowercase())
    }

    fn normalize_serial(serial: &str) -> String {
        let hex: String = serial
            .chars()
            .filter(|c| *c != ':')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let trimmed = hex.trim_start_matches('0');
        if trimmed.is_empty() {
            "0".into()
        } else {
            trimmed.into()
        }
    }

    /// Refuses every certificate of this agent from now on.
    pub fn revoke_agent(&self, agent_id: &str) {
        let id = Self::normalize_id(agent_id);
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .agents
            .insert(id);
    }

    /// Refuses the certificate with this serial (hex, `:` separators allowed) from now on.
    pub fn revoke_serial(&self, serial: &str) {
        let s = Self::normalize_serial(serial);
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .serials
            .insert(s);
    }

    /// Accepts this agent again (e.g. when a revocation is undone). Returns whether it was revoked.
    pub fn unrevoke_agent(&self, agent_id: &str) -> bool {
        let id = Self::normalize_id(agent_id);
        self.inner
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .agents
            .remove(&id)
    }

    /// Whether this agent is revoked.
    pub fn is_agent_revoked(&self, agent_id: &str) -> bool {
        let id = Self::normalize_id(agent_id);
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .agents
            .contains(&id)
    }

    /// Whether the certificate with this serial is revoked.
    pub fn is_serial_revoked(&self, serial: &str) -> bool {
        let s = Self::normalize_serial(serial);
        self.inner
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .serials
            .contains(&s)
    }
}

impl RevocationCheck for RevocationList {
    fn is_revoked(&self, agent_id: &str, serial: &str) -> bool {
        self.is_agent_revoked(agent_id) || self.is_serial_revoked(serial)
    }
}

/// A [`PkiError`] carried inside a rustls error. rustls shows such errors with `Debug`, so
/// this wrapper's `Debug` is the readable message: what a user sees in a handshake failure
/// is our sentence, not a struct dump.
struct VerifierError(PkiError);

impl fmt::Debug for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Display for VerifierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for VerifierError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

fn other_cert_error(err: PkiError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        VerifierError(err),
    ))))
}

/// The [`PkiError`] a Wharf verifier put into a rustls error (e.g.
/// [`PkiError::CaFingerprintMismatch`] from the enrollment verifier), if any.
pub fn pki_error_in_tls_error(err: &rustls::Error) -> Option<&PkiError> {
    match err {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<VerifierError>().map(|v| &v.0)
        }
        _ => None,
    }
}

/// Walks an error's source chain (looking inside `std::io::Error`s too, where HTTP and QUIC
/// stacks put rustls errors) for a [`PkiError`], so a caller can print its message, e.g.
/// the CA fingerprint mismatch of a failed enrollment.
pub fn find_pki_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a PkiError> {
    let mut current: Option<&'a (dyn std::error::Error + 'static)> = Some(err);
    let mut depth = 0;
    while let Some(e) = current {
        if let Some(p) = e.downcast_ref::<PkiError>() {
            return Some(p);
        }
        if let Some(v) = e.downcast_ref::<VerifierError>() {
            return Some(&v.0);
        }
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            if let Some(p) = pki_error_in_tls_error(r) {
                return Some(p);
            }
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(p) = find_pki_error(inner) {
                    return Some(p);
                }
            }
        }
        depth += 1;
        if depth > 32 {
            break;
        }
        current = e.source();
    }
    None
}

/// Client-certificate verifier of core's listeners: the WebPKI checks against the Wharf CA
/// (chain, validity, clientAuth usage), then the `wharf://agent/<id>` identity and the
/// revocation set.
#[derive(Debug)]
struct AgentCertVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocation: Arc<dyn RevocationCheck>,
    mandatory: bool,
}

impl ClientCertVerifier for AgentCertVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let info = cert_info(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let Some(agent_id) = info.agent_id else {
            return Err(other_cert_error(PkiError::NoAgentIdentity {
                reason: "it has no wharf://agent/<id> SAN URI".into(),
            }));
        };
        if self.revocation.is_revoked(&agent_id, &info.serial) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn ca_roots(what: &'static str, cas: &[CertificateDer<'_>]) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| PkiError::cert(what, e))?;
    }
    Ok(Arc::new(roots))
}

fn alpn_list(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|p| p.to_vec()).collect()
}

fn server_config(
    what: &'static str,
    identity: &TlsIdentity,
    ca_cert: &CertificateDer<'_>,
    revocation: Arc<dyn RevocationCheck>,
    alpn: &[&[u8]],
    mandatory: bool,
) -> Result<ServerConfig> {
    let provider = crypto_provider();
    let roots = ca_roots("CA certificate", std::slice::from_ref(ca_cert))?;
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
    if !mandatory {
        builder = builder.allow_unauthenticated();
    }
    let inner = builder.build().map_err(|e| PkiError::tls(what, e))?;
    let verifier = Arc::new(AgentCertVerifier {
        inner,
        revocation,
        mandatory,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::tls(what, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| PkiError::tls(what, e))?;
    config.alpn_protocols = alpn_list(alpn);
    // TLS 1.3 resumption restores the client certificate from the session ticket without
    // running the verifier again, so a revoked agent could resume a session. Every
    // connection does a full handshake instead (agents reconnect rarely; it costs one
    // signature). No early data either.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.max_early_data_size = 0;
    Ok(config)
}

/// Server configuration of the agent QUIC listener: a client certificate is required; it
/// must chain to the Wharf CA (`ca_cert`), be valid now, carry clientAuth and a
/// `wharf://agent/<id>` SAN, and not be revoked per `revocation`. A revoked agent is
/// refused during the handshake.
///
/// `identity` is the server's (see [`TlsIdentity::for_server`]); `alpn` is typically
/// `&[ALPN_WHARF]`. Hand to quinn via `QuicServerConfig::try_from`.
///
/// In TLS 1.3 the client finishes its side of the handshake before the server has checked
/// its certificate: over QUIC a refused agent may see its `connect` succeed and the
/// connection closed right after (alert 44 "certificate revoked", 48 "unknown CA", 45
/// "certificate expired"), so agents should treat an early close like a failed connect.
pub fn mtls_server_config(
    identity: &TlsIdentity,
    ca_cert: &CertificateDer<'_>,
    revocation: Arc<dyn RevocationCheck>,
    alpn: &[&[u8]],
) -> Result<ServerConfig> {
    server_config(
        "agent mTLS server",
        identity,
        ca_cert,
        revocation,
        alpn,
        true,
    )
}

/// Server configuration of the HTTPS listener (enrollment, agent polling and renewal,
/// operator API): a client certificate is asked for but optional. Without one the
/// handshake succeeds (enrollment, bearer-token operator API). With one, it is checked
/// exactly as in [`mtls_server_config`], so a revoked or foreign certificate fails the
/// handshake; handlers get the agent id with
/// [`agent_id_from_peer_certificates`](super::agent_id_from_peer_certificates).
pub fn https_server_config(
    identity: &TlsIdentity,
    ca_cert: &CertificateDer<'_>,
    revocation: Arc<dyn RevocationCheck>,
    alpn: &[&[u8]],
) -> Result<ServerConfig> {
    server_config("HTTPS server", identity, ca_cert, revocation, alpn, false)
}

fn client_builder(
    what: &'static str,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>> {
    ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::tls(what, e))
}

/// Agent client configuration for QUIC and for polling/renewal over HTTPS: presents the
/// agent's certificate and trusts only the Wharf CA (`ca_cert`).
pub fn agent_client_config(
    identity: &TlsIdentity,
    ca_cert: &CertificateDer<'_>,
    alpn: &[&[u8]],
) -> Result<ClientConfig> {
    const WHAT: &str = "agent client";
    let roots = ca_roots("CA certificate", std::slice::from_ref(ca_cert))?;
    let mut config = client_builder(WHAT)?
        .with_root_certificates(roots)
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|e| PkiError::tls(WHAT, e))?;
    config.alpn_protocols = alpn_list(alpn);
    Ok(config)
}

/// Verifies a server whose chain includes a CA certificate with a pinned SHA-256
/// fingerprint (the agent's `--ca-hash`), then verifies the chain, validity and server
/// name against that CA. A server that does not present the pinned CA is refused with
/// [`PkiError::CaFingerprintMismatch`]: its message is in the rustls error's text, and
/// [`pki_error_in_tls_error`] / [`find_pki_error`] recover it.
#[derive(Debug)]
pub struct PinnedCaServerVerifier {
    pinned: CaFingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaServerVerifier {
    /// A verifier for this fingerprint.
    pub fn new(pinned: CaFingerprint) -> Self {
        PinnedCaServerVerifier {
            pinned,
            provider: crypto_provider(),
        }
    }
}

impl ServerCertVerifier for PinnedCaServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let Some(pos) = intermediates.iter().position(|c| self.pinned.matches(c)) else {
            return Err(other_cert_error(PkiError::CaFingerprintMismatch {
                expected: self.pinned.to_string(),
                presented: intermediates
                    .iter()
                    .map(|c| CaFingerprint::of_der(c).to_string())
                    .collect(),
            }));
        };
        let mut roots = RootCertStore::empty();
        roots.add(intermediates[pos].clone().into_owned())?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != pos)
            .map(|(_, c)| c.clone())
            .collect();
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Enrollment client configuration: no client certificate; trusts a server only if its
/// chain contains the CA with the pinned fingerprint (see [`PinnedCaServerVerifier`]).
pub fn enrollment_client_config(pinned: CaFingerprint, alpn: &[&[u8]]) -> Result<ClientConfig> {
    let mut config = client_builder("enrollment client")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCaServerVerifier::new(pinned)))
        .with_no_client_auth();
    config.alpn_protocols = alpn_list(alpn);
    Ok(config)
}

/// Operator CLI client configuration: no client certificate; trusts the CA certificates
/// of a PEM document (the `ca.pem` of core's data dir, given by `--ca`/`WHARF_CA`).
pub fn operator_client_config(ca_pem: &[u8], alpn: &[&[u8]]) -> Result<ClientConfig> {
    let cas = certs_from_pem("CA certificate (--ca)", ca_pem)?;
    let roots = ca_roots("CA certificate (--ca)", &cas)?;
    let mut config = client_builder("operator client")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn_list(alpn);
    Ok(config)
}

/// Registry client configuration (core checking that an image digest is still pullable):
/// TLS 1.2 or 1.3, no client certificate, trusting the certificates of a CA bundle PEM
/// (the system bundle; certificates rustls cannot use are skipped). ALPN `http/1.1`.
pub fn registry_client_config(bundle_pem: &[u8]) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_slice_iter(bundle_pem).filter_map(|c| c.ok());
    roots.add_parsable_certificates(certs);
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| PkiError::tls("registry client", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn_list(&[b"http/1.1"]);
    Ok(config)
}

/// [`operator_client_config`] reading the CA PEM from a file.
pub fn operator_client_config_from_file(
    ca_pem_path: &Path,
    alpn: &[&[u8]],
) -> Result<ClientConfig> {
    let pem =
        std::fs::read(ca_pem_path).map_err(|e| PkiError::io("read the CA file", ca_pem_path, e))?;
    operator_client_config(&pem, alpn)
}

/// Whether an existing server certificate can be kept: it chains to `ca_cert`, is valid
/// at `now` and for at least `renew_before` more, verifies for every name of
/// [`server_names_with_defaults`]`(names)`, and names nothing else (a name dropped from
/// the configuration also calls for a new certificate). Any parse failure gives `false`.
pub fn server_cert_is_current<S: AsRef<str>>(
    ca_cert: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    names: &[S],
    now: SystemTime,
    renew_before: Duration,
) -> bool {
    let Ok(wanted) = server_names_with_defaults(names) else {
        return false;
    };
    let Ok(info) = cert_info(cert) else {
        return false;
    };
    if info.server_names != wanted {
        return false;
    }
    if now
        .checked_add(renew_before)
        .is_none_or(|t| t >= info.not_after)
    {
        return false;
    }
    server_cert_verifies_for(ca_cert, cert, &wanted, now)
}

/// Whether `cert` verifies as a TLS server certificate for every one of `names` at `now`,
/// against the CA `ca_cert` alone.
pub fn server_cert_verifies_for<S: AsRef<str>>(
    ca_cert: &CertificateDer<'_>,
    cert: &CertificateDer<'_>,
    names: impl IntoIterator<Item = S>,
    now: SystemTime,
) -> bool {
    let Ok(roots) = ca_roots("CA certificate", std::slice::from_ref(ca_cert)) else {
        return false;
    };
    let Ok(verifier) =
        WebPkiServerVerifier::builder_with_provider(roots, crypto_provider()).build()
    else {
        return false;
    };
    let now = to_unix_time(now);
    names.into_iter().all(|name| {
        let Ok(server_name) = ServerName::try_from(name.as_ref().to_string()) else {
            return false;
        };
        verifier
            .verify_server_cert(cert, &[], &server_name, &[], now)
            .is_ok()
    })
}
