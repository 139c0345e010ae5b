//! The polling session (design.md §2 "Polling", docs/protocol.md §9): HTTPS long polls
//! of `POST /agent/v1/poll` with the agent's client certificate, for hosts where UDP to
//! core is blocked. Same journal, task execution, per-target lock and result rules as the
//! QUIC session:
//!
//! - a task in an answer is journaled, then confirmed in the next poll's `accepted`
//!   (the polling `Accepted`); a known `(task, attempt)` is answered from the journal, an
//!   expired one is refused (`expired`) without running, a new one runs under its
//!   target's lock;
//! - every poll carries the journal's unacknowledged results; each stays until an answer
//!   lists it in `acked_results` (one that three answered polls carried without an ack
//!   is dropped: core refuses it);
//! - progress lines and new results go out at once in a second request, which makes core
//!   answer the held one (at most two requests in flight, reports at most every
//!   [`REPORT_GAP`]);
//! - `cancels` flip the tasks' cancel signals; `next_poll_after` and a 429's
//!   `Retry-After` are waited out;
//! - with `auto`, QUIC is tried again in the background every
//!   [`AgentConfig::quic_retry_every`](super::AgentConfig::quic_retry_every): once it
//!   connects, the polling session ends and hands the QUIC session over.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use wharf_core::pki::ALPN_HTTP11;
use wharf_protocol::{
    from_body, poll_header, to_body, Accepted, AgentTask, Heartbeat, PollRequest, PollResponse,
    Progress, Timestamp, POLL_CONTENT_TYPE, POLL_PATH, PROTOCOL_VERSION,
};

use super::config::RuntimeEvent;
use super::executor::Executor;
use super::identity::{error_chain, http_client, server_name_for};
use super::journal::Admission;
use super::session::{
    acked, capabilities, establish, host_load, ConnectError, Session, SessionState,
    MAX_HELLO_OFFERS,
};
use super::stopping;
use super::tasks::{start_execution, Shared, TaskKey};

/// Shortest time between two requests sent to report (progress, results, accepts).
pub(crate) const REPORT_GAP: Duration = Duration::from_millis(25);
/// Most progress lines kept for the next poll (older ones are dropped first).
const MAX_PROGRESS: usize = 1000;
/// Most results in one poll (the rest go in the next ones).
const MAX_RESULTS_PER_POLL: usize = 32;

/// How a polling session ended.
pub(crate) enum PollEnd {
    /// Shutdown was requested.
    Shutdown,
    /// Core cannot be polled, or refused the agent; `connected` tells whether a poll was
    /// answered first.
    Lost {
        /// Why.
        reason: String,
        /// Whether this session got at least one answer.
        connected: bool,
    },
    /// Core requires a newer agent (HTTP 426 `upgrade required`).
    UpgradeRequired(String),
    /// QUIC works again (`auto`): the session to run instead.
    Quic(Box<Session>),
}

/// What one poll request ended with.
enum Outcome {
    Answer(PollResponse),
    /// 429: wait this long.
    Wait(Duration),
    /// 426.
    Upgrade(String),
    /// Any other failure: the session is over.
    Failed(String),
}

/// What a request carried (to put back what a failed one took).
struct Sent {
    results: Vec<TaskKey>,
    accepted: Vec<Accepted>,
    reports: bool,
}

