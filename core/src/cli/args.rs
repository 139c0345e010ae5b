//! The command line of `wharf` (clap derive). Values that need checking are kept as the
//! operator wrote them and checked by the pure builders of [`super::request`], so a
//! mistake is reported with the flag's name and nothing is sent.

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use crate::directory::Role;
use crate::queue::TaskState;

/// Default core URL: the HTTPS API on this host.
pub const DEFAULT_URL: &str = "https://127.0.0.1:7443";

/// `wharf`: the Wharf operator CLI.
#[derive(Debug, Parser)]
#[command(
    name = "wharf",
    version,
    about = "Deploy digest-pinned releases with Wharf and follow them",
    long_about = "Deploy digest-pinned releases with Wharf and follow them.\n\n\
        Exit codes: 0 success; 1 task failed (or a --wait that ended failed, expired or \
        cancelled); 2 invalid input, nothing was submitted; 3 core unreachable, TLS failure \
        or authentication refused."
)]
pub struct Cli {
    /// Connection to core.
    #[command(flatten, next_help_heading = "Connection")]
    pub conn: ConnectionArgs,
    /// Output format: `text` for people, `json` for one JSON document on stdout.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = OutputFormat::Text,
        help_heading = "Output"
    )]
    pub output: OutputFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How to reach core. `Debug` never shows the token.
#[derive(Clone, Args)]
pub struct ConnectionArgs {
    /// Core's operator API URL.
    #[arg(long, global = true, env = "WHARF_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// API bearer token (the first admin token is in `admin.token` in core's data dir).
    #[arg(long, global = true, env = "WHARF_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Core's CA certificate (`ca.pem` from core's data dir), trusted for HTTPS.
    #[arg(long, global = true, env = "WHARF_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
}

impl std::fmt::Debug for ConnectionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionArgs")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("ca", &self.ca)
            .finish()
    }
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable text.
    Text,
    /// Exactly one JSON document on stdout (snake_case; design §7 shapes).
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Agents: enrollment tokens, list, revoke.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// API tokens for operators and CI.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Registry credentials, stored encrypted by core and sealed to agents.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Deploy a digest-pinned image as a target container.
    Deploy(Box<DeployArgs>),
    /// Roll a target back to its previous container (or a given digest).
    Rollback(RollbackArgs),
    /// Read a target's container state, image digest, health, labels and sticker.
    Inspect(ReadArgs),
    /// Run a target's health probe now.
    Health(HealthCommandArgs),
    /// Version stickers.
    #[command(subcommand)]
    Sticker(StickerCommand),
    /// Tasks: show, list, wait, cancel.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Compose projects: deploy a digest-pinned lock, roll back to the kept release.
    #[command(subcommand)]
    Compose(ComposeCommand),
    /// Core's hash-chained audit log of every change.
    AuditLog(AuditLogArgs),
    /// Fleet audit: each target's sticker, what runs and core's record; exit 1 unless all
    /// are ok.
    Audit(AuditArgs),
    /// Every deploy and rollback of a target or Compose project, newest first, and which
    /// of them `wharf rollback` can go back to now.
    History(HistoryArgs),
}

/// `wharf audit [--agent A] [--wait 30s]`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Only this agent's targets.
    #[arg(long, value_name = "A")]
    pub agent: Option<String>,
    /// How long core waits for the agents' answers (1s to 50s; default 30s).
    #[arg(long, value_name = "DURATION")]
    pub wait: Option<String>,
}

/// `wharf history`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("of").required(true).multiple(false)))]
pub struct HistoryArgs {
    /// The agent's name.
    #[arg(long)]
    pub agent: String,
    /// The target container.
    #[arg(long, group = "of")]
    pub target: Option<String>,
    /// The Compose project.
    #[arg(long, group = "of")]
    pub project: Option<String>,
}

/// `wharf compose ...`
#[derive(Debug, Subcommand)]
pub enum ComposeCommand {
    /// Deploy a Compose lock (every image pinned by digest) as a project, whole.
    Deploy(ComposeDeployArgs),
    /// Roll a project back to the release the agent kept before the running one.
    Rollback(ComposeRollbackArgs),
}

