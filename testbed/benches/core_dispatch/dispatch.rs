//! Scenarios 1 and 2: submit-to-`Accepted` latency under a paced open-loop load, and
//! sustained throughput with concurrent closed-loop submitters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use uuid::Uuid;
use wharf_core::engine::SubmitRequest;
use wharf_protocol::{DeploySpec, Priority, TaskPayload};
use wharf_testbed::simagent::{CoreApi, SimAgentHandle, SimEvent};

use crate::core::{CpuMeter, CpuUse};
use crate::fleet::totals;
use crate::stats::Percentiles;

/// A deploy of a digest-pinned image (never pulled: the sim agent runs nothing).
pub fn request(agent: &str, target: String, n: u64) -> SubmitRequest {
    SubmitRequest {
        agent: agent.to_string(),
        target,
        payload: TaskPayload::Deploy(DeploySpec::new(format!(
            "127.0.0.1:5000/bench/app@sha256:{n:064x}"
        ))),
        priority: Priority::Normal,
        idempotency_key: None,
        expires_at: None,
        expires_in: None,
        timeout: None,
        max_attempts: None,
    }
}

/// Task `n` of a run over `agents` agents: round-robin over agents, and over `targets`
/// targets per agent, so that per-target FIFO does not serialize consecutive tasks.
fn placement(n: u64, agents: usize, targets: usize) -> (usize, String) {
    let agent = (n % agents as u64) as usize;
    let target = (n / agents as u64) % targets as u64;
    (agent, format!("app-{target}"))
}

/// One submission of the open loop.
struct Sent {
    /// When it was scheduled.
    due: Instant,
    /// Just before the POST.
    sent: Instant,
    /// When the answer arrived.
    answered: Instant,
    result: Result<Uuid, String>,
}

