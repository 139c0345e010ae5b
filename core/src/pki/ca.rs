//! The certificate authority: CA generation, server and agent certificates, agent CSRs.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    SubjectPublicKeyInfo, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::SecureRandom as _;
use rustls_pki_types::CertificateDer;

use super::error::{PkiError, Result};
use super::inspect::{cert_info, certs_from_pem, CaFingerprint, CertInfo};
use super::secret::SecretString;
use super::{
    AGENT_URI_PREFIX, CA_VALIDITY, CLOCK_SKEW_ALLOWANCE, DEFAULT_SERVER_NAMES, SERVER_CERT_VALIDITY,
};

/// The common name of the Wharf CA certificate.
pub const CA_COMMON_NAME: &str = "Wharf CA";
const ORGANIZATION: &str = "Wharf";
/// Latest instant an X.509 time can hold (9999-12-31T23:59:59Z).
const MAX_X509_UNIX: u64 = 253_402_300_799;

/// Sets `not_before`/`not_after` of rcgen parameters from [`SystemTime`]s, without naming
/// the `time` crate: rcgen's epoch date plus a std `Duration`.
fn set_validity(
    params: &mut CertificateParams,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<()> {
    let since_epoch = |t: SystemTime| -> Result<Duration> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| PkiError::InvalidValidity {
                reason: "times before 1970 cannot be used".into(),
            })?;
        if d.as_secs() > MAX_X509_UNIX {
            return Err(PkiError::InvalidValidity {
                reason: "times after the year 9999 cannot be used".into(),
            });
        }
        // Whole seconds: X.509 times have no fractions.
        Ok(Duration::from_secs(d.as_secs()))
    };
    let nb = since_epoch(not_before)?;
    let na = since_epoch(not_after)?;
    if na <= nb {
        return Err(PkiError::InvalidValidity {
            reason: "the certificate would expire before it becomes valid".into(),
        });
    }
    params.not_before = rcgen::date_time_ymd(1970, 1, 1) + nb;
    params.not_after = rcgen::date_time_ymd(1970, 1, 1) + na;
    Ok(())
}

/// A fresh random serial number: 16 bytes, positive, with no leading zero byte, so that its
/// hex form always has 32 digits.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The CA's subject: CN "Wharf CA" plus a random organizational unit, so that two Wharf
/// CAs never share a subject. A certificate from another Wharf installation then fails
/// as "unknown issuer", not as a bad signature by a namesake.
fn ca_dn() -> Result<DistinguishedName> {
    let mut id = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| PkiError::Random)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    dn.push(
        DnType::OrganizationalUnitName,
        format!("ca-{}", hex::encode(id)),
    );
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    Ok(dn)
}

/// A certificate issued by the Wharf CA.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// DER encoding.
    pub der: CertificateDer<'static>,
    /// PEM encoding (one `CERTIFICATE` block).
    pub pem: String,
    /// Serial number as lowercase hex (see [`cert_serial`](super::cert_serial)).
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl IssuedCertificate {
    fn from_rcgen(cert: rcgen::Certificate) -> Result<Self> {
        let der = cert.der().clone();
        let info = cert_info(&der)?;
        Ok(IssuedCertificate {
            pem: cert.pem(),
            der,
            serial: info.serial,
            not_before: info.not_before,
            not_after: info.not_after,
        })
    }
}

impl fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("fingerprint", &CaFingerprint::of_der(&self.der))
            .finish()
    }
}

/// The core's server certificate and its private key.
#[derive(Clone, Debug)]
pub struct ServerIdentity {
    /// The server certificate (issued by the Wharf CA).
    pub cert: IssuedCertificate,
    /// The server's private key, PKCS#8 PEM.
    pub key_pem: SecretString,
}

