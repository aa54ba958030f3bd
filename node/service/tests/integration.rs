//! The crate's integration tests, linked into one test binary: each module below was
//! its own binary once, and every one of them linked all of DataFusion again.

mod attacks;
mod audit_store;
mod common;
mod correctness;
mod disclosure;
mod engine;
mod privacy;
mod red_team_privacy;
mod red_team_release;
mod red_team_secure;
mod secure_rounds;
mod total;
