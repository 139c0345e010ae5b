//! The evidence record of a finished deploy or rollback (`wharf.evidence/v1`): what the
//! task did, to what, for whom, and with which outcome, signed by the core with its
//! sticker key exactly like a sticker.
//!
//! ```json
//! {
//!   "schema": "wharf.evidence/v1",
//!   "task": { "id": "…", "kind": "deploy", "agent": "host-1", "target": "web", "attempt": 1 },
//!   "release": { "id": "rel-42", "name": "shop", "version": "1.4.2" },
//!   "requested": { "components": [ { "name": "web", "image": "reg:5000/shop", "digest": "sha256:…" } ] },
//!   "requested_by": "ci-release (token 3f…)",
//!   "submitted_at": "2025-01-02T03:04:05.000Z",
//!   "started_at": "2025-01-02T03:04:06.120Z",
//!   "completed_at": "2025-01-02T03:04:09.870Z",
//!   "outcome": { "state": "succeeded", "success": true, "rolled_back": false,
//!                "error_type": null, "error": null },
//!   "before": { "components": [ { "name": "web", "image": "reg:5000/shop", "digest": "sha256:…" } ] },
//!   "after":  { "components": [ { "name": "web", "image": "reg:5000/shop", "digest": "sha256:…" } ] },
//!   "health": { "status": "passed", "outputs": {} },
//!   "hooks": { "post_hook.ok": "true", "post_hook.message": "smoke test passed" },
//!   "metrics": { "pull_ms": 812, "deploy_ms": 403, "health_ms": 1210 },
//!   "signature": { "alg": "ed25519", "key_id": "ed25519:<16 hex>", "value": "<base64>" }
//! }
//! ```
//!
//! `release` is `null` when core had no release to name (a rollback without a record of
//! what it went back to). `before` and `after` may be empty: nothing ran before a first
//! deploy, and nothing is known to run after a failure that left no container. The
//! signature covers the [canonical JSON](crate::canonical_json) of the whole document minus
//! its top-level `signature` member, exactly as for stickers, and [`verify_evidence`]
//! checks raw bytes the way [`verify`](crate::verify) checks a sticker file: unknown extra
//! members are allowed and covered by the signature; duplicate keys, a wrong schema, a bad
//! digest, time or task id make the document malformed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::keys::{Keyring, SigningKey};
use crate::model::{
    is_digest, is_rfc3339, parse_json, signature_from_object, top_object, Component,
    MalformedSticker, Release, Signature, MAX_STICKER_BYTES,
};
use crate::sign::{signature_of, verify_document, Verification};

/// The `schema` string of every evidence record.
pub const EVIDENCE_SCHEMA_V1: &str = "wharf.evidence/v1";

/// Largest evidence document accepted, in bytes (1 MiB, as for stickers). Core keeps
/// records far smaller by shortening long hook and health outputs.
pub const MAX_EVIDENCE_BYTES: usize = MAX_STICKER_BYTES;

/// Why an evidence record cannot be signed or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// The document breaks a `wharf.evidence/v1` rule; `reason` names the field.
    #[error("malformed evidence: {reason}")]
    Malformed {
        /// What is wrong, naming the field (`after.components[0].digest`).
        reason: String,
    },
    /// The signed document would be larger than [`MAX_EVIDENCE_BYTES`], so no verifier
    /// would accept it; shorten the outputs it carries.
    #[error(
        "the evidence document is {len} bytes, more than the {max}-byte limit; shorten \
         the outputs it records"
    )]
    TooLarge {
        /// The document's size.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl From<MalformedSticker> for EvidenceError {
    fn from(error: MalformedSticker) -> Self {
        EvidenceError::Malformed {
            reason: error.reason,
        }
    }
}

/// Which task the evidence is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceTask {
    /// The task id.
    pub id: Uuid,
    /// `deploy`, `rollback`, `compose-deploy` or `compose-rollback`.
    pub kind: String,
    /// The agent that ran it.
    pub agent: String,
    /// The container (docker) or Compose project.
    pub target: String,
    /// The attempt whose result decided the task (1-based).
    pub attempt: u32,
}

