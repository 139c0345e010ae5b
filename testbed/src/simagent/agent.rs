//! A running simulated agent: QUIC session, heartbeats, task streams, journal, counters.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;
use wharf_core::pki::{agent_client_config, certs_from_pem, ALPN_WHARF};
use wharf_protocol::{
    error_code, read_frame, write_frame, Accepted, AgentTask, ErrorType, Heartbeat, Hello, Load,
    Message, Progress, TaskKind, TaskPayload, TaskResult, Timestamp, Welcome, DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
};

use super::behaviour::{Behaviour, CancelMode, Outcome};
use super::enroll::{error_chain, Enrolled};
use super::{default_capabilities, SIM_AGENT_VERSION};

/// How long core may take to answer `Hello`.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the agent waits for `ResultAck` after sending a result on a task stream; without
/// it the result stays pending and goes into the next `Hello`.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);
/// Events a subscriber may lag behind before losing the oldest.
const EVENT_BUFFER: usize = 1024;
/// How long the agent waits for the first frame (`Assign`) of a task stream.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a simulated agent could not connect (or lost its session).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimAgentError {
    /// Core answered `Hello` with `Reject { reason }`.
    #[error("core rejected the session: {0}")]
    Rejected(String),
    /// The core address, identity or TLS configuration is not usable.
    #[error("cannot connect: {0}")]
    Setup(String),
    /// The QUIC connection (or its TLS handshake) failed, or core closed it before
    /// answering `Hello`: a refused certificate shows up here (TLS 1.3 refuses client
    /// certificates after the client's handshake has finished).
    #[error("connection to core failed: {0}")]
    Connection(String),
    /// Core broke the protocol (another message than `Welcome`/`Reject`, a frame that does
    /// not decode, no answer in time).
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// Reconnection policy: jittered exponential backoff.
#[derive(Debug, Clone, PartialEq)]
pub struct Reconnect {
    /// Whether to reconnect at all after a session ends. Off: the agent stops.
    pub enabled: bool,
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay (0.5: between 50 % and 150 %).
    pub jitter: f64,
}

impl Default for Reconnect {
    /// 100 ms doubling up to 5 s, ±50 % jitter.
    fn default() -> Self {
        Reconnect {
            enabled: true,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Reconnect {
    /// No reconnection: when the session ends, the agent stops.
    pub fn disabled() -> Self {
        Reconnect {
            enabled: false,
            ..Self::default()
        }
    }

    /// The delay before reconnection attempt `attempt` (0-based), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.initial.as_secs_f64()
            * self
                .multiplier
                .max(1.0)
                .powi(i32::try_from(attempt.min(64)).unwrap_or(64));
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// How a simulated agent connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// A QUIC endpoint to share with other simulated agents (one UDP socket for
    /// thousands of connections, each with its own certificate). `None`: the agent makes
    /// its own (see [`super::SimAgent::endpoint`]).
    pub endpoint: Option<Endpoint>,
    /// The TLS server name to verify core's certificate for; default: the host part of
    /// the core address.
    pub server_name: Option<String>,
    /// Reconnection after a lost session.
    pub reconnect: Reconnect,
    /// Sent as `Hello.agent_version`.
    pub agent_version: String,
    /// Sent as `Hello.capabilities`.
    pub capabilities: Vec<String>,
    /// Time for the QUIC handshake and core's answer to `Hello`.
    pub connect_timeout: Duration,
    /// QUIC keep-alive interval.
    pub keep_alive: Duration,
    /// QUIC idle timeout: how long a silent core (e.g. killed with -9) takes to be noticed.
    pub idle_timeout: Duration,
    /// Capacity of the channel of received tasks ([`SimAgentHandle::next_task`]); tasks
    /// that do not fit are not queued there (they are still run). 0 turns the channel off:
    /// a benchmark with thousands of agents that never reads it should not keep copies.
    pub task_channel_capacity: usize,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            endpoint: None,
            server_name: None,
            reconnect: Reconnect::default(),
            agent_version: SIM_AGENT_VERSION.to_string(),
            capabilities: default_capabilities(),
            connect_timeout: WELCOME_TIMEOUT,
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(15),
            task_channel_capacity: 1024,
        }
    }
}

impl ConnectOptions {
    /// With this shared endpoint.
    pub fn with_endpoint(mut self, endpoint: Endpoint) -> Self {
        self.endpoint = Some(endpoint);
        self
    }

    /// With this reconnection policy.
    pub fn with_reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }

    /// With this idle timeout (and a keep-alive of a third of it).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self.keep_alive = idle / 3;
        self
    }
}

/// Something that happened to a simulated agent, in order (see
/// [`SimAgentHandle::subscribe`]).
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// A session was opened (`Welcome`); `session` counts from 1.
    Connected {
        /// The session number.
        session: u64,
    },
    /// A connection attempt failed (including `Reject`).
    ConnectFailed {
        /// Why.
        error: SimAgentError,
    },
    /// The session ended.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// An `Assign` arrived (a first send or a re-send).
    TaskReceived {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
        /// Its kind.
        kind: TaskKind,
    },
    /// An `Assign` was dropped on purpose ([`Outcome::DropBeforeAccept`]).
    AssignDropped {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
    },
    /// A task attempt ran (once per `(task, attempt)`) and its result was journaled.
    Executed {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
        /// The result's `success`.
        success: bool,
    },
    /// A `Result` was sent on a task stream.
    ResultSent {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
        /// Whether it was answered from the journal (a re-sent `Assign`).
        from_journal: bool,
    },
    /// Polling only: core answered a poll that listed this task in its `accepted` (core
    /// has recorded the task `running`, durably, before answering).
    AcceptConfirmed {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
    },
    /// Core acknowledged a result.
    ResultAcked {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
    },
    /// Core asked to cancel a task.
    CancelReceived {
        /// The task.
        task_id: Uuid,
    },
    /// The agent stopped (shut down, or the session ended without reconnection).
    Stopped,
}

