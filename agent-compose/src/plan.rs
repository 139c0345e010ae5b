//! The Compose deploy step plan (design §4, Compose deploy) as a pure state machine.
//!
//! The executor asks [`ComposePlan::next_step`] for the step to take, journals the plan (with
//! that step in progress), takes the step and reports [`ComposePlan::done`] or
//! [`ComposePlan::failed`]. No IO happens here. Every step is idempotent, so after a kill
//! the step that was in progress is simply taken again ([`ComposePlan::resume`]).
//!
//! Forward path: `keep-current` (copy the running release's files as the rollback copy)
//! → `write-files` (the new lock and files, each atomically) → `pull` → `verify-digests`
//! → `pre-hook` (only with a pre-deploy hook) → `up` (`up -d --remove-orphans
//! --force-recreate`) → `wait-healthy` → `post-hook` (only with a post-deploy hook) →
//! `write-sticker` → `promote` (the kept copy becomes the project's rollback copy).
//!
//! A failure (or a cancel/timeout, see [`ComposePlan::stop`]) turns the plan to the
//! restore path:
//! - before anything ran (`keep-current`, `write-files`, `pull`, `verify-digests`,
//!   `pre-hook`): the previous files are put back (`restore-files`), nothing else changed;
//! - from `up` on, with a previous release: `collect-logs` → `restore-files` →
//!   `up-previous` → `wait-previous-healthy`: the whole previous release is back;
//! - from `up` on, on a first deploy: `collect-logs` → `down` → `restore-files` (removes
//!   the new files): the project is gone, as before.
//!
//! Both paths end with `discard-kept` (the kept copy of a failed deploy is removed).

use serde::{Deserialize, Serialize};

/// One step of a Compose deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Copy the running release's files (lock, extra files, manifest, sticker) as the kept copy.
    KeepCurrent,
    /// Write the new lock and files under the project directory, each atomically.
    WriteFiles,
    /// Pull every service image by digest.
    Pull,
    /// Check that every pulled image carries the expected digest.
    VerifyDigests,
    /// Run the pre-deploy hook (before anything runs; its failure changes nothing).
    PreHook,
    /// `up -d --remove-orphans --force-recreate`.
    Up,
    /// Wait until every service's containers run the expected digest and are healthy.
    WaitHealthy,
    /// Run the post-deploy hook (the new release is healthy; its failure restores the
    /// previous one).
    PostHook,
    /// Write the signed sticker.
    WriteSticker,
    /// Make the kept copy the project's rollback copy.
    Promote,
    /// Keep the failed services' last log lines.
    CollectLogs,
    /// Stop and remove the project's containers (a failed first deploy).
    Down,
    /// Put the kept files back (none kept: remove the new ones).
    RestoreFiles,
    /// `up` the previous release again.
    UpPrevious,
    /// Wait until the previous release is healthy again.
    WaitPreviousHealthy,
    /// Remove the kept copy of a failed deploy.
    DiscardKept,
}

impl Step {
    /// The kebab-case name, as in progress lines and `WHARF_FAULT_PAUSE_AT`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::KeepCurrent => "keep-current",
            Step::WriteFiles => "write-files",
            Step::Pull => "pull",
            Step::VerifyDigests => "verify-digests",
            Step::PreHook => "pre-hook",
            Step::Up => "up",
            Step::WaitHealthy => "wait-healthy",
            Step::PostHook => "post-hook",
            Step::WriteSticker => "write-sticker",
            Step::Promote => "promote",
            Step::CollectLogs => "collect-logs",
            Step::Down => "down",
            Step::RestoreFiles => "restore-files",
            Step::UpPrevious => "up-previous",
            Step::WaitPreviousHealthy => "wait-previous-healthy",
            Step::DiscardKept => "discard-kept",
        }
    }

    /// Every step, forward path first.
    pub const ALL: [Step; 16] = [
        Step::KeepCurrent,
        Step::WriteFiles,
        Step::Pull,
        Step::VerifyDigests,
        Step::PreHook,
        Step::Up,
        Step::WaitHealthy,
        Step::PostHook,
        Step::WriteSticker,
        Step::Promote,
        Step::CollectLogs,
        Step::Down,
        Step::RestoreFiles,
        Step::UpPrevious,
        Step::WaitPreviousHealthy,
        Step::DiscardKept,
    ];

    /// Whether the step belongs to the restore path.
    pub const fn is_restore(self) -> bool {
        matches!(
            self,
            Step::CollectLogs
                | Step::Down
                | Step::RestoreFiles
                | Step::UpPrevious
                | Step::WaitPreviousHealthy
                | Step::DiscardKept
        )
    }
}

