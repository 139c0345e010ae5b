//! The `wharf/1` QUIC listener (design.md §2): agents dial core over QUIC with mutual TLS,
//! say `Hello` on a control stream, and get their tasks on core-opened task streams.
//!
//! # Entry points (what `wharf-core serve` calls)
//!
//! ```text
//! pub async fn serve(
//!     app: App,
//!     counters: Arc<TransportCounters>,
//!     addr: SocketAddr,
//!     shutdown: tokio::sync::watch::Receiver<bool>,
//! ) -> anyhow::Result<()>
//! ```
//!
//! [`serve`] binds UDP `addr` with the default [`QuicConfig`] (5 s heartbeats, 16 MiB
//! frames) and serves until `shutdown` turns `true` (or its sender is dropped): then every
//! connection is closed with [`error_code::SHUTDOWN`] and `serve` returns `Ok(())`. It fails
//! only at start (address in use, PKI files unreadable). `counters` are the
//! [`TransportCounters`] `/metrics` shows; pass `Arc::default()` if nobody reads them.
//!
//! For another configuration, or to learn the bound port (tests bind `127.0.0.1:0`), use
//! [`QuicServer::bind`] + [`QuicServer::local_addr`] + [`QuicServer::run`]; [`server_config`]
//! gives the `quinn::ServerConfig` alone.
//!
//! # One connection
//!
//! 1. TLS 1.3 handshake, ALPN `wharf/1`; the client certificate must chain to the Wharf CA
//!    and not be revoked (checked by the verifier of [`mtls_server_config`]). TLS session
//!    resumption is disabled: a resumed TLS 1.3 session restores the client certificate
//!    without running the verifier again, which would let a revoked agent back in. A failed
//!    handshake is counted ([`TransportCounters::handshakes_failed`]) and affects no other
//!    connection.
//! 2. The agent id comes from the certificate (`wharf://agent/<id>`) and is looked up in the
//!    [`Directory`](crate::directory::Directory): unknown or revoked closes the connection
//!    with [`error_code::REVOKED`].
//! 3. The agent opens the control stream (first bi stream) and sends `Hello` within
//!    [`QuicConfig::hello_timeout`]. [`negotiate`] decides: `Reject {reason}` (exactly
//!    `upgrade required` for version skew) then a close with [`error_code::REJECTED`]; or
//!    the session is recorded ([`Directory::record_session`](crate::directory::Directory::record_session),
//!    transport `quic`) and `Welcome {core_version, heartbeat_interval, limits}` is sent.
//! 4. Each `Hello.pending_results` entry goes through [`Engine::result`](crate::engine::Engine::result);
//!    each one the engine takes (stored now or earlier: dedup is the queue's, by task and
//!    attempt) is answered `ResultAck {task_id, attempt}` on the control stream, in order.
//!    A refused one (another agent's task, unknown task) gets no ack.
//! 5. [`Engine::open_session`](crate::engine::Engine::open_session) (a newer session of the
//!    same agent replaces the older one). From then on:
//!    - control stream: `Heartbeat` → [`Directory::touch`](crate::directory::Directory::touch);
//!      anything else is a protocol violation;
//!    - no frame on the control stream for 3 heartbeat intervals: the agent is offline and
//!      the connection is closed ([`error_code::PROTOCOL_VIOLATION`], reason says why);
//!    - `SessionCommand::Assign` → a new bi stream carrying `Assign(task)`, served by its own
//!      task (see below); `SessionCommand::Cancel` → `Cancel` on that task's open stream;
//!      `SessionCommand::Close` → close the connection ([`error_code::REVOKED`] when the
//!      agent is revoked, [`error_code::NO_ERROR`] when a newer session replaced it).
//! 6. When the connection ends, [`Engine::close_session`](crate::engine::Engine::close_session):
//!    dispatched tasks the agent had not accepted are re-sent when it comes back.
//!
//! A task stream reads `Accepted` ([`Engine::accepted`](crate::engine::Engine::accepted)),
//! `Progress`* ([`Engine::progress`](crate::engine::Engine::progress)) and `Result`
//! ([`Engine::result`](crate::engine::Engine::result), then `ResultAck` and the stream is
//! finished). A message for another task than the stream's, or one the engine refuses
//! (another agent's task, a stale attempt...), closes the stream with
//! [`error_code::PROTOCOL_VIOLATION`] and no ack.
//!
//! # Frames
//!
//! Frames are read with the protocol crate's rules and the configured limit
//! ([`Limits::max_frame_len`], at most 16 MiB): the `Hello` with [`read_frame`], later frames
//! with a [`FrameDecoder`] over quinn's cancel-safe `read_chunk` (they are read inside
//! `select!` loops, where `read_frame` is not cancel-safe). An oversized or undecodable frame
//! closes that stream, both directions, with the error's code
//! ([`FrameError::error_code`]) and is counted. A failed control stream ends the session:
//! the connection is closed with the same code a moment later (so the stream reset reaches
//! the agent first). Nothing here panics on peer input.
//!
//! Garbage datagrams are dropped by quinn; those that cannot be QUIC at all are counted on
//! the way in ([`TransportCounters::datagrams_malformed`]). The endpoint does not grease
//! the QUIC fixed bit, so a datagram with that bit clear is garbage.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use quinn::crypto::rustls::QuicServerConfig;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Connection, RecvStream, Runtime as _, SendStream, UdpPoller, VarInt};
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument as _;
use uuid::Uuid;
use wharf_protocol::{
    error_code, negotiate, read_frame, write_frame, AgentTask, Cancel, DurationMs, FrameDecoder,
    FrameError, Limits, Message, Reject, ResultAck, Welcome, ALPN, DEFAULT_MAX_FRAME,
    MISSED_HEARTBEATS_OFFLINE,
};

