//! Writing a result table in the format a researcher asked for: a terminal table, CSV,
//! JSON (an array of objects), Parquet or an Arrow IPC file.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
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

/// Writes `batches` (of `schema`) as `format` to `out`.
pub(crate) fn write_table(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
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
                writer.write(batch)?;
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
            write_table(schema, batches, format, file.as_file_mut())?;
            file.persist(path)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(())
        }
        None => {
            let stdout = std::io::stdout();
            let mut lock = stdout.lock();
            write_table(schema, batches, format, &mut lock)
        }
    }
}
