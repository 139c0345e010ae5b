//! The HTTPS long-poll transport (design.md §2 "Polling", docs/protocol.md §9): the
//! agent sessions behind `POST /agent/v1/poll`, for hosts where UDP is blocked.
//!
//! The HTTP side (client certificate, body limits, status codes) is
//! `core/src/api/poll.rs`; this module owns what outlives one request: a polling agent
//! is a session of the [`Engine`](crate::engine::Engine) with transport `poll`, opened
//! by its first poll and kept between requests, exactly like a QUIC connection.
//!
//! - **Session.** [`PollHub::poll`] opens the engine session on the first poll
//!   ([`Directory::record_session`](crate::directory::Directory::record_session) with
//!   transport `poll`), and records every later poll as a heartbeat. A pump task per
//!   session moves the engine's commands into the session's outbox: `Assign` → the next
//!   answer's `tasks`, `Cancel` → its `cancels`, `Close` → the session ends (a revoked
//!   agent's held request is answered 403 at once).
//! - **Offline.** A session with no poll in flight for [`MISSED_HEARTBEATS_OFFLINE`] ×
//!   [`PollConfig::heartbeat_interval`] is closed: the agent is offline, its unaccepted
//!   tasks are re-sent when it comes back. A request held by core counts as presence.
//! - **Reports.** `accepted` moves tasks `dispatched → running` (the polling form of
//!   `Accepted`); `results` go to the engine, and each one the engine took (durable, or
//!   already recorded) is acknowledged in `acked_results`; `progress` is streamed to
//!   watchers. A report the engine refuses (another agent's task, an unknown task) is
//!   not acknowledged and is counted.
//! - **Long poll.** A request that reported no result is held up to
//!   [`PollConfig::long_poll`] and answered as soon as the outbox has a task or a cancel.
//!   One that reported results is answered at once (with their acks), and so is the
//!   first poll of a session (the agent learns it is connected). A newer request of
//!   the same agent supersedes a held one: the older is answered at once, so an agent
//!   can report (progress, results) while its long poll is out.
//! - **Delivery.** A task leaves the outbox in the answer that carries it. If that answer
//!   is lost, the engine's dispatch lease re-sends the task (docs/protocol.md §8), and
//!   the agent's journal answers the re-send.
//! - **Caps.** At most [`PollConfig::max_requests_per_sec`] requests per agent (token
//!   bucket, burst [`PollConfig::burst`]) and [`PollConfig::max_in_flight`] poll requests
//!   in flight in total; over either, [`PollHub::admit`] refuses before the body is read
//!   (HTTP 429 with `Retry-After`; nothing is applied).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use uuid::Uuid;
use wharf_protocol::{
    negotiate, AgentTask, DurationMs, PollRequest, PollResponse, ResultAck,
    MISSED_HEARTBEATS_OFFLINE,
};

use crate::app::App;
use crate::directory::{AgentRecord, DirectoryError, ErrorKind};
use crate::engine::{EngineError, SessionCommand};

use super::quic::CORE_VERSION;

/// The transport name recorded for polling sessions (`wharf agent list`).
pub const TRANSPORT: &str = "poll";

/// Longest long poll core accepts in its configuration (agents wait 60 s for an answer).
pub const MAX_LONG_POLL: Duration = Duration::from_secs(50);

/// Settings of the polling transport.
#[derive(Debug, Clone, PartialEq)]
pub struct PollConfig {
    /// Longest time a request is held waiting for a task (default 25 s, at most
    /// [`MAX_LONG_POLL`]).
    pub long_poll: Duration,
    /// The heartbeat interval: a session without a poll in flight for
    /// [`MISSED_HEARTBEATS_OFFLINE`] intervals is offline (default 5 s, as on QUIC).
    pub heartbeat_interval: Duration,
    /// Sustained requests per second one agent may make (default 20).
    pub max_requests_per_sec: u32,
    /// Requests one agent may make in a burst above the sustained rate (default 40).
    pub burst: u32,
    /// Poll requests in flight (held or being served) in total (default 20 000).
    pub max_in_flight: usize,
    /// What a refused request is told to wait (`Retry-After`; default 1 s).
    pub retry_after: Duration,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            long_poll: Duration::from_secs(25),
            heartbeat_interval: Duration::from_secs(5),
            max_requests_per_sec: 20,
            burst: 40,
            max_in_flight: 20_000,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl PollConfig {
    /// The long poll in force: between 1 ms and [`MAX_LONG_POLL`].
    pub fn long_poll(&self) -> Duration {
        self.long_poll
            .clamp(Duration::from_millis(1), MAX_LONG_POLL)
    }

    /// How long a session may go without a poll in flight before it is offline.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_interval.max(Duration::from_millis(50)) * MISSED_HEARTBEATS_OFFLINE
    }
}

