//! Validation: a researcher's SQL against the disclosure-control rules, walked once.
//!
//! The SQL is parsed with DataFusion's parser (rule 1: one statement, a query, known
//! names), planned against the node tables, and the unoptimised logical plan is walked
//! node by node and expression by expression: the top down to the barrier
//! ([`crate::rules::barrier`]), then everything below it, where each node is put to the
//! rules it concerns ([`crate::rules`] has one module per rule). Plan nodes, functions and
//! operators are matched against allowlists; anything unknown is refused. `pid` columns
//! are tracked through aliases, projections, joins and per-patient groupings, so renaming
//! `pid` does not hide it.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, DFSchemaRef};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::expr::{AggregateFunction, Alias};
use datafusion::logical_expr::{
    Aggregate, BinaryExpr, Distinct, Expr, Join, JoinType, LogicalPlan, Operator,
};

use crate::allowlist;
use crate::domain::AggregationMode;
use crate::rules::barrier_aggregates::{Value, Values};
use crate::rules::functions::{self, Place};
use crate::rules::pid_use::{self, PidSet};
use crate::rules::{Refusal, barrier, barrier_aggregates, one_query, resource_limits};
use crate::schema;
use crate::spread::Spread;

pub use crate::rules::one_query::sql_comments;
pub use crate::rules::resource_limits::{
    MAX_SQL_OPERATORS, MAX_SQL_TOKENS, MAX_TABLE_SCANS, PLANNING_STACK_BYTES,
};

/// What a released aggregate computes; each merges across sites in its own way.
#[derive(Debug, Clone, PartialEq)]
pub enum AggregateKind {
    /// `COUNT(*)` or `COUNT(column)`: partial counts add.
    Count,
    /// `COUNT(DISTINCT pid)`: patients are site-local, so per-site counts add.
    CountDistinctPid,
    /// `SUM(x)`: partial sums add.
    Sum,
    /// `AVG(x)`: sent as SUM(x) and COUNT(x), divided after the merge.
    Avg,
    /// `VAR_SAMP(x)`, `VAR_POP(x)`, `STDDEV_SAMP(x)` or `STDDEV_POP(x)`: sent as
    /// COUNT(x), SUM(x) and SUM(x * x), rebuilt exactly after the merge
    /// ([`crate::spread`]).
    Spread(Spread),
}

impl AggregateKind {
    /// What each of the partials it is sent as holds, in order (the names a noise report
    /// or a steward sees beside the aggregate; empty for the aggregate itself).
    pub fn partial_labels(&self) -> &'static [&'static str] {
        match self {
            AggregateKind::Count | AggregateKind::CountDistinctPid | AggregateKind::Sum => &[""],
            AggregateKind::Avg => &["sum", "count"],
            AggregateKind::Spread(_) => &["count", "sum", "sum of squares"],
        }
    }

    /// True for the aggregates that add up values (SUM, AVG and the spreads), behind
    /// which the patients with a value must reach k and no patient may dominate.
    pub fn sums_values(&self) -> bool {
        matches!(
            self,
            AggregateKind::Sum | AggregateKind::Avg | AggregateKind::Spread(_)
        )
    }
}

/// One aggregate of the barrier.
#[derive(Debug, Clone)]
pub struct BarrierAggregate {
    /// How it merges.
    pub kind: AggregateKind,
    /// The aggregate expression as planned (without alias).
    pub expr: Expr,
}

/// The aggregation barrier: what the sites compute and what the merge rebuilds.
#[derive(Debug, Clone)]
pub struct Barrier {
    /// The barrier node's input: the per-site part of the query.
    pub input: Arc<LogicalPlan>,
    /// GROUP BY expressions.
    pub group_exprs: Vec<Expr>,
    /// Released aggregates.
    pub aggregates: Vec<BarrierAggregate>,
    /// The barrier's output schema (group columns, then aggregates).
    pub schema: DFSchemaRef,
    /// The pid column the hidden patient count counts: every patient table of the input
    /// joins into its class (rule 3), so every row belongs to the patient it names.
    pub pid: Column,
    /// What the dominance rule looks at behind the released SUMs, AVGs and spreads, with
    /// the largest magnitude each takes on one row: every argument as written and every
    /// column it adds up (red team: `SUM(x - 75) + 75 * COUNT(x)` is `SUM(x)`, yet the
    /// shifted values hid the patient who dominates `x`), and behind a spread the square
    /// of each.
    pub summed_values: Vec<SummedValue>,
}

