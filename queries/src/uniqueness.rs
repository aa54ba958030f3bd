//! Which columns of a plan's output hold each value at most once.
//!
//! Rule 6 makes every site count the distinct patients of every released group, and a
//! distinct count keeps a hash set of 64-character pids: on a large registry that costs
//! more than the question itself. Where the rows reaching the aggregation hold each pid at
//! most once, counting the non-null pids gives the same number without the set. This
//! module proves that per column, by walking the plan from the tables up, starting from
//! what the site knows of its own tables ([`SiteFacts`]). Anything it does not recognise
//! proves nothing, so the distinct count stays.

use std::collections::BTreeSet;

use datafusion::common::{Column, NullEquality};
use datafusion::logical_expr::expr::Alias;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{BinaryExpr, Expr, JoinType, LogicalPlan, Operator};

/// What a site has verified about its own data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SiteFacts {
    /// Tables whose `pid` column holds each patient at most once (for ern stores: the
    /// `patient` table, which a node checks when it opens the store).
    pub one_row_per_patient: BTreeSet<String>,
}

impl SiteFacts {
    /// Facts with the given tables known to hold one row per patient.
    pub fn with_unique_pid_tables<'a>(tables: impl IntoIterator<Item = &'a str>) -> Self {
        SiteFacts {
            one_row_per_patient: tables.into_iter().map(str::to_string).collect(),
        }
    }
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(Alias { expr, .. }) => unalias(expr),
        other => other,
    }
}

