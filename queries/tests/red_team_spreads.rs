//! Red team of the spreads (VAR_SAMP, VAR_POP, STDDEV_SAMP, STDDEV_POP) at the barrier.

use arrow::array::AsArray;
use arrow::datatypes::{Float64Type, Int64Type};
use ern_queries::Rule;
use ern_queries::catalog::planning_state;

use crate::common::{assert_all_accepted, assert_all_refused, validate};
use crate::variance::{Diagnosis, Patient, Rows, released, site_output};

/// One patient per diagnosis row: `(onset, diagnosis)` ages.
fn site_with(ages: &[(i32, i32)]) -> Rows {
    let mut rows = Rows::default();
    for (i, (onset, diagnosis)) in ages.iter().enumerate() {
        let pid = format!("p{i}");
        rows.patients.push(Patient {
            pid: pid.clone(),
            birth_year: 1970,
            birth_month: Some(1),
            sex: "female",
        });
        rows.diagnoses.push(Diagnosis {
            pid,
            code: "ORPHA:154",
            onset: Some(*onset),
            diagnosis: Some(*diagnosis),
        });
    }
    rows
}

/// Six patients with onset 30 (x = 0), six diagnosed at 40 (y = 0), and the target with
/// onset 50 and diagnosis 63: of all patients, only the target has x·y ≠ 0.
fn covariance_site() -> Rows {
    let mut ages: Vec<(i32, i32)> = (50..56).map(|d| (30, d)).collect();
    ages.extend((10..16).map(|o| (o, 40)));
    ages.push((50, 63));
    site_with(&ages)
}

const COVARIANCE: &str = "SELECT COUNT(*) AS n, SUM(d.age_at_onset - 30) AS sx, SUM(d.age_at_diagnosis - 40) AS sy, VAR_POP(d.age_at_onset - 30) AS vx, VAR_POP(d.age_at_diagnosis - 40) AS vy, VAR_POP(d.age_at_onset + d.age_at_diagnosis - 70) AS vs FROM diagnosis d";

/// `VAR(x)`, `VAR(y)` and `VAR(x + y)` of one group give `Σxy` (a covariance), here
/// the target's product alone: each variance passes k and the dominance rule, so only
/// the argument's shape can stop it. Plain DataFusion shows the arithmetic; ern refuses
/// the spread of a combination of two values.
#[tokio::test]
async fn a_covariance_from_three_variances_is_refused() {
    let site = covariance_site();
    let pooled = site
        .context()
        .sql(COVARIANCE)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let batch = &pooled[0];
    let n = batch.column(0).as_primitive::<Int64Type>().value(0) as f64;
    let sx = batch.column(1).as_primitive::<Int64Type>().value(0) as f64;
    let sy = batch.column(2).as_primitive::<Int64Type>().value(0) as f64;
    let v = |i: usize| batch.column(i).as_primitive::<Float64Type>().value(0);
    let covariance = (v(5) - v(3) - v(4)) / 2.0;
    let products = n * (covariance + (sx / n) * (sy / n));
    assert_eq!(
        products.round(),
        460.0,
        "the target's (50 - 30) * (63 - 40)"
    );

    let state = planning_state().expect("planning");
    let refusal = validate(COVARIANCE, &state).await.expect_err("covariance");
    assert_eq!(refusal.rule, Rule::BarrierAggregates, "{refusal}");
    assert!(refusal.to_string().contains("one value"), "{refusal}");
    // The two single-column spreads are released as before.
    let single = "SELECT COUNT(*) AS n, VAR_POP(d.age_at_onset - 30) AS vx, VAR_POP(d.age_at_diagnosis - 40) AS vy FROM diagnosis d";
    let out = released(&site_output(single, &site).await, Some(5));
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
}

/// The combination moved into a subquery, a per-patient aggregate, a join, a second
/// read of the same table or a cast is still two values.
#[tokio::test]
async fn a_combination_of_values_is_refused_wherever_it_is_made() {
    let state = planning_state().expect("planning");
    assert_all_refused(
        &[
            "SELECT VAR_POP(p.birth_year + p.birth_month) FROM patient p",
            "SELECT VAR_POP(CAST(p.birth_year AS BIGINT) - CAST(p.birth_month AS BIGINT)) FROM patient p",
            "SELECT VAR_POP(x.s) FROM (SELECT pid, age_at_onset + age_at_diagnosis AS s FROM diagnosis) x",
            "SELECT STDDEV(x.s) FROM (SELECT pid, SUM(age_at_onset + age_at_diagnosis) AS s FROM diagnosis GROUP BY pid) x",
            "SELECT VAR_SAMP(x.a + x.b) FROM (SELECT pid, SUM(age_at_onset) AS a, SUM(age_at_diagnosis) AS b FROM diagnosis GROUP BY pid) x",
            "SELECT VAR_POP(x.hi - x.lo) FROM (SELECT pid, MAX(age_at_onset) AS hi, MIN(age_at_onset) AS lo FROM diagnosis GROUP BY pid) x",
            "SELECT VAR_POP(x.n - x.s) FROM (SELECT pid, COUNT(*) AS n, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x",
            "SELECT VAR_POP(d1.age_at_onset - d2.age_at_onset) FROM diagnosis d1 JOIN diagnosis d2 ON d1.pid = d2.pid",
            "SELECT STDDEV_POP(p.birth_year + d.age_at_onset) FROM patient p JOIN diagnosis d ON d.pid = p.pid",
            "WITH x AS (SELECT pid, age_at_onset AS a FROM diagnosis) SELECT VAR_POP(x1.a - x2.a) FROM x x1 JOIN x x2 ON x1.pid = x2.pid",
            "SELECT VAR_POP(y.t) FROM (SELECT x.pid, x.a - x.b AS t FROM (SELECT pid, age_at_onset AS a, age_at_diagnosis AS b FROM diagnosis) x) y",
        ],
        &state,
        Rule::BarrierAggregates,
        Some("one value"),
    )
    .await;
}

