//! Digest-pinned image references (`repo@sha256:<64 hex>`).

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};
use wharf_protocol::ImageRef;

/// An image reference pinned by digest: `registry-host[:port]/path@sha256:<hex>`,
/// what Wharf deploys (design.md §4: never a tag). Every `PinnedRef` also
/// parses as a [`wharf_protocol::ImageRef`] with the same text
/// ([`PinnedRef::image_ref`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PinnedRef {
    repository: String,
    digest: String,
}

impl PinnedRef {
    /// Builds a reference from a repository (`127.0.0.1:5000/wharf/testapp`) and
    /// a digest (`sha256:` + 64 lowercase hex), checking both.
    pub fn new(repository: impl Into<String>, digest: impl Into<String>) -> Result<Self> {
        let repository = repository.into();
        let digest = digest.into();
        check_repository(&repository)
            .with_context(|| format!("invalid image repository {repository:?}"))?;
        check_digest(&digest).with_context(|| format!("invalid image digest {digest:?}"))?;
        let pinned = PinnedRef { repository, digest };
        // The rest of Wharf reads references with wharf-protocol: it must agree.
        let text = pinned.to_string();
        let parsed =
            ImageRef::parse(&text).with_context(|| format!("wharf-protocol refuses {text}"))?;
        ensure!(
            parsed.to_string() == text && parsed.repository() == pinned.repository,
            "wharf-protocol reads {text} as {parsed}"
        );
        Ok(pinned)
    }

    /// Parses `repository@sha256:<hex>`.
    pub fn parse(text: &str) -> Result<Self> {
        let (repository, digest) = text
            .rsplit_once('@')
            .with_context(|| format!("{text:?} is not pinned by digest (no '@')"))?;
        PinnedRef::new(repository, digest)
    }

    /// The repository with its registry host: `127.0.0.1:5000/wharf/testapp`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The digest: `sha256:<64 hex>`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The registry host (`127.0.0.1:5000`), when the repository names one.
    pub fn registry_host(&self) -> Option<&str> {
        let (first, _) = self.repository.split_once('/')?;
        is_host(first).then_some(first)
    }

    /// The same reference as the [`ImageRef`] Wharf's tasks carry.
    pub fn image_ref(&self) -> ImageRef {
        ImageRef::parse(&self.to_string()).expect("checked by PinnedRef::new")
    }

    /// The repository path inside its registry (`wharf/testapp`).
    pub fn path(&self) -> &str {
        match self.registry_host() {
            Some(host) => &self.repository[host.len() + 1..],
            None => &self.repository,
        }
    }
}

impl fmt::Display for PinnedRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.repository, self.digest)
    }
}

impl FromStr for PinnedRef {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        PinnedRef::parse(s)
    }
}

impl From<PinnedRef> for String {
    fn from(r: PinnedRef) -> String {
        r.to_string()
    }
}

/// `sha256:` followed by 64 lowercase hex digits.
pub(crate) fn check_digest(digest: &str) -> Result<()> {
    let hex = digest
        .strip_prefix("sha256:")
        .context("the digest does not start with sha256:")?;
    ensure!(
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
        "a sha256 digest has 64 lowercase hex digits"
    );
    Ok(())
}

/// A registry host: `localhost`, or a name/IP with a dot, or anything with a
/// port (the distribution reference grammar's rule for the first component).
fn is_host(component: &str) -> bool {
    component == "localhost" || component.contains('.') || component.contains(':')
}

/// Checks a repository name against Docker's grammar: an optional
/// `host[:port]/`, then `/`-separated path components of lowercase
/// alphanumerics joined by `.`, `_`, `__` or `-`s.
pub fn check_repository(repository: &str) -> Result<()> {
    ensure!(!repository.is_empty(), "empty repository");
    ensure!(
        repository.len() <= 255,
        "repository longer than 255 characters"
    );
    let mut components: Vec<&str> = repository.split('/').collect();
    if components.len() > 1 && is_host(components[0]) {
        let host = components.remove(0);
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        ensure!(
            !name.is_empty()
                && name
                    .split('.')
                    .all(|l| !l.is_empty()
                        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')),
            "bad registry host {host:?}"
        );
        if let Some(port) = port {
            ensure!(port.parse::<u16>().is_ok(), "bad registry port {port:?}");
        }
    }
    for component in components {
        check_component(component).with_context(|| format!("bad path component {component:?}"))?;
    }
    Ok(())
}

fn check_component(component: &str) -> Result<()> {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    ensure!(!bytes.is_empty(), "empty");
    ensure!(
        alnum(bytes[0]) && alnum(bytes[bytes.len() - 1]),
        "must start and end with a lowercase letter or digit"
    );
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__` or one or more `-`.
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            bail!("bad separator {sep:?}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_and_prints() {
        let text = format!("127.0.0.1:5000/wharf/testapp@sha256:{HEX}");
        let r = PinnedRef::parse(&text).unwrap();
        assert_eq!(r.to_string(), text);
        assert_eq!(r.registry_host(), Some("127.0.0.1:5000"));
        assert_eq!(r.path(), "wharf/testapp");
        assert_eq!(r.digest(), format!("sha256:{HEX}"));
        let image_ref = r.image_ref();
        assert_eq!(image_ref.registry(), Some("127.0.0.1:5000"));
        assert_eq!(image_ref.pinned(), text);
        let plain = PinnedRef::parse(&format!("wharf/testapp@sha256:{HEX}")).unwrap();
        assert_eq!(
            (plain.registry_host(), plain.path()),
            (None, "wharf/testapp")
        );
    }

    #[test]
    fn rejects_what_is_not_pinned() {
        for bad in [
            "127.0.0.1:5000/wharf/testapp:v1".to_string(),
            format!("127.0.0.1:5000/wharf/testapp@sha256:{}", &HEX[1..]),
            format!("127.0.0.1:5000/wharf/testapp@sha256:{}", HEX.to_uppercase()),
            format!("127.0.0.1:5000/wharf/testapp@sha512:{HEX}"),
            format!("127.0.0.1:5000/Wharf/testapp@sha256:{HEX}"),
            format!("127.0.0.1:99999/wharf/testapp@sha256:{HEX}"),
            format!("127.0.0.1:5000/wharf//testapp@sha256:{HEX}"),
            format!("127.0.0.1:5000/wharf/-testapp@sha256:{HEX}"),
            format!("127.0.0.1:5000/wharf/test..app@sha256:{HEX}"),
            format!("@sha256:{HEX}"),
        ] {
            assert!(PinnedRef::parse(&bad).is_err(), "{bad}");
        }
        assert!(PinnedRef::parse(&format!("a/b__c-d--e.f@sha256:{HEX}")).is_ok());
    }
}
