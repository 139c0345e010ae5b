//! Engine tests: the real queue and an in-memory or sled store, a fake directory.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wharf_protocol::{DeploySpec, Priority, TaskPayload, TaskResult, Timestamp};
use wharf_sticker::{Keyring, SigningKey, Verification};

use super::*;
use crate::audit::AuditLog;
use crate::store::{MemoryStore, SledStore};

const IMAGE_V1: &str =
    "127.0.0.1:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_V2: &str =
    "127.0.0.1:5000/app@sha256:2222222222222222222222222222222222222222222222222222222222222222";

#[derive(Default)]
struct FakeDirectory {
    agents: Mutex<HashSet<String>>,
    /// The images each dispatch asked credentials for, by task id.
    asked: Mutex<Vec<(uuid::Uuid, Vec<String>)>>,
}

impl FakeDirectory {
    fn with(agents: &[&str]) -> Arc<Self> {
        Arc::new(FakeDirectory {
            agents: Mutex::new(agents.iter().map(|a| a.to_string()).collect()),
            asked: Mutex::new(Vec::new()),
        })
    }

    fn asked_for(&self, task: uuid::Uuid) -> Vec<String> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(id, _)| *id == task)
            .map(|(_, images)| images.clone())
            .unwrap_or_default()
    }
}

impl AgentDirectory for FakeDirectory {
    fn agent_exists(&self, name: &str) -> bool {
        self.agents.lock().unwrap().contains(name)
    }
    fn seal_credentials(
        &self,
        _agent: &str,
        task: &AgentTask,
        images: &[ImageRef],
    ) -> Result<Option<SealedCredentials>, String> {
        self.asked
            .lock()
            .unwrap()
            .push((task.id, images.iter().map(ImageRef::pinned).collect()));
        Ok(None)
    }
}

fn deploy(agent: &str, target: &str, image: &str, key: Option<&str>) -> SubmitRequest {
    SubmitRequest {
        agent: agent.into(),
        target: target.into(),
        payload: TaskPayload::Deploy(DeploySpec::new(image)),
        priority: Priority::Normal,
        idempotency_key: key.map(str::to_string),
        expires_at: None,
        expires_in: None,
        timeout: None,
        max_attempts: None,
    }
}

fn start(store: Arc<dyn Store>, key: Option<Arc<SigningKey>>) -> Engine {
    Engine::start(
        store,
        FakeDirectory::with(&["host-1", "host-2"]),
        key,
        EngineConfig::default(),
    )
    .unwrap()
}

async fn next_assign(session: &mut Session) -> AgentTask {
    match tokio::time::timeout(Duration::from_secs(5), session.commands.recv())
        .await
        .expect("an Assign within 5 s")
        .expect("session open")
    {
        SessionCommand::Assign(task) => *task,
        other => panic!("expected Assign, got {other:?}"),
    }
}

#[tokio::test]
async fn idempotent_submit_created_existing_conflict() {
    let store = Arc::new(MemoryStore::new());
    let engine = start(store.clone(), None);
    let (s1, t1) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, Some("k1")), "ci")
        .await
        .unwrap();
    assert_eq!(s1.http_status(), 201);
    assert_eq!(t1.state, TaskState::Queued);
    let (s2, t2) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, Some("k1")), "ci")
        .await
        .unwrap();
    assert_eq!(s2.http_status(), 200);
    assert_eq!(t1.id, t2.id);
    let err = engine
        .submit(deploy("host-1", "web", IMAGE_V2, Some("k1")), "ci")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Conflict { existing, .. } if existing == t1.id));
    // The same key from another requester is another task.
    let (s3, t3) = engine
        .submit(
            deploy("host-1", "web", IMAGE_V1, Some("k1")),
            "someone-else",
        )
        .await
        .unwrap();
    assert_eq!(s3.http_status(), 201);
    assert_ne!(t3.id, t1.id);
    assert_eq!(store.scan(Table::Tasks).unwrap().len(), 2);
}

