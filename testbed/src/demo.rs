//! `wharf-testbed demo` (`make demo`): the whole Wharf story on one machine, with the real
//! programs.
//!
//! 1. Build the test images `FROM scratch`, push them to a private local registry
//!    (Debian's `docker-registry` with htpasswd auth) and pin them by digest.
//! 2. Start `wharf-core serve` and store the registry credentials with `wharf registry
//!    login` (encrypted at rest, sealed to the agent at dispatch).
//! 3. Enroll and start a `wharf-agent-docker` (one-time token, pinned CA fingerprint).
//! 4. `wharf deploy --wait` v1, then v2 (a swap), checking what answers on the port.
//! 5. Deploy `broken`: it fails its health check and v2 is restored.
//! 6. `wharf sticker read` and `wharf inspect` show what runs and who put it there.
//! 7. `wharf audit` checks the sticker against what runs and core's record (`ok`).
//! 8. `wharf task evidence --verify` shows the broken deploy's signed evidence record, and
//!    `wharf history` every deploy of the target with the ones it can go back to.
//! 9. A tag-only reference is refused before anything is submitted (exit 2).
//!
//! Everything it made (containers, processes, registry, images, directories) is removed
//! at the end, on failure, and on Ctrl-C/SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cluster::{Binaries, Core, DockerAgent};
use crate::fixture::{Testbed, TestbedOptions};
use crate::images::TestVersion;

/// What a Ctrl-C must remove: the target's containers.
#[derive(Default)]
struct Leftovers {
    containers: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Leftovers {
    fn remove(&mut self) {
        if !self.containers.is_empty() {
            let _ = crate::docker::command(None)
                .args(["rm", "-f"])
                .args(&self.containers)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            self.containers.clear();
        }
        for dir in self.dirs.drain(..) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs the demo, printing each step to stdout. Fails if anything does not come out as
/// the story says.
pub fn run() -> Result<()> {
    let leftovers = Arc::new(Mutex::new(Leftovers::default()));
    on_interrupt(leftovers.clone())?;
    let outcome = story(&leftovers);
    leftovers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove();
    if outcome.is_ok() {
        step("Done: containers, agent, core, registry and their files are removed");
    }
    outcome
}

/// On SIGINT/SIGTERM: remove the leftovers and exit 130. The children (core, agent,
/// registry) share the terminal's process group and get the signal themselves.
fn on_interrupt(leftovers: Arc<Mutex<Leftovers>>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install the Ctrl-C handler")?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("\ninterrupted: cleaning up");
            leftovers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove();
            std::process::exit(130);
        }
    });
    Ok(())
}

