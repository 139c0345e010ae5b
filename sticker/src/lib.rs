//! `wharf-sticker`: the signed version sticker of Wharf (design §6).
//!
//! After a successful deployment an agent writes a small JSON file next to what it deployed
//! — `<state-dir>/stickers/<target>.json` for a container, `<deploy-root>/<project>/.wharf/
//! version.json` for a Compose project — saying what runs there, who deployed it, when, and
//! what it replaced. The core signs it with its Ed25519 key before shipping it in the deploy
//! task, so an auditor can later tell an authentic sticker from an edited one.
//!
//! ```json
//! {
//!   "schema": "wharf.sticker/v1",
//!   "target": { "agent": "host-1", "kind": "docker", "name": "web" },
//!   "release": { "id": "rel-42", "name": "shop", "version": "1.4.2" },
//!   "components": [
//!     { "name": "web", "image": "registry.local:5000/shop", "digest": "sha256:<64 hex>" }
//!   ],
//!   "deployed_at": "2025-01-02T03:04:05Z",
//!   "deployed_by": "ci-release",
//!   "task_id": "9f0c1e9e-4d5b-4c3e-9d7a-0b6f3f1f2a10",
//!   "previous": { "release": { "id": "…", "name": "…", "version": "…" }, "components": [ … ] },
//!   "signature": { "alg": "ed25519", "key_id": "ed25519:<16 hex>", "value": "<base64>" }
//! }
//! ```
//!
//! `previous` is `null` (or absent) for a first deployment. Unknown extra members are
//! allowed and covered by the signature, except inside `signature`, which must hold exactly
//! `alg`, `key_id` and `value` (it is the one part the signature does not cover). Duplicate
//! member names anywhere make a file malformed, as readers would disagree on its content.
//!
//! Python check, for example:
//!
//! ```python
//! doc = json.load(open("web.json")); sig = doc.pop("signature")
//! msg = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
//! Ed25519PublicKey.from_public_bytes(pub32).verify(base64.b64decode(sig["value"]), msg)
//! ```
//!
//! # Signature
//!
//! The signature is Ed25519 over the [canonical JSON](canonical_json) of the whole document
//! minus its top-level `signature` member. Verification ([`verify`]) works on the raw file
//! bytes: it parses them, checks the schema, canonicalizes what it parsed and checks the
//! signature against a [`Keyring`]. Hence whitespace and member order do not matter, while
//! changing, adding or removing anything else does. Anyone can check a sticker without this
//! crate: canonicalize as described in [`canonical_json`], then verify the base64-decoded
//! `signature.value` with the 32-byte public key (for example `openssl pkeyutl -verify
//! -rawin`).
//!
//! # Evidence records
//!
//! The same key, canonical form and verification sign the core's evidence record of each
//! finished deploy or rollback (`wharf.evidence/v1`, [`Evidence`]): task, release, who,
//! when, outcome, digests before and after, health and hook results. [`Evidence::sign`]
//! signs one, [`verify_evidence`] checks exported bytes and returns a
//! [`Verification<Evidence>`](Verification).
//!
//! # Example
//!
//! ```
//! use wharf_sticker::*;
//!
//! let (key, _pkcs8) = SigningKey::generate()?; // the core stores `_pkcs8` (0600)
//! let sticker = Sticker {
//!     target: Target { agent: "host-1".into(), kind: TargetKind::Docker, name: "web".into() },
//!     release: Release { id: "r1".into(), name: "shop".into(), version: "1.0.0".into() },
//!     components: vec![Component {
//!         name: "web".into(),
//!         image: "registry.local:5000/shop".into(),
//!         digest: format!("sha256:{}", "ab".repeat(32)),
//!     }],
//!     deployed_at: "2025-01-02T03:04:05Z".into(),
//!     deployed_by: "ci".into(),
//!     task_id: uuid::Uuid::new_v4(),
//!     previous: None,
//! };
//! let bytes = sign(&sticker, &key)?.to_file_bytes();
//!
//! let dir = tempfile::tempdir()?;
//! let path = docker_sticker_path(dir.path(), "web")?;
//! write_atomic(&path, &bytes)?;
//!
//! let keyring = Keyring::from(key.verifying_key().clone());
//! assert_eq!(verify(&read_bytes(&path)?, &keyring), Verification::Valid(sticker));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod canonical;
mod evidence;
mod file;
mod keys;
mod model;
mod sign;

pub use canonical::{canonical_json, CanonicalError, MAX_DEPTH};
pub use evidence::{
    sha256_hex, verify_evidence, ComponentSet, Evidence, EvidenceError, EvidenceHealth,
    EvidenceMetrics, EvidenceOutcome, EvidenceTask, SignedEvidence, EVIDENCE_SCHEMA_V1,
    MAX_EVIDENCE_BYTES,
};
pub use file::{
    check_project_name, check_target_name, compose_sticker_path, docker_sticker_path, read,
    read_bytes, write_atomic, write_private_atomic, write_sticker, PathError, ReadError,
    WriteError, MAX_NAME_LEN,
};
pub use keys::{
    is_key_id, key_id_for, KeyError, Keyring, KeyringError, Pkcs8Der, SigningKey, VerifyingKey,
    ALG_ED25519,
};
pub use model::{
    is_digest, is_rfc3339, Component, MalformedSticker, Previous, Release, Signature,
    SignedSticker, Sticker, Target, TargetKind, MAX_STICKER_BYTES, SCHEMA_V1,
};
pub use sign::{sign, verify, SignError, Verification};
/// Re-export of the `uuid` type of [`Sticker::task_id`].
pub use uuid::Uuid;
