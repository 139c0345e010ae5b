//! The store's kill -9 torture test (design.md §3).
//!
//! `sled_survives_kill_9` re-runs this test executable as a child process filtered to
//! `torture_child`. The child opens a [`SledStore`] and runs [`WRITERS`] concurrent
//! writers, each committing batches in sequence and printing `ack <writer> <n>` on stdout
//! only after the commit of batch `n` resolved. The parent kills it with SIGKILL at a
//! random moment (after a random number of acks plus a random delay, or at a random time
//! from spawn, which lands during sled's open and recovery), reopens the store, and
//! checks:
//!
//! - the store opens;
//! - every acknowledged batch is there, with the right values;
//! - every batch is all there or not at all (each batch writes 1 to 6 records across
//!   three tables, a header naming it in `Meta`, and sometimes rewrites and removes
//!   records of an earlier batch);
//! - per writer, the batches present are a prefix `0..m` (no hole);
//! - the store holds exactly the model of the applied batches: nothing lost, nothing
//!   extra, over every iteration since the directory was created (a directory is reused
//!   for [`ITERATIONS_PER_DIR`] kills, so damage to older data is caught too).
//!
//! Values vary from empty to 256 KiB (large ones go through sled's blob files).
//! `WHARF_TORTURE_ITERATIONS` sets the number of kills (default 50, what CI runs);
//! `WHARF_TORTURE_SEED` replays a data and timing choice sequence.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wharf_core::store::{Batch, Op, SledStore, Store, Table};

/// Set in the child: the store directory. Its absence makes `torture_child` a no-op.
const DIR_ENV: &str = "WHARF_STORE_TORTURE_DIR";
/// Set in the child: the iteration number, which namespaces the child's keys.
const ITERATION_ENV: &str = "WHARF_STORE_TORTURE_ITERATION";
/// How many kills the parent runs.
const ITERATIONS_ENV: &str = "WHARF_TORTURE_ITERATIONS";
/// Seed of the parent's random choices.
const SEED_ENV: &str = "WHARF_TORTURE_SEED";
/// Concurrent writers in the child (their commits share flushes).
const WRITERS: u8 = 4;
/// Kills per store directory before starting a fresh one (bounds disk use).
const ITERATIONS_PER_DIR: u32 = 10;
/// The signal number of SIGKILL on Linux.
const SIGKILL: i32 = 9;
/// The tables the records go to.
const RECORD_TABLES: [Table; 3] = [Table::Tasks, Table::Results, Table::AuditLog];

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x5eed, |h, p| splitmix(h ^ p))
}

/// The key of record `j` of batch `n` of `writer` in `iteration`.
fn record_key(iteration: u32, writer: u8, n: u32, j: u8) -> (Table, Vec<u8>) {
    let key = [
        &iteration.to_be_bytes()[..],
        &[writer],
        &n.to_be_bytes(),
        &[j],
    ]
    .concat();
    (RECORD_TABLES[j as usize % RECORD_TABLES.len()], key)
}

/// The header key of a batch, in `Meta`: present iff the batch was applied.
fn header_key(iteration: u32, writer: u8, n: u32) -> Vec<u8> {
    [
        &b"h"[..],
        &iteration.to_be_bytes(),
        &[writer],
        &n.to_be_bytes(),
    ]
    .concat()
}

