//! The runtime's settings ([`AgentConfig`]), its reconnection backoff and its renewal
//! policy, and the events it reports ([`RuntimeEvent`]).

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;
use wharf_core::pki::SecretString;
use wharf_protocol::Timestamp;

use super::journal::JournalConfig;

/// Jittered exponential backoff between connection attempts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The largest delay.
    pub max: Duration,
    /// Growth per failed attempt.
    pub multiplier: f64,
    /// Random spread as a fraction of the delay (0.5: between 50 % and 150 %).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms doubling up to 10 s, ±50 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (0-based), jitter included.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = i32::try_from(attempt.min(64)).unwrap_or(64);
        let base = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp);
        let base = base.min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            1.0 + jitter * (2.0 * rand::random::<f64>() - 1.0)
        } else {
            1.0
        };
        Duration::from_secs_f64((base * factor).max(0.0))
    }
}

/// How the agent reaches core (`--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// QUIC first; HTTPS long polling when QUIC cannot connect within
    /// [`AgentConfig::quic_fallback_after`], retrying QUIC every
    /// [`AgentConfig::quic_retry_every`] while polling (the binaries' default).
    Auto,
    /// QUIC only (the default of [`AgentConfig::new`]).
    #[default]
    Quic,
    /// HTTPS long polling only.
    Poll,
}

impl Transport {
    /// `auto`, `quic` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Auto => "auto",
            Transport::Quic => "quic",
            Transport::Poll => "poll",
        }
    }
}

/// When the client certificate is renewed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenewalPolicy {
    /// How often the certificate's validity is checked (the first check is at start).
    pub check_every: Duration,
    /// Renew when less than this fraction of the certificate's lifetime is left.
    pub renew_below: f64,
    /// Wait before retrying a renewal that failed (core unreachable).
    pub retry_after: Duration,
}

impl Default for RenewalPolicy {
    /// Checked hourly; renewed with less than a third of the lifetime left; a failed
    /// renewal is retried after 5 minutes.
    fn default() -> Self {
        RenewalPolicy {
            check_every: Duration::from_secs(3600),
            renew_below: 1.0 / 3.0,
            retry_after: Duration::from_secs(300),
        }
    }
}

/// Something the runtime did, for the binary's status output and for tests
/// ([`AgentConfig::events`]).
#[derive(Debug, Clone, PartialEq)]
pub enum RuntimeEvent {
    /// The agent enrolled (first start with a token) and saved its identity.
    Enrolled {
        /// Its id.
        agent_id: Uuid,
    },
    /// A saved identity was loaded.
    IdentityLoaded {
        /// Its id.
        agent_id: Uuid,
    },
    /// A session started on this transport (`quic` or `poll`): sent right before
    /// [`RuntimeEvent::Connected`].
    TransportInUse {
        /// `quic` or `poll`.
        transport: &'static str,
    },
    /// A session was opened (`Welcome`, or the first answer to a poll); `session` counts
    /// from 1 in this run.
    Connected {
        /// The session number.
        session: u64,
        /// Results sent in `Hello.pending_results`.
        pending_results: usize,
    },
    /// A connection attempt failed (including `Reject`).
    ConnectFailed {
        /// Why.
        error: String,
    },
    /// The session ended.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// An `Assign` arrived.
    TaskReceived {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
        /// Whether it was already in the journal (a re-send: answered from it).
        known: bool,
    },
    /// A journaled task was handed to `Executor::resume` at start.
    Resumed {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
    },
    /// A result was journaled.
    Finished {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
        /// The result's `success`.
        success: bool,
    },
    /// Core acknowledged a result.
    ResultAcked {
        /// The task.
        task_id: Uuid,
        /// Its attempt.
        attempt: u32,
    },
    /// The client certificate was renewed and saved; the next connection uses it.
    CertificateRenewed {
        /// End of the new certificate's validity.
        not_after: Timestamp,
    },
}

