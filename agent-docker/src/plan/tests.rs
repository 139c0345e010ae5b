//! Deploy plan tests: fixed paths, and a simulated Docker host driven through every
//! failure point and every crash point.

use proptest::prelude::*;

use super::*;

/// Runs the plan to its end, failing `fail` (with "boom") the first time it is taken.
fn run(plan: &mut DeployPlan, fail: &[Step]) -> (Vec<Step>, Ending) {
    let mut taken = Vec::new();
    let mut failed = Vec::new();
    loop {
        match plan.next_step() {
            Next::Take(step) => {
                taken.push(step);
                if fail.contains(&step) && !failed.contains(&step) {
                    failed.push(step);
                    plan.failed(step, "boom").unwrap();
                } else {
                    plan.done(step).unwrap();
                }
            }
            Next::Finished(ending) => return (taken, ending),
        }
    }
}

fn with_current() -> Observed {
    Observed {
        current_exists: true,
        current_running: true,
        ..Observed::default()
    }
}

const ALL: Options = Options {
    pre_hook: true,
    post_hook: true,
    sticker: true,
};

#[test]
fn first_deploy_creates_starts_gates_and_writes_the_sticker() {
    let mut plan = DeployPlan::new(
        Options {
            sticker: true,
            ..Options::default()
        },
        Observed::default(),
    );
    let (steps, ending) = run(&mut plan, &[]);
    use Step::*;
    assert_eq!(
        steps,
        [Pull, CreateNew, StartNew, WaitHealthy, WriteSticker]
    );
    assert_eq!(ending, Ending::Succeeded);
}

#[test]
fn swap_with_hooks_and_a_stale_previous() {
    let mut observed = with_current();
    observed.previous_exists = true;
    let (steps, ending) = run(&mut DeployPlan::new(ALL, observed), &[]);
    use Step::*;
    assert_eq!(
        steps,
        [
            Pull,
            PreHook,
            StopCurrent,
            RemoveStalePrevious,
            RenameCurrentToPrevious,
            CreateNew,
            StartNew,
            WaitHealthy,
            PostHook,
            WriteSticker
        ]
    );
    assert!(ending.is_success());
}

#[test]
fn failures_before_any_change_change_nothing() {
    for step in [Step::Pull, Step::PreHook] {
        let (steps, ending) = run(&mut DeployPlan::new(ALL, with_current()), &[step]);
        assert_eq!(steps.last(), Some(&step));
        assert!(
            matches!(&ending, Ending::FailedUnchanged(f) if f.step == step),
            "{ending:?}"
        );
        assert!(!ending.rolled_back());
    }
}

#[test]
fn unhealthy_new_version_is_replaced_by_the_previous_one() {
    let (steps, ending) = run(
        &mut DeployPlan::new(ALL, with_current()),
        &[Step::WaitHealthy],
    );
    use Step::*;
    assert_eq!(
        &steps[steps.len() - 5..],
        [
            CollectLogs,
            RemoveNew,
            RenamePreviousBack,
            StartPrevious,
            WaitPreviousHealthy
        ]
    );
    assert!(!steps.contains(&PostHook) && !steps.contains(&WriteSticker));
    assert!(ending.rolled_back());
    assert!(matches!(ending, Ending::RolledBack(f) if f.step == WaitHealthy));
}

#[test]
fn failed_post_hook_or_sticker_rolls_back() {
    for step in [Step::PostHook, Step::WriteSticker] {
        let (_, ending) = run(&mut DeployPlan::new(ALL, with_current()), &[step]);
        assert!(
            matches!(&ending, Ending::RolledBack(f) if f.step == step),
            "{ending:?}"
        );
    }
}

#[test]
fn failed_first_deploy_leaves_nothing_behind() {
    let (steps, ending) = run(
        &mut DeployPlan::new(Options::default(), Observed::default()),
        &[Step::StartNew],
    );
    use Step::*;
    assert_eq!(steps, [Pull, CreateNew, StartNew, CollectLogs, RemoveNew]);
    assert!(matches!(ending, Ending::FailedNothingToRestore(_)));
}

#[test]
fn failed_create_still_removes_a_half_created_container() {
    let (steps, ending) = run(
        &mut DeployPlan::new(ALL, with_current()),
        &[Step::CreateNew],
    );
    assert!(steps.contains(&Step::RemoveNew));
    assert!(ending.rolled_back());
}

