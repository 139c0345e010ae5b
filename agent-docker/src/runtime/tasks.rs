//! Running tasks: the per-target lock, one execution per journaled `(task, attempt)`,
//! cancel signals, crash recovery. No network here: the session hands tasks in and takes
//! results out.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use futures_util::future::BoxFuture;
use futures_util::FutureExt as _;
use tokio::sync::{mpsc, watch, Notify, OwnedMutexGuard};
use tokio::task::JoinSet;
use uuid::Uuid;
use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{AgentTask, ErrorType, TaskResult, Timestamp};

use super::config::{AgentConfig, RuntimeEvent};
use super::executor::{CheckpointError, CheckpointSink, Executor, ProgressLine, TaskContext};
use super::identity::Identity;
use super::journal::{Journal, JournalRecord, JournalState};

/// `(task_id, attempt)`.
pub(crate) type TaskKey = (Uuid, u32);

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One async mutex per target, created on demand and dropped when nobody holds or waits
/// for it. tokio's mutex is fair: tasks for one target run in arrival order.
#[derive(Default)]
pub(crate) struct TargetLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A held target lock.
pub(crate) struct TargetGuard<'a> {
    locks: &'a TargetLocks,
    target: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl TargetLocks {
    pub(crate) async fn acquire(&self, target: &str) -> TargetGuard<'_> {
        let mutex = lock(&self.locks)
            .entry(target.to_string())
            .or_default()
            .clone();
        let guard = mutex.lock_owned().await;
        TargetGuard {
            locks: self,
            target: target.to_string(),
            guard: Some(guard),
        }
    }

    /// Targets with a lock entry (held or awaited), for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.locks).len()
    }
}

impl Drop for TargetGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = lock(&self.locks.locks);
        if locks
            .get(&self.target)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.target);
        }
    }
}

/// State shared by the session, the task streams and the executions.
pub(crate) struct Shared<E> {
    pub(crate) config: AgentConfig,
    pub(crate) executor: Arc<E>,
    pub(crate) journal: Arc<Journal>,
    /// The current identity (replaced by a renewal).
    pub(crate) identity: RwLock<Identity>,
    locks: TargetLocks,
    /// Cancel signals of the tasks not finished yet.
    cancels: Mutex<HashMap<TaskKey, watch::Sender<bool>>>,
    /// Tasks inside the executor now (for heartbeats).
    running: Mutex<HashSet<Uuid>>,
    /// Bumped whenever a result is journaled.
    pub(crate) finished: watch::Sender<u64>,
    /// Signalled when a result could not go out on its task stream: it waits for a
    /// `Hello`.
    pub(crate) undelivered: Notify,
    /// Executions and recoveries in flight.
    work: Mutex<JoinSet<()>>,
}

impl<E: Executor> Shared<E> {
    pub(crate) fn new(
        config: AgentConfig,
        executor: E,
        journal: Journal,
        identity: Identity,
    ) -> Self {
        Shared {
            config,
            executor: Arc::new(executor),
            journal: Arc::new(journal),
            identity: RwLock::new(identity),
            locks: TargetLocks::default(),
            cancels: Mutex::new(HashMap::new()),
            running: Mutex::new(HashSet::new()),
            finished: watch::channel(0).0,
            undelivered: Notify::new(),
            work: Mutex::new(JoinSet::new()),
        }
    }

