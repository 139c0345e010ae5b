//! An in-memory Docker host behind [`DockerApi`], for the executor's unit tests:
//! containers with names, labels and state; a registry of pullable references; local
//! images with repo digests; injectable failures.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use wharf_protocol::seal::RegistryCredentials;

use super::api::{
    ContainerHealth, ContainerInfo, ContainerState, CreateSpec, DockerApi, DockerError, ImageInfo,
    NetworkEndpoint,
};

/// How a container of an image behaves once started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs and reports healthy.
    Healthy,
    /// Runs and reports unhealthy.
    Unhealthy,
    /// Exits with code 1 at once.
    Crashes,
    /// Runs, but its health check never leaves `starting`.
    Starting,
}

/// An image in the fake registry.
#[derive(Debug, Clone)]
struct RegistryImage {
    behaviour: Behaviour,
    /// What the local image's RepoDigests will say (normally the pinned reference).
    repo_digests: Vec<String>,
    /// Password the registry wants, if any.
    password: Option<String>,
}

/// One injected failure: `op` on a container whose name or id is `container` (any if
/// `None`) fails with `error`, `times` times.
#[derive(Debug, Clone)]
struct Fault {
    op: &'static str,
    container: Option<String>,
    error: DockerError,
    times: u32,
}

#[derive(Debug, Default)]
struct Host {
    containers: Vec<ContainerInfo>,
    behaviour: BTreeMap<String, Behaviour>,
    registry: BTreeMap<String, RegistryImage>,
    local: BTreeMap<String, ImageInfo>,
    faults: Vec<Fault>,
    calls: Vec<String>,
    next_id: u64,
}

/// The fake host. All state sits behind one mutex; no call awaits while holding it.
#[derive(Debug, Default)]
pub struct FakeDocker {
    host: Mutex<Host>,
}

impl FakeDocker {
    fn with<T>(&self, f: impl FnOnce(&mut Host) -> T) -> T {
        let mut host = self.host.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut host)
    }

    /// Puts `reference` (`repo@sha256:...`) into the registry.
    pub fn publish(&self, reference: &str, behaviour: Behaviour) {
        self.with(|h| {
            h.registry.insert(
                reference.to_owned(),
                RegistryImage {
                    behaviour,
                    repo_digests: vec![reference.to_owned()],
                    password: None,
                },
            )
        });
    }

    /// The registry wants `password` for `reference`.
    pub fn require_password(&self, reference: &str, password: &str) {
        self.with(|h| {
            if let Some(i) = h.registry.get_mut(reference) {
                i.password = Some(password.to_owned());
            }
        });
    }

    /// The image of `reference` is served with other RepoDigests (a lying registry or a
    /// bad local cache).
    pub fn serve_repo_digests(&self, reference: &str, digests: Vec<String>) {
        self.with(|h| {
            if let Some(i) = h.registry.get_mut(reference) {
                i.repo_digests = digests;
            }
        });
    }

    /// Makes the next `times` calls of `op` (`pull`, `create`, `start`, `stop`, `rename`,
    /// `remove`, `logs`, `exec`, `connect`) on `container` (any if `None`) fail.
    pub fn fail(&self, op: &'static str, container: Option<&str>, error: DockerError, times: u32) {
        self.with(|h| {
            h.faults.push(Fault {
                op,
                container: container.map(str::to_owned),
                error,
                times,
            })
        });
    }

    /// Every operation that changed something, in order (`rename a b`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.with(|h| h.calls.clone())
    }

    /// The container named `name`.
    pub fn get(&self, name: &str) -> Option<ContainerInfo> {
        self.with(|h| h.containers.iter().find(|c| c.name == name).cloned())
    }

    /// Every container.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.with(|h| h.containers.clone())
    }

    /// Adds a container as if created and started outside Wharf (or by an older deploy).
    pub fn add_container(&self, name: &str, image: &str, labels: &[(&str, &str)], running: bool) {
        self.with(|h| {
            h.next_id += 1;
            let id = format!("{:064x}", h.next_id);
            let behaviour = h
                .registry
                .get(image)
                .map_or(Behaviour::Healthy, |i| i.behaviour);
            h.behaviour.insert(id.clone(), behaviour);
            h.local
                .entry(image.to_owned())
                .or_insert_with(|| ImageInfo {
                    id: format!("sha256:local-{image}"),
                    repo_digests: vec![image.to_owned()],
                    env: vec!["IMAGE_ENV=1".into()],
                });
            h.containers.push(ContainerInfo {
                id,
                name: name.to_owned(),
                image: image.to_owned(),
                image_id: format!("sha256:local-{image}"),
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                state: state(running, behaviour),
                env: vec!["IMAGE_ENV=1".into(), "APP=1".into()],
                networks: vec![NetworkEndpoint {
                    network: "bridge".into(),
                    ip: None,
                }],
                ..Default::default()
            });
        });
    }
}

