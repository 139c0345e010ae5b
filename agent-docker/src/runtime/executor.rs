//! The boundary between the agent runtime and an executor (Docker here, Compose later).
//!
//! The runtime owns the session with core, the journal, the per-target lock, expiry and
//! de-duplication. It hands each task to an [`Executor`] together with a [`TaskContext`]:
//! the opened registry credentials (in memory only), a durable checkpoint sink, a progress
//! sink and the cancel signal. The executor journals its own step state through
//! [`TaskContext::checkpoint`] *before* taking each step; after a crash of the agent the
//! runtime calls [`Executor::resume`] with the last checkpoint, and the executor finishes
//! the task (forward or restore) from there.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{AgentTask, ErrorType, ImageRef, TaskResult, Timestamp};

/// The registry host Docker uses for a reference without one.
pub const DOCKER_HUB: &str = "docker.io";

/// A registry host as Docker compares it: without scheme or path, Docker Hub's aliases
/// folded into [`DOCKER_HUB`].
fn normalize_registry(host: &str) -> &str {
    let host = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        other => other.split('/').next().unwrap_or(other),
    }
}

/// Why a checkpoint could not be made durable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("journal write failed: {0}")]
pub struct CheckpointError(pub String);

/// Where checkpoints go: the runtime's journal (sled) in the agent, a vector in unit tests.
pub trait CheckpointSink: Send + Sync + 'static {
    /// Stores `state` as the latest checkpoint of the running task; resolves only once it
    /// is durable.
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>>;
}

/// One progress line of a running task (`Progress {step, line}` on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressLine {
    /// The step name (kebab-case, e.g. `pull`, `wait-healthy`).
    pub step: String,
    /// A human-readable line.
    pub line: String,
}

/// What an executor gets with a task besides the task itself.
pub struct TaskContext {
    credentials: Option<RegistryCredentials>,
    checkpoints: Arc<dyn CheckpointSink>,
    progress: Option<mpsc::UnboundedSender<ProgressLine>>,
    cancel: watch::Receiver<bool>,
}

impl TaskContext {
    /// A context over the given parts. `cancel` turns `true` when core cancels the task.
    pub fn new(
        credentials: Option<RegistryCredentials>,
        checkpoints: Arc<dyn CheckpointSink>,
        progress: Option<mpsc::UnboundedSender<ProgressLine>>,
        cancel: watch::Receiver<bool>,
    ) -> Self {
        TaskContext {
            credentials,
            checkpoints,
            progress,
            cancel,
        }
    }

    /// The registry credentials core sealed to this agent, opened in memory. `None` when
    /// the task carried none, and always on [`Executor::resume`] (they are never journaled).
    pub fn credentials(&self) -> Option<&RegistryCredentials> {
        self.credentials.as_ref()
    }

    /// The task's credentials if they are for `image`'s registry (never sent elsewhere).
    pub fn credentials_for(&self, image: &ImageRef) -> Option<&RegistryCredentials> {
        let wanted = normalize_registry(image.registry().unwrap_or(DOCKER_HUB));
        self.credentials()
            .filter(|c| normalize_registry(&c.registry) == wanted)
    }

    /// Makes `state` the task's durable checkpoint. Call it before taking a step.
    ///
    /// # Errors
    ///
    /// [`CheckpointError`] when the journal cannot be written: the executor must not take
    /// the step.
    pub async fn checkpoint(&self, state: Vec<u8>) -> Result<(), CheckpointError> {
        self.checkpoints.write(state).await
    }

    /// Sends a progress line to core (best effort; dropped when nobody listens).
    pub fn progress(&self, step: &str, line: impl Into<String>) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(ProgressLine {
                step: step.to_owned(),
                line: line.into(),
            });
        }
    }

    /// Whether core asked to cancel the task.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }

    /// Resolves when core asks to cancel the task (never, if it does not).
    pub fn cancelled(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.cancel.clone();
        async move {
            if rx.wait_for(|c| *c).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Runs tasks of the kinds it announces. Implemented by the Docker executor
/// ([`crate::docker`]) and, later, the Compose executor.
pub trait Executor: Send + Sync + 'static {
    /// Capabilities announced in `Hello` (see `wharf_protocol::capability`).
    fn capabilities(&self) -> Vec<String>;

    /// Runs `task` to its end and returns its result (`task_id` and `attempt` set from the
    /// task). Never panics on task input; an unsupported kind is a failed result.
    fn execute(&self, task: AgentTask, ctx: TaskContext)
        -> impl Future<Output = TaskResult> + Send;

    /// Finishes `task`, which was running when the agent died. `checkpoint` is the last
    /// state it wrote through [`TaskContext::checkpoint`] (`None`: it wrote none, so
    /// nothing was changed). The result must tell what truly runs now.
    fn resume(
        &self,
        task: AgentTask,
        checkpoint: Option<Vec<u8>>,
        ctx: TaskContext,
    ) -> impl Future<Output = TaskResult> + Send;
}

/// The result of a task the agent journaled but never started a step of before it died
/// (its [`Executor::resume`] got no checkpoint): nothing changed, so it fails retriable and
/// core may send it again.
pub fn never_started(task: &AgentTask) -> TaskResult {
    let mut result = TaskResult::failure(
        task.id,
        task.attempt,
        Timestamp::now(),
        ErrorType::Internal,
        "the agent restarted before the task took its first step; nothing was changed; \
         retry the task",
    );
    result.retriable = true;
    result
}
