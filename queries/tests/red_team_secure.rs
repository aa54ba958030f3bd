//! Red team: the researcher-facing and coordinator-side release logic of secure
//! aggregation (DESIGN.md, "Secure aggregation: k applies to the network total").
//!
//! The attacker is an untrusted researcher: writes SQL, picks target sites; stewards
//! approve what they see. Each test below is one attack, with the defence it expects.
//! Attacks the defence holds against stay as regression tests; an attack that succeeds
//! keeps a test asserting the SAFE behaviour, marked `#[ignore = "red team: …"]`.
//!
//! Data-dependent attacks run the real pieces end to end on hand-made in-memory stores:
//! the question's plan (`Planner::plan`), its secure site plan executed by DataFusion at
//! every "site", `SecureLayout::vector` on each site's output, the wrapping sum the
//! coordinator forms, `SecureLayout::release` with k and the concentration limit a node
//! with the default policy signs, and `QueryPlan::merge` on the released totals.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Date32Array, Int32Array, RecordBatch, StringArray};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::SessionContext;
use ern_queries::catalog::{planning_state, session_config};
use ern_queries::domain::{AggregationMode, SecureDomain};
use ern_queries::secure::SecureRelease;
use ern_queries::{Planner, QueryPlan, SiteFacts, reference, schema};

/// k of the default node policy.
const K: u64 = 5;

/// The concentration limit a node with the default (2, 85 %) dominance rule signs:
/// 0.85² / 2 (node/service/src/round.rs).
const LIMIT: f64 = 0.36125;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// One patient of a hand-made store, with one diagnosis row (ORPHA:154, confirmed).
#[derive(Clone)]
struct Person {
    pid: String,
    sex: &'static str,
    birth_year: i32,
    /// `age_at_diagnosis` of the diagnosis row (NULL when `None`).
    age: Option<i32>,
}

fn person(pid: &str, sex: &'static str, birth_year: i32, age: Option<i32>) -> Person {
    Person {
        pid: pid.to_string(),
        sex,
        birth_year,
        age,
    }
}

/// `n` patients of one sex, ages all `age`, pids `<prefix>0…`.
fn people(prefix: &str, n: usize, sex: &'static str, age: Option<i32>) -> Vec<Person> {
    (0..n)
        .map(|i| person(&format!("{prefix}{i}"), sex, 1950 + i as i32, age))
        .collect()
}

fn text(values: Vec<Option<String>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn texts(n: usize, value: Option<&str>) -> ArrayRef {
    text(vec![value.map(str::to_string); n])
}

fn ints(values: Vec<Option<i32>>) -> ArrayRef {
    Arc::new(Int32Array::from(values))
}

fn nulls_of_dates(n: usize) -> ArrayRef {
    Arc::new(Date32Array::from(vec![None; n]))
}

fn nulls_of_bools(n: usize) -> ArrayRef {
    Arc::new(BooleanArray::from(vec![None; n]))
}

/// One site's store: `patient` and `diagnosis` from `people`, the other patient tables
/// empty, the shipped reference tables beside them.
fn store(people: &[Person]) -> SessionContext {
    let n = people.len();
    let pids: Vec<Option<String>> = people.iter().map(|p| Some(p.pid.clone())).collect();
    let patient = RecordBatch::try_new(
        schema::patient(),
        vec![
            text(pids.clone()),
            ints(people.iter().map(|p| Some(p.birth_year)).collect()),
            ints(vec![None; n]),
            text(people.iter().map(|p| Some(p.sex.to_string())).collect()),
            texts(n, Some("alive")),
            nulls_of_dates(n),
            nulls_of_dates(n),
            nulls_of_bools(n),
            texts(n, Some("yes")),
            nulls_of_bools(n),
        ],
    )
    .expect("patient");
    let diagnosis = RecordBatch::try_new(
        schema::diagnosis(),
        vec![
            text(pids),
            texts(n, Some("ORPHA:154")),
            texts(n, Some("ORPHA")),
            texts(n, Some("confirmed")),
            texts(n, None),
            nulls_of_dates(n),
            nulls_of_dates(n),
            ints(vec![None; n]),
            ints(people.iter().map(|p| p.age).collect()),
        ],
    )
    .expect("diagnosis");
    let ctx = SessionContext::new_with_config(session_config());
    for (name, batch) in [
        ("patient", patient),
        ("diagnosis", diagnosis),
        (
            "genetic_finding",
            RecordBatch::new_empty(schema::genetic_finding()),
        ),
        ("phenotype", RecordBatch::new_empty(schema::phenotype())),
        ("orpha_term", reference::orpha_term_batch().expect("terms")),
        (
            "orpha_closure",
            reference::orpha_closure_batch().expect("closure"),
        ),
    ] {
        ctx.register_batch(name, batch).expect("register");
    }
    ctx
}

/// The question's plan as the coordinator derives it (empty tables).
async fn plan(sql: &str) -> QueryPlan {
    Planner::new()
        .plan(sql, &planning_state().expect("planning state"))
        .await
        .unwrap_or_else(|refusal| panic!("{sql}: refused: {refusal}"))
}

fn domain_of(query: &QueryPlan) -> Option<&SecureDomain> {
    query.mode().domain()
}

/// `refused` or the mode's name.
async fn verdict(sql: &str) -> String {
    match Planner::new()
        .plan(sql, &planning_state().expect("planning state"))
        .await
    {
        Ok(query) => query.mode().name().to_string(),
        Err(_) => "refused".to_string(),
    }
}

/// One site's plain vector for `sql`: the secure site plan run on the site's store.
async fn vector_at(sql: &str, site: &SessionContext) -> Vec<u64> {
    let query = Planner::new()
        .plan(sql, &site.state())
        .await
        .unwrap_or_else(|refusal| panic!("{sql}: refused: {refusal}"));
    assert_eq!(query.mode().name(), "secure", "{sql}: {:?}", query.mode());
    let site_plan = query
        .secure_site_plan(&SiteFacts::default())
        .expect("secure site plan");
    let batches = site
        .execute_logical_plan(site_plan.plan)
        .await
        .expect("run")
        .collect()
        .await
        .expect("collect");
    let vector = query
        .secure_layout()
        .expect("layout")
        .vector(&batches)
        .expect("vector");
    assert_eq!(vector.out_of_domain, 0, "{sql}: groups outside the domain");
    vector.values
}

/// The coordinator's running sum of the sites' vectors (masks cancel; plain here).
fn wrapping_sum(vectors: &[Vec<u64>]) -> Vec<u64> {
    let mut total = vec![0u64; vectors[0].len()];
    for vector in vectors {
        for (t, v) in total.iter_mut().zip(vector) {
            *t = t.wrapping_add(*v);
        }
    }
    total
}

/// A secure round of `sql` over `sites`: what the coordinator releases and the
/// researcher's table merged from it.
async fn secure_round(sql: &str, sites: &[SessionContext]) -> (SecureRelease, Vec<Vec<String>>) {
    let mut vectors = Vec::new();
    for site in sites {
        vectors.push(vector_at(sql, site).await);
    }
    let query = plan(sql).await;
    let layout = query.secure_layout().expect("layout");
    let release = layout
        .release(&wrapping_sum(&vectors), K, LIMIT)
        .expect("release");
    let merged = query
        .merge(vec![release.batch.clone()])
        .await
        .expect("merge");
    (release, rows(&merged))
}

/// Every row of `batches` as text cells.
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        ScalarValue::try_from_array(c.as_ref(), row)
                            .expect("cell")
                            .to_string()
                    })
                    .collect(),
            );
        }
    }
    out
}

