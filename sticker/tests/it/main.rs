//! Integration tests of `wharf-sticker`: one test binary, one module per concern.

mod files;
mod fixtures;
mod props;
mod roundtrip;
mod tamper;
mod vectors;