    pub(crate) fn identity(&self) -> Identity {
        self.identity
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_identity(&self, identity: Identity) {
        *self
            .identity
            .write()
            .unwrap_or_else(PoisonError::into_inner) = identity;
    }

    /// Tasks inside the executor now.
    pub(crate) fn running_tasks(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = lock(&self.running).iter().copied().collect();
        ids.sort();
        ids
    }

    /// Flips the cancel signal of every unfinished attempt of `task_id`.
    pub(crate) fn cancel(&self, task_id: Uuid) {
        let mut found = false;
        for ((id, _), tx) in lock(&self.cancels).iter() {
            if *id == task_id {
                tx.send_replace(true);
                found = true;
            }
        }
        tracing::info!(%task_id, found, "cancel requested by core");
    }

    fn spawn_work(&self, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut set = lock(&self.work);
        while set.try_join_next().is_some() {}
        set.spawn(work);
    }

    /// Waits up to `grace` for executions to finish, then aborts the rest (they resume
    /// at the next start from the journal).
    pub(crate) async fn wind_down(&self, grace: std::time::Duration) {
        let mut set = std::mem::take(&mut *lock(&self.work));
        if !set.is_empty() {
            tracing::info!(tasks = set.len(), ?grace, "waiting for running tasks");
        }
        let _ =
            tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} }).await;
        if !set.is_empty() {
            tracing::warn!(
                tasks = set.len(),
                "tasks still running at shutdown: they resume from the journal at the next start"
            );
        }
        set.shutdown().await;
    }

    /// Journals the result, reports it as an event and wakes whoever waits for it.
    async fn record_result(&self, task: &AgentTask, mut result: TaskResult) -> TaskResult {
        result.task_id = task.id;
        result.attempt = task.attempt;
        let result = match self
            .journal
            .finish(task.id, task.attempt, result.clone())
            .await
        {
            Ok(stored) => stored,
            Err(error) => {
                tracing::error!(task_id = %task.id, %error, "cannot journal the result");
                result
            }
        };
        self.config.emit(RuntimeEvent::Finished {
            task_id: task.id,
            attempt: task.attempt,
            success: result.success,
        });
        self.finished.send_modify(|n| *n = n.wrapping_add(1));
        result
    }

    /// Waits until `(task_id, attempt)` has a journaled result.
    pub(crate) async fn wait_result(&self, task_id: Uuid, attempt: u32) -> Option<TaskResult> {
        let mut rx = self.finished.subscribe();
        loop {
            match self.journal.get(task_id, attempt) {
                Ok(Some(record)) => {
                    if let Some(result) = record.result() {
                        return Some(result.clone());
                    }
                }
                Ok(None) => return None,
                Err(error) => {
                    tracing::error!(%task_id, %error, "cannot read the journal");
                    return None;
                }
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Journals an expired task's refusal (it never runs).
    pub(crate) async fn refuse_expired(&self, task: &AgentTask) -> TaskResult {
        tracing::info!(task_id = %task.id, expires_at = ?task.expires_at, "task expired before it started: not run");
        let result = expired(task, Timestamp::now());
        self.record_result(task, result).await
    }
}

fn expired(task: &AgentTask, now: Timestamp) -> TaskResult {
    let when = task
        .expires_at
        .map_or_else(String::new, |e| format!(" ({e})"));
    TaskResult::failure(
        task.id,
        task.attempt,
        now,
        ErrorType::Expired,
        format!("the task expired{when} before the agent could start it; nothing was changed"),
    )
}

fn cancelled_before_start(task: &AgentTask) -> TaskResult {
    TaskResult::failure(
        task.id,
        task.attempt,
        Timestamp::now(),
        ErrorType::Cancelled,
        "cancelled before it started; nothing was changed",
    )
}

/// Checkpoints of one task into the journal.
struct JournalSink {
    journal: Arc<Journal>,
    key: TaskKey,
}

impl CheckpointSink for JournalSink {
    fn write(&self, state: Vec<u8>) -> BoxFuture<'static, Result<(), CheckpointError>> {
        let journal = self.journal.clone();
        let (task_id, attempt) = self.key;
        Box::pin(async move {
            journal
                .checkpoint(task_id, attempt, state)
                .await
                .map_err(|e| CheckpointError(e.to_string()))
        })
    }
}

/// A new task's execution, as the task stream sees it.
pub(crate) struct Execution {
    /// The result, once journaled.
    pub(crate) result: tokio::sync::oneshot::Receiver<TaskResult>,
    /// Progress lines of the executor.
    pub(crate) progress: mpsc::UnboundedReceiver<ProgressLine>,
}

/// Whether the executor runs the task fresh or finishes it after a crash.
enum Mode {
    Execute(Option<RegistryCredentials>),
    Resume(Option<Vec<u8>>),
}

/// Registers the cancel signal of `key`.
fn register_cancel<E>(shared: &Shared<E>, key: TaskKey) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    lock(&shared.cancels).insert(key, tx);
    rx
}

/// Starts a journaled (received) task: opens its credentials, waits for its target, runs
/// it, journals the result. Runs to its end even if the task stream goes away.
pub(crate) fn start_execution<E: Executor>(shared: &Arc<Shared<E>>, task: AgentTask) -> Execution {
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    let (progress_tx, progress_rx) = mpsc::unbounded_channel();
    let cancel = register_cancel(shared, (task.id, task.attempt));
    let shared2 = shared.clone();
    shared.spawn_work(async move {
        let result = run_task(&shared2, task, cancel, progress_tx).await;
        let _ = result_tx.send(result);
    });
    Execution {
        result: result_rx,
        progress: progress_rx,
    }
}

/// Hands every unfinished journaled task to [`Executor::resume`] (each under its target's
/// lock); their results are journaled and wait for the next `Hello`.
pub(crate) fn recover<E: Executor>(shared: &Arc<Shared<E>>, records: Vec<JournalRecord>) {
    for record in records {
        let key = (record.task.id, record.task.attempt);
        let checkpoint = match record.state {
            JournalState::Received => None,
            JournalState::Running { checkpoint } => checkpoint,
            JournalState::Finished { .. } => continue,
        };
        tracing::info!(
            task_id = %key.0,
            attempt = key.1,
            has_checkpoint = checkpoint.is_some(),
            "resuming a task the agent was running when it stopped"
        );
        shared.config.emit(RuntimeEvent::Resumed {
            task_id: key.0,
            attempt: key.1,
        });
        let cancel = register_cancel(shared, key);
        let shared2 = shared.clone();
        let task = record.task;
        shared.spawn_work(async move {
            let (progress, _) = mpsc::unbounded_channel();
            let guard = shared2.locks.acquire(&task.target).await;
            let result =
                execute_locked(&shared2, &task, Mode::Resume(checkpoint), cancel, progress).await;
            drop(guard);
            let _ = shared2.record_result(&task, result).await;
            lock(&shared2.cancels).remove(&key);
            shared2.undelivered.notify_one();
        });
    }
}

