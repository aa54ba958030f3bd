//! Site identity keys and the roster: who may take part in a secure-aggregation round.
//!
//! Masks only protect a hospital if it knows whom it shares them with; otherwise the
//! coordinator could stand in for every peer and unmask anyone. So every site has a
//! long-term Ed25519 identity key (`DIR/site.key`, PKCS#8 in PEM, mode 0600; its public
//! half in `DIR/site.pub`, 64 hex characters), and every node's own configuration pins the
//! identity public keys of its peers: the [`Roster`]. A round-1 statement counts only if it
//! is signed by the key the roster lists for its site.
//!
//! The files have exactly the format of steward keys, so this module reuses
//! [`crate::steward_key`] for generating, reading and checking them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::steward_key::{
    StewardKeyError, StewardPublicKey, StewardSigningKey, generate_steward_key,
};

/// The file stem of a site's identity key pair inside its key directory.
const KEY_STEM: &str = "site";

/// Errors from creating or loading site identity keys, or from building a roster.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file exists already; an identity key is never overwritten.
    #[error(
        "{} exists already; a site identity key is never overwritten (move it away first)",
        path.display()
    )]
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
    /// A roster names the same site twice.
    #[error("the roster lists site {site} twice")]
    DuplicateSite {
        /// The site.
        site: String,
    },
    /// Two sites of a roster have the same identity key.
    #[error(
        "the roster lists the same identity key for sites {first} and {second}: one hospital may take part once"
    )]
    SharedKey {
        /// The site listed first.
        first: String,
        /// The other.
        second: String,
    },
}

impl From<StewardKeyError> for IdentityError {
    fn from(error: StewardKeyError) -> Self {
        match error {
            StewardKeyError::Io { path, source } => IdentityError::Io { path, source },
            StewardKeyError::Exists { path } => IdentityError::Exists { path },
            StewardKeyError::Malformed { path, kind } => IdentityError::Malformed { path, kind },
            StewardKeyError::Random => IdentityError::Random,
        }
    }
}

/// A site's identity public key, as pinned in its peers' rosters.
#[derive(Clone, PartialEq, Eq)]
pub struct SitePublicKey(StewardPublicKey);

impl std::fmt::Debug for SitePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SitePublicKey({})", self.key_id())
    }
}

impl SitePublicKey {
    /// Parses 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        StewardPublicKey::from_hex(text).map(SitePublicKey)
    }

    /// Loads a `.pub` file.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        Ok(SitePublicKey(StewardPublicKey::load(path)?))
    }

    /// The key as 64 lowercase hex characters.
    pub fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    /// The short key id: first 16 hex characters of SHA-256 of the key bytes.
    pub fn key_id(&self) -> String {
        self.0.key_id()
    }

    /// True when `signature` is this key's Ed25519 signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.0.verifies(message, signature)
    }
}

/// A site's long-term identity signing key; it signs the site's round-1 statements.
pub struct SiteIdentity {
    key: StewardSigningKey,
}

impl std::fmt::Debug for SiteIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SiteIdentity({})", self.public_key().key_id())
    }
}

impl SiteIdentity {
    /// Creates `DIR` if needed, then `DIR/site.key` (mode 0600) and `DIR/site.pub`;
    /// returns the public key. Refuses to overwrite either file.
    pub fn generate(dir: &Path) -> Result<SitePublicKey, IdentityError> {
        std::fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(SitePublicKey(generate_steward_key(&dir.join(KEY_STEM))?))
    }

    /// The private key file [`SiteIdentity::generate`] writes in `dir`.
    pub fn key_path(dir: &Path) -> PathBuf {
        dir.join(format!("{KEY_STEM}.key"))
    }

    /// The public key file [`SiteIdentity::generate`] writes in `dir`.
    pub fn public_key_path(dir: &Path) -> PathBuf {
        dir.join(format!("{KEY_STEM}.pub"))
    }

    /// Loads a PKCS#8 PEM private key file (`site.key`).
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        Ok(SiteIdentity {
            key: StewardSigningKey::load(path)?,
        })
    }

    /// The matching public key.
    pub fn public_key(&self) -> SitePublicKey {
        SitePublicKey(self.key.public_key())
    }

    /// Signs `message` (Ed25519).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.key.sign(message)
    }
}

/// The identity public keys of the sites a node will share masks with, from the node's
/// own configuration and nothing else (the coordinator cannot add or swap a site). It
/// lists the node's own site too, since the node checks its own statement as relayed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roster {
    keys: BTreeMap<String, SitePublicKey>,
}