use super::TransportCounters;
use crate::app::App;
use crate::directory::{AgentRecord, DirectoryError, ErrorKind};
use crate::engine::{EngineError, SessionCommand};
use crate::pki::{agent_id_from_peer_certificates, mtls_server_config, RevocationCheck};

/// Core's version, announced in `Welcome` and checked against the agent's by [`negotiate`].
pub const CORE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The transport name recorded for sessions of this listener (`wharf agent list`).
pub const TRANSPORT: &str = "quic";

/// Default heartbeat interval announced in `Welcome`.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// Default time an agent has, from the end of the handshake, to open its control stream
/// and send `Hello`.
pub const DEFAULT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Receive and send buffer asked for the listener's UDP socket (the kernel caps it at
/// `net.core.rmem_max`/`wmem_max`).
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Default of [`QuicConfig::max_connecting`].
pub const DEFAULT_MAX_CONNECTING: usize = 1024;

/// Default of [`QuicConfig::connect_queue_wait`].
pub const DEFAULT_CONNECT_QUEUE_WAIT: Duration = Duration::from_secs(3);

/// Connection attempts that may wait per place of [`QuicConfig::max_connecting`].
const WAITING_PER_PLACE: usize = 16;

/// Shortest heartbeat interval accepted (a smaller configured value is raised to it).
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// How long a `Reject` or a control stream reset gets to reach the agent before the
/// connection is closed (unless the agent closes it first).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long shutdown waits for connections to wind down.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(3);

/// Largest chunk taken from a stream per read.
const READ_CHUNK: usize = 64 * 1024;

/// Longest reason text put in a CONNECTION_CLOSE frame.
const MAX_CLOSE_REASON: usize = 256;

/// Settings of the QUIC listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicConfig {
    /// Heartbeat interval announced in `Welcome` (default 5 s). The agent is offline, and
    /// its connection closed, after [`MISSED_HEARTBEATS_OFFLINE`] intervals without a
    /// heartbeat; the QUIC idle timeout is the same span and core sends QUIC keep-alives
    /// every interval.
    pub heartbeat_interval: Duration,
    /// Time from the end of the handshake to a complete `Hello` (default 10 s).
    pub hello_timeout: Duration,
    /// Limits announced in `Welcome`; [`Limits::max_frame_len`] (at most 16 MiB) also
    /// bounds every frame core reads and writes.
    pub limits: Limits,
    /// Most connections being set up at once (handshake, `Hello`, `Welcome`; default
    /// [`DEFAULT_MAX_CONNECTING`]). Further attempts wait, oldest first, for a place (at
    /// most [`connect_queue_wait`](Self::connect_queue_wait), and at most
    /// `WAITING_PER_PLACE` (16) per place); an attempt that cannot wait is refused (QUIC
    /// `CONNECTION_REFUSED`) and the agent retries after its backoff. After a restart,
    /// 10,000 agents reconnecting in the same second otherwise all progress slowly
    /// together and time out (congestion collapse) instead of being served in turn.
    pub max_connecting: usize,
    /// Longest wait of a connection attempt for a place (default
    /// [`DEFAULT_CONNECT_QUEUE_WAIT`]; the agent's handshake keeps its own timeout).
    pub connect_queue_wait: Duration,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
            limits: Limits::default(),
            max_connecting: DEFAULT_MAX_CONNECTING,
            connect_queue_wait: DEFAULT_CONNECT_QUEUE_WAIT,
        }
    }
}

impl QuicConfig {
    /// The heartbeat interval in force (at least [`MIN_HEARTBEAT_INTERVAL`]).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval.max(MIN_HEARTBEAT_INTERVAL)
    }

    /// How long the control stream may stay silent before the agent is offline:
    /// [`MISSED_HEARTBEATS_OFFLINE`] heartbeat intervals.
    pub fn offline_after(&self) -> Duration {
        self.heartbeat_interval() * MISSED_HEARTBEATS_OFFLINE
    }

    /// The frame size limit in force: [`Limits::max_frame_len`], at most 16 MiB.
    pub fn max_frame_len(&self) -> u32 {
        self.limits.max_frame_len.min(DEFAULT_MAX_FRAME)
    }

    /// The limits sent in `Welcome` (with the frame limit in force).
    fn wire_limits(&self) -> Limits {
        Limits {
            max_frame_len: self.max_frame_len(),
            ..self.limits.clone()
        }
    }
}

/// The `quinn::ServerConfig` of the agent listener with the default [`QuicConfig`]: mutual
/// TLS 1.3 from [`mtls_server_config`] (server certificate and CA from `app.pki`,
/// revocation from `app.revocations`), ALPN `wharf/1`, no TLS session resumption, 5 s
/// keep-alives, 15 s idle timeout, one agent-opened bi stream (the control stream) and no
/// uni streams.
///
/// # Errors
///
/// The server certificate or key cannot be loaded, or rustls refuses the configuration.
pub fn server_config(app: &App) -> Result<quinn::ServerConfig> {
    server_config_with(app, &QuicConfig::default())
}

