//! A question's public domain: whether it can be aggregated securely, from its plan alone.
//!
//! Under secure aggregation (DESIGN.md, "Secure aggregation: k applies to the network
//! total") every node sends a value for every cell of the question's domain, in one fixed
//! order, so the coordinator and every node must derive the same finite domain without
//! reading data. A question qualifies when every key of the barrier's GROUP BY has one
//! ([`derive`]); the cells are the keys' cross product, at most [`MAX_SECURE_CELLS`].
//!
//! A key's domain is proved by walking the barrier's input down to the table scans,
//! keeping for each column the set of values it can hold:
//! - a column with a value set in data-model.md ([`schema::value_set`]), any Boolean
//!   column, a column of a shipped reference table ([`reference`]), an integer column
//!   with a declared range ([`schema::declared_range`]);
//! - narrowed, or proved for a column that had none, by what every row that goes on
//!   satisfies: the conjuncts of a WHERE clause and of an inner join's condition, where
//!   `a = b` between two columns gives each the other's values, `IN (…)` and `= literal`
//!   a set, and comparisons with integer literals (`<`, `<=`, `>`, `>=`, `BETWEEN`) bounds;
//! - carried through aliases, projections, per-patient groupings (keys, MIN and MAX give
//!   values of their input), sorts, limits and DISTINCT;
//! - combined by integer arithmetic (`+`, `-`, `*`, `/`, `%`, negation, casts between
//!   integer types), evaluated exactly over every combination of its operands' values;
//! - `width_bucket(value, low, high, count)`, whose count is written in the query: the
//!   buckets `0..=count + 1` ([`crate::width_bucket`]).
//!
//! Types are compared as values are: a string is a string whether Arrow holds it as
//! `Utf8`, `LargeUtf8` or `Utf8View` (and bytes likewise), since a node reads its Parquet
//! store as views where the coordinator plans against `Utf8` tables, and both must derive
//! the same domain ([`canonical_type`]): proofs and domains, and so digests, use `Utf8`.
//!
//! Soundness over completeness: a domain must hold every value the key takes on a row
//! that reaches the barrier (NULL aside, which a nullable key's domain holds first). An
//! outer join proves nothing from its condition (an unmatched row keeps its value), an
//! operation that could wrap, fail or give NULL on a value proves nothing, and anything
//! not recognised here (functions, CASE, dates, free text) has no domain: the question
//! then runs with per-site suppression.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, new_empty_array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field};
use arrow::error::ArrowError;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Alias, Between, InList};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, Cast, Distinct, Expr, ExprSchemable, JoinType, LogicalPlan, Operator, TryCast,
};

use crate::validate::{AggregateKind, Barrier};
use crate::{reference, schema};

/// Most cells a secure question's domain may have (DESIGN.md: capped by node policy,
/// default 65,536).
pub const MAX_SECURE_CELLS: usize = 65_536;

/// The largest one-row magnitude of the value of a variance or standard deviation under
/// secure aggregation: 2^16, so that each square is at most 2^32 and a cell's sum of
/// squares over fewer than 2^31 rows (the bound every released sum assumes) stays below
/// 2^63, inside the signed 64-bit totals of the vector. A larger value runs per site,
/// where the sum of squares is a 128-bit decimal.
pub const MAX_SECURE_SQUARED: f64 = 65_536.0;

/// Most value combinations evaluated for one arithmetic expression of a key.
const MAX_EVALUATIONS: usize = 1 << 20;

/// The version tag at the start of a domain's digested description ([`SecureDomain::digest`]).
const DIGEST_VERSION: &str = "ern-secure-domain-v1";

/// How a question's groups are aggregated across sites.
#[derive(Debug, Clone)]
pub enum AggregationMode {
    /// Every site sends a masked vector over the public domain; k applies to network totals.
    Secure(SecureDomain),
    /// Every site suppresses its own small groups; `reason` says why the question does not
    /// qualify for secure aggregation.
    PerSite {
        /// Why, for the researcher and the steward.
        reason: String,
    },
}

impl AggregationMode {
    /// `secure` or `per-site`, as status, results and the steward's review show it.
    pub fn name(&self) -> &'static str {
        match self {
            AggregationMode::Secure(_) => "secure",
            AggregationMode::PerSite { .. } => "per-site",
        }
    }

    /// The public domain of a secure question.
    pub fn domain(&self) -> Option<&SecureDomain> {
        match self {
            AggregationMode::Secure(domain) => Some(domain),
            AggregationMode::PerSite { .. } => None,
        }
    }
}

/// The values one GROUP BY key can take.
#[derive(Debug, Clone)]
pub struct KeyDomain {
    /// The group expression as shown to stewards (its schema name).
    pub expr: String,
    /// The barrier output field's type for this key, in its canonical form
    /// ([`canonical_type`]: `Utf8` for every string type).
    pub data_type: DataType,
    /// Canonical order: NULL first (only if the barrier field is nullable), then ascending.
    pub values: Vec<ScalarValue>,
    /// What proves the domain, e.g. `value set of patient.sex`.
    pub source: String,
}

/// The cells of a secure question: the cross product of its keys' domains, row-major
/// (the first key varies slowest). Built by [`derive`] or [`SecureDomain::new`], whose
/// lookups follow `keys` as they were then.
#[derive(Clone)]
pub struct SecureDomain {
    /// The GROUP BY keys, in the barrier's order.
    pub keys: Vec<KeyDomain>,
    /// Per key, each value's position in its domain.
    positions: Vec<HashMap<ScalarValue, usize>>,
}

