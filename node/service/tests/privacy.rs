//! Differential privacy at the node, on real stores: repeats that gain nothing, a
//! differencing pair that no longer isolates a patient, budgets that run out, contribution
//! bounding, and secure shares whose sum has the noise the policy asks for.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use common::{named_steward, synthetic_store, text_rows};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use ern_node::approval;
use ern_node::audit::{self, AUDIT_FILE, Outcome};
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy, QueryRequest};
use ern_node::privacy::noise::{NoiseSeed, noise_secure_vector};
use ern_node::privacy::policy::{Epsilon, PrivacyPolicy, QuestionNoise};
use ern_node::privacy::secret::NoiseSecret;
use ern_node::steward_key::StewardSigningKey;
use ern_queries::{Bounding, Planner, SiteFacts};
use ern_test_support::network::{Patient, store_of};

const SITE: &str = "site-a";
const STUDY: &str = "study-1";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A request for `sql` in `study`, approved by `steward`; `nonce` makes each approval a
/// new one (a new question id at the coordinator).
fn request(steward: &StewardSigningKey, sql: &str, study: &str, nonce: u64) -> QueryRequest {
    let approval =
        approval::sign(steward, sql, SITE, study, now() + 600 + nonce).expect("approval");
    QueryRequest {
        sql: sql.to_string(),
        study_id: study.to_string(),
        approval,
    }
}

/// A policy with noise on: `epsilon` per question, `budget` per study, and a fresh
/// noise secret in `dir` under `name`.
fn private_policy(
    steward: &StewardSigningKey,
    dir: &Path,
    name: &str,
    epsilon: f64,
    budget: f64,
) -> NodePolicy {
    let secret = NoiseSecret::generate(&dir.join(name)).expect("noise secret");
    let mut policy = NodePolicy::new(SITE, vec![steward.public_key()]);
    policy.privacy = PrivacyPolicy {
        enabled: true,
        epsilon: Epsilon::from_decimal(epsilon).expect("epsilon"),
        budget_per_study: Epsilon::from_decimal(budget).expect("budget"),
        secret: Some(Arc::new(secret)),
        ..PrivacyPolicy::default()
    };
    policy
}

/// The one Int64 partial of a total (`SELECT COUNT(*) …`), or `None` if suppressed.
fn total(batches: &[RecordBatch]) -> Option<i64> {
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    Some(batch.column(0).as_primitive::<Int64Type>().value(0))
}

#[tokio::test]
async fn twenty_repeats_release_identical_values_and_are_charged_once() {
    let dir = tempfile::tempdir().expect("dir");
    let store = synthetic_store(dir.path(), 400, 3);
    let steward = named_steward(dir.path(), "steward");
    let policy = private_policy(&steward, dir.path(), "noise.key", 0.5, 2.0);
    let engine = NodeEngine::open(&store, policy).await.expect("engine");
    let sql = "SELECT sex, COUNT(*) AS n FROM patient GROUP BY sex";
    let mut first: Option<Vec<Vec<String>>> = None;
    for repeat in 0..20 {
        // New approvals (a new question id each), white space and comments varied: the
        // same question all the same.
        let text = format!("{sql} {}-- repeat {repeat}\n", " ".repeat(repeat as usize));
        let released = engine
            .execute(&request(&steward, &text, STUDY, repeat))
            .await
            .expect("released");
        assert!(!released.noise.is_empty(), "the release says it is noised");
        let rows = text_rows(&released.batches);
        match &first {
            None => first = Some(rows),
            Some(first) => assert_eq!(&rows, first, "repeat {repeat} drew other noise"),
        }
    }
    let (spent, budget) = engine.privacy_budgets();
    assert_eq!(
        spent,
        vec![(STUDY.to_string(), Epsilon::from_micro(500_000))]
    );
    assert_eq!(budget, Epsilon::from_micro(2_000_000));
    let charges = audit::read_entries(&store.join(AUDIT_FILE))
        .expect("audit")
        .into_iter()
        .filter(|entry| entry.outcome == Outcome::Charged)
        .count();
    assert_eq!(charges, 1, "one charge for twenty repeats");
}

