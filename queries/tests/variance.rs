//! VAR_SAMP, VAR_POP, STDDEV_SAMP and STDDEV_POP across sites (`ern_queries::spread`):
//! each "site" runs its site plan on its share of one pooled data set, the merge must
//! equal DataFusion's own statistics over the rows of the sites that released each group
//! (to 1e-9, relative), exactly even where the textbook formula loses every digit; and
//! the disclosure rules hold the spreads as they hold SUM.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Int32Array, RecordBatch, StringArray,
};
use arrow::compute::{cast, concat_batches, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use ern_queries::catalog::{planning_context, planning_state};
use ern_queries::domain::AggregationMode;
use ern_queries::split::{
    Concentration, HIDDEN_DOMINANCE, HIDDEN_LACKING, HIDDEN_PATIENTS, is_hidden,
};
use ern_queries::{Bounding, Dominance, Rule, SiteFacts, schema};

use crate::common::{site_plan, validate};

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

#[derive(Clone)]
pub(crate) struct Patient {
    pub(crate) pid: String,
    pub(crate) birth_year: i32,
    pub(crate) birth_month: Option<i32>,
    pub(crate) sex: &'static str,
}

#[derive(Clone)]
pub(crate) struct Diagnosis {
    pub(crate) pid: String,
    pub(crate) code: &'static str,
    pub(crate) onset: Option<i32>,
    pub(crate) diagnosis: Option<i32>,
}

/// One site's rows (or the pool's).
#[derive(Clone, Default)]
pub(crate) struct Rows {
    pub(crate) patients: Vec<Patient>,
    pub(crate) diagnoses: Vec<Diagnosis>,
}

const CODES: [&str; 4] = ["ORPHA:154", "ORPHA:130", "ORPHA:217569", "ORPHA:324"];

/// `n` patients (pids `<prefix>…`) with one to three diagnoses each; one patient of sex
/// `undetermined` when `lone` (a group of one).
fn rows(prefix: &str, n: usize, seed: u64, lone: bool) -> Rows {
    let mut rng = Lcg(seed);
    let sexes = ["female", "male", "unknown"];
    let mut out = Rows::default();
    for i in 0..n {
        let pid = format!("{prefix}{i}");
        let sex = if lone && i == 0 {
            "undetermined"
        } else {
            sexes[rng.next(3) as usize]
        };
        out.patients.push(Patient {
            pid: pid.clone(),
            birth_year: 1930 + rng.next(90) as i32,
            birth_month: (rng.next(8) > 0).then(|| 1 + rng.next(12) as i32),
            sex,
        });
        for _ in 0..=rng.next(3) {
            let onset = (rng.next(10) > 0).then(|| rng.next(70) as i32);
            out.diagnoses.push(Diagnosis {
                pid: pid.clone(),
                code: CODES[rng.next(CODES.len() as u64) as usize],
                onset,
                diagnosis: onset.map(|o| o + rng.next(25) as i32),
            });
        }
    }
    out
}

impl Rows {
    /// These rows and `other`'s.
    fn with(&self, other: &Rows) -> Rows {
        let mut out = self.clone();
        out.patients.extend(other.patients.iter().cloned());
        out.diagnoses.extend(other.diagnoses.iter().cloned());
        out
    }

    /// A planning context holding these rows (and ern's functions).
    pub(crate) fn context(&self) -> SessionContext {
        let n = self.patients.len();
        let text =
            |values: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
        let ints = |values: Vec<Option<i32>>| -> ArrayRef { Arc::new(Int32Array::from(values)) };
        let dates = |n: usize| -> ArrayRef { Arc::new(Date32Array::from(vec![None; n])) };
        let bools = |n: usize| -> ArrayRef { Arc::new(BooleanArray::from(vec![None; n])) };
        let patient = RecordBatch::try_new(
            schema::patient(),
            vec![
                text(self.patients.iter().map(|p| Some(p.pid.clone())).collect()),
                ints(self.patients.iter().map(|p| Some(p.birth_year)).collect()),
                ints(self.patients.iter().map(|p| p.birth_month).collect()),
                text(
                    self.patients
                        .iter()
                        .map(|p| Some(p.sex.to_string()))
                        .collect(),
                ),
                text(vec![None; n]),
                dates(n),
                dates(n),
                bools(n),
                text(vec![Some("yes".to_string()); n]),
                bools(n),
            ],
        )
        .expect("patient");
        let m = self.diagnoses.len();
        let diagnosis = RecordBatch::try_new(
            schema::diagnosis(),
            vec![
                text(self.diagnoses.iter().map(|d| Some(d.pid.clone())).collect()),
                text(
                    self.diagnoses
                        .iter()
                        .map(|d| Some(d.code.to_string()))
                        .collect(),
                ),
                text(vec![Some("ORPHA".to_string()); m]),
                text(vec![Some("confirmed".to_string()); m]),
                text(vec![None; m]),
                dates(m),
                dates(m),
                ints(self.diagnoses.iter().map(|d| d.onset).collect()),
                ints(self.diagnoses.iter().map(|d| d.diagnosis).collect()),
            ],
        )
        .expect("diagnosis");
        let ctx = planning_context().expect("context");
        for (name, batch) in [("patient", patient), ("diagnosis", diagnosis)] {
            ctx.deregister_table(name).expect("deregister");
            let table = MemTable::try_new(batch.schema(), vec![vec![batch]]).expect("table");
            ctx.register_table(name, Arc::new(table)).expect("register");
        }
        ctx
    }
}

/// Three sites of unequal size; the pool is their rows together.
fn three_sites() -> [Rows; 3] {
    [
        rows("a", 240, 1, true),
        rows("b", 130, 2, false),
        rows("c", 14, 3, false),
    ]
}

fn pool(sites: &[&Rows]) -> Rows {
    sites
        .iter()
        .fold(Rows::default(), |pooled, site| pooled.with(site))
}

/// Everything a site's plan outputs for `sql` (hidden columns included).
pub(crate) async fn site_output(sql: &str, site: &Rows) -> Vec<RecordBatch> {
    site_output_with(sql, site, &SiteFacts::default()).await
}

/// [`site_output`] for a site that verified `facts` (the patient table holding each pid
/// once gives the one-phase plan).
async fn site_output_with(sql: &str, site: &Rows, facts: &SiteFacts) -> Vec<RecordBatch> {
    let ctx = site.context();
    let query = validate(sql, &ctx.state())
        .await
        .unwrap_or_else(|refusal| panic!("{sql}: {refusal}"));
    let plan = site_plan(&query, facts).expect("site plan");
    ctx.execute_logical_plan(plan)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run")
}

/// What a node releases of its site plan's output under k and the default dominance
/// rule (as `ern_node`'s `suppress`): the groups whose patient counts reach k, whose
/// patients lacking a value are none or k, and whose shares stay under the limit;
/// without the hidden columns. Without k, every group (the merge's arithmetic alone).
pub(crate) fn released(batches: &[RecordBatch], k: Option<i64>) -> Vec<RecordBatch> {
    let limit = Dominance::default().max_share;
    let mut out = Vec::new();
    for batch in batches {
        let schema = batch.schema();
        let mut keep = vec![true; batch.num_rows()];
        for (index, field) in schema.fields().iter().enumerate() {
            let Some(k) = k else {
                break;
            };
            let name = field.name();
            let column = batch.column(index);
            for (row, keep) in keep.iter_mut().enumerate() {
                if name.starts_with(HIDDEN_PATIENTS) {
                    *keep &= column.as_primitive::<Int64Type>().value(row) >= k;
                } else if name.starts_with(HIDDEN_LACKING) {
                    let lacking = column.as_primitive::<Int64Type>().value(row);
                    *keep &= lacking == 0 || lacking >= k;
                } else if name.starts_with(HIDDEN_DOMINANCE) {
                    let shares = column.as_primitive::<Float64Type>();
                    *keep &= shares.is_null(row) || shares.value(row) <= limit;
                }
            }
        }
        let keep: BooleanArray = keep.into_iter().map(Some).collect();
        let kept = filter_record_batch(batch, &keep).expect("filter");
        let visible: Vec<usize> = (0..kept.num_columns())
            .filter(|&i| !is_hidden(schema.field(i).name()))
            .collect();
        out.push(kept.project(&visible).expect("project"));
    }
    out
}

/// One cell: text (group keys, counts) or a number compared to a relative 1e-9.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Text(Option<String>),
    Number(Option<f64>),
}