/// What scenario 1 measured.
#[derive(Debug, Default)]
pub struct LatencyOutcome {
    /// Tasks core held before the measured window (warm-up and earlier runs).
    pub history: u64,
    pub agents: usize,
    pub rate: f64,
    pub window: Duration,
    pub offered: usize,
    pub achieved_rate: f64,
    pub submitted: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Submitted tasks whose `Accepted` was never seen (within 120 s after the last
    /// submit).
    pub missing: usize,
    /// POST sent -> sim agent about to send `Accepted`.
    pub accept: Percentiles,
    /// Polling agents: POST sent -> the answer to the agent's poll carrying the task's
    /// `accepted` arrived (core recorded it running, durably). Empty over QUIC.
    pub confirm: Percentiles,
    /// Polling agents: task received -> that answer (the round trip of the confirming
    /// poll, which core answers at once).
    pub confirm_rtt: Percentiles,
    /// How many tasks have a confirmation time.
    pub confirmed: usize,
    /// POST sent -> HTTP answer.
    pub http: Percentiles,
    /// Scheduled -> POST sent (how well the open loop kept its pace).
    pub lag: Percentiles,
    /// Events a watcher lost (its buffer overflowed): their tasks count as missing.
    pub lagged_events: u64,
    /// Time after the last submit until every result was acknowledged.
    pub drain: Option<Duration>,
    /// Accept latency of the tasks sent in the first and in the last second of the
    /// window (p99 each): whether the system kept up or fell behind.
    pub first_second: Percentiles,
    pub last_second: Percentiles,
    /// CPU used from the first measured submit until every `Accepted` was seen.
    pub cpu: CpuUse,
}

/// Watches every agent's events and records when each task's first `Assign` arrived.
///
/// The sim agent emits `TaskReceived` right before it writes `Accepted` on the task
/// stream (nothing but a journal insert in between, no await); the time is taken when
/// this watcher task sees the event, so the watcher's own wake-up delay is included
/// (it can only make the figure larger).
struct AcceptWatch {
    seen: Arc<Mutex<HashMap<Uuid, Instant>>>,
    /// Polling agents only: when the answer to the poll carrying the task's `accepted`
    /// arrived ([`SimEvent::AcceptConfirmed`]).
    confirmed: Arc<Mutex<HashMap<Uuid, Instant>>>,
    lagged: Arc<AtomicU64>,
    watchers: Vec<tokio::task::JoinHandle<()>>,
}

impl AcceptWatch {
    fn start(agents: &[SimAgentHandle]) -> AcceptWatch {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let confirmed = Arc::new(Mutex::new(HashMap::new()));
        let lagged = Arc::new(AtomicU64::new(0));
        let watchers = agents
            .iter()
            .map(|agent| {
                let mut rx = agent.subscribe();
                let (seen, confirmed, lagged) = (seen.clone(), confirmed.clone(), lagged.clone());
                tokio::spawn(async move {
                    loop {
                        match rx.recv().await {
                            Ok(SimEvent::TaskReceived {
                                task_id,
                                attempt: 1,
                                ..
                            }) => {
                                let now = Instant::now();
                                seen.lock().unwrap().entry(task_id).or_insert(now);
                            }
                            Ok(SimEvent::AcceptConfirmed {
                                task_id,
                                attempt: 1,
                            }) => {
                                let now = Instant::now();
                                confirmed.lock().unwrap().entry(task_id).or_insert(now);
                            }
                            Ok(_) => {}
                            Err(RecvError::Lagged(n)) => {
                                lagged.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(RecvError::Closed) => break,
                        }
                    }
                })
            })
            .collect();
        AcceptWatch {
            seen,
            confirmed,
            lagged,
            watchers,
        }
    }

    fn get(&self, id: &Uuid) -> Option<Instant> {
        self.seen.lock().unwrap().get(id).copied()
    }

    fn confirmed(&self, id: &Uuid) -> Option<Instant> {
        self.confirmed.lock().unwrap().get(id).copied()
    }

    fn count_of(&self, ids: &[Uuid]) -> usize {
        let seen = self.seen.lock().unwrap();
        ids.iter().filter(|id| seen.contains_key(id)).count()
    }
}

impl Drop for AcceptWatch {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

/// Submits `count` tasks at `rate` per second on a fixed schedule, each in its own task
/// (open loop: a slow answer does not delay the next submit). Task numbers start at
/// `first`.
async fn open_loop(
    api: &CoreApi,
    names: &Arc<Vec<String>>,
    rate: f64,
    count: u64,
    first: u64,
    targets: usize,
) -> Vec<Sent> {
    let start = Instant::now() + Duration::from_millis(20);
    let mut set = JoinSet::new();
    for i in 0..count {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let n = first + i;
        let (agent, target) = placement(n, names.len(), targets);
        let req = request(&names[agent], target, n);
        let api = api.clone();
        set.spawn(async move {
            let sent = Instant::now();
            let result = api
                .submit(&req)
                .await
                .map(|s| s.task.id)
                .map_err(|e| e.to_string());
            Sent {
                due,
                sent,
                answered: Instant::now(),
                result,
            }
        });
    }
    let mut out = Vec::with_capacity(count as usize);
    while let Some(joined) = set.join_next().await {
        if let Ok(sent) = joined {
            out.push(sent);
        }
    }
    out
}

/// Waits until the agents' acknowledged results reach `target` (or `timeout`); returns
/// how long it took.
async fn wait_acks(agents: &[SimAgentHandle], target: u64, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if totals(agents).acks >= target {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Scenario 1 on `agents` (all connected): a warm-up, then `secs` at `rate` tasks/s.
pub async fn latency(
    api: &CoreApi,
    agents: &[SimAgentHandle],
    rate: f64,
    secs: f64,
    warmup_secs: f64,
    first_task: u64,
    core_pid: u32,
) -> Result<LatencyOutcome> {
    const TARGETS: usize = 16;
    let names = Arc::new(agents.iter().map(|a| a.name().to_string()).collect());
    let watch = AcceptWatch::start(agents);
    let acks_before = totals(agents).acks;

    // Warm-up: the client's connection pool, core's caches; discarded.
    let warm = (rate * warmup_secs).round() as u64;
    let warm_sent = open_loop(api, &names, rate, warm, first_task, TARGETS).await;
    let warm_ok = warm_sent.iter().filter(|s| s.result.is_ok()).count() as u64;
    wait_acks(agents, acks_before + warm_ok, Duration::from_secs(120)).await;

    let count = (rate * secs).round() as u64;
    let started = Instant::now();
    let meter = CpuMeter::start(core_pid);
    let sent = open_loop(api, &names, rate, count, first_task + warm, TARGETS).await;
    let first_due = sent.iter().map(|s| s.due).min();
    let last_sent = sent.iter().map(|s| s.sent).max();
    let window = match (first_due, last_sent) {
        (Some(a), Some(b)) => b.saturating_duration_since(a),
        _ => started.elapsed(),
    };
    let ids: Vec<Uuid> = sent.iter().filter_map(|s| s.result.clone().ok()).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    while watch.count_of(&ids) < ids.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = meter.read();
    let drained = wait_acks(
        agents,
        acks_before + warm_ok + ids.len() as u64,
        Duration::from_secs(120),
    )
    .await
    .map(|_| last_sent.map_or(Duration::ZERO, |t| t.elapsed()));

    let mut accept = Vec::with_capacity(sent.len());
    let (mut confirm, mut confirm_rtt) = (Vec::new(), Vec::new());
    let (mut first_second, mut last_second) = (Vec::new(), Vec::new());
    let mut missing = 0;
    let one = Duration::from_secs(1);
    for s in &sent {
        if let Ok(id) = &s.result {
            match watch.get(id) {
                Some(at) => {
                    if let Some(done) = watch.confirmed(id) {
                        confirm.push(done.saturating_duration_since(s.sent));
                        confirm_rtt.push(done.saturating_duration_since(at));
                    }
                    let latency = at.saturating_duration_since(s.sent);
                    accept.push(latency);
                    if first_due.is_some_and(|f| s.due < f + one) {
                        first_second.push(latency);
                    }
                    if last_sent.is_some_and(|l| s.due + one > l) {
                        last_second.push(latency);
                    }
                }
                None => missing += 1,
            }
        }
    }
    let errors: Vec<&String> = sent
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect();
    Ok(LatencyOutcome {
        history: first_task + warm,
        agents: agents.len(),
        rate,
        window,
        offered: sent.len(),
        achieved_rate: if window.is_zero() {
            0.0
        } else {
            (sent.len().saturating_sub(1)) as f64 / window.as_secs_f64()
        },
        submitted: ids.len(),
        errors: errors.len(),
        first_error: errors.first().map(|e| (*e).clone()),
        missing,
        accept: Percentiles::of(accept),
        confirmed: confirm.len(),
        confirm: Percentiles::of(confirm),
        confirm_rtt: Percentiles::of(confirm_rtt),
        http: Percentiles::of(
            sent.iter()
                .filter(|s| s.result.is_ok())
                .map(|s| s.answered - s.sent)
                .collect(),
        ),
        lag: Percentiles::of(
            sent.iter()
                .map(|s| s.sent.saturating_duration_since(s.due))
                .collect(),
        ),
        lagged_events: watch.lagged.load(Ordering::Relaxed),
        drain: drained,
        first_second: Percentiles::of(first_second),
        last_second: Percentiles::of(last_second),
        cpu,
    })
}

/// What scenario 2 measured.
#[derive(Debug, Default)]
pub struct ThroughputOutcome {
    /// Tasks core held before the window.
    pub history: u64,
    pub agents: usize,
    pub submitters: usize,
    pub window: Duration,
    /// Submits answered 201 within the window.
    pub submitted: u64,
    /// `Assign`s the agents received within the window.
    pub dispatched: u64,
    /// Results core acknowledged (durable) within the window.
    pub completed: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Completions per 1 s slice of the window: (min, max).
    pub completed_per_second: (u64, u64),
    /// Completions per second in the first and in the last 5 s of the window.
    pub completed_first_last: (f64, f64),
    /// POST sent -> HTTP answer.
    pub http: Percentiles,
    /// After the window: until every submitted task was completed.
    pub drain: Option<Duration>,
    /// Assign re-sends answered from the journal (should be 0).
    pub journal_answers: u64,
    /// CPU used during the window.
    pub cpu: CpuUse,
}

/// Scenario 2: `submitters` closed-loop submitters for `secs` over `agents`.
pub async fn throughput(
    api: &CoreApi,
    agents: &[SimAgentHandle],
    submitters: usize,
    secs: f64,
    first_task: u64,
    core_pid: u32,
) -> Result<ThroughputOutcome> {
    const TARGETS: usize = 8;
    let names: Arc<Vec<String>> = Arc::new(agents.iter().map(|a| a.name().to_string()).collect());
    let before = totals(agents);
    let counter = Arc::new(AtomicU64::new(first_task));
    let in_window = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(Mutex::new(None::<String>));
    let stop = Arc::new(AtomicBool::new(false));
    let meter = CpuMeter::start(core_pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut set = JoinSet::new();
    for _ in 0..submitters {
        let (api, names, counter, in_window, late, errors, first_error, stop) = (
            api.clone(),
            names.clone(),
            counter.clone(),
            in_window.clone(),
            late.clone(),
            errors.clone(),
            first_error.clone(),
            stop.clone(),
        );
        set.spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let (agent, target) = placement(n, names.len(), TARGETS);
                let req = request(&names[agent], target, n);
                let sent = Instant::now();
                match api.submit(&req).await {
                    Ok(_) => {
                        let answered = Instant::now();
                        samples.push(answered - sent);
                        if answered <= deadline {
                            in_window.fetch_add(1, Ordering::Relaxed);
                        } else {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error.lock().unwrap().get_or_insert(e.to_string());
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            samples
        });
    }
    // Completions per second, and the counters at the end of the window.
    let mut per_second = Vec::new();
    let mut last = before.acks;
    let mut tick = start;
    loop {
        tick += Duration::from_secs(1);
        if tick > deadline {
            break;
        }
        tokio::time::sleep_until(tick.into()).await;
        let acks = totals(agents).acks;
        per_second.push(acks - last);
        last = acks;
    }
    tokio::time::sleep_until(deadline.into()).await;
    let at_deadline = totals(agents);
    let window = start.elapsed();
    let cpu = meter.read();
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    while let Some(joined) = set.join_next().await {
        if let Ok(s) = joined {
            samples.extend(s);
        }
    }
    let submitted_total = in_window.load(Ordering::Relaxed) + late.load(Ordering::Relaxed);
    let drain = wait_acks(
        agents,
        before.acks + submitted_total,
        Duration::from_secs(120),
    )
    .await
    .map(|_| deadline.elapsed());
    let after = totals(agents);
    let first_error = first_error.lock().unwrap().clone();
    Ok(ThroughputOutcome {
        history: first_task,
        agents: agents.len(),
        submitters,
        window,
        submitted: in_window.load(Ordering::Relaxed),
        dispatched: at_deadline.tasks_received - before.tasks_received,
        completed: at_deadline.acks - before.acks,
        errors: errors.load(Ordering::Relaxed),
        first_error,
        completed_per_second: (
            per_second.iter().copied().min().unwrap_or(0),
            per_second.iter().copied().max().unwrap_or(0),
        ),
        completed_first_last: {
            let k = per_second.len().min(5);
            let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / k.max(1) as f64;
            (
                mean(&per_second[..k]),
                mean(&per_second[per_second.len() - k..]),
            )
        },
        http: Percentiles::of(samples),
        drain,
        journal_answers: after.journal_answers - before.journal_answers,
        cpu,
    })
}
