//! Commit throughput of the sled store: `SledStore` (group commit) with 1 and 64
//! concurrent committers, against the naive "apply, then `flush_async().await`, per
//! commit" on a bare sled database, in the same run. Run with `make bench` (or
//! `cargo bench -p wharf-core --bench store_commit`); results in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_core::store::{Batch, Op, SledStore, Store, Table};

fn main() {
    use std::sync::atomic::{AtomicU64, Ordering};
    const RUN: Duration = Duration::from_secs(3);

    // A typical core commit: a task record, its idempotency entry, an audit entry.
    fn typical(i: u64) -> Batch {
        let mut b = Batch::new();
        b.put(
            Table::Tasks,
            format!("task/{i:016x}").into_bytes(),
            vec![7; 600],
        );
        b.put(
            Table::Idempotency,
            format!("alice/{i}").into_bytes(),
            vec![1; 16],
        );
        b.put(Table::AuditLog, i.to_be_bytes().to_vec(), vec![3; 300]);
        b
    }

    /// Runs `committers` tasks doing `commit_one` in a loop for `RUN`, watching progress
    /// from this thread; returns commits/s, or `None` when no commit completed in the last
    /// second of the run (the runtime is then leaked, its threads stuck).
    fn drive<F, Fut>(committers: u64, commit_one: F) -> Option<f64>
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let commits = Arc::new(AtomicU64::new(0));
        let commit_one = Arc::new(commit_one);
        let started = Instant::now();
        let deadline = started + RUN;
        for c in 0..committers {
            let (commits, commit_one) = (commits.clone(), commit_one.clone());
            runtime.spawn(async move {
                let mut i = c << 32;
                while Instant::now() < deadline {
                    commit_one(i).await;
                    commits.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        let mut last = (0, started);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = commits.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        if last.1.elapsed() > Duration::from_secs(1) {
            std::mem::forget(runtime);
            println!("    no commit for the last {:.1?}: stuck", last.1.elapsed());
            return None;
        }
        runtime.shutdown_timeout(Duration::from_secs(5));
        Some(commits.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
    }

    for committers in [1u64, 64] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let started = Instant::now();
        let s = store.clone();
        let rate = drive(committers, move |i| {
            let commit = s.commit(typical(i));
            async move { commit.await.unwrap() }
        });
        assert!(rate.is_some(), "SledStore stalled");
        let secs = started.elapsed().as_secs_f64();
        let stats = store.stats();
        println!(
            "SledStore (group commit), {committers:>2} committers: {:>6.0} commits/s, \
             {:>5.0} flushes/s, {:.1} commits per flush",
            stats.commits as f64 / secs,
            stats.flushes as f64 / secs,
            stats.commits as f64 / stats.flushes.max(1) as f64
        );
    }
    for committers in [1u64, 64] {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let rate = drive(committers, move |i| {
            let db = db.clone();
            async move {
                let mut b = sled::Batch::default();
                for op in typical(i).into_ops() {
                    if let Op::Put { table, key, value } = op {
                        b.insert([&[table.prefix()][..], &key].concat(), value);
                    }
                }
                db.apply_batch(b).unwrap();
                db.flush_async().await.unwrap();
            }
        });
        match rate {
            Some(rate) => println!(
                "bare sled, apply_batch + flush_async per commit, {committers:>2} committers: \
                 {rate:>6.0} commits/s"
            ),
            None => println!(
                "bare sled, apply_batch + flush_async per commit, {committers:>2} committers: \
                 DEADLOCK (sled's IO thread pool starved by blocked flushes)"
            ),
        }
    }
}
