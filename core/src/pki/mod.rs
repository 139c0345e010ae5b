//! PKI of Wharf (design.md §3): the CA, the core's server certificate, agent client
//! certificates, enrollment and API tokens, and the rustls configurations of every
//! connection.
//!
//! Shape: pure functions taking bytes and a time in and giving bytes out
//! ([`CertificateAuthority`], [`inspect`](cert_info) helpers, tokens, TLS configs), and one
//! small part doing file IO ([`write_secret_file`], [`ensure_private`], [`CorePki`]).
//!
//! Choices:
//! - Keys are ECDSA P-256 (CA, server, agents): verified by rustls' ring provider and quinn
//!   everywhere, and by every other TLS stack an operator might point at core.
//! - The CA is pinned by agents through [`CaFingerprint`], the SHA-256 of its DER
//!   certificate, shown as `sha256:<64 lowercase hex>`.
//! - An agent's identity is the URI SAN `wharf://agent/<uuid>` of its client certificate.
//!   Revocation is checked in the TLS handshake through a shared [`RevocationCheck`]
//!   (usually a [`RevocationList`]), so a revoked agent never gets a session.
//! - Every TLS configuration uses the ring provider and TLS 1.3 only.
//! - Secrets (private keys, token plaintexts) travel as [`SecretString`], wiped on drop and
//!   redacted in `Debug`; no error message carries them.

use std::time::Duration;

mod ca;
mod error;
mod files;
mod inspect;
mod secret;
mod tls;
mod token;

#[cfg(test)]
mod tests;

pub use ca::{
    generate_agent_key_and_csr, server_names_with_defaults, AgentKeyRequest, CertificateAuthority,
    IssuedCertificate, ServerIdentity, CA_COMMON_NAME,
};
pub use error::{PkiError, Result};
pub use files::{ensure_private, read_secret_file, write_public_file, write_secret_file, CorePki};
pub use inspect::{
    agent_id_from_cert, agent_id_from_peer_certificates, cert_der_to_pem, cert_info,
    cert_not_after, cert_serial, certs_from_pem, renewal_due, CaFingerprint, CertInfo,
};
pub use secret::SecretString;
pub use tls::{
    agent_client_config, crypto_provider, enrollment_client_config, find_pki_error,
    https_server_config, mtls_server_config, operator_client_config,
    operator_client_config_from_file, pki_error_in_tls_error, registry_client_config,
    server_cert_is_current, server_cert_verifies_for, PinnedCaServerVerifier, RevocationCheck,
    RevocationList, TlsIdentity,
};
pub use token::{ApiToken, EnrollToken, TokenHash, TOKEN_RANDOM_BYTES};

/// ALPN protocol of the agent QUIC transport.
pub const ALPN_WHARF: &[u8] = b"wharf/1";
/// ALPN protocol of the HTTPS listener (enrollment, polling, operator API).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Prefix of the SAN URI that names an agent: `wharf://agent/<uuid>`.
pub const AGENT_URI_PREFIX: &str = "wharf://agent/";

/// Validity of the CA certificate: 10 years.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of the core's server certificate: 1 year.
pub const SERVER_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The server certificate is re-issued at start when less than this is left: 30 days.
pub const SERVER_CERT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Default validity of an agent client certificate: 30 days.
pub const DEFAULT_AGENT_CERT_VALIDITY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start this long before the `now` they were issued at, so that a peer
/// whose clock runs a little behind still accepts them.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(5 * 60);
/// Names the server certificate always carries besides the configured ones.
pub const DEFAULT_SERVER_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];
