//! Unit tests of the PKI module, including real TLS 1.3 handshakes pumped through
//! in-memory buffers (no sockets).

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::{CertificateError, ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use rustls_pki_types::ServerName;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer as _;

use super::*;

const DAY: Duration = Duration::from_secs(24 * 3600);
const AGENT_ID: &str = "6f1c2a3b-4d5e-4f60-8a7b-9c0d1e2f3a4b";
const OTHER_AGENT_ID: &str = "00000000-1111-4222-8333-444444444444";

fn now() -> SystemTime {
    SystemTime::now()
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A CA, the core's server identity for `core.example.com`, and a revocation list.
struct Core {
    ca: CertificateAuthority,
    identity: TlsIdentity,
    revocations: RevocationList,
}

impl Core {
    fn new() -> Self {
        let ca = CertificateAuthority::generate(now()).unwrap();
        let server = ca
            .issue_server_cert(&["core.example.com", "10.1.2.3"], now())
            .unwrap();
        let identity = TlsIdentity::for_server(&server, ca.cert_der()).unwrap();
        Core {
            ca,
            identity,
            revocations: RevocationList::new(),
        }
    }

    fn mtls(&self) -> ServerConfig {
        mtls_server_config(
            &self.identity,
            self.ca.cert_der(),
            Arc::new(self.revocations.clone()),
            &[ALPN_WHARF],
        )
        .unwrap()
    }

    fn https(&self) -> ServerConfig {
        https_server_config(
            &self.identity,
            self.ca.cert_der(),
            Arc::new(self.revocations.clone()),
            &[ALPN_HTTP11],
        )
        .unwrap()
    }

    /// An agent identity issued by this CA from a CSR, valid from `issued_at` for `validity`.
    fn agent(
        &self,
        id: &str,
        issued_at: SystemTime,
        validity: Duration,
    ) -> (TlsIdentity, IssuedCertificate) {
        let (key_pem, csr_pem) = generate_agent_key_and_csr("web-1").unwrap();
        let cert = self
            .ca
            .issue_agent_cert(
                id,
                "web-1",
                AgentKeyRequest::CsrPem(&csr_pem),
                issued_at,
                validity,
            )
            .unwrap();
        (
            TlsIdentity::from_pem(&cert.pem, key_pem.expose()).unwrap(),
            cert,
        )
    }

    fn agent_client(&self, identity: &TlsIdentity, alpn: &[u8]) -> ClientConfig {
        agent_client_config(identity, self.ca.cert_der(), &[alpn]).unwrap()
    }
}

#[derive(Debug)]
enum Failed {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Runs a TLS handshake between the two configurations through in-memory buffers, then
/// sends one application message each way. Returns the server connection on success.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
    name: &str,
) -> Result<ServerConnection, Failed> {
    let mut client = ClientConnection::new(
        Arc::new(client),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    fn transfer(
        from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
        to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl rustls::SideData>>,
    ) -> Result<bool, rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let moved = !buf.is_empty();
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets()?;
        }
        Ok(moved)
    }
    for _ in 0..32 {
        let a = transfer(&mut client, &mut server).map_err(Failed::Server)?;
        let b = transfer(&mut server, &mut client).map_err(Failed::Client)?;
        if !client.is_handshaking() && !server.is_handshaking() && !a && !b {
            break;
        }
    }
    assert!(
        !client.is_handshaking() && !server.is_handshaking(),
        "handshake stalled"
    );
    // Application data both ways proves the session is usable.
    client.writer().write_all(b"ping").unwrap();
    transfer(&mut client, &mut server).map_err(Failed::Server)?;
    let mut got = [0u8; 4];
    server.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    server.writer().write_all(b"pong").unwrap();
    transfer(&mut server, &mut client).map_err(Failed::Client)?;
    client.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"pong");
    assert_eq!(
        client.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    Ok(server)
}

fn server_error(result: Result<ServerConnection, Failed>) -> rustls::Error {
    match result {
        Err(Failed::Server(e)) => e,
        Err(Failed::Client(e)) => panic!("expected the server to refuse, the client failed: {e}"),
        Ok(_) => panic!("expected the server to refuse the handshake, it succeeded"),
    }
}

fn client_error(result: Result<ServerConnection, Failed>) -> rustls::Error {
    match result {
        Err(Failed::Client(e)) => e,
        Err(Failed::Server(e)) => panic!("expected the client to refuse, the server failed: {e}"),
        Ok(_) => panic!("expected the client to refuse the handshake, it succeeded"),
    }
}

// ---- CA ------------------------------------------------------------------------------

#[test]
fn ca_generation_and_fingerprint_stable_across_pem_round_trip() {
    let t = now();
    let ca = CertificateAuthority::generate(t).unwrap();
    let fp = ca.fingerprint().to_string();
    assert!(fp.starts_with("sha256:"));
    let hexpart = &fp["sha256:".len()..];
    assert_eq!(hexpart.len(), 64);
    assert!(hexpart
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert_eq!(ca.fingerprint(), CaFingerprint::of_der(ca.cert_der()));

    let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem().expose()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    assert_eq!(loaded.cert_der(), ca.cert_der());
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(fp.parse::<CaFingerprint>().unwrap(), ca.fingerprint());

    let info = cert_info(ca.cert_der()).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.common_name.as_deref(), Some(CA_COMMON_NAME));
    assert!(secs(info.not_after) >= secs(t + CA_VALIDITY) - 1);
    assert!(info.not_before <= t);
    assert_eq!(info.serial.len(), 32);

    // Key usages: certSign and cRLSign, basic constraints CA.
    let (_, parsed) = x509_parser::parse_x509_certificate(ca.cert_der()).unwrap();
    let ku = parsed.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());

    // A certificate loaded by the issuing code signs what verifies against the original.
    let server = loaded.issue_server_cert(&["x.example"], t).unwrap();
    assert!(server_cert_verifies_for(
        ca.cert_der(),
        &server.cert.der,
        ["x.example"],
        t
    ));
}

