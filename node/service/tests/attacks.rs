//! Runs `attacks.cases` through the node engine on two stores that differ only in one
//! patient's birth year: each case must get its verdict, and the same verdict on both.
//!
//! A case that carries an expected table (in `attacks.cases`, and the accepted cases of
//! the planner's `validation.cases` that carry one) also runs on a network of two
//! synthetic sites: the sites' releases, merged by the real merge, must equal the table in
//! the file and plain DataFusion over the two sites' stores pooled.

mod common;

use std::path::Path;

use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy};
use ern_node::pseudonym::Pseudonymiser;
use ern_node::steward_key::StewardSigningKey;
use ern_queries::casefile::{Case, ExpectedTable};
use ern_synth::{SynthConfig, synthesize};

use common::{
    pooled_plain_context, signed_request, synthetic_site_store, test_steward, text_rows,
    text_rows_rounded,
};

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

/// Decimals of a floating-point value in an expected table.
const TABLE_DECIMALS: usize = 2;

/// Whether the question's result is ordered (an ORDER BY above its aggregation barrier):
/// then rows compare in order, otherwise as sorted sets.
fn is_ordered(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Sort(_) => true,
        LogicalPlan::Projection(projection) => is_ordered(&projection.input),
        LogicalPlan::Limit(limit) => is_ordered(&limit.input),
        LogicalPlan::Filter(filter) => is_ordered(&filter.input),
        LogicalPlan::SubqueryAlias(alias) => is_ordered(&alias.input),
        _ => false,
    }
}

/// Runs one case with an expected table on every site and checks the merge against the
/// file and against plain DataFusion over the pooled stores.
async fn check_expected_table(
    case: &Case,
    table: &ExpectedTable,
    sites: &[(String, NodeEngine)],
    steward: &StewardSigningKey,
    pooled: &SessionContext,
) -> Result<(), String> {
    let sql = case.sql.as_str();
    let mut released = Vec::new();
    for (site_id, site) in sites {
        let site_release = site
            .execute(&signed_request(steward, sql, site_id))
            .await
            .map_err(|e| format!("{site_id}: {e}"))?;
        // Strict comparison: a group dropped at one site would make the merge differ from
        // the pooled data, so a case with an expected table must suppress nothing anywhere
        // (every group well over k at every site; filter to such groups in WHERE).
        if site_release.groups_suppressed > 0 {
            return Err(format!(
                "{site_id} suppressed {} groups: an expected table needs groups that reach k at every site",
                site_release.groups_suppressed
            ));
        }
        released.extend(site_release.batches);
    }
    let planning = ern_queries::catalog::planning_state().map_err(|e| e.to_string())?;
    let query = ern_queries::Planner::new()
        .plan(sql, &planning)
        .await
        .map_err(|e| e.to_string())?;
    let merged = query.merge(released).await.map_err(|e| e.to_string())?;
    let plain = pooled
        .sql(sql)
        .await
        .map_err(|e| format!("plain DataFusion: {e}"))?
        .collect()
        .await
        .map_err(|e| format!("plain DataFusion: {e}"))?;

    let schema = query.result_schema();
    let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    for (side, batches) in [("the merge", &merged), ("plain DataFusion", &plain)] {
        if let Some(batch) = batches.first() {
            let names: Vec<&String> = batch
                .schema_ref()
                .fields()
                .iter()
                .map(|f| f.name())
                .collect();
            if names != columns.iter().collect::<Vec<_>>() {
                return Err(format!(
                    "the columns of {side}, {names:?}, are not the plan's {columns:?}"
                ));
            }
        }
    }
    if table.columns != columns {
        return Err(format!(
            "the expected table (line {}) names the columns {:?}, the result has {columns:?}",
            table.line, table.columns
        ));
    }

    let ordered = is_ordered(query.logical_plan());
    let sorted = |mut rows: Vec<Vec<String>>| {
        if !ordered {
            rows.sort();
        }
        rows
    };
    // (b) The merge equals plain DataFusion over the pooled stores (floats to 6 decimals).
    let (got, want) = (sorted(text_rows(&merged)), sorted(text_rows(&plain)));
    if got != want {
        return Err(format!(
            "the merge differs from plain DataFusion over the pooled stores\n    merge: {got:?}\n    plain: {want:?}"
        ));
    }
    // (a) The merge equals the table in the file (floats to TABLE_DECIMALS decimals).
    let actual = sorted(text_rows_rounded(&merged, TABLE_DECIMALS));
    if actual != sorted(table.rows.clone()) {
        let actual = ExpectedTable::new(columns, actual);
        return Err(format!(
            "the merged table differs from the expected one (line {}); it is\n{actual}",
            table.line
        ));
    }
    Ok(())
}

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
