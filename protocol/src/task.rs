//! Tasks sent to agents ([`AgentTask`]) and their outcomes ([`TaskResult`]).
//!
//! The payload of a task is a [`TaskPayload`] with one variant per kind; the [`TaskKind`] is
//! derived from it ([`TaskPayload::kind`]) so kind and payload can never disagree.
//!
//! Image references and digests inside payloads are plain strings on the wire: the agent
//! parses them with [`ImageRef::parse`](crate::ImageRef::parse) /
//! [`Digest::parse`](crate::Digest::parse) and fails the task with
//! [`ErrorType::InvalidInput`] (nothing changed) when they are not pinned, rather than failing
//! to decode the whole frame.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::image::{Digest, DigestError, ImageRef, ImageRefError};
use crate::time::{DurationMs, Timestamp};

/// Default timeout of a hook ([`HookSpec::timeout`]): 5 minutes.
pub const DEFAULT_HOOK_TIMEOUT: DurationMs = DurationMs::from_mins(5);

/// Default grace period between `docker stop`'s SIGTERM and SIGKILL: 10 seconds.
pub const DEFAULT_STOP_GRACE: DurationMs = DurationMs::from_secs(10);

/// `Display` and `FromStr` through the type's `as_str` and `ALL`: the kebab-case names,
/// and an [`UnknownName`] listing them for anything else.
macro_rules! named_text {
    ($ty:ty, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                <$ty>::ALL
                    .into_iter()
                    .find(|k| k.as_str() == s)
                    .ok_or_else(|| {
                        UnknownName::new($what, s, <$ty>::ALL.iter().map(|k| k.as_str()))
                    })
            }
        }
    };
}

/// A unit of work for one agent, on one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct AgentTask {
    /// Unique task id; the agent executes a given id at most once.
    pub id: Uuid,
    /// The container name (docker agent) or Compose project (compose agent) acted upon.
    pub target: String,
    /// What to do; also determines [`AgentTask::kind`].
    pub payload: TaskPayload,
    /// Registry credentials sealed to this agent's X25519 key, if the image needs them.
    pub credentials: Option<SealedCredentials>,
    /// Total time the agent may spend on the task before failing it with
    /// [`ErrorType::Timeout`].
    pub timeout: DurationMs,
    /// Ordering between tasks of one agent on different targets.
    pub priority: Priority,
    /// The requester's idempotency key, if one was given.
    pub idempotency_key: Option<String>,
    /// Who submitted the task (token name), for stickers and the audit log.
    pub requested_by: String,
    /// When core assigned this attempt to the agent.
    pub assigned_at: Timestamp,
    /// The task must not start after this instant ([`ErrorType::Expired`]).
    pub expires_at: Option<Timestamp>,
    /// Attempt number, starting at 1.
    pub attempt: u32,
}

impl AgentTask {
    /// The kind of the task, derived from its payload.
    pub fn kind(&self) -> TaskKind {
        self.payload.kind()
    }

    /// Whether the task may no longer start at `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| now > e)
    }
}

/// The kinds of task of design §2, with their kebab-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// `deploy`: replace a container with a new digest-pinned image.
    Deploy,
    /// `rollback`: restore the previous container or digest.
    Rollback,
    /// `health-check`: run the configured probe now.
    HealthCheck,
    /// `inspect`: report container state, digest, health, labels and sticker.
    Inspect,
    /// `write-sticker`: write a signed sticker.
    WriteSticker,
    /// `read-sticker`: read the sticker back (for audit).
    ReadSticker,
    /// `compose-deploy`: deploy a Compose lock file.
    ComposeDeploy,
    /// `compose-rollback`: restore the previous Compose lock file.
    ComposeRollback,
}

impl TaskKind {
    /// Every kind, in declaration order.
    pub const ALL: [TaskKind; 8] = [
        TaskKind::Deploy,
        TaskKind::Rollback,
        TaskKind::HealthCheck,
        TaskKind::Inspect,
        TaskKind::WriteSticker,
        TaskKind::ReadSticker,
        TaskKind::ComposeDeploy,
        TaskKind::ComposeRollback,
    ];

