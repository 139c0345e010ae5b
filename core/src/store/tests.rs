//! Semantics shared by every [`Store`], run on [`MemoryStore`] and [`SledStore`], plus
//! backend-specific tests.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;

fn sled_store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path().join("data")).unwrap();
    (dir, store)
}

fn entry(k: &[u8], v: &[u8]) -> Entry {
    (k.to_vec(), v.to_vec())
}

async fn put(store: &dyn Store, table: Table, key: &[u8], value: &[u8]) {
    let mut b = Batch::new();
    b.put(table, key.to_vec(), value.to_vec());
    store.commit(b).await.unwrap();
}

/// Runs one async check against a fresh store of each kind.
macro_rules! both {
    ($name:ident, $check:ident) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                $check(&MemoryStore::new()).await;
            }

            #[tokio::test]
            async fn sled() {
                let (_dir, store) = sled_store();
                $check(&store).await;
            }
        }
    };
}

async fn get_put_remove(s: &dyn Store) {
    assert_eq!(s.get(Table::Tasks, b"a").unwrap(), None);
    put(s, Table::Tasks, b"a", b"1").await;
    put(s, Table::Agents, b"a", b"other table").await;
    assert_eq!(s.get(Table::Tasks, b"a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(
        s.get(Table::Agents, b"a").unwrap(),
        Some(b"other table".to_vec())
    );
    put(s, Table::Tasks, b"a", b"2").await;
    assert_eq!(s.get(Table::Tasks, b"a").unwrap(), Some(b"2".to_vec()));
    let mut b = Batch::new();
    b.remove(Table::Tasks, b"a".to_vec())
        .remove(Table::Tasks, b"never".to_vec());
    s.commit(b).await.unwrap();
    assert_eq!(s.get(Table::Tasks, b"a").unwrap(), None);
    assert_eq!(
        s.get(Table::Agents, b"a").unwrap(),
        Some(b"other table".to_vec())
    );
    // Empty keys and values are ordinary.
    put(s, Table::Meta, b"", b"").await;
    assert_eq!(s.get(Table::Meta, b"").unwrap(), Some(vec![]));
}
both!(get_put_remove_works, get_put_remove);

async fn batch_is_ordered_and_multi_table(s: &dyn Store) {
    let mut b = Batch::new();
    b.put(Table::Tasks, b"t1".to_vec(), b"queued".to_vec())
        .put(Table::Idempotency, b"alice/k".to_vec(), b"t1".to_vec())
        .put(Table::AuditLog, seq_key(1).to_vec(), b"entry".to_vec())
        // Later operations on the same key win.
        .put(Table::Tasks, b"t2".to_vec(), b"first".to_vec())
        .remove(Table::Tasks, b"t2".to_vec())
        .put(Table::Tasks, b"t3".to_vec(), b"first".to_vec())
        .put(Table::Tasks, b"t3".to_vec(), b"second".to_vec());
    assert_eq!(b.len(), 7);
    s.commit(b).await.unwrap();
    assert_eq!(
        s.scan(Table::Tasks).unwrap(),
        vec![entry(b"t1", b"queued"), entry(b"t3", b"second")]
    );
    assert_eq!(
        s.get(Table::Idempotency, b"alice/k").unwrap(),
        Some(b"t1".to_vec())
    );
    assert_eq!(
        s.last(Table::AuditLog).unwrap(),
        Some(entry(&seq_key(1), b"entry"))
    );
    // An empty batch is a valid barrier.
    s.commit(Batch::new()).await.unwrap();
}
both!(
    batches_apply_in_order_across_tables,
    batch_is_ordered_and_multi_table
);

async fn scans_stay_in_their_table(s: &dyn Store) {
    // Keys at the edges of the byte range, in adjacent tables.
    let mut b = Batch::new();
    for key in [
        &b""[..],
        b"\x00",
        b"app/1",
        b"app/2",
        b"app0",
        b"ap",
        b"\xff",
        b"\xff\xff",
    ] {
        b.put(Table::Tasks, key.to_vec(), key.to_vec());
        b.put(Table::Idempotency, key.to_vec(), b"idem".to_vec());
        b.put(Table::Meta, key.to_vec(), b"meta".to_vec());
    }
    s.commit(b).await.unwrap();

    let keys = |entries: Vec<Entry>| entries.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(s.scan_prefix(Table::Tasks, b"app/").unwrap()),
        vec![b"app/1".to_vec(), b"app/2".to_vec()]
    );
    assert_eq!(keys(s.scan_prefix(Table::Tasks, b"app").unwrap()).len(), 3);
    assert_eq!(
        keys(s.scan_prefix(Table::Tasks, b"\xff").unwrap()),
        vec![b"\xff".to_vec(), b"\xff\xff".to_vec()]
    );
    let all = s.scan(Table::Tasks).unwrap();
    assert_eq!(all.len(), 8);
    assert!(
        all.iter().all(|(k, v)| k == v),
        "values of another table leaked in"
    );
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "scan is not in key order"
    );
    assert_eq!(s.scan_prefix(Table::Tasks, b"zzz").unwrap(), vec![]);
    assert_eq!(s.scan(Table::Registries).unwrap(), vec![]);

    // Paging with scan_from.
    assert_eq!(
        keys(s.scan_from(Table::Tasks, b"ap", 2).unwrap()),
        vec![b"ap".to_vec(), b"app/1".to_vec()]
    );
    let mut page_start = Vec::new();
    let mut paged = Vec::new();
    loop {
        let page = s.scan_from(Table::Tasks, &page_start, 3).unwrap();
        let Some((last, _)) = page.last() else { break };
        page_start = last.clone();
        page_start.push(0);
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(
        s.scan_from(Table::Tasks, b"\xff\xff\x00", 10).unwrap(),
        vec![]
    );
    assert_eq!(s.scan_from(Table::Tasks, b"", 0).unwrap(), vec![]);
}
both!(
    scans_stay_in_their_table_and_page,
    scans_stay_in_their_table
);

