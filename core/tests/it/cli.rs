//! The `wharf` binary, run as a process (design §7: exit codes, `--output json` shapes).
//!
//! - Invalid input exits 2 before any connection (a listener on `--url` sees none).
//! - An unreachable core, a TLS failure and a refused token exit 3.
//! - A fake API (a small HTTP/1.1 server in a thread) drives `--wait`: an event stream that
//!   drops, then polling to the end.
//! - End to end against a real `wharf-core serve` child: enrollment token, an agent
//!   enrolled over HTTPS, registry login, idempotent deploys, task list/show/cancel/wait,
//!   tokens and roles, the audit log, revocation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const DIGEST: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const DEADLINE: Duration = Duration::from_secs(30);

fn image() -> String {
    format!("127.0.0.1:5000/app@{DIGEST}")
}

/// `wharf ARGS` with only the given `WHARF_*` variables set; `stdin` is piped in.
pub(crate) fn wharf_with(args: &[&str], env: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
    cmd.args(args)
        .env_remove("WHARF_URL")
        .env_remove("WHARF_TOKEN")
        .env_remove("WHARF_CA")
        .env_remove("WHARF_STICKER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("wharf runs");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin).expect("stdin written");
    drop(input);
    wait_output(child)
}

fn wharf(args: &[&str], env: &[(&str, &str)]) -> Output {
    wharf_with(args, env, b"")
}

/// Waits for a child with a deadline (a hung CLI fails the test instead of hanging it).
fn wait_output(child: Child) -> Output {
    let id = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wharf output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &id.to_string()])
                .status();
            panic!("wharf (pid {id}) did not finish within {DEADLINE:?}");
        }
    }
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The single JSON document of a `--output json` run.
fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
            stdout(out),
            stderr(out)
        )
    })
}

#[track_caller]
fn assert_exit(out: &Output, expected: i32) {
    assert_eq!(
        code(out),
        expected,
        "stdout:\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn unpinned_image_exits_2_without_contacting_core() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let expected = wharf_protocol::ImageRef::parse("127.0.0.1:5000/app:latest")
        .unwrap_err()
        .to_string();
    let args = [
        "deploy",
        "--agent",
        "web-1",
        "--target",
        "web",
        "--image",
        "127.0.0.1:5000/app:latest",
        "--url",
        &url,
        "--token",
        "t",
    ];
    let out = wharf(&args, &[]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(&expected), "{}", stderr(&out));
    assert!(stderr(&out).contains("--image"), "{}", stderr(&out));
    assert!(stdout(&out).is_empty());
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the CLI connected to core: {other:?}"),
    }

    // A closed port, a missing token and a missing CA change nothing: still 2, not 3.
    let url = format!("https://127.0.0.1:{}", closed_port());
    let out = wharf(
        &[
            "deploy", "--agent", "a", "--target", "web", "--image", "app:1", "--url", &url,
        ],
        &[],
    );
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("is not pinned"), "{}", stderr(&out));
}

#[test]
fn unpinned_hooks_exit_2_without_contacting_core() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let env = [("WHARF_URL", url.as_str()), ("WHARF_TOKEN", "t")];
    let dir = tempfile::tempdir().unwrap();
    let lock = dir.path().join("compose.lock.yml");
    std::fs::write(
        &lock,
        format!("services:\n  web:\n    image: {}\n", image()),
    )
    .unwrap();
    let img = image();
    let deploy = ["deploy", "--agent", "a", "--target", "web", "--image", &img];
    let compose = [
        "compose",
        "deploy",
        "--agent",
        "a",
        "--project",
        "shop",
        "--lock",
        lock.to_str().unwrap(),
    ];
    for (base, flag) in [
        (&deploy[..], "--pre-hook"),
        (&deploy[..], "--post-hook"),
        (&compose[..], "--pre-hook"),
        (&compose[..], "--post-hook"),
    ] {
        let args: Vec<&str> = base
            .iter()
            .copied()
            .chain([flag, "hooks/migrate:latest"])
            .collect();
        let out = wharf(&args, &env);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains(flag) && err.contains("is not pinned"),
            "{args:?}: {err}"
        );
        assert!(stdout(&out).is_empty());
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the CLI connected to core: {other:?}"),
    }
}

