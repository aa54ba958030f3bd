//! Steward signing keys: Ed25519 key pairs whose signatures approve a query for one site.
//!
//! The private key stays on the steward's machine (`PREFIX.key`, PKCS#8 in PEM, mode
//! 0600); the node's configuration lists the public key (`PREFIX.pub`, 64 hex characters).
//! A short key id, the first 16 hex characters of SHA-256 of the public key, names a key
//! in logs and audit entries without repeating it.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ring::digest;
use ring::rand::SystemRandom;
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
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| StewardKeyError::Random)?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| StewardKeyError::Random)?;
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
}