    /// The kebab-case name (`health-check`, ...), as in JSON and the CLI.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskKind::Deploy => "deploy",
            TaskKind::Rollback => "rollback",
            TaskKind::HealthCheck => "health-check",
            TaskKind::Inspect => "inspect",
            TaskKind::WriteSticker => "write-sticker",
            TaskKind::ReadSticker => "read-sticker",
            TaskKind::ComposeDeploy => "compose-deploy",
            TaskKind::ComposeRollback => "compose-rollback",
        }
    }

    /// Whether the kind is executed by the Compose agent rather than the Docker agent.
    pub const fn is_compose(self) -> bool {
        matches!(self, TaskKind::ComposeDeploy | TaskKind::ComposeRollback)
    }

    /// Whether the kind only reads the host (`inspect`, `read-sticker`, `health-check`).
    pub const fn is_read_only(self) -> bool {
        matches!(
            self,
            TaskKind::Inspect | TaskKind::ReadSticker | TaskKind::HealthCheck
        )
    }

    /// Whether the kind changes which release runs on the target (deploys and rollbacks,
    /// Docker and Compose).
    pub const fn changes_release(self) -> bool {
        matches!(
            self,
            TaskKind::Deploy
                | TaskKind::Rollback
                | TaskKind::ComposeDeploy
                | TaskKind::ComposeRollback
        )
    }
}

/// A string that is not one of the kebab-case names of [`TaskKind`], [`ErrorType`] or
/// [`Priority`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`: expected one of {expected}")]
pub struct UnknownName {
    what: &'static str,
    value: String,
    expected: String,
}

impl UnknownName {
    fn new<'a>(what: &'static str, value: &str, names: impl Iterator<Item = &'a str>) -> Self {
        UnknownName {
            what,
            value: value.to_owned(),
            expected: names.collect::<Vec<_>>().join(", "),
        }
    }
}

named_text!(TaskKind, "task kind");

/// Scheduling priority between tasks of one agent (`high`, `normal`, `low`). Ordered so that
/// `High > Normal > Low`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    /// `low`
    Low,
    /// `normal` (the default)
    #[default]
    Normal,
    /// `high`
    High,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// The lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

named_text!(Priority, "priority");

/// What a task does, one variant per [`TaskKind`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum TaskPayload {
    /// Deploy a digest-pinned image as the target container (design §4).
    Deploy(DeploySpec),
    /// Roll the target container back.
    Rollback(RollbackSpec),
    /// Run the health probe against the target now.
    HealthCheck(HealthCheckSpec),
    /// Report the target's container state, image digest, health, labels and sticker in
    /// [`TaskResult::outputs`].
    Inspect,
    /// Write a signed sticker for the target.
    WriteSticker(WriteStickerSpec),
    /// Read the target's sticker into [`TaskResult::outputs`].
    ReadSticker,
    /// Deploy a Compose lock file as the target project.
    ComposeDeploy(ComposeDeploySpec),
    /// Restore the previous Compose lock file of the target project.
    ComposeRollback(ComposeRollbackSpec),
}

impl TaskPayload {
    /// The kind of this payload.
    pub const fn kind(&self) -> TaskKind {
        match self {
            TaskPayload::Deploy(_) => TaskKind::Deploy,
            TaskPayload::Rollback(_) => TaskKind::Rollback,
            TaskPayload::HealthCheck(_) => TaskKind::HealthCheck,
            TaskPayload::Inspect => TaskKind::Inspect,
            TaskPayload::WriteSticker(_) => TaskKind::WriteSticker,
            TaskPayload::ReadSticker => TaskKind::ReadSticker,
            TaskPayload::ComposeDeploy(_) => TaskKind::ComposeDeploy,
            TaskPayload::ComposeRollback(_) => TaskKind::ComposeRollback,
        }
    }
}

