//! The Compose executor: the [`Executor`] of the Compose agent (capabilities `compose`
//! and `compose-v1`/`compose-v2`, and `hooks`/`host-hooks` with a hook runner). A task's
//! target is the Compose project.
//!
//! `compose-deploy` and `compose-rollback` refuse bad input before anything changes
//! (hooks included: no runner, or a host command without `--allow-host-hooks`), then
//! drive [`ComposePlan`], checkpointing the plan (and what resume needs) through
//! [`TaskContext::checkpoint`] before every step. Hooks run through the runtime's shared
//! [`wharf_agent_docker::runtime::hooks`], so their result keys are the Docker agent's. `inspect`, `health-check`,
//! `read-sticker` and `write-sticker` read or write one project.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use wharf_agent_docker::docker::{fault, ContainerHealth};
use wharf_agent_docker::runtime::executor::never_started;
use wharf_agent_docker::runtime::hooks::{check_hooks, hook_capabilities, run_hook};
use wharf_agent_docker::runtime::{Executor, TaskContext};
use wharf_hooks::{HookInput, HookRunner, Phase};
use wharf_protocol::compose::{check_expected, is_compose_file_name, ComposeLock};
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{
    capability, AgentTask, ComposeDeploySpec, ErrorType, ImageRef, TaskMetrics, TaskPayload,
    TaskResult, Timestamp,
};
use zeroize::Zeroizing;

use crate::files::{self, Manifest, ProjectDir, LOCK_FILE, MANIFEST_SCHEMA};
use crate::host::{ComposeHost, HostError, ProjectFiles, ServiceContainer};
use crate::plan::{ComposePlan, HookSteps, Next, Outcome, Step};

/// How many log lines of each failed service go into [`TaskResult::logs`] by default.
pub const DEFAULT_LOG_LINES: usize = 50;

/// The health deadline of a deploy whose task gives none.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// Settings of the executor.
#[derive(Debug, Clone)]
pub struct ComposeExecutorConfig {
    /// `--deploy-root`: projects live in `<deploy-root>/<project>/`.
    pub deploy_root: PathBuf,
    /// Log lines per failed service kept in the result.
    pub log_lines: usize,
    /// Health deadline when the task gives none (also the restore's deadline).
    pub health_timeout: Duration,
    /// How often the health gate looks at the containers.
    pub poll_interval: Duration,
}

impl ComposeExecutorConfig {
    /// Defaults for a deploy root: [`DEFAULT_LOG_LINES`], [`DEFAULT_HEALTH_TIMEOUT`],
    /// polling every 250 ms.
    pub fn new(deploy_root: impl Into<PathBuf>) -> Self {
        ComposeExecutorConfig {
            deploy_root: deploy_root.into(),
            log_lines: DEFAULT_LOG_LINES,
            health_timeout: DEFAULT_HEALTH_TIMEOUT,
            poll_interval: Duration::from_millis(250),
        }
    }
}

/// The Compose executor over a [`ComposeHost`].
#[derive(Debug)]
pub struct ComposeExecutor<H> {
    host: H,
    config: ComposeExecutorConfig,
    hooks: Option<Arc<dyn HookRunner>>,
}

/// Why a task stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum StopReason {
    Cancelled,
    Timeout,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Op {
    Deploy,
    Rollback,
}

/// What is journaled before each step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Journal {
    version: u32,
    op: Op,
    plan: ComposePlan,
    started_at: Timestamp,
    /// The release being deployed.
    manifest: Manifest,
    /// The health deadline of the new release.
    health_timeout_ms: u64,
    /// The sticker to write after success.
    sticker: Option<String>,
    /// The first failure: class and message.
    failure: Option<(ErrorType, String)>,
    /// Errors of restore steps.
    restore_errors: Vec<String>,
    stop: Option<StopReason>,
    /// The services that failed (health gate), for their logs.
    failing: Vec<String>,
    logs: Vec<String>,
    metrics: TaskMetrics,
    /// The pinned image per service of the release that ran before (the hooks' input).
    #[serde(default)]
    previous_images: BTreeMap<String, String>,
    /// The hooks' result outputs (`pre_hook.ok`, ...), for the task result.
    #[serde(default)]
    hook_outputs: BTreeMap<String, String>,
    /// The hooks' last output lines, prefixed with the phase.
    #[serde(default)]
    hook_logs: Vec<String>,
}

const JOURNAL_VERSION: u32 = 1;

impl Journal {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        let j: Journal = serde_json::from_slice(bytes)
            .map_err(|e| format!("the task's checkpoint is unreadable: {e}"))?;
        if j.version != JOURNAL_VERSION {
            return Err(format!(
                "the task's checkpoint has format version {}, this agent reads {JOURNAL_VERSION}",
                j.version
            ));
        }
        Ok(j)
    }

    /// Notes a cancel or a passed deadline (the first seen); `true` if the plan must stop.
    fn check_stop(&mut self, ctx: &TaskContext, deadline: Instant) -> bool {
        if self.stop.is_some() || self.plan.failed_at().is_some() {
            return false;
        }
        if ctx.is_cancelled() {
            self.stop = Some(StopReason::Cancelled);
            self.failure = Some((
                ErrorType::Cancelled,
                "the task was cancelled by core".into(),
            ));
        } else if Instant::now() >= deadline {
            self.stop = Some(StopReason::Timeout);
            self.failure = Some((ErrorType::Timeout, "the task's timeout passed".into()));
        }
        self.stop.is_some()
    }
}

