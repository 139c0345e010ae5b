//! `/v1/registries`, `/v1/tokens` and `/v1/audit-log`.

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::{Auth, RawBody};
use super::ApiState;
use crate::audit::{AuditEntry, MAX_LIST_LIMIT};
use crate::directory::{Action, ApiTokenInfo, RegistryInfo, Role};
use crate::pki::SecretString;

/// Default page of `GET /v1/audit-log`.
pub const DEFAULT_AUDIT_PAGE: usize = 1000;

/// Body of `POST /v1/registries`.
#[derive(Deserialize)]
pub(super) struct RegistryLogin {
    host: String,
    username: String,
    #[serde(deserialize_with = "secret")]
    password: SecretString,
}

fn secret<'de, D: Deserializer<'de>>(de: D) -> Result<SecretString, D::Error> {
    String::deserialize(de).map(SecretString::new)
}

/// `POST /v1/registries`: stores credentials encrypted; answers without the password.
pub(super) async fn registry_login(
    State(state): State<ApiState>,
    auth: Auth,
    body: RawBody,
) -> Result<Json<RegistryInfo>, ApiError> {
    let principal = auth.require(Action::ManageRegistries)?;
    let login: RegistryLogin = body.parse()?;
    drop(body);
    let info = state
        .app
        .directory
        .registry_login(
            &login.host,
            &login.username,
            login.password,
            &principal.actor(),
        )
        .await?;
    Ok(Json(info))
}

/// `GET /v1/registries`.
pub(super) async fn registries(
    State(state): State<ApiState>,
    auth: Auth,
) -> Result<Json<Vec<RegistryInfo>>, ApiError> {
    auth.require(Action::ReadRegistries)?;
    Ok(Json(state.app.directory.list_registries()))
}

/// Body of `POST /v1/tokens`.
#[derive(Debug, Deserialize)]
pub(super) struct CreateToken {
    role: Role,
    #[serde(default)]
    name: Option<String>,
}

/// Answer of `POST /v1/tokens`: the only time the token is shown.
#[derive(Debug, Serialize)]
pub(super) struct CreatedToken {
    id: String,
    name: String,
    role: Role,
    token: String,
}

/// `POST /v1/tokens`.
pub(super) async fn create_token(
    State(state): State<ApiState>,
    auth: Auth,
    body: RawBody,
) -> Result<Json<CreatedToken>, ApiError> {
    let principal = auth.require(Action::ManageTokens)?;
    let request: CreateToken = body.parse()?;
    let name = request
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| request.role.as_str().to_string());
    let (id, token) = state
        .app
        .directory
        .create_api_token(request.role, &name, &principal.actor())
        .await?;
    Ok(Json(CreatedToken {
        id,
        name,
        role: request.role,
        token: token.expose().to_string(),
    }))
}

/// `GET /v1/tokens`: never the tokens themselves.
pub(super) async fn tokens(
    State(state): State<ApiState>,
    auth: Auth,
) -> Result<Json<Vec<ApiTokenInfo>>, ApiError> {
    auth.require(Action::ReadTokens)?;
    Ok(Json(state.app.directory.list_api_tokens()))
}

/// `POST /v1/tokens/{id}/revoke`.
pub(super) async fn revoke_token(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenInfo>, ApiError> {
    let principal = auth.require(Action::ManageTokens)?;
    let info = state
        .app
        .directory
        .revoke_api_token(&id, &principal.actor())
        .await?;
    Ok(Json(info))
}

/// Query of `GET /v1/audit-log`.
#[derive(Debug, Deserialize)]
pub(super) struct AuditQuery {
    after: Option<String>,
    limit: Option<String>,
}

fn number<T: std::str::FromStr>(name: &str, value: Option<String>) -> Result<Option<T>, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<T>().map_err(|_| {
                ApiError::bad_request(format!("{name}: {v:?} is not a non-negative integer"))
                    .with_field(name)
            })
        })
        .transpose()
}

/// `GET /v1/audit-log?after=SEQ&limit=N`: entries with `seq > after`, in order.
pub(super) async fn audit_log(
    State(state): State<ApiState>,
    auth: Auth,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    auth.require(Action::ReadAuditLog)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let after = number::<u64>("after", query.after)?.unwrap_or(0);
    let limit = number::<usize>("limit", query.limit)?
        .unwrap_or(DEFAULT_AUDIT_PAGE)
        .min(MAX_LIST_LIMIT);
    let audit = state.app.audit.clone();
    let entries = tokio::task::spawn_blocking(move || audit.list(after, limit))
        .await
        .map_err(|e| ApiError::internal(format!("the audit log read failed: {e}")))?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(Json(entries))
}

/// `GET /v1/audit-log/verify`: `{ok: true, entries, head_seq, head_hash}` or
/// `{ok: false, broken_at, reason, detail}`.
pub(super) async fn audit_verify(
    State(state): State<ApiState>,
    auth: Auth,
) -> Result<Json<Value>, ApiError> {
    auth.require(Action::ReadAuditLog)?;
    let audit = state.app.audit.clone();
    let verified = tokio::task::spawn_blocking(move || audit.verify())
        .await
        .map_err(|e| ApiError::internal(format!("the audit log check failed: {e}")))?;
    Ok(Json(match verified {
        Ok(chain) => json!({
            "ok": true,
            "entries": chain.entries,
            "head_seq": chain.head_seq,
            "head_hash": chain.head_hash,
        }),
        Err(broken) => json!({
            "ok": false,
            "broken_at": broken.seq,
            "reason": broken.reason.to_string(),
            "detail": broken.reason,
        }),
    }))
}