/// [`server_config`] with the timeouts of `config`.
///
/// # Errors
///
/// As [`server_config`].
pub fn server_config_with(app: &App, config: &QuicConfig) -> Result<quinn::ServerConfig> {
    let identity = app
        .pki
        .server_tls_identity()
        .context("cannot load the server certificate for QUIC")?;
    let revocation: Arc<dyn RevocationCheck> = Arc::new(app.revocations.clone());
    // No TLS session resumption (see `pki::mtls_server_config`): a revoked agent cannot
    // resume, every connection runs the revocation check.
    let tls = mtls_server_config(&identity, app.pki.ca_cert(), revocation, &[ALPN])
        .context("cannot build the QUIC TLS configuration")?;
    let crypto =
        QuicServerConfig::try_from(tls).context("the TLS configuration cannot be used for QUIC")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let idle = quinn::IdleTimeout::try_from(config.offline_after())
        .context("the heartbeat interval is too long")?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(config.heartbeat_interval()))
        .max_idle_timeout(Some(idle));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Serves the agent QUIC listener on `addr` with the default [`QuicConfig`] until
/// `shutdown` turns `true` (or its sender is dropped). See the [module docs](self).
///
/// # Errors
///
/// Only at start: the UDP address cannot be bound, or the TLS configuration cannot be built.
pub async fn serve(
    app: App,
    counters: Arc<TransportCounters>,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    QuicServer::bind(app, QuicConfig::default(), counters, addr)?
        .run(shutdown)
        .await
}

/// A bound QUIC listener, not yet serving: [`bind`](Self::bind), then [`run`](Self::run).
#[derive(Debug)]
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    app: App,
    config: QuicConfig,
    counters: Arc<TransportCounters>,
}

impl Shared {
    fn count(&self, pick: impl FnOnce(&TransportCounters) -> &std::sync::atomic::AtomicU64) {
        TransportCounters::inc(pick(&self.counters));
    }

    fn count_frame_error(&self, error: &FrameError) {
        match error.error_code() {
            error_code::FRAME_TOO_LARGE => self.count(|c| &c.frames_too_large),
            error_code::DECODE_ERROR => self.count(|c| &c.frames_undecodable),
            error_code::PROTOCOL_VIOLATION => self.count(|c| &c.protocol_violations),
            _ => {}
        }
    }
}

impl QuicServer {
    /// Binds UDP `addr` (port 0 picks a free port) with `config`. Must be called inside a
    /// tokio runtime.
    ///
    /// # Errors
    ///
    /// The address cannot be bound, or the TLS configuration cannot be built.
    pub fn bind(
        app: App,
        config: QuicConfig,
        counters: Arc<TransportCounters>,
        addr: SocketAddr,
    ) -> Result<QuicServer> {
        let server_config = server_config_with(&app, &config)?;
        let socket = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("cannot bind the QUIC listener to UDP {addr}"))?;
        socket
            .set_nonblocking(true)
            .context("cannot make the QUIC socket non-blocking")?;
        // Room for bursts: after a restart thousands of agents' packets arrive at once,
        // and a datagram dropped for want of buffer leaves its agent to retransmission
        // backoff or its idle timeout. The kernel caps the size (net.core.rmem_max).
        let sock = socket2::SockRef::from(&socket);
        for (what, result) in [
            ("receive", sock.set_recv_buffer_size(SOCKET_BUFFER)),
            ("send", sock.set_send_buffer_size(SOCKET_BUFFER)),
        ] {
            if let Err(error) = result {
                tracing::warn!(%error, what, "cannot enlarge the QUIC socket's buffer");
            }
        }
        let runtime = Arc::new(quinn::TokioRuntime);
        let inner = runtime
            .wrap_udp_socket(socket)
            .context("cannot set up the QUIC socket")?;
        let socket = Arc::new(CountingSocket {
            inner,
            counters: counters.clone(),
        });
        // The reset and connection-id keys of the data dir: a restarted core's stateless
        // resets end the connections of the process before it (see `EndpointKey`).
        let mut endpoint_config = app.quic_key.endpoint_config();
        // Without greasing, a clear fixed bit marks a datagram as garbage (counted).
        endpoint_config.grease_quic_bit(false);
        let endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            Some(server_config),
            socket,
            runtime,
        )
        .context("cannot start the QUIC endpoint")?;
        Ok(QuicServer {
            endpoint,
            shared: Arc::new(Shared {
                app,
                config,
                counters,
            }),
        })
    }

    /// The bound address.
    ///
    /// # Errors
    ///
    /// The socket cannot report it.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .local_addr()
            .context("cannot read the QUIC listener's address")
    }

    /// The counters this listener updates.
    pub fn counters(&self) -> &Arc<TransportCounters> {
        &self.shared.counters
    }

    /// Serves until `shutdown` turns `true` or its sender is dropped, then closes every
    /// connection with [`error_code::SHUTDOWN`] and waits (at most a few seconds) for them
    /// to wind down.
    ///
    /// # Errors
    ///
    /// None at present; the `Result` leaves room for fatal listener errors.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let addr = self.local_addr()?;
        tracing::info!(%addr, "QUIC agent listener serving (ALPN wharf/1)");
        let mut connections = JoinSet::new();
        let connecting = Arc::new(Semaphore::new(self.shared.config.max_connecting.max(1)));
        // Connection attempts waiting for a place, oldest first (see `QuicConfig::max_connecting`).
        let mut waiting: VecDeque<(quinn::Incoming, Instant)> = VecDeque::new();
        let max_waiting = self
            .shared
            .config
            .max_connecting
            .saturating_mul(WAITING_PER_PLACE);
        let refuse = |incoming: quinn::Incoming| {
            self.shared.count(|c| &c.connections_refused_busy);
            incoming.refuse();
        };
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            // Attempts that waited too long are refused: the agent retries after its backoff.
            while waiting
                .front()
                .is_some_and(|(_, since)| since.elapsed() >= self.shared.config.connect_queue_wait)
            {
                if let Some((incoming, _)) = waiting.pop_front() {
                    refuse(incoming);
                }
            }
            let oldest = waiting.front().map(|(_, since)| *since);
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let place = if waiting.is_empty() {
                            connecting.clone().try_acquire_owned().ok()
                        } else {
                            None
                        };
                        match place {
                            Some(permit) => {
                                connections.spawn(handle_incoming(self.shared.clone(), incoming, permit));
                            }
                            None if waiting.len() < max_waiting => {
                                waiting.push_back((incoming, Instant::now()));
                            }
                            None => refuse(incoming),
                        }
                    }
                    None => break,
                },
                permit = connecting.clone().acquire_owned(), if !waiting.is_empty() => {
                    if let (Ok(permit), Some((incoming, _))) = (permit, waiting.pop_front()) {
                        connections.spawn(handle_incoming(self.shared.clone(), incoming, permit));
                    }
                }
                () = sleep_until_opt(oldest.map(|since| since + self.shared.config.connect_queue_wait)) => {}
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    if let Err(error) = joined {
                        tracing::error!(%error, "a QUIC connection task failed");
                    }
                }
            }
        }
        for (incoming, _) in waiting {
            incoming.refuse();
        }
        tracing::info!(%addr, "QUIC agent listener shutting down");
        self.endpoint.close(
            VarInt::from_u32(error_code::SHUTDOWN),
            b"core is shutting down",
        );
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        let _ = tokio::time::timeout(SHUTDOWN_WAIT, self.endpoint.wait_idle()).await;
        Ok(())
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn varint(code: u32) -> VarInt {
    VarInt::from_u32(code)
}

