//! Compose fixtures for the end-to-end tests and the Compose benchmark: the testbed's
//! images pushed under a second repository (so a project has two services with two
//! images), a two-service lock (`web` depends on `api`), and helpers that read a
//! project's containers by Compose's labels and remove them.
//!
//! Blocking (the `docker` CLI); call from `spawn_blocking` in async code.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{docker, PinnedRef, TestVersion, Testbed, TestbedOptions};

/// Compose's label naming a container's project.
pub const LABEL_PROJECT: &str = "com.docker.compose.project";
/// Compose's label naming a container's service.
pub const LABEL_SERVICE: &str = "com.docker.compose.service";

/// The testbed (`web` images: v1, v2, broken in `options`' repository) and the same
/// images pushed again under `api_repo`; every local reference removed on drop.
#[derive(Debug)]
pub struct ComposeImages {
    bed: Testbed,
    api: Vec<(TestVersion, PinnedRef)>,
    local_refs: Vec<String>,
}

impl ComposeImages {
    /// Starts the testbed with `options` and pushes each version also as `api_repo`.
    pub fn start(options: TestbedOptions, api_repo: &str) -> Result<ComposeImages> {
        let bed = Testbed::start(options)?;
        let mut api = Vec::new();
        let mut local_refs = Vec::new();
        for version in TestVersion::ALL {
            let pinned = bed
                .registry()
                .push(&bed.built(version).tag, api_repo)
                .with_context(|| format!("pushing {version} as {api_repo}"))?;
            local_refs.push(format!("{}/{api_repo}:{version}", bed.registry().host()));
            local_refs.push(pinned.to_string());
            api.push((version, pinned));
        }
        Ok(ComposeImages {
            bed,
            api,
            local_refs,
        })
    }

    /// The testbed (its registry, credentials, the `web` images).
    pub fn bed(&self) -> &Testbed {
        &self.bed
    }

    /// The testbed, to add images to it (see [`Testbed::hook_image_in_mode`]).
    pub fn bed_mut(&mut self) -> &mut Testbed {
        &mut self.bed
    }

    /// The `web` image of `version`.
    pub fn web(&self, version: TestVersion) -> &PinnedRef {
        self.bed.image(version)
    }

    /// The `api` image of `version`.
    pub fn api(&self, version: TestVersion) -> &PinnedRef {
        self.api
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, p)| p)
            .expect("every version is pushed at start")
    }

    /// Removes every local reference of both repositories, so that the next deploy
    /// pulls from the registry.
    pub fn remove_local_images(&self) -> Result<()> {
        self.bed.remove_local_images()?;
        docker::remove_images(&self.local_refs)
    }
}

impl Drop for ComposeImages {
    fn drop(&mut self) {
        let _ = docker::remove_images(&self.local_refs);
    }
}

/// A two-service lock: `api` publishes the test app on `127.0.0.1:api_port`, `web`
/// (depending on `api`) on `127.0.0.1:web_port`.
pub fn two_service_lock(api: &PinnedRef, web: &PinnedRef, api_port: u16, web_port: u16) -> String {
    let app = crate::images::APP_PORT;
    format!(
        "services:\n  api:\n    image: {api}\n    ports: [\"127.0.0.1:{api_port}:{app}\"]\n  \
         web:\n    image: {web}\n    depends_on: [api]\n    ports: [\"127.0.0.1:{web_port}:{app}\"]\n"
    )
}

/// One container of a project, as `docker inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectContainer {
    /// The container id (a recreated container has another).
    pub id: String,
    /// The service.
    pub service: String,
    /// The container name.
    pub name: String,
    /// Whether it runs.
    pub running: bool,
    /// Docker's health status (`healthy`, `starting`, `unhealthy`; empty without a check).
    pub health: String,
    /// The image as configured (`repo@sha256:...` for a lock).
    pub image: String,
}

/// The containers of `project` (all states), by the Compose project label, sorted by
/// service and name.
pub fn project_containers(project: &str) -> Result<Vec<ProjectContainer>> {
    let filter = format!("label={LABEL_PROJECT}={project}");
    let ids = docker::run(docker::command(None).args(["ps", "-aq", "--filter", &filter]))?;
    let mut out = Vec::new();
    for id in ids.split_whitespace() {
        let Some(c) = docker::inspect_container(id)? else {
            continue;
        };
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        out.push(ProjectContainer {
            id: text(&c["Id"]),
            service: text(&c["Config"]["Labels"][LABEL_SERVICE]),
            name: text(&c["Name"]).trim_start_matches('/').to_string(),
            running: c["State"]["Running"] == true,
            health: text(&c["State"]["Health"]["Status"]),
            image: text(&c["Config"]["Image"]),
        });
    }
    out.sort_by(|a, b| (&a.service, &a.name).cmp(&(&b.service, &b.name)));
    Ok(out)
}

/// Waits until every one of `services` has its containers running and healthy (and at
/// least one), looking every `poll` (as the Compose agent's health gate does); fails
/// when one turns unhealthy or exits, or at `timeout`.
pub fn wait_project_healthy(
    project: &str,
    services: &[&str],
    poll: Duration,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let containers = project_containers(project)?;
        let mut ready = true;
        for service in services {
            let mine: Vec<&ProjectContainer> = containers
                .iter()
                .filter(|c| c.service == *service)
                .collect();
            if let Some(bad) = mine.iter().find(|c| c.health == "unhealthy") {
                bail!("service {service} of {project} is unhealthy ({})", bad.name);
            }
            ready &= !mine.is_empty() && mine.iter().all(|c| c.running && c.health == "healthy");
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("project {project} not healthy within {timeout:?}: {containers:?}");
        }
        std::thread::sleep(poll);
    }
}

/// Removes every container and network of a project (by Compose's project label).
pub fn remove_project(project: &str) {
    let filter = format!("label={LABEL_PROJECT}={project}");
    if let Ok(ids) = docker::run(docker::command(None).args(["ps", "-aq", "--filter", &filter])) {
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let _ = docker::output(docker::command(None).args(["rm", "-f", "-v"]).args(&ids));
        }
    }
    if let Ok(ids) =
        docker::run(docker::command(None).args(["network", "ls", "-q", "--filter", &filter]))
    {
        for id in ids.split_whitespace() {
            let _ = docker::output(docker::command(None).args(["network", "rm", id]));
        }
    }
}

/// Removes a project's containers and networks when dropped (also when a test fails).
#[derive(Debug)]
pub struct ProjectGuard(pub String);

impl Drop for ProjectGuard {
    fn drop(&mut self) {
        remove_project(&self.0);
    }
}

/// `docker-compose` (v1) or `docker compose` (v2), whichever runs here, as a command
/// with `--project-name project --project-directory dir --file dir/FILE` for each of
/// `files` (the way the Compose agent runs it).
pub fn compose_command(project: &str, dir: &Path, files: &[&str]) -> Result<Command> {
    let v2 = Command::new("docker")
        .args(["compose", "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let mut cmd = if v2 {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        cmd
    } else if Command::new("docker-compose")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        Command::new("docker-compose")
    } else {
        bail!("neither `docker compose` nor `docker-compose` runs here; install one");
    };
    cmd.arg("--project-name")
        .arg(project)
        .arg("--project-directory")
        .arg(dir)
        .current_dir(dir)
        .env_remove("COMPOSE_FILE")
        .env_remove("COMPOSE_PROJECT_NAME");
    for f in files {
        cmd.arg("--file").arg(dir.join(f));
    }
    Ok(cmd)
}
