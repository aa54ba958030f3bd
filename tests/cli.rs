//! The `ern` binary as an operator uses it: keys, node configurations, synthetic exports,
//! ingest and the demo, driven as a subprocess and checked by its exit code, its output and
//! the files it leaves; and what a steward and a researcher read of a question's mode on a
//! network of processes with secure aggregation on.

use crate::harness;

use std::path::Path;

use harness::{Network, SEX_BAND_SQL, ern, ok, path, stderr, stdout};

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn keygen_pseudonym_writes_64_hex_characters_with_mode_0600_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("site.key");
    let output = ern(&["keygen", "pseudonym", "--out", path(&key)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&key).expect("key file");
    let hex = text.strip_suffix('\n').expect("newline");
    assert_eq!(hex.len(), 64);
    assert!(
        hex.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);

    let again = ern(&["keygen", "pseudonym", "--out", path(&key)]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(&key).expect("key file"),
        text,
        "the key was overwritten"
    );

    let other = dir.path().join("other.key");
    assert!(
        ern(&["keygen", "pseudonym", "--out", path(&other)])
            .status
            .success()
    );
    assert_ne!(std::fs::read_to_string(&other).expect("other key"), text);
}

#[test]
fn keygen_noise_writes_a_secret_with_mode_0600_once_that_a_node_loads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("noise.key");
    let output = ern(&["keygen", "noise", "--out", path(&key)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = std::fs::read_to_string(&key).expect("secret file");
    assert_eq!(text.trim_end().len(), 64, "{text}");
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    ern_node::privacy::secret::NoiseSecret::load(&key).expect("a node loads it");
    let again = ern(&["keygen", "noise", "--out", path(&key)]);
    assert!(
        !again.status.success(),
        "an existing secret is never overwritten"
    );
    assert_eq!(std::fs::read_to_string(&key).expect("secret"), text);
}

#[test]
fn keygen_steward_writes_a_pkcs8_key_and_a_public_key_and_prints_the_key_id() {
    let dir = tempfile::tempdir().expect("temp dir");
    let prefix = dir.path().join("alice");
    let output = ern(&["keygen", "steward", "--out", path(&prefix)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let private = std::fs::read_to_string(dir.path().join("alice.key")).expect("private key");
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    #[cfg(unix)]
    assert_eq!(mode(&dir.path().join("alice.key")), 0o600);
    let public = std::fs::read_to_string(dir.path().join("alice.pub")).expect("public key");
    assert_eq!(public.trim().len(), 64);
    let key_id = stdout(&output)
        .lines()
        .find_map(|l| l.strip_prefix("key id: ").map(str::to_string))
        .expect("key id line");
    assert_eq!(key_id.len(), 16);
    assert!(
        !ern(&["keygen", "steward", "--out", path(&prefix)])
            .status
            .success()
    );
}

#[test]
fn keygen_site_writes_an_identity_key_with_mode_0600_once_and_prints_its_roster_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = dir.path().join("identity");
    let output = ern(&[
        "keygen",
        "site",
        "--out",
        path(&identity),
        "--site",
        "site-1",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let private = std::fs::read_to_string(identity.join("site.key")).expect("private key");
    assert!(private.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    #[cfg(unix)]
    assert_eq!(mode(&identity.join("site.key")), 0o600);
    let public = std::fs::read_to_string(identity.join("site.pub")).expect("public key");
    let public = public.trim();
    assert_eq!(public.len(), 64);
    assert!(
        public
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert!(
        printed.contains(&format!("public key: {public}\n")),
        "{printed}"
    );
    assert!(printed.contains("[secure_aggregation.roster]"), "{printed}");
    assert_eq!(
        printed.lines().last(),
        Some(format!("site-1 = \"{public}\"").as_str()),
        "{printed}"
    );

    // Never overwritten.
    let again = ern(&["keygen", "site", "--out", path(&identity)]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("exists already"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read_to_string(identity.join("site.key")).expect("private key"),
        private,
        "the key was overwritten"
    );

    // Without --site, a placeholder that no TOML parser takes for a site id.
    let other = dir.path().join("other");
    let output = ern(&["keygen", "site", "--out", path(&other)]);
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    let last = printed.lines().last().expect("a roster line");
    assert!(last.starts_with("<SITE> = \""), "{printed}");
    assert!(printed.contains("--site"), "{printed}");
    assert!(!last.contains(public), "a second key equals the first");

    // A site id that cannot be one is refused, and nothing is written.
    let odd = dir.path().join("odd");
    let refused = ern(&["keygen", "site", "--out", path(&odd), "--site", "a b"]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("site id"), "{}", stderr(&refused));
    assert!(!odd.exists());
}

/// DIR/NAME.toml, a node.toml for `ern node serve` with a loopback coordinator that
/// nothing serves and no store; `secure` is its `[secure_aggregation]` section.
fn node_config(dir: &Path, name: &str, secure: &str) -> std::path::PathBuf {
    if !dir.join("steward.pub").exists() {
        ok(ern(&[
            "keygen",
            "steward",
            "--out",
            path(&dir.join("steward")),
        ]));
        std::fs::write(dir.join("node.token"), "ern_0000\n").expect("token");
    }
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "site_id = \"site-1\"\nstore = \"store\"\nstewards = [\"steward.pub\"]\ncoordinator = \"http://127.0.0.1:9\"\nplaintext = true\ntoken_file = \"node.token\"\n\n{secure}"
        ),
    )
    .expect("node.toml");
    config
}

#[test]
fn a_node_with_secure_aggregation_on_and_no_identity_key_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = node_config(
        dir.path(),
        "no-key",
        "[secure_aggregation]\nenabled = true\n",
    );
    let out = ern(&["node", "serve", "--config", path(&config)]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("[secure_aggregation] identity_key is needed when enabled"),
        "{message}"
    );
    assert!(message.contains("ern keygen site"), "{message}");

    // With the key and the roster lines `ern keygen site` printed, the configuration is
    // accepted: the node gets as far as its (missing) store.
    let mut roster = Vec::new();
    for site in ["site-1", "site-2", "site-3"] {
        let line = harness::site_identity(&dir.path().join(format!("identity-{site}")), site);
        roster.push(line);
    }
    let config = node_config(
        dir.path(),
        "with-key",
        &format!(
            "[secure_aggregation]\nenabled = true\nidentity_key = \"{}\"\n\n[secure_aggregation.roster]\n{}\n",
            path(&dir.path().join("identity-site-1").join("site.key")),
            roster.join("\n")
        ),
    );
    let out = ern(&["node", "serve", "--config", path(&config)]);
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("opening the store"), "{message}");
    assert!(!message.contains("secure_aggregation"), "{message}");

    // A roster that pins another key for the node's own site is refused.
    let config = node_config(
        dir.path(),
        "other-key",
        &format!(
            "[secure_aggregation]\nenabled = true\nidentity_key = \"{}\"\n\n[secure_aggregation.roster]\n{}\n",
            path(&dir.path().join("identity-site-2").join("site.key")),
            roster.join("\n")
        ),
    );
    let out = ern(&["node", "serve", "--config", path(&config)]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the roster lists another key for this site (site-1)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn keygen_tls_makes_a_network_and_adds_sites_without_overwriting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tls = dir.path().join("tls");
    let first = ern(&["keygen", "tls", "--out", path(&tls), "--site", "site-1"]);
    assert!(first.status.success(), "{}", stderr(&first));
    for file in [
        "ca.pem",
        "ca.key",
        "coordinator.pem",
        "coordinator.key",
        "node-site-1.pem",
        "node-site-1.key",
    ] {
        let text = std::fs::read_to_string(tls.join(file)).expect(file);
        assert!(text.starts_with("-----BEGIN "), "{file}");
        #[cfg(unix)]
        if file.ends_with(".key") {
            assert_eq!(mode(&tls.join(file)), 0o600, "{file}");
        }
    }
    let ca_before = std::fs::read(tls.join("ca.pem")).expect("ca");

    // A second run reuses the CA and adds a site.
    let second = ern(&["keygen", "tls", "--out", path(&tls), "--site", "site-2"]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(tls.join("node-site-2.pem").exists());
    assert_eq!(std::fs::read(tls.join("ca.pem")).expect("ca"), ca_before);

    // Asking again for an existing file writes nothing at all.
    let again = ern(&[
        "keygen",
        "tls",
        "--out",
        path(&tls),
        "--site",
        "site-3",
        "--site",
        "site-1",
    ]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("nothing was written"),
        "{}",
        stderr(&again)
    );
    assert!(!tls.join("node-site-3.pem").exists());

    // A site id that cannot be a file name is refused.
    let odd = ern(&["keygen", "tls", "--out", path(&tls), "--site", "../x"]);
    assert!(!odd.status.success());
}

#[test]
fn synth_then_ingest_reports_what_it_stored() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exports = dir.path().join("exports");
    harness::synth(&exports, 2, 2000, 3);
    assert!(
        exports.join("site-1/patient.csv").exists()
            && exports.join("site-2/phenotype.csv").exists()
    );
    assert!(!exports.join("site-3").exists());

    let key = dir.path().join("site.key");
    assert!(
        ern(&["keygen", "pseudonym", "--out", path(&key)])
            .status
            .success()
    );
    let store = dir.path().join("store");
    let ingest = ern(&[
        "ingest",
        "--input",
        path(&exports.join("site-1")),
        "--key",
        path(&key),
        "--out",
        path(&store),
    ]);
    assert!(ingest.status.success(), "{}", stderr(&ingest));
    let report = stdout(&ingest);
    assert!(report.contains("patients read:"), "{report}");
    assert!(
        report.contains("left out (no consent to reuse, or opted out):"),
        "{report}"
    );
    for table in ["patient", "diagnosis", "genetic_finding", "phenotype"] {
        assert!(report.contains(table), "{report}");
        assert!(store.join(format!("{table}.parquet")).exists());
    }
}

#[test]
fn a_bad_export_fails_with_every_error_and_leaves_the_store_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exports = dir.path().join("exports");
    assert!(
        ern(&[
            "synth",
            "--sites",
            "1",
            "--patients",
            "300",
            "--out",
            path(&exports)
        ])
        .status
        .success()
    );
    let site = exports.join("site-1");
    let key = dir.path().join("site.key");
    assert!(
        ern(&["keygen", "pseudonym", "--out", path(&key)])
            .status
            .success()
    );
    let store = dir.path().join("store");
    assert!(
        ern(&[
            "ingest",
            "--input",
            path(&site),
            "--key",
            path(&key),
            "--out",
            path(&store)
        ])
        .status
        .success()
    );
    let before = std::fs::read(store.join("patient.parquet")).expect("patient table");

    // Break line 3's sex and line 5's birth date.
    let text = std::fs::read_to_string(site.join("patient.csv")).expect("patient.csv");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let replace_cell = |line: &str, index: usize, value: &str| {
        let mut cells: Vec<&str> = line.split(',').collect();
        cells[index] = value;
        cells.join(",")
    };
    lines[2] = replace_cell(&lines[2], 2, "robot");
    lines[4] = replace_cell(&lines[4], 1, "1999-02-31");
    std::fs::write(site.join("patient.csv"), lines.join("\n") + "\n").expect("write");

    let output = ern(&[
        "ingest",
        "--input",
        path(&site),
        "--key",
        path(&key),
        "--out",
        path(&store),
    ]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("patient.csv, line 3, column sex: must be one of"),
        "{message}"
    );
    assert!(
        message.contains("patient.csv, line 5, column birth_date: must be a calendar date"),
        "{message}"
    );
    assert!(message.contains("unchanged"), "{message}");
    assert!(
        !message.contains("1999-02-31") && !message.contains("robot"),
        "the error repeats a value: {message}"
    );
    assert_eq!(
        std::fs::read(store.join("patient.parquet")).expect("patient table"),
        before
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["keygen", "--help"],
        vec!["keygen", "pseudonym", "--help"],
        vec!["keygen", "noise", "--help"],
        vec!["keygen", "steward", "--help"],
        vec!["keygen", "site", "--help"],
        vec!["keygen", "tls", "--help"],
        vec!["synth", "--help"],
        vec!["ingest", "--help"],
        vec!["demo", "--help"],
        vec!["node", "audit", "verify", "--help"],
        vec!["node", "serve", "--help"],
        vec!["coordinator", "serve", "--help"],
        vec!["coordinator", "user", "add", "--help"],
        vec!["studies", "--help"],
        vec!["submit", "--help"],
        vec!["status", "--help"],
        vec!["results", "--help"],
        vec!["list", "--help"],
        vec!["withdraw", "--help"],
        vec!["node", "audit", "show", "--help"],
        vec!["node", "audit", "rotate", "--help"],
        vec!["steward", "pending", "--help"],
        vec!["steward", "show", "--help"],
        vec!["steward", "approve", "--help"],
        vec!["steward", "reject", "--help"],
        vec!["operator", "nodes", "--help"],
        vec!["operator", "user", "add", "--help"],
        vec!["operator", "user", "revoke", "--help"],
        vec!["operator", "user", "rotate", "--help"],
        vec!["operator", "users", "--help"],
        vec!["operator", "study", "--help"],
        vec!["operator", "study", "add", "--help"],
        vec!["operator", "study", "list", "--help"],
        vec!["operator", "audit", "--help"],
        vec!["operator", "node", "revoke", "--help"],
    ] {
        let output = ern(&args);
        assert!(output.status.success(), "{args:?}");
        assert!(stdout(&output).contains("Usage: ern"), "{args:?}");
    }
    // What a roster is, where an operator looks for it.
    let help = stdout(&ern(&["keygen", "site", "--help"]));
    assert!(help.contains("[secure_aggregation.roster]"), "{help}");
    assert!(help.contains("identity_key"), "{help}");
}

#[test]
fn node_audit_verify_names_the_first_bad_entry() {
    use ern_node::audit::{AUDIT_FILE, AuditEntry, AuditLog, Outcome};
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join(AUDIT_FILE);
    let log = AuditLog::open(&file).expect("open log");
    for study in ["s1", "s2", "s3", "s4"] {
        log.append(AuditEntry::new(study, "abc", Outcome::Accepted))
            .expect("append");
    }
    drop(log);
    let intact = ern(&["node", "audit", "verify", "--log", path(&file)]);
    assert!(intact.status.success(), "{}", stderr(&intact));
    assert!(
        stdout(&intact).contains("audit log intact: 4 entries"),
        "{}",
        stdout(&intact)
    );

    let text = std::fs::read_to_string(&file).expect("log");
    std::fs::write(&file, text.replacen("\"s3\"", "\"s9\"", 1)).expect("tamper");
    let broken = ern(&["node", "audit", "verify", "--log", path(&file)]);
    assert!(!broken.status.success());
    assert!(
        stderr(&broken).contains("broken at entry 3"),
        "{}",
        stderr(&broken)
    );
}

#[test]
fn the_demo_answers_its_showcase_from_every_site_securely_where_eligible() {
    let output = ern(&["demo", "--patients", "6000", "--seed", "4"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for needle in [
        "Question 1",
        "Question 2",
        "Question 3",
        "Question 4",
        "hospital-1",
        "hospital-3",
        "decade",
        "gene_symbol",
        "disorder",
        // Decades, disorders and sex have public domains: secure aggregation.
        "mode: secure aggregation",
        "aggregated (secure: in the network total)",
        "row(s) released from a public domain of",
        // Genes have none: per site, each site's suppressed groups from its audit log.
        "mode: per-site suppression",
        "answered",
        "groups suppressed",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // The showcase of secure aggregation, disorders by sex, runs securely.
    let showcase = &text[text.find("Question 4").expect("question 4")..];
    assert!(showcase.contains("mode: secure aggregation"), "{showcase}");
    // The last act: the nodes restart with differential privacy on, and a question runs
    // under noise, described beside the table, charged to the study.
    let noised = &text[text.find("Question 5").expect("question 5")..];
    for needle in [
        "under differential privacy",
        "noise added by the sites (differential privacy)",
        "skellam",
        "95 % margin",
        "epsilon spent (the site's audit log)",
    ] {
        assert!(noised.contains(needle), "missing {needle:?} in\n{noised}");
    }
    for absent in ["refused", "round failed", "failed"] {
        assert!(!text.contains(absent), "{absent:?} in\n{text}");
    }
}

#[test]
fn the_scripted_demo_prints_only_the_merged_table_on_stdout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exports = dir.path().join("exports");
    harness::synth(&exports, 3, 3000, 5);
    let sql = dir.path().join("question.sql");
    std::fs::write(
        &sql,
        "SELECT p.sex, (p.birth_year / 20) * 20 AS band, COUNT(DISTINCT p.pid) AS patients \
         FROM patient p GROUP BY p.sex, (p.birth_year / 20) * 20 ORDER BY p.sex, band",
    )
    .expect("sql");
    let output = ern(&[
        "demo",
        "--exports",
        path(&exports),
        "--sql",
        path(&sql),
        "--format",
        "csv",
        "--k",
        "7",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("sex,band,patients"), "{text}");
    let mut released = std::collections::BTreeMap::new();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        assert_eq!(cells.len(), 3, "{line}");
        released.insert(
            (cells[0].to_string(), cells[1].parse::<i64>().expect("band")),
            cells[2].parse::<u64>().expect("count"),
        );
    }
    let sites: Vec<_> = ["site-1", "site-2", "site-3"]
        .iter()
        .map(|site| exports.join(site))
        .collect();
    let sites: Vec<&Path> = sites.iter().map(|p| p.as_path()).collect();
    // Three sites, every node in secure aggregation: k = 7 on the network totals.
    let expected = harness::expected_sex_band_secure(&sites, 7);
    assert_eq!(released, expected);
    let narration = stderr(&output);
    assert!(
        narration.contains("mode: secure aggregation"),
        "{narration}"
    );
    assert!(narration.contains("aggregated"), "{narration}");
    // Pooled before k: never fewer cells than per-site suppression releases.
    let per_site = harness::expected_sex_band(&sites, 7);
    assert!(per_site.keys().all(|cell| expected.contains_key(cell)));
}

#[test]
fn the_scripted_demo_refuses_a_bad_question_with_nothing_on_stdout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exports = dir.path().join("exports");
    harness::synth(&exports, 2, 400, 5);
    let sql = dir.path().join("question.sql");
    std::fs::write(&sql, "SELECT MAX(birth_year) AS oldest FROM patient").expect("sql");
    let output = ern(&[
        "demo",
        "--exports",
        path(&exports),
        "--sql",
        path(&sql),
        "--format",
        "csv",
    ]);
    assert!(!output.status.success());
    assert!(stdout(&output).is_empty(), "{}", stdout(&output));
    let message = stderr(&output);
    assert!(message.contains("rule 4"), "{message}");
    assert!(message.contains("MAX"), "{message}");
}

#[test]
fn schema_and_examples_work_offline_and_the_examples_run_in_the_demo() {
    let output = ern(&["schema"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for expected in [
        "genetic_finding",
        "orpha_closure",
        "female, male, undetermined, unknown",
        "1880 to 2100",
        "reference data",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
    let json = ern(&["schema", "--format", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let tables: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    assert_eq!(tables.as_array().expect("tables").len(), 6);
    assert_eq!(tables[0]["table"], "patient");
    assert_eq!(tables[0]["columns"][3]["values"][0], "female");

    let dir = tempfile::tempdir().expect("temp dir");
    let examples = ern(&["examples", "--format", "json", "--out", path(dir.path())]);
    assert!(examples.status.success(), "{}", stderr(&examples));
    let list: serde_json::Value = serde_json::from_str(&stdout(&examples)).expect("JSON");
    let first = &list[0];
    let file = dir
        .path()
        .join(format!("{}.sql", first["name"].as_str().expect("name")));
    let sql = std::fs::read_to_string(&file).expect("written");
    assert_eq!(sql.trim(), first["sql"].as_str().expect("sql"));
    // The written question runs through a real network of synthetic hospitals.
    let run = ern(&[
        "demo",
        "--sites",
        "2",
        "--patients",
        "2000",
        "--sql",
        path(&file),
        "--format",
        "csv",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    assert!(
        stdout(&run).starts_with("code,sex,patients"),
        "{}",
        stdout(&run)
    );
    // A diagnosis code has no public domain (no join to orpha_term): per site.
    assert!(
        stderr(&run).contains("mode: per-site suppression"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn validate_checks_a_question_offline_as_the_network_will() {
    let accepted = ern(&[
        "validate",
        "--sql-text",
        "SELECT p.sex, COUNT(DISTINCT p.pid) AS n FROM patient p GROUP BY p.sex -- by sex",
    ]);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
    let report = stdout(&accepted);
    assert!(report.starts_with("accepted\n"), "{report}");
    assert!(report.contains("query hash: "), "{report}");
    assert!(report.contains("tables: patient"), "{report}");
    assert!(report.contains("comment: -- by sex"), "{report}");

    let refused = ern(&[
        "validate",
        "--sql-text",
        "SELECT p.birth_year, MAX(p.death_date) AS d FROM patient p GROUP BY p.birth_year",
    ]);
    assert!(!refused.status.success());
    assert!(stdout(&refused).is_empty());
    assert!(
        stderr(&refused).contains("rule 4 (barrier-aggregates)"),
        "{}",
        stderr(&refused)
    );
    // A typo and an unknown name are mistakes in the question, not privacy refusals.
    for mistake in [
        "SELEC p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex",
        "SELECT p.colour, COUNT(*) AS n FROM patient p GROUP BY p.colour",
        "SELECT p.sex, COUNT(*) AS n FROM patients p GROUP BY p.sex",
    ] {
        let refused = ern(&["validate", "--sql-text", mistake]);
        assert!(!refused.status.success());
        let text = stderr(&refused);
        assert!(text.contains("not a valid question"), "{mistake}: {text}");
        assert!(!text.contains("refused by rule"), "{mistake}: {text}");
    }
    let both = ern(&["validate", "--sql-text", "SELECT 1", "--sql", "q.sql"]);
    assert!(!both.status.success(), "one source only");
}

/// A network of processes with secure aggregation on (every node.toml with its identity
/// key from `ern keygen site` and the roster of all three sites): the steward's review
/// names the mode and the public domain, the researcher's status says secure, and the
/// table holds the network totals at k.
#[test]
fn a_secure_network_answers_with_network_totals_and_every_party_reads_the_mode() {
    let mut net = Network::secure(3, 1500, 5);
    for site in ["site-1", "site-2", "site-3"] {
        net.start_node_connected(site);
    }
    let id = net.submit(SEX_BAND_SQL, "Patients by sex and birth band", &[]);
    let steward_1 = net.site("site-1").steward_token.clone();
    let shown = ok(net.ern_as(&steward_1, &["steward", "show", &id]));
    assert!(
        shown.contains("mode: secure aggregation: k applies to network totals of"),
        "{shown}"
    );
    assert!(shown.contains("p.sex: 4 values"), "{shown}");
    for site in ["site-1", "site-2", "site-3"] {
        ok(net.approve(site, &id));
    }
    net.wait_complete(&id);
    let status = net.status(&id);
    assert_eq!(status["mode"], "secure", "{status}");
    assert_eq!(status["mode_note"], "", "{status}");
    for (site, (state, _)) in net.site_states(&id) {
        assert_eq!(state, "aggregated", "{site}");
    }
    let table = ok(net.ern_as(&net.researcher, &["status", &id]));
    assert!(table.contains("mode: secure aggregation"), "{table}");
    let exports: Vec<&Path> = net.sites.iter().map(|s| s.export.as_path()).collect();
    assert_eq!(
        harness::sex_band_rows(&net.results_csv(&id)),
        harness::expected_sex_band_secure(&exports, 5)
    );

    // A question without a public domain: the steward reads why it runs per site.
    let genes = net.submit(
        "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients FROM genetic_finding g GROUP BY g.gene_symbol",
        "Genes",
        &[],
    );
    let shown = ok(net.ern_as(&steward_1, &["steward", "show", &genes]));
    assert!(shown.contains("mode: per-site suppression"), "{shown}");
    assert!(
        shown.contains("GROUP BY g.gene_symbol has no public domain"),
        "{shown}"
    );
    // The identity keys never reach a log.
    let logs = net.logs();
    for secret in net.secrets() {
        assert!(!logs.contains(&secret), "a token or key reached a log");
    }
}

/// Studies through the binary: an operator creates one with its researchers, each
/// researcher lists the studies they are on and submits only under those, `ern list
/// --study` filters, and the steward's review shows what the approval is signed under.
#[test]
fn an_operator_creates_studies_and_researchers_submit_only_under_their_own() {
    let net = Network::new(1, 300, 5);
    let ben = net.add_user("ben", "researcher", "");
    let study_2 = [
        "operator",
        "study",
        "add",
        "study-2",
        "--title",
        "Second study",
        "--purpose",
        "Birth bands by sex",
        "--researcher",
        "ada",
        "--researcher",
        "ben",
    ];
    assert_eq!(ok(net.ern_as(&net.operator, &study_2)).trim(), "study-2");

    // Refusals name what is wrong, and nothing is created.
    let again = net.ern_as(&net.operator, &study_2);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("study-2 exists"),
        "{}",
        stderr(&again)
    );
    let mut stranger = study_2.to_vec();
    stranger[3] = "study-3";
    stranger[11] = "mallory";
    let refused = net.ern_as(&net.operator, &stranger);
    assert!(
        stderr(&refused).contains("no researcher mallory is enrolled"),
        "{}",
        stderr(&refused)
    );
    stranger[11] = "steward-1";
    let refused = net.ern_as(&net.operator, &stranger);
    assert!(
        stderr(&refused).contains("user steward-1 is not a researcher"),
        "{}",
        stderr(&refused)
    );
    let refused = net.ern_as(
        &ben,
        &[
            "operator",
            "study",
            "add",
            "mine",
            "--title",
            "t",
            "--purpose",
            "p",
            "--researcher",
            "ben",
        ],
    );
    assert!(
        stderr(&refused).contains("not allowed"),
        "{}",
        stderr(&refused)
    );
    let missing = net.ern_as(
        &net.operator,
        &[
            "operator",
            "study",
            "add",
            "study-4",
            "--title",
            "t",
            "--purpose",
            "p",
        ],
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("--researcher"),
        "{}",
        stderr(&missing)
    );

    let listed = harness::json(&ok(net.ern_as(
        &net.operator,
        &["operator", "study", "list", "--format", "json"],
    )));
    let ids: Vec<&str> = listed
        .as_array()
        .expect("a list")
        .iter()
        .map(|s| s["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["study-1", "study-2"]);
    assert_eq!(listed[1]["researchers"], serde_json::json!(["ada", "ben"]));
    assert_eq!(listed[1]["purpose"], "Birth bands by sex");
    assert_eq!(listed[1]["created_by"], "admin");
    let table = ok(net.ern_as(&net.operator, &["operator", "study", "list"]));
    assert!(table.contains("Second study"), "{table}");

    // Each researcher sees the studies they are on.
    let studies_of = |token: &str| -> Vec<String> {
        harness::json(&ok(net.ern_as(token, &["studies", "--format", "json"])))
            .as_array()
            .expect("a list")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(studies_of(&net.researcher), ["study-1", "study-2"]);
    assert_eq!(studies_of(&ben), ["study-2"]);
    let table = ok(net.ern_as(&ben, &["studies"]));
    assert!(
        table.contains("study-2") && !table.contains("study-1"),
        "{table}"
    );

    // ben is not on study-1: he can neither submit under it nor list it.
    let submit = |token: &str, study: &str| {
        net.ern_as(
            token,
            &[
                "submit",
                "--study",
                study,
                "--sql-text",
                SEX_BAND_SQL,
                "--title",
                "t",
            ],
        )
    };
    let denied = submit(&ben, "study-1");
    assert!(!denied.status.success());
    assert!(stdout(&denied).is_empty());
    assert!(
        stderr(&denied).contains("you are not a researcher on study study-1"),
        "{}",
        stderr(&denied)
    );
    let denied = net.ern_as(&ben, &["list", "--study", "study-1"]);
    assert!(
        stderr(&denied).contains("you are not a researcher on study study-1"),
        "{}",
        stderr(&denied)
    );
    let unknown = submit(&ben, "study-9");
    assert!(
        stderr(&unknown).contains("no study study-9"),
        "{}",
        stderr(&unknown)
    );
    let no_study = net.ern_as(
        &ben,
        &["submit", "--sql-text", SEX_BAND_SQL, "--title", "t"],
    );
    assert!(!no_study.status.success());
    assert!(
        stderr(&no_study).contains("--study"),
        "{}",
        stderr(&no_study)
    );

    // ada asks under both; `ern list --study` shows one study's questions.
    let first = net.submit(SEX_BAND_SQL, "In study 1", &[]);
    let second = ok(submit(&net.researcher, "study-2")).trim().to_string();
    let list = |extra: &[&str]| -> Vec<(String, String)> {
        let mut args = vec!["list", "--format", "json"];
        args.extend_from_slice(extra);
        harness::json(&ok(net.ern_as(&net.researcher, &args)))
            .as_array()
            .expect("a list")
            .iter()
            .map(|q| {
                (
                    q["id"].as_str().expect("id").to_string(),
                    q["study"].as_str().expect("study").to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        list(&[]),
        [
            (second.clone(), "study-2".to_string()),
            (first.clone(), "study-1".to_string())
        ]
    );
    assert_eq!(
        list(&["--study", "study-2"]),
        [(second.clone(), "study-2".to_string())]
    );
    let table = ok(net.ern_as(&net.researcher, &["list"]));
    assert!(table.contains("study-2"), "{table}");
    let status = net.status(&second);
    assert_eq!(status["study"], "study-2", "{status}");
    assert_eq!(status["study_title"], "Second study", "{status}");
    let text = ok(net.ern_as(&net.researcher, &["status", &second]));
    assert!(text.contains("study: study-2 — Second study"), "{text}");

    // The steward sees the study the approval signs, and who is on it.
    let steward = net.site("site-1").steward_token.clone();
    let shown = ok(net.ern_as(&steward, &["steward", "show", &second]));
    for line in [
        "study: study-2",
        "study title: Second study",
        "study purpose: Birth bands by sex",
        "researchers on the study: ada, ben",
    ] {
        assert!(shown.contains(line), "{line}: {shown}");
    }
    let pending = harness::json(&ok(
        net.ern_as(&steward, &["steward", "pending", "--format", "json"])
    ));
    assert_eq!(pending[1]["study"], "study-2", "{pending}");
    let out = ok(net.approve("site-1", &second));
    assert!(out.contains("under study study-2"), "{out}");

    let audit = ok(net.ern_as(&net.operator, &["operator", "audit", "--recent", "100"]));
    assert!(audit.contains("study-added"), "{audit}");
    assert!(audit.contains("study-2 (ada, ben)"), "{audit}");
}
