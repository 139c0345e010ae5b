//! Core dispatch benchmark: a real `wharf-core serve` child (release build, durable sled
//! store on a data dir) and simulated agents over QUIC + mTLS on 127.0.0.1.
//!
//! 1. `latency`: submit-to-`Accepted` latency at a paced open-loop rate (default
//!    1,000 tasks/s) with 1 and with N agents (default 1,000).
//! 2. `throughput`: tasks submitted, dispatched and completed per second with concurrent
//!    closed-loop submitters over N agents.
//! 3. `memory`: core's RSS with 1,000 and 10,000 connected idle agents (and this
//!    process's, which holds the simulated agents).
//! 4. `storm`: kill -9 of core with the largest fleet connected, restart on the same data
//!    dir and port, time until every agent has a new session.
//!
//! Run with `make bench`, or `cargo bench --locked -p wharf-testbed --bench core_dispatch`
//! (`-- latency throughput` to pick scenarios). Progress goes to stderr, the results table
//! to stdout. Settings (environment):
//!
//! | variable | default | |
//! |---|---|---|
//! | `WHARF_BENCH_SCENARIOS` | `memory,storm,latency,throughput` | or names as arguments |
//! | `WHARF_BENCH_RATE` | 1000 | offered tasks/s of the latency scenario |
//! | `WHARF_BENCH_LATENCY_SECS` | 10 | measured seconds per latency run (after a 2 s warm-up) |
//! | `WHARF_BENCH_LATENCY_AGENTS` | 1000 | the "many agents" latency run |
//! | `WHARF_BENCH_THROUGHPUT_SECS` | 20 | |
//! | `WHARF_BENCH_THROUGHPUT_AGENTS` | 1000 | |
//! | `WHARF_BENCH_SUBMITTERS` | 64 | concurrent submitters (one keep-alive HTTPS connection each) |
//! | `WHARF_BENCH_MEMORY_AGENTS` | `1000,10000` | fleet sizes; the storm uses the largest |
//! | `WHARF_BENCH_SETTLE_SECS` | 10 | idle time before reading RSS |
//! | `WHARF_BENCH_AGENTS_PER_SOCKET` | 1000 | simulated agents per client UDP socket |
//! | `WHARF_BENCH_CACHE` | `target/bench/core_dispatch` | fleet core data dir + identities |
//! | `WHARF_BENCH_FRESH` | unset | `1`: discard the cached fleet, enroll again |
//! | `WHARF_CORE_BIN` | built now | a `wharf-core` binary to use |

mod core;
mod dispatch;
mod fleet;
mod fleet_scenarios;
mod settings;
mod stats;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use wharf_testbed::simagent::Behaviour;

use crate::core::CoreProcess;
use crate::dispatch::{LatencyOutcome, ThroughputOutcome};
use crate::fleet::{connect_all, enroll_all, Endpoints};
use crate::fleet_scenarios::FleetOutcome;
use crate::settings::env_num;
use crate::stats::{mib, ms, secs, Results};

const SCENARIOS: [&str; 4] = ["memory", "storm", "latency", "throughput"];

const LATENCY_P99_TARGET: Duration = Duration::from_millis(10);
const THROUGHPUT_TARGET: f64 = 5000.0;
const MEMORY_TARGET: u64 = 1 << 30;
const MEMORY_TARGET_AGENTS: usize = 10_000;
const STORM_TARGET: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Config {
    scenarios: Vec<String>,
    rate: f64,
    latency_secs: f64,
    warmup_secs: f64,
    latency_agents: usize,
    throughput_secs: f64,
    throughput_agents: usize,
    submitters: usize,
    memory_agents: Vec<usize>,
    settle: Duration,
    per_socket: usize,
    cache: PathBuf,
    fresh: bool,
}

