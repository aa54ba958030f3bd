//! The case runner of the node's suites: a case's verdict on one node, and an expected
//! table checked against the merge of several sites' releases and against plain
//! DataFusion over their stores pooled.

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use ern_node::engine::{ExecuteError, NodeEngine};
use ern_node::steward_key::StewardSigningKey;
use ern_queries::casefile::{Case, ExpectedTable};

use crate::rows::{text_rows, text_rows_rounded};
use crate::steward::signed_request;

/// Decimals of a floating-point value in an expected table.
pub const TABLE_DECIMALS: usize = 2;

/// A case's verdict at one node: `released`, `suppressed`, `refused <rule>` or `error …`.
pub async fn verdict(engine: &NodeEngine, key: &StewardSigningKey, sql: &str) -> String {
    match engine.execute(&signed_request(key, sql, "site-a")).await {
        Ok(released) if released.groups_released > 0 => "released".into(),
        Ok(_) => "suppressed".into(),
        Err(ExecuteError::Refused(refusal)) => format!("refused {}", refusal.rule.name()),
        Err(other) => format!("error {other}"),
    }
}

/// Whether the question's result is ordered (an ORDER BY above its aggregation barrier):
/// then rows compare in order, otherwise as sorted sets.
pub fn is_ordered(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) => true,
        LogicalPlan::Projection(projection) => is_ordered(&projection.input),
        LogicalPlan::Limit(limit) => is_ordered(&limit.input),
        LogicalPlan::Filter(filter) => is_ordered(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => is_ordered(&alias.input),
        _ => false,
    }
}

/// Runs one case with an expected table on every site and checks the merge against the
/// file and against plain DataFusion over the pooled stores.
pub async fn check_expected_table(
    case: &Case,
    table: &ExpectedTable,
    sites: &[(String, NodeEngine)],
    steward: &StewardSigningKey,
    pooled: &SessionContext,
) -> Result<(), String> {
    let sql = case.sql.as_str();
    let mut released = Vec::new();
    for (site_id, site) in sites {
        let site_release = site
            .execute(&signed_request(steward, sql, site_id))
            .await
            .map_err(|e| format!("{site_id}: {e}"))?;
        // Strict comparison: a group dropped at one site would make the merge differ from
        // the pooled data, so a case with an expected table must suppress nothing anywhere
        // (every group well over k at every site; filter to such groups in WHERE).
        if site_release.groups_suppressed > 0 {
            return Err(format!(
                "{site_id} suppressed {} groups: an expected table needs groups that reach k at every site",
                site_release.groups_suppressed
            ));
        }
        released.extend(site_release.batches);
    }
    let planning = ern_queries::catalog::planning_state().map_err(|e| e.to_string())?;
    let query = ern_queries::Planner::new()
        .plan(sql, &planning)
        .await
        .map_err(|e| e.to_string())?;
    let merged = query.merge(released).await.map_err(|e| e.to_string())?;
    let plain = pooled
        .sql(sql)
        .await
        .map_err(|e| format!("plain DataFusion: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("plain DataFusion: {e}"))?;

    let schema = query.result_schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for (side, batches) in [("the merge", &merged), ("plain DataFusion", &plain)] {
        if let Some(batch) = batches.first() {
            let names: Vec<&String> = batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name())
                .collect();
            if names != columns.iter().collect::<Vec<_>>() {
                return Err(format!(
                    "the columns of {side}, {names:?}, are not the plan's {columns:?}"
                ));
            }
        }
    }
    if table.columns != columns {
        return Err(format!(
            "the expected table (line {}) names the columns {:?}, the result has {columns:?}",
            table.line, table.columns
        ));
    }

    let ordered = is_ordered(query.logical_plan());
    let sorted = |mut rows: Vec<Vec<String>>| {
        if !ordered {
            rows.sort();
        }
        rows
    };
    // (b) The merge equals plain DataFusion over the pooled stores (floats to 6 decimals).
    let (got, want) = (sorted(text_rows(&merged)), sorted(text_rows(&plain)));
    if got != want {
        return Err(format!(
            "the merge differs from plain DataFusion over the pooled stores\n    merge: {got:?}\n    plain: {want:?}"
        ));
    }
    // (a) The merge equals the table in the file (floats to TABLE_DECIMALS decimals).
    let actual = sorted(text_rows_rounded(&merged, TABLE_DECIMALS));
    if actual != sorted(table.rows.clone()) {
        let actual = ExpectedTable::new(columns, actual);
        return Err(format!(
            "the merged table differs from the expected one (line {}); it is\n{actual}",
            table.line
        ));
    }
    Ok(())
}
