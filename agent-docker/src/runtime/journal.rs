//! The agent's journal (design.md §4): every task the agent took, per `(task_id, attempt)`,
//! in sled under `<state-dir>/journal`.
//!
//! A record holds the task **without** its sealed credentials, its state
//! ([`JournalState::Received`], [`JournalState::Running`] with the executor's latest
//! checkpoint, [`JournalState::Finished`] with its [`TaskResult`]) and whether core
//! acknowledged the result. Every write is durable before the call returns: the write is
//! applied and `flush_async` is awaited under one mutex, so there is never more than one
//! flush in flight (sled 0.34 deadlocks under many concurrent `flush_async` calls, see
//! docs/store.md). The runtime writes before it acts: `Accepted` is sent after
//! [`Journal::receive`], a step is taken after [`Journal::checkpoint`], a result is reported
//! after [`Journal::finish`].
//!
//! Acknowledged results are pruned, keeping the newest [`JournalConfig::keep_acked`]
//! (default 1000) and none older than [`JournalConfig::keep_for`] (default 7 days), so a
//! re-sent `Assign` of a recent task is still answered from the journal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_protocol::{AgentTask, TaskResult, Timestamp};

/// The first byte of every encoded record: the record format.
const RECORD_VERSION: u8 = 1;

/// How long [`Journal::open`] waits for the journal's lock (held by a process still
/// exiting, or by another agent on the same state dir).
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Largest checkpoint an executor may write (a step name and a few ids, in practice).
pub const MAX_CHECKPOINT: usize = 1024 * 1024;

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// sled failed (disk full, IO error, a journal held by another process).
    #[error(
        "journal {path}: {reason} (check the disk and that no other agent uses this state \
         dir)"
    )]
    Storage {
        /// The journal's directory.
        path: PathBuf,
        /// sled's error.
        reason: String,
    },
    /// A record does not decode (written by a newer agent, or damaged).
    #[error("journal record of task {task_id} attempt {attempt} does not decode: {reason}")]
    Corrupt {
        /// The task.
        task_id: Uuid,
        /// The attempt.
        attempt: u32,
        /// What is wrong.
        reason: String,
    },
    /// The record to update does not exist.
    #[error("task {task_id} attempt {attempt} is not in the journal")]
    Missing {
        /// The task.
        task_id: Uuid,
        /// The attempt.
        attempt: u32,
    },
    /// A checkpoint over [`MAX_CHECKPOINT`] bytes.
    #[error("checkpoint of {len} bytes is over the limit of {MAX_CHECKPOINT} bytes")]
    CheckpointTooLarge {
        /// Its size.
        len: usize,
    },
}

/// Where a journaled task stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JournalState {
    /// Journaled (and `Accepted` sent), not started: nothing was changed on the host.
    Received,
    /// Handed to the executor; `checkpoint` is the last state it made durable.
    Running {
        /// The executor's latest checkpoint (`None`: it wrote none yet).
        checkpoint: Option<Vec<u8>>,
    },
    /// Done.
    Finished {
        /// The result to report.
        result: TaskResult,
    },
}

/// One journaled `(task_id, attempt)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// The task as received, with `credentials` removed.
    pub task: AgentTask,
    /// Where it stands.
    pub state: JournalState,
    /// Whether core acknowledged the result.
    pub acked: bool,
    /// When the agent received it.
    pub received_at: Timestamp,
    /// When core acknowledged the result.
    pub acked_at: Option<Timestamp>,
}

impl JournalRecord {
    /// The result, once finished.
    pub fn result(&self) -> Option<&TaskResult> {
        match &self.state {
            JournalState::Finished { result } => Some(result),
            _ => None,
        }
    }

    /// Whether the task is finished.
    pub fn is_finished(&self) -> bool {
        matches!(self.state, JournalState::Finished { .. })
    }
}

