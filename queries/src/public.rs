//! Questions about the public reference data alone, answered row by row by the
//! coordinator: no steward, no node.
//!
//! The shipped Orphanet tables (`orpha_term`, `orpha_closure`; CC BY 4.0) hold no
//! patient. A question that reads only them releases nothing about anyone, so the
//! disclosure rules, which exist for patient rows, do not apply, and no steward needs to
//! approve it: the coordinator answers it from its own copy of the tables, rows and all,
//! marked as reference data. What still applies is what protects the coordinator: one
//! read-only SELECT (rule 1), the network's allowlisted scalar functions (none of them
//! repeats or pads to a length the query chooses), a bounded amount of work (at most
//! [`MAX_SCANS`] table reads and [`MAX_ROW_COMBINATIONS`] combinations of their rows,
//! at most [`MAX_MEMORY`] held at once and never spilled to disk, no recursive CTE),
//! and at most [`MAX_ROWS`] rows and [`MAX_ANSWER_BYTES`] out.
//!
//! The row limit caps what comes out, not what a sort, a grouping, a window or an
//! aggregate holds on the way: red team, over three reads whose rows combine in 65
//! million ways, a `GROUP BY` of every combination, `row_number() OVER (ORDER BY …)` and
//! `string_agg` grew by gigabytes, and a recursive CTE counting up never ended; the
//! coordinator's time limit does not bound memory. Hence the memory pool and no
//! recursion.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use futures::StreamExt;

use crate::catalog::session_config;
use crate::rules::one_query::{parse_one_query, planning_refusal, types_do_not_fit};
use crate::rules::{Refusal, Rule};
use crate::{allowlist, reference};

/// The public reference tables.
pub const REFERENCE_TABLES: [&str; 2] = ["orpha_term", "orpha_closure"];

/// Most rows a reference question returns.
pub const MAX_ROWS: usize = 10_000;

/// Most table reads in a reference question.
pub const MAX_SCANS: usize = 3;

/// Most memory a reference question's operators may hold at once (its sorts, groupings,
/// windows, joins and aggregates): beyond it the question is refused, never spilled.
pub const MAX_MEMORY: usize = 256 << 20;

/// Most bytes a reference answer may hold: the row limit alone let 10,000 rows of a
/// `concat` of thousands of names reach gigabytes (red team).
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Rows per batch of a reference question: a batch is computed whole before the answer's
/// size is checked, so a small one bounds what a wide row can make at once.
const BATCH_ROWS: usize = 256;

/// Most combinations of the rows of the tables a reference question reads (the product
/// of their row counts): what its joins could have to look at, at worst.
pub const MAX_ROW_COMBINATIONS: u128 = 100_000_000;

/// A reference question's answer.
#[derive(Debug, Clone)]
pub struct PublicAnswer {
    /// The table's schema.
    pub schema: SchemaRef,
    /// Its rows.
    pub batches: Vec<RecordBatch>,
}

/// Whether `sql` is one statement that reads tables, all of them public reference
/// tables. Anything else (patient tables, nothing at all, a statement that does not
/// parse) goes through the disclosure rules as usual.
pub fn reads_only_reference_tables(sql: &str) -> bool {
    let Ok(statement) = parse_one_query(sql) else {
        return false;
    };
    let Ok(ctx) = reference_context() else {
        return false;
    };
    let Ok(tables) = ctx.state().resolve_table_references(&statement) else {
        return false;
    };
    !tables.is_empty()
        && tables
            .iter()
            .all(|table| table.schema().is_none() && REFERENCE_TABLES.contains(&table.table()))
}

