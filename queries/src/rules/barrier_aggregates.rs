//! Rule 4, barrier aggregates: what the released numbers are, and the plain values that
//! may flow into them.
//!
//! At the barrier: COUNT(*), COUNT(column), COUNT(DISTINCT pid), SUM and AVG over
//! numbers, and VAR_SAMP, VAR_POP, STDDEV_SAMP and STDDEV_POP over whole numbers (merged
//! exactly from COUNT, SUM and a sum of squares, [`crate::spread`]), one argument each, no
//! FILTER, no ORDER BY, no DISTINCT but over pid ([`check_barrier_aggregate`]). MIN, MAX,
//! medians, percentiles and list aggregates release individual values.
//!
//! A released `SUM(x)` over k patients tells a single patient's secret as soon as `x` can
//! be made to depend on a condition: `SUM(CAST(<one patient's attributes> AS INT) * v)`,
//! `SUM(1 - abs(signum(year - 1950)))`, a CASE computed in a subquery and summed above,
//! `SUM(power(100.0, year - 1980))` (per-year counts in base 100), a product that wraps or
//! reaches infinity only for some values. So every value that reaches a barrier
//! aggregate, through every subquery below it, must stay *plain*:
//!
//! - a stored column, or a whole-number literal;
//! - plain values added or subtracted, or multiplied by a whole-number literal;
//! - a cast to a signed integer type wide enough for every value it can hold (never of a
//!   boolean, never from text, never to a fraction);
//! - a per-patient COUNT, SUM, MIN or MAX of plain values.
//!
//! Plain values are whole numbers, computed exactly. Fractions are not plain, nor is any
//! division inside a released aggregate: floating-point rounding is a step function of
//! the value (red team: `((year - 2025) * 4.6e-19 + 1.0) - 1.0` is zero for everyone but
//! a patient born in 1881; a narrowing `TRY_CAST` is NULL for one patient only). A
//! released SUM or AVG is linear, so scaling the released total (`AVG(x) / 12.0`, done
//! on the network totals) gives the same answer exactly.
//!
//! Conditions, casts of booleans and non-linear functions stay allowed in WHERE and in
//! GROUP BY keys, where k covers them. Each plain value also carries a bound on its
//! magnitude, from the declared ranges of the data model, so a released sum can neither
//! overflow nor reach infinity: a value whose bound exceeds [`MAX_MAGNITUDE`] is refused.

use std::collections::HashMap;

use arrow::datatypes::DataType;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, Operator};

use crate::allowlist;
use crate::rules::functions::{self, Place};
use crate::rules::{Refusal, Rule, pid_use};
use crate::schema;
use crate::spread::Spread;
use crate::validate::{AggregateKind, Below, unalias};

pub(crate) fn check_barrier_aggregate(
    expr: &Expr,
    below: &Below,
    schema: &DFSchema,
) -> Result<AggregateKind, Refusal> {
    let pids = &below.pids;
    let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "is not an aggregate function",
        ));
    };
    let name = func.name().to_lowercase();
    if !allowlist::BARRIER_AGGREGATES.contains(&name.as_str()) {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!("{} is not a released aggregate", name.to_uppercase()),
        )
        .hint(allowlist::barrier_aggregate_hint(&name)));
    }
    if params.filter.is_some() {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "FILTER clauses are not allowed in released aggregates",
        )
        .hint("move the condition to WHERE, or GROUP BY it so each subgroup meets k on its own"));
    }
    if !params.order_by.is_empty() {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            "ordered aggregates are not allowed",
        ));
    }
    let args = &params.args;
    if args.len() > 1 {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!(
                "{} takes one argument here: several would hide which values are counted",
                name.to_uppercase()
            ),
        ));
    }
    let single_pid = match args.as_slice() {
        [arg] => pid_use::as_pid_column(arg, pids).is_some(),
        _ => false,
    };
    match (name.as_str(), params.distinct) {
        ("count", true) if single_pid => {
            let outer = args
                .first()
                .and_then(|arg| pid_use::as_pid_column(arg, pids))
                .is_some_and(|column| pids.is_outer(column));
            if outer {
                return Err(pid_use::outer_pid_counted(expr));
            }
            return Ok(AggregateKind::CountDistinctPid);
        }
        ("count", true) => {
            return Err(Refusal::new(Rule::BarrierAggregates, expr, "COUNT(DISTINCT …) is allowed only over pid")
                .hint("distinct counts of other values cannot be added across sites; GROUP BY the value and COUNT(DISTINCT pid)"));
        }
        (_, true) => {
            return Err(Refusal::new(
                Rule::BarrierAggregates,
                expr,
                "DISTINCT is allowed only in COUNT(DISTINCT pid)",
            ));
        }
        (_, false) if single_pid => return Err(pid_use::aggregated_pid(expr)),
        _ => {}
    }
    if let Some(why) = below.multiplied
        && weighs_rows(&name, params.distinct)
    {
        return Err(multiplied_rows(expr, why));
    }
    for arg in args {
        functions::check_scalar(arg, pids, schema, Place::Below)?;
        check_plain(expr, below.values.of_expr(arg, schema))?;
    }
    match name.as_str() {
        "count" => Ok(AggregateKind::Count),
        "sum" | "avg" => {
            let numeric = args
                .first()
                .and_then(|a| a.get_type(schema).ok())
                .is_some_and(|t| t.is_numeric());
            if !numeric {
                return Err(Refusal::new(
                    Rule::BarrierAggregates,
                    expr,
                    format!("{} needs a numeric argument", name.to_uppercase()),
                ));
            }
            Ok(if name == "sum" {
                AggregateKind::Sum
            } else {
                AggregateKind::Avg
            })
        }
        other => match Spread::of_function(other) {
            Some(spread) => {
                let source = args.first().map(|arg| below.values.of_expr(arg, schema));
                check_spread(expr, spread, args, schema, source)
            }
            None => Err(Refusal::new(
                Rule::BarrierAggregates,
                expr,
                "is not a released aggregate",
            )),
        },
    }
}

