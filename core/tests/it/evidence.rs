//! Evidence records and `wharf history` end to end: the real sled store, the API over
//! TLS, the `wharf` binary, and a core restart on the same data dir.

use reqwest::StatusCode;
use serde_json::{json, Value};
use wharf_core::engine::{Session, SessionCommand};
use wharf_protocol::{DeploySpec, ErrorType, TaskPayload, TaskResult, Timestamp};
use wharf_sticker::{Keyring, Verification};

use crate::api::Server;

// Port 9 (discard) is closed here: the registry probe finds it unreachable at once.
const REPO: &str = "127.0.0.1:9/app";
const DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

fn image(n: char) -> String {
    format!("{REPO}@sha256:{}", n.to_string().repeat(64))
}

fn digest(n: char) -> String {
    format!("sha256:{}", n.to_string().repeat(64))
}

/// Submits a deploy of `image(n)` through the API, runs it as the agent would and reports
/// `result`.
async fn deploy(
    server: &Server,
    session: &mut Session,
    n: char,
    result: impl FnOnce(uuid::Uuid) -> TaskResult,
) -> String {
    let payload = serde_json::to_value(TaskPayload::Deploy(DeploySpec::new(image(n)))).unwrap();
    let body = json!({"agent": "web-1", "target": "web", "payload": payload, "max_attempts": 1});
    let (status, task) = server.post(&server.admin, "/v1/tasks", &body).await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let id: uuid::Uuid = task["id"].as_str().unwrap().parse().unwrap();
    match tokio::time::timeout(DEADLINE, session.commands.recv()).await {
        Ok(Some(SessionCommand::Assign(t))) => assert_eq!(t.id, id),
        other => panic!("expected the Assign of {id}, got {other:?}"),
    }
    let engine = &server.app.engine;
    engine.accepted("web-1", id, 1).await.unwrap();
    engine.result("web-1", result(id)).await.unwrap();
    id.to_string()
}

fn ok_running(n: char) -> impl FnOnce(uuid::Uuid) -> TaskResult {
    move |id| {
        let mut r = TaskResult::success(id, 1, Timestamp::now());
        r.outputs.insert("image".into(), image(n));
        r.outputs.insert("running_digest".into(), digest(n));
        r
    }
}

