//! The ern coordinator: one per network.
//!
//! It serves researchers, stewards and operators over gRPC, keeps the streams that
//! hospital nodes open to it, and drives each question through its lifecycle (submit →
//! review → execute → merge → read) with its state in embedded SQLite. It is trusted
//! with study metadata and released aggregates only: it never sees a patient row or a
//! pseudonym, and it cannot make or alter an approval (nodes verify those themselves).

pub mod accept;
pub mod auth;
pub mod config;
pub mod core;
pub mod db;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod node_text;
pub mod paging;
pub mod pki;
pub mod server;
pub mod services;

pub use config::{CoordinatorConfig, Transport};
pub use core::{Coordinator, Timing};
pub use db::Db;