/// A spread (VAR_SAMP, VAR_POP, STDDEV_SAMP, STDDEV_POP) is released as exactly what
/// its three partials add up to ([`crate::spread`]): COUNT(x), SUM(x) and SUM(x * x).
/// Its argument is plain and numeric, like SUM's (checked above), and a whole number,
/// so that the partials and their merge are exact integers.
///
/// # Why k and dominance as for SUM suffice
/// Beside COUNT(x) and SUM(x) of the same group, a spread releases one more sum: the sum
/// of squares. It is a sum over the same patients' values, so the same defences hold
/// it: the patients with a non-zero value must reach k and those lacking one be none or
/// k ([`crate::split`]'s hidden counts, as behind SUM), and the dominance rule looks at
/// every value and every square ([`crate::validate::Barrier::summed_values`]): a patient
/// whose square holds most of the sum of squares (while their value does not hold most
/// of the sum, e.g. two tens among eight ones) is caught on the square. The dominance
/// rule measures concentration around zero, as for SUM. A variance does not depend on a
/// shift, yet shifting gains a differencing attacker nothing over SUM: one who knows
/// the other patients' values to within ε learns an outlier to within about n·ε from
/// the sum alone, and from the sum of squares no better unless the outlier's square
/// dominates it, which the rule drops; one who knows them exactly learns the outlier
/// from SUM or AVG already (the residual k accepts).
///
/// # One value
/// Its sum of squares is where a spread differs from a sum: the square of `x + y` holds
/// the product `xy`, so `VAR(x + y)`, `VAR(x)` and `VAR(y)` of one group give `Σxy`,
/// a sum of products that rule 4 never releases (nonzero for one patient alone when
/// every other has `x` or `y` zero; a covariance, which ern does not release either).
/// So the argument is one value, a column or a per-patient aggregate, shifted or scaled
/// by literals only ([`Source`]); two columns, even of the same table, or of two reads
/// of it, are refused.
fn check_spread(
    expr: &Expr,
    spread: Spread,
    args: &[Expr],
    schema: &DFSchema,
    value: Option<Value>,
) -> Result<AggregateKind, Refusal> {
    let name = expr_name(expr);
    if let Some(Value::Plain {
        source: Source::Several,
        ..
    }) = value
    {
        return Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!(
                "{name} takes one value, shifted or scaled by numbers written in the query: its sum of squares over a combination of values holds their products (three variances give a covariance)"
            ),
        )
        .hint("take the spread of each column on its own; GROUP BY a combination instead"));
    }
    let data_type = args.first().and_then(|a| a.get_type(schema).ok());
    match data_type {
        Some(t) if t.is_integer() => Ok(AggregateKind::Spread(spread)),
        Some(t) if t.is_numeric() => Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!("{name} needs a whole-number argument (its partials are exact integers)"),
        )),
        _ => Err(Refusal::new(
            Rule::BarrierAggregates,
            expr,
            format!("{name} needs a numeric argument"),
        )),
    }
}

/// The aggregate's function name as the researcher reads it in a refusal.
fn expr_name(expr: &Expr) -> String {
    match unalias(expr) {
        Expr::AggregateFunction(AggregateFunction { func, .. }) => func.name().to_uppercase(),
        _ => "the aggregate".to_string(),
    }
}

