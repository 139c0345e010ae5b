//! Builds the test images: the `wharf-testapp` binary, linked statically, in an
//! image `FROM scratch` with a Docker `HEALTHCHECK` that runs `/testapp probe`.
//!
//! Each [`TestVersion`] gets its own binary (the version is baked in at compile
//! time through `TESTAPP_VERSION`) built in its own cargo target directory
//! (`<workspace>/target/testapp/<version>` by default), so switching versions
//! never rebuilds and the workspace's main build is never invalidated. A
//! re-run is a cargo no-op plus a cached `docker build`.
//!
//! The images are built with the classic builder (`DOCKER_BUILDKIT=0`; the
//! CLI here has no buildx plugin). It runs a container per Dockerfile
//! instruction, so a cold build takes seconds; the build tags
//! (`<repo>:<version>`) are therefore kept as Docker's build cache, and a
//! cached build takes about 0.1 s. An image the tag no longer points to after a
//! rebuild is removed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};

use crate::docker;

/// The repository local images are tagged into by default (`wharf/testapp:v1`).
pub const DEFAULT_REPO: &str = "wharf/testapp";

/// The port the test app listens on inside its image.
pub const APP_PORT: u16 = 8080;

/// The image's `HEALTHCHECK` timing: probe every second, 2 s timeout, failures
/// ignored for the first 2 s, unhealthy after 3 failures in a row. A healthy
/// container turns `healthy` about 1 s after start; `broken` turns `unhealthy`
/// after about 5 s.
pub const HEALTHCHECK: &str = "--interval=1s --timeout=2s --start-period=2s --retries=3";

/// The cargo target the test app is built for (the host's architecture, glibc,
/// linked statically with `+crt-static`).
#[cfg(target_arch = "aarch64")]
pub const TARGET: &str = "aarch64-unknown-linux-gnu";
/// The cargo target the test app is built for (the host's architecture, glibc,
/// linked statically with `+crt-static`).
#[cfg(not(target_arch = "aarch64"))]
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The versions of the test image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TestVersion {
    /// Healthy; `/version` answers `v1`.
    V1,
    /// Healthy; `/version` answers `v2`.
    V2,
    /// Runs, but its health check always fails (`ENV TESTAPP_FAIL_HEALTH=1` in
    /// the image): Docker marks it `unhealthy`. `/version` answers `broken`.
    Broken,
}

impl TestVersion {
    /// Every version, in build order.
    pub const ALL: [TestVersion; 3] = [TestVersion::V1, TestVersion::V2, TestVersion::Broken];

    /// `v1`, `v2` or `broken`: the image tag and the text of `/version`.
    pub fn as_str(self) -> &'static str {
        match self {
            TestVersion::V1 => "v1",
            TestVersion::V2 => "v2",
            TestVersion::Broken => "broken",
        }
    }

    /// Whether the image's health check passes.
    pub fn is_healthy(self) -> bool {
        self != TestVersion::Broken
    }
}

impl fmt::Display for TestVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TestVersion {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        TestVersion::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .with_context(|| format!("unknown test version {s:?} (expected v1, v2 or broken)"))
    }
}

/// Where and how to build.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Local repository the images are tagged into (`<repo>:<version>`).
    pub repo: String,
    /// The Wharf workspace (holding `testbed/testapp`).
    pub workspace_root: PathBuf,
    /// Cargo target directory for the test app; each version uses a
    /// subdirectory of it.
    pub target_dir: PathBuf,
}

impl Default for BuildOptions {
    /// Tags into [`DEFAULT_REPO`]; builds in the workspace this crate was
    /// compiled from, under `$CARGO_TARGET_DIR/testapp` when that variable is
    /// set, else `<workspace>/target/testapp`.
    fn default() -> Self {
        let workspace_root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".."));
        let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => PathBuf::from(dir).join("testapp"),
            None => workspace_root.join("target").join("testapp"),
        };
        BuildOptions {
            repo: DEFAULT_REPO.to_string(),
            workspace_root,
            target_dir,
        }
    }
}

