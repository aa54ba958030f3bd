//! Row rules of the interchange format: cell formats, required values and the rules that
//! tie cells and files together (unique local ids, references to patient.csv,
//! `death_date` only for the dead, `onset_date` when onset is `date`).
//!
//! Every check runs to the end of its column so that one ingest reports all errors.

use std::collections::hash_map::Entry;

use crate::error::RowErrors;
use crate::export::{ExportFile, values};
use crate::read::RawFile;

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

/// patient.csv by local id: who exists, who enters the store, and at which row.
#[derive(Debug)]
pub(crate) struct PatientIndex<'a> {
    /// The local id of each patient.csv row.
    local_ids: Vec<Option<&'a str>>,
    /// True when every row has a local id and they rise strictly (in byte order), as in
    /// an export sorted by id: then no id repeats, a binary search finds a row, and no
    /// hash table is built.
    sorted: bool,
    /// The first patient.csv row of each local id; empty when `sorted`.
    first_row: foldhash::HashMap<&'a str, u32>,
    /// The stored row of each patient.csv row: `None` when consent keeps the patient out,
    /// and for a repeated local id (an error that fails the ingest).
    stored_row_of: Vec<Option<u32>>,
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
        let local_ids: Vec<Option<&'a str>> = raw.cells("local_id").collect();
        let consented: Vec<bool> = raw
            .cells("consent_data_reuse")
            .zip(raw.cells("vital_status"))
            .map(|(consent, vital)| consent == Some("yes") && vital != Some("opted_out"))
            .collect();
        let complete = raw.has("local_id") && local_ids.iter().all(Option::is_some);
        let sorted = complete && local_ids.windows(2).all(|pair| pair[0] < pair[1]);
        let mut index = PatientIndex {
            local_ids,
            sorted,
            first_row: foldhash::HashMap::default(),
            stored_row_of: Vec::with_capacity(raw.rows()),
            stored_rows: Vec::with_capacity(raw.rows()),
            complete,
        };
        if !sorted {
            index.first_row.reserve(raw.rows());
        }
        for (row, &consented) in consented.iter().enumerate() {
            let unique = match index.local_ids.get(row).copied().flatten() {
                None => false,
                Some(_) if sorted => true,
                Some(local_id) => index.first_occurrence(raw, row, local_id, errors),
            };
            let stored_row = (unique && consented).then(|| {
                let stored = u32::try_from(index.stored_rows.len()).unwrap_or(u32::MAX);
                index
                    .stored_rows
                    .push(u32::try_from(row).unwrap_or(u32::MAX));
                stored
            });
            index.stored_row_of.push(stored_row);
        }
        index
    }

    /// Records `row` as the row of `local_id`, or reports it as a repeat of an earlier row.
    fn first_occurrence(
        &mut self,
        raw: &RawFile,
        row: usize,
        local_id: &'a str,
        errors: &mut RowErrors,
    ) -> bool {
        match self.first_row.entry(local_id) {
            Entry::Occupied(first) => {
                let first_line = raw.line(*first.get() as usize);
                errors.push_cell(
                    raw.file,
                    raw.line(row),
                    "local_id",
                    format!("must be unique in the file; the same id is on line {first_line}"),
                );
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(u32::try_from(row).unwrap_or(u32::MAX));
                true
            }
        }
    }

    /// The patient.csv row of a local id, if patient.csv has it.
    ///
    /// Tries the rows at and after `cursor` (the previous match) first: exports list a
    /// patient's rows together, most often in patient.csv's order, and two string
    /// comparisons cost far less than a lookup among a million ids.
    fn find_row(&self, local_id: &str, cursor: &mut usize) -> Option<usize> {
        for row in [*cursor, *cursor + 1] {
            if self.local_ids.get(row).copied().flatten() == Some(local_id) {
                *cursor = row;
                return Some(row);
            }
        }
        let row = if self.sorted {
            self.local_ids
                .binary_search_by(|probe| probe.unwrap_or_default().cmp(local_id))
                .ok()?
        } else {
            *self.first_row.get(local_id)? as usize
        };
        *cursor = row;
        Some(row)
    }

    /// Number of patients in patient.csv (unique ids).
    pub(crate) fn patients(&self) -> usize {
        if self.sorted {
            self.local_ids.len()
        } else {
            self.first_row.len()
        }
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
    let mut cursor = 0;
    for (row, local_id) in raw.cells("local_id").enumerate() {
        let patient_row = local_id.and_then(|id| index.find_row(id, &mut cursor));
        if index.complete && local_id.is_some() && patient_row.is_none() {
            errors.push_cell(
                raw.file,
                raw.line(row),
                "local_id",
                "must be a local_id of patient.csv",
            );
        }
        resolved.push(patient_row.and_then(|r| index.stored_row_of.get(r).copied().flatten()));
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
