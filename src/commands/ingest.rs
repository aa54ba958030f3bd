//! `ern ingest`: a site export into the node store.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ern_ingest::IngestReport;
use ern_node::pseudonym::Pseudonymiser;

use crate::progress_bar::Bar;
use crate::table::new_table;

/// Arguments of `ern ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// The export directory (patient.csv and optionally diagnosis.csv,
    /// genetic_finding.csv, phenotype.csv).
    #[arg(long)]
    input: PathBuf,
    /// The site's pseudonymisation key file (see `ern keygen pseudonym`).
    #[arg(long)]
    key: PathBuf,
    /// The store directory; its tables are replaced atomically, other files are kept.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: IngestArgs) -> anyhow::Result<()> {
    let report = ingest_export(&args.input, &args.key, &args.out)?;
    print_report(&args.input, &args.out, &report);
    Ok(())
}

/// Loads the key and ingests, with a progress bar.
pub(crate) fn ingest_export(input: &Path, key: &Path, out: &Path) -> anyhow::Result<IngestReport> {
    let key = Pseudonymiser::from_key_file(key).context("loading the pseudonymisation key")?;
    ern_ingest::ingest(input, &key, out, &Bar::new()).with_context(|| {
        format!(
            "ingesting {} (the store {} is unchanged)",
            input.display(),
            out.display()
        )
    })
}

/// Prints what an ingest read, left out and wrote.
pub(crate) fn print_report(input: &Path, out: &Path, report: &IngestReport) {
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    println!(
        "ingested {} into {} in {:.2} s ({:.0} patients/s, {:.1} MB/s)",
        input.display(),
        out.display(),
        seconds,
        report.patients_read as f64 / seconds,
        report.bytes_read as f64 / 1e6 / seconds
    );
    println!(
        "patients read: {}; left out (no consent to reuse, or opted out): {}",
        report.patients_read, report.patients_left_out
    );
    let mut table = new_table(
        &["table", "rows read", "rows stored"],
        &["rows read", "rows stored"],
    );
    for counts in &report.tables {
        table.add_row(vec![
            counts.table.to_string(),
            counts.rows_read.to_string(),
            counts.rows_written.to_string(),
        ]);
    }
    println!("{table}");
}