impl fmt::Debug for SecureDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureDomain")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl SecureDomain {
    /// A domain over `keys`, each key's type and values in their canonical form
    /// ([`canonical_type`]) and its values in canonical order (NULL first, then
    /// ascending, without repeats).
    pub fn new(keys: Vec<KeyDomain>) -> Self {
        let keys: Vec<KeyDomain> = keys
            .into_iter()
            .map(|key| {
                let data_type = canonical_type(&key.data_type);
                let nullable = key.values.iter().any(ScalarValue::is_null);
                let values = key.values.into_iter().map(canonical_value).collect();
                let values = canonical(values, &data_type, nullable);
                KeyDomain {
                    data_type,
                    values,
                    ..key
                }
            })
            .collect();
        let positions = keys
            .iter()
            .map(|key| {
                key.values
                    .iter()
                    .enumerate()
                    .map(|(index, value)| (value.clone(), index))
                    .collect()
            })
            .collect();
        SecureDomain { keys, positions }
    }

    /// The number of cells: the product of the keys' sizes, 1 without keys.
    pub fn cells(&self) -> usize {
        self.keys.iter().map(|key| key.values.len()).product()
    }

    /// The cell of one combination of key values (each already of its key's type);
    /// `None` for a value outside its key's domain.
    pub fn cell_of(&self, key_values: &[ScalarValue]) -> Option<usize> {
        if key_values.len() != self.keys.len() {
            return None;
        }
        let mut cell = 0;
        for ((key, positions), value) in self.keys.iter().zip(&self.positions).zip(key_values) {
            cell = cell * key.values.len() + positions.get(value)?;
        }
        Some(cell)
    }

    /// The cell of every row of a batch's key columns (one column per key, in order),
    /// each column cast to its key's type first (Parquet gives `Utf8View` where the key
    /// is `Utf8`, for instance); `None` for a row whose values lie outside the domain.
    ///
    /// A domain without keys (a total) has no columns to count rows by, so it is an
    /// error here: use [`SecureDomain::cells_of_rows`], which puts every row in cell 0.
    pub fn cells_of_batch(
        &self,
        key_columns: &[ArrayRef],
    ) -> Result<Vec<Option<usize>>, ArrowError> {
        let Some(first) = key_columns.first() else {
            return Err(ArrowError::InvalidArgumentError(
                "no key columns to count rows by (a total: use cells_of_rows)".into(),
            ));
        };
        self.cells_of_rows(key_columns, first.len())
    }

    /// The cells of `rows` rows of key columns, as [`SecureDomain::cells_of_batch`]; with
    /// no keys every row is in the one cell.
    pub fn cells_of_rows(
        &self,
        key_columns: &[ArrayRef],
        rows: usize,
    ) -> Result<Vec<Option<usize>>, ArrowError> {
        let columns = self.cast_keys(key_columns)?;
        if let Some(column) = columns.iter().find(|c| c.len() != rows) {
            return Err(ArrowError::InvalidArgumentError(format!(
                "a key column of {} rows where {rows} were expected",
                column.len()
            )));
        }
        (0..rows).map(|row| self.cell_at(&columns, row)).collect()
    }

    /// The cell of one row of key columns (see [`SecureDomain::cells_of_batch`], which
    /// casts each column once for all rows).
    pub fn cell_of_row(
        &self,
        key_columns: &[ArrayRef],
        row: usize,
    ) -> Result<Option<usize>, ArrowError> {
        let columns = self.cast_keys(key_columns)?;
        if let Some(column) = columns.iter().find(|c| row >= c.len()) {
            return Err(ArrowError::InvalidArgumentError(format!(
                "row {row} of a key column of {} rows",
                column.len()
            )));
        }
        self.cell_at(&columns, row)
    }

    /// The key columns of `cells`, one array per key, typed as the key (strings as `Utf8`).
    pub fn key_arrays(&self, cells: &[usize]) -> Result<Vec<ArrayRef>, ArrowError> {
        let total = self.cells();
        if let Some(cell) = cells.iter().find(|&&cell| cell >= total) {
            return Err(ArrowError::InvalidArgumentError(format!(
                "cell {cell} of a domain of {total} cells"
            )));
        }
        let mut stride = total;
        let mut arrays = Vec::with_capacity(self.keys.len());
        for key in &self.keys {
            let size = key.values.len();
            stride /= size;
            if cells.is_empty() {
                arrays.push(new_empty_array(&key.data_type));
                continue;
            }
            let values = cells
                .iter()
                .map(|cell| key.values[(cell / stride) % size].clone());
            arrays.push(
                ScalarValue::iter_to_array(values)
                    .map_err(|e| ArrowError::ComputeError(e.to_string()))?,
            );
        }
        Ok(arrays)
    }

    /// Lowercase hex SHA-256 of the domain's canonical description, which every party of
    /// a secure round signs: the same digest means the same cells in the same order.
    ///
    /// The description is UTF-8 text, one item per line (`\n`), every free-form item as
    /// `<byte length>:<text>`:
    /// ```text
    /// ern-secure-domain-v1
    /// keys <number of keys>
    /// key <len>:<expr>
    /// type <len>:<data type, as Arrow displays it; every string type as Utf8>
    /// values <number of values>
    /// null                        (a NULL value)
    /// value <len>:<value>         (strings as they are, numbers in decimal, true/false)
    /// ```
    /// with `key`, `type`, `values` and the values repeated for every key in order. The
    /// source of a key (what proves it) is not part of it.
    pub fn digest(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, self.description().as_bytes());
        hex::encode(digest.as_ref())
    }

    fn description(&self) -> String {
        let mut out = format!("{DIGEST_VERSION}\nkeys {}\n", self.keys.len());
        for key in &self.keys {
            out.push_str(&format!("key {}\n", sized(&key.expr)));
            let data_type = canonical_type(&key.data_type);
            out.push_str(&format!("type {}\n", sized(&data_type.to_string())));
            out.push_str(&format!("values {}\n", key.values.len()));
            for value in &key.values {
                match value_text(value) {
                    None => out.push_str("null\n"),
                    Some(text) => out.push_str(&format!("value {}\n", sized(&text))),
                }
            }
        }
        out
    }

    /// One line per key for the steward: `p.sex: 4 values (value set of patient.sex)`.
    pub fn describe(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| {
                let count = key.values.len();
                let plural = if count == 1 { "value" } else { "values" };
                let null = if key.values.first().is_some_and(ScalarValue::is_null) {
                    " including NULL"
                } else {
                    ""
                };
                format!("{}: {count} {plural}{null} ({})", key.expr, key.source)
            })
            .collect()
    }

    /// Each key column with its values cast to the key's type.
    fn cast_keys(&self, key_columns: &[ArrayRef]) -> Result<Vec<CastKey>, ArrowError> {
        if key_columns.len() != self.keys.len() {
            return Err(ArrowError::InvalidArgumentError(format!(
                "{} key columns for a domain of {} keys",
                key_columns.len(),
                self.keys.len()
            )));
        }
        key_columns
            .iter()
            .zip(&self.keys)
            .map(|(column, key)| {
                Ok(CastKey {
                    cast: cast(column, &key.data_type)?,
                    original: Arc::clone(column),
                })
            })
            .collect()
    }

    /// The cell of one row of cast key columns.
    fn cell_at(&self, columns: &[CastKey], row: usize) -> Result<Option<usize>, ArrowError> {
        let mut values = Vec::with_capacity(columns.len());
        for column in columns {
            // A value the key's type cannot hold is outside the domain, not in its NULL.
            if column.cast.is_null(row) && !column.original.is_null(row) {
                return Ok(None);
            }
            values.push(scalar_at(&column.cast, row)?);
        }
        Ok(self.cell_of(&values))
    }
}

