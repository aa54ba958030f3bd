//! `node.toml`: everything a hospital node trusts, and where its coordinator is.
//!
//! ```toml
//! site_id = "hospital-1"                 # this site's id, as enrolled at the coordinator
//! store = "store"                        # the Parquet store written by `ern ingest`
//! stewards = ["alice.pub", "bob.pub"]    # this site's steward public keys
//! k = 5                                  # minimum distinct patients per released group
//! memory_limit_mb = 1024                 # memory for one query
//! time_limit_seconds = 60                # time for one query
//! max_groups = 10000                     # most groups one query may release
//! coordinator = "http://127.0.0.1:50051" # where to dial out to
//! token_file = "node.token"              # this node's token (from `ern operator user add`)
//! ```
//!
//! Relative paths are relative to the file's directory. Only `site_id`, `store`,
//! `stewards`, `coordinator` and `token_file` are required; nothing the coordinator
//! sends can change any of these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::{MIN_K, NodePolicy};
use crate::steward_key::{StewardKeyError, StewardPublicKey};

/// Errors reading a node configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (for TOML errors, with line and column).
        message: String,
    },
    /// A steward key could not be loaded.
    #[error(transparent)]
    StewardKey(#[from] StewardKeyError),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeConfig {
    site_id: String,
    store: PathBuf,
    stewards: Vec<PathBuf>,
    #[serde(default = "default_k")]
    k: u32,
    #[serde(default = "default_memory")]
    memory_limit_mb: usize,
    #[serde(default = "default_time")]
    time_limit_seconds: u64,
    #[serde(default = "default_groups")]
    max_groups: usize,
    coordinator: String,
    token_file: PathBuf,
}

fn default_k() -> u32 {
    5
}
fn default_memory() -> usize {
    1024
}
fn default_time() -> u64 {
    60
}
fn default_groups() -> usize {
    10_000
}

/// A node's configuration, loaded and checked.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The store directory.
    pub store: PathBuf,
    /// The node's policy.
    pub policy: NodePolicy,
    /// The coordinator's URL.
    pub coordinator: String,
    /// The node's bearer token.
    pub token: String,
}

impl NodeConfig {
    /// Reads `path`, the steward keys and the token it names.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let read = |file: &Path| {
            std::fs::read_to_string(file).map_err(|source| NodeConfigError::Read {
                path: file.to_path_buf(),
                source,
            })
        };
        let invalid = |message: String| NodeConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawNodeConfig =
            toml::from_str(&read(path)?).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if raw.stewards.is_empty() {
            return Err(invalid("at least one steward public key is needed".into()));
        }
        if raw.k < MIN_K {
            return Err(invalid(format!("k must be at least {MIN_K}")));
        }
        if raw.time_limit_seconds == 0 || raw.memory_limit_mb == 0 || raw.max_groups == 0 {
            return Err(invalid("limits must be positive".into()));
        }
        let stewards = raw
            .stewards
            .iter()
            .map(|p| StewardPublicKey::load(&base.join(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let token = read(&base.join(&raw.token_file))?.trim().to_string();
        if token.is_empty() {
            return Err(invalid(format!(
                "the token file {} is empty",
                raw.token_file.display()
            )));
        }
        let mut policy = NodePolicy::new(&raw.site_id, stewards);
        policy.k = raw.k;
        policy.memory_limit = raw.memory_limit_mb << 20;
        policy.time_limit = Duration::from_secs(raw.time_limit_seconds);
        policy.max_groups = raw.max_groups;
        Ok(NodeConfig {
            store: base.join(raw.store),
            policy,
            coordinator: raw.coordinator,
            token,
        })
    }
}
