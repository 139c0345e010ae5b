//! Wharf core (design.md §3): the durable task queue, agent PKI and enrollment,
//! QUIC and polling transports, the operator API and the `wharf` CLI.
//!
//! Being filled by the core issue: the store, the queue state machine and the PKI
//! come first; the transports, the API and the CLI after them.
#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod audit;
pub mod cli;
pub mod directory;
pub mod engine;
pub mod evidence;
pub mod fleet_audit;
pub mod history;
pub mod pki;
pub mod queue;
pub mod registry_probe;
pub mod store;
pub mod transport;