/// A key column as it came and cast to its key's type.
struct CastKey {
    original: ArrayRef,
    cast: ArrayRef,
}

impl CastKey {
    fn len(&self) -> usize {
        self.cast.len()
    }
}

fn scalar_at(column: &ArrayRef, row: usize) -> Result<ScalarValue, ArrowError> {
    ScalarValue::try_from_array(column.as_ref(), row)
        .map_err(|e| ArrowError::ComputeError(e.to_string()))
}

fn sized(text: &str) -> String {
    format!("{}:{text}", text.len())
}

/// A value's text in the digested description; `None` for NULL.
fn value_text(value: &ScalarValue) -> Option<String> {
    if value.is_null() {
        return None;
    }
    Some(match value {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => s.clone(),
        other => other.to_string(),
    })
}

/// Distinct values in ascending order, behind one NULL of `data_type` if `nullable`.
fn canonical(values: Vec<ScalarValue>, data_type: &DataType, nullable: bool) -> Vec<ScalarValue> {
    let mut values: Vec<ScalarValue> = values.into_iter().filter(|v| !v.is_null()).collect();
    sort_dedup(&mut values);
    if nullable {
        let null = ScalarValue::try_new_null(data_type).unwrap_or(ScalarValue::Null);
        values.insert(0, null);
    }
    values
}

fn sort_dedup(values: &mut Vec<ScalarValue>) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(Ordering::Equal));
    values.dedup();
}

/// One type for every Arrow layout of the same values: `Utf8` for `LargeUtf8` and
/// `Utf8View`, `Binary` for `LargeBinary` and `BinaryView`, a dictionary's value type
/// for a dictionary. A node reads its Parquet store with view types while the
/// coordinator plans against `Utf8` tables; proofs, domains and digests must not tell
/// them apart (red team: `d.code = t.orpha_code` proved the code's domain at the
/// coordinator only, and the digests differed).
pub fn canonical_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        DataType::Dictionary(_, values) => canonical_type(values),
        other => other.clone(),
    }
}

/// `value` in its type's canonical form ([`canonical_type`]), unchanged otherwise.
fn canonical_value(value: ScalarValue) -> ScalarValue {
    match value {
        ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => ScalarValue::Utf8(s),
        ScalarValue::LargeBinary(b) | ScalarValue::BinaryView(b) => ScalarValue::Binary(b),
        ScalarValue::Dictionary(_, inner) => canonical_value(*inner),
        other => other,
    }
}

/// Derives the aggregation mode from the barrier alone: deterministic, and reading no
/// data but the shipped reference tables, so every party derives the same.
pub fn derive(barrier: &Barrier) -> AggregationMode {
    match secure_domain(barrier) {
        Ok(domain) => AggregationMode::Secure(domain),
        Err(reason) => AggregationMode::PerSite { reason },
    }
}

fn secure_domain(barrier: &Barrier) -> Result<SecureDomain, String> {
    let input_schema = barrier.input.schema();
    let facts = facts_of(&barrier.input);
    let mut keys = Vec::with_capacity(barrier.group_exprs.len());
    for (index, group) in barrier.group_exprs.iter().enumerate() {
        let field = barrier.schema.field(index);
        let key = expr_domain(group, &facts, input_schema)
            .and_then(|domain| key_domain(group, field, domain))
            .ok_or_else(|| no_domain(group, field.data_type()))?;
        keys.push(key);
    }
    for aggregate in &barrier.aggregates {
        let name = match aggregate.kind {
            AggregateKind::Sum => "SUM",
            AggregateKind::Avg => "AVG",
            AggregateKind::Spread(_) => "variance or standard deviation",
            AggregateKind::Count | AggregateKind::CountDistinctPid => continue,
        };
        let whole = argument_of(&aggregate.expr)
            .and_then(|arg| arg.get_type(input_schema).ok())
            .is_some_and(|t| t.is_integer());
        if !whole {
            return Err(format!(
                "{} is a {name} over a non-integer value (secure vectors add whole numbers)",
                aggregate.expr
            ));
        }
        if let (AggregateKind::Spread(_), Some(argument)) =
            (&aggregate.kind, argument_of(&aggregate.expr))
        {
            let bound = crate::bounding::argument_bound(barrier, argument);
            if bound > MAX_SECURE_SQUARED {
                return Err(format!(
                    "{} is a {name} over values up to {bound} in magnitude: its sum of squares could pass the 64 bits a secure vector adds (at most {MAX_SECURE_SQUARED})",
                    aggregate.expr
                ));
            }
        }
    }
    let domain = SecureDomain::new(keys);
    let cells = domain
        .keys
        .iter()
        .try_fold(1_usize, |cells, key| cells.checked_mul(key.values.len()));
    match cells {
        Some(0) => {
            Err("the GROUP BY keys can take no value together (a key's domain is empty)".into())
        }
        Some(cells) if cells <= MAX_SECURE_CELLS => Ok(domain),
        Some(cells) => Err(format!(
            "the GROUP BY keys have {cells} combinations, more than the {MAX_SECURE_CELLS} cells a secure question may have"
        )),
        None => Err(format!(
            "the GROUP BY keys have more combinations than the {MAX_SECURE_CELLS} cells a secure question may have"
        )),
    }
}

fn argument_of(expr: &Expr) -> Option<&Expr> {
    match unalias(expr) {
        Expr::AggregateFunction(AggregateFunction { params, .. }) => params.args.first(),
        _ => None,
    }
}

