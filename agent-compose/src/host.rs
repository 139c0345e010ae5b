//! The host side of a Compose deploy: the Compose tool (`docker compose` v2 or
//! `docker-compose` v1) and the Docker engine, behind [`ComposeHost`] so the executor is
//! unit-tested over an in-memory host.
//!
//! [`CliHost`] runs the Compose tool as a child process (killed when its future is
//! dropped) and reads containers through the Engine API (bollard), finding a project's
//! containers by the Compose labels `com.docker.compose.project` / `.service`.
//!
//! A Compose child must not outlive a killed agent and run alongside the restarted
//! agent's own `up`. Two guards, no unsafe code:
//! - the child runs under `setpriv --pdeathsig KILL` (util-linux) when `setpriv` is on
//!   `PATH`: the kernel kills it when the agent dies, even by kill -9;
//! - every child carries [`PROJECT_DIR_ENV`] naming its project directory, and before a
//!   deploy or rollback takes (or resumes) its steps, [`stop_leftovers`] finds any such
//!   process still running (in `/proc`), kills it and waits until it is gone.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use wharf_agent_docker::docker::{fault, BollardDocker, ContainerHealth, DockerApi};

/// Compose's label naming a container's project.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// Compose's label naming a container's service.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";
/// Compose's label on one-off (`run`) containers.
pub const LABEL_ONEOFF: &str = "com.docker.compose.oneoff";

/// The environment variable every Compose child gets: its project directory (see
/// [`stop_leftovers`]).
pub const PROJECT_DIR_ENV: &str = "WHARF_COMPOSE_PROJECT_DIR";

/// How long [`stop_leftovers`] waits for a killed leftover process to be gone.
pub const LEFTOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of a Compose command's output kept (the tail goes into errors).
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Why a host operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Neither `docker compose` nor `docker-compose` runs on this host.
    #[error(
        "no Compose tool found: neither `docker compose` (v2) nor `docker-compose` (v1) runs \
         here; install one (Debian: apt-get install docker-compose)"
    )]
    NoTool,
    /// The Compose tool could not be started.
    #[error("cannot run `{command}`: {reason}")]
    Spawn {
        /// The command line (program and subcommand).
        command: String,
        /// Why.
        reason: String,
    },
    /// The Compose tool exited with an error.
    #[error("`{command}` failed (exit {code}): {output}")]
    Failed {
        /// The command line (program and subcommand).
        command: String,
        /// Its exit code (-1: killed by a signal).
        code: i32,
        /// The last lines of its output.
        output: String,
    },
    /// The Docker engine failed.
    #[error("Docker engine: {0}")]
    Docker(String),
    /// A Compose process of an earlier agent run still works on the project.
    #[error(
        "a Compose process of an earlier agent run (pid {pid}) still works on {dir} after \
         SIGKILL: {reason}; stop it (kill -9 {pid}) and retry the task"
    )]
    Leftover {
        /// Its process id.
        pid: u32,
        /// The project directory.
        dir: String,
        /// Why it could not be stopped.
        reason: String,
    },
}

/// Which Compose tool runs the projects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ComposeTool {
    /// `docker compose` (the v2 plugin).
    V2,
    /// `docker-compose` (the v1 Python tool).
    V1,
}

impl ComposeTool {
    /// The capability announced in `Hello` besides `compose`: `compose-v2` or `compose-v1`.
    pub const fn capability(self) -> &'static str {
        match self {
            ComposeTool::V2 => "compose-v2",
            ComposeTool::V1 => "compose-v1",
        }
    }

    /// The command as an operator types it.
    pub const fn command(self) -> &'static str {
        match self {
            ComposeTool::V2 => "docker compose",
            ComposeTool::V1 => "docker-compose",
        }
    }

    fn program(self) -> (&'static str, &'static [&'static str]) {
        match self {
            ComposeTool::V2 => ("docker", &["compose"]),
            ComposeTool::V1 => ("docker-compose", &[]),
        }
    }

    /// Finds the tool once: `docker compose version` first, then `docker-compose version`.
    ///
    /// # Errors
    ///
    /// [`HostError::NoTool`] when neither runs.
    pub async fn detect() -> Result<Self, HostError> {
        for tool in [ComposeTool::V2, ComposeTool::V1] {
            let (program, prefix) = tool.program();
            let status = tokio::process::Command::new(program)
                .args(prefix)
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status()
                .await;
            if status.is_ok_and(|s| s.success()) {
                return Ok(tool);
            }
        }
        Err(HostError::NoTool)
    }
}