/// One value, shifted or scaled by literals, renamed, cast, or aggregated per patient,
/// is still a spread's argument; SUM and AVG of combinations stay allowed (their
/// differences are sums again).
#[tokio::test]
async fn one_value_shifted_scaled_or_aggregated_per_patient_is_accepted() {
    let state = planning_state().expect("planning");
    assert_all_accepted(
        &[
            "SELECT VAR_POP(3 * d.age_at_onset - 20) FROM diagnosis d",
            "SELECT VAR_POP(d.age_at_onset + d.age_at_onset) FROM diagnosis d",
            "SELECT STDDEV(CAST(p.birth_year AS BIGINT) - 1900) FROM patient p",
            "SELECT VAR_SAMP(x.a) FROM (SELECT pid, age_at_onset AS a FROM diagnosis) x",
            "SELECT VAR_SAMP(x.s), VAR_SAMP(x.n) FROM (SELECT pid, SUM(age_at_onset) AS s, COUNT(*) AS n FROM diagnosis GROUP BY pid) x",
            "SELECT p.sex, VAR_POP(p.birth_year), VAR_POP(d.age_at_onset), SUM(p.birth_year + d.age_at_onset) FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex",
        ],
        &state,
    )
    .await;
}

/// Patients with one diagnosis row each, and the target with two (onsets 40 and 47).
fn join_back_site() -> Rows {
    let mut rows = site_with(&(0..12).map(|i| (20 + i, 30 + i)).collect::<Vec<_>>());
    rows.diagnoses.push(Diagnosis {
        pid: "p11".into(),
        code: "ORPHA:154",
        onset: Some(40),
        diagnosis: Some(50),
    });
    rows.diagnoses[11].onset = Some(47);
    rows
}

const JOIN_BACK: &str = "SELECT COUNT(*) AS n, SUM(x.s) AS a, SUM(d.age_at_onset) AS b, VAR_POP(x.s) AS va, VAR_POP(d.age_at_onset) AS vb FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x JOIN diagnosis d ON d.pid = x.pid";

/// A per-patient value joined back to the patient's rows is repeated once per row, so
/// it is weighted by the patient's number of rows: `SUM(x.s) - SUM(d.v)` is the sum of
/// `(rows - 1) · s` over patients, zero for every patient with one row, and so the
/// target's own total alone (with the spreads, both her values). Each aggregate passed k
/// and dominance; a per-patient value joined to rows that can repeat a patient is not
/// plain.
#[tokio::test]
async fn a_per_patient_value_joined_back_to_the_patients_rows_is_refused() {
    let site = join_back_site();
    let pooled = site
        .context()
        .sql(JOIN_BACK)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let batch = &pooled[0];
    let total = |i: usize| batch.column(i).as_primitive::<Int64Type>().value(0);
    assert_eq!(total(1) - total(2), 87, "the target's 40 + 47");
    let state = planning_state().expect("planning");
    for sql in [
        JOIN_BACK,
        "SELECT SUM(x.s) AS a, SUM(d.age_at_onset) AS b FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x JOIN diagnosis d ON d.pid = x.pid",
        "SELECT SUM(x.m) AS a, SUM(d.age_at_onset) AS b FROM (SELECT pid, MAX(age_at_onset) AS m FROM diagnosis GROUP BY pid) x JOIN diagnosis d ON d.pid = x.pid",
        "SELECT SUM(x.n) AS a, COUNT(*) AS b FROM (SELECT pid, COUNT(*) AS n FROM diagnosis GROUP BY pid) x JOIN diagnosis d ON d.pid = x.pid",
        "SELECT VAR_POP(y.t) FROM (SELECT d.pid, SUM(x.s) AS t FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x JOIN diagnosis d ON d.pid = x.pid GROUP BY d.pid) y",
        "SELECT AVG(x.s) FROM diagnosis d JOIN (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x ON d.pid = x.pid",
        "SELECT SUM(x.s) AS a, SUM(d.age_at_onset) AS b FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x, diagnosis d WHERE x.pid = d.pid",
        "SELECT SUM(x.s) AS a, SUM(d.age_at_onset) AS b FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x JOIN patient p ON p.pid = x.pid JOIN diagnosis d ON d.pid = p.pid",
    ] {
        let Err(refusal) = validate(sql, &state).await else {
            panic!("{sql}: accepted");
        };
        assert_eq!(refusal.rule, Rule::BarrierAggregates, "{sql}: {refusal}");
    }
    // Joined to one row per patient (the patient table, another per-patient grouping),
    // or only counted, it stays usable.
    assert_all_accepted(
        &[
            "SELECT p.sex, SUM(x.s) AS a, VAR_POP(x.s) AS v FROM patient p JOIN (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x ON p.pid = x.pid GROUP BY p.sex",
            "SELECT SUM(x.s) AS a, SUM(y.n) AS b FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x JOIN (SELECT pid, COUNT(*) AS n FROM phenotype GROUP BY pid) y ON x.pid = y.pid",
            "SELECT x.s, COUNT(DISTINCT d.pid) AS n FROM (SELECT pid, SUM(age_at_onset) AS s FROM diagnosis GROUP BY pid) x JOIN diagnosis d ON d.pid = x.pid GROUP BY x.s",
        ],
        &state,
    )
    .await;
}

