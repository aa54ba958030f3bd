//! From validated export columns to the Arrow record batches of the store.
//!
//! This is where the privacy-relevant changes happen: local ids become pids, birth dates
//! lose their day, patients without consent and all their rows are left out, and ages
//! are derived. It runs only on input that passed validation; a cell that would not parse
//! here becomes null rather than a panic.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, ArrowPrimitiveType, BooleanBuilder, PrimitiveArray, PrimitiveBuilder, RecordBatch,
    StringArray, StringBuilder,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::datatypes::{Date32Type, Int32Type};
use arrow::error::ArrowError;

use crate::export::values::{self, Date};
use crate::read::RawFile;
use crate::validate::{PatientIndex, birth};
use ern_node::pseudonym::{PID_LEN, Pseudonymiser};
use ern_queries::schema;

/// What every table needs of each stored patient: the pid and the birth year and month.
/// Computed first, so that all four tables can then be built side by side.
#[derive(Debug)]
pub(crate) struct StoredPatients {
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

/// The rows of one export file that enter the store, and the store columns built from
/// them. Every builder reserves the final row count (and text bytes) up front: grown by
/// doubling, the columns of a million-patient export cost more in copies and page
/// faults than in building.
struct Selection<'a> {
    raw: &'a RawFile,
    keep: Vec<bool>,
    rows: usize,
}

impl<'a> Selection<'a> {
    fn new(raw: &'a RawFile, keep: Vec<bool>) -> Self {
        let rows = keep.iter().filter(|&&k| k).count();
        Selection { raw, keep, rows }
    }

    /// The kept cells of one column.
    fn cells(&self, column: &str) -> impl Iterator<Item = Option<&'a str>> + '_ {
        kept(self.raw.cells(column), &self.keep)
    }

    fn strings<'s>(&self, cells: impl Iterator<Item = Option<&'s str>>, bytes: usize) -> ArrayRef {
        let mut builder = StringBuilder::with_capacity(self.rows, bytes);
        for cell in cells {
            builder.append_option(cell);
        }
        Arc::new(builder.finish())
    }

    fn utf8(&self, column: &str) -> ArrayRef {
        self.strings(self.cells(column), self.raw.text_bytes(column))
    }

    fn utf8_or(&self, column: &str, default: &str) -> ArrayRef {
        let bytes = self.raw.text_bytes(column) + self.rows * default.len();
        self.strings(
            self.cells(column).map(|c| Some(c.unwrap_or(default))),
            bytes,
        )
    }

    fn primitive<T: ArrowPrimitiveType>(
        &self,
        values: impl Iterator<Item = Option<T::Native>>,
    ) -> PrimitiveArray<T> {
        let mut builder = PrimitiveBuilder::<T>::with_capacity(self.rows);
        for value in values {
            builder.append_option(value);
        }
        builder.finish()
    }

    fn date(&self, column: &str) -> ArrayRef {
        Arc::new(
            self.primitive::<Date32Type>(
                self.cells(column)
                    .map(|c| c.and_then(values::parse_date).map(Date::days_since_epoch)),
            ),
        )
    }

    fn booleans(&self, values: impl Iterator<Item = Option<bool>>) -> ArrayRef {
        let mut builder = BooleanBuilder::with_capacity(self.rows);
        for value in values {
            builder.append_option(value);
        }
        Arc::new(builder.finish())
    }

    fn boolean(&self, column: &str) -> ArrayRef {
        self.booleans(
            self.cells(column)
                .map(|c| c.and_then(values::parse_boolean)),
        )
    }
}