/// A value a released SUM, AVG or spread adds up: an argument, a column of one, or
/// (behind a spread) the square of either.
#[derive(Debug, Clone, PartialEq)]
pub struct SummedValue {
    /// The expression over the barrier's input.
    pub value: Expr,
    /// The largest magnitude it takes on one row (from the data model's declared ranges
    /// through every subquery; 2^32 where nothing smaller is known, its square for a
    /// square).
    pub bound: f64,
}

/// What a steward sees of a query before approving it (stored by the coordinator with the
/// question, so a steward's look at it plans nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ValidationReport {
    /// Tables read.
    pub tables: BTreeSet<String>,
    /// Columns referenced, as `table.column` where known.
    pub columns: BTreeSet<String>,
    /// Released aggregates as planned.
    pub aggregates: Vec<String>,
    /// GROUP BY expressions.
    pub group_by: Vec<String>,
    /// `secure` or `per-site` ([`crate::domain::AggregationMode::name`]); empty in reports
    /// stored before secure aggregation.
    #[serde(default)]
    pub mode: String,
    /// A secure question's public domain, one line per GROUP BY key
    /// ([`crate::domain::SecureDomain::describe`]).
    #[serde(default)]
    pub domain: Vec<String>,
    /// The number of cells of a secure question's domain; 0 per site.
    #[serde(default)]
    pub cells: u64,
    /// Why the question is aggregated per site, if it is.
    #[serde(default)]
    pub per_site_reason: Option<String>,
}

/// A query that passed validation.
#[derive(Debug, Clone)]
pub struct ValidatedQuery {
    /// The exact SQL text.
    pub sql: String,
    /// The full unoptimised plan.
    pub plan: LogicalPlan,
    /// The barrier.
    pub barrier: Barrier,
    /// The steward's report.
    pub report: ValidationReport,
}

/// Parses, plans and validates `sql` against the tables and functions of `state`
/// (reached through [`crate::Planner::plan`], which counts).
pub(crate) async fn validate(sql: &str, state: &SessionState) -> Result<ValidatedQuery, Refusal> {
    let statement = one_query::parse_one_query(sql)?;
    one_query::check_names(&statement, state)?;
    let plan = state
        .statement_to_plan(statement)
        .await
        .map_err(one_query::planning_refusal)?;
    let validated = validate_plan(sql, plan)?;
    // Types are checked here, where the question is refused with the reason, rather than
    // at the node, where a failure reaches the researcher as a reference id only.
    let analyzed = state
        .analyzer()
        .execute_and_check(validated.plan.clone(), state.config_options(), |_, _| {})
        .map_err(one_query::types_do_not_fit)?;
    // So are constants that fail on every row (`birth_year > 'abc'`).
    crate::constants::check_constants(&analyzed)?;
    Ok(validated)
}

/// Validates an already planned query (the plan of `sql`).
pub(crate) fn validate_plan(sql: &str, plan: LogicalPlan) -> Result<ValidatedQuery, Refusal> {
    resource_limits::check_table_scans(&plan)?;
    let mut report = ValidationReport::default();
    let barrier = barrier::check_top(&plan, &mut report)?;
    collect_columns(&plan, &mut report);
    Ok(ValidatedQuery {
        sql: sql.to_string(),
        plan,
        barrier,
        report,
    })
}

/// Secure or per-site aggregation, for the steward's report (filled by
/// [`crate::Planner::plan`], which derives the mode once per plan).
pub(crate) fn report_mode(mode: &AggregationMode, report: &mut ValidationReport) {
    report.mode = mode.name().to_string();
    match mode {
        AggregationMode::Secure(domain) => {
            report.domain = domain.describe();
            report.cells = domain.cells() as u64;
        }
        AggregationMode::PerSite { reason } => report.per_site_reason = Some(reason.clone()),
    }
}

