//! The privacy brain of ern, shared by nodes and the coordinator.
//!
//! A researcher's SQL is checked here against the disclosure-control rules of DESIGN.md
//! before anyone sees it (coordinator) and again before it runs (node). A valid query is
//! split into the per-site plan each node runs and the merge the coordinator runs on the
//! partial results.
//!
//! # Trust boundary
//! This crate reads no data: it plans against table schemas only, so nothing it says can
//! reveal a value. What it must never let through is a query that releases anything but
//! aggregates over groups of patients: row output, pid, individual values (MIN, MAX,
//! medians), conditional tricks inside aggregates, or an expression whose failure would
//! tell a value. Everything is matched against allowlists ([`allowlist`]).
//!
//! # Layout
//! - [`rules`]: the rules and the refusal a researcher sees.
//! - [`allowlist`]: tables, aggregates and scalar functions a query may use.
//! - [`catalog`]: the schema-only planning context.
//! - [`validate`]: parse, plan, walk the plan.
//! - [`split`]: the per-site plan and the merge of partial results.
//! - `pid_class`: rule 3, one class of pid columns reaches the barrier.
//! - `values`: rule 4, only plain values flow into released aggregates.
//! - [`dominance`]: rule 6's dominance rule for released sums.
//! - [`uniqueness`]: where a site may count patients without a distinct count.
//! - [`hash`]: the canonical query hash that approvals sign.
//! - [`ids`]: the shape of site, study and user ids.
//! - [`casefile`]: the steward-readable format of the validation and attack suites.
//! - [`schema`]: the Arrow schemas of the node tables (the data contract).

pub mod allowlist;
pub mod casefile;
pub mod catalog;
pub mod dominance;
pub mod hash;
pub mod ids;
mod pid_class;
pub mod rules;
pub mod schema;
pub mod split;
pub mod uniqueness;
pub mod validate;
mod values;

pub use hash::{POLICY_VERSION, query_hash};
pub use rules::{Refusal, Rule};
pub use uniqueness::SiteFacts;
pub use validate::{ValidatedQuery, validate};
