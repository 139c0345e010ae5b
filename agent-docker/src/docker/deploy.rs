//! The deploy task: validation, then the step plan of [`crate::plan`] driven over Docker,
//! with a checkpoint before every step.

use std::collections::BTreeMap;
use std::time::Instant as StdInstant;

use tokio::time::Instant;
use wharf_hooks::{HookInput, HookRunner, Phase};
use wharf_protocol::{
    AgentTask, DeploySpec, Digest, ErrorType, HookSpec, ImageRef, TaskMetrics, TaskResult,
    Timestamp,
};

use super::api::{ContainerInfo, CreateSpec, DockerApi, DockerError};
use super::{
    failed, fault, health, previous_name, DockerExecutor, Journal, Operation, StopReason,
    JOURNAL_VERSION, LABEL_DEPLOYED_AT, LABEL_DIGEST, LABEL_MANAGED, LABEL_RELEASE_ID,
    LABEL_RELEASE_NAME, LABEL_RELEASE_VERSION, LABEL_TASK_ID,
};
use crate::plan::{DeployPlan, Ending, Next, Observed, Options, Step};
use crate::runtime::executor::DOCKER_HUB;
use crate::runtime::hooks::{check_hooks, run_hook};
use crate::runtime::TaskContext;

/// A failed step: the error class and what went wrong.
#[derive(Debug)]
pub(super) struct StepError {
    pub(super) kind: ErrorType,
    pub(super) message: String,
}

impl StepError {
    pub(super) fn new(kind: ErrorType, message: impl Into<String>) -> Self {
        StepError {
            kind,
            message: message.into(),
        }
    }
}

/// The instant the task's timeout passes, `None` for no timeout.
pub(super) fn task_deadline(task: &AgentTask, started_at: Timestamp) -> Option<Instant> {
    if task.timeout.as_millis() == 0 {
        return None;
    }
    let end = started_at.saturating_add(task.timeout);
    Some(Instant::now() + end.duration_since(Timestamp::now()).as_duration())
}

/// The digest a container runs: its `wharf.digest` label, else the digest of the pinned
/// reference it was created from.
pub(super) fn running_digest(info: &ContainerInfo) -> Option<String> {
    info.label(LABEL_DIGEST)
        .and_then(|d| Digest::parse(d).ok())
        .or_else(|| ImageRef::parse(&info.image).ok().map(|i| i.digest()))
        .map(|d| d.to_string())
}

/// Checks a signed sticker before anything changes: well-formed, for this docker target,
/// and (for a deploy) naming the digest being deployed.
pub(super) fn check_sticker(
    target: &str,
    text: &str,
    digest: Option<Digest>,
) -> Result<(), String> {
    let parsed = wharf_sticker::SignedSticker::parse(text.as_bytes())
        .map_err(|e| format!("the task's sticker is not valid: {e}"))?;
    let s = &parsed.sticker;
    if s.target.kind != wharf_sticker::TargetKind::Docker || s.target.name != target {
        return Err(format!(
            "the task's sticker is for {} target `{}`, not docker target `{target}`",
            s.target.kind, s.target.name
        ));
    }
    if let Some(digest) = digest {
        let d = digest.to_string();
        if !s.components.iter().any(|c| c.digest == d) {
            return Err(format!(
                "the task's sticker does not name the deployed digest {d}; core must sign a \
                 sticker for this image"
            ));
        }
    }
    Ok(())
}

fn validate(
    task: &AgentTask,
    spec: &DeploySpec,
    hooks: Option<&dyn HookRunner>,
) -> Result<ImageRef, StepError> {
    let image = spec.image_ref().map_err(|e| {
        StepError::new(ErrorType::InvalidInput, format!("{e}; nothing was changed"))
    })?;
    check_hooks(hooks, spec.pre_hook.as_ref(), spec.post_hook.as_ref())
        .map_err(|e| StepError::new(e.kind, e.message))?;
    if let Some(key) = spec
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(StepError::new(
            ErrorType::InvalidInput,
            format!("environment variable name {key:?} is invalid: it must be non-empty without `=`; nothing was changed"),
        ));
    }
    if let Some(sticker) = &spec.sticker {
        check_sticker(&task.target, sticker, Some(image.digest())).map_err(|e| {
            StepError::new(
                ErrorType::StickerInvalid,
                format!("{e}; nothing was changed"),
            )
        })?;
    }
    Ok(image)
}

