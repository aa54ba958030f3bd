//! `width_bucket(value, low, high, count)`: a histogram in one GROUP BY.
//!
//! Banding a value by hand takes a CASE per band or integer arithmetic that is easy to
//! get wrong at the edges; PostgreSQL's `width_bucket` does it in one call, and a GROUP
//! BY over it is a whole histogram under one k. Its semantics are PostgreSQL's for
//! `low < high`: bucket 0 below `low`, `count + 1` at or above `high`, and buckets
//! `1..=count` of equal width in between, each closed below and open above.
//!
//! It differs in two ways, both for the disclosure rules:
//! - **Total (rule 5).** It never fails on a value: NULL, NaN and infinities give NULL
//!   (PostgreSQL reports an error for some of them, and a failure that depends on data
//!   is an oracle). Bounds or a count out of range, which validation refuses, give NULL
//!   too should they ever reach a row.
//! - **Literal shape.** `low`, `high` and `count` must be written in the query
//!   ([`check_call`]): the buckets are then public, so the key's domain is `0..=count + 1`
//!   without reading data ([`literal_count`], used by [`crate::domain`]), and a secure
//!   question can group by it.
//!
//! Whole numbers are bucketed exactly, in integer arithmetic: `1 + ⌊(value − low) ·
//! count / (high − low)⌋` where `low` and `high` are whole too (PostgreSQL's float
//! formula, `count · ((value − low) / (high − low))`, puts an integer on a bucket's lower
//! edge into the bucket below it for some widths, e.g. 3 of 7 buckets over 0…7).
//! Other values use the same formula in f64.
//!
//! It is a function of a value, so it may key a group or filter rows but never shape a
//! value inside a released aggregate (rule 4 refuses every function there).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int32Array};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

use crate::rules::barrier_aggregates::literal_number;
use crate::rules::{Refusal, Rule};
use crate::validate::unalias;

/// The function's name, as a question writes it.
pub const NAME: &str = "width_bucket";

/// The most buckets one call may have: a histogram, not a way to key every value.
pub const MAX_BUCKETS: i64 = 10_000;

/// Whole numbers beyond this magnitude are bucketed in f64 (f64 holds every integer up
/// to 2^53, so a whole-number bound beyond it is not known exactly).
const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;

/// The `width_bucket` function, for a session's registry.
pub fn udf() -> Arc<ScalarUDF> {
    Arc::new(ScalarUDF::new_from_impl(WidthBucket {
        signature: Signature::user_defined(Volatility::Immutable),
    }))
}

/// The bucket of `value` (see the module documentation); `None` for invalid bounds or
/// count.
pub fn bucket_of_integer(value: i64, low: f64, high: f64, count: i64) -> Option<i32> {
    let whole = |bound: f64| bound.fract() == 0.0 && bound.abs() <= EXACT_LIMIT;
    if !(whole(low) && whole(high)) {
        return bucket_of_float(value as f64, low, high, count);
    }
    check(low, high, count)?;
    let (value, low, high, count) = (
        i128::from(value),
        low as i128,
        high as i128,
        i128::from(count),
    );
    let bucket = if value < low {
        0
    } else if value >= high {
        count + 1
    } else {
        (value - low) * count / (high - low) + 1
    };
    i32::try_from(bucket).ok()
}

/// The bucket of `value` (see the module documentation); `None` for NaN, infinities,
/// and invalid bounds or count.
pub fn bucket_of_float(value: f64, low: f64, high: f64, count: i64) -> Option<i32> {
    check(low, high, count)?;
    if !value.is_finite() {
        return None;
    }
    let bucket = if value < low {
        0
    } else if value >= high {
        count + 1
    } else {
        let width = high - low;
        let count_f = count as f64;
        let scaled = if width.is_finite() {
            // Multiplied first, so that a product of whole numbers divides exactly.
            let product = (value - low) * count_f;
            if product.is_finite() {
                product / width
            } else {
                (value - low) / width * count_f
            }
        } else {
            // Halved, as PostgreSQL does, where the width itself overflows.
            (value / 2.0 - low / 2.0) / (high / 2.0 - low / 2.0) * count_f
        };
        // The quotient can round up to `count` just below `high`.
        (scaled.floor() as i64).clamp(0, count - 1) + 1
    };
    i32::try_from(bucket).ok()
}

