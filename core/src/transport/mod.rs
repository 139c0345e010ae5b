//! Agent transports (design.md §2): how tasks reach agents and results come back.
//!
//! - [`quic`]: the `wharf/1` QUIC listener with mutual TLS ([`quic::serve`]); one control
//!   stream per agent connection (`Hello`, `Welcome`/`Reject`, `Heartbeat`s), one
//!   core-opened stream per task (`Assign`, `Accepted`, `Progress`, `Result`, `ResultAck`,
//!   `Cancel`).
//! - [`poll`]: the HTTPS long-poll sessions behind `POST /agent/v1/poll` ([`poll::PollHub`];
//!   the HTTP side is `api/poll.rs`), for hosts where UDP is blocked.
//!
//! Transports are thin shells: the agent's identity comes from its certificate and the
//! [`Directory`](crate::directory::Directory), every task decision is the
//! [`Engine`](crate::engine::Engine)'s. What a transport owns is the wire: framing, stream
//! lifecycles, timeouts, and the [`TransportCounters`] that `/metrics` shows.
//!
//! The wire contract, message by message, is `docs/protocol.md`.

use std::sync::atomic::{AtomicU64, Ordering};

mod endpoint_key;
pub mod poll;
pub mod quic;

pub use endpoint_key::{EndpointKey, MIN_RESET_INTERVAL};
pub use quic::{serve, server_config, QuicConfig, QuicServer};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])+ $name:ident ),* $(,)?) => {
        /// Counters of a transport listener, shared with `/metrics`.
        ///
        /// Every field is a monotonic counter except [`sessions_active`](Self::sessions_active),
        /// a gauge. Increment with [`TransportCounters::inc`]; read them all at once with
        /// [`TransportCounters::snapshot`] (or [`CountersSnapshot::pairs`] for an exposition
        /// loop). Cheap to share: put it in an `Arc`.
        #[derive(Debug, Default)]
        pub struct TransportCounters {
            $( $(#[doc = $doc])+ pub $name: AtomicU64, )*
        }

        /// A point-in-time copy of [`TransportCounters`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
        pub struct CountersSnapshot {
            $( $(#[doc = $doc])+ pub $name: u64, )*
        }

        impl TransportCounters {
            /// Reads every counter (each one atomically; the set is not one atomic read).
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot {
                    $( $name: self.$name.load(Ordering::Relaxed), )*
                }
            }
        }

        impl CountersSnapshot {
            /// `(name, help, value)` of every counter, in declaration order: what a
            /// Prometheus exposition needs (prefix the names, e.g. `wharf_quic_`).
            pub fn pairs(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![
                    $( (stringify!($name), concat!($($doc),+).trim(), self.$name), )*
                ]
            }
        }
    };
}

counters! {
    /// UDP datagrams received on the listener's socket.
    datagrams_received,
    /// Datagrams that cannot be a QUIC packet for this endpoint (empty, fixed bit clear,
    /// truncated long header, shorter than any short-header packet); dropped.
    datagrams_malformed,
    /// Connection attempts refused at once because `max_connecting` connections were
    /// being set up (the agent retries after its backoff).
    connections_refused_busy,
    /// QUIC handshakes that completed (mutual TLS included).
    handshakes_completed,
    /// QUIC handshakes that failed: foreign or revoked client certificate, no certificate,
    /// wrong ALPN, timeout, garbage.
    handshakes_failed,
    /// Connections closed after the handshake because the agent is unknown or revoked.
    agents_refused,
    /// Sessions opened (`Welcome` sent).
    sessions_opened,
    /// Sessions refused with `Reject` (version skew, invalid `Hello`).
    sessions_rejected,
    /// Sessions open now (gauge).
    sessions_active,
    /// Connections closed because the agent missed 3 heartbeat intervals.
    heartbeat_timeouts,
    /// Heartbeats received.
    heartbeats,
    /// Frames whose length prefix was over the limit (stream closed with `FRAME_TOO_LARGE`).
    frames_too_large,
    /// Frames whose body did not decode (stream closed with `DECODE_ERROR`).
    frames_undecodable,
    /// Well-formed messages not allowed where they came, and streams ending inside a frame
    /// (stream closed with `PROTOCOL_VIOLATION`).
    protocol_violations,
    /// Task streams opened (`Assign` sent, re-sends included).
    tasks_assigned,
    /// Results stored (or already stored) and acknowledged with `ResultAck`.
    results_acked,
    /// Results refused (another agent's task, unknown task, newer attempt): no ack.
    results_refused,
    /// `Cancel`s forwarded to an agent on the task's stream.
    cancels_sent,
    /// `Cancel`s for a task with no open stream on the agent's connection (dropped).
    cancels_without_stream,
}

impl TransportCounters {
    /// A fresh set, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one to `counter` (one of this struct's fields).
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one from the gauge `counter`, never below zero.
    pub fn dec(counter: &AtomicU64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_pairs() {
        let c = TransportCounters::new();
        TransportCounters::inc(&c.heartbeats);
        TransportCounters::inc(&c.heartbeats);
        TransportCounters::inc(&c.sessions_active);
        TransportCounters::dec(&c.sessions_active);
        TransportCounters::dec(&c.sessions_active);
        let s = c.snapshot();
        assert_eq!(s.heartbeats, 2);
        assert_eq!(s.sessions_active, 0);
        let pairs = s.pairs();
        assert_eq!(pairs[0].0, "datagrams_received");
        let (_, help, value) = pairs.iter().find(|p| p.0 == "heartbeats").unwrap();
        assert_eq!(*value, 2);
        assert_eq!(*help, "Heartbeats received.");
    }
}