/// How the task ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceOutcome {
    /// The task's terminal state: `succeeded`, `failed`, `cancelled` or `expired`.
    pub state: String,
    /// The agent's `success`.
    pub success: bool,
    /// Whether what ran before was restored after a failure.
    pub rolled_back: bool,
    /// The agent's error class (`health-failed`, …), on failure.
    pub error_type: Option<String>,
    /// The error message, on failure.
    pub error: Option<String>,
}

/// A set of deployed images (what ran before, what runs after).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSet {
    /// The images, possibly none.
    pub components: Vec<Component>,
}

/// The health gate's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceHealth {
    /// `passed`, `failed`, `not-reached` (the task ended before the health gate) or
    /// `unknown`.
    pub status: String,
    /// The result's health outputs (keys starting with `health`).
    pub outputs: BTreeMap<String, String>,
}

/// Step timings reported by the agent, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceMetrics {
    /// Image pull and digest verification.
    pub pull_ms: Option<u64>,
    /// Stop, rename, create and start (or `compose up`).
    pub deploy_ms: Option<u64>,
    /// Waiting for health.
    pub health_ms: Option<u64>,
}

/// An evidence record's content: everything but `schema` and `signature`.
///
/// Build it in the core, [`Evidence::sign`] it, store [`SignedEvidence::to_bytes`];
/// check stored or exported bytes with [`verify_evidence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// The task.
    pub task: EvidenceTask,
    /// The release it deployed or went back to, if core knew one.
    pub release: Option<Release>,
    /// What the task asked for: the components of the sticker core signed for it, else
    /// the deploy's image or the rollback's `--to` digest; empty when the host decides (a
    /// rollback without a record).
    pub requested: ComponentSet,
    /// Who submitted the task (core's requester name).
    pub requested_by: String,
    /// When it was submitted (RFC 3339).
    pub submitted_at: String,
    /// When the agent started it (RFC 3339), if it reported a result.
    pub started_at: Option<String>,
    /// When it reached its terminal state (RFC 3339).
    pub completed_at: String,
    /// How it ended.
    pub outcome: EvidenceOutcome,
    /// What ran before.
    pub before: ComponentSet,
    /// What runs now, as far as known.
    pub after: ComponentSet,
    /// The health gate.
    pub health: EvidenceHealth,
    /// The hook results of the task's outputs (`pre_hook.*`, `post_hook.*`).
    pub hooks: BTreeMap<String, String>,
    /// Step timings.
    pub metrics: EvidenceMetrics,
}

/// Serialized form, in reading order.
#[derive(Serialize)]
struct Wire<'a> {
    schema: &'static str,
    #[serde(flatten)]
    evidence: &'a Evidence,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a Signature>,
}

impl Evidence {
    /// Checks the rules [`verify_evidence`] enforces: non-empty names without control
    /// characters, RFC 3339 times, `sha256:` digests (and an image pinned to the same
    /// digest, if pinned).
    ///
    /// # Errors
    ///
    /// [`EvidenceError::Malformed`] naming the first offending field.
    pub fn check(&self) -> Result<(), EvidenceError> {
        let malformed = |reason: String| Err(EvidenceError::Malformed { reason });
        let texts = [
            ("task.kind", &self.task.kind),
            ("task.agent", &self.task.agent),
            ("task.target", &self.task.target),
            ("requested_by", &self.requested_by),
            ("outcome.state", &self.outcome.state),
            ("health.status", &self.health.status),
        ];
        let release = self.release.iter().flat_map(|r| {
            [
                ("release.id", &r.id),
                ("release.name", &r.name),
                ("release.version", &r.version),
            ]
        });
        for (field, text) in texts.into_iter().chain(release) {
            if text.is_empty() || text.chars().any(char::is_control) {
                return malformed(format!(
                    "field {field} must be non-empty text without control characters"
                ));
            }
        }
        let times = [
            ("submitted_at", Some(&self.submitted_at)),
            ("started_at", self.started_at.as_ref()),
            ("completed_at", Some(&self.completed_at)),
        ];
        for (field, time) in times {
            if time.is_some_and(|t| !is_rfc3339(t)) {
                return malformed(format!(
                    "field {field} must be an RFC 3339 time such as \"2025-01-02T03:04:05Z\""
                ));
            }
        }
        let sets = [
            ("requested", &self.requested),
            ("before", &self.before),
            ("after", &self.after),
        ];
        for (set, list) in sets {
            for (index, c) in list.components.iter().enumerate() {
                let at = format!("{set}.components[{index}]");
                if c.name.is_empty() || c.image.is_empty() {
                    return malformed(format!("{at} needs a name and an image"));
                }
                if !is_digest(&c.digest) {
                    return malformed(format!(
                        "field {at}.digest must be \"sha256:\" followed by 64 lowercase hex digits"
                    ));
                }
                if c.image.rsplit_once('@').is_some_and(|(_, d)| d != c.digest) {
                    return malformed(format!("field {at}.image is pinned to another digest"));
                }
            }
        }
        Ok(())
    }

