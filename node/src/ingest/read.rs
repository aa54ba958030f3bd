//! Reading one export CSV file into string columns, with every row's line number.
//!
//! Two readers look at each file, each for what it does best. A structural pass with the
//! `csv` crate checks the RFC 4180 shape (valid UTF-8, every row as wide as the header)
//! and records the line each row starts on, so an error points at the file's own line even
//! when quoted cells span lines. polars then parses the cells into columns in parallel.
//! The two must agree on the number of rows, or the file is refused as ambiguous.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use polars::prelude::{CsvReadOptions, SerReader, StringChunked};

use super::error::{IngestError, RowErrors};
use crate::export::ExportFile;

/// One export file, parsed into columns of strings.
#[derive(Debug)]
pub(crate) struct RawFile {
    /// Which export file this is.
    pub(crate) file: ExportFile,
    /// Columns present in the header, by their spec name.
    columns: HashMap<&'static str, StringChunked>,
    /// The line (header = 1) on which each data row starts.
    row_lines: Vec<u64>,
    /// Size of the file in bytes.
    pub(crate) bytes: u64,
}

impl RawFile {
    /// An empty stand-in for an optional file that is absent.
    pub(crate) fn absent(file: ExportFile) -> Self {
        RawFile {
            file,
            columns: HashMap::new(),
            row_lines: Vec::new(),
            bytes: 0,
        }
    }

    /// Number of data rows.
    pub(crate) fn rows(&self) -> usize {
        self.row_lines.len()
    }

    /// The file's own line number of a data row.
    pub(crate) fn line(&self, row: usize) -> u64 {
        self.row_lines.get(row).copied().unwrap_or(0)
    }

    /// Whether the header has this column.
    pub(crate) fn has(&self, column: &str) -> bool {
        self.columns.contains_key(column)
    }

    /// The cells of one column, row by row; empty cells (and absent columns) are `None`.
    pub(crate) fn cells<'a>(
        &'a self,
        column: &str,
    ) -> Box<dyn Iterator<Item = Option<&'a str>> + 'a> {
        match self.columns.get(column) {
            Some(values) => Box::new(
                values
                    .iter()
                    .map(|cell| cell.filter(|text| !text.is_empty())),
            ),
            None => Box::new(std::iter::repeat_n(None, self.rows())),
        }
    }
}

/// Reads `file` from the export directory. `Ok(None)` when an optional file is absent.
pub(crate) fn read_export_file(
    dir: &Path,
    file: ExportFile,
    errors: &mut RowErrors,
) -> Result<Option<RawFile>, IngestError> {
    let path = dir.join(file.file_name());
    if !path.exists() {
        return if file == ExportFile::Patient {
            Err(IngestError::MissingPatientFile {
                dir: dir.to_path_buf(),
            })
        } else {
            Ok(None)
        };
    }
    let bytes = std::fs::metadata(&path)
        .map_err(|source| IngestError::io(&path, source))?
        .len();
    let Some(shape) = scan_structure(&path, file, errors)? else {
        return Ok(None);
    };
    if errors.count_for(file) > 0 {
        // A malformed file is reported structurally; its cells are not worth reading.
        return Ok(None);
    }
    let columns = read_columns(&path, file, &shape)?;
    Ok(Some(RawFile {
        file,
        columns,
        row_lines: shape.row_lines,
        bytes,
    }))
}

/// What the structural pass learned.
struct Shape {
    header: Vec<&'static str>,
    row_lines: Vec<u64>,
}