#[test]
fn invalid_input_exits_2_and_names_the_field() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let env = [("WHARF_URL", url.as_str()), ("WHARF_TOKEN", "t")];
    let img = image();
    let base = ["deploy", "--agent", "a", "--target", "web", "--image", &img];
    for (extra, needle) in [
        (&["--port", "80"][..], "--port: `80` names one port"),
        (&["--env", "NOVALUE"][..], "--env: `NOVALUE` has no `=`"),
        (
            &["--volume", "./data:/data"][..],
            "--volume: source `./data`",
        ),
        (&["--memory", "256"][..], "--memory: `256` is below"),
        (&["--cpus", "0"][..], "--cpus:"),
        (
            &["--restart", "sometimes"][..],
            "--restart: unknown restart policy",
        ),
        (
            &["--health-timeout", "soon"][..],
            "--health-timeout: `soon` is not a duration",
        ),
        (&["--release", "web"][..], "--release:"),
        (&["--expires-in", "0s"][..], "--expires-in:"),
    ] {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let out = wharf(&args, &env);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(needle), "{extra:?}: {}", stderr(&out));
    }

    // A usage error (clap) is 2 as well.
    let out = wharf(&["deploy", "--agent", "a"], &env);
    assert_exit(&out, 2);
    // `task evidence --verify` needs the public key (--key or WHARF_STICKER_KEY).
    let id = "00000000-0000-0000-0000-000000000000";
    let out = wharf(&["task", "evidence", id, "--verify"], &env);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--key"), "{}", stderr(&out));
    // The fleet audit's wait is checked before anything is sent.
    let out = wharf(&["audit", "--wait", "soon"], &env);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--wait"), "{}", stderr(&out));

    // A deploy file: the field and its line are named.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deploy.yaml");
    std::fs::write(
        &file,
        format!("agent: a\ntarget: web\nimage: {img}\nports:\n  - 8080:80\n  - 99999:80\n"),
    )
    .unwrap();
    let out = wharf(&["deploy", "-f", file.to_str().unwrap()], &env);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(
        err.contains("deploy.yaml: ports[1]") && err.contains("line 6"),
        "{err}"
    );
    std::fs::write(
        &file,
        format!("agent: a\ntarget: web\nimage: {img}\nimgae: x\n"),
    )
    .unwrap();
    let out = wharf(&["deploy", "-f", file.to_str().unwrap()], &env);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("unknown field `imgae`"),
        "{}",
        stderr(&out)
    );
    let out = wharf(&["deploy", "-f", "/nonexistent/deploy.yaml"], &env);
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("cannot read the deploy file"),
        "{}",
        stderr(&out)
    );

    // The registry password is never a flag, and an empty stdin is refused.
    let out = wharf(
        &[
            "registry",
            "login",
            "r.example.com",
            "-u",
            "x",
            "--password",
            "p",
        ],
        &env,
    );
    assert_exit(&out, 2);
    let out = wharf_with(
        &[
            "registry",
            "login",
            "r.example.com",
            "-u",
            "x",
            "--password-stdin",
        ],
        &env,
        b"",
    );
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no password"), "{}", stderr(&out));
}

