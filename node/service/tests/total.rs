//! Rule 5: every allowlisted function, and every cast, is total on the node.
//!
//! A failure that depends on data is an oracle (red team, class 4: `sqrt` of a negative,
//! `power(0, -1)`, `abs` of the smallest integer, numeric casts that overflow, `make_date`
//! with month 13, `substr` with a negative length, `split_part(…, 0)`). Each allowlisted
//! function is called here, in the node's own locked-down session and through the same
//! plan rewrite as a site plan, on a table of hostile values (NaN, infinities, the
//! smallest and largest integers, zero, negative lengths, month 13, empty text), and must
//! give a value or NULL, never an error.

use std::sync::Arc;

use arrow::array::{Date32Array, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use ern_node::session::locked_down_context;
use ern_node::total::total_plan;
use ern_queries::allowlist;
use ern_queries::catalog::session_config;

const INTS: [Option<i64>; 10] = [
    Some(0),
    Some(-1),
    Some(1),
    Some(2),
    Some(13),
    Some(-13),
    Some(i64::MIN),
    Some(i64::MAX),
    Some(1_000_000_000),
    None,
];

const FLOATS: [Option<f64>; 10] = [
    Some(0.0),
    Some(-1.0),
    Some(1.0),
    Some(0.5),
    Some(f64::NAN),
    Some(f64::INFINITY),
    Some(f64::NEG_INFINITY),
    Some(1e308),
    Some(-1e308),
    None,
];

/// Every pair of hostile integers, floats and texts, one per row.
fn hostile_table() -> RecordBatch {
    let texts = [
        Some(""),
        Some("ORPHA:1"),
        Some("abc"),
        Some("-1"),
        Some("99999999999999999999"),
        Some("2024-13-45"),
        Some("year"),
        Some("💥"),
        Some("NaN"),
        None,
    ];
    let (mut i, mut j, mut i32s, mut f, mut g, mut s, mut dates) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for a in 0..INTS.len() {
        for b in 0..INTS.len() {
            i.push(INTS[a]);
            j.push(INTS[b]);
            i32s.push(INTS[a].map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32));
            f.push(FLOATS[a]);
            g.push(FLOATS[b]);
            s.push(texts[(a + b) % texts.len()]);
            // Dates reach a query only from the store (ingest keeps them within
            // 1880-01-01 … 2100-12-31) or from date_trunc of those: no function that
            // builds a date from numbers (make_date) and no interval arithmetic is allowed.
            dates.push(match b % 4 {
                0 => Some(-32_872),
                1 => Some(47_846),
                2 => Some(0),
                _ => None,
            });
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("i", DataType::Int64, true),
        Field::new("j", DataType::Int64, true),
        Field::new("n", DataType::Int32, true),
        Field::new("f", DataType::Float64, true),
        Field::new("g", DataType::Float64, true),
        Field::new("s", DataType::Utf8, true),
        Field::new("d", DataType::Date32, true),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(i)),
            Arc::new(Int64Array::from(j)),
            Arc::new(Int32Array::from(i32s)),
            Arc::new(Float64Array::from(f)),
            Arc::new(Float64Array::from(g)),
            Arc::new(StringArray::from(s)),
            Arc::new(Date32Array::from(dates)),
        ],
    )
    .expect("hostile table")
}

