//! Evidence records of finished deploys and rollbacks (issue 8): built and signed by the
//! engine in the same store batch as the task's terminal state, kept in
//! [`Table::Evidence`] under the task id, served by `GET /v1/tasks/{id}/evidence`.
//!
//! A task gets a record when it is a `deploy`, `rollback`, `compose-deploy` or
//! `compose-rollback` and reaches `succeeded` or `failed`, or `cancelled`/`expired` after
//! it had started (the agent accepted it or reported a result). The record is a
//! [`wharf_sticker::Evidence`] signed with core's sticker key; the audit log gets a
//! `task.finished` entry with the document's SHA-256 in the same batch, so the hash chain
//! covers it.
//!
//! Where the parts come from:
//! - `before`: the sticker core signed for the task (`previous`, core's record at
//!   submission), else core's record of what ran on the target; for a docker target the
//!   digest the agent saw running (`previous_digest`) replaces the recorded one when they
//!   differ (a hand-made change is recorded as it was found).
//! - `after`: what the agent reports running after the task (`running_digest` of a
//!   deploy, `digest` of a rollback, `services` of a Compose task); without that, the
//!   signed sticker's components on success and `before` after a restore; empty when
//!   nothing is known to run.
//! - `health`: `passed` on success, `failed` for `health-failed`, `not-reached` when the
//!   task ended before its health gate, else `unknown`, with the result's `health*`
//!   outputs; `hooks`: the result's `pre_hook.*`/`post_hook.*` outputs. Output values are
//!   cut at [`MAX_OUTPUT_VALUE`] bytes, at most [`MAX_OUTPUTS`] of each kind.

use std::collections::BTreeMap;

use wharf_protocol::{ImageRef, TaskKind, TaskPayload, TaskResult};
use wharf_sticker::{
    Component, ComponentSet, Evidence, EvidenceHealth, EvidenceMetrics, EvidenceOutcome,
    EvidenceTask, Previous, Release, SignedEvidence, SigningKey,
};

use crate::audit::AuditRecord;
use crate::engine::model::ms_to_ts;
use crate::queue::{TaskId, TaskRecord, TaskState};
use crate::store::{Store, StoreError, Table};

/// Longest output value (hook or health) kept in a record, in bytes.
pub const MAX_OUTPUT_VALUE: usize = 4096;
/// Most hook outputs, and most health outputs, kept in a record.
pub const MAX_OUTPUTS: usize = 64;

/// The actor of `task.finished` audit entries.
pub const ACTOR: &str = "wharf-core";

/// The kinds that get evidence.
pub fn is_evidence_kind(kind: &str) -> bool {
    kind.parse::<TaskKind>()
        .is_ok_and(TaskKind::changes_release)
}

/// Whether a task in this state gets a record now.
pub fn is_due(record: &TaskRecord, result: Option<&TaskResult>) -> bool {
    if !is_evidence_kind(&record.kind) {
        return false;
    }
    match record.state {
        TaskState::Succeeded | TaskState::Failed => true,
        TaskState::Cancelled | TaskState::Expired => {
            record.accepted_at.is_some() || result.is_some()
        }
        _ => false,
    }
}

/// Why a task has no evidence record (the text of the API's 404).
pub fn missing_reason(record_kind: &str, state: TaskState) -> String {
    if !is_evidence_kind(record_kind) {
        format!(
            "a {record_kind} task has no evidence record: only deploy, rollback, compose-deploy \
             and compose-rollback tasks get one"
        )
    } else if !state.is_terminal() {
        format!(
            "the task is {state}: its evidence record is written when it finishes (`wharf task \
             wait ID`)"
        )
    } else {
        format!(
            "the task ended {state} without having started, or before this core kept evidence \
             records: it has none"
        )
    }
}

/// What the engine knows of a finishing task.
#[derive(Debug)]
pub struct Finished<'a> {
    /// The queue's record (terminal).
    pub record: &'a TaskRecord,
    /// The payload as stored (with the signed sticker).
    pub payload: &'a TaskPayload,
    /// The agent's result, if it reported one.
    pub result: Option<&'a TaskResult>,
    /// Core's record of what ran on the target before this task.
    pub recorded_before: Option<&'a Previous>,
    /// Core's record of what ran before that (a Compose rollback's destination).
    pub recorded_earlier: Option<&'a Previous>,
}