#[tokio::test]
async fn invalid_and_unknown_agent_store_nothing() {
    let store = Arc::new(MemoryStore::new());
    let engine = start(store.clone(), None);
    let err = engine
        .submit(deploy("host-1", "web", "127.0.0.1:5000/app:v1", None), "ci")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Invalid(InvalidSubmit::Field { field, .. }) if field == "payload.deploy.image"),
        "{err}"
    );
    assert!(err.to_string().contains("not pinned"), "{err}");
    let err = engine
        .submit(deploy("nobody", "web", IMAGE_V1, None), "ci")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::UnknownAgent(_)), "{err}");
    let err = engine
        .submit(deploy("host-1", "../etc", IMAGE_V1, None), "ci")
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Invalid(_)), "{err}");
    assert!(store.scan(Table::Tasks).unwrap().is_empty());
}

#[tokio::test]
async fn dispatch_accept_result_with_events() {
    let engine = start(Arc::new(MemoryStore::new()), None);
    let mut events = engine.subscribe();
    let (_, view) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, None), "ci")
        .await
        .unwrap();
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let task = next_assign(&mut session).await;
    assert_eq!(task.id, view.id);
    assert_eq!(task.attempt, 1);
    assert_eq!(task.requested_by, "ci");
    assert_eq!(
        engine.get(view.id).await.unwrap().state,
        TaskState::Dispatched
    );
    assert_eq!(engine.session_transport("host-1").await, Some("quic"));

    engine.accepted("host-1", task.id, 1).await.unwrap();
    assert_eq!(engine.get(view.id).await.unwrap().state, TaskState::Running);
    // Another agent may not report on it.
    assert!(engine.accepted("host-2", task.id, 1).await.is_err());
    engine
        .progress(
            "host-1",
            Progress {
                task_id: task.id,
                step: "pull".into(),
                line: "pulling".into(),
            },
        )
        .await
        .unwrap();
    let mut result = TaskResult::success(task.id, 1, Timestamp::now());
    result.outputs.insert("digest".into(), "sha256:1".into());
    engine.result("host-1", result.clone()).await.unwrap();
    // A repeated result is acknowledged and changes nothing.
    let mut again = result.clone();
    again.success = false;
    engine.result("host-1", again).await.unwrap();
    let done = engine.get(view.id).await.unwrap();
    assert_eq!(done.state, TaskState::Succeeded);
    assert_eq!(done.result.as_ref().unwrap(), &result);

    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        if event.task_id() == view.id {
            seen.push(event);
        }
    }
    let states: Vec<TaskState> = seen
        .iter()
        .filter_map(|e| match e {
            TaskEvent::State { state, .. } => Some(*state),
            TaskEvent::Progress { .. } => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            TaskState::Queued,
            TaskState::Dispatched,
            TaskState::Running,
            TaskState::Succeeded
        ]
    );
    assert!(seen
        .iter()
        .any(|e| matches!(e, TaskEvent::Progress { step, .. } if step == "pull")));
}

#[tokio::test]
async fn one_task_per_target_in_order_and_cancel_queued() {
    let engine = start(Arc::new(MemoryStore::new()), None);
    let (_, a) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, None), "ci")
        .await
        .unwrap();
    let (_, b) = engine
        .submit(deploy("host-1", "web", IMAGE_V2, None), "ci")
        .await
        .unwrap();
    let (_, c) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, None), "ci")
        .await
        .unwrap();
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    assert_eq!(next_assign(&mut session).await.id, a.id);
    assert!(session.commands.try_recv().is_err(), "b must wait for a");
    let cancelled = engine.cancel(c.id, "alice").await.unwrap();
    assert_eq!(cancelled.state, TaskState::Cancelled);
    assert!(
        engine.cancel(c.id, "alice").await.is_err(),
        "already finished"
    );
    engine
        .result("host-1", TaskResult::success(a.id, 1, Timestamp::now()))
        .await
        .unwrap();
    assert_eq!(next_assign(&mut session).await.id, b.id);
}

