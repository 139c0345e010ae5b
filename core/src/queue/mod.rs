//! The task queue: a pure state machine (design.md §3, "Task states").
//!
//! [`Queue`] holds every task's [`TaskRecord`] and the indexes derived from them. It does
//! no IO, reads no clock and spawns nothing: the shell (the async part of core) feeds it
//! events, each stamped with `now` (unix milliseconds), and gets back an [`Outcome`]:
//!
//! - [`Outcome::changed`]: the tasks whose records changed. The shell writes exactly these
//!   records (from [`Queue::get`]) in **one durable batch** and only after that commit
//!   resolves does it
//! - perform [`Outcome::effects`]: send an `Assign` ([`Effect::Dispatch`]), a cancel
//!   ([`Effect::SendCancel`]), a `ResultAck` ([`Effect::AckResult`]), wake API waiters
//!   ([`Effect::Notify`]), and answer the API call that caused it.
//!
//! After a core restart, [`Queue::restore`] rebuilds the same queue from the persisted
//! records alone: every index is derived from the records, and a restored queue gives the
//! same outcomes for the same next events as the original would (see the property tests).
//! Agents are not connected after a restore; the shell reports them as they come back.
//!
//! # States
//!
//! ```text
//! submit                 ───────────► queued
//! queued                 ─dispatch──► dispatched   (agent connected, target and slot free)
//! dispatched             ─Accepted──► running
//! dispatched | running   ─result────► succeeded | failed
//!                                     | queued     (retriable failure: retry, attempt + 1)
//!                                     | cancelled  (failure after a cancel request)
//! queued | dispatched    ─expires_at► expired
//! queued | dispatched    ─cancel────► cancelled
//! running                ─cancel────► running, cancel_requested (the result decides)
//! running                ─deadline──► failed
//! ```
//!
//! `succeeded`, `failed`, `expired` and `cancelled` are terminal: a terminal record never
//! changes again.
//!
//! # Rules
//!
//! - **Idempotency.** `(requester, idempotency_key)` names one task for as long as the task
//!   is kept (see [`Queue::evict_finished`]): the same key with the same payload hash gives
//!   [`Submission::Existing`] (HTTP 200), with another payload hash
//!   [`Submission::Conflict`] (409) and no change; a new key or no key gives
//!   [`Submission::Created`] (201). The payload hash is the caller's: it should cover
//!   everything that defines the task (kind, agent, target, payload).
//! - **One at a time per target.** At most one task per `(agent, target)` is `dispatched`
//!   or `running`; the others wait in submission order (by [`TaskRecord::seq`], whatever
//!   their priority). A task waiting for its retry backoff keeps its place at the head of
//!   its target: the tasks behind it wait for it.
//! - **Priority across targets.** Each agent runs at most
//!   [`Config::max_in_flight_per_agent`] tasks at once; free slots go to the heads of its
//!   targets in (priority high first, then submission order).
//! - **Connected agents only.** Tasks are dispatched only to agents reported connected
//!   ([`Queue::agent_connected`]). Every (re)connection re-sends the tasks still
//!   `dispatched` to that agent (same attempt): an `Assign` sent on an earlier session may
//!   have been lost. A disconnection clears their leases.
//! - **Dispatch lease.** A dispatched task not `Accepted` within [`Config::lease`] is re-sent
//!   (same task id, same attempt); the agent's journal answers a re-sent `(id, attempt)`
//!   without running it twice. A dispatched task has no deadline of its own: it is re-sent
//!   until it is accepted, reported, cancelled or expired.
//! - **Expiry.** A task not started by its `expires_at` (still `queued`, or `dispatched` but
//!   not accepted) becomes `expired` ([`Queue::tick`] does it, with a [`Effect::SendCancel`]
//!   if it had been dispatched). Nothing is dispatched or re-sent at or after `expires_at`,
//!   and no retry is scheduled for a time at or after it. A `running` task does not expire.
//! - **Results.** The first result for the task's current attempt decides (see
//!   [`Queue::result`]); repeats are acknowledged and change nothing.
//! - **Deadline.** A `running` task that has not reported by
//!   `accepted_at + timeout + `[`Config::deadline_grace`] becomes `failed` with the error
//!   "agent did not report within …" (not retried). A result arriving before the tick that
//!   enforces the deadline still counts.
//!
//! # Time
//!
//! `now` values are unix milliseconds from the caller. Time never goes backwards inside the
//! queue: a `now` older than the newest one seen is taken as the newest one. Only
//! [`Queue::tick`] acts on elapsed time (leases, backoffs, expiries, deadlines); the shell
//! calls it when [`Queue::next_wakeup`] says so. Event methods use `now` for timestamps and
//! their own dispatch decisions, and never dispatch at or after a task's `expires_at`.

use std::borrow::Borrow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

/// A task's id: chosen by the caller (a random v4 UUID in the shell), the queue never
/// makes one up.
pub type TaskId = uuid::Uuid;

/// An agent's id, as in its certificate's SAN URI `wharf://agent/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AgentId(pub String);

impl AgentId {
    /// Wraps an agent id.
    pub fn new(id: impl Into<String>) -> Self {
        AgentId(id.into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for AgentId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for AgentId {
    fn from(id: &str) -> Self {
        AgentId(id.to_owned())
    }
}

impl From<String> for AgentId {
    fn from(id: String) -> Self {
        AgentId(id)
    }
}

/// A task's priority. It orders tasks across the targets of one agent, never within a
/// target (a target's tasks run in submission order).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Dispatched after `normal` and `high` heads of the same agent.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Dispatched before `normal` and `low` heads of the same agent.
    High,
}

/// A task's state (design.md §3). The `snake_case` names are the API's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting: for its turn on its target, a free slot on its agent, the agent to
    /// connect, or its retry backoff ([`TaskRecord::not_before`]).
    Queued,
    /// `Assign` sent (or being re-sent) to the agent, not yet `Accepted`.
    Dispatched,
    /// The agent accepted it and is running it.
    Running,
    /// Terminal: the agent reported success.
    Succeeded,
    /// Terminal: the agent reported a failure that is not retried, the attempts ran out,
    /// or the agent did not report before the deadline.
    Failed,
    /// Terminal: not started by its `expires_at`.
    Expired,
    /// Terminal: cancelled before it started, or cancelled while running and the agent
    /// reported the abort.
    Cancelled,
}

impl TaskState {
    /// Every state, in declaration order.
    pub const ALL: [TaskState; 7] = [
        TaskState::Queued,
        TaskState::Dispatched,
        TaskState::Running,
        TaskState::Succeeded,
        TaskState::Failed,
        TaskState::Expired,
        TaskState::Cancelled,
    ];

