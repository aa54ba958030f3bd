//! The tables a query is planned against, without their data.
//!
//! The coordinator validates a query before any node sees it, and a node validates it
//! again before it runs; both plan against the same schemas. Here the tables are empty,
//! so planning reads no data and a planning error cannot reveal any.

use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::error::Result;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::{allowlist, schema};

/// A session configured as every ern session is: no information_schema, no URL tables,
/// identifiers as written.
pub fn session_config() -> SessionConfig {
    SessionConfig::new()
        .with_information_schema(false)
        .with_default_catalog_and_schema("ern", "public")
}

/// A planning context whose six tables are empty: for validation only.
pub fn planning_context() -> Result<SessionContext> {
    let ctx = SessionContext::new_with_config(session_config());
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
