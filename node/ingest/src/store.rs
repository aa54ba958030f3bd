//! The node store on disk: one Parquet file per table, replaced all together or not at all.
//!
//! A store directory also holds files that ingest must never touch (the audit log, keys,
//! configuration), so a new ingest cannot swap the whole directory. Instead it writes
//! every table into a staging directory inside the store, marks the staging complete,
//! and renames the tables into place. A crash before the mark leaves the old tables
//! (the staging is discarded on the next open); a crash after it is rolled forward on the
//! next open. Either way a reader sees only whole generations of the store.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

pub use ern_node::store::table_path;
use ern_node::store::{GENERATION_FILE, GenerationRecord};

use crate::IngestError;

const STAGING_PREFIX: &str = ".staging-";
const COMMIT_MARK: &str = "COMMITTED";
const LOCK_FILE: &str = ".ingest.lock";

/// Rows per Parquet row group. A row group is the unit a query scan can hand to one
/// thread, and the unit the writer holds in memory before it goes to the file: at this
/// size a million-patient table splits into eight, and writing reuses the same buffers.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Finishes or discards what an interrupted ingest left behind in `store`.
pub fn recover(store: &Path) -> Result<(), IngestError> {
    let entries = match fs::read_dir(store) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(IngestError::io(store, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| IngestError::io(store, e))?;
        let is_staging = entry
            .file_name()
            .to_string_lossy()
            .starts_with(STAGING_PREFIX);
        if !is_staging {
            continue;
        }
        let staging = entry.path();
        if staging.join(COMMIT_MARK).exists() {
            tracing::warn!(staging = %staging.display(), "rolling forward an interrupted ingest");
            move_tables_into_place(&staging, store)?;
        } else {
            tracing::warn!(staging = %staging.display(), "discarding an incomplete ingest");
        }
        fs::remove_dir_all(&staging).map_err(|e| IngestError::io(&staging, e))?;
    }
    Ok(())
}