    /// Whether the state is final: `succeeded`, `failed`, `expired` or `cancelled`.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Succeeded | TaskState::Failed | TaskState::Expired | TaskState::Cancelled
        )
    }

    /// Whether the task holds its target and a slot of its agent: `dispatched` or `running`.
    pub fn is_in_flight(self) -> bool {
        matches!(self, TaskState::Dispatched | TaskState::Running)
    }

    /// The API name (`queued`, `dispatched`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Dispatched => "dispatched",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Expired => "expired",
            TaskState::Cancelled => "cancelled",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of parsing a [`TaskState`] from a string that names none.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown task state {0:?} (expected one of queued, dispatched, running, succeeded, failed, expired, cancelled)")]
pub struct ParseTaskStateError(pub String);

impl FromStr for TaskState {
    type Err = ParseTaskStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| ParseTaskStateError(s.to_owned()))
    }
}

/// What the queue needs from an agent's `TaskResult`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultSummary {
    /// `TaskResult.success`.
    pub success: bool,
    /// `TaskResult.retriable`: whether a failure may be retried.
    pub retriable: bool,
    /// `TaskResult.error`, if any.
    pub error: Option<String>,
}

impl ResultSummary {
    /// A successful result.
    pub fn ok() -> Self {
        ResultSummary {
            success: true,
            retriable: false,
            error: None,
        }
    }

    /// A failed result.
    pub fn failed(error: impl Into<String>, retriable: bool) -> Self {
        ResultSummary {
            success: false,
            retriable,
            error: Some(error.into()),
        }
    }
}

/// The result that decided an attempt, as kept in the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedResult {
    /// The attempt it was reported for.
    pub attempt: u32,
    /// When the queue took it (unix ms). For a deadline failure, when the deadline hit.
    pub at: u64,
    /// What it said. A deadline failure is recorded as a non-retriable failure with the
    /// error "agent did not report within ...".
    pub summary: ResultSummary,
}

/// Everything the queue knows about one task: the unit of persistence. The shell stores
/// each changed record as a whole; [`Queue::restore`] needs nothing else. The payload
/// bytes are not here (the shell stores them beside, keyed by [`TaskRecord::id`]).
///
/// Times are unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    /// The task id (also the `AgentTask.id` on the wire).
    pub id: TaskId,
    /// The task kind (`deploy`, `rollback`, ...): an opaque label for listing, the queue
    /// does not interpret it.
    pub kind: String,
    /// Who submitted it (the API token's name); half of the idempotency scope.
    pub requester: String,
    /// The idempotency key given at submit, unique per requester.
    pub idempotency_key: Option<String>,
    /// The caller's hash of the submitted payload (SHA-256), compared on a repeated
    /// idempotency key.
    pub payload_hash: [u8; 32],
    /// The agent that runs it.
    pub agent: AgentId,
    /// The target on that agent (container name or Compose project).
    pub target: String,
    /// Its priority across the agent's targets.
    pub priority: Priority,
    /// Submission sequence number, unique and increasing: the FIFO order within a target.
    pub seq: u64,
    /// Its state.
    pub state: TaskState,
    /// The current attempt, from 1. Incremented by a retry; the agent journals results by
    /// `(id, attempt)`.
    pub attempt: u32,
    /// How many attempts a retriable failure may use in all (at least 1).
    pub max_attempts: u32,
    /// The task's own run timeout (`AgentTask.timeout`), in milliseconds; the deadline of
    /// a running task is `accepted_at + timeout_ms + Config::deadline_grace`.
    pub timeout_ms: u64,
    /// When it was submitted.
    pub created_at: u64,
    /// When its state, attempt or cancel request last changed (lease renewals do not
    /// count). For a terminal task: when it finished.
    pub updated_at: u64,
    /// It must have started (been accepted) before this time, or it expires.
    pub expires_at: Option<u64>,
    /// Retry backoff: the current attempt is not dispatched before this time.
    pub not_before: Option<u64>,
    /// When the current attempt was first dispatched (`AgentTask.assigned_at`).
    pub dispatched_at: Option<u64>,
    /// Dispatch lease: while `dispatched`, the `Assign` is re-sent at this time unless
    /// accepted. `None` while dispatched means "re-send as soon as the agent connects".
    pub lease_until: Option<u64>,
    /// When the agent accepted the current attempt.
    pub accepted_at: Option<u64>,
    /// A cancel was requested while it ran; the agent's result decides the final state.
    pub cancel_requested: bool,
    /// The result that decided the latest decided attempt.
    pub last_result: Option<RecordedResult>,
}

/// A task to submit. The shell computes `payload_hash` and stores the payload itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTask {
    /// The new task's id (a random v4 UUID from the shell). Ignored when the idempotency
    /// key names an existing task.
    pub id: TaskId,
    /// The task kind (opaque label).
    pub kind: String,
    /// Who submits it.
    pub requester: String,
    /// Optional idempotency key, unique per requester.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the payload (whatever defines the task).
    pub payload_hash: [u8; 32],
    /// The agent that runs it.
    pub agent: AgentId,
    /// The target on that agent.
    pub target: String,
    /// Priority across the agent's targets.
    pub priority: Priority,
    /// Attempts allowed for retriable failures; 0 is taken as 1.
    pub max_attempts: u32,
    /// The task's run timeout (also sent to the agent).
    pub timeout: Duration,
    /// It must start before this time (unix ms), or it expires.
    pub expires_at: Option<u64>,
}

/// What a submit did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Submission {
    /// A new task (HTTP 201).
    Created(TaskId),
    /// The idempotency key names this task and the payload hash matches (HTTP 200).
    Existing(TaskId),
    /// The idempotency key names this task but with another payload hash (HTTP 409).
    /// Nothing changed.
    Conflict(TaskId),
}

impl Submission {
    /// The task id (new or existing).
    pub fn id(self) -> TaskId {
        match self {
            Submission::Created(id) | Submission::Existing(id) | Submission::Conflict(id) => id,
        }
    }

    /// The HTTP status the API answers with: 201, 200 or 409.
    pub fn http_status(self) -> u16 {
        match self {
            Submission::Created(_) => 201,
            Submission::Existing(_) => 200,
            Submission::Conflict(_) => 409,
        }
    }
}

/// Something the shell must do, after it has durably stored the changed records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Send `Assign(AgentTask)` for the task's current `attempt` to the agent (a first
    /// send or a re-send: the agent dedups by `(task, attempt)`).
    Dispatch {
        /// The agent (connected when this is produced).
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The attempt to send.
        attempt: u32,
    },
    /// Tell the agent to abort the task (or drop it if not started). Best effort: if the
    /// agent is not connected the shell may drop it.
    SendCancel {
        /// The agent.
        agent: AgentId,
        /// The task.
        task: TaskId,
    },
    /// Send `ResultAck` for `(task, attempt)` so the agent drops the result from its journal.
    AckResult {
        /// The agent that reported.
        agent: AgentId,
        /// The task.
        task: TaskId,
        /// The attempt the result was for.
        attempt: u32,
    },
    /// The task reached `state`: wake API waiters and event streams.
    Notify {
        /// The task.
        task: TaskId,
        /// Its new state.
        state: TaskState,
    },
}

