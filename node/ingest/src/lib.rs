//! The ETL of a hospital node: `ern ingest`, a site export in, a pseudonymised Parquet
//! store out, or nothing at all.
//!
//! The steps, in order: read every file (structure, then cells), check every rule of
//! data-model.md section 1 and collect all errors, and only when there are none,
//! pseudonymise, apply consent, coarsen and derive, and replace the store's tables in one
//! atomic step.
//!
//! # Trust boundary
//! This crate sees identifiable data: the hospital's export with its local patient ids.
//! The local ids exist only here, between reading the export and hashing them under the
//! site key (`ern_node::pseudonym`); what leaves is the store, which holds pids, birth year
//! and month, and no patient who did not consent to reuse. It runs offline, on the
//! hospital's side, and opens no connection. The service (`ern-node`) never links it, nor
//! polars.
//!
//! # Layout
//! - [`export`]: the interchange format: files, columns, value parsers.
//! - `read`, `shape`: the export's files parsed (polars) and checked for structure.
//! - `validate`: every cell and cross-file rule, all errors collected.
//! - `transform`: pseudonymise, apply consent, coarsen, derive: the store's batches.
//! - [`store`]: writing the store: staging, the commit mark, recovery, the lock.
//! - [`progress`]: progress reporting for long work (ingest, synth).
//! - [`threads`]: scoped worker threads over independent files.

pub mod export;
pub mod progress;
pub mod store;
pub mod threads;

mod error;
mod read;
mod shape;
mod transform;
mod validate;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

pub use error::{IngestError, MAX_ERRORS_PER_FILE, MAX_ERRORS_SHOWN, RowError, RowErrors};
use read::{RawFile, read_export_file};

use crate::export::ExportFile;
use crate::progress::Progress;
use crate::threads::join;
use ern_node::pseudonym::Pseudonymiser;

/// What one ingest read, left out and wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestReport {
    /// Patients in patient.csv.
    pub patients_read: usize,
    /// Patients left out: no consent to reuse, or opted out.
    pub patients_left_out: usize,
    /// Per table: rows read from the export, rows written to the store.
    pub tables: Vec<TableCounts>,
    /// Bytes of CSV read.
    pub bytes_read: u64,
    /// Wall-clock time of the whole ingest.
    pub elapsed: Duration,
    /// Wall-clock time of each stage: read, check, then pseudonymise and write (which
    /// overlap: each table is written while the next are built).
    pub stages: Vec<(&'static str, Duration)>,
}

/// Rows of one table through ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCounts {
    /// Store table name.
    pub table: &'static str,
    /// Rows in the export file (0 when absent).
    pub rows_read: usize,
    /// Rows written to the store.
    pub rows_written: usize,
}

/// A store table's name and the work that builds it.
type TableBuilder<'a> = (
    &'static str,
    Box<dyn FnOnce() -> Result<RecordBatch, arrow::error::ArrowError> + Send + 'a>,
);

/// A function that turns an Arrow error while building `table` into an ingest error.
fn write_error(table: &'static str) -> impl Fn(arrow::error::ArrowError) -> IngestError {
    move |e| IngestError::Write {
        table,
        message: e.to_string(),
    }
}