/// Values at the largest plain magnitude (about 2^32, squares near 2^64): the sum of
/// squares and the merge stay exact, with no overflow a value could trigger (a failure
/// that depends on data would be an oracle).
#[tokio::test]
async fn a_spread_at_the_largest_plain_magnitude_is_exact() {
    let mut site = site_with(&[(1, 1); 7]);
    for (patient, year) in site.patients.iter_mut().zip(2094..) {
        patient.birth_year = year;
    }
    let sql = "SELECT VAR_POP(p.birth_year * 2045222) AS v, VAR_SAMP(p.birth_year * -2045222) AS s FROM patient p";
    let state = planning_state().expect("planning");
    let query = validate(sql, &state).await.expect("valid");
    let out = released(&site_output(sql, &site).await, Some(5));
    let merged = query.merge(out).await.expect("merge");
    let batch = &merged[0];
    let v = |i: usize| batch.column(i).as_primitive::<Float64Type>().value(0);
    // 2094..=2100: population variance 4, sample variance 14/3, times the scale squared.
    let scale = 2_045_222_f64 * 2_045_222_f64;
    assert_eq!(v(0), 4.0 * scale);
    assert!(
        (v(1) - 14.0 / 3.0 * scale).abs() <= 1e-12 * v(1),
        "{}",
        v(1)
    );
}

/// Under secure aggregation the sum of squares is a 64-bit integer: a value of at most
/// 2^16 in magnitude goes into the vector, one beyond it runs per site, and says so.
#[tokio::test]
async fn a_secure_spread_stops_at_the_square_bound() {
    let state = planning_state().expect("planning");
    let secure = validate(
        "SELECT p.sex, VAR_POP(p.birth_year * 31) AS v FROM patient p GROUP BY p.sex",
        &state,
    )
    .await
    .expect("valid");
    assert_eq!(secure.mode().name(), "secure", "{:?}", secure.mode());
    let per_site = validate(
        "SELECT p.sex, VAR_POP(p.birth_year * 32) AS v FROM patient p GROUP BY p.sex",
        &state,
    )
    .await
    .expect("valid");
    assert_eq!(per_site.mode().name(), "per-site", "{:?}", per_site.mode());
}

/// A spread counts the rows with a value (its first partial): beside COUNT(*) it would
/// tell how many rows lack one. One patient without a value (NULL onset) among k with
/// one drops the group, as behind SUM; none, or k of them, do not.
#[tokio::test]
async fn one_patient_lacking_the_value_drops_the_spread() {
    let ages: Vec<(i32, i32)> = (20..27).map(|a| (a, a + 5)).collect();
    let mut site = site_with(&ages);
    let sql = "SELECT COUNT(*) AS n, VAR_POP(d.age_at_onset) AS v FROM diagnosis d";
    let kept = |site: &Rows| {
        let site = site.clone();
        async move {
            released(&site_output(sql, &site).await, Some(5))
                .iter()
                .map(|b| b.num_rows())
                .sum::<usize>()
        }
    };
    assert_eq!(kept(&site).await, 1, "nobody lacks a value");
    site.diagnoses[0].onset = None;
    assert_eq!(kept(&site).await, 0, "one patient lacks a value");
    for diagnosis in site.diagnoses.iter_mut().take(5) {
        diagnosis.onset = None;
    }
    let mut more = site_with(&(30..37).map(|a| (a, a)).collect::<Vec<_>>());
    for (i, patient) in more.patients.iter_mut().enumerate() {
        patient.pid = format!("q{i}");
    }
    for (i, diagnosis) in more.diagnoses.iter_mut().enumerate() {
        diagnosis.pid = format!("q{i}");
    }
    site.patients.extend(more.patients);
    site.diagnoses.extend(more.diagnoses);
    assert_eq!(kept(&site).await, 1, "five patients lack a value");
}
