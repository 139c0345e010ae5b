//! The sticker document of design §6 and its schema checks.

use crate::keys::{is_key_id, ALG_ED25519};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::fmt;
use uuid::Uuid;

/// The `schema` string of every sticker this crate writes and reads.
pub const SCHEMA_V1: &str = "wharf.sticker/v1";

/// Largest sticker file accepted, in bytes (1 MiB). Real stickers are a few KiB.
pub const MAX_STICKER_BYTES: usize = 1 << 20;

/// What kind of target a sticker describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A single container managed by `wharf-agent-docker`; `name` is the container name.
    Docker,
    /// A Compose project managed by `wharf-agent-compose`; `name` is the project name.
    Compose,
}

impl TargetKind {
    /// The JSON spelling: `docker` or `compose`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Docker => "docker",
            Self::Compose => "compose",
        }
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the release runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// Name of the agent that deployed it.
    pub agent: String,
    /// Container or Compose project.
    pub kind: TargetKind,
    /// Container name (`docker`) or Compose project name (`compose`).
    pub name: String,
}

/// The release a sticker records.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Release {
    /// The core's identifier of the release.
    pub id: String,
    /// Release name, the `NAME` of `--release NAME@VERSION`.
    pub name: String,
    /// Release version, the `VERSION` of `--release NAME@VERSION`.
    pub version: String,
}

/// One deployed image: the container of a docker target, or a service of a Compose project.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Component {
    /// Container name or Compose service name.
    pub name: String,
    /// Image repository as deployed (`registry.example:5000/app`). It may also be the full
    /// pinned reference `repo@sha256:…`, in which case its digest must equal `digest`.
    pub image: String,
    /// Image manifest digest, `sha256:` + 64 lowercase hex digits.
    pub digest: String,
}

/// What the deployment replaced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Previous {
    /// The release that ran before.
    pub release: Release,
    /// Its components (at least one).
    pub components: Vec<Component>,
}

/// A sticker's content: everything but the `schema` string and the `signature`.
///
/// Build one, [`sign`](crate::sign) it in the core, ship the file bytes, write them on the
/// host; [`verify`](crate::verify) the raw bytes to get it back. Every string must be
/// non-empty and free of control characters; see [`Sticker::check`] for the full rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sticker {
    /// Where it runs.
    pub target: Target,
    /// What was deployed.
    pub release: Release,
    /// Deployed images (at least one).
    pub components: Vec<Component>,
    /// When, as RFC 3339 (`2025-01-02T03:04:05Z`, optional fraction, `Z` or `±hh:mm`).
    pub deployed_at: String,
    /// Who requested the task (the core's requester name).
    pub deployed_by: String,
    /// The deploy task's id.
    pub task_id: Uuid,
    /// What it replaced; `None` (written as `null`) for a first deployment.
    pub previous: Option<Previous>,
}

impl Sticker {
    /// Checks the schema rules that [`verify`](crate::verify) enforces, so that a sticker
    /// that passes here and is signed will verify.
    ///
    /// # Errors
    ///
    /// [`MalformedSticker`] naming the first offending field.
    pub fn check(&self) -> Result<(), MalformedSticker> {
        let value = serde_json::to_value(Wire::unsigned(self)).map_err(|error| {
            MalformedSticker::new(format!("sticker cannot be serialized: {error}"))
        })?;
        let object = value
            .as_object()
            .ok_or_else(|| MalformedSticker::new("sticker did not serialize to an object"))?;
        sticker_from_object(object).map(|_| ())
    }

    /// The bytes a signature covers: the canonical JSON of the sticker with its `schema` and
    /// without `signature` (see [`canonical_json`](crate::canonical_json)).
    ///
    /// # Errors
    ///
    /// [`MalformedSticker`] when the sticker breaks a schema rule.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, MalformedSticker> {
        self.check()?;
        let value = serde_json::to_value(Wire::unsigned(self)).map_err(|error| {
            MalformedSticker::new(format!("sticker cannot be serialized: {error}"))
        })?;
        crate::canonical_json(&value).map_err(|error| MalformedSticker::new(error.to_string()))
    }
}

