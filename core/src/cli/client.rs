//! A thin HTTP client of the operator API (docs/api.md): builds URLs, adds the bearer
//! token, and turns transport failures and error answers into the typed errors that choose
//! the exit code ([`Unreachable`], [`ApiError`]).

use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, Url};
use serde::Serialize;
use serde_json::Value;

use super::args::ConnectionArgs;
use super::error::{ApiError, Unreachable};

/// ALPN the operator API speaks.
const ALPN_HTTP11: &[u8] = b"http/1.1";
/// Time to establish a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time one ordinary request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest silence on a connection (an event stream is reopened after it).
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to core's operator API.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// HTTP status (2xx).
    pub status: u16,
    /// The JSON body (`null` when the body was empty).
    pub body: Value,
}

fn unreachable(message: impl Into<String>) -> anyhow::Error {
    Unreachable {
        message: message.into(),
    }
    .into()
}

impl Client {
    /// A client for `conn`: checks the URL, loads the CA (needed for `https://`), and
    /// prepares the token. Problems are [`Unreachable`] (exit 3); nothing is sent yet.
    pub fn new(conn: &ConnectionArgs) -> Result<Client> {
        let mut base = Url::parse(&conn.url).map_err(|e| {
            unreachable(format!(
                "--url `{}` is not a URL ({e}): write it like https://core.example.com:7443",
                conn.url
            ))
        })?;
        if !matches!(base.scheme(), "https" | "http") || base.host().is_none() {
            return Err(unreachable(format!(
                "--url `{}` must be an https:// URL with a host, like https://core.example.com:7443",
                conn.url
            )));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(unreachable(
                "--url must not hold credentials: give the API token with --token or WHARF_TOKEN",
            ));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let token = conn.token.as_deref().map(str::trim).unwrap_or_default();
        if token.is_empty() {
            return Err(unreachable(
                "no API token: pass --token or set WHARF_TOKEN (the first admin token is in \
                 admin.token in core's data dir; `wharf token create` makes others)",
            ));
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            unreachable(
                "the API token holds characters a token never has: check --token / WHARF_TOKEN",
            )
        })?;
        auth.set_sensitive(true);

        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")));
        match &conn.ca {
            Some(ca) => {
                let tls = crate::pki::operator_client_config_from_file(ca, &[ALPN_HTTP11])
                    .map_err(|e| {
                        unreachable(format!(
                            "cannot use --ca {}: {e}; give the ca.pem from core's data dir",
                            ca.display()
                        ))
                    })?;
                builder = builder.use_preconfigured_tls(tls);
            }
            None if base.scheme() == "https" => {
                return Err(unreachable(
                    "core's HTTPS certificate is issued by its own CA: pass --ca with the \
                     ca.pem from core's data dir, or set WHARF_CA",
                ));
            }
            None => {}
        }
        let http = builder
            .build()
            .context("cannot set up the HTTP client")
            .map_err(|e| unreachable(format!("{e:#}")))?;
        Ok(Client { http, base, auth })
    }

    /// The base URL (`https://host:port/`).
    pub fn base(&self) -> &Url {
        &self.base
    }

    /// The URL of `segments` under the base, each segment percent-encoded.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone())
    }

    /// Sends a request and reads a JSON answer. Error statuses are [`ApiError`]s;
    /// transport failures are [`Unreachable`].
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<Answer> {
        let url = self.url(segments, query);
        let (status, bytes) = self.send(method, url.clone(), body).await?;
        let body = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "core's answer to {} is not JSON: is --url pointing at wharf-core?",
                    url.path()
                )
            })?
        };
        Ok(Answer { status, body })
    }

    /// Sends a request; returns the status and body of a 2xx answer.
    async fn send<B: Serialize + ?Sized>(
        &self,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self.request(method, url).timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if !(200..300).contains(&status) {
            return Err(ApiError::from_body(status, &bytes).into());
        }
        Ok((status, bytes.to_vec()))
    }

    /// `GET` returning the body's bytes as they are (a signed document).
    pub async fn get_bytes(&self, segments: &[&str]) -> Result<Vec<u8>> {
        let url = self.url(segments, &[]);
        Ok(self.send::<()>(Method::GET, url, None).await?.1)
    }

    /// `GET` with a query.
    pub async fn get(&self, segments: &[&str], query: &[(&str, String)]) -> Result<Answer> {
        self.call::<()>(Method::GET, segments, query, None).await
    }

    /// `POST` with a JSON body.
    pub async fn post<B: Serialize + ?Sized>(&self, segments: &[&str], body: &B) -> Result<Answer> {
        self.call(Method::POST, segments, &[], Some(body)).await
    }

    /// Opens `GET /v1/tasks/{id}/events` (Server-Sent Events) and returns the streaming
    /// response once its status is 2xx.
    pub async fn events(&self, id: &str) -> Result<reqwest::Response> {
        let url = self.url(&["v1", "tasks", id, "events"], &[]);
        let resp = self
            .request(Method::GET, url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let bytes = resp.bytes().await.unwrap_or_default();
            return Err(ApiError::from_body(status, &bytes).into());
        }
        Ok(resp)
    }

    /// Describes a failed exchange: what failed and what to check.
    pub fn transport_error(&self, err: &reqwest::Error) -> anyhow::Error {
        describe_transport_error(&self.base, err)
    }
}

