//! `wharf history` (`GET /v1/history`): every deploy and rollback of one target, newest
//! first, and which of them `wharf rollback` can go back to right now.
//!
//! An entry's digests, release and `before` come from the task's signed evidence record
//! (see [`crate::evidence`]); a task without one (not finished, or finished before this
//! core kept records) shows what its result reported, if anything. The rollback column:
//!
//! - `running`: core's record says this runs on the target now (or the entry has the same
//!   digests);
//! - `kept`: core's record of what ran before the current release: the agent kept its
//!   container (`<name>-previous`) or Compose lock, and `wharf rollback` (`wharf compose
//!   rollback`) without `--to` goes there;
//! - `pullable` / `not_pullable` / `unknown`: an older successful entry whose digest core
//!   asked the registry about ([`crate::registry_probe`]); a pullable docker entry is
//!   reached with `wharf rollback --to sha256:D`. `--to` keeps the running repository,
//!   so an entry of another repository is `other_repository`. A Compose rollback only
//!   goes to the kept lock: a pullable older Compose release is redeployed from its lock;
//! - `not_applicable`: the task did not succeed (or has not finished).

use std::future::Future;

use serde::{Deserialize, Serialize};
use uuid::Uuid;
use wharf_protocol::{ImageRef, TaskKind, Timestamp};
use wharf_sticker::{Component, SignedEvidence};

use crate::engine::TaskView;
use crate::queue::{TaskId, TaskState};
use crate::registry_probe::{Prober, Pullable};

/// One deploy or rollback of the target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The task.
    pub task_id: Uuid,
    /// `deploy`, `rollback`, `compose-deploy` or `compose-rollback`.
    pub kind: TaskKind,
    /// Its state.
    pub state: TaskState,
    /// `name@version` of the release it deployed or went back to, if known.
    pub release: Option<String>,
    /// What it put on the target; for a task that did not succeed, what it tried to put
    /// there; as far as known.
    pub components: Vec<Component>,
    /// What ran before it, as far as known.
    pub before: Vec<Component>,
    /// Who submitted it.
    pub requested_by: String,
    /// When it was submitted.
    pub created_at: Timestamp,
    /// When it finished (`null` while it has not).
    pub completed_at: Option<Timestamp>,
    /// Whether a failure restored what ran before.
    pub rolled_back: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Whether, and how, the target can be rolled back to this entry now.
    pub rollback: RollbackTarget,
}

/// Whether an entry is a rollback target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackStatus {
    /// What runs now.
    Running,
    /// The kept previous container or lock: `wharf rollback` without `--to`.
    Kept,
    /// An older release whose images the registry still has.
    Pullable,
    /// An older release the registry no longer has.
    NotPullable,
    /// The registry could not be asked (unreachable, credentials refused, …).
    Unknown,
    /// Another repository than the running one (`--to` keeps the repository).
    OtherRepository,
    /// The task did not succeed, or has not finished.
    NotApplicable,
}

/// The rollback column of an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackTarget {
    /// The status.
    pub status: RollbackStatus,
    /// What it means here, in words.
    pub detail: String,
    /// The command that rolls back to it, when there is one.
    pub command: Option<String>,
}

impl RollbackTarget {
    fn new(status: RollbackStatus, detail: impl Into<String>, command: Option<String>) -> Self {
        RollbackTarget {
            status,
            detail: detail.into(),
            command,
        }
    }
}

/// What answers "is this digest still pullable" ([`Prober`] in core; a table in tests).
pub trait Probe {
    /// Whether `digest` of `repository` can be pulled now.
    fn check(&mut self, repository: &str, digest: &str) -> impl Future<Output = Pullable>;
}

impl Probe for Prober {
    fn check(&mut self, repository: &str, digest: &str) -> impl Future<Output = Pullable> {
        Prober::check(self, repository, digest)
    }
}

/// The kinds a history shows: Docker ones for a target, Compose ones for a project.
pub fn kinds(compose: bool) -> [TaskKind; 2] {
    if compose {
        [TaskKind::ComposeDeploy, TaskKind::ComposeRollback]
    } else {
        [TaskKind::Deploy, TaskKind::Rollback]
    }
}

