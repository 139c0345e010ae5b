//! The agent runtime (`wharf_agent_docker::runtime`) against a real `wharf-core serve`
//! child process and a scripted test executor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use uuid::Uuid;
use wharf_agent_docker::runtime::{self, AgentConfig, Identity, RuntimeError, RuntimeEvent};
use wharf_core::engine::{SubmitRequest, TaskView};
use wharf_core::queue::TaskState;
use wharf_protocol::{DeploySpec, DurationMs, ErrorType, Priority, TaskPayload};
use wharf_testbed::core::CoreProcess;
use wharf_testbed::simagent::CoreApi;

use crate::support::{fast, image, start_agent, Agent, Call, Script, WAIT};

// ---------------------------------------------------------------------------------------
// Fixtures: a real core, a running agent.
// ---------------------------------------------------------------------------------------

/// A `wharf-core serve` child with its own data dir, and an admin API client.
pub(crate) struct Bed {
    pub(crate) core: CoreProcess,
    pub(crate) api: CoreApi,
    _data: tempfile::TempDir,
}

pub(crate) async fn bed() -> Bed {
    let data = tempfile::tempdir().unwrap();
    let core = tokio::task::spawn_blocking({
        let data = data.path().join("core");
        move || CoreProcess::start(&data).expect("wharf-core starts")
    })
    .await
    .unwrap();
    let api = core.api().unwrap();
    Bed {
        core,
        api,
        _data: data,
    }
}

impl Bed {
    /// A configuration enrolling `name` with a fresh token, with short timeouts.
    pub(crate) async fn config(&self, name: &str, state: &Path) -> AgentConfig {
        let grant = self.api.create_enroll_token(name, None).await.unwrap();
        fast(AgentConfig::new(self.core.addr(), state, name))
            .with_enrollment(grant.token, grant.ca_hash)
    }

    /// kill -9 of core.
    fn kill_core(&mut self) {
        self.core.kill9().expect("kill -9 of wharf-core");
    }

    /// Starts core again (same port and data dir).
    fn restart_core(&mut self) {
        tokio::task::block_in_place(|| self.core.spawn().expect("wharf-core restarts"));
    }

    pub(crate) async fn submit(
        &self,
        agent: &str,
        target: &str,
        expires_in: Option<Duration>,
    ) -> TaskView {
        let submitted = self
            .api
            .submit(&SubmitRequest {
                agent: agent.into(),
                target: target.into(),
                payload: TaskPayload::Deploy(DeploySpec::new(image(target))),
                priority: Priority::Normal,
                idempotency_key: None,
                expires_at: None,
                expires_in: expires_in.map(DurationMs::from),
                timeout: None,
                max_attempts: Some(1),
            })
            .await
            .unwrap();
        assert_eq!(submitted.status, 201);
        submitted.task
    }

