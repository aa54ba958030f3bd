//! Split and merge: one validated query becomes a per-site plan and a merge step.
//!
//! The site plan is the barrier aggregate rewritten into partials that add up across
//! sites (COUNT and SUM as they are, AVG as SUM and COUNT, a variance or standard
//! deviation as COUNT, SUM and a sum of squares, [`crate::spread`]), plus the hidden
//! `COUNT(DISTINCT pid)` per group that the node uses to suppress small groups and then
//! drops. The merge sums the partials by group key over all sites' batches and then
//! evaluates everything the query puts above the barrier (expressions over aggregates,
//! HAVING, ORDER BY, LIMIT, output names) on the network totals, with DataFusion over an
//! in-memory table.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::common::{Column, ExprSchema};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, cast, col, lit,
};
use datafusion::prelude::SessionContext;

use crate::bounding::{
    Bounding, Clamp, argument_bound, bound_patients, first_keys_per_patient, unpack_keys,
};
use crate::catalog::session_config;
use crate::rules::group_size::{Dominance, top_abs_sum};
use crate::uniqueness::{SiteFacts, unique_columns};
use crate::validate::{AggregateKind, Barrier, ValidatedQuery};

/// Prefix of the hidden per-group patient counts in a site plan's output.
pub const HIDDEN_PATIENTS: &str = "__patients";

/// Prefix of the hidden counts of patients with a row *without* a value behind `COUNT(x)`,
/// `SUM(x)` and `AVG(x)`: they must be none or at least k, since `COUNT(*) - COUNT(x)`
/// read how many they are (red team round 3) and `SUM(a) - SUM(a + y - y)` their values
/// (round 4), even when they have other rows with a value (round 5).
pub const HIDDEN_LACKING: &str = "__lacking";

/// Prefix of the hidden per-group dominance shares (see [`crate::rules::group_size`]): for each
/// released SUM and AVG, the share of the group's total absolute value that its largest
/// patient contributions hold.
pub const HIDDEN_DOMINANCE: &str = "__dominance";

/// Prefix of the hidden per-group sums of squared patient contributions to a released
/// SUM or AVG, in a secure site plan (see [`Concentration::Moments`]).
pub const HIDDEN_SQUARES: &str = "__squares";

/// Prefix of the hidden per-group sums of absolute patient contributions to a released
/// SUM or AVG, in a secure site plan.
pub const HIDDEN_ABSOLUTES: &str = "__absolutes";

/// True for a hidden column of a site plan (patient counts, dominance shares, moments).
pub fn is_hidden(name: &str) -> bool {
    name.starts_with(HIDDEN_PATIENTS)
        || name.starts_with(HIDDEN_DOMINANCE)
        || name.starts_with(HIDDEN_LACKING)
        || name.starts_with(HIDDEN_SQUARES)
        || name.starts_with(HIDDEN_ABSOLUTES)
        || name.starts_with(HIDDEN_OUTSIZED)
}

/// Prefix of the hidden per-group counts of patients whose contribution to a summed
/// column is beyond what the secure moments carry ([`MOMENT_LIMIT`]).
pub const HIDDEN_OUTSIZED: &str = "__outsized";

/// How a site plan measures how much of a released sum its largest patients hold.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Concentration {
    /// Per-site release: the share of the group's absolute total held by its `top`
    /// largest patient contributions, checked by the node against its own limit.
    TopShare(Dominance),
    /// Secure aggregation: the sums of squared and of absolute patient contributions,
    /// which add up across sites, so the coordinator checks the concentration of the
    /// network total (sum of squares over the squared sum of absolute values) without
    /// seeing any patient's value.
    Moments,
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
    /// One patient could move a released partial of this aggregate by more than 2^64,
    /// so no noise can be calibrated for it (see [`crate::bounding::sensitivity`]).
    #[error("one patient could move a partial of {0} by more than 2^64: too much to noise")]
    TooSensitive(String),
}

fn group_name(index: usize) -> String {
    format!("__g{index}")
}

fn partial_name(index: usize) -> String {
    format!("__p{index}")
}

