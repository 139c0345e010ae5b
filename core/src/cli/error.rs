//! Exit codes (design §7) and the errors that choose them.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | the task failed (or a `--wait` ended `failed`, `expired` or `cancelled`), the audit log is broken, or an unexpected error |
//! | 2 | invalid input: nothing was submitted (local validation, or a 400/404/409/410/413/422 answer) |
//! | 3 | core unreachable, TLS failure, or authentication refused (401/403); also 502/503/504 |
//!
//! Errors travel as [`anyhow::Error`]; [`exit_code_of`] finds the typed error in the chain.

use std::fmt;

/// Success.
pub const EXIT_OK: u8 = 0;
/// The task failed (or ended expired or cancelled), tamper found, or an unexpected error.
pub const EXIT_FAILED: u8 = 1;
/// Invalid input; nothing was submitted.
pub const EXIT_INVALID: u8 = 2;
/// Core unreachable, TLS failure, or authentication refused.
pub const EXIT_UNREACHABLE: u8 = 3;

/// Input the CLI refuses before sending anything: `what` names the flag or file field,
/// `reason` says what is wrong and how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct InvalidInput {
    /// The flag (`--port`) or field (`deploy.yaml: ports[1]`) at fault.
    pub what: String,
    /// What is wrong and what to write instead.
    pub reason: String,
}

impl InvalidInput {
    /// An invalid value of `what`.
    pub fn new(what: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidInput {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// The connection to core failed: not reachable, TLS refused, or no usable credentials.
/// Always exit code 3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unreachable {
    /// What failed and what to check.
    pub message: String,
}

/// An error answer of the operator API (`{"error": {code, message, field}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// The API's error code (`invalid`, `unauthorized`...), if the body had one.
    pub code: Option<String>,
    /// The API's message, or the start of the body.
    pub message: String,
    /// The field at fault, if the API named one.
    pub field: Option<String>,
}

impl ApiError {
    /// Parses an error body; anything else becomes the message (shortened).
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        #[derive(serde::Deserialize)]
        struct Envelope {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            #[serde(default)]
            code: Option<String>,
            #[serde(default)]
            message: Option<String>,
            #[serde(default)]
            field: Option<String>,
        }
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => ApiError {
                status,
                code: error.code,
                message: error.message.unwrap_or_default(),
                field: error.field,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                let mut message: String = text.chars().take(300).collect();
                if message.len() < text.len() {
                    message.push('…');
                }
                ApiError {
                    status,
                    code: None,
                    message,
                    field: None,
                }
            }
        }
    }

    /// The exit code this answer means.
    pub fn exit_code(&self) -> u8 {
        match self.status {
            400 | 404 | 409 | 410 | 413 | 422 => EXIT_INVALID,
            401 | 403 | 502 | 503 | 504 => EXIT_UNREACHABLE,
            _ => EXIT_FAILED,
        }
    }

    /// What the operator can do about it.
    fn hint(&self) -> &'static str {
        match self.status {
            400 | 422 => "nothing was submitted; correct the value and run the command again",
            401 => {
                "the API token was not accepted: check --token / WHARF_TOKEN (the first admin \
                 token is in admin.token in core's data dir; `wharf token create` makes others)"
            }
            403 => {
                "the token's role may not do this: use a token with a stronger role \
                 (admin > deployer > auditor)"
            }
            404 => "check the name or id (`wharf agent list`, `wharf task list`)",
            409 => {
                "nothing was changed: an idempotency key is reused with another payload \
                 (choose a new key) or the task already finished"
            }
            410 => "the token expired or was used already: create a new one",
            413 => "the request is too large",
            502..=504 => "core cannot serve the request now: check its log and try again",
            _ => "core failed to handle the request: check its log",
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "core answered {}", self.status)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        f.write_str(": ")?;
        if let Some(field) = &self.field {
            if !self.message.starts_with(field.as_str()) {
                write!(f, "{field}: ")?;
            }
        }
        if self.message.is_empty() {
            f.write_str("no message")?;
        } else {
            f.write_str(&self.message)?;
        }
        write!(f, "\n  hint: {}", self.hint())
    }
}

impl std::error::Error for ApiError {}

/// A task (or a check such as `audit-log verify`) ended unsuccessfully; the outcome was
/// already printed. Exit code 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskFailed(pub String);

/// The exit code for an error: the first typed error found in the chain decides; any other
/// error is 1.
pub fn exit_code_of(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<InvalidInput>().is_some() {
            return EXIT_INVALID;
        }
        if cause.downcast_ref::<Unreachable>().is_some() {
            return EXIT_UNREACHABLE;
        }
        if let Some(api) = cause.downcast_ref::<ApiError>() {
            return api.exit_code();
        }
        if cause.downcast_ref::<TaskFailed>().is_some() {
            return EXIT_FAILED;
        }
        if cause.downcast_ref::<clap::Error>().is_some() {
            return EXIT_INVALID;
        }
    }
    EXIT_FAILED
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn api_error_bodies_and_codes() {
        let e = ApiError::from_body(
            422,
            br#"{"error":{"code":"invalid","message":"unpinned","field":"payload.deploy.image"}}"#,
        );
        assert_eq!(e.code.as_deref(), Some("invalid"));
        assert_eq!(e.exit_code(), EXIT_INVALID);
        let text = e.to_string();
        assert!(
            text.starts_with("core answered 422 (invalid): payload.deploy.image: unpinned"),
            "{text}"
        );
        assert!(text.contains("nothing was submitted"), "{text}");

        let e = ApiError::from_body(502, b"<html>bad gateway</html>");
        assert_eq!(e.message, "<html>bad gateway</html>");
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let long = vec![b'x'; 1000];
        assert!(ApiError::from_body(500, &long).message.ends_with('…'));
        assert_eq!(ApiError::from_body(500, b"").exit_code(), EXIT_FAILED);
        for (status, code) in [(400, 2), (401, 3), (403, 3), (404, 2), (409, 2), (503, 3)] {
            assert_eq!(
                ApiError::from_body(status, b"{}").exit_code(),
                code,
                "{status}"
            );
        }
    }

    #[test]
    fn exit_codes_follow_the_chain() {
        let err = anyhow::Error::new(InvalidInput::new("--port", "bad")).context("deploy");
        assert_eq!(exit_code_of(&err), EXIT_INVALID);
        let err: anyhow::Result<()> = Err(Unreachable {
            message: "down".into(),
        })
        .context("listing agents");
        assert_eq!(exit_code_of(&err.unwrap_err()), EXIT_UNREACHABLE);
        let err = anyhow::Error::new(TaskFailed("failed".into()));
        assert_eq!(exit_code_of(&err), EXIT_FAILED);
        assert_eq!(exit_code_of(&anyhow::anyhow!("other")), EXIT_FAILED);
        let err = anyhow::Error::new(ApiError::from_body(401, b"{}")).context("x");
        assert_eq!(exit_code_of(&err), EXIT_UNREACHABLE);
    }
}
