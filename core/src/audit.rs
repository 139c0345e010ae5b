//! The append-only, hash-chained audit log (design.md §3, "Operator API": every mutating
//! call lands in an append-only, hash-chained audit log with secrets redacted).
//!
//! # Entries and the chain
//!
//! Each [`AuditEntry`] records who (`actor`) did what (`action`) to what (`target`), with a
//! JSON `detail`, at a time `at`. Entries are numbered from 1 without gaps (`seq`) and kept
//! in [`Table::AuditLog`] under [`seq_key`]`(seq)`. Each entry carries the hash of the one
//! before it (`prev_hash`; the first entry's is [`GENESIS_HASH`], 64 zeros) and its own
//! `hash`, so changing, removing or reordering an entry breaks the chain at that point,
//! and [`AuditLog::verify`] names the first broken entry.
//!
//! # The hash, exactly
//!
//! `hash` is the lowercase hex SHA-256 of the canonical JSON (as in stickers:
//! [`wharf_sticker::canonical_json`]: members sorted by the UTF-8 bytes of their keys, no
//! whitespace, integers only) of this object, i.e. of the stored entry without `hash`:
//!
//! ```text
//! {"action":A,"actor":B,"at":"2024-05-01T12:30:00.250Z","detail":D,"prev_hash":P,"seq":N,"target":T}
//! ```
//!
//! `at` is the RFC 3339 UTC form with milliseconds written by
//! [`Timestamp`]'s `Display`; `seq` a plain integer. Numbers in
//! `detail` that are not 64-bit integers are stored as strings (JSON has no single textual
//! form for them). So an auditor can recompute any hash from the stored JSON with
//! `sha256(json.dumps(e_without_hash, sort_keys=True, separators=(",", ":"),
//! ensure_ascii=False))` in Python.
//!
//! The chain's head (`seq` and `hash` of the last entry) is also kept in
//! [`Table::Meta`] under [`HEAD_KEY`], written in the same batch as the entry, so that
//! removing the *last* entries is detected too. A hash chain without signatures detects
//! edits by anyone who does not rewrite every later entry and the head consistently; keep
//! the `head_hash` that [`AuditLog::verify`] reports somewhere else to pin a point in time.
//!
//! # Appending atomically with a state change
//!
//! The entry that records a change belongs in the *same* store batch as the change, so a
//! crash can never keep one without the other. [`AuditLog::append_batch`] puts the next
//! entry into the caller's [`Batch`] and returns a [`PendingAudit`] that holds the append
//! lock (appends are serialized, so `seq` and `prev_hash` stay consistent); the caller
//! commits the batch and then calls [`PendingAudit::committed`]. If the pending append is
//! dropped instead (the commit failed, or the caller gave up), the in-memory tail is not
//! advanced and is re-read from the store before the next append.
//! [`AuditLog::append_batch_all`] puts several entries into one batch (a group-committed
//! round). [`AuditLog::commit_with`] does the three steps in one call, and
//! [`AuditLog::append`] commits an entry on its own.
//!
//! ```
//! use std::sync::Arc;
//! use wharf_core::audit::{AuditLog, AuditRecord};
//! use wharf_core::store::{Batch, MemoryStore, Store, Table};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
//! let audit = AuditLog::open(store.clone())?;
//!
//! let mut batch = Batch::new();
//! batch.put(Table::Meta, b"motd".to_vec(), b"hello".to_vec());
//! let record = AuditRecord::new("alice", "motd.set", "motd")
//!     .with_detail(serde_json::json!({"text": "hello", "password": "hunter2"}));
//! let entry = audit.commit_with(batch, record).await?;
//! assert_eq!(entry.seq, 1);
//! assert_eq!(entry.detail["password"], "[redacted]");
//! assert_eq!(audit.verify().unwrap().entries, 1);
//! # Ok::<(), wharf_core::audit::AuditError>(())
//! # }).unwrap();
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, MutexGuard};
use wharf_protocol::Timestamp;

use crate::store::{parse_seq_key, seq_key, Batch, Codec, Store, StoreError, StoreExt, Table};

/// A wall clock, injectable for tests. Shared by the audit log and the directory.
pub type Clock = Arc<dyn Fn() -> SystemTime + Send + Sync>;

/// The real wall clock ([`SystemTime::now`]).
pub fn system_clock() -> Clock {
    Arc::new(SystemTime::now)
}

/// The `prev_hash` of the first entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The key of the chain's head in [`Table::Meta`] (JSON `{"seq": N, "hash": "..."}`).
pub const HEAD_KEY: &[u8] = b"audit.head";

/// What [`redact`] puts in place of a secret value.
pub const REDACTED: &str = "[redacted]";

