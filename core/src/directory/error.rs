//! [`DirectoryError`]: what can go wrong in the directory, with messages an operator can
//! act on and a mapping to HTTP statuses for the API and the enrollment endpoint.
//!
//! No variant carries a secret: token plaintexts, passwords and keys never reach an error
//! message (names, ids, hosts, times and library reasons only).

use wharf_protocol::Timestamp;

use crate::audit::AuditError;
use crate::pki::PkiError;
use crate::store::StoreError;

/// The class of a [`DirectoryError`], for the HTTP status and the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request itself is wrong (400); nothing was changed.
    InvalidInput,
    /// The presented credential is unknown (401).
    Unauthenticated,
    /// The credential is known but does not allow this (403).
    Forbidden,
    /// The named thing does not exist (404).
    NotFound,
    /// The request conflicts with the current state (409).
    Conflict,
    /// The credential existed but can no longer be used: expired or already used (410).
    Gone,
    /// A fault of core itself: store, crypto, corrupt data (500).
    Internal,
    /// Core cannot take writes at the moment (its store refuses commits) (503).
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status code of this kind.
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorKind::InvalidInput => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }
}

/// What went wrong in a [`Directory`](super::Directory) operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectoryError {
    /// An agent or token name is not acceptable.
    #[error(
        "invalid {what} name {name:?}: {reason}; a name is 1 to 63 letters, digits, `_`, `.` \
         or `-`, starting with a letter or digit"
    )]
    InvalidName {
        /// "agent" or "API token".
        what: &'static str,
        /// The name as given (shortened to 100 characters).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// Some other part of the request is not acceptable.
    #[error("invalid {field}: {reason}")]
    InvalidInput {
        /// The field concerned.
        field: &'static str,
        /// Why it was refused and what is expected.
        reason: String,
    },

    /// The enrollment token is not one this core issued (mistyped, for another core, or
    /// removed long after it expired).
    #[error(
        "the enrollment token is not known to this core (mistyped, issued by another core, or \
         expired long ago); create a new one with `wharf agent token create --name NAME`"
    )]
    EnrollTokenUnknown,

    /// The enrollment token has expired.
    #[error(
        "the enrollment token for agent {name} expired at {expired_at}; create a new one with \
         `wharf agent token create --name {name}`"
    )]
    EnrollTokenExpired {
        /// The agent name the token was issued for.
        name: String,
        /// When it expired.
        expired_at: Timestamp,
    },

    /// The enrollment token was used already (tokens are one-time).
    #[error(
        "the enrollment token for agent {name} was already used at {used_at} (tokens work \
         once); create a new one with `wharf agent token create --name {name}`"
    )]
    EnrollTokenUsed {
        /// The agent name the token was issued for.
        name: String,
        /// When it was used.
        used_at: Timestamp,
    },

    /// The enrollment token was issued for another agent name.
    #[error(
        "the enrollment token was issued for agent {token_name}, not {requested}; start the \
         agent with the name {token_name}, or create a token for {requested} with \
         `wharf agent token create --name {requested}`"
    )]
    EnrollTokenWrongName {
        /// The name the token was issued for.
        token_name: String,
        /// The name the agent asked for.
        requested: String,
    },

    /// An enrolled, non-revoked agent already has this name.
    #[error(
        "an enrolled agent is already named {name} (id {agent_id}); revoke it first with \
         `wharf agent revoke {name}`, or pick another name"
    )]
    NameTaken {
        /// The name.
        name: String,
        /// The enrolled agent's id.
        agent_id: String,
    },

    /// No enrolled agent has this name or id.
    #[error("no agent {agent} is enrolled; `wharf agent list` shows the enrolled agents")]
    UnknownAgent {
        /// The name or id as given.
        agent: String,
    },

    /// The agent was revoked and cannot renew its certificate or open sessions.
    #[error(
        "agent {name} ({agent_id}) was revoked at {revoked_at}; to bring it back, enroll it \
         again with a new token: `wharf agent token create --name {name}`"
    )]
    AgentRevoked {
        /// The agent's name.
        name: String,
        /// The agent's id.
        agent_id: String,
        /// When it was revoked.
        revoked_at: Timestamp,
    },

    /// No API token has this id.
    #[error("no API token has id {id}; `wharf token list` shows the tokens")]
    UnknownApiToken {
        /// The id as given.
        id: String,
    },

    /// Revoking this token would leave no usable admin token.
    #[error(
        "API token {id} is the last admin token that is not revoked; create another one first \
         (`wharf token create --role admin`) so that the API stays manageable"
    )]
    LastAdminToken {
        /// The token's id.
        id: String,
    },

    /// Stored registry credentials cannot be decrypted.
    #[error(
        "the stored credentials for registry {host} cannot be decrypted (the master key differs \
         from the one they were stored with, or the record was altered); run \
         `wharf registry login {host} --username USER --password-stdin` again"
    )]
    CredentialsUnreadable {
        /// The registry host.
        host: String,
    },

    /// The master key is not the one the data dir was set up with.
    #[error(
        "the master key does not match the one this data dir was created with (was \
         WHARF_MASTER_KEY changed or the key file replaced?); start core with the original \
         key: stored registry credentials cannot be decrypted with another"
    )]
    MasterKeyMismatch,

    /// A cryptographic primitive failed (the system random generator, usually).
    #[error("could not {what}: the crypto library failed; check that /dev/urandom is readable")]
    Crypto {
        /// What was being done.
        what: &'static str,
    },

    /// Issuing or reading a certificate failed (an invalid CSR, usually).
    #[error(transparent)]
    Pki(#[from] PkiError),

    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),

    /// The audit log failed (the change was not committed).
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl DirectoryError {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        use DirectoryError as E;
        match self {
            E::InvalidName { .. } | E::InvalidInput { .. } => ErrorKind::InvalidInput,
            E::EnrollTokenUnknown => ErrorKind::Unauthenticated,
            E::EnrollTokenWrongName { .. } | E::AgentRevoked { .. } => ErrorKind::Forbidden,
            E::EnrollTokenExpired { .. } | E::EnrollTokenUsed { .. } => ErrorKind::Gone,
            E::UnknownAgent { .. } | E::UnknownApiToken { .. } => ErrorKind::NotFound,
            E::NameTaken { .. } | E::LastAdminToken { .. } => ErrorKind::Conflict,
            E::CredentialsUnreadable { .. } | E::MasterKeyMismatch | E::Crypto { .. } => {
                ErrorKind::Internal
            }
            E::Pki(e) => match e {
                PkiError::InvalidCsr { .. }
                | PkiError::InvalidPublicKey { .. }
                | PkiError::InvalidAgentName { .. }
                | PkiError::InvalidAgentId { .. } => ErrorKind::InvalidInput,
                _ => ErrorKind::Internal,
            },
            E::Store(e) | E::Audit(AuditError::Store(e)) => store_kind(e),
            E::Audit(_) => ErrorKind::Internal,
        }
    }

    /// The HTTP status code to answer with (see [`ErrorKind::http_status`]).
    pub fn http_status(&self) -> u16 {
        self.kind().http_status()
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        DirectoryError::InvalidInput {
            field,
            reason: reason.into(),
        }
    }
}

fn store_kind(e: &StoreError) -> ErrorKind {
    match e {
        StoreError::Failed { .. } | StoreError::Closed => ErrorKind::Unavailable,
        _ => ErrorKind::Internal,
    }
}
