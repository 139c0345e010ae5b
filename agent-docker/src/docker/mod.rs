//! The Docker executor (design §4, Docker deploy, rollback, inspect, health-check; §6
//! stickers).
//!
//! - [`api`]: the [`DockerApi`] trait, the Docker operations the executor needs, with its
//!   data types and [`DockerError`];
//! - [`bollard`](mod@bollard): [`BollardDocker`], the trait over the Docker Engine API;
//! - [`health`]: the health gate;
//! - [`DockerExecutor`]: the [`Executor`] of the Docker agent. A
//!   deploy drives [`DeployPlan`], checkpointing the plan (and
//!   what resume needs) through [`TaskContext::checkpoint`] before every step.
//!
//! Container names: the target `<name>` runs the current version; `<name>-previous` holds
//! the one before it, stopped, for fast rollback; `<name>-wharf-swap` exists only for the
//! instant of a rollback's rename.

pub mod api;
pub mod bollard;
mod deploy;
#[cfg(test)]
mod fake;
pub mod fault;
pub mod health;
mod rollback;
mod simple;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_protocol::{
    capability, AgentTask, DeploySpec, ErrorType, TaskMetrics, TaskPayload, TaskResult, Timestamp,
};

use crate::plan::DeployPlan;
use crate::runtime::executor::never_started;
use crate::runtime::{Executor, TaskContext};

pub use self::api::{
    ContainerHealth, ContainerInfo, ContainerState, CreateSpec, DockerApi, DockerError, ImageInfo,
    NetworkEndpoint,
};
pub use self::bollard::{BollardDocker, ConnectError};
pub use self::health::HealthError;
use self::rollback::SwapPlan;

/// Label set to `true` on every container Wharf creates.
pub const LABEL_MANAGED: &str = "wharf.managed";
/// Label: the release id.
pub const LABEL_RELEASE_ID: &str = "wharf.release.id";
/// Label: the release name.
pub const LABEL_RELEASE_NAME: &str = "wharf.release.name";
/// Label: the release version.
pub const LABEL_RELEASE_VERSION: &str = "wharf.release.version";
/// Label: the image digest (`sha256:<hex>`).
pub const LABEL_DIGEST: &str = "wharf.digest";
/// Label: the id of the task that created the container.
pub const LABEL_TASK_ID: &str = "wharf.task.id";
/// Label: when the container was created (RFC 3339).
pub const LABEL_DEPLOYED_AT: &str = "wharf.deployed.at";

/// How many log lines of a failed container go into [`TaskResult::logs`] by default.
pub const DEFAULT_LOG_LINES: usize = 50;

/// The name of the previous container of `target`.
pub fn previous_name(target: &str) -> String {
    format!("{target}-previous")
}

/// The name a container has for the instant of a rollback's swap.
pub fn swap_name(target: &str) -> String {
    format!("{target}-wharf-swap")
}

/// Settings of the executor.
#[derive(Debug, Clone)]
pub struct DockerExecutorConfig {
    /// The agent's `--state-dir`; stickers go to `<state-dir>/stickers/<target>.json`.
    pub state_dir: PathBuf,
    /// Log lines of a failed container kept in the result.
    pub log_lines: usize,
    /// Grace period for stopping containers outside a deploy (rollback's swap, restore of
    /// a rollback).
    pub stop_grace: Duration,
}

impl DockerExecutorConfig {
    /// Defaults for a state directory: [`DEFAULT_LOG_LINES`], a 10 s stop grace.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        DockerExecutorConfig {
            state_dir: state_dir.into(),
            log_lines: DEFAULT_LOG_LINES,
            stop_grace: wharf_protocol::DEFAULT_STOP_GRACE.as_duration(),
        }
    }
}

/// The Docker executor: runs `deploy`, `rollback`, `inspect`, `health-check`,
/// `read-sticker` and `write-sticker` tasks on one Docker host.
#[derive(Debug)]
pub struct DockerExecutor<D> {
    docker: D,
    config: DockerExecutorConfig,
    http: reqwest::Client,
    hooks: Option<Arc<dyn wharf_hooks::HookRunner>>,
}

impl<D: DockerApi> DockerExecutor<D> {
    /// An executor over `docker`.
    pub fn new(docker: D, config: DockerExecutorConfig) -> Self {
        DockerExecutor {
            docker,
            config,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            hooks: None,
        }
    }

    /// The same executor running pre- and post-deploy hooks with `hooks` (without one,
    /// a deploy with a hook is refused before anything changes).
    pub fn with_hooks(mut self, hooks: Arc<dyn wharf_hooks::HookRunner>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The Docker client.
    pub fn docker(&self) -> &D {
        &self.docker
    }

    /// The configuration.
    pub fn config(&self) -> &DockerExecutorConfig {
        &self.config
    }
}

/// Why a task stopped early (beyond a failed step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StopReason {
    /// Core cancelled it.
    Cancelled,
    /// Its timeout passed.
    Timeout,
}