#[test]
fn unreachable_core_exits_3() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = wharf(&["agent", "list", "--url", &url, "--token", "t"], &[]);
    assert_exit(&out, 3);
    assert!(
        stderr(&out).contains("cannot reach core"),
        "{}",
        stderr(&out)
    );

    let img = image();
    let out = wharf(
        &[
            "deploy", "--agent", "a", "--target", "web", "--image", &img, "--url", &url, "--token",
            "t",
        ],
        &[],
    );
    assert_exit(&out, 3);

    // HTTPS needs core's CA; no token at all is refused before connecting.
    let https = format!("https://127.0.0.1:{}", closed_port());
    let out = wharf(&["task", "list", "--url", &https, "--token", "t"], &[]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("--ca"), "{}", stderr(&out));
    let out = wharf(&["task", "list", "--url", &url], &[]);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("no API token"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------
// A fake operator API.

/// What the fake answers: status, content type, body.
type Reply = (u16, &'static str, String);

/// A minimal HTTP/1.1 server: one request per connection, answered by `handler`, then
/// closed. Records `METHOD PATH` of every request.
struct FakeApi {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeApi {
    fn start(handler: impl Fn(&str, &str, &str) -> Reply + Send + Sync + 'static) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let seen = seen.clone();
                let handler = handler.clone();
                std::thread::spawn(move || serve_one(stream, &seen, &*handler));
            }
        });
        FakeApi { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve_one(
    mut stream: TcpStream,
    seen: &Mutex<Vec<String>>,
    handler: &(dyn Fn(&str, &str, &str) -> Reply + Send + Sync),
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut length = 0usize;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            auth = line.trim_end().to_owned();
        }
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    seen.lock().unwrap().push(format!("{method} {path} {auth}"));
    let (status, content_type, reply) = handler(&method, &path, &String::from_utf8_lossy(&body));
    let head =
        format!("HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(reply.as_bytes());
}

fn fake_task(state: &str, result: Value) -> Value {
    json!({
        "id": "7c1e2f4a-0000-4000-8000-000000000001",
        "kind": "deploy",
        "state": state,
        "agent": "web-1",
        "target": "web",
        "idempotency_key": null,
        "attempt": 1,
        "created_at": "2024-05-01T12:00:00.000Z",
        "updated_at": "2024-05-01T12:00:05.000Z",
        "requested_by": "ci (token t1)",
        "priority": "normal",
        "expires_at": null,
        "cancel_requested": false,
        "error": null,
        "result": result
    })
}

fn failed_result() -> Value {
    json!({
        "task_id": "7c1e2f4a-0000-4000-8000-000000000001",
        "attempt": 1,
        "success": false,
        "started_at": "2024-05-01T12:00:01.000Z",
        "completed_at": "2024-05-01T12:00:05.000Z",
        "outputs": {},
        "error": "the container did not become healthy within 60s",
        "error_type": "health-failed",
        "retriable": false,
        "rolled_back": true,
        "logs": ["starting", "panic: boom"],
        "metrics": {"pull_ms": 10, "deploy_ms": 20, "health_ms": 60000}
    })
}

#[test]
fn refused_token_and_error_answers_map_to_exit_codes() {
    let api = FakeApi::start(|_, path, _| match path {
        "/v1/agents" => (
            401,
            "application/json",
            r#"{"error":{"code":"unauthorized","message":"unknown token"}}"#.into(),
        ),
        "/v1/tokens" => (
            403,
            "application/json",
            r#"{"error":{"code":"forbidden","message":"role deployer may not list tokens"}}"#
                .into(),
        ),
        "/v1/tasks" => (
            422,
            "application/json",
            r#"{"error":{"code":"invalid","message":"bad target","field":"target"}}"#.into(),
        ),
        _ => (
            404,
            "application/json",
            r#"{"error":{"code":"not_found","message":"no"}}"#.into(),
        ),
    });
    let env = [
        ("WHARF_URL", api.url.as_str()),
        ("WHARF_TOKEN", "wrong-s3cret"),
    ];
    let out = wharf(&["agent", "list"], &env);
    assert_exit(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("401") && err.contains("WHARF_TOKEN"), "{err}");
    assert!(!err.contains("wrong-s3cret"), "the token leaked: {err}");
    assert!(
        api.requests()[0].ends_with("Bearer wrong-s3cret"),
        "{:?}",
        api.requests()
    );

    let out = wharf(&["token", "list"], &env);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    let img = image();
    let out = wharf(
        &["deploy", "--agent", "a", "--target", "web", "--image", &img],
        &env,
    );
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("target: bad target"),
        "{}",
        stderr(&out)
    );

    let out = wharf(
        &["task", "show", "7c1e2f4a-0000-4000-8000-000000000001"],
        &env,
    );
    assert_exit(&out, 2);
}

#[test]
fn wait_falls_back_to_polling_when_the_stream_drops() {
    let polls = Arc::new(Mutex::new(0u32));
    let counter = polls.clone();
    let api = FakeApi::start(move |method, path, _| {
        let id = "7c1e2f4a-0000-4000-8000-000000000001";
        match (method, path) {
            ("POST", "/v1/tasks") => (201, "application/json", fake_task("queued", Value::Null).to_string()),
            ("GET", p) if p == format!("/v1/tasks/{id}/events") => (
                200,
                "text/event-stream",
                // A state, a progress line, then the stream drops before `done`.
                format!(
                    ": hello\n\nevent: state\ndata: {{\"type\":\"state\",\"task_id\":\"{id}\",\"state\":\"running\"}}\n\n\
                     event: progress\ndata: {{\"type\":\"progress\",\"task_id\":\"{id}\",\"step\":\"pull\",\"line\":\"pulling app\"}}\n\n"
                ),
            ),
            ("GET", p) if p == format!("/v1/tasks/{id}") => {
                let mut n = counter.lock().unwrap();
                *n += 1;
                let task = if *n < 2 {
                    fake_task("running", Value::Null)
                } else {
                    fake_task("failed", failed_result())
                };
                (200, "application/json", task.to_string())
            }
            _ => (404, "application/json", "{}".into()),
        }
    });
    let env = [("WHARF_URL", api.url.as_str()), ("WHARF_TOKEN", "t")];
    let img = image();
    let args = [
        "deploy", "--agent", "web-1", "--target", "web", "--image", &img, "--wait",
    ];
    let out = wharf(&args, &env);
    assert_exit(&out, 1);
    let text = stdout(&out);
    assert!(text.contains("on web-1/web: failed"), "{text}");
    assert!(
        text.contains("[health-failed] the container did not become healthy"),
        "{text}"
    );
    assert!(text.contains("rolled back:  yes"), "{text}");
    assert!(text.contains("panic: boom"), "{text}");
    let err = stderr(&out);
    assert!(
        err.contains("RUNNING") && err.contains("[pull] pulling app"),
        "{err}"
    );
    assert!(*polls.lock().unwrap() >= 2);
    let events = api
        .requests()
        .iter()
        .filter(|r| r.contains("/events"))
        .count();
    assert!(events >= 2, "the stream is reopened: {:?}", api.requests());

    // JSON: the final task, one document.
    *polls.lock().unwrap() = 0;
    let mut args = args.to_vec();
    args.extend(["--output", "json"]);
    let out = wharf(&args, &env);
    assert_exit(&out, 1);
    let task = json_of(&out);
    assert_eq!(task["state"], "failed");
    assert_eq!(task["result"]["rolled_back"], true);
}

// ---------------------------------------------------------------------------------------
// End to end against `wharf-core serve`.

/// A running `wharf-core serve`, killed (SIGKILL) on drop.
pub(crate) struct Core {
    child: Child,
    pub(crate) url: String,
    admin: String,
    ca: PathBuf,
    log: PathBuf,
}

impl Core {
    fn start(dir: &Path) -> Core {
        Core::start_on(dir, "127.0.0.1:0")
    }

    /// Starts `wharf-core serve` on `DIR/data`, listening on `listen` (TCP and UDP), with
    /// its log in `DIR/core.log` (appended to, so a restart keeps the earlier log).
    pub(crate) fn start_on(dir: &Path, listen: &str) -> Core {
        let data_dir = dir.join("data");
        let log = dir.join("core.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf-core"));
        cmd.args(["serve", "--listen", listen, "--data-dir"])
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(log_file);
        for var in [
            "WHARF_DATA_DIR",
            "WHARF_LISTEN",
            "WHARF_NAMES",
            "WHARF_MASTER_KEY",
            "WHARF_CONFIG",
        ] {
            cmd.env_remove(var);
        }
        let mut child = cmd.spawn().expect("wharf-core starts");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + DEADLINE;
        let mut url = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                let _ = child.kill();
                panic!(
                    "wharf-core printed no ready block; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            };
            if let Some(u) = line.strip_prefix("export WHARF_URL=") {
                url = Some(u.to_owned());
            }
            if line.starts_with("export WHARF_CA=") {
                break;
            }
        }
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        Core {
            child,
            url: url.expect("WHARF_URL line"),
            admin,
            ca: data_dir.join("ca.pem"),
            log,
        }
    }

    /// The port core listens on (TCP and UDP).
    pub(crate) fn port(&self) -> u16 {
        self.url
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("WHARF_URL ends with the port")
    }

    /// `kill -9`, and waits for the process to be gone.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn env(&self) -> [(&str, &str); 3] {
        [
            ("WHARF_URL", self.url.as_str()),
            ("WHARF_TOKEN", self.admin.as_str()),
            ("WHARF_CA", self.ca.to_str().unwrap()),
        ]
    }

    /// Runs `wharf ARGS --output json` as admin; expects `code`; returns the document.
    #[track_caller]
    fn json(&self, args: &[&str], expected: i32) -> Value {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = wharf(&all, &self.env());
        assert_exit(&out, expected);
        json_of(&out)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "core log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

/// Enrolls agent `name` with its one-time token, as an agent does (pinned CA, CSR,
/// X25519 key).
fn enroll(core: &Core, name: &str, token: &str, ca_hash: &str) {
    let (_, csr_pem) = wharf_core::pki::generate_agent_key_and_csr(name).unwrap();
    let seal = wharf_protocol::seal::AgentSealKey::generate().unwrap();
    let pinned: wharf_core::pki::CaFingerprint = ca_hash.parse().unwrap();
    let config = wharf_core::pki::enrollment_client_config(pinned, &[b"http/1.1"]).unwrap();
    let url = format!("{}/agent/v1/enroll", core.url);
    let body = json!({
        "token": token,
        "name": name,
        "csr_pem": csr_pem,
        "x25519_public": hex::encode(seal.public()),
        "version": "0.1.0",
        "capabilities": ["docker"],
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(config)
            .build()
            .unwrap();
        let resp = client.post(url).json(&body).send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "enroll: {status} {text}");
    });
}

fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

#[test]
fn end_to_end_against_wharf_core() {
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path());
    let img = image();

    // Enrollment token: the design §7 shape; the text form shows how to start the agent.
    let created = core.json(
        &[
            "agent", "token", "create", "--name", "web-1", "--ttl", "30m",
        ],
        0,
    );
    assert_eq!(keys(&created), ["ca_hash", "expires_at", "name", "token"]);
    assert_eq!(created["name"], "web-1");
    let ca_hash = created["ca_hash"].as_str().unwrap().to_owned();
    assert!(ca_hash.starts_with("sha256:"), "{created}");
    enroll(&core, "web-1", created["token"].as_str().unwrap(), &ca_hash);
    let out = wharf(&["agent", "token", "create", "--name", "db-1"], &core.env());
    assert_exit(&out, 0);
    assert!(
        stdout(&out).contains(&format!("--ca-hash {ca_hash}")),
        "{}",
        stdout(&out)
    );

    // Agents: an array of {name, id, state, transport, version, capabilities, last_seen}.
    let agents = core.json(&["agent", "list"], 0);
    let list = agents.as_array().expect("an array");
    assert_eq!(list.len(), 1, "{agents}");
    for key in [
        "name",
        "id",
        "state",
        "transport",
        "version",
        "capabilities",
        "last_seen",
    ] {
        assert!(list[0].get(key).is_some(), "{key} missing: {agents}");
    }
    assert_eq!(list[0]["name"], "web-1");
    assert_eq!(list[0]["state"], "offline");
    let out = wharf(&["agent", "list"], &core.env());
    assert_exit(&out, 0);
    let table = stdout(&out);
    assert!(table.starts_with("NAME   ID"), "{table}");
    assert!(
        table.contains("STATE    TRANSPORT  VERSION  LAST SEEN"),
        "{table}"
    );
    assert!(
        table.contains("web-1") && table.contains("offline"),
        "{table}"
    );

    // Registry login: the password comes from stdin and never comes back.
    let mut env = core.env().to_vec();
    let out = wharf_with(
        &[
            "registry",
            "login",
            "127.0.0.1:5000",
            "--username",
            "alice",
            "--password-stdin",
            "-o",
            "json",
        ],
        &env,
        b"pa55word-xyz\n",
    );
    assert_exit(&out, 0);
    let reg = json_of(&out);
    assert_eq!(
        (reg["host"].as_str(), reg["username"].as_str()),
        (Some("127.0.0.1:5000"), Some("alice"))
    );
    assert!(!stdout(&out).contains("pa55word") && !stderr(&out).contains("pa55word"));

    // Two deploys with one idempotency key: one task (the second answers the first).
    let deploy = [
        "deploy",
        "--agent",
        "web-1",
        "--target",
        "web",
        "--image",
        &img,
        "--release",
        "app@1.0",
        "--port",
        "8080:80",
        "--env",
        "MODE=prod",
        "--health-http",
        "80/healthz",
        "--idempotency-key",
        "ci-42",
    ];
    let first = core.json(&deploy, 0);
    let task_keys = keys(&first);
    for k in [
        "id",
        "kind",
        "state",
        "agent",
        "target",
        "idempotency_key",
        "attempt",
        "created_at",
        "updated_at",
        "result",
    ] {
        assert!(task_keys.contains(&k), "{k} missing: {first}");
    }
    assert_eq!(first["kind"], "deploy");
    assert_eq!(first["state"], "queued");
    assert_eq!(first["idempotency_key"], "ci-42");
    assert_eq!(first["result"], Value::Null);
    let mut all = deploy.to_vec();
    all.extend(["-o", "json"]);
    let out = wharf(&all, &env);
    assert_exit(&out, 0);
    let second = json_of(&out);
    assert_eq!(second["id"], first["id"]);
    assert!(stderr(&out).contains("already exists"), "{}", stderr(&out));
    // The same key with another payload: 409, nothing submitted, exit 2.
    let mut other = deploy.to_vec();
    other.extend(["--cpus", "1"]);
    let out = wharf(&other, &env);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));

    // The same deploy from a file (another key): a second task.
    let file = dir.path().join("deploy.yaml");
    std::fs::write(
        &file,
        format!(
            "agent: web-1\ntarget: web\nimage: {img}\nrelease: app@1.0\nports: [\"8080:80\"]\n\
             env:\n  MODE: prod\nhealth:\n  http: 80/healthz\nidempotency_key: ci-43\n"
        ),
    )
    .unwrap();
    let from_file = core.json(&["deploy", "-f", file.to_str().unwrap()], 0);
    assert_ne!(from_file["id"], first["id"]);

    // task list (filters) and show.
    let tasks = core.json(&["task", "list"], 0);
    assert_eq!(tasks.as_array().unwrap().len(), 2, "{tasks}");
    assert_eq!(tasks[0]["id"], first["id"]);
    let queued = core.json(
        &["task", "list", "--state", "queued", "--agent", "web-1"],
        0,
    );
    assert_eq!(queued.as_array().unwrap().len(), 2);
    let none = core.json(&["task", "list", "--state", "running"], 0);
    assert_eq!(none, json!([]));
    let out = wharf(&["task", "list"], &core.env());
    assert_exit(&out, 0);
    assert!(stdout(&out).starts_with("ID "), "{}", stdout(&out));
    let id = first["id"].as_str().unwrap().to_owned();
    let shown = core.json(&["task", "show", &id], 0);
    assert_eq!(shown["id"], first["id"]);
    let out = wharf(
        &["task", "show", "00000000-0000-4000-8000-000000000000"],
        &core.env(),
    );
    assert_exit(&out, 2);

    // Cancel a queued task; `task wait` follows it to its end: cancelled is exit 1.
    let cancelled = core.json(&["task", "cancel", &id], 0);
    assert_eq!(cancelled["state"], "cancelled");
    let waited = core.json(&["task", "wait", &id], 1);
    assert_eq!(waited["state"], "cancelled");
    let out = wharf(&["task", "cancel", &id], &core.env());
    assert_exit(&out, 2);

    // --wait on a task that expires (the agent is offline): the events end with `done`.
    let out = wharf(
        &[
            "rollback",
            "--agent",
            "web-1",
            "--target",
            "api",
            "--to",
            DIGEST,
            "--expires-in",
            "1s",
            "--wait",
            "-o",
            "json",
        ],
        &env,
    );
    assert_exit(&out, 1);
    let expired = json_of(&out);
    assert_eq!(expired["kind"], "rollback");
    assert_eq!(expired["state"], "expired");

    // Read-only tasks can be submitted without waiting.
    let inspect = core.json(
        &[
            "inspect",
            "--agent",
            "web-1",
            "--target",
            "web",
            "--no-wait",
        ],
        0,
    );
    assert_eq!(inspect["kind"], "inspect");
    let sticker = core.json(
        &[
            "sticker",
            "read",
            "--agent",
            "web-1",
            "--target",
            "web",
            "--no-wait",
        ],
        0,
    );
    assert_eq!(sticker["kind"], "read-sticker");
    let health = core.json(
        &[
            "health",
            "--agent",
            "web-1",
            "--target",
            "web",
            "--health-tcp",
            "80",
            "--no-wait",
        ],
        0,
    );
    assert_eq!(health["kind"], "health-check");
    // An unknown agent: 404, nothing submitted.
    let out = wharf(
        &[
            "inspect",
            "--agent",
            "ghost",
            "--target",
            "web",
            "--no-wait",
        ],
        &core.env(),
    );
    assert_exit(&out, 2);

    // API tokens and roles: a deployer may deploy but not create enrollment tokens (403: 3).
    let created = core.json(
        &["token", "create", "--role", "deployer", "--name", "ci"],
        0,
    );
    assert_eq!(keys(&created), ["id", "name", "role", "token"]);
    let deployer = created["token"].as_str().unwrap().to_owned();
    let tokens = core.json(&["token", "list"], 0);
    assert!(
        tokens.as_array().unwrap().iter().any(|t| t["name"] == "ci"),
        "{tokens}"
    );
    assert!(!tokens.to_string().contains(&deployer));
    env[1] = ("WHARF_TOKEN", deployer.as_str());
    let out = wharf(&["agent", "token", "create", "--name", "x"], &env);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    let out = wharf(
        &[
            "deploy", "--agent", "web-1", "--target", "web2", "--image", &img,
        ],
        &env,
    );
    assert_exit(&out, 0);
    let revoked = core.json(&["token", "revoke", created["id"].as_str().unwrap()], 0);
    assert!(revoked.is_object(), "{revoked}");
    let out = wharf(&["task", "list"], &env);
    assert_exit(&out, 3);

    // A bad token, a wrong CA, a closed port: all exit 3.
    let mut bad = core.env();
    bad[1] = ("WHARF_TOKEN", "wharf-api-not-a-real-token");
    let out = wharf(&["agent", "list"], &bad);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("401"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("not-a-real-token"));
    let other_ca_dir = dir.path().join("other");
    let other = wharf_core::pki::CorePki::load_or_create(
        &other_ca_dir,
        &[] as &[&str],
        std::time::SystemTime::now(),
    )
    .unwrap();
    drop(other);
    let other_ca = other_ca_dir.join("ca.pem");
    let mut wrong_ca = core.env();
    wrong_ca[2] = ("WHARF_CA", other_ca.to_str().unwrap());
    let out = wharf(&["agent", "list"], &wrong_ca);
    assert_exit(&out, 3);
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    let closed = format!("https://127.0.0.1:{}", closed_port());
    let mut down = core.env();
    down[0] = ("WHARF_URL", closed.as_str());
    let out = wharf(&["agent", "list"], &down);
    assert_exit(&out, 3);

    // Audit log: entries, and a verified chain.
    let log = core.json(&["audit-log"], 0);
    let entries = log.as_array().expect("an array");
    assert!(
        entries.iter().any(|e| e["action"] == "task.submit"),
        "{log}"
    );
    assert!(!log.to_string().contains("pa55word"));
    let verified = core.json(&["audit-log", "verify"], 0);
    assert_eq!(verified["ok"], true);
    let out = wharf(&["audit-log", "verify"], &core.env());
    assert_exit(&out, 0);
    assert!(stdout(&out).contains("intact"), "{}", stdout(&out));

    // Revoking the agent.
    let agent = core.json(&["agent", "revoke", "web-1"], 0);
    assert_eq!(agent["state"], "revoked");
    let out = wharf(
        &[
            "deploy", "--agent", "web-1", "--target", "web", "--image", &img,
        ],
        &core.env(),
    );
    assert_exit(&out, 2);
}

