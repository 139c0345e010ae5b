//! Settings from the environment and the command line, shared by the benchmarks that
//! reuse these modules (`core_dispatch`, `poll_dispatch`).

use std::path::{Path, PathBuf};

use anyhow::Result;

/// `name` parsed as a number, or `default` when unset or empty.
pub fn env_num<T: std::str::FromStr>(name: &str, default: T) -> Result<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")),
        _ => Ok(default),
    }
}

/// The scenarios to run: the arguments that are not options, else the comma-separated
/// list in `env`, else all of `known`; each must be one of `known`.
pub fn scenarios(env: &str, known: &[&str]) -> Result<Vec<String>> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let scenarios: Vec<String> = if !args.is_empty() {
        args
    } else {
        match std::env::var(env) {
            Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
            _ => known.iter().map(|s| s.to_string()).collect(),
        }
    };
    for s in &scenarios {
        anyhow::ensure!(
            known.contains(&s.as_str()),
            "unknown scenario {s:?}: pick from {known:?}"
        );
    }
    Ok(scenarios)
}

/// The cache directory: `env` if set, else `target/bench/<name>` of the workspace (or of
/// `CARGO_TARGET_DIR`).
pub fn cache_dir(workspace: &Path, env: &str, name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("bench").join(name))
}

/// Runs a benchmark's `body` on a multi-threaded runtime, then prints the results table
/// (under `# NAME results` and a line `date ... | about`) on stdout; errors go to
/// stderr, prefixed with `name`.
pub fn run_main<F>(name: &str, about: &str, body: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = (crate::stats::Results, Result<()>)>,
{
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (results, outcome) = runtime.block_on(body);
    println!();
    println!("# {name} results");
    println!();
    println!(
        "date {} | {about} | benchmark build: {}",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release (bench profile)"
        },
    );
    println!();
    print!("{}", results.table());
    for note in &results.notes {
        println!("- {note}");
    }
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
