//! Noise on what a site releases: per site on its groups before suppression, or under
//! secure aggregation as its share on its vector before masking.
//!
//! Every draw comes from the node's noise secret, keyed by the question (its plan
//! fingerprint), the store generation and the column ([`NoiseSecret::rng`]); the groups are
//! visited in the canonical order of their keys (the secure vector's cells are in it
//! already). So the same question on the same data draws the same noise for every group,
//! whatever order DataFusion produced the rows in, and asking again averages nothing
//! away.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Decimal128Array, Float64Array, Int64Array, RecordBatch, UInt64Array,
};
use arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type, UInt64Type};
use ern_queries::secure::{NoisedSlot, SecureLayout};
use ern_queries::split::{HIDDEN_PATIENTS, is_hidden};

use super::policy::{ColumnNoise, NoiseError, QuestionNoise};
use super::secret::NoiseSecret;

/// Where a question's noise comes from.
#[derive(Debug, Clone, Copy)]
pub struct NoiseSeed<'a> {
    /// The node's secret.
    pub secret: &'a NoiseSecret,
    /// The question's key (plan fingerprint).
    pub question: &'a str,
    /// The store generation.
    pub generation: &'a str,
}

/// Errors of noising a release.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Drawing failed.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// The release does not have the columns the question implies.
    #[error("noising the release: {0}")]
    Shape(String),
}

impl From<arrow::error::ArrowError> for ApplyError {
    fn from(error: arrow::error::ArrowError) -> Self {
        ApplyError::Shape(error.to_string())
    }
}

/// The name of the hidden count of all of a group's patients in a site plan's output.
fn all_patients_column() -> String {
    format!("{HIDDEN_PATIENTS}_0")
}

/// The site plan's output (`groups` key columns first) with noise added to every
/// released partial `__p{j}` and to the count of all patients, in one batch sorted by the
/// group keys; nothing for no rows.
pub fn noise_site_output(
    batches: Vec<RecordBatch>,
    groups: usize,
    noise: &QuestionNoise,
    seed: NoiseSeed<'_>,
) -> Result<Vec<RecordBatch>, ApplyError> {
    let Some(first) = batches.first() else {
        return Ok(Vec::new());
    };
    let schema = first.schema();
    let batch = concat_batches(&schema, &batches)?;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let batch = if groups == 0 {
        batch
    } else {
        let keys: Vec<SortColumn> = batch.columns()[..groups]
            .iter()
            .map(|values| SortColumn {
                values: Arc::clone(values),
                options: None,
            })
            .collect();
        take_record_batch(&batch, &lexsort_to_indices(&keys, None)?)?
    };
    let patients = all_patients_column();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    let mut partial = 0usize;
    for (index, field) in schema.fields().iter().enumerate().skip(groups) {
        let name = field.name();
        let column_noise = if !is_hidden(name) {
            let found = noise.partials.get(partial).ok_or_else(|| {
                ApplyError::Shape(format!("no noise for the released partial {name}"))
            })?;
            partial += 1;
            found
        } else if *name == patients {
            &noise.patients
        } else {
            continue;
        };
        let mut rng = seed
            .secret
            .rng(seed.question, seed.generation, &format!("per-site/{name}"));
        columns[index] = noised(&columns[index], column_noise, &mut rng)?;
    }
    if partial != noise.partials.len() {
        return Err(ApplyError::Shape(format!(
            "{partial} released partials where the question implies {}",
            noise.partials.len()
        )));
    }
    Ok(vec![RecordBatch::try_new(schema, columns)?])
}

/// One column with a draw added to every value; NULL (a sum over no value) counts as
/// zero, since a NULL left as it is would tell, whatever the noise, that nobody in the
/// group has a value (red team); integers saturate.
fn noised<R: rand::RngCore>(
    column: &ArrayRef,
    noise: &ColumnNoise,
    rng: &mut R,
) -> Result<ArrayRef, ApplyError> {
    let mut draws = Vec::with_capacity(column.len());
    for _ in 0..column.len() {
        draws.push(noise.draw(rng)?);
    }
    let array: ArrayRef = match column.data_type() {
        DataType::Int64 => Arc::new(
            column
                .as_primitive::<Int64Type>()
                .iter()
                .zip(&draws)
                .map(|(value, draw)| Some(value.unwrap_or(0).saturating_add(*draw)))
                .collect::<Int64Array>(),
        ),
        DataType::UInt64 => Arc::new(
            column
                .as_primitive::<UInt64Type>()
                .iter()
                .zip(&draws)
                .map(|(value, draw)| Some(value.unwrap_or(0).saturating_add_signed(*draw)))
                .collect::<UInt64Array>(),
        ),
        DataType::Float64 => Arc::new(
            column
                .as_primitive::<Float64Type>()
                .iter()
                .zip(&draws)
                .map(|(value, draw)| Some(value.unwrap_or(0.0) + *draw as f64))
                .collect::<Float64Array>(),
        ),
        // The sum of squares behind a variance (`ern_queries::spread`), exact in 128 bits.
        DataType::Decimal128(precision, scale) => Arc::new(
            column
                .as_primitive::<Decimal128Type>()
                .iter()
                .zip(&draws)
                .map(|(value, draw)| Some(value.unwrap_or(0).saturating_add(i128::from(*draw))))
                .collect::<Decimal128Array>()
                .with_precision_and_scale(*precision, *scale)?,
        ),
        other => {
            return Err(ApplyError::Shape(format!(
                "a released value of type {other} cannot be noised"
            )));
        }
    };
    Ok(array)
}

/// Adds this site's share of the noise of the network totals to its plain vector, for
/// a round of `participants` sites: every cell's released partials and count of all
/// patients, modulo 2^64 like the vector. The cell's other values (the hidden counts of
/// patients with and without a value, the moments of the dominance rule) are set to zero:
/// exact, they would let the coordinator read exact counts and sums off the totals, and
/// their suppression decisions would each hang on one patient (red team). Under noise the
/// coordinator suppresses by the noisy patient count alone.
pub fn noise_secure_vector(
    values: &mut [u64],
    layout: &SecureLayout,
    noise: &QuestionNoise,
    participants: usize,
    seed: NoiseSeed<'_>,
) -> Result<(), ApplyError> {
    let width = layout.width();
    if width == 0 || values.len() != layout.len() {
        return Err(ApplyError::Shape(
            "the vector does not have the question's layout".into(),
        ));
    }
    let noised = layout.noised_slots();
    for cell in values.chunks_exact_mut(width) {
        for (place, value) in cell.iter_mut().enumerate() {
            if !noised
                .iter()
                .any(|(noised_place, _)| *noised_place == place)
            {
                *value = 0;
            }
        }
    }
    for (place, slot) in noised {
        let (column_noise, purpose) = match slot {
            NoisedSlot::Partial(j) => (
                noise.partials.get(j).ok_or_else(|| {
                    ApplyError::Shape(format!("no noise for the released partial {j}"))
                })?,
                format!("secure-share/__p{j}"),
            ),
            NoisedSlot::Patients => (&noise.patients, "secure-share/patients".to_string()),
        };
        let mut rng = seed.secret.rng(seed.question, seed.generation, &purpose);
        for cell in values.chunks_exact_mut(width) {
            let share = column_noise.share(&mut rng, participants)?;
            cell[place] = cell[place].wrapping_add(share as u64);
        }
    }
    Ok(())
}
