//! The node engine on a real store: approvals, suppression under k checked against an
//! independent DataFusion computation, refusals, failures and the audit chain.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{named_steward, plain_context, plain_sql, synthetic_store, text_rows};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::approval::{self, ApprovalError};
use ern_node::audit::{self, AUDIT_FILE, AuditError, Outcome};
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy, QueryRequest};
use ern_node::failure::FailureCategory;
use ern_node::pseudonym::Pseudonymiser;
use ern_node::steward_key::StewardSigningKey;
use ern_queries::Rule;

const SITE: &str = "site-a";
const STUDY: &str = "study-1";

struct Fixture {
    _dir: tempfile::TempDir,
    store: PathBuf,
    steward: StewardSigningKey,
    stranger: StewardSigningKey,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn fixture(patients: usize) -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = synthetic_store(dir.path(), patients, 9);
    let steward = named_steward(dir.path(), "steward");
    let stranger = named_steward(dir.path(), "stranger");
    Fixture {
        _dir: dir,
        store,
        steward,
        stranger,
    }
}

impl Fixture {
    fn policy(&self) -> NodePolicy {
        NodePolicy::new(SITE, vec![self.steward.public_key()])
    }

    async fn engine(&self) -> NodeEngine {
        NodeEngine::open(&self.store, self.policy())
            .await
            .expect("open engine")
    }

    fn request(&self, sql: &str) -> QueryRequest {
        let approval = approval::sign(&self.steward, sql, SITE, STUDY, now() + 3600).expect("sign");
        QueryRequest {
            sql: sql.to_string(),
            study_id: STUDY.to_string(),
            approval,
        }
    }
}

fn sorted_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut rows = text_rows(batches);
    rows.sort();
    rows
}

#[tokio::test]
async fn groups_under_k_are_suppressed_and_the_rest_are_exact() {
    let fixture = fixture(3000);
    let engine = fixture.engine().await;
    let sql = "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex";
    let released = engine
        .execute(&fixture.request(sql))
        .await
        .expect("released");

    let independent = plain_sql(&fixture.store, sql).await;
    let all = sorted_rows(&independent);
    let expected: Vec<Vec<String>> = all
        .iter()
        .filter(|r| r[2].parse::<i64>().expect("count") >= 5)
        .cloned()
        .collect();
    let small = all.len() - expected.len();
    assert!(small > 0, "the fixture should have groups under k");
    assert!(!expected.is_empty());
    assert_eq!(sorted_rows(&released.batches), expected);
    assert_eq!(released.groups_released, expected.len());
    assert_eq!(released.groups_suppressed, small);
    assert_eq!(
        released.schema.fields().len(),
        3,
        "the hidden patient count must be gone"
    );
    for batch in &released.batches {
        let counts = batch.column(2).as_primitive::<Int64Type>();
        assert!(counts.iter().all(|c| c.is_some_and(|c| c >= 5)));
    }
}

#[tokio::test]
async fn a_small_total_and_an_empty_total_look_the_same() {
    let fixture = fixture(2000);
    let engine = fixture.engine().await;
    let ctx = plain_context(&fixture.store).await;
    // Find a birth year with 1 to 4 patients.
    let years = ctx
        .sql("SELECT birth_year, COUNT(*) AS n FROM patient GROUP BY birth_year HAVING COUNT(*) BETWEEN 1 AND 4")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let year = years
        .iter()
        .find(|b| b.num_rows() > 0)
        .map(|b| {
            b.column(0)
                .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
                .value(0)
        })
        .expect("a rare year");
    let small = engine
        .execute(&fixture.request(&format!(
            "SELECT COUNT(*) AS n FROM patient WHERE birth_year = {year}"
        )))
        .await
        .expect("ran");
    let empty = engine
        .execute(&fixture.request("SELECT COUNT(*) AS n FROM patient WHERE birth_year = 1800"))
        .await
        .expect("ran");
    for released in [&small, &empty] {
        assert_eq!(released.groups_released, 0);
        assert_eq!(
            released
                .batches
                .iter()
                .map(RecordBatch::num_rows)
                .sum::<usize>(),
            0
        );
    }
    assert_eq!(small.schema, empty.schema);
}