/// Largest page [`AuditLog::list`] returns.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// One entry of the audit log, as stored (JSON) and as listed by `/v1/audit-log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// When the entry was appended (RFC 3339 in JSON).
    pub at: Timestamp,
    /// Who did it: an API token's name, `agent:<name>`, `wharf-core`...
    pub actor: String,
    /// What was done, dotted lowercase: `agent.enroll`, `token.create`, `task.submit`...
    pub action: String,
    /// What it was done to: an agent name, a token id, a registry host, a task id.
    pub target: String,
    /// Details, with secrets redacted (see [`redact`]).
    pub detail: Value,
    /// The previous entry's `hash` ([`GENESIS_HASH`] for the first entry).
    pub prev_hash: String,
    /// Lowercase hex SHA-256 over the entry's canonical form (see the module docs).
    pub hash: String,
}

impl AuditEntry {
    /// The canonical bytes the hash covers: the canonical JSON of the entry without
    /// `hash` (see the module docs).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, AuditError> {
        let unhashed = serde_json::json!({
            "seq": self.seq,
            "at": self.at.to_string(),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
        });
        wharf_sticker::canonical_json(&unhashed).map_err(|e| AuditError::InvalidDetail {
            reason: e.to_string(),
        })
    }

    /// The hash this entry should carry, computed from its other fields.
    pub fn compute_hash(&self) -> Result<String, AuditError> {
        let bytes = self.canonical_bytes()?;
        Ok(hex::encode(
            ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
        ))
    }
}

/// What to record: the caller's part of an [`AuditEntry`] (the log adds `seq`, `at` and
/// the hashes).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Who did it.
    pub actor: String,
    /// What was done (`agent.revoke`, ...).
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// Details; redacted again by the log before it is stored.
    pub detail: Value,
}

impl AuditRecord {
    /// A record with an empty (`{}`) detail.
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
    ) -> Self {
        AuditRecord {
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the detail.
    pub fn with_detail(mut self, detail: Value) -> Self {
        self.detail = detail;
        self
    }
}

/// Words that mark a JSON key as holding a secret (matched against the words of the key,
/// singular or plural; see [`is_secret_key`]).
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "token",
    "secret",
    "key",
    "credential",
    "credentials",
    "authorization",
    "private",
];

/// Words that mark a key as naming something public even next to a secret word:
/// `public_key`, `key_id`, `token_id`, `idempotency_key`, `ca_fingerprint`...
const PUBLIC_WORDS: &[&str] = &["public", "id", "idempotency", "fingerprint"];

/// The lowercase words of a JSON key: split at every character that is not a letter or
/// digit, and between a lowercase letter or digit and an uppercase letter (`apiToken`).
fn key_words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            prev_lower = false;
            continue;
        }
        if c.is_uppercase() && prev_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        prev_lower = c.is_lowercase() || c.is_ascii_digit();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Whether a JSON member named `key` holds a secret that [`redact`] blanks.
///
/// The key is split into words (`registry_password`, `apiToken`, `X-Auth-Key` give
/// `registry password`, `api token`, `x auth key`); it is secret when one word is
/// `password`, `passwd`, `passphrase`, `token`, `secret`, `key`, `credential(s)`,
/// `authorization` or `private` (or the plural of one), unless another word is
/// `public`, `id`, `idempotency` or `fingerprint` (`public_key`, `token_id`,
/// `idempotency_key` are kept).
pub fn is_secret_key(key: &str) -> bool {
    let words = key_words(key);
    let is = |set: &[&str], w: &str| {
        set.contains(&w) || w.strip_suffix('s').is_some_and(|s| set.contains(&s))
    };
    words.iter().any(|w| is(SECRET_WORDS, w)) && !words.iter().any(|w| is(PUBLIC_WORDS, w))
}

/// Blanks, recursively and in place, the value of every object member whose key
/// [`is_secret_key`]: the value (whatever its type) becomes the string [`REDACTED`].
///
/// The audit log applies it to every detail it stores; callers should not rely on it
/// alone and leave secrets out of what they record in the first place.
///
/// ```
/// let mut v = serde_json::json!({"host": "r.example", "auth": {"password": "x", "user": "u"},
///                                "tokens": ["a"], "public_key": "ab"});
/// wharf_core::audit::redact(&mut v);
/// assert_eq!(v, serde_json::json!({"host": "r.example",
///     "auth": {"password": "[redacted]", "user": "u"}, "tokens": "[redacted]", "public_key": "ab"}));
/// ```
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                if is_secret_key(key) {
                    *member = Value::String(REDACTED.to_string());
                } else {
                    redact(member);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// [`redact`] by value.
pub fn redacted(mut value: Value) -> Value {
    redact(&mut value);
    value
}

/// Replaces every number that is not a 64-bit integer by its JSON text as a string, so
/// that the detail has a canonical form (and hashes the same after a JSON round trip).
fn normalize_numbers(value: &mut Value) {
    match value {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
            *value = Value::String(n.to_string());
        }
        Value::Object(map) => map.values_mut().for_each(normalize_numbers),
        Value::Array(items) => items.iter_mut().for_each(normalize_numbers),
        _ => {}
    }
}

