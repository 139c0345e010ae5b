//! The operator API and the agent HTTPS endpoints over real TLS (docs/api.md).
//!
//! Each test opens an [`App`] on a temporary data dir and serves the router on
//! 127.0.0.1:0 with the real TLS configuration, in-process; a reqwest client trusting the
//! data dir's `ca.pem` talks to it. The last test runs the `wharf-core` binary itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use wharf_core::api::{self, ApiState, Metrics};
use wharf_core::app::{App, AppConfig};
use wharf_core::engine::{EngineConfig, SessionCommand};
use wharf_core::pki::{self, SecretString, TlsIdentity, ALPN_HTTP11};
use wharf_protocol::seal::AgentSealKey;
use wharf_protocol::{DeploySpec, Progress, TaskPayload, TaskResult, Timestamp};

const IMAGE_A: &str =
    "127.0.0.1:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";
const IMAGE_B: &str =
    "127.0.0.1:5000/app@sha256:2222222222222222222222222222222222222222222222222222222222222222";
const DEADLINE: Duration = Duration::from_secs(20);

/// A core serving the API in-process.
pub(crate) struct Server {
    pub(crate) app: App,
    metrics: Arc<Metrics>,
    url: String,
    addr: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) admin: String,
    pub(crate) client: reqwest::Client,
    _stop: watch::Sender<bool>,
    _tmp: tempfile::TempDir,
}