/// Rules 2-4 at the barrier, and everything below it.
pub(crate) fn check_barrier(
    aggregate: &Aggregate,
    report: &mut ValidationReport,
) -> Result<Barrier, Refusal> {
    let input = &aggregate.input;
    let below = check_below(input, report)?;
    let pids = &below.pids;
    let schema = input.schema();
    for group in &aggregate.group_expr {
        if let Expr::GroupingSet(_) = group {
            return Err(functions::grouping_sets_refusal(group));
        }
        if pid_use::as_pid_column(group, pids).is_some() {
            return Err(pid_use::grouped_by_pid(group));
        }
        functions::check_scalar(group, pids, schema, Place::Below)?;
        report.group_by.push(group.to_string());
    }
    pids.check_one_class(|| "the aggregation".to_string())?;
    let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
    for expr in &aggregate.aggr_expr {
        let kind = barrier_aggregates::check_barrier_aggregate(expr, &below, schema)?;
        report.aggregates.push(unalias(expr).to_string());
        aggregates.push(BarrierAggregate {
            kind,
            expr: unalias(expr).clone(),
        });
    }
    let Some(pid) = pids.counted().cloned() else {
        return Err(barrier::no_patients_counted());
    };
    let summed_values = summed_values(&aggregates, &below, schema);
    Ok(Barrier {
        input: Arc::clone(input),
        group_exprs: aggregate.group_expr.clone(),
        aggregates,
        schema: Arc::clone(&aggregate.schema),
        pid,
        summed_values,
    })
}

/// What the dominance rule looks at behind the released SUMs, AVGs and spreads, each
/// once: every argument as written (a difference of two columns can be dominated by one
/// patient while neither column is) and every term it adds up, literals left out (a
/// shifted column, `x - 75`, can hide the patient who dominates `x` itself); behind a
/// spread, the square of each of them too (its sum of squares is released).
fn summed_values(
    aggregates: &[BarrierAggregate],
    below: &Below,
    schema: &DFSchema,
) -> Vec<SummedValue> {
    let mut values: Vec<SummedValue> = Vec::new();
    let mut add = |value: Expr, bound: Option<f64>| {
        let name = value.schema_name().to_string();
        if values
            .iter()
            .any(|known| known.value.schema_name().to_string() == name)
        {
            return;
        }
        let bound = bound
            .filter(|bound| bound.is_finite() && *bound > 0.0)
            .unwrap_or(crate::rules::barrier_aggregates::MAX_MAGNITUDE);
        values.push(SummedValue { value, bound });
    };
    let mut squares: Vec<(Expr, Option<f64>)> = Vec::new();
    for aggregate in aggregates.iter().filter(|a| a.kind.sums_values()) {
        let Expr::AggregateFunction(function) = &aggregate.expr else {
            continue;
        };
        let squared = matches!(aggregate.kind, AggregateKind::Spread(_));
        for argument in &function.params.args {
            let mut summed = vec![argument.clone()];
            summed.extend(additive_terms(argument));
            for value in summed {
                let bound = match below.values.of_expr(&value, schema) {
                    Value::Plain { bound, .. } => Some(bound),
                    Value::Derived(_) => None,
                };
                if squared {
                    squares.push((value.clone(), bound));
                }
                add(value, bound);
            }
        }
    }
    // A spread releases a sum of squares beside the sum: each square is a summed value
    // of its own, bounded by the square of its value's bound.
    for (value, bound) in squares {
        let bound = bound
            .filter(|bound| bound.is_finite() && *bound > 0.0)
            .unwrap_or(crate::rules::barrier_aggregates::MAX_MAGNITUDE);
        add(crate::spread::square(value), Some(bound * bound));
    }
    values
}

/// The terms an expression adds or subtracts, without its literals: `a + 2 * b - 75`
/// gives `a` and `2 * b`.
fn additive_terms(expr: &Expr) -> Vec<Expr> {
    match expr {
        Expr::Alias(alias) => additive_terms(&alias.expr),
        Expr::Negative(inner) => additive_terms(inner),
        Expr::BinaryExpr(binary)
            if matches!(
                binary.op,
                datafusion::logical_expr::Operator::Plus
                    | datafusion::logical_expr::Operator::Minus
            ) =>
        {
            let mut terms = additive_terms(&binary.left);
            terms.extend(additive_terms(&binary.right));
            terms
        }
        Expr::Literal(..) => Vec::new(),
        other => vec![other.clone()],
    }
}

