//! Wharf Compose agent (design.md §4, Compose deploy): digest-locked Compose projects
//! deployed whole, health-gated, restored whole on failure, on the agent runtime of
//! `wharf-agent-docker`.
//!
//! - [`plan`]: the Compose deploy step plan as a pure state machine, unit-tested without IO.
#![warn(missing_docs)]

pub mod plan;
