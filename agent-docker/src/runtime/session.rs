//! The session with core over QUIC (design.md §2): the control stream (`Hello` →
//! `Welcome`/`Reject`, heartbeats, `ResultAck`s of pending results) and the core-opened
//! task streams (`Assign` → `Accepted` → `Progress`* → `Result` → `ResultAck`), with
//! reconnection.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;
use wharf_core::pki::ALPN_WHARF;
use wharf_protocol::{
    capability, error_code, read_frame, write_frame, Accepted, AgentTask, Heartbeat, Hello, Load,
    Message, Progress, TaskResult, Timestamp, Welcome, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
    UPGRADE_REQUIRED,
};

use super::config::RuntimeEvent;
use super::executor::Executor;
use super::identity::{error_chain, server_name_for};
use super::journal::Admission;
use super::stopping;
use super::tasks::{start_execution, Shared, TaskKey};

/// How long core may take to send `Assign` on a stream it opened.
const ASSIGN_TIMEOUT: Duration = Duration::from_secs(30);
/// A result that needs a `Hello` waits at most this long for the task streams to go
/// quiet before the session is cycled anyway.
const CYCLE_MAX_WAIT: Duration = Duration::from_secs(60);
/// How often the session looks for results that need a `Hello`.
const REDELIVERY_CHECK: Duration = Duration::from_millis(500);
/// After this many sessions whose `Hello` carried a result that core never acknowledged,
/// the result is dropped from the journal (core refuses it: unknown task, another agent's).
pub(crate) const MAX_HELLO_OFFERS: u32 = 3;

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ConnectError {
    /// Core answered `Hello` with `Reject`.
    #[error("core rejected the session: {0}")]
    Rejected(String),
    /// The address or the identity is not usable.
    #[error("cannot connect: {0}")]
    Setup(String),
    /// The connection failed or core closed it (a revoked certificate shows up here).
    #[error("connection to core failed: {0}")]
    Connection(String),
    /// Core broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// Shutdown was requested.
    Shutdown,
    /// Closed on purpose to deliver results in a new `Hello`: reconnect at once.
    Cycle,
    /// Lost or closed by core.
    Lost(String),
}

/// An open session before its loop runs.
pub(crate) struct Session {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    welcome: Welcome,
    offered: HashSet<TaskKey>,
    _endpoint: Endpoint,
}

/// The session state that outlives one connection.
#[derive(Default)]
pub(crate) struct SessionState {
    /// Sessions opened so far.
    pub(crate) sessions: u64,
    /// Per pending result: how many `Hello`s (or answered polls) carried it without an
    /// ack.
    pub(crate) offers: HashMap<TaskKey, u32>,
}

fn client_endpoint(addr: SocketAddr) -> std::io::Result<Endpoint> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    };
    Endpoint::client(bind)
}

async fn resolve(
    core_addr: &str,
    server_name: Option<&str>,
) -> Result<(SocketAddr, String), ConnectError> {
    let addr = tokio::net::lookup_host(core_addr)
        .await
        .map_err(|e| ConnectError::Setup(format!("cannot resolve {core_addr}: {e}")))?
        .next()
        .ok_or_else(|| ConnectError::Setup(format!("{core_addr} resolves to no address")))?;
    let name = server_name_for(core_addr, server_name).map_err(ConnectError::Setup)?;
    Ok((addr, name))
}

/// The capabilities announced in `Hello`: the executor's plus sealed credentials.
pub(crate) fn capabilities<E: Executor>(executor: &E) -> Vec<String> {
    let mut caps = executor.capabilities();
    if !caps.iter().any(|c| c == capability::SEALED_CREDENTIALS) {
        caps.push(capability::SEALED_CREDENTIALS.to_string());
    }
    caps
}

