//! The node's audit log outlives its store (issue #18), through the real binary: the
//! store deleted under a running node, re-ingested, the node restarted; a broken log
//! explained and rotated so the node starts again.

use crate::harness;

use std::time::Duration;

use harness::{Network, SEX_BAND_SQL, ok, stderr, stdout};

/// `ern node audit ARGS --config node.toml` of a site.
fn node_audit(net: &Network, site: &str, args: &[&str]) -> std::process::Output {
    let config = net.site(site).dir.join("node.toml");
    let mut all = vec!["node", "audit"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config", harness::path(&config)]);
    harness::ern(&all)
}

/// The site's node as `ern operator nodes --format json` lists it.
fn listed(net: &Network, site: &str) -> serde_json::Value {
    let nodes = harness::json(&ok(
        net.ern_as(&net.operator, &["operator", "nodes", "--format", "json"])
    ));
    nodes
        .as_array()
        .expect("a list")
        .iter()
        .find(|node| node["site"] == site)
        .cloned()
        .expect("the site")
}

/// `ern ingest` of the site's export into its store again.
fn ingest(net: &Network, site: &str) {
    let site = net.site(site);
    ok(harness::ern(&[
        "ingest",
        "--input",
        harness::path(&site.export),
        "--key",
        harness::path(&site.dir.join("pseudonym.key")),
        "--out",
        harness::path(&site.dir.join("store")),
    ]));
}

/// Submits and approves the question at site-1, waits for its state there.
fn ask(net: &Network, title: &str) -> (String, String) {
    let id = net.submit(SEX_BAND_SQL, title, &[]);
    ok(net.approve("site-1", &id));
    let mut state = String::new();
    harness::wait_until("site-1 to finish", Duration::from_secs(30), || {
        state = net.site_states(&id)["site-1"].0.clone();
        state == "answered" || state == "failed"
    });
    (id, state)
}

#[test]
fn a_store_deleted_under_a_running_node_is_reported_and_the_node_recovers_and_restarts() {
    let mut net = Network::new(1, 300, 5);
    net.start_node_connected("site-1");
    let site_dir = net.site("site-1").dir.clone();
    let log = site_dir.join("audit.log");
    assert_eq!(ask(&net, "Before").1, "answered");
    assert!(log.exists(), "the audit log is beside node.toml");
    assert!(!site_dir.join("store/audit.log").exists());
    let generation = listed(&net, "site-1")["store_generation"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // rm -rf store: the node stays connected and says it cannot answer.
    std::fs::remove_dir_all(site_dir.join("store")).expect("rm -rf store");
    harness::wait_until(
        "the node to report its store",
        Duration::from_secs(30),
        || listed(&net, "site-1")["unavailable"] == "store-unavailable",
    );
    let table = ok(net.ern_as(&net.operator, &["operator", "nodes"]));
    assert!(table.contains("store-unavailable"), "{table}");
    assert_eq!(listed(&net, "site-1")["connected"], true);
    // Work fails with the category, by a reference really written to the audit log.
    let (id, state) = ask(&net, "While the store is gone");
    assert_eq!(state, "failed");
    let status = net.status(&id);
    assert_eq!(
        status["sites"][0]["category"], "store-unavailable",
        "{status}"
    );
    let reference = status["sites"][0]["reference"]
        .as_str()
        .expect("a reference")
        .to_string();
    let shown = ok(node_audit(&net, "site-1", &["show", &reference]));
    assert!(shown.contains("store-unavailable"), "{shown}");

    // Re-ingested: healthy again, on a new generation, without a restart.
    ingest(&net, "site-1");
    harness::wait_until("the node to recover", Duration::from_secs(30), || {
        listed(&net, "site-1")["unavailable"] == ""
    });
    let renewed = listed(&net, "site-1")["store_generation"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(renewed.len(), 32, "{renewed}");
    assert_ne!(renewed, generation);
    assert_eq!(ask(&net, "After re-ingest").1, "answered");

    // The next start continues the same chain (it failed here before: "sequence number 4
    // where 1 was expected").
    net.stop_node("site-1");
    net.start_node_connected("site-1");
    assert_eq!(ask(&net, "After a restart").1, "answered");
    let verified = ok(node_audit(&net, "site-1", &["verify"]));
    assert!(verified.contains("audit log intact"), "{verified}");
    let text = std::fs::read_to_string(&log).expect("log");
    for said in [
        "opened the store",
        "the store is unavailable",
        "the store is back",
    ] {
        assert!(text.contains(said), "no '{said}' in the audit log");
    }
}

#[test]
fn a_broken_log_is_explained_and_rotated_and_the_node_starts_again() {
    let mut net = Network::new(1, 300, 5);
    net.start_node_connected("site-1");
    assert_eq!(ask(&net, "One").1, "answered");
    assert_eq!(ask(&net, "Two").1, "answered");
    net.stop_node("site-1");
    // The log loses its first entries (the issue: a log that starts at entry 4).
    let log = net.site("site-1").dir.join("audit.log");
    let text = std::fs::read_to_string(&log).expect("log");
    let kept: String = text
        .lines()
        .skip(2)
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&log, kept).expect("cut the log");

    // The node refuses to start, and says what to run.
    let config = net.site("site-1").dir.join("node.toml");
    let refused = harness::ern(&["node", "serve", "--config", harness::path(&config)]);
    assert!(!refused.status.success());
    let said = stderr(&refused);
    assert!(said.contains("audit log broken at entry 1"), "{said}");
    assert!(said.contains("ern node audit rotate"), "{said}");

    // verify explains it and exits 1.
    let verified = node_audit(&net, "site-1", &["verify"]);
    assert_eq!(verified.status.code(), Some(1));
    let explained = stderr(&verified);
    assert!(explained.contains("starts at entry 3"), "{explained}");
    assert!(explained.contains("what to do"), "{explained}");

    // rotate archives it and starts a chain that records it.
    let rotated = node_audit(&net, "site-1", &["rotate"]);
    let printed = stdout(&rotated);
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert!(printed.contains("new chain started"), "{printed}");
    assert!(printed.contains("broken"), "{printed}");
    let archives: Vec<_> = std::fs::read_dir(net.site("site-1").dir.clone())
        .expect("site dir")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("audit.log.")
        })
        .collect();
    assert_eq!(archives.len(), 1, "one archive beside the log");
    let first = std::fs::read_to_string(&log).expect("new log");
    assert!(first.contains("\"outcome\":\"rotated\""), "{first}");

    net.start_node_connected("site-1");
    assert_eq!(ask(&net, "Three").1, "answered");
    ok(node_audit(&net, "site-1", &["verify"]));
}
