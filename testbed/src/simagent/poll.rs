//! The simulated agent's polling mode (docs/protocol.md §9): `POST /agent/v1/poll` over
//! HTTPS with the agent's client certificate instead of a QUIC session. The same journal,
//! behaviours, counters and events as over QUIC:
//!
//! - a task in an answer emits [`SimEvent::TaskReceived`], is journaled (or answered from
//!   the journal when known) and listed in the `accepted` of the next poll, which goes
//!   out at once; the answer to that poll emits [`SimEvent::AcceptConfirmed`];
//! - a task whose behaviour has no delay and no progress lines runs before that poll is
//!   sent, so the confirming poll carries its result too (core answers it at once); a
//!   longer one runs in the background and its progress and result go out in a second
//!   request as soon as they exist (core answers the held one then): at most two
//!   requests in flight, as a real agent;
//! - every poll carries the journal's unacknowledged results (at most 32); one that
//!   three answered polls carried without an ack is given up (core refuses it);
//! - `cancels` flip the tasks' cancel flags; `next_poll_after` and a 429's
//!   `Retry-After` are waited out ([`SimStats::polls_throttled`]);
//! - a failed request (connection refused, timeout, a status other than 200 or 429) ends
//!   the "session" ([`SimEvent::Disconnected`]); the agent polls again after the
//!   [`Reconnect`] backoff, or stops if reconnection is off.
//!
//! One [`reqwest::Client`] per agent (its client certificate is per connection): one
//! keep-alive connection for the long poll, a second one only while a report is sent
//! beside it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use uuid::Uuid;
use wharf_core::pki::{agent_client_config, certs_from_pem, ALPN_HTTP11};
use wharf_protocol::{
    from_body, poll_header, to_body, Accepted, AgentTask, Heartbeat, PollRequest, PollResponse,
    Progress, TaskResult, POLL_CONTENT_TYPE, POLL_PATH, PROTOCOL_VERSION,
};

use super::agent::{
    execute, inc, lock, record_failure, resolve, stopping, Plan, ProgressSink, Reconnect, Shared,
    SimAgentError, SimAgentHandle, SimEvent,
};
use super::behaviour::Behaviour;
use super::enroll::{error_chain, Enrolled};
use super::{default_capabilities, SIM_AGENT_VERSION};

/// Most results in one poll (the rest go in the next ones).
const MAX_RESULTS_PER_POLL: usize = 32;
/// Answered polls that may carry a result without an ack before it is given up.
const MAX_UNACKED_CARRIES: u8 = 3;

/// How a simulated agent polls.
#[derive(Debug, Clone)]
pub struct PollOptions {
    /// The TLS server name to verify core's certificate for; default: the host part of
    /// the core address.
    pub server_name: Option<String>,
    /// What to do after a failed poll.
    pub reconnect: Reconnect,
    /// Sent in the `wharf-agent-version` header.
    pub agent_version: String,
    /// Sent in the `wharf-capabilities` header.
    pub capabilities: Vec<String>,
    /// How long one request may take, connection and a held long poll included (core
    /// holds up to 25 s by default).
    pub request_timeout: Duration,
    /// As [`ConnectOptions::task_channel_capacity`](super::ConnectOptions::task_channel_capacity).
    pub task_channel_capacity: usize,
}

impl Default for PollOptions {
    fn default() -> Self {
        PollOptions {
            server_name: None,
            reconnect: Reconnect::default(),
            agent_version: SIM_AGENT_VERSION.to_string(),
            capabilities: default_capabilities(),
            request_timeout: Duration::from_secs(40),
            task_channel_capacity: 1024,
        }
    }
}

impl PollOptions {
    /// With this reconnection policy.
    pub fn with_reconnect(mut self, reconnect: Reconnect) -> Self {
        self.reconnect = reconnect;
        self
    }
}

/// The HTTPS side: client, URL, headers.
struct Poller {
    client: reqwest::Client,
    url: String,
    agent_version: String,
    capabilities: String,
}

/// How one request ended.
enum Outcome {
    Answer(PollResponse),
    /// 429: wait this long.
    Wait(Duration),
    /// Anything else.
    Failed(SimAgentError),
}

