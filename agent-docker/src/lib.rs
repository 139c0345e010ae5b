//! Wharf agent runtime (enrollment, sessions, journal) and Docker executor
//! (design.md §4).
//!
//! - [`plan`]: the Docker deploy step plan as a pure state machine, with crash
//!   recovery (`DeployPlan::resume`), unit-tested without Docker.
//! - [`docker`]: the Docker executor: [`docker::DockerApi`] (with [`docker::BollardDocker`]
//!   over the Engine API) and [`docker::DockerExecutor`], which runs deploy, rollback,
//!   inspect, health-check and sticker tasks, checkpointing every step.
//! - [`runtime`]: enrollment, the session with core, the journal, the per-target lock,
//!   crash recovery; [`runtime::run`] is the agent's entry point, executors plug in
//!   through [`runtime::Executor`].
#![warn(missing_docs)]

pub mod docker;
pub mod plan;
pub mod runtime;
