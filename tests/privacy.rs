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

/// `sites` sites of 30 patients each, the women with ORPHA:154, the men with ORPHA:130.
fn sites(dir: &std::path::Path, ids: &[&'static str]) -> Vec<SiteSetup<'static>> {
    ids.iter()
        .enumerate()
        .map(|(index, id)| {
            let patients: Vec<Patient> = (0..30)
                .map(|n| {
                    let (sex, code) = if n % 2 == 0 {
                        ("female", "ORPHA:154")
                    } else {
                        ("male", "ORPHA:130")
                    };
                    Patient::new(&format!("P{n}"), 1950 + n, sex, code)
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
    // The exact counts are 30 and 30; the noise is small beside them but there.
    assert!(released.iter().all(|n| (n - 30).abs() < 40), "{released:?}");
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
        released.iter().all(|n| (n - 45).abs() < 60),
        "totals near 45 each: {released:?}"
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