/// Rows of cells, sorted by their group keys.
pub(crate) fn table(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let batch = concat_batches(&first.schema(), batches).expect("concat");
    let mut out = vec![Vec::new(); batch.num_rows()];
    for column in batch.columns() {
        for (row, cells) in out.iter_mut().enumerate() {
            cells.push(if column.data_type() == &DataType::Float64 {
                let numbers = column.as_primitive::<Float64Type>();
                Cell::Number(numbers.is_valid(row).then(|| numbers.value(row)))
            } else {
                let text = cast(column, &DataType::Utf8).expect("text");
                let text = text.as_string::<i32>();
                Cell::Text(text.is_valid(row).then(|| text.value(row).to_string()))
            });
        }
    }
    out.sort_by_key(|cells| key_of(cells));
    out
}

/// A row's group key: its first cell (every grouped question here has one key, first).
fn key_of(cells: &[Cell]) -> String {
    format!("{:?}", cells.first())
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

fn assert_same(got: &[Vec<Cell>], want: &[Vec<Cell>], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: rows\n{got:?}\n{want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.len(), w.len(), "{what}");
        for (a, b) in g.iter().zip(w) {
            let same = match (a, b) {
                (Cell::Number(Some(a)), Cell::Number(Some(b))) => close(*a, *b),
                (a, b) => a == b,
            };
            assert!(same, "{what}: {g:?} where DataFusion gives {w:?}");
        }
    }
}