async fn last_is_per_table(s: &dyn Store) {
    assert_eq!(s.last(Table::AuditLog).unwrap(), None);
    for n in [3u64, 1, 255, 256, 2] {
        put(
            s,
            Table::AuditLog,
            &seq_key(n),
            format!("entry {n}").as_bytes(),
        )
        .await;
    }
    put(s, Table::Meta, b"\xff\xff", b"meta").await; // the next table does not leak in
    put(s, Table::Agents, b"\xff", b"agent").await; // nor the previous one
    let (key, value) = s.last(Table::AuditLog).unwrap().unwrap();
    assert_eq!(parse_seq_key(&key), Some(256));
    assert_eq!(value, b"entry 256");
    assert_eq!(s.last(Table::Registries).unwrap(), None);
    assert_eq!(
        s.last(Table::Meta).unwrap(),
        Some(entry(b"\xff\xff", b"meta"))
    );
}
both!(last_returns_the_greatest_key, last_is_per_table);

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Record {
    id: u32,
    name: String,
}

async fn typed_helpers(s: &dyn Store) {
    let rec = Record {
        id: 7,
        name: "web".into(),
    };
    let mut b = Batch::new();
    b.put_json(Table::Agents, b"json".to_vec(), &rec).unwrap();
    b.put_postcard(Table::Agents, b"pc".to_vec(), &rec).unwrap();
    b.put(Table::Agents, b"garbage".to_vec(), b"\xff\xfe".to_vec());
    s.commit(b).await.unwrap();

    assert_eq!(
        s.get_json::<Record>(Table::Agents, b"json").unwrap(),
        Some(Record {
            id: 7,
            name: "web".into()
        })
    );
    assert_eq!(
        s.get_postcard::<Record>(Table::Agents, b"pc")
            .unwrap()
            .unwrap()
            .name,
        "web"
    );
    assert_eq!(
        s.get_json::<Record>(Table::Agents, b"absent").unwrap(),
        None
    );
    assert_eq!(
        s.get(Table::Agents, b"json").unwrap().unwrap(),
        br#"{"id":7,"name":"web"}"#.to_vec()
    );
    let err = s.get_json::<Record>(Table::Agents, b"garbage").unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Decode {
                table: Table::Agents,
                codec: Codec::Json,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("json value at agents/garbage"),
        "{err}"
    );
    assert_eq!(error::printable_key(b"\xff\xfe"), "0xfffe");
    assert_eq!(error::printable_key(b"task/1"), "task/1");
    let err = s
        .get_postcard::<Record>(Table::Agents, b"json")
        .unwrap_err();
    assert!(
        err.to_string().contains("postcard value at agents/json"),
        "{err}"
    );

    let listed: Vec<(Bytes, Record)> = s.scan_prefix_postcard(Table::Agents, b"pc").unwrap();
    assert_eq!(listed, vec![(b"pc".to_vec(), rec)]);
    assert!(s.scan_prefix_json::<Record>(Table::Agents, b"").is_err());
}
both!(typed_helpers_encode_and_name_bad_values, typed_helpers);