/// True for an aggregate whose result depends on how many rows each value has: COUNT,
/// SUM, AVG and the spreads (not COUNT(DISTINCT …), MIN, MAX, BOOL_AND, BOOL_OR).
pub(crate) fn weighs_rows(name: &str, distinct: bool) -> bool {
    !distinct && (matches!(name, "count" | "sum" | "avg") || Spread::of_function(name).is_some())
}

/// An aggregate that weighs values by rows whose number per patient can depend on a
/// condition.
pub(crate) fn multiplied_rows(aggregate: &Expr, why: &str) -> Refusal {
    Refusal::new(
        Rule::BarrierAggregates,
        aggregate,
        format!("weighs its values by {why}: that number of rows carries a condition into the aggregate"),
    )
    .hint("count patients with COUNT(DISTINCT pid), or aggregate per patient with MIN or MAX first (GROUP BY pid in a subquery)")
}

/// Rule 4's plain values: the argument of a released aggregate, traced through every
/// subquery, is plain and bounded (see [`crate::values`]).
fn check_plain(aggregate: &Expr, value: Value) -> Result<(), Refusal> {
    match value {
        Value::Derived(why) => Err(Refusal::new(
            Rule::BarrierAggregates,
            aggregate,
            format!(
                "its argument is {why}: a value that flows into a released aggregate must stay plain (whole-number columns combined with +, -, and * by a whole number)"
            ),
        )
        .hint("GROUP BY the condition or the computed value instead, so that each subgroup meets k on its own; scale a released total outside the aggregate, e.g. AVG(x) / 12.0")),
        Value::Plain { bound, .. } if bound.is_nan() || bound > MAX_MAGNITUDE => Err(Refusal::new(
            Rule::BarrierAggregates,
            aggregate,
            "its argument can exceed 2^32 in magnitude on one row, where a sum could overflow",
        )
        .hint("scale the released total instead, e.g. SUM(x) * 1000")),
        Value::Plain { .. } => Ok(()),
    }
}

/// The largest magnitude a value flowing into a released aggregate may reach on one row:
/// 2^32. Summed over fewer than 2^31 rows it stays inside a 64-bit integer, and far from
/// floating-point infinity.
pub(crate) const MAX_MAGNITUDE: f64 = 4_294_967_296.0;

/// The most rows one patient is assumed to contribute to a per-patient aggregate, for the
/// bound of a per-patient COUNT or SUM.
const ROWS_PER_PATIENT: f64 = 1_048_576.0;

/// What validation knows of one column's values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Value {
    /// A plain value, never larger than `bound` in magnitude.
    Plain {
        /// Largest magnitude (infinite where nothing bounds it).
        bound: f64,
        /// Which stored or per-patient values it combines.
        source: Source,
    },
    /// Computed by something that is not plain; the reason names it.
    Derived(&'static str),
}

/// Which values a plain value is a linear combination of (literals aside): a column of
/// one table scan or one per-patient aggregate output, each with an id of its own.
///
/// A spread releases a sum of squares, and squares of sums hold products: with
/// `VAR(x)`, `VAR(y)` and `VAR(x + y)` of the same rows, `Σxy` is their difference (red
/// team: a covariance, nonzero for one patient only, read off three variances that each
/// passed k and dominance). So a spread's argument is one value, shifted or scaled by
/// literals ([`check_spread`]), and no two spreads' squares combine into a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// Literals only.
    Constant,
    /// One value (its id).
    One(u64),
    /// Two values or more.
    Several,
}

