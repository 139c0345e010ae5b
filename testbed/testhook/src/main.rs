//! `wharf-testhook`: the hook program of Wharf's test hook image (`wharf/testhook`).
//!
//! It reads the hook contract's JSON from stdin (`{phase, target, release, image, digest,
//! previous}`) and answers on stdout (`{ok, message, outputs}`), behaving as its first
//! argument (else `TESTHOOK_MODE`, else `pass`) says:
//!
//! - `pass`: `ok: true`; the outputs echo `phase`, `target`, `digest`, `previous`, `image`
//!   and `services` (JSON text, for a Compose project) of the input (so a test sees the
//!   input arrived);
//! - `fail`: `ok: false` with the message `TESTHOOK_MESSAGE` (default `told to fail`);
//! - `exit N`: prints `ok: true` but exits with status N;
//! - `hang`: prints a line to stderr and sleeps forever;
//! - `garbage`: prints text that is not JSON;
//! - `flood`: prints 2 MiB before any JSON;
//! - `net ADDR`: tries a TCP connection to ADDR (2 s) and reports `outputs.network`
//!   (`connected` or `failed: ...`), `ok: true`;
//! - `write-root`: tries to create `/testhook-probe` and reports `outputs.root_write`
//!   (`succeeded` or `failed: ...`), `ok: true`.
//!
//! Lines on stderr (`testhook: ...`) give the failure tests "last lines" to look for.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Map, Value};

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .or_else(|| std::env::var("TESTHOOK_MODE").ok())
        .unwrap_or_else(|| "pass".to_owned());
    let mut text = String::new();
    let input: Value = match std::io::stdin().take(1 << 20).read_to_string(&mut text) {
        Ok(_) => serde_json::from_str(&text).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    eprintln!("testhook: mode {mode}, phase {}", field(&input, "phase"));
    let mut outputs = Map::new();
    for key in ["phase", "target", "digest", "previous", "image", "services"] {
        outputs.insert(key.to_owned(), Value::String(field(&input, key)));
    }
    let mut ok = true;
    let mut message = format!("testhook {mode} ran");
    let mut exit = 0;
    match mode.as_str() {
        "pass" => {}
        "fail" => {
            ok = false;
            message = std::env::var("TESTHOOK_MESSAGE").unwrap_or_else(|_| "told to fail".into());
            eprintln!("testhook: failing on purpose");
        }
        "exit" => {
            exit = args.next().and_then(|n| n.parse().ok()).unwrap_or(3);
            eprintln!("testhook: exiting with {exit}");
        }
        "hang" => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        "garbage" => {
            println!("this is not JSON {{");
            eprintln!("testhook: printed garbage");
            return;
        }
        "flood" => {
            let line = "x".repeat(1023);
            let mut out = std::io::stdout().lock();
            for _ in 0..2048 {
                if writeln!(out, "{line}").is_err() {
                    break;
                }
            }
            return;
        }
        "net" => {
            let addr = args.next().unwrap_or_else(|| "127.0.0.1:1".into());
            let result = addr
                .parse::<std::net::SocketAddr>()
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2))
                        .map_err(|e| e.to_string())
                });
            let report = match result {
                Ok(_) => "connected".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            eprintln!("testhook: connect to {addr}: {report}");
            outputs.insert("network".into(), Value::String(report));
        }
        "write-root" => {
            let report = match std::fs::write("/testhook-probe", b"x") {
                Ok(()) => "succeeded".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            eprintln!("testhook: write to /: {report}");
            outputs.insert("root_write".into(), Value::String(report));
        }
        other => {
            ok = false;
            message = format!("unknown testhook mode {other:?}");
        }
    }
    println!(
        "{}",
        json!({"ok": ok, "message": message, "outputs": outputs})
    );
    std::process::exit(exit);
}

/// A field of the input as text (`""` when absent or null).
fn field(input: &Value, key: &str) -> String {
    match input.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}
