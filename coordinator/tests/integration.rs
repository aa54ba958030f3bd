//! The crate's integration tests, linked into one test binary: each module below was
//! its own binary once, and every one of them linked all of DataFusion again.

mod common;
mod hostile_callers;
mod node_stream;
mod plans;
mod state;
mod studies;
mod tls;