/// Whether an error chain holds a TLS failure, and its message. `io::Error`s are opened
/// as well: their `source` skips the error they wrap, and TLS errors travel wrapped in
/// one or two of them.
fn tls_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(err);
    let mut depth = 0;
    while let Some(e) = current {
        depth += 1;
        if depth > 32 {
            return None;
        }
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        current = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// The messages of an error chain, joined, without repeats.
fn chain_text(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// An [`Unreachable`] error for a failed exchange with core at `base`. The reqwest error
/// itself is not printed (it repeats the URL); its kind and its causes are.
pub fn describe_transport_error(base: &Url, err: &reqwest::Error) -> anyhow::Error {
    let kind = if err.is_connect() {
        "connection failed"
    } else if err.is_timeout() {
        "timed out"
    } else if err.is_body() || err.is_decode() {
        "reading the answer failed"
    } else {
        "the request failed"
    };
    let source = std::error::Error::source(err);
    let detail = match source {
        Some(cause) => format!("{kind}: {}", chain_text(cause)),
        None => kind.to_owned(),
    };
    let message = if let Some(tls) = source.and_then(tls_failure) {
        format!(
            "TLS with core at {base} failed: {tls}\n  hint: pass --ca (or WHARF_CA) with the \
             ca.pem of core's data dir, and use a host name the server certificate names \
             (see wharf-core serve --name)"
        )
    } else if err.is_timeout() {
        format!(
            "core at {base} did not answer in time ({detail})\n  hint: check --url / WHARF_URL \
             and that wharf-core is running and reachable"
        )
    } else {
        let scheme_hint = if base.scheme() == "http" && !err.is_connect() {
            "; core serves HTTPS: use an https:// URL"
        } else {
            ""
        };
        format!(
            "cannot reach core at {base}: {detail}\n  hint: check --url / WHARF_URL and that \
             wharf-core is running and reachable{scheme_hint}"
        )
    };
    unreachable(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(url: &str, token: Option<&str>) -> ConnectionArgs {
        ConnectionArgs {
            url: url.into(),
            token: token.map(Into::into),
            ca: None,
        }
    }

    fn message(err: anyhow::Error) -> String {
        err.downcast::<Unreachable>().expect("Unreachable").message
    }

    #[test]
    fn urls_are_built_under_the_base() {
        let c = Client::new(&conn("http://core:7443", Some("t"))).unwrap();
        assert_eq!(
            c.url(&["v1", "agents"], &[]).as_str(),
            "http://core:7443/v1/agents"
        );
        assert_eq!(
            c.url(&["v1", "agents", "a b/c", "revoke"], &[]).as_str(),
            "http://core:7443/v1/agents/a%20b%2Fc/revoke"
        );
        assert_eq!(
            c.url(
                &["v1", "tasks"],
                &[("state", "queued".into()), ("agent", "a&b".into())]
            )
            .as_str(),
            "http://core:7443/v1/tasks?state=queued&agent=a%26b"
        );
        let c = Client::new(&conn("http://proxy/wharf", Some("t"))).unwrap();
        assert_eq!(
            c.url(&["v1", "tasks"], &[]).as_str(),
            "http://proxy/wharf/v1/tasks"
        );
    }

    #[test]
    fn connection_settings_are_checked() {
        assert!(
            message(Client::new(&conn("core:7443", Some("t"))).unwrap_err()).contains("https://")
        );
        assert!(
            message(Client::new(&conn("ftp://core", Some("t"))).unwrap_err()).contains("https://")
        );
        assert!(
            message(Client::new(&conn("https://u:p@core", Some("t"))).unwrap_err())
                .contains("credentials")
        );
        assert!(
            message(Client::new(&conn("http://core", None)).unwrap_err()).contains("no API token")
        );
        assert!(
            message(Client::new(&conn("http://core", Some("a\nb"))).unwrap_err())
                .contains("characters")
        );
        let err = message(Client::new(&conn("https://core", Some("t"))).unwrap_err());
        assert!(err.contains("--ca"), "{err}");
        let mut c = conn("https://core", Some("t"));
        c.ca = Some("/nonexistent/ca.pem".into());
        let err = message(Client::new(&c).unwrap_err());
        assert!(err.contains("cannot use --ca /nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn the_token_never_shows() {
        let c = Client::new(&conn("http://core", Some("s3cret-token"))).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
