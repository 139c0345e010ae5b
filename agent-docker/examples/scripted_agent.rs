//! An agent process on the real runtime with a file-scripted executor, for tests that
//! must really SIGKILL an agent (crash recovery). Not a product binary.
//!
//! ```text
//! scripted_agent --core HOST:PORT --state-dir DIR --control DIR [--name N] [--token T --ca-hash H]
//! ```
//!
//! The executor, for each task:
//! - `execute`: appends `execute <task-id>` to `<control>/calls.log`, checkpoints
//!   `step-1`, creates `<control>/started-<task-id>`, waits until
//!   `<control>/release-<task-id>` exists (or a cancel), checkpoints `step-2`, succeeds with
//!   output `phase=executed`;
//! - `resume`: appends `resume <task-id> <checkpoint|none>` to `calls.log` and succeeds with
//!   output `resumed_from=<checkpoint|none>`.
//!
//! Every runtime event is printed on stdout (`event: ...`), one per line. Exit code: 0
//! after SIGTERM/SIGINT, else the runtime error's exit code.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use wharf_agent_docker::runtime::{self, AgentConfig, Backoff, Executor, TaskContext};
use wharf_protocol::{AgentTask, ErrorType, TaskResult, Timestamp};

struct FileScript {
    control: PathBuf,
}

impl FileScript {
    fn log(&self, line: &str) {
        let path = self.control.join("calls.log");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        let _ = writeln!(file, "{line}");
    }
}

impl Executor for FileScript {
    fn capabilities(&self) -> Vec<String> {
        vec!["docker".into(), "scripted".into()]
    }

    async fn execute(&self, task: AgentTask, ctx: TaskContext) -> TaskResult {
        let started = Timestamp::now();
        self.log(&format!("execute {}", task.id));
        if let Err(e) = ctx.checkpoint(b"step-1".to_vec()).await {
            return TaskResult::failure(task.id, task.attempt, started, ErrorType::Internal, e.0);
        }
        let _ = std::fs::write(self.control.join(format!("started-{}", task.id)), b"");
        let release = self.control.join(format!("release-{}", task.id));
        while !release.exists() {
            if ctx.is_cancelled() {
                return TaskResult::failure(
                    task.id,
                    task.attempt,
                    started,
                    ErrorType::Cancelled,
                    "cancelled",
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = ctx.checkpoint(b"step-2".to_vec()).await {
            return TaskResult::failure(task.id, task.attempt, started, ErrorType::Internal, e.0);
        }
        let mut r = TaskResult::success(task.id, task.attempt, started);
        r.outputs.insert("phase".into(), "executed".into());
        r
    }

    async fn resume(
        &self,
        task: AgentTask,
        checkpoint: Option<Vec<u8>>,
        _ctx: TaskContext,
    ) -> TaskResult {
        let from = checkpoint.map_or_else(
            || "none".to_string(),
            |c| String::from_utf8_lossy(&c).into_owned(),
        );
        self.log(&format!("resume {} {from}", task.id));
        let mut r = TaskResult::success(task.id, task.attempt, Timestamp::now());
        r.outputs.insert("resumed_from".into(), from);
        r
    }
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(core), Some(state), Some(control)) = (
        arg(&args, "--core"),
        arg(&args, "--state-dir"),
        arg(&args, "--control"),
    ) else {
        eprintln!("usage: scripted_agent --core HOST:PORT --state-dir DIR --control DIR [--name N] [--token T --ca-hash H]");
        return ExitCode::from(2);
    };
    let name = arg(&args, "--name").unwrap_or_else(|| "scripted".into());
    let mut config = AgentConfig::new(core, Path::new(&state), name);
    if let (Some(token), Some(ca_hash)) = (arg(&args, "--token"), arg(&args, "--ca-hash")) {
        config = config.with_enrollment(token, ca_hash);
    }
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        ..Backoff::default()
    };
    config.idle_timeout = Duration::from_secs(3);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            println!("event: {event:?}");
        }
    });
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let executor = FileScript {
        control: PathBuf::from(control),
    };
    match runtime::run(config.with_events(tx), executor, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scripted_agent: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
