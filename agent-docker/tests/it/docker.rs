//! The Docker executor against the real Docker engine and a local registry with
//! htpasswd auth (wharf_testbed), called directly with a TaskContext over an in-memory
//! checkpoint sink.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};
use wharf_agent_docker::docker::{
    checkpoint_step, previous_name, swap_name, BollardDocker, DockerExecutor, DockerExecutorConfig,
};
use wharf_agent_docker::runtime::{
    CheckpointError, CheckpointSink, Executor, ProgressLine, TaskContext,
};
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{
    AgentTask, DeploySpec, DurationMs, ErrorType, HealthProbe, HealthSpec, HookSpec, Priority,
    RollbackSpec, TaskPayload, TaskResult, Timestamp,
};
use wharf_sticker::{Component, Previous, Release, SigningKey, Sticker, Target, TargetKind};
use wharf_testbed::docker::inspect_container;
use wharf_testbed::{Container, PinnedRef, TestVersion, Testbed, TestbedOptions};

const USER: &str = "wharf";
const PASSWORD: &str = "s3cret-pw";

/// Checkpoints kept in memory, in order.
#[derive(Default)]
struct MemorySink {
    states: Mutex<Vec<Vec<u8>>>,
}

impl CheckpointSink for MemorySink {
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>> {
        self.states.lock().unwrap().push(state);
        Box::pin(async { Ok(()) })
    }
}

/// Lets checkpoints through until the one after step `at`; that write never completes
/// (the agent "dies" there) and `crashed` is notified. The checkpoint of `at` is kept.
struct CrashSink {
    at: String,
    captured: Mutex<Option<Vec<u8>>>,
    crashed: Arc<Notify>,
}

impl CheckpointSink for CrashSink {
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>> {
        let mut captured = self.captured.lock().unwrap();
        if captured.is_some() {
            self.crashed.notify_one();
            return Box::pin(std::future::pending());
        }
        if checkpoint_step(&state).as_deref() == Some(self.at.as_str()) {
            *captured = Some(state);
        }
        Box::pin(async { Ok(()) })
    }
}

struct Ctx {
    ctx: TaskContext,
    progress: mpsc::UnboundedReceiver<ProgressLine>,
    _cancel: watch::Sender<bool>,
}

fn context(credentials: Option<RegistryCredentials>, sink: Arc<dyn CheckpointSink>) -> Ctx {
    let (tx, progress) = mpsc::unbounded_channel();
    let (cancel, rx) = watch::channel(false);
    Ctx {
        ctx: TaskContext::new(credentials, sink, Some(tx), rx),
        progress,
        _cancel: cancel,
    }
}

fn creds(bed: &Testbed, password: &str) -> RegistryCredentials {
    RegistryCredentials {
        registry: bed.registry().host(),
        username: USER.into(),
        password: password.into(),
    }
}

fn task(target: &str, payload: TaskPayload) -> AgentTask {
    AgentTask {
        id: uuid::Uuid::new_v4(),
        target: target.into(),
        payload,
        credentials: None,
        timeout: DurationMs::from_mins(5),
        priority: Priority::Normal,
        idempotency_key: None,
        requested_by: "it".into(),
        assigned_at: Timestamp::now(),
        expires_at: None,
        attempt: 1,
    }
}

fn http_health() -> HealthSpec {
    HealthSpec {
        probe: HealthProbe::Http {
            port: wharf_testbed::images::APP_PORT,
            path: "/healthz".into(),
        },
        interval: DurationMs::from_millis(200),
        timeout: DurationMs::from_secs(2),
        retries: 3,
        start_period: DurationMs::ZERO,
        deadline: DurationMs::from_secs(30),
    }
}

fn component(target: &str, image: &PinnedRef) -> Component {
    Component {
        name: target.into(),
        image: image.repository().into(),
        digest: image.digest().into(),
    }
}

/// A sticker for deploying `image` to `target` by task `task_id`, signed by `key`.
fn sticker(
    key: &SigningKey,
    target: &str,
    task_id: uuid::Uuid,
    image: &PinnedRef,
    previous: Option<&PinnedRef>,
) -> String {
    let release = |v: &str| Release {
        id: format!("rel-{v}"),
        name: "shop".into(),
        version: v.into(),
    };
    let s = Sticker {
        target: Target {
            agent: "it-agent".into(),
            kind: TargetKind::Docker,
            name: target.into(),
        },
        release: release(&image.digest()[7..15]),
        components: vec![component(target, image)],
        deployed_at: Timestamp::now().to_string(),
        deployed_by: "it".into(),
        task_id,
        previous: previous.map(|p| Previous {
            release: release(&p.digest()[7..15]),
            components: vec![component(target, p)],
        }),
    };
    String::from_utf8(wharf_sticker::sign(&s, key).unwrap().to_file_bytes()).unwrap()
}

