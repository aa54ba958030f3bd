//! Split and merge: one validated query becomes a per-site plan and a merge step.
//!
//! The site plan is the barrier aggregate rewritten into partials that add up across
//! sites (COUNT and SUM as they are, AVG as SUM and COUNT), plus the hidden
//! `COUNT(DISTINCT pid)` per group that the node uses to suppress small groups and then
//! drops. The merge sums the partials by group key over all sites' batches and then
//! evaluates everything the query puts above the barrier (expressions over aggregates,
//! HAVING, ORDER BY, LIMIT, output names) on the network totals, with DataFusion over an
//! in-memory table.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, cast, col};
use datafusion::prelude::SessionContext;

use crate::catalog::session_config;
use crate::validate::{AggregateKind, Barrier, ValidatedQuery};

/// Prefix of the hidden per-group patient counts in a site plan's output.
pub const HIDDEN_PATIENTS: &str = "__patients";

/// True for a hidden patient-count column of a site plan.
pub fn is_hidden(name: &str) -> bool {
    name.starts_with(HIDDEN_PATIENTS)
}

/// Errors of splitting or merging (internal: a validated query always splits).
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// DataFusion could not build or run a plan.
    #[error("{0}")]
    DataFusion(#[from] DataFusionError),
    /// A site's partial result does not have the shape the query implies.
    #[error("a site's partial result does not match the query: {0}")]
    BadPartials(String),
}

fn group_name(index: usize) -> String {
    format!("__g{index}")
}

fn partial_name(index: usize) -> String {
    format!("__p{index}")
}

/// The partial aggregates a barrier aggregate is sent as.
fn partials(kind: &AggregateKind, expr: &Expr) -> Vec<Expr> {
    match kind {
        AggregateKind::Count | AggregateKind::CountDistinctPid | AggregateKind::Sum => {
            vec![expr.clone()]
        }
        AggregateKind::Avg => {
            let argument = match expr {
                Expr::AggregateFunction(AggregateFunction { params, .. }) => {
                    params.args.first().cloned()
                }
                _ => None,
            };
            let argument = argument.unwrap_or_else(|| datafusion::logical_expr::lit(0));
            vec![
                sum(cast(argument.clone(), DataType::Float64)),
                count(argument),
            ]
        }
    }
}

/// The hidden patient counts of a group; the node releases a group only when the smallest
/// is at least k.
///
/// - `COUNT(DISTINCT pid)` for every class of pid columns in the input: after an outer or
///   cross join, different pid columns hold different patients, and each must reach k.
/// - For every released aggregate over an argument (`COUNT(x)`, `SUM(x)`, `AVG(x)`), the
///   patients for whom the argument is not null: a sum over a group of a thousand
///   patients of whom one has a value is that one patient's value.
///
/// A class count that a released `COUNT(DISTINCT pid)` already computes is not computed
/// twice: it is returned as the index of that partial.
fn hidden_counts(barrier: &Barrier) -> Result<(Vec<Expr>, Vec<usize>), SplitError> {
    // Where each aggregate's first partial sits.
    let mut offsets = Vec::with_capacity(barrier.aggregates.len());
    let mut offset = 0;
    for aggregate in &barrier.aggregates {
        offsets.push(offset);
        offset += if aggregate.kind == AggregateKind::Avg {
            2
        } else {
            1
        };
    }
    let argument_of = |expr: &Expr| match expr {
        Expr::AggregateFunction(AggregateFunction { params, .. }) => params.args.first().cloned(),
        _ => None,
    };
    let mut counts = Vec::new();
    let mut copies = Vec::new();
    for pid in &barrier.pids {
        let released = barrier.aggregates.iter().zip(&offsets).find(|(a, _)| {
            a.kind == AggregateKind::CountDistinctPid
                && matches!(argument_of(&a.expr), Some(Expr::Column(c)) if &c == pid)
        });
        match released {
            Some((_, &partial)) => copies.push(partial),
            None => counts.push(count_distinct(Expr::Column(pid.clone()))),
        }
    }
    for aggregate in &barrier.aggregates {
        let Some(argument) = argument_of(&aggregate.expr) else {
            continue;
        };
        let counts_everyone = matches!(argument, Expr::Literal(..))
            || matches!(&argument, Expr::Column(c) if barrier.pids.contains(c));
        if counts_everyone {
            continue;
        }
        for pid in &barrier.pids {
            counts.push(
                count_distinct(Expr::Column(pid.clone()))
                    .filter(argument.clone().is_not_null())
                    .build()?,
            );
        }
    }
    let counts = counts
        .into_iter()
        .enumerate()
        .map(|(i, count)| count.alias(format!("{HIDDEN_PATIENTS}_{i}")))
        .collect();
    Ok((counts, copies))
}