/// Counters of a simulated agent ([`SimAgentHandle::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Whether a session is open now.
    pub connected: bool,
    /// Whether the agent stopped for good.
    pub stopped: bool,
    /// Sessions opened (`Welcome` received).
    pub sessions: u64,
    /// Failed connection attempts (including rejects).
    pub connect_failures: u64,
    /// `Reject`s received.
    pub rejects: u64,
    /// `Assign`s received, re-sends included.
    pub tasks_received: u64,
    /// `Assign`s dropped on purpose.
    pub assigns_dropped: u64,
    /// Task attempts run: at most one per `(task, attempt)`.
    pub executions: u64,
    /// Re-sent `Assign`s answered from the journal instead of running again.
    pub journal_answers: u64,
    /// `Result` frames sent on task streams.
    pub results_sent: u64,
    /// Results carried in `Hello.pending_results`.
    pub results_resent_in_hello: u64,
    /// `ResultAck`s received.
    pub acks: u64,
    /// `Progress` frames sent.
    pub progress_sent: u64,
    /// `Cancel`s received.
    pub cancels_received: u64,
    /// Tasks that stopped early because of a cancel.
    pub cancels_honoured: u64,
    /// `Heartbeat`s sent.
    pub heartbeats_sent: u64,
    /// Results with `success: true` journaled.
    pub succeeded: u64,
    /// Results with `success: false` journaled.
    pub failed: u64,
    /// Polling only: `POST /agent/v1/poll` requests sent.
    pub polls_sent: u64,
    /// Polling only: polls answered `429 Too Many Requests` (core's caps).
    pub polls_throttled: u64,
}

/// One `(task, attempt)` in the agent's in-memory journal.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The task as first received.
    pub task: AgentTask,
    /// How many times it ran: 1 (or 0 for none yet).
    pub executions: u32,
    /// How many re-sent `Assign`s were answered from the journal.
    pub journal_answers: u32,
    /// The result, once the attempt finished (`None` while running, or if it was dropped
    /// after `Accepted`).
    pub result: Option<TaskResult>,
    /// Whether core acknowledged the result.
    pub acked: bool,
    /// Whether the attempt was dropped after `Accepted` ([`Outcome::DropAfterAccept`]).
    pub dropped: bool,
}

pub(super) struct Entry {
    pub(super) view: JournalEntry,
    pub(super) running: bool,
    pub(super) cancel: watch::Sender<bool>,
}

/// What a simulated target holds: the last deploy that succeeded on it.
#[derive(Debug, Clone, Default)]
struct TargetState {
    image: Option<String>,
    previous_image: Option<String>,
    release: Option<String>,
    sticker: Option<String>,
}

#[derive(Default)]
pub(super) struct Counters {
    pub(super) sessions: AtomicU64,
    pub(super) connect_failures: AtomicU64,
    pub(super) rejects: AtomicU64,
    pub(super) tasks_received: AtomicU64,
    pub(super) assigns_dropped: AtomicU64,
    pub(super) executions: AtomicU64,
    pub(super) journal_answers: AtomicU64,
    pub(super) results_sent: AtomicU64,
    pub(super) results_resent_in_hello: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) progress_sent: AtomicU64,
    pub(super) cancels_received: AtomicU64,
    pub(super) cancels_honoured: AtomicU64,
    pub(super) heartbeats_sent: AtomicU64,
    pub(super) succeeded: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) polls_sent: AtomicU64,
    pub(super) polls_throttled: AtomicU64,
}

pub(super) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the handle and the agent's tasks.
pub(super) struct Shared {
    pub(super) name: String,
    pub(super) agent_id: Uuid,
    pub(super) behaviour: RwLock<Behaviour>,
    pub(super) journal: Mutex<HashMap<(Uuid, u32), Entry>>,
    targets: Mutex<HashMap<String, TargetState>>,
    pub(super) counters: Counters,
    pub(super) assigns_seen: AtomicU32,
    pub(super) connected: AtomicBool,
    pub(super) stopped: AtomicBool,
    connection: Mutex<Option<Connection>>,
    changed: watch::Sender<u64>,
    /// Created by the first [`SimAgentHandle::subscribe`]: a broadcast channel
    /// preallocates its buffer, which thousands of agents nobody watches should not pay.
    events: Mutex<Option<broadcast::Sender<SimEvent>>>,
    pub(super) tasks: mpsc::Sender<AgentTask>,
    /// Whether received tasks go into `tasks` (capacity > 0).
    pub(super) task_channel: bool,
}

impl Shared {
    /// A fresh agent state for `enrolled`, and the receiver of its task channel.
    pub(super) fn new(
        enrolled: &Enrolled,
        behaviour: Behaviour,
        task_channel_capacity: usize,
    ) -> (Arc<Shared>, mpsc::Receiver<AgentTask>) {
        let (tasks_tx, tasks_rx) = mpsc::channel(task_channel_capacity.max(1));
        let shared = Arc::new(Shared {
            name: enrolled.name.clone(),
            agent_id: enrolled.agent_id,
            behaviour: RwLock::new(behaviour),
            journal: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            assigns_seen: AtomicU32::new(0),
            connected: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            connection: Mutex::new(None),
            changed: watch::channel(0).0,
            events: Mutex::new(None),
            tasks: tasks_tx,
            task_channel: task_channel_capacity > 0,
        });
        (shared, tasks_rx)
    }

