//! The fleet audit end to end: `wharf audit` against a core, two Docker agents and one
//! Compose agent (real programs, the real Docker engine, a private registry).
//!
//! All three targets are `ok` after their deploys; then, by hand, a sticker file is
//! edited (`tampered`), a container is replaced by `docker run` of another image under
//! the same name (`drift`), and the Compose agent is stopped (`unreachable`). Each is
//! reported as such, with exit 1, in JSON and in the terminal table.

use std::time::Duration;

use serde_json::Value;
use wharf_testbed::cluster::DockerAgent;
use wharf_testbed::compose::ProjectGuard;
use wharf_testbed::{docker, TestVersion};

use crate::compose_agent::ComposeFleet;
use crate::docker_agent::{deploy_on, wharf_json, RemoveContainers};

/// The audit's row for `(agent, target)`.
fn row<'a>(rows: &'a Value, agent: &str, target: &str) -> &'a Value {
    rows.as_array()
        .into_iter()
        .flatten()
        .find(|r| r["agent"] == agent && r["target"] == target)
        .unwrap_or_else(|| panic!("no audit row for {agent}/{target}: {rows}"))
}

#[test]
fn fleet_audit_reports_ok_then_tampered_drift_and_unreachable() {
    let mut fleet = ComposeFleet::start("audit", &[]);
    let suffix = wharf_testbed::unique_suffix();
    let dir = tempfile::tempdir().unwrap();
    let core = &fleet.core;
    let d1 =
        DockerAgent::enroll_and_start(core, &format!("audit-d1-{suffix}"), &dir.path().join("d1"))
            .expect("docker agent 1");
    let d2 =
        DockerAgent::enroll_and_start(core, &format!("audit-d2-{suffix}"), &dir.path().join("d2"))
            .expect("docker agent 2");
    let (t1, t2) = (format!("audit-a-{suffix}"), format!("audit-b-{suffix}"));
    let _containers = RemoveContainers(vec![
        t1.clone(),
        t2.clone(),
        format!("{t1}-previous"),
        format!("{t2}-previous"),
    ]);
    let project = format!("audit{suffix}");
    let _project = ProjectGuard(project.clone());

    // Nothing deployed yet: nothing to audit, exit 0.
    let (code, rows) = wharf_json(core, &["audit"]);
    assert_eq!(code, Some(0), "{rows}");
    assert_eq!(rows, Value::Array(Vec::new()));

    // One container on each Docker agent (v1 and v2), one project on the Compose agent.
    for (agent, target, version) in [(&d1, &t1, TestVersion::V1), (&d2, &t2, TestVersion::V2)] {
        let port = wharf_testbed::free_port().unwrap();
        let image = fleet.images.web(version).to_string();
        let (code, task) = deploy_on(core, &agent.name, target, &image, port, &[]);
        assert_eq!(code, Some(0), "{task}");
    }
    let (code, task) = fleet.deploy(
        &project,
        &fleet.lock(TestVersion::V1, TestVersion::V1),
        &["--release", "shop@1.0.0", "--wait"],
    );
    assert_eq!(code, Some(0), "{task}");

    let (code, rows) = wharf_json(core, &["audit"]);
    assert_eq!(code, Some(0), "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(3), "{rows}");
    for r in rows.as_array().unwrap() {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["evidence"]["sticker"]["signature"], "valid", "{r}");
    }
    let compose = row(&rows, &fleet.agent.name, &project);
    assert_eq!(compose["kind"], "compose");
    assert!(
        compose["detail"].as_str().unwrap().contains("shop@1.0.0"),
        "{compose}"
    );
    assert_eq!(
        compose["evidence"]["running"].as_array().map(Vec::len),
        Some(2)
    );
    // One agent only.
    let (code, only) = wharf_json(core, &["audit", "--agent", &d1.name]);
    assert_eq!(code, Some(0), "{only}");
    assert_eq!(only.as_array().map(Vec::len), Some(1), "{only}");
    let out = core.wharf(&["audit", "--agent", "no-such-agent"]).unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-agent"));

    // By hand: the sticker of t1 edited (another version written into it).
    let sticker = d1.state_dir().join("stickers").join(format!("{t1}.json"));
    let text = std::fs::read_to_string(&sticker).unwrap();
    let edited = text.replacen("\"version\":", "\"version\": \"9.9.9\", \"was\":", 1);
    assert_ne!(edited, text);
    std::fs::write(&sticker, edited).unwrap();
    // By hand: t2 replaced by `docker run` of another image (v1) under the same name.
    docker::output(docker::command(None).args(["rm", "-f", &t2])).unwrap();
    let other = fleet.images.web(TestVersion::V1).to_string();
    let out =
        docker::output(docker::command(None).args(["run", "-d", "--name", &t2, &other])).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The Compose agent stopped.
    fleet.agent.process.terminate(Duration::from_secs(10));
    core.wait_agent_state(&fleet.agent.name, "offline", Duration::from_secs(60))
        .unwrap();

    let (code, rows) = wharf_json(core, &["audit"]);
    assert_eq!(code, Some(1), "{rows}");
    let tampered = row(&rows, &d1.name, &t1);
    assert_eq!(tampered["status"], "tampered", "{tampered}");
    assert_eq!(
        tampered["evidence"]["sticker"]["signature"],
        "bad-signature"
    );
    let drift = row(&rows, &d2.name, &t2);
    assert_eq!(drift["status"], "drift", "{drift}");
    let detail = drift["detail"].as_str().unwrap();
    let v1 = fleet.images.web(TestVersion::V1).digest().to_string();
    let v2 = fleet.images.web(TestVersion::V2).digest().to_string();
    assert!(detail.contains(&v1) && detail.contains(&v2), "{detail}");
    let gone = row(&rows, &fleet.agent.name, &project);
    assert_eq!(gone["status"], "unreachable", "{gone}");
    assert!(
        gone["detail"].as_str().unwrap().contains("offline"),
        "{gone}"
    );

    // The terminal table says the same, with exit 1.
    let out = core.wharf(&["audit"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let table = String::from_utf8_lossy(&out.stdout);
    for words in ["TAMPERED", "DRIFT", "UNREACHABLE", "3 targets"] {
        assert!(table.contains(words), "{words}: {table}");
    }
}
