//! The peers Wharf is compared with, doing the same swap: the raw `docker` CLI (the steps
//! the agent takes, typed by hand) and Swarm's `docker service update`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wharf_testbed::docker;

/// Swarm's wait for convergence is bounded: a service that never converges fails the
/// benchmark instead of hanging it.
const SWARM_TIMEOUT: &str = "180";

/// Something that can move a service to another image, the way one tool does.
pub trait Swapper {
    /// A short name for the results table.
    fn name(&self) -> &'static str;
    /// Brings the service up on `image` (not measured).
    fn create(&mut self, image: &str) -> Result<()>;
    /// Moves the running service to `image` and returns when it is healthy on it.
    fn swap(&mut self, image: &str) -> Result<()>;
    /// Before a measured swap that must pull: make `image` removable (not measured).
    fn prepare_pull(&mut self, image: &str) {
        let _ = image;
    }
    /// Removes everything it made.
    fn remove(&mut self);
}

/// The agent's steps with the raw CLI: pull, remove the stale previous, stop, rename,
/// run, poll the health status.
pub struct RawCli {
    pub name: String,
    pub host_port: u16,
    pub pull: bool,
}

impl RawCli {
    fn run_new(&self, image: &str) -> Result<()> {
        docker::run(docker::command(None).args([
            "run",
            "-d",
            "--name",
            &self.name,
            "-p",
            &format!("127.0.0.1:{}:8080", self.host_port),
            "--label",
            "wharf.bench=raw",
            image,
        ]))?;
        wait_healthy(&self.name)
    }
}

impl Swapper for RawCli {
    fn name(&self) -> &'static str {
        if self.pull {
            "raw docker CLI (pull)"
        } else {
            "raw docker CLI (local)"
        }
    }

    fn create(&mut self, image: &str) -> Result<()> {
        self.run_new(image)
    }

    fn swap(&mut self, image: &str) -> Result<()> {
        if self.pull {
            docker::run(docker::command(None).args(["pull", "-q", image]))?;
        }
        let previous = format!("{}-previous", self.name);
        let _ = docker::output(docker::command(None).args(["rm", "-f", &previous]));
        docker::run(docker::command(None).args(["stop", "-t", "10", &self.name]))?;
        docker::run(docker::command(None).args(["rename", &self.name, &previous]))?;
        self.run_new(image)
    }

    fn prepare_pull(&mut self, _image: &str) {
        crate::wharf::remove_previous(&self.name);
    }

    fn remove(&mut self) {
        let previous = format!("{}-previous", self.name);
        let _ = docker::output(docker::command(None).args(["rm", "-f", &self.name, &previous]));
    }
}

/// Polls `docker inspect` until the container's health status is `healthy`.
fn wait_healthy(name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = docker::run(docker::command(None).args([
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            name,
        ]))?;
        match status.trim() {
            "healthy" => return Ok(()),
            "unhealthy" => bail!("{name} turned unhealthy"),
            _ if Instant::now() > deadline => bail!("{name} not healthy within 60 s"),
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A single-node swarm service updated with `docker service update --image`, rollback on
/// failure, the same health check: the image's own `HEALTHCHECK` (`--health-cmd` would
/// be run through `/bin/sh`, which a `FROM scratch` image does not have).
pub struct Swarm {
    pub service: String,
    pub host_port: u16,
    /// Whether this run initialised the swarm (and so leaves it at the end).
    pub initialised: bool,
}

impl Swarm {
    /// Joins (initialises) a single-node swarm if the engine is in none.
    pub fn new(service: String, host_port: u16) -> Result<Swarm> {
        let state = docker::run(docker::command(None).args([
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}}",
        ]))?;
        let initialised = if state.trim() == "active" {
            false
        } else {
            docker::run(docker::command(None).args([
                "swarm",
                "init",
                "--advertise-addr",
                "127.0.0.1",
            ]))
            .context("docker swarm init")?;
            true
        };
        Ok(Swarm {
            service,
            host_port,
            initialised,
        })
    }
}

impl Swapper for Swarm {
    fn name(&self) -> &'static str {
        "Swarm service update"
    }

    fn create(&mut self, image: &str) -> Result<()> {
        let mut cmd = Command::new("timeout");
        cmd.args([
            SWARM_TIMEOUT,
            "docker",
            "service",
            "create",
            "--detach=false",
            "--quiet",
        ])
        .args(["--name", &self.service])
        // Host-mode publishing, like `docker run -p`: the ingress routing mesh does not
        // forward on this machine (a published ingress port answers nothing), and it
        // would add a hop the others do not have.
        .args([
            "--publish",
            &format!("mode=host,published={},target=8080", self.host_port),
        ])
        .arg(image);
        docker::run(&mut cmd).map(drop)
    }

    fn swap(&mut self, image: &str) -> Result<()> {
        let mut cmd = Command::new("timeout");
        cmd.args([
            SWARM_TIMEOUT,
            "docker",
            "service",
            "update",
            "--detach=false",
            "--quiet",
        ])
        .args(["--image", image])
        .args(["--update-failure-action", "rollback"])
        // Swarm watches a task this long after it is running before calling the
        // update done; Wharf's gate ends as soon as the probe passes. 1 s is one
        // health interval.
        .args(["--update-monitor", "1s"])
        .arg(&self.service);
        docker::run(&mut cmd).map(drop)
    }

    fn remove(&mut self) {
        let _ = docker::output(docker::command(None).args(["service", "rm", &self.service]));
        if self.initialised {
            let _ = docker::output(docker::command(None).args(["swarm", "leave", "--force"]));
        }
    }
}

/// Removes `image` from the local engine so the next swap pulls it (not measured).
pub fn forget_image(image: &str) {
    let _ = docker::output(docker::command(None).args(["rmi", "-f", image]));
}

/// Wall-clock time of `f`.
pub fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}
