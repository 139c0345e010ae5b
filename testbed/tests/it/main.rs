//! The testbed's integration tests, against the real Docker engine and
//! Debian's `docker-registry` (one test binary; modules by area).

mod audit;
mod cli;
mod compose_agent;
mod docker_agent;
mod history;
mod registry;
mod simagent;
mod testapp;
mod udp_blocked;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdout};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Forwards a child's stdout, line by line, into a channel (read on a thread so
/// waits can have deadlines).
pub fn lines_of(stdout: ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `needle`; returns it and every line before it.
pub fn wait_for_line(rx: &Receiver<String>, needle: &str, timeout: Duration) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(err) => panic!("no line with {needle:?} within {timeout:?} ({err}); got {seen:?}"),
        }
    }
}

/// Waits for a child to exit, killing it at the deadline.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads a child's stderr to the end (after it exited).
pub fn stderr_of(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

/// Kills and reaps a child when dropped (a failing test leaves no process).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes image references (`docker rmi`) when dropped.
pub struct RemoveImages(pub Vec<String>);

impl Drop for RemoveImages {
    fn drop(&mut self) {
        let _ = wharf_testbed::docker::remove_images(&self.0);
    }
}
