//! The Docker deploy step plan (design §4, Docker deploy): a pure state machine.
//!
//! The plan decides *what* to do next; the executor (an async shell over the Docker
//! client) does it, journals the step before taking it, and feeds the outcome back. No
//! IO happens here, so every path, including crash recovery, is unit-tested.
//!
//! ```text
//! Pull ─► PreHook ─► [StopCurrent ─► (RemoveStalePrevious) ─► RenameCurrentToPrevious]
//!      ─► CreateNew ─► StartNew ─► WaitHealthy ─► PostHook ─► WriteSticker ─► Done(success)
//!
//! failure in Pull/PreHook (nothing changed yet)           ─► Done(failed, rolled_back=false)
//! failure from StopCurrent on (something changed)         ─► Restore:
//!     CollectLogs ─► RemoveNew ─► RenamePreviousBack ─► StartPrevious ─► WaitPreviousHealthy
//!     ─► Done(failed, rolled_back=true)
//! ```
//!
//! Crash recovery: the journal holds the last step that was *started* and whether it
//! finished. [`DeployPlan::resume`] turns that plus what Docker shows now into the next
//! step: forward when the new container is the one running and healthy checks remain,
//! otherwise the restore path, so the target never ends with no container when one ran
//! before, nor with two.

use serde::{Deserialize, Serialize};

/// One step the executor takes. Each is journaled before it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Pull `repo@digest` (with the unsealed credentials) and check `RepoDigests`.
    Pull,
    /// Run the pre-deploy hook, if any.
    PreHook,
    /// Stop the running `<name>` (grace period).
    StopCurrent,
    /// Remove an older `<name>-previous` so only one previous is kept.
    RemoveStalePrevious,
    /// Rename `<name>` to `<name>-previous`.
    RenameCurrentToPrevious,
    /// Create `<name>` from `repo@digest` with the task's settings and labels.
    CreateNew,
    /// Start the new `<name>`.
    StartNew,
    /// Wait until the new container is healthy (probe of the task).
    WaitHealthy,
    /// Run the post-deploy hook, if any.
    PostHook,
    /// Write the signed sticker.
    WriteSticker,
    /// Keep the failed container's last log lines for the result.
    CollectLogs,
    /// Remove the new (failed) `<name>`.
    RemoveNew,
    /// Rename `<name>-previous` back to `<name>`.
    RenamePreviousBack,
    /// Start the restored `<name>`.
    StartPrevious,
    /// Wait until the restored container is healthy.
    WaitPreviousHealthy,
}

impl Step {
    /// Whether the step belongs to the restore path.
    pub const fn is_restore(self) -> bool {
        matches!(
            self,
            Step::CollectLogs
                | Step::RemoveNew
                | Step::RenamePreviousBack
                | Step::StartPrevious
                | Step::WaitPreviousHealthy
        )
    }

    /// Whether the host may have changed once this step has started: a failure from here
    /// on must restore the previous version.
    pub const fn changes_host(self) -> bool {
        !matches!(self, Step::Pull | Step::PreHook)
    }

    /// The kebab-case name, for progress lines and the journal.
    pub const fn as_str(self) -> &'static str {
        match self {
            Step::Pull => "pull",
            Step::PreHook => "pre-hook",
            Step::StopCurrent => "stop-current",
            Step::RemoveStalePrevious => "remove-stale-previous",
            Step::RenameCurrentToPrevious => "rename-current-to-previous",
            Step::CreateNew => "create-new",
            Step::StartNew => "start-new",
            Step::WaitHealthy => "wait-healthy",
            Step::PostHook => "post-hook",
            Step::WriteSticker => "write-sticker",
            Step::CollectLogs => "collect-logs",
            Step::RemoveNew => "remove-new",
            Step::RenamePreviousBack => "rename-previous-back",
            Step::StartPrevious => "start-previous",
            Step::WaitPreviousHealthy => "wait-previous-healthy",
        }
    }
}

/// What Docker shows about the target before the deploy (or at recovery).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Observed {
    /// A container named `<name>` exists.
    pub current_exists: bool,
    /// `<name>` is the container this task created (its `wharf.task.id` label is ours).
    pub current_is_new: bool,
    /// `<name>` is running.
    pub current_running: bool,
    /// A container named `<name>-previous` exists.
    pub previous_exists: bool,
}

/// What the task asks for beyond the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Options {
    /// A pre-deploy hook is configured.
    pub pre_hook: bool,
    /// A post-deploy hook is configured.
    pub post_hook: bool,
    /// A signed sticker comes with the task.
    pub sticker: bool,
}

/// Why a deploy failed, as the plan knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step that failed.
    pub step: Step,
    /// What went wrong.
    pub message: String,
}