/// Why a key has no domain, with the ways to give it one.
fn no_domain(group: &Expr, data_type: &DataType) -> String {
    let hint = match (unalias(group), data_type) {
        (Expr::Column(_), t) if is_text(t) => "join it to orpha_term or filter it with an IN list",
        (Expr::Column(_), t) if t.is_integer() => "bound it in WHERE (BETWEEN, IN)",
        (Expr::Column(_), _) => "filter it with an IN list",
        _ => {
            "a computed key has one only as integer arithmetic over columns that have one (group by a column, or by an integer expression of bounded columns)"
        }
    };
    format!("GROUP BY {group} has no public domain: {hint}")
}

/// A key's domain in the barrier field's type, canonical; `None` where a value does not
/// convert to that type and back unchanged.
fn key_domain(group: &Expr, field: &Field, domain: Domain) -> Option<KeyDomain> {
    let data_type = canonical_type(field.data_type());
    let values = domain
        .values
        .into_iter()
        .map(|value| convert(&value, &data_type))
        .collect::<Option<Vec<_>>>()?;
    Some(KeyDomain {
        expr: group.schema_name().to_string(),
        values: canonical(values, &data_type, field.is_nullable()),
        data_type,
        source: domain.source,
    })
}

/// `value` as a value of `data_type`, only if the conversion loses nothing.
fn convert(value: &ScalarValue, data_type: &DataType) -> Option<ScalarValue> {
    if &value.data_type() == data_type {
        return Some(value.clone());
    }
    if let Some(number) = as_i64(value) {
        return integer_scalar(number, data_type);
    }
    let converted = value.cast_to(data_type).ok()?;
    let back = converted.cast_to(&value.data_type()).ok()?;
    (&back == value).then_some(converted)
}

// ---------------------------------------------------------------------------------------
// The proofs: what each plan node's output columns can hold.

/// The non-null values a column (or expression) can hold, and what proves it.
#[derive(Debug, Clone)]
struct Domain {
    /// Distinct, ascending, of the column's type in its canonical form
    /// ([`canonical_type`]), so that the domains of two layouts of one type compare.
    values: Vec<ScalarValue>,
    source: String,
    /// `table.column` while the domain is that column's declared range, possibly bounded
    /// further by the question's comparisons.
    declared: Option<String>,
}

impl Domain {
    fn new(values: Vec<ScalarValue>, source: impl Into<String>) -> Self {
        let mut values: Vec<ScalarValue> = values
            .into_iter()
            .filter(|v| !v.is_null())
            .map(canonical_value)
            .collect();
        sort_dedup(&mut values);
        Domain {
            values,
            source: source.into(),
            declared: None,
        }
    }

    /// The values both domains allow: `self` narrowed by `other`.
    fn meet(self, other: Domain) -> Domain {
        let values: Vec<ScalarValue> = self
            .values
            .iter()
            .filter(|v| other.contains(v))
            .cloned()
            .collect();
        if values.len() == self.values.len() {
            self
        } else if values.len() == other.values.len() {
            other
        } else {
            Domain {
                values,
                source: format!("{} and {}", self.source, other.source),
                declared: None,
            }
        }
    }

    fn contains(&self, value: &ScalarValue) -> bool {
        self.values
            .binary_search_by(|v| v.partial_cmp(value).unwrap_or(Ordering::Equal))
            .is_ok()
    }
}

/// Domains of a plan node's output columns; a column without one is absent.
type Facts = HashMap<Column, Domain>;

fn facts_of(plan: &LogicalPlan) -> Facts {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table();
            let mut facts: Facts = scan
                .projected_schema
                .iter()
                .filter_map(|(qualifier, field)| {
                    let domain = stored_domain(table, field)?;
                    Some((Column::new(qualifier.cloned(), field.name()), domain))
                })
                .collect();
            // A filter pushed into the scan only drops rows.
            let filters: Vec<&Expr> = scan.filters.iter().flat_map(split_conjunction).collect();
            narrow(&mut facts, &filters, &scan.projected_schema);
            facts
        }
        LogicalPlan::SubqueryAlias(alias) => {
            let inner = facts_of(&alias.input);
            alias
                .input
                .schema()
                .columns()
                .into_iter()
                .zip(alias.schema.columns())
                .filter_map(|(input, output)| Some((output, inner.get(&input)?.clone())))
                .collect()
        }
        LogicalPlan::Projection(projection) => {
            let inner = facts_of(&projection.input);
            let input_schema = projection.input.schema();
            projection
                .expr
                .iter()
                .enumerate()
                .filter_map(|(index, expr)| {
                    let domain = expr_domain(expr, &inner, input_schema)?;
                    Some((output_column(&projection.schema, index), domain))
                })
                .collect()
        }
        LogicalPlan::Filter(filter) => {
            // Every row that passes satisfies every conjunct, whatever lies below.
            let mut facts = facts_of(&filter.input);
            narrow(
                &mut facts,
                &split_conjunction(&filter.predicate),
                filter.input.schema(),
            );
            facts
        }
        LogicalPlan::Join(join) => {
            let mut facts = facts_of(&join.left);
            facts.extend(facts_of(&join.right));
            facts.retain(|column, _| join.schema.has_column(column));
            // Only an inner join holds its condition on every row: an outer join keeps
            // unmatched rows of its preserved side with their own values.
            if join.join_type == JoinType::Inner {
                let on: Vec<Expr> = join
                    .on
                    .iter()
                    .map(|(l, r)| l.clone().eq(r.clone()))
                    .collect();
                let mut conjuncts: Vec<&Expr> = on.iter().collect();
                if let Some(filter) = &join.filter {
                    conjuncts.extend(split_conjunction(filter));
                }
                narrow(&mut facts, &conjuncts, &join.schema);
            }
            facts
        }
        LogicalPlan::Aggregate(aggregate) => {
            if aggregate
                .group_expr
                .iter()
                .any(|g| matches!(g, Expr::GroupingSet(_)))
            {
                return Facts::new();
            }
            let inner = facts_of(&aggregate.input);
            let input_schema = aggregate.input.schema();
            let groups = aggregate.group_expr.len();
            let mut facts = Facts::new();
            for (index, group) in aggregate.group_expr.iter().enumerate() {
                if let Some(domain) = expr_domain(group, &inner, input_schema) {
                    facts.insert(output_column(&aggregate.schema, index), domain);
                }
            }
            for (index, expr) in aggregate.aggr_expr.iter().enumerate() {
                if let Some(domain) = picked_value_domain(expr, &inner, input_schema) {
                    facts.insert(output_column(&aggregate.schema, groups + index), domain);
                }
            }
            facts
        }
        // Row for row or fewer rows, same columns.
        LogicalPlan::Sort(sort) => facts_of(&sort.input),
        LogicalPlan::Limit(limit) => facts_of(&limit.input),
        LogicalPlan::Distinct(Distinct::All(input)) => facts_of(input),
        _ => Facts::new(),
    }
}

