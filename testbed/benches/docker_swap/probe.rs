//! The availability probe: a client requesting the service every few milliseconds during
//! a swap, counting failed requests and the longest time without a successful answer.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the probe saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Availability {
    /// Requests sent.
    pub requests: u64,
    /// Requests that did not get a 200.
    pub failed: u64,
    /// The longest time between two successful answers (or from the start to the first).
    pub longest_gap: Duration,
}

/// A running probe; [`Probe::stop`] ends it and returns what it saw.
pub struct Probe {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Availability>,
}

impl Probe {
    /// Requests `GET /` on `addr` every `every`, each with a short timeout.
    pub fn start(addr: SocketAddr, every: Duration) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut seen = Availability::default();
                let mut last_ok = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    seen.requests += 1;
                    if get_ok(addr) {
                        let now = Instant::now();
                        seen.longest_gap = seen.longest_gap.max(now - last_ok);
                        last_ok = now;
                    } else {
                        seen.failed += 1;
                    }
                    if let Some(rest) = every.checked_sub(started.elapsed()) {
                        std::thread::sleep(rest);
                    }
                }
                seen.longest_gap = seen.longest_gap.max(last_ok.elapsed());
                seen
            }
        });
        Probe { stop, handle }
    }

    /// Stops the probe.
    pub fn stop(self) -> Availability {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

/// One `GET /` with a 500 ms budget; true on `200`.
fn get_ok(addr: SocketAddr) -> bool {
    let budget = Duration::from_millis(500);
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, budget) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(budget));
    let _ = stream.set_write_timeout(Some(budget));
    if stream
        .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        match stream.read(&mut head[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200")
}
