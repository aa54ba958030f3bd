//! The one shape of the ids every side exchanges (site, study, user): 1-128 printable
//! characters without white space, so an id can stand on a line of a signed approval
//! statement and cannot forge another line.

/// True for a well-formed id.
pub fn is_valid_id(id: &str) -> bool {
    (1..=128).contains(&id.chars().count())
        && id.chars().all(|c| !c.is_control() && !c.is_whitespace())
}