#[tokio::test]
async fn restart_keeps_tasks_and_resends_unaccepted() {
    let dir = tempfile::tempdir().unwrap();
    let id;
    {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let engine = start(store, None);
        let (_, view) = engine
            .submit(deploy("host-1", "web", IMAGE_V1, Some("once")), "ci")
            .await
            .unwrap();
        id = view.id;
        let mut session = engine.open_session("host-1", "quic").await.unwrap();
        assert_eq!(next_assign(&mut session).await.id, id);
        // Core "dies" here: the Assign was sent, never accepted.
    }
    // The old engine's actor still holds the sled directory; wait until it let go.
    let store: Arc<dyn Store> = loop {
        match SledStore::open(dir.path()) {
            Ok(store) => break Arc::new(store),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let engine = start(store, None);
    let view = engine.get(id).await.expect("task survived the restart");
    assert_eq!(view.state, TaskState::Dispatched);
    let (status, again) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, Some("once")), "ci")
        .await
        .unwrap();
    assert_eq!((status.http_status(), again.id), (200, id));
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let resent = next_assign(&mut session).await;
    assert_eq!((resent.id, resent.attempt), (id, 1));
}

#[tokio::test]
async fn deploy_carries_a_signed_sticker_with_previous() {
    let (key, _) = SigningKey::generate().unwrap();
    let keyring = Keyring::from(key.verifying_key().clone());
    let engine = start(Arc::new(MemoryStore::new()), Some(Arc::new(key)));
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let (_, first) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, None), "alice")
        .await
        .unwrap();
    let task = next_assign(&mut session).await;
    let TaskPayload::Deploy(spec) = &task.payload else {
        panic!("deploy payload expected");
    };
    let sticker = match wharf_sticker::verify(spec.sticker.as_ref().unwrap().as_bytes(), &keyring) {
        Verification::Valid(sticker) => sticker,
        other => panic!("sticker does not verify: {other:?}"),
    };
    assert_eq!(sticker.task_id, first.id);
    assert_eq!(sticker.deployed_by, "alice");
    // The release defaults are filled into the task too, so labels and sticker agree.
    assert_eq!(spec.release.id, first.id.to_string());
    assert_eq!(spec.release.name, "web");
    assert_eq!(sticker.release.id, spec.release.id);
    assert_eq!(sticker.release.version, spec.release.version);
    assert_eq!(sticker.components[0].image, "127.0.0.1:5000/app");
    assert!(sticker.previous.is_none());
    engine
        .result("host-1", TaskResult::success(first.id, 1, Timestamp::now()))
        .await
        .unwrap();

    engine
        .submit(deploy("host-1", "web", IMAGE_V2, None), "alice")
        .await
        .unwrap();
    let task = next_assign(&mut session).await;
    let TaskPayload::Deploy(spec) = &task.payload else {
        panic!("deploy payload expected");
    };
    let sticker = wharf_sticker::verify(spec.sticker.as_ref().unwrap().as_bytes(), &keyring)
        .into_valid()
        .unwrap();
    let previous = sticker.previous.expect("previous deploy recorded");
    assert_eq!(
        previous.components[0].digest,
        format!("sha256:{}", "1".repeat(64))
    );
    assert_eq!(
        sticker.components[0].digest,
        format!("sha256:{}", "2".repeat(64))
    );
    // An operator cannot smuggle in a sticker of their own.
    let mut forged = deploy("host-1", "web", IMAGE_V1, None);
    if let TaskPayload::Deploy(spec) = &mut forged.payload {
        spec.sticker = Some("{}".into());
    }
    assert!(matches!(
        engine.submit(forged, "alice").await,
        Err(EngineError::Invalid(_))
    ));
}

#[tokio::test]
async fn replaced_session_is_closed_and_revoked_agent_closed() {
    let engine = start(Arc::new(MemoryStore::new()), None);
    let mut old = engine.open_session("host-1", "quic").await.unwrap();
    let mut new = engine.open_session("host-1", "poll").await.unwrap();
    assert!(matches!(
        old.commands.recv().await,
        Some(SessionCommand::Close { .. })
    ));
    // Closing the old session id does not unregister the new one.
    engine.close_session("host-1", old.id);
    assert_eq!(engine.session_transport("host-1").await, Some("poll"));
    engine.close_agent("host-1", "revoked");
    assert!(matches!(
        new.commands.recv().await,
        Some(SessionCommand::Close { reason }) if reason == "revoked"
    ));
    assert_eq!(engine.session_transport("host-1").await, None);
}