/// What is journaled before each step: the plan and what resume needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    /// Format version of this checkpoint.
    version: u32,
    /// The operation in progress.
    op: Operation,
    /// When the task started (first run, not the resume).
    started_at: Timestamp,
    /// The digest `<name>` ran before, if known.
    previous_digest: Option<String>,
    /// The error class of the first failure.
    failure_type: Option<ErrorType>,
    /// Why the task stopped early, if it did.
    stop: Option<StopReason>,
    /// The failed container's last log lines.
    logs: Vec<String>,
    /// Step timings so far.
    metrics: TaskMetrics,
    /// The hooks' result outputs (`pre_hook.message`, ...), for the task result.
    #[serde(default)]
    hook_outputs: BTreeMap<String, String>,
    /// The hooks' last output lines, prefixed with the phase.
    #[serde(default)]
    hook_logs: Vec<String>,
}

const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
enum Operation {
    /// A deploy (also a rollback to a digest): the plan and the spec it deploys.
    Deploy {
        /// The step plan.
        plan: DeployPlan,
        /// What is deployed (`repo@sha256:` in `image`).
        spec: DeploySpec,
    },
    /// A rollback that swaps `<name>-previous` back in.
    Swap {
        /// The step plan.
        plan: SwapPlan,
        /// The sticker to write after success.
        sticker: Option<String>,
        /// The health gate of the restored container.
        health: wharf_protocol::HealthSpec,
    },
}

impl Journal {
    /// Notes a cancel by core or the task's passed timeout (the first one seen); `true`
    /// when the plan must stop at this step boundary.
    fn check_stop(&mut self, ctx: &TaskContext, deadline: Option<tokio::time::Instant>) -> bool {
        if self.stop.is_some() {
            return false;
        }
        if ctx.is_cancelled() {
            self.stop = Some(StopReason::Cancelled);
        } else if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            self.stop = Some(StopReason::Timeout);
        }
        self.stop.is_some()
    }

    fn encode(&self) -> Vec<u8> {
        // A struct of strings, enums and integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let j: Journal = serde_json::from_slice(bytes)
            .map_err(|e| format!("the task's checkpoint is unreadable: {e}"))?;
        if j.version != JOURNAL_VERSION {
            return Err(format!(
                "the task's checkpoint has format version {}, this agent reads {JOURNAL_VERSION}",
                j.version
            ));
        }
        Ok(j)
    }
}

/// The step a checkpoint written by this executor was taken at (kebab-case, as in
/// progress lines), or `None` if the bytes are not such a checkpoint. For logs and tests.
pub fn checkpoint_step(checkpoint: &[u8]) -> Option<String> {
    let journal = Journal::decode(checkpoint).ok()?;
    match journal.op {
        Operation::Deploy { plan, .. } => plan.in_progress().map(|s| s.as_str().to_owned()),
        Operation::Swap { plan, .. } => plan.in_progress().map(|s| s.as_str().to_owned()),
    }
}

/// A failed result for `task`.
fn failed(
    task: &AgentTask,
    started_at: Timestamp,
    kind: ErrorType,
    msg: impl Into<String>,
) -> TaskResult {
    TaskResult::failure(task.id, task.attempt, started_at, kind, msg)
}

impl<D: DockerApi> Executor for DockerExecutor<D> {
    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![capability::DOCKER.to_owned()];
        caps.extend(crate::runtime::hooks::hook_capabilities(
            self.hooks.as_deref(),
        ));
        caps
    }

    async fn execute(&self, task: AgentTask, ctx: TaskContext) -> TaskResult {
        let started_at = Timestamp::now();
        if let Err(e) = wharf_sticker::check_target_name(&task.target) {
            return failed(&task, started_at, ErrorType::InvalidInput, e.to_string());
        }
        match &task.payload {
            TaskPayload::Deploy(spec) => self.deploy(&task, spec, &ctx, started_at).await,
            TaskPayload::Rollback(spec) => self.rollback(&task, spec, &ctx, started_at).await,
            TaskPayload::HealthCheck(spec) => {
                self.health_check(&task, &spec.health, &ctx, started_at)
                    .await
            }
            TaskPayload::Inspect => self.inspect(&task, started_at).await,
            TaskPayload::ReadSticker => self.read_sticker(&task, started_at),
            TaskPayload::WriteSticker(spec) => self.write_sticker(&task, &spec.sticker, started_at),
            TaskPayload::ComposeDeploy(_) | TaskPayload::ComposeRollback(_) => failed(
                &task,
                started_at,
                ErrorType::Unsupported,
                format!(
                    "this is the Docker agent; {} tasks go to a Compose agent \
                     (wharf-agent-compose)",
                    task.kind()
                ),
            ),
        }
    }

    async fn resume(
        &self,
        task: AgentTask,
        checkpoint: Option<Vec<u8>>,
        ctx: TaskContext,
    ) -> TaskResult {
        let now = Timestamp::now();
        let Some(bytes) = checkpoint else {
            return never_started(&task);
        };
        let journal = match Journal::decode(&bytes) {
            Ok(j) => j,
            Err(e) => {
                return failed(
                    &task,
                    now,
                    ErrorType::Internal,
                    format!("{e}; inspect the target (`wharf inspect`) before retrying"),
                )
            }
        };
        ctx.progress(
            "resume",
            "the agent restarted during this task; finishing it",
        );
        match journal.op {
            Operation::Deploy { .. } => self.resume_deploy(&task, journal, &ctx).await,
            Operation::Swap { .. } => self.resume_swap(&task, journal, &ctx).await,
        }
    }
}