/// Builds the record of a finished task (see the module docs).
pub fn build(f: &Finished<'_>) -> Evidence {
    let record = f.record;
    let result = f.result;
    let outputs = result.map(|r| &r.outputs);
    let output = |key: &str| outputs.and_then(|o| o.get(key)).map(String::as_str);
    let sticker = sticker_of(f.payload);
    let is_docker = matches!(f.payload, TaskPayload::Deploy(_) | TaskPayload::Rollback(_));

    // What ran before.
    let recorded = sticker
        .as_ref()
        .and_then(|s| s.previous.clone())
        .or_else(|| f.recorded_before.cloned());
    let mut before = recorded.map(|p| p.components).unwrap_or_default();
    if let (true, Some(seen)) = (
        is_docker,
        output("previous_digest").filter(|d| is_digest(d)),
    ) {
        match before.iter_mut().find(|c| c.name == record.target) {
            Some(c) => c.digest = seen.to_string(),
            None => {
                if let Some(image) = docker_repository(f.payload, sticker.as_ref(), f) {
                    before.push(component(&record.target, &image, seen));
                }
            }
        }
    }

    let success = result.is_some_and(|r| r.success) && record.state == TaskState::Succeeded;
    let rolled_back = result.is_some_and(|r| r.rolled_back);
    let signed_components = sticker.as_ref().map(|s| s.components.clone());
    let requested = match (f.payload, signed_components.clone()) {
        (_, Some(components)) => components,
        (TaskPayload::Deploy(spec), None) => ImageRef::parse(&spec.image)
            .map(|i| {
                vec![component(
                    &record.target,
                    i.repository(),
                    &i.digest().to_string(),
                )]
            })
            .unwrap_or_default(),
        (TaskPayload::Rollback(spec), None) => match (
            spec.to.as_deref().filter(|d| is_digest(d)),
            docker_repository(f.payload, None, f),
        ) {
            (Some(digest), Some(image)) => vec![component(&record.target, &image, digest)],
            _ => Vec::new(),
        },
        _ => Vec::new(),
    };

    let after = match f.payload {
        TaskPayload::Deploy(_) | TaskPayload::Rollback(_) => {
            let key = if matches!(f.payload, TaskPayload::Deploy(_)) {
                "running_digest"
            } else {
                "digest"
            };
            match output(key).filter(|d| is_digest(d)) {
                Some(digest) => {
                    let known = signed_components
                        .iter()
                        .flatten()
                        .chain(before.iter())
                        .find(|c| c.digest == digest)
                        .map(|c| c.image.clone());
                    known
                        .or_else(|| docker_repository(f.payload, sticker.as_ref(), f))
                        .map(|image| vec![component(&record.target, &image, digest)])
                        .unwrap_or_default()
                }
                // No container runs after the task (or the agent never reported).
                None if result.is_some() => Vec::new(),
                None if success => signed_components.unwrap_or_default(),
                None => Vec::new(),
            }
        }
        _ => match output("services").and_then(compose_services) {
            Some(services) if success => services,
            _ if success => signed_components.unwrap_or_default(),
            _ if rolled_back || nothing_changed(result) => before.clone(),
            _ => Vec::new(),
        },
    };

    let release = match f.payload {
        TaskPayload::ComposeRollback(_) => f.recorded_earlier.map(|p| p.release.clone()),
        _ => sticker.as_ref().map(|s| s.release.clone()),
    }
    .or_else(|| match f.payload {
        TaskPayload::Deploy(spec) => release_of(&spec.release),
        TaskPayload::ComposeDeploy(spec) => release_of(&spec.release),
        _ => None,
    });

    let error_type = result
        .and_then(|r| r.error_type)
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    let error = result
        .and_then(|r| r.error.clone())
        .or_else(|| {
            record
                .last_result
                .as_ref()
                .and_then(|r| r.summary.error.clone())
        })
        .or_else(|| {
            (record.state == TaskState::Expired)
                .then(|| "the task expired before it started".to_string())
        });
    let health_status = match (success, error_type.as_deref(), result) {
        (true, _, _) => "passed",
        (false, Some("health-failed"), _) => "failed",
        (false, _, Some(r)) if r.metrics.health_ms.is_none() => "not-reached",
        (false, _, None) => "not-reached",
        _ => "unknown",
    };
    let metrics = result.map(|r| r.metrics).unwrap_or_default();

    Evidence {
        task: EvidenceTask {
            id: record.id,
            kind: record.kind.clone(),
            agent: record.agent.as_str().to_string(),
            target: record.target.clone(),
            attempt: record.attempt,
        },
        release,
        requested: ComponentSet {
            components: requested,
        },
        requested_by: record.requester.clone(),
        submitted_at: ms_to_ts(record.created_at).to_string(),
        started_at: result
            .map(|r| r.started_at.to_string())
            .or_else(|| record.accepted_at.map(|at| ms_to_ts(at).to_string())),
        completed_at: ms_to_ts(record.updated_at).to_string(),
        outcome: EvidenceOutcome {
            state: record.state.as_str().to_string(),
            success,
            rolled_back,
            error_type,
            error,
        },
        before: ComponentSet { components: before },
        after: ComponentSet { components: after },
        health: EvidenceHealth {
            status: health_status.to_string(),
            outputs: kept_outputs(outputs, |k| k.starts_with("health")),
        },
        hooks: kept_outputs(outputs, |k| {
            k.starts_with("pre_hook.") || k.starts_with("post_hook.")
        }),
        metrics: EvidenceMetrics {
            pull_ms: metrics.pull_ms,
            deploy_ms: metrics.deploy_ms,
            health_ms: metrics.health_ms,
        },
    }
}

