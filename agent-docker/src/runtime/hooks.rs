//! Running a task's pre- and post-deploy hooks, shared by the Docker and Compose
//! executors: the check before anything changes ([`check_hooks`]) and one hook run as a
//! step ([`run_hook`]), with its progress lines, the cancel signal and what the task
//! result shows of it ([`HookRecord`]: the `pre_hook.*`/`post_hook.*` outputs of
//! [`wharf_hooks::contract::result_outputs`] and the hook's last lines).

use std::collections::BTreeMap;
use std::time::Instant;

use wharf_hooks::{HookError, HookInput, HookRequest, HookRunner, Phase};
use wharf_protocol::{capability, ErrorType, HookSource, HookSpec, ImageRef};

use super::TaskContext;

/// A hook that refused to run, failed or was cancelled: the task's error class and a
/// message naming the phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookStepError {
    /// The error class ([`HookError::error_type`], or [`ErrorType::Cancelled`]).
    pub kind: ErrorType,
    /// What went wrong.
    pub message: String,
}

impl HookStepError {
    /// Whether core cancelled the task during the hook.
    pub fn is_cancel(&self) -> bool {
        self.kind == ErrorType::Cancelled
    }
}

/// What a hook run leaves for the task result, passed or failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookRecord {
    /// `<phase>_hook.ok`, `.message`, `.duration_ms` and `.output.<key>`.
    pub outputs: BTreeMap<String, String>,
    /// A failed hook's last lines of output, each prefixed with its phase.
    pub logs: Vec<String>,
}

/// The capabilities an executor with `hooks` announces: `hooks`, and `host-hooks` when the
/// runner allows host commands; none without a runner.
pub fn hook_capabilities(hooks: Option<&dyn HookRunner>) -> Vec<String> {
    match hooks {
        None => Vec::new(),
        Some(h) if h.allows_host_hooks() => vec![
            capability::HOOKS.to_owned(),
            capability::HOST_HOOKS.to_owned(),
        ],
        Some(_) => vec![capability::HOOKS.to_owned()],
    }
}

/// Checks a task's hooks before anything changes: refused (`unsupported`) without a hook
/// runner, or as the runner says (a host command without `--allow-host-hooks`, an unpinned
/// image: `invalid-input`). Every message ends with "nothing was changed".
///
/// # Errors
///
/// The first hook that may not run.
pub fn check_hooks(
    hooks: Option<&dyn HookRunner>,
    pre: Option<&HookSpec>,
    post: Option<&HookSpec>,
) -> Result<(), HookStepError> {
    for (phase, hook) in [(Phase::PreDeploy, pre), (Phase::PostDeploy, post)] {
        let Some(hook) = hook else { continue };
        let Some(runner) = hooks else {
            return Err(HookStepError {
                kind: ErrorType::Unsupported,
                message: "this agent has no hook runner, so it does not run pre- and \
                          post-deploy hooks; remove --pre-hook/--post-hook from the deploy; \
                          nothing was changed"
                    .into(),
            });
        };
        runner.check(hook).map_err(|e| HookStepError {
            kind: e.error_type(),
            message: format!("the {} hook: {e}; nothing was changed", phase.as_str()),
        })?;
    }
    Ok(())
}

/// Runs `hook` with `input` to its end (its own timeout; a cancel by core stops it): the
/// task's credentials go along only for a hook image of their registry. Progress lines name
/// the phase. Returns what the result shows of the run, passed or not, and whether it
/// passed.
pub async fn run_hook(
    runner: Option<&dyn HookRunner>,
    hook: &HookSpec,
    input: &HookInput,
    ctx: &TaskContext,
) -> (HookRecord, Result<(), HookStepError>) {
    let phase = input.phase;
    let Some(runner) = runner else {
        let e = HookStepError {
            kind: ErrorType::Unsupported,
            message: format!(
                "the {} hook cannot run: this agent has no hook runner",
                phase.as_str()
            ),
        };
        return (HookRecord::default(), Err(e));
    };
    let credentials = match &hook.source {
        HookSource::Image(text) => ImageRef::parse(text)
            .ok()
            .and_then(|i| ctx.credentials_for(&i)),
        HookSource::HostCommand(_) => None,
    };
    ctx.progress(
        phase.as_str(),
        format!(
            "running the {} hook (timeout {})",
            phase.as_str(),
            hook.timeout
        ),
    );
    let began = Instant::now();
    let request = HookRequest {
        spec: hook,
        input,
        credentials,
    };
    let outcome = tokio::select! {
        r = runner.run(request) => r,
        () = ctx.cancelled() => {
            let e = HookStepError {
                kind: ErrorType::Cancelled,
                message: format!("cancelled by core during the {} hook", phase.as_str()),
            };
            return (HookRecord::default(), Err(e));
        }
    };
    let (ok, message, outputs, logs) = match &outcome {
        Ok(r) => (true, r.message.clone(), r.outputs.clone(), Vec::new()),
        Err(e) => {
            let outputs = match e {
                HookError::Failed { outputs, .. } => outputs.clone(),
                _ => BTreeMap::new(),
            };
            (false, e.to_string(), outputs, e.logs().to_vec())
        }
    };
    let duration = outcome
        .as_ref()
        .map(|r| r.duration)
        .unwrap_or_else(|_| began.elapsed());
    let record = HookRecord {
        outputs: wharf_hooks::contract::result_outputs(phase, ok, &message, duration, &outputs),
        logs: logs
            .iter()
            .map(|l| format!("{}: {l}", phase.as_str()))
            .collect(),
    };
    let result = match outcome {
        Ok(_) => {
            ctx.progress(phase.as_str(), format!("the hook passed: {message}"));
            Ok(())
        }
        Err(e) => Err(HookStepError {
            kind: e.error_type(),
            message: format!("the {} hook failed: {e}", phase.as_str()),
        }),
    };
    (record, result)
}