fn story(leftovers: &Arc<Mutex<Leftovers>>) -> Result<()> {
    let suffix = crate::unique_suffix();
    let target = format!("demo-web-{suffix}");
    {
        let mut left = leftovers.lock().unwrap_or_else(PoisonError::into_inner);
        left.containers = vec![target.clone(), format!("{target}-previous")];
    }

    step("1. Build the test images FROM scratch, push them to a private registry, pin by digest");
    let password = format!("demo-{suffix}");
    let testbed = Testbed::start(
        TestbedOptions::default()
            .with_auth("demo", password.clone())
            .with_repo(format!("wharf-demo/testapp-{suffix}")),
    )
    .context(
        "could not start the testbed (is the Docker engine running and docker-registry installed?)",
    )?;
    leftovers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .dirs
        .push(testbed.registry().dir().to_path_buf());
    // The agent must pull them from the registry, as on a real host.
    testbed.remove_local_images()?;
    let registry = testbed.registry().host();
    println!("   registry: {} (htpasswd auth)", testbed.registry().url());
    for (version, pinned) in testbed.images() {
        println!("   {:<7} {pinned}", version.as_str());
    }
    let image = |v: TestVersion| testbed.image(v).to_string();

    step("2. Start wharf-core and store the registry credentials (encrypted at rest)");
    let binaries = Binaries::get()?;
    let dir = tempfile::tempdir()?;
    leftovers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .dirs
        .push(dir.path().to_path_buf());
    let core = Core::start(&binaries, &dir.path().join("core"))?;
    println!(
        "   core: {} (data dir {})",
        core.url(),
        core.data_dir().display()
    );
    let mut login = core.cli()?;
    login
        .args([
            "registry",
            "login",
            &registry,
            "--username",
            "demo",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().context("cannot run wharf registry login")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(password.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "wharf registry login failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!("   $ wharf registry login {registry} --username demo --password-stdin");
    print_indented(&String::from_utf8_lossy(&out.stdout));

    step("3. Enroll a Docker agent (one-time token, CA pinned by fingerprint) and start it");
    let agent_name = format!("demo-host-{suffix}");
    let agent = DockerAgent::enroll_and_start(&core, &agent_name, &dir.path().join("agent"))?;
    println!("   $ wharf agent list");
    print_indented(&text(core.wharf(&["agent", "list"])?));
    let _ = &agent;

    let port = crate::free_port()?;
    let publish = format!("127.0.0.1:{port}:8080");
    let deploy = |version: TestVersion, release: &str| -> Result<Value> {
        let img = image(version);
        println!(
            "   $ wharf deploy --agent {agent_name} --target {target} --image {} \\\n       --port {publish} --health-http 8080/healthz --release {release} --wait",
            short(&img)
        );
        let args = [
            "deploy",
            "--agent",
            &agent_name,
            "--target",
            &target,
            "--image",
            &img,
            "--port",
            &publish,
            "--health-http",
            "8080/healthz",
            "--health-timeout",
            "20s",
            "--release",
            release,
            "--wait",
        ];
        let out = core.wharf(&args)?;
        print_indented(&text(out));
        let task_id = last_task_id(&core, &target)?;
        let task = core.wharf_json(&["task", "show", &task_id])?;
        Ok(task)
    };

    step("4. Deploy v1, then v2: the container is swapped, the previous one kept");
    let t1 = deploy(TestVersion::V1, "demo@1.0.0")?;
    expect_state(&t1, "succeeded")?;
    expect_version(port, "v1")?;
    let t2 = deploy(TestVersion::V2, "demo@2.0.0")?;
    expect_state(&t2, "succeeded")?;
    expect_version(port, "v2")?;

    step("5. Deploy `broken`: its health check fails, v2 is restored");
    let t3 = deploy(TestVersion::Broken, "demo@3.0.0")?;
    expect_state(&t3, "failed")?;
    if t3["result"]["rolled_back"] != true {
        bail!("the broken deploy was not rolled back: {t3}");
    }
    expect_version(port, "v2")?;
    println!("   rolled_back: true; error: {}", t3["result"]["error"]);
    println!("   last lines of the failed container:");
    for line in t3["result"]["logs"]
        .as_array()
        .into_iter()
        .flatten()
        .take(5)
    {
        println!("     | {}", line.as_str().unwrap_or_default());
    }

    step("6. The signed version sticker and what runs");
    println!("   $ wharf sticker read --agent {agent_name} --target {target}");
    let out = core.wharf(&[
        "sticker",
        "read",
        "--agent",
        &agent_name,
        "--target",
        &target,
    ])?;
    print_indented(&String::from_utf8_lossy(&out.stdout));
    println!(
        "   $ wharf inspect --agent {agent_name} --target {target} --output json  (some fields)"
    );
    let inspect = core.wharf_json(&["inspect", "--agent", &agent_name, "--target", &target])?;
    let outputs = &inspect["result"]["outputs"];
    for field in ["state", "health", "digest", "image"] {
        println!("     {field:<8} {}", outputs[field].as_str().unwrap_or("-"));
    }
    let labels: Value = outputs["labels"]
        .as_str()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    for (key, value) in labels.as_object().into_iter().flatten() {
        if key.starts_with("wharf.") && !key.starts_with("wharf.test") {
            println!("     label    {key}={}", value.as_str().unwrap_or_default());
        }
    }
    let runs = outputs["digest"].as_str().unwrap_or_default();
    if runs != testbed.image(TestVersion::V2).digest() {
        bail!("inspect says {runs} runs, expected v2's digest");
    }

    step("7. The fleet audit: sticker, running image and core's record agree");
    println!("   $ wharf audit");
    let out = core.wharf(&["audit"])?;
    print_indented(&String::from_utf8_lossy(&out.stdout));
    if out.status.code() != Some(0) {
        bail!(
            "the audit of an untouched fleet should exit 0, got {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    step("8. The signed evidence of the broken deploy, and the target's history");
    let broken_id = t3["id"].as_str().unwrap_or_default().to_string();
    let key = core.data_dir().join("sticker.pub");
    let key = key.to_str().context("the data dir is not UTF-8")?;
    println!("   $ wharf task evidence {broken_id} --verify --key DATA/sticker.pub  (some fields)");
    let out = core.wharf(&["task", "evidence", &broken_id, "--verify", "--key", key])?;
    if !out.status.success() {
        bail!(
            "the evidence of {broken_id} did not verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let evidence: Value =
        serde_json::from_slice(&out.stdout).context("`wharf task evidence` printed no JSON")?;
    for (label, value) in [
        ("outcome", &evidence["outcome"]),
        ("requested", &evidence["requested"]),
        ("before", &evidence["before"]),
        ("after", &evidence["after"]),
        ("signature", &evidence["signature"]["key_id"]),
    ] {
        println!("     {label:<9} {value}");
    }
    print_indented(&String::from_utf8_lossy(&out.stderr));
    println!("   $ wharf history --agent {agent_name} --target {target}");
    let out = core.wharf(&["history", "--agent", &agent_name, "--target", &target])?;
    print_indented(&text(out));

    step("9. A tag-only reference is refused before anything is submitted");
    let tagged = format!("{}:v1", testbed.image(TestVersion::V1).repository());
    println!("   $ wharf deploy --agent {agent_name} --target {target} --image {tagged}");
    let out = core.wharf(&[
        "deploy",
        "--agent",
        &agent_name,
        "--target",
        &target,
        "--image",
        &tagged,
    ])?;
    print_indented(&String::from_utf8_lossy(&out.stderr));
    if out.status.code() != Some(2) {
        bail!("a tag-only deploy should exit 2, got {}", out.status);
    }
    println!("   exit status 2 (invalid input, nothing submitted)");
    drop(agent);
    drop(core);
    Ok(())
}

/// The id of the newest task on `target`.
fn last_task_id(core: &Core, target: &str) -> Result<String> {
    let list = core.wharf_json(&["task", "list"])?;
    let newest = list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["target"] == target)
        .max_by(|a, b| {
            a["created_at"]
                .as_str()
                .unwrap_or_default()
                .cmp(b["created_at"].as_str().unwrap_or_default())
        })
        .with_context(|| format!("no task for {target} in `wharf task list`"))?;
    newest["id"]
        .as_str()
        .map(str::to_string)
        .context("a task without an id")
}

fn expect_state(task: &Value, state: &str) -> Result<()> {
    if task["state"] != state {
        bail!(
            "task {} is {}, expected {state}: {task}",
            task["id"],
            task["state"]
        );
    }
    Ok(())
}

/// GET /version on the published port must answer `version`.
fn expect_version(port: u16, version: &str) -> Result<()> {
    let response = crate::http::get(&format!("127.0.0.1:{port}"), "/version")
        .with_context(|| format!("GET http://127.0.0.1:{port}/version"))?;
    let body = response.text();
    println!(
        "   $ curl http://127.0.0.1:{port}/version  ->  {}",
        body.trim()
    );
    if body.trim() != version {
        bail!("the service answers {:?}, expected {version}", body.trim());
    }
    Ok(())
}

fn short(image: &str) -> String {
    match image.split_once("@sha256:") {
        Some((repo, digest)) => format!("{repo}@sha256:{}…", &digest[..12.min(digest.len())]),
        None => image.to_string(),
    }
}

/// What a `wharf --wait` command showed: its progress lines (stderr), then its summary.
fn text(out: std::process::Output) -> String {
    let mut s = String::from_utf8_lossy(&out.stderr).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stdout));
    s
}

fn print_indented(text: &str) {
    for line in text.lines() {
        println!("     {line}");
    }
}

fn step(text: &str) {
    println!("\n== {text}");
}