/// What a request carried.
struct Sent {
    accepted: Vec<Accepted>,
    results: Vec<(Uuid, u32)>,
}

impl Poller {
    fn new(
        enrolled: &Enrolled,
        addr: std::net::SocketAddr,
        host: &str,
        options: &PollOptions,
    ) -> Result<Poller, SimAgentError> {
        let setup = |e: &dyn std::fmt::Display| SimAgentError::Setup(e.to_string());
        let identity = enrolled.tls_identity().map_err(|e| setup(&e))?;
        let ca =
            certs_from_pem("CA certificate", enrolled.ca_pem.as_bytes()).map_err(|e| setup(&e))?;
        let ca = ca
            .first()
            .ok_or_else(|| SimAgentError::Setup("the identity holds no CA certificate".into()))?;
        let tls = agent_client_config(&identity, ca, &[ALPN_HTTP11]).map_err(|e| setup(&e))?;
        let name = options.server_name.as_deref().unwrap_or(host);
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(options.request_timeout)
            .connect_timeout(Duration::from_secs(15))
            .pool_max_idle_per_host(2)
            .resolve(name, addr)
            .build()
            .map_err(|e| setup(&error_chain(&e)))?;
        let host = if name.contains(':') {
            format!("[{name}]")
        } else {
            name.to_string()
        };
        Ok(Poller {
            client,
            url: format!("https://{host}:{}{POLL_PATH}", addr.port()),
            agent_version: options.agent_version.clone(),
            capabilities: options.capabilities.join(","),
        })
    }

    fn send(&self, request: &PollRequest) -> BoxFuture<'static, Outcome> {
        let body = to_body(request);
        let call = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, POLL_CONTENT_TYPE)
            .header(poll_header::AGENT_VERSION, &self.agent_version)
            .header(poll_header::PROTOCOL_VERSION, PROTOCOL_VERSION.to_string())
            .header(poll_header::CAPABILITIES, &self.capabilities);
        Box::pin(async move {
            let body = match body {
                Ok(b) => b,
                Err(e) => return Outcome::Failed(SimAgentError::Setup(e.to_string())),
            };
            let response = match call.body(body).send().await {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(SimAgentError::Connection(error_chain(&e))),
            };
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let secs = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or(1);
                return Outcome::Wait(Duration::from_secs(secs.min(60)));
            }
            let bytes = match response.bytes().await {
                Ok(b) => b,
                Err(e) => return Outcome::Failed(SimAgentError::Connection(error_chain(&e))),
            };
            if status == reqwest::StatusCode::UPGRADE_REQUIRED {
                let text = String::from_utf8_lossy(&bytes);
                return Outcome::Failed(SimAgentError::Rejected(text.chars().take(300).collect()));
            }
            if !status.is_success() {
                let text = String::from_utf8_lossy(&bytes);
                return Outcome::Failed(SimAgentError::Connection(format!(
                    "core answered the poll with {status}: {}",
                    text.chars().take(300).collect::<String>()
                )));
            }
            match from_body::<PollResponse>(&bytes) {
                Ok(answer) => Outcome::Answer(answer),
                Err(e) => Outcome::Failed(SimAgentError::Protocol(format!(
                    "the poll answer is not a postcard PollResponse: {e}"
                ))),
            }
        })
    }
}

/// The polling loop's state between requests.
struct PollState {
    shared: Arc<Shared>,
    poller: Poller,
    reconnect: Reconnect,
    accepted: Vec<Accepted>,
    progress: Vec<Progress>,
    results_due: bool,
    /// Answered polls that carried a result without acking it.
    carried: HashMap<(Uuid, u32), u8>,
    /// Given up (refused by core).
    given_up: std::collections::HashSet<(Uuid, u32)>,
    /// Where background executions report.
    progress_tx: mpsc::UnboundedSender<Progress>,
    finished_tx: mpsc::UnboundedSender<()>,
    wait_until: Option<Instant>,
    failures: u32,
}