/// The step a checkpoint written by this executor was taken at (kebab-case), or `None` if
/// the bytes are not such a checkpoint. For logs and tests.
pub fn checkpoint_step(checkpoint: &[u8]) -> Option<String> {
    Journal::decode(checkpoint)
        .ok()?
        .plan
        .in_progress()
        .map(|s| s.as_str().to_owned())
}

/// A step's failure.
struct StepError(ErrorType, String);

impl StepError {
    fn host(kind: ErrorType, e: HostError) -> Self {
        StepError(kind, e.to_string())
    }
}

fn failed(
    task: &AgentTask,
    started_at: Timestamp,
    kind: ErrorType,
    msg: impl Into<String>,
) -> TaskResult {
    TaskResult::failure(task.id, task.attempt, started_at, kind, msg)
}

fn ms(d: Duration) -> Option<u64> {
    u64::try_from(d.as_millis()).ok()
}

/// A private `DOCKER_CONFIG` directory (0700) with `config.json` (0600) holding one
/// registry's credentials; removed when dropped.
pub struct DockerConfigDir {
    dir: tempfile::TempDir,
}

impl DockerConfigDir {
    /// Creates it for `credentials`.
    ///
    /// # Errors
    ///
    /// IO errors (the message never holds the credentials).
    pub fn create(credentials: &RegistryCredentials) -> std::io::Result<Self> {
        use base64::Engine as _;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let dir = tempfile::Builder::new()
            .prefix("wharf-compose-auth-")
            .tempdir()?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let pair = Zeroizing::new(format!("{}:{}", credentials.username, credentials.password));
        let auth =
            Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(pair.as_bytes()));
        let mut auths = serde_json::Map::new();
        auths.insert(
            credentials.registry.clone(),
            serde_json::json!({ "auth": auth.as_str() }),
        );
        let doc = serde_json::json!({ "auths": auths });
        let bytes = Zeroizing::new(serde_json::to_vec(&doc).unwrap_or_default());
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.path().join("config.json"))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        Ok(DockerConfigDir { dir })
    }

    /// The directory, for `DOCKER_CONFIG`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A release to deploy: its manifest and file contents.
struct Release {
    manifest: Manifest,
    files: BTreeMap<String, Vec<u8>>,
}

/// Validates a deploy's lock and files before anything changes.
fn validate_deploy(task: &AgentTask, spec: &ComposeDeploySpec) -> Result<Release, StepError> {
    let invalid =
        |m: String| StepError(ErrorType::InvalidInput, format!("{m}; nothing was changed"));
    if spec.project != task.target {
        return Err(invalid(format!(
            "the task's project `{}` is not its target `{}`",
            spec.project, task.target
        )));
    }
    if spec.files.len() > files::MAX_EXTRA_FILES {
        return Err(invalid(format!(
            "{} extra files; at most {} are supported",
            spec.files.len(),
            files::MAX_EXTRA_FILES
        )));
    }
    let mut contents = BTreeMap::new();
    contents.insert(LOCK_FILE.to_owned(), spec.lock.as_bytes().to_vec());
    let mut locks =
        vec![ComposeLock::parse("the lock", &spec.lock).map_err(|e| invalid(e.to_string()))?];
    let mut compose_files = vec![LOCK_FILE.to_owned()];
    let mut names = vec![LOCK_FILE.to_owned()];
    for f in &spec.files {
        files::check_file_name(&f.name).map_err(|e| invalid(e.to_string()))?;
        if contents
            .insert(f.name.clone(), f.content.as_bytes().to_vec())
            .is_some()
        {
            return Err(invalid(format!("file `{}` is given twice", f.name)));
        }
        names.push(f.name.clone());
        if is_compose_file_name(&f.name) {
            locks
                .push(ComposeLock::parse(&f.name, &f.content).map_err(|e| invalid(e.to_string()))?);
            compose_files.push(f.name.clone());
        }
    }
    let images =
        check_expected(&locks, &spec.expected_digests).map_err(|e| invalid(e.to_string()))?;
    if let Some(sticker) = &spec.sticker {
        check_sticker(&task.target, sticker, &images).map_err(|e| {
            StepError(
                ErrorType::StickerInvalid,
                format!("{e}; nothing was changed"),
            )
        })?;
    }
    Ok(Release {
        manifest: Manifest {
            schema: MANIFEST_SCHEMA,
            release: spec.release.clone(),
            task_id: task.id.to_string(),
            files: names,
            compose_files,
            images: images
                .iter()
                .map(|(s, i)| (s.clone(), i.pinned()))
                .collect(),
        },
        files: contents,
    })
}

