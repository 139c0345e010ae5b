//! The agent runtime, shared by the Docker and Compose agents: enrollment, the session
//! with core, the journal, the per-target lock. Executors plug in through
//! [`executor::Executor`].

pub mod executor;

pub use executor::{CheckpointError, CheckpointSink, Executor, ProgressLine, TaskContext};