fn output_column(schema: &DFSchema, index: usize) -> Column {
    let (qualifier, field) = schema.qualified_field(index);
    Column::new(qualifier.cloned(), field.name())
}

/// MIN and MAX give one of their input values (or NULL).
fn picked_value_domain(expr: &Expr, facts: &Facts, schema: &DFSchema) -> Option<Domain> {
    let Expr::AggregateFunction(AggregateFunction { func, params }) = unalias(expr) else {
        return None;
    };
    match (func.name(), params.args.as_slice()) {
        ("min" | "max", [argument]) => expr_domain(argument, facts, schema),
        _ => None,
    }
}

/// The domain a stored column has by the data contract or the shipped reference data.
fn stored_domain(table: &str, field: &Field) -> Option<Domain> {
    let name = field.name();
    let data_type = &canonical_type(field.data_type());
    if let Some(set) = schema::value_set(table, name) {
        let values = set
            .iter()
            .map(|v| convert(&ScalarValue::from(*v), data_type))
            .collect::<Option<Vec<_>>>()?;
        return Some(Domain::new(values, format!("value set of {table}.{name}")));
    }
    if data_type == &DataType::Boolean {
        let values = vec![ScalarValue::from(false), ScalarValue::from(true)];
        return Some(Domain::new(
            values,
            format!("boolean column {table}.{name}"),
        ));
    }
    if let Some(values) = reference_values(table, name) {
        let values = values
            .iter()
            .map(|v| convert(v, data_type))
            .collect::<Option<Vec<_>>>()?;
        return Some(Domain::new(
            values,
            format!("{table}.{name} (shipped reference)"),
        ));
    }
    if data_type.is_integer()
        && schema::PATIENT_TABLES.contains(&table)
        && let Some((low, high)) = schema::declared_range(name)
    {
        let column = format!("{table}.{name}");
        let mut domain = integer_range(low, high, data_type, &column)?;
        domain.source = format!("{column} over {low}..={high} (declared range)");
        domain.declared = Some(column);
        return Some(domain);
    }
    None
}

/// Every value of `low..=high` of type `data_type`; `None` past [`MAX_EVALUATIONS`].
fn integer_range(low: i64, high: i64, data_type: &DataType, column: &str) -> Option<Domain> {
    if high.checked_sub(low)? >= MAX_EVALUATIONS as i64 {
        return None;
    }
    let values = (low..=high)
        .filter_map(|v| integer_scalar(v, data_type))
        .collect();
    Some(Domain::new(
        values,
        format!("{column} over {low}..={high} (the question's filters)"),
    ))
}

/// The distinct values of every column of the shipped reference tables.
static REFERENCE: LazyLock<HashMap<(String, String), Vec<ScalarValue>>> = LazyLock::new(|| {
    let mut columns = HashMap::new();
    let tables = [
        (schema::ORPHA_TERM, reference::orpha_term_batch()),
        (schema::ORPHA_CLOSURE, reference::orpha_closure_batch()),
    ];
    for (table, batch) in tables {
        // The tables are compiled in; should one not parse, its columns prove nothing.
        let Ok(batch) = batch else { continue };
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if let Some(values) = distinct_values(column) {
                columns.insert((table.to_string(), field.name().clone()), values);
            }
        }
    }
    columns
});

fn distinct_values(column: &ArrayRef) -> Option<Vec<ScalarValue>> {
    let mut values = (0..column.len())
        .map(|row| ScalarValue::try_from_array(column.as_ref(), row).ok())
        .collect::<Option<Vec<_>>>()?;
    sort_dedup(&mut values);
    Some(values)
}

fn reference_values(table: &str, column: &str) -> Option<&'static [ScalarValue]> {
    REFERENCE
        .get(&(table.to_string(), column.to_string()))
        .map(Vec::as_slice)
}

/// Narrows `facts` by conjuncts that every row satisfies: literal sets and bounds first,
/// then equalities between columns, repeated until nothing changes.
fn narrow(facts: &mut Facts, conjuncts: &[&Expr], schema: &DFSchema) {
    let mut bounds: Vec<(Column, Bounds)> = Vec::new();
    let mut equalities = Vec::new();
    for conjunct in conjuncts {
        if let Some(pair) = column_equality(conjunct, schema) {
            equalities.push(pair);
            continue;
        }
        match literal_constraint(conjunct, schema) {
            Some((column, Constraint::Values(domain))) => restrict(facts, column, domain),
            Some((column, Constraint::Bounds(b))) => {
                match bounds.iter_mut().find(|(c, _)| c == &column) {
                    Some((_, existing)) => existing.tighten(b),
                    None => bounds.push((column, b)),
                }
            }
            None => {}
        }
    }
    for (column, bounds) in bounds {
        let Some(data_type) = column_type(&column, schema) else {
            continue;
        };
        let bounded = match facts.remove(&column) {
            Some(domain) => Some(bounds.apply(domain)),
            None => match (bounds.low, bounds.high) {
                (Some(low), Some(high)) if data_type.is_integer() => {
                    integer_range(low, high, &data_type, &column.flat_name())
                }
                _ => None,
            },
        };
        if let Some(domain) = bounded {
            facts.insert(column, domain);
        }
    }
    for _ in 0..=equalities.len() {
        let mut changed = false;
        for (a, b) in &equalities {
            let (before_a, before_b) = (size_of(facts, a), size_of(facts, b));
            let met = match (facts.get(a), facts.get(b)) {
                (Some(da), Some(db)) => da.clone().meet(db.clone()),
                (Some(d), None) | (None, Some(d)) => d.clone(),
                (None, None) => continue,
            };
            facts.insert(a.clone(), met.clone());
            facts.insert(b.clone(), met);
            changed |= size_of(facts, a) != before_a || size_of(facts, b) != before_b;
        }
        if !changed {
            break;
        }
    }
}

