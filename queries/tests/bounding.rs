//! Contribution bounding on real plans: a patient with ten diagnoses counts in at most
//! `max_groups_per_patient` groups, with at most `max_rows_per_patient` rows each, and
//! the sensitivities follow the bounds.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, RecordBatch, StringArray, new_null_array,
};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Int64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use ern_queries::catalog::planning_context;
use ern_queries::split::Concentration;
use ern_queries::{Bounding, Dominance, Planner, SiteFacts, schema};

/// A diagnosis table: `rows` are (pid, code, age at diagnosis).
fn context(rows: &[(&str, String, i32)]) -> SessionContext {
    let ctx = planning_context().expect("context");
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.clone()),
        )),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "ORPHA"))),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "confirmed"))),
        new_null_array(&DataType::Utf8, n),
        new_null_array(&DataType::Date32, n),
        new_null_array(&DataType::Date32, n),
        new_null_array(&DataType::Int32, n),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
    ];
    let diagnosis = RecordBatch::try_new(schema::diagnosis(), columns).expect("diagnosis");
    ctx.deregister_table("diagnosis").expect("deregister");
    ctx.register_table(
        "diagnosis",
        Arc::new(MemTable::try_new(schema::diagnosis(), vec![vec![diagnosis]]).expect("table")),
    )
    .expect("register");
    ctx
}

/// `(code, partial columns…)` of a site plan's output, sorted by code.
async fn run(
    ctx: &SessionContext,
    sql: &str,
    bounding: Option<Bounding>,
) -> Vec<(String, Vec<i64>)> {
    let plan = Planner::new().plan(sql, &ctx.state()).await.expect("valid");
    let site = plan
        .bounded_site_plan(
            &SiteFacts::default(),
            Concentration::TopShare(Dominance::default()),
            bounding,
        )
        .expect("site plan");
    let batches = ctx
        .execute_logical_plan(site.plan)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let batch = concat_batches(&batches[0].schema(), &batches).expect("concat");
    let mut out = Vec::new();
    for row in 0..batch.num_rows() {
        let code = batch.column(0).as_string::<i32>().value(row).to_string();
        let values = (1..batch.num_columns())
            .filter(|&c| batch.column(c).data_type() == &DataType::Int64)
            .map(|c| {
                let column = batch.column(c).as_primitive::<Int64Type>();
                if column.is_null(row) {
                    -1
                } else {
                    column.value(row)
                }
            })
            .collect();
        out.push((code, values));
    }
    out.sort();
    out
}

/// Patient `many` has ten diagnoses, each recorded twice, at age 140; `one-*` have one.
fn ten_diagnoses() -> Vec<(&'static str, String, i32)> {
    let mut rows = Vec::new();
    for code in 0..10 {
        for _ in 0..2 {
            rows.push(("many", format!("ORPHA:{}", 100 + code), 140));
        }
    }
    for (pid, code) in [("one-a", 100), ("one-b", 105), ("one-c", 109)] {
        rows.push((pid, format!("ORPHA:{code}"), 10));
    }
    rows
}

const SQL: &str = "SELECT code, COUNT(*) AS n, COUNT(DISTINCT pid) AS patients, SUM(age_at_diagnosis) AS s FROM diagnosis GROUP BY code";

#[tokio::test]
async fn a_patient_with_ten_diagnoses_counts_in_at_most_the_bound() {
    let ctx = context(&ten_diagnoses());
    let unbounded = run(&ctx, SQL, None).await;
    assert_eq!(
        unbounded.len(),
        10,
        "unbounded, the patient is in ten groups"
    );
    assert_eq!(
        unbounded[0].1[..3],
        [3, 2, 290],
        "two rows of 140 and one of 10"
    );
    let bounded = run(
        &ctx,
        SQL,
        Some(Bounding {
            max_groups_per_patient: 3,
            max_rows_per_patient: 1,
        }),
    )
    .await;
    // The patient keeps the three smallest codes, one row each, its sum of two rows of
    // 140 clamped to one row's bound, 150.
    let codes: Vec<&str> = bounded.iter().map(|(code, _)| code.as_str()).collect();
    assert_eq!(
        codes,
        [
            "ORPHA:100",
            "ORPHA:101",
            "ORPHA:102",
            "ORPHA:105",
            "ORPHA:109"
        ],
        "groups after bounding"
    );
    assert_eq!(
        bounded[0].1[..3],
        [2, 2, 160],
        "ORPHA:100: many (150) + one-a (10)"
    );
    assert_eq!(bounded[1].1[..3], [1, 1, 150]);
    assert_eq!(
        bounded[3].1[..3],
        [1, 1, 10],
        "ORPHA:105 holds only one-b now"
    );
}

#[tokio::test]
async fn rows_per_patient_cap_counts_and_sums() {
    let ctx = context(&ten_diagnoses());
    let bounded = run(
        &ctx,
        SQL,
        Some(Bounding {
            max_groups_per_patient: 10,
            max_rows_per_patient: 2,
        }),
    )
    .await;
    assert_eq!(bounded.len(), 10);
    assert_eq!(
        bounded[0].1[..3],
        [3, 2, 290],
        "two rows allowed: nothing clamped"
    );
    let one_row = run(
        &ctx,
        SQL,
        Some(Bounding {
            max_groups_per_patient: 10,
            max_rows_per_patient: 1,
        }),
    )
    .await;
    assert_eq!(
        one_row[1].1[..3],
        [1, 1, 150],
        "one row: count capped at 1, sum at 150"
    );
}

#[tokio::test]
async fn sensitivities_follow_the_bounds() {
    let ctx = context(&ten_diagnoses());
    let plan = Planner::new()
        .plan(
            "SELECT code, COUNT(*) AS n, COUNT(DISTINCT pid) AS p, SUM(age_at_diagnosis) AS s, AVG(age_at_onset) AS a FROM diagnosis GROUP BY code",
            &ctx.state(),
        )
        .await
        .expect("valid");
    let bounding = Bounding {
        max_groups_per_patient: 3,
        max_rows_per_patient: 2,
    };
    let site = plan
        .bounded_site_plan(
            &SiteFacts::default(),
            Concentration::Moments,
            Some(bounding),
        )
        .expect("plan");
    let sensitivity = site.sensitivity.expect("bounded");
    // COUNT(*): 3 groups × 2 rows; COUNT(DISTINCT pid): 3; SUM(age): 3 × 2 × 150;
    // AVG(age): its sum and its count.
    assert_eq!(sensitivity.partials, [6, 3, 900, 900, 6]);
    assert_eq!(sensitivity.patients, 3);
    let unbounded = plan
        .bounded_site_plan(&SiteFacts::default(), Concentration::Moments, None)
        .expect("plan");
    assert!(unbounded.sensitivity.is_none());
}
