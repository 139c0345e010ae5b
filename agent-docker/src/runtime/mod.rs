//! The agent runtime, shared by the Docker and Compose agents (design.md §4): enrollment,
//! the session with core, the journal, the per-target lock, crash recovery. Executors plug
//! in through [`Executor`].
//!
//! [`run`] is the entry point of an agent binary:
//!
//! 1. **Identity** ([`identity`]): `<state-dir>/identity.json` (0600) is loaded; without
//!    it the agent enrolls with [`AgentConfig::token`] and [`AgentConfig::ca_hash`]
//!    (refused, with both fingerprints named, when core does not present the pinned CA)
//!    and saves it. Without an identity and without a token, [`RuntimeError::InvalidInput`].
//! 2. **Journal** ([`journal`]): sled under `<state-dir>/journal`; every write is flushed
//!    before the agent acts on it.
//! 3. **Crash recovery**: every journaled task not finished is handed to
//!    [`Executor::resume`] with its last checkpoint (under its target's lock); its result
//!    is journaled and reported like any other.
//! 4. **Session** (`session.rs`): QUIC with mutual TLS (ALPN `wharf/1`), `Hello` with the
//!    unacknowledged results, heartbeats, task streams. A re-sent `(task, attempt)` is
//!    answered from the journal, an expired task is refused (`expired`) without running,
//!    a new one is journaled, `Accepted`, its credentials opened in memory, and run under
//!    its target's lock (two targets run at once, one target runs one task at a time).
//!    Results without `ResultAck` go in the next `Hello`; a result whose stream is gone
//!    makes the session reconnect (once the task streams are quiet) to deliver it.
//!    Or **polling** (`poll.rs`, [`Transport::Poll`]): HTTPS long polls of
//!    `/agent/v1/poll` with the same client certificate, journal and task rules; with
//!    [`Transport::Auto`] the agent polls while QUIC cannot connect within
//!    [`AgentConfig::quic_fallback_after`] and goes back to QUIC once it connects (tried
//!    every [`AgentConfig::quic_retry_every`]).
//! 5. **Reconnection** with jittered exponential backoff ([`Backoff`]), forever; `Reject`
//!    with `upgrade required` (or a poll's 426) ends [`run`] with
//!    [`RuntimeError::UpgradeRequired`].
//! 6. **Renewal**: the certificate is renewed over mutual TLS when less than
//!    [`RenewalPolicy::renew_below`] of its lifetime is left; the next connection uses it.
//! 7. **Shutdown**: when the `shutdown` future resolves, the connection is closed, running
//!    tasks get [`AgentConfig::shutdown_grace`] to finish, and [`run`] returns `Ok(())`.
//!
//! Nothing here logs or returns the token, the private keys or registry passwords.

pub mod config;
pub mod executor;
pub mod hooks;
pub mod identity;
pub mod journal;
mod poll;
pub mod process;
mod session;
mod tasks;

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

pub use config::{AgentConfig, Backoff, RenewalPolicy, RuntimeEvent, Transport};
pub use executor::{CheckpointError, CheckpointSink, Executor, ProgressLine, TaskContext};
pub use identity::{EnrollError, Identity, IdentityError};
pub use journal::{Journal, JournalConfig, JournalError, JournalRecord, JournalState};

use identity::EnrollInput;
use poll::PollEnd;
use session::{ConnectError, Session, SessionEnd, SessionState};
use tasks::Shared;

/// Why the runtime stopped (or could not start). [`RuntimeError::exit_code`] maps it to
/// the agent binary's exit code.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The configuration is wrong (no identity and no token, a malformed `--ca-hash` or
    /// core address): nothing was done.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Enrollment was refused: core did not present the pinned CA, or refused the token.
    /// Nothing was stored.
    #[error("enrollment refused: {0}")]
    EnrollmentRefused(String),
    /// Core requires a newer agent (`Reject("upgrade required")`).
    #[error(
        "core {core_addr} requires a newer agent than {agent_version}: upgrade the agent \
         and start it again"
    )]
    UpgradeRequired {
        /// The core.
        core_addr: String,
        /// This agent's version.
        agent_version: String,
    },
    /// The identity file cannot be read or written.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The journal cannot be opened or written.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl RuntimeError {
    /// The exit code for an agent binary: 2 for invalid input, 3 for a refused
    /// enrollment, 4 when an upgrade is required, 1 for IO failures (identity, journal).
    pub fn exit_code(&self) -> u8 {
        match self {
            RuntimeError::InvalidInput(_) => 2,
            RuntimeError::EnrollmentRefused(_) => 3,
            RuntimeError::UpgradeRequired { .. } => 4,
            RuntimeError::Identity(_) | RuntimeError::Journal(_) => 1,
        }
    }
}

