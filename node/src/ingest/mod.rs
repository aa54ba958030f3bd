//! `ern ingest`: a site export in, a pseudonymised Parquet store out, or nothing at all.
//!
//! The steps, in order: read every file (structure, then cells), check every rule of
//! data-model.md section 1 and collect all errors, and only when there are none,
//! pseudonymise, apply consent, coarsen and derive, and replace the store's tables in one
//! atomic step. The local ids never leave this module.

mod error;
mod read;
mod transform;
mod validate;

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;

pub use error::{IngestError, MAX_ERRORS_PER_FILE, MAX_ERRORS_SHOWN, RowError, RowErrors};
use read::{RawFile, read_export_file};

use crate::export::ExportFile;
use crate::progress::Progress;
use crate::pseudonym::Pseudonymiser;
use crate::store;

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
    progress.stage("reading export", ExportFile::ALL.len() as u64);
    let mut errors = RowErrors::default();
    let mut raw_files = Vec::with_capacity(ExportFile::ALL.len());
    for file in ExportFile::ALL {
        let raw =
            read_export_file(input, file, &mut errors)?.unwrap_or_else(|| RawFile::absent(file));
        raw_files.push(raw);
        progress.advance(1);
    }
    let [patients_raw, diagnosis_raw, genetic_raw, phenotype_raw] =
        <[RawFile; 4]>::try_from(raw_files).map_err(|_| IngestError::Parse {
            path: input.to_path_buf(),
            message: "export files".into(),
        })?;

    let total_rows = [&patients_raw, &diagnosis_raw, &genetic_raw, &phenotype_raw]
        .iter()
        .map(|r| r.rows() as u64)
        .sum();
    progress.stage("checking rows", total_rows);
    validate::check_cells(&patients_raw, &mut errors);
    validate::check_patient_rules(&patients_raw, &mut errors);
    let index = validate::PatientIndex::build(&patients_raw, &mut errors);
    progress.advance(patients_raw.rows() as u64);
    let dependents = [&diagnosis_raw, &genetic_raw, &phenotype_raw];
    let checked: Vec<(RowErrors, Vec<Option<u32>>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = dependents
            .iter()
            .map(|raw| {
                let index = &index;
                scope.spawn(move || validate::check_dependent_file(raw, index))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut resolved = Vec::with_capacity(checked.len());
    for ((file_errors, rows), raw) in checked.into_iter().zip(dependents) {
        errors.absorb(file_errors);
        progress.advance(raw.rows() as u64);
        resolved.push(rows);
    }
    errors.into_result()?;

    progress.stage("pseudonymising", 4);
    let write_error = |table| {
        move |e: arrow::error::ArrowError| IngestError::Write {
            table,
            message: e.to_string(),
        }
    };
    let patients =
        transform::patient_table(&patients_raw, &index, key).map_err(write_error("patient"))?;
    progress.advance(1);
    let diagnosis = transform::diagnosis_table(&diagnosis_raw, &resolved[0], &patients)
        .map_err(write_error("diagnosis"))?;
    progress.advance(1);
    let genetic = transform::genetic_finding_table(&genetic_raw, &resolved[1], &patients)
        .map_err(write_error("genetic_finding"))?;
    progress.advance(1);
    let phenotype = transform::phenotype_table(&phenotype_raw, &resolved[2], &patients)
        .map_err(write_error("phenotype"))?;
    progress.advance(1);

    let tables: [(&'static str, RecordBatch); 4] = [
        ("patient", patients.batch),
        ("diagnosis", diagnosis),
        ("genetic_finding", genetic),
        ("phenotype", phenotype),
    ];
    progress.stage("writing store", 1);
    store::replace_tables(out, &tables)?;
    progress.advance(1);
    progress.finish();

    let raws = [&patients_raw, &diagnosis_raw, &genetic_raw, &phenotype_raw];
    let report = IngestReport {
        patients_read: index.patients(),
        patients_left_out: index.patients() - index.stored_rows.len(),
        tables: raws
            .iter()
            .zip(&tables)
            .map(|(raw, (table, batch))| TableCounts {
                table,
                rows_read: raw.rows(),
                rows_written: batch.num_rows(),
            })
            .collect(),
        bytes_read: raws.iter().map(|r| r.bytes).sum(),
        elapsed: started.elapsed(),
    };
    tracing::info!(
        patients = report.patients_read,
        left_out = report.patients_left_out,
        elapsed_ms = report.elapsed.as_millis() as u64,
        "ingest complete"
    );
    Ok(report)
}
