//! A real `wharf-core serve` child process for integration tests of any crate, and the
//! cargo builds that provide such binaries.
//!
//! ```no_run
//! use wharf_testbed::core::CoreProcess;
//!
//! let data = tempfile::tempdir()?;
//! let mut core = CoreProcess::start(data.path())?; // builds wharf-core once per test run
//! let api = core.api()?;                            // operator API client (admin token)
//! core.kill9()?;                                    // SIGKILL, then:
//! core.spawn()?;                                    // the same port and data dir again
//! # Ok::<(), anyhow::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use crate::cluster::Process;
use crate::simagent::CoreApi;

/// How long core may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Builds `--package package` target `kind` (`bin` or `example`) `name` with the cargo
/// that runs the tests (debug profile, `--locked`) and returns the executable's path.
///
/// The test's cargo package variables (`CARGO_PKG_NAME`...) are removed first: build
/// scripts that watch them (ring's) would otherwise rebuild for this build and again for
/// the next ordinary one.
///
/// # Errors
///
/// cargo fails or does not report the executable.
pub fn cargo_build(package: &str, kind: &str, name: &str) -> Result<PathBuf> {
    let kind = format!("--{kind}");
    let built = cargo_build_all(&["-p", package, &kind, name])?;
    built
        .get(name)
        .cloned()
        .with_context(|| format!("cargo did not report the {name} executable"))
}

/// `cargo build --locked ARGS...` of this workspace (same environment rules as
/// [`cargo_build`]); returns every executable cargo reported, by target name.
///
/// # Errors
///
/// cargo fails.
pub fn cargo_build_all(args: &[&str]) -> Result<BTreeMap<String, PathBuf>> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_") && !matches!(key, "CARGO_HOME" | "CARGO_TARGET_DIR") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args(["build", "--locked"])
        .args(args)
        .arg("--message-format=json")
        .current_dir(&workspace)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build {} failed ({})", args.join(" "), out.status);
    }
    let mut found = BTreeMap::new();
    for v in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
    {
        if let (Some(name), Some(exe)) = (v["target"]["name"].as_str(), v["executable"].as_str()) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(found)
}

/// The `wharf-core` binary: `WHARF_CORE_BIN` if set, else built once per process with
/// [`cargo_build`].
///
/// # Errors
///
/// The build failed.
pub fn core_binary() -> Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let _one_build = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let bin = match std::env::var_os("WHARF_CORE_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => cargo_build("wharf-core", "bin", "wharf-core")?,
    };
    Ok(BIN.get_or_init(|| bin).clone())
}

/// A `wharf-core serve` child on 127.0.0.1 (or another address of this host) with a fixed
/// port and data dir; killed on drop. Its output is collected ([`CoreProcess::output`]).
#[derive(Debug)]
pub struct CoreProcess {
    process: Option<Process>,
    binary: PathBuf,
    /// The data dir.
    pub data: PathBuf,
    /// The TCP (HTTPS) and UDP (QUIC) port.
    pub port: u16,
    /// The address core listens on (and its certificate covers): 127.0.0.1 unless
    /// [`CoreProcess::start_on`] chose another.
    ip: std::net::IpAddr,
}

impl CoreProcess {
    /// Starts core on `data` (created by core if missing) and a free port; returns once it
    /// answers on TCP and its admin token exists.
    ///
    /// # Errors
    ///
    /// The build failed, or core did not come up.
    pub fn start(data: &Path) -> Result<CoreProcess> {
        CoreProcess::start_with(&core_binary()?, data)
    }

    /// [`CoreProcess::start`] with the given `wharf-core` binary.
    ///
    /// # Errors
    ///
    /// Core did not come up.
    pub fn start_with(binary: &Path, data: &Path) -> Result<CoreProcess> {
        CoreProcess::start_on(binary, data, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`CoreProcess::start_with`] listening on `ip` (a free port of 127.0.0.1), with a
    /// server certificate that covers `ip` (`--name`).
    ///
    /// # Errors
    ///
    /// Core did not come up.
    pub fn start_on(binary: &Path, data: &Path, ip: std::net::IpAddr) -> Result<CoreProcess> {
        let mut core = CoreProcess {
            process: None,
            binary: binary.to_path_buf(),
            data: data.to_path_buf(),
            port: crate::free_port()?,
            ip,
        };
        core.spawn()?;
        Ok(core)
    }

    /// Every line core printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// `IP:PORT` (`127.0.0.1:PORT` by default).
    pub fn addr(&self) -> String {
        std::net::SocketAddr::new(self.ip, self.port).to_string()
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Process::pid)
    }

    /// (Re)starts the process on the same port and data dir and waits until it is ready.
    ///
    /// # Errors
    ///
    /// Core cannot be started, exits at start, or does not come up in time.
    pub fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.binary);
        cmd.args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.addr()]);
        if !self.ip.is_loopback() {
            cmd.args(["--name", &self.ip.to_string()]);
        }
        for (key, _) in std::env::vars() {
            if key.starts_with("WHARF_") {
                cmd.env_remove(key);
            }
        }
        let mut process = Process::spawn("core", &mut cmd)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            process.check_running()?;
            if self.data.join("admin.token").exists()
                && std::net::TcpStream::connect((self.ip, self.port)).is_ok()
            {
                self.process = Some(process);
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("wharf-core did not start within {START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, and reap. [`CoreProcess::spawn`] starts it again.
    ///
    /// # Errors
    ///
    /// None today; kept for callers that expect a result.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.kill9();
        }
        Ok(())
    }

    /// The admin API token core wrote at its first start.
    ///
    /// # Errors
    ///
    /// The file cannot be read.
    pub fn admin_token(&self) -> Result<String> {
        let token = std::fs::read_to_string(self.data.join("admin.token"))
            .context("cannot read admin.token")?;
        Ok(token.trim().to_string())
    }

    /// Core's CA certificate (`ca.pem`).
    ///
    /// # Errors
    ///
    /// The file cannot be read.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        std::fs::read(self.data.join("ca.pem")).context("cannot read ca.pem")
    }

    /// An operator API client with the admin token.
    ///
    /// # Errors
    ///
    /// The token or CA cannot be read.
    pub fn api(&self) -> Result<CoreApi> {
        CoreApi::new(&self.addr(), &self.admin_token()?, &self.ca_pem()?)
    }
}
