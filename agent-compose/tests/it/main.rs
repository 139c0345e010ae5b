//! The integration tests of `wharf-agent-compose` (one test binary; modules by area).
//!
//! - [`compose`]: the Compose executor against the real Docker engine, the real Compose
//!   tool (`docker compose` or `docker-compose`) and a local registry with htpasswd auth.
//! - [`hooks`]: pre- and post-deploy hooks with the testbed's `wharf/testhook` image.
//! - [`leftovers`]: Compose processes of a killed agent run found, killed, waited for.
//! - [`support`]: project guards, locks over the testbed's images, HTTP checks.

mod compose;
mod hooks;
mod leftovers;
mod support;