#[test]
fn ca_from_pem_refuses_foreign_key_and_non_ca() {
    let a = CertificateAuthority::generate(now()).unwrap();
    let b = CertificateAuthority::generate(now()).unwrap();
    let err = CertificateAuthority::from_pem(a.cert_pem(), b.key_pem().expose()).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");

    let server = a.issue_server_cert(&["x.example"], now()).unwrap();
    let err =
        CertificateAuthority::from_pem(&server.cert.pem, server.key_pem.expose()).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCertificate { .. }), "{err}");

    let err = CertificateAuthority::from_pem("not pem", a.key_pem().expose()).unwrap_err();
    assert!(err.to_string().contains("BEGIN CERTIFICATE"), "{err}");
}

#[test]
fn fingerprint_parsing_is_lenient_on_form_strict_on_content() {
    let ca = CertificateAuthority::generate(now()).unwrap();
    let fp = ca.fingerprint();
    let lower = fp.to_string();
    let hexpart = lower.trim_start_matches("sha256:").to_string();
    let colons = hexpart
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    for text in [
        lower.clone(),
        lower.to_ascii_uppercase(),
        hexpart.clone(),
        format!("SHA256:{colons}"),
        colons,
        format!("  {lower} "),
    ] {
        assert_eq!(text.parse::<CaFingerprint>().unwrap(), fp, "{text}");
    }
    for bad in [
        "",
        "sha256:",
        "sha256:abcd",
        "md5:0011",
        &format!("sha256:{}zz", &hexpart[..62]),
    ] {
        let err = bad.parse::<CaFingerprint>().unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidFingerprint { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
    let json = serde_json::to_string(&fp).unwrap();
    assert_eq!(json, format!("\"{lower}\""));
    assert_eq!(serde_json::from_str::<CaFingerprint>(&json).unwrap(), fp);
}

// ---- server certificate ----------------------------------------------------------------

#[test]
fn server_cert_verifies_for_configured_names_and_localhost_only() {
    let t = now();
    let ca = CertificateAuthority::generate(t).unwrap();
    let names = ["Core.Example.com", "10.1.2.3", "[fd00::7]"];
    let server = ca.issue_server_cert(&names, t).unwrap();
    let der = &server.cert.der;
    for good in [
        "core.example.com",
        "10.1.2.3",
        "fd00::7",
        "localhost",
        "127.0.0.1",
        "::1",
    ] {
        assert!(
            server_cert_verifies_for(ca.cert_der(), der, [good], t),
            "{good}"
        );
    }
    for bad in [
        "other.example.com",
        "example.com",
        "10.1.2.4",
        "127.0.0.2",
        "www.core.example.com",
    ] {
        assert!(
            !server_cert_verifies_for(ca.cert_der(), der, [bad], t),
            "{bad}"
        );
    }
    // Not under another CA.
    let other = CertificateAuthority::generate(t).unwrap();
    assert!(!server_cert_verifies_for(
        other.cert_der(),
        der,
        ["localhost"],
        t
    ));

    let info = cert_info(der).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("core.example.com"));
    assert_eq!(info.agent_id, None);
    assert_eq!(
        info.server_names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        vec![
            "10.1.2.3",
            "127.0.0.1",
            "::1",
            "core.example.com",
            "fd00::7",
            "localhost"
        ]
    );
    assert!(secs(info.not_after) >= secs(t + SERVER_CERT_VALIDITY) - 1);
    assert!(secs(info.not_after) <= secs(t + SERVER_CERT_VALIDITY));

    // EKU is serverAuth only.
    let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
}

#[test]
fn server_cert_currency_tracks_names_ca_and_expiry() {
    let t = now();
    let ca = CertificateAuthority::generate(t).unwrap();
    let server = ca.issue_server_cert(&["core.example.com"], t).unwrap();
    let der = &server.cert.der;
    let keep = |names: &[&str], at: SystemTime| {
        server_cert_is_current(ca.cert_der(), der, names, at, SERVER_CERT_RENEW_BEFORE)
    };
    assert!(keep(&["core.example.com"], t));
    // Defaults and formatting do not count as a change.
    assert!(keep(&["CORE.example.com.", "localhost", "127.0.0.1"], t));
    assert!(
        !keep(&["core.example.com", "new.example.com"], t),
        "a name was added"
    );
    assert!(!keep(&[], t), "a name was removed");
    assert!(!keep(&["core.example.com"], t + 340 * DAY), "near expiry");
    assert!(!keep(&["core.example.com"], t + 400 * DAY), "expired");
    let other = CertificateAuthority::generate(t).unwrap();
    assert!(!server_cert_is_current(
        other.cert_der(),
        der,
        &["core.example.com"],
        t,
        SERVER_CERT_RENEW_BEFORE
    ));
}

#[test]
fn server_names_are_checked() {
    let ca = CertificateAuthority::generate(now()).unwrap();
    for bad in [
        "core.example.com:7443",
        "",
        "  ",
        "bad name",
        "exa_mple..com",
        "ünïcode.example",
    ] {
        let err = ca.issue_server_cert(&[bad], now()).unwrap_err();
        assert!(
            matches!(err, PkiError::InvalidServerName { .. }),
            "{bad}: {err}"
        );
        assert!(err.to_string().contains("--name"), "{err}");
    }
}

// ---- agent certificates ----------------------------------------------------------------

fn sans(der: &[u8]) -> Vec<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).unwrap();
    let mut out = Vec::new();
    for ext in parsed.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for name in &san.general_names {
                out.push(match name {
                    GeneralName::URI(u) => format!("uri:{u}"),
                    GeneralName::DNSName(d) => format!("dns:{d}"),
                    other => format!("{other:?}"),
                });
            }
        }
    }
    out
}