    /// The bytes the signature covers: the canonical JSON of the record with its `schema`
    /// and without `signature`.
    ///
    /// # Errors
    ///
    /// [`EvidenceError::Malformed`] when the record breaks a rule.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, EvidenceError> {
        self.check()?;
        let value = serde_json::to_value(Wire {
            schema: EVIDENCE_SCHEMA_V1,
            evidence: self,
            signature: None,
        })
        .map_err(|e| EvidenceError::Malformed {
            reason: format!("the record cannot be serialized: {e}"),
        })?;
        crate::canonical_json(&value).map_err(|e| EvidenceError::Malformed {
            reason: e.to_string(),
        })
    }

    /// Signs the record with the core's sticker key (Ed25519 over [`Self::signing_bytes`]).
    ///
    /// # Errors
    ///
    /// [`EvidenceError::Malformed`] for a record that would never verify,
    /// [`EvidenceError::TooLarge`] for one over [`MAX_EVIDENCE_BYTES`].
    pub fn sign(&self, key: &SigningKey) -> Result<SignedEvidence, EvidenceError> {
        let message = self.signing_bytes()?;
        let signed = SignedEvidence {
            evidence: self.clone(),
            signature: signature_of(&message, key),
        };
        let len = signed.to_bytes().len();
        if len > MAX_EVIDENCE_BYTES {
            return Err(EvidenceError::TooLarge {
                len,
                max: MAX_EVIDENCE_BYTES,
            });
        }
        Ok(signed)
    }
}

/// An evidence record with its signature, as core stores and exports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEvidence {
    /// The content.
    pub evidence: Evidence,
    /// The signature over its canonical JSON.
    pub signature: Signature,
}

impl SignedEvidence {
    /// The document: pretty-printed JSON ending with a newline. Whitespace and member
    /// order do not matter to verification.
    pub fn to_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            schema: EVIDENCE_SCHEMA_V1,
            evidence: &self.evidence,
            signature: Some(&self.signature),
        };
        // Strings, integers, booleans, a UUID and string maps always serialize.
        let mut bytes = serde_json::to_vec_pretty(&wire)
            .expect("an evidence record of plain data always serializes to JSON");
        bytes.push(b'\n');
        bytes
    }

    /// Parses a document and checks its schema, without checking the signature (use
    /// [`verify_evidence`] for that).
    ///
    /// # Errors
    ///
    /// [`EvidenceError::Malformed`] saying what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, EvidenceError> {
        let value = parse_json(bytes)?;
        let object = top_object(&value)?;
        let evidence = evidence_from_object(object)?;
        let (signature, _) = signature_from_object(object)?;
        Ok(SignedEvidence {
            evidence,
            signature,
        })
    }

    /// The lowercase hex SHA-256 of [`Self::to_bytes`]: what core records in the audit
    /// log's `task.finished` entry.
    pub fn sha256(&self) -> String {
        sha256_hex(&self.to_bytes())
    }
}

/// The lowercase hex SHA-256 of `bytes` (the audit log records an evidence document's).
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Verifies the raw bytes of an evidence document against a keyring, exactly as
/// [`verify`](crate::verify) does for stickers. Never panics, whatever the bytes.
pub fn verify_evidence(bytes: &[u8], keyring: &Keyring) -> Verification<Evidence> {
    verify_document(bytes, keyring, |object| {
        evidence_from_object(object).map_err(|e| match e {
            EvidenceError::Malformed { reason } => MalformedSticker::new(reason),
            other => MalformedSticker::new(other.to_string()),
        })
    })
}

