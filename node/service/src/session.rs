//! The node's locked-down DataFusion session.
//!
//! It sees the store's four tables and the two reference tables and nothing else: no
//! information_schema, no URL tables, no table functions, no external-table factories,
//! and only the scalar and aggregate functions on the allowlist of `ern_queries`, so a
//! function the validator would refuse does not even exist here; those that do are total
//! (see [`crate::total`]). Memory is capped by the
//! runtime's memory pool; time by the engine.

use std::path::Path;
use std::sync::Arc;

use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use ern_queries::{allowlist, catalog, schema};

use crate::total::TotalFunction;
use crate::{reference, store};

fn allowed_aggregate(name: &str) -> bool {
    allowlist::PER_PATIENT_AGGREGATES.contains(&name)
        || allowlist::BARRIER_AGGREGATES.contains(&name)
}

/// Below this many patients a query runs in one partition: splitting a registry this
/// small across threads (repartitioning, partial and final aggregates, a task per
/// partition) costs more than it saves, and a node that shares its machine keeps the
/// other cores free.
pub const SINGLE_PARTITION_BELOW: i64 = 50_000;

/// The number of rows of a Parquet file, from its footer.
fn parquet_rows(path: &Path) -> Result<i64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let file = std::fs::File::open(path)?;
    let reader = SerializedFileReader::new(file)?;
    Ok(reader.metadata().file_metadata().num_rows())
}

/// A session with the node's locks and no tables: only allowlisted functions, each
/// total, no window, table or higher-order functions, no table factories, and a memory
/// pool of `memory_limit` bytes.
pub fn locked_down_context(config: SessionConfig, memory_limit: usize) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit, 1.0)
        .build_arc()?;
    let mut builder = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features();
    if let Some(functions) = builder.scalar_functions() {
        // ern's own (width_bucket) beside DataFusion's. Only allowlisted functions exist
        // here, each made total (rule 5).
        functions.extend(catalog::ern_scalar_functions());
        *functions = functions
            .drain(..)
            .filter(|f| allowlist::is_allowed_scalar(f.name()))
            .map(|f| Arc::new(TotalFunction::wrap(f)))
            .collect();
    }
    if let Some(functions) = builder.aggregate_functions() {
        functions.extend(catalog::ern_aggregate_functions());
        functions.retain(|f| allowed_aggregate(f.name()));
    }
    if let Some(functions) = builder.window_functions() {
        functions.clear();
    }
    if let Some(functions) = builder.higher_order_functions() {
        functions.clear();
    }
    if let Some(functions) = builder.table_functions() {
        functions.clear();
    }
    if let Some(factories) = builder.table_factories() {
        factories.clear();
    }
    Ok(SessionContext::new_with_state(builder.build()))
}

/// Builds the session over the store in `store_dir`, with a memory pool of
/// `memory_limit` bytes.
pub async fn node_session(store_dir: &Path, memory_limit: usize) -> Result<SessionContext> {
    let patients = parquet_rows(&store::table_path(store_dir, "patient")).unwrap_or(i64::MAX);
    let mut config = catalog::session_config();
    if patients < SINGLE_PARTITION_BELOW {
        config = config.with_target_partitions(1);
    }
    let ctx = locked_down_context(config, memory_limit)?;
    for table in schema::PATIENT_TABLES {
        let path = store::table_path(store_dir, table);
        if !path.exists() {
            return Err(DataFusionError::Plan(format!(
                "the store {} has no {table} table: run `ern ingest` first",
                store_dir.display()
            )));
        }
        let path = path
            .to_str()
            .ok_or_else(|| DataFusionError::Plan("store path is not UTF-8".into()))?;
        ctx.register_parquet(table, path, ParquetReadOptions::default())
            .await?;
    }
    let arrow = |e: arrow::error::ArrowError| DataFusionError::ArrowError(Box::new(e), None);
    let terms = reference::orpha_term_batch().map_err(arrow)?;
    let closure = reference::orpha_closure_batch().map_err(arrow)?;
    ctx.register_table(
        schema::ORPHA_TERM,
        Arc::new(MemTable::try_new(terms.schema(), vec![vec![terms]])?),
    )?;
    ctx.register_table(
        schema::ORPHA_CLOSURE,
        Arc::new(MemTable::try_new(closure.schema(), vec![vec![closure]])?),
    )?;
    Ok(ctx)
}