/// The released value of the row whose first cell is `key`, column `column`.
fn cell(table: &[Vec<String>], key: &str, column: usize) -> Option<i64> {
    table
        .iter()
        .find(|r| r[0] == key)
        .and_then(|r| r[column].parse::<f64>().ok())
        .map(|v| v.round() as i64)
}

// ---------------------------------------------------------------------------------------
// 1. Public domains: a key value outside the derived domain is silently dropped
// ---------------------------------------------------------------------------------------

/// Keys an attacker shapes so that the data might take a value outside the domain the
/// plan proves: division and modulo by zero, negative operands, narrowing and unsigned
/// casts, Int8 wrapping, overflow past i64, comparison bounds off by one, reversed
/// BETWEEN, OR and NOT, IN lists with NULL, outer joins of every kind, filters above and
/// below a per-patient aggregation.
///
/// Defence: each is either per-site (no domain) or its domain holds every group the
/// barrier forms on a store of extremes (the node would otherwise drop the group: data
/// loss, not a disclosure, since a dropped group's hidden counts go with it).
const DOMAIN_PROBES: &[&str] = &[
    "SELECT p.birth_year / 0 AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY p.birth_year / 0",
    "SELECT p.birth_year % 0 AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY p.birth_year % 0",
    "SELECT (p.birth_year - 2000) / 7 AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY (p.birth_year - 2000) / 7",
    "SELECT (p.birth_year - 2000) % 7 AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY (p.birth_year - 2000) % 7",
    "SELECT (p.birth_year - 2000) / (p.birth_year - 2000) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY (p.birth_year - 2000) / (p.birth_year - 2000)",
    "SELECT -p.birth_year AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY -p.birth_year",
    "SELECT CAST(p.birth_year AS TINYINT) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_year AS TINYINT)",
    "SELECT CAST(p.birth_month AS TINYINT) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_month AS TINYINT)",
    "SELECT CAST(p.birth_month AS TINYINT) * CAST(20 AS TINYINT) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_month AS TINYINT) * CAST(20 AS TINYINT)",
    "SELECT CAST(p.birth_month AS TINYINT) + CAST(120 AS TINYINT) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_month AS TINYINT) + CAST(120 AS TINYINT)",
    "SELECT CAST(p.birth_month AS TINYINT UNSIGNED) - CAST(5 AS TINYINT UNSIGNED) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_month AS TINYINT UNSIGNED) - CAST(5 AS TINYINT UNSIGNED)",
    "SELECT CAST(p.birth_year - 2000 AS INT UNSIGNED) AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_year - 2000 AS INT UNSIGNED)",
    "SELECT CAST(p.birth_year AS BIGINT) * 4611686018427387904 AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY CAST(p.birth_year AS BIGINT) * 4611686018427387904",
    "SELECT p.birth_year + 9223372036854775807 AS y, COUNT(DISTINCT p.pid) FROM patient p GROUP BY p.birth_year + 9223372036854775807",
    "SELECT p.birth_year * p.birth_year AS y, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year BETWEEN 1990 AND 2000 GROUP BY p.birth_year * p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year > 1999 GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year < 1881 GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE 2100 <= p.birth_year GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year BETWEEN 2000 AND 1990 GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year NOT BETWEEN 1900 AND 2099 GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE NOT (p.birth_year < 1990) GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year < 1900 OR p.birth_year > 2050 GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year = 1999.5 GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year > '1999' GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year IN (1880, 2100, NULL) GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year NOT IN (1880, 2100) GROUP BY p.birth_year",
    "SELECT p.birth_year, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year IN (1880, 5000000000) GROUP BY p.birth_year",
    "SELECT p.birth_month, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_month >= 1 GROUP BY p.birth_month",
    "SELECT p.sex, COUNT(DISTINCT p.pid) FROM patient p WHERE p.sex = 'MALE' GROUP BY p.sex",
    "SELECT p.sex, COUNT(DISTINCT p.pid) FROM patient p WHERE p.sex IN ('male', NULL) GROUP BY p.sex",
    "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) FROM patient p WHERE NOT p.undiagnosed GROUP BY p.undiagnosed",
    "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) FROM patient p WHERE p.undiagnosed IS NOT TRUE GROUP BY p.undiagnosed",
    "SELECT d.status, COUNT(DISTINCT p.pid) FROM patient p LEFT JOIN diagnosis d ON d.pid = p.pid AND d.status = 'confirmed' GROUP BY d.status",
    "SELECT p.sex, COUNT(DISTINCT d.pid) FROM patient p RIGHT JOIN diagnosis d ON d.pid = p.pid AND p.sex = 'male' GROUP BY p.sex",
    "SELECT d.code, COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON d.pid = p.pid LEFT JOIN orpha_term t ON t.orpha_code = d.code GROUP BY d.code",
    "SELECT t.orpha_code, COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON d.pid = p.pid LEFT JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.orpha_code",
    "SELECT t.orpha_code, COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON d.pid = p.pid FULL JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.orpha_code",
    "SELECT d.code, COUNT(DISTINCT d.pid) FROM diagnosis d JOIN orpha_closure c ON c.descendant = d.code WHERE c.ancestor = 'ORPHA:167848' GROUP BY d.code",
    "SELECT d.code, COUNT(DISTINCT d.pid) FROM diagnosis d JOIN orpha_term t ON t.orpha_code = d.code OR d.code = 'ICD10:Q87.4' GROUP BY d.code",
    "SELECT x.m, COUNT(DISTINCT x.pid) FROM (SELECT d.pid, MAX(d.age_at_diagnosis) AS m FROM diagnosis d GROUP BY d.pid) x GROUP BY x.m",
    "SELECT x.m, COUNT(DISTINCT x.pid) FROM (SELECT d.pid, MAX(d.age_at_diagnosis) AS m FROM diagnosis d WHERE d.age_at_diagnosis < 10 GROUP BY d.pid) x GROUP BY x.m",
    "SELECT x.m, COUNT(DISTINCT x.pid) FROM (SELECT d.pid, MAX(d.age_at_diagnosis) - MIN(d.age_at_onset) AS m FROM diagnosis d GROUP BY d.pid) x GROUP BY x.m",
    "SELECT x.n, COUNT(DISTINCT x.pid) FROM (SELECT d.pid, COUNT(*) AS n FROM diagnosis d GROUP BY d.pid) x WHERE x.n BETWEEN 1 AND 3 GROUP BY x.n",
    "SELECT x.n, COUNT(DISTINCT x.pid) FROM (SELECT d.pid, SUM(d.age_at_diagnosis) AS n FROM diagnosis d GROUP BY d.pid) x GROUP BY x.n",
    "SELECT d.age_at_onset - d.age_at_diagnosis AS delay, COUNT(DISTINCT d.pid) FROM diagnosis d GROUP BY d.age_at_onset - d.age_at_diagnosis",
    "SELECT d.age_at_onset, COUNT(DISTINCT d.pid) FROM diagnosis d WHERE d.age_at_onset BETWEEN -5 AND 3 GROUP BY d.age_at_onset",
    "SELECT d.age_at_onset, COUNT(DISTINCT d.pid) FROM diagnosis d WHERE d.age_at_onset = d.age_at_diagnosis GROUP BY d.age_at_onset",
];

