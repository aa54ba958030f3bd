//! The network end to end: a coordinator and hospital nodes as separate `ern` processes
//! with config files, talking gRPC over loopback, driven through the commands that
//! researchers, stewards and operators type.

use crate::harness;

use std::time::Duration;

use harness::{Network, SEX_BAND_SQL, expected_sex_band, ok, sex_band_rows, stderr, stdout};

#[test]
fn lifecycle_with_a_rejection_an_offline_site_and_an_unknown_steward_key() {
    let mut net = Network::new(4, 2400, 5);
    for site in ["site-1", "site-2", "site-4"] {
        net.start_node_connected(site);
    }
    let id = net.submit(SEX_BAND_SQL, "Patients by sex and birth band", &[]);
    assert!(id.starts_with("q-"), "{id}");

    // site-1: the steward sees the question, reviews it, approves it.
    let steward_1 = net.site("site-1").steward_token.clone();
    let pending = ok(net.ern_as(&steward_1, &["steward", "pending"]));
    assert!(pending.contains(&id), "{pending}");
    let pending = harness::json(&ok(
        net.ern_as(&steward_1, &["steward", "pending", "--format", "json"])
    ));
    assert_eq!(pending[0]["id"], id.as_str(), "{pending}");
    let listed = harness::json(&ok(
        net.ern_as(&net.researcher, &["list", "--format", "json"])
    ));
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["state"], "running", "{listed}");
    let shown = ok(net.ern_as(&steward_1, &["steward", "show", &id]));
    assert!(shown.contains("COUNT(DISTINCT p.pid)"), "{shown}");
    assert!(
        shown.contains("5 distinct patients per released group"),
        "{shown}"
    );
    assert!(
        shown.contains(&ern_queries::query_hash(SEX_BAND_SQL)),
        "{shown}"
    );
    ok(net.approve("site-1", &id));

    // site-2: rejected with a reason.
    let steward_2 = net.site("site-2").steward_token.clone();
    ok(net.ern_as(
        &steward_2,
        &[
            "steward",
            "reject",
            &id,
            "--reason",
            "outside our ethics approval",
        ],
    ));

    // site-3: approved while its node is offline.
    ok(net.approve("site-3", &id));

    // site-4: signed with a key the node does not know.
    let rogue = net.dir.path().join("rogue");
    ok(harness::ern(&[
        "keygen",
        "steward",
        "--out",
        harness::path(&rogue),
    ]));
    let steward_4 = net.site("site-4").steward_token.clone();
    ok(net.ern_as(
        &steward_4,
        &[
            "steward",
            "approve",
            &id,
            "--key",
            harness::path(&rogue.with_extension("key")),
            "--site",
            "site-4",
            "--hash",
            &ern_queries::query_hash(SEX_BAND_SQL),
        ],
    ));

    harness::wait_until(
        "site-1 and site-4 to finish",
        Duration::from_secs(30),
        || {
            let states = net.site_states(&id);
            states["site-1"].0 == "answered" && states["site-4"].0 == "refused"
        },
    );
    let states = net.site_states(&id);
    assert_eq!(states["site-2"].0, "rejected");
    // People read the same states in words.
    let table = ok(net.ern_as(&net.researcher, &["status", &id]));
    assert!(table.contains("rejected by the steward"), "{table}");
    assert!(table.contains("refused by the node"), "{table}");
    assert_eq!(states["site-2"].1, "outside our ethics approval");
    assert_eq!(states["site-3"].0, "approved");
    assert_eq!(states["site-4"].1, "approval-unknown-key");
    let early = net.ern_as(&net.researcher, &["results", &id]);
    assert!(!early.status.success());
    assert!(
        stderr(&early).contains("not complete"),
        "{}",
        stderr(&early)
    );

    // site-3 comes online and catches up.
    net.start_node("site-3");
    net.wait_complete(&id);
    let states = net.site_states(&id);
    assert_eq!(states["site-3"].0, "answered");

    let rows = net.results_csv(&id);
    let exports = [
        net.site("site-1").export.as_path(),
        net.site("site-3").export.as_path(),
    ];
    let expected = expected_sex_band(&exports, 5);
    assert!(!expected.is_empty());
    assert_eq!(sex_band_rows(&rows), expected);

    // Every output format.
    let json = ok(net.ern_as(&net.researcher, &["results", &id, "--format", "json"]));
    assert!(
        json.trim_start().starts_with('[') && json.contains("\"patients\""),
        "{json}"
    );
    for (format, magic) in [("parquet", &b"PAR1"[..]), ("arrow", &b"ARROW1"[..])] {
        let file = net.dir.path().join(format!("result.{format}"));
        ok(net.ern_as(
            &net.researcher,
            &[
                "results",
                &id,
                "--format",
                format,
                "--out",
                harness::path(&file),
            ],
        ));
        let bytes = std::fs::read(&file).expect("result file");
        assert_eq!(&bytes[..magic.len()], magic, "{format}");
    }
    let table = ok(net.ern_as(&net.researcher, &["results", &id]));
    assert!(
        table.contains("patients") && table.contains("site-3"),
        "{table}"
    );
    let list = ok(net.ern_as(&net.researcher, &["list"]));
    assert!(list.contains(&id) && list.contains("complete"), "{list}");
    let audit = ok(net.ern_as(&net.operator, &["operator", "audit", "--recent", "100"]));
    for kind in [
        "submitted",
        "approved",
        "rejected",
        "refused",
        "answered",
        "merged",
    ] {
        assert!(audit.contains(kind), "no {kind} event in\n{audit}");
    }
    // Tokens and keys never reach a log.
    let logs = net.logs();
    assert!(logs.contains("connected"), "the logs hold the run:\n{logs}");
    let secrets = net.secrets();
    assert!(secrets.len() > 10);
    for secret in secrets {
        assert!(!logs.contains(&secret), "a token or key reached a log");
    }
}

