//! Digest-pinned image references: the only form of image Wharf deploys.
//!
//! An image is accepted only as `[registry[:port]/]repository[:tag]@sha256:<64 lowercase hex>`.
//! The tag, if present, is informative only: the agent pulls and creates containers from
//! `repository@sha256:…` (the [`Display`](std::fmt::Display) form of [`ImageRef`]), never from
//! the tag, and checks that Docker's `RepoDigests` holds exactly that string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only digest algorithm Wharf accepts.
pub const DIGEST_ALGORITHM: &str = "sha256";

/// Longest repository name (registry included) that Docker accepts.
pub const MAX_REPOSITORY_LEN: usize = 255;

/// Longest tag that Docker accepts.
pub const MAX_TAG_LEN: usize = 128;

/// A SHA-256 content digest, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Digest([u8; 32]);

/// Why a string is not a `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string is empty.
    #[error("the digest is empty: write it as sha256:<64 lowercase hex>")]
    Empty,
    /// There is no `algorithm:` prefix.
    #[error("digest `{0}` has no algorithm: write it as sha256:<64 lowercase hex>")]
    MissingAlgorithm(String),
    /// The algorithm is not `sha256` (for example `sha512` or `md5`).
    #[error(
        "digest algorithm `{0}` is not supported: only sha256 digests are accepted \
         (the form `docker inspect --format '{{{{index .RepoDigests 0}}}}'` shows)"
    )]
    UnsupportedAlgorithm(String),
    /// The hex part contains a character that is not a hex digit.
    #[error("the sha256 digest contains {0:?}, which is not a hex digit: copy the digest again")]
    NotHex(char),
    /// The hex part contains uppercase letters.
    #[error("the sha256 digest has uppercase hex digits: write it in lowercase")]
    Uppercase,
    /// The hex part is not 64 characters long.
    #[error("the sha256 digest has {0} hex digits instead of 64: copy the full digest")]
    WrongLength(usize),
}

impl Digest {
    /// A digest from its 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Digest(bytes)
    }

    /// The 32 raw bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without the `sha256:` prefix.
    pub fn hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        if s.is_empty() {
            return Err(DigestError::Empty);
        }
        let Some((alg, hex)) = s.split_once(':') else {
            return Err(DigestError::MissingAlgorithm(s.to_owned()));
        };
        if alg != DIGEST_ALGORITHM {
            return Err(DigestError::UnsupportedAlgorithm(alg.to_owned()));
        }
        if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(DigestError::NotHex(c));
        }
        if hex.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(DigestError::Uppercase);
        }
        if hex.len() != 64 {
            return Err(DigestError::WrongLength(hex.len()));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks_exact(2).enumerate() {
            out[i] = (nibble(pair[0]) << 4) | nibble(pair[1]);
        }
        Ok(Digest(out))
    }
}

/// Value of one lowercase hex digit (the caller has checked it is one).
fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DIGEST_ALGORITHM}:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    /// Always the string form `sha256:<hex>`.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A parsed, digest-pinned image reference.
///
/// `Display` gives the canonical pull form `repository@sha256:<hex>` (no tag); use
/// [`ImageRef::full`] for the form with the tag. Serde uses the full form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    repository: String,
    tag: Option<String>,
    digest: Digest,
}