#[tokio::test]
async fn expired_task_is_never_dispatched() {
    let engine = start(Arc::new(MemoryStore::new()), None);
    let mut req = deploy("host-1", "web", IMAGE_V1, None);
    req.expires_in = Some(wharf_protocol::DurationMs::from_millis(50));
    let (_, view) = engine.submit(req, "ci").await.unwrap();
    let mut events = engine.subscribe();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("the task expires")
            .unwrap()
        {
            TaskEvent::State { task_id, state } if task_id == view.id => {
                assert_eq!(state, TaskState::Expired);
                break;
            }
            _ => {}
        }
    }
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), session.commands.recv())
            .await
            .is_err(),
        "an expired task must not be sent"
    );
    assert_eq!(engine.get(view.id).await.unwrap().state, TaskState::Expired);
}

#[tokio::test]
async fn the_previous_deploy_survives_a_restart() {
    let (key, _) = SigningKey::generate().unwrap();
    let key = Arc::new(key);
    let keyring = Keyring::from(key.verifying_key().clone());
    let store = Arc::new(MemoryStore::new());
    {
        let engine = start(store.clone(), Some(key.clone()));
        let mut session = engine.open_session("host-1", "quic").await.unwrap();
        let (_, first) = engine
            .submit(deploy("host-1", "web", IMAGE_V1, None), "alice")
            .await
            .unwrap();
        next_assign(&mut session).await;
        engine
            .result("host-1", TaskResult::success(first.id, 1, Timestamp::now()))
            .await
            .unwrap();
    }
    let engine = start(store, Some(key));
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    engine
        .submit(deploy("host-1", "web", IMAGE_V2, None), "alice")
        .await
        .unwrap();
    let task = next_assign(&mut session).await;
    let TaskPayload::Deploy(spec) = &task.payload else {
        panic!("deploy payload expected");
    };
    let sticker = wharf_sticker::verify(spec.sticker.as_ref().unwrap().as_bytes(), &keyring)
        .into_valid()
        .unwrap();
    assert_eq!(
        sticker
            .previous
            .expect("previous from before the restart")
            .components[0]
            .digest,
        format!("sha256:{}", "1".repeat(64))
    );
}

fn rollback(agent: &str, target: &str, to: Option<&str>) -> SubmitRequest {
    SubmitRequest {
        payload: TaskPayload::Rollback(wharf_protocol::RollbackSpec {
            to: to.map(str::to_string),
            ..Default::default()
        }),
        ..deploy(agent, target, IMAGE_V1, None)
    }
}

/// Submits `req`, takes its `Assign`, reports success; returns the verified sticker the
/// task carried (if any).
async fn run_ok(
    engine: &Engine,
    session: &mut Session,
    keyring: &Keyring,
    req: SubmitRequest,
) -> Option<wharf_sticker::Sticker> {
    let (_, view) = engine.submit(req, "alice").await.unwrap();
    let task = next_assign(session).await;
    let sticker = match &task.payload {
        TaskPayload::Deploy(spec) => spec.sticker.clone(),
        TaskPayload::Rollback(spec) => spec.sticker.clone(),
        TaskPayload::ComposeDeploy(spec) => spec.sticker.clone(),
        _ => None,
    };
    engine
        .result("host-1", TaskResult::success(view.id, 1, Timestamp::now()))
        .await
        .unwrap();
    sticker.map(|s| {
        wharf_sticker::verify(s.as_bytes(), keyring)
            .into_valid()
            .expect("the sticker verifies")
    })
}

