//! `GET /v1/audit`: the fleet sticker audit (see [`crate::fleet_audit`]).

use std::time::Duration;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use wharf_protocol::DurationMs;

use super::agents::view;
use super::error::ApiError;
use super::extract::Auth;
use super::ApiState;
use crate::directory::Action;
use crate::fleet_audit::{self, AgentStatus, AuditRow, DEFAULT_AUDIT_WAIT, MAX_AUDIT_WAIT};

/// Query of `GET /v1/audit`.
#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    agent: Option<String>,
    wait: Option<String>,
}

/// `GET /v1/audit?agent=A&wait=30s`: every target core has a record of (of agent `A`),
/// judged `ok`, `drift`, `tampered` or `unreachable`, by agent and target.
pub(super) async fn audit(
    State(state): State<ApiState>,
    auth: Auth,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRow>>, ApiError> {
    let principal = auth.require(Action::RunAudit)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let wait = match query.wait.as_deref().filter(|s| !s.is_empty()) {
        None => DEFAULT_AUDIT_WAIT,
        Some(s) => {
            let d = s
                .parse::<DurationMs>()
                .map_err(|e| ApiError::bad_request(format!("wait: {e}")).with_field("wait"))?;
            let d = Duration::from(d);
            if d.is_zero() || d > MAX_AUDIT_WAIT {
                return Err(ApiError::bad_request(format!(
                    "wait: `{s}` is out of range: give 1s to {}s",
                    MAX_AUDIT_WAIT.as_secs()
                ))
                .with_field("wait"));
            }
            d
        }
    };
    let agent = query.agent.filter(|a| !a.is_empty());
    let mut agents = Vec::new();
    for record in state.app.directory.list_agents() {
        if agent.as_ref().is_some_and(|a| *a != record.name) {
            continue;
        }
        let v = view(&state, record).await;
        agents.push(AgentStatus {
            name: v.name,
            state: v.state,
        });
    }
    if let Some(a) = &agent {
        if agents.is_empty() {
            return Err(ApiError::not_found(format!(
                "no agent named `{a}`: `wharf agent list` shows the enrolled agents"
            ))
            .with_field("agent"));
        }
    }
    let targets = state.app.engine.recorded_targets(agent.as_deref()).await;
    let rows = fleet_audit::run(
        &state.app.engine,
        &state.app.sticker_keyring,
        &agents,
        targets,
        &principal.actor(),
        wait,
    )
    .await?;
    Ok(Json(rows))
}
