//! Pre/post-deploy hook runner for Wharf agents (design.md §5).
//!
//! Not implemented yet: the runner, the sandboxed container hooks and the JSON
//! stdin/stdout contract arrive with the hooks issue. The wire form of a hook
//! (`HookSpec`) already lives in `wharf-protocol`. This crate exports nothing so
//! that no caller can mistake it for a working runner.
