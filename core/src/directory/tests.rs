//! Unit tests of the directory, on `MemoryStore` and on a tempdir `SledStore`.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::UNIX_EPOCH;

use wharf_protocol::seal::AgentSealKey;

use super::*;
use crate::audit::BreakReason;
use crate::pki::{agent_id_from_cert, certs_from_pem, generate_agent_key_and_csr};
use crate::store::{MemoryStore, SledStore};

/// 2024-05-01T12:30:00Z
const T0: i64 = 1_714_566_600_000;

#[derive(Clone)]
struct TestClock(Arc<AtomicI64>);

impl TestClock {
    fn new() -> Self {
        TestClock(Arc::new(AtomicI64::new(T0)))
    }

    fn clock(&self) -> Clock {
        let ms = self.0.clone();
        Arc::new(move || UNIX_EPOCH + Duration::from_millis(ms.load(Ordering::SeqCst) as u64))
    }

    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }

    fn now(&self) -> SystemTime {
        (self.clock())()
    }
}

struct Fixture {
    store: MemoryStore,
    dir: Directory,
    clock: TestClock,
    ca: Arc<CertificateAuthority>,
    key: [u8; 32],
}

fn ca() -> Arc<CertificateAuthority> {
    Arc::new(CertificateAuthority::generate(UNIX_EPOCH + Duration::from_millis(T0 as u64)).unwrap())
}

async fn open_dir(
    store: Arc<dyn Store>,
    ca: Arc<CertificateAuthority>,
    key: [u8; 32],
    clock: &TestClock,
    revocations: RevocationList,
) -> Result<Directory> {
    let audit = AuditLog::open_with_clock(store, clock.clock())?;
    Directory::open(
        DirectoryConfig::new(audit, ca, MasterKey::from_bytes(key)).with_revocations(revocations),
    )
    .await
}

