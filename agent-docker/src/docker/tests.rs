//! Unit tests of the executor over the in-memory host of [`super::fake`].

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::watch;
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{
    AgentTask, DeploySpec, DurationMs, ErrorType, HealthCheckSpec, HealthProbe, HealthSpec,
    HookSpec, PortMapping, PortProtocol, Priority, RollbackSpec, TaskPayload, TaskResult,
    Timestamp, WriteStickerSpec,
};
use wharf_sticker::{Component, Previous, Release, SigningKey, Sticker, Target, TargetKind};

use super::fake::{Behaviour, FakeDocker};
use super::*;
use crate::runtime::{CheckpointError, CheckpointSink, Executor, TaskContext};

const NAME: &str = "web";
const REPO: &str = "reg.local:5000/shop";

fn image(n: u8) -> String {
    format!("{REPO}@sha256:{}", format!("{n:02x}").repeat(32))
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

/// v1, v2 healthy; 3 unhealthy; 4 crashes; 5 never leaves `starting`.
fn host() -> FakeDocker {
    let d = FakeDocker::default();
    d.publish(&image(1), Behaviour::Healthy);
    d.publish(&image(2), Behaviour::Healthy);
    d.publish(&image(3), Behaviour::Unhealthy);
    d.publish(&image(4), Behaviour::Crashes);
    d.publish(&image(5), Behaviour::Starting);
    d
}

fn fast_health() -> HealthSpec {
    HealthSpec {
        probe: HealthProbe::DockerHealthcheck,
        interval: DurationMs::from_millis(50),
        timeout: DurationMs::from_millis(500),
        retries: 2,
        start_period: DurationMs::ZERO,
        deadline: DurationMs::from_secs(2),
    }
}

struct Bed {
    exec: DockerExecutor<FakeDocker>,
    _dir: tempfile::TempDir,
    key: SigningKey,
}

impl Bed {
    fn new() -> Self {
        Bed::in_dir(tempfile::tempdir().unwrap())
    }

    fn in_dir(dir: tempfile::TempDir) -> Self {
        let exec = DockerExecutor::new(host(), DockerExecutorConfig::new(dir.path()));
        Bed {
            exec,
            _dir: dir,
            key: SigningKey::generate().unwrap().0,
        }
    }

    fn d(&self) -> &FakeDocker {
        self.exec.docker()
    }

    /// `<name>` runs v1 (deployed by an earlier task), with a stale `<name>-previous`.
    fn with_v1(self) -> Self {
        let labels = [(LABEL_DIGEST, digest(1)), (LABEL_MANAGED, "true".into())];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.d().add_container(NAME, &image(1), &labels, true);
        self.d()
            .add_container(&previous_name(NAME), &image(7), &[], false);
        self
    }

    fn sticker(&self, task_id: uuid::Uuid, n: u8, previous: Option<u8>) -> String {
        let component = |n: u8| Component {
            name: NAME.into(),
            image: REPO.into(),
            digest: digest(n),
        };
        let release = |n: u8| Release {
            id: format!("r{n}"),
            name: "shop".into(),
            version: format!("{n}.0"),
        };
        let s = Sticker {
            target: Target {
                agent: "a".into(),
                kind: TargetKind::Docker,
                name: NAME.into(),
            },
            release: release(n),
            components: vec![component(n)],
            deployed_at: "2025-01-02T03:04:05Z".into(),
            deployed_by: "t".into(),
            task_id,
            previous: previous.map(|p| Previous {
                release: release(p),
                components: vec![component(p)],
            }),
        };
        String::from_utf8(wharf_sticker::sign(&s, &self.key).unwrap().to_file_bytes()).unwrap()
    }

    fn deploy(&self, n: u8) -> AgentTask {
        let mut t = task(TaskPayload::Inspect);
        let mut spec = DeploySpec::new(image(n));
        spec.health = fast_health();
        spec.env.insert("APP".into(), "1".into());
        spec.sticker = Some(self.sticker(t.id, n, Some(1)));
        t.payload = TaskPayload::Deploy(spec);
        t
    }

    async fn run(&self, t: AgentTask) -> TaskResult {
        self.exec
            .execute(t, ctx(None, Arc::new(Sink::default())).0)
            .await
    }

    fn sticker_on_disk(&self) -> Option<String> {
        self.exec.load_sticker(NAME).unwrap()
    }

    /// Exactly one container runs, as `<name>`, from `image(n)`; no swap container; at
    /// most a previous besides.
    fn assert_runs(&self, n: u8, context: &str) {
        let all = self.d().containers();
        let running: Vec<_> = all.iter().filter(|c| c.state.running).collect();
        assert_eq!(
            running.len(),
            1,
            "{context}: one running container: {all:#?}"
        );
        assert_eq!(running[0].name, NAME, "{context}");
        assert_eq!(running[0].image, image(n), "{context}");
        for c in &all {
            assert!(
                c.name == NAME || c.name == previous_name(NAME),
                "{context}: unexpected container {}",
                c.name
            );
        }
    }
}

/// Every forward step of a deploy over a running container with a stale previous.
const FORWARD: [&str; 8] = [
    "pull",
    "stop-current",
    "remove-stale-previous",
    "rename-current-to-previous",
    "create-new",
    "start-new",
    "wait-healthy",
    "write-sticker",
];

fn task(payload: TaskPayload) -> AgentTask {
    AgentTask {
        id: uuid::Uuid::new_v4(),
        target: NAME.into(),
        payload,
        credentials: None,
        timeout: DurationMs::from_mins(1),
        priority: Priority::Normal,
        idempotency_key: None,
        requested_by: "t".into(),
        assigned_at: Timestamp::now(),
        expires_at: None,
        attempt: 1,
    }
}

/// Records checkpoints; may cancel the task at a step, or "crash" there.
#[derive(Default)]
struct Sink {
    states: Mutex<Vec<Vec<u8>>>,
    cancel_at: Option<(String, watch::Sender<bool>)>,
    /// `(step, before)`: keep the checkpoint of `step`, then hang at it (`before`: the
    /// step is never taken) or at the next one (it was taken).
    crash_at: Option<(String, bool)>,
    captured: Mutex<Option<Vec<u8>>>,
    /// Notified when the sink hangs (the agent "died").
    crashed: tokio::sync::Notify,
}

impl CheckpointSink for Sink {
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>> {
        let step = checkpoint_step(&state);
        self.states.lock().unwrap().push(state.clone());
        if let Some((at, tx)) = &self.cancel_at {
            if step.as_deref() == Some(at.as_str()) {
                let _ = tx.send(true);
            }
        }
        if let Some((at, before)) = &self.crash_at {
            let mut captured = self.captured.lock().unwrap();
            if captured.is_some() {
                self.crashed.notify_one();
                return Box::pin(std::future::pending());
            }
            if step.as_deref() == Some(at.as_str()) {
                *captured = Some(state);
                if *before {
                    self.crashed.notify_one();
                    return Box::pin(std::future::pending());
                }
            }
        }
        Box::pin(async { Ok(()) })
    }
}

fn ctx(creds: Option<RegistryCredentials>, sink: Arc<Sink>) -> (TaskContext, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    (TaskContext::new(creds, sink, None, rx), tx)
}

fn steps_of(sink: &Sink) -> Vec<String> {
    sink.states
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| checkpoint_step(s))
        .collect()
}

