//! The integration tests of `wharf-agent-docker`: one binary, one module per area.

mod docker;