#[test]
fn agent_cert_from_csr_has_exactly_our_identity_and_requested_validity() {
    let t = now();
    let ca = CertificateAuthority::generate(t).unwrap();

    // A CSR that asks for much more than it may get: another agent's identity, a DNS
    // name, serverAuth, CA powers.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        format!("wharf://agent/{OTHER_AGENT_ID}")
            .try_into()
            .unwrap(),
    ));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "admin");
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

    let validity = 7 * DAY;
    let cert = ca
        .issue_agent_cert(
            &AGENT_ID.to_ascii_uppercase(),
            "web-1",
            AgentKeyRequest::CsrPem(&csr_pem),
            t,
            validity,
        )
        .unwrap();

    assert_eq!(
        sans(&cert.der),
        vec![format!("uri:wharf://agent/{AGENT_ID}")]
    );
    assert_eq!(agent_id_from_cert(&cert.der).unwrap(), AGENT_ID);
    let info = cert_info(&cert.der).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("web-1"));
    assert!(!info.is_ca);
    assert_eq!(secs(info.not_after), secs(t + validity));
    assert_eq!(info.not_after, cert.not_after);
    assert_eq!(cert_not_after(&cert.der).unwrap(), cert.not_after);
    assert!(
        info.not_before <= t
            && info.not_before >= t - CLOCK_SKEW_ALLOWANCE - Duration::from_secs(1)
    );
    assert_eq!(cert_serial(&cert.der).unwrap(), cert.serial);
    assert_eq!(cert.serial.len(), 32);

    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth && !eku.any);
    // The certificate carries the CSR's key.
    let csr_der: Vec<u8> = rustls_pki_types::pem::PemObject::from_pem_slice(csr_pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der).unwrap();
    assert_eq!(
        csr.certification_request_info.subject_pki.raw,
        parsed.public_key().raw
    );

    // Renewal with the same key gets a different serial.
    let again = ca
        .issue_agent_cert(
            AGENT_ID,
            "web-1",
            AgentKeyRequest::CsrPem(&csr_pem),
            t,
            validity,
        )
        .unwrap();
    assert_ne!(again.serial, cert.serial);

    // The default validity is 30 days.
    let default = ca
        .issue_agent_cert(
            AGENT_ID,
            "web-1",
            AgentKeyRequest::CsrPem(&csr_pem),
            t,
            DEFAULT_AGENT_CERT_VALIDITY,
        )
        .unwrap();
    assert_eq!(secs(default.not_after), secs(t + 30 * DAY));
    assert!(!renewal_due(&default.der, t).unwrap());
    assert!(!renewal_due(&default.der, t + 19 * DAY).unwrap());
    assert!(renewal_due(&default.der, t + 21 * DAY).unwrap());
    assert!(renewal_due(&default.der, t + 31 * DAY).unwrap());
}

