//! `wharf-protocol`: the `wharf/1` wire protocol between Wharf core and its agents.
//!
//! - [`messages`]: the framed stream messages ([`Message`]) and the polling bodies
//!   ([`PollRequest`], [`PollResponse`]);
//! - [`task`]: [`AgentTask`] with its [`TaskPayload`] per [`TaskKind`], and [`TaskResult`];
//! - [`frame`]: u32 big-endian length + postcard body, sans-IO [`FrameDecoder`] and async
//!   [`read_frame`] / [`write_frame`];
//! - [`version`]: `Hello` version negotiation ([`negotiate`]);
//! - [`compose`]: Compose lock files ([`compose::ComposeLock`]): pinned services, no `build:`;
//! - [`image`]: digest-pinned image references ([`ImageRef`], [`Digest`]);
//! - [`seal`]: registry credentials sealed to one agent's X25519 key for one task;
//! - [`time`]: wire timestamps and durations ([`Timestamp`], [`DurationMs`]).
//!
//! ```
//! use wharf_protocol::*;
//!
//! // Agent side: say hello in a frame.
//! let hello = Message::Hello(Hello {
//!     agent_version: "0.1.0".into(),
//!     protocol_version: PROTOCOL_VERSION,
//!     capabilities: vec![capability::DOCKER.into()],
//!     pending_results: vec![],
//! });
//! let bytes = encode_frame(&hello)?;
//!
//! // Core side: bytes arrive in pieces; whole messages come out.
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&bytes[..3]);
//! assert_eq!(decoder.decode()?, None);
//! decoder.push(&bytes[3..]);
//! let Some(Message::Hello(h)) = decoder.decode()? else { unreachable!() };
//! let answer = match negotiate("0.1.3", &h.agent_version, h.protocol_version) {
//!     Ok(()) => Message::Welcome(Welcome {
//!         core_version: "0.1.3".into(),
//!         heartbeat_interval: DurationMs::from_secs(5),
//!         limits: Limits::default(),
//!     }),
//!     Err(rejection) => Message::Reject(rejection.to_reject()),
//! };
//! assert_eq!(answer.name(), "welcome");
//!
//! // Images are deployed by digest only.
//! let image = ImageRef::parse(
//!     "127.0.0.1:5000/team/app:1.2@sha256:4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce",
//! )?;
//! assert_eq!(image.repository(), "127.0.0.1:5000/team/app");
//! assert!(ImageRef::parse("app:1.2").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every wire type derives `Debug, Clone, PartialEq, Serialize, Deserialize` and, with the
//! `arbitrary` feature, `arbitrary::Arbitrary`. Field names are snake_case and enum values
//! kebab-case in JSON.

#![warn(missing_docs)]

pub mod compose;
pub mod frame;
pub mod image;
pub mod messages;
pub mod seal;
pub mod task;
pub mod time;
pub mod version;

pub use frame::{
    decode_body, encode_frame, encode_frame_with_max, error_code, from_body, read_frame,
    read_frame_with_buf, to_body, write_frame, FrameDecoder, FrameError, FRAME_HEADER_LEN,
};
pub use image::{Digest, DigestError, ImageRef, ImageRefError};
pub use messages::{
    capability, Accepted, Cancel, Heartbeat, Hello, Limits, Load, Message, PollRequest,
    PollResponse, Progress, Reject, ResultAck, Welcome,
};
pub use task::{
    AgentTask, ComposeDeploySpec, ComposeFile, ComposeRollbackSpec, DeploySpec, ErrorType,
    HealthCheckSpec, HealthProbe, HealthSpec, HookSource, HookSpec, PortMapping, PortProtocol,
    Priority, ReleaseInfo, RestartPolicy, RollbackSpec, SealedCredentials, TaskKind, TaskMetrics,
    TaskPayload, TaskResult, UnknownName, VolumeMount, WriteStickerSpec, DEFAULT_HOOK_TIMEOUT,
    DEFAULT_STOP_GRACE,
};
pub use time::{DurationMs, DurationParseError, Timestamp, TimestampParseError};
pub use version::{negotiate, Rejection, UPGRADE_REQUIRED};

/// The protocol version carried in [`Hello::protocol_version`].
pub const PROTOCOL_VERSION: u16 = 1;

/// The QUIC/TLS ALPN protocol id.
pub const ALPN: &[u8] = b"wharf/1";

/// Default (and largest) frame body size: 16 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 16 * 1024 * 1024;

/// HTTP path of the polling transport.
pub const POLL_PATH: &str = "/agent/v1/poll";

/// Polling request headers: what `Hello` carries on QUIC, sent with every poll (lower
/// case, as HTTP/1.1 header names compare case-insensitively).
pub mod poll_header {
    /// The agent's semver version (`Hello::agent_version`).
    pub const AGENT_VERSION: &str = "wharf-agent-version";
    /// The protocol version the agent speaks (`Hello::protocol_version`), decimal.
    pub const PROTOCOL_VERSION: &str = "wharf-protocol-version";
    /// The agent's capabilities (`Hello::capabilities`), comma-separated.
    pub const CAPABILITIES: &str = "wharf-capabilities";
}

/// Media type of polling bodies (postcard, no length prefix).
pub const POLL_CONTENT_TYPE: &str = "application/x-wharf-postcard";

/// HTTP path of agent enrollment.
pub const ENROLL_PATH: &str = "/agent/v1/enroll";

/// Missed heartbeats after which core marks an agent offline.
pub const MISSED_HEARTBEATS_OFFLINE: u32 = 3;
