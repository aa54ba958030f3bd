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
    assert!(text.contains(" connected"), "{text}");
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