/// Builds the history of `(agent, target)` from its tasks (in submission order), their stored
/// evidence documents (`evidence(id)`), core's record `kept` (current, previous) and the
/// registry `probe`.
pub async fn build(
    agent: &str,
    target: &str,
    compose: bool,
    mut tasks: Vec<TaskView>,
    evidence: impl Fn(TaskId) -> Option<Vec<u8>>,
    kept: Option<(TaskId, Option<TaskId>)>,
    probe: &mut impl Probe,
) -> Vec<HistoryEntry> {
    let wanted = kinds(compose);
    tasks.retain(|t| t.agent == agent && t.target == target && wanted.contains(&t.kind));
    // Newest first; tasks submitted in the same millisecond keep submission order, reversed.
    tasks.reverse();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.created_at));
    let mut entries: Vec<HistoryEntry> = tasks
        .iter()
        .map(|t| {
            let signed = evidence(t.id).and_then(|b| SignedEvidence::parse(&b).ok());
            entry_of(t, signed)
        })
        .collect();

    let (current, previous) = match kept {
        Some((c, p)) => (Some(c), p),
        None => (None, None),
    };
    let digests_of = |id: Option<TaskId>, entries: &[HistoryEntry]| {
        id.and_then(|id| entries.iter().find(|e| e.task_id == id))
            .map(|e| digest_list(&e.components))
            .filter(|d| !d.is_empty())
    };
    let current_digests = digests_of(current, &entries);
    let previous_digests = digests_of(previous, &entries);
    let current_repository = current
        .and_then(|id| entries.iter().find(|e| e.task_id == id))
        .and_then(|e| e.components.first())
        .map(|c| c.image.clone());
    let (kept_detail, kept_command) = if compose {
        (
            "previous lock kept",
            format!("wharf compose rollback --agent {agent} --project {target}"),
        )
    } else {
        (
            "previous release: wharf rollback restores the kept previous container, or pulls this digest if the host no longer keeps it",
            format!("wharf rollback --agent {agent} --target {target}"),
        )
    };

    for entry in &mut entries {
        let digests = digest_list(&entry.components);
        entry.rollback = if entry.state != TaskState::Succeeded {
            let why = if entry.state.is_terminal() {
                format!("the task ended {}", entry.state)
            } else {
                format!("the task is {}", entry.state)
            };
            RollbackTarget::new(RollbackStatus::NotApplicable, why, None)
        } else if Some(entry.task_id) == current {
            RollbackTarget::new(RollbackStatus::Running, "runs now (core's record)", None)
        } else if Some(entry.task_id) == previous {
            RollbackTarget::new(
                RollbackStatus::Kept,
                kept_detail,
                Some(kept_command.clone()),
            )
        } else if digests.is_empty() {
            RollbackTarget::new(
                RollbackStatus::Unknown,
                "no digests are recorded for this task",
                None,
            )
        } else if current_digests.as_ref() == Some(&digests) {
            RollbackTarget::new(RollbackStatus::Running, "the same digests run now", None)
        } else if previous_digests.as_ref() == Some(&digests) {
            RollbackTarget::new(
                RollbackStatus::Kept,
                kept_detail,
                Some(kept_command.clone()),
            )
        } else {
            pullability(
                agent,
                target,
                compose,
                entry,
                current_repository.as_deref(),
                probe,
            )
            .await
        };
    }
    entries
}

