//! `coordinator.toml`: where the coordinator listens, where its state lives, its timing.
//!
//! ```toml
//! listen = "127.0.0.1:50051"      # address:port to serve gRPC on
//! database = "coordinator.db"     # SQLite file; relative to this file's directory
//! site_timeout_seconds = 300      # a dispatched question may take this long at a site
//! default_deadline_hours = 168    # how long a question waits for approvals by default
//! heartbeat_seconds = 10          # nodes send a heartbeat this often
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::Timing;

/// Errors reading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    database: PathBuf,
    #[serde(default = "default_site_timeout")]
    site_timeout_seconds: u64,
    #[serde(default = "default_deadline_hours")]
    default_deadline_hours: u64,
    #[serde(default = "default_heartbeat")]
    heartbeat_seconds: u64,
}

fn default_site_timeout() -> u64 {
    300
}
fn default_deadline_hours() -> u64 {
    168
}
fn default_heartbeat() -> u64 {
    10
}

/// A coordinator's configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// Lifecycle timing.
    pub timing: Timing,
}

impl CoordinatorConfig {
    /// Reads `path`; relative paths inside are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        if raw.site_timeout_seconds == 0
            || raw.heartbeat_seconds == 0
            || raw.default_deadline_hours == 0
        {
            return Err(invalid(
                "timeouts, deadlines and heartbeats must be positive",
            ));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        Ok(CoordinatorConfig {
            listen: raw.listen,
            database: base.join(raw.database),
            timing: Timing {
                site_timeout: Duration::from_secs(raw.site_timeout_seconds),
                default_deadline: Duration::from_secs(raw.default_deadline_hours * 3600),
                heartbeat: Duration::from_secs(raw.heartbeat_seconds),
            },
        })
    }
}
