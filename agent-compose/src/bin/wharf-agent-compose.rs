//! `wharf-agent-compose`: the Wharf agent for Compose projects (design §4, §7).
//!
//! ```text
//! wharf-agent-compose --core HOST:7443 --state-dir DIR --deploy-root DIR
//!                     [--token T --ca-hash sha256:HEX] [--name N] [--docker-host URL]
//!                     [--transport quic]
//! ```
//!
//! The Compose tool is detected once at start (`docker compose` v2, else `docker-compose`
//! v1) and announced in the capabilities (`compose`, `compose-v2` or `compose-v1`).
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 invalid input, 3 core refused
//! the agent (enrollment refused, upgrade required), 1 otherwise. A lost or refused
//! connection is not an exit: the agent reconnects with backoff, forever.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use wharf_agent_compose::{CliHost, ComposeExecutor, ComposeExecutorConfig, ComposeTool};
use wharf_agent_docker::docker::BollardDocker;
use wharf_agent_docker::runtime::process::{exit_code, host_name, shutdown_signal};
use wharf_agent_docker::runtime::{AgentConfig, RuntimeError};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-agent-compose",
    version,
    about = "Wharf Compose agent: takes Compose lock deploys from core and runs them whole, health-gated"
)]
struct Cli {
    /// Core's agent address, HOST:PORT (QUIC on UDP, HTTPS on TCP).
    #[arg(long, env = "WHARF_CORE", value_name = "HOST:PORT")]
    core: String,
    /// Where the agent keeps its identity (key, certificate) and journal.
    #[arg(long, env = "WHARF_STATE_DIR", value_name = "DIR")]
    state_dir: PathBuf,
    /// Where projects live: `<deploy-root>/<project>/` holds the lock, its files and
    /// `.wharf/` (sticker, rollback copy).
    #[arg(long, env = "WHARF_DEPLOY_ROOT", value_name = "DIR")]
    deploy_root: PathBuf,
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
    /// How to reach core. Only `quic` exists so far; HTTPS polling (`poll`, `auto`)
    /// comes with the polling transport.
    #[arg(long, value_enum, default_value_t = Transport::Quic)]
    transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Transport {
    Quic,
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
            eprintln!("wharf-agent-compose: {err:#}");
            ExitCode::from(exit_code(&err))
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Transport::Quic = cli.transport;
    let name = match cli.name.clone() {
        Some(name) => name,
        None => host_name()
            .context("cannot read the host name for the agent's name: give one with --name")?,
    };
    let mut config = AgentConfig::new(cli.core.clone(), cli.state_dir.clone(), name);
    config.server_name = cli.server_name.clone();
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
        let tool = ComposeTool::detect().await?;
        std::fs::create_dir_all(&cli.deploy_root).with_context(|| {
            format!("cannot create the deploy root {}; pass another --deploy-root", cli.deploy_root.display())
        })?;
        let executor = ComposeExecutor::new(
            CliHost::new(tool, docker),
            ComposeExecutorConfig::new(&cli.deploy_root),
        );
        tracing::info!(core = %cli.core, state_dir = %cli.state_dir.display(), deploy_root = %cli.deploy_root.display(), tool = tool.command(), "wharf-agent-compose starting");
        wharf_agent_docker::runtime::run(config, executor, shutdown_signal()).await?;
        tracing::info!("wharf-agent-compose stopped");
        anyhow::Ok(())
    })
}
