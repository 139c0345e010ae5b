//! The project directory `<deploy-root>/<project>/`:
//!
//! ```text
//! compose.lock.yml          the running release's lock (passed first with -f)
//! <extra files>             its extra files (`*.yml`/`*.yaml` passed with -f after the lock)
//! .wharf/current.json       the running release's manifest (files, digests, release)
//! .wharf/version.json       the signed sticker
//! .wharf/kept/              during a deploy: the copy of the release it replaces
//! .wharf/previous/          the rollback copy: the release before the running one
//! ```
//!
//! A release copy (`kept/`, `previous/`) holds the files, `manifest.json` (written last,
//! so a copy without it is incomplete) and `version.json` when there was a sticker. Every
//! file is written atomically (temp, fsync, rename, fsync of the directory) and every
//! operation here can be repeated after a kill.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wharf_protocol::ReleaseInfo;

/// The lock's file name in the project directory.
pub const LOCK_FILE: &str = "compose.lock.yml";
/// Wharf's own directory inside the project directory.
pub const WHARF_DIR: &str = ".wharf";
/// The running release's manifest, in [`WHARF_DIR`].
pub const CURRENT_MANIFEST: &str = "current.json";
/// The sticker, in [`WHARF_DIR`].
pub const STICKER_FILE: &str = "version.json";
/// The manifest inside a release copy.
pub const COPY_MANIFEST: &str = "manifest.json";
/// The copy of the replaced release during a deploy, in [`WHARF_DIR`].
pub const KEPT_DIR: &str = "kept";
/// The rollback copy, in [`WHARF_DIR`].
pub const PREVIOUS_DIR: &str = "previous";
/// Most extra files a task may carry.
pub const MAX_EXTRA_FILES: usize = 64;

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// An IO error on a path.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A manifest does not parse.
    #[error("{path} is not a Wharf manifest ({reason}); remove the project's .wharf directory only if you know what runs")]
    Manifest {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file name a task gave is not allowed.
    #[error("file name `{name}`: {reason}")]
    BadName {
        /// The name as given (cut to 64 characters).
        name: String,
        /// What is wrong and what to do.
        reason: String,
    },
}

/// What a release consists of, as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub schema: u32,
    /// The release.
    pub release: ReleaseInfo,
    /// The task that deployed it.
    pub task_id: String,
    /// Every file of the release, the lock first.
    pub files: Vec<String>,
    /// The Compose files among them, in `-f` order (the lock first).
    pub compose_files: Vec<String>,
    /// The pinned image (`repo@sha256:...`) of every service.
    pub images: BTreeMap<String, String>,
}

/// The manifest format written by this agent.
pub const MANIFEST_SCHEMA: u32 = 1;

/// Checks a file name a task gives for an extra file: `[A-Za-z0-9._-]`, not starting
/// with `.` (no `..`, no `.wharf`), not the lock's name, at most 128 bytes.
///
/// # Errors
///
/// [`FilesError::BadName`] saying what is wrong.
pub fn check_file_name(name: &str) -> Result<(), FilesError> {
    let bad = |reason: &str| FilesError::BadName {
        name: name.chars().take(64).collect(),
        reason: reason.to_owned(),
    };
    if name.is_empty() || name.len() > 128 {
        return Err(bad("must be 1 to 128 bytes"));
    }
    if name.starts_with('.') {
        return Err(bad(
            "must not start with `.` (no hidden files, `..` or `.wharf`)",
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only letters, digits, `.`, `_` and `-` are allowed (files go directly into the \
             project directory)",
        ));
    }
    if name == LOCK_FILE {
        return Err(bad("is the lock's own name; rename the extra file"));
    }
    Ok(())
}

/// The directory of one project.
#[derive(Debug, Clone)]
pub struct ProjectDir {
    dir: PathBuf,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FilesError + 'a {
    move |source| FilesError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    wharf_sticker::write_atomic(path, bytes).map_err(|e| FilesError::Io {
        action: "cannot write",
        path: path.to_owned(),
        source: io::Error::other(e.to_string()),
    })
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, FilesError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", path)(e)),
    }
}

