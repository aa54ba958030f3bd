//! A question's public domain, derived from its plan alone: which questions are
//! aggregated securely, over which cells, and which run per site and why.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, StringViewArray};
use arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::sum;
use datafusion::logical_expr::{cast, col};
use ern_queries::catalog::planning_state;
use ern_queries::domain::{AggregationMode, MAX_SECURE_CELLS, SecureDomain, derive};
use ern_queries::{Planner, QueryPlan, reference};

async fn plan(sql: &str) -> QueryPlan {
    let state = planning_state().expect("planning state");
    Planner::new()
        .plan(sql, &state)
        .await
        .unwrap_or_else(|refusal| panic!("{sql}: refused: {refusal:?}"))
}

async fn mode(sql: &str) -> AggregationMode {
    derive(plan(sql).await.barrier())
}

async fn secure(sql: &str) -> SecureDomain {
    match mode(sql).await {
        AggregationMode::Secure(domain) => domain,
        AggregationMode::PerSite { reason } => panic!("{sql}: per site: {reason}"),
    }
}

async fn per_site(sql: &str) -> String {
    match mode(sql).await {
        AggregationMode::PerSite { reason } => reason,
        AggregationMode::Secure(domain) => {
            panic!("{sql}: secure over {:?}", domain.describe())
        }
    }
}

fn int64s(domain: &SecureDomain, key: usize) -> Vec<Option<i64>> {
    domain.keys[key]
        .values
        .iter()
        .map(|v| match v {
            ScalarValue::Int64(v) => *v,
            other => panic!("not an Int64: {other:?}"),
        })
        .collect()
}

fn texts(domain: &SecureDomain, key: usize) -> Vec<Option<String>> {
    domain.keys[key]
        .values
        .iter()
        .map(|v| match v {
            ScalarValue::Utf8(v) => v.clone(),
            other => panic!("not a Utf8: {other:?}"),
        })
        .collect()
}

fn some(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| Some(v.to_string())).collect()
}

fn distinct_names() -> usize {
    let terms = reference::terms().expect("terms");
    terms.iter().map(|t| &t.name).collect::<BTreeSet<_>>().len()
}

const DISORDER_BY_SEX: &str = "SELECT t.name, p.sex, COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

#[tokio::test]
async fn disorder_by_sex_is_secure_over_the_reference_names_and_four_sexes() {
    let domain = secure(DISORDER_BY_SEX).await;
    assert_eq!(domain.keys.len(), 2);
    let names = distinct_names();
    assert_eq!(domain.keys[0].values.len(), names);
    assert_eq!(domain.keys[0].source, "orpha_term.name (shipped reference)");
    assert_eq!(domain.keys[0].data_type, DataType::Utf8);
    assert_eq!(
        texts(&domain, 1),
        some(&["female", "male", "undetermined", "unknown"])
    );
    assert_eq!(domain.cells(), names * 4);
    assert_eq!(
        domain.describe()[1],
        "p.sex: 4 values (value set of patient.sex)"
    );
}

#[tokio::test]
async fn a_code_alone_has_no_domain() {
    let reason =
        per_site("SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d GROUP BY d.code")
            .await;
    assert_eq!(
        reason,
        "GROUP BY d.code has no public domain: join it to orpha_term or filter it with an IN list"
    );
}

#[tokio::test]
async fn a_code_joined_to_the_reference_has_its_codes() {
    for sql in [
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d JOIN orpha_term t ON d.code = t.orpha_code GROUP BY d.code",
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d JOIN orpha_term t ON t.orpha_code = d.code GROUP BY d.code",
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d, orpha_term t WHERE d.code = t.orpha_code GROUP BY d.code",
    ] {
        let domain = secure(sql).await;
        assert_eq!(domain.keys[0].values.len(), 227, "{sql}");
        assert_eq!(
            domain.keys[0].source, "orpha_term.orpha_code (shipped reference)",
            "{sql}"
        );
    }
}

#[tokio::test]
async fn a_code_joined_to_the_closure_has_its_descendants() {
    let domain = secure(
        "SELECT d.code, COUNT(DISTINCT p.pid) AS n FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY d.code",
    )
    .await;
    assert_eq!(domain.keys[0].values.len(), 227);
    assert_eq!(
        domain.keys[0].source,
        "orpha_closure.descendant (shipped reference)"
    );
    // The ancestor itself, filtered to one literal.
    let domain = secure(
        "SELECT c.ancestor, COUNT(DISTINCT d.pid) AS n FROM diagnosis d JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY c.ancestor",
    )
    .await;
    assert_eq!(texts(&domain, 0), some(&["ORPHA:167848"]));
    assert_eq!(domain.keys[0].source, "= literal");
}

