//! After the first mistake (issue 17): a researcher withdraws a question, a steward
//! approves again what an approval check refused or what they rejected, a failure says
//! what kind it is and where its steward reads the detail, and lists filter by state
//! and time. Each through the real binary, against a real coordinator and real nodes
//! over mutual TLS.

use crate::harness;

use std::time::Duration;

use harness::{Network, SEX_BAND_SQL, expected_sex_band, ok, sex_band_rows, stderr, stdout};

/// `ern steward approve ID` as the steward with `token`, signing the query hash of `sql`
/// for `site_id` with the key at `key`, with `extra` arguments.
fn sign_approval(
    net: &Network,
    token: &str,
    site_id: &str,
    id: &str,
    sql: &str,
    key: &std::path::Path,
    extra: &[&str],
) -> std::process::Output {
    let hash = ern_queries::query_hash(sql);
    let mut args = vec![
        "steward",
        "approve",
        id,
        "--key",
        harness::path(key),
        "--site",
        site_id,
        "--hash",
        &hash,
    ];
    args.extend_from_slice(extra);
    net.ern_as(token, &args)
}

/// The site's own steward approves `sql`'s question `id` with the site's key.
fn approve_sql(net: &Network, site_id: &str, id: &str, sql: &str) {
    let site = net.site(site_id);
    ok(sign_approval(
        net,
        &site.steward_token,
        site_id,
        id,
        sql,
        &site.steward_key,
        &[],
    ));
}

/// Signs an approval of `id` for `site_id` with the key at `key` (the site's own or a
/// rogue one), valid for `expires`.
fn approve_with(net: &Network, site_id: &str, id: &str, key: &std::path::Path, expires: &str) {
    let steward = net.site(site_id).steward_token.clone();
    ok(sign_approval(
        net,
        &steward,
        site_id,
        id,
        SEX_BAND_SQL,
        key,
        &["--expires", expires],
    ));
}

fn state_of(net: &Network, id: &str, site: &str) -> String {
    net.site_states(id)[site].0.clone()
}