/// Why the connection closed, in words, and whether core revoked the agent.
fn close_reason(error: &ConnectionError) -> String {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            let reason = String::from_utf8_lossy(&close.reason);
            let code = close.error_code.into_inner();
            if code == u64::from(error_code::REVOKED) {
                format!(
                    "core refused this agent ({reason}): it was revoked or is not enrolled \
                     with this core; enroll it again with a new token"
                )
            } else {
                format!("core closed the connection (code {code:#x}): {reason}")
            }
        }
        // TLS alert 44, certificate_revoked: core's verifier refused the certificate.
        ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::crypto(CERTIFICATE_REVOKED_ALERT) =>
        {
            "core refused this agent's certificate: it was revoked; enroll the agent again \
             with a new token (wharf agent token create)"
                .to_string()
        }
        other => error_chain(other),
    }
}

/// The TLS alert `certificate_revoked`.
const CERTIFICATE_REVOKED_ALERT: u8 = 44;

/// Dials core, sends `Hello` with the pending results, waits for `Welcome` (all within
/// `within`).
pub(crate) async fn establish<E: Executor>(
    shared: &Shared<E>,
    within: Duration,
) -> Result<Session, ConnectError> {
    let config = &shared.config;
    let attempt = async {
        let (addr, server_name) = resolve(&config.core_addr, config.server_name.as_deref()).await?;
        let identity = shared.identity();
        let tls = identity
            .client_config(&[ALPN_WHARF])
            .map_err(|e| ConnectError::Setup(e.to_string()))?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls))
            .map_err(|e| ConnectError::Setup(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        let idle = config.idle_timeout.max(Duration::from_millis(300));
        transport.keep_alive_interval(Some(idle / 3));
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(idle).map_err(|e| ConnectError::Setup(e.to_string()))?,
        ));
        client.transport_config(Arc::new(transport));
        let endpoint = client_endpoint(addr)
            .map_err(|e| ConnectError::Setup(format!("cannot open a UDP socket: {e}")))?;
        let conn = endpoint
            .connect_with(client, addr, &server_name)
            .map_err(|e| ConnectError::Setup(e.to_string()))?
            .await
            .map_err(|e| ConnectError::Connection(close_reason(&e)))?;
        let closed = |conn: &Connection, what: String| {
            ConnectError::Connection(conn.close_reason().map_or(what, |r| close_reason(&r)))
        };
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| ConnectError::Connection(close_reason(&e)))?;
        let pending = shared
            .journal
            .pending_results()
            .map_err(|e| ConnectError::Setup(e.to_string()))?;
        let offered: HashSet<TaskKey> = pending.iter().map(|r| (r.task_id, r.attempt)).collect();
        let hello = Message::Hello(Hello {
            agent_version: config.agent_version.clone(),
            protocol_version: PROTOCOL_VERSION,
            capabilities: capabilities(shared.executor.as_ref()),
            pending_results: pending,
        });
        if let Err(e) = write_frame(&mut send, &hello, DEFAULT_MAX_FRAME).await {
            return Err(closed(&conn, format!("cannot send Hello: {e}")));
        }
        match read_frame(&mut recv, DEFAULT_MAX_FRAME).await {
            Ok(Some(Message::Welcome(welcome))) => Ok(Session {
                conn,
                send,
                recv,
                welcome,
                offered,
                _endpoint: endpoint,
            }),
            Ok(Some(Message::Reject(reject))) => {
                conn.close(VarInt::from_u32(error_code::REJECTED), b"rejected");
                Err(ConnectError::Rejected(reject.reason))
            }
            Ok(Some(other)) => {
                conn.close(VarInt::from_u32(error_code::PROTOCOL_VIOLATION), b"");
                Err(ConnectError::Protocol(format!(
                    "core answered Hello with {}",
                    other.name()
                )))
            }
            Ok(None) => Err(closed(
                &conn,
                "core closed the control stream without answering Hello".into(),
            )),
            Err(e) => Err(closed(
                &conn,
                format!("reading core's answer to Hello: {e}"),
            )),
        }
    };
    match tokio::time::timeout(within, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Connection(format!(
            "no answer from core over QUIC within {within:?}"
        ))),
    }
}

