//! Ed25519 keys (ring): the core's signing key, verifying keys and the keyring of trusted
//! keys.
//!
//! A key id is `ed25519:` followed by the first 16 lowercase hex digits of the SHA-256 of the
//! 32-byte public key. It only names a key: verification always checks the signature against
//! the full public key found under that id.
//!
//! The text form of a [`VerifyingKey`], used to distribute it and in keyring files, is
//! `ed25519 <standard padded base64 of the 32-byte public key>`, for example
//! `ed25519 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=`.

use crate::file::{self, ReadError, WriteError};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// The only signature algorithm of `wharf.sticker/v1`.
pub const ALG_ED25519: &str = "ed25519";

/// Prefix of every key id and first word of a verifying key's text form.
const KEY_ID_PREFIX: &str = "ed25519:";

/// Number of hex digits of SHA-256(public key) in a key id.
const KEY_ID_HEX_LEN: usize = 16;

/// Largest PKCS#8 key file accepted by [`SigningKey::read_pkcs8_file`].
const MAX_KEY_FILE_BYTES: u64 = 4096;

/// What went wrong with a key. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The operating system's random generator failed while generating a key.
    #[error("could not generate an Ed25519 key: the system random generator failed")]
    Generate,
    /// The bytes are not an Ed25519 private key in PKCS#8 DER (v1 or v2).
    #[error(
        "not an Ed25519 private key in PKCS#8 DER ({reason}); expected the file the core \
         generated, or one made by `openssl genpkey -algorithm ed25519 -outform DER`"
    )]
    InvalidPkcs8 {
        /// ring's description of the problem (never the key bytes).
        reason: String,
    },
    /// A verifying key's text form could not be parsed.
    #[error("invalid verifying key: {reason}; expected `ed25519 <base64 of 32 bytes>`")]
    InvalidVerifyingKey {
        /// What was wrong.
        reason: String,
    },
    /// Reading a key file failed.
    #[error("could not read the signing key: {0}")]
    Read(#[from] ReadError),
    /// Writing a key file failed.
    #[error("could not write the signing key: {0}")]
    Write(#[from] WriteError),
}

/// A keyring problem: a bad line in a keyring file or a key-id collision.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    /// A line of a keyring file is not a verifying key.
    #[error("keyring line {line}: {source}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// Why the line was refused.
        source: KeyError,
    },
    /// Two different public keys have the same key id (a 64-bit hash collision or a
    /// deliberately crafted key). Remove one of them from the keyring.
    #[error("two different keys share the key id {key_id}; keep only the one you trust")]
    KeyIdCollision {
        /// The shared key id.
        key_id: String,
    },
}

/// The key id of an Ed25519 public key: `ed25519:` + 16 hex digits of its SHA-256.
///
/// ```
/// let id = wharf_sticker::key_id_for(&[0u8; 32]);
/// assert!(id.starts_with("ed25519:") && id.len() == 24);
/// ```
pub fn key_id_for(public_key: &[u8; 32]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut id = String::with_capacity(KEY_ID_PREFIX.len() + KEY_ID_HEX_LEN);
    id.push_str(KEY_ID_PREFIX);
    for byte in &digest.as_ref()[..KEY_ID_HEX_LEN / 2] {
        id.push_str(&format!("{byte:02x}"));
    }
    id
}

