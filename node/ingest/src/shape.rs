//! The record structure of an RFC 4180 file: on which line each record starts and how
//! many cells it has, or where the file stops being RFC 4180.
//!
//! Ingest reports every error with the file's own line number (header = line 1), so it
//! must know where each record starts even when quoted cells span lines, when lines end
//! in CRLF, or when blank lines sit between records. The `csv` crate's record positions
//! are off in the last two cases (a CRLF file's rows come out one line early), hence this
//! scanner. It is also the fast part of reading: a line without quotes is one `memchr`
//! for its end and one vectorised count of its commas.
//!
//! Stricter than common CSV readers, on purpose: a quote inside an unquoted cell, text
//! after a closing quote and a carriage return not followed by a line feed are refused.
//! Readers disagree on them, and an ingest must never guess what a row meant.

use std::borrow::Cow;
use std::ops::Range;

/// Where a file breaks RFC 4180, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// The file's own line number (1 = first line).
    pub(crate) line: u64,
    /// What is wrong, in words (never the cell's content).
    pub(crate) problem: &'static str,
}

/// One record: the line it starts on and how many cells it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordShape {
    /// The file's own line number of the record's first character.
    pub(crate) line: u64,
    /// Number of cells.
    pub(crate) cells: usize,
}

const UNCLOSED_QUOTE: &str = "a quoted cell is not closed (RFC 4180)";
const TEXT_AFTER_QUOTE: &str =
    "text follows a closing quote; a quote inside a quoted cell is written twice (RFC 4180)";
const QUOTE_IN_UNQUOTED: &str =
    "a quote inside an unquoted cell; quote the cell and write the quote twice (RFC 4180)";
const LONE_CARRIAGE_RETURN: &str = "a carriage return not followed by a line feed";

/// Scans the records of `bytes`, calling `on_record` with each record's shape and bytes
/// (without its line end). Blank lines are not records; their byte ranges are returned,
/// so that a reader that would make a row of them can be given the file without them.
/// Stops at the first structural error.
pub(crate) fn scan_records(
    bytes: &[u8],
    mut on_record: impl FnMut(RecordShape, &[u8]),
) -> Result<Vec<Range<usize>>, Malformed> {
    check_carriage_returns(bytes)?;
    let has_quotes = memchr::memchr(b'"', bytes).is_some();
    let mut scanner = Scanner {
        bytes,
        position: 0,
        line: 1,
    };
    let mut blank_lines = Vec::new();
    while scanner.position < bytes.len() {
        let start = scanner.position;
        if scanner.skip_line_end() {
            blank_lines.push(start..scanner.position);
            continue;
        }
        let line = scanner.line;
        let (cells, end) = scanner.record(has_quotes)?;
        on_record(RecordShape { line, cells }, &bytes[start..end]);
    }
    Ok(blank_lines)
}

/// `bytes` without the byte ranges of `blank_lines` (sorted, as [`scan_records`] gives).
pub(crate) fn without_blank_lines(bytes: &[u8], blank_lines: &[Range<usize>]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(bytes.len());
    let mut from = 0;
    for blank in blank_lines {
        kept.extend_from_slice(bytes.get(from..blank.start).unwrap_or_default());
        from = blank.end;
    }
    kept.extend_from_slice(bytes.get(from..).unwrap_or_default());
    kept
}

/// Every carriage return must end a line (CRLF).
fn check_carriage_returns(bytes: &[u8]) -> Result<(), Malformed> {
    for at in memchr::memchr_iter(b'\r', bytes) {
        if bytes.get(at + 1) != Some(&b'\n') {
            return Err(Malformed {
                line: line_of(bytes, at),
                problem: LONE_CARRIAGE_RETURN,
            });
        }
    }
    Ok(())
}

/// The line number of byte `at`.
fn line_of(bytes: &[u8], at: usize) -> u64 {
    1 + line_ends(bytes.get(..at).unwrap_or(bytes))
}

/// The number of line ends in `bytes`.
pub(crate) fn line_ends(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

struct Scanner<'a> {
    bytes: &'a [u8],
    position: usize,
    line: u64,
}