    /// The behaviour in force now.
    pub(super) fn behaviour_now(&self) -> Behaviour {
        self.behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Journals how an executed attempt ended (`None`: dropped after `Accepted`) and
    /// counts it; returns the result, if any.
    pub(super) fn finish_execution(
        &self,
        task_id: Uuid,
        attempt: u32,
        outcome: Option<TaskResult>,
    ) -> Option<TaskResult> {
        let Some(result) = outcome else {
            if let Some(e) = lock(&self.journal).get_mut(&(task_id, attempt)) {
                e.running = false;
                e.view.dropped = true;
            }
            self.bump();
            return None;
        };
        if result.success {
            inc(&self.counters.succeeded);
        } else {
            inc(&self.counters.failed);
        }
        if let Some(e) = lock(&self.journal).get_mut(&(task_id, attempt)) {
            e.running = false;
            e.view.result = Some(result.clone());
        }
        self.event(SimEvent::Executed {
            task_id,
            attempt,
            success: result.success,
        });
        Some(result)
    }

    /// What to do with a received `(task, attempt)`: a new one is journaled (running)
    /// unless the behaviour drops it; a known one is answered from the journal.
    pub(super) fn plan(&self, task: &AgentTask) -> Plan {
        let behaviour = self.behaviour_now();
        let (task_id, attempt) = (task.id, task.attempt);
        {
            let mut journal = lock(&self.journal);
            match journal.get_mut(&(task_id, attempt)) {
                Some(entry) if entry.running => {
                    entry.view.journal_answers += 1;
                    Plan::AwaitRunning
                }
                Some(entry) => {
                    entry.view.journal_answers += 1;
                    match &entry.view.result {
                        Some(r) => Plan::Answer(Box::new(r.clone())),
                        None => Plan::DropAgain,
                    }
                }
                None => {
                    let seen = self.assigns_seen.fetch_add(1, Ordering::Relaxed);
                    if seen < behaviour.drop_first_assigns
                        || *behaviour.outcome_for(task) == Outcome::DropBeforeAccept
                    {
                        Plan::Drop
                    } else {
                        let (cancel, cancel_rx) = watch::channel(false);
                        journal.insert(
                            (task_id, attempt),
                            Entry {
                                view: JournalEntry {
                                    task: task.clone(),
                                    executions: 1,
                                    journal_answers: 0,
                                    result: None,
                                    acked: false,
                                    dropped: false,
                                },
                                running: true,
                                cancel,
                            },
                        );
                        Plan::Execute(Box::new(behaviour), cancel_rx)
                    }
                }
            }
        }
    }

    pub(super) fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(super) fn event(&self, event: SimEvent) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(event);
        }
        self.bump();
    }

    fn stats(&self) -> SimStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            connected: self.connected.load(Ordering::Relaxed),
            stopped: self.stopped.load(Ordering::Relaxed),
            sessions: get(&c.sessions),
            connect_failures: get(&c.connect_failures),
            rejects: get(&c.rejects),
            tasks_received: get(&c.tasks_received),
            assigns_dropped: get(&c.assigns_dropped),
            executions: get(&c.executions),
            journal_answers: get(&c.journal_answers),
            results_sent: get(&c.results_sent),
            results_resent_in_hello: get(&c.results_resent_in_hello),
            acks: get(&c.acks),
            progress_sent: get(&c.progress_sent),
            cancels_received: get(&c.cancels_received),
            cancels_honoured: get(&c.cancels_honoured),
            heartbeats_sent: get(&c.heartbeats_sent),
            succeeded: get(&c.succeeded),
            failed: get(&c.failed),
            polls_sent: get(&c.polls_sent),
            polls_throttled: get(&c.polls_throttled),
        }
    }

    pub(super) fn pending_results(&self) -> Vec<TaskResult> {
        let mut pending: Vec<TaskResult> = lock(&self.journal)
            .values()
            .filter(|e| !e.view.acked)
            .filter_map(|e| e.view.result.clone())
            .collect();
        pending.sort_by_key(|r| (r.completed_at, r.task_id));
        pending
    }

    pub(super) fn running_tasks(&self) -> Vec<Uuid> {
        lock(&self.journal)
            .values()
            .filter(|e| e.running)
            .map(|e| e.view.task.id)
            .collect()
    }

    pub(super) fn ack(&self, task_id: Uuid, attempt: u32) {
        inc(&self.counters.acks);
        if let Some(e) = lock(&self.journal).get_mut(&(task_id, attempt)) {
            e.view.acked = true;
        }
        self.event(SimEvent::ResultAcked { task_id, attempt });
    }

    pub(super) fn request_cancel(&self, task_id: Uuid) {
        inc(&self.counters.cancels_received);
        for ((id, _), entry) in lock(&self.journal).iter() {
            if *id == task_id && entry.running {
                entry.cancel.send_replace(true);
            }
        }
        self.event(SimEvent::CancelReceived { task_id });
    }
}

