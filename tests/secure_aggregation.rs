//! Secure aggregation end to end: a real coordinator and real nodes over mutual TLS in
//! one process, hand-made stores whose every number the test knows, and the researcher's
//! and stewards' own gRPC calls (DESIGN.md, "Secure aggregation").

use datafusion::arrow::array::RecordBatch;
use ern_node::engine::NodePolicy;
use ern_node::secure::{Roster, SiteIdentity};
use ern_test_support::network::{Network, Patient, SiteSetup, store_of};
use ern_test_support::rows;

/// Patients per disorder and sex: the showcase question (disorder from the shipped
/// Orphanet table, so its domain is public).
const DISORDER_BY_SEX: &str = "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex ORDER BY t.name, p.sex";

const DCM: &str = "Familial isolated dilated cardiomyopathy";

/// Three sites, each with two women with familial isolated dilated cardiomyopathy
/// (ORPHA:154), and, at site-a, six men with another disorder (ORPHA:130).
fn three_small_sites(dir: &std::path::Path) -> Vec<SiteSetup<'static>> {
    ["site-a", "site-b", "site-c"]
        .into_iter()
        .enumerate()
        .map(|(index, id)| {
            let mut patients = vec![
                Patient::new("P1", 1970, "female", "ORPHA:154"),
                Patient::new("P2", 1982, "female", "ORPHA:154"),
            ];
            if id == "site-a" {
                for n in 0..6 {
                    patients.push(Patient::new(
                        &format!("M{n}"),
                        1960 + n,
                        "male",
                        "ORPHA:130",
                    ));
                }
            }
            let store = store_of(&dir.join(id), &patients, &[index as u8 + 1; 32]);
            SiteSetup { id, store }
        })
        .collect()
}