/// A variance leaves the node as a count, a sum and a sum of squares (a 128-bit
/// decimal): each noised for how far one patient moves it, the sum of squares for the
/// square of the value's one-row bound (a month: 12, so 144), and the noisy release
/// still merges.
#[tokio::test]
async fn a_noised_variance_noises_its_sum_of_squares_for_the_square_of_the_bound() {
    let dir = tempfile::tempdir().expect("dir");
    let store = synthetic_store(dir.path(), 1000, 5);
    let steward = named_steward(dir.path(), "steward");
    let policy = private_policy(&steward, dir.path(), "noise.key", 0.5, 2.0);
    let engine = NodeEngine::open(&store, policy).await.expect("engine");
    let sql = "SELECT p.sex, VAR_SAMP(p.birth_month) AS v FROM patient p GROUP BY p.sex";
    let released = engine
        .execute(&request(&steward, sql, STUDY, 0))
        .await
        .expect("released");
    let scales: Vec<f64> = released.noise.iter().map(|noise| noise.scale).collect();
    assert_eq!(scales.len(), 3, "count, sum, sum of squares");
    assert_eq!(scales[1] / scales[0], 12.0, "{scales:?}");
    assert_eq!(scales[2] / scales[0], 144.0, "{scales:?}");
    assert!(released.groups_released > 0, "nothing released");
    let squares = released.schema.field(3).data_type().clone();
    assert_eq!(
        squares,
        datafusion::arrow::datatypes::DataType::Decimal128(38, 0)
    );
    let planning = ern_queries::catalog::planning_state().expect("planning");
    let plan = Planner::new().plan(sql, &planning).await.expect("plan");
    let merged = plan.merge(released.batches).await.expect("merge");
    assert!(merged.iter().map(RecordBatch::num_rows).sum::<usize>() > 0);
}

#[tokio::test]
async fn the_same_question_in_another_study_is_charged_there_with_the_same_noise() {
    let dir = tempfile::tempdir().expect("dir");
    let store = synthetic_store(dir.path(), 300, 4);
    let steward = named_steward(dir.path(), "steward");
    let policy = private_policy(&steward, dir.path(), "noise.key", 0.5, 2.0);
    let engine = NodeEngine::open(&store, policy).await.expect("engine");
    let sql = "SELECT COUNT(*) AS n FROM patient";
    let one = engine
        .execute(&request(&steward, sql, "study-1", 0))
        .await
        .expect("study 1");
    let two = engine
        .execute(&request(&steward, sql, "study-2", 1))
        .await
        .expect("study 2");
    assert_eq!(
        total(&one.batches),
        total(&two.batches),
        "same question, same noise"
    );
    let (spent, _) = engine.privacy_budgets();
    assert_eq!(
        spent,
        vec![
            ("study-1".to_string(), Epsilon::from_micro(500_000)),
            ("study-2".to_string(), Epsilon::from_micro(500_000)),
        ]
    );
}

