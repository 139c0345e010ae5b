//! Many simulated agents: enrollment with bounded parallelism (identities optionally
//! cached on disk), connection over a few shared QUIC endpoints, counters summed.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use wharf_testbed::simagent::{
    Behaviour, ConnectOptions, CoreApi, Enrolled, Reconnect, SimAgent, SimAgentHandle, SimStats,
};

/// Enrollments (token + CSR signature + enroll call) in flight at once.
pub const PARALLEL_ENROLL: usize = 32;
/// Connections (QUIC + mTLS handshake, `Hello`/`Welcome`) in flight at once.
pub const PARALLEL_CONNECT: usize = 64;

/// What [`enroll_all`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct EnrollReport {
    /// Identities loaded from the cache.
    pub loaded: usize,
    /// Identities enrolled now.
    pub enrolled: usize,
    /// Wall time of the whole step.
    pub elapsed: Duration,
}

/// The identities of `names`: loaded from `cache/NAME/` when present, otherwise enrolled
/// now (an enrollment token through the API, then `POST /agent/v1/enroll`) and saved
/// there when a cache is given.
pub async fn enroll_all(
    api: &CoreApi,
    core_addr: &str,
    names: &[String],
    cache: Option<&Path>,
) -> Result<(Vec<Enrolled>, EnrollReport)> {
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(PARALLEL_ENROLL));
    let mut set = JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let (api, gate, name, addr) = (
            api.clone(),
            gate.clone(),
            name.clone(),
            core_addr.to_string(),
        );
        let dir: Option<PathBuf> = cache.map(|c| c.join(&name));
        set.spawn(async move {
            if let Some(dir) = &dir {
                if let Some(enrolled) = Enrolled::load(dir)? {
                    return Ok::<_, anyhow::Error>((i, enrolled, false));
                }
            }
            let _permit = gate.acquire_owned().await?;
            let grant = api
                .create_enroll_token(&name, None)
                .await
                .with_context(|| format!("enrollment token for {name}"))?;
            let enrolled = SimAgent::enroll(&addr, &grant.token, &grant.ca_hash, &name)
                .await
                .with_context(|| format!("enrollment of {name}"))?;
            if let Some(dir) = &dir {
                enrolled.save(dir)?;
            }
            Ok((i, enrolled, true))
        });
    }
    let mut out: Vec<Option<Enrolled>> = vec![None; names.len()];
    let mut report = EnrollReport::default();
    let mut last_note = Instant::now();
    while let Some(joined) = set.join_next().await {
        let (i, enrolled, fresh) = joined.context("an enrollment panicked")??;
        if fresh {
            report.enrolled += 1;
        } else {
            report.loaded += 1;
        }
        out[i] = Some(enrolled);
        if last_note.elapsed() > Duration::from_secs(10) {
            last_note = Instant::now();
            eprintln!(
                "  ... {} of {} identities ready ({} enrolled now)",
                report.enrolled + report.loaded,
                names.len(),
                report.enrolled
            );
        }
    }
    report.elapsed = started.elapsed();
    Ok((out.into_iter().flatten().collect(), report))
}

/// Connection settings shared by the benchmark's agents: core's own defaults for the
/// idle timeout (15 s) and keep-alive (5 s), reconnection with the default jittered
/// backoff (100 ms doubling to 5 s, ±50 %), and no task channel (nobody reads it).
pub fn connect_options(endpoint: quinn::Endpoint) -> ConnectOptions {
    let mut options = ConnectOptions::default()
        .with_endpoint(endpoint)
        .with_reconnect(Reconnect::default());
    options.task_channel_capacity = 0;
    options
}

/// A pool of client endpoints (UDP sockets), one per `per_socket` agents.
pub struct Endpoints {
    endpoints: Vec<quinn::Endpoint>,
    per_socket: usize,
    addr: std::net::SocketAddr,
}

impl Endpoints {
    /// Endpoints for a core at `core_addr`.
    pub fn new(core_addr: &str, per_socket: usize) -> Result<Endpoints> {
        Ok(Endpoints {
            endpoints: Vec::new(),
            per_socket: per_socket.max(1),
            addr: core_addr.parse()?,
        })
    }

    /// The endpoint of agent number `i`.
    pub fn for_agent(&mut self, i: usize) -> Result<quinn::Endpoint> {
        let k = i / self.per_socket;
        while self.endpoints.len() <= k {
            self.endpoints.push(SimAgent::endpoint(self.addr)?);
        }
        Ok(self.endpoints[k].clone())
    }

    /// How many sockets are open.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }
}

/// Connects `enrolled[range]` (agent numbers are their index), with bounded parallelism
/// and up to three attempts each; returns the handles in order.
pub async fn connect_all(
    enrolled: &[Enrolled],
    first_index: usize,
    core_addr: &str,
    endpoints: &mut Endpoints,
    behaviour: &Behaviour,
) -> Result<Vec<SimAgentHandle>> {
    let gate = Arc::new(Semaphore::new(PARALLEL_CONNECT));
    let mut set = JoinSet::new();
    for (k, identity) in enrolled.iter().enumerate() {
        let options = connect_options(endpoints.for_agent(first_index + k)?);
        let (gate, identity, addr, behaviour) = (
            gate.clone(),
            identity.clone(),
            core_addr.to_string(),
            behaviour.clone(),
        );
        set.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            let mut attempt = 0;
            loop {
                attempt += 1;
                match SimAgent::connect_with(&identity, &addr, behaviour.clone(), options.clone())
                    .await
                {
                    Ok(handle) => return Ok::<_, anyhow::Error>((k, handle)),
                    Err(e) if attempt < 3 => {
                        eprintln!("  {} connect attempt {attempt} failed: {e}", identity.name);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => bail!("{} cannot connect: {e}", identity.name),
                }
            }
        });
    }
    let mut out: Vec<Option<SimAgentHandle>> = (0..enrolled.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        let (k, handle) = joined.context("a connection panicked")??;
        out[k] = Some(handle);
    }
    Ok(out.into_iter().flatten().collect())
}

/// Stops every agent (concurrently).
pub async fn shutdown_all(agents: Vec<SimAgentHandle>) {
    let mut set = JoinSet::new();
    for agent in agents {
        set.spawn(async move { agent.shutdown().await });
    }
    while set.join_next().await.is_some() {}
}

/// The counters of every agent added up (`connected` and `stopped` are left false: see
/// [`connected_count`]).
pub fn totals(agents: &[SimAgentHandle]) -> SimStats {
    let mut t = SimStats::default();
    for a in agents {
        let s = a.stats();
        t.sessions += s.sessions;
        t.connect_failures += s.connect_failures;
        t.tasks_received += s.tasks_received;
        t.executions += s.executions;
        t.journal_answers += s.journal_answers;
        t.results_sent += s.results_sent;
        t.results_resent_in_hello += s.results_resent_in_hello;
        t.acks += s.acks;
        t.succeeded += s.succeeded;
        t.failed += s.failed;
        t.polls_sent += s.polls_sent;
        t.polls_throttled += s.polls_throttled;
    }
    t
}

/// How many agents have a session open now.
pub fn connected_count(agents: &[SimAgentHandle]) -> usize {
    agents.iter().filter(|a| a.is_connected()).count()
}