/// The container configuration of a deploy.
pub(super) fn create_spec(task: &AgentTask, spec: &DeploySpec, image: &ImageRef) -> CreateSpec {
    let labels = BTreeMap::from([
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_RELEASE_ID.to_owned(), spec.release.id.clone()),
        (LABEL_RELEASE_NAME.to_owned(), spec.release.name.clone()),
        (
            LABEL_RELEASE_VERSION.to_owned(),
            spec.release.version.clone(),
        ),
        (LABEL_DIGEST.to_owned(), image.digest().to_string()),
        (LABEL_TASK_ID.to_owned(), task.id.to_string()),
        (LABEL_DEPLOYED_AT.to_owned(), Timestamp::now().to_string()),
    ]);
    CreateSpec {
        image: image.pinned(),
        env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        ports: spec.ports.clone(),
        volumes: spec.volumes.clone(),
        network: spec.networks.first().cloned(),
        restart: spec.restart,
        memory_bytes: spec.memory_bytes,
        nano_cpus: spec.nano_cpus,
        labels,
    }
}

fn docker_step_error(step: Step, kind: ErrorType, e: &DockerError) -> StepError {
    StepError::new(kind, format!("step {} failed: {e}", step.as_str()))
}

fn add_ms(slot: &mut Option<u64>, since: StdInstant) {
    let ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX);
    *slot = Some(slot.unwrap_or(0).saturating_add(ms));
}

impl<D: DockerApi> DockerExecutor<D> {
    /// What Docker shows about `target` for the plan, and the current container.
    pub(super) async fn observe(
        &self,
        target: &str,
        task: &AgentTask,
    ) -> Result<(Observed, Option<ContainerInfo>), DockerError> {
        let current = self.docker.inspect_container(target).await?;
        let previous = self
            .docker
            .inspect_container(&previous_name(target))
            .await?;
        let ours = task.id.to_string();
        let observed = Observed {
            current_exists: current.is_some(),
            current_is_new: current
                .as_ref()
                .is_some_and(|c| c.label(LABEL_TASK_ID) == Some(ours.as_str())),
            current_running: current.as_ref().is_some_and(|c| c.state.running),
            previous_exists: previous.is_some(),
        };
        Ok((observed, current))
    }

    pub(super) async fn deploy(
        &self,
        task: &AgentTask,
        spec: &DeploySpec,
        ctx: &TaskContext,
        started_at: Timestamp,
    ) -> TaskResult {
        let image = match validate(task, spec, self.hooks.as_deref()) {
            Ok(image) => image,
            Err(e) => return failed(task, started_at, e.kind, e.message),
        };
        self.start_deploy(task, spec.clone(), image, ctx, started_at)
            .await
    }

