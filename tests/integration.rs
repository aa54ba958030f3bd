//! The crate's integration tests, linked into one test binary: each module below was
//! its own binary once, and every one of them linked all of DataFusion again.

mod cli;
mod credentials;
mod harness;
mod network;
mod node_files;
mod operations;
mod privacy;
mod quickstart;
mod secure_aggregation;
mod secure_privacy;
mod studies;
mod workflow;
