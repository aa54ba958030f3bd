//! Hostile callers against a real coordinator over loopback TLS (issue: hostile input at
//! every edge): tokens checked before bodies are decoded, one authorization header, no
//! owner named in a refusal, bounded echoes, pages on every list, a deadline ceiling,
//! open-question caps, per-source connection and handshake caps, and node-supplied words
//! kept only in their shape. After each attack the server still serves.

use crate::common;

use std::time::{Duration, Instant};

use common::{SQL, STUDY, start, submit};
use ern_coordinator::limits::{ConnectionLimits, Limits};
use ern_coordinator::model::{Role, SiteState, StoredQuery};
use ern_proto::approval::Approval;
use ern_proto::transport::{self, BearerToken};
use ern_proto::v1;
use ern_proto::v1::operator_client::OperatorClient;
use ern_proto::v1::researcher_client::ResearcherClient;
use ern_proto::v1::steward_client::StewardClient;
use tokio::io::AsyncReadExt;
use tonic::metadata::MetadataValue;

fn generous() -> Limits {
    Limits {
        submits_per_minute: 10_000,
        ..Limits::default()
    }
}

/// A client without any token.
async fn anonymous(net: &common::Network) -> ResearcherClient<tonic::transport::Channel> {
    let channel = transport::endpoint(&net.url, Some(&net.trust()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    ResearcherClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_checked_before_the_body_is_decoded() {
    let net = start(generous()).await;
    let mut stranger = anonymous(&net).await;
    // Over the 256 KiB user limit: an unauthenticated caller hears about its token, not
    // about the size, because the body is never read.
    let oversized = submit("big", &format!("{SQL} /* {} */", "x".repeat(400 << 10)));
    let status = stranger
        .submit(oversized.clone())
        .await
        .expect_err("no token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let mut forged = tonic::Request::new(oversized.clone());
    forged.metadata_mut().insert(
        "authorization",
        MetadataValue::from_static("Bearer ern_0000"),
    );
    let status = stranger.submit(forged).await.expect_err("unknown token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // With a real token the same message is refused by its size.
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let status = researcher.submit(oversized).await.expect_err("too big");
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
        .expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_authorization_headers_and_a_wrong_role_reveal_nothing() {
    let net = start(generous()).await;
    let researcher_token = auth_token(&net, "ada", Role::Researcher, "");
    let steward_token = auth_token(&net, "sam-the-steward", Role::Steward, "a");
    let mut stranger = anonymous(&net).await;

    let mut doubled = tonic::Request::new(v1::ListQueriesRequest::default());
    for token in [&researcher_token, &steward_token] {
        doubled.metadata_mut().append(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    let status = stranger
        .list_queries(doubled)
        .await
        .expect_err("two headers");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(status.message().contains("more than one"), "{status:?}");

    let mut wrong_role = tonic::Request::new(v1::ListQueriesRequest::default());
    wrong_role.metadata_mut().insert(
        "authorization",
        format!("Bearer {steward_token}").parse().expect("header"),
    );
    let status = stranger
        .list_queries(wrong_role)
        .await
        .expect_err("a steward");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("researcher role"), "{status:?}");
    assert!(
        !status.message().contains("sam-the-steward"),
        "the token's owner is not named: {status:?}"
    );
}

fn auth_token(net: &common::Network, name: &str, role: Role, site: &str) -> String {
    ern_coordinator::auth::enrol(
        net.core.db(),
        "test",
        &ern_coordinator::auth::Enrolment::new(name, role, site).with_new_site(),
        0,
    )
    .expect("enrol")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_echo_at_most_a_short_escaped_piece_of_the_input() {
    let net = start(generous()).await;
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let long_id = format!("\u{1b}[2K{}", "q".repeat(200_000));
    let status = researcher
        .get_status(v1::GetStatusRequest {
            query_id: long_id.clone(),
            wait_seconds: 0,
        })
        .await
        .expect_err("no such question");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert!(status.message().len() < 300, "{}", status.message().len());
    assert!(!status.message().contains('\u{1b}'), "{status:?}");

    let mut asked = submit("t", SQL);
    asked.sites = vec![long_id];
    let status = researcher.submit(asked).await.expect_err("unknown site");
    assert!(status.message().len() < 300, "{}", status.message().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_titles_and_open_questions_have_ceilings() {
    let limits = Limits {
        max_open_questions: 3,
        ..generous()
    };
    let net = start(limits).await;
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    for seconds in [31 * 24 * 3600, 1 << 62, 1 << 63, u64::MAX] {
        let mut asked = submit("far", SQL);
        asked.deadline_seconds = seconds;
        let status = researcher.submit(asked).await.expect_err("too far");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("deadline limit"), "{status:?}");
    }
    let status = researcher
        .submit(submit(&"t".repeat(201), SQL))
        .await
        .expect_err("long title");
    assert!(
        status.message().contains("title length limit"),
        "{status:?}"
    );

    for n in 0..3 {
        let mut asked = submit(&format!("q{n}"), SQL);
        asked.deadline_seconds = 30 * 24 * 3600;
        let accepted = researcher.submit(asked).await.expect("within limits");
        assert!(accepted.into_inner().deadline > 0);
    }
    let status = researcher
        .submit(submit("fourth", SQL))
        .await
        .expect_err("over the open-questions limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("open questions limit"),
        "{status:?}"
    );
    // Another researcher is unaffected.
    let mut other = net.researcher(net.user("ben", Role::Researcher, "")).await;
    other
        .submit(submit("mine", SQL))
        .await
        .expect("ben's first");
}

/// Stores `count` questions of `researcher` at sites a and b straight in the database
/// (the submit path is tested elsewhere; here the lists are).
fn many_questions(net: &common::Network, researcher: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|n| {
            let id = format!("q-{n:012x}");
            let query = StoredQuery {
                id: id.clone(),
                study_id: STUDY.into(),
                title: "t".repeat(200),
                purpose: String::new(),
                sql: SQL.into(),
                query_hash: ern_queries::query_hash(SQL),
                submitted_by: researcher.into(),
                submitted_at: n as u64,
                deadline: u64::from(u32::MAX),
                complete: false,
                failure: String::new(),
                withdrawn_at: 0,
            };
            net.core
                .db()
                .insert_query(&query, &["a".into(), "b".into()])
                .expect("insert");
            id
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_comes_in_pages_that_neither_repeat_nor_skip() {
    let net = start(generous()).await;
    let ids = many_questions(&net, "ada", 250);
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = researcher
            .list_queries(v1::ListQueriesRequest {
                page_size: 0,
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        assert!(page.queries.len() <= 100);
        seen.extend(page.queries.into_iter().map(|q| q.query_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pages, 3);
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let channel = transport::endpoint(&net.url, Some(&net.trust()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let steward = BearerToken::new(&auth_token(&net, "sam", Role::Steward, "a")).expect("token");
    let mut steward = StewardClient::with_interceptor(channel.clone(), steward);
    let mut pending = Vec::new();
    let mut token = String::new();
    loop {
        let page = steward
            .list_pending(v1::ListPendingRequest {
                page_size: 64,
                page_token: token,
            })
            .await
            .expect("pending page")
            .into_inner();
        assert!(page.queries.len() <= 64);
        pending.extend(page.queries.into_iter().map(|q| q.query_id));
        token = page.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(pending, ids, "oldest first, each once");

    let operator = BearerToken::new(&auth_token(&net, "op", Role::Operator, "")).expect("token");
    let mut operator = OperatorClient::with_interceptor(channel, operator);
    let first = operator
        .list_users(v1::ListUsersRequest {
            page_size: 2,
            page_token: String::new(),
        })
        .await
        .expect("users")
        .into_inner();
    assert_eq!(first.users.len(), 2);
    let second = operator
        .list_users(v1::ListUsersRequest {
            page_size: 1000,
            page_token: first.next_page_token,
        })
        .await
        .expect("users")
        .into_inner();
    assert!(second.next_page_token.is_empty());
    let mut names: Vec<String> = first
        .users
        .iter()
        .chain(&second.users)
        .map(|u| u.name.clone())
        .collect();
    let listed = names.len();
    names.dedup();
    assert_eq!(names.len(), listed, "no repeats");
    assert_eq!(listed, 5, "two nodes, ada, sam, op");

    let nodes = operator
        .list_nodes(v1::ListNodesRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(nodes.nodes.len(), 1);
    assert_eq!(nodes.nodes[0].site, "a");
    let rest = operator
        .list_nodes(v1::ListNodesRequest {
            page_size: 1,
            page_token: nodes.next_page_token,
        })
        .await
        .expect("nodes")
        .into_inner();
    assert_eq!(rest.nodes[0].site, "b");

    let status = operator
        .list_users(v1::ListUsersRequest {
            page_size: 1,
            page_token: "\u{1b}not-ours".into(),
        })
        .await
        .expect_err("a foreign token");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connections_from_one_source_are_capped_and_time_out() {
    let limits = Limits {
        connections: ConnectionLimits {
            max_connections: 64,
            per_source: 8,
            handshakes_per_source: 3,
            handshake_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..generous()
    };
    let net = start(limits).await;
    let address = net.url.trim_start_matches("https://").to_string();
    // Three silent connections hold every handshake slot of 127.0.0.1.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fourth is closed at once.
    let mut fourth = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut byte))
        .await
        .expect("closed, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // The silent ones are dropped when their handshake time runs out.
    let started = Instant::now();
    for mut stream in silent {
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut byte))
            .await
            .expect("dropped by the handshake timeout");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    // And the source is served again.
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    researcher
        .list_queries(v1::ListQueriesRequest::default())
        .await
        .expect("served after the flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_only_well_formed_words_at_the_coordinator() {
    let net = start(generous()).await;
    let certificate = net.ca.issue_node("a").expect("node a");
    let token = net.node_token("a");
    let (sender, mut inbound) = net
        .open_node_stream(Some(&certificate), &token, "a")
        .await
        .expect("stream");
    inbound.message().await.expect("welcome").expect("welcome");
    drop(sender);
    // A Hello with a hostile version, on a stream of its own.
    let hostile = format!("1.0\u{1b}]0;owned\u{7}\u{202e}{}", "9".repeat(10_000));
    let (sender, mut inbound) = net
        .open_node_stream_saying(
            Some(&certificate),
            &token,
            v1::Hello {
                site_id: "a".into(),
                k: 5,
                version: hostile,
                max_concurrent: 1,
                ..Default::default()
            },
        )
        .await
        .expect("stream");
    inbound.message().await.expect("welcome").expect("welcome");

    // A refusal naming a forged rule, for a question of site a.
    let id = many_questions(&net, "ada", 1).remove(0);
    let approval = Approval {
        study_id: id.clone(),
        site_id: "a".into(),
        query_hash: ern_queries::query_hash(SQL),
        expires_at: u64::MAX / 2,
        key_id: "0123456789abcdef".into(),
        signature: vec![1u8; 64],
    };
    assert!(
        net.core
            .db()
            .approve(&id, "s", &approval, 0)
            .expect("approve")
    );
    assert!(
        net.core
            .db()
            .mark_dispatched(&id, "a", 0)
            .expect("dispatch")
    );
    sender
        .send(v1::NodeMessage {
            message: Some(v1::node_message::Message::Result(v1::WorkResult {
                query_id: id.clone(),
                outcome: Some(v1::work_result::Outcome::Refused(v1::Refused {
                    rule: "answered\u{1b}[2K\n2026-12-01 INFO forged".into(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
        })
        .await
        .expect("queue");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let node = net.core.db().node("a").expect("node").expect("known");
    assert!(
        !node.version.chars().any(char::is_control),
        "{:?}",
        node.version
    );
    assert!(!node.version.contains('\u{202e}'));
    assert!(node.version.len() < 200, "{}", node.version.len());
    let targets = net.core.db().targets(&id).expect("targets");
    let site_a = targets.iter().find(|t| t.site == "a").expect("site a");
    assert_eq!(site_a.state, SiteState::Refused);
    assert_eq!(site_a.detail, "unreadable-rule");
    drop(sender);
}

/// Red team round 2: health checking and reflection answer without a token, and decoded
/// 4 MB messages for anyone (300 of them took the coordinator to 1.28 GB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_services_without_a_token_take_only_small_messages() {
    let net = start(generous()).await;
    let channel = transport::endpoint(&net.url, Some(&net.trust()))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "x".repeat(1 << 20),
        })
        .await
        .expect_err("a megabyte to the health service");
    assert!(
        matches!(
            status.code(),
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
        ),
        "{status:?}"
    );
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ern.v1.Researcher".into(),
        })
        .await
        .expect("a real health check still answers");
}

/// Red team round 2: connections that finished TLS and then sent nothing held every
/// connection slot; the HTTP/2 preface is now part of the handshake, and its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_finishes_tls_and_says_nothing_is_closed() {
    use std::sync::Arc;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let limits = Limits {
        connections: ConnectionLimits {
            handshake_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..generous()
    };
    let net = start(limits).await;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(net.ca.cert_pem().as_bytes()) {
        roots.add(ca.expect("CA")).expect("root");
    }
    let config = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let address = net.url.trim_start_matches("https://").to_string();
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("the TLS handshake itself succeeds");
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut byte))
        .await
        .expect("closed by the server, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Red team round 3: a client that speaks HTTP/2 (preface, SETTINGS, ping answers) but
    // never makes an authenticated call is closed once its grace is over.
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    use tokio::io::AsyncWriteExt;
    tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("SETTINGS");
    tls.flush().await.expect("flush");
    let started = Instant::now();
    let mut sink = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(6), tls.read(&mut sink)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue, // the server's SETTINGS, its ack, pings
            Err(_) => panic!("an anonymous HTTP/2 connection was left open"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// Red team round 2: 60 concurrent submissions at 99 open questions stored 101; the
/// count and the insert are now one transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_cannot_pass_the_open_questions_cap_together() {
    let limits = Limits {
        max_open_questions: 3,
        ..generous()
    };
    let net = start(limits).await;
    let researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let mut calls = Vec::new();
    for n in 0..24 {
        let mut researcher = researcher.clone();
        calls.push(tokio::spawn(async move {
            researcher.submit(submit(&format!("q{n}"), SQL)).await
        }));
    }
    let mut stored = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => stored += 1,
            Err(status) => assert!(
                status.message().contains("open questions limit"),
                "{status:?}"
            ),
        }
    }
    assert_eq!(stored, 3);
    assert_eq!(net.core.db().open_questions_of("ada").expect("open"), 3);
}

/// Red team round 2: refusals quoted the question raw and whole (terminal escapes in a
/// table name came back to the researcher's terminal; a 64 KiB question, a 64 KiB error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_quote_the_question_escaped_and_short() {
    let net = start(generous()).await;
    let mut researcher = net.researcher(net.user("ada", Role::Researcher, "")).await;
    let hostile = "SELECT p.sex, COUNT(*) AS n FROM \"\u{1b}]0;pwned\u{7}\u{1b}[2K\r\u{202e}evil\" p GROUP BY p.sex";
    let status = researcher
        .submit(submit("t", hostile))
        .await
        .expect_err("an unknown table");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        !status
            .message()
            .chars()
            .any(|c| c.is_control() || c == '\u{202e}'),
        "{:?}",
        status.message()
    );
    let long = format!("SELECT {}", "S".repeat(60 << 10));
    let status = researcher
        .submit(submit("t", &long))
        .await
        .expect_err("not a question");
    assert!(status.message().len() < 4000, "{}", status.message().len());
}