    /// Deploys `spec` (already validated; its image is `image`) from the start.
    pub(super) async fn start_deploy(
        &self,
        task: &AgentTask,
        spec: DeploySpec,
        image: ImageRef,
        ctx: &TaskContext,
        started_at: Timestamp,
    ) -> TaskResult {
        let (observed, current) = match self.observe(&task.target, task).await {
            Ok(o) => o,
            Err(e) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::Docker,
                    format!("cannot inspect the target: {e}; nothing was changed"),
                )
            }
        };
        ctx.progress(
            "plan",
            format!(
                "deploying {} as {}{}",
                image.pinned(),
                task.target,
                if observed.current_exists {
                    " (replacing the running container)"
                } else {
                    " (first deploy)"
                }
            ),
        );
        let options = Options {
            pre_hook: spec.pre_hook.is_some(),
            post_hook: spec.post_hook.is_some(),
            sticker: spec.sticker.is_some(),
        };
        let journal = Journal {
            version: JOURNAL_VERSION,
            op: Operation::Deploy {
                plan: DeployPlan::new(options, observed),
                spec,
            },
            started_at,
            previous_digest: current.as_ref().and_then(running_digest),
            failure_type: None,
            stop: None,
            logs: Vec::new(),
            metrics: TaskMetrics::default(),
            hook_outputs: BTreeMap::new(),
            hook_logs: Vec::new(),
        };
        self.drive_deploy(task, journal, image, ctx).await
    }

    pub(super) async fn resume_deploy(
        &self,
        task: &AgentTask,
        mut journal: Journal,
        ctx: &TaskContext,
    ) -> TaskResult {
        let Operation::Deploy { plan, spec } = journal.op else {
            return failed(
                task,
                journal.started_at,
                ErrorType::Internal,
                "not a deploy checkpoint",
            );
        };
        let image = match spec.image_ref() {
            Ok(i) => i,
            Err(e) => return failed(task, journal.started_at, ErrorType::Internal, e.to_string()),
        };
        let observed = match self.observe(&task.target, task).await {
            Ok((o, _)) => o,
            Err(e) => {
                let mut r = failed(
                    task,
                    journal.started_at,
                    ErrorType::Docker,
                    format!(
                        "cannot inspect the target to finish the interrupted deploy: {e}; \
                         the target may be mid-deploy: run `wharf inspect`"
                    ),
                );
                r.retriable = false;
                return r;
            }
        };
        let plan = DeployPlan::resume(plan, observed);
        journal.op = Operation::Deploy { plan, spec };
        self.drive_deploy(task, journal, image, ctx).await
    }

    async fn drive_deploy(
        &self,
        task: &AgentTask,
        mut journal: Journal,
        image: ImageRef,
        ctx: &TaskContext,
    ) -> TaskResult {
        let deadline = task_deadline(task, journal.started_at);
        let mut journal_broken = false;
        loop {
            let stop = journal.check_stop(ctx, deadline);
            let Operation::Deploy { plan, .. } = &mut journal.op else {
                return failed(
                    task,
                    journal.started_at,
                    ErrorType::Internal,
                    "not a deploy",
                );
            };
            if stop {
                plan.cancel();
            }
            let step = match plan.next_step() {
                Next::Finished(ending) => {
                    return self.deploy_result(task, &journal, &image, ending).await
                }
                Next::Take(step) => step,
            };
            if !journal_broken {
                if let Err(e) = ctx.checkpoint(journal.encode()).await {
                    journal_broken = true;
                    let Operation::Deploy { plan, .. } = &mut journal.op else {
                        continue;
                    };
                    if !step.is_restore() {
                        journal.failure_type.get_or_insert(ErrorType::Internal);
                        ctx.progress(
                            step.as_str(),
                            format!("{e}; not taking this step, restoring"),
                        );
                        if let Err(pe) = plan.failed(step, format!("{e}; step not taken")) {
                            return failed(
                                task,
                                journal.started_at,
                                ErrorType::Internal,
                                pe.to_string(),
                            );
                        }
                        continue;
                    }
                }
            }
            fault::pause_at(step.as_str()).await;
            let began = StdInstant::now();
            let outcome = self
                .take_deploy_step(task, &mut journal, &image, step, ctx, deadline)
                .await;
            match step {
                Step::Pull => add_ms(&mut journal.metrics.pull_ms, began),
                Step::StopCurrent
                | Step::RemoveStalePrevious
                | Step::RenameCurrentToPrevious
                | Step::CreateNew
                | Step::StartNew => add_ms(&mut journal.metrics.deploy_ms, began),
                Step::WaitHealthy => add_ms(&mut journal.metrics.health_ms, began),
                _ => {}
            }
            let Operation::Deploy { plan, .. } = &mut journal.op else {
                continue;
            };
            let reported = match outcome {
                Ok(()) => plan.done(step),
                Err(e) => {
                    ctx.progress(step.as_str(), format!("failed: {}", e.message));
                    if !step.is_restore() && journal.failure_type.is_none() {
                        journal.failure_type = Some(e.kind);
                    }
                    plan.failed(step, e.message)
                }
            };
            if let Err(pe) = reported {
                return failed(
                    task,
                    journal.started_at,
                    ErrorType::Internal,
                    pe.to_string(),
                );
            }
        }
    }

    async fn take_deploy_step(
        &self,
        task: &AgentTask,
        journal: &mut Journal,
        image: &ImageRef,
        step: Step,
        ctx: &TaskContext,
        deadline: Option<Instant>,
    ) -> Result<(), StepError> {
        let Operation::Deploy { spec, .. } = &journal.op else {
            return Err(StepError::new(ErrorType::Internal, "not a deploy"));
        };
        let name = task.target.as_str();
        let previous = previous_name(name);
        let pinned = image.pinned();
        let d = &self.docker;
        let ours = task.id.to_string();
        match step {
            Step::Pull => {
                ctx.progress(step.as_str(), format!("pulling {pinned}"));
                self.pull_verified(image, ctx).await
            }
            Step::PreHook | Step::PostHook => {
                let (phase, hook) = if step == Step::PreHook {
                    (Phase::PreDeploy, spec.pre_hook.clone())
                } else {
                    (Phase::PostDeploy, spec.post_hook.clone())
                };
                let Some(hook) = hook else {
                    return Ok(());
                };
                let input = HookInput {
                    phase,
                    target: name.to_owned(),
                    release: spec.release.clone(),
                    image: pinned.clone(),
                    digest: image.digest().to_string(),
                    previous: journal.previous_digest.clone(),
                    services: BTreeMap::new(),
                    previous_services: BTreeMap::new(),
                };
                self.run_hook(&hook, &input, ctx, journal).await
            }
            Step::StopCurrent => {
                ctx.progress(
                    step.as_str(),
                    format!("stopping {name} (grace {})", spec.stop_grace),
                );
                d.stop_container(name, spec.stop_grace.as_duration())
                    .await
                    .map_err(|e| docker_step_error(step, ErrorType::Docker, &e))
            }
            Step::RemoveStalePrevious => {
                ctx.progress(step.as_str(), format!("removing the older {previous}"));
                match d.remove_container(&previous).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(docker_step_error(step, ErrorType::Docker, &e)),
                }
            }
            Step::RenameCurrentToPrevious => {
                ctx.progress(step.as_str(), format!("renaming {name} to {previous}"));
                d.rename_container(name, &previous)
                    .await
                    .map_err(|e| docker_step_error(step, ErrorType::Docker, &e))
            }
            Step::CreateNew => {
                ctx.progress(step.as_str(), format!("creating {name} from {pinned}"));
                let create = create_spec(task, spec, image);
                d.create_container(name, &create)
                    .await
                    .map_err(|e| docker_step_error(step, ErrorType::StartFailed, &e))?;
                for network in spec.networks.iter().skip(1) {
                    d.connect_network(name, network)
                        .await
                        .map_err(|e| docker_step_error(step, ErrorType::StartFailed, &e))?;
                }
                Ok(())
            }
            Step::StartNew => {
                ctx.progress(step.as_str(), format!("starting {name}"));
                d.start_container(name)
                    .await
                    .map_err(|e| docker_step_error(step, ErrorType::StartFailed, &e))
            }
            Step::WaitHealthy | Step::WaitPreviousHealthy => {
                ctx.progress(
                    step.as_str(),
                    format!("waiting for {name} to become healthy"),
                );
                // The restore is never cut short by a cancel or the task's timeout.
                let restoring = step == Step::WaitPreviousHealthy;
                let cancelled = ctx.cancelled();
                let cap = if restoring { None } else { deadline };
                let result = if restoring {
                    health::wait_healthy(
                        d,
                        &self.http,
                        name,
                        &spec.health,
                        cap,
                        std::future::pending(),
                    )
                    .await
                } else {
                    health::wait_healthy(d, &self.http, name, &spec.health, cap, cancelled).await
                };
                match result {
                    Ok(()) => {
                        ctx.progress(step.as_str(), format!("{name} is healthy"));
                        Ok(())
                    }
                    Err(health::HealthError::Cancelled { .. }) => {
                        journal.stop.get_or_insert(StopReason::Cancelled);
                        Err(StepError::new(
                            ErrorType::Cancelled,
                            "cancelled by core while waiting for health",
                        ))
                    }
                    Err(e @ health::HealthError::Deadline { .. })
                        if deadline.is_some_and(|dl| Instant::now() >= dl) && !restoring =>
                    {
                        journal.stop.get_or_insert(StopReason::Timeout);
                        Err(StepError::new(
                            ErrorType::Timeout,
                            format!("the task's timeout passed: {e}"),
                        ))
                    }
                    Err(e) => Err(StepError::new(ErrorType::HealthFailed, e.to_string())),
                }
            }
            Step::WriteSticker => {
                ctx.progress(step.as_str(), "writing the signed sticker");
                let Some(text) = &spec.sticker else {
                    return Ok(());
                };
                self.store_sticker(name, text)
                    .map_err(|e| StepError::new(ErrorType::StickerInvalid, e))
            }
            Step::CollectLogs => {
                let logs = match d.inspect_container(name).await {
                    Ok(Some(c)) if c.label(LABEL_TASK_ID) == Some(ours.as_str()) => {
                        d.logs_tail(name, self.config.log_lines).await
                    }
                    Ok(_) => Ok(Vec::new()),
                    Err(e) => Err(e),
                };
                match logs {
                    Ok(lines) => {
                        ctx.progress(
                            step.as_str(),
                            format!("kept {} log lines of the failed container", lines.len()),
                        );
                        journal.logs = lines;
                        Ok(())
                    }
                    Err(e) => Err(docker_step_error(step, ErrorType::Docker, &e)),
                }
            }
            Step::RemoveNew => {
                ctx.progress(step.as_str(), format!("removing the failed {name}"));
                match d.inspect_container(name).await {
                    Ok(None) => Ok(()),
                    Ok(Some(c)) if c.label(LABEL_TASK_ID) == Some(ours.as_str()) => d
                        .remove_container(&c.id)
                        .await
                        .map_err(|e| docker_step_error(step, ErrorType::Docker, &e)),
                    Ok(Some(_)) => Err(StepError::new(
                        ErrorType::Docker,
                        format!(
                            "refusing to remove {name}: it is not the container this task created"
                        ),
                    )),
                    Err(e) => Err(docker_step_error(step, ErrorType::Docker, &e)),
                }
            }
            Step::RenamePreviousBack => {
                ctx.progress(step.as_str(), format!("renaming {previous} back to {name}"));
                match d.rename_container(&previous, name).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.is_not_found() => {
                        // Done before a crash? Then `<name>` is the old one.
                        match d.inspect_container(name).await {
                            Ok(Some(c)) if c.label(LABEL_TASK_ID) != Some(ours.as_str()) => Ok(()),
                            _ => Err(docker_step_error(step, ErrorType::Docker, &e)),
                        }
                    }
                    Err(e) => Err(docker_step_error(step, ErrorType::Docker, &e)),
                }
            }
            Step::StartPrevious => {
                ctx.progress(step.as_str(), format!("starting the restored {name}"));
                d.start_container(name)
                    .await
                    .map_err(|e| docker_step_error(step, ErrorType::Docker, &e))
            }
        }
    }

    /// Runs one hook (under its own timeout; a cancel by core stops it), recording its
    /// message, duration and outputs (and, on failure, its last lines) in the journal.
    pub(super) async fn run_hook(
        &self,
        hook: &HookSpec,
        input: &HookInput,
        ctx: &TaskContext,
        journal: &mut Journal,
    ) -> Result<(), StepError> {
        let (record, result) = run_hook(self.hooks.as_deref(), hook, input, ctx).await;
        journal.hook_outputs.extend(record.outputs);
        journal.hook_logs.extend(record.logs);
        result.map_err(|e| {
            if e.is_cancel() {
                journal.stop.get_or_insert(StopReason::Cancelled);
            }
            StepError::new(e.kind, e.message)
        })
    }

    /// Pulls `image` by digest and checks that Docker has it as `repo@digest`.
    pub(super) async fn pull_verified(
        &self,
        image: &ImageRef,
        ctx: &TaskContext,
    ) -> Result<(), StepError> {
        let pinned = image.pinned();
        let registry = image.registry().unwrap_or(DOCKER_HUB).to_owned();
        let credentials = ctx.credentials_for(image);
        if ctx.credentials().is_some() && credentials.is_none() {
            ctx.progress(
                Step::Pull.as_str(),
                format!(
                    "the task's registry credentials are not for {registry}; pulling without them"
                ),
            );
        }
        let pulled = tokio::select! {
            r = self.docker.pull(&pinned, credentials) => r,
            () = ctx.cancelled() => {
                return Err(StepError::new(ErrorType::Cancelled, "cancelled by core during the pull"));
            }
        };
        if let Err(e) = pulled {
            // Without credentials (as on resume) a verified local copy will do.
            if ctx.credentials().is_none() && self.verify_local(image).await.is_ok() {
                ctx.progress(
                    Step::Pull.as_str(),
                    format!("pull failed ({e}); using the local image, verified by digest"),
                );
                return Ok(());
            }
            return Err(match e {
                DockerError::Auth(m) => StepError::new(
                    ErrorType::RegistryAuth,
                    format!(
                        "registry {registry} refused the pull of {pinned}: {m}; check the \
                         credentials stored with `wharf registry login {registry}`"
                    ),
                ),
                DockerError::NotFound(m) => StepError::new(
                    ErrorType::PullFailed,
                    format!(
                        "{pinned} is not in registry {registry}: {m}; check the repository and \
                         digest (push the image first)"
                    ),
                ),
                other => StepError::new(
                    ErrorType::PullFailed,
                    format!("pulling {pinned} failed: {other}"),
                ),
            });
        }
        self.verify_local(image).await
    }

    /// Checks that the local image `repo@digest` exists and lists `repo@digest` in its
    /// `RepoDigests`.
    async fn verify_local(&self, image: &ImageRef) -> Result<(), StepError> {
        let pinned = image.pinned();
        match self.docker.inspect_image(&pinned).await {
            Ok(Some(info)) if info.repo_digests.contains(&pinned) => Ok(()),
            Ok(Some(info)) => Err(StepError::new(
                ErrorType::DigestMismatch,
                format!(
                    "the pulled image's RepoDigests {:?} do not contain {pinned}; nothing was changed",
                    info.repo_digests
                ),
            )),
            Ok(None) => Err(StepError::new(
                ErrorType::DigestMismatch,
                format!("after the pull Docker has no image {pinned}; nothing was changed"),
            )),
            Err(e) => Err(StepError::new(
                ErrorType::Docker,
                format!("cannot inspect the pulled image {pinned}: {e}"),
            )),
        }
    }

    async fn deploy_result(
        &self,
        task: &AgentTask,
        journal: &Journal,
        image: &ImageRef,
        ending: Ending,
    ) -> TaskResult {
        let pinned = image.pinned();
        let mut outputs = BTreeMap::from([
            ("image".to_owned(), pinned.clone()),
            ("digest".to_owned(), image.digest().to_string()),
        ]);
        if let Some(prev) = &journal.previous_digest {
            outputs.insert("previous_digest".into(), prev.clone());
        }
        if let Ok(Some(c)) = self.docker.inspect_container(&task.target).await {
            outputs.insert("container_id".into(), c.id.clone());
            if let Some(d) = running_digest(&c) {
                outputs.insert("running_digest".into(), d);
            }
        }
        let stop_text = |f: &crate::plan::Failure| match journal.stop {
            Some(StopReason::Cancelled) if f.message == "cancelled" => {
                "cancelled by core".to_owned()
            }
            Some(StopReason::Timeout) if f.message == "cancelled" => {
                format!("the task's timeout ({}) passed", task.timeout)
            }
            _ => format!("step {} failed: {}", f.step.as_str(), f.message),
        };
        let kind = || {
            journal.failure_type.unwrap_or(match journal.stop {
                Some(StopReason::Cancelled) => ErrorType::Cancelled,
                Some(StopReason::Timeout) => ErrorType::Timeout,
                None => ErrorType::Internal,
            })
        };
        let mut result = match &ending {
            Ending::Succeeded => TaskResult::success(task.id, task.attempt, journal.started_at),
            Ending::FailedUnchanged(f) => failed(
                task,
                journal.started_at,
                kind(),
                format!(
                    "deploy of {pinned} to {}: {}; nothing was changed",
                    task.target,
                    stop_text(f)
                ),
            ),
            Ending::RolledBack(f) => {
                let mut r = failed(
                    task,
                    journal.started_at,
                    kind(),
                    format!(
                        "deploy of {pinned} to {}: {}; the previous version{} was restored and is healthy",
                        task.target,
                        stop_text(f),
                        journal
                            .previous_digest
                            .as_ref()
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ),
                );
                r.rolled_back = true;
                r
            }
            Ending::FailedNothingToRestore(f) => failed(
                task,
                journal.started_at,
                kind(),
                format!(
                    "deploy of {pinned} to {}: {}; the failed container was removed and, as \
                     before the deploy, no container runs there",
                    task.target,
                    stop_text(f)
                ),
            ),
            Ending::RestoreFailed { cause, restore } => failed(
                task,
                journal.started_at,
                ErrorType::RollbackFailed,
                format!(
                    "deploy of {pinned} to {}: {}; restoring the previous version failed too \
                     (step {}: {}); the target needs attention: run `wharf inspect`",
                    task.target,
                    stop_text(cause),
                    restore.step.as_str(),
                    restore.message
                ),
            ),
        };
        if !ending.is_success() && !journal.logs.is_empty() {
            result.logs = journal.logs.clone();
        }
        result.logs.extend(journal.hook_logs.iter().cloned());
        outputs.extend(journal.hook_outputs.clone());
        result.outputs = outputs;
        result.metrics = journal.metrics;
        result
    }
}
