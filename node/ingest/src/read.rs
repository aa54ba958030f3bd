//! Reading one export CSV file into string columns, with every row's line number.
//!
//! Two readers look at each file, each for what it does best. A structural pass
//! ([`super::shape`]) checks the RFC 4180 shape (valid UTF-8, every row as wide as the
//! header) and records the line each row starts on, so an error points at the file's own
//! line even when quoted cells span lines or lines end in CRLF. polars then parses the
//! cells into columns in parallel. The two must agree on the number of rows, or the file
//! is refused as ambiguous.

use std::collections::HashMap;
use std::fs::File;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use polars::prelude::{CsvReadOptions, SerReader, StringChunked};
use polars_arrow::array::{Array, Utf8ViewArray};
use polars_arrow::bitmap::Bitmap;
use polars_utils::mmap::MMapSemaphore;

use crate::error::{IngestError, RowErrors};
use crate::export::ExportFile;
use crate::shape;

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

    /// Bytes of text in one column (0 for an absent column): what a string builder of
    /// the column needs to reserve.
    pub(crate) fn text_bytes(&self, column: &str) -> usize {
        self.columns.get(column).map_or(0, |values| {
            values
                .downcast_iter()
                .map(|array| array.total_bytes_len())
                .sum()
        })
    }

    /// The cells of one column, row by row; empty cells (and absent columns) are `None`.
    pub(crate) fn cells<'a>(&'a self, column: &str) -> Cells<'a> {
        match self.columns.get(column) {
            Some(values) => Cells::new(values.chunks(), 0),
            None => Cells::new(&[], self.rows()),
        }
    }
}

/// The cells of one column, chunk after chunk, with empty cells as `None`.
///
/// A plain loop over the chunks' values: the checks and transforms walk tens of millions
/// of cells, and polars' own nested iterators over chunks cost several times more.
#[derive(Debug)]
pub(crate) struct Cells<'a> {
    chunks: std::slice::Iter<'a, Box<dyn Array>>,
    /// The current chunk: its length, values and validity.
    chunk_len: usize,
    strings: Option<&'a Utf8ViewArray>,
    validity: Option<&'a Bitmap>,
    index: usize,
    absent_rows: usize,
}

impl<'a> Cells<'a> {
    fn new(chunks: &'a [Box<dyn Array>], absent_rows: usize) -> Self {
        Cells {
            chunks: chunks.iter(),
            chunk_len: 0,
            strings: None,
            validity: None,
            index: 0,
            absent_rows,
        }
    }
}

impl<'a> Iterator for Cells<'a> {
    type Item = Option<&'a str>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        while self.index >= self.chunk_len {
            match self.chunks.next() {
                Some(chunk) => {
                    self.chunk_len = chunk.len();
                    self.validity = chunk.validity();
                    // Every chunk of a string column is a UTF-8 view array; were one not,
                    // its rows would read as empty rather than shift the rows after it.
                    self.strings = chunk.as_any().downcast_ref::<Utf8ViewArray>();
                    self.index = 0;
                }
                None if self.absent_rows > 0 => {
                    self.absent_rows -= 1;
                    return Some(None);
                }
                None => return None,
            }
        }
        let at = self.index;
        self.index += 1;
        if self.validity.is_some_and(|bits| !bits.get_bit(at)) {
            return Some(None);
        }
        let text = self.strings.map_or("", |strings| strings.value(at));
        Some((!text.is_empty()).then_some(text))
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
    let metadata = std::fs::metadata(&path).map_err(|source| IngestError::io(&path, source))?;
    if !metadata.is_file() {
        return Err(IngestError::NotARegularFile { path });
    }
    let bytes = metadata.len();
    let Some(shape) = scan_structure(&path, file, errors)? else {
        return Ok(None);
    };
    if errors.count_for(file) > 0 {
        // A malformed file is reported structurally; its cells are not worth reading.
        return Ok(None);
    }
    let Shape {
        header,
        row_lines,
        records,
    } = shape;
    let columns = read_columns(&path, file, &header, row_lines.len(), records)?;
    Ok(Some(RawFile {
        file,
        columns,
        row_lines,
        bytes,
    }))
}

/// The bytes of an export file: memory-mapped as read (the structural pass and polars
/// both read them in place, with no copy into fresh memory), or an edited copy.
#[derive(Debug)]
enum FileBytes {
    Mapped(MMapSemaphore),
    Owned(Vec<u8>),
}

impl FileBytes {
    fn open(path: &Path) -> Result<Self, IngestError> {
        let io_error = |source| IngestError::io(path, source);
        let file = File::open(path).map_err(io_error)?;
        if file.metadata().map_err(io_error)?.len() == 0 {
            // An empty file cannot be mapped.
            return Ok(FileBytes::Owned(Vec::new()));
        }
        MMapSemaphore::new_from_file(&file)
            .map(FileBytes::Mapped)
            .map_err(|e| IngestError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
    }
}

impl AsRef<[u8]> for FileBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(mapped) => mapped.as_ref(),
            FileBytes::Owned(bytes) => bytes,
        }
    }
}

