//! Vectors, not rows: how a secure question's per-site numbers become one fixed-length
//! vector of integers modulo 2^64, and how the network total becomes a released table.
//!
//! Under secure aggregation (DESIGN.md) a node computes its site plan as usual, then
//! writes every cell of the question's public domain, in the domain's canonical order and
//! with zeros where it has nobody, into a vector whose length depends on the question
//! alone: nothing in it says which cells the site has. Each cell holds the same values
//! in the same order as the site plan's columns after its group keys: the partials, the
//! hidden patient counts of rule 6, and, for every released SUM and AVG, the sums of
//! squared and of absolute patient contributions (for the dominance rule on totals).
//! Every value is an integer (counts, and sums over integer-typed columns only, which
//! eligibility checks; the sum of squares behind a variance only over values small
//! enough that it fits 63 bits, [`crate::domain::MAX_SECURE_SQUARED`]), carried as its
//! two's-complement u64 so that sums wrap exactly.
//!
//! The coordinator adds the masked vectors of all participants (the masks cancel), then
//! [`SecureLayout::release`] applies k to the network totals of the hidden counts and the
//! concentration limit to the moments, drops the cells that fail or have no patients, and
//! gives the released partials of the kept cells as one batch for the ordinary merge.

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, SchemaRef, UInt64Type};

use crate::domain::SecureDomain;
use crate::split::{
    HIDDEN_ABSOLUTES, HIDDEN_LACKING, HIDDEN_OUTSIZED, HIDDEN_PATIENTS, HIDDEN_SQUARES,
    MOMENT_UNIT, SplitError, is_hidden,
};

/// What one value of a cell is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// A released partial (`__p…`), in the released schema's column `column`.
    Partial {
        /// Its column in the released schema.
        column: usize,
    },
    /// The hidden count of all patients of the cell (or of those with a value): its
    /// network total must reach k.
    Patients,
    /// The hidden count of patients with a row without a value: none or at least k.
    Lacking,
    /// The sum of squared patient contributions to the `j`-th released sum.
    Squares(usize),
    /// The sum of absolute patient contributions to the `j`-th released sum.
    Absolutes(usize),
    /// Patients whose contribution is beyond what the moments carry: none, or the cell
    /// is dropped.
    Outsized,
}

/// A value of a secure vector's cell that a noising site perturbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoisedSlot {
    /// The released partial `__p{index}`.
    Partial(usize),
    /// The count of all the cell's patients.
    Patients,
}

/// The shape of a secure question's vector: the domain's cells, each with the same slots.
#[derive(Debug, Clone)]
pub struct SecureLayout {
    domain: SecureDomain,
    slots: Vec<Slot>,
    groups: usize,
    released: SchemaRef,
}

/// A node's plain vector for one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteVector {
    /// Every cell's values, cell after cell, modulo 2^64.
    pub values: Vec<u64>,
    /// Groups of the site plan's output that have data in them.
    pub groups: usize,
    /// Groups whose keys lie outside the public domain (data that breaks the data
    /// model's declared ranges): left out of the vector, counted for the audit log.
    pub out_of_domain: usize,
}

/// What the coordinator releases from a round's totals.
#[derive(Debug, Clone)]
pub struct SecureRelease {
    /// The released partials of the kept cells (group keys `__g…`, partials `__p…`).
    pub batch: RecordBatch,
    /// Cells kept.
    pub cells_released: usize,
    /// Cells with patients that failed k or the concentration limit.
    pub cells_suppressed: usize,
}

