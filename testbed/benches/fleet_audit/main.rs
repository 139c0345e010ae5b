//! Fleet audit benchmark: a real `wharf-core serve` child (release build, durable sled
//! store) and N simulated agents over QUIC on 127.0.0.1, each with T deployed targets
//! (every deploy carries a sticker signed by core, which the simulated agent keeps and
//! reports back, as the real agents do).
//!
//! Measured: the wall time of `GET /v1/audit` over the whole fleet (every target `ok`),
//! against the peer an operator has without it: a script on the same API that, target
//! by target, submits `read-sticker` and `inspect`, waits for both, verifies the sticker
//! with core's public key (`sticker.pub`) and compares its digest with the running one —
//! the same work, in the same run, on the same core and agents.
//!
//! Run with `make bench`, or `cargo bench --locked -p wharf-testbed --bench fleet_audit`.
//! Settings (environment):
//!
//! | variable | default | |
//! |---|---|---|
//! | `WHARF_BENCH_AUDIT_AGENTS` | 200 | simulated agents |
//! | `WHARF_BENCH_AUDIT_TARGETS` | 5 | deployed targets per agent |
//! | `WHARF_BENCH_AUDIT_RUNS` | 3 | audits measured (the median is reported) |
//! | `WHARF_BENCH_AUDIT_SCRIPT_TARGETS` | 200 | targets the scripted peer audits (its time per target is reported) |
//! | `WHARF_CORE_BIN` | built now | a `wharf-core` binary to use |

#[path = "../core_dispatch/core.rs"]
#[allow(dead_code)]
mod core;
#[path = "../core_dispatch/fleet.rs"]
#[allow(dead_code)]
mod fleet;
#[path = "../core_dispatch/settings.rs"]
#[allow(dead_code)]
mod settings;
#[path = "../core_dispatch/stats.rs"]
#[allow(dead_code)]
mod stats;

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use uuid::Uuid;
use wharf_core::engine::SubmitRequest;
use wharf_core::queue::TaskState;
use wharf_protocol::{DeploySpec, Priority, TaskPayload};
use wharf_testbed::simagent::{Behaviour, CoreApi};

use crate::core::CoreProcess;
use crate::fleet::{connect_all, enroll_all, shutdown_all, Endpoints};
use crate::settings::env_num;
use crate::stats::{secs, Results};

#[derive(Debug)]
struct Config {
    agents: usize,
    targets: usize,
    runs: usize,
    script_targets: usize,
}

fn main() -> ExitCode {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let config = match (|| -> Result<Config> {
        Ok(Config {
            agents: env_num("WHARF_BENCH_AUDIT_AGENTS", 200)?,
            targets: env_num("WHARF_BENCH_AUDIT_TARGETS", 5)?,
            runs: env_num("WHARF_BENCH_AUDIT_RUNS", 3)?,
            script_targets: env_num("WHARF_BENCH_AUDIT_SCRIPT_TARGETS", 200)?,
        })
    })() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet_audit: {e:#}");
            return ExitCode::from(2);
        }
    };
    let about = format!(
        "{} CPUs | wharf-core: release build, durable sled store, QUIC, 127.0.0.1",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    settings::run_main("fleet_audit", &about, async {
        let mut results = Results::default();
        let outcome = run(&workspace, &config, &mut results).await;
        (results, outcome)
    })
}

fn image(n: usize) -> String {
    format!("127.0.0.1:5000/app@sha256:{n:064x}")
}

