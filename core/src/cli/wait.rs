//! `--wait`: follows a task until it ends.
//!
//! The task's Server-Sent Events (`GET /v1/tasks/{id}/events`: `state`, `progress`, and a
//! final `done` carrying the task) are read from the response's byte stream by
//! [`SseParser`]. If the stream drops (or the API has none), the task is polled with
//! `GET /v1/tasks/{id}` and the stream reopened; after [`LOST_CONTACT`] without any answer
//! the wait gives up (exit 3; the task itself goes on).
//!
//! Progress goes to stderr: a live spinner with the state and current step on a terminal,
//! plain lines (`RUNNING`, `[pull] ...`) otherwise, so stdout holds only the result.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value;

use super::client::Client;
use super::error::ApiError;
use crate::engine::model::{TaskEvent, TaskView};
use crate::queue::TaskState;

/// How long the wait goes on without reaching core before it gives up.
pub const LOST_CONTACT: Duration = Duration::from_secs(60);
/// Polling interval when there is no event stream.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Largest event accepted (a `done` event carries the task with its logs).
const MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field (`message` when none was given).
    pub event: String,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// An incremental parser of a `text/event-stream` body (the WHATWG rules that matter
/// here: `event:` and `data:` fields, `:` comments, an empty line dispatches, `\n` or
/// `\r\n` line ends, one optional space after the colon).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: String,
    data: String,
    has_data: bool,
    size: usize,
}

/// An event over [`MAX_EVENT_BYTES`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an event from core is larger than {MAX_EVENT_BYTES} bytes")]
pub struct EventTooLarge;

