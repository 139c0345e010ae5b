//! Host-command hooks with real programs (`/bin/sh`).

use std::time::Duration;

use wharf_hooks::{HookError, HookRequest, HookRunner, Hooks};
use wharf_protocol::{DurationMs, HookSpec};

use super::input;

async fn hooks(allow: bool) -> Hooks {
    let docker = bollard::Docker::connect_with_defaults().expect("docker client");
    Hooks::new(docker, allow)
}

fn sh(script: &str) -> HookSpec {
    let mut spec = HookSpec::host_command(vec!["/bin/sh".into(), "-c".into(), script.into()]);
    spec.timeout = DurationMs::from_secs(20);
    spec
}

async fn run(hooks: &Hooks, spec: &HookSpec) -> Result<wharf_hooks::HookReport, HookError> {
    let input = input("hosthook");
    hooks
        .run(HookRequest {
            spec,
            input: &input,
            credentials: None,
        })
        .await
}

#[tokio::test]
async fn host_hooks_are_refused_without_the_flag() {
    let hooks = hooks(false).await;
    let dir = tempfile_dir();
    let marker = dir.join("ran");
    let spec = sh(&format!(
        "touch {}; echo '{{\"ok\":true}}'",
        marker.display()
    ));
    let err = hooks.check(&spec).unwrap_err();
    assert!(matches!(err, HookError::HostHooksDisabled { .. }), "{err}");
    assert!(err.to_string().contains("--allow-host-hooks"), "{err}");
    let err = run(&hooks, &spec).await.unwrap_err();
    assert!(matches!(err, HookError::HostHooksDisabled { .. }), "{err}");
    assert!(!marker.exists(), "the refused hook ran");
    assert!(!hooks.allows_host_hooks());
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("wharf-hooks-{}", wharf_testbed::unique_suffix()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn host_hooks_run_the_contract_with_the_flag() {
    let hooks = hooks(true).await;
    assert!(hooks.allows_host_hooks());
    // The input arrives on stdin; the environment is clean but for the hook's own.
    let mut spec = sh(
        r#"read -r line; case "$line" in *'"phase":"pre-deploy"'*) ;; *) exit 9;; esac;
           echo "seen $HOOK_NAME" >&2;
           printf '{"ok":true,"message":"checked","outputs":{"home":"%s","name":"%s"}}\n' "$HOME" "$HOOK_NAME""#,
    );
    spec.env.insert("HOOK_NAME".into(), "migrate".into());
    let report = run(&hooks, &spec).await.expect("host hook");
    assert_eq!(report.message, "checked");
    assert_eq!(report.outputs["name"], "migrate");
    assert_eq!(report.outputs["home"], "", "the agent's environment leaked");
    assert!(
        report.logs.iter().any(|l| l == "seen migrate"),
        "{:?}",
        report.logs
    );

    let err = run(
        &hooks,
        &sh(r#"echo '{"ok":false,"message":"no"}'; echo bad >&2"#),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("no") && err.to_string().contains("bad"),
        "{err}"
    );

    let err = run(&hooks, &sh("echo garbage")).await.unwrap_err();
    assert!(matches!(err, HookError::BadOutput { .. }), "{err}");

    let err = run(&hooks, &sh("head -c 2000000 /dev/zero | tr '\\0' x"))
        .await
        .unwrap_err();
    assert!(matches!(err, HookError::OutputTooLarge { .. }), "{err}");

    let mut hang = sh("echo waiting >&2; exec sleep 600");
    hang.timeout = DurationMs::from_secs(1);
    let began = std::time::Instant::now();
    let err = run(&hooks, &hang).await.unwrap_err();
    assert!(matches!(err, HookError::TimedOut { .. }), "{err}");
    assert!(began.elapsed() < Duration::from_secs(10));
    assert!(err.to_string().contains("waiting"), "{err}");

    let err = run(
        &hooks,
        &HookSpec::host_command(vec!["/nonexistent/hook".into()]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, HookError::Spawn { .. }), "{err}");
}
