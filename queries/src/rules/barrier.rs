//! Rule 2, the aggregation barrier: the released rows come from one aggregate at the top
//! of the plan; above it only projections, sorts, literal LIMIT/OFFSET and HAVING filters
//! (evaluated on network totals after the merge); below it, aggregation only per patient.

use datafusion::logical_expr::{Distinct, Expr, JoinType, Limit, LogicalPlan, Projection};

use crate::rules::{Refusal, Rule, functions, one_query};
use crate::validate::{Barrier, ValidationReport};

/// Rule 2 from the top: above the barrier only projection, sort, limit, HAVING filters
/// and aliases; then one aggregate.
pub(crate) fn check_top(
    plan: &LogicalPlan,
    report: &mut ValidationReport,
) -> Result<Barrier, Refusal> {
    let mut node = plan;
    loop {
        match node {
            LogicalPlan::Projection(Projection { expr, input, .. }) => {
                for e in expr {
                    functions::check_above(e)?;
                }
                node = input;
            }
            LogicalPlan::Sort(sort) => {
                for e in &sort.expr {
                    functions::check_above(&e.expr)?;
                }
                node = &sort.input;
            }
            LogicalPlan::Limit(limit) => {
                check_limit(limit)?;
                node = &limit.input;
            }
            LogicalPlan::Filter(filter) => {
                functions::check_above(&filter.predicate)?;
                node = &filter.input;
            }
            LogicalPlan::SubqueryAlias(alias) => node = &alias.input,
            LogicalPlan::Aggregate(aggregate) => {
                return crate::validate::check_barrier(aggregate, report);
            }
            LogicalPlan::Window(_) => {
                return Err(functions::window_refusal("a window function (OVER …)"));
            }
            LogicalPlan::Distinct(Distinct::On(_)) => return Err(distinct_on_refusal()),
            LogicalPlan::Distinct(_) => return Err(select_distinct_refusal()),
            other => return Err(refuse_node(other, true)),
        }
    }
}

/// LIMIT and OFFSET take literals only: anything else would be computed from data on
/// the coordinator, after the merge.
fn check_limit(limit: &Limit) -> Result<(), Refusal> {
    for (part, expr) in [("LIMIT", &limit.fetch), ("OFFSET", &limit.skip)] {
        if let Some(expr) = expr
            && !matches!(crate::validate::unalias(expr), Expr::Literal(..))
        {
            return Err(Refusal::new(
                Rule::AggregationBarrier,
                format!("{part} {expr}"),
                format!("{part} takes a number written in the query"),
            ));
        }
    }
    Ok(())
}

/// A refusal for a plan node that is not on the allowlist.
pub(crate) fn refuse_node(node: &LogicalPlan, at_top: bool) -> Refusal {
    let name = node_name(node);
    match node {
        LogicalPlan::Explain(_)
        | LogicalPlan::Analyze(_)
        | LogicalPlan::Dml(_)
        | LogicalPlan::Ddl(_)
        | LogicalPlan::Statement(_)
        | LogicalPlan::Copy(_)
        | LogicalPlan::DescribeTable(_) => one_query::not_a_query(name),
        LogicalPlan::Window(_) => functions::window_refusal(name),
        LogicalPlan::Unnest(_) => functions::unnest_refusal(name),
        LogicalPlan::Subquery(_) => functions::subquery_refusal(name),
        _ if at_top => Refusal::new(
            Rule::AggregationBarrier,
            name,
            "would release rows: the query must end in one aggregation",
        )
        .hint("aggregate with GROUP BY and COUNT(DISTINCT pid), SUM or AVG"),
        _ => Refusal::new(
            Rule::AggregationBarrier,
            name,
            "is not allowed below the aggregation",
        ),
    }
}

