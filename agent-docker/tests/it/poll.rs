//! The runtime's polling transport against a real `wharf-core serve`: `--transport poll`,
//! and `auto` falling back to polling when QUIC gets no answer, then returning to QUIC.
//!
//! "QUIC gets no answer" is made real without privileges: the agent is pointed at a port
//! of this test that forwards TCP to core and, at first, has nothing behind UDP (the
//! datagrams are lost, as behind a firewall that drops UDP); later a UDP relay to core is
//! put on the same port and the agent must move back to QUIC. (The testbed's e2e does
//! the same with an iptables rule in a network namespace, with the real binaries.)

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use wharf_agent_docker::runtime::{RuntimeEvent, Transport};
use wharf_core::queue::TaskState;

use crate::runtime::{bed, Bed};
use crate::support::{start_agent, Script, WAIT};

/// Aborts its task when dropped (the forwarders end with the test, also on failure).
struct Guard(JoinHandle<()>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Forwards every TCP connection on `listener` to `to`.
fn forward_tcp(listener: TcpListener, to: SocketAddr) -> Guard {
    Guard(tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    }))
}

/// Relays datagrams between the clients of `front` and `to` (one upstream socket per
/// client address).
fn relay_udp(front: UdpSocket, to: SocketAddr) -> Guard {
    Guard(tokio::spawn(async move {
        let front = std::sync::Arc::new(front);
        let mut upstreams: std::collections::HashMap<SocketAddr, std::sync::Arc<UdpSocket>> =
            std::collections::HashMap::new();
        let mut buf = vec![0u8; 65_536];
        let mut back = Vec::new();
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let up = match upstreams.get(&client) {
                Some(up) => up.clone(),
                None => {
                    let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    if up.connect(to).await.is_err() {
                        continue;
                    }
                    let up = std::sync::Arc::new(up);
                    upstreams.insert(client, up.clone());
                    let (up2, front2) = (up.clone(), front.clone());
                    back.push(Guard(tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = up2.recv(&mut buf).await {
                            let _ = front2.send_to(&buf[..n], client).await;
                        }
                    })));
                    up
                }
            };
            let _ = up.send(&buf[..n]).await;
        }
    }))
}

async fn agent_transport(bed: &Bed, name: &str) -> Option<String> {
    let agents = bed.api.agents().await.unwrap();
    agents
        .iter()
        .find(|a| a["name"] == name && a["state"] == "online")
        .and_then(|a| a["transport"].as_str())
        .map(str::to_string)
}

async fn wait_transport(bed: &Bed, name: &str, transport: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if agent_transport(bed, name).await.as_deref() == Some(transport) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "agent {name} is not online over {transport}: {:?}",
            bed.api.agents().await
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_agent_runs_tasks_and_results_are_acked() {
    let bed = bed().await;
    let root = tempfile::tempdir().unwrap();
    let mut config = bed.config("poller", &root.path().join("s")).await;
    config.transport = Transport::Poll;
    let mut agent = start_agent(config, Script::new());
    agent
        .events
        .wait("polling", |e| {
            matches!(e, RuntimeEvent::TransportInUse { transport: "poll" })
        })
        .await;
    agent.connected().await;
    wait_transport(&bed, "poller", "poll").await;

    // Two targets: both run, both results are acknowledged (and leave the journal).
    let web = bed.submit("poller", "web", None).await;
    let db = bed.submit("poller", "db", None).await;
    for id in [web.id, db.id] {
        let done = bed.wait_state(id, TaskState::Succeeded).await;
        assert!(done.result.unwrap().success);
        agent
            .events
            .wait(
                "the ack",
                |e| matches!(e, RuntimeEvent::ResultAcked { task_id, .. } if *task_id == id),
            )
            .await;
    }
    // Never a QUIC session.
    assert!(!agent
        .events
        .seen
        .iter()
        .any(|e| matches!(e, RuntimeEvent::TransportInUse { transport: "quic" })));
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_polls_while_udp_is_lost_and_returns_to_quic_when_it_passes() {
    let bed = bed().await;
    let core: SocketAddr = bed.core.addr().parse().unwrap();
    // TCP passes to core; UDP to this port goes nowhere (nothing bound there yet).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front = listener.local_addr().unwrap();
    let _tcp = forward_tcp(listener, core);

    let root = tempfile::tempdir().unwrap();
    let mut config = bed.config("auto-1", &root.path().join("s")).await;
    config.core_addr = front.to_string();
    config.transport = Transport::Auto;
    config.quic_fallback_after = Duration::from_millis(700);
    config.quic_retry_every = Duration::from_millis(1500);
    let started = Instant::now();
    let mut agent = start_agent(config, Script::new());
    agent
        .events
        .wait("the fallback to polling", |e| {
            matches!(e, RuntimeEvent::TransportInUse { transport: "poll" })
        })
        .await;
    println!("QUIC blocked: polling after {:?}", started.elapsed());
    assert!(agent
        .events
        .seen
        .iter()
        .any(|e| matches!(e, RuntimeEvent::ConnectFailed { .. })));
    wait_transport(&bed, "auto-1", "poll").await;
    let task = bed.submit("auto-1", "web", None).await;
    bed.wait_state(task.id, TaskState::Succeeded).await;

    // UDP passes again: the next QUIC attempt connects and the agent leaves polling.
    let udp = UdpSocket::bind(front).await.unwrap();
    let _udp = relay_udp(udp, core);
    let unblocked = Instant::now();
    agent
        .events
        .wait_new("the return to QUIC", |e| {
            matches!(e, RuntimeEvent::TransportInUse { transport: "quic" })
        })
        .await;
    println!("UDP back: QUIC after {:?}", unblocked.elapsed());
    wait_transport(&bed, "auto-1", "quic").await;
    let task = bed.submit("auto-1", "web", None).await;
    bed.wait_state(task.id, TaskState::Succeeded).await;
    agent.stop().await.unwrap();
}