/// Rows as `a|b|c`, in the table's order.
fn text_rows(batches: &[RecordBatch]) -> Vec<String> {
    rows::text_rows(batches)
        .into_iter()
        .map(|row| row.join("|"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_with_two_patients_each_release_six_at_k_five() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(three_small_sites(work.path()), |_, _| {}).await;
    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve_all(&id, DISORDER_BY_SEX).await;
    network.wait_complete(&id).await;

    let status = network.status(&id).await;
    assert_eq!(status.mode, "secure", "{status:?}");
    for (site, state, _) in network.site_states(&id) {
        assert_eq!(state, "aggregated", "{site}");
    }
    let (batches, results) = network.results(&id).await;
    assert_eq!(results.mode, "secure");
    let rows = text_rows(&batches);
    // 2 + 2 + 2 women: no site reaches k = 5, the network does. Site-a's six men are
    // released as well (6 >= 5); nothing else.
    let other = ern_node::reference::terms()
        .expect("terms")
        .into_iter()
        .find(|t| t.orpha_code == "ORPHA:130")
        .expect("ORPHA:130")
        .name;
    let mut expected = vec![format!("{DCM}|female|6"), format!("{other}|male|6")];
    expected.sort();
    let mut got = rows.clone();
    got.sort();
    assert_eq!(got, expected, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_policy_turns_secure_aggregation_off_release_nothing_for_that_cell() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(
        three_small_sites(work.path()),
        |_, policy: &mut NodePolicy| {
            policy.secure.enabled = false;
        },
    )
    .await;
    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve_all(&id, DISORDER_BY_SEX).await;
    network.wait_complete(&id).await;
    let status = network.status(&id).await;
    assert_eq!(status.mode, "per-site", "{status:?}");
    assert!(
        status.mode_note.contains("does not take part"),
        "{status:?}"
    );
    let (batches, _) = network.results(&id).await;
    let rows = text_rows(&batches);
    assert!(!rows.iter().any(|row| row.contains(DCM)), "{rows:?}");
    // Site-a's six men still pass its own k.
    assert_eq!(rows.len(), 1, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_missing_from_a_roster_is_refused_and_nothing_is_released() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(
        three_small_sites(work.path()),
        |site, policy: &mut NodePolicy| {
            if site == "site-b" {
                let without_c = policy
                    .secure
                    .roster
                    .iter()
                    .filter(|(peer, _)| *peer != "site-c")
                    .map(|(peer, key)| (peer.to_string(), key.clone()))
                    .collect::<Vec<_>>();
                policy.secure.roster = Roster::new(without_c).expect("roster");
            }
        },
    )
    .await;
    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve_all(&id, DISORDER_BY_SEX).await;
    network.wait_complete(&id).await;
    let states = network.site_states(&id);
    let b = states
        .iter()
        .find(|(site, _, _)| site == "site-b")
        .expect("b");
    assert_eq!(
        (b.1.as_str(), b.2.as_str()),
        ("refused", "secure-roster"),
        "{states:?}"
    );
    for (site, state, detail) in &states {
        if site != "site-b" {
            assert_eq!(state, "round-failed", "{states:?}");
            assert!(detail.contains("site-b refused"), "{states:?}");
        }
    }
    let (batches, _) = network.results(&id).await;
    assert!(text_rows(&batches).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_signed_by_the_wrong_key_is_refused_in_round_two() {
    let work = tempfile::tempdir().expect("temp dir");
    // Site-a's roster pins a key for site-c that site-c does not hold.
    let impostor = work.path().join("impostor");
    let wrong = SiteIdentity::generate(&impostor).expect("identity");
    let network = Network::start(
        three_small_sites(work.path()),
        move |site, policy: &mut NodePolicy| {
            if site == "site-a" {
                let swapped = policy
                    .secure
                    .roster
                    .iter()
                    .map(|(peer, key)| {
                        let key = if peer == "site-c" {
                            wrong.clone()
                        } else {
                            key.clone()
                        };
                        (peer.to_string(), key)
                    })
                    .collect::<Vec<_>>();
                policy.secure.roster = Roster::new(swapped).expect("roster");
            }
        },
    )
    .await;
    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve_all(&id, DISORDER_BY_SEX).await;
    network.wait_complete(&id).await;
    let states = network.site_states(&id);
    let a = states
        .iter()
        .find(|(site, _, _)| site == "site-a")
        .expect("a");
    assert_eq!(
        (a.1.as_str(), a.2.as_str()),
        ("refused", "secure-signature"),
        "{states:?}"
    );
    assert!(
        states
            .iter()
            .all(|(site, state, _)| site == "site-a" || state == "round-failed"),
        "{states:?}"
    );
    let (batches, _) = network.results(&id).await;
    assert!(text_rows(&batches).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fewer_approving_sites_than_three_run_per_site() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(three_small_sites(work.path()), |_, _| {}).await;
    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve(&id, DISORDER_BY_SEX, "site-a").await;
    network.approve(&id, DISORDER_BY_SEX, "site-b").await;
    let mut steward = network
        .loopback
        .steward(network.site("site-c").steward_token.clone())
        .await;
    steward
        .reject(ern_proto::v1::RejectRequest {
            query_id: id.clone(),
            reason: "not in our remit".into(),
        })
        .await
        .expect("rejected");
    network.wait_complete(&id).await;
    let status = network.status(&id).await;
    assert_eq!(status.mode, "per-site", "{status:?}");
    assert!(status.mode_note.contains("at least 3"), "{status:?}");
    let (batches, _) = network.results(&id).await;
    assert!(!text_rows(&batches).iter().any(|row| row.contains(DCM)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drops_out_during_the_round_fails_the_question_with_coverage() {
    let work = tempfile::tempdir().expect("temp dir");
    let mut network = Network::start(three_small_sites(work.path()), |_, _| {}).await;
    network.site_mut("site-c").go_offline();
    // The coordinator notices the stream's end.
    let core = std::sync::Arc::clone(&network.loopback.core);
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while core.is_connected("site-c") {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("site-c disconnected");
    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve_all(&id, DISORDER_BY_SEX).await;
    // The round waits for every approved node.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        network
            .site_states(&id)
            .iter()
            .all(|(_, state, _)| state == "approved")
    );
    network.site_mut("site-c").go_online();
    network.wait_connected("site-c").await;
    // Once the round has started, site-c drops out again.
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !core.round_open(&id) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("round started");
    network.site_mut("site-c").go_offline();
    network.wait_complete(&id).await;
    let states = network.site_states(&id);
    // Either the round completed before site-c's stream ended (all aggregated), or it
    // failed for everyone: never a sum over fewer sites.
    let aggregated = states.iter().filter(|(_, s, _)| s == "aggregated").count();
    assert!(aggregated == 0 || aggregated == 3, "{states:?}");
    if aggregated == 0 {
        assert!(
            states
                .iter()
                .all(|(_, s, _)| s == "round-failed" || s == "failed"),
            "{states:?}"
        );
        let (batches, _) = network.results(&id).await;
        assert!(text_rows(&batches).is_empty());
    }
}
