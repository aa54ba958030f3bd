//! The NodeLink stream against a real coordinator on loopback, with a hand-driven node:
//! the handshake's checks, and answers that are malformed or not owed.

use std::sync::Arc;
use std::time::Duration;

use ern_coordinator::limits::Limits;
use ern_coordinator::model::{Role, SiteState, StoredQuery, now_seconds};
use ern_coordinator::{Coordinator, auth};
use ern_proto::approval::Approval;
use ern_proto::v1;
use ern_proto::v1::node_link_client::NodeLinkClient;
use ern_test_support::loopback::{Loopback, Security};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;

const SQL: &str = "SELECT p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex";

/// The study of every question here.
const STUDY: &str = "study-1";

struct Harness {
    core: Arc<Coordinator>,
    url: String,
    _net: Loopback,
}

/// The shared loopback coordinator, in plaintext: these tests are about the stream's
/// protocol, not its transport.
async fn start() -> Harness {
    let net = Loopback::start(Security::Plaintext, Limits::default()).await;
    Harness {
        core: Arc::clone(&net.core),
        url: net.url.clone(),
        _net: net,
    }
}

impl Harness {
    fn submit_approved(&self, id: &str, sites: &[&str]) {
        let now = now_seconds();
        let sites: Vec<String> = sites.iter().map(|s| s.to_string()).collect();
        self.core
            .db()
            .insert_query(
                &StoredQuery {
                    id: id.into(),
                    study_id: STUDY.into(),
                    title: "t".into(),
                    purpose: String::new(),
                    sql: SQL.into(),
                    query_hash: ern_queries::query_hash(SQL),
                    submitted_by: "ada".into(),
                    submitted_at: now,
                    deadline: now + 3600,
                    complete: false,
                    failure: String::new(),
                    withdrawn_at: 0,
                },
                &sites,
            )
            .expect("insert");
        for site in &sites {
            let approval = Approval {
                study_id: STUDY.into(),
                site_id: site.clone(),
                query_hash: ern_queries::query_hash(SQL),
                expires_at: now + 3600,
                key_id: "0123456789abcdef".into(),
                signature: vec![1u8; 64],
            };
            assert!(
                self.core
                    .db()
                    .approve(id, "s", &approval, now)
                    .expect("approve")
            );
        }
    }

    fn state(&self, id: &str, site: &str) -> (SiteState, String) {
        let target = self
            .core
            .db()
            .targets(id)
            .expect("targets")
            .into_iter()
            .find(|t| t.site == site)
            .expect("target");
        (target.state, target.detail)
    }

    /// Enrols the node user `node-SITE` of a new site; returns its token.
    fn enrol_node(&self, site: &str) -> String {
        let enrolment = auth::Enrolment::new(&format!("node-{site}"), Role::Node, site);
        auth::enrol(self.core.db(), "test", &enrolment.with_new_site(), 0).expect("enrol")
    }

    /// A NodeLink client sending `token`.
    async fn client(
        &self,
        token: &str,
    ) -> NodeLinkClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    > {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let bearer = format!("Bearer {token}").parse().expect("header");
        NodeLinkClient::with_interceptor(channel, Bearer(bearer))
    }

    /// Opens a node stream with `token`, sending `first`; returns the outbound sender and
    /// the response.
    async fn open(
        &self,
        token: &str,
        first: v1::NodeMessage,
    ) -> (
        mpsc::Sender<v1::NodeMessage>,
        Result<tonic::Streaming<v1::CoordinatorMessage>, tonic::Status>,
    ) {
        let mut client = self.client(token).await;
        let (sender, receiver) = mpsc::channel(16);
        sender.send(first).await.expect("queue");
        let response = client
            .open_stream(ReceiverStream::new(receiver))
            .await
            .map(tonic::Response::into_inner);
        (sender, response)
    }
}

