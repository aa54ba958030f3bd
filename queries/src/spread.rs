//! Spread: VAR_SAMP, VAR_POP, STDDEV_SAMP and STDDEV_POP, merged exactly across sites.
//!
//! A variance does not add up across sites; its sufficient statistics do. Each site sends,
//! per group, `n = COUNT(x)`, `S = SUM(x)` and `Q = SUM(x * x)` ([`partials`]), which
//! the merge adds like any other partial; then [`merged`] rebuilds the statistic from the
//! network totals.
//!
//! # Exact, not merely careful
//! Rule 4 keeps every value inside a released aggregate a whole number of magnitude at
//! most 2^32 ([`crate::rules::barrier_aggregates`]), so the three partials are exact
//! integers: `n` and `S` as Int64 like every count and sum, `Q` as Decimal128(38, 0)
//! (one square reaches 2^64, a sum of 2^31 of them 2^95, inside 38 digits). The merge
//! forms `D = n·Q − S²` in 128-bit integers, exactly, and rounds once:
//! `D / (n·(n − 1))` for the sample variance, `D / n²` for the population one, the
//! standard deviation its square root. So the textbook formula's catastrophic
//! cancellation cannot happen: in f64, `Q / n − (S / n)²` over values near 10^9 with a
//! spread of a few units loses every digit (each square is rounded by about 64), where
//! here the answer is the exact rational rounded to the nearest f64 (to within a few
//! units in the last place, from rounding `D` and the divisor). A shifted or compensated
//! f64 sum would only approximate what integers give exactly.
//!
//! `D ≥ 0` for exact totals (Cauchy–Schwarz); only noise (differential privacy) can make
//! it negative, and a negative `D` is clamped to 0. Should `n·Q` pass 2^127 (more than
//! about 3·10^9 values in one group) the merge falls back to f64 with the same clamp.
//! Like DataFusion, a sample statistic over fewer than two values, and a population one
//! over none, is NULL; so is every statistic whose noisy count is not positive.
//!
//! # What it releases
//! A variance, a sum and a count of the same group together give `Q`: a sum of squares
//! over the same patients, under the same k and the same dominance rule as every sum
//! ([`crate::validate::Barrier::summed_values`] holds each square beside its value). See
//! [`crate::rules::barrier_aggregates`] for why that suffices.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array};
use arrow::datatypes::{DataType, Decimal128Type, Field, FieldRef};
use datafusion::common::Result;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, cast,
};

/// Which spread statistic a released aggregate computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spread {
    /// `VAR_SAMP` (`var`, `var_sample`, `variance`): divided by `n − 1`.
    VarSamp,
    /// `VAR_POP` (`var_population`): divided by `n`.
    VarPop,
    /// `STDDEV_SAMP` (`stddev`): the square root of `VAR_SAMP`.
    StddevSamp,
    /// `STDDEV_POP`: the square root of `VAR_POP`.
    StddevPop,
}

impl Spread {
    /// The statistic of an aggregate function as DataFusion 55 names it (its canonical
    /// name: `var`, `var_pop`, `stddev`, `stddev_pop`; every alias plans to one of them).
    pub fn of_function(name: &str) -> Option<Spread> {
        match name {
            "var" => Some(Spread::VarSamp),
            "var_pop" => Some(Spread::VarPop),
            "stddev" => Some(Spread::StddevSamp),
            "stddev_pop" => Some(Spread::StddevPop),
            _ => None,
        }
    }

    /// True for the sample statistics (divided by `n − 1`).
    pub fn sample(self) -> bool {
        matches!(self, Spread::VarSamp | Spread::StddevSamp)
    }

    /// True for the standard deviations.
    pub fn root(self) -> bool {
        matches!(self, Spread::StddevSamp | Spread::StddevPop)
    }

    /// The statistic from exact totals: `n` values, their sum `s` and the sum of their
    /// squares `q`; `None` where it is undefined (too few values).
    pub fn of_totals(self, n: i128, s: i128, q: i128) -> Option<f64> {
        let divisor = if self.sample() { n - 1 } else { n };
        if n <= 0 || divisor <= 0 {
            return None;
        }
        let exact = n
            .checked_mul(q)
            .and_then(|nq| s.checked_mul(s).and_then(|ss| nq.checked_sub(ss)));
        let variance = match exact {
            // One rounding of the exact numerator, one of the divisor, one division.
            Some(d) => d.max(0) as f64 / (n as f64 * divisor as f64),
            None => {
                let (n, s, q) = (n as f64, s as f64, q as f64);
                (q - s * (s / n)).max(0.0) / divisor as f64
            }
        };
        Some(if self.root() {
            variance.sqrt()
        } else {
            variance
        })
    }
}

/// The type of the sum-of-squares partial: exact for every square of a plain value.
pub const SQUARES_TYPE: DataType = DataType::Decimal128(38, 0);