/// The files of a project as Compose gets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectFiles {
    /// The project name (`-p`).
    pub project: String,
    /// The project directory (`--project-directory`, and the working directory).
    pub dir: PathBuf,
    /// The Compose files, in order (`-f` each), relative to `dir`.
    pub compose_files: Vec<String>,
}

/// One container of a Compose project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContainer {
    /// The service (label `com.docker.compose.service`).
    pub service: String,
    /// The container id.
    pub id: String,
    /// The container name.
    pub name: String,
    /// Docker's state (`running`, `exited`, `restarting`...).
    pub status: String,
    /// Whether it runs.
    pub running: bool,
    /// Its exit code when it stopped.
    pub exit_code: Option<i64>,
    /// Docker's health status, when the image or service has a health check.
    pub health: Option<ContainerHealth>,
    /// The image as configured (`repo@sha256:...` for a lock).
    pub image: String,
    /// The `RepoDigests` of the image it runs.
    pub repo_digests: Vec<String>,
}

impl ServiceContainer {
    /// Whether it runs the image `pinned` (`repo@sha256:...`).
    pub fn runs(&self, pinned: &str) -> bool {
        self.image == pinned || self.repo_digests.iter().any(|d| d == pinned)
    }

    /// The digest it runs (`sha256:...`), from the image it was created from, else from
    /// its image's `RepoDigests`.
    pub fn digest(&self) -> Option<String> {
        let from = |s: &str| {
            s.rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .filter(|d| d.starts_with("sha256:"))
        };
        from(&self.image).or_else(|| {
            let repo = self.image.split('@').next().unwrap_or_default();
            let repo = strip_tag(repo);
            self.repo_digests
                .iter()
                .find(|d| d.split('@').next() == Some(repo))
                .or(self.repo_digests.first())
                .and_then(|d| from(d))
        })
    }
}

fn strip_tag(repo: &str) -> &str {
    match repo.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => name,
        _ => repo,
    }
}

