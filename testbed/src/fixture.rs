//! The [`Testbed`] fixture: a private registry with every test image (and the test hook
//! image) pushed.

use std::path::Path;

use anyhow::{Context, Result};

use crate::docker;
use crate::images::{self, BuildOptions, BuiltImage, TestVersion, DEFAULT_REPO};
use crate::reference::PinnedRef;
use crate::registry::{Credentials, Registry, RegistryOptions};

/// How to set up a [`Testbed`].
#[derive(Clone, Debug)]
pub struct TestbedOptions {
    /// Basic auth for the registry (none by default).
    pub auth: Option<Credentials>,
    /// Repository path inside the registry (default `wharf/testapp`); the
    /// registry is private to the testbed, so this never collides.
    pub repo: String,
    /// How to build the images. The build tags (`wharf/testapp:<version>` by
    /// default) are shared by every testbed and kept after drop: they are
    /// Docker's build cache, which makes the next build instant.
    pub build: BuildOptions,
}

impl Default for TestbedOptions {
    fn default() -> Self {
        TestbedOptions {
            auth: None,
            repo: DEFAULT_REPO.to_string(),
            build: BuildOptions::default(),
        }
    }
}

impl TestbedOptions {
    /// Requires basic auth on the registry.
    pub fn with_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Credentials::new(username, password));
        self
    }

    /// Pushes into `repo` instead of `wharf/testapp`.
    pub fn with_repo(mut self, repo: impl Into<String>) -> Self {
        self.repo = repo.into();
        self
    }
}

/// A running registry holding `v1`, `v2` and `broken`, pushed and pinned by
/// digest. On drop it removes the local image references it made (pushed tags
/// `<host>/<repo>:<version>` and pinned references), then stops the registry
/// and deletes its storage. The shared build tags stay (see
/// [`TestbedOptions::build`]).
#[derive(Debug)]
pub struct Testbed {
    built: Vec<BuiltImage>,
    pinned: Vec<(TestVersion, PinnedRef)>,
    local_refs: Vec<String>,
    hook: PinnedRef,
    build: images::BuildOptions,
    // Dropped after the images are removed (see `Drop`).
    registry: Registry,
}

impl Testbed {
    /// Starts a registry, builds every [`TestVersion`] and pushes it.
    pub fn start(options: TestbedOptions) -> Result<Self> {
        let mut registry_options = RegistryOptions::new();
        registry_options.auth = options.auth.clone();
        let registry = Registry::start(registry_options).context("starting the registry")?;
        let (hook_tag, _) = images::build_hook_image(&options.build)?;
        let hook = registry
            .push(&hook_tag, images::HOOK_REPO)
            .with_context(|| format!("pushing {hook_tag}"))?;
        let mut bed = Testbed {
            built: Vec::new(),
            pinned: Vec::new(),
            local_refs: vec![
                format!("{}/{}:latest", registry.host(), images::HOOK_REPO),
                hook.to_string(),
            ],
            hook,
            build: options.build.clone(),
            registry,
        };
        for version in TestVersion::ALL {
            let built = images::build_image(version, &options.build)?;
            bed.local_refs.push(format!(
                "{}/{}:{}",
                bed.registry.host(),
                options.repo,
                version
            ));
            let pinned = bed
                .registry
                .push(&built.tag, &options.repo)
                .with_context(|| format!("pushing {}", built.tag))?;
            bed.local_refs.push(pinned.to_string());
            bed.built.push(built);
            bed.pinned.push((version, pinned));
        }
        Ok(bed)
    }

    /// The registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The credentials of the registry, if it requires auth.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.registry.credentials()
    }

    /// A `DOCKER_CONFIG` directory logged in to the registry.
    pub fn docker_config(&self) -> &Path {
        self.registry.docker_config()
    }

    /// The pinned reference of a version: `127.0.0.1:PORT/<repo>@sha256:...`.
    pub fn image(&self, version: TestVersion) -> &PinnedRef {
        self.pinned
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, pinned)| pinned)
            .expect("every version is pushed at start")
    }

    /// The pinned reference of the test hook image (`wharf-testhook`, see
    /// [`images::build_hook_image`]): `127.0.0.1:PORT/wharf/testhook@sha256:...`.
    pub fn hook_image(&self) -> &PinnedRef {
        &self.hook
    }

    /// The test hook image with `mode` (`fail`, `hang`, ...) fixed as its first argument,
    /// built and pushed to this registry as `wharf/testhook:<mode>` (see
    /// [`images::build_hook_image_in_mode`]); removed with the testbed.
    pub fn hook_image_in_mode(&mut self, mode: &str) -> Result<PinnedRef> {
        let (tag, _) = images::build_hook_image_in_mode(&self.build, Some(mode))?;
        let pinned = self
            .registry
            .push(&tag, images::HOOK_REPO)
            .with_context(|| format!("pushing {tag}"))?;
        self.local_refs.extend([
            tag,
            format!("{}/{}:{mode}", self.registry.host(), images::HOOK_REPO),
            pinned.to_string(),
        ]);
        Ok(pinned)
    }

    /// Every version with its pinned reference, in [`TestVersion::ALL`] order.
    pub fn images(&self) -> impl Iterator<Item = (TestVersion, &PinnedRef)> {
        self.pinned.iter().map(|(v, pinned)| (*v, pinned))
    }

    /// The local build of a version (tag and image id).
    pub fn built(&self, version: TestVersion) -> &BuiltImage {
        self.built
            .iter()
            .find(|b| b.version == version)
            .expect("every version is built at start")
    }

    /// Removes the local image references this testbed made (pushed tags and
    /// pinned references), so that a pull by digest has to go to the registry
    /// again. The layers stay while the shared build tag holds the same image.
    pub fn remove_local_images(&self) -> Result<()> {
        docker::remove_images(&self.local_refs)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Refs pulled again by a test are removed too; the registry goes after.
        let _ = docker::remove_images(&self.local_refs);
    }
}