/// Writes `tables` as the store's new generation, atomically as described above.
/// Files of the store that are not tables are left alone.
pub fn replace_tables(
    store: &Path,
    tables: &[(&'static str, RecordBatch)],
) -> Result<(), IngestError> {
    let staged = StagedGeneration::begin(store)?;
    std::thread::scope(|scope| {
        let staged = &staged;
        let handles: Vec<_> = tables
            .iter()
            .map(|(table, batch)| scope.spawn(move || staged.write_table(table, batch)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|handle| handle.join().unwrap_or_else(|_| Err(writer_panicked())))
    })?;
    staged.commit()
}

/// The error for a table writer thread that panicked.
pub(crate) fn writer_panicked() -> IngestError {
    IngestError::Write {
        table: "?",
        message: "writer thread panicked".into(),
    }
}

/// A new generation of a store's tables being written: the store is locked against other
/// writers, tables go to a staging directory (from several threads at once, as each is
/// ready), and [`commit`](Self::commit) moves them into place together. Dropped without a
/// commit, the staging directory is removed and the store keeps its old tables.
#[derive(Debug)]
pub struct StagedGeneration {
    store: PathBuf,
    staging: PathBuf,
    /// Held for the generation's lifetime; the lock is released when it is dropped.
    _lock: File,
    committed: bool,
}

/// Opens (or creates) the lock file without following a symbolic link and without
/// truncating: a link planted at `.ingest.lock` must not empty the file it points to.
fn open_lock(path: &Path) -> std::io::Result<File> {
    let mut options = fs::OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options.open(path)
}

impl StagedGeneration {
    /// Locks `store` (creating it if needed), finishes or discards what an interrupted
    /// ingest left, and creates an empty staging directory.
    pub fn begin(store: &Path) -> Result<Self, IngestError> {
        fs::create_dir_all(store).map_err(|e| IngestError::io(store, e))?;
        // One writer at a time: the lock is released when the file is closed, even on a crash.
        let lock_path = store.join(LOCK_FILE);
        let lock = open_lock(&lock_path).map_err(|e| IngestError::io(&lock_path, e))?;
        lock.try_lock().map_err(|_| IngestError::Busy {
            store: store.to_path_buf(),
        })?;
        recover(store)?;
        let staging = store.join(format!("{STAGING_PREFIX}{}", std::process::id()));
        fs::create_dir(&staging).map_err(|e| IngestError::io(&staging, e))?;
        Ok(StagedGeneration {
            store: store.to_path_buf(),
            staging,
            _lock: lock,
            committed: false,
        })
    }

    /// Writes one table into the staging directory.
    pub fn write_table(&self, table: &'static str, batch: &RecordBatch) -> Result<(), IngestError> {
        write_table(&table_path(&self.staging, table), table, batch)
    }

    /// Names the new generation, marks the staging complete and moves its tables into
    /// the store (the generation's record last).
    pub fn commit(mut self) -> Result<(), IngestError> {
        GenerationRecord::new()
            .write_into(&self.staging)
            .map_err(|e| IngestError::io(&self.staging.join(GENERATION_FILE), e))?;
        let mark = self.staging.join(COMMIT_MARK);
        File::create(&mark)
            .and_then(|f| f.sync_all())
            .map_err(|e| IngestError::io(&mark, e))?;
        sync_dir(&self.staging)?;
        // From the mark on, an interrupted commit is rolled forward, never discarded.
        self.committed = true;
        move_tables_into_place(&self.staging, &self.store)?;
        fs::remove_dir_all(&self.staging).map_err(|e| IngestError::io(&self.staging, e))?;
        sync_dir(&self.store)
    }
}

impl Drop for StagedGeneration {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Writes one table as a Parquet file and syncs it to disk.
///
/// Columns are zstd level 1, except `pid`: 64 hex digits of a keyed hash are random, so
/// no dictionary holds them and zstd can only squeeze the hex back towards the 32 bytes
/// of the hash, at about half of ingest's write time. `pid` pages are stored plain, with
/// no statistics.
pub fn write_table(
    path: &Path,
    table: &'static str,
    batch: &RecordBatch,
) -> Result<(), IngestError> {
    let write_error = |e: parquet::errors::ParquetError| IngestError::Write {
        table,
        message: e.to_string(),
    };
    let file = File::create(path).map_err(|e| IngestError::io(path, e))?;
    let level = ZstdLevel::try_new(1).map_err(write_error)?;
    let pid = ColumnPath::from("pid");
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_column_compression(pid.clone(), Compression::UNCOMPRESSED)
        .set_column_dictionary_enabled(pid.clone(), false)
        // A pid's min and max prune nothing (no query names a pid), and computing them
        // compares 64-byte strings twice per row.
        .set_column_statistics_enabled(pid, EnabledStatistics::None)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer =
        ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(write_error)?;
    writer.write(batch).map_err(write_error)?;
    let file = writer.into_inner().map_err(write_error)?;
    file.sync_all().map_err(|e| IngestError::io(path, e))
}

/// Moves the staged tables into the store, then the generation's record: a node that
/// reads the new record finds the new tables in place.
fn move_tables_into_place(staging: &Path, store: &Path) -> Result<(), IngestError> {
    for entry in fs::read_dir(staging).map_err(|e| IngestError::io(staging, e))? {
        let entry = entry.map_err(|e| IngestError::io(staging, e))?;
        let name = entry.file_name();
        if name == COMMIT_MARK || name == GENERATION_FILE {
            continue;
        }
        let target = store.join(&name);
        fs::rename(entry.path(), &target).map_err(|e| IngestError::io(&target, e))?;
    }
    let record = staging.join(GENERATION_FILE);
    if record.exists() {
        let target = store.join(GENERATION_FILE);
        fs::rename(&record, &target).map_err(|e| IngestError::io(&target, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), IngestError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| IngestError::io(dir, e))
}
