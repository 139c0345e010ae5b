//! Task queue state machine (design.md §3). Being written.
