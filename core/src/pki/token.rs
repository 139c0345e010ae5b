//! One-time enrollment tokens and API bearer tokens: generated at random, shown once, stored
//! as a SHA-256 hash, checked in constant time.
//!
//! A token is `<prefix><43 characters of base64url>` carrying 256 random bits, e.g.
//! `wharf-enroll-3q2+...`. Only [`TokenHash`] is stored. Because the plaintext has 256 bits
//! of entropy, an unsalted SHA-256 is enough, and a store may look tokens up by hash: the
//! timing of that lookup reveals nothing usable about the plaintext.

use std::fmt;
use std::time::SystemTime;

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq as _;

use super::error::{PkiError, Result};
use super::secret::SecretString;

/// Number of random bytes in a token.
pub const TOKEN_RANDOM_BYTES: usize = 32;

/// SHA-256 of a token's full plaintext (prefix included). Shown as 64 lowercase hex
/// digits; serializes as that string.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of a presented token.
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        TokenHash(out)
    }

    /// Whether `token` hashes to this value; the hashes are compared in constant time.
    pub fn matches(&self, token: &str) -> bool {
        bool::from(Self::of(token).0.ct_eq(&self.0))
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses the lowercase or uppercase hex form.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }
}

impl fmt::Display for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({})", self.to_hex())
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        TokenHash::from_hex(&s)
            .ok_or_else(|| serde::de::Error::custom("a token hash is 64 hex digits"))
    }
}

fn generate_with_prefix(prefix: &str) -> Result<(SecretString, TokenHash)> {
    let mut bytes = zeroize::Zeroizing::new([0u8; TOKEN_RANDOM_BYTES]);
    ring::rand::SystemRandom::new()
        .fill(bytes.as_mut())
        .map_err(|_| PkiError::Random)?;
    let mut plaintext = String::with_capacity(prefix.len() + 43);
    plaintext.push_str(prefix);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes.as_ref(), &mut plaintext);
    let hash = TokenHash::of(&plaintext);
    Ok((SecretString::new(plaintext), hash))
}

fn check(
    kind: &'static str,
    presented: &str,
    stored: &TokenHash,
    expires_at: Option<SystemTime>,
    now: SystemTime,
) -> Result<()> {
    // Hash and compare first, whatever the result of the expiry check, so timing does not
    // tell an expired token from a wrong one.
    let matches = stored.matches(presented);
    let expired = expires_at.is_some_and(|at| now >= at);
    if !matches {
        return Err(PkiError::TokenInvalid { kind });
    }
    if expired {
        return Err(PkiError::TokenExpired { kind });
    }
    Ok(())
}

macro_rules! token_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name;

        impl $name {
            /// The prefix of every token of this kind.
            pub const PREFIX: &'static str = $prefix;

            /// A new random token: its plaintext (show it once, never store it) and the hash
            /// to store.
            pub fn generate() -> Result<(SecretString, TokenHash)> {
                generate_with_prefix(Self::PREFIX)
            }

            /// The hash of a presented token (to look it up in a store).
            pub fn hash(presented: &str) -> TokenHash {
                TokenHash::of(presented)
            }

            /// Whether a presented token is the stored one; compares hashes in constant time.
            pub fn verify(presented: &str, stored: &TokenHash) -> bool {
                stored.matches(presented)
            }

            /// Verifies a presented token against the stored hash and its expiry:
            /// [`PkiError::TokenInvalid`] if it does not match, [`PkiError::TokenExpired`]
            /// if `now` is at or past `expires_at` (`None`: no expiry).
            pub fn check(
                presented: &str,
                stored: &TokenHash,
                expires_at: Option<SystemTime>,
                now: SystemTime,
            ) -> Result<()> {
                check($kind, presented, stored, expires_at, now)
            }

            /// Whether a string has this kind's prefix (a cheap pre-filter, e.g. to tell
            /// the token kinds apart; not a verification).
            pub fn has_prefix(presented: &str) -> bool {
                presented.starts_with(Self::PREFIX)
            }
        }
    };
}

token_type!(
    /// One-time agent enrollment tokens (`wharf agent token create`): `wharf-enroll-...`.
    EnrollToken,
    "wharf-enroll-",
    "enrollment"
);

token_type!(
    /// Operator API bearer tokens (`wharf token create`, the admin token): `wharf-api-...`.
    ApiToken,
    "wharf-api-",
    "API"
);