impl Roster {
    /// Builds a roster from (site id, identity key) pairs; a site listed twice is an error.
    pub fn new(
        entries: impl IntoIterator<Item = (String, SitePublicKey)>,
    ) -> Result<Self, IdentityError> {
        let mut keys: BTreeMap<String, SitePublicKey> = BTreeMap::new();
        for (site, key) in entries {
            if keys.contains_key(&site) {
                return Err(IdentityError::DuplicateSite { site });
            }
            // One hospital under two ids would make up a round's minimum on its own
            // (red team: with the coordinator, it recovered a peer's whole vector).
            if let Some((other, _)) = keys.iter().find(|(_, known)| **known == key) {
                return Err(IdentityError::SharedKey {
                    first: other.clone(),
                    second: site,
                });
            }
            keys.insert(site, key);
        }
        Ok(Roster { keys })
    }

    /// The identity key pinned for `site`, if the roster lists it.
    pub fn get(&self, site: &str) -> Option<&SitePublicKey> {
        self.keys.get(site)
    }

    /// The listed sites with their keys, in site order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SitePublicKey)> {
        self.keys.iter().map(|(site, key)| (site.as_str(), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_load_sign_verify() {
        let dir = tempfile::tempdir().expect("temp dir");
        let public = SiteIdentity::generate(dir.path()).expect("generate");
        let identity = SiteIdentity::load(&SiteIdentity::key_path(dir.path())).expect("load");
        let loaded =
            SitePublicKey::load(&SiteIdentity::public_key_path(dir.path())).expect("load pub");
        assert_eq!(loaded, public);
        assert_eq!(identity.public_key(), public);
        assert_eq!(
            SitePublicKey::from_hex(&public.to_hex()),
            Some(public.clone())
        );
        assert_eq!(public.key_id().len(), 16);

        let signature = identity.sign(b"round-1");
        assert!(public.verifies(b"round-1", &signature));
        assert!(!public.verifies(b"round-2", &signature));
        let other_dir = tempfile::tempdir().expect("temp dir");
        let other = SiteIdentity::generate(other_dir.path()).expect("generate other");
        assert!(!other.verifies(b"round-1", &signature));
    }

    #[test]
    fn generate_refuses_to_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = SiteIdentity::generate(dir.path()).expect("generate");
        let error = SiteIdentity::generate(dir.path()).expect_err("second generate");
        assert!(matches!(error, IdentityError::Exists { .. }), "{error}");
        assert!(error.to_string().contains("site.key"), "{error}");
        let still = SitePublicKey::load(&SiteIdentity::public_key_path(dir.path())).expect("pub");
        assert_eq!(still, first);
    }

    #[cfg(unix)]
    #[test]
    fn private_key_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        SiteIdentity::generate(dir.path()).expect("generate");
        let mode = std::fs::metadata(SiteIdentity::key_path(dir.path()))
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn malformed_files_are_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("site.pub");
        std::fs::write(&path, "not hex").expect("write");
        let error = SitePublicKey::load(&path).expect_err("malformed");
        assert!(matches!(error, IdentityError::Malformed { .. }));
        assert!(error.to_string().contains("site.pub"), "{error}");
        let missing = SiteIdentity::load(&dir.path().join("site.key")).expect_err("missing");
        assert!(matches!(missing, IdentityError::Io { .. }));
        assert!(missing.to_string().contains("site.key"), "{missing}");
    }

    #[test]
    fn roster_refuses_a_site_twice() {
        let key = SitePublicKey::from_hex(&"ab".repeat(32)).expect("hex");
        let other = SitePublicKey::from_hex(&"cd".repeat(32)).expect("hex");
        let roster = Roster::new([
            ("a".to_string(), key.clone()),
            ("b".to_string(), other.clone()),
        ])
        .expect("roster");
        assert_eq!(roster.get("a"), Some(&key));
        assert_eq!(roster.get("c"), None);
        let error = Roster::new([("a".to_string(), key.clone()), ("a".to_string(), other)])
            .expect_err("duplicate");
        assert!(matches!(error, IdentityError::DuplicateSite { site } if site == "a"));
        // One hospital under two ids is refused too.
        let error = Roster::new([("a".to_string(), key.clone()), ("b".to_string(), key)])
            .expect_err("shared key");
        assert!(
            matches!(&error, IdentityError::SharedKey { first, second } if first == "a" && second == "b"),
            "{error}"
        );
    }
}
