//! Credential sealing (design.md §3, Credentials).
//!
//! The core seals a task's registry credentials to the one agent that runs it:
//! an ephemeral X25519 key agreement with the agent's static public key (recorded
//! at enrollment), HKDF-SHA256 over the shared secret, and AES-256-GCM with the
//! task id and agent id as associated data. A sealed blob therefore opens only
//! with that agent's private key, only for that task and that agent id; moved to
//! another task or agent it fails to open.
//!
//! x25519-dalek does the key agreement (ring cannot hold a static X25519 private
//! key); HKDF and AES-GCM stay on ring. Plaintext is returned in a [`Zeroizing`]
//! buffer so it is wiped when dropped.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::SealedCredentials;

/// HKDF `info` string binding derived keys to this protocol and purpose.
const HKDF_INFO: &[u8] = b"wharf/1 sealed credentials";

/// Largest plaintext [`seal`] accepts: credentials are small, and a bound keeps
/// a hostile or mistaken caller from sealing megabytes into a task.
pub const MAX_SEALED_PLAINTEXT: usize = 64 * 1024;

/// Errors of sealing and opening credentials.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The agent's public key is a low-order point: the key agreement would give
    /// an all-zero secret. The agent must enroll again with a fresh key.
    #[error("the agent's X25519 public key is invalid (low-order point); re-enroll the agent")]
    WeakKey,
    /// The plaintext is larger than [`MAX_SEALED_PLAINTEXT`].
    #[error("credentials of {len} bytes exceed the {max}-byte limit")]
    TooLarge {
        /// Length of the plaintext given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The sealed blob did not open: wrong agent key, another task or agent id,
    /// or a modified ciphertext. Nothing about the plaintext is revealed.
    #[error("sealed credentials did not open: they were sealed for another agent or task, or were modified")]
    OpenFailed,
    /// The system random generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// An agent's X25519 key pair for credential sealing. The private half never
/// leaves the agent; [`AgentSealKey::public`] is sent to the core at enrollment.
pub struct AgentSealKey {
    secret: StaticSecret,
}

impl std::fmt::Debug for AgentSealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSealKey")
            .field("public", &hex32(&self.public()))
            .finish_non_exhaustive()
    }
}

impl AgentSealKey {
    /// Generates a new key pair from the system random generator.
    pub fn generate() -> Result<Self, SealError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| SealError::Random)?;
        Ok(Self::from_bytes(*bytes))
    }

    /// Rebuilds the key pair from its 32 private bytes (as stored 0600 by the agent).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The private bytes, for the agent's 0600 key file. Wiped when dropped.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }

    /// The public key the core seals to.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// Opens credentials sealed by [`seal`] for this agent and task.
    pub fn open(
        &self,
        sealed: &SealedCredentials,
        task_id: Uuid,
        agent_id: &str,
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let shared = self
            .secret
            .diffie_hellman(&PublicKey::from(sealed.ephemeral_public));
        if !shared.was_contributory() {
            return Err(SealError::OpenFailed);
        }
        let key = derive_key(shared.as_bytes(), &sealed.ephemeral_public, &self.public())?;
        let mut buf = Zeroizing::new(sealed.ciphertext.clone());
        let plain_len = key
            .open_in_place(
                Nonce::assume_unique_for_key(sealed.nonce),
                Aad::from(aad(task_id, agent_id)),
                buf.as_mut_slice(),
            )
            .map_err(|_| SealError::OpenFailed)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }
}

/// Seals `plaintext` to the agent whose X25519 public key is `agent_public`,
/// bound to `task_id` and `agent_id` (the associated data).
pub fn seal(
    plaintext: &[u8],
    agent_public: &[u8; 32],
    task_id: Uuid,
    agent_id: &str,
) -> Result<SealedCredentials, SealError> {
    if plaintext.len() > MAX_SEALED_PLAINTEXT {
        return Err(SealError::TooLarge {
            len: plaintext.len(),
            max: MAX_SEALED_PLAINTEXT,
        });
    }
    let rng = SystemRandom::new();
    // A fresh secret per seal, used once: the ephemeral half of the agreement.
    let mut ephemeral_bytes = Zeroizing::new([0u8; 32]);
    rng.fill(ephemeral_bytes.as_mut())
        .map_err(|_| SealError::Random)?;
    let ephemeral = StaticSecret::from(*ephemeral_bytes);
    let ephemeral_public = PublicKey::from(&ephemeral).to_bytes();
    let shared = ephemeral.diffie_hellman(&PublicKey::from(*agent_public));
    if !shared.was_contributory() {
        return Err(SealError::WeakKey);
    }
    let key = derive_key(shared.as_bytes(), &ephemeral_public, agent_public)?;
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut nonce).map_err(|_| SealError::Random)?;
    let mut ciphertext = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad(task_id, agent_id)),
        &mut ciphertext,
    )
    .map_err(|_| SealError::Random)?;
    Ok(SealedCredentials {
        ephemeral_public,
        nonce,
        ciphertext,
    })
}