#[test]
fn agent_cert_requests_are_checked() {
    let t = now();
    let ca = CertificateAuthority::generate(t).unwrap();
    let (key_pem, csr_pem) = generate_agent_key_and_csr("web-1").unwrap();
    let issue = |req: AgentKeyRequest<'_>| ca.issue_agent_cert(AGENT_ID, "web-1", req, t, DAY);

    // A CSR whose signature does not verify.
    let mut der: Vec<u8> = rustls_pki_types::pem::PemObject::from_pem_slice(csr_pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let last = der.len() - 3;
    der[last] ^= 0x55;
    let err = issue(AgentKeyRequest::CsrDer(&der)).unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr { .. }), "{err}");

    let err = issue(AgentKeyRequest::CsrPem(
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ))
    .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr { .. }), "{err}");

    // A bare public key is accepted too.
    let public_pem = rcgen::KeyPair::from_pem(key_pem.expose())
        .unwrap()
        .public_key_pem();
    let cert = issue(AgentKeyRequest::from_pem(&public_pem)).unwrap();
    assert_eq!(agent_id_from_cert(&cert.der).unwrap(), AGENT_ID);
    assert!(TlsIdentity::from_pem(&cert.pem, key_pem.expose()).is_ok());
    let err = issue(AgentKeyRequest::PublicKeyDer(b"junk")).unwrap_err();
    assert!(matches!(err, PkiError::InvalidPublicKey { .. }), "{err}");

    // Identity and validity checks.
    let err = ca
        .issue_agent_cert("web-1", "web-1", AgentKeyRequest::CsrPem(&csr_pem), t, DAY)
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidAgentId { .. }), "{err}");
    for name in ["", &"x".repeat(65), "a\nb"] {
        let err = ca
            .issue_agent_cert(AGENT_ID, name, AgentKeyRequest::CsrPem(&csr_pem), t, DAY)
            .unwrap_err();
        assert!(matches!(err, PkiError::InvalidAgentName { .. }), "{err}");
    }
    let err = ca
        .issue_agent_cert(
            AGENT_ID,
            "web-1",
            AgentKeyRequest::CsrPem(&csr_pem),
            t,
            Duration::ZERO,
        )
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidValidity { .. }), "{err}");

    // A certificate's end never passes the CA's.
    let long = ca
        .issue_agent_cert(
            AGENT_ID,
            "web-1",
            AgentKeyRequest::CsrPem(&csr_pem),
            t,
            20 * 365 * DAY,
        )
        .unwrap();
    assert_eq!(long.not_after, ca.not_after());
}

#[test]
fn agent_identity_helpers() {
    let core = Core::new();
    let (agent, cert) = core.agent(AGENT_ID, now(), DAY);
    assert_eq!(agent_id_from_cert(&cert.der).unwrap(), AGENT_ID);
    assert_eq!(
        agent_id_from_peer_certificates(Some(&agent.chain))
            .unwrap()
            .as_deref(),
        Some(AGENT_ID)
    );
    assert_eq!(agent_id_from_peer_certificates(None).unwrap(), None);
    let err = agent_id_from_cert(&core.identity.chain[0]).unwrap_err();
    assert!(matches!(err, PkiError::NoAgentIdentity { .. }), "{err}");
    assert!(agent_id_from_cert(b"garbage").is_err());
    // PEM round trip of a certificate.
    assert_eq!(cert_der_to_pem(&cert.der), cert.pem.replace("\r\n", "\n"));
    assert_eq!(
        certs_from_pem("test", cert.pem.as_bytes()).unwrap(),
        vec![cert.der.clone()]
    );
}

#[test]
fn tls_identity_refuses_a_foreign_key() {
    let core = Core::new();
    let (_, cert) = core.agent(AGENT_ID, now(), DAY);
    let (other_key, _) = generate_agent_key_and_csr("web-2").unwrap();
    let err = TlsIdentity::from_pem(&cert.pem, other_key.expose()).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    let err = TlsIdentity::from_pem(&cert.pem, "no key here").unwrap_err();
    assert!(matches!(err, PkiError::InvalidKey { .. }), "{err}");
}

// ---- handshakes: agent mTLS ------------------------------------------------------------

