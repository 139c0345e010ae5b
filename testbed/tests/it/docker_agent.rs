//! End to end through the real programs: `wharf-core serve`, `wharf-agent-docker` and the
//! `wharf` CLI, against the real Docker engine and a private registry (htpasswd).
//!
//! - the story (over QUIC, and again with `--transport poll`): deploy v1, v2 (swap), `broken` (restored: v2 answers again,
//!   `rolled_back=true` with the failed container's log lines), `rollback` to v1;
//!   over QUIC, v2 goes through passing `--pre-hook`/`--post-hook` images (their outputs
//!   in `wharf task show`), then a failing pre-deploy hook leaves v2 untouched and a failing
//!   post-deploy hook brings the very v2 container back (`rolled_back=true`, exit 1);
//!   `inspect` and `sticker read` agree with what runs; a digest absent from the registry
//!   fails with nothing changed; a tag-only reference is refused by the CLI with exit 2
//!   and nothing queued; the registry password is in no file and no log;
//! - kill -9 of the agent at every journaled step of a deploy and of its restore path:
//!   after a restart exactly one `<name>` runs, healthy and answering, at most one
//!   `<name>-previous` is kept, and the reported result matches what runs.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testbed::cluster::{Binaries, Core, DockerAgent};
use wharf_testbed::docker;
use wharf_testbed::images::APP_PORT;
use wharf_testbed::{http, TestVersion, Testbed, TestbedOptions};

/// Removes the named containers when dropped (also when a test fails).
pub(crate) struct RemoveContainers(pub(crate) Vec<String>);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let _ = docker::output(docker::command(None).args(["rm", "-f"]).args(&self.0));
    }
}

/// A core, an enrolled Docker agent, a private registry with the test images (not
/// present locally, so every deploy pulls), and the registry credentials stored in core.
struct Fleet {
    agent: DockerAgent,
    core: Core,
    bed: Testbed,
    password: String,
    _dir: tempfile::TempDir,
}

impl Fleet {
    fn start(name: &str, agent_env: &[(&str, &str)]) -> Fleet {
        let suffix = wharf_testbed::unique_suffix();
        let password = format!("pw-{suffix}-Zq8");
        let bed = Testbed::start(
            TestbedOptions::default()
                .with_auth("deployer", password.clone())
                .with_repo(format!("wharf-e2e/{name}-{suffix}")),
        )
        .expect("testbed");
        bed.remove_local_images().expect("remove local images");
        let binaries = Binaries::get().expect("wharf programs");
        let dir = tempfile::tempdir().unwrap();
        let core = Core::start(&binaries, &dir.path().join("core")).expect("core");
        core.registry_login(&bed.registry().host(), "deployer", &password)
            .expect("registry login");
        let agent = DockerAgent::enroll_and_start_with_env(
            &core,
            &format!("{name}-{suffix}"),
            &dir.path().join("agent"),
            agent_env,
        )
        .expect("agent");
        Fleet {
            agent,
            core,
            bed,
            password,
            _dir: dir,
        }
    }

    fn image(&self, v: TestVersion) -> String {
        self.bed.image(v).to_string()
    }

    fn digest(&self, v: TestVersion) -> String {
        self.bed.image(v).digest().to_string()
    }

    /// `wharf ARGS --output json`: exit code and the JSON document.
    fn wharf_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        wharf_json(&self.core, args)
    }

    fn deploy(
        &self,
        target: &str,
        port: u16,
        v: TestVersion,
        extra: &[&str],
    ) -> (Option<i32>, Value) {
        deploy_on(
            &self.core,
            &self.agent.name,
            target,
            &self.image(v),
            port,
            extra,
        )
    }

    fn raw(&self, args: &[&str]) -> Output {
        self.core.wharf(args).unwrap()
    }
}

/// `wharf deploy --agent AGENT --target T --image IMAGE --port 127.0.0.1:PORT:APP
/// --health-timeout 30s --wait EXTRA... --output json` on `core`.
pub(crate) fn deploy_on(
    core: &Core,
    agent: &str,
    target: &str,
    image: &str,
    port: u16,
    extra: &[&str],
) -> (Option<i32>, Value) {
    let publish = format!("127.0.0.1:{port}:{APP_PORT}");
    let mut args = vec![
        "deploy",
        "--agent",
        agent,
        "--target",
        target,
        "--image",
        image,
        "--port",
        &publish,
        "--health-timeout",
        "30s",
        "--wait",
    ];
    args.extend_from_slice(extra);
    wharf_json(core, &args)
}