impl Source {
    /// A source nothing else has.
    pub(crate) fn fresh() -> Source {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Source::One(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    fn and(self, other: Source) -> Source {
        match (self, other) {
            (Source::Constant, s) | (s, Source::Constant) => s,
            (Source::One(a), Source::One(b)) if a == b => Source::One(a),
            _ => Source::Several,
        }
    }
}

impl Value {
    fn plain(bound: f64) -> Value {
        Value::Plain {
            bound,
            source: Source::Constant,
        }
    }

    /// A plain value of a source of its own.
    fn fresh(bound: f64) -> Value {
        Value::Plain {
            bound,
            source: Source::fresh(),
        }
    }

    /// Combines two values with `combine` on their bounds, or the first reason either is
    /// not plain.
    fn with(self, other: Value, combine: impl FnOnce(f64, f64) -> f64) -> Value {
        match (self, other) {
            (
                Value::Plain {
                    bound: a,
                    source: s,
                },
                Value::Plain {
                    bound: b,
                    source: t,
                },
            ) => Value::Plain {
                bound: combine(a, b),
                source: s.and(t),
            },
            (Value::Derived(why), _) | (_, Value::Derived(why)) => Value::Derived(why),
        }
    }

    fn scaled(self, factor: f64) -> Value {
        self.with(Value::plain(0.0), |bound, _| bound * factor.abs())
    }

    /// The same bound, as a value of a source of its own (a per-patient aggregate's
    /// output is a new value, not the one it aggregates); a combination of several stays
    /// one (a per-patient `SUM(x + y)` is `SUM(x) + SUM(y)`).
    fn renewed(self) -> Value {
        match self {
            Value::Plain {
                source: Source::Several,
                ..
            } => self,
            Value::Plain { bound, .. } => Value::fresh(bound),
            derived => derived,
        }
    }
}

/// The values of a plan node's output columns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Values {
    columns: HashMap<Column, Value>,
}

impl Values {
    /// The columns of a table scan: stored values, bounded by their declared ranges.
    pub(crate) fn of_scan(scan_schema: &DFSchema) -> Values {
        let columns = scan_schema
            .iter()
            .map(|(qualifier, field)| {
                let bound = schema::declared_magnitude(field.name(), field.data_type()).unwrap_or(
                    match field.data_type() {
                        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 0.0,
                        _ => f64::INFINITY,
                    },
                );
                (
                    Column::new(qualifier.cloned(), field.name()),
                    Value::fresh(bound),
                )
            })
            .collect();
        Values { columns }
    }

    /// The value of one column; a column validation has not seen is not plain.
    pub(crate) fn get(&self, column: &Column) -> Value {
        self.columns
            .get(column)
            .copied()
            .unwrap_or(Value::Derived("a column of unknown origin"))
    }

    /// The columns of an outer join's nullable side: null wherever the join's condition
    /// fails, so in an aggregate they carry the condition inside it (red team round 3:
    /// `SUM(p.x) - SUM(q.x)` over `LEFT JOIN q ON … AND q.birth_year >= 1900` read one
    /// patient's values off the totals). They stay usable in WHERE and GROUP BY.
    pub(crate) fn nulled_by_outer_join(self) -> Values {
        Values {
            columns: self
                .columns
                .into_keys()
                .map(|column| {
                    (
                        column,
                        Value::Derived(
                            "taken from the nullable side of an outer join: null wherever the join's condition fails, which puts that condition inside the aggregate",
                        ),
                    )
                })
                .collect(),
        }
    }

    /// The same columns, none of them plain any more, for `why`.
    pub(crate) fn derived(self, why: &'static str) -> Values {
        Values {
            columns: self
                .columns
                .into_keys()
                .map(|column| (column, Value::Derived(why)))
                .collect(),
        }
    }

    /// Both sides of a join.
    pub(crate) fn union(mut self, other: Values) -> Values {
        self.columns.extend(other.columns);
        self
    }

    /// Output columns given with their values.
    pub(crate) fn from_outputs(outputs: impl IntoIterator<Item = (Column, Value)>) -> Values {
        Values {
            columns: outputs.into_iter().collect(),
        }
    }

    /// The same values under new names (`pairs` maps input to output columns).
    pub(crate) fn renamed(&self, pairs: &[(Column, Column)]) -> Values {
        Values::from_outputs(
            pairs
                .iter()
                .map(|(input, output)| (output.clone(), self.get(input))),
        )
    }

    /// The value of `expr`, evaluated on rows of `schema` whose columns hold `self`.
    pub(crate) fn of_expr(&self, expr: &Expr, schema: &DFSchema) -> Value {
        match expr {
            Expr::Alias(Alias { expr, .. }) => self.of_expr(expr, schema),
            Expr::Column(column) => self.get(column),
            Expr::Literal(value, _) => literal_value(value),
            Expr::Negative(inner) => self.of_expr(inner, schema),
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                self.of_arithmetic(left, *op, right, schema)
            }
            Expr::Cast(cast) => self.of_cast(&cast.expr, cast.field.data_type(), schema),
            Expr::TryCast(cast) => self.of_cast(&cast.expr, cast.field.data_type(), schema),
            Expr::Case(_) => Value::Derived("a CASE expression"),
            Expr::ScalarFunction(_) => Value::Derived("a function of a value"),
            Expr::AggregateFunction(_) => Value::Derived("an aggregate"),
            _ => Value::Derived("a condition or computed value"),
        }
    }

