//! The fleet sticker audit (`GET /v1/audit`, `wharf audit`; design.md §6).
//!
//! For every target core has a record of (what the latest successful deploy or
//! rollback put there, [`RecordedTarget`]), core asks the target's agent for its sticker
//! (`read-sticker`) and for what runs (`inspect`), then [`judge`] compares three things:
//! the sticker's digests, the digests actually running and core's own record. A target
//! is:
//! - `ok`: the sticker is signed by core's key, names this target, matches core's record,
//!   and every component runs the digest it names;
//! - `drift`: what runs differs from the sticker (another image, a stopped or missing
//!   container, an extra service), or the sticker differs from core's record (another
//!   task or other digests) — the detail says which;
//! - `tampered`: the sticker is missing, malformed, signed by an unknown key, its
//!   signature does not match its content, or it names another target;
//! - `unreachable`: the agent is offline or revoked, or did not answer in time.
//!
//! [`judge`] is pure (no IO), so every verdict is unit-tested; [`run`] is the thin shell
//! that submits the tasks through the engine and waits for their results.
//!
//! What runs is taken from the image the container really has (the `RepoDigests` of its
//! image id, output `image_digests` of the Docker agent, `repo_digests` per service of
//! the Compose agent), not from labels someone may have copied.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;
use wharf_protocol::{DurationMs, ErrorType, Priority, TaskPayload, TaskResult};
use wharf_sticker::{Component, Keyring, TargetKind, Verification};

use crate::engine::{Engine, EngineError, RecordedTarget, SubmitRequest, TaskEvent, TaskView};

/// How long [`run`] waits for the agents' answers unless told otherwise.
pub const DEFAULT_AUDIT_WAIT: Duration = Duration::from_secs(30);
/// Longest wait a caller may ask for (the CLI's request timeout is 60 s).
pub const MAX_AUDIT_WAIT: Duration = Duration::from_secs(50);

/// The verdict on one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditStatus {
    /// Sticker valid, matching core's record and what runs.
    Ok,
    /// What runs differs from the sticker, or the sticker from core's record.
    Drift,
    /// The sticker is missing, malformed, badly signed or for another target.
    Tampered,
    /// The agent could not be asked.
    Unreachable,
}

impl AuditStatus {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditStatus::Ok => "ok",
            AuditStatus::Drift => "drift",
            AuditStatus::Tampered => "tampered",
            AuditStatus::Unreachable => "unreachable",
        }
    }
}

/// One target of the audit (`GET /v1/audit` answers an array of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRow {
    /// Agent name.
    pub agent: String,
    /// Container name or Compose project.
    pub target: String,
    /// `docker` or `compose`.
    pub kind: TargetKind,
    /// The verdict.
    pub status: AuditStatus,
    /// Why, in words (every finding, `; `-separated).
    pub detail: String,
    /// What the verdict rests on.
    pub evidence: Evidence,
}

/// What a verdict rests on: core's record, the sticker as read and checked, what runs,
/// and the tasks that read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// Core's record: the task that last deployed the target, its release and components.
    pub record: RecordedTarget,
    /// The sticker as the agent read it (`null` if it could not be read).
    pub sticker: Option<StickerEvidence>,
    /// What runs, per container.
    pub running: Vec<Running>,
    /// The `read-sticker` and `inspect` tasks (see `wharf task show`).
    pub tasks: Vec<Uuid>,
}

/// A sticker as read from the host, and what its check found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StickerEvidence {
    /// `valid`, `bad-signature`, `unknown-key`, `malformed` or `missing`.
    pub signature: String,
    /// The sticker's task, release and components (when it could be parsed).
    pub task_id: Option<Uuid>,
    /// `name@version` of its release.
    pub release: Option<String>,
    /// Who deployed it and when, as the sticker says.
    pub deployed_by: Option<String>,
    /// When, as the sticker says.
    pub deployed_at: Option<String>,
    /// Its components.
    pub components: Vec<Component>,
    /// The file's SHA-256 (hex) as read, so the evidence names the exact bytes.
    pub sha256: Option<String>,
}

