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
//! - [`rules`]: one module per disclosure rule of DESIGN.md, each with its refusals
//!   (rule 1 in [`rules::one_query`], 2 [`rules::barrier`], 3 [`rules::pid_use`], 4
//!   [`rules::barrier_aggregates`], 5 [`rules::functions`], 6 [`rules::group_size`], 7
//!   [`rules::no_data_in_errors`], 8 [`rules::resource_limits`]).
//! - [`allowlist`]: tables, aggregates, scalar and conditional functions a query may use,
//!   each with why it is safe.
//! - [`catalog`]: the schema-only planning context.
//! - [`plan`]: the one entry point: SQL in, a [`QueryPlan`] out, holding everything
//!   derived from the question (report, site plan, released schema, merge).
//! - [`validate`]: parse, plan, walk the plan once, asking each rule.
//! - `constants`: constant parts of a question that fail on every row, a mistake.
//! - [`split`]: how a plan becomes a per-site plan and how partial results merge.
//! - [`domain`]: a question's public domain, which decides secure or per-site
//!   aggregation, derived from the plan alone.
//! - [`reference`]: the shipped Orphanet classification behind the reference tables.
//! - [`public`]: questions over the reference tables alone, answered by the coordinator.
//! - [`uniqueness`]: where a site may count patients without a distinct count.
//! - [`hash`]: the canonical query hash that approvals sign.
//! - [`shown`]: another party's text made safe to print (escapes, bounded length).
//! - [`ids`]: the shape of site, study and user ids.
//! - [`casefile`]: the steward-readable format of the validation and attack suites.
//! - [`examples`]: the example questions of the data model and the demo's showcase.
//! - [`schema`]: the Arrow schemas of the node tables (the data contract).
//! - [`secure`]: a secure question's vector (node) and its release from totals
//!   (coordinator).
//! - [`spread`]: VAR and STDDEV, sent as count, sum and sum of squares and merged exactly.
//! - [`width_bucket`]: ern's own total `width_bucket`, for histograms in one GROUP BY.

pub mod allowlist;
pub mod bounding;
pub mod casefile;
pub mod catalog;
mod constants;
pub mod domain;
pub mod examples;
mod fingerprint;
pub mod hash;
pub mod ids;
pub mod plan;
pub mod public;
pub mod reference;
pub mod row_pack;
pub mod rules;
pub mod schema;
pub mod secure;
pub mod shown;
pub mod split;
pub mod spread;
pub mod uniqueness;
pub mod validate;
pub mod width_bucket;

pub use bounding::{Bounding, Sensitivity};
pub use domain::{AggregationMode, KeyDomain, SecureDomain};
pub use hash::{POLICY_VERSION, query_hash};
pub use plan::{Planner, QueryPlan, SitePlan};
pub use rules::group_size::Dominance;
pub use rules::{Refusal, Rule};
pub use uniqueness::SiteFacts;
pub use validate::{ValidatedQuery, ValidationReport};