/// Closes a connection with `code` and `reason` (shortened to fit a close frame).
fn close(conn: &Connection, code: u32, reason: &str) {
    let mut end = reason.len().min(MAX_CLOSE_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    conn.close(varint(code), &reason.as_bytes()[..end]);
}

/// The agent behind a completed handshake, or why the connection must close.
fn identify(shared: &Shared, conn: &Connection) -> Result<AgentRecord, (u32, String)> {
    let certs = conn
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok());
    let id = agent_id_from_peer_certificates(certs.as_deref().map(Vec::as_slice))
        .map_err(|e| (error_code::REJECTED, format!("client certificate: {e}")))?
        .ok_or_else(|| {
            (
                error_code::REJECTED,
                "no client certificate was presented".to_string(),
            )
        })?;
    let id = Uuid::parse_str(&id).map_err(|e| {
        (
            error_code::REJECTED,
            format!("client certificate: agent id {id:?} is not a UUID: {e}"),
        )
    })?;
    let agent = shared.app.directory.agent_by_id(id).ok_or_else(|| {
        (
            error_code::REVOKED,
            format!("agent {id} is not enrolled with this core"),
        )
    })?;
    if agent.is_revoked() {
        return Err((
            error_code::REVOKED,
            format!("agent {} ({id}) was revoked", agent.name),
        ));
    }
    Ok(agent)
}

/// Sets up one connection; `connecting` (a place among [`QuicConfig::max_connecting`]) is
/// held until its session is open or it failed.
async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    connecting: OwnedSemaphorePermit,
) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(error) => {
            shared.count(|c| &c.handshakes_failed);
            tracing::info!(%remote, %error, "QUIC handshake failed");
            return;
        }
    };
    shared.count(|c| &c.handshakes_completed);
    let agent = match identify(&shared, &conn) {
        Ok(agent) => agent,
        Err((code, reason)) => {
            shared.count(|c| &c.agents_refused);
            tracing::info!(%remote, %reason, "agent refused after the handshake");
            close(&conn, code, &reason);
            return;
        }
    };
    let span = tracing::info_span!("quic", agent = %agent.name, agent_id = %agent.id, %remote);
    run_connection(shared, conn, agent, connecting)
        .instrument(span)
        .await;
}

/// Why a session ended.
enum End {
    /// The connection or the control stream is gone: nothing to send.
    Lost(String),
    /// Close the connection with this code now.
    Close(u32, String),
    /// The control stream broke the protocol: reset it with this code, then close.
    ControlFailed(u32, String),
}

/// Ends a session before it started: the control stream is closed with `code` and, after
/// a short grace, the connection too.
async fn fail_control(
    conn: &Connection,
    send: &mut SendStream,
    recv: &mut RecvStream,
    code: u32,
    reason: &str,
) {
    tracing::info!(code, %reason, "control stream closed");
    let _ = send.reset(varint(code));
    let _ = recv.stop(varint(code));
    let _ = tokio::time::timeout(CLOSE_GRACE, conn.closed()).await;
    close(conn, code, reason);
}

/// Sends `Reject {reason}`, lets it arrive, and closes with [`error_code::REJECTED`].
async fn reject(shared: &Shared, conn: &Connection, mut send: SendStream, reason: &str) {
    shared.count(|c| &c.sessions_rejected);
    tracing::info!(%reason, "session rejected");
    let message = Message::Reject(Reject {
        reason: reason.to_string(),
    });
    if write_frame(&mut send, &message, shared.config.max_frame_len())
        .await
        .is_ok()
    {
        let _ = send.finish();
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            tokio::select! {
                _ = send.stopped() => {}
                _ = conn.closed() => {}
            }
        })
        .await;
    }
    close(conn, error_code::REJECTED, reason);
}

