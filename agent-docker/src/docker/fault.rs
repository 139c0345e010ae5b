//! Fault-injection points (feature `fault-injection`, compiled only for tests).
//!
//! Right after a step's checkpoint is durable and before the step is taken, the executor
//! calls [`pause_at`]. With the feature on and `WHARF_FAULT_PAUSE_AT` equal to the step's
//! name, it prints `WHARF_FAULT_PAUSED <step>` on stderr and waits forever, so that a test
//! can kill -9 the process at exactly that point. Without the feature it is an empty
//! inline function.

/// The environment variable naming the step to pause at.
pub const PAUSE_ENV: &str = "WHARF_FAULT_PAUSE_AT";

/// The line printed on stderr when pausing: `WHARF_FAULT_PAUSED <step>`.
pub const PAUSED_MARKER: &str = "WHARF_FAULT_PAUSED";

/// Pauses forever if fault injection asks for it at `step`.
#[cfg(feature = "fault-injection")]
pub async fn pause_at(step: &str) {
    if std::env::var(PAUSE_ENV).is_ok_and(|s| s == step) {
        eprintln!("{PAUSED_MARKER} {step}");
        std::future::pending::<()>().await;
    }
}

/// Pauses forever if fault injection asks for it at `step` (compiled out).
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn pause_at(_step: &str) {}
