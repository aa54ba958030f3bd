//! Split and merge against an independent computation: each site runs its site plan on
//! its own data; the merged table must equal the same SQL run by plain DataFusion over
//! all sites' rows pooled (with k = 1, so nothing is suppressed).

use std::sync::Arc;

use crate::common;
use arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray, new_null_array};
use arrow::compute::{cast, concat_batches};
use arrow::datatypes::DataType;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use ern_queries::catalog::{planning_context, planning_state};

use common::{site_plan, validate};
use ern_queries::schema;
use ern_queries::split::is_hidden;

/// A small deterministic generator (64-bit LCG), so the test needs no data files.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % bound
    }
}

struct SiteData {
    patient: RecordBatch,
    diagnosis: RecordBatch,
}

fn site_data(prefix: &str, patients: usize, seed: u64) -> SiteData {
    let mut rng = Lcg(seed);
    let pids: Vec<String> = (0..patients).map(|i| format!("{prefix}-{i}")).collect();
    let sexes = ["female", "male", "unknown"];
    let patient_schema = schema::patient();
    let n = patients;
    let patient_columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(&pids)),
        Arc::new(Int32Array::from_iter_values(
            (0..n).map(|_| 1930 + rng.next(90) as i32),
        )),
        new_null_array(&DataType::Int32, n),
        Arc::new(StringArray::from_iter_values(
            (0..n).map(|_| sexes[rng.next(3) as usize]),
        )),
        new_null_array(&DataType::Utf8, n),
        new_null_array(&DataType::Date32, n),
        new_null_array(&DataType::Date32, n),
        new_null_array(&DataType::Boolean, n),
        Arc::new(StringArray::from_iter_values((0..n).map(|_| "yes"))),
        new_null_array(&DataType::Boolean, n),
    ];
    let patient = RecordBatch::try_new(patient_schema, patient_columns).expect("patient batch");
    let codes = [
        "ORPHA:154",
        "ORPHA:130",
        "ORPHA:217569",
        "ORPHA:324",
        "ICD10:I42.1",
    ];
    let (mut d_pid, mut d_code, mut d_age) = (Vec::new(), Vec::new(), Vec::new());
    for pid in &pids {
        for _ in 0..=rng.next(3) {
            d_pid.push(pid.clone());
            d_code.push(codes[rng.next(codes.len() as u64) as usize]);
            d_age.push((rng.next(10) > 0).then(|| rng.next(80) as i32));
        }
    }
    let m = d_pid.len();
    let systems: Vec<&str> = d_code
        .iter()
        .map(|c| c.split(':').next().unwrap_or("ORPHA"))
        .collect();
    let diagnosis_columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(&d_pid)),
        Arc::new(StringArray::from_iter_values(&d_code)),
        Arc::new(StringArray::from_iter_values(&systems)),
        Arc::new(StringArray::from_iter_values((0..m).map(|_| "confirmed"))),
        new_null_array(&DataType::Utf8, m),
        new_null_array(&DataType::Date32, m),
        new_null_array(&DataType::Date32, m),
        Arc::new(Int32Array::from(
            d_age.iter().map(|a| a.map(|v| v / 2)).collect::<Vec<_>>(),
        )),
        Arc::new(Int32Array::from(d_age)),
    ];
    let diagnosis =
        RecordBatch::try_new(schema::diagnosis(), diagnosis_columns).expect("diagnosis batch");
    SiteData { patient, diagnosis }
}

fn context_with(patient: Vec<RecordBatch>, diagnosis: Vec<RecordBatch>) -> SessionContext {
    let ctx = planning_context().expect("context");
    for (name, table_schema, batches) in [
        ("patient", schema::patient(), patient),
        ("diagnosis", schema::diagnosis(), diagnosis),
    ] {
        ctx.deregister_table(name).expect("deregister");
        ctx.register_table(
            name,
            Arc::new(MemTable::try_new(table_schema, vec![batches]).expect("table")),
        )
        .expect("register");
    }
    ctx
}