/// A context holding the reference tables and nothing else, under [`MAX_MEMORY`], with
/// no disk to spill to and no recursive CTEs.
fn reference_context() -> datafusion::error::Result<SessionContext> {
    let mut config = session_config().with_batch_size(BATCH_ROWS);
    config.options_mut().execution.enable_recursive_ctes = false;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(MAX_MEMORY, 1.0)
        .with_disk_manager_builder(
            DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
        )
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    for (name, batch) in [
        ("orpha_term", reference::orpha_term_batch()?),
        ("orpha_closure", reference::orpha_closure_batch()?),
    ] {
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        ctx.register_table(name, Arc::new(table))?;
    }
    Ok(ctx)
}

/// Answers a question over the reference tables alone, or refuses it naming the rule.
pub async fn answer(sql: &str) -> Result<PublicAnswer, Refusal> {
    let statement: DfStatement = parse_one_query(sql)?;
    let ctx = reference_context().map_err(internal)?;
    let state = ctx.state();
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(planning_refusal)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|_| Refusal::new(Rule::OneQuery, "the query", "is not a read-only SELECT"))?;
    check_work(&plan)?;
    check_functions(&plan)?;
    check_windows(&plan)?;
    let analyzed = state
        .analyzer()
        .execute_and_check(plan.clone(), state.config_options(), |_, _| {})
        .map_err(types_do_not_fit)?;
    crate::constants::check_constants(&analyzed)?;
    // One row past the limit tells that there are more, without computing them all.
    let limited = LogicalPlanBuilder::from(plan)
        .limit(0, Some(MAX_ROWS + 1))
        .and_then(LogicalPlanBuilder::build)
        .map_err(failed)?;
    let frame = ctx.execute_logical_plan(limited).await.map_err(failed)?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(failed)?;
    let (mut batches, mut bytes) = (Vec::new(), 0usize);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(failed)?;
        bytes = bytes.saturating_add(batch.get_array_memory_size());
        if bytes > MAX_ANSWER_BYTES {
            return Err(Refusal::new(
                Rule::ResourceLimits,
                "the query",
                format!(
                    "returns more than {} MiB of reference data",
                    MAX_ANSWER_BYTES >> 20
                ),
            )
            .hint("select fewer or shorter columns, or fewer rows"));
        }
        batches.push(batch);
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if rows > MAX_ROWS {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the query",
            format!("returns more than {MAX_ROWS} rows of reference data"),
        )
        .hint("narrow it with WHERE, or add a LIMIT"));
    }
    Ok(PublicAnswer { schema, batches })
}

/// At most [`MAX_SCANS`] table reads, whose rows combine in at most
/// [`MAX_ROW_COMBINATIONS`] ways.
fn check_work(plan: &LogicalPlan) -> Result<(), Refusal> {
    let mut scans = 0usize;
    let mut combinations: u128 = 1;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            scans += 1;
            let rows = match scan.table_name.table() {
                "orpha_term" => reference::TERMS_CSV.lines().count(),
                _ => reference::CLOSURE_CSV.lines().count(),
            };
            combinations = combinations.saturating_mul(rows as u128);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if scans > MAX_SCANS || combinations > MAX_ROW_COMBINATIONS {
        return Err(Refusal::new(
            Rule::ResourceLimits,
            "the query",
            format!(
                "reads the reference tables {scans} times; at most {MAX_SCANS} reads, whose rows combine in at most {MAX_ROW_COMBINATIONS} ways"
            ),
        )
        .hint("orpha_closure already holds every ancestor of a code, at every depth: join it once"));
    }
    Ok(())
}