/// `wharf compose deploy`.
#[derive(Debug, Clone, Args)]
pub struct ComposeDeployArgs {
    /// The agent's name.
    #[arg(long)]
    pub agent: String,
    /// The Compose project name (`[a-z0-9][a-z0-9_-]*`).
    #[arg(long)]
    pub project: String,
    /// The lock: a Compose file whose every service image is REPO@sha256:DIGEST.
    #[arg(long, value_name = "FILE")]
    pub lock: PathBuf,
    /// An extra file for the project directory (`*.yml`/`*.yaml`: a Compose file applied
    /// after the lock, checked like it; other files: written beside it).
    #[arg(long = "file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The release, NAME@VERSION.
    #[arg(long, value_name = "NAME@VERSION")]
    pub release: Option<String>,
    /// Time every service has to be running and healthy (like 2m).
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Hook image run after the pull, before the project is brought up,
    /// IMAGE@sha256:DIGEST (its failure changes nothing).
    #[arg(long, value_name = "IMAGE")]
    pub pre_hook: Option<String>,
    /// Hook image run once every service is healthy, IMAGE@sha256:DIGEST (its failure
    /// brings the previous release back).
    #[arg(long, value_name = "IMAGE")]
    pub post_hook: Option<String>,
    /// Queueing options.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Follow the task until it ends and exit with its outcome.
    #[arg(long)]
    pub wait: bool,
}

/// `wharf compose rollback`.
#[derive(Debug, Clone, Args)]
pub struct ComposeRollbackArgs {
    /// The agent's name.
    #[arg(long)]
    pub agent: String,
    /// The Compose project name.
    #[arg(long)]
    pub project: String,
    /// Queueing options.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Follow the task until it ends and exit with its outcome.
    #[arg(long)]
    pub wait: bool,
}

/// `wharf agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// One-time enrollment tokens.
    #[command(subcommand)]
    Token(AgentTokenCommand),
    /// List agents: name, id, state, transport, version, last seen.
    List,
    /// Revoke an agent: its connections close and its certificate is refused.
    Revoke {
        /// The agent's name.
        name: String,
    },
}

/// `wharf agent token ...`
#[derive(Debug, Subcommand)]
pub enum AgentTokenCommand {
    /// Create a one-time enrollment token for a new agent.
    Create {
        /// Name the agent will have.
        #[arg(long)]
        name: String,
        /// How long the token stays usable (like 30m, 1h, 2d).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
    },
}

/// `wharf token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token (shown once).
    Create {
        /// admin, deployer or auditor.
        #[arg(long)]
        role: Role,
        /// A name for the token (shown in the audit log and stickers).
        #[arg(long)]
        name: Option<String>,
    },
    /// List API tokens (never their values).
    List,
    /// Revoke an API token.
    Revoke {
        /// The token's id (from `wharf token list`).
        id: String,
    },
}

