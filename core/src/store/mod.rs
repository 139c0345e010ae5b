//! The durable store (design.md §3).
//!
//! Core's logic (task queue, PKI, tokens, audit log) keeps its state through the
//! [`Store`] trait: a small key-value API over a fixed set of named [`Table`]s, with
//! atomic, durable multi-table [`Batch`] commits. Two implementations:
//!
//! - [`SledStore`]: the production backend, sled 0.34 under `--data-dir`. One sled tree,
//!   one prefix byte per table, one committer thread doing *group commit*: concurrent
//!   commits are gathered, applied as one atomic sled batch and made durable by one flush.
//! - [`MemoryStore`]: an in-memory store with the same semantics for unit tests of the
//!   pure logic; every commit is trivially durable, and failures can be injected.
//!
//! # The durability rule
//!
//! A state change is durable before anyone is told about it: callers put every change of
//! one logical step into one [`Batch`], `await` [`Store::commit`], and only *then* answer
//! the API call, dispatch the task or acknowledge the result. When the commit future
//! resolves `Ok`, the whole batch is on disk (fsync'd) and survives `kill -9` of the
//! process; a batch is never seen half-applied, neither by readers nor after a crash.
//!
//! Reads see batches as soon as they are applied, which can be a moment before the
//! batch's flush completes. Anything a read returned is durable no later than the
//! moment the caller's *next* commit resolves (flushes cover everything applied before
//! them), so "read, decide, commit the decision, then act" is always safe. A caller
//! that must act on a read without writing anything can commit an empty batch, which is
//! a durability barrier.
//!
//! See `docs/store.md` for the design, measurements and the kill -9 torture results.
//!
//! # Example
//!
//! ```
//! use wharf_core::store::{Batch, MemoryStore, Store, StoreExt, Table};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store = MemoryStore::new();
//! let mut batch = Batch::new();
//! batch.put(Table::Tasks, b"task/1".to_vec(), b"queued".to_vec());
//! batch.put_json(Table::Idempotency, b"alice/key-1".to_vec(), &"task/1")?;
//! store.commit(batch).await?;
//!
//! assert_eq!(store.get(Table::Tasks, b"task/1")?, Some(b"queued".to_vec()));
//! let task: Option<String> = store.get_json(Table::Idempotency, b"alice/key-1")?;
//! assert_eq!(task.as_deref(), Some("task/1"));
//! # Ok::<(), wharf_core::store::StoreError>(())
//! # }).unwrap();
//! ```

mod error;
mod memory;
mod sled_store;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use error::{BoxError, Codec, StoreError};
pub use memory::MemoryStore;
pub use sled_store::SledStore;

/// A key or a value: plain bytes. Keys sort bytewise.
pub type Bytes = Vec<u8>;

/// One `(key, value)` pair returned by a scan; the key is without the table prefix.
pub type Entry = (Bytes, Bytes);

/// The future returned by [`Store::commit`].
///
/// It resolves once the batch is durable (`Ok`) or known to have failed (`Err`). It does
/// not borrow the store, so it can be moved into a spawned task.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'static>>;

