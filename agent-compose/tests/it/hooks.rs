//! Pre- and post-deploy hooks of Compose deploys, with the testbed's `wharf/testhook` image
//! on the real engine and Compose tool: a failed first deploy taken down, a passing pair
//! with its outputs, a failed pre-hook changing nothing (files, sticker, containers), a
//! refused host hook, a failed post-hook restoring the previous release, a hook step cut
//! off by a crash taken again on resume, and a host hook run with `--allow-host-hooks`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_agent_compose::{checkpoint_step, CliHost, ComposeExecutor};
use wharf_agent_docker::runtime::Executor;
use wharf_protocol::{
    AgentTask, ComposeDeploySpec, DurationMs, ErrorType, HookSpec, ReleaseInfo, TaskPayload,
    TaskResult,
};
use wharf_sticker::{Component, Release, SigningKey, Sticker, Target, TargetKind};
use wharf_testbed::{PinnedRef, TestVersion};

use crate::support::*;

fn test_hook(images: &Images, args: &[&str]) -> HookSpec {
    let mut h = HookSpec::image(images.bed.hook_image().to_string());
    h.args = args.iter().map(|a| (*a).to_owned()).collect();
    h.timeout = DurationMs::from_secs(60);
    h
}

/// A compose-deploy task of `lock` as release `version`, with a sticker signed by `key`.
fn deploy(
    key: &SigningKey,
    project: &str,
    lock: String,
    version: &str,
    pre: Option<HookSpec>,
    post: Option<HookSpec>,
) -> AgentTask {
    let locks = [wharf_protocol::compose::ComposeLock::parse("lock", &lock).unwrap()];
    let expected = wharf_protocol::compose::expected_digests(&locks).unwrap();
    let mut t = task(project, TaskPayload::Inspect);
    let components = locks[0]
        .pinned()
        .unwrap()
        .iter()
        .map(|(service, image)| Component {
            name: service.clone(),
            image: image.repository().to_owned(),
            digest: image.digest().to_string(),
        })
        .collect();
    let sticker = Sticker {
        target: Target {
            agent: "it-agent".into(),
            kind: TargetKind::Compose,
            name: project.into(),
        },
        release: Release {
            id: format!("rel-{version}"),
            name: "shop".into(),
            version: version.into(),
        },
        components,
        deployed_at: wharf_protocol::Timestamp::now().to_string(),
        deployed_by: "it".into(),
        task_id: t.id,
        previous: None,
    };
    let text = String::from_utf8(wharf_sticker::sign(&sticker, key).unwrap().to_file_bytes());
    t.payload = TaskPayload::ComposeDeploy(ComposeDeploySpec {
        project: project.into(),
        expected_digests: expected,
        lock,
        files: vec![],
        release: ReleaseInfo {
            id: format!("rel-{version}"),
            name: "shop".into(),
            version: version.into(),
        },
        health_timeout: DurationMs::from_secs(60),
        pre_hook: pre,
        post_hook: post,
        sticker: Some(text.unwrap()),
    });
    t
}

async fn run(exec: &ComposeExecutor<CliHost>, images: &Images, t: AgentTask) -> TaskResult {
    let ctx = context(Some(creds(&images.bed)), Arc::new(MemorySink::default()));
    exec.execute(t, ctx.ctx).await
}

/// One web service (the hooks' rules do not depend on the number of services).
fn one(web: &PinnedRef) -> String {
    format!("services:\n  web:\n    image: {web}\n    ports: [\"127.0.0.1::8080\"]\n")
}

/// The hook containers Docker has for `project`.
fn hook_containers(project: &str) -> Vec<String> {
    wharf_testbed::docker::hook_containers(project).expect("docker ps")
}

