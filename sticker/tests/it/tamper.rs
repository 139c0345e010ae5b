//! One changed byte anywhere, truncation, and the precise outcome per field.

use crate::fixtures::*;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeSet;
use wharf_sticker::Uuid;

/// Printable ASCII, space included.
fn printable() -> impl Iterator<Item = u8> {
    0x20..=0x7e
}

/// Bytes that are not printable ASCII, tried too: NUL, other controls, DEL, and bytes that
/// break UTF-8.
const NON_PRINTABLE: [u8; 6] = [0x00, 0x01, 0x1b, 0x7f, 0x80, 0xff];

fn fixtures() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("docker", signed_file(&docker_sticker())),
        ("compose", signed_file(&compose_sticker())),
    ]
}

#[test]
fn the_unchanged_fixtures_are_valid() {
    for (name, bytes) in fixtures() {
        assert_eq!(verify_class(&bytes), Class::Valid, "{name}");
    }
}

/// Byte ranges of the value strings' contents (between the quotes) of a written fixture,
/// with each value's path. Each value occurs exactly once in the file.
fn value_spans(name: &str, bytes: &[u8]) -> Vec<(String, String, usize)> {
    let value: Value = serde_json::from_slice(bytes).unwrap();
    let leaves = string_leaves(&value);
    assert!(leaves.len() >= 20, "{name}: {} leaves", leaves.len());
    leaves
        .into_iter()
        .map(|(path, text)| {
            let needle = serde_json::to_vec(&text).unwrap();
            assert_eq!(
                needle.len(),
                text.len() + 2,
                "{path}: fixture strings need no escapes"
            );
            let found: Vec<usize> = bytes
                .windows(needle.len())
                .enumerate()
                .filter(|(_, w)| *w == needle.as_slice())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(
                found.len(),
                1,
                "{name}: {path} = {text:?} is not unique in the file"
            );
            (path, text, found[0] + 1)
        })
        .collect()
}

/// Replaces every non-whitespace byte of the file by every other byte of
/// [`printable`] + [`NON_PRINTABLE`] and checks that it never verifies. Bytes inside value
/// strings are replaced here only by `"` and `\` (which end the string or start an escape);
/// every other replacement of those bytes is checked, with its precise outcome, by
/// [`check_value_bytes`]. Together the two cover every (position, byte) pair.
fn check_every_byte(name: &str, bytes: &[u8]) {
    let mut inside_value = vec![false; bytes.len()];
    for (_, text, start) in value_spans(name, bytes) {
        inside_value[start..start + text.len()].fill(true);
    }
    let mut checked = 0usize;
    for position in 0..bytes.len() {
        let original = bytes[position];
        if original.is_ascii_whitespace() {
            continue;
        }
        for replacement in printable().chain(NON_PRINTABLE) {
            let structural = replacement == b'"' || replacement == b'\\';
            if replacement == original || (inside_value[position] && !structural) {
                continue;
            }
            let mut edited = bytes.to_vec();
            edited[position] = replacement;
            let outcome = verify_class(&edited);
            assert_ne!(
                outcome,
                Class::Valid,
                "{name}: byte {position} {:?} -> {:?} still verifies",
                original as char,
                replacement as char
            );
            checked += 1;
        }
    }
    assert!(checked > 30_000, "{name}: only {checked} edits checked");
}

#[test]
fn every_byte_of_the_docker_sticker_replaced_is_never_valid() {
    check_every_byte("docker", &signed_file(&docker_sticker()));
}

#[test]
fn every_byte_of_the_compose_sticker_replaced_is_never_valid() {
    check_every_byte("compose", &signed_file(&compose_sticker()));
}

#[test]
fn a_changed_byte_outside_any_string_is_malformed() {
    for (name, bytes) in fixtures() {
        let outside = positions_outside_strings(&bytes);
        assert!(outside.len() > 50);
        for &position in &outside {
            if bytes[position].is_ascii_whitespace() {
                continue;
            }
            for replacement in printable() {
                if replacement == bytes[position] {
                    continue;
                }
                let mut edited = bytes.clone();
                edited[position] = replacement;
                assert_eq!(
                    verify_class(&edited),
                    Class::Malformed,
                    "{name}: byte {position} {:?} -> {:?}",
                    bytes[position] as char,
                    replacement as char
                );
            }
        }
    }
}

/// Byte positions that are not inside a JSON string token (structure and whitespace).
fn positions_outside_strings(bytes: &[u8]) -> Vec<usize> {
    let mut outside = Vec::new();
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else {
            outside.push(i);
        }
    }
    outside
}