/// A store of extremes: every declared bound, NULLs, values at the edges of the
/// filters above, codes in and out of the reference.
fn extreme_store() -> SessionContext {
    let years = [1880, 2100, 1990, 1999, 2000, 1881, 2050, 1955];
    let months = [
        None,
        Some(1),
        Some(12),
        Some(6),
        None,
        Some(3),
        Some(7),
        None,
    ];
    let sexes = [
        "female",
        "male",
        "undetermined",
        "unknown",
        "male",
        "female",
        "male",
        "female",
    ];
    let undiagnosed = [
        None,
        Some(true),
        Some(false),
        Some(true),
        None,
        Some(false),
        None,
        Some(true),
    ];
    let n = years.len();
    let pids: Vec<Option<String>> = (0..n).map(|i| Some(format!("p{i}"))).collect();
    let patient = RecordBatch::try_new(
        schema::patient(),
        vec![
            text(pids.clone()),
            ints(years.iter().map(|y| Some(*y)).collect()),
            ints(months.to_vec()),
            text(sexes.iter().map(|s| Some(s.to_string())).collect()),
            texts(n, Some("alive")),
            nulls_of_dates(n),
            nulls_of_dates(n),
            Arc::new(BooleanArray::from(undiagnosed.to_vec())),
            texts(n, Some("yes")),
            nulls_of_bools(n),
        ],
    )
    .expect("patient");
    // Diagnoses: two for p0, none for p7 (outer joins), codes in and out of Orphanet.
    let dpids = ["p0", "p0", "p1", "p2", "p3", "p4", "p5", "p6", "p9"];
    let codes = [
        "ORPHA:167848",
        "ICD10:Q87.4",
        "ORPHA:154",
        "OMIM:192600",
        "ORPHA:217569",
        "ORPHA:999999999",
        "ORPHA:154",
        "ORPHA:247",
        "ORPHA:154",
    ];
    let statuses = [
        "confirmed",
        "provisional",
        "differential",
        "refuted",
        "confirmed",
        "confirmed",
        "confirmed",
        "provisional",
        "confirmed",
    ];
    let onset = [
        Some(0),
        Some(150),
        None,
        Some(3),
        Some(150),
        Some(0),
        Some(9),
        Some(2),
        None,
    ];
    let diagnosis_age = [
        Some(150),
        Some(0),
        Some(7),
        None,
        Some(150),
        Some(0),
        Some(9),
        Some(3),
        Some(4),
    ];
    let m = dpids.len();
    let diagnosis = RecordBatch::try_new(
        schema::diagnosis(),
        vec![
            text(dpids.iter().map(|p| Some(p.to_string())).collect()),
            text(codes.iter().map(|c| Some(c.to_string())).collect()),
            text(
                codes
                    .iter()
                    .map(|c| Some(c.split(':').next().unwrap_or("").to_string()))
                    .collect(),
            ),
            text(statuses.iter().map(|s| Some(s.to_string())).collect()),
            texts(m, None),
            nulls_of_dates(m),
            nulls_of_dates(m),
            ints(onset.to_vec()),
            ints(diagnosis_age.to_vec()),
        ],
    )
    .expect("diagnosis");
    let ctx = SessionContext::new_with_config(session_config());
    for (name, batch) in [
        ("patient", patient),
        ("diagnosis", diagnosis),
        (
            "genetic_finding",
            RecordBatch::new_empty(schema::genetic_finding()),
        ),
        ("phenotype", RecordBatch::new_empty(schema::phenotype())),
        ("orpha_term", reference::orpha_term_batch().expect("terms")),
        (
            "orpha_closure",
            reference::orpha_closure_batch().expect("closure"),
        ),
    ] {
        ctx.register_batch(name, batch).expect("register");
    }
    ctx
}