/// `wharf registry ...`
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Store credentials for a registry; the password is read from stdin.
    Login {
        /// The registry as in image references: HOST[:PORT].
        host: String,
        /// User name.
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password from stdin (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

/// Agent and target of a task.
#[derive(Debug, Clone, Args)]
pub struct TargetArgs {
    /// The agent's name.
    #[arg(long)]
    pub agent: String,
    /// The target container.
    #[arg(long)]
    pub target: String,
}

/// The health probe flags, shared by `deploy`, `rollback` and `health`.
#[derive(Debug, Clone, Default, Args)]
#[command(group(ArgGroup::new("probe").multiple(false)))]
pub struct HealthArgs {
    /// Probe HTTP: GET on container PORT and PATH answers 2xx (like 8080/healthz).
    #[arg(long, value_name = "PORT/PATH", group = "probe")]
    pub health_http: Option<String>,
    /// Probe TCP: a connection to container PORT succeeds.
    #[arg(long, value_name = "PORT", group = "probe")]
    pub health_tcp: Option<String>,
    /// Probe by command in the container (split like a shell, run without one).
    #[arg(long, value_name = "CMD", group = "probe", allow_hyphen_values = true)]
    pub health_cmd: Option<String>,
    /// No probe: healthy once running through the start period.
    #[arg(long, group = "probe")]
    pub health_none: bool,
    /// Overall time to become healthy (default 60s).
    #[arg(long, value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Time between probes (default 2s).
    #[arg(long, value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Consecutive failed probes that make the container unhealthy (default 3).
    #[arg(long, value_name = "N")]
    pub health_retries: Option<String>,
    /// Time after start when failed probes do not count (default 0s).
    #[arg(long, value_name = "DURATION")]
    pub health_start_period: Option<String>,
}

/// Queueing options of a submitted task.
#[derive(Debug, Clone, Default, Args)]
pub struct SubmitArgs {
    /// Makes the submit idempotent: the same key and payload give the same task.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// high, normal or low (across targets of one agent).
    #[arg(long)]
    pub priority: Option<String>,
    /// The task must start within this time or it expires (like 10m).
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
    /// Time the agent has for the task (default 10m).
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
}

/// `wharf deploy`: flags, or `-f FILE` with the same fields as YAML.
#[derive(Debug, Clone, Default, Args)]
#[command(group(ArgGroup::new("fields").multiple(true).conflicts_with("file")))]
pub struct DeployArgs {
    /// Read the deploy from a YAML file (`-` for stdin) instead of flags.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The agent's name.
    #[arg(long, required_unless_present = "file", group = "fields")]
    pub agent: Option<String>,
    /// The target container.
    #[arg(long, required_unless_present = "file", group = "fields")]
    pub target: Option<String>,
    /// The image, pinned: [REGISTRY/]REPO[:TAG]@sha256:DIGEST.
    #[arg(long, required_unless_present = "file", group = "fields")]
    pub image: Option<String>,
    /// The release, NAME@VERSION.
    #[arg(long, group = "fields")]
    pub release: Option<String>,
    /// Publish a port: [IP:]HOST:CONTAINER[/tcp|udp|sctp] (repeatable).
    #[arg(
        long = "port",
        short = 'p',
        value_name = "H:C[/PROTO]",
        group = "fields"
    )]
    pub ports: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", group = "fields")]
    pub env: Vec<String>,
    /// Mount SOURCE:DEST[:ro] (host path or named volume; repeatable).
    #[arg(
        long = "volume",
        short = 'v',
        value_name = "S:D[:ro]",
        group = "fields"
    )]
    pub volumes: Vec<String>,
    /// Connect to a network (repeatable; the first at creation).
    #[arg(long = "network", value_name = "NAME", group = "fields")]
    pub networks: Vec<String>,
    /// Restart policy: no, always, unless-stopped (default), on-failure[:N].
    #[arg(long, group = "fields")]
    pub restart: Option<String>,
    /// Memory limit, like 256m or 1g.
    #[arg(long, value_name = "SIZE", group = "fields")]
    pub memory: Option<String>,
    /// CPU limit, like 0.5.
    #[arg(long, value_name = "N", group = "fields")]
    pub cpus: Option<String>,
    /// Grace period between SIGTERM and SIGKILL when stopping the current container
    /// (default 10s).
    #[arg(long, value_name = "DURATION", group = "fields")]
    pub stop_grace: Option<String>,
    /// Health probe.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Hook image run before anything changes, IMAGE@sha256:DIGEST.
    #[arg(long, value_name = "IMAGE", group = "fields")]
    pub pre_hook: Option<String>,
    /// Hook image run once the new container is healthy, IMAGE@sha256:DIGEST.
    #[arg(long, value_name = "IMAGE", group = "fields")]
    pub post_hook: Option<String>,
    /// Queueing options.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Follow the task until it ends and exit with its outcome.
    #[arg(long)]
    pub wait: bool,
}

/// `wharf rollback`.
#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// Agent and target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Roll back to this digest (same repository) instead of the previous version.
    #[arg(long, value_name = "sha256:DIGEST")]
    pub to: Option<String>,
    /// Health probe for the restored container.
    #[command(flatten)]
    pub health: HealthArgs,
    /// Queueing options.
    #[command(flatten)]
    pub submit: SubmitArgs,
    /// Follow the task until it ends and exit with its outcome.
    #[arg(long)]
    pub wait: bool,
}

/// `wharf inspect` and `wharf sticker read`: read-only tasks that wait by default.
#[derive(Debug, Clone, Args)]
pub struct ReadArgs {
    /// Agent and target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// Submit only; print the queued task instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
}

/// `wharf health`.
#[derive(Debug, Clone, Args)]
pub struct HealthCommandArgs {
    /// Agent and target.
    #[command(flatten)]
    pub target: TargetArgs,
    /// The probe to run (default: the image's Docker HEALTHCHECK).
    #[command(flatten)]
    pub health: HealthArgs,
    /// Submit only; print the queued task instead of waiting for the result.
    #[arg(long)]
    pub no_wait: bool,
}

/// `wharf sticker ...`
#[derive(Debug, Subcommand)]
pub enum StickerCommand {
    /// Read the target's signed version sticker.
    Read(ReadArgs),
}

