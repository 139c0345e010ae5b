//! The registry, pushes and pulls by digest through the Docker engine, and the
//! images run as containers.

use std::collections::HashSet;
use std::time::Duration;

use wharf_testbed::docker::{self, Container, RunOptions};
use wharf_testbed::http;

use crate::RemoveImages;
use wharf_testbed::images::{self, BuildOptions, TestVersion, APP_PORT};
use wharf_testbed::{
    Credentials, PinnedRef, Registry, RegistryClient, RegistryOptions, Testbed, TestbedOptions,
};

/// Health states come after ~1 s (healthy) and ~5 s (unhealthy); leave room
/// for a loaded machine.
const HEALTH_DEADLINE: Duration = Duration::from_secs(45);

#[test]
fn private_registry_push_pull_by_digest_and_run() {
    let bed =
        Testbed::start(TestbedOptions::default().with_auth("wharf", "pa55:w0rd")).expect("testbed");
    let registry = bed.registry();
    let host = registry.host();

    // Auth is enforced by the registry itself.
    let anonymous = http::get(&host, "/v2/").unwrap();
    assert_eq!(anonymous.status, 401);
    assert_eq!(registry.client().ping().unwrap(), 200);
    let wrong = RegistryClient::new(host.clone(), Some(Credentials::new("wharf", "nope")));
    assert!(
        wrong.is_err(),
        "docker login with a wrong password succeeded"
    );

    // Three distinct images, each pinned in this registry, and the registry
    // serves the same digest by tag and by digest.
    let refs: Vec<PinnedRef> = bed.images().map(|(_, r)| r.clone()).collect();
    let digests: HashSet<&str> = refs.iter().map(PinnedRef::digest).collect();
    assert_eq!(digests.len(), 3, "{refs:?}");
    for (version, pinned) in bed.images() {
        let image_ref = wharf_protocol::ImageRef::parse(&pinned.to_string()).unwrap();
        assert_eq!(image_ref.pinned(), pinned.to_string());
        assert_eq!(image_ref.registry(), Some(host.as_str()));
        assert_eq!(pinned.registry_host(), Some(host.as_str()));
        assert_eq!(pinned.path(), "wharf/testapp");
        assert_eq!(
            registry
                .manifest_digest("wharf/testapp", version.as_str())
                .unwrap(),
            pinned.digest()
        );
        assert_eq!(
            registry
                .manifest_digest("wharf/testapp", pinned.digest())
                .unwrap(),
            pinned.digest()
        );
    }

    // Forget the pushed tags and pinned references locally...
    bed.remove_local_images().unwrap();
    for pinned in &refs {
        assert!(docker::inspect_image(&pinned.to_string())
            .unwrap()
            .is_none());
    }
    // ...then pull by digest: refused without credentials,
    let anonymous = RegistryClient::new(host.clone(), None).unwrap();
    let refused = anonymous.pull(&refs[0].to_string()).unwrap_err();
    let message = format!("{refused:#}");
    assert!(
        message.contains("no basic auth credentials") || message.contains("unauthorized"),
        "{message}"
    );
    assert!(docker::inspect_image(&refs[0].to_string())
        .unwrap()
        .is_none());
    // and accepted with them; the image then carries exactly that repo digest.
    for pinned in &refs {
        registry.client().pull(&pinned.to_string()).unwrap();
        let repo_digests = docker::repo_digests(&pinned.to_string()).unwrap();
        assert!(
            repo_digests.contains(&pinned.to_string()),
            "{pinned} not in {repo_digests:?}"
        );
    }

    // Run v1, broken, and v1 told to crash (guards remove them, even on panic).
    let v1 = Container::run(
        "wharf-it-v1",
        &bed.image(TestVersion::V1).to_string(),
        &RunOptions::default().publish(APP_PORT),
    )
    .unwrap();
    let broken = Container::run(
        "wharf-it-broken",
        &bed.image(TestVersion::Broken).to_string(),
        &RunOptions::default().publish(APP_PORT),
    )
    .unwrap();
    let crashing = Container::run(
        "wharf-it-crash",
        &bed.image(TestVersion::V1).to_string(),
        &RunOptions::default().env("TESTAPP_CRASH_AT_START", "1"),
    )
    .unwrap();

    assert_eq!(crashing.wait_exit(HEALTH_DEADLINE).unwrap(), 1);
    assert!(crashing.logs().unwrap().contains("crashing at start"));

    v1.wait_health("healthy", HEALTH_DEADLINE).unwrap();
    let v1_addr = format!("127.0.0.1:{}", v1.host_port(APP_PORT).unwrap());
    assert_eq!(http::get(&v1_addr, "/version").unwrap().text(), "v1\n");
    let info = v1.inspect().unwrap();
    assert_eq!(
        info["Config"]["Image"].as_str(),
        Some(bed.image(TestVersion::V1).to_string().as_str())
    );
    assert_eq!(
        info["Config"]["Labels"]["org.opencontainers.image.version"].as_str(),
        Some("v1")
    );

    broken.wait_health("unhealthy", HEALTH_DEADLINE).unwrap();
    let broken_addr = format!("127.0.0.1:{}", broken.host_port(APP_PORT).unwrap());
    assert_eq!(
        http::get(&broken_addr, "/version").unwrap().text(),
        "broken\n"
    );
    assert_eq!(http::get(&broken_addr, "/healthz").unwrap().status, 500);
    assert_eq!(broken.status().unwrap(), "running");

    // Request lines land in the container logs.
    let logs = v1.logs().unwrap();
    assert!(logs.contains("\"GET /version\" 200"), "{logs}");
    assert!(logs.contains("\"GET /healthz\" 200"), "{logs}");

    // The app is PID 1 without an init: it must honour SIGTERM itself, so
    // `docker stop` ends it with its own exit code 0, not the SIGKILL (137) sent
    // when the grace period runs out.
    docker::run(docker::command(None).args(["stop", "--time", "30", v1.name()])).unwrap();
    assert_eq!(v1.wait_exit(HEALTH_DEADLINE).unwrap(), 0);

    let names: Vec<String> = [&v1, &broken, &crashing]
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    drop((v1, broken, crashing));
    for name in names {
        assert!(
            docker::inspect_container(&name).unwrap().is_none(),
            "{name} left behind"
        );
    }
}