/// What validation knows of a plan node's output below the barrier.
#[derive(Debug, Clone, Default)]
pub(crate) struct Below {
    /// Rule 3: the pid classes.
    pub(crate) pids: PidSet,
    /// Rule 4: which output columns hold plain values.
    pub(crate) values: Values,
    /// Rule 4: why a patient's number of rows here can depend on a condition or on a
    /// reference table's shape (a join with `orpha_closure`, an outer join to patient
    /// data); `None` where it cannot. Above such rows, an aggregate that weighs values by
    /// their rows (COUNT, SUM, AVG) carries that condition (red team round 4: a closure
    /// join that fanned out only one patient's row released her values as per-patient
    /// SUM minus MAX).
    pub(crate) multiplied: Option<&'static str>,
    /// Rule 4: why which rows, or how many, each patient has here was chosen by the
    /// question (a WHERE or join condition beyond pid equalities, an outer join, a
    /// reference table, DISTINCT, a grouping by more than pid); `None` for a patient's rows
    /// as stored. A per-patient COUNT, SUM, MIN or MAX over such rows carries that choice
    /// (red team round 5: per-patient SUM minus MAX over rows that a condition let
    /// multiply for one patient only released her values), so it may key a group but not
    /// flow into a released aggregate.
    pub(crate) shaped: Option<&'static str>,
    /// Rule 4: true where each patient has at most one row here (the patient table, a
    /// reference table, a per-patient grouping by pid alone, joins of those on pid).
    pub(crate) one_row_per_patient: bool,
    /// Rule 4: true where some of the output was computed by a per-patient aggregate.
    pub(crate) per_patient_values: bool,
}

/// Why a per-patient value is not plain once joined to rows that can repeat a patient.
const REPEATED_PER_PATIENT: &str = "a per-patient value joined to rows that can repeat the patient: it is counted once per row, weighted by the patient's number of rows, and beside the rows' own values that weight isolates the patients with several (red team: SUM(x.s) - SUM(d.v) over a per-patient SUM joined back to diagnosis was one patient's total); join it to one row per patient, or GROUP BY it";

/// Why a per-patient value is not plain, when its rows were shaped.
const SHAPED_PER_PATIENT: &str = "computed per patient over rows that a condition, a join, DISTINCT or a grouping by more than pid chose (that choice would sit inside the released aggregate; GROUP BY the per-patient value instead)";

