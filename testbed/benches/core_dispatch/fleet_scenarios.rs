//! Scenarios 3 and 4: core memory with many connected idle agents, and the reconnect
//! storm after a kill -9 of core.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wharf_testbed::simagent::{Behaviour, SimAgentHandle, SimEvent};

use crate::core::{rss_of, CoreProcess, CpuMeter, CpuUse, Metrics, Rss};
use crate::fleet::{self, connect_all, enroll_all, Endpoints, EnrollReport};

/// One step of scenario 3.
#[derive(Debug, Clone, Copy)]
pub struct MemoryStep {
    pub agents: usize,
    /// Time to connect the agents added in this step.
    pub connect: Duration,
    pub added: usize,
    pub core: Rss,
    /// This benchmark process: the simulated agents (and the driver).
    pub sim: Rss,
    /// Core's own count of open sessions.
    pub core_sessions: Option<u64>,
}

/// What scenario 4 measured.
#[derive(Debug, Clone, Default)]
pub struct StormOutcome {
    pub agents: usize,
    /// kill -9 -> new core process answering on TCP.
    pub restart: Duration,
    /// From the kill: first agent, half, 99 %, every agent with a new session.
    pub first: Option<Duration>,
    pub half: Option<Duration>,
    pub p99: Option<Duration>,
    pub all: Option<Duration>,
    /// From the kill: every agent noticed the loss of its session (QUIC idle timeout).
    pub noticed_all: Option<Duration>,
    /// Agents with a new session at the end of the wait.
    pub reconnected: usize,
    /// Failed connection attempts during the storm (handshake, Hello timeout, refused).
    pub failed_attempts: u64,
    /// Core's open sessions at the end.
    pub core_sessions: Option<u64>,
    pub core_after: Rss,
    pub timeout: Duration,
    /// CPU from the restart until every agent was back (or the timeout).
    pub cpu: CpuUse,
    /// Why connection attempts failed, in a sample of the agents: (reason, count),
    /// most frequent first.
    pub failure_reasons: Vec<(String, u64)>,
    pub sampled: usize,
}

/// How many agents' events are watched during the storm for failure reasons.
const FAILURE_SAMPLE: usize = 500;

/// A failure message without the parts that differ between agents.
fn reason_class(message: &str) -> String {
    let short: String = message
        .chars()
        .map(|c| if c.is_ascii_digit() { '#' } else { c })
        .collect();
    short.chars().take(110).collect()
}

/// What the fleet phase measured.
#[derive(Debug, Default)]
pub struct FleetOutcome {
    pub enroll: EnrollReport,
    pub data_dir: PathBuf,
    pub baseline: Rss,
    pub sockets: usize,
    pub steps: Vec<MemoryStep>,
    pub storm: Option<StormOutcome>,
}