#[test]
fn kill_9_of_the_coordinator_between_approval_and_result_loses_nothing() {
    let mut net = Network::new(2, 1500, 5);
    let id = net.submit(SEX_BAND_SQL, "Survives a crash", &[]);
    ok(net.approve("site-1", &id));
    ok(net.approve("site-2", &id));
    net.kill_coordinator();
    net.start_coordinator();
    let states = net.site_states(&id);
    assert_eq!(states["site-1"].0, "approved");
    assert_eq!(states["site-2"].0, "approved");
    net.start_node("site-1");
    net.start_node("site-2");
    net.wait_complete(&id);
    let expected = expected_sex_band(
        &[
            net.site("site-1").export.as_path(),
            net.site("site-2").export.as_path(),
        ],
        5,
    );
    assert_eq!(sex_band_rows(&net.results_csv(&id)), expected);

    // And again once the result is stored: it is still there after another kill -9.
    net.kill_coordinator();
    net.start_coordinator();
    assert_eq!(sex_band_rows(&net.results_csv(&id)), expected);
}

#[test]
fn a_restarted_node_picks_up_work_approved_while_it_was_down() {
    let mut net = Network::new(1, 800, 5);
    net.start_node_connected("site-1");
    net.stop_node("site-1");
    let id = net.submit(SEX_BAND_SQL, "Node restarts", &[]);
    ok(net.approve("site-1", &id));
    net.start_node("site-1");
    net.wait_complete(&id);
    assert_eq!(net.site_states(&id)["site-1"].0, "answered");
}