/// The output columns of `plan` whose non-null values each occur in at most one row.
/// Sound, not complete: an empty set means "not proven".
pub fn unique_columns(plan: &LogicalPlan, facts: &SiteFacts) -> BTreeSet<Column> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            if !facts.one_row_per_patient.contains(scan.table_name.table()) {
                return BTreeSet::new();
            }
            scan.projected_schema
                .columns()
                .into_iter()
                .filter(|c| c.name == "pid")
                .collect()
        }
        // Row for row, same columns: filters and limits only drop rows.
        LogicalPlan::Filter(filter) => unique_columns(&filter.input, facts),
        LogicalPlan::Limit(limit) => unique_columns(&limit.input, facts),
        LogicalPlan::Sort(sort) => unique_columns(&sort.input, facts),
        LogicalPlan::Distinct(distinct) => unique_columns(distinct.input(), facts),
        // Row for row, columns renamed by position.
        LogicalPlan::SubqueryAlias(alias) => {
            let inner = unique_columns(&alias.input, facts);
            alias
                .input
                .schema()
                .columns()
                .into_iter()
                .zip(alias.schema.columns())
                .filter(|(input, _)| inner.contains(input))
                .map(|(_, output)| output)
                .collect()
        }
        // Row for row: an output column that is a unique input column, as it is.
        LogicalPlan::Projection(projection) => {
            let inner = unique_columns(&projection.input, facts);
            projection
                .expr
                .iter()
                .enumerate()
                .filter(|(_, expr)| matches!(unalias(expr), Expr::Column(c) if inner.contains(c)))
                .map(|(index, _)| {
                    let (qualifier, field) = projection.schema.qualified_field(index);
                    Column::new(qualifier.cloned(), field.name())
                })
                .collect()
        }
        // Grouping by exactly one column gives each of its values one row.
        LogicalPlan::Aggregate(aggregate) => match aggregate.group_expr.as_slice() {
            [group] if matches!(unalias(group), Expr::Column(_)) => {
                aggregate.schema.columns().into_iter().take(1).collect()
            }
            _ => BTreeSet::new(),
        },
        LogicalPlan::Join(join) => {
            if join.null_equality != NullEquality::NullEqualsNothing
                || !matches!(
                    join.join_type,
                    JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
                )
            {
                return BTreeSet::new();
            }
            let left = unique_columns(&join.left, facts);
            let right = unique_columns(&join.right, facts);
            // Equalities of the join: its keys, and `a = b` conjuncts of its condition
            // (an unoptimised plan keeps `ON a = b` there) whose two sides come from
            // opposite inputs: `b.pid = b.pid` constrains nothing about the other side.
            let (left_schema, right_schema) = (join.left.schema(), join.right.schema());
            let mut equalities: Vec<(&Expr, &Expr)> = join.on.iter().map(|(l, r)| (l, r)).collect();
            if let Some(filter) = &join.filter {
                for conjunct in split_conjunction(filter) {
                    if let Expr::BinaryExpr(BinaryExpr {
                        left,
                        op: Operator::Eq,
                        right,
                    }) = conjunct
                    {
                        let column_in = |e: &Expr, schema: &datafusion::common::DFSchema| matches!(unalias(e), Expr::Column(c) if schema.has_column(c));
                        if column_in(left, left_schema) && column_in(right, right_schema) {
                            equalities.push((left, right));
                        } else if column_in(right, left_schema) && column_in(left, right_schema) {
                            equalities.push((right, left));
                        }
                    }
                }
            }
            let is_unique_in = |expr: &Expr, side: &BTreeSet<Column>| matches!(unalias(expr), Expr::Column(c) if side.contains(c));
            // A left row meets at most one right row when it must equal a column unique
            // on the right, and the other way round; a row left unmatched by an outer
            // join appears once, with nulls on the other side.
            let left_rows_once = equalities.iter().any(|(_, r)| is_unique_in(r, &right));
            let right_rows_once = equalities.iter().any(|(l, _)| is_unique_in(l, &left));
            let mut unique = BTreeSet::new();
            if left_rows_once {
                unique.extend(left);
            }
            if right_rows_once {
                unique.extend(right);
            }
            unique
        }
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::planning_context;

    async fn unique_names(sql: &str, facts: &SiteFacts) -> Vec<String> {
        let ctx = planning_context().expect("context");
        let plan = ctx.state().create_logical_plan(sql).await.expect("plan");
        let LogicalPlan::Projection(projection) = plan else {
            panic!("{sql}: not a projection at the top");
        };
        unique_columns(&projection.input, facts)
            .into_iter()
            .map(|c| c.flat_name())
            .collect()
    }

    fn patient_facts() -> SiteFacts {
        SiteFacts::with_unique_pid_tables(["patient"])
    }

    #[tokio::test]
    async fn nothing_is_unique_without_facts() {
        let names = unique_names("SELECT p.pid FROM patient p", &SiteFacts::default()).await;
        assert!(names.is_empty());
    }

    #[tokio::test]
    async fn patient_pid_survives_filters_and_aliases() {
        let names = unique_names(
            "SELECT q.id FROM (SELECT p.pid AS id, p.sex FROM patient p WHERE p.birth_year > 1950) q",
            &patient_facts(),
        )
        .await;
        assert_eq!(names, vec!["q.id".to_string()]);
    }

    #[tokio::test]
    async fn a_one_to_many_join_loses_uniqueness() {
        let names = unique_names(
            "SELECT p.pid FROM patient p JOIN diagnosis d ON p.pid = d.pid",
            &patient_facts(),
        )
        .await;
        assert!(names.is_empty(), "{names:?}");
    }

    #[tokio::test]
    async fn joining_per_patient_rows_keeps_uniqueness() {
        let names = unique_names(
            "SELECT p.pid, x.pid FROM patient p LEFT JOIN (SELECT d.pid, COUNT(*) AS n FROM diagnosis d GROUP BY d.pid) x ON p.pid = x.pid",
            &patient_facts(),
        )
        .await;
        assert_eq!(names, vec!["p.pid".to_string(), "x.pid".to_string()]);
    }

    #[tokio::test]
    async fn a_join_on_something_else_proves_nothing() {
        let names = unique_names(
            "SELECT p.pid FROM patient p JOIN patient q ON p.sex = q.sex",
            &patient_facts(),
        )
        .await;
        assert!(names.is_empty(), "{names:?}");
    }

    #[tokio::test]
    async fn an_equality_within_one_side_proves_nothing() {
        // Red team, class 3: `b.pid = b.pid` once "proved" the other side unique.
        let names = unique_names(
            "SELECT a.pid FROM patient a JOIN patient b ON b.pid = b.pid",
            &patient_facts(),
        )
        .await;
        assert!(names.is_empty(), "{names:?}");
        let names = unique_names(
            "SELECT a.pid FROM patient a JOIN patient b ON a.pid = a.pid",
            &patient_facts(),
        )
        .await;
        assert!(names.is_empty(), "{names:?}");
    }

    #[tokio::test]
    async fn grouping_by_two_columns_proves_nothing() {
        let names = unique_names(
            "SELECT d.pid FROM (SELECT d.pid, d.code FROM diagnosis d GROUP BY d.pid, d.code) d",
            &patient_facts(),
        )
        .await;
        assert!(names.is_empty(), "{names:?}");
    }
}
