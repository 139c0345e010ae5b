//! Atomic writes: no temp files left, overwrites, failures leave the target untouched, and
//! concurrent readers never see a partial sticker.

use crate::fixtures::*;
use std::fs;
use std::path::Path;
use wharf_sticker::{
    compose_sticker_path, docker_sticker_path, read_bytes, sign, verify, write_atomic,
    write_sticker, SigningKey, WriteError,
};

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_creates_directories_overwrites_and_leaves_no_temp_files() {
    let state = tempfile::tempdir().unwrap();
    let path = docker_sticker_path(state.path(), "web-frontend").unwrap();
    assert!(!path.parent().unwrap().exists());

    let first = signed_file(&docker_sticker());
    write_atomic(&path, &first).unwrap();
    assert_eq!(fs::read(&path).unwrap(), first);

    let mut second_sticker = docker_sticker();
    second_sticker.release.version = "1.4.3".into();
    let second = sign(&second_sticker, core_key()).unwrap();
    write_sticker(&path, &second).unwrap();
    assert_eq!(fs::read(&path).unwrap(), second.to_file_bytes());
    assert_eq!(
        verify(&read_bytes(&path).unwrap(), &keyring()).into_valid(),
        Some(second_sticker)
    );

    // A shorter content replaces a longer one entirely.
    write_atomic(&path, b"{}").unwrap();
    assert_eq!(fs::read(&path).unwrap(), b"{}");

    assert_eq!(names_in(path.parent().unwrap()), ["web-frontend.json"]);
    assert_eq!(names_in(state.path()), ["stickers"]);
}

#[test]
fn compose_sticker_goes_under_the_project_dot_wharf() {
    let root = tempfile::tempdir().unwrap();
    let path = compose_sticker_path(root.path(), "shop-stack").unwrap();
    write_atomic(&path, &signed_file(&compose_sticker())).unwrap();
    assert!(root.path().join("shop-stack/.wharf/version.json").is_file());
    assert_eq!(
        names_in(&root.path().join("shop-stack/.wharf")),
        ["version.json"]
    );
    assert!(verify(&read_bytes(&path).unwrap(), &keyring()).is_valid());
}

#[test]
fn a_failed_rename_leaves_the_destination_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    // The destination is a non-empty directory: rename over it fails.
    let path = dir.path().join("sticker.json");
    fs::create_dir(&path).unwrap();
    fs::write(path.join("keep"), b"x").unwrap();
    let error = write_atomic(&path, b"{}").unwrap_err();
    assert!(matches!(error, WriteError::Rename { .. }), "{error}");
    assert!(error.to_string().contains("sticker.json"), "{error}");
    assert_eq!(names_in(dir.path()), ["sticker.json"]);
    assert_eq!(names_in(&path), ["keep"]);
}

#[test]
fn a_parent_that_is_a_file_fails_with_a_named_error() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("stickers");
    fs::write(&blocker, b"not a dir").unwrap();
    let error = write_atomic(&blocker.join("web.json"), b"{}").unwrap_err();
    assert!(matches!(error, WriteError::CreateDir { .. }), "{error}");
    assert_eq!(names_in(dir.path()), ["stickers"]);
}

#[test]
fn concurrent_readers_see_a_whole_sticker_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = docker_sticker_path(dir.path(), "web").unwrap();
    let versions: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let mut sticker = docker_sticker();
            // Different lengths, so a torn read could not pass for a whole file.
            sticker.deployed_by = "x".repeat(1 + i * 300);
            signed_file(&sticker)
        })
        .collect();
    write_atomic(&path, &versions[0]).unwrap();

    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for round in 0..200 {
                write_atomic(&path, &versions[round % versions.len()]).unwrap();
            }
        });
        let keyring = keyring();
        let mut reads = 0;
        while !writer.is_finished() || reads < 50 {
            let bytes = read_bytes(&path).unwrap();
            assert!(versions.contains(&bytes), "read a partial or mixed file");
            assert!(verify(&bytes, &keyring).is_valid());
            reads += 1;
        }
    });
    assert_eq!(names_in(path.parent().unwrap()), ["web.json"]);
}

#[test]
fn the_signing_key_file_round_trips_and_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sticker-signing.key");
    let (key, pkcs8) = SigningKey::generate().unwrap();
    pkcs8.write_file(&path).unwrap();
    let loaded = SigningKey::read_pkcs8_file(&path).unwrap();
    assert_eq!(loaded.key_id(), key.key_id());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    fs::write(&path, b"garbage").unwrap();
    let error = SigningKey::read_pkcs8_file(&path).unwrap_err();
    assert!(error.to_string().contains("PKCS#8"), "{error}");
    fs::write(&path, vec![0u8; 10_000]).unwrap();
    assert!(SigningKey::read_pkcs8_file(&path).is_err());
}