/// What the agent tells about itself with every poll (the request headers; `Hello` on
/// QUIC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollHello {
    /// The agent's semver version.
    pub agent_version: String,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its capabilities.
    pub capabilities: Vec<String>,
}

/// Why [`PollHub::admit`] refused a request before reading it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollRefusal {
    /// The agent polls faster than [`PollConfig::max_requests_per_sec`].
    #[error("agent polls more than {rate} times per second: wait {retry_after:?} and poll again (core applied nothing of this request)")]
    RateLimited {
        /// The sustained rate allowed.
        rate: u32,
        /// How long to wait.
        retry_after: Duration,
    },
    /// [`PollConfig::max_in_flight`] poll requests are in flight already.
    #[error("core holds {max} poll requests already: wait {retry_after:?} and poll again (core applied nothing of this request)")]
    OverCapacity {
        /// The cap.
        max: usize,
        /// How long to wait.
        retry_after: Duration,
    },
}

impl PollRefusal {
    /// How long the agent should wait.
    pub fn retry_after(&self) -> Duration {
        match self {
            PollRefusal::RateLimited { retry_after, .. }
            | PollRefusal::OverCapacity { retry_after, .. } => *retry_after,
        }
    }
}

/// Why a poll failed after it was admitted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PollError {
    /// The agent is revoked or not enrolled (HTTP 403).
    #[error("{0}")]
    Revoked(String),
    /// Version skew or an unsupported protocol: the reason is `upgrade required` for skew
    /// (HTTP 426).
    #[error("{0}")]
    Rejected(String),
    /// The agent's headers are invalid (HTTP 422), e.g. a capability too long.
    #[error("{0}")]
    Invalid(String),
    /// Core cannot serve the poll now (HTTP 503): the engine stopped, the store failed.
    #[error("{0}")]
    Unavailable(String),
}

/// Counters of the polling transport (see [`PollHub::counters`]).
#[derive(Debug, Default)]
pub struct PollCounters {
    /// Poll requests admitted.
    pub requests: AtomicU64,
    /// Requests refused by the per-agent rate cap.
    pub rate_limited: AtomicU64,
    /// Requests refused because too many were in flight.
    pub over_capacity: AtomicU64,
    /// Polling sessions opened.
    pub sessions_opened: AtomicU64,
    /// Polling sessions closed because the agent stopped polling (offline).
    pub sessions_offline: AtomicU64,
    /// Tasks sent in answers (re-sends included).
    pub tasks_sent: AtomicU64,
    /// Cancels sent in answers.
    pub cancels_sent: AtomicU64,
    /// Results acknowledged.
    pub results_acked: AtomicU64,
    /// Results refused (not acknowledged).
    pub results_refused: AtomicU64,
    /// `accepted` entries or progress lines the engine refused.
    pub reports_refused: AtomicU64,
}

impl PollCounters {
    /// `(name, help, value)` of every counter, for `/metrics` (`wharf_poll_<name>_total`).
    pub fn pairs(&self) -> Vec<(&'static str, &'static str, u64)> {
        let v = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("requests", "Poll requests admitted", v(&self.requests)),
            (
                "rate_limited",
                "Poll requests refused by the per-agent rate cap (429)",
                v(&self.rate_limited),
            ),
            (
                "over_capacity",
                "Poll requests refused because too many were in flight (429)",
                v(&self.over_capacity),
            ),
            (
                "sessions_opened",
                "Polling sessions opened",
                v(&self.sessions_opened),
            ),
            (
                "sessions_offline",
                "Polling sessions closed because the agent stopped polling",
                v(&self.sessions_offline),
            ),
            (
                "tasks_sent",
                "Tasks sent in poll answers (re-sends included)",
                v(&self.tasks_sent),
            ),
            (
                "cancels_sent",
                "Cancels sent in poll answers",
                v(&self.cancels_sent),
            ),
            (
                "results_acked",
                "Results acknowledged to polling agents",
                v(&self.results_acked),
            ),
            (
                "results_refused",
                "Results from polling agents not acknowledged (not theirs, unknown)",
                v(&self.results_refused),
            ),
            (
                "reports_refused",
                "Accepted entries or progress lines from polling agents the engine refused",
                v(&self.reports_refused),
            ),
        ]
    }
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per enrolled agent that ever polled: its rate bucket and its live session.
struct Slot {
    bucket: Bucket,
    session: Option<Arc<PollSession>>,
    /// Serializes the opening of a session for this agent.
    opening: Arc<tokio::sync::Mutex<()>>,
}

