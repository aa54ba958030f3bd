//! The hospital side of ern.
//!
//! A node runs inside a hospital. This crate turns the hospital's registry export into the
//! pseudonymised Parquet store that queries see, holds the keys that tie the store to the
//! site (pseudonymisation) and approvals to stewards (Ed25519), and runs approved queries,
//! letting out only aggregated groups of at least k patients.
//!
//! # Trust boundary
//! Everything here sees identifiable data: local patient ids exist only inside
//! [`ingest`], between reading the export and hashing them. What leaves this crate's ingest
//! is the store, which holds pids (HMAC-SHA256 under the site key), birth year and month,
//! and no patient who did not consent to reuse.
//!
//! # Layout
//! - [`export`]: the interchange format: files, columns, value parsers.
//! - [`ingest`]: export in, store out, all-or-nothing, every error reported.
//! - [`store`]: the store on disk and its atomic replacement.
//! - [`pseudonym`]: the site key and pid = HMAC-SHA256(key, local_id).
//! - [`steward_key`]: steward Ed25519 key pairs and key ids.
//! - [`approval`]: the signed statement that authorises one query at one site.
//! - [`executed`]: one approval, one execution per store generation.
//! - [`engine`]: runs approved queries, suppresses groups under k.
//! - [`session`]: the locked-down DataFusion session over the store.
//! - [`stop`]: a time limit that stops every operator of a query.
//! - [`total`]: allowlisted functions and casts that give NULL instead of failing.
//! - [`audit`]: the hash-chained audit log.
//! - [`config`]: `node.toml`, the node's own trusted configuration.
//! - [`link`]: the outbound stream to the coordinator.
//! - [`reference`]: the shipped Orphanet cardiac classification.
//! - [`synth`]: synthetic site exports for demos, tests and benchmarks.
//! - [`progress`]: progress reporting for long work.

pub mod approval;
pub mod audit;
pub mod config;
pub mod engine;
pub mod executed;
pub mod export;
pub mod ingest;
pub mod link;
pub mod progress;
pub mod pseudonym;
pub mod reference;
pub mod session;
pub mod steward_key;
pub mod stop;
pub mod store;
pub mod synth;
mod threads;
pub mod total;

/// The Arrow schemas of the store, shared with the query side.
pub use ern_queries::schema;
