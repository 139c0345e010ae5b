//! Shared fixtures: a deterministic signing key and two stickers whose string values are all
//! distinct, so each value occurs exactly once in the written file.

use serde_json::Value;
use std::sync::OnceLock;
use wharf_sticker::{
    sign, verify, Component, Keyring, Previous, Release, SigningKey, Sticker, Target, TargetKind,
    Uuid, Verification,
};

/// PKCS#8 v1 DER of an Ed25519 key (as OpenSSL writes it) with a fixed seed.
pub fn key_from_seed(seed: [u8; 32]) -> SigningKey {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    SigningKey::from_pkcs8(&der).expect("fixed seed is a valid key")
}

/// The core's key in these tests (made once: deriving a key costs time in debug builds).
pub fn core_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| key_from_seed(std::array::from_fn(|i| i as u8 + 1)))
}

/// A key nobody trusts.
pub fn rogue_key() -> SigningKey {
    key_from_seed([0xee; 32])
}

/// A keyring trusting only [`core_key`].
pub fn keyring() -> Keyring {
    trusted().clone()
}

fn trusted() -> &'static Keyring {
    static KEYRING: OnceLock<Keyring> = OnceLock::new();
    KEYRING.get_or_init(|| Keyring::from(core_key().verifying_key().clone()))
}

pub fn digest(fill: char) -> String {
    format!("sha256:{}", fill.to_string().repeat(64))
}

/// A docker sticker with a previous release.
pub fn docker_sticker() -> Sticker {
    Sticker {
        target: Target {
            agent: "host-alpha".into(),
            kind: TargetKind::Docker,
            name: "web-frontend".into(),
        },
        release: Release {
            id: "rel-0002".into(),
            name: "shop".into(),
            version: "1.4.2".into(),
        },
        components: vec![Component {
            name: "web".into(),
            image: "registry.local:5000/shop/web".into(),
            digest: format!("sha256:{}", "0123456789abcdef".repeat(4)),
        }],
        deployed_at: "2025-03-14T15:09:26.535Z".into(),
        deployed_by: "ci-release-bot".into(),
        task_id: Uuid::parse_str("6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e").unwrap(),
        previous: Some(Previous {
            release: Release {
                id: "rel-0001".into(),
                name: "shop-previous".into(),
                version: "1.4.1".into(),
            },
            components: vec![Component {
                name: "web-old".into(),
                image: "registry.local:5000/shop/web-old".into(),
                digest: format!("sha256:{}", "fedcba9876543210".repeat(4)),
            }],
        }),
    }
}

/// A compose sticker with several components and no previous release; one image is the
/// full pinned reference.
pub fn compose_sticker() -> Sticker {
    Sticker {
        target: Target {
            agent: "host-beta".into(),
            kind: TargetKind::Compose,
            name: "shop-stack".into(),
        },
        release: Release {
            id: "9b2e7c11".into(),
            name: "shop-compose".into(),
            version: "2025.3.0-rc.1+build.7".into(),
        },
        components: vec![
            Component {
                name: "api".into(),
                image: "registry.local:5000/shop/api".into(),
                digest: digest('a'),
            },
            Component {
                name: "db".into(),
                image: format!("registry.local:5000/postgres@{}", digest('b')),
                digest: digest('b'),
            },
            Component {
                name: "cache café ☕".into(),
                image: "docker.io/library/redis".into(),
                digest: digest('c'),
            },
        ],
        deployed_at: "2025-12-31T23:59:60+01:00".into(),
        deployed_by: "alice@example.org".into(),
        task_id: Uuid::parse_str("00000000-0000-4000-8000-00000000000a").unwrap(),
        previous: None,
    }
}

/// The file bytes of a sticker signed by [`core_key`].
pub fn signed_file(sticker: &Sticker) -> Vec<u8> {
    sign(sticker, core_key()).unwrap().to_file_bytes()
}

/// The outcome of a verification without its payload, for comparisons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Valid,
    BadSignature,
    UnknownKey,
    Malformed,
}

pub fn class(verification: &Verification) -> Class {
    match verification {
        Verification::Valid(_) => Class::Valid,
        Verification::BadSignature => Class::BadSignature,
        Verification::UnknownKey { .. } => Class::UnknownKey,
        Verification::Malformed { .. } => Class::Malformed,
    }
}

pub fn verify_class(bytes: &[u8]) -> Class {
    class(&verify(bytes, trusted()))
}

/// Every string leaf of a JSON document with its path (`components[0].digest`).
pub fn string_leaves(value: &Value) -> Vec<(String, String)> {
    fn walk(value: &Value, path: String, out: &mut Vec<(String, String)>) {
        match value {
            Value::String(s) => out.push((path, s.clone())),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), out);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, String::new(), &mut out);
    out
}
