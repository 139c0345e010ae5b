//! Table tests of the image reference rule: only `[registry[:port]/]repo[:tag]@sha256:<hex>`.

use wharf_protocol::{Digest, DigestError, ImageRef, ImageRefError};

const H: &str = "4e07408562bedb8b60ce05c1decfe3ad16b72230967de01f640b7e4729b49fce";

fn pinned(s: &str) -> String {
    format!("{s}@sha256:{H}")
}

#[test]
fn accepted_references() {
    // (input without digest, repository, tag)
    let long_tag = "t".repeat(128);
    let table: Vec<(String, &str, Option<&str>)> = vec![
        ("app".into(), "app", None),
        ("app:1.0".into(), "app", Some("1.0")),
        ("a".into(), "a", None),
        ("team/app".into(), "team/app", None),
        ("team/app:latest".into(), "team/app", Some("latest")),
        (
            "127.0.0.1:5000/team/app:v2".into(),
            "127.0.0.1:5000/team/app",
            Some("v2"),
        ),
        ("127.0.0.1:5000/app".into(), "127.0.0.1:5000/app", None),
        ("localhost/app".into(), "localhost/app", None),
        (
            "localhost:5000/app:x".into(),
            "localhost:5000/app",
            Some("x"),
        ),
        (
            "registry.example.com/a/b/c:latest".into(),
            "registry.example.com/a/b/c",
            Some("latest"),
        ),
        (
            "docker.io/library/nginx:1.25".into(),
            "docker.io/library/nginx",
            Some("1.25"),
        ),
        (
            "my-registry.io:443/org/my_app__x.y-z---w:TAG_1.2-rc".into(),
            "my-registry.io:443/org/my_app__x.y-z---w",
            Some("TAG_1.2-rc"),
        ),
        (
            "Registry.Example.COM/app".into(),
            "Registry.Example.COM/app",
            None,
        ),
        ("[::1]:5000/app".into(), "[::1]:5000/app", None),
        (
            "[fe80::1]/team/app:v1".into(),
            "[fe80::1]/team/app",
            Some("v1"),
        ),
        ("app:_private".into(), "app", Some("_private")),
        ("a0.b1/c2".into(), "a0.b1/c2", None),
        (format!("app:{long_tag}"), "app", Some(long_tag.as_str())),
    ];
    for (name, repo, tag) in &table {
        let input = pinned(name);
        let r = ImageRef::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(r.repository(), *repo, "{input}");
        assert_eq!(r.tag(), *tag, "{input}");
        assert_eq!(r.digest().hex(), H, "{input}");
        // Display is the canonical pull form, never the tag.
        assert_eq!(r.to_string(), format!("{repo}@sha256:{H}"), "{input}");
        assert_eq!(r.full(), input, "{input}");
        // The canonical form parses back to the same repository and digest.
        let again = ImageRef::parse(&r.to_string()).unwrap();
        assert_eq!(
            (again.repository(), again.digest()),
            (r.repository(), r.digest())
        );
        assert_eq!(input.parse::<ImageRef>().unwrap(), r);
    }
}

