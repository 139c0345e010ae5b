//! The integration tests of `wharf-agent-docker` (one test binary; modules by area).
//!
//! - [`runtime`]: the agent runtime against a real `wharf-core serve` child process
//!   (enrollment, sessions, tasks, crash recovery, revocation) and, for the protocol
//!   corners core never produces on its own, a scripted QUIC core.
//! - [`docker`]: the Docker executor against the real Docker engine and a local registry.

mod docker;
mod poll;
mod runtime;
mod runtime_protocol;
mod support;