/// Runs the agent until `shutdown` resolves (see the [module docs](self)).
///
/// # Errors
///
/// [`RuntimeError::InvalidInput`] or [`RuntimeError::EnrollmentRefused`] at start,
/// [`RuntimeError::Identity`] or [`RuntimeError::Journal`] when the state dir fails,
/// [`RuntimeError::UpgradeRequired`] when core rejects this agent's version.
pub async fn run<E: Executor>(
    config: AgentConfig,
    executor: E,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    let (stop_tx, stop) = watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
        // Keep the sender alive: the receivers must see `true`, not a closed channel.
        std::future::pending::<()>().await;
    });
    let result = run_inner(config, executor, stop).await;
    stopper.abort();
    result
}

async fn run_inner<E: Executor>(
    config: AgentConfig,
    executor: E,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    if config.core_addr.rsplit_once(':').is_none() {
        return Err(RuntimeError::InvalidInput(format!(
            "core address {:?} is not HOST:PORT (e.g. core.example:7443)",
            config.core_addr
        )));
    }
    identity::create_state_dir(&config.state_dir).map_err(RuntimeError::InvalidInput)?;
    let identity = tokio::select! {
        id = obtain_identity(&config, &executor) => id?,
        _ = stopping(&mut stop) => return Ok(()),
    };
    let journal = Journal::open(&config.state_dir.join("journal"), config.journal)?;
    let unfinished = journal.unfinished()?;
    let shared = Arc::new(Shared::new(config, executor, journal, identity));
    tasks::recover(&shared, unfinished);

    let renewer = tokio::spawn(renew_loop(shared.clone(), stop.clone()));
    let outcome = supervise(&shared, &mut stop).await;
    renewer.abort();
    let _ = renewer.await;
    shared.wind_down(shared.config.shutdown_grace).await;
    outcome
}