/// What an event did: persist `changed`, then perform `effects` in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Tasks whose records changed (each once, in the order of their first change). Store
    /// these records in one durable batch before performing any effect.
    pub changed: Vec<TaskId>,
    /// What to do once `changed` is durable.
    pub effects: Vec<Effect>,
}

impl Outcome {
    /// Whether nothing changed and there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.effects.is_empty()
    }

    /// Appends `other` (for a shell that batches several events into one commit);
    /// `changed` stays free of duplicates.
    pub fn merge(&mut self, other: Outcome) {
        let mut seen: HashSet<TaskId> = self.changed.iter().copied().collect();
        for id in other.changed {
            if seen.insert(id) {
                self.changed.push(id);
            }
        }
        self.effects.extend(other.effects);
    }

    /// The [`Effect::Dispatch`] effects, as `(agent, task, attempt)`.
    pub fn dispatches(&self) -> impl Iterator<Item = (&AgentId, TaskId, u32)> + '_ {
        self.effects.iter().filter_map(|effect| match effect {
            Effect::Dispatch {
                agent,
                task,
                attempt,
            } => Some((agent, *task, *attempt)),
            _ => None,
        })
    }
}

/// Queue settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// How many tasks one agent may have `dispatched` or `running` at once (default 4).
    /// 0 pauses dispatching.
    pub max_in_flight_per_agent: usize,
    /// The dispatch lease: how long a dispatched task waits for `Accepted` before it is
    /// re-sent (default 10 s; at least 1 ms is used).
    pub lease: Duration,
    /// Backoff before the retry of attempt 1 (default 2 s); doubled for each further
    /// attempt.
    pub retry_base: Duration,
    /// Cap on the retry backoff (default 60 s).
    pub retry_max: Duration,
    /// How long after its own timeout a running task may still report before it is
    /// failed (default 60 s).
    pub deadline_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_in_flight_per_agent: 4,
            lease: Duration::from_secs(10),
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(60),
            deadline_grace: Duration::from_secs(60),
        }
    }
}

/// A filter for [`Queue::list`]; the default lists everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only tasks in this state.
    pub state: Option<TaskState>,
    /// Only tasks of this agent.
    pub agent: Option<AgentId>,
    /// Only tasks for this target.
    pub target: Option<String>,
    /// Only tasks submitted after this sequence number (for paging).
    pub after_seq: Option<u64>,
    /// At most this many tasks.
    pub limit: Option<usize>,
}

/// Why the queue refused an event. A refused event changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// No task with this id (never submitted, or evicted).
    #[error("unknown task {0}")]
    UnknownTask(TaskId),
    /// The reporting agent is not the task's agent (no ack is due to it).
    #[error("task {task} does not belong to agent {agent}")]
    WrongAgent {
        /// The task.
        task: TaskId,
        /// The agent that reported.
        agent: AgentId,
    },
    /// The attempt is not the task's current one (an accept for an older attempt, or any
    /// event for an attempt the queue never dispatched).
    #[error("task {task}: attempt {attempt} is not current (current attempt {current})")]
    StaleAttempt {
        /// The task.
        task: TaskId,
        /// The attempt reported.
        attempt: u32,
        /// The task's current attempt.
        current: u32,
    },
    /// The task's current attempt has not been dispatched (it is queued).
    #[error("task {0} has not been dispatched")]
    NotDispatched(TaskId),
    /// The task is already finished (`state` is terminal).
    #[error("task {task} is already finished ({state})")]
    AlreadyFinished {
        /// The task.
        task: TaskId,
        /// Its terminal state.
        state: TaskState,
    },
    /// A submit (or a restored record) reuses an existing task id.
    #[error("task id {0} already exists")]
    DuplicateTaskId(TaskId),
    /// [`Queue::restore`] met records that cannot all be true.
    #[error("invalid task record {task}: {reason}")]
    InvalidRecord {
        /// The record's task id.
        task: TaskId,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a target's head task sits in its agent's dispatch indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// In `AgentState::ready` under this key.
    Ready(ReadyKey),
    /// In `AgentState::waiting` and `Queue::backoff` until this time.
    Waiting(u64),
}

/// Dispatch order of ready heads: priority high first, then submission order.
type ReadyKey = (Reverse<Priority>, u64, TaskId);

#[derive(Clone, Debug, Default)]
struct TargetState {
    /// Queued tasks by `(seq, id)`: the FIFO.
    queued: BTreeSet<(u64, TaskId)>,
    /// Dispatched or running tasks (at most one, unless restored records say otherwise).
    active: BTreeSet<TaskId>,
    /// The head of `queued` when `active` is empty, and where it is indexed.
    head: Option<(TaskId, Slot)>,
}

#[derive(Clone, Debug, Default)]
struct AgentState {
    connected: bool,
    targets: HashMap<String, TargetState>,
    /// Dispatched or running tasks of this agent.
    in_flight: BTreeSet<TaskId>,
    /// Heads of idle targets that may be dispatched now.
    ready: BTreeSet<ReadyKey>,
    /// Heads of idle targets waiting for their backoff, by `(not_before, id)`.
    waiting: BTreeSet<(u64, TaskId)>,
}

/// Collects the changes and effects of one event.
#[derive(Default)]
struct Tx {
    changed: Vec<TaskId>,
    /// Index of `changed`, built once it is too long to search.
    seen: HashSet<TaskId>,
    effects: Vec<Effect>,
}

impl Tx {
    const SCAN: usize = 16;

    fn change(&mut self, id: TaskId) {
        if self.changed.len() < Self::SCAN {
            if !self.changed.contains(&id) {
                self.changed.push(id);
            }
            return;
        }
        if self.seen.is_empty() {
            self.seen.extend(self.changed.iter().copied());
        }
        if self.seen.insert(id) {
            self.changed.push(id);
        }
    }

    fn finish(self) -> Outcome {
        Outcome {
            changed: self.changed,
            effects: self.effects,
        }
    }
}