async fn concurrent_commits(s: &dyn Store) {
    let before = s.stats();
    let futures: Vec<_> = (0..64u32)
        .map(|i| {
            let mut b = Batch::new();
            b.put(Table::Tasks, i.to_be_bytes().to_vec(), vec![i as u8; 100]);
            b.put(Table::Results, i.to_be_bytes().to_vec(), b"r".to_vec());
            s.commit(b)
        })
        .collect();
    for f in futures {
        f.await.unwrap();
    }
    assert_eq!(s.scan(Table::Tasks).unwrap().len(), 64);
    assert_eq!(s.scan(Table::Results).unwrap().len(), 64);
    let after = s.stats();
    assert_eq!(after.commits - before.commits, 64);
    assert!(after.flushes > before.flushes);
    assert_eq!(after.failed_commits, 0);
}
both!(concurrent_commits_all_land, concurrent_commits);

/// A reader racing a writer never sees half a batch.
async fn readers_never_see_half_a_batch<S: Store + 'static>(s: Arc<S>) {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let checks = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (s, stop, checks) = (s.clone(), stop.clone(), checks.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let rows = s.scan_prefix(Table::Tasks, b"pair/").unwrap();
                assert!(rows.len() == 2 || rows.is_empty(), "half a batch: {rows:?}");
                assert!(
                    rows.windows(2).all(|w| w[0].1 == w[1].1),
                    "half a batch: {rows:?}"
                );
                checks.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut i = 0u32;
    while i < 200 || (checks.load(Ordering::Relaxed) < 200 && i < 1_000_000) {
        let mut b = Batch::new();
        b.put(Table::Tasks, b"pair/a".to_vec(), i.to_be_bytes().to_vec());
        b.put(Table::Tasks, b"pair/b".to_vec(), i.to_be_bytes().to_vec());
        s.commit(b).await.unwrap();
        i += 1;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    assert!(checks.load(Ordering::Relaxed) >= 200);
}

#[tokio::test]
async fn memory_readers_never_see_half_a_batch() {
    readers_never_see_half_a_batch(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn sled_readers_never_see_half_a_batch() {
    let (_dir, store) = sled_store();
    readers_never_see_half_a_batch(Arc::new(store)).await;
}

#[tokio::test]
async fn dyn_store_is_usable() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let mut b = Batch::new();
    b.put_postcard(Table::Meta, b"n".to_vec(), &5u64).unwrap();
    // The commit future does not borrow the store: it can be spawned.
    tokio::spawn(store.commit(b)).await.unwrap().unwrap();
    assert_eq!(
        store.get_postcard::<u64>(Table::Meta, b"n").unwrap(),
        Some(5)
    );
}

#[test]
fn tables_have_unique_prefixes_and_names() {
    let mut prefixes: Vec<u8> = Table::ALL.iter().map(|t| t.prefix()).collect();
    prefixes.sort();
    prefixes.dedup();
    assert_eq!(prefixes.len(), Table::ALL.len());
    assert!(!prefixes.contains(&INTERNAL_PREFIX));
    assert!(!prefixes.contains(&u8::MAX), "prefix + 1 must not overflow");
    for t in Table::ALL {
        assert_eq!(Table::from_prefix(t.prefix()), Some(*t));
        assert_eq!(t.to_string(), t.name());
    }
    assert_eq!(parse_seq_key(&seq_key(42)), Some(42));
    assert_eq!(parse_seq_key(b"short"), None);
}

// ---- MemoryStore specifics ----

#[tokio::test]
async fn memory_clones_share_and_snapshots_do_not() {
    let a = MemoryStore::new();
    let b = a.clone();
    put(&a, Table::Tasks, b"k", b"1").await;
    assert_eq!(b.get(Table::Tasks, b"k").unwrap(), Some(b"1".to_vec()));
    let snap = a.snapshot();
    put(&b, Table::Tasks, b"k", b"2").await;
    assert_eq!(a.get(Table::Tasks, b"k").unwrap(), Some(b"2".to_vec()));
    assert_eq!(snap.get(Table::Tasks, b"k").unwrap(), Some(b"1".to_vec()));
    assert_eq!(a.len(), 1);
    assert!(!a.is_empty());
}

#[tokio::test]
async fn memory_injected_failures_apply_nothing() {
    let s = MemoryStore::new();
    s.set_fail_commits(true);
    let mut b = Batch::new();
    b.put(Table::Tasks, b"k".to_vec(), b"v".to_vec());
    assert!(matches!(
        s.commit(b.clone()).await,
        Err(StoreError::Injected)
    ));
    assert_eq!(s.get(Table::Tasks, b"k").unwrap(), None);
    assert_eq!(s.stats().failed_commits, 1);
    s.set_fail_commits(false);
    s.commit(b).await.unwrap();
    assert_eq!(s.get(Table::Tasks, b"k").unwrap(), Some(b"v".to_vec()));
}

// ---- SledStore specifics ----

#[tokio::test]
async fn sled_reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        for n in 0..100u64 {
            let mut b = Batch::new();
            b.put(
                Table::AuditLog,
                seq_key(n).to_vec(),
                vec![n as u8; n as usize * 100],
            );
            b.put(Table::Tasks, format!("t{n}").into_bytes(), b"v".to_vec());
            if n % 10 == 0 {
                b.remove(Table::Tasks, format!("t{}", n / 2).into_bytes());
            }
            s.commit(b).await.unwrap();
        }
        assert_eq!(s.dir(), dir.path());
        assert!(s.size_on_disk().unwrap() > 0);
    }
    let s = SledStore::open(dir.path()).unwrap();
    let log = s.scan(Table::AuditLog).unwrap();
    assert_eq!(log.len(), 100);
    for (n, (k, v)) in log.into_iter().enumerate() {
        assert_eq!(parse_seq_key(&k), Some(n as u64));
        assert_eq!(v, vec![n as u8; n * 100]);
    }
    assert_eq!(
        parse_seq_key(&s.last(Table::AuditLog).unwrap().unwrap().0),
        Some(99)
    );
    let removed = [0, 5, 10, 15, 20, 25, 30, 35, 40, 45];
    for n in 0..100 {
        let got = s.get(Table::Tasks, format!("t{n}").as_bytes()).unwrap();
        // Batch n (n % 10 == 0) removed t{n/2}; batch 0 put then removed t0 itself.
        assert_eq!(got.is_none(), removed.contains(&n), "t{n}");
    }
}

