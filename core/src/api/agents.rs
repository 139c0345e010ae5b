//! `/v1/agents` (list, enrollment tokens, revoke) and the agent endpoints
//! `/agent/v1/enroll` and `/agent/v1/renew`.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_protocol::Timestamp;

use super::error::ApiError;
use super::extract::{ApiJson, Auth, PeerIdentity, RawBody};
use super::ApiState;
use crate::directory::{
    Action, AgentRecord, EnrollRequest, EnrollResponse, DEFAULT_ENROLL_TOKEN_TTL,
};

/// An agent as `GET /v1/agents` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// The agent's name.
    pub name: String,
    /// Its id (in its certificate).
    pub id: Uuid,
    /// `online` (a live session), `offline` or `revoked`.
    pub state: String,
    /// The transport of the live session, else of the last one (`quic`, `poll`).
    pub transport: Option<String>,
    /// Its version, as last reported.
    pub version: String,
    /// Its capabilities, as last reported.
    pub capabilities: Vec<String>,
    /// When it was last seen.
    pub last_seen: Option<Timestamp>,
    /// When it enrolled.
    pub enrolled_at: Timestamp,
    /// End of validity of its current certificate.
    pub not_after: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

pub(super) async fn view(state: &ApiState, agent: AgentRecord) -> AgentView {
    let live = if agent.is_revoked() {
        None
    } else {
        state.app.engine.session_transport(&agent.name).await
    };
    let status = match (agent.is_revoked(), live) {
        (true, _) => "revoked",
        (false, Some(_)) => "online",
        (false, None) => "offline",
    };
    AgentView {
        state: status.to_string(),
        transport: live.map(str::to_string).or(agent.transport),
        name: agent.name,
        id: agent.id,
        version: agent.version,
        capabilities: agent.capabilities,
        last_seen: agent.last_seen,
        enrolled_at: agent.enrolled_at,
        not_after: agent.not_after,
        revoked_at: agent.revoked_at,
    }
}

/// `GET /v1/agents`: every enrolled agent, revoked ones included, by name.
pub(super) async fn list(
    State(state): State<ApiState>,
    auth: Auth,
) -> Result<Json<Vec<AgentView>>, ApiError> {
    auth.require(Action::ReadAgents)?;
    let mut out = Vec::new();
    for agent in state.app.directory.list_agents() {
        out.push(view(&state, agent).await);
    }
    Ok(Json(out))
}

/// Body of `POST /v1/agents/tokens`.
#[derive(Debug, Deserialize)]
pub(super) struct TokenRequest {
    name: String,
    /// Lifetime in milliseconds.
    #[serde(default)]
    ttl: Option<u64>,
}

/// Answer of `POST /v1/agents/tokens`.
#[derive(Debug, Serialize)]
pub(super) struct TokenResponse {
    name: String,
    token: String,
    expires_at: Timestamp,
    ca_hash: String,
}

/// `POST /v1/agents/tokens`: a one-time enrollment token.
pub(super) async fn create_token(
    State(state): State<ApiState>,
    auth: Auth,
    body: RawBody,
) -> Result<Json<TokenResponse>, ApiError> {
    let principal = auth.require(Action::ManageAgents)?;
    let request: TokenRequest = body.parse()?;
    let ttl = request
        .ttl
        .map_or(DEFAULT_ENROLL_TOKEN_TTL, Duration::from_millis);
    let (token, expires_at) = state
        .app
        .directory
        .create_enroll_token(&request.name, ttl, &principal.actor())
        .await?;
    Ok(Json(TokenResponse {
        name: request.name,
        token: token.expose().to_string(),
        expires_at,
        ca_hash: state.app.ca_fingerprint().to_string(),
    }))
}

/// `POST /v1/agents/{name}/revoke`: durable, then every live session of the agent is
/// closed and its certificates are refused at the next handshake.
pub(super) async fn revoke(
    State(state): State<ApiState>,
    auth: Auth,
    Path(name): Path<String>,
) -> Result<Json<AgentView>, ApiError> {
    let principal = auth.require(Action::ManageAgents)?;
    let agent = state
        .app
        .directory
        .revoke_agent(&name, &principal.actor())
        .await?;
    // Sessions are keyed by name: leave them alone when the name now belongs to a newer,
    // live agent (an old, already revoked record was revoked again by its id).
    let name_is_live = state
        .app
        .directory
        .agent_by_name(&agent.name)
        .is_some_and(|current| !current.is_revoked());
    if !name_is_live {
        state.app.engine.close_agent(&agent.name, "revoked");
    }
    Ok(Json(view(&state, agent).await))
}

/// `POST /agent/v1/enroll`: no client certificate needed; the one-time token is the
/// credential.
pub(super) async fn enroll(
    State(state): State<ApiState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let name = request.name.clone();
    match state.app.directory.enroll(request).await {
        Ok(response) => {
            tracing::info!(agent = %name, agent_id = %response.agent_id, "agent enrolled");
            Ok(Json(response))
        }
        Err(error) => {
            tracing::info!(agent = %name, %error, "enrollment refused");
            Err(error.into())
        }
    }
}

/// Body of `POST /agent/v1/renew`.
#[derive(Debug, Deserialize)]
pub(super) struct RenewRequest {
    csr_pem: String,
}

/// `POST /agent/v1/renew`: a new certificate for the agent whose client certificate the
/// connection presented.
pub(super) async fn renew(
    State(state): State<ApiState>,
    peer: PeerIdentity,
    ApiJson(request): ApiJson<RenewRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    let Some(agent_id) = peer.agent_id else {
        return Err(ApiError::unauthorized(
            "renewal needs the agent's current client certificate on the TLS connection",
        ));
    };
    let agent_id = Uuid::parse_str(&agent_id)
        .map_err(|_| ApiError::unauthorized("the client certificate names no agent id"))?;
    let response = state
        .app
        .directory
        .renew(agent_id, &request.csr_pem)
        .await?;
    tracing::info!(%agent_id, not_after = %response.not_after, "agent certificate renewed");
    Ok(Json(response))
}
