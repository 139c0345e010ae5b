//! Wharf core (design.md §3): the durable task queue, agent PKI and enrollment,
//! QUIC and polling transports, the operator API and the `wharf` CLI.
//!
//! Not implemented yet: this crate is filled by the core issue. It exports
//! nothing, and ships no binaries, so that nothing pretends to work.
