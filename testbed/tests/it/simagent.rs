//! The simulated agent (`wharf_testbed::simagent`):
//!
//! - against a scripted in-process "core" that speaks `wharf/1` over QUIC with mutual TLS
//!   (core's PKI helpers, no core process): every protocol path the sim agent offers;
//! - against a real `wharf-core serve` child process: enrollment (pinned CA, refused
//!   tokens), a deploy end to end, the `sim-agent` command line, and the crash test of
//!   design §3: "kill -9 of the core during a stream of submissions loses no acknowledged
//!   task and dispatches none twice in effect".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::VarInt;
use uuid::Uuid;
use wharf_core::engine::SubmitRequest;
use wharf_core::queue::TaskState;
use wharf_protocol::{
    write_frame, AgentTask, Cancel, DeploySpec, ErrorType, Message, Priority, Reject, ResultAck,
    TaskKind, TaskPayload, DEFAULT_MAX_FRAME,
};
use wharf_testbed::core::CoreProcess;
use wharf_testbed::fake_core::{task, FakeCore, FakeSession};
use wharf_testbed::simagent::{
    Behaviour, CancelMode, ConnectOptions, CoreApi, EnrollError, Enrolled, Outcome, PollOptions,
    Reconnect, SimAgent, SimAgentError, SimAgentHandle, SimEvent,
};

use crate::{lines_of, wait_exit, wait_for_line, KillOnDrop};

const WAIT: Duration = Duration::from_secs(20);
const MAX: u32 = DEFAULT_MAX_FRAME;

/// A digest-pinned image reference the sim agent never pulls.
fn image(n: u32) -> String {
    format!("127.0.0.1:5000/app@sha256:{n:064x}")
}

fn deploy(target: &str, n: u32) -> AgentTask {
    task(TaskPayload::Deploy(DeploySpec::new(image(n))), target)
}

/// A sim agent connected to `core` (reconnection off unless `options` says otherwise),
/// with the session welcomed.
async fn connected(
    core: &FakeCore,
    name: &str,
    behaviour: Behaviour,
    options: ConnectOptions,
) -> (SimAgentHandle, FakeSession) {
    let enrolled = core.enrolled(name).unwrap();
    let addr = core.core_addr();
    let connect =
        tokio::spawn(
            async move { SimAgent::connect_with(&enrolled, &addr, behaviour, options).await },
        );
    let mut session = core.accept().await.unwrap();
    session.welcome(Duration::from_millis(100)).await.unwrap();
    let agent = connect.await.unwrap().expect("sim agent connects");
    (agent, session)
}

fn no_reconnect() -> ConnectOptions {
    ConnectOptions::default().with_reconnect(Reconnect::disabled())
}

