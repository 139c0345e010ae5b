//! `POST /agent/v1/poll`: the HTTP side of the polling transport (docs/api.md, "Agent
//! endpoints"; the sessions are [`crate::transport::poll`]).
//!
//! In order, each step answering before the next one runs (so a refused request changes
//! nothing):
//!
//! 1. the client certificate (already checked against the CA and the revocation list by
//!    the TLS handshake) must name an enrolled agent: 401 without one, 403 for a revoked
//!    agent (a keep-alive connection opened before the revocation);
//! 2. the caps ([`PollHub::admit`]): 429 with `Retry-After`, before the body is read;
//! 3. the body: at most [`MAX_BODY_BYTES`](super::MAX_BODY_BYTES) (413), one postcard `PollRequest` without
//!    trailing bytes (400);
//! 4. the headers of [`wharf_protocol::poll_header`] (400 when missing or malformed);
//! 5. [`PollHub::poll`]: 426 `upgrade required` for version skew, 422 invalid
//!    capabilities, 503 when the engine stopped; else 200 with a postcard `PollResponse`.

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use uuid::Uuid;
use wharf_protocol::{from_body, poll_header, to_body, PollRequest, POLL_CONTENT_TYPE};

use super::error::ApiError;
use super::extract::{PeerIdentity, RawBody};
use super::ApiState;
use crate::transport::poll::{PollError, PollHello, PollHub, PollRefusal};

fn error(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        code,
        message: message.into(),
        field: None,
    }
}

/// `POST /agent/v1/poll` (see the [module docs](self)).
pub(super) async fn poll(
    State(state): State<ApiState>,
    Extension(hub): Extension<Arc<PollHub>>,
    peer: PeerIdentity,
    request: Request,
) -> Response {
    match serve(&state, &hub, peer, request).await {
        Ok(response) => response,
        Err(response) => response,
    }
}

async fn serve(
    state: &ApiState,
    hub: &Arc<PollHub>,
    peer: PeerIdentity,
    request: Request,
) -> Result<Response, Response> {
    let Some(agent_id) = peer.agent_id else {
        return Err(ApiError::unauthorized(
            "polling needs the agent's client certificate on the TLS connection (the one \
             enrollment issued); this connection presented none",
        )
        .into_response());
    };
    let agent_id = Uuid::parse_str(&agent_id).map_err(|_| {
        ApiError::unauthorized("the client certificate names no agent id").into_response()
    })?;
    let Some(agent) = state.app.directory.agent_by_id(agent_id) else {
        return Err(ApiError::unauthorized(format!(
            "agent {agent_id} is not enrolled with this core: enroll it with a token from \
             `wharf agent token create`"
        ))
        .into_response());
    };
    if agent.is_revoked() {
        return Err(close(
            ApiError::forbidden(format!(
                "agent {} ({agent_id}) was revoked: enroll it again with a new token",
                agent.name
            ))
            .into_response(),
        ));
    }
    let _admission = hub.admit(agent_id).map_err(refused)?;
    let hello = hello(request.headers()).map_err(IntoResponse::into_response)?;
    let body = RawBody::from_request(request, state)
        .await
        .map_err(IntoResponse::into_response)?;
    let poll: PollRequest = from_body(body.bytes()).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a postcard PollRequest ({e}); see docs/protocol.md §9"
        ))
        .into_response()
    })?;
    match hub.poll(&agent, &hello, poll, state.shutdown.clone()).await {
        Ok(answer) => {
            let bytes = to_body(&answer).map_err(|e| {
                ApiError::internal(format!("cannot encode the answer: {e}")).into_response()
            })?;
            Ok((
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(POLL_CONTENT_TYPE),
                )],
                bytes,
            )
                .into_response())
        }
        Err(PollError::Revoked(message)) => {
            Err(close(ApiError::forbidden(message).into_response()))
        }
        Err(PollError::Rejected(reason)) => {
            Err(error(StatusCode::UPGRADE_REQUIRED, "upgrade_required", reason).into_response())
        }
        Err(PollError::Invalid(message)) => Err(ApiError::invalid(message).into_response()),
        Err(PollError::Unavailable(message)) => Err(ApiError::unavailable(message).into_response()),
    }
}

/// The 429 of a refused request, with `Retry-After` in whole seconds (at least 1).
fn refused(refusal: PollRefusal) -> Response {
    let seconds = refusal.retry_after().as_secs_f64().ceil().max(1.0) as u64;
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_requests",
        refusal.to_string(),
    )
    .into_response();
    if let Ok(value) = HeaderValue::from_str(&seconds.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// Asks hyper to close the connection after this answer (a revoked agent's keep-alive
/// connection must not carry on).
fn close(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Reads the agent's version, protocol version and capabilities from the headers.
fn hello(headers: &HeaderMap) -> Result<PollHello, ApiError> {
    let text = |name: &'static str| -> Result<&str, ApiError> {
        let value = headers.get(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "header {name} is missing: a poll carries the agent's version, protocol \
                 version and capabilities (docs/protocol.md §9)"
            ))
            .with_field(name)
        })?;
        value.to_str().map_err(|_| {
            ApiError::bad_request(format!("header {name} is not visible ASCII")).with_field(name)
        })
    };
    let agent_version = text(poll_header::AGENT_VERSION)?.trim().to_string();
    let protocol_version = text(poll_header::PROTOCOL_VERSION)?
        .trim()
        .parse::<u16>()
        .map_err(|_| {
            ApiError::bad_request(format!(
                "header {} must be a protocol version number (1)",
                poll_header::PROTOCOL_VERSION
            ))
            .with_field(poll_header::PROTOCOL_VERSION)
        })?;
    let capabilities = text(poll_header::CAPABILITIES)?
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    Ok(PollHello {
        agent_version,
        protocol_version,
        capabilities,
    })
}
