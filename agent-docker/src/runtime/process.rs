//! What both agent binaries share around [`super::run`]: the stop signal, the default
//! agent name and the exit codes of design §7.

use super::RuntimeError;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The kernel's host name.
pub fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    let name = name.trim();
    anyhow::ensure!(!name.is_empty(), "the host name is empty");
    Ok(name.to_string())
}

/// The exit codes of design §7 where they apply: 2 invalid input, 3 refused by core
/// (enrollment refused, upgrade required), 1 otherwise.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<RuntimeError>() {
        Some(RuntimeError::InvalidInput(_)) => 2,
        Some(RuntimeError::EnrollmentRefused(_) | RuntimeError::UpgradeRequired { .. }) => 3,
        _ => 1,
    }
}
