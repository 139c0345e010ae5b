use std::collections::BTreeMap;

use serde_json::json;
use uuid::Uuid;
use wharf_protocol::{ErrorType, TaskResult, Timestamp};
use wharf_sticker::{Component, Keyring, Release, SigningKey, Sticker, Target, TargetKind};

use super::*;

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const REPO: &str = "127.0.0.1:5000/web";

struct Bed {
    key: SigningKey,
    keyring: Keyring,
    task: Uuid,
}

impl Bed {
    fn new() -> Bed {
        let (key, _) = SigningKey::generate().unwrap();
        let mut keyring = Keyring::new();
        keyring.insert(key.verifying_key().clone()).unwrap();
        Bed {
            key,
            keyring,
            task: Uuid::new_v4(),
        }
    }

    fn record(&self, kind: TargetKind, components: &[(&str, &str)]) -> RecordedTarget {
        RecordedTarget {
            agent: "web-1".into(),
            target: "web".into(),
            kind,
            task: self.task,
            release: release(),
            components: components_of(components),
        }
    }

    fn sticker_for(&self, record: &RecordedTarget, key: &SigningKey) -> String {
        let sticker = Sticker {
            target: Target {
                agent: record.agent.clone(),
                kind: record.kind,
                name: record.target.clone(),
            },
            release: record.release.clone(),
            components: record.components.clone(),
            deployed_at: "2026-12-01T10:00:00Z".into(),
            deployed_by: "ci".into(),
            task_id: record.task,
            previous: None,
        };
        let signed = wharf_sticker::sign(&sticker, key).unwrap();
        String::from_utf8(signed.to_file_bytes()).unwrap()
    }

    fn sticker(&self, record: &RecordedTarget) -> String {
        self.sticker_for(record, &self.key)
    }
}

fn release() -> Release {
    Release {
        id: "r1".into(),
        name: "web".into(),
        version: "1.0".into(),
    }
}

fn components_of(c: &[(&str, &str)]) -> Vec<Component> {
    c.iter()
        .map(|(name, digest)| Component {
            name: (*name).into(),
            image: REPO.into(),
            digest: (*digest).into(),
        })
        .collect()
}

fn result(success: bool, outputs: &[(&str, String)]) -> Answer {
    let mut r = TaskResult::success(Uuid::new_v4(), 1, Timestamp::from_millis(0));
    r.success = success;
    r.outputs = outputs
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect::<BTreeMap<_, _>>();
    Answer::Finished(Box::new(r))
}

fn failed(error_type: ErrorType, error: &str, outputs: &[(&str, String)]) -> Answer {
    let Answer::Finished(mut r) = result(false, outputs) else {
        unreachable!()
    };
    r.error_type = Some(error_type);
    r.error = Some(error.into());
    Answer::Finished(r)
}

fn sticker_answer(text: &str) -> Answer {
    result(true, &[("sticker", text.to_string())])
}

/// A Docker agent's inspect of a running container of `image_digest`, whose label says
/// `label_digest`.
fn docker_inspect(label_digest: &str, image_digest: &str, state: &str) -> Answer {
    result(
        true,
        &[
            ("exists", "true".into()),
            ("state", state.into()),
            ("running", (state == "running").to_string()),
            ("digest", label_digest.into()),
            (
                "image_digests",
                json!([format!("{REPO}@{image_digest}")]).to_string(),
            ),
        ],
    )
}

fn compose_inspect(services: &[(&str, &str, bool)]) -> Answer {
    let list: Vec<_> = services
        .iter()
        .map(|(service, digest, running)| {
            json!({
                "service": service,
                "container": format!("web-{service}-1"),
                "state": if *running { "running" } else { "exited" },
                "running": running,
                "digest": digest,
                "repo_digests": [format!("{REPO}@{digest}")],
            })
        })
        .collect();
    result(
        true,
        &[
            ("exists", "true".into()),
            ("services", serde_json::Value::Array(list).to_string()),
        ],
    )
}

