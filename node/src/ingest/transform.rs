//! From validated export columns to the Arrow record batches of the store.
//!
//! This is where the privacy-relevant changes happen: local ids become pids, birth dates
//! lose their day, patients without consent and all their rows are left out, and ages
//! are derived. It runs only on input that passed validation; a cell that would not parse
//! here becomes null rather than a panic.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Int32Array, RecordBatch, StringArray, StringBuilder,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::error::ArrowError;

use super::read::RawFile;
use super::validate::{PatientIndex, birth};
use crate::export::values::{self, Date};
use crate::pseudonym::{PID_LEN, Pseudonymiser};
use crate::schema;

/// The stored patient table plus what dependent tables need of each stored patient.
#[derive(Debug)]
pub(crate) struct StoredPatients {
    /// The `patient` record batch.
    pub(crate) batch: RecordBatch,
    /// pids by stored row.
    pids: StringArray,
    /// Birth year and month by stored row.
    births: Vec<(i32, Option<u32>)>,
}

fn keep_mask(rows: usize, kept_rows: &[u32]) -> Vec<bool> {
    let mut keep = vec![false; rows];
    for &row in kept_rows {
        if let Some(slot) = keep.get_mut(row as usize) {
            *slot = true;
        }
    }
    keep
}

/// Items of `cells` at the rows where `keep` is true.
fn kept<'a, T: 'a>(
    cells: impl Iterator<Item = T> + 'a,
    keep: &'a [bool],
) -> impl Iterator<Item = T> + 'a {
    cells.zip(keep).filter_map(|(cell, &k)| k.then_some(cell))
}

fn utf8(raw: &RawFile, column: &str, keep: &[bool]) -> ArrayRef {
    Arc::new(kept(raw.cells(column), keep).collect::<StringArray>())
}

fn utf8_or(raw: &RawFile, column: &str, keep: &[bool], default: &str) -> ArrayRef {
    Arc::new(
        kept(raw.cells(column), keep)
            .map(|c| Some(c.unwrap_or(default)))
            .collect::<StringArray>(),
    )
}

fn date(raw: &RawFile, column: &str, keep: &[bool]) -> ArrayRef {
    let days = kept(raw.cells(column), keep)
        .map(|c| c.and_then(values::parse_date).map(Date::days_since_epoch));
    Arc::new(days.collect::<Date32Array>())
}

fn boolean(raw: &RawFile, column: &str, keep: &[bool]) -> ArrayRef {
    Arc::new(
        kept(raw.cells(column), keep)
            .map(|c| c.and_then(values::parse_boolean))
            .collect::<BooleanArray>(),
    )
}

/// Hashes every stored patient's local id, spread over the available cores.
fn pseudonymise(raw: &RawFile, keep: &[bool], pseudonymiser: &Pseudonymiser) -> StringArray {
    let local_ids: Vec<&str> = kept(raw.cells("local_id"), keep)
        .map(Option::unwrap_or_default)
        .collect();
    let mut bytes = vec![0u8; local_ids.len() * PID_LEN];
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = local_ids.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (ids, out) in local_ids
            .chunks(per_thread)
            .zip(bytes.chunks_mut(per_thread * PID_LEN))
        {
            scope.spawn(move || {
                for (id, slot) in ids.iter().zip(out.chunks_exact_mut(PID_LEN)) {
                    let mut pid = [0u8; PID_LEN];
                    pseudonymiser.pid_into(id, &mut pid);
                    slot.copy_from_slice(&pid);
                }
            });
        }
    });
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(PID_LEN, local_ids.len()));
    // Hex digits are ASCII, so the buffer is valid UTF-8 by construction.
    StringArray::new(offsets, Buffer::from_vec(bytes), None)
}

/// Builds the `patient` table from patient.csv.
pub(crate) fn patient_table(
    raw: &RawFile,
    index: &PatientIndex<'_>,
    pseudonymiser: &Pseudonymiser,
) -> Result<StoredPatients, ArrowError> {
    let keep = keep_mask(raw.rows(), &index.stored_rows);
    let pids = pseudonymise(raw, &keep, pseudonymiser);
    let births: Vec<(i32, Option<u32>)> = kept(raw.cells("birth_date"), &keep).map(birth).collect();
    let birth_year: Int32Array = births.iter().map(|&(year, _)| Some(year)).collect();
    let birth_month: Int32Array = births
        .iter()
        .map(|&(_, month)| month.and_then(|m| i32::try_from(m).ok()))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pids.clone()),
        Arc::new(birth_year),
        Arc::new(birth_month),
        utf8(raw, "sex", &keep),
        utf8(raw, "vital_status", &keep),
        date(raw, "death_date", &keep),
        date(raw, "first_contact_date", &keep),
        boolean(raw, "undiagnosed", &keep),
        utf8(raw, "contact_for_research", &keep),
        boolean(raw, "biosample_available", &keep),
    ];
    let batch = RecordBatch::try_new(schema::patient(), columns)?;
    Ok(StoredPatients {
        batch,
        pids,
        births,
    })
}

