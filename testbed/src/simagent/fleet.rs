//! `wharf-testbed sim-agent`: K simulated agents from the command line.

use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{
    Behaviour, ConnectOptions, CoreApi, Enrolled, Reconnect, SimAgent, SimAgentHandle, SimStats,
};

/// At most this many enrollments and connections are in flight at once.
const PARALLEL_SETUP: usize = 32;

/// What `wharf-testbed sim-agent` was asked for.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Core's `HOST:PORT`.
    pub core: String,
    /// Where identities are kept: the agent's own files with one agent, a `NAME/`
    /// directory per agent with several.
    pub state_dir: PathBuf,
    /// A one-time enrollment token (one agent only).
    pub token: Option<String>,
    /// The CA fingerprint to pin, `sha256:<hex>` (with `token`).
    pub ca_hash: Option<String>,
    /// The agent name, or the prefix of `NAME-0` .. `NAME-<K-1>`.
    pub name: String,
    /// How many agents.
    pub count: usize,
    /// Simulated task duration.
    pub delay: Duration,
    /// Probability of a (retriable) failure per task.
    pub fail_rate: f64,
    /// An admin API token to create enrollment tokens with.
    pub admin_token: Option<String>,
    /// Core's CA certificate (PEM), to call the API with `admin_token`.
    pub ca: Option<PathBuf>,
}

/// A problem with the options: nothing was done (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FleetInputError(pub String);

/// Counters of every agent added up, at the end of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetSummary {
    /// Agents that connected.
    pub agents: usize,
    /// Sum of their counters.
    pub totals: SimStats,
}

impl FleetOptions {
    /// The agents' names.
    pub fn names(&self) -> Vec<String> {
        if self.count == 1 {
            vec![self.name.clone()]
        } else {
            (0..self.count)
                .map(|i| format!("{}-{i}", self.name))
                .collect()
        }
    }

    /// The state dir of agent `name`.
    pub fn dir_of(&self, name: &str) -> PathBuf {
        if self.count == 1 {
            self.state_dir.clone()
        } else {
            self.state_dir.join(name)
        }
    }

    fn check(&self) -> Result<()> {
        let input = |m: String| Err(FleetInputError(m).into());
        if self.count == 0 {
            return input("--count must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return input(format!(
                "--fail-rate {} is not between 0.0 and 1.0",
                self.fail_rate
            ));
        }
        for name in self.names() {
            if let Err(reason) = wharf_core::directory::check_name(&name) {
                return input(format!("agent name {name:?} is not valid: {reason}"));
            }
        }
        if self.count > 1 && self.token.is_some() {
            return input(
                "--token is one-time and names one agent; with --count > 1 give \
                 --admin-token (or WHARF_TOKEN) and --ca instead"
                    .into(),
            );
        }
        if self.token.is_some() != self.ca_hash.is_some() && self.admin_token.is_none() {
            return input("--token and --ca-hash go together".into());
        }
        if self.admin_token.is_some() != self.ca.is_some() {
            return input(
                "--admin-token (WHARF_TOKEN) and --ca go together: the API is called over TLS \
                 trusting that CA"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Enrolls (or loads) and connects every agent, prints `NAME connected as ID` per agent
/// on `out`, then runs until `until` completes and stops them all.
///
/// # Errors
///
/// [`FleetInputError`] for wrong options; otherwise the first agent that could not be
/// enrolled or connected (the others are stopped).
pub async fn run_fleet(
    options: FleetOptions,
    out: &mut (dyn Write + Send),
    until: impl Future<Output = ()>,
) -> Result<FleetSummary> {
    options.check()?;
    let api = match (&options.admin_token, &options.ca) {
        (Some(token), Some(ca)) => {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
            Some(CoreApi::new(&options.core, token, &pem)?)
        }
        _ => None,
    };
    let endpoint = SimAgent::endpoint_for(&options.core).await?;
    let behaviour = Behaviour::succeed()
        .with_delay(options.delay)
        .with_fail_rate(options.fail_rate);
    let connect = ConnectOptions::default()
        .with_endpoint(endpoint)
        .with_reconnect(Reconnect::default());
    let options = Arc::new(options);
    let gate = Arc::new(Semaphore::new(PARALLEL_SETUP));
    let mut set = JoinSet::new();
    for name in options.names() {
        let (options, api, behaviour, connect, gate) = (
            options.clone(),
            api.clone(),
            behaviour.clone(),
            connect.clone(),
            gate.clone(),
        );
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let enrolled = identity(&options, api.as_ref(), &name).await?;
            SimAgent::connect_with(&enrolled, &options.core, behaviour, connect)
                .await
                .with_context(|| format!("agent {name}"))
        });
    }
    let mut agents: Vec<SimAgentHandle> = Vec::with_capacity(options.count);
    while let Some(joined) = set.join_next().await {
        let handle = joined.context("an agent's setup panicked")??;
        writeln!(out, "{} connected as {}", handle.name(), handle.agent_id())?;
        out.flush()?;
        agents.push(handle);
    }
    until.await;
    let mut summary = FleetSummary {
        agents: agents.len(),
        totals: SimStats::default(),
    };
    let mut stopping = JoinSet::new();
    for agent in agents {
        stopping.spawn(async move {
            agent.shutdown().await;
            agent.stats()
        });
    }
    while let Some(stats) = stopping.join_next().await {
        add(
            &mut summary.totals,
            &stats.context("an agent's shutdown panicked")?,
        );
    }
    Ok(summary)
}

fn add(total: &mut SimStats, s: &SimStats) {
    total.sessions += s.sessions;
    total.connect_failures += s.connect_failures;
    total.rejects += s.rejects;
    total.tasks_received += s.tasks_received;
    total.assigns_dropped += s.assigns_dropped;
    total.executions += s.executions;
    total.journal_answers += s.journal_answers;
    total.results_sent += s.results_sent;
    total.results_resent_in_hello += s.results_resent_in_hello;
    total.acks += s.acks;
    total.progress_sent += s.progress_sent;
    total.cancels_received += s.cancels_received;
    total.cancels_honoured += s.cancels_honoured;
    total.heartbeats_sent += s.heartbeats_sent;
    total.succeeded += s.succeeded;
    total.failed += s.failed;
}

/// The identity saved in the agent's state dir, or a new enrollment (saved there).
async fn identity(options: &FleetOptions, api: Option<&CoreApi>, name: &str) -> Result<Enrolled> {
    let dir = options.dir_of(name);
    if let Some(enrolled) = Enrolled::load(&dir)? {
        if enrolled.name != name {
            bail!(
                "{} holds the identity of agent {:?}, not {name:?}",
                dir.display(),
                enrolled.name
            );
        }
        return Ok(enrolled);
    }
    let (token, ca_hash) = match (&options.token, &options.ca_hash, api) {
        (Some(token), Some(hash), _) => (token.clone(), hash.clone()),
        (_, pinned, Some(api)) => {
            let grant = api
                .create_enroll_token(name, None)
                .await
                .with_context(|| format!("cannot create an enrollment token for {name}"))?;
            (grant.token, pinned.clone().unwrap_or(grant.ca_hash))
        }
        _ => {
            return Err(FleetInputError(format!(
                "{} holds no identity: give --token and --ca-hash, or --admin-token and --ca",
                dir.display()
            ))
            .into())
        }
    };
    let enrolled = SimAgent::enroll(&options.core, &token, &ca_hash, name)
        .await
        .with_context(|| format!("agent {name}"))?;
    enrolled.save(&dir)?;
    Ok(enrolled)
}
