//! Rule 5, allowed functions: scalar functions, operators and expression forms come from
//! allowlists ([`crate::allowlist`], each entry with why it is safe) and are total on the
//! node; window functions, grouping sets, DISTINCT ON, UNNEST and subqueries in
//! expressions are refused wherever they appear, each by its one constructor here.
//!
//! [`check_scalar`] walks every expression of the plan. Below the barrier (on patient
//! rows at a site) it also asks rule 3 whether pid is used and rule 7 whether the
//! expression could fail on one patient's value; above it (on network totals at the
//! coordinator) neither applies.

use std::fmt::Display;

use datafusion::common::DFSchema;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};

use crate::allowlist;
use crate::rules::pid_use::{self, PidSet};
use crate::rules::{Refusal, Rule, barrier, no_data_in_errors};
use crate::validate::unalias;

/// Where an expression is evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On patient rows at a site: may fail on a value, so failure-prone forms are refused.
    Below,
    /// On merged network totals at the coordinator.
    Above,
}

pub(crate) fn check_above(expr: &Expr) -> Result<(), Refusal> {
    check_scalar(expr, &PidSet::default(), &DFSchema::empty(), Place::Above)
}

/// Rules 3, 5 and 7 on one scalar expression and all its sub-expressions.
pub(crate) fn check_scalar(
    expr: &Expr,
    pids: &PidSet,
    schema: &DFSchema,
    place: Place,
) -> Result<(), Refusal> {
    let mut refusal: Option<Refusal> = None;
    let visit = expr.apply(|e| {
        let verdict = check_scalar_node(e, pids, schema, place);
        match verdict {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(r) => {
                refusal = Some(r);
                Ok(TreeNodeRecursion::Stop)
            }
        }
    });
    if let Err(e) = visit {
        return Err(Refusal::new(Rule::OneQuery, expr, e.strip_backtrace()));
    }
    refusal.map_or(Ok(()), Err)
}

fn check_scalar_node(
    e: &Expr,
    pids: &PidSet,
    schema: &DFSchema,
    place: Place,
) -> Result<(), Refusal> {
    match e {
        Expr::Column(column) => {
            if place == Place::Below && pid_use::is_pid(column, pids) {
                return Err(pid_use::pid_in_expression(column));
            }
            Ok(())
        }
        Expr::Literal(value, _)
            if place == Place::Below && no_data_in_errors::is_interval(&value.data_type()) =>
        {
            Err(no_data_in_errors::interval_arithmetic(e))
        }
        Expr::Literal(..)
        | Expr::Alias(_)
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
        | Expr::TryCast(_)
        | Expr::InList(_) => Ok(()),
        Expr::BinaryExpr(BinaryExpr { op, right, .. }) => check_operator(e, *op, right, place),
        Expr::Like(like) => {
            if matches!(unalias(&like.pattern), Expr::Literal(..)) {
                Ok(())
            } else {
                Err(Refusal::new(
                    Rule::AllowedFunctions,
                    e,
                    "LIKE patterns must be written in the query",
                ))
            }
        }
        Expr::SimilarTo(_) => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "SIMILAR TO (regular expressions) is not allowed",
        )
        .hint("use LIKE with a literal pattern")),
        Expr::Cast(cast) if place == Place::Below => no_data_in_errors::check_cast(e, cast, schema),
        Expr::Cast(_) => Ok(()),
        Expr::ScalarFunction(function) => {
            let name = function.name().to_lowercase();
            if allowlist::UNIT_FIRST.contains(&name.as_str())
                && !matches!(function.args.first().map(unalias), Some(Expr::Literal(..)))
            {
                Err(Refusal::new(
                    Rule::AllowedFunctions,
                    e,
                    format!("the unit of {name} must be written in the query"),
                )
                .hint(format!("e.g. {name}('year', …)")))
            } else if name == crate::width_bucket::NAME {
                crate::width_bucket::check_call(e, &function.args)
            } else if allowlist::is_allowed_scalar(&name) {
                Ok(())
            } else {
                Err(not_on_the_allowlist(e, &name))
            }
        }
        Expr::AggregateFunction(_) => Err(barrier::aggregate_out_of_place(e)),
        Expr::WindowFunction(_) => Err(window_refusal(e)),
        Expr::GroupingSet(_) => Err(grouping_sets_refusal(e)),
        Expr::Exists(_)
        | Expr::InSubquery(_)
        | Expr::ScalarSubquery(_)
        | Expr::SetComparison(_) => Err(subquery_refusal(e)),
        Expr::Unnest(_) => Err(unnest_refusal(e)),
        _ => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            "this kind of expression is not allowed",
        )),
    }
}

fn check_operator(e: &Expr, op: Operator, right: &Expr, place: Place) -> Result<(), Refusal> {
    use Operator::*;
    match op {
        Eq | NotEq | Lt | LtEq | Gt | GtEq | Plus | Minus | Multiply | And | Or
        | IsDistinctFrom | IsNotDistinctFrom | StringConcat => Ok(()),
        Divide | Modulo => {
            if place == Place::Above || no_data_in_errors::is_safe_divisor(right) {
                Ok(())
            } else {
                Err(no_data_in_errors::unsafe_divisor(e))
            }
        }
        other => Err(Refusal::new(
            Rule::AllowedFunctions,
            e,
            format!("the operator {other} is not allowed"),
        )),
    }
}

/// A window function (`… OVER (…)`).
pub(crate) fn window_refusal(part: impl Display) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        part,
        "window functions are not allowed",
    )
    .hint("GROUP BY the partition columns instead")
}

/// ROLLUP, CUBE or GROUPING SETS.
pub(crate) fn grouping_sets_refusal(part: impl Display) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        part,
        "ROLLUP, CUBE and GROUPING SETS are not allowed",
    )
    .hint("send one query per grouping")
}

/// A subquery inside an expression (scalar, IN, EXISTS, ANY/ALL).
pub(crate) fn subquery_refusal(part: impl Display) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        part,
        "subqueries in expressions (scalar, IN, EXISTS) are not allowed",
    )
    .hint("JOIN the table instead")
}

/// UNNEST.
pub(crate) fn unnest_refusal(part: impl Display) -> Refusal {
    Refusal::new(Rule::AllowedFunctions, part, "UNNEST is not allowed")
}

/// A function DataFusion does not know at all.
pub(crate) fn unknown_function(name: &str) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        format!("{name}(…)"),
        "is not a function this network knows",
    )
    .hint(format!(
        "allowed: {}",
        allowlist::scalar_function_names().join(", ")
    ))
    .as_mistake()
}

/// A known scalar function that is not on the allowlist.
fn not_on_the_allowlist(part: &Expr, name: &str) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        part,
        format!("{name} is not on the allowlist of scalar functions"),
    )
    .hint(format!(
        "allowed: {}",
        allowlist::scalar_function_names().join(", ")
    ))
}

/// An aggregate function a per-patient grouping may not use.
pub(crate) fn not_per_patient_aggregate(part: &Expr, name: &str) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        part,
        format!(
            "{} is not allowed in a per-patient aggregation",
            name.to_uppercase()
        ),
    )
}

/// FILTER or ORDER BY inside a per-patient aggregate.
pub(crate) fn aggregate_modifiers(part: &Expr) -> Refusal {
    Refusal::new(
        Rule::AllowedFunctions,
        part,
        "FILTER and ORDER BY inside aggregates are not allowed",
    )
}