#[tokio::test]
async fn sled_second_open_is_locked_and_drop_releases() {
    let dir = tempfile::tempdir().unwrap();
    let first = SledStore::open(dir.path()).unwrap();
    put(&first, Table::Meta, b"k", b"v").await;
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    assert!(msg.contains("in use by another process"), "{msg}");
    drop(first);
    let again = SledStore::open(dir.path()).unwrap();
    assert_eq!(again.get(Table::Meta, b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn sled_open_errors_name_the_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let err = SledStore::open(&file).unwrap_err();
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not-a-dir") && msg.contains("not a directory"),
        "{msg}"
    );

    let err = SledStore::open(file.join("below")).unwrap_err();
    assert!(err.to_string().contains("below"), "{err}");
}

#[test]
fn sled_refuses_a_foreign_database() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"\xf0foreign", b"x").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::IncompatibleFormat { .. }),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(b"", b"an empty key").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::IncompatibleFormat { .. }),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        db.insert(FORMAT_KEY_FOR_TESTS, b"wharf.store/999").unwrap();
        db.flush().unwrap();
    }
    let err = SledStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("wharf.store/999"), "{err}");
}

const FORMAT_KEY_FOR_TESTS: &[u8] = b"\x00format";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sled_concurrent_commits_share_flushes() {
    let (_dir, store) = sled_store();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..64u32)
        .map(|w| {
            let store = store.clone();
            tokio::spawn(async move {
                for i in 0..20u32 {
                    let mut b = Batch::new();
                    b.put(
                        Table::Tasks,
                        [w.to_be_bytes(), i.to_be_bytes()].concat(),
                        vec![1; 64],
                    );
                    store.commit(b).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let stats = store.stats();
    assert_eq!(stats.commits, 64 * 20);
    assert!(
        stats.flushes < stats.commits / 2,
        "group commit did not share flushes: {stats:?}"
    );
}

#[tokio::test]
async fn sled_commit_future_outlives_a_dropped_waiter() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = SledStore::open(dir.path()).unwrap();
        let mut b = Batch::new();
        b.put(
            Table::Tasks,
            b"dropped".to_vec(),
            b"still committed".to_vec(),
        );
        drop(s.commit(b)); // submitted by the call; the store finishes it before closing
    }
    let s = SledStore::open(dir.path()).unwrap();
    assert_eq!(
        s.get(Table::Tasks, b"dropped").unwrap(),
        Some(b"still committed".to_vec())
    );
}
