//! Signing in the core and verification of raw sticker bytes.

use crate::canonical::canonical_object_without;
use crate::keys::{Keyring, SigningKey, ALG_ED25519};
use crate::model::{
    parse_json, signature_from_object, sticker_from_object, top_object, MalformedSticker,
    Signature, SignedSticker, Sticker,
};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

/// Why a sticker could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The sticker breaks a schema rule, so it would never verify; fix the named field.
    #[error("refusing to sign: {0}")]
    Malformed(#[from] MalformedSticker),
}

/// Signs a sticker with the core's key: Ed25519 over the canonical JSON of the sticker
/// (with `schema`, without `signature`). Write the result with
/// [`SignedSticker::to_file_bytes`].
///
/// # Errors
///
/// [`SignError::Malformed`] when the sticker breaks a schema rule (for example a digest that
/// is not `sha256:` + 64 lowercase hex digits), so no unverifiable sticker is ever signed.
pub fn sign(sticker: &Sticker, key: &SigningKey) -> Result<SignedSticker, SignError> {
    let message = sticker.signing_bytes()?;
    Ok(SignedSticker {
        sticker: sticker.clone(),
        signature: signature_of(&message, key),
    })
}

/// The `signature` member for `message` (canonical bytes) signed with `key`.
pub(crate) fn signature_of(message: &[u8], key: &SigningKey) -> Signature {
    Signature {
        alg: ALG_ED25519.to_owned(),
        key_id: key.key_id().to_owned(),
        value: BASE64.encode(key.sign_bytes(message)),
    }
}

/// The outcome of [`verify`] (a sticker) or [`verify_evidence`](crate::verify_evidence)
/// (`Verification<Evidence>`): both documents are signed and checked the same way. An
/// auditor maps `Valid` to `ok` (before comparing digests) and every other outcome to
/// `tampered`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
// A verification is made once per document; boxing the document would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Verification<T = Sticker> {
    /// Well-formed and signed by a trusted key. Unknown extra fields, if any, were covered
    /// by the signature and are not part of the returned document.
    Valid(T),
    /// Well-formed and naming a trusted key, but the signature does not match the content:
    /// the file was changed after signing.
    BadSignature,
    /// Well-formed, but signed by a key that is not in the keyring.
    UnknownKey {
        /// The key id the sticker names.
        key_id: String,
    },
    /// Not a `wharf.sticker/v1` document: not JSON, truncated, a missing or ill-typed field,
    /// a bad digest, time, task id or signature encoding, and so on.
    Malformed {
        /// What is wrong, naming the field.
        reason: String,
    },
}

impl<T> Verification<T> {
    /// Whether the document is [`Verification::Valid`].
    pub fn is_valid(&self) -> bool {
        matches!(self, Self::Valid(_))
    }

    /// The document, when valid.
    pub fn into_valid(self) -> Option<T> {
        match self {
            Self::Valid(sticker) => Some(sticker),
            _ => None,
        }
    }

    /// A short, stable name of the outcome: `valid`, `bad-signature`, `unknown-key` or
    /// `malformed` (for reports and `--output json`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Valid(_) => "valid",
            Self::BadSignature => "bad-signature",
            Self::UnknownKey { .. } => "unknown-key",
            Self::Malformed { .. } => "malformed",
        }
    }
}

/// Verifies the raw bytes of a sticker file against a keyring. Never panics, whatever the
/// bytes.
///
/// Steps: parse as JSON (at most [`MAX_STICKER_BYTES`](crate::MAX_STICKER_BYTES), no
/// duplicate keys), check the schema, canonicalize the parsed document minus `signature` —
/// so any change to any field, including fields this version does not know, breaks the
/// signature — look up the key id, check the Ed25519 signature. Whitespace and member order
/// in the file do not matter.
pub fn verify(bytes: &[u8], keyring: &Keyring) -> Verification {
    verify_document(bytes, keyring, sticker_from_object)
}

/// The verification shared by every signed document of this crate: `content` checks the
/// schema of the parsed object (everything but `signature`) and builds the document.
pub(crate) fn verify_document<T>(
    bytes: &[u8],
    keyring: &Keyring,
    content: impl FnOnce(&serde_json::Map<String, serde_json::Value>) -> Result<T, MalformedSticker>,
) -> Verification<T> {
    match verify_inner(bytes, keyring, content) {
        Ok(verification) => verification,
        Err(malformed) => Verification::Malformed {
            reason: malformed.reason,
        },
    }
}

fn verify_inner<T>(
    bytes: &[u8],
    keyring: &Keyring,
    content: impl FnOnce(&serde_json::Map<String, serde_json::Value>) -> Result<T, MalformedSticker>,
) -> Result<Verification<T>, MalformedSticker> {
    let value = parse_json(bytes)?;
    let object = top_object(&value)?;
    let sticker = content(object)?;
    let (signature, signature_bytes) = signature_from_object(object)?;
    let message = canonical_object_without(object, &["signature"])
        .map_err(|error| MalformedSticker::new(error.to_string()))?;
    let Some(key) = keyring.get(&signature.key_id) else {
        return Ok(Verification::UnknownKey {
            key_id: signature.key_id,
        });
    };
    if key.verify_bytes(&message, &signature_bytes) {
        Ok(Verification::Valid(sticker))
    } else {
        Ok(Verification::BadSignature)
    }
}