/// Whether a `Reject` reason means this agent must be upgraded.
pub(crate) fn is_upgrade_required(reason: &str) -> bool {
    reason == UPGRADE_REQUIRED
}

/// Counts open task streams; wakes the session when one ends.
struct StreamGuard<'a>(&'a AtomicUsize);

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Host load for heartbeats, from `/proc` (zeros where it cannot be read).
pub(crate) fn host_load() -> Load {
    let load1_milli = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0, |l| (l * 1000.0).clamp(0.0, f64::from(u32::MAX)) as u32);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| -> u64 {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb.saturating_mul(1024))
    };
    Load {
        load1_milli,
        cpus: std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX)),
        mem_total_bytes: field("MemTotal:"),
        mem_available_bytes: field("MemAvailable:"),
    }
}

/// Runs one session until it ends: heartbeats, acks on the control stream, task streams,
/// and a cycle when a result needs a new `Hello`.
pub(crate) async fn run_session<E: Executor>(
    shared: &Arc<Shared<E>>,
    state: &mut SessionState,
    session: Session,
    shutdown: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let Session {
        conn,
        mut send,
        recv,
        welcome,
        mut offered,
        _endpoint,
    } = session;
    let max = welcome.limits.max_frame_len.clamp(1024, DEFAULT_MAX_FRAME);
    state.sessions += 1;
    shared
        .config
        .emit(RuntimeEvent::TransportInUse { transport: "quic" });
    shared.config.emit(RuntimeEvent::Connected {
        session: state.sessions,
        pending_results: offered.len(),
    });
    tracing::info!(
        session = state.sessions,
        core_version = %welcome.core_version,
        pending_results = offered.len(),
        "connected to core"
    );
    let interval = welcome
        .heartbeat_interval
        .as_duration()
        .max(Duration::from_millis(50));
    let opened = Instant::now();
    let (control_tx, mut control) = mpsc::channel(64);
    let reader = tokio::spawn(read_stream(recv, max, control_tx));
    let streams = Arc::new(AtomicUsize::new(0));
    let acceptor = {
        let shared = shared.clone();
        let conn = conn.clone();
        let streams = streams.clone();
        tokio::spawn(async move {
            let mut handlers = JoinSet::new();
            while let Ok((send, recv)) = conn.accept_bi().await {
                while handlers.try_join_next().is_some() {}
                streams.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let streams = streams.clone();
                handlers.spawn(async move {
                    let _guard = StreamGuard(&streams);
                    task_stream(&shared, send, recv, max).await;
                });
            }
            // The connection is gone: so are its task streams.
            handlers.shutdown().await;
        })
    };
    let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut redelivery = tokio::time::interval(REDELIVERY_CHECK);
    let mut cycle_wanted_since: Option<Instant> = None;
    let end = loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                let beat = Message::Heartbeat(Heartbeat {
                    running_tasks: shared.running_tasks(),
                    load: host_load(),
                });
                if let Err(e) = write_frame(&mut send, &beat, max).await {
                    break SessionEnd::Lost(format!("heartbeat failed: {e}"));
                }
            }
            msg = control.recv() => match msg {
                Some(Ok(Message::ResultAck(ack))) => {
                    offered.remove(&(ack.task_id, ack.attempt));
                    state.offers.remove(&(ack.task_id, ack.attempt));
                    acked(shared, ack.task_id, ack.attempt).await;
                }
                Some(Ok(other)) => {
                    tracing::warn!(message = other.name(), "unexpected message on the control stream");
                }
                Some(Err(e)) => break SessionEnd::Lost(format!("control stream: {e}")),
                None => break SessionEnd::Lost(
                    conn.close_reason().map_or_else(|| "core closed the control stream".into(), |r| close_reason(&r)),
                ),
            },
            e = conn.closed() => break SessionEnd::Lost(close_reason(&e)),
            _ = stopping(shutdown) => {
                conn.close(VarInt::from_u32(error_code::SHUTDOWN), b"agent shutting down");
                break SessionEnd::Shutdown;
            }
            _ = shared.undelivered.notified() => {
                redelivery.reset_immediately();
            }
            _ = redelivery.tick() => {
                let needs = match shared.journal.pending_results() {
                    Ok(pending) => pending.iter().any(|r| !offered.contains(&(r.task_id, r.attempt))),
                    Err(error) => {
                        tracing::error!(%error, "cannot read the journal");
                        false
                    }
                };
                if !needs {
                    cycle_wanted_since = None;
                    continue;
                }
                let since = *cycle_wanted_since.get_or_insert_with(Instant::now);
                if streams.load(Ordering::Relaxed) == 0 || since.elapsed() >= CYCLE_MAX_WAIT {
                    tracing::info!("reconnecting to deliver results whose task stream is gone");
                    let _ = send.finish();
                    conn.close(VarInt::from_u32(error_code::NO_ERROR), b"delivering pending results");
                    break SessionEnd::Cycle;
                }
            }
        }
    };
    reader.abort();
    if conn.close_reason().is_none() {
        conn.close(VarInt::from_u32(error_code::NO_ERROR), b"session ended");
    }
    // With the connection closed the acceptor ends, after its task streams.
    let _ = acceptor.await;
    // Results this session's Hello carried that core never acknowledged, although the
    // session lasted long enough for the acks (they come right after Welcome).
    if opened.elapsed() >= interval * 2 {
        for key in offered {
            let offers = state.offers.entry(key).or_insert(0);
            *offers += 1;
            if *offers >= MAX_HELLO_OFFERS {
                tracing::warn!(
                    task_id = %key.0,
                    attempt = key.1,
                    "core did not take this result in {MAX_HELLO_OFFERS} sessions (not its \
                     task, or unknown to it): dropping it from the journal"
                );
                state.offers.remove(&key);
                if let Err(error) = shared.journal.ack(key.0, key.1).await {
                    tracing::error!(%error, "cannot update the journal");
                }
            }
        }
    }
    end
}