/// A running simulated agent. Dropping it stops the agent and closes its connection.
pub struct SimAgentHandle {
    shared: Arc<Shared>,
    tasks: tokio::sync::Mutex<mpsc::Receiver<AgentTask>>,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for SimAgentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAgentHandle")
            .field("name", &self.shared.name)
            .field("agent_id", &self.shared.agent_id)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SimAgentHandle {
    /// Starts `run(shared, shutdown)` as the agent's supervisor and returns its handle.
    pub(super) fn spawn<F, Fut>(
        shared: Arc<Shared>,
        tasks: mpsc::Receiver<AgentTask>,
        run: F,
    ) -> SimAgentHandle
    where
        F: FnOnce(Arc<Shared>, watch::Receiver<bool>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let supervisor = tokio::spawn(run(shared.clone(), shutdown_rx));
        SimAgentHandle {
            shared,
            tasks: tokio::sync::Mutex::new(tasks),
            shutdown,
            supervisor: Mutex::new(Some(supervisor)),
        }
    }

    /// The agent's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The agent's id.
    pub fn agent_id(&self) -> Uuid {
        self.shared.agent_id
    }

    /// The counters now.
    pub fn stats(&self) -> SimStats {
        self.shared.stats()
    }

    /// Whether a session is open now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Events from now on (a bounded buffer of 1024: a receiver that lags loses the
    /// oldest). Nothing is buffered for an agent nobody subscribed to.
    pub fn subscribe(&self) -> broadcast::Receiver<SimEvent> {
        lock(&self.shared.events)
            .get_or_insert_with(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    /// The next task received (first sends and re-sends alike), or `None` after `timeout`.
    pub async fn next_task(&self, timeout: Duration) -> Option<AgentTask> {
        let mut rx = self.tasks.lock().await;
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Waits until `condition` holds for the counters, re-checking on every change;
    /// returns the counters that satisfied it, or `Err` with the last ones after
    /// `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut condition: impl FnMut(&SimStats) -> bool,
    ) -> Result<SimStats, SimStats> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let stats = self.stats();
            if condition(&stats) {
                return Ok(stats);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    let stats = self.stats();
                    return if condition(&stats) {
                        Ok(stats)
                    } else {
                        Err(stats)
                    };
                }
            }
        }
    }

    /// Waits until a session is open (`true`) or `timeout` passes (`false`).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.wait_for(timeout, |s| s.connected).await.is_ok()
    }

    /// Replaces the behaviour for tasks that arrive from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self
            .shared
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    /// The behaviour in force.
    pub fn behaviour(&self) -> Behaviour {
        self.shared
            .behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The journal: one entry per `(task, attempt)` received and not dropped before
    /// `Accepted`, ordered by task id then attempt.
    pub fn journal(&self) -> Vec<JournalEntry> {
        let mut entries: Vec<JournalEntry> = lock(&self.shared.journal)
            .values()
            .map(|e| e.view.clone())
            .collect();
        entries.sort_by_key(|e| (e.task.id, e.task.attempt));
        entries
    }

    /// How many times `(task_id, attempt)` ran (0 or 1).
    pub fn executions_of(&self, task_id: Uuid, attempt: u32) -> u32 {
        lock(&self.shared.journal)
            .get(&(task_id, attempt))
            .map_or(0, |e| e.view.executions)
    }

    /// How many attempts of `task_id` ran, all attempts together.
    pub fn executions_of_task(&self, task_id: Uuid) -> u32 {
        lock(&self.shared.journal)
            .iter()
            .filter(|((id, _), _)| *id == task_id)
            .map(|(_, e)| e.view.executions)
            .sum()
    }

    /// Results not yet acknowledged by core (what the next `Hello` carries).
    pub fn pending_results(&self) -> Vec<TaskResult> {
        self.shared.pending_results()
    }

    /// Closes the current connection as if the network dropped it; the agent reconnects
    /// if its policy says so.
    pub fn drop_connection(&self) {
        if let Some(conn) = lock(&self.shared.connection).as_ref() {
            conn.close(VarInt::from_u32(error_code::SHUTDOWN), b"dropped by test");
        }
    }

    /// Stops the agent: closes its connection (code `SHUTDOWN`) and waits for its tasks.
    pub async fn shutdown(&self) {
        self.shutdown.send_replace(true);
        if let Some(conn) = lock(&self.shared.connection).as_ref() {
            conn.close(VarInt::from_u32(error_code::SHUTDOWN), b"shutting down");
        }
        let supervisor = lock(&self.supervisor).take();
        if let Some(handle) = supervisor {
            let _ = handle.await;
        }
    }
}

impl Drop for SimAgentHandle {
    fn drop(&mut self) {
        self.shutdown.send_replace(true);
        if let Some(conn) = lock(&self.shared.connection).as_ref() {
            conn.close(VarInt::from_u32(error_code::SHUTDOWN), b"shutting down");
        }
        if let Some(handle) = lock(&self.supervisor).take() {
            handle.abort();
        }
    }
}

/// Everything needed to (re)connect.
struct Dialer {
    endpoint: Endpoint,
    addr: SocketAddr,
    server_name: String,
    client: quinn::ClientConfig,
    options: ConnectOptions,
}

/// An open session: the connection, the control stream and core's `Welcome`.
struct Session {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    welcome: Welcome,
}

/// Receive and send buffer of a client socket (capped by the kernel's `rmem_max`): one
/// socket may carry thousands of simulated agents, and with the default ~200 KiB a
/// reconnect storm overflowed it (up to 4,000 datagrams dropped per socket, core's
/// stateless resets among them). A real agent has a socket of its own.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Creates a client endpoint on an ephemeral port of the family of `addr`.
pub(crate) fn client_endpoint(addr: SocketAddr) -> std::io::Result<Endpoint> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    // As `Endpoint::client`, with the buffers.
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if bind.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    socket.bind(&bind.into())?;
    Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket.into(),
        std::sync::Arc::new(quinn::TokioRuntime),
    )
}

