//! The red-team suite: `disclosure.cases` run through the node engine on two stores that
//! differ only in one target patient.
//!
//! Both stores hold the same synthetic registry plus one target patient whose only known
//! quasi-identifier is the birth month (1881-07: nobody else is born before 1900).
//! Everything else about the target differs between the stores: sex, vital status, death
//! date, diagnosis, ages, genotype, phenotype, consent to contact. Each case is a hostile
//! researcher's attempt to read any of that; it must be refused by the named rule on both
//! stores (`refused <rule>`), or run on both and release byte-identical output (`same`).
//! A run-time failure on either store fails the case: a failure that depends on data is
//! an oracle.

use crate::common;

use std::path::Path;

use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy};
use ern_node::pseudonym::Pseudonymiser;

use ern_node::steward_key::StewardSigningKey;

use common::{canonical_rows, signed_request, synthetic_export, test_steward};

/// The target's rows in one store, per file, as (column, value) pairs.
struct Target {
    patient: &'static [(&'static str, &'static str)],
    diagnosis: &'static [(&'static str, &'static str)],
    genetic_finding: &'static [(&'static str, &'static str)],
    phenotype: &'static [(&'static str, &'static str)],
}

const TARGET_A: Target = Target {
    patient: &[
        ("local_id", "TARGET-1"),
        ("birth_date", "1881-07"),
        ("sex", "female"),
        ("vital_status", "dead"),
        ("death_date", "1950-03-14"),
        ("first_contact_date", "1930-05-02"),
        ("undiagnosed", "false"),
        ("contact_for_research", "yes"),
        ("consent_data_reuse", "yes"),
        ("biosample_available", "true"),
    ],
    diagnosis: &[
        ("local_id", "TARGET-1"),
        ("code", "ORPHA:217569"),
        ("status", "confirmed"),
        ("onset", "date"),
        ("onset_date", "1890-04-01"),
        ("diagnosis_date", "1901-06-01"),
    ],
    genetic_finding: &[
        ("local_id", "TARGET-1"),
        ("hgnc_id", "HGNC:7577"),
        ("gene_symbol", "MYH7"),
        ("hgvs", "NM_000257.4:c.1208G>A"),
        ("zygosity", "heterozygous"),
        ("causative", "true"),
    ],
    phenotype: &[
        ("local_id", "TARGET-1"),
        ("hpo_id", "HP:0001639"),
        ("excluded", "false"),
    ],
};

const TARGET_B: Target = Target {
    patient: &[
        ("local_id", "TARGET-1"),
        ("birth_date", "1881-07"),
        ("sex", "male"),
        ("vital_status", "alive"),
        ("first_contact_date", "1935-01-01"),
        ("undiagnosed", "true"),
        ("contact_for_research", "no"),
        ("consent_data_reuse", "yes"),
        ("biosample_available", "false"),
    ],
    diagnosis: &[
        ("local_id", "TARGET-1"),
        ("code", "ORPHA:154"),
        ("status", "provisional"),
        ("onset", "at_birth"),
        ("diagnosis_date", "1920-01-01"),
    ],
    genetic_finding: &[
        ("local_id", "TARGET-1"),
        ("hgnc_id", "HGNC:2483"),
        ("gene_symbol", "CSRP3"),
        ("hgvs", "NM_003476.5:c.131T>C"),
        ("zygosity", "homozygous"),
        ("causative", "false"),
    ],
    phenotype: &[
        ("local_id", "TARGET-1"),
        ("hpo_id", "HP:0001279"),
        ("excluded", "true"),
    ],
};

/// Appends one row to an export file, each value under its column of the file's header.
fn append_row(file: &Path, values: &[(&str, &str)]) {
    let text = std::fs::read_to_string(file).expect("export file");
    let header = text.lines().next().expect("header");
    let row: Vec<&str> = header
        .split(',')
        .map(|column| {
            values
                .iter()
                .find(|(name, _)| *name == column)
                .map_or("", |(_, value)| value)
        })
        .collect();
    let mut text = text;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&row.join(","));
    text.push('\n');
    std::fs::write(file, text).expect("write export");
}

/// A copy of `export` with the target added.
fn export_with(export: &Path, out: &Path, target: &Target) {
    std::fs::create_dir_all(out).expect("mkdir");
    for file in std::fs::read_dir(export).expect("export") {
        let file = file.expect("entry").path();
        std::fs::copy(&file, out.join(file.file_name().expect("name"))).expect("copy");
    }
    append_row(&out.join("patient.csv"), target.patient);
    append_row(&out.join("diagnosis.csv"), target.diagnosis);
    append_row(&out.join("genetic_finding.csv"), target.genetic_finding);
    append_row(&out.join("phenotype.csv"), target.phenotype);
}

/// What one store did with a case: refused (by a rule), released (rows), or failed.
async fn outcome(engine: &NodeEngine, key: &StewardSigningKey, sql: &str) -> String {
    match engine.execute(&signed_request(key, sql, "site-a")).await {
        Ok(released) => format!("same {:?}", canonical_rows(&released.batches)),
        Err(ExecuteError::Refused(refusal)) => format!("refused {}", refusal.rule.name()),
        Err(other) => format!("failed ({}) {other}", other.rule_name()),
    }
}

#[tokio::test]
async fn no_case_reads_the_target_patient() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = synthetic_export(dir.path(), 3000, 23);
    let key = Pseudonymiser::new(&[9u8; 32]);
    let steward = test_steward(dir.path());
    let mut engines = Vec::new();
    for (name, target) in [("a", &TARGET_A), ("b", &TARGET_B)] {
        let export = dir.path().join(format!("export-{name}"));
        export_with(&base, &export, target);
        let store = dir.path().join(format!("store-{name}"));
        ingest(&export, &key, &store, &NoProgress).expect("ingest");
        let policy = NodePolicy::new("site-a", vec![steward.public_key()]);
        engines.push(NodeEngine::open(&store, policy).await.expect("open"));
    }

    let cases = ern_queries::casefile::parse(include_str!("disclosure.cases"))
        .unwrap_or_else(|error| panic!("disclosure.cases: {error}"));
    assert!(cases.len() >= 100, "{} cases", cases.len());
    // This suite compares two stores with each other; it checks no expected table, so a
    // case may not carry one (it would read as checked when it is not).
    for case in &cases {
        if let Some(table) = &case.expected {
            panic!(
                "disclosure.cases line {}: this suite checks no expected tables (see attacks.cases)",
                table.line
            );
        }
    }
    let mut failures = Vec::new();
    for case in &cases {
        let a = outcome(&engines[0], &steward, &case.sql).await;
        let b = outcome(&engines[1], &steward, &case.sql).await;
        let verdict_a = if a.starts_with("same") { "same" } else { &a };
        let expected = case.verdict.as_str();
        if a != b || verdict_a != expected {
            failures.push(format!(
                "line {}: expected {expected}\n    store A: {a}\n    store B: {b}\n    {}",
                case.line, case.sql
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
