//! End to end through the real programs: `wharf-core serve`, `wharf-agent-compose` and the
//! `wharf` CLI, against the real Docker engine, the Compose tool of this host and a private
//! registry (htpasswd).
//!
//! - the story: a two-service project (`web` depends on `api`, two images from two
//!   repositories) deployed v1 with `wharf compose deploy --wait`, upgraded to v2, then a
//!   release with `web` broken: failed, `rolled_back=true` with log lines, the whole v2
//!   release back and answering; v2 goes through passing `--pre-hook`/`--post-hook`
//!   images (outputs in the result); a failing pre-deploy hook leaves lock, sticker and
//!   containers as they were, a failing post-deploy hook brings the whole v2 release back; an unpinned lock and a `build:` lock refused by the CLI
//!   with exit 2 and nothing queued; `wharf compose rollback --wait` to v1; `inspect` and
//!   `sticker read` name what runs; the registry password is in no file and no log line;
//! - kill -9 of the agent during `up` (before it, with the Compose child running, and in
//!   the restore's `up-previous`): no Compose child outlives the agent, and after the
//!   restart the project runs on one whole release, the one the result reports.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testbed::cluster::{AgentOptions, Binaries, ComposeAgent, Core};
use wharf_testbed::compose::{project_containers, two_service_lock, ComposeImages, ProjectGuard};
use wharf_testbed::{TestVersion, TestbedOptions};

use crate::docker_agent::{assert_no_leak, version_on};

/// A core, an enrolled Compose agent, a private registry with the test images under two
/// repositories (not present locally, so every deploy pulls), the registry credentials
/// stored in core, and two free ports for the services.
pub(crate) struct ComposeFleet {
    pub agent: ComposeAgent,
    pub core: Core,
    pub images: ComposeImages,
    pub password: String,
    pub api_port: u16,
    pub web_port: u16,
    dir: tempfile::TempDir,
}

impl ComposeFleet {
    pub fn start(name: &str, agent_env: &[(&str, &str)]) -> ComposeFleet {
        let suffix = wharf_testbed::unique_suffix();
        let password = format!("pw-{suffix}-Cq7");
        let images = ComposeImages::start(
            TestbedOptions::default()
                .with_auth("deployer", password.clone())
                .with_repo(format!("wharf-e2e/{name}-web-{suffix}")),
            &format!("wharf-e2e/{name}-api-{suffix}"),
        )
        .expect("testbed");
        images.remove_local_images().expect("remove local images");
        let binaries = Binaries::get().expect("wharf programs");
        let dir = tempfile::tempdir().unwrap();
        let core = Core::start(&binaries, &dir.path().join("core")).expect("core");
        core.registry_login(&images.bed().registry().host(), "deployer", &password)
            .expect("registry login");
        let options = AgentOptions {
            env: agent_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..AgentOptions::default()
        };
        let agent = ComposeAgent::enroll_and_start(
            &core,
            &format!("{name}-{suffix}"),
            &dir.path().join("agent"),
            &dir.path().join("deploy"),
            &options,
        )
        .expect("compose agent");
        ComposeFleet {
            agent,
            core,
            images,
            password,
            api_port: wharf_testbed::free_port().unwrap(),
            web_port: wharf_testbed::free_port().unwrap(),
            dir,
        }
    }

    /// The two-service lock of `api` and `web` on this fleet's ports.
    pub fn lock(&self, api: TestVersion, web: TestVersion) -> String {
        two_service_lock(
            self.images.api(api),
            self.images.web(web),
            self.api_port,
            self.web_port,
        )
    }

