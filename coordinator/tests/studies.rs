//! Studies at a real coordinator on loopback (mutual TLS, real SQLite): operators create
//! them, researchers submit only under their own, every list and review names the study,
//! and the work a node receives carries the question's study in it and in its approval.

use crate::common;

use ern_coordinator::model::Role;
use ern_proto::transport::BearerToken;
use ern_proto::v1;
use ern_test_support::loopback::Loopback;
use tonic::Code;

use common::{SQL, STUDY, start, submit_in};

/// A question without a public domain: it runs per site, so approved work goes to the
/// site's node at once (no secure round waits for other sites).
const PER_SITE_SQL: &str = "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients FROM genetic_finding g GROUP BY g.gene_symbol";

/// A study request for `id` with `researchers`.
fn add(id: &str, researchers: &[&str]) -> v1::AddStudyRequest {
    v1::AddStudyRequest {
        id: id.into(),
        title: format!("Title of {id}"),
        purpose: format!("Purpose of {id}"),
        researchers: researchers.iter().map(|r| r.to_string()).collect(),
    }
}

/// The ids of the studies a researcher (`token`) is on.
async fn studies_of(net: &Loopback, token: BearerToken) -> Vec<String> {
    net.researcher(token)
        .await
        .list_studies(v1::ListStudiesRequest::default())
        .await
        .expect("studies")
        .into_inner()
        .studies
        .into_iter()
        .map(|s| s.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_creates_a_study_once_with_enrolled_researchers_only() {
    let net = start(Default::default()).await;
    let ada = net.user("ada", Role::Researcher, "");
    net.user("sam", Role::Steward, "a");
    let mut operator = net.operator(net.user("op", Role::Operator, "")).await;

    let created = operator
        .add_study(add("rare-2026", &["ada", "ada"]))
        .await
        .expect("added")
        .into_inner();
    assert_eq!(created.id, "rare-2026");
    assert_eq!(created.researchers, ["ada"]);
    assert_eq!(created.created_by, "op");

    let refusal = |request| {
        let mut operator = operator.clone();
        async move { operator.add_study(request).await.expect_err("refused") }
    };
    let exists = refusal(add("rare-2026", &["ada"])).await;
    assert_eq!(exists.code(), Code::AlreadyExists, "{exists:?}");
    for (request, says) in [
        (
            add("s-2", &["mallory"]),
            "no researcher mallory is enrolled",
        ),
        (add("s-2", &["sam"]), "user sam is not a researcher"),
        (add("s-2", &[]), "at least one researcher"),
        (add("../s", &["ada"]), "malformed"),
        (add("s-2", &["ada", "bad name"]), "no researcher bad name"),
        (
            v1::AddStudyRequest {
                title: " ".into(),
                ..add("s-2", &["ada"])
            },
            "a study needs a title",
        ),
        (
            v1::AddStudyRequest {
                purpose: String::new(),
                ..add("s-2", &["ada"])
            },
            "a study needs a purpose",
        ),
        (
            v1::AddStudyRequest {
                title: "t".repeat(201),
                ..add("s-2", &["ada"])
            },
            "title length limit",
        ),
    ] {
        let status = refusal(request).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{says}: {status:?}");
        assert!(status.message().contains(says), "{says}: {status:?}");
    }
    // Nothing half-made: study s-2 does not exist.
    assert_eq!(net.core.db().study("s-2").expect("read"), None);

    // Only operators create studies.
    let mut researcher = ern_proto::v1::operator_client::OperatorClient::with_interceptor(
        net.channel().await,
        ada.clone(),
    );
    let denied = researcher
        .add_study(add("mine", &["ada"]))
        .await
        .expect_err("not an operator");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let all = operator
        .list_studies(v1::ListStudiesRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(all.studies.len(), 1);
    let rest = operator
        .list_studies(v1::ListStudiesRequest {
            page_size: 10,
            page_token: all.next_page_token,
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(rest.studies[0].id, STUDY, "the test study, after rare-2026");
    assert_eq!(all.studies[0].id, "rare-2026");

    let audit = operator
        .audit_summary(v1::AuditSummaryRequest { recent: 100 })
        .await
        .expect("audit")
        .into_inner();
    let added: Vec<&v1::AuditEvent> = audit
        .recent
        .iter()
        .filter(|e| e.kind == "study-added")
        .collect();
    assert!(
        added
            .iter()
            .any(|e| e.actor == "op" && e.detail == "rare-2026 (ada)"),
        "{added:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_researcher_submits_and_lists_only_under_their_own_studies() {
    let net = start(Default::default()).await;
    let ada = net.user("ada", Role::Researcher, "");
    let ben = net.user("ben", Role::Researcher, "");
    net.study("ada-only", &["ada"]);
    assert_eq!(studies_of(&net, ada.clone()).await, ["ada-only", STUDY]);
    assert_eq!(studies_of(&net, ben.clone()).await, [STUDY]);

    let mut as_ben = net.researcher(ben).await;
    let denied = as_ben
        .submit(submit_in("ada-only", "t", SQL))
        .await
        .expect_err("not on it");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("you are not a researcher on study ada-only"),
        "{denied:?}"
    );
    let unknown = as_ben
        .submit(submit_in("nowhere", "t", SQL))
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    let none = as_ben
        .submit(submit_in("", "t", SQL))
        .await
        .expect_err("no study");
    assert_eq!(none.code(), Code::InvalidArgument, "{none:?}");
    let denied = as_ben
        .list_queries(v1::ListQueriesRequest {
            study_id: "ada-only".into(),
            ..Default::default()
        })
        .await
        .expect_err("not on it");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let mut as_ada = net.researcher(ada).await;
    let first = as_ada
        .submit(submit_in(STUDY, "first", SQL))
        .await
        .expect("submitted")
        .into_inner()
        .query_id;
    let second = as_ada
        .submit(submit_in("ada-only", "second", SQL))
        .await
        .expect("submitted")
        .into_inner()
        .query_id;
    let listed = |study: &str| {
        let mut as_ada = as_ada.clone();
        let study = study.to_string();
        async move {
            as_ada
                .list_queries(v1::ListQueriesRequest {
                    study_id: study,
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner()
                .queries
        }
    };
    let all = listed("").await;
    assert_eq!(
        all.iter()
            .map(|q| (q.query_id.as_str(), q.study_id.as_str()))
            .collect::<Vec<_>>(),
        [(second.as_str(), "ada-only"), (first.as_str(), STUDY)]
    );
    assert_eq!(all[0].study_title, "Study ada-only");
    let only = listed("ada-only").await;
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].query_id, second);

    let status = as_ada
        .get_status(v1::GetStatusRequest {
            query_id: second.clone(),
            wait_seconds: 0,
        })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(
        (status.study_id.as_str(), status.study_title.as_str()),
        ("ada-only", "Study ada-only")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stewards_review_the_study_and_the_node_receives_it_with_the_approval() {
    let net = start(Default::default()).await;
    let ada = net.user("ada", Role::Researcher, "");
    net.user("ben", Role::Researcher, "");
    net.study("cardio", &["ada", "ben"]);
    let id = net
        .researcher(ada)
        .await
        .submit(v1::SubmitRequest {
            sites: vec!["a".into()],
            ..submit_in("cardio", "by gene", PER_SITE_SQL)
        })
        .await
        .expect("submitted")
        .into_inner()
        .query_id;

    let mut steward = net.steward(net.user("sam", Role::Steward, "a")).await;
    let pending = steward
        .list_pending(v1::ListPendingRequest::default())
        .await
        .expect("pending")
        .into_inner()
        .queries;
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].study_id.as_str(),
            pending[0].study_title.as_str()
        ),
        ("cardio", "Study cardio")
    );
    let review = steward
        .show_query(v1::ShowQueryRequest {
            query_id: id.clone(),
        })
        .await
        .expect("review")
        .into_inner();
    assert_eq!(review.study_id, "cardio");
    assert_eq!(review.study_title, "Study cardio");
    assert_eq!(review.study_purpose, "The purpose of cardio");
    assert_eq!(review.study_researchers, ["ada", "ben"]);

    // The steward's tool signs the study shown (the coordinator cannot check the
    // signature: only the node holds the steward's key); the coordinator completes the
    // approval with the question's study, and sends it in the work.
    steward
        .approve(v1::ApproveRequest {
            query_id: id.clone(),
            expires_at: ern_coordinator::model::now_seconds() + 600,
            key_id: "0123456789abcdef".into(),
            signature: vec![1; 64],
        })
        .await
        .expect("approved");
    let certificate = net.ca.issue_node("a").expect("certificate");
    let (_sender, mut inbound) = net
        .open_node_stream(Some(&certificate), &net.node_token("a"), "a")
        .await
        .expect("stream");
    let mut work = None;
    while let Some(message) = inbound.message().await.expect("read") {
        if let Some(v1::coordinator_message::Message::Work(w)) = message.message {
            work = Some(w);
            break;
        }
    }
    let work = work.expect("the approved work");
    assert_eq!(work.query_id, id);
    assert_eq!(work.study_id, "cardio");
    let approval = work.approval.expect("approval");
    assert_eq!(
        (approval.study_id.as_str(), approval.site_id.as_str()),
        ("cardio", "a")
    );
}
