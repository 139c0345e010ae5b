//! Host-command hooks: a program on the agent's host, run only when the agent was
//! started with `--allow-host-hooks` ([`crate::Hooks`] refuses them otherwise).
//!
//! Same contract and limits as container hooks: the JSON on stdin, stdout capped at
//! [`MAX_STDOUT`](crate::MAX_STDOUT), killed past the timeout. The program gets a clean
//! environment (`PATH=/usr/local/bin:/usr/bin:/bin` plus the hook's `env`); it runs with
//! the agent's user and rights: it is not sandboxed.

use std::process::Stdio;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use wharf_protocol::HookSource;

use crate::contract::HookReport;
use crate::output::Collected;
use crate::{HookError, HookRequest};

/// The `PATH` a host hook gets.
pub const HOST_HOOK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Runs host-command hooks.
#[derive(Debug, Clone, Default)]
pub struct HostHooks {}

impl HostHooks {
    /// A host hook runner.
    pub fn new() -> Self {
        HostHooks {}
    }

    /// Runs the command with the request's input and judges its answer.
    pub async fn run(&self, request: HookRequest<'_>) -> Result<HookReport, HookError> {
        crate::check_spec(request.spec)?;
        let HookSource::HostCommand(argv) = &request.spec.source else {
            return Err(HookError::InvalidSpec(
                "not a host-command hook (it names an image)".into(),
            ));
        };
        let Some((program, rest)) = argv.split_first() else {
            return Err(HookError::InvalidSpec("its host command is empty".into()));
        };
        let stdin = serde_json::to_vec(request.input)
            .map_err(|e| HookError::InvalidSpec(format!("its input does not serialize: {e}")))?;
        let mut child = Command::new(program)
            .args(rest)
            .args(&request.spec.args)
            .env_clear()
            .env("PATH", HOST_HOOK_PATH)
            .envs(&request.spec.env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| HookError::Spawn {
                program: program.clone(),
                reason: e.to_string(),
            })?;
        let began = Instant::now();
        let timeout = request.spec.timeout.as_duration();
        let mut collected = Collected::default();
        let ran = tokio::time::timeout(timeout, drive(&mut child, &stdin, &mut collected)).await;
        let duration = began.elapsed();
        let code = match ran {
            Err(_elapsed) => {
                let _ = child.kill().await;
                return Err(HookError::TimedOut {
                    timeout,
                    logs: collected.logs(),
                });
            }
            Ok(Err(e)) => {
                let _ = child.kill().await;
                return Err(HookError::Spawn {
                    program: program.clone(),
                    reason: e.to_string(),
                });
            }
            Ok(Ok(None)) => {
                let _ = child.kill().await;
                -1
            }
            Ok(Ok(Some(code))) => code,
        };
        let (out, logs) = collected.judge(code)?;
        Ok(HookReport {
            message: out.message,
            outputs: out.outputs,
            duration,
            logs,
        })
    }
}

/// Feeds stdin, reads both streams to their end (or stdout to its cap: `None`), waits.
async fn drive(
    child: &mut tokio::process::Child,
    stdin: &[u8],
    collected: &mut Collected,
) -> std::io::Result<Option<i64>> {
    if let Some(mut input) = child.stdin.take() {
        let _ = input.write_all(stdin).await;
        let _ = input.write_all(b"\n").await;
        drop(input);
    }
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(std::io::Error::other("the hook's output pipes are missing"));
    };
    let mut obuf = vec![0u8; 16 * 1024];
    let mut ebuf = vec![0u8; 16 * 1024];
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            n = out.read(&mut obuf), if out_open => {
                let n = n?;
                if n == 0 {
                    out_open = false;
                } else if !collected.stdout(&obuf[..n]) {
                    return Ok(None);
                }
            }
            n = err.read(&mut ebuf), if err_open => {
                let n = n?;
                if n == 0 { err_open = false } else { collected.stderr(&ebuf[..n]) }
            }
        }
    }
    let status = child.wait().await?;
    // Killed by a signal: no code; report it as -1.
    Ok(Some(status.code().map_or(-1, i64::from)))
}
