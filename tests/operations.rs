//! Operations (issue 18), reproduced through the real binary: what an operator reads in
//! the logs at the default level, what a pipe whose reader has gone does, what a client
//! dials by default.

use crate::harness;

use std::process::{Command, Stdio};
use std::time::Duration;

use harness::{Network, ern_bin, stderr};

/// "connected" and "disconnected" are logged at the default level, and a log written to
/// a file carries no colour codes.
#[test]
fn a_node_logs_its_connection_at_the_default_level_without_colour_in_a_file() {
    let mut net = Network::new(1, 50, 5);
    let site = net.site("site-1");
    let log = site.dir.join("default-level.log");
    let mut node = Command::new(ern_bin())
        .args([
            "node",
            "serve",
            "--config",
            harness::path(&site.dir.join("node.toml")),
        ])
        .env_remove("ERN_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("start the node");
    net.wait_connected("site-1");
    // The coordinator goes away: the node says it is disconnected.
    net.kill_coordinator();
    harness::wait_until(
        "the node to log its disconnection",
        Duration::from_secs(30),
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("disconnected")),
    );
    let _ = node.kill();
    let _ = node.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("ern::link: connected"), "{text}");
    assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
}

/// `ern … | head`: a reader that has gone ends the program quietly, as SIGPIPE ends other
/// tools (status 141), not with a panic.
#[test]
fn a_closed_stdout_ends_the_program_quietly() {
    let mut child = Command::new(ern_bin())
        .args(["schema", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ern");
    // The reader goes before anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("ern ends");
    let text = stderr(&out);
    assert!(!text.contains("panicked"), "{text}");
    assert!(text.trim().is_empty(), "{text}");
    assert_eq!(out.status.code(), Some(141), "{text}");
}

/// The server requires TLS, so the default coordinator URL uses https.
#[test]
fn the_default_coordinator_url_uses_https() {
    let help = harness::stdout(&harness::ern(&["status", "--help"]));
    assert!(help.contains("https://127.0.0.1:50051"), "{help}");
    assert!(!help.contains("http://127.0.0.1"), "{help}");
}

/// Starts `ern node serve --config CONFIG` at the default log level, stderr to `log`.
fn serve_with_default_log(config: &std::path::Path, log: &std::path::Path) -> std::process::Child {
    Command::new(ern_bin())
        .args(["node", "serve", "--config", harness::path(config)])
        .env_remove("ERN_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(log).expect("log")))
        .spawn()
        .expect("start the node")
}

/// A token the coordinator does not know is a permanent refusal: said once, in one
/// clear error, then retried only rarely (it was retried forever, every few seconds).
#[test]
fn a_node_refused_by_the_coordinator_says_so_once_and_backs_off() {
    let net = Network::new(1, 50, 5);
    let site = net.site("site-1");
    let mut wrong = site.node_token.clone();
    let last = if wrong.ends_with('0') { '1' } else { '0' };
    wrong.pop();
    wrong.push(last);
    std::fs::write(site.dir.join("wrong.token"), format!("{wrong}\n")).expect("token");
    let config = std::fs::read_to_string(site.dir.join("node.toml"))
        .expect("node.toml")
        .replace(
            "token_file = \"node.token\"",
            "token_file = \"wrong.token\"",
        );
    let config_path = site.dir.join("wrong-token.toml");
    std::fs::write(&config_path, config).expect("config");
    let log = site.dir.join("refused.log");
    let mut node = serve_with_default_log(&config_path, &log);
    harness::wait_until("the refusal to be logged", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("refuses this node"))
    });
    // Without the backoff, 0.2 s doubling would have tried four more times by now.
    std::thread::sleep(Duration::from_secs(4));
    let _ = node.kill();
    let _ = node.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(text.matches("refuses this node").count(), 1, "{text}");
    assert!(text.contains("Unauthenticated"), "{text}");
    assert!(!text.contains("node link down"), "{text}");
}

/// A coordinator that cannot be reached is named with the root cause, once.
#[test]
fn a_node_that_cannot_connect_names_the_root_cause() {
    let net = Network::new(1, 50, 5);
    let site = net.site("site-1");
    let closed = format!("https://127.0.0.1:{}", harness::free_port());
    let config = std::fs::read_to_string(site.dir.join("node.toml"))
        .expect("node.toml")
        .replace(&net.url, &closed);
    let config_path = site.dir.join("unreachable.toml");
    std::fs::write(&config_path, config).expect("config");
    let log = site.dir.join("unreachable.log");
    let mut node = serve_with_default_log(&config_path, &log);
    harness::wait_until("the failure to be logged", Duration::from_secs(20), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("node link down"))
    });
    let _ = node.kill();
    let _ = node.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    let line = text
        .lines()
        .find(|line| line.contains("node link down"))
        .expect("a line");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(!line.contains("transport error: transport error"), "{line}");
}

