//! A Wharf cluster on this machine, made of the real programs: `wharf-core serve`, one or
//! more `wharf-agent-docker` / `wharf-agent-compose` processes, and the `wharf` CLI to
//! drive them. Used by the end-to-end tests, the demo and the benchmarks.
//!
//! Everything is a child process with its own data/state directory under a temporary
//! directory; processes are killed (SIGKILL) and directories removed on drop. Blocking
//! (std processes); call from `spawn_blocking` in async code.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::core::CoreProcess;

/// How long a process may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness conditions are re-checked.
const POLL: Duration = Duration::from_millis(50);

/// Where the Wharf programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `wharf-core`.
    pub core: PathBuf,
    /// `wharf-agent-docker`.
    pub agent_docker: PathBuf,
    /// `wharf-agent-compose`.
    pub agent_compose: PathBuf,
    /// `wharf`.
    pub cli: PathBuf,
}

impl Binaries {
    /// The programs in `dir` (e.g. `target/debug`).
    pub fn in_dir(dir: &Path) -> Binaries {
        Binaries {
            core: dir.join("wharf-core"),
            agent_docker: dir.join("wharf-agent-docker"),
            agent_compose: dir.join("wharf-agent-compose"),
            cli: dir.join("wharf"),
        }
    }

    /// `WHARF_BIN_DIR` if set, else the programs built now by `cargo build` of this
    /// workspace (once per process; a no-op when they are up to date), `--release` when
    /// this crate itself is an optimised build (benchmarks), with the agent's
    /// fault-injection points otherwise (inert unless `WHARF_FAULT_PAUSE_AT` is set).
    pub fn get() -> Result<Binaries> {
        static BUILT: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
        if let Some(dir) = std::env::var_os("WHARF_BIN_DIR") {
            return Ok(Binaries::in_dir(Path::new(&dir)));
        }
        BUILT
            .get_or_init(|| build().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)
    }
}

/// `cargo build` of the four programs; returns where cargo put them.
fn build() -> Result<Binaries> {
    // A benchmark (optimised build of this crate) measures optimised programs; tests
    // (debug builds) get the agent's fault-injection points, as `cargo test` builds it.
    // (Two builds: `--features pkg/feature` next to a second `-p` is not reliable.)
    let profile: &[&str] = if cfg!(debug_assertions) {
        &[]
    } else {
        &["--release"]
    };
    let mut core_args = vec!["-p", "wharf-core", "--bin", "wharf-core", "--bin", "wharf"];
    core_args.extend(profile);
    let mut found = crate::core::cargo_build_all(&core_args)?;
    for agent in ["wharf-agent-docker", "wharf-agent-compose"] {
        let mut agent_args = vec!["-p", agent, "--bin", agent];
        agent_args.extend(profile);
        if cfg!(debug_assertions) {
            agent_args.extend(["--features", "fault-injection"]);
        }
        found.extend(crate::core::cargo_build_all(&agent_args)?);
    }
    let take = |name: &str| {
        found
            .get(name)
            .cloned()
            .with_context(|| format!("cargo did not report the {name} executable"))
    };
    Ok(Binaries {
        core: take("wharf-core")?,
        agent_docker: take("wharf-agent-docker")?,
        agent_compose: take("wharf-agent-compose")?,
        cli: take("wharf")?,
    })
}