async fn pooled(sql: &str, rows: &Rows) -> Vec<RecordBatch> {
    rows.context()
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .collect()
        .await
        .expect("pooled")
}

/// The merge of what every site releases under `k`.
async fn merged(
    sql: &str,
    sites: &[Rows],
    k: Option<i64>,
) -> (Vec<RecordBatch>, Vec<Vec<RecordBatch>>) {
    merged_with(sql, sites, k, &SiteFacts::default()).await
}

/// [`merged`] at sites that verified `facts`.
async fn merged_with(
    sql: &str,
    sites: &[Rows],
    k: Option<i64>,
    facts: &SiteFacts,
) -> (Vec<RecordBatch>, Vec<Vec<RecordBatch>>) {
    let mut releases = Vec::new();
    for site in sites {
        releases.push(released(&site_output_with(sql, site, facts).await, k));
    }
    let query = validate(sql, &planning_state().expect("planning"))
        .await
        .expect("valid");
    let merged = query
        .merge(releases.iter().flatten().cloned().collect())
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (merged, releases)
}

const SPREADS: &[&str] = &[
    // One row per patient: a group's values are its patients' birth years.
    "SELECT p.sex, VAR_SAMP(p.birth_year) AS vs, VAR_POP(p.birth_year) AS vp, STDDEV_SAMP(p.birth_year) AS ss, STDDEV_POP(p.birth_year) AS sp, COUNT(*) AS n FROM patient p GROUP BY p.sex",
    // Several rows per patient, NULLs, a shifted and scaled column: the per-patient plan.
    "SELECT d.code, VAR_SAMP(d.age_at_diagnosis) AS v, STDDEV_POP(3 * d.age_at_onset - 20) AS scaled, AVG(d.age_at_onset) AS onset FROM diagnosis d GROUP BY d.code",
    // Through a join, with every name DataFusion and PostgreSQL give them, no GROUP BY.
    "SELECT variance(p.birth_year) AS a, var(d.age_at_onset) AS b, var_population(p.birth_month) AS c, stddev(d.age_at_onset) AS e FROM patient p JOIN diagnosis d ON d.pid = p.pid",
    // Above the barrier: expressions, HAVING and ORDER BY on the merged statistics.
    "SELECT p.sex, STDDEV(p.birth_year) / AVG(p.birth_year) AS cv, VAR_POP(p.birth_year) + 1 AS shifted FROM patient p GROUP BY p.sex HAVING COUNT(*) > 1 ORDER BY cv DESC",
];

#[tokio::test]
async fn spreads_merge_to_datafusions_own_over_the_pooled_rows() {
    let sites = three_sites();
    let everything = pool(&sites.iter().collect::<Vec<_>>());
    // Without facts, one row per group and patient first; with the patient table known
    // to hold each pid once, one aggregation over the patient table's rows.
    for facts in [
        SiteFacts::default(),
        SiteFacts::with_unique_pid_tables(["patient"]),
    ] {
        for sql in SPREADS {
            let (merged, _) = merged_with(sql, &sites, None, &facts).await;
            let want = pooled(sql, &everything).await;
            assert!(!want.is_empty(), "{sql}: nothing pooled");
            assert_same(&table(&merged), &table(&want), sql);
        }
    }
}

