//! The one shape of the ids every side exchanges (site, study, user): 1-128 ASCII
//! letters, digits, `-`, `_` and `.`, not starting with `.`. So an id can stand on a line
//! of a signed approval statement and cannot forge another line, cannot redraw a
//! terminal or a log, cannot look like another id (no right-to-left overrides,
//! zero-width or Cyrillic look-alike characters) and cannot name a path (`../`).

/// True for a well-formed id.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_ascii_names() {
        for good in [
            "site-1",
            "ada",
            "node-site_2",
            "q-0a1b2c3d4e5f",
            "h.example",
        ] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in [
            "",
            "../etc",
            ".hidden",
            "a b",
            "evil\u{202e}",
            "zero\u{200b}width",
            "\u{0430}da",
            "line\nbreak",
            "semi;colon",
            &"x".repeat(129),
        ] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }
}