/// Ingests the export in `input` into the store `out`, pseudonymising with `key`.
///
/// On any error nothing is written and an existing store is left byte-identical.
pub fn ingest(
    input: &Path,
    key: &Pseudonymiser,
    out: &Path,
    progress: &dyn Progress,
) -> Result<IngestReport, IngestError> {
    let started = Instant::now();
    if !input.is_dir() {
        return Err(IngestError::io(
            input,
            std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
        ));
    }
    let mut stages = Vec::with_capacity(4);
    let mut stage_started = Instant::now();
    let mut lap = |name: &'static str, stages: &mut Vec<(&'static str, Duration)>| {
        stages.push((name, stage_started.elapsed()));
        stage_started = Instant::now();
    };
    progress.stage("reading export", ExportFile::ALL.len() as u64);
    let mut errors = RowErrors::default();
    // Each file's structural scan is single-threaded: scan them side by side.
    let read: Vec<(Result<Option<RawFile>, IngestError>, RowErrors)> =
        std::thread::scope(|scope| {
            let handles: Vec<_> = ExportFile::ALL
                .iter()
                .map(|&file| {
                    scope.spawn(move || {
                        let mut file_errors = RowErrors::default();
                        let raw = read_export_file(input, file, &mut file_errors);
                        (raw, file_errors)
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
    let mut raw_files = Vec::with_capacity(ExportFile::ALL.len());
    for ((raw, file_errors), file) in read.into_iter().zip(ExportFile::ALL) {
        errors.absorb(file_errors);
        raw_files.push(raw?.unwrap_or_else(|| RawFile::absent(file)));
        progress.advance(1);
    }
    let [patients_raw, diagnosis_raw, genetic_raw, phenotype_raw] =
        <[RawFile; 4]>::try_from(raw_files).map_err(|_| IngestError::Parse {
            path: input.to_path_buf(),
            message: "export files".into(),
        })?;

    lap("read", &mut stages);
    let total_rows = [&patients_raw, &diagnosis_raw, &genetic_raw, &phenotype_raw]
        .iter()
        .map(|r| r.rows() as u64)
        .sum();
    progress.stage("checking rows", total_rows);
    let dependents = [&diagnosis_raw, &genetic_raw, &phenotype_raw];
    // Cell formats need no other file: check all files while patient.csv is indexed.
    let index = std::thread::scope(|scope| {
        let patient_cells = scope.spawn(|| {
            let mut cell_errors = RowErrors::default();
            validate::check_cells(&patients_raw, &mut cell_errors);
            validate::check_patient_rules(&patients_raw, &mut cell_errors);
            cell_errors
        });
        let dependent_cells: Vec<_> = dependents
            .iter()
            .map(|raw| scope.spawn(move || validate::check_dependent_cells(raw)))
            .collect();
        let index = validate::PatientIndex::build(&patients_raw, &mut errors);
        errors.absorb(join(patient_cells));
        for cells in dependent_cells {
            errors.absorb(join(cells));
        }
        index
    });
    progress.advance(patients_raw.rows() as u64);
    let index_ref = &index;
    let checked: Vec<(RowErrors, Vec<Option<u32>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = dependents
            .iter()
            .map(|raw| {
                scope.spawn(move || {
                    let mut reference_errors = RowErrors::default();
                    let rows = validate::resolve_patients(raw, index_ref, &mut reference_errors);
                    (reference_errors, rows)
                })
            })
            .collect();
        handles.into_iter().map(join).collect()
    });
    let mut resolved = Vec::with_capacity(checked.len());
    for ((reference_errors, rows), raw) in checked.into_iter().zip(dependents) {
        errors.absorb(reference_errors);
        progress.advance(raw.rows() as u64);
        resolved.push(rows);
    }
    errors.into_result()?;
    lap("check", &mut stages);

    // Each table is written as soon as it is built, while the others are still being built.
    progress.stage("pseudonymising and writing", 4);
    let staged = store::StagedGeneration::begin(out)?;
    let patients = transform::stored_patients(&patients_raw, &index, key);
    let builders: [TableBuilder<'_>; 4] = [
        (
            "patient",
            Box::new(|| transform::patient_table(&patients_raw, &index, &patients)),
        ),
        (
            "diagnosis",
            Box::new(|| transform::diagnosis_table(&diagnosis_raw, &resolved[0], &patients)),
        ),
        (
            "genetic_finding",
            Box::new(|| transform::genetic_finding_table(&genetic_raw, &resolved[1], &patients)),
        ),
        (
            "phenotype",
            Box::new(|| transform::phenotype_table(&phenotype_raw, &resolved[2], &patients)),
        ),
    ];
    let written: Vec<(&'static str, usize)> = std::thread::scope(|scope| {
        let staged = &staged;
        let handles: Vec<_> = builders
            .into_iter()
            .map(|(table, build)| {
                scope.spawn(move || {
                    let batch = build().map_err(write_error(table))?;
                    staged.write_table(table, &batch)?;
                    progress.advance(1);
                    Ok((table, batch.num_rows()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| Err(store::writer_panicked()))
            })
            .collect::<Result<Vec<_>, IngestError>>()
    })?;
    staged.commit()?;
    lap("pseudonymise and write", &mut stages);
    progress.finish();

    let raws = [&patients_raw, &diagnosis_raw, &genetic_raw, &phenotype_raw];
    let report = IngestReport {
        patients_read: index.patients(),
        patients_left_out: index.patients() - index.stored_rows.len(),
        tables: raws
            .iter()
            .zip(written)
            .map(|(raw, (table, rows_written))| TableCounts {
                table,
                rows_read: raw.rows(),
                rows_written,
            })
            .collect(),
        bytes_read: raws.iter().map(|r| r.bytes).sum(),
        elapsed: started.elapsed(),
        stages,
    };
    tracing::info!(
        patients = report.patients_read,
        left_out = report.patients_left_out,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "ingest complete"
    );
    Ok(report)
}
