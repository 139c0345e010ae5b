//! Reading certificates: fingerprints, the agent id SAN, serial and validity.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq as _;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::error::{PkiError, Result};
use super::AGENT_URI_PREFIX;

/// The SHA-256 fingerprint of a certificate's DER encoding, shown as `sha256:<64 lowercase hex>`.
///
/// The fingerprint of the CA certificate is what agents pin with `--ca-hash`. Parsing
/// accepts upper- or lowercase hex, with or without the `sha256:` prefix and with or
/// without `:` separators between bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CaFingerprint([u8; 32]);

impl CaFingerprint {
    /// The prefix of the text form.
    pub const PREFIX: &'static str = "sha256:";

    /// The fingerprint of a certificate's DER bytes.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        CaFingerprint(out)
    }

    /// The raw 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `der` hashes to this fingerprint (compared in constant time).
    pub fn matches(&self, der: &[u8]) -> bool {
        bool::from(Self::of_der(der).0.ct_eq(&self.0))
    }
}

impl fmt::Display for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Self::PREFIX, hex::encode(self.0))
    }
}

impl fmt::Debug for CaFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFingerprint({self})")
    }
}

impl FromStr for CaFingerprint {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = |reason: &str| PkiError::InvalidFingerprint {
            value: s.chars().take(100).collect(),
            reason: reason.to_string(),
        };
        let trimmed = s.trim();
        let body = match trimmed.get(..Self::PREFIX.len()) {
            Some(p) if p.eq_ignore_ascii_case(Self::PREFIX) => &trimmed[Self::PREFIX.len()..],
            _ if trimmed.contains(':') && trimmed.len() < 90 => {
                return Err(invalid("only sha256 fingerprints are supported"))
            }
            _ => trimmed,
        };
        let hex_digits: String = body.chars().filter(|c| *c != ':').collect();
        if hex_digits.len() != 64 {
            return Err(invalid(&format!(
                "expected 64 hex digits, found {}",
                hex_digits.len()
            )));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex_digits.to_ascii_lowercase(), &mut out)
            .map_err(|_| invalid("it contains characters that are not hex digits"))?;
        Ok(CaFingerprint(out))
    }
}

impl Serialize for CaFingerprint {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CaFingerprint {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What Wharf reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Serial number: lowercase hex of the unsigned big-endian value, no leading zeros.
    pub serial: String,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// The subject's common name, if any.
    pub common_name: Option<String>,
    /// The agent id of a `wharf://agent/<id>` SAN URI, if the certificate has exactly one.
    pub agent_id: Option<String>,
    /// DNS names and IP addresses among the subject alternative names (IPs in their
    /// canonical text form).
    pub server_names: BTreeSet<String>,
    /// Whether basic constraints say this is a CA.
    pub is_ca: bool,
    /// SHA-256 fingerprint of the DER encoding.
    pub fingerprint: CaFingerprint,
}

fn parse<'a>(what: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::cert(what, e))?;
    if !rest.is_empty() {
        return Err(PkiError::cert(what, "trailing bytes after the certificate"));
    }
    Ok(cert)
}

pub(crate) fn unix_to_system(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex::encode(&raw[start..])
}

fn agent_id_in(cert: &X509Certificate<'_>) -> Result<Option<String>> {
    let san = cert.subject_alternative_name().map_err(|e| {
        PkiError::cert("certificate", format!("bad subject alternative names: {e}"))
    })?;
    let mut found: Option<String> = None;
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name {
                if let Some(rest) = uri.strip_prefix(AGENT_URI_PREFIX) {
                    let id =
                        uuid::Uuid::parse_str(rest).map_err(|_| PkiError::NoAgentIdentity {
                            reason: format!("the SAN URI `{uri}` does not end in a UUID"),
                        })?;
                    if found.is_some() {
                        return Err(PkiError::NoAgentIdentity {
                            reason: "it has more than one wharf://agent/ SAN URI".into(),
                        });
                    }
                    found = Some(id.hyphenated().to_string());
                }
            }
        }
    }
    Ok(found)
}

/// Reads the facts Wharf uses from a DER certificate.
pub fn cert_info(der: &[u8]) -> Result<CertInfo> {
    let cert = parse("certificate", der)?;
    let mut server_names = BTreeSet::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => {
                    server_names.insert(dns.to_ascii_lowercase());
                }
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        server_names.insert(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        serial: serial_hex(cert.raw_serial()),
        not_before: unix_to_system(cert.validity().not_before.timestamp()),
        not_after: unix_to_system(cert.validity().not_after.timestamp()),
        common_name,
        agent_id: agent_id_in(&cert)?,
        server_names,
        is_ca: cert.is_ca(),
        fingerprint: CaFingerprint::of_der(der),
    })
}

/// The agent id (a lowercase hyphenated UUID) of a certificate's `wharf://agent/<id>` SAN URI.
///
/// Fails when the certificate cannot be parsed, has no such URI, has several, or the id is
/// not a UUID.
pub fn agent_id_from_cert(der: &[u8]) -> Result<String> {
    let cert = parse("agent certificate", der)?;
    agent_id_in(&cert)?.ok_or_else(|| PkiError::NoAgentIdentity {
        reason: "it has no wharf://agent/<id> SAN URI".into(),
    })
}

/// The agent id of the peer of a TLS connection, from the certificates rustls reports
/// (`conn.peer_certificates()`): `Ok(None)` when the peer sent no certificate.
pub fn agent_id_from_peer_certificates(
    certs: Option<&[CertificateDer<'_>]>,
) -> Result<Option<String>> {
    match certs.and_then(|c| c.first()) {
        None => Ok(None),
        Some(end_entity) => agent_id_from_cert(end_entity).map(Some),
    }
}

/// The end of a certificate's validity.
pub fn cert_not_after(der: &[u8]) -> Result<SystemTime> {
    let cert = parse("certificate", der)?;
    Ok(unix_to_system(cert.validity().not_after.timestamp()))
}

/// A certificate's serial number as lowercase hex (unsigned, no leading zeros). This is
/// the form used by [`RevocationList::revoke_serial`](super::RevocationList::revoke_serial).
pub fn cert_serial(der: &[u8]) -> Result<String> {
    let cert = parse("certificate", der)?;
    Ok(serial_hex(cert.raw_serial()))
}

/// Whether a certificate is due for renewal at `now`: when less than a third of its
/// lifetime is left (10 days of the default 30), or it has expired.
pub fn renewal_due(der: &[u8], now: SystemTime) -> Result<bool> {
    let cert = parse("certificate", der)?;
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let lifetime = na.saturating_sub(nb).max(0);
    let now_secs = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    Ok(na.saturating_sub(now_secs) < lifetime / 3)
}

/// Decodes every `CERTIFICATE` block of a PEM document, in order.
pub fn certs_from_pem(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidPem {
            what,
            label: "CERTIFICATE",
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::InvalidPem {
            what,
            label: "CERTIFICATE",
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Encodes DER certificate bytes as a PEM `CERTIFICATE` block.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII, so every chunk is valid UTF-8.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
