//! Synthetic exports and stores made the way a site makes them (`ern synth`, then
//! `ern ingest`), and plain DataFusion over a store's files as the independent side of a
//! comparison.

use std::path::{Path, PathBuf};

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ern_ingest::progress::NoProgress;
use ern_node::pseudonym::{self, Pseudonymiser};
use ern_node::{reference, schema, store};
use ern_synth::SynthConfig;

/// A synthetic one-site export of `patients` in `dir`/exports; returns its directory.
pub fn synthetic_export(dir: &Path, patients: usize, seed: u64) -> PathBuf {
    let sites = ern_synth::synthesize(
        SynthConfig {
            sites: 1,
            patients,
            seed,
        },
        &dir.join("exports"),
        &NoProgress,
    )
    .expect("synth");
    sites[0].dir.clone()
}

/// [`synthetic_export`] ingested into `dir`/store under a fixed site key; returns the
/// store directory.
pub fn synthetic_store(dir: &Path, patients: usize, seed: u64) -> PathBuf {
    synthetic_site_store(dir, patients, seed, &[3u8; 32])
}

/// [`synthetic_export`] ingested into `dir`/store with the pseudonymisation key `key`;
/// returns the store directory. Every synthetic site numbers its patients alike, so the
/// stores of a network of sites need keys of their own for their pids never to meet.
pub fn synthetic_site_store(dir: &Path, patients: usize, seed: u64, key: &[u8; 32]) -> PathBuf {
    let export = synthetic_export(dir, patients, seed);
    let store = dir.join("store");
    ern_ingest::ingest(&export, &Pseudonymiser::new(key), &store, &NoProgress).expect("ingest");
    store
}

/// One registry of `patients`, ingested once under a fresh site key and hard-linked into
/// `sites` stores under `work` (for benchmarks of many sites with the same data).
pub fn linked_stores(work: &Path, sites: usize, patients: usize) -> Vec<PathBuf> {
    let exports = ern_synth::synthesize(
        SynthConfig {
            sites: 1,
            patients,
            seed: 3,
        },
        &work.join("exports"),
        &NoProgress,
    )
    .expect("synth");
    let key = work.join("pseudonym.key");
    pseudonym::generate_key_file(&key).expect("key");
    let pseudonymiser = Pseudonymiser::from_key_file(&key).expect("key");
    let template = work.join("template");
    ern_ingest::ingest(&exports[0].dir, &pseudonymiser, &template, &NoProgress).expect("ingest");
    (0..sites)
        .map(|index| {
            let store = work.join(format!("store-{index}"));
            std::fs::create_dir_all(&store).expect("store dir");
            for entry in std::fs::read_dir(&template).expect("template") {
                let entry = entry.expect("entry");
                if entry.path().extension().is_some_and(|e| e == "parquet") {
                    std::fs::hard_link(entry.path(), store.join(entry.file_name())).expect("link");
                }
            }
            store
        })
        .collect()
}

/// Plain DataFusion (default configuration, no node) over the store's Parquet files and
/// the reference tables.
pub async fn plain_context(store_dir: &Path) -> SessionContext {
    let ctx = SessionContext::new();
    for table in schema::PATIENT_TABLES {
        let path = store::table_path(store_dir, table);
        ctx.register_parquet(
            table,
            path.to_str().expect("utf-8 path"),
            ParquetReadOptions::default(),
        )
        .await
        .expect("register table");
    }
    register_reference_tables(&ctx);
    ctx
}

/// Plain DataFusion (default configuration, no node) over several stores pooled: each
/// patient table reads the Parquet files of every store, as one table. The independent
/// side of a comparison with the merge of those stores' releases.
pub async fn pooled_plain_context(store_dirs: &[&Path]) -> SessionContext {
    let ctx = SessionContext::new();
    for table in schema::PATIENT_TABLES {
        let paths: Vec<String> = store_dirs
            .iter()
            .map(|dir| {
                store::table_path(dir, table)
                    .to_str()
                    .expect("utf-8 path")
                    .to_string()
            })
            .collect();
        let pooled = ctx
            .read_parquet(paths, ParquetReadOptions::default())
            .await
            .expect("read the stores' files");
        ctx.register_table(table, pooled.into_view())
            .expect("register table");
    }
    register_reference_tables(&ctx);
    ctx
}

/// The shipped reference tables, as the node registers them.
fn register_reference_tables(ctx: &SessionContext) {
    ctx.register_batch(
        "orpha_closure",
        reference::orpha_closure_batch().expect("closure"),
    )
    .expect("closure table");
    ctx.register_batch("orpha_term", reference::orpha_term_batch().expect("terms"))
        .expect("term table");
}

/// Runs `sql` with plain DataFusion over the store: the independent side of a comparison.
pub async fn plain_sql(store_dir: &Path, sql: &str) -> Vec<RecordBatch> {
    plain_context(store_dir)
        .await
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("plan {sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("run {sql}: {e}"))
}

/// Runs `sql` on `ctx` and collects it; a failure names the SQL.
pub async fn collect_sql(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("plan {sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("run {sql}: {e}"))
}

/// A site's plain vector for a secure question whose only aggregate is
/// `COUNT(DISTINCT pid)`, computed without the node: plain DataFusion's `counts_sql`
/// (group keys, then the count) over the store, put in the domain's cells, each cell
/// holding the count twice (the released partial and the hidden patient count).
pub async fn plain_count_vector(
    store: &Path,
    layout: &ern_queries::secure::SecureLayout,
    counts_sql: &str,
) -> Vec<u64> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int64Type;
    assert_eq!(layout.width(), 2, "a count and its hidden patient count");
    let keys = layout.domain().keys.len();
    let mut vector = vec![0u64; layout.len()];
    for batch in collect_sql(&plain_context(store).await, counts_sql).await {
        let cells = layout
            .domain()
            .cells_of_rows(&batch.columns()[..keys], batch.num_rows())
            .expect("cells");
        let counts = batch.column(keys).as_primitive::<Int64Type>();
        for (row, cell) in cells.into_iter().enumerate() {
            let cell = cell.expect("every group is in the public domain");
            let count = counts.value(row) as u64;
            vector[cell * 2] = count;
            vector[cell * 2 + 1] = count;
        }
    }
    vector
}
