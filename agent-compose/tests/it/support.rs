//! Shared pieces of the Compose integration tests.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};
use wharf_agent_docker::runtime::{CheckpointError, CheckpointSink, ProgressLine, TaskContext};
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{AgentTask, DurationMs, Priority, TaskPayload, Timestamp};
use wharf_testbed::{PinnedRef, TestVersion, Testbed, TestbedOptions};

pub const USER: &str = "wharf";
pub const PASSWORD: &str = "compose-s3cret-pw";

/// The executor over this host's Compose tool and engine, with container hooks when
/// `hooks`, and host-command hooks too when `allow_host_hooks`.
pub async fn executor(
    root: &Path,
    hooks: bool,
    allow_host_hooks: bool,
) -> wharf_agent_compose::ComposeExecutor<wharf_agent_compose::CliHost> {
    let tool = wharf_agent_compose::ComposeTool::detect()
        .await
        .expect("a Compose tool on this host");
    let docker = wharf_agent_docker::docker::BollardDocker::connect(None)
        .await
        .expect("docker");
    let runner = wharf_hooks::Hooks::new(docker.client().clone(), allow_host_hooks);
    let exec = wharf_agent_compose::ComposeExecutor::new(
        wharf_agent_compose::CliHost::new(tool, docker),
        wharf_agent_compose::ComposeExecutorConfig::new(root),
    );
    if hooks {
        exec.with_hooks(Arc::new(runner))
    } else {
        exec
    }
}

/// Removes every container and network of a Compose project when dropped.
pub struct ProjectGuard(pub String);

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        remove_project(&self.0);
    }
}

/// Removes a project's containers and networks (by Compose's project label).
pub fn remove_project(project: &str) {
    let filter = format!("label=com.docker.compose.project={project}");
    if let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
    {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
    }
    if let Ok(out) = Command::new("docker")
        .args(["network", "ls", "-q", "--filter", &filter])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("docker").args(["network", "rm", id]).output();
        }
    }
}

/// Checkpoints kept in memory, in order.
#[derive(Default)]
pub struct MemorySink {
    pub states: Mutex<Vec<Vec<u8>>>,
}

impl CheckpointSink for MemorySink {
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>> {
        self.states.lock().unwrap().push(state);
        Box::pin(async { Ok(()) })
    }
}

pub struct Ctx {
    pub ctx: TaskContext,
    pub _progress: mpsc::UnboundedReceiver<ProgressLine>,
    pub _cancel: watch::Sender<bool>,
}

pub fn context(credentials: Option<RegistryCredentials>, sink: Arc<dyn CheckpointSink>) -> Ctx {
    let (tx, progress) = mpsc::unbounded_channel();
    let (cancel, rx) = watch::channel(false);
    Ctx {
        ctx: TaskContext::new(credentials, sink, Some(tx), rx),
        _progress: progress,
        _cancel: cancel,
    }
}

pub fn creds(bed: &Testbed) -> RegistryCredentials {
    RegistryCredentials {
        registry: bed.registry().host(),
        username: USER.into(),
        password: PASSWORD.into(),
    }
}

pub fn task(target: &str, payload: TaskPayload) -> AgentTask {
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

/// The testbed (registry with auth, v1/v2/broken) plus the same images pushed as a
/// second repository, `wharf/api`, so the two services use two images.
pub struct Images {
    pub bed: Testbed,
    pub api: Vec<(TestVersion, PinnedRef)>,
}

impl Drop for Images {
    fn drop(&mut self) {
        let refs: Vec<String> = self.api.iter().map(|(_, p)| p.to_string()).collect();
        let _ = wharf_testbed::docker::remove_images(&refs);
    }
}

impl Images {
    pub fn web(&self, v: TestVersion) -> &PinnedRef {
        self.bed.image(v)
    }

    pub fn api(&self, v: TestVersion) -> &PinnedRef {
        &self.api.iter().find(|(x, _)| *x == v).expect("api image").1
    }
}

pub async fn images() -> Images {
    tokio::task::spawn_blocking(|| {
        let bed =
            Testbed::start(TestbedOptions::default().with_auth(USER, PASSWORD)).expect("testbed");
        let api = [TestVersion::V1, TestVersion::V2, TestVersion::Broken]
            .into_iter()
            .map(|v| {
                let pinned = bed
                    .registry()
                    .push(&bed.built(v).tag, "wharf/api")
                    .expect("push api");
                (v, pinned)
            })
            .collect();
        Images { bed, api }
    })
    .await
    .unwrap()
}

/// A two-service lock: `web` depends on `api`; both publish 8080 on a random loopback port.
pub fn lock(api: &PinnedRef, web: &PinnedRef) -> String {
    format!(
        "services:\n  api:\n    image: {api}\n    ports: [\"127.0.0.1::8080\"]\n  web:\n    image: {web}\n    depends_on: [api]\n    ports: [\"127.0.0.1::8080\"]\n"
    )
}

/// `GET /version` of each running container of the project's `service`.
pub fn versions(project: &str, service: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|id| {
            let port = host_port(id, 8080);
            wharf_testbed::http::get(&format!("127.0.0.1:{port}"), "/version")
                .map(|r| r.text().trim().to_owned())
                .unwrap_or_else(|e| format!("error: {e}"))
        })
        .collect()
}

/// Container ids of the project (all states), sorted.
pub fn container_ids(project: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.compose.project={project}"),
        ])
        .output()
        .expect("docker ps");
    let mut ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Every file under `dir` with its content, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    out.sort();
    out
}

/// The loopback host port a container's `port/tcp` is published on (0 if none).
pub fn host_port(container: &str, port: u16) -> u16 {
    let Ok(Some(info)) = wharf_testbed::docker::inspect_container(container) else {
        return 0;
    };
    info["NetworkSettings"]["Ports"][format!("{port}/tcp")]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|b| b["HostPort"].as_str()?.parse().ok())
        .unwrap_or(0)
}