/// How an agent hands its public key to core at enrollment or renewal.
#[derive(Clone, Copy, Debug)]
pub enum AgentKeyRequest<'a> {
    /// A PEM `CERTIFICATE REQUEST`. Its self-signature is verified (proof that the agent
    /// holds the key); its subject and extensions are ignored.
    CsrPem(&'a str),
    /// A DER certificate signing request, handled like [`AgentKeyRequest::CsrPem`].
    CsrDer(&'a [u8]),
    /// A PEM `PUBLIC KEY` (SubjectPublicKeyInfo). No proof of possession: use it only
    /// where the caller is otherwise authenticated (a valid one-time token).
    PublicKeyPem(&'a str),
    /// A DER SubjectPublicKeyInfo, handled like [`AgentKeyRequest::PublicKeyPem`].
    PublicKeyDer(&'a [u8]),
}

impl<'a> AgentKeyRequest<'a> {
    /// Picks the variant of a PEM text from its label (`CERTIFICATE REQUEST` or
    /// `PUBLIC KEY`); anything else is taken as a CSR and refused when parsed.
    pub fn from_pem(pem: &'a str) -> Self {
        if pem.contains("-----BEGIN PUBLIC KEY-----") {
            AgentKeyRequest::PublicKeyPem(pem)
        } else {
            AgentKeyRequest::CsrPem(pem)
        }
    }
}

/// The agent's public key, as taken from a request.
enum AgentPublicKey {
    Csr(Box<CertificateSigningRequestParams>),
    Spki(SubjectPublicKeyInfo),
}

impl AgentPublicKey {
    fn parse(request: AgentKeyRequest<'_>) -> Result<Self> {
        let csr_err = |e: rcgen::Error| {
            PkiError::InvalidCsr {
            reason: match e {
                rcgen::Error::InvalidCertificationRequestSignature => {
                    "its signature does not verify with the key it carries".into()
                }
                rcgen::Error::UnsupportedExtension => {
                    "it asks for an extension other than subject alternative names, key usage, extended key usage or basic constraints".into()
                }
                other => other.to_string(),
            },
        }
        };
        let key_err = |e: rcgen::Error| PkiError::InvalidPublicKey {
            reason: e.to_string(),
        };
        Ok(match request {
            AgentKeyRequest::CsrPem(pem) => AgentPublicKey::Csr(Box::new(
                CertificateSigningRequestParams::from_pem(pem).map_err(csr_err)?,
            )),
            AgentKeyRequest::CsrDer(der) => AgentPublicKey::Csr(Box::new(
                CertificateSigningRequestParams::from_der(&der.into()).map_err(csr_err)?,
            )),
            AgentKeyRequest::PublicKeyPem(pem) => {
                AgentPublicKey::Spki(SubjectPublicKeyInfo::from_pem(pem).map_err(key_err)?)
            }
            AgentKeyRequest::PublicKeyDer(der) => {
                AgentPublicKey::Spki(SubjectPublicKeyInfo::from_der(der).map_err(key_err)?)
            }
        })
    }

    fn sign(
        &self,
        params: &CertificateParams,
        issuer: &Issuer<'_, &KeyPair>,
    ) -> Result<rcgen::Certificate> {
        match self {
            AgentPublicKey::Csr(csr) => params.signed_by(&csr.public_key, issuer),
            AgentPublicKey::Spki(spki) => params.signed_by(spki, issuer),
        }
        .map_err(|e| PkiError::generate("agent certificate", e))
    }
}

/// Normalizes the configured server names and adds the defaults (`localhost`, `127.0.0.1`,
/// `::1`). IP addresses are kept in canonical text form, DNS names in lowercase. Brackets
/// around IPv6 addresses are removed.
pub fn server_names_with_defaults<S: AsRef<str>>(names: &[S]) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for name in names
        .iter()
        .map(|n| n.as_ref())
        .chain(DEFAULT_SERVER_NAMES.iter().copied())
    {
        out.insert(normalize_server_name(name)?);
    }
    Ok(out)
}

fn normalize_server_name(name: &str) -> Result<String> {
    let invalid = |reason: &str| PkiError::InvalidServerName {
        name: name.chars().take(300).collect(),
        reason: reason.to_string(),
    };
    let trimmed = name.trim();
    let unbracketed = trimmed
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or(trimmed);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let lower = trimmed.trim_end_matches('.').to_ascii_lowercase();
    if lower.is_empty() {
        return Err(invalid("it is empty"));
    }
    if lower.contains(':') {
        return Err(invalid("it looks like HOST:PORT; give the host only"));
    }
    // rustls' own name check is the authority on what a client will accept.
    match rustls_pki_types::ServerName::try_from(lower.as_str()) {
        Ok(rustls_pki_types::ServerName::DnsName(_)) => Ok(lower),
        _ => Err(invalid("it is not a valid DNS name")),
    }
}

fn san_for(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let ia5 =
        rcgen::string::Ia5String::try_from(name).map_err(|e| PkiError::InvalidServerName {
            name: name.to_string(),
            reason: e.to_string(),
        })?;
    Ok(SanType::DnsName(ia5))
}

fn check_agent_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| PkiError::InvalidAgentName {
        name: name.chars().take(100).collect(),
        reason: reason.to_string(),
    };
    if name.trim().is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.chars().count() > 64 {
        return Err(invalid("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("it contains control characters"));
    }
    Ok(())
}

/// The Wharf certificate authority: a self-signed ECDSA P-256 CA that signs the core's
/// server certificate and the agents' client certificates.
///
/// Its `Debug` output shows the fingerprint only, never the key.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    key: KeyPair,
    info: CertInfo,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("fingerprint", &self.info.fingerprint)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Creates a new CA: ECDSA P-256 key, CN "Wharf CA", basic constraints CA with path
    /// length 0 (it signs only leaf certificates), key usage certSign/cRLSign, valid from
    /// `now` (less a few minutes of clock skew) for 10 years.
    pub fn generate(now: SystemTime) -> Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::generate("CA key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_dn()?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        set_validity(
            &mut params,
            now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now),
            now + CA_VALIDITY,
        )?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| PkiError::generate("CA certificate", e))?;
        let cert_der = cert.der().clone();
        let info = cert_info(&cert_der)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            cert_der,
            key,
            info,
        })
    }

    /// Loads a CA from its certificate and PKCS#8 private key, both PEM. Refuses a
    /// certificate that is not a CA, and a key that does not belong to the certificate.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self> {
        let cert_der = certs_from_pem("CA certificate", cert_pem.as_bytes())?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::cert("CA certificate", "no certificate in the PEM"))?;
        let info = cert_info(&cert_der)?;
        if !info.is_ca {
            return Err(PkiError::cert(
                "CA certificate",
                "its basic constraints do not mark it as a CA",
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidKey {
            what: "CA key",
            reason: e.to_string(),
        })?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::cert("CA certificate", e))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch { what: "CA key" });
        }
        Ok(CertificateAuthority {
            cert_pem: super::inspect::cert_der_to_pem(&cert_der),
            cert_der,
            key,
            info,
        })
    }

    /// The CA certificate, PEM (what `ca.pem` in the data dir holds and what the operator
    /// CLI's `--ca` points at).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA private key, PKCS#8 PEM, to be stored with [`write_secret_file`](super::write_secret_file).
    pub fn key_pem(&self) -> SecretString {
        SecretString::new(self.key.serialize_pem())
    }

    /// The SHA-256 fingerprint of the CA certificate's DER: what agents pin with
    /// `--ca-hash`. `to_string()` gives `sha256:<64 lowercase hex>`.
    pub fn fingerprint(&self) -> CaFingerprint {
        self.info.fingerprint
    }

    /// End of the CA's validity.
    pub fn not_after(&self) -> SystemTime {
        self.info.not_after
    }

    fn issuer(&self) -> Result<Issuer<'static, &KeyPair>> {
        Issuer::from_ca_cert_der(&self.cert_der, &self.key)
            .map_err(|e| PkiError::cert("CA certificate", e))
    }

    /// Clamps a requested end of validity to the CA's own.
    fn clamp_not_after(&self, wanted: SystemTime) -> SystemTime {
        wanted.min(self.info.not_after)
    }

    /// Issues the core's server certificate with a fresh ECDSA P-256 key.
    ///
    /// Subject alternative names: every configured name (a DNS name, or an IP address
    /// where it parses as one) plus always `localhost`, `127.0.0.1` and `::1`. Extended
    /// key usage serverAuth; valid for a year from `now` (never past the CA's end).
    pub fn issue_server_cert<S: AsRef<str>>(
        &self,
        names: &[S],
        now: SystemTime,
    ) -> Result<ServerIdentity> {
        let all = server_names_with_defaults(names)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| PkiError::generate("server key", e))?;
        let mut params = CertificateParams::default();
        let first_configured = names
            .iter()
            .find_map(|n| normalize_server_name(n.as_ref()).ok())
            .unwrap_or_else(|| "localhost".to_string());
        params.distinguished_name = dn(&first_configured);
        params.subject_alt_names = all.iter().map(|n| san_for(n)).collect::<Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(
            &mut params,
            now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now),
            self.clamp_not_after(now + SERVER_CERT_VALIDITY),
        )?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| PkiError::generate("server certificate", e))?;
        Ok(ServerIdentity {
            cert: IssuedCertificate::from_rcgen(cert)?,
            key_pem: SecretString::new(key.serialize_pem()),
        })
    }

    /// Issues an agent's client certificate.
    ///
    /// `agent_id` must be a UUID (it is written lowercase, hyphenated); `agent_name`
    /// becomes the subject's common name. The key comes from `request`: a CSR's
    /// self-signature is verified, and whatever subject or extensions it asked for are
    /// ignored. The certificate has exactly one SAN, the URI `wharf://agent/<id>`,
    /// extended key usage clientAuth, a random serial, and is valid from `now` (less a few
    /// minutes of clock skew) until `now + validity` (never past the CA's end).
    pub fn issue_agent_cert(
        &self,
        agent_id: &str,
        agent_name: &str,
        request: AgentKeyRequest<'_>,
        now: SystemTime,
        validity: Duration,
    ) -> Result<IssuedCertificate> {
        let id = uuid::Uuid::parse_str(agent_id).map_err(|_| PkiError::InvalidAgentId {
            value: agent_id.chars().take(100).collect(),
        })?;
        check_agent_name(agent_name)?;
        if validity.is_zero() {
            return Err(PkiError::InvalidValidity {
                reason: "the validity of an agent certificate must be longer than zero".into(),
            });
        }
        let not_after = now
            .checked_add(validity)
            .ok_or_else(|| PkiError::InvalidValidity {
                reason: "the validity is too long".into(),
            })?;
        let key = AgentPublicKey::parse(request)?;

        let mut params = CertificateParams::default();
        params.distinguished_name = dn(agent_name);
        let uri = format!("{AGENT_URI_PREFIX}{}", id.hyphenated());
        params.subject_alt_names = vec![SanType::URI(
            rcgen::string::Ia5String::try_from(uri)
                .map_err(|e| PkiError::generate("agent SAN", e))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        set_validity(
            &mut params,
            now.checked_sub(CLOCK_SKEW_ALLOWANCE).unwrap_or(now),
            self.clamp_not_after(not_after),
        )?;
        IssuedCertificate::from_rcgen(key.sign(&params, &self.issuer()?)?)
    }
}

/// Agent side of enrollment: a fresh ECDSA P-256 key (PKCS#8 PEM) and a CSR for it (PEM)
/// with `name` as common name. Send the CSR to core; keep the key with
/// [`write_secret_file`](super::write_secret_file).
pub fn generate_agent_key_and_csr(name: &str) -> Result<(SecretString, String)> {
    check_agent_name(name)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| PkiError::generate("agent key", e))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(name);
    let csr = params
        .serialize_request(&key)
        .map_err(|e| PkiError::generate("agent certificate signing request", e))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| PkiError::generate("agent certificate signing request", e))?;
    Ok((SecretString::new(key.serialize_pem()), csr_pem))
}