#[tokio::test]
async fn first_deploy_creates_labelled_container_and_writes_sticker() {
    let bed = Bed::new();
    let mut t = bed.deploy(1);
    if let TaskPayload::Deploy(spec) = &mut t.payload {
        spec.ports.push(PortMapping {
            host: 8081,
            container: 8080,
            protocol: PortProtocol::Tcp,
            host_ip: None,
        });
        spec.networks = vec!["front".into(), "back".into()];
        spec.memory_bytes = Some(1 << 28);
        spec.release.name = "shop".into();
    }
    let sink = Arc::new(Sink::default());
    let r = bed.exec.execute(t.clone(), ctx(None, sink.clone()).0).await;
    assert!(r.success, "{r:?}");
    assert_eq!(
        steps_of(&sink),
        [
            "pull",
            "create-new",
            "start-new",
            "wait-healthy",
            "write-sticker"
        ]
    );
    let c = bed.d().get(NAME).unwrap();
    assert_eq!(c.image, image(1), "created from repo@digest");
    for (k, v) in [
        (LABEL_MANAGED, "true"),
        (LABEL_DIGEST, digest(1).as_str()),
        (LABEL_TASK_ID, t.id.to_string().as_str()),
        (LABEL_RELEASE_NAME, "shop"),
    ] {
        assert_eq!(c.label(k), Some(v), "{k}");
    }
    assert!(c.labels.contains_key(LABEL_DEPLOYED_AT) && c.labels.contains_key(LABEL_RELEASE_ID));
    assert!(c.env.contains(&"APP=1".to_owned()));
    assert_eq!(c.ports.len(), 1);
    assert_eq!(c.memory_bytes, Some(1 << 28));
    let nets: Vec<_> = c.networks.iter().map(|n| n.network.as_str()).collect();
    assert_eq!(nets, ["front", "back"]);
    assert_eq!(r.outputs["container_id"], c.id);
    assert_eq!(r.outputs["digest"], digest(1));
    assert!(!r.outputs.contains_key("previous_digest"));
    assert!(
        r.metrics.pull_ms.is_some()
            && r.metrics.deploy_ms.is_some()
            && r.metrics.health_ms.is_some()
    );
    let TaskPayload::Deploy(spec) = &t.payload else {
        unreachable!()
    };
    assert_eq!(bed.sticker_on_disk(), spec.sticker.clone());
}

