//! [`ApiError`]: every error answer of the API, `{"error": {"code", "message", "field"}}`,
//! and the mapping of the engine's and the directory's errors onto it (docs/api.md,
//! "Errors").

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::directory::{DirectoryError, ErrorKind};
use crate::engine::{EngineError, InvalidSubmit};
use crate::queue::QueueError;

/// An error answer: a status, a stable machine-readable `code`, a message an operator can
/// act on and, when one field of the request is at fault, its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// The code (`bad_request`, `unauthorized`, `forbidden`, `not_found`, `conflict`,
    /// `gone`, `payload_too_large`, `invalid`, `unavailable`, `internal`).
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
    /// The path of the field at fault (`payload.deploy.image`), if one is.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        let field = field.into();
        self.field = (!field.is_empty()).then_some(field);
        self
    }

    /// 400 `bad_request`: the body is not JSON, or a field has the wrong type.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401 `unauthorized`: no or unknown credential.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403 `forbidden`: the credential may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            message,
        )
    }

    /// 409 `conflict`.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 410 `gone`: an enrollment token expired or already used.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, "gone", message)
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the request body is over the {} MiB limit",
                limit / (1024 * 1024)
            ),
        )
    }

    /// 422 `invalid`: well-formed but refused; nothing was changed.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }

    /// 503 `unavailable`: core cannot take changes now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500 `internal`: a fault of core itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
            },
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wharf\""),
            );
        }
        response
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Invalid(InvalidSubmit::Field { field, reason }) => {
                ApiError::invalid(format!("{field}: {reason}")).with_field(field)
            }
            EngineError::UnknownAgent(_) => ApiError::not_found(message).with_field("agent"),
            EngineError::Conflict { .. } => {
                ApiError::conflict(message).with_field("idempotency_key")
            }
            EngineError::Queue(q) => match q {
                QueueError::UnknownTask(_) => ApiError::not_found(message),
                QueueError::AlreadyFinished { .. }
                | QueueError::WrongAgent { .. }
                | QueueError::StaleAttempt { .. }
                | QueueError::NotDispatched(_) => ApiError::conflict(message),
                QueueError::DuplicateTaskId(_) | QueueError::InvalidRecord { .. } => {
                    ApiError::internal(message)
                }
            },
            EngineError::Store(_) | EngineError::Stopped => ApiError::unavailable(message),
        }
    }
}

impl From<DirectoryError> for ApiError {
    fn from(e: DirectoryError) -> Self {
        let field = match &e {
            DirectoryError::InvalidName { .. } => Some("name"),
            DirectoryError::InvalidInput { field, .. } => Some(*field),
            DirectoryError::Pki(_) => Some("csr_pem"),
            _ => None,
        };
        let message = e.to_string();
        let error = match e.kind() {
            // The contract's 400 is for bodies that do not parse; a parsed request that
            // is refused (a bad name, an invalid CSR) is 422.
            ErrorKind::InvalidInput => ApiError::invalid(message),
            ErrorKind::Unauthenticated => ApiError::unauthorized(message),
            ErrorKind::Forbidden => ApiError::forbidden(message),
            ErrorKind::NotFound => ApiError::not_found(message),
            ErrorKind::Conflict => ApiError::conflict(message),
            ErrorKind::Gone => ApiError::gone(message),
            ErrorKind::Unavailable => ApiError::unavailable(message),
            ErrorKind::Internal => ApiError::internal(message),
        };
        match (error.status, field) {
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)) => error.with_field(field),
            _ => error,
        }
    }
}