#[tokio::test]
async fn approvals_must_match_query_site_study_key_and_time() {
    let fixture = fixture(500);
    let engine = fixture.engine().await;
    let sql = "SELECT sex, COUNT(DISTINCT pid) AS patients FROM patient GROUP BY sex";
    assert!(engine.execute(&fixture.request(sql)).await.is_ok());

    let refused = |result: Result<_, ExecuteError>| match result {
        Err(ExecuteError::Approval(e)) => e,
        other => panic!("expected an approval refusal, got {other:?}"),
    };
    let mut expired = fixture.request(sql);
    expired.approval = approval::sign(&fixture.steward, sql, SITE, STUDY, now() - 1).expect("sign");
    assert_eq!(
        refused(engine.execute(&expired).await),
        ApprovalError::Expired
    );

    let mut other_site = fixture.request(sql);
    other_site.approval =
        approval::sign(&fixture.steward, sql, "site-b", STUDY, now() + 60).expect("sign");
    assert_eq!(
        refused(engine.execute(&other_site).await),
        ApprovalError::OtherSite
    );

    let mut other_query = fixture.request(sql);
    other_query.sql = format!("{sql} ");
    assert_eq!(
        refused(engine.execute(&other_query).await),
        ApprovalError::QueryAltered
    );

    let mut other_study = fixture.request(sql);
    other_study.study_id = "study-2".into();
    assert_eq!(
        refused(engine.execute(&other_study).await),
        ApprovalError::OtherStudy
    );

    let mut unknown = fixture.request(sql);
    unknown.approval =
        approval::sign(&fixture.stranger, sql, SITE, STUDY, now() + 60).expect("sign");
    assert_eq!(
        refused(engine.execute(&unknown).await),
        ApprovalError::UnknownKey
    );

    let mut flipped = fixture.request(sql);
    flipped.approval.signature[10] ^= 0x01;
    assert_eq!(
        refused(engine.execute(&flipped).await),
        ApprovalError::BadSignature
    );

    // Re-using a valid signature with a longer deadline breaks the signature.
    let mut extended = fixture.request(sql);
    extended.approval.expires_at += 86_400;
    assert_eq!(
        refused(engine.execute(&extended).await),
        ApprovalError::BadSignature
    );
}

