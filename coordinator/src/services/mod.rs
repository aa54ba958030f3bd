//! The gRPC services of `ern.v1`, one module each; they share the [`crate::core`].

mod node_link;
mod operator;
mod researcher;
mod steward;

pub use node_link::NodeLinkService;
pub use operator::OperatorService;
pub use researcher::ResearcherService;
pub use steward::StewardService;