/// An error's causes are said once each (they were repeated: "(os error 2): … (os
/// error 2)").
#[test]
fn an_error_says_each_cause_once() {
    let out = harness::ern(&["node", "serve", "--config", "/nonexistent/node.toml"]);
    assert!(!out.status.success());
    let text = stderr(&out);
    assert_eq!(text.matches("os error 2").count(), 1, "{text}");
    assert!(text.contains("/nonexistent/node.toml"), "{text}");
}

/// One node per site: while a site's stream is live, a second node for the site is
/// refused (it used to take turns with the first, about every 0.3 s, forever, answering
/// from whichever store held the stream); the operator sees it; when the first node
/// stops, the second takes over.
#[test]
fn a_second_node_for_a_site_is_refused_while_the_first_is_live_and_takes_over_after() {
    let mut net = Network::new(1, 50, 5);
    net.start_node_connected("site-1");
    let site = net.site("site-1");
    // The same configuration twice on one machine: the audit log is locked, the second
    // process stops before it dials.
    let same = harness::ern(&[
        "node",
        "serve",
        "--config",
        harness::path(&site.dir.join("node.toml")),
    ]);
    assert!(!same.status.success());
    assert!(
        stderr(&same).contains("another process is writing this audit log"),
        "{}",
        stderr(&same)
    );
    // A second machine for the site: its own configuration and audit log.
    let config = std::fs::read_to_string(site.dir.join("node.toml")).expect("node.toml");
    let second_config = site.dir.join("second.toml");
    std::fs::write(
        &second_config,
        format!("audit_log = \"second-audit.log\"\n{config}"),
    )
    .expect("second.toml");
    let log = site.dir.join("second.log");
    let mut second = serve_with_default_log(&second_config, &log);
    harness::wait_until(
        "the second node to be refused",
        Duration::from_secs(20),
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("AlreadyExists")),
    );
    std::thread::sleep(Duration::from_secs(3));
    let text = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        text.matches("another node of this site holds its stream")
            .count(),
        1,
        "said once: {text}"
    );
    assert!(
        !text.contains("ern::link: connected"),
        "no flapping: {text}"
    );
    let nodes = harness::json(&harness::ok(
        net.ern_as(&net.operator, &["operator", "nodes", "--format", "json"]),
    ));
    assert_eq!(nodes[0]["connected"], true, "{nodes}");
    assert!(
        nodes[0]["duplicates_refused"].as_u64() >= Some(1),
        "{nodes}"
    );
    let audit = harness::json(&harness::ok(net.ern_as(
        &net.operator,
        &["operator", "audit", "--recent", "100", "--format", "json"],
    )));
    assert_eq!(
        audit["counts"]["connected"], 1,
        "the first node kept its stream: {audit}"
    );

    // The first node stops: the second takes the site over.
    net.stop_node("site-1");
    harness::wait_until(
        "the second node to take over",
        Duration::from_secs(60),
        || std::fs::read_to_string(&log).is_ok_and(|text| text.contains("ern::link: connected")),
    );
    net.wait_connected("site-1");
    let _ = second.kill();
    let _ = second.wait();
}

/// A missing file named in a configuration is reported with the key that names it and
/// the configuration file (it said only "steward.pub: No such file or directory").
#[test]
fn a_missing_file_in_a_configuration_names_its_key_and_the_configuration() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = dir.path().join("node.toml");
    std::fs::write(
        &node,
        "site_id = \"site-1\"\nstore = \"store\"\nstewards = [\"steward.pub\"]\nk = 5\ncoordinator = \"https://127.0.0.1:1\"\ntoken_file = \"node.token\"\n\n[tls]\nca = \"ca.pem\"\ncert = \"node.pem\"\nkey = \"node.key\"\n",
    )
    .expect("node.toml");
    let out = harness::ern(&["node", "serve", "--config", harness::path(&node)]);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("node.toml: stewards[0] = \"steward.pub\""),
        "{text}"
    );
    assert_eq!(text.matches("os error 2").count(), 1, "{text}");

    let coordinator = dir.path().join("coordinator.toml");
    std::fs::write(
        &coordinator,
        "listen = \"127.0.0.1:0\"\ndatabase = \"c.db\"\n\n[tls]\ncert = \"c.pem\"\nkey = \"c.key\"\nclient_ca = \"ca.pem\"\n",
    )
    .expect("coordinator.toml");
    let out = harness::ern(&[
        "coordinator",
        "serve",
        "--config",
        harness::path(&coordinator),
    ]);
    let text = stderr(&out);
    assert!(!out.status.success());
    assert!(
        text.contains("coordinator.toml: tls.cert = \"c.pem\""),
        "{text}"
    );
}

/// A coordinator whose key does not match its certificate is refused before it says it
/// is serving (it printed "serving" first, then failed).
#[test]
fn a_coordinator_key_that_does_not_match_its_certificate_is_refused_before_serving() {
    let dir = tempfile::tempdir().expect("temp dir");
    for network in ["one", "two"] {
        harness::ok(harness::ern(&[
            "keygen",
            "tls",
            "--out",
            harness::path(&dir.path().join(network)),
            "--site",
            "site-1",
        ]));
    }
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\ndatabase = \"c.db\"\n\n[tls]\ncert = \"one/coordinator.pem\"\nkey = \"two/coordinator.key\"\nclient_ca = \"one/ca.pem\"\n",
            harness::free_port()
        ),
    )
    .expect("coordinator.toml");
    let out = harness::ern(&["coordinator", "serve", "--config", harness::path(&config)]);
    let text = stderr(&out);
    assert!(!out.status.success(), "{text}");
    assert!(!text.contains("serving"), "{text}");
    assert!(text.contains("[tls]"), "{text}");
    assert!(text.to_lowercase().contains("key"), "{text}");
}

