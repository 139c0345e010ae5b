//! Key material on disk: atomic writes with restrictive modes, permission checks, and the
//! core's CA and server certificate under its data dir.
//!
//! This is the only part of the PKI module that does file IO.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ring::rand::SecureRandom as _;
use rustls_pki_types::CertificateDer;

use super::ca::{CertificateAuthority, IssuedCertificate, ServerIdentity};
use super::error::{PkiError, Result};
use super::inspect::{cert_info, certs_from_pem, CaFingerprint};
use super::secret::SecretString;
use super::tls::{server_cert_is_current, TlsIdentity};
use super::SERVER_CERT_RENEW_BEFORE;

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path.file_name().ok_or_else(|| {
        PkiError::io(
            "write",
            path,
            std::io::Error::other("the path has no file name"),
        )
    })?;
    let mut suffix = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut suffix)
        .map_err(|_| PkiError::Random)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        hex::encode(suffix)
    ));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| PkiError::io("create", &tmp, e))?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| PkiError::io("set permissions on", &tmp, e))?;
        file.write_all(bytes)
            .map_err(|e| PkiError::io("write", &tmp, e))?;
        file.sync_all()
            .map_err(|e| PkiError::io("fsync", &tmp, e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| PkiError::io("rename into place", path, e))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| PkiError::io("fsync the directory of", path, e))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes a secret file atomically with mode 0600: a temporary file created with 0600 in
/// the same directory, written, fsynced, renamed over `path`, and the directory fsynced.
/// A reader sees the old content or the new, never a part, and never a moment where the
/// file is readable by others.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a public file (a certificate) atomically with mode 0644, like
/// [`write_secret_file`].
pub fn write_public_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, bytes, 0o644)
}