/// Sends a bearer token with every call.
#[derive(Clone)]
struct Bearer(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

fn hello(site: &str) -> v1::NodeMessage {
    hello_with(site, 8)
}

fn hello_with(site: &str, max_concurrent: u32) -> v1::NodeMessage {
    v1::NodeMessage {
        message: Some(v1::node_message::Message::Hello(v1::Hello {
            site_id: site.into(),
            k: 5,
            version: "test".into(),
            max_concurrent,
            ..Default::default()
        })),
    }
}

/// The next Work on a node stream, if one arrives within `wait`.
async fn next_work(
    inbound: &mut tonic::Streaming<v1::CoordinatorMessage>,
    wait: Duration,
) -> Option<v1::Work> {
    loop {
        match tokio::time::timeout(wait, inbound.message()).await {
            Ok(Ok(Some(v1::CoordinatorMessage {
                message: Some(v1::coordinator_message::Message::Work(work)),
            }))) => return Some(work),
            Ok(Ok(Some(_))) => continue,
            _ => return None,
        }
    }
}

fn released(query_id: &str, bytes: Vec<u8>) -> v1::NodeMessage {
    v1::NodeMessage {
        message: Some(v1::node_message::Message::Result(v1::WorkResult {
            query_id: query_id.into(),
            outcome: Some(v1::work_result::Outcome::Released(v1::Released {
                arrow_ipc: bytes,
                groups: 1,
                ..Default::default()
            })),
            audit_head: String::new(),
        })),
    }
}

async fn eventually(mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("condition not reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_must_say_hello_for_its_own_site_with_a_node_token() {
    let h = start().await;
    let node_a = h.enrol_node("a");
    let steward = auth::enrol(
        h.core.db(),
        "test",
        &auth::Enrolment::new("steward-a", Role::Steward, "a").with_new_site(),
        0,
    )
    .expect("enrol");

    let (_tx, other_site) = h.open(&node_a, hello("b")).await;
    let status = other_site.expect_err("another site");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("bound to site a"),
        "{}",
        status.message()
    );

    let (_tx, no_hello) = h.open(&node_a, released("q-x", vec![1, 2, 3])).await;
    assert_eq!(
        no_hello.expect_err("no hello").code(),
        tonic::Code::InvalidArgument
    );

    let (_tx, steward_stream) = h.open(&steward, hello("a")).await;
    assert_eq!(
        steward_stream.expect_err("a steward").code(),
        tonic::Code::PermissionDenied
    );

    let (_tx, bad_token) = h.open("ern_nope", hello("a")).await;
    assert_eq!(
        bad_token.expect_err("bad token").code(),
        tonic::Code::Unauthenticated
    );
    assert!(!h.core.is_connected("a") && !h.core.is_connected("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_unowed_answers_change_nothing_they_should_not() {
    let h = start().await;
    let node_a = h.enrol_node("a");
    h.submit_approved("q-1", &["a", "b"]);
    h.submit_approved("q-2", &["b"]);

    let (sender, inbound) = h.open(&node_a, hello("a")).await;
    let mut inbound = inbound.expect("stream");
    let welcome = inbound.message().await.expect("read").expect("welcome");
    assert!(matches!(
        welcome.message,
        Some(v1::coordinator_message::Message::Welcome(_))
    ));
    let work = inbound.message().await.expect("read").expect("work");
    let Some(v1::coordinator_message::Message::Work(work)) = work.message else {
        panic!("expected work");
    };
    assert_eq!(work.query_id, "q-1");
    assert_eq!(work.sql, SQL);
    // The study is the question's stored one, in the work and in the approval alike.
    assert_eq!(work.study_id, STUDY);
    let approval = work.approval.expect("approval");
    assert_eq!(
        (approval.site_id.as_str(), approval.study_id.as_str()),
        ("a", STUDY)
    );

    // An answer for a question this site was never sent is ignored.
    sender
        .send(released("q-2", vec![0; 8]))
        .await
        .expect("send");
    // Garbage in place of Arrow IPC fails the site, and only the site.
    sender
        .send(released("q-1", b"not arrow".to_vec()))
        .await
        .expect("send");
    eventually(|| h.state("q-1", "a").0 == SiteState::Failed).await;
    assert_eq!(h.state("q-1", "a").1, "malformed-result");
    assert_eq!(h.state("q-2", "b").0, SiteState::Approved);
    assert_eq!(h.state("q-1", "b").0, SiteState::Approved);
    // The coordinator still serves, and the node's stream is still open.
    assert!(h.core.is_connected("a"));
    let channel = tonic::transport::Endpoint::from_shared(h.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ern.v1.Researcher".into(),
        })
        .await
        .expect("health")
        .into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    drop(sender);
    eventually(|| !h.core.is_connected("a")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_never_gets_more_work_at_once_than_it_said_it_runs() {
    let h = start().await;
    let node_a = h.enrol_node("a");
    for id in ["q-1", "q-2", "q-3"] {
        h.submit_approved(id, &["a"]);
    }
    let (sender, inbound) = h.open(&node_a, hello_with("a", 1)).await;
    let mut inbound = inbound.expect("stream");
    let mut answered = Vec::new();
    for _ in 0..3 {
        let work = next_work(&mut inbound, Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("work after {answered:?}"));
        // While it is unanswered, nothing else arrives, even when the tick runs.
        assert!(
            next_work(&mut inbound, Duration::from_millis(700))
                .await
                .is_none(),
            "a second piece of work arrived while {} was running",
            work.query_id
        );
        sender
            .send(released(&work.query_id, b"not arrow".to_vec()))
            .await
            .expect("send");
        answered.push(work.query_id);
    }
    answered.sort();
    assert_eq!(answered, ["q-1", "q-2", "q-3"]);
    for id in ["q-1", "q-2", "q-3"] {
        eventually(|| h.state(id, "a").0 == SiteState::Failed).await;
    }
}

/// Red team (#18): a node whose token is revoked while it holds back its Hello (its
/// token and certificate were checked when the stream opened) is not let in when the
/// Hello finally comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holding_back_its_hello_past_a_revocation_is_refused() {
    let h = start().await;
    let node_a = h.enrol_node("a");
    let mut client = h.client(&node_a).await;
    let (sender, receiver) = mpsc::channel(16);
    let opening = tokio::spawn(async move {
        client
            .open_stream(ReceiverStream::new(receiver))
            .await
            .map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(h.core.db().remove_user("node-a").expect("revoke"));
    sender.send(hello("a")).await.expect("hello");
    let refused = opening.await.expect("task").expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
    assert!(!h.core.is_connected("a"));
}

/// Red team (#18): a stream the coordinator closed (its node's credentials were revoked)
/// is not listened to: an answer, an audit head and a heartbeat sent on it afterwards
/// change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_on_a_closed_stream_change_nothing() {
    let h = start().await;
    let node_a = h.enrol_node("a");
    h.submit_approved("q-1", &["a"]);
    let (sender, inbound) = h.open(&node_a, hello("a")).await;
    let mut inbound = inbound.expect("stream");
    let work = next_work(&mut inbound, Duration::from_secs(10))
        .await
        .expect("work");
    let head_before = h
        .core
        .db()
        .node("a")
        .expect("node")
        .expect("known")
        .audit_head;
    h.core.close_node_stream("a").await;
    assert!(!h.core.is_connected("a"));
    let forged_head = "cd".repeat(32);
    let _ = sender
        .send(v1::NodeMessage {
            message: Some(v1::node_message::Message::Heartbeat(v1::Heartbeat {
                at: now_seconds(),
                audit_head: forged_head.clone(),
                ..Default::default()
            })),
        })
        .await;
    let _ = sender
        .send(released(&work.query_id, b"not arrow".to_vec()))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.state("q-1", "a").0,
        SiteState::Approved,
        "the work waits for the next stream"
    );
    let head_after = h
        .core
        .db()
        .node("a")
        .expect("node")
        .expect("known")
        .audit_head;
    assert_eq!(head_after, head_before);
    assert_ne!(head_after, forged_head);
}

/// A node's budget report as it sends it: `study` has spent `micro` millionths.
fn budgets(study: &str, micro: u64) -> v1::NodeMessage {
    v1::NodeMessage {
        message: Some(v1::node_message::Message::Budgets(v1::BudgetReport {
            studies: vec![v1::StudySpend {
                study_id: study.into(),
                spent_micro: micro,
            }],
        })),
    }
}

/// Red team (#18): a node that forgot charges (its audit log lost, or rotated with the
/// charges edited away) reports a study's spending lower than before. The node's files
/// cannot show it; the coordinator, which kept the earlier report, puts it in the audit
/// trail for the operator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_whose_reported_spending_goes_down_is_in_the_audit_trail() {
    let h = start().await;
    let node_a = h.enrol_node("a");
    let (sender, inbound) = h.open(&node_a, hello("a")).await;
    let _inbound = inbound.expect("stream");
    let decreases = || {
        h.core
            .db()
            .audit_summary(100)
            .expect("summary")
            .recent
            .into_iter()
            .filter(|event| event.kind.as_str() == "budget-decreased")
            .collect::<Vec<_>>()
    };
    for (micro, what) in [(2_000_000, "spent"), (3_000_000, "spent more")] {
        sender.send(budgets("s1", micro)).await.expect(what);
    }
    eventually(|| {
        h.core
            .site_privacy("a")
            .is_some_and(|p| p.spent_micro.get("s1") == Some(&3_000_000))
    })
    .await;
    assert!(decreases().is_empty(), "spending that grows is normal");
    sender.send(budgets("s1", 1_000_000)).await.expect("forgot");
    eventually(|| !decreases().is_empty()).await;
    let event = &decreases()[0];
    assert_eq!(event.site, "a");
    assert!(
        event.detail.contains("3000000 -> 1000000"),
        "{}",
        event.detail
    );
}