/// A release as named by the operator (`--release NAME@VERSION`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ReleaseInfo {
    /// Release id assigned by core.
    pub id: String,
    /// Release name.
    pub name: String,
    /// Release version.
    pub version: String,
}

fn default_stop_grace() -> DurationMs {
    DEFAULT_STOP_GRACE
}

fn default_hook_timeout() -> DurationMs {
    DEFAULT_HOOK_TIMEOUT
}

/// Payload of a `deploy` task. In JSON and YAML only `image` is required; every other
/// field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct DeploySpec {
    /// The image, `[registry/]repo[:tag]@sha256:<hex>`; see [`DeploySpec::image_ref`].
    pub image: String,
    /// The release this deploy belongs to.
    #[serde(default)]
    pub release: ReleaseInfo,
    /// Environment variables of the container.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Bind mounts and named volumes.
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    /// Networks to connect the container to (the first at creation, the rest after).
    #[serde(default)]
    pub networks: Vec<String>,
    /// Docker restart policy.
    #[serde(default)]
    pub restart: RestartPolicy,
    /// Memory limit in bytes (`--memory`), if any.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// CPU limit in units of 10^-9 CPUs (`--cpus 0.5` is 500 000 000), if any.
    #[serde(default)]
    pub nano_cpus: Option<u64>,
    /// How to decide the new container is healthy.
    #[serde(default)]
    pub health: HealthSpec,
    /// Grace period for stopping the current container.
    #[serde(default = "default_stop_grace")]
    pub stop_grace: DurationMs,
    /// Hook run before anything is changed.
    #[serde(default)]
    pub pre_hook: Option<HookSpec>,
    /// Hook run after the new container is healthy.
    #[serde(default)]
    pub post_hook: Option<HookSpec>,
    /// The signed sticker (JSON text) to write after success.
    #[serde(default)]
    pub sticker: Option<String>,
}

impl DeploySpec {
    /// A deploy of `image` with no ports, volumes or limits, Docker health checking and
    /// default timings.
    pub fn new(image: impl Into<String>) -> Self {
        DeploySpec {
            image: image.into(),
            release: ReleaseInfo::default(),
            env: BTreeMap::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            networks: Vec::new(),
            restart: RestartPolicy::default(),
            memory_bytes: None,
            nano_cpus: None,
            health: HealthSpec::default(),
            stop_grace: DEFAULT_STOP_GRACE,
            pre_hook: None,
            post_hook: None,
            sticker: None,
        }
    }

    /// Parses [`DeploySpec::image`]: refuses anything not pinned by sha256 digest.
    pub fn image_ref(&self) -> Result<ImageRef, ImageRefError> {
        ImageRef::parse(&self.image)
    }
}

/// Transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum PortProtocol {
    /// `tcp` (the default)
    #[default]
    Tcp,
    /// `udp`
    Udp,
    /// `sctp`
    Sctp,
}

impl PortProtocol {
    /// The lowercase name Docker uses (`80/tcp`).
    pub const fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
            PortProtocol::Sctp => "sctp",
        }
    }
}

/// A published port, `--port HOST:CONTAINER`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PortMapping {
    /// Port on the host.
    pub host: u16,
    /// Port in the container.
    pub container: u16,
    /// Transport protocol.
    pub protocol: PortProtocol,
    /// Host address to bind, all addresses if `None`.
    pub host_ip: Option<String>,
}

/// A mount, `--volume SOURCE:DEST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct VolumeMount {
    /// Host path (absolute) or named volume.
    pub source: String,
    /// Path in the container.
    pub dest: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Docker restart policy of the created container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// `no`
    No,
    /// `always`
    Always,
    /// `unless-stopped` (the default)
    #[default]
    UnlessStopped,
    /// `on-failure`, with a maximum retry count (0 = unlimited).
    OnFailure {
        /// Maximum restarts; 0 means no limit.
        max_retries: u32,
    },
}