/// Why a string is not a digest-pinned image reference. Each message says what was wrong
/// and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    /// The string is empty.
    #[error("the image reference is empty: write REPOSITORY@sha256:<digest>")]
    Empty,
    /// The string contains whitespace or control characters.
    #[error("image reference {0:?} contains whitespace or control characters: remove them")]
    Whitespace(String),
    /// There is no `@sha256:` digest: a tag or bare name is never deployed.
    #[error(
        "image reference `{0}` is not pinned: append @sha256:<digest> \
         (Wharf deploys by digest only, never by tag)"
    )]
    NotPinned(String),
    /// The part after `@` is not a valid sha256 digest.
    #[error("image reference `{input}` has an invalid digest: {source}")]
    Digest {
        /// The whole reference.
        input: String,
        /// What is wrong with the digest.
        source: DigestError,
    },
    /// Nothing before the `@` (or before the `:tag`).
    #[error("image reference `{0}` has no repository: write REPOSITORY@sha256:<digest>")]
    EmptyRepository(String),
    /// The registry host or port is malformed.
    #[error(
        "image reference `{input}` has an invalid registry `{registry}`: write HOST[:PORT]/ \
         with letters, digits, `-` and `.` in the host and only digits in the port"
    )]
    InvalidRegistry {
        /// The whole reference.
        input: String,
        /// The registry part.
        registry: String,
    },
    /// A repository path component is malformed (uppercase, bad separator, empty...).
    #[error(
        "image reference `{input}` has an invalid repository component `{component}`: \
         use lowercase letters and digits, separated by `.`, `_`, `__` or dashes, \
         and `/` between components"
    )]
    InvalidRepository {
        /// The whole reference.
        input: String,
        /// The offending path component.
        component: String,
    },
    /// The repository name is longer than [`MAX_REPOSITORY_LEN`].
    #[error("image reference `{0}` has a repository name longer than 255 characters: shorten it")]
    RepositoryTooLong(String),
    /// The tag is malformed.
    #[error(
        "image reference `{input}` has an invalid tag `{tag}`: a tag is 1 to 128 letters, \
         digits, `_`, `.` or `-`, not starting with `.` or `-` (or leave the tag out)"
    )]
    InvalidTag {
        /// The whole reference.
        input: String,
        /// The tag.
        tag: String,
    },
}

impl ImageRef {
    /// Parses `[registry[:port]/]repository[:tag]@sha256:<64 lowercase hex>`.
    pub fn parse(input: &str) -> Result<Self, ImageRefError> {
        if input.is_empty() {
            return Err(ImageRefError::Empty);
        }
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ImageRefError::Whitespace(input.to_owned()));
        }
        let Some((name_tag, digest)) = input.split_once('@') else {
            return Err(ImageRefError::NotPinned(input.to_owned()));
        };
        let digest = Digest::parse(digest).map_err(|source| ImageRefError::Digest {
            input: input.to_owned(),
            source,
        })?;
        // The tag follows the last `:` that comes after the last `/` (an earlier `:` belongs
        // to the registry port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if name.is_empty() {
            return Err(ImageRefError::EmptyRepository(input.to_owned()));
        }
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(ImageRefError::InvalidTag {
                    input: input.to_owned(),
                    tag: tag.to_owned(),
                });
            }
        }
        let (registry, path) = split_registry(name);
        if let Some(registry) = registry {
            if !valid_registry(registry) {
                return Err(ImageRefError::InvalidRegistry {
                    input: input.to_owned(),
                    registry: registry.to_owned(),
                });
            }
        }
        for component in path.split('/') {
            if !valid_path_component(component) {
                return Err(ImageRefError::InvalidRepository {
                    input: input.to_owned(),
                    component: component.to_owned(),
                });
            }
        }
        if name.len() > MAX_REPOSITORY_LEN {
            return Err(ImageRefError::RepositoryTooLong(input.to_owned()));
        }
        Ok(ImageRef {
            repository: name.to_owned(),
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// The repository including any registry, as Docker shows it in `RepoDigests`
    /// (for example `127.0.0.1:5000/team/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The registry host (and port) if the reference names one, e.g. `127.0.0.1:5000`.
    pub fn registry(&self) -> Option<&str> {
        split_registry(&self.repository).0
    }

    /// The tag, if one was written (informative only).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The same repository pinned to another digest, without a tag (used by rollback to a
    /// digest).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            repository: self.repository.clone(),
            tag: None,
            digest,
        }
    }

    /// The canonical pull form `repository@sha256:<hex>`, the same as `Display`.
    pub fn pinned(&self) -> String {
        self.to_string()
    }

    /// The full form including the tag: `repository[:tag]@sha256:<hex>`.
    pub fn full(&self) -> String {
        match &self.tag {
            Some(tag) => format!("{}:{tag}@{}", self.repository, self.digest),
            None => self.to_string(),
        }
    }
}

