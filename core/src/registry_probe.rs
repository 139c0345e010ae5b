//! Whether an image digest can still be pulled: a registry v2 `HEAD
//! /v2/<repository>/manifests/<digest>` from core, with the registry credentials core
//! stores (`wharf history` uses it to tell which old releases `wharf rollback --to` can
//! still reach).
//!
//! - **Where**: the registry is the first component of the repository when it looks like a
//!   host (holds a `.` or a `:`, or is `localhost`), as Docker decides; otherwise Docker
//!   Hub (`registry-1.docker.io`, single names under `library/`).
//! - **http or https**: like Docker's default of trusting loopback registries as
//!   insecure, a registry on `localhost`, `127.0.0.0/8` or `[::1]` is asked over plain
//!   `http://`; every other registry over `https://`, verified against the system CA
//!   bundle (`SSL_CERT_FILE`, else `/etc/ssl/certs/ca-certificates.crt` or
//!   `/etc/pki/tls/certs/ca-bundle.crt`).
//! - **Auth**: first without credentials; on `401` with a `Basic` challenge again with the
//!   stored user and password; with a `Bearer` challenge the token is fetched from the
//!   challenge's `realm` (`service`, `scope=repository:<repo>:pull`, basic auth with the
//!   stored credentials if any) and the request repeated with it.
//! - **Bounded**: every request has [`REQUEST_TIMEOUT`]; once a registry does not answer,
//!   or [`REGISTRY_BUDGET`] is spent on it, its further digests are `unknown` at once.
//!   Answers are cached per [`Prober`] (one per API request). An unreachable registry is
//!   `unknown`, never an error.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::StatusCode;
use serde::Serialize;
use wharf_protocol::seal::RegistryCredentials;

/// Longest wait for one registry request (connect included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Most time spent on one registry within one [`Prober`].
pub const REGISTRY_BUDGET: Duration = Duration::from_secs(6);

/// Media types a manifest `HEAD` accepts: OCI and Docker, single and multi-platform.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Docker Hub as image references name it, and its API host.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The answer for one digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "pullable", rename_all = "snake_case")]
pub enum Pullable {
    /// The registry has the manifest.
    Yes,
    /// The registry answered that it does not have it.
    No {
        /// What the registry said.
        reason: String,
    },
    /// Not known: the registry did not answer, refused the credentials, or answered
    /// something else.
    Unknown {
        /// Why.
        reason: String,
    },
}

/// Why a [`Prober`] cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The HTTP client could not be set up.
    #[error("cannot set up the registry client: {0}")]
    Client(String),
}

/// A registry and the repository path within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The registry as image references and `wharf registry login` name it
    /// (`127.0.0.1:5000`, `docker.io`).
    pub registry: String,
    /// `http://` or `https://` plus the API host.
    pub base: String,
    /// The repository path (`team/app`, `library/nginx`).
    pub path: String,
}

/// Where a repository (`[registry/]path`, no tag or digest) is pulled from.
pub fn locate(repository: &str) -> Location {
    let (registry, path) = match repository.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => {
            let path = if repository.contains('/') {
                repository.to_string()
            } else {
                format!("library/{repository}")
            };
            (DOCKER_HUB.to_string(), path)
        }
    };
    let api_host = if registry == DOCKER_HUB {
        DOCKER_HUB_API.to_string()
    } else {
        registry.clone()
    };
    let scheme = if is_loopback(&registry) {
        "http"
    } else {
        "https"
    };
    Location {
        base: format!("{scheme}://{api_host}"),
        registry,
        path,
    }
}

/// Whether a `host[:port]` names this machine (`localhost`, `127.0.0.0/8`, `[::1]`).
pub fn is_loopback(host_port: &str) -> bool {
    let host = if let Some(rest) = host_port.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Where the credentials of a registry come from (core's directory).
pub type CredentialSource = Arc<dyn Fn(&str) -> Option<RegistryCredentials> + Send + Sync>;

#[derive(Default)]
struct RegistryState {
    spent: Duration,
    down: Option<String>,
    token: Option<String>,
}

/// Checks digests against their registries, caching every answer (use one per request).
pub struct Prober {
    http: reqwest::Client,
    https_problem: Option<String>,
    credentials: CredentialSource,
    answers: HashMap<(String, String), Pullable>,
    registries: HashMap<String, RegistryState>,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prober")
            .field("answers", &self.answers.len())
            .finish_non_exhaustive()
    }
}

/// The system CA bundle's path.
fn ca_bundle() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE") {
        return Some(PathBuf::from(path));
    }
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

