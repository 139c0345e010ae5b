//! [`MemoryStore`]: the in-memory [`Store`] for unit tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::{
    encode_key, Batch, Bytes, CommitFuture, Entry, Op, Store, StoreError, StoreStats, Table,
};

/// An in-memory [`Store`] with the same semantics as [`SledStore`](super::SledStore):
/// atomic batches, ordered tables, prefix scans. Durability is trivially true: a commit is
/// applied before `commit` returns its (already resolved) future.
///
/// Clones share the same data, so a test can "crash" the logic that owns one clone and
/// restart it on another: what the store holds is exactly what was acknowledged. For
/// failure paths, [`set_fail_commits`](Self::set_fail_commits) makes commits fail without
/// applying anything.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Keys encoded as on disk: table prefix byte, then the key.
    data: RwLock<BTreeMap<Bytes, Bytes>>,
    fail_commits: AtomicBool,
    commits: AtomicU64,
    failed_commits: AtomicU64,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.read().len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While `fail` is true, every commit resolves [`StoreError::Injected`] and applies
    /// nothing.
    pub fn set_fail_commits(&self, fail: bool) {
        self.inner.fail_commits.store(fail, Ordering::SeqCst);
    }

    /// An independent deep copy of the current contents (with fresh counters).
    pub fn snapshot(&self) -> MemoryStore {
        let copy = MemoryStore::new();
        *copy.write() = self.read().clone();
        copy
    }

    /// The number of entries over all tables.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether every table is empty.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<Bytes, Bytes>> {
        // Nothing inside the locked sections can panic halfway through a batch (byte
        // comparisons and moves only), so a poisoned lock still holds consistent data.
        self.inner.data.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<Bytes, Bytes>> {
        self.inner.data.write().unwrap_or_else(|e| e.into_inner())
    }

    fn range(&self, table: Table, start: &[u8], prefix: &[u8], limit: usize) -> Vec<Entry> {
        let lower = encode_key(table, start);
        let prefix = encode_key(table, prefix);
        self.read()
            .range::<[u8], _>((Bound::Included(&lower[..]), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(&prefix))
            .take(limit)
            .map(|(k, v)| (k[1..].to_vec(), v.clone()))
            .collect()
    }
}

impl Store for MemoryStore {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Bytes>, StoreError> {
        Ok(self.read().get(&encode_key(table, key)).cloned())
    }

    fn scan_prefix(&self, table: Table, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        Ok(self.range(table, prefix, prefix, usize::MAX))
    }

    fn scan_from(
        &self,
        table: Table,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        Ok(self.range(table, start, &[], limit))
    }

    fn last(&self, table: Table) -> Result<Option<Entry>, StoreError> {
        let lower = [table.prefix()];
        let upper = [table.prefix() + 1];
        Ok(self
            .read()
            .range::<[u8], _>((Bound::Included(&lower[..]), Bound::Excluded(&upper[..])))
            .next_back()
            .map(|(k, v)| (k[1..].to_vec(), v.clone())))
    }

    fn commit(&self, batch: Batch) -> CommitFuture {
        if self.inner.fail_commits.load(Ordering::SeqCst) {
            self.inner.failed_commits.fetch_add(1, Ordering::Relaxed);
            return Box::pin(std::future::ready(Err(StoreError::Injected)));
        }
        // Encode every key first, then apply under one write lock: readers never see
        // part of a batch.
        let ops: Vec<(Bytes, Option<Bytes>)> = batch
            .into_ops()
            .into_iter()
            .map(|op| match op {
                Op::Put { table, key, value } => (encode_key(table, &key), Some(value)),
                Op::Remove { table, key } => (encode_key(table, &key), None),
            })
            .collect();
        {
            let mut data = self.write();
            for (key, value) in ops {
                match value {
                    Some(value) => data.insert(key, value),
                    None => data.remove(&key),
                };
            }
        }
        self.inner.commits.fetch_add(1, Ordering::Relaxed);
        Box::pin(std::future::ready(Ok(())))
    }

    fn stats(&self) -> StoreStats {
        let commits = self.inner.commits.load(Ordering::Relaxed);
        StoreStats {
            commits,
            // Every commit is its own (free) flush.
            flushes: commits,
            failed_commits: self.inner.failed_commits.load(Ordering::Relaxed),
        }
    }
}