#[tokio::test]
async fn the_node_refuses_by_rule_even_with_an_approval() {
    let fixture = fixture(500);
    let engine = fixture.engine().await;
    for (sql, rule) in [
        (
            "SELECT MAX(birth_year) FROM patient",
            Rule::BarrierAggregates,
        ),
        (
            "SELECT pid, COUNT(*) FROM patient GROUP BY pid",
            Rule::PidUse,
        ),
        ("SELECT * FROM patient", Rule::AggregationBarrier),
        (
            "SELECT COUNT(*) FROM patient WHERE repeat(sex, 1000000) = ''",
            Rule::AllowedFunctions,
        ),
        (
            "SELECT COUNT(*) FROM patient WHERE 1 / (birth_year - 1950) > 0",
            Rule::NoDataInErrors,
        ),
        ("DROP TABLE patient", Rule::OneQuery),
    ] {
        match engine.execute(&fixture.request(sql)).await {
            Err(ExecuteError::Refused(refusal)) => {
                assert_eq!(refusal.rule, rule, "{sql}: {refusal}")
            }
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
}

/// Running out of the memory pool is a limit of rule 8, refused by name; the detail (how
/// much memory, which operator) stays in the audit log.
#[tokio::test]
async fn running_out_of_memory_is_refused_by_rule_8_and_detailed_only_in_the_audit_log() {
    let fixture = fixture(3000);
    let mut policy = fixture.policy();
    policy.memory_limit = 4 * 1024;
    let engine = NodeEngine::open(&fixture.store, policy)
        .await
        .expect("open");
    let sql = "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex";
    let error = engine
        .execute(&fixture.request(sql))
        .await
        .expect_err("out of memory");
    let ExecuteError::Limit {
        refusal,
        category,
        reference,
    } = &error
    else {
        panic!("expected a refusal, got {error:?}")
    };
    assert_eq!(refusal.rule, Rule::ResourceLimits);
    assert_eq!(*category, FailureCategory::MemoryLimit);
    let message = error.to_string();
    assert!(!message.contains("bytes"), "the detail leaked: {message}");
    let log = std::fs::read_to_string(fixture.store.join(AUDIT_FILE)).expect("audit log");
    let last: audit::AuditEntry =
        serde_json::from_str(log.lines().last().expect("entry")).expect("json");
    assert_eq!(last.outcome, Outcome::Refused);
    assert_eq!(last.rule.as_deref(), Some("resource-limits"));
    assert_eq!(last.category.as_deref(), Some("memory-limit"));
    assert_eq!(last.reference.as_ref(), Some(reference));
    assert!(last.detail.is_some_and(|d| !d.is_empty()));
}

/// Issue 17: a failure tells what kind it is (the store's, not the question's) and where
/// the steward finds the detail, without the detail.
#[tokio::test]
async fn a_store_gone_under_the_node_fails_as_store_unavailable_with_a_reference() {
    let fixture = fixture(200);
    let engine = NodeEngine::open(&fixture.store, fixture.policy())
        .await
        .expect("open");
    std::fs::remove_file(ern_node::store::table_path(&fixture.store, "diagnosis"))
        .expect("remove a table");
    let sql = "SELECT d.code, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY d.code";
    let error = engine
        .execute(&fixture.request(sql))
        .await
        .expect_err("the table is gone");
    let ExecuteError::Failed {
        reference,
        category,
    } = &error
    else {
        panic!("expected a failure, got {error:?}")
    };
    assert_eq!(*category, FailureCategory::StoreUnavailable, "{error}");
    let message = error.to_string();
    assert!(message.contains("store-unavailable"), "{message}");
    assert!(!message.contains("parquet"), "the detail leaked: {message}");
    let log = std::fs::read_to_string(fixture.store.join(AUDIT_FILE)).expect("audit log");
    let last: audit::AuditEntry =
        serde_json::from_str(log.lines().last().expect("entry")).expect("json");
    assert_eq!(last.outcome, Outcome::Failed);
    assert_eq!(last.reference.as_ref(), Some(reference));
    assert_eq!(last.category.as_deref(), Some("store-unavailable"));
    assert!(
        last.detail.is_some_and(|d| d.contains("diagnosis")),
        "the steward's detail names the file"
    );
}

#[tokio::test]
async fn k_comes_from_the_node_policy_only() {
    let fixture = fixture(500);
    let mut policy = fixture.policy();
    policy.k = 1;
    assert!(
        NodeEngine::open(&fixture.store, policy).await.is_err(),
        "k = 1 must be refused"
    );
    let mut strict = fixture.policy();
    strict.k = 1000;
    let engine = NodeEngine::open(&fixture.store, strict)
        .await
        .expect("open");
    let released = engine
        .execute(&fixture.request("SELECT sex, COUNT(DISTINCT pid) AS n FROM patient GROUP BY sex"))
        .await
        .expect("ran");
    assert_eq!(
        released.groups_released, 0,
        "no sex has 1000 patients in 500"
    );
}

async fn audited_fixture() -> (Fixture, PathBuf) {
    let fixture = fixture(300);
    let engine = fixture.engine().await;
    let sql = "SELECT sex, COUNT(DISTINCT pid) AS n FROM patient GROUP BY sex";
    for _ in 0..3 {
        engine.execute(&fixture.request(sql)).await.expect("ran");
    }
    let _ = engine
        .execute(&fixture.request("SELECT MIN(birth_year) FROM patient"))
        .await;
    let mut stale = fixture.request(sql);
    stale.approval.expires_at = 1;
    let _ = engine.execute(&stale).await;
    let log = fixture.store.join(AUDIT_FILE);
    (fixture, log)
}

fn broken_entry(log: &Path) -> u64 {
    match audit::verify(log) {
        Err(AuditError::Broken { entry, .. }) => entry,
        other => panic!("expected a broken chain, got {other:?}"),
    }
}

#[tokio::test]
async fn every_request_is_audited_in_an_intact_chain() {
    let (fixture, log) = audited_fixture().await;
    let summary = audit::verify(&log).expect("intact");
    // The store the engine opened, then five requests.
    assert_eq!(summary.entries, 6);
    let entries: Vec<audit::AuditEntry> = std::fs::read_to_string(&log)
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(entries[0].outcome, Outcome::Store);
    assert!(entries[0].store_generation.is_some(), "{:?}", entries[0]);
    let entries = &entries[1..];
    let outcomes: Vec<(Outcome, Option<String>)> = entries
        .iter()
        .map(|e| (e.outcome, e.rule.clone()))
        .collect();
    assert_eq!(outcomes[0], (Outcome::Accepted, None));
    assert_eq!(
        outcomes[3],
        (Outcome::Refused, Some("barrier-aggregates".into()))
    );
    assert_eq!(
        outcomes[4],
        (Outcome::Refused, Some("approval-bad-signature".into()))
    );
    assert_eq!(
        entries[0].key_id.as_deref(),
        Some(fixture.steward.public_key().key_id().as_str())
    );
    assert_eq!(
        entries[0].query_hash,
        ern_queries::query_hash("SELECT sex, COUNT(DISTINCT pid) AS n FROM patient GROUP BY sex")
    );
    // Reopening continues the chain.
    let engine = fixture.engine().await;
    engine
        .execute(&fixture.request("SELECT COUNT(*) AS n FROM patient"))
        .await
        .expect("ran");
    // The store opened again, and the request.
    assert_eq!(audit::verify(&log).expect("intact").entries, 8);
}

#[tokio::test]
async fn an_edited_byte_is_found_at_its_entry() {
    let (_fixture, log) = audited_fixture().await;
    let text = std::fs::read_to_string(&log).expect("log");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[2] = lines[2].replacen("\"rows_released\":", "\"rows_released\":1", 1);
    std::fs::write(&log, lines.join("\n") + "\n").expect("write");
    assert_eq!(broken_entry(&log), 3);
}

#[tokio::test]
async fn a_deleted_entry_is_found() {
    let (_fixture, log) = audited_fixture().await;
    let text = std::fs::read_to_string(&log).expect("log");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    std::fs::write(&log, lines.join("\n") + "\n").expect("write");
    assert_eq!(broken_entry(&log), 2);
}

#[tokio::test]
async fn swapped_entries_are_found() {
    let (_fixture, log) = audited_fixture().await;
    let text = std::fs::read_to_string(&log).expect("log");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(2, 3);
    std::fs::write(&log, lines.join("\n") + "\n").expect("write");
    assert_eq!(broken_entry(&log), 3);
}

#[tokio::test]
async fn a_broken_log_stops_the_node_from_opening() {
    let (fixture, log) = audited_fixture().await;
    let text = std::fs::read_to_string(&log).expect("log");
    std::fs::write(&log, text.replacen("study-1", "study-X", 1)).expect("write");
    assert!(
        NodeEngine::open(&fixture.store, fixture.policy())
            .await
            .is_err()
    );
}

// Multi-threaded, as a node runs: the time limit is watched from another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_and_output_limits_refuse_with_rule_8() {
    let fixture = fixture(3000);
    let sql = "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex";
    let mut hurried = fixture.policy();
    hurried.time_limit = std::time::Duration::from_millis(1);
    let engine = NodeEngine::open(&fixture.store, hurried)
        .await
        .expect("open");
    // A three-way join on pid takes far longer than a millisecond.
    let slow = "SELECT p.sex, COUNT(*) AS n FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN phenotype f ON f.pid = d.pid GROUP BY p.sex";
    match engine.execute(&fixture.request(slow)).await {
        Err(ExecuteError::Limit {
            refusal, category, ..
        }) => {
            assert_eq!(refusal.rule, Rule::ResourceLimits, "{refusal}");
            assert_eq!(category, FailureCategory::TimeLimit);
        }
        other => panic!("expected a time-limit refusal, got {other:?}"),
    }
    let mut capped = fixture.policy();
    capped.max_groups = 1;
    let engine = NodeEngine::open(&fixture.store, capped)
        .await
        .expect("open");
    match engine.execute(&fixture.request(sql)).await {
        Err(ExecuteError::Limit {
            refusal, category, ..
        }) => {
            assert_eq!(refusal.rule, Rule::ResourceLimits);
            assert_eq!(category, FailureCategory::OutputCap);
            assert!(refusal.to_string().contains("cap of 1"), "{refusal}");
        }
        other => panic!("expected an output-cap refusal, got {other:?}"),
    }
}

/// Codes with 1 to 4 patients in the store (small cells an attacker would like to see).
async fn rare_codes(store: &Path) -> Vec<String> {
    let batches = plain_context(store)
        .await
        .sql("SELECT code FROM diagnosis GROUP BY code HAVING COUNT(DISTINCT pid) BETWEEN 1 AND 4 ORDER BY code")
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    text_rows(&batches)
        .into_iter()
        .map(|mut row| row.remove(0))
        .collect()
}

/// A cross join once let every group borrow all patients of `p` to reach k while the
/// codes came from `d`; now no cross join of patient tables is planned at all (rule 3).
#[tokio::test]
async fn a_cross_join_cannot_borrow_patients_to_reach_k() {
    let fixture = fixture(3000);
    let engine = fixture.engine().await;
    let sql =
        "SELECT d.code, COUNT(DISTINCT d.pid) AS n FROM patient p, diagnosis d GROUP BY d.code";
    match engine.execute(&fixture.request(sql)).await {
        Err(ExecuteError::Refused(refusal)) => assert_eq!(refusal.rule, Rule::PidUse, "{refusal}"),
        other => panic!("expected a pid-use refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn an_outer_join_cannot_release_one_patients_value() {
    let fixture = fixture(3000);
    let engine = fixture.engine().await;
    let rare = rare_codes(&fixture.store).await;
    for code in rare.iter().take(3) {
        // Thousands of patients per sex, but only a handful with the rare code: the
        // nullable side's values carry the ON condition into the average (rule 4).
        let sql = format!(
            "SELECT p.sex, AVG(d.age_at_diagnosis) AS mean_age, COUNT(*) AS n FROM patient p LEFT JOIN diagnosis d ON p.pid = d.pid AND d.code = '{code}' GROUP BY p.sex"
        );
        match engine.execute(&fixture.request(&sql)).await {
            Err(ExecuteError::Refused(refusal)) => {
                assert_eq!(
                    refusal.rule,
                    ern_queries::Rule::BarrierAggregates,
                    "{refusal}"
                );
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_sum_needs_k_patients_with_a_value() {
    let fixture = fixture(3000);
    let engine = fixture.engine().await;
    let sql = "SELECT d.code, SUM(d.age_at_onset) AS total FROM diagnosis d GROUP BY d.code";
    let released = engine.execute(&fixture.request(sql)).await.expect("ran");
    let with_values = plain_sql(&fixture.store, "SELECT code, COUNT(DISTINCT pid) AS n FROM diagnosis WHERE age_at_onset IS NOT NULL GROUP BY code").await;
    let counts: std::collections::HashMap<String, i64> = text_rows(&with_values)
        .into_iter()
        .map(|r| (r[0].clone(), r[1].parse().expect("n")))
        .collect();
    assert!(released.groups_released > 0);
    for row in text_rows(&released.batches) {
        let n = counts.get(&row[0]).copied().unwrap_or(0);
        assert!(
            n >= 5,
            "{} released a sum over {n} patients with a value",
            row[0]
        );
    }
}

/// An engine whose dominance rule never bites (it is tested on its own below), for the
/// tests of the other hidden counts.
async fn engine_without_dominance(fixture: &Fixture) -> NodeEngine {
    let mut policy = fixture.policy();
    policy.dominance = ern_queries::Dominance {
        top: 1,
        max_share: 1.0,
    };
    NodeEngine::open(&fixture.store, policy)
        .await
        .expect("open")
}

/// Red team round 3: `COUNT(*) - COUNT(x)` read how many patients of a group had no `x`,
/// however few. The patients an aggregate leaves out (no value, or a zero contribution to
/// a sum) must be none or at least k, checked against an independent computation.
#[tokio::test]
async fn the_patients_an_aggregate_leaves_out_are_none_or_at_least_k() {
    let fixture = fixture(3000);
    let engine = engine_without_dominance(&fixture).await;
    // COUNT(x) releases how many have a value; SUM(x) beside it does too (red team round
    // 4: SUM(x + y - y) sums x over the patients without y).
    let sql = "SELECT d.code, COUNT(d.age_at_onset) AS with_onset, SUM(d.age_at_onset + 1 - 1) AS total FROM diagnosis d GROUP BY d.code";
    let released = engine.execute(&fixture.request(sql)).await.expect("ran");
    let everyone = "COUNT(DISTINCT pid)";
    let with_value = "COUNT(DISTINCT CASE WHEN age_at_onset IS NOT NULL THEN pid END)";
    let nonzero = "COUNT(DISTINCT CASE WHEN age_at_onset <> 0 THEN pid END)";
    // A patient lacks the value if any of their rows does (red team round 5).
    let lacking = "COUNT(DISTINCT CASE WHEN age_at_onset IS NULL THEN pid END)";
    let independent = format!(
        "SELECT code, COUNT(age_at_onset) AS with_onset, SUM(age_at_onset) AS total FROM diagnosis GROUP BY code \
         HAVING {everyone} >= 5 AND {with_value} >= 5 AND {nonzero} >= 5 \
         AND {lacking} NOT BETWEEN 1 AND 4"
    );
    let expected = sorted_rows(&plain_sql(&fixture.store, &independent).await);
    assert!(!expected.is_empty());
    assert_eq!(sorted_rows(&released.batches), expected);
    let without_the_rule = format!(
        "SELECT code FROM diagnosis GROUP BY code HAVING {everyone} >= 5 AND {with_value} >= 5 AND {nonzero} >= 5"
    );
    let counted = text_rows(&plain_sql(&fixture.store, &without_the_rule).await).len();
    assert!(
        counted > expected.len(),
        "the fixture must have a code with 1-4 patients left out ({counted} codes pass k)"
    );
}

/// Red team round 6: padding the patients who lack `x` with k who lack every argument
/// let `SUM(a) - SUM(a + y - y)` read the one patient with `a` but without `y`. Between
/// two released arguments, the patients with a row where one has a value and the other
/// has none must be none or at least k too (against plain DataFusion).
#[tokio::test]
async fn two_released_arguments_cannot_differ_by_fewer_than_k_patients() {
    let fixture = fixture(3000);
    let engine = engine_without_dominance(&fixture).await;
    let sql = "SELECT d.code, SUM(d.age_at_diagnosis) AS dx, SUM(d.age_at_onset) AS onset FROM diagnosis d GROUP BY d.code";
    let released = engine.execute(&fixture.request(sql)).await.expect("ran");
    let patients = |condition: &str| format!("COUNT(DISTINCT CASE WHEN {condition} THEN pid END)");
    let at_least_k = |condition: &str| format!("{} >= 5", patients(condition));
    let none_or_k = |condition: &str| format!("{} NOT BETWEEN 1 AND 4", patients(condition));
    let independent = format!(
        "SELECT code, SUM(age_at_diagnosis) AS dx, SUM(age_at_onset) AS onset FROM diagnosis GROUP BY code HAVING \
         COUNT(DISTINCT pid) >= 5 AND {} AND {} AND {} AND {} AND {} AND {}",
        at_least_k("age_at_diagnosis <> 0"),
        at_least_k("age_at_onset <> 0"),
        none_or_k("age_at_diagnosis IS NULL"),
        none_or_k("age_at_onset IS NULL"),
        none_or_k("age_at_diagnosis IS NOT NULL AND age_at_onset IS NULL"),
        none_or_k("age_at_onset IS NOT NULL AND age_at_diagnosis IS NULL"),
    );
    let expected = sorted_rows(&plain_sql(&fixture.store, &independent).await);
    assert!(!expected.is_empty());
    assert_eq!(sorted_rows(&released.batches), expected);
}

#[tokio::test]
async fn patients_are_counted_distinctly_unless_the_store_proves_one_row_each() {
    let fixture = fixture(600);
    assert_eq!(
        fixture
            .engine()
            .await
            .site_facts()
            .one_row_per_patient
            .iter()
            .collect::<Vec<_>>(),
        vec!["patient"],
        "an ingested store holds one row per patient"
    );

    // A store whose patient table holds every patient twice (no ingest writes one).
    let patient = ern_node::store::table_path(&fixture.store, "patient");
    let rows = plain_context(&fixture.store)
        .await
        .table("patient")
        .await
        .expect("table")
        .collect()
        .await
        .expect("rows");
    let mut doubled = rows.clone();
    doubled.extend(rows);
    let batch =
        datafusion::arrow::compute::concat_batches(&doubled[0].schema(), &doubled).expect("concat");
    ern_ingest::store::write_table(&patient, "patient", &batch).expect("write");

    let engine = fixture.engine().await;
    assert!(engine.site_facts().one_row_per_patient.is_empty());
    let sql = "SELECT sex, COUNT(DISTINCT pid) AS patients FROM patient GROUP BY sex";
    let released = engine
        .execute(&fixture.request(sql))
        .await
        .expect("released");
    let independent = plain_sql(&fixture.store, sql).await;
    let expected: Vec<Vec<String>> = sorted_rows(&independent)
        .into_iter()
        .filter(|r| r[1].parse::<i64>().expect("count") >= 5)
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(sorted_rows(&released.batches), expected);
}

/// The trap of a join that repeats a patient: a group whose value rows are many but whose
/// patients with a value are few must still be suppressed.
#[tokio::test]
async fn repeated_rows_of_one_patient_do_not_reach_k() {
    let fixture = fixture(3000);
    let engine = fixture.engine().await;
    let from = "FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN phenotype f ON p.pid = f.pid GROUP BY p.sex, d.code";
    let sql = format!("SELECT p.sex, d.code, SUM(d.age_at_onset) AS total {from}");
    let released = engine.execute(&fixture.request(&sql)).await.expect("ran");
    let independent = plain_sql(&fixture.store, &format!(
            "SELECT p.sex, d.code, COUNT(DISTINCT CASE WHEN d.age_at_onset IS NOT NULL THEN p.pid END) AS patients, COUNT(d.age_at_onset) AS value_rows {from}"
        )).await;
    let groups: std::collections::HashMap<(String, String), (i64, i64)> = text_rows(&independent)
        .into_iter()
        .map(|r| {
            (
                (r[0].clone(), r[1].clone()),
                (r[2].parse().expect("n"), r[3].parse().expect("rows")),
            )
        })
        .collect();
    let traps = groups
        .values()
        .filter(|(patients, rows)| *patients < 5 && *rows >= 5)
        .count();
    assert!(traps > 0, "the fixture must hold the trap");
    assert!(released.groups_released > 0);
    for row in text_rows(&released.batches) {
        let (patients, _) = groups[&(row[0].clone(), row[1].clone())];
        assert!(
            patients >= 5,
            "({}, {}) released a sum over {patients} patients with a value",
            row[0],
            row[1]
        );
    }
}

#[tokio::test]
async fn a_small_registry_runs_in_one_partition() {
    let fixture = fixture(300);
    let ctx = ern_node::session::node_session(&fixture.store, 1 << 30)
        .await
        .expect("session");
    assert_eq!(ctx.state().config().target_partitions(), 1);
}

/// Rule 6's dominance rule, against an independent computation: per code, each patient's
/// contribution to `SUM(age_at_diagnosis)` is their own sum; a code is released only with
/// at least k patients, k of them contributing, none or at least k without a value, and
/// its largest contribution holding at
/// most the policy's share of the total (a (1, 30 %) rule here, so that it bites on a
/// small synthetic store).
#[tokio::test]
async fn a_sum_dominated_by_one_patient_is_dropped() {
    let fixture = fixture(3000);
    let mut policy = fixture.policy();
    policy.dominance = ern_queries::Dominance {
        top: 1,
        max_share: 0.3,
    };
    let engine = NodeEngine::open(&fixture.store, policy)
        .await
        .expect("open");
    let sql = "SELECT d.code, SUM(d.age_at_diagnosis) AS total FROM diagnosis d GROUP BY d.code";
    let released = engine.execute(&fixture.request(sql)).await.expect("ran");
    let independent = "WITH c AS (SELECT code, pid, SUM(age_at_diagnosis) AS v, COUNT(*) - COUNT(age_at_diagnosis) AS l FROM diagnosis GROUP BY code, pid) \
        SELECT code, SUM(v) AS total FROM c GROUP BY code \
        HAVING COUNT(DISTINCT pid) >= 5 AND COUNT(CASE WHEN v <> 0 THEN 1 END) >= 5 \
        AND COUNT(CASE WHEN l > 0 THEN 1 END) NOT BETWEEN 1 AND 4 \
        AND MAX(abs(v)) <= 0.3 * SUM(abs(v))";
    let expected = sorted_rows(&plain_sql(&fixture.store, independent).await);
    assert_eq!(sorted_rows(&released.batches), expected);
    let without_dominance = "WITH c AS (SELECT code, pid, SUM(age_at_diagnosis) AS v, COUNT(*) - COUNT(age_at_diagnosis) AS l FROM diagnosis GROUP BY code, pid) \
        SELECT code FROM c GROUP BY code \
        HAVING COUNT(DISTINCT pid) >= 5 AND COUNT(CASE WHEN v <> 0 THEN 1 END) >= 5 \
        AND COUNT(CASE WHEN l > 0 THEN 1 END) NOT BETWEEN 1 AND 4";
    let counted = text_rows(&plain_sql(&fixture.store, without_dominance).await).len();
    assert!(
        counted > expected.len(),
        "the fixture must have a code that only the dominance rule drops ({counted} codes pass k)"
    );
}

/// A node builds a question's plan once per execution: from the SQL it received, after
/// the approval holds; a retry answered from the stored release plans nothing, and a
/// request whose approval fails is never planned.
#[tokio::test]
async fn a_node_plans_each_execution_once() {
    let fixture = fixture(300);
    let engine = fixture.engine().await;
    let sql = "SELECT p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex";
    let request = fixture.request(sql);
    engine.execute(&request).await.expect("first");
    assert_eq!(engine.plans_built(), 1);
    engine.execute(&request).await.expect("retry");
    assert_eq!(engine.plans_built(), 1, "a retry is answered as stored");
    let mut forged = fixture.request("SELECT COUNT(*) AS n FROM patient");
    forged.sql = sql.into();
    assert!(engine.execute(&forged).await.is_err());
    assert_eq!(
        engine.plans_built(),
        1,
        "an approval that fails plans nothing"
    );
    let other = fixture.request("SELECT COUNT(*) AS n FROM patient");
    engine.execute(&other).await.expect("another question");
    assert_eq!(engine.plans_built(), 2);
}

/// Red team, 2026-12 (approval integrity): an approval replayed after the store was
/// refreshed released numbers that differed by one patient, with no steward involved.
/// Now the same approval on the same data returns the stored release without running,
/// and on refreshed data is refused as stale; a new approval runs.
#[tokio::test]
async fn an_approval_runs_once_per_store_generation() {
    let fixture = fixture(600);
    let sql = "SELECT p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex";
    let request = fixture.request(sql);
    let first = fixture
        .engine()
        .await
        .execute(&request)
        .await
        .expect("first");
    // A retry (a lost answer), also after the node restarted: the same bytes, no run.
    let retry = fixture
        .engine()
        .await
        .execute(&request)
        .await
        .expect("retry");
    assert_eq!(sorted_rows(&retry.batches), sorted_rows(&first.batches));
    assert_eq!(retry.groups_released, first.groups_released);
    let entries = audit::read_entries(&fixture.store.join(AUDIT_FILE)).expect("audit");
    let last = entries.last().expect("an entry");
    assert_eq!(last.outcome, Outcome::Accepted);
    assert!(
        last.detail.as_deref().is_some_and(|d| d.contains("retry")),
        "{last:?}"
    );

    // The store is refreshed (re-ingested; here with one patient fewer).
    let export = fixture._dir.path().join("exports").join("site-1");
    let patients = export.join("patient.csv");
    let text = std::fs::read_to_string(&patients).expect("patients");
    let mut lines: Vec<&str> = text.lines().collect();
    let removed = lines.remove(1).split(',').next().expect("id").to_string();
    std::fs::write(&patients, lines.join("\n") + "\n").expect("write");
    for file in ["diagnosis.csv", "genetic_finding.csv", "phenotype.csv"] {
        let path = export.join(file);
        let kept: Vec<String> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .filter(|line| line.split(',').next() != Some(removed.as_str()))
            .map(str::to_string)
            .collect();
        std::fs::write(&path, kept.join("\n") + "\n").expect("write");
    }
    ingest(
        &export,
        &Pseudonymiser::new(&[3u8; 32]),
        &fixture.store,
        &NoProgress,
    )
    .expect("re-ingest");
    let engine = fixture.engine().await;
    match engine.execute(&request).await {
        Err(ExecuteError::Approval(ApprovalError::Stale)) => {}
        other => panic!("expected approval-stale, got {other:?}"),
    }
    // A steward's new approval of the same question runs on the new data.
    let renewed = QueryRequest {
        approval: approval::sign(&fixture.steward, sql, SITE, STUDY, now() + 7200).expect("sign"),
        ..fixture.request(sql)
    };
    engine.execute(&renewed).await.expect("a new approval runs");
}

/// Red team, 2026-12: the node wrote the coordinator's question id into its audit log
/// unchecked (20 MB of log from 20 messages).
#[tokio::test]
async fn an_oversized_id_from_the_coordinator_is_not_logged() {
    let fixture = fixture(300);
    let engine = fixture.engine().await;
    let huge = "q".repeat(1 << 20);
    let request = QueryRequest {
        study_id: huge.clone(),
        ..fixture.request("SELECT COUNT(*) AS n FROM patient")
    };
    assert!(engine.execute(&request).await.is_err());
    let log = std::fs::read_to_string(fixture.store.join(AUDIT_FILE)).expect("log");
    assert!(log.len() < 10_000, "{} bytes of audit log", log.len());
    assert!(log.contains("(malformed id)"), "{log}");
}

/// Red team, 2026-12: with two heavy questions running, a node sent no heartbeat for 55 s.
/// Questions now run on threads of their own: the runtime that serves the link (here a
/// single thread, the harshest case) keeps its timers on time while one computes.
#[tokio::test(flavor = "current_thread")]
async fn the_link_runtime_keeps_its_timers_while_a_question_computes() {
    let fixture = fixture(3000);
    let mut policy = fixture.policy();
    policy.time_limit = std::time::Duration::from_secs(2);
    let engine = NodeEngine::open(&fixture.store, policy)
        .await
        .expect("open");
    let heavy = "SELECT p.sex, COUNT(*) AS n FROM patient p \
        JOIN phenotype a ON a.pid = p.pid JOIN phenotype b ON b.pid = a.pid \
        JOIN phenotype c ON c.pid = b.pid JOIN phenotype d ON d.pid = c.pid \
        JOIN phenotype e ON e.pid = d.pid JOIN phenotype f ON f.pid = e.pid \
        JOIN phenotype g ON g.pid = f.pid GROUP BY p.sex";
    let ticker = tokio::spawn(async {
        let mut longest = std::time::Duration::ZERO;
        let mut last = std::time::Instant::now();
        for _ in 0..30 {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            longest = longest.max(last.elapsed());
            last = std::time::Instant::now();
        }
        longest
    });
    let _ = engine.execute(&fixture.request(heavy)).await;
    let longest = ticker.await.expect("ticker");
    assert!(
        longest < std::time::Duration::from_millis(500),
        "a 50 ms timer waited {longest:?}"
    );
}

/// Red team, 2026-12: messages that failed to decode left no audit entry. Now each
/// leaves one, bounded whatever the decoder said.
#[tokio::test]
async fn an_undecodable_message_leaves_one_bounded_entry() {
    let fixture = fixture(300);
    let engine = fixture.engine().await;
    let garbage = format!(
        "failed to decode Protobuf message: {}",
        "\u{1b}x".repeat(1 << 19)
    );
    engine.audit_undecodable("internal", &garbage).await;
    let entries = audit::read_entries(&fixture.store.join(AUDIT_FILE)).expect("audit");
    let last = entries.last().expect("an entry");
    assert_eq!(last.rule.as_deref(), Some("undecodable-message"));
    assert!(
        last.detail.as_deref().is_some_and(|d| d.len() < 2000),
        "{last:?}"
    );
    assert!(!last.detail.as_deref().unwrap_or("").contains('\u{1b}'));
}
