//! What a simulated agent does with the tasks it is given.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use wharf_protocol::{AgentTask, ErrorType, TaskKind};

/// How a simulated agent answers a task (the same answer for every attempt it runs).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `Result { success: true }`, with the kind's outputs.
    Succeed,
    /// `Result { success: false }`.
    Fail {
        /// The error class.
        error_type: ErrorType,
        /// Whether core may retry (sent as [`TaskResult::retriable`](wharf_protocol::TaskResult::retriable)).
        retriable: bool,
        /// Whether the agent says it restored the previous state.
        rolled_back: bool,
        /// The error message.
        message: String,
    },
    /// Reset the task stream right after reading `Assign`, without `Accepted` and without
    /// journaling anything, as if the `Assign` had been lost: core re-sends it after its
    /// dispatch lease. Not an execution.
    DropBeforeAccept,
    /// Send `Accepted`, wait the delay, then end the stream without a result, and never
    /// report one: core's deadline has to fail the task. Counts as an execution; a re-sent
    /// `Assign` of the same attempt is accepted and dropped again, never run twice.
    DropAfterAccept,
}

impl Outcome {
    /// A failure of `error_type`, retriable as [`ErrorType::is_retriable`] says, not rolled
    /// back.
    pub fn fail(error_type: ErrorType) -> Self {
        Outcome::Fail {
            error_type,
            retriable: error_type.is_retriable(),
            rolled_back: false,
            message: format!("simulated {error_type} failure"),
        }
    }

    /// A retriable failure of `error_type`.
    pub fn fail_retriable(error_type: ErrorType) -> Self {
        Self::fail(error_type).retriable(true)
    }

    /// A non-retriable failure of `error_type`.
    pub fn fail_permanent(error_type: ErrorType) -> Self {
        Self::fail(error_type).retriable(false)
    }

    /// This failure, with `rolled_back` set (e.g. a deploy whose health check failed and
    /// whose previous container was restored). No effect on other outcomes.
    pub fn rolled_back(mut self) -> Self {
        if let Outcome::Fail { rolled_back, .. } = &mut self {
            *rolled_back = true;
        }
        self
    }

    /// This failure, with `retriable` set as given. No effect on other outcomes.
    pub fn retriable(mut self, value: bool) -> Self {
        if let Outcome::Fail { retriable, .. } = &mut self {
            *retriable = value;
        }
        self
    }

    /// This failure, with another message. No effect on other outcomes.
    pub fn message(mut self, text: impl Into<String>) -> Self {
        if let Outcome::Fail { message, .. } = &mut self {
            *message = text.into();
        }
        self
    }
}

/// What the agent does on a `Cancel` for a task it is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CancelMode {
    /// Stop waiting at once and report `success: false`, `error_type: cancelled`,
    /// `rolled_back: true`.
    #[default]
    Honour,
    /// Carry on as if no cancel had come (the planned outcome is reported).
    Ignore,
}

/// A simulated agent's behaviour. Change it while the agent runs with
/// [`SimAgentHandle::set_behaviour`](super::SimAgentHandle::set_behaviour); each task uses
/// the behaviour in force when its `Assign` arrived.
///
/// ```
/// use std::time::Duration;
/// use wharf_protocol::{ErrorType, TaskKind};
/// use wharf_testbed::simagent::{Behaviour, Outcome};
///
/// let b = Behaviour::succeed()
///     .with_delay(Duration::from_millis(50))
///     .with_kind(TaskKind::Deploy, Outcome::fail(ErrorType::HealthFailed).rolled_back())
///     .with_output(TaskKind::Inspect, "state", "running");
/// assert_eq!(b.delay, Duration::from_millis(50));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// How long a task "runs" between `Accepted` and `Result`.
    pub delay: Duration,
    /// `Progress` lines sent while running (spread over the delay).
    pub progress_lines: u32,
    /// The outcome of tasks whose kind has no entry in [`Behaviour::per_kind`].
    pub outcome: Outcome,
    /// Outcomes per task kind.
    pub per_kind: HashMap<TaskKind, Outcome>,
    /// Extra outputs per task kind, added to (and overriding) the simulated ones.
    pub outputs: HashMap<TaskKind, BTreeMap<String, String>>,
    /// Probability (0.0..=1.0) that a task that would succeed fails instead, retriable,
    /// with `error_type: docker` (the CLI's `--fail-rate`).
    pub fail_rate: f64,
    /// What a `Cancel` does.
    pub cancel: CancelMode,
    /// Drop (as [`Outcome::DropBeforeAccept`]) the first this-many `Assign`s the agent
    /// receives, then behave normally: a simple way to make core re-send after its lease.
    pub drop_first_assigns: u32,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::succeed()
    }
}

impl Behaviour {
    /// Every task succeeds at once; cancels are honoured.
    pub fn succeed() -> Self {
        Behaviour {
            delay: Duration::ZERO,
            progress_lines: 0,
            outcome: Outcome::Succeed,
            per_kind: HashMap::new(),
            outputs: HashMap::new(),
            fail_rate: 0.0,
            cancel: CancelMode::Honour,
            drop_first_assigns: 0,
        }
    }

    /// Every task has `outcome`.
    pub fn always(outcome: Outcome) -> Self {
        Behaviour {
            outcome,
            ..Self::succeed()
        }
    }

    /// With this delay between `Accepted` and `Result`.
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// With this many `Progress` lines per task.
    pub fn with_progress(mut self, lines: u32) -> Self {
        self.progress_lines = lines;
        self
    }

    /// With `outcome` for tasks of `kind`.
    pub fn with_kind(mut self, kind: TaskKind, outcome: Outcome) -> Self {
        self.per_kind.insert(kind, outcome);
        self
    }

    /// With an extra output `key = value` in the results of tasks of `kind`.
    pub fn with_output(
        mut self,
        kind: TaskKind,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.outputs
            .entry(kind)
            .or_default()
            .insert(key.into(), value.into());
        self
    }

    /// With this random failure rate (clamped to 0.0..=1.0).
    pub fn with_fail_rate(mut self, rate: f64) -> Self {
        self.fail_rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self
    }

    /// With this cancel handling.
    pub fn with_cancel(mut self, mode: CancelMode) -> Self {
        self.cancel = mode;
        self
    }

    /// Dropping the first `n` `Assign`s received.
    pub fn with_dropped_assigns(mut self, n: u32) -> Self {
        self.drop_first_assigns = n;
        self
    }

    /// The outcome planned for `task` (before the random failure rate).
    pub fn outcome_for(&self, task: &AgentTask) -> &Outcome {
        self.per_kind.get(&task.kind()).unwrap_or(&self.outcome)
    }
}