#[test]
fn refused_references() {
    let upper = H.to_uppercase();
    let long_repo = format!("{}/{}", "a".repeat(200), "b".repeat(60));
    let long_tag = "t".repeat(129);
    type Check = fn(&ImageRefError) -> bool;
    let table: Vec<(String, Check)> = vec![
        (String::new(), |e| matches!(e, ImageRefError::Empty)),
        ("app".into(), |e| matches!(e, ImageRefError::NotPinned(_))),
        ("app:1.0".into(), |e| {
            matches!(e, ImageRefError::NotPinned(_))
        }),
        ("127.0.0.1:5000/team/app:v2".into(), |e| {
            matches!(e, ImageRefError::NotPinned(_))
        }),
        ("app@sha256:abc".into(), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::WrongLength(3),
                    ..
                }
            )
        }),
        (format!("app@sha256:{H}00"), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::WrongLength(66),
                    ..
                }
            )
        }),
        (format!("app@sha256:{upper}"), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::Uppercase,
                    ..
                }
            )
        }),
        (
            format!("app@sha512:{H}{H}"),
            |e| matches!(e, ImageRefError::Digest { source: DigestError::UnsupportedAlgorithm(a), .. } if a == "sha512"),
        ),
        (
            "app@md5:d41d8cd98f00b204e9800998ecf8427e".into(),
            |e| matches!(e, ImageRefError::Digest { source: DigestError::UnsupportedAlgorithm(a), .. } if a == "md5"),
        ),
        (format!("app@SHA256:{H}"), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::UnsupportedAlgorithm(_),
                    ..
                }
            )
        }),
        (format!("app@{H}"), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::MissingAlgorithm(_),
                    ..
                }
            )
        }),
        ("app@".into(), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::Empty,
                    ..
                }
            )
        }),
        (format!("app@sha256:{}x", &H[1..]), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::NotHex('x'),
                    ..
                }
            )
        }),
        (format!("app@sha256:{H}@sha256:{H}"), |e| {
            matches!(
                e,
                ImageRefError::Digest {
                    source: DigestError::NotHex('@'),
                    ..
                }
            )
        }),
        (pinned(""), |e| {
            matches!(e, ImageRefError::EmptyRepository(_))
        }),
        (pinned(":1.0"), |e| {
            matches!(e, ImageRefError::EmptyRepository(_))
        }),
        (pinned("App"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("team/App"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("team//app"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("team/"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("/app"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("app-"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("_app"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("a..b"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("a___b"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("a.-b"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("tëam/app"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("team/a$p"), |e| {
            matches!(e, ImageRefError::InvalidRepository { .. })
        }),
        (pinned("app:"), |e| {
            matches!(e, ImageRefError::InvalidTag { .. })
        }),
        (pinned("app:.x"), |e| {
            matches!(e, ImageRefError::InvalidTag { .. })
        }),
        (pinned("app:-x"), |e| {
            matches!(e, ImageRefError::InvalidTag { .. })
        }),
        (pinned("app:a+b"), |e| {
            matches!(e, ImageRefError::InvalidTag { .. })
        }),
        (pinned(&format!("app:{long_tag}")), |e| {
            matches!(e, ImageRefError::InvalidTag { .. })
        }),
        (pinned("reg:99999/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("reg:/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("reg:50a0/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("-reg.io/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("reg..io/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("reg_x.io/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("[::1/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("[]:5000/app"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned("app:x/y"), |e| {
            matches!(e, ImageRefError::InvalidRegistry { .. })
        }),
        (pinned(&long_repo), |e| {
            matches!(e, ImageRefError::RepositoryTooLong(_))
        }),
        (format!(" {}", pinned("app")), |e| {
            matches!(e, ImageRefError::Whitespace(_))
        }),
        (format!("{}\n", pinned("app")), |e| {
            matches!(e, ImageRefError::Whitespace(_))
        }),
        (pinned("app :1.0"), |e| {
            matches!(e, ImageRefError::Whitespace(_))
        }),
        (pinned("app\t"), |e| {
            matches!(e, ImageRefError::Whitespace(_))
        }),
        (pinned("app\0"), |e| {
            matches!(e, ImageRefError::Whitespace(_))
        }),
    ];
    for (input, check) in &table {
        match ImageRef::parse(input) {
            Ok(r) => panic!("{input:?} was accepted as {r}"),
            Err(e) => assert!(check(&e), "{input:?}: unexpected error {e:?}"),
        }
    }
}

#[test]
fn error_messages_say_what_to_do() {
    let e = ImageRef::parse("app:1.0").unwrap_err().to_string();
    assert_eq!(
        e,
        "image reference `app:1.0` is not pinned: append @sha256:<digest> \
         (Wharf deploys by digest only, never by tag)"
    );
    let e = ImageRef::parse("app@sha256:abc").unwrap_err().to_string();
    assert!(e.contains("3 hex digits instead of 64"), "{e}");
    let e = ImageRef::parse(&format!("app@sha512:{H}{H}"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`sha512` is not supported"), "{e}");
    assert!(e.contains("RepoDigests"), "{e}");
    let e = ImageRef::parse(&format!("app@sha256:{}", H.to_uppercase()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("write it in lowercase"), "{e}");
    let e = ImageRef::parse(&pinned("team/App"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid repository component `App`"), "{e}");
    assert!(e.contains("lowercase"), "{e}");
    let e = ImageRef::parse(&pinned("app:")).unwrap_err().to_string();
    assert!(e.contains("invalid tag ``"), "{e}");
    let e = ImageRef::parse("").unwrap_err().to_string();
    assert!(e.contains("REPOSITORY@sha256:<digest>"), "{e}");
}

#[test]
fn digests_parse_alone() {
    let d: Digest = format!("sha256:{H}").parse().unwrap();
    assert_eq!(d.to_string(), format!("sha256:{H}"));
    assert_eq!(
        Digest::parse(H),
        Err(DigestError::MissingAlgorithm(H.into()))
    );
    assert_eq!(
        Digest::parse(&format!("sha256:{}", &H[..12])),
        Err(DigestError::WrongLength(12))
    );
    let e = Digest::parse(H).unwrap_err().to_string();
    assert!(e.contains("write it as sha256:<64 lowercase hex>"), "{e}");
}
