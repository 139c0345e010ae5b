//! The assembled core: data dir, keys, store, audit log, directory and engine.
//!
//! [`App::open`] is what `wharf-core serve` runs at start-up. On the first start it
//! creates, under the data dir: the CA and server certificate (`ca.pem`, `ca.key`,
//! `server.pem`, `server.key`), the Ed25519 sticker-signing key (`sticker.key`), the
//! 256-bit master key for registry credentials (`master.key`, unless
//! `WHARF_MASTER_KEY` gives it), the QUIC endpoint secret (`quic-reset.key`), the store (`store/`) and the first admin API token
//! (returned once in [`Bootstrap::admin_token`] and written to `admin.token`). Every
//! file holding a key is mode 0600. Later starts reuse them all.
//!
//! The transports (QUIC, HTTPS) get an [`App`] and nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use wharf_protocol::{AgentTask, ImageRef, SealedCredentials};
use wharf_sticker::{Keyring, SigningKey};

use crate::audit::AuditLog;
use crate::directory::{Directory, DirectoryConfig, MasterKey, LAST_SEEN_PERSIST_INTERVAL};
use crate::engine::{AgentDirectory, Engine, EngineConfig};
use crate::pki::{
    read_secret_file, write_secret_file, CaFingerprint, CorePki, RevocationList, SecretString,
};
use crate::store::{SledStore, Store};
use crate::transport::EndpointKey;

/// Environment variable that supplies the master key (64 hex digits) instead of
/// `DATA/master.key`.
pub const MASTER_KEY_ENV: &str = "WHARF_MASTER_KEY";

/// File names in the data dir.
pub mod files {
    /// The CA certificate (public; operators pass it as `--ca`).
    pub const CA_PEM: &str = "ca.pem";
    /// The first admin token (0600).
    pub const ADMIN_TOKEN: &str = "admin.token";
    /// The sticker-signing key, PKCS#8 (0600).
    pub const STICKER_KEY: &str = "sticker.key";
    /// The sticker verifying key, one `Keyring` line (public).
    pub const STICKER_PUB: &str = "sticker.pub";
    /// The master key, hex (0600), unless given by the environment.
    pub const MASTER_KEY: &str = "master.key";
    /// The store directory.
    pub const STORE: &str = "store";
    /// The QUIC endpoint's stateless-reset and connection-id secret, hex (0600); see
    /// [`EndpointKey`](crate::transport::EndpointKey).
    pub const QUIC_RESET_KEY: &str = "quic-reset.key";
}

/// What [`App::open`] needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// The data dir (created 0700 if missing).
    pub data_dir: PathBuf,
    /// Names the server certificate must cover, besides localhost and 127.0.0.1.
    pub server_names: Vec<String>,
    /// The master key from the environment, if given (hex).
    pub master_key: Option<SecretString>,
    /// Engine (queue) settings.
    pub engine: EngineConfig,
}

/// What happened on start-up that the operator must see once.
#[derive(Debug)]
pub struct Bootstrap {
    /// The first admin token, when it was created by this start (print it once).
    pub admin_token: Option<SecretString>,
    /// Whether the CA was created by this start.
    pub ca_created: bool,
    /// Whether the server certificate was (re)issued by this start.
    pub server_cert_issued: bool,
}

/// The running core's parts. Cheap to clone.
#[derive(Clone, Debug)]
pub struct App {
    /// The data dir.
    pub data_dir: PathBuf,
    /// The store every part writes to.
    pub store: Arc<dyn Store>,
    /// The hash-chained audit log.
    pub audit: AuditLog,
    /// Agents, tokens, registry credentials.
    pub directory: Directory,
    /// The task engine.
    pub engine: Engine,
    /// The PKI: CA and server identity.
    pub pki: Arc<CorePki>,
    /// The revocation list every mTLS verifier checks.
    pub revocations: RevocationList,
    /// The keys stickers are verified with (core's own signing key's public half).
    pub sticker_keyring: Keyring,
    /// The QUIC endpoint's persistent secret (stateless resets that reach the agents of
    /// a previous process).
    pub quic_key: Arc<EndpointKey>,
}