/// The actions of the fixture's audit log, in order.
fn audit_actions(f: &Fixture) -> Vec<String> {
    f.dir
        .audit()
        .list(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect()
}

/// The fixture's directory opened again on its store (a restart).
async fn reopen(f: &Fixture) -> Directory {
    open_dir(
        Arc::new(f.store.clone()),
        f.ca.clone(),
        f.key,
        &f.clock,
        RevocationList::new(),
    )
    .await
    .unwrap()
}

async fn fixture() -> Fixture {
    let store = MemoryStore::new();
    let clock = TestClock::new();
    let ca = ca();
    let key = [42u8; 32];
    let dir = open_dir(
        Arc::new(store.clone()),
        ca.clone(),
        key,
        &clock,
        RevocationList::new(),
    )
    .await
    .unwrap();
    Fixture {
        store,
        dir,
        clock,
        ca,
        key,
    }
}

fn request(token: &SecretString, name: &str) -> EnrollRequest {
    let (_key, csr_pem) = generate_agent_key_and_csr(name).unwrap();
    EnrollRequest {
        token: token.clone(),
        name: name.to_string(),
        csr_pem,
        x25519_public: AgentSealKey::generate().unwrap().public(),
        version: "0.1.0".into(),
        capabilities: vec!["docker".into(), "sealed-credentials".into()],
    }
}

async fn enroll(f: &Fixture, name: &str) -> EnrollResponse {
    let (token, _) = f
        .dir
        .create_enroll_token(name, DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    f.dir.enroll(request(&token, name)).await.unwrap()
}

/// Every key and value of every table, concatenated.
fn all_bytes(store: &MemoryStore) -> Vec<u8> {
    let mut out = Vec::new();
    for table in Table::ALL {
        for (k, v) in store.scan(*table).unwrap() {
            out.extend_from_slice(&k);
            out.extend_from_slice(&v);
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`.
fn files_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_bytes(&path));
        } else {
            out.extend(std::fs::read(&path).unwrap());
        }
    }
    out
}

// ---- enrollment ----

#[tokio::test]
async fn enroll_happy_path() {
    let f = fixture().await;
    let (token, expires_at) = f
        .dir
        .create_enroll_token("web-1", Duration::from_secs(600), "alice")
        .await
        .unwrap();
    assert!(EnrollToken::has_prefix(token.expose()));
    assert_eq!(expires_at, Timestamp(T0 + 600_000));
    let req = request(&token, "web-1");
    let x25519 = req.x25519_public;
    let resp = f.dir.enroll(req).await.unwrap();

    assert_eq!(resp.ca_pem, f.ca.cert_pem());
    let der = certs_from_pem("agent certificate", resp.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        agent_id_from_cert(&der[0]).unwrap(),
        resp.agent_id.to_string()
    );
    assert_eq!(resp.agent_id.get_version_num(), 4);
    // 30 days by default.
    assert_eq!(resp.not_after, Timestamp(T0 + 30 * 24 * 3600 * 1000));

    let agent = f.dir.agent_by_id(resp.agent_id).unwrap();
    assert_eq!(agent.name, "web-1");
    assert_eq!(agent.x25519_public, x25519);
    assert_eq!(agent.version, "0.1.0");
    assert_eq!(agent.capabilities, ["docker", "sealed-credentials"]);
    assert_eq!(agent.enrolled_at, Timestamp(T0));
    assert_eq!(agent.cert_serials.len(), 1);
    assert!(!agent.is_revoked());
    assert_eq!(f.dir.agent_by_name("web-1"), Some(agent.clone()));
    assert_eq!(f.dir.list_agents(), vec![agent]);

    let tokens = f.dir.list_enroll_tokens();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].used_at, Some(Timestamp(T0)));
    assert_eq!(tokens[0].agent_id, Some(resp.agent_id));

    // The store holds the hash, never the token.
    let bytes = all_bytes(&f.store);
    assert!(!contains(&bytes, token.expose().as_bytes()));
    assert!(contains(
        &bytes,
        EnrollToken::hash(token.expose()).to_hex().as_bytes()
    ));

    // Both changes are in the audit log.
    let log = f.dir.audit().list(0, 10).unwrap();
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["agent.token.create", "agent.enroll"]);
    assert_eq!(log[1].actor, "agent:web-1");
    assert_eq!(log[1].detail["agent_id"], resp.agent_id.to_string());
    assert_eq!(f.dir.audit().verify().unwrap().entries, 2);
}

#[tokio::test]
async fn unknown_token() {
    let f = fixture().await;
    let (token, _) = EnrollToken::generate().unwrap();
    let err = f.dir.enroll(request(&token, "web-1")).await.unwrap_err();
    assert!(matches!(err, DirectoryError::EnrollTokenUnknown), "{err}");
    assert_eq!(err.http_status(), 401);
    assert!(
        err.to_string().contains("wharf agent token create --name"),
        "{err}"
    );
    assert!(!err.to_string().contains(token.expose()));
}

#[tokio::test]
async fn used_token() {
    let f = fixture().await;
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    f.dir.enroll(request(&token, "web-1")).await.unwrap();
    f.clock.advance(Duration::from_secs(5));
    let err = f.dir.enroll(request(&token, "web-1")).await.unwrap_err();
    assert!(
        matches!(&err, DirectoryError::EnrollTokenUsed { name, used_at } if name == "web-1" && *used_at == Timestamp(T0)),
        "{err}"
    );
    assert_eq!(err.http_status(), 410);
    assert!(err.to_string().contains("already used"), "{err}");
    assert!(
        err.to_string()
            .contains("wharf agent token create --name web-1"),
        "{err}"
    );
    assert_eq!(f.dir.list_agents().len(), 1);
}

#[tokio::test]
async fn expired_token() {
    let f = fixture().await;
    let (token, expires_at) = f
        .dir
        .create_enroll_token("web-1", Duration::from_secs(60), "alice")
        .await
        .unwrap();
    f.clock.advance(Duration::from_secs(60));
    let err = f.dir.enroll(request(&token, "web-1")).await.unwrap_err();
    assert!(
        matches!(&err, DirectoryError::EnrollTokenExpired { expired_at, .. } if *expired_at == expires_at),
        "{err}"
    );
    assert_eq!(err.http_status(), 410);
    assert!(
        err.to_string()
            .contains("expired at 2024-05-01T12:31:00.000Z"),
        "{err}"
    );
    assert!(f.dir.list_agents().is_empty());
}

#[tokio::test]
async fn token_for_another_name() {
    let f = fixture().await;
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    let err = f.dir.enroll(request(&token, "web-2")).await.unwrap_err();
    assert_eq!(err.http_status(), 403);
    assert!(
        err.to_string()
            .contains("token was issued for agent web-1, not web-2"),
        "{err}"
    );
    // Not burned.
    f.dir.enroll(request(&token, "web-1")).await.unwrap();
}

#[tokio::test]
async fn invalid_requests_do_not_burn_the_token() {
    let f = fixture().await;
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();

    let mut bad_csr = request(&token, "web-1");
    bad_csr.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let err = f.dir.enroll(bad_csr).await.unwrap_err();
    assert_eq!(err.http_status(), 400, "{err}");

    let mut weak = request(&token, "web-1");
    weak.x25519_public = [0; 32];
    let err = f.dir.enroll(weak).await.unwrap_err();
    assert!(
        matches!(
            err,
            DirectoryError::InvalidInput {
                field: "x25519_public",
                ..
            }
        ),
        "{err}"
    );
    let mut low_order = request(&token, "web-1");
    low_order.x25519_public[0] = 1; // the point u = 1 (order 1)
    low_order.x25519_public[1..].fill(0);
    assert_eq!(
        f.dir.enroll(low_order).await.unwrap_err().http_status(),
        400
    );

    let mut bad_version = request(&token, "web-1");
    bad_version.version = "x".repeat(65);
    assert_eq!(
        f.dir.enroll(bad_version).await.unwrap_err().http_status(),
        400
    );

    let mut bad_name = request(&token, "web-1");
    bad_name.name = "web 1".into();
    let err = f.dir.enroll(bad_name).await.unwrap_err();
    assert!(matches!(err, DirectoryError::InvalidName { .. }), "{err}");

    f.dir.enroll(request(&token, "web-1")).await.unwrap();
}

#[tokio::test]
async fn public_key_pem_is_accepted() {
    let f = fixture().await;
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut req = request(&token, "web-1");
    req.csr_pem = key.public_key_pem();
    f.dir.enroll(req).await.unwrap();
}

#[tokio::test]
async fn names_and_ttls_are_checked_at_token_creation() {
    let f = fixture().await;
    for bad in ["", "-web", "web/1", &"a".repeat(64)] {
        let err = f
            .dir
            .create_enroll_token(bad, DEFAULT_ENROLL_TOKEN_TTL, "alice")
            .await
            .unwrap_err();
        assert!(
            matches!(err, DirectoryError::InvalidName { .. }),
            "{bad:?}: {err}"
        );
        assert_eq!(err.http_status(), 400);
    }
    for ttl in [
        Duration::ZERO,
        MAX_ENROLL_TOKEN_TTL + Duration::from_secs(1),
    ] {
        let err = f
            .dir
            .create_enroll_token("web-1", ttl, "alice")
            .await
            .unwrap_err();
        assert!(
            matches!(err, DirectoryError::InvalidInput { field: "ttl", .. }),
            "{err}"
        );
    }
    enroll(&f, "web-1").await;
    let err = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::NameTaken { .. }), "{err}");
    assert_eq!(err.http_status(), 409);
    assert!(
        err.to_string().contains("wharf agent revoke web-1"),
        "{err}"
    );
}

#[tokio::test]
async fn name_taken_between_token_and_enrollment() {
    let f = fixture().await;
    let (t1, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    let (t2, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    f.dir.enroll(request(&t1, "web-1")).await.unwrap();
    let err = f.dir.enroll(request(&t2, "web-1")).await.unwrap_err();
    assert!(matches!(err, DirectoryError::NameTaken { .. }), "{err}");
}

#[tokio::test]
async fn concurrent_enrollments_with_one_token_enroll_once() {
    let f = fixture().await;
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let dir = f.dir.clone();
        let req = request(&token, "web-1");
        tasks.push(tokio::spawn(async move { dir.enroll(req).await }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert!(matches!(e, DirectoryError::EnrollTokenUsed { .. }), "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(f.dir.list_agents().len(), 1);
}

#[tokio::test]
async fn failed_commit_changes_nothing() {
    let f = fixture().await;
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    f.store.set_fail_commits(true);
    let err = f.dir.enroll(request(&token, "web-1")).await.unwrap_err();
    assert_eq!(err.http_status(), 500, "{err}");
    assert!(f.dir.list_agents().is_empty());
    assert!(f
        .dir
        .create_api_token(Role::Deployer, "ci", "alice")
        .await
        .is_err());
    assert!(f.dir.list_api_tokens().is_empty());
    f.store.set_fail_commits(false);
    f.dir.enroll(request(&token, "web-1")).await.unwrap();
    assert_eq!(f.dir.audit().verify().unwrap().entries, 2);
}

#[tokio::test]
async fn old_tokens_are_purged() {
    let f = fixture().await;
    f.dir
        .create_enroll_token("web-1", Duration::from_secs(60), "alice")
        .await
        .unwrap();
    f.clock
        .advance(ENROLL_TOKEN_RETENTION + Duration::from_secs(120));
    f.dir
        .create_enroll_token("web-2", Duration::from_secs(60), "alice")
        .await
        .unwrap();
    let names: Vec<String> = f
        .dir
        .list_enroll_tokens()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["web-2"]);
    assert_eq!(f.store.scan(Table::EnrollTokens).unwrap().len(), 1);
}

// ---- agents: renew, sessions, revoke ----

#[tokio::test]
async fn renew_records_the_new_serial() {
    let f = fixture().await;
    let first = enroll(&f, "web-1").await;
    f.clock.advance(Duration::from_secs(20 * 24 * 3600));
    let (_key, csr) = generate_agent_key_and_csr("web-1").unwrap();
    let renewed = f.dir.renew(first.agent_id, &csr).await.unwrap();
    assert_eq!(renewed.agent_id, first.agent_id);
    assert!(renewed.not_after > first.not_after);
    let agent = f.dir.agent_by_id(first.agent_id).unwrap();
    assert_eq!(agent.cert_serials.len(), 2);
    let der = certs_from_pem("agent certificate", renewed.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        agent.current_serial().unwrap(),
        crate::pki::cert_serial(&der[0]).unwrap()
    );
    assert_eq!(agent.not_after, renewed.not_after);

    let err = f.dir.renew(Uuid::new_v4(), &csr).await.unwrap_err();
    assert_eq!(err.http_status(), 404);
}

#[tokio::test]
async fn record_session_keeps_last_seen_in_memory_and_writes_it_in_batches() {
    let f = fixture().await;
    let id = enroll(&f, "web-1").await.agent_id;
    let other = enroll(&f, "web-2").await.agent_id;
    let stored = |f: &Fixture, id: Uuid| -> AgentRecord {
        f.store
            .get_json(Table::Agents, id.to_string().as_bytes())
            .unwrap()
            .unwrap()
    };
    let commits = |f: &Fixture| f.store.stats().commits;
    let caps = vec!["docker".to_string(), "sealed-credentials".to_string()];

    // The first session reports new facts (transport, capabilities): written at once.
    let t1 = f.clock.now();
    let a = f
        .dir
        .record_session(id, "0.1.0", &caps, "quic", t1)
        .await
        .unwrap();
    assert_eq!(a.last_seen, Some(ts(t1)));
    assert_eq!(a.transport.as_deref(), Some("quic"));
    assert_eq!(stored(&f, id).transport.as_deref(), Some("quic"));
    assert_eq!(stored(&f, id).last_seen, Some(ts(t1)));

    // A new session with the same facts (a reconnect) and heartbeats: memory only, no
    // commit at all, however long after the last write.
    let before = commits(&f);
    let t2 = t1 + 2 * LAST_SEEN_PERSIST_INTERVAL;
    let a = f
        .dir
        .record_session(id, "0.1.0", &caps, "quic", t2)
        .await
        .unwrap();
    assert_eq!(a.last_seen, Some(ts(t2)));
    let t3 = t2 + Duration::from_secs(5);
    f.dir.touch(id, t3).await.unwrap();
    f.dir.touch(other, t3).await.unwrap();
    assert_eq!(commits(&f), before, "no write for last-seen alone");
    assert_eq!(f.dir.agent_by_id(id).unwrap().last_seen, Some(ts(t3)));
    assert_eq!(stored(&f, id).last_seen, Some(ts(t1)));
    assert_eq!(stored(&f, other).last_seen, None);
    // Never backwards.
    f.dir.touch(id, t1).await.unwrap();
    assert_eq!(f.dir.agent_by_id(id).unwrap().last_seen, Some(ts(t3)));

    // One batch writes both agents' times; a second call has nothing to write.
    assert_eq!(f.dir.persist_last_seen().await.unwrap(), 2);
    assert_eq!(commits(&f), before + 1, "one batch");
    assert_eq!(stored(&f, id).last_seen, Some(ts(t3)));
    assert_eq!(stored(&f, other).last_seen, Some(ts(t3)));
    assert_eq!(stored(&f, id).transport.as_deref(), Some("quic"));
    assert_eq!(f.dir.persist_last_seen().await.unwrap(), 0);
    assert_eq!(commits(&f), before + 1);

    // A change of transport is written at once, with the time.
    let t4 = t3 + Duration::from_secs(1);
    f.dir
        .record_session(id, "0.1.0", &caps, "poll", t4)
        .await
        .unwrap();
    assert_eq!(stored(&f, id).transport.as_deref(), Some("poll"));
    assert_eq!(stored(&f, id).last_seen, Some(ts(t4)));

    // The times written survive a reopen; revoked agents are refused, and a revocation
    // is not undone by a later batch of times.
    f.dir.touch(other, t4).await.unwrap();
    f.dir.revoke_agent("web-2", "alice").await.unwrap();
    f.dir.persist_last_seen().await.unwrap();
    assert!(stored(&f, other).is_revoked());
    let err = f.dir.touch(other, t4).await.unwrap_err();
    assert!(matches!(err, DirectoryError::AgentRevoked { .. }), "{err}");
    let reopened = reopen(&f).await;
    assert_eq!(reopened.agent_by_id(id).unwrap().last_seen, Some(ts(t4)));
    assert!(reopened.agent_by_id(other).unwrap().is_revoked());

    // Sessions are not audited (2 enrollments, 2 tokens... and the revocation).
    let actions = audit_actions(&f);
    assert!(
        !actions
            .iter()
            .any(|a| a.contains("session") || a.contains("seen")),
        "{actions:?}"
    );

    let err = f.dir.touch(Uuid::new_v4(), t4).await.unwrap_err();
    assert!(matches!(err, DirectoryError::UnknownAgent { .. }), "{err}");
}

#[tokio::test]
async fn the_last_seen_writer_runs_and_ends_with_the_directory() {
    let f = fixture().await;
    let id = enroll(&f, "web-1").await.agent_id;
    let t1 = f.clock.now();
    f.dir.touch(id, t1).await.unwrap();
    let writer = f.dir.spawn_last_seen_writer(Duration::from_millis(10));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stored: AgentRecord = f
            .store
            .get_json(Table::Agents, id.to_string().as_bytes())
            .unwrap()
            .unwrap();
        if stored.last_seen == Some(ts(t1)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not written within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(f);
    tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("the writer ends once the directory is gone")
        .unwrap();
}

#[tokio::test]
async fn revoke_refuses_the_agent_everywhere() {
    let f = fixture().await;
    let resp = enroll(&f, "web-1").await;
    let id = resp.agent_id;
    let serial = f.dir.agent_by_id(id).unwrap().cert_serials[0].clone();
    assert!(!f.dir.revocations().is_agent_revoked(&id.to_string()));

    f.clock.advance(Duration::from_secs(1));
    let revoked = f.dir.revoke_agent("web-1", "alice").await.unwrap();
    assert_eq!(revoked.revoked_at, Some(Timestamp(T0 + 1000)));
    assert_eq!(revoked.revoked_by.as_deref(), Some("alice"));
    assert!(f.dir.revocations().is_agent_revoked(&id.to_string()));
    assert!(f.dir.revocations().is_serial_revoked(&serial));

    let (_key, csr) = generate_agent_key_and_csr("web-1").unwrap();
    let err = f.dir.renew(id, &csr).await.unwrap_err();
    assert!(matches!(err, DirectoryError::AgentRevoked { .. }), "{err}");
    assert_eq!(err.http_status(), 403);
    let err = f
        .dir
        .record_session(id, "0.1.0", &[], "quic", f.clock.now())
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::AgentRevoked { .. }), "{err}");

    // Idempotent, by name or id.
    let again = f.dir.revoke_agent(&id.to_string(), "bob").await.unwrap();
    assert_eq!(again.revoked_by.as_deref(), Some("alice"));
    let err = f.dir.revoke_agent("nope", "alice").await.unwrap_err();
    assert_eq!(err.http_status(), 404);
    assert!(err.to_string().contains("wharf agent list"), "{err}");

    // The name can be enrolled again, as a new agent.
    let new = enroll(&f, "web-1").await;
    assert_ne!(new.agent_id, id);
    assert_eq!(f.dir.agent_by_name("web-1").unwrap().id, new.agent_id);
    assert!(!f
        .dir
        .revocations()
        .is_agent_revoked(&new.agent_id.to_string()));
    assert_eq!(f.dir.list_agents().len(), 2);

    let log = f.dir.audit().list(0, 10).unwrap();
    assert_eq!(log[2].action, "agent.revoke");
    assert_eq!(log[2].actor, "alice");
    assert_eq!(log[2].target, "web-1");
}

#[tokio::test]
async fn revocations_survive_reopen_on_sled() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let clock = TestClock::new();
    let ca = ca();
    let key = [7u8; 32];
    let (revoked_id, live_id) = {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).unwrap());
        let dir = open_dir(store, ca.clone(), key, &clock, RevocationList::new())
            .await
            .unwrap();
        let mut ids = Vec::new();
        for name in ["web-1", "web-2"] {
            let (token, _) = dir
                .create_enroll_token(name, DEFAULT_ENROLL_TOKEN_TTL, "alice")
                .await
                .unwrap();
            ids.push(dir.enroll(request(&token, name)).await.unwrap().agent_id);
        }
        dir.revoke_agent("web-1", "alice").await.unwrap();
        (ids[0], ids[1])
    };
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).unwrap());
    let revocations = RevocationList::new();
    let dir = open_dir(store, ca, key, &clock, revocations.clone())
        .await
        .unwrap();
    assert!(revocations.is_agent_revoked(&revoked_id.to_string()));
    assert!(!revocations.is_agent_revoked(&live_id.to_string()));
    assert!(dir.agent_by_id(revoked_id).unwrap().is_revoked());
    assert_eq!(dir.list_agents().len(), 2);
    assert_eq!(dir.audit().verify().unwrap().entries, 5);
}

// ---- API tokens ----

#[tokio::test]
async fn api_tokens_roles_and_revocation() {
    let f = fixture().await;
    let (admin_id, admin) = f.dir.bootstrap_admin_token().await.unwrap().unwrap();
    assert!(ApiToken::has_prefix(admin.expose()));
    assert!(f.dir.bootstrap_admin_token().await.unwrap().is_none());

    let p = f.dir.authenticate(admin.expose()).unwrap();
    assert_eq!(p.role, Role::Admin);
    assert_eq!(p.name, BOOTSTRAP_ADMIN_NAME);
    assert_eq!(p.token_id, admin_id);
    assert_eq!(
        f.dir.authenticate(&format!("Bearer {}", admin.expose())),
        Some(p.clone())
    );

    let (dep_id, deployer) = f
        .dir
        .create_api_token(Role::Deployer, "ci", &p.actor())
        .await
        .unwrap();
    let (_, auditor) = f
        .dir
        .create_api_token(Role::Auditor, "", &p.actor())
        .await
        .unwrap();
    let d = f.dir.authenticate(deployer.expose()).unwrap();
    assert_eq!((d.role, d.name.as_str()), (Role::Deployer, "ci"));
    assert!(d.allows(Action::SubmitTask) && !d.allows(Action::ManageTokens));
    let a = f.dir.authenticate(auditor.expose()).unwrap();
    assert_eq!((a.role, a.name.as_str()), (Role::Auditor, "auditor"));
    assert!(a.allows(Action::ReadAuditLog) && !a.allows(Action::SubmitTask));

    assert_eq!(f.dir.authenticate("wharf-api-nope"), None);
    assert_eq!(f.dir.authenticate(""), None);
    assert_eq!(f.dir.authenticate("bearéééé"), None);
    assert_eq!(f.dir.authenticate("Bearer"), None);
    let mut near = deployer.expose().to_string();
    near.pop();
    assert_eq!(f.dir.authenticate(&near), None);

    let info = f.dir.revoke_api_token(&dep_id, &p.actor()).await.unwrap();
    assert!(info.revoked_at.is_some());
    assert_eq!(f.dir.authenticate(deployer.expose()), None);
    // Idempotent.
    f.dir.revoke_api_token(&dep_id, &p.actor()).await.unwrap();
    let err = f.dir.revoke_api_token("nope", "x").await.unwrap_err();
    assert_eq!(err.http_status(), 404);

    // The last admin token stays.
    let err = f.dir.revoke_api_token(&admin_id, "x").await.unwrap_err();
    assert!(
        matches!(err, DirectoryError::LastAdminToken { .. }),
        "{err}"
    );
    assert_eq!(err.http_status(), 409);
    let (_, admin2) = f
        .dir
        .create_api_token(Role::Admin, "ops", &p.actor())
        .await
        .unwrap();
    f.dir.revoke_api_token(&admin_id, "x").await.unwrap();
    assert_eq!(f.dir.authenticate(admin.expose()), None);
    assert!(f.dir.authenticate(admin2.expose()).is_some());

    // Listings never carry tokens or hashes; the store only hashes.
    let list = f.dir.list_api_tokens();
    assert_eq!(list.len(), 4);
    let json = serde_json::to_string(&list).unwrap();
    let bytes = all_bytes(&f.store);
    for t in [&admin, &deployer, &auditor, &admin2] {
        assert!(!json.contains(t.expose()));
        assert!(!json.contains(&ApiToken::hash(t.expose()).to_hex()));
        assert!(!contains(&bytes, t.expose().as_bytes()));
    }
    let actions = audit_actions(&f);
    assert_eq!(
        actions,
        [
            "token.bootstrap",
            "token.create",
            "token.create",
            "token.revoke",
            "token.create",
            "token.revoke"
        ]
    );
}

#[tokio::test]
async fn bootstrap_again_when_every_admin_is_revoked() {
    let f = fixture().await;
    let (id, _) = f.dir.bootstrap_admin_token().await.unwrap().unwrap();
    let (id2, _) = f
        .dir
        .create_api_token(Role::Admin, "ops", "x")
        .await
        .unwrap();
    f.dir.revoke_api_token(&id, "x").await.unwrap();
    assert!(f.dir.bootstrap_admin_token().await.unwrap().is_none());
    // Revoked out of band (e.g. restored store) -> a start makes a new one.
    let mut rec: ApiTokenRecord = f
        .store
        .get_json(Table::ApiTokens, &api_token_key(&id2))
        .unwrap()
        .unwrap();
    rec.revoked_at = Some(Timestamp(T0));
    let mut b = Batch::new();
    b.put_json(Table::ApiTokens, api_token_key(&id2), &rec)
        .unwrap();
    f.store.commit(b).await.unwrap();
    let reopened = reopen(&f).await;
    let (_, token) = reopened.bootstrap_admin_token().await.unwrap().unwrap();
    assert_eq!(
        reopened.authenticate(token.expose()).unwrap().role,
        Role::Admin
    );
}

#[tokio::test]
async fn last_used_is_recorded_coarsely_and_survives_reopen() {
    let f = fixture().await;
    let (id, token) = f.dir.bootstrap_admin_token().await.unwrap().unwrap();
    assert_eq!(f.dir.list_api_tokens()[0].last_used, None);
    f.dir.authenticate(token.expose()).unwrap();
    assert_eq!(f.dir.list_api_tokens()[0].last_used, Some(Timestamp(T0)));
    let stored = |f: &Fixture| -> Option<Timestamp> {
        f.store
            .get_json(Table::ApiTokens, &api_used_key(&id))
            .unwrap()
    };
    assert_eq!(stored(&f), Some(Timestamp(T0)));
    f.clock.advance(Duration::from_secs(5));
    f.dir.authenticate(token.expose()).unwrap();
    assert_eq!(
        f.dir.list_api_tokens()[0].last_used,
        Some(Timestamp(T0 + 5000))
    );
    assert_eq!(stored(&f), Some(Timestamp(T0)));
    f.clock.advance(LAST_USED_PERSIST_INTERVAL);
    f.dir.authenticate(token.expose()).unwrap();
    let t = Timestamp(T0 + 5000 + LAST_USED_PERSIST_INTERVAL.as_millis() as i64);
    assert_eq!(stored(&f), Some(t));

    let reopened = reopen(&f).await;
    assert_eq!(reopened.list_api_tokens()[0].last_used, Some(t));
    assert!(reopened.authenticate(token.expose()).is_some());
}

// ---- registry credentials ----

const PASSWORD: &str = "pa55-Very-Secret-Registry-Password";

#[tokio::test]
async fn registry_credentials_are_encrypted_at_rest() {
    let f = fixture().await;
    let info = f
        .dir
        .registry_login(
            "https://Registry.Example.com:5000/",
            "robot",
            SecretString::new(PASSWORD.into()),
            "alice",
        )
        .await
        .unwrap();
    assert_eq!(info.host, "registry.example.com:5000");
    assert_eq!(info.username, "robot");
    assert_eq!(info.updated_at, Timestamp(T0));
    assert_eq!(f.dir.list_registries(), vec![info.clone()]);

    let creds = f
        .dir
        .credentials_for_registry("registry.example.com:5000")
        .unwrap()
        .unwrap();
    assert_eq!(creds.registry, "registry.example.com:5000");
    assert_eq!(creds.username, "robot");
    assert_eq!(creds.password, PASSWORD);
    assert!(!format!("{creds:?}").contains(PASSWORD));
    let image = ImageRef::parse(&format!(
        "registry.example.com:5000/team/app@sha256:{}",
        "a".repeat(64)
    ))
    .unwrap();
    assert!(f.dir.credentials_for_image(&image).unwrap().is_some());
    let hub = ImageRef::parse(&format!("library/nginx@sha256:{}", "a".repeat(64))).unwrap();
    assert!(f.dir.credentials_for_image(&hub).unwrap().is_none());
    assert!(f
        .dir
        .credentials_for_registry("other.example")
        .unwrap()
        .is_none());

    // Sealable to an agent.
    let agent = AgentSealKey::generate().unwrap();
    let task = Uuid::new_v4();
    let sealed = creds.seal(&agent.public(), task, "agent-1").unwrap();
    let opened = RegistryCredentials::open(&agent, &sealed, task, "agent-1").unwrap();
    assert_eq!(opened.password, PASSWORD);

    // The store and the audit log hold the user name, never the password.
    let bytes = all_bytes(&f.store);
    assert!(contains(&bytes, b"robot"));
    assert!(!contains(&bytes, PASSWORD.as_bytes()));
    assert!(!contains(&bytes, b"Very-Secret"));
    let entry = f.dir.audit().last().unwrap().unwrap();
    assert_eq!(entry.action, "registry.login");
    assert_eq!(entry.target, "registry.example.com:5000");
    assert_eq!(entry.detail, json!({"username": "robot"}));
    assert!(!format!("{:?}", f.dir).contains(PASSWORD));

    // A second login replaces the first.
    f.dir
        .registry_login(
            "registry.example.com:5000",
            "robot2",
            SecretString::new("other".into()),
            "bob",
        )
        .await
        .unwrap();
    let creds = f
        .dir
        .credentials_for_registry("registry.example.com:5000")
        .unwrap()
        .unwrap();
    assert_eq!(
        (creds.username.as_str(), creds.password.as_str()),
        ("robot2", "other")
    );
    assert_eq!(f.dir.list_registries().len(), 1);
}

#[tokio::test]
async fn registry_password_is_not_in_the_sled_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let clock = TestClock::new();
    let ca = ca();
    let key = [9u8; 32];
    {
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).unwrap());
        let dir = open_dir(store, ca.clone(), key, &clock, RevocationList::new())
            .await
            .unwrap();
        dir.registry_login(
            "registry.example.com",
            "robot-user",
            SecretString::new(PASSWORD.into()),
            "alice",
        )
        .await
        .unwrap();
    }
    let bytes = files_bytes(&path);
    assert!(contains(&bytes, b"robot-user"), "the scan sees stored text");
    assert!(!contains(&bytes, PASSWORD.as_bytes()));
    assert!(!contains(&bytes, b"Very-Secret"));

    // Reopened with the same key: readable.
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&path).unwrap());
    let dir = open_dir(
        store.clone(),
        ca.clone(),
        key,
        &clock,
        RevocationList::new(),
    )
    .await
    .unwrap();
    let creds = dir
        .credentials_for_registry("registry.example.com")
        .unwrap()
        .unwrap();
    assert_eq!(creds.password, PASSWORD);
    drop(dir);

    // With another key: refused at open.
    let err = open_dir(store, ca, [10u8; 32], &clock, RevocationList::new())
        .await
        .unwrap_err();
    assert!(matches!(err, DirectoryError::MasterKeyMismatch), "{err}");
    assert!(err.to_string().contains("WHARF_MASTER_KEY"), "{err}");
}

#[tokio::test]
async fn altered_credentials_do_not_decrypt() {
    let f = fixture().await;
    f.dir
        .registry_login(
            "a.example",
            "u",
            SecretString::new(PASSWORD.into()),
            "alice",
        )
        .await
        .unwrap();
    // Moving the record to another host breaks the AAD.
    let mut rec: RegistryRecord = f
        .store
        .get_json(Table::Registries, b"a.example")
        .unwrap()
        .unwrap();
    rec.host = "b.example".into();
    let mut b = Batch::new();
    b.put_json(Table::Registries, b"b.example".to_vec(), &rec)
        .unwrap();
    f.store.commit(b).await.unwrap();
    let reopened = reopen(&f).await;
    assert!(reopened
        .credentials_for_registry("a.example")
        .unwrap()
        .is_some());
    let err = reopened.credentials_for_registry("b.example").unwrap_err();
    assert!(
        matches!(err, DirectoryError::CredentialsUnreadable { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("wharf registry login b.example"),
        "{err}"
    );
    assert!(!err.to_string().contains(PASSWORD));
}

#[tokio::test]
async fn registry_login_input_checks() {
    let f = fixture().await;
    let pw = || SecretString::new("pw".into());
    for bad in [
        "",
        "bad host",
        "a/b",
        "-a.example",
        "a.example:port",
        "a.example:123456",
        "httpé://x",
        "é",
    ] {
        let err = f
            .dir
            .registry_login(bad, "u", pw(), "alice")
            .await
            .unwrap_err();
        assert_eq!(err.http_status(), 400, "{bad:?}: {err}");
    }
    let err = f
        .dir
        .registry_login("a.example", "", pw(), "alice")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        DirectoryError::InvalidInput {
            field: "username",
            ..
        }
    ));
    let err = f
        .dir
        .registry_login("a.example", "u", SecretString::new(String::new()), "alice")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--password-stdin"), "{err}");
    assert!(f.dir.list_registries().is_empty());

    assert_eq!(
        normalize_registry_host("index.docker.io").unwrap(),
        DOCKER_HUB
    );
    assert_eq!(
        normalize_registry_host("127.0.0.1:5000").unwrap(),
        "127.0.0.1:5000"
    );
}

// ---- errors and the audit trail ----

#[test]
fn error_statuses() {
    let cases: Vec<(DirectoryError, u16)> = vec![
        (DirectoryError::invalid("x", "y"), 400),
        (DirectoryError::EnrollTokenUnknown, 401),
        (
            DirectoryError::EnrollTokenWrongName {
                token_name: "a".into(),
                requested: "b".into(),
            },
            403,
        ),
        (DirectoryError::UnknownAgent { agent: "a".into() }, 404),
        (DirectoryError::LastAdminToken { id: "a".into() }, 409),
        (
            DirectoryError::EnrollTokenUsed {
                name: "a".into(),
                used_at: Timestamp(0),
            },
            410,
        ),
        (DirectoryError::MasterKeyMismatch, 500),
        (
            DirectoryError::Store(StoreError::Failed {
                reason: "disk".into(),
            }),
            503,
        ),
        (
            DirectoryError::Audit(crate::audit::AuditError::Store(StoreError::Closed)),
            503,
        ),
        (
            DirectoryError::Pki(crate::pki::PkiError::InvalidCsr { reason: "x".into() }),
            400,
        ),
    ];
    for (err, status) in cases {
        assert_eq!(err.http_status(), status, "{err}");
    }
}

#[tokio::test]
async fn the_directory_audit_trail_verifies_and_holds_no_secret() {
    let f = fixture().await;
    let (_, admin) = f.dir.bootstrap_admin_token().await.unwrap().unwrap();
    let (token, _) = f
        .dir
        .create_enroll_token("web-1", DEFAULT_ENROLL_TOKEN_TTL, "alice")
        .await
        .unwrap();
    f.dir.enroll(request(&token, "web-1")).await.unwrap();
    f.dir
        .registry_login(
            "r.example",
            "u",
            SecretString::new(PASSWORD.into()),
            "alice",
        )
        .await
        .unwrap();
    f.dir.revoke_agent("web-1", "alice").await.unwrap();
    let entries = f.dir.audit().list(0, 100).unwrap();
    assert_eq!(entries.len(), 5);
    let text = serde_json::to_string(&entries).unwrap();
    for secret in [admin.expose(), token.expose(), PASSWORD] {
        assert!(!text.contains(secret));
    }
    assert_eq!(f.dir.audit().verify().unwrap().entries, 5);

    // Tampering with the audit table is caught.
    let mut e = entries[2].clone();
    e.target = "web-2".into();
    let mut b = Batch::new();
    b.put_json(Table::AuditLog, crate::store::seq_key(3).to_vec(), &e)
        .unwrap();
    f.store.commit(b).await.unwrap();
    let brk = f.dir.audit().verify().unwrap_err();
    assert_eq!(brk.seq, 3);
    assert!(matches!(brk.reason, BreakReason::HashMismatch { .. }));
}