/// Red team, 2026-12: a coordinator that showed one question at `ern steward show` and
/// returned another at `approve` got a real signature for a question the steward never
/// saw, and the CLI signed whatever site the coordinator named. Here the second question
/// stands for the swapped one: the steward approves it with the hash of the first.
#[test]
fn a_steward_signs_only_the_question_reviewed_for_their_own_site() {
    let net = Network::new(2, 600, 5);
    let reviewed = net.submit(SEX_BAND_SQL, "Reviewed", &[]);
    let swapped = net.submit(
        "SELECT p.birth_year, p.birth_month, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.birth_year, p.birth_month, p.sex",
        "Swapped",
        &[],
    );
    let steward_1 = net.site("site-1").steward_token.clone();
    let key_1 = net.site("site-1").steward_key.clone();
    let shown = ok(net.ern_as(&steward_1, &["steward", "show", &reviewed]));
    let reviewed_hash = ern_queries::query_hash(SEX_BAND_SQL);
    assert!(shown.contains(&reviewed_hash), "{shown}");
    let approve = |id: &str, extra: &[&str]| {
        let mut args = vec!["steward", "approve", id, "--key", harness::path(&key_1)];
        args.extend_from_slice(extra);
        net.ern_as(&steward_1, &args)
    };

    let out = approve(&swapped, &["--site", "site-1", "--hash", &reviewed_hash]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not the one you reviewed"),
        "{}",
        stderr(&out)
    );
    let out = approve(&reviewed, &["--site", "site-2", "--hash", &reviewed_hash]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("for site site-1, and you sign for site-2"),
        "{}",
        stderr(&out)
    );
    let out = approve(&reviewed, &["--hash", &reviewed_hash]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--site"), "{}", stderr(&out));
    // Without --hash, only a terminal can confirm; a script cannot sign blind.
    let out = approve(&reviewed, &["--site", "site-1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("without a terminal"),
        "{}",
        stderr(&out)
    );
    // Nor a question the coordinator now presents under another study than the one the
    // steward reviewed it under (the approval signs the study).
    let out = approve(
        &reviewed,
        &[
            "--site",
            "site-1",
            "--hash",
            &reviewed_hash,
            "--study",
            "study-2",
        ],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("under study study-1, not the study study-2 you reviewed"),
        "{}",
        stderr(&out)
    );
    for id in [&reviewed, &swapped] {
        assert_eq!(net.site_states(id)["site-1"].0, "awaiting-approval", "{id}");
    }
    let out = ok(approve(
        &reviewed,
        &["--site", "site-1", "--hash", &reviewed_hash],
    ));
    assert!(out.contains(&reviewed_hash), "{out}");
    assert_eq!(net.site_states(&reviewed)["site-1"].0, "approved");
}

#[test]
fn roles_and_sites_are_enforced() {
    let mut net = Network::new(2, 600, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Only for site 2", &["site-2"]);
    let steward_1 = net.site("site-1").steward_token.clone();
    let key_1 = net.site("site-1").steward_key.clone();

    // A researcher cannot approve.
    let denied = net.ern_as(
        &net.researcher,
        &["steward", "approve", &id, "--key", harness::path(&key_1)],
    );
    assert!(!denied.status.success());
    assert!(
        stderr(&denied).contains("not allowed"),
        "{}",
        stderr(&denied)
    );

    // A steward of site-1 can neither see nor approve site-2's work.
    assert!(!ok(net.ern_as(&steward_1, &["steward", "pending"])).contains(&id));
    for args in [
        vec!["steward", "show", id.as_str()],
        vec![
            "steward",
            "approve",
            id.as_str(),
            "--key",
            harness::path(&key_1),
        ],
        vec!["steward", "reject", id.as_str(), "--reason", "no"],
    ] {
        let out = net.ern_as(&steward_1, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("not found"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // Nor read a researcher's results.
    let out = net.ern_as(&steward_1, &["results", &id]);
    assert!(stderr(&out).contains("not allowed"), "{}", stderr(&out));

    // A node token cannot call user APIs.
    let node_1 = net.site("site-1").node_token.clone();
    for args in [
        vec!["operator", "user", "add", "mallory", "--role", "operator"],
        vec!["list"],
        vec!["steward", "pending"],
    ] {
        let out = net.ern_as(&node_1, &args);
        assert!(
            stderr(&out).contains("not allowed"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // An unknown token is not authenticated.
    let out = net.ern_as("ern_0000", &["list"]);
    assert!(
        stderr(&out).contains("not authenticated"),
        "{}",
        stderr(&out)
    );
    // Only operators enrol.
    let out = net.ern_as(
        &net.researcher,
        &["operator", "user", "add", "eve", "--role", "operator"],
    );
    assert!(stderr(&out).contains("not allowed"), "{}", stderr(&out));

    // A node cannot claim another site: site-1's token in site-2's config (with site-2's
    // certificate, which names site-2).
    let site_2 = net.site("site-2").dir.clone();
    std::fs::write(site_2.join("node.token"), format!("{node_1}\n")).expect("token");
    net.start_node("site-2");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!net.node_connected("site-2"));
    let log = std::fs::read_to_string(site_2.join("node.log")).unwrap_or_default();
    assert!(
        log.contains("certificate is bound to site site-2, its token to site site-1"),
        "{log}"
    );

    // The approval by site-2's own steward is still pending its real node.
    ok(net.approve("site-2", &id));
    assert_eq!(net.site_states(&id)["site-2"].0, "approved");
}

#[test]
fn a_refused_question_is_refused_at_submission_with_its_rule() {
    let net = Network::new(1, 300, 5);
    let out = net.ern_as(
        &net.researcher,
        &[
            "submit",
            "--study",
            harness::STUDY,
            "--sql-text",
            "SELECT pid FROM patient",
            "--title",
            "rows",
        ],
    );
    assert!(!out.status.success());
    assert!(stdout(&out).is_empty());
    let message = stderr(&out);
    assert!(
        message.contains("refused") && message.contains("rule 2"),
        "{message}"
    );
    let audit = ok(net.ern_as(&net.operator, &["operator", "audit"]));
    assert!(audit.contains("refused-at-submit"), "{audit}");
}

#[test]
fn health_checking_and_reflection_answer_standard_clients() {
    // Health checking needs no token; reflection needs any enrolled user's.
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let net = Network::new(1, 200, 5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let trust = ern_proto::transport::ClientTls {
            ca_pem: std::fs::read(&net.ca).expect("network CA"),
            ..Default::default()
        };
        let channel = ern_proto::transport::endpoint(&net.url, Some(&trust))
            .expect("url")
            .connect()
            .await
            .expect("connect over TLS");
        let mut health = HealthClient::new(channel.clone());
        for service in [
            "ern.v1.Researcher",
            "ern.v1.Steward",
            "ern.v1.Operator",
            "ern.v1.NodeLink",
        ] {
            let response = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .expect("health check")
                .into_inner();
            assert_eq!(response.status, ServingStatus::Serving as i32, "{service}");
        }
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        // Reflection answers enrolled users only (its replies are large; red team round
        // 3 filled memory with replies nobody read).
        let mut stranger = ServerReflectionClient::new(channel.clone());
        let refused = stranger
            .server_reflection_info(tokio_stream::iter(vec![request.clone()]))
            .await
            .expect_err("no token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let token = ern_proto::transport::BearerToken::new(&net.operator).expect("token");
        let mut reflection = ServerReflectionClient::with_interceptor(channel, token);
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses
            .message()
            .await
            .expect("reply")
            .expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("not a service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for service in [
            "ern.v1.Researcher",
            "ern.v1.Steward",
            "ern.v1.Operator",
            "ern.v1.NodeLink",
            "grpc.health.v1.Health",
        ] {
            assert!(
                names.iter().any(|n| n == service),
                "{service} missing from {names:?}"
            );
        }
        // The same over v1alpha, which some clients speak only (Python's
        // grpcio-reflection got UNIMPLEMENTED).
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as AlphaClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
        let token = ern_proto::transport::BearerToken::new(&net.operator).expect("token");
        let channel = ern_proto::transport::endpoint(&net.url, Some(&trust))
            .expect("url")
            .connect()
            .await
            .expect("connect over TLS");
        let mut alpha = AlphaClient::with_interceptor(channel, token);
        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let response = alpha
            .server_reflection_info(tokio_stream::iter(vec![request]))
            .await
            .expect("v1alpha reflection")
            .into_inner()
            .message()
            .await
            .expect("reply")
            .expect("one reply");
        let Some(AlphaResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("not a service list");
        };
        assert!(
            list.service.iter().any(|s| s.name == "ern.v1.Researcher"),
            "{:?}",
            list.service
        );
    });
}

/// Red team, 2026-12: an expression over the merged totals that fails (here a division
/// by zero) made the coordinator merge the question again every half second, forever.
/// Now the question ends as failed, with the reason and no value.
#[test]
fn a_merge_that_fails_ends_the_question_with_its_reason() {
    let mut net = Network::new(1, 600, 5);
    net.start_node_connected("site-1");
    let id = net.submit(
        "SELECT p.sex, COUNT(*) / (COUNT(*) - COUNT(*)) AS ratio FROM patient p GROUP BY p.sex",
        "Divides by zero after the merge",
        &[],
    );
    ok(net.approve("site-1", &id));
    harness::wait_until("the question to fail", Duration::from_secs(30), || {
        ok(net.ern_as(&net.researcher, &["status", &id])).contains("state: failed")
    });
    let status = ok(net.ern_as(&net.researcher, &["status", &id]));
    assert!(status.contains("divides by zero"), "{status}");
    let results = net.ern_as(&net.researcher, &["results", &id]);
    assert!(!results.status.success());
    assert!(
        stderr(&results)
            .contains("could not be merged: an expression over the merged totals divides by zero"),
        "{}",
        stderr(&results)
    );
}

/// Red team, 2026-12: titles, SQL comments and reject reasons reached terminals raw. An
/// ANSI sequence hidden in a SQL comment showed a steward a harmless question; a reject
/// reason drew a fake row. Every other party's text is now printed with control
/// characters, bidirectional overrides and invisible characters escaped, and `ern
/// steward show` lists the SQL's comments.
#[test]
fn hostile_strings_reach_no_terminal_raw() {
    let net = Network::new(1, 600, 5);
    let hostile_title = "Patients\u{1b}[2K\r\u{1b}[1Aby sex\u{202e}xes yb\u{200b}";
    let sql = "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p -- \u{1b}[8m hidden\nGROUP BY p.sex";
    let id = net.submit(sql, hostile_title, &[]);
    let steward = net.site("site-1").steward_token.clone();
    let mut outputs = vec![
        ok(net.ern_as(&steward, &["steward", "pending"])),
        ok(net.ern_as(&steward, &["steward", "show", &id])),
    ];
    assert!(
        outputs[1].contains("NOTE: the SQL holds 1 comment(s)"),
        "{}",
        outputs[1]
    );
    ok(net.ern_as(
        &steward,
        &[
            "steward",
            "reject",
            &id,
            "--reason",
            "no\r\n│ site-1 ┆ answered ┆\u{1b}[0m\u{7}",
        ],
    ));
    outputs.push(ok(net.ern_as(&net.researcher, &["status", &id])));
    outputs.push(ok(net.ern_as(&net.researcher, &["list"])));
    for output in &outputs {
        let raw: Vec<char> = output
            .chars()
            .filter(|&c| {
                (c.is_control() && c != '\n')
                    || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
            })
            .collect();
        assert!(raw.is_empty(), "raw {raw:?} in:\n{output}");
    }
    assert!(outputs[2].contains("\\u{1b}"), "{}", outputs[2]);
}

/// Red team, 2026-12: deleting the last entries of a node's audit log left an intact
/// chain, so it went unnoticed. The node reports its audit head with every heartbeat and
/// result; the coordinator keeps the latest (`ern operator nodes`), and `ern node audit
/// verify --head` finds a log that no longer holds it.
#[test]
fn a_removed_audit_tail_is_found_against_the_head_the_coordinator_kept() {
    let mut net = Network::new(1, 600, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Audited", &[]);
    ok(net.approve("site-1", &id));
    harness::wait_until("the answer", Duration::from_secs(30), || {
        net.site_states(&id)["site-1"].0 == "answered"
    });
    let config = net.site("site-1").dir.join("node.toml");
    let log = net.site("site-1").dir.join(ern_node::audit::AUDIT_FILE);
    let entries = ern_node::audit::read_entries(&log).expect("audit log");
    let head = entries.last().expect("an entry").hash.clone();
    harness::wait_until(
        "the coordinator to keep the head",
        Duration::from_secs(30),
        || ok(net.ern_as(&net.operator, &["operator", "nodes"])).contains(&head),
    );
    let config_arg = config.to_str().expect("utf-8").to_string();
    ok(harness::ern(&[
        "node",
        "audit",
        "verify",
        "--config",
        &config_arg,
        "--head",
        &head,
    ]));

    // The last entry is removed: the chain is still intact, the head is gone.
    let text = std::fs::read_to_string(&log).expect("log");
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    let kept: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&log, kept).expect("truncate");
    ok(harness::ern(&[
        "node",
        "audit",
        "verify",
        "--config",
        &config_arg,
    ]));
    let out = harness::ern(&[
        "node",
        "audit",
        "verify",
        "--config",
        &config_arg,
        "--head",
        &head,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("entries were removed from its end"),
        "{}",
        stderr(&out)
    );
}

/// A question every site turned down is complete, but `ern results` says that no site
/// answered and exits non-zero (it used to print an empty table and exit 0).
#[test]
fn results_exit_non_zero_when_no_site_answered() {
    let mut net = Network::new(2, 300, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Nobody will answer", &[]);
    for site in ["site-1", "site-2"] {
        let steward = net.site(site).steward_token.clone();
        ok(net.ern_as(&steward, &["steward", "reject", &id, "--reason", "not now"]));
    }
    let out = net.ern_as(&net.researcher, &["results", &id]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stderr(&out).contains(&format!("no site answered question {id}")),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("rejected"),
        "the coverage is shown: {}",
        stdout(&out)
    );
}

/// `ern sites` shows a researcher the enrolled sites, which nodes are online and the k
/// each reported, as a table and as JSON.
#[test]
fn a_researcher_lists_the_sites_online_or_not_with_their_k() {
    let mut net = Network::new(2, 300, 5);
    net.start_node_connected("site-1");
    let table = ok(net.ern_as(&net.researcher, &["sites"]));
    assert!(
        table.contains("site-1") && table.contains("site-2"),
        "{table}"
    );
    assert!(table.contains("not yet reported"), "{table}");
    let listed = harness::json(&ok(
        net.ern_as(&net.researcher, &["sites", "--format", "json"])
    ));
    assert_eq!(listed[0]["site"], "site-1", "{listed}");
    assert_eq!(listed[0]["online"], true, "{listed}");
    assert_eq!(listed[0]["k"], 5, "{listed}");
    assert_eq!(listed[0]["noised"], false, "{listed}");
    assert_eq!(listed[1]["site"], "site-2", "{listed}");
    assert_eq!(listed[1]["online"], false, "{listed}");
    assert!(listed[1]["k"].is_null(), "{listed}");
    // Stewards and nodes are not researchers.
    let steward = net.site("site-1").steward_token.clone();
    let out = net.ern_as(&steward, &["sites"]);
    assert!(stderr(&out).contains("not allowed"), "{}", stderr(&out));
}

/// `ern status --wait` returns when the question finishes, held by the coordinator (no
/// client polling), and exits non-zero when the timeout comes first.
#[test]
fn status_wait_returns_when_the_question_finishes_and_fails_at_the_timeout() {
    let mut net = Network::new(1, 300, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Waited for", &[]);
    // Nobody has approved: still running at the timeout.
    let started = std::time::Instant::now();
    let out = net.ern_as(
        &net.researcher,
        &["status", &id, "--wait", "--timeout", "2s"],
    );
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(
        stderr(&out).contains("still running after 2s"),
        "{}",
        stderr(&out)
    );
    // Approved while a wait is under way: the wait ends with the question complete.
    let researcher = net.researcher.clone();
    let waiting = std::thread::scope(|scope| {
        let wait = scope.spawn(|| {
            net.ern_as(
                &researcher,
                &[
                    "status",
                    &id,
                    "--wait",
                    "--timeout",
                    "60s",
                    "--format",
                    "json",
                ],
            )
        });
        std::thread::sleep(std::time::Duration::from_millis(500));
        ok(net.approve("site-1", &id));
        wait.join().expect("the waiting ern")
    });
    let status = harness::json(&ok(waiting));
    assert_eq!(status["state"], "complete", "{status}");
}
