//! Transport security and limits on a real coordinator over loopback TLS: the handshake
//! with the right and a wrong CA, plaintext against TLS, node certificates bound to
//! their site, oversized questions and rate-limited users, and a server that keeps
//! serving everyone else throughout.

use crate::common;

use std::time::Duration;

use common::{SQL, start, submit};
use ern_coordinator::limits::Limits;
use ern_coordinator::model::Role;
use ern_coordinator::pki::NetworkCa;
use ern_proto::transport::{self, ClientTls};
use ern_proto::v1;
use ern_proto::v1::researcher_client::ResearcherClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_needs_the_network_ca_and_tls() {
    let net = start(Limits::default()).await;
    let token = net.user("ada", Role::Researcher, "");

    let mut researcher = net.researcher(token.clone()).await;
    researcher
        .list_queries(v1::ListQueriesRequest::default())
        .await
        .expect("a call over TLS");

    // A client that trusts another CA refuses the coordinator's certificate.
    let (stranger, _) = NetworkCa::generate("other").expect("other ca");
    let wrong = ClientTls {
        ca_pem: stranger.cert_pem().as_bytes().to_vec(),
        ..ClientTls::default()
    };
    let refused = transport::endpoint(&net.url, Some(&wrong))
        .expect("endpoint")
        .connect()
        .await;
    assert!(refused.is_err(), "a wrong CA must fail the handshake");

    // Plaintext to the TLS port gets nowhere.
    let plaintext_url = net.url.replace("https://", "http://");
    let channel = transport::endpoint(&plaintext_url, None)
        .expect("loopback plaintext endpoint")
        .connect()
        .await;
    if let Ok(channel) = channel {
        let mut client = ResearcherClient::with_interceptor(channel, token.clone());
        let call = tokio::time::timeout(
            Duration::from_secs(15),
            client.list_queries(v1::ListQueriesRequest::default()),
        )
        .await;
        assert!(
            !matches!(call, Ok(Ok(_))),
            "a plaintext call to a TLS endpoint must fail"
        );
    }

    // And the coordinator still serves TLS clients afterwards.
    researcher
        .list_queries(v1::ListQueriesRequest::default())
        .await
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_binds_the_node_to_its_site() {
    let net = start(Limits::default()).await;
    let cert_a = net.ca.issue_node("a").expect("node a");
    let token_a = net.node_token("a");
    let token_b = net.node_token("b");

    // Site A's certificate with site B's token: refused.
    let status = net
        .node_stream(Some(&cert_a), &token_b, "b")
        .await
        .expect_err("A's certificate cannot act as B");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("bound to site a"),
        "{}",
        status.message()
    );
    assert!(!net.core.is_connected("b"));

    // No certificate at all: refused, even with a valid node token.
    let status = net
        .node_stream(None, &token_a, "a")
        .await
        .expect_err("a node must present a certificate");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // A certificate of another CA does not even complete the handshake.
    let (stranger, _) = NetworkCa::generate("other").expect("other ca");
    let forged = stranger.issue_node("a").expect("forged");
    assert!(
        net.node_stream(Some(&forged), &token_a, "a").await.is_err(),
        "a certificate of another CA must be refused"
    );

    // A server certificate of the right CA is not a node certificate.
    let server_cert = net
        .ca
        .issue_server(&["localhost".into()])
        .expect("server certificate");
    assert!(
        net.node_stream(Some(&server_cert), &token_a, "a")
            .await
            .is_err(),
        "a server certificate cannot authenticate a node"
    );

    // The right certificate, token and site: welcomed.
    let welcome = net
        .node_stream(Some(&cert_a), &token_a, "a")
        .await
        .expect("site A's node is welcome");
    assert!(matches!(
        welcome.message,
        Some(v1::coordinator_message::Message::Welcome(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_questions_and_eager_users_are_refused_and_others_are_served() {
    let limits = Limits {
        max_sql_bytes: 200,
        submits_per_minute: 3,
        ..Limits::default()
    };
    let net = start(limits).await;
    let mut eager = net
        .researcher(net.user("eager", Role::Researcher, ""))
        .await;
    let mut patient = net
        .researcher(net.user("patient", Role::Researcher, ""))
        .await;

    let oversized = format!("{SQL} {}", "-- padding\n".repeat(40));
    let status = eager
        .submit(submit("big", &oversized))
        .await
        .expect_err("oversized");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("SQL size limit"),
        "{}",
        status.message()
    );

    // The oversized attempt counted; two more fit in the burst of three.
    for n in 0..2 {
        eager
            .submit(submit(&format!("q{n}"), SQL))
            .await
            .expect("within the rate limit");
    }
    let status = eager
        .submit(submit("one too many", SQL))
        .await
        .expect_err("over the rate limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("rate limit"),
        "{}",
        status.message()
    );

    // Someone else is unaffected.
    patient
        .submit(submit("mine", SQL))
        .await
        .expect("another user still submits");
    let listed = eager
        .list_queries(v1::ListQueriesRequest::default())
        .await
        .expect("reading is not rate limited")
        .into_inner();
    assert_eq!(listed.queries.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_is_refused_without_harm() {
    let limits = Limits {
        max_user_message_bytes: 64 << 10,
        max_sql_bytes: 32 << 10,
        ..Limits::default()
    };
    let net = start(limits).await;
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let huge = format!("{SQL} /* {} */", "x".repeat(100 << 10));
    let status = researcher
        .submit(submit("huge", &huge))
        .await
        .expect_err("over the message limit");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    researcher
        .submit(submit("small", SQL))
        .await
        .expect("the server keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stream_outlives_the_call_deadline() {
    // Also past the grace of a connection without an authenticated call, and past the
    // lifetime of a user's connection: a node's connection lives on.
    let limits = Limits {
        rpc_timeout: Duration::from_secs(1),
        connections: ern_coordinator::limits::ConnectionLimits {
            handshake_timeout: Duration::from_secs(1),
            user_connection_max_age: Duration::from_secs(2),
            ..Default::default()
        },
        ..Limits::default()
    };
    let net = start(limits).await;
    let certificate = net.ca.issue_node("a").expect("node a");
    let (sender, mut inbound) = net
        .open_node_stream(Some(&certificate), &net.node_token("a"), "a")
        .await
        .expect("stream");
    inbound.message().await.expect("welcome").expect("welcome");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        net.core.is_connected("a"),
        "the stream outlived the deadline"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), inbound.message())
            .await
            .is_err(),
        "the stream is open and quiet, not ended"
    );
    drop(sender);
}