/// One running (or stopped) container of the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The component: the container name (Docker) or the service (Compose).
    pub name: String,
    /// Container name.
    pub container: String,
    /// Docker state (`running`, `exited`, ...).
    pub state: String,
    /// Whether it runs.
    pub running: bool,
    /// The digest the agent reports for it.
    pub digest: Option<String>,
    /// The `repo@sha256:` references of the image it really runs (`None` if the agent
    /// did not report them).
    pub image_digests: Option<Vec<String>>,
}

impl Running {
    /// Whether it runs the image of `digest`: one of its image's repo digests is that
    /// digest (or, if the agent did not report them, the digest it reports).
    fn runs(&self, digest: &str) -> bool {
        match &self.image_digests {
            Some(list) => list
                .iter()
                .any(|d| d.rsplit_once('@').is_some_and(|(_, x)| x == digest)),
            None => self.digest.as_deref() == Some(digest),
        }
    }

    /// The image it runs, in words.
    fn describe(&self) -> String {
        match (&self.image_digests, &self.digest) {
            (Some(list), _) if !list.is_empty() => list.join(", "),
            (Some(_), Some(d)) => format!("an image without a registry digest (label {d})"),
            (Some(_), None) | (None, None) => "an image without a registry digest".into(),
            (None, Some(d)) => d.clone(),
        }
    }
}

/// What an agent answered to one task, or why it did not.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// The task finished with this result.
    Finished(Box<TaskResult>),
    /// No result: the reason (agent offline, timed out, task expired).
    Missing(String),
}

/// The agent's answers for one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The `read-sticker` task's answer.
    pub sticker: Answer,
    /// The `inspect` task's answer.
    pub inspect: Answer,
    /// The two task ids (for the evidence).
    pub tasks: Vec<Uuid>,
}

/// The verdict on `record` from what its agent answered, checking stickers against
/// `keyring` (core's sticker key).
pub fn judge(record: &RecordedTarget, observation: &Observation, keyring: &Keyring) -> AuditRow {
    let row = |status, detail: String, sticker, running| AuditRow {
        agent: record.agent.clone(),
        target: record.target.clone(),
        kind: record.kind,
        status,
        detail,
        evidence: Evidence {
            record: record.clone(),
            sticker,
            running,
            tasks: observation.tasks.clone(),
        },
    };
    let (sticker_result, inspect_result) = match (&observation.sticker, &observation.inspect) {
        (Answer::Finished(s), Answer::Finished(i)) => (s, i),
        (Answer::Missing(why), _) | (_, Answer::Missing(why)) => {
            return row(AuditStatus::Unreachable, why.clone(), None, Vec::new());
        }
    };
    let running = match running_of(record, inspect_result) {
        Ok(r) => r,
        Err(why) => return row(AuditStatus::Unreachable, why, None, Vec::new()),
    };
    let (sticker, checked) = check_sticker(record, sticker_result, keyring);
    let valid = match checked {
        Ok(valid) => valid,
        Err(why) => return row(AuditStatus::Tampered, why, Some(sticker), running),
    };
    let mut findings = Vec::new();
    // The sticker against core's record.
    if valid.task_id != record.task {
        findings.push(format!(
            "the sticker is of task {} ({}), but core's record is task {} ({})",
            valid.task_id,
            release_name(&valid.release),
            record.task,
            release_name(&record.release),
        ));
    } else if components_set(&valid.components) != components_set(&record.components) {
        findings.push(format!(
            "the sticker's components ({}) differ from core's record ({})",
            components_text(&valid.components),
            components_text(&record.components),
        ));
    }
    // What runs against the sticker.
    for component in &valid.components {
        let mine: Vec<&Running> = running
            .iter()
            .filter(|r| r.name == component.name)
            .collect();
        if mine.is_empty() {
            findings.push(format!(
                "{} is not running: no container (the sticker says {})",
                component.name, component.digest
            ));
            continue;
        }
        for r in mine {
            if !r.runs(&component.digest) {
                findings.push(format!(
                    "{} runs {}, but the sticker says {}@{}",
                    r.container,
                    r.describe(),
                    component.image,
                    component.digest
                ));
            } else if !r.running {
                findings.push(format!(
                    "{} is {} (not running) with the sticker's image",
                    r.container, r.state
                ));
            }
        }
    }
    let named: BTreeSet<&str> = valid.components.iter().map(|c| c.name.as_str()).collect();
    for r in &running {
        if !named.contains(r.name.as_str()) && r.running {
            findings.push(format!(
                "{} runs {} but is not in the sticker",
                r.container,
                r.describe()
            ));
        }
    }
    if findings.is_empty() {
        let detail = format!(
            "{} (task {}) deployed by {} at {}; running digests match",
            release_name(&valid.release),
            valid.task_id,
            valid.deployed_by,
            valid.deployed_at
        );
        row(AuditStatus::Ok, detail, Some(sticker), running)
    } else {
        row(
            AuditStatus::Drift,
            findings.join("; "),
            Some(sticker),
            running,
        )
    }
}

