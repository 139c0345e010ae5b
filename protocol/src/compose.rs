//! Compose lock files (design §4, Compose deploy): a Compose file whose every service
//! image is pinned `repo@sha256:<hex>`.
//!
//! One parser shared by the CLI (which derives the expected digests from the lock and
//! refuses an unpinned lock before submitting), core (which signs the sticker's
//! components) and the Compose agent (which refuses, before anything changes, a service
//! that is unpinned, differs from the expected digest, or has a `build:` section).
//!
//! ```
//! use wharf_protocol::compose::ComposeLock;
//!
//! let lock = ComposeLock::parse(
//!     "compose.lock.yml",
//!     "services:\n  web:\n    image: registry.local/web@sha256:4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce\n",
//! )?;
//! let pinned = lock.pinned()?;
//! assert_eq!(pinned["web"].repository(), "registry.local/web");
//! assert!(ComposeLock::parse("x.yml", "services:\n  web:\n    image: web:latest\n")?
//!     .pinned()
//!     .is_err());
//! # Ok::<(), wharf_protocol::compose::LockError>(())
//! ```

use std::collections::BTreeMap;

use serde_norway::Value;

use crate::image::{Digest, ImageRef};

/// Largest Compose file accepted, in bytes (1 MiB).
pub const MAX_COMPOSE_FILE_BYTES: usize = 1 << 20;

/// Most services a lock may hold.
pub const MAX_SERVICES: usize = 256;

/// Service keys a lock may not use: they build or inherit instead of pinning.
const FORBIDDEN_KEYS: [(&str, &str); 2] = [
    (
        "build",
        "a lock deploys pinned images only: remove `build:` and set `image: REPO@sha256:<digest>` \
         (build and push the image in CI first)",
    ),
    (
        "extends",
        "`extends:` can pull settings (and a `build:`) from files Wharf does not check: inline \
         the service",
    ),
];

/// Why a Compose lock was refused. Each error names the file and, where it applies, the
/// service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// The file is over [`MAX_COMPOSE_FILE_BYTES`].
    #[error(
        "{file}: {len} bytes is over the {MAX_COMPOSE_FILE_BYTES}-byte limit for a Compose file"
    )]
    TooLarge {
        /// The file.
        file: String,
        /// Its length.
        len: usize,
    },
    /// The text is not YAML, or not the shape of a Compose file.
    #[error("{file} is not a valid Compose file: {reason}")]
    Invalid {
        /// The file.
        file: String,
        /// What is wrong and where.
        reason: String,
    },
    /// A service uses a key a lock may not use (`build`, `extends`).
    #[error("{file}: service `{service}` has `{key}:`; {hint}")]
    Forbidden {
        /// The file.
        file: String,
        /// The service.
        service: String,
        /// The key.
        key: String,
        /// What to do instead.
        hint: String,
    },
    /// The lock (with its extra files) has no service at all.
    #[error("{file} defines no services: a lock needs `services:` with at least one service")]
    NoServices {
        /// The lock file.
        file: String,
    },
    /// Too many services.
    #[error("the lock defines {count} services; at most {MAX_SERVICES} are supported")]
    TooManyServices {
        /// How many.
        count: usize,
    },
    /// A service has no `image:` in any file.
    #[error("service `{service}` has no `image:`; set `image: REPO@sha256:<digest>`")]
    NoImage {
        /// The service.
        service: String,
    },
    /// A service image is not `repo@sha256:<hex>`.
    #[error("service `{service}`: {reason}")]
    Unpinned {
        /// The service.
        service: String,
        /// Why (the image reference error).
        reason: String,
    },
    /// The lock pins another digest than the one the task expects.
    #[error(
        "service `{service}` is pinned to {found} but the task expects {expected}: the lock \
         changed after the digests were taken; submit the lock again"
    )]
    DigestMismatch {
        /// The service.
        service: String,
        /// The digest the task expects.
        expected: String,
        /// The digest in the lock.
        found: String,
    },
    /// The task expects a digest for a service the lock does not define.
    #[error(
        "the task expects a digest for service `{service}`, which the lock does not define; \
         take the expected digests from this lock"
    )]
    UnknownService {
        /// The service.
        service: String,
    },
    /// The task gives no expected digest for a service of the lock.
    #[error("service `{service}` has no expected digest in the task; take the expected digests from the lock")]
    MissingExpected {
        /// The service.
        service: String,
    },
    /// An expected digest is not `sha256:<64 hex>`.
    #[error("the expected digest of service `{service}` is invalid: {reason}")]
    BadExpected {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
}