fn remove_file(path: &Path) -> Result<(), FilesError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("cannot remove", path)(e)),
        _ => Ok(()),
    }
}

fn remove_dir(path: &Path) -> Result<(), FilesError> {
    match std::fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("cannot remove", path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(path: &Path) -> Result<(), FilesError> {
    std::fs::File::open(path)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot sync", path))
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, FilesError> {
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| FilesError::Manifest {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    if m.schema != MANIFEST_SCHEMA {
        return Err(FilesError::Manifest {
            path: path.to_owned(),
            reason: format!(
                "schema {} where this agent reads {MANIFEST_SCHEMA}",
                m.schema
            ),
        });
    }
    for name in &m.files {
        if name != LOCK_FILE {
            check_file_name(name).map_err(|e| FilesError::Manifest {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        }
    }
    Ok(m)
}

/// A release copy read from disk.
#[derive(Debug, Clone)]
pub struct ReleaseCopy {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its files, by name.
    pub files: BTreeMap<String, Vec<u8>>,
    /// Its sticker, if it had one.
    pub sticker: Option<Vec<u8>>,
}

impl ProjectDir {
    /// The directory of `project` under `deploy_root` (the name must have passed
    /// `wharf_sticker::check_project_name`).
    pub fn new(deploy_root: &Path, project: &str) -> Self {
        ProjectDir {
            dir: deploy_root.join(project),
        }
    }

    /// The project directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn wharf(&self) -> PathBuf {
        self.dir.join(WHARF_DIR)
    }

    /// The sticker's path.
    pub fn sticker_path(&self) -> PathBuf {
        self.wharf().join(STICKER_FILE)
    }

    /// The running release's manifest, if there is one.
    ///
    /// # Errors
    ///
    /// IO errors, an unreadable manifest.
    pub fn current(&self) -> Result<Option<Manifest>, FilesError> {
        let path = self.wharf().join(CURRENT_MANIFEST);
        read(&path)?.map(|b| parse_manifest(&path, &b)).transpose()
    }

    /// The rollback copy, if there is a complete one.
    ///
    /// # Errors
    ///
    /// IO errors, an unreadable manifest.
    pub fn previous(&self) -> Result<Option<ReleaseCopy>, FilesError> {
        self.read_copy(&self.wharf().join(PREVIOUS_DIR))
    }

    /// The kept copy, if there is a complete one.
    ///
    /// # Errors
    ///
    /// IO errors, an unreadable manifest.
    pub fn kept(&self) -> Result<Option<ReleaseCopy>, FilesError> {
        self.read_copy(&self.wharf().join(KEPT_DIR))
    }

    fn read_copy(&self, dir: &Path) -> Result<Option<ReleaseCopy>, FilesError> {
        let path = dir.join(COPY_MANIFEST);
        let Some(bytes) = read(&path)? else {
            return Ok(None);
        };
        let manifest = parse_manifest(&path, &bytes)?;
        let mut files = BTreeMap::new();
        for name in &manifest.files {
            let p = dir.join(name);
            let b = read(&p)?.ok_or_else(|| FilesError::Manifest {
                path: path.clone(),
                reason: format!("{name} is listed but missing"),
            })?;
            files.insert(name.clone(), b);
        }
        let sticker = read(&dir.join(STICKER_FILE))?;
        Ok(Some(ReleaseCopy {
            manifest,
            files,
            sticker,
        }))
    }

    /// `keep-current`: copies the running release (files, manifest, sticker) to `kept/`,
    /// replacing any earlier kept copy. Nothing to copy: `kept/` is left empty.
    ///
    /// # Errors
    ///
    /// IO errors, an unreadable manifest or a listed file missing.
    pub fn keep_current(&self) -> Result<(), FilesError> {
        let kept = self.wharf().join(KEPT_DIR);
        remove_dir(&kept)?;
        let Some(manifest) = self.current()? else {
            return Ok(());
        };
        for name in &manifest.files {
            let src = self.dir.join(name);
            let bytes = read(&src)?.ok_or_else(|| FilesError::Manifest {
                path: self.wharf().join(CURRENT_MANIFEST),
                reason: format!("{name} is listed but missing from the project directory"),
            })?;
            write_atomic(&kept.join(name), &bytes)?;
        }
        if let Some(sticker) = read(&self.sticker_path())? {
            write_atomic(&kept.join(STICKER_FILE), &sticker)?;
        }
        let bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        write_atomic(&kept.join(COPY_MANIFEST), &bytes)
    }

    /// `write-files`: writes `files` into the project directory, removes the files of the
    /// running release that are not among them, and writes `manifest` as the current one.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn write_release(
        &self,
        manifest: &Manifest,
        files: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), FilesError> {
        let old = self.current().ok().flatten();
        for (name, bytes) in files {
            write_atomic(&self.dir.join(name), bytes)?;
        }
        if let Some(old) = old {
            for name in old.files.iter().filter(|n| !files.contains_key(*n)) {
                remove_file(&self.dir.join(name))?;
            }
        }
        let bytes = serde_json::to_vec_pretty(manifest).unwrap_or_default();
        write_atomic(&self.wharf().join(CURRENT_MANIFEST), &bytes)?;
        sync_dir(&self.dir)
    }

    /// `restore-files`: puts the kept copy back (files, manifest, sticker) and removes
    /// `new_files` it does not hold; with no kept copy, removes `new_files`, the manifest
    /// and the sticker.
    ///
    /// # Errors
    ///
    /// IO errors, an unreadable kept copy.
    pub fn restore_kept(&self, new_files: &[String]) -> Result<(), FilesError> {
        match self.kept()? {
            Some(copy) => {
                self.write_release(&copy.manifest, &copy.files)?;
                for name in new_files.iter().filter(|n| !copy.files.contains_key(*n)) {
                    remove_file(&self.dir.join(name))?;
                }
                match &copy.sticker {
                    Some(s) => write_atomic(&self.sticker_path(), s)?,
                    None => remove_file(&self.sticker_path())?,
                }
            }
            None => {
                for name in new_files {
                    remove_file(&self.dir.join(name))?;
                }
                remove_file(&self.wharf().join(CURRENT_MANIFEST))?;
                remove_file(&self.sticker_path())?;
            }
        }
        if self.dir.exists() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// `promote`: the kept copy becomes the rollback copy (a deploy onto an empty
    /// project keeps the rollback copy it had). Repeatable.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn promote_kept(&self) -> Result<(), FilesError> {
        let kept = self.wharf().join(KEPT_DIR);
        if !kept.exists() {
            return Ok(());
        }
        if !kept.join(COPY_MANIFEST).exists() {
            return remove_dir(&kept);
        }
        let previous = self.wharf().join(PREVIOUS_DIR);
        remove_dir(&previous)?;
        std::fs::rename(&kept, &previous).map_err(io_err("cannot rename", &kept))?;
        sync_dir(&self.wharf())
    }

    /// `discard-kept`: removes the kept copy.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn discard_kept(&self) -> Result<(), FilesError> {
        remove_dir(&self.wharf().join(KEPT_DIR))
    }

    /// Writes the sticker atomically.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn write_sticker(&self, text: &str) -> Result<(), FilesError> {
        write_atomic(&self.sticker_path(), text.as_bytes())
    }

    /// Reads the sticker, if there is one.
    ///
    /// # Errors
    ///
    /// IO errors.
    pub fn read_sticker(&self) -> Result<Option<Vec<u8>>, FilesError> {
        read(&self.sticker_path())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(task: &str, files: &[&str]) -> Manifest {
        Manifest {
            schema: MANIFEST_SCHEMA,
            release: ReleaseInfo::default(),
            task_id: task.into(),
            files: files.iter().map(|s| s.to_string()).collect(),
            compose_files: vec![LOCK_FILE.into()],
            images: BTreeMap::new(),
        }
    }

    fn content(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(n, c)| (n.to_string(), c.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn file_names() {
        for ok in ["override.yml", "app.env", "nginx_conf-1"] {
            check_file_name(ok).unwrap();
        }
        for bad in ["", ".env", "..", "a/b", "a b", LOCK_FILE, &"x".repeat(129)] {
            assert!(check_file_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_write_restore_promote() {
        let root = tempfile::tempdir().unwrap();
        let p = ProjectDir::new(root.path(), "shop");
        // First release.
        p.keep_current().unwrap();
        let m1 = manifest("t1", &[LOCK_FILE, "a.env"]);
        p.write_release(&m1, &content(&[(LOCK_FILE, "one"), ("a.env", "A")]))
            .unwrap();
        p.write_sticker("sticker-1").unwrap();
        p.promote_kept().unwrap();
        assert!(p.previous().unwrap().is_none());
        assert_eq!(p.current().unwrap(), Some(m1.clone()));

        // Second release, then restored.
        p.keep_current().unwrap();
        p.keep_current().unwrap();
        let m2 = manifest("t2", &[LOCK_FILE, "b.env"]);
        p.write_release(&m2, &content(&[(LOCK_FILE, "two"), ("b.env", "B")]))
            .unwrap();
        assert!(!root.path().join("shop/a.env").exists());
        p.write_sticker("sticker-2").unwrap();
        p.restore_kept(&m2.files).unwrap();
        p.restore_kept(&m2.files).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("shop").join(LOCK_FILE)).unwrap(),
            "one"
        );
        assert!(root.path().join("shop/a.env").exists());
        assert!(!root.path().join("shop/b.env").exists());
        assert_eq!(p.read_sticker().unwrap().unwrap(), b"sticker-1");
        assert_eq!(p.current().unwrap(), Some(m1.clone()));
        p.discard_kept().unwrap();

        // Second release for good: the first becomes the rollback copy.
        p.keep_current().unwrap();
        p.write_release(&m2, &content(&[(LOCK_FILE, "two"), ("b.env", "B")]))
            .unwrap();
        p.write_sticker("sticker-2").unwrap();
        p.promote_kept().unwrap();
        p.promote_kept().unwrap();
        let prev = p.previous().unwrap().unwrap();
        assert_eq!(prev.manifest, m1);
        assert_eq!(prev.files[LOCK_FILE], b"one");
        assert_eq!(prev.sticker.as_deref(), Some(&b"sticker-1"[..]));
        assert!(p.kept().unwrap().is_none());
    }

    #[test]
    fn restoring_a_first_release_removes_it() {
        let root = tempfile::tempdir().unwrap();
        let p = ProjectDir::new(root.path(), "shop");
        p.keep_current().unwrap();
        let m1 = manifest("t1", &[LOCK_FILE]);
        p.write_release(&m1, &content(&[(LOCK_FILE, "one")]))
            .unwrap();
        p.write_sticker("s").unwrap();
        p.restore_kept(&m1.files).unwrap();
        assert!(p.current().unwrap().is_none());
        assert!(p.read_sticker().unwrap().is_none());
        assert!(!root.path().join("shop").join(LOCK_FILE).exists());
    }

    #[test]
    fn a_hand_edited_manifest_is_an_error_not_a_path_escape() {
        let root = tempfile::tempdir().unwrap();
        let p = ProjectDir::new(root.path(), "shop");
        std::fs::create_dir_all(root.path().join("shop/.wharf")).unwrap();
        let mut m = manifest("t", &[LOCK_FILE]);
        m.files.push("../../etc/passwd".into());
        std::fs::write(
            root.path().join("shop/.wharf/current.json"),
            serde_json::to_vec(&m).unwrap(),
        )
        .unwrap();
        assert!(matches!(p.current(), Err(FilesError::Manifest { .. })));
        std::fs::write(root.path().join("shop/.wharf/current.json"), b"{").unwrap();
        assert!(matches!(p.current(), Err(FilesError::Manifest { .. })));
    }
}
