//! Pre/post-deploy hook runner for Wharf agents (design.md §5).
//!
//! - [`contract`]: the JSON a hook reads on stdin ([`HookInput`]) and prints on stdout
//!   ([`HookOutput`]), and what a successful run reports ([`HookReport`]);
//! - [`HookRunner`]: the trait executors call, so that they can be unit-tested with a
//!   fake; [`Hooks`] is the real one, dispatching to
//! - [`ContainerHooks`]: a sandboxed container (no network, read-only root, memory, CPU and
//!   process limits, every capability dropped, no-new-privileges, no mounts, removed
//!   afterwards) from an image pulled by digest, and
//! - [`HostHooks`]: a host program, only when the agent allows host hooks.
//!
//! Both run the same contract with the same limits: stdout capped at
//! [`MAX_STDOUT`], the hook killed past its timeout, and anything but exit 0 with valid
//! JSON saying `ok: true` is a failure ([`HookError`]) carrying the hook's message and its
//! last lines of output.

#![warn(missing_docs)]

pub mod container;
pub mod contract;
pub mod host;
mod output;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use wharf_protocol::seal::RegistryCredentials;
use wharf_protocol::{ErrorType, HookSource, HookSpec, ImageRef};

pub use container::{ContainerHooks, SandboxLimits};
pub use contract::{HookInput, HookOutput, HookReport, Phase};
pub use host::HostHooks;
pub use output::{MAX_STDOUT, TAIL_LINES};

/// A boxed future, so that [`HookRunner`] can be used as `dyn HookRunner`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One hook to run: what, with which input, and the task's registry credentials (used
/// only if they are for the hook image's registry).
#[derive(Debug, Clone, Copy)]
pub struct HookRequest<'a> {
    /// The hook.
    pub spec: &'a HookSpec,
    /// The JSON written to its stdin.
    pub input: &'a HookInput,
    /// The task's registry credentials, if any.
    pub credentials: Option<&'a RegistryCredentials>,
}

/// Runs hooks. [`Hooks`] is the real runner; executors hold an `Arc<dyn HookRunner>`.
pub trait HookRunner: Send + Sync + fmt::Debug {
    /// Whether `spec` may run here, checked before a task changes anything:
    /// [`HookError::HostHooksDisabled`] for a host command without `--allow-host-hooks`,
    /// [`HookError::InvalidSpec`] for an unpinned image, an empty command or a zero
    /// timeout.
    fn check(&self, spec: &HookSpec) -> Result<(), HookError>;

    /// Runs the hook to completion (or its timeout) and reports its answer.
    fn run<'a>(&'a self, request: HookRequest<'a>) -> BoxFuture<'a, Result<HookReport, HookError>>;

    /// Whether host-command hooks are allowed (the `host-hooks` capability).
    fn allows_host_hooks(&self) -> bool;
}

/// Why a hook did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// A host-command hook on an agent started without `--allow-host-hooks`.
    #[error(
        "the hook runs a host command ({command}), but this agent does not run host-command \
         hooks: start it with --allow-host-hooks to allow them, or use a hook image \
         (IMAGE@sha256:DIGEST) instead"
    )]
    HostHooksDisabled {
        /// The program asked for.
        command: String,
    },
    /// The hook itself is not runnable (unpinned image, empty command, zero timeout).
    #[error("the hook is invalid: {0}")]
    InvalidSpec(String),
    /// The hook image could not be pulled.
    #[error(
        "pulling the hook image {image} failed: {reason}; check that it is pushed to its registry"
    )]
    Pull {
        /// The pinned reference.
        image: String,
        /// What Docker said.
        reason: String,
    },
    /// The registry refused the pull of the hook image.
    #[error(
        "the registry refused the pull of the hook image {image}: {reason}; check the \
         credentials stored with `wharf registry login`"
    )]
    RegistryAuth {
        /// The pinned reference.
        image: String,
        /// What Docker said.
        reason: String,
    },
    /// After the pull, the local image does not carry the requested digest.
    #[error(
        "the hook image {image} is not the pulled image: Docker lists RepoDigests {repo_digests:?}"
    )]
    DigestMismatch {
        /// The pinned reference.
        image: String,
        /// What Docker lists.
        repo_digests: Vec<String>,
    },
    /// The Docker engine failed around the hook container.
    #[error("Docker failed running the hook container: {0}")]
    Docker(String),
    /// The host program could not be started.
    #[error("cannot start the host hook {program}: {reason}; check the path and permissions")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        reason: String,
    },
    /// The hook ran past its timeout and was killed.
    #[error("the hook did not finish within its timeout of {}s and was killed{}", timeout.as_secs_f64(), output::tail_text(logs))]
    TimedOut {
        /// The hook's timeout.
        timeout: Duration,
        /// Its last lines of output.
        logs: Vec<String>,
    },
    /// The hook printed more than [`MAX_STDOUT`] on stdout.
    #[error(
        "the hook's output over 1 MiB (stdout is capped at {MAX_STDOUT} bytes); it was stopped{}",
        output::tail_text(logs)
    )]
    OutputTooLarge {
        /// Its last lines of output.
        logs: Vec<String>,
    },
    /// Stdout was not the contract's JSON.
    #[error(
        "the hook's output is not valid JSON {{\"ok\":..,\"message\":..,\"outputs\":{{..}}}}: \
         {reason}{}",
        output::tail_text(logs)
    )]
    BadOutput {
        /// Why it did not parse.
        reason: String,
        /// Its last lines of output.
        logs: Vec<String>,
    },
    /// The hook answered `ok: false`, or exited with a non-zero status.
    #[error("the hook failed{}: {message}{}", exit_code.map(|c| format!(" (exit status {c})")).unwrap_or_default(), output::tail_text(logs))]
    Failed {
        /// The hook's message (or a description of its exit).
        message: String,
        /// Its exit status, if it was not 0.
        exit_code: Option<i64>,
        /// The outputs it reported, if its JSON was valid.
        outputs: std::collections::BTreeMap<String, String>,
        /// Its last lines of output.
        logs: Vec<String>,
    },
}

