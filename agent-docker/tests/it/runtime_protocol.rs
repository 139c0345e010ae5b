//! The agent runtime against a scripted core (`wharf_testbed::fake_core`): the protocol
//! corners a real core does not produce on purpose. The same `Assign` twice, an expired
//! `Assign`, two tasks for one target at once, a task stream that breaks before the
//! result, results core never acknowledges.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wharf_agent_docker::runtime::{AgentConfig, Identity, RuntimeEvent};
use wharf_protocol::seal::{AgentSealKey, RegistryCredentials};
use wharf_protocol::{
    error_code, AgentTask, DeploySpec, DurationMs, ErrorType, Message, TaskPayload, Timestamp,
};
use wharf_testbed::fake_core::{self, FakeCore, FakeSession};

use crate::support::{fast, image, start_agent, Agent, Call, Script};

/// An agent with an identity from a scripted core, connected and welcomed.
struct Scripted {
    core: FakeCore,
    agent: Agent,
    script: Script,
    session: FakeSession,
    agent_id: Uuid,
    config: AgentConfig,
    _root: tempfile::TempDir,
}

const HEARTBEAT: Duration = Duration::from_millis(100);

async fn scripted(name: &str) -> Scripted {
    let core = FakeCore::start().unwrap();
    let issued = core.issue(name).unwrap();
    let identity = Identity::new(
        issued.name,
        issued.agent_id,
        issued.key_pem,
        issued.cert_pem,
        issued.ca_pem,
        Arc::new(AgentSealKey::generate().unwrap()),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    identity.save(root.path()).unwrap();
    let mut config = fast(AgentConfig::new(core.core_addr(), root.path(), name));
    config.server_name = Some("localhost".into());
    let script = Script::new();
    let mut agent = start_agent(config.clone(), script.clone());
    let mut session = core.accept().await.unwrap();
    session.welcome(HEARTBEAT).await.unwrap();
    agent.connected().await;
    Scripted {
        core,
        agent,
        script,
        session,
        agent_id: identity.agent_id,
        config,
        _root: root,
    }
}

fn task(target: &str) -> AgentTask {
    fake_core::task(TaskPayload::Deploy(DeploySpec::new(image(target))), target)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_announces_the_executor_capabilities_and_sealed_credentials() {
    let s = scripted("caps").await;
    let hello = &s.session.hello;
    assert_eq!(hello.protocol_version, wharf_protocol::PROTOCOL_VERSION);
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        hello.capabilities,
        vec!["docker", "scripted", "sealed-credentials"]
    );
    assert!(hello.pending_results.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_assign_is_answered_from_the_journal_and_never_run_twice() {
    let mut s = scripted("resend").await;
    // Finished and acknowledged, then sent again: Accepted and the same Result.
    let t = task("web");
    let mut first = s.session.assign(&t).await.unwrap();
    first.expect_accepted(&t).await.unwrap();
    let (result, progress) = first.expect_result().await.unwrap();
    assert!(result.success);
    assert_eq!(progress, 1, "the executor's progress line was forwarded");
    first.ack(&result).await.unwrap();
    s.agent
        .events
        .wait(
            "the ack",
            |e| matches!(e, RuntimeEvent::ResultAcked { task_id, .. } if *task_id == t.id),
        )
        .await;
    let mut again = s.session.assign(&t).await.unwrap();
    again.expect_accepted(&t).await.unwrap();
    let (answer, _) = again.expect_result().await.unwrap();
    assert_eq!(answer, result);
    again.ack(&answer).await.unwrap();

    // Sent again while it runs: both streams get the one execution's result.
    s.script.hold("db");
    let t2 = task("db");
    let mut a = s.session.assign(&t2).await.unwrap();
    a.expect_accepted(&t2).await.unwrap();
    s.script.wait_started(t2.id).await;
    let mut b = s.session.assign(&t2).await.unwrap();
    b.expect_accepted(&t2).await.unwrap();
    s.agent
        .events
        .wait("the re-send", |e| matches!(e, RuntimeEvent::TaskReceived { task_id, known: true, .. } if *task_id == t2.id))
        .await;
    s.script.release("db");
    let (ra, _) = a.expect_result().await.unwrap();
    let (rb, _) = b.expect_result().await.unwrap();
    assert_eq!(ra, rb);
    assert_eq!(s.script.executions_of(t.id), 1);
    assert_eq!(s.script.executions_of(t2.id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_task_and_unopenable_credentials_are_refused_without_running() {
    let s = scripted("refuse").await;
    let mut t = task("web");
    t.expires_at = Some(Timestamp::now().saturating_sub(DurationMs::from_secs(1)));
    let mut stream = s.session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    let (result, _) = stream.expect_result().await.unwrap();
    assert!(!result.success);
    assert_eq!(result.error_type, Some(ErrorType::Expired));
    assert!(result.error.unwrap().contains("nothing was changed"));

    // Credentials sealed to another agent's key do not open: refused, not run.
    let mut t2 = task("db");
    let other = AgentSealKey::generate().unwrap();
    t2.credentials = Some(
        RegistryCredentials {
            registry: "127.0.0.1:5999".into(),
            username: "u".into(),
            password: "p".into(),
        }
        .seal(&other.public(), t2.id, &s.agent_id.to_string())
        .unwrap(),
    );
    let mut stream = s.session.assign(&t2).await.unwrap();
    stream.expect_accepted(&t2).await.unwrap();
    let (result, _) = stream.expect_result().await.unwrap();
    assert_eq!(
        result.error_type,
        Some(ErrorType::RegistryAuth),
        "{result:?}"
    );
    assert!(s.script.calls().is_empty(), "{:?}", s.script.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tasks_for_one_target_are_queued_by_the_agent() {
    let s = scripted("queue").await;
    s.script.hold("web");
    let (t1, t2, other) = (task("web"), task("web"), task("db"));
    let mut s1 = s.session.assign(&t1).await.unwrap();
    s1.expect_accepted(&t1).await.unwrap();
    s.script.wait_started(t1.id).await;
    let mut s2 = s.session.assign(&t2).await.unwrap();
    s2.expect_accepted(&t2).await.unwrap();
    let mut s3 = s.session.assign(&other).await.unwrap();
    s3.expect_accepted(&other).await.unwrap();
    // The other target runs meanwhile; the second task of `web` waits.
    let (r3, _) = s3.expect_result().await.unwrap();
    assert!(r3.success);
    assert_eq!(s.script.executions_of(t2.id), 0, "{:?}", s.script.calls());
    s.script.release("web");
    let (r1, _) = s1.expect_result().await.unwrap();
    let (r2, _) = s2.expect_result().await.unwrap();
    assert!(r1.success && r2.success);
    let calls = s.script.calls();
    let done1 = calls
        .iter()
        .position(|c| *c == Call::Done { task_id: t1.id })
        .unwrap();
    let start2 = calls
        .iter()
        .position(|c| matches!(c, Call::Execute { task_id, .. } if *task_id == t2.id))
        .unwrap();
    assert!(done1 < start2, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_stream_broke_goes_out_in_the_next_hello() {
    let mut s = scripted("cycle").await;
    s.script.hold("web");
    let t = task("web");
    let mut stream = s.session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    s.script.wait_started(t.id).await;
    // Core's side of the task stream goes away; the connection stays.
    let _ = stream
        .send
        .reset(quinn::VarInt::from_u32(error_code::INTERNAL_ERROR));
    let _ = stream
        .recv
        .stop(quinn::VarInt::from_u32(error_code::INTERNAL_ERROR));
    s.script.release("web");
    s.agent
        .events
        .wait(
            "the result",
            |e| matches!(e, RuntimeEvent::Finished { task_id, .. } if *task_id == t.id),
        )
        .await;
    // The agent reconnects to deliver it in Hello.
    let mut next = s.core.accept().await.unwrap();
    assert_eq!(next.hello.pending_results.len(), 1, "{:?}", next.hello);
    assert_eq!(next.hello.pending_results[0].task_id, t.id);
    next.welcome(HEARTBEAT).await.unwrap();
    next.ack(t.id, t.attempt).await.unwrap();
    s.agent
        .events
        .wait(
            "the ack",
            |e| matches!(e, RuntimeEvent::ResultAcked { task_id, .. } if *task_id == t.id),
        )
        .await;
    assert_eq!(s.script.executions_of(t.id), 1);
    drop(s.session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_core_never_acknowledges_is_dropped_after_three_hellos() {
    let s = scripted("refused").await;
    let t = task("web");
    let mut stream = s.session.assign(&t).await.unwrap();
    stream.expect_accepted(&t).await.unwrap();
    stream.expect_result().await.unwrap();
    // No ack: the connection closes, and the result comes back in the next three Hellos,
    // never acknowledged; then the agent gives up on it.
    let mut session = s.session;
    for round in 1..=4 {
        // Let the session last two heartbeats (time for acks that never come)...
        for _ in 0..2 {
            assert!(matches!(
                session.control().await.unwrap(),
                Message::Heartbeat(_)
            ));
        }
        session.conn.close(quinn::VarInt::from_u32(0), b"test");
        session = s.core.accept().await.unwrap();
        assert_eq!(
            session.hello.pending_results.len(),
            usize::from(round < 4),
            "round {round}: {:?}",
            session.hello.pending_results
        );
        session.welcome(HEARTBEAT).await.unwrap();
    }
    assert_eq!(s.script.executions_of(t.id), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_running_tasks_from_their_checkpoint_and_received_ones_from_none() {
    let s = scripted("restart").await;
    s.script.hold("web");
    let (running, waiting) = (task("web"), task("web"));
    let mut a = s.session.assign(&running).await.unwrap();
    a.expect_accepted(&running).await.unwrap();
    s.script.wait_started(running.id).await;
    // Journaled and accepted, waiting for the target's lock.
    let mut b = s.session.assign(&waiting).await.unwrap();
    b.expect_accepted(&waiting).await.unwrap();
    // Stop while both are unfinished: the running one outlasts the shutdown grace.
    s.agent.stop().await.unwrap();
    assert_eq!(s.script.executions_of(waiting.id), 0);

    let mut agent = start_agent(s.config.clone(), s.script.clone());
    for id in [running.id, waiting.id] {
        agent
            .events
            .wait(
                "the resumed result",
                |e| matches!(e, RuntimeEvent::Finished { task_id, .. } if *task_id == id),
            )
            .await;
    }
    let calls = s.script.calls();
    assert!(
        calls.contains(&Call::Resume {
            task_id: running.id,
            checkpoint: Some(b"started".to_vec())
        }),
        "{calls:?}"
    );
    assert!(
        calls.contains(&Call::Resume {
            task_id: waiting.id,
            checkpoint: None
        }),
        "{calls:?}"
    );
    assert_eq!(
        s.script.executions_of(waiting.id),
        0,
        "resumed, not executed"
    );
    assert_eq!(s.script.executions_of(running.id), 1);
    // Both results reach core through Hello.
    let mut delivered = std::collections::HashSet::new();
    while delivered.len() < 2 {
        let mut session = s.core.accept().await.unwrap();
        session.welcome(HEARTBEAT).await.unwrap();
        for r in session.hello.pending_results.clone() {
            assert_eq!(
                r.outputs.get("resumed_from").map(String::as_str),
                Some(if r.task_id == running.id {
                    "started"
                } else {
                    "none"
                })
            );
            session.ack(r.task_id, r.attempt).await.unwrap();
            delivered.insert(r.task_id);
        }
    }
    assert_eq!(delivered, [running.id, waiting.id].into_iter().collect());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_other_than_upgrade_required_is_retried() {
    let mut s = scripted("busy").await;
    // Core ends this session; at the next connection it rejects, then accepts.
    s.session.conn.close(quinn::VarInt::from_u32(0), b"test");
    let mut rejected = s.core.accept().await.unwrap();
    let reject = Message::Reject(wharf_protocol::Reject {
        reason: "core is starting".into(),
    });
    wharf_protocol::write_frame(
        &mut rejected.send,
        &reject,
        wharf_protocol::DEFAULT_MAX_FRAME,
    )
    .await
    .unwrap();
    let failed = s
        .agent
        .events
        .wait("the rejected attempt", |e| {
            matches!(e, RuntimeEvent::ConnectFailed { .. })
        })
        .await;
    assert_eq!(
        failed,
        RuntimeEvent::ConnectFailed {
            error: "core rejected the session: core is starting".into()
        }
    );
    let mut next = s.core.accept().await.unwrap();
    next.welcome(HEARTBEAT).await.unwrap();
    let connected = s
        .agent
        .events
        .wait_new("the next session", |e| {
            matches!(e, RuntimeEvent::Connected { .. })
        })
        .await;
    assert!(
        matches!(connected, RuntimeEvent::Connected { session: 2, .. }),
        "{connected:?}"
    );
}
