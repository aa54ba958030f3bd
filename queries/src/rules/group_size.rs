//! Rule 6, minimum group size: every released group holds at least k distinct patients,
//! counted by the node, and no group's sum is dominated by one or two patients.
//!
//! The counts are hidden columns the site plan adds ([`crate::split`]): `COUNT(DISTINCT
//! pid)` for every group, and behind every `SUM(x)`, `AVG(x)` and `COUNT(x)` the distinct
//! patients with a non-null, non-zero contribution; a group where either is below k is
//! dropped before anything leaves the node. Where each row is one patient
//! ([`crate::uniqueness`]) a plain count stands in for the distinct one.
//!
//! ## Dominance: one outlier's value cannot be read off a sum over k patients
//!
//! A SUM or AVG over a group of k patients passes the patient counts, yet when one
//! patient's contribution is nearly all of it (a thousand years of follow-up among four
//! patients with one year each) the total is that patient's value to within the others'.
//! Statistical offices suppress such magnitude cells with an (n, p) dominance rule: a
//! cell is dropped when its n largest contributors hold more than p % of its total. Here
//! the contributions are per patient (a patient's sum over the group's rows), in absolute
//! value, and n and p come from the node's policy (default: 2 and 85 %).
//!
//! [`top_abs_sum`] is the aggregate a site plan uses for it: the sum of the n largest
//! absolute values of its argument (one row per patient), kept in O(n) state.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Expr, Signature, Volatility,
};

/// The dominance rule's parameters, from the node's policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dominance {
    /// How many of the largest contributions are added up (n).
    pub top: usize,
    /// The largest share of a group's total absolute value they may hold (p, as 0-1).
    pub max_share: f64,
}

impl Default for Dominance {
    /// The (2, 85 %) rule.
    fn default() -> Self {
        Dominance {
            top: 2,
            max_share: 0.85,
        }
    }
}

/// `top_abs_sum(x)` over one row per patient: the sum of the `top` largest `|x|`.
pub fn top_abs_sum(top: usize, argument: Expr) -> Expr {
    AggregateUDF::new_from_impl(TopAbsSum::new(top)).call(vec![argument])
}

/// The aggregate behind [`top_abs_sum`].
#[derive(Debug, PartialEq, Eq, Hash)]
struct TopAbsSum {
    top: usize,
    signature: Signature,
}

impl TopAbsSum {
    fn new(top: usize) -> Self {
        TopAbsSum {
            top: top.max(1),
            signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for TopAbsSum {
    fn name(&self) -> &str {
        "__top_abs_sum"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(TopAccumulator {
            largest: Vec::with_capacity(self.top + 1),
            top: self.top,
        }))
    }

    fn state_fields(&self, _args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok((0..self.top)
            .map(|i| Arc::new(Field::new(format!("top_{i}"), DataType::Float64, true)))
            .collect())
    }
}

/// The `top` largest absolute values seen, largest first.
#[derive(Debug)]
struct TopAccumulator {
    largest: Vec<f64>,
    top: usize,
}

impl TopAccumulator {
    fn offer(&mut self, value: f64) {
        let value = value.abs();
        if value.is_nan() {
            return;
        }
        if self.largest.len() == self.top && self.largest.last().is_some_and(|&l| l >= value) {
            return;
        }
        let at = self.largest.partition_point(|&l| l >= value);
        self.largest.insert(at, value);
        self.largest.truncate(self.top);
    }

    fn offer_all(&mut self, values: &ArrayRef) {
        let values = values.as_primitive::<Float64Type>();
        for value in values.iter().flatten() {
            self.offer(value);
        }
    }
}

impl Accumulator for TopAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Some(values) = values.first() {
            self.offer_all(values);
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(Some(self.largest.iter().sum())))
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.largest.capacity() * std::mem::size_of::<f64>()
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok((0..self.top)
            .map(|i| ScalarValue::Float64(self.largest.get(i).copied()))
            .collect())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for state in states {
            if state.data_type() == &DataType::Float64 {
                self.offer_all(state);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Float64Array;

    fn accumulate(top: usize, values: &[f64]) -> f64 {
        let mut accumulator = TopAccumulator {
            largest: Vec::new(),
            top,
        };
        let array: ArrayRef = Arc::new(Float64Array::from(values.to_vec()));
        accumulator.update_batch(&[array]).expect("update");
        match accumulator.evaluate().expect("evaluate") {
            ScalarValue::Float64(Some(sum)) => sum,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_largest_absolute_values_are_added() {
        assert_eq!(accumulate(2, &[1.0, -7.0, 3.0, 5.0]), 12.0);
        assert_eq!(accumulate(2, &[4.0]), 4.0);
        assert_eq!(accumulate(1, &[2.0, 2.0, -2.0]), 2.0);
        assert_eq!(accumulate(3, &[]), 0.0);
        assert_eq!(accumulate(2, &[f64::NAN, 1.0, 1.0]), 2.0);
    }

    #[test]
    fn merged_states_give_the_same_top() {
        let mut left = TopAccumulator {
            largest: Vec::new(),
            top: 2,
        };
        let mut right = TopAccumulator {
            largest: Vec::new(),
            top: 2,
        };
        left.offer_all(&(Arc::new(Float64Array::from(vec![9.0, 1.0])) as ArrayRef));
        right.offer_all(&(Arc::new(Float64Array::from(vec![8.0, -10.0])) as ArrayRef));
        let states: Vec<ArrayRef> = right
            .state()
            .expect("state")
            .into_iter()
            .map(|s| s.to_array().expect("array"))
            .collect();
        left.merge_batch(&states).expect("merge");
        assert_eq!(
            left.evaluate().expect("evaluate"),
            ScalarValue::Float64(Some(19.0))
        );
    }
}