#[tokio::test]
async fn rollback_carries_a_sticker_of_the_previous_release_and_becomes_the_record() {
    let (key, _) = SigningKey::generate().unwrap();
    let key = Arc::new(key);
    let keyring = Keyring::from(key.verifying_key().clone());
    let store = Arc::new(MemoryStore::new());
    let digest = |n: &str| format!("sha256:{}", n.repeat(64));
    {
        let engine = start(store.clone(), Some(key.clone()));
        let mut session = engine.open_session("host-1", "quic").await.unwrap();
        // Nothing recorded yet: a rollback gets no sticker (the host decides).
        assert!(run_ok(
            &engine,
            &mut session,
            &keyring,
            rollback("host-1", "web", None)
        )
        .await
        .is_none());
        let mut v1 = deploy("host-1", "web", IMAGE_V1, None);
        if let TaskPayload::Deploy(spec) = &mut v1.payload {
            spec.release.name = "web".into();
            spec.release.version = "1.0.0".into();
        }
        run_ok(&engine, &mut session, &keyring, v1).await.unwrap();
        run_ok(
            &engine,
            &mut session,
            &keyring,
            deploy("host-1", "web", IMAGE_V2, None),
        )
        .await
        .unwrap();

        // Rollback: to v1, with v1's release; what it replaces is v2.
        let s = run_ok(
            &engine,
            &mut session,
            &keyring,
            rollback("host-1", "web", None),
        )
        .await
        .expect("a rollback sticker");
        assert_eq!(s.components[0].digest, digest("1"));
        assert_eq!(s.release.version, "1.0.0");
        assert_eq!(s.previous.unwrap().components[0].digest, digest("2"));
        let last = engine
            .last_successful_deploy("host-1", "web")
            .await
            .unwrap();
        assert_eq!(last.kind, TaskKind::Rollback);

        // The next deploy's previous is the rolled-back-to v1.
        let s = run_ok(
            &engine,
            &mut session,
            &keyring,
            deploy("host-1", "web", IMAGE_V2, None),
        )
        .await
        .unwrap();
        assert_eq!(s.previous.unwrap().components[0].digest, digest("1"));

        // --to a digest core never deployed: same repository, that digest.
        let s = run_ok(
            &engine,
            &mut session,
            &keyring,
            rollback("host-1", "web", Some(&digest("3"))),
        )
        .await
        .unwrap();
        assert_eq!(s.components[0].digest, digest("3"));
        assert_eq!(s.components[0].image, "127.0.0.1:5000/app");
        assert_eq!(s.previous.unwrap().components[0].digest, digest("2"));
    }
    // After a restart the record is rebuilt in order: what runs is the digest-3 rollback,
    // what ran before it v2.
    let engine = start(store, Some(key));
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let s = run_ok(
        &engine,
        &mut session,
        &keyring,
        rollback("host-1", "web", None),
    )
    .await
    .unwrap();
    assert_eq!(s.components[0].digest, digest("2"));
    assert_eq!(s.previous.unwrap().components[0].digest, digest("3"));

    // An operator cannot bring a sticker of their own to a rollback either.
    let mut forged = rollback("host-1", "web", None);
    if let TaskPayload::Rollback(spec) = &mut forged.payload {
        spec.sticker = Some("{}".into());
    }
    assert!(matches!(
        engine.submit(forged, "alice").await,
        Err(EngineError::Invalid(_))
    ));
}