#[tokio::test]
async fn second_deploy_swaps_and_keeps_exactly_one_previous() {
    let bed = Bed::new().with_v1();
    let v1_id = bed.d().get(NAME).unwrap().id;
    let sink = Arc::new(Sink::default());
    let r = bed
        .exec
        .execute(bed.deploy(2), ctx(None, sink.clone()).0)
        .await;
    assert!(r.success, "{r:?}");
    assert_eq!(steps_of(&sink), FORWARD);
    bed.assert_runs(2, "after v2");
    let prev = bed.d().get(&previous_name(NAME)).unwrap();
    assert_eq!(prev.id, v1_id);
    assert!(!prev.state.running);
    assert_eq!(r.outputs["previous_digest"], digest(1));
    assert_eq!(bed.d().containers().len(), 2);
}

/// One failure per step of the forward path, from a host running v1: the deploy of v2
/// ends with v1 running again (or untouched) and the right error class.
#[tokio::test]
async fn every_step_failure_restores_the_previous_version() {
    let prev = previous_name(NAME);
    // (injected failure: operation and container, image deployed, error class, restored)
    let cases = [
        (Some(("pull", None)), 2, ErrorType::PullFailed, false),
        (Some(("stop", Some(NAME))), 2, ErrorType::Docker, true),
        (
            Some(("remove", Some(prev.as_str()))),
            2,
            ErrorType::Docker,
            true,
        ),
        (Some(("rename", Some(NAME))), 2, ErrorType::Docker, true),
        (Some(("create", None)), 2, ErrorType::StartFailed, true),
        (Some(("connect", None)), 2, ErrorType::StartFailed, true),
        (Some(("start", Some(NAME))), 2, ErrorType::StartFailed, true),
        (None, 3, ErrorType::HealthFailed, true),
        (None, 4, ErrorType::HealthFailed, true),
        (None, 5, ErrorType::HealthFailed, true),
    ];
    for (fault, n, kind, rolled_back) in cases {
        let what = &format!("{fault:?} deploying image {n}");
        let bed = Bed::new().with_v1();
        let v1_id = bed.d().get(NAME).unwrap().id;
        if let Some((op, container)) = fault {
            bed.d()
                .fail(op, container, DockerError::Other("injected".into()), 1);
        }
        let mut t = bed.deploy(n);
        if let TaskPayload::Deploy(spec) = &mut t.payload {
            spec.networks = vec!["a".into(), "b".into()];
        }
        let r = bed.run(t).await;
        assert!(!r.success, "{what}");
        assert_eq!(r.error_type, Some(kind), "{what}: {:?}", r.error);
        assert_eq!(r.rolled_back, rolled_back, "{what}: {:?}", r.error);
        bed.assert_runs(1, what);
        assert_eq!(
            bed.d().get(NAME).unwrap().id,
            v1_id,
            "{what}: the same v1 container"
        );
        assert!(
            bed.sticker_on_disk().is_none(),
            "{what}: no sticker after a failure"
        );
        let msg = r.error.unwrap();
        if rolled_back {
            assert!(msg.contains("restored"), "{what}: {msg}");
        } else {
            assert!(msg.contains("nothing was changed"), "{what}: {msg}");
            assert!(
                bed.d().get(&prev).is_some(),
                "{what}: the stale previous is untouched"
            );
        }
        if n >= 3 {
            assert!(
                r.logs.iter().any(|l| l.contains(&image(n))),
                "{what}: logs of the failed container: {:?}",
                r.logs
            );
        }
    }
}

