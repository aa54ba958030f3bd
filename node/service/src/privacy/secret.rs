//! The node's noise secret, and the seed it derives for every noise draw.
//!
//! Why this module exists: if a node drew fresh noise each time a question was asked, a
//! researcher could ask it a hundred times and average the noise away. So the noise of a
//! release is drawn from a random stream seeded by the question and the data it ran on
//! (DESIGN.md, "Repeats gain nothing"): the same question on the same data draws the same
//! noise, learns nothing new and is charged once; another question, or the same one on
//! refreshed data, draws noise independent of it. The seed is keyed by a secret the node
//! alone holds, because whoever can recompute the noise can subtract it.
//!
//! # Where the secret lives
//! A file of 64 lowercase hex characters and a newline, mode 0600, made by
//! `ern keygen noise` and named in node.toml as `[privacy] secret`. It is kept beside the
//! pseudonymisation key and never in the store (which is copied, backed up and read by
//! the ETL). [`NoiseSecret::load`] refuses a file that others may read, as ssh refuses
//! such a private key.
//!
//! Losing or replacing the secret changes only future noise: releases already made stay
//! as they were. But a question asked again afterwards draws new noise, an independent
//! second look at the same data, so it must then be charged to its study again rather
//! than treated as a repeat.
//!
//! # Seed derivation
//! `seed = HMAC-SHA256(secret, message)`, where `message` is four fields in this order,
//! each its UTF-8 bytes preceded by their length as 8 bytes big-endian:
//!
//! ```text
//! "ern-noise-v1" | query hash | store generation | purpose
//! ```
//!
//! The length prefixes make the encoding injective: no two different field lists give
//! the same message. The purpose names the stream within one release (a column, a
//! per-site release or a secure-aggregation share), so two noises are never the same
//! draw. The stream is `ChaCha20Rng::from_seed(seed)`. Both steps are pinned by tests: a
//! change would give every repeated question new noise.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::pseudonym::write_secret_file;

/// The domain tag, the first field of every seed's message.
pub const SEED_DOMAIN: &str = "ern-noise-v1";

/// Why a noise secret file cannot be created or used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file does not exist.
    #[error("{}: no noise secret there (make one with `ern keygen noise --out FILE`)", path.display())]
    Missing {
        /// The secret file.
        path: PathBuf,
    },
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The secret file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists already; a secret is never overwritten.
    #[error("{} exists already; a noise secret is never overwritten (move it away first)", path.display())]
    Exists {
        /// The secret file.
        path: PathBuf,
    },
    /// The file does not hold 64 lowercase hex characters.
    #[error("{} is not a noise secret: expected 64 lowercase hex characters and an optional newline", path.display())]
    Malformed {
        /// The secret file.
        path: PathBuf,
    },
    /// Others than its owner may read or write the file.
    #[error("{} has mode {mode:04o}: a noise secret must be readable by its owner only (chmod 600 it)", path.display())]
    TooOpen {
        /// The secret file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A node's noise secret: 32 bytes that key the seed of every noise draw.
pub struct NoiseSecret {
    key: hmac::Key,
}

impl std::fmt::Debug for NoiseSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NoiseSecret(<secret>)")
    }
}

impl NoiseSecret {
    /// A secret of 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        NoiseSecret {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Creates a secret file at `path`: 32 bytes from the system's secure random
    /// generator as 64 lowercase hex characters and a newline, mode 0600. Refuses to
    /// replace an existing file.
    pub fn generate(path: &Path) -> Result<Self, SecretError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SecretError::Random)?;
        let text = format!("{}\n", hex::encode(bytes));
        write_secret_file(path, text.as_bytes()).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SecretError::Exists {
                path: path.to_path_buf(),
            },
            _ => SecretError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        Ok(NoiseSecret::from_bytes(&bytes))
    }

    /// Loads a secret file: 64 lowercase hex characters and an optional newline. On
    /// unix, a file that its group or others may read or write is refused.
    pub fn load(path: &Path) -> Result<Self, SecretError> {
        let io = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => SecretError::Missing {
                path: path.to_path_buf(),
            },
            _ => SecretError::Io {
                path: path.to_path_buf(),
                source,
            },
        };
        let metadata = std::fs::metadata(path).map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = metadata.permissions().mode() & 0o7777;
            if mode & 0o077 != 0 {
                return Err(SecretError::TooOpen {
                    path: path.to_path_buf(),
                    mode,
                });
            }
        }
        #[cfg(not(unix))]
        let _ = metadata;
        let text = std::fs::read(path).map_err(io)?;
        let bytes =
            crate::pseudonym::parse_hex_key(&text).ok_or_else(|| SecretError::Malformed {
                path: path.to_path_buf(),
            })?;
        Ok(NoiseSecret::from_bytes(&bytes))
    }

    /// The seed of the noise stream for `purpose` in the release of the question with
    /// `query_hash` on the store generation `store_generation` (see the module docs for
    /// the exact message). Equal inputs give equal seeds; any other input an unrelated
    /// one.
    pub fn seed(&self, query_hash: &str, store_generation: &str, purpose: &str) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.key);
        for field in [SEED_DOMAIN, query_hash, store_generation, purpose] {
            context.update(&(field.len() as u64).to_be_bytes());
            context.update(field.as_bytes());
        }
        let mut seed = [0u8; 32];
        seed.copy_from_slice(context.sign().as_ref());
        seed
    }

    /// The noise stream of [`NoiseSecret::seed`]: ChaCha20 keyed by the seed.
    pub fn rng(&self, query_hash: &str, store_generation: &str, purpose: &str) -> ChaCha20Rng {
        ChaCha20Rng::from_seed(self.seed(query_hash, store_generation, purpose))
    }
}

