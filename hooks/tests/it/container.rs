//! Container hooks on the real engine, with the test hook image of the testbed.

use std::process::Command;
use std::time::Duration;

use wharf_hooks::{HookError, HookRequest, HookRunner, Hooks};
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{DurationMs, HookSpec};
use wharf_testbed::{Testbed, TestbedOptions};

use super::input;

async fn testbed() -> Testbed {
    tokio::task::spawn_blocking(|| {
        Testbed::start(TestbedOptions::default().with_auth("hooker", "hook-s3cret"))
    })
    .await
    .expect("testbed thread")
    .expect("testbed")
}

async fn docker() -> bollard::Docker {
    bollard::Docker::connect_with_defaults()
        .expect("docker client")
        .negotiate_version()
        .await
        .expect("docker engine")
}

fn credentials(bed: &Testbed) -> RegistryCredentials {
    let c = bed.credentials().expect("auth testbed");
    RegistryCredentials {
        registry: bed.registry().host(),
        username: c.username.clone(),
        password: c.password.clone(),
    }
}

/// Hook containers of `target`, running or not.
fn hook_containers(target: &str) -> Vec<String> {
    wharf_testbed::docker::hook_containers(target).expect("docker ps")
}

/// Removes any hook container of the target left behind, even if the test fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in hook_containers(&self.0) {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
    }
}

fn hook(bed: &Testbed, args: &[&str]) -> HookSpec {
    let mut spec = HookSpec::image(bed.hook_image().to_string());
    spec.args = args.iter().map(|a| (*a).to_owned()).collect();
    spec.timeout = DurationMs::from_secs(30);
    spec
}

async fn run(
    hooks: &Hooks,
    spec: &HookSpec,
    target: &str,
    creds: Option<&RegistryCredentials>,
) -> Result<wharf_hooks::HookReport, HookError> {
    let input = input(target);
    hooks
        .run(HookRequest {
            spec,
            input: &input,
            credentials: creds,
        })
        .await
}

#[tokio::test]
async fn a_passing_hook_gets_the_input_and_is_removed() {
    let bed = testbed().await;
    let target = format!("hookpass{}", wharf_testbed::unique_suffix());
    let _cleanup = Cleanup(target.clone());
    let hooks = Hooks::new(docker().await, false);
    let creds = credentials(&bed);
    // Without the registry's credentials (and no verified local copy) the pull is refused.
    bed.remove_local_images().expect("remove local refs");
    let err = run(&hooks, &hook(&bed, &["pass"]), &target, None)
        .await
        .expect_err("pull without credentials");
    assert!(matches!(err, HookError::RegistryAuth { .. }), "{err}");
    assert!(!err.to_string().contains("hook-s3cret"));

    let report = run(&hooks, &hook(&bed, &["pass"]), &target, Some(&creds))
        .await
        .expect("passing hook");
    let want = input(&target);
    assert_eq!(report.outputs["phase"], "pre-deploy");
    assert_eq!(report.outputs["target"], target);
    assert_eq!(report.outputs["digest"], want.digest);
    assert_eq!(report.outputs["previous"], want.previous.unwrap());
    assert_eq!(report.message, "testhook pass ran");
    assert!(report.duration > Duration::ZERO);
    assert!(
        report
            .logs
            .iter()
            .any(|l| l.contains("testhook: mode pass")),
        "{:?}",
        report.logs
    );
    assert!(hook_containers(&target).is_empty(), "hook container left");
}

#[tokio::test]
async fn failing_hooks_carry_their_message_and_last_lines() {
    let bed = testbed().await;
    let target = format!("hookfail{}", wharf_testbed::unique_suffix());
    let _cleanup = Cleanup(target.clone());
    let hooks = Hooks::new(docker().await, false);
    let creds = credentials(&bed);

    let mut fail = hook(&bed, &["fail"]);
    fail.env
        .insert("TESTHOOK_MESSAGE".into(), "schema v7 not applied".into());
    let err = run(&hooks, &fail, &target, Some(&creds)).await.unwrap_err();
    assert!(matches!(err, HookError::Failed { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("schema v7 not applied"), "{text}");
    assert!(text.contains("failing on purpose"), "{text}");
    assert_eq!(err.error_type(), wharf_protocol::ErrorType::HookFailed);

    let err = run(&hooks, &hook(&bed, &["exit", "4"]), &target, Some(&creds))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            HookError::Failed {
                exit_code: Some(4),
                ..
            }
        ),
        "{err}"
    );

    let err = run(&hooks, &hook(&bed, &["garbage"]), &target, Some(&creds))
        .await
        .unwrap_err();
    assert!(matches!(err, HookError::BadOutput { .. }), "{err}");
    assert!(err.to_string().contains("this is not JSON"), "{err}");

    let err = run(&hooks, &hook(&bed, &["flood"]), &target, Some(&creds))
        .await
        .unwrap_err();
    assert!(matches!(err, HookError::OutputTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("output over 1 MiB"), "{err}");

    assert!(hook_containers(&target).is_empty(), "hook containers left");
}

#[tokio::test]
async fn a_hanging_hook_runs_sandboxed_is_killed_at_its_timeout_and_removed() {
    let bed = testbed().await;
    let target = format!("hookhang{}", wharf_testbed::unique_suffix());
    let _cleanup = Cleanup(target.clone());
    let docker = docker().await;
    let hooks = Hooks::new(docker.clone(), false);
    let creds = credentials(&bed);
    // Pull first so that the timeout measures the hook alone.
    run(&hooks, &hook(&bed, &["pass"]), &target, Some(&creds))
        .await
        .expect("warm-up");
    let mut hang = hook(&bed, &["hang"]);
    hang.timeout = DurationMs::from_secs(6);
    let began = std::time::Instant::now();
    let running = run(&hooks, &hang, &target, Some(&creds));
    tokio::pin!(running);
    // While it hangs: read the container's sandbox back from the engine.
    let host_config = tokio::select! {
        r = &mut running => panic!("the hanging hook ended before it was inspected: {r:?}"),
        c = hook_host_config(&docker, &target) => c,
    };
    assert_eq!(host_config.network_mode.as_deref(), Some("none"));
    assert_eq!(host_config.readonly_rootfs, Some(true));
    assert_eq!(host_config.memory, Some(256 << 20));
    assert_eq!(host_config.memory_swap, Some(256 << 20));
    assert_eq!(host_config.nano_cpus, Some(1_000_000_000));
    assert_eq!(host_config.pids_limit, Some(128));
    assert!(
        host_config
            .cap_drop
            .as_ref()
            .is_some_and(|c| c.iter().any(|x| x == "ALL")),
        "{:?}",
        host_config.cap_drop
    );
    assert!(
        host_config
            .security_opt
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x.starts_with("no-new-privileges"))),
        "{:?}",
        host_config.security_opt
    );
    assert!(host_config.binds.unwrap_or_default().is_empty());
    assert!(host_config.mounts.unwrap_or_default().is_empty());
    assert!(host_config.devices.unwrap_or_default().is_empty());
    assert_ne!(host_config.privileged, Some(true));
    assert!(host_config.cap_add.unwrap_or_default().is_empty());

    let err = running.await.unwrap_err();
    let took = began.elapsed();
    assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
    assert!(err.to_string().contains("mode hang"), "{err}");
    assert!(
        took >= Duration::from_secs(6) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert!(hook_containers(&target).is_empty(), "hung hook not removed");
}