fn node_name(node: &LogicalPlan) -> String {
    match node {
        LogicalPlan::TableScan(scan) => format!("table {}", scan.table_name),
        LogicalPlan::Limit(_) => "LIMIT".into(),
        LogicalPlan::Sort(_) => "ORDER BY".into(),
        LogicalPlan::Union(_) => "UNION".into(),
        LogicalPlan::Values(_) => "VALUES".into(),
        LogicalPlan::EmptyRelation(_) => "a query without tables".into(),
        LogicalPlan::Distinct(_) => "DISTINCT".into(),
        LogicalPlan::RecursiveQuery(_) => "WITH RECURSIVE".into(),
        LogicalPlan::Explain(_) => "EXPLAIN".into(),
        LogicalPlan::Analyze(_) => "EXPLAIN ANALYZE".into(),
        LogicalPlan::DescribeTable(_) => "DESCRIBE".into(),
        LogicalPlan::Copy(_) => "COPY".into(),
        LogicalPlan::Unnest(_) => "UNNEST".into(),
        LogicalPlan::Window(_) => "a window function".into(),
        other => other
            .display()
            .to_string()
            .split(':')
            .next()
            .unwrap_or("plan node")
            .to_string(),
    }
}

pub(crate) fn distinct_on_refusal() -> Refusal {
    Refusal::new(
        Rule::AggregationBarrier,
        "DISTINCT ON",
        "picks one row per key by an order: it releases or selects individual rows",
    )
    .hint("GROUP BY the columns and COUNT(DISTINCT pid)")
}

/// SELECT DISTINCT as the released rows.
fn select_distinct_refusal() -> Refusal {
    Refusal::new(
        Rule::AggregationBarrier,
        "SELECT DISTINCT",
        "would release individual rows",
    )
    .hint("GROUP BY the columns and COUNT(DISTINCT pid)")
}

/// DISTINCT below the barrier that does not keep pid.
pub(crate) fn distinct_without_pid() -> Refusal {
    Refusal::new(
        Rule::AggregationBarrier,
        "DISTINCT",
        "below the aggregation, DISTINCT must keep pid (one row per patient)",
    )
}

/// An aggregation below the barrier that does not group by pid.
pub(crate) fn not_per_patient(group_exprs: &[Expr]) -> Refusal {
    let part = group_exprs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    Refusal::new(
        Rule::AggregationBarrier,
        if part.is_empty() {
            "an inner aggregation".to_string()
        } else {
            format!("GROUP BY {part}")
        },
        "an aggregation below the released one must group by pid (one row per patient)",
    )
    .hint("aggregate once, at the top, or GROUP BY pid in the subquery")
}

/// An aggregate inside an expression, or in a per-patient aggregation's output, that is
/// not an aggregate function call.
pub(crate) fn aggregate_out_of_place(part: &Expr) -> Refusal {
    Refusal::new(
        Rule::AggregationBarrier,
        part,
        "an aggregate here would not be the single aggregation at the top",
    )
}

/// A barrier no patient table's pid reaches.
pub(crate) fn no_patients_counted() -> Refusal {
    Refusal::new(Rule::AggregationBarrier, "the aggregation", "does not count patients: no pid reaches it")
        .hint("read a patient table (patient, diagnosis, genetic_finding, phenotype) and keep its pid in any subquery")
}

/// A join other than inner, left, right or full (semi and anti joins come from IN and
/// EXISTS subqueries).
pub(crate) fn check_join_type(join_type: JoinType) -> Result<(), Refusal> {
    if matches!(
        join_type,
        JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
    ) {
        return Ok(());
    }
    Err(Refusal::new(
        Rule::AggregationBarrier,
        format!("{join_type} join"),
        "only inner and outer joins are allowed",
    )
    .hint("subqueries in expressions (IN, EXISTS) are refused too: join the table instead"))
}

/// A table scan with a filter or limit already pushed into it (never planned from SQL
/// here; refused in case a planner change starts doing so unseen).
pub(crate) fn pushed_down(table: impl std::fmt::Display) -> Refusal {
    Refusal::new(
        Rule::AggregationBarrier,
        format!("table {table}"),
        "has an unexpected pushed-down filter or limit",
    )
}