fn deploy_task(
    key: &SigningKey,
    target: &str,
    image: &PinnedRef,
    previous: Option<&PinnedRef>,
    health: HealthSpec,
) -> AgentTask {
    let mut t = task(target, TaskPayload::Inspect);
    let mut spec = DeploySpec::new(image.to_string());
    spec.health = health;
    spec.stop_grace = DurationMs::from_secs(2);
    spec.env.insert("WHARF_IT".into(), "1".into());
    spec.sticker = Some(sticker(key, target, t.id, image, previous));
    t.payload = TaskPayload::Deploy(spec);
    t
}

/// Guards every container name a target can use; all are removed on drop.
struct Guards(#[allow(dead_code)] Vec<Container>);

fn guards(target: &str) -> Guards {
    Guards(vec![
        Container::adopt(target),
        Container::adopt(previous_name(target)),
        Container::adopt(swap_name(target)),
    ])
}

fn target_name() -> String {
    format!("wharf-it-{}", wharf_testbed::unique_suffix())
}

/// `docker inspect` of a container, `Value::Null` if absent.
fn inspect(name: &str) -> Value {
    inspect_container(name).unwrap().unwrap_or(Value::Null)
}

fn image_of(name: &str) -> String {
    inspect(name)["Config"]["Image"]
        .as_str()
        .unwrap_or_default()
        .into()
}

fn running(name: &str) -> bool {
    inspect(name)["State"]["Running"].as_bool().unwrap_or(false)
}

/// Polls until Docker's own health check calls `name` healthy (it lags the HTTP gate).
async fn docker_healthy(name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = inspect(name);
        if info["State"]["Health"]["Status"] == "healthy" {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline && info["State"]["Running"] == true,
            "{name} did not become healthy: {}",
            info["State"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ip_of(name: &str) -> String {
    let info = inspect(name);
    info["NetworkSettings"]["Networks"]
        .as_object()
        .and_then(|n| n.values().find_map(|e| e["IPAddress"].as_str()))
        .filter(|ip| !ip.is_empty())
        .unwrap_or_else(|| panic!("{name} has no IP: {info}"))
        .to_owned()
}

/// What `<target>` answers on `/version`.
async fn version_of(target: &str) -> String {
    let addr = format!("{}:{}", ip_of(target), wharf_testbed::images::APP_PORT);
    tokio::task::spawn_blocking(move || wharf_testbed::http::get(&addr, "/version"))
        .await
        .unwrap()
        .expect("GET /version")
        .text()
}

async fn testbed() -> Testbed {
    tokio::task::spawn_blocking(|| {
        Testbed::start(TestbedOptions::default().with_auth(USER, PASSWORD)).expect("testbed")
    })
    .await
    .unwrap()
}

/// A registry with the test images, an executor over the real engine with its own state
/// dir, and a sticker signing key.
struct Scene {
    bed: Testbed,
    exec: DockerExecutor<BollardDocker>,
    dir: tempfile::TempDir,
    key: SigningKey,
}

async fn scene() -> Scene {
    let bed = testbed().await;
    let dir = tempfile::tempdir().unwrap();
    let docker = BollardDocker::connect(None).await.expect("docker");
    let mut config = DockerExecutorConfig::new(dir.path());
    config.stop_grace = Duration::from_secs(2);
    let hooks = wharf_hooks::Hooks::new(docker.client().clone(), false);
    Scene {
        bed,
        exec: DockerExecutor::new(docker, config).with_hooks(Arc::new(hooks)),
        dir,
        key: SigningKey::generate().unwrap().0,
    }
}

async fn run(
    exec: &DockerExecutor<BollardDocker>,
    task: AgentTask,
    credentials: Option<RegistryCredentials>,
) -> (TaskResult, Vec<ProgressLine>) {
    let mut c = context(credentials, Arc::new(MemorySink::default()));
    let result = exec.execute(task, c.ctx).await;
    let mut lines = Vec::new();
    while let Ok(line) = c.progress.try_recv() {
        lines.push(line);
    }
    (result, lines)
}

fn assert_ok(r: &TaskResult) {
    assert!(
        r.success,
        "task failed: {:?} {:?}\nlogs: {:?}",
        r.error_type, r.error, r.logs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_swap_restore_rollback_and_inspect() {
    let Scene {
        bed,
        exec,
        dir,
        key,
    } = scene().await;
    let name = target_name();
    let _g = guards(&name);
    let (v1, v2, broken) = (
        bed.image(TestVersion::V1).clone(),
        bed.image(TestVersion::V2).clone(),
        bed.image(TestVersion::Broken).clone(),
    );
    let good = || Some(creds(&bed, PASSWORD));

    // First deploy, gated on Docker's own HEALTHCHECK.
    let t = deploy_task(&key, &name, &v1, None, HealthSpec::default());
    let (r, lines) = run(&exec, t.clone(), good()).await;
    assert_ok(&r);
    assert_eq!(
        image_of(&name),
        v1.to_string(),
        "created from the pinned reference"
    );
    assert_eq!(inspect(&name)["State"]["Health"]["Status"], "healthy");
    assert_eq!(version_of(&name).await.trim(), "v1");
    let labels = &inspect(&name)["Config"]["Labels"];
    assert_eq!(labels["wharf.managed"], "true");
    assert_eq!(labels["wharf.digest"], v1.digest());
    assert_eq!(labels["wharf.task.id"], t.id.to_string());
    assert!(labels["wharf.deployed.at"]
        .as_str()
        .is_some_and(|s| s.ends_with('Z')));
    assert_eq!(r.outputs["digest"], v1.digest());
    assert!(r.metrics.pull_ms.is_some() && r.metrics.health_ms.is_some());
    let steps: Vec<_> = lines.iter().map(|l| l.step.as_str()).collect();
    for step in [
        "pull",
        "create-new",
        "start-new",
        "wait-healthy",
        "write-sticker",
    ] {
        assert!(steps.contains(&step), "progress for {step}: {steps:?}");
    }
    let sticker_path = wharf_sticker::docker_sticker_path(dir.path(), &name).unwrap();
    let on_disk = std::fs::read_to_string(&sticker_path).unwrap();
    let TaskPayload::Deploy(spec) = &t.payload else {
        unreachable!()
    };
    assert_eq!(
        Some(&on_disk),
        spec.sticker.as_ref(),
        "the signed bytes, as shipped"
    );
    let keyring = wharf_sticker::Keyring::from(key.verifying_key().clone());
    assert!(matches!(
        wharf_sticker::verify(on_disk.as_bytes(), &keyring),
        wharf_sticker::Verification::Valid(_)
    ));

    // Second deploy: swap, v1 kept stopped as <name>-previous.
    let v1_id = inspect(&name)["Id"].as_str().unwrap().to_owned();
    let (r, _) = run(
        &exec,
        deploy_task(&key, &name, &v2, Some(&v1), http_health()),
        good(),
    )
    .await;
    assert_ok(&r);
    assert_eq!(image_of(&name), v2.to_string());
    assert_eq!(version_of(&name).await.trim(), "v2");
    assert_eq!(inspect(&previous_name(&name))["Id"], v1_id.as_str());
    assert!(!running(&previous_name(&name)));
    assert_eq!(r.outputs["previous_digest"], v1.digest());
    eprintln!("deploy v1 -> v2 metrics: {:?}", r.metrics);

    // A broken release: health fails, v2 comes back and answers.
    let v2_id = inspect(&name)["Id"].as_str().unwrap().to_owned();
    let (r, lines) = run(
        &exec,
        deploy_task(&key, &name, &broken, Some(&v2), http_health()),
        good(),
    )
    .await;
    assert!(!r.success && r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed), "{:?}", r.error);
    assert!(
        r.error.as_deref().unwrap().contains("restored"),
        "{:?}",
        r.error
    );
    assert!(
        r.logs.iter().any(|l| l.contains("testapp broken")),
        "the failed container's log lines: {:?}",
        r.logs
    );
    let steps: Vec<_> = lines.iter().map(|l| l.step.as_str()).collect();
    assert!(steps.contains(&"rename-previous-back"), "{steps:?}");
    eprintln!("deploy v2 -> broken (restored) metrics: {:?}", r.metrics);
    assert_eq!(inspect(&name)["Id"], v2_id.as_str());
    assert!(running(&name));
    assert_eq!(version_of(&name).await.trim(), "v2");
    assert!(inspect(&swap_name(&name)).is_null());
    let on_disk = std::fs::read_to_string(&sticker_path).unwrap();
    assert!(on_disk.contains(v2.digest()) && !on_disk.contains(broken.digest()));

    // The broken deploy replaced the stale previous (v1); rollback now deploys the
    // sticker's `previous` (v1) by digest.
    assert!(inspect(&previous_name(&name)).is_null());
    let mut t = task(&name, TaskPayload::Inspect);
    t.payload = TaskPayload::Rollback(RollbackSpec {
        to: None,
        health: http_health(),
        sticker: Some(sticker(&key, &name, t.id, &v1, Some(&v2))),
    });
    let (r, _) = run(&exec, t, good()).await;
    assert_ok(&r);
    assert_eq!(image_of(&name), v1.to_string());
    assert_eq!(version_of(&name).await.trim(), "v1");
    assert_eq!(inspect(&previous_name(&name))["Id"], v2_id.as_str());
    let env = inspect(&name)["Config"]["Env"].to_string();
    assert!(env.contains("WHARF_IT=1"), "settings carried over: {env}");

    // Rollback again: the previous container (v2) is swapped back in.
    let v1b_id = inspect(&name)["Id"].as_str().unwrap().to_owned();
    let mut t = task(&name, TaskPayload::Inspect);
    let rollback_sticker = sticker(&key, &name, t.id, &v2, Some(&v1));
    t.payload = TaskPayload::Rollback(RollbackSpec {
        to: None,
        health: http_health(),
        sticker: Some(rollback_sticker.clone()),
    });
    let (r, _) = run(&exec, t, None).await;
    assert_ok(&r);
    assert_eq!(r.outputs["route"], "previous-container");
    assert_eq!(inspect(&name)["Id"], v2_id.as_str());
    assert_eq!(version_of(&name).await.trim(), "v2");
    assert_eq!(inspect(&previous_name(&name))["Id"], v1b_id.as_str());
    assert!(!running(&previous_name(&name)));

    // Inspect and read-sticker agree with what runs.
    docker_healthy(&name).await;
    let (r, _) = run(&exec, task(&name, TaskPayload::Inspect), None).await;
    assert_ok(&r);
    assert_eq!(r.outputs["digest"], v2.digest());
    assert_eq!(r.outputs["container_id"], v2_id.as_str());
    assert_eq!(r.outputs["state"], "running");
    assert_eq!(r.outputs["health"], "healthy");
    assert_eq!(r.outputs["previous_digest"], v1.digest());
    assert_eq!(r.outputs["sticker"], rollback_sticker);
    let labels: Value = serde_json::from_str(&r.outputs["labels"]).unwrap();
    assert_eq!(labels["wharf.digest"], v2.digest());
    let (r, _) = run(&exec, task(&name, TaskPayload::ReadSticker), None).await;
    assert_ok(&r);
    assert_eq!(r.outputs["sticker"], rollback_sticker);

    // Health-check now: healthy; on a stopped target: not.
    let hc = TaskPayload::HealthCheck(wharf_protocol::HealthCheckSpec {
        health: http_health(),
    });
    let (r, _) = run(&exec, task(&name, hc.clone()), None).await;
    assert_ok(&r);
    let (r, _) = run(&exec, task(&previous_name(&name), hc), None).await;
    assert!(!r.success);
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_failed_pulls_change_nothing() {
    let Scene {
        bed,
        exec,
        dir: _dir,
        key,
    } = scene().await;
    let name = target_name();
    let _g = guards(&name);
    let v1 = bed.image(TestVersion::V1).clone();
    let v2 = bed.image(TestVersion::V2).clone();
    let (r, _) = run(
        &exec,
        deploy_task(&key, &name, &v1, None, http_health()),
        Some(creds(&bed, PASSWORD)),
    )
    .await;
    assert_ok(&r);
    let before = inspect(&name)["Id"].clone();
    let unchanged = |what: &str| {
        assert_eq!(inspect(&name)["Id"], before, "{what}: same container");
        assert!(running(&name), "{what}: still running");
        assert!(
            inspect(&previous_name(&name)).is_null(),
            "{what}: no previous"
        );
    };

    // v2 must come from the registry for the auth case.
    let _ = bed.remove_local_images();
    assert!(wharf_testbed::docker::repo_digests(&v2.to_string())
        .unwrap()
        .is_empty());

    let (r, _) = run(
        &exec,
        deploy_task(&key, &name, &v2, Some(&v1), http_health()),
        Some(creds(&bed, "wrong-password")),
    )
    .await;
    assert!(!r.success && !r.rolled_back);
    assert_eq!(r.error_type, Some(ErrorType::RegistryAuth), "{:?}", r.error);
    assert!(!r.error.as_deref().unwrap().contains("wrong-password"));
    unchanged("wrong credentials");

    let absent = PinnedRef::new(v1.repository(), format!("sha256:{}", "ab".repeat(32))).unwrap();
    let (r, _) = run(
        &exec,
        deploy_task(&key, &name, &absent, Some(&v1), http_health()),
        Some(creds(&bed, PASSWORD)),
    )
    .await;
    assert!(!r.success && !r.rolled_back);
    assert_eq!(r.error_type, Some(ErrorType::PullFailed), "{:?}", r.error);
    assert!(
        r.error.as_deref().unwrap().contains("nothing was changed"),
        "{:?}",
        r.error
    );
    unchanged("absent digest");

    let mut t = deploy_task(&key, &name, &v2, Some(&v1), http_health());
    if let TaskPayload::Deploy(spec) = &mut t.payload {
        spec.image = format!("{}:v2", v2.repository());
    }
    let (r, _) = run(&exec, t, Some(creds(&bed, PASSWORD))).await;
    assert_eq!(r.error_type, Some(ErrorType::InvalidInput), "{:?}", r.error);
    unchanged("tag instead of digest");

    let mut t = deploy_task(&key, &name, &v2, Some(&v1), http_health());
    if let TaskPayload::Deploy(spec) = &mut t.payload {
        spec.pre_hook = Some(HookSpec::host_command(vec!["/bin/true".into()]));
    }
    let (r, _) = run(&exec, t, Some(creds(&bed, PASSWORD))).await;
    assert_eq!(r.error_type, Some(ErrorType::InvalidInput), "{:?}", r.error);
    assert!(
        r.error.as_deref().unwrap().contains("--allow-host-hooks"),
        "{:?}",
        r.error
    );
    unchanged("host hook without --allow-host-hooks");
}

fn test_hook(bed: &Testbed, args: &[&str]) -> HookSpec {
    let mut h = HookSpec::image(bed.hook_image().to_string());
    h.args = args.iter().map(|a| (*a).to_owned()).collect();
    h.timeout = DurationMs::from_secs(30);
    h
}

/// Hook containers Docker still has for `target`.
fn hook_containers(target: &str) -> Vec<String> {
    wharf_testbed::docker::hook_containers(target).expect("docker ps")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_gate_the_deploy() {
    let Scene {
        bed,
        exec,
        dir: _dir,
        key,
    } = scene().await;
    assert!(exec.capabilities().contains(&"hooks".to_owned()));
    assert!(!exec.capabilities().contains(&"host-hooks".to_owned()));
    let v1 = bed.image(TestVersion::V1).clone();
    let v2 = bed.image(TestVersion::V2).clone();
    let (name, _g) = fresh_v1(&exec, &bed, &key, &v1).await;
    let before = inspect(&name)["Id"].clone();
    let with_hooks = |pre: Option<HookSpec>, post: Option<HookSpec>| {
        let mut t = deploy_task(&key, &name, &v2, Some(&v1), http_health());
        if let TaskPayload::Deploy(spec) = &mut t.payload {
            spec.pre_hook = pre;
            spec.post_hook = post;
        }
        t
    };

    // A failing pre-deploy hook: nothing changes.
    let mut fail = test_hook(&bed, &["fail"]);
    fail.env
        .insert("TESTHOOK_MESSAGE".into(), "migration 42 missing".into());
    let (r, _) = run(
        &exec,
        with_hooks(Some(fail.clone()), None),
        Some(creds(&bed, PASSWORD)),
    )
    .await;
    assert!(!r.success && !r.rolled_back, "{:?}", r.error);
    assert_eq!(r.error_type, Some(ErrorType::HookFailed), "{:?}", r.error);
    let error = r.error.clone().unwrap();
    assert!(
        error.contains("migration 42 missing") && error.contains("nothing was changed"),
        "{error}"
    );
    assert_eq!(r.outputs["pre_hook.ok"], "false");
    assert!(r.outputs["pre_hook.message"].contains("migration 42 missing"));
    assert!(r.outputs.contains_key("pre_hook.duration_ms"));
    assert!(
        r.logs
            .iter()
            .any(|l| l.starts_with("pre-deploy: testhook:")),
        "{:?}",
        r.logs
    );
    assert_eq!(
        inspect(&name)["Id"],
        before,
        "pre-hook failure: same container"
    );
    assert!(running(&name));
    assert!(inspect(&previous_name(&name)).is_null());

    // A failing post-deploy hook: the previous version is restored.
    let (r, _) = run(
        &exec,
        with_hooks(Some(test_hook(&bed, &["pass"])), Some(fail)),
        Some(creds(&bed, PASSWORD)),
    )
    .await;
    assert!(!r.success && r.rolled_back, "{:?}", r.error);
    assert_eq!(r.error_type, Some(ErrorType::HookFailed), "{:?}", r.error);
    assert_eq!(r.outputs["pre_hook.ok"], "true");
    assert_eq!(r.outputs["pre_hook.output.phase"], "pre-deploy");
    assert_eq!(r.outputs["post_hook.ok"], "false");
    assert_eq!(image_of(&name), v1.to_string(), "v1 restored");
    assert!(running(&name));
    assert_eq!(version_of(&name).await.trim(), "v1");

    // Both pass: v2 runs and the result carries the hooks' outputs.
    let (r, _) = run(
        &exec,
        with_hooks(
            Some(test_hook(&bed, &["pass"])),
            Some(test_hook(&bed, &["pass"])),
        ),
        Some(creds(&bed, PASSWORD)),
    )
    .await;
    assert_ok(&r);
    assert_eq!(image_of(&name), v2.to_string());
    assert_eq!(r.outputs["post_hook.output.phase"], "post-deploy");
    assert_eq!(r.outputs["post_hook.output.target"], name);
    assert_eq!(r.outputs["post_hook.output.digest"], v2.digest());
    assert_eq!(r.outputs["post_hook.output.previous"], v1.digest());
    assert_eq!(r.outputs["pre_hook.message"], "testhook pass ran");
    assert!(hook_containers(&name).is_empty(), "hook containers left");
}

/// A fresh target running v1 (deployed with the registry's credentials), and its guards.
async fn fresh_v1(
    exec: &DockerExecutor<BollardDocker>,
    bed: &Testbed,
    key: &SigningKey,
    v1: &PinnedRef,
) -> (String, Guards) {
    let name = target_name();
    let g = guards(&name);
    let t = deploy_task(key, &name, v1, None, http_health());
    let (r, _) = run(exec, t, Some(creds(bed, PASSWORD))).await;
    assert_ok(&r);
    (name, g)
}

/// Resumes the interrupted deploy of v2 over v1 and checks the outcome: v2 running and
/// healthy on success (`forward`), else v1 restored (`rolled_back`); never two running.
async fn resume_and_check(
    exec: &DockerExecutor<BollardDocker>,
    t: AgentTask,
    checkpoint: Option<Vec<u8>>,
    name: &str,
    forward: bool,
    step: &str,
) {
    let c = context(None, Arc::new(MemorySink::default()));
    let r = exec.resume(t, checkpoint, c.ctx).await;
    assert_eq!(r.success, forward, "{step}: {r:?}");
    assert_eq!(r.rolled_back, !forward, "{step}: {r:?}");
    assert!(running(name), "{step}");
    let want = if forward { "v2" } else { "v1" };
    assert_eq!(version_of(name).await.trim(), want, "{step}");
    docker_healthy(name).await;
    let previous = inspect(&previous_name(name));
    assert!(
        previous.is_null() || previous["State"]["Running"] == false,
        "{step}: exactly one running container"
    );
    assert!(inspect(&swap_name(name)).is_null(), "{step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_a_crash_ends_with_one_healthy_container() {
    let Scene {
        bed,
        exec,
        dir: _dir,
        key,
    } = scene().await;
    let v1 = bed.image(TestVersion::V1).clone();
    let v2 = bed.image(TestVersion::V2).clone();
    // (step the agent died in, version running afterwards)
    let cases = [
        ("stop-current", &v1),
        ("rename-current-to-previous", &v1),
        ("create-new", &v1),
        ("start-new", &v2),
        ("wait-healthy", &v2),
    ];
    for (step, expected) in cases {
        let (name, _g) = fresh_v1(&exec, &bed, &key, &v1).await;

        // Deploy v2 and "die" right after `step` was taken (at the next checkpoint).
        let t = deploy_task(&key, &name, &v2, Some(&v1), http_health());
        let crashed = Arc::new(Notify::new());
        let sink = Arc::new(CrashSink {
            at: step.into(),
            captured: Mutex::new(None),
            crashed: crashed.clone(),
        });
        let c = context(Some(creds(&bed, PASSWORD)), sink.clone());
        tokio::select! {
            r = exec.execute(t.clone(), c.ctx) => panic!("{step}: finished without the crash: {r:?}"),
            () = crashed.notified() => {}
        }
        let checkpoint = sink.captured.lock().unwrap().clone();
        assert!(checkpoint.is_some(), "{step}: checkpoint captured");

        resume_and_check(&exec, t, checkpoint, &name, expected == &v2, step).await;
    }

    // No checkpoint: nothing was done; a retriable failure.
    let name = target_name();
    let c = context(None, Arc::new(MemorySink::default()));
    let r = exec
        .resume(
            deploy_task(&key, &name, &v2, None, http_health()),
            None,
            c.ctx,
        )
        .await;
    assert!(!r.success && r.retriable && !r.rolled_back, "{r:?}");
    assert!(inspect(&name).is_null());
}

/// The journal of the child process: each checkpoint replaces the file atomically (temp
/// file, fsync, rename), so the last durable one survives a kill -9.
struct FileSink(std::path::PathBuf);

impl CheckpointSink for FileSink {
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>> {
        let written = wharf_sticker::write_private_atomic(&self.0, &state)
            .map_err(|e| CheckpointError(e.to_string()));
        Box::pin(async move { written })
    }
}

const CHILD_TASK: &str = "WHARF_IT_CHILD_TASK";
const CHILD_JOURNAL: &str = "WHARF_IT_CHILD_JOURNAL";
const CHILD_STATE: &str = "WHARF_IT_CHILD_STATE";

/// The child side of [`kill_9_at_a_step_then_resume`]: runs the task from the
/// environment, pausing at `WHARF_FAULT_PAUSE_AT` (fault-injection build).
async fn child_deploy(task_json: String) {
    let task: AgentTask = serde_json::from_str(&task_json).unwrap();
    let journal = std::env::var(CHILD_JOURNAL).unwrap();
    let state = std::env::var(CHILD_STATE).unwrap();
    let docker = BollardDocker::connect(None).await.unwrap();
    let exec = DockerExecutor::new(docker, DockerExecutorConfig::new(state));
    let c = context(None, Arc::new(FileSink(journal.into())));
    let r = exec.execute(task, c.ctx).await;
    eprintln!("WHARF_IT_CHILD_FINISHED {r:?}");
}

/// Runs this test binary as a child that deploys `t` and pauses at `step`; waits for
/// its `WHARF_FAULT_PAUSED <step>` line, kills it with SIGKILL and returns the last
/// checkpoint it made durable.
async fn deploy_in_child_and_kill_at(
    t: &AgentTask,
    step: &str,
    state: &std::path::Path,
) -> Vec<u8> {
    use std::io::BufRead;
    let journal = state.join("journal.bin");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "docker::kill_9_at_a_step_then_resume",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_TASK, serde_json::to_string(t).unwrap())
        .env(CHILD_JOURNAL, &journal)
        .env(CHILD_STATE, state)
        .env(wharf_agent_docker::docker::fault::PAUSE_ENV, step)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let marker = format!(
        "{} {step}",
        wharf_agent_docker::docker::fault::PAUSED_MARKER
    );
    let seen = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
            if line == marker {
                return Ok(lines);
            }
            lines.push(line);
        }
        Err(lines)
    })
    .await
    .unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    if let Err(lines) = seen {
        panic!("the child never paused at {step}: {lines:#?}");
    }
    std::fs::read(&journal).expect("the child journaled before pausing")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_a_step_then_resume() {
    if let Ok(task_json) = std::env::var(CHILD_TASK) {
        return child_deploy(task_json).await;
    }
    let scene = scene().await;
    let (bed, exec, key) = (&scene.bed, &scene.exec, &scene.key);
    let v1 = bed.image(TestVersion::V1).clone();
    let v2 = bed.image(TestVersion::V2).clone();
    // The child has no credentials: it deploys v2 from the verified local copy.
    tokio::task::block_in_place(|| bed.registry().client().pull(&v2.to_string())).unwrap();
    // (step killed at, running afterwards): the step was journaled but not taken.
    for (step, expected) in [("rename-current-to-previous", &v1), ("wait-healthy", &v2)] {
        let (name, _g) = fresh_v1(exec, bed, key, &v1).await;
        let t = deploy_task(key, &name, &v2, Some(&v1), http_health());
        let checkpoint = deploy_in_child_and_kill_at(&t, step, scene.dir.path()).await;
        assert_eq!(checkpoint_step(&checkpoint).as_deref(), Some(step));
        match step {
            "rename-current-to-previous" => {
                assert!(!running(&name), "stopped before the kill");
                assert!(inspect(&previous_name(&name)).is_null());
            }
            _ => {
                assert!(running(&name) && image_of(&name) == v2.to_string());
                assert_eq!(image_of(&previous_name(&name)), v1.to_string());
            }
        }
        resume_and_check(exec, t, Some(checkpoint), &name, expected == &v2, step).await;
    }
}

/// A Docker network removed on drop.
struct Network(String);

impl Network {
    fn create() -> Self {
        let name = format!("wharf-it-net-{}", wharf_testbed::unique_suffix());
        wharf_testbed::docker::run(
            wharf_testbed::docker::command(None).args(["network", "create", &name]),
        )
        .expect("docker network create");
        Network(name)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = wharf_testbed::docker::output(
            wharf_testbed::docker::command(None).args(["network", "rm", &self.0]),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_applies_the_whole_container_config() {
    let scene = scene().await;
    let v1 = scene.bed.image(TestVersion::V1).clone();
    let name = target_name();
    // Containers go before the networks they are attached to.
    let (front, back) = (Network::create(), Network::create());
    let _g = guards(&name);
    let host_port = wharf_testbed::free_port().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut t = deploy_task(&scene.key, &name, &v1, None, http_health());
    if let TaskPayload::Deploy(spec) = &mut t.payload {
        spec.ports.push(wharf_protocol::PortMapping {
            host: host_port,
            container: wharf_testbed::images::APP_PORT,
            protocol: wharf_protocol::PortProtocol::Tcp,
            host_ip: Some("127.0.0.1".into()),
        });
        spec.volumes.push(wharf_protocol::VolumeMount {
            source: data.path().display().to_string(),
            dest: "/data".into(),
            read_only: true,
        });
        spec.networks = vec![front.0.clone(), back.0.clone()];
        spec.restart = wharf_protocol::RestartPolicy::OnFailure { max_retries: 2 };
        spec.memory_bytes = Some(64 << 20);
        spec.nano_cpus = Some(500_000_000);
        spec.release = wharf_protocol::ReleaseInfo {
            id: "rel-9".into(),
            name: "shop".into(),
            version: "9.0".into(),
        };
        // The image's own probe binary, run by exec.
        spec.health.probe = HealthProbe::Exec {
            cmd: vec!["/testapp".into(), "probe".into()],
        };
    }
    let (r, _) = run(&scene.exec, t, Some(creds(&scene.bed, PASSWORD))).await;
    assert_ok(&r);
    let info = inspect(&name);
    let host = &info["HostConfig"];
    assert_eq!(host["Memory"], 64 << 20);
    assert_eq!(host["NanoCpus"], 500_000_000);
    assert_eq!(host["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(host["RestartPolicy"]["MaximumRetryCount"], 2);
    assert_eq!(
        host["Binds"][0],
        format!("{}:/data:ro", data.path().display())
    );
    let networks = info["NetworkSettings"]["Networks"].as_object().unwrap();
    assert!(
        networks.contains_key(&front.0) && networks.contains_key(&back.0),
        "{networks:?}"
    );
    let labels = &info["Config"]["Labels"];
    assert_eq!(labels["wharf.release.id"], "rel-9");
    assert_eq!(labels["wharf.release.name"], "shop");
    assert_eq!(labels["wharf.release.version"], "9.0");
    // The published port answers on the host.
    let addr = format!("127.0.0.1:{host_port}");
    let answer = tokio::task::spawn_blocking(move || wharf_testbed::http::get(&addr, "/version"))
        .await
        .unwrap()
        .expect("GET /version on the published port");
    assert_eq!(answer.text().trim(), "v1");

    // Health-check tasks over TCP and exec, against the real container.
    for probe in [
        HealthProbe::Tcp {
            port: wharf_testbed::images::APP_PORT,
        },
        HealthProbe::Exec {
            cmd: vec!["/testapp".into(), "probe".into()],
        },
        HealthProbe::Exec {
            cmd: vec!["/testapp".into(), "probe".into(), "/nope".into()],
        },
    ] {
        let failing = matches!(&probe, HealthProbe::Exec { cmd } if cmd.len() == 3);
        let health = HealthSpec {
            probe,
            retries: 1,
            ..http_health()
        };
        let hc = TaskPayload::HealthCheck(wharf_protocol::HealthCheckSpec { health });
        let (r, _) = run(&scene.exec, task(&name, hc), None).await;
        assert_eq!(r.success, !failing, "{r:?}");
    }
}
