//! [`SledStore`]: the sled 0.34 backend, with group commit.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use super::{
    encode_key, Batch, Bytes, CommitFuture, Entry, Op, Store, StoreError, StoreStats, Table,
    INTERNAL_PREFIX,
};

/// The format marker written under the internal prefix; bump it when the key layout
/// changes incompatibly.
const FORMAT: &str = "wharf.store/1";
/// The marker's key: the internal prefix byte, then `format`.
const FORMAT_KEY: &[u8] = b"\x00format";
/// A group stops growing at this many batches...
const MAX_GROUP_BATCHES: usize = 4096;
/// ...or at this many payload bytes, so one slow group does not hold everyone back.
const MAX_GROUP_BYTES: usize = 32 << 20;

/// The production [`Store`]: sled 0.34 in a directory, with group commit.
///
/// # Layout: one tree, one prefix byte per table
///
/// Every table lives in sled's default tree, each key prefixed by its table's byte
/// ([`Table::prefix`]). A multi-table batch is therefore a single `sled::Batch` applied
/// with `apply_batch`, which sled makes atomic for readers and for crash recovery. The
/// alternative, one sled tree per table, needs a sled *transaction* across trees for
/// every commit: it is slower (optimistic concurrency, retries, extra copies), and sled's
/// cross-tree transactions are the least exercised part of 0.34. Prefix scans and `last`
/// are ordinary range scans bounded by the prefix byte.
///
/// # Group commit
///
/// [`commit`](Store::commit) only hands the batch to a dedicated committer thread and
/// returns a future. The committer takes the first waiting batch plus every other batch
/// already waiting (up to 4096 batches or 32 MiB), merges them in submission order into
/// one `sled::Batch`, applies it, calls `flush()` (write + fsync of sled's log), and only
/// then resolves every waiter of the group. While a flush runs, new commits queue up and
/// form the next group, so with N concurrent committers one fsync serves up to N commits
/// without any timer or added latency; a lone committer pays exactly one fsync. Merging is
/// safe: a superset applied atomically keeps each batch atomic, and later operations win
/// as they would in sequence.
///
/// The committer calls sled's blocking `flush()` on its own thread rather than awaiting
/// `flush_async()` per commit. `flush_async()` runs that same `flush()` on sled's global IO
/// thread pool, and the pool's threads block inside it (holding sled's concurrency-control
/// read lock) until the log buffer is written, a write that is itself queued on the same
/// pool: with many concurrent `apply_batch` + `flush_async` callers sled 0.34 deadlocks
/// (the `commit_rate` measurement in `core/tests/it/store.rs` reproduces it at 64
/// concurrent committers; see `docs/store.md`). One committer thread keeps the pool free
/// for the log writes, and is what lets the flushes be shared instead of racing each
/// other. Do not call `flush_async` on any sled database in a process that uses this store.
///
/// # Failures
///
/// If applying or flushing a group fails, its waiters get the error and every later
/// commit gets [`StoreError::Failed`]: after a failed fsync the page cache and the disk
/// may disagree, and nothing written later could honestly be called durable. Restart.
///
/// Dropping the store finishes the batches already submitted, stops the committer and
/// releases the directory lock.
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Pending>>,
    committer: Option<JoinHandle<()>>,
}

struct Pending {
    batch: Batch,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Shared {
    commits: AtomicU64,
    flushes: AtomicU64,
    failed_commits: AtomicU64,
    /// The first durable-write failure; once set, commits are refused.
    failure: Mutex<Option<String>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("dir", &self.dir)
            .field("stats", &self.stats())
            .finish()
    }
}

/// How long [`SledStore::open`] waits for a lock held by a database just dropped (or a
/// process just exiting) before it reports [`StoreError::Locked`].
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

impl SledStore {
    /// Opens (creating it if needed) the store in `dir`.
    ///
    /// Errors name `dir` and say what to do: [`StoreError::Locked`] when another process
    /// (or another open `SledStore` in this one) still holds it after [`LOCK_WAIT`], [`StoreError::Corrupt`] when
    /// sled's recovery finds corrupt data, [`StoreError::IncompatibleFormat`] for a
    /// foreign layout, [`StoreError::Open`] for anything else (not a directory,
    /// permissions, IO).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let dir = dir.as_ref().to_path_buf();
        let open_err = |reason: String, source: Option<io::Error>| StoreError::Open {
            dir: dir.clone(),
            reason,
            source: source.map(Into::into),
        };
        if dir.exists() && !dir.is_dir() {
            return Err(open_err("it exists and is not a directory".into(), None));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| open_err(format!("cannot create the directory: {e}"), Some(e)))?;