/// Attack: shape GROUP BY keys whose values on real data can leave the domain the plan
/// proves (see [`DOMAIN_PROBES`]).
///
/// Defence: a probe is refused, runs per site, or every group its barrier forms on the
/// store of extremes lies in its domain.
#[tokio::test]
async fn domain_probes_are_per_site_or_hold_every_group() {
    let ctx = extreme_store();
    let state = ctx.state();
    let mut secure = Vec::new();
    for sql in DOMAIN_PROBES {
        let Ok(query) = Planner::new().plan(sql, &state).await else {
            continue;
        };
        let Some(domain) = domain_of(&query) else {
            continue;
        };
        secure.push(*sql);
        let barrier = query.barrier();
        let groups = LogicalPlanBuilder::from(barrier.input.as_ref().clone())
            .aggregate(
                barrier.group_exprs.clone(),
                Vec::<datafusion::logical_expr::Expr>::new(),
            )
            .and_then(LogicalPlanBuilder::build)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let batches = ctx
            .execute_logical_plan(groups)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for batch in &batches {
            let cells = domain
                .cells_of_rows(batch.columns(), batch.num_rows())
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for (row, cell) in cells.iter().enumerate() {
                assert!(
                    cell.is_some(),
                    "{sql}: group {:?} lies outside {:?}",
                    rows(std::slice::from_ref(batch))[row],
                    domain.describe()
                );
            }
        }
    }
    assert!(secure.len() >= 20, "only {} probes secure", secure.len());
}

/// Attack: keys that wrap, fail or go NULL on the node (division or modulo by a value
/// that can be zero, a narrowing or unsigned cast, Int8 arithmetic that wraps, i64
/// overflow) and a BETWEEN with its bounds reversed.
///
/// Defence: none of them gets a domain: refused (division by a value that can be zero
/// is rule 7's) or per site.
#[tokio::test]
async fn keys_that_can_wrap_fail_or_go_null_run_per_site() {
    for sql in [
        DOMAIN_PROBES[0],
        DOMAIN_PROBES[1],
        DOMAIN_PROBES[4],
        DOMAIN_PROBES[6],
        DOMAIN_PROBES[8],
        DOMAIN_PROBES[9],
        DOMAIN_PROBES[10],
        DOMAIN_PROBES[11],
        DOMAIN_PROBES[12],
        DOMAIN_PROBES[13],
        DOMAIN_PROBES[18],
    ] {
        let verdict = verdict(sql).await;
        assert!(
            verdict == "per-site" || verdict == "refused",
            "{sql}: {verdict}"
        );
    }
}

/// Attack: comparison bounds off by one (`>` vs `>=`, literal on the left), a NOT
/// around a comparison, an OR, a float or text literal, an IN list with NULL.
///
/// Defence: strict bounds exclude their literal and keep the next value; anything not
/// recognised narrows nothing (the declared range stays).
#[tokio::test]
async fn comparison_bounds_are_exact_and_unknown_filters_narrow_nothing() {
    let years = |sql: &'static str| async move {
        let query = plan(sql).await;
        let domain = domain_of(&query)
            .unwrap_or_else(|| panic!("{sql}: per site"))
            .clone();
        let values: Vec<Option<i64>> = domain.keys[0]
            .values
            .iter()
            .map(|v| match v {
                ScalarValue::Int32(v) => v.map(i64::from),
                ScalarValue::Int64(v) => *v,
                other => panic!("{other:?}"),
            })
            .collect();
        values
    };
    let gt = years(DOMAIN_PROBES[15]).await;
    assert_eq!(gt.first(), Some(&Some(2000)));
    assert_eq!(gt.last(), Some(&Some(2100)));
    let lt = years(DOMAIN_PROBES[16]).await;
    assert_eq!(lt, vec![Some(1880)]);
    let le_left = years(DOMAIN_PROBES[17]).await;
    assert_eq!(le_left, vec![Some(2100)]);
    // NOT, OR, a fraction, text and NOT IN: the whole declared range.
    for sql in [
        DOMAIN_PROBES[19],
        DOMAIN_PROBES[20],
        DOMAIN_PROBES[21],
        DOMAIN_PROBES[22],
        DOMAIN_PROBES[23],
        DOMAIN_PROBES[25],
    ] {
        let Ok(query) = Planner::new()
            .plan(sql, &planning_state().expect("state"))
            .await
        else {
            continue;
        };
        let Some(domain) = domain_of(&query) else {
            continue;
        };
        assert_eq!(domain.keys[0].values.len(), 221, "{sql}");
    }
    // IN with NULL: the list proves nothing (the NULL cannot match, but the list is
    // left as a whole).
    let with_null = years(DOMAIN_PROBES[24]).await;
    assert!(with_null.len() >= 2, "{with_null:?}");
    assert!(with_null.contains(&Some(1880)) && with_null.contains(&Some(2100)));
}