#[tokio::test]
async fn fake_core_full_cycle_heartbeats_and_journal_answers_a_resend() {
    let core = FakeCore::start().unwrap();
    let (agent, mut session) = connected(
        &core,
        "cycle",
        Behaviour::succeed().with_progress(2),
        no_reconnect(),
    )
    .await;
    assert_eq!(session.hello.protocol_version, 1);
    assert!(session.hello.pending_results.is_empty());
    assert!(session.hello.capabilities.iter().any(|c| c == "simulated"));
    assert!(matches!(
        session.control().await.unwrap(),
        Message::Heartbeat(_)
    ));

    let mut events = agent.subscribe();
    let t = deploy("web", 1);
    let mut stream = session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    let (result, progress) = stream.expect_result().await.unwrap();
    assert_eq!(progress, 2);
    assert!(result.success, "{result:?}");
    assert_eq!(result.outputs["digest"], format!("sha256:{:064x}", 1));
    stream.ack(&result).await.unwrap();
    let received = agent.next_task(WAIT).await.expect("task in the channel");
    assert_eq!(received.id, t.id);
    agent
        .wait_for(WAIT, |s| s.acks == 1)
        .await
        .expect("ack counted");
    assert!(agent.pending_results().is_empty());
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    assert_eq!(
        seen,
        vec![
            SimEvent::TaskReceived {
                task_id: t.id,
                attempt: 1,
                kind: TaskKind::Deploy
            },
            SimEvent::Executed {
                task_id: t.id,
                attempt: 1,
                success: true
            },
            SimEvent::ResultSent {
                task_id: t.id,
                attempt: 1,
                from_journal: false
            },
            SimEvent::ResultAcked {
                task_id: t.id,
                attempt: 1
            },
        ]
    );

    // The same (task, attempt) again: answered from the journal, not run again.
    let mut again = session.assign(&t).await.unwrap();
    again.expect_accepted(&t).await.unwrap();
    let (answer, progress) = again.expect_result().await.unwrap();
    assert_eq!(progress, 0);
    assert_eq!(answer, result);
    again.ack(&answer).await.unwrap();
    let stats = agent.wait_for(WAIT, |s| s.acks == 2).await.unwrap();
    assert_eq!(stats.tasks_received, 2);
    assert_eq!(stats.executions, 1);
    assert_eq!(stats.journal_answers, 1);
    assert_eq!(agent.executions_of(t.id, 1), 1);
    let journal = agent.journal();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].journal_answers, 1);
    assert!(journal[0].acked);

    // Inspect reports what was deployed.
    let inspect = task(TaskPayload::Inspect, "web");
    let mut s = session.assign(&inspect).await.unwrap();
    s.expect_accepted(&inspect).await.unwrap();
    let (r, _) = s.expect_result().await.unwrap();
    assert_eq!(r.outputs["image"], image(1));
    assert_eq!(r.outputs["state"], "running");

    agent.shutdown().await;
    assert!(agent.stats().stopped);
}

#[tokio::test]
async fn a_reject_is_returned_with_its_reason() {
    let core = FakeCore::start().unwrap();
    let enrolled = core.enrolled("old").unwrap();
    let addr = core.core_addr();
    let connect = tokio::spawn(async move {
        SimAgent::connect_with(&enrolled, &addr, Behaviour::succeed(), no_reconnect()).await
    });
    let mut session = core.accept().await.unwrap();
    let reject = Message::Reject(Reject {
        reason: "upgrade required".into(),
    });
    write_frame(&mut session.send, &reject, MAX).await.unwrap();
    let err = connect.await.unwrap().unwrap_err();
    assert_eq!(err, SimAgentError::Rejected("upgrade required".into()));
    assert!(err.to_string().contains("upgrade required"), "{err}");
}

#[tokio::test]
async fn an_unacknowledged_result_is_resent_in_the_next_hello() {
    let core = FakeCore::start().unwrap();
    let options = ConnectOptions::default().with_reconnect(Reconnect {
        initial: Duration::from_millis(20),
        ..Reconnect::default()
    });
    let (agent, session) = connected(&core, "resend", Behaviour::succeed(), options).await;
    let t = deploy("api", 2);
    let mut stream = session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    let (result, _) = stream.expect_result().await.unwrap();
    // Core "crashes" before acknowledging.
    session
        .conn
        .close(VarInt::from_u32(0x22), b"core went away");
    let mut second = core.accept().await.unwrap();
    assert_eq!(second.hello.pending_results, vec![result.clone()]);
    second.welcome(Duration::from_millis(100)).await.unwrap();
    let ack = Message::ResultAck(ResultAck {
        task_id: t.id,
        attempt: 1,
    });
    write_frame(&mut second.send, &ack, MAX).await.unwrap();
    let stats = agent
        .wait_for(WAIT, |s| s.acks == 1 && s.sessions == 2)
        .await
        .expect("reconnected and acked");
    assert_eq!(stats.results_resent_in_hello, 1);
    assert_eq!(stats.executions, 1);
    assert!(agent.pending_results().is_empty());
}