/// The host operations a Compose deploy needs. Futures are cancel-safe: dropping one
/// leaves the host in a state [`ComposeHost::containers`] describes truthfully.
pub trait ComposeHost: Send + Sync + 'static {
    /// The Compose tool in use.
    fn tool(&self) -> ComposeTool;

    /// `pull` every service image; `docker_config` is a private `DOCKER_CONFIG` dir holding
    /// the registry credentials, if any.
    fn pull(
        &self,
        files: &ProjectFiles,
        docker_config: Option<&Path>,
    ) -> impl Future<Output = Result<(), HostError>> + Send;

    /// `up -d --remove-orphans --force-recreate --no-build`.
    fn up(&self, files: &ProjectFiles) -> impl Future<Output = Result<(), HostError>> + Send;

    /// `down --remove-orphans`.
    fn down(&self, files: &ProjectFiles) -> impl Future<Output = Result<(), HostError>> + Send;

    /// The project's containers (one-off `run` containers excluded).
    fn containers(
        &self,
        project: &str,
    ) -> impl Future<Output = Result<Vec<ServiceContainer>, HostError>> + Send;

    /// The `RepoDigests` of a local image; `None` when there is no such image.
    fn repo_digests(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<Vec<String>>, HostError>> + Send;

    /// The last `lines` log lines of a container.
    fn logs_tail(
        &self,
        container: &str,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<String>, HostError>> + Send;

    /// Stops every Compose process still working on the project directory `dir` (left
    /// by an agent that was killed while it ran) and waits until they are gone; returns
    /// their process ids.
    fn stop_leftovers(
        &self,
        dir: &Path,
    ) -> impl Future<Output = Result<Vec<u32>, HostError>> + Send;
}

/// The real host: the Compose tool as a child process, the engine through bollard.
#[derive(Debug)]
pub struct CliHost {
    tool: ComposeTool,
    docker: BollardDocker,
    setpriv: Option<PathBuf>,
}

impl CliHost {
    /// A host over `tool` (see [`ComposeTool::detect`]) and the engine `docker`; Compose
    /// runs under `setpriv --pdeathsig KILL` when `setpriv` is on `PATH`.
    pub fn new(tool: ComposeTool, docker: BollardDocker) -> Self {
        CliHost {
            tool,
            docker,
            setpriv: find_on_path("setpriv"),
        }
    }

    /// Whether Compose children die with the agent (`setpriv --pdeathsig KILL`).
    pub fn children_die_with_agent(&self) -> bool {
        self.setpriv.is_some()
    }

    async fn compose(
        &self,
        files: &ProjectFiles,
        args: &[&str],
        docker_config: Option<&Path>,
    ) -> Result<(), HostError> {
        let (program, prefix) = self.tool.program();
        let mut cmd = match &self.setpriv {
            Some(setpriv) => {
                let mut cmd = tokio::process::Command::new(setpriv);
                cmd.args(["--pdeathsig", "KILL", "--", program]);
                cmd
            }
            None => tokio::process::Command::new(program),
        };
        cmd.args(prefix)
            .arg("--project-name")
            .arg(&files.project)
            .arg("--project-directory")
            .arg(&files.dir);
        for f in &files.compose_files {
            cmd.arg("--file").arg(files.dir.join(f));
        }
        cmd.args(args)
            .current_dir(&files.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Compose must not read the caller's project settings.
            .env_remove("COMPOSE_FILE")
            .env_remove("COMPOSE_PROJECT_NAME")
            .env(PROJECT_DIR_ENV, &files.dir);
        if let Some(dir) = docker_config {
            cmd.env("DOCKER_CONFIG", dir);
        }
        let command = format!("{} {}", self.tool.command(), args.join(" "));
        let mut child = cmd.spawn().map_err(|e| HostError::Spawn {
            command: command.clone(),
            reason: e.to_string(),
        })?;
        // Test builds: `WHARF_FAULT_PAUSE_AT=up-running` pauses here, the child running.
        if let Some(sub) = args.first() {
            fault::pause_at(&format!("{sub}-running")).await;
        }
        let out = child.stdout.take();
        let err = child.stderr.take();
        let (stdout, stderr, status) =
            tokio::join!(read_capped(out), read_capped(err), child.wait());
        let status = status.map_err(|e| HostError::Spawn {
            command: command.clone(),
            reason: e.to_string(),
        })?;
        if status.success() {
            return Ok(());
        }
        let text = format!("{stdout}{stderr}");
        let tail: Vec<&str> = text.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(HostError::Failed {
            command,
            code: status.code().unwrap_or(-1),
            output: tail.join(" | "),
        })
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(r: Option<R>) -> String {
    let Some(mut r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > MAX_OUTPUT_BYTES {
                    let cut = kept.len() - MAX_OUTPUT_BYTES;
                    kept.drain(..cut);
                }
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The first executable file named `name` in a directory of `PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The ids of the live processes (zombies excluded) whose environment has
/// `PROJECT_DIR_ENV=dir`, this process excepted. Processes whose environment cannot be
/// read (another user's, gone meanwhile) are skipped.
pub fn leftover_processes(dir: &Path) -> Vec<u32> {
    let mut marker = format!("{PROJECT_DIR_ENV}=").into_bytes();
    marker.extend_from_slice(dir.as_os_str().as_encoded_bytes());
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && is_alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|var| var == marker.as_slice()))
        })
        .collect();
    found.sort_unstable();
    found
}

/// Whether `pid` exists and is not a zombie (`/proc/PID/stat`'s state after the `)`).
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// Kills (SIGKILL) every [`leftover_processes`] of `dir` and waits up to `timeout` until
/// none is alive; returns the ids it killed.
///
/// # Errors
///
/// [`HostError::Leftover`] when one cannot be killed or is still alive at `timeout`.
pub async fn stop_leftovers(dir: &Path, timeout: Duration) -> Result<Vec<u32>, HostError> {
    let owned = dir.to_path_buf();
    let found = tokio::task::spawn_blocking(move || leftover_processes(&owned))
        .await
        .unwrap_or_default();
    let leftover = |pid: u32, reason: String| HostError::Leftover {
        pid,
        dir: dir.display().to_string(),
        reason,
    };
    for pid in &found {
        let Some(raw) = i32::try_from(*pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        else {
            continue;
        };
        match rustix::process::kill_process(raw, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => {}
            Err(e) => return Err(leftover(*pid, format!("cannot kill it: {e}"))),
        }
    }
    let deadline = Instant::now() + timeout;
    for pid in &found {
        while is_alive(*pid) {
            if Instant::now() >= deadline {
                return Err(leftover(*pid, format!("still alive after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(found)
}

fn docker_error(e: impl std::fmt::Display) -> HostError {
    HostError::Docker(e.to_string())
}

impl ComposeHost for CliHost {
    fn tool(&self) -> ComposeTool {
        self.tool
    }

    async fn pull(
        &self,
        files: &ProjectFiles,
        docker_config: Option<&Path>,
    ) -> Result<(), HostError> {
        self.compose(files, &["pull", "--quiet"], docker_config)
            .await
    }

    async fn up(&self, files: &ProjectFiles) -> Result<(), HostError> {
        self.compose(
            files,
            &[
                "up",
                "--detach",
                "--remove-orphans",
                "--force-recreate",
                "--no-build",
            ],
            None,
        )
        .await
    }

    async fn down(&self, files: &ProjectFiles) -> Result<(), HostError> {
        self.compose(files, &["down", "--remove-orphans"], None)
            .await
    }

    async fn containers(&self, project: &str) -> Result<Vec<ServiceContainer>, HostError> {
        let mut filters = HashMap::new();
        filters.insert("label", vec![format!("{LABEL_PROJECT}={project}")]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = self
            .docker
            .client()
            .list_containers(Some(options))
            .await
            .map_err(docker_error)?;
        let mut out = Vec::with_capacity(list.len());
        for summary in list {
            let Some(id) = summary.id else { continue };
            let labels = summary.labels.unwrap_or_default();
            if labels.get(LABEL_PROJECT).map(String::as_str) != Some(project)
                || labels
                    .get(LABEL_ONEOFF)
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                continue;
            }
            let Some(service) = labels.get(LABEL_SERVICE).cloned() else {
                continue;
            };
            // Gone between the list and the inspect: not a container of the project.
            let Some(info) = self
                .docker
                .inspect_container(&id)
                .await
                .map_err(docker_error)?
            else {
                continue;
            };
            let repo_digests = match self
                .docker
                .inspect_image(&info.image_id)
                .await
                .map_err(docker_error)?
            {
                Some(image) => image.repo_digests,
                None => Vec::new(),
            };
            out.push(ServiceContainer {
                service,
                id,
                name: info.name.trim_start_matches('/').to_owned(),
                status: info.state.status.clone(),
                running: info.state.running,
                exit_code: info.state.exit_code,
                health: info.state.health,
                image: info.image.clone(),
                repo_digests,
            });
        }
        out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
        Ok(out)
    }

    async fn repo_digests(&self, reference: &str) -> Result<Option<Vec<String>>, HostError> {
        Ok(self
            .docker
            .inspect_image(reference)
            .await
            .map_err(docker_error)?
            .map(|i| i.repo_digests))
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, HostError> {
        self.docker
            .logs_tail(container, lines)
            .await
            .map_err(docker_error)
    }

    async fn stop_leftovers(&self, dir: &Path) -> Result<Vec<u32>, HostError> {
        stop_leftovers(dir, LEFTOVER_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(image: &str, digests: &[&str]) -> ServiceContainer {
        ServiceContainer {
            service: "web".into(),
            id: "id".into(),
            name: "p_web_1".into(),
            status: "running".into(),
            running: true,
            exit_code: None,
            health: None,
            image: image.into(),
            repo_digests: digests.iter().map(|s| s.to_string()).collect(),
        }
    }

    const D: &str = "sha256:4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce";

    #[test]
    fn digest_from_the_pinned_image_or_the_matching_repo_digest() {
        let c = container(&format!("reg:5000/web@{D}"), &[]);
        assert_eq!(c.digest().as_deref(), Some(D));
        assert!(c.runs(&format!("reg:5000/web@{D}")));
        let c = container(
            "reg:5000/web:1",
            &["other/x@sha256:00", &format!("reg:5000/web@{D}")],
        );
        assert_eq!(c.digest().as_deref(), Some(D));
        assert!(c.runs(&format!("reg:5000/web@{D}")));
        assert!(!container("web", &[]).runs(&format!("reg:5000/web@{D}")));
        assert_eq!(container("web", &[]).digest(), None);
    }

    #[test]
    fn capabilities_and_commands() {
        assert_eq!(ComposeTool::V1.capability(), "compose-v1");
        assert_eq!(ComposeTool::V2.command(), "docker compose");
    }
}