impl RestartPolicy {
    /// Docker's name of the policy (`no`, `always`, `unless-stopped`, `on-failure`).
    pub const fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure { .. } => "on-failure",
        }
    }
}

/// How one health probe is made.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum HealthProbe {
    /// No probe: healthy as soon as the container is running (and keeps running through
    /// the start period).
    None,
    /// Docker's own `HEALTHCHECK` status of the image (running if the image has none).
    #[default]
    DockerHealthcheck,
    /// An HTTP GET on the container's port and path answering 2xx.
    Http {
        /// Container port.
        port: u16,
        /// Path, starting with `/`.
        path: String,
    },
    /// A TCP connection to the container's port succeeds.
    Tcp {
        /// Container port.
        port: u16,
    },
    /// A command run in the container (`docker exec`) exits 0.
    Exec {
        /// Program and arguments.
        cmd: Vec<String>,
    },
}

/// How the agent decides a container is healthy. Fields left out of a JSON or YAML
/// document take their [`Default`] values.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HealthSpec {
    /// The probe.
    pub probe: HealthProbe,
    /// Time between probes.
    pub interval: DurationMs,
    /// Time one probe may take before it counts as failed.
    pub timeout: DurationMs,
    /// Consecutive failed probes (after the start period) that make the container unhealthy.
    pub retries: u32,
    /// Time after start during which failed probes do not count.
    pub start_period: DurationMs,
    /// Overall limit for becoming healthy (the CLI's `--health-timeout`); when it passes the
    /// container is unhealthy whatever the retry count.
    pub deadline: DurationMs,
}

impl Default for HealthSpec {
    /// Docker health check, probes every 2 s of up to 5 s, 3 retries, no start period,
    /// 60 s overall.
    fn default() -> Self {
        HealthSpec {
            probe: HealthProbe::default(),
            interval: DurationMs::from_secs(2),
            timeout: DurationMs::from_secs(5),
            retries: 3,
            start_period: DurationMs::ZERO,
            deadline: DurationMs::from_secs(60),
        }
    }
}

/// Where a hook runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum HookSource {
    /// A sandboxed container from a digest-pinned image (`repo@sha256:<hex>`).
    Image(String),
    /// A host program and its arguments; runs only if the agent allows host hooks.
    HostCommand(Vec<String>),
}

/// A pre- or post-deploy hook (design §5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct HookSpec {
    /// What runs.
    pub source: HookSource,
    /// Extra arguments (the container command, or appended to the host command).
    #[serde(default)]
    pub args: Vec<String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Time limit; [`DEFAULT_HOOK_TIMEOUT`] unless given.
    #[serde(default = "default_hook_timeout")]
    pub timeout: DurationMs,
}

impl HookSpec {
    /// A container hook from a pinned image, with no arguments and the default timeout.
    pub fn image(image: impl Into<String>) -> Self {
        Self::with_source(HookSource::Image(image.into()))
    }

    /// A host-command hook, with the default timeout.
    pub fn host_command(argv: Vec<String>) -> Self {
        Self::with_source(HookSource::HostCommand(argv))
    }

    fn with_source(source: HookSource) -> Self {
        HookSpec {
            source,
            args: Vec::new(),
            env: BTreeMap::new(),
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }
}

/// Payload of a `rollback` task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(default)]
pub struct RollbackSpec {
    /// Roll back to this digest (`sha256:<hex>`, same repository) instead of the previous
    /// container or the sticker's `previous`; see [`RollbackSpec::to_digest`].
    pub to: Option<String>,
    /// How to check the restored container.
    pub health: HealthSpec,
    /// The signed sticker to write after success.
    pub sticker: Option<String>,
}

impl RollbackSpec {
    /// Parses [`RollbackSpec::to`], if given.
    pub fn to_digest(&self) -> Result<Option<Digest>, DigestError> {
        self.to.as_deref().map(Digest::parse).transpose()
    }
}

/// Payload of a `health-check` task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(default)]
pub struct HealthCheckSpec {
    /// The probe to run.
    pub health: HealthSpec,
}

/// Payload of a `write-sticker` task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct WriteStickerSpec {
    /// The signed sticker, as JSON text.
    pub sticker: String,
}