pub(super) async fn resolve(core_addr: &str) -> Result<(SocketAddr, String), SimAgentError> {
    let addr = tokio::net::lookup_host(core_addr)
        .await
        .map_err(|e| SimAgentError::Setup(format!("cannot resolve {core_addr}: {e}")))?
        .next()
        .ok_or_else(|| SimAgentError::Setup(format!("{core_addr} resolves to no address")))?;
    let host = match core_addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => core_addr,
    };
    Ok((addr, host.to_string()))
}

fn quic_client_config(
    enrolled: &Enrolled,
    options: &ConnectOptions,
) -> Result<quinn::ClientConfig, SimAgentError> {
    let setup = |e: &dyn std::fmt::Display| SimAgentError::Setup(e.to_string());
    let identity = enrolled.tls_identity().map_err(|e| setup(&e))?;
    let ca = certs_from_pem("CA certificate", enrolled.ca_pem.as_bytes()).map_err(|e| setup(&e))?;
    let ca = ca
        .first()
        .ok_or_else(|| SimAgentError::Setup("the identity holds no CA certificate".into()))?;
    let tls = agent_client_config(&identity, ca, &[ALPN_WHARF]).map_err(|e| setup(&e))?;
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| setup(&e))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(options.keep_alive.max(Duration::from_millis(100))));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(options.idle_timeout.max(Duration::from_millis(300)))
            .map_err(|e| setup(&e))?,
    ));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Connects and opens the first session; see [`super::SimAgent::connect_with`].
pub(crate) async fn connect(
    enrolled: &Enrolled,
    core_addr: &str,
    behaviour: Behaviour,
    options: ConnectOptions,
) -> Result<SimAgentHandle, SimAgentError> {
    let (addr, host) = resolve(core_addr).await?;
    let server_name = options.server_name.clone().unwrap_or(host);
    let client = quic_client_config(enrolled, &options)?;
    let endpoint = match &options.endpoint {
        Some(e) => e.clone(),
        None => client_endpoint(addr)
            .map_err(|e| SimAgentError::Setup(format!("cannot open a UDP socket: {e}")))?,
    };
    let (shared, tasks_rx) = Shared::new(enrolled, behaviour, options.task_channel_capacity);
    let dialer = Dialer {
        endpoint,
        addr,
        server_name,
        client,
        options,
    };
    let session = match establish(&shared, &dialer).await {
        Ok(s) => s,
        Err(e) => {
            record_failure(&shared, &e);
            return Err(e);
        }
    };
    Ok(SimAgentHandle::spawn(shared, tasks_rx, |shared, stop| {
        supervise(shared, dialer, session, stop)
    }))
}

pub(super) fn record_failure(shared: &Shared, error: &SimAgentError) {
    inc(&shared.counters.connect_failures);
    if matches!(error, SimAgentError::Rejected(_)) {
        inc(&shared.counters.rejects);
    }
    shared.event(SimEvent::ConnectFailed {
        error: error.clone(),
    });
}

/// Dials core, sends `Hello` with the pending results and waits for `Welcome`.
async fn establish(shared: &Shared, dialer: &Dialer) -> Result<Session, SimAgentError> {
    let attempt = async {
        let connecting = dialer
            .endpoint
            .connect_with(dialer.client.clone(), dialer.addr, &dialer.server_name)
            .map_err(|e| SimAgentError::Setup(e.to_string()))?;
        let conn = connecting
            .await
            .map_err(|e| SimAgentError::Connection(error_chain(&e)))?;
        let closed = |conn: &Connection, what: &str| {
            let reason = conn
                .close_reason()
                .map_or_else(|| what.to_string(), |r| error_chain(&r));
            SimAgentError::Connection(reason)
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Err(SimAgentError::Connection(error_chain(&e))),
        };
        let pending = shared.pending_results();
        let resent = pending.len() as u64;
        let hello = Message::Hello(Hello {
            agent_version: dialer.options.agent_version.clone(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: dialer.options.capabilities.clone(),
            pending_results: pending,
        });
        if let Err(e) = write_frame(&mut send, &hello, DEFAULT_MAX_FRAME).await {
            return Err(closed(&conn, &format!("cannot send Hello: {e}")));
        }
        match read_frame(&mut recv, DEFAULT_MAX_FRAME).await {
            Ok(Some(Message::Welcome(welcome))) => {
                shared
                    .counters
                    .results_resent_in_hello
                    .fetch_add(resent, Ordering::Relaxed);
                Ok(Session {
                    conn,
                    send,
                    recv,
                    welcome,
                })
            }
            Ok(Some(Message::Reject(reject))) => {
                conn.close(VarInt::from_u32(error_code::REJECTED), b"rejected");
                Err(SimAgentError::Rejected(reject.reason))
            }
            Ok(Some(other)) => {
                conn.close(VarInt::from_u32(error_code::PROTOCOL_VIOLATION), b"");
                Err(SimAgentError::Protocol(format!(
                    "core answered Hello with `{}`",
                    other.name()
                )))
            }
            Ok(None) => Err(closed(
                &conn,
                "core closed the control stream without answering Hello",
            )),
            Err(e) => Err(closed(&conn, &format!("reading core's answer: {e}"))),
        }
    };
    match tokio::time::timeout(dialer.options.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(SimAgentError::Protocol(format!(
            "no answer to Hello within {:?}",
            dialer.options.connect_timeout
        ))),
    }
}

/// Resolves once the flag is set (`true`); `false` if its sender is gone first.
pub(super) async fn stopping(flag: &mut watch::Receiver<bool>) -> bool {
    flag.wait_for(|s| *s).await.is_ok()
}

/// Runs sessions one after the other until shutdown (or the first end, without
/// reconnection).
async fn supervise(
    shared: Arc<Shared>,
    dialer: Dialer,
    first: Session,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut session = first;
    loop {
        let reason = run_session(&shared, session, &mut shutdown).await;
        shared.connected.store(false, Ordering::Relaxed);
        *lock(&shared.connection) = None;
        shared.event(SimEvent::Disconnected { reason });
        if *shutdown.borrow() || !dialer.options.reconnect.enabled {
            break;
        }
        let mut attempt = 0u32;
        let next = loop {
            let delay = dialer.options.reconnect.delay(attempt);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stopping(&mut shutdown) => break None,
            }
            let attempted = tokio::select! {
                r = establish(&shared, &dialer) => r,
                _ = stopping(&mut shutdown) => break None,
            };
            match attempted {
                Ok(s) => break Some(s),
                Err(e) => {
                    record_failure(&shared, &e);
                    attempt = attempt.saturating_add(1);
                }
            }
        };
        match next {
            Some(s) => session = s,
            None => break,
        }
    }
    shared.stopped.store(true, Ordering::Relaxed);
    shared.event(SimEvent::Stopped);
}

