//! The QUIC agent transport (design.md §2) end to end: a real [`QuicServer`] on
//! `127.0.0.1:0` over an [`App`] in a temporary directory, and a small protocol-level
//! agent written here with quinn, enrolled through the [`Directory`](wharf_core::directory::Directory)
//! like a real one.
//!
//! Every wait is bounded ([`WAIT`]) and waits for an event, never for a fixed time.
//! `handshake_and_hello_round_trip` prints the handshake + `Hello` → `Welcome` time on
//! loopback (`cargo test -p wharf-core --test it quic -- --nocapture`).

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, VarInt};
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::timeout;
use uuid::Uuid;
use wharf_core::app::{App, AppConfig};
use wharf_core::directory::EnrollRequest;
use wharf_core::engine::{EngineConfig, SubmitRequest, TaskEvent};
use wharf_core::pki::{
    agent_client_config, generate_agent_key_and_csr, AgentKeyRequest, CertificateAuthority,
    TlsIdentity,
};
use wharf_core::queue::TaskState;
use wharf_core::transport::{CountersSnapshot, QuicConfig, QuicServer, TransportCounters};
use wharf_protocol::seal::AgentSealKey;
use wharf_protocol::{
    error_code, read_frame, write_frame, Accepted, AgentTask, DeploySpec, DurationMs, ErrorType,
    FrameError, Heartbeat, Hello, Limits, Message, Priority, Progress, ResultAck, TaskPayload,
    TaskResult, Timestamp, ALPN, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};

/// Upper bound of every awaited event.
const WAIT: Duration = Duration::from_secs(10);
/// Core's version (this crate's): agents of the same version are accepted.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE: &str =
    "127.0.0.1:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";

/// A running core: the app and its QUIC listener.
struct Core {
    app: App,
    addr: SocketAddr,
    counters: Arc<TransportCounters>,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

/// An enrolled agent's TLS identity.
struct Creds {
    identity: TlsIdentity,
}

impl Core {
    async fn start() -> Core {
        Core::start_with(QuicConfig::default()).await
    }

