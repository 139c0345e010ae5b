//! A local image registry for tests: Debian's `docker-registry` (distribution
//! v2) on a free 127.0.0.1 port, with its own storage and optional htpasswd
//! basic auth, plus a [`RegistryClient`] that pushes and pulls through the
//! Docker engine with a private `DOCKER_CONFIG`.
//!
//! The Docker engine allows plain HTTP to registries on 127.0.0.0/8, so no TLS
//! is needed.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine as _;
use tempfile::TempDir;

use crate::docker;
use crate::http;
use crate::reference::{check_digest, check_repository, PinnedRef};

/// The registry program started by default (Debian's package `docker-registry`).
pub const DEFAULT_PROGRAM: &str = "docker-registry";

/// How long [`Registry::start`] waits for `/v2/` to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at a free port (another process can take the probed port first).
const PORT_ATTEMPTS: usize = 5;
/// The media types asked for when reading a manifest digest.
const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.index.v1+json";

/// A registry user name and password. `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and a password.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Parses `USER:PASSWORD` (the password may contain `:`; neither part may
    /// be empty, and the user name may not contain whitespace).
    pub fn parse(text: &str) -> Result<Self> {
        let (username, password) = text
            .split_once(':')
            .context("credentials must look like USER:PASSWORD")?;
        let credentials = Credentials::new(username, password);
        credentials.validate()?;
        Ok(credentials)
    }

    /// Checks the user name and password can go into an htpasswd file.
    pub fn validate(&self) -> Result<()> {
        ensure!(!self.username.is_empty(), "empty user name");
        ensure!(
            !self
                .username
                .chars()
                .any(|c| c == ':' || c.is_whitespace() || c.is_control()),
            "the user name may not contain ':', spaces or control characters"
        );
        ensure!(!self.password.is_empty(), "empty password");
        ensure!(
            !self.password.contains(['\n', '\r']),
            "the password may not contain line breaks"
        );
        Ok(())
    }

    /// The value of an `Authorization` header for HTTP basic auth.
    pub fn basic_authorization(&self) -> String {
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.username, self.password));
        format!("Basic {token}")
    }

    /// An htpasswd line (`user:$2y$...`), bcrypt at the lowest cost: this is a
    /// test registry, and it checks the hash on every request of a push.
    pub fn htpasswd_line(&self) -> Result<String> {
        self.validate()?;
        let hash = bcrypt::hash_with_result(&self.password, 4)
            .context("bcrypt failed")?
            .format_for_version(bcrypt::Version::TwoY);
        Ok(format!("{}:{hash}", self.username))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to start a [`Registry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth with these credentials (htpasswd).
    pub auth: Option<Credentials>,
    /// The registry program (default [`DEFAULT_PROGRAM`], found on `PATH`).
    pub program: Option<PathBuf>,
    /// Start the registry in its own process group, so a Ctrl-C on the
    /// terminal reaches only its owner, which then stops it in order (what
    /// `wharf-testbed registry up` wants). Off by default: in tests, a Ctrl-C
    /// on `cargo test` should take the registry down with it.
    pub own_process_group: bool,
}

impl RegistryOptions {
    /// No auth, the default program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Requires basic auth with this user and password.
    pub fn with_auth(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(Credentials::new(username, password));
        self
    }

    /// Starts the registry in its own process group (see
    /// [`RegistryOptions::own_process_group`]).
    pub fn in_own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Runs another registry binary (e.g. upstream's `registry`).
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }
}

/// Talks to a registry (ours or one started elsewhere) through the Docker
/// engine, with a private `DOCKER_CONFIG` directory that holds the login, if
/// any, and is removed on drop. The user's `~/.docker` is never read or written.
#[derive(Debug)]
pub struct RegistryClient {
    host: String,
    credentials: Option<Credentials>,
    docker_config: TempDir,
}

impl RegistryClient {
    /// A client for the registry at `host` (`127.0.0.1:PORT`); with credentials
    /// it runs `docker login` into its private config directory first.
    pub fn new(host: impl Into<String>, credentials: Option<Credentials>) -> Result<Self> {
        let host = host.into();
        let docker_config = tempfile::Builder::new()
            .prefix("wharf-docker-config-")
            .tempdir()
            .context("cannot create a temporary DOCKER_CONFIG directory")?;
        // An explicit empty config: no credential helper, no proxies of the user's.
        std::fs::write(
            docker_config.path().join("config.json"),
            "{\"auths\": {}}\n",
        )?;
        let client = RegistryClient {
            host,
            credentials,
            docker_config,
        };
        if let Some(credentials) = &client.credentials {
            client.login(credentials)?;
        }
        Ok(client)
    }

    fn login(&self, credentials: &Credentials) -> Result<()> {
        let mut child = self
            .docker()
            .args(["login", &self.host, "--username", &credentials.username])
            .arg("--password-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run docker login")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(credentials.password.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "docker login {} as {} failed: {}",
                self.host,
                credentials.username,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// The registry's `host:port`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The credentials in use, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// The private `DOCKER_CONFIG` directory (logged in when there are
    /// credentials): hand it to `docker`/`docker compose` to pull from this registry.
    pub fn docker_config(&self) -> &Path {
        self.docker_config.path()
    }

    /// A `docker` command using this client's `DOCKER_CONFIG`.
    pub fn docker(&self) -> Command {
        docker::command(Some(self.docker_config()))
    }

    /// Tags the local image `local_tag` as `<host>/<repo>:<tag>` (the tag of
    /// `local_tag`, or `latest`), pushes it and returns `<host>/<repo>@sha256:...`.
    ///
    /// The digest printed by `docker push` is checked against the registry's own
    /// (`Docker-Content-Digest` of a `HEAD` on the manifest). The local tag
    /// `<host>/<repo>:<tag>` is left in place; remove it (and the pinned
    /// reference) with [`docker::remove_images`] when done.
    pub fn push(&self, local_tag: &str, repo: &str) -> Result<PinnedRef> {
        check_repository(repo).with_context(|| format!("invalid repository name {repo:?}"))?;
        let tag = tag_of(local_tag);
        let remote_tag = format!("{}/{repo}:{tag}", self.host);
        docker::run(self.docker().args(["tag", local_tag, &remote_tag]))?;
        let out = docker::run(self.docker().args(["push", &remote_tag]))
            .with_context(|| format!("pushing {local_tag} to {}", self.host))?;
        let pushed = parse_push_digest(&out)
            .with_context(|| format!("docker push {remote_tag} printed no digest: {out}"))?;
        let stored = self.manifest_digest(repo, tag)?;
        ensure!(
            pushed == stored,
            "docker push reported {pushed} but the registry serves {stored} for {repo}:{tag}"
        );
        PinnedRef::new(format!("{}/{repo}", self.host), pushed)
    }

    /// `docker pull` through the engine with this client's credentials.
    pub fn pull(&self, reference: &str) -> Result<()> {
        docker::run(self.docker().args(["pull", "--quiet", reference]))
            .with_context(|| format!("pulling {reference}"))?;
        Ok(())
    }

    /// The digest the registry serves for `repo:reference` (a tag or digest),
    /// read from `Docker-Content-Digest` of a `HEAD` on the manifest.
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Result<String> {
        let path = format!("/v2/{repo}/manifests/{reference}");
        let authorization = self
            .credentials
            .as_ref()
            .map(Credentials::basic_authorization);
        let mut headers = vec![("Accept", MANIFEST_ACCEPT)];
        if let Some(value) = &authorization {
            headers.push(("Authorization", value));
        }
        let response = http::request("HEAD", &self.host, &path, &headers)?;
        ensure!(
            response.status == 200,
            "HEAD {path} on {}: HTTP {}",
            self.host,
            response.status
        );
        let digest = response
            .header("Docker-Content-Digest")
            .context("the registry sent no Docker-Content-Digest")?
            .to_string();
        check_digest(&digest)?;
        Ok(digest)
    }

    /// `GET /v2/` with the client's credentials: the HTTP status.
    pub fn ping(&self) -> Result<u16> {
        let authorization = self
            .credentials
            .as_ref()
            .map(Credentials::basic_authorization);
        let headers: Vec<(&str, &str)> = authorization
            .iter()
            .map(|v| ("Authorization", v.as_str()))
            .collect();
        Ok(http::request("GET", &self.host, "/v2/", &headers)?.status)
    }
}

/// The tag part of `repo:tag` (`latest` when there is none). A `:` inside the
/// registry host (`127.0.0.1:5000/x`) is not a tag separator.
fn tag_of(reference: &str) -> &str {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag,
        _ => "latest",
    }
}

/// The digest in `docker push` output (`v1: digest: sha256:... size: 528`).
fn parse_push_digest(output: &str) -> Option<String> {
    output.lines().rev().find_map(|line| {
        let rest = &line[line.find("digest: ")? + "digest: ".len()..];
        let digest = rest.split_whitespace().next()?;
        check_digest(digest).ok()?;
        Some(digest.to_string())
    })
}

/// A running `docker-registry` on 127.0.0.1, killed and its storage removed
/// when dropped.
///
/// Cleanup relies on `Drop`: keep it in a local (not a `static`, whose drop never
/// runs). A test process killed with SIGKILL leaves the registry running.
pub struct Registry {
    child: Mutex<Child>,
    addr: SocketAddr,
    client: RegistryClient,
    // Declared last: removed after the process is gone.
    dir: TempDir,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("addr", &self.addr)
            .field("dir", &self.dir.path())
            .field("auth", &self.client.credentials)
            .finish()
    }
}

/// What one start attempt came to.
enum Attempt {
    Ready(Child),
    PortTaken,
}

impl Registry {
    /// Starts a registry on a free 127.0.0.1 port and waits until `GET /v2/`
    /// answers (200, or 401 with auth). With auth, also logs in the client.
    pub fn start(options: RegistryOptions) -> Result<Self> {
        if let Some(credentials) = &options.auth {
            credentials
                .validate()
                .context("invalid registry credentials")?;
        }
        let dir = tempfile::Builder::new()
            .prefix("wharf-registry-")
            .tempdir()
            .context("cannot create the registry directory")?;
        let htpasswd = match &options.auth {
            Some(credentials) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, credentials.htpasswd_line()? + "\n")?;
                Some(path)
            }
            None => None,
        };
        let program = options
            .program
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PROGRAM));
        for _ in 0..PORT_ATTEMPTS {
            let port = crate::free_port().context("cannot find a free port")?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let config = dir.path().join("config.yml");
            std::fs::write(&config, config_yaml(dir.path(), addr, htpasswd.as_deref()))?;
            match start_once(
                &program,
                &config,
                dir.path(),
                addr,
                options.own_process_group,
            )? {
                Attempt::PortTaken => continue,
                Attempt::Ready(child) => {
                    let guard = ChildGuard(Some(child));
                    let client = RegistryClient::new(addr.to_string(), options.auth.clone())?;
                    return Ok(Registry {
                        child: Mutex::new(guard.into_inner()),
                        addr,
                        client,
                        dir,
                    });
                }
            }
        }
        bail!("no free port for the registry after {PORT_ATTEMPTS} attempts")
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`: the registry host in image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The credentials it requires, if any.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.client.credentials()
    }

    /// The client (logged in when the registry requires auth).
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// A `DOCKER_CONFIG` directory holding the login for this registry (an empty
    /// config without auth).
    pub fn docker_config(&self) -> &Path {
        self.client.docker_config()
    }

    /// See [`RegistryClient::push`].
    pub fn push(&self, local_tag: &str, repo: &str) -> Result<PinnedRef> {
        self.client.push(local_tag, repo)
    }

    /// See [`RegistryClient::manifest_digest`].
    pub fn manifest_digest(&self, repo: &str, reference: &str) -> Result<String> {
        self.client.manifest_digest(repo, reference)
    }

    /// The registry's data directory (`storage/` holds the blobs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What the registry printed so far (warnings and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Fails when the registry process has exited.
    pub fn check_running(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        match child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("the registry exited ({status}): {}", self.log()),
        }
    }

    /// Stops the registry and removes its storage now (dropping does the same).
    pub fn stop(self) {}
}

