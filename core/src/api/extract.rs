//! Extractors: the bearer token's [`Principal`], the request body (limited to
//! [`MAX_BODY_BYTES`], parsed with `serde_path_to_error` so a 400 names the field), and
//! the TLS peer the listener hands to every request.

use std::net::SocketAddr;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::error::ApiError;
use super::ApiState;
use crate::directory::{Action, Principal};

/// Largest request body accepted (docs/api.md: 8 MiB; a bigger one gets 413).
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How much of an oversized body is still read (and thrown away) before the 413 is sent,
/// so that the client, still sending, reads the answer instead of a connection reset.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
/// How long an oversized body is drained at most.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The TLS peer of the connection a request came on: inserted into every request's
/// extensions by the HTTPS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The peer's address.
    pub addr: SocketAddr,
    /// The agent id of the client certificate the peer presented (already verified
    /// against the CA and the revocation list by the handshake), if it presented one.
    pub agent_id: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<PeerIdentity>()
            .cloned()
            .ok_or_else(|| ApiError::internal("the connection's TLS identity is missing"))
    }
}

/// The authenticated caller of an operator API route (`Authorization: Bearer <token>`).
#[derive(Debug, Clone)]
pub struct Auth(pub Principal);

impl Auth {
    /// The principal, if its role allows `action`; 403 otherwise.
    ///
    /// # Errors
    ///
    /// [`ApiError::forbidden`] naming the role and what it may not do.
    pub fn require(&self, action: Action) -> Result<&Principal, ApiError> {
        if self.0.allows(action) {
            Ok(&self.0)
        } else {
            Err(ApiError::forbidden(format!(
                "API token {:?} has the role {}, which may not {}; use a token with a role that may (`wharf token create --role ...`)",
                self.0.name,
                self.0.role,
                describe(action)
            )))
        }
    }
}

fn describe(action: Action) -> &'static str {
    match action {
        Action::SubmitTask => "submit tasks",
        Action::CancelTask => "cancel tasks",
        Action::ReadTasks => "read tasks",
        Action::ReadAgents => "list agents",
        Action::ManageAgents => "create enrollment tokens or revoke agents",
        Action::ReadTokens => "list API tokens",
        Action::ManageTokens => "create or revoke API tokens",
        Action::ReadRegistries => "list registries",
        Action::ManageRegistries => "store registry credentials",
        Action::ReadAuditLog => "read the audit log",
        Action::RunAudit => "run the fleet audit",
    }
}

impl FromRequestParts<ApiState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::unauthorized(
                "no bearer token: send `Authorization: Bearer <token>` (the CLI reads WHARF_TOKEN)",
            ));
        };
        let value = value.to_str().unwrap_or_default();
        let has_scheme = value
            .get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("bearer "));
        if !has_scheme {
            return Err(ApiError::unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ));
        }
        state
            .app
            .directory
            .authenticate(value)
            .map(Auth)
            .ok_or_else(|| {
                ApiError::unauthorized(
                    "the bearer token is unknown or revoked; check WHARF_TOKEN (`wharf token list` shows the live tokens)",
                )
            })
    }
}

/// The raw request body, at most [`MAX_BODY_BYTES`] (413 otherwise); wiped on drop, as
/// it may hold a password. Parse it with [`RawBody::parse`] once the caller's role was
/// checked.
pub struct RawBody(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for RawBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RawBody({} bytes)", self.0.len())
    }
}

impl RawBody {
    /// Parses the body as JSON into `T`.
    ///
    /// # Errors
    ///
    /// 400 `bad_request` naming the field path and what was expected.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        parse_json(&self.0)
    }

    /// The body's bytes (for bodies that are not JSON: the polling transport's postcard).
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // A client waiting for `100 Continue` has not sent the body: refuse without it.
        let expects_continue = req
            .headers()
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let mut stream = req.into_body().into_data_stream();
        if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
            if !expects_continue {
                drain(stream).await;
            }
            return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
        }
        let mut buf = Zeroizing::new(Vec::with_capacity(
            declared.map_or(0, |n| usize::try_from(n).unwrap_or(0)),
        ));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
            if buf.len() + chunk.len() > MAX_BODY_BYTES {
                drain(stream).await;
                return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(RawBody(buf))
    }
}

async fn drain(mut stream: axum::body::BodyDataStream) {
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        let mut read = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// A JSON body parsed into `T` (for routes without a role check before the parse).
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = RawBody::from_request(req, state).await?;
        body.parse().map(ApiJson)
    }
}

/// Parses JSON, naming the path of the field at fault in the error.
///
/// # Errors
///
/// 400 `bad_request`: not JSON (with line and column), or a field of the wrong type or
/// missing (with its path, e.g. `payload.deploy.image`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "the request body is empty; send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => value,
        Err(error) => {
            let path = error.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = error.into_inner();
            return Err(json_error(&path, &inner));
        }
    };
    de.end()
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

fn json_error(path: &str, error: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => {
            ApiError::bad_request(format!("the request body is not valid JSON: {error}"))
        }
        Category::Data => {
            let text = error.to_string();
            // serde reports a missing field at its parent: name the field itself.
            let missing = text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
                .map(|(name, _)| name.to_string());
            let field = match (missing, path.is_empty()) {
                (Some(name), true) => name,
                (Some(name), false) => format!("{path}.{name}"),
                (None, _) => path.to_string(),
            };
            let message = if field.is_empty() {
                text
            } else {
                format!("{field}: {text}")
            };
            ApiError::bad_request(message).with_field(field)
        }
    }
}

/// Parses a task id from the path.
///
/// # Errors
///
/// 404 when it is not a UUID (no task has such an id).
pub fn task_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| {
        ApiError::not_found(format!(
            "no task has the id {:?}: task ids are UUIDs",
            text.chars().take(100).collect::<String>()
        ))
    })
}