fn release_name(r: &wharf_sticker::Release) -> String {
    format!("{}@{}", r.name, r.version)
}

fn components_set(c: &[Component]) -> BTreeSet<(&str, &str)> {
    c.iter()
        .map(|c| (c.name.as_str(), c.digest.as_str()))
        .collect()
}

fn components_text(c: &[Component]) -> String {
    c.iter()
        .map(|c| format!("{} {}", c.name, c.digest))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The sticker's evidence, and either the valid sticker (for this target) or why it is
/// tampered with.
fn check_sticker(
    record: &RecordedTarget,
    result: &TaskResult,
    keyring: &Keyring,
) -> (StickerEvidence, Result<wharf_sticker::Sticker, String>) {
    let mut evidence = StickerEvidence {
        signature: "missing".into(),
        task_id: None,
        release: None,
        deployed_by: None,
        deployed_at: None,
        components: Vec::new(),
        sha256: None,
    };
    let text = match (result.success, result.outputs.get("sticker")) {
        (true, Some(text)) => text,
        _ => {
            let why = match result.error_type {
                Some(ErrorType::NotFound) | None => format!(
                    "the sticker is missing on the host, but core's record says task {} \
                     deployed {} there",
                    record.task,
                    release_name(&record.release)
                ),
                _ => {
                    evidence.signature = "malformed".into();
                    format!(
                        "the sticker cannot be read: {}",
                        result.error.as_deref().unwrap_or("no reason given")
                    )
                }
            };
            return (evidence, Err(why));
        }
    };
    evidence.sha256 = Some(hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        text.as_bytes(),
    )));
    if let Ok(parsed) = wharf_sticker::SignedSticker::parse(text.as_bytes()) {
        let s = &parsed.sticker;
        evidence.task_id = Some(s.task_id);
        evidence.release = Some(release_name(&s.release));
        evidence.deployed_by = Some(s.deployed_by.clone());
        evidence.deployed_at = Some(s.deployed_at.clone());
        evidence.components = s.components.clone();
    }
    let checked = match wharf_sticker::verify(text.as_bytes(), keyring) {
        Verification::Valid(sticker) => {
            evidence.signature = "valid".into();
            let t = &sticker.target;
            if t.agent != record.agent || t.kind != record.kind || t.name != record.target {
                Err(format!(
                    "the sticker is validly signed but for {} target `{}` of agent `{}`: \
                     it was copied here from another target",
                    t.kind, t.name, t.agent
                ))
            } else {
                Ok(sticker)
            }
        }
        Verification::BadSignature => {
            evidence.signature = "bad-signature".into();
            Err(
                "the sticker's signature does not match its content: it was edited after \
                 core signed it"
                    .into(),
            )
        }
        Verification::UnknownKey { key_id } => {
            evidence.signature = "unknown-key".into();
            Err(format!(
                "the sticker is signed by key {key_id}, which is not core's sticker key"
            ))
        }
        Verification::Malformed { reason } => {
            evidence.signature = "malformed".into();
            Err(format!("the sticker is malformed: {reason}"))
        }
    };
    (evidence, checked)
}