#[tokio::test]
async fn sticker_write_failure_restores() {
    let dir = tempfile::tempdir().unwrap();
    // A file where the stickers directory should be: the write fails.
    std::fs::write(dir.path().join("stickers"), b"x").unwrap();
    let bed = Bed::in_dir(dir).with_v1();
    let r = bed.run(bed.deploy(2)).await;
    assert!(!r.success && r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::StickerInvalid));
    bed.assert_runs(1, "sticker");
}

#[tokio::test]
async fn failed_restore_is_reported_as_rollback_failed() {
    let bed = Bed::new().with_v1();
    bed.d().fail(
        "rename",
        Some(&previous_name(NAME)),
        DockerError::Other("stuck".into()),
        5,
    );
    let r = bed.run(bed.deploy(3)).await;
    assert!(!r.success && !r.rolled_back);
    assert_eq!(
        r.error_type,
        Some(ErrorType::RollbackFailed),
        "{:?}",
        r.error
    );
    let msg = r.error.unwrap();
    assert!(
        msg.contains("wait-healthy") && msg.contains("rename-previous-back"),
        "{msg}"
    );
}

#[tokio::test]
async fn failed_first_deploy_leaves_nothing() {
    let bed = Bed::new();
    let r = bed.run(bed.deploy(3)).await;
    assert!(!r.success && !r.rolled_back);
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed));
    assert!(bed.d().containers().is_empty());
    assert!(r.error.unwrap().contains("no container runs there"));
}

#[tokio::test]
async fn pull_problems_change_nothing() {
    let creds = |registry: &str, password: &str| RegistryCredentials {
        registry: registry.into(),
        username: "u".into(),
        password: password.into(),
    };
    // Absent digest.
    let bed = Bed::new().with_v1();
    let r = bed.run(bed.deploy(9)).await;
    assert_eq!(r.error_type, Some(ErrorType::PullFailed), "{:?}", r.error);
    assert!(r.error.unwrap().contains("is not in registry"));
    assert!(bed.d().calls().is_empty(), "{:?}", bed.d().calls());

    // The registry fails, but without credentials a verified local copy will do.
    let bed = Bed::new().with_v1();
    bed.d()
        .fail("pull", None, DockerError::Other("registry down".into()), 1);
    let r = bed.run(bed.deploy(7)).await;
    assert!(r.success, "{r:?}");
    bed.assert_runs(7, "local image");

    // RepoDigests do not hold repo@digest.
    let bed = Bed::new().with_v1();
    bed.d().serve_repo_digests(&image(2), vec![image(7)]);
    let r = bed.run(bed.deploy(2)).await;
    assert_eq!(
        r.error_type,
        Some(ErrorType::DigestMismatch),
        "{:?}",
        r.error
    );
    assert_eq!(bed.d().calls(), [format!("pull {}", image(2))]);

    // Auth: wrong password, credentials for another registry (not sent), right ones.
    for (c, ok) in [
        (Some(creds("reg.local:5000", "nope")), false),
        (Some(creds("other.example", "pw")), false),
        (None, false),
        (Some(creds("https://reg.local:5000/", "pw")), true),
    ] {
        let bed = Bed::new().with_v1();
        bed.d().require_password(&image(2), "pw");
        let r = bed
            .exec
            .execute(bed.deploy(2), ctx(c, Arc::new(Sink::default())).0)
            .await;
        if ok {
            assert!(r.success, "{r:?}");
        } else {
            assert_eq!(r.error_type, Some(ErrorType::RegistryAuth), "{:?}", r.error);
            assert!(
                !r.error.unwrap().contains("nope"),
                "no password in the error"
            );
            bed.assert_runs(1, "auth");
        }
    }
}