    async fn start_with(config: QuicConfig) -> Core {
        let dir = tempfile::tempdir().unwrap();
        let (app, _boot) = App::open(AppConfig {
            data_dir: dir.path().join("data"),
            server_names: vec![],
            master_key: None,
            engine: EngineConfig::default(),
        })
        .await
        .unwrap();
        let counters = Arc::new(TransportCounters::new());
        let server = QuicServer::bind(
            app.clone(),
            config,
            counters.clone(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let (shutdown, rx) = watch::channel(false);
        let server = tokio::spawn(server.run(rx));
        Core {
            app,
            addr,
            counters,
            shutdown,
            server,
            _dir: dir,
        }
    }

    fn counters(&self) -> CountersSnapshot {
        self.counters.snapshot()
    }

    /// Enrolls `name` the way `POST /agent/v1/enroll` does.
    async fn enroll(&self, name: &str) -> Creds {
        let (token, _) = self
            .app
            .directory
            .create_enroll_token(name, Duration::from_secs(600), "test")
            .await
            .unwrap();
        let (key_pem, csr_pem) = generate_agent_key_and_csr(name).unwrap();
        let seal = AgentSealKey::generate().unwrap();
        let enrolled = self
            .app
            .directory
            .enroll(EnrollRequest {
                token,
                name: name.to_string(),
                csr_pem,
                x25519_public: seal.public(),
                version: VERSION.to_string(),
                capabilities: vec!["docker".into()],
            })
            .await
            .unwrap();
        Creds {
            identity: TlsIdentity::from_pem(&enrolled.cert_pem, key_pem.expose()).unwrap(),
        }
    }

    async fn submit(&self, agent: &str, target: &str) -> Uuid {
        let (_, view) = self
            .app
            .engine
            .submit(
                SubmitRequest {
                    agent: agent.to_string(),
                    target: target.to_string(),
                    payload: TaskPayload::Deploy(DeploySpec::new(IMAGE)),
                    priority: Priority::Normal,
                    idempotency_key: None,
                    expires_at: None,
                    expires_in: None,
                    timeout: None,
                    max_attempts: None,
                },
                "tester",
            )
            .await
            .unwrap();
        view.id
    }

    async fn state(&self, id: Uuid) -> TaskState {
        self.app.engine.get(id).await.unwrap().state
    }

    /// Waits until task `id` is in `state`.
    async fn wait_state(&self, id: Uuid, state: TaskState) {
        let mut events = self.app.engine.subscribe();
        if self.state(id).await == state {
            return;
        }
        timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Ok(TaskEvent::State { task_id, state: s }) if task_id == id && s == state => {
                        return
                    }
                    Ok(_) => {}
                    Err(e) => panic!("event stream: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("task {id} did not become {state:?}"));
    }

    /// Waits until a counter satisfies `check`.
    async fn wait_counters(&self, what: &str, check: impl Fn(&CountersSnapshot) -> bool) {
        let started = Instant::now();
        while !check(&self.counters()) {
            assert!(
                started.elapsed() < WAIT,
                "{what}: counters {:?}",
                self.counters()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the listener and checks it returns cleanly.
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        timeout(WAIT, self.server)
            .await
            .expect("the listener stops")
            .unwrap()
            .unwrap();
    }
}

/// A quinn client config presenting `identity` and trusting `ca`.
fn client_config(
    identity: &TlsIdentity,
    ca: &rustls_pki_types::CertificateDer<'_>,
) -> quinn::ClientConfig {
    let tls = agent_client_config(identity, ca, &[ALPN]).unwrap();
    let crypto = QuicClientConfig::try_from(tls).unwrap();
    quinn::ClientConfig::new(Arc::new(crypto))
}

/// A quinn client endpoint presenting `identity` and trusting `ca`.
fn client_endpoint(
    identity: &TlsIdentity,
    ca: &rustls_pki_types::CertificateDer<'_>,
) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(client_config(identity, ca));
    endpoint
}

/// The protocol-level test agent: one connection and its control stream.
struct Agent {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

/// A task stream as the agent sees it.
struct TaskStream {
    task: AgentTask,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

fn hello(version: &str, pending_results: Vec<TaskResult>) -> Message {
    Message::Hello(Hello {
        agent_version: version.to_string(),
        protocol_version: PROTOCOL_VERSION,
        capabilities: vec!["docker".into()],
        pending_results,
    })
}

impl Agent {
    /// Connects and opens the control stream (nothing sent yet).
    async fn connect_with(endpoint: quinn::Endpoint, addr: SocketAddr) -> anyhow::Result<Agent> {
        let conn = timeout(WAIT, endpoint.connect(addr, "localhost")?).await??;
        Agent::on(endpoint, conn).await
    }

    /// Connects over a shared `endpoint` with this agent's own `config`.
    async fn connect_shared(
        endpoint: &quinn::Endpoint,
        config: quinn::ClientConfig,
        addr: SocketAddr,
    ) -> anyhow::Result<Agent> {
        let conn = timeout(WAIT, endpoint.connect_with(config, addr, "localhost")?).await??;
        Agent::on(endpoint.clone(), conn).await
    }

    /// Opens the control stream of `conn`.
    async fn on(endpoint: quinn::Endpoint, conn: quinn::Connection) -> anyhow::Result<Agent> {
        let (send, recv) = conn.open_bi().await?;
        Ok(Agent {
            _endpoint: endpoint,
            conn,
            send,
            recv,
        })
    }

    async fn connect(core: &Core, creds: &Creds) -> Agent {
        let endpoint = client_endpoint(&creds.identity, core.app.pki.ca_cert());
        Agent::connect_with(endpoint, core.addr).await.unwrap()
    }

    /// Connects and says `Hello` with this crate's version; expects `Welcome`.
    async fn session(core: &Core, creds: &Creds) -> Agent {
        let mut agent = Agent::connect(core, creds).await;
        match agent.hello(VERSION, vec![]).await {
            Message::Welcome(_) => agent,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    async fn send(&mut self, message: &Message) {
        write_frame(&mut self.send, message, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    }

    async fn read(&mut self) -> Result<Option<Message>, FrameError> {
        timeout(WAIT, read_frame(&mut self.recv, DEFAULT_MAX_FRAME))
            .await
            .expect("a control stream frame in time")
    }

    async fn hello(&mut self, version: &str, pending: Vec<TaskResult>) -> Message {
        self.send(&hello(version, pending)).await;
        self.read().await.unwrap().expect("an answer to hello")
    }

    /// The next task stream core opens, with its `Assign`.
    async fn next_task(&mut self) -> TaskStream {
        let (send, mut recv) = timeout(WAIT, self.conn.accept_bi())
            .await
            .expect("a task stream in time")
            .unwrap();
        let message = read_frame(&mut recv, DEFAULT_MAX_FRAME)
            .await
            .unwrap()
            .unwrap();
        let Message::Assign(task) = message else {
            panic!("expected assign, got {message:?}");
        };
        TaskStream { task, send, recv }
    }

    /// How the connection ended.
    async fn closed(&self) -> ConnectionError {
        timeout(WAIT, self.conn.closed())
            .await
            .expect("the connection closes in time")
    }
}

impl TaskStream {
    async fn send(&mut self, message: &Message) {
        write_frame(&mut self.send, message, DEFAULT_MAX_FRAME)
            .await
            .unwrap();
    }

    async fn read(&mut self) -> Result<Option<Message>, FrameError> {
        timeout(WAIT, read_frame(&mut self.recv, DEFAULT_MAX_FRAME))
            .await
            .expect("a task stream frame in time")
    }

    async fn accept(&mut self) {
        let message = Message::Accepted(Accepted {
            task_id: self.task.id,
            attempt: self.task.attempt,
        });
        self.send(&message).await;
    }

    fn success(&self) -> TaskResult {
        let mut result = TaskResult::success(self.task.id, self.task.attempt, Timestamp::now());
        result.outputs.insert("container".into(), "abc123".into());
        result
    }
}

/// The application error code a connection was closed with, if it was closed that way.
fn app_close_code(error: &ConnectionError) -> Option<u32> {
    match error {
        ConnectionError::ApplicationClosed(close) => {
            u32::try_from(close.error_code.into_inner()).ok()
        }
        _ => None,
    }
}

/// The stream reset code (or connection close code) a frame error on the agent side shows.
fn reset_code(error: &FrameError) -> Option<u32> {
    let FrameError::Io(io) = error else {
        return None;
    };
    let read = io.get_ref()?.downcast_ref::<quinn::ReadError>()?;
    match read {
        quinn::ReadError::Reset(code) => u32::try_from(code.into_inner()).ok(),
        quinn::ReadError::ConnectionLost(e) => app_close_code(e),
        _ => None,
    }
}

/// Tries a whole session with `endpoint`: `Ok` only if `Welcome` arrives.
async fn try_session(endpoint: quinn::Endpoint, addr: SocketAddr) -> Result<(), String> {
    let mut agent = Agent::connect_with(endpoint, addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    write_frame(&mut agent.send, &hello(VERSION, vec![]), DEFAULT_MAX_FRAME)
        .await
        .map_err(|e| format!("hello: {e}"))?;
    match agent.read().await {
        Ok(Some(Message::Welcome(_))) => Ok(()),
        Ok(other) => Err(format!("answer: {other:?}")),
        Err(e) => Err(format!(
            "read: {e}; connection: {:?}",
            agent.conn.close_reason()
        )),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_and_hello_round_trip() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    let mut agent = Agent::connect(&core, &creds).await;
    let Message::Welcome(welcome) = agent.hello(VERSION, vec![]).await else {
        panic!("expected welcome");
    };
    assert_eq!(welcome.core_version, VERSION);
    assert_eq!(welcome.heartbeat_interval, DurationMs::from_secs(5));
    assert_eq!(welcome.limits, Limits::default());

    let record = core.app.directory.agent_by_name("host-1").unwrap();
    assert_eq!(record.transport.as_deref(), Some("quic"));
    assert_eq!(record.version, VERSION);
    assert!(record.last_seen.is_some());
    agent.send(&Message::Heartbeat(Heartbeat::default())).await;
    core.wait_counters("heartbeat", |c| c.heartbeats == 1).await;
    let c = core.counters();
    assert_eq!((c.handshakes_completed, c.sessions_opened), (1, 1));
    assert!(c.datagrams_received > 0);
    assert_eq!(c.datagrams_malformed, 0);

    // Handshake + Hello → Welcome, a fresh connection (full TLS handshake) each time; each
    // session replaces the previous one of that agent (another agent than `agent`).
    let timed = core.enroll("host-2").await;
    let mut times = Vec::new();
    for _ in 0..20 {
        let endpoint = client_endpoint(&timed.identity, core.app.pki.ca_cert());
        let started = Instant::now();
        try_session(endpoint, core.addr).await.unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "QUIC handshake + hello/welcome on loopback over 20 connections: min {:?}, median {:?}, max {:?}",
        times[0], times[10], times[19]
    );

    // Shutdown closes live connections with SHUTDOWN.
    core.stop().await;
    let error = agent.closed().await;
    assert_eq!(
        app_close_code(&error),
        Some(error_code::SHUTDOWN),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_skew_is_rejected() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    for version in ["0.3.0", "1.1.0", "0.0.1"] {
        let mut agent = Agent::connect(&core, &creds).await;
        let answer = agent.hello(version, vec![]).await;
        if version == "0.0.1" {
            // Minor N-1 of core's 0.1.x is accepted.
            assert!(
                matches!(answer, Message::Welcome(_)),
                "{version}: {answer:?}"
            );
            continue;
        }
        let Message::Reject(reject) = answer else {
            panic!("{version}: expected reject, got {answer:?}");
        };
        assert_eq!(reject.reason, "upgrade required");
        let error = agent.closed().await;
        assert_eq!(
            app_close_code(&error),
            Some(error_code::REJECTED),
            "{error}"
        );
    }
    let mut agent = Agent::connect(&core, &creds).await;
    let mut other_protocol = hello(VERSION, vec![]);
    if let Message::Hello(h) = &mut other_protocol {
        h.protocol_version = PROTOCOL_VERSION + 1;
    }
    agent.send(&other_protocol).await;
    let Some(Message::Reject(reject)) = agent.read().await.unwrap() else {
        panic!("expected reject");
    };
    assert!(
        reject.reason.starts_with("unsupported protocol version"),
        "{}",
        reject.reason
    );
    assert_eq!(core.counters().sessions_rejected, 3);
    assert_eq!(core.counters().sessions_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_round_trip_and_duplicate_result() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    let mut agent = Agent::session(&core, &creds).await;

    let id = core.submit("host-1", "web").await;
    let mut stream = agent.next_task().await;
    assert_eq!(stream.task.id, id);
    assert_eq!(stream.task.attempt, 1);
    assert_eq!(stream.task.target, "web");
    assert!(matches!(&stream.task.payload, TaskPayload::Deploy(d) if d.image == IMAGE));
    assert_eq!(core.state(id).await, TaskState::Dispatched);

    stream.accept().await;
    core.wait_state(id, TaskState::Running).await;

    let mut events = core.app.engine.subscribe();
    stream
        .send(&Message::Progress(Progress {
            task_id: id,
            step: "pull".into(),
            line: "pulling by digest".into(),
        }))
        .await;
    let event = timeout(WAIT, events.recv()).await.unwrap().unwrap();
    assert_eq!(
        event,
        TaskEvent::Progress {
            task_id: id,
            step: "pull".into(),
            line: "pulling by digest".into()
        }
    );

    let result = stream.success();
    stream.send(&Message::Result(result.clone())).await;
    let ack = stream.read().await.unwrap();
    assert_eq!(
        ack,
        Some(Message::ResultAck(ResultAck {
            task_id: id,
            attempt: 1
        }))
    );
    // The ack comes after the result is durable; core finishes the stream after it.
    assert_eq!(core.state(id).await, TaskState::Succeeded);
    assert_eq!(stream.read().await.unwrap(), None);
    let stored = core.app.engine.get(id).await.unwrap();
    assert_eq!(stored.result.as_ref(), Some(&result));

    // The agent did not see the ack (say): the same result comes back in the next Hello.
    // It is acked and changes nothing, even with different contents.
    agent.conn.close(VarInt::from_u32(0), b"restart");
    let mut again = Agent::connect(&core, &creds).await;
    let mut replay = result.clone();
    replay.success = false;
    replay.error = Some("should not count".into());
    let answer = again.hello(VERSION, vec![replay]).await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    assert_eq!(
        again.read().await.unwrap(),
        Some(Message::ResultAck(ResultAck {
            task_id: id,
            attempt: 1
        }))
    );
    let after = core.app.engine.get(id).await.unwrap();
    assert_eq!(after, stored);
    assert_eq!(core.counters().results_acked, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaccepted_task_is_resent_after_reconnect() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    let mut agent = Agent::session(&core, &creds).await;
    let id = core.submit("host-1", "web").await;
    let first = agent.next_task().await;
    assert_eq!(first.task.id, id);
    // Lost before Accepted.
    agent.conn.close(VarInt::from_u32(0), b"crash");
    drop(first);

    let mut agent = Agent::session(&core, &creds).await;
    let mut again = agent.next_task().await;
    assert_eq!((again.task.id, again.task.attempt), (id, 1));
    assert_eq!(core.state(id).await, TaskState::Dispatched);
    again.accept().await;
    core.wait_state(id, TaskState::Running).await;
    let result = again.success();
    again.send(&Message::Result(result)).await;
    assert!(matches!(
        again.read().await.unwrap(),
        Some(Message::ResultAck(_))
    ));
    assert_eq!(core.state(id).await, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_sent_on_the_task_stream() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    let mut agent = Agent::session(&core, &creds).await;
    let id = core.submit("host-1", "web").await;
    let mut stream = agent.next_task().await;
    stream.accept().await;
    core.wait_state(id, TaskState::Running).await;

    core.app.engine.cancel(id, "test").await.unwrap();
    let cancel = stream.read().await.unwrap();
    assert_eq!(
        cancel,
        Some(Message::Cancel(wharf_protocol::Cancel { task_id: id }))
    );
    let result = TaskResult::failure(id, 1, Timestamp::now(), ErrorType::Cancelled, "cancelled");
    stream.send(&Message::Result(result)).await;
    assert!(matches!(
        stream.read().await.unwrap(),
        Some(Message::ResultAck(_))
    ));
    assert_eq!(core.state(id).await, TaskState::Cancelled);
    assert_eq!(core.counters().cancels_sent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_agent_is_cut_off_within_a_second_and_refused() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    // One endpoint for both connections: a client that would resume its TLS session.
    let endpoint = client_endpoint(&creds.identity, core.app.pki.ca_cert());
    let mut agent = Agent::connect_with(endpoint.clone(), core.addr)
        .await
        .unwrap();
    assert!(matches!(
        agent.hello(VERSION, vec![]).await,
        Message::Welcome(_)
    ));
    // A task reaching the agent proves its session is registered with the engine.
    core.submit("host-1", "web").await;
    agent.next_task().await;

    let started = Instant::now();
    core.app
        .directory
        .revoke_agent("host-1", "test")
        .await
        .unwrap();
    core.app
        .engine
        .close_agent("host-1", "the agent was revoked");
    let error = agent.closed().await;
    let elapsed = started.elapsed();
    assert_eq!(app_close_code(&error), Some(error_code::REVOKED), "{error}");
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");
    println!("revocation closed the live connection in {elapsed:?}");

    let failed_before = core.counters().handshakes_failed;
    let refused = try_session(endpoint, core.addr).await;
    assert!(refused.is_err(), "a revoked agent got a session");
    println!("revoked agent reconnect: {}", refused.unwrap_err());
    core.wait_counters("handshake refused", |c| {
        c.handshakes_failed + c.agents_refused > failed_before
    })
    .await;
    assert_eq!(core.counters().sessions_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_is_refused() {
    let core = Core::start().await;
    let real = core.enroll("host-1").await;
    let record = core.app.directory.agent_by_name("host-1").unwrap();

    // A rogue CA issues a certificate naming the enrolled agent's id.
    let rogue_ca = CertificateAuthority::generate(SystemTime::now()).unwrap();
    let (key_pem, csr_pem) = generate_agent_key_and_csr("host-1").unwrap();
    let cert = rogue_ca
        .issue_agent_cert(
            &record.id.to_string(),
            "host-1",
            AgentKeyRequest::from_pem(&csr_pem),
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let rogue = TlsIdentity::from_pem(&cert.pem, key_pem.expose()).unwrap();
    let endpoint = client_endpoint(&rogue, core.app.pki.ca_cert());
    let refused = try_session(endpoint, core.addr).await;
    assert!(refused.is_err(), "a foreign certificate got a session");
    println!("foreign CA: {}", refused.unwrap_err());
    core.wait_counters("handshake failure", |c| c.handshakes_failed >= 1)
        .await;
    assert_eq!(core.counters().sessions_opened, 0);

    // The listener still serves the real agent.
    Agent::session(&core, &real).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_that_stream_and_others_are_served() {
    let core = Core::start().await;
    let a = core.enroll("host-a").await;
    let b = core.enroll("host-b").await;

    // After Welcome: the control stream is reset with FRAME_TOO_LARGE, then the connection
    // closes with the same code.
    let mut agent = Agent::session(&core, &a).await;
    agent.send.write_all(&[0xff; 4]).await.unwrap();
    let error = agent.read().await.unwrap_err();
    assert_eq!(
        reset_code(&error),
        Some(error_code::FRAME_TOO_LARGE),
        "{error}"
    );
    let closed = agent.closed().await;
    assert_eq!(
        app_close_code(&closed),
        Some(error_code::FRAME_TOO_LARGE),
        "{closed}"
    );

    // Instead of Hello: the same.
    let mut early = Agent::connect(&core, &a).await;
    early
        .send
        .write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3])
        .await
        .unwrap();
    let error = early.read().await.unwrap_err();
    assert_eq!(
        reset_code(&error),
        Some(error_code::FRAME_TOO_LARGE),
        "{error}"
    );
    assert_eq!(core.counters().frames_too_large, 2);

    // Another agent, and the same one again, are served.
    let mut other = Agent::session(&core, &b).await;
    let id = core.submit("host-b", "web").await;
    assert_eq!(other.next_task().await.task.id, id);
    Agent::session(&core, &a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_frame_on_a_task_stream_closes_only_that_stream() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    let mut agent = Agent::session(&core, &creds).await;
    let first = core.submit("host-1", "web").await;
    let mut stream = agent.next_task().await;
    assert_eq!(stream.task.id, first);
    // A 3-byte body that is no message.
    stream
        .send
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let error = stream.read().await.unwrap_err();
    assert_eq!(
        reset_code(&error),
        Some(error_code::DECODE_ERROR),
        "{error}"
    );
    assert_eq!(core.counters().frames_undecodable, 1);

    // The session goes on: heartbeats count, another target's task arrives and completes.
    agent.send(&Message::Heartbeat(Heartbeat::default())).await;
    core.wait_counters("heartbeat", |c| c.heartbeats == 1).await;
    let second = core.submit("host-1", "db").await;
    let mut stream = agent.next_task().await;
    assert_eq!(stream.task.id, second);
    stream.accept().await;
    let result = stream.success();
    stream.send(&Message::Result(result)).await;
    assert!(matches!(
        stream.read().await.unwrap(),
        Some(Message::ResultAck(_))
    ));
    assert_eq!(core.state(second).await, TaskState::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_for_another_agents_task_are_refused() {
    let core = Core::start().await;
    let a = core.enroll("host-a").await;
    let b = core.enroll("host-b").await;
    let mut agent_a = Agent::session(&core, &a).await;
    let mut agent_b = Agent::session(&core, &b).await;
    let task_a = core.submit("host-a", "web").await;
    let task_b = core.submit("host-b", "web").await;
    let mut stream_a = agent_a.next_task().await;
    let stream_b = agent_b.next_task().await;
    assert_eq!((stream_a.task.id, stream_b.task.id), (task_a, task_b));

    // On a task stream: a result naming B's task closes A's stream, no ack.
    let forged = TaskResult::success(task_b, 1, Timestamp::now());
    stream_a.send(&Message::Result(forged.clone())).await;
    let error = stream_a.read().await.unwrap_err();
    assert_eq!(
        reset_code(&error),
        Some(error_code::PROTOCOL_VIOLATION),
        "{error}"
    );
    assert_eq!(core.state(task_b).await, TaskState::Dispatched);

    // In Hello.pending_results: the engine refuses it, no ack; A's own result is acked.
    agent_a.conn.close(VarInt::from_u32(0), b"restart");
    let mut again = Agent::connect(&core, &a).await;
    let own = TaskResult::success(task_a, 1, Timestamp::now());
    let answer = again.hello(VERSION, vec![forged, own]).await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    // Acks come in the order of pending_results: the first one is for A's task.
    assert_eq!(
        again.read().await.unwrap(),
        Some(Message::ResultAck(ResultAck {
            task_id: task_a,
            attempt: 1
        }))
    );
    assert_eq!(core.state(task_b).await, TaskState::Dispatched);
    assert_eq!(core.state(task_a).await, TaskState::Succeeded);
    assert_eq!(core.counters().results_refused, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_heartbeats_close_the_connection() {
    let core = Core::start_with(QuicConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..QuicConfig::default()
    })
    .await;
    let quiet = core.enroll("quiet").await;
    let chatty = core.enroll("chatty").await;
    let mut quiet_agent = Agent::connect(&core, &quiet).await;
    let Message::Welcome(welcome) = quiet_agent.hello(VERSION, vec![]).await else {
        panic!("expected welcome");
    };
    // Core's silence deadline starts when it has sent Welcome: before this instant.
    let started = Instant::now();
    assert_eq!(welcome.heartbeat_interval, DurationMs::from_millis(100));
    let mut chatty_agent = Agent::session(&core, &chatty).await;

    let heartbeats = async {
        // The heartbeat cadence itself, not a wait for an event.
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            chatty_agent
                .send(&Message::Heartbeat(Heartbeat::default()))
                .await;
        }
    };
    let error = tokio::select! {
        error = quiet_agent.closed() => error,
        () = heartbeats => unreachable!(),
    };
    let elapsed = started.elapsed();
    assert_eq!(
        app_close_code(&error),
        Some(error_code::PROTOCOL_VIOLATION),
        "{error}"
    );
    assert!(
        elapsed >= Duration::from_millis(200),
        "closed after {elapsed:?}"
    );
    assert_eq!(core.counters().heartbeat_timeouts, 1);
    // The agent that keeps heartbeating keeps its session.
    assert!(chatty_agent.conn.close_reason().is_none());
    assert_eq!(
        core.app.engine.session_transport("chatty").await,
        Some("quic")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_datagrams_do_not_stop_the_listener() {
    let core = Core::start().await;
    let creds = core.enroll("host-1").await;
    let mut before = Agent::session(&core, &creds).await;

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut certainly_malformed = 0;
    for i in 0..300 {
        let len = rng.gen_range(0..1400);
        let mut datagram: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        if i % 3 == 0 {
            // Fixed bit clear: never a QUIC packet for this endpoint.
            datagram.insert(0, 0x00);
        }
        if datagram.first().is_some_and(|b| b & 0x40 == 0) {
            certainly_malformed += 1;
        }
        socket.send_to(&datagram, core.addr).unwrap();
    }
    // A long-header Initial lookalike with a bogus version, and an empty datagram.
    socket
        .send_to(
            &[0xc0, 0xde, 0xad, 0xbe, 0xef, 8, 1, 2, 3, 4, 5, 6, 7, 8, 0],
            core.addr,
        )
        .unwrap();
    socket.send_to(&[], core.addr).unwrap();
    certainly_malformed += 1;
    core.wait_counters("garbage counted", |c| {
        c.datagrams_malformed >= certainly_malformed
    })
    .await;

    // The connection made before still works, and new ones are served.
    let id = core.submit("host-1", "web").await;
    assert_eq!(before.next_task().await.task.id, id);
    let other = core.enroll("host-2").await;
    Agent::session(&core, &other).await;
    println!("garbage: {:?}", core.counters());
}

/// The data dir of a core with the agents `names` enrolled (in this process, then
/// released), for a `wharf-core serve` child to run on. Returns the agents' identities
/// and the CA.
async fn enrolled_data_dir(
    dir: &std::path::Path,
    names: &[String],
) -> (Vec<Creds>, rustls_pki_types::CertificateDer<'static>) {
    let (app, _boot) = App::open(AppConfig {
        data_dir: dir.join("data"),
        server_names: vec![],
        master_key: None,
        engine: EngineConfig::default(),
    })
    .await
    .unwrap();
    let mut creds = Vec::new();
    for name in names {
        let (token, _) = app
            .directory
            .create_enroll_token(name, Duration::from_secs(600), "test")
            .await
            .unwrap();
        let (key_pem, csr_pem) = generate_agent_key_and_csr(name).unwrap();
        let enrolled = app
            .directory
            .enroll(EnrollRequest {
                token,
                name: name.to_string(),
                csr_pem,
                x25519_public: AgentSealKey::generate().unwrap().public(),
                version: VERSION.to_string(),
                capabilities: vec!["docker".into()],
            })
            .await
            .unwrap();
        creds.push(Creds {
            identity: TlsIdentity::from_pem(&enrolled.cert_pem, key_pem.expose()).unwrap(),
        });
    }
    let ca = app.pki.ca_cert().clone().into_owned();
    drop(app);
    // The store is released once the app's tasks have let go of it.
    let store = dir.join("data").join("store");
    let started = Instant::now();
    loop {
        match wharf_core::store::SledStore::open(&store) {
            Ok(opened) => break drop(opened),
            Err(e) => assert!(started.elapsed() < WAIT, "the store stays held: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (creds, ca)
}

/// `kill -9` of core, restarted at once on the same data dir and port: the new process's
/// stateless resets (keys kept in `quic-reset.key`) end the agents' old connections as
/// soon as they send something, instead of leaving them to the idle timeout (15 s). 32
/// agents share one client socket and send at the same instant, so their packets reach
/// core in one receive batch: each must get its reset (no rate limit per batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_cores_stateless_resets_end_the_old_connections_at_once() {
    const AGENTS: usize = 32;
    let dir = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..AGENTS).map(|i| format!("web-{i}")).collect();
    let (creds, ca) = enrolled_data_dir(dir.path(), &names).await;
    let first = crate::cli::Core::start_on(dir.path(), "127.0.0.1:0");
    let port = first.port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut agents = Vec::new();
    for c in &creds {
        let mut agent = Agent::connect_shared(&endpoint, client_config(&c.identity, &ca), addr)
            .await
            .unwrap();
        assert!(matches!(
            agent.hello(VERSION, vec![]).await,
            Message::Welcome(_)
        ));
        agents.push(agent);
    }

    first.kill();
    let second = crate::cli::Core::start_on(dir.path(), &format!("127.0.0.1:{port}"));
    // Every agent's next packet (a heartbeat) reaches the new process.
    let sent = Instant::now();
    let heartbeat = Message::Heartbeat(Heartbeat {
        running_tasks: vec![],
        load: Default::default(),
    });
    for agent in &mut agents {
        agent.send(&heartbeat).await;
    }
    for (i, agent) in agents.iter().enumerate() {
        let error = agent.closed().await;
        let took = sent.elapsed();
        assert!(
            matches!(error, ConnectionError::Reset),
            "agent {i}: the old connection must end by a stateless reset, got {error:?} after \
             {took:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "agent {i}: the reset took {took:?} (more than 1 s)"
        );
    }

    // And an agent gets a session with the new process right away.
    try_session(client_endpoint(&creds[0].identity, &ca), addr)
        .await
        .unwrap();
    drop(second);
}

/// A connection attempt over `max_connecting` waits for a place (and is served as soon as
/// the session in set-up is open); one that waited `connect_queue_wait` is refused (the
/// agent retries after its backoff).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connecting_wait_for_a_place_or_are_refused() {
    // Waiting: served once the place frees.
    let core = Core::start_with(QuicConfig {
        max_connecting: 1,
        connect_queue_wait: WAIT,
        ..QuicConfig::default()
    })
    .await;
    let first = core.enroll("first").await;
    let second = core.enroll("second").await;
    // Handshake done, no Hello yet: the one place is taken.
    let mut setting_up = Agent::connect(&core, &first).await;
    let endpoint = client_endpoint(&second.identity, core.app.pki.ca_cert());
    let addr = core.addr;
    let waiting = tokio::spawn(try_session(endpoint, addr));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "the second attempt must wait for the place"
    );
    assert!(matches!(
        setting_up.hello(VERSION, vec![]).await,
        Message::Welcome(_)
    ));
    timeout(WAIT, waiting)
        .await
        .expect("served once the place is free")
        .unwrap()
        .unwrap();
    assert_eq!(core.counters().connections_refused_busy, 0);
    core.stop().await;

    // Waited too long: refused.
    let core = Core::start_with(QuicConfig {
        max_connecting: 1,
        connect_queue_wait: Duration::from_millis(100),
        ..QuicConfig::default()
    })
    .await;
    let first = core.enroll("first").await;
    let second = core.enroll("second").await;
    let _setting_up = Agent::connect(&core, &first).await;
    let refused = Agent::connect_with(
        client_endpoint(&second.identity, core.app.pki.ca_cert()),
        core.addr,
    )
    .await;
    let error = refused.err().expect("the second connection is refused");
    let closed = error.downcast_ref::<ConnectionError>();
    assert!(
        matches!(closed, Some(ConnectionError::ConnectionClosed(c))
            if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{error:?}"
    );
    assert_eq!(core.counters().connections_refused_busy, 1);
    core.stop().await;
}
