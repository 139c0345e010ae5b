//! The error type of the PKI module.
//!
//! Every message says what was wrong and, where the reader can act on it, what to do.
//! No variant carries key material, token plaintext or certificate private data: names,
//! paths, fingerprints and library reasons only.

use std::path::PathBuf;

/// What went wrong in the PKI module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Generating a key, certificate or CSR failed inside the crypto library.
    #[error("could not generate the {what}: {reason}")]
    Generate {
        /// What was being generated ("CA certificate", "agent key", ...).
        what: &'static str,
        /// The library's reason.
        reason: String,
    },

    /// The system random number generator failed.
    #[error("the system random number generator failed; check that /dev/urandom is readable")]
    Random,

    /// A PEM document could not be read.
    #[error("could not read the {what} as PEM: {reason}; expected a PEM file with a `-----BEGIN {label}-----` block")]
    InvalidPem {
        /// What the PEM was supposed to hold ("CA certificate", ...).
        what: &'static str,
        /// The PEM label expected.
        label: &'static str,
        /// The parser's reason.
        reason: String,
    },

    /// A certificate could not be parsed or does not have the expected shape.
    #[error("the {what} is not a valid certificate: {reason}")]
    InvalidCertificate {
        /// What the certificate was supposed to be ("CA certificate", "agent certificate", ...).
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A private key could not be loaded.
    #[error("the {what} is not a usable private key: {reason}; expected a PKCS#8 PEM key (`-----BEGIN PRIVATE KEY-----`) as written by Wharf")]
    InvalidKey {
        /// Which key ("CA key", "server key", "agent key").
        what: &'static str,
        /// The library's reason (never the key itself).
        reason: String,
    },

    /// A private key does not belong to the certificate it was loaded with.
    #[error("the {what} does not match its certificate; restore the key file that was created together with the certificate")]
    KeyMismatch {
        /// Which key ("CA key", "server key", ...).
        what: &'static str,
    },

    /// A server name given for the server certificate is neither a DNS name nor an IP address.
    #[error("`{name}` cannot be used as a server name: {reason}; pass a DNS name (core.example.com) or an IP address to --name")]
    InvalidServerName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// The agent id is not a UUID.
    #[error("agent id `{value}` is not a UUID; agent ids are assigned by core at enrollment")]
    InvalidAgentId {
        /// The value as given (an id is not secret).
        value: String,
    },

    /// The agent name cannot be used in a certificate.
    #[error("agent name {name:?} is not usable: {reason}; use 1-64 printable characters")]
    InvalidAgentName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: String,
    },

    /// The agent's certificate signing request was refused.
    #[error("the agent's certificate signing request is invalid: {reason}; the agent must send a PEM `CERTIFICATE REQUEST` signed with its own key")]
    InvalidCsr {
        /// Why it was refused.
        reason: String,
    },

    /// The agent's public key was refused.
    #[error("the agent's public key is invalid: {reason}; send a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or a CSR")]
    InvalidPublicKey {
        /// Why it was refused.
        reason: String,
    },

    /// A validity period is empty or out of range.
    #[error("invalid certificate validity: {reason}")]
    InvalidValidity {
        /// What is wrong with it.
        reason: String,
    },

    /// A certificate has no `wharf://agent/<id>` SAN URI, or more than one.
    #[error("the certificate does not identify a Wharf agent: {reason}; only certificates issued by core at enrollment or renewal are accepted")]
    NoAgentIdentity {
        /// What is wrong with it.
        reason: String,
    },

    /// A `sha256:` fingerprint could not be parsed.
    #[error("`{value}` is not a CA fingerprint: {reason}; expected `sha256:` followed by 64 hex digits, as printed by wharf-core")]
    InvalidFingerprint {
        /// The value as given (a fingerprint is public).
        value: String,
        /// Why it was refused.
        reason: String,
    },

    /// The server's CA is not the pinned one.
    #[error(
        "the core's CA fingerprint did not match --ca-hash: expected {expected}, the server presented {}; \
         check that --ca-hash is the `ca_hash` printed by `wharf agent token create` (or by wharf-core at start) \
         and that --core points at that core",
        if presented.is_empty() { "no CA certificate".to_string() } else { presented.join(", ") }
    )]
    CaFingerprintMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// Fingerprints of the certificates the server sent besides its own.
        presented: Vec<String>,
    },

    /// A TLS configuration could not be built.
    #[error("could not build the {what} TLS configuration: {reason}")]
    TlsConfig {
        /// Which configuration.
        what: &'static str,
        /// The library's reason.
        reason: String,
    },

    /// A file operation failed.
    #[error("could not {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("write", "read", "rename", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A secret file may be read by other users.
    #[error("{} holds secret key material but is readable by group or others (mode {mode:04o}); run `chmod 600 {}` and check who could have read it", path.display(), path.display())]
    InsecurePermissions {
        /// The file concerned.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// Files of the core's PKI are inconsistent (one present, its partner missing).
    #[error("{}: {reason}", path.display())]
    InconsistentState {
        /// The data directory or file concerned.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },

    /// A presented token is not the expected one (or not a Wharf token at all).
    #[error("the {kind} token is not valid; ask an operator for a new one")]
    TokenInvalid {
        /// "enrollment" or "API".
        kind: &'static str,
    },

    /// A presented token has expired.
    #[error("the {kind} token has expired; ask an operator for a new one")]
    TokenExpired {
        /// "enrollment" or "API".
        kind: &'static str,
    },
}

impl PkiError {
    pub(crate) fn generate(what: &'static str, err: impl std::fmt::Display) -> Self {
        PkiError::Generate {
            what,
            reason: err.to_string(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PkiError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn cert(what: &'static str, reason: impl std::fmt::Display) -> Self {
        PkiError::InvalidCertificate {
            what,
            reason: reason.to_string(),
        }
    }

    pub(crate) fn tls(what: &'static str, reason: impl std::fmt::Display) -> Self {
        PkiError::TlsConfig {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Result alias of the PKI module.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;
