//! Polling transport benchmark: a real `wharf-core serve` child (release build, durable
//! sled store) and simulated agents in poll mode (`POST /agent/v1/poll` over HTTPS with
//! their client certificates, one keep-alive connection each) on 127.0.0.1. Reuses the
//! `core_dispatch` modules (core process, enrollment, the paced submit loop, stats).
//!
//! 1. `latency`: submit-to-`Accepted` latency over long poll at a paced open-loop rate
//!    (default 200 tasks/s) with 1 and with N polling agents (default 1,000), each on a
//!    fresh core.
//! 2. `fleet`: N polling agents (default 10,000) on one core under the default long-poll
//!    hold (25 s) and caps: an idle window (core CPU, RSS, polls per second), then tasks
//!    at a paced rate over the whole fleet (default 100 tasks/s): the time for an idle
//!    long poll to be answered when a task arrives, and the round trip of the
//!    confirming poll. The fleet's core data dir and identities are cached.
//!
//! Run with `make bench`, or `cargo bench --locked -p wharf-testbed --bench poll_dispatch`
//! (`-- latency` or `-- fleet` to pick). Settings (environment):
//!
//! | variable | default | |
//! |---|---|---|
//! | `WHARF_BENCH_POLL_SCENARIOS` | `latency,fleet` | or names as arguments |
//! | `WHARF_BENCH_POLL_RATE` | 200 | offered tasks/s of `latency` with N agents |
//! | `WHARF_BENCH_POLL_RATE_ONE` | 8 | offered tasks/s of `latency` with 1 agent (a task costs two polls; core caps one agent at 20 polls/s) |
//! | `WHARF_BENCH_LATENCY_SECS` | 10 | measured seconds per latency run (after 2 s of warm-up) |
//! | `WHARF_BENCH_LATENCY_AGENTS` | 1000 | the many-agents latency run |
//! | `WHARF_BENCH_FLEET_AGENTS` | 10000 | polling agents of `fleet` |
//! | `WHARF_BENCH_FLEET_RATE` | 100 | tasks/s over the fleet |
//! | `WHARF_BENCH_IDLE_SECS` | 30 | idle window of `fleet` (longer than the 25 s hold) |
//! | `WHARF_BENCH_POLL_CACHE` | `target/bench/poll_dispatch` | fleet core data dir + identities |
//! | `WHARF_BENCH_FRESH` | unset | `1`: discard the cached fleet, enroll again |
//! | `WHARF_CORE_BIN` | built now | a `wharf-core` binary to use |

#[path = "../core_dispatch/core.rs"]
#[allow(dead_code)]
mod core;
#[path = "../core_dispatch/dispatch.rs"]
#[allow(dead_code)]
mod dispatch;
#[path = "../core_dispatch/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "../core_dispatch/settings.rs"]
mod settings;
#[path = "../core_dispatch/stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wharf_testbed::simagent::{
    Behaviour, CoreApi, Enrolled, PollOptions, Reconnect, SimAgent, SimAgentHandle,
};

use crate::core::{rss_of, CoreProcess, CpuMeter};
use crate::dispatch::LatencyOutcome;
use crate::fleet::{enroll_all, shutdown_all, totals};
use crate::settings::env_num;
use crate::stats::{mib, ms, secs, Results};

const SCENARIOS: [&str; 2] = ["latency", "fleet"];
const LATENCY_P99_TARGET: Duration = Duration::from_millis(100);
/// Polling agents starting (TLS handshake with the client certificate, first poll) at
/// once.
const PARALLEL_START: usize = 64;

#[derive(Debug)]
struct Config {
    scenarios: Vec<String>,
    rate: f64,
    rate_one: f64,
    latency_secs: f64,
    latency_agents: usize,
    fleet_agents: usize,
    fleet_rate: f64,
    idle: Duration,
    cache: PathBuf,
    fresh: bool,
}