/// A signed record ready for the round's batch: the document and its audit entry.
#[derive(Debug)]
pub struct Sealed {
    /// The task.
    pub id: TaskId,
    /// The document as stored and exported.
    pub bytes: Vec<u8>,
    /// Its `task.finished` audit entry.
    pub audit: AuditRecord,
}

/// Signs a record and makes its `task.finished` audit entry.
///
/// # Errors
///
/// The record cannot be signed (it breaks a schema rule or is too large).
pub fn seal(evidence: &Evidence, key: &SigningKey) -> Result<Sealed, wharf_sticker::EvidenceError> {
    let signed: SignedEvidence = evidence.sign(key)?;
    let bytes = signed.to_bytes();
    let sha256 = wharf_sticker::sha256_hex(&bytes);
    let audit = AuditRecord::new(ACTOR, "task.finished", evidence.task.id.to_string()).with_detail(
        serde_json::json!({
            "agent": evidence.task.agent,
            "target": evidence.task.target,
            "kind": evidence.task.kind,
            "state": evidence.outcome.state,
            "evidence_sha256": sha256,
        }),
    );
    Ok(Sealed {
        id: evidence.task.id,
        bytes,
        audit,
    })
}

/// The stored record of a task, exactly as signed and exported.
///
/// # Errors
///
/// The store cannot be read.
pub fn read(store: &dyn Store, id: TaskId) -> Result<Option<Vec<u8>>, StoreError> {
    store.get(Table::Evidence, id.as_bytes())
}

fn sticker_of(payload: &TaskPayload) -> Option<wharf_sticker::Sticker> {
    let text = match payload {
        TaskPayload::Deploy(spec) => spec.sticker.as_deref(),
        TaskPayload::Rollback(spec) => spec.sticker.as_deref(),
        TaskPayload::ComposeDeploy(spec) => spec.sticker.as_deref(),
        _ => None,
    }?;
    wharf_sticker::SignedSticker::parse(text.as_bytes())
        .ok()
        .map(|s| s.sticker)
}

/// The repository a docker target's images come from: the deploy's image, else the
/// sticker's or core's recorded component.
fn docker_repository(
    payload: &TaskPayload,
    sticker: Option<&wharf_sticker::Sticker>,
    f: &Finished<'_>,
) -> Option<String> {
    if let TaskPayload::Deploy(spec) = payload {
        if let Ok(image) = ImageRef::parse(&spec.image) {
            return Some(image.repository().to_string());
        }
    }
    sticker
        .and_then(|s| s.components.first())
        .or_else(|| f.recorded_before.and_then(|p| p.components.first()))
        .map(|c| c.image.clone())
}