/// Rows as strings, floats rounded to 6 places, so AVG(x) and SUM(x)/COUNT(x) compare.
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let batch = concat_batches(&first.schema(), batches).expect("concat");
    let mut out = vec![Vec::new(); batch.num_rows()];
    for column in batch.columns() {
        let text = if column.data_type() == &DataType::Float64 {
            let rounded = arrow::compute::kernels::numeric::mul(
                column,
                &arrow::array::Float64Array::new_scalar(1e6),
            )
            .expect("scale");
            let rounded = cast(&rounded, &DataType::Int64).expect("round");
            cast(&rounded, &DataType::Utf8).expect("text")
        } else {
            cast(column, &DataType::Utf8).expect("text")
        };
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings")
            .clone();
        for (row, value) in out.iter_mut().enumerate() {
            value.push(if text.is_null(row) {
                "NULL".into()
            } else {
                text.value(row).to_string()
            });
        }
    }
    out
}

use arrow::array::Array;

const QUERIES: &[(&str, bool)] = &[
    (
        "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex",
        false,
    ),
    (
        "SELECT d.code, AVG(d.age_at_diagnosis) AS mean_age, COUNT(*) AS n FROM diagnosis d GROUP BY d.code HAVING COUNT(*) > 5 ORDER BY n DESC, d.code LIMIT 3",
        true,
    ),
    (
        "SELECT COUNT(*) AS patients, SUM(birth_year) AS s, AVG(birth_year) AS a FROM patient",
        false,
    ),
    (
        "SELECT p.sex, COUNT(DISTINCT p.pid) * 100.0 / 500 AS pct, SUM(p.birth_year) / COUNT(*) AS mean_year FROM patient p GROUP BY p.sex",
        false,
    ),
    (
        "SELECT t.codes, COUNT(*) AS patients FROM (SELECT pid, COUNT(DISTINCT code) AS codes FROM diagnosis GROUP BY pid) t GROUP BY t.codes ORDER BY t.codes",
        true,
    ),
    (
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients, AVG(d.age_at_onset) AS onset FROM patient p JOIN diagnosis d ON p.pid = d.pid WHERE d.code_system = 'ORPHA' GROUP BY (p.birth_year / 10) * 10 ORDER BY decade",
        true,
    ),
];