        let config = sled::Config::new().path(&dir);
        // A sled database dropped a moment ago (in this process, or by a process that is
        // exiting) releases its file lock only when its background threads end: wait a
        // little for it before calling the directory locked.
        let lock_deadline = std::time::Instant::now() + LOCK_WAIT;
        // sled 0.34 can panic on some damaged files instead of returning an error: report
        // that as corruption rather than bringing the process down with a backtrace.
        let db = match loop {
            match catch_unwind(AssertUnwindSafe(|| config.open())) {
                Ok(Err(e))
                    if matches!(map_open_error(&dir, e.clone()), StoreError::Locked { .. })
                        && std::time::Instant::now() < lock_deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other,
            }
        } {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => return Err(map_open_error(&dir, e)),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "sled panicked during recovery".into());
                return Err(StoreError::Corrupt {
                    dir,
                    detail: format!("sled panicked while opening: {msg}"),
                });
            }
        };

        match db.get(FORMAT_KEY).map_err(|e| map_open_error(&dir, e))? {
            Some(found) if found.as_ref() == FORMAT.as_bytes() => {}
            Some(found) => {
                return Err(StoreError::IncompatibleFormat {
                    dir,
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: FORMAT,
                })
            }
            None => {
                // No marker: an empty database (first open), or one wharf did not write.
                if let Some(Ok((key, _))) = db.iter().next() {
                    let ours = key
                        .first()
                        .is_some_and(|&b| b == INTERNAL_PREFIX || Table::from_prefix(b).is_some());
                    if !ours {
                        return Err(StoreError::IncompatibleFormat {
                            dir,
                            found: "(a sled database not written by wharf)".into(),
                            expected: FORMAT,
                        });
                    }
                }
                db.insert(FORMAT_KEY, FORMAT.as_bytes())
                    .and_then(|_| db.flush())
                    .map_err(|e| map_open_error(&dir, e))?;
            }
        }

        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let committer = {
            let db = db.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("wharf-store-commit".into())
                .spawn(move || run_committer(db, rx, shared))
                .map_err(|e| open_err(format!("cannot start the committer thread: {e}"), Some(e)))?
        };
        Ok(SledStore {
            dir,
            db,
            shared,
            tx: Some(tx),
            committer: Some(committer),
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes the store occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db
            .size_on_disk()
            .map_err(|e| self.read_error("size", e))
    }

    fn read_error(&self, op: &'static str, e: sled::Error) -> StoreError {
        match e {
            sled::Error::Corruption { .. } => StoreError::Corrupt {
                dir: self.dir.clone(),
                detail: e.to_string(),
            },
            e => StoreError::backend(op, e),
        }
    }

    fn collect(
        &self,
        op: &'static str,
        iter: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> Result<Vec<Entry>, StoreError> {
        iter.map(|r| {
            r.map(|(k, v)| (k[1..].to_vec(), v.to_vec()))
                .map_err(|e| self.read_error(op, e))
        })
        .collect()
    }
}

fn map_open_error(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                dir: dir.to_path_buf(),
            }
        }
        sled::Error::Io(io) => StoreError::Open {
            dir: dir.to_path_buf(),
            reason: io.to_string(),
            source: Some(io.into()),
        },
        sled::Error::Corruption { .. } => StoreError::Corrupt {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        },
        e => StoreError::Open {
            dir: dir.to_path_buf(),
            reason: e.to_string(),
            source: Some(e.into()),
        },
    }
}

/// The committer thread: gathers waiting batches into groups, one apply and one flush per
/// group (see [`SledStore`]). Ends when every sender is gone.
fn run_committer(db: sled::Db, rx: mpsc::Receiver<Pending>, shared: Arc<Shared>) {
    while let Ok(first) = rx.recv() {
        let mut bytes = first.batch.payload_bytes();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_BATCHES && bytes < MAX_GROUP_BYTES {
            match rx.try_recv() {
                Ok(next) => {
                    bytes += next.batch.payload_bytes();
                    group.push(next);
                }
                Err(_) => break,
            }
        }

        let failure = shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        // Err((reason, Some(error))) for the group whose write failed, Err((reason, None))
        // for the groups refused after it.
        let outcome: Result<(), (String, Option<sled::Error>)> = match failure {
            Some(reason) => Err((reason, None)),
            None => {
                let mut merged = sled::Batch::default();
                for pending in &mut group {
                    for op in std::mem::take(&mut pending.batch).into_ops() {
                        match op {
                            Op::Put { table, key, value } => {
                                merged.insert(encode_key(table, &key), value)
                            }
                            Op::Remove { table, key } => merged.remove(encode_key(table, &key)),
                        }
                    }
                }
                match db.apply_batch(merged).and_then(|()| db.flush()) {
                    Ok(_) => {
                        shared.flushes.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        tracing::error!(error = %reason, "store commit failed; refusing further commits");
                        *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(reason.clone());
                        Err((reason, Some(e)))
                    }
                }
            }
        };

        let n = group.len() as u64;
        match &outcome {
            Ok(()) => shared.commits.fetch_add(n, Ordering::Relaxed),
            Err(_) => shared.failed_commits.fetch_add(n, Ordering::Relaxed),
        };
        for pending in group {
            let result = match &outcome {
                Ok(()) => Ok(()),
                Err((_, Some(e))) => Err(StoreError::backend("commit", e.clone())),
                Err((reason, None)) => Err(StoreError::Failed {
                    reason: reason.clone(),
                }),
            };
            // The waiter may have dropped its future: the batch is committed anyway.
            let _ = pending.done.send(result);
        }
    }
}

impl Drop for SledStore {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(committer) = self.committer.take() {
            let _ = committer.join();
        }
    }
}

impl Store for SledStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        self.db
            .get(encode_key(table, key))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| self.read_error("get", e))
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        self.collect("scan", self.db.scan_prefix(encode_key(table, prefix)))
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let end = [table.prefix() + 1];
        self.collect(
            "scan",
            self.db
                .range(encode_key(table, start)..end.to_vec())
                .take(limit),
        )
    }

    fn last(&self, table: Table) -> Result<Option<Entry>, StoreError> {
        let range = vec![table.prefix()]..vec![table.prefix() + 1];
        match self.db.range(range).next_back() {
            None => Ok(None),
            Some(r) => Ok(Some(self.collect("last", std::iter::once(r))?.remove(0))),
        }
    }

    fn commit(&self, batch: Batch) -> CommitFuture {
        let (done, outcome) = oneshot::channel();
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Pending { batch, done }).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            outcome.await.unwrap_or(Err(StoreError::Closed))
        })
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            flushes: self.shared.flushes.load(Ordering::Relaxed),
            failed_commits: self.shared.failed_commits.load(Ordering::Relaxed),
        }
    }
}
