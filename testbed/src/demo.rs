//! `wharf-testbed demo`: the local demo of the parts of Wharf that exist so far.
//!
//! Everything here is real: the images are built `FROM scratch` and pushed to a
//! private registry (Debian's `docker-registry` with htpasswd auth), the sticker is
//! signed with a fresh Ed25519 key and written atomically, and the verifications
//! are those an auditor runs. The registry and its storage are removed at the end.

use std::path::Path;

use anyhow::{bail, Context, Result};
use wharf_protocol::ImageRef;
use wharf_sticker::{
    docker_sticker_path, read_bytes, sign, verify, write_atomic, Component, Keyring, Release,
    SigningKey, Sticker, Target, TargetKind, Verification,
};

use crate::fixture::{Testbed, TestbedOptions};
use crate::images::TestVersion;
use crate::reference::PinnedRef;

/// Runs the demo, printing each step to stdout. Fails if any check does not come
/// out as an auditor expects.
pub fn run() -> Result<()> {
    step("1. Build the test images FROM scratch and push them to a private local registry");
    let suffix = crate::unique_suffix();
    let testbed = Testbed::start(
        TestbedOptions::default()
            .with_auth("demo", format!("demo-{suffix}"))
            .with_repo(format!("wharf-demo/testapp-{suffix}")),
    )
    .context(
        "could not start the testbed (is the Docker engine running and docker-registry installed?)",
    )?;
    println!("   registry: {} (htpasswd auth)", testbed.registry().url());
    for (version, pinned) in testbed.images() {
        println!("   {:<7} {pinned}", version.as_str());
    }

    step("2. Only digest-pinned references are accepted");
    let v1 = testbed.image(TestVersion::V1).clone();
    let v2 = testbed.image(TestVersion::V2).clone();
    let tagged = format!("{}:v1", v1.repository());
    for candidate in [v1.to_string(), tagged] {
        match ImageRef::parse(&candidate) {
            Ok(image) => println!(
                "   accepted  {candidate}\n             pulls {}",
                image.pinned()
            ),
            Err(error) => println!("   refused   {candidate}\n             {error}"),
        }
    }

    step("3. Sign a version sticker for v1 (replacing v2) and write it atomically");
    let (key, _pkcs8) = SigningKey::generate().context("cannot generate a signing key")?;
    let sticker = demo_sticker(&v1, &v2)?;
    let signed = sign(&sticker, &key).context("cannot sign the sticker")?;
    let dir = tempfile::tempdir().context("cannot create a temporary state dir")?;
    let path = docker_sticker_path(dir.path(), "demo-web")?;
    write_atomic(&path, &signed.to_file_bytes())?;
    println!("   key id: {}", key.key_id());
    println!("   {}:", path.display());
    let text = String::from_utf8(read_bytes(&path)?).context("sticker is not UTF-8")?;
    for line in text.lines() {
        println!("     {line}");
    }

    let keyring = Keyring::from(key.verifying_key().clone());
    step("4. Verify it as an auditor would");
    expect(&path, &keyring, "the sticker as written", |v| v.is_valid())?;

    step("5. Tamper with a copy: point it at the v2 digest");
    let tampered = text.replacen(v1.digest(), v2.digest(), 1);
    let tampered_path = docker_sticker_path(dir.path(), "demo-web-tampered")?;
    write_atomic(&tampered_path, tampered.as_bytes())?;
    expect(&tampered_path, &keyring, "digest changed by hand", |v| {
        matches!(v, Verification::BadSignature)
    })?;
    let truncated_path = docker_sticker_path(dir.path(), "demo-web-truncated")?;
    write_atomic(&truncated_path, &text.as_bytes()[..text.len() / 2])?;
    expect(&truncated_path, &keyring, "file truncated", |v| {
        matches!(v, Verification::Malformed { .. })
    })?;
    let (forger, _) = SigningKey::generate()?;
    let forged_path = docker_sticker_path(dir.path(), "demo-web-forged")?;
    write_atomic(&forged_path, &sign(&sticker, &forger)?.to_file_bytes())?;
    expect(&forged_path, &keyring, "re-signed with another key", |v| {
        matches!(v, Verification::UnknownKey { .. })
    })?;

    step("Done: the registry and its storage are removed now");
    drop(testbed);
    println!(
        "   The core, the Docker agent and the deploy/rollback story join this demo as they land."
    );
    Ok(())
}

fn demo_sticker(current: &PinnedRef, previous: &PinnedRef) -> Result<Sticker> {
    Ok(Sticker {
        target: Target {
            agent: "demo-host".into(),
            kind: TargetKind::Docker,
            name: "demo-web".into(),
        },
        release: Release {
            id: wharf_sticker::Uuid::new_v4().to_string(),
            name: "demo".into(),
            version: "1.0.0".into(),
        },
        components: vec![Component {
            name: "demo-web".into(),
            image: current.repository().into(),
            digest: current.digest().into(),
        }],
        deployed_at: wharf_protocol::Timestamp::now().to_string(),
        deployed_by: "demo".into(),
        task_id: wharf_sticker::Uuid::new_v4(),
        previous: Some(wharf_sticker::Previous {
            release: Release {
                id: wharf_sticker::Uuid::new_v4().to_string(),
                name: "demo".into(),
                version: "0.9.0".into(),
            },
            components: vec![Component {
                name: "demo-web".into(),
                image: previous.repository().into(),
                digest: previous.digest().into(),
            }],
        }),
    })
}

fn expect(
    path: &Path,
    keyring: &Keyring,
    what: &str,
    ok: impl Fn(&Verification) -> bool,
) -> Result<()> {
    let outcome = verify(&read_bytes(path)?, keyring);
    let shown = match &outcome {
        Verification::Valid(_) => "valid".to_string(),
        Verification::BadSignature => "bad signature".to_string(),
        Verification::UnknownKey { key_id } => format!("unknown key ({key_id})"),
        Verification::Malformed { reason } => format!("malformed ({reason})"),
    };
    println!("   {what:<28} -> {shown}");
    if !ok(&outcome) {
        bail!(
            "verification of {} gave {shown}, which is wrong",
            path.display()
        );
    }
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}
