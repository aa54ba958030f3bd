//! What a site computes, as an unambiguous byte string: the key of "one release of a
//! question" and of a node's noise (DESIGN.md, "Studies and privacy budgets").
//!
//! Two questions that release different numbers must never share a fingerprint: they
//! would share a noise seed and a ledger entry, and the difference of two such questions
//! would be exact and free (red team: `NOT (a AND b)` and `NOT a AND b` print alike, as
//! does a string literal that spells the plan text around it). So the fingerprint is not
//! the plan's printed text: every expression is written as a tree, node by node, with its
//! kind, every field that changes what it computes (operators, negations, types, function
//! names, literal values with their types, sort directions), and its number of children;
//! every string is length-prefixed; subqueries are written the same way, in place. Only
//! what cannot change a released number is left out: output names (aliases) and source
//! positions. The plan's one-line text is written beside each node as well (it only adds
//! distinctions). Equivalent questions written differently may get different
//! fingerprints: that only costs their asker a second charge.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::expr::{
    AggregateFunction, Alias, Between, Case, Cast, Exists, InList, InSubquery, Like,
    ScalarFunction, SetComparison, TryCast, WindowFunction,
};
use datafusion::logical_expr::{Expr, GroupingSet, LogicalPlan, Subquery};
use ring::digest;

/// A SHA-256 over length-prefixed parts.
pub(crate) struct Fingerprint {
    context: digest::Context,
}

impl Fingerprint {
    /// A fingerprint under `domain` (a versioned tag).
    pub(crate) fn new(domain: &str) -> Self {
        let mut fingerprint = Fingerprint {
            context: digest::Context::new(&digest::SHA256),
        };
        fingerprint.text(domain);
        fingerprint
    }

    /// One length-prefixed part.
    pub(crate) fn text(&mut self, part: &str) {
        self.context.update(&(part.len() as u64).to_be_bytes());
        self.context.update(part.as_bytes());
    }

    /// A count (of children, of expressions).
    fn count(&mut self, count: usize) {
        self.text(&count.to_string());
    }

    /// An expression tree.
    pub(crate) fn expr(&mut self, expr: &Expr) {
        self.text(expr.variant_name());
        self.local(expr);
        let mut children = Vec::new();
        // Only the direct children: recursion is ours.
        let _ = expr.apply_children(|child| {
            children.push(child);
            Ok(TreeNodeRecursion::Continue)
        });
        self.count(children.len());
        for child in children {
            self.expr(child);
        }
    }

    /// A plan tree: each node's one-line text, its expressions as trees, its inputs.
    pub(crate) fn plan(&mut self, plan: &LogicalPlan) {
        self.text(&plan.display().to_string());
        let expressions = plan.expressions();
        self.count(expressions.len());
        for expr in &expressions {
            self.expr(expr);
        }
        let inputs = plan.inputs();
        self.count(inputs.len());
        for input in inputs {
            self.plan(input);
        }
    }

    fn subquery(&mut self, subquery: &Subquery) {
        self.plan(&subquery.subquery);
        self.count(subquery.outer_ref_columns.len());
        for column in &subquery.outer_ref_columns {
            self.expr(column);
        }
    }

    fn flag(&mut self, name: &str, value: bool) {
        self.text(&format!("{name}={value}"));
    }

    /// What an expression node computes beyond its children.
    fn local(&mut self, expr: &Expr) {
        match expr {
            // Output names change no number.
            Expr::Alias(Alias { .. }) => {}
            Expr::Column(column) | Expr::OuterReferenceColumn(_, column) => {
                self.text(&format!("{:?}", column.relation));
                self.text(&column.name);
            }
            Expr::Literal(value, _) => {
                self.text(&value.data_type().to_string());
                self.text(&format!("{value:?}"));
            }
            Expr::BinaryExpr(binary) => self.text(&format!("{:?}", binary.op)),
            Expr::Like(Like {
                negated,
                escape_char,
                case_insensitive,
                ..
            })
            | Expr::SimilarTo(Like {
                negated,
                escape_char,
                case_insensitive,
                ..
            }) => {
                self.flag("negated", *negated);
                self.flag("case-insensitive", *case_insensitive);
                self.text(&format!("{escape_char:?}"));
            }
            Expr::Between(Between { negated, .. }) | Expr::InList(InList { negated, .. }) => {
                self.flag("negated", *negated);
            }
            Expr::Case(Case {
                expr,
                when_then_expr,
                else_expr,
            }) => {
                self.flag("operand", expr.is_some());
                self.count(when_then_expr.len());
                self.flag("else", else_expr.is_some());
            }
            Expr::Cast(Cast { field, .. }) | Expr::TryCast(TryCast { field, .. }) => {
                self.text(&field.data_type().to_string());
            }
            Expr::ScalarFunction(ScalarFunction { func, .. }) => self.text(func.name()),
            Expr::AggregateFunction(AggregateFunction { func, params }) => {
                self.text(func.name());
                self.flag("distinct", params.distinct);
                self.flag("filter", params.filter.is_some());
                self.text(&format!("{:?}", params.null_treatment));
                for sort in &params.order_by {
                    self.flag("asc", sort.asc);
                    self.flag("nulls-first", sort.nulls_first);
                }
            }
            Expr::WindowFunction(window) => {
                let WindowFunction { fun, params } = window.as_ref();
                self.text(fun.name());
                self.count(params.args.len());
                self.count(params.partition_by.len());
                for sort in &params.order_by {
                    self.flag("asc", sort.asc);
                    self.flag("nulls-first", sort.nulls_first);
                }
                self.text(&format!("{:?}", params.window_frame));
                self.flag("filter", params.filter.is_some());
                self.text(&format!("{:?}", params.null_treatment));
                self.flag("distinct", params.distinct);
            }
            Expr::Exists(Exists { subquery, negated }) => {
                self.flag("negated", *negated);
                self.subquery(subquery);
            }
            Expr::InSubquery(InSubquery {
                subquery, negated, ..
            }) => {
                self.flag("negated", *negated);
                self.subquery(subquery);
            }
            Expr::SetComparison(SetComparison {
                subquery,
                op,
                quantifier,
                ..
            }) => {
                self.text(&format!("{op:?} {quantifier:?}"));
                self.subquery(subquery);
            }
            Expr::ScalarSubquery(subquery) => self.subquery(subquery),
            Expr::GroupingSet(set) => match set {
                GroupingSet::Rollup(exprs) => self.text(&format!("rollup {}", exprs.len())),
                GroupingSet::Cube(exprs) => self.text(&format!("cube {}", exprs.len())),
                GroupingSet::GroupingSets(sets) => {
                    self.text("sets");
                    for set in sets {
                        self.count(set.len());
                    }
                }
            },
            Expr::ScalarVariable(_, names) => self.text(&names.join(".")),
            Expr::Placeholder(placeholder) => self.text(&placeholder.id),
            // Kinds whose kind and children say everything.
            Expr::Not(_)
            | Expr::IsNotNull(_)
            | Expr::IsNull(_)
            | Expr::IsTrue(_)
            | Expr::IsFalse(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNotFalse(_)
            | Expr::IsNotUnknown(_)
            | Expr::Negative(_) => {}
            // Kinds validation refuses: their text as well, which only adds distinctions.
            other => self.text(&other.to_string()),
        }
    }

    /// The hex digest.
    pub(crate) fn finish(self) -> String {
        hex::encode(self.context.finish().as_ref())
    }
}
