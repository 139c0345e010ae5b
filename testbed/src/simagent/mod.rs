//! A **simulated agent**: a protocol-level test tool that speaks `wharf/1` to a real
//! core. It is not an agent: it runs nothing, pulls nothing and touches no Docker engine.
//! Tests and the benchmark use it to drive core's enrollment, QUIC sessions, dispatch,
//! leases, results and acknowledgements with exactly the behaviour they need, by the
//! thousand if need be.
//!
//! # What it does
//!
//! - [`SimAgent::enroll`]: `POST /agent/v1/enroll` over HTTPS (reqwest with core's
//!   [`enrollment_client_config`](wharf_core::pki::enrollment_client_config), which pins
//!   the CA by its `sha256:` fingerprint), sending a fresh P-256 CSR and an X25519 sealing
//!   key. A wrong CA hash fails with [`EnrollError::CaMismatch`] (core's PKI message,
//!   naming both fingerprints); a refused token with [`EnrollError::Refused`] (`410` for a
//!   used or expired one). The [`Enrolled`] identity can be [saved](Enrolled::save) to a
//!   directory (keys 0600) and [loaded](Enrolled::load) again for restart tests.
//! - [`SimAgent::connect`] / [`SimAgent::connect_with`]: a QUIC connection with the
//!   agent's client certificate; the control stream's `Hello {agent_version,
//!   protocol_version, capabilities, pending_results}` → `Welcome` (or `Reject`, returned
//!   as [`SimAgentError::Rejected`]); a `Heartbeat` every `Welcome.heartbeat_interval`;
//!   core-opened task streams: `Assign` → `Accepted` → `Progress`* → `Result` →
//!   `ResultAck`. Many agents can share one [`quinn::Endpoint`] (one UDP socket):
//!   [`SimAgent::endpoint`] and [`ConnectOptions::endpoint`].
//! - A journal in memory keyed by `(task_id, attempt)`: a re-sent `Assign` is answered
//!   from it (`Accepted` and the stored `Result`), never run twice. Results not
//!   acknowledged are re-sent in the next `Hello.pending_results`. The journal lives as long
//!   as the [`SimAgentHandle`]: it survives reconnections, not the handle.
//! - [`Behaviour`]: succeed; fail retriable or not, with `rolled_back`; outcomes and extra
//!   outputs per task kind; a delay and progress lines; a random failure rate; drop the
//!   `Assign` (for leases) or drop the stream after `Accepted` (for deadlines); honour or
//!   ignore `Cancel`. Successful results carry plausible outputs: deploys are remembered
//!   per target, so `inspect` reports the image and digest last deployed and
//!   `read-sticker` the sticker last written (or fails `not-found`).
//! - [`SimAgent::poll_with`]: the same agent over the polling transport
//!   (docs/protocol.md §9): `POST /agent/v1/poll` over HTTPS with the client certificate,
//!   long polls held by core, the polling `accepted` (confirmed by
//!   [`SimEvent::AcceptConfirmed`]), results until `acked_results` lists them, `429`s
//!   waited out ([`SimStats::polls_throttled`]); see [`PollOptions`].
//! - Reconnection with jittered exponential backoff ([`Reconnect`]; off with
//!   [`Reconnect::disabled`] to see a refusal as it is).
//! - Observability for tests: [`SimAgentHandle::stats`] ([`SimStats`]: tasks received,
//!   executions, journal answers, acks...), [`SimAgentHandle::wait_for`] a condition on
//!   them, [`SimAgentHandle::subscribe`] to [`SimEvent`]s, [`SimAgentHandle::next_task`]
//!   for the tasks received, [`SimAgentHandle::journal`] and
//!   [`SimAgentHandle::executions_of`].
//! - [`CoreApi`]: a small operator API client (enrollment tokens, submit, get and list
//!   tasks) for tests and the benchmark.
//!
//! ```no_run
//! use std::time::Duration;
//! use wharf_testbed::simagent::{Behaviour, SimAgent};
//!
//! # async fn demo(token: &str, ca_hash: &str) -> anyhow::Result<()> {
//! let enrolled = SimAgent::enroll("127.0.0.1:7443", token, ca_hash, "sim-1").await?;
//! let agent = SimAgent::connect(
//!     &enrolled,
//!     "127.0.0.1:7443",
//!     Behaviour::succeed().with_delay(Duration::from_millis(50)),
//! )
//! .await?;
//! let task = agent.next_task(Duration::from_secs(30)).await;
//! agent
//!     .wait_for(Duration::from_secs(30), |s| s.acks >= 1)
//!     .await
//!     .map_err(|s| anyhow::anyhow!("no ack: {s:?}"))?;
//! assert_eq!(agent.executions_of(task.unwrap().id, 1), 1);
//! # Ok(()) }
//! ```
//!
//! # Command line
//!
//! ```text
//! wharf-testbed sim-agent --core HOST:PORT --state-dir DIR
//!     [--token T --ca-hash sha256:HEX]        one agent, enrolled with a one-time token
//!     [--admin-token T | WHARF_TOKEN] [--ca CA.pem]
//!                                             or: create enrollment tokens through the API
//!     [--name N] [--count K]                  K agents N-0 .. N-<K-1> (needs --admin-token)
//!     [--delay 50ms] [--fail-rate 0.0]        simulated task time, random retriable failures
//! ```
//!
//! Identities are kept under `--state-dir` (with `--count` > 1, one `NAME/` directory per
//! agent) and reused on the next run, so a restart reconnects without enrolling again.
//! Every agent prints `NAME connected as ID` on stdout once its first session is open; the
//! agents share one UDP socket, reconnect with backoff, and run until Ctrl-C or SIGTERM,
//! when a summary of their counters goes to stderr. Exit codes: 0 after a clean stop,
//! 1 on failure, 2 for invalid options.

