//! The network's certificates: one small certificate authority per network, the
//! coordinator's server certificate, and one client certificate per hospital node.
//!
//! A node certificate binds the node to its site: its subject is `O = ern node`,
//! `CN = <site id>`, and it is good for TLS client authentication only. The coordinator
//! accepts a node's stream only if the certificate it presented chains to the network CA
//! (rustls checks that during the handshake) and names the same site as the node's token
//! ([`node_site_of`]). Keys are ECDSA P-256, made and used through ring.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The organisation named in every node certificate's subject.
pub const NODE_ORGANIZATION: &str = "ern node";

/// How long the CA is valid.
const CA_DAYS: i64 = 3650;
/// How long server and node certificates are valid.
const LEAF_DAYS: i64 = 825;
/// Certificates start a day early so a slightly slow clock does not reject them.
const BACKDATE_DAYS: i64 = 1;

/// Errors making or reading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not make or parse a certificate or key.
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A server name is neither a DNS name nor an IP address.
    #[error("{0:?} is not a DNS name or an IP address")]
    BadServerName(String),
    /// The site id is not well formed.
    #[error("{0:?} is not a valid site id")]
    BadSite(String),
    /// The clock is outside what a certificate can say.
    #[error("the system clock is out of range for a certificate")]
    Clock,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs.
        f.debug_struct("IssuedCertificate")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

/// The network's certificate authority, able to issue certificates.
pub struct NetworkCa {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for NetworkCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkCa")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, days: i64) -> Result<(), PkiError> {
    let now = OffsetDateTime::now_utc();
    params.not_before = now
        .checked_sub(time::Duration::days(BACKDATE_DAYS))
        .ok_or(PkiError::Clock)?;
    params.not_after = now
        .checked_add(time::Duration::days(days))
        .ok_or(PkiError::Clock)?;
    Ok(())
}

fn name(organization: &str, common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, organization);
    name.push(DnType::CommonName, common_name);
    name
}