#[tokio::test]
async fn a_group_of_one_value_has_no_sample_variance() {
    let sites = three_sites();
    let sql = SPREADS[0];
    let (merged, _) = merged(sql, &sites, None).await;
    let lone = table(&merged)
        .into_iter()
        .find(|row| row[0] == Cell::Text(Some("undetermined".into())))
        .expect("the lone patient's group");
    assert_eq!(lone[1], Cell::Number(None), "VAR_SAMP of one value");
    assert_eq!(lone[2], Cell::Number(Some(0.0)), "VAR_POP of one value");
    assert_eq!(lone[3], Cell::Number(None), "STDDEV_SAMP of one value");
    assert_eq!(lone[4], Cell::Number(Some(0.0)), "STDDEV_POP of one value");
}

/// Per-site suppression: a group's merged statistic covers the sites that released it,
/// and equals DataFusion's over exactly those sites' rows.
#[tokio::test]
async fn a_group_merges_over_the_sites_that_released_it() {
    let sites = three_sites();
    let k = Some(5);
    for sql in [
        "SELECT d.code, VAR_SAMP(d.age_at_diagnosis) AS v, STDDEV_POP(d.age_at_diagnosis) AS s, COUNT(*) AS n FROM diagnosis d GROUP BY d.code",
        "SELECT p.sex, VAR_POP(p.birth_year) AS v, STDDEV_SAMP(p.birth_month) AS s FROM patient p GROUP BY p.sex",
    ] {
        let (merged, releases) = merged(sql, &sites, k).await;
        // Which sites released each group.
        let mut released_by: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
        for (site, release) in releases.iter().enumerate() {
            for row in table(release) {
                released_by.entry(key_of(&row)).or_default().insert(site);
            }
        }
        let everywhere = released_by.values().filter(|s| s.len() == 3).count();
        let somewhere = released_by.values().filter(|s| s.len() < 3).count();
        assert!(
            everywhere > 0 && somewhere > 0,
            "{sql}: the data should suppress some groups at some sites only: {released_by:?}"
        );
        let mut want = Vec::new();
        for (key, subset) in &released_by {
            let rows = pool(&subset.iter().map(|&s| &sites[s]).collect::<Vec<_>>());
            let row = table(&pooled(sql, &rows).await)
                .into_iter()
                .find(|row| key_of(row) == *key)
                .expect("the group in its sites' pooled rows");
            want.push(row);
        }
        want.sort_by_key(|cells| key_of(cells));
        assert_same(&table(&merged), &want, sql);
    }
}

/// Values near 10^9 with a spread of a few units: the partials are exact integers and
/// the merge rounds once, so the variance is that of the small part (a variance does
/// not depend on a shift), where the textbook formula over the same totals in f64
/// returns noise.
#[tokio::test]
async fn a_large_offset_loses_no_digit() {
    let sites = three_sites();
    let everything = pool(&sites.iter().collect::<Vec<_>>());
    let shifted = "SELECT p.sex, VAR_SAMP(p.birth_month + 1000000000) AS v, STDDEV_POP(p.birth_month + 1000000000) AS s, COUNT(p.birth_month) AS n, SUM(p.birth_month + 1000000000) AS total FROM patient p GROUP BY p.sex";
    let unshifted = "SELECT p.sex, VAR_SAMP(p.birth_month) AS v, STDDEV_POP(p.birth_month) AS s, COUNT(p.birth_month) AS n, SUM(p.birth_month) + 1000000000 * COUNT(p.birth_month) AS total FROM patient p GROUP BY p.sex";
    let (merged_rows, _) = merged(shifted, &sites, None).await;
    let got = table(&merged_rows);
    let want = table(&pooled(unshifted, &everything).await);
    assert_same(&got, &want, shifted);
    // The textbook formula on the same network totals is far off.
    let months: Vec<i128> = everything
        .patients
        .iter()
        .filter(|p| p.sex == "female")
        .filter_map(|p| p.birth_month)
        .map(|m| i128::from(m) + 1_000_000_000)
        .collect();
    let n = months.len() as f64;
    let s = months.iter().sum::<i128>() as f64;
    let q = months.iter().map(|v| v * v).sum::<i128>() as f64;
    let textbook = (q - s * s / n) / (n - 1.0);
    let female = got
        .iter()
        .find(|row| row[0] == Cell::Text(Some("female".into())))
        .expect("female");
    let Cell::Number(Some(exact)) = female[1] else {
        panic!("no variance: {female:?}");
    };
    assert!(
        (textbook - exact).abs() > 1e-3 * exact,
        "the textbook formula happened to be right: {textbook} vs {exact}"
    );
}