/// The first argument of an aggregate call.
pub(crate) fn argument_of(expr: &Expr) -> Option<Expr> {
    match expr {
        Expr::AggregateFunction(AggregateFunction { params, .. }) => params.args.first().cloned(),
        _ => None,
    }
}

/// How a site plan counts the patients of each pid column.
#[derive(Default)]
struct Counting {
    /// Pid columns whose non-null values each occur in one row at most
    /// (see [`crate::uniqueness`]).
    unique: BTreeSet<Column>,
    /// Of those, the ones that are never null: every row is one patient, and counting
    /// rows reads no pid at all.
    every_row: BTreeSet<Column>,
}

impl Counting {
    fn new(barrier: &Barrier, facts: &SiteFacts) -> Self {
        let unique = unique_columns(&barrier.input, facts);
        let schema = barrier.input.schema();
        let every_row = unique
            .iter()
            .filter(|pid| {
                schema
                    .field_from_column(pid)
                    .is_ok_and(|field| !field.is_nullable())
            })
            .cloned()
            .collect();
        Counting { unique, every_row }
    }

    /// What a plain count counts for `pid`: rows, or the pid's non-null values.
    fn counted(&self, pid: &Column) -> Expr {
        if self.every_row.contains(pid) {
            lit(1_i64)
        } else {
            Expr::Column(pid.clone())
        }
    }
}

/// The number of distinct patients in `pid`: a plain count where the rows hold each
/// patient at most once.
fn patients_in(pid: &Column, counting: &Counting) -> Expr {
    if counting.unique.contains(pid) {
        count(counting.counted(pid))
    } else {
        count_distinct(Expr::Column(pid.clone()))
    }
}

/// [`patients_in`] over the rows where `condition` holds.
///
/// The builder's `build` sets DISTINCT from its own flag (false unless asked), whatever
/// the expression it started from said, so the flag is set here explicitly.
fn patients_where(
    pid: &Column,
    counting: &Counting,
    condition: Expr,
) -> Result<Expr, DataFusionError> {
    if counting.unique.contains(pid) {
        count(counting.counted(pid)).filter(condition).build()
    } else {
        count(Expr::Column(pid.clone()))
            .filter(condition)
            .distinct()
            .build()
    }
}

/// The partial aggregates a barrier aggregate is sent as.
fn partials(kind: &AggregateKind, expr: &Expr, counting: &Counting) -> Vec<Expr> {
    match kind {
        AggregateKind::CountDistinctPid => match argument_of(expr) {
            Some(Expr::Column(pid)) if counting.unique.contains(&pid) => {
                vec![patients_in(&pid, counting)]
            }
            _ => vec![expr.clone()],
        },
        AggregateKind::Count | AggregateKind::Sum => vec![expr.clone()],
        AggregateKind::Avg => {
            let argument = argument_of(expr).unwrap_or_else(|| datafusion::logical_expr::lit(0));
            vec![
                sum(cast(argument.clone(), DataType::Float64)),
                count(argument),
            ]
        }
        AggregateKind::Spread(_) => {
            crate::spread::partials(argument_of(expr).unwrap_or_else(|| lit(0_i64)))
        }
    }
}

/// One hidden patient count: the distinct patients of the query's one pid class, or
/// only those of them whose contribution to an aggregate counts.
struct HiddenCount {
    /// `None` for all patients of the group.
    with_value: Option<Contribution>,
    /// True for the count of patients with a row without a value: it must be none or at
    /// least k (the others must reach k).
    lacking: bool,
}

/// The patients who contribute to a released aggregate over an argument, or who lack it.
struct Contribution {
    /// The argument.
    value: Expr,
    /// Which patients count.
    kind: Counted,
    /// For [`Counted::Lacking`]: only rows where this other released argument has a
    /// value (red team round 6 padded the patients lacking `x` with k patients lacking
    /// every argument, then read `SUM(a) - SUM(a + y - y)` off the one patient with `a`
    /// but not `y`).
    beside: Option<Expr>,
}

/// Which patients a hidden count counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counted {
    /// Those with a non-null, non-zero contribution (behind SUM and AVG: a sum over a
    /// thousand patients of whom one is not zero is that one patient's value).
    NonZero,
    /// Those with a non-null value (behind COUNT(x)).
    Valued,
    /// Those with a row without a value.
    Lacking,
}