async fn pullability(
    agent: &str,
    target: &str,
    compose: bool,
    entry: &HistoryEntry,
    current_repository: Option<&str>,
    probe: &mut impl Probe,
) -> RollbackTarget {
    if !compose {
        if let (Some(c), Some(running)) = (entry.components.first(), current_repository) {
            if c.image != running {
                return RollbackTarget::new(
                    RollbackStatus::OtherRepository,
                    format!(
                        "{} is not the running repository {running}; `wharf rollback --to` keeps \
                         the repository: deploy {}@{} instead",
                        c.image, c.image, c.digest
                    ),
                    None,
                );
            }
        }
    }
    let mut unknown = None;
    for c in &entry.components {
        match probe.check(&c.image, &c.digest).await {
            Pullable::Yes => {}
            Pullable::No { reason } => {
                return RollbackTarget::new(RollbackStatus::NotPullable, reason, None)
            }
            Pullable::Unknown { reason } => {
                unknown.get_or_insert(reason);
            }
        }
    }
    if let Some(reason) = unknown {
        return RollbackTarget::new(RollbackStatus::Unknown, reason, None);
    }
    if compose {
        RollbackTarget::new(
            RollbackStatus::Pullable,
            "every image is still pullable; `wharf compose rollback` only goes to the kept \
             lock: redeploy this release's lock with `wharf compose deploy`",
            None,
        )
    } else {
        let digest = &entry.components[0].digest;
        RollbackTarget::new(
            RollbackStatus::Pullable,
            "still pullable from its registry",
            Some(format!(
                "wharf rollback --agent {agent} --target {target} --to {digest}"
            )),
        )
    }
}

fn digest_list(components: &[Component]) -> Vec<String> {
    let mut digests: Vec<String> = components.iter().map(|c| c.digest.clone()).collect();
    digests.sort();
    digests
}

