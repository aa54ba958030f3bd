//! The interchange format a hospital exports and `ern ingest` reads (data-model.md
//! section 1): which files, which columns, which value formats.

pub mod spec;
pub mod values;

pub use spec::{ColumnSpec, ExportFile, Format, RuleText};