fn size_of(facts: &Facts, column: &Column) -> Option<usize> {
    facts.get(column).map(|d| d.values.len())
}

/// Narrows a column's domain to `domain`'s values (or gives it that domain).
fn restrict(facts: &mut Facts, column: Column, domain: Domain) {
    let met = match facts.remove(&column) {
        Some(existing) => existing.meet(domain),
        None => domain,
    };
    facts.insert(column, met);
}

/// What a conjunct says about one column.
enum Constraint {
    /// The column holds one of these values.
    Values(Domain),
    /// The column lies within these integer bounds.
    Bounds(Bounds),
}

/// Inclusive integer bounds.
#[derive(Debug, Clone, Copy, Default)]
struct Bounds {
    low: Option<i64>,
    high: Option<i64>,
}

impl Bounds {
    fn tighten(&mut self, other: Bounds) {
        self.low = self.low.max(other.low);
        self.high = match (self.high, other.high) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    fn contains(&self, value: i64) -> bool {
        self.low.is_none_or(|low| value >= low) && self.high.is_none_or(|high| value <= high)
    }

    /// `domain` without the values these bounds exclude; an integer domain only.
    fn apply(&self, domain: Domain) -> Domain {
        if domain.values.iter().any(|v| as_i64(v).is_none()) {
            return domain;
        }
        let values: Vec<ScalarValue> = domain
            .values
            .iter()
            .filter(|v| as_i64(v).is_some_and(|n| self.contains(n)))
            .cloned()
            .collect();
        if values.len() == domain.values.len() {
            return domain;
        }
        let source = match (&domain.declared, values.first(), values.last()) {
            (Some(column), Some(first), Some(last)) => format!(
                "{column} over {first}..={last} (declared range, bounded by the question's filters)"
            ),
            _ => format!("{}, bounded by the question's filters", domain.source),
        };
        Domain {
            values,
            source,
            declared: domain.declared,
        }
    }
}

/// `a = b` between two columns of the same type (string layouts alike: a node's
/// `Utf8View` code equals the reference's `Utf8` code as the coordinator's `Utf8` does).
fn column_equality(expr: &Expr, schema: &DFSchema) -> Option<(Column, Column)> {
    let Expr::BinaryExpr(BinaryExpr {
        left,
        op: Operator::Eq,
        right,
    }) = expr
    else {
        return None;
    };
    let (a, b) = (column_of(left, schema)?, column_of(right, schema)?);
    let same =
        canonical_type(&column_type(&a, schema)?) == canonical_type(&column_type(&b, schema)?);
    same.then_some((a, b))
}

/// A conjunct comparing one column with literals.
fn literal_constraint(expr: &Expr, schema: &DFSchema) -> Option<(Column, Constraint)> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, op, literal) = match (column_of(left, schema), literal_of(right)) {
                (Some(column), Some(literal)) => (column, *op, literal),
                _ => (column_of(right, schema)?, op.swap()?, literal_of(left)?),
            };
            let data_type = column_type(&column, schema)?;
            let constraint = match op {
                Operator::Eq => {
                    let values = literals_as(&[literal], &data_type)?;
                    Constraint::Values(Domain::new(values, "= literal"))
                }
                Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq => {
                    if !data_type.is_integer() {
                        return None;
                    }
                    let n = as_i64(&literal)?;
                    Constraint::Bounds(match op {
                        Operator::Lt => Bounds {
                            high: n.checked_sub(1),
                            ..Bounds::default()
                        },
                        Operator::LtEq => Bounds {
                            high: Some(n),
                            ..Bounds::default()
                        },
                        Operator::Gt => Bounds {
                            low: n.checked_add(1),
                            ..Bounds::default()
                        },
                        _ => Bounds {
                            low: Some(n),
                            ..Bounds::default()
                        },
                    })
                }
                _ => return None,
            };
            Some((column, constraint))
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) => {
            let column = column_of(expr, schema)?;
            let data_type = column_type(&column, schema)?;
            let literals = list.iter().map(literal_of).collect::<Option<Vec<_>>>()?;
            let values = literals_as(&literals, &data_type)?;
            Some((column, Constraint::Values(Domain::new(values, "IN list"))))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let column = column_of(expr, schema)?;
            if !column_type(&column, schema)?.is_integer() {
                return None;
            }
            let bounds = Bounds {
                low: Some(as_i64(&literal_of(low)?)?),
                high: Some(as_i64(&literal_of(high)?)?),
            };
            Some((column, Constraint::Bounds(bounds)))
        }
        // `WHERE g.causative`, `WHERE NOT f.excluded`.
        Expr::Column(_) | Expr::Not(_) => {
            let (inner, value) = match expr {
                Expr::Not(inner) => (inner.as_ref(), false),
                other => (other, true),
            };
            let column = column_of(inner, schema)?;
            if column_type(&column, schema)? != DataType::Boolean {
                return None;
            }
            let domain = Domain::new(vec![ScalarValue::from(value)], "= literal");
            Some((column, Constraint::Values(domain)))
        }
        _ => None,
    }
}

/// Literals compared with a column of `data_type`, as values of that type: integers with
/// integers (a literal no value of the type equals is left out), text with text, booleans
/// with booleans; `None` for any other pairing, whose comparison a cast would decide.
fn literals_as(literals: &[ScalarValue], data_type: &DataType) -> Option<Vec<ScalarValue>> {
    let mut values = Vec::with_capacity(literals.len());
    for literal in literals {
        if literal.is_null() {
            continue;
        }
        let literal_type = literal.data_type();
        if data_type.is_integer() && literal_type.is_integer() {
            values.extend(integer_scalar(as_i64(literal)?, data_type));
        } else if (is_text(data_type) && is_text(&literal_type))
            || (data_type == &DataType::Boolean && literal_type == DataType::Boolean)
        {
            values.push(convert(literal, data_type)?);
        } else {
            return None;
        }
    }
    Some(values)
}