#[test]
fn mtls_handshake_succeeds_with_valid_agent_cert() {
    let core = Core::new();
    let (agent, _) = core.agent(AGENT_ID, now(), DEFAULT_AGENT_CERT_VALIDITY);
    let server = handshake(
        core.agent_client(&agent, ALPN_WHARF),
        core.mtls(),
        "core.example.com",
    )
    .unwrap();
    assert_eq!(server.alpn_protocol(), Some(ALPN_WHARF));
    assert_eq!(
        agent_id_from_peer_certificates(server.peer_certificates())
            .unwrap()
            .as_deref(),
        Some(AGENT_ID)
    );
    // Also when dialled by IP address and by localhost.
    for name in ["10.1.2.3", "localhost", "127.0.0.1", "::1"] {
        handshake(core.agent_client(&agent, ALPN_WHARF), core.mtls(), name).unwrap();
    }
}

#[test]
fn mtls_handshake_fails_with_cert_from_another_ca() {
    let core = Core::new();
    let impostor = Core::new();
    let (agent, _) = impostor.agent(AGENT_ID, now(), DAY);
    // The impostor agent trusts the real core's CA, but its certificate is foreign.
    let client = agent_client_config(&agent, core.ca.cert_der(), &[ALPN_WHARF]).unwrap();
    let err = server_error(handshake(client, core.mtls(), "core.example.com"));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn mtls_handshake_fails_after_the_agent_is_revoked() {
    let core = Core::new();
    let (agent, cert) = core.agent(AGENT_ID, now(), DAY);
    // Another agent stays unaffected.
    let (other, _) = core.agent(OTHER_AGENT_ID, now(), DAY);
    handshake(
        core.agent_client(&agent, ALPN_WHARF),
        core.mtls(),
        "localhost",
    )
    .unwrap();

    // The verifier sees a revocation made after the configuration was built.
    let config = core.mtls();
    core.revocations
        .revoke_agent(&AGENT_ID.to_ascii_uppercase());
    let err = server_error(handshake(
        core.agent_client(&agent, ALPN_WHARF),
        config,
        "localhost",
    ));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::Revoked)
        ),
        "{err:?}"
    );
    // HTTPS (poll/renew) refuses it too, rather than treating it as anonymous.
    let err = server_error(handshake(
        core.agent_client(&agent, ALPN_HTTP11),
        core.https(),
        "localhost",
    ));
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    ));
    handshake(
        core.agent_client(&other, ALPN_WHARF),
        core.mtls(),
        "localhost",
    )
    .unwrap();

    // Revocation by serial hits that one certificate only.
    assert!(core.revocations.unrevoke_agent(AGENT_ID));
    handshake(
        core.agent_client(&agent, ALPN_WHARF),
        core.mtls(),
        "localhost",
    )
    .unwrap();
    let (renewed, _) = core.agent(AGENT_ID, now(), DAY);
    let colon_serial = cert
        .serial
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":");
    core.revocations.revoke_serial(&colon_serial);
    let err = server_error(handshake(
        core.agent_client(&agent, ALPN_WHARF),
        core.mtls(),
        "localhost",
    ));
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::Revoked)
    ));
    handshake(
        core.agent_client(&renewed, ALPN_WHARF),
        core.mtls(),
        "localhost",
    )
    .unwrap();
}

#[test]
fn mtls_handshake_fails_with_expired_cert() {
    let core = Core::new();
    // Issued 60 days ago for 30 days: expired a month ago.
    let (agent, cert) = core.agent(AGENT_ID, now() - 60 * DAY, 30 * DAY);
    assert!(cert.not_after < now());
    let err = server_error(handshake(
        core.agent_client(&agent, ALPN_WHARF),
        core.mtls(),
        "localhost",
    ));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            )
        ),
        "{err:?}"
    );
    // Not yet valid fails as well.
    let (future, _) = core.agent(AGENT_ID, now() + 2 * DAY, 30 * DAY);
    let err = server_error(handshake(
        core.agent_client(&future, ALPN_WHARF),
        core.mtls(),
        "localhost",
    ));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }
            )
        ),
        "{err:?}"
    );
}