/// The `signature` member of a sticker file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Signature {
    /// Always `ed25519`.
    pub alg: String,
    /// Id of the signing key (`ed25519:` + 16 hex digits).
    pub key_id: String,
    /// The 64-byte signature in standard padded base64.
    pub value: String,
}

/// A sticker with its signature, as written to disk.
///
/// [`SignedSticker::parse`] checks the schema only; use [`verify`](crate::verify) on the raw
/// bytes to check the signature (a parsed value drops unknown fields, so re-serializing it
/// is not the file that was signed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SignedSticker {
    /// The content.
    pub sticker: Sticker,
    /// The signature over its canonical JSON.
    pub signature: Signature,
}

impl SignedSticker {
    /// The file form: pretty-printed JSON for humans (`schema`, `target`, …, `signature` in
    /// that order), ending with a newline. Whitespace does not matter to verification.
    pub fn to_file_bytes(&self) -> Vec<u8> {
        let wire = Wire {
            signature: Some(&self.signature),
            ..Wire::unsigned(&self.sticker)
        };
        // Plain structs of strings, a UUID and an enum serialize into a Vec infallibly.
        let mut bytes = serde_json::to_vec_pretty(&wire)
            .expect("a sticker of strings and a UUID always serializes to JSON");
        bytes.push(b'\n');
        bytes
    }

    /// Parses sticker file bytes and checks the schema, without checking the signature.
    ///
    /// # Errors
    ///
    /// [`MalformedSticker`] saying what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Self, MalformedSticker> {
        let value = parse_json(bytes)?;
        let object = top_object(&value)?;
        let sticker = sticker_from_object(object)?;
        let (signature, _) = signature_from_object(object)?;
        Ok(Self { sticker, signature })
    }
}

/// Why bytes are not a well-formed `wharf.sticker/v1` document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed sticker: {reason}")]
pub struct MalformedSticker {
    /// What is wrong, naming the field (`components[0].digest`) when there is one.
    pub reason: String,
}

impl MalformedSticker {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// Serialized form: field order is the order humans read in the file.
#[derive(Serialize)]
struct Wire<'a> {
    schema: &'static str,
    target: &'a Target,
    release: &'a Release,
    components: &'a [Component],
    deployed_at: &'a str,
    deployed_by: &'a str,
    task_id: &'a Uuid,
    previous: &'a Option<Previous>,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a Signature>,
}

impl<'a> Wire<'a> {
    fn unsigned(sticker: &'a Sticker) -> Self {
        Self {
            schema: SCHEMA_V1,
            target: &sticker.target,
            release: &sticker.release,
            components: &sticker.components,
            deployed_at: &sticker.deployed_at,
            deployed_by: &sticker.deployed_by,
            task_id: &sticker.task_id,
            previous: &sticker.previous,
            signature: None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Parsing and schema checks on the raw document.

/// Parses JSON text, refusing duplicate object keys (which different readers resolve
/// differently) and anything beyond serde_json's nesting limit.
pub(crate) fn parse_json(bytes: &[u8]) -> Result<Value, MalformedSticker> {
    if bytes.len() > MAX_STICKER_BYTES {
        return Err(MalformedSticker::new(format!(
            "file is {} bytes, more than the {MAX_STICKER_BYTES}-byte limit",
            bytes.len()
        )));
    }
    let not_json = |error: serde_json::Error| MalformedSticker::new(format!("not JSON: {error}"));
    // First pass: syntax, depth and duplicate keys. Second pass: the value itself. Keeping
    // them apart leaves the value to serde_json's own parser whatever features are enabled.
    serde_json::from_slice::<NoDuplicateKeys>(bytes).map_err(not_json)?;
    serde_json::from_slice::<Value>(bytes).map_err(not_json)
}

/// Walks a JSON document and fails on the first object with a repeated key.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> Result<NoDuplicateKeys, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> Result<NoDuplicateKeys, A::Error> {
        let mut seen = HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("duplicate key in an object"));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }
}