/// What the structural pass learned.
struct Shape {
    header: Vec<&'static str>,
    row_lines: Vec<u64>,
    /// The file's bytes without blank lines, which polars would read as rows of nulls.
    records: FileBytes,
}

fn scan_structure(
    path: &Path,
    file: ExportFile,
    errors: &mut RowErrors,
) -> Result<Option<Shape>, IngestError> {
    let contents = FileBytes::open(path)?;
    let bytes = contents.as_ref();
    // The first record is the header; `None` until it is read, `Some(None)` if it is bad.
    let mut header: Option<Option<Vec<&'static str>>> = None;
    let mut width = 0;
    let mut row_lines = Vec::new();
    let scanned = shape::scan_records(bytes, |record, text| match &header {
        None => {
            width = record.cells;
            header = Some(check_header(file, record.line, text, errors));
        }
        Some(Some(_)) => {
            if record.cells != width {
                errors.push_row(
                    file,
                    record.line,
                    None,
                    format!(
                        "the row has {} cells but the header has {width}",
                        record.cells
                    ),
                );
            }
            row_lines.push(record.line);
        }
        Some(None) => {}
    });
    let blank_lines = match scanned {
        Ok(blank_lines) => blank_lines,
        Err(malformed) => {
            errors.push_row(file, malformed.line, None, malformed.problem.into());
            return Ok(None);
        }
    };
    let header = match header {
        None => {
            errors.push_row(
                file,
                1,
                None,
                "the file is empty: a header row is required".into(),
            );
            return Ok(None);
        }
        Some(None) => return Ok(None),
        Some(Some(header)) => header,
    };
    report_invalid_utf8(bytes, file, errors);
    tracing::debug!(
        file = file.file_name(),
        rows = row_lines.len(),
        "structure checked"
    );
    Ok(Some(Shape {
        header,
        row_lines,
        records: if blank_lines.is_empty() {
            contents
        } else {
            FileBytes::Owned(shape::without_blank_lines(bytes, &blank_lines))
        },
    }))
}

/// Reports each line that holds bytes that are not UTF-8.
fn report_invalid_utf8(bytes: &[u8], file: ExportFile, errors: &mut RowErrors) {
    let (mut at, mut line, mut reported_line) = (0, 1, 0);
    while let Some(rest) = bytes.get(at..) {
        let Err(error) = std::str::from_utf8(rest) else {
            return;
        };
        let bad = at + error.valid_up_to();
        line += shape::line_ends(&bytes[at..bad]);
        if line != reported_line {
            errors.push_row(file, line, None, "the row is not valid UTF-8".into());
            reported_line = line;
        }
        // An invalid sequence, or a sequence cut short by the end of the file.
        let skipped = error
            .error_len()
            .unwrap_or(rest.len() - error.valid_up_to());
        let next = bad + skipped.max(1);
        line += shape::line_ends(bytes.get(bad..next).unwrap_or_default());
        at = next;
    }
}

/// Checks header names against the spec: unknown, duplicated and missing required columns.
fn check_header(
    file: ExportFile,
    line: u64,
    record: &[u8],
    errors: &mut RowErrors,
) -> Option<Vec<&'static str>> {
    let before = errors.count_for(file);
    let cells = shape::split_cells(record);
    // A file without its header row starts with data: say so, and echo none of it.
    let names_a_column = cells.iter().any(|raw| {
        std::str::from_utf8(raw)
            .is_ok_and(|name| file.column(name.trim_start_matches('\u{feff}')).is_some())
    });
    if !names_a_column {
        errors.push_row(
            file,
            line,
            None,
            format!(
                "the first line is not a header row: none of its cells names a column of {} ({})",
                file.file_name(),
                column_list(file)
            ),
        );
        return None;
    }
    let mut header = Vec::with_capacity(cells.len());
    for (index, raw) in cells.iter().enumerate() {
        let position = format!("#{}", index + 1);
        let Ok(name) = std::str::from_utf8(raw) else {
            errors.push_row(
                file,
                line,
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
                    line,
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
                    line,
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
                line,
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

/// Parses the cells of `records` (the file's bytes as the structural pass left them) into
/// one string column per header name.
fn read_columns(
    path: &Path,
    file: ExportFile,
    header: &[&'static str],
    rows: usize,
    records: FileBytes,
) -> Result<HashMap<&'static str, StringChunked>, IngestError> {
    let polars_error = |e: polars::prelude::PolarsError| IngestError::Parse {
        path: PathBuf::from(path),
        message: e.to_string(),
    };
    let frame = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_rechunk(false)
        .into_reader_with_file_handle(Cursor::new(records))
        .finish()
        .map_err(polars_error)?;
    if frame.height() != rows {
        return Err(IngestError::Parse {
            path: path.to_path_buf(),
            message: format!(
                "{} rows by one CSV reader and {} by another; check quoting and line ends",
                rows,
                frame.height()
            ),
        });
    }
    let mut columns = HashMap::with_capacity(header.len());
    for (index, name) in header.iter().enumerate() {
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