async fn run_connection(
    shared: Arc<Shared>,
    conn: Connection,
    agent: AgentRecord,
    connecting: OwnedSemaphorePermit,
) {
    let max = shared.config.max_frame_len();
    let deadline = Instant::now() + shared.config.hello_timeout;

    // The control stream and its Hello.
    let (mut ctrl_send, mut ctrl_recv) =
        match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(error)) => {
                tracing::debug!(%error, "connection ended before its control stream");
                return;
            }
            Err(_) => {
                shared.count(|c| &c.protocol_violations);
                let reason = format!(
                    "no control stream within {:?} of the handshake",
                    shared.config.hello_timeout
                );
                tracing::info!(%reason, "closing");
                close(&conn, error_code::PROTOCOL_VIOLATION, &reason);
                return;
            }
        };
    let hello = match tokio::time::timeout_at(deadline, read_frame(&mut ctrl_recv, max)).await {
        Ok(Ok(Some(Message::Hello(hello)))) => hello,
        Ok(Ok(other)) => {
            shared.count(|c| &c.protocol_violations);
            let reason = match other {
                Some(message) => format!("expected hello, got {}", message.name()),
                None => "the control stream ended before hello".to_string(),
            };
            let code = error_code::PROTOCOL_VIOLATION;
            fail_control(&conn, &mut ctrl_send, &mut ctrl_recv, code, &reason).await;
            return;
        }
        Ok(Err(FrameError::Io(error))) => {
            tracing::debug!(%error, "control stream failed before hello");
            return;
        }
        Ok(Err(error)) => {
            shared.count_frame_error(&error);
            let reason = error.to_string();
            let code = error.error_code();
            fail_control(&conn, &mut ctrl_send, &mut ctrl_recv, code, &reason).await;
            return;
        }
        Err(_) => {
            shared.count(|c| &c.protocol_violations);
            let reason = format!(
                "no hello within {:?} of the handshake",
                shared.config.hello_timeout
            );
            let code = error_code::PROTOCOL_VIOLATION;
            fail_control(&conn, &mut ctrl_send, &mut ctrl_recv, code, &reason).await;
            return;
        }
    };

    if let Err(rejection) = negotiate(CORE_VERSION, &hello.agent_version, hello.protocol_version) {
        reject(&shared, &conn, ctrl_send, &rejection.reason()).await;
        return;
    }
    let directory = &shared.app.directory;
    match directory
        .record_session(
            agent.id,
            &hello.agent_version,
            &hello.capabilities,
            TRANSPORT,
            SystemTime::now(),
        )
        .await
    {
        Ok(_) => {}
        Err(
            error @ (DirectoryError::AgentRevoked { .. } | DirectoryError::UnknownAgent { .. }),
        ) => {
            shared.count(|c| &c.agents_refused);
            close(&conn, error_code::REVOKED, &error.to_string());
            return;
        }
        Err(error) if error.kind() == ErrorKind::InvalidInput => {
            reject(&shared, &conn, ctrl_send, &error.to_string()).await;
            return;
        }
        Err(error) => {
            tracing::warn!(%error, "cannot record the session");
            close(
                &conn,
                error_code::INTERNAL_ERROR,
                "core cannot record the session",
            );
            return;
        }
    }
    let welcome = Message::Welcome(Welcome {
        core_version: CORE_VERSION.to_string(),
        heartbeat_interval: DurationMs::from(shared.config.heartbeat_interval()),
        limits: shared.config.wire_limits(),
    });
    if let Err(error) = write_frame(&mut ctrl_send, &welcome, max).await {
        tracing::debug!(%error, "cannot send welcome");
        return;
    }
    // Set up: make room for the next connection.
    drop(connecting);

    // Results the agent kept in its journal: store, then ack each one taken.
    let engine = &shared.app.engine;
    let outcomes = futures_util::future::join_all(hello.pending_results.into_iter().map(|r| {
        let key = (r.task_id, r.attempt);
        let name = agent.name.as_str();
        async move { (key, engine.result(name, r).await) }
    }))
    .await;
    for ((task_id, attempt), outcome) in outcomes {
        match outcome {
            Ok(()) => {
                let ack = Message::ResultAck(ResultAck { task_id, attempt });
                if let Err(error) = write_frame(&mut ctrl_send, &ack, max).await {
                    tracing::debug!(%error, "cannot send result-ack");
                    return;
                }
                shared.count(|c| &c.results_acked);
            }
            Err(error) => {
                shared.count(|c| &c.results_refused);
                tracing::warn!(%task_id, attempt, %error, "pending result refused");
            }
        }
    }

    let session = match engine.open_session(&agent.name, TRANSPORT).await {
        Ok(session) => session,
        Err(error) => {
            tracing::warn!(%error, "cannot open the session");
            close(
                &conn,
                error_code::INTERNAL_ERROR,
                "core cannot open the session",
            );
            return;
        }
    };
    shared.count(|c| &c.sessions_opened);
    TransportCounters::inc(&shared.counters.sessions_active);
    tracing::info!(
        session = session.id,
        version = %hello.agent_version,
        "agent session opened"
    );
    let session_id = session.id;
    // A revocation that finished between the handshake and `open_session` closed no
    // session of ours: look again now that the engine knows this one.
    let end = if directory
        .agent_by_id(agent.id)
        .is_none_or(|a| a.is_revoked())
    {
        End::Close(error_code::REVOKED, "the agent was revoked".into())
    } else {
        let ctx = Arc::new(StreamContext {
            shared: shared.clone(),
            conn: conn.clone(),
            agent: agent.name.clone(),
            max,
        });
        SessionLoop {
            shared: &shared,
            conn: &conn,
            agent: &agent,
            ctx,
            streams: HashMap::new(),
            handlers: JoinSet::new(),
            next_gen: 0,
        }
        .run(FrameReader::new(&mut ctrl_recv, max), session.commands)
        .await
    };
    engine.close_session(&agent.name, session_id);
    TransportCounters::dec(&shared.counters.sessions_active);
    match end {
        End::Lost(reason) => tracing::info!(%reason, "agent session ended"),
        End::Close(code, reason) => {
            tracing::info!(code, %reason, "agent session closed");
            close(&conn, code, &reason);
        }
        End::ControlFailed(code, reason) => {
            fail_control(&conn, &mut ctrl_send, &mut ctrl_recv, code, &reason).await;
        }
    }
}