/// How a plan ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The new release runs, healthy, with its sticker.
    Succeeded,
    /// The deploy failed before anything ran; the previous files are back, nothing else
    /// changed.
    NothingChanged,
    /// The deploy failed after `up`; the whole previous release runs again, healthy.
    RolledBack,
    /// A first deploy failed after `up`; its containers and files are removed.
    Removed,
    /// The deploy failed and so did a restore step: the project needs an operator.
    RestoreFailed,
}

impl Outcome {
    /// Whether the task succeeded.
    pub const fn is_success(self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// Whether the result is `rolled_back=true`: containers of the new release ran and
    /// the previous state was put back.
    pub const fn rolled_back(self) -> bool {
        matches!(self, Outcome::RolledBack | Outcome::Removed)
    }
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Take this step (journal the plan first).
    Take(Step),
    /// The plan is over.
    Done(Outcome),
}

/// Which hook steps a deploy has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSteps {
    /// A pre-deploy hook runs after `verify-digests`, before `up`.
    pub pre: bool,
    /// A post-deploy hook runs after `wait-healthy`, before `write-sticker`.
    pub post: bool,
}

impl HookSteps {
    /// No hooks (a rollback, a deploy without hooks).
    pub const NONE: HookSteps = HookSteps {
        pre: false,
        post: false,
    };
}

/// The plan of one Compose deploy (or rollback, which deploys the kept files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComposePlan {
    /// A release ran before this deploy (its files were found).
    had_current: bool,
    /// The steps still to take, in order; the first is in progress when `in_progress`.
    queue: Vec<Step>,
    /// The first step of `queue` was handed out and not reported yet.
    in_progress: bool,
    /// The forward step that failed (or at which the plan was stopped).
    failed_at: Option<Step>,
    /// A restore step failed.
    restore_failed: bool,
    /// The forward path ran `promote` (a failure of `promote` does not undo the deploy).
    promote_failed: bool,
    /// Set once the plan is over.
    outcome: Option<Outcome>,
}

/// The forward path with both hooks; [`forward`] leaves out the hooks a deploy lacks.
const FORWARD: [Step; 10] = [
    Step::KeepCurrent,
    Step::WriteFiles,
    Step::Pull,
    Step::VerifyDigests,
    Step::PreHook,
    Step::Up,
    Step::WaitHealthy,
    Step::PostHook,
    Step::WriteSticker,
    Step::Promote,
];

/// The forward path of a deploy with `hooks`.
fn forward(hooks: HookSteps) -> Vec<Step> {
    FORWARD
        .iter()
        .copied()
        .filter(|s| match s {
            Step::PreHook => hooks.pre,
            Step::PostHook => hooks.post,
            _ => true,
        })
        .collect()
}

impl ComposePlan {
    /// A plan for a deploy onto a project where a release runs (`had_current`) or not,
    /// with the hook steps of `hooks`.
    pub fn new(had_current: bool, hooks: HookSteps) -> Self {
        ComposePlan {
            had_current,
            queue: forward(hooks),
            in_progress: false,
            failed_at: None,
            restore_failed: false,
            promote_failed: false,
            outcome: None,
        }
    }