#[cfg(test)]
mod tests {
    use rand::RngCore;

    use super::*;

    fn fixed() -> NoiseSecret {
        NoiseSecret::from_bytes(&[7u8; 32])
    }

    #[test]
    fn generated_secrets_load_and_are_never_overwritten() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("noise.key");
        let made = NoiseSecret::generate(&path).expect("generate");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        let loaded = NoiseSecret::load(&path).expect("load");
        assert_eq!(made.seed("q", "g", "p"), loaded.seed("q", "g", "p"));
        assert!(matches!(
            NoiseSecret::generate(&path),
            Err(SecretError::Exists { .. })
        ));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            text,
            "unchanged"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("noise.key");
        NoiseSecret::generate(&path).expect("generate");
        for mode in [0o644, 0o640, 0o606, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let error = NoiseSecret::load(&path).expect_err("refused");
            assert!(
                matches!(error, SecretError::TooOpen { mode: m, .. } if m == mode),
                "{mode:o}: {error}"
            );
            assert!(error.to_string().contains("chmod 600"), "{error}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
        assert!(NoiseSecret::load(&path).is_ok(), "owner read-only is fine");
    }

    #[test]
    fn missing_and_malformed_files_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(matches!(
            NoiseSecret::load(&dir.path().join("absent")),
            Err(SecretError::Missing { .. })
        ));
        for (name, text) in [
            ("short", "abcd\n".to_string()),
            ("upper", "A".repeat(64)),
            ("not-hex", "g".repeat(64)),
            ("two-lines", format!("{}\n\n", "a".repeat(64))),
            ("long", "a".repeat(66)),
        ] {
            let path = dir.path().join(name);
            write_secret_file(&path, text.as_bytes()).expect("write");
            assert!(
                matches!(NoiseSecret::load(&path), Err(SecretError::Malformed { .. })),
                "{name}"
            );
        }
        let path = dir.path().join("no-newline");
        write_secret_file(&path, "0f".repeat(32).as_bytes()).expect("write");
        assert!(NoiseSecret::load(&path).is_ok());
    }

    #[test]
    fn seeds_are_stable_and_separate_every_input() {
        let secret = fixed();
        let seed = secret.seed("hash-1", "gen-1", "per-site/__p0");
        assert_eq!(seed, secret.seed("hash-1", "gen-1", "per-site/__p0"));
        for other in [
            secret.seed("hash-2", "gen-1", "per-site/__p0"),
            secret.seed("hash-1", "gen-2", "per-site/__p0"),
            secret.seed("hash-1", "gen-1", "per-site/__p1"),
            secret.seed("hash-1", "gen-1", "secure-share/__p0"),
            NoiseSecret::from_bytes(&[8u8; 32]).seed("hash-1", "gen-1", "per-site/__p0"),
        ] {
            assert_ne!(seed, other);
        }
        // Shifting characters between fields gives another message.
        assert_ne!(secret.seed("ab", "c", "p"), secret.seed("a", "bc", "p"));
        assert_ne!(secret.seed("a", "", "bp"), secret.seed("a", "b", "p"));
    }

    #[test]
    fn the_seed_is_the_documented_hmac() {
        let mut message = Vec::new();
        for field in ["ern-noise-v1", "hash-1", "gen-1", "per-site/__p0"] {
            message.extend_from_slice(&(field.len() as u64).to_be_bytes());
            message.extend_from_slice(field.as_bytes());
        }
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[7u8; 32]);
        let expected = hmac::sign(&key, &message);
        assert_eq!(
            fixed().seed("hash-1", "gen-1", "per-site/__p0").as_slice(),
            expected.as_ref()
        );
    }

    #[test]
    fn the_seed_and_stream_are_pinned() {
        // Computed once; a change here gives every repeated question new noise.
        let secret = fixed();
        assert_eq!(
            hex::encode(secret.seed("hash-1", "gen-1", "per-site/__p0")),
            "ce0327f96df588ab6afd5dc76cd0056bbf2e410e25ff51f96f8e871200dec2e8"
        );
        let mut rng = secret.rng("hash-1", "gen-1", "per-site/__p0");
        let words: Vec<u64> = (0..3).map(|_| rng.next_u64()).collect();
        assert_eq!(
            words,
            [
                10925959295376983442,
                14670468516492207416,
                55564832478571560
            ]
        );
        let mut again = secret.rng("hash-1", "gen-1", "per-site/__p0");
        assert_eq!(again.next_u64(), words[0]);
    }

    #[test]
    fn debug_does_not_print_the_secret() {
        let printed = format!("{:?}", fixed());
        assert_eq!(printed, "NoiseSecret(<secret>)");
        assert!(!printed.contains("0707"));
    }
}