    fn of_arithmetic(&self, left: &Expr, op: Operator, right: &Expr, schema: &DFSchema) -> Value {
        match op {
            Operator::Plus | Operator::Minus => self
                .of_expr(left, schema)
                .with(self.of_expr(right, schema), |a, b| a + b),
            Operator::Multiply => {
                let (left_value, right_value) =
                    (self.of_expr(left, schema), self.of_expr(right, schema));
                match (literal_number(left), literal_number(right)) {
                    (_, Some(factor)) => {
                        left_value.with(right_value, |bound, _| bound * factor.abs())
                    }
                    (Some(factor), None) => {
                        right_value.with(left_value, |bound, _| bound * factor.abs())
                    }
                    (None, None) => Value::Derived("a product of two values"),
                }
            }
            Operator::Divide => Value::Derived(
                "a division (it rounds; divide the released total instead, e.g. AVG(x) / 12.0)",
            ),
            Operator::Modulo => Value::Derived("a remainder (a step function)"),
            _ => Value::Derived("a comparison or other operator"),
        }
    }

    fn of_cast(&self, inner: &Expr, target: &DataType, schema: &DFSchema) -> Value {
        let Ok(source) = inner.get_type(schema) else {
            return Value::Derived("a cast of a value of unknown type");
        };
        let whole_source = source.is_integer() || matches!(source, DataType::Date32);
        if source == DataType::Boolean {
            return Value::Derived("a cast of a boolean");
        }
        if !whole_source {
            return Value::Derived("a cast of a value that is not a whole number");
        }
        let Some(largest) = signed_integer_range(target) else {
            return Value::Derived("a cast to a type that is not a signed whole number");
        };
        match self.of_expr(inner, schema) {
            Value::Plain { bound, source } if bound <= largest => Value::Plain { bound, source },
            Value::Plain { .. } => Value::Derived(
                "a narrowing cast (a value out of its range would become NULL or fail)",
            ),
            derived => derived,
        }
    }

    /// The value a per-patient aggregate gives each patient.
    pub(crate) fn of_per_patient(&self, aggregate: &Expr, schema: &DFSchema) -> Value {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(aggregate) else {
            return Value::Derived("not an aggregate");
        };
        let argument = match params.args.as_slice() {
            [] => Value::plain(0.0),
            [argument] => self.of_expr(argument, schema),
            _ => return Value::Derived("an aggregate of several arguments"),
        };
        let per_patient = match func.name().to_lowercase().as_str() {
            // A count of rows with a value: no value of theirs is in it.
            "count" => match argument {
                Value::Plain { .. } => Value::fresh(ROWS_PER_PATIENT),
                derived => derived,
            },
            "sum" => argument.scaled(ROWS_PER_PATIENT),
            "min" | "max" => argument,
            "avg" => {
                Value::Derived("a per-patient average (a fraction: use SUM and COUNT per patient)")
            }
            _ => Value::Derived("a per-patient aggregate that is not COUNT, SUM, AVG, MIN or MAX"),
        };
        per_patient.renewed()
    }
}

fn literal_value(value: &ScalarValue) -> Value {
    if value.is_null() {
        return Value::plain(0.0);
    }
    if !value.data_type().is_integer() && value.data_type().is_numeric() {
        return Value::Derived(
            "a fractional number (values inside a released aggregate are whole numbers, computed exactly)",
        );
    }
    match scalar_number(value) {
        Some(number) if number.is_finite() => Value::plain(number.abs()),
        Some(_) => Value::Derived("an infinite or NaN literal"),
        // A text or date literal counts like any non-null value.
        None => Value::plain(0.0),
    }
}

/// The largest magnitude a signed integer type holds; `None` for any other type.
fn signed_integer_range(data_type: &DataType) -> Option<f64> {
    match data_type {
        DataType::Int8 => Some(i8::MAX as f64),
        DataType::Int16 => Some(i16::MAX as f64),
        DataType::Int32 => Some(i32::MAX as f64),
        DataType::Int64 => Some(i64::MAX as f64),
        _ => None,
    }
}

fn scalar_number(value: &ScalarValue) -> Option<f64> {
    if !value.data_type().is_numeric() {
        return None;
    }
    value
        .cast_to(&DataType::Float64)
        .ok()
        .and_then(|v| match v {
            ScalarValue::Float64(number) => number,
            _ => None,
        })
}

/// The number a literal (possibly cast or negated) stands for.
pub(crate) fn literal_number(expr: &Expr) -> Option<f64> {
    match unalias(expr) {
        Expr::Literal(value, _) => scalar_number(value).filter(|n| n.is_finite()),
        Expr::Cast(cast) => literal_number(&cast.expr),
        Expr::TryCast(cast) => literal_number(&cast.expr),
        Expr::Negative(inner) => literal_number(inner).map(|n| -n),
        _ => None,
    }
}
