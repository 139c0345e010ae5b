//! A string holding secret material (a private key PEM, a token's plaintext).

use std::fmt;

use zeroize::Zeroizing;

/// A string that holds a secret: a private key in PEM form or a token's plaintext.
///
/// Its memory is wiped on drop, and its `Debug` output never shows the content. Read it
/// with [`SecretString::expose`] only where the secret is actually needed (writing the key
/// file, printing a token once).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    /// Wraps a secret string.
    pub fn new(secret: String) -> Self {
        SecretString(Zeroizing::new(secret))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret as bytes, e.g. for [`write_secret_file`](super::write_secret_file).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for SecretString {
    fn from(secret: String) -> Self {
        SecretString::new(secret)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString([redacted])")
    }
}
