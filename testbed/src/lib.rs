//! Wharf testbed: real parts for integration and end-to-end tests (design.md §8).
//!
//! - [`images`]: builds the static test app (`wharf-testapp`) and packs it into
//!   images `FROM scratch`, one per [`TestVersion`] (`v1`, `v2`, `broken`).
//! - [`registry`]: runs Debian's `docker-registry` on a free loopback port, with
//!   optional htpasswd basic auth, and pushes images to it, returning
//!   digest-pinned references ([`PinnedRef`]).
//! - [`docker`]: small helpers around the `docker` CLI (inspect, remove images,
//!   a [`Container`] guard removed on drop, waiting for health states).
//! - [`simagent`]: a simulated agent (a protocol-level test tool, not an agent) that
//!   enrolls with a real core and speaks `wharf/1` over QUIC with scripted behaviour.
//! - [`core`]: a real `wharf-core serve` child process ([`core::CoreProcess`]) for
//!   integration tests of every crate, and [`core::cargo_build`] for test binaries.
//! - [`fake_core`]: a scripted core (core's mTLS over QUIC, no core process) on which a
//!   test plays core's part message by message.
//! - [`compose`]: two-service Compose projects over the test images (lock, containers
//!   by label, cleanup).
//! - [`Testbed`]: the fixture most tests want: a registry with v1, v2 and broken
//!   pushed to it, everything removed on drop.
//!
//! Everything here is blocking (std processes and sockets); from async tests call
//! it inside `tokio::task::spawn_blocking` or before entering the runtime.
//!
//! ```no_run
//! use wharf_testbed::{Testbed, TestbedOptions, TestVersion};
//!
//! let bed = Testbed::start(TestbedOptions::default().with_auth("wharf", "s3cret"))?;
//! let v1 = bed.image(TestVersion::V1); // 127.0.0.1:PORT/wharf/testapp@sha256:...
//! println!("deploy {v1} from {}", bed.registry().host());
//! # Ok::<(), anyhow::Error>(())
//! ```

#![warn(missing_docs)]

pub mod cluster;
pub mod compose;
pub mod core;
pub mod demo;
pub mod docker;
pub mod elf;
pub mod fake_core;
mod fixture;
pub mod http;
pub mod images;
mod reference;
pub mod registry;
pub mod simagent;

pub use docker::Container;
pub use fixture::{Testbed, TestbedOptions};
pub use images::{BuildOptions, BuiltImage, TestVersion};
pub use reference::{check_repository, PinnedRef};
pub use registry::{Credentials, Registry, RegistryClient, RegistryOptions};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A name fragment unique to this process and call: lowercase hex, usable in
/// container names, image repositories and temp paths. Parallel tests (threads
/// or processes) never get the same one.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}{:05x}", std::process::id(), n, nanos & 0xfffff)
}

/// A free TCP port on 127.0.0.1, found by binding port 0 and releasing it.
/// Another process may take it before it is used: callers retry on that race.
pub fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}
