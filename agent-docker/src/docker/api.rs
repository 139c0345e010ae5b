//! The Docker operations the executor needs, behind a trait ([`DockerApi`]) so that the
//! executor is unit-tested over an in-memory host and run over bollard in the agent.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{PortMapping, RestartPolicy, VolumeMount};

/// Why a Docker operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerError {
    /// The container, image or manifest does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The operation conflicts with the current state (a name in use, a container running).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The registry refused the credentials, or needs some and got none.
    #[error("registry authentication failed: {0}")]
    Auth(String),
    /// The Docker engine did not answer in time.
    #[error("the Docker engine did not answer in time: {0}")]
    Timeout(String),
    /// Any other failure of the engine or of the connection to it.
    #[error("{0}")]
    Other(String),
}

impl DockerError {
    /// Whether the error says the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DockerError::NotFound(_))
    }
}

/// Docker's health status of a container with a `HEALTHCHECK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContainerHealth {
    /// Within the start period, or no probe has decided yet.
    Starting,
    /// The last probes passed.
    Healthy,
    /// Too many probes failed in a row.
    Unhealthy,
}

impl ContainerHealth {
    /// Docker's lowercase name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ContainerHealth::Starting => "starting",
            ContainerHealth::Healthy => "healthy",
            ContainerHealth::Unhealthy => "unhealthy",
        }
    }
}

/// The run state of a container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerState {
    /// Docker's status word: `created`, `running`, `exited`, `restarting`, ...
    pub status: String,
    /// Whether the container's process runs.
    pub running: bool,
    /// Exit code of the last run, if it ended.
    pub exit_code: Option<i64>,
    /// Docker's `HEALTHCHECK` status; `None` when the container has no health check.
    pub health: Option<ContainerHealth>,
    /// An error Docker recorded when starting the container, if any.
    pub error: Option<String>,
}

/// One network a container is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkEndpoint {
    /// Network name (`bridge`, or a user network).
    pub network: String,
    /// The container's IPv4 address there, if it has one (it is running).
    pub ip: Option<String>,
}

/// What `docker container inspect` says about one container, as far as Wharf needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Full container id.
    pub id: String,
    /// Name, without Docker's leading `/`.
    pub name: String,
    /// The image reference the container was created from (`Config.Image`).
    pub image: String,
    /// The image id (`sha256:...` of the local image config).
    pub image_id: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Run state and health.
    pub state: ContainerState,
    /// Environment (`KEY=VALUE`), including what the image set.
    pub env: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Bind mounts and named volumes (`HostConfig.Binds`).
    pub volumes: Vec<VolumeMount>,
    /// Attached networks, in Docker's order.
    pub networks: Vec<NetworkEndpoint>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Memory limit in bytes, if any.
    pub memory_bytes: Option<u64>,
    /// CPU limit in 10^-9 CPUs, if any.
    pub nano_cpus: Option<u64>,
}

impl ContainerInfo {
    /// The label value, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }

    /// The first IPv4 address the container has on any network.
    pub fn ip(&self) -> Option<&str> {
        self.networks.iter().find_map(|n| n.ip.as_deref())
    }
}

/// What `docker image inspect` says about one image.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ImageInfo {
    /// Image id.
    pub id: String,
    /// `repo@sha256:...` references the image was pulled by or pushed as.
    pub repo_digests: Vec<String>,
    /// Environment the image sets (`KEY=VALUE`).
    pub env: Vec<String>,
}

/// Everything a container is created with.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateSpec {
    /// The image reference, always `repo@sha256:<hex>`.
    pub image: String,
    /// Environment (`KEY=VALUE`).
    pub env: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Bind mounts and named volumes.
    pub volumes: Vec<VolumeMount>,
    /// The network to create the container on (Docker's default bridge if `None`); more
    /// are connected with [`DockerApi::connect_network`].
    pub network: Option<String>,
    /// Restart policy.
    pub restart: RestartPolicy,
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in 10^-9 CPUs.
    pub nano_cpus: Option<u64>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
}

/// The Docker operations of the executor. `container` arguments are names or ids.
///
/// Every method is cancel-safe in the sense that dropping the future leaves Docker in a
/// state that a later `inspect_container` describes truthfully.
pub trait DockerApi: Send + Sync + 'static {
    /// Inspects a container; `Ok(None)` when there is none by that name or id.
    fn inspect_container(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, DockerError>> + Send;

    /// Inspects a local image; `Ok(None)` when there is none.
    fn inspect_image(
        &self,
        reference: &str,
    ) -> impl Future<Output = Result<Option<ImageInfo>, DockerError>> + Send;

    /// Pulls `reference` (`repo@sha256:...`), with registry credentials if given.
    fn pull(
        &self,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Creates (does not start) container `name`; returns its id.
    fn create_container(
        &self,
        name: &str,
        spec: &CreateSpec,
    ) -> impl Future<Output = Result<String, DockerError>> + Send;

    /// Connects a container to one more network.
    fn connect_network(
        &self,
        container: &str,
        network: &str,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Starts a container; starting a running one succeeds.
    fn start_container(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`. Stopping a stopped one
    /// succeeds.
    fn stop_container(
        &self,
        container: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Renames a container.
    fn rename_container(
        &self,
        container: &str,
        new_name: &str,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// Removes a container (forcefully, with its anonymous volumes).
    fn remove_container(
        &self,
        container: &str,
    ) -> impl Future<Output = Result<(), DockerError>> + Send;

    /// The last `lines` lines of the container's stdout and stderr.
    fn logs_tail(
        &self,
        container: &str,
        lines: usize,
    ) -> impl Future<Output = Result<Vec<String>, DockerError>> + Send;

    /// Runs `cmd` in the running container and returns its exit code.
    fn exec(
        &self,
        container: &str,
        cmd: &[String],
    ) -> impl Future<Output = Result<i64, DockerError>> + Send;
}
