//! Durable store (design.md §3). Being written.