#[tokio::test]
async fn an_in_list_gives_a_code_its_values() {
    let domain = secure(
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d WHERE d.code IN ('ORPHA:154', 'ORPHA:5', 'ORPHA:154') GROUP BY d.code",
    )
    .await;
    assert_eq!(texts(&domain, 0), some(&["ORPHA:154", "ORPHA:5"]));
    assert_eq!(domain.keys[0].source, "IN list");
    // With the join too, the list is cut to the reference's codes.
    let domain = secure(
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d JOIN orpha_term t ON d.code = t.orpha_code WHERE d.code IN ('ORPHA:154', 'ICD10:Q87.4') GROUP BY d.code",
    )
    .await;
    assert_eq!(texts(&domain, 0), some(&["ORPHA:154"]));
    // Free text with an IN list.
    let domain = secure(
        "SELECT g.hgnc_id, COUNT(DISTINCT g.pid) AS n FROM genetic_finding g WHERE g.hgnc_id IN ('HGNC:7577', 'HGNC:7551') AND g.causative GROUP BY g.hgnc_id",
    )
    .await;
    assert_eq!(domain.cells(), 2);
}

#[tokio::test]
async fn a_literal_in_an_or_proves_nothing() {
    let reason = per_site(
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d WHERE d.code = 'ORPHA:154' OR d.status = 'confirmed' GROUP BY d.code",
    )
    .await;
    assert!(
        reason.starts_with("GROUP BY d.code has no public domain"),
        "{reason}"
    );
}

#[tokio::test]
async fn decades_of_birth_come_from_the_declared_range() {
    let domain = secure(
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY (p.birth_year / 10) * 10",
    )
    .await;
    let expected: Vec<Option<i64>> = (188..=210).map(|d| Some(d * 10)).collect();
    assert_eq!(int64s(&domain, 0), expected);
    assert_eq!(
        domain.keys[0].source,
        "computed from patient.birth_year over 1880..=2100 (declared range)"
    );
    let domain = secure(
        "SELECT p.birth_year / 10 AS decade, COUNT(DISTINCT p.pid) AS n FROM patient p WHERE p.birth_year >= 1950 GROUP BY p.birth_year / 10",
    )
    .await;
    let expected: Vec<Option<i64>> = (195..=210).map(Some).collect();
    assert_eq!(int64s(&domain, 0), expected);
    assert_eq!(
        domain.keys[0].source,
        "computed from patient.birth_year over 1950..=2100 (declared range, bounded by the question's filters)"
    );
}

#[tokio::test]
async fn the_question_filters_bound_a_range_both_ways() {
    let domain = secure(
        "SELECT p.birth_year, COUNT(DISTINCT p.pid) AS n FROM patient p WHERE p.birth_year > 1949 AND p.birth_year < 1960 AND 1955 >= p.birth_year GROUP BY p.birth_year",
    )
    .await;
    let values: Vec<ScalarValue> = (1950..=1955).map(|y| ScalarValue::Int32(Some(y))).collect();
    assert_eq!(domain.keys[0].values, values);
    let domain = secure(
        "SELECT p.birth_year, COUNT(DISTINCT p.pid) AS n FROM patient p WHERE p.birth_year IN (1950, 1960, 3000) GROUP BY p.birth_year",
    )
    .await;
    assert_eq!(
        domain.keys[0].values,
        vec![
            ScalarValue::Int32(Some(1950)),
            ScalarValue::Int32(Some(1960))
        ]
    );
}

#[tokio::test]
async fn integer_division_truncates_toward_zero() {
    let domain = secure(
        "SELECT (p.birth_year - 2000) / 10 AS d, COUNT(DISTINCT p.pid) AS n FROM patient p WHERE p.birth_year BETWEEN 1991 AND 2009 GROUP BY (p.birth_year - 2000) / 10",
    )
    .await;
    assert_eq!(int64s(&domain, 0), vec![Some(0)]);
    let domain = secure(
        "SELECT 2000 - p.birth_year AS age, COUNT(DISTINCT p.pid) AS n FROM patient p WHERE p.birth_year BETWEEN 1998 AND 2001 GROUP BY 2000 - p.birth_year",
    )
    .await;
    assert_eq!(
        int64s(&domain, 0),
        vec![Some(-1), Some(0), Some(1), Some(2)]
    );
}

