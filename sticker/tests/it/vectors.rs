//! A known-answer vector pinning the canonical form and the signature, so that a change to
//! either is noticed (stickers already on hosts must keep verifying). The signature was
//! cross-checked with an independent Ed25519 implementation (Python `cryptography`).

use crate::fixtures::*;
use wharf_sticker::{sign, Sticker};

const CANONICAL: &str = concat!(
    r#"{"components":[{"digest":"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef","#,
    r#""image":"registry.local:5000/shop/web","name":"web"}],"#,
    r#""deployed_at":"2025-03-14T15:09:26.535Z","deployed_by":"ci-release-bot","#,
    r#""previous":{"components":[{"digest":"sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210","#,
    r#""image":"registry.local:5000/shop/web-old","name":"web-old"}],"#,
    r#""release":{"id":"rel-0001","name":"shop-previous","version":"1.4.1"}},"#,
    r#""release":{"id":"rel-0002","name":"shop","version":"1.4.2"},"#,
    r#""schema":"wharf.sticker/v1","#,
    r#""target":{"agent":"host-alpha","kind":"docker","name":"web-frontend"},"#,
    r#""task_id":"6f1c2d3e-4a5b-4c6d-8e7f-901a2b3c4d5e"}"#
);

#[test]
fn canonical_bytes_of_the_docker_fixture() {
    let bytes = docker_sticker().signing_bytes().unwrap();
    assert_eq!(String::from_utf8(bytes).unwrap(), CANONICAL);
}

#[test]
fn signature_of_the_docker_fixture() {
    let signed = sign(&docker_sticker(), core_key()).unwrap();
    assert_eq!(signed.signature.key_id, KEY_ID);
    assert_eq!(signed.signature.value, SIGNATURE);
    assert_eq!(core_key().verifying_key().to_string(), PUBLIC_KEY);
}

#[test]
fn canonical_bytes_ignore_how_the_sticker_was_built() {
    let a = docker_sticker();
    let b: Sticker = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(a.signing_bytes().unwrap(), b.signing_bytes().unwrap());
}

const KEY_ID: &str = "ed25519:65b60673d6ed884b";
const SIGNATURE: &str =
    "Jcksg3KATK1NF5seAWSZYrDhh6nUTli8hNwiVMf3rTs9onAC/G3V9v9blYxCQVVQQUlGkfQCcR1ArnrDqXPPBA==";
const PUBLIC_KEY: &str = "ed25519 ebVWLo/mVPlAeLES6KmLp5AfhTrmlb7X4OORC60ElmQ=";
