//! The Compose executor against the real engine, the real Compose tool and a local
//! registry with htpasswd auth, called directly with a TaskContext over an in-memory
//! checkpoint sink.

use std::sync::Arc;

use wharf_agent_compose::{CliHost, ComposeExecutor};
use wharf_agent_docker::runtime::Executor;
use wharf_protocol::{
    ComposeDeploySpec, ComposeRollbackSpec, DurationMs, ErrorType, ReleaseInfo, TaskPayload,
    TaskResult,
};
use wharf_testbed::TestVersion;

use crate::support::*;

fn spec(project: &str, lock: String, version: &str) -> ComposeDeploySpec {
    let locks = [wharf_protocol::compose::ComposeLock::parse("lock", &lock).unwrap()];
    ComposeDeploySpec {
        project: project.into(),
        expected_digests: wharf_protocol::compose::expected_digests(&locks).unwrap(),
        lock,
        files: vec![],
        release: ReleaseInfo {
            id: format!("rel-{version}"),
            name: "shop".into(),
            version: version.into(),
        },
        health_timeout: DurationMs::from_secs(60),
        pre_hook: None,
        post_hook: None,
        sticker: None,
    }
}

async fn run(
    exec: &ComposeExecutor<CliHost>,
    images: &Images,
    project: &str,
    payload: TaskPayload,
) -> TaskResult {
    let sink = Arc::new(MemorySink::default());
    let ctx = context(Some(creds(&images.bed)), sink);
    exec.execute(task(project, payload), ctx.ctx).await
}

