//! Helpers around the `docker` CLI: run a command and keep its output, inspect
//! images and containers, remove image references, and a [`Container`] guard
//! that removes its container when dropped.
//!
//! The CLI (not the API) is used on purpose: it is what an operator types, it
//! negotiates the API version itself (the engine here speaks at most 1.41), and
//! `docker login`/`push` with a private `DOCKER_CONFIG` behave exactly as on a
//! user's machine.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// How often [`Container`] waits re-read `docker inspect`.
const POLL: Duration = Duration::from_millis(100);

/// A `docker` command with output captured and `DOCKER_CONFIG` set when given.
pub fn command(docker_config: Option<&Path>) -> Command {
    let mut cmd = Command::new("docker");
    if let Some(dir) = docker_config {
        cmd.env("DOCKER_CONFIG", dir);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs a command to completion; on a non-zero exit the error names the command
/// and carries its stderr. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let output = output(cmd)?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs a command and returns its full output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// `program arg1 arg2 ...` for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Whether the Docker engine answers (`docker version` for the server).
pub fn available() -> bool {
    command(None)
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `docker image inspect REF`: the image's JSON object, or `None` when there is
/// no such image.
pub fn inspect_image(reference: &str) -> Result<Option<Value>> {
    inspect("image", reference)
}

/// The ids of the hook containers (label `wharf.hook.target=<target>`, any state) Docker
/// has for `target`: empty once every hook run for it was removed.
pub fn hook_containers(target: &str) -> Result<Vec<String>> {
    let out = run(command(None).args([
        "ps",
        "-aq",
        "--filter",
        &format!("label=wharf.hook.target={target}"),
    ]))?;
    Ok(out.split_whitespace().map(str::to_owned).collect())
}

/// `docker container inspect NAME`: the container's JSON object, or `None` when
/// there is no such container.
pub fn inspect_container(name: &str) -> Result<Option<Value>> {
    inspect("container", name)
}

fn inspect(kind: &str, reference: &str) -> Result<Option<Value>> {
    let out = output(command(None).args([kind, "inspect", "--", reference]))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such") {
            return Ok(None);
        }
        bail!(
            "docker {kind} inspect {reference} failed: {}",
            stderr.trim()
        );
    }
    let mut all: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("docker {kind} inspect {reference}: unreadable JSON"))?;
    Ok(all.pop())
}

