//! Case files: the steward-readable format of the validation and attack suites.
//!
//! A case is a verdict line, then one or more lines of SQL, then optionally an expected
//! table, then a blank line (or the end of the file). Lines starting with `#` between
//! cases are comments; inside a case every line belongs to it. The verdict's words are up
//! to the suite that reads it (`accepted`, `released`, `suppressed`, `refused <rule>`,
//! `same`).
//!
//! An expected table is the merged table the question must produce. It starts with a
//! line that is just `expect:`, then a header row of column names, then one line per row;
//! cells are separated by `|` and trimmed, `NULL` stands for a null, and the table ends
//! with the case. A header without rows expects an empty table. What the table is checked
//! against is up to the suite that reads it; a refused case has no table, so an
//! expectation on a `refused …` verdict is an error:
//!
//! ```text
//! # Patients by sex, over every site.
//! released
//! SELECT p.sex, COUNT(DISTINCT p.pid) AS patients
//! FROM patient p GROUP BY p.sex
//! expect:
//! sex    | patients
//! female | 2634
//! male   | 2752
//! ```
//!
//! [`parse`] reports a malformed file (a row with more or fewer cells than the header, a
//! table on a refused case, a case without SQL) as a [`CaseFileError`] naming the line.

use std::fmt;

/// One case of a case file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Line of the verdict in the file (from 1).
    pub line: usize,
    /// The verdict line, trimmed.
    pub verdict: String,
    /// The SQL, its lines joined with newlines.
    pub sql: String,
    /// The table the question must produce, when the case states one.
    pub expected: Option<ExpectedTable>,
}

/// A case's expected result: column names and rows, every cell as the text written in
/// the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTable {
    /// Line of the `expect:` marker in the file (from 1).
    pub line: usize,
    /// The header row: the result's column names, in order.
    pub columns: Vec<String>,
    /// The rows, in file order; each has one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl ExpectedTable {
    /// The marker line that starts an expected table.
    pub const MARKER: &'static str = "expect:";

    /// A table of `columns` and `rows` that does not come from a file (line 0), e.g. an
    /// actual result to show next to an expected one.
    pub fn new(columns: Vec<String>, rows: Vec<Vec<String>>) -> Self {
        Self {
            line: 0,
            columns,
            rows,
        }
    }
}

