//! What both agent binaries share around [`super::run`]: the stop signal, the default
//! agent name and the exit codes of design §7.

use super::RuntimeError;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The kernel's host name.
pub fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let name = name.trim();
    anyhow::ensure!(!name.is_empty(), "the host name is empty");
    Ok(name.to_string())
}

/// The exit codes of design §7 where they apply: 2 invalid input, 3 refused by core
/// (enrollment refused, upgrade required), 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<RuntimeError>() {
        Some(RuntimeError::InvalidInput(_)) => 2,
        Some(RuntimeError::EnrollmentRefused(_) | RuntimeError::UpgradeRequired { .. }) => 3,
        _ => 1,
    }
}

/// The flags every agent binary takes (design §7), flattened into its own `clap` parser.
/// Its `Debug` never shows the enrollment token.
#[derive(clap::Args, Clone)]
pub struct AgentArgs {
    /// Core's agent address, HOST:PORT (QUIC on UDP, HTTPS on TCP).
    #[arg(long, env = "WHARF_CORE", value_name = "HOST:PORT")]
    pub core: String,
    /// Where the agent keeps its identity (key, certificate), journal and (Docker agent)
    /// stickers.
    #[arg(long, env = "WHARF_STATE_DIR", value_name = "DIR")]
    pub state_dir: std::path::PathBuf,
    /// One-time enrollment token (`wharf agent token create`); needed on the first start
    /// only. Prefer the environment variable: arguments show in `ps`.
    #[arg(long, env = "WHARF_AGENT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Fingerprint of core's CA (`sha256:HEX`, printed by core and by `wharf agent token
    /// create`); enrollment refuses any other CA.
    #[arg(long, env = "WHARF_CA_HASH", value_name = "sha256:HEX")]
    pub ca_hash: Option<String>,
    /// The agent's name at enrollment (default: the host name).
    #[arg(long, env = "WHARF_AGENT_NAME")]
    pub name: Option<String>,
    /// The TLS name of core's certificate (default: the host part of --core).
    #[arg(long, env = "WHARF_SERVER_NAME")]
    pub server_name: Option<String>,
    /// The Docker engine (default: DOCKER_HOST, else the local socket).
    #[arg(long, env = "DOCKER_HOST", value_name = "URL")]
    pub docker_host: Option<String>,
    /// How to reach core: `quic`; `poll` (HTTPS long polling over TCP, where UDP is
    /// blocked); `auto`, QUIC, falling back to polling while QUIC cannot connect.
    #[arg(long, env = "WHARF_TRANSPORT", value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,
    /// With `--transport auto`: how long QUIC may take to connect before the agent polls.
    #[arg(long, env = "WHARF_QUIC_FALLBACK_AFTER", value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub quic_fallback_after: std::time::Duration,
    /// With `--transport auto`: how often a polling agent tries QUIC again.
    #[arg(long, env = "WHARF_QUIC_RETRY_EVERY", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub quic_retry_every: std::time::Duration,
    /// Run host-command hooks (`HookSource::HostCommand`): programs on this host with the
    /// agent's rights, not sandboxed. Without it such tasks are refused before anything
    /// changes; container hooks run either way.
    #[arg(long, env = "WHARF_ALLOW_HOST_HOOKS")]
    pub allow_host_hooks: bool,
}

impl std::fmt::Debug for AgentArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentArgs")
            .field("core", &self.core)
            .field("state_dir", &self.state_dir)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca_hash", &self.ca_hash)
            .field("name", &self.name)
            .field("server_name", &self.server_name)
            .field("docker_host", &self.docker_host)
            .field("transport", &self.transport)
            .field("quic_fallback_after", &self.quic_fallback_after)
            .field("quic_retry_every", &self.quic_retry_every)
            .finish_non_exhaustive()
    }
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportArg {
    /// QUIC, falling back to HTTPS polling.
    Auto,
    /// QUIC only.
    Quic,
    /// HTTPS long polling only.
    Poll,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text.trim())
        .map_err(|e| format!("{e}: expected a duration such as 3s or 500ms"))?;
    if d.is_zero() {
        return Err("must be more than 0".into());
    }
    Ok(d)
}

impl AgentArgs {
    /// The runtime configuration these flags describe.
    ///
    /// # Errors
    ///
    /// [`RuntimeError::InvalidInput`] for `--token` without `--ca-hash`, or when no name
    /// is given and the host name cannot be read.
    pub fn config(&self) -> Result<super::AgentConfig, RuntimeError> {
        let name = match self.name.clone() {
            Some(name) => name,
            None => host_name().map_err(|e| {
                RuntimeError::InvalidInput(format!(
                    "cannot read the host name for the agent's name ({e}): give one with --name"
                ))
            })?,
        };
        let mut config = super::AgentConfig::new(self.core.clone(), self.state_dir.clone(), name);
        config.server_name = self.server_name.clone();
        config.transport = match self.transport {
            TransportArg::Auto => super::Transport::Auto,
            TransportArg::Quic => super::Transport::Quic,
            TransportArg::Poll => super::Transport::Poll,
        };
        config.quic_fallback_after = self.quic_fallback_after;
        config.quic_retry_every = self.quic_retry_every;
        match (self.token.clone(), self.ca_hash.clone()) {
            (Some(token), Some(ca_hash)) => config = config.with_enrollment(token, ca_hash),
            (Some(_), None) => {
                return Err(RuntimeError::InvalidInput(
                    "--token needs --ca-hash sha256:HEX (the CA fingerprint core printed), so \
                     that enrollment talks to your core and no other"
                        .into(),
                ))
            }
            (None, Some(ca_hash)) => config.ca_hash = Some(ca_hash),
            (None, None) => {}
        }
        Ok(config)
    }
}

/// The process exit of an agent binary named `program`: 0, or the error (with its causes)
/// on stderr and [`exit_code`].
pub fn exit_with(program: &str, outcome: anyhow::Result<()>) -> std::process::ExitCode {
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{program}: {err:#}");
            std::process::ExitCode::from(exit_code(&err))
        }
    }
}

/// Logs to stderr, `RUST_LOG` filtering (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A two-thread tokio runtime for an agent.
///
/// # Errors
///
/// The runtime cannot be built.
pub fn tokio_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::AgentArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentArgs,
    }

    #[test]
    fn debug_never_shows_the_token_and_token_needs_a_ca_hash() {
        let cli = Cli::try_parse_from([
            "agent",
            "--core",
            "core:7443",
            "--state-dir",
            "/tmp/s",
            "--token",
            "s3cr3t-T0KEN",
            "--name",
            "a",
        ])
        .unwrap();
        let shown = format!("{:?}", cli.agent);
        assert!(!shown.contains("s3cr3t-T0KEN"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        let err = cli.agent.config().unwrap_err();
        assert!(err.to_string().contains("--ca-hash"), "{err}");
        assert!(!err.to_string().contains("s3cr3t-T0KEN"), "{err}");
    }
}
