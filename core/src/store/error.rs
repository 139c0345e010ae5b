//! [`StoreError`] and the value codecs.

use std::fmt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Table;

/// A boxed source error from a backend.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a store operation failed.
///
/// The open errors name the directory and say what to do: they reach the operator as
/// the message of `wharf-core serve` (or of an agent) failing to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The directory could not be created or opened as a store (permissions, not a
    /// directory, disk error...).
    #[error(
        "cannot open the store in {}: {reason}; check that the directory exists (or can be \
         created) and is readable and writable by this user, or pass another directory",
        dir.display()
    )]
    Open {
        /// The store directory.
        dir: PathBuf,
        /// What went wrong.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<BoxError>,
    },

    /// Another process (or another open store in this process) holds the directory.
    #[error(
        "the store in {} is in use by another process (or already open in this one); stop \
         the other wharf process that uses this directory, or pass a different directory",
        dir.display()
    )]
    Locked {
        /// The store directory.
        dir: PathBuf,
    },

    /// The backend found corrupt data while opening or reading.
    #[error(
        "the store in {} is corrupt ({detail}); it was left untouched: restore the \
         directory from a backup, or move it aside to start empty",
        dir.display()
    )]
    Corrupt {
        /// The store directory.
        dir: PathBuf,
        /// What the backend reported.
        detail: String,
    },

    /// The directory holds a store written in a format this build does not read.
    #[error(
        "the store in {} has format {found:?} but this build reads {expected:?}; use a \
         matching wharf version or another directory",
        dir.display()
    )]
    IncompatibleFormat {
        /// The store directory.
        dir: PathBuf,
        /// The format marker found on disk.
        found: String,
        /// The format marker this build writes.
        expected: &'static str,
    },

    /// A read or write failed in the backend.
    #[error("store {op} failed: {source}")]
    Backend {
        /// The operation (`get`, `scan`, `commit`...).
        op: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },

    /// An earlier commit failed to become durable, so the store refuses further commits
    /// (after a failed fsync nothing later can be trusted to be durable).
    #[error(
        "the store refuses commits since an earlier write failed to become durable ({reason}); \
         check the disk and restart the process"
    )]
    Failed {
        /// The first failure.
        reason: String,
    },

    /// The store was closed (its committer is gone).
    #[error("the store is closed")]
    Closed,

    /// A failure injected by [`MemoryStore::set_fail_commits`](super::MemoryStore::set_fail_commits).
    #[error("commit failed: failure injected by the test")]
    Injected,

    /// A value could not be encoded.
    #[error("cannot encode a {codec} value for table {table}: {message}")]
    Encode {
        /// The table the value was meant for.
        table: Table,
        /// The codec.
        codec: Codec,
        /// The encoder's message.
        message: String,
    },

    /// A stored value could not be decoded as the expected type.
    #[error("cannot decode the {codec} value at {table}/{key}: {message}")]
    Decode {
        /// The table.
        table: Table,
        /// The key, printable (as text when it is, else hex).
        key: String,
        /// The codec.
        codec: Codec,
        /// The decoder's message.
        message: String,
    },
}

impl StoreError {
    /// Wraps a backend error.
    pub(crate) fn backend(op: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            op,
            source: source.into(),
        }
    }
}

/// A value encoding for the typed helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// JSON (serde_json): readable, larger.
    Json,
    /// postcard: compact, the default for internal state.
    Postcard,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::Json => "json",
            Codec::Postcard => "postcard",
        })
    }
}

impl Codec {
    /// Encodes `value`; `table` only serves the error message.
    pub fn encode<T: Serialize + ?Sized>(
        self,
        table: Table,
        value: &T,
    ) -> Result<Vec<u8>, StoreError> {
        let res = match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Codec::Postcard => postcard::to_stdvec(value).map_err(|e| e.to_string()),
        };
        res.map_err(|message| StoreError::Encode {
            table,
            codec: self,
            message,
        })
    }

    /// Decodes `bytes`; `table` and `key` only serve the error message.
    pub fn decode<T: DeserializeOwned>(
        self,
        table: Table,
        key: &[u8],
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        let res = match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::Postcard => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        };
        res.map_err(|message| StoreError::Decode {
            table,
            key: printable_key(key),
            codec: self,
            message,
        })
    }
}

/// `key` as text when it is printable ASCII, else as `0x` + hex.
pub(crate) fn printable_key(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(key).into_owned()
    } else {
        format!("0x{}", hex::encode(key))
    }
}