#[tokio::test]
async fn invalid_tasks_are_refused_before_anything_changes() {
    let bed = Bed::new().with_v1();
    let mutate = |f: &dyn Fn(&mut DeploySpec)| {
        let mut t = bed.deploy(2);
        if let TaskPayload::Deploy(spec) = &mut t.payload {
            f(spec);
        }
        t
    };
    let other_sticker = bed.sticker(uuid::Uuid::new_v4(), 1, None);
    let cases = [
        (
            mutate(&|s| s.image = format!("{REPO}:2.0")),
            ErrorType::InvalidInput,
        ),
        (
            mutate(&|s| s.image = format!("{REPO}@sha256:abc")),
            ErrorType::InvalidInput,
        ),
        (
            mutate(&|s| s.pre_hook = Some(HookSpec::image(image(1)))),
            ErrorType::Unsupported,
        ),
        (
            mutate(&|s| s.post_hook = Some(HookSpec::image(image(1)))),
            ErrorType::Unsupported,
        ),
        (
            mutate(&|s| s.sticker = Some("{\"not\": \"a sticker\"}".into())),
            ErrorType::StickerInvalid,
        ),
        (
            mutate(&|s| s.sticker = Some(other_sticker.clone())),
            ErrorType::StickerInvalid,
        ),
        (
            mutate(&|s| {
                s.env.insert("A=B".into(), "x".into());
            }),
            ErrorType::InvalidInput,
        ),
        (
            AgentTask {
                target: "../etc".into(),
                ..bed.deploy(2)
            },
            ErrorType::InvalidInput,
        ),
        (
            task(TaskPayload::ComposeRollback(
                wharf_protocol::ComposeRollbackSpec::default(),
            )),
            ErrorType::Unsupported,
        ),
    ];
    for (t, kind) in cases {
        let r = bed.run(t).await;
        assert_eq!(r.error_type, Some(kind), "{:?}", r.error);
        assert!(!r.success && !r.rolled_back);
    }
    assert!(bed.d().calls().is_empty(), "{:?}", bed.d().calls());
    let hook = {
        let mut t = bed.deploy(2);
        if let TaskPayload::Deploy(s) = &mut t.payload {
            s.pre_hook = Some(HookSpec::image(image(1)));
        }
        bed.run(t).await.error.unwrap()
    };
    assert!(
        hook.contains("no hook runner") && hook.contains("nothing was changed"),
        "{hook}"
    );
}

#[tokio::test]
async fn cancel_restores_at_the_next_step() {
    // Before anything: unchanged.
    let bed = Bed::new().with_v1();
    let (c, tx) = ctx(None, Arc::new(Sink::default()));
    tx.send(true).unwrap();
    let r = bed.exec.execute(bed.deploy(2), c).await;
    assert_eq!(r.error_type, Some(ErrorType::Cancelled));
    assert!(!r.rolled_back && r.error.unwrap().contains("cancelled by core"));
    assert!(bed.d().calls().is_empty());

    // Cancelled while a step runs, or while waiting for health: restored.
    for (at, n) in [
        ("create-new", 2),
        ("rename-current-to-previous", 2),
        ("wait-healthy", 5),
    ] {
        let bed = Bed::new().with_v1();
        let (tx, rx) = watch::channel(false);
        let sink = Arc::new(Sink {
            cancel_at: Some((at.into(), tx)),
            ..Default::default()
        });
        let c = TaskContext::new(None, sink.clone(), None, rx);
        let r = bed.exec.execute(bed.deploy(n), c).await;
        assert!(!r.success && r.rolled_back, "{at}: {r:?}");
        assert_eq!(
            r.error_type,
            Some(ErrorType::Cancelled),
            "{at}: {:?}",
            r.error
        );
        bed.assert_runs(1, at);
        let steps = steps_of(&sink);
        assert!(
            !steps.contains(&"write-sticker".to_owned()),
            "{at}: {steps:?}"
        );
    }
}

#[tokio::test]
async fn timeout_restores() {
    let bed = Bed::new().with_v1();
    let mut t = bed.deploy(5);
    t.timeout = DurationMs::from_millis(400);
    let r = bed.run(t).await;
    assert!(!r.success && r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::Timeout), "{:?}", r.error);
    bed.assert_runs(1, "timeout");
}

