//! What a query may use, in one place for a steward to review: tables, the columns
//! reference tables join on, aggregates, scalar and conditional functions, each with why
//! it is safe. Everything not listed here is refused: these are allowlists, never
//! denylists. The rules that use them are in [`crate::rules`].

/// Tables a query may read: the node's patient tables and the public reference tables.
pub const TABLES: &[&str] = &[
    "patient",
    "diagnosis",
    "genetic_finding",
    "phenotype",
    "orpha_term",
    "orpha_closure",
];

/// The columns a reference table may be joined on: its codes. A join on anything else
/// (a depth, a value computed from a patient's data) can multiply rows by a value only
/// one patient has, and the time taken would tell.
pub const REFERENCE_KEYS: &[&str] = &["orpha_code", "ancestor", "descendant"];

/// Aggregate functions allowed at the aggregation barrier (the released numbers), by the
/// names DataFusion 55 gives them: `var` is VAR_SAMP (also `var_samp`, `var_sample` and,
/// registered by ern, `variance`), `var_pop` (also `var_population`), `stddev` is
/// STDDEV_SAMP (also `stddev_samp`), `stddev_pop`. COUNT(DISTINCT …) is allowed only
/// over `pid`. The spreads are sent as COUNT, SUM and a sum of squares and merged exactly
/// ([`crate::spread`]).
pub const BARRIER_AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "var",
    "var_pop",
    "stddev",
    "stddev_pop",
];

/// Aggregate functions allowed in a per-patient grouping below the barrier. They combine
/// one patient's rows into one value per patient, which the barrier then counts or sums.
pub const PER_PATIENT_AGGREGATES: &[&str] =
    &["count", "sum", "avg", "min", "max", "bool_and", "bool_or"];

/// One allowlisted function and why it is safe on patient rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowed {
    /// The function's name, lower case, as DataFusion names it.
    pub name: &'static str,
    /// Why it may run on patient rows: cheap, total on every value (the node gives NULL
    /// where DataFusion would fail), and what it can and cannot reveal.
    pub why: &'static str,
}

const fn allowed(name: &'static str, why: &'static str) -> Allowed {
    Allowed { name, why }
}

/// Scalar functions allowed anywhere (rule 5). Each is cheap: no regular expressions, no
/// repetition or padding to a length the query chooses. None may fail on a value: a
/// failure that depends on data tells the researcher that some patient has such a value.
/// Functions that parse text into numbers or dates are left out, and so is `make_date`
/// (it builds dates outside the range every other date function can handle). The node
/// wraps every one of these so that it gives NULL where DataFusion would report an error
/// (`ern_node::total`; `node/service/tests/total.rs` calls each on hostile values). None may shape
/// a value that flows into a released aggregate (rule 4): they are for WHERE and GROUP BY,
/// where k covers what they compute.
pub const SCALAR_FUNCTIONS: &[Allowed] = &[
    // numbers
    allowed(
        "abs",
        "total; the smallest integer gives NULL on the node instead of overflowing",
    ),
    allowed(
        "ceil",
        "total on every number; NaN and infinities pass through",
    ),
    allowed(
        "floor",
        "total on every number; NaN and infinities pass through",
    ),
    allowed(
        "round",
        "total; a digits argument out of range gives NULL on the node",
    ),
    allowed(
        "trunc",
        "total; a digits argument out of range gives NULL on the node",
    ),
    allowed(
        "signum",
        "total: -1, 0 or 1 (an indicator, so never inside a released aggregate)",
    ),
    allowed("sqrt", "a negative gives NULL on the node, not an error"),
    allowed("cbrt", "total on every number"),
    allowed("exp", "overflow gives infinity, not an error"),
    allowed(
        "ln",
        "zero and negatives give NULL or -infinity on the node, not an error",
    ),
    allowed(
        "log10",
        "zero and negatives give NULL or -infinity on the node, not an error",
    ),
    allowed(
        "log2",
        "zero and negatives give NULL or -infinity on the node, not an error",
    ),
    allowed(
        "power",
        "floating-point: overflow gives infinity, 0 to a negative power NULL on the node",
    ),
    allowed("isnan", "a test: true or false on every number"),
    allowed(
        "width_bucket",
        "ern's own, total: a bucket from 0 to count + 1, NULL for NULL, NaN or infinity; the bounds and the count are written in the query, so the buckets are public",
    ),
    allowed("iszero", "a test: true or false on every number"),
    // text
    allowed("lower", "total on every text; the length is the input's"),
    allowed("upper", "total on every text; the length is the input's"),
    allowed("length", "total: a count of characters"),
    allowed("char_length", "total: a count of characters"),
    allowed("character_length", "total: a count of characters"),
    allowed("octet_length", "total: a count of bytes"),
    allowed(
        "substr",
        "a negative length or a start past the end gives NULL on the node, not an error",
    ),
    allowed("substring", "as substr"),
    allowed("left", "total; never longer than its input"),
    allowed("right", "total; never longer than its input"),
    allowed("trim", "total; never longer than its input"),
    allowed("btrim", "total; never longer than its input"),
    allowed("ltrim", "total; never longer than its input"),
    allowed("rtrim", "total; never longer than its input"),
    allowed("starts_with", "a test: true or false"),
    allowed("ends_with", "a test: true or false"),
    allowed("strpos", "total: a position, 0 when absent"),
    allowed("concat", "total; as long as its inputs together"),
    allowed("concat_ws", "total; as long as its inputs together"),
    allowed(
        "split_part",
        "a position of 0 gives NULL on the node, not an error",
    ),
    allowed("initcap", "total on every text; the length is the input's"),
    allowed("contains", "a test: true or false"),
    // dates
    allowed(
        "date_part",
        "the unit must be written in the query; on a stored date every unit is defined",
    ),
    allowed(
        "date_trunc",
        "the unit must be written in the query; total on stored dates",
    ),
    allowed("current_date", "no argument: the same for every row"),
];