impl App {
    /// Opens (or on first start creates) everything under the data dir.
    ///
    /// # Errors
    ///
    /// A data dir that cannot be created or read, a key file readable by others, a
    /// master key that does not match the store, a store held by another process.
    pub async fn open(config: AppConfig) -> Result<(App, Bootstrap)> {
        let dir = &config.data_dir;
        create_private_dir(dir)?;
        let pki = CorePki::load_or_create(dir, &config.server_names, SystemTime::now())
            .with_context(|| format!("cannot set up the PKI in {}", dir.display()))?;
        let signing_key = load_or_create_signing_key(dir)?;
        let master_key = load_or_create_master_key(dir, config.master_key.as_ref())?;
        let quic_key = Arc::new(EndpointKey::load_or_create(
            &dir.join(files::QUIC_RESET_KEY),
        )?);

        let store_dir = dir.join(files::STORE);
        let store: Arc<dyn Store> = Arc::new(
            SledStore::open(&store_dir)
                .with_context(|| format!("cannot open the store in {}", store_dir.display()))?,
        );
        let audit = AuditLog::open(store.clone()).context("cannot open the audit log")?;
        let revocations = RevocationList::new();
        let ca = Arc::new(
            crate::pki::CertificateAuthority::from_pem(
                pki.ca.cert_pem(),
                pki.ca.key_pem().expose(),
            )
            .context("cannot reload the CA")?,
        );
        let directory = Directory::open(
            DirectoryConfig::new(audit.clone(), ca, master_key)
                .with_revocations(revocations.clone()),
        )
        .await
        .context("cannot open the agent directory")?;
        // Last-seen times are kept in memory and written in batches (see
        // `Directory::persist_last_seen`); the task ends when the directory is dropped.
        directory.spawn_last_seen_writer(LAST_SEEN_PERSIST_INTERVAL);
        let admin_token = match directory
            .bootstrap_admin_token()
            .await
            .context("cannot create the first admin token")?
        {
            Some((_id, token)) => {
                write_secret_file(&dir.join(files::ADMIN_TOKEN), token.expose().as_bytes())
                    .context("cannot write admin.token")?;
                Some(token)
            }
            None => None,
        };
        let sticker_keyring = Keyring::from(signing_key.verifying_key().clone());
        let engine = Engine::start(
            store.clone(),
            Arc::new(DirectoryAdapter(directory.clone())),
            Some(Arc::new(signing_key)),
            config.engine.clone().with_audit(audit.clone()),
        )
        .context("cannot start the task engine")?;
        let bootstrap = Bootstrap {
            admin_token,
            ca_created: pki.ca_created,
            server_cert_issued: pki.server_cert_issued,
        };
        Ok((
            App {
                data_dir: dir.clone(),
                store,
                audit,
                directory,
                engine,
                pki: Arc::new(pki),
                revocations,
                sticker_keyring,
                quic_key,
            },
            bootstrap,
        ))
    }

    /// The CA's fingerprint, `sha256:<hex>`: what agents pin with `--ca-hash`.
    pub fn ca_fingerprint(&self) -> CaFingerprint {
        self.pki.fingerprint()
    }
}

/// The engine's view of the directory.
struct DirectoryAdapter(Directory);

impl AgentDirectory for DirectoryAdapter {
    fn agent_exists(&self, name: &str) -> bool {
        self.0
            .agent_by_name(name)
            .is_some_and(|agent| !agent.is_revoked())
    }

