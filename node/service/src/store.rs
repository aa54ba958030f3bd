//! The store's layout as the service reads it: one Parquet file per table in the store
//! directory. `ern-ingest` writes the files (all together or not at all); the service
//! only opens them, so the layout is named here, once, for both.

use std::path::{Path, PathBuf};

/// The file of a table inside a store directory.
pub fn table_path(store: &Path, table: &str) -> PathBuf {
    store.join(format!("{table}.parquet"))
}
