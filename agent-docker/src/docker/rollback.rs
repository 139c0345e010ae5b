//! The rollback task (design §4): swap `<name>-previous` back in when it exists, else
//! deploy the digest the sticker records as `previous` (or `--to`).
//!
//! The swap has its own small step plan ([`SwapPlan`]), a pure state machine like
//! [`crate::plan::DeployPlan`]. Containers are addressed by id, and the renames are one
//! idempotent "arrange" step, so after a crash the undo path can always be run again from
//! its start:
//!
//! ```text
//! stop-current ─► swap-in ─► start-previous ─► wait-healthy ─► write-sticker ─► done
//! failure/cancel/crash: collect-logs ─► stop-restored ─► swap-back ─► start-current
//!                       ─► wait-current-healthy ─► rolled back (what ran before runs)
//! ```

use std::collections::BTreeMap;
use std::time::Instant as StdInstant;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use wharf_protocol::{
    AgentTask, DeploySpec, Digest, ErrorType, ImageRef, ReleaseInfo, RollbackSpec, TaskMetrics,
    TaskResult, Timestamp,
};

use super::api::{ContainerInfo, DockerApi, DockerError};
use super::deploy::{check_sticker, running_digest, task_deadline, StepError};
use super::{
    failed, fault, health, previous_name, swap_name, DockerExecutor, Journal, Operation,
    StopReason, JOURNAL_VERSION,
};
use crate::runtime::TaskContext;

/// One step of a rollback swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SwapStep {
    /// Stop the running `<name>`.
    StopCurrent,
    /// Rename: the previous container becomes `<name>`, the current `<name>-previous`.
    SwapIn,
    /// Start the restored container.
    StartPrevious,
    /// Wait until it is healthy.
    WaitHealthy,
    /// Write the rollback's sticker.
    WriteSticker,
    /// Keep the failed container's last log lines.
    CollectLogs,
    /// Stop the container that failed to come back.
    StopRestored,
    /// Rename both back as they were.
    SwapBack,
    /// Start what ran before the rollback.
    StartCurrent,
    /// Wait until it is healthy again.
    WaitCurrentHealthy,
}

impl SwapStep {
    /// The kebab-case name, for progress lines, the journal and fault injection.
    pub const fn as_str(self) -> &'static str {
        match self {
            SwapStep::StopCurrent => "stop-current",
            SwapStep::SwapIn => "swap-in",
            SwapStep::StartPrevious => "start-previous",
            SwapStep::WaitHealthy => "wait-healthy",
            SwapStep::WriteSticker => "write-sticker",
            SwapStep::CollectLogs => "collect-logs",
            SwapStep::StopRestored => "stop-restored",
            SwapStep::SwapBack => "swap-back",
            SwapStep::StartCurrent => "start-current",
            SwapStep::WaitCurrentHealthy => "wait-current-healthy",
        }
    }
}

/// A failed swap step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapFailure {
    /// The step.
    pub step: SwapStep,
    /// What went wrong.
    pub message: String,
}

/// How a swap ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwapEnding {
    /// The previous container runs as `<name>` and is healthy.
    Succeeded,
    /// Cancelled before anything changed.
    Unchanged(SwapFailure),
    /// What ran before the rollback runs again.
    RolledBack(SwapFailure),
    /// The undo failed too.
    RestoreFailed {
        /// Why the swap failed.
        cause: SwapFailure,
        /// Why the undo failed.
        restore: SwapFailure,
    },
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SwapNext {
    /// Journal, take and report this step.
    Take(SwapStep),
    /// Over.
    Finished(SwapEnding),
}

/// The swap's step plan; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwapPlan {
    /// Id of the container running as `<name>` before the rollback, if any.
    pub current: Option<String>,
    /// Whether it was running.
    pub current_was_running: bool,
    /// Id of `<name>-previous`.
    pub previous: String,
    sticker: bool,
    forward: bool,
    index: usize,
    in_progress: bool,
    started_restored: bool,
    cancelled: bool,
    cause: Option<SwapFailure>,
    ending: Option<SwapEnding>,
}

