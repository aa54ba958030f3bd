//! Ingest throughput against a same-process baseline.
//!
//! Generates one synthetic site export, then alternates two jobs over the same CSV files:
//! the baseline (plain polars: read each CSV, write it as Parquet; no validation, no
//! hashing, no consent) and `ern ingest` (every rule checked, pids hashed, consent applied,
//! typed Parquet written atomically). Prints median times, patients/s, MB/s and the ratio.
//!
//! `cargo run --release -p ern-node --bin bench-ingest -- [PATIENTS] [RUNS]`
//! (defaults: 1000000 patients, 3 runs of each job).

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use ern_node::ingest::ingest;
use ern_node::progress::NoProgress;
use ern_node::pseudonym::Pseudonymiser;
use ern_node::synth::{SynthConfig, synthesize};
use polars::prelude::{CsvReadOptions, ParquetWriter, SerReader};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

fn baseline(export: &Path, out: &Path) -> BenchResult<()> {
    std::fs::create_dir_all(out)?;
    for name in ["patient", "diagnosis", "genetic_finding", "phenotype"] {
        let csv = export.join(format!("{name}.csv"));
        let mut frame = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(csv))?
            .finish()?;
        ParquetWriter::new(File::create(out.join(format!("{name}.parquet")))?)
            .finish(&mut frame)?;
    }
    Ok(())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> BenchResult<()> {
    let mut args = std::env::args().skip(1);
    let patients: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(3), |a| a.parse())?;
    let work = tempfile::tempdir()?;
    let exports = work.path().join("exports");
    let started = Instant::now();
    let sites = synthesize(
        SynthConfig {
            sites: 1,
            patients,
            seed: 1,
        },
        &exports,
        &NoProgress,
    )?;
    let export = &sites[0].dir;
    let bytes: u64 = std::fs::read_dir(export)?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "synth: {patients} patients, {:.1} MB of CSV ({:?} rows) in {:.2} s",
        bytes as f64 / 1e6,
        sites[0].rows,
        started.elapsed().as_secs_f64()
    );
    let key = Pseudonymiser::new(&[7u8; 32]);
    let (mut base_times, mut ingest_times) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let t = Instant::now();
        baseline(export, &work.path().join(format!("baseline-{run}")))?;
        base_times.push(t.elapsed());
        let t = Instant::now();
        let report = ingest(
            export,
            &key,
            &work.path().join(format!("store-{run}")),
            &NoProgress,
        )?;
        ingest_times.push(t.elapsed());
        let stages: Vec<String> = report
            .stages
            .iter()
            .map(|(name, d)| format!("{name} {:.3}", d.as_secs_f64()))
            .collect();
        println!(
            "run {}: baseline {:.3} s, ingest {:.3} s ({})",
            run + 1,
            base_times[run].as_secs_f64(),
            ingest_times[run].as_secs_f64(),
            stages.join(", ")
        );
    }
    let (base, ours) = (
        median(base_times).as_secs_f64(),
        median(ingest_times).as_secs_f64(),
    );
    println!("| job | median time | patients/s | MB/s |");
    println!("|---|---:|---:|---:|");
    for (job, seconds) in [
        ("polars CSV -> Parquet (baseline)", base),
        ("ern ingest", ours),
    ] {
        println!(
            "| {job} | {seconds:.3} s | {:.0} | {:.1} |",
            patients as f64 / seconds,
            bytes as f64 / 1e6 / seconds
        );
    }
    println!("ingest / baseline = {:.2}x", ours / base);
    Ok(())
}