/// What verification must say when the string at `path` is changed to `new` (raw bytes,
/// maybe not UTF-8) by a single byte edit.
fn expected_class(path: &str, new: &[u8]) -> Class {
    let Ok(new) = std::str::from_utf8(new) else {
        return Class::Malformed;
    };
    if new.chars().any(char::is_control) {
        // No field accepts control characters (and the fixed ones reject other changes).
        return Class::Malformed;
    }
    let leaf = path.rsplit('.').next().unwrap_or(path);
    match (path, leaf) {
        ("schema" | "target.kind" | "signature.alg", _) => Class::Malformed,
        ("signature.key_id", _) => {
            let well_formed = new.strip_prefix("ed25519:").is_some_and(|hex| {
                hex.len() == 16
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if well_formed {
                Class::UnknownKey
            } else {
                Class::Malformed
            }
        }
        ("signature.value", _) => match BASE64.decode(new) {
            Ok(bytes) if bytes.len() == 64 => Class::BadSignature,
            _ => Class::Malformed,
        },
        ("task_id", _) => match Uuid::try_parse(new) {
            Ok(id) if id.hyphenated().to_string() == new => Class::BadSignature,
            _ => Class::Malformed,
        },
        ("deployed_at", _) => {
            if rfc3339_oracle(new) {
                Class::BadSignature
            } else {
                Class::Malformed
            }
        }
        (_, "digest") => {
            let well_formed = new.strip_prefix("sha256:").is_some_and(|hex| {
                hex.len() == 64
                    && hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            });
            if well_formed {
                // The compose fixture pins one image to its digest: a changed digest then
                // disagrees with the image.
                if path == "components[1].digest" && new != digest('b') {
                    Class::Malformed
                } else {
                    Class::BadSignature
                }
            } else {
                Class::Malformed
            }
        }
        (_, "image") => match new.rsplit_once('@') {
            Some((_, pinned)) if pinned == digest('b') => Class::BadSignature,
            Some(_) => Class::Malformed,
            None => Class::BadSignature,
        },
        // Free text: agent, names, release fields, deployed_by.
        _ => Class::BadSignature,
    }
}

/// An independent RFC 3339 check for the fixtures' shapes: fixed positions, fraction, `Z`
/// or `±hh:mm`.
fn rfc3339_oracle(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(part).ok()?.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    let (Some(y), Some(mo), Some(d), Some(h), Some(mi), Some(sec)) = (
        digits(0..4),
        digits(5..7),
        digits(8..10),
        digits(11..13),
        digits(14..16),
        digits(17..19),
    ) else {
        return false;
    };
    let month_days = [
        31,
        if y % 4 == 0 && (y % 100 != 0 || y % 400 == 0) {
            29
        } else {
            28
        },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 60
    {
        return false;
    }
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let n = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    if rest == "Z" {
        return true;
    }
    let r = rest.as_bytes();
    r.len() == 6
        && (r[0] == b'+' || r[0] == b'-')
        && r[3] == b':'
        && r[1..3].iter().chain(&r[4..6]).all(u8::is_ascii_digit)
        && rest[1..3].parse::<u32>().is_ok_and(|h| h <= 23)
        && rest[4..6].parse::<u32>().is_ok_and(|m| m <= 59)
}

#[test]
fn the_rfc3339_oracle_agrees_with_the_fixtures() {
    assert!(rfc3339_oracle(&docker_sticker().deployed_at));
    assert!(rfc3339_oracle(&compose_sticker().deployed_at));
    assert!(!rfc3339_oracle("2025-02-29T00:00:00Z"));
    assert!(!rfc3339_oracle("2025-03-14T15:09:26.Z"));
}

/// One byte of each class the value checks tell apart: lowercase hex digits and letters,
/// other lowercase letters, upper case (A-F and beyond), base64's `+ / =`, the separators
/// of digests, times, UUIDs and key ids, `@` (image pinning), space, other punctuation,
/// and non-printable bytes (controls, DEL, invalid UTF-8).
const REPRESENTATIVES: &[u8] = b"059afgzAFZ+/=-:.@_~ T!{\x00\x01\x1b\x7f\x80\xff";

/// Changes every byte of every value string of the file, each to every byte of
/// [`REPRESENTATIVES`] and to three more that rotate through all printable ASCII with the
/// position (so each printable byte is tried at many positions), and checks the precise
/// outcome for the field. Returns how many edits reached each (field, outcome).
fn check_value_bytes(name: &str, bytes: &[u8]) -> BTreeSet<String> {
    let mut reached = BTreeSet::new();
    let all: Vec<u8> = printable().filter(|&b| b != b'"' && b != b'\\').collect();
    for (path, text, start) in value_spans(name, bytes) {
        for offset in 0..text.len() {
            let position = start + offset;
            let rotating = (0..3).map(|k| all[(position * 7 + k * 31) % all.len()]);
            let mut replacements: Vec<u8> =
                REPRESENTATIVES.iter().copied().chain(rotating).collect();
            replacements.sort_unstable();
            replacements.dedup();
            for replacement in replacements {
                if replacement == bytes[position] {
                    continue;
                }
                let mut new_text = text.as_bytes().to_vec();
                new_text[offset] = replacement;
                let expected = expected_class(&path, &new_text);
                let mut edited = bytes.to_vec();
                edited[position] = replacement;
                let outcome = verify_class(&edited);
                assert_eq!(
                    outcome,
                    expected,
                    "{name}: {path} byte {offset} {:?} -> {:?} (new value {:?})",
                    bytes[position] as char,
                    replacement as char,
                    String::from_utf8_lossy(&new_text)
                );
                reached.insert(format!("{path}: {expected:?}"));
            }
        }
    }
    reached
}

#[test]
fn every_value_byte_of_the_docker_sticker_changed_gives_the_expected_outcome() {
    let reached = check_value_bytes("docker", &signed_file(&docker_sticker()));
    // Every field was changed at least once into each outcome it can reach.
    for field in [
        "schema: Malformed",
        "target.agent: BadSignature",
        "target.kind: Malformed",
        "target.name: BadSignature",
        "release.id: BadSignature",
        "release.name: BadSignature",
        "release.version: BadSignature",
        "release.version: Malformed",
        "components[0].name: BadSignature",
        "components[0].image: BadSignature",
        "components[0].image: Malformed",
        "components[0].digest: BadSignature",
        "components[0].digest: Malformed",
        "previous.release.version: BadSignature",
        "previous.components[0].digest: BadSignature",
        "previous.components[0].digest: Malformed",
        "signature.alg: Malformed",
        "signature.key_id: UnknownKey",
        "signature.key_id: Malformed",
        "signature.value: BadSignature",
        "signature.value: Malformed",
        "task_id: BadSignature",
        "task_id: Malformed",
        "deployed_at: BadSignature",
        "deployed_at: Malformed",
        "deployed_by: BadSignature",
    ] {
        assert!(reached.contains(field), "never reached {field}");
    }
}

#[test]
fn every_value_byte_of_the_compose_sticker_changed_gives_the_expected_outcome() {
    let reached = check_value_bytes("compose", &signed_file(&compose_sticker()));
    for field in [
        "target.kind: Malformed",
        // Pinned image: a change in the pinned digest disagrees with `digest`.
        "components[1].image: BadSignature",
        "components[1].image: Malformed",
        "components[1].digest: Malformed",
        // Non-ASCII name: a byte of a multi-byte character breaks UTF-8.
        "components[2].name: BadSignature",
        "components[2].name: Malformed",
        "deployed_at: BadSignature",
        "deployed_at: Malformed",
    ] {
        assert!(reached.contains(field), "never reached {field}");
    }
}

#[test]
fn every_truncation_is_malformed() {
    for (name, bytes) in fixtures() {
        // The trailing newline is insignificant whitespace; everything before it matters.
        let json_end = bytes.iter().rposition(|&b| b == b'}').unwrap() + 1;
        for length in 0..bytes.len() {
            let outcome = verify_class(&bytes[..length]);
            if length < json_end {
                assert_eq!(
                    outcome,
                    Class::Malformed,
                    "{name}: prefix of {length} bytes"
                );
            } else {
                assert_eq!(outcome, Class::Valid, "{name}: prefix of {length} bytes");
            }
        }
    }
}

#[test]
fn whitespace_edits_are_insignificant() {
    for (name, bytes) in fixtures() {
        let outside = positions_outside_strings(&bytes);
        for &position in &outside {
            if !bytes[position].is_ascii_whitespace() {
                continue;
            }
            for replacement in [b' ', b'\t', b'\n', b'\r'] {
                let mut edited = bytes.clone();
                edited[position] = replacement;
                assert_eq!(
                    verify_class(&edited),
                    Class::Valid,
                    "{name}: byte {position}"
                );
            }
        }
    }
}

#[test]
fn a_key_renamed_is_never_valid() {
    // Renaming `previous` makes it absent plus an unknown member: the signature catches it.
    let bytes = signed_file(&docker_sticker());
    let text = String::from_utf8(bytes).unwrap();
    let renamed = text.replacen("\"previous\"", "\"previouz\"", 1);
    assert_eq!(verify_class(renamed.as_bytes()), Class::BadSignature);
    // Renaming a required member is a schema error.
    let renamed = text.replacen("\"deployed_by\"", "\"deployed_bx\"", 1);
    assert_eq!(verify_class(renamed.as_bytes()), Class::Malformed);
}
