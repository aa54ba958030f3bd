//! Runs `attacks.cases` through the node engine on two stores that differ only in one
//! patient's birth year: each case must get its verdict, and the same verdict on both.
//!
//! A case that carries an expected table (in `attacks.cases`, and the accepted cases of
//! the planner's `validation.cases` that carry one) also runs on a network of two
//! synthetic sites: the sites' releases, merged by the real merge, must equal the table in
//! the file and plain DataFusion over the two sites' stores pooled.

use crate::common;

use std::path::Path;

use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::engine::{NodeEngine, NodePolicy};
use ern_node::pseudonym::Pseudonymiser;
use ern_synth::{SynthConfig, synthesize};

use common::{pooled_plain_context, synthetic_site_store, test_steward, text_rows};
use ern_test_support::cases::{check_expected_table, verdict};

/// Moves the first patient's birth date by one year (a change no released group may show).
fn shift_one_birth_year(export: &Path) {
    let path = export.join("patient.csv");
    let text = std::fs::read_to_string(&path).expect("patient.csv");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut cells: Vec<String> = lines[1].split(',').map(str::to_string).collect();
    let year: i32 = cells[1][..4].parse().expect("year");
    cells[1] = format!("{}{}", year + 1, &cells[1][4..]);
    lines[1] = cells.join(",");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write");
}

#[tokio::test]
async fn every_attack_gets_its_verdict_and_hidden_values_change_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let exports = dir.path().join("exports");
    let sites = synthesize(
        SynthConfig {
            sites: 1,
            patients: 3000,
            seed: 21,
        },
        &exports,
        &NoProgress,
    )
    .expect("synth");
    let twin = dir.path().join("twin");
    std::fs::create_dir(&twin).expect("mkdir");
    for file in std::fs::read_dir(&sites[0].dir).expect("export") {
        let file = file.expect("entry").path();
        std::fs::copy(&file, twin.join(file.file_name().expect("name"))).expect("copy");
    }
    shift_one_birth_year(&twin);
    let key = Pseudonymiser::new(&[5u8; 32]);
    let (store_a, store_b) = (dir.path().join("a"), dir.path().join("b"));
    ingest(&sites[0].dir, &key, &store_a, &NoProgress).expect("ingest a");
    ingest(&twin, &key, &store_b, &NoProgress).expect("ingest b");
    let steward = test_steward(dir.path());
    let policy = NodePolicy::new("site-a", vec![steward.public_key()]);
    let engine_a = NodeEngine::open(&store_a, policy.clone())
        .await
        .expect("open a");
    let engine_b = NodeEngine::open(&store_b, policy).await.expect("open b");

    let cases = ern_queries::casefile::parse(include_str!("attacks.cases"))
        .unwrap_or_else(|error| panic!("attacks.cases: {error}"));
    assert!(cases.len() >= 25, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let a = verdict(&engine_a, &steward, &case.sql).await;
        let b = verdict(&engine_b, &steward, &case.sql).await;
        if a != case.verdict || b != case.verdict {
            failures.push(format!(
                "line {}: expected {}, got {a} / {b}\n    {}",
                case.line, case.verdict, case.sql
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The case files whose expected tables this suite checks, each with the one verdict that
/// may carry a table there.
const TABLE_FILES: [(&str, &str, &str); 2] = [
    ("attacks.cases", include_str!("attacks.cases"), "released"),
    (
        "validation.cases",
        include_str!("../../../queries/tests/validation.cases"),
        "accepted",
    ),
];

/// Whether the question's result is ordered (an ORDER BY above its aggregation barrier):
/// then rows compare in order, otherwise as sorted sets.
#[tokio::test]
async fn expected_tables_are_the_merge_of_two_sites_and_plain_datafusion_over_both() {
    let dir = tempfile::tempdir().expect("temp dir");
    let steward = test_steward(dir.path());
    let mut stores = Vec::new();
    let mut sites = Vec::new();
    for (index, seed) in [21u64, 22].into_iter().enumerate() {
        let site_dir = dir.path().join(format!("site-{}", index + 1));
        // Each site its own pseudonymisation key, as in a network: no pid of one site
        // is a pid of the other (checked below).
        let key = [11 + index as u8; 32];
        let store = synthetic_site_store(&site_dir, 3000, seed, &key);
        let site_id = format!("site-{}", index + 1);
        let policy = NodePolicy::new(&site_id, vec![steward.public_key()]);
        let engine = NodeEngine::open(&store, policy).await.expect("open site");
        sites.push((site_id, engine));
        stores.push(store);
    }
    let store_refs: Vec<&Path> = stores.iter().map(|store| store.as_path()).collect();
    let pooled = pooled_plain_context(&store_refs).await;

    // The pooled tables are the sites' tables side by side, with disjoint pids: the
    // pooled distinct patients are the sum of the sites' patients.
    let count = "SELECT COUNT(DISTINCT pid) AS n, COUNT(*) AS rows FROM patient";
    let mut per_site = Vec::new();
    for store in &store_refs {
        per_site.push(text_rows(&common::plain_sql(store, count).await));
    }
    let pooled_count = text_rows(
        &pooled
            .sql(count)
            .await
            .expect("plan count")
            .collect()
            .await
            .expect("run count"),
    );
    let number =
        |rows: &[Vec<String>], column: usize| -> u64 { rows[0][column].parse().expect("a count") };
    let site_sum = |column| {
        per_site
            .iter()
            .map(|rows| number(rows, column))
            .sum::<u64>()
    };
    assert_eq!(
        number(&pooled_count, 0),
        site_sum(0),
        "pids meet across sites"
    );
    assert_eq!(number(&pooled_count, 1), site_sum(1), "pooled rows");
    assert!(
        per_site.iter().all(|rows| number(rows, 0) > 1000),
        "{per_site:?}"
    );

    let mut cases = Vec::new();
    for (file, text, verdict) in TABLE_FILES {
        let parsed =
            ern_queries::casefile::parse(text).unwrap_or_else(|error| panic!("{file}: {error}"));
        for case in parsed {
            let Some(table) = case.expected.clone() else {
                continue;
            };
            assert_eq!(
                case.verdict, verdict,
                "{file} line {}: only a `{verdict}` case may carry an expected table there",
                table.line
            );
            cases.push((file, case, table));
        }
    }
    let in_attacks = cases
        .iter()
        .filter(|(file, ..)| *file == "attacks.cases")
        .count();
    assert!(
        in_attacks >= 6,
        "{in_attacks} expected tables in attacks.cases"
    );
    let mut failures = Vec::new();
    for (file, case, table) in &cases {
        if let Err(failure) = check_expected_table(case, table, &sites, &steward, &pooled).await {
            failures.push(format!(
                "{file} line {}: {failure}\n    {}",
                case.line, case.sql
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} expected tables failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
