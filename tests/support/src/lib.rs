//! What ern's tests and benchmarks share, so that each is written once.
//!
//! # Role and trust boundary
//! Test scaffolding only: it is never published and no shipped binary links it. It builds
//! real parts, not stand-ins: a real coordinator serving gRPC on loopback (plaintext or
//! mutual TLS with a fresh network CA), real synthetic exports ingested into real Parquet
//! stores, plain DataFusion over the same files as the independent side of every
//! comparison, and real steward keys and signatures.
//!
//! # Layout
//! - [`cases`]: the case runner: a case's verdict at a node, expected tables checked
//!   against the merge of several sites and plain DataFusion over their stores pooled.
//! - [`loopback`]: a coordinator on loopback, its clients and hand-driven node streams.
//! - [`fixture`]: synthetic exports and stores, and plain DataFusion over a store.
//! - [`network`]: a coordinator and real nodes in one process, over mutual TLS, with
//!   hand-made stores whose every number a test knows.
//! - [`rows`]: record batches as comparable text rows.
//! - [`steward`]: steward keys and signed requests for a node's engine.

pub mod cases;
pub mod fixture;
pub mod loopback;
pub mod network;
pub mod rows;
pub mod steward;
