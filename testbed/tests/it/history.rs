//! `wharf history`'s pullability check against the testbed's real registry (with basic
//! auth): core's registry probe and the history's rollback column.

use std::sync::Arc;

use serde_json::json;
use wharf_core::engine::TaskView;
use wharf_core::history::{self, RollbackStatus};
use wharf_core::registry_probe::{Prober, Pullable};
use wharf_protocol::seal::RegistryCredentials;
use wharf_testbed::images::TestVersion;
use wharf_testbed::{Testbed, TestbedOptions};

const USER: &str = "wharf";
const PASSWORD: &str = "pa55:w0rd";

fn prober(host: &str, password: &str) -> Prober {
    let credentials = RegistryCredentials {
        registry: host.to_string(),
        username: USER.to_string(),
        password: password.to_string(),
    };
    Prober::new(Arc::new(move |registry: &str| {
        (registry == credentials.registry).then(|| credentials.clone())
    }))
    .unwrap()
}

/// A finished docker deploy of `image` (`repo@digest`) as the API lists it.
fn deploy_view(n: u128, image: &str, state: &str) -> TaskView {
    let id = uuid::Uuid::from_u128(n);
    let at = format!("2025-01-01T00:00:0{n}.000Z");
    serde_json::from_value(json!({
        "id": id, "kind": "deploy", "state": state, "agent": "a", "target": "web",
        "idempotency_key": null, "attempt": 1, "created_at": at, "updated_at": at,
        "requested_by": "ci", "priority": "normal", "expires_at": null,
        "cancel_requested": false, "error": null,
        "result": {
            "task_id": id, "attempt": 1, "success": state == "succeeded",
            "started_at": at, "completed_at": at, "outputs": {"image": image},
            "error": null, "error_type": null, "retriable": false, "rolled_back": false,
            "logs": [], "metrics": {"pull_ms": null, "deploy_ms": null, "health_ms": null}
        }
    }))
    .unwrap()
}

#[test]
fn pullable_digests_are_told_from_gone_ones_on_a_private_registry() {
    let bed = Testbed::start(TestbedOptions::default().with_auth(USER, PASSWORD)).expect("testbed");
    let host = bed.registry().host();
    let v1 = bed.image(TestVersion::V1).clone();
    let v2 = bed.image(TestVersion::V2).clone();
    let broken = bed.image(TestVersion::Broken).clone();
    let gone = format!("sha256:{}", "e".repeat(64));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // With the stored credentials: every pushed digest is there, another is not.
        let mut probe = prober(&host, PASSWORD);
        for pinned in [&v1, &v2, &broken] {
            assert_eq!(
                probe.check(pinned.repository(), pinned.digest()).await,
                Pullable::Yes,
                "{pinned}"
            );
        }
        let missing = probe.check(v1.repository(), &gone).await;
        assert!(matches!(&missing, Pullable::No { reason } if reason.contains(&gone)), "{missing:?}");
        let other_repo = probe.check(&format!("{host}/wharf/nothing-here"), v1.digest()).await;
        assert!(matches!(other_repo, Pullable::No { .. }), "{other_repo:?}");

        // Without credentials, or with a wrong password: unknown, saying why.
        let mut anonymous = Prober::new(Arc::new(|_: &str| None)).unwrap();
        let answer = anonymous.check(v1.repository(), v1.digest()).await;
        assert!(
            matches!(&answer, Pullable::Unknown { reason } if reason.contains("wharf registry login")),
            "{answer:?}"
        );
        let mut wrong = prober(&host, "not-the-password");
        let answer = wrong.check(v1.repository(), v1.digest()).await;
        assert!(
            matches!(&answer, Pullable::Unknown { reason } if reason.contains("refused")),
            "{answer:?}"
        );

        // The history's column: v2 runs, broken was the previous, v1 is pullable with
        // --to, and a digest the registry lost is not.
        let tasks = vec![
            deploy_view(1, &format!("{}@{gone}", v1.repository()), "succeeded"),
            deploy_view(2, &v1.to_string(), "succeeded"),
            deploy_view(3, &broken.to_string(), "succeeded"),
            deploy_view(4, &v2.to_string(), "succeeded"),
        ];
        let ids = |n: u128| uuid::Uuid::from_u128(n);
        let mut probe = prober(&host, PASSWORD);
        let entries = history::build(
            "a",
            "web",
            false,
            tasks,
            |_| None,
            Some((ids(4), Some(ids(3)))),
            &mut probe,
        )
        .await;
        let status: Vec<RollbackStatus> = entries.iter().map(|e| e.rollback.status).collect();
        assert_eq!(
            status,
            [
                RollbackStatus::Running,
                RollbackStatus::Kept,
                RollbackStatus::Pullable,
                RollbackStatus::NotPullable
            ]
        );
        assert_eq!(
            entries[2].rollback.command,
            Some(format!(
                "wharf rollback --agent a --target web --to {}",
                v1.digest()
            ))
        );
    });
}