impl Contribution {
    /// The rows where this contribution counts, in a one-phase plan.
    fn on_row(&self) -> Expr {
        let present = self.value.clone().is_not_null();
        match self.kind {
            Counted::NonZero => present.and(
                cast(self.value.clone(), DataType::Float64)
                    .not_eq(datafusion::logical_expr::lit(0.0)),
            ),
            Counted::Valued => present,
            Counted::Lacking => match &self.beside {
                None => self.value.clone().is_null(),
                Some(other) => other
                    .clone()
                    .is_not_null()
                    .and(self.value.clone().is_null()),
            },
        }
    }

    /// A patient's contribution in a per-patient plan (a count of values, the sum of
    /// them, or the count of rows without one), and what makes it count.
    fn per_patient(&self) -> (Expr, Expr) {
        match self.kind {
            Counted::NonZero => (
                sum(cast(self.value.clone(), DataType::Float64)),
                datafusion::logical_expr::lit(0.0),
            ),
            Counted::Valued => (
                count(self.value.clone()),
                datafusion::logical_expr::lit(0_i64),
            ),
            Counted::Lacking => (
                count(Expr::Case(datafusion::logical_expr::expr::Case::new(
                    None,
                    vec![(
                        Box::new(self.on_row()),
                        Box::new(datafusion::logical_expr::lit(1_i64)),
                    )],
                    None,
                ))),
                datafusion::logical_expr::lit(0_i64),
            ),
        }
    }
}

/// The hidden patient counts of a group; the node releases a group only when the smallest
/// is at least k.
///
/// - `COUNT(DISTINCT pid)` for the query's one pid class (rule 3 makes every row of the
///   input belong to the patient it names).
/// - For every released aggregate over an argument (`COUNT(x)`, `SUM(x)`, `AVG(x)`), the
///   patients whose contribution counts (see [`Contribution`]).
fn hidden_counts(barrier: &Barrier) -> Vec<HiddenCount> {
    let mut counts = vec![HiddenCount {
        with_value: None,
        lacking: false,
    }];
    let mut add = |value: &Expr, kind: Counted, beside: Option<&Expr>| {
        counts.push(HiddenCount {
            with_value: Some(Contribution {
                value: value.clone(),
                kind,
                beside: beside.cloned(),
            }),
            lacking: kind == Counted::Lacking,
        });
    };
    let mut valued_arguments: Vec<Expr> = Vec::new();
    for aggregate in &barrier.aggregates {
        let Some(argument) = argument_of(&aggregate.expr) else {
            continue;
        };
        if matches!(&argument, Expr::Column(c) if *c == barrier.pid) {
            continue;
        }
        if aggregate.kind.sums_values() {
            add(&argument, Counted::NonZero, None);
        }
        let every_row_has_one = matches!(argument, Expr::Literal(ref v, _) if !v.is_null());
        if !every_row_has_one {
            if aggregate.kind == AggregateKind::Count {
                add(&argument, Counted::Valued, None);
            }
            // The patients with a row without a value: COUNT(x), SUM(x) and AVG(x)
            // all leave those rows out.
            add(&argument, Counted::Lacking, None);
            let name = argument.schema_name().to_string();
            if !valued_arguments
                .iter()
                .any(|known| known.schema_name().to_string() == name)
            {
                valued_arguments.push(argument);
            }
        }
    }
    // Between two released arguments: the patients with a row where one has a value and
    // the other has none must be none or at least k too.
    for first in &valued_arguments {
        for second in &valued_arguments {
            if first.schema_name().to_string() != second.schema_name().to_string() {
                add(second, Counted::Lacking, Some(first));
            }
        }
    }
    counts
}

/// Where `expr` sits in `computed`, adding it if no expression of the same name is there.
fn position_of(computed: &mut Vec<Expr>, expr: Expr) -> usize {
    let name = expr.schema_name().to_string();
    match computed
        .iter()
        .position(|e| e.schema_name().to_string() == name)
    {
        Some(index) => index,
        None => {
            computed.push(expr);
            computed.len() - 1
        }
    }
}