/// Kill the agent at every step (before it is taken, and just after), then resume with
/// the last checkpoint: the target ends with exactly one running container, the new
/// version on success and the old one otherwise, and the result says which.
#[tokio::test]
async fn resume_from_every_step_finishes_the_deploy_truthfully() {
    let forward = FORWARD;
    let restore = [
        "collect-logs",
        "remove-new",
        "rename-previous-back",
        "start-previous",
        "wait-previous-healthy",
    ];
    let cases = forward
        .iter()
        .map(|s| (*s, 2u8))
        .chain(restore.iter().map(|s| (*s, 3u8)));
    let mut crashed_runs = 0;
    for (step, n) in cases {
        for before in [true, false] {
            let what = format!("{step} ({})", if before { "before" } else { "after" });
            let bed = Bed::new().with_v1();
            let t = bed.deploy(n);
            let Some(r) = crash_then_resume(&bed, &t, step, before).await else {
                continue;
            };
            crashed_runs += 1;
            let expect = if r.success { n } else { 1 };
            bed.assert_runs(expect, &what);
            if n == 3 {
                assert!(!r.success && r.rolled_back, "{what}: {r:?}");
            }
            if r.success {
                assert!(bed.sticker_on_disk().is_some(), "{what}: sticker");
            } else {
                assert!(r.rolled_back, "{what}: {r:?}");
            }
        }
    }
    assert!(crashed_runs >= 24, "{crashed_runs}");
}

/// Runs `t`, "kills" the agent at `step` (before it is taken, or just after), and
/// resumes it from the checkpoint of `step`. `None` when the task ended first (the last
/// step has no later checkpoint to die at).
async fn crash_then_resume(
    bed: &Bed,
    t: &AgentTask,
    step: &str,
    before: bool,
) -> Option<TaskResult> {
    let sink = Arc::new(Sink {
        crash_at: Some((step.into(), before)),
        ..Default::default()
    });
    tokio::select! {
        _ = bed.exec.execute(t.clone(), ctx(None, sink.clone()).0) => {
            assert!(!before, "{step}: should have hung before the step");
            return None;
        }
        () = sink.crashed.notified() => {}
    }
    let checkpoint = sink.captured.lock().unwrap().clone();
    assert!(checkpoint.is_some(), "{step}: checkpoint captured");
    Some(
        bed.exec
            .resume(
                t.clone(),
                checkpoint,
                ctx(None, Arc::new(Sink::default())).0,
            )
            .await,
    )
}

#[tokio::test]
async fn resume_without_or_with_a_bad_checkpoint() {
    let bed = Bed::new().with_v1();
    let r = bed
        .exec
        .resume(bed.deploy(2), None, ctx(None, Arc::new(Sink::default())).0)
        .await;
    assert!(!r.success && r.retriable && !r.rolled_back);
    assert!(r.error.unwrap().contains("nothing was changed"));
    let r = bed
        .exec
        .resume(
            bed.deploy(2),
            Some(b"garbage".to_vec()),
            ctx(None, Arc::new(Sink::default())).0,
        )
        .await;
    assert_eq!(r.error_type, Some(ErrorType::Internal));
    assert!(bed.d().calls().is_empty());
    assert_eq!(checkpoint_step(b"garbage"), None);
}

fn rollback(to: Option<String>, sticker: Option<String>) -> AgentTask {
    task(TaskPayload::Rollback(RollbackSpec {
        to,
        health: fast_health(),
        sticker,
    }))
}

#[tokio::test]
async fn rollback_swaps_the_previous_container_back() {
    let bed = Bed::new().with_v1();
    assert!(bed.run(bed.deploy(2)).await.success);
    let v1_id = bed.d().get(&previous_name(NAME)).unwrap().id;
    let v2_id = bed.d().get(NAME).unwrap().id;
    let mut t = rollback(None, None);
    let s = bed.sticker(t.id, 1, Some(2));
    t.payload = TaskPayload::Rollback(RollbackSpec {
        to: None,
        health: fast_health(),
        sticker: Some(s.clone()),
    });
    let r = bed.run(t).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.outputs["route"], "previous-container");
    bed.assert_runs(1, "swap");
    assert_eq!(bed.d().get(NAME).unwrap().id, v1_id);
    assert_eq!(bed.d().get(&previous_name(NAME)).unwrap().id, v2_id);
    assert_eq!(bed.sticker_on_disk(), Some(s));
    // `to` naming the previous container's digest also swaps.
    let r = bed.run(rollback(Some(digest(2)), None)).await;
    assert!(r.success, "{r:?}");
    assert_eq!(bed.d().get(NAME).unwrap().id, v2_id);
}