impl BuildOptions {
    /// The same options, tagging into `repo`.
    pub fn with_repo(mut self, repo: impl Into<String>) -> Self {
        self.repo = repo.into();
        self
    }
}

/// A test image built into the local Docker engine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuiltImage {
    /// Which version it is.
    pub version: TestVersion,
    /// Its local tag, `<repo>:<version>`.
    pub tag: String,
    /// The image id (`sha256:...` of its config).
    pub image_id: String,
}

/// Builds the static test app binary for `version` (a cargo no-op when it is
/// up to date) and checks it is statically linked. Returns its path.
pub fn build_binary(version: TestVersion, options: &BuildOptions) -> Result<PathBuf> {
    build_static(
        "wharf-testapp",
        &options.target_dir.join(version.as_str()),
        &[("TESTAPP_VERSION", version.as_str())],
        options,
    )
    .with_context(|| format!("building the {version} test app"))
}

/// Builds the static binary of workspace package `package` (its binary has the package's
/// name) into `target_dir`, with extra environment `env`, and checks it is static.
fn build_static(
    package: &str,
    target_dir: &Path,
    env: &[(&str, &str)],
    options: &BuildOptions,
) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&options.workspace_root)
        .args(["build", "--release", "--locked", "--quiet"])
        .args(["-p", package, "--target", TARGET, "--target-dir"])
        .arg(target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        // Small images: no debug info in the copy that goes into the image.
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    docker::run(&mut cmd).with_context(|| format!("building {package}"))?;
    let binary = target_dir.join(TARGET).join("release").join(package);
    crate::elf::ensure_static(&binary)?;
    Ok(binary)
}

/// The Dockerfile of a test image.
pub fn dockerfile(version: TestVersion) -> String {
    let v = version.as_str();
    let fail_health = if version.is_healthy() {
        ""
    } else {
        " TESTAPP_FAIL_HEALTH=1"
    };
    format!(
        "FROM scratch\n\
         COPY testapp /testapp\n\
         ENV TESTAPP_PORT={APP_PORT}{fail_health}\n\
         EXPOSE {APP_PORT}\n\
         LABEL org.opencontainers.image.title=\"wharf-testapp\" \
         org.opencontainers.image.version=\"{v}\" \
         org.opencontainers.image.description=\"Wharf test application ({v})\" \
         wharf.testbed=\"true\" wharf.testapp.version=\"{v}\"\n\
         HEALTHCHECK {HEALTHCHECK} CMD [\"/testapp\", \"probe\"]\n\
         ENTRYPOINT [\"/testapp\"]\n"
    )
}

/// Builds the image of `version` into `<repo>:<version>`.
pub fn build_image(version: TestVersion, options: &BuildOptions) -> Result<BuiltImage> {
    let binary = build_binary(version, options)?;
    let tag = format!("{}:{}", options.repo, version);
    let image_id = docker_build(&binary, "testapp", &dockerfile(version), &tag)?;
    Ok(BuiltImage {
        version,
        tag,
        image_id,
    })
}

/// The local repository of the test hook image (`wharf/testhook:latest`).
pub const HOOK_REPO: &str = "wharf/testhook";

/// The Dockerfile of the test hook image: the static `wharf-testhook` binary as the
/// entrypoint (its first argument picks its behaviour, see `testbed/testhook`).
pub fn hook_dockerfile() -> String {
    "FROM scratch\n\
     COPY testhook /testhook\n\
     LABEL org.opencontainers.image.title=\"wharf-testhook\" wharf.testbed=\"true\"\n\
     ENTRYPOINT [\"/testhook\"]\n"
        .to_owned()
}

/// Builds the test hook image (`wharf-testhook`, static, `FROM scratch`) into
/// `wharf/testhook:latest`. Returns its tag and image id.
pub fn build_hook_image(options: &BuildOptions) -> Result<(String, String)> {
    build_hook_image_in_mode(options, None)
}

