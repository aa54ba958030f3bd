//! Studies at the node, end to end: a real coordinator and a real node over mutual TLS in
//! one process. The node takes a question's study from the work it receives (never from
//! the question's id), checks the steward's approval against it, and records it in its
//! audit log; an approval signed for another study runs nothing.

use ern_node::audit::{AUDIT_FILE, AuditEntry, Outcome, read_entries};
use ern_proto::v1;
use ern_test_support::network::{Network, Patient, STUDY, SiteSetup, store_of};

/// One site with eight patients: every question below releases at k = 5.
fn one_site(dir: &std::path::Path) -> Vec<SiteSetup<'static>> {
    let patients: Vec<Patient> = (0..8)
        .map(|n| Patient::new(&format!("P{n}"), 1960 + n, "female", "ORPHA:154"))
        .collect();
    let store = store_of(&dir.join("site-a"), &patients, &[1; 32]);
    vec![SiteSetup {
        id: "site-a",
        store,
    }]
}

/// The site's audit entries for the question `sql`.
fn audited(network: &Network, sql: &str) -> Vec<AuditEntry> {
    let hash = ern_queries::query_hash(sql);
    read_entries(&network.site("site-a").store.join(AUDIT_FILE))
        .expect("audit log")
        .into_iter()
        .filter(|entry| entry.query_hash == hash)
        .collect()
}

/// Ten minutes from now.
fn soon() -> u64 {
    ern_coordinator::model::now_seconds() + 600
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_runs_a_question_under_the_study_its_work_names() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(one_site(work.path()), |_, _| {}).await;
    network.loopback.study("study-2", &["researcher"]);

    // Two questions under two studies: each audit entry names its question's study.
    let count = "SELECT COUNT(DISTINCT p.pid) AS patients FROM patient p";
    let by_sex = "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.sex";
    let first = network.ask(count).await;
    let second = network.submit_in("study-2", by_sex).await;
    network.approve_all(&second, by_sex).await;
    network.wait_complete(&second).await;
    for (id, sql, study) in [(&first, count, STUDY), (&second, by_sex, "study-2")] {
        assert_eq!(
            network.site_states(id)[0].1,
            "answered",
            "{id}: {:?}",
            network.site_states(id)
        );
        let entries = audited(&network, sql);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].study, study);
        assert_eq!(entries[0].outcome, Outcome::Accepted);
    }
}

/// A steward's approval of one study's question, sent with the work of another study (as
/// a coordinator that swapped studies would send it), is refused by the node's own check,
/// and the refusal is audited under the study the work named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_signed_for_another_study_is_refused_by_the_node() {
    let work = tempfile::tempdir().expect("temp dir");
    let network = Network::start(one_site(work.path()), |_, _| {}).await;
    let site = network.site("site-a");
    let sql = "SELECT p.birth_year / 10 * 10 AS decade, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.birth_year / 10 * 10";
    let approval =
        ern_node::approval::sign(&site.steward, sql, "site-a", "study-2", soon()).expect("sign");
    let result = ern_node::link::run_work(
        &site.engine,
        v1::Work {
            query_id: "q-swapped".into(),
            sql: sql.into(),
            approval: Some(approval.into()),
            secure_round: None,
            study_id: STUDY.into(),
        },
    )
    .await;
    match result.outcome {
        Some(v1::work_result::Outcome::Refused(refused)) => {
            assert_eq!(refused.rule, "approval-other-study", "{refused:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let entries = audited(&network, sql);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].outcome, Outcome::Refused);
    assert_eq!(entries[0].study, STUDY);
    assert_eq!(entries[0].rule.as_deref(), Some("approval-other-study"));

    // Through the coordinator: a steward who signs another study than the question's
    // gets nothing run either. The coordinator completes the approval with the question's
    // study, which the signature does not cover.
    let id = network.submit(sql).await;
    let signed =
        ern_node::approval::sign(&site.steward, sql, "site-a", "study-2", soon()).expect("sign");
    network
        .loopback
        .steward(site.steward_token.clone())
        .await
        .approve(signed.to_request(&id))
        .await
        .expect("stored: only the node can check a signature");
    network.wait_complete(&id).await;
    let states = network.site_states(&id);
    assert_eq!(
        (states[0].1.as_str(), states[0].2.as_str()),
        ("refused", "approval-bad-signature"),
        "{states:?}"
    );
    let entries = audited(&network, sql);
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1].study, STUDY);
    assert_eq!(entries[1].rule.as_deref(), Some("approval-bad-signature"));
}