impl NetworkCa {
    /// A new CA named `network` (e.g. "ERN-EYE"); returns it and its key pair in PEM.
    pub fn generate(network: &str) -> Result<(Self, IssuedCertificate), PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name("ern network", &format!("{network} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_DAYS)?;
        let cert = params.self_signed(&key)?;
        let issued = IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        let ca = NetworkCa::from_pem(&issued.cert_pem, &issued.key_pem)?;
        Ok((ca, issued))
    }

    /// The CA from its certificate and key (PEM), to issue more certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(NetworkCa {
            cert_pem: cert_pem.to_string(),
            issuer,
        })
    }

    /// The CA certificate, for everyone who must trust the network.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The coordinator's server certificate for `names` (DNS names or IP addresses
    /// clients dial).
    pub fn issue_server(&self, names: &[String]) -> Result<IssuedCertificate, PkiError> {
        let mut params = CertificateParams::default();
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) if is_dns_name(name) => SanType::DnsName(
                    name.as_str()
                        .try_into()
                        .map_err(|_| PkiError::BadServerName(name.clone()))?,
                ),
                Err(_) => return Err(PkiError::BadServerName(name.clone())),
            };
            params.subject_alt_names.push(san);
        }
        let first = names.first().map_or("coordinator", String::as_str);
        params.distinguished_name = name("ern coordinator", first);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A node certificate bound to `site`: client authentication only.
    pub fn issue_node(&self, site: &str) -> Result<IssuedCertificate, PkiError> {
        if !ern_queries::ids::is_valid_id(site) {
            return Err(PkiError::BadSite(site.to_string()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name(NODE_ORGANIZATION, site);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<IssuedCertificate, PkiError> {
        validity(&mut params, LEAF_DAYS)?;
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Letters, digits and hyphens in dot-separated labels of at most 63 characters.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The site a node certificate (DER) is bound to: its subject's common name, when the
/// subject's organisation is [`NODE_ORGANIZATION`]. Call this only on a certificate the
/// TLS handshake has already verified against the network CA.
pub fn node_site_of(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    let organization = subject.iter_organization().next()?.as_str().ok()?;
    if organization != NODE_ORGANIZATION {
        return None;
    }
    let mut names = subject.iter_common_name();
    let site = names.next()?.as_str().ok()?;
    // Exactly one common name: no ambiguity about which site is meant.
    if names.next().is_some() {
        return None;
    }
    Some(site.to_string())
}

/// The serial number of a certificate (DER), as lowercase hex: what the revocation list
/// holds. `None` for bytes that are not a certificate.
pub fn certificate_serial(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(normal_serial(&hex::encode(
        cert.tbs_certificate.raw_serial(),
    )))
}

/// A serial as the revocation list keeps it: lowercase hex without `:` separators or
/// leading zeros (`openssl x509 -serial` pads where DER does not), or `None` when it is
/// not hex.
pub fn parse_serial(text: &str) -> Option<String> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    let well_formed =
        !digits.is_empty() && digits.len() <= 64 && digits.bytes().all(|b| b.is_ascii_hexdigit());
    well_formed.then(|| normal_serial(&digits))
}

fn normal_serial(hex_digits: &str) -> String {
    let trimmed = hex_digits.trim_start_matches('0').to_ascii_lowercase();
    if trimmed.is_empty() {
        "0".into()
    } else {
        trimmed
    }
}

/// When a certificate (DER) stops being valid, in seconds since the Unix epoch.
pub fn certificate_not_after(der: &[u8]) -> Option<u64> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// [`certificate_serial`] of a PEM certificate.
pub fn certificate_serial_pem(pem: &str) -> Option<String> {
    let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    certificate_serial(&parsed.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der_of(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        parsed.contents
    }

    #[test]
    fn node_certificates_name_their_site_and_nothing_else_does() {
        let (ca, _) = NetworkCa::generate("test").expect("ca");
        let node = ca.issue_node("hospital-7").expect("node");
        assert_eq!(
            node_site_of(&der_of(&node.cert_pem)).as_deref(),
            Some("hospital-7")
        );
        let server = ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])
            .expect("server");
        assert_eq!(node_site_of(&der_of(&server.cert_pem)), None);
        assert_eq!(node_site_of(&der_of(ca.cert_pem())), None);
        assert_eq!(node_site_of(b"not a certificate"), None);
    }

    #[test]
    fn every_certificate_has_a_serial_of_its_own() {
        let (ca, _) = NetworkCa::generate("test").expect("ca");
        let first = ca.issue_node("site-a").expect("node");
        let renewed = ca.issue_node("site-a").expect("renewed");
        let serial = |pem: &str| certificate_serial(&der_of(pem)).expect("serial");
        assert!((35..=40).contains(&serial(&first.cert_pem).len()));
        assert_eq!(
            parse_serial(&format!("00:{}", serial(&first.cert_pem).to_uppercase())),
            Some(serial(&first.cert_pem))
        );
        assert_eq!(parse_serial("not-hex"), None);
        let days = |pem: &str| {
            (certificate_not_after(&der_of(pem)).expect("not after") as i64
                - OffsetDateTime::now_utc().unix_timestamp())
                / 86_400
        };
        assert!((LEAF_DAYS - 1..=LEAF_DAYS).contains(&days(&first.cert_pem)));
        assert_ne!(serial(&first.cert_pem), serial(&renewed.cert_pem));
        assert_eq!(certificate_serial(b"junk"), None);
    }

    #[test]
    fn a_reloaded_ca_issues_certificates_it_signed() {
        let (_, files) = NetworkCa::generate("test").expect("ca");
        let again = NetworkCa::from_pem(&files.cert_pem, &files.key_pem).expect("reload");
        let node = again.issue_node("site-b").expect("node");
        let (node_der, ca_der) = (der_of(&node.cert_pem), der_of(&files.cert_pem));
        let (_, cert) = X509Certificate::from_der(&node_der).expect("parse");
        let (_, ca) = X509Certificate::from_der(&ca_der).expect("parse");
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key()))
            .expect("signed by the CA");
    }

    #[test]
    fn bad_names_are_refused() {
        let (ca, _) = NetworkCa::generate("test").expect("ca");
        assert!(matches!(
            ca.issue_node("two words"),
            Err(PkiError::BadSite(_))
        ));
        assert!(ca.issue_server(&["not a host!".into()]).is_err());
    }
}