/// Why an audit operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// The store failed (read, or the commit of the entry's batch).
    #[error("audit log: {0}")]
    Store(#[from] StoreError),

    /// The detail has no canonical form (nested deeper than 128 levels).
    #[error("the audit detail cannot be recorded: {reason}")]
    InvalidDetail {
        /// Why.
        reason: String,
    },

    /// The chain's last entry (or head record) cannot be read, so no entry can be
    /// appended after it.
    #[error(
        "the audit log's last entry (seq {seq}) cannot be read: {reason}; the log was altered \
         or the store is damaged: restore the data dir from a backup"
    )]
    CorruptTail {
        /// The entry (or head) that does not read.
        seq: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// The result of a successful [`AuditLog::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifiedChain {
    /// How many entries were checked (the whole log).
    pub entries: u64,
    /// The last entry's `seq` (0 for an empty log).
    pub head_seq: u64,
    /// The last entry's `hash` ([`GENESIS_HASH`] for an empty log).
    pub head_hash: String,
}

/// The first point where [`AuditLog::verify`] found the chain broken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("the audit log is broken at entry {seq}: {reason}")]
pub struct ChainBreak {
    /// The first entry that is wrong (or missing).
    pub seq: u64,
    /// What is wrong with it.
    pub reason: BreakReason,
}

/// What is wrong at a [`ChainBreak`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
#[non_exhaustive]
pub enum BreakReason {
    /// The entry's stored hash is not the hash of its content: it was edited.
    HashMismatch {
        /// The hash stored in the entry.
        stored: String,
        /// The hash of its content.
        computed: String,
    },
    /// The entry's `prev_hash` is not the previous entry's hash: an entry before it was
    /// replaced, or this one was moved.
    PrevLinkMismatch {
        /// The previous entry's hash (or [`GENESIS_HASH`]).
        expected: String,
        /// The entry's `prev_hash`.
        found: String,
    },
    /// The entry is missing: the next stored entry has a greater seq.
    Missing {
        /// The seq of the next entry present.
        next_present: u64,
    },
    /// The entry's `seq` field differs from the key it is stored under.
    SeqMismatch {
        /// The `seq` written in the entry.
        stored: u64,
    },
    /// The stored value does not decode as an entry.
    Undecodable {
        /// The decoder's message.
        message: String,
    },
    /// A key in the audit table is not an 8-byte sequence number.
    MalformedKey {
        /// The key, hex.
        key: String,
    },
    /// The log ends before the recorded head: its last entries were removed.
    Truncated {
        /// The head's seq as recorded with the last append.
        head_seq: u64,
    },
    /// The last entry is not the recorded head.
    HeadMismatch {
        /// The head's hash as recorded with the last append.
        head_hash: String,
    },
    /// The store could not be read.
    Unreadable {
        /// The store's message.
        message: String,
    },
}

impl fmt::Display for BreakReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BreakReason::HashMismatch { stored, computed } => write!(
                f,
                "its content does not match its hash (stored {stored}, computed {computed}): \
                 the entry was edited"
            ),
            BreakReason::PrevLinkMismatch { expected, found } => write!(
                f,
                "its prev_hash {found} is not the previous entry's hash {expected}: an earlier \
                 entry was replaced or this one was moved"
            ),
            BreakReason::Missing { next_present } => write!(
                f,
                "the entry is missing (the next entry present is {next_present}): entries \
                 were removed"
            ),
            BreakReason::SeqMismatch { stored } => {
                write!(f, "it says seq {stored} but is stored at another position")
            }
            BreakReason::Undecodable { message } => {
                write!(f, "the stored entry does not decode: {message}")
            }
            BreakReason::MalformedKey { key } => {
                write!(
                    f,
                    "a key in the audit table is not a sequence number: {key}"
                )
            }
            BreakReason::Truncated { head_seq } => write!(
                f,
                "the log ends before its recorded head (seq {head_seq}): the last entries \
                 were removed"
            ),
            BreakReason::HeadMismatch { head_hash } => write!(
                f,
                "the last entry is not the recorded head (hash {head_hash}): the last entry \
                 was replaced"
            ),
            BreakReason::Unreadable { message } => {
                write!(f, "the store could not be read: {message}")
            }
        }
    }
}

/// The head record kept in [`Table::Meta`] under [`HEAD_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Head {
    seq: u64,
    hash: String,
}

/// The in-memory tail of the chain.
#[derive(Debug)]
struct Tail {
    /// The last appended seq (0 for an empty log).
    seq: u64,
    /// The last appended hash ([`GENESIS_HASH`] for an empty log).
    hash: String,
    /// Set when a prepared append was abandoned: re-read from the store before the next.
    stale: bool,
}