// ---------------------------------------------------------------------------------------
// Red team: the spreads under the disclosure rules
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_spread_of_a_conditional_or_non_linear_value_is_refused() {
    let state = planning_state().expect("planning");
    for sql in [
        "SELECT VAR_SAMP(CASE WHEN birth_year = 1934 THEN 1 ELSE 0 END) FROM patient",
        "SELECT STDDEV_POP(CAST(birth_year = 1934 AS INT)) FROM patient",
        "SELECT VAR_POP(birth_year * birth_year) FROM patient",
        "SELECT VAR_SAMP(power(2, birth_year - 1900)) FROM patient",
        "SELECT STDDEV(birth_year / 7) FROM patient",
        "SELECT VAR_SAMP(x.v) FROM (SELECT pid, CASE WHEN birth_month = 1 THEN 1000 ELSE 0 END AS v FROM patient) x",
        "SELECT VAR_SAMP(width_bucket(birth_year, 1900, 2000, 10)) FROM patient",
        "SELECT sex, VAR_POP(birth_year) FILTER (WHERE birth_month = 1) FROM patient GROUP BY sex",
        "SELECT VAR_SAMP(DISTINCT birth_year) FROM patient",
    ] {
        let refusal = validate(sql, &state).await.expect_err(sql);
        assert_eq!(refusal.rule, Rule::BarrierAggregates, "{sql}: {refusal}");
        assert!(!refusal.mistake, "{sql}: {refusal}");
    }
}

/// DataFusion cannot plan a spread of text at all (as it cannot plan SUM of text): the
/// question is refused before rule 4 sees it, by rule 1, naming the function only.
#[tokio::test]
async fn a_spread_of_text_is_refused() {
    let state = planning_state().expect("planning");
    for (sql, sum) in [
        (
            "SELECT STDDEV(sex) FROM patient",
            "SELECT SUM(sex) FROM patient",
        ),
        (
            "SELECT p.sex, VAR_POP(d.code) FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex",
            "SELECT p.sex, SUM(d.code) FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex",
        ),
    ] {
        let refusal = validate(sql, &state).await.expect_err(sql);
        let like_sum = validate(sum, &state).await.expect_err(sum);
        assert_eq!(refusal.rule, like_sum.rule, "{refusal} / {like_sum}");
        assert!(refusal.to_string().contains("refused by rule"), "{refusal}");
    }
}