/// [`Queue::refresh_target`] over split borrows: re-derives which task heads the target
/// and where it is indexed (ready now, or waiting for its backoff); drops empty target and
/// agent entries.
fn refresh_head(
    agents: &mut HashMap<AgentId, AgentState>,
    backoff: &mut BTreeSet<(u64, TaskId)>,
    tasks: &HashMap<TaskId, TaskRecord>,
    clock: u64,
    agent_id: &str,
    target_id: &str,
) {
    let Some(agent) = agents.get_mut(agent_id) else {
        return;
    };
    let Some(target) = agent.targets.get_mut(target_id) else {
        return;
    };
    let desired = match (target.active.is_empty(), target.queued.first()) {
        (true, Some(&(seq, head))) => {
            let record = &tasks[&head];
            Some(match record.not_before {
                Some(at) if at > clock => (head, Slot::Waiting(at)),
                _ => (head, Slot::Ready((Reverse(record.priority), seq, head))),
            })
        }
        _ => None,
    };
    if desired != target.head {
        match target.head {
            Some((_, Slot::Ready(key))) => {
                agent.ready.remove(&key);
            }
            Some((head, Slot::Waiting(at))) => {
                agent.waiting.remove(&(at, head));
                backoff.remove(&(at, head));
            }
            None => {}
        }
        match desired {
            Some((_, Slot::Ready(key))) => {
                agent.ready.insert(key);
            }
            Some((head, Slot::Waiting(at))) => {
                agent.waiting.insert((at, head));
                backoff.insert((at, head));
            }
            None => {}
        }
        target.head = desired;
    }
    if target.queued.is_empty() && target.active.is_empty() {
        agent.targets.remove(target_id);
    }
    if !agent.connected && agent.targets.is_empty() {
        agents.remove(agent_id);
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn fmt_millis(ms: u64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The task queue state machine. See the [module documentation](self) for the rules.
#[derive(Clone, Debug)]
pub struct Queue {
    config: Config,
    lease_ms: u64,
    retry_base_ms: u64,
    retry_max_ms: u64,
    grace_ms: u64,
    /// The newest `now` seen.
    clock: u64,
    next_seq: u64,
    tasks: HashMap<TaskId, TaskRecord>,
    by_seq: BTreeMap<u64, TaskId>,
    /// requester -> idempotency key -> task.
    keys: HashMap<String, HashMap<String, TaskId>>,
    agents: HashMap<AgentId, AgentState>,
    /// One entry per task with a pending time-driven change: `(time, id)`.
    timers: BTreeSet<(u64, TaskId)>,
    /// Mirror of every agent's `waiting` set, for `next_wakeup` and `tick`.
    backoff: BTreeSet<(u64, TaskId)>,
    /// Terminal tasks by `(updated_at, id)`, for eviction.
    finished: BTreeSet<(u64, TaskId)>,
    counts: [usize; 7],
}

impl Queue {
    /// An empty queue.
    pub fn new(config: Config) -> Self {
        Queue {
            lease_ms: millis(config.lease).max(1),
            retry_base_ms: millis(config.retry_base),
            retry_max_ms: millis(config.retry_max),
            grace_ms: millis(config.deadline_grace),
            config,
            clock: 0,
            next_seq: 1,
            tasks: HashMap::new(),
            by_seq: BTreeMap::new(),
            keys: HashMap::new(),
            agents: HashMap::new(),
            timers: BTreeSet::new(),
            backoff: BTreeSet::new(),
            finished: BTreeSet::new(),
            counts: [0; 7],
        }
    }

    /// Rebuilds the queue from persisted records (in any order). No agent is connected
    /// afterwards. Fails on records that cannot come from one queue: a repeated id,
    /// sequence number or `(requester, idempotency key)`.
    pub fn restore<I>(records: I, config: Config) -> Result<Self, QueueError>
    where
        I: IntoIterator<Item = TaskRecord>,
    {
        let mut queue = Queue::new(config);
        let mut pairs: BTreeSet<(AgentId, String)> = BTreeSet::new();
        for record in records {
            let id = record.id;
            if queue.tasks.contains_key(&id) {
                return Err(QueueError::DuplicateTaskId(id));
            }
            if queue.by_seq.contains_key(&record.seq) {
                return Err(QueueError::InvalidRecord {
                    task: id,
                    reason: format!("sequence number {} is used twice", record.seq),
                });
            }
            if let Some(key) = &record.idempotency_key {
                let keys = queue.keys.entry(record.requester.clone()).or_default();
                if keys.contains_key(key) {
                    return Err(QueueError::InvalidRecord {
                        task: id,
                        reason: format!(
                            "idempotency key {key:?} of requester {:?} is used twice",
                            record.requester
                        ),
                    });
                }
                keys.insert(key.clone(), id);
            }
            queue.clock = queue.clock.max(record.created_at).max(record.updated_at);
            queue.next_seq = queue.next_seq.max(record.seq.saturating_add(1));
            queue.by_seq.insert(record.seq, id);
            if !record.state.is_terminal() {
                pairs.insert((record.agent.clone(), record.target.clone()));
            }
            queue.tasks.insert(id, record);
            queue.link(id);
        }
        for (agent, target) in &pairs {
            queue.refresh_target(agent.as_str(), target);
        }
        Ok(queue)
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn observe(&mut self, now: u64) -> u64 {
        self.clock = self.clock.max(now);
        self.clock
    }

    // ---- events ---------------------------------------------------------------------

    /// Submits a task. See [`Submission`] for the idempotency answers; `Existing` and
    /// `Conflict` change nothing. A created task is dispatched at once if its agent is
    /// connected and has room; one submitted at or after its `expires_at` is created
    /// already `expired`.
    ///
    /// Errors: [`QueueError::DuplicateTaskId`] if `task.id` exists (and no idempotency key
    /// matched).
    pub fn submit(&mut self, task: NewTask, now: u64) -> Result<(Submission, Outcome), QueueError> {
        let now = self.observe(now);
        if let Some(key) = &task.idempotency_key {
            if let Some(&existing) = self
                .keys
                .get(&task.requester)
                .and_then(|keys| keys.get(key))
            {
                let same = self.tasks[&existing].payload_hash == task.payload_hash;
                let submission = if same {
                    Submission::Existing(existing)
                } else {
                    Submission::Conflict(existing)
                };
                return Ok((submission, Outcome::default()));
            }
        }
        if self.tasks.contains_key(&task.id) {
            return Err(QueueError::DuplicateTaskId(task.id));
        }
        let id = task.id;
        let seq = self.next_seq;
        self.next_seq += 1;
        let record = TaskRecord {
            id,
            kind: task.kind,
            requester: task.requester,
            idempotency_key: task.idempotency_key,
            payload_hash: task.payload_hash,
            agent: task.agent,
            target: task.target,
            priority: task.priority,
            seq,
            state: TaskState::Queued,
            attempt: 1,
            max_attempts: task.max_attempts.max(1),
            timeout_ms: millis(task.timeout),
            created_at: now,
            updated_at: now,
            expires_at: task.expires_at,
            not_before: None,
            dispatched_at: None,
            lease_until: None,
            accepted_at: None,
            cancel_requested: false,
            last_result: None,
        };
        if let Some(key) = &record.idempotency_key {
            self.keys
                .entry(record.requester.clone())
                .or_default()
                .insert(key.clone(), id);
        }
        let agent = record.agent.clone();
        self.by_seq.insert(seq, id);
        self.tasks.insert(id, record);
        self.link(id);
        self.refresh_target_of(id);

        let mut tx = Tx::default();
        tx.change(id);
        tx.effects.push(Effect::Notify {
            task: id,
            state: TaskState::Queued,
        });
        if task.expires_at.is_some_and(|at| at <= now) {
            self.expire(id, now, &mut tx);
        } else {
            self.dispatch_agent(agent.as_str(), now, &mut tx);
        }
        Ok((Submission::Created(id), tx.finish()))
    }

    /// The agent has a (new) session. Tasks still `dispatched` to it are re-sent (same
    /// attempt, fresh lease; an `Assign` of an earlier session may be lost), then its free
    /// slots are filled.
    pub fn agent_connected(&mut self, agent: &AgentId, now: u64) -> Outcome {
        let now = self.observe(now);
        let mut tx = Tx::default();
        let state = self.agents.entry(agent.clone()).or_default();
        state.connected = true;
        self.clear_leases(agent.as_str(), &mut tx);
        self.dispatch_agent(agent.as_str(), now, &mut tx);
        tx.finish()
    }

    /// The agent's session ended. Its `dispatched` tasks lose their lease, so that they are
    /// re-sent as soon as it connects again; its `running` tasks keep running (their
    /// deadline still applies). Nothing is dispatched to it until it connects.
    pub fn agent_disconnected(&mut self, agent: &AgentId, now: u64) -> Outcome {
        self.observe(now);
        let mut tx = Tx::default();
        let Some(state) = self.agents.get_mut(agent.as_str()) else {
            return tx.finish();
        };
        state.connected = false;
        self.clear_leases(agent.as_str(), &mut tx);
        if let Some(state) = self.agents.get(agent.as_str()) {
            if state.targets.is_empty() {
                self.agents.remove(agent.as_str());
            }
        }
        tx.finish()
    }

    /// Applies everything time has made due by `now`: expiries, dispatch-lease re-sends,
    /// running deadlines and retry backoffs, and dispatches what became possible. Call it
    /// at [`Queue::next_wakeup`] (calling it more often is harmless).
    pub fn tick(&mut self, now: u64) -> Outcome {
        let now = self.observe(now);
        let mut tx = Tx::default();
        let mut affected: BTreeSet<AgentId> = BTreeSet::new();
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.fire(at, id, now, &mut tx, &mut affected);
        }
        while let Some(&(at, id)) = self.backoff.first() {
            if at > now {
                break;
            }
            affected.insert(self.tasks[&id].agent.clone());
            self.promote(at, id);
        }
        for agent in &affected {
            self.dispatch_agent(agent.as_str(), now, &mut tx);
        }
        tx.finish()
    }

    /// The agent accepted `(task, attempt)`: `dispatched` becomes `running` and the
    /// deadline starts. A repeated accept of a running task changes nothing. An accept for
    /// a task the queue has cancelled or expired changes nothing and answers with a
    /// [`Effect::SendCancel`] (the `Assign` reached the agent after all). An accept that
    /// arrives after `expires_at` but before the tick that expires the task still counts:
    /// the agent itself does not start a task past its `expires_at`.
    ///
    /// Errors (nothing changes): [`QueueError::UnknownTask`], [`QueueError::WrongAgent`],
    /// [`QueueError::StaleAttempt`] (not the current attempt),
    /// [`QueueError::NotDispatched`], [`QueueError::AlreadyFinished`] (succeeded or failed).
    pub fn accepted(
        &mut self,
        agent: &AgentId,
        task: TaskId,
        attempt: u32,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let now = self.observe(now);
        let record = self.check_report(agent, task)?;
        if attempt != record.attempt {
            return Err(QueueError::StaleAttempt {
                task,
                attempt,
                current: record.attempt,
            });
        }
        let mut tx = Tx::default();
        match record.state {
            TaskState::Queued => return Err(QueueError::NotDispatched(task)),
            TaskState::Running => {}
            TaskState::Dispatched => self.update(task, &mut tx, |t| {
                t.state = TaskState::Running;
                t.accepted_at = Some(now);
                t.lease_until = None;
                t.updated_at = now;
            }),
            TaskState::Cancelled | TaskState::Expired => tx.effects.push(Effect::SendCancel {
                agent: agent.clone(),
                task,
            }),
            state @ (TaskState::Succeeded | TaskState::Failed) => {
                return Err(QueueError::AlreadyFinished { task, state });
            }
        }
        Ok(tx.finish())
    }

    /// Checks a `Progress` message: `Ok` if `(task, attempt)` is the current, dispatched or
    /// running attempt of that agent's task. Progress never changes the state.
    pub fn progress(&self, agent: &AgentId, task: TaskId, attempt: u32) -> Result<(), QueueError> {
        let record = self.check_report(agent, task)?;
        if attempt != record.attempt {
            return Err(QueueError::StaleAttempt {
                task,
                attempt,
                current: record.attempt,
            });
        }
        match record.state {
            TaskState::Queued => Err(QueueError::NotDispatched(task)),
            TaskState::Dispatched | TaskState::Running => Ok(()),
            state => Err(QueueError::AlreadyFinished { task, state }),
        }
    }

    /// The agent reported the result of `(task, attempt)`. The outcome always carries an
    /// [`Effect::AckResult`] unless this is an error.
    ///
    /// The first result for the current attempt of a `dispatched` (its `Accepted` may have
    /// been lost) or `running` task decides:
    /// - success: `succeeded` (also when a cancel was requested: it finished first);
    /// - failure after a cancel request: `cancelled` (the agent aborted and rolled back);
    /// - retriable failure, `attempt < max_attempts`, and the retry time
    ///   `now + backoff(attempt)` before `expires_at`: back to `queued` with `attempt + 1`
    ///   and `not_before` = that retry time (backoff: `retry_base * 2^(attempt-1)`, at
    ///   most `retry_max`);
    /// - otherwise: `failed`.
    ///
    /// A result for an older attempt or for a finished task was already decided: it changes
    /// nothing and is acknowledged.
    ///
    /// Errors (nothing changes, no ack): [`QueueError::UnknownTask`],
    /// [`QueueError::WrongAgent`], [`QueueError::StaleAttempt`] (an attempt newer than the
    /// task's), [`QueueError::NotDispatched`] (the current attempt is still queued).
    pub fn result(
        &mut self,
        agent: &AgentId,
        task: TaskId,
        attempt: u32,
        summary: ResultSummary,
        now: u64,
    ) -> Result<Outcome, QueueError> {
        let now = self.observe(now);
        let record = self.check_report(agent, task)?;
        if attempt > record.attempt {
            return Err(QueueError::StaleAttempt {
                task,
                attempt,
                current: record.attempt,
            });
        }
        let ack = Effect::AckResult {
            agent: agent.clone(),
            task,
            attempt,
        };
        let mut tx = Tx::default();
        if attempt < record.attempt || record.state.is_terminal() {
            tx.effects.push(ack);
            return Ok(tx.finish());
        }
        if record.state == TaskState::Queued {
            return Err(QueueError::NotDispatched(task));
        }
        let retry_at = now.saturating_add(self.backoff_ms(attempt));
        let next = if summary.success {
            TaskState::Succeeded
        } else if record.cancel_requested {
            TaskState::Cancelled
        } else if summary.retriable
            && attempt < record.max_attempts
            && record.expires_at.is_none_or(|at| retry_at < at)
        {
            TaskState::Queued
        } else {
            TaskState::Failed
        };
        let recorded = RecordedResult {
            attempt,
            at: now,
            summary,
        };
        self.update(task, &mut tx, |t| {
            t.state = next;
            t.updated_at = now;
            t.lease_until = None;
            t.last_result = Some(recorded);
            if next == TaskState::Queued {
                t.attempt += 1;
                t.not_before = Some(retry_at);
                t.dispatched_at = None;
                t.accepted_at = None;
            }
        });
        tx.effects.push(ack);
        self.dispatch_agent(agent.as_str(), now, &mut tx);
        Ok(tx.finish())
    }

    /// Cancels a task: `queued` or `dispatched` becomes `cancelled` (a dispatched one with
    /// an [`Effect::SendCancel`]); for a `running` task the cancel is requested
    /// ([`TaskRecord::cancel_requested`], [`Effect::SendCancel`]) and the agent's result
    /// decides the final state. Cancelling a running task again re-sends the cancel.
    ///
    /// Errors: [`QueueError::UnknownTask`]; [`QueueError::AlreadyFinished`] for a finished
    /// task.
    pub fn cancel(&mut self, task: TaskId, now: u64) -> Result<Outcome, QueueError> {
        let now = self.observe(now);
        let record = self.tasks.get(&task).ok_or(QueueError::UnknownTask(task))?;
        let agent = record.agent.clone();
        let mut tx = Tx::default();
        match record.state {
            state if state.is_terminal() => {
                return Err(QueueError::AlreadyFinished { task, state });
            }
            TaskState::Running => {
                if !record.cancel_requested {
                    self.update(task, &mut tx, |t| {
                        t.cancel_requested = true;
                        t.updated_at = now;
                    });
                }
                tx.effects.push(Effect::SendCancel { agent, task });
            }
            state => {
                self.update(task, &mut tx, |t| {
                    t.state = TaskState::Cancelled;
                    t.updated_at = now;
                    t.lease_until = None;
                });
                if state == TaskState::Dispatched {
                    tx.effects.push(Effect::SendCancel {
                        agent: agent.clone(),
                        task,
                    });
                }
                self.dispatch_agent(agent.as_str(), now, &mut tx);
            }
        }
        Ok(tx.finish())
    }

    /// Forgets up to `max` finished tasks that finished before `before` (oldest first) and
    /// returns their ids, so that the shell deletes their records and payloads. Their
    /// idempotency keys are free again; a late result for them becomes
    /// [`QueueError::UnknownTask`].
    pub fn evict_finished(&mut self, before: u64, max: usize) -> Vec<TaskId> {
        self.evict_finished_where(before, max, |_| true)
    }

    /// [`Queue::evict_finished`] of the finished tasks `which` selects only (the others
    /// are kept and skipped).
    pub fn evict_finished_where(
        &mut self,
        before: u64,
        max: usize,
        which: impl Fn(&TaskRecord) -> bool,
    ) -> Vec<TaskId> {
        let chosen: Vec<TaskId> = self
            .finished
            .iter()
            .take_while(|(at, _)| *at < before)
            .map(|(_, id)| *id)
            .filter(|id| self.tasks.get(id).is_some_and(&which))
            .take(max)
            .collect();
        for id in &chosen {
            self.forget(*id);
        }
        chosen
    }

    /// Removes a finished task from every index.
    fn forget(&mut self, id: TaskId) {
        self.unlink(id);
        let record = self.tasks.remove(&id).expect("indexed task exists");
        self.by_seq.remove(&record.seq);
        if let Some(key) = &record.idempotency_key {
            if let Some(keys) = self.keys.get_mut(&record.requester) {
                keys.remove(key);
                if keys.is_empty() {
                    self.keys.remove(&record.requester);
                }
            }
        }
    }

    // ---- queries --------------------------------------------------------------------

    /// A task's record.
    pub fn get(&self, id: TaskId) -> Option<&TaskRecord> {
        self.tasks.get(&id)
    }

    /// The task an idempotency key names, if any.
    pub fn find_by_key(&self, requester: &str, key: &str) -> Option<TaskId> {
        self.keys.get(requester)?.get(key).copied()
    }

    /// Tasks matching `filter`, in submission order. Scans the tasks (a query, not an
    /// event path).
    pub fn list(&self, filter: &ListFilter) -> Vec<&TaskRecord> {
        let start = filter.after_seq.map_or(0, |seq| seq.saturating_add(1));
        self.by_seq
            .range(start..)
            .map(|(_, id)| &self.tasks[id])
            .filter(|t| filter.state.is_none_or(|s| t.state == s))
            .filter(|t| filter.agent.as_ref().is_none_or(|a| &t.agent == a))
            .filter(|t| filter.target.as_ref().is_none_or(|x| &t.target == x))
            .take(filter.limit.unwrap_or(usize::MAX))
            .collect()
    }

    /// Every record, in submission order (for a full snapshot).
    pub fn records(&self) -> impl Iterator<Item = &TaskRecord> + '_ {
        self.by_seq.values().map(|id| &self.tasks[id])
    }

    /// How many tasks the queue holds.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the queue holds no task.
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// How many tasks are in `state` (for metrics).
    pub fn count(&self, state: TaskState) -> usize {
        self.counts[state.index()]
    }

    /// How many tasks the agent has `dispatched` or `running`.
    pub fn agent_in_flight(&self, agent: &AgentId) -> usize {
        self.agents
            .get(agent.as_str())
            .map_or(0, |a| a.in_flight.len())
    }

    /// Whether the agent is connected (as last reported).
    pub fn is_connected(&self, agent: &AgentId) -> bool {
        self.agents.get(agent.as_str()).is_some_and(|a| a.connected)
    }

    /// The connected agents, sorted.
    pub fn connected_agents(&self) -> Vec<AgentId> {
        let mut agents: Vec<AgentId> = self
            .agents
            .iter()
            .filter(|(_, a)| a.connected)
            .map(|(id, _)| id.clone())
            .collect();
        agents.sort();
        agents
    }

    /// The earliest time at which [`Queue::tick`] has something to do without any other
    /// input (a lease, a retry backoff, an expiry or a deadline), or `None` if nothing is
    /// timed. Sleep until then (or until an event). Right after [`Queue::restore`] it may
    /// lie in the past: tick at once.
    pub fn next_wakeup(&self) -> Option<u64> {
        let timer = self.timers.first().map(|&(at, _)| at);
        let backoff = self.backoff.first().map(|&(at, _)| at);
        match (timer, backoff) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ------------------------------------------------------------------

    /// The record of a task reported by `agent`, or why the report is refused.
    fn check_report(&self, agent: &AgentId, task: TaskId) -> Result<&TaskRecord, QueueError> {
        let record = self.tasks.get(&task).ok_or(QueueError::UnknownTask(task))?;
        if record.agent != *agent {
            return Err(QueueError::WrongAgent {
                task,
                agent: agent.clone(),
            });
        }
        Ok(record)
    }

    /// Backoff after the failure of `attempt` (1-based).
    fn backoff_ms(&self, attempt: u32) -> u64 {
        let factor = 2u64.saturating_pow(attempt.saturating_sub(1));
        self.retry_base_ms
            .saturating_mul(factor)
            .min(self.retry_max_ms)
    }

    /// The time of a task's next time-driven change, derived from its record alone.
    fn timer_at(record: &TaskRecord, grace_ms: u64) -> Option<u64> {
        match record.state {
            TaskState::Queued => record.expires_at,
            TaskState::Dispatched => match (record.expires_at, record.lease_until) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            TaskState::Running => record.accepted_at.map(|at| {
                at.saturating_add(record.timeout_ms)
                    .saturating_add(grace_ms)
            }),
            _ => None,
        }
    }

    /// Adds a task to the indexes its record puts it in (not the head slots: see
    /// `refresh_target`).
    fn link(&mut self, id: TaskId) {
        let record = &self.tasks[&id];
        self.counts[record.state.index()] += 1;
        if let Some(at) = Self::timer_at(record, self.grace_ms) {
            self.timers.insert((at, id));
        }
        if record.state.is_terminal() {
            self.finished.insert((record.updated_at, id));
            return;
        }
        if !self.agents.contains_key(record.agent.as_str()) {
            self.agents
                .insert(record.agent.clone(), AgentState::default());
        }
        let agent = self
            .agents
            .get_mut(record.agent.as_str())
            .expect("just inserted");
        if !agent.targets.contains_key(&record.target) {
            agent
                .targets
                .insert(record.target.clone(), TargetState::default());
        }
        let target = agent
            .targets
            .get_mut(&record.target)
            .expect("just inserted");
        if record.state == TaskState::Queued {
            target.queued.insert((record.seq, id));
        } else {
            target.active.insert(id);
            agent.in_flight.insert(id);
        }
    }

    /// Removes a task from the indexes `link` put it in. Call before changing the record.
    fn unlink(&mut self, id: TaskId) {
        let record = &self.tasks[&id];
        self.counts[record.state.index()] -= 1;
        if let Some(at) = Self::timer_at(record, self.grace_ms) {
            self.timers.remove(&(at, id));
        }
        if record.state.is_terminal() {
            self.finished.remove(&(record.updated_at, id));
            return;
        }
        if let Some(agent) = self.agents.get_mut(record.agent.as_str()) {
            if let Some(target) = agent.targets.get_mut(&record.target) {
                target.queued.remove(&(record.seq, id));
                target.active.remove(&id);
            }
            agent.in_flight.remove(&id);
        }
    }

    /// Re-derives which task heads the target and where it is indexed (ready now or
    /// waiting for its backoff); drops empty target and agent entries.
    fn refresh_target(&mut self, agent_id: &str, target_id: &str) {
        refresh_head(
            &mut self.agents,
            &mut self.backoff,
            &self.tasks,
            self.clock,
            agent_id,
            target_id,
        );
    }

    /// `refresh_target` for the target of task `id`.
    fn refresh_target_of(&mut self, id: TaskId) {
        let record = &self.tasks[&id];
        refresh_head(
            &mut self.agents,
            &mut self.backoff,
            &self.tasks,
            self.clock,
            record.agent.as_str(),
            &record.target,
        );
    }

    /// Moves a head whose backoff is over (`at` = its `not_before`) from waiting to ready.
    fn promote(&mut self, at: u64, id: TaskId) {
        self.backoff.remove(&(at, id));
        let record = &self.tasks[&id];
        let Some(agent) = self.agents.get_mut(record.agent.as_str()) else {
            return;
        };
        agent.waiting.remove(&(at, id));
        let key = (Reverse(record.priority), record.seq, id);
        agent.ready.insert(key);
        if let Some(target) = agent.targets.get_mut(&record.target) {
            target.head = Some((id, Slot::Ready(key)));
        }
    }

    /// Changes a record through `change`, keeping every index in step, and notes the change
    /// (with a [`Effect::Notify`] if the state changed).
    fn update(&mut self, id: TaskId, tx: &mut Tx, change: impl FnOnce(&mut TaskRecord)) {
        self.unlink(id);
        let record = self.tasks.get_mut(&id).expect("updated task exists");
        let before = record.state;
        change(record);
        let after = record.state;
        tx.change(id);
        if before != after {
            tx.effects.push(Effect::Notify {
                task: id,
                state: after,
            });
        }
        self.link(id);
        self.refresh_target_of(id);
    }

    /// `queued`/`dispatched` -> `expired`, telling the agent if it had been dispatched.
    fn expire(&mut self, id: TaskId, now: u64, tx: &mut Tx) {
        let record = &self.tasks[&id];
        let cancel = (record.state == TaskState::Dispatched).then(|| Effect::SendCancel {
            agent: record.agent.clone(),
            task: id,
        });
        self.update(id, tx, |t| {
            t.state = TaskState::Expired;
            t.updated_at = now;
            t.lease_until = None;
        });
        tx.effects.extend(cancel);
    }

    /// (Re-)sends a dispatched task with a fresh lease, or expires it if it is too late.
    fn send(&mut self, id: TaskId, now: u64, tx: &mut Tx) {
        let record = &self.tasks[&id];
        if record.expires_at.is_some_and(|at| at <= now) {
            self.expire(id, now, tx);
            return;
        }
        let effect = Effect::Dispatch {
            agent: record.agent.clone(),
            task: id,
            attempt: record.attempt,
        };
        let lease_until = now.saturating_add(self.lease_ms);
        self.update(id, tx, |t| {
            t.lease_until = Some(lease_until);
            if t.state == TaskState::Queued {
                t.state = TaskState::Dispatched;
                t.dispatched_at = Some(now);
                t.updated_at = now;
            }
        });
        tx.effects.push(effect);
    }

    /// Clears the leases of the agent's dispatched tasks (so they are re-sent on connect).
    fn clear_leases(&mut self, agent: &str, tx: &mut Tx) {
        let Some(state) = self.agents.get(agent) else {
            return;
        };
        let leased: Vec<TaskId> = state
            .in_flight
            .iter()
            .copied()
            .filter(|id| {
                let t = &self.tasks[id];
                t.state == TaskState::Dispatched && t.lease_until.is_some()
            })
            .collect();
        for id in leased {
            self.update(id, tx, |t| t.lease_until = None);
        }
    }

    /// Does what one due timer of a task asks (`at` <= `now`).
    fn fire(
        &mut self,
        at: u64,
        id: TaskId,
        now: u64,
        tx: &mut Tx,
        affected: &mut BTreeSet<AgentId>,
    ) {
        let record = &self.tasks[&id];
        let agent = record.agent.clone();
        let expired = record.expires_at.is_some_and(|e| e <= now);
        match record.state {
            TaskState::Queued | TaskState::Dispatched if expired => self.expire(id, now, tx),
            TaskState::Dispatched if record.lease_until.is_some_and(|l| l <= now) => {
                if self.is_connected(&agent) {
                    self.send(id, now, tx);
                } else {
                    self.update(id, tx, |t| t.lease_until = None);
                }
            }
            TaskState::Running => {
                let error = format!(
                    "agent did not report within {} of accepting the task (timeout {} + grace {})",
                    fmt_millis(record.timeout_ms.saturating_add(self.grace_ms)),
                    fmt_millis(record.timeout_ms),
                    fmt_millis(self.grace_ms),
                );
                let recorded = RecordedResult {
                    attempt: record.attempt,
                    at: now,
                    summary: ResultSummary::failed(error, false),
                };
                self.update(id, tx, |t| {
                    t.state = TaskState::Failed;
                    t.updated_at = now;
                    t.last_result = Some(recorded);
                });
            }
            _ => {
                // Not reachable: every timer is derived from a due condition above.
                debug_assert!(false, "timer of task {id} at {at} has nothing to do");
                self.timers.remove(&(at, id));
            }
        }
        affected.insert(agent);
    }

    /// Fills the agent's free slots, if it is connected: backoffs over by `now` become
    /// ready, lease-less dispatched tasks are re-sent, then ready heads are dispatched in
    /// (priority, submission) order. A head found expired is expired instead.
    fn dispatch_agent(&mut self, agent_id: &str, now: u64, tx: &mut Tx) {
        let Some(agent) = self.agents.get(agent_id) else {
            return;
        };
        if !agent.connected {
            return;
        }
        while let Some(&(at, id)) = self.agents[agent_id].waiting.first() {
            if at > now {
                break;
            }
            self.promote(at, id);
        }
        let agent = &self.agents[agent_id];
        let resend: Vec<TaskId> = agent
            .in_flight
            .iter()
            .copied()
            .filter(|id| {
                let t = &self.tasks[id];
                t.state == TaskState::Dispatched && t.lease_until.is_none()
            })
            .collect();
        for id in resend {
            self.send(id, now, tx);
        }
        let cap = self.config.max_in_flight_per_agent;
        while let Some(agent) = self.agents.get(agent_id) {
            if agent.in_flight.len() >= cap {
                break;
            }
            let Some(&(_, _, id)) = agent.ready.first() else {
                break;
            };
            // `send` expires it instead if `now` is at or past its expires_at.
            self.send(id, now, tx);
        }
    }

    /// Test-only: checks every index against a fresh derivation from the records.
    #[cfg(test)]
    fn check_consistency(&self) {
        let mut counts = [0usize; 7];
        let mut timers = BTreeSet::new();
        let mut finished = BTreeSet::new();
        for (id, t) in &self.tasks {
            assert_eq!(*id, t.id);
            assert_eq!(self.by_seq.get(&t.seq), Some(id));
            counts[t.state.index()] += 1;
            if let Some(at) = Self::timer_at(t, self.grace_ms) {
                timers.insert((at, *id));
            }
            if t.state.is_terminal() {
                finished.insert((t.updated_at, *id));
            }
            if let Some(key) = &t.idempotency_key {
                assert_eq!(self.find_by_key(&t.requester, key), Some(*id));
            }
        }
        assert_eq!(self.by_seq.len(), self.tasks.len());
        assert_eq!(counts, self.counts);
        assert_eq!(timers, self.timers);
        assert_eq!(finished, self.finished);
        let mut backoff = BTreeSet::new();
        for (agent_id, agent) in &self.agents {
            assert!(agent.connected || !agent.targets.is_empty());
            let mut in_flight = BTreeSet::new();
            let mut ready = BTreeSet::new();
            let mut waiting = BTreeSet::new();
            for (target_id, target) in &agent.targets {
                assert!(!target.queued.is_empty() || !target.active.is_empty());
                for &(seq, id) in &target.queued {
                    let t = &self.tasks[&id];
                    assert_eq!((t.seq, t.state), (seq, TaskState::Queued));
                    assert_eq!((&t.agent, &t.target), (agent_id, target_id));
                }
                for id in &target.active {
                    let t = &self.tasks[id];
                    assert!(t.state.is_in_flight());
                    assert_eq!((&t.agent, &t.target), (agent_id, target_id));
                    in_flight.insert(*id);
                }
                match (target.active.is_empty(), target.queued.first()) {
                    (true, Some(&(seq, id))) => {
                        let (head, slot) = target.head.expect("idle target has a head slot");
                        assert_eq!(head, id);
                        let t = &self.tasks[&id];
                        match slot {
                            Slot::Ready(key) => {
                                assert_eq!(key, (Reverse(t.priority), seq, id));
                                assert!(t.not_before.is_none_or(|at| at <= self.clock));
                                ready.insert(key);
                            }
                            Slot::Waiting(at) => {
                                assert_eq!(t.not_before, Some(at));
                                waiting.insert((at, id));
                                backoff.insert((at, id));
                            }
                        }
                    }
                    _ => assert!(target.head.is_none()),
                }
            }
            assert_eq!(in_flight, agent.in_flight);
            assert_eq!(ready, agent.ready);
            assert_eq!(waiting, agent.waiting);
        }
        assert_eq!(backoff, self.backoff);
        let indexed: usize = self
            .agents
            .values()
            .flat_map(|a| a.targets.values())
            .map(|t| t.queued.len() + t.active.len())
            .sum();
        let live = self
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal())
            .count();
        assert_eq!(indexed, live);
    }
}