impl PollState {
    fn request(&mut self) -> (Sent, PollRequest) {
        let results: Vec<TaskResult> = self
            .shared
            .pending_results()
            .into_iter()
            .filter(|r| !self.given_up.contains(&(r.task_id, r.attempt)))
            .take(MAX_RESULTS_PER_POLL)
            .collect();
        for r in &results {
            if let std::collections::hash_map::Entry::Vacant(slot) =
                self.carried.entry((r.task_id, r.attempt))
            {
                slot.insert(0);
                inc(&self.shared.counters.results_sent);
                self.shared.event(SimEvent::ResultSent {
                    task_id: r.task_id,
                    attempt: r.attempt,
                    from_journal: false,
                });
            }
        }
        self.results_due = false;
        let accepted = std::mem::take(&mut self.accepted);
        let request = PollRequest {
            heartbeat: Heartbeat {
                running_tasks: self.shared.running_tasks(),
                load: Default::default(),
            },
            results,
            progress: std::mem::take(&mut self.progress),
            accepted: accepted.clone(),
        };
        let sent = Sent {
            accepted,
            results: request
                .results
                .iter()
                .map(|r| (r.task_id, r.attempt))
                .collect(),
        };
        inc(&self.shared.counters.polls_sent);
        inc(&self.shared.counters.heartbeats_sent);
        (sent, request)
    }

    fn reports(&self) -> bool {
        !self.accepted.is_empty() || !self.progress.is_empty() || self.results_due
    }

    /// Applies an answer (the first of a session counts as connecting).
    fn answered(&mut self, sent: Sent, answer: PollResponse) {
        self.failures = 0;
        let shared = self.shared.clone();
        if !shared
            .connected
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            inc(&shared.counters.sessions);
            let session = shared
                .counters
                .sessions
                .load(std::sync::atomic::Ordering::Relaxed);
            shared.event(SimEvent::Connected { session });
        }
        for a in &sent.accepted {
            shared.event(SimEvent::AcceptConfirmed {
                task_id: a.task_id,
                attempt: a.attempt,
            });
        }
        for ack in &answer.acked_results {
            let key = (ack.task_id, ack.attempt);
            self.carried.remove(&key);
            let fresh = lock(&shared.journal)
                .get(&key)
                .is_some_and(|e| !e.view.acked);
            if fresh {
                shared.ack(ack.task_id, ack.attempt);
            }
        }
        for key in &sent.results {
            if let Some(n) = self.carried.get_mut(key) {
                *n += 1;
                if *n >= MAX_UNACKED_CARRIES {
                    self.carried.remove(key);
                    self.given_up.insert(*key);
                }
            }
        }
        for id in &answer.cancels {
            shared.request_cancel(*id);
        }
        for task in answer.tasks {
            self.received(task);
        }
        let after = answer.next_poll_after.as_duration();
        if !after.is_zero() {
            self.wait_until = Some(Instant::now() + after);
        }
    }

    fn received(&mut self, task: AgentTask) {
        let shared = self.shared.clone();
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
        let accept = Accepted { task_id, attempt };
        match shared.plan(&task) {
            Plan::Drop => {
                inc(&shared.counters.assigns_dropped);
                shared.event(SimEvent::AssignDropped { task_id, attempt });
            }
            Plan::AwaitRunning | Plan::Answer(_) | Plan::DropAgain => {
                // The result (if any) is in the journal and goes in the next polls.
                inc(&shared.counters.journal_answers);
                self.accepted.push(accept);
            }
            Plan::Execute(behaviour, cancel) => {
                inc(&shared.counters.executions);
                self.accepted.push(accept);
                let quick = behaviour.delay.is_zero() && behaviour.progress_lines == 0;
                let mut sink = ProgressSink::Poll(self.progress_tx.clone());
                let run = async move {
                    let outcome = execute(&shared, &task, &behaviour, cancel, &mut sink).await;
                    shared.finish_execution(task_id, attempt, outcome);
                };
                let mut run = Box::pin(run);
                // Nothing to wait for: done at once, and the confirming poll carries the
                // result. Otherwise (or if it did not finish at once) in the background.
                if quick && futures_util::FutureExt::now_or_never(&mut run).is_some() {
                    self.results_due = true;
                } else {
                    let finished = self.finished_tx.clone();
                    tokio::spawn(async move {
                        run.await;
                        let _ = finished.send(());
                    });
                }
            }
        }
    }

    /// A failed request: the session is over; `false` if the agent stops.
    fn failed(&mut self, sent: Sent, error: SimAgentError) -> bool {
        // Put back what it carried (the results are still in the journal).
        let mut accepted = sent.accepted;
        accepted.append(&mut self.accepted);
        self.accepted = accepted;
        self.results_due = true;
        let shared = &self.shared;
        if shared
            .connected
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            shared.event(SimEvent::Disconnected {
                reason: error.to_string(),
            });
        }
        record_failure(shared, &error);
        if !self.reconnect.enabled {
            return false;
        }
        self.wait_until = Some(Instant::now() + self.reconnect.delay(self.failures));
        self.failures = self.failures.saturating_add(1);
        true
    }
}