#[tokio::test]
async fn cancels_are_honoured_or_ignored() {
    let core = FakeCore::start().unwrap();
    let slow = Behaviour::succeed().with_delay(Duration::from_secs(30));
    let (agent, session) = connected(&core, "cancel", slow, no_reconnect()).await;
    let t = deploy("db", 3);
    let mut stream = session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    let cancel = Message::Cancel(Cancel { task_id: t.id });
    write_frame(&mut stream.send, &cancel, MAX).await.unwrap();
    let (r, _) = stream.expect_result().await.unwrap();
    assert!(!r.success);
    assert_eq!(r.error_type, Some(ErrorType::Cancelled));
    assert!(r.rolled_back);

    agent.set_behaviour(
        Behaviour::succeed()
            .with_delay(Duration::from_millis(300))
            .with_cancel(CancelMode::Ignore),
    );
    let t2 = deploy("db", 4);
    let mut stream = session.assign(&t2).await.unwrap();
    stream.expect_accepted(&t2).await.unwrap();
    write_frame(
        &mut stream.send,
        &Message::Cancel(Cancel { task_id: t2.id }),
        MAX,
    )
    .await
    .unwrap();
    let (r, _) = stream.expect_result().await.unwrap();
    assert!(r.success, "{r:?}");
    let stats = agent.stats();
    assert_eq!(stats.cancels_received, 2);
    assert_eq!(stats.cancels_honoured, 1);
}

#[tokio::test]
async fn dropped_assigns_and_streams_never_run_twice() {
    let core = FakeCore::start().unwrap();
    let (agent, session) = connected(
        &core,
        "drops",
        Behaviour::succeed().with_dropped_assigns(1),
        no_reconnect(),
    )
    .await;
    // The first Assign is "lost": the stream is reset without Accepted.
    let t = deploy("cache", 5);
    let mut stream = session.assign(&t).await.unwrap();
    assert!(stream.read().await.unwrap().is_err(), "the stream is reset");
    // Core re-sends after its lease: now it runs.
    let mut stream = session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    let (r, _) = stream.expect_result().await.unwrap();
    assert!(r.success);
    assert_eq!(agent.stats().assigns_dropped, 1);
    assert_eq!(agent.executions_of(t.id, 1), 1);

    // Dropped after Accepted: no result now, nor on a re-send, and no second run.
    agent.set_behaviour(Behaviour::always(Outcome::DropAfterAccept));
    let t2 = deploy("queue", 6);
    for _ in 0..2 {
        let mut stream = session.assign(&t2).await.unwrap();
        stream.expect_accepted(&t2).await.unwrap();
        let end = stream.read().await.unwrap();
        assert!(matches!(end, Ok(None)), "ends without a result: {end:?}");
    }
    assert_eq!(agent.executions_of(t2.id, 1), 1);
    let entry = agent
        .journal()
        .into_iter()
        .find(|e| e.task.id == t2.id)
        .unwrap();
    assert!(entry.dropped && entry.result.is_none());
    assert_eq!(entry.journal_answers, 1);
}

#[tokio::test]
async fn outcomes_and_outputs_per_kind() {
    let core = FakeCore::start().unwrap();
    let behaviour = Behaviour::succeed()
        .with_kind(
            TaskKind::Deploy,
            Outcome::fail(ErrorType::HealthFailed).rolled_back(),
        )
        .with_kind(
            TaskKind::Rollback,
            Outcome::fail_retriable(ErrorType::Docker).message("engine down"),
        )
        .with_output(TaskKind::HealthCheck, "probe", "http");
    let (agent, session) = connected(&core, "kinds", behaviour, no_reconnect()).await;
    let run = |t: AgentTask| {
        let session = &session;
        async move {
            let mut s = session.assign(&t).await.unwrap();
            s.expect_accepted(&t).await.unwrap();
            let (r, _) = s.expect_result().await.unwrap();
            s.ack(&r).await.unwrap();
            r
        }
    };
    let r = run(deploy("web", 7)).await;
    assert!(!r.success && r.rolled_back && !r.retriable);
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed));
    let r = run(task(TaskPayload::Rollback(Default::default()), "web")).await;
    assert!(!r.success && r.retriable && !r.rolled_back);
    assert_eq!(r.error.as_deref(), Some("engine down"));
    let r = run(task(TaskPayload::HealthCheck(Default::default()), "web")).await;
    assert!(r.success);
    assert_eq!(r.outputs["probe"], "http");
    assert_eq!(r.outputs["healthy"], "true");
    // Nothing was deployed (the deploy failed): no sticker to read.
    let r = run(task(TaskPayload::ReadSticker, "web")).await;
    assert_eq!(r.error_type, Some(ErrorType::NotFound));
    let stats = agent.wait_for(WAIT, |s| s.acks == 4).await.unwrap();
    assert_eq!((stats.succeeded, stats.failed), (1, 3));
}