#[tokio::test]
async fn bands_of_a_difference_and_of_a_per_patient_minimum() {
    let domain = secure(
        "SELECT ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5 AS band, COUNT(DISTINCT d.pid) AS n FROM diagnosis d GROUP BY ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5",
    )
    .await;
    let mut expected = vec![None];
    expected.extend((-30..=30).map(|b| Some(b * 5)));
    assert_eq!(int64s(&domain, 0), expected);
    let domain = secure(
        "SELECT (t.first_age / 10) * 10 AS band, COUNT(DISTINCT t.pid) AS n FROM (SELECT pid, MIN(age_at_diagnosis) AS first_age FROM diagnosis GROUP BY pid) t GROUP BY (t.first_age / 10) * 10",
    )
    .await;
    let mut expected = vec![None];
    expected.extend((0..=15).map(|b| Some(b * 10)));
    assert_eq!(int64s(&domain, 0), expected);
}

#[tokio::test]
async fn a_per_patient_count_has_a_domain_only_within_bounds() {
    let reason = per_site(
        "SELECT t.codes, COUNT(*) AS patients FROM (SELECT pid, COUNT(DISTINCT code) AS codes FROM diagnosis GROUP BY pid) t GROUP BY t.codes",
    )
    .await;
    assert!(reason.contains("bound it in WHERE"), "{reason}");
    let domain = secure(
        "SELECT t.codes, COUNT(*) AS patients FROM (SELECT pid, COUNT(DISTINCT code) AS codes FROM diagnosis GROUP BY pid) t WHERE t.codes BETWEEN 1 AND 5 GROUP BY t.codes",
    )
    .await;
    assert_eq!(int64s(&domain, 0), (1..=5).map(Some).collect::<Vec<_>>());
    assert_eq!(
        domain.keys[0].source,
        "t.codes over 1..=5 (the question's filters)"
    );
}

#[tokio::test]
async fn booleans_are_false_and_true() {
    let domain = secure(
        "SELECT p.undiagnosed, f.excluded, COUNT(DISTINCT p.pid) AS n FROM patient p JOIN phenotype f ON p.pid = f.pid WHERE f.hpo_id = 'HP:0001639' GROUP BY p.undiagnosed, f.excluded",
    )
    .await;
    let (f, t) = (ScalarValue::from(false), ScalarValue::from(true));
    assert_eq!(
        domain.keys[0].values,
        vec![ScalarValue::Boolean(None), f.clone(), t.clone()]
    );
    assert_eq!(domain.keys[1].values, vec![f, t.clone()]);
    let domain = secure(
        "SELECT g.causative, COUNT(DISTINCT g.pid) AS n FROM genetic_finding g WHERE g.causative GROUP BY g.causative",
    )
    .await;
    assert_eq!(domain.keys[0].values, vec![ScalarValue::Boolean(None), t]);
}

#[tokio::test]
async fn a_total_is_one_cell() {
    let domain = secure("SELECT COUNT(DISTINCT pid) AS patients FROM patient").await;
    assert!(domain.keys.is_empty());
    assert_eq!(domain.cells(), 1);
    assert!(domain.describe().is_empty());
    assert_eq!(domain.cell_of(&[]), Some(0));
}

#[tokio::test]
async fn a_nullable_key_has_null_first() {
    let domain = secure(
        "SELECT p.vital_status, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY p.vital_status",
    )
    .await;
    assert_eq!(
        texts(&domain, 0),
        vec![
            None,
            Some("alive".into()),
            Some("dead".into()),
            Some("lost_to_follow_up".into()),
            Some("opted_out".into()),
        ]
    );
    assert_eq!(
        domain.describe(),
        vec!["p.vital_status: 5 values including NULL (value set of patient.vital_status)"]
    );
    // A column of the nullable side of an outer join.
    let domain = secure(
        "SELECT g.zygosity, COUNT(DISTINCT p.pid) AS n FROM patient p LEFT JOIN genetic_finding g ON p.pid = g.pid GROUP BY g.zygosity",
    )
    .await;
    assert_eq!(domain.keys[0].values.len(), 6);
    assert!(domain.keys[0].values[0].is_null());
}