    /// Writes `text` into a file of its own for `--lock`.
    pub fn lock_file(&self, text: &str) -> PathBuf {
        let path = self
            .dir
            .path()
            .join(format!("lock-{}.yml", wharf_testbed::unique_suffix()));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `wharf ARGS --output json`: exit code and the JSON document.
    pub fn wharf_json(&self, args: &[&str]) -> (Option<i32>, Value) {
        crate::docker_agent::wharf_json(&self.core, args)
    }

    /// `wharf compose deploy --project P --lock (text) --health-timeout 30s EXTRA...`.
    pub fn deploy(&self, project: &str, lock: &str, extra: &[&str]) -> (Option<i32>, Value) {
        let path = self.lock_file(lock);
        let path = path.to_str().unwrap();
        let mut args = vec![
            "compose",
            "deploy",
            "--agent",
            &self.agent.name,
            "--project",
            project,
            "--lock",
            path,
            "--health-timeout",
            "30s",
        ];
        args.extend_from_slice(extra);
        self.wharf_json(&args)
    }

    /// The tasks core lists.
    pub fn task_count(&self) -> usize {
        let (code, tasks) = self.wharf_json(&["task", "list"]);
        assert_eq!(code, Some(0), "{tasks}");
        tasks.as_array().map_or(0, Vec::len)
    }

    /// Whether both services answer `/version` with `version` and every container of
    /// the project runs, healthy, on the pinned images of that release.
    pub fn runs_release(&self, project: &str, version: TestVersion) -> Result<(), String> {
        let want = version.as_str();
        let answers = (version_on(self.api_port), version_on(self.web_port));
        if answers != (Some(want.into()), Some(want.into())) {
            return Err(format!("api and web answer {answers:?}, not {want}"));
        }
        let containers = project_containers(project).map_err(|e| e.to_string())?;
        let pinned = |service: &str| match service {
            "api" => self.images.api(version).to_string(),
            _ => self.images.web(version).to_string(),
        };
        let services: Vec<&str> = containers.iter().map(|c| c.service.as_str()).collect();
        if services != ["api", "web"] {
            return Err(format!("containers of {project}: {containers:?}"));
        }
        for c in &containers {
            if !c.running || c.health != "healthy" || c.image != pinned(&c.service) {
                return Err(format!(
                    "{} is not running healthy on {}: {c:?}",
                    c.name,
                    pinned(&c.service)
                ));
            }
        }
        Ok(())
    }

    pub fn deploy_root(&self) -> &Path {
        self.agent.deploy_root()
    }
}

pub(crate) fn result<'a>(task: &'a Value, field: &str) -> &'a Value {
    &task["result"][field]
}