#[tokio::test]
async fn many_agents_share_one_endpoint() {
    const N: usize = 25;
    let core = Arc::new(FakeCore::start().unwrap());
    let endpoint = SimAgent::endpoint(core.addr()).unwrap();
    let server = {
        let core = core.clone();
        tokio::spawn(async move {
            let mut sessions = Vec::new();
            for _ in 0..N {
                let mut s = core.accept().await.unwrap();
                s.welcome(Duration::from_millis(200)).await.unwrap();
                sessions.push(s);
            }
            sessions
        })
    };
    let mut connects = Vec::new();
    for i in 0..N {
        let enrolled = core.enrolled(&format!("fleet-{i}")).unwrap();
        let options = no_reconnect().with_endpoint(endpoint.clone());
        let addr = core.core_addr();
        connects.push(tokio::spawn(async move {
            SimAgent::connect_with(&enrolled, &addr, Behaviour::succeed(), options).await
        }));
    }
    let mut agents = Vec::new();
    for c in connects {
        agents.push(c.await.unwrap().expect("connects"));
    }
    let sessions = server.await.unwrap();
    let peers: HashSet<SocketAddr> = sessions.iter().map(|s| s.conn.remote_address()).collect();
    assert_eq!(peers.len(), 1, "every connection comes from one UDP socket");
    assert_eq!(
        peers.into_iter().next().unwrap().port(),
        endpoint.local_addr().unwrap().port()
    );
    // Each connection still carries its own certificate: a task to one agent reaches it only.
    let t = deploy("web", 8);
    let mut s = sessions[7].assign(&t).await.unwrap();
    s.expect_accepted(&t).await.unwrap();
    s.expect_result().await.unwrap();
    let received: u64 = agents.iter().map(|a| a.stats().tasks_received).sum();
    assert_eq!(received, 1);
    assert!(agents.iter().all(|a| a.is_connected()));
}