/// Loads the saved identity, or enrolls (retrying while core is unreachable).
async fn obtain_identity<E: Executor>(
    config: &AgentConfig,
    executor: &E,
) -> Result<Identity, RuntimeError> {
    if let Some(identity) = Identity::load(&config.state_dir)? {
        if config.token.is_some() {
            tracing::info!(
                agent = %identity.name,
                "an identity is saved in the state dir: the enrollment token is not used"
            );
        }
        tracing::info!(agent = %identity.name, agent_id = %identity.agent_id, not_after = %identity.not_after, "identity loaded");
        config.emit(RuntimeEvent::IdentityLoaded {
            agent_id: identity.agent_id,
        });
        return Ok(identity);
    }
    let (Some(token), Some(ca_hash)) = (&config.token, &config.ca_hash) else {
        return Err(RuntimeError::InvalidInput(format!(
            "no agent identity in {} and no enrollment token: start the agent once with \
             --token T --ca-hash sha256:HEX (from `wharf agent token create --name {}`)",
            config.state_dir.display(),
            config.name
        )));
    };
    let mut attempt = 0u32;
    loop {
        let input = EnrollInput {
            core_addr: &config.core_addr,
            server_name: config.server_name.as_deref(),
            token,
            ca_hash,
            name: &config.name,
            version: &config.agent_version,
            capabilities: session::capabilities(executor),
        };
        match identity::enroll(input).await {
            Ok(identity) => {
                identity.save(&config.state_dir)?;
                tracing::info!(agent = %identity.name, agent_id = %identity.agent_id, "enrolled");
                config.emit(RuntimeEvent::Enrolled {
                    agent_id: identity.agent_id,
                });
                return Ok(identity);
            }
            Err(error) if error.is_transient() => {
                let delay = config.backoff.delay(attempt);
                tracing::warn!(%error, ?delay, "enrollment failed; retrying");
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
            Err(error @ EnrollError::Invalid(_)) => {
                return Err(RuntimeError::InvalidInput(error.to_string()))
            }
            Err(error @ EnrollError::Refused { .. }) => {
                return Err(RuntimeError::EnrollmentRefused(format!(
                    "{error}; a token works once and expires: create a new one with `wharf \
                     agent token create --name {}` and start the agent with it",
                    config.name
                )))
            }
            Err(error) => return Err(RuntimeError::EnrollmentRefused(error.to_string())),
        }
    }
}

/// Resolves once `flag` is `true` (never, if its sender is gone first). Unlike
/// `wait_for`, it holds no lock guard across an await.
pub(crate) async fn stopping(flag: &mut watch::Receiver<bool>) {
    if flag.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sessions one after the other until shutdown or a fatal rejection, over the configured
/// transport: QUIC; HTTPS polling; or `auto`, QUIC first and polling while QUIC cannot
/// connect (the polling session tries QUIC again now and then and hands over to it).
async fn supervise<E: Executor>(
    shared: &Arc<Shared<E>>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let mut state = SessionState::default();
    let mut attempt = 0u32;
    let mut ready: Option<Session> = None;
    let transport = shared.config.transport;
    let upgrade = || RuntimeError::UpgradeRequired {
        core_addr: shared.config.core_addr.clone(),
        agent_version: shared.config.agent_version.clone(),
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let quic = match (ready.take(), transport) {
            (Some(session), _) => Some(Ok(session)),
            (None, Transport::Poll) => None,
            (None, Transport::Quic | Transport::Auto) => {
                let within = if transport == Transport::Auto {
                    shared.config.quic_fallback_after
                } else {
                    shared.config.connect_timeout
                };
                tokio::select! {
                    r = session::establish(shared.as_ref(), within) => Some(r),
                    _ = stopping(stop) => return Ok(()),
                }
            }
        };
        let fallback = match quic {
            Some(Ok(session)) => {
                attempt = 0;
                let delay = match session::run_session(shared, &mut state, session, stop).await {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::Cycle => {
                        shared.config.emit(RuntimeEvent::Disconnected {
                            reason: "reconnecting to deliver pending results".into(),
                        });
                        continue;
                    }
                    SessionEnd::Lost(reason) => {
                        tracing::warn!(%reason, "session with core ended");
                        shared.config.emit(RuntimeEvent::Disconnected { reason });
                        shared.config.backoff.delay(0)
                    }
                };
                if !sleep_or_stop(delay, stop).await {
                    return Ok(());
                }
                continue;
            }
            Some(Err(ConnectError::Rejected(reason))) if session::is_upgrade_required(&reason) => {
                tracing::error!(%reason, "core rejected this agent's version");
                return Err(upgrade());
            }
            // Core answered over QUIC (a `Reject`), or QUIC is all there is: retry QUIC.
            Some(Err(error))
                if transport == Transport::Quic || matches!(error, ConnectError::Rejected(_)) =>
            {
                let delay = shared.config.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                tracing::warn!(%error, ?delay, "cannot connect to core; retrying");
                shared.config.emit(RuntimeEvent::ConnectFailed {
                    error: error.to_string(),
                });
                if !sleep_or_stop(delay, stop).await {
                    return Ok(());
                }
                continue;
            }
            Some(Err(error)) => Some(error),
            None => None,
        };
        if let Some(error) = fallback {
            tracing::warn!(%error, "QUIC cannot connect: falling back to HTTPS polling");
            shared.config.emit(RuntimeEvent::ConnectFailed {
                error: error.to_string(),
            });
        }
        let retry = (transport == Transport::Auto).then_some(shared.config.quic_retry_every);
        let delay = match poll::run_poll_session(shared, &mut state, stop, retry).await {
            PollEnd::Shutdown => return Ok(()),
            PollEnd::Quic(session) => {
                shared.config.emit(RuntimeEvent::Disconnected {
                    reason: "QUIC connects again: leaving HTTPS polling".into(),
                });
                ready = Some(*session);
                continue;
            }
            PollEnd::UpgradeRequired(reason) => {
                tracing::error!(%reason, "core rejected this agent's version");
                return Err(upgrade());
            }
            PollEnd::Lost { reason, connected } => {
                if connected {
                    attempt = 0;
                    tracing::warn!(%reason, "polling core ended");
                    shared.config.emit(RuntimeEvent::Disconnected { reason });
                } else {
                    tracing::warn!(%reason, "cannot poll core");
                    shared
                        .config
                        .emit(RuntimeEvent::ConnectFailed { error: reason });
                }
                let delay = shared.config.backoff.delay(attempt);
                attempt = attempt.saturating_add(1);
                delay
            }
        };
        if !sleep_or_stop(delay, stop).await {
            return Ok(());
        }
    }
}

/// Sleeps `delay`; `false` if shutdown came first.
async fn sleep_or_stop(delay: std::time::Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stopping(stop) => false,
    }
}

/// Checks the certificate periodically and renews it when due.
async fn renew_loop<E: Executor>(shared: Arc<Shared<E>>, mut stop: watch::Receiver<bool>) {
    let policy = shared.config.renewal;
    loop {
        let current = shared.identity();
        let wait = if current.renewal_due(SystemTime::now(), policy.renew_below) {
            let config = &shared.config;
            match identity::renew(&current, &config.core_addr, config.server_name.as_deref()).await
            {
                Ok(renewed) => match renewed.save(&config.state_dir) {
                    Ok(()) => {
                        tracing::info!(not_after = %renewed.not_after, "client certificate renewed");
                        let not_after = renewed.not_after;
                        shared.set_identity(renewed);
                        config.emit(RuntimeEvent::CertificateRenewed { not_after });
                        policy.check_every
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot save the renewed certificate");
                        policy.retry_after
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, retry_after = ?policy.retry_after, "certificate renewal failed");
                    policy.retry_after
                }
            }
        } else {
            policy.check_every
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopping(&mut stop) => return,
        }
    }
}
