//! Row rules of the interchange format: cell formats, required values and the rules that
//! tie cells and files together (unique local ids, references to patient.csv,
//! `death_date` only for the dead, `onset_date` when onset is `date`).
//!
//! Every check runs to the end of its column so that one ingest reports all errors.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use super::error::RowErrors;
use super::read::RawFile;
use crate::export::{ExportFile, values};

/// Rule text for an empty required cell.
pub(crate) const MISSING_VALUE: &str = "a value is required";

/// Checks every present column's cells against its format and required flag.
pub(crate) fn check_cells(raw: &RawFile, errors: &mut RowErrors) {
    for spec in raw.file.columns() {
        if !raw.has(spec.name) {
            continue;
        }
        for (row, cell) in raw.cells(spec.name).enumerate() {
            match cell {
                None if spec.required => {
                    errors.push_cell(raw.file, raw.line(row), spec.name, MISSING_VALUE)
                }
                None => {}
                Some(text) => {
                    if let Err(rule) = spec.format.check(text) {
                        errors.push_cell(raw.file, raw.line(row), spec.name, rule);
                    }
                }
            }
        }
    }
}

/// `death_date` may be given only when `vital_status` is `dead`.
pub(crate) fn check_patient_rules(raw: &RawFile, errors: &mut RowErrors) {
    for (row, (death, vital)) in raw
        .cells("death_date")
        .zip(raw.cells("vital_status"))
        .enumerate()
    {
        if death.is_some() && vital != Some("dead") {
            errors.push_cell(
                raw.file,
                raw.line(row),
                "death_date",
                "allowed only when vital_status is dead",
            );
        }
    }
}

/// `onset_date` is required when `onset` is `date`.
pub(crate) fn check_diagnosis_rules(raw: &RawFile, errors: &mut RowErrors) {
    for (row, (onset, date)) in raw.cells("onset").zip(raw.cells("onset_date")).enumerate() {
        if onset == Some("date") && date.is_none() {
            errors.push_cell(
                raw.file,
                raw.line(row),
                "onset_date",
                "required when onset is date",
            );
        }
    }
}

/// What ingest knows of one patient of patient.csv.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PatientEntry {
    /// Line of the patient's row in patient.csv.
    line: u64,
    /// Row of the patient in the stored table; `None` when consent keeps it out.
    pub(crate) stored_row: Option<u32>,
}

/// patient.csv by local id: who exists, who enters the store, and at which row.
#[derive(Debug)]
pub(crate) struct PatientIndex<'a> {
    by_local_id: HashMap<&'a str, PatientEntry>,
    /// patient.csv rows that enter the store, in file order.
    pub(crate) stored_rows: Vec<u32>,
    /// False when patient.csv could not be read or has rows without a local id: then a
    /// dependent row's unknown local id may be patient.csv's fault, and is not reported.
    complete: bool,
}

impl<'a> PatientIndex<'a> {
    /// Indexes patient.csv, reporting duplicate local ids, and applies the consent rule:
    /// a patient enters the store only with `consent_data_reuse = yes` and a
    /// `vital_status` other than `opted_out`.
    pub(crate) fn build(raw: &'a RawFile, errors: &mut RowErrors) -> Self {
        let mut index = PatientIndex {
            by_local_id: HashMap::with_capacity(raw.rows()),
            stored_rows: Vec::with_capacity(raw.rows()),
            complete: raw.has("local_id"),
        };
        let rows = raw
            .cells("local_id")
            .zip(raw.cells("consent_data_reuse"))
            .zip(raw.cells("vital_status"));
        for (row, ((local_id, consent), vital)) in rows.enumerate() {
            let Some(local_id) = local_id else {
                index.complete = false;
                continue;
            };
            let line = raw.line(row);
            let consented = consent == Some("yes") && vital != Some("opted_out");
            match index.by_local_id.entry(local_id) {
                Entry::Occupied(first) => {
                    let first_line = first.get().line;
                    errors.push_cell(
                        raw.file,
                        line,
                        "local_id",
                        format!("must be unique in the file; the same id is on line {first_line}"),
                    );
                }
                Entry::Vacant(slot) => {
                    let stored_row = consented.then(|| {
                        let stored = u32::try_from(index.stored_rows.len()).unwrap_or(u32::MAX);
                        index
                            .stored_rows
                            .push(u32::try_from(row).unwrap_or(u32::MAX));
                        stored
                    });
                    slot.insert(PatientEntry { line, stored_row });
                }
            }
        }
        index
    }

    /// The entry of a local id, if patient.csv has it.
    pub(crate) fn get(&self, local_id: &str) -> Option<&PatientEntry> {
        self.by_local_id.get(local_id)
    }

    /// Number of patients in patient.csv (unique ids).
    pub(crate) fn patients(&self) -> usize {
        self.by_local_id.len()
    }
}

/// Every `local_id` of a dependent file must exist in patient.csv. Returns, per row, the
/// stored patient row it belongs to (`None` when the patient is left out for consent).
pub(crate) fn resolve_patients(
    raw: &RawFile,
    index: &PatientIndex<'_>,
    errors: &mut RowErrors,
) -> Vec<Option<u32>> {
    let mut resolved = Vec::with_capacity(raw.rows());
    for (row, local_id) in raw.cells("local_id").enumerate() {
        let entry = local_id.and_then(|id| index.get(id));
        if index.complete && local_id.is_some() && entry.is_none() {
            errors.push_cell(
                raw.file,
                raw.line(row),
                "local_id",
                "must be a local_id of patient.csv",
            );
        }
        resolved.push(entry.and_then(|e| e.stored_row));
    }
    resolved
}

/// The cell rules of one dependent file (diagnosis, genetic finding, phenotype); its
/// references to patient.csv are checked by [`resolve_patients`].
pub(crate) fn check_dependent_cells(raw: &RawFile) -> RowErrors {
    let mut errors = RowErrors::default();
    check_cells(raw, &mut errors);
    if raw.file == ExportFile::Diagnosis {
        check_diagnosis_rules(raw, &mut errors);
    }
    errors
}

/// Birth year and month of a valid `birth_date` cell.
pub(crate) fn birth(cell: Option<&str>) -> (i32, Option<u32>) {
    cell.and_then(values::parse_partial_date)
        .map_or((0, None), |d| (d.year, d.month))
}