#[tokio::test]
async fn rollback_goes_where_cores_sticker_says_not_to_a_stale_previous() {
    // v1 runs, v2 replaces it (v1 kept as previous); core's record says the release
    // before v2 is v1: the kept container holds it, so it is swapped back.
    let bed = Bed::new().with_v1();
    assert!(bed.run(bed.deploy(2)).await.success);
    let mut t = rollback(None, None);
    let s = bed.sticker(t.id, 1, Some(2));
    t.payload = TaskPayload::Rollback(RollbackSpec {
        to: None,
        health: fast_health(),
        sticker: Some(s),
    });
    let r = bed.run(t).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.outputs["route"], "previous-container");
    bed.assert_runs(1, "swap to core's record");

    // Now v1 runs and v2 is kept; core's record names another release (digest 5): the
    // kept v2 is not it, so that digest is pulled and deployed instead.
    let mut t = rollback(None, None);
    let s = bed.sticker(t.id, 5, Some(1));
    t.payload = TaskPayload::Rollback(RollbackSpec {
        to: None,
        health: HealthSpec {
            probe: HealthProbe::None,
            ..fast_health()
        },
        sticker: Some(s.clone()),
    });
    let r = bed.run(t).await;
    assert!(r.success, "{r:?}");
    assert_ne!(
        r.outputs.get("route").map(String::as_str),
        Some("previous-container")
    );
    bed.assert_runs(5, "deployed core's record, not the kept v2");
    assert_eq!(bed.sticker_on_disk(), Some(s));
}

#[tokio::test]
async fn failed_swap_puts_the_current_container_back() {
    let bed = Bed::new();
    bed.d().add_container(NAME, &image(2), &[], true);
    bed.d()
        .add_container(&previous_name(NAME), &image(3), &[], false);
    let r = bed.run(rollback(None, None)).await;
    assert!(!r.success && r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed));
    assert!(!r.logs.is_empty());
    bed.assert_runs(2, "failed swap");
    assert_eq!(bed.d().get(&previous_name(NAME)).unwrap().image, image(3));
}

#[tokio::test]
async fn rollback_without_previous_container_deploys_a_digest() {
    // The sticker's `previous`.
    let bed = Bed::new();
    let labels = [(LABEL_DIGEST, digest(2))];
    let labels: Vec<_> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    bed.d().add_container(NAME, &image(2), &labels, true);
    bed.exec
        .store_sticker(NAME, &bed.sticker(uuid::Uuid::new_v4(), 2, Some(1)))
        .unwrap();
    let r = bed.run(rollback(None, None)).await;
    assert!(r.success, "{r:?}");
    bed.assert_runs(1, "sticker previous");
    let c = bed.d().get(NAME).unwrap();
    assert_eq!(
        c.env.iter().filter(|e| *e == "IMAGE_ENV=1").count(),
        1,
        "{:?}",
        c.env
    );
    assert!(
        c.env.contains(&"APP=1".to_owned()),
        "settings carried over: {:?}",
        c.env
    );
    assert_eq!(bed.d().get(&previous_name(NAME)).unwrap().image, image(2));

    // `to` with a digest the previous container does not run: deployed from the repo.
    let r = bed.run(rollback(Some(digest(1)), None)).await;
    assert!(r.success, "{r:?}");
    let r = bed.run(rollback(Some(digest(2)), None)).await;
    assert!(r.success, "{r:?}");
    bed.assert_runs(2, "to");
}

#[tokio::test]
async fn rollback_refusals() {
    let bed = Bed::new();
    bed.d().add_container(NAME, &image(2), &[], true);
    let r = bed.run(rollback(None, None)).await;
    assert_eq!(r.error_type, Some(ErrorType::NotFound), "{:?}", r.error);
    assert!(r.error.unwrap().contains("--to"));
    let r = bed.run(rollback(Some("sha256:nope".into()), None)).await;
    assert_eq!(r.error_type, Some(ErrorType::InvalidInput));
    let r = bed.run(rollback(Some(digest(1)), Some("{}".into()))).await;
    assert_eq!(r.error_type, Some(ErrorType::StickerInvalid));
    let empty = Bed::new();
    let r = empty.run(rollback(Some(digest(1)), None)).await;
    assert_eq!(r.error_type, Some(ErrorType::NotFound), "{:?}", r.error);
    assert!(bed.d().calls().is_empty() && empty.d().calls().is_empty());
}