fn observe(sticker: Answer, inspect: Answer) -> Observation {
    Observation {
        sticker,
        inspect,
        tasks: vec![Uuid::new_v4(), Uuid::new_v4()],
    }
}

fn verdict(bed: &Bed, record: &RecordedTarget, o: &Observation) -> AuditRow {
    judge(record, o, &bed.keyring)
}

/// The verdict on `record` when the host shows `shown`'s sticker (signed by core) and
/// `inspect`.
fn judged(bed: &Bed, record: &RecordedTarget, shown: &RecordedTarget, inspect: Answer) -> AuditRow {
    verdict(
        bed,
        record,
        &observe(sticker_answer(&bed.sticker(shown)), inspect),
    )
}

#[track_caller]
fn assert_row(row: &AuditRow, status: AuditStatus, words: &str) {
    assert_eq!(row.status, status, "{}", row.detail);
    assert!(row.detail.contains(words), "{words}: {}", row.detail);
}

#[test]
fn a_matching_docker_target_is_ok_with_its_evidence() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    let o = observe(
        sticker_answer(&bed.sticker(&record)),
        docker_inspect(D1, D1, "running"),
    );
    let row = verdict(&bed, &record, &o);
    assert_eq!(row.status, AuditStatus::Ok, "{}", row.detail);
    assert!(row.detail.contains("web@1.0"), "{}", row.detail);
    assert!(row.detail.contains("deployed by ci"), "{}", row.detail);
    let sticker = row.evidence.sticker.unwrap();
    assert_eq!(sticker.signature, "valid");
    assert_eq!(sticker.task_id, Some(bed.task));
    assert_eq!(sticker.sha256.unwrap().len(), 64);
    assert_eq!(row.evidence.running.len(), 1);
    assert_eq!(row.evidence.tasks, o.tasks);
    assert_eq!(
        serde_json::to_value(AuditStatus::Ok).unwrap(),
        json!(AuditStatus::Ok.as_str())
    );
}

#[test]
fn a_matching_compose_project_is_ok() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Compose, &[("api", D1), ("db", D2)]);
    let o = observe(
        sticker_answer(&bed.sticker(&record)),
        compose_inspect(&[("api", D1, true), ("db", D2, true)]),
    );
    let row = verdict(&bed, &record, &o);
    assert_eq!(row.status, AuditStatus::Ok, "{}", row.detail);
}

#[test]
fn an_edited_sticker_is_tampered() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    let edited = bed.sticker(&record).replace("\"1.0\"", "\"1.1\"");
    let row = verdict(
        &bed,
        &record,
        &observe(sticker_answer(&edited), docker_inspect(D1, D1, "running")),
    );
    assert_eq!(row.status, AuditStatus::Tampered);
    assert!(row.detail.contains("edited"), "{}", row.detail);
    let sticker = row.evidence.sticker.unwrap();
    assert_eq!(sticker.signature, "bad-signature");
    // The evidence still shows what the edited file claims.
    assert_eq!(sticker.release.as_deref(), Some("web@1.1"));
}

#[test]
fn foreign_key_garbage_missing_and_copied_stickers_are_tampered() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    let running = || docker_inspect(D1, D1, "running");
    let (other, _) = SigningKey::generate().unwrap();
    let cases = [
        (
            sticker_answer(&bed.sticker_for(&record, &other)),
            "unknown-key",
            "not core's sticker key",
        ),
        (sticker_answer("{\"schema\": 7"), "malformed", "malformed"),
        (
            failed(ErrorType::NotFound, "no sticker for web", &[]),
            "missing",
            "missing",
        ),
        (
            failed(ErrorType::StickerInvalid, "not UTF-8", &[]),
            "malformed",
            "not UTF-8",
        ),
    ];
    for (answer, signature, words) in cases {
        let row = verdict(&bed, &record, &observe(answer, running()));
        assert_eq!(row.status, AuditStatus::Tampered, "{}", row.detail);
        assert!(row.detail.contains(words), "{}", row.detail);
        assert_eq!(row.evidence.sticker.unwrap().signature, signature);
    }
    // A valid sticker of another target, copied here.
    let mut elsewhere = record.clone();
    elsewhere.target = "api".into();
    let row = verdict(
        &bed,
        &record,
        &observe(
            sticker_answer(&bed.sticker(&elsewhere)),
            docker_inspect(D1, D1, "running"),
        ),
    );
    assert_eq!(row.status, AuditStatus::Tampered);
    assert!(row.detail.contains("copied"), "{}", row.detail);
}