/// The per-site plan: group keys `__g0…`, partials `__p0…`, and the hidden patient
/// counts `__patients_…` (see [`hidden_counts`]), in that order. `facts` is what the
/// site has verified about its own tables; [`SiteFacts::default`] assumes nothing;
/// `dominance` is the site's own dominance rule.
///
/// Two shapes, same output:
/// - Where the rows hold each patient at most once, one aggregation (see
///   [`one_phase_site_plan`]).
/// - Otherwise, one row per group and patient first, then the groups (see
///   [`per_patient_site_plan`]): no per-group hash set of pids at all.
///
/// Every aggregation computes each distinct expression once, under its own name, as
/// DataFusion's SQL planner does, and a projection above it gives the output names:
/// optimiser rules recognise only unaliased aggregates.
///
/// With `bounding` (a site that noises what it releases), the per-patient rows are
/// bounded before the groups are summed (see [`crate::bounding`]); the one-phase plan
/// needs no bounding (one group and one row per patient).
pub(crate) fn site_plan(
    barrier: &Barrier,
    facts: &SiteFacts,
    concentration: Concentration,
    bounding: Option<Bounding>,
) -> Result<LogicalPlan, SplitError> {
    let counting = Counting::new(barrier, facts);
    if counting.unique.contains(&barrier.pid) {
        one_phase_site_plan(barrier, &counting, concentration)
    } else {
        per_patient_site_plan(barrier, &barrier.pid, concentration, bounding)
    }
}

/// True where the site plan over `barrier` for `facts` sees each patient on one row.
pub(crate) fn one_row_per_patient(barrier: &Barrier, facts: &SiteFacts) -> bool {
    Counting::new(barrier, facts).unique.contains(&barrier.pid)
}

/// What the dominance rule looks at (see [`Barrier::summed_values`]), as Float64, with
/// their one-row bounds: each patient's contribution to each is checked.
fn summed_columns(barrier: &Barrier) -> Vec<(Expr, f64)> {
    barrier
        .summed_values
        .iter()
        .map(|summed| (cast(summed.value.clone(), DataType::Float64), summed.bound))
        .collect()
}

/// The fixed-point unit of the secure moments: a contribution `c` of a value bounded by
/// `B` on one row is sent as `q = c / B` in units of 2^-30 (and `q²` likewise), fine
/// enough that rounding each patient's square up overstates a cell's concentration by
/// a few per cent at most, even for values far below their bound.
pub const MOMENT_UNIT: f64 = 1_073_741_824.0;

/// The largest `|q|` (contribution over the one-row bound) the secure moments carry: a
/// patient beyond it (more than 32 rows at the bound) is counted in [`HIDDEN_OUTSIZED`]
/// instead, and a cell with any such patient is dropped. With it, a patient adds at most
/// 2^40 units of squares, so 2^23 patients of one cell sum below 2^63 across the
/// network: the totals never wrap (red team: `SUM(age * 28600000)` wrapped the sum of
/// squares past 2^64 and hid a dominant patient).
pub const MOMENT_LIMIT: f64 = 32.0;

/// Over one row per patient, for a column bounded by `bound` on one row: the largest
/// `top` absolute contributions and the sum of all absolute contributions
/// ([`Concentration::TopShare`]); or, in fixed point relative to the bound, the sum of
/// squared contributions (rounded up), the sum of absolute ones (rounded down) and the
/// number of outsized patients ([`Concentration::Moments`]): the rounding can only
/// overstate the concentration.
fn dominance_aggregates(contribution: Expr, bound: f64, concentration: Concentration) -> Vec<Expr> {
    use datafusion::functions::math::expr_fn::{abs, ceil, floor};
    match concentration {
        Concentration::TopShare(dominance) => vec![
            top_abs_sum(dominance.top, contribution.clone()),
            sum(abs(contribution)),
        ],
        Concentration::Moments => {
            let relative = contribution / lit(bound);
            vec![
                sum(ceil(relative.clone() * relative.clone() * lit(MOMENT_UNIT))),
                sum(floor(abs(relative.clone()) * lit(MOMENT_UNIT))),
                sum(cast(abs(relative).gt(lit(MOMENT_LIMIT)), DataType::Int64)),
            ]
        }
    }
}

