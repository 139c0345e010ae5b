//! A real `wharf-core serve` child process (release build) on 127.0.0.1, its resident
//! memory, and a small HTTPS client for `/metrics`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use wharf_core::pki::{operator_client_config, ALPN_HTTP11};
use wharf_testbed::simagent::CoreApi;

/// [`core_binary`] off the async runtime (the build takes minutes).
pub async fn core_binary_async(workspace: &Path) -> Result<PathBuf> {
    let workspace = workspace.to_path_buf();
    tokio::task::spawn_blocking(move || core_binary(&workspace)).await?
}

/// The `wharf-core` binary: `WHARF_CORE_BIN` if set, else built now with
/// `cargo build --release --locked -p wharf-core --bin wharf-core`.
pub fn core_binary(workspace: &Path) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("WHARF_CORE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // `cargo bench` sets the package's variables (CARGO_PKG_NAME...); build scripts that
    // watch them (ring's) would rebuild here and again on the next plain build.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_") && !matches!(key, "CARGO_HOME" | "CARGO_TARGET_DIR") {
            cmd.env_remove(key);
        }
    }
    let out = cmd
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "wharf-core",
            "--bin",
            "wharf-core",
            "--message-format=json",
        ])
        .current_dir(workspace)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build of wharf-core failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "wharf-core")
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the wharf-core executable")
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rss {
    /// `VmRSS`, bytes.
    pub rss: u64,
    /// `VmHWM` (peak RSS), bytes.
    pub hwm: u64,
}

/// `VmRSS` and `VmHWM` of `pid` (`"self"` for this process).
pub fn rss_of(pid: &str) -> Result<Rss> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    Ok(Rss {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
    })
}

/// CPU time (user + system) a process used so far, in seconds (`"self"` for this
/// process), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// CPU seconds used by core and by this process between two points.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    pub core: f64,
    pub sim: f64,
    pub wall: f64,
}

impl CpuUse {
    /// `core X s + sim agents Y s in Z s` (and the share of the machine).
    pub fn brief(&self) -> String {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let share = if self.wall > 0.0 {
            100.0 * (self.core + self.sim) / (self.wall * cpus)
        } else {
            0.0
        };
        format!(
            "core {:.1} s + benchmark {:.1} s in {:.1} s wall ({share:.0} % of {cpus:.0} CPUs)",
            self.core, self.sim, self.wall
        )
    }
}

/// Measures [`CpuUse`] from now on.
pub struct CpuMeter {
    core_pid: String,
    core: f64,
    sim: f64,
    started: std::time::Instant,
}

impl CpuMeter {
    pub fn start(core_pid: u32) -> CpuMeter {
        let core_pid = core_pid.to_string();
        CpuMeter {
            core: cpu_seconds(&core_pid).unwrap_or(0.0),
            sim: cpu_seconds("self").unwrap_or(0.0),
            core_pid,
            started: std::time::Instant::now(),
        }
    }

    pub fn read(&self) -> CpuUse {
        CpuUse {
            core: cpu_seconds(&self.core_pid).unwrap_or(0.0) - self.core,
            sim: cpu_seconds("self").unwrap_or(0.0) - self.sim,
            wall: self.started.elapsed().as_secs_f64(),
        }
    }
}

/// A `wharf-core serve` child on a fixed port and data dir; killed on drop. Its stdout
/// and stderr go to `core.log` next to the data dir.
pub struct CoreProcess {
    bin: PathBuf,
    child: Option<Child>,
    /// The data dir.
    pub data: PathBuf,
    /// TCP (HTTPS) and UDP (QUIC) port on 127.0.0.1.
    pub port: u16,
    log: PathBuf,
}

impl CoreProcess {
    /// Starts core on `data` (created by core if missing) and a free port; returns once it
    /// answers on TCP and its admin token exists.
    pub fn start(bin: &Path, data: &Path) -> Result<CoreProcess> {
        let port = wharf_testbed::free_port()?;
        let log = data.with_extension("log");
        let mut core = CoreProcess {
            bin: bin.to_path_buf(),
            child: None,
            data: data.to_path_buf(),
            port,
            log,
        };
        core.spawn()?;
        Ok(core)
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// (Re)starts the process on the same port and data dir; waits until it is ready.
    pub fn spawn(&mut self) -> Result<Duration> {
        let started = Instant::now();
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("cannot open {}", self.log.display()))?;
        writeln!(log, "---- wharf-core serve (benchmark) ----")?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "--data-dir"])
            .arg(&self.data)
            .args(["--listen", &self.addr()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (key, _) in std::env::vars() {
            if key.starts_with("WHARF_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready()?;
        Ok(started.elapsed())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "wharf-core exited at start ({status}); see {}",
                        self.log.display()
                    );
                }
            }
            if self.data.join("admin.token").exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("wharf-core did not start; see {}", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM (a clean shutdown), then SIGKILL after 20 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Resident memory of the core process.
    pub fn rss(&self) -> Result<Rss> {
        let pid = self.pid().context("wharf-core is not running")?;
        rss_of(&pid.to_string())
    }

    /// An operator API client with the admin token.
    pub fn api(&self) -> Result<CoreApi> {
        let token = std::fs::read_to_string(self.data.join("admin.token"))?;
        let ca = std::fs::read(self.data.join("ca.pem"))?;
        CoreApi::new(&self.addr(), token.trim(), &ca)
    }

    /// A client for `/metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let ca = std::fs::read(self.data.join("ca.pem"))?;
        let tls = operator_client_config(&ca, &[ALPN_HTTP11])?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Metrics {
            url: format!("https://{}/metrics", self.addr()),
            client,
        })
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

/// Reads values from core's `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    url: String,
    client: reqwest::Client,
}

impl Metrics {
    /// The value of the sample line `name` (no labels), if core answers.
    pub async fn value(&self, name: &str) -> Option<f64> {
        let text = self
            .client
            .get(&self.url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// `wharf_quic_sessions_active`.
    pub async fn sessions_active(&self) -> Option<u64> {
        self.value("wharf_quic_sessions_active")
            .await
            .map(|v| v as u64)
    }
}