/// Runs polls until shutdown, a failure, or (with `quic_retry`) a working QUIC session.
pub(crate) async fn run_poll_session<E: Executor>(
    shared: &Arc<Shared<E>>,
    state: &mut SessionState,
    stop: &mut watch::Receiver<bool>,
    quic_retry: Option<Duration>,
) -> PollEnd {
    let config = &shared.config;
    let lost = |reason: String, connected: bool| PollEnd::Lost { reason, connected };
    let server_name = match server_name_for(&config.core_addr, config.server_name.as_deref()) {
        Ok(name) => name,
        Err(reason) => return lost(reason, false),
    };
    let tls = match shared.identity().client_config(&[ALPN_HTTP11]) {
        Ok(tls) => tls,
        Err(error) => return lost(error.to_string(), false),
    };
    let (client, base) =
        match http_client(tls, &config.core_addr, &server_name, config.poll_timeout).await {
            Ok(client) => client,
            Err(error) => return lost(error.to_string(), false),
        };
    let url = format!("{base}{POLL_PATH}");
    let caps = capabilities(shared.executor.as_ref()).join(",");
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel::<Progress>();
    let mut finished = shared.finished.subscribe();
    let mut accepted: Vec<Accepted> = Vec::new();
    let mut progress: Vec<Progress> = Vec::new();
    let mut results_due = true;
    let mut in_flight: FuturesUnordered<BoxFuture<'static, (Sent, Outcome)>> =
        FuturesUnordered::new();
    let mut connected = false;
    let mut wait_until: Option<Instant> = None;
    let mut last_report = Instant::now() - REPORT_GAP;
    let mut quic_at = quic_retry.map(|every| Instant::now() + every);
    let mut quic_try: Option<tokio::task::JoinHandle<Result<Session, ConnectError>>> = None;

    loop {
        let now = Instant::now();
        let waiting = wait_until.is_some_and(|w| w > now);
        let reports = !accepted.is_empty() || !progress.is_empty() || results_due;
        let report_ready = reports && in_flight.len() < 2 && now >= last_report + REPORT_GAP;
        if !waiting && (in_flight.is_empty() || report_ready) {
            let pending = match shared.journal.pending_results() {
                Ok(pending) => pending,
                Err(error) => {
                    tracing::error!(%error, "cannot read the journal");
                    Vec::new()
                }
            };
            let results: Vec<_> = pending.into_iter().take(MAX_RESULTS_PER_POLL).collect();
            let request = PollRequest {
                heartbeat: Heartbeat {
                    running_tasks: shared.running_tasks(),
                    load: host_load(),
                },
                results,
                progress: std::mem::take(&mut progress),
                accepted: std::mem::take(&mut accepted),
            };
            results_due = false;
            let sent = Sent {
                results: request
                    .results
                    .iter()
                    .map(|r| (r.task_id, r.attempt))
                    .collect(),
                accepted: request.accepted.clone(),
                reports: !request.results.is_empty()
                    || !request.accepted.is_empty()
                    || !request.progress.is_empty(),
            };
            if sent.reports {
                last_report = now;
            }
            let call = send(
                client.clone(),
                url.clone(),
                config.agent_version.clone(),
                caps.clone(),
                request,
            );
            in_flight.push(Box::pin(async move { (sent, call.await) }));
            continue;
        }
        let report_wake = (reports && in_flight.len() < 2).then_some(last_report + REPORT_GAP);
        let wake = [wait_until.filter(|_| waiting), report_wake]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            Some((sent, outcome)) = in_flight.next() => match outcome {
                Outcome::Answer(answer) => {
                    if !connected {
                        connected = true;
                        state.sessions += 1;
                        shared.config.emit(RuntimeEvent::TransportInUse { transport: "poll" });
                        shared.config.emit(RuntimeEvent::Connected {
                            session: state.sessions,
                            pending_results: sent.results.len(),
                        });
                        tracing::info!(session = state.sessions, "polling core over HTTPS");
                    }
                    let next = answer.next_poll_after.as_duration();
                    handle_answer(shared, state, &sent, answer, &progress_tx, &mut accepted).await;
                    if !next.is_zero() {
                        wait_until = Some(Instant::now() + next.min(Duration::from_secs(60)));
                    }
                }
                Outcome::Wait(delay) => {
                    tracing::info!(?delay, "core asked to poll later (429)");
                    accepted.extend(sent.accepted);
                    results_due |= !sent.results.is_empty();
                    wait_until = Some(Instant::now() + delay);
                }
                Outcome::Upgrade(reason) => return PollEnd::UpgradeRequired(reason),
                Outcome::Failed(reason) => return lost(reason, connected),
            },
            Some(line) = progress_rx.recv() => {
                if progress.len() >= MAX_PROGRESS {
                    progress.remove(0);
                }
                progress.push(line);
            }
            Ok(()) = finished.changed() => results_due = true,
            () = sleep_opt(wake) => {}
            () = sleep_opt(quic_at.filter(|_| quic_try.is_none())) => {
                let shared = shared.clone();
                let within = shared.config.quic_fallback_after;
                quic_try = Some(tokio::spawn(async move { establish(&shared, within).await }));
            }
            Some(joined) = join_opt(&mut quic_try) => {
                quic_try = None;
                match joined {
                    Ok(Ok(session)) => {
                        tracing::info!("QUIC connects again: leaving HTTPS polling");
                        return PollEnd::Quic(Box::new(session));
                    }
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "QUIC still cannot connect; polling on");
                    }
                    Err(error) => tracing::warn!(%error, "the QUIC attempt failed"),
                }
                quic_at = quic_retry.map(|every| Instant::now() + every);
            }
            _ = stopping(stop) => {
                if let Some(attempt) = quic_try.take() {
                    attempt.abort();
                }
                return PollEnd::Shutdown;
            }
        }
    }
}