#[tokio::test]
async fn submits_and_cancels_are_audited_in_the_rounds_own_batch() {
    let store = MemoryStore::new();
    let shared: Arc<dyn Store> = Arc::new(store.clone());
    let audit = AuditLog::open(shared.clone()).unwrap();
    let engine = Engine::start(
        shared,
        FakeDirectory::with(&["host-1"]),
        None,
        EngineConfig::default().with_audit(audit.clone()),
    )
    .unwrap();

    // 40 concurrent submits: every one is answered with its entry already stored, and
    // the entries share the rounds' commits instead of one commit each.
    let before = store.stats().commits;
    let mut handles = Vec::new();
    for i in 0..40 {
        let engine = engine.clone();
        let audit = audit.clone();
        handles.push(tokio::spawn(async move {
            let (_, view) = engine
                .submit(deploy("host-1", &format!("web-{i}"), IMAGE_V1, None), "ci")
                .await
                .unwrap();
            let found = audit
                .list(0, 1000)
                .unwrap()
                .into_iter()
                .filter(|e| e.action == "task.submit" && e.target == view.id.to_string())
                .count();
            (view.id, found)
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        let (id, found) = handle.await.unwrap();
        assert_eq!(
            found, 1,
            "task {id} answered before its audit entry was stored"
        );
        ids.push(id);
    }
    let commits = store.stats().commits - before;
    assert!(
        commits < 40,
        "40 submits took {commits} commits: the audit entries do not share the rounds' batches"
    );

    // An idempotent repeat is not recorded again; a cancel is, by its actor.
    let (_, first) = engine
        .submit(deploy("host-1", "api", IMAGE_V1, Some("k1")), "ci")
        .await
        .unwrap();
    let (again, _) = engine
        .submit(deploy("host-1", "api", IMAGE_V1, Some("k1")), "ci")
        .await
        .unwrap();
    assert!(matches!(again, Submission::Existing(_)));
    engine.cancel(ids[39], "alice").await.unwrap();
    let entries = audit.list(0, 1000).unwrap();
    assert_eq!(entries.len(), 42, "40 submits, 1 created by key, 1 cancel");
    let submit = entries
        .iter()
        .find(|e| e.target == first.id.to_string())
        .unwrap();
    assert_eq!(submit.actor, "ci");
    assert_eq!(submit.detail["kind"], "deploy");
    assert_eq!(submit.detail["image"], IMAGE_V1);
    assert_eq!(submit.detail["idempotency_key"], "k1");
    let cancel = entries.last().unwrap();
    assert_eq!(
        (cancel.action.as_str(), cancel.actor.as_str()),
        ("task.cancel", "alice")
    );
    assert_eq!(cancel.target, ids[39].to_string());
    assert_eq!(cancel.detail["state"], "cancelled");
    assert_eq!(audit.verify().unwrap().entries, 42);

    // A failed commit keeps neither the task nor its entry, and answers an error.
    store.set_fail_commits(true);
    assert!(engine
        .submit(deploy("host-1", "db", IMAGE_V1, None), "ci")
        .await
        .is_err());
    store.set_fail_commits(false);
    assert_eq!(audit.list(0, 1000).unwrap().len(), 42);
}

#[tokio::test]
async fn a_task_written_by_reference_encodes_as_the_owned_record() {
    let store = MemoryStore::new();
    let key = Arc::new(SigningKey::generate().unwrap().0);
    let engine = start(Arc::new(store.clone()), Some(key));
    let (_, view) = engine
        .submit(deploy("host-1", "web", IMAGE_V1, Some("k")), "ci")
        .await
        .unwrap();
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let task = next_assign(&mut session).await;
    let mut result = TaskResult::success(task.id, task.attempt, Timestamp::now());
    result.outputs.insert("container".into(), "abc".into());
    engine.result("host-1", result).await.unwrap();
    // What the engine wrote (through `StoredTaskRef`) decodes, and the owned record
    // encodes to the very same bytes.
    let bytes = store
        .get(Table::Tasks, view.id.as_bytes())
        .unwrap()
        .unwrap();
    let owned: StoredTask = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(owned.result.as_ref().unwrap().outputs["container"], "abc");
    assert_eq!(postcard::to_allocvec(&owned).unwrap(), bytes);
    let state = engine.state.read().await;
    let by_ref = state.stored_ref(view.id).unwrap();
    assert_eq!(postcard::to_allocvec(&by_ref).unwrap(), bytes);
}

fn compose(agent: &str, project: &str, api: char, web: char) -> SubmitRequest {
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let lock = format!(
        "services:\n  api:\n    image: 127.0.0.1:5000/api@{}\n  web:\n    image: 127.0.0.1:5000/web@{}\n",
        d(api),
        d(web)
    );
    let mut req = deploy(agent, project, IMAGE_V1, None);
    req.payload = TaskPayload::ComposeDeploy(wharf_protocol::ComposeDeploySpec {
        project: project.into(),
        expected_digests: [("api".to_string(), d(api)), ("web".to_string(), d(web))].into(),
        lock,
        files: vec![],
        release: Default::default(),
        health_timeout: Default::default(),
        pre_hook: None,
        post_hook: None,
        sticker: None,
    });
    req
}

#[tokio::test]
async fn compose_deploy_carries_a_compose_sticker_per_service_and_a_bad_lock_is_refused() {
    let (key, _) = SigningKey::generate().unwrap();
    let keyring = Keyring::from(key.verifying_key().clone());
    let engine = start(Arc::new(MemoryStore::new()), Some(Arc::new(key)));
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let first = run_ok(
        &engine,
        &mut session,
        &keyring,
        compose("host-1", "shop", '1', '2'),
    )
    .await
    .expect("a sticker");
    assert_eq!(first.target.kind, wharf_sticker::TargetKind::Compose);
    assert_eq!(first.target.name, "shop");
    let names: Vec<_> = first
        .components
        .iter()
        .map(|c| (c.name.as_str(), c.image.as_str()))
        .collect();
    assert_eq!(
        names,
        [("api", "127.0.0.1:5000/api"), ("web", "127.0.0.1:5000/web")]
    );
    assert!(first.previous.is_none());
    let second = run_ok(
        &engine,
        &mut session,
        &keyring,
        compose("host-1", "shop", '3', '4'),
    )
    .await
    .expect("a sticker");
    let previous = second.previous.expect("the first release is the previous");
    assert_eq!(previous.components, first.components);

    // Unpinned, another digest than expected, build: all refused before anything is queued.
    for bad in [
        |l: String| l.replace("api@sha256:", "api:latest@nope:"),
        |l: String| l.replace(&"3".repeat(64), &"5".repeat(64)),
        |l: String| l.replace("  web:\n", "  web:\n    build: .\n"),
    ] {
        let mut req = compose("host-1", "shop", '3', '4');
        if let TaskPayload::ComposeDeploy(spec) = &mut req.payload {
            spec.lock = bad(spec.lock.clone());
        }
        assert!(matches!(
            engine.submit(req, "alice").await,
            Err(EngineError::Invalid(_))
        ));
    }
}

#[tokio::test]
async fn a_compose_rollback_makes_the_previous_release_the_record_again_across_restarts() {
    let (key, _) = SigningKey::generate().unwrap();
    let key = Arc::new(key);
    let keyring = Keyring::from(key.verifying_key().clone());
    let store = Arc::new(MemoryStore::new());
    let digests = |t: &RecordedTarget| -> Vec<String> {
        t.components.iter().map(|c| c.digest.clone()).collect()
    };
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let (first_task, second_task);
    {
        let engine = start(store.clone(), Some(key.clone()));
        let mut session = engine.open_session("host-1", "quic").await.unwrap();
        first_task = run_ok(
            &engine,
            &mut session,
            &keyring,
            compose("host-1", "shop", '1', '2'),
        )
        .await
        .unwrap()
        .task_id;
        second_task = run_ok(
            &engine,
            &mut session,
            &keyring,
            compose("host-1", "shop", '3', '4'),
        )
        .await
        .unwrap()
        .task_id;
        assert_ne!(first_task, second_task);
        let targets = engine.recorded_targets(None).await;
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].task, second_task);
        assert_eq!(targets[0].kind, wharf_sticker::TargetKind::Compose);
        // The agent restores the kept lock and the sticker core signed for it.
        let mut back = compose("host-1", "shop", '1', '2');
        back.payload = TaskPayload::ComposeRollback(wharf_protocol::ComposeRollbackSpec {
            project: "shop".into(),
        });
        assert!(run_ok(&engine, &mut session, &keyring, back)
            .await
            .is_none());
        let targets = engine.recorded_targets(Some("host-1")).await;
        assert_eq!(targets[0].task, first_task);
        assert_eq!(digests(&targets[0]), [d('1'), d('2')]);
        assert!(engine.recorded_targets(Some("host-2")).await.is_empty());
    }
    // Rebuilt from the store in task order: the rollback is applied once, not undone.
    let engine = start(store, Some(key));
    let targets = engine.recorded_targets(None).await;
    assert_eq!(targets[0].task, first_task);
    assert_eq!(digests(&targets[0]), [d('1'), d('2')]);
}

#[tokio::test]
async fn rollbacks_ask_credentials_for_what_they_may_pull() {
    let (key, _) = SigningKey::generate().unwrap();
    let keyring = Keyring::from(key.verifying_key().clone());
    let directory = FakeDirectory::with(&["host-1"]);
    let engine = Engine::start(
        Arc::new(MemoryStore::new()),
        directory.clone(),
        Some(Arc::new(key)),
        EngineConfig::default(),
    )
    .unwrap();
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    run_ok(
        &engine,
        &mut session,
        &keyring,
        deploy("host-1", "web", IMAGE_V1, None),
    )
    .await;
    run_ok(
        &engine,
        &mut session,
        &keyring,
        deploy("host-1", "web", IMAGE_V2, None),
    )
    .await;
    // The deploy asked for its own image.
    let (_, view) = engine
        .submit(rollback("host-1", "web", None), "alice")
        .await
        .unwrap();
    next_assign(&mut session).await;
    // The rollback goes to v1 and may have to pull it: v1 first (its sticker), then what
    // core recorded on the target.
    let asked = directory.asked_for(view.id);
    assert_eq!(
        asked.first().map(String::as_str),
        Some(IMAGE_V1),
        "{asked:?}"
    );
    assert!(asked.iter().any(|i| i == IMAGE_V2), "{asked:?}");
}

#[tokio::test]
async fn finished_read_only_tasks_are_forgotten_after_the_retention_and_deploys_kept() {
    let store = Arc::new(MemoryStore::new());
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000_000));
    let clock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let config = EngineConfig {
        clock,
        read_task_retention: Some(Duration::from_secs(3600)),
        ..EngineConfig::default()
    };
    let engine = Engine::start(
        store.clone(),
        FakeDirectory::with(&["host-1"]),
        None,
        config.clone(),
    )
    .unwrap();
    let mut session = engine.open_session("host-1", "quic").await.unwrap();
    let run = |req: SubmitRequest| {
        let engine = engine.clone();
        async move {
            let (_, view) = engine.submit(req, "auditor").await.unwrap();
            view.id
        }
    };
    let deployed = run(deploy("host-1", "web", IMAGE_V1, None)).await;
    next_assign(&mut session).await;
    engine
        .result("host-1", TaskResult::success(deployed, 1, Timestamp::now()))
        .await
        .unwrap();
    let mut inspect = deploy("host-1", "web", IMAGE_V1, Some("audit-1"));
    inspect.payload = TaskPayload::Inspect;
    let read = run(inspect.clone()).await;
    next_assign(&mut session).await;
    engine
        .result("host-1", TaskResult::success(read, 1, Timestamp::now()))
        .await
        .unwrap();
    let stored = |id: TaskId| store.get(Table::Tasks, id.as_bytes()).unwrap().is_some();
    assert!(stored(read) && stored(deployed));

    // Within the retention: kept (a round runs for the next submit).
    now.fetch_add(30 * 60 * 1000, Ordering::SeqCst);
    let mut other = deploy("host-1", "db", IMAGE_V1, None);
    other.payload = TaskPayload::Inspect;
    run(other.clone()).await;
    assert!(engine.get(read).await.is_some());

    // Past it: the inspect is gone from memory and store, its key free; the deploy stays.
    now.fetch_add(2 * 3600 * 1000, Ordering::SeqCst);
    run(other).await;
    assert!(engine.get(read).await.is_none());
    assert!(!stored(read));
    assert!(engine.get(deployed).await.is_some() && stored(deployed));
    let again = run(inspect).await;
    assert_ne!(again, read, "the idempotency key names a new task");
    drop(engine);

    // A restart does not bring it back.
    let engine = Engine::start(store, FakeDirectory::with(&["host-1"]), None, config).unwrap();
    assert!(engine.get(read).await.is_none());
    assert!(engine.get(deployed).await.is_some());
}
