//! The names of the failure categories a node reports and the coordinator accepts.
//!
//! A failure at a site reaches the researcher as a fixed category and a reference,
//! never as the failure's own text (which may quote data). Both sides spell the
//! categories from this one list: the node when it sends one, the coordinator when it
//! checks what a node sent.

/// The question ran longer than the site's time limit.
pub const TIME_LIMIT: &str = "time-limit";
/// The question needed more memory than the site's limit.
pub const MEMORY_LIMIT: &str = "memory-limit";
/// The question released more groups than the site's cap.
pub const OUTPUT_CAP: &str = "output-cap";
/// A cast or type error at run time: the question's to fix.
pub const TYPE_ERROR: &str = "type-error";
/// The site's store could not be read: the site's to fix.
pub const STORE_UNAVAILABLE: &str = "store-unavailable";
/// Anything else: the site's steward reads the detail in the audit log.
pub const INTERNAL: &str = "internal";

/// Every category, as sent on the wire.
pub const CATEGORIES: [&str; 6] = [
    TIME_LIMIT,
    MEMORY_LIMIT,
    OUTPUT_CAP,
    TYPE_ERROR,
    STORE_UNAVAILABLE,
    INTERNAL,
];