/// `wharf task ...`
#[derive(Debug, Subcommand)]
pub enum TaskCommand {
    /// Show one task.
    Show {
        /// Task id.
        id: Uuid,
    },
    /// List tasks in submission order.
    List {
        /// Only tasks in this state.
        #[arg(long)]
        state: Option<TaskState>,
        /// Only tasks of this agent.
        #[arg(long)]
        agent: Option<String>,
        /// Only tasks on this target.
        #[arg(long)]
        target: Option<String>,
        /// At most this many tasks.
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Follow a task until it ends and exit with its outcome.
    Wait {
        /// Task id.
        id: Uuid,
    },
    /// Cancel a task (a running one is aborted and rolled back by its agent).
    Cancel {
        /// Task id.
        id: Uuid,
    },
    /// Print the signed evidence record of a finished deploy or rollback (save it to
    /// verify it later); with --verify, check its signature too.
    Evidence {
        /// Task id.
        id: Uuid,
        /// Verify the record's signature with --key (exit 1 if it does not verify).
        #[arg(long, requires = "key")]
        verify: bool,
        /// Core's sticker verifying key: `sticker.pub` from core's data dir (a keyring file,
        /// one `ed25519 BASE64` line per trusted key).
        #[arg(long, env = "WHARF_STICKER_KEY", value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Verify a saved evidence record offline, with only core's public key (no core
    /// connection).
    VerifyEvidence {
        /// The saved record (`wharf task evidence ID > FILE`), `-` for stdin.
        file: PathBuf,
        /// Core's sticker verifying key (`sticker.pub` from core's data dir).
        #[arg(long, env = "WHARF_STICKER_KEY", value_name = "FILE")]
        key: PathBuf,
    },
}

/// `wharf audit-log [verify]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditLogArgs {
    /// `verify` checks the whole hash chain.
    #[command(subcommand)]
    pub command: Option<AuditLogCommand>,
    /// Only entries after this sequence number.
    #[arg(long, value_name = "SEQ")]
    pub after: Option<u64>,
    /// At most this many entries.
    #[arg(long)]
    pub limit: Option<u32>,
}

/// `wharf audit-log verify`.
#[derive(Debug, Subcommand)]
pub enum AuditLogCommand {
    /// Check the hash chain; exit 1 and name the first broken entry if it is broken.
    Verify,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn file_conflicts_with_field_flags() {
        let err =
            Cli::try_parse_from(["wharf", "deploy", "-f", "d.yaml", "--agent", "a"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let ok = Cli::try_parse_from(["wharf", "deploy", "-f", "d.yaml", "--wait", "-o", "json"])
            .unwrap();
        assert_eq!(ok.output, OutputFormat::Json);
        let err = Cli::try_parse_from(["wharf", "deploy", "--agent", "a"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn health_probes_are_exclusive() {
        let err = Cli::try_parse_from([
            "wharf",
            "health",
            "--agent",
            "a",
            "--target",
            "t",
            "--health-tcp",
            "1",
            "--health-none",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn password_is_never_a_flag() {
        let err = Cli::try_parse_from([
            "wharf",
            "registry",
            "login",
            "r",
            "-u",
            "x",
            "--password",
            "p",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
        let err = Cli::try_parse_from(["wharf", "registry", "login", "r", "-u", "x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
    }

    #[test]
    fn audit_log_verify_and_options() {
        let cli = Cli::try_parse_from(["wharf", "audit-log", "verify"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::AuditLog(AuditLogArgs {
                command: Some(AuditLogCommand::Verify),
                ..
            })
        ));
        let cli = Cli::try_parse_from(["wharf", "audit-log", "--after", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::AuditLog(AuditLogArgs { after: Some(5), .. })
        ));
    }

    #[test]
    fn history_takes_exactly_one_of_target_and_project() {
        let cli =
            Cli::try_parse_from(["wharf", "history", "--agent", "a", "--project", "p"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::History(HistoryArgs {
                project: Some(_),
                target: None,
                ..
            })
        ));
        let err = Cli::try_parse_from(["wharf", "history", "--agent", "a"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let err = Cli::try_parse_from([
            "wharf",
            "history",
            "--agent",
            "a",
            "--target",
            "t",
            "--project",
            "p",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    #[test]
    fn debug_never_shows_the_token() {
        let cli = Cli::try_parse_from(["wharf", "task", "list", "--token", "s3cret"]).unwrap();
        let shown = format!("{cli:?}");
        assert!(
            !shown.contains("s3cret") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn token_env_value_is_hidden_from_help() {
        let cmd = Cli::command();
        let token = cmd
            .get_arguments()
            .find(|a| a.get_id() == "token")
            .expect("--token");
        assert!(token.is_hide_env_values_set());
    }
}
