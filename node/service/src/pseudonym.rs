//! Pseudonymisation: `pid` = lowercase hex of HMAC-SHA256(site key, local_id).
//!
//! The site key is the only secret that links a stored `pid` to a hospital's own patient
//! id. Without it nobody can map a pid back, nor test a guessed local id (data-model.md
//! section 1). The key file holds 64 lowercase hex characters and an optional newline.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

/// Length of a pid: 32 bytes of HMAC-SHA256 as hex.
pub const PID_LEN: usize = 64;

/// Errors from reading or creating a pseudonymisation key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file exists already; keys are never overwritten.
    #[error("{} exists already; a key is never overwritten (move it away first)", path.display())]
    Exists {
        /// The key file.
        path: PathBuf,
    },
    /// The file does not hold 64 lowercase hex characters.
    #[error("{} is not a pseudonymisation key: expected 64 lowercase hex characters and an optional newline", path.display())]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// A site's pseudonymisation key, ready to hash local ids.
pub struct Pseudonymiser {
    key: hmac::Key,
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pseudonymiser(<secret>)")
    }
}

impl Pseudonymiser {
    /// A pseudonymiser for 32 raw key bytes.
    pub fn new(key_bytes: &[u8; 32]) -> Self {
        Pseudonymiser {
            key: hmac::Key::new(hmac::HMAC_SHA256, key_bytes),
        }
    }

    /// Loads a key file: 64 lowercase hex characters and an optional newline.
    pub fn from_key_file(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read(path).map_err(|source| KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = parse_hex_key(&text).ok_or_else(|| KeyFileError::Malformed {
            path: path.to_path_buf(),
        })?;
        Ok(Pseudonymiser::new(&key))
    }

    /// Writes the pid of `local_id` into `out` as lowercase hex.
    pub fn pid_into(&self, local_id: &str, out: &mut [u8; PID_LEN]) {
        let tag = hmac::sign(&self.key, local_id.as_bytes());
        // A 32-byte tag always fits 64 hex characters.
        let _ = hex::encode_to_slice(tag.as_ref(), out);
    }

    /// The pid of `local_id`.
    pub fn pid(&self, local_id: &str) -> String {
        let mut out = [0u8; PID_LEN];
        self.pid_into(local_id, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Creates a new key file with 32 bytes from the system's secure random generator, as
/// 64 lowercase hex characters and a newline, readable by the owner only. Refuses to
/// overwrite an existing file.
pub fn generate_key_file(path: &Path) -> Result<(), KeyFileError> {
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| KeyFileError::Random)?;
    let text = format!("{}\n", hex::encode(key));
    write_secret_file(path, text.as_bytes()).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => KeyFileError::Exists {
            path: path.to_path_buf(),
        },
        _ => KeyFileError::Io {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// Creates `path` with mode 0600 (owner read and write only) and writes `bytes`.
/// Fails with `AlreadyExists` rather than replace a file.
pub fn write_secret_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The 32 bytes of a key file's text: 64 lowercase hex characters and an optional
/// newline (the format of the pseudonymisation key and the noise secret); `None` for
/// anything else.
pub(crate) fn parse_hex_key(text: &[u8]) -> Option<[u8; 32]> {
    let hex_part = text.strip_suffix(b"\n").unwrap_or(text);
    if hex_part.len() != 64
        || !hex_part
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut key).ok()?;
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_is_hmac_sha256_hex() {
        // RFC 4231 test case 2 uses a short key; here a 32-byte key checked against ring.
        let key = [7u8; 32];
        let p = Pseudonymiser::new(&key);
        let expected =
            hex::encode(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), b"GH-1").as_ref());
        assert_eq!(p.pid("GH-1"), expected);
        assert_eq!(p.pid("GH-1").len(), PID_LEN);
        assert_ne!(p.pid("GH-1"), p.pid("GH-2"));
    }

    #[test]
    fn key_file_round_trip_and_no_overwrite() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("site.key");
        generate_key_file(&path).expect("generate");
        assert!(Pseudonymiser::from_key_file(&path).is_ok());
        assert!(matches!(
            generate_key_file(&path),
            Err(KeyFileError::Exists { .. })
        ));
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

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, text) in [
            ("short", "abcd\n"),
            ("upper", &"A".repeat(64)),
            ("two-lines", &format!("{}\n\n", "a".repeat(64))),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            assert!(
                matches!(
                    Pseudonymiser::from_key_file(&path),
                    Err(KeyFileError::Malformed { .. })
                ),
                "{name}"
            );
        }
    }
}
