//! Rows packed into order-preserving bytes, so that one `MIN` picks a whole row.
//!
//! Contribution bounding at one group per patient keeps, for every patient, the row
//! whose group keys come first. SQL has no "argmin of a tuple"; a ranking window sorts
//! every row, and `FIRST_VALUE(… ORDER BY keys)` compares boxed scalars row by row, and
//! either made a noised question cost two to three times an exact one. Arrow's row
//! format encodes a tuple of columns as bytes whose byte order is the tuple's order
//! (ascending, NULL last here), so a patient's first row is the `MIN` of their packed
//! rows, a byte-string minimum that DataFusion's hash aggregation keeps per group
//! without boxing. [`pack_row`] packs the keys followed by the other columns (which never
//! decide: the keys are unique per patient) and [`unpack_column`] takes one column back.
//!
//! Both are built only into plans the node makes itself; no question can name them.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::compute::SortOptions;
use arrow::datatypes::DataType;
use arrow::row::{RowConverter, SortField};
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// Ascending, NULL last: the order the bounding documents.
const ORDER: SortOptions = SortOptions {
    descending: false,
    nulls_first: false,
};

/// The converter for columns of `types`, in the bounding's order.
fn converter(types: &[DataType]) -> Result<RowConverter> {
    let fields = types
        .iter()
        .map(|data_type| SortField::new_with_options(data_type.clone(), ORDER))
        .collect();
    Ok(RowConverter::new(fields)?)
}

/// `columns` (of `types`) packed into one binary value per row, whose byte order is
/// the lexicographic order of the tuples.
pub fn pack_row(columns: Vec<Expr>, types: Vec<DataType>) -> Expr {
    ScalarUDF::new_from_impl(PackRow {
        signature: Signature::any(types.len(), Volatility::Immutable),
        types,
    })
    .call(columns)
}

/// Column `index` of rows packed by [`pack_row`] from columns of `types`.
pub fn unpack_column(packed: Expr, types: Vec<DataType>, index: usize) -> Expr {
    ScalarUDF::new_from_impl(UnpackColumn {
        signature: Signature::any(1, Volatility::Immutable),
        types,
        index,
    })
    .call(vec![packed])
}

/// Whether `function` is one of this module's, which only the node's own plans hold
/// (told by its type, not its name) and which fail on no value: the node's rewrite of a
/// plan into total functions keeps them as they are.
pub fn is_row_pack(function: &ScalarUDF) -> bool {
    let inner: &dyn std::any::Any = function.inner().as_ref();
    inner.is::<PackRow>() || inner.is::<UnpackColumn>()
}

/// A float column with every -0.0 made +0.0 (adding +0.0 does that and changes no other
/// value): SQL groups them as one value, the row format would keep them apart.
fn positive_zero(column: ArrayRef) -> Result<ArrayRef> {
    use arrow::array::{Float32Array, Float64Array};
    use arrow::compute::kernels::numeric::add;
    let zero: Option<ArrayRef> = match column.data_type() {
        DataType::Float32 => Some(Arc::new(Float32Array::from(vec![0.0_f32]))),
        DataType::Float64 => Some(Arc::new(Float64Array::from(vec![0.0_f64]))),
        _ => None,
    };
    match zero {
        Some(zero) => Ok(add(&column, &arrow::array::Scalar::new(zero))?),
        None => Ok(column),
    }
}

/// The arguments as arrays of one length (a literal argument is repeated).
fn arrays(args: &ScalarFunctionArgs) -> Result<Vec<ArrayRef>> {
    args.args
        .iter()
        .map(|value| value.to_array(args.number_rows))
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PackRow {
    signature: Signature,
    types: Vec<DataType>,
}

impl ScalarUDFImpl for PackRow {
    fn name(&self) -> &str {
        "ern_pack_row"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Refuses arguments of other types than declared, while planning (whatever the
    /// data), never on the rows.
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if arg_types != self.types.as_slice() {
            return plan_err!(
                "ern_pack_row was declared for {:?} and given {arg_types:?}",
                self.types
            );
        }
        Ok(DataType::Binary)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let columns = arrays(&args)?
            .into_iter()
            .map(positive_zero)
            .collect::<Result<Vec<_>>>()?;
        let rows = converter(&self.types)?.convert_columns(&columns)?;
        let packed = rows.try_into_binary()?;
        Ok(ColumnarValue::Array(Arc::new(packed)))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct UnpackColumn {
    signature: Signature,
    types: Vec<DataType>,
    index: usize,
}

impl ScalarUDFImpl for UnpackColumn {
    fn name(&self) -> &str {
        "ern_unpack_column"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        self.types
            .get(self.index)
            .cloned()
            .ok_or_else(|| DataFusionError::Internal(format!("no packed column {}", self.index)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [packed] = arrays(&args)?.try_into().map_err(|_| {
            DataFusionError::Internal("ern_unpack_column takes one argument".into())
        })?;
        let Some(packed) = packed.as_binary_opt::<i32>() else {
            return exec_err!("ern_unpack_column reads binary rows");
        };
        if packed.null_count() > 0 {
            return exec_err!("ern_unpack_column got a NULL row");
        }
        let converter = converter(&self.types)?;
        let rows = converter.from_binary(packed.clone());
        let columns = converter.convert_rows(&rows)?;
        columns
            .into_iter()
            .nth(self.index)
            .map(ColumnarValue::Array)
            .ok_or_else(|| DataFusionError::Internal(format!("no packed column {}", self.index)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray};

    /// Packing keeps the tuple order (NULL last) and unpacking gives the columns back.
    #[test]
    fn packed_rows_sort_as_their_tuples_and_unpack_to_them() {
        let types = vec![DataType::Utf8, DataType::Int32];
        let first: ArrayRef = Arc::new(StringArray::from(vec![
            Some("b"),
            Some("a"),
            None,
            Some("a"),
            Some("ab"),
        ]));
        let second: ArrayRef = Arc::new(Int32Array::from(vec![
            Some(1),
            None,
            Some(0),
            Some(2),
            Some(-5),
        ]));
        let converter = converter(&types).expect("converter");
        let rows = converter
            .convert_columns(&[first.clone(), second.clone()])
            .expect("rows");
        let packed = rows.try_into_binary().expect("binary");
        let mut order: Vec<usize> = (0..5).collect();
        order.sort_by_key(|&i| packed.value(i).to_vec());
        // ("a", 2) < ("a", NULL) < ("ab", -5) < ("b", 1) < (NULL, 0)
        assert_eq!(order, [3, 1, 4, 0, 2]);
        let parser = converter.parser();
        let back = converter
            .convert_rows(packed.iter().flatten().map(|b| parser.parse(b)))
            .expect("back");
        assert_eq!(back[0].as_ref(), first.as_ref());
        assert_eq!(back[1].as_ref(), second.as_ref());
    }
}