fn is_text(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    )
}

/// A plain column of `schema`, qualified as the schema qualifies it.
fn column_of(expr: &Expr, schema: &DFSchema) -> Option<Column> {
    let Expr::Column(column) = unalias(expr) else {
        return None;
    };
    let (qualifier, field) = schema.qualified_field_from_column(column).ok()?;
    Some(Column::new(qualifier.cloned(), field.name()))
}

fn column_type(column: &Column, schema: &DFSchema) -> Option<DataType> {
    let (_, field) = schema.qualified_field_from_column(column).ok()?;
    Some(field.data_type().clone())
}

/// A non-null literal, or a negated integer literal.
fn literal_of(expr: &Expr) -> Option<ScalarValue> {
    match unalias(expr) {
        Expr::Literal(value, _) if !value.is_null() => Some(value.clone()),
        Expr::Negative(inner) => {
            let value = literal_of(inner)?;
            integer_scalar(as_i64(&value)?.checked_neg()?, &value.data_type())
        }
        _ => None,
    }
}

/// The values an expression over `schema`'s columns can take, where `facts` proves them.
fn expr_domain(expr: &Expr, facts: &Facts, schema: &DFSchema) -> Option<Domain> {
    match expr {
        Expr::Alias(Alias { expr, .. }) => expr_domain(expr, facts, schema),
        Expr::Column(_) => facts.get(&column_of(expr, schema)?).cloned(),
        Expr::Literal(value, _) => Some(Domain::new(vec![value.clone()], "literal")),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let apply: fn(i64, i64) -> Option<i64> = match op {
                Operator::Plus => i64::checked_add,
                Operator::Minus => i64::checked_sub,
                Operator::Multiply => i64::checked_mul,
                // Truncating toward zero as Arrow does; by zero, Arrow fails: no domain.
                Operator::Divide => i64::checked_div,
                Operator::Modulo => i64::checked_rem,
                _ => return None,
            };
            let left_domain = integer_domain(left, facts, schema)?;
            let right_domain = integer_domain(right, facts, schema)?;
            let data_type = integer_type(expr, schema)?;
            if left_domain
                .values
                .len()
                .saturating_mul(right_domain.values.len())
                > MAX_EVALUATIONS
            {
                return None;
            }
            let mut values = Vec::new();
            for a in &left_domain.values {
                for b in &right_domain.values {
                    let value = apply(as_i64(a)?, as_i64(b)?)?;
                    values.push(integer_scalar(value, &data_type)?);
                }
            }
            let source = computed_source(&[&left_domain, &right_domain]);
            Some(Domain::new(values, source))
        }
        Expr::Negative(inner) => {
            let domain = integer_domain(inner, facts, schema)?;
            let data_type = integer_type(expr, schema)?;
            let values = domain
                .values
                .iter()
                .map(|v| integer_scalar(as_i64(v)?.checked_neg()?, &data_type))
                .collect::<Option<Vec<_>>>()?;
            Some(Domain::new(values, computed_source(&[&domain])))
        }
        // On the node every cast runs as TRY_CAST: a value that does not fit would become
        // NULL, so every value must fit.
        Expr::Cast(Cast { expr: inner, field }) | Expr::TryCast(TryCast { expr: inner, field }) => {
            let target = field.data_type();
            if canonical_type(&inner.get_type(schema).ok()?) == canonical_type(target) {
                return expr_domain(inner, facts, schema);
            }
            if !target.is_integer() {
                return None;
            }
            let domain = integer_domain(inner, facts, schema)?;
            let values = domain
                .values
                .iter()
                .map(|v| integer_scalar(as_i64(v)?, target))
                .collect::<Option<Vec<_>>>()?;
            Some(Domain { values, ..domain })
        }
        // ern's total width_bucket with a literal count gives 0 ..= count + 1 or NULL on
        // every row, whatever its value (`crate::width_bucket`).
        Expr::ScalarFunction(function) if function.name() == crate::width_bucket::NAME => {
            let count = crate::width_bucket::literal_count(&function.args)?;
            let data_type = integer_type(expr, schema)?;
            let values = (0..=count + 1)
                .map(|bucket| integer_scalar(bucket, &data_type))
                .collect::<Option<Vec<_>>>()?;
            Some(Domain::new(
                values,
                format!("width_bucket into {count} buckets and two beyond"),
            ))
        }
        _ => None,
    }
}

/// The domain of an integer-typed expression.
fn integer_domain(expr: &Expr, facts: &Facts, schema: &DFSchema) -> Option<Domain> {
    integer_type(expr, schema)?;
    let domain = expr_domain(expr, facts, schema)?;
    domain
        .values
        .iter()
        .all(|v| as_i64(v).is_some())
        .then_some(domain)
}

fn integer_type(expr: &Expr, schema: &DFSchema) -> Option<DataType> {
    expr.get_type(schema).ok().filter(DataType::is_integer)
}

/// The source of a value computed from operands: the operands' own sources, literals aside.
fn computed_source(operands: &[&Domain]) -> String {
    let sources: Vec<&str> = operands
        .iter()
        .map(|d| d.source.as_str())
        .filter(|s| *s != "literal")
        .map(|s| s.strip_prefix("computed from ").unwrap_or(s))
        .collect();
    if sources.is_empty() {
        "literal".into()
    } else {
        format!("computed from {}", sources.join(" and "))
    }
}