pub(crate) fn top_object(value: &Value) -> Result<&Map<String, Value>, MalformedSticker> {
    value.as_object().ok_or_else(|| {
        MalformedSticker::new(format!(
            "the document is {}, expected an object",
            kind_of(value)
        ))
    })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Shows a found string in an error: quoted, escaped, cut after 80 characters.
fn shown(text: &str) -> String {
    let mut short: String = text.chars().take(80).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    format!("\"{}\"", short.escape_debug())
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn field<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Value, MalformedSticker> {
    object.get(key).ok_or_else(|| {
        MalformedSticker::new(format!("required field {} is missing", join(path, key)))
    })
}

fn object_field<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Map<String, Value>, MalformedSticker> {
    let value = field(object, path, key)?;
    value.as_object().ok_or_else(|| {
        MalformedSticker::new(format!(
            "field {} is {}, expected an object",
            join(path, key),
            kind_of(value)
        ))
    })
}

fn raw_string_field<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a str, MalformedSticker> {
    let value = field(object, path, key)?;
    value.as_str().ok_or_else(|| {
        MalformedSticker::new(format!(
            "field {} is {}, expected a string",
            join(path, key),
            kind_of(value)
        ))
    })
}

/// A required, non-empty string without control characters.
fn text_field(
    object: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<String, MalformedSticker> {
    let text = raw_string_field(object, path, key)?;
    if text.is_empty() {
        return Err(MalformedSticker::new(format!(
            "field {} is empty",
            join(path, key)
        )));
    }
    if text.chars().any(char::is_control) {
        return Err(MalformedSticker::new(format!(
            "field {} contains a control character: {}",
            join(path, key),
            shown(text)
        )));
    }
    Ok(text.to_owned())
}

/// Whether `s` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Whether `s` is an RFC 3339 date-time: `YYYY-MM-DDTHH:MM:SS`, an optional fraction
/// `.d+`, then `Z` or `±HH:MM`; upper-case `T` and `Z` only; the date must exist and the
/// second may be 60 (a leap second).
pub fn is_rfc3339(s: &str) -> bool {
    fn number(bytes: &[u8]) -> Option<u32> {
        bytes.iter().try_fold(0u32, |acc, &b| {
            b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
        })
    }
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) = (
        number(&b[0..4]),
        number(&b[5..7]),
        number(&b[8..10]),
        number(&b[11..13]),
        number(&b[14..16]),
        number(&b[17..19]),
    ) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    if day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    match rest {
        b"Z" => true,
        [b'+' | b'-', h1, h2, b':', m1, m2] => {
            let (hours, minutes) = (number(&[*h1, *h2]), number(&[*m1, *m2]));
            matches!((hours, minutes), (Some(h), Some(m)) if h <= 23 && m <= 59)
        }
        _ => false,
    }
}

fn release_from(object: &Map<String, Value>, path: &str) -> Result<Release, MalformedSticker> {
    Ok(Release {
        id: text_field(object, path, "id")?,
        name: text_field(object, path, "name")?,
        version: text_field(object, path, "version")?,
    })
}

fn components_from(
    object: &Map<String, Value>,
    path: &str,
) -> Result<Vec<Component>, MalformedSticker> {
    let list_path = join(path, "components");
    let value = field(object, path, "components")?;
    let items = value.as_array().ok_or_else(|| {
        MalformedSticker::new(format!(
            "field {list_path} is {}, expected an array",
            kind_of(value)
        ))
    })?;
    if items.is_empty() {
        return Err(MalformedSticker::new(format!(
            "field {list_path} is empty, expected at least one component"
        )));
    }
    let mut components = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let item_path = format!("{list_path}[{index}]");
        let object = item.as_object().ok_or_else(|| {
            MalformedSticker::new(format!(
                "{item_path} is {}, expected an object",
                kind_of(item)
            ))
        })?;
        let name = text_field(object, &item_path, "name")?;
        let image = text_field(object, &item_path, "image")?;
        let digest = raw_string_field(object, &item_path, "digest")?;
        if !is_digest(digest) {
            return Err(MalformedSticker::new(format!(
                "field {item_path}.digest must be \"sha256:\" followed by 64 lowercase hex \
                 digits, found {}",
                shown(digest)
            )));
        }
        if let Some((_, pinned)) = image.rsplit_once('@') {
            if pinned != digest {
                return Err(MalformedSticker::new(format!(
                    "field {item_path}.image is pinned to {} but {item_path}.digest is {}",
                    shown(pinned),
                    shown(digest)
                )));
            }
        }
        components.push(Component {
            name,
            image,
            digest: digest.to_owned(),
        });
    }
    Ok(components)
}

/// Checks every field but `signature` and builds the sticker. Unknown extra fields are
/// allowed (they are covered by the signature).
pub(crate) fn sticker_from_object(
    object: &Map<String, Value>,
) -> Result<Sticker, MalformedSticker> {
    let schema = raw_string_field(object, "", "schema")?;
    if schema != SCHEMA_V1 {
        return Err(MalformedSticker::new(format!(
            "schema is {}, this reader understands only \"{SCHEMA_V1}\"; upgrade wharf to \
             read newer stickers",
            shown(schema)
        )));
    }

    let target_object = object_field(object, "", "target")?;
    let agent = text_field(target_object, "target", "agent")?;
    let kind = match raw_string_field(target_object, "target", "kind")? {
        "docker" => TargetKind::Docker,
        "compose" => TargetKind::Compose,
        other => {
            return Err(MalformedSticker::new(format!(
                "field target.kind is {}, expected \"docker\" or \"compose\"",
                shown(other)
            )))
        }
    };
    let name = text_field(target_object, "target", "name")?;

    let release = release_from(object_field(object, "", "release")?, "release")?;
    let components = components_from(object, "")?;

    let deployed_at = raw_string_field(object, "", "deployed_at")?;
    if !is_rfc3339(deployed_at) {
        return Err(MalformedSticker::new(format!(
            "field deployed_at must be an RFC 3339 time such as \"2025-01-02T03:04:05Z\", \
             found {}",
            shown(deployed_at)
        )));
    }
    let deployed_by = text_field(object, "", "deployed_by")?;

    let task_id_text = raw_string_field(object, "", "task_id")?;
    let task_id = Uuid::try_parse(task_id_text)
        .ok()
        .filter(|id| id.hyphenated().to_string() == task_id_text)
        .ok_or_else(|| {
            MalformedSticker::new(format!(
                "field task_id must be a lowercase hyphenated UUID, found {}",
                shown(task_id_text)
            ))
        })?;

    let previous = match object.get("previous") {
        None | Some(Value::Null) => None,
        Some(Value::Object(previous)) => Some(Previous {
            release: release_from(
                object_field(previous, "previous", "release")?,
                "previous.release",
            )?,
            components: components_from(previous, "previous")?,
        }),
        Some(other) => {
            return Err(MalformedSticker::new(format!(
                "field previous is {}, expected an object or null",
                kind_of(other)
            )))
        }
    };

    Ok(Sticker {
        target: Target { agent, kind, name },
        release,
        components,
        deployed_at: deployed_at.to_owned(),
        deployed_by,
        task_id,
        previous,
    })
}

/// Checks the `signature` member; returns it with the decoded 64 signature bytes.
pub(crate) fn signature_from_object(
    object: &Map<String, Value>,
) -> Result<(Signature, [u8; 64]), MalformedSticker> {
    let signature = object_field(object, "", "signature")?;
    // The signature object is not covered by the signature, so nothing may hide in it.
    if let Some(extra) = signature
        .keys()
        .find(|key| !matches!(key.as_str(), "alg" | "key_id" | "value"))
    {
        return Err(MalformedSticker::new(format!(
            "field signature has an unknown member {}; only alg, key_id and value are allowed",
            shown(extra)
        )));
    }
    let alg = raw_string_field(signature, "signature", "alg")?;
    if alg != ALG_ED25519 {
        return Err(MalformedSticker::new(format!(
            "field signature.alg is {}, only \"{ALG_ED25519}\" is supported",
            shown(alg)
        )));
    }
    let key_id = raw_string_field(signature, "signature", "key_id")?;
    if !is_key_id(key_id) {
        return Err(MalformedSticker::new(format!(
            "field signature.key_id must be \"ed25519:\" followed by 16 lowercase hex digits, \
             found {}",
            shown(key_id)
        )));
    }
    let encoded = raw_string_field(signature, "signature", "value")?;
    let bytes: [u8; 64] = BASE64
        .decode(encoded)
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            MalformedSticker::new(format!(
                "field signature.value must be 64 bytes in standard padded base64, found {}",
                shown(encoded)
            ))
        })?;
    Ok((
        Signature {
            alg: alg.to_owned(),
            key_id: key_id.to_owned(),
            value: encoded.to_owned(),
        },
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_rule() {
        let good = format!("sha256:{}", "0123456789abcdef".repeat(4));
        assert!(is_digest(&good));
        assert!(!is_digest(&good.to_uppercase()));
        assert!(!is_digest(&good[..good.len() - 1]));
        assert!(!is_digest(&format!("{good}0")));
        assert!(!is_digest(&good.replace("sha256", "sha512")));
        assert!(!is_digest(&good.replace('f', "g")));
        assert!(!is_digest(""));
    }

    #[test]
    fn rfc3339_rule() {
        for good in [
            "2025-01-02T03:04:05Z",
            "2024-02-29T23:59:60Z",
            "2025-12-31T00:00:00.123456789Z",
            "2025-06-30T12:00:00+02:00",
            "2025-06-30T12:00:00.5-11:30",
            "0000-01-01T00:00:00Z",
        ] {
            assert!(is_rfc3339(good), "{good}");
        }
        for bad in [
            "",
            "2025-01-02",
            "2025-01-02t03:04:05Z",
            "2025-01-02T03:04:05z",
            "2025-01-02 03:04:05Z",
            "2025-01-02T03:04:05",
            "2025-13-02T03:04:05Z",
            "2025-00-02T03:04:05Z",
            "2025-02-29T03:04:05Z",
            "1900-02-29T03:04:05Z",
            "2025-04-31T03:04:05Z",
            "2025-01-00T03:04:05Z",
            "2025-01-02T24:04:05Z",
            "2025-01-02T03:60:05Z",
            "2025-01-02T03:04:61Z",
            "2025-01-02T03:04:05.Z",
            "2025-01-02T03:04:05+2:00",
            "2025-01-02T03:04:05+24:00",
            "2025-01-02T03:04:05+02:60",
            "2025-01-02T03:04:05+0200",
            "2025-01-02T03:04:05ZZ",
            "+025-01-02T03:04:05Z",
            "2025-01-02T03:04:05Zé",
            "2025-\u{e9}1-02T03:04:05Z",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_json(br#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
        for text in [
            &br#"{"a":1,"a":1}"#[..],
            br#"{"x":{"b":1,"c":2,"b":3}}"#,
            br#"[{"x":[{"k":1,"k":2}]}]"#,
            br#"{"a":1,"\u0061":2}"#,
        ] {
            let error = parse_json(text).unwrap_err();
            assert!(error.reason.contains("duplicate key"), "{error}");
        }
    }

    #[test]
    fn deep_nesting_and_oversize_are_refused() {
        let deep = "[".repeat(100_000);
        assert!(parse_json(deep.as_bytes()).is_err());
        let huge = vec![b' '; MAX_STICKER_BYTES + 1];
        assert!(parse_json(&huge).unwrap_err().reason.contains("limit"));
    }

    #[test]
    fn shown_cuts_long_text_on_char_boundaries() {
        let long = "é".repeat(200);
        let text = shown(&long);
        assert!(text.ends_with("…\""));
        assert_eq!(text.chars().filter(|&c| c == 'é').count(), 80);
        assert_eq!(shown("a\u{1b}[31m"), "\"a\\u{1b}[31m\"");
    }
}
