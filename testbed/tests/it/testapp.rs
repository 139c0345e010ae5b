//! The test app as a plain process: routes, env switches, the probe
//! subcommand, and tolerance of bad requests.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wharf_testbed::http;
use wharf_testbed::images::{self, BuildOptions, TestVersion};

use crate::{lines_of, stderr_of, wait_exit, wait_for_line, KillOnDrop};

const START: Duration = Duration::from_secs(10);

/// The static v1 binary, built once for the whole module.
fn binary() -> &'static PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        images::build_binary(TestVersion::V1, &BuildOptions::default()).expect("build testapp")
    })
}

struct App {
    _process: KillOnDrop,
    addr: String,
    port: u16,
    lines: Receiver<String>,
}

/// Starts the app on a free port and waits for its "listening" line.
fn start(env: &[(&str, &str)]) -> App {
    for _ in 0..5 {
        let port = wharf_testbed::free_port().unwrap();
        let mut child = Command::new(binary())
            .env("TESTAPP_PORT", port.to_string())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let mut process = KillOnDrop(child);
        let deadline = Instant::now() + START;
        loop {
            match lines.recv_timeout(Duration::from_millis(50)) {
                Ok(line) if line.contains("listening on") => {
                    return App {
                        _process: process,
                        addr: format!("127.0.0.1:{port}"),
                        port,
                        lines,
                    };
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    assert!(Instant::now() < deadline, "app did not start");
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the app exited.
                    let status = process.0.wait().unwrap();
                    let err = stderr_of(&mut process.0);
                    // Someone took the port between probing and binding: retry.
                    assert!(
                        err.contains("cannot listen"),
                        "app exited ({status}): {err}"
                    );
                    break;
                }
            }
        }
    }
    panic!("no free port for the test app");
}

/// Sends raw bytes, returns whatever the app answered before closing.
fn raw(addr: &str, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn probe(port: u16, path: Option<&str>) -> i32 {
    let mut cmd = Command::new(binary());
    cmd.arg("probe").env("TESTAPP_PORT", port.to_string());
    if let Some(path) = path {
        cmd.arg(path);
    }
    cmd.stdout(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap_or(-1)
}

#[test]
fn serves_routes_and_logs_each_request() {
    let app = start(&[]);
    let root = http::get(&app.addr, "/").unwrap();
    assert_eq!(root.status, 200);
    assert!(root.text().contains("wharf testapp v1"), "{}", root.text());
    let health = http::get(&app.addr, "/healthz").unwrap();
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    let version = http::get(&app.addr, "/version?x=1").unwrap();
    assert_eq!((version.status, version.text().as_str()), (200, "v1\n"));
    assert_eq!(http::get(&app.addr, "/nope").unwrap().status, 404);
    let post = http::request("POST", &app.addr, "/", &[]).unwrap();
    assert_eq!(
        (post.status, post.header("Allow")),
        (405, Some("GET, HEAD"))
    );
    let head = http::request("HEAD", &app.addr, "/version", &[]).unwrap();
    assert_eq!(
        (head.status, head.header("Content-Length")),
        (200, Some("3"))
    );

    let lines = wait_for_line(&app.lines, "\"HEAD /version\" 200", START);
    for expected in [
        "\"GET /\" 200",
        "\"GET /healthz\" 200",
        "\"GET /version\" 200",
        "\"GET /nope\" 404",
        "\"POST /\" 405",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "no log line with {expected}: {lines:?}"
        );
    }

    assert_eq!(probe(app.port, None), 0);
    assert_eq!(probe(app.port, Some("version")), 0);
    assert_eq!(probe(app.port, Some("/nope")), 1);
}

#[test]
fn survives_bad_requests() {
    let app = start(&[]);
    for bad in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
        b"GET nopath HTTP/1.1\r\n\r\n",
        b"\xff\xfe\xfd / HTTP/1.1\r\n\r\n",
    ] {
        let answer = raw(&app.addr, bad);
        assert!(answer.starts_with("HTTP/1.1 400 "), "{bad:?} -> {answer:?}");
    }
    // A head that never ends is cut off at 8 KiB.
    let mut huge = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    assert!(raw(&app.addr, &huge).starts_with("HTTP/1.1 400 "));
    // A connection closed early, or inside the head.
    assert_eq!(raw(&app.addr, b""), "");
    assert!(raw(&app.addr, b"GET / HT").starts_with("HTTP/1.1 400 "));
    // Still serving.
    assert_eq!(http::get(&app.addr, "/healthz").unwrap().status, 200);
    wait_for_line(&app.lines, "bad request", START);
}

#[test]
fn failing_health_switch() {
    let app = start(&[("TESTAPP_FAIL_HEALTH", "1")]);
    assert_eq!(http::get(&app.addr, "/healthz").unwrap().status, 500);
    assert_eq!(http::get(&app.addr, "/version").unwrap().text(), "v1\n");
    assert_eq!(probe(app.port, None), 1);
    drop(app);
    // Nothing listens on a freed port: the probe fails too.
    let port = wharf_testbed::free_port().unwrap();
    assert_eq!(probe(port, None), 1);
}

#[test]
fn crash_at_start_exits_1() {
    let mut child = Command::new(binary())
        .env("TESTAPP_CRASH_AT_START", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut child, START);
    assert_eq!(status.code(), Some(1));
    assert!(stderr_of(&mut child).contains("crashing at start"));

    // An unusable port is invalid input.
    let mut child = Command::new(binary())
        .env("TESTAPP_PORT", "http")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(wait_exit(&mut child, START).code(), Some(2));
    assert!(stderr_of(&mut child).contains("TESTAPP_PORT"));
}

#[test]
fn slow_start_listens_late() {
    let port = wharf_testbed::free_port().unwrap();
    let started = Instant::now();
    let mut child = Command::new(binary())
        .env("TESTAPP_PORT", port.to_string())
        .env("TESTAPP_SLOW_START_MS", "1500")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stdout.take().unwrap());
    let _guard = KillOnDrop(child);
    wait_for_line(&lines, "slow start", START);
    // Not listening yet.
    let addr = format!("127.0.0.1:{port}");
    let refused = http::get(&addr, "/healthz").unwrap_err();
    assert!(http::is_not_listening(&refused), "{refused:#}");
    wait_for_line(&lines, "listening on", START);
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert_eq!(http::get(&addr, "/healthz").unwrap().status, 200);
}
