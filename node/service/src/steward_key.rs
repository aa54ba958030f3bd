//! Steward signing keys: Ed25519 key pairs whose signatures approve a query for one site.
//!
//! The private key stays on the steward's machine (`PREFIX.key`, PKCS#8 in PEM, mode
//! 0600); the node's configuration lists the public key (`PREFIX.pub`, 64 hex characters).
//! A short key id, the first 16 hex characters of SHA-256 of the public key, names a key
//! in logs and audit entries without repeating it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::pseudonym::write_secret_file;

const PEM_LABEL_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_LABEL_END: &str = "-----END PRIVATE KEY-----";

/// Errors from creating or loading steward keys.
#[derive(Debug, thiserror::Error)]
pub enum StewardKeyError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file exists already; keys are never overwritten.
    #[error("{} exists already; a key is never overwritten (move it away first)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// The file is not a key of the expected kind.
    #[error("{} is not an Ed25519 {kind}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// "private key (PKCS#8 PEM)" or "public key (64 hex characters)".
        kind: &'static str,
    },
    /// Key generation failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A steward's public key, as listed in a node's configuration.
#[derive(Clone, PartialEq, Eq)]
pub struct StewardPublicKey {
    bytes: [u8; 32],
}

impl std::fmt::Debug for StewardPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StewardPublicKey({})", self.key_id())
    }
}

impl StewardPublicKey {
    /// Parses 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).ok()?;
        Some(StewardPublicKey { bytes })
    }

    /// Loads a `.pub` file.
    pub fn load(path: &Path) -> Result<Self, StewardKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| StewardKeyError::Io {
            path: path.into(),
            source,
        })?;
        Self::from_hex(&text).ok_or_else(|| StewardKeyError::Malformed {
            path: path.into(),
            kind: "public key (64 hex characters)",
        })
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.bytes)
    }

    /// The short key id: first 16 hex characters of SHA-256 of the key bytes.
    pub fn key_id(&self) -> String {
        let hash = digest::digest(&digest::SHA256, &self.bytes);
        hex::encode(&hash.as_ref()[..8])
    }

    /// True when `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.bytes)
            .verify(message, signature)
            .is_ok()
    }
}

/// A steward's private signing key.
pub struct StewardSigningKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for StewardSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StewardSigningKey({})", self.public_key().key_id())
    }
}

impl StewardSigningKey {
    /// Loads a PKCS#8 PEM `.key` file.
    pub fn load(path: &Path) -> Result<Self, StewardKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| StewardKeyError::Io {
            path: path.into(),
            source,
        })?;
        let malformed = || StewardKeyError::Malformed {
            path: path.into(),
            kind: "private key (PKCS#8 PEM)",
        };
        let body: String = text
            .trim()
            .strip_prefix(PEM_LABEL_BEGIN)
            .and_then(|rest| rest.strip_suffix(PEM_LABEL_END))
            .ok_or_else(malformed)?
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| malformed())?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| malformed())?;
        Ok(StewardSigningKey { pair })
    }

    /// The matching public key.
    pub fn public_key(&self) -> StewardPublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        StewardPublicKey { bytes }
    }

    /// Signs `message` (Ed25519).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }
}

/// Creates `PREFIX.key` (mode 0600) and `PREFIX.pub`; returns the public key.
/// Refuses to overwrite either file.
pub fn generate_steward_key(prefix: &Path) -> Result<StewardPublicKey, StewardKeyError> {
    let key_path = with_suffix(prefix, "key");
    let pub_path = with_suffix(prefix, "pub");
    for path in [&key_path, &pub_path] {
        if path.exists() {
            return Err(StewardKeyError::Exists { path: path.clone() });
        }
    }
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| StewardKeyError::Random)?;
    let pkcs8 = pkcs8_v1(&seed);
    let pair =
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|_| StewardKeyError::Random)?;
    let public = StewardSigningKey { pair }.public_key();
    let io = |path: &Path, source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AlreadyExists => StewardKeyError::Exists { path: path.into() },
        _ => StewardKeyError::Io {
            path: path.into(),
            source,
        },
    };
    write_secret_file(&key_path, pem(pkcs8.as_ref()).as_bytes()).map_err(|e| io(&key_path, e))?;
    std::fs::write(&pub_path, format!("{}\n", public.to_hex())).map_err(|e| io(&pub_path, e))?;
    Ok(public)
}

/// The DER of an Ed25519 private key as PKCS#8 v1 (RFC 8410, section 7): SEQUENCE {
/// version 0, AlgorithmIdentifier { id-Ed25519 (1.3.101.112) }, OCTET STRING { OCTET
/// STRING seed } }, the form OpenSSL and Python's `cryptography` read. (ring writes v2,
/// with the public key attached, which they do not; keys written so before still load.)
pub fn pkcs8_v1(seed: &[u8; 32]) -> Vec<u8> {
    const PREFIX: [u8; 16] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(seed);
    der
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

fn pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = String::from(PEM_LABEL_BEGIN);
    for chunk in body.as_bytes().chunks(64) {
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(chunk));
    }
    text.push('\n');
    text.push_str(PEM_LABEL_END);
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_signs_and_verifies() {
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = dir.path().join("alice");
        let public = generate_steward_key(&prefix).expect("generate");
        let signer = StewardSigningKey::load(&dir.path().join("alice.key")).expect("load key");
        let loaded = StewardPublicKey::load(&dir.path().join("alice.pub")).expect("load pub");
        assert_eq!(loaded, public);
        assert_eq!(signer.public_key(), public);
        let signature = signer.sign(b"statement");
        assert!(public.verifies(b"statement", &signature));
        assert!(!public.verifies(b"statemenT", &signature));
        assert_eq!(public.key_id().len(), 16);
        assert!(matches!(
            generate_steward_key(&prefix),
            Err(StewardKeyError::Exists { .. })
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("alice.key"))
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// Issue 18: a steward key is PKCS#8 v1 (RFC 8410), which OpenSSL reads, and a key
    /// written before as ring's v2 still loads.
    #[test]
    fn steward_keys_are_pkcs8_v1_that_openssl_reads_and_old_v2_keys_still_load() {
        let dir = tempfile::tempdir().expect("temp dir");
        let prefix = dir.path().join("alice");
        let public = generate_steward_key(&prefix).expect("generate");
        let key = dir.path().join("alice.key");
        let text = std::fs::read_to_string(&key).expect("key");
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .expect("base64");
        assert_eq!(der.len(), 48, "a v1 document: prefix and seed only");
        assert_eq!(&der[..16], &pkcs8_v1(&[0; 32])[..16]);

        let v2 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("v2");
        let old = dir.path().join("old.key");
        std::fs::write(&old, pem(v2.as_ref())).expect("write");
        StewardSigningKey::load(&old).expect("an old v2 key loads");

        match std::process::Command::new("openssl")
            .args(["pkey", "-in"])
            .arg(&key)
            .args(["-pubout", "-outform", "DER"])
            .output()
        {
            Ok(out) => {
                assert!(
                    out.status.success(),
                    "openssl pkey: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // SubjectPublicKeyInfo: 12 bytes of header, then the 32-byte key.
                assert_eq!(
                    &out.stdout[out.stdout.len() - 32..],
                    public.bytes.as_slice()
                );
            }
            Err(_) => eprintln!("openssl is not installed here: the OpenSSL check is skipped"),
        }
    }
}
