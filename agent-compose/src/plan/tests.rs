//! The plan over a simulated project: every failure point, every kill point (before a
//! step, half-way through it, after it), with and without a release running before.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rel {
    Old,
    New,
}

/// What the host holds. `Mixed` is a half-done write or `up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Empty,
    Only(Rel),
    Mixed,
}

#[derive(Debug, Clone)]
struct Host {
    files: Slot,
    containers: Slot,
    sticker: Slot,
    kept: Option<(Slot, Slot)>,
    previous_copy: Slot,
}

impl Host {
    fn new(had_current: bool) -> Self {
        let s = if had_current {
            Slot::Only(Rel::Old)
        } else {
            Slot::Empty
        };
        Host {
            files: s,
            containers: s,
            sticker: s,
            kept: None,
            previous_copy: Slot::Empty,
        }
    }

    /// Takes `step`; `half` stops half-way (the kill). `Err` when the step fails.
    fn take(&mut self, step: Step, fail: Option<Step>, half: bool) -> Result<(), ()> {
        match step {
            Step::KeepCurrent => self.kept = Some((self.files, self.sticker)),
            Step::WriteFiles => {
                self.files = if half {
                    Slot::Mixed
                } else {
                    Slot::Only(Rel::New)
                }
            }
            Step::Up | Step::UpPrevious => {
                assert_ne!(self.files, Slot::Mixed, "up over half-written files");
                self.containers = if half { Slot::Mixed } else { self.files };
            }
            Step::WriteSticker => self.sticker = Slot::Only(Rel::New),
            Step::Promote => {
                if let Some((files, _)) = self.kept.take() {
                    self.previous_copy = files;
                }
            }
            Step::Down => self.containers = Slot::Empty,
            Step::RestoreFiles => {
                let (files, sticker) = self.kept.expect("restore without a kept copy");
                self.files = files;
                self.sticker = sticker;
            }
            Step::DiscardKept => self.kept = None,
            Step::Pull
            | Step::VerifyDigests
            | Step::PreHook
            | Step::PostHook
            | Step::WaitHealthy
            | Step::CollectLogs
            | Step::WaitPreviousHealthy => {}
        }
        if half {
            return Ok(());
        }
        if fail == Some(step) {
            return Err(());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Kill {
    Before(usize),
    Half(usize),
    After(usize),
}

/// Runs a plan to its end; kills once at `kill` (counted in steps taken), then resumes a
/// plan decoded from the last checkpoint (taken before each step).
fn run(had_current: bool, fail: Option<Step>, kill: Option<Kill>) -> (Outcome, Host, Vec<Step>) {
    run_with(HookSteps::NONE, had_current, fail, kill)
}

/// [`run`] for a deploy with `hooks`.
fn run_with(
    hooks: HookSteps,
    had_current: bool,
    fail: Option<Step>,
    kill: Option<Kill>,
) -> (Outcome, Host, Vec<Step>) {
    let mut host = Host::new(had_current);
    let mut plan = ComposePlan::new(had_current, hooks);
    let mut taken = Vec::new();
    let mut killed = false;
    let mut n = 0usize;
    loop {
        let step = match plan.next_step() {
            Next::Done(o) => return (o, host, taken),
            Next::Take(step) => step,
        };
        // The checkpoint: what survives a kill from here on.
        let checkpoint = serde_json::to_vec(&plan).unwrap();
        let kill_here = !killed
            && match kill {
                Some(Kill::Before(i)) => i == n,
                Some(Kill::Half(i)) => i == n,
                Some(Kill::After(i)) => i == n,
                None => false,
            };
        taken.push(step);
        if kill_here {
            killed = true;
            match kill {
                Some(Kill::Half(_)) => {
                    let _ = host.take(step, fail, true);
                }
                Some(Kill::After(_)) => {
                    let _ = host.take(step, fail, false);
                }
                _ => {}
            }
            plan = serde_json::from_slice(&checkpoint).unwrap();
            plan.resume();
            assert_eq!(plan.in_progress(), None);
            n += 1;
            continue;
        }
        match host.take(step, fail, false) {
            Ok(()) => plan.done(step),
            Err(()) => plan.failed(step),
        }
        n += 1;
        assert!(n < 100, "the plan does not end");
    }
}

fn check(hooks: HookSteps, had_current: bool, fail: Option<Step>, kill: Option<Kill>) {
    let (outcome, host, taken) = run_with(hooks, had_current, fail, kill);
    let ctx = format!(
        "hooks={hooks:?} had_current={had_current} fail={fail:?} kill={kill:?} taken={taken:?}"
    );
    let before = if had_current {
        Slot::Only(Rel::Old)
    } else {
        Slot::Empty
    };
    assert_eq!(host.kept, None, "kept copy left: {ctx}");
    match outcome {
        Outcome::Succeeded => {
            assert!(fail.is_none() || fail == Some(Step::Promote), "{ctx}");
            assert_eq!(host.files, Slot::Only(Rel::New), "{ctx}");
            assert_eq!(host.containers, Slot::Only(Rel::New), "{ctx}");
            assert_eq!(host.sticker, Slot::Only(Rel::New), "{ctx}");
            if fail != Some(Step::Promote) {
                assert_eq!(host.previous_copy, before, "{ctx}");
            }
        }
        Outcome::NothingChanged | Outcome::RolledBack | Outcome::Removed => {
            assert!(fail.is_some(), "{ctx}");
            assert_eq!(host.files, before, "{ctx}");
            assert_eq!(host.containers, before, "{ctx}");
            assert_eq!(host.sticker, before, "{ctx}");
            assert_eq!(
                host.previous_copy,
                Slot::Empty,
                "rollback copy changed: {ctx}"
            );
            let ran = !matches!(
                fail,
                Some(
                    Step::KeepCurrent
                        | Step::WriteFiles
                        | Step::Pull
                        | Step::VerifyDigests
                        | Step::PreHook
                )
            );
            assert_eq!(outcome.rolled_back(), ran, "{ctx}");
            assert_eq!(outcome == Outcome::Removed, ran && !had_current, "{ctx}");
        }
        Outcome::RestoreFailed => panic!("no restore step fails here: {ctx}"),
    }
}

#[test]
fn every_failure_and_kill_point_ends_on_one_whole_release() {
    let all_hooks = [
        HookSteps::NONE,
        HookSteps {
            pre: true,
            post: false,
        },
        HookSteps {
            pre: false,
            post: true,
        },
        HookSteps {
            pre: true,
            post: true,
        },
    ];
    for hooks in all_hooks {
        let fails = std::iter::once(None).chain(forward(hooks).into_iter().map(Some));
        for had_current in [false, true] {
            for fail in fails.clone() {
                check(hooks, had_current, fail, None);
                for i in 0..20 {
                    for kill in [Kill::Before(i), Kill::Half(i), Kill::After(i)] {
                        check(hooks, had_current, fail, Some(kill));
                    }
                }
            }
        }
    }
}

const BOTH: HookSteps = HookSteps {
    pre: true,
    post: true,
};

#[test]
fn forward_path_order() {
    let (outcome, _, taken) = run(true, None, None);
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(
        taken,
        FORWARD
            .iter()
            .copied()
            .filter(|s| !matches!(s, Step::PreHook | Step::PostHook))
            .collect::<Vec<_>>()
    );
    let (outcome, _, taken) = run_with(BOTH, true, None, None);
    assert_eq!(outcome, Outcome::Succeeded);
    assert_eq!(taken, FORWARD.to_vec());
    let (_, _, taken) = run_with(
        HookSteps {
            pre: false,
            post: true,
        },
        false,
        None,
        None,
    );
    assert!(!taken.contains(&Step::PreHook) && taken.contains(&Step::PostHook));
}

#[test]
fn the_pre_hook_runs_after_the_digest_check_and_before_up_and_its_failure_changes_nothing() {
    let (_, _, taken) = run_with(BOTH, true, None, None);
    let at = |s| taken.iter().position(|t| *t == s).unwrap();
    assert_eq!(at(Step::PreHook), at(Step::VerifyDigests) + 1);
    assert_eq!(at(Step::Up), at(Step::PreHook) + 1);
    for had_current in [true, false] {
        let (outcome, host, taken) = run_with(BOTH, had_current, Some(Step::PreHook), None);
        assert_eq!(outcome, Outcome::NothingChanged);
        assert!(!outcome.rolled_back());
        assert!(!taken.contains(&Step::Up) && !taken.contains(&Step::PostHook));
        assert_eq!(
            &taken[5..],
            &[Step::RestoreFiles, Step::DiscardKept],
            "{taken:?}"
        );
        assert_eq!(host.containers, Host::new(had_current).containers);
    }
}

#[test]
fn a_failed_post_hook_restores_the_previous_release_or_takes_a_first_one_down() {
    let (outcome, host, taken) = run_with(BOTH, true, Some(Step::PostHook), None);
    assert_eq!(outcome, Outcome::RolledBack);
    assert!(outcome.rolled_back());
    assert_eq!(host.containers, Slot::Only(Rel::Old));
    assert_eq!(host.sticker, Slot::Only(Rel::Old));
    assert_eq!(
        &taken[8..],
        &[
            Step::CollectLogs,
            Step::RestoreFiles,
            Step::UpPrevious,
            Step::WaitPreviousHealthy,
            Step::DiscardKept
        ]
    );
    let (outcome, host, taken) = run_with(BOTH, false, Some(Step::PostHook), None);
    assert_eq!(outcome, Outcome::Removed);
    assert!(outcome.rolled_back());
    assert_eq!(host.containers, Slot::Empty);
    assert_eq!(host.files, Slot::Empty);
    assert!(taken.contains(&Step::Down) && !taken.contains(&Step::WriteSticker));
}

#[test]
fn a_kill_during_a_hook_takes_the_hook_again() {
    for (step, index) in [(Step::PreHook, 4), (Step::PostHook, 7)] {
        let (outcome, _, taken) = run_with(BOTH, true, None, Some(Kill::Half(index)));
        assert_eq!(outcome, Outcome::Succeeded);
        assert_eq!(taken[index], step);
        assert_eq!(taken[index + 1], step, "{taken:?}");
    }
}

#[test]
fn a_stop_at_a_hook_boundary() {
    let mut plan = ComposePlan::new(true, BOTH);
    for step in &FORWARD[..4] {
        assert_eq!(plan.next_step(), Next::Take(*step));
        plan.done(*step);
    }
    plan.stop();
    assert_eq!(plan.failed_at(), Some(Step::PreHook));
    assert_eq!(plan.next_step(), Next::Take(Step::RestoreFiles));

    let mut plan = ComposePlan::new(true, BOTH);
    for step in &FORWARD[..7] {
        assert_eq!(plan.next_step(), Next::Take(*step));
        plan.done(*step);
    }
    plan.stop();
    assert_eq!(plan.failed_at(), Some(Step::PostHook));
    assert_eq!(plan.next_step(), Next::Take(Step::CollectLogs));
}

#[test]
fn a_checkpoint_without_hook_steps_still_decodes() {
    // A plan journaled by an agent before hook steps existed.
    let old = r#"{"had_current":true,"queue":["up","wait-healthy","write-sticker","promote"],
        "in_progress":true,"failed_at":null,"restore_failed":false,"promote_failed":false,
        "outcome":null}"#;
    let mut plan: ComposePlan = serde_json::from_str(old).unwrap();
    plan.resume();
    assert_eq!(plan.next_step(), Next::Take(Step::Up));
}

#[test]
fn failed_health_with_a_previous_release_restores_it_whole() {
    let (outcome, host, taken) = run(true, Some(Step::WaitHealthy), None);
    assert_eq!(outcome, Outcome::RolledBack);
    assert_eq!(host.containers, Slot::Only(Rel::Old));
    assert_eq!(
        &taken[6..],
        &[
            Step::CollectLogs,
            Step::RestoreFiles,
            Step::UpPrevious,
            Step::WaitPreviousHealthy,
            Step::DiscardKept
        ]
    );
}

#[test]
fn a_failed_pull_changes_nothing_and_a_failed_first_up_removes_the_project() {
    let (outcome, _, taken) = run(true, Some(Step::Pull), None);
    assert_eq!(outcome, Outcome::NothingChanged);
    assert!(!taken.contains(&Step::UpPrevious));
    let (outcome, host, taken) = run(false, Some(Step::Up), None);
    assert_eq!(outcome, Outcome::Removed);
    assert!(taken.contains(&Step::Down));
    assert_eq!(host.files, Slot::Empty);
}

#[test]
fn a_failed_restore_step_is_reported_and_the_restore_goes_on() {
    let mut plan = ComposePlan::new(true, HookSteps::NONE);
    for step in [
        Step::KeepCurrent,
        Step::WriteFiles,
        Step::Pull,
        Step::VerifyDigests,
    ] {
        assert_eq!(plan.next_step(), Next::Take(step));
        plan.done(step);
    }
    assert_eq!(plan.next_step(), Next::Take(Step::Up));
    plan.failed(Step::Up);
    assert_eq!(plan.next_step(), Next::Take(Step::CollectLogs));
    plan.done(Step::CollectLogs);
    assert_eq!(plan.next_step(), Next::Take(Step::RestoreFiles));
    plan.done(Step::RestoreFiles);
    assert_eq!(plan.next_step(), Next::Take(Step::UpPrevious));
    plan.failed(Step::UpPrevious);
    assert_eq!(plan.next_step(), Next::Take(Step::WaitPreviousHealthy));
    plan.done(Step::WaitPreviousHealthy);
    assert_eq!(plan.next_step(), Next::Take(Step::DiscardKept));
    plan.done(Step::DiscardKept);
    assert_eq!(plan.next_step(), Next::Done(Outcome::RestoreFailed));
    assert_eq!(plan.failed_at(), Some(Step::Up));
}

#[test]
fn stop_turns_to_restore_at_the_next_boundary_but_not_mid_step_or_at_promote() {
    let mut plan = ComposePlan::new(true, HookSteps::NONE);
    assert_eq!(plan.next_step(), Next::Take(Step::KeepCurrent));
    plan.stop();
    assert_eq!(plan.in_progress(), Some(Step::KeepCurrent), "not mid-step");
    plan.done(Step::KeepCurrent);
    plan.stop();
    assert_eq!(plan.failed_at(), Some(Step::WriteFiles));
    assert_eq!(plan.next_step(), Next::Take(Step::RestoreFiles));

    let mut plan = ComposePlan::new(true, HookSteps::NONE);
    for step in &forward(HookSteps::NONE)[..7] {
        assert_eq!(plan.next_step(), Next::Take(*step));
        plan.done(*step);
    }
    plan.stop();
    assert_eq!(plan.next_step(), Next::Take(Step::Promote));
}

#[test]
fn reports_for_another_step_are_ignored() {
    let mut plan = ComposePlan::new(false, HookSteps::NONE);
    assert_eq!(plan.next_step(), Next::Take(Step::KeepCurrent));
    plan.done(Step::Up);
    plan.failed(Step::Pull);
    assert_eq!(plan.in_progress(), Some(Step::KeepCurrent));
    assert_eq!(plan.failed_at(), None);
}

#[test]
fn step_names_are_kebab_case_and_unique() {
    let names: std::collections::BTreeSet<_> = Step::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(names.len(), Step::ALL.len());
    for step in Step::ALL {
        assert_eq!(
            serde_json::to_string(&step).unwrap(),
            format!("\"{}\"", step.as_str())
        );
    }
}
