//! What a query may use, in one place for a steward to review. Everything not listed
//! here is refused: these are allowlists, never denylists.

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

/// Aggregate functions allowed at the aggregation barrier (the released numbers).
/// COUNT(DISTINCT …) is allowed only over `pid`.
pub const BARRIER_AGGREGATES: &[&str] = &["count", "sum", "avg"];

/// Aggregate functions allowed in a per-patient grouping below the barrier. They combine
/// one patient's rows into one value per patient, which the barrier then counts or sums.
pub const PER_PATIENT_AGGREGATES: &[&str] =
    &["count", "sum", "avg", "min", "max", "bool_and", "bool_or"];

/// Scalar functions allowed anywhere. Each is cheap (no regular expressions, no
/// repetition or padding to a length the query chooses). None may fail on a value: a
/// failure that depends on data tells the researcher that some patient has such a value.
/// Functions that parse text into numbers or dates are left out, and so is `make_date`
/// (it builds dates outside the range every other date function can handle). The node
/// wraps every one of these so that it gives NULL where DataFusion would report an error
/// (`ern_node::total`; `node/tests/total.rs` calls each on hostile values).
pub const SCALAR_FUNCTIONS: &[&str] = &[
    // numbers
    "abs",
    "ceil",
    "floor",
    "round",
    "trunc",
    "signum",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log10",
    "log2",
    "power",
    "greatest",
    "least",
    "isnan",
    "iszero",
    // nulls
    "coalesce",
    "nullif",
    "nvl",
    "ifnull",
    // text
    "lower",
    "upper",
    "length",
    "char_length",
    "character_length",
    "octet_length",
    "substr",
    "substring",
    "left",
    "right",
    "trim",
    "btrim",
    "ltrim",
    "rtrim",
    "starts_with",
    "ends_with",
    "strpos",
    "concat",
    "concat_ws",
    "split_part",
    "initcap",
    "contains",
    // dates
    "date_part",
    "date_trunc",
    "current_date",
];

/// Allowlisted functions whose first argument, a unit, must be a literal: a unit read
/// from data could be invalid for one patient only.
pub const UNIT_FIRST: &[&str] = &["date_part", "date_trunc"];

/// Scalar functions whose allowlisting needs a reason beyond "cheap and total".
pub const NOTES: &[(&str, &str)] = &[
    (
        "power",
        "floating-point: overflow gives infinity, not an error; never inside a released aggregate (rule 4)",
    ),
    (
        "substr",
        "a negative length or a start past the end gives NULL on the node, not an error",
    ),
    (
        "date_part",
        "the unit must be written in the query; on a stored date every unit is defined",
    ),
    ("date_trunc", "the unit must be written in the query"),
];

/// True when `name` (lower case, as DataFusion names functions) is an allowed scalar
/// function.
pub fn is_allowed_scalar(name: &str) -> bool {
    SCALAR_FUNCTIONS.contains(&name)
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
        "stddev" | "stddev_pop" | "stddev_samp" | "var" | "var_pop" | "var_samp" | "variance" => {
            format!(
                "{} cannot be merged across sites yet: GROUP BY bands and COUNT, or use AVG",
                name.to_uppercase()
            )
        }
        _ => {
            "the released aggregates are COUNT(*), COUNT(DISTINCT pid), COUNT(column), SUM and AVG"
                .to_string()
        }
    }
}