/// One service of one Compose file, as far as a lock is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LockService {
    /// `image:` if the file sets it.
    pub image: Option<String>,
}

/// A parsed Compose file: its services, checked for forbidden keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeLock {
    file: String,
    services: BTreeMap<String, LockService>,
}

impl ComposeLock {
    /// Parses `text` (named `file` in errors) as a Compose file and refuses `build:` and
    /// `extends:` in any service. Images are checked by [`ComposeLock::pinned`].
    ///
    /// # Errors
    ///
    /// [`LockError::TooLarge`], [`LockError::Invalid`] (not YAML, not a mapping,
    /// `services` or a service not a mapping, `image` not a string),
    /// [`LockError::Forbidden`], [`LockError::TooManyServices`].
    pub fn parse(file: &str, text: &str) -> Result<Self, LockError> {
        if text.len() > MAX_COMPOSE_FILE_BYTES {
            return Err(LockError::TooLarge {
                file: file.to_owned(),
                len: text.len(),
            });
        }
        let invalid = |reason: String| LockError::Invalid {
            file: file.to_owned(),
            reason,
        };
        let mut value: Value = serde_norway::from_str(text).map_err(|e| invalid(e.to_string()))?;
        value
            .apply_merge()
            .map_err(|e| invalid(format!("a `<<` merge key is wrong: {e}")))?;
        let top = match &value {
            Value::Mapping(m) => m,
            Value::Null => {
                return Err(invalid("the file is empty".into()));
            }
            _ => {
                return Err(invalid(
                    "the top level must be a mapping with a `services:` key".into(),
                ))
            }
        };
        let mut services = BTreeMap::new();
        match top.get("services") {
            None | Some(Value::Null) => {}
            Some(Value::Mapping(m)) => {
                if m.len() > MAX_SERVICES {
                    return Err(LockError::TooManyServices { count: m.len() });
                }
                for (name, body) in m {
                    let Value::String(name) = name else {
                        return Err(invalid("every service name must be a string".into()));
                    };
                    services.insert(name.clone(), parse_service(file, name, body)?);
                }
            }
            Some(_) => {
                return Err(invalid(
                    "`services` must be a mapping of service names to services".into(),
                ))
            }
        }
        Ok(ComposeLock {
            file: file.to_owned(),
            services,
        })
    }

    /// The file name given to [`ComposeLock::parse`].
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The services of this file.
    pub fn services(&self) -> &BTreeMap<String, LockService> {
        &self.services
    }

    /// Every service's pinned image.
    ///
    /// # Errors
    ///
    /// [`LockError::NoServices`], [`LockError::NoImage`], [`LockError::Unpinned`] naming
    /// the first service (by name) at fault.
    pub fn pinned(&self) -> Result<BTreeMap<String, ImageRef>, LockError> {
        merged_images(std::slice::from_ref(self))
    }
}

fn parse_service(file: &str, name: &str, body: &Value) -> Result<LockService, LockError> {
    let map = match body {
        Value::Mapping(m) => m,
        Value::Null => return Ok(LockService::default()),
        _ => {
            return Err(LockError::Invalid {
                file: file.to_owned(),
                reason: format!("service `{name}` must be a mapping"),
            })
        }
    };
    for (key, hint) in FORBIDDEN_KEYS {
        if map.contains_key(key) {
            return Err(LockError::Forbidden {
                file: file.to_owned(),
                service: name.to_owned(),
                key: key.to_owned(),
                hint: hint.to_owned(),
            });
        }
    }
    let image = match map.get("image") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(LockError::Invalid {
                file: file.to_owned(),
                reason: format!("service `{name}`: `image` must be a string"),
            })
        }
    };
    Ok(LockService { image })
}