/// Checks everything but `signature` and builds the record; unknown members are allowed.
fn evidence_from_object(object: &Map<String, Value>) -> Result<Evidence, EvidenceError> {
    match object.get("schema") {
        Some(Value::String(s)) if s == EVIDENCE_SCHEMA_V1 => {}
        Some(Value::String(s)) => {
            let shown: String = s.chars().take(80).collect();
            return Err(EvidenceError::Malformed {
                reason: format!(
                    "schema is {shown:?}, this reader understands only \"{EVIDENCE_SCHEMA_V1}\""
                ),
            });
        }
        _ => {
            return Err(EvidenceError::Malformed {
                reason: "required field schema is missing or not a string".into(),
            })
        }
    }
    let mut content = object.clone();
    content.remove("signature");
    // The error names the field: `task.id: UUID parsing failed…`.
    let evidence: Evidence =
        serde_path_to_error::deserialize(Value::Object(content)).map_err(|e| {
            EvidenceError::Malformed {
                reason: format!("field {}: {}", e.path(), e.inner()),
            }
        })?;
    evidence.check()?;
    if evidence.task.id.hyphenated().to_string()
        != object["task"]["id"].as_str().unwrap_or_default()
    {
        return Err(EvidenceError::Malformed {
            reason: "field task.id must be a lowercase hyphenated UUID".into(),
        });
    }
    Ok(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical_json;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn sample() -> Evidence {
        let component = |n| Component {
            name: "web".into(),
            image: "registry.local:5000/shop".into(),
            digest: digest(n),
        };
        Evidence {
            task: EvidenceTask {
                id: Uuid::new_v4(),
                kind: "deploy".into(),
                agent: "host-1".into(),
                target: "web".into(),
                attempt: 1,
            },
            release: Some(Release {
                id: "r1".into(),
                name: "shop".into(),
                version: "1.0.0".into(),
            }),
            requested: ComponentSet {
                components: vec![component(2)],
            },
            requested_by: "ci (token t1)".into(),
            submitted_at: "2025-01-02T03:04:05.000Z".into(),
            started_at: Some("2025-01-02T03:04:06.000Z".into()),
            completed_at: "2025-01-02T03:04:09.500Z".into(),
            outcome: EvidenceOutcome {
                state: "succeeded".into(),
                success: true,
                rolled_back: false,
                error_type: None,
                error: None,
            },
            before: ComponentSet {
                components: vec![component(1)],
            },
            after: ComponentSet {
                components: vec![component(2)],
            },
            health: EvidenceHealth {
                status: "passed".into(),
                outputs: BTreeMap::new(),
            },
            hooks: BTreeMap::from([("post_hook.ok".into(), "true".into())]),
            metrics: EvidenceMetrics {
                pull_ms: Some(800),
                deploy_ms: Some(400),
                health_ms: None,
            },
        }
    }

    fn key() -> SigningKey {
        SigningKey::generate().unwrap().0
    }

    #[test]
    fn signed_evidence_verifies_and_parses_back() {
        let key = key();
        let evidence = sample();
        let signed = evidence.sign(&key).unwrap();
        let bytes = signed.to_bytes();
        let keyring = Keyring::from(key.verifying_key().clone());
        assert_eq!(
            verify_evidence(&bytes, &keyring),
            Verification::Valid(evidence.clone())
        );
        assert_eq!(SignedEvidence::parse(&bytes).unwrap(), signed);
        assert_eq!(signed.sha256(), sha256_hex(&bytes));
        assert_eq!(signed.sha256().len(), 64);
    }

    #[test]
    fn the_signature_covers_the_canonical_document_without_signature() {
        let key = key();
        let signed = sample().sign(&key).unwrap();
        let mut value: Value = serde_json::from_slice(&signed.to_bytes()).unwrap();
        value.as_object_mut().unwrap().remove("signature");
        let message = canonical_json(&value).unwrap();
        assert_eq!(message, sample_bytes_of(&signed.evidence));
        let sig = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            &signed.signature.value,
        )
        .unwrap();
        assert!(key.verifying_key().verify_bytes(&message, &sig));
    }

    fn sample_bytes_of(evidence: &Evidence) -> Vec<u8> {
        evidence.signing_bytes().unwrap()
    }

    #[test]
    fn every_flipped_byte_fails() {
        let key = key();
        let bytes = sample().sign(&key).unwrap().to_bytes();
        let keyring = Keyring::from(key.verifying_key().clone());
        for index in 0..bytes.len() {
            let mut edited = bytes.clone();
            edited[index] ^= 0x01;
            let outcome = verify_evidence(&edited, &keyring);
            // A flipped whitespace byte may turn into other whitespace and stay valid;
            // nothing else may.
            let whitespace = |b: u8| matches!(b, b' ' | b'\n' | b'\r' | b'\t');
            if whitespace(bytes[index]) && whitespace(edited[index]) {
                continue;
            }
            assert!(
                !outcome.is_valid(),
                "flipping byte {index} ({:?}) still verified",
                bytes[index] as char
            );
        }
    }

    #[test]
    fn unknown_key_and_other_key() {
        let signed = sample().sign(&key()).unwrap().to_bytes();
        let other = Keyring::from(key().verifying_key().clone());
        assert!(matches!(
            verify_evidence(&signed, &other),
            Verification::UnknownKey { .. }
        ));
        assert!(matches!(
            verify_evidence(&signed, &Keyring::new()),
            Verification::UnknownKey { .. }
        ));
    }

    #[test]
    fn malformed_documents_are_named() {
        let key = key();
        let keyring = Keyring::from(key.verifying_key().clone());
        let good: Value = serde_json::from_slice(&sample().sign(&key).unwrap().to_bytes()).unwrap();
        let edit = |f: &dyn Fn(&mut Value)| {
            let mut v = good.clone();
            f(&mut v);
            serde_json::to_vec(&v).unwrap()
        };
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"not json".to_vec(), "not JSON"),
            (b"[]".to_vec(), "expected an object"),
            (edit(&|v| v["schema"] = "wharf.sticker/v1".into()), "schema"),
            (
                edit(&|v| v["after"]["components"][0]["digest"] = "sha256:x".into()),
                "after.components[0].digest",
            ),
            (
                edit(&|v| v["submitted_at"] = "yesterday".into()),
                "submitted_at",
            ),
            (edit(&|v| v["task"]["id"] = "nope".into()), "task"),
            (edit(&|v| v["task"]["agent"] = "".into()), "task.agent"),
            (
                edit(&|v| {
                    v.as_object_mut().unwrap().remove("signature");
                }),
                "signature",
            ),
            (
                edit(&|v| v["signature"]["extra"] = 1.into()),
                "unknown member",
            ),
        ];
        for (bytes, needle) in cases {
            match verify_evidence(&bytes, &keyring) {
                Verification::Malformed { reason } => {
                    assert!(reason.contains(needle), "{needle}: {reason}")
                }
                other => panic!("{needle}: {other:?}"),
            }
        }
        let duplicate = br#"{"schema":"wharf.evidence/v1","schema":"wharf.evidence/v1"}"#;
        assert!(matches!(
            verify_evidence(duplicate, &keyring),
            Verification::Malformed { reason } if reason.contains("duplicate")
        ));
    }

    #[test]
    fn unsignable_records_are_refused() {
        let mut bad = sample();
        bad.before.components[0].digest = "sha256:short".into();
        assert!(matches!(
            bad.sign(&key()),
            Err(EvidenceError::Malformed { reason }) if reason.contains("before.components[0]")
        ));
        let mut huge = sample();
        huge.hooks
            .insert("post_hook.output.x".into(), "y".repeat(MAX_EVIDENCE_BYTES));
        assert!(matches!(
            huge.sign(&key()),
            Err(EvidenceError::TooLarge { .. })
        ));
    }

    #[test]
    fn unknown_members_are_covered_by_the_signature() {
        let key = key();
        let keyring = Keyring::from(key.verifying_key().clone());
        let mut v: Value =
            serde_json::from_slice(&sample().sign(&key).unwrap().to_bytes()).unwrap();
        v["comment"] = "added later".into();
        assert_eq!(
            verify_evidence(&serde_json::to_vec(&v).unwrap(), &keyring),
            Verification::BadSignature
        );
    }
}