/// The per-site plan: group keys `__g0…`, partials `__p0…`, and the hidden patient
/// counts `__patients_…` (see [`hidden_counts`]), in that order.
pub fn site_plan(barrier: &Barrier) -> Result<LogicalPlan, SplitError> {
    let mut aggregates: Vec<Expr> = barrier
        .aggregates
        .iter()
        .flat_map(|a| partials(&a.kind, &a.expr))
        .enumerate()
        .map(|(j, partial)| partial.alias(partial_name(j)))
        .collect();
    let (hidden, copies) = hidden_counts(barrier)?;
    aggregates.extend(hidden);
    let aggregated = LogicalPlanBuilder::from(barrier.input.as_ref().clone())
        .aggregate(barrier.group_exprs.clone(), aggregates)?
        .build()?;
    let groups = barrier.group_exprs.len();
    let mut renamed: Vec<Expr> = aggregated
        .schema()
        .columns()
        .into_iter()
        .enumerate()
        .map(|(index, column)| {
            if index < groups {
                Expr::Column(column).alias(group_name(index))
            } else {
                Expr::Column(column)
            }
        })
        .collect();
    for (i, partial) in copies.into_iter().enumerate() {
        renamed.push(
            col(Column::from_name(partial_name(partial)))
                .alias(format!("{HIDDEN_PATIENTS}_copy_{i}")),
        );
    }
    Ok(LogicalPlanBuilder::from(aggregated)
        .project(renamed)?
        .build()?)
}

/// The schema of what a node releases: the site plan's output without the hidden counts.
pub fn released_schema(barrier: &Barrier) -> Result<SchemaRef, SplitError> {
    let plan = site_plan(barrier)?;
    let arrow_schema = plan.schema().as_arrow();
    let fields: Vec<_> = arrow_schema
        .fields()
        .iter()
        .filter(|f| !is_hidden(f.name()))
        .cloned()
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// Merges the sites' released batches into the researcher's table.
pub async fn merge(
    query: &ValidatedQuery,
    site_batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, SplitError> {
    let barrier = &query.barrier;
    let partial_schema = released_schema(barrier)?;
    let mut batches = Vec::with_capacity(site_batches.len());
    for batch in site_batches {
        if batch.num_columns() != partial_schema.fields().len() {
            return Err(SplitError::BadPartials(format!(
                "{} columns where the query implies {}",
                batch.num_columns(),
                partial_schema.fields().len()
            )));
        }
        // Equal values may arrive in an equivalent encoding (e.g. a view string).
        let columns = batch
            .columns()
            .iter()
            .zip(partial_schema.fields())
            .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SplitError::BadPartials(e.to_string()))?;
        let typed = RecordBatch::try_new(Arc::clone(&partial_schema), columns)
            .map_err(|e| SplitError::BadPartials(e.to_string()))?;
        batches.push(typed);
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if barrier.group_exprs.is_empty() && rows == 0 {
        // Every site suppressed its total (or had none): the network total is unknown,
        // not zero, so nothing is released.
        return Ok(Vec::new());
    }
    let table = MemTable::try_new(Arc::clone(&partial_schema), vec![batches])?;
    let scan = LogicalPlanBuilder::scan("__partials", provider_as_source(Arc::new(table)), None)?
        .build()?;
    let groups: Vec<Expr> = (0..barrier.group_exprs.len())
        .map(|i| col(Column::from_name(group_name(i))))
        .collect();
    let partial_count = partial_schema.fields().len() - groups.len();
    let sums: Vec<Expr> = (0..partial_count)
        .map(|j| sum(col(Column::from_name(partial_name(j)))).alias(partial_name(j)))
        .collect();
    let merged = LogicalPlanBuilder::from(scan)
        .aggregate(groups, sums)?
        .build()?;
    let totals = LogicalPlanBuilder::from(merged)
        .project(barrier_outputs(barrier))?
        .build()?;
    let plan = rebuild_above(&query.plan, totals)?;
    let ctx = SessionContext::new_with_config(session_config());
    Ok(ctx.execute_logical_plan(plan).await?.collect().await?)
}

/// Expressions over the merged partials that reproduce the barrier's output columns,
/// with the same qualifiers, names and types, so the nodes above it plan unchanged.
fn barrier_outputs(barrier: &Barrier) -> Vec<Expr> {
    let mut outputs = Vec::with_capacity(barrier.schema.fields().len());
    let mut partial = 0;
    for (index, (qualifier, field)) in barrier.schema.iter().enumerate() {
        let value = if index < barrier.group_exprs.len() {
            col(Column::from_name(group_name(index)))
        } else {
            let aggregate = &barrier.aggregates[index - barrier.group_exprs.len()];
            let merged = |j: usize| col(Column::from_name(partial_name(j)));
            match aggregate.kind {
                AggregateKind::Avg => {
                    let value = merged(partial) / cast(merged(partial + 1), DataType::Float64);
                    partial += 2;
                    value
                }
                _ => {
                    partial += 1;
                    merged(partial - 1)
                }
            }
        };
        outputs.push(
            cast(value, field.data_type().clone())
                .alias_qualified(qualifier.cloned(), field.name()),
        );
    }
    outputs
}

/// Puts the query's nodes above the barrier back on top of `totals`.
fn rebuild_above(plan: &LogicalPlan, totals: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
    let mut chain = Vec::new();
    let mut node = plan;
    while !matches!(node, LogicalPlan::Aggregate(_)) {
        chain.push(node);
        match node.inputs().as_slice() {
            [input] => node = input,
            _ => {
                return Err(DataFusionError::Internal(
                    "the plan above the barrier is not a chain".into(),
                ));
            }
        }
    }
    chain.into_iter().rev().try_fold(totals, |input, above| {
        above.with_new_exprs(above.expressions(), vec![input])
    })
}
