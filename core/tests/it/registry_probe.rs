//! The registry probe against small in-process registries on loopback (plain HTTP, as
//! for any loopback registry): the Bearer token flow of `WWW-Authenticate`, the media
//! types asked for, and the time bound of a registry that never answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, head};
use axum::{Json, Router};
use wharf_core::registry_probe::{CredentialSource, Prober, Pullable, REQUEST_TIMEOUT};
use wharf_protocol::seal::RegistryCredentials;

const TOKEN: &str = "tok-123";
const BASIC: &str = "Basic dTpwdw=="; // u:pw

#[derive(Clone, Default)]
struct Fake {
    known: String,
    realm: String,
    accepts: Arc<Mutex<Vec<String>>>,
    token_queries: Arc<Mutex<Vec<(String, String)>>>,
}

async fn manifest(
    State(fake): State<Fake>,
    Path((namespace, name, digest)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let repo = format!("{namespace}/{name}");
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    fake.accepts.lock().unwrap().push(accept.to_string());
    let bearer = format!("Bearer {TOKEN}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(bearer.as_str())
    {
        let challenge = format!(
            r#"Bearer realm="{}",service="fake-registry",scope="repository:{repo}:pull""#,
            fake.realm
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    if repo == "team/app" && digest == fake.known {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn token(
    State(fake): State<Fake>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> impl IntoResponse {
    fake.token_queries.lock().unwrap().push((
        query.get("service").cloned().unwrap_or_default(),
        query.get("scope").cloned().unwrap_or_default(),
    ));
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(BASIC)
    {
        Json(serde_json::json!({ "token": TOKEN })).into_response()
    } else {
        StatusCode::UNAUTHORIZED.into_response()
    }
}

fn credentials(host: String) -> CredentialSource {
    Arc::new(move |registry: &str| {
        (registry == host).then(|| RegistryCredentials {
            registry: host.clone(),
            username: "u".into(),
            password: "pw".into(),
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bearer_flow_is_followed_with_the_stored_credentials() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let known = format!("sha256:{}", "a".repeat(64));
    let fake = Fake {
        known: known.clone(),
        realm: format!("http://{host}/token"),
        ..Fake::default()
    };
    let app = Router::new()
        .route("/v2/{namespace}/{name}/manifests/{digest}", head(manifest))
        .route("/token", get(token))
        .with_state(fake.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut probe = Prober::new(credentials(host.clone())).unwrap();
    let repo = format!("{host}/team/app");
    assert_eq!(probe.check(&repo, &known).await, Pullable::Yes);
    let other = format!("sha256:{}", "b".repeat(64));
    assert!(matches!(
        probe.check(&repo, &other).await,
        Pullable::No { .. }
    ));
    // Cached: asking again sends nothing.
    let asked = fake.accepts.lock().unwrap().len();
    assert_eq!(probe.check(&repo, &known).await, Pullable::Yes);
    assert_eq!(fake.accepts.lock().unwrap().len(), asked);
    // The token was fetched once, for the challenge's service and scope; the token is
    // reused for the next digest.
    assert_eq!(
        fake.token_queries.lock().unwrap().as_slice(),
        [(
            "fake-registry".to_string(),
            "repository:team/app:pull".to_string()
        )]
    );
    for accept in fake.accepts.lock().unwrap().iter() {
        assert!(
            accept.contains("application/vnd.oci.image.index.v1+json"),
            "{accept}"
        );
        assert!(
            accept.contains("application/vnd.docker.distribution.manifest.v2+json"),
            "{accept}"
        );
    }

    // Without stored credentials the token server refuses: unknown, saying so.
    let mut anonymous = Prober::new(Arc::new(|_: &str| None)).unwrap();
    let answer = anonymous.check(&repo, &known).await;
    assert!(
        matches!(&answer, Pullable::Unknown { reason } if reason.contains("token server") && reason.contains("no credentials")),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_never_answers_costs_one_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut probe = Prober::new(Arc::new(|_: &str| None)).unwrap();
    let repo = format!("{host}/app");
    let started = Instant::now();
    let first = probe
        .check(&repo, &format!("sha256:{}", "1".repeat(64)))
        .await;
    let took = started.elapsed();
    assert!(
        matches!(&first, Pullable::Unknown { reason } if reason.contains("unreachable")),
        "{first:?}"
    );
    assert!(
        took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_secs(2),
        "{took:?}"
    );
    // The next digest of that registry is unknown at once.
    let started = Instant::now();
    let second = probe
        .check(&repo, &format!("sha256:{}", "2".repeat(64)))
        .await;
    assert!(matches!(second, Pullable::Unknown { .. }));
    assert!(started.elapsed() < Duration::from_millis(200));
}