#[tokio::test]
async fn an_outer_join_proves_nothing() {
    let reason = per_site(
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d LEFT JOIN orpha_term t ON d.code = t.orpha_code GROUP BY d.code",
    )
    .await;
    assert!(
        reason.starts_with("GROUP BY d.code has no public domain"),
        "{reason}"
    );
    let reason = per_site(
        "SELECT p.birth_year, COUNT(DISTINCT p.pid) AS n FROM patient p LEFT JOIN diagnosis d ON p.pid = d.pid AND d.code = 'ORPHA:154' AND p.birth_year = 1950 GROUP BY p.birth_year, d.code",
    )
    .await;
    assert!(
        reason.starts_with("GROUP BY d.code has no public domain"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_outer_join_condition_does_not_narrow_its_preserved_side() {
    let domain = secure(
        "SELECT p.birth_year, COUNT(DISTINCT p.pid) AS n FROM patient p LEFT JOIN diagnosis d ON p.pid = d.pid AND p.birth_year = 1950 GROUP BY p.birth_year",
    )
    .await;
    assert_eq!(domain.keys[0].values.len(), 221);
}

#[tokio::test]
async fn a_cast_key_must_hold_every_value() {
    let domain = secure(
        "SELECT CAST(p.birth_year AS SMALLINT) AS y, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY CAST(p.birth_year AS SMALLINT)",
    )
    .await;
    assert_eq!(domain.keys[0].data_type, DataType::Int16);
    assert_eq!(domain.keys[0].values.len(), 221);
    // 1880 does not fit a TINYINT: on the node it would become NULL.
    let reason = per_site(
        "SELECT CAST(p.birth_year AS TINYINT) AS y, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY CAST(p.birth_year AS TINYINT)",
    )
    .await;
    assert!(
        reason.starts_with("GROUP BY CAST(p.birth_year AS Int8) has no public domain"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_literal_key_is_one_value() {
    let domain =
        secure("SELECT 'all' AS cohort, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY 'all'")
            .await;
    assert_eq!(domain.keys[0].values, vec![ScalarValue::from("all")]);
    assert_eq!(domain.keys[0].source, "literal");
}

#[tokio::test]
async fn a_reference_depth_and_a_per_patient_filter() {
    let domain = secure(
        "SELECT c.depth, COUNT(DISTINCT d.pid) AS n FROM diagnosis d JOIN orpha_closure c ON d.code = c.descendant AND c.ancestor = 'ORPHA:167848' GROUP BY c.depth",
    )
    .await;
    let depths: Vec<ScalarValue> = (0..=6).map(|d| ScalarValue::Int32(Some(d))).collect();
    assert_eq!(domain.keys[0].values, depths);
    let domain = secure(
        "SELECT t.y, COUNT(*) AS n FROM (SELECT pid, birth_year AS y FROM patient WHERE birth_year >= 2000) t GROUP BY t.y",
    )
    .await;
    assert_eq!(domain.keys[0].values.len(), 101);
}

#[tokio::test]
async fn a_case_key_runs_per_site() {
    let reason = per_site(
        "SELECT CASE WHEN birth_year < 1950 THEN 'before 1950' ELSE 'since 1950' END AS born, COUNT(DISTINCT pid) AS patients FROM patient GROUP BY CASE WHEN birth_year < 1950 THEN 'before 1950' ELSE 'since 1950' END",
    )
    .await;
    assert!(reason.starts_with("GROUP BY CASE WHEN"), "{reason}");
    assert!(reason.contains("has no public domain"), "{reason}");
}

#[tokio::test]
async fn dates_and_functions_have_no_domain() {
    for (sql, key) in [
        (
            "SELECT p.death_date, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY p.death_date",
            "p.death_date",
        ),
        (
            "SELECT upper(p.sex) AS s, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY upper(p.sex)",
            "upper(p.sex)",
        ),
    ] {
        let reason = per_site(sql).await;
        assert!(
            reason.starts_with(&format!("GROUP BY {key} has no public domain")),
            "{sql}: {reason}"
        );
    }
}

#[tokio::test]
async fn a_sum_over_a_fraction_runs_per_site() {
    let query = plan("SELECT p.sex, SUM(p.birth_year) AS s FROM patient p GROUP BY p.sex").await;
    assert_eq!(derive(query.barrier()).name(), "secure");
    // Validation refuses fractions inside a released aggregate today; the mode must not
    // rely on it.
    let mut barrier = query.barrier().clone();
    barrier.aggregates[0].expr = sum(cast(col("p.birth_year"), DataType::Float64));
    let AggregationMode::PerSite { reason } = derive(&barrier) else {
        panic!("a float SUM was secure");
    };
    assert!(reason.contains("SUM over a non-integer value"), "{reason}");
}

#[tokio::test]
async fn a_domain_over_the_cap_runs_per_site() {
    let reason = per_site(
        "SELECT t.name, p.birth_year, p.sex, COUNT(DISTINCT p.pid) AS n FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.birth_year, p.sex",
    )
    .await;
    let cells = distinct_names() * 221 * 4;
    assert!(cells > MAX_SECURE_CELLS);
    assert_eq!(
        reason,
        format!(
            "the GROUP BY keys have {cells} combinations, more than the {MAX_SECURE_CELLS} cells a secure question may have"
        )
    );
}

#[tokio::test]
async fn an_empty_domain_runs_per_site() {
    let reason = per_site(
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d JOIN orpha_term t ON d.code = t.orpha_code WHERE d.code IN ('ICD10:Q87.4') GROUP BY d.code",
    )
    .await;
    assert!(reason.contains("empty"), "{reason}");
}

#[tokio::test]
async fn cells_and_key_arrays_round_trip() {
    let domain = secure(DISORDER_BY_SEX).await;
    let cells: Vec<usize> = (0..domain.cells()).collect();
    let arrays = domain.key_arrays(&cells).expect("key arrays");
    assert_eq!(arrays.len(), 2);
    for (index, key) in domain.keys.iter().enumerate() {
        assert_eq!(arrays[index].data_type(), &key.data_type);
    }
    for &cell in &cells {
        let values: Vec<ScalarValue> = arrays
            .iter()
            .map(|a| ScalarValue::try_from_array(a.as_ref(), cell).expect("value"))
            .collect();
        assert_eq!(domain.cell_of(&values), Some(cell));
    }
    assert_eq!(
        domain.cells_of_batch(&arrays).expect("cells"),
        cells.iter().map(|&c| Some(c)).collect::<Vec<_>>()
    );
    // Parquet gives view strings; they are cast to the key's type.
    let name = texts(&domain, 0)[3].clone().expect("a name");
    let names: ArrayRef = Arc::new(StringViewArray::from(vec![
        name.as_str(),
        "no such disorder",
    ]));
    let sexes: ArrayRef = Arc::new(StringViewArray::from(vec!["male", "male"]));
    let found = domain.cells_of_batch(&[names, sexes]).expect("cells");
    assert_eq!(found, vec![Some(3 * 4 + 1), None]);
    assert_eq!(
        domain
            .cell_of_row(&[Arc::clone(&arrays[0]), Arc::clone(&arrays[1])], 9)
            .expect("cell"),
        Some(9)
    );
}

#[tokio::test]
async fn integer_keys_cast_to_their_type() {
    let domain = secure(
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY (p.birth_year / 10) * 10",
    )
    .await;
    let decades: ArrayRef = Arc::new(Int64Array::from(vec![Some(1950), Some(1955), None]));
    let found = domain.cells_of_batch(&[decades]).expect("cells");
    assert_eq!(found, vec![Some(7), None, None]);
    let decades: ArrayRef = Arc::new(arrow::array::Int32Array::from(vec![2100]));
    assert_eq!(
        domain.cells_of_batch(&[decades]).expect("cells"),
        vec![Some(22)]
    );
    // A value the key's type cannot hold is outside the domain, not NULL.
    let years =
        secure("SELECT p.birth_year, COUNT(*) AS n FROM patient p GROUP BY p.birth_year").await;
    let big: ArrayRef = Arc::new(Int64Array::from(vec![Some(3_000_000_000), Some(1880)]));
    assert_eq!(
        years.cells_of_batch(&[big]).expect("cells"),
        vec![None, Some(0)]
    );
}

#[tokio::test]
async fn the_digest_is_stable_and_tells_questions_apart() {
    let first = secure(DISORDER_BY_SEX).await.digest();
    let again = secure(DISORDER_BY_SEX).await.digest();
    assert_eq!(first, again);
    assert_eq!(first.len(), 64);
    assert!(
        first
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    let others = [
        "SELECT t.name, p.vital_status, COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.vital_status",
        "SELECT p.sex, t.name, COUNT(DISTINCT p.pid) FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY p.sex, t.name",
        "SELECT p.birth_year / 10, COUNT(DISTINCT p.pid) FROM patient p GROUP BY p.birth_year / 10",
        "SELECT p.birth_year / 10, COUNT(DISTINCT p.pid) FROM patient p WHERE p.birth_year >= 1950 GROUP BY p.birth_year / 10",
    ];
    let mut digests = BTreeSet::from([first]);
    for sql in others {
        assert!(digests.insert(secure(sql).await.digest()), "{sql}");
    }
}

#[tokio::test]
async fn the_report_says_which_mode_applies() {
    let query = plan(DISORDER_BY_SEX).await;
    let report = query.report();
    assert_eq!(report.mode, "secure");
    assert_eq!(report.cells, (distinct_names() * 4) as u64);
    assert_eq!(report.domain.len(), 2);
    assert_eq!(report.per_site_reason, None);
    let query =
        plan("SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM diagnosis d GROUP BY d.code").await;
    let report = query.report();
    assert_eq!(report.mode, "per-site");
    assert_eq!(report.cells, 0);
    assert!(report.domain.is_empty());
    assert!(
        report
            .per_site_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("GROUP BY d.code"))
    );
}

#[test]
fn a_stored_report_without_the_mode_still_reads() {
    use serde::Deserialize;
    use serde::de::value::{Error, MapDeserializer};
    // The fields a report had before secure aggregation, and nothing else.
    let stored = vec![
        ("tables", vec!["patient".to_string()]),
        ("columns", vec!["patient.sex".to_string()]),
        ("aggregates", vec!["count(*)".to_string()]),
        ("group_by", vec!["patient.sex".to_string()]),
    ];
    let report = ern_queries::ValidationReport::deserialize(MapDeserializer::<_, Error>::new(
        stored.into_iter(),
    ))
    .expect("an old report reads");
    assert_eq!(report.mode, "");
    assert!(report.domain.is_empty());
    assert_eq!(report.cells, 0);
    assert_eq!(report.per_site_reason, None);
}

/// Tables with the extremes of every declared range, NULLs, codes in and out of the
/// reference, registered beside the shipped reference tables.
fn extreme_store() -> datafusion::prelude::SessionContext {
    use arrow::array::{BooleanArray, Date32Array, Int32Array, RecordBatch, StringArray};
    use ern_queries::schema;
    fn text(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }
    fn ints(values: &[Option<i32>]) -> ArrayRef {
        Arc::new(Int32Array::from(values.to_vec()))
    }
    fn bools(values: &[Option<bool>]) -> ArrayRef {
        Arc::new(BooleanArray::from(values.to_vec()))
    }
    fn dates(n: usize) -> ArrayRef {
        Arc::new(Date32Array::from(vec![None; n]))
    }
    let pids = [
        Some("a"),
        Some("b"),
        Some("c"),
        Some("d"),
        Some("e"),
        Some("f"),
    ];
    let patient = RecordBatch::try_new(
        schema::patient(),
        vec![
            text(&pids),
            ints(&[
                Some(1880),
                Some(2100),
                Some(1950),
                Some(1999),
                Some(2000),
                Some(1955),
            ]),
            ints(&[None, Some(1), Some(12), Some(6), None, Some(3)]),
            text(&[
                Some("female"),
                Some("male"),
                Some("undetermined"),
                Some("unknown"),
                Some("male"),
                Some("female"),
            ]),
            text(&[
                None,
                Some("alive"),
                Some("dead"),
                Some("lost_to_follow_up"),
                Some("alive"),
                None,
            ]),
            dates(6),
            dates(6),
            bools(&[None, Some(true), Some(false), Some(true), None, Some(false)]),
            text(&[
                Some("yes"),
                Some("no"),
                Some("unknown"),
                Some("yes"),
                Some("no"),
                Some("yes"),
            ]),
            bools(&[Some(true), None, Some(false), Some(true), Some(false), None]),
        ],
    )
    .expect("patient");
    let diagnosis = RecordBatch::try_new(
        schema::diagnosis(),
        vec![
            text(&[
                Some("a"),
                Some("b"),
                Some("c"),
                Some("d"),
                Some("e"),
                Some("a"),
            ]),
            text(&[
                Some("ORPHA:167848"),
                Some("ORPHA:154"),
                Some("ICD10:Q87.4"),
                Some("ORPHA:217569"),
                Some("ORPHA:247"),
                Some("OMIM:192600"),
            ]),
            text(&[
                Some("ORPHA"),
                Some("ORPHA"),
                Some("ICD10"),
                Some("ORPHA"),
                Some("ORPHA"),
                Some("OMIM"),
            ]),
            text(&[
                Some("confirmed"),
                Some("provisional"),
                Some("differential"),
                Some("refuted"),
                Some("confirmed"),
                Some("confirmed"),
            ]),
            text(&[
                None,
                Some("antenatal"),
                Some("at_birth"),
                Some("date"),
                Some("undetermined"),
                None,
            ]),
            dates(6),
            dates(6),
            ints(&[Some(0), Some(150), None, Some(3), Some(150), Some(0)]),
            ints(&[Some(150), Some(0), Some(7), None, Some(150), Some(0)]),
        ],
    )
    .expect("diagnosis");
    let genetic = RecordBatch::try_new(
        schema::genetic_finding(),
        vec![
            text(&[Some("a"), Some("b"), Some("c")]),
            text(&[Some("HGNC:7577"), Some("HGNC:7551"), Some("HGNC:1")]),
            text(&[Some("MYH7"), None, Some("X")]),
            text(&[None, Some("NM_000257.4:c.1208G>A"), None]),
            text(&[None, Some("homozygous"), Some("compound_heterozygous")]),
            bools(&[Some(true), None, Some(false)]),
        ],
    )
    .expect("genetic_finding");
    let phenotype = RecordBatch::try_new(
        schema::phenotype(),
        vec![
            text(&[Some("a"), Some("b"), Some("d")]),
            text(&[Some("HP:0001639"), Some("HP:0001639"), Some("HP:0000001")]),
            bools(&[Some(false), Some(true), Some(false)]),
        ],
    )
    .expect("phenotype");
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        ern_queries::catalog::session_config(),
    );
    for (name, batch) in [
        ("patient", patient),
        ("diagnosis", diagnosis),
        ("genetic_finding", genetic),
        ("phenotype", phenotype),
        ("orpha_term", reference::orpha_term_batch().expect("terms")),
        (
            "orpha_closure",
            reference::orpha_closure_batch().expect("closure"),
        ),
    ] {
        ctx.register_batch(name, batch).expect("register");
    }
    ern_queries::catalog::register_ern_functions(&ctx);
    ctx
}

/// Soundness on data: for every accepted question of the validation suite and of this
/// file that is secure, every group the barrier forms on a store of extremes lies in
/// the domain.
#[tokio::test]
async fn every_group_of_a_store_of_extremes_lies_in_its_domain() {
    use datafusion::logical_expr::LogicalPlanBuilder;
    let ctx = extreme_store();
    let state = ctx.state();
    let mut questions: Vec<String> = ern_queries::casefile::parse(include_str!("validation.cases"))
        .expect("validation.cases")
        .into_iter()
        .filter(|case| case.verdict.trim() == "accepted")
        .map(|case| case.sql)
        .collect();
    let this_file = include_str!("domain.rs");
    questions.extend(
        this_file
            .split('"')
            .filter(|part| part.starts_with("SELECT ") && !part.contains('\\'))
            .map(str::to_string),
    );
    let (mut secure_questions, mut groups_checked) = (0, 0);
    for sql in &questions {
        let Ok(query) = Planner::new().plan(sql, &state).await else {
            continue;
        };
        let barrier = query.barrier();
        let AggregationMode::Secure(domain) = derive(barrier) else {
            continue;
        };
        secure_questions += 1;
        if barrier.group_exprs.is_empty() {
            continue;
        }
        let groups = LogicalPlanBuilder::from(barrier.input.as_ref().clone())
            .aggregate(
                barrier.group_exprs.clone(),
                Vec::<datafusion::logical_expr::Expr>::new(),
            )
            .and_then(LogicalPlanBuilder::build)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let frame = ctx
            .execute_logical_plan(groups)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let batches = frame
            .collect()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for batch in batches {
            let cells = domain
                .cells_of_rows(batch.columns(), batch.num_rows())
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            for (row, cell) in cells.iter().enumerate() {
                groups_checked += 1;
                assert!(
                    cell.is_some(),
                    "{sql}: group {row} of {batch:?} is outside {:?}",
                    domain.describe()
                );
            }
        }
    }
    assert!(
        secure_questions > 40,
        "only {secure_questions} secure questions"
    );
    println!("{secure_questions} secure questions, {groups_checked} groups");
    assert!(groups_checked > 100, "only {groups_checked} groups checked");
}

/// A planning catalogue as a node sees its store: the same six tables, empty, with every
/// string column of the patient tables as `Utf8View` (what DataFusion reads Parquet
/// strings as), and the reference tables' too when `reference_views`.
fn view_catalogue(reference_views: bool) -> datafusion::prelude::SessionContext {
    use arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use ern_queries::schema;
    let ctx = datafusion::prelude::SessionContext::new_with_config(
        ern_queries::catalog::session_config(),
    );
    for table in ern_queries::allowlist::TABLES {
        let table_schema = schema::by_name(table).expect("a table of the schema");
        let as_views = reference_views || schema::PATIENT_TABLES.contains(table);
        let fields: Vec<Field> = table_schema
            .fields()
            .iter()
            .map(|field| match field.data_type() {
                DataType::Utf8 if as_views => {
                    field.as_ref().clone().with_data_type(DataType::Utf8View)
                }
                _ => field.as_ref().clone(),
            })
            .collect();
        let empty = MemTable::try_new(Arc::new(Schema::new(fields)), vec![vec![]]).expect("table");
        ctx.register_table(*table, Arc::new(empty))
            .expect("register");
    }
    ern_queries::catalog::register_ern_functions(&ctx);
    ctx
}

/// The coordinator plans against in-memory `Utf8` tables, a node against Parquet read as
/// `Utf8View` (red team: a join `d.code = t.orpha_code` proved the code's domain at the
/// coordinator only, so every node refused the round the coordinator started). Every
/// question of the validation suite and of this file gets the same mode, the same cells
/// and the same digest from both.
#[tokio::test]
async fn string_views_derive_the_coordinators_domain() {
    let coordinator = planning_state().expect("planning state");
    let mut questions: Vec<String> = ern_queries::casefile::parse(include_str!("validation.cases"))
        .expect("validation.cases")
        .into_iter()
        .filter(|case| case.verdict.trim() == "accepted")
        .map(|case| case.sql)
        .collect();
    questions.extend(
        include_str!("domain.rs")
            .split('"')
            .filter(|part| part.starts_with("SELECT ") && !part.contains('\\'))
            .map(str::to_string),
    );
    let mut secure_questions = 0;
    for reference_views in [false, true] {
        let node = view_catalogue(reference_views).state();
        for sql in &questions {
            let Ok(expected) = Planner::new().plan(sql, &coordinator).await else {
                continue;
            };
            let got = Planner::new()
                .plan(sql, &node)
                .await
                .unwrap_or_else(|refusal| panic!("{sql}: refused on views: {refusal:?}"));
            let summary = |plan: &QueryPlan| {
                let mode = plan.mode();
                (
                    mode.name(),
                    mode.domain().map(SecureDomain::cells),
                    mode.domain().map(SecureDomain::digest),
                    mode.domain().map(SecureDomain::describe),
                )
            };
            assert_eq!(
                summary(&got),
                summary(&expected),
                "{sql} (reference tables as views: {reference_views}): {:?} vs {:?}",
                got.mode(),
                expected.mode()
            );
            if let Some(domain) = got.mode().domain() {
                secure_questions += 1;
                for key in &domain.keys {
                    assert!(
                        !matches!(key.data_type, DataType::Utf8View | DataType::LargeUtf8),
                        "{sql}: {key:?}"
                    );
                }
            }
        }
    }
    assert!(
        secure_questions > 80,
        "only {secure_questions} secure questions"
    );
    // The red team's question, named: a code proved by its join to the reference.
    let sql = "SELECT d.code AS k, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d JOIN orpha_term t ON t.orpha_code = d.code GROUP BY d.code";
    let node = Planner::new()
        .plan(sql, &view_catalogue(false).state())
        .await
        .expect("plan");
    let domain = node.mode().domain().expect("secure at the node");
    assert_eq!(domain.cells(), 227);
    assert_eq!(domain.digest(), secure(sql).await.digest());
}