fn state(running: bool, behaviour: Behaviour) -> ContainerState {
    if !running {
        return ContainerState {
            status: "exited".into(),
            running: false,
            exit_code: Some(0),
            health: None,
            error: None,
        };
    }
    match behaviour {
        Behaviour::Healthy => ContainerState {
            status: "running".into(),
            running: true,
            exit_code: None,
            health: Some(ContainerHealth::Healthy),
            error: None,
        },
        Behaviour::Unhealthy => ContainerState {
            status: "running".into(),
            running: true,
            exit_code: None,
            health: Some(ContainerHealth::Unhealthy),
            error: None,
        },
        Behaviour::Starting => ContainerState {
            status: "running".into(),
            running: true,
            exit_code: None,
            health: Some(ContainerHealth::Starting),
            error: None,
        },
        Behaviour::Crashes => ContainerState {
            status: "exited".into(),
            running: false,
            exit_code: Some(1),
            health: None,
            error: None,
        },
    }
}

impl Host {
    fn fault(&mut self, op: &str, container: &str) -> Result<(), DockerError> {
        let idx = self.faults.iter().position(|f| {
            f.op == op
                && f.times > 0
                && f.container.as_deref().is_none_or(|c| {
                    c == container
                        || self
                            .find(container)
                            .is_some_and(|i| self.containers[i].name == c)
                })
        });
        if let Some(i) = idx {
            self.faults[i].times -= 1;
            return Err(self.faults[i].error.clone());
        }
        Ok(())
    }

    fn find(&self, container: &str) -> Option<usize> {
        self.containers
            .iter()
            .position(|c| c.name == container || c.id == container)
    }

    fn get(&mut self, container: &str) -> Result<usize, DockerError> {
        self.find(container)
            .ok_or_else(|| DockerError::NotFound(format!("No such container: {container}")))
    }
}

impl DockerApi for FakeDocker {
    async fn inspect_container(
        &self,
        container: &str,
    ) -> Result<Option<ContainerInfo>, DockerError> {
        self.with(|h| {
            h.fault("inspect", container)?;
            Ok(h.find(container).map(|i| h.containers[i].clone()))
        })
    }

    async fn inspect_image(&self, reference: &str) -> Result<Option<ImageInfo>, DockerError> {
        self.with(|h| {
            Ok(h.local
                .get(reference)
                .cloned()
                .or_else(|| h.local.values().find(|i| i.id == reference).cloned()))
        })
    }

    async fn pull(
        &self,
        reference: &str,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), DockerError> {
        self.with(|h| {
            h.fault("pull", reference)?;
            let Some(image) = h.registry.get(reference).cloned() else {
                return Err(DockerError::NotFound(format!(
                    "manifest unknown: {reference}"
                )));
            };
            if let Some(p) = &image.password {
                if credentials.map(|c| c.password.as_str()) != Some(p.as_str()) {
                    return Err(DockerError::Auth(
                        "unauthorized: authentication required".into(),
                    ));
                }
            }
            h.calls.push(format!("pull {reference}"));
            h.local.insert(
                reference.to_owned(),
                ImageInfo {
                    id: format!("sha256:local-{reference}"),
                    repo_digests: image.repo_digests.clone(),
                    env: vec!["IMAGE_ENV=1".into()],
                },
            );
            Ok(())
        })
    }