/// A deterministic value of varied size: mostly small, some KiBs, a few up to 256 KiB.
fn value(iteration: u32, writer: u8, n: u32, j: u8, version: u8) -> Vec<u8> {
    let h = mix(&[
        iteration.into(),
        writer.into(),
        n.into(),
        j.into(),
        version.into(),
    ]);
    let len = match h % 1000 {
        0..=899 => (h >> 10) % 257,
        900..=989 => 1024 + (h >> 10) % (15 * 1024),
        _ => 64 * 1024 + (h >> 10) % (192 * 1024),
    } as usize;
    let mut out = Vec::with_capacity(len + 8);
    let mut state = h;
    while out.len() < len {
        state = splitmix(state);
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The operations of batch `n` of `writer`: 1 to 6 records, the header, and every fourth
/// batch rewrites record 1 and removes record 0 of batch `n - 3`.
fn batch_ops(iteration: u32, writer: u8, n: u32) -> Vec<Op> {
    let h = mix(&[iteration.into(), writer.into(), n.into()]);
    let count = 1 + (h % 6) as u8;
    let mut ops = Vec::new();
    for j in 0..count {
        let (table, key) = record_key(iteration, writer, n, j);
        ops.push(Op::Put {
            table,
            key,
            value: value(iteration, writer, n, j, 0),
        });
    }
    if n >= 3 && n % 4 == 3 {
        let (table, key) = record_key(iteration, writer, n - 3, 0);
        ops.push(Op::Remove { table, key });
        let (table, key) = record_key(iteration, writer, n - 3, 1);
        ops.push(Op::Put {
            table,
            key,
            value: value(iteration, writer, n - 3, 1, 1),
        });
    }
    ops.push(Op::Put {
        table: Table::Meta,
        key: header_key(iteration, writer, n),
        value: vec![count],
    });
    ops
}

/// The child: writes and acknowledges until killed. A no-op unless `DIR_ENV` is set.
#[test]
fn torture_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let iteration: u32 = std::env::var(ITERATION_ENV)
        .expect("iteration env")
        .parse()
        .expect("iteration number");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Arc::new(SledStore::open(&dir).expect("child: open the store"));
        emit("ready");
        // A safety net should the parent die without killing us.
        let deadline = Instant::now() + Duration::from_secs(120);
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let store = store.clone();
                tokio::spawn(async move {
                    let mut n = 0u32;
                    while Instant::now() < deadline {
                        let batch: Batch = batch_ops(iteration, writer, n).into_iter().collect();
                        store.commit(batch).await.expect("child: commit");
                        emit(&format!("ack {writer} {n}"));
                        n += 1;
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
    });
}

/// Prints one line and flushes it; exits quietly once the parent stopped reading.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// What one kill did.
#[derive(Default)]
struct Outcome {
    /// Highest acknowledged batch per writer.
    acked: [Option<u32>; WRITERS as usize],
    acks: u64,
    ready: bool,
}

/// The expected contents: table prefix and key to value.
type Model = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

#[derive(Default)]
struct Totals {
    acked_batches: u64,
    unacked_but_applied: u64,
    killed_before_ready: u64,
    killed_before_first_ack: u64,
    records_checked: u64,
}

#[test]
fn sled_survives_kill_9() {
    if std::env::var_os(DIR_ENV).is_some() {
        return; // we are a child
    }
    let iterations: u32 = std::env::var(ITERATIONS_ENV)
        .ok()
        .map(|v| v.parse().expect("WHARF_TORTURE_ITERATIONS is a number"))
        .unwrap_or(50);
    let seed: u64 = std::env::var(SEED_ENV)
        .ok()
        .map(|v| v.parse().expect("WHARF_TORTURE_SEED is a number"))
        .unwrap_or_else(rand::random);
    eprintln!("torture: {iterations} iterations, seed {seed} ({SEED_ENV} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let root = tempfile::Builder::new()
        .prefix("wharf-store-torture-")
        .tempdir()
        .unwrap();
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut model = Model::new();
    let mut dir = PathBuf::new();

    for iteration in 0..iterations {
        if iteration % ITERATIONS_PER_DIR == 0 {
            if !dir.as_os_str().is_empty() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
            dir = root.path().join(format!("db-{iteration}"));
            model.clear();
        }
        let result = run_iteration(
            &exe,
            &dir,
            root.path(),
            iteration,
            &mut rng,
            &mut model,
            &mut totals,
        );
        if let Err(msg) = result {
            let kept = root.keep();
            panic!(
                "torture iteration {iteration} (seed {seed}) failed: {msg}\nstore directory kept in {}",
                kept.display()
            );
        }
    }
    eprintln!(
        "torture: {iterations} kills survived in {:.1?}: {} acknowledged batches verified, \
         {} applied but unacknowledged, {} kills before the store opened, {} before the \
         first ack, {} record checks",
        started.elapsed(),
        totals.acked_batches,
        totals.unacked_but_applied,
        totals.killed_before_ready,
        totals.killed_before_first_ack,
        totals.records_checked
    );
}

fn run_iteration(
    exe: &Path,
    dir: &Path,
    root: &Path,
    iteration: u32,
    rng: &mut StdRng,
    model: &mut Model,
    totals: &mut Totals,
) -> Result<(), String> {
    let stderr_path = root.join("child-stderr.log");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "store::torture_child",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(DIR_ENV, dir)
        .env(ITERATION_ENV, iteration.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .map_err(|e| format!("cannot spawn the child: {e}"))?;
    let spawned = Instant::now();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut outcome = Outcome::default();
    let record = |line: &str, outcome: &mut Outcome| -> Result<(), String> {
        if line == "ready" {
            outcome.ready = true;
        } else if let Some(rest) = line.strip_prefix("ack ") {
            let mut parts = rest.split(' ');
            let parse = |p: Option<&str>| p.and_then(|p| p.parse::<u32>().ok());
            let (Some(w), Some(n)) = (parse(parts.next()), parse(parts.next())) else {
                return Err(format!("bad ack line {line:?}"));
            };
            let slot = &mut outcome.acked[w as usize];
            if n != slot.map_or(0, |m| m + 1) {
                return Err(format!("writer {w} acked {n} after {slot:?}"));
            }
            *slot = Some(n);
            outcome.acks += 1;
        }
        Ok(())
    };

    // When to kill: at a random time from spawn (often during open and recovery), or
    // after a random number of acks plus a random delay of up to 3 ms.
    let mut child_exited = false;
    if rng.gen_ratio(15, 100) {
        let at = spawned + Duration::from_micros(rng.gen_range(0..80_000));
        while let Some(left) = at.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(line) => record(&line, &mut outcome)?,
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    child_exited = true;
                    break;
                }
            }
        }
    } else {
        let target_acks = rng.gen_range(1..=300u64);
        let give_up = spawned + Duration::from_secs(60);
        while outcome.acks < target_acks {
            let left = give_up.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => record(&line, &mut outcome)?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    return Err(format!("no {target_acks} acks within 60 s"));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    child_exited = true;
                    break;
                }
            }
        }
        let delay = Duration::from_micros(rng.gen_range(0..3_000));
        let until = Instant::now() + delay;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let _ = child.kill(); // SIGKILL
    let status = child.wait().unwrap();
    reader.join().unwrap();
    for line in lines.try_iter() {
        record(&line, &mut outcome)?;
    }
    if child_exited || status.signal() != Some(SIGKILL) {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        return Err(format!(
            "the child was not killed but ended by itself ({status}); its stderr:\n{stderr}"
        ));
    }
    if !outcome.ready {
        totals.killed_before_ready += 1;
    }
    if outcome.acks == 0 {
        totals.killed_before_first_ack += 1;
    }

    let store = SledStore::open(dir).map_err(|e| format!("the store does not reopen: {e}"))?;
    verify(&store, iteration, &outcome, model, totals)
}