/// `Some(())` for finite `low < high` and `1 <= count <= MAX_BUCKETS`.
fn check(low: f64, high: f64, count: i64) -> Option<()> {
    (low.is_finite() && high.is_finite() && low < high && (1..=MAX_BUCKETS).contains(&count))
        .then_some(())
}

/// Rule 5 on one call of `width_bucket` (`call` as planned, `args` its arguments): four
/// arguments, the bounds and the count numbers written in the query, `low < high`, and
/// `1 <= count <=` [`MAX_BUCKETS`]. Each refusal says which argument.
pub(crate) fn check_call(call: &Expr, args: &[Expr]) -> Result<(), Refusal> {
    let refuse = |reason: String| {
        Refusal::new(Rule::AllowedFunctions, call, reason).hint(
            "e.g. width_bucket(d.age_at_onset, 0, 80, 8): 8 bands of 10 years, 0 below and 9 above",
        )
    };
    let [_, low, high, count] = args else {
        return Err(refuse(format!(
            "width_bucket takes four arguments (value, low, high, count), not {}",
            args.len()
        )));
    };
    let literal = |expr: &Expr, which: &str| {
        literal_number(expr).ok_or_else(|| {
            refuse(format!(
                "the {which} of width_bucket must be a number written in the query"
            ))
        })
    };
    let low = literal(low, "low bound (second argument)")?;
    let high = literal(high, "high bound (third argument)")?;
    let buckets = literal(count, "count (fourth argument)")?;
    if low >= high {
        return Err(refuse(
            "the low bound (second argument) of width_bucket must be below its high bound (third argument)".into(),
        ));
    }
    if buckets.fract() != 0.0 || !(1.0..=MAX_BUCKETS as f64).contains(&buckets) {
        return Err(refuse(format!(
            "the count (fourth argument) of width_bucket must be a whole number from 1 to {MAX_BUCKETS}"
        )));
    }
    Ok(())
}

