//! Canonical JSON: the exact bytes a sticker signature covers.
//!
//! The form is deliberately small and fully specified here, so that an auditor can
//! re-implement it in any language:
//!
//! - no insignificant whitespace anywhere;
//! - object members sorted by the UTF-8 bytes of their keys (plain byte order);
//! - strings written between `"` with exactly these escapes: `\"`, `\\`, `\b`, `\f`, `\n`,
//!   `\r`, `\t`, and `\u00XX` (lowercase hex) for every other code point below U+0020; every
//!   other code point (including `/`, DEL and all non-ASCII) is written as its raw UTF-8;
//! - `null`, `true`, `false` as such;
//! - integers in plain decimal (`-12`, `0`, `18446744073709551615`); any other number
//!   (fraction, exponent, beyond 64-bit) is refused, since JSON numbers that are not
//!   integers have no single textual form;
//! - nesting deeper than [`MAX_DEPTH`] is refused.
//!
//! For documents without floats this is byte for byte what Python's
//! `json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` writes, so a
//! short script can check a sticker (tested against Python's `cryptography` Ed25519).
//!
//! The ordering is computed here, never taken from `serde_json::Map`, so the output does not
//! change when serde_json's `preserve_order` feature is enabled somewhere in the build.

use serde_json::{Map, Value};
use std::fmt;

/// Deepest nesting of arrays and objects that [`canonical_json`] accepts.
///
/// It matches serde_json's own parser limit, so anything serde_json parsed can be
/// canonicalized; a sticker itself is four levels deep.
pub const MAX_DEPTH: usize = 128;

/// Why a JSON value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CanonicalError {
    /// A number that is not an integer fitting in 64 bits (for example `1.5`, `1e3` or
    /// `-0.0`). Stickers carry no numbers; write such a value as a string.
    #[error(
        "number at {path} is not a 64-bit integer; canonical JSON only carries integers \
         (write fractional values as strings)"
    )]
    NonIntegerNumber {
        /// Where the number is, as `$.field[3].name`.
        path: String,
    },
    /// Arrays and objects nested deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {limit} levels at {path}; flatten the document")]
    TooDeep {
        /// The limit that was exceeded.
        limit: usize,
        /// Where the limit was crossed.
        path: String,
    },
}

/// One step of the path to a value, kept only to name it in errors.
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

struct PathDisplay<'s, 'a>(&'s [Segment<'a>]);

impl fmt::Display for PathDisplay<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("$")?;
        for segment in self.0 {
            match segment {
                Segment::Key(key) => {
                    let short: String = key.chars().take(64).collect();
                    write!(f, ".{}", short.escape_debug())?;
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Writes the canonical JSON form of `value`.
///
/// # Errors
///
/// [`CanonicalError::NonIntegerNumber`] for a number that is not a 64-bit integer and
/// [`CanonicalError::TooDeep`] for nesting deeper than [`MAX_DEPTH`].
///
/// # Examples
///
/// ```
/// let value = serde_json::json!({"b": [1, "x\n"], "a": null});
/// let bytes = wharf_sticker::canonical_json(&value).unwrap();
/// assert_eq!(bytes, br#"{"a":null,"b":[1,"x\n"]}"#);
/// ```
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    let mut path = Vec::new();
    write_value(value, &mut out, &mut path)?;
    Ok(out)
}

/// Canonical form of an object without the members named in `skip` (used to drop
/// `signature` without cloning the parsed document).
pub(crate) fn canonical_object_without(
    object: &Map<String, Value>,
    skip: &[&str],
) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    let mut path = Vec::new();
    write_object(object, skip, &mut out, &mut path)?;
    Ok(out)
}

fn write_value<'a>(
    value: &'a Value,
    out: &mut Vec<u8>,
    path: &mut Vec<Segment<'a>>,
) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => {
            if let Some(n) = number.as_i64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else if let Some(n) = number.as_u64() {
                out.extend_from_slice(n.to_string().as_bytes());
            } else {
                return Err(CanonicalError::NonIntegerNumber {
                    path: PathDisplay(path).to_string(),
                });
            }
        }
        Value::String(string) => write_string(string, out),
        Value::Array(items) => {
            check_depth(path)?;
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                path.push(Segment::Index(index));
                write_value(item, out, path)?;
                path.pop();
            }
            out.push(b']');
        }
        Value::Object(object) => write_object(object, &[], out, path)?,
    }
    Ok(())
}

