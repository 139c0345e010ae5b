//! Wharf Compose agent (design.md §4, Compose deploy): digest-locked Compose projects
//! deployed whole, health-gated, restored whole on failure, on the agent runtime of
//! `wharf-agent-docker`.
//!
//! - [`plan`]: the Compose deploy step plan as a pure state machine, unit-tested without IO;
//! - [`files`]: the project directory (lock, extra files, manifest, sticker, the kept and
//!   previous release copies), every write atomic;
//! - [`host`]: the Compose tool and the engine behind [`host::ComposeHost`]
//!   ([`host::CliHost`]);
//! - [`executor`]: [`ComposeExecutor`], the runtime's `Executor` for Compose projects.
#![warn(missing_docs)]

pub mod executor;
pub mod files;
pub mod host;
pub mod plan;

pub use executor::{checkpoint_step, ComposeExecutor, ComposeExecutorConfig, DockerConfigDir};
pub use host::{CliHost, ComposeHost, ComposeTool, HostError};
