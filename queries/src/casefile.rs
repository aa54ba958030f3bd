//! Case files: the steward-readable format of the validation and attack suites.
//!
//! A case is a verdict line, then one or more lines of SQL, then a blank line. Lines
//! starting with `#` are comments. The verdict's words are up to the suite that reads it
//! (`accepted`, `released`, `suppressed`, `refused <rule>`).

/// One case of a case file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// Line of the verdict in the file (from 1).
    pub line: usize,
    /// The verdict line, trimmed.
    pub verdict: String,
    /// The SQL, its lines joined with newlines.
    pub sql: String,
}

/// Parses a case file.
pub fn parse(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut lines = text.lines().enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut sql = Vec::new();
        while let Some((_, next)) = lines.peek() {
            if next.trim().is_empty() {
                break;
            }
            sql.push(next.to_string());
            lines.next();
        }
        cases.push(Case {
            line: index + 1,
            verdict: line.to_string(),
            sql: sql.join("\n"),
        });
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_are_split_on_blank_lines_and_comments_skipped() {
        let text =
            "# intro\n\nrefused pid-use\nSELECT pid\nFROM patient\n\n# next\naccepted\nSELECT 1\n";
        let cases = parse(text);
        assert_eq!(cases.len(), 2);
        assert_eq!(
            cases[0],
            Case {
                line: 3,
                verdict: "refused pid-use".into(),
                sql: "SELECT pid\nFROM patient".into()
            }
        );
        assert_eq!((cases[1].line, cases[1].verdict.as_str()), (8, "accepted"));
    }
}