impl Config {
    fn from_env(workspace: &Path) -> Result<Config> {
        let scenarios = settings::scenarios("WHARF_BENCH_SCENARIOS", &SCENARIOS)?;
        let memory_agents = match std::env::var("WHARF_BENCH_MEMORY_AGENTS") {
            Ok(v) if !v.trim().is_empty() => v
                .split(',')
                .map(|s| s.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .context("WHARF_BENCH_MEMORY_AGENTS is a comma-separated list of counts")?,
            _ => vec![1000, 10_000],
        };
        let cache = settings::cache_dir(workspace, "WHARF_BENCH_CACHE", "core_dispatch");
        Ok(Config {
            scenarios,
            rate: env_num("WHARF_BENCH_RATE", 1000.0)?,
            latency_secs: env_num("WHARF_BENCH_LATENCY_SECS", 10.0)?,
            warmup_secs: 2.0,
            latency_agents: env_num("WHARF_BENCH_LATENCY_AGENTS", 1000)?,
            throughput_secs: env_num("WHARF_BENCH_THROUGHPUT_SECS", 20.0)?,
            throughput_agents: env_num("WHARF_BENCH_THROUGHPUT_AGENTS", 1000)?,
            submitters: env_num("WHARF_BENCH_SUBMITTERS", 64)?,
            memory_agents,
            settle: Duration::from_secs_f64(env_num("WHARF_BENCH_SETTLE_SECS", 10.0)?),
            per_socket: env_num("WHARF_BENCH_AGENTS_PER_SOCKET", 1000)?,
            cache,
            fresh: std::env::var("WHARF_BENCH_FRESH").is_ok_and(|v| v == "1"),
        })
    }

    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario)
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!(
        "{cpus} CPUs ({model}), {:.1} GiB RAM, Linux {kernel}",
        mem_kb as f64 / (1024.0 * 1024.0)
    )
}

fn main() -> ExitCode {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = match Config::from_env(&workspace) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("core_dispatch: {e:#}");
            return ExitCode::from(2);
        }
    };
    let about = format!(
        "{} | wharf-core: release build, sled store with durable group commit, 127.0.0.1",
        machine()
    );
    settings::run_main("core_dispatch", &about, async {
        let mut results = Results::default();
        let outcome = run(&workspace, &config, &mut results).await;
        (results, outcome)
    })
}

