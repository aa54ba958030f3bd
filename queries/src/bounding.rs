//! Contribution bounding: how much one patient can move what a site releases.
//!
//! Differential privacy calibrates noise to a question's sensitivity, the most one
//! patient's rows can change a released number. A registry bounds nothing by itself: a
//! patient with ten diagnoses is in ten groups of "patients per disorder", and a patient
//! with forty visit rows adds forty to a `COUNT(*)`. So when a node noises what it
//! releases (DESIGN.md, "Studies and privacy budgets") its site plan bounds each
//! patient's part first, and the noise is scaled to the bounds:
//!
//! - **Groups per patient**: a patient counts in at most `max_groups_per_patient` groups:
//!   the first ones in ascending order of the group keys (NULL last), a deterministic
//!   choice made from the patient's own rows alone, so it cannot depend on anyone else's.
//!   A patient with more groups is left out of the rest (documented: this biases
//!   "per disorder" counts against the patients with the most disorders, and only them).
//! - **Rows per patient and group**: a patient's part of a count of rows (`COUNT(*)`,
//!   `COUNT(x)`) is at most `max_rows_per_patient`; of a sum, at most that many times the
//!   largest magnitude the summed value takes on one row, which validation derives from
//!   the data model's declared ranges (ages 0-150, years 1880-2100, months 1-12, dates
//!   within 1880-2100) and ingest enforces; of the sum of squares behind a variance or
//!   standard deviation, at most that many times the square of that magnitude (a value
//!   within ±B squares to within 0…B², so the sensitivity is B² per row, not B).
//!
//! Where the rows hold each patient once (the patient table alone), a patient is in one
//! group with one row by construction and no bounding is needed beyond the declared
//! ranges: the sensitivities say so, and that plan stays one aggregation.

use arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::min;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{
    Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder, SortExpr, cast, lit, when,
};

use crate::row_pack::{pack_row, unpack_column};
use crate::split::SplitError;
use crate::validate::{AggregateKind, Barrier};

/// A site's bounds on one patient's contribution (its `[privacy]` policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounding {
    /// The most groups one patient counts in.
    pub max_groups_per_patient: u32,
    /// The most rows one patient counts with in one group.
    pub max_rows_per_patient: u32,
}

impl Default for Bounding {
    /// One group and one row per patient: the smallest noise for the commonest
    /// question (patients per category).
    fn default() -> Self {
        Bounding {
            max_groups_per_patient: 1,
            max_rows_per_patient: 1,
        }
    }
}

/// How far one patient can move each released number of a site plan: the L1
/// sensitivity over all groups (the per-group bound times the groups a patient counts
/// in), in whole units (a fractional bound is rounded up, which only adds noise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sensitivity {
    /// One per released partial column `__p0…`, in order.
    pub partials: Vec<u64>,
    /// Of the hidden count of patients per group that k applies to.
    pub patients: u64,
}

/// What a per-patient partial is clamped to, once per group and patient.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Clamp {
    /// A count of rows: at most this many.
    Rows(u32),
    /// A sum: within ± this.
    Magnitude(f64),
}

impl Clamp {
    /// `value` clamped, in its own type.
    fn apply(self, value: Expr, data_type: &arrow::datatypes::DataType) -> Expr {
        let (low, high) = match self {
            Clamp::Rows(rows) => (0.0, f64::from(rows)),
            Clamp::Magnitude(magnitude) => (-magnitude, magnitude),
        };
        let typed = |bound: f64| cast(lit(bound), data_type.clone());
        let clamped = when(value.clone().gt(typed(high)), typed(high))
            .when(value.clone().lt(typed(low)), typed(low))
            .otherwise(value);
        clamped.unwrap_or_else(|_| lit(0))
    }
}

/// The one-row magnitude of the argument of a released SUM or AVG, rounded up to a whole
/// number (validation bounds every summed value; 2^32 where nothing smaller is known).
pub(crate) fn argument_bound(barrier: &Barrier, argument: &Expr) -> f64 {
    let name = argument.schema_name().to_string();
    barrier
        .summed_values
        .iter()
        .find(|summed| summed.value.schema_name().to_string() == name)
        .map_or(crate::rules::barrier_aggregates::MAX_MAGNITUDE, |summed| {
            summed.bound
        })
        .ceil()
}

