//! `testapp`: the small static HTTP application packed into Wharf's test images.
//!
//! It is built with `+crt-static` and copied into images `FROM scratch`, so it
//! uses the standard library only: there is no shell, no libc and no curl in
//! the image, and the binary is its own health probe (`testapp probe`).
//!
//! Routes (HTTP/1.1, one request per connection):
//! - `GET /`: a short text naming the app and its version;
//! - `GET /healthz`: `200 ok`, or `500` when `TESTAPP_FAIL_HEALTH=1`;
//! - `GET /version`: the version baked in at build time (`TESTAPP_VERSION`,
//!   default `dev`);
//! - anything else: `404`; a method other than `GET`/`HEAD`: `405`; a request
//!   that does not parse: `400`.
//!
//! Environment switches:
//! - `TESTAPP_PORT` (default 8080): the port to listen on (all interfaces) and
//!   the port `testapp probe` checks;
//! - `TESTAPP_FAIL_HEALTH=1`: `/healthz` answers 500;
//! - `TESTAPP_CRASH_AT_START=1`: exit 1 at once with a message on stderr;
//! - `TESTAPP_SLOW_START_MS=N`: start listening only after N milliseconds.
//!
//! Every request is logged as one line on stdout. SIGTERM and SIGINT end the
//! server at once with exit code 0 (it is PID 1 in its image, where the kernel
//! gives a signal without a handler no default action).
//!
//! Subcommands: `testapp probe [PATH]` (GET `http://127.0.0.1:$TESTAPP_PORT/PATH`,
//! default `/healthz`; exit 0 on 2xx, 1 otherwise) and `testapp --version`.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// The version baked in at build time.
const VERSION: &str = match option_env!("TESTAPP_VERSION") {
    Some(version) => version,
    None => "dev",
};

const DEFAULT_PORT: u16 = 8080;
/// Largest request head (request line + headers) the server reads.
const MAX_HEAD: usize = 8 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long, and how much, a closing connection keeps reading the client's leftovers.
const LINGER: Duration = Duration::from_secs(1);
const MAX_LINGER_BYTES: usize = 1024 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(),
        Some("probe") => probe(args.get(1).map(String::as_str).unwrap_or("/healthz")),
        Some("--version" | "version") => {
            println!("testapp {VERSION}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("testapp: unknown argument {other:?}; usage: testapp [serve | probe [PATH] | --version]");
            ExitCode::from(2)
        }
    }
}

/// Reads an environment switch: set and equal to `1` or `true`.
fn switch(name: &str) -> bool {
    matches!(
        std::env::var(name).as_deref().map(str::trim),
        Ok("1" | "true")
    )
}

fn port() -> Result<u16, String> {
    match std::env::var("TESTAPP_PORT") {
        Err(_) => Ok(DEFAULT_PORT),
        Ok(raw) => raw
            .trim()
            .parse()
            .map_err(|_| format!("TESTAPP_PORT={raw:?} is not a port number")),
    }
}

/// Exits the process on SIGTERM or SIGINT, from a thread of its own.
fn exit_on_termination() -> Result<(), String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|err| format!("cannot install the SIGTERM handler: {err}"))?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                println!("testapp {VERSION}: signal {signal}, exiting");
                std::process::exit(0);
            }
        })
        .map_err(|err| format!("cannot spawn the signal thread: {err}"))?;
    Ok(())
}

fn serve() -> ExitCode {
    if let Err(message) = exit_on_termination() {
        eprintln!("testapp: {message}");
        return ExitCode::from(1);
    }
    if switch("TESTAPP_CRASH_AT_START") {
        eprintln!("testapp {VERSION}: crashing at start as asked (TESTAPP_CRASH_AT_START=1)");
        return ExitCode::from(1);
    }
    let port = match port() {
        Ok(port) => port,
        Err(message) => {
            eprintln!("testapp: {message}");
            return ExitCode::from(2);
        }
    };
    if let Ok(raw) = std::env::var("TESTAPP_SLOW_START_MS") {
        match raw.trim().parse::<u64>() {
            Ok(ms) => {
                println!("testapp {VERSION}: slow start, listening in {ms} ms");
                std::thread::sleep(Duration::from_millis(ms));
            }
            Err(_) => {
                eprintln!("testapp: TESTAPP_SLOW_START_MS={raw:?} is not a number of milliseconds");
                return ExitCode::from(2);
            }
        }
    }
    let fail_health = switch("TESTAPP_FAIL_HEALTH");
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    let listener = match TcpListener::bind(addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("testapp {VERSION}: cannot listen on {addr}: {err}");
            return ExitCode::from(1);
        }
    };
    println!(
        "testapp {VERSION}: listening on {addr}{}",
        if fail_health {
            " (health failing: TESTAPP_FAIL_HEALTH=1)"
        } else {
            ""
        }
    );
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .spawn(move || handle(stream, fail_health));
                if let Err(err) = spawned {
                    eprintln!("testapp: cannot spawn a connection thread: {err}");
                }
            }
            // Transient accept errors (EMFILE, ECONNABORTED...) must not stop the server.
            Err(err) => eprintln!("testapp: accept failed: {err}"),
        }
    }
    ExitCode::SUCCESS
}