impl SecureLayout {
    /// The layout of a secure site plan's output (`schema`: group keys, then the values
    /// of a cell) over `domain`; `released` is the question's released schema.
    pub(crate) fn new(
        domain: SecureDomain,
        schema: &arrow::datatypes::Schema,
        released: SchemaRef,
    ) -> Result<Self, SplitError> {
        let groups = domain.keys.len();
        let mut slots = Vec::new();
        let mut partial_column = groups;
        for field in schema.fields().iter().skip(groups) {
            let name = field.name();
            let slot = if let Some(j) = indexed(name, HIDDEN_SQUARES) {
                Slot::Squares(j)
            } else if let Some(j) = indexed(name, HIDDEN_ABSOLUTES) {
                Slot::Absolutes(j)
            } else if name.starts_with(HIDDEN_OUTSIZED) {
                Slot::Outsized
            } else if name.starts_with(HIDDEN_LACKING) {
                Slot::Lacking
            } else if name.starts_with(HIDDEN_PATIENTS) {
                Slot::Patients
            } else if is_hidden(name) {
                return Err(SplitError::BadPartials(format!(
                    "the secure site plan has an unexpected hidden column {name}"
                )));
            } else {
                partial_column += 1;
                Slot::Partial {
                    column: partial_column - 1,
                }
            };
            slots.push(slot);
        }
        if partial_column != released.fields().len() {
            return Err(SplitError::BadPartials(
                "the secure site plan does not release the question's partials".into(),
            ));
        }
        Ok(SecureLayout {
            domain,
            slots,
            groups,
            released,
        })
    }

    /// The values of a cell a site that noises its release perturbs, by their place in
    /// the cell: every released partial (with its index among the partials) and the
    /// count of all the cell's patients, which k applies to. The other hidden counts and
    /// the moments are left exact (they only decide suppression).
    pub fn noised_slots(&self) -> Vec<(usize, NoisedSlot)> {
        let mut noised = Vec::new();
        let mut patients_seen = false;
        for (place, slot) in self.slots.iter().enumerate() {
            match slot {
                Slot::Partial { column } => {
                    noised.push((place, NoisedSlot::Partial(column - self.groups)));
                }
                Slot::Patients if !patients_seen => {
                    patients_seen = true;
                    noised.push((place, NoisedSlot::Patients));
                }
                _ => {}
            }
        }
        noised
    }

    /// The question's public domain.
    pub fn domain(&self) -> &SecureDomain {
        &self.domain
    }

    /// Values per cell.
    pub fn width(&self) -> usize {
        self.slots.len()
    }

    /// The vector's length: cells times values per cell.
    pub fn len(&self) -> usize {
        self.domain.cells() * self.width()
    }

    /// Whether the vector is empty (never: a domain has at least one cell and a cell at
    /// least its patient count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A node's plain vector from the output of its secure site plan.
    pub fn vector(&self, batches: &[RecordBatch]) -> Result<SiteVector, SplitError> {
        let width = self.width();
        let mut values = vec![0u64; self.len()];
        let (mut groups, mut out_of_domain) = (0, 0);
        for batch in batches {
            if batch.num_columns() != self.groups + width {
                return Err(SplitError::BadPartials(format!(
                    "{} columns where the secure plan implies {}",
                    batch.num_columns(),
                    self.groups + width
                )));
            }
            let cells = self
                .domain
                .cells_of_rows(&batch.columns()[..self.groups], batch.num_rows())
                .map_err(|e| SplitError::BadPartials(e.to_string()))?;
            let columns = batch.columns()[self.groups..]
                .iter()
                .map(as_wrapping_integers)
                .collect::<Result<Vec<_>, _>>()?;
            for (row, cell) in cells.into_iter().enumerate() {
                groups += 1;
                let Some(cell) = cell else {
                    out_of_domain += 1;
                    continue;
                };
                let start = cell * width;
                for (slot, column) in columns.iter().enumerate() {
                    values[start + slot] = values[start + slot].wrapping_add(column[row]);
                }
            }
        }
        Ok(SiteVector {
            values,
            groups,
            out_of_domain,
        })
    }

    /// The released batch from the network totals of a completed round: a cell is kept
    /// when every hidden count of all patients reaches `k`, every count of patients
    /// lacking a value is none or at least `k`, and every released sum's concentration
    /// (sum of squared contributions over the squared sum of absolute ones) is at most
    /// `max_concentration`. Cells with no patients are never released.
    pub fn release(
        &self,
        totals: &[u64],
        k: u64,
        max_concentration: f64,
    ) -> Result<SecureRelease, SplitError> {
        self.release_where(totals, |values| {
            self.keep_exact(values, k, max_concentration)
        })
    }