/// An open task stream, as the session loop knows it.
struct TaskHandle {
    /// Tells this stream from an earlier one for the same task (a re-sent `Assign`).
    generation: u64,
    /// Messages for the agent on this stream (`Cancel`).
    outbox: mpsc::UnboundedSender<Message>,
}

/// What every task stream of one connection shares.
struct StreamContext {
    shared: Arc<Shared>,
    conn: Connection,
    agent: String,
    max: u32,
}

struct SessionLoop<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a Connection,
    agent: &'a AgentRecord,
    ctx: Arc<StreamContext>,
    streams: HashMap<Uuid, TaskHandle>,
    handlers: JoinSet<(Uuid, u64)>,
    next_gen: u64,
}

impl SessionLoop<'_> {
    async fn run(
        mut self,
        mut control: FrameReader<'_>,
        mut commands: mpsc::UnboundedReceiver<SessionCommand>,
    ) -> End {
        let offline_after = self.shared.config.offline_after();
        let mut heartbeat_deadline = Instant::now() + offline_after;
        loop {
            tokio::select! {
                error = self.conn.closed() => return End::Lost(error.to_string()),
                frame = control.next() => {
                    if let Some(end) = self.on_control(frame).await {
                        return end;
                    }
                    heartbeat_deadline = Instant::now() + offline_after;
                }
                () = tokio::time::sleep_until(heartbeat_deadline) => {
                    self.shared.count(|c| &c.heartbeat_timeouts);
                    return End::Close(
                        error_code::PROTOCOL_VIOLATION,
                        format!("no heartbeat for {offline_after:?}: the agent is offline"),
                    );
                }
                command = commands.recv() => {
                    if let Some(end) = self.on_command(command) {
                        return end;
                    }
                }
                Some(joined) = self.handlers.join_next(), if !self.handlers.is_empty() => {
                    match joined {
                        Ok((task, generation)) => {
                            if self.streams.get(&task).is_some_and(|h| h.generation == generation) {
                                self.streams.remove(&task);
                            }
                        }
                        Err(error) => tracing::error!(%error, "a task stream failed"),
                    }
                }
            }
        }
    }

    /// A frame (or the end) of the control stream; `Some` ends the session.
    async fn on_control(&mut self, frame: Result<Option<Message>, StreamError>) -> Option<End> {
        match frame {
            Ok(Some(Message::Heartbeat(_))) => {
                self.shared.count(|c| &c.heartbeats);
                match self
                    .shared
                    .app
                    .directory
                    .touch(self.agent.id, SystemTime::now())
                    .await
                {
                    Ok(_) => None,
                    Err(
                        error @ (DirectoryError::AgentRevoked { .. }
                        | DirectoryError::UnknownAgent { .. }),
                    ) => Some(End::Close(error_code::REVOKED, error.to_string())),
                    Err(error) => {
                        tracing::warn!(%error, "cannot record a heartbeat");
                        None
                    }
                }
            }
            Ok(Some(other)) => {
                self.shared.count(|c| &c.protocol_violations);
                Some(End::ControlFailed(
                    error_code::PROTOCOL_VIOLATION,
                    format!("unexpected {} on the control stream", other.name()),
                ))
            }
            Ok(None) => Some(End::Close(
                error_code::NO_ERROR,
                "the agent finished its control stream".into(),
            )),
            Err(StreamError::Frame(error)) => {
                self.shared.count_frame_error(&error);
                Some(End::ControlFailed(error.error_code(), error.to_string()))
            }
            Err(StreamError::Read(error)) => Some(End::Lost(format!("control stream: {error}"))),
        }
    }

    /// A command of the engine; `Some` ends the session.
    fn on_command(&mut self, command: Option<SessionCommand>) -> Option<End> {
        match command {
            Some(SessionCommand::Assign(task)) => {
                let (outbox, rx) = mpsc::unbounded_channel();
                self.next_gen += 1;
                let generation = self.next_gen;
                self.streams
                    .insert(task.id, TaskHandle { generation, outbox });
                let ctx = self.ctx.clone();
                self.handlers.spawn(
                    async move {
                        let id = task.id;
                        task_stream(ctx, *task, rx).await;
                        (id, generation)
                    }
                    .in_current_span(),
                );
                None
            }
            Some(SessionCommand::Cancel(task_id)) => {
                let cancel = Message::Cancel(Cancel { task_id });
                let sent = self
                    .streams
                    .get(&task_id)
                    .is_some_and(|h| h.outbox.send(cancel).is_ok());
                if !sent {
                    self.shared.count(|c| &c.cancels_without_stream);
                    tracing::info!(%task_id, "cancel for a task without an open stream dropped");
                }
                None
            }
            Some(SessionCommand::Close { reason }) => {
                let revoked = self
                    .shared
                    .app
                    .directory
                    .agent_by_id(self.agent.id)
                    .is_none_or(|a| a.is_revoked());
                let code = if revoked {
                    error_code::REVOKED
                } else {
                    error_code::NO_ERROR
                };
                Some(End::Close(code, reason))
            }
            None => Some(End::Close(
                error_code::SHUTDOWN,
                "the task engine stopped".into(),
            )),
        }
    }
}