impl Scanner<'_> {
    /// Consumes a line end at the current position, if there is one.
    fn skip_line_end(&mut self) -> bool {
        let width = match self.bytes.get(self.position..) {
            Some([b'\n', ..]) => 1,
            Some([b'\r', b'\n', ..]) => 2,
            _ => return false,
        };
        self.position += width;
        self.line += 1;
        true
    }

    /// Reads one record from the current position; returns its cell count and the end of
    /// its bytes (before the line end, which is consumed).
    fn record(&mut self, has_quotes: bool) -> Result<(usize, usize), Malformed> {
        let rest = &self.bytes[self.position..];
        let line_length = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let text = &rest[..line_length];
        if !has_quotes || memchr::memchr(b'"', text).is_none() {
            let cells = 1 + text.iter().filter(|&&b| b == b',').count();
            let end = self.position + text.strip_suffix(b"\r").unwrap_or(text).len();
            self.position += line_length;
            self.skip_line_end();
            return Ok((cells, end));
        }
        self.quoted_record()
    }

    /// The cell-by-cell reading of a record that holds quotes.
    fn quoted_record(&mut self) -> Result<(usize, usize), Malformed> {
        let mut cells = 1;
        loop {
            if self.bytes.get(self.position) == Some(&b'"') {
                self.quoted_cell()?;
                match self.bytes.get(self.position) {
                    None => return Ok((cells, self.position)),
                    Some(b',') => {
                        self.position += 1;
                        cells += 1;
                        continue;
                    }
                    Some(_) => {
                        let end = self.position;
                        if self.skip_line_end() {
                            return Ok((cells, end));
                        }
                        return Err(self.malformed(TEXT_AFTER_QUOTE));
                    }
                }
            }
            let rest = &self.bytes[self.position..];
            match memchr::memchr3(b',', b'\n', b'"', rest) {
                None => {
                    self.position = self.bytes.len();
                    return Ok((cells, self.position));
                }
                Some(offset) => {
                    self.position += offset;
                    match rest[offset] {
                        b',' => {
                            self.position += 1;
                            cells += 1;
                        }
                        b'"' => return Err(self.malformed(QUOTE_IN_UNQUOTED)),
                        _ => {
                            let end =
                                if self.bytes.get(self.position.wrapping_sub(1)) == Some(&b'\r') {
                                    self.position - 1
                                } else {
                                    self.position
                                };
                            self.position += 1;
                            self.line += 1;
                            return Ok((cells, end));
                        }
                    }
                }
            }
        }
    }

    /// Consumes a quoted cell from its opening quote to its closing quote.
    fn quoted_cell(&mut self) -> Result<(), Malformed> {
        let opened_on = self.line;
        self.position += 1;
        loop {
            let rest = &self.bytes[self.position..];
            let Some(offset) = memchr::memchr2(b'"', b'\n', rest) else {
                return Err(Malformed {
                    line: opened_on,
                    problem: UNCLOSED_QUOTE,
                });
            };
            self.position += offset + 1;
            if rest[offset] == b'\n' {
                self.line += 1;
            } else if self.bytes.get(self.position) == Some(&b'"') {
                self.position += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn malformed(&self, problem: &'static str) -> Malformed {
        Malformed {
            line: self.line,
            problem,
        }
    }
}

/// The cells of one record as [`scan_records`] passed it: quotes removed, doubled quotes
/// made single. For the header; data cells are parsed by polars.
pub(crate) fn split_cells(record: &[u8]) -> Vec<Cow<'_, [u8]>> {
    let mut cells = Vec::new();
    let mut rest = record;
    loop {
        if let Some(quoted) = rest.strip_prefix(b"\"") {
            let mut value = Vec::new();
            let mut at = 0;
            while at < quoted.len() {
                if quoted[at] == b'"' {
                    if quoted.get(at + 1) == Some(&b'"') {
                        value.push(b'"');
                        at += 2;
                        continue;
                    }
                    at += 1;
                    break;
                }
                value.push(quoted[at]);
                at += 1;
            }
            cells.push(Cow::Owned(value));
            rest = &quoted[at.min(quoted.len())..];
            match rest.strip_prefix(b",") {
                Some(next) => rest = next,
                None => return cells,
            }
        } else {
            match memchr::memchr(b',', rest) {
                Some(comma) => {
                    cells.push(Cow::Borrowed(&rest[..comma]));
                    rest = &rest[comma + 1..];
                }
                None => {
                    cells.push(Cow::Borrowed(rest));
                    return cells;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shapes(text: &str) -> Result<Vec<(u64, usize)>, Malformed> {
        let mut out = Vec::new();
        scan_records(text.as_bytes(), |shape, _| {
            out.push((shape.line, shape.cells))
        })?;
        Ok(out)
    }

    #[test]
    fn lines_are_the_files_own_with_lf_crlf_and_blank_lines() {
        let expected = vec![(1, 2), (2, 2), (3, 2)];
        assert_eq!(shapes("a,b\n1,2\n3,4\n"), Ok(expected.clone()));
        assert_eq!(shapes("a,b\r\n1,2\r\n3,4\r\n"), Ok(expected.clone()));
        assert_eq!(shapes("a,b\n1,2\n3,4"), Ok(expected));
        assert_eq!(
            shapes("a,b\n\n\n1,2\r\n\r\n3,4\n\n"),
            Ok(vec![(1, 2), (4, 2), (6, 2)])
        );
    }

    #[test]
    fn blank_lines_are_cut_out_for_other_readers() {
        let text = b"a,b\n\n1,2\r\n\r\n3,4\n\n".to_vec();
        let blank = scan_records(&text, |_, _| {}).expect("valid");
        assert_eq!(blank, vec![4..5, 10..12, 16..17]);
        assert_eq!(without_blank_lines(&text, &blank), b"a,b\n1,2\r\n3,4\n");
    }

    #[test]
    fn quoted_cells_span_lines_and_hold_commas_and_quotes() {
        assert_eq!(
            shapes("a,b\n\"x\ny\",2\n\"p,q\",\"say \"\"hi\"\"\"\r\n3,4\n"),
            Ok(vec![(1, 2), (2, 2), (4, 2), (5, 2)])
        );
        assert_eq!(shapes("a,b\n\"\",\n"), Ok(vec![(1, 2), (2, 2)]));
        assert_eq!(shapes("a\n\"last\""), Ok(vec![(1, 1), (2, 1)]));
    }

    #[test]
    fn widths_are_counted_per_record() {
        assert_eq!(
            shapes("a,b,c\n1,2\n1,2,3,4\n,,\n \n"),
            Ok(vec![(1, 3), (2, 2), (3, 4), (4, 3), (5, 1)])
        );
    }

    #[test]
    fn structural_errors_name_the_line() {
        let error = |text: &str| shapes(text).expect_err(text);
        assert_eq!(
            error("a,b\n1,2\n\"open,2\n3,4\n"),
            Malformed {
                line: 3,
                problem: UNCLOSED_QUOTE
            }
        );
        assert_eq!(error("a,b\n1,\"x\"y\n").problem, TEXT_AFTER_QUOTE);
        assert_eq!(error("a,b\n1,\"x\"y\n").line, 2);
        assert_eq!(error("a,b\n1,2\n1,x\"y\n").line, 3);
        assert_eq!(error("a,b\n1,2\n1,x\"y\n").problem, QUOTE_IN_UNQUOTED);
        assert_eq!(
            error("a,b\n1,2\r3,4\n"),
            Malformed {
                line: 2,
                problem: LONE_CARRIAGE_RETURN
            }
        );
    }

    #[test]
    fn header_cells_are_unquoted() {
        let cells = |text: &str| -> Vec<String> {
            split_cells(text.as_bytes())
                .iter()
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect()
        };
        assert_eq!(cells("a,b,c"), ["a", "b", "c"]);
        assert_eq!(cells("\"a\",b,\"c,d\""), ["a", "b", "c,d"]);
        assert_eq!(cells("\"say \"\"x\"\"\",,"), ["say \"x\"", "", ""]);
    }

    #[test]
    fn agrees_with_the_csv_crate_on_cells_where_its_lines_are_right() {
        let text = "local_id,note\nP1,\"a, b\"\nP2,\"multi\nline\"\nP3,\"\"\"q\"\"\"\nP4,\n";
        let mut ours = Vec::new();
        scan_records(text.as_bytes(), |shape, record| {
            ours.push((
                shape,
                split_cells(record)
                    .iter()
                    .map(|c| c.to_vec())
                    .collect::<Vec<_>>(),
            ))
        })
        .expect("valid");
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        let theirs: Vec<(u64, Vec<Vec<u8>>)> = reader
            .byte_records()
            .map(|r| {
                let r = r.expect("valid");
                (
                    r.position().map_or(0, csv::Position::line),
                    r.iter().map(<[u8]>::to_vec).collect(),
                )
            })
            .collect();
        assert_eq!(ours.len(), theirs.len());
        for ((shape, cells), (line, their_cells)) in ours.iter().zip(&theirs) {
            assert_eq!(shape.line, *line);
            assert_eq!(shape.cells, their_cells.len());
            assert_eq!(cells, their_cells);
        }
    }
}
