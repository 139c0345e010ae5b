//! The one-shot tasks: inspect, health-check, read-sticker, write-sticker.

use std::path::PathBuf;

use wharf_protocol::{AgentTask, ErrorType, HealthSpec, TaskResult, Timestamp};

use super::api::DockerApi;
use super::deploy::{check_sticker, running_digest};
use super::{failed, health, previous_name, DockerExecutor};
use crate::runtime::TaskContext;

impl<D: DockerApi> DockerExecutor<D> {
    fn sticker_path(&self, target: &str) -> Result<PathBuf, String> {
        wharf_sticker::docker_sticker_path(&self.config.state_dir, target)
            .map_err(|e| e.to_string())
    }

    /// Writes the sticker text as received (the signature covers those bytes), atomically.
    pub(super) fn store_sticker(&self, target: &str, text: &str) -> Result<(), String> {
        let path = self.sticker_path(target)?;
        wharf_sticker::write_atomic(&path, text.as_bytes())
            .map_err(|e| format!("cannot write the sticker: {e}"))
    }

    /// The raw sticker of `target`: `Ok(None)` when there is none.
    pub(super) fn load_sticker(&self, target: &str) -> Result<Option<String>, String> {
        let path = self.sticker_path(target)?;
        match wharf_sticker::read_bytes(&path) {
            Ok(bytes) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| format!("the sticker {} is not UTF-8 text", path.display())),
            Err(wharf_sticker::ReadError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    pub(super) async fn inspect(&self, task: &AgentTask, started_at: Timestamp) -> TaskResult {
        let name = task.target.as_str();
        let current = match self.docker.inspect_container(name).await {
            Ok(c) => c,
            Err(e) => {
                return failed(
                    task,
                    started_at,
                    ErrorType::Docker,
                    format!("cannot inspect {name}: {e}"),
                )
            }
        };
        let previous = self
            .docker
            .inspect_container(&previous_name(name))
            .await
            .ok()
            .flatten();
        let mut r = TaskResult::success(task.id, task.attempt, started_at);
        let out = &mut r.outputs;
        match self.load_sticker(name) {
            Ok(Some(text)) => {
                out.insert("sticker".into(), text);
            }
            Ok(None) => {}
            Err(e) => {
                out.insert("sticker_error".into(), e);
            }
        }
        if let Some(p) = &previous {
            out.insert("previous_container_id".into(), p.id.clone());
            out.insert("previous_state".into(), p.state.status.clone());
            if let Some(d) = running_digest(p) {
                out.insert("previous_digest".into(), d);
            }
        }
        let Some(c) = current else {
            out.insert("exists".into(), "false".into());
            let outputs = std::mem::take(&mut r.outputs);
            let mut f = failed(
                task,
                started_at,
                ErrorType::NotFound,
                format!("no container named {name} on this host"),
            );
            f.outputs = outputs;
            return f;
        };
        out.insert("exists".into(), "true".into());
        out.insert("container_id".into(), c.id.clone());
        out.insert("state".into(), c.state.status.clone());
        out.insert("running".into(), c.state.running.to_string());
        out.insert(
            "health".into(),
            c.state.health.map_or("none", |h| h.as_str()).to_owned(),
        );
        out.insert("image".into(), c.image.clone());
        out.insert("image_id".into(), c.image_id.clone());
        if let Some(d) = running_digest(&c) {
            out.insert("digest".into(), d);
        }
        // What the image really is, whatever the container's labels say: the audit
        // compares the sticker's digest against these.
        if let Ok(Some(image)) = self.docker.inspect_image(&c.image_id).await {
            out.insert(
                "image_digests".into(),
                serde_json::to_string(&image.repo_digests).unwrap_or_default(),
            );
        }
        if let Some(code) = c.state.exit_code {
            out.insert("exit_code".into(), code.to_string());
        }
        out.insert(
            "labels".into(),
            serde_json::to_string(&c.labels).unwrap_or_default(),
        );
        r
    }

    pub(super) async fn health_check(
        &self,
        task: &AgentTask,
        spec: &HealthSpec,
        ctx: &TaskContext,
        started_at: Timestamp,
    ) -> TaskResult {
        let name = task.target.as_str();
        ctx.progress("health-check", format!("probing {name}"));
        let begun = std::time::Instant::now();
        let outcome =
            health::wait_healthy(&self.docker, &self.http, name, spec, None, ctx.cancelled()).await;
        let mut r = match outcome {
            Ok(()) => {
                let mut r = TaskResult::success(task.id, task.attempt, started_at);
                r.outputs.insert("health".into(), "healthy".into());
                r
            }
            Err(health::HealthError::Cancelled { .. }) => {
                failed(task, started_at, ErrorType::Cancelled, "cancelled by core")
            }
            Err(e) => {
                let mut r = failed(task, started_at, ErrorType::HealthFailed, e.to_string());
                r.outputs.insert("health".into(), "unhealthy".into());
                r
            }
        };
        r.metrics.health_ms = u64::try_from(begun.elapsed().as_millis()).ok();
        r
    }

    pub(super) fn read_sticker(&self, task: &AgentTask, started_at: Timestamp) -> TaskResult {
        match self.load_sticker(&task.target) {
            Ok(Some(text)) => {
                let mut r = TaskResult::success(task.id, task.attempt, started_at);
                r.outputs.insert("sticker".into(), text);
                r
            }
            Ok(None) => failed(
                task,
                started_at,
                ErrorType::NotFound,
                format!(
                    "no sticker for {} on this agent: nothing was deployed there by Wharf, or \
                     the sticker was deleted",
                    task.target
                ),
            ),
            Err(e) => failed(task, started_at, ErrorType::StickerInvalid, e),
        }
    }

    pub(super) fn write_sticker(
        &self,
        task: &AgentTask,
        text: &str,
        started_at: Timestamp,
    ) -> TaskResult {
        if let Err(e) = check_sticker(&task.target, text, None) {
            return failed(
                task,
                started_at,
                ErrorType::StickerInvalid,
                format!("{e}; nothing was written"),
            );
        }
        match self.store_sticker(&task.target, text) {
            Ok(()) => TaskResult::success(task.id, task.attempt, started_at),
            Err(e) => failed(task, started_at, ErrorType::StickerInvalid, e),
        }
    }
}
