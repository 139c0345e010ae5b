//! [`DockerApi`] over the Docker Engine API with bollard.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, EndpointSettings, HealthStatusEnum, HostConfig,
    NetworkConnectRequest, NetworkingConfig, PortBinding, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{PortMapping, PortProtocol, RestartPolicy, VolumeMount};

use super::api::{
    ContainerHealth, ContainerInfo, ContainerState, CreateSpec, DockerApi, DockerError, ImageInfo,
    NetworkEndpoint,
};

/// Longest time one Engine API request may take (pulls stream and are not cut by it).
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// Most log lines kept from one container, whatever the caller asks.
const MAX_LOG_LINES: usize = 1000;

/// Most bytes of log text read from one container (a line can be arbitrarily long).
const MAX_LOG_BYTES: usize = 256 * 1024;

/// Most bytes of exec output read (and dropped) before the exec is considered done.
const MAX_EXEC_OUTPUT: usize = 1 << 20;

/// Why the Docker engine could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The `--docker-host` URL is not one bollard can use.
    #[error(
        "cannot use Docker host {host}: {reason}; give unix:///path/docker.sock, tcp://HOST:PORT \
         or http://HOST:PORT"
    )]
    BadHost {
        /// The URL given.
        host: String,
        /// What bollard said.
        reason: String,
    },
    /// The engine did not answer the version negotiation.
    #[error(
        "the Docker engine at {host} does not answer: {reason}; check that Docker runs and \
         that this user may use its socket"
    )]
    Unreachable {
        /// Where we tried.
        host: String,
        /// What failed.
        reason: String,
    },
}

/// The Docker engine over bollard.
#[derive(Debug, Clone)]
pub struct BollardDocker {
    docker: Docker,
}

impl BollardDocker {
    /// Connects to `host` (a `unix://`, `tcp://` or `http://` URL), or to the local
    /// defaults (`DOCKER_HOST`, else `/var/run/docker.sock`) when `None`, and negotiates
    /// the API version down to what the engine speaks.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] when the URL is unusable or the engine does not answer.
    pub async fn connect(host: Option<&str>) -> Result<Self, ConnectError> {
        let shown = host.unwrap_or("the local default").to_owned();
        let docker = match host {
            Some(h) => Docker::connect_with_host(h),
            None => Docker::connect_with_defaults(),
        }
        .map_err(|e| ConnectError::BadHost {
            host: shown.clone(),
            reason: e.to_string(),
        })?
        .with_timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS));
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| ConnectError::Unreachable {
                host: shown,
                reason: e.to_string(),
            })?;
        Ok(BollardDocker { docker })
    }

    /// The bollard client, for callers that need more than [`DockerApi`].
    pub fn client(&self) -> &Docker {
        &self.docker
    }
}

/// Maps a bollard error to [`DockerError`] by HTTP status and, for pulls (whose errors
/// arrive in the stream), by Docker's wording.
fn map_error(error: BollardError) -> DockerError {
    match error {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => match status_code {
            404 => DockerError::NotFound(message),
            409 => DockerError::Conflict(message),
            401 | 403 => DockerError::Auth(message),
            _ => classify_message(message),
        },
        BollardError::DockerStreamError { error } => classify_message(error),
        BollardError::RequestTimeoutError => DockerError::Timeout("request timed out".into()),
        other => DockerError::Other(other.to_string()),
    }
}

fn classify_message(message: String) -> DockerError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("no basic auth credentials")
        || lower.contains("access denied")
        || lower.contains("denied:")
    {
        DockerError::Auth(message)
    } else if lower.contains("manifest unknown")
        || lower.contains("not found")
        || lower.contains("no such")
    {
        DockerError::NotFound(message)
    } else {
        DockerError::Other(message)
    }
}

/// Turns a not-found error into `Ok(None)`.
fn optional<T>(result: Result<T, BollardError>) -> Result<Option<T>, DockerError> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) => match map_error(e) {
            DockerError::NotFound(_) => Ok(None),
            other => Err(other),
        },
    }
}