impl Server {
    pub(crate) async fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap()).await
    }

    /// A core on `tmp/data`, a new one or the data dir of an earlier [`Server`].
    pub(crate) async fn start_in(tmp: tempfile::TempDir) -> Server {
        let data_dir = tmp.path().join("data");
        let (app, boot) = App::open(AppConfig {
            data_dir: data_dir.clone(),
            server_names: Vec::new(),
            master_key: None,
            engine: EngineConfig::default(),
        })
        .await
        .unwrap();
        let admin = match boot.admin_token {
            Some(token) => token.expose().to_string(),
            None => std::fs::read_to_string(data_dir.join("admin.token"))
                .unwrap()
                .trim()
                .to_string(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let (stop, stopped) = watch::channel(false);
        let tls = api::tls_config(&app).unwrap();
        let router = api::router(ApiState {
            app: app.clone(),
            metrics: metrics.clone(),
            shutdown: stopped.clone(),
        });
        tokio::spawn(api::serve_https(
            listener,
            tls,
            router,
            metrics.clone(),
            stopped,
        ));
        let client = operator_client(&data_dir.join("ca.pem"));
        Server {
            app,
            metrics,
            url: format!("https://{addr}"),
            addr,
            data_dir,
            admin,
            client,
            _stop: stop,
            _tmp: tmp,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The base URL (`https://127.0.0.1:PORT`).
    pub(crate) fn base_url(&self) -> &str {
        &self.url
    }

    /// Stops serving and releases the data dir (its store included) for a restart.
    pub(crate) async fn stop(self) -> tempfile::TempDir {
        let Server {
            app,
            metrics,
            client,
            _stop,
            _tmp,
            ..
        } = self;
        // The connections, the listener and the app all hold the store.
        drop((client, _stop, metrics, app));
        let store = _tmp.path().join("data").join("store");
        let deadline = Instant::now() + DEADLINE;
        loop {
            match wharf_core::store::SledStore::open(&store) {
                Ok(opened) => break drop(opened),
                Err(e) => assert!(Instant::now() < deadline, "the store stays held: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        _tmp
    }

    pub(crate) async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let response = self
            .client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        status_json(response).await
    }

    pub(crate) async fn post(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .unwrap();
        status_json(response).await
    }

    async fn post_raw(
        &self,
        token: &str,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        status_json(response).await
    }

    /// A new API token with `role`.
    pub(crate) async fn token(&self, role: &str) -> String {
        let (status, body) = self
            .post(
                &self.admin,
                "/v1/tokens",
                &json!({"role": role, "name": format!("{role}-1")}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["role"], role);
        body["token"].as_str().unwrap().to_string()
    }

    /// An enrollment token for `name`.
    async fn enroll_token(&self, name: &str, ttl_ms: Option<u64>) -> Value {
        let mut request = json!({"name": name});
        if let Some(ttl) = ttl_ms {
            request["ttl"] = json!(ttl);
        }
        let (status, body) = self.post(&self.admin, "/v1/agents/tokens", &request).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Posts an enrollment over a client that pins the CA by fingerprint.
    async fn enroll_with(&self, token: &str, name: &str) -> (StatusCode, Value, Agent) {
        let (key_pem, csr_pem) = pki::generate_agent_key_and_csr(name).unwrap();
        let seal = AgentSealKey::generate().unwrap();
        let config =
            pki::enrollment_client_config(self.app.ca_fingerprint(), &[ALPN_HTTP11]).unwrap();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap();
        let response = client
            .post(self.url("/agent/v1/enroll"))
            .json(&json!({
                "token": token,
                "name": name,
                "csr_pem": csr_pem,
                "x25519_public": hex::encode(seal.public()),
                "version": "0.1.0",
                "capabilities": ["docker"],
            }))
            .send()
            .await
            .unwrap();
        let (status, body) = status_json(response).await;
        (status, body, Agent { key_pem })
    }

    /// Enrolls an agent named `name` and returns its enrollment answer.
    pub(crate) async fn enroll(&self, name: &str) -> (Value, Agent) {
        let token = self.enroll_token(name, None).await;
        let (status, body, agent) = self
            .enroll_with(token["token"].as_str().unwrap(), name)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        (body, agent)
    }

    /// A client presenting the agent's certificate.
    fn agent_client(&self, cert_pem: &str, agent: &Agent) -> reqwest::Client {
        let identity = TlsIdentity::from_pem(cert_pem, agent.key_pem.expose()).unwrap();
        let config =
            pki::agent_client_config(&identity, self.app.pki.ca_cert(), &[ALPN_HTTP11]).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap()
    }

    async fn tasks(&self) -> Vec<Value> {
        let (status, body) = self.get(&self.admin, "/v1/tasks").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_array().unwrap().clone()
    }
}

pub(crate) struct Agent {
    key_pem: SecretString,
}

fn operator_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    let config = pki::operator_client_config(&pem, &[ALPN_HTTP11]).unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .build()
        .unwrap()
}

async fn status_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// Sends `request` over a TLS connection of its own and returns everything the server
/// answers until it closes the connection (or 5 s pass without a byte).
async fn raw_tls_exchange(server: &Server, request: &[u8]) -> String {
    let pem = std::fs::read(server.data_dir.join("ca.pem")).unwrap();
    let config = pki::operator_client_config(&pem, &[ALPN_HTTP11]).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn deploy(agent: &str, image: &str, key: Option<&str>) -> Value {
    let payload = serde_json::to_value(TaskPayload::Deploy(DeploySpec::new(image))).unwrap();
    let mut body = json!({"agent": agent, "target": "web", "payload": payload});
    if let Some(key) = key {
        body["idempotency_key"] = json!(key);
    }
    body
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        !body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "{body}"
    );
}

/// Waits for `condition`, checking it every few milliseconds until [`DEADLINE`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_decide_401_and_403() {
    let server = Server::start().await;
    // No token, an unknown token, a malformed header.
    let response = server
        .client
        .get(server.url("/v1/tasks"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().contains_key("www-authenticate"));
    let (_, body) = status_json(response).await;
    assert_error(&body, "unauthorized");
    let (status, body) = server.get("wharf-api-nope", "/v1/tasks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_error(&body, "unauthorized");
    let response = server
        .client
        .get(server.url("/v1/tasks"))
        .header("authorization", format!("Basic {}", server.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // 401 comes before the body is looked at.
    let (status, _) = server.post_raw("nope", "/v1/tasks", "{not json").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let deployer = server.token("deployer").await;
    let auditor = server.token("auditor").await;

    for (token, method, path, expected) in [
        (&deployer, "GET", "/v1/tasks", StatusCode::OK),
        (&deployer, "GET", "/v1/agents", StatusCode::OK),
        (&deployer, "GET", "/v1/tokens", StatusCode::FORBIDDEN),
        (&deployer, "GET", "/v1/audit-log", StatusCode::FORBIDDEN),
        (&deployer, "GET", "/v1/audit", StatusCode::FORBIDDEN),
        (
            &deployer,
            "POST",
            "/v1/agents/tokens",
            StatusCode::FORBIDDEN,
        ),
        (&deployer, "POST", "/v1/tokens", StatusCode::FORBIDDEN),
        (&deployer, "POST", "/v1/registries", StatusCode::FORBIDDEN),
        (
            &deployer,
            "POST",
            "/v1/agents/web-1/revoke",
            StatusCode::FORBIDDEN,
        ),
        (&auditor, "GET", "/v1/tasks", StatusCode::OK),
        (&auditor, "GET", "/v1/agents", StatusCode::OK),
        (&auditor, "GET", "/v1/tokens", StatusCode::OK),
        (&auditor, "GET", "/v1/registries", StatusCode::OK),
        (&auditor, "GET", "/v1/audit-log", StatusCode::OK),
        (&auditor, "GET", "/v1/audit-log/verify", StatusCode::OK),
        (&auditor, "GET", "/v1/audit?wait=1s", StatusCode::OK),
        (
            &auditor,
            "GET",
            "/v1/audit?agent=nobody",
            StatusCode::NOT_FOUND,
        ),
        (
            &auditor,
            "GET",
            "/v1/audit?wait=0s",
            StatusCode::BAD_REQUEST,
        ),
        (&auditor, "POST", "/v1/tasks", StatusCode::FORBIDDEN),
        (&auditor, "POST", "/v1/agents/tokens", StatusCode::FORBIDDEN),
        (&auditor, "POST", "/v1/registries", StatusCode::FORBIDDEN),
        (&auditor, "POST", "/v1/tokens", StatusCode::FORBIDDEN),
    ] {
        let request = match method {
            "GET" => server.client.get(server.url(path)),
            _ => server.client.post(server.url(path)).body("{}"),
        };
        let response = request.bearer_auth(token).send().await.unwrap();
        let status = response.status();
        let (_, body) = status_json(response).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        if status == StatusCode::FORBIDDEN {
            assert_error(&body, "forbidden");
        }
    }
    // A role check comes before the body is parsed: 403, not 400.
    let (status, _) = server.post_raw(&auditor, "/v1/tasks", "{not json").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Listing tokens never shows a token.
    let (_, tokens) = server.get(&auditor, "/v1/tokens").await;
    let text = tokens.to_string();
    for secret in [&server.admin, &deployer, &auditor] {
        assert!(!text.contains(secret.as_str()));
    }
    assert_eq!(tokens.as_array().unwrap().len(), 3);

    // An unknown role is a 400 naming the field.
    let (status, body) = server
        .post(&server.admin, "/v1/tokens", &json!({"role": "root"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "role", "{body}");

    // A revoked token stops working at once.
    let id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"] == "deployer")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, body) = server
        .post(
            &server.admin,
            &format!("/v1/tokens/{id}/revoke"),
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["revoked_at"].is_string(), "{body}");
    let (status, _) = server.get(&deployer, "/v1/tasks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server
        .post(&server.admin, "/v1/tokens/no-such-token/revoke", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");

    // Unknown routes and methods answer JSON too.
    let (status, body) = server.get(&server.admin, "/v1/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found");
    let response = server
        .client
        .delete(server.url("/v1/tasks"))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(server.metrics.http_requests("/v1/tasks", 403), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrollment_renewal_and_revocation() {
    let server = Server::start().await;

    // A token is for one name.
    let token = server.enroll_token("web-1", None).await;
    assert_eq!(token["name"], "web-1");
    assert_eq!(token["ca_hash"], server.app.ca_fingerprint().to_string());
    let token = token["token"].as_str().unwrap().to_string();
    let (status, body, _) = server.enroll_with(&token, "web-2").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_error(&body, "forbidden");
    let (status, body, _) = server.enroll_with("wharf-enroll-unknown", "web-1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A malformed request leaves the token usable.
    let client = operator_client(&server.data_dir.join("ca.pem"));
    let response = client
        .post(server.url("/agent/v1/enroll"))
        .json(&json!({"token": token, "name": "web-1", "csr_pem": "x", "x25519_public": "zz", "version": "1"}))
        .send()
        .await
        .unwrap();
    let (status, body) = status_json(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "x25519_public", "{body}");

    let (status, enrolled, agent) = server.enroll_with(&token, "web-1").await;
    assert_eq!(status, StatusCode::OK, "{enrolled}");
    let agent_id = enrolled["agent_id"].as_str().unwrap().to_string();
    let cert_pem = enrolled["cert_pem"].as_str().unwrap().to_string();
    assert!(cert_pem.contains("BEGIN CERTIFICATE"));
    assert_eq!(
        enrolled["ca_pem"].as_str().unwrap(),
        std::fs::read_to_string(server.data_dir.join("ca.pem")).unwrap()
    );

    // The token works once.
    let (status, body, _) = server.enroll_with(&token, "web-1").await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert_error(&body, "gone");

    // An expired token is gone too.
    let short = server.enroll_token("web-3", Some(1)).await;
    let expires_at: Timestamp = serde_json::from_value(short["expires_at"].clone()).unwrap();
    let wait = u64::try_from(expires_at.as_millis() - Timestamp::now().as_millis()).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(wait + 5)).await;
    let (status, body, _) = server
        .enroll_with(short["token"].as_str().unwrap(), "web-3")
        .await;
    assert_eq!(status, StatusCode::GONE, "{body}");

    // Renewal needs the agent's certificate on the connection.
    let (_, csr) = pki::generate_agent_key_and_csr("web-1").unwrap();
    let response = client
        .post(server.url("/agent/v1/renew"))
        .json(&json!({"csr_pem": csr}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let agent_client = server.agent_client(&cert_pem, &agent);
    let (new_key, new_csr) = pki::generate_agent_key_and_csr("web-1").unwrap();
    let response = agent_client
        .post(server.url("/agent/v1/renew"))
        .json(&json!({"csr_pem": new_csr}))
        .send()
        .await
        .unwrap();
    let (status, renewed) = status_json(response).await;
    assert_eq!(status, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["agent_id"], agent_id.as_str());
    let renewed_pem = renewed["cert_pem"].as_str().unwrap();
    assert_ne!(renewed_pem, cert_pem);
    assert_eq!(
        pki::agent_id_from_cert(
            &pki::certs_from_pem("renewed", renewed_pem.as_bytes()).unwrap()[0]
        )
        .unwrap(),
        agent_id
    );

    // Listed offline, then online with a session.
    let (_, agents) = server.get(&server.admin, "/v1/agents").await;
    assert_eq!(agents[0]["name"], "web-1");
    assert_eq!(agents[0]["state"], "offline");
    assert_eq!(agents[0]["id"], agent_id.as_str());
    assert_eq!(agents[0]["capabilities"], json!(["docker"]));
    let mut session = server
        .app
        .engine
        .open_session("web-1", "quic")
        .await
        .unwrap();
    let (_, agents) = server.get(&server.admin, "/v1/agents").await;
    assert_eq!(agents[0]["state"], "online", "{agents}");
    assert_eq!(agents[0]["transport"], "quic", "{agents}");

    // Revoke: the session is closed, the certificates are refused at the handshake.
    let (status, body) = server
        .post(&server.admin, "/v1/agents/web-1/revoke", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
    let closed = tokio::time::timeout(DEADLINE, session.commands.recv())
        .await
        .unwrap();
    assert!(
        matches!(&closed, Some(SessionCommand::Close { reason }) if reason == "revoked"),
        "{closed:?}"
    );
    let (_, agents) = server.get(&server.admin, "/v1/agents").await;
    assert_eq!(agents[0]["state"], "revoked");
    let renewed_agent = Agent { key_pem: new_key };
    for client in [
        server.agent_client(&cert_pem, &agent),
        server.agent_client(renewed_pem, &renewed_agent),
    ] {
        let (_, csr) = pki::generate_agent_key_and_csr("web-1").unwrap();
        let outcome = client
            .post(server.url("/agent/v1/renew"))
            .json(&json!({"csr_pem": csr}))
            .send()
            .await;
        assert!(
            outcome.is_err(),
            "a revoked certificate must fail the handshake: {outcome:?}"
        );
    }
    let metrics = server.metrics.clone();
    eventually("two refused handshakes", || {
        metrics.refused_connections("certificate") >= 2
    })
    .await;
    let (status, _) = server
        .post(&server.admin, "/v1/agents/nobody/revoke", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A bad name is refused as invalid, naming the field.
    let (status, body) = server
        .post(
            &server.admin,
            "/v1/agents/tokens",
            &json!({"name": "no spaces"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "name");

    // The directory recorded every change.
    let (_, log) = server.get(&server.admin, "/v1/audit-log").await;
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "agent.token.create",
        "agent.enroll",
        "agent.renew",
        "agent.revoke",
    ] {
        assert!(actions.contains(&action), "{actions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_is_idempotent_and_validated() {
    let server = Server::start().await;
    server.enroll("web-1").await;
    let deployer = server.token("deployer").await;

    let response = server
        .client
        .post(server.url("/v1/tasks"))
        .bearer_auth(&deployer)
        .json(&deploy("web-1", IMAGE_A, Some("release-42")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let (_, created) = status_json(response).await;
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/tasks/{id}"));
    assert_eq!(created["state"], "queued");
    assert_eq!(created["kind"], "deploy");
    assert_eq!(created["agent"], "web-1");
    assert_eq!(created["idempotency_key"], "release-42");
    assert!(created["result"].is_null());

    // Same key, same payload: the same task, 200.
    let (status, again) = server
        .post(
            &deployer,
            "/v1/tasks",
            &deploy("web-1", IMAGE_A, Some("release-42")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], id.as_str());
    // Same key, another payload: 409.
    let (status, body) = server
        .post(
            &deployer,
            "/v1/tasks",
            &deploy("web-1", IMAGE_B, Some("release-42")),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_error(&body, "conflict");
    // The key is the requester's: another token gets its own task.
    let (status, other) = server
        .post(
            &server.admin,
            "/v1/tasks",
            &deploy("web-1", IMAGE_A, Some("release-42")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    assert_ne!(other["id"], id.as_str());
    assert_eq!(server.tasks().await.len(), 2);

    // Refused before anything is queued.
    let (status, body) = server
        .post(
            &deployer,
            "/v1/tasks",
            &deploy("web-1", "nginx:latest", None),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_error(&body, "invalid");
    assert_eq!(body["error"]["field"], "payload.deploy.image");
    let (status, body) = server
        .post(&deployer, "/v1/tasks", &deploy("nobody", IMAGE_A, None))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_error(&body, "not_found");
    assert_eq!(body["error"]["field"], "agent");
    let mut bad_target = deploy("web-1", IMAGE_A, None);
    bad_target["target"] = json!("../etc");
    let (status, body) = server.post(&deployer, "/v1/tasks", &bad_target).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "target");

    // Malformed bodies: 400 naming the field and what was expected.
    let mut wrong_type = deploy("web-1", IMAGE_A, None);
    wrong_type["payload"]["deploy"]["image"] = json!(42);
    let (status, body) = server.post(&deployer, "/v1/tasks", &wrong_type).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_error(&body, "bad_request");
    assert_eq!(body["error"]["field"], "payload.deploy.image");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expected a string"),
        "{body}"
    );
    let (status, body) = server
        .post(
            &deployer,
            "/v1/tasks",
            &json!({"agent": "web-1", "target": "web"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "payload");
    let (status, body) = server
        .post_raw(&deployer, "/v1/tasks", "{\"agent\": ")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let (status, _) = server.post_raw(&deployer, "/v1/tasks", "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Over 8 MiB: 413, with a declared length and streamed without one.
    let big = vec![b' '; 9 * 1024 * 1024];
    let (status, body) = server.post_raw(&deployer, "/v1/tasks", big.clone()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_error(&body, "payload_too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let (status, _) = server.post_raw(&deployer, "/v1/tasks", streamed).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // A client that waits for `100 Continue` gets the 413 without sending the body.
    let head = format!(
        "POST /v1/tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {deployer}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        big.len()
    );
    let answer = raw_tls_exchange(&server, head.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    assert_eq!(server.tasks().await.len(), 2, "nothing was queued");

    // Reads.
    let (status, task) = server.get(&deployer, &format!("/v1/tasks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(task["id"], id.as_str());
    let (status, body) = server
        .get(&deployer, "/v1/tasks/00000000-0000-0000-0000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = server.get(&deployer, "/v1/tasks/not-a-uuid").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = server
        .get(&deployer, "/v1/tasks?state=queued&agent=web-1&limit=1")
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["id"], id.as_str());
    let (_, listed) = server.get(&deployer, "/v1/tasks?target=other").await;
    assert!(listed.as_array().unwrap().is_empty());
    let (status, body) = server.get(&deployer, "/v1/tasks?state=sleeping").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "state");

    // Cancel: queued → cancelled; a second cancel conflicts.
    let (status, cancelled) = server
        .post(&deployer, &format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["state"], "cancelled");
    let (status, body) = server
        .post(&deployer, &format!("/v1/tasks/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Submit and cancel are in the audit log, by the deployer's token.
    let (_, log) = server
        .get(&server.admin, "/v1/audit-log?after=0&limit=1000")
        .await;
    let entries = log.as_array().unwrap();
    let submit = entries
        .iter()
        .find(|e| e["action"] == "task.submit" && e["target"] == id.as_str())
        .expect("a task.submit entry");
    assert!(
        submit["actor"].as_str().unwrap().starts_with("deployer-1"),
        "{submit}"
    );
    assert_eq!(submit["detail"]["image"], IMAGE_A);
    assert_eq!(submit["detail"]["kind"], "deploy");
    assert!(entries
        .iter()
        .any(|e| e["action"] == "task.cancel" && e["target"] == id.as_str()));
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["action"] == "task.submit")
            .count(),
        2,
        "only created tasks are recorded"
    );
    let (_, page) = server
        .get(&server.admin, "/v1/audit-log?after=1&limit=2")
        .await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["seq"], 2);
    let (_, verified) = server.get(&server.admin, "/v1/audit-log/verify").await;
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(
        verified["entries"].as_u64().unwrap() as usize,
        entries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_password_is_never_echoed_logged_or_stored_in_clear() {
    let server = Server::start().await;
    let password = "hunter2-Very-Secret-Registry-Password-93f1";
    let (status, body) = server
        .post(
            &server.admin,
            "/v1/registries",
            &json!({"host": "registry.example:5000", "username": "ci", "password": password}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["host"], "registry.example:5000");
    assert_eq!(body["username"], "ci");
    assert!(!body.to_string().contains(password));
    let (_, listed) = server.get(&server.admin, "/v1/registries").await;
    assert_eq!(listed[0]["username"], "ci");
    assert!(!listed.to_string().contains(password));
    let (_, log) = server.get(&server.admin, "/v1/audit-log").await;
    assert!(log.to_string().contains("registry.login"));
    assert!(!log.to_string().contains(password));
    // The store's files, byte for byte.
    let needle = password.as_bytes();
    let mut files = vec![server.data_dir.clone()];
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds the password",
                path.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 3);
    // The decrypted credentials are still there for sealing.
    let credentials = server
        .app
        .directory
        .credentials_for_registry("registry.example:5000")
        .unwrap()
        .unwrap();
    assert_eq!(credentials.password, password);
    // An empty password is refused, naming the field.
    let (status, body) = server
        .post(
            &server.admin,
            "/v1/registries",
            &json!({"host": "registry.example", "username": "ci", "password": ""}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["field"], "password");
}

/// Reads SSE events (`(event, data)`) until `done` or the stream ends.
async fn read_events(response: reqwest::Response) -> Vec<(String, Value)> {
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = stream.next().await {
        buffer.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::from("message");
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_string();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim_start());
                }
            }
            if data.is_empty() {
                continue; // a keep-alive comment
            }
            let done = name == "done";
            events.push((name, serde_json::from_str(&data).unwrap()));
            if done {
                return events;
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_events_stream_states_and_progress_and_end_with_done() {
    let server = Server::start().await;
    server.enroll("web-1").await;
    let (status, task) = server
        .post(&server.admin, "/v1/tasks", &deploy("web-1", IMAGE_A, None))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id = task["id"].as_str().unwrap().to_string();
    let task_id: uuid::Uuid = id.parse().unwrap();

    let response = server
        .client
        .get(server.url(&format!("/v1/tasks/{id}/events")))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let reader = tokio::spawn(read_events(response));

    // Drive the task as an agent would.
    let engine = server.app.engine.clone();
    let mut session = engine.open_session("web-1", "test").await.unwrap();
    let assigned = tokio::time::timeout(DEADLINE, session.commands.recv())
        .await
        .unwrap();
    let Some(SessionCommand::Assign(assigned)) = assigned else {
        panic!("expected an Assign, got {assigned:?}");
    };
    assert_eq!(assigned.id, task_id);
    let started = Timestamp::now();
    engine
        .accepted("web-1", task_id, assigned.attempt)
        .await
        .unwrap();
    engine
        .progress(
            "web-1",
            Progress {
                task_id,
                step: "pull".into(),
                line: "pulling 127.0.0.1:5000/app".into(),
            },
        )
        .await
        .unwrap();
    engine
        .result(
            "web-1",
            TaskResult::success(task_id, assigned.attempt, started),
        )
        .await
        .unwrap();

    let events = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the stream ends with done")
        .unwrap();
    let states: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "state")
        .map(|(_, data)| data["state"].as_str().unwrap())
        .collect();
    // Every change, in order: nothing collapsed, nothing doubled.
    assert_eq!(
        states,
        ["queued", "dispatched", "running", "succeeded"],
        "{events:?}"
    );
    let progress: Vec<&Value> = events
        .iter()
        .filter(|(name, _)| name == "progress")
        .map(|(_, data)| data)
        .collect();
    assert_eq!(progress.len(), 1, "{events:?}");
    assert_eq!(progress[0]["step"], "pull");
    let (name, done) = events.last().unwrap();
    assert_eq!(name, "done");
    assert_eq!(done["id"], id.as_str());
    assert_eq!(done["state"], "succeeded");
    assert_eq!(done["result"]["success"], true);

    // A finished task: its state and done at once.
    let response = server
        .client
        .get(server.url(&format!("/v1/tasks/{id}/events")))
        .bearer_auth(&server.admin)
        .send()
        .await
        .unwrap();
    let events = tokio::time::timeout(DEADLINE, read_events(response))
        .await
        .unwrap();
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["state", "done"]);

    let (status, _) = server
        .get(
            &server.admin,
            "/v1/tasks/00000000-0000-0000-0000-000000000000/events",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_prometheus_text() {
    let server = Server::start().await;
    server.enroll("web-1").await;
    let (status, _) = server
        .post(&server.admin, "/v1/tasks", &deploy("web-1", IMAGE_A, None))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = server.get("bad", "/v1/tasks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE ") || line == "# EOF",
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("wharf_"),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            if !labels.is_empty() {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            }
        }
        samples.insert(series.to_string(), value);
    }
    assert_eq!(samples[r#"wharf_tasks{state="queued"}"#], 1.0);
    assert_eq!(samples[r#"wharf_tasks{state="succeeded"}"#], 0.0);
    assert_eq!(samples[r#"wharf_agents{state="offline"}"#], 1.0);
    assert_eq!(samples[r#"wharf_agents{state="online"}"#], 0.0);
    assert_eq!(
        samples[r#"wharf_http_requests_total{method="POST",route="/v1/tasks",status="201"}"#],
        1.0
    );
    assert_eq!(
        samples[r#"wharf_http_requests_total{method="GET",route="/v1/tasks",status="401"}"#],
        1.0
    );
    assert!(samples.contains_key("wharf_https_connections_garbage_total"));
    assert!(samples.contains_key("wharf_quic_handshakes_failed_total"));
    assert!(samples.contains_key("wharf_quic_sessions_active"));
    // The polling transport's counters and gauges; no agent has polled.
    assert_eq!(samples["wharf_poll_requests_total"], 0.0);
    assert_eq!(samples["wharf_poll_results_acked_total"], 0.0);
    assert_eq!(samples["wharf_poll_sessions_active"], 0.0);
    assert_eq!(samples["wharf_poll_requests_in_flight"], 0.0);
    assert!(!text.contains(&server.admin));
    assert!(!text.contains(IMAGE_A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tcp_port_does_not_stop_the_server() {
    let server = Server::start().await;
    // A silent connection stays open (until its handshake deadline) meanwhile.
    let _silent = TcpStream::connect(server.addr).await.unwrap();
    for junk in [
        b"\x16\x03\x01\xff\xff garbage that claims to be a huge TLS record".to_vec(),
        b"GET /healthz HTTP/1.1\r\nHost: core\r\n\r\n".to_vec(),
        (0..=255u8).cycle().take(70_000).collect(),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let _ = stream.write_all(&junk).await;
        let mut sink = Vec::new();
        let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut sink)).await;
        assert!(read.is_ok(), "the server closes a garbage connection");
    }
    let metrics = server.metrics.clone();
    eventually("3 garbage connections counted", || {
        metrics.garbage_connections() >= 3
    })
    .await;
    // A connection that closes during the handshake is counted too.
    drop(TcpStream::connect(server.addr).await.unwrap());
    eventually("an eof counted", || metrics.refused_connections("eof") >= 1).await;

    let response = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok\n");
    let (status, _) = server.get(&server.admin, "/v1/tasks").await;
    assert_eq!(status, StatusCode::OK);
}

/// A running `wharf-core serve` and its stdout lines.
struct CoreProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl CoreProcess {
    fn start(data_dir: &Path, log: &Path) -> CoreProcess {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wharf-core"));
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).unwrap());
        for var in [
            "WHARF_DATA_DIR",
            "WHARF_LISTEN",
            "WHARF_NAMES",
            "WHARF_MASTER_KEY",
            "WHARF_CONFIG",
        ] {
            command.env_remove(var);
        }
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CoreProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Lines up to and including the last line of the ready block.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no ready block; stdout so far: {:?}", self.seen));
            let last = line.starts_with("export WHARF_CA=");
            self.seen.push(line);
            if last {
                return;
            }
        }
    }

    fn line_with(&self, needle: &str) -> Option<&String> {
        self.seen.iter().find(|l| l.contains(needle))
    }

    fn port(&self) -> u16 {
        let url = self.line_with("export WHARF_URL=").unwrap();
        url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(self.child.wait());
        });
        rx.recv_timeout(DEADLINE)
            .expect("wharf-core exits after SIGTERM")
            .unwrap()
    }
}

async fn wait_healthy(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(response) = client
            .get(format!("https://127.0.0.1:{port}/healthz"))
            .send()
            .await
        {
            assert_eq!(response.status(), StatusCode::OK);
            return;
        }
        assert!(Instant::now() < deadline, "/healthz never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_prints_the_ready_block_serves_and_stops_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("core.log");

    let mut core = CoreProcess::start(&data_dir, &log);
    core.wait_ready();
    let fingerprint_line = core.line_with("CA fingerprint sha256:").unwrap().clone();
    let token_line = core
        .line_with("admin API token")
        .unwrap_or_else(|| panic!("first start prints the admin token: {:?}", core.seen))
        .clone();
    let admin = std::fs::read_to_string(data_dir.join("admin.token")).unwrap();
    assert!(token_line.ends_with(admin.trim()), "{token_line}");
    let port = core.port();
    assert!(
        core.line_with(&format!("listening on https://127.0.0.1:{port} (tcp)"))
            .is_some(),
        "{:?}",
        core.seen
    );
    let canonical = std::fs::canonicalize(&data_dir).unwrap();
    assert!(core
        .seen
        .contains(&format!("export WHARF_URL=https://127.0.0.1:{port}")));
    assert!(core.seen.contains(&format!(
        "export WHARF_TOKEN=$(cat {})",
        canonical.join("admin.token").display()
    )));
    assert!(core.seen.contains(&format!(
        "export WHARF_CA={}",
        canonical.join("ca.pem").display()
    )));
    let client = operator_client(&data_dir.join("ca.pem"));
    wait_healthy(&client, port).await;
    let response = client
        .get(format!("https://127.0.0.1:{port}/v1/agents"))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let status = core.terminate();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("wharf-core configuration"), "{logged}");
    assert!(
        !logged.contains(admin.trim()),
        "the log never holds the token"
    );

    // A second start reuses the data dir: same CA, no new admin token.
    let mut core = CoreProcess::start(&data_dir, &log);
    core.wait_ready();
    assert_eq!(
        core.line_with("CA fingerprint sha256:"),
        Some(&fingerprint_line)
    );
    assert!(
        core.line_with("admin API token").is_none(),
        "{:?}",
        core.seen
    );
    wait_healthy(&client, core.port()).await;
    assert_eq!(core.terminate().code(), Some(0));
    assert_eq!(
        std::fs::read_to_string(data_dir.join("admin.token")).unwrap(),
        admin
    );

    // Invalid input exits 2.
    let output = Command::new(env!("CARGO_BIN_EXE_wharf-core"))
        .args(["serve", "--listen", "not-an-address", "--data-dir"])
        .arg(&data_dir)
        .env_remove("WHARF_MASTER_KEY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("listen address"));
}