async fn evidence_bytes(server: &Server, token: &str, id: &str) -> (StatusCode, Vec<u8>) {
    let response = server
        .client
        .get(format!("{}/v1/tasks/{id}/evidence", server.base_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.bytes().await.unwrap().to_vec())
}

/// Runs the `wharf` binary against `server` (off the async runtime).
async fn wharf(server: &Server, args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let env = [
        ("WHARF_URL".to_string(), server.base_url().to_string()),
        ("WHARF_TOKEN".to_string(), server.admin.clone()),
        (
            "WHARF_CA".to_string(),
            server.data_dir.join("ca.pem").display().to_string(),
        ),
    ];
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::cli::wharf_with(&args, &env, b"")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evidence_and_history_through_the_api_and_the_cli_survive_a_restart() {
    let server = Server::start().await;
    server.enroll("web-1").await;
    let mut session = server
        .app
        .engine
        .open_session("web-1", "test")
        .await
        .unwrap();

    let a = deploy(&server, &mut session, 'a', ok_running('a')).await;
    let b = deploy(&server, &mut session, 'b', |id| {
        let mut r = ok_running('b')(id);
        r.outputs.insert("previous_digest".into(), digest('a'));
        r.outputs.insert("post_hook.ok".into(), "true".into());
        r.outputs
            .insert("post_hook.message".into(), "smoke test passed".into());
        r
    })
    .await;
    let c = deploy(&server, &mut session, 'c', |id| {
        let mut r = TaskResult::failure(
            id,
            1,
            Timestamp::now(),
            ErrorType::HealthFailed,
            "unhealthy",
        );
        r.retriable = false;
        r.rolled_back = true;
        r.outputs.insert("previous_digest".into(), digest('b'));
        r.outputs.insert("running_digest".into(), digest('b'));
        r.metrics.health_ms = Some(2500);
        r
    })
    .await;
    let d = deploy(&server, &mut session, 'd', ok_running('d')).await;

    // The evidence of b verifies with core's public sticker key, and says what it did.
    let keyring =
        Keyring::parse(&std::fs::read_to_string(server.data_dir.join("sticker.pub")).unwrap())
            .unwrap();
    let auditor = server.token("auditor").await;
    let (status, bytes_b) = evidence_bytes(&server, &auditor, &b).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes_b)
    );
    let Verification::Valid(e) = wharf_sticker::verify_evidence(&bytes_b, &keyring) else {
        panic!("evidence of b does not verify");
    };
    assert_eq!(e.before.components[0].digest, digest('a'));
    assert_eq!(e.after.components[0].digest, digest('b'));
    assert_eq!(e.requested.components[0].digest, digest('b'));
    assert_eq!(e.hooks["post_hook.message"], "smoke test passed");
    let (_, bytes_c) = evidence_bytes(&server, &auditor, &c).await;
    let e = wharf_sticker::verify_evidence(&bytes_c, &keyring)
        .into_valid()
        .unwrap();
    assert_eq!(
        (e.outcome.state.as_str(), e.outcome.rolled_back),
        ("failed", true)
    );
    assert_eq!(e.after.components[0].digest, digest('b'));

    // The audit log's task.finished entry of b holds the document's hash.
    let (_, log) = server.get(&server.admin, "/v1/audit-log?limit=1000").await;
    let entries = log
        .as_array()
        .cloned()
        .unwrap_or_else(|| log["entries"].as_array().cloned().unwrap());
    let finished = entries
        .iter()
        .find(|e| e["action"] == "task.finished" && e["target"] == b.as_str())
        .expect("a task.finished entry for b");
    assert_eq!(
        finished["detail"]["evidence_sha256"],
        wharf_sticker::sha256_hex(&bytes_b)
    );

    // No evidence: an inspect, an unknown task, a malformed id (404 as for every task path).
    let payload = serde_json::to_value(TaskPayload::Inspect).unwrap();
    let (_, inspect) = server
        .post(
            &server.admin,
            "/v1/tasks",
            &json!({"agent": "web-1", "target": "web", "payload": payload}),
        )
        .await;
    let (status, body) = server
        .get(
            &auditor,
            &format!("/v1/tasks/{}/evidence", inspect["id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no evidence"),
        "{body}"
    );
    let (status, _) = server
        .get(
            &auditor,
            "/v1/tasks/00000000-0000-0000-0000-000000000000/evidence",
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server.get(&auditor, "/v1/tasks/nope/evidence").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // History: newest first; d runs, b is the kept previous, c failed, a is probed
    // (its registry is unreachable: unknown, not an error).
    let (status, history) = server
        .get(&auditor, "/v1/history?agent=web-1&target=web")
        .await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let rows: Vec<(&str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["task_id"].as_str().unwrap(),
                e["rollback"]["status"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (d.as_str(), "running"),
            (c.as_str(), "not_applicable"),
            (b.as_str(), "kept"),
            (a.as_str(), "unknown"),
        ],
        "{history:#}"
    );
    assert!(history[3]["rollback"]["detail"]
        .as_str()
        .unwrap()
        .contains("unreachable"));
    assert_eq!(
        history[2]["rollback"]["command"],
        "wharf rollback --agent web-1 --target web"
    );
    assert_eq!(history[1]["rolled_back"], true);
    // A failed entry shows what it tried.
    assert_eq!(history[1]["components"][0]["digest"], digest('c'));
    assert_eq!(history[2]["components"][0]["digest"], digest('b'));
    for (query, status) in [
        ("/v1/history?agent=web-1", StatusCode::BAD_REQUEST),
        (
            "/v1/history?agent=web-1&target=web&project=web",
            StatusCode::BAD_REQUEST,
        ),
        ("/v1/history?agent=nobody&target=web", StatusCode::NOT_FOUND),
        ("/v1/history?agent=web-1&project=web", StatusCode::OK),
    ] {
        assert_eq!(server.get(&auditor, query).await.0, status, "{query}");
    }

    // The CLI prints the exact stored bytes; --verify checks them with sticker.pub.
    let key = server.data_dir.join("sticker.pub").display().to_string();
    let out = wharf(
        &server,
        &["task", "evidence", &b, "--verify", "--key", &key],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, bytes_b);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Evidence verified"));
    // Saved, it verifies offline; edited, it does not (exit 1); no key file: exit 2.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("b.json");
    std::fs::write(&saved, &out.stdout).unwrap();
    let saved = saved.display().to_string();
    let out = wharf(
        &server,
        &[
            "task",
            "verify-evidence",
            &saved,
            "--key",
            &key,
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let verdict: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict["valid"], true);
    let edited = dir.path().join("edited.json");
    let text = String::from_utf8(bytes_b.clone())
        .unwrap()
        .replace(&digest('a'), &digest('e'));
    std::fs::write(&edited, text).unwrap();
    let out = wharf(
        &server,
        &[
            "task",
            "verify-evidence",
            &edited.display().to_string(),
            "--key",
            &key,
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT verified"));
    let out = wharf(
        &server,
        &["task", "verify-evidence", &saved, "--key", "/nonexistent"],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let out = wharf(
        &server,
        &["task", "evidence", inspect["id"].as_str().unwrap()],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a task without evidence: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // wharf history: JSON as the API answers it, a table on text, exit 2 for bad input.
    let out = wharf(
        &server,
        &[
            "history", "--agent", "web-1", "--target", "web", "-o", "json",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let cli_history: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cli_history, history);
    let out = wharf(&server, &["history", "--agent", "web-1", "--target", "web"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("TASK"), "{text}");
    assert!(
        text.contains("restores the kept previous container"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "To go back to {b}: wharf rollback --agent web-1 --target web"
        )),
        "{text}"
    );
    assert_eq!(
        wharf(&server, &["history", "--agent", "web-1"])
            .await
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        wharf(
            &server,
            &["history", "--agent", "nobody", "--target", "web"]
        )
        .await
        .status
        .code(),
        Some(2)
    );

    // A restart on the same data dir: the same bytes, the same history.
    drop(session);
    let tmp = server.stop().await;
    let server = Server::start_in(tmp).await;
    let (status, again) = evidence_bytes(&server, &server.admin, &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, bytes_b);
    let (_, after) = server
        .get(&server.admin, "/v1/history?agent=web-1&target=web")
        .await;
    assert_eq!(after, history);
}