impl Tail {
    /// Reads the tail from the store: the greater of the last entry and the recorded
    /// head (a head past the last entry means entries were removed; appending after the
    /// head keeps that visible to `verify` as a gap).
    fn load(store: &dyn Store) -> Result<Tail, AuditError> {
        let head: Option<Head> =
            store
                .get_json(Table::Meta, HEAD_KEY)
                .map_err(|e| AuditError::CorruptTail {
                    seq: 0,
                    reason: format!("the head record does not read: {e}"),
                })?;
        let last = match store.last(Table::AuditLog)? {
            None => None,
            Some((key, value)) => {
                let seq = parse_seq_key(&key).unwrap_or(0);
                let entry: AuditEntry =
                    Codec::Json
                        .decode(Table::AuditLog, &key, &value)
                        .map_err(|e| AuditError::CorruptTail {
                            seq,
                            reason: e.to_string(),
                        })?;
                Some(entry)
            }
        };
        let (seq, hash) = match (last, head) {
            (None, None) => (0, GENESIS_HASH.to_string()),
            (Some(e), None) => (e.seq, e.hash),
            (None, Some(h)) => (h.seq, h.hash),
            (Some(e), Some(h)) if h.seq > e.seq => (h.seq, h.hash),
            (Some(e), Some(_)) => (e.seq, e.hash),
        };
        Ok(Tail {
            seq,
            hash,
            stale: false,
        })
    }
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Clock,
    tail: Mutex<Tail>,
}

/// The audit log over a [`Store`]. Cheap to clone; clones share the log.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").finish_non_exhaustive()
    }
}

/// Entries put into a caller's batch by [`AuditLog::append_batch`] (or
/// [`append_batch_all`](AuditLog::append_batch_all)), not yet known to be committed. It
/// holds the append lock: commit the batch, then call [`committed`](Self::committed).
/// Dropping it instead leaves the log's tail where it was (it is re-read from the store
/// before the next append).
pub struct PendingAudit<'a> {
    tail: MutexGuard<'a, Tail>,
    entries: Vec<AuditEntry>,
    done: bool,
}

impl fmt::Debug for PendingAudit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAudit")
            .field(
                "seqs",
                &self.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl PendingAudit<'_> {
    /// The entries that were put into the batch, in order.
    pub fn entries(&self) -> &[AuditEntry] {
        &self.entries
    }

    /// Records that the batch holding the entries was committed: the tail advances to
    /// the last one. Returns the entries.
    pub fn committed(mut self) -> Vec<AuditEntry> {
        if let Some(last) = self.entries.last() {
            self.tail.seq = last.seq;
            self.tail.hash = last.hash.clone();
        }
        self.tail.stale = false;
        self.done = true;
        std::mem::take(&mut self.entries)
    }
}

impl Drop for PendingAudit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.tail.stale = true;
        }
    }
}

impl AuditLog {
    /// Opens the log kept in `store`, with the system clock.
    ///
    /// Reads the chain's tail; [`AuditError::CorruptTail`] if the last entry does not
    /// decode. Does not verify the chain (see [`verify`](Self::verify)).
    pub fn open(store: Arc<dyn Store>) -> Result<Self, AuditError> {
        Self::open_with_clock(store, system_clock())
    }

