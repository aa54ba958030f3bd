//! `ern demo`: the showcase of a federated round.
//!
//! Synthetic hospitals get their registries, pseudonymisation keys, stores and steward
//! keys; each showcase question is validated as the coordinator would, signed by every
//! site's steward, run by every site's node engine (approval check, rules, k), and the
//! released partials are merged into one table. Today the nodes run in this process; the
//! network round over gRPC, with nodes dialling out to a coordinator, replaces that hop.

use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use ern_node::approval;
use ern_node::engine::{NodeEngine, NodePolicy, QueryRequest};
use ern_node::pseudonym;
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_node::synth::{self, SynthConfig};
use ern_queries::catalog::planning_state;
use ern_queries::split::merge;

use super::ingest::ingest_export;
use crate::progress_bar::Bar;
use crate::table::{from_batches, new_table};

/// Arguments of `ern demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of hospitals.
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Patients over all hospitals.
    #[arg(long, default_value_t = 30_000)]
    patients: usize,
    /// Seed of the synthetic registries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Minimum distinct patients per released group, at every node.
    #[arg(long, default_value_t = 5)]
    k: u32,
}

/// The showcase questions: (title, SQL).
const SHOWCASE: &[(&str, &str)] = &[
    (
        "Patients with any rare cardiomyopathy (ORPHA:167848 and all its descendants in the Orphanet hierarchy), by decade of birth",
        "SELECT (p.birth_year / 10) * 10 AS decade, COUNT(DISTINCT p.pid) AS patients \
         FROM patient p JOIN diagnosis d ON p.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant \
         WHERE c.ancestor = 'ORPHA:167848' GROUP BY (p.birth_year / 10) * 10 ORDER BY decade",
    ),
    (
        "Mean diagnostic delay in years, for the ten disorders with most patients",
        "SELECT t.name AS disorder, COUNT(DISTINCT d.pid) AS patients, AVG(d.age_at_diagnosis - d.age_at_onset) AS mean_delay_years \
         FROM diagnosis d JOIN orpha_term t ON d.code = t.orpha_code \
         WHERE d.age_at_onset IS NOT NULL AND d.age_at_diagnosis IS NOT NULL \
         GROUP BY t.name ORDER BY patients DESC LIMIT 10",
    ),
    (
        "Most frequent causative genes among patients with hypertrophic cardiomyopathy (ORPHA:217569 group)",
        "SELECT g.gene_symbol, COUNT(DISTINCT g.pid) AS patients \
         FROM genetic_finding g JOIN diagnosis d ON g.pid = d.pid JOIN orpha_closure c ON d.code = c.descendant \
         WHERE c.ancestor = 'ORPHA:217569' AND g.causative GROUP BY g.gene_symbol ORDER BY patients DESC, g.gene_symbol",
    ),
];

/// One demo hospital: its node engine and its steward's key.
struct Site {
    id: String,
    engine: NodeEngine,
    steward: StewardSigningKey,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(demo(args))
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let config = SynthConfig {
        sites: args.sites,
        patients: args.patients,
        seed: args.seed,
    };
    println!(
        "Building {} synthetic hospital registries ({} patients of rare cardiac diseases)",
        args.sites, args.patients
    );
    let exports = synth::synthesize(config, &work.path().join("exports"), &Bar::new())
        .context("generating synthetic exports")?;
    let mut sites = Vec::with_capacity(exports.len());
    let mut stores = new_table(
        &["site", "patients read", "left out (consent)", "stored"],
        &["patients read", "left out (consent)", "stored"],
    );
    for (index, export) in exports.iter().enumerate() {
        let id = format!("hospital-{}", index + 1);
        let site = open_site(
            &id,
            &export.dir,
            &work.path().join(&id),
            args.k,
            &mut stores,
        )
        .await?;
        sites.push(site);
    }
    println!("{stores}");
    let planning = planning_state().context("building the planning context")?;
    let expires = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + 3600;
    for (number, (title, sql)) in SHOWCASE.iter().enumerate() {
        println!("\nQuestion {}: {title}\n  {sql}", number + 1);
        let query = ern_queries::validate(sql, &planning)
            .await
            .map_err(|refusal| anyhow::anyhow!("{refusal}"))?;
        let mut released = Vec::new();
        let mut coverage = new_table(
            &["site", "outcome", "groups released", "groups suppressed"],
            &["groups released", "groups suppressed"],
        );
        for site in &sites {
            let approval = approval::sign(&site.steward, sql, &site.id, "demo-study", expires)?;
            let request = QueryRequest {
                sql: sql.to_string(),
                study_id: "demo-study".into(),
                approval,
            };
            match site.engine.execute(&request).await {
                Ok(result) => {
                    coverage.add_row(vec![
                        site.id.clone(),
                        "answered".into(),
                        result.groups_released.to_string(),
                        result.groups_suppressed.to_string(),
                    ]);
                    released.extend(result.batches);
                }
                Err(error) => {
                    coverage.add_row(vec![
                        site.id.clone(),
                        format!("refused: {}", error.rule_name()),
                        "-".into(),
                        "-".into(),
                    ]);
                }
            }
        }
        let merged = merge(&query, released)
            .await
            .context("merging the sites' results")?;
        println!("{coverage}");
        println!("{}", from_batches(&merged)?);
    }
    println!(
        "\nEvery group above has at least k = {} patients at each hospital that contributed to it; smaller groups never left their hospital.",
        args.k
    );
    println!("Done in {:.1} s.", started.elapsed().as_secs_f64());
    Ok(())
}

/// Keys, store and node engine for one hospital.
async fn open_site(
    id: &str,
    export: &Path,
    dir: &Path,
    k: u32,
    report: &mut comfy_table::Table,
) -> anyhow::Result<Site> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = dir.join("pseudonym.key");
    pseudonym::generate_key_file(&key).context("creating a site key")?;
    let store = dir.join("store");
    let ingested = ingest_export(export, &key, &store)?;
    report.add_row(vec![
        id.to_string(),
        ingested.patients_read.to_string(),
        ingested.patients_left_out.to_string(),
        (ingested.patients_read - ingested.patients_left_out).to_string(),
    ]);
    let prefix = dir.join("steward");
    generate_steward_key(&prefix).context("creating a steward key")?;
    let steward =
        StewardSigningKey::load(&dir.join("steward.key")).context("loading the steward key")?;
    let mut policy = NodePolicy::new(id, vec![steward.public_key()]);
    policy.k = k;
    let engine = NodeEngine::open(&store, policy)
        .await
        .with_context(|| format!("opening the node of {id}"))?;
    Ok(Site {
        id: id.to_string(),
        engine,
        steward,
    })
}
