//! [`Metrics`]: what `/metrics` exposes, in the OpenMetrics text format (which Prometheus
//! reads).
//!
//! One `Arc<Metrics>` is shared by the HTTPS listener (which counts requests and the
//! connections it closes) and, through [`Metrics::quic`], the QUIC transport (which
//! counts into its own [`TransportCounters`]). The task and agent gauges are read from
//! the engine and the directory at each scrape.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `wharf_tasks` | gauge | `state` |
//! | `wharf_agents` | gauge | `state` (`online`, `offline`, `revoked`) |
//! | `wharf_http_requests_total` | counter | `method`, `route` (the route template), `status` |
//! | `wharf_https_connections_garbage_total` | counter | |
//! | `wharf_https_connections_refused_total` | counter | `reason` (`certificate`, `timeout`, `tls`, `eof`, `io`) |
//! | `wharf_quic_<counter>_total` | counter | every [`TransportCounters`] field but `sessions_active` |
//! | `wharf_quic_sessions_active` | gauge | |
//! | `wharf_poll_<counter>_total` | counter | every [`PollCounters`] field (once a poll hub is attached) |
//! | `wharf_poll_requests_in_flight`, `wharf_poll_sessions_active` | gauge | |
//!
//! No label carries a secret, a task payload or anything a client chooses freely (routes
//! are templates; methods outside the standard ones are `other`).

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use crate::app::App;
use crate::queue::TaskState;
use crate::transport::poll::{PollCounters, PollHub};
use crate::transport::TransportCounters;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Core's metrics. Create one with [`Metrics::new`], share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    garbage: Counter,
    refused: Family<ReasonLabels, Counter>,
    tasks: Family<StateLabels, Gauge>,
    agents: Family<StateLabels, Gauge>,
    quic: Arc<TransportCounters>,
    poll: Arc<OnceLock<Arc<PollHub>>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Exposes the QUIC transport's counters at scrape time.
#[derive(Debug)]
struct QuicCollector(Arc<TransportCounters>);

impl Collector for QuicCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        for (name, help, value) in self.0.snapshot().pairs() {
            if name == "sessions_active" {
                let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            } else {
                let counter = ConstCounter::new(value);
                let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
                counter.encode(metric)?;
            }
        }
        Ok(())
    }
}

/// Exposes the polling transport's counters at scrape time, once a hub is attached.
#[derive(Debug, Default)]
struct PollCollector(Arc<OnceLock<Arc<PollHub>>>);

impl Collector for PollCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), fmt::Error> {
        let Some(hub) = self.0.get() else {
            return Ok(());
        };
        let counters: &PollCounters = hub.counters();
        for (name, help, value) in counters.pairs() {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        for (name, help, value) in [
            (
                "requests_in_flight",
                "Poll requests held or being answered now",
                hub.in_flight(),
            ),
            (
                "sessions_active",
                "Polling sessions open now",
                hub.sessions(),
            ),
        ] {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Every metric at zero, with a fresh set of QUIC counters.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wharf");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let garbage = Counter::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let tasks = Family::<StateLabels, Gauge>::default();
        let agents = Family::<StateLabels, Gauge>::default();
        let quic = Arc::new(TransportCounters::new());
        registry.register("tasks", "Tasks by state", tasks.clone());
        registry.register(
            "agents",
            "Enrolled agents by state (online, offline, revoked)",
            agents.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            http_requests.clone(),
        );
        registry.register(
            "https_connections_garbage",
            "TCP connections closed because the peer did not speak TLS",
            garbage.clone(),
        );
        registry.register(
            "https_connections_refused",
            "TCP connections whose TLS handshake failed or timed out, by reason",
            refused.clone(),
        );
        registry
            .sub_registry_with_prefix("quic")
            .register_collector(Box::new(QuicCollector(quic.clone())));
        let poll = Arc::new(OnceLock::new());
        registry
            .sub_registry_with_prefix("poll")
            .register_collector(Box::new(PollCollector(poll.clone())));
        for state in TaskState::ALL {
            tasks
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(0);
        }
        for state in AGENT_STATES {
            agents.get_or_create(&StateLabels { state }).set(0);
        }
        Metrics {
            registry,
            http_requests,
            garbage,
            refused,
            tasks,
            agents,
            quic,
            poll,
        }
    }

    /// Exposes `hub`'s counters from now on (the first hub attached stays).
    pub fn attach_poll(&self, hub: Arc<PollHub>) {
        let _ = self.poll.set(hub);
    }

    /// The QUIC transport's counters: pass them to
    /// [`transport::quic::serve`](crate::transport::quic::serve).
    pub fn quic(&self) -> Arc<TransportCounters> {
        self.quic.clone()
    }

    /// Counts an answered HTTP request. `route` is the route template (`/v1/tasks/{id}`).
    pub fn http_request(&self, method: &str, route: &'static str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                method: method_label(method),
                route,
                status,
            })
            .inc();
    }

    /// Counts a TCP connection closed because its peer sent bytes that are not TLS.
    pub fn garbage_connection(&self) {
        self.garbage.inc();
    }

    /// Counts a TCP connection whose TLS handshake failed for `reason` (a short fixed
    /// word: `certificate`, `timeout`, `tls`, `eof`, `io`).
    pub fn refused_connection(&self, reason: &'static str) {
        self.refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// How many garbage TCP connections were counted.
    pub fn garbage_connections(&self) -> u64 {
        self.garbage.get()
    }

    /// How many TCP connections were refused for `reason`.
    pub fn refused_connections(&self, reason: &'static str) -> u64 {
        self.refused
            .get(&ReasonLabels { reason })
            .map_or(0, |c| c.get())
    }

    /// How many requests were answered on `route` with `status` (any method).
    pub fn http_requests(&self, route: &'static str, status: u16) -> u64 {
        METHODS
            .iter()
            .chain(std::iter::once(&"other"))
            .filter_map(|method| {
                self.http_requests
                    .get(&HttpLabels {
                        method,
                        route,
                        status,
                    })
                    .map(|c| c.get())
            })
            .sum()
    }

    /// Refreshes the task and agent gauges from `app` and encodes every metric.
    ///
    /// # Errors
    ///
    /// Only if formatting fails (it does not with a `String`).
    pub async fn encode(&self, app: &App) -> Result<String, fmt::Error> {
        for (state, count) in app.engine.counts().await {
            self.tasks
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        let mut counts = [0i64; 3];
        for agent in app.directory.list_agents() {
            let index = if agent.is_revoked() {
                2
            } else if app.engine.session_transport(&agent.name).await.is_some() {
                0
            } else {
                1
            };
            counts[index] += 1;
        }
        for (state, count) in AGENT_STATES.into_iter().zip(counts) {
            self.agents.get_or_create(&StateLabels { state }).set(count);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

const AGENT_STATES: [&str; 3] = ["online", "offline", "revoked"];

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

fn method_label(method: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| **m == method)
        .copied()
        .unwrap_or("other")
}
