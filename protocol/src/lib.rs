//! `wharf-protocol`: the `wharf/1` wire protocol between Wharf core and its agents.
//!
//! - [`messages`]: the framed stream messages ([`Message`]) and the polling bodies
//!   ([`PollRequest`], [`PollResponse`]);
//! - [`task`]: [`AgentTask`] with its [`TaskPayload`] per [`TaskKind`], and [`TaskResult`];
//! - [`frame`]: u32 big-endian length + postcard body, sans-IO [`FrameDecoder`] and async
//!   [`read_frame`] / [`write_frame`];
//! - [`version`]: `Hello` version negotiation ([`negotiate`]);
//! - [`image`]: digest-pinned image references ([`ImageRef`], [`Digest`]);
//! - [`seal`]: registry credentials sealed to one agent's X25519 key for one task;
//! - [`time`]: wire timestamps and durations ([`Timestamp`], [`DurationMs`]).
//!
//! Every wire type derives `Debug, Clone, PartialEq, Serialize, Deserialize` and, with the
//! `arbitrary` feature, `arbitrary::Arbitrary`. Field names are snake_case and enum values
//! kebab-case in JSON.

#![warn(missing_docs)]

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

/// HTTP path of agent enrollment.
pub const ENROLL_PATH: &str = "/agent/v1/enroll";

/// Missed heartbeats after which core marks an agent offline.
pub const MISSED_HEARTBEATS_OFFLINE: u32 = 3;
