//! Sticker files: where they live (design §6), atomic writes and size-capped reads.

use crate::model::{MalformedSticker, SignedSticker, MAX_STICKER_BYTES};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

/// Longest target or project name accepted in a sticker path.
pub const MAX_NAME_LEN: usize = 128;

/// Why a sticker path could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// The docker target name cannot be a file name.
    #[error(
        "invalid target name {name}: {reason}; a target is a Docker container name \
         ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most {MAX_NAME_LEN} characters)"
    )]
    InvalidTarget {
        /// The name as given, quoted, escaped and shortened.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The Compose project name cannot be a directory name.
    #[error(
        "invalid Compose project name {name}: {reason}; a project name is \
         [a-z0-9][a-z0-9_-]*, at most {MAX_NAME_LEN} characters"
    )]
    InvalidProject {
        /// The name as given, quoted, escaped and shortened.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Why a file could not be written. Each variant names the path and the failed step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The path has no file name (it is empty, `/`, or ends in `..`).
    #[error("cannot write {path}: the path does not name a file")]
    NotAFilePath {
        /// The path given.
        path: PathBuf,
    },
    /// Creating the directory that will hold the file failed.
    #[error(
        "cannot create directory {path}: {source}; check that the parent exists and is writable"
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Creating, writing or syncing the temporary file failed (it was removed).
    #[error("cannot write temporary file {path}: {source}; check free space and permissions")]
    Temp {
        /// The temporary file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Renaming the temporary file over the destination failed (the temporary file was
    /// removed, the destination is unchanged).
    #[error("cannot rename a temporary file to {path}: {source}")]
    Rename {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is in place but syncing its directory failed, so the rename may not survive
    /// a power loss; retrying the write is safe.
    #[error("wrote {path} but could not sync its directory: {source}; retry the write")]
    SyncDir {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// There is no file at the path (for a sticker: nothing was deployed there by wharf,
    /// or the sticker was deleted).
    #[error("no file at {path}")]
    NotFound {
        /// The path.
        path: PathBuf,
    },
    /// The path exists but is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than the limit, so it was not read.
    #[error(
        "{path} is larger than {limit} bytes; it is not a sticker (or key) this version wrote"
    )]
    TooLarge {
        /// The path.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Another IO error.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file was read but is not a well-formed sticker.
    #[error("{path}: {source}")]
    Malformed {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        source: MalformedSticker,
    },
}

fn shown_name(name: &str) -> String {
    let short: String = name.chars().take(64).collect();
    let ellipsis = if short.len() < name.len() { "…" } else { "" };
    format!("\"{}{ellipsis}\"", short.escape_debug())
}

/// Checks a name against `first` for its first byte and `rest` for the others.
fn check_name(name: &str, first: fn(u8) -> bool, rest: fn(u8) -> bool) -> Result<(), &'static str> {
    let bytes = name.as_bytes();
    match bytes.first() {
        None => Err("it is empty"),
        Some(_) if bytes.len() > MAX_NAME_LEN => Err("it is too long"),
        Some(&b) if !first(b) => Err("it must start with a letter or digit"),
        Some(_) if bytes.contains(&b'/') || bytes.contains(&b'\\') => {
            Err("it contains a path separator")
        }
        Some(_) if bytes.contains(&0) => Err("it contains a NUL byte"),
        Some(_) if !bytes.iter().all(|&b| rest(b)) => Err("it contains a character not allowed"),
        Some(_) => Ok(()),
    }
}

/// Validates a docker target (container) name for use in a file name: Docker's own rule
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most [`MAX_NAME_LEN`] bytes. This excludes `/`, `\`,
/// `.`, `..`, NUL, whitespace and control characters.
///
/// # Errors
///
/// [`PathError::InvalidTarget`] saying what is wrong.
pub fn check_target_name(target: &str) -> Result<(), PathError> {
    check_name(
        target,
        |b| b.is_ascii_alphanumeric(),
        |b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'),
    )
    .map_err(|reason| PathError::InvalidTarget {
        name: shown_name(target),
        reason,
    })
}

/// Validates a Compose project name: Compose's rule `[a-z0-9][a-z0-9_-]*`, at most
/// [`MAX_NAME_LEN`] bytes.
///
/// # Errors
///
/// [`PathError::InvalidProject`] saying what is wrong.
pub fn check_project_name(project: &str) -> Result<(), PathError> {
    check_name(
        project,
        |b| b.is_ascii_lowercase() || b.is_ascii_digit(),
        |b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'),
    )
    .map_err(|reason| PathError::InvalidProject {
        name: shown_name(project),
        reason,
    })
}

/// The sticker of a docker target: `<state-dir>/stickers/<target>.json`.
///
/// # Errors
///
/// [`PathError::InvalidTarget`] when `target` could escape the directory or is not a
/// container name (see [`check_target_name`]).
pub fn docker_sticker_path(state_dir: &Path, target: &str) -> Result<PathBuf, PathError> {
    check_target_name(target)?;
    Ok(state_dir.join("stickers").join(format!("{target}.json")))
}

/// The sticker of a Compose project: `<deploy-root>/<project>/.wharf/version.json`.
///
/// # Errors
///
/// [`PathError::InvalidProject`] when `project` is not a Compose project name (see
/// [`check_project_name`]).
pub fn compose_sticker_path(deploy_root: &Path, project: &str) -> Result<PathBuf, PathError> {
    check_project_name(project)?;
    Ok(deploy_root
        .join(project)
        .join(".wharf")
        .join("version.json"))
}

/// Writes `bytes` to `path` atomically, for sticker files (mode 0644 before umask).
///
/// Creates the parent directories if needed, writes a temporary file in the same directory
/// (`.<name>.tmp-<random>`), fsyncs it, renames it over `path` and fsyncs the directory.
/// Readers see either the old file or the new one, never a mix; on error the temporary file
/// is removed and `path` is unchanged (except for [`WriteError::SyncDir`]).
///
/// # Errors
///
/// A [`WriteError`] naming the step and path that failed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_mode(path, bytes, 0o644)
}

/// Like [`write_atomic`], for secrets: the file is created with mode 0600.
///
/// # Errors
///
/// A [`WriteError`] naming the step and path that failed.
pub fn write_private_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Writes a signed sticker's file form ([`SignedSticker::to_file_bytes`]) with
/// [`write_atomic`].
///
/// # Errors
///
/// A [`WriteError`] naming the step and path that failed.
pub fn write_sticker(path: &Path, sticker: &SignedSticker) -> Result<(), WriteError> {
    write_atomic(path, &sticker.to_file_bytes())
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    let Some(file_name) = path.file_name() else {
        return Err(WriteError::NotAFilePath {
            path: path.to_owned(),
        });
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir).map_err(|source| WriteError::CreateDir {
        path: dir.to_owned(),
        source,
    })?;

    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    let temp = dir.join(temp_name);

    let written = write_new_file(&temp, bytes, mode).map_err(|source| WriteError::Temp {
        path: temp.clone(),
        source,
    });
    let renamed = written.and_then(|()| {
        fs::rename(&temp, path).map_err(|source| WriteError::Rename {
            path: path.to_owned(),
            source,
        })
    });
    if let Err(error) = renamed {
        // Best effort: the temp file may not exist if creating it failed.
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    sync_dir(dir).map_err(|source| WriteError::SyncDir {
        path: path.to_owned(),
        source,
    })
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Reads a whole sticker file, at most [`MAX_STICKER_BYTES`] bytes, without interpreting
/// it. This is what an agent ships to the core for [`verify`](crate::verify): the raw bytes,
/// tampered or not.
///
/// # Errors
///
/// [`ReadError::NotFound`] when there is no sticker, [`ReadError::NotAFile`],
/// [`ReadError::TooLarge`] or [`ReadError::Io`].
pub fn read_bytes(path: &Path) -> Result<Vec<u8>, ReadError> {
    read_bytes_limited(path, MAX_STICKER_BYTES as u64)
}

/// Reads a sticker file and checks its schema (not its signature: use
/// [`verify`](crate::verify) on [`read_bytes`] for that).
///
/// # Errors
///
/// As [`read_bytes`], plus [`ReadError::Malformed`] when the file is not a well-formed
/// sticker.
pub fn read(path: &Path) -> Result<SignedSticker, ReadError> {
    let bytes = read_bytes(path)?;
    SignedSticker::parse(&bytes).map_err(|source| ReadError::Malformed {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn read_bytes_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ReadError::NotFound {
                path: path.to_owned(),
            }
        } else {
            ReadError::Io {
                path: path.to_owned(),
                source,
            }
        }
    };
    // Checked before opening so that a FIFO or device is never opened (it could block).
    let metadata = fs::metadata(path).map_err(io_error)?;
    if !metadata.is_file() {
        return Err(ReadError::NotAFile {
            path: path.to_owned(),
        });
    }
    if metadata.len() > limit {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    let file = File::open(path).map_err(io_error)?;
    let mut bytes = Vec::with_capacity(usize::try_from(metadata.len()).unwrap_or(0));
    // The file may grow between the size check and the read: never read past the limit.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            path: path.to_owned(),
            limit,
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_paths() {
        let dir = Path::new("/var/lib/wharf");
        assert_eq!(
            docker_sticker_path(dir, "web-1.blue_A").unwrap(),
            Path::new("/var/lib/wharf/stickers/web-1.blue_A.json")
        );
        for bad in [
            "", ".", "..", "../x", "a/b", "a\\b", "/abs", "a\0b", ".hidden", "-x", "a b", "a\nb",
            "é", "a:b",
        ] {
            let error = docker_sticker_path(dir, bad).unwrap_err();
            assert!(matches!(error, PathError::InvalidTarget { .. }), "{bad:?}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(docker_sticker_path(dir, &long).is_err());
        assert!(docker_sticker_path(dir, &long[1..]).is_ok());
    }

    #[test]
    fn compose_paths() {
        let root = Path::new("/srv/wharf");
        assert_eq!(
            compose_sticker_path(root, "shop_2-prod").unwrap(),
            Path::new("/srv/wharf/shop_2-prod/.wharf/version.json")
        );
        for bad in ["", "..", "Shop", "a.b", "a/b", "_x", "a\0", "a b"] {
            let error = compose_sticker_path(root, bad).unwrap_err();
            assert!(matches!(error, PathError::InvalidProject { .. }), "{bad:?}");
        }
    }

    #[test]
    fn path_errors_quote_and_escape_the_name() {
        let error = docker_sticker_path(Path::new("/s"), "a/\u{1b}[2J").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("path separator"), "{text}");
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn modes_of_written_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("key.der");
        write_private_atomic(&private, b"secret").unwrap();
        let mode = fs::metadata(&private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let public = dir.path().join("sticker.json");
        write_atomic(&public, b"{}").unwrap();
        let mode = fs::metadata(&public).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o600, 0o600);
        assert_eq!(mode & 0o133, 0);
    }

    #[test]
    fn read_limits_and_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        assert!(matches!(read_bytes(&path), Err(ReadError::NotFound { .. })));
        assert!(matches!(
            read_bytes(dir.path()),
            Err(ReadError::NotAFile { .. })
        ));
        fs::write(&path, vec![b' '; 11]).unwrap();
        assert!(matches!(
            read_bytes_limited(&path, 10),
            Err(ReadError::TooLarge { limit: 10, .. })
        ));
        assert_eq!(read_bytes_limited(&path, 11).unwrap().len(), 11);
    }

    #[test]
    fn write_into_a_path_without_file_name_fails_cleanly() {
        assert!(matches!(
            write_atomic(Path::new("/"), b"x"),
            Err(WriteError::NotAFilePath { .. })
        ));
    }
}