/// The `RepoDigests` of a local image (empty when there is no such image).
pub fn repo_digests(reference: &str) -> Result<Vec<String>> {
    let Some(image) = inspect_image(reference)? else {
        return Ok(Vec::new());
    };
    Ok(image["RepoDigests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect())
}

/// Removes image references (tags or `repo@sha256:` references) with
/// `docker rmi`, one at a time so a shared image is only untagged. References
/// that do not exist are skipped. Returns the first error after trying all.
pub fn remove_images<S: AsRef<str>>(references: &[S]) -> Result<()> {
    let mut first_error = None;
    for reference in references {
        let reference = reference.as_ref();
        let out = output(command(None).args(["rmi", reference]));
        let failure = match out {
            Ok(out) if out.status.success() => None,
            Ok(out) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                if stderr.contains("No such image") || stderr.contains("not found") {
                    None
                } else {
                    Some(anyhow::anyhow!(
                        "docker rmi {reference} failed: {}",
                        stderr.trim()
                    ))
                }
            }
            Err(err) => Some(err),
        };
        if let Some(err) = failure {
            first_error.get_or_insert(err);
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// Options for [`Container::run`].
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// `KEY=VALUE` environment entries.
    pub env: Vec<(String, String)>,
    /// Container ports (TCP) to publish on an ephemeral 127.0.0.1 port.
    pub publish: Vec<u16>,
    /// Extra `docker run` arguments, placed before the image.
    pub extra_args: Vec<String>,
    /// Arguments after the image (passed to its entrypoint).
    pub command: Vec<String>,
}

impl RunOptions {
    /// Adds an environment entry.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Publishes a container TCP port on an ephemeral port of 127.0.0.1
    /// (read it back with [`Container::host_port`]).
    pub fn publish(mut self, container_port: u16) -> Self {
        self.publish.push(container_port);
        self
    }

    /// Adds an extra `docker run` argument (before the image).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra_args.push(arg.into());
        self
    }
}

/// A container removed (`docker rm -f -v`) when this guard is dropped, even if
/// the test panicked. Create one with [`Container::run`] or guard a container
/// made elsewhere (by an agent, say) with [`Container::adopt`].
#[derive(Debug)]
pub struct Container {
    name: String,
}

impl Container {
    /// `docker run -d` of `image` under a unique name starting with `prefix`.
    pub fn run(prefix: &str, image: &str, options: &RunOptions) -> Result<Self> {
        let name = format!("{prefix}-{}", crate::unique_suffix());
        let mut cmd = command(None);
        cmd.args([
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            "wharf.testbed=true",
        ]);
        for (key, value) in &options.env {
            cmd.arg("--env").arg(format!("{key}={value}"));
        }
        for port in &options.publish {
            cmd.arg("--publish").arg(format!("127.0.0.1::{port}"));
        }
        cmd.args(&options.extra_args)
            .arg(image)
            .args(&options.command);
        // Guard first: `docker run` may create the container and then fail to start it.
        let guard = Container { name };
        run(&mut cmd)?;
        Ok(guard)
    }

    /// Guards an existing container (by name or id): it is removed on drop.
    pub fn adopt(name: impl Into<String>) -> Self {
        Container { name: name.into() }
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `docker inspect` of the container; an error when it does not exist.
    pub fn inspect(&self) -> Result<Value> {
        inspect_container(&self.name)?
            .with_context(|| format!("container {} does not exist", self.name))
    }

    /// `State.Status`: `created`, `running`, `exited`...
    pub fn status(&self) -> Result<String> {
        Ok(self.inspect()?["State"]["Status"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// `State.Health.Status` (`starting`, `healthy`, `unhealthy`), `None` for an
    /// image without HEALTHCHECK.
    pub fn health(&self) -> Result<Option<String>> {
        Ok(self.inspect()?["State"]["Health"]["Status"]
            .as_str()
            .map(str::to_string))
    }

    /// The 127.0.0.1 host port a published container port was given.
    pub fn host_port(&self, container_port: u16) -> Result<u16> {
        let info = self.inspect()?;
        let bindings = &info["NetworkSettings"]["Ports"][format!("{container_port}/tcp")];
        bindings
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|b| b["HostPort"].as_str()?.parse().ok())
            .with_context(|| {
                format!(
                    "container {}: port {container_port}/tcp is not published",
                    self.name
                )
            })
    }

    /// Polls `docker inspect` until `State.Health.Status` is `wanted`; fails at
    /// the deadline, or at once when the container stopped running, with the
    /// last health log and the container's logs in the error.
    pub fn wait_health(&self, wanted: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.inspect()?;
            let health = info["State"]["Health"]["Status"].as_str().unwrap_or("none");
            if health == wanted {
                return Ok(());
            }
            let status = info["State"]["Status"].as_str().unwrap_or_default();
            if status != "running" || Instant::now() >= deadline {
                let why = if status != "running" {
                    format!("container is {status}")
                } else {
                    format!("still {health} after {timeout:?}")
                };
                bail!(
                    "container {} did not become {wanted}: {why}; last probes: {}; logs:\n{}",
                    self.name,
                    info["State"]["Health"]["Log"],
                    self.logs().unwrap_or_default()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Polls `docker inspect` until the container is no longer running and
    /// returns its exit code.
    pub fn wait_exit(&self, timeout: Duration) -> Result<i64> {
        let deadline = Instant::now() + timeout;
        loop {
            let info = self.inspect()?;
            let state = &info["State"];
            if matches!(state["Status"].as_str(), Some("exited" | "dead")) {
                return state["ExitCode"]
                    .as_i64()
                    .context("container state without an exit code");
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {} still {} after {timeout:?}",
                    self.name,
                    state["Status"]
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// `docker logs` (stdout and stderr interleaved as Docker kept them).
    pub fn logs(&self) -> Result<String> {
        let out = output(command(None).args(["logs", &self.name]))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = command(None)
            .args(["rm", "-f", "-v", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