#[test]
fn open_registry_push_and_cleanup_on_drop() {
    let built = images::build_image(TestVersion::V2, &BuildOptions::default()).unwrap();
    let registry = Registry::start(RegistryOptions::new()).unwrap();
    assert_eq!(http::get(&registry.host(), "/v2/").unwrap().status, 200);
    let pinned = registry.push(&built.tag, "it/open").unwrap();
    let pushed_tag = format!("{}/it/open:v2", registry.host());
    let _cleanup = RemoveImages(vec![pushed_tag, pinned.to_string()]);
    assert!(pinned
        .to_string()
        .starts_with(&format!("{}/it/open@sha256:", registry.host())));
    assert_eq!(
        registry.manifest_digest("it/open", "v2").unwrap(),
        pinned.digest()
    );
    // Pushed the same content again: the same digest.
    assert_eq!(registry.push(&built.tag, "it/open").unwrap(), pinned);
    let repo_digests = docker::repo_digests(&built.tag).unwrap();
    assert!(
        repo_digests.contains(&pinned.to_string()),
        "{repo_digests:?}"
    );
    // A bad repository name is refused before anything is pushed.
    assert!(registry.push(&built.tag, "It/Open").is_err());
    registry.check_running().unwrap();

    let dir = registry.dir().to_path_buf();
    assert!(dir
        .join("storage/docker/registry/v2/repositories/it/open")
        .is_dir());
    let host = registry.host();
    drop(registry);
    assert!(!dir.exists(), "registry storage left behind");
    let gone = http::get(&host, "/v2/").unwrap_err();
    assert!(http::is_not_listening(&gone), "{gone:#}");
}