async fn run(workspace: &Path, config: &Config, results: &mut Results) -> Result<()> {
    eprintln!("core_dispatch: {config:?}");
    let bin = core::core_binary_async(workspace).await?;
    eprintln!("core_dispatch: wharf-core binary {}", bin.display());
    let started = Instant::now();
    if config.wants("memory") || config.wants("storm") {
        let fleet = fleet_scenarios::run(
            &bin,
            &config.cache,
            &config.memory_agents,
            config.wants("storm"),
            config.settle,
            config.per_socket,
            config.fresh,
        )
        .await?;
        report_fleet(config, &fleet, results);
    }
    if config.wants("latency") || config.wants("throughput") {
        dispatch_scenarios(&bin, config, results).await?;
    }
    results.note(format!(
        "whole run: {:.0} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A fresh core (temp data dir) with `n` enrolled and connected agents.
struct FreshCore {
    core: CoreProcess,
    api: wharf_testbed::simagent::CoreApi,
    agents: Vec<wharf_testbed::simagent::SimAgentHandle>,
    _dir: tempfile::TempDir,
}

impl FreshCore {
    async fn start(bin: &Path, config: &Config, n: usize, results: &mut Results) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wharf-bench-core-")
            .tempdir()?;
        let data = dir.path().join("data");
        let core = CoreProcess::start(bin, &data)?;
        let api = core.api()?;
        let names: Vec<String> = (0..n).map(|i| format!("sim-{i}")).collect();
        eprintln!("dispatch: fresh core ({}), {n} agents", data.display());
        let (enrolled, report) = enroll_all(&api, &core.addr(), &names, None).await?;
        let started = Instant::now();
        let mut endpoints = Endpoints::new(&core.addr(), config.per_socket)?;
        let agents = connect_all(
            &enrolled,
            0,
            &core.addr(),
            &mut endpoints,
            &Behaviour::succeed(),
        )
        .await?;
        if n > 1 {
            results.add(
                "setup",
                format!(
                    "fresh core: enroll / connect {n} agents ({} / {} in parallel)",
                    fleet::PARALLEL_ENROLL,
                    fleet::PARALLEL_CONNECT
                ),
                format!("{} / {}", secs(report.elapsed), secs(started.elapsed())),
            );
        }
        Ok(FreshCore {
            core,
            api,
            agents,
            _dir: dir,
        })
    }

    fn pid(&self) -> Result<u32> {
        self.core.pid().context("wharf-core is not running")
    }

    async fn stop(mut self, results: &mut Results, scenario: &str) -> Result<()> {
        let rss = self.core.rss()?;
        results.add(
            scenario,
            "core RSS at the end (every task is kept in memory)",
            format!("{} (peak {})", mib(rss.rss), mib(rss.hwm)),
        );
        fleet::shutdown_all(std::mem::take(&mut self.agents)).await;
        self.core.stop()
    }
}

/// Scenarios 1 and 2, each on its own fresh core, so that no run inherits the tasks of
/// another (core keeps every task in memory, and its cost per submit grows with them).
async fn dispatch_scenarios(bin: &Path, config: &Config, results: &mut Results) -> Result<()> {
    if config.wants("latency") {
        let mut counts = vec![1];
        if config.latency_agents > 1 {
            counts.push(config.latency_agents);
        }
        for n in counts {
            let fresh = FreshCore::start(bin, config, n, results).await?;
            eprintln!(
                "latency: {n} agent(s), {} tasks/s for {} s",
                config.rate, config.latency_secs
            );
            let o = dispatch::latency(
                &fresh.api,
                &fresh.agents,
                config.rate,
                config.latency_secs,
                config.warmup_secs,
                0,
                fresh.pid()?,
            )
            .await?;
            let scenario = report_latency(&o, results);
            fresh.stop(results, &scenario).await?;
        }
    }
    if config.wants("throughput") {
        let n = config.throughput_agents.max(1);
        let fresh = FreshCore::start(bin, config, n, results).await?;
        eprintln!(
            "throughput: {n} agents, {} submitters for {} s",
            config.submitters, config.throughput_secs
        );
        let o = dispatch::throughput(
            &fresh.api,
            &fresh.agents,
            config.submitters,
            config.throughput_secs,
            0,
            fresh.pid()?,
        )
        .await?;
        let scenario = report_throughput(&o, results);
        fresh.stop(results, &scenario).await?;
    }
    Ok(())
}

fn report_latency(o: &LatencyOutcome, results: &mut Results) -> String {
    let scenario = format!(
        "1. latency, {} agent{}, {:.0} tasks/s offered",
        o.agents,
        if o.agents == 1 { "" } else { "s" },
        o.rate
    );
    let complete = o.errors == 0 && o.missing == 0 && o.lagged_events == 0;
    let met = complete && o.accept.p99 <= LATENCY_P99_TARGET;
    results.check(
        &scenario,
        "submit -> Accepted p50 / p99 / max",
        o.accept.brief(),
        format!("p99 <= {}", ms(LATENCY_P99_TARGET)),
        met,
    );
    results.add(
        &scenario,
        "tasks (sent / 201 / Accepted seen / errors)",
        format!(
            "{} / {} / {} / {}{}",
            o.offered,
            o.submitted,
            o.submitted - o.missing,
            o.errors,
            o.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    results.add(
        &scenario,
        "tasks core held before the window (the warm-up)",
        o.history.to_string(),
    );
    results.add(
        &scenario,
        "achieved offered rate over the window",
        format!("{:.0} tasks/s over {}", o.achieved_rate, secs(o.window)),
    );
    results.add(
        &scenario,
        "submit -> Accepted p99, tasks sent in the first / last second",
        format!("{} / {}", ms(o.first_second.p99), ms(o.last_second.p99)),
    );
    if o.confirmed > 0 {
        // Only polling agents confirm `Accepted` in a later request (poll_dispatch).
        results.add(
            &scenario,
            "submit -> accepted confirmed / confirming round trip, p99",
            format!("{} / {}", ms(o.confirm.p99), ms(o.confirm_rtt.p99)),
        );
    }
    results.add(
        &scenario,
        "HTTP POST -> 201 p50 / p99 / max",
        o.http.brief(),
    );
    results.add(&scenario, "CPU until the last Accepted", o.cpu.brief());
    results.add(
        &scenario,
        "open-loop schedule lag p50 / p99 / max",
        o.lag.brief(),
    );
    if o.lagged_events > 0 {
        results.add(
            &scenario,
            "watcher events lost",
            o.lagged_events.to_string(),
        );
    }
    results.add(
        &scenario,
        "all results acknowledged after the last submit",
        o.drain.map_or_else(|| "not within 120 s".into(), secs),
    );
    scenario
}

fn report_throughput(o: &ThroughputOutcome, results: &mut Results) -> String {
    let scenario = format!(
        "2. throughput, {} agents, {} submitters",
        o.agents, o.submitters
    );
    let w = o.window.as_secs_f64();
    let rate = |n: u64| n as f64 / w;
    let sustained = rate(o.submitted).min(rate(o.completed));
    results.check(
        &scenario,
        format!(
            "submitted / dispatched / completed per s ({})",
            secs(o.window)
        ),
        format!(
            "{:.0} / {:.0} / {:.0}",
            rate(o.submitted),
            rate(o.dispatched),
            rate(o.completed)
        ),
        format!(">= {THROUGHPUT_TARGET:.0} tasks/s"),
        o.errors == 0 && sustained >= THROUGHPUT_TARGET,
    );
    results.add(
        &scenario,
        "tasks (submitted / dispatched / completed / errors)",
        format!(
            "{} / {} / {} / {}{}",
            o.submitted,
            o.dispatched,
            o.completed,
            o.errors,
            o.first_error
                .as_ref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
    );
    results.add(
        &scenario,
        "tasks core held before the window",
        o.history.to_string(),
    );
    results.add(
        &scenario,
        "completed per 1 s slice, min / max",
        format!(
            "{} / {}",
            o.completed_per_second.0, o.completed_per_second.1
        ),
    );
    results.add(
        &scenario,
        "completed per s, first / last 5 s of the window",
        format!(
            "{:.0} / {:.0}",
            o.completed_first_last.0, o.completed_first_last.1
        ),
    );
    results.add(
        &scenario,
        "HTTP POST -> 201 p50 / p99 / max",
        o.http.brief(),
    );
    results.add(&scenario, "CPU during the window", o.cpu.brief());
    results.add(
        &scenario,
        "backlog completed after the window",
        o.drain.map_or_else(|| "not within 120 s".into(), secs),
    );
    results.add(
        &scenario,
        "re-sent Assigns answered from the journal",
        o.journal_answers.to_string(),
    );
    scenario
}

fn report_fleet(config: &Config, o: &FleetOutcome, results: &mut Results) {
    let e = &o.enroll;
    results.add(
        "setup",
        format!(
            "fleet identities: {} enrolled now, {} from the cache",
            e.enrolled, e.loaded
        ),
        secs(e.elapsed),
    );
    let scenario = "3. memory, connected idle agents";
    results.add(
        scenario,
        "core RSS with 0 agents (fleet enrolled, fresh process)",
        mib(o.baseline.rss),
    );
    for step in &o.steps {
        let value = format!(
            "{} (peak {}; core counts {} sessions)",
            mib(step.core.rss),
            mib(step.core.hwm),
            step.core_sessions
                .map_or_else(|| "?".into(), |s| s.to_string())
        );
        let metric = format!("core RSS, {} agents", step.agents);
        if step.agents == MEMORY_TARGET_AGENTS {
            results.check(
                scenario,
                metric,
                value,
                "<= 1024 MiB",
                step.core.rss <= MEMORY_TARGET && step.core.hwm <= MEMORY_TARGET,
            );
        } else {
            results.add(scenario, metric, value);
        }
        results.add(
            scenario,
            format!("sim-agent process RSS, {} agents", step.agents),
            format!("{} (peak {})", mib(step.sim.rss), mib(step.sim.hwm)),
        );
        results.add(
            scenario,
            format!("connect {} more agents", step.added),
            secs(step.connect),
        );
    }
    if !o.steps.iter().any(|s| s.agents == MEMORY_TARGET_AGENTS) && config.wants("memory") {
        results.note(format!(
            "memory target is for {MEMORY_TARGET_AGENTS} agents; this run measured {:?}",
            config.memory_agents
        ));
    }
    if let Some(s) = &o.storm {
        let scenario = format!("4. reconnect storm, {} agents", s.agents);
        let opt = |d: Option<Duration>| d.map_or_else(|| "-".into(), secs);
        results.check(
            &scenario,
            "kill -9 -> every agent has a new session",
            s.all.map_or_else(
                || {
                    format!(
                        "{} of {} after {}",
                        s.reconnected,
                        s.agents,
                        secs(s.timeout)
                    )
                },
                secs,
            ),
            format!("<= {}", secs(STORM_TARGET)),
            s.all.is_some_and(|d| d <= STORM_TARGET),
        );
        results.add(&scenario, "kill -9 -> new core ready", secs(s.restart));
        results.add(
            &scenario,
            "kill -9 -> every agent noticed the loss (QUIC idle timeout 15 s)",
            opt(s.noticed_all),
        );
        results.add(
            &scenario,
            "first / 50 % / 99 % reconnected",
            format!("{} / {} / {}", opt(s.first), opt(s.half), opt(s.p99)),
        );
        results.add(
            &scenario,
            "failed connection attempts during the storm",
            s.failed_attempts.to_string(),
        );
        results.add(
            &scenario,
            "CPU from the restart until all were back",
            s.cpu.brief(),
        );
        for (reason, count) in s.failure_reasons.iter().take(3) {
            results.add(
                &scenario,
                format!("failure reason ({} sampled agents)", s.sampled),
                format!("{count} x {reason}"),
            );
        }
        results.add(
            &scenario,
            "core sessions / RSS after",
            format!(
                "{} / {} (peak {})",
                s.core_sessions
                    .map_or_else(|| "?".into(), |v| v.to_string()),
                mib(s.core_after.rss),
                mib(s.core_after.hwm)
            ),
        );
    }
    results.note(format!(
        "fleet core data dir (reused by later runs): {}; {} client UDP socket(s)",
        o.data_dir.display(),
        o.sockets
    ));
}