async fn run(workspace: &Path, config: &Config, results: &mut Results) -> Result<()> {
    eprintln!("fleet_audit: {config:?}");
    let bin = core::core_binary_async(workspace).await?;
    let data = tempfile::tempdir()?;
    let core = CoreProcess::start(&bin, data.path())?;
    let api = core.api()?;
    let names: Vec<String> = (0..config.agents).map(|i| format!("audit-{i}")).collect();
    let (enrolled, _) = enroll_all(&api, &core.addr(), &names, None).await?;
    let mut endpoints = Endpoints::new(&core.addr(), 64)?;
    let agents = connect_all(
        &enrolled,
        0,
        &core.addr(),
        &mut endpoints,
        &Behaviour::succeed(),
    )
    .await?;
    eprintln!("  {} agents connected; deploying", agents.len());

    let mut targets = Vec::new();
    let mut ids = Vec::new();
    for (a, name) in names.iter().enumerate() {
        for t in 0..config.targets {
            let target = format!("web-{t}");
            let request = submit_request(name, &target, deploy(a * config.targets + t));
            ids.push(api.submit(&request).await?.task.id);
            targets.push((name.clone(), target));
        }
    }
    let deployed = Instant::now();
    wait_all(&api, &ids, Duration::from_secs(300)).await?;
    eprintln!(
        "  {} targets deployed in {}",
        targets.len(),
        secs(deployed.elapsed())
    );
    let scenario = format!("{} agents x {} targets", config.agents, config.targets);

    // Wharf: one `GET /v1/audit`.
    let mut times = Vec::new();
    for _ in 0..config.runs.max(1) {
        let begun = Instant::now();
        let rows = api.audit("wait=50s").await?;
        let took = begun.elapsed();
        let ok = rows.iter().filter(|r| r["status"] == "ok").count();
        if ok != targets.len() {
            let other: Vec<_> = rows
                .iter()
                .filter(|r| r["status"] != "ok")
                .take(3)
                .collect();
            bail!(
                "the audit found {ok} of {} targets ok; e.g. {other:?}",
                targets.len()
            );
        }
        eprintln!("  audit: {} targets ok in {}", ok, secs(took));
        times.push(took);
    }
    times.sort();
    let audit = times[times.len() / 2];
    results.add(
        &scenario,
        "wharf audit (GET /v1/audit), median wall time",
        secs(audit),
    );
    let per_target_wharf = audit / u32::try_from(targets.len()).unwrap_or(u32::MAX);
    results.add(
        &scenario,
        "wharf audit, per target",
        ms_of(per_target_wharf),
    );

    // The peer: a script on the same API, one target at a time.
    let key =
        std::fs::read_to_string(data.path().join("sticker.pub")).context("core's sticker.pub")?;
    let keyring = wharf_sticker::Keyring::parse(&key)?;
    let sample: Vec<_> = targets.iter().take(config.script_targets.max(1)).collect();
    let begun = Instant::now();
    for (agent, target) in &sample {
        let sticker = run_task(&api, agent, target, TaskPayload::ReadSticker).await?;
        let inspect = run_task(&api, agent, target, TaskPayload::Inspect).await?;
        let text = sticker
            .result
            .as_ref()
            .and_then(|r| r.outputs.get("sticker"))
            .context("read-sticker returned no sticker")?;
        let wharf_sticker::Verification::Valid(s) =
            wharf_sticker::verify(text.as_bytes(), &keyring)
        else {
            bail!("the sticker of {agent}/{target} does not verify");
        };
        let running = inspect
            .result
            .as_ref()
            .and_then(|r| r.outputs.get("digest").cloned())
            .unwrap_or_default();
        if s.components.first().map(|c| c.digest.as_str()) != Some(running.as_str()) {
            bail!("{agent}/{target}: the script sees a drift that the audit did not");
        }
    }
    let script = begun.elapsed();
    let per_target_script = script / u32::try_from(sample.len()).unwrap_or(u32::MAX);
    results.add(
        &scenario,
        format!("scripted read-sticker + inspect, {} targets", sample.len()),
        secs(script),
    );
    results.add(&scenario, "scripted, per target", ms_of(per_target_script));
    results.add(
        &scenario,
        "scripted / wharf audit, per target",
        format!(
            "{:.1}x",
            per_target_script.as_secs_f64() / per_target_wharf.as_secs_f64().max(1e-9)
        ),
    );
    results.note(
        "No peer tool audits signed stickers; the peer is the script an operator would \
         write on the same API (sequential, polling each task until it ends, 5 ms apart).",
    );
    shutdown_all(agents).await;
    Ok(())
}

fn ms_of(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn deploy(n: usize) -> TaskPayload {
    TaskPayload::Deploy(DeploySpec::new(image(n)))
}

fn submit_request(agent: &str, target: &str, payload: TaskPayload) -> SubmitRequest {
    SubmitRequest {
        agent: agent.into(),
        target: target.into(),
        payload,
        priority: Priority::Normal,
        idempotency_key: None,
        expires_at: None,
        expires_in: None,
        timeout: None,
        max_attempts: None,
    }
}

/// Submits a task and polls it until it ends; fails unless it succeeded.
async fn run_task(
    api: &CoreApi,
    agent: &str,
    target: &str,
    payload: TaskPayload,
) -> Result<wharf_core::engine::TaskView> {
    let id = api
        .submit(&submit_request(agent, target, payload))
        .await?
        .task
        .id;
    wait_all(api, &[id], Duration::from_secs(30)).await?;
    api.task(id).await?.context("the task vanished")
}

/// Waits until every task of `ids` succeeded (polling, 5 ms apart).
async fn wait_all(api: &CoreApi, ids: &[Uuid], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    for id in ids {
        loop {
            let task = api.task(*id).await?.context("a task vanished")?;
            match task.state {
                TaskState::Succeeded => break,
                s if s.is_terminal() => bail!("task {id} ended {s}"),
                _ if Instant::now() > deadline => {
                    bail!("task {id} still {} after {timeout:?}", task.state)
                }
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }
    Ok(())
}