/// What the runtime needs to run (see [`super::run`]).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Core's address, `HOST:PORT` (HTTPS on TCP for enrollment and renewal, QUIC on UDP).
    pub core_addr: String,
    /// The name core's certificate is verified for (`None`: the host of `core_addr`).
    pub server_name: Option<String>,
    /// The state dir: identity file, journal.
    pub state_dir: PathBuf,
    /// The agent's name (enrollment only; a saved identity keeps its own).
    pub name: String,
    /// One-time enrollment token (`--token`); needed only without a saved identity.
    pub token: Option<SecretString>,
    /// The CA fingerprint to pin at enrollment (`--ca-hash sha256:HEX`).
    pub ca_hash: Option<String>,
    /// The version announced in `Hello` and at enrollment.
    pub agent_version: String,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Certificate renewal.
    pub renewal: RenewalPolicy,
    /// Time for the QUIC handshake and core's answer to `Hello`.
    pub connect_timeout: Duration,
    /// QUIC idle timeout: how long a silent core (killed, network gone) takes to notice.
    pub idle_timeout: Duration,
    /// How long a `Result` waits for its `ResultAck` on the task stream before it is left
    /// to the next `Hello`.
    pub ack_timeout: Duration,
    /// On shutdown, how long running tasks may take to finish before they are left to
    /// crash recovery at the next start.
    pub shutdown_grace: Duration,
    /// Pruning of acknowledged journal records.
    pub journal: JournalConfig,
    /// How the agent reaches core.
    pub transport: Transport,
    /// With [`Transport::Auto`]: how long QUIC may take to connect before the agent polls.
    pub quic_fallback_after: Duration,
    /// With [`Transport::Auto`]: how often a polling agent tries QUIC again.
    pub quic_retry_every: Duration,
    /// The longest a poll request may take (core holds one up to its long poll, 25 s by
    /// default).
    pub poll_timeout: Duration,
    /// Where [`RuntimeEvent`]s go (`None`: nowhere).
    pub events: Option<mpsc::UnboundedSender<RuntimeEvent>>,
}

impl AgentConfig {
    /// A configuration with the defaults: 100 ms – 10 s backoff, hourly renewal checks,
    /// 15 s connect and idle timeouts, 60 s ack timeout, 10 s shutdown grace; QUIC (with
    /// `auto`: fallback after 3 s, QUIC retried every 60 s; 60 s poll timeout).
    pub fn new(
        core_addr: impl Into<String>,
        state_dir: impl Into<PathBuf>,
        name: impl Into<String>,
    ) -> Self {
        AgentConfig {
            core_addr: core_addr.into(),
            server_name: None,
            state_dir: state_dir.into(),
            name: name.into(),
            token: None,
            ca_hash: None,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            backoff: Backoff::default(),
            renewal: RenewalPolicy::default(),
            connect_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(15),
            ack_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
            journal: JournalConfig::default(),
            transport: Transport::Quic,
            quic_fallback_after: Duration::from_secs(3),
            quic_retry_every: Duration::from_secs(60),
            poll_timeout: Duration::from_secs(60),
            events: None,
        }
    }

    /// With an enrollment token and the CA fingerprint to pin.
    pub fn with_enrollment(mut self, token: impl Into<String>, ca_hash: impl Into<String>) -> Self {
        self.token = Some(SecretString::new(token.into()));
        self.ca_hash = Some(ca_hash.into());
        self
    }

    /// With an events channel.
    pub fn with_events(mut self, events: mpsc::UnboundedSender<RuntimeEvent>) -> Self {
        self.events = Some(events);
        self
    }

    pub(crate) fn emit(&self, event: RuntimeEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(1600));
        assert_eq!(b.delay(30), Duration::from_secs(10));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(10));
        let j = Backoff::default();
        let delays: Vec<Duration> = (0..200).map(|_| j.delay(3)).collect();
        assert!(delays
            .iter()
            .all(|d| *d >= Duration::from_millis(400) && *d <= Duration::from_millis(1200)));
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "jitter spreads delays"
        );
    }
}