/// The type a plain value is squared in (a square of up to 2^64 needs 20 digits).
const SQUARED_TYPE: DataType = DataType::Decimal128(20, 0);

/// The partials a spread of `x` is sent as, in order: `COUNT(x)`, `SUM(x)` as Int64 and
/// `SUM(x * x)` as Decimal128(38, 0).
pub(crate) fn partials(x: Expr) -> Vec<Expr> {
    vec![
        count(x.clone()),
        sum(cast(x.clone(), DataType::Int64)),
        sum(square(x)),
    ]
}

/// `x * x`, exactly, as [`SQUARES_TYPE`].
pub(crate) fn square(x: Expr) -> Expr {
    let wide = cast(x, SQUARED_TYPE);
    cast(wide.clone() * wide, SQUARES_TYPE)
}

/// The statistic from the merged totals of its three partials (see [`partials`]).
pub(crate) fn merged(spread: Spread, n: Expr, s: Expr, q: Expr) -> Expr {
    ScalarUDF::new_from_impl(MergedSpread {
        spread,
        signature: Signature::any(3, Volatility::Immutable),
    })
    .call(vec![n, s, q])
}

/// The merge's last step for one spread statistic: built only into the coordinator's
/// merge plan, never named by a question.
#[derive(Debug, PartialEq, Eq, Hash)]
struct MergedSpread {
    spread: Spread,
    signature: Signature,
}

impl ScalarUDFImpl for MergedSpread {
    fn name(&self) -> &str {
        "ern_merged_spread"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn return_field_from_args(&self, _: ReturnFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(self.name(), DataType::Float64, true)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let exact = args
            .args
            .iter()
            .map(|value| {
                let array = value.to_array(args.number_rows)?;
                Ok(arrow::compute::cast(&array, &SQUARES_TYPE)?)
            })
            .collect::<Result<Vec<ArrayRef>>>()?;
        let [n, s, q] = exact.as_slice() else {
            return datafusion::common::exec_err!("ern_merged_spread takes three totals");
        };
        let (n, s, q) = (
            n.as_primitive::<Decimal128Type>(),
            s.as_primitive::<Decimal128Type>(),
            q.as_primitive::<Decimal128Type>(),
        );
        let values: Float64Array = (0..args.number_rows)
            .map(|row| {
                if n.is_null(row) || s.is_null(row) || q.is_null(row) {
                    return None;
                }
                self.spread
                    .of_totals(n.value(row), s.value(row), q.value(row))
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(values)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_give_the_four_statistics() {
        // 1, 2, 3, 4: n = 4, S = 10, Q = 30; D = 120 - 100 = 20.
        assert_eq!(Spread::VarSamp.of_totals(4, 10, 30), Some(20.0 / 12.0));
        assert_eq!(Spread::VarPop.of_totals(4, 10, 30), Some(20.0 / 16.0));
        assert_eq!(
            Spread::StddevPop.of_totals(4, 10, 30),
            Some(1.25_f64.sqrt())
        );
        assert_eq!(
            Spread::StddevSamp.of_totals(4, 10, 30),
            Some((20.0_f64 / 12.0).sqrt())
        );
    }

    #[test]
    fn too_few_values_give_null_and_noise_never_a_negative() {
        assert_eq!(Spread::VarSamp.of_totals(1, 7, 49), None);
        assert_eq!(Spread::VarPop.of_totals(1, 7, 49), Some(0.0));
        assert_eq!(Spread::VarPop.of_totals(0, 0, 0), None);
        assert_eq!(Spread::VarPop.of_totals(-3, 0, 0), None);
        // A noisy sum of squares below S² / n.
        assert_eq!(Spread::VarSamp.of_totals(3, 30, 100), Some(0.0));
    }

    #[test]
    fn a_large_offset_loses_nothing() {
        // 10^9 + 1, 10^9 + 2, 10^9 + 3: the sample variance is exactly 1.
        let values: [i128; 3] = [1_000_000_001, 1_000_000_002, 1_000_000_003];
        let s: i128 = values.iter().sum();
        let q: i128 = values.iter().map(|v| v * v).sum();
        assert_eq!(Spread::VarSamp.of_totals(3, s, q), Some(1.0));
        // The textbook formula in f64 gets it wrong.
        let (n, s, q) = (3.0_f64, s as f64, q as f64);
        assert_ne!((q - s * s / n) / (n - 1.0), 1.0);
    }

    #[test]
    fn a_product_beyond_128_bits_falls_back_to_floating_point() {
        let n = 1_i128 << 40;
        let q = 1_i128 << 100;
        let s = 1_i128 << 70;
        let variance = Spread::VarPop.of_totals(n, s, q).expect("defined");
        assert!(variance.is_finite() && variance >= 0.0);
    }
}