/// Whether `s` has the shape of a key id (`ed25519:` + 16 lowercase hex digits).
pub fn is_key_id(s: &str) -> bool {
    s.strip_prefix(KEY_ID_PREFIX).is_some_and(|hex| {
        hex.len() == KEY_ID_HEX_LEN && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// PKCS#8 DER bytes of an Ed25519 private key, as produced by [`SigningKey::generate`].
///
/// Store it in a 0600 file ([`Pkcs8Der::write_file`]). `Debug` does not show the bytes, and
/// the buffer is overwritten with zeros when dropped (best effort: copies made elsewhere,
/// for example inside ring, are not reached).
pub struct Pkcs8Der(Vec<u8>);

impl Pkcs8Der {
    /// The DER bytes. Treat them as secret.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Writes the key atomically to `path` with mode 0600 (see
    /// [`write_private_atomic`](crate::write_private_atomic)).
    ///
    /// # Errors
    ///
    /// [`KeyError::Write`] when the file cannot be written.
    pub fn write_file(&self, path: &Path) -> Result<(), KeyError> {
        file::write_private_atomic(path, &self.0)?;
        Ok(())
    }
}

impl fmt::Debug for Pkcs8Der {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pkcs8Der(<redacted>)")
    }
}

impl Drop for Pkcs8Der {
    fn drop(&mut self) {
        self.0.iter_mut().for_each(|byte| *byte = 0);
        std::hint::black_box(&self.0);
    }
}

/// The core's Ed25519 sticker-signing key.
///
/// `Debug` shows only the key id.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    verifying: VerifyingKey,
}

impl SigningKey {
    /// Generates a new key from the system random generator. Returns the key and its PKCS#8
    /// form, which the caller stores (mode 0600) to load it again with
    /// [`SigningKey::from_pkcs8`].
    ///
    /// # Errors
    ///
    /// [`KeyError::Generate`] when the random generator fails.
    pub fn generate() -> Result<(Self, Pkcs8Der), KeyError> {
        let document =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        let pkcs8 = Pkcs8Der(document.as_ref().to_vec());
        let key = Self::from_pkcs8(pkcs8.as_bytes())?;
        Ok((key, pkcs8))
    }

    /// Loads a key from PKCS#8 DER: v2 (with the public key, as ring and the core write it;
    /// the public key is checked against the private one) or v1 (as OpenSSL writes it).
    ///
    /// # Errors
    ///
    /// [`KeyError::InvalidPkcs8`] when the bytes are not such a key.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|error| {
            KeyError::InvalidPkcs8 {
                reason: error.to_string(),
            }
        })?;
        let mut public_key = [0u8; 32];
        public_key.copy_from_slice(pair.public_key().as_ref());
        Ok(Self {
            pair,
            verifying: VerifyingKey::from_public_key(public_key),
        })
    }

    /// Reads a PKCS#8 DER key file (at most 4 KiB), as written by [`Pkcs8Der::write_file`].
    ///
    /// # Errors
    ///
    /// [`KeyError::Read`] when the file cannot be read, [`KeyError::InvalidPkcs8`] when it is
    /// not a key.
    pub fn read_pkcs8_file(path: &Path) -> Result<Self, KeyError> {
        let bytes = Pkcs8Der(file::read_bytes_limited(path, MAX_KEY_FILE_BYTES)?);
        Self::from_pkcs8(bytes.as_bytes())
    }

    /// The 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.verifying.public_key
    }

    /// The verifying key to hand to agents and auditors.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }

    /// The key id (`ed25519:` + 16 hex digits) written into each signature.
    pub fn key_id(&self) -> &str {
        &self.verifying.key_id
    }

    /// Signs `message` (the crate signs canonical sticker bytes with it).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        let mut signature = [0u8; 64];
        signature.copy_from_slice(self.pair.sign(message).as_ref());
        signature
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.verifying.key_id)
            .finish_non_exhaustive()
    }
}

/// A trusted Ed25519 public key and its key id.
///
/// The key id is always derived from the public key, so the two cannot disagree. Text form
/// (`Display`/`FromStr`, and serde as a string): `ed25519 <base64 of the 32 bytes>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct VerifyingKey {
    key_id: String,
    public_key: [u8; 32],
}

impl VerifyingKey {
    /// Wraps a raw 32-byte Ed25519 public key.
    pub fn from_public_key(public_key: [u8; 32]) -> Self {
        Self {
            key_id: key_id_for(&public_key),
            public_key,
        }
    }

    /// The key id, `ed25519:` + 16 hex digits.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }

    /// Whether `signature` is a valid Ed25519 signature of `message` by this key.
    pub fn verify_bytes(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public_key)
            .verify(message, signature)
            .is_ok()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{ALG_ED25519} {}", BASE64.encode(self.public_key))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({}, {self})", self.key_id)
    }
}

impl FromStr for VerifyingKey {
    type Err = KeyError;

    /// Parses `ed25519 <base64>`; surrounding whitespace is ignored.
    fn from_str(text: &str) -> Result<Self, KeyError> {
        let invalid = |reason: String| KeyError::InvalidVerifyingKey { reason };
        let mut words = text.split_whitespace();
        match words.next() {
            Some(ALG_ED25519) => {}
            Some(other) => {
                let shown: String = other.chars().take(32).collect();
                return Err(invalid(format!(
                    "unsupported algorithm {shown:?} (only ed25519)"
                )));
            }
            None => return Err(invalid("empty text".into())),
        }
        let encoded = words
            .next()
            .ok_or_else(|| invalid("the base64 public key is missing".into()))?;
        if words.next().is_some() {
            return Err(invalid("unexpected text after the public key".into()));
        }
        let bytes = BASE64
            .decode(encoded)
            .map_err(|error| invalid(format!("public key is not valid base64 ({error})")))?;
        let public_key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            invalid(format!(
                "public key has {} bytes, an Ed25519 key has 32",
                bytes.len()
            ))
        })?;
        Ok(Self::from_public_key(public_key))
    }
}