/// One session: heartbeats, the control stream's messages, and core-opened task streams.
/// Returns why it ended.
async fn run_session(
    shared: &Arc<Shared>,
    session: Session,
    shutdown: &mut watch::Receiver<bool>,
) -> String {
    let Session {
        conn,
        mut send,
        recv,
        welcome,
    } = session;
    let max_frame = welcome.limits.max_frame_len.clamp(1024, DEFAULT_MAX_FRAME);
    *lock(&shared.connection) = Some(conn.clone());
    shared.connected.store(true, Ordering::Relaxed);
    let n = shared.counters.sessions.fetch_add(1, Ordering::Relaxed) + 1;
    shared.event(SimEvent::Connected { session: n });

    let control = tokio::spawn(control_reader(shared.clone(), recv, max_frame));
    let acceptor = {
        let shared = shared.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                match conn.accept_bi().await {
                    Ok((send, recv)) => {
                        tokio::spawn(task_stream(shared.clone(), send, recv, max_frame));
                    }
                    Err(e) => return error_chain(&e),
                }
            }
        })
    };
    let interval = Duration::from_millis(welcome.heartbeat_interval.as_millis().max(50));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut control = control;
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                let heartbeat = Message::Heartbeat(Heartbeat {
                    running_tasks: shared.running_tasks(),
                    load: Load { load1_milli: 0, cpus: 1, mem_total_bytes: 1 << 30, mem_available_bytes: 1 << 29 },
                });
                match write_frame(&mut send, &heartbeat, max_frame).await {
                    Ok(()) => {
                        inc(&shared.counters.heartbeats_sent);
                        shared.bump();
                    }
                    Err(e) => break format!("heartbeat failed: {e}"),
                }
            }
            e = conn.closed() => break error_chain(&e),
            r = &mut control => break match r {
                Ok(reason) => reason,
                Err(e) => format!("control stream reader failed: {e}"),
            },
            _ = stopping(shutdown) => {
                conn.close(VarInt::from_u32(error_code::SHUTDOWN), b"shutting down");
                break "shut down".to_string();
            }
        }
    };
    control.abort();
    acceptor.abort();
    if conn.close_reason().is_none() {
        conn.close(VarInt::from_u32(error_code::NO_ERROR), b"session ended");
    }
    reason
}

/// Reads the control stream after `Welcome`: acks and cancels. Returns why it ended.
async fn control_reader(shared: Arc<Shared>, mut recv: RecvStream, max: u32) -> String {
    loop {
        match read_frame(&mut recv, max).await {
            Ok(Some(Message::ResultAck(ack))) => shared.ack(ack.task_id, ack.attempt),
            Ok(Some(Message::Cancel(c))) => shared.request_cancel(c.task_id),
            Ok(Some(Message::Reject(r))) => {
                return format!("core rejected the session: {}", r.reason)
            }
            Ok(Some(_)) => {}
            Ok(None) => return "core closed the control stream".into(),
            Err(e) => return format!("control stream: {e}"),
        }
    }
}

/// Reads the frames of a task stream after `Assign` into a channel (cancels are applied
/// at once). Ends with the stream.
fn spawn_stream_reader(
    shared: Arc<Shared>,
    mut recv: RecvStream,
    max: u32,
) -> mpsc::Receiver<Result<Message, String>> {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            match read_frame(&mut recv, max).await {
                Ok(Some(msg)) => {
                    if let Message::Cancel(c) = &msg {
                        shared.request_cancel(c.task_id);
                    }
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    break;
                }
            }
        }
    });
    rx
}

/// What to do with an `Assign`, decided under the journal lock.
pub(super) enum Plan {
    /// Reset the stream; nothing journaled.
    Drop,
    /// Run it (first time), with this behaviour and cancel flag.
    Execute(Box<Behaviour>, watch::Receiver<bool>),
    /// Already running on another stream: accept, wait for its result, send it.
    AwaitRunning,
    /// Already finished: accept and send the journaled result.
    Answer(Box<TaskResult>),
    /// Dropped after `Accepted` before: accept and drop again.
    DropAgain,
}

