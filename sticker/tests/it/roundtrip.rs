//! Sign, write, read, verify; equivalent re-encodings; other keys.

use crate::fixtures::*;
use serde_json::Value;
use wharf_sticker::{
    docker_sticker_path, read, read_bytes, sign, verify, write_atomic, write_sticker, Keyring,
    ReadError, SignError, SignedSticker, Verification,
};

/// An edit of a parsed sticker document.
type EditValue = fn(&mut Value);
/// An edit of a sticker before signing.
type EditSticker = fn(&mut wharf_sticker::Sticker);

#[test]
fn sign_write_read_verify_is_valid() {
    for sticker in [docker_sticker(), compose_sticker()] {
        let dir = tempfile::tempdir().unwrap();
        let path = docker_sticker_path(dir.path(), &sticker.target.name).unwrap();
        let signed = sign(&sticker, core_key()).unwrap();
        write_sticker(&path, &signed).unwrap();

        let bytes = read_bytes(&path).unwrap();
        assert_eq!(bytes, signed.to_file_bytes());
        assert_eq!(
            verify(&bytes, &keyring()),
            Verification::Valid(sticker.clone())
        );
        assert_eq!(read(&path).unwrap(), signed);
        assert_eq!(SignedSticker::parse(&bytes).unwrap(), signed);
    }
}

#[test]
fn written_file_is_pretty_json_for_humans() {
    let text = String::from_utf8(signed_file(&docker_sticker())).unwrap();
    assert!(text.starts_with("{\n  \"schema\": \"wharf.sticker/v1\",\n  \"target\": {"));
    assert!(text.ends_with("}\n"));
    let schema = text.find("\"schema\"").unwrap();
    let previous = text.find("\"previous\"").unwrap();
    let signature = text.find("\"signature\"").unwrap();
    assert!(schema < previous && previous < signature);
    let compose = String::from_utf8(signed_file(&compose_sticker())).unwrap();
    assert!(compose.contains("\"previous\": null"));
    assert!(
        compose.contains("cache café ☕"),
        "non-ASCII stays readable"
    );
}

#[test]
fn signature_names_the_key_and_has_64_bytes() {
    let signed = sign(&docker_sticker(), core_key()).unwrap();
    assert_eq!(signed.signature.alg, "ed25519");
    assert_eq!(signed.signature.key_id, core_key().key_id());
    assert_eq!(signed.signature.value.len(), 88);
}

#[test]
fn unknown_key_is_reported_with_its_id() {
    let bytes = sign(&docker_sticker(), &rogue_key())
        .unwrap()
        .to_file_bytes();
    assert_eq!(
        verify(&bytes, &keyring()),
        Verification::UnknownKey {
            key_id: rogue_key().key_id().to_owned()
        }
    );
    assert!(matches!(
        verify(&bytes, &Keyring::new()),
        Verification::UnknownKey { .. }
    ));
    // Trusting both keys makes both stickers valid.
    let mut both = keyring();
    both.insert(rogue_key().verifying_key().clone()).unwrap();
    assert!(verify(&bytes, &both).is_valid());
    assert!(verify(&signed_file(&docker_sticker()), &both).is_valid());
}

#[test]
fn a_rogue_signature_under_the_trusted_key_id_is_a_bad_signature() {
    let mut forged = sign(&docker_sticker(), &rogue_key()).unwrap();
    forged.signature.key_id = core_key().key_id().to_owned();
    assert_eq!(
        verify(&forged.to_file_bytes(), &keyring()),
        Verification::BadSignature
    );
}

#[test]
fn a_signature_moved_from_another_sticker_is_a_bad_signature() {
    let docker = sign(&docker_sticker(), core_key()).unwrap();
    let mut compose = sign(&compose_sticker(), core_key()).unwrap();
    compose.signature = docker.signature;
    assert_eq!(
        verify(&compose.to_file_bytes(), &keyring()),
        Verification::BadSignature
    );
}

