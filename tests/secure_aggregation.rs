//! Secure aggregation end to end: a real coordinator and real nodes over mutual TLS in
//! one process, hand-made stores whose every number the test knows, and the researcher's
//! and stewards' own gRPC calls (DESIGN.md, "Secure aggregation").

use datafusion::arrow::array::RecordBatch;
use ern_node::engine::NodePolicy;
use ern_node::secure::{Roster, SiteIdentity};
use ern_test_support::fixture::collect_sql;
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
    let id = network.ask(DISORDER_BY_SEX).await;

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
    let id = network.ask(DISORDER_BY_SEX).await;
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
    let id = network.ask(DISORDER_BY_SEX).await;
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
    let id = network.ask(DISORDER_BY_SEX).await;
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

/// The next message of a hand-driven node's stream, skipping nothing: the test knows what
/// the coordinator sends next.
async fn next_message(
    inbound: &mut tonic::Streaming<ern_proto::v1::CoordinatorMessage>,
) -> ern_proto::v1::coordinator_message::Message {
    let message = tokio::time::timeout(std::time::Duration::from_secs(30), inbound.message())
        .await
        .expect("a message within 30 s")
        .expect("the stream is open")
        .expect("a message");
    message.message.expect("a message body")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_disconnects_between_the_rounds_fails_the_round_for_everyone() {
    use ern_node::engine::{NodeEngine, QueryRequest, SecurePolicy};
    use ern_node::round::{RoundStart, statement_to_proto};
    use ern_proto::v1;
    use ern_proto::v1::coordinator_message::Message;

    let work = tempfile::tempdir().expect("temp dir");
    let (network, hand) =
        Network::start_with_hand_sites(three_small_sites(work.path()), &["site-c"], |_, _| {})
            .await;
    let fake = &hand[0];
    // The test speaks for site-c's node. Its statement is a real one: site-c's engine over
    // its own store, with the identity key every roster pins for site-c.
    let mut policy = NodePolicy::new(&fake.id, vec![fake.steward.public_key()]);
    policy.secure = SecurePolicy {
        enabled: true,
        identity: Some(std::sync::Arc::clone(&fake.identity)),
        roster: fake.roster.clone(),
        ..SecurePolicy::default()
    };
    let engine = NodeEngine::open(&fake.store, policy)
        .await
        .expect("site-c's engine");
    let (sender, mut inbound) = fake.connect(&network.loopback).await;
    network.wait_connected("site-c").await;

    let id = network.submit(DISORDER_BY_SEX).await;
    network.approve_all(&id, DISORDER_BY_SEX).await;
    network.approve_by_hand(&id, DISORDER_BY_SEX, fake).await;

    // Round 1: the work comes with the round's participants.
    let work_item = match next_message(&mut inbound).await {
        Message::Work(work_item) => work_item,
        other => panic!("expected round 1, got {other:?}"),
    };
    assert_eq!(work_item.query_id, id);
    // The work names the question's study; the approval signs it.
    assert_eq!(work_item.study_id, ern_test_support::network::STUDY);
    let round_start = work_item.secure_round.clone().expect("a secure round");
    assert_eq!(
        round_start.participants,
        vec!["site-a", "site-b", "site-c"],
        "{round_start:?}"
    );
    let request = QueryRequest {
        sql: work_item.sql.clone(),
        study_id: work_item.study_id.clone(),
        approval: ern_node::approval::Approval::from(work_item.approval.clone().expect("approval")),
    };
    let start = RoundStart {
        query_id: work_item.query_id.clone(),
        round_id: round_start.round_id.clone(),
        participants: round_start.participants.clone(),
    };
    let statement = engine
        .secure_statement(&request, &start)
        .await
        .expect("site-c's statement");
    sender
        .send(v1::NodeMessage {
            message: Some(v1::node_message::Message::Result(v1::WorkResult {
                query_id: id.clone(),
                outcome: Some(v1::work_result::Outcome::Statement(statement_to_proto(
                    &statement,
                ))),
                audit_head: engine.audit_head(),
            })),
        })
        .await
        .expect("statement sent");

    // Round 2: every statement relayed; site-c drops its stream instead of masking.
    let round = match next_message(&mut inbound).await {
        Message::Round(round) => round,
        other => panic!("expected round 2, got {other:?}"),
    };
    assert_eq!(round.round_id, round_start.round_id);
    assert_eq!(round.statements.len(), 3);
    drop(sender);
    drop(inbound);

    network.wait_complete(&id).await;
    let states = network.site_states(&id);
    for (site, state, detail) in &states {
        if site == "site-c" {
            assert!(state == "failed" || state == "round-failed", "{states:?}");
        } else {
            assert_eq!(state, "round-failed", "{states:?}");
            assert!(detail.contains("site-c"), "{states:?}");
        }
    }
    let (batches, results) = network.results(&id).await;
    assert_eq!(results.mode, "secure");
    assert!(text_rows(&batches).is_empty(), "{:?}", text_rows(&batches));
    assert!(!network.loopback.core.round_open(&id));

    // Site-a and site-b got round 2 before site-c did and sent their vectors: the
    // question is used up at both, so the round can never be run again without site-c.
    for site in ["site-a", "site-b"] {
        let store = &network.site(site).store;
        let query = network
            .site(site)
            .engine
            .question_key(DISORDER_BY_SEX)
            .await
            .expect("a valid question");
        let used = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let record = ern_node::executed::ExecutedApprovals::open(store).expect("record");
                if let Some(used) = record.query_use(&query) {
                    return used;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the vector was recorded");
        assert_eq!(
            used,
            ern_node::executed::QueryUse::Secure {
                round: round_start.round_id.clone()
            },
            "{site}"
        );
    }
}

/// The independent side of every secure example: plain DataFusion over the three stores
/// pooled, with "sum over the sites, then drop the cells whose network totals fail" written
/// out by hand. Cells are kept when every hidden count reaches k = 5 (all patients of the
/// cell; behind an AVG also the patients with a non-zero contribution), the patients
/// lacking a value are none or at least 5, and behind an AVG the concentration of the
/// per-patient contributions (sum of squares over the squared sum of absolute values) is
/// at most 0.85² / 2 = 0.36125; then the question's own ORDER BY and LIMIT.
const POOLED_SECURE: &[(&str, &str)] = &[
    (
        "cardiac-disorders-by-sex",
        "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_term t ON d.code = t.orpha_code GROUP BY t.name, p.sex HAVING COUNT(DISTINCT p.pid) >= 5 ORDER BY patients DESC, disorder, p.sex",
    ),
    (
        "cardiomyopathy-by-decade",
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY (p.birth_year / 10) * 10 HAVING COUNT(DISTINCT p.pid) >= 5 ORDER BY decade",
    ),
    (
        // Without its LIMIT: ties at the tenth place are compared separately.
        "delay-top-ten-disorders",
        "WITH delays AS (
            SELECT t.name AS disorder, d.pid, d.age_at_diagnosis - d.age_at_onset AS delay
            FROM diagnosis d JOIN orpha_term t ON d.code = t.orpha_code
            WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL
        ), per_patient AS (
            SELECT disorder, pid,
                SUM(CAST(delay AS DOUBLE)) AS contribution,
                COUNT(delay) AS valued,
                COUNT(*) - COUNT(delay) AS lacking
            FROM delays GROUP BY disorder, pid
        ), cells AS (
            SELECT disorder,
                COUNT(*) AS patients,
                SUM(CASE WHEN contribution IS NOT NULL AND contribution <> 0 THEN 1 ELSE 0 END) AS with_value,
                SUM(CASE WHEN lacking > 0 THEN 1 ELSE 0 END) AS lacking,
                SUM(contribution) AS total,
                SUM(valued) AS n,
                SUM(contribution * contribution) AS squares,
                SUM(ABS(contribution)) AS absolutes
            FROM per_patient GROUP BY disorder
        )
        SELECT disorder, patients, total / n AS mean_delay_years FROM cells
        WHERE patients >= 5 AND with_value >= 5 AND (lacking = 0 OR lacking >= 5)
            AND (absolutes = 0 OR squares / (absolutes * absolutes) <= 0.36125)
        ORDER BY patients DESC, disorder",
    ),
    (
        "undiagnosed-with-phenotype",
        "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN phenotype f ON p.pid = f.pid WHERE f.hpo_id = 'HP:0001639' AND NOT f.excluded GROUP BY p.undiagnosed HAVING COUNT(DISTINCT p.pid) >= 5",
    ),
];

/// Examples whose rows come in no order (compared sorted).
const UNORDERED: &[&str] = &["undiagnosed-with-phenotype"];

/// Examples with `ORDER BY patients DESC LIMIT 10` (the patients column second).
const TOP_TEN: &[&str] = &["delay-top-ten-disorders"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_secure_example_equals_the_pooled_computation_with_k_on_network_totals() {
    use ern_queries::Planner;
    use ern_queries::catalog::planning_state;
    use ern_queries::examples::EXAMPLES;
    use ern_test_support::fixture::{pooled_plain_context, synthetic_site_store};

    let work = tempfile::tempdir().expect("temp dir");
    let ids = ["site-a", "site-b", "site-c"];
    let setups: Vec<SiteSetup<'static>> = ids
        .into_iter()
        .enumerate()
        .map(|(index, id)| {
            let seed = 31 + index as u64;
            let store =
                synthetic_site_store(&work.path().join(id), 400, seed, &[40 + index as u8; 32]);
            SiteSetup { id, store }
        })
        .collect();
    let stores: Vec<std::path::PathBuf> = setups.iter().map(|s| s.store.clone()).collect();
    let network = Network::start(setups, |_, _| {}).await;
    let store_refs: Vec<&std::path::Path> = stores.iter().map(|s| s.as_path()).collect();
    let pooled = pooled_plain_context(&store_refs).await;
    let state = planning_state().expect("planning state");

    let mut secure = Vec::new();
    for example in EXAMPLES {
        let plan = Planner::new()
            .plan(example.sql, &state)
            .await
            .expect("an accepted example");
        if plan.mode().name() == "secure" {
            secure.push(example);
        }
    }
    let names: Vec<&str> = secure.iter().map(|e| e.name).collect();
    let mut expected_names: Vec<&str> = POOLED_SECURE.iter().map(|(n, _)| *n).collect();
    expected_names.sort();
    let mut sorted_names = names.clone();
    sorted_names.sort();
    assert_eq!(
        sorted_names, expected_names,
        "every secure example has an independent computation here, and only those"
    );

    let mut rows_compared = 0;
    for example in secure {
        let pooled_sql = POOLED_SECURE
            .iter()
            .find(|(name, _)| *name == example.name)
            .map(|(_, sql)| *sql)
            .expect("a pooled computation");
        let id = network.submit(example.sql).await;
        network.approve_all(&id, example.sql).await;
        network.wait_complete(&id).await;
        let status = network.status(&id).await;
        assert_eq!(status.mode, "secure", "{}: {status:?}", example.name);
        for (site, state, detail) in network.site_states(&id) {
            assert_eq!(state, "aggregated", "{}: {site} {detail}", example.name);
        }
        let (batches, results) = network.results(&id).await;
        assert_eq!(results.mode, "secure");
        let got = rows::text_rows(&batches);
        let mut expected = rows::text_rows(&collect_sql(&pooled, pooled_sql).await);
        let name = example.name;
        if TOP_TEN.contains(&name) {
            // The ten largest by patients; at a tie on the tenth place, any of the tied.
            let shown = expected.len().min(10);
            assert_eq!(got.len(), shown, "{name}: {got:?}");
            let patients = |row: &Vec<String>| row[1].parse::<i64>().expect("patients");
            let expected_counts: Vec<i64> = expected[..shown].iter().map(patients).collect();
            let got_counts: Vec<i64> = got.iter().map(patients).collect();
            assert_eq!(got_counts, expected_counts, "{name}");
            let last = got_counts.last().copied().unwrap_or(i64::MAX);
            for row in &got {
                assert!(
                    expected.contains(row),
                    "{name}: {row:?} not in {expected:?}"
                );
            }
            for row in expected.iter().filter(|row| patients(row) > last) {
                assert!(got.contains(row), "{name}: {row:?} missing from {got:?}");
            }
        } else {
            let mut got = got;
            if UNORDERED.contains(&name) {
                got.sort();
                expected.sort();
            }
            assert_eq!(got, expected, "{name}");
        }
        assert!(
            !got_is_empty(&batches),
            "{name}: nothing released to compare"
        );
        rows_compared += rows::text_rows(&batches).len();
    }
    assert!(rows_compared >= 10, "{rows_compared} rows compared");
}

fn got_is_empty(batches: &[RecordBatch]) -> bool {
    batches.iter().all(|b| b.num_rows() == 0)
}

/// Mean birth-year offset per sex: an AVG whose hidden counts and dominance rule the
/// example questions on synthetic data never reach (their cells are large).
const OFFSET_BY_SEX: &str = "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients, AVG(p.birth_year - 1990) AS mean_offset FROM patient p GROUP BY p.sex";

/// The same over the pooled stores, k = 5 and the concentration limit on network totals
/// written out by hand (one row per patient in `patient`: a patient's contribution is
/// their own offset).
const OFFSET_BY_SEX_POOLED: &str = "SELECT sex, COUNT(*) AS patients, AVG(CAST(offset AS DOUBLE)) AS mean_offset FROM (SELECT p.sex, p.pid, p.birth_year - 1990 AS offset FROM patient p) GROUP BY sex HAVING COUNT(*) >= 5 AND SUM(CASE WHEN offset <> 0 THEN 1 ELSE 0 END) >= 5 AND SUM(CAST(offset AS DOUBLE) * offset) <= 0.36125 * SUM(ABS(CAST(offset AS DOUBLE))) * SUM(ABS(CAST(offset AS DOUBLE)))";

/// Three sites whose patients give [`OFFSET_BY_SEX`] one cell of each fate.
fn offset_sites(dir: &std::path::Path) -> Vec<SiteSetup<'static>> {
    // Per sex, over the three sites (no site has 5 of any sex):
    // - female: 6 patients, but 4 born in 1990 (offset 0): 2 with a value, under k;
    // - male: 8 patients, one born in 1900 (offset -90) beside seven born in 1991: the
    //   one holds (8100 + 7) / 97² = 86 % of the concentration, over 0.36125;
    // - unknown: 6 patients with offsets 1..6: concentration 91 / 441 = 0.21, kept.
    let years: [(&str, &[(&str, u32)]); 3] = [
        (
            "site-a",
            &[
                ("female", 1990),
                ("female", 1990),
                ("male", 1900),
                ("male", 1991),
                ("unknown", 1991),
                ("unknown", 1992),
            ],
        ),
        (
            "site-b",
            &[
                ("female", 1990),
                ("female", 1995),
                ("male", 1991),
                ("male", 1991),
                ("male", 1991),
                ("unknown", 1993),
                ("unknown", 1994),
            ],
        ),
        (
            "site-c",
            &[
                ("female", 1990),
                ("female", 1995),
                ("male", 1991),
                ("male", 1991),
                ("male", 1991),
                ("unknown", 1995),
                ("unknown", 1996),
            ],
        ),
    ];
    years
        .iter()
        .enumerate()
        .map(|(index, (id, patients))| {
            let patients: Vec<Patient> = patients
                .iter()
                .enumerate()
                .map(|(n, (sex, year))| Patient::new(&format!("P{n}"), *year, sex, "ORPHA:154"))
                .collect();
            let store = store_of(&dir.join(id), &patients, &[index as u8 + 7; 32]);
            SiteSetup { id, store }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_average_needs_k_patients_with_a_value_and_no_dominant_patient_in_the_network_total() {
    use ern_test_support::fixture::pooled_plain_context;

    let work = tempfile::tempdir().expect("temp dir");
    let setups = offset_sites(work.path());
    let stores: Vec<std::path::PathBuf> = setups.iter().map(|s| s.store.clone()).collect();
    let network = Network::start(setups, |_, _| {}).await;
    let id = network.ask(OFFSET_BY_SEX).await;
    assert_eq!(network.status(&id).await.mode, "secure");
    let (batches, _) = network.results(&id).await;
    let mut got = text_rows(&batches);
    got.sort();
    assert_eq!(got, vec!["unknown|6|3.500000".to_string()]);

    let store_refs: Vec<&std::path::Path> = stores.iter().map(|s| s.as_path()).collect();
    let pooled = pooled_plain_context(&store_refs).await;
    let mut expected = text_rows(&collect_sql(&pooled, OFFSET_BY_SEX_POOLED).await);
    expected.sort();
    assert_eq!(got, expected);
}

/// Rows of [`OFFSET_BY_SEX`] over [`offset_sites`] with each node's policy changed by
/// `configure`.
async fn offset_rows(configure: impl Fn(&str, &mut NodePolicy)) -> Vec<String> {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(offset_sites(work.path()), configure).await;
    let id = network.ask(OFFSET_BY_SEX).await;
    let states = network.site_states(&id);
    assert!(
        states.iter().all(|(_, state, _)| state == "aggregated"),
        "{states:?}"
    );
    let (batches, _) = network.results(&id).await;
    text_rows(&batches)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strictest_k_and_concentration_limit_any_participant_signed_apply() {
    // The defaults release the six patients of unknown sex (concentration 0.21).
    assert_eq!(offset_rows(|_, _| {}).await, vec!["unknown|6|3.500000"]);
    // One site's k of 7 holds them back for everyone.
    let k_seven = offset_rows(|site, policy| {
        if site == "site-b" {
            policy.k = 7;
        }
    })
    .await;
    assert!(k_seven.is_empty(), "{k_seven:?}");
    // So does one site's stricter dominance rule: two patients may hold 60 % at most,
    // a concentration limit of 0.6² / 2 = 0.18 < 0.21.
    let strict = offset_rows(|site, policy| {
        if site == "site-c" {
            policy.dominance = ern_queries::Dominance {
                top: 2,
                max_share: 0.6,
            };
        }
    })
    .await;
    assert!(strict.is_empty(), "{strict:?}");
}