    /// The released batch from the noisy totals of a round whose participants all added
    /// their share of noise (and sent no exact hidden counts or moments): a cell is kept
    /// when its noisy count of all patients reaches `k`.
    pub fn release_noised(&self, totals: &[u64], k: u64) -> Result<SecureRelease, SplitError> {
        let patients = self.slots.iter().position(|slot| *slot == Slot::Patients);
        self.release_where(totals, |values| {
            let count = patients
                .and_then(|place| values.get(place))
                .map_or(0, |v| *v as i64);
            match count {
                ..=0 => None,
                count => Some(count as u64 >= k),
            }
        })
    }

    /// The released batch of the cells `keep` keeps (`None`: a cell with nobody, neither
    /// kept nor counted as suppressed).
    fn release_where(
        &self,
        totals: &[u64],
        keep: impl Fn(&[u64]) -> Option<bool>,
    ) -> Result<SecureRelease, SplitError> {
        let width = self.width();
        if totals.len() != self.len() {
            return Err(SplitError::BadPartials(format!(
                "a vector of {} values where the question implies {}",
                totals.len(),
                self.len()
            )));
        }
        let mut kept = Vec::new();
        let mut suppressed = 0;
        for (cell, values) in totals.chunks_exact(width.max(1)).enumerate() {
            match keep(values) {
                None => {}
                Some(true) => kept.push(cell),
                Some(false) => suppressed += 1,
            }
        }
        self.released_cells(&kept, totals, suppressed)
    }

    /// Whether the exact totals of one cell are released (`None` for a cell with nobody).
    fn keep_exact(&self, values: &[u64], k: u64, max_concentration: f64) -> Option<bool> {
        {
            let mut patients_seen = false;
            let mut keep = true;
            let mut squares = std::collections::BTreeMap::new();
            let mut absolutes = std::collections::BTreeMap::new();
            for (slot, &value) in self.slots.iter().zip(values) {
                let signed = value as i64;
                match *slot {
                    Slot::Partial { .. } => {}
                    Slot::Patients => {
                        patients_seen |= signed > 0;
                        keep &= signed >= 0 && signed as u64 >= k;
                    }
                    Slot::Lacking => keep &= signed == 0 || (signed > 0 && signed as u64 >= k),
                    Slot::Outsized => keep &= value == 0,
                    Slot::Squares(j) => {
                        squares.insert(j, value as f64);
                    }
                    Slot::Absolutes(j) => {
                        absolutes.insert(j, value as f64);
                    }
                }
            }
            // In fixed point (see `split::MOMENT_UNIT`): concentration = squares × unit
            // ÷ absolutes². Squares are rounded up and absolutes down, so it can only be
            // overstated; squares without absolutes are all concentration.
            for (j, squared) in &squares {
                let absolute = absolutes.get(j).copied().unwrap_or(0.0);
                let concentrated = if absolute > 0.0 {
                    *squared * MOMENT_UNIT / (absolute * absolute) > max_concentration
                } else {
                    *squared > 0.0
                };
                keep &= !concentrated;
            }
            patients_seen.then_some(keep)
        }
    }