impl Config {
    fn from_env(workspace: &Path) -> Result<Config> {
        let scenarios = settings::scenarios("WHARF_BENCH_POLL_SCENARIOS", &SCENARIOS)?;
        let cache = settings::cache_dir(workspace, "WHARF_BENCH_POLL_CACHE", "poll_dispatch");
        Ok(Config {
            scenarios,
            rate: env_num("WHARF_BENCH_POLL_RATE", 200.0)?,
            rate_one: env_num("WHARF_BENCH_POLL_RATE_ONE", 8.0)?,
            latency_secs: env_num("WHARF_BENCH_LATENCY_SECS", 10.0)?,
            latency_agents: env_num("WHARF_BENCH_LATENCY_AGENTS", 1000)?,
            fleet_agents: env_num("WHARF_BENCH_FLEET_AGENTS", 10_000)?,
            fleet_rate: env_num("WHARF_BENCH_FLEET_RATE", 100.0)?,
            idle: Duration::from_secs_f64(env_num("WHARF_BENCH_IDLE_SECS", 30.0)?),
            cache,
            fresh: std::env::var("WHARF_BENCH_FRESH").is_ok_and(|v| v == "1"),
        })
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() -> ExitCode {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = match Config::from_env(&workspace) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("poll_dispatch: {e:#}");
            return ExitCode::from(2);
        }
    };
    let about = format!(
        "{} CPUs | wharf-core: release build, durable sled store, long poll 25 s, 127.0.0.1",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    settings::run_main("poll_dispatch", &about, async {
        let mut results = Results::default();
        let outcome = run(&workspace, &config, &mut results).await;
        (results, outcome)
    })
}

async fn run(workspace: &Path, config: &Config, results: &mut Results) -> Result<()> {
    eprintln!("poll_dispatch: {config:?}");
    let bin = core::core_binary_async(workspace).await?;
    eprintln!("poll_dispatch: wharf-core binary {}", bin.display());
    let started = Instant::now();
    if config.wants("latency") {
        let mut counts = vec![1];
        if config.latency_agents > 1 {
            counts.push(config.latency_agents);
        }
        for n in counts {
            latency_run(&bin, config, n, results).await?;
        }
    }
    if config.wants("fleet") {
        fleet_run(&bin, config, results).await?;
    }
    results.note(format!(
        "whole run: {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// Options of the benchmark's polling agents: core's defaults, reconnection with the
/// default backoff, no task channel (nobody reads it).
fn poll_options() -> PollOptions {
    let mut options = PollOptions::default().with_reconnect(Reconnect::default());
    options.task_channel_capacity = 0;
    options
}

/// Starts polling agents for `enrolled`, `PARALLEL_START` at a time, up to three
/// attempts each; returns them in order.
async fn start_all(enrolled: &[Enrolled], core_addr: &str) -> Result<Vec<SimAgentHandle>> {
    let gate = Arc::new(Semaphore::new(PARALLEL_START));
    let mut set = JoinSet::new();
    for (k, identity) in enrolled.iter().enumerate() {
        let (gate, identity, addr) = (gate.clone(), identity.clone(), core_addr.to_string());
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                match SimAgent::poll_with(&identity, &addr, Behaviour::succeed(), poll_options())
                    .await
                {
                    Ok(handle) => return Ok::<_, anyhow::Error>((k, handle)),
                    Err(e) if attempt < 3 => {
                        eprintln!("  {} poll attempt {attempt} failed: {e}", identity.name);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => bail!("{} cannot poll: {e}", identity.name),
                }
            }
        });
    }
    let mut out: Vec<Option<SimAgentHandle>> = (0..enrolled.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (k, handle) = joined.context("an agent start panicked")??;
        out[k] = Some(handle);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Core's view: how many agents are online with transport `poll`.
async fn core_polling(api: &CoreApi) -> Result<usize> {
    let agents = api.agents().await?;
    Ok(agents
        .iter()
        .filter(|a| a["state"] == "online" && a["transport"] == "poll")
        .count())
}

async fn latency_run(bin: &Path, config: &Config, n: usize, results: &mut Results) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("wharf-bench-poll-")
        .tempdir()?;
    let data = dir.path().join("data");
    let mut core = CoreProcess::start(bin, &data)?;
    let api = core.api()?;
    let names: Vec<String> = (0..n).map(|i| format!("poll-{i}")).collect();
    eprintln!(
        "latency: fresh core ({}), {n} polling agents",
        data.display()
    );
    let (enrolled, _) = enroll_all(&api, &core.addr(), &names, None).await?;
    let agents = start_all(&enrolled, &core.addr()).await?;
    let load_before = load_average();
    let rate = if n == 1 { config.rate_one } else { config.rate };
    eprintln!(
        "latency: {n} agent(s), {rate} tasks/s for {} s",
        config.latency_secs
    );
    let throttled_before = totals(&agents).polls_throttled;
    let pid = core.pid().context("wharf-core is not running")?;
    let o = dispatch::latency(&api, &agents, rate, config.latency_secs, 2.0, 0, pid).await?;
    let scenario = format!(
        "1. latency over long poll, {n} agent{}, {rate:.0} tasks/s",
        if n == 1 { "" } else { "s" },
    );
    report_latency(&o, &scenario, results);
    results.add(
        &scenario,
        "polls answered 429 (core's per-agent rate cap)",
        (totals(&agents).polls_throttled - throttled_before).to_string(),
    );
    results.add(
        &scenario,
        "load average (1/5/15 min) before / after",
        format!("{load_before} / {}", load_average()),
    );
    let rss = core.rss()?;
    results.add(&scenario, "core RSS at the end", mib(rss.rss));
    shutdown_all(agents).await;
    core.stop()
}

fn report_latency(o: &LatencyOutcome, scenario: &str, results: &mut Results) {
    let complete = o.errors == 0 && o.missing == 0 && o.lagged_events == 0;
    results.check(
        scenario,
        "submit -> task received by the agent (about to journal it and send `accepted`) p50 / p99 / max",
        o.accept.brief(),
        format!("p99 <= {}", ms(LATENCY_P99_TARGET)),
        complete && o.accept.p99 <= LATENCY_P99_TARGET,
    );
    results.check(
        scenario,
        "submit -> answer to the poll carrying `accepted` (core recorded running) p50 / p99 / max",
        o.confirm.brief(),
        format!("p99 <= {}", ms(LATENCY_P99_TARGET)),
        complete && o.confirmed == o.submitted && o.confirm.p99 <= LATENCY_P99_TARGET,
    );
    results.add(
        scenario,
        "round trip of the confirming poll (accepted + result) p50 / p99 / max",
        o.confirm_rtt.brief(),
    );
    results.add(
        scenario,
        "tasks (sent / 201 / received / confirmed / errors)",
        format!(
            "{} / {} / {} / {} / {}{}",
            o.offered,
            o.submitted,
            o.submitted - o.missing,
            o.confirmed,
            o.errors,
            o.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    results.add(
        scenario,
        "achieved offered rate",
        format!("{:.0} tasks/s over {}", o.achieved_rate, secs(o.window)),
    );
    results.add(
        scenario,
        "received p99, tasks of the first / last second",
        format!("{} / {}", ms(o.first_second.p99), ms(o.last_second.p99)),
    );
    results.add(scenario, "HTTP POST -> 201 p50 / p99 / max", o.http.brief());
    results.add(scenario, "CPU until the last task received", o.cpu.brief());
    results.add(
        scenario,
        "open-loop schedule lag p50 / p99 / max",
        o.lag.brief(),
    );
    results.add(
        scenario,
        "all results acknowledged after the last submit",
        o.drain.map_or_else(|| "not within 120 s".into(), secs),
    );
}

/// Drops the cached fleet if its identities belong to another core (or with `fresh`).
fn check_cache(data: &Path, agents: &Path, fresh: bool) -> Result<()> {
    let same_ca = || -> Option<bool> {
        let core_ca = std::fs::read(data.join("ca.pem")).ok()?;
        let agent_ca = std::fs::read(agents.join("poll-fleet-0").join("ca.pem")).ok()?;
        Some(core_ca == agent_ca)
    };
    if fresh || !data.join("ca.pem").exists() || same_ca() == Some(false) {
        for dir in [data, agents] {
            if dir.exists() {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("cannot remove {}", dir.display()))?;
            }
        }
    }
    Ok(())
}

async fn fleet_run(bin: &Path, config: &Config, results: &mut Results) -> Result<()> {
    let n = config.fleet_agents.max(1);
    let data = config.cache.join("fleet-core");
    let agents_dir = config.cache.join("fleet-agents");
    std::fs::create_dir_all(&config.cache)?;
    check_cache(&data, &agents_dir, config.fresh)?;
    let mut core = CoreProcess::start(bin, &data)?;
    let api = core.api()?;
    let names: Vec<String> = (0..n).map(|i| format!("poll-fleet-{i}")).collect();
    eprintln!(
        "fleet: identities for {n} agents ({})",
        agents_dir.display()
    );
    let (enrolled, report) = enroll_all(&api, &core.addr(), &names, Some(&agents_dir)).await?;
    let scenario = format!("2. fleet, {n} polling agents");
    results.add(
        &scenario,
        "identities: enrolled now / from the cache",
        format!(
            "{} / {} ({})",
            report.enrolled,
            report.loaded,
            secs(report.elapsed)
        ),
    );
    // A clean process for the figures: not the one that did the enrollments.
    core.stop()?;
    core.spawn()?;
    let api = core.api()?;
    let pid = core.pid().context("wharf-core is not running")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = core.rss()?;
    eprintln!("fleet: starting {n} polling agents");
    let started = Instant::now();
    let meter = CpuMeter::start(pid);
    let agents = start_all(&enrolled, &core.addr()).await?;
    let start_time = started.elapsed();
    let start_cpu = meter.read();
    let polling = core_polling(&api).await?;
    results.add(
        &scenario,
        format!("start {n} agents ({PARALLEL_START} at once: TLS + first poll)"),
        format!(
            "{}; {}; core lists {polling} online with transport poll",
            secs(start_time),
            start_cpu.brief()
        ),
    );

    // Idle: every agent holds a long poll; core answers each after 25 s, and it polls
    // again at once.
    eprintln!("fleet: idle for {:?}", config.idle);
    let load_before = load_average();
    let before = totals(&agents);
    let polls_before: u64 = agents.iter().map(|a| a.stats().polls_sent).sum();
    let meter = CpuMeter::start(pid);
    tokio::time::sleep(config.idle).await;
    let idle_cpu = meter.read();
    let polls: u64 = agents.iter().map(|a| a.stats().polls_sent).sum::<u64>() - polls_before;
    let throttled: u64 = agents.iter().map(|a| a.stats().polls_throttled).sum();
    let after = totals(&agents);
    let core_rss = core.rss()?;
    let sim_rss = rss_of("self")?;
    let connected = fleet::connected_count(&agents);
    results.add(
        &scenario,
        format!("idle {}: CPU", secs(config.idle)),
        idle_cpu.brief(),
    );
    results.add(
        &scenario,
        "idle: polls answered per s (all agents) / 429s / failed polls",
        format!(
            "{:.0} / {throttled} / {}",
            polls as f64 / idle_cpu.wall,
            after.connect_failures - before.connect_failures
        ),
    );
    results.add(
        &scenario,
        "idle: core CPU per answered poll",
        if polls > 0 {
            format!("{:.3} ms", 1000.0 * idle_cpu.core / polls as f64)
        } else {
            "-".into()
        },
    );
    results.add(
        &scenario,
        "core RSS: no agents / idle fleet (peak)",
        format!(
            "{} / {} ({})",
            mib(baseline.rss),
            mib(core_rss.rss),
            mib(core_rss.hwm)
        ),
    );
    results.add(
        &scenario,
        "benchmark process RSS (the simulated agents)",
        format!("{} (peak {})", mib(sim_rss.rss), mib(sim_rss.hwm)),
    );
    results.add(
        &scenario,
        "agents polling (sim side) at the end of the idle window",
        connected.to_string(),
    );

    // Tasks over the idle fleet: each lands on an agent whose poll is held.
    eprintln!(
        "fleet: {} tasks/s for {} s over {n} agents",
        config.fleet_rate, config.latency_secs
    );
    let o = dispatch::latency(
        &api,
        &agents,
        config.fleet_rate,
        config.latency_secs,
        2.0,
        0,
        pid,
    )
    .await?;
    report_latency(&o, &scenario, results);
    results.add(
        &scenario,
        "polls answered 429 over the whole run",
        totals(&agents).polls_throttled.to_string(),
    );
    results.add(
        &scenario,
        "load average (1/5/15 min) before idle / after tasks",
        format!("{load_before} / {}", load_average()),
    );
    let end = core.rss()?;
    results.add(
        &scenario,
        "core RSS at the end (peak)",
        format!("{} ({})", mib(end.rss), mib(end.hwm)),
    );
    results.note(format!(
        "fleet core data dir (reused by later runs): {}",
        data.display()
    ));
    shutdown_all(agents).await;
    core.stop()
}