/// An audit log entry edited in the store while core was down: `wharf audit-log verify`
/// exits 1 and names that entry; the entries before it are intact.
#[test]
fn a_broken_audit_log_link_is_found_and_named() {
    use wharf_core::store::{Batch, SledStore, Store, Table};

    let dir = tempfile::tempdir().unwrap();
    let core = Core::start(dir.path());
    for name in ["ci-1", "ci-2", "ci-3", "ci-4"] {
        core.json(
            &["token", "create", "--role", "deployer", "--name", name],
            0,
        );
    }
    let verified = core.json(&["audit-log", "verify"], 0);
    assert_eq!(verified["ok"], true, "{verified}");
    let entries = verified["entries"].as_u64().unwrap();
    assert!(entries >= 4, "{verified}");
    core.kill();

    // Someone with access to the data dir rewrites the third entry's detail.
    let store_dir = dir.path().join("data").join(wharf_core::app::files::STORE);
    let edited_seq = {
        let store = SledStore::open(&store_dir).unwrap();
        let page = store.scan_from(Table::AuditLog, &[], 16).unwrap();
        let (key, value) = page.get(2).cloned().expect("a third entry");
        let mut entry: Value = serde_json::from_slice(&value).unwrap();
        entry["detail"] = json!({"name": "nobody-saw-this"});
        let mut batch = Batch::new();
        batch.put(Table::AuditLog, key, serde_json::to_vec(&entry).unwrap());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(store.commit(batch)).unwrap();
        entry["seq"].as_u64().unwrap()
    };

    let core = Core::start(dir.path());
    let broken = core.json(&["audit-log", "verify"], 1);
    assert_eq!(broken["ok"], false, "{broken}");
    assert_eq!(broken["broken_at"].as_u64(), Some(edited_seq), "{broken}");
    let out = wharf(&["audit-log", "verify"], &core.env());
    assert_exit(&out, 1);
    assert!(
        stdout(&out).contains(&format!("BROKEN at entry {edited_seq}")),
        "{}",
        stdout(&out)
    );
}
