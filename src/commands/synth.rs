//! `ern synth`: synthetic site exports.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ern_synth::{self as synth, SynthConfig};

use crate::progress_bar::Bar;
use crate::table::new_table;

/// Arguments of `ern synth`.
#[derive(Debug, Args)]
pub(crate) struct SynthArgs {
    /// Number of sites; each gets its own export directory site-1 … site-N.
    #[arg(long)]
    sites: usize,
    /// Patients over all sites (sites differ in size).
    #[arg(long)]
    patients: usize,
    /// Seed; the same arguments always give the same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn run(args: SynthArgs) -> anyhow::Result<()> {
    let config = SynthConfig {
        sites: args.sites,
        patients: args.patients,
        seed: args.seed,
    };
    let started = std::time::Instant::now();
    let sites = synth::synthesize(config, &args.out, &Bar::new())
        .context("generating synthetic exports")?;
    let mut table = new_table(
        &[
            "site",
            "patients",
            "diagnoses",
            "genetic findings",
            "phenotypes",
        ],
        &["patients", "diagnoses", "genetic findings", "phenotypes"],
    );
    for site in &sites {
        let mut row = vec![site.dir.display().to_string()];
        row.extend(site.rows.iter().map(usize::to_string));
        table.add_row(row);
    }
    println!("{table}");
    println!(
        "{} sites, {} patients in {:.2} s",
        sites.len(),
        args.patients,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
