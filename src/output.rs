//! Writing a result table in the format a researcher asked for: a terminal table, CSV,
//! JSON (an array of objects), Parquet or an Arrow IPC file.
//!
//! CSV opens in spreadsheets, which run a cell that begins with `=`, `+`, `-` or `@` as a
//! formula; group keys come from researchers' SQL and from hospitals' free text (a
//! `gene_symbol` of `=HYPERLINK(…)`). So, as OWASP recommends for CSV injection, a text
//! cell that begins with one of those characters, a tab or a carriage return is written
//! with a single quote in front; `--raw` writes cells as they are. JSON, Parquet and
//! Arrow carry types, and are written unchanged.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use clap::ValueEnum;

/// Output formats of result tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// A table for the terminal.
    Table,
    /// Comma-separated values with a header row.
    Csv,
    /// A JSON array of row objects.
    Json,
    /// A Parquet file.
    Parquet,
    /// An Arrow IPC file.
    Arrow,
}

impl Format {
    /// Whether the format is binary (and so wants `--out`).
    pub(crate) fn is_binary(self) -> bool {
        matches!(self, Format::Parquet | Format::Arrow)
    }
}

/// How CSV cells are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cells {
    /// Text that a spreadsheet would run as a formula gets a leading `'`.
    Safe,
    /// As they are (`--raw`).
    Raw,
}

/// Characters that make a spreadsheet read a cell as a formula (OWASP, CSV injection).
const FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];

/// `text` as a spreadsheet shows it, never runs it.
fn neutralised(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(FORMULA_STARTS) {
        std::borrow::Cow::Owned(format!("'{text}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// The batch with every text cell [`neutralised`].
fn neutralise_formulas(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    let columns = batch
        .columns()
        .iter()
        .map(|column| -> anyhow::Result<ArrayRef> {
            if !matches!(
                column.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ) {
                return Ok(Arc::clone(column));
            }
            let text = arrow::compute::cast(column, &DataType::Utf8)?;
            let text = text.as_string::<i32>();
            let safe: StringArray = (0..text.len())
                .map(|i| (!text.is_null(i)).then(|| neutralised(text.value(i)).into_owned()))
                .collect();
            Ok(Arc::new(safe))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fields: Vec<_> = batch
        .schema()
        .fields()
        .iter()
        .map(|field| match field.data_type() {
            DataType::LargeUtf8 | DataType::Utf8View => {
                Arc::new(field.as_ref().clone().with_data_type(DataType::Utf8))
            }
            _ => Arc::clone(field),
        })
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

/// Writes `batches` (of `schema`) as `format` to `out`.
pub(crate) fn write_table(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
    cells: Cells,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        Format::Table => writeln!(out, "{}", crate::table::from_batches(schema, batches)?)?,
        Format::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                // A header row even when no group was released.
                writer.write(&RecordBatch::new_empty(schema.clone()))?;
            }
            for batch in batches {
                match cells {
                    Cells::Safe => writer.write(&neutralise_formulas(batch)?)?,
                    Cells::Raw => writer.write(batch)?,
                }
            }
        }
        Format::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            if batches.is_empty() {
                write!(out, "[]")?;
            }
            writeln!(out)?;
        }
        Format::Parquet => {
            let mut buffer = Vec::new();
            let mut writer =
                parquet::arrow::ArrowWriter::try_new(&mut buffer, schema.clone(), None)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.close()?;
            out.write_all(&buffer)?;
        }
        Format::Arrow => {
            let mut writer = arrow::ipc::writer::FileWriter::try_new(&mut *out, schema)?;
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Writes the table to `path` (atomically: a temporary file beside it, then a rename) or
/// to stdout.
pub(crate) fn write_to(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
    cells: Cells,
    path: Option<&Path>,
) -> anyhow::Result<()> {
    match path {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut file = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("creating a file in {}", dir.display()))?;
            write_table(schema, batches, format, cells, file.as_file_mut())?;
            file.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            write_table(schema, batches, format, cells, &mut lock)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::{Field, Schema};

    #[test]
    fn csv_cells_that_a_spreadsheet_would_run_are_neutralised() {
        let keys = [
            "=HYPERLINK(\"http://x.example\",\"MYH7\")",
            "+1+1",
            "-2+3+cmd|' /C calc'!A0",
            "@SUM(A1)",
            "\tx",
            "\rx",
            "MYH7",
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(vec![-5; keys.len()])),
            ],
        )
        .expect("batch");
        let mut safe = Vec::new();
        write_table(
            &schema,
            std::slice::from_ref(&batch),
            Format::Csv,
            Cells::Safe,
            &mut safe,
        )
        .expect("csv");
        let safe = String::from_utf8(safe).expect("utf-8");
        let mut reader = csv::ReaderBuilder::new().from_reader(safe.as_bytes());
        let rows: Vec<(String, String)> = reader
            .records()
            .map(|r| {
                let r = r.expect("record");
                (r[0].to_string(), r[1].to_string())
            })
            .collect();
        for ((key, n), original) in rows.iter().zip(keys) {
            if original == "MYH7" {
                assert_eq!(key, "MYH7");
            } else {
                assert_eq!(key, &format!("'{original}"), "{safe}");
            }
            // Numbers are typed: a negative count stays a number.
            assert_eq!(n, "-5");
        }
        let mut raw = Vec::new();
        write_table(&schema, &[batch], Format::Csv, Cells::Raw, &mut raw).expect("csv");
        assert!(
            String::from_utf8(raw)
                .expect("utf-8")
                .contains("\n@SUM(A1),")
        );
    }
}