/// Re-checks a kept release copy: every Compose file parses, pins what the manifest says.
fn validate_copy(copy: &files::ReleaseCopy) -> Result<(), String> {
    let mut locks = Vec::new();
    for name in &copy.manifest.compose_files {
        let bytes = copy
            .files
            .get(name)
            .ok_or_else(|| format!("{name} is listed but missing"))?;
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{name} is not UTF-8"))?;
        locks.push(ComposeLock::parse(name, text).map_err(|e| e.to_string())?);
    }
    let expected: BTreeMap<String, String> = copy
        .manifest
        .images
        .iter()
        .map(|(s, i)| {
            let digest = i.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            (s.clone(), digest.to_owned())
        })
        .collect();
    check_expected(&locks, &expected).map_err(|e| e.to_string())?;
    Ok(())
}

/// The pinned images of a manifest, parsed (a hand-edited, unparsable one is left out,
/// so a sticker naming it is refused).
fn parsed_images(manifest: &Manifest) -> BTreeMap<String, ImageRef> {
    manifest
        .images
        .iter()
        .filter_map(|(k, v)| ImageRef::parse(v).ok().map(|i| (k.clone(), i)))
        .collect()
}

/// Checks a signed sticker: well-formed, for this compose project, naming every
/// service's digest.
fn check_sticker(
    project: &str,
    text: &str,
    images: &BTreeMap<String, ImageRef>,
) -> Result<(), String> {
    let parsed = wharf_sticker::SignedSticker::parse(text.as_bytes())
        .map_err(|e| format!("the task's sticker is not valid: {e}"))?;
    let s = &parsed.sticker;
    if s.target.kind != wharf_sticker::TargetKind::Compose || s.target.name != project {
        return Err(format!(
            "the task's sticker is for {} target `{}`, not compose project `{project}`",
            s.target.kind, s.target.name
        ));
    }
    for (service, image) in images {
        let d = image.digest().to_string();
        if !s
            .components
            .iter()
            .any(|c| &c.name == service && c.digest == d)
        {
            return Err(format!(
                "the task's sticker does not name service `{service}` at {d}; core must sign \
                 a sticker for this lock"
            ));
        }
    }
    Ok(())
}

/// What the health gate saw.
enum Health {
    /// Every service runs its pinned image, healthy.
    Healthy,
    /// Not yet.
    Waiting(String),
    /// A service failed for good (unhealthy, exited): its name and why.
    Failed(Vec<String>, String),
}

fn judge(images: &BTreeMap<String, String>, containers: &[ServiceContainer]) -> Health {
    let mut waiting = Vec::new();
    let mut failing = Vec::new();
    let mut reasons = Vec::new();
    for (service, pinned) in images {
        let mine: Vec<&ServiceContainer> = containers
            .iter()
            .filter(|c| &c.service == service)
            .collect();
        if mine.is_empty() {
            waiting.push(format!("{service}: no container yet"));
            continue;
        }
        for c in mine {
            if !c.runs(pinned) {
                waiting.push(format!("{service}: {} runs another image", c.name));
            } else if c.health == Some(ContainerHealth::Unhealthy) {
                failing.push(service.clone());
                reasons.push(format!("service `{service}` is unhealthy ({})", c.name));
            } else if !c.running && c.status != "restarting" && c.status != "created" {
                failing.push(service.clone());
                reasons.push(format!(
                    "service `{service}` stopped ({}: {}, exit code {})",
                    c.name,
                    c.status,
                    c.exit_code.map_or("?".into(), |x| x.to_string())
                ));
            } else if !c.running {
                waiting.push(format!("{service}: {} is {}", c.name, c.status));
            } else if c.health == Some(ContainerHealth::Starting) {
                waiting.push(format!("{service}: {} health is starting", c.name));
            }
        }
    }
    if !failing.is_empty() {
        failing.dedup();
        return Health::Failed(failing, reasons.join("; "));
    }
    if waiting.is_empty() {
        Health::Healthy
    } else {
        Health::Waiting(waiting.join("; "))
    }
}

impl<H: ComposeHost> ComposeExecutor<H> {
    /// An executor over `host`, without a hook runner (a deploy with a hook is refused
    /// before anything changes).
    pub fn new(host: H, config: ComposeExecutorConfig) -> Self {
        ComposeExecutor {
            host,
            config,
            hooks: None,
        }
    }

