//! The `wharf-testbed` binary: `registry up`, `images build --push`, exit codes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use wharf_testbed::{http, PinnedRef};

use crate::{lines_of, stderr_of, wait_exit, wait_for_line, KillOnDrop, RemoveImages};

const BIN: &str = env!("CARGO_BIN_EXE_wharf-testbed");

fn testbed(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    cmd
}

#[test]
fn registry_up_then_build_and_push_then_sigterm() {
    let mut child = testbed(&[
        "registry",
        "up",
        "--auth",
        "wharf:s3cret",
        "--output",
        "json",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let mut up = KillOnDrop(child);
    let first = wait_for_line(&lines, "\"addr\"", Duration::from_secs(30));
    let info: Value = serde_json::from_str(first.last().unwrap()).unwrap();
    let addr = info["addr"].as_str().unwrap().to_string();
    let dir = PathBuf::from(info["dir"].as_str().unwrap());
    assert_eq!(info["auth"], true);
    assert_eq!(info["username"], "wharf");
    assert!(dir.is_dir());
    assert_eq!(http::get(&addr, "/v2/").unwrap().status, 401);

    // Build and push, password on stdin; JSON output.
    let mut push = testbed(&[
        "images",
        "build",
        "--push",
        "--registry",
        &addr,
        "--username",
        "wharf",
        "--password-stdin",
        "--output",
        "json",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    push.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let mut cleanup = Vec::new();
    let versions: Vec<&str> = rows
        .iter()
        .map(|r| r["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["v1", "v2", "broken"]);
    for row in rows {
        let version = row["version"].as_str().unwrap();
        let pinned = PinnedRef::parse(row["pinned"].as_str().unwrap()).unwrap();
        assert_eq!(pinned.repository(), format!("{addr}/wharf/testapp"));
        assert_eq!(row["tag"], format!("wharf/testapp:{version}"));
        cleanup.push(format!("{addr}/wharf/testapp:{version}"));
        cleanup.push(pinned.to_string());
    }
    let _cleanup = RemoveImages(cleanup);

    // Text output, another repository: `VERSION HOST/REPO@sha256:...` lines.
    let mut push = testbed(&[
        "images",
        "build",
        "--push",
        "--registry",
        &addr,
        "--username",
        "wharf",
        "--password-stdin",
        "--repo",
        "it/cli",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    push.stdin.take().unwrap().write_all(b"s3cret").unwrap();
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut cleanup = Vec::new();
    for (line, version) in text.lines().zip(["v1", "v2", "broken"]) {
        let (v, reference) = line.split_once(' ').unwrap();
        assert_eq!(v, version);
        let pinned = PinnedRef::parse(reference).unwrap();
        assert_eq!(pinned.repository(), format!("{addr}/it/cli"));
        cleanup.push(format!("{addr}/it/cli:{version}"));
        cleanup.push(format!("it/cli:{version}"));
        cleanup.push(pinned.to_string());
    }
    assert_eq!(text.lines().count(), 3, "{text}");
    let _cleanup_text = RemoveImages(cleanup);

    // A wrong password fails (exit 1, not 2: the input was well-formed).
    let mut push = testbed(&[
        "images",
        "build",
        "--push",
        "--registry",
        &addr,
        "--username",
        "wharf",
        "--password-stdin",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    push.stdin.take().unwrap().write_all(b"wrong\n").unwrap();
    let out = push.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("docker login"));

    // SIGTERM: clean exit, storage removed, port closed.
    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = wait_exit(&mut up.0, Duration::from_secs(30));
    let stderr = stderr_of(&mut up.0);
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("stopping the registry"), "{stderr}");
    assert!(!dir.exists(), "registry storage left behind");
    let gone = http::get(&addr, "/v2/").unwrap_err();
    assert!(http::is_not_listening(&gone), "{gone:#}");
}

#[test]
fn invalid_input_exits_2() {
    for args in [
        &["registry", "up", "--auth", "nocolon"][..],
        &["registry", "up", "--auth", ":pass"],
        &["images", "build", "--push"],
        &["images", "build", "--registry", "127.0.0.1:1"],
        &[
            "images",
            "build",
            "--username",
            "u",
            "--push",
            "--registry",
            "127.0.0.1:1",
        ],
        &["images", "build", "--push", "--registry", "nohost"],
        &["images", "build", "--repo", "Not/Valid"],
        &["images", "build", "--output", "yaml"],
        &["images", "frobnicate"],
    ] {
        let out = testbed(args).stdin(Stdio::null()).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    // An empty password on stdin.
    let out = testbed(&[
        "images",
        "build",
        "--push",
        "--registry",
        "127.0.0.1:1",
        "--username",
        "u",
        "--password-stdin",
    ])
    .stdin(Stdio::null())
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}