    /// Waits until task `id` is in `state` in core.
    pub(crate) async fn wait_state(&self, id: Uuid, state: TaskState) -> TaskView {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let task = self.api.task(id).await.unwrap().expect("task exists");
            if task.state == state {
                return task;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "task {id} is {:?}, not {state:?}, after {WAIT:?}",
                task.state
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until agent `name` has `state` in `GET /v1/agents` (core opens the session
    /// just after it sends `Welcome`).
    pub(crate) async fn wait_agent_state(&self, name: &str, state: &str) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let agents = self.api.agents().await.unwrap();
            let now = agents
                .iter()
                .find(|a| a["name"] == name)
                .and_then(|a| a["state"].as_str())
                .map(str::to_string);
            if now.as_deref() == Some(state) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "agent {name} is {now:?}, not {state}: {agents:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn state_dir(root: &tempfile::TempDir, name: &str) -> PathBuf {
    root.path().join(name)
}

/// A connected agent `name` whose task on target `web` is running, held in the executor.
struct HeldTask {
    agent: Agent,
    script: Script,
    task: TaskView,
    _root: tempfile::TempDir,
}

/// A connected agent `name` whose tasks on the `held` targets block in the executor.
async fn held_agent(bed: &Bed, name: &str, held: &[&str]) -> (Agent, Script, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let script = Script::new();
    for target in held {
        script.hold(target);
    }
    let mut agent = start_agent(
        bed.config(name, &state_dir(&root, "s")).await,
        script.clone(),
    );
    agent.connected().await;
    (agent, script, root)
}

async fn held_task(bed: &Bed, name: &str) -> HeldTask {
    let (agent, script, root) = held_agent(bed, name, &["web"]).await;
    let task = bed.submit(name, "web", None).await;
    script.wait_started(task.id).await;
    bed.wait_state(task.id, TaskState::Running).await;
    HeldTask {
        agent,
        script,
        task,
        _root: root,
    }
}

// ---------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_pins_the_ca_and_a_restart_reuses_the_identity() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "agent");

    // No identity and no token: a clear error, nothing created.
    let config = fast(AgentConfig::new(bed.core.addr(), &state, "pin"));
    let err = start_agent(config, Script::new())
        .finished()
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("--token"), "{err}");
    assert_eq!(err.exit_code(), 2);

    // A wrong pin: refused, naming both fingerprints; nothing stored; the token unspent.
    let good = bed.config("pin", &state).await;
    let wrong_hash = format!("sha256:{}", "ab".repeat(32));
    let mut wrong = good.clone();
    wrong.ca_hash = Some(wrong_hash.clone());
    let err = start_agent(wrong, Script::new())
        .finished()
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::EnrollmentRefused(_)), "{err}");
    let text = err.to_string();
    let real_hash = good.ca_hash.clone().unwrap();
    assert!(
        text.contains(&wrong_hash),
        "names the pinned fingerprint: {text}"
    );
    assert!(
        text.contains(&real_hash),
        "names the presented fingerprint: {text}"
    );
    assert!(
        !Identity::path(&state).exists(),
        "nothing stored after a refused pin"
    );
    assert!(
        !state.join("journal").exists(),
        "no journal after a refused pin"
    );

    let good_token = good.token.clone().unwrap();
    // The right pin: enrolled, identity saved 0600, connected.
    let mut agent = start_agent(good, Script::new());
    let enrolled = agent
        .events
        .wait("enrollment", |e| matches!(e, RuntimeEvent::Enrolled { .. }))
        .await;
    let RuntimeEvent::Enrolled { agent_id } = enrolled else {
        unreachable!()
    };
    agent.connected().await;
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(Identity::path(&state))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "identity file mode {mode:o}");
    let saved = Identity::load(&state).unwrap().unwrap();
    assert_eq!(saved.agent_id, agent_id);
    bed.wait_agent_state("pin", "online").await;
    agent.stop().await.unwrap();

    // The token is spent: another enrollment with it is refused, saying what to do.
    let reuse = fast(AgentConfig::new(
        bed.core.addr(),
        state_dir(&root, "other"),
        "pin",
    ))
    .with_enrollment(good_token.expose(), real_hash.clone());
    let err = start_agent(reuse, Script::new())
        .finished()
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::EnrollmentRefused(_)), "{err}");
    assert!(
        err.to_string().contains("wharf agent token create"),
        "{err}"
    );
    assert_eq!(err.exit_code(), 3);

    // A restart without a token: the same identity, connected again.
    let mut again = start_agent(
        fast(AgentConfig::new(bed.core.addr(), &state, "pin")),
        Script::new(),
    );
    let loaded = again
        .events
        .wait("identity load", |e| {
            matches!(e, RuntimeEvent::IdentityLoaded { .. })
        })
        .await;
    assert_eq!(loaded, RuntimeEvent::IdentityLoaded { agent_id });
    again.connected().await;
    again.stop().await.unwrap();

    // What the runtime logged names neither the token nor a key.
    let logs = crate::support::captured_logs();
    assert!(logs.contains("enrolled"), "logs are captured: {logs}");
    assert!(
        !logs.contains(good_token.expose()),
        "the token is in the log"
    );
    assert!(!logs.contains("PRIVATE KEY"), "a private key is in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_reaches_the_executor_with_opened_credentials_and_succeeds_in_core() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    bed.api
        .registry_login("127.0.0.1:5999", "deployer", "s3cret-pw")
        .await
        .unwrap();
    let script = Script::new();
    let mut agent = start_agent(
        bed.config("e2e", &state_dir(&root, "a")).await,
        script.clone(),
    );
    agent.connected().await;

    let task = bed.submit("e2e", "web", None).await;
    let done = bed.wait_state(task.id, TaskState::Succeeded).await;
    let result = done.result.expect("result stored");
    assert!(result.success);
    assert_eq!(result.outputs["executor"], "scripted");
    assert_eq!(
        script.calls()[0],
        Call::Execute {
            task_id: task.id,
            target: "web".into(),
            registry_user: Some("deployer".into()),
        },
        "the executor got the task with the credentials core sealed, opened"
    );
    agent
        .events
        .wait(
            "the ack",
            |e| matches!(e, RuntimeEvent::ResultAcked { task_id, .. } if *task_id == task.id),
        )
        .await;
    // A failure is reported as the executor gave it.
    script.fail("db");
    let failing = bed.submit("e2e", "db", None).await;
    let failed = bed.wait_state(failing.id, TaskState::Failed).await;
    let result = failed.result.expect("result stored");
    assert_eq!(result.error_type, Some(ErrorType::HealthFailed));
    assert_eq!(result.error.as_deref(), Some("scripted failure"));
    // The journal holds no credentials.
    agent.stop().await.unwrap();
    let journal = runtime::Journal::open(
        &state_dir(&root, "a").join("journal"),
        runtime::JournalConfig::default(),
    )
    .unwrap();
    let record = journal
        .get(task.id, task.attempt)
        .unwrap()
        .expect("journaled");
    assert!(record.acked);
    assert_eq!(record.task.credentials, None);
    for entry in walk(&state_dir(&root, "a")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(9).any(|w| w == b"s3cret-pw"),
            "the registry password is in {}",
            entry.display()
        );
    }
}