/// Checks the reopened store against the acknowledgements and the model, then adds the
/// applied batches of this iteration to the model.
fn verify(
    store: &SledStore,
    iteration: u32,
    outcome: &Outcome,
    model: &mut Model,
    totals: &mut Totals,
) -> Result<(), String> {
    for writer in 0..WRITERS {
        let prefix = [&b"h"[..], &iteration.to_be_bytes(), &[writer]].concat();
        let headers = store
            .scan_prefix(Table::Meta, &prefix)
            .map_err(|e| format!("scan: {e}"))?;
        let applied = headers.len() as u32;
        for (i, (key, _)) in headers.iter().enumerate() {
            let n = u32::from_be_bytes(key[prefix.len()..].try_into().unwrap());
            if n != i as u32 {
                return Err(format!(
                    "writer {writer}: batch {n} is present but batch {i} is missing (a hole)"
                ));
            }
        }
        let acked = outcome.acked[writer as usize].map_or(0, |n| n + 1);
        if applied < acked {
            return Err(format!(
                "writer {writer}: {acked} batches were acknowledged but only {applied} survived \
                 (lost batch {applied})"
            ));
        }
        totals.acked_batches += u64::from(acked);
        totals.unacked_but_applied += u64::from(applied - acked);
        for n in 0..applied {
            for op in batch_ops(iteration, writer, n) {
                match op {
                    Op::Put { table, key, value } => {
                        model.insert((table.prefix(), key), value);
                    }
                    Op::Remove { table, key } => {
                        model.remove(&(table.prefix(), key));
                    }
                }
            }
        }
    }

    // The store must hold exactly the model: every table, every key, every value.
    for &table in Table::ALL {
        let actual = store
            .scan(table)
            .map_err(|e| format!("scan {table}: {e}"))?;
        let expected: Vec<(&Vec<u8>, &Vec<u8>)> = model
            .range((table.prefix(), Vec::new())..)
            .take_while(|((t, _), _)| *t == table.prefix())
            .map(|((_, k), v)| (k, v))
            .collect();
        let mut a = actual.iter();
        let mut e = expected.iter();
        loop {
            match (a.next(), e.next()) {
                (None, None) => break,
                (Some((ak, av)), Some((ek, ev))) => {
                    if ak != *ek {
                        return Err(format!(
                            "{table}: the store has key 0x{} where the model expects 0x{} \
                             (a key is missing or extra)",
                            hex::encode(ak),
                            hex::encode(ek)
                        ));
                    }
                    if av != *ev {
                        return Err(format!(
                            "{table}/0x{}: wrong value ({} bytes, expected {})",
                            hex::encode(ak),
                            av.len(),
                            ev.len()
                        ));
                    }
                    totals.records_checked += 1;
                }
                (Some((ak, _)), None) => {
                    return Err(format!(
                        "{table}: unexpected key 0x{} (half a batch?)",
                        hex::encode(ak)
                    ))
                }
                (None, Some((ek, _))) => {
                    return Err(format!("{table}: missing key 0x{}", hex::encode(ek)))
                }
            }
        }
    }
    Ok(())
}

/// A store held by another (live) process is refused with an error that names the
/// directory; once that process is gone the store opens.
#[test]
fn open_while_another_process_holds_it() {
    if std::env::var_os(DIR_ENV).is_some() {
        return; // we are a child
    }
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("held");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "store::torture_child",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env(DIR_ENV, &dir)
        .env(ITERATION_ENV, "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l == "ready"));
    assert!(ready, "the child did not open the store");

    let err = SledStore::open(&dir).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, wharf_core::store::StoreError::Locked { .. }),
        "{err:?}"
    );
    assert!(
        msg.contains(&dir.display().to_string()) && msg.contains("another process"),
        "{msg}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    drop(lines);
    SledStore::open(&dir).expect("the store opens once the other process is gone");
}
