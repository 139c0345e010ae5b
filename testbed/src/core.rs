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

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

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
        .args([
            "build",
            "--locked",
            "-p",
            package,
            &format!("--{kind}"),
            name,
        ])
        .arg("--message-format=json")
        .current_dir(&workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build -p {package} --{kind} {name} failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo did not report the {name} executable"))
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

/// A `wharf-core serve` child on 127.0.0.1 with a fixed port and data dir; killed on
/// drop. Its stdout is drained (so it never blocks), its stderr goes to the test's.
#[derive(Debug)]
pub struct CoreProcess {
    child: Option<Child>,
    /// The data dir.
    pub data: PathBuf,
    /// The TCP (HTTPS) and UDP (QUIC) port.
    pub port: u16,
}

impl CoreProcess {
    /// Starts core on `data` (created by core if missing) and a free port; returns once it
    /// answers on TCP and its admin token exists.
    ///
    /// # Errors
    ///
    /// The build failed, or core did not come up.
    pub fn start(data: &Path) -> Result<CoreProcess> {
        let mut core = CoreProcess {
            child: None,
            data: data.to_path_buf(),
            port: crate::free_port()?,
        };
        core.spawn()?;
        Ok(core)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The child's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts the process on the same port and data dir and waits until it is ready.
    ///
    /// # Errors
    ///
    /// Core cannot be started, exits at start, or does not come up in time.
    pub fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(core_binary()?);
        cmd.args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.addr()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (key, _) in std::env::vars() {
            if key.starts_with("WHARF_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().context("cannot start wharf-core")?;
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(
                move || for _ in BufReader::new(stdout).lines().map_while(Result::ok) {},
            );
        }
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("wharf-core exited at start: {status}");
                }
            }
            if self.data.join("admin.token").exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
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
    /// The signal or the wait failed.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
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

impl Drop for CoreProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