fn port_key(port: u16, protocol: PortProtocol) -> String {
    format!("{port}/{}", protocol.as_str())
}

fn restart_to_bollard(policy: RestartPolicy) -> bollard::models::RestartPolicy {
    let (name, retries) = match policy {
        RestartPolicy::No => (RestartPolicyNameEnum::NO, None),
        RestartPolicy::Always => (RestartPolicyNameEnum::ALWAYS, None),
        RestartPolicy::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
        RestartPolicy::OnFailure { max_retries } => (
            RestartPolicyNameEnum::ON_FAILURE,
            Some(i64::from(max_retries)),
        ),
    };
    bollard::models::RestartPolicy {
        name: Some(name),
        maximum_retry_count: retries,
    }
}

fn restart_from_bollard(policy: Option<&bollard::models::RestartPolicy>) -> RestartPolicy {
    match policy.and_then(|p| p.name) {
        Some(RestartPolicyNameEnum::ALWAYS) => RestartPolicy::Always,
        Some(RestartPolicyNameEnum::UNLESS_STOPPED) => RestartPolicy::UnlessStopped,
        Some(RestartPolicyNameEnum::ON_FAILURE) => RestartPolicy::OnFailure {
            max_retries: policy
                .and_then(|p| p.maximum_retry_count)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
        },
        _ => RestartPolicy::No,
    }
}

fn bind_string(v: &VolumeMount) -> String {
    if v.read_only {
        format!("{}:{}:ro", v.source, v.dest)
    } else {
        format!("{}:{}", v.source, v.dest)
    }
}

fn parse_bind(bind: &str) -> Option<VolumeMount> {
    let mut parts = bind.split(':');
    let source = parts.next()?.to_owned();
    let dest = parts.next()?.to_owned();
    let read_only = parts
        .next()
        .is_some_and(|o| o.split(',').any(|f| f == "ro"));
    Some(VolumeMount {
        source,
        dest,
        read_only,
    })
}

fn parse_protocol(text: &str) -> PortProtocol {
    match text {
        "udp" => PortProtocol::Udp,
        "sctp" => PortProtocol::Sctp,
        _ => PortProtocol::Tcp,
    }
}

fn container_body(spec: &CreateSpec) -> ContainerCreateBody {
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for p in &spec.ports {
        bindings
            .entry(port_key(p.container, p.protocol))
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: p.host_ip.clone(),
                host_port: Some(p.host.to_string()),
            });
    }
    let exposed: Vec<String> = bindings.keys().cloned().collect();
    let host_config = HostConfig {
        binds: (!spec.volumes.is_empty()).then(|| spec.volumes.iter().map(bind_string).collect()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        restart_policy: Some(restart_to_bollard(spec.restart)),
        memory: spec.memory_bytes.and_then(|m| i64::try_from(m).ok()),
        nano_cpus: spec.nano_cpus.and_then(|n| i64::try_from(n).ok()),
        network_mode: spec.network.clone(),
        ..Default::default()
    };
    let networking_config = spec.network.as_ref().map(|n| NetworkingConfig {
        endpoints_config: Some(HashMap::from([(n.clone(), EndpointSettings::default())])),
    });
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.clone()),
        labels: Some(spec.labels.clone().into_iter().collect()),
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        networking_config,
        ..Default::default()
    }
}

