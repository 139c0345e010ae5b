//! What both runners share: collecting a hook's output within bounds, and judging it.

use std::collections::{BTreeMap, VecDeque};

use crate::contract::HookOutput;
use crate::HookError;

/// Most bytes read from a hook's stdout: 1 MiB. More is a failure.
pub const MAX_STDOUT: usize = 1 << 20;

/// How many of a hook's last output lines (stdout and stderr) are kept.
pub const TAIL_LINES: usize = 20;

/// Longest kept line, in bytes; longer lines are cut.
const MAX_LINE: usize = 512;

/// How many lines an error message quotes (all [`TAIL_LINES`] go to the task's logs).
const QUOTED_LINES: usize = 3;

/// A hook's output as it arrives: stdout up to [`MAX_STDOUT`], and the last lines of
/// both streams.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    stdout: Vec<u8>,
    over: bool,
    tail: VecDeque<String>,
    partial_out: Vec<u8>,
    partial_err: Vec<u8>,
}

impl Collected {
    /// Adds stdout bytes; `false` once the cap is passed (the hook must be stopped).
    pub(crate) fn stdout(&mut self, bytes: &[u8]) -> bool {
        let room = MAX_STDOUT.saturating_sub(self.stdout.len());
        if bytes.len() > room {
            self.over = true;
        }
        self.stdout
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        Self::lines(&mut self.tail, &mut self.partial_out, bytes);
        !self.over
    }

    /// Adds stderr bytes (only their last lines are kept).
    pub(crate) fn stderr(&mut self, bytes: &[u8]) {
        Self::lines(&mut self.tail, &mut self.partial_err, bytes);
    }

    fn lines(tail: &mut VecDeque<String>, partial: &mut Vec<u8>, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                push_line(tail, partial);
            } else if partial.len() < MAX_LINE {
                partial.push(b);
            }
        }
    }

    /// Whether stdout passed [`MAX_STDOUT`].
    #[cfg(test)]
    pub(crate) fn is_over(&self) -> bool {
        self.over
    }

    /// The last lines, oldest first (unterminated last lines included).
    pub(crate) fn logs(&mut self) -> Vec<String> {
        let mut out = std::mem::take(&mut self.partial_out);
        push_line(&mut self.tail, &mut out);
        let mut err = std::mem::take(&mut self.partial_err);
        push_line(&mut self.tail, &mut err);
        self.tail.iter().cloned().collect()
    }

    /// Judges a finished hook: `exit_code` 0, stdout within the cap, valid JSON with
    /// `ok: true`; anything else is the matching [`HookError`].
    pub(crate) fn judge(mut self, exit_code: i64) -> Result<(HookOutput, Vec<String>), HookError> {
        let logs = self.logs();
        if self.over {
            return Err(HookError::OutputTooLarge { logs });
        }
        let parsed = serde_json::from_slice::<HookOutput>(trim(&self.stdout));
        match parsed {
            Ok(out) if exit_code == 0 && out.ok => Ok((out, logs)),
            Ok(out) => Err(HookError::Failed {
                message: if out.message.is_empty() {
                    "it gave no message".into()
                } else {
                    out.message
                },
                exit_code: (exit_code != 0).then_some(exit_code),
                outputs: out.outputs,
                logs,
            }),
            Err(_) if exit_code != 0 => Err(HookError::Failed {
                message: "it printed no valid answer".into(),
                exit_code: Some(exit_code),
                outputs: BTreeMap::new(),
                logs,
            }),
            Err(e) => Err(HookError::BadOutput {
                reason: e.to_string(),
                logs,
            }),
        }
    }
}

fn push_line(tail: &mut VecDeque<String>, partial: &mut Vec<u8>) {
    if partial.is_empty() {
        return;
    }
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(String::from_utf8_lossy(partial).into_owned());
    partial.clear();
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end.max(start)]
}

/// `; last output: "a" | "b"` for error messages, empty without lines.
pub(crate) fn tail_text(logs: &[String]) -> String {
    if logs.is_empty() {
        return String::new();
    }
    let skip = logs.len().saturating_sub(QUOTED_LINES);
    let quoted: Vec<String> = logs[skip..].iter().map(|l| format!("{l:?}")).collect();
    format!("; last output: {}", quoted.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_the_contract() {
        let mut c = Collected::default();
        c.stdout(b"  {\"ok\": true, \"message\": \"fine\", \"outputs\": {\"a\": \"1\"}}\n");
        c.stderr(b"note\n");
        let (out, logs) = c.judge(0).unwrap();
        assert_eq!(out.message, "fine");
        assert_eq!(logs.len(), 2);

        let mut c = Collected::default();
        c.stdout(b"{\"ok\": false, \"message\": \"db not migrated\"}");
        let e = c.judge(0).unwrap_err();
        assert!(e.to_string().contains("db not migrated"), "{e}");

        let mut c = Collected::default();
        c.stdout(b"{\"ok\": true}");
        assert!(matches!(
            c.judge(2),
            Err(HookError::Failed {
                exit_code: Some(2),
                ..
            })
        ));

        let mut c = Collected::default();
        c.stdout(b"not json");
        let e = c.judge(0).unwrap_err();
        assert!(matches!(e, HookError::BadOutput { .. }));
        assert!(e.to_string().contains("not json"), "{e}");
    }

    #[test]
    fn caps_stdout_and_lines() {
        let mut c = Collected::default();
        let chunk = vec![b'x'; 64 * 1024];
        let mut kept_going = true;
        for _ in 0..17 {
            kept_going &= c.stdout(&chunk);
        }
        assert!(!kept_going && c.is_over());
        assert!(matches!(c.judge(0), Err(HookError::OutputTooLarge { .. })));

        let mut c = Collected::default();
        for i in 0..100 {
            c.stderr(format!("line {i}\n").as_bytes());
        }
        c.stderr(&vec![b'y'; 10_000]);
        let logs = c.logs();
        assert_eq!(logs.len(), TAIL_LINES);
        assert_eq!(logs[TAIL_LINES - 2], "line 99");
        assert_eq!(logs[TAIL_LINES - 1].len(), MAX_LINE);
    }
}
