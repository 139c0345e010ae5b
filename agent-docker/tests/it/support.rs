//! What the runtime tests share: a scripted executor, an in-process agent with its
//! events, test settings.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use uuid::Uuid;
use wharf_agent_docker::runtime::{
    self, AgentConfig, Backoff, Executor, RuntimeError, RuntimeEvent, TaskContext,
};
use wharf_protocol::{AgentTask, ErrorType, TaskResult, Timestamp};

/// How long any awaited condition may take.
pub const WAIT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// A scripted executor.
// ---------------------------------------------------------------------------------------

/// What the scripted executor was asked to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `execute` began.
    Execute {
        task_id: Uuid,
        target: String,
        /// The user name of the opened registry credentials.
        registry_user: Option<String>,
    },
    /// `resume` began.
    Resume {
        task_id: Uuid,
        checkpoint: Option<Vec<u8>>,
    },
    /// The task saw its cancel signal.
    Cancelled { task_id: Uuid },
    /// `execute` returned.
    Done { task_id: Uuid },
}

struct ScriptState {
    calls: Vec<Call>,
    /// Targets whose tasks block until released.
    held: HashSet<String>,
    /// Tasks of these targets fail.
    failing: HashSet<String>,
}

/// A test executor: records calls, blocks tasks of held targets until released, fails
/// tasks of failing targets, honours cancel.
#[derive(Clone)]
pub struct Script {
    state: Arc<Mutex<ScriptState>>,
    changed: Arc<watch::Sender<u64>>,
}

impl Script {
    pub fn new() -> Script {
        Script {
            state: Arc::new(Mutex::new(ScriptState {
                calls: Vec::new(),
                held: HashSet::new(),
                failing: HashSet::new(),
            })),
            changed: Arc::new(watch::channel(0).0),
        }
    }

    fn update(&self, f: impl FnOnce(&mut ScriptState)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
    }

    fn record(&self, call: Call) {
        self.update(|s| s.calls.push(call));
    }

    pub fn hold(&self, target: &str) {
        self.update(|s| {
            s.held.insert(target.to_string());
        });
    }

    pub fn release(&self, target: &str) {
        self.update(|s| {
            s.held.remove(target);
        });
    }

    pub fn fail(&self, target: &str) {
        self.update(|s| {
            s.failing.insert(target.to_string());
        });
    }

    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    pub fn executions_of(&self, id: Uuid) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, Call::Execute { task_id, .. } if *task_id == id))
            .count()
    }

    /// Waits until `condition` holds for the calls.
    pub async fn wait_for(&self, what: &str, condition: impl Fn(&[Call]) -> bool) -> Vec<Call> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let calls = self.calls();
            if condition(&calls) {
                return calls;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                panic!("executor: {what} did not happen within {WAIT:?}; calls: {calls:?}");
            }
        }
    }

    pub async fn wait_started(&self, id: Uuid) {
        self.wait_for(&format!("start of {id}"), |calls| {
            calls
                .iter()
                .any(|c| matches!(c, Call::Execute { task_id, .. } if *task_id == id))
        })
        .await;
    }
}

impl Executor for Script {
    fn capabilities(&self) -> Vec<String> {
        vec!["docker".into(), "scripted".into()]
    }

    async fn execute(&self, task: AgentTask, ctx: TaskContext) -> TaskResult {
        let started = Timestamp::now();
        self.record(Call::Execute {
            task_id: task.id,
            target: task.target.clone(),
            registry_user: ctx.credentials().map(|c| c.username.clone()),
        });
        if let Err(e) = ctx.checkpoint(b"started".to_vec()).await {
            return TaskResult::failure(task.id, task.attempt, started, ErrorType::Internal, e.0);
        }
        ctx.progress("scripted", "working");
        let mut rx = self.changed.subscribe();
        while self.state.lock().unwrap().held.contains(&task.target) {
            tokio::select! {
                _ = rx.changed() => {}
                () = ctx.cancelled() => {
                    self.record(Call::Cancelled { task_id: task.id });
                    let mut r = TaskResult::failure(task.id, task.attempt, started, ErrorType::Cancelled, "cancelled");
                    r.rolled_back = true;
                    return r;
                }
            }
        }
        if let Err(e) = ctx.checkpoint(b"finishing".to_vec()).await {
            return TaskResult::failure(task.id, task.attempt, started, ErrorType::Internal, e.0);
        }
        self.record(Call::Done { task_id: task.id });
        if self.state.lock().unwrap().failing.contains(&task.target) {
            return TaskResult::failure(
                task.id,
                task.attempt,
                started,
                ErrorType::HealthFailed,
                "scripted failure",
            );
        }
        let mut r = TaskResult::success(task.id, task.attempt, started);
        r.outputs.insert("executor".into(), "scripted".into());
        r
    }