/// How the deploy ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ending {
    /// The new version runs and is healthy; the sticker is written.
    Succeeded,
    /// Nothing on the host changed (failure in pull or the pre-deploy hook, or a cancel
    /// before anything changed).
    FailedUnchanged(Failure),
    /// The previous version was restored and is healthy again (`rolled_back=true`).
    RolledBack(Failure),
    /// There was no previous version to restore: the failed new container was removed
    /// and the target has no container, as before the deploy.
    FailedNothingToRestore(Failure),
    /// The restore itself failed: the first failure and the restore's.
    RestoreFailed {
        /// Why the deploy failed.
        cause: Failure,
        /// Why the restore failed.
        restore: Failure,
    },
}

impl Ending {
    /// Whether the task succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Ending::Succeeded)
    }

    /// Whether the previous state was restored after a failure (the result's
    /// `rolled_back`).
    pub fn rolled_back(&self) -> bool {
        matches!(self, Ending::RolledBack(_))
    }
}

/// The next thing for the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Journal this step, then take it and report with [`DeployPlan::done`] or
    /// [`DeployPlan::failed`].
    Take(Step),
    /// The deploy is over.
    Finished(Ending),
}

/// Errors of feeding the plan a report it did not ask for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The report names another step than the one the plan is waiting for.
    #[error("the plan waits for step {expected:?}, not {got:?}")]
    UnexpectedStep {
        /// The step the plan waits for.
        expected: Option<Step>,
        /// The step reported.
        got: Step,
    },
}

/// The deploy step plan; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployPlan {
    options: Options,
    /// Whether a container ran as `<name>` before this deploy.
    had_current: bool,
    /// Whether `<name>-previous` existed before this deploy (stale, to be replaced).
    had_stale_previous: bool,
    /// Whether `<name>` has been renamed to `<name>-previous` by this deploy.
    renamed: bool,
    /// Whether the new container was (or may have been) created: set when `CreateNew` is
    /// taken, so a half-done create is removed on restore.
    created: bool,
    /// The last step that finished.
    last_done: Option<Step>,
    /// The step being taken, if any.
    current: Option<Step>,
    /// The first failure (switches the plan to the restore path).
    cause: Option<Failure>,
    /// A cancel was requested: stop at the next safe step and restore.
    cancelled: bool,
    ending: Option<Ending>,
}

impl DeployPlan {
    /// A plan for a deploy onto a target where Docker shows `observed`.
    pub fn new(options: Options, observed: Observed) -> Self {
        DeployPlan {
            options,
            had_current: observed.current_exists,
            had_stale_previous: observed.previous_exists,
            renamed: false,
            created: false,
            last_done: None,
            current: None,
            cause: None,
            cancelled: false,
            ending: None,
        }
    }

    /// The next step, or the ending. Calling it again without a report returns the
    /// same step (the executor may retry after a crash of its own).
    pub fn next_step(&mut self) -> Next {
        if let Some(ending) = &self.ending {
            return Next::Finished(ending.clone());
        }
        if let Some(step) = self.current {
            return Next::Take(step);
        }
        let step = match &self.cause {
            None => self.forward_step(),
            Some(_) => self.restore_step(),
        };
        match step {
            Some(step) => {
                if step == Step::CreateNew {
                    self.created = true;
                }
                self.current = Some(step);
                Next::Take(step)
            }
            None => {
                let ending = self.ending.clone().unwrap_or_else(|| self.finish());
                self.ending = Some(ending.clone());
                Next::Finished(ending)
            }
        }
    }

    /// The step in progress finished well.
    ///
    /// # Errors
    ///
    /// [`PlanError::UnexpectedStep`] if `step` is not the one in progress.
    pub fn done(&mut self, step: Step) -> Result<(), PlanError> {
        self.expect(step)?;
        match step {
            Step::RenameCurrentToPrevious => self.renamed = true,
            Step::RemoveNew => self.created = false,
            Step::RenamePreviousBack => self.renamed = false,
            _ => {}
        }
        self.current = None;
        self.last_done = Some(step);
        Ok(())
    }

    /// The step in progress failed with `message`.
    ///
    /// # Errors
    ///
    /// [`PlanError::UnexpectedStep`] if `step` is not the one in progress.
    pub fn failed(&mut self, step: Step, message: impl Into<String>) -> Result<(), PlanError> {
        self.expect(step)?;
        let failure = Failure {
            step,
            message: message.into(),
        };
        self.current = None;
        if step.is_restore() {
            let cause = self.cause.clone().unwrap_or_else(|| failure.clone());
            // Collecting logs is best effort: go on restoring without them.
            if step == Step::CollectLogs {
                self.last_done = Some(step);
                return Ok(());
            }
            self.ending = Some(Ending::RestoreFailed {
                cause,
                restore: failure,
            });
        } else if self.cause.is_none() {
            if step.changes_host() {
                self.cause = Some(failure);
            } else {
                self.ending = Some(Ending::FailedUnchanged(failure));
            }
        }
        Ok(())
    }