/// A token can come from a file (`--token-file`, `ERN_TOKEN_FILE`), not only from the
/// command line, where every user of the machine can read it.
#[test]
fn a_client_reads_its_token_from_a_file() {
    let net = Network::new(1, 50, 5);
    let file = net.dir.path().join("researcher.token");
    std::fs::write(&file, format!("{}\n", net.researcher)).expect("token file");
    let run = |args: &[&str], env_file: bool| {
        let mut command = Command::new(ern_bin());
        command
            .args(args)
            .env_remove("ERN_TOKEN")
            .env("ERN_LOG", "warn")
            .env("ERN_COORDINATOR", &net.url)
            .env("ERN_CA", &net.ca);
        if env_file {
            command.env("ERN_TOKEN_FILE", &file);
        }
        command.output().expect("run ern")
    };
    let listed = harness::ok(run(
        &["studies", "--token-file", harness::path(&file)],
        false,
    ));
    assert!(listed.contains(harness::STUDY), "{listed}");
    let listed = harness::ok(run(&["studies"], true));
    assert!(listed.contains(harness::STUDY), "{listed}");
    // One or the other.
    let both = run(
        &[
            "studies",
            "--token",
            &net.researcher,
            "--token-file",
            harness::path(&file),
        ],
        false,
    );
    assert!(!both.status.success());
    assert!(
        stderr(&both).contains("cannot be used with"),
        "{}",
        stderr(&both)
    );
    let neither = run(&["studies"], false);
    assert!(!neither.status.success());
    assert!(stderr(&neither).contains("--token"), "{}", stderr(&neither));
}

/// Credentials can be revoked and rotated, over mutual TLS through the binary: the old
/// token is refused at once, a node's live stream is closed within a second, and each
/// action is in the audit trail.
#[test]
fn revoked_and_rotated_tokens_are_refused_at_once_and_a_nodes_stream_is_closed() {
    let mut net = Network::new(1, 50, 5);
    net.start_node_connected("site-1");

    // A researcher's token is rotated: the old one fails, the new one works.
    let old = net.researcher.clone();
    let new = harness::ok(net.ern_as(&net.operator, &["operator", "user", "rotate", "ada"]))
        .trim()
        .to_string();
    assert_ne!(new, old);
    let refused = net.ern_as(&old, &["studies"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("unknown token"),
        "{}",
        stderr(&refused)
    );
    harness::ok(net.ern_as(&new, &["studies"]));

    // The node's user is revoked: its live stream closes within a second.
    harness::ok(net.ern_as(&net.operator, &["operator", "user", "revoke", "node-1"]));
    let started = std::time::Instant::now();
    harness::wait_until("the node's stream to close", Duration::from_secs(5), || {
        !net.node_connected("site-1")
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // It stays out: its token is unknown now.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!net.node_connected("site-1"));
    harness::wait_until(
        "the node to log the refusal",
        Duration::from_secs(10),
        || net.logs().contains("refuses this node"),
    );

    let unknown = net.ern_as(&net.operator, &["operator", "user", "revoke", "nobody"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no user named nobody"),
        "{}",
        stderr(&unknown)
    );
    let audit = harness::json(&harness::ok(net.ern_as(
        &net.operator,
        &["operator", "audit", "--recent", "100", "--format", "json"],
    )));
    assert_eq!(audit["counts"]["user-rotated"], 1, "{audit}");
    assert_eq!(audit["counts"]["user-revoked"], 1, "{audit}");
}

/// A token handed to a file is written with mode 0600 and not printed (tokens went to
/// files every user could read, through the shell's redirection).
#[test]
fn a_token_written_to_a_file_is_readable_by_its_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let net = Network::new(1, 50, 5);
    let file = net.dir.path().join("bob.token");
    let out = net.ern_as(
        &net.operator,
        &[
            "operator",
            "user",
            "add",
            "bob",
            "--role",
            "researcher",
            "--out",
            harness::path(&file),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(harness::stdout(&out).trim().is_empty(), "printed too");
    let mode = std::fs::metadata(&file)
        .expect("token file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&file).expect("token");
    harness::ok(net.ern_as(token.trim(), &["studies"]));
    // Never over an existing file.
    let again = net.ern_as(
        &net.operator,
        &[
            "operator",
            "user",
            "rotate",
            "bob",
            "--out",
            harness::path(&file),
        ],
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("bob.token exists"),
        "{}",
        stderr(&again)
    );
    // Refused before the token changed: the one in the file still works.
    harness::ok(net.ern_as(token.trim(), &["studies"]));
}