/// An extra Compose file shipped with the lock (`--file F`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ComposeFile {
    /// File name, relative to the project directory (no `/`, no `..`).
    pub name: String,
    /// File contents.
    pub content: String,
}

/// Payload of a `compose-deploy` task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ComposeDeploySpec {
    /// Compose project name.
    pub project: String,
    /// The lock file (a Compose file whose images are all pinned), as text.
    pub lock: String,
    /// Extra Compose files.
    #[serde(default)]
    pub files: Vec<ComposeFile>,
    /// Expected digest (`sha256:<hex>`) per service name.
    pub expected_digests: BTreeMap<String, String>,
    /// The release this deploy belongs to.
    #[serde(default)]
    pub release: ReleaseInfo,
    /// Time every service has to be running and healthy.
    #[serde(default)]
    pub health_timeout: DurationMs,
    /// Hook run before anything is changed.
    #[serde(default)]
    pub pre_hook: Option<HookSpec>,
    /// Hook run after every service is healthy.
    #[serde(default)]
    pub post_hook: Option<HookSpec>,
    /// The signed sticker to write after success.
    #[serde(default)]
    pub sticker: Option<String>,
}

/// Payload of a `compose-rollback` task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ComposeRollbackSpec {
    /// Compose project name.
    pub project: String,
}

/// Registry credentials sealed to the agent's X25519 key (ephemeral ECDH, HKDF-SHA256,
/// AES-256-GCM, AAD = task id + agent id; design §3).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct SealedCredentials {
    /// Core's ephemeral X25519 public key.
    pub ephemeral_public: [u8; 32],
    /// AES-GCM nonce.
    pub nonce: [u8; 12],
    /// AES-GCM ciphertext with its 16-byte tag.
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedCredentials {
    /// Shows sizes only, so sealed blobs do not end up in logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedCredentials")
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// The outcome of a task, reported by the agent and kept in its journal until acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TaskResult {
    /// The task this result belongs to.
    pub task_id: Uuid,
    /// The attempt ([`AgentTask::attempt`]) this result is for.
    pub attempt: u32,
    /// Whether the task did what it was asked.
    pub success: bool,
    /// When the agent started the task.
    pub started_at: Timestamp,
    /// When the agent finished it.
    pub completed_at: Timestamp,
    /// What the task read or produced (inspect fields, sticker JSON, digests...).
    pub outputs: BTreeMap<String, String>,
    /// Human-readable error, on failure.
    pub error: Option<String>,
    /// Machine-readable error class, on failure.
    pub error_type: Option<ErrorType>,
    /// Whether retrying the same task may succeed.
    pub retriable: bool,
    /// Whether the previous state was restored after a failure.
    pub rolled_back: bool,
    /// Log lines (for failures, the failed container's last lines).
    pub logs: Vec<String>,
    /// Step timings.
    pub metrics: TaskMetrics,
}

impl TaskResult {
    /// A successful result with empty outputs, completed now.
    pub fn success(task_id: Uuid, attempt: u32, started_at: Timestamp) -> Self {
        TaskResult {
            task_id,
            attempt,
            success: true,
            started_at,
            completed_at: Timestamp::now(),
            outputs: BTreeMap::new(),
            error: None,
            error_type: None,
            retriable: false,
            rolled_back: false,
            logs: Vec::new(),
            metrics: TaskMetrics::default(),
        }
    }

