//! The engine's data: what a submit asks for, what is stored per task, and what the
//! API shows (design §7's task shape).

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_protocol::{
    ComposeDeploySpec, DurationMs, ImageRef, Priority, TaskKind, TaskPayload, TaskResult, Timestamp,
};

use crate::queue::{self, TaskRecord, TaskState};

/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 200;
/// Largest encoded payload accepted (a Compose lock with its files included).
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// Default time an agent has for a task.
pub const DEFAULT_TASK_TIMEOUT: DurationMs = DurationMs::from_mins(10);
/// Default number of attempts (1 + retries of `retriable` failures).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Most attempts a submit may ask for.
pub const MAX_ATTEMPTS_LIMIT: u32 = 10;

/// A task as submitted through the operator API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitRequest {
    /// The agent's name.
    pub agent: String,
    /// The container name (Docker) or Compose project.
    pub target: String,
    /// What to do.
    pub payload: TaskPayload,
    /// Ordering across targets of the agent.
    #[serde(default)]
    pub priority: Priority,
    /// Makes the submit idempotent for this requester.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The task must not start after this instant.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// The task must not start later than this long after submission (alternative to
    /// `expires_at`; the earlier of both wins).
    #[serde(default)]
    pub expires_in: Option<DurationMs>,
    /// Time the agent has for the task ([`DEFAULT_TASK_TIMEOUT`] unless given).
    #[serde(default)]
    pub timeout: Option<DurationMs>,
    /// Attempts for `retriable` failures ([`DEFAULT_MAX_ATTEMPTS`] unless given).
    #[serde(default)]
    pub max_attempts: Option<u32>,
}

/// The detail of a submit's `task.submit` audit entry: where, what and how, never the
/// payload's environment, hooks or anything else that may hold a secret.
pub fn submit_audit_detail(request: &SubmitRequest) -> serde_json::Value {
    let image = match &request.payload {
        TaskPayload::Deploy(spec) => Some(spec.image.clone()),
        _ => None,
    };
    serde_json::json!({
        "agent": request.agent,
        "target": request.target,
        "kind": request.payload.kind(),
        "image": image,
        "priority": request.priority,
        "idempotency_key": request.idempotency_key,
    })
}