#[test]
fn a_withdrawn_question_leaves_the_stewards_queues_and_merges_nothing() {
    let mut net = Network::new(3, 300, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Withdrawn halfway", &[]);
    // site-1 answers; site-2 approves while its node is offline; site-3 has not decided.
    ok(net.approve("site-1", &id));
    harness::wait_until("site-1 to answer", Duration::from_secs(30), || {
        state_of(&net, &id, "site-1") == "answered"
    });
    ok(net.approve("site-2", &id));

    let out = ok(net.ern_as(&net.researcher, &["withdraw", &id]));
    assert!(out.contains("withdrawn"), "{out}");
    let status = net.status(&id);
    assert_eq!(status["state"], "withdrawn", "{status}");
    let states = net.site_states(&id);
    assert_eq!(
        states["site-1"].0, "answered",
        "what was answered stays answered"
    );
    assert_eq!(states["site-2"].0, "withdrawn");
    assert_eq!(states["site-3"].0, "withdrawn");

    // The steward's queue drops it; approving it now is refused, naming why.
    let steward_3 = net.site("site-3").steward_token.clone();
    let pending = ok(net.ern_as(&steward_3, &["steward", "pending"]));
    assert!(!pending.contains(&id), "{pending}");
    let late = net.approve("site-3", &id);
    assert!(!late.status.success(), "{}", stdout(&late));
    assert!(stderr(&late).contains("withdrawn"), "{}", stderr(&late));

    // site-2's node comes online: the withdrawn work is not sent, nothing is merged.
    net.start_node_connected("site-2");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(state_of(&net, &id, "site-2"), "withdrawn");
    let results = net.ern_as(&net.researcher, &["results", &id]);
    assert!(!results.status.success());
    assert!(
        stderr(&results).contains("withdrawn by its researcher"),
        "{}",
        stderr(&results)
    );
    // Once is enough; and only its researcher may withdraw it.
    let again = net.ern_as(&net.researcher, &["withdraw", &id]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already finished"),
        "{}",
        stderr(&again)
    );
    let other = net.add_user("ben", "researcher", "");
    let foreign = net.ern_as(&other, &["withdraw", &id]);
    assert!(!foreign.status.success());
    assert!(
        stderr(&foreign).contains("no question"),
        "{}",
        stderr(&foreign)
    );

    // The list filters by state.
    let running = net.submit(SEX_BAND_SQL, "Still running", &["site-3"]);
    let listed = |state: &str| -> Vec<String> {
        let list = harness::json(&ok(net.ern_as(
            &net.researcher,
            &["list", "--state", state, "--format", "json"],
        )));
        list.as_array()
            .expect("a list")
            .iter()
            .map(|q| q["id"].as_str().expect("an id").to_string())
            .collect()
    };
    assert_eq!(listed("withdrawn"), vec![id]);
    assert_eq!(listed("running"), vec![running]);
    assert!(listed("complete").is_empty());
}

#[test]
fn approvals_refused_for_their_key_or_expiry_are_approved_again_and_answered() {
    let mut net = Network::new(2, 600, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Approved again", &[]);

    // site-1: signed with a key its node does not know, so the node refuses.
    let rogue = net.dir.path().join("rogue");
    ok(harness::ern(&[
        "keygen",
        "steward",
        "--out",
        harness::path(&rogue),
    ]));
    approve_with(&net, "site-1", &id, &rogue.with_extension("key"), "7d");
    // site-2: an approval that expires while its node is offline.
    let site_2_key = net.site("site-2").steward_key.clone();
    approve_with(&net, "site-2", &id, &site_2_key, "2s");
    harness::wait_until("site-1 to refuse", Duration::from_secs(30), || {
        state_of(&net, &id, "site-1") == "refused"
    });
    std::thread::sleep(Duration::from_secs(3));
    net.start_node_connected("site-2");
    // The coordinator refuses the expired approval itself, as the node would.
    harness::wait_until("site-2's expired approval", Duration::from_secs(30), || {
        state_of(&net, &id, "site-2") == "refused"
    });
    let states = net.site_states(&id);
    assert_eq!(states["site-1"].1, "approval-unknown-key");
    assert_eq!(states["site-2"].1, "approval-expired");
    // Without a round trip: the node never saw it.
    let node_log = net.site("site-2").dir.join("audit.log");
    let node_log = std::fs::read_to_string(node_log).unwrap_or_default();
    assert!(!node_log.contains("approval-expired"), "{node_log}");
    // Every site is done: the question ends with nothing to show.
    assert_eq!(net.status(&id)["state"], "complete");

    // Each steward approves again, with the site's own key: the work goes out again.
    ok(net.approve("site-1", &id));
    ok(net.approve("site-2", &id));
    // (The question may be merged for a moment with site-1 alone, before site-2's
    // new approval opens it again.)
    harness::wait_until("both sites to answer", Duration::from_secs(30), || {
        let states = net.site_states(&id);
        states["site-1"].0 == "answered" && states["site-2"].0 == "answered"
    });
    net.wait_complete(&id);
    let exports = [
        net.site("site-1").export.as_path(),
        net.site("site-2").export.as_path(),
    ];
    assert_eq!(
        sex_band_rows(&net.results_csv(&id)),
        expected_sex_band(&exports, 5)
    );
    // An answered part is not approved again.
    let again = net.approve("site-1", &id);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("answered at site site-1, not awaiting approval"),
        "{}",
        stderr(&again)
    );
    let audit = harness::json(&ok(net.ern_as(
        &net.operator,
        &["operator", "audit", "--recent", "100", "--format", "json"],
    )));
    assert_eq!(audit["counts"]["reapproved"], 2, "{audit}");
    assert!(
        audit["recent"]
            .as_array()
            .expect("events")
            .iter()
            .any(|event| event["event"] == "reapproved"
                && event["site"] == "site-2"
                && event["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("replaces refused (approval-expired)"))),
        "{audit}"
    );
}

#[test]
fn a_rejection_is_reversed_only_by_the_steward_who_made_it() {
    let mut net = Network::new(1, 300, 5);
    net.start_node_connected("site-1");
    let id = net.submit(SEX_BAND_SQL, "Rejected, then approved", &[]);
    let steward = net.site("site-1").steward_token.clone();
    ok(net.ern_as(
        &steward,
        &[
            "steward",
            "reject",
            &id,
            "--reason",
            "ask me after the board",
        ],
    ));
    assert_eq!(net.status(&id)["state"], "complete");
    // A colleague at the same site cannot overturn it.
    let colleague = net.add_user("steward-1b", "steward", "site-1");
    let site = net.site("site-1");
    let overturn = sign_approval(
        &net,
        &colleague,
        "site-1",
        &id,
        SEX_BAND_SQL,
        &site.steward_key,
        &[],
    );
    assert!(!overturn.status.success());
    assert!(
        stderr(&overturn).contains("only that steward can approve it again"),
        "{}",
        stderr(&overturn)
    );
    // The steward who rejected it changes their mind.
    ok(net.approve("site-1", &id));
    net.wait_complete(&id);
    assert_eq!(state_of(&net, &id, "site-1"), "answered");
    assert!(!net.results_csv(&id).is_empty());
}

#[test]
fn a_failure_names_its_kind_and_the_steward_reads_the_detail_by_reference() {
    let mut net = Network::new(1, 300, 5);
    net.start_node_connected("site-1");
    let store = net.site("site-1").dir.join("store");
    let config = net.site("site-1").dir.join("node.toml");
    std::fs::remove_file(store.join("diagnosis.parquet")).expect("remove a table");
    let sql = "SELECT d.code, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY d.code";
    let id = net.submit(sql, "Fails at the site", &[]);
    approve_sql(&net, "site-1", &id, sql);
    harness::wait_until("site-1 to fail", Duration::from_secs(30), || {
        state_of(&net, &id, "site-1") == "failed"
    });
    let status = net.status(&id);
    let site = &status["sites"][0];
    assert_eq!(site["category"], "store-unavailable", "{status}");
    let reference = site["reference"].as_str().expect("a reference").to_string();
    assert_eq!(reference.len(), 16, "{status}");
    let table = ok(net.ern_as(&net.researcher, &["status", &id]));
    assert!(table.contains("store-unavailable"), "{table}");
    assert!(table.contains(&reference), "{table}");
    assert!(!table.contains("parquet"), "the detail leaked: {table}");

    // The site's steward reads the detail locally, by the reference.
    let shown = ok(harness::ern(&[
        "node",
        "audit",
        "show",
        &reference,
        "--config",
        harness::path(&config),
    ]));
    assert!(shown.contains("diagnosis"), "{shown}");
    assert!(shown.contains("store-unavailable"), "{shown}");
    let entry = harness::json(&ok(harness::ern(&[
        "node",
        "audit",
        "show",
        &reference,
        "--config",
        harness::path(&config),
        "--format",
        "json",
    ])));
    assert_eq!(entry["reference"], reference.as_str(), "{entry}");
    assert_eq!(entry["outcome"], "failed", "{entry}");
    let unknown = harness::ern(&[
        "node",
        "audit",
        "show",
        "0000000000000000",
        "--config",
        harness::path(&config),
    ]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("no entry with reference"),
        "{}",
        stderr(&unknown)
    );
}

/// Issue 17: the shipped reference tables are public data: a question over them alone is
/// answered row by row by the coordinator, no steward, no node, marked as such.
#[test]
fn a_question_over_the_reference_tables_alone_is_answered_by_the_coordinator() {
    let net = Network::new(1, 100, 5);
    let sql = "SELECT orpha_code, name FROM orpha_term WHERE name LIKE '%cardiomyopathy%' ORDER BY orpha_code";
    let submitted = net.ern_as(
        &net.researcher,
        &[
            "submit",
            "--study",
            harness::STUDY,
            "--sql-text",
            sql,
            "--title",
            "Cardiomyopathies in Orphanet",
        ],
    );
    let id = ok(submitted.clone()).trim().to_string();
    assert!(
        stderr(&submitted).contains("public reference data"),
        "{}",
        stderr(&submitted)
    );
    // No node is running, and none is needed.
    let status = net.status(&id);
    assert_eq!(status["state"], "complete", "{status}");
    assert_eq!(status["mode"], "reference", "{status}");
    assert!(status["sites"].as_array().expect("sites").is_empty());
    let steward = net.site("site-1").steward_token.clone();
    let pending = ok(net.ern_as(&steward, &["steward", "pending"]));
    assert!(!pending.contains(&id), "{pending}");

    let out = net.ern_as(&net.researcher, &["results", &id, "--format", "csv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("CC BY 4.0"), "{}", stderr(&out));
    let rows = harness::parse_csv(&stdout(&out));
    let expected: Vec<Vec<String>> = {
        let mut terms: Vec<_> = ern_queries::reference::terms()
            .expect("terms")
            .into_iter()
            .filter(|t| t.name.contains("cardiomyopathy"))
            .map(|t| vec![t.orpha_code, t.name])
            .collect();
        terms.sort();
        terms
    };
    assert!(!expected.is_empty());
    assert_eq!(rows, expected);

    // Still under the coordinator's limits.
    let out = net.ern_as(
        &net.researcher,
        &[
            "submit",
            "--study",
            harness::STUDY,
            "--sql-text",
            "SELECT a.ancestor FROM orpha_closure a, orpha_closure b, orpha_closure c",
            "--title",
            "Too much",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("resource-limits"), "{}", stderr(&out));
}

/// Consenting patients' birth years by sex in one raw export (what its store holds).
fn birth_years_by_sex(export: &std::path::Path) -> std::collections::BTreeMap<String, Vec<f64>> {
    let mut years: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for (sex, year) in harness::consenting_patients(export) {
        years.entry(sex).or_default().push(year as f64);
    }
    years
}

/// Issue 17: VAR_SAMP, VAR_POP, STDDEV_SAMP and STDDEV_POP merge exactly across sites,
/// over the sites whose group passed their k, through the real network.
#[test]
fn variances_and_standard_deviations_merge_as_over_the_pooled_exports() {
    let mut net = Network::new(2, 400, 5);
    net.start_node_connected("site-1");
    net.start_node_connected("site-2");
    let sql = "SELECT p.sex, COUNT(*) AS n, VAR_SAMP(p.birth_year) AS vs, VAR_POP(p.birth_year) AS vp, STDDEV_SAMP(p.birth_year) AS ss, STDDEV_POP(p.birth_year) AS sp FROM patient p GROUP BY p.sex ORDER BY p.sex";
    let id = net.submit(sql, "Spread of birth years", &[]);
    for site in ["site-1", "site-2"] {
        approve_sql(&net, site, &id, sql);
    }
    net.wait_complete(&id);
    let rows = net.results_csv(&id);
    // Per-site suppression: a site's group counts only where it holds k patients.
    let mut pooled: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for site in ["site-1", "site-2"] {
        for (sex, years) in birth_years_by_sex(&net.site(site).export) {
            if years.len() >= 5 {
                pooled.entry(sex).or_default().extend(years);
            }
        }
    }
    assert_eq!(rows.len(), pooled.len(), "{rows:?}");
    for row in &rows {
        let years = &pooled[&row[0]];
        let n = years.len() as f64;
        let mean = years.iter().sum::<f64>() / n;
        let squares: f64 = years.iter().map(|y| (y - mean) * (y - mean)).sum();
        let expected = [
            squares / (n - 1.0),
            squares / n,
            (squares / (n - 1.0)).sqrt(),
            (squares / n).sqrt(),
        ];
        assert_eq!(row[1], years.len().to_string(), "{row:?}");
        for (cell, expected) in row[2..].iter().zip(expected) {
            let got: f64 = cell.parse().expect("a number");
            assert!(
                (got - expected).abs() <= 1e-9 * expected.abs().max(1.0),
                "{row:?}: {got} against {expected}"
            );
        }
    }
}