fn scan_structure(
    path: &Path,
    file: ExportFile,
    errors: &mut RowErrors,
) -> Result<Option<Shape>, IngestError> {
    let name = file.file_name();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_path(path)
        .map_err(|e| IngestError::csv(path, e))?;
    let mut record = csv::ByteRecord::new();
    if !reader
        .read_byte_record(&mut record)
        .map_err(|e| IngestError::csv(path, e))?
    {
        errors.push_row(
            file,
            1,
            None,
            "the file is empty: a header row is required".into(),
        );
        return Ok(None);
    }
    let Some(header) = check_header(file, &record, errors) else {
        return Ok(None);
    };
    let width = record.len();
    let mut row_lines = Vec::new();
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => {
                let line = e.position().map_or(0, csv::Position::line);
                errors.push_row(
                    file,
                    line,
                    None,
                    "the row is not valid CSV (RFC 4180)".into(),
                );
                return Ok(None);
            }
        }
        let line = record.position().map_or(0, csv::Position::line);
        if record.len() != width {
            errors.push_row(
                file,
                line,
                None,
                format!(
                    "the row has {} cells but the header has {width}",
                    record.len()
                ),
            );
        } else if std::str::from_utf8(record.as_slice()).is_err() {
            errors.push_row(file, line, None, "the row is not valid UTF-8".into());
        }
        row_lines.push(line);
    }
    tracing::debug!(file = name, rows = row_lines.len(), "structure checked");
    Ok(Some(Shape { header, row_lines }))
}

/// Checks header names against the spec: unknown, duplicated and missing required columns.
fn check_header(
    file: ExportFile,
    record: &csv::ByteRecord,
    errors: &mut RowErrors,
) -> Option<Vec<&'static str>> {
    let before = errors.count_for(file);
    let mut header = Vec::with_capacity(record.len());
    for (index, raw) in record.iter().enumerate() {
        let position = format!("#{}", index + 1);
        let Ok(name) = std::str::from_utf8(raw) else {
            errors.push_row(
                file,
                1,
                Some(position),
                "the column name is not valid UTF-8".into(),
            );
            continue;
        };
        // A UTF-8 byte order mark may precede the first name.
        let name = if index == 0 {
            name.trim_start_matches('\u{feff}')
        } else {
            name
        };
        match file.column(name) {
            Some(spec) if header.contains(&spec.name) => {
                errors.push_row(
                    file,
                    1,
                    Some(spec.name.to_string()),
                    "the column appears twice in the header".into(),
                );
            }
            Some(spec) => header.push(spec.name),
            None => {
                let shown = if printable_name(name) {
                    name.to_string()
                } else {
                    position
                };
                errors.push_row(
                    file,
                    1,
                    Some(shown),
                    format!(
                        "unknown column; {} has only: {}",
                        file.file_name(),
                        column_list(file)
                    ),
                );
            }
        }
    }
    for spec in file.columns().iter().filter(|c| c.required) {
        if !header.contains(&spec.name) {
            errors.push_row(
                file,
                1,
                Some(spec.name.to_string()),
                "required column is missing from the header".into(),
            );
        }
    }
    (errors.count_for(file) == before).then_some(header)
}

fn printable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && crate::export::values::is_printable(name)
}

fn column_list(file: ExportFile) -> String {
    file.columns()
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn read_columns(
    path: &Path,
    file: ExportFile,
    shape: &Shape,
) -> Result<HashMap<&'static str, StringChunked>, IngestError> {
    let polars_error = |e: polars::prelude::PolarsError| IngestError::Parse {
        path: PathBuf::from(path),
        message: e.to_string(),
    };
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_rechunk(true)
        .try_into_reader_with_file_path(Some(path.to_path_buf()))
        .map_err(polars_error)?
        .finish()
        .map_err(polars_error)?;
    if frame.height() != shape.row_lines.len() {
        return Err(IngestError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{} rows by one CSV reader and {} by another; check quoting and line ends",
                shape.row_lines.len(),
                frame.height()
            ),
        });
    }
    let mut columns = HashMap::with_capacity(shape.header.len());
    for (index, name) in shape.header.iter().enumerate() {
        let column = frame
            .columns()
            .get(index)
            .ok_or_else(|| IngestError::Parse {
                path: path.to_path_buf(),
                message: format!("column {name} was not parsed"),
            })?;
        let values = column.str().map_err(polars_error)?.clone();
        columns.insert(*name, values);
    }
    tracing::debug!(file = file.file_name(), "columns parsed");
    Ok(columns)
}
