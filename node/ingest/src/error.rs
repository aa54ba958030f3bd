//! Ingest errors: what went wrong, where, and which rule, without ever quoting a cell.
//!
//! Row-level problems are collected (all of them, up to a cap per file) so a data manager
//! fixes an export in one round; anything else stops ingest at once. Either way nothing
//! is written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::export::ExportFile;

/// How many row errors are kept per file; the rest are only counted.
pub const MAX_ERRORS_PER_FILE: usize = 1000;

/// How many row errors an [`IngestError::InvalidExport`] message lists.
pub const MAX_ERRORS_SHOWN: usize = 50;

/// One broken rule at one place in an export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    /// File name, e.g. `patient.csv`.
    pub file: &'static str,
    /// The file's own line number (header = line 1).
    pub line: u64,
    /// The column, when the rule concerns one cell or header name.
    pub column: Option<String>,
    /// The rule broken, in words; never the cell's value.
    pub rule: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.column {
            Some(column) => write!(
                f,
                "{}, line {}, column {}: {}",
                self.file, self.line, column, self.rule
            ),
            None => write!(f, "{}, line {}: {}", self.file, self.line, self.rule),
        }
    }
}

/// Collects row errors per file, keeping at most [`MAX_ERRORS_PER_FILE`] of each.
#[derive(Debug, Default)]
pub struct RowErrors {
    kept: BTreeMap<ExportFile, Vec<RowError>>,
    counts: BTreeMap<ExportFile, usize>,
}

impl RowErrors {
    /// Records a broken rule.
    pub fn push_row(&mut self, file: ExportFile, line: u64, column: Option<String>, rule: String) {
        let count = self.counts.entry(file).or_default();
        *count += 1;
        if *count <= MAX_ERRORS_PER_FILE {
            let error = RowError {
                file: file.file_name(),
                line,
                column,
                rule,
            };
            self.kept.entry(file).or_default().push(error);
        }
    }

    /// Records a broken cell rule.
    pub fn push_cell(&mut self, file: ExportFile, line: u64, column: &str, rule: impl ToString) {
        self.push_row(file, line, Some(column.to_string()), rule.to_string());
    }

    /// Errors counted for one file.
    pub fn count_for(&self, file: ExportFile) -> usize {
        self.counts.get(&file).copied().unwrap_or(0)
    }

    /// Errors counted in all.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Moves another collector's errors into this one.
    pub fn absorb(&mut self, other: RowErrors) {
        for (file, errors) in other.kept {
            let kept = self.kept.entry(file).or_default();
            let room = MAX_ERRORS_PER_FILE.saturating_sub(kept.len());
            kept.extend(errors.into_iter().take(room));
        }
        for (file, count) in other.counts {
            *self.counts.entry(file).or_default() += count;
        }
    }

    /// `Err(InvalidExport)` when any rule was broken.
    pub fn into_result(self) -> Result<(), IngestError> {
        let total = self.total();
        if total == 0 {
            return Ok(());
        }
        let mut errors: Vec<RowError> = self.kept.into_values().flatten().collect();
        // File order, then line; a line's errors keep the order they were found in.
        errors.sort_by_key(|e| {
            (
                ExportFile::ALL.iter().position(|f| f.file_name() == e.file),
                e.line,
            )
        });
        Err(IngestError::InvalidExport { errors, total })
    }
}

/// Why an ingest failed. In every case the store was left as it was.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Rows broke rules of data-model.md section 1.
    #[error("{}", invalid_export_message(errors, *total))]
    InvalidExport {
        /// The errors kept (up to a cap per file), in file and line order.
        errors: Vec<RowError>,
        /// How many errors were found in all.
        total: usize,
    },
    /// The export directory has no `patient.csv`.
    #[error("{} has no patient.csv; a site export needs one", dir.display())]
    MissingPatientFile {
        /// The export directory.
        dir: PathBuf,
    },
    /// A file could not be parsed as CSV at all.
    #[error("{} could not be parsed as CSV: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An export file is not a regular file (a FIFO, a device, a directory): reading it
    /// could block forever or read something that is not an export.
    #[error("{} is not a regular file; an export holds plain CSV files", path.display())]
    NotARegularFile {
        /// The file.
        path: PathBuf,
    },
    /// Another ingest is writing the same store.
    #[error("another ingest is writing {} right now; try again when it has finished", store.display())]
    Busy {
        /// The store directory.
        store: PathBuf,
    },
    /// Writing a Parquet table failed.
    #[error("writing {table}: {message}")]
    Write {
        /// The store table.
        table: &'static str,
        /// What went wrong.
        message: String,
    },
}

impl IngestError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn invalid_export_message(errors: &[RowError], total: usize) -> String {
    let mut message = format!(
        "the export breaks {total} rule{} of the interchange format; nothing was written:",
        if total == 1 { "" } else { "s" }
    );
    for error in errors.iter().take(MAX_ERRORS_SHOWN) {
        message.push_str("\n  ");
        message.push_str(&error.to_string());
    }
    let shown = errors.len().min(MAX_ERRORS_SHOWN);
    if total > shown {
        message.push_str(&format!("\n  … and {} more", total - shown));
    }
    message
}