/// Why a session ended.
#[derive(Debug, Clone)]
enum Ended {
    /// The engine closed it (revoked, or replaced by a newer session).
    Closed(String),
    /// No poll for the offline span.
    Offline,
    /// The engine stopped.
    EngineStopped,
}

struct Inner {
    tasks: Vec<AgentTask>,
    cancels: Vec<Uuid>,
    ended: Option<Ended>,
    in_flight: u32,
    last_seen: Instant,
    /// The ticket of the newest request: the only one allowed to keep holding.
    holder: u64,
    next_ticket: u64,
}

/// One polling agent's session.
struct PollSession {
    agent: String,
    engine_id: u64,
    inner: Mutex<Inner>,
    notify: Notify,
}

impl PollSession {
    fn ended(&self) -> bool {
        lock(&self.inner).ended.is_some()
    }
}

/// Marks a request in flight for its session; on drop, the session is idle again.
struct Presence(Arc<PollSession>);

impl Drop for Presence {
    fn drop(&mut self) {
        let mut inner = lock(&self.0.inner);
        inner.in_flight = inner.in_flight.saturating_sub(1);
        inner.last_seen = Instant::now();
    }
}

/// An admitted request: counts in [`PollConfig::max_in_flight`] until dropped.
#[derive(Debug)]
pub struct Admission {
    in_flight: Arc<AtomicUsize>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The polling sessions of one core. Share it as `Arc<PollHub>`.
pub struct PollHub {
    app: App,
    config: PollConfig,
    counters: PollCounters,
    slots: Mutex<HashMap<Uuid, Slot>>,
    in_flight: Arc<AtomicUsize>,
}

impl std::fmt::Debug for PollHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PollHub")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl PollHub {
    /// A hub serving `app`'s agents with `config`.
    pub fn new(app: App, config: PollConfig) -> Arc<PollHub> {
        Arc::new(PollHub {
            app,
            config,
            counters: PollCounters::default(),
            slots: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The settings in force.
    pub fn config(&self) -> &PollConfig {
        &self.config
    }

    /// The transport's counters.
    pub fn counters(&self) -> &PollCounters {
        &self.counters
    }

    /// Poll requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Polling sessions open now.
    pub fn sessions(&self) -> usize {
        lock(&self.slots)
            .values()
            .filter(|s| s.session.as_ref().is_some_and(|s| !s.ended()))
            .count()
    }

    /// Checks the caps for a request of `agent_id`, before its body is read.
    ///
    /// # Errors
    ///
    /// [`PollRefusal`]: the request must be answered 429 with its `retry_after`.
    pub fn admit(&self, agent_id: Uuid) -> Result<Admission, PollRefusal> {
        let now = Instant::now();
        {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(agent_id).or_insert_with(|| Slot {
                bucket: Bucket {
                    tokens: f64::from(self.burst()),
                    at: now,
                },
                session: None,
                opening: Arc::new(tokio::sync::Mutex::new(())),
            });
            let rate = f64::from(self.config.max_requests_per_sec.max(1));
            let bucket = &mut slot.bucket;
            let refill = now.saturating_duration_since(bucket.at).as_secs_f64() * rate;
            bucket.tokens = (bucket.tokens + refill).min(f64::from(self.burst()));
            bucket.at = now;
            if bucket.tokens < 1.0 {
                inc(&self.counters.rate_limited);
                let wait = Duration::from_secs_f64((1.0 - bucket.tokens) / rate);
                return Err(PollRefusal::RateLimited {
                    rate: self.config.max_requests_per_sec,
                    retry_after: wait.max(self.config.retry_after),
                });
            }
            bucket.tokens -= 1.0;
        }
        let max = self.config.max_in_flight.max(1);
        let admitted = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            inc(&self.counters.over_capacity);
            return Err(PollRefusal::OverCapacity {
                max,
                retry_after: self.config.retry_after,
            });
        }
        inc(&self.counters.requests);
        Ok(Admission {
            in_flight: self.in_flight.clone(),
        })
    }

    fn burst(&self) -> u32 {
        self.config.burst.max(1)
    }

    /// Serves one admitted poll of `agent` (see the [module docs](self)): reports
    /// applied, then the answer, held up to the long poll when nothing is due.
    ///
    /// # Errors
    ///
    /// [`PollError`]: revoked, version refused, invalid headers, engine stopped.
    pub async fn poll(
        self: &Arc<Self>,
        agent: &AgentRecord,
        hello: &PollHello,
        request: PollRequest,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<PollResponse, PollError> {
        negotiate(CORE_VERSION, &hello.agent_version, hello.protocol_version)
            .map_err(|r| PollError::Rejected(r.reason()))?;
        let (session, opened) = self.session(agent, hello).await?;
        let (ticket, _presence) = {
            let mut inner = lock(&session.inner);
            inner.in_flight += 1;
            inner.last_seen = Instant::now();
            inner.next_ticket += 1;
            inner.holder = inner.next_ticket;
            (inner.next_ticket, Presence(session.clone()))
        };
        // An older held request of this agent answers now.
        session.notify.notify_waiters();

        let engine = &self.app.engine;
        let name = agent.name.as_str();
        let PollRequest {
            heartbeat: _,
            results,
            progress,
            accepted,
        } = request;
        // The first poll of a session is answered at once: the agent learns it is
        // connected (the polling form of `Welcome`).
        let hold = results.is_empty() && !opened;
        let accepts = futures_util::future::join_all(
            accepted
                .iter()
                .map(|a| engine.accepted(name, a.task_id, a.attempt)),
        )
        .await;
        for (a, outcome) in accepted.iter().zip(accepts) {
            if let Err(error) = outcome {
                inc(&self.counters.reports_refused);
                tracing::info!(agent = name, task_id = %a.task_id, attempt = a.attempt, %error, "accepted refused");
                stopped(&error)?;
            }
        }
        if !accepted.is_empty() {
            // Confirmed: no need to send them again.
            lock(&session.inner).tasks.retain(|t| {
                !accepted
                    .iter()
                    .any(|a| a.task_id == t.id && a.attempt == t.attempt)
            });
        }
        let keys: Vec<ResultAck> = results
            .iter()
            .map(|r| ResultAck {
                task_id: r.task_id,
                attempt: r.attempt,
            })
            .collect();
        let outcomes =
            futures_util::future::join_all(results.into_iter().map(|r| engine.result(name, r)))
                .await;
        let mut acked_results = Vec::new();
        for (key, outcome) in keys.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => {
                    inc(&self.counters.results_acked);
                    acked_results.push(key);
                }
                Err(error) => {
                    inc(&self.counters.results_refused);
                    tracing::warn!(agent = name, task_id = %key.task_id, attempt = key.attempt, %error, "result refused");
                    stopped(&error)?;
                }
            }
        }
        for line in progress {
            let task_id = line.task_id;
            if let Err(error) = engine.progress(name, line).await {
                inc(&self.counters.reports_refused);
                tracing::debug!(agent = name, %task_id, %error, "progress refused");
            }
        }

        let deadline = Instant::now() + self.config.long_poll();
        loop {
            let notified = session.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = lock(&session.inner);
                if let Some(ended) = inner.ended.clone() {
                    drop(inner);
                    return self.ended_answer(agent, ended, acked_results);
                }
                let due = !inner.tasks.is_empty() || !inner.cancels.is_empty();
                let superseded = inner.holder != ticket;
                if due || !hold || superseded || Instant::now() >= deadline || *shutdown.borrow() {
                    let tasks = std::mem::take(&mut inner.tasks);
                    let cancels = std::mem::take(&mut inner.cancels);
                    drop(inner);
                    self.counters
                        .tasks_sent
                        .fetch_add(tasks.len() as u64, Ordering::Relaxed);
                    self.counters
                        .cancels_sent
                        .fetch_add(cancels.len() as u64, Ordering::Relaxed);
                    let next_poll_after = if *shutdown.borrow() {
                        DurationMs::from(self.config.retry_after)
                    } else {
                        DurationMs::from_millis(0)
                    };
                    return Ok(PollResponse {
                        tasks,
                        acked_results,
                        cancels,
                        next_poll_after,
                    });
                }
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    fn ended_answer(
        &self,
        agent: &AgentRecord,
        ended: Ended,
        acked_results: Vec<ResultAck>,
    ) -> Result<PollResponse, PollError> {
        let revoked = self
            .app
            .directory
            .agent_by_id(agent.id)
            .is_none_or(|a| a.is_revoked());
        if revoked {
            return Err(PollError::Revoked(format!(
                "agent {} ({}) was revoked: it gets no more tasks; enroll it again with a new token",
                agent.name, agent.id
            )));
        }
        match ended {
            Ended::EngineStopped => Err(PollError::Unavailable(
                "the task engine stopped; core must be restarted".into(),
            )),
            // Replaced (by a QUIC session) or gone offline meanwhile: the acks stand, and
            // the next poll opens a session again.
            Ended::Closed(_) | Ended::Offline => Ok(PollResponse {
                tasks: Vec::new(),
                acked_results,
                cancels: Vec::new(),
                next_poll_after: DurationMs::from_millis(0),
            }),
        }
    }

    /// The agent's live session, or a new one; every poll is a heartbeat.
    async fn session(
        self: &Arc<Self>,
        agent: &AgentRecord,
        hello: &PollHello,
    ) -> Result<(Arc<PollSession>, bool), PollError> {
        let directory = &self.app.directory;
        let (live, opening) = {
            let mut slots = lock(&self.slots);
            let slot = slots.entry(agent.id).or_insert_with(|| Slot {
                bucket: Bucket {
                    tokens: f64::from(self.burst()),
                    at: Instant::now(),
                },
                session: None,
                opening: Arc::new(tokio::sync::Mutex::new(())),
            });
            (
                slot.session.clone().filter(|s| !s.ended()),
                slot.opening.clone(),
            )
        };
        let record = || async {
            let recorded = directory
                .record_session(
                    agent.id,
                    &hello.agent_version,
                    &hello.capabilities,
                    TRANSPORT,
                    SystemTime::now(),
                )
                .await;
            directory_result(recorded)
        };
        if let Some(session) = live {
            record().await?;
            return Ok((session, false));
        }
        let _opening = opening.lock().await;
        // Another request may have opened it meanwhile.
        if let Some(session) = lock(&self.slots)
            .get(&agent.id)
            .and_then(|s| s.session.clone())
            .filter(|s| !s.ended())
        {
            return Ok((session, false));
        }
        record().await?;
        let mut opened = self
            .app
            .engine
            .open_session(&agent.name, TRANSPORT)
            .await
            .map_err(|e| PollError::Unavailable(e.to_string()))?;
        // The engine performs the opening round's dispatches while it holds its state
        // lock: once a read gets through, they are in the channel, and this first answer
        // carries them.
        let _ = self.app.engine.session_transport(&agent.name).await;
        let mut tasks = Vec::new();
        let mut early_end = None;
        while let Ok(command) = opened.commands.try_recv() {
            match command {
                SessionCommand::Assign(task) => {
                    tasks.retain(|t: &AgentTask| t.id != task.id);
                    tasks.push(*task);
                }
                SessionCommand::Cancel(id) => tasks.retain(|t| t.id != id),
                SessionCommand::Close { reason } => early_end = Some(Ended::Closed(reason)),
            }
        }
        inc(&self.counters.sessions_opened);
        tracing::info!(agent = %agent.name, agent_id = %agent.id, session = opened.id, version = %hello.agent_version, "polling session opened");
        let session = Arc::new(PollSession {
            agent: agent.name.clone(),
            engine_id: opened.id,
            inner: Mutex::new(Inner {
                tasks,
                cancels: Vec::new(),
                ended: early_end,
                in_flight: 0,
                last_seen: Instant::now(),
                holder: 0,
                next_ticket: 0,
            }),
            notify: Notify::new(),
        });
        if let Some(slot) = lock(&self.slots).get_mut(&agent.id) {
            slot.session = Some(session.clone());
        }
        tokio::spawn(
            self.clone()
                .pump(agent.id, session.clone(), opened.commands),
        );
        // A revocation that finished before the engine knew this session closed nothing.
        if directory
            .agent_by_id(agent.id)
            .is_none_or(|a| a.is_revoked())
        {
            self.app.engine.close_agent(&agent.name, "revoked");
        }
        Ok((session, true))
    }

    /// Moves the engine's commands into the session's outbox and closes the session when
    /// the agent stops polling.
    async fn pump(
        self: Arc<Self>,
        agent_id: Uuid,
        session: Arc<PollSession>,
        mut commands: mpsc::UnboundedReceiver<SessionCommand>,
    ) {
        let offline_after = self.config.offline_after();
        let ended = loop {
            let wake = {
                let inner = lock(&session.inner);
                inner.last_seen + offline_after
            };
            tokio::select! {
                command = commands.recv() => {
                    let mut inner = lock(&session.inner);
                    match command {
                        Some(SessionCommand::Assign(task)) => {
                            inner.tasks.retain(|t| t.id != task.id);
                            inner.tasks.push(*task);
                        }
                        Some(SessionCommand::Cancel(task_id)) => {
                            inner.tasks.retain(|t| t.id != task_id);
                            if !inner.cancels.contains(&task_id) {
                                inner.cancels.push(task_id);
                            }
                        }
                        Some(SessionCommand::Close { reason }) => break Ended::Closed(reason),
                        None => break Ended::EngineStopped,
                    }
                    drop(inner);
                    session.notify.notify_waiters();
                }
                () = tokio::time::sleep_until(wake) => {
                    let mut inner = lock(&session.inner);
                    let now = Instant::now();
                    if inner.in_flight > 0 {
                        // A request is out: present; look again one span later.
                        inner.last_seen = now;
                    } else if inner.last_seen + offline_after <= now {
                        break Ended::Offline;
                    }
                }
            }
        };
        match &ended {
            Ended::Offline => {
                inc(&self.counters.sessions_offline);
                tracing::info!(agent = %session.agent, ?offline_after, "no poll for the offline span: the polling agent is offline");
            }
            Ended::Closed(reason) => {
                tracing::info!(agent = %session.agent, %reason, "polling session closed");
            }
            Ended::EngineStopped => {
                tracing::info!(agent = %session.agent, "polling session closed: the task engine stopped");
            }
        }
        lock(&session.inner).ended = Some(ended);
        session.notify.notify_waiters();
        self.app
            .engine
            .close_session(&session.agent, session.engine_id);
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get_mut(&agent_id) {
            if slot
                .session
                .as_ref()
                .is_some_and(|s| Arc::ptr_eq(s, &session))
            {
                slot.session = None;
            }
        }
    }
}

/// An engine error that means core cannot go on serving the poll.
fn stopped(error: &EngineError) -> Result<(), PollError> {
    match error {
        EngineError::Store(_) | EngineError::Stopped => {
            Err(PollError::Unavailable(error.to_string()))
        }
        _ => Ok(()),
    }
}

fn directory_result(result: Result<AgentRecord, DirectoryError>) -> Result<(), PollError> {
    match result {
        Ok(_) => Ok(()),
        Err(
            error @ (DirectoryError::AgentRevoked { .. } | DirectoryError::UnknownAgent { .. }),
        ) => Err(PollError::Revoked(error.to_string())),
        Err(error) if error.kind() == ErrorKind::InvalidInput => {
            Err(PollError::Invalid(error.to_string()))
        }
        Err(error) => Err(PollError::Unavailable(format!(
            "core cannot record the session: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_bounds() {
        let c = PollConfig::default();
        assert_eq!(c.long_poll(), Duration::from_secs(25));
        assert_eq!(c.offline_after(), Duration::from_secs(15));
        let big = PollConfig {
            long_poll: Duration::from_secs(3600),
            ..PollConfig::default()
        };
        assert_eq!(big.long_poll(), MAX_LONG_POLL);
    }

    #[test]
    fn refusals_say_what_to_do() {
        let r = PollRefusal::RateLimited {
            rate: 20,
            retry_after: Duration::from_secs(1),
        };
        assert!(r.to_string().contains("wait 1s"));
        assert_eq!(r.retry_after(), Duration::from_secs(1));
    }
}