    fn seal_credentials(
        &self,
        agent: &str,
        task: &AgentTask,
        images: &[ImageRef],
    ) -> Result<Option<SealedCredentials>, String> {
        let mut found = None;
        for image in images {
            if let Some(c) = self
                .0
                .credentials_for_image(image)
                .map_err(|e| e.to_string())?
            {
                found = Some(c);
                break;
            }
        }
        let Some(credentials) = found else {
            return Ok(None);
        };
        let record = self
            .0
            .agent_by_name(agent)
            .ok_or_else(|| format!("agent {agent} is not enrolled"))?;
        credentials
            .seal(&record.x25519_public, task.id, &record.id.to_string())
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("cannot read the data dir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{} is not a directory; pass another --data-dir",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (chmod 700)", dir.display()))?;
    }
    Ok(())
}

fn load_or_create_signing_key(dir: &Path) -> Result<SigningKey> {
    let path = dir.join(files::STICKER_KEY);
    if path.exists() {
        crate::pki::ensure_private(&path)?;
        return SigningKey::read_pkcs8_file(&path)
            .with_context(|| format!("cannot read the sticker key {}", path.display()));
    }
    let (key, pkcs8) = SigningKey::generate().context("cannot generate the sticker key")?;
    pkcs8
        .write_file(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let public = Keyring::from(key.verifying_key().clone()).to_text();
    crate::pki::write_public_file(&dir.join(files::STICKER_PUB), public.as_bytes())
        .context("cannot write sticker.pub")?;
    Ok(key)
}

fn load_or_create_master_key(dir: &Path, from_env: Option<&SecretString>) -> Result<MasterKey> {
    if let Some(hex) = from_env {
        return MasterKey::parse(hex.expose())
            .with_context(|| format!("{MASTER_KEY_ENV} is not a 256-bit key in hex"));
    }
    let path = dir.join(files::MASTER_KEY);
    if path.exists() {
        let text = read_secret_file(&path)?;
        return MasterKey::parse(text.expose().trim())
            .with_context(|| format!("{} does not hold a 256-bit key in hex", path.display()));
    }
    let key = MasterKey::generate().context("cannot generate the master key")?;
    write_secret_file(&path, key.to_hex().expose().as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn config(dir: &Path) -> AppConfig {
        AppConfig {
            data_dir: dir.to_path_buf(),
            server_names: vec!["core.example".into()],
            master_key: None,
            engine: EngineConfig::default(),
        }
    }

    #[tokio::test]
    async fn first_start_creates_everything_private_and_later_starts_reuse_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let fingerprint;
        {
            let (app, boot) = App::open(config(&dir)).await.unwrap();
            let token = boot.admin_token.expect("first start prints an admin token");
            assert!(boot.ca_created);
            assert!(app.directory.authenticate(token.expose()).is_some());
            let on_disk = std::fs::read_to_string(dir.join(files::ADMIN_TOKEN)).unwrap();
            assert_eq!(on_disk.trim(), token.expose());
            fingerprint = app.ca_fingerprint();
        }
        for file in [
            files::ADMIN_TOKEN,
            files::STICKER_KEY,
            files::MASTER_KEY,
            files::QUIC_RESET_KEY,
            "ca.key",
            "server.key",
        ] {
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} mode {mode:o}");
        }
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // The store is released once the first App's tasks let go of it.
        let (app, boot) = loop {
            match App::open(config(&dir)).await {
                Ok(opened) => break opened,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        assert!(
            boot.admin_token.is_none(),
            "the admin token is printed once"
        );
        assert!(!boot.ca_created);
        assert_eq!(app.ca_fingerprint(), fingerprint);
    }

    #[tokio::test]
    async fn a_wrong_master_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        drop(App::open(config(&dir)).await.unwrap());
        std::fs::remove_file(dir.join(files::MASTER_KEY)).unwrap();
        let mut cfg = config(&dir);
        cfg.master_key = Some(SecretString::new("ab".repeat(32)));
        let error = loop {
            match App::open(cfg.clone()).await {
                Err(e) if format!("{e:#}").contains("in use") => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                Err(e) => break format!("{e:#}"),
                Ok(_) => panic!("a different master key must be refused"),
            }
        };
        assert!(error.contains("master key"), "{error}");
    }
}