fn container_info(r: bollard::models::ContainerInspectResponse) -> ContainerInfo {
    let state = r.state.unwrap_or_default();
    let health = state
        .health
        .as_ref()
        .and_then(|h| h.status)
        .and_then(|s| match s {
            HealthStatusEnum::STARTING => Some(ContainerHealth::Starting),
            HealthStatusEnum::HEALTHY => Some(ContainerHealth::Healthy),
            HealthStatusEnum::UNHEALTHY => Some(ContainerHealth::Unhealthy),
            HealthStatusEnum::NONE | HealthStatusEnum::EMPTY => None,
        });
    let status = state
        .status
        .unwrap_or(ContainerStateStatusEnum::EMPTY)
        .to_string();
    let config = r.config.unwrap_or_default();
    let host = r.host_config.unwrap_or_default();
    let mut ports = Vec::new();
    for (key, bindings) in host.port_bindings.iter().flatten() {
        let (port, proto) = key.split_once('/').unwrap_or((key.as_str(), "tcp"));
        let Ok(container) = port.parse::<u16>() else {
            continue;
        };
        for b in bindings.iter().flatten() {
            let host_port = b
                .host_port
                .as_deref()
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or(0);
            ports.push(PortMapping {
                host: host_port,
                container,
                protocol: parse_protocol(proto),
                host_ip: b.host_ip.clone().filter(|ip| !ip.is_empty()),
            });
        }
    }
    ports.sort_by_key(|p| (p.container, p.host));
    let mut networks: Vec<NetworkEndpoint> = r
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_iter()
        .map(|(network, e)| NetworkEndpoint {
            network,
            ip: e.ip_address.filter(|ip| !ip.is_empty()),
        })
        .collect();
    networks.sort_by(|a, b| a.network.cmp(&b.network));
    ContainerInfo {
        id: r.id.unwrap_or_default(),
        name: r
            .name
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_default(),
        image: config.image.unwrap_or_default(),
        image_id: r.image.unwrap_or_default(),
        labels: config
            .labels
            .unwrap_or_default()
            .into_iter()
            .collect::<BTreeMap<_, _>>(),
        state: ContainerState {
            status,
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            health,
            error: state.error.filter(|e| !e.is_empty()),
        },
        env: config.env.unwrap_or_default(),
        ports,
        volumes: host
            .binds
            .unwrap_or_default()
            .iter()
            .filter_map(|b| parse_bind(b))
            .collect(),
        networks,
        restart: restart_from_bollard(host.restart_policy.as_ref()),
        memory_bytes: host
            .memory
            .filter(|m| *m > 0)
            .and_then(|m| u64::try_from(m).ok()),
        nano_cpus: host
            .nano_cpus
            .filter(|n| *n > 0)
            .and_then(|n| u64::try_from(n).ok()),
    }
}