impl Prober {
    /// A prober using `credentials` for registries that ask for them.
    ///
    /// # Errors
    ///
    /// [`ProbeError::Client`] when the HTTP client cannot be built.
    pub fn new(credentials: CredentialSource) -> Result<Prober, ProbeError> {
        let (tls, https_problem) = match ca_bundle().map(|p| (std::fs::read(&p), p)) {
            Some((Ok(pem), _)) => (crate::pki::registry_client_config(&pem), None),
            Some((Err(e), path)) => (
                crate::pki::registry_client_config(&[]),
                Some(format!(
                    "core cannot read the CA bundle {}: {e}",
                    path.display()
                )),
            ),
            None => (
                crate::pki::registry_client_config(&[]),
                Some("core found no system CA bundle to check https registries with".into()),
            ),
        };
        let tls = tls.map_err(|e| ProbeError::Client(e.to_string()))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(REQUEST_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("wharf-core/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ProbeError::Client(e.to_string()))?;
        Ok(Prober {
            http,
            https_problem,
            credentials,
            answers: HashMap::new(),
            registries: HashMap::new(),
        })
    }

    /// Whether `digest` of `repository` can be pulled now (cached).
    pub async fn check(&mut self, repository: &str, digest: &str) -> Pullable {
        let key = (repository.to_string(), digest.to_string());
        if let Some(answer) = self.answers.get(&key) {
            return answer.clone();
        }
        let answer = self.ask(repository, digest).await;
        self.answers.insert(key, answer.clone());
        answer
    }

    async fn ask(&mut self, repository: &str, digest: &str) -> Pullable {
        let location = locate(repository);
        let unknown = |reason: String| Pullable::Unknown { reason };
        if location.base.starts_with("https:") {
            if let Some(problem) = &self.https_problem {
                return unknown(problem.clone());
            }
        }
        let state = self
            .registries
            .entry(location.registry.clone())
            .or_default();
        if let Some(down) = &state.down {
            return unknown(down.clone());
        }
        if state.spent >= REGISTRY_BUDGET {
            return unknown(format!(
                "{} took too long to answer ({}s spent on it in this request)",
                location.registry,
                REGISTRY_BUDGET.as_secs()
            ));
        }
        let started = Instant::now();
        let answer = self.ask_registry(&location, digest).await;
        let state = self
            .registries
            .entry(location.registry.clone())
            .or_default();
        state.spent += started.elapsed();
        match answer {
            Ok(pullable) => pullable,
            Err(reason) => {
                state.down = Some(reason.clone());
                unknown(reason)
            }
        }
    }

    /// `Err` when the registry cannot be reached (nothing more is asked of it).
    async fn ask_registry(&mut self, at: &Location, digest: &str) -> Result<Pullable, String> {
        let url = format!("{}/v2/{}/manifests/{digest}", at.base, at.path);
        let token = self
            .registries
            .get(&at.registry)
            .and_then(|s| s.token.clone());
        let mut response = self
            .head(&url, token.map(|t| format!("Bearer {t}")), at)
            .await?;
        if response.0 == StatusCode::UNAUTHORIZED {
            let credentials = (self.credentials)(&at.registry);
            let challenge = response
                .1
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let authorization = if challenge
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("bearer")
            {
                match self
                    .bearer_token(&challenge, at, credentials.as_ref())
                    .await?
                {
                    Ok(token) => {
                        self.registries
                            .entry(at.registry.clone())
                            .or_default()
                            .token = Some(token.clone());
                        format!("Bearer {token}")
                    }
                    Err(reason) => return Ok(Pullable::Unknown { reason }),
                }
            } else {
                let Some(c) = credentials.as_ref() else {
                    return Ok(Pullable::Unknown {
                        reason: format!(
                            "{} asks for credentials and core stores none (`wharf registry login {}`)",
                            at.registry, at.registry
                        ),
                    });
                };
                basic(c)
            };
            response = self.head(&url, Some(authorization), at).await?;
        }
        Ok(match response.0 {
            s if s.is_success() => Pullable::Yes,
            StatusCode::NOT_FOUND => Pullable::No {
                reason: format!("{} has no manifest {digest} in {}", at.registry, at.path),
            },
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Pullable::Unknown {
                reason: format!(
                    "{} refused core's stored credentials for {} (HTTP {})",
                    at.registry,
                    at.path,
                    response.0.as_u16()
                ),
            },
            other => Pullable::Unknown {
                reason: format!("{} answered HTTP {}", at.registry, other.as_u16()),
            },
        })
    }

    async fn head(
        &self,
        url: &str,
        authorization: Option<String>,
        at: &Location,
    ) -> Result<(StatusCode, HeaderMap), String> {
        let mut request = self.http.head(url).header(ACCEPT, MANIFEST_TYPES);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        match request.send().await {
            Ok(response) => Ok((response.status(), response.headers().clone())),
            Err(e) => Err(unreachable(at, &e)),
        }
    }

    /// The Bearer token flow. Outer `Err`: the token server is unreachable; inner `Err`:
    /// it refused or answered nonsense.
    async fn bearer_token(
        &self,
        challenge: &str,
        at: &Location,
        credentials: Option<&RegistryCredentials>,
    ) -> Result<Result<String, String>, String> {
        let params = challenge_params(challenge);
        let Some(realm) = params.get("realm") else {
            return Ok(Err(format!(
                "{} sent a Bearer challenge without a realm",
                at.registry
            )));
        };
        // Credentials go to the realm only over https (or to this machine).
        let realm_ok = reqwest::Url::parse(realm).is_ok_and(|url| {
            url.scheme() == "https"
                || (url.scheme() == "http" && url.host_str().is_some_and(is_loopback))
        });
        if !realm_ok {
            return Ok(Err(format!(
                "{} names the token realm {realm:?}, which is not an https URL; core sends no \
                 credentials there",
                at.registry
            )));
        }
        let mut query = vec![(
            "scope".to_string(),
            params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", at.path)),
        )];
        if let Some(service) = params.get("service") {
            query.push(("service".to_string(), service.clone()));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(c) = credentials {
            request = request.header(AUTHORIZATION, basic(c));
        }
        let response = request.send().await.map_err(|e| unreachable(at, &e))?;
        let status = response.status();
        if !status.is_success() {
            return Ok(Err(format!(
                "the token server of {} refused a pull token for {} (HTTP {}){}",
                at.registry,
                at.path,
                status.as_u16(),
                if credentials.is_none() {
                    "; core stores no credentials for it"
                } else {
                    ""
                }
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        match response.json::<TokenAnswer>().await {
            Ok(TokenAnswer { token: Some(t), .. })
            | Ok(TokenAnswer {
                access_token: Some(t),
                ..
            }) => Ok(Ok(t)),
            _ => Ok(Err(format!(
                "the token server of {} answered without a token",
                at.registry
            ))),
        }
    }
}

fn basic(c: &RegistryCredentials) -> String {
    use base64::Engine as _;
    let pair = zeroize::Zeroizing::new(format!("{}:{}", c.username, c.password));
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
    )
}

fn unreachable(at: &Location, e: &reqwest::Error) -> String {
    let why = if e.is_timeout() {
        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "the request failed".to_string()
    };
    format!("{} ({}) is unreachable: {why}", at.registry, at.base)
}

/// The `key="value"` parameters of a `WWW-Authenticate` challenge.
pub fn challenge_params(challenge: &str) -> HashMap<String, String> {
    let rest = challenge
        .trim_start()
        .split_once(char::is_whitespace)
        .map_or("", |(_, rest)| rest);
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut escaped = false;
            for c in chars.by_ref() {
                match (escaped, c) {
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    _ => {
                        value.push(c);
                        escaped = false;
                    }
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_are_located_like_docker_does() {
        let l = locate("127.0.0.1:5000/team/app");
        assert_eq!(
            (l.registry.as_str(), l.base.as_str(), l.path.as_str()),
            ("127.0.0.1:5000", "http://127.0.0.1:5000", "team/app")
        );
        let l = locate("localhost/app");
        assert_eq!(l.base, "http://localhost");
        let l = locate("registry.example.com:5000/app");
        assert_eq!(l.base, "https://registry.example.com:5000");
        let l = locate("nginx");
        assert_eq!(
            (l.registry.as_str(), l.base.as_str(), l.path.as_str()),
            ("docker.io", "https://registry-1.docker.io", "library/nginx")
        );
        let l = locate("team/app");
        assert_eq!(
            (l.registry.as_str(), l.path.as_str()),
            ("docker.io", "team/app")
        );
        assert!(is_loopback("[::1]:5000"));
        assert!(is_loopback("127.3.4.5:80"));
        assert!(!is_loopback("10.0.0.1:5000"));
        assert!(!is_loopback("localhost.example.com"));
    }

    #[test]
    fn challenges_are_parsed() {
        let p = challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let p = challenge_params(r#"Basic realm="Registry Realm""#);
        assert_eq!(p["realm"], "Registry Realm");
        assert!(challenge_params("Basic").is_empty());
        let p = challenge_params(r#"Bearer realm="a\"b", error=invalid_token"#);
        assert_eq!(p["realm"], "a\"b");
        assert_eq!(p["error"], "invalid_token");
    }
}