/// Rules 1-5 below the barrier; returns what the plan's output holds.
fn check_below(plan: &LogicalPlan, report: &mut ValidationReport) -> Result<Below, Refusal> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table();
            if scan.table_name.schema().is_some_and(|s| s != "public")
                || !allowlist::TABLES.contains(&table)
            {
                return Err(one_query::unknown_table(format!(
                    "table {}",
                    scan.table_name
                )));
            }
            if !scan.filters.is_empty() || scan.fetch.is_some() {
                return Err(barrier::pushed_down(&scan.table_name));
            }
            report.tables.insert(table.to_string());
            let pid = scan
                .projected_schema
                .columns()
                .into_iter()
                .find(|c| c.name == "pid");
            let pids = match pid {
                Some(pid) if schema::PATIENT_TABLES.contains(&table) => {
                    PidSet::of_patient_scan(pid)
                }
                _ => PidSet::default(),
            };
            let multiplied = (table == schema::ORPHA_CLOSURE).then_some(
                "rows joined to orpha_closure, which gives each code one row per ancestor or descendant",
            );
            let shaped =
                (!schema::PATIENT_TABLES.contains(&table)).then_some("rows of a reference table");
            Ok(Below {
                pids,
                values: Values::of_scan(&scan.projected_schema),
                multiplied,
                shaped,
                // The data model holds one patient row per patient (ingest enforces it);
                // a reference table holds no patient.
                one_row_per_patient: table == "patient" || !schema::PATIENT_TABLES.contains(&table),
                per_patient_values: false,
            })
        }
        LogicalPlan::SubqueryAlias(alias) => {
            let inner = check_below(&alias.input, report)?;
            let pairs = positional_pairs(&alias.input, &alias.schema);
            Ok(Below {
                pids: inner
                    .pids
                    .project(&pairs, || format!("subquery {}", alias.alias))?,
                values: inner.values.renamed(&pairs),
                multiplied: inner.multiplied,
                shaped: inner.shaped,
                one_row_per_patient: inner.one_row_per_patient,
                per_patient_values: inner.per_patient_values,
            })
        }
        LogicalPlan::Projection(projection) => {
            let inner = check_below(&projection.input, report)?;
            let input_schema = projection.input.schema();
            inner.pids.check_one_class(|| "a SELECT list".to_string())?;
            let mut pairs = Vec::new();
            let mut outputs = Vec::new();
            for (index, expr) in projection.expr.iter().enumerate() {
                let (qualifier, field) = projection.schema.qualified_field(index);
                let output = Column::new(qualifier.cloned(), field.name());
                outputs.push((output.clone(), inner.values.of_expr(expr, input_schema)));
                if let Some(input) = pid_use::as_pid_column(expr, &inner.pids) {
                    pairs.push((input.clone(), output));
                    continue;
                }
                functions::check_scalar(expr, &inner.pids, input_schema, Place::Below)?;
            }
            Ok(Below {
                pids: inner
                    .pids
                    .project(&pairs, || selected_part(&projection.expr))?,
                values: Values::from_outputs(outputs),
                multiplied: inner.multiplied,
                shaped: inner.shaped,
                one_row_per_patient: inner.one_row_per_patient,
                per_patient_values: inner.per_patient_values,
            })
        }
        LogicalPlan::Filter(filter) => {
            let mut inner = match filter.input.as_ref() {
                LogicalPlan::Join(join) => check_join(join, report, &conjuncts(&filter.predicate))?,
                other => check_below(other, report)?,
            };
            let equalities =
                check_predicate(&filter.predicate, &inner.pids, filter.input.schema())?;
            if conjuncts(&filter.predicate).len() > equalities.len() {
                inner.shaped = inner.shaped.or(Some("rows a WHERE condition chose"));
            }
            for (a, b) in equalities {
                inner.pids.merge(&a, &b);
            }
            Ok(inner)
        }
        LogicalPlan::Join(join) => check_join(join, report, &[]),
        LogicalPlan::Aggregate(aggregate) => check_per_patient(aggregate, report),
        LogicalPlan::Distinct(Distinct::All(input)) => {
            let inner = check_below(input, report)?;
            inner.pids.check_one_class(|| "DISTINCT".to_string())?;
            if !pid_use::has_pid(input.schema(), &inner.pids) {
                return Err(barrier::distinct_without_pid());
            }
            let mut inner = inner;
            inner.shaped = inner.shaped.or(Some("rows DISTINCT chose"));
            Ok(inner)
        }
        LogicalPlan::Distinct(Distinct::On(_)) => Err(barrier::distinct_on_refusal()),
        other => Err(barrier::refuse_node(other, false)),
    }
}

fn selected_part(exprs: &[Expr]) -> String {
    let list = exprs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {list}")
}