/// Attack: an outer join whose nullable side's key takes NULL for every unmatched row.
///
/// Defence: the key of the nullable side of LEFT and RIGHT joins has NULL in its
/// domain (a FULL join to the reference is refused by rule 3); a preserved side's key
/// is not narrowed by the join's condition.
#[tokio::test]
async fn outer_joins_keep_null_and_prove_nothing_from_their_condition() {
    assert_eq!(verdict(DOMAIN_PROBES[36]).await, "refused");
    for sql in [DOMAIN_PROBES[32], DOMAIN_PROBES[33], DOMAIN_PROBES[35]] {
        let query = plan(sql).await;
        let domain = domain_of(&query).unwrap_or_else(|| panic!("{sql}: per site"));
        assert!(
            domain.keys[0].values[0].is_null(),
            "{sql}: {:?}",
            domain.describe()
        );
    }
    // The preserved side of a LEFT JOIN to the reference is free text: per site.
    let query = plan(DOMAIN_PROBES[34]).await;
    assert_eq!(query.mode().name(), "per-site");
    // An OR in the join condition is no equi-join proof (rule 3 refuses it outright).
    assert_ne!(verdict(DOMAIN_PROBES[38]).await, "secure");
}

// ---------------------------------------------------------------------------------------
// 2. The moments rule: concentration on network totals
// ---------------------------------------------------------------------------------------

/// Attack (analytic): find contributions where the two largest hold more than 85 % of
/// the absolute total, yet the concentration (sum of squares over the squared sum of
/// absolute values) is at most 0.36125, so the cell is released.
///
/// Defence: none exists. Σx² ≥ x₁² + x₂² ≥ (x₁ + x₂)² / 2 > (0.85·S)² / 2 = 0.36125·S².
/// Checked exhaustively over small integer patients (signed values too); the converse
/// does not hold, and it need not (the rule over-suppresses: one patient with 61 % and
/// the rest tiny is dropped although the top two hold under 85 %).
#[test]
fn the_moments_bound_implies_the_top_two_rule() {
    let mut checked = 0;
    // Patients: two large ones (a, b) and `rest` patients of value `r` (signs vary).
    for a in -40i64..=40 {
        for b in -40i64..=40 {
            for r in -3i64..=3 {
                for rest in 0..=12i64 {
                    let mut values = vec![a, b];
                    values.extend(std::iter::repeat_n(r, rest as usize));
                    let absolute: i64 = values.iter().map(|v| v.abs()).sum();
                    if absolute == 0 {
                        continue;
                    }
                    let squares: i64 = values.iter().map(|v| v * v).sum();
                    let mut magnitudes: Vec<i64> = values.iter().map(|v| v.abs()).collect();
                    magnitudes.sort_unstable_by(|x, y| y.cmp(x));
                    let top_two = magnitudes[0] + magnitudes.get(1).copied().unwrap_or(0);
                    let share = top_two as f64 / absolute as f64;
                    let concentration = squares as f64 / (absolute as f64 * absolute as f64);
                    if share > 0.85 {
                        checked += 1;
                        assert!(
                            concentration > LIMIT,
                            "{values:?}: top two {share}, concentration {concentration}"
                        );
                    }
                }
            }
        }
    }
    assert!(checked > 10_000, "{checked}");
}

/// Attack: one patient dominating a SUM across sites: at the edge of the rule, two
/// patients of 43 and 15 of 1 (top two 85.1 %) spread over three sites, then two of 42
/// and 16 of 1 (84 %).
///
/// Defence: the first cell is dropped on the network totals, the second released with
/// its sum.
#[tokio::test]
async fn a_dominated_sum_is_dropped_on_network_totals() {
    let sql = "SELECT p.sex, SUM(d.age_at_diagnosis) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let mut a = people("a", 5, "female", Some(1));
    a.push(person("big1", "female", 1970, Some(43)));
    let mut b = people("b", 5, "female", Some(1));
    b.push(person("big2", "female", 1971, Some(43)));
    let c = people("c", 5, "female", Some(1));
    let (release, table) = secure_round(sql, &[store(&a), store(&b), store(&c)]).await;
    assert_eq!(release.cells_released, 0, "{table:?}");
    assert!(table.is_empty(), "{table:?}");

    let mut a = people("a", 5, "female", Some(1));
    a.push(person("big1", "female", 1970, Some(42)));
    let mut b = people("b", 5, "female", Some(1));
    b.push(person("big2", "female", 1971, Some(42)));
    let c = people("c", 6, "female", Some(1));
    let (_, table) = secure_round(sql, &[store(&a), store(&b), store(&c)]).await;
    assert_eq!(cell(&table, "female", 1), Some(100), "{table:?}");
}