/// Writes JSON with object members in reverse order and odd but legal whitespace, and every
/// ASCII letter of every string as a `\u00XX` escape.
fn reencode(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push_str("{\r\n\t");
            let mut members: Vec<_> = map.iter().collect();
            members.reverse();
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(" ,\n ");
                }
                reencode(&Value::String(k.clone()), out);
                out.push_str("\t:  ");
                reencode(v, out);
            }
            out.push_str("\n}");
        }
        Value::Array(items) => {
            out.push_str("[ ");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\t");
                }
                reencode(item, out);
            }
            out.push_str(" ]");
        }
        Value::String(s) => {
            out.push('"');
            for c in s.chars() {
                if c.is_ascii_alphabetic() {
                    out.push_str(&format!("\\u{:04X}", c as u32));
                } else if c == '/' {
                    out.push_str("\\/");
                } else {
                    out.push(c);
                }
            }
            out.push('"');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[test]
fn reordered_keys_reformatted_whitespace_and_escapes_stay_valid() {
    for sticker in [docker_sticker(), compose_sticker()] {
        let bytes = signed_file(&sticker);
        let value: Value = serde_json::from_slice(&bytes).unwrap();

        let compact = serde_json::to_vec(&value).unwrap();
        assert!(verify(&compact, &keyring()).is_valid());

        let mut odd = String::from("\n\n ");
        reencode(&value, &mut odd);
        odd.push_str(" \r\n\t");
        assert_ne!(odd.as_bytes(), bytes);
        assert_eq!(
            verify(odd.as_bytes(), &keyring()),
            Verification::Valid(sticker.clone()),
            "{odd}"
        );
    }
}

#[test]
fn an_absent_previous_is_like_null_but_not_the_same_signed_bytes() {
    let bytes = signed_file(&compose_sticker());
    let mut value: Value = serde_json::from_slice(&bytes).unwrap();
    value.as_object_mut().unwrap().remove("previous");
    let edited = serde_json::to_vec(&value).unwrap();
    // Removing the member changes the signed content, so the signature no longer matches.
    assert_eq!(verify(&edited, &keyring()), Verification::BadSignature);
}

#[test]
fn extra_fields_added_after_signing_are_bad_signatures() {
    let bytes = signed_file(&docker_sticker());
    let original: Value = serde_json::from_slice(&bytes).unwrap();
    let edits: [(&str, EditValue); 7] = [
        ("top level", |v| {
            v["note"] = "hello".into();
        }),
        ("top level null", |v| {
            v["zzz"] = Value::Null;
        }),
        ("target", |v| {
            v["target"]["region"] = "eu".into();
        }),
        ("release", |v| {
            v["release"]["channel"] = "stable".into();
        }),
        ("component", |v| {
            v["components"][0]["tag"] = "latest".into();
        }),
        ("second component", |v| {
            let first = v["components"][0].clone();
            v["components"].as_array_mut().unwrap().push(first);
        }),
        ("previous component", |v| {
            v["previous"]["components"][0]["ports"] = serde_json::json!([80, 443]);
        }),
    ];
    for (name, edit) in edits {
        let mut value = original.clone();
        edit(&mut value);
        let edited = serde_json::to_vec_pretty(&value).unwrap();
        assert_eq!(
            verify(&edited, &keyring()),
            Verification::BadSignature,
            "{name}"
        );
    }

    // Nothing can hide inside `signature`, which the signature does not cover.
    let mut value = original.clone();
    value["signature"]["comment"] = "looks fine".into();
    let edited = serde_json::to_vec(&value).unwrap();
    assert!(matches!(
        verify(&edited, &keyring()),
        Verification::Malformed { reason } if reason.contains("signature") && reason.contains("comment")
    ));

    // A float in an extra field has no canonical form: malformed, not a bad signature.
    let mut value = original;
    value["weight"] = serde_json::json!(0.5);
    let edited = serde_json::to_vec(&value).unwrap();
    assert!(matches!(
        verify(&edited, &keyring()),
        Verification::Malformed { reason } if reason.contains("weight")
    ));
}

#[test]
fn duplicate_keys_are_malformed_even_when_the_last_value_is_the_signed_one() {
    let text = String::from_utf8(signed_file(&docker_sticker())).unwrap();
    // A reader taking the first occurrence would see another release version.
    let smuggled = text.replacen(
        "\"release\": {",
        "\"release\": {\n    \"version\": \"9.9.9\",",
        1,
    );
    assert_ne!(smuggled, text);
    assert!(matches!(
        verify(smuggled.as_bytes(), &keyring()),
        Verification::Malformed { reason } if reason.contains("duplicate key")
    ));
}

#[test]
fn sign_refuses_stickers_that_would_never_verify() {
    let key = core_key();
    let cases: Vec<(&str, EditSticker)> = vec![
        ("upper-case digest", |s| {
            s.components[0].digest = s.components[0].digest.to_uppercase()
        }),
        ("short digest", |s| s.components[0].digest.truncate(20)),
        ("no components", |s| s.components.clear()),
        ("empty agent", |s| s.target.agent.clear()),
        ("control char", |s| s.deployed_by = "bob\u{1b}[2J".into()),
        ("bad time", |s| s.deployed_at = "yesterday".into()),
        ("image pinned elsewhere", |s| {
            s.components[0].image = format!("repo@{}", digest('9'))
        }),
        ("previous without components", |s| {
            s.previous.as_mut().unwrap().components.clear()
        }),
    ];
    for (name, edit) in cases {
        let mut sticker = docker_sticker();
        edit(&mut sticker);
        let error = sign(&sticker, key).unwrap_err();
        assert!(matches!(error, SignError::Malformed(_)), "{name}");
        assert!(sticker.check().is_err(), "{name}");
        assert!(
            error.to_string().starts_with("refusing to sign"),
            "{name}: {error}"
        );
    }
}

#[test]
fn read_reports_missing_and_malformed_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = docker_sticker_path(dir.path(), "web").unwrap();
    assert!(matches!(read(&path), Err(ReadError::NotFound { .. })));
    write_atomic(&path, b"{\"schema\": \"wharf.sticker/v2\"}").unwrap();
    let error = read(&path).unwrap_err();
    assert!(matches!(error, ReadError::Malformed { .. }));
    let message = error.to_string();
    assert!(
        message.contains("wharf.sticker/v2") && message.contains("web.json"),
        "{message}"
    );
}

