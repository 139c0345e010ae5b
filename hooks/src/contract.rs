//! The hook contract of design §5: JSON on stdin ([`HookInput`]), JSON on stdout
//! ([`HookOutput`]), exit status 0 for success.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_protocol::ReleaseInfo;

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// `pre-deploy`: after the pull, before anything on the host changes.
    PreDeploy,
    /// `post-deploy`: after the new version is healthy.
    PostDeploy,
}

impl Phase {
    /// `pre-deploy` or `post-deploy`, as in the JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::PreDeploy => "pre-deploy",
            Phase::PostDeploy => "post-deploy",
        }
    }

    /// The prefix of this phase's keys in a task result's outputs: `pre_hook` or
    /// `post_hook`.
    pub const fn output_prefix(self) -> &'static str {
        match self {
            Phase::PreDeploy => "pre_hook",
            Phase::PostDeploy => "post_hook",
        }
    }
}

/// What a hook reads on stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookInput {
    /// When it runs.
    pub phase: Phase,
    /// The container name or Compose project deployed.
    pub target: String,
    /// The release deployed.
    pub release: ReleaseInfo,
    /// The pinned image deployed (`repo@sha256:...`). Empty for a Compose project, whose
    /// images are in [`HookInput::services`].
    pub image: String,
    /// The digest deployed (`sha256:...`); empty for a Compose project.
    pub digest: String,
    /// The digest the target ran before, if any; `None` for a Compose project (see
    /// [`HookInput::previous_services`]).
    pub previous: Option<String>,
    /// Compose: the pinned image (`repo@sha256:...`) of each service of the lock being
    /// deployed. Left out of the JSON when empty (a container target).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub services: BTreeMap<String, String>,
    /// Compose: the pinned image of each service of the release that ran before (empty on
    /// a first deploy). Left out of the JSON when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub previous_services: BTreeMap<String, String>,
}

/// What a hook prints on stdout. `message` and `outputs` may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookOutput {
    /// Whether the hook passed.
    pub ok: bool,
    /// A human-readable line.
    #[serde(default)]
    pub message: String,
    /// Key/value results, shown in the task result.
    #[serde(default)]
    pub outputs: BTreeMap<String, String>,
}

/// A hook that passed: its answer and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The hook's message.
    pub message: String,
    /// The hook's outputs.
    pub outputs: BTreeMap<String, String>,
    /// From start to exit (the image pull excluded).
    pub duration: Duration,
    /// Its last lines of output (stdout and stderr).
    pub logs: Vec<String>,
}

/// The task result outputs of a hook of `phase`: `<prefix>.ok`, `<prefix>.message`,
/// `<prefix>.duration_ms` and each of its outputs as `<prefix>.output.<key>`, where
/// `<prefix>` is [`Phase::output_prefix`].
pub fn result_outputs(
    phase: Phase,
    ok: bool,
    message: &str,
    duration: Duration,
    outputs: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let p = phase.output_prefix();
    let mut out = BTreeMap::from([
        (format!("{p}.ok"), ok.to_string()),
        (format!("{p}.message"), message.to_owned()),
        (
            format!("{p}.duration_ms"),
            u64::try_from(duration.as_millis())
                .unwrap_or(u64::MAX)
                .to_string(),
        ),
    ]);
    for (k, v) in outputs {
        out.insert(format!("{p}.output.{k}"), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_the_contract_json() {
        let input = HookInput {
            phase: Phase::PreDeploy,
            target: "web".into(),
            release: ReleaseInfo::default(),
            image: "r/x@sha256:aa".into(),
            digest: "sha256:aa".into(),
            previous: None,
            services: BTreeMap::new(),
            previous_services: BTreeMap::new(),
        };
        let v: serde_json::Value = serde_json::to_value(&input).unwrap();
        assert_eq!(v["phase"], "pre-deploy");
        assert_eq!(v["target"], "web");
        assert!(v["previous"].is_null());
        for key in ["release", "image", "digest"] {
            assert!(v.get(key).is_some(), "{key}");
        }
        assert!(
            v.get("services").is_none(),
            "no Compose maps for a container"
        );

        let compose = HookInput {
            services: BTreeMap::from([("web".into(), "r/x@sha256:aa".into())]),
            ..input
        };
        let v: serde_json::Value = serde_json::to_value(&compose).unwrap();
        assert_eq!(v["services"]["web"], "r/x@sha256:aa");
        assert!(v.get("previous_services").is_none());
        let back: HookInput = serde_json::from_value(v).unwrap();
        assert_eq!(back, compose);
    }

    #[test]
    fn output_defaults_and_result_keys() {
        let o: HookOutput = serde_json::from_str(r#"{"ok": true}"#).unwrap();
        assert!(o.ok && o.message.is_empty() && o.outputs.is_empty());
        assert!(serde_json::from_str::<HookOutput>(r#"{"message": "x"}"#).is_err());
        let keys = result_outputs(
            Phase::PostDeploy,
            false,
            "m",
            Duration::from_millis(1500),
            &BTreeMap::from([("rows".into(), "3".into())]),
        );
        assert_eq!(keys["post_hook.duration_ms"], "1500");
        assert_eq!(keys["post_hook.output.rows"], "3");
        assert_eq!(keys["post_hook.ok"], "false");
    }
}