#[tokio::test]
async fn a_differencing_pair_no_longer_yields_the_isolated_patient() {
    // 40 patients, one of them born in June 1987: "all patients" minus "all but those
    // born in 1987-06" is exactly 1 without noise.
    let dir = tempfile::tempdir().expect("dir");
    let mut patients: Vec<Patient> = (0..40)
        .map(|i| Patient::new(&format!("p{i}"), 1950 + (i % 30), "female", "ORPHA:558"))
        .collect();
    patients[7].birth_date = "1987-06".into();
    let store = store_of(dir.path(), &patients, &[7; 32]);
    let steward = named_steward(dir.path(), "steward");
    let all = "SELECT COUNT(*) AS n FROM patient";
    let all_but_one =
        "SELECT COUNT(*) AS n FROM patient WHERE NOT (birth_year = 1987 AND birth_month = 6)";
    // Without noise the pair isolates the patient.
    let plain = NodeEngine::open(&store, NodePolicy::new(SITE, vec![steward.public_key()]))
        .await
        .expect("engine");
    let exact_all = total(
        &plain
            .execute(&request(&steward, all, STUDY, 0))
            .await
            .expect("all")
            .batches,
    );
    let exact_rest = total(
        &plain
            .execute(&request(&steward, all_but_one, STUDY, 1))
            .await
            .expect("rest")
            .batches,
    );
    assert_eq!(exact_all.zip(exact_rest).map(|(a, b)| a - b), Some(1));
    drop(plain);
    // With noise, at 40 sites (each its own secret) the differences scatter around 1
    // with the variance of two draws; they are 1 only as often as two draws agree.
    let (mut exact_hits, mut deviations) = (0usize, Vec::new());
    for site in 0..40u64 {
        let policy = private_policy(
            &steward,
            dir.path(),
            &format!("noise-{site}.key"),
            0.5,
            1000.0,
        );
        let engine = NodeEngine::open(&store, policy).await.expect("engine");
        let a = total(
            &engine
                .execute(&request(&steward, all, STUDY, 10 + 2 * site))
                .await
                .expect("all")
                .batches,
        );
        let b = total(
            &engine
                .execute(&request(&steward, all_but_one, STUDY, 11 + 2 * site))
                .await
                .expect("rest")
                .batches,
        );
        let (Some(a), Some(b)) = (a, b) else {
            panic!("a total of about 40 patients was suppressed at k = 5");
        };
        if a - b == 1 {
            exact_hits += 1;
        }
        deviations.push((a - b - 1) as f64);
    }
    assert!(
        exact_hits <= 12,
        "the difference was the patient's exact contribution {exact_hits} times in 40"
    );
    // ε = 0.5 over the count and the hidden patient count: scale 4 per draw, variance
    // 2q/(1-q)² with q = e^(-1/4) per draw, twice that for a difference.
    let q = (-0.25f64).exp();
    let expected = 2.0 * 2.0 * q / ((1.0 - q) * (1.0 - q));
    let variance = deviations.iter().map(|d| d * d).sum::<f64>() / deviations.len() as f64;
    eprintln!(
        "exact differences: {exact_hits} of 40; variance {variance:.1}, expected {expected:.1}"
    );
    assert!(
        variance > expected / 3.0 && variance < expected * 3.0,
        "the differences' variance {variance} is not that of two draws ({expected})"
    );
}

#[tokio::test]
async fn a_budget_runs_out_with_the_rule_and_the_remaining_budget() {
    let dir = tempfile::tempdir().expect("dir");
    let store = synthetic_store(dir.path(), 300, 5);
    let steward = named_steward(dir.path(), "steward");
    let policy = private_policy(&steward, dir.path(), "noise.key", 0.4, 1.0);
    let engine = NodeEngine::open(&store, policy.clone())
        .await
        .expect("engine");
    let questions = [
        "SELECT COUNT(*) AS n FROM patient",
        "SELECT sex, COUNT(*) AS n FROM patient GROUP BY sex",
        "SELECT vital_status, COUNT(*) AS n FROM patient GROUP BY vital_status",
    ];
    for (i, sql) in questions[..2].iter().enumerate() {
        engine
            .execute(&request(&steward, sql, STUDY, i as u64))
            .await
            .expect("within the budget");
    }
    let refused = engine
        .execute(&request(&steward, questions[2], STUDY, 2))
        .await
        .expect_err("the budget is spent");
    assert_eq!(refused.rule_name(), "privacy-budget");
    let message = refused.to_string();
    assert!(
        message.contains("study-1 has 0.2 of its privacy budget of 1 left")
            && message.contains("needs 0.4"),
        "{message}"
    );
    assert!(matches!(refused, ExecuteError::Budget { .. }));
    // A repeat is still answered (it reveals nothing new); another study has its own.
    engine
        .execute(&request(&steward, questions[0], STUDY, 3))
        .await
        .expect("a repeat is free");
    engine
        .execute(&request(&steward, questions[2], "study-2", 4))
        .await
        .expect("another study");
    // The ledger is the audit log's: a restarted node refuses the same.
    drop(engine);
    let reopened = NodeEngine::open(&store, policy).await.expect("reopen");
    let again = reopened
        .execute(&request(&steward, questions[2], STUDY, 5))
        .await
        .expect_err("still spent after a restart");
    assert_eq!(again.rule_name(), "privacy-budget");
    let entries = audit::read_entries(&store.join(AUDIT_FILE)).expect("audit");
    let refusals = entries
        .iter()
        .filter(|e| e.rule.as_deref() == Some("privacy-budget"))
        .count();
    assert_eq!(refusals, 2, "each refusal is audited");
}