impl SwapPlan {
    /// A plan to swap `previous` in for `current`.
    pub fn new(current: Option<(String, bool)>, previous: String, sticker: bool) -> Self {
        let (current, current_was_running) = match current {
            Some((id, running)) => (Some(id), running),
            None => (None, false),
        };
        SwapPlan {
            current,
            current_was_running,
            previous,
            sticker,
            forward: true,
            index: 0,
            in_progress: false,
            started_restored: false,
            cancelled: false,
            cause: None,
            ending: None,
        }
    }

    fn steps(&self) -> Vec<SwapStep> {
        let mut s = Vec::new();
        if self.forward {
            if self.current.is_some() {
                s.push(SwapStep::StopCurrent);
            }
            s.extend([
                SwapStep::SwapIn,
                SwapStep::StartPrevious,
                SwapStep::WaitHealthy,
            ]);
            if self.sticker {
                s.push(SwapStep::WriteSticker);
            }
        } else {
            if self.started_restored {
                s.push(SwapStep::CollectLogs);
            }
            s.extend([SwapStep::StopRestored, SwapStep::SwapBack]);
            if self.current.is_some() && self.current_was_running {
                s.extend([SwapStep::StartCurrent, SwapStep::WaitCurrentHealthy]);
            }
        }
        s
    }

    fn start_undo(&mut self, cause: SwapFailure) {
        self.cause = Some(cause);
        self.forward = false;
        self.index = 0;
        self.in_progress = false;
    }

    /// The next step or the ending.
    pub fn next_step(&mut self) -> SwapNext {
        if let Some(e) = &self.ending {
            return SwapNext::Finished(e.clone());
        }
        if self.forward && self.cancelled && !self.in_progress {
            let failure = SwapFailure {
                step: self
                    .steps()
                    .get(self.index)
                    .copied()
                    .unwrap_or(SwapStep::SwapIn),
                message: "cancelled".into(),
            };
            if self.index == 0 {
                self.ending = Some(SwapEnding::Unchanged(failure.clone()));
                return SwapNext::Finished(SwapEnding::Unchanged(failure));
            }
            self.start_undo(failure);
        }
        let steps = self.steps();
        match steps.get(self.index) {
            Some(step) => {
                if *step == SwapStep::StartPrevious {
                    self.started_restored = true;
                }
                self.in_progress = true;
                SwapNext::Take(*step)
            }
            None => {
                let ending = match &self.cause {
                    None => SwapEnding::Succeeded,
                    Some(c) => SwapEnding::RolledBack(c.clone()),
                };
                self.ending = Some(ending.clone());
                SwapNext::Finished(ending)
            }
        }
    }

    /// The step in progress, if any (what the journal records as started).
    pub fn in_progress(&self) -> Option<SwapStep> {
        self.current_step()
    }

    fn current_step(&self) -> Option<SwapStep> {
        self.in_progress
            .then(|| self.steps().get(self.index).copied())
            .flatten()
    }

    /// The step in progress finished well. Returns `false` if it was not in progress.
    pub fn done(&mut self, step: SwapStep) -> bool {
        if self.current_step() != Some(step) {
            return false;
        }
        self.in_progress = false;
        self.index += 1;
        true
    }

    /// The step in progress failed. Returns `false` if it was not in progress.
    pub fn failed(&mut self, step: SwapStep, message: impl Into<String>) -> bool {
        if self.current_step() != Some(step) {
            return false;
        }
        let failure = SwapFailure {
            step,
            message: message.into(),
        };
        if self.forward {
            self.start_undo(failure);
        } else if step == SwapStep::CollectLogs {
            self.in_progress = false;
            self.index += 1;
        } else {
            let cause = self.cause.clone().unwrap_or_else(|| failure.clone());
            self.in_progress = false;
            self.ending = Some(SwapEnding::RestoreFailed {
                cause,
                restore: failure,
            });
        }
        true
    }