/// Registry credentials as they travel inside a sealed blob.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    /// Registry host (and port), e.g. `registry.example.com:5000`.
    pub registry: String,
    /// User name.
    pub username: String,
    /// Password or token. Never logged: `Debug` redacts it.
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("registry", &self.registry)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Drop for RegistryCredentials {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.password);
    }
}

impl RegistryCredentials {
    /// Seals these credentials for one agent and task (postcard-encoded inside).
    pub fn seal(
        &self,
        agent_public: &[u8; 32],
        task_id: Uuid,
        agent_id: &str,
    ) -> Result<SealedCredentials, SealError> {
        let plain = Zeroizing::new(postcard::to_stdvec(self).map_err(|_| SealError::TooLarge {
            len: usize::MAX,
            max: MAX_SEALED_PLAINTEXT,
        })?);
        seal(&plain, agent_public, task_id, agent_id)
    }

    /// Opens credentials sealed with [`RegistryCredentials::seal`].
    pub fn open(
        key: &AgentSealKey,
        sealed: &SealedCredentials,
        task_id: Uuid,
        agent_id: &str,
    ) -> Result<Self, SealError> {
        let plain = key.open(sealed, task_id, agent_id)?;
        postcard::from_bytes(&plain).map_err(|_| SealError::OpenFailed)
    }
}

fn aad(task_id: Uuid, agent_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + 4 + agent_id.len());
    aad.extend_from_slice(task_id.as_bytes());
    aad.extend_from_slice(&(agent_id.len() as u32).to_be_bytes());
    aad.extend_from_slice(agent_id.as_bytes());
    aad
}

fn derive_key(
    shared: &[u8; 32],
    ephemeral_public: &[u8; 32],
    agent_public: &[u8; 32],
) -> Result<LessSafeKey, SealError> {
    let mut salt_bytes = [0u8; 64];
    salt_bytes[..32].copy_from_slice(ephemeral_public);
    salt_bytes[32..].copy_from_slice(agent_public);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt_bytes).extract(shared);
    let info = [HKDF_INFO];
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .map_err(|_| SealError::Random)?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn hex32(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> RegistryCredentials {
        RegistryCredentials {
            registry: "127.0.0.1:5000".into(),
            username: "alice".into(),
            password: "s3cret-password".into(),
        }
    }

    #[test]
    fn seal_open_round_trip() {
        let agent = AgentSealKey::generate().unwrap();
        let task = Uuid::new_v4();
        let sealed = creds().seal(&agent.public(), task, "agent-1").unwrap();
        assert!(!sealed
            .ciphertext
            .windows(b"s3cret".len())
            .any(|w| w == b"s3cret"));
        let opened = RegistryCredentials::open(&agent, &sealed, task, "agent-1").unwrap();
        assert_eq!(opened, creds());
    }

    #[test]
    fn other_task_agent_key_or_modified_fails() {
        let agent = AgentSealKey::generate().unwrap();
        let other = AgentSealKey::generate().unwrap();
        let task = Uuid::new_v4();
        let sealed = creds().seal(&agent.public(), task, "agent-1").unwrap();
        let fail = Err(SealError::OpenFailed);
        assert_eq!(
            RegistryCredentials::open(&agent, &sealed, Uuid::new_v4(), "agent-1"),
            fail
        );
        assert_eq!(
            RegistryCredentials::open(&agent, &sealed, task, "agent-2"),
            fail
        );
        assert_eq!(
            RegistryCredentials::open(&other, &sealed, task, "agent-1"),
            fail
        );
        for i in 0..sealed.ciphertext.len() {
            let mut bad = sealed.clone();
            bad.ciphertext[i] ^= 1;
            assert_eq!(
                RegistryCredentials::open(&agent, &bad, task, "agent-1"),
                fail
            );
        }
        let mut bad = sealed.clone();
        bad.nonce[0] ^= 1;
        assert_eq!(
            RegistryCredentials::open(&agent, &bad, task, "agent-1"),
            fail
        );
        let mut bad = sealed;
        bad.ciphertext.truncate(3);
        assert_eq!(
            RegistryCredentials::open(&agent, &bad, task, "agent-1"),
            fail
        );
    }

    #[test]
    fn low_order_key_refused_and_debug_redacts() {
        assert_eq!(
            seal(b"x", &[0u8; 32], Uuid::new_v4(), "a"),
            Err(SealError::WeakKey)
        );
        let text = format!("{:?} {:?}", creds(), AgentSealKey::generate().unwrap());
        assert!(!text.contains("s3cret"), "{text}");
        assert!(seal(
            &vec![0; MAX_SEALED_PLAINTEXT + 1],
            &[9; 32],
            Uuid::new_v4(),
            "a"
        )
        .is_err());
    }

    #[test]
    fn key_bytes_round_trip() {
        let agent = AgentSealKey::generate().unwrap();
        let again = AgentSealKey::from_bytes(*agent.to_bytes());
        assert_eq!(agent.public(), again.public());
    }
}