#[test]
fn mtls_handshake_requires_a_client_cert_with_an_agent_identity() {
    let core = Core::new();
    // No certificate at all.
    let anonymous = operator_client_config(core.ca.cert_pem().as_bytes(), &[ALPN_WHARF]).unwrap();
    let err = server_error(handshake(anonymous, core.mtls(), "localhost"));
    assert!(
        matches!(err, rustls::Error::NoCertificatesPresented),
        "{err:?}"
    );

    // A clientAuth certificate from the Wharf CA without a wharf://agent/ SAN.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["someone.example".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = rcgen::Issuer::from_ca_cert_der(
        core.ca.cert_der(),
        rcgen::KeyPair::from_pem(core.ca.key_pem().expose()).unwrap(),
    )
    .unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let identity = TlsIdentity::from_pem(&cert.pem(), &key.serialize_pem()).unwrap();
    let err = server_error(handshake(
        core.agent_client(&identity, ALPN_WHARF),
        core.mtls(),
        "localhost",
    ));
    assert!(err.to_string().contains("wharf://agent/"), "{err}");

    // A server certificate (serverAuth only) cannot be used as a client certificate.
    let server = core.ca.issue_server_cert(&["x.example"], now()).unwrap();
    let identity = TlsIdentity::from_pem(&server.cert.pem, server.key_pem.expose()).unwrap();
    let err = server_error(handshake(
        core.agent_client(&identity, ALPN_WHARF),
        core.mtls(),
        "localhost",
    ));
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn agent_client_refuses_a_server_of_another_ca() {
    let core = Core::new();
    let impostor = Core::new();
    let (agent, _) = core.agent(AGENT_ID, now(), DAY);
    let err = client_error(handshake(
        core.agent_client(&agent, ALPN_WHARF),
        impostor.mtls(),
        "localhost",
    ));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

// ---- handshakes: HTTPS with optional client auth ----------------------------------------

#[test]
fn https_client_auth_is_optional_and_identifies_agents() {
    let core = Core::new();
    // Operator or enrolling agent: no certificate, accepted, no agent id.
    let operator = operator_client_config(core.ca.cert_pem().as_bytes(), &[ALPN_HTTP11]).unwrap();
    let server = handshake(operator, core.https(), "core.example.com").unwrap();
    assert_eq!(
        agent_id_from_peer_certificates(server.peer_certificates()).unwrap(),
        None
    );
    assert_eq!(server.alpn_protocol(), Some(ALPN_HTTP11));

    // Polling agent: its id is available to the handler.
    let (agent, _) = core.agent(AGENT_ID, now(), DAY);
    let server = handshake(
        core.agent_client(&agent, ALPN_HTTP11),
        core.https(),
        "core.example.com",
    )
    .unwrap();
    assert_eq!(
        agent_id_from_peer_certificates(server.peer_certificates())
            .unwrap()
            .as_deref(),
        Some(AGENT_ID)
    );

    // A foreign or expired certificate is refused, not downgraded to anonymous.
    let impostor = Core::new();
    let (foreign, _) = impostor.agent(AGENT_ID, now(), DAY);
    let err = server_error(handshake(
        core.agent_client(&foreign, ALPN_HTTP11),
        core.https(),
        "localhost",
    ));
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));
    let (expired, _) = core.agent(AGENT_ID, now() - 60 * DAY, 30 * DAY);
    let err = server_error(handshake(
        core.agent_client(&expired, ALPN_HTTP11),
        core.https(),
        "localhost",
    ));
    assert!(matches!(err, rustls::Error::InvalidCertificate(_)));
}

#[test]
fn operator_client_trusts_only_the_given_ca() {
    let core = Core::new();
    let impostor = Core::new();
    let client = operator_client_config(core.ca.cert_pem().as_bytes(), &[ALPN_HTTP11]).unwrap();
    let err = client_error(handshake(client, impostor.https(), "localhost"));
    assert!(matches!(
        err,
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
    ));

    let client = operator_client_config(core.ca.cert_pem().as_bytes(), &[ALPN_HTTP11]).unwrap();
    let err = client_error(handshake(client, core.https(), "wrong.example.com"));
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, core.ca.cert_pem()).unwrap();
    let client = operator_client_config_from_file(&path, &[ALPN_HTTP11]).unwrap();
    handshake(client, core.https(), "core.example.com").unwrap();
    let err = operator_client_config_from_file(&dir.path().join("missing.pem"), &[]).unwrap_err();
    assert!(err.to_string().contains("missing.pem"), "{err}");
    assert!(operator_client_config(b"garbage", &[]).is_err());
}

// ---- handshakes: enrollment with a pinned CA fingerprint ---------------------------------

