//! The hospital service of ern: the node that answers the coordinator.
//!
//! A node runs inside a hospital. This crate holds the keys that tie the store to the site
//! (pseudonymisation) and approvals to stewards (Ed25519), keeps the outbound link to the
//! coordinator, and runs approved questions on the pseudonymised Parquet store, letting
//! out only aggregated groups of at least k patients; every request is audited.
//!
//! # Trust boundary
//! The service sees pseudonymised data only: the store holds pids (HMAC-SHA256 under the
//! site key), birth year and month, and no patient who did not consent to reuse. The
//! identifiable export is read by the ETL (`ern-ingest`), never by this crate, which does
//! not link polars. Everything that reaches it from the coordinator is untrusted: a
//! question runs only under a steward's signature over its exact SQL, and is validated
//! again here (`ern_queries`) before it runs.
//!
//! # Layout
//! - [`store`]: the store's layout as the service reads it (`ern-ingest` writes it).
//! - [`store_watch`]: which generation of the store the node answers from, and whether
//!   it is there at all.
//! - [`pseudonym`]: the site key and pid = HMAC-SHA256(key, local_id).
//! - [`steward_key`]: steward Ed25519 key pairs and key ids.
//! - [`approval`]: the signed statement that authorises one query at one site.
//! - [`executed`]: one approval, one execution per store generation.
//! - [`engine`]: runs approved queries, suppresses groups under k.
//! - [`failure`]: the category of a failure, which names no value.
//! - [`session`]: the locked-down DataFusion session over the store.
//! - [`stop`]: a time limit that stops every operator of a query.
//! - [`total`]: allowlisted functions and casts that give NULL instead of failing.
//! - [`audit`]: the hash-chained audit log, its diagnosis and rotation.
//! - [`config`]: `node.toml`, the node's own trusted configuration.
//! - [`link`]: the outbound stream to the coordinator.
//! - [`reference`]: the shipped Orphanet cardiac classification.
//! - [`secure`]: secure aggregation's keys, signed round statements and pairwise masks.
//! - [`round`]: the node's two rounds of secure aggregation, under its own policy.

pub mod approval;
pub mod audit;
pub mod config;
pub mod engine;
pub mod executed;
pub mod failure;
pub mod link;
/// Differential privacy: exact discrete noise, the noise secret, budgets per study.
pub mod privacy;
pub mod pseudonym;
pub mod reference;
pub mod round;
pub mod secure;
pub mod session;
pub mod steward_key;
pub mod stop;
pub mod store;
pub mod store_watch;
pub mod total;

/// The Arrow schemas of the store, shared with the query side.
pub use ern_queries::schema;
