//! The Wharf side of the benchmark: a real `wharf-core serve` and `wharf-agent-docker`
//! (built in release mode by `cargo bench`, or taken from `WHARF_BIN_DIR`), driven by the
//! `wharf` CLI exactly as a release engineer would: `wharf deploy ... --wait`.

use anyhow::{bail, Context, Result};
use wharf_testbed::cluster::{Binaries, Core, DockerAgent};

use crate::peers::Swapper;

/// Core and one Docker agent.
pub struct Cluster {
    agent: DockerAgent,
    core: Core,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts core and one enrolled Docker agent named `bench-<suffix>`.
    pub fn start(suffix: &str) -> Result<Cluster> {
        let binaries = Binaries::get()?;
        let dir = tempfile::tempdir()?;
        let core = Core::start(&binaries, &dir.path().join("core"))?;
        let agent = DockerAgent::enroll_and_start(
            &core,
            &format!("bench-{suffix}"),
            &dir.path().join("agent"),
        )?;
        Ok(Cluster {
            agent,
            core,
            _dir: dir,
        })
    }

    /// The agent's resident memory now, MiB.
    pub fn agent_rss_mib(&self) -> Result<f64> {
        Ok(self.agent.process.rss_kib()?.0 as f64 / 1024.0)
    }

    /// The agent's peak resident memory so far (VmHWM), MiB.
    pub fn agent_peak_rss_mib(&self) -> Result<f64> {
        Ok(self.agent.process.rss_kib()?.1 as f64 / 1024.0)
    }

    /// A swapper deploying to `target` with `--port 127.0.0.1:PORT:8080`.
    pub fn swapper(&self, target: String, port: u16, pull: bool) -> WharfDeploy<'_> {
        WharfDeploy {
            cluster: self,
            target,
            port,
            pull,
        }
    }
}

/// `wharf deploy --wait` onto one target.
pub struct WharfDeploy<'a> {
    cluster: &'a Cluster,
    target: String,
    port: u16,
    pull: bool,
}

impl Swapper for WharfDeploy<'_> {
    fn name(&self) -> &'static str {
        if self.pull {
            "Wharf deploy (pull)"
        } else {
            "Wharf deploy (local)"
        }
    }

    fn create(&mut self, image: &str) -> Result<()> {
        self.swap(image)
    }

    fn swap(&mut self, image: &str) -> Result<()> {
        let port = format!("127.0.0.1:{}:8080", self.port);
        let out = self.cluster.core.wharf(&[
            "deploy",
            "--agent",
            &self.cluster.agent.name,
            "--target",
            &self.target,
            "--image",
            image,
            "--port",
            &port,
            "--wait",
        ])?;
        if !out.status.success() {
            bail!(
                "wharf deploy failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn prepare_pull(&mut self, _image: &str) {
        remove_previous(&self.target);
    }

    fn remove(&mut self) {
        let previous = format!("{}-previous", self.target);
        let _ = wharf_testbed::docker::output(wharf_testbed::docker::command(None).args([
            "rm",
            "-f",
            &self.target,
            &previous,
        ]))
        .context("docker rm");
    }
}

/// Removes `<name>-previous` so the image it holds can be removed before a pull.
pub fn remove_previous(name: &str) {
    let previous = format!("{name}-previous");
    let _ = wharf_testbed::docker::output(
        wharf_testbed::docker::command(None).args(["rm", "-f", &previous]),
    );
}
