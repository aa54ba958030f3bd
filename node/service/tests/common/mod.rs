//! Helpers shared by the node's integration tests: plain DataFusion over a store (the
//! independent side of every comparison) and batches as comparable text rows.

use std::path::Path;

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use ern_node::{reference, schema, store};

/// Plain DataFusion (default configuration, no node) over the store's Parquet files and
/// the reference tables.
#[allow(dead_code)]
pub(crate) async fn plain_context(store_dir: &Path) -> SessionContext {
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
    ctx.register_batch(
        "orpha_closure",
        reference::orpha_closure_batch().expect("closure"),
    )
    .expect("closure table");
    ctx.register_batch("orpha_term", reference::orpha_term_batch().expect("terms"))
        .expect("term table");
    ctx
}

/// Runs `sql` with plain DataFusion over the store: the independent side of a comparison.
#[allow(dead_code)] // Not every test file that shares this module uses it.
pub(crate) async fn plain_sql(store_dir: &Path, sql: &str) -> Vec<RecordBatch> {
    plain_context(store_dir)
        .await
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("plan {sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("run {sql}: {e}"))
}

/// Rows as text, in batch order; floats with 6 decimals so that AVG and SUM/COUNT compare.
#[allow(dead_code)]
pub(crate) fn text_rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let Some(first) = batches.first() else {
        return Vec::new();
    };
    let batch = concat_batches(&first.schema(), batches).expect("concat");
    let mut out = vec![Vec::new(); batch.num_rows()];
    for column in batch.columns() {
        let text: StringArray = if column.data_type() == &DataType::Float64 {
            let values = column.as_any().downcast_ref::<Float64Array>().expect("f64");
            values
                .iter()
                .map(|v| v.map(|v| format!("{v:.6}")))
                .collect()
        } else {
            cast(column, &DataType::Utf8)
                .expect("text")
                .as_string::<i32>()
                .clone()
        };
        for (row, value) in out.iter_mut().enumerate() {
            value.push(if text.is_null(row) {
                "NULL".into()
            } else {
                text.value(row).to_string()
            });
        }
    }
    out
}

/// A steward key pair made for a test in `dir`.
#[allow(dead_code)]
pub(crate) fn test_steward(dir: &Path) -> ern_node::steward_key::StewardSigningKey {
    let prefix = dir.join("steward");
    ern_node::steward_key::generate_steward_key(&prefix).expect("steward key");
    ern_node::steward_key::StewardSigningKey::load(&prefix.with_extension("key"))
        .expect("load steward key")
}

/// A request for `sql` at `site`, approved by `key` for ten minutes.
#[allow(dead_code)]
pub(crate) fn signed_request(
    key: &ern_node::steward_key::StewardSigningKey,
    sql: &str,
    site: &str,
) -> ern_node::engine::QueryRequest {
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let approval = ern_node::approval::sign(key, sql, site, "study", expires).expect("sign");
    ern_node::engine::QueryRequest {
        sql: sql.to_string(),
        study_id: "study".into(),
        approval,
    }
}

/// Released rows as exact text (every value cast to text, floats in full), sorted: two
/// releases are the same release exactly when these are equal.
#[allow(dead_code)]
pub(crate) fn canonical_rows(batches: &[RecordBatch]) -> Vec<String> {
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<StringArray> = batch
            .columns()
            .iter()
            .map(|column| {
                cast(column, &DataType::Utf8)
                    .expect("text")
                    .as_string::<i32>()
                    .clone()
            })
            .collect();
        for row in 0..batch.num_rows() {
            let cells: Vec<&str> = columns
                .iter()
                .map(|c| if c.is_null(row) { "NULL" } else { c.value(row) })
                .collect();
            rows.push(cells.join(" | "));
        }
    }
    rows.sort();
    rows
}

/// A synthetic one-site export of `patients` in `dir`/exports; returns its directory.
#[allow(dead_code)]
pub(crate) fn synthetic_export(dir: &Path, patients: usize, seed: u64) -> std::path::PathBuf {
    let sites = ern_synth::synthesize(
        ern_synth::SynthConfig {
            sites: 1,
            patients,
            seed,
        },
        &dir.join("exports"),
        &ern_ingest::progress::NoProgress,
    )
    .expect("synth");
    sites[0].dir.clone()
}

/// [`synthetic_export`] ingested into `dir`/store; returns the store directory.
#[allow(dead_code)]
pub(crate) fn synthetic_store(dir: &Path, patients: usize, seed: u64) -> std::path::PathBuf {
    let export = synthetic_export(dir, patients, seed);
    let store = dir.join("store");
    ern_ingest::ingest(
        &export,
        &ern_node::pseudonym::Pseudonymiser::new(&[3u8; 32]),
        &store,
        &ern_ingest::progress::NoProgress,
    )
    .expect("ingest");
    store
}
