//! Record batches as text rows, so that two results compare with `assert_eq!` and a
//! failure prints readable rows.

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::DataType;

/// Rows as text, in batch order; floats with 6 decimals so that AVG and SUM/COUNT compare.
pub fn text_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    text_rows_rounded(batches, 6)
}

/// Rows as text, in batch order, nulls as `NULL` and floats with `decimals` decimals.
pub fn text_rows_rounded(batches: &[RecordBatch], decimals: usize) -> Vec<Vec<String>> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let batch = concat_batches(&first.schema(), batches).expect("concat");
    let mut out = vec![Vec::new(); batch.num_rows()];
    for column in batch.columns() {
        let text: StringArray = if column.data_type() == &DataType::Float64 {
            let values = column.as_any().downcast_ref::<Float64Array>().expect("f64");
            values
                .iter()
                .map(|v| v.map(|v| format!("{v:.decimals$}")))
                .collect()
        } else {
            cast(column, &DataType::Utf8)
                .expect("text")
                .as_string::<i32>()
                .clone()
        };
        for (row, value) in out.iter_mut().enumerate() {
            value.push(if text.is_null(row) {
                "NULL".into()
            } else {
                text.value(row).to_string()
            });
        }
    }
    out
}

/// Released rows as exact text (every value cast to text, floats in full), sorted: two
/// releases are the same release exactly when these are equal.
pub fn canonical_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<StringArray> = batch
            .columns()
            .iter()
            .map(|column| {
                cast(column, &DataType::Utf8)
                    .expect("text")
                    .as_string::<i32>()
                    .clone()
            })
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<&str> = columns
                .iter()
                .map(|c| if c.is_null(row) { "NULL" } else { c.value(row) })
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}
