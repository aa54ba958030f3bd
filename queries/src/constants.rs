//! Constant parts of a question that can only fail, found before any steward sees it.
//!
//! `WHERE birth_year > 'abc'` plans (the literal is cast to the column's type) but the
//! cast of `'abc'` to a number fails on every row; so does `CAST('2020-13-01' AS DATE)`
//! or `1 / 0`. A node makes every cast total (a NULL instead of an error, rule 7), so
//! such a question would be approved and answer nothing, and the researcher would never
//! learn why. A part of an expression that reads no column does not depend on data:
//! it is evaluated here, once, on the type-checked plan, and a failure is a mistake in
//! the question, reported with DataFusion's reason (it quotes only the question's own
//! literals).

use std::sync::Arc;

use arrow::array::{RecordBatch, RecordBatchOptions};
use arrow::datatypes::Schema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::execution::context::ExecutionProps;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_expr::create_physical_expr;

use crate::rules::{Refusal, Rule};

/// Refuses `plan` (type-checked) when a constant part of one of its expressions fails
/// to evaluate.
pub(crate) fn check_constants(plan: &LogicalPlan) -> Result<(), Refusal> {
    let mut refusal = None;
    // The walk's own result carries no error: every closure returns Ok.
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|part| {
                if !is_constant(part) {
                    return Ok(TreeNodeRecursion::Continue);
                }
                if let Some(error) = evaluation_error(part) {
                    refusal = Some(constant_refusal(part, &error));
                    return Ok(TreeNodeRecursion::Stop);
                }
                // Its parts are constant too, and evaluated with it.
                Ok(TreeNodeRecursion::Jump)
            })
        })
    });
    refusal.map_or(Ok(()), Err)
}

/// A part that reads no column and calls nothing that could differ between two
/// evaluations: its value is the same on every row of every site.
fn is_constant(expr: &Expr) -> bool {
    if matches!(expr, Expr::Literal(..)) {
        // Nothing to evaluate.
        return false;
    }
    let mut constant = true;
    let _ = expr.apply(|part| {
        let fixed = match part {
            Expr::Alias(_)
            | Expr::Literal(..)
            | Expr::BinaryExpr(_)
            | Expr::Like(_)
            | Expr::SimilarTo(_)
            | Expr::Not(_)
            | Expr::IsNotNull(_)
            | Expr::IsNull(_)
            | Expr::IsTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNotFalse(_)
            | Expr::IsNotUnknown(_)
            | Expr::Negative(_)
            | Expr::Between(_)
            | Expr::Case(_)
            | Expr::Cast(_)
            | Expr::TryCast(_)
            | Expr::InList(_) => true,
            Expr::ScalarFunction(function) => {
                function.func.signature().volatility == Volatility::Immutable
            }
            // Columns, variables, aggregates, windows, subqueries, lambdas: not constant.
            _ => false,
        };
        constant &= fixed;
        Ok(if fixed {
            TreeNodeRecursion::Continue
        } else {
            TreeNodeRecursion::Stop
        })
    });
    constant
}

/// The error of evaluating a constant part once, if it fails; `None` when it gives a
/// value, or when it cannot be built on its own (then it is not checked here).
fn evaluation_error(expr: &Expr) -> Option<DataFusionError> {
    let schema = DFSchema::empty();
    let physical = create_physical_expr(
        expr,
        &schema,
        &ExecutionProps::new(),
        &PhysicalPlanningContext::default(),
    )
    .ok()?;
    let one_row = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        vec![],
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )
    .ok()?;
    physical.evaluate(&one_row).err()
}

fn constant_refusal(part: &Expr, error: &DataFusionError) -> Refusal {
    let reason = error.strip_backtrace();
    let reason = reason
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("it fails");
    Refusal::new(
        Rule::OneQuery,
        part.human_display(),
        format!("does not depend on data and fails on every row: {reason}"),
    )
    .hint("write the value in the column's own type (numbers as numbers, dates as DATE '2020-01-01'), and divide by a constant other than 0")
    .as_mistake()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn checked(sql: &str) -> Result<(), Refusal> {
        let state = crate::catalog::planning_state().expect("state");
        let plan = state.create_logical_plan(sql).await.expect("plan");
        let analyzed = state
            .analyzer()
            .execute_and_check(plan, state.config_options(), |_, _| {})
            .expect("types");
        check_constants(&analyzed)
    }

    #[tokio::test]
    async fn a_constant_that_fails_on_every_row_is_a_mistake() {
        for sql in [
            "SELECT COUNT(*) AS n FROM patient WHERE birth_year > 'abc'",
            "SELECT COUNT(*) AS n FROM patient WHERE birth_year > CAST('1e' AS INT) + 1",
            "SELECT COUNT(*) AS n FROM diagnosis WHERE onset_date > CAST('2020-13-01' AS DATE)",
        ] {
            let refusal = checked(sql).await.expect_err(sql);
            assert!(refusal.mistake, "{sql}: {refusal}");
            assert!(
                refusal.to_string().contains("fails on every row"),
                "{sql}: {refusal}"
            );
        }
    }

    #[tokio::test]
    async fn constants_that_evaluate_and_data_dependent_parts_pass() {
        for sql in [
            "SELECT COUNT(*) AS n FROM patient WHERE birth_year > '1950'",
            "SELECT COUNT(*) AS n FROM patient WHERE birth_year > 1900 + 50",
            "SELECT COUNT(*) AS n FROM diagnosis WHERE onset_date > DATE '2020-01-01'",
            "SELECT sex, COUNT(*) AS n FROM patient WHERE CAST(birth_year AS VARCHAR) LIKE '19%' GROUP BY sex",
        ] {
            checked(sql).await.unwrap_or_else(|r| panic!("{sql}: {r}"));
        }
    }
}
