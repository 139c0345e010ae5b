//! The task engine: the async shell around the pure [`Queue`] (design §3).
//!
//! One actor task owns every change. It takes the commands that arrived (submits,
//! cancels, agent sessions opening and closing, `Accepted`, results), applies them to
//! the queue, writes every changed task into **one** store batch and awaits its
//! durable commit, and only then answers the callers and performs the effects:
//! sending `Assign` to an agent's session, a cancel, a state event. So a task is never
//! dispatched, and no API call answers, before the change is on disk; and many changes
//! share one flush (group commit).
//!
//! Readers ([`Engine::get`], [`Engine::list`]) take a read lock that the actor holds
//! for writing across the commit, so they only ever see durable state.
//!
//! Transports (QUIC, HTTPS polling) talk to the engine through [`Engine::open_session`]
//! and the report methods; the agent directory (enrollment, credentials) through the
//! [`AgentDirectory`] trait, so the engine is tested without PKI.

pub mod model;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, mpsc, oneshot, RwLock};
use uuid::Uuid;
use wharf_protocol::{
    AgentTask, ImageRef, Progress, SealedCredentials, TaskKind, TaskPayload, TaskResult, Timestamp,
};
use wharf_sticker::SigningKey;

use crate::audit::{AuditLog, AuditRecord};
use crate::queue::{
    self, AgentId, Effect, ListFilter, NewTask, Outcome, Queue, QueueError, ResultSummary,
    Submission, TaskId, TaskRecord, TaskState,
};
use crate::store::{Batch, Store, StoreError, Table};

pub use model::{
    payload_hash, validate, InvalidSubmit, StoredTask, SubmitRequest, TaskEvent, TaskView,
};

/// What the engine needs to know about agents, provided by the directory.
pub trait AgentDirectory: Send + Sync + 'static {
    /// Whether an agent of this name is enrolled and not revoked.
    fn agent_exists(&self, name: &str) -> bool;

    /// Registry credentials sealed to the agent for the first of `images` whose registry
    /// core holds credentials for (one sealed login per task), if any.
    ///
    /// # Errors
    ///
    /// A message saying why sealing failed (the task is then sent without them).
    fn seal_credentials(
        &self,
        agent: &str,
        task: &AgentTask,
        images: &[ImageRef],
    ) -> Result<Option<SealedCredentials>, String>;
}

/// Engine settings.
#[derive(Clone)]
pub struct EngineConfig {
    /// The queue's rules (leases, retries, per-agent cap).
    pub queue: queue::Config,
    /// How many state events the event stream buffers for slow watchers.
    pub event_buffer: usize,
    /// The clock, in milliseconds since the Unix epoch (replaceable in tests).
    pub clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The audit log that records every submit (`task.submit`) and cancel
    /// (`task.cancel`), in the same batch as the change (see [`Engine::start`]). It
    /// must live in the store the engine is started on. `None`: nothing is recorded
    /// (unit tests).
    pub audit: Option<AuditLog>,
    /// How long finished read-only tasks (`inspect`, `read-sticker`, `health-check`,
    /// among them the fleet audit's two per target) are kept, in memory and in the
    /// store, before they are forgotten. `None`: kept forever. Deploys, rollbacks and
    /// sticker writes are always kept (history, evidence, core's record).
    pub read_task_retention: Option<Duration>,
}

/// How long finished read-only tasks are kept by default.
pub const DEFAULT_READ_TASK_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl EngineConfig {
    /// Records submits and cancels in `audit` (which must live in the engine's store).
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }
}

impl std::fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineConfig")
            .field("queue", &self.queue)
            .field("event_buffer", &self.event_buffer)
            .field("audit", &self.audit.is_some())
            .field("read_task_retention", &self.read_task_retention)
            .finish_non_exhaustive()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue: queue::Config::default(),
            event_buffer: 4096,
            clock: Arc::new(system_now_ms),
            audit: None,
            read_task_retention: Some(DEFAULT_READ_TASK_RETENTION),
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn system_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Why the engine refused a call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The submit is invalid; nothing was stored.
    #[error("invalid task: {0}")]
    Invalid(#[from] InvalidSubmit),
    /// The named agent is not enrolled (or was revoked).
    #[error("unknown agent {0:?}: enroll it first (`wharf agent token create --name {0}`), or check `wharf agent list`")]
    UnknownAgent(String),
    /// The idempotency key was used before with another payload.
    #[error("idempotency key {key:?} was already used for task {existing} with a different payload; use a new key")]
    Conflict {
        /// The key.
        key: String,
        /// The task it belongs to.
        existing: TaskId,
    },
    /// The queue refused the event (unknown task, wrong agent, finished task...).
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The store failed; the engine stopped taking changes.
    #[error("the store failed: {0}; core stopped accepting changes and must be restarted")]
    Store(String),
    /// The engine is shutting down or stopped after a store failure.
    #[error("the task engine is not running")]
    Stopped,
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// A message from the engine to one agent session.
#[derive(Debug, Clone)]
pub enum SessionCommand {
    /// Send this task (a first send or a re-send of the same attempt).
    Assign(Box<AgentTask>),
    /// Ask the agent to abort (or drop) this task.
    Cancel(TaskId),
    /// Close the session (revoked, or replaced by a newer session of the same agent).
    Close {
        /// Why, for the agent's log.
        reason: String,
    },
}

/// An open session, as returned by [`Engine::open_session`].
#[derive(Debug)]
pub struct Session {
    /// Identifies this session in [`Engine::close_session`].
    pub id: u64,
    /// The engine's commands for this agent.
    pub commands: mpsc::UnboundedReceiver<SessionCommand>,
}

struct SessionEntry {
    id: u64,
    transport: &'static str,
    tx: mpsc::UnboundedSender<SessionCommand>,
}

/// Per-task data the queue does not hold.
struct TaskExtras {
    payload: TaskPayload,
    priority: wharf_protocol::Priority,
    expires_at: Option<Timestamp>,
    timeout: wharf_protocol::DurationMs,
    result: Option<TaskResult>,
}

struct State {
    queue: Queue,
    extras: HashMap<TaskId, TaskExtras>,
    sessions: HashMap<String, SessionEntry>,
    /// Per `(agent, target)`: what the latest successful deploy or rollback put there, and
    /// what ran before it. Core's record of what should run (a deploy sticker's
    /// `previous`, a rollback's destination), kept as an index so a submit does not scan
    /// every task.
    last_deploys: HashMap<(String, String), TargetHistory>,
}

/// What a successful deploy or rollback put on a target, as its signed sticker says.
#[derive(Debug, Clone)]
struct Ran {
    task: TaskId,
    order: (u64, u64),
    kind: wharf_sticker::TargetKind,
    release: wharf_sticker::Release,
    components: Vec<wharf_sticker::Component>,
}

impl Ran {
    fn as_previous(&self) -> wharf_sticker::Previous {
        wharf_sticker::Previous {
            release: self.release.clone(),
            components: self.components.clone(),
        }
    }
}

/// Core's record of what should run on a target: what the latest successful deploy or
/// rollback put there (the release and components of the sticker core signed for it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedTarget {
    /// Agent name.
    pub agent: String,
    /// Container name (Docker) or Compose project.
    pub target: String,
    /// `docker` or `compose`.
    pub kind: wharf_sticker::TargetKind,
    /// The task that put it there.
    pub task: uuid::Uuid,
    /// Its release.
    pub release: wharf_sticker::Release,
    /// Its components (one for a container; one per service for a project).
    pub components: Vec<wharf_sticker::Component>,
}

