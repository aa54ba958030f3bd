//! Node overhead: the example questions through the node's execute path (approval check,
//! validation, site plan with the hidden patient count, k suppression, audit entry)
//! against plain DataFusion on the same Parquet files, in the same process.
//!
//! `cargo bench -p ern-node --bench node -- [PATIENTS...]`
//! (default: 10000 1000000). Each query runs 7 times per side, alternating; medians.
//!
//! Then, for the network bench's count question, the fixed cost of one question phase by
//! phase (medians of 101 runs): plain DataFusion's SQL planning, optimising, physical
//! planning and running, and what a node adds to them (the steward's signature checked,
//! the question validated on the node's session, its site plan made total, the store
//! generation, the synced record of the executed approval, a synced audit entry).

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use datafusion::physical_plan::collect;
use ern_node::approval;
use ern_node::audit::{AuditEntry, AuditLog, Outcome};
use ern_node::engine::{NodeEngine, NodePolicy, QueryRequest};
use ern_node::session::node_session;
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_queries::{Dominance, SiteFacts};
use ern_test_support::fixture::{plain_context, synthetic_store};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

const RUNS: usize = 7;

/// The network bench's question.
const COUNT_QUESTION: &str = "SELECT p.sex, COUNT(*) AS patients FROM patient p GROUP BY p.sex";

const QUESTIONS: &[(&str, &str)] = &[
    ("Q0 patients by sex", COUNT_QUESTION),
    (
        "Q1 disorder x sex",
        "SELECT d.code, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid GROUP BY d.code, p.sex",
    ),
    (
        "Q2 cardiomyopathy by decade",
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:167848' GROUP BY (p.birth_year / 10) * 10",
    ),
    (
        "Q3 mean delay per disorder",
        "SELECT d.code, AVG(d.age_at_diagnosis - d.age_at_onset) AS mean_delay, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL GROUP BY d.code",
    ),
    (
        "Q4 causative genes in HCM",
        "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients FROM genetic_finding g JOIN diagnosis d ON g.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant WHERE c.ancestor = 'ORPHA:217569' AND g.causative GROUP BY g.gene_symbol",
    ),
    (
        "Q5 undiagnosed with HPO",
        "SELECT p.undiagnosed, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN phenotype f ON p.pid = f.pid WHERE f.hpo_id = 'HP:0001279' AND NOT f.excluded GROUP BY p.undiagnosed",
    ),
];

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn bench_size(patients: usize, work: &Path, steward: &StewardSigningKey) -> BenchResult<()> {
    let store_dir = synthetic_store(&work.join(format!("size-{patients}")), patients, 1);
    let engine = NodeEngine::open(
        &store_dir,
        NodePolicy::new("bench", vec![steward.public_key()]),
    )
    .await?;
    let plain = plain_context(&store_dir).await;
    let expires = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    println!("\n{patients} patients");
    println!("| question | plain DataFusion | node execute | ratio | added |");
    println!("|---|---:|---:|---:|---:|");
    for (name, sql) in QUESTIONS {
        let (mut plain_times, mut node_times) = (Vec::new(), Vec::new());
        for run in 0..RUNS {
            // A node runs an approval once per store generation (a second delivery gets
            // the stored release): every run is its own approval, as every approved
            // question of a real network is.
            let approval = approval::sign(steward, sql, "bench", "study", expires + run as u64)?;
            let request = QueryRequest {
                sql: sql.to_string(),
                study_id: "study".into(),
                approval,
            };
            let t = Instant::now();
            let batches = plain.sql(sql).await?.collect().await?;
            plain_times.push(t.elapsed());
            std::hint::black_box(batches);
            let t = Instant::now();
            let released = engine.execute(&request).await?;
            node_times.push(t.elapsed());
            std::hint::black_box(released);
        }
        let (p, n) = (median(plain_times), median(node_times));
        println!(
            "| {name} | {:.2} ms | {:.2} ms | {:.2}x | {:+.2} ms |",
            p.as_secs_f64() * 1e3,
            n.as_secs_f64() * 1e3,
            n.as_secs_f64() / p.as_secs_f64(),
            (n.as_secs_f64() - p.as_secs_f64()) * 1e3
        );
    }
    phases(&store_dir, work, steward, expires).await
}

/// Runs `step` [`PHASE_RUNS`] times and returns the median time of one run.
async fn median_of<F, Fut>(mut step: F) -> BenchResult<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BenchResult<()>>,
{
    let mut times = Vec::with_capacity(PHASE_RUNS);
    for _ in 0..PHASE_RUNS {
        let t = Instant::now();
        step().await?;
        times.push(t.elapsed());
    }
    Ok(median(times))
}