impl HookError {
    /// The task error class: [`ErrorType::InvalidInput`] when the hook could not be run
    /// at all as given, pull classes for the image, [`ErrorType::HookFailed`] otherwise.
    pub fn error_type(&self) -> ErrorType {
        match self {
            HookError::HostHooksDisabled { .. } | HookError::InvalidSpec(_) => {
                ErrorType::InvalidInput
            }
            HookError::Pull { .. } => ErrorType::PullFailed,
            HookError::RegistryAuth { .. } => ErrorType::RegistryAuth,
            HookError::DigestMismatch { .. } => ErrorType::DigestMismatch,
            _ => ErrorType::HookFailed,
        }
    }

    /// The hook's last lines of output, if it ran.
    pub fn logs(&self) -> &[String] {
        match self {
            HookError::TimedOut { logs, .. }
            | HookError::OutputTooLarge { logs }
            | HookError::BadOutput { logs, .. }
            | HookError::Failed { logs, .. } => logs,
            _ => &[],
        }
    }
}

/// Checks what both runners need: a positive timeout; a pinned image or a non-empty
/// command.
pub fn check_spec(spec: &HookSpec) -> Result<(), HookError> {
    if spec.timeout.as_millis() == 0 {
        return Err(HookError::InvalidSpec(
            "its timeout is 0; give a positive timeout (default 5 minutes)".into(),
        ));
    }
    if let Some(key) = spec
        .env
        .keys()
        .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
    {
        return Err(HookError::InvalidSpec(format!(
            "environment variable name {key:?} must be non-empty without `=`"
        )));
    }
    match &spec.source {
        HookSource::Image(image) => ImageRef::parse(image).map(|_| ()).map_err(|e| {
            HookError::InvalidSpec(format!("its image must be IMAGE@sha256:DIGEST: {e}"))
        }),
        HookSource::HostCommand(argv) => match argv.first() {
            Some(p) if !p.is_empty() && !p.contains('\0') => Ok(()),
            _ => Err(HookError::InvalidSpec(
                "its host command is empty; give the program and its arguments".into(),
            )),
        },
    }
}

/// The real runner: container hooks on the Docker engine, host-command hooks when
/// allowed.
#[derive(Debug, Clone)]
pub struct Hooks {
    containers: ContainerHooks,
    host: Option<HostHooks>,
}

impl Hooks {
    /// Container hooks on `docker` (already version-negotiated) with the default
    /// [`SandboxLimits`]; host-command hooks only if `allow_host_hooks`.
    pub fn new(docker: bollard::Docker, allow_host_hooks: bool) -> Self {
        Hooks {
            containers: ContainerHooks::new(docker),
            host: allow_host_hooks.then(HostHooks::new),
        }
    }

    /// The same runner with other sandbox limits for container hooks.
    pub fn with_limits(mut self, limits: SandboxLimits) -> Self {
        self.containers = self.containers.with_limits(limits);
        self
    }
}

impl HookRunner for Hooks {
    fn check(&self, spec: &HookSpec) -> Result<(), HookError> {
        check_spec(spec)?;
        match (&spec.source, &self.host) {
            (HookSource::HostCommand(argv), None) => Err(HookError::HostHooksDisabled {
                command: argv.first().cloned().unwrap_or_default(),
            }),
            _ => Ok(()),
        }
    }

    fn run<'a>(&'a self, request: HookRequest<'a>) -> BoxFuture<'a, Result<HookReport, HookError>> {
        Box::pin(async move {
            self.check(request.spec)?;
            match (&request.spec.source, &self.host) {
                (HookSource::Image(_), _) => self.containers.run(request).await,
                (HookSource::HostCommand(_), Some(host)) => host.run(request).await,
                (HookSource::HostCommand(argv), None) => Err(HookError::HostHooksDisabled {
                    command: argv.first().cloned().unwrap_or_default(),
                }),
            }
        })
    }

    fn allows_host_hooks(&self) -> bool {
        self.host.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_protocol::DurationMs;

    #[test]
    fn specs_are_checked() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert!(check_spec(&HookSpec::image(format!("r/x@{d}"))).is_ok());
        assert!(matches!(
            check_spec(&HookSpec::image("r/x:latest")),
            Err(HookError::InvalidSpec(_))
        ));
        assert!(matches!(
            check_spec(&HookSpec::host_command(vec![])),
            Err(HookError::InvalidSpec(_))
        ));
        let mut zero = HookSpec::host_command(vec!["/bin/true".into()]);
        zero.timeout = DurationMs::ZERO;
        assert!(matches!(check_spec(&zero), Err(HookError::InvalidSpec(_))));
        let mut env = HookSpec::host_command(vec!["/bin/true".into()]);
        env.env.insert("A=B".into(), "x".into());
        assert!(check_spec(&env).is_err());
    }

    #[test]
    fn error_classes() {
        let e = HookError::HostHooksDisabled {
            command: "/bin/x".into(),
        };
        assert_eq!(e.error_type(), ErrorType::InvalidInput);
        assert!(e.to_string().contains("--allow-host-hooks"));
        let e = HookError::TimedOut {
            timeout: Duration::from_secs(2),
            logs: vec!["last words".into()],
        };
        assert_eq!(e.error_type(), ErrorType::HookFailed);
        assert!(e.to_string().contains("last words"), "{e}");
        assert_eq!(e.logs(), ["last words".to_owned()]);
    }
}