#[tokio::test]
async fn resume_a_swap_from_every_step() {
    let steps = [
        ("stop-current", 1),
        ("swap-in", 1),
        ("start-previous", 1),
        ("wait-healthy", 1),
        ("write-sticker", 1),
        ("collect-logs", 3),
        ("stop-restored", 3),
        ("swap-back", 3),
        ("start-current", 3),
        ("wait-current-healthy", 3),
    ];
    for (step, prev_image) in steps {
        for before in [true, false] {
            let what = format!("{step} ({before})");
            let bed = Bed::new();
            bed.d().add_container(NAME, &image(2), &[], true);
            bed.d()
                .add_container(&previous_name(NAME), &image(prev_image), &[], false);
            let mut t = rollback(None, None);
            if let TaskPayload::Rollback(spec) = &mut t.payload {
                spec.sticker = Some(bed.sticker(t.id, prev_image, Some(2)));
            }
            let Some(r) = crash_then_resume(&bed, &t, step, before).await else {
                continue;
            };
            bed.assert_runs(if r.success { prev_image } else { 2 }, &what);
            assert!(r.success || r.rolled_back, "{what}: {r:?}");
            assert_eq!(bed.d().containers().len(), 2, "{what}");
        }
    }
}

#[tokio::test]
async fn inspect_and_stickers() {
    let bed = Bed::new();
    let r = bed.run(task(TaskPayload::Inspect)).await;
    assert_eq!(r.error_type, Some(ErrorType::NotFound));
    assert_eq!(r.outputs["exists"], "false");
    let r = bed.run(task(TaskPayload::ReadSticker)).await;
    assert_eq!(r.error_type, Some(ErrorType::NotFound));

    let s = bed.sticker(uuid::Uuid::new_v4(), 1, None);
    let r = bed
        .run(task(TaskPayload::WriteSticker(WriteStickerSpec {
            sticker: s.clone(),
        })))
        .await;
    assert!(r.success, "{r:?}");
    let r = bed.run(task(TaskPayload::ReadSticker)).await;
    assert_eq!(r.outputs["sticker"], s);
    let mut other = task(TaskPayload::WriteSticker(WriteStickerSpec {
        sticker: s.clone(),
    }));
    other.target = "db".into();
    let r = bed.run(other).await;
    assert_eq!(
        r.error_type,
        Some(ErrorType::StickerInvalid),
        "{:?}",
        r.error
    );

    assert!(bed.run(bed.deploy(1)).await.success);
    let r = bed.run(task(TaskPayload::Inspect)).await;
    assert!(r.success, "{r:?}");
    let c = bed.d().get(NAME).unwrap();
    assert_eq!(r.outputs["container_id"], c.id);
    assert_eq!(r.outputs["digest"], digest(1));
    let image_digests: Vec<String> = serde_json::from_str(&r.outputs["image_digests"]).unwrap();
    assert!(
        image_digests.iter().any(|d| d.ends_with(&digest(1))),
        "{image_digests:?}"
    );
    assert_eq!(r.outputs["state"], "running");
    assert_eq!(r.outputs["health"], "healthy");
    assert_eq!(Some(r.outputs["sticker"].clone()), bed.sticker_on_disk());
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&r.outputs["labels"]).unwrap();
    assert_eq!(labels, c.labels);
}

#[tokio::test]
async fn health_check_probes() {
    let bed = Bed::new();
    bed.d().add_container(NAME, &image(1), &[], true);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let ok = String::from_utf8_lossy(&buf[..n]).starts_with("GET /ok ");
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = s
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let check = |probe: HealthProbe| {
        task(TaskPayload::HealthCheck(HealthCheckSpec {
            health: HealthSpec {
                probe,
                ..fast_health()
            },
        }))
    };
    let cases = [
        (HealthProbe::None, true),
        (HealthProbe::DockerHealthcheck, true),
        (
            HealthProbe::Http {
                port,
                path: "/ok".into(),
            },
            true,
        ),
        (
            HealthProbe::Http {
                port,
                path: "bad".into(),
            },
            false,
        ),
        (HealthProbe::Tcp { port }, true),
        (HealthProbe::Tcp { port: closed }, false),
        (
            HealthProbe::Exec {
                cmd: vec!["true".into()],
            },
            true,
        ),
        (HealthProbe::Exec { cmd: vec![] }, false),
    ];
    for (probe, healthy) in cases {
        let r = bed.run(check(probe.clone())).await;
        assert_eq!(r.success, healthy, "{probe:?}: {r:?}");
        if !healthy {
            assert_eq!(r.error_type, Some(ErrorType::HealthFailed));
        }
    }
    let mut missing = check(HealthProbe::None);
    missing.target = "db".into();
    let r = bed.run(missing).await;
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed));
    assert!(r.error.unwrap().contains("no longer exists"));
}