const PHASE_RUNS: usize = 101;

/// The fixed cost of one count question, phase by phase.
async fn phases(
    store_dir: &Path,
    work: &Path,
    steward: &StewardSigningKey,
    expires: u64,
) -> BenchResult<()> {
    let plain = plain_context(store_dir).await;
    let node = node_session(store_dir, 1 << 30).await?;
    let sql = COUNT_QUESTION;
    let keys = [steward.public_key()];
    let approval = approval::sign(steward, sql, "bench", "study", expires)?;
    let audit_dir = work.join("audit-bench");
    std::fs::create_dir_all(&audit_dir)?;
    let audit = AuditLog::open(&audit_dir.join(ern_node::audit::AUDIT_FILE))?;
    let planner = ern_queries::Planner::new();
    let query = planner.plan(sql, &node.state()).await?;

    let mut rows: Vec<(&str, Duration)> = Vec::new();
    let state = plain.state();
    let logical = plain.sql(sql).await?.logical_plan().clone();
    let optimized = state.optimize(&logical)?;
    rows.push((
        "plain: SQL to logical plan",
        median_of(|| async { plain.sql(sql).await.map(drop).map_err(Into::into) }).await?,
    ));
    rows.push((
        "plain: optimise",
        median_of(|| async { state.optimize(&logical).map(drop).map_err(Into::into) }).await?,
    ));
    rows.push((
        "plain: physical plan",
        median_of(|| async {
            let planner = state.query_planner();
            planner
                .create_physical_plan(&optimized, &state)
                .await
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    // A physical plan runs once (its repartitioning keeps state): each run gets a
    // fresh one, planned outside the timer.
    let mut runs = Vec::with_capacity(PHASE_RUNS);
    for _ in 0..PHASE_RUNS {
        let physical = state
            .query_planner()
            .create_physical_plan(&optimized, &state)
            .await?;
        let t = Instant::now();
        std::hint::black_box(collect(physical, plain.task_ctx()).await?);
        runs.push(t.elapsed());
    }
    rows.push(("plain: run", median(runs)));
    rows.push((
        "node: steward's signature checked",
        median_of(|| async {
            approval::verify(&approval, sql, "bench", "study", &keys, expires - 60)
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    let node_state = node.state();
    rows.push((
        "node: validation (parses and plans the SQL)",
        median_of(|| async {
            planner
                .plan(sql, &node_state)
                .await
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    let facts = SiteFacts::with_unique_pid_tables(["patient"]);
    rows.push((
        "node: site plan",
        median_of(|| async {
            query
                .site_plan(&facts, Dominance::default())
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    let site_plan = query.site_plan(&facts, Dominance::default())?.plan;
    rows.push((
        "node: total plan (types coerced, casts made TRY_CAST, the node's own functions)",
        median_of(|| async {
            ern_node::total::total_plan(site_plan.clone(), &node_state)
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    rows.push((
        "node: store generation (four stat calls and the generation record; read twice per question)",
        median_of(|| async {
            ern_node::executed::store_generation(store_dir)
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    let executed = ern_node::executed::ExecutedApprovals::open(&audit_dir)?;
    let mut round = 0u64;
    rows.push((
        "node: executed-approval record, synced",
        median_of(|| {
            round += 1;
            let outcome = executed.record(
                &format!("approval-{round}"),
                "query",
                "generation",
                b"release",
                2,
                0,
            );
            async move { outcome.map_err(Into::into) }
        })
        .await?,
    ));
    rows.push((
        "node: audit entry, synced",
        median_of(|| async {
            audit
                .append(AuditEntry::new("study", "hash", Outcome::Accepted))
                .map(drop)
                .map_err(Into::into)
        })
        .await?,
    ));
    println!(
        "
fixed cost of one question (Q0), medians of {PHASE_RUNS} runs"
    );
    println!("| phase | time |");
    println!("|---|---:|");
    for (phase, time) in rows {
        println!("| {phase} | {:.3} ms |", time.as_secs_f64() * 1e3);
    }
    Ok(())
}

#[tokio::main]
async fn main() -> BenchResult<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        // `cargo bench` adds `--bench`.
        .filter(|a| a != "--bench")
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![10_000, 1_000_000]
    } else {
        sizes
    };
    let work = tempfile::tempdir()?;
    generate_steward_key(&work.path().join("steward"))?;
    let steward = StewardSigningKey::load(&work.path().join("steward.key"))?;
    for patients in sizes {
        bench_size(patients, work.path(), &steward).await?;
    }
    Ok(())
}
