//! A small client of core's operator API, for tests, the benchmark and
//! `wharf-testbed sim-agent --count K` (which creates its own enrollment tokens).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_core::engine::{SubmitRequest, TaskView};
use wharf_core::pki::{operator_client_config, ALPN_HTTP11};
use wharf_protocol::Timestamp;

use super::enroll::{error_chain, ApiErrorBody};

/// An error answer of the API (`{"error": {"code", "message"}}`), or no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Core answered with an error status.
    #[error("{method} {path}: HTTP {status} {code}: {message}")]
    Status {
        /// The method.
        method: &'static str,
        /// The path.
        path: String,
        /// The HTTP status.
        status: u16,
        /// The API error code.
        code: String,
        /// Core's message.
        message: String,
    },
    /// No usable answer (connection refused, TLS failure, timeout, unexpected body).
    #[error("{method} {path}: {reason}")]
    Transport {
        /// The method.
        method: &'static str,
        /// The path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

impl ApiError {
    /// The HTTP status, if core answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::Transport { .. } => None,
        }
    }
}

/// `POST /v1/agents/tokens`'s answer: a one-time enrollment token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollTokenGrant {
    /// The agent name it is for.
    pub name: String,
    /// The token (shown once).
    pub token: String,
    /// When it expires.
    pub expires_at: Timestamp,
    /// The CA fingerprint to pin, `sha256:<hex>`.
    pub ca_hash: String,
}

/// A submitted task and whether it was new (HTTP 201) or an idempotent repeat (200).
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// 201 (created) or 200 (existing task for the idempotency key).
    pub status: u16,
    /// The task.
    pub task: TaskView,
}

/// An operator API client (bearer token, trusting core's CA).
#[derive(Debug, Clone)]
pub struct CoreApi {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl CoreApi {
    /// A client of `https://<core_addr>` with `token`, trusting the CA certificates of
    /// `ca_pem` (core's `DATA/ca.pem`).
    ///
    /// # Errors
    ///
    /// A CA PEM that does not parse.
    pub fn new(core_addr: &str, token: &str, ca_pem: &[u8]) -> anyhow::Result<Self> {
        let tls = operator_client_config(ca_pem, &[ALPN_HTTP11])?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(CoreApi {
            base: format!("https://{core_addr}"),
            token: token.trim().to_string(),
            client,
        })
    }

    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, T), ApiError> {
        let transport = |reason: String| ApiError::Transport {
            method,
            path: path.to_string(),
            reason,
        };
        let url = format!("{}{path}", self.base);
        let mut request = match method {
            "GET" => self.client.get(&url),
            _ => self.client.post(&url),
        }
        .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| transport(error_chain(&e)))?;
        if !status.is_success() {
            let (code, message) = match serde_json::from_slice::<ApiErrorBody>(&bytes) {
                Ok(b) => (b.error.code, b.error.message),
                Err(_) => (
                    status.canonical_reason().unwrap_or("error").to_string(),
                    String::from_utf8_lossy(&bytes).chars().take(500).collect(),
                ),
            };
            return Err(ApiError::Status {
                method,
                path: path.to_string(),
                status: status.as_u16(),
                code,
                message,
            });
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| transport(format!("unexpected answer: {e}")))?;
        Ok((status.as_u16(), value))
    }

    /// `POST /v1/agents/tokens`: a one-time enrollment token for `name` (`ttl` default
    /// 1 h).
    ///
    /// # Errors
    ///
    /// Core refused or did not answer.
    pub async fn create_enroll_token(
        &self,
        name: &str,
        ttl: Option<Duration>,
    ) -> Result<EnrollTokenGrant, ApiError> {
        let mut body = serde_json::json!({ "name": name });
        if let Some(ttl) = ttl {
            body["ttl"] = serde_json::json!(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        }
        self.call("POST", "/v1/agents/tokens", Some(&body))
            .await
            .map(|(_, v)| v)
    }

    /// `POST /v1/tasks`.
    ///
    /// # Errors
    ///
    /// Core refused (e.g. 409 for a reused idempotency key, 422 for an invalid task) or
    /// did not answer.
    pub async fn submit(&self, request: &SubmitRequest) -> Result<Submitted, ApiError> {
        let body = serde_json::to_value(request).map_err(|e| ApiError::Transport {
            method: "POST",
            path: "/v1/tasks".into(),
            reason: e.to_string(),
        })?;
        let (status, task) = self.call("POST", "/v1/tasks", Some(&body)).await?;
        Ok(Submitted { status, task })
    }

    /// `GET /v1/tasks/{id}`: `None` for 404.
    ///
    /// # Errors
    ///
    /// Core refused or did not answer.
    pub async fn task(&self, id: Uuid) -> Result<Option<TaskView>, ApiError> {
        match self.call("GET", &format!("/v1/tasks/{id}"), None).await {
            Ok((_, task)) => Ok(Some(task)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/tasks?agent=A&limit=N`: the tasks (of one agent, if given), in submission
    /// order.
    ///
    /// # Errors
    ///
    /// Core refused or did not answer.
    pub async fn tasks(
        &self,
        agent: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskView>, ApiError> {
        let mut path = format!("/v1/tasks?limit={limit}");
        if let Some(agent) = agent {
            path.push_str("&agent=");
            path.push_str(agent);
        }
        self.call("GET", &path, None).await.map(|(_, v)| v)
    }

    /// `POST /v1/tasks/{id}/cancel`.
    ///
    /// # Errors
    ///
    /// Core refused (404 for an unknown task, 409 for a finished one) or did not answer.
    pub async fn cancel(&self, id: Uuid) -> Result<TaskView, ApiError> {
        self.call("POST", &format!("/v1/tasks/{id}/cancel"), None)
            .await
            .map(|(_, v)| v)
    }

    /// `POST /v1/agents/{name}/revoke`: the agent's sessions close, its certificates are
    /// refused from now on. The agent as JSON.
    ///
    /// # Errors
    ///
    /// Core refused (404 for an unknown agent) or did not answer.
    pub async fn revoke_agent(&self, name: &str) -> Result<serde_json::Value, ApiError> {
        self.call("POST", &format!("/v1/agents/{name}/revoke"), None)
            .await
            .map(|(_, v)| v)
    }

    /// `POST /v1/registries`: stores credentials for `host` (core seals them to the agent
    /// of every task whose image is on that host).
    ///
    /// # Errors
    ///
    /// Core refused or did not answer.
    pub async fn registry_login(
        &self,
        host: &str,
        username: &str,
        password: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let body = serde_json::json!({ "host": host, "username": username, "password": password });
        self.call("POST", "/v1/registries", Some(&body))
            .await
            .map(|(_, v)| v)
    }

    /// `GET /v1/agents`, as JSON values.
    ///
    /// # Errors
    ///
    /// Core refused or did not answer.
    pub async fn agents(&self) -> Result<Vec<serde_json::Value>, ApiError> {
        self.call("GET", "/v1/agents", None).await.map(|(_, v)| v)
    }

    /// `GET /v1/audit?QUERY` (e.g. `wait=2s`): the fleet audit's rows, as JSON values.
    ///
    /// # Errors
    ///
    /// Core refused or did not answer.
    pub async fn audit(&self, query: &str) -> Result<Vec<serde_json::Value>, ApiError> {
        self.call("GET", &format!("/v1/audit?{query}"), None)
            .await
            .map(|(_, v)| v)
    }
}
