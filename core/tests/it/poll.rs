//! The HTTPS long-poll transport (`POST /agent/v1/poll`, docs/protocol.md §9) end to
//! end: an [`App`] on a temporary data dir (real sled, real PKI) served over real TLS on
//! 127.0.0.1:0 with a short long poll, and agents written here with reqwest presenting
//! the certificates the directory issued.
//!
//! Every wait is bounded and waits for a condition, never for a fixed time; the only
//! timings asserted are upper bounds (a held poll answers within a second of a submit).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use uuid::Uuid;
use wharf_core::api::{self, ApiState, Metrics};
use wharf_core::app::{App, AppConfig};
use wharf_core::directory::EnrollRequest;
use wharf_core::engine::{EngineConfig, SubmitRequest};
use wharf_core::pki::{
    agent_client_config, generate_agent_key_and_csr, operator_client_config, AgentKeyRequest,
    CertificateAuthority, TlsIdentity, ALPN_HTTP11,
};
use wharf_core::queue::TaskState;
use wharf_core::transport::poll::{PollConfig, PollHub};
use wharf_protocol::seal::AgentSealKey;
use wharf_protocol::{
    from_body, poll_header, to_body, Accepted, DeploySpec, DurationMs, ErrorType, PollRequest,
    PollResponse, Priority, Progress, TaskPayload, TaskResult, Timestamp, POLL_PATH,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE: &str =
    "127.0.0.1:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";
/// Upper bound of every awaited condition.
const WAIT: Duration = Duration::from_secs(15);
/// The long poll of these tests.
const LONG_POLL: Duration = Duration::from_millis(1500);

struct Core {
    app: App,
    hub: Arc<PollHub>,
    addr: SocketAddr,
    admin: String,
    operator: reqwest::Client,
    _stop: watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

/// A protocol-level polling agent.
#[derive(Clone)]
struct PollAgent {
    name: String,
    client: reqwest::Client,
    url: String,
}

impl Core {
    async fn start(config: PollConfig) -> Core {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let (app, boot) = App::open(AppConfig {
            data_dir: data_dir.clone(),
            server_names: vec![],
            master_key: None,
            engine: EngineConfig::default(),
        })
        .await
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = watch::channel(false);
        let hub = PollHub::new(app.clone(), config);
        let router = api::router_with_poll(
            ApiState {
                app: app.clone(),
                metrics: metrics.clone(),
                shutdown: stopped.clone(),
            },
            hub.clone(),
        );
        let tls = api::tls_config(&app).unwrap();
        tokio::spawn(api::serve_https(listener, tls, router, metrics, stopped));
        let pem = std::fs::read(data_dir.join("ca.pem")).unwrap();
        let operator = reqwest::Client::builder()
            .use_preconfigured_tls(operator_client_config(&pem, &[ALPN_HTTP11]).unwrap())
            .build()
            .unwrap();
        Core {
            app,
            hub,
            addr,
            admin: boot.admin_token.unwrap().expose().to_string(),
            operator,
            _stop: stop,
            _dir: dir,
        }
    }

    /// A core whose agents are offline 300 ms after their last poll, and its agent
    /// `host-1`, which polled once.
    async fn fast_offline() -> (Core, PollAgent) {
        let core = Core::start(PollConfig {
            long_poll: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(100),
            ..PollConfig::default()
        })
        .await;
        let agent = core.agent("host-1").await;
        assert!(agent.empty().await.ok().tasks.is_empty());
        (core, agent)
    }

    fn quick() -> PollConfig {
        PollConfig {
            long_poll: LONG_POLL,
            ..PollConfig::default()
        }
    }

    /// Enrolls `name` (as `POST /agent/v1/enroll` does) and returns its identity.
    async fn enroll(&self, name: &str) -> TlsIdentity {
        let (token, _) = self
            .app
            .directory
            .create_enroll_token(name, Duration::from_secs(600), "test")
            .await
            .unwrap();
        let (key_pem, csr_pem) = generate_agent_key_and_csr(name).unwrap();
        let enrolled = self
            .app
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
        TlsIdentity::from_pem(&enrolled.cert_pem, key_pem.expose()).unwrap()
    }

    fn agent_with(&self, name: &str, identity: Option<&TlsIdentity>) -> PollAgent {
        let tls = match identity {
            Some(identity) => {
                agent_client_config(identity, self.app.pki.ca_cert(), &[ALPN_HTTP11]).unwrap()
            }
            None => {
                let pem = std::fs::read(self.app.data_dir.join("ca.pem")).unwrap();
                operator_client_config(&pem, &[ALPN_HTTP11]).unwrap()
            }
        };
        PollAgent {
            name: name.to_string(),
            client: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .unwrap(),
            url: format!("https://{}{POLL_PATH}", self.addr),
        }
    }

    async fn agent(&self, name: &str) -> PollAgent {
        let identity = self.enroll(name).await;
        self.agent_with(name, Some(&identity))
    }

    async fn submit(&self, agent: &str, target: &str, expires_in: Option<Duration>) -> Uuid {
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
                    expires_in: expires_in.map(DurationMs::from),
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

    async fn wait_state(&self, id: Uuid, state: TaskState) {
        let started = Instant::now();
        while self.state(id).await != state {
            assert!(
                started.elapsed() < WAIT,
                "task {id} is {:?}, not {state:?}",
                self.state(id).await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `GET /v1/agents`, the entry of `name`.
    async fn agent_view(&self, name: &str) -> Value {
        let agents: Value = self
            .operator
            .get(format!("https://{}/v1/agents", self.addr))
            .bearer_auth(&self.admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        agents
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no agent {name} in {agents}"))
    }

    async fn wait_agent_state(&self, name: &str, state: &str) -> Value {
        let started = Instant::now();
        loop {
            let view = self.agent_view(name).await;
            if view["state"] == state {
                return view;
            }
            assert!(started.elapsed() < WAIT, "agent {name}: {view}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What one poll answered.
#[derive(Debug)]
enum Answer {
    Ok(PollResponse),
    Refused(StatusCode, Value, Option<String>),
}

impl Answer {
    fn ok(self) -> PollResponse {
        match self {
            Answer::Ok(r) => r,
            Answer::Refused(status, body, _) => panic!("poll refused: {status} {body}"),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Answer::Ok(_) => StatusCode::OK,
            Answer::Refused(status, ..) => *status,
        }
    }
}

impl PollAgent {
    async fn send_raw(&self, body: Vec<u8>) -> Result<Answer, reqwest::Error> {
        let response = self
            .client
            .post(&self.url)
            .header(poll_header::AGENT_VERSION, VERSION)
            .header(poll_header::PROTOCOL_VERSION, "1")
            .header(poll_header::CAPABILITIES, "docker,sealed-credentials")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = response.bytes().await?;
        Ok(if status == StatusCode::OK {
            Answer::Ok(from_body(&bytes).expect("a postcard PollResponse"))
        } else {
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            Answer::Refused(status, body, retry_after)
        })
    }

    async fn poll(&self, request: &PollRequest) -> Answer {
        self.send_raw(to_body(request).unwrap())
            .await
            .unwrap_or_else(|e| panic!("{}: poll failed: {e}", self.name))
    }

    async fn empty(&self) -> Answer {
        self.poll(&PollRequest::default()).await
    }
}

/// Starts an empty poll of `agent` and returns once core holds it.
async fn hold(core: &Core, agent: &PollAgent) -> tokio::task::JoinHandle<Answer> {
    let before = core.hub.in_flight();
    let agent = agent.clone();
    let held = tokio::spawn(async move { agent.empty().await });
    let started = Instant::now();
    while core.hub.in_flight() <= before {
        assert!(started.elapsed() < WAIT, "the poll never reached core");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    held
}

fn accepted(task_id: Uuid, attempt: u32) -> PollRequest {
    PollRequest {
        accepted: vec![Accepted { task_id, attempt }],
        ..PollRequest::default()
    }
}

fn results(results: Vec<TaskResult>) -> PollRequest {
    PollRequest {
        results,
        ..PollRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_delivers_a_task_at_once_and_results_are_applied_once() {
    let core = Core::start(Core::quick()).await;
    let agent = core.agent("host-1").await;

    // The first poll opens the session and is answered at once.
    let started = Instant::now();
    assert!(agent.empty().await.ok().tasks.is_empty());
    assert!(started.elapsed() < LONG_POLL, "the first poll was held");

    // Nothing to do: the poll is held for the long poll, then answered empty.
    let started = Instant::now();
    let idle = agent.empty().await.ok();
    let held = started.elapsed();
    assert!(
        idle.tasks.is_empty() && idle.acked_results.is_empty(),
        "{idle:?}"
    );
    assert!(
        held >= LONG_POLL - Duration::from_millis(50),
        "held only {held:?}"
    );
    let view = core.wait_agent_state("host-1", "online").await;
    assert_eq!(view["transport"], "poll", "{view}");

    // A held poll is answered as soon as a task is submitted.
    let held = hold(&core, &agent).await;
    let submitted = Instant::now();
    let id = core.submit("host-1", "web", None).await;
    let answer = held.await.unwrap().ok();
    let latency = submitted.elapsed();
    println!("submit to poll answer: {latency:?}");
    assert!(
        latency < Duration::from_secs(1),
        "answered after {latency:?}"
    );
    assert_eq!(answer.tasks.len(), 1, "{answer:?}");
    let task = &answer.tasks[0];
    assert_eq!((task.id, task.target.as_str()), (id, "web"));
    assert_eq!(core.state(id).await, TaskState::Dispatched);

    // The next poll confirms it: running (that poll is then held, like any other).
    let confirm = tokio::spawn({
        let agent = agent.clone();
        let request = accepted(id, task.attempt);
        async move { agent.poll(&request).await }
    });
    core.wait_state(id, TaskState::Running).await;
    assert!(confirm.await.unwrap().ok().tasks.is_empty());

    // The result is applied and acked, in an answer that comes at once.
    let mut result = TaskResult::success(id, task.attempt, Timestamp::now());
    result.outputs.insert("container".into(), "abc".into());
    let started = Instant::now();
    let answer = agent.poll(&results(vec![result])).await.ok();
    assert!(
        started.elapsed() < LONG_POLL,
        "a poll with results is not held"
    );
    assert_eq!(answer.acked_results.len(), 1);
    assert_eq!(
        (
            answer.acked_results[0].task_id,
            answer.acked_results[0].attempt
        ),
        (id, task.attempt)
    );
    assert_eq!(core.state(id).await, TaskState::Succeeded);

    // A duplicate (even with other contents) is acked and changes nothing.
    let other = TaskResult::failure(
        id,
        task.attempt,
        Timestamp::now(),
        ErrorType::Docker,
        "late duplicate",
    );
    let answer = agent.poll(&results(vec![other])).await.ok();
    assert_eq!(answer.acked_results.len(), 1);
    let view = core.app.engine.get(id).await.unwrap();
    assert_eq!(view.state, TaskState::Succeeded);
    assert_eq!(view.result.unwrap().outputs["container"], "abc");

    // `/metrics` counts what happened: one task sent, two results acked (the duplicate
    // too), one polling session open.
    let text = core
        .operator
        .get(format!("https://{}/metrics", core.addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(sample("wharf_poll_tasks_sent_total"), 1.0);
    assert_eq!(sample("wharf_poll_results_acked_total"), 2.0);
    assert_eq!(sample("wharf_poll_sessions_active"), 1.0);
    assert!(sample("wharf_poll_requests_total") >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_is_required_and_revoked_or_foreign_ones_are_refused() {
    let core = Core::start(Core::quick()).await;
    let identity = core.enroll("host-1").await;
    let record = core.app.directory.agent_by_name("host-1").unwrap();

    // No client certificate: 401.
    let anonymous = core.agent_with("anonymous", None);
    let answer = anonymous.empty().await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED, "{answer:?}");

    // A certificate for the agent's id from another CA: the handshake fails.
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
    let foreign = core.agent_with("rogue", Some(&rogue));
    let refused = foreign
        .send_raw(to_body(&PollRequest::default()).unwrap())
        .await;
    assert!(
        refused.is_err(),
        "a foreign certificate was served: {refused:?}"
    );
    assert_eq!(core.hub.counters().requests.load(Ordering::Relaxed), 0);

    // The real agent polls; a task is queued for it and delivered.
    let agent = core.agent_with("host-1", Some(&identity));
    assert!(agent.empty().await.ok().tasks.is_empty());
    let id = core.submit("host-1", "web", None).await;
    let answer = agent.empty().await.ok();
    assert_eq!(answer.tasks.len(), 1);

    // Revoked while a poll is held: that poll is answered 403 at once.
    let held = hold(&core, &agent).await;
    let revoked_at = Instant::now();
    core.app
        .directory
        .revoke_agent("host-1", "test")
        .await
        .unwrap();
    core.app.engine.close_agent("host-1", "revoked");
    let answer = held.await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{answer:?}");
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // Later polls are refused: on a new connection by the handshake, and a result for
    // its task is not taken.
    let fresh = core.agent_with("host-1", Some(&identity));
    let result = TaskResult::success(id, 1, Timestamp::now());
    let refused = fresh
        .send_raw(to_body(&results(vec![result])).unwrap())
        .await;
    match refused {
        Err(_) => {}
        Ok(answer) => assert_eq!(answer.status(), StatusCode::FORBIDDEN, "{answer:?}"),
    }
    assert_eq!(core.state(id).await, TaskState::Dispatched);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_bodies_get_400_and_413_and_change_nothing() {
    let core = Core::start(Core::quick()).await;
    let agent = core.agent("host-1").await;
    let id = core.submit("host-1", "web", None).await;

    for (body, status) in [
        (vec![0xff; 64], StatusCode::BAD_REQUEST),
        (b"{\"heartbeat\": {}}".to_vec(), StatusCode::BAD_REQUEST),
        (
            // A valid request followed by a trailing byte.
            {
                let mut b = to_body(&PollRequest::default()).unwrap();
                b.push(0);
                b
            },
            StatusCode::BAD_REQUEST,
        ),
        (vec![0u8; 9 * 1024 * 1024], StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let len = body.len();
        let answer = agent.send_raw(body).await.unwrap();
        assert_eq!(answer.status(), status, "{len} bytes: {answer:?}");
        if let Answer::Refused(_, body, _) = &answer {
            assert!(body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }
    // Missing headers: 400.
    let response = agent
        .client
        .post(&agent.url)
        .body(to_body(&PollRequest::default()).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // Nothing changed: no session, the task still queued, the agent offline.
    assert_eq!(core.state(id).await, TaskState::Queued);
    assert_eq!(core.hub.sessions(), 0);
    let view = core.agent_view("host-1").await;
    assert_eq!(view["state"], "offline", "{view}");
    assert_eq!(view["transport"], Value::Null, "{view}");

    // A valid poll afterwards gets the task.
    let answer = agent.empty().await.ok();
    assert_eq!(answer.tasks.len(), 1);
    assert_eq!(answer.tasks[0].id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_answer_429_with_retry_after_and_apply_nothing() {
    let core = Core::start(PollConfig {
        long_poll: LONG_POLL,
        max_requests_per_sec: 1,
        burst: 2,
        max_in_flight: 1,
        ..PollConfig::default()
    })
    .await;
    let a = core.agent("host-a").await;
    let b = core.agent("host-b").await;
    assert!(a.empty().await.ok().tasks.is_empty());

    // host-a holds the only slot; host-b is refused.
    let held = hold(&core, &a).await;
    let answer = b.empty().await;
    let Answer::Refused(status, body, retry_after) = &answer else {
        panic!("not refused: {answer:?}");
    };
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["error"]["code"], "too_many_requests", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert_eq!(held.await.unwrap().status(), StatusCode::OK);

    // host-a may make one request per second, in bursts of two; it made two, and got
    // 1.5 back during the long poll: of two more requests in a row the second is
    // refused, and the result in it is not applied.
    let id = core.submit("host-a", "web", None).await;
    let unknown = TaskResult::success(Uuid::new_v4(), 1, Timestamp::now());
    let answer = a.poll(&results(vec![unknown])).await.ok();
    assert!(
        answer.acked_results.is_empty(),
        "an unknown task's result was acked"
    );
    let answer = a
        .poll(&results(vec![TaskResult::success(id, 1, Timestamp::now())]))
        .await;
    assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS, "{answer:?}");
    // host-a has a session: the task went out to it, and stays there.
    let view = core.app.engine.get(id).await.unwrap();
    assert_eq!(view.state, TaskState::Dispatched);
    assert!(view.result.is_none());
    let over = core.hub.counters().rate_limited.load(Ordering::Relaxed)
        + core.hub.counters().over_capacity.load(Ordering::Relaxed);
    assert_eq!(over, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_progress_for_another_agents_task_are_refused() {
    let core = Core::start(Core::quick()).await;
    let a = core.agent("host-a").await;
    let b = core.agent("host-b").await;
    assert!(a.empty().await.ok().tasks.is_empty());
    let id = core.submit("host-a", "web", None).await;
    let task = a.empty().await.ok().tasks.remove(0);

    let mut events = core.app.engine.subscribe();
    let answer = b
        .poll(&PollRequest {
            results: vec![TaskResult::success(id, task.attempt, Timestamp::now())],
            progress: vec![Progress {
                task_id: id,
                step: "pull".into(),
                line: "forged".into(),
            }],
            accepted: vec![Accepted {
                task_id: id,
                attempt: task.attempt,
            }],
            ..PollRequest::default()
        })
        .await
        .ok();
    assert!(answer.acked_results.is_empty(), "{answer:?}");
    assert!(
        answer.tasks.is_empty(),
        "host-b got host-a's task: {answer:?}"
    );
    assert_eq!(core.state(id).await, TaskState::Dispatched);
    assert!(
        events.try_recv().is_err(),
        "a forged progress line was streamed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_after_missed_polls_then_unaccepted_tasks_are_resent_and_cancels_delivered() {
    let (core, agent) = Core::fast_offline().await;
    let id = core.submit("host-1", "web", None).await;
    let first = agent.empty().await.ok();
    assert_eq!(first.tasks.len(), 1);

    // No poll for 3 heartbeat intervals: offline.
    let view = core.wait_agent_state("host-1", "offline").await;
    assert_eq!(view["transport"], "poll");
    assert_eq!(core.state(id).await, TaskState::Dispatched);

    // Back: the task it never confirmed comes again, same attempt.
    let again = agent.empty().await.ok();
    assert_eq!(again.tasks.len(), 1, "{again:?}");
    assert_eq!(
        (again.tasks[0].id, again.tasks[0].attempt),
        (id, first.tasks[0].attempt)
    );

    // A cancel of the dispatched task reaches the agent in an answer.
    let held = hold(&core, &agent).await;
    core.app.engine.cancel(id, "admin").await.unwrap();
    let answer = held.await.unwrap().ok();
    assert_eq!(answer.cancels, vec![id], "{answer:?}");
    assert_eq!(core.state(id).await, TaskState::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_expires_while_its_polling_agent_is_offline_is_never_sent() {
    let (core, agent) = Core::fast_offline().await;
    core.wait_agent_state("host-1", "offline").await;
    let id = core
        .submit("host-1", "web", Some(Duration::from_millis(300)))
        .await;
    core.wait_state(id, TaskState::Expired).await;
    let answer = agent.empty().await.ok();
    assert!(
        answer.tasks.is_empty(),
        "an expired task was sent: {answer:?}"
    );
    assert_eq!(core.state(id).await, TaskState::Expired);
}