/// A hand-made site: `code` with the given onset ages, one patient per age.
fn site_with_ages(groups: &[(&'static str, &[i32])]) -> Rows {
    let mut rows = Rows::default();
    for (code, ages) in groups {
        for (i, age) in ages.iter().enumerate() {
            let pid = format!("{code}-{i}");
            rows.patients.push(Patient {
                pid: pid.clone(),
                birth_year: 1970,
                birth_month: Some(1),
                sex: "female",
            });
            rows.diagnoses.push(Diagnosis {
                pid,
                code,
                onset: Some(*age),
                diagnosis: Some(*age),
            });
        }
    }
    rows
}

#[tokio::test]
async fn a_spread_over_fewer_than_k_patients_is_dropped() {
    let site = site_with_ages(&[
        ("ORPHA:154", &[20, 21, 22, 23, 24, 25]),
        ("ORPHA:130", &[30, 31, 70]),
    ]);
    let sql = "SELECT d.code, VAR_SAMP(d.age_at_onset) AS v, STDDEV_POP(d.age_at_onset) AS s FROM diagnosis d GROUP BY d.code";
    let output = site_output(sql, &site).await;
    let kept = table(&released(&output, Some(5)));
    let codes: Vec<&Cell> = kept.iter().map(|row| &row[0]).collect();
    assert_eq!(codes, [&Cell::Text(Some("ORPHA:154".into()))], "{kept:?}");
}

/// Two tens among eight ones hold 71 % of the sum (under the 85 % of the dominance rule)
/// but 96 % of the sum of squares: a spread releases that sum of squares, so its group
/// is dropped, where a SUM of the same values is released.
#[tokio::test]
async fn a_patient_dominating_the_sum_of_squares_drops_the_spread() {
    let site = site_with_ages(&[("ORPHA:154", &[1, 1, 1, 1, 1, 1, 1, 1, 10, 10])]);
    let spread = "SELECT d.code, VAR_POP(d.age_at_onset) AS v FROM diagnosis d GROUP BY d.code";
    let sum = "SELECT d.code, SUM(d.age_at_onset) AS s FROM diagnosis d GROUP BY d.code";
    assert!(table(&released(&site_output(spread, &site).await, Some(5))).is_empty());
    assert_eq!(
        table(&released(&site_output(sum, &site).await, Some(5))).len(),
        1
    );
}

/// The noise of a bounded site plan is scaled to how far one patient moves each
/// partial: for the sum of squares, rows times the square of the one-row bound.
#[tokio::test]
async fn the_sum_of_squares_is_noised_for_the_square_of_the_bound() {
    let state = planning_state().expect("planning");
    let cases = [
        (
            "SELECT p.sex, VAR_SAMP(p.birth_month) AS v FROM patient p GROUP BY p.sex",
            Bounding::default(),
            vec![1, 12, 144],
        ),
        (
            "SELECT d.code, STDDEV_POP(d.age_at_onset) AS s, COUNT(*) AS n FROM diagnosis d GROUP BY d.code",
            Bounding {
                max_groups_per_patient: 3,
                max_rows_per_patient: 2,
            },
            vec![6, 900, 135_000, 6],
        ),
    ];
    for (sql, bounding, expected) in cases {
        let query = validate(sql, &state).await.expect("valid");
        let site = query
            .bounded_site_plan(
                &SiteFacts::default(),
                Concentration::TopShare(Dominance::default()),
                Some(bounding),
            )
            .expect("site plan");
        let sensitivity = site.sensitivity.expect("bounded");
        assert_eq!(sensitivity.partials, expected, "{sql}");
        assert_eq!(
            sensitivity.partials.len(),
            query.released_width().expect("width") - query.barrier().group_exprs.len(),
            "{sql}: one sensitivity per released partial"
        );
    }
    // Values up to 4.2·10^9: one patient over six rows and groups could move the sum of
    // squares by 10^20, past 64 bits. The plan is refused, not noised for less.
    let huge = "SELECT p.sex, VAR_POP(p.birth_year * 2000000) AS v FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let query = validate(huge, &state).await.expect("valid");
    let bounded = query.bounded_site_plan(
        &SiteFacts::default(),
        Concentration::TopShare(Dominance::default()),
        Some(Bounding {
            max_groups_per_patient: 3,
            max_rows_per_patient: 2,
        }),
    );
    assert!(
        matches!(
            bounded,
            Err(ern_queries::split::SplitError::TooSensitive(_))
        ),
        "{bounded:?}"
    );
}

/// Secure aggregation: integer partials in the vector, k and the concentration limit on
/// network totals, the same statistics as DataFusion's over the pooled rows.
#[tokio::test]
async fn a_secure_round_merges_spreads_exactly() {
    let sql = "SELECT p.sex, VAR_SAMP(p.birth_year) AS v, STDDEV_POP(p.birth_year) AS s, COUNT(*) AS n FROM patient p GROUP BY p.sex";
    let planning = planning_state().expect("planning");
    let query = validate(sql, &planning).await.expect("valid");
    assert_eq!(query.mode().name(), "secure", "{:?}", query.mode());
    let layout = query.secure_layout().expect("layout");
    let sites = three_sites();
    let mut totals = vec![0u64; layout.len()];
    for site in &sites {
        let ctx = site.context();
        let at_site = validate(sql, &ctx.state())
            .await
            .expect("valid at the site");
        let plan = at_site
            .secure_site_plan(&SiteFacts::default())
            .expect("secure site plan");
        let batches = ctx
            .execute_logical_plan(plan.plan)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let vector = layout.vector(&batches).expect("vector");
        for (total, value) in totals.iter_mut().zip(&vector.values) {
            *total = total.wrapping_add(*value);
        }
    }
    let release = layout.release(&totals, 5, 0.36125).expect("release");
    let merged = query.merge(vec![release.batch]).await.expect("merge");
    let everything = pool(&sites.iter().collect::<Vec<_>>());
    // The lone `undetermined` patient's cell is under k on the network total too.
    let want = pooled(
        &sql.replace("GROUP BY", "WHERE p.sex <> 'undetermined' GROUP BY"),
        &everything,
    )
    .await;
    assert_same(&table(&merged), &table(&want), sql);
}

#[tokio::test]
async fn a_spread_whose_squares_could_pass_64_bits_runs_per_site() {
    let planning = planning_state().expect("planning");
    let query = validate(
        "SELECT p.sex, VAR_SAMP(p.birth_month + 1000000000) AS v FROM patient p GROUP BY p.sex",
        &planning,
    )
    .await
    .expect("valid");
    let AggregationMode::PerSite { reason } = query.mode() else {
        panic!("secure: {:?}", query.mode());
    };
    assert!(reason.contains("64 bits"), "{reason}");
}
