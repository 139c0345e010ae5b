//! Property tests: no input makes verification panic or pass by accident.

use crate::fixtures::*;
use proptest::prelude::*;
use serde_json::{Map, Value};
use wharf_sticker::{
    canonical_json, sign, verify, Component, Release, Sticker, Target, TargetKind, Uuid,
    Verification,
};

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        // Sticker-like strings, so random documents sometimes look close to a sticker.
        prop_oneof![
            Just("wharf.sticker/v1"),
            Just("ed25519"),
            Just("docker"),
            Just("2025-01-02T03:04:05Z"),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        "[a-z_]{0,8}",
                        Just("schema".to_owned()),
                        Just("signature".to_owned()),
                        Just("target".to_owned()),
                        Just("components".to_owned()),
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|members| Value::Object(members.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Text without control characters (what a sticker accepts), including non-ASCII.
fn text() -> impl Strategy<Value = String> + Clone {
    "[^\\p{Cc}]{1,24}"
}

fn arb_sticker() -> impl Strategy<Value = Sticker> {
    let component =
        (text(), text(), prop::array::uniform32(any::<u8>())).prop_map(|(name, image, digest)| {
            Component {
                name,
                image: image.replace('@', "at"),
                digest: format!(
                    "sha256:{}",
                    digest
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                ),
            }
        });
    let release =
        (text(), text(), text()).prop_map(|(id, name, version)| Release { id, name, version });
    (
        (text(), any::<bool>(), text()),
        release.clone(),
        prop::collection::vec(component.clone(), 1..4),
        (
            0u32..=9999,
            1u32..=12,
            1u32..=28,
            0u32..=23,
            0u32..=59,
            0u32..=60,
        ),
        text(),
        any::<u128>(),
        prop::option::of((release, prop::collection::vec(component, 1..3))),
    )
        .prop_map(
            |((agent, docker, name), release, components, time, deployed_by, id, previous)| {
                let (y, mo, d, h, mi, s) = time;
                Sticker {
                    target: Target {
                        agent,
                        kind: if docker {
                            TargetKind::Docker
                        } else {
                            TargetKind::Compose
                        },
                        name,
                    },
                    release,
                    components,
                    deployed_at: format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
                    deployed_by,
                    task_id: Uuid::from_u128(id),
                    previous: previous.map(|(release, components)| wharf_sticker::Previous {
                        release,
                        components,
                    }),
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_verify_and_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let outcome = verify(&bytes, &keyring());
        prop_assert!(matches!(outcome, Verification::Malformed { .. }), "{outcome:?}");
    }

    #[test]
    fn random_json_never_verifies_and_never_panics(value in arb_json()) {
        let compact = serde_json::to_vec(&value).unwrap();
        let pretty = serde_json::to_vec_pretty(&value).unwrap();
        prop_assert!(!verify(&compact, &keyring()).is_valid());
        prop_assert!(!verify(&pretty, &keyring()).is_valid());
    }

    #[test]
    fn canonical_json_is_a_fixed_point_that_parses_back(value in arb_json()) {
        match canonical_json(&value) {
            Ok(bytes) => {
                let back: Value = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(&back, &value);
                prop_assert_eq!(canonical_json(&back).unwrap(), bytes);
            }
            Err(_) => {
                // Only non-integer numbers are refused at this depth.
                let text = value.to_string();
                prop_assert!(text.contains('.') || text.contains('e') || text.contains('E'));
            }
        }
    }

    #[test]
    fn any_signed_sticker_verifies_and_reads_back(sticker in arb_sticker()) {
        let signed = sign(&sticker, core_key()).unwrap();
        let bytes = signed.to_file_bytes();
        prop_assert_eq!(verify(&bytes, &keyring()), Verification::Valid(sticker));
        prop_assert_eq!(wharf_sticker::SignedSticker::parse(&bytes).unwrap(), signed);
    }

    #[test]
    fn control_characters_are_refused_at_signing(
        prefix in text(),
        control in prop::char::range('\u{0}', '\u{1f}'),
    ) {
        let mut sticker = docker_sticker();
        sticker.release.name = format!("{prefix}{control}");
        prop_assert!(sign(&sticker, core_key()).is_err());
    }

    #[test]
    fn replacing_any_subtree_never_verifies(index in any::<prop::sample::Index>(), replacement in arb_json()) {
        let bytes = signed_file(&docker_sticker());
        let original: Value = serde_json::from_slice(&bytes).unwrap();
        let mut edited = original.clone();
        let mut nodes = Vec::new();
        collect_pointers(&edited, String::new(), &mut nodes);
        let pointer = index.get(&nodes);
        *edited.pointer_mut(pointer).unwrap() = replacement;
        let outcome = verify(&serde_json::to_vec(&edited).unwrap(), &keyring());
        if edited == original {
            prop_assert!(outcome.is_valid());
        } else {
            prop_assert!(!outcome.is_valid(), "{pointer} replaced, still valid");
        }
    }

    #[test]
    fn random_byte_edits_verify_only_when_the_document_is_unchanged(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<u8>()), 1..6),
    ) {
        let bytes = signed_file(&compose_sticker());
        let original: Value = serde_json::from_slice(&bytes).unwrap();
        let mut edited = bytes.clone();
        for (index, op, byte) in edits {
            let at = index.index(edited.len() + 1);
            match op {
                0 => edited.insert(at, byte),
                1 if at < edited.len() => { edited.remove(at); }
                _ if at < edited.len() => edited[at] = byte,
                _ => edited.push(byte),
            }
        }
        let same = serde_json::from_slice::<Value>(&edited).is_ok_and(|v| v == original);
        let outcome = verify(&edited, &keyring());
        prop_assert_eq!(outcome.is_valid(), same, "{}", String::from_utf8_lossy(&edited));
    }
}

fn collect_pointers(value: &Value, pointer: String, out: &mut Vec<String>) {
    out.push(pointer.clone());
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_pointers(item, format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                collect_pointers(v, format!("{pointer}/{escaped}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn deeply_nested_input_is_malformed_without_overflowing_the_stack() {
    for depth in [127, 128, 129, 1_000, 100_000] {
        let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(matches!(
            verify(arrays.as_bytes(), &keyring()),
            Verification::Malformed { .. }
        ));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert!(matches!(
            verify(objects.as_bytes(), &keyring()),
            Verification::Malformed { .. }
        ));
        let open = "[{\"x\":".repeat(depth);
        assert!(matches!(
            verify(open.as_bytes(), &keyring()),
            Verification::Malformed { .. }
        ));
    }
    // A deep extra member inside an otherwise valid sticker: parsed up to the limit, then
    // refused or caught by the signature, never a crash.
    let bytes = signed_file(&docker_sticker());
    let text = String::from_utf8(bytes).unwrap();
    for depth in [10, 126, 200, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let edited = text.replacen('{', &format!("{{\"deep\": {nested},"), 1);
        let outcome = verify(edited.as_bytes(), &keyring());
        assert!(!outcome.is_valid());
    }
}

#[test]
fn oversized_input_is_malformed() {
    let mut bytes = signed_file(&docker_sticker());
    bytes.resize(wharf_sticker::MAX_STICKER_BYTES + 1, b' ');
    assert!(matches!(
        verify(&bytes, &keyring()),
        Verification::Malformed { reason } if reason.contains("limit")
    ));
}