#[test]
fn compose_deploy_upgrade_broken_restored_refusals_rollback_and_no_secret_anywhere() {
    let mut fleet = ComposeFleet::start("compose-story", &[]);
    let hook = fleet.images.bed().hook_image().to_string();
    let failing_hook = fleet
        .images
        .bed_mut()
        .hook_image_in_mode("fail")
        .expect("failing hook image")
        .to_string();
    let entry = fleet
        .core
        .agent_entry(&fleet.agent.name)
        .unwrap()
        .expect("the agent is listed");
    let caps = entry.to_string();
    assert!(
        caps.contains("compose-v1") || caps.contains("compose-v2"),
        "{entry}"
    );
    assert!(caps.contains("\"hooks\""), "{entry}");
    let project = format!("e2e{}", wharf_testbed::unique_suffix());
    let _cleanup = ProjectGuard(project.clone());

    // v1: both services pulled with the sealed credentials, running, healthy, answering.
    let (code, t1) = fleet.deploy(
        &project,
        &fleet.lock(TestVersion::V1, TestVersion::V1),
        &["--release", "shop@1.0.0", "--wait"],
    );
    assert_eq!(code, Some(0), "{t1}");
    assert_eq!(t1["state"], "succeeded", "{t1}");
    fleet.runs_release(&project, TestVersion::V1).unwrap();
    let project_dir = fleet.deploy_root().join(&project);
    assert!(project_dir.join("compose.lock.yml").is_file());
    assert!(project_dir.join(".wharf/version.json").is_file());

    // v2: the whole project upgraded, through passing pre- and post-deploy hooks.
    let lock2 = fleet.lock(TestVersion::V2, TestVersion::V2);
    let (code, t2) = fleet.deploy(
        &project,
        &lock2,
        &[
            "--release",
            "shop@2.0.0",
            "--pre-hook",
            &hook,
            "--post-hook",
            &hook,
            "--wait",
        ],
    );
    assert_eq!(code, Some(0), "{t2}");
    fleet.runs_release(&project, TestVersion::V2).unwrap();
    let outputs = result(&t2, "outputs");
    for phase in ["pre_hook", "post_hook"] {
        assert_eq!(outputs[format!("{phase}.ok")], "true", "{t2}");
        assert_eq!(outputs[format!("{phase}.output.target")], project, "{t2}");
        assert!(
            outputs[format!("{phase}.duration_ms")]
                .as_str()
                .is_some_and(|ms| ms.parse::<u64>().is_ok()),
            "{t2}"
        );
    }

    // A failing pre-deploy hook: lock, sticker and containers as they were.
    let lock_path = project_dir.join("compose.lock.yml");
    let sticker_path = project_dir.join(".wharf/version.json");
    let sticker_before = std::fs::read(&sticker_path).unwrap();
    let ids_before = project_containers(&project).unwrap();
    let lock1 = fleet.lock(TestVersion::V1, TestVersion::V1);
    let (code, pre) = fleet.deploy(&project, &lock1, &["--pre-hook", &failing_hook, "--wait"]);
    assert_eq!(code, Some(1), "{pre}");
    assert_eq!(*result(&pre, "error_type"), "hook-failed", "{pre}");
    assert_eq!(*result(&pre, "rolled_back"), false, "{pre}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock2);
    assert_eq!(std::fs::read(&sticker_path).unwrap(), sticker_before);
    assert_eq!(
        project_containers(&project).unwrap(),
        ids_before,
        "a failed pre-deploy hook changed containers"
    );
    fleet.runs_release(&project, TestVersion::V2).unwrap();

    // A failing post-deploy hook: v1 ran, the whole v2 release is back.
    let (code, post) = fleet.deploy(&project, &lock1, &["--post-hook", &failing_hook, "--wait"]);
    assert_eq!(code, Some(1), "{post}");
    assert_eq!(*result(&post, "error_type"), "hook-failed", "{post}");
    assert_eq!(*result(&post, "rolled_back"), true, "{post}");
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock2);
    fleet.runs_release(&project, TestVersion::V2).unwrap();

    // release 3 changes api (to the v1 image) and has web broken: the whole v2 release
    // is back and answering,
    // the failing service's log lines are in the result.
    let (code, t3) = fleet.deploy(
        &project,
        &fleet.lock(TestVersion::V1, TestVersion::Broken),
        &["--release", "shop@3.0.0", "--wait"],
    );
    assert_eq!(code, Some(1), "{t3}");
    assert_eq!(t3["state"], "failed", "{t3}");
    assert_eq!(*result(&t3, "success"), false, "{t3}");
    assert_eq!(*result(&t3, "rolled_back"), true, "{t3}");
    assert!(
        result(&t3, "logs")
            .as_array()
            .is_some_and(|l| !l.is_empty()),
        "the failing service's log lines: {t3}"
    );
    assert!(
        t3.to_string().contains("web"),
        "names the failing service: {t3}"
    );
    fleet.runs_release(&project, TestVersion::V2).unwrap();

    // Refused by the CLI with exit 2 before submitting: an unpinned image, a `build:`.
    let before_ids = project_containers(&project).unwrap();
    let tasks_before = fleet.task_count();
    let unpinned = fleet.lock(TestVersion::V2, TestVersion::V2).replace(
        &fleet.images.web(TestVersion::V2).to_string(),
        &format!("{}:v2", fleet.images.web(TestVersion::V2).repository()),
    );
    let with_build = format!(
        "{}    build: ./web\n",
        fleet.lock(TestVersion::V2, TestVersion::V2)
    );
    for (what, lock) in [("unpinned", unpinned), ("build:", with_build)] {
        let path = fleet.lock_file(&lock);
        let out = fleet
            .core
            .wharf(&[
                "compose",
                "deploy",
                "--agent",
                &fleet.agent.name,
                "--project",
                &project,
                "--lock",
                path.to_str().unwrap(),
                "--wait",
            ])
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{what} lock: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("web"),
            "{what} lock: names the service: {stderr}"
        );
    }
    assert_eq!(
        fleet.task_count(),
        tasks_before,
        "a refused lock queued a task"
    );
    assert_eq!(project_containers(&project).unwrap(), before_ids);
    fleet.runs_release(&project, TestVersion::V2).unwrap();

    // rollback: the kept previous release (v1) comes back whole.
    let (code, t4) = fleet.wharf_json(&[
        "compose",
        "rollback",
        "--agent",
        &fleet.agent.name,
        "--project",
        &project,
        "--wait",
    ]);
    assert_eq!(code, Some(0), "{t4}");
    assert_eq!(t4["state"], "succeeded", "{t4}");
    fleet.runs_release(&project, TestVersion::V1).unwrap();

    // inspect and sticker read name what runs.
    let v1_api = fleet.images.api(TestVersion::V1).digest().to_string();
    let v1_web = fleet.images.web(TestVersion::V1).digest().to_string();
    for what in ["inspect", "sticker read"] {
        let mut args: Vec<&str> = what.split(' ').collect();
        args.extend(["--agent", &fleet.agent.name, "--target", &project]);
        let (code, doc) = fleet.wharf_json(&args);
        assert_eq!(code, Some(0), "{what}: {doc}");
        let outputs = result(&doc, "outputs").to_string();
        assert!(
            outputs.contains(&v1_api) && outputs.contains(&v1_web),
            "{what} names both running digests: {doc}"
        );
    }

    // The audit after the rollback: the restored sticker, v1 running and core's record
    // (the rollback made the previous release current again) agree.
    let (code, rows) = fleet.wharf_json(&["audit", "--agent", &fleet.agent.name]);
    assert_eq!(code, Some(0), "{rows}");
    assert_eq!(rows[0]["status"], "ok", "{rows}");
    assert_eq!(rows[0]["evidence"]["record"]["task"], t1["id"], "{rows}");

    // The registry password is in no file of core, the agent or the deploy root, and in
    // no log line.
    assert_no_leak(
        &fleet.password,
        &[
            fleet.core.data_dir(),
            fleet.agent.state_dir(),
            fleet.deploy_root(),
        ],
        &[
            ("core", fleet.core.process.output()),
            ("agent", fleet.agent.process.output()),
        ],
    );
}