/// `wharf ARGS --output json` on `core`: exit code and the JSON document.
pub(crate) fn wharf_json(core: &Core, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = core.wharf(&all).unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "`wharf {}` printed no JSON ({e}): {}{}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// What Docker shows for `name`: (running, the `wharf.digest` label, the image id).
fn container(name: &str) -> Option<(bool, String, String)> {
    let c = docker::inspect_container(name).unwrap()?;
    Some((
        c["State"]["Running"] == true,
        c["Config"]["Labels"]["wharf.digest"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        c["Id"].as_str().unwrap_or_default().to_string(),
    ))
}

/// `GET /version` on the published port.
pub(crate) fn version_on(port: u16) -> Option<String> {
    http::get(&format!("127.0.0.1:{port}"), "/version")
        .ok()
        .filter(|r| r.status == 200)
        .map(|r| r.text().trim().to_string())
}

fn result<'a>(task: &'a Value, field: &str) -> &'a Value {
    &task["result"][field]
}

#[test]
fn deploy_swap_broken_restored_rollback_inspect_sticker_and_no_secret_anywhere() {
    // The binary's default transport is `auto`: QUIC, which connects here.
    story("story", &[], "quic", true);
}

/// The same story with `--transport poll` (HTTPS long polling, no UDP at all).
#[test]
fn the_story_over_https_polling() {
    story("story-poll", &[("WHARF_TRANSPORT", "poll")], "poll", false);
}