/// One aggregation over the input; where a pid column holds each patient once, a plain
/// count stands for the distinct count.
fn one_phase_site_plan(
    barrier: &Barrier,
    counting: &Counting,
    concentration: Concentration,
) -> Result<LogicalPlan, SplitError> {
    let mut computed = Vec::new();
    let partial_at: Vec<usize> = barrier
        .aggregates
        .iter()
        .flat_map(|a| partials(&a.kind, &a.expr, counting))
        .map(|partial| position_of(&mut computed, partial))
        .collect();
    let mut hidden_at = Vec::new();
    for hidden in hidden_counts(barrier) {
        let count = match hidden.with_value {
            None => patients_in(&barrier.pid, counting),
            Some(contribution) => patients_where(&barrier.pid, counting, contribution.on_row())?,
        };
        hidden_at.push((position_of(&mut computed, count), hidden.lacking));
    }
    // One row per patient: each row's value is that patient's contribution.
    let mut dominance_at = Vec::new();
    for (contribution, bound) in summed_columns(barrier) {
        let measures = dominance_aggregates(contribution, bound, concentration);
        dominance_at.push(
            measures
                .into_iter()
                .map(|measure| position_of(&mut computed, measure))
                .collect::<Vec<_>>(),
        );
    }
    let aggregated = LogicalPlanBuilder::from(barrier.input.as_ref().clone())
        .aggregate(barrier.group_exprs.clone(), computed)?
        .build()?;
    named_outputs(
        aggregated,
        barrier.group_exprs.len(),
        &partial_at,
        &hidden_at,
        &dominance_at,
        concentration,
    )
}

/// How a group's output is made from the per-patient rows of [`per_patient_site_plan`].
enum FromPatients {
    /// The sum of a per-patient partial (COUNT and SUM add up).
    Sum(usize),
    /// The number of patient rows: the distinct patients.
    Patients,
    /// The patient rows whose per-patient contribution differs from the given zero.
    PatientsWith(usize, Expr),
}