/// The count of a `width_bucket` call whose arguments passed [`check_call`]; `None`
/// otherwise.
pub(crate) fn literal_count(args: &[Expr]) -> Option<i64> {
    let count = literal_number(unalias(args.get(3)?))?;
    (count.fract() == 0.0 && (1.0..=MAX_BUCKETS as f64).contains(&count)).then_some(count as i64)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WidthBucket {
    signature: Signature,
}

/// The type a value is bucketed as: whole numbers exactly, every other number as f64.
fn value_type(data_type: &DataType) -> Option<DataType> {
    match data_type {
        t if t.is_integer() => Some(DataType::Int64),
        t if t.is_numeric() => Some(DataType::Float64),
        DataType::Null => Some(DataType::Int64),
        _ => None,
    }
}

impl ScalarUDFImpl for WidthBucket {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Types are refused while planning (whatever the data), never on the rows.
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [value, low, high, count] = arg_types else {
            return plan_err!("width_bucket takes four arguments (value, low, high, count)");
        };
        let Some(value) = value_type(value) else {
            return plan_err!("width_bucket buckets numbers, not {value}");
        };
        for bound in [low, high, count] {
            if value_type(bound).is_none() {
                return plan_err!("width_bucket's bounds and count are numbers, not {bound}");
            }
        }
        Ok(vec![
            value,
            DataType::Float64,
            DataType::Float64,
            DataType::Int64,
        ])
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int32)
    }

    fn return_field_from_args(&self, _: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(NAME, DataType::Int32, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|value| value.to_array(rows))
            .collect::<Result<Vec<ArrayRef>>>()?;
        let [value, low, high, count] = arrays.as_slice() else {
            return Ok(ColumnarValue::Array(Arc::new(Int32Array::new_null(rows))));
        };
        // Arguments arrive coerced (`coerce_types`); any other type gives NULL, not an
        // error, so that the function stays total whatever plan reaches it.
        let (Some(low), Some(high), Some(count)) = (
            low.as_primitive_opt::<Float64Type>(),
            high.as_primitive_opt::<Float64Type>(),
            count.as_primitive_opt::<Int64Type>(),
        ) else {
            return Ok(ColumnarValue::Array(Arc::new(Int32Array::new_null(rows))));
        };
        let parameters = |row: usize| {
            (low.is_valid(row) && high.is_valid(row) && count.is_valid(row))
                .then(|| (low.value(row), high.value(row), count.value(row)))
        };
        let buckets: Int32Array = if let Some(ints) = value.as_primitive_opt::<Int64Type>() {
            (0..rows)
                .map(|row| {
                    let (low, high, count) = parameters(row)?;
                    ints.is_valid(row)
                        .then(|| bucket_of_integer(ints.value(row), low, high, count))
                        .flatten()
                })
                .collect()
        } else if let Some(floats) = value.as_primitive_opt::<Float64Type>() {
            (0..rows)
                .map(|row| {
                    let (low, high, count) = parameters(row)?;
                    floats
                        .is_valid(row)
                        .then(|| bucket_of_float(floats.value(row), low, high, count))
                        .flatten()
                })
                .collect()
        } else {
            Int32Array::new_null(rows)
        };
        Ok(ColumnarValue::Array(Arc::new(buckets)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_postgresql_inside_and_at_the_edges() {
        // 8 bands of 10 over 0..80.
        assert_eq!(bucket_of_integer(-1, 0.0, 80.0, 8), Some(0));
        assert_eq!(bucket_of_integer(0, 0.0, 80.0, 8), Some(1));
        assert_eq!(bucket_of_integer(9, 0.0, 80.0, 8), Some(1));
        assert_eq!(bucket_of_integer(10, 0.0, 80.0, 8), Some(2));
        assert_eq!(bucket_of_integer(79, 0.0, 80.0, 8), Some(8));
        assert_eq!(bucket_of_integer(80, 0.0, 80.0, 8), Some(9));
        assert_eq!(bucket_of_float(79.999, 0.0, 80.0, 8), Some(8));
        assert_eq!(bucket_of_float(5.35, 0.024, 10.06, 5), Some(3));
        assert_eq!(bucket_of_float(-0.5, 0.0, 1.0, 4), Some(0));
    }

    #[test]
    fn whole_numbers_on_a_lower_edge_are_exact() {
        for count in 1..60_i64 {
            for span in 1..60_i64 {
                for value in 0..span {
                    let exact = value * count / span + 1;
                    assert_eq!(
                        bucket_of_integer(value, 0.0, span as f64, count),
                        Some(exact as i32)
                    );
                }
            }
        }
    }

    #[test]
    fn nothing_fails_and_nonsense_gives_null() {
        assert_eq!(bucket_of_float(f64::NAN, 0.0, 1.0, 4), None);
        assert_eq!(bucket_of_float(f64::INFINITY, 0.0, 1.0, 4), None);
        assert_eq!(bucket_of_float(1.0, 1.0, 0.0, 4), None);
        assert_eq!(bucket_of_float(1.0, 0.0, 1.0, 0), None);
        assert_eq!(bucket_of_float(1.0, 0.0, 1.0, MAX_BUCKETS + 1), None);
        assert_eq!(
            bucket_of_integer(i64::MIN, -1e308, 1e308, MAX_BUCKETS),
            Some(5001)
        );
        assert_eq!(bucket_of_float(0.0, -1e308, 1e308, 2), Some(2));
        assert_eq!(bucket_of_float(1e308, -1e308, 1e308, 2), Some(3));
        assert_eq!(bucket_of_float(-1e308, -1e308, 1e308, 2), Some(1));
        assert_eq!(bucket_of_integer(i64::MAX, 0.0, 1.0, 3), Some(4));
    }
}
