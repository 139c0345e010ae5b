//! The health gate (design §4 step 6): probes a container per [`HealthSpec`] until it is
//! healthy, unhealthy, or out of time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use wharf_protocol::{HealthProbe, HealthSpec};

use super::api::{ContainerHealth, ContainerInfo, DockerApi};

/// Why a container was not found healthy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HealthError {
    /// The container's process ended (or it vanished) before it became healthy.
    #[error("container {container} is not running ({detail})")]
    NotRunning {
        /// The container.
        container: String,
        /// Its state, exit code and Docker's error.
        detail: String,
    },
    /// The probe failed `retries` times in a row after the start period.
    #[error("container {container} is unhealthy: {reason}")]
    Unhealthy {
        /// The container.
        container: String,
        /// The last probe's failure.
        reason: String,
    },
    /// The overall deadline passed before the container became healthy.
    #[error("container {container} was not healthy within {waited:?} (last probe: {last})")]
    Deadline {
        /// The container.
        container: String,
        /// How long it was given.
        waited: Duration,
        /// The last probe's outcome.
        last: String,
    },
    /// Core cancelled the task while waiting.
    #[error("cancelled while waiting for {container} to become healthy")]
    Cancelled {
        /// The container.
        container: String,
    },
}

enum Probe {
    Healthy,
    Pending(String),
    Failed(String),
}

/// Runs one probe against a running container.
async fn probe<D: DockerApi>(
    docker: &D,
    http: &reqwest::Client,
    info: &ContainerInfo,
    spec: &HealthSpec,
    in_start_period: bool,
) -> Probe {
    let timeout = spec.timeout.as_duration().max(Duration::from_millis(1));
    let host = info.ip().unwrap_or("127.0.0.1").to_owned();
    match &spec.probe {
        HealthProbe::None => {
            if in_start_period {
                Probe::Pending("running, within the start period".into())
            } else {
                Probe::Healthy
            }
        }
        HealthProbe::DockerHealthcheck => match info.state.health {
            None if in_start_period => {
                Probe::Pending("running (no HEALTHCHECK), within the start period".into())
            }
            None | Some(ContainerHealth::Healthy) => Probe::Healthy,
            Some(ContainerHealth::Starting) => Probe::Pending("Docker health: starting".into()),
            Some(ContainerHealth::Unhealthy) => {
                Probe::Failed("Docker's HEALTHCHECK reports unhealthy".into())
            }
        },
        HealthProbe::Http { port, path } => {
            let path = if path.starts_with('/') {
                path.clone()
            } else {
                format!("/{path}")
            };
            let url = format!("http://{host}:{port}{path}");
            match tokio::time::timeout(timeout, http.get(&url).send()).await {
                Err(_) => Probe::Failed(format!("GET {url} timed out after {timeout:?}")),
                Ok(Err(e)) => Probe::Failed(format!("GET {url} failed: {e}")),
                Ok(Ok(r)) if r.status().is_success() => Probe::Healthy,
                Ok(Ok(r)) => Probe::Failed(format!("GET {url} answered {}", r.status())),
            }
        }
        HealthProbe::Tcp { port } => {
            let addr = format!("{host}:{port}");
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Err(_) => Probe::Failed(format!("TCP connect to {addr} timed out")),
                Ok(Err(e)) => Probe::Failed(format!("TCP connect to {addr} failed: {e}")),
                Ok(Ok(_)) => Probe::Healthy,
            }
        }
        HealthProbe::Exec { cmd } => {
            if cmd.is_empty() {
                return Probe::Failed("the exec health probe has an empty command".into());
            }
            match tokio::time::timeout(timeout, docker.exec(&info.id, cmd)).await {
                Err(_) => Probe::Failed(format!("exec {cmd:?} timed out after {timeout:?}")),
                Ok(Err(e)) => Probe::Failed(format!("exec {cmd:?} failed: {e}")),
                Ok(Ok(0)) => Probe::Healthy,
                Ok(Ok(code)) => Probe::Failed(format!("exec {cmd:?} exited with {code}")),
            }
        }
    }
}

fn not_running(container: &str, info: Option<&ContainerInfo>) -> HealthError {
    let detail = match info {
        None => "it no longer exists".to_owned(),
        Some(i) => {
            let mut d = format!("state {}", i.state.status);
            if let Some(code) = i.state.exit_code {
                d.push_str(&format!(", exit code {code}"));
            }
            if let Some(e) = &i.state.error {
                d.push_str(&format!(", {e}"));
            }
            d
        }
    };
    HealthError::NotRunning {
        container: container.to_owned(),
        detail,
    }
}

/// How often the gate reads Docker's health status for a `DockerHealthcheck` probe.
pub const DOCKER_STATUS_POLL: Duration = Duration::from_millis(100);

/// Waits until `container` is healthy per `spec`, giving up at `spec.deadline` or at
/// `cap` (the task's own deadline), whichever comes first, or when `cancelled` resolves.
///
/// # Errors
///
/// A [`HealthError`] saying why the container is not healthy.
pub async fn wait_healthy<D: DockerApi>(
    docker: &D,
    http: &reqwest::Client,
    container: &str,
    spec: &HealthSpec,
    cap: Option<Instant>,
    cancelled: impl Future<Output = ()> + Send,
) -> Result<(), HealthError> {
    let start = Instant::now();
    let mut deadline = start + spec.deadline.as_duration();
    if let Some(cap) = cap {
        deadline = deadline.min(cap);
    }
    let start_period_end = start + spec.start_period.as_duration();
    let retries = spec.retries.max(1);
    // Docker runs a HEALTHCHECK on its own schedule; the gate only reads the status it
    // keeps, which is cheap, so it looks often and sees the change when it happens instead
    // of up to one interval later. The other probes are real probes: one per interval.
    let interval = match spec.probe {
        HealthProbe::DockerHealthcheck => spec.interval.as_duration().min(DOCKER_STATUS_POLL),
        _ => spec.interval.as_duration(),
    }
    .max(Duration::from_millis(50));
    let mut failures = 0u32;
    let mut last: String;
    tokio::pin!(cancelled);
    loop {
        let info = docker.inspect_container(container).await;
        match info {
            Ok(Some(info)) if info.state.running => {
                let in_start_period = Instant::now() < start_period_end;
                match probe(docker, http, &info, spec, in_start_period).await {
                    Probe::Healthy => return Ok(()),
                    Probe::Pending(why) => last = why,
                    Probe::Failed(why) => {
                        if !in_start_period {
                            failures += 1;
                        }
                        let immediate = matches!(spec.probe, HealthProbe::DockerHealthcheck);
                        if immediate || failures >= retries {
                            return Err(HealthError::Unhealthy {
                                container: container.to_owned(),
                                reason: why,
                            });
                        }
                        last = why;
                    }
                }
            }
            Ok(Some(info)) if info.state.status == "restarting" => {
                last = "restarting".into();
            }
            Ok(info) => return Err(not_running(container, info.as_ref())),
            Err(e) => last = format!("cannot inspect: {e}"),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(HealthError::Deadline {
                container: container.to_owned(),
                waited: deadline.saturating_duration_since(start),
                last,
            });
        }
        let wake = (now + interval).min(deadline);
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = &mut cancelled => {
                return Err(HealthError::Cancelled { container: container.to_owned() });
            }
        }
    }
}
