//! Text that came from another party, made safe to print on a terminal or in a log.
//! (Here, in the crate every side shares, so that refusals, the coordinator's errors and
//! logs and the CLI escape the same characters.)
//!
//! Titles, purposes, SQL, reasons, rule names, versions and ids come from researchers,
//! stewards, nodes or the coordinator. Printed raw, an escape sequence in one of them
//! can redraw the screen (red team: an ANSI sequence hidden in a SQL comment showed a
//! steward a harmless question in place of the one they approved; a reject reason drew
//! a fake "answered" row), and a right-to-left override or a zero-width character can
//! make one text look like another. Every such character is shown as a visible escape.

use std::fmt::Write;

/// True for a character that can move the cursor, change colours, reorder or hide text.
fn is_hazard(c: char) -> bool {
    c.is_control()
        || matches!(c,
            // Unicode's default-ignorable code points (drawn as nothing) and the format
            // characters (general category Cf), line and paragraph separators among them.
            '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
        )
}

fn escaped(text: &str, keep_newlines: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if keep_newlines && c == '\n' {
            out.push('\n');
        } else if is_hazard(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

/// One line of another party's text: every control character (line breaks too),
/// bidirectional override and invisible character as a visible `\u{…}` escape.
pub fn shown(text: &str) -> String {
    escaped(text, false)
}

/// Another party's text of several lines (SQL): as [`shown`], but line breaks stay.
pub fn shown_lines(text: &str) -> String {
    escaped(text, true)
}

/// One line of another party's text as [`shown`], cut to at most `max_chars` characters of
/// the original (the rest is counted, not shown): for error messages and log lines that
/// would otherwise echo a megabyte back.
pub fn shown_bounded(text: &str, max_chars: usize) -> String {
    let total = text.chars().count();
    if total <= max_chars {
        return shown(text);
    }
    let head: String = text.chars().take(max_chars).collect();
    format!("{}… ({} more characters)", shown(&head), total - max_chars)
}

/// A value for a log field: [`shown_bounded`] to 256 characters, so one party cannot
/// forge a log line or fill the log through a name, a version or a message it chose.
pub fn for_log(text: &str) -> String {
    shown_bounded(text, 256)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hostile-string corpus of the red team: escapes, bidi overrides, NUL, a
    /// carriage return, zero-width characters, a long string.
    #[test]
    fn no_raw_control_character_survives() {
        let corpus = [
            "\u{1b}[2K\u{1b}[1Aharmless",
            "a\u{202e}fdp.exe",
            "nul\u{0}byte",
            "back\rspace",
            "zero\u{200b}width",
            "bell\u{7}",
            "csi\u{9b}31m",
            "\u{2066}isolate\u{2069}",
            "tag\u{E0041}\u{E007F}s",
            "line\u{2028}separator\u{2029}",
            "soft\u{AD}hyphen\u{2060}joiner",
            "Sex ratio x\u{FE01}\u{E0101}",
            "arabic\u{0600}\u{06DD}format",
        ];
        for text in corpus {
            let line = shown(text);
            assert!(!line.chars().any(is_hazard), "{line:?}");
            assert!(line.contains("\\u{"), "{line:?}");
        }
        assert_eq!(shown("MYH7 — ORPHA:154"), "MYH7 — ORPHA:154");
        assert_eq!(shown_lines("SELECT 1\nFROM t"), "SELECT 1\nFROM t");
        assert_eq!(shown("a\nb"), "a\\u{a}b");
        let long = "x".repeat(1 << 20);
        assert_eq!(shown(&long).len(), long.len());
        let bounded = shown_bounded(&long, 64);
        assert!(bounded.starts_with(&"x".repeat(64)));
        assert!(bounded.ends_with(&format!("({} more characters)", (1 << 20) - 64)));
        assert_eq!(shown_bounded("a\u{1b}b", 64), "a\\u{1b}b");
        assert!(!for_log(&"\u{202e}".repeat(10_000)).contains('\u{202e}'));
    }
}