fn component(name: &str, image: &str, digest: &str) -> Component {
    Component {
        name: name.to_string(),
        image: image.to_string(),
        digest: digest.to_string(),
    }
}

fn is_digest(d: &str) -> bool {
    wharf_sticker::is_digest(d)
}

/// A Compose result's `services` output (`{"service": "repo@sha256:…"}`) as components.
pub(crate) fn compose_services(text: &str) -> Option<Vec<Component>> {
    let map: BTreeMap<String, String> = serde_json::from_str(text).ok()?;
    let components: Vec<Component> = map
        .iter()
        .filter_map(|(service, pinned)| {
            let image = ImageRef::parse(pinned).ok()?;
            Some(component(
                service,
                image.repository(),
                &image.digest().to_string(),
            ))
        })
        .collect();
    (!components.is_empty()).then_some(components)
}

/// Whether a failed result says the target was left as it was.
fn nothing_changed(result: Option<&TaskResult>) -> bool {
    result.is_some_and(|r| {
        !r.success
            && r.error
                .as_deref()
                .is_some_and(|e| e.contains("nothing was changed"))
    })
}

fn release_of(info: &wharf_protocol::ReleaseInfo) -> Option<Release> {
    (!info.id.is_empty() && !info.name.is_empty() && !info.version.is_empty()).then(|| Release {
        id: info.id.clone(),
        name: info.name.clone(),
        version: info.version.clone(),
    })
}

/// The outputs whose key matches, values cut at [`MAX_OUTPUT_VALUE`] bytes (on a
/// character boundary, marked with `…`), at most [`MAX_OUTPUTS`].
fn kept_outputs(
    outputs: Option<&BTreeMap<String, String>>,
    keep: impl Fn(&str) -> bool,
) -> BTreeMap<String, String> {
    outputs
        .into_iter()
        .flatten()
        .filter(|(k, _)| keep(k))
        .take(MAX_OUTPUTS)
        .map(|(k, v)| (k.clone(), cut(v)))
        .collect()
}