/// Refuses a secret file that is not a regular file, or that group or others may read,
/// write or execute (any of mode bits 0o077).
pub fn ensure_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| PkiError::io("read the metadata of", path, e))?;
    if !meta.is_file() {
        return Err(PkiError::io(
            "use",
            path,
            std::io::Error::other("it is not a regular file"),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PkiError::InsecurePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Reads a secret file after [`ensure_private`] accepts it.
pub fn read_secret_file(path: &Path) -> Result<SecretString> {
    ensure_private(path)?;
    let bytes = fs::read(path).map_err(|e| PkiError::io("read", path, e))?;
    String::from_utf8(bytes)
        .map(SecretString::new)
        .map_err(|_| PkiError::InvalidPem {
            what: "key file",
            label: "PRIVATE KEY",
            reason: "the file is not text".into(),
        })
}

fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| PkiError::io("read", path, e))
}

/// The core's PKI as kept in its data dir: the CA and the server certificate.
///
/// Files: `ca.pem` (CA certificate, public, 0644), `ca.key` (0600), `server.pem` (server
/// certificate, 0644), `server.key` (0600).
#[derive(Debug)]
pub struct CorePki {
    /// The CA.
    pub ca: CertificateAuthority,
    /// The current server certificate and key.
    pub server: ServerIdentity,
    /// Whether the CA was created by this call (first start): core should print its
    /// fingerprint prominently.
    pub ca_created: bool,
    /// Whether the server certificate was (re)issued by this call: first start, names
    /// changed, near expiry, or missing/unreadable files.
    pub server_cert_issued: bool,
}

impl CorePki {
    /// File name of the CA certificate in the data dir.
    pub const CA_CERT_FILE: &'static str = "ca.pem";
    /// File name of the CA key in the data dir.
    pub const CA_KEY_FILE: &'static str = "ca.key";
    /// File name of the server certificate in the data dir.
    pub const SERVER_CERT_FILE: &'static str = "server.pem";
    /// File name of the server key in the data dir.
    pub const SERVER_KEY_FILE: &'static str = "server.key";

    /// Loads the CA and server certificate from `data_dir`, creating what is missing.
    ///
    /// - No `ca.pem`: a new CA is generated (`ca.key` written first, then `ca.pem`).
    /// - `ca.pem` without `ca.key`, an unreadable pair, or a key that group/others can
    ///   read: an error, never a silent new CA (agents have pinned the old one).
    /// - The server certificate is re-issued when missing, unreadable, not issued by this
    ///   CA, not covering exactly `names` plus the defaults, or within
    ///   [`SERVER_CERT_RENEW_BEFORE`] of expiry.
    ///
    /// The data dir is created with mode 0700 if missing.
    pub fn load_or_create<S: AsRef<str>>(
        data_dir: &Path,
        names: &[S],
        now: SystemTime,
    ) -> Result<Self> {
        if !data_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)
                .map_err(|e| PkiError::io("create the data dir", data_dir, e))?;
        }
        let ca_cert_path = data_dir.join(Self::CA_CERT_FILE);
        let ca_key_path = data_dir.join(Self::CA_KEY_FILE);
        let (ca, ca_created) = if ca_cert_path.exists() {
            if !ca_key_path.exists() {
                return Err(PkiError::InconsistentState {
                    path: ca_key_path,
                    reason: format!(
                        "the CA key is missing while {} exists; restore it from backup (a new CA would lock out every enrolled agent), or remove {} to start over with a new CA and re-enroll all agents",
                        Self::CA_CERT_FILE,
                        Self::CA_CERT_FILE
                    ),
                });
            }
            let key = read_secret_file(&ca_key_path)?;
            let cert = read_text(&ca_cert_path)?;
            (CertificateAuthority::from_pem(&cert, key.expose())?, false)
        } else {
            let ca = CertificateAuthority::generate(now)?;
            write_secret_file(&ca_key_path, ca.key_pem().as_bytes())?;
            write_public_file(&ca_cert_path, ca.cert_pem().as_bytes())?;
            (ca, true)
        };

        let server_cert_path = data_dir.join(Self::SERVER_CERT_FILE);
        let server_key_path = data_dir.join(Self::SERVER_KEY_FILE);
        let existing = if ca_created {
            None
        } else {
            Self::load_server(&server_cert_path, &server_key_path)?
        };
        let (server, server_cert_issued) = match existing {
            Some(s)
                if server_cert_is_current(
                    ca.cert_der(),
                    &s.cert.der,
                    names,
                    now,
                    SERVER_CERT_RENEW_BEFORE,
                ) =>
            {
                (s, false)
            }
            _ => {
                let s = ca.issue_server_cert(names, now)?;
                write_secret_file(&server_key_path, s.key_pem.as_bytes())?;
                write_public_file(&server_cert_path, s.cert.pem.as_bytes())?;
                (s, true)
            }
        };
        Ok(CorePki {
            ca,
            server,
            ca_created,
            server_cert_issued,
        })
    }

    /// The existing server identity, `None` when missing or unusable (it is re-issued then).
    /// A key file readable by others is an error, not a reason to re-issue silently.
    fn load_server(cert_path: &Path, key_path: &Path) -> Result<Option<ServerIdentity>> {
        if !cert_path.exists() || !key_path.exists() {
            return Ok(None);
        }
        let key_pem = read_secret_file(key_path)?;
        let Ok(cert_pem) = read_text(cert_path) else {
            return Ok(None);
        };
        let Ok(certs) = certs_from_pem("server certificate", cert_pem.as_bytes()) else {
            return Ok(None);
        };
        let Some(der) = certs.into_iter().next() else {
            return Ok(None);
        };
        let Ok(info) = cert_info(&der) else {
            return Ok(None);
        };
        if TlsIdentity::from_pem(&cert_pem, key_pem.expose()).is_err() {
            return Ok(None);
        }
        Ok(Some(ServerIdentity {
            cert: IssuedCertificate {
                der,
                pem: cert_pem,
                serial: info.serial,
                not_before: info.not_before,
                not_after: info.not_after,
            },
            key_pem,
        }))
    }

    /// The CA's fingerprint (`sha256:...`), for `--ca-hash`.
    pub fn fingerprint(&self) -> CaFingerprint {
        self.ca.fingerprint()
    }

    /// The CA certificate, DER.
    pub fn ca_cert(&self) -> &CertificateDer<'static> {
        self.ca.cert_der()
    }

    /// The server's TLS identity (server certificate, then the CA certificate).
    pub fn server_tls_identity(&self) -> Result<TlsIdentity> {
        TlsIdentity::for_server(&self.server, self.ca.cert_der())
    }

    /// Path of the CA certificate in `data_dir`.
    pub fn ca_cert_path(data_dir: &Path) -> PathBuf {
        data_dir.join(Self::CA_CERT_FILE)
    }
}