/// The last two things that ran on a target.
#[derive(Debug, Clone)]
struct TargetHistory {
    current: Ran,
    previous: Option<Ran>,
    /// Order of the newest task applied to this history (a Compose rollback swaps
    /// `current` and `previous`, so it must be applied once).
    applied: (u64, u64),
}

impl State {
    /// Records `id` as what now runs on its target if it is a successful deploy or
    /// rollback newer than the one recorded; the one recorded becomes the previous. A
    /// successful Compose rollback brings back the previous lock (and the sticker core
    /// signed for it): the recorded previous becomes the current again.
    fn note_deploy(&mut self, id: TaskId) {
        let Some(record) = self.queue.get(id) else {
            return;
        };
        if record.state != TaskState::Succeeded {
            return;
        }
        let order = (record.updated_at, record.seq);
        let key = (record.agent.as_str().to_string(), record.target.clone());
        if record.kind == TaskKind::ComposeRollback.as_str() {
            if let Some(history) = self.last_deploys.get_mut(&key) {
                if order > history.applied {
                    if let Some(previous) = history.previous.take() {
                        let current = std::mem::replace(&mut history.current, previous);
                        history.previous = Some(current);
                    }
                    history.applied = order;
                }
            }
            return;
        }
        let deploy = record.kind == TaskKind::Deploy.as_str()
            || record.kind == TaskKind::ComposeDeploy.as_str();
        let rollback = record.kind == TaskKind::Rollback.as_str();
        if !(deploy || rollback) {
            return;
        }
        let Some(ran) = self.extras.get(&id).and_then(|e| ran_of(id, record, e)) else {
            return;
        };
        match self.last_deploys.get_mut(&key) {
            Some(history) if history.current.task == id => {}
            Some(history) if ran.order > history.current.order => {
                history.applied = history.applied.max(ran.order);
                let current = std::mem::replace(&mut history.current, ran);
                history.previous = Some(current);
            }
            Some(history) => {
                if history
                    .previous
                    .as_ref()
                    .is_none_or(|p| ran.order > p.order)
                {
                    history.previous = Some(ran);
                }
            }
            None => {
                self.last_deploys.insert(
                    key,
                    TargetHistory {
                        applied: ran.order,
                        current: ran,
                        previous: None,
                    },
                );
            }
        }
    }
}

impl State {
    /// The task as stored, by reference (for writing it).
    fn stored_ref(&self, id: TaskId) -> Option<model::StoredTaskRef<'_>> {
        let record = self.queue.get(id)?;
        let extras = self.extras.get(&id)?;
        Some(model::StoredTaskRef {
            record,
            payload: &extras.payload,
            priority: &extras.priority,
            expires_at: &extras.expires_at,
            timeout: &extras.timeout,
            result: &extras.result,
        })
    }

    fn stored(&self, id: TaskId) -> Option<StoredTask> {
        let record = self.queue.get(id)?;
        let extras = self.extras.get(&id)?;
        Some(stored_task(record, extras))
    }
}

fn stored_task(record: &TaskRecord, extras: &TaskExtras) -> StoredTask {
    StoredTask {
        record: record.clone(),
        payload: extras.payload.clone(),
        priority: extras.priority,
        expires_at: extras.expires_at,
        timeout: extras.timeout,
        result: extras.result.clone(),
    }
}