/// Docker's rule: the first `/`-separated component is a registry if it contains `.` or `:`,
/// is `localhost`, or has uppercase letters (which no repository path may have).
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `host[:port]` where host is dot-separated `[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?`
/// components or a bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.is_empty()
            || !v6
                .bytes()
                .all(|c| c.is_ascii_hexdigit() || c == b':' || c == b'.')
        {
            return false;
        }
        match after {
            "" => return true,
            _ => match after.strip_prefix(':') {
                Some(port) => ("v6", Some(port)),
                None => return false,
            },
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|c| c.is_ascii_digit()) {
            return false;
        }
        if port.parse::<u32>().map_or(true, |p| p > 65_535) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of alphanumerics.
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // A separator.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if b.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    !b.is_empty()
        && b.len() <= MAX_TAG_LEN
        && word(b[0])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

impl fmt::Display for ImageRef {
    /// `repository@sha256:<hex>`: the form the agent pulls and creates containers from.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl Serialize for ImageRef {
    /// The full form, tag included.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full())
    }
}

impl<'de> Deserialize<'de> for ImageRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ImageRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn digest_round_trip() {
        let s = format!("sha256:{HEX}");
        let d = Digest::parse(&s).unwrap();
        assert_eq!(d.to_string(), s);
        assert_eq!(d.hex(), HEX);
        assert_eq!(d.as_bytes()[0], 0x01);
        assert_eq!(Digest::from_bytes(*d.as_bytes()), d);
        assert_eq!(format!("{d:?}"), format!("Digest({s})"));
    }

    #[test]
    fn digest_errors() {
        assert_eq!(Digest::parse(""), Err(DigestError::Empty));
        assert_eq!(
            Digest::parse(HEX),
            Err(DigestError::MissingAlgorithm(HEX.into()))
        );
        assert_eq!(
            Digest::parse(&format!("sha512:{HEX}{HEX}")),
            Err(DigestError::UnsupportedAlgorithm("sha512".into()))
        );
        assert_eq!(
            Digest::parse(&format!("SHA256:{HEX}")),
            Err(DigestError::UnsupportedAlgorithm("SHA256".into()))
        );
        assert_eq!(
            Digest::parse("sha256:abc"),
            Err(DigestError::WrongLength(3))
        );
        assert_eq!(
            Digest::parse(&format!("sha256:{}", HEX.to_uppercase())),
            Err(DigestError::Uppercase)
        );
        assert_eq!(
            Digest::parse(&format!("sha256:{}g", &HEX[1..])),
            Err(DigestError::NotHex('g'))
        );
        assert_eq!(
            Digest::parse(&format!("sha256:{HEX}:")),
            Err(DigestError::NotHex(':'))
        );
    }

    #[test]
    fn serde_validates() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"sha256:{HEX}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        assert!(serde_json::from_str::<Digest>("\"sha256:00\"").is_err());
        let bytes = postcard::to_allocvec(&d).unwrap();
        assert_eq!(postcard::from_bytes::<Digest>(&bytes).unwrap(), d);

        let r = ImageRef::parse(&format!("reg:5000/app:1.0@sha256:{HEX}")).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, format!("\"reg:5000/app:1.0@sha256:{HEX}\""));
        assert_eq!(serde_json::from_str::<ImageRef>(&json).unwrap(), r);
        assert!(serde_json::from_str::<ImageRef>("\"app:1.0\"").is_err());
    }

    #[test]
    fn accessors() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/app:v2@sha256:{HEX}")).unwrap();
        assert_eq!(r.repository(), "127.0.0.1:5000/team/app");
        assert_eq!(r.registry(), Some("127.0.0.1:5000"));
        assert_eq!(r.tag(), Some("v2"));
        assert_eq!(r.digest().hex(), HEX);
        assert_eq!(r.pinned(), format!("127.0.0.1:5000/team/app@sha256:{HEX}"));
        assert_eq!(r.full(), format!("127.0.0.1:5000/team/app:v2@sha256:{HEX}"));
        let other = Digest::from_bytes([0xab; 32]);
        let r2 = r.with_digest(other);
        assert_eq!(r2.to_string(), format!("127.0.0.1:5000/team/app@{other}"));
        assert_eq!(r2.tag(), None);
        let plain = ImageRef::parse(&format!("app@sha256:{HEX}")).unwrap();
        assert_eq!(plain.registry(), None);
        assert_eq!(plain.full(), plain.to_string());
    }
}