/// What runs on the target, from an `inspect` result. `Err` when the agent could not
/// look (a Docker error): the audit cannot judge then.
fn running_of(record: &RecordedTarget, result: &TaskResult) -> Result<Vec<Running>, String> {
    let out = &result.outputs;
    if !result.success && result.error_type != Some(ErrorType::NotFound) {
        return Err(format!(
            "the agent could not inspect the target: {}",
            result.error.as_deref().unwrap_or("no reason given")
        ));
    }
    let list = |v: Option<&Value>| -> Option<Vec<String>> {
        v.and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
    };
    match record.kind {
        TargetKind::Docker => {
            if out.get("exists").map(String::as_str) != Some("true") {
                return Ok(Vec::new());
            }
            let image_digests = out
                .get("image_digests")
                .and_then(|s| serde_json::from_str::<Value>(s).ok());
            Ok(vec![Running {
                name: record.target.clone(),
                container: record.target.clone(),
                state: out.get("state").cloned().unwrap_or_default(),
                running: out.get("running").map(String::as_str) == Some("true"),
                digest: out.get("digest").cloned(),
                image_digests: list(image_digests.as_ref()),
            }])
        }
        TargetKind::Compose => {
            let services: Vec<Value> = out
                .get("services")
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or_default();
            let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            Ok(services
                .iter()
                .map(|v| Running {
                    name: text(v, "service").unwrap_or_default(),
                    container: text(v, "container").unwrap_or_default(),
                    state: text(v, "state").unwrap_or_default(),
                    running: v.get("running").and_then(Value::as_bool) == Some(true),
                    digest: text(v, "digest"),
                    image_digests: list(v.get("repo_digests")),
                })
                .collect())
        }
    }
}

/// An agent as the audit sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    /// Name.
    pub name: String,
    /// `online`, `offline` or `revoked`.
    pub state: String,
}

/// Runs the audit of `targets` (core's records), asking the agents that are online, as
/// `actor` (the tasks are submitted, and audit-logged, in their name). Waits up to `wait`
/// for the answers; a target whose agent did not answer by then is `unreachable`.
///
/// Every target at once: the submits run concurrently (the engine commits them in shared
/// rounds), and one subscriber to the engine's events waits for all the tasks, so the
/// cost grows with the number of tasks, not with its square.
///
/// # Errors
///
/// [`EngineError`] when the engine refuses a submit for another reason than the agent
/// (a stopped engine, a store failure).
pub async fn run(
    engine: &Engine,
    keyring: &Keyring,
    agents: &[AgentStatus],
    targets: Vec<RecordedTarget>,
    actor: &str,
    wait: Duration,
) -> Result<Vec<AuditRow>, EngineError> {
    let deadline = tokio::time::Instant::now() + wait;
    let state_of: BTreeMap<&str, &str> = agents
        .iter()
        .map(|a| (a.name.as_str(), a.state.as_str()))
        .collect();
    // Subscribed before the first submit: no state change of an audit task is missed.
    let events = engine.subscribe();
    let asked = targets.iter().map(|record| {
        let state = state_of.get(record.agent.as_str()).copied();
        ask(engine, record, state, actor, wait)
    });
    let asked: Vec<Result<Asked, String>> = futures_util::future::join_all(asked)
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let ids: Vec<Uuid> = asked
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .flat_map(|a| [a.sticker, a.inspect])
        .collect();
    let mut answers = await_all(engine, events, &ids, deadline).await;
    let mut take = |id: Uuid, agent: &str| {
        answers
            .remove(&id)
            .unwrap_or_else(|| Answer::Missing(format!("agent {agent} did not answer task {id}")))
    };
    Ok(targets
        .iter()
        .zip(asked)
        .map(|(record, asked)| {
            let observation = match asked {
                Ok(a) => Observation {
                    sticker: take(a.sticker, &record.agent),
                    inspect: take(a.inspect, &record.agent),
                    tasks: vec![a.sticker, a.inspect],
                },
                Err(why) => Observation {
                    sticker: Answer::Missing(why.clone()),
                    inspect: Answer::Missing(why),
                    tasks: Vec::new(),
                },
            };
            judge(record, &observation, keyring)
        })
        .collect())
}

/// The two tasks that read one target.
struct Asked {
    sticker: Uuid,
    inspect: Uuid,
}