#[test]
fn malformed_reasons_name_the_field() {
    let bytes = signed_file(&docker_sticker());
    let original: Value = serde_json::from_slice(&bytes).unwrap();
    let cases: [(&str, EditValue); 8] = [
        ("components[0].digest", |v| {
            v["components"][0]["digest"] = "sha256:abc".into();
        }),
        ("previous.components[0].name", |v| {
            v["previous"]["components"][0]["name"] = 5.into();
        }),
        ("target.kind", |v| {
            v["target"]["kind"] = "podman".into();
        }),
        ("release.version is missing", |v| {
            v["release"].as_object_mut().unwrap().remove("version");
        }),
        ("task_id", |v| {
            v["task_id"] = "6F1C2D3E-4A5B-4C6D-8E7F-901A2B3C4D5E".into();
        }),
        ("signature.value", |v| {
            v["signature"]["value"] = "AAAA".into();
        }),
        ("field previous is a string", |v| {
            v["previous"] = "none".into();
        }),
        ("the document is an array", |v| {
            *v = serde_json::json!([1]);
        }),
    ];
    for (expected, edit) in cases {
        let mut value = original.clone();
        edit(&mut value);
        match verify(&serde_json::to_vec(&value).unwrap(), &keyring()) {
            Verification::Malformed { reason } => {
                assert!(reason.contains(expected), "{expected}: {reason}")
            }
            other => panic!("{expected}: {other:?}"),
        }
    }
}
