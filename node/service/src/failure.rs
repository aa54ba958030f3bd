//! What kind of failure a node reports: a category that reveals no value.
//!
//! A researcher whose question failed at a site needs to know what to change (a type
//! error is theirs to fix; a store that is down is the site's), but the failure's own
//! text may quote data (`Cannot cast string 'Smith' to Int32`). So the node sends only a
//! fixed category and a reference; the full text stays in its audit log, where the
//! site's steward reads it with `ern node audit show REF`.

use arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use ern_proto::failure;

/// The kinds of failure and resource refusal a node tells the coordinator about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCategory {
    /// The question ran longer than the site's time limit.
    TimeLimit,
    /// The question needed more memory than the site's limit.
    MemoryLimit,
    /// The question released more groups than the site's cap.
    OutputCap,
    /// A cast or type error at run time (a value that does not convert, a division by
    /// zero): the question's to fix.
    TypeError,
    /// The store could not be read (missing, moved or unreadable files): the site's to fix.
    StoreUnavailable,
    /// Anything else: the site's steward reads the detail in the audit log.
    Internal,
}

impl FailureCategory {
    /// The stable name sent to the coordinator and shown by `ern status`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureCategory::TimeLimit => failure::TIME_LIMIT,
            FailureCategory::MemoryLimit => failure::MEMORY_LIMIT,
            FailureCategory::OutputCap => failure::OUTPUT_CAP,
            FailureCategory::TypeError => failure::TYPE_ERROR,
            FailureCategory::StoreUnavailable => failure::STORE_UNAVAILABLE,
            FailureCategory::Internal => failure::INTERNAL,
        }
    }

    /// The category of a DataFusion error met while planning or running a question.
    pub fn of_datafusion(error: &DataFusionError) -> Self {
        match error.find_root() {
            DataFusionError::ResourcesExhausted(_) => FailureCategory::MemoryLimit,
            DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => {
                FailureCategory::StoreUnavailable
            }
            DataFusionError::ParquetError(_) => FailureCategory::StoreUnavailable,
            DataFusionError::ArrowError(arrow, _) => Self::of_arrow(arrow),
            DataFusionError::SchemaError(..) | DataFusionError::Plan(_) => {
                FailureCategory::TypeError
            }
            DataFusionError::Execution(message) if message.to_lowercase().contains("cast") => {
                FailureCategory::TypeError
            }
            _ => FailureCategory::Internal,
        }
    }

    fn of_arrow(error: &ArrowError) -> Self {
        match error {
            ArrowError::CastError(_)
            | ArrowError::ParseError(_)
            | ArrowError::DivideByZero
            | ArrowError::ArithmeticOverflow(_)
            | ArrowError::InvalidArgumentError(_)
            | ArrowError::ComputeError(_) => FailureCategory::TypeError,
            ArrowError::MemoryError(_) => FailureCategory::MemoryLimit,
            ArrowError::IoError(..) | ArrowError::ParquetError(_) => {
                FailureCategory::StoreUnavailable
            }
            _ => FailureCategory::Internal,
        }
    }
}

impl std::fmt::Display for FailureCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_time_errors_fall_into_categories_that_name_no_value() {
        let cast = DataFusionError::ArrowError(
            Box::new(ArrowError::CastError(
                "Cannot cast string 'Smith' to Int32".into(),
            )),
            None,
        );
        assert_eq!(
            FailureCategory::of_datafusion(&cast),
            FailureCategory::TypeError
        );
        let wrapped = DataFusionError::Context("running".into(), Box::new(cast));
        assert_eq!(
            FailureCategory::of_datafusion(&wrapped),
            FailureCategory::TypeError
        );
        let missing = DataFusionError::IoError(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "diagnosis.parquet",
        ));
        assert_eq!(
            FailureCategory::of_datafusion(&missing),
            FailureCategory::StoreUnavailable
        );
        assert_eq!(
            FailureCategory::of_datafusion(&DataFusionError::ResourcesExhausted("pool".into())),
            FailureCategory::MemoryLimit
        );
        assert_eq!(
            FailureCategory::of_datafusion(&DataFusionError::Internal("bug".into())),
            FailureCategory::Internal
        );
        for category in [
            FailureCategory::TimeLimit,
            FailureCategory::MemoryLimit,
            FailureCategory::OutputCap,
            FailureCategory::TypeError,
            FailureCategory::StoreUnavailable,
            FailureCategory::Internal,
        ] {
            assert!(
                category
                    .as_str()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'-')
            );
            // The coordinator accepts exactly these names.
            assert!(failure::CATEGORIES.contains(&category.as_str()));
        }
    }
}