#[test]
fn enrollment_accepts_the_pinned_ca_and_refuses_another() {
    let core = Core::new();
    let pinned: CaFingerprint = core.ca.fingerprint().to_string().parse().unwrap();
    let client = enrollment_client_config(pinned, &[ALPN_HTTP11]).unwrap();
    let server = handshake(client, core.https(), "core.example.com").unwrap();
    assert_eq!(server.peer_certificates(), None);

    // Another core (another CA) is refused with a message that says what to do.
    let impostor = Core::new();
    let client = enrollment_client_config(pinned, &[ALPN_HTTP11]).unwrap();
    let err = client_error(handshake(client, impostor.https(), "core.example.com"));
    let msg = err.to_string();
    assert!(msg.contains("CA fingerprint did not match"), "{msg}");
    assert!(msg.contains(&pinned.to_string()), "{msg}");
    assert!(
        msg.contains(&impostor.ca.fingerprint().to_string()),
        "{msg}"
    );
    assert!(msg.contains("--ca-hash"), "{msg}");
    // The structured error can be recovered, also from inside an io::Error as HTTP
    // clients wrap it.
    assert!(matches!(
        pki_error_in_tls_error(&err),
        Some(PkiError::CaFingerprintMismatch { .. })
    ));
    let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, err.clone());
    let found = find_pki_error(&wrapped).expect("the PkiError inside the io::Error");
    assert!(found
        .to_string()
        .starts_with("the core's CA fingerprint did not match --ca-hash"));
    assert!(find_pki_error(&std::io::Error::other("unrelated")).is_none());

    // A server that presents the pinned CA but a certificate it did not sign is refused:
    // the chain is verified, not just the fingerprint.
    let mut forged = impostor.identity.clone();
    forged.chain[1] = core.ca.cert_der().clone();
    let forged_server = mtls_server_config(
        &forged,
        impostor.ca.cert_der(),
        Arc::new(RevocationList::new()),
        &[],
    )
    .unwrap();
    let mut forged_https = forged_server;
    forged_https.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    let client = enrollment_client_config(pinned, &[ALPN_HTTP11]).unwrap();
    let err = client_error(handshake(client, forged_https, "core.example.com"));
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature
            )
        ),
        "{err:?}"
    );

    // The server name is still checked.
    let client = enrollment_client_config(pinned, &[ALPN_HTTP11]).unwrap();
    let err = client_error(handshake(client, core.https(), "elsewhere.example.com"));
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

// ---- tokens ----------------------------------------------------------------------------

