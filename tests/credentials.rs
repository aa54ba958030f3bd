//! Credentials that end (issue #18), through the real binary over mutual TLS: tokens that
//! expire, node certificates revoked by serial and renewed, users of a site the network
//! does not know refused unless the operator says the site is new.

use crate::harness;

use std::time::{Duration, Instant};

use harness::{Network, ok, stderr, stdout};

/// The coordinator's audit trail as JSON.
fn audit_trail(net: &Network) -> serde_json::Value {
    harness::json(&ok(net.ern_as(
        &net.operator,
        &["operator", "audit", "--recent", "100", "--format", "json"],
    )))
}

#[test]
fn a_steward_or_node_for_an_unknown_site_needs_new_site() {
    let net = Network::new(1, 50, 5);
    let typo = net.ern_as(
        &net.operator,
        &[
            "operator",
            "user",
            "add",
            "steward-x",
            "--role",
            "steward",
            "--site",
            "site-01",
        ],
    );
    assert!(!typo.status.success());
    let said = stderr(&typo);
    assert!(said.contains("no site site-01"), "{said}");
    assert!(said.contains("--new-site"), "{said}");
    // Nothing was enrolled.
    let users = ok(net.ern_as(&net.operator, &["operator", "users", "--format", "json"]));
    assert!(!users.contains("steward-x"), "{users}");
    // A known site needs no flag; a new one with the flag is enrolled, and then known.
    net.add_user("steward-1c", "steward", "site-1");
    net.add_first_user("steward-9", "steward", "site-9");
    net.add_user("node-9", "node", "site-9");
    // Researchers and operators have no site: nothing to check.
    net.add_user("ben", "researcher", "");
    let trail = audit_trail(&net);
    assert!(trail["counts"]["user-added"].as_u64() >= Some(4), "{trail}");
}

#[test]
fn an_expired_token_is_refused_and_an_expired_node_token_closes_its_stream() {
    let mut net = Network::new(1, 50, 5);
    // A researcher's token that lives two seconds.
    let short = net.add_user_with(&["--expires", "2s"], "cleo", "researcher", "");
    let users = harness::json(&ok(
        net.ern_as(&net.operator, &["operator", "users", "--format", "json"])
    ));
    let cleo = users
        .as_array()
        .expect("users")
        .iter()
        .find(|user| user["name"] == "cleo")
        .cloned()
        .expect("cleo");
    assert!(cleo["expires_at"].as_u64() > Some(0), "{cleo}");
    ok(net.ern_as(&short, &["studies"]));
    std::thread::sleep(Duration::from_secs(3));
    let expired = net.ern_as(&short, &["studies"]);
    assert!(!expired.status.success());
    assert!(stderr(&expired).contains("expired"), "{}", stderr(&expired));

    // The node's token is replaced by one that lives four seconds.
    let token_file = net.site("site-1").dir.join("node.token");
    std::fs::remove_file(&token_file).expect("old token file");
    ok(net.ern_as(
        &net.operator,
        &[
            "operator",
            "user",
            "rotate",
            "node-1",
            "--expires",
            "4s",
            "--out",
            harness::path(&token_file),
        ],
    ));
    net.start_node_connected("site-1");
    let connected_at = Instant::now();
    harness::wait_until(
        "the expired node's stream to close",
        Duration::from_secs(15),
        || !net.node_connected("site-1"),
    );
    assert!(
        connected_at.elapsed() < Duration::from_secs(7),
        "closed {:?} after connecting with a 4 s token",
        connected_at.elapsed()
    );
    let trail = audit_trail(&net);
    assert_eq!(trail["counts"]["token-expired"], 1, "{trail}");
}

#[test]
fn a_revoked_node_certificate_is_refused_within_a_second_and_a_renewed_one_connects() {
    let mut net = Network::new(1, 50, 5);
    net.start_node_connected("site-1");
    let tls = net.ca.parent().expect("tls dir").to_path_buf();
    let serial = harness::json(&ok(
        net.ern_as(&net.operator, &["operator", "nodes", "--format", "json"])
    ))[0]["certificate_serial"]
        .as_str()
        .expect("a serial")
        .to_string();
    assert!((35..=40).contains(&serial.len()), "{serial}");

    // Revoked: the live stream closes at once.
    let revoked = ok(net.ern_as(&net.operator, &["operator", "node", "revoke", "site-1"]));
    assert_eq!(revoked.trim(), serial);
    let started = Instant::now();
    harness::wait_until("the stream to close", Duration::from_secs(5), || {
        !net.node_connected("site-1")
    });
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The node dials again with the same certificate: refused, and it says why.
    harness::wait_until(
        "the node to log the refusal",
        Duration::from_secs(20),
        || net.logs().contains("was revoked"),
    );
    assert!(!net.node_connected("site-1"));
    net.stop_node("site-1");

    // Renewed: a new key and certificate in place, the old pair kept under its serial.
    let renewed = harness::ern(&[
        "keygen",
        "tls",
        "--out",
        harness::path(&tls),
        "--renew",
        "site-1",
    ]);
    assert!(renewed.status.success(), "{}", stderr(&renewed));
    let printed = stdout(&renewed);
    assert!(printed.contains(&format!("serial {serial}")), "{printed}");
    assert!(tls.join(format!("node-site-1.{serial}.pem")).exists());
    let key = tls.join("node-site-1.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).expect("key").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    net.start_node_connected("site-1");
    let now_serial = harness::json(&ok(
        net.ern_as(&net.operator, &["operator", "nodes", "--format", "json"])
    ))[0]["certificate_serial"]
        .as_str()
        .expect("a serial")
        .to_string();
    assert_ne!(now_serial, serial);

    // Revoking a serial by hand, and one already revoked, both work; a malformed one is
    // refused.
    let bad = net.ern_as(
        &net.operator,
        &[
            "operator", "node", "revoke", "site-1", "--serial", "not-hex",
        ],
    );
    assert!(!bad.status.success());
    let trail = audit_trail(&net);
    assert_eq!(trail["counts"]["certificate-revoked"], 1, "{trail}");
}