    /// Whether a release ran before this deploy.
    pub fn had_current(&self) -> bool {
        self.had_current
    }

    /// The step in progress (handed out by [`ComposePlan::next_step`], not reported yet).
    pub fn in_progress(&self) -> Option<Step> {
        self.in_progress
            .then(|| self.queue.first().copied())
            .flatten()
    }

    /// The forward step that failed or at which the plan was stopped.
    pub fn failed_at(&self) -> Option<Step> {
        self.failed_at
    }

    /// Whether `promote` failed (the deploy still succeeded; the rollback copy is stale).
    pub fn promote_failed(&self) -> bool {
        self.promote_failed
    }

    /// The outcome, once the plan is over.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
    }

    /// The next step (the one in progress, if any, is handed out again).
    pub fn next_step(&mut self) -> Next {
        if let Some(outcome) = self.outcome {
            return Next::Done(outcome);
        }
        match self.queue.first().copied() {
            Some(step) => {
                self.in_progress = true;
                Next::Take(step)
            }
            None => {
                let outcome = self.final_outcome();
                self.outcome = Some(outcome);
                Next::Done(outcome)
            }
        }
    }

    fn final_outcome(&self) -> Outcome {
        match self.failed_at {
            None => Outcome::Succeeded,
            Some(_) if self.restore_failed => Outcome::RestoreFailed,
            Some(step) if !ran_containers(step) => Outcome::NothingChanged,
            Some(_) if self.had_current => Outcome::RolledBack,
            Some(_) => Outcome::Removed,
        }
    }

    /// Reports that `step` (the one in progress) succeeded. A report for another step is
    /// ignored.
    pub fn done(&mut self, step: Step) {
        if self.in_progress() == Some(step) {
            self.queue.remove(0);
            self.in_progress = false;
        }
    }

    /// Reports that `step` (the one in progress) failed: a forward step turns the plan to
    /// the restore path; a restore step is noted and the restore goes on.
    pub fn failed(&mut self, step: Step) {
        if self.in_progress() != Some(step) {
            return;
        }
        self.in_progress = false;
        if step == Step::Promote {
            self.promote_failed = true;
            self.queue.remove(0);
        } else if step.is_restore() {
            self.restore_failed = true;
            self.queue.remove(0);
        } else {
            self.turn_to_restore(step);
        }
    }

    /// Stops the forward path at this step boundary (cancel, timeout): the next step not
    /// yet taken counts as failed and the restore path follows. No effect on the restore
    /// path, after `promote` began, or once over.
    pub fn stop(&mut self) {
        if self.outcome.is_some() || self.failed_at.is_some() || self.in_progress {
            return;
        }
        match self.queue.first().copied() {
            Some(step) if step != Step::Promote => self.turn_to_restore(step),
            _ => {}
        }
    }

    /// After a kill: the step in progress is taken again (every step is idempotent).
    pub fn resume(&mut self) {
        self.in_progress = false;
    }

    fn turn_to_restore(&mut self, step: Step) {
        self.failed_at = Some(step);
        self.queue = if step == Step::KeepCurrent {
            vec![Step::DiscardKept]
        } else if !ran_containers(step) {
            vec![Step::RestoreFiles, Step::DiscardKept]
        } else if self.had_current {
            vec![
                Step::CollectLogs,
                Step::RestoreFiles,
                Step::UpPrevious,
                Step::WaitPreviousHealthy,
                Step::DiscardKept,
            ]
        } else {
            vec![
                Step::CollectLogs,
                Step::Down,
                Step::RestoreFiles,
                Step::DiscardKept,
            ]
        };
    }
}

/// Whether containers of the new release may exist once `step` was reached.
fn ran_containers(step: Step) -> bool {
    !matches!(
        step,
        Step::KeepCurrent | Step::WriteFiles | Step::Pull | Step::VerifyDigests | Step::PreHook
    )
}

#[cfg(test)]
mod tests;
