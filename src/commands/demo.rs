//! `ern demo`: the showcase. Today it builds the network's hospitals: synthetic exports,
//! per-site keys and pseudonymised stores, and shows what each store holds. The federated
//! query round (coordinator, nodes over gRPC, stewards' approvals) joins it with the
//! network.

use std::path::Path;

use anyhow::Context;
use clap::Args;
use ern_node::pseudonym;
use ern_node::synth::{self, SynthConfig};

use super::ingest::{ingest_export, print_report};
use crate::progress_bar::Bar;

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
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let exports = work.path().join("exports");
    let config = SynthConfig {
        sites: args.sites,
        patients: args.patients,
        seed: args.seed,
    };
    println!(
        "generating {} synthetic hospital registries with {} patients",
        args.sites, args.patients
    );
    let sites =
        synth::synthesize(config, &exports, &Bar::new()).context("generating synthetic exports")?;
    for site in &sites {
        let name = site
            .dir
            .file_name()
            .map_or_else(|| "site".into(), |n| n.to_string_lossy().into_owned());
        let site_dir = work.path().join(&name);
        std::fs::create_dir_all(&site_dir)
            .with_context(|| format!("creating {}", site_dir.display()))?;
        let key = site_dir.join("pseudonym.key");
        pseudonym::generate_key_file(&key).context("creating a site key")?;
        let store = site_dir.join("store");
        let report = ingest_export(&site.dir, &key, &store)?;
        println!();
        print_report(Path::new(&name), &store, &report);
    }
    println!("\nEach store holds pids (HMAC-SHA256 under its own site key), never a local id.");
    Ok(())
}
