//! The store's layout as the service reads it: one Parquet file per table in the store
//! directory, and the generation file ingest writes with them. `ern-ingest` writes the
//! files (all together or not at all); the service only opens them, so the layout is
//! named here, once, for both.
//!
//! Nothing the node itself writes (its audit log, its record of executed approvals,
//! its keys) lives in the store: a store is replaced by every ingest, may be deleted and
//! rebuilt, and must take nothing else with it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file, beside the tables, that names the store's generation: written by ingest
/// into the new generation before it is committed and moved into place after the tables.
pub const GENERATION_FILE: &str = "generation.json";

/// The file of a table inside a store directory.
pub fn table_path(store: &Path, table: &str) -> PathBuf {
    store.join(format!("{table}.parquet"))
}

/// What ingest records about the generation it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationRecord {
    /// A random id (32 hex characters), new for every ingest.
    pub id: String,
    /// When the generation was written, in seconds since the Unix epoch.
    pub written_at: u64,
}

impl GenerationRecord {
    /// A new generation's record: a fresh random id, written now.
    pub fn new() -> Self {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut id = [0u8; 16];
        let written_at = crate::engine::now_seconds();
        if SystemRandom::new().fill(&mut id).is_err() {
            // Without a random source the clock and process still make it unique here.
            id[..8].copy_from_slice(&written_at.to_be_bytes());
            id[8..12].copy_from_slice(&std::process::id().to_be_bytes());
        }
        GenerationRecord {
            id: hex::encode(id),
            written_at,
        }
    }

    /// Writes the record into `dir` (a new generation's staging directory) and syncs it.
    pub fn write_into(&self, dir: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let mut file = std::fs::File::create(dir.join(GENERATION_FILE))?;
        file.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        file.sync_all()
    }

    /// Reads the record of the store in `store_dir`: `None` for a store written before
    /// ingest recorded generations (or by hand), or whose record does not parse.
    pub fn read(store_dir: &Path) -> Option<Self> {
        let text = std::fs::read(store_dir.join(GENERATION_FILE)).ok()?;
        let record: GenerationRecord = serde_json::from_slice(&text).ok()?;
        let well_formed = record.id.len() == 32 && record.id.bytes().all(|b| b.is_ascii_hexdigit());
        well_formed.then_some(record)
    }
}

impl Default for GenerationRecord {
    fn default() -> Self {
        Self::new()
    }
}