/// A child process killed (SIGKILL) and reaped on drop, its output lines collected.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    name: String,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr captured into [`Process::output`] (and echoed
    /// to this process's stderr with a `[name]` prefix when `WHARF_CLUSTER_ECHO=1`).
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Process> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let echo = std::env::var("WHARF_CLUSTER_ECHO").as_deref() == Ok("1");
        let pipes: [Option<Box<dyn std::io::Read + Send>>; 2] = [
            child.stdout.take().map(|p| Box::new(p) as _),
            child.stderr.take().map(|p| Box::new(p) as _),
        ];
        for pipe in pipes.into_iter().flatten() {
            let lines = lines.clone();
            let prefix = name.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(|l| l.ok()) {
                    if echo {
                        eprintln!("[{prefix}] {line}");
                    }
                    lines
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(line);
                }
            });
        }
        Ok(Process {
            child: Some(child),
            lines,
            name: name.to_string(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Every line it printed so far (stdout and stderr interleaved as read).
    pub fn output(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until a printed line satisfies `pred`; fails if the process exits first or
    /// `timeout` passes. Returns the line.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().find(|l| pred(l)) {
                return Ok(line);
            }
            self.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not print the expected line within {timeout:?}; its output:\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Fails (with its output) if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} was stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); its output:\n{}",
                self.name,
                self.output().join("\n")
            );
        }
        Ok(())
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `grace` for the exit (SIGKILL after it). Returns the exit
    /// status if it exited by itself.
    pub fn terminate(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(POLL);
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Resident memory now and its peak (VmRSS, VmHWM) in KiB, from /proc.
    pub fn rss_kib(&self) -> Result<(u64, u64)> {
        let pid = self.pid().context("process is not running")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .with_context(|| format!("no {name} in /proc/{pid}/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `wharf-core serve` with its own data dir and port, and the `wharf` CLI
/// pointed at it.
#[derive(Debug)]
pub struct Core {
    /// The process.
    pub process: CoreProcess,
    binaries: Binaries,
}

impl Core {
    /// Starts core on a free 127.0.0.1 port with `data_dir` (created if missing).
    pub fn start(binaries: &Binaries, data_dir: &Path) -> Result<Core> {
        std::fs::create_dir_all(data_dir)?;
        Ok(Core {
            process: CoreProcess::start_with(&binaries.core, data_dir)?,
            binaries: binaries.clone(),
        })
    }

    /// [`Core::start`] listening on `ip` of this host (e.g. the host end of a veth pair).
    pub fn start_on(binaries: &Binaries, data_dir: &Path, ip: std::net::IpAddr) -> Result<Core> {
        std::fs::create_dir_all(data_dir)?;
        Ok(Core {
            process: CoreProcess::start_on(&binaries.core, data_dir, ip)?,
            binaries: binaries.clone(),
        })
    }

    /// kill -9 and start again on the same data dir and port.
    pub fn restart_after_kill9(&mut self) -> Result<()> {
        self.process.kill9()?;
        self.process.spawn()
    }

    /// `127.0.0.1:PORT`, the address agents dial.
    pub fn addr(&self) -> String {
        self.process.addr()
    }

    /// The operator API URL.
    pub fn url(&self) -> String {
        format!("https://{}", self.process.addr())
    }

    /// Core's data dir.
    pub fn data_dir(&self) -> &Path {
        &self.process.data
    }

    /// A `wharf` CLI command with `WHARF_URL`, `WHARF_TOKEN` (the admin token) and
    /// `WHARF_CA` set.
    pub fn cli(&self) -> Result<Command> {
        let token = self.process.admin_token()?;
        let mut cmd = Command::new(&self.binaries.cli);
        scrub_env(&mut cmd);
        cmd.env("WHARF_URL", self.url())
            .env("WHARF_TOKEN", token)
            .env("WHARF_CA", self.data_dir().join("ca.pem"))
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Runs `wharf ARGS...` and returns its output, whatever the exit status.
    pub fn wharf(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.cli()?;
        cmd.args(args);
        cmd.output().context("cannot run wharf")
    }

    /// Runs `wharf ARGS... --output json`, requires exit 0 and parses stdout.
    pub fn wharf_json(&self, args: &[&str]) -> Result<Value> {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.wharf(&all)?;
        if !out.status.success() {
            bail!(
                "`wharf {}` failed ({}): {}",
                all.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("`wharf {}` printed no JSON", all.join(" ")))
    }

    /// `wharf registry login HOST --username USER --password-stdin`, the password
    /// written to its stdin (never an argument); requires exit 0.
    pub fn registry_login(&self, host: &str, username: &str, password: &str) -> Result<()> {
        use std::io::Write;
        let mut login = self.cli()?;
        login
            .args(["registry", "login", host, "--username", username])
            .arg("--password-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = login.spawn().context("cannot run wharf registry login")?;
        child
            .stdin
            .take()
            .context("no stdin for wharf registry login")?
            .write_all(password.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "wharf registry login {host} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// An agent's entry in `wharf agent list`, if it is there.
    pub fn agent_entry(&self, name: &str) -> Result<Option<Value>> {
        let list = self.wharf_json(&["agent", "list"])?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["name"] == name)
            .cloned())
    }

    /// Waits until `wharf agent list` shows the agent in `state` (`online`, `offline`).
    pub fn wait_agent_state(&self, name: &str, state: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let entry = self.agent_entry(name)?;
            if entry.as_ref().is_some_and(|a| a["state"] == state) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("agent {name} is not {state} within {timeout:?}: {entry:?}");
            }
            std::thread::sleep(POLL);
        }
    }
}

/// A running `wharf-agent-docker` with its own state dir.
#[derive(Debug)]
pub struct DockerAgent {
    /// The process.
    pub process: Process,
    /// The agent's name.
    pub name: String,
    launch: AgentLaunch,
}

/// How an agent process is started.
#[derive(Debug)]
struct AgentLaunch {
    name: String,
    state_dir: PathBuf,
    core_addr: String,
    program: PathBuf,
    extra_env: Vec<(String, String)>,
    extra_args: Vec<String>,
    /// A command the agent runs under (e.g. `ip netns exec NS`).
    wrapper: Vec<String>,
}

/// How [`DockerAgent::enroll_and_start_with`] starts an agent.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Extra environment variables (e.g. fault-injection switches of test builds).
    pub env: Vec<(String, String)>,
    /// Extra arguments (e.g. `--transport poll`).
    pub args: Vec<String>,
    /// A command to run the agent under (e.g. `["ip", "netns", "exec", "NS"]`).
    pub wrapper: Vec<String>,
}

impl AgentLaunch {
    fn spawn(&self, enroll: Option<(&str, &str)>) -> Result<Process> {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut cmd = Command::new(first);
                cmd.args(rest).arg(&self.program);
                cmd
            }
            None => Command::new(&self.program),
        };
        scrub_env(&mut cmd);
        cmd.args(&self.extra_args)
            .args([
                "--core",
                &self.core_addr,
                "--name",
                &self.name,
                "--state-dir",
            ])
            .arg(&self.state_dir)
            .env("RUST_LOG", "info");
        if let Some((token, ca_hash)) = enroll {
            cmd.env("WHARF_AGENT_TOKEN", token)
                .args(["--ca-hash", ca_hash]);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        Process::spawn(&format!("agent {}", self.name), &mut cmd)
    }
}

impl AgentLaunch {
    /// kill -9 of `process`, then a start from the state dir with `env` as the extra
    /// environment.
    fn restart(&mut self, process: &mut Process, env: &[(&str, &str)]) -> Result<()> {
        process.kill9();
        self.extra_env = owned_env(env);
        *process = self.spawn(None)?;
        Ok(())
    }
}

fn owned_env(env: &[(&str, &str)]) -> Vec<(String, String)> {
    env.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl DockerAgent {
    /// Creates an enrollment token on `core`, starts the agent with it and waits until
    /// core lists it online.
    pub fn enroll_and_start(core: &Core, name: &str, state_dir: &Path) -> Result<DockerAgent> {
        DockerAgent::enroll_and_start_with_env(core, name, state_dir, &[])
    }

    /// [`DockerAgent::enroll_and_start`] with extra environment variables for the agent
    /// (e.g. fault-injection switches of test builds).
    pub fn enroll_and_start_with_env(
        core: &Core,
        name: &str,
        state_dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<DockerAgent> {
        let options = AgentOptions {
            env: owned_env(env),
            ..AgentOptions::default()
        };
        DockerAgent::enroll_and_start_with(core, name, state_dir, &options)
    }

    /// [`DockerAgent::enroll_and_start`] with extra environment, arguments and a wrapper
    /// command.
    pub fn enroll_and_start_with(
        core: &Core,
        name: &str,
        state_dir: &Path,
        options: &AgentOptions,
    ) -> Result<DockerAgent> {
        let launch = AgentLaunch {
            name: name.to_string(),
            state_dir: state_dir.to_path_buf(),
            core_addr: core.addr(),
            program: core.binaries.agent_docker.clone(),
            extra_env: options.env.clone(),
            extra_args: options.args.clone(),
            wrapper: options.wrapper.clone(),
        };
        let process = enroll_and_spawn(core, &launch)?;
        Ok(DockerAgent {
            process,
            name: name.to_string(),
            launch,
        })
    }

    /// Starts the agent again (after a kill) from its state dir, with `env` replacing the
    /// extra environment given at the first start.
    pub fn restart(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.launch.restart(&mut self.process, env)
    }

    /// The agent's state dir.
    pub fn state_dir(&self) -> &Path {
        &self.launch.state_dir
    }
}

/// A running `wharf-agent-compose` with its own state dir and deploy root.
#[derive(Debug)]
pub struct ComposeAgent {
    /// The process.
    pub process: Process,
    /// The agent's name.
    pub name: String,
    deploy_root: PathBuf,
    launch: AgentLaunch,
}

impl ComposeAgent {
    /// Creates an enrollment token on `core`, starts the agent with it (`--deploy-root
    /// deploy_root`, `options` added) and waits until core lists it online.
    pub fn enroll_and_start(
        core: &Core,
        name: &str,
        state_dir: &Path,
        deploy_root: &Path,
        options: &AgentOptions,
    ) -> Result<ComposeAgent> {
        let mut args = vec!["--deploy-root".to_string(), path_arg(deploy_root)?];
        args.extend(options.args.iter().cloned());
        let launch = AgentLaunch {
            name: name.to_string(),
            state_dir: state_dir.to_path_buf(),
            core_addr: core.addr(),
            program: core.binaries.agent_compose.clone(),
            extra_env: options.env.clone(),
            extra_args: args,
            wrapper: options.wrapper.clone(),
        };
        let process = enroll_and_spawn(core, &launch)?;
        Ok(ComposeAgent {
            process,
            name: name.to_string(),
            deploy_root: deploy_root.to_path_buf(),
            launch,
        })
    }

    /// kill -9, then starts the agent again from its state dir, with `env` replacing the
    /// extra environment given at the first start.
    pub fn restart(&mut self, env: &[(&str, &str)]) -> Result<()> {
        self.launch.restart(&mut self.process, env)
    }

    /// The agent's state dir.
    pub fn state_dir(&self) -> &Path {
        &self.launch.state_dir
    }

    /// The deploy root (`<deploy-root>/<project>/` per project).
    pub fn deploy_root(&self) -> &Path {
        &self.deploy_root
    }
}

fn path_arg(path: &Path) -> Result<String> {
    path.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8; use another directory", path.display()))
}

/// Creates an enrollment token for `launch.name`, starts the agent with it and waits until
/// core lists it online.
fn enroll_and_spawn(core: &Core, launch: &AgentLaunch) -> Result<Process> {
    let grant = core.wharf_json(&["agent", "token", "create", "--name", &launch.name])?;
    let token = grant["token"]
        .as_str()
        .context("token create printed no token")?;
    let ca_hash = grant["ca_hash"]
        .as_str()
        .context("token create printed no ca_hash")?;
    let process = launch.spawn(Some((token, ca_hash)))?;
    core.wait_agent_state(&launch.name, "online", START_TIMEOUT)?;
    Ok(process)
}

/// Removes inherited `WHARF_*` variables so a child sees only what the cluster sets.
fn scrub_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("WHARF_")) {
            cmd.env_remove(key);
        }
    }
}
