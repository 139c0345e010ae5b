//! `wharf-agent-docker`: the Wharf agent for bare Docker hosts (design §4, §7).
//!
//! ```text
//! wharf-agent-docker --core HOST:7443 --state-dir DIR [--token T --ca-hash sha256:HEX]
//!                    [--name N] [--docker-host URL] [--transport auto|quic|poll]
//!                    [--quic-fallback-after 3s] [--quic-retry-every 60s]
//! ```
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 invalid input, 3 core refused
//! the agent (enrollment refused, upgrade required), 1 otherwise. A lost or refused
//! connection is not an exit: the agent reconnects with backoff, forever.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use wharf_agent_docker::docker::{BollardDocker, DockerExecutor, DockerExecutorConfig};
use wharf_agent_docker::runtime::process::{exit_code, host_name, shutdown_signal};
use wharf_agent_docker::runtime::{AgentConfig, RuntimeError, Transport};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-agent-docker",
    version,
    about = "Wharf Docker agent: takes deploy tasks from core and swaps containers by digest"
)]
struct Cli {
    /// Core's agent address, HOST:PORT (QUIC on UDP, HTTPS on TCP).
    #[arg(long, env = "WHARF_CORE", value_name = "HOST:PORT")]
    core: String,
    /// Where the agent keeps its identity (key, certificate), journal and stickers.
    #[arg(long, env = "WHARF_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// One-time enrollment token (`wharf agent token create`); needed on the first start
    /// only. Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "WHARF_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Fingerprint of core's CA (`sha256:HEX`, printed by core and by `wharf agent token
    /// create`); enrollment refuses any other CA.
    #[arg(long, env = "WHARF_CA_HASH", value_name = "sha256:HEX")]
    ca_hash: Option<String>,
    /// The agent's name at enrollment (default: the host name).
    #[arg(long, env = "WHARF_AGENT_NAME")]
    name: Option<String>,
    /// The TLS name of core's certificate (default: the host part of --core).
    #[arg(long, env = "WHARF_SERVER_NAME")]
    server_name: Option<String>,
    /// The Docker engine (default: DOCKER_HOST, else the local socket).
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    docker_host: Option<String>,
    /// How to reach core: `quic`; `poll` (HTTPS long polling over TCP, where UDP is
    /// blocked); `auto`, QUIC, falling back to polling while QUIC cannot connect.
    #[arg(long, env = "WHARF_TRANSPORT", value_enum, default_value_t = TransportArg::Auto)]
    transport: TransportArg,
    /// With `--transport auto`: how long QUIC may take to connect before the agent polls.
    #[arg(long, env = "WHARF_QUIC_FALLBACK_AFTER", value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    quic_fallback_after: Duration,
    /// With `--transport auto`: how often a polling agent tries QUIC again.
    #[arg(long, env = "WHARF_QUIC_RETRY_EVERY", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    quic_retry_every: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Auto,
    Quic,
    Poll,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: expected a duration such as 3s or 500ms"))?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wharf-agent-docker: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let name = match cli.name.clone() {
        Some(name) => name,
        None => host_name()
            .context("cannot read the host name for the agent's name: give one with --name")?,
    };
    let mut config = AgentConfig::new(cli.core.clone(), cli.state_dir.clone(), name);
    config.server_name = cli.server_name.clone();
    config.transport = match cli.transport {
        TransportArg::Auto => Transport::Auto,
        TransportArg::Quic => Transport::Quic,
        TransportArg::Poll => Transport::Poll,
    };
    config.quic_fallback_after = cli.quic_fallback_after;
    config.quic_retry_every = cli.quic_retry_every;
    match (cli.token.clone(), cli.ca_hash.clone()) {
        (Some(token), Some(ca_hash)) => config = config.with_enrollment(token, ca_hash),
        (Some(_), None) => {
            return Err(RuntimeError::InvalidInput(
                "--token needs --ca-hash sha256:HEX (the CA fingerprint core printed), so \
                 that enrollment talks to your core and no other"
                    .into(),
            )
            .into())
        }
        (None, Some(ca_hash)) => config.ca_hash = Some(ca_hash),
        (None, None) => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let docker = BollardDocker::connect(cli.docker_host.as_deref())
            .await
            .context("cannot reach the Docker engine (is it running, and may this user use its socket?)")?;
        let executor = DockerExecutor::new(docker, DockerExecutorConfig::new(&cli.state_dir));
        tracing::info!(core = %cli.core, state_dir = %cli.state_dir.display(), transport = config.transport.as_str(), "wharf-agent-docker starting");
        wharf_agent_docker::runtime::run(config, executor, shutdown_signal()).await?;
        tracing::info!("wharf-agent-docker stopped");
        anyhow::Ok(())
    })
}