    /// A failed result, completed now, with `retriable` set from
    /// [`ErrorType::is_retriable`].
    pub fn failure(
        task_id: Uuid,
        attempt: u32,
        started_at: Timestamp,
        error_type: ErrorType,
        error: impl Into<String>,
    ) -> Self {
        TaskResult {
            success: false,
            error: Some(error.into()),
            error_type: Some(error_type),
            retriable: error_type.is_retriable(),
            ..TaskResult::success(task_id, attempt, started_at)
        }
    }
}

/// Step timings of a task, in milliseconds; `None` when the step did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct TaskMetrics {
    /// Image pull (and digest verification).
    pub pull_ms: Option<u64>,
    /// Stop, rename, create and start.
    pub deploy_ms: Option<u64>,
    /// Waiting for health.
    pub health_ms: Option<u64>,
}

/// Why a task failed, with kebab-case names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
pub enum ErrorType {
    /// `invalid-input`: the task itself is wrong (unpinned image, bad name...); nothing
    /// changed.
    InvalidInput,
    /// `digest-mismatch`: the pulled image's digest is not the requested one.
    DigestMismatch,
    /// `pull-failed`: the image could not be pulled.
    PullFailed,
    /// `registry-auth`: the registry refused the credentials (or they could not be
    /// unsealed).
    RegistryAuth,
    /// `hook-failed`: a pre- or post-deploy hook failed.
    HookFailed,
    /// `start-failed`: the container could not be created or started.
    StartFailed,
    /// `health-failed`: the container did not become healthy.
    HealthFailed,
    /// `rollback-failed`: restoring the previous version failed too.
    RollbackFailed,
    /// `not-found`: the target (or its previous version, or its sticker) does not exist.
    NotFound,
    /// `sticker-invalid`: the sticker is malformed or could not be written.
    StickerInvalid,
    /// `unsupported`: this agent does not handle the task kind or option.
    Unsupported,
    /// `timeout`: the task's timeout passed.
    Timeout,
    /// `cancelled`: the task was cancelled.
    Cancelled,
    /// `expired`: the task was not started by its `expires_at`.
    Expired,
    /// `docker`: the Docker engine failed.
    Docker,
    /// `compose`: `docker compose` failed.
    Compose,
    /// `internal`: a bug or an unexpected local failure (disk, journal...).
    Internal,
}

impl ErrorType {
    /// Every error type, in declaration order.
    pub const ALL: [ErrorType; 17] = [
        ErrorType::InvalidInput,
        ErrorType::DigestMismatch,
        ErrorType::PullFailed,
        ErrorType::RegistryAuth,
        ErrorType::HookFailed,
        ErrorType::StartFailed,
        ErrorType::HealthFailed,
        ErrorType::RollbackFailed,
        ErrorType::NotFound,
        ErrorType::StickerInvalid,
        ErrorType::Unsupported,
        ErrorType::Timeout,
        ErrorType::Cancelled,
        ErrorType::Expired,
        ErrorType::Docker,
        ErrorType::Compose,
        ErrorType::Internal,
    ];

    /// The kebab-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorType::InvalidInput => "invalid-input",
            ErrorType::DigestMismatch => "digest-mismatch",
            ErrorType::PullFailed => "pull-failed",
            ErrorType::RegistryAuth => "registry-auth",
            ErrorType::HookFailed => "hook-failed",
            ErrorType::StartFailed => "start-failed",
            ErrorType::HealthFailed => "health-failed",
            ErrorType::RollbackFailed => "rollback-failed",
            ErrorType::NotFound => "not-found",
            ErrorType::StickerInvalid => "sticker-invalid",
            ErrorType::Unsupported => "unsupported",
            ErrorType::Timeout => "timeout",
            ErrorType::Cancelled => "cancelled",
            ErrorType::Expired => "expired",
            ErrorType::Docker => "docker",
            ErrorType::Compose => "compose",
            ErrorType::Internal => "internal",
        }
    }

    /// The default answer to "may a retry succeed": transient failures (pull, Docker,
    /// Compose, timeout, internal) are retriable; wrong input, digest mismatches, failed
    /// hooks or health, cancellation and expiry are not.
    pub const fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorType::PullFailed
                | ErrorType::Docker
                | ErrorType::Compose
                | ErrorType::Timeout
                | ErrorType::Internal
        )
    }
}