fn as_i64(value: &ScalarValue) -> Option<i64> {
    match value {
        ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(*v),
        ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// `value` as a value of the integer type `data_type`, if it fits.
fn integer_scalar(value: i64, data_type: &DataType) -> Option<ScalarValue> {
    Some(match data_type {
        DataType::Int8 => ScalarValue::Int8(Some(i8::try_from(value).ok()?)),
        DataType::Int16 => ScalarValue::Int16(Some(i16::try_from(value).ok()?)),
        DataType::Int32 => ScalarValue::Int32(Some(i32::try_from(value).ok()?)),
        DataType::Int64 => ScalarValue::Int64(Some(value)),
        DataType::UInt8 => ScalarValue::UInt8(Some(u8::try_from(value).ok()?)),
        DataType::UInt16 => ScalarValue::UInt16(Some(u16::try_from(value).ok()?)),
        DataType::UInt32 => ScalarValue::UInt32(Some(u32::try_from(value).ok()?)),
        DataType::UInt64 => ScalarValue::UInt64(Some(u64::try_from(value).ok()?)),
        _ => return None,
    })
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(Alias { expr, .. }) => unalias(expr),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::RecordBatch;

    use super::*;

    fn key(expr: &str, data_type: DataType, values: Vec<ScalarValue>) -> KeyDomain {
        KeyDomain {
            expr: expr.into(),
            data_type,
            values,
            source: "test".into(),
        }
    }

    #[test]
    fn the_digest_is_sha256_of_the_documented_description() {
        let domain = SecureDomain::new(vec![
            key(
                "p.sex",
                DataType::Utf8,
                vec![ScalarValue::from("male"), ScalarValue::Utf8(None)],
            ),
            key("y", DataType::Int64, vec![ScalarValue::Int64(Some(-3))]),
        ]);
        let text = "ern-secure-domain-v1\nkeys 2\n\
            key 5:p.sex\ntype 4:Utf8\nvalues 2\nnull\nvalue 4:male\n\
            key 1:y\ntype 5:Int64\nvalues 1\nvalue 2:-3\n";
        assert_eq!(domain.description(), text);
        let expected = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        assert_eq!(domain.digest(), hex::encode(expected.as_ref()));
    }

    #[test]
    fn string_layouts_are_one_type_in_the_domain_and_its_digest() {
        let utf8 = SecureDomain::new(vec![key(
            "d.code",
            DataType::Utf8,
            vec![ScalarValue::from("ORPHA:154"), ScalarValue::Utf8(None)],
        )]);
        for (data_type, values) in [
            (
                DataType::Utf8View,
                vec![
                    ScalarValue::Utf8View(Some("ORPHA:154".into())),
                    ScalarValue::Utf8View(None),
                ],
            ),
            (
                DataType::LargeUtf8,
                vec![
                    ScalarValue::LargeUtf8(Some("ORPHA:154".into())),
                    ScalarValue::LargeUtf8(None),
                ],
            ),
        ] {
            let other = SecureDomain::new(vec![key("d.code", data_type, values)]);
            assert_eq!(other.keys[0].data_type, DataType::Utf8);
            assert_eq!(other.keys[0].values, utf8.keys[0].values);
            assert_eq!(other.digest(), utf8.digest());
        }
        // Every layout of a key column finds its cells.
        let columns: [ArrayRef; 3] = [
            Arc::new(arrow::array::StringArray::from(vec![
                Some("ORPHA:154"),
                None,
            ])),
            Arc::new(arrow::array::StringViewArray::from(vec![
                Some("ORPHA:154"),
                None,
            ])),
            Arc::new(arrow::array::LargeStringArray::from(vec![
                Some("ORPHA:154"),
                None,
            ])),
        ];
        for column in columns {
            assert_eq!(
                utf8.cells_of_batch(&[column]).expect("cells"),
                vec![Some(1), Some(0)]
            );
        }
        assert_eq!(
            canonical_type(&DataType::Dictionary(
                Box::new(DataType::Int32),
                Box::new(DataType::Utf8View)
            )),
            DataType::Utf8
        );
        assert_eq!(canonical_type(&DataType::BinaryView), DataType::Binary);
        assert_eq!(canonical_type(&DataType::Int32), DataType::Int32);
    }

    #[test]
    fn a_text_null_and_the_word_null_differ() {
        let with = |value| SecureDomain::new(vec![key("k", DataType::Utf8, vec![value])]).digest();
        assert_ne!(
            with(ScalarValue::Utf8(None)),
            with(ScalarValue::from("null"))
        );
    }

    #[test]
    fn cells_are_row_major() {
        let domain = SecureDomain::new(vec![
            key(
                "a",
                DataType::Utf8,
                vec![ScalarValue::from("y"), ScalarValue::from("x")],
            ),
            key(
                "b",
                DataType::Int32,
                (1..=3).map(|v| ScalarValue::Int32(Some(v))).collect(),
            ),
        ]);
        assert_eq!(domain.cells(), 6);
        let cell = domain.cell_of(&[ScalarValue::from("y"), ScalarValue::Int32(Some(2))]);
        assert_eq!(cell, Some(4));
        assert_eq!(
            domain.cell_of(&[ScalarValue::from("z"), ScalarValue::Int32(Some(2))]),
            None
        );
        let arrays = domain.key_arrays(&[4]).expect("arrays");
        assert_eq!(
            ScalarValue::try_from_array(arrays[0].as_ref(), 0).expect("a"),
            ScalarValue::from("y")
        );
        assert_eq!(
            ScalarValue::try_from_array(arrays[1].as_ref(), 0).expect("b"),
            ScalarValue::Int32(Some(2))
        );
        assert!(domain.key_arrays(&[6]).is_err());
    }

    #[test]
    fn the_reference_columns_have_their_distinct_values() {
        assert_eq!(
            reference_values("orpha_term", "orpha_code").map(<[_]>::len),
            Some(227)
        );
        let depths = reference_values("orpha_closure", "depth").expect("depth");
        assert_eq!(depths.first(), Some(&ScalarValue::Int32(Some(0))));
        assert_eq!(depths.last(), Some(&ScalarValue::Int32(Some(6))));
    }

    #[test]
    fn a_batch_with_no_rows_has_no_cells() {
        let domain =
            SecureDomain::new(vec![key("a", DataType::Utf8, vec![ScalarValue::from("x")])]);
        let batch =
            RecordBatch::new_empty(std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
                Field::new("a", DataType::Utf8View, false),
            ])));
        assert_eq!(
            domain.cells_of_batch(batch.columns()).expect("cells"),
            vec![]
        );
    }

    #[test]
    fn a_total_puts_every_row_in_its_one_cell() {
        let domain = SecureDomain::new(Vec::new());
        assert_eq!(domain.cells(), 1);
        assert!(domain.cells_of_batch(&[]).is_err());
        assert_eq!(
            domain.cells_of_rows(&[], 2).expect("cells"),
            vec![Some(0); 2]
        );
        assert!(domain.key_arrays(&[0]).expect("arrays").is_empty());
    }
}
