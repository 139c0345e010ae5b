//! `wharf-testbed`: run the testbed's parts by hand.
//!
//! ```text
//! wharf-testbed registry up [--auth USER:PASS] [--output json]
//! wharf-testbed images build [--push --registry HOST:PORT [--username U --password-stdin]]
//!                            [--repo NAME] [--output json]
//! wharf-testbed sim-agent --core HOST:PORT --state-dir DIR [--token T --ca-hash sha256:H]
//!                         [--admin-token T --ca CA.pem] [--name N] [--count K]
//!                         [--delay 50ms] [--fail-rate 0.0]
//! ```
//!
//! `sim-agent` runs simulated agents (a protocol-level test tool, see
//! `wharf_testbed::simagent`), not real ones.
//!
//! Exit codes: 0 success, 1 failure, 2 invalid input.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::json;
use wharf_testbed::images::{self, BuildOptions, DEFAULT_REPO};
use wharf_testbed::simagent::{run_fleet, EnrollError, FleetInputError, FleetOptions};
use wharf_testbed::{Credentials, Registry, RegistryClient, RegistryOptions};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-testbed",
    version,
    about = "Wharf testbed: test images and a local registry"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// A local image registry (Debian's docker-registry).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// The test app images (v1, v2, broken).
    Images {
        #[command(subcommand)]
        command: ImagesCommand,
    },
    /// Simulated agents (a protocol test tool, not an agent): enroll, connect over QUIC,
    /// answer tasks without running anything. Prints `NAME connected as ID` per agent and
    /// runs until Ctrl-C or SIGTERM.
    SimAgent(SimAgentArgs),
    /// The local demo (`make demo`): registry, core and a Docker agent; deploy v1, v2, a
    /// broken release rolled back; the sticker and `wharf inspect`.
    Demo,
}

#[derive(Subcommand, Debug)]
enum RegistryCommand {
    /// Start a registry on a free 127.0.0.1 port, print its address and run
    /// until Ctrl-C or SIGTERM; its storage is removed on exit.
    Up(RegistryUp),
}

#[derive(Args, Debug)]
struct RegistryUp {
    /// Require HTTP basic auth (htpasswd) with these credentials.
    #[arg(long, value_name = "USER:PASS")]
    auth: Option<String>,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// Build the static test app and its images `<repo>:v1`, `:v2`, `:broken`;
    /// with --push, push them and print their digest-pinned references.
    Build(ImagesBuild),
}

#[derive(Args, Debug)]
struct ImagesBuild {
    /// Push the images to --registry and print `VERSION HOST/REPO@sha256:...`.
    #[arg(long, requires = "registry")]
    push: bool,
    /// The registry to push to.
    #[arg(long, value_name = "HOST:PORT", requires = "push")]
    registry: Option<String>,
    /// Registry user name (with --password-stdin).
    #[arg(long, requires_all = ["password_stdin", "push"])]
    username: Option<String>,
    /// Read the registry password from standard input.
    #[arg(long, requires = "username")]
    password_stdin: bool,
    /// Repository name, locally and in the registry.
    #[arg(long, default_value = DEFAULT_REPO)]
    repo: String,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Args, Debug)]
struct SimAgentArgs {
    /// Core's agent address (QUIC and HTTPS).
    #[arg(long, value_name = "HOST:PORT")]
    core: String,
    /// Where identities are kept (one `NAME/` directory per agent with --count > 1).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// One-time enrollment token (one agent, first run only).
    #[arg(long, requires = "ca_hash")]
    token: Option<String>,
    /// Core's CA fingerprint to pin, `sha256:<64 hex>`.
    #[arg(long, value_name = "sha256:HEX")]
    ca_hash: Option<String>,
    /// An admin API token: enrollment tokens are created through the API (needed for
    /// --count > 1 unless every identity is already in --state-dir).
    #[arg(long, env = "WHARF_TOKEN", hide_env_values = true, requires = "ca")]
    admin_token: Option<String>,
    /// Core's CA certificate (its `ca.pem`), to call the API with --admin-token.
    #[arg(long, env = "WHARF_CA", value_name = "PEM")]
    ca: Option<PathBuf>,
    /// Agent name; with --count K the agents are NAME-0 .. NAME-<K-1>.
    #[arg(long, default_value = "sim")]
    name: String,
    /// How many agents (sharing one UDP socket).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Simulated time per task (`50ms`, `2s`).
    #[arg(long, default_value = "0ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Probability (0.0 to 1.0) that a task fails, retriably.
    #[arg(long, default_value_t = 0.0)]
    fail_rate: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Input the user got wrong: exit code 2, nothing was done.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct InvalidInput(String);

fn invalid(err: impl std::fmt::Display) -> anyhow::Error {
    InvalidInput(err.to_string()).into()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wharf-testbed: error: {err:#}");
            let invalid_input = err.chain().any(|e| {
                e.is::<InvalidInput>()
                    || e.is::<FleetInputError>()
                    || matches!(
                        e.downcast_ref::<EnrollError>(),
                        Some(EnrollError::Invalid(_))
                    )
            });
            if invalid_input {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Registry {
            command: RegistryCommand::Up(args),
        } => registry_up(args),
        Command::Images {
            command: ImagesCommand::Build(args),
        } => images_build(args),
        Command::SimAgent(args) => sim_agent(args),
        Command::Demo => wharf_testbed::demo::run(),
    }
}

fn sim_agent(args: SimAgentArgs) -> Result<()> {
    let options = FleetOptions {
        core: args.core,
        state_dir: args.state_dir,
        token: args.token,
        ca_hash: args.ca_hash,
        name: args.name,
        count: args.count,
        delay: args.delay,
        fail_rate: args.fail_rate,
        admin_token: args.admin_token,
        ca: args.ca,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let until = async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
        };
        let mut stdout = std::io::stdout();
        let summary = run_fleet(options, &mut stdout, until).await?;
        let t = summary.totals;
        eprintln!(
            "wharf-testbed: {} simulated agents stopped: {} tasks received, {} executions, \
             {} answered from the journal, {} results sent, {} acknowledged, {} succeeded, \
             {} failed",
            summary.agents,
            t.tasks_received,
            t.executions,
            t.journal_answers,
            t.results_sent,
            t.acks,
            t.succeeded,
            t.failed
        );
        Ok(())
    })
}