mod agent;
mod api;
mod behaviour;
mod enroll;
mod fleet;
mod poll;

use std::net::SocketAddr;

pub use agent::{
    ConnectOptions, JournalEntry, Reconnect, SimAgentError, SimAgentHandle, SimEvent, SimStats,
};
pub use api::{ApiError, CoreApi, EnrollTokenGrant, Submitted};
pub use behaviour::{Behaviour, CancelMode, Outcome};
pub use enroll::{EnrollError, Enrolled};
pub use fleet::{run_fleet, FleetInputError, FleetOptions, FleetSummary};
pub use poll::PollOptions;

/// The version a simulated agent announces (enrollment and `Hello`): the workspace's, so
/// it is always within core's version skew window.
pub const SIM_AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The capabilities a simulated agent announces by default.
pub fn default_capabilities() -> Vec<String> {
    use wharf_protocol::capability;
    vec![
        capability::DOCKER.into(),
        capability::SEALED_CREDENTIALS.into(),
        "simulated".into(),
    ]
}

/// Entry points of the simulated agent (see the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct SimAgent;

impl SimAgent {
    /// Enrolls agent `name` at core `core_addr` (`HOST:PORT`) with a one-time `token`,
    /// pinning core's CA by `ca_hash` (`sha256:<64 hex>`).
    ///
    /// # Errors
    ///
    /// [`EnrollError::CaMismatch`] when core does not present the pinned CA,
    /// [`EnrollError::Refused`] when core refuses the token (or the name), and the other
    /// [`EnrollError`]s.
    pub async fn enroll(
        core_addr: &str,
        token: &str,
        ca_hash: &str,
        name: &str,
    ) -> Result<Enrolled, EnrollError> {
        enroll::enroll(core_addr, token, ca_hash, name).await
    }

    /// Connects with [`ConnectOptions::default`] (own endpoint, reconnection with backoff)
    /// and returns once the first session is open.
    ///
    /// # Errors
    ///
    /// See [`SimAgent::connect_with`].
    pub async fn connect(
        enrolled: &Enrolled,
        core_addr: &str,
        behaviour: Behaviour,
    ) -> Result<SimAgentHandle, SimAgentError> {
        Self::connect_with(enrolled, core_addr, behaviour, ConnectOptions::default()).await
    }

    /// Connects to core at `core_addr` (`HOST:PORT`) as `enrolled`, sends `Hello`, and
    /// returns a handle once `Welcome` arrived. The agent then runs in the background
    /// (heartbeats, tasks, reconnections per `options.reconnect`) until the handle is shut
    /// down or dropped.
    ///
    /// # Errors
    ///
    /// The first session could not be opened: [`SimAgentError::Rejected`] with core's
    /// reason, [`SimAgentError::Connection`] for a failed handshake or a connection core
    /// closed (a revoked or unknown certificate), [`SimAgentError::Setup`] for an unusable
    /// address or identity, [`SimAgentError::Protocol`] for an unexpected answer.
    pub async fn connect_with(
        enrolled: &Enrolled,
        core_addr: &str,
        behaviour: Behaviour,
        options: ConnectOptions,
    ) -> Result<SimAgentHandle, SimAgentError> {
        agent::connect(enrolled, core_addr, behaviour, options).await
    }

    /// Starts a **polling** simulated agent (docs/protocol.md §9): `POST /agent/v1/poll`
    /// over HTTPS with the agent's client certificate instead of QUIC (see
    /// [`PollOptions`]; the behaviours, journal, counters and events are the same, plus
    /// [`SimEvent::AcceptConfirmed`] and [`SimStats::polls_sent`]). Returns once core
    /// answered the first poll (a new polling session); the agent then long-polls in the
    /// background until the handle is shut down or dropped.
    /// [`SimAgentHandle::drop_connection`] does nothing for a polling agent.
    ///
    /// # Errors
    ///
    /// The first poll failed: [`SimAgentError::Connection`] (TLS refused, a status other
    /// than 200, a 429), [`SimAgentError::Rejected`] for `426 upgrade required`,
    /// [`SimAgentError::Setup`] for an unusable address or identity,
    /// [`SimAgentError::Protocol`] for an answer that does not decode.
    pub async fn poll_with(
        enrolled: &Enrolled,
        core_addr: &str,
        behaviour: Behaviour,
        options: PollOptions,
    ) -> Result<SimAgentHandle, SimAgentError> {
        poll::connect_poll(enrolled, core_addr, behaviour, options).await
    }

    /// A QUIC client endpoint (one UDP socket on an ephemeral port) that many simulated
    /// agents can share through [`ConnectOptions::with_endpoint`], for a core at `addr`
    /// (it picks the address family). Must be called inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// The socket cannot be opened.
    pub fn endpoint(addr: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        agent::client_endpoint(addr)
    }

    /// [`SimAgent::endpoint`] for a core given as `HOST:PORT`.
    ///
    /// # Errors
    ///
    /// The name does not resolve or the socket cannot be opened.
    pub async fn endpoint_for(core_addr: &str) -> std::io::Result<quinn::Endpoint> {
        let addr = tokio::net::lookup_host(core_addr)
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{core_addr} resolves to no address"),
                )
            })?;
        Self::endpoint(addr)
    }
}
