//! `GET /v1/history?agent=A&target=T` (or `&project=P`): every deploy and rollback of a
//! target, newest first, with its rollback column (see [`crate::history`]).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::Auth;
use super::ApiState;
use crate::directory::Action;
use crate::history::{self, HistoryEntry};
use crate::queue::{AgentId, ListFilter};
use crate::registry_probe::Prober;

/// Query of `GET /v1/history`.
#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    agent: Option<String>,
    target: Option<String>,
    project: Option<String>,
}

/// `GET /v1/history`.
pub(super) async fn history(
    State(state): State<ApiState>,
    auth: Auth,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    auth.require(Action::ReadTasks)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let agent = query
        .agent
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ApiError::bad_request("agent is required").with_field("agent"))?;
    let (target, compose) = match (
        query.target.filter(|t| !t.is_empty()),
        query.project.filter(|p| !p.is_empty()),
    ) {
        (Some(t), None) => (t, false),
        (None, Some(p)) => (p, true),
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of target (a container) and project (a Compose project)",
            )
            .with_field("target"))
        }
    };
    if state.app.directory.agent_by_name(&agent).is_none() {
        return Err(ApiError::not_found(format!(
            "no agent is named {agent:?}; `wharf agent list` shows the agents"
        )));
    }
    let engine = &state.app.engine;
    let tasks = engine
        .list(&ListFilter {
            state: None,
            agent: Some(AgentId::new(&agent)),
            target: Some(target.clone()),
            after_seq: None,
            limit: None,
        })
        .await;
    let kept = engine.kept_record(&agent, &target).await;
    let directory = state.app.directory.clone();
    let mut prober = Prober::new(Arc::new(move |registry: &str| {
        match directory.credentials_for_registry(registry) {
            Ok(credentials) => credentials,
            Err(error) => {
                // Asked without them; the answer is then `unknown` at worst.
                tracing::warn!(registry, %error, "cannot read the stored registry credentials");
                None
            }
        }
    }))
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let store = state.app.store.clone();
    // The tasks were read under the engine's lock: their evidence is durable.
    let evidence = |id| crate::evidence::read(&*store, id).ok().flatten();
    let entries =
        history::build(&agent, &target, compose, tasks, evidence, kept, &mut prober).await;
    Ok(Json(entries))
}