fn cut(value: &str) -> String {
    if value.len() <= MAX_OUTPUT_VALUE {
        return value.to_string();
    }
    let mut end = MAX_OUTPUT_VALUE;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_outputs_are_cut_on_char_boundaries() {
        let long = "é".repeat(MAX_OUTPUT_VALUE);
        let kept = cut(&long);
        assert!(kept.len() <= MAX_OUTPUT_VALUE + '…'.len_utf8());
        assert!(kept.ends_with('…'));
        assert_eq!(cut("short"), "short");
        let many: BTreeMap<String, String> = (0..200)
            .map(|i| (format!("pre_hook.output.k{i:03}"), "v".into()))
            .collect();
        assert_eq!(
            kept_outputs(Some(&many), |k| k.starts_with("pre_hook.")).len(),
            MAX_OUTPUTS
        );
    }

    #[test]
    fn compose_services_output_becomes_components() {
        let d = format!("sha256:{}", "ab".repeat(32));
        let text = format!(r#"{{"web":"127.0.0.1:5000/shop@{d}","bad":"latest"}}"#);
        let got = compose_services(&text).unwrap();
        assert_eq!(got, vec![component("web", "127.0.0.1:5000/shop", &d)]);
        assert!(compose_services("not json").is_none());
    }

    #[test]
    fn missing_reasons_name_the_case() {
        assert!(missing_reason("inspect", TaskState::Succeeded).contains("only deploy"));
        assert!(missing_reason("deploy", TaskState::Running).contains("running"));
        assert!(missing_reason("deploy", TaskState::Cancelled).contains("without having started"));
    }
}

/// The engine writes records with the terminal state: unit tests on the in-memory store.
#[cfg(test)]
mod engine_tests {
    use std::sync::Arc;
    use std::time::Duration;

    use wharf_protocol::{
        AgentTask, DeploySpec, ErrorType, Priority, SealedCredentials, TaskPayload, TaskResult,
        Timestamp,
    };
    use wharf_sticker::{Keyring, SigningKey, Verification};

    use crate::audit::AuditLog;
    use crate::engine::{
        AgentDirectory, Engine, EngineConfig, Session, SessionCommand, SubmitRequest,
    };
    use crate::queue::TaskState;
    use crate::store::{MemoryStore, Store, Table};

    const V1: &str =
        "127.0.0.1:5000/app@sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const V2: &str =
        "127.0.0.1:5000/app@sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn digest(image: &str) -> String {
        image.rsplit_once('@').unwrap().1.to_string()
    }

    struct OneAgent;

    impl AgentDirectory for OneAgent {
        fn agent_exists(&self, name: &str) -> bool {
            name == "host-1"
        }
        fn seal_credentials(
            &self,
            _: &str,
            _: &AgentTask,
            _: &[wharf_protocol::ImageRef],
        ) -> Result<Option<SealedCredentials>, String> {
            Ok(None)
        }
    }

    fn request(payload: TaskPayload) -> SubmitRequest {
        SubmitRequest {
            agent: "host-1".into(),
            target: "web".into(),
            payload,
            priority: Priority::Normal,
            idempotency_key: None,
            expires_at: None,
            expires_in: None,
            timeout: None,
            max_attempts: Some(1),
        }
    }

    async fn assigned(session: &mut Session) -> AgentTask {
        match tokio::time::timeout(Duration::from_secs(5), session.commands.recv()).await {
            Ok(Some(SessionCommand::Assign(task))) => *task,
            other => panic!("expected an Assign, got {other:?}"),
        }
    }

    /// Submits, takes the Assign, accepts and reports `result` (adjusted to the task).
    async fn run(
        engine: &Engine,
        session: &mut Session,
        payload: TaskPayload,
        result: impl FnOnce(uuid::Uuid) -> TaskResult,
    ) -> uuid::Uuid {
        let (_, view) = engine.submit(request(payload), "alice").await.unwrap();
        let task = assigned(session).await;
        engine.accepted("host-1", task.id, 1).await.unwrap();
        engine.result("host-1", result(view.id)).await.unwrap();
        view.id
    }

    #[tokio::test]
    async fn finished_deploys_get_signed_evidence_and_a_chained_audit_entry() {
        let (key, _) = SigningKey::generate().unwrap();
        let keyring = Keyring::from(key.verifying_key().clone());
        let store = MemoryStore::new();
        let shared: Arc<dyn Store> = Arc::new(store.clone());
        let audit = AuditLog::open(shared.clone()).unwrap();
        let engine = Engine::start(
            shared.clone(),
            Arc::new(OneAgent),
            Some(Arc::new(key)),
            EngineConfig::default().with_audit(audit.clone()),
        )
        .unwrap();
        let mut session = engine.open_session("host-1", "quic").await.unwrap();

        // A first deploy: nothing before, V1 after, the hook outputs kept.
        let first = run(
            &engine,
            &mut session,
            TaskPayload::Deploy(DeploySpec::new(V1)),
            |id| {
                let mut r = TaskResult::success(id, 1, Timestamp::now());
                r.outputs.insert("running_digest".into(), digest(V1));
                r.outputs.insert("post_hook.ok".into(), "true".into());
                r.outputs.insert("container_id".into(), "c1".into());
                r.metrics.pull_ms = Some(12);
                r
            },
        )
        .await;
        let bytes = super::read(&*shared, first)
            .unwrap()
            .expect("evidence stored");
        let Verification::Valid(e) = wharf_sticker::verify_evidence(&bytes, &keyring) else {
            panic!("the evidence does not verify");
        };
        assert_eq!((e.task.id, e.task.kind.as_str()), (first, "deploy"));
        assert_eq!(e.requested_by, "alice");
        assert!(e.before.components.is_empty());
        assert_eq!(e.after.components[0].digest, digest(V1));
        assert_eq!(e.after.components[0].image, "127.0.0.1:5000/app");
        assert_eq!(
            e.hooks.get("post_hook.ok").map(String::as_str),
            Some("true")
        );
        assert!(!e.hooks.contains_key("container_id"));
        assert_eq!(
            (e.outcome.state.as_str(), e.outcome.success),
            ("succeeded", true)
        );
        assert_eq!(e.health.status, "passed");
        assert_eq!(e.metrics.pull_ms, Some(12));
        let release = e.release.unwrap();
        assert_eq!(
            (release.name.as_str(), release.version.as_str()),
            ("web", "sha256:111111111111")
        );

        // A failed deploy restored V1: before V1 (core's record and what the agent saw),
        // after V1, health failed.
        let second = run(
            &engine,
            &mut session,
            TaskPayload::Deploy(DeploySpec::new(V2)),
            |id| {
                let mut r = TaskResult::failure(
                    id,
                    1,
                    Timestamp::now(),
                    ErrorType::HealthFailed,
                    "unhealthy",
                );
                r.retriable = false;
                r.rolled_back = true;
                r.outputs.insert("previous_digest".into(), digest(V1));
                r.outputs.insert("running_digest".into(), digest(V1));
                r.metrics.health_ms = Some(3000);
                r
            },
        )
        .await;
        let bytes2 = super::read(&*shared, second)
            .unwrap()
            .expect("evidence stored");
        let e2 = wharf_sticker::verify_evidence(&bytes2, &keyring)
            .into_valid()
            .unwrap();
        assert_eq!(e2.requested.components[0].digest, digest(V2));
        assert_eq!(e2.before.components[0].digest, digest(V1));
        assert_eq!(e2.after.components[0].digest, digest(V1));
        assert_eq!(
            (e2.outcome.state.as_str(), e2.outcome.rolled_back),
            ("failed", true)
        );
        assert_eq!(e2.outcome.error_type.as_deref(), Some("health-failed"));
        assert_eq!(e2.health.status, "failed");

        // The chain holds a task.finished entry per record, with the document's hash.
        let finished: Vec<_> = audit
            .list(0, 100)
            .unwrap()
            .into_iter()
            .filter(|entry| entry.action == "task.finished")
            .collect();
        assert_eq!(finished.len(), 2);
        assert_eq!(finished[0].target, first.to_string());
        assert_eq!(
            finished[0].detail["evidence_sha256"],
            wharf_sticker::sha256_hex(&bytes)
        );
        assert_eq!(
            finished[1].detail["evidence_sha256"],
            wharf_sticker::sha256_hex(&bytes2)
        );
        assert_eq!(finished[1].detail["state"], "failed");
        audit.verify().unwrap();

        // An inspect, and a deploy cancelled while queued, get no record.
        let inspect = run(&engine, &mut session, TaskPayload::Inspect, |id| {
            TaskResult::success(id, 1, Timestamp::now())
        })
        .await;
        assert_eq!(super::read(&*shared, inspect).unwrap(), None);
        let mut other = request(TaskPayload::Deploy(DeploySpec::new(V2)));
        other.target = "api".into();
        other.expires_in = Some(wharf_protocol::DurationMs::from_mins(10));
        engine.close_session("host-1", session.id);
        let (_, queued) = engine.submit(other, "alice").await.unwrap();
        let cancelled = engine.cancel(queued.id, "alice").await.unwrap();
        assert_eq!(cancelled.state, TaskState::Cancelled);
        assert_eq!(super::read(&*shared, queued.id).unwrap(), None);
        assert_eq!(store.scan(Table::Evidence).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_failed_commit_keeps_neither_the_terminal_state_nor_the_evidence() {
        let (key, _) = SigningKey::generate().unwrap();
        let store = MemoryStore::new();
        let shared: Arc<dyn Store> = Arc::new(store.clone());
        let engine = Engine::start(
            shared.clone(),
            Arc::new(OneAgent),
            Some(Arc::new(key)),
            EngineConfig::default(),
        )
        .unwrap();
        let mut session = engine.open_session("host-1", "quic").await.unwrap();
        let (_, view) = engine
            .submit(request(TaskPayload::Deploy(DeploySpec::new(V1))), "alice")
            .await
            .unwrap();
        assigned(&mut session).await;
        engine.accepted("host-1", view.id, 1).await.unwrap();
        store.set_fail_commits(true);
        let answer = engine
            .result("host-1", TaskResult::success(view.id, 1, Timestamp::now()))
            .await;
        assert!(
            answer.is_err(),
            "a result is not acknowledged before it is durable"
        );
        assert!(store.scan(Table::Evidence).unwrap().is_empty());
        let stored = store
            .get(Table::Tasks, view.id.as_bytes())
            .unwrap()
            .unwrap();
        let task: crate::engine::StoredTask = postcard::from_bytes(&stored).unwrap();
        assert_eq!(task.record.state, TaskState::Running);
    }
}
