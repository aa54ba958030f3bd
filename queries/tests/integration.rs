//! The crate's integration tests, linked into one test binary: each module below was
//! its own binary once, and every one of them linked all of DataFusion again.

mod bounding;
mod common;
mod depth;
mod domain;
mod fuzz;
mod red_team_functions;
mod red_team_privacy;
mod red_team_public;
mod red_team_secure;
mod red_team_spreads;
mod split_merge;
mod validation;
mod variance;
mod width_bucket;