pub(crate) async fn acked<E: Executor>(shared: &Shared<E>, task_id: Uuid, attempt: u32) {
    match shared.journal.ack(task_id, attempt).await {
        Ok(()) => shared
            .config
            .emit(RuntimeEvent::ResultAcked { task_id, attempt }),
        Err(error) => tracing::error!(%task_id, %error, "cannot journal the ack"),
    }
}

/// Reads frames of a stream into a channel; ends with the stream (or its first error).
async fn read_stream(mut recv: RecvStream, max: u32, tx: mpsc::Sender<Result<Message, String>>) {
    loop {
        match read_frame(&mut recv, max).await {
            Ok(Some(msg)) => {
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                return;
            }
        }
    }
}

/// What a task stream is waiting for after `Accepted`.
enum Wait {
    /// The result is known.
    Ready(TaskResult),
    /// A new execution of this stream.
    Execution(super::tasks::Execution),
    /// Running already (a re-sent `Assign`, or a task resumed after a crash).
    Journal,
}

/// Serves one task stream opened by core.
async fn task_stream<E: Executor>(
    shared: &Arc<Shared<E>>,
    mut send: SendStream,
    recv: RecvStream,
    max: u32,
) {
    let (tx, mut inbox) = mpsc::channel(16);
    let reader = tokio::spawn(read_stream(recv, max, tx));
    let task: AgentTask = match tokio::time::timeout(ASSIGN_TIMEOUT, inbox.recv()).await {
        Ok(Some(Ok(Message::Assign(task)))) => task,
        Ok(Some(Err(e))) => {
            tracing::warn!(error = %e, "task stream: the first frame does not decode");
            let _ = send.reset(VarInt::from_u32(error_code::DECODE_ERROR));
            return;
        }
        _ => {
            let _ = send.reset(VarInt::from_u32(error_code::PROTOCOL_VIOLATION));
            return;
        }
    };
    let (task_id, attempt) = (task.id, task.attempt);
    let admission = match shared.journal.receive(&task).await {
        Ok(a) => a,
        Err(error) => {
            tracing::error!(%task_id, %error, "cannot journal the task: not accepted");
            let _ = send.reset(VarInt::from_u32(error_code::INTERNAL_ERROR));
            return;
        }
    };
    shared.config.emit(RuntimeEvent::TaskReceived {
        task_id,
        attempt,
        known: matches!(admission, Admission::Known(_)),
    });
    let wait = match admission {
        Admission::Known(record) => match record.result() {
            Some(r) => Wait::Ready(r.clone()),
            None => Wait::Journal,
        },
        Admission::New if task.is_expired(Timestamp::now()) => {
            Wait::Ready(shared.refuse_expired(&task).await)
        }
        Admission::New => {
            tracing::info!(%task_id, attempt, target = %task.target, kind = %task.kind(), "task accepted");
            Wait::Execution(start_execution(shared, task))
        }
    };
    let mut stream_ok = write_frame(
        &mut send,
        &Message::Accepted(Accepted { task_id, attempt }),
        max,
    )
    .await
    .is_ok();
    let result = match wait {
        Wait::Ready(result) => Some(result),
        Wait::Journal => {
            let waiting = shared.wait_result(task_id, attempt);
            tokio::pin!(waiting);
            loop {
                tokio::select! {
                    r = &mut waiting => break r,
                    msg = inbox.recv() => match msg {
                        Some(Ok(Message::Cancel(c))) if c.task_id == task_id => shared.cancel(task_id),
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => break None,
                    },
                }
            }
        }
        Wait::Execution(mut execution) => loop {
            tokio::select! {
                r = &mut execution.result => {
                    // Progress lines still queued go out before the result.
                    while let (true, Ok(line)) = (stream_ok, execution.progress.try_recv()) {
                        let progress = Message::Progress(Progress { task_id, step: line.step, line: line.line });
                        stream_ok = write_frame(&mut send, &progress, max).await.is_ok();
                    }
                    break r.ok();
                }
                line = execution.progress.recv(), if stream_ok => {
                    if let Some(line) = line {
                        let progress = Message::Progress(Progress { task_id, step: line.step, line: line.line });
                        stream_ok = write_frame(&mut send, &progress, max).await.is_ok();
                    }
                }
                msg = inbox.recv() => match msg {
                    Some(Ok(Message::Cancel(c))) if c.task_id == task_id => shared.cancel(task_id),
                    Some(Ok(_)) => {}
                    // Nobody to report to on this stream: the execution goes on, and its
                    // result waits for the next Hello (the session looks for such results).
                    Some(Err(_)) | None => break None,
                },
            }
        },
    };
    let Some(result) = result else {
        tracing::info!(%task_id, "task stream ended before the result: it goes in the next Hello");
        shared.undelivered.notify_one();
        return;
    };
    if !stream_ok
        || write_frame(&mut send, &Message::Result(result), max)
            .await
            .is_err()
    {
        tracing::info!(%task_id, "task stream gone: the result waits for the next Hello");
        shared.undelivered.notify_one();
        return;
    }
    let wait_ack = async {
        while let Some(msg) = inbox.recv().await {
            match msg {
                Ok(Message::ResultAck(ack)) if ack.task_id == task_id && ack.attempt == attempt => {
                    return true
                }
                Ok(Message::Cancel(_)) => {}
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    if let Ok(true) = tokio::time::timeout(shared.config.ack_timeout, wait_ack).await {
        acked(shared, task_id, attempt).await;
    } else {
        tracing::info!(%task_id, "no ResultAck on the task stream: the result waits for the next Hello");
        shared.undelivered.notify_one();
    }
    let _ = send.finish();
    reader.abort();
}