enum Command {
    Submit {
        req: Box<SubmitRequest>,
        requester: String,
        reply: oneshot::Sender<Result<(Submission, TaskView), EngineError>>,
    },
    Cancel {
        id: TaskId,
        actor: String,
        reply: oneshot::Sender<Result<TaskView, EngineError>>,
    },
    Open {
        agent: String,
        transport: &'static str,
        reply: oneshot::Sender<Session>,
    },
    Close {
        agent: String,
        session: u64,
    },
    CloseAgent {
        agent: String,
        reason: String,
    },
    Accepted {
        agent: String,
        task: TaskId,
        attempt: u32,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Result {
        agent: String,
        result: Box<TaskResult>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// A handle on the running engine; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    tx: mpsc::UnboundedSender<Command>,
    state: Arc<RwLock<State>>,
    events: broadcast::Sender<TaskEvent>,
    directory: Arc<dyn AgentDirectory>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

impl Engine {
    /// Loads every task from the store, rebuilds the queue and starts the actor.
    ///
    /// With [`EngineConfig::audit`] set, the audit entries of a round's submits and
    /// cancels go into the round's batch: they become durable in the same flush as the
    /// changes they record, before anyone is answered, and a round's entries are
    /// appended in one go (one hold of the log's append lock per round, not one flush
    /// per entry).
    ///
    /// Tasks that were dispatched but not accepted when core stopped are re-sent when
    /// their agent reconnects (the agent's journal answers a re-sent id from its record,
    /// so nothing runs twice).
    ///
    /// # Errors
    ///
    /// A store read error, or stored tasks the queue cannot accept.
    pub fn start(
        store: Arc<dyn Store>,
        directory: Arc<dyn AgentDirectory>,
        signing_key: Option<Arc<SigningKey>>,
        config: EngineConfig,
    ) -> Result<Engine, EngineError> {
        let stored: Vec<StoredTask> = store
            .scan(Table::Tasks)?
            .into_iter()
            .map(|(_, bytes)| {
                postcard::from_bytes::<StoredTask>(&bytes)
                    .map_err(|e| EngineError::Store(format!("undecodable task record: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let mut extras = HashMap::with_capacity(stored.len());
        let mut records = Vec::with_capacity(stored.len());
        for task in stored {
            extras.insert(
                task.record.id,
                TaskExtras {
                    payload: task.payload,
                    priority: task.priority,
                    expires_at: task.expires_at,
                    timeout: task.timeout,
                    result: task.result,
                },
            );
            records.push(task.record);
        }
        let ids: Vec<TaskId> = records.iter().map(|r| r.id).collect();
        let queue = Queue::restore(records, config.queue.clone())?;
        let mut state = State {
            queue,
            extras,
            sessions: HashMap::new(),
            last_deploys: HashMap::new(),
        };
        // Oldest first, so that the history of each target ends with what ran last.
        let mut ids = ids;
        ids.sort_by_key(|id| state.queue.get(*id).map(|r| (r.updated_at, r.seq)));
        for id in ids {
            state.note_deploy(id);
        }
        let state = Arc::new(RwLock::new(state));
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(config.event_buffer.max(16));
        let actor = Actor {
            rx,
            state: state.clone(),
            store,
            events: events.clone(),
            directory: directory.clone(),
            signing_key,
            clock: config.clock.clone(),
            audit: config.audit.clone(),
            read_retention_ms: config
                .read_task_retention
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            next_eviction: 0,
        };
        tokio::spawn(actor.run());
        Ok(Engine {
            tx,
            state,
            events,
            directory,
        })
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Submits a task for `requester`. Answers once the task is durable: `Created`
    /// (HTTP 201) or, for a repeated idempotency key with the same payload, `Existing`
    /// (HTTP 200) with the existing task. A created task's `task.submit` audit entry
    /// (actor `requester`) is durable with it.
    ///
    /// # Errors
    ///
    /// [`EngineError::Invalid`] and [`EngineError::UnknownAgent`] before anything is
    /// stored; [`EngineError::Conflict`] for a reused key with another payload.
    pub async fn submit(
        &self,
        req: SubmitRequest,
        requester: &str,
    ) -> Result<(Submission, TaskView), EngineError> {
        validate(&req)?;
        if !self.directory.agent_exists(&req.agent) {
            return Err(EngineError::UnknownAgent(req.agent));
        }
        let requester = requester.to_string();
        self.call(|reply| Command::Submit {
            req: Box::new(req),
            requester,
            reply,
        })
        .await?
    }

    /// Cancels a task for `actor` (design §3): queued → cancelled; running → the agent
    /// is asked to abort and roll back, and its result decides the final state. The
    /// `task.cancel` audit entry is durable with the change.
    ///
    /// # Errors
    ///
    /// Unknown task, or a task that already finished.
    pub async fn cancel(&self, id: TaskId, actor: &str) -> Result<TaskView, EngineError> {
        let actor = actor.to_string();
        self.call(|reply| Command::Cancel { id, actor, reply })
            .await?
    }

    /// The task, as stored.
    pub async fn get(&self, id: TaskId) -> Option<TaskView> {
        let state = self.state.read().await;
        state.stored(id).map(|t| TaskView::of(&t))
    }

    /// Tasks matching `filter`, in submission order.
    pub async fn list(&self, filter: &ListFilter) -> Vec<TaskView> {
        let state = self.state.read().await;
        state
            .queue
            .list(filter)
            .into_iter()
            .filter_map(|r| {
                state
                    .extras
                    .get(&r.id)
                    .map(|e| TaskView::of(&stored_task(r, e)))
            })
            .collect()
    }

    /// The latest successful `deploy` or `rollback` task of `(agent, target)`, if any:
    /// core's own record of what should run there.
    pub async fn last_successful_deploy(&self, agent: &str, target: &str) -> Option<TaskView> {
        let state = self.state.read().await;
        history(&state, agent, target)
            .and_then(|h| state.stored(h.current.task))
            .map(|t| TaskView::of(&t))
    }

    /// Core's record of every target (of `agent`, or of every agent): what its latest
    /// successful deploy or rollback put there, by agent and target name.
    pub async fn recorded_targets(&self, agent: Option<&str>) -> Vec<RecordedTarget> {
        let state = self.state.read().await;
        let mut out: Vec<RecordedTarget> = state
            .last_deploys
            .iter()
            .filter(|((a, _), _)| agent.is_none_or(|want| want == a))
            .map(|((a, t), h)| RecordedTarget {
                agent: a.clone(),
                target: t.clone(),
                kind: h.current.kind,
                task: h.current.task,
                release: h.current.release.clone(),
                components: h.current.components.clone(),
            })
            .collect();
        out.sort_by(|x, y| (&x.agent, &x.target).cmp(&(&y.agent, &y.target)));
        out
    }

    /// Core's record of `(agent, target)`: the task whose result runs there now and the
    /// one before it (where `wharf rollback` without `--to` goes), if any.
    pub async fn kept_record(&self, agent: &str, target: &str) -> Option<(TaskId, Option<TaskId>)> {
        let state = self.state.read().await;
        history(&state, agent, target)
            .map(|h| (h.current.task, h.previous.as_ref().map(|p| p.task)))
    }

    /// Watches task events (state changes and progress lines) of every task; filter by
    /// [`TaskEvent::task_id`].
    pub fn subscribe(&self) -> broadcast::Receiver<TaskEvent> {
        self.events.subscribe()
    }

    /// The task now and the events after it, with nothing lost or doubled in between:
    /// state events are sent by the actor while it holds the state lock for writing, so
    /// subscribing and reading under the read lock gives a receiver whose first state
    /// event is the first change after the returned view. `None` for an unknown task.
    pub async fn watch(&self, id: TaskId) -> Option<(TaskView, broadcast::Receiver<TaskEvent>)> {
        let state = self.state.read().await;
        let events = self.events.subscribe();
        state.stored(id).map(|t| (TaskView::of(&t), events))
    }

    /// Opens a session for an agent that completed its handshake: the engine dispatches
    /// its tasks into [`Session::commands`] from now on. A newer session of the same
    /// agent replaces an older one (which gets [`SessionCommand::Close`]).
    ///
    /// # Errors
    ///
    /// [`EngineError::Stopped`].
    pub async fn open_session(
        &self,
        agent: &str,
        transport: &'static str,
    ) -> Result<Session, EngineError> {
        let agent = agent.to_string();
        self.call(|reply| Command::Open {
            agent,
            transport,
            reply,
        })
        .await
    }

    /// Ends a session (connection lost or closed). Dispatched tasks that the agent had not
    /// accepted are re-sent when it comes back.
    pub fn close_session(&self, agent: &str, session: u64) {
        let _ = self.tx.send(Command::Close {
            agent: agent.to_string(),
            session,
        });
    }

    /// Closes every live session of an agent (after `wharf agent revoke`).
    pub fn close_agent(&self, agent: &str, reason: &str) {
        let _ = self.tx.send(Command::CloseAgent {
            agent: agent.to_string(),
            reason: reason.to_string(),
        });
    }

    /// The transport of the agent's live session, if it has one.
    pub async fn session_transport(&self, agent: &str) -> Option<&'static str> {
        let state = self.state.read().await;
        state.sessions.get(agent).map(|s| s.transport)
    }

    /// The agent accepted (journaled) the task's `attempt`; durable before it returns.
    ///
    /// # Errors
    ///
    /// The task is unknown, not the agent's, or the attempt is not current.
    pub async fn accepted(
        &self,
        agent: &str,
        task: TaskId,
        attempt: u32,
    ) -> Result<(), EngineError> {
        let agent = agent.to_string();
        self.call(|reply| Command::Accepted {
            agent,
            task,
            attempt,
            reply,
        })
        .await?
    }

    /// A progress line from the agent: streamed to watchers, not stored.
    ///
    /// # Errors
    ///
    /// The task is unknown or not the agent's.
    pub async fn progress(&self, agent: &str, progress: Progress) -> Result<(), EngineError> {
        {
            let state = self.state.read().await;
            let record = state
                .queue
                .get(progress.task_id)
                .ok_or(QueueError::UnknownTask(progress.task_id))?;
            if record.agent.as_str() != agent {
                return Err(QueueError::WrongAgent {
                    task: progress.task_id,
                    agent: AgentId::new(agent),
                }
                .into());
            }
        }
        let _ = self.events.send(TaskEvent::Progress {
            task_id: progress.task_id,
            step: progress.step,
            line: progress.line,
        });
        Ok(())
    }

    /// A task result from the agent. `Ok` means it is durable (or was already recorded):
    /// the transport then sends `ResultAck` so the agent drops it from its journal.
    ///
    /// # Errors
    ///
    /// The task is unknown or not the agent's: no ack is due.
    pub async fn result(&self, agent: &str, result: TaskResult) -> Result<(), EngineError> {
        let agent = agent.to_string();
        self.call(|reply| Command::Result {
            agent,
            result: Box::new(result),
            reply,
        })
        .await?
    }

    /// Number of tasks per state (for `/metrics`).
    pub async fn counts(&self) -> Vec<(TaskState, usize)> {
        let state = self.state.read().await;
        TaskState::ALL
            .iter()
            .map(|s| (*s, state.queue.count(*s)))
            .collect()
    }
}

fn history<'a>(state: &'a State, agent: &str, target: &str) -> Option<&'a TargetHistory> {
    state
        .last_deploys
        .get(&(agent.to_string(), target.to_string()))
}

/// The images a task may pull, whose registries' credentials it needs: a deploy's image,
/// a Compose lock's services, and for a rollback (which can pull what it goes back to)
/// its sticker's components, else core's record of what ran on the target.
fn credential_images(
    state: &State,
    agent: &str,
    record: &TaskRecord,
    payload: &TaskPayload,
) -> Vec<ImageRef> {
    let of_components = |components: &[wharf_sticker::Component]| {
        components
            .iter()
            .filter_map(|c| ImageRef::parse(&format!("{}@{}", c.image, c.digest)).ok())
            .collect::<Vec<_>>()
    };
    let recorded = || {
        history(state, agent, &record.target)
            .map(|h| {
                let mut images = of_components(&h.current.components);
                if let Some(previous) = &h.previous {
                    images.extend(of_components(&previous.components));
                }
                images
            })
            .unwrap_or_default()
    };
    match payload {
        TaskPayload::Deploy(spec) => ImageRef::parse(&spec.image).into_iter().collect(),
        TaskPayload::ComposeDeploy(spec) => model::compose_images(spec)
            .map(|m| m.into_values().collect())
            .unwrap_or_default(),
        TaskPayload::Rollback(spec) => {
            let from_sticker = spec
                .sticker
                .as_deref()
                .and_then(|s| wharf_sticker::SignedSticker::parse(s.as_bytes()).ok())
                .map(|s| of_components(&s.sticker.components))
                .unwrap_or_default();
            let mut images = from_sticker;
            images.extend(recorded());
            images
        }
        TaskPayload::ComposeRollback(_) => recorded(),
        _ => Vec::new(),
    }
}

/// What a successful deploy or rollback put on its target: the release and components of
/// the sticker core signed for it (a deploy without one: its image).
fn ran_of(id: TaskId, record: &TaskRecord, extras: &TaskExtras) -> Option<Ran> {
    let order = (record.updated_at, record.seq);
    let kind = if extras.payload.kind().is_compose() {
        wharf_sticker::TargetKind::Compose
    } else {
        wharf_sticker::TargetKind::Docker
    };
    let sticker = match &extras.payload {
        TaskPayload::Deploy(spec) => spec.sticker.as_deref(),
        TaskPayload::Rollback(spec) => spec.sticker.as_deref(),
        TaskPayload::ComposeDeploy(spec) => spec.sticker.as_deref(),
        _ => None,
    };
    if let Some(signed) =
        sticker.and_then(|s| wharf_sticker::SignedSticker::parse(s.as_bytes()).ok())
    {
        return Some(Ran {
            task: id,
            order,
            kind,
            release: signed.sticker.release,
            components: signed.sticker.components,
        });
    }
    let TaskPayload::Deploy(spec) = &extras.payload else {
        return None;
    };
    let image = ImageRef::parse(&spec.image).ok()?;
    Some(Ran {
        task: id,
        order,
        kind,
        release: wharf_sticker::Release {
            id: non_empty(&spec.release.id, &id.to_string()),
            name: non_empty(&spec.release.name, &record.target),
            version: non_empty(&spec.release.version, &image_short(&image.pinned())),
        },
        components: vec![wharf_sticker::Component {
            name: record.target.clone(),
            image: image.repository().to_string(),
            digest: image.digest().to_string(),
        }],
    })
}

/// A reply to send once the round's batch is durable.
enum Reply {
    Submit(
        oneshot::Sender<Result<(Submission, TaskView), EngineError>>,
        Result<(Submission, TaskId), EngineError>,
    ),
    View(
        oneshot::Sender<Result<TaskView, EngineError>>,
        Result<TaskId, EngineError>,
    ),
    Unit(
        oneshot::Sender<Result<(), EngineError>>,
        Result<(), EngineError>,
    ),
    Session(oneshot::Sender<Session>, Session),
}

struct Actor {
    rx: mpsc::UnboundedReceiver<Command>,
    state: Arc<RwLock<State>>,
    store: Arc<dyn Store>,
    events: broadcast::Sender<TaskEvent>,
    directory: Arc<dyn AgentDirectory>,
    signing_key: Option<Arc<SigningKey>>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    audit: Option<AuditLog>,
    /// [`EngineConfig::read_task_retention`] in ms.
    read_retention_ms: Option<u64>,
    /// When the next pass over finished read-only tasks is due (ms).
    next_eviction: u64,
}

/// How often finished read-only tasks past their retention are looked for.
const EVICTION_INTERVAL_MS: u64 = 60_000;
/// Most tasks forgotten in one round (the rest go in the next passes).
const MAX_EVICTED_PER_ROUND: usize = 10_000;

/// Whether a task kind only reads the host (its finished tasks may be forgotten).
fn is_read_only_kind(kind: &str) -> bool {
    kind.parse::<TaskKind>().is_ok_and(TaskKind::is_read_only)
}

/// Forgets, when a pass is due (`next`), the finished read-only tasks older than the
/// retention: out of memory here, out of the store in the round's batch (the caller
/// removes the returned ids there).
fn evict_read_tasks(
    retention_ms: Option<u64>,
    next: &mut u64,
    state: &mut State,
    now: u64,
) -> Vec<TaskId> {
    let Some(retention) = retention_ms else {
        return Vec::new();
    };
    if now < *next {
        return Vec::new();
    }
    let evicted = state.queue.evict_finished_where(
        now.saturating_sub(retention),
        MAX_EVICTED_PER_ROUND,
        |r| is_read_only_kind(&r.kind),
    );
    for id in &evicted {
        state.extras.remove(id);
    }
    // A full pass may have left more: look again soon.
    *next = if evicted.len() == MAX_EVICTED_PER_ROUND {
        now
    } else {
        now.saturating_add(EVICTION_INTERVAL_MS)
    };
    evicted
}

/// An audit entry a round owes: written into the round's batch once every command of
/// the round is applied.
enum AuditNote {
    /// A created task (the record is complete).
    Submit(AuditRecord),
    /// A cancelled task; the detail (state after the round) is read at the end.
    Cancel { id: TaskId, actor: String },
}

/// Most commands applied in one round (one durable batch).
const MAX_ROUND: usize = 2048;

impl Actor {
    async fn run(mut self) {
        let mut wakeup: Option<u64> = Some(0);
        loop {
            let mut commands = Vec::new();
            let sleep_for =
                wakeup.map(|at| Duration::from_millis(at.saturating_sub((self.clock)())));
            tokio::select! {
                command = self.rx.recv() => match command {
                    Some(c) => commands.push(c),
                    None => return,
                },
                () = sleep_opt(sleep_for) => {}
            }
            while commands.len() < MAX_ROUND {
                match self.rx.try_recv() {
                    Ok(c) => commands.push(c),
                    Err(_) => break,
                }
            }
            match self.round(commands).await {
                Ok(next) => wakeup = next,
                Err(error) => {
                    tracing::error!(%error, "task engine stopped");
                    return;
                }
            }
        }
    }

    /// Applies the commands, commits the changes, then answers and performs effects.
    async fn round(&mut self, commands: Vec<Command>) -> Result<Option<u64>, EngineError> {
        let now = (self.clock)();
        let mut state = self.state.write().await;
        let mut outcome = Outcome::default();
        let mut replies = Vec::with_capacity(commands.len());
        let mut closes = Vec::new();
        let mut notes = Vec::new();
        for command in commands {
            self.apply(
                &mut state,
                command,
                now,
                &mut outcome,
                (&mut replies, &mut notes),
                &mut closes,
            );
        }
        outcome.merge(state.queue.tick(now));
        // Before `note_deploy`, so core's record still says what ran before each task.
        let evidence = self.evidence(&state, &outcome.changed)?;
        for id in &outcome.changed {
            state.note_deploy(*id);
        }
        let evicted = evict_read_tasks(
            self.read_retention_ms,
            &mut self.next_eviction,
            &mut state,
            now,
        );

        let mut batch = Batch::new();
        for id in &evicted {
            batch.remove(Table::Tasks, id.as_bytes().to_vec());
        }
        for id in &outcome.changed {
            if let Some(task) = state.stored_ref(*id) {
                batch.put_postcard(Table::Tasks, id.as_bytes().to_vec(), &task)?;
            }
        }
        // The audit entries share the round's batch (and flush): durable together with
        // the changes, before anyone is answered. So does each finished task's evidence.
        let audit = self.audit.clone();
        let mut records = audit_records(&state, notes);
        for sealed in evidence {
            batch.put(Table::Evidence, sealed.id.as_bytes().to_vec(), sealed.bytes);
            records.push(sealed.audit);
        }
        let pending = match &audit {
            Some(log) if !records.is_empty() => {
                match log.append_batch_all(&mut batch, records).await {
                    Ok(pending) => Some(pending),
                    Err(error) => {
                        // The changes are applied in memory but cannot be recorded: the
                        // engine stops as for a store failure (nothing is acknowledged
                        // without its audit entry).
                        let message = format!("the audit log cannot be appended to: {error}");
                        for reply in replies {
                            fail_reply(reply, &message);
                        }
                        return Err(EngineError::Store(message));
                    }
                }
            }
            _ => None,
        };
        if !batch.is_empty() {
            if let Err(error) = self.store.commit(batch).await {
                let message = error.to_string();
                for reply in replies {
                    fail_reply(reply, &message);
                }
                return Err(error.into());
            }
        }
        if let Some(pending) = pending {
            pending.committed();
        }
        // Durable: answer, then act.
        for reply in replies {
            match reply {
                Reply::Submit(tx, result) => {
                    let _ = tx.send(result.and_then(|(s, id)| {
                        state
                            .stored(id)
                            .map(|t| (s, TaskView::of(&t)))
                            .ok_or(EngineError::Queue(QueueError::UnknownTask(id)))
                    }));
                }
                Reply::View(tx, result) => {
                    let _ = tx.send(result.and_then(|id| {
                        state
                            .stored(id)
                            .map(|t| TaskView::of(&t))
                            .ok_or(EngineError::Queue(QueueError::UnknownTask(id)))
                    }));
                }
                Reply::Unit(tx, result) => {
                    let _ = tx.send(result);
                }
                Reply::Session(tx, session) => {
                    let _ = tx.send(session);
                }
            }
        }
        for effect in outcome.effects {
            self.perform(&state, effect, now);
        }
        for (entry, reason) in closes {
            let _ = entry.tx.send(SessionCommand::Close { reason });
        }
        let eviction = self.read_retention_ms.map(|_| self.next_eviction);
        Ok(match (state.queue.next_wakeup(), eviction) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// The signed evidence records of the tasks of `changed` that finished now (see
    /// [`crate::evidence`]); none without a signing key.
    fn evidence(
        &self,
        state: &State,
        changed: &[TaskId],
    ) -> Result<Vec<crate::evidence::Sealed>, EngineError> {
        let Some(key) = &self.signing_key else {
            return Ok(Vec::new());
        };
        let mut sealed = Vec::new();
        for id in changed {
            let (Some(record), Some(extras)) = (state.queue.get(*id), state.extras.get(id)) else {
                continue;
            };
            if !crate::evidence::is_due(record, extras.result.as_ref())
                || self.store.get(Table::Evidence, id.as_bytes())?.is_some()
            {
                continue;
            }
            let recorded = history(state, record.agent.as_str(), &record.target);
            // Core's record before this task: its current entry, unless that is this task.
            let (before, earlier) = match recorded {
                Some(h) if h.current.task == *id => (h.previous.as_ref(), None),
                Some(h) => (Some(&h.current), h.previous.as_ref()),
                None => (None, None),
            };
            let (before, earlier) = (before.map(Ran::as_previous), earlier.map(Ran::as_previous));
            let evidence = crate::evidence::build(&crate::evidence::Finished {
                record,
                payload: &extras.payload,
                result: extras.result.as_ref(),
                recorded_before: before.as_ref(),
                recorded_earlier: earlier.as_ref(),
            });
            match crate::evidence::seal(&evidence, key) {
                Ok(s) => sealed.push(s),
                Err(error) => {
                    tracing::error!(task = %id, %error, "cannot sign the evidence record");
                }
            }
        }
        Ok(sealed)
    }

    fn apply(
        &self,
        state: &mut State,
        command: Command,
        now: u64,
        outcome: &mut Outcome,
        (replies, notes): (&mut Vec<Reply>, &mut Vec<AuditNote>),
        closes: &mut Vec<(SessionEntry, String)>,
    ) {
        match command {
            Command::Submit {
                req,
                requester,
                reply,
            } => {
                let detail = model::submit_audit_detail(&req);
                let result = self.submit(state, *req, &requester, now, outcome);
                if let Ok((Submission::Created(_), id)) = &result {
                    notes.push(AuditNote::Submit(
                        AuditRecord::new(requester, "task.submit", id.to_string())
                            .with_detail(detail),
                    ));
                }
                replies.push(Reply::Submit(reply, result));
            }
            Command::Cancel { id, actor, reply } => {
                let result = state
                    .queue
                    .cancel(id, now)
                    .map(|o| {
                        outcome.merge(o);
                        id
                    })
                    .map_err(EngineError::from);
                if result.is_ok() {
                    notes.push(AuditNote::Cancel { id, actor });
                }
                replies.push(Reply::View(reply, result));
            }
            Command::Open {
                agent,
                transport,
                reply,
            } => {
                let (tx, commands) = mpsc::unbounded_channel();
                let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
                let entry = SessionEntry { id, transport, tx };
                if let Some(old) = state.sessions.insert(agent.clone(), entry) {
                    closes.push((old, "replaced by a newer session of the same agent".into()));
                }
                let agent_id = AgentId::new(&agent);
                // A reconnect: leases of unaccepted tasks are cleared, so they are re-sent.
                outcome.merge(state.queue.agent_disconnected(&agent_id, now));
                outcome.merge(state.queue.agent_connected(&agent_id, now));
                replies.push(Reply::Session(reply, Session { id, commands }));
            }
            Command::Close { agent, session } => {
                if state.sessions.get(&agent).is_some_and(|s| s.id == session) {
                    state.sessions.remove(&agent);
                    outcome.merge(state.queue.agent_disconnected(&AgentId::new(&agent), now));
                }
            }
            Command::CloseAgent { agent, reason } => {
                if let Some(entry) = state.sessions.remove(&agent) {
                    closes.push((entry, reason));
                    outcome.merge(state.queue.agent_disconnected(&AgentId::new(&agent), now));
                }
            }
            Command::Accepted {
                agent,
                task,
                attempt,
                reply,
            } => {
                let result = state
                    .queue
                    .accepted(&AgentId::new(&agent), task, attempt, now)
                    .map(|o| outcome.merge(o))
                    .map_err(EngineError::from);
                replies.push(Reply::Unit(reply, result));
            }
            Command::Result {
                agent,
                result,
                reply,
            } => {
                let summary = ResultSummary {
                    success: result.success,
                    retriable: result.retriable,
                    error: result.error.clone(),
                };
                let task = result.task_id;
                let res = state
                    .queue
                    .result(&AgentId::new(&agent), task, result.attempt, summary, now)
                    .map(|o| {
                        if o.changed.contains(&task) {
                            // The first result for this attempt: keep it whole.
                            if let Some(extras) = state.extras.get_mut(&task) {
                                extras.result = Some(*result);
                            }
                        }
                        outcome.merge(o);
                    })
                    .map_err(EngineError::from);
                replies.push(Reply::Unit(reply, res));
            }
        }
    }

    fn submit(
        &self,
        state: &mut State,
        req: SubmitRequest,
        requester: &str,
        now: u64,
        outcome: &mut Outcome,
    ) -> Result<(Submission, TaskId), EngineError> {
        let id = Uuid::new_v4();
        let expires_at = match (req.expires_at, req.expires_in) {
            (Some(at), Some(within)) => Some(at.min(model::ms_to_ts(now).saturating_add(within))),
            (Some(at), None) => Some(at),
            (None, Some(within)) => Some(model::ms_to_ts(now).saturating_add(within)),
            (None, None) => None,
        };
        let timeout = req.timeout.unwrap_or(model::DEFAULT_TASK_TIMEOUT);
        let new = NewTask {
            id,
            kind: req.payload.kind().as_str().to_string(),
            requester: requester.to_string(),
            idempotency_key: req.idempotency_key.clone(),
            payload_hash: payload_hash(&req),
            agent: AgentId::new(&req.agent),
            target: req.target.clone(),
            priority: model::queue_priority(req.priority),
            max_attempts: req.max_attempts.unwrap_or(model::DEFAULT_MAX_ATTEMPTS),
            timeout: timeout.as_duration(),
            expires_at: expires_at.map(model::ts_to_ms),
        };
        // Sign the sticker before the queue sees the task, so a signing failure changes
        // nothing; it is only kept for a created task.
        let mut payload = req.payload.clone();
        // The release a deploy names, with its defaults filled in, so that the container's
        // `wharf.release.*` labels and the sticker say the same.
        if let TaskPayload::Deploy(spec) = &mut payload {
            spec.release = wharf_protocol::ReleaseInfo {
                id: non_empty(&spec.release.id, &id.to_string()),
                name: non_empty(&spec.release.name, &req.target),
                version: non_empty(&spec.release.version, &image_short(&spec.image)),
            };
        }
        if let TaskPayload::ComposeDeploy(spec) = &mut payload {
            spec.release = wharf_protocol::ReleaseInfo {
                id: non_empty(&spec.release.id, &id.to_string()),
                name: non_empty(&spec.release.name, &req.target),
                version: non_empty(&spec.release.version, &id.to_string()),
            };
        }
        let sticker = self.sign_sticker(state, &req, &payload, id, requester, now)?;
        match &mut payload {
            TaskPayload::Deploy(spec) => spec.sticker = sticker,
            TaskPayload::Rollback(spec) => spec.sticker = sticker,
            TaskPayload::ComposeDeploy(spec) => spec.sticker = sticker,
            _ => {}
        }
        let (submission, o) = state.queue.submit(new, now)?;
        match submission {
            Submission::Created(_) => {
                state.extras.insert(
                    id,
                    TaskExtras {
                        payload,
                        priority: req.priority,
                        expires_at,
                        timeout,
                        result: None,
                    },
                );
                outcome.merge(o);
                Ok((submission, id))
            }
            Submission::Existing(existing) => Ok((submission, existing)),
            Submission::Conflict(existing) => Err(EngineError::Conflict {
                key: req.idempotency_key.unwrap_or_default(),
                existing,
            }),
        }
    }

    /// The sticker core signs for a deploy or a rollback (design §6): what the agent
    /// writes after success. Its `previous` is core's record of what runs there now.
    ///
    /// A deploy's release is the one it names (defaults: the target's name and the
    /// digest). A rollback goes to `to` if given (same repository as what runs now), else
    /// to core's record of what ran before the current release; without such a record
    /// there is no sticker, and the agent restores what its host keeps.
    fn sign_sticker(
        &self,
        state: &State,
        req: &SubmitRequest,
        payload: &TaskPayload,
        id: TaskId,
        requester: &str,
        now: u64,
    ) -> Result<Option<String>, EngineError> {
        let Some(key) = &self.signing_key else {
            return Ok(None);
        };
        let history = history(state, &req.agent, &req.target);
        let component = |image: &ImageRef| wharf_sticker::Component {
            name: req.target.clone(),
            image: image.repository().to_string(),
            digest: image.digest().to_string(),
        };
        let (release, components) = match payload {
            TaskPayload::Deploy(spec) => {
                let image = ImageRef::parse(&spec.image).map_err(|e| InvalidSubmit::Field {
                    field: "payload.deploy.image".into(),
                    reason: e.to_string(),
                })?;
                let release = wharf_sticker::Release {
                    id: non_empty(&spec.release.id, &id.to_string()),
                    name: non_empty(&spec.release.name, &req.target),
                    version: non_empty(&spec.release.version, &image_short(&spec.image)),
                };
                (release, vec![component(&image)])
            }
            TaskPayload::Rollback(spec) => {
                let to = spec.to_digest().map_err(|e| InvalidSubmit::Field {
                    field: "payload.rollback.to".into(),
                    reason: e.to_string(),
                })?;
                match (to.map(|d| d.to_string()), history) {
                    (Some(digest), Some(h)) => {
                        let known = std::iter::once(&h.current)
                            .chain(h.previous.as_ref())
                            .find(|r| r.components.iter().any(|c| c.digest == digest));
                        match known {
                            Some(ran) => (ran.release.clone(), ran.components.clone()),
                            None => {
                                let Some(current) = h.current.components.first() else {
                                    return Ok(None);
                                };
                                let pinned = format!("{}@{digest}", current.image);
                                let release = wharf_sticker::Release {
                                    id: id.to_string(),
                                    name: req.target.clone(),
                                    version: image_short(&pinned),
                                };
                                let mut c = current.clone();
                                c.digest = digest;
                                (release, vec![c])
                            }
                        }
                    }
                    (
                        None,
                        Some(TargetHistory {
                            previous: Some(previous),
                            ..
                        }),
                    ) => (previous.release.clone(), previous.components.clone()),
                    _ => return Ok(None),
                }
            }
            TaskPayload::ComposeDeploy(spec) => {
                let images = model::compose_images(spec).map_err(|e| InvalidSubmit::Field {
                    field: "payload.compose_deploy.lock".into(),
                    reason: e.to_string(),
                })?;
                let release = wharf_sticker::Release {
                    id: spec.release.id.clone(),
                    name: spec.release.name.clone(),
                    version: spec.release.version.clone(),
                };
                let components = images
                    .iter()
                    .map(|(service, image)| wharf_sticker::Component {
                        name: service.clone(),
                        image: image.repository().to_string(),
                        digest: image.digest().to_string(),
                    })
                    .collect();
                (release, components)
            }
            _ => return Ok(None),
        };
        let kind = if req.payload.kind().is_compose() {
            wharf_sticker::TargetKind::Compose
        } else {
            wharf_sticker::TargetKind::Docker
        };
        let sticker = wharf_sticker::Sticker {
            target: wharf_sticker::Target {
                agent: req.agent.clone(),
                kind,
                name: req.target.clone(),
            },
            release,
            components,
            deployed_at: model::ms_to_ts(now).to_string(),
            deployed_by: requester.to_string(),
            task_id: id,
            previous: history.map(|h| h.current.as_previous()),
        };
        let signed = wharf_sticker::sign(&sticker, key).map_err(|e| InvalidSubmit::Field {
            field: format!("payload.{}", req.payload.kind().as_str()),
            reason: format!("cannot sign the sticker: {e}"),
        })?;
        String::from_utf8(signed.to_file_bytes())
            .map(Some)
            .map_err(|e| EngineError::Store(format!("sticker is not UTF-8: {e}")))
    }

    fn perform(&self, state: &State, effect: Effect, now: u64) {
        match effect {
            Effect::Dispatch {
                agent,
                task,
                attempt,
            } => {
                let Some(session) = state.sessions.get(agent.as_str()) else {
                    return;
                };
                let (Some(record), Some(extras)) = (state.queue.get(task), state.extras.get(&task))
                else {
                    return;
                };
                let mut assign = AgentTask {
                    id: task,
                    target: record.target.clone(),
                    payload: extras.payload.clone(),
                    credentials: None,
                    timeout: extras.timeout,
                    priority: extras.priority,
                    idempotency_key: record.idempotency_key.clone(),
                    requested_by: record.requester.clone(),
                    assigned_at: model::ms_to_ts(now),
                    expires_at: extras.expires_at,
                    attempt,
                };
                let images = credential_images(state, agent.as_str(), record, &extras.payload);
                match self
                    .directory
                    .seal_credentials(agent.as_str(), &assign, &images)
                {
                    Ok(sealed) => assign.credentials = sealed,
                    Err(error) => {
                        tracing::warn!(%task, agent = agent.as_str(), %error, "cannot seal registry credentials; sending the task without them");
                    }
                }
                let _ = session.tx.send(SessionCommand::Assign(Box::new(assign)));
            }
            Effect::SendCancel { agent, task } => {
                if let Some(session) = state.sessions.get(agent.as_str()) {
                    let _ = session.tx.send(SessionCommand::Cancel(task));
                }
            }
            // Results are acknowledged by the transport once `Engine::result` returns.
            Effect::AckResult { .. } => {}
            Effect::Notify { task, state: s } => {
                let _ = self.events.send(TaskEvent::State {
                    task_id: task,
                    state: s,
                });
            }
        }
    }
}

/// The audit records of a round's notes, in the order of the commands.
fn audit_records(state: &State, notes: Vec<AuditNote>) -> Vec<AuditRecord> {
    notes
        .into_iter()
        .map(|note| match note {
            AuditNote::Submit(record) => record,
            AuditNote::Cancel { id, actor } => {
                let detail = state.queue.get(id).map_or(serde_json::Value::Null, |r| {
                    serde_json::json!({
                        "agent": r.agent.as_str(),
                        "target": r.target,
                        "state": r.state,
                    })
                });
                AuditRecord::new(actor, "task.cancel", id.to_string()).with_detail(detail)
            }
        })
        .collect()
}

fn fail_reply(reply: Reply, message: &str) {
    let error = || EngineError::Store(message.to_string());
    match reply {
        Reply::Submit(tx, _) => {
            let _ = tx.send(Err(error()));
        }
        Reply::View(tx, _) => {
            let _ = tx.send(Err(error()));
        }
        Reply::Unit(tx, _) => {
            let _ = tx.send(Err(error()));
        }
        // The session is not registered durably; the caller sees the engine stop.
        Reply::Session(..) => {}
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

fn non_empty(value: &str, fallback: &str) -> String {
    if value.is_empty() {
        fallback.to_string()
    } else {
        value.to_string()
    }
}

/// `sha256:` plus the first 12 hex digits of the reference's digest: a readable default
/// version when the operator named none.
fn image_short(pinned: &str) -> String {
    pinned
        .rsplit_once("@sha256:")
        .map(|(_, hex)| format!("sha256:{}", &hex[..hex.len().min(12)]))
        .unwrap_or_else(|| pinned.to_string())
}

#[cfg(test)]
mod tests;