impl serde::Serialize for VerifyingKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for VerifyingKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The set of verifying keys an auditor or agent trusts, indexed by key id.
///
/// Text form ([`Keyring::parse`], [`Keyring::to_text`]): one verifying key per line,
/// blank lines and lines starting with `#` ignored, for example
///
/// ```text
/// # wharf core, prod (rotated 2025-01)
/// ed25519 11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyring {
    keys: BTreeMap<String, VerifyingKey>,
}

impl Keyring {
    /// An empty keyring (which trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a trusted key. Adding a key that is already there is a no-op.
    ///
    /// # Errors
    ///
    /// [`KeyringError::KeyIdCollision`] when a different key with the same id is present.
    pub fn insert(&mut self, key: VerifyingKey) -> Result<(), KeyringError> {
        match self.keys.get(&key.key_id) {
            Some(existing) if existing.public_key != key.public_key => {
                Err(KeyringError::KeyIdCollision { key_id: key.key_id })
            }
            Some(_) => Ok(()),
            None => {
                self.keys.insert(key.key_id.clone(), key);
                Ok(())
            }
        }
    }

    /// Removes the key with this id; returns it if it was there.
    pub fn remove(&mut self, key_id: &str) -> Option<VerifyingKey> {
        self.keys.remove(key_id)
    }

    /// The key with this id, if trusted.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// Whether a key with this id is trusted.
    pub fn contains(&self, key_id: &str) -> bool {
        self.keys.contains_key(key_id)
    }

    /// Number of trusted keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the keyring trusts no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted keys, ordered by key id.
    pub fn iter(&self) -> impl Iterator<Item = &VerifyingKey> + '_ {
        self.keys.values()
    }

    /// Parses the text form (see the type's documentation).
    ///
    /// # Errors
    ///
    /// [`KeyringError::Line`] naming the first bad line, or
    /// [`KeyringError::KeyIdCollision`].
    pub fn parse(text: &str) -> Result<Self, KeyringError> {
        let mut keyring = Self::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse().map_err(|source| KeyringError::Line {
                line: index + 1,
                source,
            })?;
            keyring.insert(key)?;
        }
        Ok(keyring)
    }

    /// The text form: one key per line, each preceded by a comment with its key id.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for key in self.keys.values() {
            text.push_str(&format!("# {}\n{key}\n", key.key_id));
        }
        text
    }
}