/// Every file below `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_targets_run_at_once_while_one_target_runs_one_task_at_a_time() {
    let bed = bed().await;
    let (agent, script, _root) = held_agent(&bed, "par", &["a", "b"]).await;

    let a1 = bed.submit("par", "a", None).await;
    let b1 = bed.submit("par", "b", None).await;
    let a2 = bed.submit("par", "a", None).await;
    // Both targets are inside the executor at the same time...
    script.wait_started(a1.id).await;
    script.wait_started(b1.id).await;
    bed.wait_state(a1.id, TaskState::Running).await;
    bed.wait_state(b1.id, TaskState::Running).await;
    // ...while the second task of `a` waits for the first.
    assert_eq!(script.executions_of(a2.id), 0, "{:?}", script.calls());
    script.release("a");
    bed.wait_state(a2.id, TaskState::Succeeded).await;
    let calls = script.calls();
    let pos = |want: &Call| calls.iter().position(|c| c == want).unwrap();
    let a2_start = calls
        .iter()
        .position(|c| matches!(c, Call::Execute { task_id, .. } if *task_id == a2.id))
        .unwrap();
    assert!(pos(&Call::Done { task_id: a1.id }) < a2_start, "{calls:?}");
    assert_eq!(
        bed.api.task(b1.id).await.unwrap().unwrap().state,
        TaskState::Running
    );
    script.release("b");
    bed.wait_state(b1.id, TaskState::Succeeded).await;
    for id in [a1.id, b1.id, a2.id] {
        assert_eq!(script.executions_of(id), 1);
    }
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_executor() {
    let bed = bed().await;
    let HeldTask {
        agent,
        script,
        task,
        _root,
    } = held_task(&bed, "cancel").await;
    bed.api.cancel(task.id).await.unwrap();
    script
        .wait_for("the cancel", |calls| {
            calls.contains(&Call::Cancelled { task_id: task.id })
        })
        .await;
    let done = bed.wait_state(task.id, TaskState::Cancelled).await;
    let result = done.result.expect("the agent's result");
    assert_eq!(result.error_type, Some(ErrorType::Cancelled));
    assert!(result.rolled_back);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_finished_while_core_is_down_is_delivered_after_its_restart() {
    let mut bed = bed().await;
    let HeldTask {
        mut agent,
        script,
        task,
        _root,
    } = held_task(&bed, "down").await;

    bed.kill_core();
    agent
        .events
        .wait_new("the lost session", |e| {
            matches!(e, RuntimeEvent::Disconnected { .. })
        })
        .await;
    script.release("web");
    agent
        .events
        .wait(
            "the result",
            |e| matches!(e, RuntimeEvent::Finished { task_id, .. } if *task_id == task.id),
        )
        .await;
    // The agent keeps trying while core is down.
    agent
        .events
        .wait_new("a failed reconnection", |e| {
            matches!(e, RuntimeEvent::ConnectFailed { .. })
        })
        .await;

    bed.restart_core();
    let connected = agent
        .events
        .wait_new("a new session", |e| {
            matches!(e, RuntimeEvent::Connected { .. })
        })
        .await;
    assert_eq!(
        connected,
        RuntimeEvent::Connected {
            session: 2,
            pending_results: 1
        },
        "the result went in Hello.pending_results"
    );
    agent
        .events
        .wait(
            "the ack",
            |e| matches!(e, RuntimeEvent::ResultAcked { task_id, .. } if *task_id == task.id),
        )
        .await;
    let done = bed.wait_state(task.id, TaskState::Succeeded).await;
    assert_eq!(done.result.unwrap().outputs["executor"], "scripted");
    assert_eq!(script.executions_of(task.id), 1);
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_expires_while_its_target_is_busy_is_never_executed() {
    let bed = bed().await;
    let (agent, script, _root) = held_agent(&bed, "exp", &["web"]).await;
    let first = bed.submit("exp", "web", None).await;
    script.wait_started(first.id).await;
    let late = bed
        .submit("exp", "web", Some(Duration::from_millis(300)))
        .await;
    let expired = bed.wait_state(late.id, TaskState::Expired).await;
    assert!(expired.result.is_none(), "{expired:?}");
    script.release("web");
    bed.wait_state(first.id, TaskState::Succeeded).await;
    assert_eq!(script.executions_of(late.id), 0, "{:?}", script.calls());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_ends_the_session_and_the_agent_does_not_get_back_in() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    let script = Script::new();
    let mut agent = start_agent(
        bed.config("rev", &state_dir(&root, "s")).await,
        script.clone(),
    );
    agent.connected().await;
    bed.api.revoke_agent("rev").await.unwrap();
    agent
        .events
        .wait_new("the end of the session", |e| {
            matches!(e, RuntimeEvent::Disconnected { .. })
        })
        .await;
    // It keeps trying (with backoff) and is refused every time.
    for _ in 0..3 {
        let failed = agent
            .events
            .wait_new("a refused reconnection", |e| {
                matches!(e, RuntimeEvent::ConnectFailed { .. })
            })
            .await;
        let RuntimeEvent::ConnectFailed { error } = failed else {
            unreachable!()
        };
        assert!(error.contains("it was revoked"), "{error}");
    }
    agent.events.drain();
    let sessions = agent
        .events
        .seen
        .iter()
        .filter(|e| matches!(e, RuntimeEvent::Connected { .. }))
        .count();
    assert_eq!(sessions, 1, "never back in: {:?}", agent.events.seen);
    bed.wait_agent_state("rev", "revoked").await;
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_required_stops_the_runtime() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    let mut config = bed.config("old", &state_dir(&root, "s")).await;
    config.agent_version = "7.0.0".into();
    let err = start_agent(config, Script::new())
        .finished()
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::UpgradeRequired { .. }), "{err}");
    assert!(err.to_string().contains("upgrade the agent"), "{err}");
    assert_eq!(err.exit_code(), 4);
}

