//! Differential privacy end to end: a real coordinator and real nodes over mutual TLS,
//! nodes whose `[privacy]` policy noises what they release, per site and in secure
//! rounds (DESIGN.md, "Studies and privacy budgets").

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use ern_node::engine::NodePolicy;
use ern_node::privacy::policy::{Epsilon, PrivacyPolicy};
use ern_node::privacy::secret::NoiseSecret;
use ern_test_support::network::{Network, Patient, SiteSetup, store_of};

/// Sites of 100 patients each, the women with ORPHA:154, the men with ORPHA:130: 50
/// per sex, above the noisy count a group's key needs to leave a site under noise.
fn sites(dir: &std::path::Path, ids: &[&'static str]) -> Vec<SiteSetup<'static>> {
    ids.iter()
        .enumerate()
        .map(|(index, id)| {
            let patients: Vec<Patient> = (0..100)
                .map(|n| {
                    let (sex, code) = if n % 2 == 0 {
                        ("female", "ORPHA:154")
                    } else {
                        ("male", "ORPHA:130")
                    };
                    Patient::new(&format!("P{n}"), 1920 + n, sex, code)
                })
                .collect();
            let store = store_of(&dir.join(id), &patients, &[index as u8 + 1; 32]);
            SiteSetup { id, store }
        })
        .collect()
}

/// Noise on, with each site's own secret: ε = 1 per question, 10 per study.
fn noised(site: &str, policy: &mut NodePolicy) {
    let mut secret = [0u8; 32];
    for (byte, source) in secret.iter_mut().zip(site.bytes().cycle()) {
        *byte = source;
    }
    policy.privacy = PrivacyPolicy {
        enabled: true,
        epsilon: Epsilon::from_micro(1_000_000),
        budget_per_study: Epsilon::from_micro(10_000_000),
        secret: Some(Arc::new(NoiseSecret::from_bytes(&secret))),
        ..PrivacyPolicy::default()
    };
}

/// The counts of women and men (in that order) of a `sex, count` table; other cells
/// (empty ones a noisy count let through) are left out.
fn counts(batches: &[RecordBatch], column: usize) -> Vec<i64> {
    let mut found = Vec::new();
    for sex in ["female", "male"] {
        for batch in batches {
            let sexes = datafusion::arrow::compute::cast(
                batch.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .expect("sex as text");
            let sexes = sexes.as_string::<i32>();
            let values = batch.column(column).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                if sexes.is_valid(row) && sexes.value(row) == sex {
                    found.push(values.value(row));
                }
            }
        }
    }
    found
}

const BY_SEX: &str = "SELECT sex, COUNT(*) AS patients FROM patient GROUP BY sex ORDER BY sex";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_site_noise_is_described_in_the_results_and_repeats_return_the_same_table() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(sites(work.path(), &["site-a", "site-b"]), |site, policy| {
        noised(site, policy);
    })
    .await;
    // Two sites: below the three a secure round needs, so per site.
    let first = network.ask(BY_SEX).await;
    let (batches, results) = network.results(&first).await;
    assert_eq!(results.mode, "per-site");
    let released = counts(&batches, 1);
    assert_eq!(released.len(), 2, "female and male");
    // The exact counts are 100 and 100; the noise is small beside them but there.
    assert!(
        released.iter().all(|n| (n - 100).abs() < 40),
        "{released:?}"
    );
    // ε = 1 over the count and the hidden patient count: discrete Laplace of scale 2 at
    // each site; the summary adds the two sites' variances.
    let noise = &results.noise;
    assert_eq!(noise.len(), 1, "{noise:?}");
    assert_eq!(noise[0].aggregate, "count(Int64(1))");
    assert_eq!(noise[0].mechanism, "discrete-laplace");
    assert_eq!(noise[0].sites, 2);
    let q = (-0.5f64).exp();
    let per_site = 2.0 * q / ((1.0 - q) * (1.0 - q));
    assert!(
        (noise[0].variance - 2.0 * per_site).abs() < 1e-6,
        "{} vs {}",
        noise[0].variance,
        2.0 * per_site
    );
    assert!(
        noise[0].margin95 >= 5 && noise[0].margin95 <= 20,
        "{noise:?}"
    );
    // The same question again (a new question id, new approvals): the same table.
    let again = network.ask(BY_SEX).await;
    let (batches_again, _) = network.results(&again).await;
    assert_eq!(counts(&batches_again, 1), released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_rounds_release_noisy_totals_with_the_noise_of_the_shares() {
    let work = tempfile::tempdir().expect("temp dir");
    let ids = ["site-a", "site-b", "site-c"];
    let network = Network::start(sites(work.path(), &ids), |site, policy| {
        noised(site, policy);
    })
    .await;
    let id = network.ask(BY_SEX).await;
    let (batches, results) = network.results(&id).await;
    assert_eq!(results.mode, "secure", "{results:?}");
    let released = counts(&batches, 1);
    assert_eq!(released.len(), 2, "female and male: {released:?}");
    assert!(
        released.iter().all(|n| (n - 150).abs() < 40),
        "totals near 150 each: {released:?}"
    );
    let noise = &results.noise;
    assert_eq!(noise.len(), 1, "{noise:?}");
    assert_eq!(noise[0].mechanism, "skellam");
    assert_eq!(noise[0].sites, 3);
    // Three shares of Skellam noise whose sum has the variance of one site's policy
    // (2 · scale² = 8 for scale 2).
    assert!((noise[0].variance - 8.0).abs() < 1e-6, "{noise:?}");
    for (_, state, _) in network.site_states(&id) {
        assert_eq!(state, "aggregated");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stewards_see_the_study_budget_left_and_a_spent_budget_refuses_with_its_rule() {
    let work = tempfile::tempdir().expect("temp dir");
    // Two sites (per site): ε = 1 per question, a budget of 2 per study.
    let network = Network::start(sites(work.path(), &["site-a", "site-b"]), |site, policy| {
        noised(site, policy);
        policy.privacy.budget_per_study = Epsilon::from_micro(2_000_000);
    })
    .await;
    let questions = [
        "SELECT sex, COUNT(*) AS n FROM patient GROUP BY sex",
        "SELECT vital_status, COUNT(*) AS n FROM patient GROUP BY vital_status",
        "SELECT COUNT(*) AS n FROM patient",
    ];
    network.ask(questions[0]).await;
    network.ask(questions[1]).await;
    // The third question's review: the study has spent its whole budget at site-a.
    let third = network.submit(questions[2]).await;
    let site = network.site("site-a");
    let mut steward = network.loopback.steward(site.steward_token.clone()).await;
    let mut privacy = None;
    for _ in 0..200 {
        let review = steward
            .show_query(ern_proto::v1::ShowQueryRequest {
                query_id: third.clone(),
            })
            .await
            .expect("review")
            .into_inner();
        let reported = review.privacy.expect("privacy");
        if reported.spent_micro == 2_000_000 {
            privacy = Some(reported);
            break;
        }
        // The node reports its spend after each answer.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let privacy = privacy.expect("the review shows the study's spend at the site");
    assert!(privacy.reported && privacy.enabled, "{privacy:?}");
    assert_eq!(privacy.mechanism, "discrete-laplace");
    assert_eq!(privacy.epsilon_micro, 1_000_000);
    assert_eq!(privacy.budget_micro, 2_000_000);
    // Approved all the same, the nodes refuse it by the rule, naming no value.
    network.approve_all(&third, questions[2]).await;
    network.wait_complete(&third).await;
    for (site, state, detail) in network.site_states(&third) {
        assert_eq!(state, "refused", "{site}");
        assert_eq!(detail, "privacy-budget", "{site}");
    }
    // A repeat of an answered question is still answered, free, with the same table.
    let again = network.ask(questions[0]).await;
    for (site, state, _) in network.site_states(&again) {
        assert_eq!(state, "answered", "{site}");
    }
}