/// The sensitivities of a site plan over `barrier`: with `bounding` where a patient can
/// have many rows, or one group and one row per patient where `one_row_per_patient`.
///
/// Computed exactly; a sensitivity beyond 64 bits (the sum of squares behind a variance
/// of a value bounded only by 2^32, over many groups and rows) is an error, never a
/// saturated number: noise scaled to less than the true sensitivity would under-protect.
pub fn sensitivity(
    barrier: &Barrier,
    bounding: Bounding,
    one_row_per_patient: bool,
) -> Result<Sensitivity, SplitError> {
    let (groups, rows) = if one_row_per_patient {
        (1, 1)
    } else if barrier.group_exprs.is_empty() {
        (1, u128::from(bounding.max_rows_per_patient))
    } else {
        (
            u128::from(bounding.max_groups_per_patient),
            u128::from(bounding.max_rows_per_patient),
        )
    };
    let magnitude = |expr: &Expr| -> u128 {
        let argument = crate::split::argument_of(expr).unwrap_or_else(|| lit(0));
        // Bounds are whole numbers of at most 2^32 (validation refuses larger).
        argument_bound(barrier, &argument) as u128
    };
    let mut partials = Vec::new();
    for aggregate in &barrier.aggregates {
        // How far one patient moves a partial over all groups: `per_row` on each of their
        // rows of each of their groups.
        let mut push = |per_row: u128| -> Result<(), SplitError> {
            let moved = groups
                .checked_mul(rows)
                .and_then(|moved| moved.checked_mul(per_row))
                .and_then(|moved| u64::try_from(moved).ok())
                .ok_or_else(|| SplitError::TooSensitive(aggregate.expr.to_string()))?;
            partials.push(moved);
            Ok(())
        };
        match aggregate.kind {
            // One patient is in a group once, whatever their rows.
            AggregateKind::CountDistinctPid => partials.push(
                u64::try_from(groups)
                    .map_err(|_| SplitError::TooSensitive(aggregate.expr.to_string()))?,
            ),
            AggregateKind::Count => push(1)?,
            AggregateKind::Sum => push(magnitude(&aggregate.expr))?,
            AggregateKind::Avg => {
                push(magnitude(&aggregate.expr))?;
                push(1)?;
            }
            AggregateKind::Spread(_) => {
                // COUNT(x), SUM(x), SUM(x * x): a patient's part of the sum of squares
                // is clamped to their rows times the square of the one-row bound.
                let bound = magnitude(&aggregate.expr);
                push(1)?;
                push(bound)?;
                push(bound * bound)?;
            }
        }
    }
    Ok(Sensitivity {
        partials,
        patients: u64::try_from(groups).unwrap_or(u64::MAX),
    })
}

/// Over one row per group and patient (group columns, the pid, then the per-patient
/// values): each value clamped as `clamps` says, then each patient's rows beyond their
/// first `max_groups_per_patient` groups (in ascending order of the group keys, NULL
/// last) dropped. The output has the input's columns, names and order.
pub(crate) fn bound_patients(
    patients: LogicalPlan,
    groups: usize,
    clamps: &[Option<Clamp>],
    bounding: Bounding,
) -> Result<LogicalPlan, DataFusionError> {
    let schema = patients.schema().clone();
    let columns: Vec<Column> = schema.columns();
    let keep = |column: &Column| {
        Expr::Column(column.clone()).alias_qualified(column.relation.clone(), &column.name)
    };
    let mut outputs: Vec<Expr> = columns[..=groups].iter().map(keep).collect();
    for (index, column) in columns[groups + 1..].iter().enumerate() {
        let expr = match clamps.get(index).copied().flatten() {
            Some(clamp) => {
                let data_type = schema.field(groups + 1 + index).data_type();
                clamp
                    .apply(Expr::Column(column.clone()), data_type)
                    .alias_qualified(column.relation.clone(), &column.name)
            }
            None => keep(column),
        };
        outputs.push(expr);
    }
    let clamped = LogicalPlanBuilder::from(patients).project(outputs)?;
    if groups == 0 {
        return clamped.build();
    }
    if bounding.max_groups_per_patient == 1 {
        return first_group_only(clamped, &columns, groups);
    }
    let order: Vec<SortExpr> = columns[..groups]
        .iter()
        .map(|column| Expr::Column(column.clone()).sort(true, false))
        .collect();
    const RANK: &str = "__group_rank";
    let rank = row_number()
        .partition_by(vec![Expr::Column(columns[groups].clone())])
        .order_by(order)
        .build()?
        .alias(RANK);
    let ranked = clamped.window(vec![rank])?.build()?;
    let ranked_columns = ranked.schema().columns();
    let without_rank: Vec<Expr> = ranked_columns
        .iter()
        .filter(|column| column.name != RANK)
        .map(|column| Expr::Column(column.clone()))
        .collect();
    LogicalPlanBuilder::from(ranked)
        .filter(
            Expr::Column(Column::from_name(RANK))
                .lt_eq(lit(u64::from(bounding.max_groups_per_patient))),
        )?
        .project(without_rank)?
        .build()
}