async fn run_task<E: Executor>(
    shared: &Shared<E>,
    task: AgentTask,
    mut cancel: watch::Receiver<bool>,
    progress: mpsc::UnboundedSender<ProgressLine>,
) -> TaskResult {
    let key = (task.id, task.attempt);
    let result = 'run: {
        let credentials = match &task.credentials {
            None => None,
            Some(sealed) => {
                let identity = shared.identity();
                match RegistryCredentials::open(
                    &identity.seal_key,
                    sealed,
                    task.id,
                    &identity.agent_id.to_string(),
                ) {
                    Ok(c) => Some(c),
                    Err(error) => {
                        break 'run TaskResult::failure(
                            task.id,
                            task.attempt,
                            Timestamp::now(),
                            ErrorType::RegistryAuth,
                            format!(
                                "cannot open the registry credentials core sealed for this \
                                 agent ({error}); nothing was changed. If the agent was \
                                 re-enrolled, log in to the registry again"
                            ),
                        )
                    }
                }
            }
        };
        let guard = tokio::select! {
            g = shared.locks.acquire(&task.target) => g,
            () = super::stopping(&mut cancel) => break 'run cancelled_before_start(&task),
        };
        if task.is_expired(Timestamp::now()) {
            break 'run expired(&task, Timestamp::now());
        }
        if let Err(error) = shared.journal.start(task.id, task.attempt).await {
            break 'run TaskResult::failure(
                task.id,
                task.attempt,
                Timestamp::now(),
                ErrorType::Internal,
                format!("the agent cannot write its journal ({error}); the task was not run"),
            );
        }
        let mut stripped = task.clone();
        stripped.credentials = None;
        let result = execute_locked(
            shared,
            &stripped,
            Mode::Execute(credentials),
            cancel,
            progress,
        )
        .await;
        drop(guard);
        result
    };
    let result = shared.record_result(&task, result).await;
    lock(&shared.cancels).remove(&key);
    result
}

/// Calls the executor (the target lock is held by the caller).
async fn execute_locked<E: Executor>(
    shared: &Shared<E>,
    task: &AgentTask,
    mode: Mode,
    cancel: watch::Receiver<bool>,
    progress: mpsc::UnboundedSender<ProgressLine>,
) -> TaskResult {
    let started_at = Timestamp::now();
    let sink = Arc::new(JournalSink {
        journal: shared.journal.clone(),
        key: (task.id, task.attempt),
    });
    lock(&shared.running).insert(task.id);
    let executor = shared.executor.clone();
    let run = async {
        match mode {
            Mode::Execute(credentials) => {
                let ctx = TaskContext::new(credentials, sink, Some(progress), cancel);
                executor.execute(task.clone(), ctx).await
            }
            Mode::Resume(checkpoint) => {
                if matches!(shared.journal.get(task.id, task.attempt), Ok(Some(r)) if r.state == JournalState::Received)
                {
                    if let Err(error) = shared.journal.start(task.id, task.attempt).await {
                        tracing::error!(task_id = %task.id, %error, "cannot journal the resume");
                    }
                }
                let ctx = TaskContext::new(None, sink, None, cancel);
                executor.resume(task.clone(), checkpoint, ctx).await
            }
        }
    };
    let result = match AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result,
        Err(_) => {
            tracing::error!(task_id = %task.id, "the executor panicked");
            TaskResult::failure(
                task.id,
                task.attempt,
                started_at,
                ErrorType::Internal,
                "the executor failed unexpectedly (panic); check the agent's log and the \
                 target's state",
            )
        }
    };
    lock(&shared.running).remove(&task.id);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_target_is_serialized_and_its_lock_is_dropped_after_use() {
        let locks = Arc::new(TargetLocks::default());
        let a = locks.acquire("web").await;
        let other = locks.acquire("db").await;
        let locks2 = locks.clone();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let waiter = tokio::spawn(async move {
            let _g = locks2.acquire("web").await;
            tx.send(()).unwrap();
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err(),
            "a second task on the same target waits"
        );
        drop(a);
        rx.recv().await.unwrap();
        waiter.await.unwrap();
        drop(other);
        assert_eq!(locks.len(), 0);
    }
}