#[test]
fn failed_restore_is_reported_with_both_causes() {
    let (_, ending) = run(
        &mut DeployPlan::new(ALL, with_current()),
        &[Step::WaitHealthy, Step::StartPrevious],
    );
    match ending {
        Ending::RestoreFailed { cause, restore } => {
            assert_eq!(cause.step, Step::WaitHealthy);
            assert_eq!(restore.step, Step::StartPrevious);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn log_collection_is_best_effort() {
    let (_, ending) = run(
        &mut DeployPlan::new(ALL, with_current()),
        &[Step::WaitHealthy, Step::CollectLogs],
    );
    assert!(ending.rolled_back(), "{ending:?}");
}

#[test]
fn cancel_stops_at_the_next_safe_step() {
    // Before anything changed: nothing to restore.
    let mut plan = DeployPlan::new(ALL, with_current());
    assert_eq!(plan.next_step(), Next::Take(Step::Pull));
    plan.done(Step::Pull).unwrap();
    plan.cancel();
    assert!(
        matches!(plan.next_step(), Next::Finished(Ending::FailedUnchanged(f)) if f.message == "cancelled")
    );

    // After the swap began: the previous version comes back.
    let mut plan = DeployPlan::new(ALL, with_current());
    for step in [
        Step::Pull,
        Step::PreHook,
        Step::StopCurrent,
        Step::RenameCurrentToPrevious,
        Step::CreateNew,
    ] {
        assert_eq!(plan.next_step(), Next::Take(step));
        plan.done(step).unwrap();
    }
    plan.cancel();
    let (steps, ending) = run(&mut plan, &[]);
    assert_eq!(steps[0], Step::CollectLogs);
    assert!(ending.rolled_back());
}

#[test]
fn reports_for_other_steps_are_refused() {
    let mut plan = DeployPlan::new(ALL, with_current());
    assert_eq!(plan.next_step(), Next::Take(Step::Pull));
    assert_eq!(
        plan.next_step(),
        Next::Take(Step::Pull),
        "asking again repeats the step"
    );
    assert!(plan.done(Step::CreateNew).is_err());
    assert!(plan.failed(Step::PreHook, "x").is_err());
    assert_eq!(plan.in_progress(), Some(Step::Pull));
}

// ---- a simulated Docker host -----------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    Old,
    New,
    Stale,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Container {
    version: Version,
    running: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Host {
    name: Option<Container>,
    previous: Option<Container>,
    new_healthy: bool,
}

impl Host {
    fn observe(&self) -> Observed {
        Observed {
            current_exists: self.name.is_some(),
            current_is_new: self.name.is_some_and(|c| c.version == Version::New),
            current_running: self.name.is_some_and(|c| c.running),
            previous_exists: self.previous.is_some(),
        }
    }

    /// Takes a step as the real executor would (idempotently); `Err` when it fails.
    fn apply(&mut self, step: Step, forced_failure: bool) -> Result<(), ()> {
        if forced_failure {
            return Err(());
        }
        match step {
            Step::Pull
            | Step::PreHook
            | Step::PostHook
            | Step::WriteSticker
            | Step::CollectLogs => {}
            Step::StopCurrent => {
                if let Some(c) = &mut self.name {
                    c.running = false;
                }
            }
            Step::RemoveStalePrevious => self.previous = None,
            Step::RenameCurrentToPrevious => {
                if let Some(c) = self.name {
                    if c.version != Version::New {
                        if self.previous.is_some() {
                            return Err(());
                        }
                        self.previous = self.name.take();
                    }
                }
            }
            Step::CreateNew => {
                if self.name.is_some_and(|c| c.version != Version::New) {
                    return Err(());
                }
                self.name = Some(Container {
                    version: Version::New,
                    running: false,
                });
            }
            Step::StartNew => match &mut self.name {
                Some(c) if c.version == Version::New => c.running = true,
                _ => return Err(()),
            },
            Step::WaitHealthy => {
                let ok = self.new_healthy
                    && self
                        .name
                        .is_some_and(|c| c.version == Version::New && c.running);
                if !ok {
                    return Err(());
                }
            }
            Step::RemoveNew => {
                if self.name.is_some_and(|c| c.version == Version::New) {
                    self.name = None;
                }
            }
            Step::RenamePreviousBack => {
                if self.name.is_some() {
                    // Only our own previous goes back, and only into a free name.
                    if self.previous.is_some() {
                        return Err(());
                    }
                } else {
                    self.name = self.previous.take();
                }
            }
            Step::StartPrevious => match &mut self.name {
                Some(c) => c.running = true,
                None => return Err(()),
            },
            Step::WaitPreviousHealthy => {
                if !self
                    .name
                    .is_some_and(|c| c.version != Version::New && c.running)
                {
                    return Err(());
                }
            }
        }
        Ok(())
    }
}

/// What a property case does: which step fails, where the agent is killed.
#[derive(Debug, Clone)]
struct Case {
    had_current: bool,
    stale_previous: bool,
    options: Options,
    new_healthy: bool,
    fail_at: Option<usize>,
    /// Kill the agent at the n-th step taken; `applied` says whether Docker finished that
    /// step before the kill.
    crash_at: Option<(usize, bool)>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        any::<bool>(),
        (any::<bool>(), any::<bool>(), any::<bool>()),
        any::<bool>(),
        proptest::option::of(0usize..16),
        proptest::option::of((0usize..16, any::<bool>())),
    )
        .prop_map(
            |(
                had_current,
                stale_previous,
                (pre, post, sticker),
                new_healthy,
                fail_at,
                crash_at,
            )| {
                Case {
                    had_current,
                    stale_previous,
                    options: Options {
                        pre_hook: pre,
                        post_hook: post,
                        sticker,
                    },
                    new_healthy,
                    fail_at,
                    crash_at,
                }
            },
        )
}

/// Drives the plan over the simulated host, with a kill and a resume.
fn drive(c: &Case) -> (Host, Ending) {
    let mut host = Host {
        name: c.had_current.then_some(Container {
            version: Version::Old,
            running: true,
        }),
        previous: c.stale_previous.then_some(Container {
            version: Version::Stale,
            running: false,
        }),
        new_healthy: c.new_healthy,
    };
    let mut plan = DeployPlan::new(c.options, host.observe());
    let mut n = 0;
    let mut crashed = false;
    loop {
        // The journal holds the plan as of before the step.
        let journaled = plan.clone();
        match plan.next_step() {
            Next::Finished(ending) => return (host, ending),
            Next::Take(step) => {
                let forced = c.fail_at == Some(n);
                if !crashed && c.crash_at.is_some_and(|(at, _)| at == n) {
                    crashed = true;
                    let applied = c.crash_at.is_some_and(|(_, applied)| applied);
                    if applied {
                        let _ = host.apply(step, forced);
                    }
                    // The agent restarts: the journal says `step` was started.
                    let mut started = journaled;
                    let _ = started.next_step();
                    plan = DeployPlan::resume(started, host.observe());
                    n += 1;
                    continue;
                }
                match host.apply(step, forced) {
                    Ok(()) => plan.done(step).unwrap(),
                    Err(()) => plan.failed(step, "failed").unwrap(),
                }
                n += 1;
                assert!(n < 100, "the plan does not end: {plan:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Whatever fails and wherever the agent dies: the target ends with exactly the new
    /// version (success) or exactly what ran before, never with none when one ran, never
    /// with two, and the ending says which.
    #[test]
    fn the_target_never_ends_without_its_container_or_with_two(c in case()) {
        let (host, ending) = drive(&c);
        let new_running = host.name.is_some_and(|x| x.version == Version::New && x.running);
        let old_running = host.name.is_some_and(|x| x.version == Version::Old && x.running);
        match &ending {
            Ending::Succeeded => {
                prop_assert!(new_running, "{host:?}");
                if c.had_current {
                    prop_assert_eq!(host.previous.map(|p| p.version), Some(Version::Old));
                }
            }
            Ending::RolledBack(_) => {
                prop_assert!(c.had_current);
                prop_assert!(old_running, "{host:?}");
            }
            Ending::FailedUnchanged(_) => {
                if c.had_current {
                    prop_assert!(old_running, "{host:?}");
                } else {
                    prop_assert!(host.name.is_none(), "{host:?}");
                }
            }
            Ending::FailedNothingToRestore(_) => {
                prop_assert!(!c.had_current);
                prop_assert!(host.name.is_none(), "{host:?}");
            }
            Ending::RestoreFailed { .. } => {
                // Only a forced failure inside the restore itself may end here.
                prop_assert!(c.fail_at.is_some());
            }
        }
        // Never a new container left next to a restored old one, nor as previous.
        prop_assert!(host.previous.is_none_or(|p| p.version != Version::New));
        if !ending.is_success() && !matches!(ending, Ending::RestoreFailed { .. }) {
            prop_assert!(!host.name.is_some_and(|x| x.version == Version::New), "{host:?} {ending:?}");
        }
    }
}
