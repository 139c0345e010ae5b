//! UDP to core dropped for real: the agent runs in a network namespace of its own, joined
//! to the host by a veth pair; core listens on the host end; an iptables rule inside the
//! namespace drops UDP to core's port. An `auto` agent (the binary's default) falls back
//! to HTTPS polling and completes a deploy; once the rule is removed it returns to QUIC
//! (`wharf agent list` shows the transport each time).
//!
//! Needs root, `ip` and `iptables` (`.ci/run` installs them). The namespace (and with it
//! the veth pair and the rule) is removed when the test ends, also when it fails.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use wharf_testbed::cluster::{AgentOptions, Binaries, Core, DockerAgent};
use wharf_testbed::{docker, TestVersion, Testbed, TestbedOptions};

/// Runs a command; panics with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (install iproute2 and iptables; see .ci/run)")
        });
    assert!(
        out.status.success(),
        "{program} {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a veth pair to the host; deleted on drop.
struct Netns {
    name: String,
    host_ip: Ipv4Addr,
}

impl Netns {
    fn create(tag: u8) -> Netns {
        let suffix = &wharf_testbed::unique_suffix()[..6];
        let name = format!("wharf-{suffix}");
        let (host_if, ns_if) = (format!("wh{suffix}"), format!("wn{suffix}"));
        let host_ip = Ipv4Addr::new(10, 231, tag, 1);
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name, host_ip };
        let ns_name = ns.name.clone();
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ],
        );
        run("ip", &["link", "set", &ns_if, "netns", &ns_name]);
        run(
            "ip",
            &["addr", "add", &format!("{host_ip}/30"), "dev", &host_if],
        );
        run("ip", &["link", "set", &host_if, "up"]);
        let ns_ip = format!("10.231.{tag}.2/30");
        ns.exec(&["ip", "addr", "add", &ns_ip, "dev", &ns_if]);
        ns.exec(&["ip", "link", "set", &ns_if, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut all = vec!["netns", "exec", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    fn udp_rule(&self, action: &str, port: u16) {
        let port = port.to_string();
        self.exec(&[
            "iptables", action, "OUTPUT", "-p", "udp", "--dport", &port, "-j", "DROP",
        ]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes the veth pair and the rule with it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Removes the named containers when dropped.
struct RemoveContainers(Vec<String>);

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let _ = docker::output(docker::command(None).args(["rm", "-f"]).args(&self.0));
    }
}

fn wait_transport(core: &Core, name: &str, transport: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let entry = core.agent_entry(name).unwrap().unwrap_or(Value::Null);
        if entry["state"] == "online" && entry["transport"] == transport {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "agent {name} not online over {transport} within {timeout:?}: {entry}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn auto_agent_polls_while_udp_is_dropped_and_returns_to_quic() {
    let suffix = wharf_testbed::unique_suffix();
    let tag = u8::try_from(std::process::id() % 200).unwrap_or(0) + 20;
    let ns = Netns::create(tag);
    let bed =
        Testbed::start(TestbedOptions::default().with_repo(format!("wharf-e2e/udp-{suffix}")))
            .expect("testbed");
    let binaries = Binaries::get().expect("wharf programs");
    let dir = tempfile::tempdir().unwrap();
    let core = Core::start_on(&binaries, &dir.path().join("core"), IpAddr::V4(ns.host_ip))
        .expect("core on the veth address");
    let port = core.process.port;
    ns.udp_rule("-A", port);

    let name = format!("udp-{suffix}");
    let target = format!("e2e-udp-{suffix}");
    let _cleanup = RemoveContainers(vec![target.clone(), format!("{target}-previous")]);
    let started = Instant::now();
    let agent = DockerAgent::enroll_and_start_with(
        &core,
        &name,
        &dir.path().join("agent"),
        &AgentOptions {
            args: vec![
                "--transport".into(),
                "auto".into(),
                "--quic-fallback-after".into(),
                "2s".into(),
                "--quic-retry-every".into(),
                "2s".into(),
            ],
            wrapper: vec!["ip".into(), "netns".into(), "exec".into(), ns.name.clone()],
            ..AgentOptions::default()
        },
    )
    .expect("the agent enrolls over TCP and comes online");
    let entry = wait_transport(&core, &name, "poll", Duration::from_secs(30));
    println!(
        "UDP dropped: online over {} after {:?}",
        entry["transport"],
        started.elapsed()
    );

    let image = bed.image(TestVersion::V1).to_string();
    let out = core
        .wharf_json(&[
            "deploy", "--agent", &name, "--target", &target, "--image", &image, "--wait",
        ])
        .expect("deploy");
    assert_eq!(out["state"], "succeeded", "{out}");
    assert!(docker::inspect_container(&target).unwrap().is_some());

    // UDP allowed again: back to QUIC.
    ns.udp_rule("-D", port);
    let unblocked = Instant::now();
    wait_transport(&core, &name, "quic", Duration::from_secs(30));
    println!("UDP allowed: back on QUIC after {:?}", unblocked.elapsed());
    let out = core
        .wharf_json(&["inspect", "--agent", &name, "--target", &target])
        .expect("inspect");
    assert_eq!(out["state"], "succeeded", "{out}");
    drop(agent);
}