/// What [`Journal::receive`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// First time: journaled as [`JournalState::Received`].
    New,
    /// Already journaled: the existing record (never run twice).
    Known(Box<JournalRecord>),
}

/// Pruning of acknowledged records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalConfig {
    /// Acknowledged records kept, newest first.
    pub keep_acked: usize,
    /// Acknowledged records older than this (since the ack) are dropped.
    pub keep_for: Duration,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            keep_acked: 1000,
            keep_for: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The journal. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    db: sled::Db,
    /// `(task_id, attempt)` → record.
    tasks: sled::Tree,
    /// `ack sequence (u64 BE)` → `(task_id, attempt)`: acknowledged records, oldest first.
    acked: sled::Tree,
    /// `(task_id, attempt)` of the finished records core has not acknowledged.
    pending: sled::Tree,
    /// One writer at a time: write + `flush_async` happen under it.
    write: tokio::sync::Mutex<()>,
    config: JournalConfig,
}

fn key(task_id: Uuid, attempt: u32) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..16].copy_from_slice(task_id.as_bytes());
    k[16..].copy_from_slice(&attempt.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> Option<(Uuid, u32)> {
    let id = Uuid::from_slice(k.get(..16)?).ok()?;
    let attempt = u32::from_be_bytes(k.get(16..20)?.try_into().ok()?);
    Some((id, attempt))
}

fn encode(record: &JournalRecord) -> Result<Vec<u8>, String> {
    let mut out = vec![RECORD_VERSION];
    out.extend(postcard::to_stdvec(record).map_err(|e| e.to_string())?);
    Ok(out)
}

fn decode(bytes: &[u8]) -> Result<JournalRecord, String> {
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!(
            "record format {v}, this agent reads {RECORD_VERSION}"
        )),
        None => Err("empty record".into()),
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path` (`<state-dir>/journal`).
    ///
    /// # Errors
    ///
    /// [`JournalError::Storage`] when sled cannot open it (held by another process, IO).
    pub fn open(path: &Path, config: JournalConfig) -> Result<Journal, JournalError> {
        let storage = |e: sled::Error| JournalError::Storage {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        // The lock of a journal just closed (this process) or of an agent still exiting
        // can take a moment to go away: retry for a short while before giving up.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .mode(sled::Mode::HighThroughput)
                .open()
            {
                Ok(db) => break db,
                // sled reports a held lock as an `Other` IO error naming it (the
                // `WouldBlock` of `flock` is only in its message).
                Err(sled::Error::Io(e))
                    if (e.kind() == std::io::ErrorKind::WouldBlock
                        || e.to_string().contains("could not acquire lock"))
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(storage(e)),
            }
        };
        let tasks = db.open_tree("tasks").map_err(storage)?;
        let acked = db.open_tree("acked").map_err(storage)?;
        let pending = db.open_tree("pending").map_err(storage)?;
        Ok(Journal {
            path: path.to_path_buf(),
            db,
            tasks,
            acked,
            pending,
            write: tokio::sync::Mutex::new(()),
            config,
        })
    }

    fn storage(&self, e: impl std::fmt::Display) -> JournalError {
        JournalError::Storage {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    async fn flush(&self) -> Result<(), JournalError> {
        self.db
            .flush_async()
            .await
            .map(|_| ())
            .map_err(|e| self.storage(e))
    }

    fn read(&self, task_id: Uuid, attempt: u32) -> Result<Option<JournalRecord>, JournalError> {
        match self
            .tasks
            .get(key(task_id, attempt))
            .map_err(|e| self.storage(e))?
        {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|reason| JournalError::Corrupt {
                    task_id,
                    attempt,
                    reason,
                }),
        }
    }

    fn put(&self, record: &JournalRecord) -> Result<(), JournalError> {
        let bytes = encode(record).map_err(|e| self.storage(e))?;
        self.tasks
            .insert(key(record.task.id, record.task.attempt), bytes)
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// The record of `(task_id, attempt)`, if journaled.
    ///
    /// # Errors
    ///
    /// Storage failure or a record that does not decode.
    pub fn get(&self, task_id: Uuid, attempt: u32) -> Result<Option<JournalRecord>, JournalError> {
        self.read(task_id, attempt)
    }

    /// Journals `task` (credentials removed) as received, unless `(id, attempt)` is known:
    /// then the existing record comes back and nothing changes. Durable on return.
    ///
    /// # Errors
    ///
    /// Storage failure: the task must not be accepted.
    pub async fn receive(&self, task: &AgentTask) -> Result<Admission, JournalError> {
        let _w = self.write.lock().await;
        if let Some(existing) = self.read(task.id, task.attempt)? {
            return Ok(Admission::Known(Box::new(existing)));
        }
        let mut task = task.clone();
        task.credentials = None;
        self.put(&JournalRecord {
            task,
            state: JournalState::Received,
            acked: false,
            received_at: Timestamp::now(),
            acked_at: None,
        })?;
        self.flush().await?;
        Ok(Admission::New)
    }

    async fn update(
        &self,
        task_id: Uuid,
        attempt: u32,
        change: impl FnOnce(&mut JournalRecord),
    ) -> Result<JournalRecord, JournalError> {
        let _w = self.write.lock().await;
        let mut record = self
            .read(task_id, attempt)?
            .ok_or(JournalError::Missing { task_id, attempt })?;
        change(&mut record);
        self.put(&record)?;
        self.flush().await?;
        Ok(record)
    }

    /// Marks the task as handed to the executor (no checkpoint yet). Durable on return.
    ///
    /// # Errors
    ///
    /// Storage failure or an unknown task: the task must not be run.
    pub async fn start(&self, task_id: Uuid, attempt: u32) -> Result<(), JournalError> {
        self.update(task_id, attempt, |r| {
            if !r.is_finished() {
                r.state = JournalState::Running { checkpoint: None };
            }
        })
        .await
        .map(|_| ())
    }

    /// Stores the executor's checkpoint. Durable on return.
    ///
    /// # Errors
    ///
    /// Storage failure, an unknown task, or a checkpoint over [`MAX_CHECKPOINT`]: the
    /// executor must not take the step.
    pub async fn checkpoint(
        &self,
        task_id: Uuid,
        attempt: u32,
        state: Vec<u8>,
    ) -> Result<(), JournalError> {
        if state.len() > MAX_CHECKPOINT {
            return Err(JournalError::CheckpointTooLarge { len: state.len() });
        }
        self.update(task_id, attempt, |r| {
            if !r.is_finished() {
                r.state = JournalState::Running {
                    checkpoint: Some(state),
                };
            }
        })
        .await
        .map(|_| ())
    }

    /// Stores the result (the first one wins: a finished record keeps its result).
    /// Durable on return; returns the result now journaled.
    ///
    /// # Errors
    ///
    /// Storage failure or an unknown task.
    pub async fn finish(
        &self,
        task_id: Uuid,
        attempt: u32,
        result: TaskResult,
    ) -> Result<TaskResult, JournalError> {
        let _w = self.write.lock().await;
        let mut record = self
            .read(task_id, attempt)?
            .ok_or(JournalError::Missing { task_id, attempt })?;
        if !record.is_finished() {
            record.state = JournalState::Finished { result };
            self.put(&record)?;
            self.pending
                .insert(key(task_id, attempt), &[])
                .map_err(|e| self.storage(e))?;
            self.flush().await?;
        }
        record
            .result()
            .cloned()
            .ok_or(JournalError::Missing { task_id, attempt })
    }

    /// Records core's acknowledgement of the result, then prunes old acknowledged records.
    /// An unknown `(task_id, attempt)` (already pruned) is not an error.
    ///
    /// # Errors
    ///
    /// Storage failure.
    pub async fn ack(&self, task_id: Uuid, attempt: u32) -> Result<(), JournalError> {
        let _w = self.write.lock().await;
        let Some(mut record) = self.read(task_id, attempt)? else {
            return Ok(());
        };
        if record.acked || !record.is_finished() {
            return Ok(());
        }
        record.acked = true;
        record.acked_at = Some(Timestamp::now());
        let seq = self.db.generate_id().map_err(|e| self.storage(e))?;
        self.put(&record)?;
        self.acked
            .insert(seq.to_be_bytes(), &key(task_id, attempt))
            .map_err(|e| self.storage(e))?;
        self.pending
            .remove(key(task_id, attempt))
            .map_err(|e| self.storage(e))?;
        self.prune(Timestamp::now())?;
        self.flush().await
    }

    /// Drops acknowledged records beyond the newest `keep_acked` or older than `keep_for`.
    fn prune(&self, now: Timestamp) -> Result<(), JournalError> {
        let cutoff = now.saturating_sub(self.config.keep_for.into());
        let mut excess = self.acked.len().saturating_sub(self.config.keep_acked);
        for entry in self.acked.iter() {
            let (seq, task_key) = entry.map_err(|e| self.storage(e))?;
            let old = match split_key(&task_key) {
                Some((id, attempt)) => self
                    .read(id, attempt)
                    .ok()
                    .flatten()
                    .and_then(|r| r.acked_at)
                    .is_none_or(|at| at < cutoff),
                None => true,
            };
            if excess == 0 && !old {
                break;
            }
            excess = excess.saturating_sub(1);
            self.tasks.remove(&task_key).map_err(|e| self.storage(e))?;
            self.acked.remove(seq).map_err(|e| self.storage(e))?;
        }
        Ok(())
    }

    /// Every record, in key order.
    ///
    /// # Errors
    ///
    /// Storage failure or a record that does not decode.
    pub fn records(&self) -> Result<Vec<JournalRecord>, JournalError> {
        let mut out = Vec::new();
        for entry in self.tasks.iter() {
            let (k, v) = entry.map_err(|e| self.storage(e))?;
            let (task_id, attempt) = split_key(&k).unwrap_or((Uuid::nil(), 0));
            out.push(decode(&v).map_err(|reason| JournalError::Corrupt {
                task_id,
                attempt,
                reason,
            })?);
        }
        Ok(out)
    }

    /// Finished results core has not acknowledged, oldest first (what `Hello` carries).
    ///
    /// # Errors
    ///
    /// Storage failure or a record that does not decode.
    pub fn pending_results(&self) -> Result<Vec<TaskResult>, JournalError> {
        let mut out = Vec::new();
        for entry in self.pending.iter() {
            let (k, _) = entry.map_err(|e| self.storage(e))?;
            let Some((task_id, attempt)) = split_key(&k) else {
                continue;
            };
            if let Some(record) = self.read(task_id, attempt)? {
                if !record.acked {
                    out.extend(record.result().cloned());
                }
            }
        }
        out.sort_by_key(|r| (r.completed_at, r.task_id, r.attempt));
        Ok(out)
    }

    /// Tasks received or running but not finished: what crash recovery resumes.
    ///
    /// # Errors
    ///
    /// As [`Journal::records`].
    pub fn unfinished(&self) -> Result<Vec<JournalRecord>, JournalError> {
        let mut out: Vec<JournalRecord> = self
            .records()?
            .into_iter()
            .filter(|r| !r.is_finished())
            .collect();
        out.sort_by_key(|r| r.received_at);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::{DeploySpec, SealedCredentials, TaskPayload};

    fn task() -> AgentTask {
        let image = format!("127.0.0.1:5000/app@sha256:{}", "a".repeat(64));
        let mut t =
            wharf_testbed::fake_core::task(TaskPayload::Deploy(DeploySpec::new(image)), "web");
        t.credentials = Some(SealedCredentials {
            ephemeral_public: [7; 32],
            nonce: [1; 12],
            ciphertext: vec![9; 40],
        });
        t
    }

    fn open(dir: &Path, keep_acked: usize) -> Journal {
        Journal::open(
            &dir.join("journal"),
            JournalConfig {
                keep_acked,
                ..JournalConfig::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn open_waits_for_a_journal_that_is_being_closed() {
        let dir = tempfile::tempdir().unwrap();
        let held = open(dir.path(), 10);
        let closer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(held);
        });
        // Held for 300 ms more: the open waits for it instead of failing at once.
        let reopened = open(dir.path(), 10);
        closer.join().unwrap();
        drop(reopened);
    }

    #[tokio::test]
    async fn a_task_goes_through_its_states_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let t = task();
        {
            let j = open(dir.path(), 10);
            assert_eq!(j.receive(&t).await.unwrap(), Admission::New);
            let stored = j.get(t.id, 1).unwrap().unwrap();
            assert_eq!(
                stored.task.credentials, None,
                "credentials are never journaled"
            );
            assert_eq!(stored.state, JournalState::Received);
            j.start(t.id, 1).await.unwrap();
            j.checkpoint(t.id, 1, b"pull".to_vec()).await.unwrap();
        }
        let j = open(dir.path(), 10);
        let unfinished = j.unfinished().unwrap();
        assert_eq!(unfinished.len(), 1);
        assert_eq!(
            unfinished[0].state,
            JournalState::Running {
                checkpoint: Some(b"pull".to_vec())
            }
        );
        // A second receive of the same (id, attempt) is answered from the record.
        assert!(matches!(j.receive(&t).await.unwrap(), Admission::Known(_)));
        let result = TaskResult::success(t.id, 1, Timestamp::now());
        j.finish(t.id, 1, result.clone()).await.unwrap();
        // The first result wins.
        let mut other = result.clone();
        other.success = false;
        assert_eq!(j.finish(t.id, 1, other).await.unwrap(), result);
        assert_eq!(j.pending_results().unwrap(), vec![result.clone()]);
        assert!(j.unfinished().unwrap().is_empty());
        j.ack(t.id, 1).await.unwrap();
        assert!(j.pending_results().unwrap().is_empty());
        // Still answered after the ack.
        assert_eq!(j.get(t.id, 1).unwrap().unwrap().result(), Some(&result));
        // Another attempt is another record.
        let mut retry = t.clone();
        retry.attempt = 2;
        assert_eq!(j.receive(&retry).await.unwrap(), Admission::New);
    }

    #[tokio::test]
    async fn acked_records_are_pruned_to_a_bounded_tail() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 3);
        let mut ids = Vec::new();
        for _ in 0..6 {
            let t = task();
            j.receive(&t).await.unwrap();
            j.finish(t.id, 1, TaskResult::success(t.id, 1, Timestamp::now()))
                .await
                .unwrap();
            j.ack(t.id, 1).await.unwrap();
            ids.push(t.id);
        }
        let pending = task();
        j.receive(&pending).await.unwrap();
        let kept: Vec<Uuid> = ids
            .iter()
            .copied()
            .filter(|id| j.get(*id, 1).unwrap().is_some())
            .collect();
        assert_eq!(
            kept,
            ids[3..].to_vec(),
            "the newest 3 acked records are kept"
        );
        assert!(
            j.get(pending.id, 1).unwrap().is_some(),
            "unacked records stay"
        );
    }

    #[tokio::test]
    async fn an_oversized_checkpoint_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let j = open(dir.path(), 3);
        let t = task();
        j.receive(&t).await.unwrap();
        let err = j
            .checkpoint(t.id, 1, vec![0; MAX_CHECKPOINT + 1])
            .await
            .unwrap_err();
        assert!(
            matches!(err, JournalError::CheckpointTooLarge { .. }),
            "{err}"
        );
        let err = j.start(Uuid::new_v4(), 1).await.unwrap_err();
        assert!(matches!(err, JournalError::Missing { .. }), "{err}");
    }
}