/// Drops a cached fleet whose identities do not belong to the cached core data dir (or
/// everything, with `fresh`).
fn check_cache(data: &Path, agents: &Path, fresh: bool) -> Result<()> {
    let same_ca = || -> Option<bool> {
        let core_ca = std::fs::read(data.join("ca.pem")).ok()?;
        let agent_ca = std::fs::read(agents.join("fleet-0").join("ca.pem")).ok()?;
        Some(core_ca == agent_ca)
    };
    let stale = fresh || !data.join("ca.pem").exists() || same_ca() == Some(false);
    if stale {
        for dir in [data, agents] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

async fn wait_connected(
    agents: &[SimAgentHandle],
    metrics: &Metrics,
    timeout: Duration,
) -> Result<Option<u64>> {
    let deadline = Instant::now() + timeout;
    loop {
        let ours = fleet::connected_count(agents);
        let core = metrics.sessions_active().await;
        if ours == agents.len() && core == Some(agents.len() as u64) {
            return Ok(core);
        }
        if Instant::now() > deadline {
            bail!(
                "{ours} of {} agents connected (core counts {core:?}) after {timeout:?}",
                agents.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Scenarios 3 and 4 on a fleet core whose data dir (and the agents' identities) are
/// kept under `cache` between runs: `counts` ascending, the storm with the largest.
pub async fn run(
    bin: &Path,
    cache: &Path,
    counts: &[usize],
    storm: bool,
    settle: Duration,
    per_socket: usize,
    fresh: bool,
) -> Result<FleetOutcome> {
    let data = cache.join("fleet-core");
    let agents_dir = cache.join("fleet-agents");
    std::fs::create_dir_all(cache)?;
    check_cache(&data, &agents_dir, fresh)?;
    let max = counts.iter().copied().max().unwrap_or(0);
    let mut out = FleetOutcome {
        data_dir: data.clone(),
        ..FleetOutcome::default()
    };

    let mut core = CoreProcess::start(bin, &data)?;
    let api = core.api()?;
    let names: Vec<String> = (0..max).map(|i| format!("fleet-{i}")).collect();
    eprintln!(
        "fleet: identities for {max} agents (cache {})",
        agents_dir.display()
    );
    let (enrolled, report) = enroll_all(&api, &core.addr(), &names, Some(&agents_dir)).await?;
    eprintln!(
        "fleet: {} loaded, {} enrolled now in {:.1} s",
        report.loaded,
        report.enrolled,
        report.elapsed.as_secs_f64()
    );
    out.enroll = report;
    // A clean process for the memory figures: not the one that did the enrollments.
    core.stop()?;
    core.spawn()?;
    let metrics = core.metrics()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.baseline = core.rss()?;

    let mut endpoints = Endpoints::new(&core.addr(), per_socket)?;
    let mut agents: Vec<SimAgentHandle> = Vec::new();
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    for &count in &sorted {
        let from = agents.len();
        if count > from {
            eprintln!("fleet: connecting agents {from}..{count}");
            let started = Instant::now();
            let more = connect_all(
                &enrolled[from..count],
                from,
                &core.addr(),
                &mut endpoints,
                &Behaviour::succeed(),
            )
            .await?;
            agents.extend(more);
            let core_sessions = wait_connected(&agents, &metrics, Duration::from_secs(300)).await?;
            let connect = started.elapsed();
            eprintln!(
                "fleet: {count} connected in {:.1} s; settling {:?}",
                connect.as_secs_f64(),
                settle
            );
            tokio::time::sleep(settle).await;
            out.steps.push(MemoryStep {
                agents: count,
                connect,
                added: count - from,
                core: core.rss()?,
                sim: rss_of("self")?,
                core_sessions: metrics.sessions_active().await.or(core_sessions),
            });
        }
    }
    out.sockets = endpoints.len();

    if storm && !agents.is_empty() {
        out.storm = Some(reconnect_storm(&mut core, &agents).await?);
    }
    fleet::shutdown_all(agents).await;
    core.stop()?;
    Ok(out)
}

/// kill -9 of core with every agent connected, restart on the same data dir and port,
/// and time until every agent has a new session.
async fn reconnect_storm(
    core: &mut CoreProcess,
    agents: &[SimAgentHandle],
) -> Result<StormOutcome> {
    const TIMEOUT: Duration = Duration::from_secs(180);
    let before: Vec<u64> = agents.iter().map(|a| a.stats().sessions).collect();
    let failures_before = fleet::totals(agents).connect_failures;
    let sample = agents.len().min(FAILURE_SAMPLE);
    let reasons = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        String,
        u64,
    >::new()));
    let watchers: Vec<_> = agents[..sample]
        .iter()
        .map(|a| {
            let mut rx = a.subscribe();
            let reasons = reasons.clone();
            tokio::spawn(async move {
                while let Ok(event) = rx.recv().await {
                    if let SimEvent::ConnectFailed { error } = event {
                        *reasons
                            .lock()
                            .unwrap()
                            .entry(reason_class(&error.to_string()))
                            .or_default() += 1;
                    }
                }
            })
        })
        .collect();
    eprintln!(
        "storm: kill -9 of core with {} agents connected",
        agents.len()
    );
    let killed = Instant::now();
    core.kill9()?;
    core.spawn()?;
    let restart = killed.elapsed();
    eprintln!("storm: core restarted in {:.2} s", restart.as_secs_f64());
    let meter = CpuMeter::start(core.pid().context("wharf-core is not running")?);
    let metrics = core.metrics()?;
    let n = agents.len();
    let mut out = StormOutcome {
        agents: n,
        restart,
        timeout: TIMEOUT,
        ..StormOutcome::default()
    };
    let mut last_note = Instant::now();
    loop {
        let (mut back, mut noticed) = (0, 0);
        for (a, b) in agents.iter().zip(&before) {
            let s = a.stats();
            if s.sessions > *b || !s.connected {
                noticed += 1;
            }
            if s.connected && s.sessions > *b {
                back += 1;
            }
        }
        let now = killed.elapsed();
        if noticed == n && out.noticed_all.is_none() {
            out.noticed_all = Some(now);
        }
        if back > 0 && out.first.is_none() {
            out.first = Some(now);
        }
        if back * 2 >= n && out.half.is_none() {
            out.half = Some(now);
        }
        if back * 100 >= n * 99 && out.p99.is_none() {
            out.p99 = Some(now);
        }
        out.reconnected = back;
        if back == n {
            out.all = Some(now);
            break;
        }
        if now > TIMEOUT {
            break;
        }
        if last_note.elapsed() > Duration::from_secs(5) {
            last_note = Instant::now();
            eprintln!(
                "storm: {back} of {n} reconnected at {:.1} s",
                now.as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.cpu = meter.read();
    out.failed_attempts = fleet::totals(agents).connect_failures - failures_before;
    for w in watchers {
        w.abort();
    }
    let mut reasons: Vec<(String, u64)> = reasons
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
    out.failure_reasons = reasons;
    out.sampled = sample;
    tokio::time::sleep(Duration::from_secs(2)).await;
    out.core_sessions = metrics.sessions_active().await;
    out.core_after = core.rss()?;
    Ok(out)
}