/// The attempt's outcome, once it ends (never, without one).
async fn join_opt<T>(
    handle: &mut Option<tokio::task::JoinHandle<T>>,
) -> Option<Result<T, tokio::task::JoinError>> {
    match handle {
        Some(h) => Some(h.await),
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Applies an answer: acks, unacknowledged results counted, cancels, new tasks.
async fn handle_answer<E: Executor>(
    shared: &Arc<Shared<E>>,
    state: &mut SessionState,
    sent: &Sent,
    answer: PollResponse,
    progress_tx: &mpsc::UnboundedSender<Progress>,
    accepted: &mut Vec<Accepted>,
) {
    let acks: HashSet<TaskKey> = answer
        .acked_results
        .iter()
        .map(|a| (a.task_id, a.attempt))
        .collect();
    for &(task_id, attempt) in &acks {
        state.offers.remove(&(task_id, attempt));
        acked(shared, task_id, attempt).await;
    }
    for key in sent.results.iter().filter(|k| !acks.contains(k)) {
        let offers = state.offers.entry(*key).or_insert(0);
        *offers += 1;
        if *offers >= MAX_HELLO_OFFERS {
            tracing::warn!(
                task_id = %key.0,
                attempt = key.1,
                "core did not take this result in {MAX_HELLO_OFFERS} polls (not its task, or \
                 unknown to it): dropping it from the journal"
            );
            state.offers.remove(key);
            if let Err(error) = shared.journal.ack(key.0, key.1).await {
                tracing::error!(%error, "cannot update the journal");
            }
        }
    }
    for task_id in answer.cancels {
        shared.cancel(task_id);
    }
    for task in answer.tasks {
        if let Some(confirm) = take_task(shared, task, progress_tx).await {
            if !accepted.contains(&confirm) {
                accepted.push(confirm);
            }
        }
    }
}

/// Journals a task of an answer and starts it (or answers it from the journal); the
/// confirmation to send, once it is durable.
async fn take_task<E: Executor>(
    shared: &Arc<Shared<E>>,
    task: AgentTask,
    progress_tx: &mpsc::UnboundedSender<Progress>,
) -> Option<Accepted> {
    let (task_id, attempt) = (task.id, task.attempt);
    let admission = match shared.journal.receive(&task).await {
        Ok(a) => a,
        Err(error) => {
            tracing::error!(%task_id, %error, "cannot journal the task: not accepted");
            return None;
        }
    };
    shared.config.emit(RuntimeEvent::TaskReceived {
        task_id,
        attempt,
        known: matches!(admission, Admission::Known(_)),
    });
    match admission {
        // Its result (if any) is in the journal's pending results.
        Admission::Known(_) => {}
        Admission::New if task.is_expired(Timestamp::now()) => {
            shared.refuse_expired(&task).await;
        }
        Admission::New => {
            tracing::info!(%task_id, attempt, target = %task.target, kind = %task.kind(), "task accepted");
            let mut execution = start_execution(shared, task);
            let tx = progress_tx.clone();
            tokio::spawn(async move {
                while let Some(line) = execution.progress.recv().await {
                    let line = Progress {
                        task_id,
                        step: line.step,
                        line: line.line,
                    };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
    }
    Some(Accepted { task_id, attempt })
}

/// One poll request.
async fn send(
    client: reqwest::Client,
    url: String,
    version: String,
    caps: String,
    request: PollRequest,
) -> Outcome {
    let body = match to_body(&request) {
        Ok(body) => body,
        Err(error) => return Outcome::Failed(format!("cannot encode the poll: {error}")),
    };
    let response = client
        .post(&url)
        .header(poll_header::AGENT_VERSION, version)
        .header(poll_header::PROTOCOL_VERSION, PROTOCOL_VERSION.to_string())
        .header(poll_header::CAPABILITIES, caps)
        .header(reqwest::header::CONTENT_TYPE, POLL_CONTENT_TYPE)
        .body(body)
        .send()
        .await;
    let response = match response {
        Ok(r) => r,
        Err(error) => {
            return Outcome::Failed(format!("cannot poll {url}: {}", error_chain(&error)))
        }
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bytes = match response.bytes().await {
        Ok(b) => b,
        Err(error) => {
            return Outcome::Failed(format!(
                "reading core's answer to a poll: {}",
                error_chain(&error)
            ))
        }
    };
    match status.as_u16() {
        200 => match from_body::<PollResponse>(&bytes) {
            Ok(answer) => Outcome::Answer(answer),
            Err(error) => Outcome::Failed(format!("core's poll answer does not decode: {error}")),
        },
        429 => Outcome::Wait(Duration::from_secs(retry_after.unwrap_or(1).clamp(1, 60))),
        426 => Outcome::Upgrade(message(&bytes)),
        401 | 403 => Outcome::Failed(format!(
            "core refused this agent ({}): it was revoked or is not enrolled with this \
                 core; enroll it again with a new token",
            message(&bytes)
        )),
        code => Outcome::Failed(format!(
            "core answered the poll with {code}: {}",
            message(&bytes)
        )),
    }
}

/// The `error.message` of an API error body, or the body's start.
fn message(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned())
}