named_text!(ErrorType, "error type");

#[cfg(test)]
mod tests {
    use super::*;

    fn json_name<T: Serialize>(v: &T) -> String {
        serde_json::to_value(v)
            .unwrap()
            .as_str()
            .expect("unit variant serializes as a string")
            .to_owned()
    }

    #[test]
    fn task_kind_names_match_serde_and_parse_back() {
        let names: Vec<_> = TaskKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "deploy",
                "rollback",
                "health-check",
                "inspect",
                "write-sticker",
                "read-sticker",
                "compose-deploy",
                "compose-rollback"
            ]
        );
        for k in TaskKind::ALL {
            assert_eq!(json_name(&k), k.as_str());
            assert_eq!(k.as_str().parse::<TaskKind>(), Ok(k));
            assert_eq!(k.to_string(), k.as_str());
        }
        let err = "healthcheck".parse::<TaskKind>().unwrap_err().to_string();
        assert!(err.contains("unknown task kind `healthcheck`"), "{err}");
        assert!(err.contains("health-check"), "{err}");
    }

    #[test]
    fn read_only_and_release_changing_kinds_partition_all_but_write_sticker() {
        let names = |f: fn(TaskKind) -> bool| -> Vec<&str> {
            TaskKind::ALL
                .into_iter()
                .filter(|k| f(*k))
                .map(TaskKind::as_str)
                .collect()
        };
        assert_eq!(
            names(TaskKind::is_read_only),
            ["health-check", "inspect", "read-sticker"]
        );
        assert_eq!(
            names(TaskKind::changes_release),
            ["deploy", "rollback", "compose-deploy", "compose-rollback"]
        );
    }

    #[test]
    fn error_type_names_match_serde_and_parse_back() {
        for e in ErrorType::ALL {
            assert_eq!(json_name(&e), e.as_str());
            assert_eq!(e.as_str().parse::<ErrorType>(), Ok(e));
        }
        assert!("Timeout".parse::<ErrorType>().is_err());
    }

    #[test]
    fn priority_orders_and_parses() {
        assert!(Priority::High > Priority::Normal && Priority::Normal > Priority::Low);
        for p in Priority::ALL {
            assert_eq!(json_name(&p), p.as_str());
            assert_eq!(p.as_str().parse::<Priority>(), Ok(p));
        }
        assert_eq!(Priority::default(), Priority::Normal);
    }

    #[test]
    fn kind_follows_payload() {
        let payloads = [
            TaskPayload::Deploy(DeploySpec::new("x")),
            TaskPayload::Rollback(RollbackSpec::default()),
            TaskPayload::HealthCheck(HealthCheckSpec::default()),
            TaskPayload::Inspect,
            TaskPayload::WriteSticker(WriteStickerSpec::default()),
            TaskPayload::ReadSticker,
            TaskPayload::ComposeDeploy(ComposeDeploySpec {
                project: "p".into(),
                lock: String::new(),
                files: vec![],
                expected_digests: BTreeMap::new(),
                release: ReleaseInfo::default(),
                health_timeout: DurationMs::from_secs(60),
                pre_hook: None,
                post_hook: None,
                sticker: None,
            }),
            TaskPayload::ComposeRollback(ComposeRollbackSpec::default()),
        ];
        let kinds: Vec<_> = payloads.iter().map(TaskPayload::kind).collect();
        assert_eq!(kinds, TaskKind::ALL);
        // The externally tagged JSON form uses the same kebab names as the kind.
        for p in &payloads {
            let v = serde_json::to_value(p).unwrap();
            let tag = match &v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(m) => m.keys().next().unwrap().clone(),
                other => panic!("unexpected {other}"),
            };
            assert_eq!(tag, p.kind().as_str());
        }
    }

    #[test]
    fn helpers() {
        let d = DeploySpec::new("app:1.0");
        assert!(matches!(d.image_ref(), Err(ImageRefError::NotPinned(_))));
        assert_eq!(d.stop_grace, DEFAULT_STOP_GRACE);
        let h = HookSpec::image("hook@sha256:00");
        assert_eq!(h.timeout, DurationMs::from_secs(300));
        assert_eq!(
            HookSpec::host_command(vec!["/bin/true".into()]).source,
            HookSource::HostCommand(vec!["/bin/true".into()])
        );
        let r = RollbackSpec {
            to: Some("sha256:zz".into()),
            ..Default::default()
        };
        assert!(r.to_digest().is_err());
        assert_eq!(RollbackSpec::default().to_digest(), Ok(None));
        let id = Uuid::nil();
        let f = TaskResult::failure(id, 1, Timestamp(1), ErrorType::PullFailed, "boom");
        assert!(!f.success && f.retriable);
        assert_eq!(f.error.as_deref(), Some("boom"));
        let f = TaskResult::failure(id, 1, Timestamp(1), ErrorType::DigestMismatch, "x");
        assert!(!f.retriable);
        assert!(TaskResult::success(id, 1, Timestamp(1)).completed_at >= Timestamp(1));
        assert_eq!(
            RestartPolicy::OnFailure { max_retries: 3 }.as_str(),
            "on-failure"
        );
        assert_eq!(PortProtocol::Udp.as_str(), "udp");
        let creds = SealedCredentials {
            ephemeral_public: [7; 32],
            nonce: [1; 12],
            ciphertext: vec![0xAA; 40],
        };
        let dbg = format!("{creds:?}");
        assert!(
            dbg.contains("ciphertext_len: 40") && !dbg.contains("170"),
            "{dbg}"
        );
    }

    #[test]
    fn expiry() {
        let mut t = AgentTask {
            id: Uuid::nil(),
            target: "web".into(),
            payload: TaskPayload::Inspect,
            credentials: None,
            timeout: DurationMs::from_mins(10),
            priority: Priority::Normal,
            idempotency_key: None,
            requested_by: "ci".into(),
            assigned_at: Timestamp(0),
            expires_at: None,
            attempt: 1,
        };
        assert!(!t.is_expired(Timestamp(i64::MAX)));
        t.expires_at = Some(Timestamp(100));
        assert!(!t.is_expired(Timestamp(100)));
        assert!(t.is_expired(Timestamp(101)));
        assert_eq!(t.kind(), TaskKind::Inspect);
    }

    #[test]
    fn task_result_json_shape_is_snake_case() {
        let mut r = TaskResult::failure(Uuid::nil(), 1, Timestamp(0), ErrorType::HealthFailed, "x");
        r.completed_at = Timestamp(1000);
        r.rolled_back = true;
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["error_type"], "health-failed");
        assert_eq!(v["rolled_back"], true);
        assert_eq!(v["started_at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["metrics"]["pull_ms"], serde_json::Value::Null);
        let back: TaskResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}

#[cfg(test)]
mod json_defaults {
    use super::*;

    #[test]
    fn a_deploy_needs_only_its_image_in_json() {
        let image = format!("reg:5000/app@sha256:{}", "a".repeat(64));
        let spec: DeploySpec = serde_json::from_str(&format!(r#"{{"image": "{image}"}}"#)).unwrap();
        assert_eq!(spec, DeploySpec::new(image));
        let hook: HookSpec = serde_json::from_str(r#"{"source": {"image": "x"}}"#).unwrap();
        assert_eq!(hook, HookSpec::image("x"));
        let health: HealthSpec = serde_json::from_str(r#"{"retries": 7}"#).unwrap();
        assert_eq!(health.retries, 7);
        assert_eq!(health.interval, HealthSpec::default().interval);
    }
}
