//! Version negotiation at `Hello` (design §2).
//!
//! An agent is accepted when it speaks [`crate::PROTOCOL_VERSION`] and its
//! semver version has the same major as core's and a minor equal to core's or one below
//! (N/N-1). Development builds (a pre-release starting with `dev`, e.g. `0.3.0-dev` or
//! `0.3.0-dev.4`) on either side skip the version skew check; the protocol version must still
//! match.

use semver::Version;

use crate::messages::Reject;
use crate::PROTOCOL_VERSION;

/// The reason text sent when the agent's version is outside the allowed skew.
pub const UPGRADE_REQUIRED: &str = "upgrade required";

/// Why core refuses an agent's `Hello`. `Display` is the [`Reject::reason`] to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The agent's version is outside N/N-1 of core's (older or newer).
    #[error("upgrade required")]
    UpgradeRequired {
        /// Core's version.
        core: String,
        /// The agent's version.
        agent: String,
    },
    /// The agent speaks another protocol version.
    #[error("unsupported protocol version {agent} (core speaks {supported})")]
    UnsupportedProtocol {
        /// The agent's protocol version.
        agent: u16,
        /// The version core speaks.
        supported: u16,
    },
    /// The agent's version is not semver.
    #[error("invalid agent version `{version}`: {error}")]
    InvalidAgentVersion {
        /// The version as sent.
        version: String,
        /// The semver parse error.
        error: String,
    },
    /// Core's own version is not semver (a build problem).
    #[error("invalid core version `{version}`: {error}")]
    InvalidCoreVersion {
        /// Core's version.
        version: String,
        /// The semver parse error.
        error: String,
    },
}

impl Rejection {
    /// The reason text for [`Reject`].
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// The [`Reject`] message to send.
    pub fn to_reject(&self) -> Reject {
        Reject {
            reason: self.reason(),
        }
    }
}

impl From<Rejection> for Reject {
    fn from(r: Rejection) -> Self {
        r.to_reject()
    }
}

/// Whether `v` is a development build: its pre-release starts with `dev`.
pub fn is_dev_build(v: &Version) -> bool {
    v.pre.as_str().starts_with("dev")
}

/// Decides whether core (at `core_version`) accepts an agent announcing `agent_version`
/// and `agent_protocol_version` in its `Hello`.
pub fn negotiate(
    core_version: &str,
    agent_version: &str,
    agent_protocol_version: u16,
) -> Result<(), Rejection> {
    if agent_protocol_version != PROTOCOL_VERSION {
        return Err(Rejection::UnsupportedProtocol {
            agent: agent_protocol_version,
            supported: PROTOCOL_VERSION,
        });
    }
    let core = Version::parse(core_version).map_err(|e| Rejection::InvalidCoreVersion {
        version: core_version.to_owned(),
        error: e.to_string(),
    })?;
    let agent = Version::parse(agent_version).map_err(|e| Rejection::InvalidAgentVersion {
        version: agent_version.to_owned(),
        error: e.to_string(),
    })?;
    if is_dev_build(&core) || is_dev_build(&agent) {
        return Ok(());
    }
    let minor_ok = agent.minor == core.minor || agent.minor.checked_add(1) == Some(core.minor);
    if agent.major == core.major && minor_ok {
        Ok(())
    } else {
        Err(Rejection::UpgradeRequired {
            core: core_version.to_owned(),
            agent: agent_version.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_table() {
        // (core, agent, protocol, accepted)
        let table: &[(&str, &str, u16, bool)] = &[
            ("1.4.0", "1.4.0", 1, true),
            ("1.4.0", "1.4.7", 1, true),
            ("1.4.3", "1.4.0", 1, true),
            ("1.4.0", "1.3.9", 1, true),
            ("1.4.0", "1.2.0", 1, false),
            ("1.4.0", "1.5.0", 1, false),
            ("1.4.0", "2.4.0", 1, false),
            ("2.0.0", "1.9.0", 1, false),
            ("1.0.0", "1.0.0", 1, true),
            ("0.3.0", "0.2.5", 1, true),
            ("0.3.0", "0.1.0", 1, false),
            ("0.3.0", "0.4.0", 1, false),
            ("0.3.0", "0.3.0-rc.1", 1, true),
            ("0.3.0", "0.1.0-rc.1", 1, false),
            ("0.3.0", "0.1.0+build.5", 1, false),
            ("0.3.0", "0.3.1+build.5", 1, true),
            // Development builds skip the skew check on either side.
            ("0.3.0-dev", "0.1.0", 1, true),
            ("0.3.0", "0.9.0-dev", 1, true),
            ("1.0.0", "0.1.0-dev.3", 1, true),
            ("1.0.0", "0.1.0-devel", 1, true),
            ("1.0.0", "0.1.0-alpha.dev", 1, false),
            // Protocol version must match, dev or not.
            ("0.3.0", "0.3.0", 0, false),
            ("0.3.0", "0.3.0", 2, false),
            ("0.3.0-dev", "0.3.0-dev", 2, false),
            // Unparsable versions.
            ("0.3.0", "0.3", 1, false),
            ("0.3.0", "", 1, false),
            ("0.3.0", "v0.3.0", 1, false),
            ("0.3.0", "latest", 1, false),
            ("nonsense", "0.3.0", 1, false),
        ];
        for &(core, agent, proto, ok) in table {
            assert_eq!(
                negotiate(core, agent, proto).is_ok(),
                ok,
                "core {core} agent {agent} protocol {proto}"
            );
        }
    }

    #[test]
    fn reasons() {
        let r = negotiate("1.4.0", "1.2.0", 1).unwrap_err();
        assert_eq!(r.reason(), "upgrade required");
        assert_eq!(r.to_reject().reason, UPGRADE_REQUIRED);
        assert_eq!(
            negotiate("1.4.0", "1.5.0", 1).unwrap_err().reason(),
            "upgrade required"
        );
        let r = negotiate("1.4.0", "1.4.0", 7).unwrap_err();
        assert_eq!(r.reason(), "unsupported protocol version 7 (core speaks 1)");
        let r = negotiate("1.4.0", "one.four", 1).unwrap_err();
        assert!(
            r.reason().starts_with("invalid agent version `one.four`: "),
            "{r}"
        );
        assert!(matches!(
            negotiate("x", "1.0.0", 1),
            Err(Rejection::InvalidCoreVersion { .. })
        ));
    }
}
