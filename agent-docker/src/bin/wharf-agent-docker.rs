//! `wharf-agent-docker`: the Wharf agent for bare Docker hosts (design §4, §7).
//!
//! ```text
//! wharf-agent-docker --core HOST:7443 --state-dir DIR [--token T --ca-hash sha256:HEX]
//!                    [--name N] [--docker-host URL] [--transport auto|quic|poll]
//!                    [--quic-fallback-after 3s] [--quic-retry-every 60s]
//!                    [--allow-host-hooks]
//! ```
//!
//! Exit codes: 0 after a clean shutdown (SIGINT/SIGTERM), 2 invalid input, 3 core refused
//! the agent (enrollment refused, upgrade required), 1 otherwise. A lost or refused
//! connection is not an exit: the agent reconnects with backoff, forever.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use wharf_agent_docker::docker::{BollardDocker, DockerExecutor, DockerExecutorConfig};
use wharf_agent_docker::runtime::process::{
    exit_with, init_logging, shutdown_signal, tokio_runtime, AgentArgs,
};

#[derive(Parser, Debug)]
#[command(
    name = "wharf-agent-docker",
    version,
    about = "Wharf Docker agent: takes deploy tasks from core and swaps containers by digest"
)]
struct Cli {
    #[command(flatten)]
    agent: AgentArgs,
}

fn main() -> ExitCode {
    init_logging();
    exit_with("wharf-agent-docker", run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = cli.agent.config()?;
    let runtime = tokio_runtime().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let docker = BollardDocker::connect(cli.agent.docker_host.as_deref())
            .await
            .context("cannot reach the Docker engine (is it running, and may this user use its socket?)")?;
        let hooks = wharf_hooks::Hooks::new(docker.client().clone(), cli.agent.allow_host_hooks);
        let executor =
            DockerExecutor::new(docker, DockerExecutorConfig::new(&cli.agent.state_dir))
                .with_hooks(std::sync::Arc::new(hooks));
        tracing::info!(core = %cli.agent.core, state_dir = %cli.agent.state_dir.display(), transport = config.transport.as_str(), "wharf-agent-docker starting");
        wharf_agent_docker::runtime::run(config, executor, shutdown_signal()).await?;
        tracing::info!("wharf-agent-docker stopped");
        anyhow::Ok(())
    })
}