macro_rules! tables {
    ($( $(#[$doc:meta])* $variant:ident = $byte:literal, $name:literal; )*) => {
        /// A named table of the store.
        ///
        /// Each table is a separate, bytewise-ordered key space. On disk a table is one
        /// prefix byte in front of every key, so **a variant's byte must never change
        /// once released**; to add a table, add one line to the `tables!` list in
        /// `core/src/store/mod.rs` with a new, unused byte (0 is reserved for the store's
        /// own metadata).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Table {
            $( $(#[$doc])* $variant, )*
        }

        impl Table {
            /// Every table, in prefix order.
            pub const ALL: &'static [Table] = &[$(Table::$variant),*];

            /// The byte that prefixes this table's keys on disk.
            pub const fn prefix(self) -> u8 {
                match self {
                    $(Table::$variant => $byte,)*
                }
            }

            /// The table's name, for logs and error messages (`snake_case`).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Table::$variant => $name,)*
                }
            }

            /// The table whose prefix byte is `byte`, if any.
            pub fn from_prefix(byte: u8) -> Option<Table> {
                match byte {
                    $($byte => Some(Table::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

tables! {
    /// Tasks by id.
    Tasks = 1, "tasks";
    /// `(requester, idempotency_key)` to task id.
    Idempotency = 2, "idempotency";
    /// Enrolled agents.
    Agents = 3, "agents";
    /// One-time agent enrollment tokens (hashed).
    EnrollTokens = 4, "enroll_tokens";
    /// Operator API tokens (hashed).
    ApiTokens = 5, "api_tokens";
    /// Registry credentials (encrypted at rest).
    Registries = 6, "registries";
    /// The append-only, hash-chained audit log; keys are [`seq_key`]s so that
    /// [`Store::last`] returns the chain's head.
    AuditLog = 7, "audit_log";
    /// Small singletons: schema versions, counters, the PKI's bookkeeping.
    Meta = 8, "meta";
    /// Task results.
    Results = 9, "results";
    /// Signed evidence records of finished deploys and rollbacks, by task id (the
    /// `wharf.evidence/v1` JSON exactly as signed).
    Evidence = 10, "evidence";
}

/// Lets types holding an `Arc<dyn Store>` derive `Debug` (the store shows no content).
impl fmt::Debug for dyn Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Store")
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The byte reserved for the store's own metadata (format marker); no [`Table`] uses it.
pub(crate) const INTERNAL_PREFIX: u8 = 0;

/// The on-disk key of `key` in `table`: the table's prefix byte, then the key.
pub(crate) fn encode_key(table: Table, key: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(key.len() + 1);
    out.push(table.prefix());
    out.extend_from_slice(key);
    out
}

/// A key for ordered, append-only tables such as [`Table::AuditLog`]: `n` as 8 big-endian
/// bytes, so that bytewise order is numeric order.
pub fn seq_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// The inverse of [`seq_key`]; `None` when `key` is not 8 bytes long.
pub fn parse_seq_key(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.try_into().ok()?))
}

/// One change in a [`Batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set `key` in `table` to `value` (insert or overwrite).
    Put {
        /// The table.
        table: Table,
        /// The key, without the table prefix.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Remove `key` from `table` (a no-op when absent).
    Remove {
        /// The table.
        table: Table,
        /// The key, without the table prefix.
        key: Bytes,
    },
}

/// A set of puts and removes, across any tables, committed atomically by
/// [`Store::commit`].
///
/// Operations apply in the order they were added: a later operation on the same key wins.
/// Either every operation of a committed batch is visible (and, once the commit resolved,
/// durable) or none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch. Committing it is a durability barrier (see the module docs).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put of raw bytes.
    pub fn put(
        &mut self,
        table: Table,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
    ) -> &mut Self {
        self.ops.push(Op::Put {
            table,
            key: key.into(),
            value: value.into(),
        });
        self
    }

    /// Adds a removal.
    pub fn remove(&mut self, table: Table, key: impl Into<Bytes>) -> &mut Self {
        self.ops.push(Op::Remove {
            table,
            key: key.into(),
        });
        self
    }

    /// Adds a put of `value` encoded as JSON (serde_json).
    pub fn put_json<T: Serialize + ?Sized>(
        &mut self,
        table: Table,
        key: impl Into<Bytes>,
        value: &T,
    ) -> Result<&mut Self, StoreError> {
        let bytes = Codec::Json.encode(table, value)?;
        Ok(self.put(table, key, bytes))
    }

    /// Adds a put of `value` encoded with postcard (compact; the store's usual format).
    pub fn put_postcard<T: Serialize + ?Sized>(
        &mut self,
        table: Table,
        key: impl Into<Bytes>,
        value: &T,
    ) -> Result<&mut Self, StoreError> {
        let bytes = Codec::Postcard.encode(table, value)?;
        Ok(self.put(table, key, bytes))
    }

    /// Appends every operation of `other` after this batch's own.
    pub fn append(&mut self, other: Batch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }

    /// The operations, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Consumes the batch, giving its operations in order.
    pub fn into_ops(self) -> Vec<Op> {
        self.ops
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Bytes of keys and values carried by the batch (a size estimate).
    pub fn payload_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, .. } => key.len() + value.len() + 1,
                Op::Remove { key, .. } => key.len() + 1,
            })
            .sum()
    }
}

impl FromIterator<Op> for Batch {
    fn from_iter<I: IntoIterator<Item = Op>>(iter: I) -> Self {
        Batch {
            ops: iter.into_iter().collect(),
        }
    }
}

/// Counters of a store since it was opened, for metrics and for measuring group commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches committed successfully (each `commit` call that resolved `Ok`).
    pub commits: u64,
    /// Durable flushes (fsyncs) done; with group commit one flush serves many commits.
    pub flushes: u64,
    /// Commits that resolved with an error.
    pub failed_commits: u64,
}

/// The durable key-value store behind core's logic (design.md §3).
///
/// Tables are separate ordered key spaces ([`Table`]); keys and values are bytes
/// (typed access through [`StoreExt`] and [`Batch::put_postcard`] /
/// [`Batch::put_json`]). Reads are synchronous and cheap; writes only happen through
/// [`commit`](Store::commit), atomically and durably. The trait is object-safe: core holds
/// an `Arc<dyn Store>`.
///
/// Implementations must guarantee:
/// - **Atomicity**: a batch is applied all-or-nothing, for readers and across crashes.
/// - **Durability**: when the commit future resolves `Ok`, the batch survives a crash of
///   the process (`kill -9`) at any later instant.
/// - **Order**: batches apply in the order `commit` was *called*; a batch is submitted by
///   the call itself, so dropping the future does not withdraw it (the caller only stops
///   waiting for the outcome).
/// - **Read-your-writes**: once a commit resolved, every read sees it.
/// - **Prefix**: after a crash the store holds a prefix of the submitted batches
///   (everything acknowledged, possibly some more that were submitted but not yet
///   acknowledged, never a gap).
pub trait Store: Send + Sync {
    /// The value of `key` in `table`, if present.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError>;

    /// Every entry of `table` whose key starts with `prefix`, in ascending key order.
    /// An empty prefix scans the whole table.
    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError>;

    /// At most `limit` entries of `table` with a key `>= start`, in ascending key order:
    /// the page-by-page form of a scan (pass the last key seen plus a `0` byte to go on).
    fn scan_from(&self, table: Table, start: &[u8], limit: usize)
        -> Result<Vec<Entry>, StoreError>;

    /// The entry of `table` with the greatest key (the head of the audit hash chain).
    fn last(&self, table: Table) -> Result<Option<Entry>, StoreError>;

    /// Submits `batch` and returns a future that resolves once it is durable.
    ///
    /// See the trait's guarantees. On `Err` the batch may or may not have been applied
    /// (for instance when the disk refused the flush); implementations then refuse
    /// further commits rather than pretend later ones are durable.
    fn commit(&self, batch: Batch) -> CommitFuture;

    /// Counters since the store was opened.
    fn stats(&self) -> StoreStats;

    /// Every entry of `table`, in ascending key order.
    fn scan(&self, table: Table) -> Result<Vec<Entry>, StoreError> {
        self.scan_prefix(table, &[])
    }
}

/// Typed reads on any [`Store`] (including `dyn Store`): decode values with
/// [`Codec::Json`] or [`Codec::Postcard`], with [`StoreError::Decode`] naming the table
/// and key of a value that does not decode.
pub trait StoreExt: Store {
    /// [`Store::get`], decoding the value as JSON.
    fn get_json<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(table, key)?
            .map(|v| Codec::Json.decode(table, key, &v))
            .transpose()
    }

    /// [`Store::get`], decoding the value with postcard.
    fn get_postcard<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        self.get(table, key)?
            .map(|v| Codec::Postcard.decode(table, key, &v))
            .transpose()
    }

    /// [`Store::scan_prefix`], decoding every value as JSON.
    fn scan_prefix_json<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Bytes, T)>, StoreError> {
        decode_all(Codec::Json, table, self.scan_prefix(table, prefix)?)
    }

    /// [`Store::scan_prefix`], decoding every value with postcard.
    fn scan_prefix_postcard<T: DeserializeOwned>(
        &self,
        table: Table,
        prefix: &[u8],
    ) -> Result<Vec<(Bytes, T)>, StoreError> {
        decode_all(Codec::Postcard, table, self.scan_prefix(table, prefix)?)
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

fn decode_all<T: DeserializeOwned>(
    codec: Codec,
    table: Table,
    entries: Vec<Entry>,
) -> Result<Vec<(Bytes, T)>, StoreError> {
    entries
        .into_iter()
        .map(|(k, v)| {
            let value = codec.decode(table, &k, &v)?;
            Ok((k, value))
        })
        .collect()
}

#[cfg(test)]
mod tests;
