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

/// A diagnosis batch: `rows` are (pid, code, age at diagnosis).
fn diagnosis_batch<P: AsRef<str>>(rows: &[(P, String, Option<i32>)]) -> RecordBatch {
    let n = rows.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.0.as_ref()),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| r.1.clone()),
        )),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "ORPHA"))),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "confirmed"))),
        new_null_array(&DataType::Utf8, n),
        new_null_array(&DataType::Date32, n),
        new_null_array(&DataType::Date32, n),
        new_null_array(&DataType::Int32, n),
        Arc::new(Int32Array::from_iter(rows.iter().map(|r| r.2))),
    ];
    RecordBatch::try_new(schema::diagnosis(), columns).expect("diagnosis")
}

/// The planning context with `diagnosis` as its diagnosis table.
fn context_over(diagnosis: RecordBatch) -> SessionContext {
    let ctx = planning_context().expect("context");
    ctx.deregister_table("diagnosis").expect("deregister");
    ctx.register_table(
        "diagnosis",
        Arc::new(MemTable::try_new(schema::diagnosis(), vec![vec![diagnosis]]).expect("table")),
    )
    .expect("register");
    ctx
}

/// A diagnosis table: `rows` are (pid, code, age at diagnosis).
fn context(rows: &[(&str, String, i32)]) -> SessionContext {
    let rows: Vec<(&str, String, Option<i32>)> = rows
        .iter()
        .map(|(pid, code, age)| (*pid, code.clone(), Some(*age)))
        .collect();
    context_over(diagnosis_batch(&rows))
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

/// At one group per patient (the default bound) the site plan keeps, for every patient,
/// the row whose keys come first in ascending order, NULL last: the same rows as a
/// ranking window in plain DataFusion over the same table, with two keys and NULLs.
#[tokio::test]
async fn one_group_per_patient_is_the_first_in_key_order() {
    // 300 patients with 1 to 6 diagnoses over 7 codes, ages from a small set with NULLs
    // and repeated rows, from a fixed linear congruential sequence.
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    let mut rows: Vec<(String, String, Option<i32>)> = Vec::new();
    for patient in 0..300 {
        for _ in 0..1 + next(6) {
            let code = format!("ORPHA:{}", 100 + next(7));
            let age = [None, Some(3), Some(40), Some(77)][next(4) as usize];
            rows.push((format!("p{patient}"), code, age));
        }
    }
    let diagnosis = diagnosis_batch(&rows);
    let ctx = context_over(diagnosis.clone());
    let plain = SessionContext::new();
    let table = MemTable::try_new(schema::diagnosis(), vec![vec![diagnosis]]).expect("table");
    plain
        .register_table("diagnosis", Arc::new(table))
        .expect("register");

    // With a count of rows (per-patient partials to carry) and with patients alone
    // (where the plan bounds the rows without aggregating them per patient first).
    let questions = [
        (
            "SELECT code, age_at_diagnosis, COUNT(*) AS n, COUNT(DISTINCT pid) AS patients \
             FROM diagnosis GROUP BY code, age_at_diagnosis",
            "SUM(n)",
        ),
        (
            "SELECT code, age_at_diagnosis, COUNT(DISTINCT pid) AS patients \
             FROM diagnosis GROUP BY code, age_at_diagnosis",
            "COUNT(DISTINCT pid)",
        ),
    ];
    for (sql, first_number) in questions {
        let plan = Planner::new().plan(sql, &ctx.state()).await.expect("valid");
        let site = plan
            .bounded_site_plan(
                &SiteFacts::default(),
                Concentration::TopShare(Dominance::default()),
                Some(Bounding::default()),
            )
            .expect("site plan");
        let batches = ctx
            .execute_logical_plan(site.plan)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let bounded = key_rows(&concat_batches(&batches[0].schema(), &batches).expect("concat"));

        let expected_sql = format!(
            "WITH per AS (SELECT code, age_at_diagnosis AS age, pid, \
                CASE WHEN COUNT(*) > 1 THEN 1 ELSE COUNT(*) END AS n \
                FROM diagnosis GROUP BY code, age_at_diagnosis, pid), \
            ranked AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY pid \
                ORDER BY code ASC NULLS LAST, age ASC NULLS LAST) AS r FROM per) \
            SELECT code, age, {first_number}, COUNT(DISTINCT pid) AS patients \
            FROM ranked WHERE r = 1 GROUP BY code, age"
        );
        let batches = plain
            .sql(&expected_sql)
            .await
            .expect("plain plan")
            .collect()
            .await
            .expect("plain run");
        let expected = key_rows(&concat_batches(&batches[0].schema(), &batches).expect("concat"));
        assert_eq!(
            bounded, expected,
            "{sql}: (code, age, first count, patients)"
        );
        let patients: i64 = bounded.iter().map(|row| row.3).sum();
        assert_eq!(patients, 300, "{sql}: every patient counts in one group");
    }
}

/// `(code, age, the first two Int64 columns)` per row, sorted: the keys, then the count
/// of rows and of patients.
fn key_rows(batch: &RecordBatch) -> Vec<(String, Option<i32>, i64, i64)> {
    let numbers: Vec<usize> = (2..batch.num_columns())
        .filter(|&c| batch.column(c).data_type() == &DataType::Int64)
        .take(2)
        .collect();
    let codes = batch.column(0).as_string::<i32>();
    let ages = batch
        .column(1)
        .as_primitive::<arrow::datatypes::Int32Type>();
    let number = |c: usize, row: usize| batch.column(c).as_primitive::<Int64Type>().value(row);
    let mut rows: Vec<_> = (0..batch.num_rows())
        .map(|row| {
            (
                codes.value(row).to_string(),
                ages.is_valid(row).then(|| ages.value(row)),
                number(numbers[0], row),
                number(numbers[1], row),
            )
        })
        .collect();
    rows.sort();
    rows
}
