//! Docker swap benchmark (issue: Docker agent): one deploy's swap time through Wharf
//! against the same steps with the raw `docker` CLI and against Swarm's `docker service
//! update`, all in one run on the local engine; the availability gap during a swap; the
//! agent's memory idle and during deploys.
//!
//! Run with `make bench` or `cargo bench --locked -p wharf-testbed --bench docker_swap`.
//! Settings (environment): `WHARF_BENCH_SWAPS` (swaps per scenario, default 10),
//! `WHARF_BENCH_PROBE_MS` (availability probe period, default 5).
//! Progress goes to stderr, the results table to stdout.

mod peers;
mod probe;
mod wharf;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use wharf_testbed::{TestVersion, Testbed, TestbedOptions};

use crate::peers::{forget_image, timed, RawCli, Swapper, Swarm};
use crate::probe::{Availability, Probe};

/// The ratio the issue sets: Wharf's swap at most 1.1x the raw CLI's.
const RATIO_TARGET: f64 = 1.1;
/// The agent's idle memory target.
const IDLE_RSS_TARGET_MIB: f64 = 15.0;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("docker_swap: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One scenario's measurements.
struct Measured {
    name: String,
    swaps: Vec<Duration>,
    availability: Availability,
}

fn run() -> Result<()> {
    // `cargo bench` passes `--bench`; there are no other arguments.
    let swaps = env_usize("WHARF_BENCH_SWAPS", 10).max(2);
    let probe_every = Duration::from_millis(env_usize("WHARF_BENCH_PROBE_MS", 5) as u64);
    let suffix = wharf_testbed::unique_suffix();
    eprintln!("docker_swap: building and pushing the test images");
    let bed = Testbed::start(
        TestbedOptions::default().with_repo(format!("wharf-bench/testapp-{suffix}")),
    )
    .context("cannot start the testbed (Docker engine running? docker-registry installed?)")?;
    let images = [
        bed.image(TestVersion::V1).to_string(),
        bed.image(TestVersion::V2).to_string(),
    ];

    let mut results = Vec::new();
    let cluster = wharf::Cluster::start(&suffix).context("starting core and the agent")?;
    let idle_rss = cluster.agent_rss_mib()?;

    for pull in [false, true] {
        let port = wharf_testbed::free_port()?;
        let mut raw = RawCli {
            name: format!("wharf-bench-raw-{suffix}"),
            host_port: port,
            pull,
        };
        results.push(measure(&mut raw, &images, swaps, pull, port, probe_every)?);
        let port = wharf_testbed::free_port()?;
        let mut through_wharf = cluster.swapper(format!("wharf-bench-{suffix}"), port, pull);
        results.push(measure(
            &mut through_wharf,
            &images,
            swaps,
            pull,
            port,
            probe_every,
        )?);
    }
    let deploy_rss = cluster.agent_peak_rss_mib()?;
    let port = wharf_testbed::free_port()?;
    let mut swarm = Swarm::new(format!("wharf-bench-swarm-{suffix}"), port)?;
    results.push(measure(
        &mut swarm,
        &images,
        swaps,
        false,
        port,
        probe_every,
    )?);
    drop(cluster);
    drop(bed);

    print_results(&results, idle_rss, deploy_rss);
    Ok(())
}

/// Creates the service on the first image, then swaps `swaps` times alternating the two
/// images, each swap timed and watched by the availability probe.
fn measure(
    tool: &mut dyn Swapper,
    images: &[String; 2],
    swaps: usize,
    pull: bool,
    port: u16,
    probe_every: Duration,
) -> Result<Measured> {
    eprintln!("docker_swap: {} ({swaps} swaps)", tool.name());
    let outcome = (|| {
        tool.create(&images[0])?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut durations = Vec::new();
        let mut availability = Availability::default();
        for i in 1..=swaps {
            let image = &images[i % 2];
            if pull {
                tool.prepare_pull(image);
                forget_image(image);
            }
            let probe = Probe::start(addr, probe_every);
            let took = timed(|| tool.swap(image))?;
            let seen = probe.stop();
            eprintln!(
                "  swap {i}: {:.0} ms, {} of {} requests failed, longest gap {:.0} ms",
                took.as_secs_f64() * 1e3,
                seen.failed,
                seen.requests,
                seen.longest_gap.as_secs_f64() * 1e3
            );
            durations.push(took);
            availability.requests += seen.requests;
            availability.failed += seen.failed;
            availability.longest_gap = availability.longest_gap.max(seen.longest_gap);
        }
        Ok(Measured {
            name: tool.name().to_string(),
            swaps: durations,
            availability,
        })
    })();
    tool.remove();
    outcome
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn print_results(results: &[Measured], idle_rss: f64, deploy_rss: f64) {
    let baseline = |pull: bool| {
        results
            .iter()
            .find(|m| {
                m.name.starts_with("raw") && m.name.contains(if pull { "pull" } else { "local" })
            })
            .map(|m| median(&m.swaps))
    };
    println!("| tool | swaps | median | min | max | vs raw CLI | failed requests | longest gap |");
    println!("|---|---|---|---|---|---|---|---|");
    for m in results {
        let med = median(&m.swaps);
        let min = m.swaps.iter().min().copied().unwrap_or_default();
        let max = m.swaps.iter().max().copied().unwrap_or_default();
        let ratio = baseline(m.name.contains("pull"))
            .map(|b| format!("{:.2}x", med.as_secs_f64() / b.as_secs_f64()))
            .unwrap_or_default();
        println!(
            "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {ratio} | {} of {} | {:.0} ms |",
            m.name,
            m.swaps.len(),
            med.as_secs_f64() * 1e3,
            min.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3,
            m.availability.failed,
            m.availability.requests,
            m.availability.longest_gap.as_secs_f64() * 1e3,
        );
    }
    println!();
    println!(
        "agent RSS idle: {idle_rss:.1} MiB (target ≤ {IDLE_RSS_TARGET_MIB} MiB: {}); peak over the deploys (VmHWM): {deploy_rss:.1} MiB",
        if idle_rss <= IDLE_RSS_TARGET_MIB { "met" } else { "not met" }
    );
    println!("swap target: Wharf ≤ {RATIO_TARGET}x the raw CLI");
}