/// Calls of each allowlisted function on hostile arguments.
fn calls(function: &str) -> Vec<String> {
    let numeric_one = ["i", "n", "f", "-i", "i * j", "i - 1"];
    let text = ["s", "''", "concat(s, s)"];
    let lengths = ["i", "n", "-1", "0", "j"];
    let forms: Vec<String> = match function {
        "abs" | "ceil" | "floor" | "signum" | "sqrt" | "cbrt" | "exp" | "ln" | "log10" | "log2"
        | "isnan" | "iszero" => numeric_one
            .iter()
            .map(|a| format!("{function}({a})"))
            .collect(),
        "round" | "trunc" => ["f", "i"]
            .iter()
            .flat_map(|a| ["n", "j", "-1000", "1000"].map(|b| format!("{function}({a}, {b})")))
            .chain(numeric_one.iter().map(|a| format!("{function}({a})")))
            .collect(),
        "power" => ["i", "f", "0", "n"]
            .iter()
            .flat_map(|a| ["j", "g", "-1", "i"].map(|b| format!("power({a}, {b})")))
            .collect(),
        "greatest" | "least" | "coalesce" | "nvl" | "ifnull" | "nullif" => {
            vec![
                format!("{function}(i, j)"),
                format!("{function}(f, g)"),
                format!("{function}(s, 'x')"),
            ]
        }
        "lower" | "upper" | "length" | "char_length" | "character_length" | "octet_length"
        | "trim" | "btrim" | "ltrim" | "rtrim" | "initcap" => {
            text.iter().map(|a| format!("{function}({a})")).collect()
        }
        "substr" | "substring" => lengths
            .iter()
            .flat_map(|start| lengths.map(|length| format!("{function}(s, {start}, {length})")))
            .chain(
                lengths
                    .iter()
                    .map(|start| format!("{function}(s, {start})")),
            )
            .collect(),
        "left" | "right" => lengths
            .iter()
            .map(|n| format!("{function}(s, {n})"))
            .collect(),
        "starts_with" | "ends_with" | "strpos" | "contains" => {
            vec![format!("{function}(s, s)"), format!("{function}(s, '')")]
        }
        "concat" | "concat_ws" => vec![
            format!("{function}(s, s, s)"),
            format!("{function}(s, i)"),
            format!("{function}(s, f, d)"),
        ],
        "split_part" => lengths
            .iter()
            .map(|n| format!("split_part(s, ':', {n})"))
            .chain([
                "split_part(s, '', 1)".to_string(),
                "split_part(s, s, 0)".to_string(),
            ])
            .collect(),
        // The unit must be a literal (validation refuses anything else).
        "date_part" => ["'year'", "'month'", "'epoch'", "'dow'", "'bogus'"]
            .iter()
            .map(|unit| format!("date_part({unit}, d)"))
            .collect(),
        "date_trunc" => ["'year'", "'month'", "'day'", "'bogus'"]
            .iter()
            .map(|unit| format!("date_trunc({unit}, d)"))
            .collect(),
        "current_date" => vec!["current_date()".into()],
        // Validation makes the bounds and the count literals, with low < high and a count
        // of 1 to 10,000; here they come from the data too, so that the function is total
        // whatever reaches it.
        "width_bucket" => ["i", "n", "f", "-i", "i * j"]
            .iter()
            .flat_map(|value| {
                [
                    "0, 80, 8",
                    "-1e308, 1e308, 10000",
                    "0.024, 10.06, 5",
                    "j, 10, 5",
                    "0, g, 3",
                    "f, g, 2",
                    "0, 10, j",
                    "0, 10, n",
                    "10, 0, 5",
                    "0, 10, 0",
                ]
                .map(|rest| format!("width_bucket({value}, {rest})"))
            })
            .collect(),
        other => panic!("no hostile calls for the allowlisted function {other}: add them here"),
    };
    forms
}

/// Casts and operators that DataFusion could report as errors.
const OTHER_EXPRESSIONS: &[&str] = &[
    "CAST(i AS SMALLINT)",
    "CAST(i AS INT)",
    "CAST(f AS BIGINT)",
    "CAST(f AS INT)",
    "CAST(s AS INT)",
    "CAST(s AS DATE)",
    "CAST(s AS DOUBLE)",
    "CAST(i AS DECIMAL(5, 2))",
    "CAST(n * 100000 AS SMALLINT)",
    "-i",
    "i + j",
    "i * j",
    "i - j",
    "n + n",
    "s > 5",
    "i = s",
    "d > s",
];

#[tokio::test]
async fn every_allowlisted_function_and_cast_is_total_on_hostile_values() {
    let ctx = locked_down_context(session_config(), 256 << 20).expect("session");
    ctx.register_batch("h", hostile_table()).expect("table");
    let state = ctx.state();
    let mut expressions: Vec<String> = allowlist::scalar_function_names()
        .into_iter()
        .flat_map(calls)
        .collect();
    expressions.extend(OTHER_EXPRESSIONS.iter().map(|e| e.to_string()));
    let mut failures = Vec::new();
    for expression in &expressions {
        for sql in [
            format!("SELECT {expression} AS x FROM h"),
            format!("SELECT COUNT(*) FROM h WHERE ({expression}) IS NOT NULL"),
        ] {
            let result = async {
                let plan = state.create_logical_plan(&sql).await?;
                let plan = total_plan(plan, &state)?;
                ctx.execute_logical_plan(plan).await?.collect().await
            }
            .await;
            if let Err(error) = result {
                failures.push(format!("{sql}\n    {}", error.strip_backtrace()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile calls failed:\n{}",
        failures.len(),
        expressions.len() * 2,
        failures.join("\n")
    );
}