    async fn resume(
        &self,
        task: AgentTask,
        checkpoint: Option<Vec<u8>>,
        _ctx: TaskContext,
    ) -> TaskResult {
        self.record(Call::Resume {
            task_id: task.id,
            checkpoint: checkpoint.clone(),
        });
        let mut r = TaskResult::success(task.id, task.attempt, Timestamp::now());
        r.outputs.insert(
            "resumed_from".into(),
            String::from_utf8_lossy(checkpoint.as_deref().unwrap_or(b"none")).into_owned(),
        );
        r
    }
}

/// Fast reconnects and short timeouts for tests.
pub fn fast(mut config: AgentConfig) -> AgentConfig {
    config.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
        ..Backoff::default()
    };
    config.idle_timeout = Duration::from_secs(3);
    config.connect_timeout = Duration::from_secs(10);
    config.shutdown_grace = Duration::from_millis(500);
    config
}

/// A digest-pinned reference on a registry host the tests never pull from.
pub fn image(tag: &str) -> String {
    let digest: String = format!("{:x}", md5ish(tag))
        .chars()
        .cycle()
        .take(64)
        .collect();
    format!("127.0.0.1:5999/wharf/{tag}@sha256:{digest}")
}

fn md5ish(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// The events of a running agent, with a history.
pub struct Events {
    rx: mpsc::UnboundedReceiver<RuntimeEvent>,
    pub seen: Vec<RuntimeEvent>,
}

impl Events {
    /// Waits for an event matching `pred` (looking at the history first); returns it.
    pub async fn wait(&mut self, what: &str, pred: impl Fn(&RuntimeEvent) -> bool) -> RuntimeEvent {
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        self.wait_new(what, pred).await
    }

    /// Waits for a new event matching `pred` (ignoring the history).
    pub async fn wait_new(
        &mut self,
        what: &str,
        pred: impl Fn(&RuntimeEvent) -> bool,
    ) -> RuntimeEvent {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(e)) => {
                    self.seen.push(e.clone());
                    if pred(&e) {
                        return e;
                    }
                }
                Ok(None) => panic!("the agent stopped before {what}; events: {:?}", self.seen),
                Err(_) => panic!("no {what} within {WAIT:?}; events: {:?}", self.seen),
            }
        }
    }

    pub fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }
}

/// An agent runtime running in this process.
pub struct Agent {
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), RuntimeError>>>,
    pub events: Events,
}

/// Everything the runtime logged in this test process (all tests), from the first
/// [`start_agent`] on, at every level.
pub fn captured_logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A writer into [`LOGS`].
struct LogSink;

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("wharf_agent_docker=trace")
            .with_writer(|| LogSink)
            .with_ansi(false)
            .try_init();
    });
}

pub fn start_agent(config: AgentConfig, executor: Script) -> Agent {
    capture_logs();
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(runtime::run(config.with_events(tx), executor, async move {
        let _ = stopped.await;
    }));
    Agent {
        stop: Some(stop),
        handle: Some(handle),
        events: Events {
            rx,
            seen: Vec::new(),
        },
    }
}

impl Agent {
    pub async fn connected(&mut self) -> RuntimeEvent {
        self.events
            .wait("a session", |e| matches!(e, RuntimeEvent::Connected { .. }))
            .await
    }

    /// Asks the runtime to stop and returns what `run` returned.
    pub async fn stop(mut self) -> Result<(), RuntimeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("the runtime stops")
            .unwrap()
    }

    /// Waits for `run` to return on its own.
    pub async fn finished(mut self) -> Result<(), RuntimeError> {
        let handle = self.handle.take().unwrap();
        tokio::time::timeout(WAIT, handle)
            .await
            .expect("the runtime returns")
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}