fn registry_up(args: RegistryUp) -> Result<()> {
    let mut options = RegistryOptions::new().in_own_process_group();
    if let Some(auth) = &args.auth {
        options.auth =
            Some(Credentials::parse(auth).map_err(|e| invalid(format!("--auth: {e:#}")))?);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the signal runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: a signal right after the address is printed must be caught.
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        let registry = tokio::task::spawn_blocking(move || Registry::start(options))
            .await
            .context("registry start panicked")??;
        let mut stdout = std::io::stdout().lock();
        match args.output {
            Output::Text => writeln!(stdout, "{}", registry.host())?,
            Output::Json => writeln!(
                stdout,
                "{}",
                json!({
                    "addr": registry.host(),
                    "url": registry.url(),
                    "auth": registry.credentials().is_some(),
                    "username": registry.credentials().map(|c| c.username.clone()),
                    "dir": registry.dir(),
                })
            )?,
        }
        stdout.flush()?;
        drop(stdout);
        eprintln!(
            "wharf-testbed: registry on {} (storage {}); Ctrl-C or SIGTERM stops it",
            registry.url(),
            registry.dir().display()
        );
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = interrupt.recv() => break,
                _ = terminate.recv() => break,
                _ = hangup.recv() => break,
                _ = check.tick() => registry.check_running()?,
            }
        }
        eprintln!("wharf-testbed: stopping the registry");
        drop(registry);
        Ok(())
    })
}

fn images_build(args: ImagesBuild) -> Result<()> {
    wharf_testbed::check_repository(&args.repo).map_err(|e| invalid(format!("--repo: {e:#}")))?;
    if let Some(host) = &args.registry {
        let port = host
            .rsplit_once(':')
            .map(|(name, port)| (name, port.parse::<u16>()));
        if !matches!(port, Some((name, Ok(_))) if !name.is_empty()) {
            return Err(invalid(format!("--registry {host:?} is not HOST:PORT")));
        }
    }
    let credentials = match (&args.username, args.password_stdin) {
        (Some(username), true) => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.strip_suffix('\n').unwrap_or(&password);
            let password = password.strip_suffix('\r').unwrap_or(password);
            let credentials = Credentials::new(username.clone(), password);
            credentials
                .validate()
                .map_err(|e| invalid(format!("registry credentials: {e:#}")))?;
            Some(credentials)
        }
        _ => None,
    };
    let registry = match &args.registry {
        Some(host) => Some(RegistryClient::new(host.clone(), credentials)?),
        None => None,
    };
    let options = BuildOptions::default().with_repo(args.repo.clone());
    let mut rows = Vec::new();
    for version in images::TestVersion::ALL {
        let built = images::build_image(version, &options)?;
        let pinned = match &registry {
            Some(client) if args.push => Some(client.push(&built.tag, &args.repo)?),
            _ => None,
        };
        rows.push((built, pinned));
    }
    let mut stdout = std::io::stdout().lock();
    match args.output {
        Output::Text => {
            for (built, pinned) in &rows {
                match pinned {
                    Some(pinned) => writeln!(stdout, "{} {pinned}", built.version)?,
                    None => writeln!(stdout, "{} {} {}", built.version, built.tag, built.image_id)?,
                }
            }
        }
        Output::Json => {
            let doc: Vec<_> = rows
                .iter()
                .map(|(built, pinned)| {
                    json!({
                        "version": built.version.as_str(),
                        "tag": built.tag,
                        "image_id": built.image_id,
                        "pinned": pinned.as_ref().map(ToString::to_string),
                    })
                })
                .collect();
            writeln!(stdout, "{}", serde_json::Value::Array(doc))?;
        }
    }
    Ok(())
}