/// For a single pid class whose rows may repeat a patient: first one row per group and
/// patient with that patient's partials (`COUNT(x)`, `SUM(x)`), then per group the sums
/// of those partials and the counts of patient rows. The rewrite DataFusion applies to a
/// lone `COUNT(DISTINCT pid)`, extended to the counts of patients with a value.
fn per_patient_site_plan(
    barrier: &Barrier,
    pid: &Column,
    concentration: Concentration,
    bounding: Option<Bounding>,
) -> Result<LogicalPlan, SplitError> {
    let mut per_patient = Vec::new();
    let mut partial_recipes = Vec::new();
    // What each released per-patient partial is clamped to, under `bounding`.
    let mut clamps: Vec<(usize, Clamp)> = Vec::new();
    for aggregate in &barrier.aggregates {
        if aggregate.kind == AggregateKind::CountDistinctPid {
            partial_recipes.push(FromPatients::Patients);
            continue;
        }
        let rows = bounding.map_or(1, |b| b.max_rows_per_patient);
        let bound =
            argument_of(&aggregate.expr).map_or(0.0, |argument| argument_bound(barrier, &argument));
        let magnitude = bound * f64::from(rows);
        // A patient's sum of squares is at most their rows times the square of the bound.
        let squares = bound * bound * f64::from(rows);
        let kinds: &[Clamp] = match aggregate.kind {
            AggregateKind::Count => &[Clamp::Rows(rows)],
            AggregateKind::Sum => &[Clamp::Magnitude(magnitude)],
            AggregateKind::Avg => &[Clamp::Magnitude(magnitude), Clamp::Rows(rows)],
            AggregateKind::Spread(_) => &[
                Clamp::Rows(rows),
                Clamp::Magnitude(magnitude),
                Clamp::Magnitude(squares),
            ],
            AggregateKind::CountDistinctPid => &[],
        };
        let expressions = partials(&aggregate.kind, &aggregate.expr, &Counting::default());
        for (partial, clamp) in expressions.into_iter().zip(kinds) {
            let at = position_of(&mut per_patient, partial);
            clamps.push((at, *clamp));
            partial_recipes.push(FromPatients::Sum(at));
        }
    }
    let hidden_recipes: Vec<(FromPatients, bool)> = hidden_counts(barrier)
        .into_iter()
        .map(|hidden| {
            let recipe = match hidden.with_value {
                None => FromPatients::Patients,
                Some(contribution) => {
                    let (value, zero) = contribution.per_patient();
                    FromPatients::PatientsWith(position_of(&mut per_patient, value), zero)
                }
            };
            (recipe, hidden.lacking)
        })
        .collect();
    // Each patient's contribution to a released SUM or AVG: the sum of their values.
    let contributions_at: Vec<(usize, f64)> = summed_columns(barrier)
        .into_iter()
        .map(|(column, bound)| (position_of(&mut per_patient, sum(column)), bound))
        .collect();
    let mut inner_groups = barrier.group_exprs.clone();
    inner_groups.push(Expr::Column(pid.clone()));
    let per_patient_count = per_patient.len();
    let one_group = bounding.is_some_and(|b| b.max_groups_per_patient == 1);
    // Where only patients are counted and each counts in one group, the group keys stay
    // packed (one binary column) from the bounding to the end of the aggregation and are
    // unpacked once per group (`packed_keys`: their types).
    let mut packed_keys = None;
    let (patients, groups) =
        if per_patient.is_empty() && one_group && !barrier.group_exprs.is_empty() {
            let (first_keys, types) =
                first_keys_per_patient(barrier.input.as_ref().clone(), &barrier.group_exprs, pid)?;
            packed_keys = Some(types);
            (first_keys, 1)
        } else {
            let patients = LogicalPlanBuilder::from(barrier.input.as_ref().clone())
                .aggregate(inner_groups, per_patient)?
                .build()?;
            let groups = barrier.group_exprs.len();
            let patients = match bounding {
                None => patients,
                Some(bounding) => {
                    let mut clamp_of = vec![None; per_patient_count];
                    for (at, clamp) in clamps {
                        clamp_of[at] = Some(clamp);
                    }
                    bound_patients(patients, groups, &clamp_of, bounding)?
                }
            };
            (patients, groups)
        };
    let columns = patients.schema().columns();
    let patient = Expr::Column(columns[groups].clone());
    let value = |at: usize| Expr::Column(columns[groups + 1 + at].clone());
    let mut computed = Vec::new();
    let mut place = |recipe: &FromPatients| -> Result<usize, DataFusionError> {
        let expr = match recipe {
            FromPatients::Sum(at) => sum(value(*at)),
            FromPatients::Patients => count(patient.clone()),
            FromPatients::PatientsWith(at, zero) => count(patient.clone())
                .filter(value(*at).not_eq(zero.clone()))
                .build()?,
        };
        Ok(position_of(&mut computed, expr))
    };
    let partial_at = partial_recipes
        .iter()
        .map(&mut place)
        .collect::<Result<Vec<_>, _>>()?;
    let hidden_at = hidden_recipes
        .iter()
        .map(|(recipe, checked)| Ok((place(recipe)?, *checked)))
        .collect::<Result<Vec<_>, DataFusionError>>()?;
    let dominance_at: Vec<Vec<usize>> = contributions_at
        .iter()
        .map(|&(at, bound)| {
            dominance_aggregates(value(at), bound, concentration)
                .into_iter()
                .map(|measure| position_of(&mut computed, measure))
                .collect()
        })
        .collect();
    let group_columns: Vec<Expr> = columns[..groups]
        .iter()
        .cloned()
        .map(Expr::Column)
        .collect();
    let aggregated = LogicalPlanBuilder::from(patients)
        .aggregate(group_columns, computed)?
        .build()?;
    let (aggregated, groups) = match packed_keys {
        Some(types) => {
            let unpacked = unpack_keys(aggregated, types)?;
            (unpacked, barrier.group_exprs.len())
        }
        None => (aggregated, groups),
    };
    named_outputs(
        aggregated,
        groups,
        &partial_at,
        &hidden_at,
        &dominance_at,
        concentration,
    )
}