async fn task_stream(shared: Arc<Shared>, mut send: SendStream, recv: RecvStream, max: u32) {
    let mut messages = spawn_stream_reader(shared.clone(), recv, max);
    let task = match tokio::time::timeout(ASSIGN_TIMEOUT, messages.recv()).await {
        Ok(Some(Ok(Message::Assign(task)))) => task,
        Ok(Some(Err(_))) => {
            let _ = send.reset(VarInt::from_u32(error_code::DECODE_ERROR));
            return;
        }
        _ => {
            let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_VIOLATION));
            return;
        }
    };
    let (task_id, attempt) = (task.id, task.attempt);
    inc(&shared.counters.tasks_received);
    if shared.task_channel {
        let _ = shared.tasks.try_send(task.clone());
    }
    shared.event(SimEvent::TaskReceived {
        task_id,
        attempt,
        kind: task.kind(),
    });

    let plan = shared.plan(&task);
    if !matches!(plan, Plan::Drop | Plan::Execute(..)) {
        inc(&shared.counters.journal_answers);
    }

    let accepted = Message::Accepted(Accepted { task_id, attempt });
    let (result, from_journal) = match plan {
        Plan::Drop => {
            inc(&shared.counters.assigns_dropped);
            let _ = send.reset(VarInt::from_u32(error_code::INTERNAL_ERROR));
            shared.event(SimEvent::AssignDropped { task_id, attempt });
            return;
        }
        Plan::DropAgain => {
            let _ = write_frame(&mut send, &accepted, max).await;
            // End the stream without a result (a reset could discard `Accepted` unsent).
            let _ = send.finish();
            shared.bump();
            return;
        }
        Plan::Answer(result) => {
            if write_frame(&mut send, &accepted, max).await.is_err() {
                return;
            }
            (*result, true)
        }
        Plan::AwaitRunning => {
            if write_frame(&mut send, &accepted, max).await.is_err() {
                return;
            }
            match await_result(&shared, task_id, attempt).await {
                Some(r) => (r, true),
                None => {
                    let _ = send.finish();
                    return;
                }
            }
        }
        Plan::Execute(behaviour, cancel) => {
            inc(&shared.counters.executions);
            // A write failure (core gone) does not stop the run: the result is journaled
            // and reported in the next Hello, as a real agent would.
            let mut stream_ok = write_frame(&mut send, &accepted, max).await.is_ok();
            let mut sink = ProgressSink::Stream {
                send: &mut send,
                ok: &mut stream_ok,
                max,
            };
            let outcome = execute(&shared, &task, &behaviour, cancel, &mut sink).await;
            match shared.finish_execution(task_id, attempt, outcome) {
                None => {
                    // Dropped after Accepted: no result, ever.
                    let _ = send.finish();
                    return;
                }
                Some(_) if !stream_ok => return,
                Some(result) => (result, false),
            }
        }
    };

    if write_frame(&mut send, &Message::Result(result), max)
        .await
        .is_err()
    {
        return;
    }
    inc(&shared.counters.results_sent);
    shared.event(SimEvent::ResultSent {
        task_id,
        attempt,
        from_journal,
    });
    let wait_ack = async {
        while let Some(msg) = messages.recv().await {
            if let Ok(Message::ResultAck(ack)) = msg {
                if ack.task_id == task_id && ack.attempt == attempt {
                    return true;
                }
            }
        }
        false
    };
    if let Ok(true) = tokio::time::timeout(ACK_TIMEOUT, wait_ack).await {
        shared.ack(task_id, attempt);
    }
    let _ = send.finish();
}

/// Waits until the running `(task, attempt)` has a result (`None` if it was dropped).
async fn await_result(shared: &Shared, task_id: Uuid, attempt: u32) -> Option<TaskResult> {
    let mut rx = shared.changed.subscribe();
    loop {
        {
            let journal = lock(&shared.journal);
            match journal.get(&(task_id, attempt)) {
                Some(e) if e.running => {}
                Some(e) => return e.view.result.clone(),
                None => return None,
            }
        }
        if rx.changed().await.is_err() {
            return None;
        }
    }
}

/// Where an execution's progress lines go.
pub(super) enum ProgressSink<'a> {
    /// The QUIC task stream; `ok` turns false at the first failed write (and stays so).
    Stream {
        /// The task stream.
        send: &'a mut SendStream,
        /// Whether the stream still works.
        ok: &'a mut bool,
        /// Largest frame.
        max: u32,
    },
    /// The polling session's next request.
    Poll(mpsc::UnboundedSender<Progress>),
}

impl ProgressSink<'_> {
    /// Sends one line; whether it went out.
    async fn send(&mut self, progress: Progress) -> bool {
        match self {
            ProgressSink::Stream { send, ok, max } => {
                if !**ok {
                    return false;
                }
                let sent = write_frame(send, &Message::Progress(progress), *max)
                    .await
                    .is_ok();
                **ok = sent;
                sent
            }
            ProgressSink::Poll(tx) => tx.send(progress).is_ok(),
        }
    }
}

