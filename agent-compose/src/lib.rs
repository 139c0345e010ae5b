//! Wharf Compose agent (design.md §4, Compose deploy).
//!
//! Not implemented yet: this crate is filled by the Compose agent issue. It
//! exports nothing, and ships no binary, so that nothing pretends to work.