/// One group per patient, the first in key order: one hash aggregation by pid that keeps
/// each patient's smallest packed row (the keys, then the other columns, in arrow's
/// order-preserving row format, [`crate::row_pack`]), unpacked back into the input's
/// columns. The same rows the ranking window keeps at one group per patient, without
/// sorting them: the keys are unique per patient, so the other columns never decide.
fn first_group_only(
    clamped: LogicalPlanBuilder,
    columns: &[Column],
    groups: usize,
) -> Result<LogicalPlan, DataFusionError> {
    const FIRST: &str = "__first_row";
    let clamped = LogicalPlanBuilder::from(coerced(clamped.build()?)?);
    let schema = clamped.schema().clone();
    let pid = &columns[groups];
    let packed: Vec<usize> = (0..groups).chain(groups + 1..columns.len()).collect();
    let types: Vec<DataType> = packed
        .iter()
        .map(|&index| schema.field(index).data_type().clone())
        .collect();
    let row = pack_row(
        packed
            .iter()
            .map(|&index| Expr::Column(columns[index].clone()))
            .collect(),
        types.clone(),
    );
    let first = Expr::Column(Column::from_name(FIRST));
    let mut outputs = Vec::with_capacity(columns.len());
    for (index, column) in columns.iter().enumerate() {
        let expr = match packed.iter().position(|&p| p == index) {
            Some(at) => unpack_column(first.clone(), types.clone(), at),
            None => Expr::Column(pid.clone()),
        };
        outputs.push(expr.alias_qualified(column.relation.clone(), &column.name));
    }
    clamped
        .aggregate(vec![Expr::Column(pid.clone())], vec![min(row).alias(FIRST)])?
        .project(outputs)?
        .build()
}

/// Each patient's first group in key order where only patients are counted: the rows
/// (never aggregated per group and patient: repeated rows do not change a minimum)
/// reduced to `[packed keys, pid]`, one row per patient, with the keys' types for
/// [`unpack_keys`] once the groups are counted by the packed keys.
pub(crate) fn first_keys_per_patient(
    rows: LogicalPlan,
    keys: &[Expr],
    pid: &Column,
) -> Result<(LogicalPlan, Vec<DataType>), DataFusionError> {
    const FIRST: &str = "__first_keys";
    let mut projection = keys.to_vec();
    projection.push(Expr::Column(pid.clone()));
    let keyed = coerced(
        LogicalPlanBuilder::from(rows)
            .project(projection)?
            .build()?,
    )?;
    let columns = keyed.schema().columns();
    let (key_columns, pid_column) = columns.split_at(keys.len());
    let types: Vec<DataType> = (0..keys.len())
        .map(|index| keyed.schema().field(index).data_type().clone())
        .collect();
    let packed = pack_row(
        key_columns.iter().cloned().map(Expr::Column).collect(),
        types.clone(),
    )
    .alias(FIRST);
    let pid = &pid_column[0];
    let plan = LogicalPlanBuilder::from(keyed)
        .project(vec![packed, Expr::Column(pid.clone())])?
        .aggregate(
            vec![Expr::Column(pid.clone())],
            vec![min(Expr::Column(Column::from_name(FIRST))).alias(FIRST)],
        )?
        .project(vec![
            Expr::Column(Column::from_name(FIRST)),
            Expr::Column(pid.clone()),
        ])?
        .build()?;
    Ok((plan, types))
}

/// An aggregation grouped by packed keys (its first column) with the keys unpacked
/// into one column each, followed by the aggregation's other columns.
pub(crate) fn unpack_keys(
    aggregated: LogicalPlan,
    types: Vec<DataType>,
) -> Result<LogicalPlan, DataFusionError> {
    let columns = aggregated.schema().columns();
    let packed = Expr::Column(columns[0].clone());
    let keys = (0..types.len()).map(|index| {
        unpack_column(packed.clone(), types.clone(), index).alias(format!("__key_{index}"))
    });
    let rest = columns[1..].iter().cloned().map(Expr::Column);
    LogicalPlanBuilder::from(aggregated)
        .project(keys.chain(rest).collect::<Vec<_>>())?
        .build()
}

/// `plan` with DataFusion's type coercion applied, so its schema holds the types its
/// expressions will have when they run (a `CASE` whose branches differ is typed by its
/// first branch before coercion and widened after; a text literal beside a Parquet
/// string becomes a string view). The row packing is declared with these types: packed
/// with others it would fail, and only on the rows that reach it.
fn coerced(plan: LogicalPlan) -> Result<LogicalPlan, DataFusionError> {
    use datafusion::common::config::ConfigOptions;
    use datafusion::optimizer::analyzer::AnalyzerRule;
    use datafusion::optimizer::analyzer::type_coercion::TypeCoercion;
    TypeCoercion::new().analyze(plan, &ConfigOptions::default())
}