/// What a task stream does after a message from the agent.
enum Step {
    /// Keep reading.
    Continue,
    /// The result is stored: acknowledge it and finish.
    Ack(ResultAck),
    /// Close the stream with this code.
    Fail(u32, String),
}

/// Serves one task stream: `Assign` out, then `Accepted`, `Progress`*, `Result` in and
/// `ResultAck` out, with `Cancel`s from the session loop in between.
async fn task_stream(
    ctx: Arc<StreamContext>,
    task: AgentTask,
    mut outbox: mpsc::UnboundedReceiver<Message>,
) {
    let shared = &ctx.shared;
    let task_id = task.id;
    let (mut send, mut recv) = match ctx.conn.open_bi().await {
        Ok(streams) => streams,
        Err(error) => {
            tracing::debug!(%task_id, %error, "cannot open a task stream");
            return;
        }
    };
    if let Err(error) = write_frame(&mut send, &Message::Assign(task), ctx.max).await {
        tracing::warn!(%task_id, %error, "cannot send the task");
        let _ = send.reset(varint(error.error_code()));
        let _ = recv.stop(varint(error.error_code()));
        return;
    }
    shared.count(|c| &c.tasks_assigned);
    let mut reader = FrameReader::new(&mut recv, ctx.max);
    let mut outbox_open = true;
    let step = loop {
        tokio::select! {
            frame = reader.next() => match frame {
                Ok(Some(message)) => match on_task_message(&ctx, task_id, message).await {
                    Step::Continue => {}
                    step => break step,
                },
                Ok(None) => {
                    tracing::debug!(%task_id, "the agent finished the task stream");
                    let _ = send.finish();
                    return;
                }
                Err(StreamError::Frame(error)) => {
                    shared.count_frame_error(&error);
                    break Step::Fail(error.error_code(), error.to_string());
                }
                Err(StreamError::Read(error)) => {
                    tracing::debug!(%task_id, %error, "task stream lost");
                    return;
                }
            },
            message = outbox.recv(), if outbox_open => match message {
                Some(message) => {
                    let is_cancel = matches!(message, Message::Cancel(_));
                    if let Err(error) = write_frame(&mut send, &message, ctx.max).await {
                        tracing::debug!(%task_id, %error, "cannot write on the task stream");
                        return;
                    }
                    if is_cancel {
                        shared.count(|c| &c.cancels_sent);
                    }
                }
                None => outbox_open = false,
            },
        }
    };
    match step {
        Step::Ack(ack) => {
            if let Err(error) = write_frame(&mut send, &Message::ResultAck(ack), ctx.max).await {
                tracing::debug!(%task_id, %error, "cannot send result-ack");
                return;
            }
            shared.count(|c| &c.results_acked);
            let _ = send.finish();
        }
        Step::Fail(code, reason) => {
            tracing::warn!(%task_id, code, %reason, "task stream closed");
            let _ = send.reset(varint(code));
            let _ = recv.stop(varint(code));
        }
        Step::Continue => {}
    }
}

/// Handles one message from the agent on the stream of `task_id`.
async fn on_task_message(ctx: &StreamContext, task_id: Uuid, message: Message) -> Step {
    let shared = &ctx.shared;
    let engine = &shared.app.engine;
    let reported = match &message {
        Message::Accepted(a) => a.task_id,
        Message::Progress(p) => p.task_id,
        Message::Result(r) => r.task_id,
        other => {
            shared.count(|c| &c.protocol_violations);
            return Step::Fail(
                error_code::PROTOCOL_VIOLATION,
                format!("unexpected {} on a task stream", other.name()),
            );
        }
    };
    if reported != task_id {
        shared.count(|c| &c.protocol_violations);
        if matches!(message, Message::Result(_)) {
            shared.count(|c| &c.results_refused);
        }
        return Step::Fail(
            error_code::PROTOCOL_VIOLATION,
            format!(
                "{} for task {reported} on the stream of task {task_id}",
                message.name()
            ),
        );
    }
    let refused = |error: EngineError| match error {
        EngineError::Queue(_) => {
            shared.count(|c| &c.protocol_violations);
            Step::Fail(error_code::PROTOCOL_VIOLATION, error.to_string())
        }
        other => Step::Fail(error_code::INTERNAL_ERROR, other.to_string()),
    };
    match message {
        Message::Accepted(a) => match engine.accepted(&ctx.agent, a.task_id, a.attempt).await {
            Ok(()) => Step::Continue,
            Err(error) => refused(error),
        },
        Message::Progress(p) => match engine.progress(&ctx.agent, p).await {
            Ok(()) => Step::Continue,
            Err(error) => refused(error),
        },
        Message::Result(r) => {
            let ack = ResultAck {
                task_id: r.task_id,
                attempt: r.attempt,
            };
            match engine.result(&ctx.agent, r).await {
                Ok(()) => Step::Ack(ack),
                Err(error) => {
                    shared.count(|c| &c.results_refused);
                    refused(error)
                }
            }
        }
        // Filtered out above.
        _ => Step::Continue,
    }
}