/// The story with an agent started with `agent_env`, whose session must use `transport`;
/// `hooks`: with the hook chapter.
fn story(name: &str, agent_env: &[(&str, &str)], transport: &str, hooks: bool) {
    let mut fleet = Fleet::start(name, agent_env);
    let failing_hook = hooks.then(|| {
        fleet
            .bed
            .hook_image_in_mode("fail")
            .expect("failing hook image")
            .to_string()
    });
    let hook = fleet.bed.hook_image().to_string();
    let entry = fleet
        .core
        .agent_entry(&fleet.agent.name)
        .unwrap()
        .expect("the agent is listed");
    assert_eq!(entry["transport"], transport, "{entry}");
    let target = format!("e2e-web-{}", wharf_testbed::unique_suffix());
    let previous = format!("{target}-previous");
    let _cleanup = RemoveContainers(vec![target.clone(), previous.clone()]);
    let port = wharf_testbed::free_port().unwrap();

    // v1: pulled with the sealed credentials, running, labelled with its digest.
    let (code, t1) = fleet.deploy(&target, port, TestVersion::V1, &["--release", "web@1.0.0"]);
    assert_eq!(code, Some(0), "{t1}");
    assert_eq!(t1["state"], "succeeded", "{t1}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let (running, digest, _) = container(&target).expect("target exists");
    assert!(running);
    assert_eq!(digest, fleet.digest(TestVersion::V1));
    assert!(
        container(&previous).is_none(),
        "no previous after the first deploy"
    );

    // v2: a swap; v1 kept as the previous container (with the hook chapter: through a
    // passing pre- and post-deploy hook).
    let mut v2_args = vec!["--release", "web@2.0.0"];
    if hooks {
        v2_args.extend(["--pre-hook", &hook, "--post-hook", &hook]);
    }
    let (code, t2) = fleet.deploy(&target, port, TestVersion::V2, &v2_args);
    assert_eq!(code, Some(0), "{t2}");
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let (_, prev_digest, _) = container(&previous).expect("v1 kept as previous");
    assert_eq!(prev_digest, fleet.digest(TestVersion::V1));
    let (_, _, v2_id) = container(&target).unwrap();
    if let Some(failing_hook) = &failing_hook {
        hook_chapter(&fleet, &t2, &target, port, &v2_id, failing_hook);
    }

    // broken: fails its health check; v2 restored and answering; the failed container's
    // log lines are in the result.
    let (code, t3) = fleet.deploy(
        &target,
        port,
        TestVersion::Broken,
        &["--release", "web@3.0.0"],
    );
    assert_eq!(code, Some(1), "{t3}");
    assert_eq!(t3["state"], "failed", "{t3}");
    assert_eq!(*result(&t3, "success"), false);
    assert_eq!(*result(&t3, "rolled_back"), true, "{t3}");
    assert!(
        result(&t3, "logs")
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "the failed container's log lines: {t3}"
    );
    assert_eq!(version_on(port).as_deref(), Some("v2"));
    let (running, digest, id) = container(&target).unwrap();
    assert!(running);
    assert_eq!(digest, fleet.digest(TestVersion::V2));
    assert_eq!(id, v2_id, "the very v2 container is back");

    // rollback: back to v1 (the kept previous, or the sticker's previous digest).
    let (code, t4) = fleet.wharf_json(&[
        "rollback",
        "--agent",
        &fleet.agent.name,
        "--target",
        &target,
        "--wait",
    ]);
    assert_eq!(code, Some(0), "{t4}");
    assert_eq!(version_on(port).as_deref(), Some("v1"));
    let (running, digest, _) = container(&target).unwrap();
    assert!(running);
    assert_eq!(digest, fleet.digest(TestVersion::V1));

    // inspect and sticker read agree with what runs.
    let (code, inspect) =
        fleet.wharf_json(&["inspect", "--agent", &fleet.agent.name, "--target", &target]);
    assert_eq!(code, Some(0), "{inspect}");
    let outputs = result(&inspect, "outputs").to_string();
    assert!(
        outputs.contains(&fleet.digest(TestVersion::V1)),
        "{inspect}"
    );
    let (code, sticker) = fleet.wharf_json(&[
        "sticker",
        "read",
        "--agent",
        &fleet.agent.name,
        "--target",
        &target,
    ]);
    assert_eq!(code, Some(0), "{sticker}");
    let sticker_text = result(&sticker, "outputs").to_string();
    assert!(
        sticker_text.contains(&fleet.digest(TestVersion::V1)),
        "the sticker names the running digest: {sticker}"
    );

    // A digest absent from the registry: failed, nothing changed.
    let (_, _, before) = container(&target).unwrap();
    let absent = format!(
        "{}@sha256:{}",
        fleet.bed.image(TestVersion::V1).repository(),
        "0123456789abcdef".repeat(4)
    );
    let publish = format!("127.0.0.1:{port}:{APP_PORT}");
    let (code, t5) = fleet.wharf_json(&[
        "deploy",
        "--agent",
        &fleet.agent.name,
        "--target",
        &target,
        "--image",
        &absent,
        "--port",
        &publish,
        "--wait",
    ]);
    assert_eq!(code, Some(1), "{t5}");
    assert_eq!(*result(&t5, "rolled_back"), false, "{t5}");
    let (running, _, after) = container(&target).unwrap();
    assert!(running);
    assert_eq!(before, after, "an absent digest changed the target");
    assert_eq!(version_on(port).as_deref(), Some("v1"));

    // A tag-only reference: refused by the CLI with exit 2, nothing queued.
    let (_, tasks_before) = fleet.wharf_json(&["task", "list"]);
    let tagged = format!("{}:v1", fleet.bed.image(TestVersion::V1).repository());
    let out = fleet.raw(&[
        "deploy",
        "--agent",
        &fleet.agent.name,
        "--target",
        &target,
        "--image",
        &tagged,
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (_, tasks_after) = fleet.wharf_json(&["task", "list"]);
    assert_eq!(
        tasks_before.as_array().map(Vec::len),
        tasks_after.as_array().map(Vec::len),
        "a refused deploy queued a task"
    );

    // The registry password is in no file of core or the agent, and in no log line.
    assert_no_leak(
        &fleet.password,
        &[fleet.core.data_dir(), fleet.agent.state_dir()],
        &[
            ("core", fleet.core.process.output()),
            ("agent", fleet.agent.process.output()),
        ],
    );
}

/// The hooks through the real programs: `t2` (v2 through passing hooks) shows their
/// outputs in `wharf task show`; a failing pre-deploy hook leaves the v2 container
/// (`v2_id`) untouched; a failing post-deploy hook brings it back, `rolled_back=true`.
fn hook_chapter(
    fleet: &Fleet,
    t2: &Value,
    target: &str,
    port: u16,
    v2_id: &str,
    failing_hook: &str,
) {
    let id = t2["id"].as_str().expect("task id");
    let (code, shown) = fleet.wharf_json(&["task", "show", id]);
    assert_eq!(code, Some(0), "{shown}");
    let outputs = result(&shown, "outputs");
    for phase in ["pre_hook", "post_hook"] {
        assert_eq!(outputs[format!("{phase}.ok")], "true", "{shown}");
        assert_eq!(
            outputs[format!("{phase}.message")],
            "testhook pass ran",
            "{shown}"
        );
        let ms = outputs[format!("{phase}.duration_ms")]
            .as_str()
            .unwrap_or("");
        assert!(ms.parse::<u64>().is_ok(), "{phase} duration: {shown}");
        assert_eq!(outputs[format!("{phase}.output.target")], target, "{shown}");
    }
    assert_eq!(
        outputs["post_hook.output.digest"],
        fleet.digest(TestVersion::V2)
    );
    assert_eq!(
        outputs["post_hook.output.previous"],
        fleet.digest(TestVersion::V1)
    );
    let text = fleet.raw(&["task", "show", id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("pre-hook:     passed in") && text.contains("post-hook:    passed in"),
        "{text}"
    );

    // Deploys of v1 with a failing hook (the image's fixed mode is `fail`).
    let (code, pre) = fleet.deploy(target, port, TestVersion::V1, &["--pre-hook", failing_hook]);
    assert_eq!(code, Some(1), "{pre}");
    assert_eq!(pre["state"], "failed", "{pre}");
    assert_eq!(*result(&pre, "error_type"), "hook-failed", "{pre}");
    assert_eq!(*result(&pre, "rolled_back"), false, "{pre}");
    assert!(
        result(&pre, "error")
            .as_str()
            .is_some_and(|e| e.contains("told to fail") && e.contains("nothing was changed")),
        "{pre}"
    );
    let (running, _, id_after) = container(target).unwrap();
    assert!(
        running && id_after == v2_id,
        "the pre-hook failure changed the target"
    );
    assert_eq!(version_on(port).as_deref(), Some("v2"));

    let (code, post) = fleet.deploy(
        target,
        port,
        TestVersion::V1,
        &["--post-hook", failing_hook],
    );
    assert_eq!(code, Some(1), "{post}");
    assert_eq!(*result(&post, "error_type"), "hook-failed", "{post}");
    assert_eq!(*result(&post, "rolled_back"), true, "{post}");
    assert_eq!(result(&post, "outputs")["post_hook.ok"], "false", "{post}");
    let (running, digest, id_after) = container(target).unwrap();
    assert!(running);
    assert_eq!(digest, fleet.digest(TestVersion::V2));
    assert_eq!(id_after, v2_id, "the very v2 container is back");
    assert_eq!(version_on(port).as_deref(), Some("v2"));
}

/// Fails if `secret` is in a file under one of `dirs` or in one of the named outputs.
pub(crate) fn assert_no_leak(secret: &str, dirs: &[&Path], outputs: &[(&str, Vec<String>)]) {
    let mut leaks = Vec::new();
    for dir in dirs {
        grep_tree(dir, secret.as_bytes(), &mut leaks);
    }
    for (who, lines) in outputs {
        if lines.iter().any(|l| l.contains(secret)) {
            leaks.push(format!("{who}'s output"));
        }
    }
    assert!(leaks.is_empty(), "the secret leaked into {leaks:?}");
}

/// Every file under `dir` containing `needle` goes into `found`.
fn grep_tree(dir: &Path, needle: &[u8], found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            grep_tree(&path, needle, found);
        } else if let Ok(bytes) = std::fs::read(&path) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
}

/// The steps of a deploy that swaps a healthy v1 for v2, then those of a deploy of
/// `broken` that restores v2 (design §4; `agent-docker/src/plan.rs`).
const FORWARD_STEPS: [&str; 8] = [
    "pull",
    "stop-current",
    "remove-stale-previous",
    "rename-current-to-previous",
    "create-new",
    "start-new",
    "wait-healthy",
    "write-sticker",
];
const RESTORE_STEPS: [&str; 5] = [
    "collect-logs",
    "remove-new",
    "rename-previous-back",
    "start-previous",
    "wait-previous-healthy",
];

#[test]
fn kill9_of_the_agent_at_every_step_ends_with_exactly_one_healthy_container() {
    let mut fleet = Fleet::start("crash", &[]);
    let mut failures = Vec::new();
    let cases = FORWARD_STEPS
        .iter()
        .map(|s| (*s, TestVersion::V2))
        .chain(RESTORE_STEPS.iter().map(|s| (*s, TestVersion::Broken)));
    // `WHARF_E2E_CRASH_STEPS=pull,wait-healthy` runs only those (when debugging).
    let only = std::env::var("WHARF_E2E_CRASH_STEPS").ok();
    for (step, version) in cases {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|s| s == step))
        {
            continue;
        }
        if let Err(e) = crash_at(&mut fleet, step, version) {
            eprintln!("kill -9 at {step} ({version}) FAILED: {e}");
            failures.push(format!("kill -9 at {step} ({version}): {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Deploys v1 (and v2 first, so that a stale previous exists), then deploys `version`
/// with the agent paused at `step`, kills it there, restarts it, and checks the target.
fn crash_at(fleet: &mut Fleet, step: &str, version: TestVersion) -> Result<(), String> {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("kill -9 at {step}: {what} after {:.1?}", t0.elapsed());
    let target = format!("e2e-crash-{}", wharf_testbed::unique_suffix());
    let previous = format!("{target}-previous");
    let _cleanup = RemoveContainers(vec![target.clone(), previous.clone()]);
    let port = wharf_testbed::free_port().map_err(|e| e.to_string())?;
    for setup in [TestVersion::V2, TestVersion::V1] {
        let (code, t) = fleet.deploy(&target, port, setup, &[]);
        if code != Some(0) {
            return Err(format!("setup deploy of {setup} failed: {t}"));
        }
    }
    phase("set up");
    // Restart the agent with the fault point armed, submit without waiting.
    fleet
        .agent
        .restart(&[("WHARF_FAULT_PAUSE_AT", step)])
        .map_err(|e| e.to_string())?;
    fleet
        .core
        .wait_agent_state(&fleet.agent.name, "online", Duration::from_secs(60))
        .map_err(|e| e.to_string())?;
    let image = fleet.image(version);
    let publish = format!("127.0.0.1:{port}:{APP_PORT}");
    let (code, task) = fleet.wharf_json(&[
        "deploy",
        "--agent",
        &fleet.agent.name,
        "--target",
        &target,
        "--image",
        &image,
        "--port",
        &publish,
        "--health-timeout",
        "30s",
    ]);
    if code != Some(0) {
        return Err(format!("submit failed: {task}"));
    }
    let id = task["id"].as_str().unwrap_or_default().to_string();
    phase("submitted");
    let marker = format!("WHARF_FAULT_PAUSED {step}");
    fleet
        .agent
        .process
        .wait_for_line(Duration::from_secs(90), |l| l.contains(&marker))
        .map_err(|e| e.to_string())?;
    phase("paused");
    // kill -9 at exactly that point, then a plain restart.
    fleet.agent.restart(&[]).map_err(|e| e.to_string())?;
    let (_, done) = fleet.wharf_json(&["task", "wait", &id]);
    phase("finished after the restart");
    let state = done["state"].as_str().unwrap_or_default().to_string();
    if state != "succeeded" && state != "failed" {
        return Err(format!("task did not finish: {done}"));
    }
    // Exactly one running <name>, healthy, answering; at most one previous.
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        if let Some(v) = version_on(port) {
            break v;
        }
        if Instant::now() > deadline {
            return Err("nothing answers on the port".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let Some((running, digest, _)) = container(&target) else {
        return Err(format!("no container named {target}"));
    };
    if !running {
        return Err(format!("{target} is not running"));
    }
    let named: Vec<String> = docker::run(docker::command(None).args([
        "ps",
        "-a",
        "--filter",
        &format!("name=^{target}"),
        "--format",
        "{{.Names}}",
    ]))
    .map_err(|e| e.to_string())?
    .lines()
    .map(str::to_string)
    .collect();
    if named.len() > 2 || named.iter().any(|n| n != &target && n != &previous) {
        return Err(format!("stray containers: {named:?}"));
    }
    // The reported result matches what runs.
    let expected = if state == "succeeded" {
        (version.as_str(), fleet.digest(version))
    } else {
        ("v1", fleet.digest(TestVersion::V1))
    };
    if version == TestVersion::Broken && state == "succeeded" {
        return Err(format!("broken reported as succeeded: {done}"));
    }
    if answer != expected.0 || digest != expected.1 {
        return Err(format!(
            "task {state} but {answer} runs ({digest}); result: {}",
            done["result"]
        ));
    }
    Ok(())
}
