//! The operator API and the agent HTTPS endpoints (docs/api.md), served over TLS on the
//! core's TCP port.
//!
//! - [`router`] builds the axum [`Router`] over an [`ApiState`] (the [`App`], the shared
//!   [`Metrics`] and the shutdown signal): bearer authentication to a
//!   [`Principal`](crate::directory::Principal) and a role check per route, JSON bodies of
//!   at most 8 MiB parsed so that a 400 names the field, every error as
//!   `{"error": {"code", "message", "field"}}` ([`ApiError`]).
//! - [`serve_https`] runs the listener: a TLS handshake per TCP connection
//!   ([`tls_config`]: the core's server certificate, client certificates optional and
//!   checked against the CA and the revocation list), the peer's agent id handed to the
//!   handlers, garbage and failed handshakes counted and closed.
//! - [`serve`] does both for `wharf-core serve`.
//!
//! - `POST /agent/v1/poll` (`poll.rs`): the polling transport's HTTP side, over the
//!   [`PollHub`](crate::transport::poll::PollHub) given to [`router_with_poll`].
//!
//! - `GET /v1/audit` (`audit.rs`): the fleet sticker audit of [`crate::fleet_audit`].

mod admin;
mod agents;
mod audit;
mod error;
mod extract;
mod history;
pub mod metrics;
mod poll;
mod server;
mod tasks;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::Router;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use agents::AgentView;
pub use error::ApiError;
pub use extract::{parse_json, Auth, PeerIdentity, RawBody, MAX_BODY_BYTES};
pub use metrics::Metrics;
pub use server::{serve_https, GRACE, HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT};

use crate::app::App;
use crate::pki::{https_server_config, ALPN_HTTP11};
use crate::transport::poll::{PollConfig, PollHub};

/// What every handler gets.
#[derive(Clone, Debug)]
pub struct ApiState {
    /// The core.
    pub app: App,
    /// The metrics `/metrics` exposes and the listener counts into.
    pub metrics: Arc<Metrics>,
    /// Turns `true` when core shuts down (event streams end).
    pub shutdown: watch::Receiver<bool>,
}

/// Resolves once `shutdown` is `true` or its sender is gone.
pub(crate) async fn shutdown_signalled(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The TLS configuration of the HTTPS listener: the core's server certificate (with the
/// CA), ALPN `http/1.1`, client certificates optional and, when presented, checked
/// against the CA and `app.revocations` during the handshake.
///
/// # Errors
///
/// The server identity in the data dir cannot be loaded.
pub fn tls_config(app: &App) -> anyhow::Result<Arc<ServerConfig>> {
    let identity = app
        .pki
        .server_tls_identity()
        .context("cannot load the server certificate")?;
    let config = https_server_config(
        &identity,
        app.pki.ca_cert(),
        Arc::new(app.revocations.clone()),
        &[ALPN_HTTP11],
    )
    .context("cannot build the HTTPS server configuration")?;
    Ok(Arc::new(config))
}

/// Serves the API over TLS on `listener` until `shutdown` turns `true`.
///
/// # Errors
///
/// The TLS configuration cannot be built.
pub async fn serve(
    app: App,
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let tls = tls_config(&app)?;
    let router = router(ApiState {
        app,
        metrics: metrics.clone(),
        shutdown: shutdown.clone(),
    });
    serve_https(listener, tls, router, metrics, shutdown).await?;
    Ok(())
}

/// Every route of docs/api.md, each counted in
/// `wharf_http_requests_total` under its template, with a polling hub of the default
/// [`PollConfig`].
pub fn router(state: ApiState) -> Router {
    let hub = PollHub::new(state.app.clone(), PollConfig::default());
    router_with_poll(state, hub)
}

/// [`router`] with the polling sessions of `hub` (its long poll and caps).
pub fn router_with_poll(state: ApiState, hub: Arc<PollHub>) -> Router {
    state.metrics.attach_poll(hub.clone());
    let routes: [(&'static str, MethodRouter<ApiState>); 21] = [
        ("/healthz", get(healthz)),
        ("/metrics", get(metrics_text)),
        ("/v1/tasks", post(tasks::submit).get(tasks::list)),
        ("/v1/tasks/{id}", get(tasks::get)),
        ("/v1/tasks/{id}/cancel", post(tasks::cancel)),
        ("/v1/tasks/{id}/events", get(tasks::events)),
        ("/v1/tasks/{id}/evidence", get(tasks::evidence)),
        ("/v1/history", get(history::history)),
        ("/v1/agents", get(agents::list)),
        ("/v1/agents/tokens", post(agents::create_token)),
        ("/v1/agents/{name}/revoke", post(agents::revoke)),
        (
            "/v1/registries",
            post(admin::registry_login).get(admin::registries),
        ),
        ("/v1/tokens", post(admin::create_token).get(admin::tokens)),
        ("/v1/tokens/{id}/revoke", post(admin::revoke_token)),
        ("/v1/audit", get(audit::audit)),
        ("/v1/audit-log", get(admin::audit_log)),
        ("/v1/audit-log/verify", get(admin::audit_verify)),
        ("/agent/v1/enroll", post(agents::enroll)),
        ("/agent/v1/renew", post(agents::renew)),
        (wharf_protocol::POLL_PATH, post(poll::poll)),
        ("/", get(root)),
    ];
    let mut router = Router::new();
    for (path, method_router) in routes {
        let metrics = state.metrics.clone();
        let counted = method_router
            .fallback(method_not_allowed)
            .layer(middleware::from_fn(move |request: Request, next: Next| {
                let metrics = metrics.clone();
                async move {
                    let method = request.method().clone();
                    let response = next.run(request).await;
                    metrics.http_request(method.as_str(), path, response.status().as_u16());
                    response
                }
            }));
        router = router.route(path, counted);
    }
    router
        .fallback(not_found)
        .layer(axum::Extension(hub))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn root() -> &'static str {
    "wharf-core: operator API under /v1 (see docs/api.md), /healthz, /metrics\n"
}

async fn metrics_text(State(state): State<ApiState>) -> Response {
    match state.metrics.encode(&state.app).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::internal("cannot encode the metrics").into_response(),
    }
}

async fn not_found(State(state): State<ApiState>, request: Request) -> ApiError {
    state.metrics.http_request(
        request.method().as_str(),
        "unmatched",
        StatusCode::NOT_FOUND.as_u16(),
    );
    let path: String = request.uri().path().chars().take(200).collect();
    ApiError::not_found(format!(
        "no route {} {path} (see docs/api.md)",
        request.method()
    ))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::method_not_allowed(format!(
        "{} is not allowed on {}",
        request.method(),
        request.uri().path()
    ))
}