/// "Runs" a task: progress lines over the delay, cancel handling, the planned outcome.
/// `None`: dropped after `Accepted` (no result).
pub(super) async fn execute(
    shared: &Shared,
    task: &AgentTask,
    behaviour: &Behaviour,
    mut cancel: watch::Receiver<bool>,
    sink: &mut ProgressSink<'_>,
) -> Option<TaskResult> {
    let started_at = Timestamp::now();
    if task.is_expired(started_at) {
        return Some(TaskResult::failure(
            task.id,
            task.attempt,
            started_at,
            ErrorType::Expired,
            "the task expired before it started",
        ));
    }
    let steps = behaviour.progress_lines;
    let slice = behaviour.delay / (steps + 1);
    let mut cancelled = false;
    for step in 0..=steps {
        if step > 0 {
            let progress = Progress {
                task_id: task.id,
                step: "simulate".into(),
                line: format!("step {step} of {steps}"),
            };
            if sink.send(progress).await {
                inc(&shared.counters.progress_sent);
            }
        }
        if slice.is_zero() {
            continue;
        }
        if behaviour.cancel == CancelMode::Honour {
            tokio::select! {
                _ = tokio::time::sleep(slice) => {}
                true = stopping(&mut cancel) => { cancelled = true; break }
            }
        } else {
            tokio::time::sleep(slice).await;
        }
    }
    if cancelled {
        inc(&shared.counters.cancels_honoured);
        let mut r = TaskResult::failure(
            task.id,
            task.attempt,
            started_at,
            ErrorType::Cancelled,
            "cancelled by core",
        );
        r.rolled_back = true;
        return Some(r);
    }
    let mut outcome = behaviour.outcome_for(task).clone();
    if outcome == Outcome::Succeed
        && behaviour.fail_rate > 0.0
        && rand::random::<f64>() < behaviour.fail_rate
    {
        outcome = Outcome::fail_retriable(ErrorType::Docker).message("simulated random failure");
    }
    match outcome {
        Outcome::DropAfterAccept | Outcome::DropBeforeAccept => None,
        Outcome::Fail {
            error_type,
            retriable,
            rolled_back,
            message,
        } => {
            let mut r = TaskResult::failure(task.id, task.attempt, started_at, error_type, message);
            r.retriable = retriable;
            r.rolled_back = rolled_back;
            r.logs = vec!["wharf-testbed sim-agent: simulated failure".into()];
            Some(r)
        }
        Outcome::Succeed => {
            let mut r = succeed(shared, task, started_at);
            if r.success {
                if let Some(extra) = behaviour.outputs.get(&task.kind()) {
                    r.outputs
                        .extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
            }
            r.metrics.deploy_ms = Some(u64::try_from(behaviour.delay.as_millis()).unwrap_or(0));
            Some(r)
        }
    }
}

fn digest_of(image: &str) -> Option<&str> {
    image.rsplit_once('@').map(|(_, d)| d)
}

/// A successful answer per kind, kept consistent across tasks through a per-target record
/// (deploys change what inspect and read-sticker report).
fn succeed(shared: &Shared, task: &AgentTask, started_at: Timestamp) -> TaskResult {
    let mut r = TaskResult::success(task.id, task.attempt, started_at);
    let mut out = BTreeMap::new();
    out.insert("simulated".to_string(), "true".to_string());
    let mut targets = lock(&shared.targets);
    let target = targets.entry(task.target.clone()).or_default();
    match &task.payload {
        TaskPayload::Deploy(spec) => {
            target.previous_image = target.image.replace(spec.image.clone());
            target.release = Some(format!("{}@{}", spec.release.name, spec.release.version));
            if let Some(s) = &spec.sticker {
                target.sticker = Some(s.clone());
            }
            out.insert("image".into(), spec.image.clone());
            if let Some(d) = digest_of(&spec.image) {
                out.insert("digest".into(), d.to_string());
            }
        }
        TaskPayload::Rollback(spec) => match target.previous_image.take() {
            Some(prev) => {
                target.image = Some(prev.clone());
                out.insert("image".into(), prev);
                if let Some(s) = &spec.sticker {
                    target.sticker = Some(s.clone());
                }
            }
            None => {
                return TaskResult::failure(
                    task.id,
                    task.attempt,
                    started_at,
                    ErrorType::NotFound,
                    format!("no previous version of {} to roll back to", task.target),
                );
            }
        },
        TaskPayload::Inspect => {
            let exists = target.image.is_some();
            out.insert("exists".into(), exists.to_string());
            out.insert("running".into(), exists.to_string());
            out.insert(
                "state".into(),
                if exists { "running" } else { "missing" }.into(),
            );
            if let Some(image) = &target.image {
                out.insert("image".into(), image.clone());
                if let Some(d) = digest_of(image) {
                    out.insert("digest".into(), d.to_string());
                }
                out.insert("health".into(), "healthy".into());
            }
            if let Some(release) = &target.release {
                out.insert("release".into(), release.clone());
            }
            if let Some(sticker) = &target.sticker {
                out.insert("sticker".into(), sticker.clone());
            }
        }
        TaskPayload::HealthCheck(_) => {
            out.insert("healthy".into(), "true".into());
        }
        TaskPayload::WriteSticker(spec) => {
            target.sticker = Some(spec.sticker.clone());
        }
        TaskPayload::ReadSticker => match &target.sticker {
            Some(s) => {
                out.insert("sticker".into(), s.clone());
            }
            None => {
                return TaskResult::failure(
                    task.id,
                    task.attempt,
                    started_at,
                    ErrorType::NotFound,
                    format!("{} has no sticker", task.target),
                );
            }
        },
        TaskPayload::ComposeDeploy(spec) => {
            for (service, digest) in &spec.expected_digests {
                out.insert(format!("digest.{service}"), digest.clone());
            }
        }
        TaskPayload::ComposeRollback(_) => {}
    }
    r.outputs = out;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let r = Reconnect {
            jitter: 0.0,
            ..Reconnect::default()
        };
        assert_eq!(r.delay(0), Duration::from_millis(100));
        assert_eq!(r.delay(1), Duration::from_millis(200));
        assert_eq!(r.delay(3), Duration::from_millis(800));
        assert_eq!(r.delay(30), Duration::from_secs(5));
        assert_eq!(r.delay(u32::MAX), Duration::from_secs(5));
        let j = Reconnect::default();
        for _ in 0..100 {
            let d = j.delay(2);
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_millis(600));
        }
        assert!(!Reconnect::disabled().enabled);
    }
}