#[tokio::test]
async fn merged_partials_equal_the_pooled_computation() {
    let sites = [
        site_data("a", 300, 1),
        site_data("b", 200, 2),
        site_data("c", 50, 3),
    ];
    let pooled = context_with(
        sites.iter().map(|s| s.patient.clone()).collect(),
        sites.iter().map(|s| s.diagnosis.clone()).collect(),
    );
    let planning = planning_state().expect("planning");
    for (sql, ordered) in QUERIES {
        let mut released = Vec::new();
        for site in &sites {
            let ctx = context_with(vec![site.patient.clone()], vec![site.diagnosis.clone()]);
            let query = validate(sql, &ctx.state())
                .await
                .unwrap_or_else(|r| panic!("{sql}: {r}"));
            let plan = site_plan(&query, &ern_queries::SiteFacts::default()).expect("site plan");
            for batch in ctx
                .execute_logical_plan(plan)
                .await
                .expect("run")
                .collect()
                .await
                .expect("collect")
            {
                let schema = batch.schema();
                let visible: Vec<usize> = (0..batch.num_columns())
                    .filter(|&i| !is_hidden(schema.field(i).name()))
                    .collect();
                assert!(visible.len() < batch.num_columns(), "no hidden count");
                released.push(batch.project(&visible).expect("project"));
            }
        }
        let query = validate(sql, &planning).await.expect("valid");
        assert_eq!(
            query.released_width().expect("width"),
            released.first().map_or(0, RecordBatch::num_columns),
            "{sql}"
        );
        let merged = query
            .merge(released)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let expected = pooled
            .sql(sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("pooled");
        let (mut got, mut want) = (rows(&merged), rows(&expected));
        if !ordered {
            got.sort();
            want.sort();
        }
        assert!(!want.is_empty(), "{sql}: the pooled result is empty");
        assert_eq!(got, want, "{sql}");
        assert_eq!(
            merged[0]
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>(),
            expected[0]
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>(),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn a_total_no_site_released_is_not_reported_as_zero() {
    let planning = planning_state().expect("planning");
    let query = validate("SELECT COUNT(*) AS patients FROM patient", &planning)
        .await
        .expect("valid");
    let merged = query.merge(Vec::new()).await.expect("merge");
    assert_eq!(merged.iter().map(RecordBatch::num_rows).sum::<usize>(), 0);
}

#[tokio::test]
async fn partials_of_the_wrong_shape_are_rejected() {
    let planning = planning_state().expect("planning");
    let query = validate(
        "SELECT sex, COUNT(*) AS n FROM patient GROUP BY sex",
        &planning,
    )
    .await
    .expect("valid");
    let wrong =
        RecordBatch::try_from_iter(vec![("x", Arc::new(Int32Array::from(vec![1])) as ArrayRef)])
            .expect("batch");
    assert!(query.merge(vec![wrong]).await.is_err());
}

/// Queries, and whether knowing that `patient` holds one row per patient makes their
/// site plan cheaper: one aggregation instead of a per-patient one first, or plain counts
/// instead of distinct ones.
const UNIQUENESS_QUERIES: &[(&str, bool)] = &[
    (
        "SELECT p.sex, COUNT(*) AS patients FROM patient p GROUP BY p.sex",
        true,
    ),
    (
        "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients, AVG(p.birth_year) AS y FROM patient p WHERE p.birth_year > 1950 GROUP BY p.sex",
        true,
    ),
    (
        "SELECT q.decade, COUNT(DISTINCT q.id) AS patients FROM (SELECT p.pid AS id, (p.birth_year / 10) * 10 AS decade FROM patient p) q GROUP BY q.decade",
        true,
    ),
    (
        "SELECT p.sex, COUNT(*) AS patients, SUM(x.n) AS diagnoses FROM patient p JOIN (SELECT d.pid, COUNT(*) AS n FROM diagnosis d GROUP BY d.pid) x ON p.pid = x.pid GROUP BY p.sex",
        true,
    ),
    // One row per patient by its GROUP BY pid, with or without facts: no cheaper with them.
    (
        "SELECT t.codes, COUNT(*) AS patients FROM (SELECT pid, COUNT(DISTINCT code) AS codes FROM diagnosis GROUP BY pid) t GROUP BY t.codes",
        false,
    ),
    (
        "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY p.sex",
        false,
    ),
    (
        "SELECT d.code, COUNT(*) AS n FROM diagnosis d GROUP BY d.code",
        false,
    ),
    (
        "SELECT t.code, COUNT(DISTINCT t.pid) AS patients FROM (SELECT pid, code FROM diagnosis GROUP BY pid, code) t GROUP BY t.code",
        false,
    ),
];

async fn site_rows(
    ctx: &SessionContext,
    plan: datafusion::logical_expr::LogicalPlan,
) -> Vec<Vec<String>> {
    let batches = ctx
        .execute_logical_plan(plan)
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    let mut rows = rows(&batches);
    rows.sort();
    rows
}

#[tokio::test]
async fn counting_rows_where_pids_are_unique_gives_the_distinct_counts() {
    let site = site_data("u", 400, 7);
    let ctx = context_with(vec![site.patient.clone()], vec![site.diagnosis.clone()]);
    let facts = ern_queries::SiteFacts::with_unique_pid_tables(["patient"]);
    for (sql, one_row_per_patient) in UNIQUENESS_QUERIES {
        let query = validate(sql, &ctx.state())
            .await
            .unwrap_or_else(|r| panic!("{sql}: {r}"));
        let plain = site_plan(&query, &ern_queries::SiteFacts::default()).expect("plan");
        let with_facts = site_plan(&query, &facts).expect("plan");
        // Aggregations, and distinct counts (a hash set of pids per group) in them.
        let cost = |plan: &datafusion::logical_expr::LogicalPlan| {
            let text = plan.display_indent().to_string();
            (
                text.matches("Aggregate:").count(),
                text.matches("count(DISTINCT").count(),
            )
        };
        let (facts_cost, plain_cost) = (cost(&with_facts), cost(&plain));
        assert!(
            facts_cost.0 <= plain_cost.0 && facts_cost.1 <= plain_cost.1,
            "{sql}"
        );
        assert_eq!(
            facts_cost != plain_cost,
            *one_row_per_patient,
            "{sql}: {}",
            with_facts.display_indent()
        );
        let (expected, got) = (
            site_rows(&ctx, plain).await,
            site_rows(&ctx, with_facts).await,
        );
        assert!(!expected.is_empty(), "{sql}");
        assert_eq!(got, expected, "{sql}: hidden or released counts differ");
    }
}

#[tokio::test]
async fn a_released_patient_count_and_the_hidden_one_are_computed_once_per_patient_row() {
    let planning = planning_state().expect("planning");
    let query = validate(
        "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex",
        &planning,
    )
    .await
    .expect("valid");
    let plan = site_plan(&query, &ern_queries::SiteFacts::default()).expect("plan");
    let text = plan.display_indent().to_string();
    assert!(
        !text.contains("DISTINCT"),
        "no hash set of pids per group: {text}"
    );
    let top = text
        .lines()
        .find(|line| line.trim_start().starts_with("Aggregate:"))
        .expect("an aggregate");
    assert_eq!(top.matches("count(").count(), 1, "{text}");
    let names: Vec<String> = plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["__g0", "__g1", "__p0", "__patients_0"]);
}

/// The hidden count behind `AVG(x)` counts distinct patients with a non-zero value, not
/// rows: a patient with four diagnoses is one patient, and a patient whose onset is at
/// age 0 adds nothing to the sum, so does not count towards k behind it.
#[tokio::test]
async fn hidden_counts_behind_an_argument_count_patients_not_rows() {
    let site = site_data("h", 300, 11);
    let ctx = context_with(vec![site.patient.clone()], vec![site.diagnosis.clone()]);
    let sql = "SELECT p.sex, AVG(d.age_at_onset) AS onset FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY p.sex";
    let query = validate(sql, &ctx.state()).await.expect("valid");
    let expected = ctx
        .sql("SELECT p.sex, COUNT(DISTINCT p.pid), COUNT(DISTINCT CASE WHEN d.age_at_onset IS NOT NULL AND d.age_at_onset <> 0 THEN p.pid END), COUNT(d.age_at_onset) FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY p.sex")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let mut expected = rows(&expected);
    expected.sort();
    for facts in [
        ern_queries::SiteFacts::default(),
        ern_queries::SiteFacts::with_unique_pid_tables(["patient"]),
    ] {
        let plan = site_plan(&query, &facts).expect("plan");
        let got = site_rows(&ctx, plan).await;
        // sex, sum, count, then the hidden counts: everyone, and those with a value.
        let hidden: Vec<Vec<String>> = got
            .iter()
            .map(|r| vec![r[0].clone(), r[3].clone(), r[4].clone(), r[2].clone()])
            .collect();
        assert_eq!(hidden, expected);
        for row in &expected {
            assert_ne!(
                row[2], row[3],
                "the fixture must give patients several rows"
            );
        }
    }
}

#[tokio::test]
async fn a_count_over_patients_reads_no_pid_where_a_row_is_a_patient() {
    let ctx = planning_context().expect("context");
    let query = validate(
        "SELECT p.sex, COUNT(*) AS patients FROM patient p GROUP BY p.sex",
        &ctx.state(),
    )
    .await
    .expect("valid");
    let facts = ern_queries::SiteFacts::with_unique_pid_tables(["patient"]);
    let plan = site_plan(&query, &facts).expect("plan");
    let optimized = ctx.state().optimize(&plan).expect("optimize");
    let text = optimized.display_indent().to_string();
    assert!(
        text.contains("TableScan: patient projection=[sex]"),
        "{text}"
    );
}