/// Attack: scale a SUM's argument by a literal (rule 4 allows `* literal` up to a
/// magnitude of 2^32 per row) so that the sums of squared contributions, carried as
/// u64 modulo 2^64 like every slot of the vector, wrap when the coordinator adds the
/// sites' vectors. One patient of 150 and four of 8, 1, 1, 1 over three sites: the top
/// two hold 98 % of the total, the true concentration is 0.87, but Σx² of
/// `age * 28_600_000` is 1.8459e19 > 2^64 and wraps to 1.2e16, a concentration of
/// 0.0006. The released sum divided by the literal is 161, almost all of it the one
/// patient's 150.
///
/// Expected defence: the cell is dropped, like the unscaled question.
///
/// BROKEN: `SecureLayout::release` (queries/src/secure.rs, the `Slot::Squares` arm and
/// the concentration check below it) reads the wrapped u64 total as the sum of
/// squares, and `integral` saturates a site's own square sum at u64::MAX; nothing
/// bounds Σx² below 2^64. Fix: keep Σx² from wrapping (scale the moments down on the
/// node, e.g. squares in units of 2^32 with the absolutes in units of 2^16, or carry
/// them in two u64 limbs), or refuse secure mode when (magnitude bound)² times the most
/// patients of a network could reach 2^63, and make `integral` refuse a value ≥ 2^63
/// instead of saturating.
#[tokio::test]
async fn a_scaled_sum_wraps_its_squares_and_escapes_the_dominance_rule() {
    let sql = "SELECT p.sex, SUM(d.age_at_diagnosis * 28600000) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let plain = "SELECT p.sex, SUM(d.age_at_diagnosis) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let sites = || {
        [
            store(&[
                person("t", "female", 1950, Some(150)),
                person("a1", "female", 1960, Some(1)),
            ]),
            store(&[
                person("b1", "female", 1961, Some(8)),
                person("b2", "female", 1962, Some(1)),
            ]),
            store(&[person("c1", "female", 1963, Some(1))]),
        ]
    };
    // The unscaled question is dropped: the defence on plain values.
    let (release, _) = secure_round(plain, &sites()).await;
    assert_eq!(release.cells_released, 0);
    // The scaled one must be dropped too.
    let (release, table) = secure_round(sql, &sites()).await;
    assert_eq!(
        release.cells_released,
        0,
        "released {table:?}: {} / 28600000 = the dominated sum",
        cell(&table, "female", 1).unwrap_or(0)
    );
}

/// Attack: shift a SUM's argument by a constant so that no patient dominates the
/// shifted values, then undo the shift after the merge with an expression over
/// aggregates: `SUM(x - 75) + 75 * COUNT(x)` = `SUM(x)`. Patients 150, 1, 1, 1, 1: the
/// plain SUM is dropped (top two 98 %), the shifted contributions 75, -74, -74, -74, -74
/// have concentration 0.2, and the researcher reads SUM(x) = 154 off one question.
///
/// Expected defence: the shifted question is dropped where the plain one is.
///
/// BROKEN (by design of the rule, per site as well as secure): the dominance rule
/// (DESIGN.md rule 6, `split::summed_arguments` / `dominance_aggregates`) measures the
/// argument as written, while rule 4 lets a literal be added to it and COUNT(x) is
/// released beside it, so the rule is defeated by any offset. Fix: measure dominance
/// on each column term of the (linear) argument without its literal offset (for
/// `x - 75` the contributions of `x`), or refuse literal offsets inside SUM/AVG
/// arguments (the researcher can shift the total after the merge instead).
#[tokio::test]
async fn a_shifted_sum_hides_its_dominant_patient() {
    let plain = "SELECT p.sex, SUM(d.age_at_diagnosis) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let shifted = "SELECT p.sex, SUM(d.age_at_diagnosis - 75) + 75 * COUNT(d.age_at_diagnosis) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let sites = || {
        [
            store(&[
                person("t", "female", 1950, Some(150)),
                person("a1", "female", 1960, Some(1)),
            ]),
            store(&[
                person("b1", "female", 1961, Some(1)),
                person("b2", "female", 1962, Some(1)),
            ]),
            store(&[person("c1", "female", 1963, Some(1))]),
        ]
    };
    let (release, _) = secure_round(plain, &sites()).await;
    assert_eq!(release.cells_released, 0, "the plain sum is dominated");
    let (_, table) = secure_round(shifted, &sites()).await;
    assert_eq!(
        cell(&table, "female", 1),
        None,
        "the shifted question released SUM(x) = {table:?}"
    );
}

/// Attack: make the contributions of the other patients cancel (`SUM(x - c)` where the
/// others sit symmetrically around c) so that the non-zero patients count reaches k
/// while one patient is left with a value.
///
/// Defence (holds for the case the rule targets): patients whose contribution is
/// exactly zero do not count toward k, so `SUM(x - 1)` over four patients of 1 and one
/// of 150 is dropped (one non-zero patient).
#[tokio::test]
async fn patients_contributing_zero_do_not_count_toward_k() {
    let sql = "SELECT p.sex, SUM(d.age_at_diagnosis - 1) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let a = vec![
        person("t", "female", 1950, Some(150)),
        person("a1", "female", 1960, Some(1)),
    ];
    let b = people("b", 2, "female", Some(1));
    let c = people("c", 2, "female", Some(1));
    let (release, table) = secure_round(sql, &[store(&a), store(&b), store(&c)]).await;
    assert_eq!(release.cells_released, 0, "{table:?}");
}

// ---------------------------------------------------------------------------------------
// 3. k on network totals: hidden counts, lacking counts
// ---------------------------------------------------------------------------------------

