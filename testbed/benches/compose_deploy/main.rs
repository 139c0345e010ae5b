//! Compose deploy benchmark (issue 6): one release change of a two-service project
//! (`web` depends on `api`) through Wharf (`wharf compose deploy --wait`: real core and
//! `wharf-agent-compose`, release builds) against plain Compose with the same lock
//! (`pull`, `up -d --remove-orphans --force-recreate --no-build`, then waiting until every
//! container is running and healthy, polling every 250 ms as the agent's health gate does),
//! both in one run on the local engine and registry, rounds interleaved.
//!
//! Run with `make bench` or `cargo bench --locked -p wharf-testbed --bench compose_deploy`.
//! Settings (environment): `WHARF_BENCH_ROUNDS` (release changes per tool, default 8).
//! Progress goes to stderr, the results table to stdout.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wharf_testbed::cluster::{AgentOptions, Binaries, ComposeAgent, Core};
use wharf_testbed::compose::{
    compose_command, remove_project, two_service_lock, wait_project_healthy, ComposeImages,
};
use wharf_testbed::{docker, TestVersion, TestbedOptions};

/// The ratio the issue sets: Wharf's deploy at most 1.1x plain Compose's.
const RATIO_TARGET: f64 = 1.1;
/// The health gate's polling period (the agent's default).
const POLL: Duration = Duration::from_millis(250);
/// How long one deploy may take.
const TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("compose_deploy: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Two projects (one per tool), removed when dropped.
struct Projects(Vec<String>);

impl Drop for Projects {
    fn drop(&mut self) {
        for p in &self.0 {
            remove_project(p);
        }
    }
}

fn run() -> Result<()> {
    let rounds = std::env::var("WHARF_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(8)
        .max(2);
    let suffix = wharf_testbed::unique_suffix();
    eprintln!("compose_deploy: building and pushing the test images");
    let images = ComposeImages::start(
        TestbedOptions::default().with_repo(format!("wharf-bench/web-{suffix}")),
        &format!("wharf-bench/api-{suffix}"),
    )
    .context("cannot start the testbed (Docker engine running? docker-registry installed?)")?;
    eprintln!("compose_deploy: building the Wharf programs (release) and starting them");
    let binaries = Binaries::get()?;
    let dir = tempfile::tempdir()?;
    let core = Core::start(&binaries, &dir.path().join("core"))?;
    let agent = ComposeAgent::enroll_and_start(
        &core,
        &format!("bench-compose-{suffix}"),
        &dir.path().join("agent"),
        &dir.path().join("deploy"),
        &AgentOptions::default(),
    )?;
    let wharf_project = format!("benchwharf{suffix}");
    let plain_project = format!("benchplain{suffix}");
    let _projects = Projects(vec![wharf_project.clone(), plain_project.clone()]);
    let plain_dir = dir.path().join("plain");
    std::fs::create_dir_all(&plain_dir)?;
    let ports = [
        wharf_testbed::free_port()?,
        wharf_testbed::free_port()?,
        wharf_testbed::free_port()?,
        wharf_testbed::free_port()?,
    ];
    let lock = |v: TestVersion, api_port: u16, web_port: u16| {
        two_service_lock(images.api(v), images.web(v), api_port, web_port)
    };
    let wharf_deploy = |v: TestVersion| -> Result<Duration> {
        let path = dir.path().join("wharf-lock.yml");
        std::fs::write(&path, lock(v, ports[0], ports[1]))?;
        let path = path.to_str().context("temp dir is not UTF-8")?;
        let started = Instant::now();
        let out = core.wharf(&[
            "compose",
            "deploy",
            "--agent",
            &agent.name,
            "--project",
            &wharf_project,
            "--lock",
            path,
            "--wait",
        ])?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!(
                "wharf compose deploy failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(took)
    };
    let plain_deploy = |v: TestVersion| -> Result<Duration> {
        std::fs::write(
            plain_dir.join("compose.lock.yml"),
            lock(v, ports[2], ports[3]),
        )?;
        let started = Instant::now();
        let compose = || compose_command(&plain_project, &plain_dir, &["compose.lock.yml"]);
        docker::run(compose()?.args(["pull", "--quiet"]))?;
        docker::run(compose()?.args([
            "up",
            "--detach",
            "--remove-orphans",
            "--force-recreate",
            "--no-build",
        ]))?;
        wait_project_healthy(&plain_project, &["api", "web"], POLL, TIMEOUT)?;
        Ok(started.elapsed())
    };

    // The first deploy of each creates the project (and pulls); not measured.
    wharf_deploy(TestVersion::V1)?;
    plain_deploy(TestVersion::V1)?;
    let mut wharf = Vec::new();
    let mut plain = Vec::new();
    for round in 1..=rounds {
        let v = if round % 2 == 1 {
            TestVersion::V2
        } else {
            TestVersion::V1
        };
        // Alternate which tool goes first, so neither always runs on a warmer engine.
        let (w, p) = if round % 2 == 1 {
            let w = wharf_deploy(v)?;
            (w, plain_deploy(v)?)
        } else {
            let p = plain_deploy(v)?;
            (wharf_deploy(v)?, p)
        };
        eprintln!(
            "  round {round} ({v}): wharf {:.0} ms, plain {:.0} ms",
            ms(w),
            ms(p)
        );
        wharf.push(w);
        plain.push(p);
    }
    drop(agent);
    drop(core);
    print_results(&wharf, &plain, &compose_tool());
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn compose_tool() -> String {
    match compose_command("x", Path::new("/"), &[]) {
        Ok(cmd) if cmd.get_program() == "docker" => "docker compose (v2)".into(),
        Ok(_) => "docker-compose (v1)".into(),
        Err(e) => format!("{e}"),
    }
}

fn stats(values: &[Duration]) -> (Duration, Duration, Duration) {
    let mut sorted = values.to_vec();
    sorted.sort();
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

fn print_results(wharf: &[Duration], plain: &[Duration], tool: &str) {
    let (pm, _, _) = stats(plain);
    println!("| tool | deploys | median | min | max | vs plain Compose |");
    println!("|---|---|---|---|---|---|");
    for (name, values) in [
        ("wharf compose deploy --wait", wharf),
        ("plain Compose pull + up -d + health wait", plain),
    ] {
        let (med, min, max) = stats(values);
        println!(
            "| {name} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.2}x |",
            values.len(),
            ms(med),
            ms(min),
            ms(max),
            med.as_secs_f64() / pm.as_secs_f64()
        );
    }
    let (wm, _, _) = stats(wharf);
    let ratio = wm.as_secs_f64() / pm.as_secs_f64();
    println!();
    println!(
        "Compose tool: {tool}; target: Wharf ≤ {RATIO_TARGET}x plain Compose: {} ({ratio:.2}x)",
        if ratio <= RATIO_TARGET {
            "met"
        } else {
            "not met"
        }
    );
}
