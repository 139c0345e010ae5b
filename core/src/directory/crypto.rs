//! The master key and encryption at rest (AES-256-GCM, ring).

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom as _, SystemRandom};
use zeroize::Zeroizing;

use super::error::DirectoryError;
use super::model::parse_key32;
use crate::pki::SecretString;

/// Core's 256-bit master key: encrypts registry credentials at rest (design.md §3).
///
/// Wiped on drop; its `Debug` output never shows it.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

impl MasterKey {
    /// Wraps 32 key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MasterKey(Zeroizing::new(bytes))
    }

    /// A new random key from the system generator.
    pub fn generate() -> Result<Self, DirectoryError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| DirectoryError::Crypto {
                what: "generate the master key",
            })?;
        Ok(MasterKey(bytes))
    }

    /// Parses a key written as 64 hex digits or as base64 (e.g. `WHARF_MASTER_KEY`, or
    /// the content of a key file; surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, DirectoryError> {
        parse_key32(text).map(Self::from_bytes).ok_or_else(|| {
            DirectoryError::invalid(
                "master key",
                "expected 32 bytes written as 64 hex digits or as base64 (for instance \
                     the output of `openssl rand -hex 32`)",
            )
        })
    }

    /// The key as 64 lowercase hex digits, for a 0600 key file.
    pub fn to_hex(&self) -> SecretString {
        SecretString::new(hex::encode(self.0.as_ref()))
    }

    fn aead_key(&self) -> LessSafeKey {
        let unbound = UnboundKey::new(&AES_256_GCM, self.0.as_ref())
            .expect("a 32-byte key is valid for AES-256-GCM");
        LessSafeKey::new(unbound)
    }

    /// Encrypts `plaintext` with a fresh random nonce; returns the nonce and the
    /// ciphertext with its tag.
    pub(crate) fn encrypt(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), DirectoryError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| DirectoryError::Crypto {
                what: "draw a nonce",
            })?;
        // Zeroizing: if sealing failed, the buffer would still hold the plaintext.
        let mut buf = Zeroizing::new(plaintext.to_vec());
        self.aead_key()
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut *buf,
            )
            .map_err(|_| DirectoryError::Crypto {
                what: "encrypt with the master key",
            })?;
        Ok((nonce, std::mem::take(&mut *buf)))
    }

    /// Decrypts what [`encrypt`](Self::encrypt) gave; `None` if the key, the AAD, the
    /// nonce or the ciphertext is not the original.
    pub(crate) fn decrypt(
        &self,
        aad: &[u8],
        nonce: [u8; NONCE_LEN],
        ciphertext: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        let mut buf = Zeroizing::new(ciphertext.to_vec());
        let len = self
            .aead_key()
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                buf.as_mut_slice(),
            )
            .ok()?
            .len();
        buf.truncate(len);
        Some(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let key = MasterKey::generate().unwrap();
        let (nonce, ct) = key.encrypt(b"host", b"plain text").unwrap();
        assert_eq!(
            key.decrypt(b"host", nonce, &ct).unwrap().as_slice(),
            b"plain text"
        );
        assert!(key.decrypt(b"other", nonce, &ct).is_none());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(key.decrypt(b"host", nonce, &bad).is_none());
        let other = MasterKey::generate().unwrap();
        assert!(other.decrypt(b"host", nonce, &ct).is_none());
    }

    #[test]
    fn parse_and_debug() {
        let key = MasterKey::parse(&"ab".repeat(32)).unwrap();
        assert_eq!(key.to_hex().expose(), "ab".repeat(32));
        assert_eq!(format!("{key:?}"), "MasterKey([redacted])");
        assert!(MasterKey::parse("short").is_err());
    }
}