/// A join's sides, conditions and the WHERE conjuncts above it (`inherited`: a join
/// written as `FROM a, b WHERE a.pid = b.pid` is planned as a cross join under a filter).
fn check_join(
    join: &Join,
    report: &mut ValidationReport,
    inherited: &[&Expr],
) -> Result<Below, Refusal> {
    barrier::check_join_type(join.join_type)?;
    let left = check_join_input(&join.left, report, inherited)?;
    let right = check_join_input(&join.right, report, inherited)?;
    let mut pids = left.pids.union(&right.pids);
    let (left_schema, right_schema) = (join.left.schema(), join.right.schema());
    let mut conditions: Vec<&Expr> = Vec::new();
    for (l, r) in &join.on {
        let (lp, rp) = (
            pid_use::as_pid_column(l, &pids).is_some(),
            pid_use::as_pid_column(r, &pids).is_some(),
        );
        if lp != rp {
            return Err(pid_use::pid_joined_to_other(l, r));
        }
        if !lp {
            functions::check_scalar(l, &pids, left_schema, Place::Below)?;
            functions::check_scalar(r, &pids, right_schema, Place::Below)?;
        }
    }
    let mut equal: Vec<(Column, Column)> = join
        .on
        .iter()
        .filter_map(|(l, r)| {
            Some((
                pid_use::as_pid_column(l, &pids)?.clone(),
                pid_use::as_pid_column(r, &pids)?.clone(),
            ))
        })
        .collect();
    if let Some(filter) = &join.filter {
        conditions = conjuncts(filter);
        for (a, b) in check_predicate(filter, &pids, &join.schema)? {
            equal.push((a, b));
        }
    }
    let spans = |expr: &Expr| spanning_equality(expr, left_schema, right_schema).is_some();
    let joined_on_something = !join.on.is_empty()
        || conditions.iter().any(|c| spans(c))
        || inherited.iter().any(|c| spans(c));
    if pids.reads_patients() && !joined_on_something {
        return Err(pid_use::cross_join(join.join_type));
    }
    let (left_reference, right_reference) =
        (!left.pids.reads_patients(), !right.pids.reads_patients());
    if left_reference || right_reference {
        let on_pairs: Vec<Expr> = join
            .on
            .iter()
            .map(|(l, r)| l.clone().eq(r.clone()))
            .collect();
        let on_a_code = on_pairs
            .iter()
            .chain(conditions.iter().copied())
            .chain(inherited.iter().copied())
            .any(|e| {
                code_equality(e, left_schema, right_schema).is_some_and(|(l, r)| {
                    (!left_reference || resource_limits::is_reference_key(l))
                        && (!right_reference || resource_limits::is_reference_key(r))
                })
            });
        if !on_a_code {
            return Err(resource_limits::reference_join_off_its_codes(
                join.join_type,
            ));
        }
    }
    if join.join_type == JoinType::Full && PidSet::both_read_patients(&left.pids, &right.pids) {
        return Err(pid_use::full_join_of_patients());
    }
    // Pid equalities merge classes only across the join's two inputs. An inner join
    // holds each of them on every row; an outer join only attaches the nullable side to
    // the preserved side, whose pid is the one counted.
    let mut across = Vec::new();
    for (a, b) in &equal {
        let a_left = left_schema.has_column(a);
        let b_left = left_schema.has_column(b);
        if a_left == b_left {
            continue;
        }
        let (on_left, on_right) = if a_left { (a, b) } else { (b, a) };
        across.push(match join.join_type {
            JoinType::Right => (on_right.clone(), on_left.clone()),
            _ => (on_left.clone(), on_right.clone()),
        });
    }
    match join.join_type {
        JoinType::Inner => {
            for (a, b) in &across {
                pids.merge(a, b);
            }
        }
        _ => pids.attach_outer(&across),
    }
    check_reference_preserved(join.join_type, &left.pids, &right.pids)?;
    let outer_to_patients = match join.join_type {
        JoinType::Left => right.pids.reads_patients(),
        JoinType::Right => left.pids.reads_patients(),
        JoinType::Full => left.pids.reads_patients() || right.pids.reads_patients(),
        _ => false,
    };
    let multiplied = left
        .multiplied
        .or(right.multiplied)
        .or(outer_to_patients.then_some(
        "rows of an outer join to patient data, which gives a patient one row or as many as match",
    ));
    let pid_on_pairs = join
        .on
        .iter()
        .filter(|(l, _)| pid_use::as_pid_column(l, &pids).is_some())
        .count();
    let filter_pid_pairs = equal.len() - pid_on_pairs;
    let conditions_beyond_pid = pid_on_pairs < join.on.len() || conditions.len() > filter_pid_pairs;
    let shaped = left
        .shaped
        .or(right.shaped)
        .or(outer_to_patients.then_some("rows an outer join matched"))
        .or(conditions_beyond_pid.then_some("rows a join condition chose"));
    let one_row_per_patient = left.one_row_per_patient && right.one_row_per_patient;
    let per_patient_values = left.per_patient_values || right.per_patient_values;
    let (left_flags, right_flags) = (
        (left.per_patient_values, left.one_row_per_patient),
        (right.per_patient_values, right.one_row_per_patient),
    );
    let (left_values, right_values) = match join.join_type {
        JoinType::Left => (left.values, right.values.nulled_by_outer_join()),
        JoinType::Right => (left.values.nulled_by_outer_join(), right.values),
        JoinType::Full => (
            left.values.nulled_by_outer_join(),
            right.values.nulled_by_outer_join(),
        ),
        _ => (left.values, right.values),
    };
    // A per-patient value repeated on each of the patient's rows from the other side.
    let repeated = |values: Values, per_patient_values: bool, other_one_row: bool| {
        if per_patient_values && !other_one_row {
            values.derived(REPEATED_PER_PATIENT)
        } else {
            values
        }
    };
    let left_values = repeated(left_values, left_flags.0, right_flags.1);
    let right_values = repeated(right_values, right_flags.0, left_flags.1);
    Ok(Below {
        pids,
        values: left_values.union(right_values),
        multiplied,
        shaped,
        one_row_per_patient,
        per_patient_values,
    })
}