#[test]
fn identities_are_saved_with_private_keys_and_loaded_back() {
    use std::os::unix::fs::PermissionsExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let core = rt.block_on(async { FakeCore::start().unwrap() });
    let enrolled = core.enrolled("saved").unwrap();
    let dir = tempfile::tempdir().unwrap();
    assert!(Enrolled::load(dir.path()).unwrap().is_none());
    enrolled.save(dir.path()).unwrap();
    for key in ["agent.key", "seal.key"] {
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let loaded = Enrolled::load(dir.path()).unwrap().unwrap();
    assert_eq!(loaded.agent_id, enrolled.agent_id);
    assert_eq!(loaded.cert_pem, enrolled.cert_pem);
    assert_eq!(loaded.seal_key.public(), enrolled.seal_key.public());
    std::fs::set_permissions(
        dir.path().join("agent.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = Enrolled::load(dir.path()).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
}

// ---------------------------------------------------------------------------------------
// A real core.
// ---------------------------------------------------------------------------------------

fn deploy_request(agent: &str, target: &str, n: u32, key: Option<String>) -> SubmitRequest {
    SubmitRequest {
        agent: agent.into(),
        target: target.into(),
        payload: TaskPayload::Deploy(DeploySpec::new(image(n))),
        priority: Priority::Normal,
        idempotency_key: key,
        expires_at: None,
        expires_in: None,
        timeout: None,
        max_attempts: None,
    }
}

async fn wait_state(api: &CoreApi, id: Uuid, state: TaskState) -> wharf_core::engine::TaskView {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let task = api.task(id).await.unwrap().expect("task exists");
        if task.state == state {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} still {:?}, expected {state:?}",
            task.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `wharf-core serve` child on a temp data dir, and its operator API.
async fn real_core() -> (tempfile::TempDir, CoreProcess, CoreApi) {
    let data = tempfile::tempdir().unwrap();
    let core = tokio::task::spawn_blocking({
        let data = data.path().to_path_buf();
        move || CoreProcess::start(&data).expect("core starts")
    })
    .await
    .unwrap();
    let api = core.api().unwrap();
    (data, core, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_core_enrollment_and_a_deploy_end_to_end() {
    let (_data, core, api) = real_core().await;
    let grant = api.create_enroll_token("sim-e2e", None).await.unwrap();
    assert!(grant.ca_hash.starts_with("sha256:"), "{grant:?}");

    // A wrong CA hash: refused by the pin, with core's PKI message.
    let wrong = format!("sha256:{}", "ab".repeat(32));
    let err = SimAgent::enroll(&core.addr(), &grant.token, &wrong, "sim-e2e")
        .await
        .unwrap_err();
    assert!(matches!(err, EnrollError::CaMismatch(_)), "{err:?}");
    assert!(err.to_string().contains("did not match --ca-hash"), "{err}");

    // The token was not spent by the refused attempt.
    let enrolled = SimAgent::enroll(&core.addr(), &grant.token, &grant.ca_hash, "sim-e2e")
        .await
        .expect("enrolls");
    // A used token: refused.
    let err = SimAgent::enroll(&core.addr(), &grant.token, &grant.ca_hash, "sim-e2e")
        .await
        .unwrap_err();
    assert!(
        matches!(err, EnrollError::Refused { status: 410, .. }),
        "{err:?}"
    );

    let agent = SimAgent::connect_with(
        &enrolled,
        &core.addr(),
        Behaviour::succeed()
            .with_delay(Duration::from_millis(50))
            .with_progress(2),
        no_reconnect(),
    )
    .await
    .expect("connects over QUIC");
    let submitted = api
        .submit(&deploy_request("sim-e2e", "web", 9, Some("e2e-1".into())))
        .await
        .unwrap();
    assert_eq!(submitted.status, 201);
    let task = wait_state(&api, submitted.task.id, TaskState::Succeeded).await;
    let result = task.result.expect("result stored");
    assert!(result.success);
    assert_eq!(result.outputs["image"], image(9));
    let stats = agent.wait_for(WAIT, |s| s.acks >= 1).await.unwrap();
    assert_eq!(stats.executions, 1);
    assert_eq!(agent.executions_of(task.id, task.attempt), 1);
    // The same idempotency key and payload: the same task, HTTP 200, not run again.
    let again = api
        .submit(&deploy_request("sim-e2e", "web", 9, Some("e2e-1".into())))
        .await
        .unwrap();
    assert_eq!((again.status, again.task.id), (200, task.id));
    let agents = api.agents().await.unwrap();
    assert!(
        agents
            .iter()
            .any(|a| a["name"] == "sim-e2e" && a["state"] == "online"),
        "{agents:?}"
    );
    agent.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_mode_against_a_real_core_deploys_confirms_and_shows_transport_poll() {
    let (_data, core, api) = real_core().await;
    let grant = api.create_enroll_token("sim-poll", None).await.unwrap();
    let enrolled = SimAgent::enroll(&core.addr(), &grant.token, &grant.ca_hash, "sim-poll")
        .await
        .expect("enrolls");
    let options = PollOptions::default().with_reconnect(Reconnect::disabled());
    let agent = SimAgent::poll_with(
        &enrolled,
        &core.addr(),
        Behaviour::succeed()
            .with_delay(Duration::from_millis(200))
            .with_progress(2),
        options.clone(),
    )
    .await
    .expect("the first poll is answered");
    let stats = agent.stats();
    assert!(stats.connected && stats.sessions == 1, "{stats:?}");
    // The first poll was answered; the next (held) one may already be out.
    assert!((1..=2).contains(&stats.polls_sent), "{stats:?}");
    let agents = api.agents().await.unwrap();
    assert!(
        agents
            .iter()
            .any(|a| a["name"] == "sim-poll" && a["state"] == "online" && a["transport"] == "poll"),
        "{agents:?}"
    );

    // A task with a delay and progress: runs in the background, reported beside the
    // held poll.
    let mut events = agent.subscribe();
    let slow = api
        .submit(&deploy_request("sim-poll", "web", 1, None))
        .await
        .unwrap();
    let task = wait_state(&api, slow.task.id, TaskState::Succeeded).await;
    let result = task.result.expect("result stored");
    assert!(
        result.success && result.outputs["image"] == image(1),
        "{result:?}"
    );
    let stats = agent.wait_for(WAIT, |s| s.acks >= 1).await.unwrap();
    assert_eq!((stats.executions, stats.progress_sent), (1, 2), "{stats:?}");
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        seen.push(event);
    }
    let id = slow.task.id;
    let position = |wanted: &SimEvent| seen.iter().position(|e| e == wanted);
    let received = position(&SimEvent::TaskReceived {
        task_id: id,
        attempt: 1,
        kind: TaskKind::Deploy,
    });
    let confirmed = position(&SimEvent::AcceptConfirmed {
        task_id: id,
        attempt: 1,
    });
    let acked = position(&SimEvent::ResultAcked {
        task_id: id,
        attempt: 1,
    });
    assert!(
        received.is_some() && received < confirmed && confirmed < acked,
        "{seen:?}"
    );

    // A task with no delay: the confirming poll carries the result too.
    agent.set_behaviour(Behaviour::succeed());
    let quick = api
        .submit(&deploy_request("sim-poll", "api", 2, None))
        .await
        .unwrap();
    wait_state(&api, quick.task.id, TaskState::Succeeded).await;
    let stats = agent.wait_for(WAIT, |s| s.acks >= 2).await.unwrap();
    assert_eq!(stats.executions, 2, "{stats:?}");
    assert_eq!(agent.executions_of(quick.task.id, 1), 1);
    assert!(agent.pending_results().is_empty());
    assert_eq!(stats.polls_throttled, 0, "{stats:?}");
    agent.shutdown().await;
    assert!(agent.stats().stopped);

    // Revoked: the next poll is refused (403), and so is a new polling agent.
    api.revoke_agent("sim-poll").await.unwrap();
    let err = SimAgent::poll_with(&enrolled, &core.addr(), Behaviour::succeed(), options)
        .await
        .unwrap_err();
    assert!(matches!(err, SimAgentError::Connection(_)), "{err:?}");
}

#[test]
fn sim_agent_command_line_runs_a_small_fleet() {
    let data = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let core = CoreProcess::start(data.path()).expect("core starts");
    let token = std::fs::read_to_string(data.path().join("admin.token")).unwrap();
    let run = || {
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_wharf-testbed"))
                .args(["sim-agent", "--core", &core.addr(), "--state-dir"])
                .arg(state.path())
                .args(["--name", "cli", "--count", "3", "--delay", "10ms", "--ca"])
                .arg(data.path().join("ca.pem"))
                .env("WHARF_TOKEN", token.trim())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let lines = lines_of(child.0.stdout.take().unwrap());
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.extend(wait_for_line(
                &lines,
                " connected as ",
                Duration::from_secs(60),
            ));
        }
        let names: HashSet<&str> = seen
            .iter()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            names,
            HashSet::from(["cli-0", "cli-1", "cli-2"]),
            "{seen:?}"
        );
        for name in ["cli-0", "cli-1", "cli-2"] {
            assert!(state.path().join(name).join("agent.key").exists());
        }
        // SIGTERM: a clean stop with a summary.
        let pid = child.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = wait_exit(&mut child.0, Duration::from_secs(20));
        let stderr = crate::stderr_of(&mut child.0);
        assert!(status.success(), "{status}: {stderr}");
        assert!(stderr.contains("3 simulated agents stopped"), "{stderr}");
    };
    run();
    // A second run reuses the saved identities.
    run();
    // Wrong options: exit 2, nothing done.
    let out = Command::new(env!("CARGO_BIN_EXE_wharf-testbed"))
        .args(["sim-agent", "--core", &core.addr(), "--state-dir"])
        .arg(state.path().join("new"))
        .args(["--count", "2", "--token", "x", "--ca-hash", "sha256:00"])
        .env_remove("WHARF_TOKEN")
        .env_remove("WHARF_CA")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// What the submitters saw.
#[derive(Default)]
struct Submissions {
    /// Acknowledged (HTTP 201 or 200): task id per idempotency key.
    acknowledged: BTreeMap<String, Uuid>,
    /// Keys acknowledged with 200 on a retry: stored before the kill, answer lost.
    stored_answer_lost: usize,
    /// Submit calls without a success answer (core killed or down); retried with the same
    /// idempotency key.
    failed_calls: usize,
    /// Keys never acknowledged (still failing when the submitters stopped).
    unacknowledged: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_core_during_submissions_loses_no_acknowledged_task_and_runs_none_twice() {
    const SUBMITTERS: usize = 4;
    const TARGETS: usize = 8;
    const KILLS: usize = 3;
    let data = tempfile::tempdir().unwrap();
    let mut core = tokio::task::spawn_blocking({
        let data = data.path().to_path_buf();
        move || CoreProcess::start(&data).expect("core starts")
    })
    .await
    .unwrap();
    let api = core.api().unwrap();
    let grant = api.create_enroll_token("sim-crash", None).await.unwrap();
    let enrolled = SimAgent::enroll(&core.addr(), &grant.token, &grant.ca_hash, "sim-crash")
        .await
        .unwrap();
    let agent = SimAgent::connect_with(
        &enrolled,
        &core.addr(),
        Behaviour::succeed().with_delay(Duration::from_millis(20)),
        ConnectOptions::default()
            .with_idle_timeout(Duration::from_secs(2))
            .with_reconnect(Reconnect {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
                ..Reconnect::default()
            }),
    )
    .await
    .unwrap();

    // A stream of submissions from a few concurrent clients...
    let log = Arc::new(Mutex::new(Submissions::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut submitters = Vec::new();
    for s in 0..SUBMITTERS {
        let (api, log, stop) = (api.clone(), log.clone(), stop.clone());
        submitters.push(tokio::spawn(async move {
            // Like a careful client: a failed submit is retried with the same key.
            let mut i = 0u32;
            let mut failing = false;
            while !stop.load(Ordering::Relaxed) {
                let n = (s as u32) * 100_000 + i;
                let key = format!("crash-{s}-{i}");
                let target = format!("app-{}", (n as usize) % TARGETS);
                let request = deploy_request("sim-crash", &target, n, Some(key.clone()));
                match api.submit(&request).await {
                    Ok(done) => {
                        let mut log = log.lock().unwrap();
                        match done.status {
                            201 => {}
                            200 => {
                                assert!(failing, "200 for a fresh key {key}");
                                log.stored_answer_lost += 1;
                            }
                            other => panic!("status {other}"),
                        }
                        log.acknowledged.insert(key, done.task.id);
                        failing = false;
                        i += 1;
                    }
                    Err(_) => {
                        log.lock().unwrap().failed_calls += 1;
                        failing = true;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            if failing {
                let key = format!("crash-{s}-{i}");
                log.lock().unwrap().unacknowledged.push(key);
            }
        }));
    }
    // ...and kill -9 in the middle of it, once tasks are flowing to the agent; again after
    // each restart.
    let mut acknowledged_at_kills = Vec::new();
    for _ in 0..KILLS {
        let acks = agent.stats().acks;
        agent
            .wait_for(Duration::from_secs(60), |s| s.acks >= acks + 20)
            .await
            .expect("tasks flow before the kill");
        core.kill9().unwrap();
        acknowledged_at_kills.push(log.lock().unwrap().acknowledged.len());
        tokio::time::sleep(Duration::from_millis(300)).await;
        core = tokio::task::spawn_blocking(move || {
            let mut core = core;
            core.spawn().unwrap();
            core
        })
        .await
        .unwrap();
    }
    // Submissions go on against the restarted core for a moment, then stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for s in submitters {
        s.await.unwrap();
    }
    let (acknowledged, unacknowledged, stored_answer_lost, failed_calls) = {
        let log = log.lock().unwrap();
        (
            log.acknowledged.clone(),
            log.unacknowledged.clone(),
            log.stored_answer_lost,
            log.failed_calls,
        )
    };

    // Every acknowledged task is still there after the restart, and all of them finish.
    let api = core.api().unwrap();
    let mut found = 0;
    for id in acknowledged.values() {
        assert!(
            api.task(*id).await.unwrap().is_some(),
            "acknowledged task {id} was lost by a crash"
        );
        found += 1;
    }
    for id in acknowledged.values() {
        let task = wait_state(&api, *id, TaskState::Succeeded).await;
        assert!(task.result.is_some());
    }
    // Nothing ran twice: one execution per task, attempts included.
    let journal = agent.journal();
    let mut per_task: HashMap<Uuid, u32> = HashMap::new();
    for entry in &journal {
        assert!(entry.executions <= 1, "{entry:?}");
        *per_task.entry(entry.task.id).or_default() += entry.executions;
    }
    for (id, runs) in &per_task {
        assert_eq!(*runs, 1, "task {id} ran {runs} times");
    }
    for id in acknowledged.values() {
        assert_eq!(
            per_task.get(id),
            Some(&1),
            "acknowledged task {id} never ran"
        );
    }
    // Whatever ran is a task core knows.
    for id in per_task.keys() {
        assert!(
            api.task(*id).await.unwrap().is_some(),
            "the agent ran {id}, unknown to core"
        );
    }
    let stats = agent.stats();
    eprintln!(
        "crash test: {} kills; {} tasks submitted, {} acknowledged ({:?} at the kills, {} acknowledged \
         with 200 on a retry: stored before the kill, answer lost), {} never acknowledged, \
         {} failed submit calls; {} acknowledged tasks found after the last restart, all \
         succeeded; agent: \
         {} Assigns received, {} executions, {} answered from the journal, {} results \
         re-sent in Hello, {} acks, {} sessions",
        KILLS,
        acknowledged.len() + unacknowledged.len(),
        acknowledged.len(),
        acknowledged_at_kills,
        stored_answer_lost,
        unacknowledged.len(),
        failed_calls,
        found,
        stats.tasks_received,
        stats.executions,
        stats.journal_answers,
        stats.results_resent_in_hello,
        stats.acks,
        stats.sessions,
    );
    assert!(
        stats.sessions > KILLS as u64,
        "the agent reconnected to each new core"
    );
    assert_eq!(stats.executions as usize, per_task.len());
}

/// The audit's deadline: a target whose agent is online but does not answer within
/// `wait` is `unreachable`, naming the task still pending; the agent that answers is
/// judged on its answer (`ok`); the whole audit takes about `wait`, not longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_does_not_answer_in_time_is_unreachable_and_the_others_are_judged() {
    let (_data, core, api) = real_core().await;
    let mut agents = Vec::new();
    for name in ["sim-audit-quick", "sim-audit-slow"] {
        let grant = api.create_enroll_token(name, None).await.unwrap();
        let enrolled = SimAgent::enroll(&core.addr(), &grant.token, &grant.ca_hash, name)
            .await
            .expect("enrolls");
        let agent = SimAgent::connect_with(
            &enrolled,
            &core.addr(),
            Behaviour::succeed(),
            no_reconnect(),
        )
        .await
        .expect("connects");
        let submitted = api
            .submit(&deploy_request(name, "web", 3, None))
            .await
            .unwrap();
        wait_state(&api, submitted.task.id, TaskState::Succeeded).await;
        agents.push(agent);
    }
    agents[1].set_behaviour(Behaviour::succeed().with_delay(Duration::from_secs(30)));
    let begun = Instant::now();
    let rows = api.audit("wait=2s").await.unwrap();
    let took = begun.elapsed();
    assert!(took < Duration::from_secs(10), "{took:?}");
    let row = |agent: &str| {
        rows.iter()
            .find(|r| r["agent"] == agent)
            .unwrap_or_else(|| panic!("no row of {agent}: {rows:?}"))
    };
    let quick = row("sim-audit-quick");
    assert_eq!(quick["status"], "ok", "{quick}");
    let slow = row("sim-audit-slow");
    assert_eq!(slow["status"], "unreachable", "{slow}");
    assert!(
        slow["detail"]
            .as_str()
            .unwrap()
            .contains("did not answer in time"),
        "{slow}"
    );
    // A bad `wait` is refused.
    let err = api.audit("wait=5m").await.unwrap_err();
    assert_eq!(err.status(), Some(400), "{err}");
    for agent in agents {
        agent.shutdown().await;
    }
}