fn both(project: &str) -> (Vec<String>, Vec<String>) {
    (versions(project, "api"), versions(project, "web"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_upgrade_refusals_broken_restored_and_rollback() {
    let images = images().await;
    let root = tempfile::tempdir().unwrap();
    let project = format!("wharfit{}", wharf_testbed::unique_suffix());
    let _guard = ProjectGuard(project.clone());
    let exec = executor(root.path(), false, false).await;
    let caps = exec.capabilities();
    assert!(caps.contains(&"compose".to_string()), "{caps:?}");
    assert!(caps.iter().any(|c| c.starts_with("compose-v")), "{caps:?}");
    let (v1, v2, broken) = (TestVersion::V1, TestVersion::V2, TestVersion::Broken);

    // Release 1.
    let lock1 = lock(images.api(v1), images.web(v1));
    let r = run(
        &exec,
        &images,
        &project,
        TaskPayload::ComposeDeploy(spec(&project, lock1.clone(), "1")),
    )
    .await;
    assert!(r.success, "{r:?}");
    assert_eq!(both(&project), (vec!["v1".into()], vec!["v1".into()]));
    let dir = root.path().join(&project);
    assert_eq!(
        std::fs::read_to_string(dir.join("compose.lock.yml")).unwrap(),
        lock1
    );

    // Release 2.
    let lock2 = lock(images.api(v2), images.web(v2));
    let r = run(
        &exec,
        &images,
        &project,
        TaskPayload::ComposeDeploy(spec(&project, lock2.clone(), "2")),
    )
    .await;
    assert!(r.success, "{r:?}");
    assert_eq!(both(&project), (vec!["v2".into()], vec!["v2".into()]));
    assert!(
        r.metrics.pull_ms.is_some() && r.metrics.health_ms.is_some(),
        "{r:?}"
    );

    // Refusals: nothing changed (files, containers).
    let files_before = snapshot(&dir);
    let ids_before = container_ids(&project);
    let web_tag = format!("{}:v2", images.web(v2).repository());
    let mut refused = Vec::new();
    let mut unpinned = spec(&project, lock2.clone(), "x");
    unpinned.lock = lock2.replace(&images.web(v2).to_string(), &web_tag);
    let mut mismatched = spec(&project, lock2.clone(), "x");
    mismatched
        .expected_digests
        .insert("web".into(), images.web(v1).digest().into());
    let mut build = spec(&project, lock2.clone(), "x");
    build.lock = lock2.replace(
        "    depends_on: [api]\n",
        "    depends_on: [api]\n    build: .\n",
    );
    let mut malformed = spec(&project, lock2.clone(), "x");
    malformed.lock = "services:\n  web: [\n".into();
    for (what, s, service) in [
        ("unpinned", unpinned, Some("web")),
        ("mismatched", mismatched, Some("web")),
        ("build", build, Some("web")),
        ("malformed", malformed, None),
    ] {
        let r = run(&exec, &images, &project, TaskPayload::ComposeDeploy(s)).await;
        assert!(!r.success, "{what}: {r:?}");
        assert_eq!(r.error_type, Some(ErrorType::InvalidInput), "{what}: {r:?}");
        let err = r.error.clone().unwrap();
        assert!(err.contains("nothing was changed"), "{what}: {err}");
        if let Some(service) = service {
            assert!(err.contains(&format!("`{service}`")), "{what}: {err}");
        }
        assert!(!r.rolled_back);
        refused.push(err);
    }
    assert_eq!(snapshot(&dir), files_before, "a refused lock changed files");
    assert_eq!(
        container_ids(&project),
        ids_before,
        "a refused lock changed containers"
    );

    // Release 3: web is broken; the whole of release 2 comes back and answers.
    let lock3 = lock(images.api(v2), images.web(broken));
    let mut s3 = spec(&project, lock3, "3");
    s3.health_timeout = DurationMs::from_secs(30);
    let r = run(&exec, &images, &project, TaskPayload::ComposeDeploy(s3)).await;
    assert!(!r.success, "{r:?}");
    assert!(r.rolled_back, "{r:?}");
    assert_eq!(r.error_type, Some(ErrorType::HealthFailed), "{r:?}");
    assert!(r.error.as_deref().unwrap().contains("`web`"), "{r:?}");
    assert!(
        !r.logs.is_empty() && r.logs.iter().all(|l| l.starts_with("web | ")),
        "the failing service's log lines: {:?}",
        r.logs
    );
    assert_eq!(both(&project), (vec!["v2".into()], vec!["v2".into()]));
    assert_eq!(
        std::fs::read_to_string(dir.join("compose.lock.yml")).unwrap(),
        lock2
    );

    // Inspect: every service, state, health, running digest.
    let r = run(&exec, &images, &project, TaskPayload::Inspect).await;
    assert!(r.success, "{r:?}");
    assert_eq!(r.outputs["state"], "healthy", "{r:?}");
    let services: serde_json::Value = serde_json::from_str(&r.outputs["services"]).unwrap();
    let services = services.as_array().unwrap();
    assert_eq!(services.len(), 2);
    for s in services {
        let name = s["service"].as_str().unwrap();
        let want = if name == "api" {
            images.api(v2)
        } else {
            images.web(v2)
        };
        assert_eq!(s["digest"], want.digest(), "{s}");
        assert_eq!(s["health"], "healthy", "{s}");
        assert_eq!(s["state"], "running", "{s}");
    }

    // Rollback: to the kept previous release (1), and the rollback copy becomes 2, so a
    // second rollback goes back to 2.
    for (v, lock) in [(v1, &lock1), (v2, &lock2)] {
        let r = run(
            &exec,
            &images,
            &project,
            TaskPayload::ComposeRollback(ComposeRollbackSpec {
                project: project.clone(),
            }),
        )
        .await;
        assert!(r.success, "{r:?}");
        let want = vec![v.as_str().to_string()];
        assert_eq!(both(&project), (want.clone(), want));
        assert_eq!(
            &std::fs::read_to_string(dir.join("compose.lock.yml")).unwrap(),
            lock
        );
    }

    // No credentials on disk afterwards, in the project or in a left-over DOCKER_CONFIG.
    for (name, bytes) in snapshot(&dir) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(PASSWORD),
            "{name}"
        );
    }
    let tmp_leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("wharf-compose-auth-")
        })
        .collect();
    assert!(tmp_leftovers.is_empty(), "{tmp_leftovers:?}");
}
