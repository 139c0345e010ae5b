//! `wharf-agent-compose`: the Wharf agent for Compose projects (design §4, §7).
//!
//! ```text
//! wharf-agent-compose --core HOST:7443 --state-dir DIR --deploy-root DIR
//!                     [--token T --ca-hash sha256:HEX] [--name N] [--docker-host URL]
//!                     [--transport auto|quic|poll] [--allow-host-hooks]
//! ```
//!
//! The Compose tool is detected once at start (`docker compose` v2, else `docker-compose`
//! v1) and announced in the capabilities (`compose`, `compose-v2` or `compose-v1`).
//! Pre- and post-deploy hooks run as sandboxed containers (capability `hooks`); host-command
//! hooks only with `--allow-host-hooks` (capability `host-hooks`).
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 invalid input, 3 core refused
//! the agent (enrollment refused, upgrade required), 1 otherwise. A lost or refused
//! connection is not an exit: the agent reconnects with backoff, forever.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use wharf_agent_compose::{CliHost, ComposeExecutor, ComposeExecutorConfig, ComposeTool};
use wharf_agent_docker::docker::BollardDocker;
use wharf_agent_docker::runtime::process::{
    exit_with, init_logging, shutdown_signal, tokio_runtime, AgentArgs,
};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-agent-compose",
    version,
    about = "Wharf Compose agent: takes Compose lock deploys from core and runs them whole, health-gated"
)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
    /// Where projects live: `<deploy-root>/<project>/` holds the lock, its files and
    /// `.wharf/` (sticker, rollback copy).
    #[arg(long, env = "WHARF_DEPLOY_ROOT", value_name = "DIR")]
    deploy_root: PathBuf,
}

fn main() -> ExitCode {
    init_logging();
    exit_with("wharf-agent-compose", run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.agent.config()?;
    let runtime = tokio_runtime().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let docker = BollardDocker::connect(cli.agent.docker_host.as_deref())
            .await
            .context("cannot reach the Docker engine (is it running, and may this user use its socket?)")?;
        let tool = ComposeTool::detect().await?;
        std::fs::create_dir_all(&cli.deploy_root).with_context(|| {
            format!("cannot create the deploy root {}; pass another --deploy-root", cli.deploy_root.display())
        })?;
        let hooks = wharf_hooks::Hooks::new(docker.client().clone(), cli.agent.allow_host_hooks);
        let executor = ComposeExecutor::new(
            CliHost::new(tool, docker),
            ComposeExecutorConfig::new(&cli.deploy_root),
        )
        .with_hooks(std::sync::Arc::new(hooks));
        tracing::info!(core = %cli.agent.core, state_dir = %cli.agent.state_dir.display(), deploy_root = %cli.deploy_root.display(), tool = tool.command(), transport = config.transport.as_str(), "wharf-agent-compose starting");
        wharf_agent_docker::runtime::run(config, executor, shutdown_signal()).await?;
        tracing::info!("wharf-agent-compose stopped");
        anyhow::Ok(())
    })
}