impl From<VerifyingKey> for Keyring {
    fn from(key: VerifyingKey) -> Self {
        let mut keyring = Self::new();
        keyring.keys.insert(key.key_id.clone(), key);
        keyring
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032 section 7.1, test 1: secret key seed and public key.
    const RFC8032_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const RFC8032_PUBLIC: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC8032_SIGNATURE_OF_EMPTY: &str =
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155\
         5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// PKCS#8 v1 as OpenSSL writes it: a fixed prefix followed by the 32-byte seed.
    fn pkcs8_v1(seed: &[u8]) -> Vec<u8> {
        let mut der = unhex("302e020100300506032b657004220420");
        der.extend_from_slice(seed);
        der
    }

    #[test]
    fn rfc8032_vector_through_pkcs8_v1() {
        let key = SigningKey::from_pkcs8(&pkcs8_v1(&unhex(RFC8032_SEED))).unwrap();
        assert_eq!(key.public_key().to_vec(), unhex(RFC8032_PUBLIC));
        assert_eq!(
            key.sign_bytes(b"").to_vec(),
            unhex(RFC8032_SIGNATURE_OF_EMPTY)
        );
        assert!(key
            .verifying_key()
            .verify_bytes(b"", &unhex(RFC8032_SIGNATURE_OF_EMPTY)));
        assert!(!key
            .verifying_key()
            .verify_bytes(b"x", &unhex(RFC8032_SIGNATURE_OF_EMPTY)));
    }

    #[test]
    fn key_id_is_sha256_prefix_of_public_key() {
        let public: [u8; 32] = unhex(RFC8032_PUBLIC).try_into().unwrap();
        // sha256(d75a98...) computed independently with `openssl dgst -sha256`.
        assert_eq!(key_id_for(&public), "ed25519:21fe31dfa154a261");
        assert!(is_key_id(&key_id_for(&public)));
        for bad in [
            "ed25519:21fe31dfa154a26",
            "ed25519:21fe31dfa154a2611",
            "ed25519:21FE31DFA154A261",
            "ED25519:21fe31dfa154a261",
            "ed25519:21fe31dfa154a26g",
            "",
        ] {
            assert!(!is_key_id(bad), "{bad}");
        }
    }

    #[test]
    fn generate_then_reload_from_pkcs8_keeps_identity() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let again = SigningKey::from_pkcs8(pkcs8.as_bytes()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(key.key_id(), again.key_id());
        let signature = key.sign_bytes(b"hello");
        assert!(again.verifying_key().verify_bytes(b"hello", &signature));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let shown = format!("{key:?} {pkcs8:?}");
        assert!(shown.contains(key.key_id()));
        assert!(shown.contains("redacted"));
        let base64_private = BASE64.encode(pkcs8.as_bytes());
        assert!(!shown.contains(&base64_private));
        assert!(!shown.contains(&format!("{:?}", pkcs8.as_bytes())));
        // Not even the public key, which is not secret, but keeps the output short.
        assert!(!shown.contains(&BASE64.encode(key.public_key())));
    }

    #[test]
    fn garbage_is_not_a_key_and_the_error_shows_no_bytes() {
        for der in [&b""[..], b"\x30\x00", &[0x41; 48]] {
            let error = SigningKey::from_pkcs8(der).unwrap_err();
            assert!(matches!(error, KeyError::InvalidPkcs8 { .. }));
            assert!(!error.to_string().contains("AAAA"));
        }
    }

    #[test]
    fn verifying_key_text_round_trip_and_errors() {
        let (key, _) = SigningKey::generate().unwrap();
        let text = key.verifying_key().to_string();
        assert!(text.starts_with("ed25519 "));
        let parsed: VerifyingKey = text.parse().unwrap();
        assert_eq!(&parsed, key.verifying_key());
        let padded: VerifyingKey = format!("  {text}\n").parse().unwrap();
        assert_eq!(padded, parsed);

        let json = serde_json::to_string(&parsed).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<VerifyingKey>(&json).unwrap(), parsed);

        for bad in [
            "",
            "rsa AAAA",
            "ed25519",
            "ed25519 !!!",
            "ed25519 AAAA",
            &format!("{text} extra"),
        ] {
            let error = bad.parse::<VerifyingKey>().unwrap_err();
            assert!(
                matches!(error, KeyError::InvalidVerifyingKey { .. }),
                "{bad}"
            );
        }
    }

    #[test]
    fn keyring_text_round_trip_comments_and_errors() {
        let (a, _) = SigningKey::generate().unwrap();
        let (b, _) = SigningKey::generate().unwrap();
        let text = format!(
            "# trusted\n\n{}\n   {}  \n",
            a.verifying_key(),
            b.verifying_key()
        );
        let keyring = Keyring::parse(&text).unwrap();
        assert_eq!(keyring.len(), 2);
        assert!(keyring.contains(a.key_id()) && keyring.contains(b.key_id()));
        assert_eq!(Keyring::parse(&keyring.to_text()).unwrap(), keyring);

        let error = Keyring::parse(&format!("{}\nnot a key\n", a.verifying_key())).unwrap_err();
        assert!(
            matches!(error, KeyringError::Line { line: 2, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("line 2"));
    }

    #[test]
    fn keyring_insert_is_idempotent_and_refuses_collisions() {
        let (a, _) = SigningKey::generate().unwrap();
        let mut keyring = Keyring::from(a.verifying_key().clone());
        keyring.insert(a.verifying_key().clone()).unwrap();
        assert_eq!(keyring.len(), 1);
        let forged = VerifyingKey {
            key_id: a.key_id().to_owned(),
            public_key: [7; 32],
        };
        assert!(matches!(
            keyring.insert(forged),
            Err(KeyringError::KeyIdCollision { .. })
        ));
        assert!(keyring.remove(a.key_id()).is_some());
        assert!(keyring.is_empty());
    }
}