/// A parsed request line.
struct Request {
    method: String,
    path: String,
}

/// What a request head turned out to be.
enum Parsed {
    Request(Request),
    Bad(&'static str),
}

fn handle(mut stream: TcpStream, fail_health: bool) {
    let peer = stream
        .peer_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_else(|_| "?".into());
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let head = match read_head(&mut stream) {
        Ok(Some(head)) => head,
        // The client closed the connection without sending anything.
        Ok(None) => return,
        Err(err) => {
            let _ = respond(&mut stream, false, 400, "bad request\n");
            println!("{peer} - bad request: {err} - 400");
            close_gracefully(stream);
            return;
        }
    };
    match parse(&head) {
        Parsed::Bad(why) => {
            let _ = respond(&mut stream, false, 400, "bad request\n");
            println!("{peer} - bad request: {why} - 400");
        }
        Parsed::Request(req) => {
            let (status, body) = route(&req, fail_health);
            let _ = respond(&mut stream, req.method == "HEAD", status, &body);
            println!("{peer} \"{} {}\" {status}", req.method, req.path);
        }
    }
    close_gracefully(stream);
}

/// Closes after the answer without losing it: stop sending, then read (and
/// drop) what the client still sends, for a bounded time and amount, until it
/// closes. Closing with unread input would make the kernel reset the
/// connection, and a reset can destroy the answer before the client reads it.
fn close_gracefully(mut stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(LINGER));
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_LINGER_BYTES {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

/// Reads up to the end of the request head (`\r\n\r\n` or `\n\n`).
/// `Ok(None)` when the peer closed the connection before sending a byte.
fn read_head(stream: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside the request head",
            ));
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn parse(head: &[u8]) -> Parsed {
    let Ok(text) = std::str::from_utf8(head) else {
        return Parsed::Bad("request head is not UTF-8");
    };
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad("malformed request line");
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Parsed::Bad("malformed method");
    }
    if !version.starts_with("HTTP/1.") {
        return Parsed::Bad("unsupported HTTP version");
    }
    if !target.starts_with('/') {
        return Parsed::Bad("request target is not an absolute path");
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Parsed::Request(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

fn route(req: &Request, fail_health: bool) -> (u16, String) {
    if req.method != "GET" && req.method != "HEAD" {
        return (405, "method not allowed\n".into());
    }
    match req.path.as_str() {
        "/" => (200, format!("wharf testapp {VERSION}\n")),
        "/healthz" if fail_health => (500, "unhealthy (TESTAPP_FAIL_HEALTH=1)\n".into()),
        "/healthz" => (200, "ok\n".into()),
        "/version" => (200, format!("{VERSION}\n")),
        _ => (404, "not found\n".into()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        500 => "Internal Server Error",
        _ => "",
    }
}

fn respond(stream: &mut TcpStream, head_only: bool, status: u16, body: &str) -> io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nServer: wharf-testapp/{VERSION}\r\nConnection: close\r\n",
        reason(status),
        body.len()
    );
    if status == 405 {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes())?;
    stream.flush()
}

/// `testapp probe [PATH]`: the image's HEALTHCHECK. Exit 0 on a 2xx answer.
fn probe(path: &str) -> ExitCode {
    let port = match port() {
        Ok(port) => port,
        Err(message) => {
            eprintln!("probe: {message}");
            return ExitCode::from(1);
        }
    };
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    match probe_status(port, &path) {
        Ok(status) if (200..300).contains(&status) => {
            println!("probe: GET {path} -> {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("probe: GET {path} -> {status}");
            ExitCode::from(1)
        }
        Err(err) => {
            println!("probe: GET {path} failed: {err}");
            ExitCode::from(1)
        }
    }
}

fn probe_status(port: u16, path: &str) -> io::Result<u16> {
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: testapp-probe\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    // Only the status line matters; read until it is complete or the peer closes.
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
        if answer.len() > MAX_HEAD {
            break;
        }
    }
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    match (parts.next(), parts.next().map(str::parse::<u16>)) {
        (Some(version), Some(Ok(status))) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {status_line:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
        }
    }

    #[test]
    fn parses_request_lines() {
        let Parsed::Request(r) = parse(b"GET /version?x=1 HTTP/1.1\r\nHost: a") else {
            panic!("should parse");
        };
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/version"));
        for bad in [
            &b""[..],
            b"GET",
            b"GET /",
            b"GET / HTTP/1.1 extra",
            b"get / HTTP/1.1",
            b"GET / SPDY/3",
            b"GET version HTTP/1.1",
            b"\xff\xfe / HTTP/1.1",
        ] {
            assert!(matches!(parse(bad), Parsed::Bad(_)), "{bad:?}");
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&req("GET", "/healthz"), false).0, 200);
        assert_eq!(route(&req("GET", "/healthz"), true).0, 500);
        assert_eq!(
            route(&req("GET", "/version"), false),
            (200, format!("{VERSION}\n"))
        );
        assert_eq!(route(&req("HEAD", "/"), false).0, 200);
        assert_eq!(route(&req("GET", "/nope"), false).0, 404);
        assert_eq!(route(&req("POST", "/"), false).0, 405);
    }

    #[test]
    fn finds_the_end_of_a_head() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
