//! Leftover Compose processes of a killed agent run: found by their project directory
//! marker in `/proc`, killed, and waited for (real processes; no Docker needed).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use wharf_agent_compose::host::{leftover_processes, stop_leftovers, PROJECT_DIR_ENV};

/// A `sleep` carrying the marker of `dir`, killed and reaped on drop.
struct Sleeper(Child);

impl Sleeper {
    fn start(dir: &std::path::Path) -> Sleeper {
        Sleeper(
            Command::new("sleep")
                .arg("600")
                .env(PROJECT_DIR_ENV, dir)
                .stdin(Stdio::null())
                .spawn()
                .expect("sleep"),
        )
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn leftovers_of_the_project_are_found_killed_and_waited_for_others_are_left_alone() {
    let root = tempfile::tempdir().unwrap();
    let mine = root.path().join("shop");
    let other = root.path().join("shop2");
    let mut a = Sleeper::start(&mine);
    let mut b = Sleeper::start(&mine);
    let mut c = Sleeper::start(&other);
    let mut expected = vec![a.0.id(), b.0.id()];
    expected.sort_unstable();
    assert_eq!(leftover_processes(&mine), expected);
    assert_eq!(leftover_processes(&other), vec![c.0.id()]);

    let stopped = stop_leftovers(&mine, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(stopped, expected);
    use std::os::unix::process::ExitStatusExt;
    for child in [&mut a.0, &mut b.0] {
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status:?}");
    }
    assert!(leftover_processes(&mine).is_empty());
    // The other project's process still runs; nothing is left to stop for `mine`.
    assert!(c.0.try_wait().unwrap().is_none());
    assert_eq!(leftover_processes(&other), vec![c.0.id()]);
    assert!(stop_leftovers(&mine, Duration::from_secs(1))
        .await
        .unwrap()
        .is_empty());
}