/// Attack: COUNT(*) beside COUNT(x) in one secure question, so that their difference
/// reads how many patients lack x, with one such patient in the network.
///
/// Defence: the hidden count of patients lacking x must be none or at least k on the
/// network total; the cell with one lacking patient is dropped, a cell with none is
/// released, and a cell with k lacking patients spread over three sites is released.
#[tokio::test]
async fn count_star_minus_count_x_needs_none_or_k_lacking() {
    let sql = "SELECT p.sex, COUNT(*) AS all_rows, COUNT(d.age_at_diagnosis) AS with_age FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let mut a = people("a", 3, "female", Some(30));
    a.push(person("lone", "female", 1970, None));
    a.extend(people("m", 6, "male", Some(30)));
    let b = people("b", 3, "female", Some(30));
    let c = people("c", 3, "female", Some(30));
    let (_, table) = secure_round(sql, &[store(&a), store(&b), store(&c)]).await;
    assert_eq!(cell(&table, "female", 1), None, "{table:?}");
    assert_eq!(cell(&table, "male", 1), Some(6), "{table:?}");

    // k lacking patients over three sites, none reaching k at its own site.
    let mut a = people("a", 3, "female", Some(30));
    a.extend(people("la", 2, "female", None));
    let mut b = people("b", 3, "female", Some(30));
    b.extend(people("lb", 2, "female", None));
    let mut c = people("c", 3, "female", Some(30));
    c.push(person("lc", "female", 1970, None));
    let (_, table) = secure_round(sql, &[store(&a), store(&b), store(&c)]).await;
    assert_eq!(cell(&table, "female", 1), Some(14), "{table:?}");
    assert_eq!(cell(&table, "female", 2), Some(9), "{table:?}");
}

/// Attack: a cell whose network total is below k at every site and overall, and a
/// cell with no patients at all: can the researcher tell them apart?
///
/// Defence: neither is released, and the merged table is the same (the coordinator's
/// count of suppressed cells never reaches the researcher: coordinator/src/rounds.rs
/// logs only the cells released).
#[tokio::test]
async fn a_small_cell_and_an_empty_cell_look_the_same() {
    let sql = "SELECT p.sex, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY p.sex";
    let one = |prefix: &str| {
        let mut site = people(prefix, 3, "female", None);
        site.push(person(&format!("{prefix}u"), "unknown", 1970, None));
        site
    };
    let (_, with_unknown) =
        secure_round(sql, &[store(&one("a")), store(&one("b")), store(&one("c"))]).await;
    let none = |prefix: &str| people(prefix, 3, "female", None);
    let (_, without) = secure_round(
        sql,
        &[store(&none("a")), store(&none("b")), store(&none("c"))],
    )
    .await;
    assert_eq!(with_unknown, without);
    assert_eq!(
        with_unknown,
        vec![vec!["female".to_string(), "9".to_string()]]
    );
}

/// Attack: a total without GROUP BY below k, asked with HAVING and an expression that
/// would turn a hidden small total into a visible row (`COUNT(*) - 100`, `HAVING
/// COUNT(*) < 5`).
///
/// Defence: the single cell is dropped before the merge; HAVING, ORDER BY, LIMIT and
/// expressions over aggregates see released totals only.
#[tokio::test]
async fn expressions_having_order_and_limit_see_released_totals_only() {
    let small = |prefix: &str| people(prefix, 1, "female", None);
    let sites = || [store(&small("a")), store(&small("b")), store(&small("c"))];
    for sql in [
        "SELECT COUNT(*) - 100 AS n FROM patient p",
        "SELECT COUNT(*) AS n FROM patient p HAVING COUNT(*) < 5",
        "SELECT p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex HAVING COUNT(*) < 5",
        "SELECT p.sex, COUNT(*) * 0 + 1 AS n FROM patient p GROUP BY p.sex ORDER BY COUNT(*) LIMIT 1",
    ] {
        let (release, table) = secure_round(sql, &sites()).await;
        assert_eq!(release.cells_released, 0, "{sql}");
        assert!(table.is_empty(), "{sql}: {table:?}");
    }
    // Beside a released cell, HAVING and LIMIT keep to the released ones.
    let mixed = |prefix: &str| {
        let mut site = people(prefix, 2, "female", None);
        site.push(person(&format!("{prefix}m"), "male", 1970, None));
        site
    };
    let sql =
        "SELECT p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex ORDER BY COUNT(*) ASC LIMIT 1";
    let (_, table) = secure_round(
        sql,
        &[store(&mixed("a")), store(&mixed("b")), store(&mixed("c"))],
    )
    .await;
    assert_eq!(table, vec![vec!["female".to_string(), "6".to_string()]]);
}

/// Attack: a patient counted in several cells (two diagnoses), or a patient whose rows
/// in one cell repeat (two rows, one patient): does the hidden count count rows?
///
/// Defence: the hidden count is of distinct patients per cell: four patients with two
/// rows each in one cell stay four (dropped at k = 5).
#[tokio::test]
async fn repeated_rows_of_one_patient_count_once() {
    let sql = "SELECT p.sex, COUNT(*) AS rows_n FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    // Each patient twice in `patient`'s join: the store gives every person one
    // diagnosis, so give each site the same person twice in `diagnosis` by duplicating
    // the person (same pid).
    let twice = |prefix: &str, n: usize| {
        let mut site = Vec::new();
        for p in people(prefix, n, "female", Some(1)) {
            site.push(p.clone());
            site.push(p);
        }
        site
    };
    let sites = [
        store(&twice("a", 2)),
        store(&twice("b", 1)),
        store(&twice("c", 1)),
    ];
    let (release, table) = secure_round(sql, &sites).await;
    assert_eq!(release.cells_released, 0, "{table:?}");
}

// ---------------------------------------------------------------------------------------
// 4. Differencing
// ---------------------------------------------------------------------------------------