/// Submits the `read-sticker` and `inspect` tasks of a target whose agent is in `state`
/// (`None`: not enrolled); `Ok(Err(why))` when the agent cannot be asked.
async fn ask(
    engine: &Engine,
    record: &RecordedTarget,
    state: Option<&str>,
    actor: &str,
    wait: Duration,
) -> Result<Result<Asked, String>, EngineError> {
    let gone = || format!("agent {} is no longer enrolled", record.agent);
    match state {
        Some("online") => {}
        Some("revoked") => return Ok(Err(format!("agent {} is revoked", record.agent))),
        Some(_) => return Ok(Err(format!("agent {} is offline", record.agent))),
        None => return Ok(Err(gone())),
    }
    let mut ids = Vec::with_capacity(2);
    for payload in [TaskPayload::ReadSticker, TaskPayload::Inspect] {
        let request = SubmitRequest {
            agent: record.agent.clone(),
            target: record.target.clone(),
            payload,
            priority: Priority::High,
            idempotency_key: None,
            expires_at: None,
            expires_in: Some(DurationMs::from(wait)),
            timeout: Some(DurationMs::from(wait)),
            max_attempts: Some(1),
        };
        match engine.submit(request, actor).await {
            Ok((_, view)) => ids.push(view.id),
            Err(EngineError::UnknownAgent(_)) => return Ok(Err(gone())),
            Err(e) => return Err(e),
        }
    }
    Ok(match ids[..] {
        [sticker, inspect] => Ok(Asked { sticker, inspect }),
        _ => Err(gone()),
    })
}

/// The answer to each task of `ids` once it is terminal, or why there is none by
/// `deadline`. `events` must have been subscribed before the tasks were submitted.
async fn await_all(
    engine: &Engine,
    mut events: tokio::sync::broadcast::Receiver<TaskEvent>,
    ids: &[Uuid],
    deadline: tokio::time::Instant,
) -> HashMap<Uuid, Answer> {
    let mut answers = HashMap::with_capacity(ids.len());
    let mut pending: HashSet<Uuid> = ids.iter().copied().collect();
    // Every change after the subscription is in `events` (or reported as a lag).
    while !pending.is_empty() {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Err(_) => break,
            Ok(Ok(TaskEvent::State { task_id, state })) => {
                if state.is_terminal() && pending.remove(&task_id) {
                    let answer = match engine.get(task_id).await {
                        Some(view) => answer_of(view),
                        None => Answer::Missing(format!("task {task_id} is unknown to core")),
                    };
                    answers.insert(task_id, answer);
                }
            }
            Ok(Ok(TaskEvent::Progress { .. })) => {}
            // Events were dropped for this slow reader: read the pending tasks again.
            Ok(Err(RecvError::Lagged(_))) => recheck(engine, &mut pending, &mut answers).await,
            Ok(Err(RecvError::Closed)) => break,
        }
    }
    for id in pending {
        let why = match engine.get(id).await {
            Some(view) => format!(
                "agent {} did not answer in time (task {id} is still {})",
                view.agent, view.state
            ),
            None => format!("task {id} is unknown to core"),
        };
        answers.insert(id, Answer::Missing(why));
    }
    answers
}

/// Moves every task of `pending` that has ended into `answers`.
async fn recheck(
    engine: &Engine,
    pending: &mut HashSet<Uuid>,
    answers: &mut HashMap<Uuid, Answer>,
) {
    let mut ended = Vec::new();
    for id in pending.iter() {
        match engine.get(*id).await {
            Some(view) if view.state.is_terminal() => ended.push((*id, answer_of(view))),
            Some(_) => {}
            None => ended.push((
                *id,
                Answer::Missing(format!("task {id} is unknown to core")),
            )),
        }
    }
    for (id, answer) in ended {
        pending.remove(&id);
        answers.insert(id, answer);
    }
}

/// The answer of a terminal task.
fn answer_of(view: TaskView) -> Answer {
    match view.result {
        Some(result) => Answer::Finished(Box::new(result)),
        None => Answer::Missing(format!(
            "agent {} did not run task {} (it ended {})",
            view.agent, view.id, view.state
        )),
    }
}

#[cfg(test)]
mod tests;