    /// [`open`](Self::open) with an injected clock (for tests).
    pub fn open_with_clock(store: Arc<dyn Store>, clock: Clock) -> Result<Self, AuditError> {
        let tail = Tail::load(store.as_ref())?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                store,
                clock,
                tail: Mutex::new(tail),
            }),
        })
    }

    /// The store the log lives in. Batches given to [`append_batch`](Self::append_batch)
    /// must be committed to this store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The log's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Puts the next entry for `record` (detail redacted with [`redact`]) and the new head
    /// into `batch`, and returns it as a [`PendingAudit`] holding the append lock.
    ///
    /// Commit `batch` to [`store`](Self::store), then call [`PendingAudit::committed`];
    /// further appends wait until the pending one is committed or dropped (so do not call
    /// this twice for one batch: use [`append_batch_all`](Self::append_batch_all)).
    pub async fn append_batch(
        &self,
        batch: &mut Batch,
        record: AuditRecord,
    ) -> Result<PendingAudit<'_>, AuditError> {
        self.append_batch_all(batch, [record]).await
    }

    /// [`append_batch`](Self::append_batch) for several records at once (consecutive
    /// entries, in order), e.g. for every change of one group-committed round. With no
    /// record, nothing is put into `batch`.
    pub async fn append_batch_all(
        &self,
        batch: &mut Batch,
        records: impl IntoIterator<Item = AuditRecord>,
    ) -> Result<PendingAudit<'_>, AuditError> {
        let mut tail = self.inner.tail.lock().await;
        if tail.stale {
            *tail = Tail::load(self.inner.store.as_ref())?;
        }
        let at = Timestamp::from_system_time((self.inner.clock)());
        let (mut seq, mut prev_hash) = (tail.seq, tail.hash.clone());
        let mut entries = Vec::new();
        let mut ops = Batch::new();
        for record in records {
            let mut detail = record.detail;
            redact(&mut detail);
            normalize_numbers(&mut detail);
            seq += 1;
            let mut entry = AuditEntry {
                seq,
                at,
                actor: record.actor,
                action: record.action,
                target: record.target,
                detail,
                prev_hash,
                hash: String::new(),
            };
            entry.hash = entry.compute_hash()?;
            ops.put_json(Table::AuditLog, seq_key(entry.seq).to_vec(), &entry)?;
            prev_hash = entry.hash.clone();
            entries.push(entry);
        }
        if !entries.is_empty() {
            ops.put_json(
                Table::Meta,
                HEAD_KEY.to_vec(),
                &Head {
                    seq,
                    hash: prev_hash,
                },
            )?;
        }
        // Only now, so that an error above leaves the caller's batch untouched.
        batch.append(ops);
        Ok(PendingAudit {
            tail,
            entries,
            done: false,
        })
    }

    /// Adds the entry for `record` to `batch`, commits the batch, and advances the tail:
    /// the change and its audit entry become durable together or not at all.
    pub async fn commit_with(
        &self,
        mut batch: Batch,
        record: AuditRecord,
    ) -> Result<AuditEntry, AuditError> {
        let pending = self.append_batch(&mut batch, record).await?;
        self.inner.store.commit(batch).await?;
        let mut entries = pending.committed();
        Ok(entries.remove(0))
    }

    /// Appends an entry on its own (a batch holding only the entry).
    pub async fn append(&self, record: AuditRecord) -> Result<AuditEntry, AuditError> {
        self.commit_with(Batch::new(), record).await
    }

    /// At most `limit` (capped at [`MAX_LIST_LIMIT`]) entries with `seq > after_seq`, in
    /// order. `list(0, n)` starts at the first entry.
    pub fn list(&self, after_seq: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let Some(start) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        let limit = limit.min(MAX_LIST_LIMIT);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries = self
            .inner
            .store
            .scan_from(Table::AuditLog, &seq_key(start), limit)?;
        entries
            .into_iter()
            .map(|(k, v)| Ok(Codec::Json.decode(Table::AuditLog, &k, &v)?))
            .collect()
    }

    /// The last entry, if any.
    pub fn last(&self) -> Result<Option<AuditEntry>, AuditError> {
        match self.inner.store.last(Table::AuditLog)? {
            None => Ok(None),
            Some((k, v)) => Ok(Some(Codec::Json.decode(Table::AuditLog, &k, &v)?)),
        }
    }

    /// Checks the whole chain: every entry from 1 is present in order, stored under its
    /// own seq, links to the previous entry's hash and matches its own hash, and the last
    /// entry is the recorded head. Returns the first break found.
    pub fn verify(&self) -> Result<VerifiedChain, ChainBreak> {
        const PAGE: usize = 1024;
        let store = self.inner.store.as_ref();
        let mut expected: u64 = 1;
        let mut prev_hash = GENESIS_HASH.to_string();
        let unreadable = |seq: u64, e: &dyn fmt::Display| ChainBreak {
            seq,
            reason: BreakReason::Unreadable {
                message: e.to_string(),
            },
        };
        loop {
            let page = store
                .scan_from(Table::AuditLog, &seq_key(expected), PAGE)
                .map_err(|e| unreadable(expected, &e))?;
            let page_len = page.len();
            for (key, value) in page {
                let Some(seq) = parse_seq_key(&key) else {
                    return Err(ChainBreak {
                        seq: expected,
                        reason: BreakReason::MalformedKey {
                            key: hex::encode(&key),
                        },
                    });
                };
                if seq != expected {
                    return Err(ChainBreak {
                        seq: expected,
                        reason: BreakReason::Missing { next_present: seq },
                    });
                }
                let entry: AuditEntry = serde_json::from_slice(&value).map_err(|e| ChainBreak {
                    seq,
                    reason: BreakReason::Undecodable {
                        message: e.to_string(),
                    },
                })?;
                if entry.seq != seq {
                    return Err(ChainBreak {
                        seq,
                        reason: BreakReason::SeqMismatch { stored: entry.seq },
                    });
                }
                if entry.prev_hash != prev_hash {
                    return Err(ChainBreak {
                        seq,
                        reason: BreakReason::PrevLinkMismatch {
                            expected: prev_hash,
                            found: entry.prev_hash,
                        },
                    });
                }
                let computed = entry.compute_hash().map_err(|e| ChainBreak {
                    seq,
                    reason: BreakReason::Undecodable {
                        message: e.to_string(),
                    },
                })?;
                if computed != entry.hash {
                    return Err(ChainBreak {
                        seq,
                        reason: BreakReason::HashMismatch {
                            stored: entry.hash,
                            computed,
                        },
                    });
                }
                prev_hash = entry.hash;
                expected += 1;
            }
            if page_len < PAGE {
                break;
            }
        }
        let count = expected - 1;
        let head: Option<Head> = store
            .get_json(Table::Meta, HEAD_KEY)
            .map_err(|e| unreadable(expected, &e))?;
        if let Some(head) = head {
            if head.seq > count {
                return Err(ChainBreak {
                    seq: expected,
                    reason: BreakReason::Truncated { head_seq: head.seq },
                });
            }
            if head.seq == count && head.hash != prev_hash {
                return Err(ChainBreak {
                    seq: count,
                    reason: BreakReason::HeadMismatch {
                        head_hash: head.hash,
                    },
                });
            }
        }
        Ok(VerifiedChain {
            entries: count,
            head_seq: count,
            head_hash: prev_hash,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::store::{MemoryStore, SledStore};

    fn fixed_clock(ms: i64) -> (Clock, Arc<AtomicI64>) {
        let now = Arc::new(AtomicI64::new(ms));
        let n = now.clone();
        let clock: Clock =
            Arc::new(move || UNIX_EPOCH + Duration::from_millis(n.load(Ordering::SeqCst) as u64));
        (clock, now)
    }

    fn memory() -> (MemoryStore, AuditLog) {
        let store = MemoryStore::new();
        let (clock, _) = fixed_clock(1_714_566_600_250);
        let log = AuditLog::open_with_clock(Arc::new(store.clone()), clock).unwrap();
        (store, log)
    }

    fn record(i: usize) -> AuditRecord {
        AuditRecord::new("alice", "thing.do", format!("target-{i}"))
            .with_detail(json!({"i": i, "note": "x"}))
    }

    async fn fill(log: &AuditLog, n: usize) {
        for i in 0..n {
            log.append(record(i)).await.unwrap();
        }
    }

    /// Rewrites the stored entry `seq` through `f`, bypassing the log.
    async fn tamper(store: &MemoryStore, seq: u64, f: impl FnOnce(&mut Value)) {
        let raw = store.get(Table::AuditLog, &seq_key(seq)).unwrap().unwrap();
        let mut v: Value = serde_json::from_slice(&raw).unwrap();
        f(&mut v);
        let mut b = Batch::new();
        b.put(
            Table::AuditLog,
            seq_key(seq).to_vec(),
            serde_json::to_vec(&v).unwrap(),
        );
        store.commit(b).await.unwrap();
    }

    #[tokio::test]
    async fn appends_chain_and_verify() {
        let (_store, log) = memory();
        assert_eq!(
            log.verify().unwrap(),
            VerifiedChain {
                entries: 0,
                head_seq: 0,
                head_hash: GENESIS_HASH.into()
            }
        );
        fill(&log, 5).await;
        let entries = log.list(0, 100).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].prev_hash, GENESIS_HASH);
        for (i, pair) in entries.windows(2).enumerate() {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].seq, i as u64 + 2);
        }
        let v = log.verify().unwrap();
        assert_eq!(v.entries, 5);
        assert_eq!(v.head_hash, entries[4].hash);
        assert_eq!(log.list(3, 10).unwrap().len(), 2);
        assert_eq!(log.list(3, 1).unwrap()[0].seq, 4);
        assert!(log.list(5, 10).unwrap().is_empty());
        assert!(log.list(u64::MAX, 10).unwrap().is_empty());
        assert_eq!(log.last().unwrap().unwrap().seq, 5);
    }

    #[tokio::test]
    async fn hash_is_the_documented_canonical_form() {
        let (_store, log) = memory();
        let e = log
            .append(
                AuditRecord::new("alice", "agent.revoke", "web-1")
                    .with_detail(json!({"b": 1, "a": "é"})),
            )
            .await
            .unwrap();
        let expected_bytes = format!(
            r#"{{"action":"agent.revoke","actor":"alice","at":"2024-05-01T12:30:00.250Z","detail":{{"a":"é","b":1}},"prev_hash":"{GENESIS_HASH}","seq":1,"target":"web-1"}}"#
        );
        assert_eq!(e.canonical_bytes().unwrap(), expected_bytes.as_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, expected_bytes.as_bytes());
        assert_eq!(e.hash, hex::encode(digest.as_ref()));
    }

    #[tokio::test]
    async fn floats_are_stored_as_strings_and_still_verify() {
        let (_store, log) = memory();
        let e = log
            .append(AuditRecord::new("a", "b", "c").with_detail(json!({"load": 0.1, "n": -3})))
            .await
            .unwrap();
        assert_eq!(e.detail, json!({"load": "0.1", "n": -3}));
        log.verify().unwrap();
    }

    #[tokio::test]
    async fn secrets_are_redacted_by_the_log() {
        let (store, log) = memory();
        log.append(
            AuditRecord::new("alice", "registry.login", "r.example").with_detail(json!({
                "username": "bob",
                "password": "hunter2-secret-pw",
                "nested": [{"apiToken": "wharf-api-abc"}, {"Private-Key": {"pem": "x"}}],
                "idempotency_key": "k1",
                "token_id": "t1",
            })),
        )
        .await
        .unwrap();
        let e = &log.list(0, 1).unwrap()[0];
        assert_eq!(e.detail["password"], REDACTED);
        assert_eq!(e.detail["nested"][0]["apiToken"], REDACTED);
        assert_eq!(e.detail["nested"][1]["Private-Key"], REDACTED);
        assert_eq!(e.detail["idempotency_key"], "k1");
        assert_eq!(e.detail["token_id"], "t1");
        assert_eq!(e.detail["username"], "bob");
        let raw = store.get(Table::AuditLog, &seq_key(1)).unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("hunter2"));
        assert!(!String::from_utf8_lossy(&raw).contains("wharf-api-abc"));
    }

    #[test]
    fn secret_key_rules() {
        for k in [
            "password",
            "registry_password",
            "token",
            "tokens",
            "apiToken",
            "secret",
            "client_secret",
            "key",
            "master_key",
            "credentials",
            "Authorization",
            "private_key_pem",
            "PASSWD",
        ] {
            assert!(is_secret_key(k), "{k} should be secret");
        }
        for k in [
            "username",
            "host",
            "public_key",
            "x25519_public_key",
            "token_id",
            "key_id",
            "idempotency_key",
            "ca_fingerprint",
            "monkey",
            "tokenizer",
        ] {
            assert!(!is_secret_key(k), "{k} should not be secret");
        }
    }

    #[tokio::test]
    async fn tampered_detail_is_named() {
        let (store, log) = memory();
        fill(&log, 5).await;
        tamper(&store, 3, |v| v["detail"]["note"] = json!("edited")).await;
        let brk = log.verify().unwrap_err();
        assert_eq!(brk.seq, 3);
        assert!(
            matches!(brk.reason, BreakReason::HashMismatch { .. }),
            "{brk}"
        );
        assert!(brk.to_string().contains("entry 3"), "{brk}");
    }

    #[tokio::test]
    async fn rehashed_edit_breaks_the_next_link() {
        let (store, log) = memory();
        fill(&log, 5).await;
        tamper(&store, 2, |v| {
            v["actor"] = json!("mallory");
            let mut e: AuditEntry = serde_json::from_value(v.clone()).unwrap();
            e.hash = e.compute_hash().unwrap();
            *v = serde_json::to_value(e).unwrap();
        })
        .await;
        let brk = log.verify().unwrap_err();
        assert_eq!(brk.seq, 3);
        assert!(
            matches!(brk.reason, BreakReason::PrevLinkMismatch { .. }),
            "{brk}"
        );
    }

    #[tokio::test]
    async fn deleted_entry_is_named_as_a_gap() {
        let (store, log) = memory();
        fill(&log, 5).await;
        let mut b = Batch::new();
        b.remove(Table::AuditLog, seq_key(2).to_vec());
        store.commit(b).await.unwrap();
        let brk = log.verify().unwrap_err();
        assert_eq!(brk.seq, 2);
        assert_eq!(brk.reason, BreakReason::Missing { next_present: 3 });

        // Removing the first entry is a gap at 1.
        let (store, log) = memory();
        fill(&log, 2).await;
        let mut b = Batch::new();
        b.remove(Table::AuditLog, seq_key(1).to_vec());
        store.commit(b).await.unwrap();
        assert_eq!(log.verify().unwrap_err().seq, 1);
    }

    #[tokio::test]
    async fn truncated_tail_is_detected_and_next_append_keeps_the_gap() {
        let (store, log) = memory();
        fill(&log, 4).await;
        let mut b = Batch::new();
        b.remove(Table::AuditLog, seq_key(4).to_vec());
        store.commit(b).await.unwrap();
        let brk = log.verify().unwrap_err();
        assert_eq!(brk.seq, 4);
        assert_eq!(brk.reason, BreakReason::Truncated { head_seq: 4 });

        // A log reopened on the truncated store appends after the recorded head: the
        // removal stays visible.
        let reopened = AuditLog::open(Arc::new(store.clone())).unwrap();
        let e = reopened.append(record(9)).await.unwrap();
        assert_eq!(e.seq, 5);
        let brk = reopened.verify().unwrap_err();
        assert_eq!(brk.seq, 4);
        assert_eq!(brk.reason, BreakReason::Missing { next_present: 5 });
    }

    #[tokio::test]
    async fn undecodable_and_misplaced_entries_are_named() {
        let (store, log) = memory();
        fill(&log, 3).await;
        let mut b = Batch::new();
        b.put(Table::AuditLog, seq_key(2).to_vec(), b"not json".to_vec());
        store.commit(b).await.unwrap();
        let brk = log.verify().unwrap_err();
        assert_eq!(brk.seq, 2);
        assert!(matches!(brk.reason, BreakReason::Undecodable { .. }));

        let (store, log) = memory();
        fill(&log, 3).await;
        tamper(&store, 2, |v| v["seq"] = json!(7)).await;
        let brk = log.verify().unwrap_err();
        assert_eq!(brk.seq, 2);
        assert_eq!(brk.reason, BreakReason::SeqMismatch { stored: 7 });
    }

    #[tokio::test]
    async fn batch_append_is_atomic_with_the_change() {
        let (store, log) = memory();
        let mut batch = Batch::new();
        batch.put(Table::Meta, b"thing".to_vec(), b"1".to_vec());
        let pending = log.append_batch(&mut batch, record(0)).await.unwrap();
        assert_eq!(pending.entries()[0].seq, 1);
        log.store().commit(batch).await.unwrap();
        let e = pending.committed().remove(0);
        assert_eq!(e.seq, 1);
        assert_eq!(
            store.get(Table::Meta, b"thing").unwrap(),
            Some(b"1".to_vec())
        );
        assert_eq!(log.last().unwrap().unwrap(), e);
    }

    #[tokio::test]
    async fn several_entries_in_one_batch() {
        let (store, log) = memory();
        fill(&log, 1).await;
        let mut batch = Batch::new();
        batch.put(Table::Meta, b"round".to_vec(), b"1".to_vec());
        let pending = log
            .append_batch_all(&mut batch, (1..4).map(record))
            .await
            .unwrap();
        let seqs: Vec<u64> = pending.entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4]);
        log.store().commit(batch).await.unwrap();
        let entries = pending.committed();
        assert_eq!(entries[1].prev_hash, entries[0].hash);
        assert_eq!(log.append(record(9)).await.unwrap().seq, 5);
        assert_eq!(log.verify().unwrap().entries, 5);

        // No record: nothing is added, the tail stays.
        let mut batch = Batch::new();
        let pending = log.append_batch_all(&mut batch, []).await.unwrap();
        assert!(batch.is_empty());
        assert!(pending.committed().is_empty());
        assert_eq!(log.append(record(10)).await.unwrap().seq, 6);
        assert_eq!(
            store.get(Table::Meta, b"round").unwrap(),
            Some(b"1".to_vec())
        );
    }

    #[tokio::test]
    async fn failed_commit_does_not_advance_the_tail() {
        let (store, log) = memory();
        fill(&log, 2).await;
        store.set_fail_commits(true);
        let mut batch = Batch::new();
        batch.put(Table::Meta, b"x".to_vec(), b"1".to_vec());
        let err = log.commit_with(batch, record(7)).await.unwrap_err();
        assert!(
            matches!(err, AuditError::Store(StoreError::Injected)),
            "{err}"
        );
        store.set_fail_commits(false);
        assert_eq!(store.get(Table::Meta, b"x").unwrap(), None);

        // Abandoned without committing: the same.
        let mut batch = Batch::new();
        drop(log.append_batch(&mut batch, record(8)).await.unwrap());

        let e = log.append(record(9)).await.unwrap();
        assert_eq!(e.seq, 3);
        assert_eq!(log.verify().unwrap().entries, 3);
    }

    #[tokio::test]
    async fn concurrent_appends_keep_the_chain() {
        let (_store, log) = memory();
        let mut tasks = Vec::new();
        for i in 0..32 {
            let log = log.clone();
            tasks.push(tokio::spawn(
                async move { log.append(record(i)).await.unwrap() },
            ));
        }
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap().seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=32).collect::<Vec<_>>());
        assert_eq!(log.verify().unwrap().entries, 32);
    }

    #[tokio::test]
    async fn sled_reopen_continues_the_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let first_hash;
        {
            let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).unwrap());
            let log = AuditLog::open(store).unwrap();
            fill(&log, 3).await;
            first_hash = log.verify().unwrap().head_hash;
        }
        // sled lets go of its file lock once its own threads drop the database, which can
        // be a moment after the last handle (seen once under heavy load): wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let reopened = loop {
            match SledStore::open(&path) {
                Err(crate::store::StoreError::Locked { .. })
                    if std::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => break other.unwrap(),
            }
        };
        let store: Arc<dyn Store> = Arc::new(reopened);
        let log = AuditLog::open(store).unwrap();
        let e = log.append(record(3)).await.unwrap();
        assert_eq!(e.seq, 4);
        assert_eq!(e.prev_hash, first_hash);
        let v = log.verify().unwrap();
        assert_eq!(v.entries, 4);
        assert_eq!(v.head_hash, e.hash);
    }

    #[tokio::test]
    async fn corrupt_tail_refuses_to_open() {
        let (store, log) = memory();
        fill(&log, 2).await;
        let mut b = Batch::new();
        b.put(Table::AuditLog, seq_key(2).to_vec(), b"{".to_vec());
        store.commit(b).await.unwrap();
        let err = AuditLog::open(Arc::new(store)).unwrap_err();
        assert!(
            matches!(err, AuditError::CorruptTail { seq: 2, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("restore"), "{err}");
    }

    #[tokio::test]
    async fn verify_pages_through_long_logs() {
        let (_store, log) = memory();
        fill(&log, 2100).await;
        assert_eq!(log.verify().unwrap().entries, 2100);
    }
}