/// Waits up to 30 s until `project` has a hook container; whether it came to that.
async fn await_hook_container(project: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !hook_containers(project).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_gate_compose_deploys() {
    let images = images().await;
    let root = tempfile::tempdir().unwrap();
    let project = format!("wharfhk{}", wharf_testbed::unique_suffix());
    let _guard = ProjectGuard(project.clone());
    let exec = executor(root.path(), true, false).await;
    let caps = exec.capabilities();
    assert!(caps.contains(&"hooks".to_owned()), "{caps:?}");
    assert!(!caps.contains(&"host-hooks".to_owned()), "{caps:?}");
    let key = SigningKey::generate().unwrap().0;
    let dir = root.path().join(&project);
    let (v1, v2) = (images.web(TestVersion::V1), images.web(TestVersion::V2));
    let (lock1, lock2) = (one(v1), one(v2));
    let mut fail = test_hook(&images, &["fail"]);
    fail.env
        .insert("TESTHOOK_MESSAGE".into(), "smoke test got 502".into());

    // A first deploy whose post-deploy hook fails: the project is taken down again.
    let r = run(
        &exec,
        &images,
        deploy(&key, &project, lock1.clone(), "1", None, Some(fail.clone())),
    )
    .await;
    assert!(!r.success && r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::HookFailed), "{r:?}");
    let error = r.error.clone().unwrap();
    assert!(
        error.contains("smoke test got 502") && error.contains("first release"),
        "{error}"
    );
    assert_eq!(r.outputs["post_hook.ok"], "false", "{r:?}");
    assert!(container_ids(&project).is_empty(), "the project is down");
    assert!(!dir.join("compose.lock.yml").exists());

    // Both hooks pass: release 1 runs; the result carries their outputs and durations.
    let r = run(
        &exec,
        &images,
        deploy(
            &key,
            &project,
            lock1.clone(),
            "1",
            Some(test_hook(&images, &["pass"])),
            Some(test_hook(&images, &["pass"])),
        ),
    )
    .await;
    assert!(r.success, "{r:?}");
    assert_eq!(versions(&project, "web"), vec!["v1".to_owned()]);
    for phase in ["pre", "post"] {
        assert_eq!(r.outputs[&format!("{phase}_hook.ok")], "true", "{r:?}");
        assert_eq!(
            r.outputs[&format!("{phase}_hook.message")],
            "testhook pass ran"
        );
        let ms: u64 = r.outputs[&format!("{phase}_hook.duration_ms")]
            .parse()
            .unwrap();
        assert!(ms > 0, "{r:?}");
        assert_eq!(r.outputs[&format!("{phase}_hook.output.target")], project);
    }
    assert_eq!(r.outputs["pre_hook.output.phase"], "pre-deploy");
    assert_eq!(r.outputs["post_hook.output.phase"], "post-deploy");
    let services: BTreeMap<String, String> =
        serde_json::from_str(&r.outputs["post_hook.output.services"]).unwrap();
    assert_eq!(services["web"], v1.to_string(), "{r:?}");
    assert!(dir.join(".wharf/version.json").exists(), "sticker written");

    // A failing pre-deploy hook: files (lock, sticker, copies) and containers unchanged.
    let files = snapshot(&dir);
    let ids = container_ids(&project);
    let r = run(
        &exec,
        &images,
        deploy(&key, &project, lock2.clone(), "2", Some(fail.clone()), None),
    )
    .await;
    assert!(!r.success && !r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::HookFailed), "{r:?}");
    let error = r.error.clone().unwrap();
    assert!(
        error.contains("smoke test got 502") && error.contains("nothing was changed"),
        "{error}"
    );
    assert_eq!(r.outputs["pre_hook.ok"], "false");
    assert!(
        r.logs
            .iter()
            .any(|l| l.starts_with("pre-deploy: testhook:")),
        "{:?}",
        r.logs
    );
    assert_eq!(snapshot(&dir), files, "pre-hook failure changed files");
    assert_eq!(
        container_ids(&project),
        ids,
        "pre-hook failure changed containers"
    );
    assert_eq!(versions(&project, "web"), vec!["v1".to_owned()]);

    // A host-command hook on an agent without --allow-host-hooks: refused, unchanged.
    let host = HookSpec::host_command(vec!["/bin/true".into()]);
    let r = run(
        &exec,
        &images,
        deploy(&key, &project, lock2.clone(), "2", None, Some(host)),
    )
    .await;
    assert_eq!(r.error_type, Some(ErrorType::InvalidInput), "{r:?}");
    assert!(
        r.error.as_deref().unwrap().contains("--allow-host-hooks"),
        "{r:?}"
    );
    assert_eq!(snapshot(&dir), files, "a refused host hook changed files");
    assert_eq!(container_ids(&project), ids);

    // A failing post-deploy hook: release 2 ran, release 1 is back (lock and containers).
    let r = run(
        &exec,
        &images,
        deploy(
            &key,
            &project,
            lock2.clone(),
            "2",
            Some(test_hook(&images, &["pass"])),
            Some(fail.clone()),
        ),
    )
    .await;
    assert!(!r.success && r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::HookFailed), "{r:?}");
    assert_eq!(r.outputs["pre_hook.ok"], "true");
    assert_eq!(r.outputs["post_hook.ok"], "false");
    assert_eq!(versions(&project, "web"), vec!["v1".to_owned()]);
    assert_eq!(
        std::fs::read_to_string(dir.join("compose.lock.yml")).unwrap(),
        lock1
    );

    // A crash during the post-deploy hook: the run is frozen (never polled again, nothing
    // of it cleans up, as after a kill -9) while its hook hangs; the agent resumes from the
    // checkpoint, removes the left-over hook container, runs the hook again and completes.
    let mut hang = test_hook(&images, &["hang"]);
    hang.timeout = DurationMs::from_secs(120);
    let t = deploy(&key, &project, lock2.clone(), "2", None, Some(hang));
    let sink = Arc::new(MemorySink::default());
    let mut c = context(Some(creds(&images.bed)), sink.clone());
    let mut frozen = Box::pin(exec.execute(t.clone(), c.ctx));
    loop {
        tokio::select! {
            r = &mut frozen => panic!("the deploy ended before its post-deploy hook: {r:?}"),
            line = c._progress.recv() => {
                let line = line.expect("progress");
                if line.step == "post-deploy" && line.line.contains("running the") {
                    break;
                }
            }
        }
    }
    // Let the hook container start (the run goes on meanwhile), then freeze the run.
    tokio::select! {
        r = &mut frozen => panic!("the deploy ended during its hanging hook: {r:?}"),
        started = await_hook_container(&project) => assert!(started, "no hook container"),
    }
    let checkpoint = sink.states.lock().unwrap().last().cloned().unwrap();
    assert_eq!(checkpoint_step(&checkpoint).as_deref(), Some("post-hook"));
    let left = hook_containers(&project);
    assert_eq!(left.len(), 1, "the killed run's hook container: {left:?}");
    let mut resumed = t.clone();
    if let TaskPayload::ComposeDeploy(spec) = &mut resumed.payload {
        spec.post_hook = Some(test_hook(&images, &["pass"]));
    }
    let c = context(None, Arc::new(MemorySink::default()));
    let r = exec.resume(resumed, Some(checkpoint), c.ctx).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.outputs["post_hook.ok"], "true", "{r:?}");
    assert_eq!(versions(&project, "web"), vec!["v2".to_owned()]);
    assert_eq!(
        std::fs::read_to_string(dir.join("compose.lock.yml")).unwrap(),
        lock2
    );
    assert!(
        hook_containers(&project).is_empty(),
        "hook containers left: {:?}",
        hook_containers(&project)
    );
    drop(frozen);

    // An agent started with --allow-host-hooks runs a host command as a hook.
    let exec = executor(root.path(), true, true).await;
    assert!(exec.capabilities().contains(&"host-hooks".to_owned()));
    let host = HookSpec::host_command(vec![
        "/bin/sh".into(),
        "-c".into(),
        r#"cat >/dev/null; echo '{"ok": true, "message": "host hook ran"}'"#.into(),
    ]);
    let r = run(
        &exec,
        &images,
        deploy(&key, &project, lock1.clone(), "1", Some(host), None),
    )
    .await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.outputs["pre_hook.message"], "host hook ran", "{r:?}");
    assert_eq!(versions(&project, "web"), vec!["v1".to_owned()]);
}