/// A reference table on the preserved side of an outer join with patient data: its rows
/// without patients go on, counted by COUNT(*) but by no patient count, so a condition in
/// the join's ON can make one patient's match show in the row count (red team round 4).
fn check_reference_preserved(
    join_type: JoinType,
    left: &PidSet,
    right: &PidSet,
) -> Result<(), Refusal> {
    let (l, r) = (left.reads_patients(), right.reads_patients());
    let refused = match join_type {
        JoinType::Left => !l && r,
        JoinType::Right => l && !r,
        JoinType::Full => l != r,
        _ => false,
    };
    if refused {
        return Err(pid_use::reference_preserved(join_type));
    }
    Ok(())
}

/// One input of a join: a join below it sees the same WHERE conjuncts.
fn check_join_input(
    input: &LogicalPlan,
    report: &mut ValidationReport,
    inherited: &[&Expr],
) -> Result<Below, Refusal> {
    match input {
        LogicalPlan::Join(inner) => check_join(inner, report, inherited),
        other => check_below(other, report),
    }
}

/// `a = b` with `a`'s columns all from one input and `b`'s all from the other.
fn spanning_equality<'a>(
    expr: &'a Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Option<(&'a Expr, &'a Expr)> {
    let Expr::BinaryExpr(BinaryExpr {
        left: a,
        op: Operator::Eq,
        right: b,
    }) = expr
    else {
        return None;
    };
    let all_in = |e: &Expr, schema: &DFSchema| {
        let columns = e.column_refs();
        !columns.is_empty() && columns.iter().all(|c| schema.has_column(c))
    };
    if all_in(a, left) && all_in(b, right) || all_in(a, right) && all_in(b, left) {
        Some((a, b))
    } else {
        None
    }
}

/// `a = b` between two plain columns, one from each input, as (left column, right
/// column).
fn code_equality<'a>(
    expr: &'a Expr,
    left: &DFSchema,
    right: &DFSchema,
) -> Option<(&'a Column, &'a Column)> {
    let (a, b) = spanning_equality(expr, left, right)?;
    let (Expr::Column(a), Expr::Column(b)) = (unalias(a), unalias(b)) else {
        return None;
    };
    if left.has_column(a) {
        Some((a, b))
    } else {
        Some((b, a))
    }
}

/// Input and output columns of a node that renames its input's columns by position.
fn positional_pairs(input: &LogicalPlan, schema: &DFSchema) -> Vec<(Column, Column)> {
    input
        .schema()
        .columns()
        .into_iter()
        .zip(schema.columns())
        .collect()
}