fn write_object<'a>(
    object: &'a Map<String, Value>,
    skip: &[&str],
    out: &mut Vec<u8>,
    path: &mut Vec<Segment<'a>>,
) -> Result<(), CanonicalError> {
    check_depth(path)?;
    let mut members: Vec<(&'a String, &'a Value)> = object
        .iter()
        .filter(|(key, _)| !skip.contains(&key.as_str()))
        .collect();
    // `str`'s ordering is the byte order of its UTF-8 encoding.
    members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (index, (key, member)) in members.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
        path.push(Segment::Key(key));
        write_value(member, out, path)?;
        path.pop();
    }
    out.push(b'}');
    Ok(())
}

fn check_depth(path: &[Segment<'_>]) -> Result<(), CanonicalError> {
    // `path.len()` containers enclose this one; it would be number `path.len() + 1`.
    if path.len() >= MAX_DEPTH {
        return Err(CanonicalError::TooDeep {
            limit: MAX_DEPTH,
            path: PathDisplay(path).to_string(),
        });
    }
    Ok(())
}

fn write_string(string: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = string.as_bytes();
    let mut start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            // Multi-byte UTF-8 sequences never contain bytes below 0x80, so copying the
            // remaining bytes verbatim copies whole code points.
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..index]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0x0f)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = index + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(value: &Value) -> String {
        String::from_utf8(canonical_json(value).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_by_bytes_at_every_level() {
        let value = json!({"b": {"z": 1, "a": 2}, "a": [{"y": true, "x": false}], "B": null});
        assert_eq!(
            canon(&value),
            r#"{"B":null,"a":[{"x":false,"y":true}],"b":{"a":2,"z":1}}"#
        );
    }

    #[test]
    fn key_order_is_utf8_byte_order() {
        // U+E000 (3 bytes, EE 80 80) sorts before U+1F600 (4 bytes, F0 9F 98 80) in byte
        // order, but after it in UTF-16 order: this pins byte order.
        let value = json!({"\u{1F600}": 1, "\u{E000}": 2, "z": 3, "é": 4});
        assert_eq!(
            canon(&value),
            "{\"z\":3,\"é\":4,\"\u{E000}\":2,\"\u{1F600}\":1}"
        );
    }

    #[test]
    fn escapes_strings_deterministically() {
        let value = json!("q\" b\\ s/ \u{8}\u{c}\n\r\t \u{0}\u{1f} \u{7f} é \u{2028} 😀");
        assert_eq!(
            canon(&value),
            "\"q\\\" b\\\\ s/ \\b\\f\\n\\r\\t \\u0000\\u001f \u{7f} é \u{2028} 😀\""
        );
    }

    #[test]
    fn canonical_output_parses_back_to_the_same_value() {
        let value = json!({"k\"\n": ["\u{1}", -5, 18446744073709551615u64, {"": ""}]});
        let bytes = canonical_json(&value).unwrap();
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, value);
        assert_eq!(canonical_json(&back).unwrap(), bytes);
    }

    #[test]
    fn integers_are_plain_decimal() {
        assert_eq!(
            canon(&json!([0, -1, i64::MIN, u64::MAX])),
            "[0,-1,-9223372036854775808,18446744073709551615]"
        );
    }

    #[test]
    fn refuses_non_integer_numbers_and_names_them() {
        let value: Value = serde_json::from_str(r#"{"a": [1, {"b": 1.5}]}"#).unwrap();
        let error = canonical_json(&value).unwrap_err();
        assert_eq!(
            error,
            CanonicalError::NonIntegerNumber {
                path: "$.a[1].b".into()
            }
        );
        assert!(error.to_string().contains("$.a[1].b"));
        for text in ["1e3", "-0.0", "0.1"] {
            let value: Value = serde_json::from_str(text).unwrap();
            assert!(canonical_json(&value).is_err(), "{text} must be refused");
        }
    }

    #[test]
    fn refuses_nesting_beyond_the_limit() {
        let mut value = json!(null);
        for _ in 0..MAX_DEPTH {
            value = json!([value]);
        }
        assert!(canonical_json(&value).is_ok());
        let too_deep = json!({ "x": value });
        assert!(matches!(
            canonical_json(&too_deep),
            Err(CanonicalError::TooDeep {
                limit: MAX_DEPTH,
                ..
            })
        ));
    }

    #[test]
    fn skips_only_named_top_level_members() {
        let value = json!({"signature": 1, "a": {"signature": 2}});
        let Value::Object(object) = value else {
            unreachable!()
        };
        let bytes = canonical_object_without(&object, &["signature"]).unwrap();
        assert_eq!(bytes, br#"{"a":{"signature":2}}"#);
    }
}
