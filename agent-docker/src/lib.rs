//! Wharf agent runtime (enrollment, sessions, journal) and Docker executor
//! (design.md §4).
//!
//! Being built by the Docker agent issue. What exists so far:
//! - [`plan`]: the Docker deploy step plan as a pure state machine, with crash
//!   recovery (`DeployPlan::resume`), unit-tested without Docker.
//!
//! Not there yet (so there is no `wharf-agent-docker` binary): the runtime
//! (enrollment, QUIC session, sled journal), the bollard executor that drives the
//! plan, rollback/inspect/health-check tasks.
#![warn(missing_docs)]

pub mod plan;
