//! The example questions of data-model.md and more, through the node engine and the merge,
//! checked against plain DataFusion on the same Parquet files with the same k applied
//! by hand (HAVING COUNT(DISTINCT pid) >= k, and behind SUM and AVG the patients with a
//! non-zero contribution >= k).

use crate::common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{plain_context, text_rows};
use ern_ingest::ingest;
use ern_ingest::progress::NoProgress;
use ern_node::approval;
use ern_node::engine::{NodeEngine, NodePolicy, QueryRequest};
use ern_node::pseudonym::Pseudonymiser;
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_queries::catalog::planning_state;
use ern_synth::{SynthConfig, synthesize};

/// (the researcher's SQL, the independent SQL with k = 5 applied by hand, ordered?)
const CASES: &[(&str, &str, bool)] = &[
    (
        "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex",
        "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex HAVING COUNT(DISTINCT p.pid) >= 5",
        false,
    ),
    (
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY (p.birth_year / 10) * 10 ORDER BY decade",
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY (p.birth_year / 10) * 10 HAVING COUNT(DISTINCT p.pid) >= 5 ORDER BY decade",
        true,
    ),
    (
        "SELECT d.code, AVG(d.age_at_diagnosis - d.age_at_onset) AS mean_delay, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code",
        "SELECT d.code, AVG(d.age_at_diagnosis - d.age_at_onset) AS mean_delay, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code HAVING COUNT(DISTINCT d.pid) >= 5 AND COUNT(DISTINCT CASE WHEN d.age_at_diagnosis - d.age_at_onset <> 0 THEN d.pid END) >= 5",
        false,
    ),
    (
        "SELECT d.code, ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5 AS delay_band, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code, ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5",
        "SELECT d.code, ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5 AS delay_band, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code, ((d.age_at_diagnosis - d.age_at_onset) / 5) * 5 HAVING COUNT(DISTINCT d.pid) >= 5",
        false,
    ),
    (
        "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients FROM genetic_finding g JOIN diagnosis d ON g.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:217569' AND g.causative GROUP BY g.gene_symbol ORDER BY patients DESC, g.gene_symbol LIMIT 3",
        "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients FROM genetic_finding g JOIN diagnosis d ON g.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:217569' AND g.causative GROUP BY g.gene_symbol HAVING COUNT(DISTINCT g.pid) >= 5 ORDER BY patients DESC, g.gene_symbol LIMIT 3",
        true,
    ),
    (
        "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN phenotype f ON p.pid = f.pid WHERE f.hpo_id = 'HP:0001279' AND NOT f.excluded GROUP BY p.undiagnosed",
        "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN phenotype f ON p.pid = f.pid WHERE f.hpo_id = 'HP:0001279' AND NOT f.excluded GROUP BY p.undiagnosed HAVING COUNT(DISTINCT p.pid) >= 5",
        false,
    ),
    (
        "SELECT d.code, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY d.code HAVING COUNT(DISTINCT d.pid) > 20",
        "SELECT d.code, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY d.code HAVING COUNT(DISTINCT d.pid) > 20 AND COUNT(DISTINCT d.pid) >= 5",
        false,
    ),
    (
        "SELECT p.sex, COUNT(DISTINCT p.pid) * 100.0 / 1000 AS pct, AVG(p.birth_year) AS mean_year, SUM(p.birth_year) AS total FROM patient p GROUP BY p.sex",
        "SELECT p.sex, COUNT(DISTINCT p.pid) * 100.0 / 1000 AS pct, AVG(p.birth_year) AS mean_year, SUM(p.birth_year) AS total FROM patient p GROUP BY p.sex HAVING COUNT(DISTINCT p.pid) >= 5",
        false,
    ),
    (
        "SELECT t.codes, COUNT(*) AS patients FROM (SELECT pid, COUNT(DISTINCT code) AS codes FROM diagnosis GROUP BY pid) t GROUP BY t.codes",
        "SELECT t.codes, COUNT(*) AS patients FROM (SELECT pid, COUNT(DISTINCT code) AS codes FROM diagnosis GROUP BY pid) t GROUP BY t.codes HAVING COUNT(DISTINCT t.pid) >= 5",
        false,
    ),
];

#[tokio::test]
async fn the_example_questions_match_an_independent_computation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sites = synthesize(
        SynthConfig {
            sites: 1,
            patients: 4000,
            seed: 17,
        },
        &dir.path().join("x"),
        &NoProgress,
    )
    .expect("synth");
    let store_dir = dir.path().join("store");
    ingest(
        &sites[0].dir,
        &Pseudonymiser::new(&[1u8; 32]),
        &store_dir,
        &NoProgress,
    )
    .expect("ingest");
    generate_steward_key(&dir.path().join("steward")).expect("key");
    let steward = StewardSigningKey::load(&dir.path().join("steward.key")).expect("load");
    let engine = NodeEngine::open(
        &store_dir,
        NodePolicy::new("s1", vec![steward.public_key()]),
    )
    .await
    .expect("open");
    let independent = plain_context(&store_dir).await;
    let planning = planning_state().expect("planning");
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    for (sql, reference_sql, ordered) in CASES {
        let approval = approval::sign(&steward, sql, "s1", "study", expires).expect("sign");
        let request = QueryRequest {
            sql: sql.to_string(),
            study_id: "study".into(),
            approval,
        };
        let released = engine
            .execute(&request)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let query = ern_queries::Planner::new()
            .plan(sql, &planning)
            .await
            .expect("valid");
        let merged = query
            .merge(released.batches)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let expected = independent
            .sql(reference_sql)
            .await
            .expect("plan")
            .collect()
            .await
            .expect("run");
        let (mut got, mut want) = (text_rows(&merged), text_rows(&expected));
        if !ordered {
            got.sort();
            want.sort();
        }
        assert!(!want.is_empty(), "{sql}: nothing to compare");
        assert_eq!(got, want, "{sql}");
    }
}