/// A submit that the engine refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidSubmit {
    /// A field is wrong; the message names it and what is expected.
    #[error("{field}: {reason}")]
    Field {
        /// The field path, e.g. `payload.deploy.image`.
        field: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

impl InvalidSubmit {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidSubmit::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks a submit without any state: names, pinned images, sizes. The agent's
/// existence is checked by the engine.
pub fn validate(req: &SubmitRequest) -> Result<(), InvalidSubmit> {
    if req.agent.is_empty() {
        return Err(InvalidSubmit::field("agent", "an agent name is required"));
    }
    let kind = req.payload.kind();
    if kind.is_compose() {
        wharf_sticker::check_project_name(&req.target)
            .map_err(|e| InvalidSubmit::field("target", e.to_string()))?;
    } else {
        wharf_sticker::check_target_name(&req.target)
            .map_err(|e| InvalidSubmit::field("target", e.to_string()))?;
    }
    if let Some(key) = &req.idempotency_key {
        if key.is_empty()
            || key.len() > MAX_IDEMPOTENCY_KEY_LEN
            || key.chars().any(char::is_control)
        {
            return Err(InvalidSubmit::field(
                "idempotency_key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} printable characters"),
            ));
        }
    }
    if let Some(n) = req.max_attempts {
        if n == 0 || n > MAX_ATTEMPTS_LIMIT {
            return Err(InvalidSubmit::field(
                "max_attempts",
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
    }
    if req.timeout.is_some_and(|t| t.as_millis() == 0) {
        return Err(InvalidSubmit::field("timeout", "must be more than zero"));
    }
    match &req.payload {
        TaskPayload::Deploy(spec) => {
            ImageRef::parse(&spec.image)
                .map_err(|e| InvalidSubmit::field("payload.deploy.image", e.to_string()))?;
            check_hooks(
                "payload.deploy",
                spec.pre_hook.as_ref(),
                spec.post_hook.as_ref(),
            )?;
            if spec.sticker.is_some() {
                return Err(InvalidSubmit::field(
                    "payload.deploy.sticker",
                    "the sticker is signed by core; leave it empty",
                ));
            }
        }
        TaskPayload::Rollback(spec) => {
            spec.to_digest()
                .map_err(|e| InvalidSubmit::field("payload.rollback.to", e.to_string()))?;
            if spec.sticker.is_some() {
                return Err(InvalidSubmit::field(
                    "payload.rollback.sticker",
                    "the sticker is signed by core; leave it empty",
                ));
            }
        }
        TaskPayload::ComposeDeploy(spec) => validate_compose(req, spec)?,
        TaskPayload::ComposeRollback(spec) => {
            if spec.project != req.target {
                return Err(InvalidSubmit::field(
                    "payload.compose_rollback.project",
                    "must equal the task's target",
                ));
            }
        }
        TaskPayload::WriteSticker(spec) => {
            if spec.sticker.len() > wharf_sticker::MAX_STICKER_BYTES {
                return Err(InvalidSubmit::field(
                    "payload.write_sticker.sticker",
                    "sticker too large",
                ));
            }
        }
        TaskPayload::HealthCheck(_) | TaskPayload::Inspect | TaskPayload::ReadSticker => {}
    }
    let size = postcard::experimental::serialized_size(&req.payload).unwrap_or(usize::MAX);
    if size > MAX_PAYLOAD_BYTES {
        return Err(InvalidSubmit::field(
            "payload",
            format!("{size} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit"),
        ));
    }
    Ok(())
}

fn validate_compose(req: &SubmitRequest, spec: &ComposeDeploySpec) -> Result<(), InvalidSubmit> {
    if spec.project != req.target {
        return Err(InvalidSubmit::field(
            "payload.compose_deploy.project",
            "must equal the task's target",
        ));
    }
    if spec.expected_digests.is_empty() {
        return Err(InvalidSubmit::field(
            "payload.compose_deploy.expected_digests",
            "the expected digest of every service is required",
        ));
    }
    for (service, digest) in &spec.expected_digests {
        wharf_protocol::Digest::parse(digest).map_err(|e| {
            InvalidSubmit::field(
                format!("payload.compose_deploy.expected_digests.{service}"),
                e.to_string(),
            )
        })?;
    }
    compose_images(spec)
        .map_err(|e| InvalidSubmit::field("payload.compose_deploy.lock", e.to_string()))?;
    if spec.sticker.is_some() {
        return Err(InvalidSubmit::field(
            "payload.compose_deploy.sticker",
            "the sticker is signed by core; leave it empty",
        ));
    }
    check_hooks(
        "payload.compose_deploy",
        spec.pre_hook.as_ref(),
        spec.post_hook.as_ref(),
    )
}

/// The pinned image of every service of a compose-deploy: its lock and extra Compose
/// files (`*.yml`/`*.yaml`) parsed and checked against the expected digests.
///
/// # Errors
///
/// The first [`wharf_protocol::compose::LockError`] (unpinned, `build:`, a digest other
/// than the expected one, not Compose YAML), naming the service.
pub fn compose_images(
    spec: &ComposeDeploySpec,
) -> Result<std::collections::BTreeMap<String, ImageRef>, wharf_protocol::compose::LockError> {
    use wharf_protocol::compose::{check_expected, is_compose_file_name, ComposeLock};
    let mut locks = vec![ComposeLock::parse("the lock", &spec.lock)?];
    for f in spec.files.iter().filter(|f| is_compose_file_name(&f.name)) {
        locks.push(ComposeLock::parse(&f.name, &f.content)?);
    }
    check_expected(&locks, &spec.expected_digests)
}

fn check_hooks(
    prefix: &str,
    pre: Option<&wharf_protocol::HookSpec>,
    post: Option<&wharf_protocol::HookSpec>,
) -> Result<(), InvalidSubmit> {
    for (name, hook) in [("pre_hook", pre), ("post_hook", post)] {
        if let Some(wharf_protocol::HookSource::Image(image)) = hook.map(|h| &h.source) {
            ImageRef::parse(image)
                .map_err(|e| InvalidSubmit::field(format!("{prefix}.{name}"), e.to_string()))?;
        }
    }
    Ok(())
}

/// The SHA-256 over what makes two submits "the same payload" for idempotency: agent,
/// target, priority, payload, expiry and limits (not the idempotency key itself).
pub fn payload_hash(req: &SubmitRequest) -> [u8; 32] {
    let mut hashed = req.clone();
    hashed.idempotency_key = None;
    let bytes = postcard::to_stdvec(&hashed).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Maps the wire priority onto the queue's.
pub fn queue_priority(p: Priority) -> queue::Priority {
    match p {
        Priority::Low => queue::Priority::Low,
        Priority::Normal => queue::Priority::Normal,
        Priority::High => queue::Priority::High,
    }
}

/// Everything core keeps about one task, stored under its id in the tasks table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredTask {
    /// The queue's record (state machine fields).
    pub record: TaskRecord,
    /// What the agent is asked to do (with the signed sticker, for deploys).
    pub payload: TaskPayload,
    /// Priority as submitted.
    pub priority: Priority,
    /// The instant the task must not start after.
    pub expires_at: Option<Timestamp>,
    /// Time the agent has for the task.
    pub timeout: DurationMs,
    /// The agent's full result, once one was accepted.
    pub result: Option<TaskResult>,
}

/// A [`StoredTask`] by reference, to write a task without copying it first: it encodes
/// to exactly the bytes of the owned form (serde encodes `&T` as `T`; the field order
/// is the same, checked by a test).
#[derive(Debug, Serialize)]
pub(crate) struct StoredTaskRef<'a> {
    pub record: &'a TaskRecord,
    pub payload: &'a TaskPayload,
    pub priority: &'a Priority,
    pub expires_at: &'a Option<Timestamp>,
    pub timeout: &'a DurationMs,
    pub result: &'a Option<TaskResult>,
}

/// A task as the API and the CLI show it (design §7).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub id: Uuid,
    /// Task kind (`deploy`, `rollback`, ...).
    pub kind: TaskKind,
    /// State (`queued`, `dispatched`, `running`, `succeeded`, `failed`, `expired`,
    /// `cancelled`).
    pub state: TaskState,
    /// Agent name.
    pub agent: String,
    /// Target container or project.
    pub target: String,
    /// The requester's idempotency key.
    pub idempotency_key: Option<String>,
    /// Current attempt (1-based).
    pub attempt: u32,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Who submitted it.
    pub requested_by: String,
    /// Priority.
    pub priority: Priority,
    /// Latest start.
    pub expires_at: Option<Timestamp>,
    /// Whether a cancel was requested while it ran.
    pub cancel_requested: bool,
    /// Why it failed when core decided it (expired, agent never reported) rather than
    /// the agent.
    pub error: Option<String>,
    /// The agent's result, if any.
    pub result: Option<TaskResult>,
}

impl TaskView {
    /// Builds the view of a stored task.
    pub fn of(task: &StoredTask) -> Self {
        let r = &task.record;
        let core_error = match (&task.result, &r.last_result) {
            (None, Some(recorded)) => recorded.summary.error.clone(),
            _ => None,
        }
        .or_else(|| {
            (r.state == TaskState::Expired).then(|| "the task expired before it started".into())
        });
        TaskView {
            id: r.id,
            kind: task.payload.kind(),
            state: r.state,
            agent: r.agent.as_str().to_string(),
            target: r.target.clone(),
            idempotency_key: r.idempotency_key.clone(),
            attempt: r.attempt,
            created_at: ms_to_ts(r.created_at),
            updated_at: ms_to_ts(r.updated_at),
            requested_by: r.requester.clone(),
            priority: task.priority,
            expires_at: task.expires_at,
            cancel_requested: r.cancel_requested,
            error: core_error,
            result: task.result.clone(),
        }
    }
}

/// Queue milliseconds to a wire timestamp.
pub fn ms_to_ts(ms: u64) -> Timestamp {
    Timestamp::from_millis(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// A wire timestamp to queue milliseconds (times before 1970 clamp to 0).
pub fn ts_to_ms(ts: Timestamp) -> u64 {
    u64::try_from(ts.as_millis()).unwrap_or(0)
}

/// A change the API streams to watchers of a task (`/v1/tasks/{id}/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEvent {
    /// The task's state changed.
    State {
        /// Task id.
        task_id: Uuid,
        /// New state.
        state: TaskState,
    },
    /// A step or log line from the agent.
    Progress {
        /// Task id.
        task_id: Uuid,
        /// Step name.
        step: String,
        /// The line.
        line: String,
    },
}

impl TaskEvent {
    /// The task the event belongs to.
    pub fn task_id(&self) -> Uuid {
        match self {
            TaskEvent::State { task_id, .. } | TaskEvent::Progress { task_id, .. } => *task_id,
        }
    }
}
