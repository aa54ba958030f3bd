//! The `ern` binary as an operator uses it: keys, synthetic exports and ingest, driven as
//! a subprocess and checked by its exit code, its output and the files it leaves.

mod harness;

use std::path::Path;

use harness::{ern, path, stderr, stdout};

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
        vec!["keygen", "steward", "--help"],
        vec!["synth", "--help"],
        vec!["ingest", "--help"],
        vec!["demo", "--help"],
        vec!["node", "audit", "verify", "--help"],
        vec!["node", "serve", "--help"],
        vec!["coordinator", "serve", "--help"],
        vec!["coordinator", "user", "add", "--help"],
        vec!["submit", "--help"],
        vec!["status", "--help"],
        vec!["results", "--help"],
        vec!["list", "--help"],
        vec!["steward", "pending", "--help"],
        vec!["steward", "show", "--help"],
        vec!["steward", "approve", "--help"],
        vec!["steward", "reject", "--help"],
        vec!["operator", "nodes", "--help"],
        vec!["operator", "user", "add", "--help"],
        vec!["operator", "users", "--help"],
        vec!["operator", "audit", "--help"],
    ] {
        let output = ern(&args);
        assert!(output.status.success(), "{args:?}");
        assert!(stdout(&output).contains("Usage: ern"), "{args:?}");
    }
}

#[test]
fn node_audit_verify_names_the_first_bad_entry() {
    use ern_node::audit::{AUDIT_FILE, AuditEntry, AuditLog, Outcome};
    let dir = tempfile::tempdir().expect("temp dir");
    let log = AuditLog::open(dir.path()).expect("open log");
    for study in ["s1", "s2", "s3", "s4"] {
        log.append(AuditEntry::new(study, "abc", Outcome::Accepted))
            .expect("append");
    }
    let intact = ern(&["node", "audit", "verify", "--store", path(dir.path())]);
    assert!(intact.status.success(), "{}", stderr(&intact));
    assert!(
        stdout(&intact).contains("audit log intact: 4 entries"),
        "{}",
        stdout(&intact)
    );

    let file = dir.path().join(AUDIT_FILE);
    let text = std::fs::read_to_string(&file).expect("log");
    std::fs::write(&file, text.replacen("\"s3\"", "\"s9\"", 1)).expect("tamper");
    let broken = ern(&["node", "audit", "verify", "--store", path(dir.path())]);
    assert!(!broken.status.success());
    assert!(
        stderr(&broken).contains("broken at entry 3"),
        "{}",
        stderr(&broken)
    );
}

#[test]
fn the_demo_answers_its_three_questions_from_every_site() {
    let output = ern(&["demo", "--patients", "6000", "--seed", "4"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for needle in [
        "Question 1",
        "Question 2",
        "Question 3",
        "hospital-1",
        "hospital-3",
        "answered",
        "decade",
        "gene_symbol",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("refused"), "{text}");
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
    let expected = harness::expected_sex_band(&sites, 7);
    assert_eq!(released, expected);
    assert!(stderr(&output).contains("answered"), "{}", stderr(&output));
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