/// The effective pinned image of every service over Compose files applied in order (a
/// later file's `image:` overrides an earlier one's, as Compose merges them).
///
/// # Errors
///
/// As [`ComposeLock::pinned`]; [`LockError::NoServices`] names the first file.
pub fn merged_images(files: &[ComposeLock]) -> Result<BTreeMap<String, ImageRef>, LockError> {
    let mut images: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for file in files {
        for (name, service) in &file.services {
            let slot = images.entry(name.as_str()).or_default();
            if let Some(image) = &service.image {
                *slot = Some(image.as_str());
            }
        }
    }
    if images.is_empty() {
        return Err(LockError::NoServices {
            file: files.first().map(|f| f.file.clone()).unwrap_or_default(),
        });
    }
    if images.len() > MAX_SERVICES {
        return Err(LockError::TooManyServices {
            count: images.len(),
        });
    }
    images
        .into_iter()
        .map(|(service, image)| {
            let image = image.ok_or_else(|| LockError::NoImage {
                service: service.to_owned(),
            })?;
            let image = ImageRef::parse(image).map_err(|e| LockError::Unpinned {
                service: service.to_owned(),
                reason: e.to_string(),
            })?;
            Ok((service.to_owned(), image))
        })
        .collect()
}

/// Checks that the effective images of `files` are exactly the `expected` digests (one
/// per service, no more, no less) and returns them.
///
/// # Errors
///
/// As [`merged_images`], plus [`LockError::BadExpected`], [`LockError::DigestMismatch`],
/// [`LockError::MissingExpected`], [`LockError::UnknownService`].
pub fn check_expected(
    files: &[ComposeLock],
    expected: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, ImageRef>, LockError> {
    let images = merged_images(files)?;
    for (service, image) in &images {
        let Some(want) = expected.get(service) else {
            return Err(LockError::MissingExpected {
                service: service.clone(),
            });
        };
        let want = Digest::parse(want).map_err(|e| LockError::BadExpected {
            service: service.clone(),
            reason: e.to_string(),
        })?;
        if image.digest() != want {
            return Err(LockError::DigestMismatch {
                service: service.clone(),
                expected: want.to_string(),
                found: image.digest().to_string(),
            });
        }
    }
    if let Some(service) = expected.keys().find(|s| !images.contains_key(s.as_str())) {
        return Err(LockError::UnknownService {
            service: service.clone(),
        });
    }
    Ok(images)
}

/// The expected digest of every service, as the CLI sends it: taken from the lock (and
/// its extra Compose files).
///
/// # Errors
///
/// As [`merged_images`].
pub fn expected_digests(files: &[ComposeLock]) -> Result<BTreeMap<String, String>, LockError> {
    Ok(merged_images(files)?
        .into_iter()
        .map(|(service, image)| (service, image.digest().to_string()))
        .collect())
}

/// Whether a file shipped with a lock (`--file`) is a Compose file (`.yml`/`.yaml`),
/// applied with `-f` after the lock, rather than a plain config file written beside it.
pub fn is_compose_file_name(name: &str) -> bool {
    name.ends_with(".yml") || name.ends_with(".yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce";
    const D2: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn lock(text: &str) -> Result<ComposeLock, LockError> {
        ComposeLock::parse("compose.lock.yml", text)
    }

    fn two() -> String {
        format!(
            "services:\n  api:\n    image: reg:5000/api@{D1}\n  web:\n    image: reg:5000/web:1@{D2}\n    depends_on: [api]\n"
        )
    }

    #[test]
    fn pinned_services_and_expected_digests() {
        let l = lock(&two()).unwrap();
        let pinned = l.pinned().unwrap();
        assert_eq!(pinned["api"].repository(), "reg:5000/api");
        assert_eq!(pinned["web"].digest().to_string(), D2);
        let expected = expected_digests(std::slice::from_ref(&l)).unwrap();
        assert_eq!(expected["api"], D1);
        check_expected(&[l], &expected).unwrap();
    }

    #[test]
    fn unpinned_is_refused_naming_the_service() {
        let e = lock("services:\n  web:\n    image: web:latest\n")
            .unwrap()
            .pinned()
            .unwrap_err();
        assert!(matches!(&e, LockError::Unpinned { service, .. } if service == "web"));
        assert!(e.to_string().contains("`web`"), "{e}");
    }

    #[test]
    fn build_and_extends_are_refused() {
        let e = lock(&format!(
            "services:\n  web:\n    image: r/web@{D1}\n    build: .\n"
        ))
        .unwrap_err();
        assert!(
            matches!(&e, LockError::Forbidden { service, key, .. } if service == "web" && key == "build")
        );
        let e = lock("services:\n  web:\n    extends: {file: x.yml, service: w}\n").unwrap_err();
        assert!(matches!(&e, LockError::Forbidden { key, .. } if key == "extends"));
    }

    #[test]
    fn malformed_yaml_and_shapes_are_invalid() {
        for text in [
            "services: [\n",
            "",
            "- a\n- b\n",
            "services: 3\n",
            "services:\n  web: 3\n",
            "services:\n  web:\n    image: [a]\n",
            "services:\n  ? [a]\n  : {}\n",
        ] {
            let e = lock(text).unwrap_err();
            assert!(matches!(e, LockError::Invalid { .. }), "{text:?}: {e}");
        }
        assert!(matches!(
            lock("version: '3'\n").unwrap().pinned(),
            Err(LockError::NoServices { .. })
        ));
        assert!(matches!(
            lock("services:\n  web:\n    ports: ['80']\n")
                .unwrap()
                .pinned(),
            Err(LockError::NoImage { .. })
        ));
    }

    #[test]
    fn mismatch_missing_and_unknown_expected_digests() {
        let l = lock(&two()).unwrap();
        let mut expected = expected_digests(std::slice::from_ref(&l)).unwrap();
        expected.insert("web".into(), D1.into());
        let e = check_expected(std::slice::from_ref(&l), &expected).unwrap_err();
        assert!(matches!(&e, LockError::DigestMismatch { service, .. } if service == "web"));
        expected.remove("web");
        assert!(matches!(
            check_expected(std::slice::from_ref(&l), &expected),
            Err(LockError::MissingExpected { service }) if service == "web"
        ));
        expected.insert("web".into(), D2.into());
        expected.insert("db".into(), D2.into());
        assert!(matches!(
            check_expected(std::slice::from_ref(&l), &expected),
            Err(LockError::UnknownService { service }) if service == "db"
        ));
        expected.remove("db");
        expected.insert("web".into(), "sha256:zz".into());
        assert!(matches!(
            check_expected(&[l], &expected),
            Err(LockError::BadExpected { .. })
        ));
    }

    #[test]
    fn a_later_file_overrides_the_image_and_merge_keys_apply() {
        let base = lock(&two()).unwrap();
        let over = ComposeLock::parse(
            "override.yml",
            "x-common: &common\n  image: web:dev\nservices:\n  web:\n    <<: *common\n",
        )
        .unwrap();
        let e = merged_images(&[base.clone(), over]).unwrap_err();
        assert!(matches!(&e, LockError::Unpinned { service, .. } if service == "web"));
        let over = ComposeLock::parse(
            "override.yml",
            "services:\n  web:\n    environment: {A: b}\n",
        )
        .unwrap();
        assert_eq!(
            merged_images(&[base, over]).unwrap()["web"]
                .digest()
                .to_string(),
            D2
        );
    }

    #[test]
    fn too_large_is_refused_before_parsing() {
        let text = "#".repeat(MAX_COMPOSE_FILE_BYTES + 1);
        assert!(matches!(lock(&text), Err(LockError::TooLarge { .. })));
    }

    #[test]
    fn an_alias_bomb_does_not_explode() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        text.push_str("services: {}\n");
        assert!(lock(&text).is_err());
    }
}