    /// Stop at the next step boundary and undo.
    pub fn cancel(&mut self) {
        if self.forward && self.ending.is_none() {
            self.cancelled = true;
        }
    }

    /// The plan after a crash: an unfinished sticker write is taken again (the restored
    /// container was healthy); anything else unfinished is undone from the start of the
    /// undo path, whose steps are all idempotent.
    pub fn resume(mut self) -> SwapPlan {
        if self.ending.is_some() {
            return self;
        }
        if !self.forward {
            self.index = 0;
            self.in_progress = false;
            self.started_restored = true;
            return self;
        }
        match self.current_step() {
            Some(SwapStep::WriteSticker) => self.in_progress = false,
            Some(step) => {
                self.started_restored = true;
                self.start_undo(SwapFailure {
                    step,
                    message: format!(
                        "the agent stopped during step {}; restoring what ran before",
                        step.as_str()
                    ),
                });
            }
            None if self.index == 0 => {}
            None => {
                self.started_restored = true;
                self.start_undo(SwapFailure {
                    step: SwapStep::SwapIn,
                    message: "the agent stopped during the rollback; restoring what ran before"
                        .into(),
                });
            }
        }
        self
    }
}

/// The image (repository) and digest a sticker records as `previous`.
fn sticker_previous(text: &str, target: &str) -> Option<(String, Digest, ReleaseInfo)> {
    let parsed = wharf_sticker::SignedSticker::parse(text.as_bytes()).ok()?;
    let prev = parsed.sticker.previous?;
    component_of(&prev.release, &prev.components, target)
}

/// The image (repository) and digest a rollback's own sticker (signed by core) goes to:
/// core's record of the release before the current one.
fn sticker_destination(text: &str, target: &str) -> Option<(String, Digest, ReleaseInfo)> {
    let parsed = wharf_sticker::SignedSticker::parse(text.as_bytes()).ok()?;
    component_of(&parsed.sticker.release, &parsed.sticker.components, target)
}

fn component_of(
    release: &wharf_sticker::Release,
    components: &[wharf_sticker::Component],
    target: &str,
) -> Option<(String, Digest, ReleaseInfo)> {
    let c = components
        .iter()
        .find(|c| c.name == target)
        .or_else(|| components.first())?;
    let digest = Digest::parse(&c.digest).ok()?;
    let repo = match ImageRef::parse(&c.image) {
        Ok(r) => r.repository().to_owned(),
        Err(_) => c.image.clone(),
    };
    let release = ReleaseInfo {
        id: release.id.clone(),
        name: release.name.clone(),
        version: release.version.clone(),
    };
    Some((repo, digest, release))
}

