//! The messages of `wharf/1` (design §2).
//!
//! On QUIC every stream carries [`Message`]s in frames (see [`crate::frame`]):
//!
//! - control stream (first bi stream, opened by the agent): [`Hello`] → [`Welcome`] or
//!   [`Reject`], then [`Heartbeat`]s every [`Welcome::heartbeat_interval`];
//! - task streams (one bi stream per task, opened by core): `Assign(AgentTask)` → agent
//!   [`Accepted`] → [`Progress`]* → `Result(TaskResult)` → core [`ResultAck`].
//!
//! The HTTPS polling transport carries one [`PollRequest`] / [`PollResponse`] per HTTP body,
//! postcard-encoded without a length prefix ([`crate::frame::to_body`] /
//! [`crate::frame::from_body`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::task::{AgentTask, TaskResult};
use crate::time::DurationMs;
use crate::DEFAULT_MAX_FRAME;

/// Well-known capability names an agent announces in [`Hello::capabilities`].
/// Capabilities are open strings so that a newer agent's additions still decode.
pub mod capability {
    /// Runs Docker container tasks (`deploy`, `rollback`, `inspect`, ...).
    pub const DOCKER: &str = "docker";
    /// Runs Compose tasks (`compose-deploy`, `compose-rollback`).
    pub const COMPOSE: &str = "compose";
    /// Runs container hooks.
    pub const HOOKS: &str = "hooks";
    /// Started with `--allow-host-hooks`: runs host-command hooks.
    pub const HOST_HOOKS: &str = "host-hooks";
    /// Can unseal registry credentials (has an X25519 key).
    pub const SEALED_CREDENTIALS: &str = "sealed-credentials";
}

/// Every message that travels in a frame on a QUIC stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[serde(rename_all = "kebab-case")]
// `Assign` is much larger than the rest; messages are short-lived values moved a few times,
// so boxing it would cost more in ergonomics than it saves.
#[allow(clippy::large_enum_variant)]
pub enum Message {
    /// Agent → core, first message on the control stream.
    Hello(Hello),
    /// Core → agent: the session is accepted.
    Welcome(Welcome),
    /// Core → agent: the session is refused; the stream and connection close after it.
    Reject(Reject),
    /// Agent → core on the control stream, every heartbeat interval.
    Heartbeat(Heartbeat),
    /// Core → agent, first message on a task stream.
    Assign(AgentTask),
    /// Agent → core: the task is journaled and will run (or has run).
    Accepted(Accepted),
    /// Agent → core: a step or log line of a running task.
    Progress(Progress),
    /// Agent → core: the task's outcome.
    Result(TaskResult),
    /// Core → agent: the result is durable in core; the agent may drop it from its journal.
    ResultAck(ResultAck),
    /// Core → agent on the task's stream: abort the task at the next safe step and
    /// restore the previous state (or drop it if it has not started).
    Cancel(Cancel),
}

impl Message {
    /// The kebab-case name of the variant (`hello`, `result-ack`, ...), for logs and metrics.
    pub const fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Welcome(_) => "welcome",
            Message::Reject(_) => "reject",
            Message::Heartbeat(_) => "heartbeat",
            Message::Assign(_) => "assign",
            Message::Accepted(_) => "accepted",
            Message::Progress(_) => "progress",
            Message::Result(_) => "result",
            Message::ResultAck(_) => "result-ack",
            Message::Cancel(_) => "cancel",
        }
    }
}

/// Opens a session (agent → core).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Hello {
    /// The agent's semver version (e.g. `0.3.1`).
    pub agent_version: String,
    /// The protocol version the agent speaks ([`crate::PROTOCOL_VERSION`]).
    pub protocol_version: u16,
    /// What the agent can do; see [`capability`].
    pub capabilities: Vec<String>,
    /// Results not yet acknowledged by core, re-sent from the agent journal.
    pub pending_results: Vec<TaskResult>,
}

/// Accepts a session (core → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Welcome {
    /// Core's semver version.
    pub core_version: String,
    /// How often the agent sends [`Heartbeat`]; core marks it offline after 3 missed.
    pub heartbeat_interval: DurationMs,
    /// Limits the agent must respect.
    pub limits: Limits,
}

/// Limits core announces in [`Welcome`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Limits {
    /// Largest frame body either side may send, in bytes.
    pub max_frame_len: u32,
    /// Most tasks the agent should run at once (on different targets).
    pub max_concurrent_tasks: u32,
    /// Most lines the agent should put in [`TaskResult::logs`].
    pub max_log_lines: u32,
    /// Longest time core holds a poll request open before answering empty.
    pub long_poll: DurationMs,
}

impl Default for Limits {
    /// 16 MiB frames, 4 concurrent tasks, 200 log lines, 25 s long poll.
    fn default() -> Self {
        Limits {
            max_frame_len: DEFAULT_MAX_FRAME,
            max_concurrent_tasks: 4,
            max_log_lines: 200,
            long_poll: DurationMs::from_secs(25),
        }
    }
}

/// Refuses a session (core → agent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Reject {
    /// Why, e.g. `upgrade required` (see [`crate::version::negotiate`]).
    pub reason: String,
}

/// Liveness and load report (agent → core).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Heartbeat {
    /// Ids of the tasks the agent is running now.
    pub running_tasks: Vec<Uuid>,
    /// Host load.
    pub load: Load,
}

/// Host load figures, as integers so that they compare exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Load {
    /// One-minute load average × 1000.
    pub load1_milli: u32,
    /// Number of CPUs.
    pub cpus: u32,
    /// Total memory in bytes.
    pub mem_total_bytes: u64,
    /// Available memory in bytes.
    pub mem_available_bytes: u64,
}

/// The agent has journaled the task (agent → core).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Accepted {
    /// The task.
    pub task_id: Uuid,
    /// The attempt accepted ([`crate::AgentTask::attempt`]); the agent journals each
    /// `(task_id, attempt)` once.
    pub attempt: u32,
}

/// A step or log line of a running task (agent → core).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Progress {
    /// The task.
    pub task_id: Uuid,
    /// The step (`pull`, `pre-hook`, `stop`, `create`, `start`, `health`, ...).
    pub step: String,
    /// A human-readable line.
    pub line: String,
}

/// Core has stored a result durably (core → agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct ResultAck {
    /// The task whose result was stored.
    pub task_id: Uuid,
    /// The attempt the stored result was for.
    pub attempt: u32,
}

/// Abort a task (core → agent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Cancel {
    /// The task to abort.
    pub task_id: Uuid,
}

/// Body of `POST /agent/v1/poll` (agent → core).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PollRequest {
    /// The agent's heartbeat.
    pub heartbeat: Heartbeat,
    /// Results to report (new, or not yet acknowledged).
    pub results: Vec<TaskResult>,
    /// Progress since the last poll.
    pub progress: Vec<Progress>,
    /// Tasks of earlier answers the agent has journaled since its last poll (the polling
    /// form of [`Accepted`]): core moves them `dispatched → running` and stops re-sending
    /// them. Last field, so that it is the newest addition to the body.
    pub accepted: Vec<Accepted>,
}

/// Answer to a [`PollRequest`] (core → agent).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct PollResponse {
    /// Tasks assigned to the agent (re-sent while unacknowledged, like `Assign`).
    pub tasks: Vec<AgentTask>,
    /// Results core stored durably (like `ResultAck`).
    pub acked_results: Vec<ResultAck>,
    /// Tasks to abort (like `Cancel`).
    pub cancels: Vec<Uuid>,
    /// When to poll again.
    pub next_poll_after: DurationMs,
}