/// The site plan's output over an aggregation: its group columns as `__g…`, the computed
/// expressions at `partial_at` as `__p…`, at `hidden_at` as `__patients_…` (or
/// `__lacking_…` for the patients with a row without a value), and for each
/// pair at `dominance_at` the share top ÷ total as `__dominance_…` (per-site) or the two
/// moments as `__squares_…` and `__absolutes_…` (secure).
fn named_outputs(
    aggregated: LogicalPlan,
    groups: usize,
    partial_at: &[usize],
    hidden_at: &[(usize, bool)],
    dominance_at: &[Vec<usize>],
    concentration: Concentration,
) -> Result<LogicalPlan, SplitError> {
    let columns = aggregated.schema().columns();
    let computed_column = |at: usize| Expr::Column(columns[groups + at].clone());
    let outputs: Vec<Expr> = columns[..groups]
        .iter()
        .enumerate()
        .map(|(index, column)| Expr::Column(column.clone()).alias(group_name(index)))
        .chain(
            partial_at
                .iter()
                .enumerate()
                .map(|(j, &at)| computed_column(at).alias(partial_name(j))),
        )
        .chain(hidden_at.iter().enumerate().map(|(k, &(at, lacking))| {
            let prefix = if lacking {
                HIDDEN_LACKING
            } else {
                HIDDEN_PATIENTS
            };
            computed_column(at).alias(format!("{prefix}_{k}"))
        }))
        .chain(dominance_at.iter().enumerate().flat_map(|(j, measures)| {
            match (concentration, measures.as_slice()) {
                (Concentration::TopShare(_), &[top, total]) => vec![
                    (computed_column(top) / computed_column(total))
                        .alias(format!("{HIDDEN_DOMINANCE}_{j}")),
                ],
                (Concentration::Moments, &[squares, absolutes, outsized]) => vec![
                    computed_column(squares).alias(format!("{HIDDEN_SQUARES}_{j}")),
                    computed_column(absolutes).alias(format!("{HIDDEN_ABSOLUTES}_{j}")),
                    computed_column(outsized).alias(format!("{HIDDEN_OUTSIZED}_{j}")),
                ],
                _ => Vec::new(),
            }
        }))
        .collect();
    Ok(LogicalPlanBuilder::from(aggregated)
        .project(outputs)?
        .build()?)
}

/// The schema of what a site releases: its site plan's output without the hidden counts.
pub(crate) fn released_of(site_plan: &LogicalPlan) -> SchemaRef {
    let arrow_schema = site_plan.schema().as_arrow();
    let fields: Vec<_> = arrow_schema
        .fields()
        .iter()
        .filter(|f| !is_hidden(f.name()))
        .cloned()
        .collect();
    Arc::new(Schema::new(fields))
}

/// Merges the sites' released batches (already checked for width against
/// `partial_schema`) into the researcher's table.
pub(crate) async fn merge(
    query: &ValidatedQuery,
    partial_schema: &SchemaRef,
    site_batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>, SplitError> {
    let barrier = &query.barrier;
    let mut batches = Vec::with_capacity(site_batches.len());
    for batch in site_batches {
        // Equal values may arrive in an equivalent encoding (e.g. a view string).
        let columns = batch
            .columns()
            .iter()
            .zip(partial_schema.fields())
            .map(|(column, field)| arrow::compute::cast(column, field.data_type()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SplitError::BadPartials(e.to_string()))?;
        let typed = RecordBatch::try_new(Arc::clone(partial_schema), columns)
            .map_err(|e| SplitError::BadPartials(e.to_string()))?;
        batches.push(typed);
    }
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    if barrier.group_exprs.is_empty() && rows == 0 {
        // Every site suppressed its total (or had none): the network total is unknown,
        // not zero, so nothing is released.
        return Ok(Vec::new());
    }
    let table = MemTable::try_new(Arc::clone(partial_schema), vec![batches])?;
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
                AggregateKind::Spread(spread) => {
                    let value = crate::spread::merged(
                        spread,
                        merged(partial),
                        merged(partial + 1),
                        merged(partial + 2),
                    );
                    partial += 3;
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