    /// The released batch of the cells `kept` of `totals`.
    fn released_cells(
        &self,
        kept: &[usize],
        totals: &[u64],
        suppressed: usize,
    ) -> Result<SecureRelease, SplitError> {
        let width = self.width();
        let mut columns: Vec<ArrayRef> = self
            .domain
            .key_arrays(kept)
            .map_err(|e| SplitError::BadPartials(e.to_string()))?;
        for (slot_index, slot) in self.slots.iter().enumerate() {
            let Slot::Partial { column } = *slot else {
                continue;
            };
            let signed: Int64Array = kept
                .iter()
                .map(|&cell| Some(totals[cell * width + slot_index] as i64))
                .collect();
            let target = self.released.field(column).data_type();
            let array: ArrayRef = match target {
                DataType::Float64 => Arc::new(
                    signed
                        .iter()
                        .map(|v| v.map(|v| v as f64))
                        .collect::<Float64Array>(),
                ),
                _ => arrow::compute::cast(&signed, target)
                    .map_err(|e| SplitError::BadPartials(e.to_string()))?,
            };
            columns.push(array);
        }
        let batch = RecordBatch::try_new(Arc::clone(&self.released), columns)
            .map_err(|e| SplitError::BadPartials(e.to_string()))?;
        Ok(SecureRelease {
            batch,
            cells_released: kept.len(),
            cells_suppressed: suppressed,
        })
    }
}

/// The index after `prefix_` in a hidden column's name.
fn indexed(name: &str, prefix: &str) -> Option<usize> {
    name.strip_prefix(prefix)?.strip_prefix('_')?.parse().ok()
}

/// A column of integers (or integral floats) as two's-complement u64s; null is zero (a
/// sum over no values: the hidden counts say there is no value behind it).
fn as_wrapping_integers(column: &ArrayRef) -> Result<Vec<u64>, SplitError> {
    if let Some(ints) = column.as_primitive_opt::<Int64Type>() {
        return Ok(ints.iter().map(|v| v.unwrap_or(0) as u64).collect());
    }
    if let Some(unsigned) = column.as_primitive_opt::<UInt64Type>() {
        return Ok(unsigned.iter().map(|v| v.unwrap_or(0)).collect());
    }
    if let Some(floats) = column.as_primitive_opt::<Float64Type>() {
        return floats
            .iter()
            .map(|v| integral(v.unwrap_or(0.0)))
            .collect::<Result<Vec<_>, _>>();
    }
    // A sum of squares (`crate::spread`): exact in 128 bits, sent only when it fits 64
    // (secure eligibility bounds its values so that it does; beyond, refuse, never wrap).
    if let Some(decimals) = column.as_primitive_opt::<Decimal128Type>() {
        return decimals
            .iter()
            .map(|v| {
                i64::try_from(v.unwrap_or(0))
                    .map(|v| v as u64)
                    .map_err(|_| {
                        SplitError::BadPartials("a secure vector value is beyond 64 bits".into())
                    })
            })
            .collect::<Result<Vec<_>, _>>();
    }
    let widened = arrow::compute::cast(column, &DataType::Int64)
        .map_err(|e| SplitError::BadPartials(e.to_string()))?;
    let ints = widened.as_primitive::<Int64Type>();
    Ok(ints.iter().map(|v| v.unwrap_or(0) as u64).collect())
}

/// An integral float as its two's-complement u64. Sums over integer columns are exact
/// in f64 up to 2^53, far beyond what the declared ranges allow per site.
fn integral(value: f64) -> Result<u64, SplitError> {
    if !value.is_finite() || value.fract() != 0.0 {
        return Err(SplitError::BadPartials(
            "a secure vector value is not an integer".into(),
        ));
    }
    // i64 holds every value a site sends (sums are bounded by validation, moments by
    // `split::MOMENT_LIMIT`); beyond it, refuse rather than saturate.
    if !(-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&value) {
        return Err(SplitError::BadPartials(
            "a secure vector value is beyond 64 bits".into(),
        ));
    }
    Ok((value as i64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integral_values_wrap_as_twos_complement() {
        assert_eq!(integral(3.0).ok(), Some(3));
        assert_eq!(integral(-1.0).ok(), Some(u64::MAX));
        assert!(integral(0.5).is_err());
        assert!(integral(f64::NAN).is_err());
    }

    #[test]
    fn hidden_indices_parse() {
        assert_eq!(indexed("__squares_2", HIDDEN_SQUARES), Some(2));
        assert_eq!(indexed("__squaresx", HIDDEN_SQUARES), None);
    }
}
