//! `width_bucket` (`ern_queries::width_bucket`): PostgreSQL's buckets, total on every
//! value, literal bounds and count, a histogram split and merged like DataFusion's own
//! CASE over the pooled rows, a public domain for secure aggregation, and never inside a
//! released aggregate.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::{DataType, Field, Int32Type, Schema};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use ern_queries::catalog::{planning_context, planning_state};
use ern_queries::domain::AggregationMode;
use ern_queries::split::is_hidden;
use ern_queries::{Rule, SiteFacts, schema};

use crate::common::{assert_all_accepted, assert_all_refused, site_plan, validate};

/// `expression` over a one-column table `t(v)` of `values`, in a session with ern's
/// functions.
async fn evaluate(values: ArrayRef, expression: &str) -> Vec<Option<i32>> {
    let ctx = planning_context().expect("context");
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![Field::new(
            "v",
            values.data_type().clone(),
            true,
        )])),
        vec![values],
    )
    .expect("batch");
    ctx.register_batch("t", batch).expect("register");
    let batches = ctx
        .sql(&format!("SELECT {expression} AS b FROM t"))
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    batches
        .iter()
        .flat_map(|batch| {
            let buckets = batch.column(0).as_primitive::<Int32Type>();
            (0..buckets.len())
                .map(|row| buckets.is_valid(row).then(|| buckets.value(row)))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn buckets_are_postgresqls_below_inside_at_and_above_the_edges() {
    let ints: ArrayRef = Arc::new(Int64Array::from(vec![
        Some(-1),
        Some(0),
        Some(9),
        Some(10),
        Some(45),
        Some(79),
        Some(80),
        Some(1000),
        None,
        Some(i64::MIN),
        Some(i64::MAX),
    ]));
    assert_eq!(
        evaluate(ints, "width_bucket(v, 0, 80, 8)").await,
        [
            Some(0),
            Some(1),
            Some(1),
            Some(2),
            Some(5),
            Some(8),
            Some(9),
            Some(9),
            None,
            Some(0),
            Some(9)
        ]
    );
    let floats: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(5.35),
        Some(0.024),
        Some(10.06),
        Some(0.0),
        Some(f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        None,
    ]));
    // PostgreSQL's documented example: width_bucket(5.35, 0.024, 10.06, 5) = 3.
    assert_eq!(
        evaluate(floats, "width_bucket(v, 0.024, 10.06, 5)").await,
        [Some(3), Some(1), Some(6), Some(0), None, None, None, None]
    );
    // A whole number on a lower edge is in the bucket it opens (3 of 7 over 0..7).
    let edges: ArrayRef = Arc::new(Int32Array::from((0..7).map(Some).collect::<Vec<_>>()));
    assert_eq!(
        evaluate(edges, "width_bucket(v, 0, 7, 7)").await,
        (1..=7).map(Some).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn bounds_and_count_are_literals_in_range_and_each_refusal_says_which() {
    let state = planning_state().expect("planning");
    for (call, which) in [
        (
            "width_bucket(birth_year, birth_month, 2000, 4)",
            "low bound",
        ),
        (
            "width_bucket(birth_year, 1900, birth_year + 1, 4)",
            "high bound",
        ),
        ("width_bucket(birth_year, 1900, 2000, birth_month)", "count"),
        ("width_bucket(birth_year, NULL, 2000, 4)", "low bound"),
        (
            "width_bucket(birth_year, 2000, 1900, 4)",
            "below its high bound",
        ),
        (
            "width_bucket(birth_year, 1900, 1900, 4)",
            "below its high bound",
        ),
        ("width_bucket(birth_year, 1900, 2000, 0)", "count"),
        ("width_bucket(birth_year, 1900, 2000, 10001)", "count"),
        ("width_bucket(birth_year, 1900, 2000, 2.5)", "count"),
    ] {
        let sql = format!("SELECT {call} AS b, COUNT(*) AS n FROM patient GROUP BY {call}");
        let refusal = validate(&sql, &state).await.expect_err(&sql);
        assert_eq!(refusal.rule, Rule::AllowedFunctions, "{sql}: {refusal}");
        assert!(refusal.reason.contains(which), "{sql}: {refusal}");
        let in_where = format!("SELECT COUNT(*) FROM patient WHERE {call} = 1");
        assert!(validate(&in_where, &state).await.is_err(), "{in_where}");
    }
    // Text where a number goes, or three arguments: refused by rule 5 where the call
    // plans as written, by rule 1 where DataFusion's planner already finds the types
    // do not fit.
    for call in [
        "width_bucket(birth_year, '1900', 2000, 4)",
        "width_bucket(birth_year, 1900, 2000)",
    ] {
        for sql in [
            format!("SELECT COUNT(*) FROM patient WHERE {call} = 1"),
            format!("SELECT {call} AS b, COUNT(*) AS n FROM patient GROUP BY {call}"),
        ] {
            let refusal = validate(&sql, &state).await.expect_err(&sql);
            assert!(
                matches!(refusal.rule, Rule::OneQuery | Rule::AllowedFunctions),
                "{refusal}"
            );
        }
    }
}

#[tokio::test]
async fn width_bucket_may_not_shape_a_released_value() {
    let state = planning_state().expect("planning");
    assert_all_refused(
        &[
            "SELECT SUM(width_bucket(birth_year, 1900, 2000, 10)) FROM patient",
            "SELECT AVG(width_bucket(birth_year, 1900, 2000, 10) * 10) FROM patient",
            "SELECT COUNT(width_bucket(birth_year, 1900, 2000, 10)) FROM patient",
            "SELECT SUM(x.b) FROM (SELECT pid, width_bucket(birth_year, 1900, 2000, 10) AS b FROM patient) x",
        ],
        &state,
        Rule::BarrierAggregates,
        None,
    )
    .await;
    // In WHERE, in GROUP BY and per patient it stays allowed.
    assert_all_accepted(
        &[
            "SELECT COUNT(*) FROM patient WHERE width_bucket(birth_year, 1900, 2000, 10) = 3",
            "SELECT x.b, COUNT(*) FROM (SELECT pid, MAX(width_bucket(age_at_onset, 0, 80, 8)) AS b FROM diagnosis GROUP BY pid) x GROUP BY x.b",
        ],
        &state,
    )
    .await;
}

#[tokio::test]
async fn a_histogram_key_has_the_public_domain_of_its_buckets() {
    let state = planning_state().expect("planning");
    let query = validate(
        "SELECT width_bucket(d.age_at_onset, 0, 80, 8) AS band, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY width_bucket(d.age_at_onset, 0, 80, 8)",
        &state,
    )
    .await
    .expect("valid");
    let AggregationMode::Secure(domain) = query.mode() else {
        panic!("per site: {:?}", query.mode());
    };
    assert_eq!(domain.keys.len(), 1);
    let mut expected = vec![ScalarValue::Int32(None)];
    expected.extend((0..=9).map(|b| ScalarValue::Int32(Some(b))));
    assert_eq!(domain.keys[0].values, expected);
    assert!(
        domain.describe()[0].contains("width_bucket into 8 buckets"),
        "{:?}",
        domain.describe()
    );
    // Integer arithmetic over it keeps a domain; bounds that are not literals have none
    // (they are refused), and a key of another function has none.
    let scaled = validate(
        "SELECT width_bucket(p.birth_year, 1900, 2000, 10) * 10 AS b, COUNT(*) AS n FROM patient p GROUP BY width_bucket(p.birth_year, 1900, 2000, 10) * 10",
        &state,
    )
    .await
    .expect("valid");
    assert_eq!(scaled.mode().name(), "secure", "{:?}", scaled.mode());
}

/// Patients (pid, sex) and one diagnosis row each (age at onset), for `sites` sites.
fn site(prefix: &str, n: usize, seed: u64) -> SessionContext {
    let mut state = seed;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let pids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let mut d_pid = Vec::new();
    let mut ages = Vec::new();
    for pid in &pids {
        for _ in 0..=next(2) {
            d_pid.push(pid.clone());
            // Ages up to 120: some at and above the high bound, some NULL.
            ages.push((next(12) > 0).then(|| next(121) as i32));
        }
    }
    let ctx = planning_context().expect("context");
    let m = d_pid.len();
    let texts = |value: Option<&str>, len: usize| -> ArrayRef {
        Arc::new(StringArray::from(vec![value; len]))
    };
    let nulls = |data_type: &DataType, len: usize| arrow::array::new_null_array(data_type, len);
    let diagnosis = RecordBatch::try_new(
        schema::diagnosis(),
        vec![
            Arc::new(StringArray::from(d_pid.clone())),
            texts(Some("ORPHA:154"), m),
            texts(Some("ORPHA"), m),
            texts(Some("confirmed"), m),
            nulls(&DataType::Utf8, m),
            nulls(&DataType::Date32, m),
            nulls(&DataType::Date32, m),
            Arc::new(Int32Array::from(ages)),
            nulls(&DataType::Int32, m),
        ],
    )
    .expect("diagnosis");
    ctx.deregister_table("diagnosis").expect("deregister");
    ctx.register_table(
        "diagnosis",
        Arc::new(MemTable::try_new(schema::diagnosis(), vec![vec![diagnosis]]).expect("table")),
    )
    .expect("register");
    ctx
}

/// Every row as text, sorted.
fn text_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let batch = concat_batches(&first.schema(), batches).expect("concat");
    let mut rows = vec![Vec::new(); batch.num_rows()];
    for column in batch.columns() {
        let text = cast(column, &DataType::Utf8).expect("text");
        let text = text.as_string::<i32>();
        for (row, cells) in rows.iter_mut().enumerate() {
            cells.push(if text.is_valid(row) {
                text.value(row).to_string()
            } else {
                "NULL".into()
            });
        }
    }
    rows.sort();
    rows
}

#[tokio::test]
async fn a_histogram_merges_to_the_pooled_case_expression() {
    let histogram = "SELECT width_bucket(d.age_at_onset, 0, 80, 8) AS band, COUNT(DISTINCT d.pid) AS patients, COUNT(*) AS n FROM diagnosis d GROUP BY width_bucket(d.age_at_onset, 0, 80, 8)";
    let by_case = "SELECT CASE WHEN d.age_at_onset < 0 THEN 0 WHEN d.age_at_onset >= 80 THEN 9 ELSE d.age_at_onset / 10 + 1 END AS band, COUNT(DISTINCT d.pid) AS patients, COUNT(*) AS n FROM diagnosis d GROUP BY 1";
    let sites = [("a", 300, 1), ("b", 170, 2), ("c", 40, 3)];
    let mut released = Vec::new();
    for (prefix, n, seed) in sites {
        let ctx = site(prefix, n, seed);
        let query = validate(histogram, &ctx.state()).await.expect("valid");
        let plan = site_plan(&query, &SiteFacts::default()).expect("site plan");
        for batch in ctx
            .execute_logical_plan(plan)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run")
        {
            let schema = batch.schema();
            let visible: Vec<usize> = (0..batch.num_columns())
                .filter(|&i| !is_hidden(schema.field(i).name()))
                .collect();
            released.push(batch.project(&visible).expect("project"));
        }
    }
    let query = validate(histogram, &planning_state().expect("planning"))
        .await
        .expect("valid");
    let merged = query.merge(released).await.expect("merge");
    // The pool: the three sites' diagnosis rows together.
    let pooled = planning_context().expect("context");
    let mut rows = Vec::new();
    for (prefix, n, seed) in sites {
        let ctx = site(prefix, n, seed);
        rows.extend(
            ctx.sql("SELECT * FROM diagnosis")
                .await
                .expect("plan")
                .collect()
                .await
                .expect("rows"),
        );
    }
    pooled.deregister_table("diagnosis").expect("deregister");
    pooled
        .register_table(
            "diagnosis",
            Arc::new(MemTable::try_new(schema::diagnosis(), vec![rows]).expect("table")),
        )
        .expect("register");
    let want = pooled
        .sql(by_case)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let (got, want) = (text_rows(&merged), text_rows(&want));
    assert_eq!(got, want);
    // Every bucket, the one above (no age is below 0) and NULL are there.
    assert_eq!(got.len(), 10, "{got:?}");
}