#[test]
fn another_image_under_the_same_name_is_drift_even_with_copied_labels() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    // `docker run --name web` of another image.
    let row = judged(&bed, &record, &record, docker_inspect(D2, D2, "running"));
    assert_row(&row, AuditStatus::Drift, &format!("runs {REPO}@{D2}"));
    assert!(row.detail.contains(D1), "{}", row.detail);
    // The same, with the `wharf.digest` label copied from the real one: the image's
    // repo digests decide.
    let row = judged(&bed, &record, &record, docker_inspect(D1, D2, "running"));
    assert_row(&row, AuditStatus::Drift, D2);
    // A locally built image has no repo digest at all.
    let local = result(
        true,
        &[
            ("exists", "true".into()),
            ("state", "running".into()),
            ("running", "true".into()),
            ("image_digests", "[]".into()),
        ],
    );
    let row = judged(&bed, &record, &record, local);
    assert_row(&row, AuditStatus::Drift, "without a registry digest");
}

#[test]
fn a_stopped_or_removed_container_is_drift() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    let row = judged(&bed, &record, &record, docker_inspect(D1, D1, "exited"));
    assert_row(&row, AuditStatus::Drift, "exited");
    let gone = failed(
        ErrorType::NotFound,
        "no container named web on this host",
        &[("exists", "false".into())],
    );
    let row = judged(&bed, &record, &record, gone);
    assert_row(&row, AuditStatus::Drift, "no container");
}

#[test]
fn a_sticker_that_is_not_cores_record_is_drift() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    // A genuine older sticker put back by hand, with the old container.
    let mut older = record.clone();
    older.task = Uuid::new_v4();
    older.components = components_of(&[("web", D2)]);
    let row = judged(&bed, &record, &older, docker_inspect(D2, D2, "running"));
    assert_row(&row, AuditStatus::Drift, "core's record is task");
    // Same task, other digests (cannot be signed by core, but the check stands alone).
    let mut same_task = record.clone();
    same_task.components = components_of(&[("web", D2)]);
    let row = judged(&bed, &record, &same_task, docker_inspect(D2, D2, "running"));
    assert_row(&row, AuditStatus::Drift, "differ from core's record");
}

#[test]
fn compose_drift_names_each_service() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Compose, &[("api", D1), ("db", D2)]);
    let sticker = bed.sticker(&record);
    let row = verdict(
        &bed,
        &record,
        &observe(
            sticker_answer(&sticker),
            compose_inspect(&[("api", D2, true), ("cache", D1, true)]),
        ),
    );
    assert_eq!(row.status, AuditStatus::Drift);
    for words in ["web-api-1 runs", "db is not running", "web-cache-1 runs"] {
        assert!(row.detail.contains(words), "{words}: {}", row.detail);
    }
}

#[test]
fn no_answer_or_a_failed_inspect_is_unreachable() {
    let bed = Bed::new();
    let record = bed.record(TargetKind::Docker, &[("web", D1)]);
    let row = verdict(
        &bed,
        &record,
        &observe(
            Answer::Missing("agent web-1 is offline".into()),
            Answer::Missing("agent web-1 is offline".into()),
        ),
    );
    assert_eq!(row.status, AuditStatus::Unreachable);
    assert_eq!(row.detail, "agent web-1 is offline");
    let failed_inspect = failed(ErrorType::Docker, "cannot reach the Docker engine", &[]);
    let row = judged(&bed, &record, &record, failed_inspect);
    assert_row(&row, AuditStatus::Unreachable, "Docker engine");
}