/// Starts a polling simulated agent; returns once core answered its first poll.
pub(crate) async fn connect_poll(
    enrolled: &Enrolled,
    core_addr: &str,
    behaviour: Behaviour,
    options: PollOptions,
) -> Result<SimAgentHandle, SimAgentError> {
    let (addr, host) = resolve(core_addr).await?;
    let poller = Poller::new(enrolled, addr, &host, &options)?;
    let (shared, tasks_rx) = Shared::new(enrolled, behaviour, options.task_channel_capacity);
    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let (finished_tx, finished_rx) = mpsc::unbounded_channel();
    let mut state = PollState {
        shared: shared.clone(),
        poller,
        reconnect: options.reconnect,
        accepted: Vec::new(),
        progress: Vec::new(),
        results_due: true,
        carried: HashMap::new(),
        given_up: Default::default(),
        progress_tx,
        finished_tx,
        wait_until: None,
        failures: 0,
    };
    // The first poll: answered at once by core (a new session).
    let (sent, request) = state.request();
    match state.poller.send(&request).await {
        Outcome::Answer(answer) => state.answered(sent, answer),
        Outcome::Wait(d) => {
            let error = SimAgentError::Connection(format!(
                "core refused the first poll with 429 (retry after {d:?})"
            ));
            record_failure(&shared, &error);
            return Err(error);
        }
        Outcome::Failed(error) => {
            record_failure(&shared, &error);
            return Err(error);
        }
    }
    Ok(SimAgentHandle::spawn(shared, tasks_rx, move |_, stop| {
        run(state, progress_rx, finished_rx, stop)
    }))
}

async fn run(
    mut state: PollState,
    mut progress_rx: mpsc::UnboundedReceiver<Progress>,
    mut finished_rx: mpsc::UnboundedReceiver<()>,
    mut stop: watch::Receiver<bool>,
) {
    let mut in_flight: FuturesUnordered<BoxFuture<'static, (Sent, Outcome)>> =
        FuturesUnordered::new();
    loop {
        if *stop.borrow() {
            break;
        }
        let now = Instant::now();
        let waiting = state.wait_until.is_some_and(|w| w > now);
        if !waiting && (in_flight.is_empty() || (state.reports() && in_flight.len() < 2)) {
            let (sent, request) = state.request();
            let call = state.poller.send(&request);
            in_flight.push(Box::pin(async move { (sent, call.await) }));
        }
        let wake = state.wait_until.filter(|w| *w > Instant::now());
        tokio::select! {
            Some((sent, outcome)) = in_flight.next() => match outcome {
                Outcome::Answer(answer) => state.answered(sent, answer),
                Outcome::Wait(d) => {
                    inc(&state.shared.counters.polls_throttled);
                    let mut accepted = sent.accepted;
                    accepted.append(&mut state.accepted);
                    state.accepted = accepted;
                    state.wait_until = Some(Instant::now() + d);
                }
                Outcome::Failed(error) => {
                    if !state.failed(sent, error) {
                        break;
                    }
                }
            },
            Some(line) = progress_rx.recv() => state.progress.push(line),
            Some(()) = finished_rx.recv() => state.results_due = true,
            () = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            } => {}
            true = stopping(&mut stop) => break,
        }
    }
    state
        .shared
        .connected
        .store(false, std::sync::atomic::Ordering::Relaxed);
    state
        .shared
        .stopped
        .store(true, std::sync::atomic::Ordering::Relaxed);
    state.shared.event(SimEvent::Stopped);
}