/// Builds the test hook image with `mode` (`fail`, `hang`, ...) as its fixed first
/// argument into `wharf/testhook:<mode>`, for tests that can only name a hook image (the
/// CLI's `--pre-hook IMAGE`), or the plain image (`None`, `:latest`). Returns its tag and
/// image id.
pub fn build_hook_image_in_mode(
    options: &BuildOptions,
    mode: Option<&str>,
) -> Result<(String, String)> {
    if let Some(mode) = mode {
        ensure!(
            !mode.is_empty() && mode.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
            "test hook mode {mode:?} must be lowercase letters and dashes"
        );
    }
    let binary = build_static(
        "wharf-testhook",
        &options.target_dir.join("testhook"),
        &[],
        options,
    )
    .context("building the test hook")?;
    let (tag, dockerfile) = match mode {
        None => (format!("{HOOK_REPO}:latest"), hook_dockerfile()),
        Some(mode) => (
            format!("{HOOK_REPO}:{mode}"),
            hook_dockerfile().replace(
                "ENTRYPOINT [\"/testhook\"]",
                &format!("ENTRYPOINT [\"/testhook\", \"{mode}\"]"),
            ),
        ),
    };
    let id = docker_build(&binary, "testhook", &dockerfile, &tag)?;
    Ok((tag, id))
}

/// Builds an image tagged `tag` from `dockerfile`, with `binary` copied into the
/// context as `name`. Returns the image id.
fn docker_build(binary: &Path, name: &str, dockerfile: &str, tag: &str) -> Result<String> {
    let work = tempfile::Builder::new()
        .prefix("wharf-image-build-")
        .tempdir()
        .context("cannot create a temporary build directory")?;
    let context_dir = work.path().join("context");
    std::fs::create_dir(&context_dir)?;
    let app = context_dir.join(name);
    std::fs::copy(binary, &app)
        .with_context(|| format!("cannot copy {} into the build context", binary.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755))?;
    }
    std::fs::write(context_dir.join("Dockerfile"), dockerfile)?;
    let iidfile = work.path().join("image-id");
    let previous =
        docker::inspect_image(tag)?.and_then(|image| image["Id"].as_str().map(str::to_string));
    // The classic builder: the engine here has no BuildKit frontend available
    // to the CLI (no buildx plugin), and it builds FROM scratch images just as well.
    docker::run(
        docker::command(None)
            .env("DOCKER_BUILDKIT", "0")
            .args(["build", "--quiet", "--tag", tag, "--iidfile"])
            .arg(&iidfile)
            .arg(&context_dir),
    )
    .with_context(|| format!("building image {tag}"))?;
    let image_id = std::fs::read_to_string(&iidfile)
        .context("docker build wrote no image id")?
        .trim()
        .to_string();
    if !image_id.starts_with("sha256:") {
        bail!("docker build wrote an odd image id {image_id:?}");
    }
    // A changed binary leaves the image the tag pointed to untagged: remove it
    // (a no-op when something else still references it).
    if let Some(previous) = previous.filter(|id| *id != image_id) {
        let _ = docker::output(docker::command(None).args(["rmi", &previous]));
    }
    Ok(image_id)
}

/// Builds every [`TestVersion`], in [`TestVersion::ALL`] order.
pub fn build_all(options: &BuildOptions) -> Result<Vec<BuiltImage>> {
    TestVersion::ALL
        .into_iter()
        .map(|version| build_image(version, options))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_round_trip() {
        for v in TestVersion::ALL {
            assert_eq!(v.as_str().parse::<TestVersion>().unwrap(), v);
        }
        assert!("v3".parse::<TestVersion>().is_err());
    }

    #[test]
    fn dockerfiles_bake_health_and_version() {
        let broken = dockerfile(TestVersion::Broken);
        assert!(broken.contains("TESTAPP_FAIL_HEALTH=1"));
        assert!(broken.contains("HEALTHCHECK --interval=1s"));
        let v1 = dockerfile(TestVersion::V1);
        assert!(!v1.contains("TESTAPP_FAIL_HEALTH"));
        assert!(v1.contains("org.opencontainers.image.version=\"v1\""));
        assert!(v1.starts_with("FROM scratch\n"));
    }
}