/// Attack: a secure total and the same question grouped by sex: the total minus the
/// released cells is the sum of the suppressed ones; with one small cell it is that
/// cell's count. Five women, five men and one patient of unknown sex over three sites:
/// the total 11 and the cells 5 and 5 are released, so the unknown-sex cell holds 1.
///
/// Expected defence: a researcher cannot read a count between 1 and k-1.
///
/// BROKEN (design: DESIGN.md has no complementary suppression, per site or secure;
/// rule 6 applies k cell by cell, and secure aggregation makes the complement exact
/// because every released cell is a network total over the same participants). Fix:
/// complementary suppression at the coordinator is impossible across questions; the
/// design's remedy is noise (DESIGN.md "Differential privacy"), or a per-study record
/// at the coordinator of released marginals that refuses a question whose cells, with
/// earlier releases of the same study, sum to a small complement.
#[tokio::test]
#[ignore = "known limit with [privacy] off (the default; DESIGN.md: k is per cell, no complementary suppression): a total minus its released cells reads a suppressed cell; with noise on every cell is noised and charged"]
async fn a_total_minus_its_released_cells_reads_a_small_cell() {
    let total = "SELECT COUNT(DISTINCT p.pid) AS n FROM patient p";
    let by_sex = "SELECT p.sex, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY p.sex";
    let sites = || {
        let mut a = people("af", 2, "female", None);
        a.extend(people("am", 2, "male", None));
        let mut b = people("bf", 2, "female", None);
        b.extend(people("bm", 2, "male", None));
        b.push(person("lone", "unknown", 1990, None));
        let mut c = people("cf", 1, "female", None);
        c.extend(people("cm", 1, "male", None));
        [store(&a), store(&b), store(&c)]
    };
    let (_, whole) = secure_round(total, &sites()).await;
    let (_, cells) = secure_round(by_sex, &sites()).await;
    let whole: i64 = whole[0][0].parse().expect("total");
    let released: i64 = cells.iter().map(|r| r[1].parse::<i64>().expect("n")).sum();
    let complement = whole - released;
    assert!(
        complement == 0 || complement >= K as i64,
        "total {whole} - released {released} = {complement} patients in the suppressed cells"
    );
}

/// Attack: the same secure question twice, over {A, B, C, D} and over {A, B, C}
/// (a researcher picks target sites; each is a new question, approved by stewards who
/// see the same SQL): the difference of two released totals is site D's own cell.
///
/// Expected defence: no hospital's own numbers are learnt (DESIGN.md "What nobody
/// learns: any hospital's own numbers").
///
/// BROKEN: DESIGN.md only forbids re-running one question's round with fewer sites
/// ("the difference of two sums over different site sets is one site's vector") and
/// nodes recorded once-per-question by (study, SQL hash), where the study was then the
/// question's id, so a second question with the same SQL was
/// answered again. Node-level version: node/service/tests/red_team_release.rs. Fix:
/// see that file.
#[tokio::test]
#[ignore = "known limit with [privacy] off (the default): the same question over two site sets differs by one site's cells; with noise on, each share is noised and charged"]
async fn two_site_sets_differ_by_one_sites_cells() {
    let sql = "SELECT p.sex, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY p.sex";
    let a = people("a", 3, "female", None);
    let b = people("b", 2, "female", None);
    let c = people("c", 2, "female", None);
    let d = people("d", 2, "female", None);
    let (_, four) = secure_round(sql, &[store(&a), store(&b), store(&c), store(&d)]).await;
    let (_, three) = secure_round(sql, &[store(&a), store(&b), store(&c)]).await;
    let difference = cell(&four, "female", 1).unwrap_or(0) - cell(&three, "female", 1).unwrap_or(0);
    assert!(
        difference == 0 || difference >= K as i64,
        "site D's own count: {difference} ({four:?} vs {three:?})"
    );
}

// ---------------------------------------------------------------------------------------
// 5. Eligibility and vector size
// ---------------------------------------------------------------------------------------

/// Attack: a secure SUM over a value that is not a whole number (a float cast) or an
/// AVG whose partial sum is a float, to make `integral` fail or round on the node.
///
/// Defence: a SUM over a non-integer argument is refused (rule 4; the secure check
/// would make it per site), and an integer AVG's Float64 partial is integral.
#[tokio::test]
async fn fractional_sums_are_not_secure() {
    // A float argument is refused by rule 4 before any mode is derived.
    let fraction =
        "SELECT p.sex, SUM(CAST(p.birth_year AS DOUBLE)) AS s FROM patient p GROUP BY p.sex";
    assert_eq!(verdict(fraction).await, "refused");
    let sql = "SELECT p.sex, AVG(d.age_at_diagnosis) AS a FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let site = |prefix: &str| people(prefix, 2, "female", Some(7));
    let (_, table) = secure_round(
        sql,
        &[store(&site("a")), store(&site("b")), store(&site("c"))],
    )
    .await;
    assert_eq!(cell(&table, "female", 1), Some(7), "{table:?}");
}

/// Attack: inflate a question's domain past the vector cap so that it silently runs per
/// site (a researcher-chosen downgrade, the first step of the per-site differencing in
/// node/service/tests/red_team_release.rs).
///
/// Defence (what holds): the downgrade is visible in the report (mode and reason) for
/// the steward; the mode is a function of the SQL alone.
#[tokio::test]
async fn an_inflated_domain_runs_per_site_and_says_so() {
    let query = plan(
        "SELECT t.name, p.birth_year, p.sex, COUNT(DISTINCT p.pid) AS n FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.birth_year, p.sex",
    )
    .await;
    assert_eq!(query.mode().name(), "per-site");
    assert_eq!(query.report().mode, "per-site");
    assert!(query.report().per_site_reason.is_some());
    assert!(matches!(query.mode(), AggregationMode::PerSite { .. }));
}