/// The ids of live processes whose command line names `dir` (a Compose tool run with
/// `--project-directory dir`), zombies excluded.
fn compose_processes(dir: &Path) -> Vec<u32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let (_, rest) = s.rsplit_once(')')?;
                    rest.split_whitespace().next().map(|st| st != "Z")
                })
                .unwrap_or(false);
            alive
                && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    c.windows(needle.len()).any(|w| w == needle)
                        && c.windows(7).any(|w| w == b"compose")
                })
        })
        .collect()
}

/// Polls `check` every 100 ms until it passes or `timeout` ends (its last error).
fn eventually(
    timeout: Duration,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// kill -9 of the Compose agent during `up`: paused before the step (`up`), with the
/// `docker-compose up` child running (`up-running`: the child dies with the agent, none
/// runs alongside the restarted agent), and during the restore's `up-previous`. After the
/// restart the project runs entirely on one release, healthy and answering, and the
/// reported result matches it.
#[test]
fn kill9_of_the_compose_agent_during_up_ends_on_one_whole_release() {
    let mut fleet = ComposeFleet::start("compose-crash", &[]);
    let mut failures = Vec::new();
    for (step, version) in [
        ("up", TestVersion::V2),
        ("up-running", TestVersion::V2),
        ("up-previous", TestVersion::Broken),
    ] {
        if let Err(e) = crash_during_up(&mut fleet, step, version) {
            eprintln!("kill -9 at {step} ({version}) FAILED: {e}");
            failures.push(format!("kill -9 at {step} ({version}): {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn crash_during_up(
    fleet: &mut ComposeFleet,
    step: &str,
    version: TestVersion,
) -> Result<(), String> {
    let project = format!("crash{}", wharf_testbed::unique_suffix());
    let _cleanup = ProjectGuard(project.clone());
    let dir = fleet.deploy_root().join(&project);
    let (code, t) = fleet.deploy(
        &project,
        &fleet.lock(TestVersion::V1, TestVersion::V1),
        &["--wait"],
    );
    if code != Some(0) {
        return Err(format!("setup deploy of v1 failed: {t}"));
    }
    let err = |e: anyhow::Error| format!("{e:#}");
    fleet
        .agent
        .restart(&[("WHARF_FAULT_PAUSE_AT", step)])
        .map_err(err)?;
    fleet
        .core
        .wait_agent_state(&fleet.agent.name, "online", Duration::from_secs(60))
        .map_err(err)?;
    // A broken web with a fine api: the restore must bring the v1 pair back.
    let lock = match version {
        TestVersion::Broken => fleet.lock(TestVersion::V2, TestVersion::Broken),
        v => fleet.lock(v, v),
    };
    let (code, task) = fleet.deploy(&project, &lock, &[]);
    if code != Some(0) {
        return Err(format!("submit failed: {task}"));
    }
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let marker = format!("WHARF_FAULT_PAUSED {step}");
    fleet
        .agent
        .process
        .wait_for_line(Duration::from_secs(120), |l| l.contains(&marker))
        .map_err(err)?;
    if step == "up-running" && compose_processes(&dir).is_empty() {
        return Err("paused in `up` but no Compose process runs for the project".into());
    }
    fleet.agent.process.kill9();
    // No Compose child of the killed agent outlives it.
    eventually(Duration::from_secs(10), || match compose_processes(&dir) {
        none if none.is_empty() => Ok(()),
        pids => Err(format!(
            "Compose processes outlived the killed agent: {pids:?}"
        )),
    })?;
    fleet.agent.restart(&[]).map_err(err)?;
    let (_, done) = fleet.wharf_json(&["task", "wait", &id]);
    let state = done["state"].as_str().unwrap_or_default().to_string();
    let expected = match state.as_str() {
        "succeeded" if version == TestVersion::Broken => {
            return Err(format!("broken reported as succeeded: {done}"))
        }
        "succeeded" => version,
        "failed" => TestVersion::V1,
        _ => return Err(format!("task did not finish: {done}")),
    };
    eventually(Duration::from_secs(30), || {
        fleet.runs_release(&project, expected)
    })
    .map_err(|e| format!("task {state}, but: {e}; result: {}", done["result"]))?;
    if !compose_processes(&dir).is_empty() {
        return Err("a Compose process still runs after the task ended".into());
    }
    Ok(())
}
