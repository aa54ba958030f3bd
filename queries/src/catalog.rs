//! The tables a query is planned against, without their data.
//!
//! The coordinator validates a query before any node sees it, and a node validates it
//! again before it runs; both plan against the same schemas. Here the tables are empty,
//! so planning reads no data and a planning error cannot reveal any.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::execution::session_state::SessionState;
use datafusion::functions_aggregate::variance::var_samp_udaf;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::{allowlist, schema, width_bucket};

/// A session configured as every ern session is: no information_schema, no URL tables,
/// identifiers as written.
pub fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(false)
        .with_default_catalog_and_schema("ern", "public")
}

/// The scalar functions ern adds to DataFusion's: [`width_bucket`]. Every session that
/// plans or runs a question registers them (the node wraps them like DataFusion's).
pub fn ern_scalar_functions() -> Vec<Arc<ScalarUDF>> {
    vec![width_bucket::udf()]
}

/// The aggregate functions ern adds to DataFusion's: VAR_SAMP under PostgreSQL's other
/// name, `variance`, besides DataFusion's own (`var`, `var_samp`, `var_sample`).
pub fn ern_aggregate_functions() -> Vec<Arc<AggregateUDF>> {
    vec![Arc::new(
        var_samp_udaf().as_ref().clone().with_aliases(["variance"]),
    )]
}

/// Registers ern's functions ([`ern_scalar_functions`], [`ern_aggregate_functions`]) in
/// `ctx`, beside DataFusion's.
pub fn register_ern_functions(ctx: &SessionContext) {
    for function in ern_scalar_functions() {
        ctx.register_udf(function.as_ref().clone());
    }
    for function in ern_aggregate_functions() {
        ctx.register_udaf(function.as_ref().clone());
    }
}

/// A planning context whose six tables are empty: for validation only.
pub fn planning_context() -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(session_config());
    register_ern_functions(&ctx);
    for table in allowlist::TABLES {
        if let Some(table_schema) = schema::by_name(table) {
            let empty = MemTable::try_new(table_schema, vec![vec![]])?;
            ctx.register_table(*table, Arc::new(empty))?;
        }
    }
    Ok(ctx)
}

/// The state of [`planning_context`].
pub fn planning_state() -> Result<SessionState> {
    Ok(planning_context()?.state())
}
