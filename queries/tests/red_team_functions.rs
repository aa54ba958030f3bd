//! Red team of width_bucket and of the constant-failure check: totality, the secure
//! domain of a histogram key, literal arguments, and a validation that never crashes nor
//! depends on anything but the question.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{Field, Int32Type, Schema};
use datafusion::common::ScalarValue;
use ern_queries::Rule;
use ern_queries::catalog::{planning_context, planning_state};
use ern_queries::domain::AggregationMode;

use crate::common::{assert_all_refused, validate};

/// `call` (over a column `v`) on whole numbers and on floats at and beyond every edge.
async fn buckets(call: &str) -> Vec<Option<i32>> {
    let ctx = planning_context().expect("context");
    let ints = Int64Array::from(vec![
        Some(i64::MIN),
        Some(-1_000_000_000),
        Some(-1),
        Some(0),
        Some(9),
        Some(79),
        Some(80),
        Some(1_000_000_000),
        Some(i64::MAX),
        None,
    ]);
    let floats = Float64Array::from(vec![
        Some(f64::MIN),
        Some(-0.0),
        Some(79.999_999_999_999_99),
        Some(f64::MAX),
        Some(f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        Some(f64::MIN_POSITIVE),
        Some(1e-300),
        None,
    ]);
    let mut out = Vec::new();
    for (name, values) in [
        ("i", Arc::new(ints) as arrow::array::ArrayRef),
        ("f", Arc::new(floats)),
    ] {
        let schema = Schema::new(vec![Field::new("v", values.data_type().clone(), true)]);
        let batch = RecordBatch::try_new(Arc::new(schema), vec![values]).expect("batch");
        ctx.register_batch(name, batch).expect("register");
        let rows = ctx
            .sql(&format!("SELECT {call} AS b FROM {name}"))
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{call} failed on a value: {e}"));
        for batch in rows {
            let b = batch.column(0).as_primitive::<Int32Type>();
            out.extend((0..b.len()).map(|row| b.is_valid(row).then(|| b.value(row))));
        }
    }
    out
}

/// However the count is spelt (a cast, a float, a negation, a decimal that rounds), a
/// secure histogram's public domain holds every bucket the function can give, on every
/// value, so a site's vector never meets a key outside it; spellings whose value is not
/// a literal whole number are refused.
#[tokio::test]
async fn the_secure_domain_of_a_histogram_holds_every_bucket_it_gives() {
    let state = planning_state().expect("planning");
    for count in [
        "8",
        "8e0",
        "CAST(8 AS SMALLINT)",
        "-(-8)",
        "TRY_CAST(8.0 AS INT)",
        "CAST(8.99999999999999999999 AS BIGINT)",
        "CAST(9.99999999999999999999 AS DOUBLE)",
        "10000",
    ] {
        for bounds in ["0, 80", "-0.5, 79.5", "-1e308, 1e308", "0, 1e-300"] {
            let call = format!("width_bucket(d.age_at_onset, {bounds}, {count})");
            let sql = format!(
                "SELECT {call} AS b, COUNT(DISTINCT d.pid) AS n FROM diagnosis d GROUP BY {call}"
            );
            let query = validate(&sql, &state)
                .await
                .unwrap_or_else(|refusal| panic!("{sql}: {refusal}"));
            let AggregationMode::Secure(domain) = query.mode() else {
                panic!("{sql}: per site: {:?}", query.mode());
            };
            let allowed = &domain.keys[0].values;
            for bucket in buckets(&format!("width_bucket(v, {bounds}, {count})")).await {
                assert!(
                    allowed.contains(&ScalarValue::Int32(bucket)),
                    "{sql}: bucket {bucket:?} outside the domain {allowed:?}"
                );
            }
        }
    }
    for count in [
        "4 + 4",
        "CAST('8' AS INT)",
        "CAST(8.5 AS INT)",
        "10001",
        "0",
        "-8",
        "d.age_at_diagnosis",
        "width_bucket(1, 0, 10, 10)",
        "CAST(NULL AS INT)",
    ] {
        let sql = format!(
            "SELECT width_bucket(d.age_at_onset, 0, 80, {count}) AS b, COUNT(*) AS n FROM diagnosis d GROUP BY 1"
        );
        let refusal = validate(&sql, &state).await.expect_err(&sql);
        assert!(
            matches!(refusal.rule, Rule::AllowedFunctions | Rule::OneQuery),
            "{sql}: {refusal}"
        );
    }
}

/// Through a subquery, a histogram bucket is still a function of a value: it may key a
/// group, never flow into a released aggregate.
#[tokio::test]
async fn a_bucket_computed_in_a_subquery_stays_out_of_released_aggregates() {
    let state = planning_state().expect("planning");
    assert_all_refused(
        &[
            "SELECT SUM(x.b) FROM (SELECT pid, width_bucket(age_at_onset, 0, 80, 8) AS b FROM diagnosis) x",
            "SELECT VAR_POP(x.b) FROM (SELECT pid, MAX(width_bucket(age_at_onset, 0, 80, 8)) AS b FROM diagnosis GROUP BY pid) x",
            "SELECT AVG(x.b) FROM (SELECT pid, width_bucket(age_at_onset, 0, 80, 8) AS b FROM diagnosis) x",
        ],
        &state,
        Rule::BarrierAggregates,
        None,
    )
    .await;
    validate(
        "SELECT x.b, COUNT(DISTINCT x.pid) AS n FROM (SELECT pid, width_bucket(age_at_onset, 0, 80, 8) AS b FROM diagnosis) x GROUP BY x.b",
        &state,
    )
    .await
    .expect("a bucket as a key");
}

/// The constant check evaluates the question's own literals once: extreme arguments
/// either evaluate or are refused as a mistake, never crash validation, and a part that
/// depends on the day (current_date) or on data is not evaluated at all.
#[tokio::test]
async fn constant_parts_with_extreme_arguments_neither_crash_nor_depend_on_anything_else() {
    let state = planning_state().expect("planning");
    for (condition, refused) in [
        ("left(sex, -9223372036854775808) = 'a'", false),
        ("right('abc', -9223372036854775808) = 'a'", false),
        (
            "substr('abc', 9223372036854775807, 9223372036854775807) = 'a'",
            false,
        ),
        (
            "substr('abc', -9223372036854775808, 9223372036854775807) = 'a'",
            true,
        ),
        ("split_part('a,b', ',', -9223372036854775808) = 'a'", false),
        ("round(1.5, 2147483647) = 1", false),
        ("trunc(1.5, -2147483648) = 1", false),
        ("abs(-9223372036854775808) = 1", true),
        ("date_part('epoch', DATE '9999-12-31') = 1", false),
        ("date_trunc('year', DATE '-262143-01-01') IS NULL", true),
        ("power(10, 400) = 1", false),
        ("width_bucket(5, -1e308, 1e308, 10000) = 1", false),
        ("current_date() - DATE '2020-01-01' > 1", false),
        ("birth_year > 'abc'", true),
    ] {
        let sql = format!("SELECT COUNT(*) AS n FROM patient WHERE {condition}");
        let state = state.clone();
        let outcome = tokio::spawn(async move { validate(&sql, &state).await.map(|_| ()) })
            .await
            .unwrap_or_else(|_| panic!("validation crashed on {condition}"));
        match outcome {
            Ok(()) => assert!(!refused, "{condition}: accepted"),
            Err(refusal) => {
                assert!(refused, "{condition}: {refusal}");
                assert!(refusal.mistake, "{condition}: {refusal}");
            }
        }
    }
}
