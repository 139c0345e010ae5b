//! Wharf agent runtime (enrollment, sessions, journal) and Docker executor
//! (design.md §4).
//!
//! Not implemented yet: this crate is filled by the Docker agent issue. It
//! exports nothing, and ships no binary, so that nothing pretends to work.