impl StoredPatients {
    /// The pid column of a dependent table: the pid of each kept row's patient.
    fn pid_column(&self, resolved: &[Option<u32>]) -> ArrayRef {
        let kept_rows = resolved.iter().flatten().count();
        let mut builder = StringBuilder::with_capacity(kept_rows, kept_rows * PID_LEN);
        for &stored in resolved.iter().flatten() {
            builder.append_value(self.pids.value(stored as usize));
        }
        Arc::new(builder.finish())
    }

    fn birth(&self, stored: u32) -> (i32, Option<u32>) {
        self.births
            .get(stored as usize)
            .copied()
            .unwrap_or((0, None))
    }
}

/// Rows of a dependent file whose patient entered the store.
fn keep_resolved(resolved: &[Option<u32>]) -> Vec<bool> {
    resolved.iter().map(Option::is_some).collect()
}

/// Builds the `diagnosis` table from diagnosis.csv.
pub(crate) fn diagnosis_table(
    raw: &RawFile,
    resolved: &[Option<u32>],
    patients: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let keep = keep_resolved(resolved);
    let code_system: StringArray = kept(raw.cells("code"), &keep)
        .map(|c| c.and_then(values::parse_code).map(|s| s.as_str()))
        .collect();
    let stored: Vec<u32> = resolved.iter().flatten().copied().collect();
    let onsets = kept(raw.cells("onset"), &keep).zip(kept(raw.cells("onset_date"), &keep));
    let age_at_onset: Int32Array = onsets
        .zip(&stored)
        .map(|((onset, onset_date), &patient)| match onset {
            Some("antenatal" | "at_birth") => Some(0),
            Some("date") => age_at(onset_date, patients.birth(patient)),
            _ => None,
        })
        .collect();
    let age_at_diagnosis: Int32Array = kept(raw.cells("diagnosis_date"), &keep)
        .zip(&stored)
        .map(|(diagnosed, &patient)| age_at(diagnosed, patients.birth(patient)))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        patients.pid_column(resolved),
        utf8(raw, "code", &keep),
        Arc::new(code_system),
        utf8_or(raw, "status", &keep, "confirmed"),
        utf8(raw, "onset", &keep),
        date(raw, "onset_date", &keep),
        date(raw, "diagnosis_date", &keep),
        Arc::new(age_at_onset),
        Arc::new(age_at_diagnosis),
    ];
    RecordBatch::try_new(schema::diagnosis(), columns)
}

fn age_at(cell: Option<&str>, (birth_year, birth_month): (i32, Option<u32>)) -> Option<i32> {
    cell.and_then(values::parse_date)
        .map(|d| d.age_from(birth_year, birth_month))
}

/// Builds the `genetic_finding` table from genetic_finding.csv.
pub(crate) fn genetic_finding_table(
    raw: &RawFile,
    resolved: &[Option<u32>],
    patients: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let keep = keep_resolved(resolved);
    let columns: Vec<ArrayRef> = vec![
        patients.pid_column(resolved),
        utf8(raw, "hgnc_id", &keep),
        utf8(raw, "gene_symbol", &keep),
        utf8(raw, "hgvs", &keep),
        utf8(raw, "zygosity", &keep),
        boolean(raw, "causative", &keep),
    ];
    RecordBatch::try_new(schema::genetic_finding(), columns)
}

/// Builds the `phenotype` table from phenotype.csv.
pub(crate) fn phenotype_table(
    raw: &RawFile,
    resolved: &[Option<u32>],
    patients: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let keep = keep_resolved(resolved);
    let excluded: BooleanArray = kept(raw.cells("excluded"), &keep)
        .map(|c| Some(c.and_then(values::parse_boolean).unwrap_or(false)))
        .collect();
    let columns: Vec<ArrayRef> = vec![
        patients.pid_column(resolved),
        utf8(raw, "hpo_id", &keep),
        Arc::new(excluded),
    ];
    RecordBatch::try_new(schema::phenotype(), columns)
}
