//! The Orphanet classification of rare cardiac diseases, shipped inside the binary.
//!
//! Nodes load it as the public reference tables `orpha_term` and `orpha_closure`
//! (data-model.md section 2); nodes and the coordinator alike read it to derive a
//! question's public domain ([`crate::domain`]). Source, licence (CC BY 4.0) and
//! attribution are in `queries/reference/README.md`; the attribution is also
//! [`ATTRIBUTION`].

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use arrow::error::ArrowError;

use crate::schema;

/// The attribution Orphanet's licence asks for.
pub const ATTRIBUTION: &str = "Orphanet: an online rare disease and orphan drug data base. © INSERM 1999. \
Available on http://www.orpha.net. Classification of rare cardiac diseases (product 3, id 146), CC BY 4.0.";

/// `orpha_code,name,disorder_type` rows of the cardiac classification.
pub const TERMS_CSV: &str = include_str!("../reference/orpha_cardiac_terms.csv");

/// `ancestor,descendant,depth` rows of its transitive closure, self rows included.
pub const CLOSURE_CSV: &str = include_str!("../reference/orpha_cardiac_closure.csv");

/// One Orphanet term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphaTerm {
    /// `ORPHA:<n>`.
    pub orpha_code: String,
    /// Preferred name.
    pub name: String,
    /// Disorder type, e.g. `Disease` or `Category`.
    pub disorder_type: String,
}

fn records(text: &str) -> Result<Vec<csv::StringRecord>, ArrowError> {
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .records()
        .map(|r| r.map_err(|e| ArrowError::CsvError(e.to_string())))
        .collect()
}

fn field(record: &csv::StringRecord, index: usize) -> Result<&str, ArrowError> {
    record
        .get(index)
        .ok_or_else(|| ArrowError::CsvError(format!("reference row lacks field {index}")))
}

/// The terms of the classification.
pub fn terms() -> Result<Vec<OrphaTerm>, ArrowError> {
    records(TERMS_CSV)?
        .iter()
        .map(|r| {
            Ok(OrphaTerm {
                orpha_code: field(r, 0)?.to_string(),
                name: field(r, 1)?.to_string(),
                disorder_type: field(r, 2)?.to_string(),
            })
        })
        .collect()
}

/// The `orpha_term` table.
pub fn orpha_term_batch() -> Result<RecordBatch, ArrowError> {
    let terms = terms()?;
    let column = |get: fn(&OrphaTerm) -> &str| -> ArrayRef {
        Arc::new(terms.iter().map(|t| Some(get(t))).collect::<StringArray>())
    };
    RecordBatch::try_new(
        schema::orpha_term(),
        vec![
            column(|t| &t.orpha_code),
            column(|t| &t.name),
            column(|t| &t.disorder_type),
        ],
    )
}

/// The `orpha_closure` table.
pub fn orpha_closure_batch() -> Result<RecordBatch, ArrowError> {
    let rows = records(CLOSURE_CSV)?;
    let mut ancestors = Vec::with_capacity(rows.len());
    let mut descendants = Vec::with_capacity(rows.len());
    let mut depths = Vec::with_capacity(rows.len());
    for row in &rows {
        ancestors.push(field(row, 0)?);
        descendants.push(field(row, 1)?);
        let depth = field(row, 2)?;
        depths.push(
            depth
                .parse::<i32>()
                .map_err(|_| ArrowError::CsvError(format!("bad depth {depth}")))?,
        );
    }
    RecordBatch::try_new(
        schema::orpha_closure(),
        vec![
            Arc::new(StringArray::from(ancestors)),
            Arc::new(StringArray::from(descendants)),
            Arc::new(Int32Array::from(depths)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_tables_have_the_documented_sizes() {
        let terms = orpha_term_batch().expect("terms");
        assert_eq!(terms.num_rows(), 227);
        let closure = orpha_closure_batch().expect("closure");
        assert_eq!(closure.num_rows(), 1259);
        assert_eq!(terms.schema(), schema::orpha_term());
        assert_eq!(closure.schema(), schema::orpha_closure());
    }

    #[test]
    fn names_with_commas_survive() {
        let terms = terms().expect("terms");
        let gonadal = terms
            .iter()
            .find(|t| t.orpha_code == "ORPHA:242")
            .expect("ORPHA:242");
        assert_eq!(gonadal.name, "46,XY complete gonadal dysgenesis");
    }
}