/// Rule 2 below the barrier: an inner aggregation must be per patient.
fn check_per_patient(
    aggregate: &Aggregate,
    report: &mut ValidationReport,
) -> Result<Below, Refusal> {
    let inner = check_below(&aggregate.input, report)?;
    let schema = aggregate.input.schema();
    inner
        .pids
        .check_one_class(|| "an inner aggregation".to_string())?;
    let mut pairs = Vec::new();
    let mut outputs = Vec::new();
    for (index, group) in aggregate.group_expr.iter().enumerate() {
        if let Expr::GroupingSet(_) = group {
            return Err(functions::grouping_sets_refusal(group));
        }
        let (qualifier, field) = aggregate.schema.qualified_field(index);
        let output = Column::new(qualifier.cloned(), field.name());
        outputs.push((output.clone(), inner.values.of_expr(group, schema)));
        if let Some(input) = pid_use::as_pid_column(group, &inner.pids) {
            pairs.push((input.clone(), output));
        } else {
            functions::check_scalar(group, &inner.pids, schema, Place::Below)?;
        }
    }
    if pairs.is_empty() {
        return Err(barrier::not_per_patient(&aggregate.group_expr));
    }
    let more_than_pid = pairs.len() < aggregate.group_expr.len();
    let shaped = inner
        .shaped
        .or(more_than_pid.then_some("rows grouped by pid and more"));
    let pids = inner
        .pids
        .project(&pairs, || "a per-patient GROUP BY".to_string())?;
    let groups = aggregate.group_expr.len();
    for (index, expr) in aggregate.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
            return Err(barrier::aggregate_out_of_place(expr));
        };
        let name = func.name().to_lowercase();
        if !allowlist::PER_PATIENT_AGGREGATES.contains(&name.as_str()) {
            return Err(functions::not_per_patient_aggregate(expr, &name));
        }
        if params.filter.is_some() || !params.order_by.is_empty() {
            return Err(functions::aggregate_modifiers(expr));
        }
        if let Some(why) = inner.multiplied
            && barrier_aggregates::weighs_rows(&name, params.distinct)
        {
            return Err(barrier_aggregates::multiplied_rows(expr, why));
        }
        for arg in &params.args {
            functions::check_scalar(arg, &inner.pids, schema, Place::Below)?;
        }
        let (qualifier, field) = aggregate.schema.qualified_field(groups + index);
        let value = match shaped {
            Some(_) => Value::Derived(SHAPED_PER_PATIENT),
            None => inner.values.of_per_patient(expr, schema),
        };
        outputs.push((Column::new(qualifier.cloned(), field.name()), value));
    }
    // One row per patient now, whatever the rows below were, unless grouped by more.
    let rows_per_key = more_than_pid.then_some("rows of a per-patient grouping by pid and more");
    Ok(Below {
        pids,
        values: Values::from_outputs(outputs),
        multiplied: rows_per_key,
        shaped: rows_per_key,
        one_row_per_patient: !more_than_pid,
        per_patient_values: true,
    })
}

/// A WHERE or join predicate: its conjuncts may equate two pid columns (an equi-join
/// written in WHERE); otherwise pid may not appear.
/// Returns the pid equalities among the predicate's conjuncts.
fn check_predicate(
    predicate: &Expr,
    pids: &PidSet,
    schema: &DFSchema,
) -> Result<Vec<(Column, Column)>, Refusal> {
    let mut equal = Vec::new();
    for conjunct in conjuncts(predicate) {
        if let Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::Eq,
            right,
        }) = conjunct
            && let (Some(a), Some(b)) = (
                pid_use::as_pid_column(left, pids),
                pid_use::as_pid_column(right, pids),
            )
        {
            equal.push((a.clone(), b.clone()));
            continue;
        }
        functions::check_scalar(conjunct, pids, schema, Place::Below)?;
    }
    Ok(equal)
}

fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            let mut out = conjuncts(left);
            out.extend(conjuncts(right));
            out
        }
        other => vec![other],
    }
}

pub(crate) fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(Alias { expr, .. }) => unalias(expr),
        other => other,
    }
}

/// Columns referenced anywhere in the plan, for the steward's report.
fn collect_columns(plan: &LogicalPlan, report: &mut ValidationReport) {
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(_) = node {
            return Ok(TreeNodeRecursion::Continue);
        }
        for expr in node.expressions() {
            for column in expr.column_refs() {
                if !column.name.contains('(') {
                    report.columns.insert(column.flat_name());
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}
