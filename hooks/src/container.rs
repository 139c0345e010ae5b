//! Container hooks: a sandboxed container from an image pulled by digest.
//!
//! The container gets `NetworkMode: none`, a read-only root file system (with a small
//! `noexec` tmpfs on `/tmp`), memory (swap included), CPU and process-count limits, every
//! capability dropped, `no-new-privileges`, an unprivileged user, and no binds, volumes or
//! devices (so no Docker socket). The contract's JSON goes to its stdin (attached,
//! `StdinOnce`); its stdout is read up to [`MAX_STDOUT`](crate::MAX_STDOUT). It is killed
//! past the hook's timeout and removed afterwards in every case (also when the future
//! running it is dropped).

use std::collections::HashMap;
use std::time::Instant;

use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{HookSource, ImageRef};

use crate::contract::HookReport;
use crate::output::Collected;
use crate::{HookError, HookRequest};

/// Label on every hook container (`true`), so stray ones can be found.
pub const LABEL_HOOK: &str = "wharf.hook";

/// Label with the target (container or Compose project) a hook container runs for.
pub const LABEL_HOOK_TARGET: &str = "wharf.hook.target";

/// Resource limits of hook containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Memory limit in bytes; swap is limited to the same (no swap).
    pub memory_bytes: i64,
    /// CPU limit in 10^-9 CPUs.
    pub nano_cpus: i64,
    /// Most processes (threads) in the container.
    pub pids: i64,
    /// The user the hook runs as (`UID:GID`).
    pub user: String,
    /// Size of the `noexec` tmpfs on `/tmp`, in bytes.
    pub tmp_bytes: u64,
}

impl Default for SandboxLimits {
    /// 256 MiB of memory, one CPU, 128 processes, user `65534:65534` (nobody), 16 MiB of
    /// `/tmp`.
    fn default() -> Self {
        SandboxLimits {
            memory_bytes: 256 << 20,
            nano_cpus: 1_000_000_000,
            pids: 128,
            user: "65534:65534".into(),
            tmp_bytes: 16 << 20,
        }
    }
}

/// Runs container hooks on a Docker engine.
#[derive(Debug, Clone)]
pub struct ContainerHooks {
    docker: Docker,
    limits: SandboxLimits,
}

/// Removes the hook container when dropped before [`RemoveGuard::remove`] ran (the
/// running future was dropped, e.g. on cancel).
struct RemoveGuard {
    docker: Docker,
    id: Option<String>,
}

impl RemoveGuard {
    async fn remove(mut self) -> Result<(), BollardError> {
        match self.id.take() {
            Some(id) => remove(&self.docker, &id).await,
            None => Ok(()),
        }
    }
}

impl Drop for RemoveGuard {
    fn drop(&mut self) {
        if let (Some(id), Ok(handle)) = (self.id.take(), tokio::runtime::Handle::try_current()) {
            let docker = self.docker.clone();
            handle.spawn(async move {
                if let Err(e) = remove(&docker, &id).await {
                    tracing::warn!(container = %id, error = %e, "cannot remove a hook container");
                }
            });
        }
    }
}

