//! Runs `attacks.cases` through the node engine on two stores that differ only in one
//! patient's birth year: each case must get its verdict, and the same verdict on both.

mod common;

use std::path::Path;

use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy};
use ern_node::pseudonym::Pseudonymiser;
use ern_node::steward_key::StewardSigningKey;
use ern_synth::{SynthConfig, synthesize};

use common::{signed_request, test_steward};

async fn verdict(engine: &NodeEngine, key: &StewardSigningKey, sql: &str) -> String {
    match engine.execute(&signed_request(key, sql, "site-a")).await {
        Ok(released) if released.groups_released > 0 => "released".into(),
        Ok(_) => "suppressed".into(),
        Err(ExecuteError::Refused(refusal)) => format!("refused {}", refusal.rule.name()),
        Err(other) => format!("error {other}"),
    }
}

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

    let cases = ern_queries::casefile::parse(include_str!("attacks.cases"));
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