impl SseParser {
    /// A parser at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk of the body; returns the events it completed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<SseEvent>, EventTooLarge> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(ev) = self.line_done(&line) {
                    out.push(ev);
                }
            } else {
                self.line.push(b);
                self.size += 1;
                if self.size > MAX_EVENT_BYTES {
                    return Err(EventTooLarge);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            self.size = 0;
            let event = std::mem::take(&mut self.event);
            let data = std::mem::take(&mut self.data);
            if !std::mem::take(&mut self.has_data) {
                return None;
            }
            return Some(SseEvent {
                event: if event.is_empty() {
                    "message".into()
                } else {
                    event
                },
                data,
            });
        }
        if line[0] == b':' {
            return None;
        }
        let line = String::from_utf8_lossy(line);
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_owned(),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

/// Where progress is shown.
pub enum Display {
    /// A live spinner on the terminal (stderr).
    Live {
        /// The spinner.
        bar: ProgressBar,
        /// The last state shown.
        state: Option<TaskState>,
    },
    /// Plain lines on stderr.
    Plain {
        /// The last state shown.
        state: Option<TaskState>,
    },
}

impl Display {
    /// A live display when stderr is a terminal, plain lines otherwise.
    pub fn for_stderr(label: &str) -> Display {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            let style =
                ProgressStyle::with_template("{spinner} {prefix:.bold} {wide_msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.set_prefix("submitted");
            bar.set_message(label.to_owned());
            bar.enable_steady_tick(Duration::from_millis(120));
            Display::Live { bar, state: None }
        } else {
            Display::Plain { state: None }
        }
    }

    /// The task is in `state` (shown once per change).
    pub fn state(&mut self, new: TaskState) {
        match self {
            Display::Live { bar, state } => {
                if *state != Some(new) {
                    *state = Some(new);
                    bar.set_prefix(new.as_str().to_owned());
                }
            }
            Display::Plain { state } => {
                if *state != Some(new) {
                    *state = Some(new);
                    eprintln!("{}", new.as_str().to_ascii_uppercase());
                }
            }
        }
    }

    /// A progress line of the agent.
    pub fn progress(&mut self, step: &str, line: &str) {
        match self {
            Display::Live { bar, .. } => {
                bar.println(format!("[{step}] {line}"));
                bar.set_message(format!("[{step}] {line}"));
            }
            Display::Plain { .. } => eprintln!("[{step}] {line}"),
        }
    }

    /// A note about the wait itself (reconnecting...).
    pub fn note(&mut self, text: &str) {
        match self {
            Display::Live { bar, .. } => bar.set_message(text.to_owned()),
            Display::Plain { .. } => eprintln!("{text}"),
        }
    }

    /// Removes the live display.
    pub fn finish(&mut self) {
        if let Display::Live { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// A task as core showed it: the JSON document and its typed view.
#[derive(Debug, Clone)]
pub struct Task {
    /// The JSON, printed as is by `--output json`.
    pub json: Value,
    /// The typed view.
    pub view: TaskView,
}

impl Task {
    /// Parses a task document.
    pub fn from_json(json: Value) -> Result<Task> {
        let view = serde_json::from_value(json.clone())
            .context("core's task document does not have the expected shape")?;
        Ok(Task { json, view })
    }
}

/// What one event did to the wait.
fn apply(ev: &SseEvent, display: &mut Display) -> Result<Option<Task>> {
    match ev.event.as_str() {
        "done" => {
            let json: Value =
                serde_json::from_str(&ev.data).context("the `done` event is not JSON")?;
            Task::from_json(json).map(Some)
        }
        "state" | "progress" => {
            match serde_json::from_str::<TaskEvent>(&ev.data) {
                Ok(TaskEvent::State { state, .. }) => display.state(state),
                Ok(TaskEvent::Progress { step, line, .. }) => display.progress(&step, &line),
                Err(_) => {} // An event of a newer core: ignore it.
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Reads an event stream until `done` (the task) or its end (`None`).
async fn read_stream(resp: reqwest::Response, display: &mut Display) -> Result<Option<Task>> {
    let mut parser = SseParser::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the event stream broke")?;
        for ev in parser.feed(&chunk)? {
            if let Some(task) = apply(&ev, display)? {
                return Ok(Some(task));
            }
        }
    }
    Ok(None)
}

/// The status of the API error in a chain, if core answered with one.
fn api_status(err: &anyhow::Error) -> Option<u16> {
    err.chain()
        .find_map(|e| e.downcast_ref::<ApiError>())
        .map(|api| api.status)
}

/// Whether an error from the event stream ends the wait at once: core answered, and
/// neither "no stream here" (404, 405, 501: poll instead) nor "try later" (502-504).
fn is_final(err: &anyhow::Error) -> bool {
    api_status(err).is_some_and(|s| !matches!(s, 404 | 405 | 501 | 502..=504))
}

/// Follows task `id` until it is in a terminal state; returns it.
pub async fn follow(client: &Client, id: &str, display: &mut Display) -> Result<Task> {
    let mut last_contact = Instant::now();
    let mut backoff = Duration::from_millis(250);
    let mut stream_supported = true;
    loop {
        if stream_supported {
            match client.events(id).await {
                Ok(resp) => {
                    last_contact = Instant::now();
                    backoff = Duration::from_millis(250);
                    match read_stream(resp, display).await {
                        Ok(Some(task)) => return Ok(task),
                        Ok(None) => display.note("event stream ended; checking the task"),
                        Err(e) => display.note(&format!("{e:#}; checking the task")),
                    }
                }
                Err(e) if is_final(&e) => return Err(e),
                Err(e) => {
                    if api_status(&e).is_some_and(|s| matches!(s, 404 | 405 | 501)) {
                        // No event stream for this task (or this core): poll instead. A task
                        // that does not exist shows in the poll below.
                        stream_supported = false;
                    }
                }
            }
        }
        match client.get(&["v1", "tasks", id], &[]).await {
            Ok(answer) => {
                last_contact = Instant::now();
                let task = Task::from_json(answer.body)?;
                display.state(task.view.state);
                if task.view.state.is_terminal() {
                    return Ok(task);
                }
            }
            // Core answered with an error (the task does not exist, the token was refused...):
            // only "try later" answers keep the wait going.
            Err(e) if api_status(&e).is_some_and(|s| !matches!(s, 502..=504)) => return Err(e),
            Err(e) => {
                if last_contact.elapsed() > LOST_CONTACT {
                    return Err(e.context(format!(
                        "lost contact with core while following task {id} (the task goes on; \
                         follow it again with `wharf task wait {id}`)"
                    )));
                }
                display.note("core unreachable; retrying");
            }
        }
        let pause = if stream_supported {
            backoff
        } else {
            POLL_INTERVAL
        };
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
        }
    }

    #[test]
    fn sse_events_split_across_chunks() {
        let body = b": keep-alive\n\nevent: state\ndata: {\"a\":1}\n\nevent: progress\r\ndata:x\r\ndata: y\r\n\r\ndata: plain\n\n";
        for split in 0..body.len() {
            let mut p = SseParser::new();
            let mut got = p.feed(&body[..split]).unwrap();
            got.extend(p.feed(&body[split..]).unwrap());
            assert_eq!(
                got,
                [
                    ev("state", "{\"a\":1}"),
                    ev("progress", "x\ny"),
                    ev("message", "plain")
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn sse_edge_cases() {
        let mut p = SseParser::new();
        // An event without data is not dispatched; its name does not leak into the next.
        assert_eq!(
            p.feed(b"event: state\n\ndata: d\n\n").unwrap(),
            [ev("message", "d")]
        );
        // Unknown fields and a field without a colon are ignored; an empty data line counts.
        assert_eq!(
            p.feed(b"id: 7\nretry: 10\ndata\n\n").unwrap(),
            [ev("message", "")]
        );
        // An unterminated event is not dispatched.
        assert!(p.feed(b"event: done\ndata: {}").unwrap().is_empty());
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(p.feed(&big), Err(EventTooLarge));
    }

    fn task_json(state: &str) -> Value {
        serde_json::json!({
            "id": "7c1e2f4a-0000-4000-8000-000000000001",
            "kind": "deploy",
            "state": state,
            "agent": "web-1",
            "target": "web",
            "idempotency_key": null,
            "attempt": 1,
            "created_at": "2024-05-01T12:00:00.000Z",
            "updated_at": "2024-05-01T12:00:05.000Z",
            "requested_by": "ci",
            "priority": "normal",
            "expires_at": null,
            "cancel_requested": false,
            "error": null,
            "result": null
        })
    }

    #[test]
    fn events_drive_the_display_and_done_ends() {
        let mut display = Display::Plain { state: None };
        let state = ev(
            "state",
            r#"{"type":"state","task_id":"7c1e2f4a-0000-4000-8000-000000000001","state":"running"}"#,
        );
        assert!(apply(&state, &mut display).unwrap().is_none());
        assert!(matches!(
            display,
            Display::Plain {
                state: Some(TaskState::Running)
            }
        ));
        let progress = ev(
            "progress",
            r#"{"type":"progress","task_id":"7c1e2f4a-0000-4000-8000-000000000001","step":"pull","line":"pulling"}"#,
        );
        assert!(apply(&progress, &mut display).unwrap().is_none());
        assert!(apply(&ev("state", "not json"), &mut display)
            .unwrap()
            .is_none());
        assert!(apply(&ev("other", "x"), &mut display).unwrap().is_none());
        let done = ev("done", &task_json("succeeded").to_string());
        let task = apply(&done, &mut display).unwrap().expect("done");
        assert_eq!(task.view.state, TaskState::Succeeded);
        assert_eq!(task.json["agent"], "web-1");
        assert!(apply(&ev("done", "{}"), &mut display).is_err());
    }

    #[test]
    fn final_errors() {
        let api = |status| anyhow::Error::new(ApiError::from_body(status, b"{}"));
        assert!(is_final(&api(401)));
        assert!(is_final(&api(403)));
        assert!(!is_final(&api(503)));
        assert!(!is_final(&api(404)));
        assert!(!is_final(&anyhow::anyhow!("connection reset")));
    }
}
