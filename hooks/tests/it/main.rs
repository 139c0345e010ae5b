//! Integration tests of wharf-hooks against the real Docker engine and real host
//! programs.

mod container;
mod host;

use wharf_hooks::{HookInput, Phase};
use wharf_protocol::ReleaseInfo;

/// The contract input for a hook on `target`.
pub fn input(target: &str) -> HookInput {
    HookInput {
        phase: Phase::PreDeploy,
        target: target.to_owned(),
        release: ReleaseInfo {
            id: "r1".into(),
            name: "shop".into(),
            version: "1.2.3".into(),
        },
        image: format!("127.0.0.1:5000/app@sha256:{}", "b".repeat(64)),
        digest: format!("sha256:{}", "b".repeat(64)),
        previous: Some(format!("sha256:{}", "c".repeat(64))),
        services: Default::default(),
        previous_services: Default::default(),
    }
}