/// Hashes every stored patient's local id, spread over the available cores.
fn pseudonymise(patients: &Selection<'_>, pseudonymiser: &Pseudonymiser) -> StringArray {
    let local_ids: Vec<&str> = patients
        .cells("local_id")
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

/// Pseudonymises the patients who enter the store and reads their birth year and month.
pub(crate) fn stored_patients(
    raw: &RawFile,
    index: &PatientIndex<'_>,
    pseudonymiser: &Pseudonymiser,
) -> StoredPatients {
    let patients = Selection::new(raw, keep_mask(raw.rows(), &index.stored_rows));
    let pids = pseudonymise(&patients, pseudonymiser);
    let births = patients.cells("birth_date").map(birth).collect();
    StoredPatients { pids, births }
}

/// Builds the `patient` table from patient.csv.
pub(crate) fn patient_table(
    raw: &RawFile,
    index: &PatientIndex<'_>,
    stored: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let patients = Selection::new(raw, keep_mask(raw.rows(), &index.stored_rows));
    let births = &stored.births;
    let birth_year = patients.primitive::<Int32Type>(births.iter().map(|&(year, _)| Some(year)));
    let birth_month = patients.primitive::<Int32Type>(
        births
            .iter()
            .map(|&(_, month)| month.and_then(|m| i32::try_from(m).ok())),
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(stored.pids.clone()),
        Arc::new(birth_year),
        Arc::new(birth_month),
        patients.utf8("sex"),
        patients.utf8("vital_status"),
        patients.date("death_date"),
        patients.date("first_contact_date"),
        patients.boolean("undiagnosed"),
        patients.utf8("contact_for_research"),
        patients.boolean("biosample_available"),
    ];
    RecordBatch::try_new(schema::patient(), columns)
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
fn keep_resolved<'a>(raw: &'a RawFile, resolved: &[Option<u32>]) -> Selection<'a> {
    Selection::new(raw, resolved.iter().map(Option::is_some).collect())
}

/// Builds the `diagnosis` table from diagnosis.csv.
pub(crate) fn diagnosis_table(
    raw: &RawFile,
    resolved: &[Option<u32>],
    patients: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let rows = keep_resolved(raw, resolved);
    let code_system = rows.strings(
        rows.cells("code")
            .map(|c| c.and_then(values::parse_code).map(|s| s.as_str())),
        // A code's system is a prefix of the code.
        raw.text_bytes("code"),
    );
    let stored: Vec<u32> = resolved.iter().flatten().copied().collect();
    let onsets = rows.cells("onset").zip(rows.cells("onset_date"));
    let age_at_onset =
        rows.primitive::<Int32Type>(onsets.zip(&stored).map(|((onset, onset_date), &patient)| {
            match onset {
                Some("antenatal" | "at_birth") => Some(0),
                Some("date") => age_at(onset_date, patients.birth(patient)),
                _ => None,
            }
        }));
    let age_at_diagnosis = rows.primitive::<Int32Type>(
        rows.cells("diagnosis_date")
            .zip(&stored)
            .map(|(diagnosed, &patient)| age_at(diagnosed, patients.birth(patient))),
    );
    let columns: Vec<ArrayRef> = vec![
        patients.pid_column(resolved),
        rows.utf8("code"),
        code_system,
        rows.utf8_or("status", "confirmed"),
        rows.utf8("onset"),
        rows.date("onset_date"),
        rows.date("diagnosis_date"),
        Arc::new(age_at_onset),
        Arc::new(age_at_diagnosis),
    ];
    RecordBatch::try_new(schema::diagnosis(), columns)
}

/// The age at a date cell, in the declared range 0–150 (data-model.md, "Declared
/// ranges"): validation refused every date outside 1880-01-01 … 2100-12-31, and a date
/// before the birth (a prenatal diagnosis or onset) is age 0, as an `antenatal` onset
/// is, rather than a refused row: the data model refuses no date for lying before the
/// birth (see [`Date::declared_age_from`]).
fn age_at(cell: Option<&str>, (birth_year, birth_month): (i32, Option<u32>)) -> Option<i32> {
    cell.and_then(values::parse_date)
        .map(|d| d.declared_age_from(birth_year, birth_month))
}

/// Builds the `genetic_finding` table from genetic_finding.csv.
pub(crate) fn genetic_finding_table(
    raw: &RawFile,
    resolved: &[Option<u32>],
    patients: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let rows = keep_resolved(raw, resolved);
    let columns: Vec<ArrayRef> = vec![
        patients.pid_column(resolved),
        rows.utf8("hgnc_id"),
        rows.utf8("gene_symbol"),
        rows.utf8("hgvs"),
        rows.utf8("zygosity"),
        rows.boolean("causative"),
    ];
    RecordBatch::try_new(schema::genetic_finding(), columns)
}

/// Builds the `phenotype` table from phenotype.csv.
pub(crate) fn phenotype_table(
    raw: &RawFile,
    resolved: &[Option<u32>],
    patients: &StoredPatients,
) -> Result<RecordBatch, ArrowError> {
    let rows = keep_resolved(raw, resolved);
    let excluded = rows.booleans(
        rows.cells("excluded")
            .map(|c| Some(c.and_then(values::parse_boolean).unwrap_or(false))),
    );
    let columns: Vec<ArrayRef> = vec![patients.pid_column(resolved), rows.utf8("hpo_id"), excluded];
    RecordBatch::try_new(schema::phenotype(), columns)
}