    /// A cancel was requested: the plan stops at the next safe point (between steps) and
    /// restores what changed. A cancel after the sticker is written changes nothing.
    pub fn cancel(&mut self) {
        if self.ending.is_some() || self.cause.is_some() {
            return;
        }
        self.cancelled = true;
    }

    /// The step in progress, if any (what the journal records as started).
    pub fn in_progress(&self) -> Option<Step> {
        self.current
    }

    /// Rebuilds the plan after a crash of the agent.
    ///
    /// `journaled` is the plan as last journaled (before the step `started`, if one was
    /// started and not reported), `observed` is what Docker shows now. A step that was
    /// started but whose outcome is unknown is decided from `observed`:
    /// - if the new container runs as `<name>`, the deploy can go on at the health gate
    ///   (health is re-checked; nothing is assumed);
    /// - otherwise, if anything changed, the restore path puts the previous version back;
    /// - if nothing changed yet, the unfinished step is taken again.
    pub fn resume(mut journaled: DeployPlan, observed: Observed) -> DeployPlan {
        if journaled.ending.is_some() {
            return journaled;
        }
        // Reconstruct the facts from Docker, not from the unfinished step.
        journaled.created = observed.current_is_new;
        // `<name>-previous` is our old `<name>` once `<name>` is gone or is the new one
        // (a stale previous is removed before the rename, while `<name>` still exists).
        journaled.renamed = journaled.had_current
            && observed.previous_exists
            && (!observed.current_exists || observed.current_is_new);
        if journaled.cause.is_some() {
            // Already restoring: start the restore over from what Docker shows.
            journaled.current = None;
            journaled.last_done = Some(Step::CollectLogs);
            return journaled;
        }
        let step = journaled.current.take();
        match step {
            None => journaled,
            Some(step) if !step.changes_host() => journaled,
            Some(_) if observed.current_is_new && observed.current_running => {
                // The new container runs: gate on health again and go on from there.
                journaled.last_done = Some(Step::StartNew);
                journaled
            }
            Some(step) => {
                journaled.cause = Some(Failure {
                    step,
                    message: format!(
                        "the agent stopped during step {}; restoring the previous version",
                        step.as_str()
                    ),
                });
                journaled
            }
        }
    }

    fn expect(&self, step: Step) -> Result<(), PlanError> {
        if self.current == Some(step) {
            Ok(())
        } else {
            Err(PlanError::UnexpectedStep {
                expected: self.current,
                got: step,
            })
        }
    }

    /// The next forward step after the last one done.
    fn forward_step(&mut self) -> Option<Step> {
        if self.cancelled {
            // Stop here: restore if anything changed, else end unchanged.
            let failure = Failure {
                step: self.last_done.unwrap_or(Step::Pull),
                message: "cancelled".into(),
            };
            if self.renamed || self.created {
                self.cause = Some(failure);
                return self.restore_step();
            }
            self.ending = Some(Ending::FailedUnchanged(failure));
            return None;
        }
        let order = [
            Step::Pull,
            Step::PreHook,
            Step::StopCurrent,
            Step::RemoveStalePrevious,
            Step::RenameCurrentToPrevious,
            Step::CreateNew,
            Step::StartNew,
            Step::WaitHealthy,
            Step::PostHook,
            Step::WriteSticker,
        ];
        let start = match self.last_done {
            None => 0,
            Some(done) => order
                .iter()
                .position(|s| *s == done)
                .map_or(order.len(), |i| i + 1),
        };
        order[start..]
            .iter()
            .copied()
            .find(|step| self.applies(*step))
    }

    fn applies(&self, step: Step) -> bool {
        match step {
            Step::PreHook => self.options.pre_hook,
            Step::PostHook => self.options.post_hook,
            Step::WriteSticker => self.options.sticker,
            Step::StopCurrent | Step::RenameCurrentToPrevious => self.had_current,
            Step::RemoveStalePrevious => self.had_current && self.had_stale_previous,
            _ => true,
        }
    }

    /// The next restore step after the last one done.
    fn restore_step(&mut self) -> Option<Step> {
        let order = [
            Step::CollectLogs,
            Step::RemoveNew,
            Step::RenamePreviousBack,
            Step::StartPrevious,
            Step::WaitPreviousHealthy,
        ];
        let start = match self.last_done {
            Some(done) if done.is_restore() => order
                .iter()
                .position(|s| *s == done)
                .map_or(order.len(), |i| i + 1),
            _ => 0,
        };
        order[start..].iter().copied().find(|step| match step {
            Step::CollectLogs | Step::RemoveNew => self.created,
            Step::RenamePreviousBack => self.renamed,
            Step::StartPrevious | Step::WaitPreviousHealthy => self.had_current,
            _ => true,
        })
    }

    fn finish(&self) -> Ending {
        match &self.cause {
            None => Ending::Succeeded,
            Some(cause) if self.had_current => Ending::RolledBack(cause.clone()),
            Some(cause) => Ending::FailedNothingToRestore(cause.clone()),
        }
    }
}

#[cfg(test)]
mod tests;