/// An entry before its rollback column is decided.
fn entry_of(task: &TaskView, signed: Option<SignedEvidence>) -> HistoryEntry {
    let result = task.result.as_ref();
    let (release, components, before) = match signed.map(|s| s.evidence) {
        // What it put there; for a task that did not succeed, what it tried.
        Some(e) if task.state == TaskState::Succeeded => (
            e.release.map(|r| format!("{}@{}", r.name, r.version)),
            e.after.components,
            e.before.components,
        ),
        Some(e) => (
            e.release.map(|r| format!("{}@{}", r.name, r.version)),
            e.requested.components,
            e.before.components,
        ),
        None => {
            let outputs = result.map(|r| &r.outputs);
            let components = match task.kind {
                TaskKind::Deploy => outputs
                    .and_then(|o| o.get("image"))
                    .and_then(|i| ImageRef::parse(i).ok())
                    .filter(|_| result.is_some_and(|r| r.success))
                    .map(|i| {
                        vec![Component {
                            name: task.target.clone(),
                            image: i.repository().to_string(),
                            digest: i.digest().to_string(),
                        }]
                    })
                    .unwrap_or_default(),
                TaskKind::ComposeDeploy | TaskKind::ComposeRollback => outputs
                    .and_then(|o| o.get("services"))
                    .and_then(|s| crate::evidence::compose_services(s))
                    .unwrap_or_default(),
                _ => Vec::new(),
            };
            (None, components, Vec::new())
        }
    };
    HistoryEntry {
        task_id: task.id,
        kind: task.kind,
        state: task.state,
        release,
        components,
        before,
        requested_by: task.requested_by.clone(),
        created_at: task.created_at,
        completed_at: task.state.is_terminal().then_some(task.updated_at),
        rolled_back: result.is_some_and(|r| r.rolled_back),
        error: result
            .and_then(|r| r.error.clone())
            .or_else(|| task.error.clone()),
        rollback: RollbackTarget::new(RollbackStatus::NotApplicable, "", None),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use wharf_protocol::{Priority, TaskResult};

    use super::*;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    /// A finished docker deploy of `digest(n)` submitted at second `n`.
    fn deploy(n: u8, state: TaskState) -> TaskView {
        let id = Uuid::from_u128(u128::from(n));
        let mut result = TaskResult::success(id, 1, Timestamp::from_millis(i64::from(n) * 1000));
        result.success = state == TaskState::Succeeded;
        result
            .outputs
            .insert("image".into(), format!("127.0.0.1:5000/app@{}", digest(n)));
        TaskView {
            id,
            kind: TaskKind::Deploy,
            state,
            agent: "a".into(),
            target: "web".into(),
            idempotency_key: None,
            attempt: 1,
            created_at: Timestamp::from_millis(i64::from(n) * 1000),
            updated_at: Timestamp::from_millis(i64::from(n) * 1000 + 500),
            requested_by: "ci".into(),
            priority: Priority::Normal,
            expires_at: None,
            cancel_requested: false,
            error: None,
            result: Some(result),
        }
    }

    struct Table(HashMap<String, Pullable>, Vec<String>);

    impl Probe for Table {
        fn check(&mut self, repository: &str, digest: &str) -> impl Future<Output = Pullable> {
            self.1.push(format!("{repository}@{digest}"));
            let answer = self.0.get(digest).cloned().unwrap_or(Pullable::Unknown {
                reason: "registry down".into(),
            });
            std::future::ready(answer)
        }
    }

    /// The history of docker target `web` on agent `a`, without evidence records.
    async fn docker_history(
        tasks: Vec<TaskView>,
        kept: Option<(TaskId, Option<TaskId>)>,
        probe: &mut Table,
    ) -> Vec<HistoryEntry> {
        build("a", "web", false, tasks, |_| None, kept, probe).await
    }

    #[tokio::test]
    async fn entries_are_newest_first_with_their_rollback_column() {
        let tasks = vec![
            deploy(1, TaskState::Succeeded),
            deploy(2, TaskState::Succeeded),
            deploy(3, TaskState::Succeeded),
            deploy(4, TaskState::Succeeded),
            deploy(5, TaskState::Failed),
            deploy(6, TaskState::Succeeded),
        ];
        let id = |n: u8| Uuid::from_u128(u128::from(n));
        let mut probe = Table(
            HashMap::from([
                (digest(2), Pullable::Yes),
                (
                    digest(3),
                    Pullable::No {
                        reason: "gone".into(),
                    },
                ),
            ]),
            Vec::new(),
        );
        let entries = docker_history(tasks, Some((id(6), Some(id(4)))), &mut probe).await;
        let order: Vec<Uuid> = entries.iter().map(|e| e.task_id).collect();
        assert_eq!(order, [6, 5, 4, 3, 2, 1].map(id));
        let status: Vec<RollbackStatus> = entries.iter().map(|e| e.rollback.status).collect();
        assert_eq!(
            status,
            [
                RollbackStatus::Running,
                RollbackStatus::NotApplicable,
                RollbackStatus::Kept,
                RollbackStatus::NotPullable,
                RollbackStatus::Pullable,
                RollbackStatus::Unknown,
            ]
        );
        assert_eq!(entries[2].rollback.detail, "previous release: wharf rollback restores the kept previous container, or pulls this digest if the host no longer keeps it");
        assert_eq!(
            entries[2].rollback.command.as_deref(),
            Some("wharf rollback --agent a --target web")
        );
        assert_eq!(
            entries[4].rollback.command,
            Some(format!(
                "wharf rollback --agent a --target web --to {}",
                digest(2)
            ))
        );
        assert_eq!(entries[5].rollback.detail, "registry down");
        // Only the older successful entries were asked about, each once.
        assert_eq!(probe.1.len(), 3, "{:?}", probe.1);
        assert_eq!(entries[0].components[0].digest, digest(6));
        assert_eq!(entries[1].completed_at, Some(Timestamp::from_millis(5500)));
    }

    #[tokio::test]
    async fn other_repositories_and_other_targets() {
        let mut other = deploy(1, TaskState::Succeeded);
        other.result.as_mut().unwrap().outputs.insert(
            "image".into(),
            format!("127.0.0.1:5000/other@{}", digest(1)),
        );
        let mut elsewhere = deploy(3, TaskState::Succeeded);
        elsewhere.target = "api".into();
        let tasks = vec![other, deploy(2, TaskState::Succeeded), elsewhere];
        let mut probe = Table(HashMap::new(), Vec::new());
        let entries = docker_history(tasks, Some((Uuid::from_u128(2), None)), &mut probe).await;
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].rollback.status, RollbackStatus::OtherRepository);
        assert!(probe.1.is_empty());
        let compose = build(
            "a",
            "web",
            true,
            vec![deploy(2, TaskState::Succeeded)],
            |_| None,
            None,
            &mut probe,
        )
        .await;
        assert!(compose.is_empty());
    }
}