/// Conditional functions allowed anywhere but inside a released aggregate's value (rule
/// 4): in WHERE and GROUP BY, where k covers the condition. Like CASE, BETWEEN and IN
/// lists (expression forms the validator allows directly), they choose between values
/// and cannot fail.
pub const CONDITIONAL_FUNCTIONS: &[Allowed] = &[
    allowed(
        "coalesce",
        "the first non-null of its arguments; cannot fail",
    ),
    allowed("nullif", "NULL when its arguments are equal; cannot fail"),
    allowed("nvl", "as coalesce of two"),
    allowed("ifnull", "as coalesce of two"),
    allowed("greatest", "the largest of its arguments; cannot fail"),
    allowed("least", "the smallest of its arguments; cannot fail"),
];

/// Allowlisted functions whose first argument, a unit, must be a literal: a unit read
/// from data could be invalid for one patient only.
pub const UNIT_FIRST: &[&str] = &["date_part", "date_trunc"];

/// Every allowlisted scalar and conditional function, by name.
pub fn scalar_function_names() -> Vec<&'static str> {
    SCALAR_FUNCTIONS
        .iter()
        .chain(CONDITIONAL_FUNCTIONS)
        .map(|f| f.name)
        .collect()
}

/// True when `name` (lower case, as DataFusion names functions) is an allowed scalar or
/// conditional function.
pub fn is_allowed_scalar(name: &str) -> bool {
    SCALAR_FUNCTIONS
        .iter()
        .chain(CONDITIONAL_FUNCTIONS)
        .any(|f| f.name == name)
}

/// The hint for a refused aggregate function at the barrier.
pub fn barrier_aggregate_hint(name: &str) -> String {
    match name {
        "min" | "max" | "first_value" | "last_value" | "nth_value" => {
            format!(
                "{} releases one patient's value: use AVG, or GROUP BY a banded value",
                name.to_uppercase()
            )
        }
        "median"
        | "percentile_cont"
        | "approx_percentile_cont"
        | "approx_median"
        | "quantile_cont" => {
            format!(
                "{} releases an individual value: GROUP BY bands of the value and COUNT patients",
                name.to_uppercase()
            )
        }
        "array_agg" | "string_agg" | "listagg" => {
            format!(
                "{} lists individual values: GROUP BY the value and COUNT patients instead",
                name.to_uppercase()
            )
        }
        "covar" | "covar_samp" | "covar_pop" | "corr" | "regr_slope" | "regr_intercept" => {
            format!(
                "{} is not merged across sites: VAR_SAMP, VAR_POP, STDDEV_SAMP and STDDEV_POP are",
                name.to_uppercase()
            )
        }
        _ => "the released aggregates are COUNT(*), COUNT(DISTINCT pid), COUNT(column), SUM, AVG, VAR_SAMP, VAR_POP, STDDEV_SAMP and STDDEV_POP"
            .to_string(),
    }
}