    async fn create_container(&self, name: &str, spec: &CreateSpec) -> Result<String, DockerError> {
        self.with(|h| {
            h.fault("create", name)?;
            if h.find(name).is_some() {
                return Err(DockerError::Conflict(format!("name {name} is in use")));
            }
            let Some(image) = h.local.get(&spec.image).cloned() else {
                return Err(DockerError::NotFound(format!(
                    "No such image: {}",
                    spec.image
                )));
            };
            h.next_id += 1;
            let id = format!("{:064x}", h.next_id);
            let behaviour = h
                .registry
                .get(&spec.image)
                .map_or(Behaviour::Healthy, |i| i.behaviour);
            h.behaviour.insert(id.clone(), behaviour);
            let mut env = image.env.clone();
            env.extend(spec.env.iter().cloned());
            h.containers.push(ContainerInfo {
                id: id.clone(),
                name: name.to_owned(),
                image: spec.image.clone(),
                image_id: image.id.clone(),
                labels: spec.labels.clone(),
                state: ContainerState {
                    status: "created".into(),
                    ..Default::default()
                },
                env,
                ports: spec.ports.clone(),
                volumes: spec.volumes.clone(),
                networks: vec![NetworkEndpoint {
                    network: spec.network.clone().unwrap_or_else(|| "bridge".into()),
                    ip: None,
                }],
                restart: spec.restart,
                memory_bytes: spec.memory_bytes,
                nano_cpus: spec.nano_cpus,
            });
            h.calls.push(format!("create {name} {}", spec.image));
            Ok(id)
        })
    }

    async fn connect_network(&self, container: &str, network: &str) -> Result<(), DockerError> {
        self.with(|h| {
            h.fault("connect", container)?;
            let i = h.get(container)?;
            h.containers[i].networks.push(NetworkEndpoint {
                network: network.to_owned(),
                ip: None,
            });
            Ok(())
        })
    }

    async fn start_container(&self, container: &str) -> Result<(), DockerError> {
        self.with(|h| {
            h.fault("start", container)?;
            let i = h.get(container)?;
            let id = h.containers[i].id.clone();
            let behaviour = h.behaviour.get(&id).copied().unwrap_or(Behaviour::Healthy);
            h.containers[i].state = state(true, behaviour);
            let name = h.containers[i].name.clone();
            h.calls.push(format!("start {name}"));
            Ok(())
        })
    }

    async fn stop_container(&self, container: &str, _grace: Duration) -> Result<(), DockerError> {
        self.with(|h| {
            h.fault("stop", container)?;
            let i = h.get(container)?;
            h.containers[i].state = state(false, Behaviour::Healthy);
            let name = h.containers[i].name.clone();
            h.calls.push(format!("stop {name}"));
            Ok(())
        })
    }

    async fn rename_container(&self, container: &str, new_name: &str) -> Result<(), DockerError> {
        self.with(|h| {
            h.fault("rename", container)?;
            let i = h.get(container)?;
            if let Some(j) = h.find(new_name) {
                if j != i {
                    return Err(DockerError::Conflict(format!("name {new_name} is in use")));
                }
            }
            let old = std::mem::replace(&mut h.containers[i].name, new_name.to_owned());
            h.calls.push(format!("rename {old} {new_name}"));
            Ok(())
        })
    }

    async fn remove_container(&self, container: &str) -> Result<(), DockerError> {
        self.with(|h| {
            h.fault("remove", container)?;
            let i = h.get(container)?;
            let c = h.containers.remove(i);
            h.calls.push(format!("remove {}", c.name));
            Ok(())
        })
    }

    async fn logs_tail(&self, container: &str, lines: usize) -> Result<Vec<String>, DockerError> {
        self.with(|h| {
            h.fault("logs", container)?;
            let i = h.get(container)?;
            let c = &h.containers[i];
            let all = vec![
                format!("{} starting", c.image),
                format!("{} failing", c.image),
            ];
            let skip = all.len().saturating_sub(lines);
            Ok(all.into_iter().skip(skip).collect())
        })
    }

    async fn exec(&self, container: &str, cmd: &[String]) -> Result<i64, DockerError> {
        self.with(|h| {
            h.fault("exec", container)?;
            let i = h.get(container)?;
            let id = h.containers[i].id.clone();
            let ok = h.behaviour.get(&id) == Some(&Behaviour::Healthy) && !cmd.is_empty();
            Ok(if ok { 0 } else { 1 })
        })
    }
}