/// Waits (up to 30 s) for the hook container of `target` to run and returns its
/// `HostConfig` as the engine reports it.
async fn hook_host_config(docker: &bollard::Docker, target: &str) -> bollard::models::HostConfig {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(id) = hook_containers(target).first() {
            let info = docker
                .inspect_container(
                    id,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
                .expect("inspect the hook container");
            if info.state.and_then(|s| s.running) == Some(true) {
                return info.host_config.expect("HostConfig");
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no running hook container for {target}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn hook_containers_left_by_a_killed_agent_are_removed_by_the_next_run() {
    let bed = testbed().await;
    let target = format!("hookstray{}", wharf_testbed::unique_suffix());
    let _cleanup = Cleanup(target.clone());
    let hooks = Hooks::new(docker().await, false);
    let creds = credentials(&bed);
    run(&hooks, &hook(&bed, &["pass"]), &target, Some(&creds))
        .await
        .expect("warm-up");
    // What a kill -9 during a hook leaves: a labelled hook container nobody removes.
    let out = Command::new("docker")
        .args(["create", "--label", "wharf.hook=true", "--label"])
        .arg(format!("wharf.hook.target={target}"))
        .arg(bed.hook_image().to_string())
        .arg("hang")
        .output()
        .expect("docker create");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(hook_containers(&target).len(), 1);
    run(&hooks, &hook(&bed, &["pass"]), &target, Some(&creds))
        .await
        .expect("the next hook");
    assert!(hook_containers(&target).is_empty(), "the stray is left");
}

/// The address of this host on Docker's default bridge (where a container with a
/// network reaches a listener bound to all addresses): docker0's IPv4 address.
fn bridge_gateway() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    let cidr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .expect("docker0 has an IPv4 address");
    cidr.split('/').next().unwrap_or(cidr).to_owned()
}

#[tokio::test]
async fn the_sandbox_has_no_network_and_a_read_only_root() {
    let bed = testbed().await;
    let target = format!("hookbox{}", wharf_testbed::unique_suffix());
    let _cleanup = Cleanup(target.clone());
    let hooks = Hooks::new(docker().await, false);
    let creds = credentials(&bed);
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
    let addr = format!(
        "{}:{}",
        bridge_gateway(),
        listener.local_addr().unwrap().port()
    );

    // Control: the same program in an ordinary container reaches the listener, so a
    // failure inside the sandbox is the sandbox's doing.
    let pinned = bed.hook_image().to_string();
    let control = Command::new("docker")
        .args(["run", "--rm", "-i", &pinned, "net", &addr])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("docker run");
    let control = String::from_utf8_lossy(&control.stdout);
    assert!(control.contains("\"network\":\"connected\""), "{control}");

    let report = run(&hooks, &hook(&bed, &["net", &addr]), &target, Some(&creds))
        .await
        .expect("net hook answers");
    assert!(
        report.outputs["network"].starts_with("failed"),
        "{:?}",
        report.outputs
    );

    let report = run(&hooks, &hook(&bed, &["write-root"]), &target, Some(&creds))
        .await
        .expect("write-root hook answers");
    let write = &report.outputs["root_write"];
    assert!(write.contains("Read-only file system"), "{write}");

    assert!(hook_containers(&target).is_empty());
}

#[tokio::test]
async fn an_unpinned_hook_image_is_refused_before_anything_runs() {
    let hooks = Hooks::new(docker().await, false);
    let spec = HookSpec::image("wharf/testhook:latest");
    let err = hooks.check(&spec).unwrap_err();
    assert!(matches!(err, HookError::InvalidSpec(_)), "{err}");
    assert!(err.to_string().contains("IMAGE@sha256:DIGEST"), "{err}");
}