#[tokio::test]
async fn bounding_caps_a_patient_with_ten_diagnoses() {
    let dir = tempfile::tempdir().expect("dir");
    let codes: Vec<String> = (0..10).map(|i| format!("ORPHA:{}", 100 + i)).collect();
    let mut patients = vec![Patient {
        local_id: "many".into(),
        birth_date: "1970".into(),
        sex: "male".into(),
        codes: codes.clone(),
    }];
    for (c, code) in codes.iter().enumerate() {
        for i in 0..6 {
            patients.push(Patient::new(&format!("p{c}-{i}"), 1960 + i, "female", code));
        }
    }
    let store = store_of(dir.path(), &patients, &[3; 32]);
    let steward = named_steward(dir.path(), "steward");
    // An epsilon so large that the noise is nothing: what is left is the bounding.
    let mut policy = private_policy(&steward, dir.path(), "noise.key", 1_000_000.0, 1_000_000.0);
    policy.privacy.bounding = Bounding {
        max_groups_per_patient: 3,
        max_rows_per_patient: 1,
    };
    let engine = NodeEngine::open(&store, policy).await.expect("engine");
    let sql =
        "SELECT code, COUNT(DISTINCT pid) AS patients, COUNT(*) AS n FROM diagnosis GROUP BY code";
    let released = engine
        .execute(&request(&steward, sql, STUDY, 0))
        .await
        .expect("released");
    let mut rows = text_rows(&released.batches);
    rows.sort();
    let counts: Vec<(String, String)> = rows
        .iter()
        .map(|row| (row[0].clone(), row[1].clone()))
        .collect();
    let expected: Vec<(String, String)> = codes
        .iter()
        .enumerate()
        .map(|(c, code)| (code.clone(), if c < 3 { "7" } else { "6" }.to_string()))
        .collect();
    assert_eq!(
        counts, expected,
        "the patient counts in its first three groups only"
    );
}

#[tokio::test]
async fn secure_shares_sum_to_the_noise_of_the_policy() {
    // Three sites' shares on a vector of 221 cells (birth years), over 30 questions:
    // the totals' noise has the variance the policy asks of the network total.
    let dir = tempfile::tempdir().expect("dir");
    let store = synthetic_store(dir.path(), 50, 6);
    let steward = named_steward(dir.path(), "steward");
    let policy = private_policy(&steward, dir.path(), "noise.key", 0.5, 10.0);
    let ctx = ern_node::session::node_session(&store, 1 << 30)
        .await
        .expect("session");
    let plan = Planner::new()
        .plan(
            "SELECT birth_year, COUNT(*) AS n FROM patient GROUP BY birth_year",
            &ctx.state(),
        )
        .await
        .expect("plan");
    let layout = plan.secure_layout().expect("secure");
    let site = plan
        .bounded_site_plan(
            &SiteFacts::default(),
            ern_queries::split::Concentration::Moments,
            Some(policy.privacy.bounding),
        )
        .expect("site plan");
    let noise =
        QuestionNoise::calibrate(&policy.privacy, site.sensitivity.as_ref().expect("bounded"))
            .expect("noise");
    let secrets: Vec<NoiseSecret> = (0..3)
        .map(|i| NoiseSecret::generate(&dir.path().join(format!("share-{i}.key"))).expect("secret"))
        .collect();
    let mut samples = Vec::new();
    for question in 0..30 {
        let mut total = vec![0u64; layout.len()];
        for secret in &secrets {
            let mut share = vec![0u64; layout.len()];
            let seed = NoiseSeed {
                secret,
                question: &format!("question-{question}"),
                generation: "g",
            };
            noise_secure_vector(&mut share, layout, &noise, secrets.len(), seed).expect("share");
            for (t, s) in total.iter_mut().zip(&share) {
                *t = t.wrapping_add(*s);
            }
        }
        for (place, _) in layout.noised_slots() {
            for cell in total.chunks_exact(layout.width()) {
                samples.push(cell[place] as i64 as f64);
            }
        }
    }
    let expected = noise.partials[0].share_variance(1);
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    let variance =
        samples.iter().map(|s| (s - mean) * (s - mean)).sum::<f64>() / samples.len() as f64;
    let standard_error = (expected / samples.len() as f64).sqrt();
    eprintln!("sum of shares: variance {variance:.1}, expected {expected:.1}, mean {mean:.2}");
    assert!(mean.abs() < 5.0 * standard_error, "mean {mean}");
    assert!(
        (variance / expected - 1.0).abs() < 0.1,
        "the sum of shares has variance {variance}, the policy asks {expected} ({} samples)",
        samples.len()
    );
}