async fn remove(docker: &Docker, id: &str) -> Result<(), BollardError> {
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(id, Some(options)).await {
        Err(BollardError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        other => other,
    }
}

fn docker_error(what: &str, e: BollardError) -> HookError {
    HookError::Docker(format!("{what}: {e}"))
}

fn is_auth(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "denied",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

impl ContainerHooks {
    /// Hooks on `docker` with the default [`SandboxLimits`].
    pub fn new(docker: Docker) -> Self {
        ContainerHooks {
            docker,
            limits: SandboxLimits::default(),
        }
    }

    /// The same runner with `limits`.
    pub fn with_limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits hook containers get.
    pub fn limits(&self) -> &SandboxLimits {
        &self.limits
    }

    /// Pulls `image` by digest (with `credentials` if they are for its registry) and
    /// checks that Docker lists `repo@digest` in its `RepoDigests`. A failed pull falls
    /// back to a local copy verified the same way.
    pub async fn pull_verified(
        &self,
        image: &ImageRef,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<(), HookError> {
        let pinned = image.pinned();
        let registry = image.registry().unwrap_or("docker.io");
        let credentials = credentials
            .filter(|c| c.registry.trim_end_matches('/') == registry)
            .map(|c| DockerCredentials {
                username: Some(c.username.clone()),
                password: Some(c.password.clone()),
                serveraddress: Some(c.registry.clone()),
                ..Default::default()
            });
        let options = CreateImageOptionsBuilder::default()
            .from_image(&pinned)
            .build();
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        let mut pull_error = None;
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                pull_error = Some(e.to_string());
                break;
            }
        }
        let verified = self.verify_local(&pinned).await;
        match (pull_error, verified) {
            (_, Ok(())) => Ok(()),
            (Some(reason), Err(_)) if is_auth(&reason) => Err(HookError::RegistryAuth {
                image: pinned,
                reason,
            }),
            (Some(reason), Err(_)) => Err(HookError::Pull {
                image: pinned,
                reason,
            }),
            (None, Err(e)) => Err(e),
        }
    }

    async fn verify_local(&self, pinned: &str) -> Result<(), HookError> {
        match self.docker.inspect_image(pinned).await {
            Ok(info) => {
                let repo_digests = info.repo_digests.unwrap_or_default();
                if repo_digests.iter().any(|d| d == pinned) {
                    Ok(())
                } else {
                    Err(HookError::DigestMismatch {
                        image: pinned.to_owned(),
                        repo_digests,
                    })
                }
            }
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Err(HookError::Pull {
                image: pinned.to_owned(),
                reason: "Docker has no such image after the pull".into(),
            }),
            Err(e) => Err(docker_error("cannot inspect the hook image", e)),
        }
    }

    fn body(&self, request: &HookRequest<'_>, pinned: String) -> ContainerCreateBody {
        let l = &self.limits;
        let host_config = HostConfig {
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            memory: Some(l.memory_bytes),
            memory_swap: Some(l.memory_bytes),
            nano_cpus: Some(l.nano_cpus),
            pids_limit: Some(l.pids),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            tmpfs: Some(HashMap::from([(
                "/tmp".to_owned(),
                format!("rw,noexec,nosuid,nodev,size={}", l.tmp_bytes),
            )])),
            privileged: Some(false),
            auto_remove: Some(false),
            ..Default::default()
        };
        let spec = request.spec;
        ContainerCreateBody {
            image: Some(pinned),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: Some(l.user.clone()),
            labels: Some(HashMap::from([
                (LABEL_HOOK.to_owned(), "true".to_owned()),
                (
                    "wharf.hook.phase".to_owned(),
                    request.input.phase.as_str().to_owned(),
                ),
                (LABEL_HOOK_TARGET.to_owned(), request.input.target.clone()),
            ])),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            network_disabled: Some(true),
            host_config: Some(host_config),
            ..Default::default()
        }
    }

    /// Removes (forced) every hook container left for `target` by an agent run that died
    /// during a hook (a kill leaves no time for the removal); returns how many. A target
    /// runs one task at a time, so none of them belongs to a live run.
    ///
    /// # Errors
    ///
    /// [`HookError::Docker`] when the engine cannot list or remove them.
    pub async fn remove_strays(&self, target: &str) -> Result<usize, HookError> {
        let filters = HashMap::from([(
            "label",
            vec![
                format!("{LABEL_HOOK}=true"),
                format!("{LABEL_HOOK_TARGET}={target}"),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let strays = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|e| docker_error("cannot list left-over hook containers", e))?;
        let mut removed = 0;
        for id in strays.into_iter().filter_map(|c| c.id) {
            remove(&self.docker, &id)
                .await
                .map_err(|e| docker_error("cannot remove a left-over hook container", e))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Pulls the hook's image, runs it in the sandbox and judges its answer. Hook
    /// containers left for the same target by a killed agent are removed first.
    pub async fn run(&self, request: HookRequest<'_>) -> Result<HookReport, HookError> {
        crate::check_spec(request.spec)?;
        let HookSource::Image(text) = &request.spec.source else {
            return Err(HookError::InvalidSpec(
                "not a container hook (it names a host command)".into(),
            ));
        };
        let image = ImageRef::parse(text).map_err(|e| {
            HookError::InvalidSpec(format!("its image must be IMAGE@sha256:DIGEST: {e}"))
        })?;
        self.pull_verified(&image, request.credentials).await?;
        let strays = self.remove_strays(&request.input.target).await?;
        if strays > 0 {
            tracing::info!(target = %request.input.target, strays, "removed hook containers of an earlier agent run");
        }
        let stdin = serde_json::to_vec(request.input)
            .map_err(|e| HookError::InvalidSpec(format!("its input does not serialize: {e}")))?;
        let name = format!("wharf-hook-{}", uuid::Uuid::new_v4().simple());
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .docker
            .create_container(Some(options), self.body(&request, image.pinned()))
            .await
            .map_err(|e| docker_error("cannot create the hook container", e))?;
        let guard = RemoveGuard {
            docker: self.docker.clone(),
            id: Some(created.id.clone()),
        };
        let timeout = request.spec.timeout.as_duration();
        let began = Instant::now();
        let mut collected = Collected::default();
        let ran = tokio::time::timeout(
            timeout,
            self.attach_and_wait(&created.id, &stdin, &mut collected),
        )
        .await;
        let duration = began.elapsed();
        // Removal (forced) also kills a hook still running past its timeout.
        let removed = guard.remove().await;
        let exit_code = match ran {
            Err(_elapsed) => {
                return Err(HookError::TimedOut {
                    timeout,
                    logs: collected.logs(),
                })
            }
            Ok(Err(e)) => return Err(e),
            Ok(Ok(code)) => code,
        };
        if let Err(e) = removed {
            tracing::warn!(container = %name, error = %e, "cannot remove a hook container");
        }
        let (out, logs) = collected.judge(exit_code)?;
        Ok(HookReport {
            message: out.message,
            outputs: out.outputs,
            duration,
            logs,
        })
    }

    /// Attaches, starts the container, writes `stdin`, reads its output into `collected`
    /// (stopping at the cap) and returns its exit status (`-1` when stopped at the cap).
    async fn attach_and_wait(
        &self,
        id: &str,
        stdin: &[u8],
        collected: &mut Collected,
    ) -> Result<i64, HookError> {
        let options = AttachContainerOptionsBuilder::default()
            .stdin(true)
            .stdout(true)
            .stderr(true)
            .stream(true)
            .build();
        let mut attached = self
            .docker
            .attach_container(id, Some(options))
            .await
            .map_err(|e| docker_error("cannot attach to the hook container", e))?;
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(|e| docker_error("cannot start the hook container", e))?;
        // A hook that exits without reading its input is judged by what it printed.
        let _ = attached.input.write_all(stdin).await;
        let _ = attached.input.write_all(b"\n").await;
        let _ = attached.input.shutdown().await;
        drop(attached.input);
        while let Some(item) = attached.output.next().await {
            match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    if !collected.stdout(&message) {
                        return Ok(-1);
                    }
                }
                Ok(LogOutput::StdErr { message }) => collected.stderr(&message),
                Ok(LogOutput::StdIn { .. }) => {}
                Err(e) => return Err(docker_error("reading the hook's output failed", e)),
            }
        }
        let mut wait = self
            .docker
            .wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(docker_error("waiting for the hook container failed", e)),
            None => Err(HookError::Docker(
                "the engine ended the wait for the hook container without a status".into(),
            )),
        }
    }
}