    /// The same executor running pre- and post-deploy hooks with `hooks`.
    pub fn with_hooks(mut self, hooks: Arc<dyn HookRunner>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    fn project(&self, project: &str) -> ProjectDir {
        ProjectDir::new(&self.config.deploy_root, project)
    }

    fn project_files(&self, project: &str, manifest: &Manifest) -> ProjectFiles {
        ProjectFiles {
            project: project.to_owned(),
            dir: self.project(project).path().to_owned(),
            compose_files: manifest.compose_files.clone(),
        }
    }

    fn task_deadline(task: &AgentTask, started_at: Timestamp) -> Instant {
        let end = started_at.saturating_add(task.timeout);
        let left = end.duration_since(Timestamp::now()).as_duration();
        Instant::now() + left
    }

    async fn deploy(
        &self,
        task: &AgentTask,
        spec: &ComposeDeploySpec,
        ctx: &TaskContext,
    ) -> TaskResult {
        let started_at = Timestamp::now();
        let release = match validate_deploy(task, spec) {
            Ok(r) => r,
            Err(StepError(kind, msg)) => return failed(task, started_at, kind, msg),
        };
        if let Err(e) = check_hooks(
            self.hooks.as_deref(),
            spec.pre_hook.as_ref(),
            spec.post_hook.as_ref(),
        ) {
            return failed(task, started_at, e.kind, e.message);
        }
        let hooks = HookSteps {
            pre: spec.pre_hook.is_some(),
            post: spec.post_hook.is_some(),
        };
        let health = if spec.health_timeout.as_millis() == 0 {
            self.config.health_timeout
        } else {
            spec.health_timeout.as_duration()
        };
        self.start(
            task,
            Op::Deploy,
            release.manifest,
            spec.sticker.clone(),
            health,
            hooks,
            ctx,
            started_at,
        )
        .await
    }

    async fn rollback(
        &self,
        task: &AgentTask,
        sticker: Option<String>,
        ctx: &TaskContext,
    ) -> TaskResult {
        let started_at = Timestamp::now();
        let dir = self.project(&task.target);
        let copy = match dir.previous() {
            Ok(Some(c)) => c,
            Ok(None) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::NotFound,
                    format!(
                        "project `{}` has no previous release kept (it was deployed at most \
                         once by Wharf); deploy the release you want with `wharf compose \
                         deploy`; nothing was changed",
                        task.target
                    ),
                )
            }
            Err(e) => return failed(task, started_at, ErrorType::Internal, e.to_string()),
        };
        if let Err(e) = validate_copy(&copy) {
            return failed(
                task,
                started_at,
                ErrorType::InvalidInput,
                format!(
                    "the kept previous release of `{}` is damaged: {e}; nothing was changed",
                    task.target
                ),
            );
        }
        let sticker = match sticker {
            Some(s) => {
                if let Err(e) = check_sticker(&task.target, &s, &parsed_images(&copy.manifest)) {
                    return failed(
                        task,
                        started_at,
                        ErrorType::StickerInvalid,
                        format!("{e}; nothing was changed"),
                    );
                }
                Some(s)
            }
            // The sticker core signed when that release was deployed.
            None => copy.sticker.and_then(|b| String::from_utf8(b).ok()),
        };
        self.start(
            task,
            Op::Rollback,
            copy.manifest,
            sticker,
            self.config.health_timeout,
            HookSteps::NONE,
            ctx,
            started_at,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start(
        &self,
        task: &AgentTask,
        op: Op,
        manifest: Manifest,
        sticker: Option<String>,
        health: Duration,
        hooks: HookSteps,
        ctx: &TaskContext,
        started_at: Timestamp,
    ) -> TaskResult {
        let current = match self.project(&task.target).current() {
            Ok(c) => c,
            Err(e) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::Internal,
                    format!("{e}; nothing was changed"),
                )
            }
        };
        let journal = Journal {
            version: JOURNAL_VERSION,
            op,
            plan: ComposePlan::new(current.is_some(), hooks),
            started_at,
            manifest,
            health_timeout_ms: ms(health).unwrap_or(u64::MAX),
            sticker,
            failure: None,
            restore_errors: Vec::new(),
            stop: None,
            failing: Vec::new(),
            logs: Vec::new(),
            metrics: TaskMetrics::default(),
            previous_images: current.map(|m| m.images).unwrap_or_default(),
            hook_outputs: BTreeMap::new(),
            hook_logs: Vec::new(),
        };
        self.drive(task, journal, ctx).await
    }

    async fn drive(&self, task: &AgentTask, mut journal: Journal, ctx: &TaskContext) -> TaskResult {
        let deadline = Self::task_deadline(task, journal.started_at);
        // A Compose process of a killed agent run must not work alongside this one.
        match self
            .host
            .stop_leftovers(self.project(&task.target).path())
            .await
        {
            Ok(pids) if !pids.is_empty() => ctx.progress(
                "leftovers",
                format!("stopped Compose processes of an earlier agent run: {pids:?}"),
            ),
            Ok(_) => {}
            Err(e) => {
                return failed(
                    task,
                    journal.started_at,
                    ErrorType::Internal,
                    format!("{e}; the task stopped before its next step; inspect the project (`wharf inspect`)"),
                )
            }
        }
        loop {
            if journal.check_stop(ctx, deadline) {
                journal.plan.stop();
            }
            let step = match journal.plan.next_step() {
                Next::Done(outcome) => return self.finish(task, &journal, outcome),
                Next::Take(step) => step,
            };
            if let Err(e) = ctx.checkpoint(journal.encode()).await {
                return failed(
                    task,
                    journal.started_at,
                    ErrorType::Internal,
                    format!(
                        "{e}; the task stopped before step {}; inspect the project (`wharf \
                         inspect`) and fix the agent's state dir",
                        step.as_str()
                    ),
                );
            }
            fault::pause_at(step.as_str()).await;
            let begun = Instant::now();
            let res = self.take(task, step, &mut journal, ctx, deadline).await;
            let took = ms(begun.elapsed());
            match step {
                Step::Pull => journal.metrics.pull_ms = took,
                Step::Up => journal.metrics.deploy_ms = took,
                Step::WaitHealthy => journal.metrics.health_ms = took,
                _ => {}
            }
            match res {
                Ok(()) => journal.plan.done(step),
                Err(StepError(kind, msg)) => {
                    ctx.progress(step.as_str(), format!("failed: {msg}"));
                    if step.is_restore() || step == Step::Promote {
                        journal
                            .restore_errors
                            .push(format!("{}: {msg}", step.as_str()));
                    } else if journal.failure.is_none() {
                        journal.failure = Some((kind, msg));
                    }
                    journal.plan.failed(step);
                }
            }
        }
    }

    async fn take(
        &self,
        task: &AgentTask,
        step: Step,
        journal: &mut Journal,
        ctx: &TaskContext,
        deadline: Instant,
    ) -> Result<(), StepError> {
        let project = &task.target;
        let dir = self.project(project);
        let internal = |e: files::FilesError| StepError(ErrorType::Internal, e.to_string());
        match step {
            Step::KeepCurrent => {
                ctx.progress(
                    step.as_str(),
                    "keeping the running release as the rollback copy",
                );
                dir.keep_current().map_err(internal)
            }
            Step::WriteFiles => {
                let files = match journal.op {
                    Op::Deploy => match &task.payload {
                        TaskPayload::ComposeDeploy(spec) => validate_deploy(task, spec)?.files,
                        _ => {
                            return Err(StepError(
                                ErrorType::Internal,
                                "the task is not a compose-deploy".into(),
                            ))
                        }
                    },
                    Op::Rollback => {
                        dir.previous()
                            .map_err(internal)?
                            .ok_or_else(|| {
                                StepError(
                                    ErrorType::Internal,
                                    "the previous release copy disappeared".into(),
                                )
                            })?
                            .files
                    }
                };
                ctx.progress(
                    step.as_str(),
                    format!(
                        "writing {} file(s) into {}",
                        files.len(),
                        dir.path().display()
                    ),
                );
                dir.write_release(&journal.manifest, &files)
                    .map_err(internal)
            }
            Step::Pull => {
                let files = self.project_files(project, &journal.manifest);
                let config = match ctx.credentials() {
                    Some(c) => Some(DockerConfigDir::create(c).map_err(|e| {
                        StepError(
                            ErrorType::Internal,
                            format!("cannot create a private DOCKER_CONFIG for the pull: {e}"),
                        )
                    })?),
                    None => None,
                };
                ctx.progress(
                    step.as_str(),
                    format!(
                        "pulling {} image(s) by digest",
                        journal.manifest.images.len()
                    ),
                );
                let pulled = tokio::select! {
                    r = self.host.pull(&files, config.as_ref().map(DockerConfigDir::path)) => r,
                    () = ctx.cancelled() => Err(HostError::Docker("cancelled during the pull".into())),
                    () = tokio::time::sleep_until(deadline) => Err(HostError::Docker("the task's timeout passed during the pull".into())),
                };
                // The credentials leave the disk now, whatever happened.
                drop(config);
                pulled.map_err(|e| {
                    let text = e.to_string().to_ascii_lowercase();
                    let kind = if text.contains("unauthorized")
                        || text.contains("denied")
                        || text.contains("authentication")
                    {
                        ErrorType::RegistryAuth
                    } else {
                        ErrorType::PullFailed
                    };
                    StepError::host(kind, e)
                })
            }
            Step::VerifyDigests => {
                for (service, pinned) in &journal.manifest.images {
                    let digests = self
                        .host
                        .repo_digests(pinned)
                        .await
                        .map_err(|e| StepError::host(ErrorType::Docker, e))?;
                    match digests {
                        None => {
                            return Err(StepError(
                                ErrorType::PullFailed,
                                format!("service `{service}`: {pinned} is not on the host after the pull"),
                            ))
                        }
                        Some(d) if !d.iter().any(|x| x == pinned) => {
                            return Err(StepError(
                                ErrorType::DigestMismatch,
                                format!(
                                    "service `{service}`: the pulled image's digests are {} and do not include {pinned}",
                                    d.join(", ")
                                ),
                            ))
                        }
                        Some(_) => {}
                    }
                }
                Ok(())
            }
            Step::PreHook | Step::PostHook => self.hook_step(task, step, journal, ctx).await,
            Step::Up => {
                ctx.progress(
                    step.as_str(),
                    format!(
                        "{} up -d --remove-orphans --force-recreate",
                        self.host.tool().command()
                    ),
                );
                let files = self.project_files(project, &journal.manifest);
                self.host
                    .up(&files)
                    .await
                    .map_err(|e| StepError::host(ErrorType::Compose, e))
            }
            Step::WaitHealthy => {
                let health = Duration::from_millis(journal.health_timeout_ms);
                let until = deadline.min(Instant::now() + health);
                let images = journal.manifest.images.clone();
                match self.wait_healthy(project, &images, until, Some(ctx)).await {
                    Ok(()) => Ok(()),
                    Err((failing, msg)) => {
                        journal.failing = failing;
                        Err(StepError(ErrorType::HealthFailed, msg))
                    }
                }
            }
            Step::WriteSticker => match &journal.sticker {
                Some(s) => dir
                    .write_sticker(s)
                    .map_err(|e| StepError(ErrorType::StickerInvalid, e.to_string())),
                None => Ok(()),
            },
            Step::Promote => dir.promote_kept().map_err(internal),
            Step::CollectLogs => {
                journal.logs = self.collect_logs(project, &journal.failing).await;
                Ok(())
            }
            Step::Down => {
                let files = self.project_files(project, &journal.manifest);
                self.host
                    .down(&files)
                    .await
                    .map_err(|e| StepError::host(ErrorType::Compose, e))
            }
            Step::RestoreFiles => {
                ctx.progress(step.as_str(), "putting the previous release's files back");
                dir.restore_kept(&journal.manifest.files).map_err(internal)
            }
            Step::UpPrevious => {
                let current = dir.current().map_err(internal)?.ok_or_else(|| {
                    StepError(
                        ErrorType::RollbackFailed,
                        "the previous release's manifest is missing".into(),
                    )
                })?;
                ctx.progress(step.as_str(), "bringing the previous release up again");
                let files = self.project_files(project, &current);
                self.host
                    .up(&files)
                    .await
                    .map_err(|e| StepError::host(ErrorType::RollbackFailed, e))
            }
            Step::WaitPreviousHealthy => {
                let current = dir.current().map_err(internal)?.ok_or_else(|| {
                    StepError(
                        ErrorType::RollbackFailed,
                        "the previous release's manifest is missing".into(),
                    )
                })?;
                // The restore is never cut short by the task's deadline.
                let until = Instant::now() + self.config.health_timeout;
                self.wait_healthy(project, &current.images, until, None)
                    .await
                    .map_err(|(_, msg)| StepError(ErrorType::RollbackFailed, msg))
            }
            Step::DiscardKept => dir.discard_kept().map_err(internal),
        }
    }

    /// Runs the deploy's pre- or post-deploy hook (from the task, also on resume), keeping
    /// its outputs and last lines in the journal for the result.
    async fn hook_step(
        &self,
        task: &AgentTask,
        step: Step,
        journal: &mut Journal,
        ctx: &TaskContext,
    ) -> Result<(), StepError> {
        let TaskPayload::ComposeDeploy(spec) = &task.payload else {
            return Err(StepError(
                ErrorType::Internal,
                "hook steps belong to a compose-deploy".into(),
            ));
        };
        let (phase, hook) = if step == Step::PreHook {
            (Phase::PreDeploy, spec.pre_hook.as_ref())
        } else {
            (Phase::PostDeploy, spec.post_hook.as_ref())
        };
        let Some(hook) = hook else {
            return Ok(());
        };
        let input = HookInput {
            phase,
            target: task.target.clone(),
            release: journal.manifest.release.clone(),
            image: String::new(),
            digest: String::new(),
            previous: None,
            services: journal.manifest.images.clone(),
            previous_services: journal.previous_images.clone(),
        };
        // A hook run cut off by a kill left outputs of its own phase: this run replaces them.
        let prefix = format!("{}.", phase.output_prefix());
        journal.hook_outputs.retain(|k, _| !k.starts_with(&prefix));
        let (record, result) = run_hook(self.hooks.as_deref(), hook, &input, ctx).await;
        journal.hook_outputs.extend(record.outputs);
        journal.hook_logs.extend(record.logs);
        result.map_err(|e| {
            if e.is_cancel() {
                journal.stop.get_or_insert(StopReason::Cancelled);
            }
            StepError(e.kind, e.message)
        })
    }

    /// Waits until every service runs its pinned image, running and healthy; fails early
    /// on an unhealthy or stopped container, at `until`, or (with `ctx`) on a cancel.
    async fn wait_healthy(
        &self,
        project: &str,
        images: &BTreeMap<String, String>,
        until: Instant,
        ctx: Option<&TaskContext>,
    ) -> Result<(), (Vec<String>, String)> {
        let mut last;
        loop {
            match self.host.containers(project).await {
                Ok(containers) => match judge(images, &containers) {
                    Health::Healthy => return Ok(()),
                    Health::Failed(services, msg) => return Err((services, msg)),
                    Health::Waiting(why) => last = why,
                },
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= until {
                let failing = images
                    .keys()
                    .filter(|s| last.contains(&format!("{s}:")))
                    .cloned()
                    .collect();
                return Err((failing, format!("not healthy in time: {last}")));
            }
            if ctx.is_some_and(TaskContext::is_cancelled) {
                return Err((
                    Vec::new(),
                    format!("cancelled while waiting for health: {last}"),
                ));
            }
            tokio::time::sleep(
                self.config
                    .poll_interval
                    .min(until.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    async fn collect_logs(&self, project: &str, failing: &[String]) -> Vec<String> {
        let Ok(containers) = self.host.containers(project).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for c in containers
            .iter()
            .filter(|c| failing.is_empty() || failing.contains(&c.service))
        {
            match self.host.logs_tail(&c.id, self.config.log_lines).await {
                Ok(lines) => out.extend(lines.into_iter().map(|l| format!("{} | {l}", c.service))),
                Err(e) => out.push(format!("{} | (no logs: {e})", c.service)),
            }
        }
        out
    }

    fn finish(&self, task: &AgentTask, journal: &Journal, outcome: Outcome) -> TaskResult {
        let mut r = if outcome.is_success() {
            TaskResult::success(task.id, task.attempt, journal.started_at)
        } else {
            let (kind, msg) = journal
                .failure
                .clone()
                .unwrap_or((ErrorType::Internal, "the deploy failed".into()));
            let (kind, msg) = match outcome {
                Outcome::NothingChanged => (kind, format!("{msg}; nothing was changed")),
                Outcome::RolledBack => (
                    kind,
                    format!("{msg}; the whole previous release was brought back and is healthy"),
                ),
                Outcome::Removed => (
                    kind,
                    format!("{msg}; this was the project's first release, its containers and files were removed"),
                ),
                _ => (
                    ErrorType::RollbackFailed,
                    format!(
                        "{msg}; restoring the previous release failed too ({}): inspect the project \
                         (`wharf inspect`) and fix it by hand",
                        journal.restore_errors.join("; ")
                    ),
                ),
            };
            let mut r = failed(task, journal.started_at, kind, msg);
            r.rolled_back = outcome.rolled_back();
            r.retriable = outcome == Outcome::NothingChanged
                && matches!(kind, ErrorType::PullFailed | ErrorType::Docker);
            r
        };
        r.logs = journal.logs.clone();
        r.logs.extend(journal.hook_logs.iter().cloned());
        if outcome.is_success() && journal.plan.promote_failed() {
            r.logs.push(format!(
                "warning: the rollback copy could not be updated ({})",
                journal.restore_errors.join("; ")
            ));
        }
        r.metrics = journal.metrics;
        r.outputs.extend(journal.hook_outputs.clone());
        r.outputs
            .insert("tool".into(), self.host.tool().command().into());
        r.outputs.insert(
            "project_dir".into(),
            self.project(&task.target).path().display().to_string(),
        );
        if outcome.is_success() {
            r.outputs.insert(
                "services".into(),
                serde_json::to_string(&journal.manifest.images).unwrap_or_default(),
            );
        }
        r
    }

    async fn inspect(&self, task: &AgentTask, started_at: Timestamp) -> TaskResult {
        let dir = self.project(&task.target);
        let current = match dir.current() {
            Ok(c) => c,
            Err(e) => return failed(task, started_at, ErrorType::Internal, e.to_string()),
        };
        let containers = match self.host.containers(&task.target).await {
            Ok(c) => c,
            Err(e) => return failed(task, started_at, ErrorType::Docker, e.to_string()),
        };
        let mut r = TaskResult::success(task.id, task.attempt, started_at);
        let expected = current
            .as_ref()
            .map(|m| m.images.clone())
            .unwrap_or_default();
        let services: Vec<serde_json::Value> = containers
            .iter()
            .map(|c| {
                serde_json::json!({
                    "service": c.service,
                    "container": c.name,
                    "state": c.status,
                    "running": c.running,
                    "health": c.health.map(ContainerHealth::as_str),
                    "digest": c.digest(),
                    "repo_digests": c.repo_digests,
                    "expected_image": expected.get(&c.service),
                })
            })
            .collect();
        r.outputs.insert(
            "exists".into(),
            (!containers.is_empty() || current.is_some()).to_string(),
        );
        r.outputs.insert(
            "services".into(),
            serde_json::Value::Array(services).to_string(),
        );
        r.outputs.insert(
            "state".into(),
            match judge(&expected, &containers) {
                _ if containers.is_empty() => "absent",
                Health::Healthy if !expected.is_empty() => "healthy",
                Health::Failed(..) => "unhealthy",
                _ => "starting",
            }
            .into(),
        );
        if let Some(m) = &current {
            r.outputs.insert(
                "release".into(),
                serde_json::to_string(&m.release).unwrap_or_default(),
            );
            r.outputs.insert(
                "images".into(),
                serde_json::to_string(&m.images).unwrap_or_default(),
            );
        }
        if let Ok(Some(prev)) = dir.previous() {
            r.outputs.insert(
                "previous_images".into(),
                serde_json::to_string(&prev.manifest.images).unwrap_or_default(),
            );
        }
        match dir.read_sticker() {
            Ok(Some(b)) => {
                r.outputs
                    .insert("sticker".into(), String::from_utf8_lossy(&b).into_owned());
            }
            Ok(None) => {}
            Err(e) => {
                r.outputs.insert("sticker_error".into(), e.to_string());
            }
        }
        r.outputs
            .insert("tool".into(), self.host.tool().command().into());
        r
    }

    async fn health_check(&self, task: &AgentTask, started_at: Timestamp) -> TaskResult {
        let current = match self.project(&task.target).current() {
            Ok(Some(c)) => c,
            Ok(None) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::NotFound,
                    format!(
                        "project `{}` was not deployed by Wharf on this agent",
                        task.target
                    ),
                )
            }
            Err(e) => return failed(task, started_at, ErrorType::Internal, e.to_string()),
        };
        let containers = match self.host.containers(&task.target).await {
            Ok(c) => c,
            Err(e) => return failed(task, started_at, ErrorType::Docker, e.to_string()),
        };
        match judge(&current.images, &containers) {
            Health::Healthy => {
                let mut r = TaskResult::success(task.id, task.attempt, started_at);
                r.outputs.insert("health".into(), "healthy".into());
                r
            }
            Health::Failed(_, why) | Health::Waiting(why) => {
                let mut r = failed(task, started_at, ErrorType::HealthFailed, why);
                r.outputs.insert("health".into(), "unhealthy".into());
                r
            }
        }
    }

    fn read_sticker(&self, task: &AgentTask, started_at: Timestamp) -> TaskResult {
        match self.project(&task.target).read_sticker() {
            Ok(Some(b)) => {
                let mut r = TaskResult::success(task.id, task.attempt, started_at);
                r.outputs
                    .insert("sticker".into(), String::from_utf8_lossy(&b).into_owned());
                r
            }
            Ok(None) => failed(
                task,
                started_at,
                ErrorType::NotFound,
                format!(
                    "no sticker for project `{}` on this agent: nothing was deployed there by \
                     Wharf, or the sticker was deleted",
                    task.target
                ),
            ),
            Err(e) => failed(task, started_at, ErrorType::StickerInvalid, e.to_string()),
        }
    }

    fn write_sticker(&self, task: &AgentTask, text: &str, started_at: Timestamp) -> TaskResult {
        let images = match self.project(&task.target).current() {
            Ok(Some(m)) => parsed_images(&m),
            Ok(None) => BTreeMap::new(),
            Err(e) => return failed(task, started_at, ErrorType::Internal, e.to_string()),
        };
        if let Err(e) = check_sticker(&task.target, text, &images) {
            return failed(
                task,
                started_at,
                ErrorType::StickerInvalid,
                format!("{e}; nothing was changed"),
            );
        }
        match self.project(&task.target).write_sticker(text) {
            Ok(()) => TaskResult::success(task.id, task.attempt, started_at),
            Err(e) => failed(task, started_at, ErrorType::StickerInvalid, e.to_string()),
        }
    }
}

impl<H: ComposeHost> Executor for ComposeExecutor<H> {
    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            capability::COMPOSE.to_owned(),
            self.host.tool().capability().to_owned(),
        ];
        caps.extend(hook_capabilities(self.hooks.as_deref()));
        caps
    }

    async fn execute(&self, task: AgentTask, ctx: TaskContext) -> TaskResult {
        let started_at = Timestamp::now();
        if let Err(e) = wharf_sticker::check_project_name(&task.target) {
            return failed(
                &task,
                started_at,
                ErrorType::InvalidInput,
                format!("{e}; nothing was changed"),
            );
        }
        match &task.payload {
            TaskPayload::ComposeDeploy(spec) => self.deploy(&task, spec, &ctx).await,
            TaskPayload::ComposeRollback(spec) => {
                if spec.project != task.target {
                    return failed(
                        &task,
                        started_at,
                        ErrorType::InvalidInput,
                        "the task's project is not its target; nothing was changed",
                    );
                }
                self.rollback(&task, None, &ctx).await
            }
            TaskPayload::Inspect => self.inspect(&task, started_at).await,
            TaskPayload::HealthCheck(_) => self.health_check(&task, started_at).await,
            TaskPayload::ReadSticker => self.read_sticker(&task, started_at),
            TaskPayload::WriteSticker(spec) => self.write_sticker(&task, &spec.sticker, started_at),
            TaskPayload::Deploy(_) | TaskPayload::Rollback(_) => failed(
                &task,
                started_at,
                ErrorType::Unsupported,
                format!(
                    "this is the Compose agent; {} tasks go to a Docker agent (wharf-agent-docker)",
                    task.kind()
                ),
            ),
        }
    }

    async fn resume(
        &self,
        task: AgentTask,
        checkpoint: Option<Vec<u8>>,
        ctx: TaskContext,
    ) -> TaskResult {
        let now = Timestamp::now();
        let Some(bytes) = checkpoint else {
            return never_started(&task);
        };
        let mut journal = match Journal::decode(&bytes) {
            Ok(j) => j,
            Err(e) => {
                return failed(
                    &task,
                    now,
                    ErrorType::Internal,
                    format!("{e}; inspect the project (`wharf inspect`) before retrying"),
                )
            }
        };
        ctx.progress(
            "resume",
            "the agent restarted during this task; finishing it",
        );
        journal.plan.resume();
        self.drive(&task, journal, &ctx).await
    }
}