#[test]
fn tokens_verify_the_right_one_and_refuse_others() {
    let t = now();
    let (token, hash) = EnrollToken::generate().unwrap();
    let text = token.expose();
    assert!(text.starts_with("wharf-enroll-"));
    assert_eq!(text.len(), "wharf-enroll-".len() + 43);
    assert!(text["wharf-enroll-".len()..]
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    assert!(EnrollToken::has_prefix(text) && !ApiToken::has_prefix(text));
    assert_eq!(EnrollToken::hash(text), hash);
    assert!(EnrollToken::verify(text, &hash));

    let (other, _) = EnrollToken::generate().unwrap();
    assert_ne!(other.expose(), text);
    assert!(!EnrollToken::verify(other.expose(), &hash));
    assert!(!EnrollToken::verify("", &hash));
    assert!(!EnrollToken::verify(&text[..text.len() - 1], &hash));
    assert!(!EnrollToken::verify(&format!("{text}x"), &hash));

    // Expiry is the caller's `now` against the stored expiry.
    let expires = t + Duration::from_secs(3600);
    EnrollToken::check(text, &hash, Some(expires), t).unwrap();
    EnrollToken::check(text, &hash, None, t + 1000 * DAY).unwrap();
    let err = EnrollToken::check(text, &hash, Some(expires), expires).unwrap_err();
    assert!(matches!(err, PkiError::TokenExpired { .. }), "{err}");
    let err = EnrollToken::check(other.expose(), &hash, Some(expires), t).unwrap_err();
    assert!(matches!(err, PkiError::TokenInvalid { .. }), "{err}");
    // A wrong token past expiry reports "invalid", not whether some token expired.
    let err = EnrollToken::check(other.expose(), &hash, Some(expires), expires).unwrap_err();
    assert!(matches!(err, PkiError::TokenInvalid { .. }), "{err}");

    let (api, api_hash) = ApiToken::generate().unwrap();
    assert!(api.expose().starts_with("wharf-api-"));
    assert!(ApiToken::verify(api.expose(), &api_hash));
    assert!(!ApiToken::verify(text, &api_hash));
    ApiToken::check(api.expose(), &api_hash, None, t).unwrap();

    // The stored form round-trips, and neither Debug nor errors show the plaintext.
    let json = serde_json::to_string(&hash).unwrap();
    assert_eq!(json, format!("\"{}\"", hash.to_hex()));
    assert_eq!(serde_json::from_str::<TokenHash>(&json).unwrap(), hash);
    assert_eq!(
        TokenHash::from_hex(&hash.to_hex().to_ascii_uppercase()),
        Some(hash)
    );
    assert!(!format!("{token:?}").contains(text));
    assert!(!format!("{err:?} {err}").contains(other.expose()));
}

// ---- secrets never printed -------------------------------------------------------------

#[test]
fn debug_output_and_errors_hold_no_key_material() {
    let core = Core::new();
    let key_pem = core.ca.key_pem();
    let key_body: String = key_pem
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(key_body.len() > 40);
    let debug = format!("{:?} {:?} {:?}", core.ca, key_pem, core.identity);
    assert!(!debug.contains(&key_body[..40]), "{debug}");
    assert!(debug.contains(&core.ca.fingerprint().to_string()));

    let (agent_key, _) = generate_agent_key_and_csr("web-1").unwrap();
    let err = CertificateAuthority::from_pem(core.ca.cert_pem(), agent_key.expose()).unwrap_err();
    let text = format!("{err} {err:?}");
    let agent_body: String = agent_key
        .expose()
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    assert!(!text.contains(&agent_body[..40]), "{text}");
}

// ---- files -----------------------------------------------------------------------------

#[test]
fn secret_files_are_written_0600_atomically_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.key");
    write_secret_file(&path, b"first").unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    ensure_private(&path).unwrap();
    write_secret_file(&path, b"second").unwrap();
    assert_eq!(read_secret_file(&path).unwrap().expose(), "second");
    // Nothing is left behind but the file itself.
    let entries: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(entries.len(), 1);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = ensure_private(&path).unwrap_err();
    assert!(
        matches!(err, PkiError::InsecurePermissions { mode: 0o644, .. }),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("chmod 600") && msg.contains("agent.key"),
        "{msg}"
    );
    assert!(read_secret_file(&path).is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    assert!(ensure_private(&path).is_err());
    // Rewriting restores a private mode.
    write_secret_file(&path, b"third").unwrap();
    ensure_private(&path).unwrap();

    let pub_path = dir.path().join("ca.pem");
    write_public_file(&pub_path, b"cert").unwrap();
    assert_eq!(
        std::fs::metadata(&pub_path).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(ensure_private(&dir.path().join("missing")).is_err());
    assert!(write_secret_file(&dir.path().join("no/such/dir/key"), b"x").is_err());
}

#[test]
fn core_pki_is_created_once_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t = now();
    let first = CorePki::load_or_create(&data, &["core.example.com"], t).unwrap();
    assert!(first.ca_created && first.server_cert_issued);
    for (file, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("server.pem", 0o644),
        ("server.key", 0o600),
    ] {
        let m = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(m, mode, "{file}");
    }
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        std::fs::read_to_string(CorePki::ca_cert_path(&data)).unwrap(),
        first.ca.cert_pem()
    );

    // Same names: everything reloaded as is.
    let second = CorePki::load_or_create(&data, &["core.example.com"], t).unwrap();
    assert!(!second.ca_created && !second.server_cert_issued);
    assert_eq!(second.fingerprint(), first.fingerprint());
    assert_eq!(second.server.cert.der, first.server.cert.der);

    // New names: the same CA, a new server certificate that serves them.
    let third = CorePki::load_or_create(&data, &["core.example.com", "10.0.0.9"], t).unwrap();
    assert!(!third.ca_created && third.server_cert_issued);
    assert_eq!(third.fingerprint(), first.fingerprint());
    let identity = third.server_tls_identity().unwrap();
    assert_eq!(identity.chain.len(), 2);
    let config = https_server_config(
        &identity,
        third.ca_cert(),
        Arc::new(RevocationList::new()),
        &[],
    )
    .unwrap();
    let client = enrollment_client_config(first.fingerprint(), &[]).unwrap();
    handshake(client, config, "10.0.0.9").unwrap();

    // Near expiry: re-issued.
    let later =
        CorePki::load_or_create(&data, &["core.example.com", "10.0.0.9"], t + 340 * DAY).unwrap();
    assert!(later.server_cert_issued);

    // A key file others can read is refused, not silently replaced.
    std::fs::set_permissions(data.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = CorePki::load_or_create(&data, &["core.example.com"], t).unwrap_err();
    assert!(matches!(err, PkiError::InsecurePermissions { .. }), "{err}");
    std::fs::set_permissions(data.join("ca.key"), std::fs::Permissions::from_mode(0o600)).unwrap();

    // A lost CA key is an error, never a new CA.
    std::fs::remove_file(data.join("ca.key")).unwrap();
    let err = CorePki::load_or_create(&data, &["core.example.com"], t).unwrap_err();
    assert!(matches!(err, PkiError::InconsistentState { .. }), "{err}");
    assert!(err.to_string().contains("restore it from backup"), "{err}");
}

/// Resumption would restore a client certificate without the revocation check: both
/// server configs issue no tickets, keep no session cache and take no early data.
#[test]
fn server_configs_never_resume_sessions() {
    let core = Core::new();
    for config in [core.mtls(), core.https()] {
        assert_eq!(config.send_tls13_tickets, 0);
        assert!(!config.session_storage.can_cache());
        assert_eq!(config.max_early_data_size, 0);
    }
}