impl Drop for Registry {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Kills a child unless released: covers an error between spawn and handover.
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn into_inner(mut self) -> Child {
        self.0.take().expect("child present until released")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_once(
    program: &Path,
    config: &Path,
    dir: &Path,
    addr: SocketAddr,
    own_process_group: bool,
) -> Result<Attempt> {
    let log_path = dir.join("registry.log");
    let log = File::create(&log_path)?;
    let mut cmd = Command::new(program);
    if own_process_group {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    }
    cmd.arg("serve")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // REGISTRY_* variables override the config file: keep the caller's out.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("REGISTRY_") {
            cmd.env_remove(key);
        }
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "cannot start {} (is Debian's docker-registry installed?)",
            program.display()
        )
    })?;
    let mut guard = ChildGuard(Some(child));
    let deadline = Instant::now() + READY_TIMEOUT;
    let host = addr.to_string();
    loop {
        let exited: Option<ExitStatus> = guard.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(status) = exited {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            if log.contains("address already in use") {
                return Ok(Attempt::PortTaken);
            }
            bail!(
                "{} exited at start ({status}): {}",
                program.display(),
                log.trim()
            );
        }
        match http::request_with_timeout("GET", &host, "/v2/", &[], Duration::from_secs(2)) {
            Ok(response) if response.status == 200 || response.status == 401 => {
                return Ok(Attempt::Ready(guard.into_inner()));
            }
            Ok(response) => bail!(
                "the registry answered GET /v2/ with HTTP {}",
                response.status
            ),
            Err(err) if http::is_not_listening(&err) => {}
            Err(err) => return Err(err.context("waiting for the registry")),
        }
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            bail!(
                "the registry did not answer on {host} within {READY_TIMEOUT:?}: {}",
                log.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A YAML string (JSON strings are valid YAML double-quoted scalars).
fn yaml_str(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).unwrap_or_default()
}

/// The registry's configuration: filesystem storage in `dir/storage`, loopback
/// address, deletes allowed, no upload purging or storage health checks (they
/// start background timers), optional htpasswd auth.
fn config_yaml(dir: &Path, addr: SocketAddr, htpasswd: Option<&Path>) -> String {
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: true\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {addr}\n  secret: {secret}\n  headers:\n    X-Content-Type-Options: [nosniff]\n",
        storage = yaml_str(&dir.join("storage")),
        secret = random_hex(16),
    );
    if let Some(path) = htpasswd {
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: wharf-testbed\n    path: {}\n",
            yaml_str(path)
        ));
    }
    yaml
}

