//! What a node says in words (its version, the rule it refused by, a failure reference)
//! is checked before the coordinator keeps or logs it.
//!
//! A node is a party of its own: a compromised or buggy one could send escape sequences
//! that forge a line in the coordinator's log or redraw a researcher's terminal, or a
//! megabyte where a word belongs. Rule names and references have a fixed shape and
//! anything else is replaced by a word saying so; a version is kept escaped and short.

use ern_queries::shown::shown_bounded;

/// Longest rule name or failure reference kept.
const MAX_WORD: usize = 64;

/// Longest software version kept, in characters.
const MAX_VERSION: usize = 64;

/// A word of lowercase ASCII letters, digits and `-` (a rule name, a reference id).
fn is_word(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_WORD
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The rule a node refused by, as kept: its name, or `unreadable-rule`.
pub fn rule_name(text: &str) -> String {
    if is_word(text) {
        text.to_string()
    } else {
        "unreadable-rule".to_string()
    }
}

/// The reference of a node's failure, as kept: the id, or `unreadable-reference`.
pub fn failure_reference(text: &str) -> String {
    if is_word(text) {
        text.to_string()
    } else {
        "unreadable-reference".to_string()
    }
}

/// The category of a node's failure or resource refusal, as kept: one of the known
/// categories, empty when none was given, or `unreadable-category`.
pub fn failure_category(text: &str) -> String {
    if text.is_empty() || ern_proto::failure::CATEGORIES.contains(&text) {
        text.to_string()
    } else {
        "unreadable-category".to_string()
    }
}

/// A node's store generation, as kept: the id, or nothing when it is not a word.
pub fn store_generation(text: &str) -> String {
    if is_word(text) {
        text.to_string()
    } else {
        String::new()
    }
}

/// A node's software version, as kept: escaped and at most 64 characters of it.
pub fn version(text: &str) -> String {
    shown_bounded(text, MAX_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_keep_their_shape_and_nothing_else_passes() {
        assert_eq!(rule_name("minimum-group-size"), "minimum-group-size");
        assert_eq!(rule_name("approval-stale"), "approval-stale");
        for hostile in [
            "",
            "answered\u{1b}[2K",
            "rule\nforged line",
            "x".repeat(65).as_str(),
            "Minimum",
            "a b",
        ] {
            assert_eq!(rule_name(hostile), "unreadable-rule", "{hostile:?}");
            assert_eq!(failure_reference(hostile), "unreadable-reference");
        }
        assert_eq!(failure_reference("f5eab05e12e5222d"), "f5eab05e12e5222d");
        assert_eq!(failure_category("type-error"), "type-error");
        assert_eq!(failure_category(""), "");
        assert_eq!(failure_category("answered\u{1b}[2K"), "unreadable-category");
    }

    #[test]
    fn versions_are_escaped_and_short() {
        assert_eq!(version("0.1.0"), "0.1.0");
        let hostile = version(&format!("0.1\u{1b}]0;x\u{7}{}", "9".repeat(10_000)));
        assert!(!hostile.chars().any(char::is_control), "{hostile:?}");
        assert!(hostile.len() < 200, "{}", hostile.len());
    }
}