/// Scalar functions from the network's allowlist only.
fn check_functions(plan: &LogicalPlan) -> Result<(), Refusal> {
    let mut refused = None;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|part| {
                if let Expr::ScalarFunction(function) = part {
                    let name = function.name();
                    if !allowlist::is_allowed_scalar(name) {
                        refused = Some(crate::rules::functions::unknown_function(name));
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    refused.map_or(Ok(()), Err)
}

/// Window functions only of fixed-width values: a window over a growing frame computes
/// one value per row, and a text or list aggregate there (`string_agg(name, ',') OVER
/// (ORDER BY … ROWS UNBOUNDED PRECEDING)`) builds rows whose total size is quadratic in
/// the row count, outside any memory pool (red team: 51,529 rows of two reads asked for
/// gigabytes in one allocation and took the process down).
fn check_windows(plan: &LogicalPlan) -> Result<(), Refusal> {
    let mut refused = None;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::Window(window) = node {
            let inputs = window.input.schema().fields().len();
            for (field, expr) in window.schema.fields().iter().skip(inputs).zip(&window.window_expr) {
                let data_type = field.data_type();
                if !(data_type.is_primitive() || *data_type == arrow::datatypes::DataType::Boolean) {
                    refused = Some(Refusal::new(
                        Rule::ResourceLimits,
                        expr.human_display().to_string(),
                        format!("a window function over reference data gives numbers, dates or booleans, not {data_type}: its values can grow with every row of the frame"),
                    )
                    .hint("aggregate with GROUP BY instead, or count and rank in the window"));
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    refused.map_or(Ok(()), Err)
}

/// A failure while answering (the tables are public, so the reason may be shown); a
/// question that needs more than [`MAX_MEMORY`] is refused by rule 8.
fn failed(error: datafusion::error::DataFusionError) -> Refusal {
    if matches!(
        error.find_root(),
        datafusion::error::DataFusionError::ResourcesExhausted(_)
    ) {
        return Refusal::new(
            Rule::ResourceLimits,
            "the query",
            format!(
                "needs more than {} MiB to answer over the reference data",
                MAX_MEMORY >> 20
            ),
        )
        .hint("narrow it with WHERE, join fewer reads, or group by fewer combinations");
    }
    let reason = error.strip_backtrace();
    Refusal::new(
        Rule::OneQuery,
        "the query",
        format!(
            "failed on the reference data: {}",
            reason.lines().next().unwrap_or("")
        ),
    )
    .as_mistake()
}

fn internal(error: datafusion::error::DataFusionError) -> Refusal {
    Refusal::new(
        Rule::OneQuery,
        "the reference tables",
        format!("could not be loaded: {error}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_questions_over_the_reference_tables_alone_are_public() {
        assert!(reads_only_reference_tables(
            "SELECT orpha_code, name FROM orpha_term"
        ));
        assert!(reads_only_reference_tables(
            "SELECT t.name FROM orpha_closure c JOIN orpha_term t ON t.orpha_code = c.descendant WHERE c.ancestor = 'ORPHA:97929'"
        ));
        for sql in [
            "SELECT COUNT(*) FROM patient",
            "SELECT t.name, COUNT(DISTINCT d.pid) FROM diagnosis d JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name",
            "SELECT 1",
            "SELECT * FROM ern.public.orpha_term",
            "SELECT * FROM orpha_term; SELECT * FROM orpha_term",
            "not sql",
        ] {
            assert!(!reads_only_reference_tables(sql), "{sql}");
        }
    }

    #[tokio::test]
    async fn reference_questions_return_rows_under_the_limits() {
        let terms = answer("SELECT orpha_code, name FROM orpha_term ORDER BY orpha_code")
            .await
            .expect("answered");
        let rows: usize = terms.batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, reference::TERMS_CSV.lines().count() - 1);
        for (sql, says) in [
            (
                "SELECT a.ancestor FROM orpha_closure a, orpha_closure b, orpha_closure c",
                "combine",
            ),
            (
                "SELECT a.ancestor FROM orpha_closure a, orpha_closure b",
                "more than 10000 rows",
            ),
            ("SELECT repeat(name, 1000000) FROM orpha_term", "repeat"),
            ("DELETE FROM orpha_term", "query"),
            (
                "SELECT CAST(name AS INT) FROM orpha_term",
                "failed on the reference data",
            ),
        ] {
            let refusal = answer(sql).await.expect_err(sql);
            assert!(refusal.to_string().contains(says), "{sql}: {refusal}");
        }
    }
}