/// Why reading a stream stopped.
#[derive(Debug)]
enum StreamError {
    /// The peer's bytes broke the framing rules: close the stream with the error's code.
    Frame(FrameError),
    /// The stream or the connection failed (reset by the peer, connection lost).
    Read(quinn::ReadError),
}

/// Reads frames from a stream, cancel-safely: the decoder keeps partial frames between
/// calls and quinn's `read_chunk` loses nothing when dropped.
struct FrameReader<'a> {
    recv: &'a mut RecvStream,
    decoder: FrameDecoder,
}

impl<'a> FrameReader<'a> {
    fn new(recv: &'a mut RecvStream, max: u32) -> Self {
        FrameReader {
            recv,
            decoder: FrameDecoder::with_max(max),
        }
    }

    /// The next message; `Ok(None)` when the peer finished the stream between frames.
    async fn next(&mut self) -> Result<Option<Message>, StreamError> {
        loop {
            if let Some(message) = self.decoder.decode().map_err(StreamError::Frame)? {
                return Ok(Some(message));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await {
                Ok(Some(chunk)) => self.decoder.push(&chunk.bytes),
                Ok(None) => {
                    self.decoder.finish().map_err(StreamError::Frame)?;
                    return Ok(None);
                }
                Err(error) => return Err(StreamError::Read(error)),
            }
        }
    }
}

/// The listener's UDP socket, counting datagrams (and garbage) on their way to quinn.
#[derive(Debug)]
struct CountingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    counters: Arc<TransportCounters>,
}

/// Whether a datagram cannot be a QUIC packet for an endpoint that does not grease the
/// fixed bit (RFC 9000 §17, RFC 9287): empty, fixed bit clear, a long header too short
/// for its fixed fields, or shorter than the smallest short-header packet (1 byte of
/// header, 4 of packet number, a 16-byte AEAD tag: 21 bytes, the bound of RFC 9000 §10.3).
fn is_malformed_datagram(datagram: &[u8]) -> bool {
    const LONG_HEADER: u8 = 0x80;
    const FIXED_BIT: u8 = 0x40;
    const MIN_LONG: usize = 7;
    const MIN_SHORT: usize = 21;
    let Some(&first) = datagram.first() else {
        return true;
    };
    if first & FIXED_BIT == 0 {
        return true;
    }
    if first & LONG_HEADER != 0 {
        datagram.len() < MIN_LONG
    } else {
        datagram.len() < MIN_SHORT
    }
}

impl AsyncUdpSocket for CountingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut TaskContext<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let polled = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &polled {
            for (buf, meta) in bufs.iter().zip(meta.iter()).take(*n) {
                let len = meta.len.min(buf.len());
                if len == 0 {
                    TransportCounters::inc(&self.counters.datagrams_received);
                    TransportCounters::inc(&self.counters.datagrams_malformed);
                    continue;
                }
                let stride = if meta.stride == 0 { len } else { meta.stride };
                for datagram in buf[..len].chunks(stride) {
                    TransportCounters::inc(&self.counters.datagrams_received);
                    if is_malformed_datagram(datagram) {
                        TransportCounters::inc(&self.counters.datagrams_malformed);
                    }
                }
            }
        }
        polled
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_datagrams() {
        assert!(is_malformed_datagram(&[]));
        assert!(is_malformed_datagram(&[0x00; 1200]));
        assert!(is_malformed_datagram(&[0x80; 1200]));
        assert!(is_malformed_datagram(&[0xc0, 0, 0, 0]));
        assert!(is_malformed_datagram(&[0x40; 20]));
        assert!(!is_malformed_datagram(&[0x40; 21]));
        assert!(!is_malformed_datagram(&[0xc0; 1200]));
    }

    /// The encodings docs/protocol.md shows as examples.
    #[test]
    fn documented_encodings() {
        let heartbeat = Message::Heartbeat(wharf_protocol::Heartbeat::default());
        assert_eq!(
            wharf_protocol::encode_frame(&heartbeat).unwrap(),
            [0, 0, 0, 6, 3, 0, 0, 0, 0, 0]
        );
        let ack = Message::ResultAck(ResultAck {
            task_id: Uuid::from_u128(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            attempt: 300,
        });
        let body = wharf_protocol::to_body(&ack).unwrap();
        // Variant 8, uuid as a 16-byte string, attempt as a varint.
        let mut expected = vec![8, 16];
        expected.extend(1..=16u8);
        expected.extend([0xac, 0x02]);
        assert_eq!(body, expected);
        let welcome = Message::Welcome(Welcome {
            core_version: "0.1.0".into(),
            heartbeat_interval: DurationMs::from_secs(5),
            limits: Limits::default(),
        });
        let body = wharf_protocol::to_body(&welcome).unwrap();
        assert_eq!(&body[..7], [1, 5, b'0', b'.', b'1', b'.', b'0']);
        // 5000 ms as a varint.
        assert_eq!(&body[7..9], [0x88, 0x27]);
    }

    #[test]
    fn config_defaults() {
        let c = QuicConfig::default();
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(5));
        assert_eq!(c.offline_after(), Duration::from_secs(15));
        assert_eq!(c.max_frame_len(), DEFAULT_MAX_FRAME);
        let small = QuicConfig {
            heartbeat_interval: Duration::ZERO,
            limits: Limits {
                max_frame_len: u32::MAX,
                ..Limits::default()
            },
            ..QuicConfig::default()
        };
        assert_eq!(small.heartbeat_interval(), MIN_HEARTBEAT_INTERVAL);
        assert_eq!(small.wire_limits().max_frame_len, DEFAULT_MAX_FRAME);
    }
}