impl DockerApi for BollardDocker {
    async fn inspect_container(
        &self,
        container: &str,
    ) -> Result<Option<ContainerInfo>, DockerError> {
        let r = optional(
            self.docker
                .inspect_container(
                    container,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await,
        )?;
        Ok(r.map(container_info))
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, DockerError> {
        let r = optional(self.docker.inspect_image(reference).await)?;
        Ok(r.map(|i| ImageInfo {
            id: i.id.unwrap_or_default(),
            repo_digests: i.repo_digests.unwrap_or_default(),
            env: i.config.and_then(|c| c.env).unwrap_or_default(),
        }))
    }

    async fn pull(
        &self,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .build();
        let credentials = credentials.map(|c| DockerCredentials {
            username: Some(c.username.clone()),
            password: Some(c.password.clone()),
            serveraddress: Some(c.registry.clone()),
            ..Default::default()
        });
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            item.map_err(map_error)?;
        }
        Ok(())
    }

    async fn create_container(&self, name: &str, spec: &CreateSpec) -> Result<String, DockerError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), container_body(spec))
            .await
            .map_err(map_error)?;
        Ok(created.id)
    }

    async fn connect_network(&self, container: &str, network: &str) -> Result<(), DockerError> {
        self.docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: container.to_owned(),
                    endpoint_config: Some(EndpointSettings::default()),
                },
            )
            .await
            .map_err(map_error)
    }

    async fn start_container(&self, container: &str) -> Result<(), DockerError> {
        self.docker
            .start_container(
                container,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .map_err(map_error)
    }

    async fn stop_container(&self, container: &str, grace: Duration) -> Result<(), DockerError> {
        // Docker takes whole seconds: round up so a grace is never cut to nothing.
        let secs = grace.as_millis().div_ceil(1000);
        let secs = i32::try_from(secs).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(secs).build();
        self.docker
            .stop_container(container, Some(options))
            .await
            .map_err(map_error)
    }

    async fn rename_container(&self, container: &str, new_name: &str) -> Result<(), DockerError> {
        let options = RenameContainerOptionsBuilder::default()
            .name(new_name)
            .build();
        self.docker
            .rename_container(container, options)
            .await
            .map_err(map_error)
    }

    async fn remove_container(&self, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        self.docker
            .remove_container(container, Some(options))
            .await
            .map_err(map_error)
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, DockerError> {
        let lines = lines.min(MAX_LOG_LINES);
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&lines.to_string())
            .build();
        let mut stream = self.docker.logs(container, Some(options));
        let mut text = String::new();
        while let Some(item) = stream.next().await {
            let chunk = item.map_err(map_error)?;
            let room = MAX_LOG_BYTES.saturating_sub(text.len());
            let bytes = chunk.into_bytes();
            text.push_str(&String::from_utf8_lossy(&bytes[..bytes.len().min(room)]));
            if text.len() >= MAX_LOG_BYTES {
                text.push_str("\n[log output cut at 256 KiB]");
                break;
            }
        }
        let all: Vec<String> = text.lines().map(str::to_owned).collect();
        let skip = all.len().saturating_sub(lines);
        Ok(all.into_iter().skip(skip).collect())
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Result<i64, DockerError> {
        let created = self
            .docker
            .create_exec(
                container,
                CreateExecOptions {
                    cmd: Some(cmd.to_vec()),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(map_error)?;
        let started = self
            .docker
            .start_exec(&created.id, Some(StartExecOptions::default()))
            .await
            .map_err(map_error)?;
        if let StartExecResults::Attached { mut output, .. } = started {
            // Drain the output until the process ends (the stream closes), bounded.
            let mut read = 0usize;
            while let Some(chunk) = output.next().await {
                let chunk = chunk.map_err(map_error)?;
                read = read.saturating_add(chunk.into_bytes().len());
                if read > MAX_EXEC_OUTPUT {
                    break;
                }
            }
        }
        let inspect = self
            .docker
            .inspect_exec(&created.id)
            .await
            .map_err(map_error)?;
        inspect.exit_code.ok_or_else(|| {
            DockerError::Other(format!(
                "exec {:?} in {container} has no exit code (still running)",
                cmd
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified() {
        let e = |code, msg: &str| BollardError::DockerResponseServerError {
            status_code: code,
            message: msg.into(),
        };
        assert!(matches!(map_error(e(404, "x")), DockerError::NotFound(_)));
        assert!(matches!(map_error(e(409, "x")), DockerError::Conflict(_)));
        assert!(matches!(
            map_error(e(
                500,
                "Head https://r/v2/x/manifests/sha256:1: unauthorized"
            )),
            DockerError::Auth(_)
        ));
        assert!(matches!(
            map_error(e(500, "manifest unknown")),
            DockerError::NotFound(_)
        ));
        assert!(matches!(
            map_error(e(500, "disk full")),
            DockerError::Other(_)
        ));
    }

    #[test]
    fn binds_round_trip() {
        let v = VolumeMount {
            source: "/data".into(),
            dest: "/srv".into(),
            read_only: true,
        };
        assert_eq!(parse_bind(&bind_string(&v)), Some(v));
        assert_eq!(parse_bind("nope"), None);
    }

    #[test]
    fn restart_round_trip() {
        for p in [
            RestartPolicy::No,
            RestartPolicy::Always,
            RestartPolicy::UnlessStopped,
            RestartPolicy::OnFailure { max_retries: 4 },
        ] {
            assert_eq!(restart_from_bollard(Some(&restart_to_bollard(p))), p);
        }
    }
}
