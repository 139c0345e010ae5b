//! The QUIC endpoint's persistent secret: the stateless-reset key and the key of the
//! connection-id generator, kept in the data dir so that they survive a restart.
//!
//! Why: when core is killed, its agents' connections live on in the agents until they
//! hear something. A restarted core receives their next packets (keep-alives,
//! retransmissions) for connections it does not know and answers each with a QUIC
//! stateless reset (RFC 9000 §10.3). An agent accepts a reset only if it carries the
//! token the old core announced for that connection id, `HMAC(reset key, cid)`; and
//! quinn only sends one for a connection id its generator recognises as its own
//! (`HashedConnectionIdGenerator::validate`, keyed). With both keys random per process
//! (quinn's default) a restarted core drops those packets, and agents notice the loss
//! only by their idle timeout (15 s). With the keys kept here the reset ends an old
//! connection as soon as its agent sends a packet, and the agent reconnects at once.
//!
//! The file `quic-reset.key` (mode 0600) holds 32 random bytes in hex; both keys are
//! derived from it with HMAC-SHA256 under distinct labels. Whoever holds it can forge
//! resets of core's connections (a denial of service, nothing more): it is a secret like
//! the other key files.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::pki::{read_secret_file, write_secret_file};

/// Label of the stateless-reset key derivation.
const RESET_LABEL: &[u8] = b"wharf quic stateless-reset key v1";
/// Label of the connection-id generator key derivation.
const CID_LABEL: &[u8] = b"wharf quic connection-id key v1";

/// Least time between two stateless resets core sends: none. quinn's default, 20 ms, is
/// checked against the receive time of a datagram, which is the same for every datagram
/// of one receive batch (`recvmmsg`/GRO): one reset per batch at most, so after a
/// restart most of 10,000 agents' packets went unanswered (measured: 3,053 resets sent,
/// 11,861 suppressed, even with a 100 µs interval) and those agents waited for their
/// idle timeout. The limit guards against garbage floods and reset loops; here resets
/// are only sent for connection ids core's own keyed generator made (forging one takes
/// 2^40 tries), and a reset is always smaller than the packet that caused it, so it can
/// neither amplify nor loop.
pub const MIN_RESET_INTERVAL: Duration = Duration::ZERO;

/// The endpoint's persistent secret (see the [module docs](self)).
pub struct EndpointKey {
    secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for EndpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointKey([redacted])")
    }
}

impl EndpointKey {
    /// A new random key.
    ///
    /// # Errors
    ///
    /// The system's random source failed.
    pub fn generate() -> Result<EndpointKey> {
        let mut secret = Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        Ok(EndpointKey { secret })
    }

    /// Reads the key from `path`, or creates it there (mode 0600) if the file does not
    /// exist.
    ///
    /// # Errors
    ///
    /// The file cannot be read or written, is readable by others, or does not hold 64
    /// hex digits.
    pub fn load_or_create(path: &Path) -> Result<EndpointKey> {
        if path.exists() {
            let text = read_secret_file(path)?;
            let mut secret = Zeroizing::new([0u8; 32]);
            if hex::decode_to_slice(text.expose().trim(), secret.as_mut()).is_err() {
                bail!(
                    "{} does not hold a 256-bit key in hex; delete it and restart core (a new \
                     key is created; agents of the previous process then reconnect after their \
                     idle timeout)",
                    path.display()
                );
            }
            return Ok(EndpointKey { secret });
        }
        let key = EndpointKey::generate()?;
        let text = Zeroizing::new(hex::encode(key.secret.as_ref()));
        write_secret_file(path, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(key)
    }

    fn derive(&self, label: &[u8]) -> hmac::Tag {
        hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, self.secret.as_ref()),
            label,
        )
    }

    /// The HMAC key quinn signs stateless-reset tokens with.
    pub fn reset_key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, self.derive(RESET_LABEL).as_ref())
    }

    /// The key of the connection-id generator.
    pub fn cid_key(&self) -> u64 {
        let tag = self.derive(CID_LABEL);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&tag.as_ref()[..8]);
        u64::from_le_bytes(bytes)
    }

    /// A `quinn::EndpointConfig` with this key's reset key and connection-id generator,
    /// and [`MIN_RESET_INTERVAL`].
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(Arc::new(self.reset_key()));
        let cid_key = self.cid_key();
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config.min_reset_interval(MIN_RESET_INTERVAL);
        config
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use quinn::crypto::HmacKey;
    use quinn::ConnectionIdGenerator;

    use super::*;

    #[test]
    fn the_key_file_is_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("quic-reset.key");
        let first = EndpointKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = EndpointKey::load_or_create(&path).unwrap();
        assert_eq!(first.cid_key(), again.cid_key());
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        first.reset_key().sign(b"cid", &mut a);
        again.reset_key().sign(b"cid", &mut b);
        assert_eq!(a, b, "the same reset token after a reload");
        // Another key gives other tokens and other connection ids.
        let other = EndpointKey::generate().unwrap();
        other.reset_key().sign(b"cid", &mut b);
        assert_ne!(a, b);
        assert_ne!(first.cid_key(), other.cid_key());
        assert!(!format!("{first:?}").contains(&hex::encode(first.secret.as_ref())));
    }

    #[test]
    fn connection_ids_validate_across_a_reload() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("quic-reset.key");
        let key = EndpointKey::load_or_create(&path).unwrap();
        let mut gen = quinn_proto::HashedConnectionIdGenerator::from_key(key.cid_key());
        let cid = gen.generate_cid();
        let reloaded = EndpointKey::load_or_create(&path).unwrap();
        let check = quinn_proto::HashedConnectionIdGenerator::from_key(reloaded.cid_key());
        assert!(check.validate(&cid).is_ok());
        let stranger = quinn_proto::HashedConnectionIdGenerator::from_key(
            EndpointKey::generate().unwrap().cid_key(),
        );
        assert!(stranger.validate(&cid).is_err());
    }

    #[test]
    fn a_bad_or_public_key_file_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("quic-reset.key");
        write_secret_file(&path, b"not hex").unwrap();
        let error = format!("{:#}", EndpointKey::load_or_create(&path).unwrap_err());
        assert!(error.contains("256-bit key in hex"), "{error}");
        std::fs::write(&path, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(EndpointKey::load_or_create(&path).is_err());
    }
}