impl fmt::Display for ExpectedTable {
    /// Writes the table as a case file holds it: the `expect:` marker, then the header
    /// and the rows with their columns aligned, each line ending in a newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut widths: Vec<usize> = self.columns.iter().map(|c| c.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        writeln!(f, "{}", Self::MARKER)?;
        for row in std::iter::once(&self.columns).chain(&self.rows) {
            let last = row.len().saturating_sub(1);
            for (index, cell) in row.iter().enumerate() {
                if index > 0 {
                    f.write_str(" | ")?;
                }
                if index == last {
                    f.write_str(cell)?;
                } else {
                    let width = widths.get(index).copied().unwrap_or(0);
                    write!(f, "{cell:<width$}")?;
                }
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Why a case file could not be read. Every variant names the line (from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaseFileError {
    /// A verdict line with no SQL after it.
    #[error("line {line}: the case has no SQL after its verdict")]
    MissingSql {
        /// Line of the verdict.
        line: usize,
    },
    /// An expected table on a case whose verdict is a refusal.
    #[error("line {line}: a refused case releases no table, so it cannot expect one ({verdict:?})")]
    ExpectationOnRefusal {
        /// Line of the `expect:` marker.
        line: usize,
        /// The case's verdict.
        verdict: String,
    },
    /// An `expect:` marker with no header row after it.
    #[error("line {line}: `expect:` must be followed by a header row of column names")]
    MissingHeader {
        /// Line of the `expect:` marker.
        line: usize,
    },
    /// A header row with an empty column name.
    #[error("line {line}: column {column} of the header has no name")]
    EmptyColumnName {
        /// Line of the header row.
        line: usize,
        /// The column's position (from 1).
        column: usize,
    },
    /// A second `expect:` marker in one case.
    #[error("line {line}: a case has at most one expected table (a second `expect:`)")]
    SecondExpectation {
        /// Line of the second marker.
        line: usize,
    },
    /// A row with more or fewer cells than the header has columns.
    #[error("line {line}: the row has {cells} cells, the header {columns} columns")]
    RaggedRow {
        /// Line of the row.
        line: usize,
        /// Cells in the row.
        cells: usize,
        /// Columns in the header.
        columns: usize,
    },
}

/// The cells of one table line: split on `|` and trimmed.
fn cells(line: &str) -> Vec<String> {
    line.split('|')
        .map(|cell| cell.trim().to_string())
        .collect()
}

/// Whether `line` is the marker that starts an expected table.
fn is_marker(line: &str) -> bool {
    line.trim() == ExpectedTable::MARKER
}

/// Reads the expected table whose marker is on line `marker` from the lines after it,
/// each with its line number.
fn table(marker: usize, lines: &[(usize, &str)]) -> Result<ExpectedTable, CaseFileError> {
    let Some(((header_line, header), rows)) = lines.split_first() else {
        return Err(CaseFileError::MissingHeader { line: marker });
    };
    if is_marker(header) {
        return Err(CaseFileError::SecondExpectation { line: *header_line });
    }
    let columns = cells(header);
    if let Some(index) = columns.iter().position(String::is_empty) {
        return Err(CaseFileError::EmptyColumnName {
            line: *header_line,
            column: index + 1,
        });
    }
    let mut table = ExpectedTable {
        line: marker,
        columns,
        rows: Vec::with_capacity(rows.len()),
    };
    for &(line, text) in rows {
        if is_marker(text) {
            return Err(CaseFileError::SecondExpectation { line });
        }
        let row = cells(text);
        if row.len() != table.columns.len() {
            return Err(CaseFileError::RaggedRow {
                line,
                cells: row.len(),
                columns: table.columns.len(),
            });
        }
        table.rows.push(row);
    }
    Ok(table)
}

/// Parses a case file (see the module documentation for the format).
pub fn parse(text: &str) -> Result<Vec<Case>, CaseFileError> {
    let mut cases = Vec::new();
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l)).peekable();
    while let Some((line, verdict)) = lines.next() {
        let verdict = verdict.trim();
        if verdict.is_empty() || verdict.starts_with('#') {
            continue;
        }
        let mut body = Vec::new();
        while let Some(&(number, next)) = lines.peek() {
            if next.trim().is_empty() {
                break;
            }
            body.push((number, next));
            lines.next();
        }
        let marker = body.iter().position(|(_, text)| is_marker(text));
        let (sql, rest) = body.split_at(marker.unwrap_or(body.len()));
        if sql.is_empty() {
            return Err(CaseFileError::MissingSql { line });
        }
        let expected = match rest.split_first() {
            None => None,
            Some((&(marker_line, _), table_lines)) => {
                if verdict.split_whitespace().next() == Some("refused") {
                    return Err(CaseFileError::ExpectationOnRefusal {
                        line: marker_line,
                        verdict: verdict.to_string(),
                    });
                }
                Some(table(marker_line, table_lines)?)
            }
        };
        cases.push(Case {
            line,
            verdict: verdict.to_string(),
            sql: sql
                .iter()
                .map(|(_, text)| *text)
                .collect::<Vec<_>>()
                .join("\n"),
            expected,
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<Case> {
        parse(text).expect("a well-formed case file")
    }

    #[test]
    fn cases_are_split_on_blank_lines_and_comments_skipped() {
        let text =
            "# intro\n\nrefused pid-use\nSELECT pid\nFROM patient\n\n# next\naccepted\nSELECT 1\n";
        let cases = parsed(text);
        assert_eq!(cases.len(), 2);
        assert_eq!(
            cases[0],
            Case {
                line: 3,
                verdict: "refused pid-use".into(),
                sql: "SELECT pid\nFROM patient".into(),
                expected: None,
            }
        );
        assert_eq!((cases[1].line, cases[1].verdict.as_str()), (8, "accepted"));
        assert_eq!(cases[1].expected, None);
    }

    #[test]
    fn an_expected_table_follows_the_sql() {
        let text = "accepted\nSELECT sex, COUNT(*) AS n\nFROM patient GROUP BY sex\nexpect:\nsex | n\nfemale | 12\n  male|NULL  \n\nreleased\nSELECT 1 AS one\n  expect:  \none\n";
        let cases = parsed(text);
        assert_eq!(cases.len(), 2);
        assert_eq!(
            cases[0].sql,
            "SELECT sex, COUNT(*) AS n\nFROM patient GROUP BY sex"
        );
        assert_eq!(
            cases[0].expected,
            Some(ExpectedTable {
                line: 4,
                columns: vec!["sex".into(), "n".into()],
                rows: vec![
                    vec!["female".into(), "12".into()],
                    vec!["male".into(), "NULL".into()]
                ],
            })
        );
        // A header without rows expects an empty table.
        assert_eq!(cases[1].sql, "SELECT 1 AS one");
        assert_eq!(
            cases[1].expected,
            Some(ExpectedTable {
                line: 11,
                columns: vec!["one".into()],
                rows: vec![],
            })
        );
    }

    #[test]
    fn a_table_written_out_reads_back_the_same() {
        let table = ExpectedTable::new(
            vec!["code".into(), "mean_delay".into(), "patients".into()],
            vec![
                vec!["ORPHA:154".into(), "7.25".into(), "812".into()],
                vec!["ORPHA:217569".into(), "NULL".into(), "1274".into()],
            ],
        );
        let text = format!("released\nSELECT 1\n{table}");
        assert!(text.contains("ORPHA:154    | 7.25       | 812\n"), "{text}");
        let cases = parsed(&text);
        let read = cases[0].expected.clone().expect("a table");
        assert_eq!((read.columns, read.rows), (table.columns, table.rows));
    }

    #[test]
    fn malformed_files_are_errors_that_name_the_line() {
        let cases: &[(&str, CaseFileError)] = &[
            (
                "released\nSELECT 1\nexpect:\na | b\n1 | 2\n1 | 2 | 3\n",
                CaseFileError::RaggedRow {
                    line: 6,
                    cells: 3,
                    columns: 2,
                },
            ),
            (
                "released\nSELECT 1\nexpect:\na | b\n1\n",
                CaseFileError::RaggedRow {
                    line: 5,
                    cells: 1,
                    columns: 2,
                },
            ),
            (
                "# c\n\nrefused pid-use\nSELECT pid FROM patient\nexpect:\npid\nx\n",
                CaseFileError::ExpectationOnRefusal {
                    line: 5,
                    verdict: "refused pid-use".into(),
                },
            ),
            (
                "accepted\nSELECT 1\nexpect:\n\naccepted\nSELECT 2\n",
                CaseFileError::MissingHeader { line: 3 },
            ),
            (
                "accepted\nSELECT 1\nexpect:\na | | c\n",
                CaseFileError::EmptyColumnName { line: 4, column: 2 },
            ),
            (
                "accepted\nSELECT 1\nexpect:\na\n1\nexpect:\na\n",
                CaseFileError::SecondExpectation { line: 6 },
            ),
            (
                "accepted\nexpect:\na\n1\n",
                CaseFileError::MissingSql { line: 1 },
            ),
            (
                "accepted\nSELECT 1\n\nreleased\n\n",
                CaseFileError::MissingSql { line: 4 },
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(text);
            assert_eq!(&error, expected, "{text}");
            let message = error.to_string();
            assert!(message.starts_with("line "), "{message}");
        }
    }
}