/// `n` random bytes as hex, from the kernel.
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut bytes = vec![0u8; n];
    if File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        // Not secret-grade, but the HTTP secret of a throwaway test registry
        // only has to differ between instances.
        let fallback = crate::unique_suffix();
        return format!("{fallback:0<width$}", width = n * 2);
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_push_output() {
        assert_eq!(tag_of("wharf/testapp:v1"), "v1");
        assert_eq!(tag_of("127.0.0.1:5000/wharf/testapp"), "latest");
        assert_eq!(tag_of("127.0.0.1:5000/wharf/testapp:v2"), "v2");
        let hex = "ab".repeat(32);
        let out = format!(
            "The push refers to repository [127.0.0.1:5000/wharf/testapp]\n\
             5f70bf18a086: Pushed\nv1: digest: sha256:{hex} size: 739\n"
        );
        assert_eq!(parse_push_digest(&out), Some(format!("sha256:{hex}")));
        assert_eq!(parse_push_digest("v1: digest: sha256:abc size: 1"), None);
    }

    #[test]
    fn credentials() {
        let c = Credentials::parse("wharf:pa:ss").unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("wharf", "pa:ss")
        );
        assert_eq!(c.basic_authorization(), "Basic d2hhcmY6cGE6c3M=");
        assert!(!format!("{c:?}").contains("pa:ss"));
        for bad in ["nopassword", ":pass", "user:", "us er:pass"] {
            assert!(Credentials::parse(bad).is_err(), "{bad}");
        }
        let line = c.htpasswd_line().unwrap();
        let hash = line.strip_prefix("wharf:").unwrap();
        assert!(hash.starts_with("$2y$04$"), "{hash}");
        assert!(bcrypt::verify("pa:ss", hash).unwrap());
    }

    #[test]
    fn config_is_yaml_with_quoted_paths() {
        let yaml = config_yaml(
            Path::new("/tmp/a b"),
            SocketAddr::from(([127, 0, 0, 1], 5000)),
            Some(Path::new("/tmp/a b/htpasswd")),
        );
        assert!(yaml.contains("rootdirectory: \"/tmp/a b/storage\""));
        assert!(yaml.contains("addr: 127.0.0.1:5000"));
        assert!(yaml.contains("path: \"/tmp/a b/htpasswd\""));
        assert!(
            !config_yaml(Path::new("/x"), SocketAddr::from(([127, 0, 0, 1], 1)), None)
                .contains("auth:")
        );
    }
}