impl<D: DockerApi> DockerExecutor<D> {
    pub(super) async fn rollback(
        &self,
        task: &AgentTask,
        spec: &RollbackSpec,
        ctx: &TaskContext,
        started_at: Timestamp,
    ) -> TaskResult {
        let name = task.target.as_str();
        let to = match spec.to_digest() {
            Ok(t) => t,
            Err(e) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::InvalidInput,
                    format!("--to: {e}; write sha256:<64 hex>; nothing was changed"),
                )
            }
        };
        // Core signs a rollback's sticker for its record of the release before the current
        // one: without --to, that is where the rollback goes (the kept previous container
        // when it holds that digest, else a pull of it).
        let destination = spec
            .sticker
            .as_deref()
            .and_then(|s| sticker_destination(s, name));
        let to = to.or_else(|| destination.as_ref().map(|d| d.1));
        let (current, previous) = match (
            self.docker.inspect_container(name).await,
            self.docker.inspect_container(&previous_name(name)).await,
        ) {
            (Ok(c), Ok(p)) => (c, p),
            (Err(e), _) | (_, Err(e)) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::Docker,
                    format!("cannot inspect {name}: {e}; nothing was changed"),
                )
            }
        };
        if let Some(prev) = previous.filter(|p| {
            to.is_none_or(|t| running_digest(p).as_deref() == Some(t.to_string().as_str()))
        }) {
            if let Some(text) = &spec.sticker {
                let digest = running_digest(&prev).and_then(|d| Digest::parse(&d).ok());
                if let Err(e) = check_sticker(name, text, digest) {
                    return failed(
                        task,
                        started_at,
                        ErrorType::StickerInvalid,
                        format!("{e}; nothing was changed"),
                    );
                }
            }
            return self
                .start_swap(task, spec, current.as_ref(), &prev, ctx, started_at)
                .await;
        }
        // No previous container (with that digest): deploy a digest instead.
        let sticker = match self.load_sticker(name) {
            Ok(s) => s,
            Err(e) => {
                ctx.progress(
                    "plan",
                    format!("the sticker is unreadable ({e}); ignoring it"),
                );
                None
            }
        };
        let recorded = sticker.as_deref().and_then(|s| sticker_previous(s, name));
        let current_repo = current
            .as_ref()
            .and_then(|c| ImageRef::parse(&c.image).ok())
            .map(|i| i.repository().to_owned());
        // Core's sticker names the destination's repository and release.
        let recorded = match destination.filter(|d| Some(d.1) == to) {
            Some(d) => Some(d),
            None => recorded,
        };
        let (repo, digest, release) = match (to, recorded) {
            (Some(t), Some(rec)) if rec.1 == t => rec,
            (Some(t), rec) => {
                let repo = current_repo.or_else(|| rec.map(|r| r.0));
                match repo {
                    Some(repo) => (repo, t, ReleaseInfo::default()),
                    None => {
                        return failed(
                            task,
                            started_at,
                            ErrorType::NotFound,
                            format!(
                                "cannot roll {name} back to {t}: no container and no sticker \
                                 names its repository; deploy REPO@{t} instead; nothing was changed"
                            ),
                        )
                    }
                }
            }
            (None, Some(rec)) => rec,
            (None, None) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::NotFound,
                    format!(
                        "nothing to roll {name} back to: there is no {} container and the \
                         sticker records no previous version; give --to sha256:<digest>; \
                         nothing was changed",
                        previous_name(name)
                    ),
                )
            }
        };
        let image = match ImageRef::parse(&format!("{repo}@{digest}")) {
            Ok(i) => i,
            Err(e) => return failed(task, started_at, ErrorType::InvalidInput, e.to_string()),
        };
        if let Some(text) = &spec.sticker {
            if let Err(e) = check_sticker(name, text, Some(digest)) {
                return failed(
                    task,
                    started_at,
                    ErrorType::StickerInvalid,
                    format!("{e}; nothing was changed"),
                );
            }
        }
        ctx.progress(
            "plan",
            format!(
                "no {} container: deploying {} instead",
                previous_name(name),
                image.pinned()
            ),
        );
        let deploy = self
            .spec_like(current.as_ref(), &image, release, spec)
            .await;
        self.start_deploy(task, deploy, image, ctx, started_at)
            .await
    }

    /// A deploy of `image` configured like `current` (its env without what its image
    /// set, ports, volumes, networks, restart policy, limits).
    async fn spec_like(
        &self,
        current: Option<&ContainerInfo>,
        image: &ImageRef,
        release: ReleaseInfo,
        spec: &RollbackSpec,
    ) -> DeploySpec {
        let mut d = DeploySpec::new(image.pinned());
        d.release = release;
        d.health = spec.health.clone();
        d.sticker = spec.sticker.clone();
        d.stop_grace = self.config.stop_grace.into();
        if let Some(c) = current {
            let image_env = match self.docker.inspect_image(&c.image_id).await {
                Ok(Some(i)) => i.env,
                _ => Vec::new(),
            };
            d.env = c
                .env
                .iter()
                .filter(|e| !image_env.contains(e))
                .filter_map(|e| e.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<BTreeMap<_, _>>();
            d.ports = c.ports.clone();
            d.volumes = c.volumes.clone();
            d.networks = c
                .networks
                .iter()
                .map(|n| n.network.clone())
                .filter(|n| n != "bridge")
                .collect();
            d.restart = c.restart;
            d.memory_bytes = c.memory_bytes;
            d.nano_cpus = c.nano_cpus;
        }
        d
    }

    async fn start_swap(
        &self,
        task: &AgentTask,
        spec: &RollbackSpec,
        current: Option<&ContainerInfo>,
        previous: &ContainerInfo,
        ctx: &TaskContext,
        started_at: Timestamp,
    ) -> TaskResult {
        ctx.progress(
            "plan",
            format!(
                "rolling {} back to {}{}",
                task.target,
                previous_name(&task.target),
                running_digest(previous)
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        );
        let plan = SwapPlan::new(
            current.map(|c| (c.id.clone(), c.state.running)),
            previous.id.clone(),
            spec.sticker.is_some(),
        );
        let journal = Journal {
            version: JOURNAL_VERSION,
            op: Operation::Swap {
                plan,
                sticker: spec.sticker.clone(),
                health: spec.health.clone(),
            },
            started_at,
            previous_digest: current.and_then(running_digest),
            failure_type: None,
            stop: None,
            logs: Vec::new(),
            metrics: TaskMetrics::default(),
            hook_outputs: BTreeMap::new(),
            hook_logs: Vec::new(),
        };
        self.drive_swap(task, journal, ctx).await
    }

    pub(super) async fn resume_swap(
        &self,
        task: &AgentTask,
        mut journal: Journal,
        ctx: &TaskContext,
    ) -> TaskResult {
        if let Operation::Swap { plan, .. } = &mut journal.op {
            *plan = plan.clone().resume();
        }
        self.drive_swap(task, journal, ctx).await
    }

    async fn drive_swap(
        &self,
        task: &AgentTask,
        mut journal: Journal,
        ctx: &TaskContext,
    ) -> TaskResult {
        let deadline = task_deadline(task, journal.started_at);
        loop {
            let stop = journal.check_stop(ctx, deadline);
            let Operation::Swap { plan, .. } = &mut journal.op else {
                return failed(task, journal.started_at, ErrorType::Internal, "not a swap");
            };
            if stop {
                plan.cancel();
            }
            let step = match plan.next_step() {
                SwapNext::Finished(ending) => {
                    return self.swap_result(task, &journal, ending).await
                }
                SwapNext::Take(step) => step,
            };
            let undoing = matches!(
                step,
                SwapStep::CollectLogs
                    | SwapStep::StopRestored
                    | SwapStep::SwapBack
                    | SwapStep::StartCurrent
                    | SwapStep::WaitCurrentHealthy
            );
            if let Err(e) = ctx.checkpoint(journal.encode()).await {
                if !undoing {
                    journal.failure_type.get_or_insert(ErrorType::Internal);
                    if let Operation::Swap { plan, .. } = &mut journal.op {
                        plan.failed(step, format!("{e}; step not taken"));
                    }
                    continue;
                }
            }
            fault::pause_at(step.as_str()).await;
            let began = StdInstant::now();
            let outcome = self
                .take_swap_step(task, &mut journal, step, ctx, deadline)
                .await;
            let slot = if matches!(step, SwapStep::WaitHealthy) {
                &mut journal.metrics.health_ms
            } else {
                &mut journal.metrics.deploy_ms
            };
            *slot = Some(
                slot.unwrap_or(0)
                    .saturating_add(u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX)),
            );
            let Operation::Swap { plan, .. } = &mut journal.op else {
                continue;
            };
            let reported = match outcome {
                Ok(()) => plan.done(step),
                Err(e) => {
                    ctx.progress(step.as_str(), format!("failed: {}", e.message));
                    if !undoing && journal.failure_type.is_none() {
                        journal.failure_type = Some(e.kind);
                    }
                    plan.failed(step, e.message)
                }
            };
            if !reported {
                return failed(
                    task,
                    journal.started_at,
                    ErrorType::Internal,
                    "swap plan out of step",
                );
            }
        }
    }

    /// Renames so that `x` is `<name>` and `y` (if any) is `<name>-previous`, whatever
    /// mix of names they have now (idempotent).
    async fn arrange(&self, name: &str, x: &str, y: Option<&str>) -> Result<(), DockerError> {
        let d = &self.docker;
        let prev = previous_name(name);
        let name_of = |id: &str| {
            let id = id.to_owned();
            async move {
                d.inspect_container(&id)
                    .await?
                    .map(|c| c.name)
                    .ok_or_else(|| DockerError::NotFound(format!("container {id} is gone")))
            }
        };
        let x_name = name_of(x).await?;
        let mut y_name = match y {
            Some(y) => Some(name_of(y).await?),
            None => None,
        };
        if let Some(y) = y {
            if y_name.as_deref() == Some(name) {
                d.rename_container(y, &swap_name(name)).await?;
                y_name = Some(swap_name(name));
            }
        }
        if x_name != name {
            d.rename_container(x, name).await?;
        }
        if let Some(y) = y {
            if y_name.as_deref() != Some(prev.as_str()) {
                d.rename_container(y, &prev).await?;
            }
        }
        Ok(())
    }

    async fn take_swap_step(
        &self,
        task: &AgentTask,
        journal: &mut Journal,
        step: SwapStep,
        ctx: &TaskContext,
        deadline: Option<Instant>,
    ) -> Result<(), StepError> {
        let Operation::Swap {
            plan,
            sticker,
            health: health_spec,
        } = &journal.op
        else {
            return Err(StepError::new(ErrorType::Internal, "not a swap"));
        };
        let name = task.target.as_str();
        let d = &self.docker;
        let grace = self.config.stop_grace;
        let docker_err = |kind: ErrorType| {
            move |e: DockerError| {
                StepError::new(kind, format!("step {} failed: {e}", step.as_str()))
            }
        };
        let current = plan.current.clone();
        let previous = plan.previous.clone();
        ctx.progress(step.as_str(), step.as_str().replace('-', " "));
        match step {
            SwapStep::StopCurrent | SwapStep::StopRestored => {
                let id = if step == SwapStep::StopCurrent {
                    current.unwrap_or_default()
                } else {
                    previous
                };
                d.stop_container(&id, grace)
                    .await
                    .map_err(docker_err(ErrorType::Docker))
            }
            SwapStep::SwapIn => self
                .arrange(name, &previous, current.as_deref())
                .await
                .map_err(docker_err(ErrorType::Docker)),
            SwapStep::SwapBack => match current {
                Some(c) => self.arrange(name, &c, Some(&previous)).await,
                None => {
                    let prev = previous_name(name);
                    match d.inspect_container(&previous).await {
                        Ok(Some(p)) if p.name == prev => Ok(()),
                        Ok(Some(_)) => d.rename_container(&previous, &prev).await,
                        Ok(None) => Err(DockerError::NotFound(format!(
                            "container {previous} is gone"
                        ))),
                        Err(e) => Err(e),
                    }
                }
            }
            .map_err(docker_err(ErrorType::Docker)),
            SwapStep::StartPrevious => d
                .start_container(&previous)
                .await
                .map_err(docker_err(ErrorType::StartFailed)),
            SwapStep::StartCurrent => d
                .start_container(&current.unwrap_or_default())
                .await
                .map_err(docker_err(ErrorType::Docker)),
            SwapStep::WaitHealthy => {
                let r = health::wait_healthy(
                    d,
                    &self.http,
                    name,
                    health_spec,
                    deadline,
                    ctx.cancelled(),
                )
                .await;
                match r {
                    Ok(()) => Ok(()),
                    Err(health::HealthError::Cancelled { .. }) => {
                        journal.stop.get_or_insert(StopReason::Cancelled);
                        Err(StepError::new(
                            ErrorType::Cancelled,
                            "cancelled by core while waiting for health",
                        ))
                    }
                    Err(e) => Err(StepError::new(ErrorType::HealthFailed, e.to_string())),
                }
            }
            SwapStep::WaitCurrentHealthy => health::wait_healthy(
                d,
                &self.http,
                name,
                health_spec,
                None,
                std::future::pending(),
            )
            .await
            .map_err(|e| StepError::new(ErrorType::HealthFailed, e.to_string())),
            SwapStep::WriteSticker => match sticker {
                Some(text) => self
                    .store_sticker(name, text)
                    .map_err(|e| StepError::new(ErrorType::StickerInvalid, e)),
                None => Ok(()),
            },
            SwapStep::CollectLogs => {
                let lines = d
                    .logs_tail(&previous, self.config.log_lines)
                    .await
                    .map_err(docker_err(ErrorType::Docker))?;
                journal.logs = lines;
                Ok(())
            }
        }
    }

    async fn swap_result(
        &self,
        task: &AgentTask,
        journal: &Journal,
        ending: SwapEnding,
    ) -> TaskResult {
        let name = task.target.as_str();
        let kind = journal.failure_type.unwrap_or(match journal.stop {
            Some(StopReason::Timeout) => ErrorType::Timeout,
            _ => ErrorType::Cancelled,
        });
        let why = |f: &SwapFailure| match (journal.stop, f.message.as_str()) {
            (Some(StopReason::Cancelled), "cancelled") => "cancelled by core".to_owned(),
            (Some(StopReason::Timeout), "cancelled") => {
                format!("the task's timeout ({}) passed", task.timeout)
            }
            _ => format!("step {} failed: {}", f.step.as_str(), f.message),
        };
        let mut r = match &ending {
            SwapEnding::Succeeded => TaskResult::success(task.id, task.attempt, journal.started_at),
            SwapEnding::Unchanged(f) => failed(
                task,
                journal.started_at,
                kind,
                format!("rollback of {name}: {}; nothing was changed", why(f)),
            ),
            SwapEnding::RolledBack(f) => {
                let mut r = failed(
                    task,
                    journal.started_at,
                    kind,
                    format!(
                        "rollback of {name} to {}: {}; what ran before the rollback was restored",
                        previous_name(name),
                        why(f)
                    ),
                );
                r.rolled_back = true;
                r
            }
            SwapEnding::RestoreFailed { cause, restore } => failed(
                task,
                journal.started_at,
                ErrorType::RollbackFailed,
                format!(
                    "rollback of {name}: {}; restoring what ran before failed too (step {}: {}); \
                     the target needs attention: run `wharf inspect`",
                    why(cause),
                    restore.step.as_str(),
                    restore.message
                ),
            ),
        };
        r.outputs
            .insert("route".into(), "previous-container".into());
        if let Some(p) = &journal.previous_digest {
            // What ran as `<name>` before the rollback.
            r.outputs.insert("previous_digest".into(), p.clone());
        }
        if let Ok(Some(c)) = self.docker.inspect_container(name).await {
            r.outputs.insert("container_id".into(), c.id.clone());
            if let Some(d) = running_digest(&c) {
                r.outputs.insert("digest".into(), d);
            }
        }
        if !matches!(ending, SwapEnding::Succeeded) {
            r.logs = journal.logs.clone();
        }
        r.metrics = journal.metrics;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(plan: &mut SwapPlan, fail_at: Option<SwapStep>) -> (Vec<SwapStep>, SwapEnding) {
        let mut taken = Vec::new();
        loop {
            match plan.next_step() {
                SwapNext::Finished(e) => return (taken, e),
                SwapNext::Take(s) => {
                    taken.push(s);
                    if Some(s) == fail_at {
                        assert!(plan.failed(s, "boom"));
                    } else {
                        assert!(plan.done(s));
                    }
                }
            }
        }
    }

    #[test]
    fn swap_forward_and_undo() {
        let mut p = SwapPlan::new(Some(("a".into(), true)), "b".into(), true);
        let (steps, end) = run(&mut p, None);
        assert_eq!(end, SwapEnding::Succeeded);
        assert_eq!(
            steps,
            [
                SwapStep::StopCurrent,
                SwapStep::SwapIn,
                SwapStep::StartPrevious,
                SwapStep::WaitHealthy,
                SwapStep::WriteSticker
            ]
        );
        let mut p = SwapPlan::new(Some(("a".into(), true)), "b".into(), false);
        let (steps, end) = run(&mut p, Some(SwapStep::WaitHealthy));
        assert!(matches!(end, SwapEnding::RolledBack(f) if f.step == SwapStep::WaitHealthy));
        assert_eq!(
            &steps[4..],
            [
                SwapStep::CollectLogs,
                SwapStep::StopRestored,
                SwapStep::SwapBack,
                SwapStep::StartCurrent,
                SwapStep::WaitCurrentHealthy
            ]
        );
        // Nothing ran as <name> before: the undo only puts the previous one back.
        let mut p = SwapPlan::new(None, "b".into(), false);
        let (steps, end) = run(&mut p, Some(SwapStep::WaitHealthy));
        assert!(matches!(end, SwapEnding::RolledBack(_)), "{end:?}");
        assert_eq!(
            steps,
            [
                SwapStep::SwapIn,
                SwapStep::StartPrevious,
                SwapStep::WaitHealthy,
                SwapStep::CollectLogs,
                SwapStep::StopRestored,
                SwapStep::SwapBack
            ]
        );
        // A failed undo step ends the plan as RestoreFailed.
        let mut p = SwapPlan::new(Some(("a".into(), true)), "b".into(), false);
        let mut failures = [SwapStep::WaitHealthy, SwapStep::SwapBack].into_iter();
        let mut next_failure = failures.next();
        let end = loop {
            match p.next_step() {
                SwapNext::Finished(e) => break e,
                SwapNext::Take(s) if Some(s) == next_failure => {
                    assert!(p.failed(s, "boom"));
                    next_failure = failures.next();
                }
                SwapNext::Take(s) => assert!(p.done(s)),
            }
        };
        assert!(
            matches!(&end, SwapEnding::RestoreFailed { cause, restore }
                if cause.step == SwapStep::WaitHealthy && restore.step == SwapStep::SwapBack),
            "{end:?}"
        );
        assert!(!p.done(SwapStep::SwapIn), "a report out of step is refused");
    }

    #[test]
    fn swap_cancel_and_resume() {
        let mut p = SwapPlan::new(Some(("a".into(), true)), "b".into(), false);
        p.cancel();
        assert!(matches!(
            p.next_step(),
            SwapNext::Finished(SwapEnding::Unchanged(_))
        ));

        let mut p = SwapPlan::new(Some(("a".into(), true)), "b".into(), false);
        assert_eq!(p.next_step(), SwapNext::Take(SwapStep::StopCurrent));
        assert!(p.done(SwapStep::StopCurrent));
        assert_eq!(p.next_step(), SwapNext::Take(SwapStep::SwapIn));
        // Crash here: resume undoes.
        let mut r = p.clone().resume();
        let (steps, end) = run(&mut r, None);
        assert_eq!(steps[0], SwapStep::CollectLogs);
        assert!(matches!(end, SwapEnding::RolledBack(f) if f.step == SwapStep::SwapIn));

        let mut p = SwapPlan::new(Some(("a".into(), true)), "b".into(), true);
        for s in [
            SwapStep::StopCurrent,
            SwapStep::SwapIn,
            SwapStep::StartPrevious,
            SwapStep::WaitHealthy,
        ] {
            assert_eq!(p.next_step(), SwapNext::Take(s));
            assert!(p.done(s));
        }
        assert_eq!(p.next_step(), SwapNext::Take(SwapStep::WriteSticker));
        let mut r = p.resume();
        assert_eq!(r.next_step(), SwapNext::Take(SwapStep::WriteSticker));
    }
}