// ---------------------------------------------------------------------------------------
// kill -9 of the agent process.
// ---------------------------------------------------------------------------------------

/// A `scripted_agent` example process (see `examples/scripted_agent.rs`), killed on drop.
struct AgentProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl AgentProcess {
    fn spawn(core: &str, state: &Path, control: &Path, enroll: Option<(&str, &str)>) -> Self {
        static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let bin = BIN.get_or_init(|| {
            wharf_testbed::core::cargo_build("wharf-agent-docker", "example", "scripted_agent")
                .expect("the scripted_agent example builds")
        });
        let mut cmd = std::process::Command::new(bin);
        cmd.args(["--core", core, "--name", "crashy", "--state-dir"])
            .arg(state)
            .arg("--control")
            .arg(control)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit());
        if let Some((token, ca_hash)) = enroll {
            cmd.args(["--token", token, "--ca-hash", ca_hash]);
        }
        let mut child = cmd.spawn().expect("scripted_agent starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        AgentProcess { child, lines }
    }

    /// Waits (blocking) for an output line containing `needle`.
    fn wait_line(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no line with {needle:?} ({e}); got {seen:?}"),
            }
        }
    }

    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `path` exists.
async fn wait_file(path: &Path) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_agent_mid_task_resumes_it_from_its_last_checkpoint() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    let (state, control) = (root.path().join("state"), root.path().join("control"));
    std::fs::create_dir_all(&control).unwrap();
    let grant = bed.api.create_enroll_token("crashy", None).await.unwrap();
    let core = bed.core.addr();

    let mut first = tokio::task::block_in_place(|| {
        let p = AgentProcess::spawn(
            &core,
            &state,
            &control,
            Some((&grant.token, &grant.ca_hash)),
        );
        p.wait_line("Connected");
        p
    });
    let task = bed.submit("crashy", "web", None).await;
    // `started-ID` is written after checkpoint `step-1` is durable.
    wait_file(&control.join(format!("started-{}", task.id))).await;
    bed.wait_state(task.id, TaskState::Running).await;
    first.kill9();

    // Restarted without a token: the task is resumed, not executed again, and core gets
    // the result.
    let second = tokio::task::block_in_place(|| {
        let p = AgentProcess::spawn(&core, &state, &control, None);
        p.wait_line(&format!("Resumed {{ task_id: {}", task.id));
        p
    });
    let done = bed.wait_state(task.id, TaskState::Succeeded).await;
    let result = done.result.expect("result stored");
    assert_eq!(
        result.outputs.get("resumed_from").map(String::as_str),
        Some("step-1")
    );
    let calls = std::fs::read_to_string(control.join("calls.log")).unwrap();
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        vec![
            format!("execute {}", task.id),
            format!("resume {} step-1", task.id)
        ],
        "executed once, resumed once"
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_renewed_over_mtls_and_the_renewed_one_is_used() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    let state = state_dir(&root, "s");
    let mut agent = start_agent(bed.config("renew", &state).await, Script::new());
    agent.connected().await;
    agent.stop().await.unwrap();
    let before = Identity::load(&state).unwrap().unwrap();

    // Renewal due at once (less than 200 % of the lifetime left: always).
    let mut config = fast(AgentConfig::new(bed.core.addr(), &state, "renew"));
    config.renewal.renew_below = 2.0;
    let mut agent = start_agent(config, Script::new());
    let renewed = agent
        .events
        .wait("the renewal", |e| {
            matches!(e, RuntimeEvent::CertificateRenewed { .. })
        })
        .await;
    agent.stop().await.unwrap();
    let after = Identity::load(&state).unwrap().unwrap();
    assert_ne!(
        after.cert_pem, before.cert_pem,
        "a new certificate was saved"
    );
    assert_ne!(
        after.key_pem.expose(),
        before.key_pem.expose(),
        "with a new key"
    );
    assert_eq!(after.agent_id, before.agent_id);
    assert_eq!(after.seal_key.public(), before.seal_key.public());
    assert_eq!(
        renewed,
        RuntimeEvent::CertificateRenewed {
            not_after: after.not_after
        }
    );
    assert!(after.not_after >= before.not_after);

    // The next start connects with the renewed certificate (and renews nothing).
    let mut agent = start_agent(
        fast(AgentConfig::new(bed.core.addr(), &state, "renew")),
        Script::new(),
    );
    agent.connected().await;
    agent.events.drain();
    assert!(
        !agent
            .events
            .seen
            .iter()
            .any(|e| matches!(e, RuntimeEvent::CertificateRenewed { .. })),
        "{:?}",
        agent.events.seen
    );
    agent.stop().await.unwrap();
}
