//! Ingest throughput against a same-process baseline.
//!
//! Generates one synthetic site export, then alternates two jobs over the same CSV files:
//! the baseline (plain polars: read each CSV, write it as Parquet; no validation, no
//! hashing, no consent) and `ern ingest` (every rule checked, pids hashed, consent applied,
//! typed Parquet written atomically). Prints median times, patients/s, MB/s and the ratio.
//!
//! `cargo bench -p ern-ingest --bench ingest -- [PATIENTS] [RUNS]`
//! (defaults: 1000000 patients, 5 runs of each job after one warm-up run).
//!
//! For profiling, `ERN_BENCH_INGEST_ONLY=1` skips the baseline runs, so that a profiler
//! attached to the process sees synth and ingest only.

use std::fs::File;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ern_ingest::ingest;
use ern_ingest::progress::{NoProgress, Progress};
use ern_node::pseudonym::Pseudonymiser;
use ern_synth::{SynthConfig, synthesize};
use polars::prelude::{CsvReadOptions, ParquetWriter, SerReader};

type BenchResult<T> = Result<T, Box<dyn std::error::Error>>;

/// The baseline job; returns the time spent reading and the time spent writing.
fn baseline(export: &Path, out: &Path) -> BenchResult<(Duration, Duration)> {
    std::fs::create_dir_all(out)?;
    let (mut reading, mut writing) = (Duration::ZERO, Duration::ZERO);
    for name in ["patient", "diagnosis", "genetic_finding", "phenotype"] {
        let csv = export.join(format!("{name}.csv"));
        let t = Instant::now();
        let mut frame = CsvReadOptions::default()
            .with_has_header(true)
            .try_into_reader_with_file_path(Some(csv))?
            .finish()?;
        reading += t.elapsed();
        let t = Instant::now();
        ParquetWriter::new(File::create(out.join(format!("{name}.parquet")))?)
            .finish(&mut frame)?;
        writing += t.elapsed();
    }
    Ok((reading, writing))
}

/// CPU time (user + system) of the whole process so far, from /proc/self/stat (Linux; in
/// clock ticks of 10 ms). `None` where it cannot be read.
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |index: usize| fields.get(index)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Runs `job`, returning its wall time and the process CPU time it used.
fn timed<T>(job: impl FnOnce() -> BenchResult<T>) -> BenchResult<(T, Duration, Duration)> {
    let (wall, cpu) = (Instant::now(), process_cpu());
    let value = job()?;
    let used = process_cpu()
        .zip(cpu)
        .map_or(Duration::ZERO, |(after, before)| {
            after.saturating_sub(before)
        });
    Ok((value, wall.elapsed(), used))
}

/// Records the process CPU time at each stage boundary ingest reports.
#[derive(Default)]
struct StageCpu {
    marks: Mutex<Vec<(String, Option<Duration>)>>,
}

impl StageCpu {
    fn mark(&self, name: &str) {
        if let Ok(mut marks) = self.marks.lock() {
            marks.push((name.to_string(), process_cpu()));
        }
    }

    /// "stage cpu" pairs: the CPU time between each mark and the next.
    fn summary(&self) -> String {
        let Ok(marks) = self.marks.lock() else {
            return String::new();
        };
        marks
            .windows(2)
            .map(|pair| {
                let used = pair[1].1.zip(pair[0].1).map_or(0.0, |(after, before)| {
                    after.saturating_sub(before).as_secs_f64()
                });
                format!("{} {used:.2}", pair[0].0)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Progress for StageCpu {
    fn stage(&self, name: &str, _total: u64) {
        self.mark(name);
    }
    fn advance(&self, _steps: u64) {}
    fn finish(&self) {
        self.mark("done");
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() -> BenchResult<()> {
    // `cargo bench` adds `--bench`.
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let patients: usize = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let runs: usize = args.next().map_or(Ok(5), |a| a.parse())?;
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
    // The export's pages go to disk now, not in the kernel's background while runs are
    // timed.
    for entry in std::fs::read_dir(export)? {
        File::open(entry?.path())?.sync_all()?;
    }
    let key = Pseudonymiser::new(&[7u8; 32]);
    let (mut base_times, mut ingest_times) = (Vec::new(), Vec::new());
    let (mut base_cpu, mut ingest_cpu) = (Vec::new(), Vec::new());
    let ingest_only = std::env::var_os("ERN_BENCH_INGEST_ONLY").is_some();
    // Run 0 warms up (page cache, allocator, thread pools) and is not counted.
    for run in 0..=runs {
        let ((reading, writing), base_wall, base_used) = timed(|| {
            if ingest_only {
                Ok((Duration::ZERO, Duration::ZERO))
            } else {
                baseline(export, &work.path().join(format!("baseline-{run}")))
            }
        })?;
        if run > 0 {
            base_times.push(base_wall);
            base_cpu.push(base_used);
        }
        let store = work.path().join(format!("store-{run}"));
        let stage_cpu = StageCpu::default();
        let (report, ingest_wall, ingest_used) =
            timed(|| Ok(ingest(export, &key, &store, &stage_cpu)?))?;
        if run > 0 {
            ingest_times.push(ingest_wall);
            ingest_cpu.push(ingest_used);
        }
        let stages: Vec<String> = report
            .stages
            .iter()
            .map(|(name, d)| format!("{name} {:.3}", d.as_secs_f64()))
            .collect();
        println!(
            "{}: baseline {:.3} s (read {:.3}, write {:.3}; cpu {:.2} s), \
             ingest {:.3} s ({}; cpu {:.2} s: {})",
            if run == 0 {
                "warm-up".to_string()
            } else {
                format!("run {run}")
            },
            base_wall.as_secs_f64(),
            reading.as_secs_f64(),
            writing.as_secs_f64(),
            base_used.as_secs_f64(),
            ingest_wall.as_secs_f64(),
            stages.join(", "),
            ingest_used.as_secs_f64(),
            stage_cpu.summary(),
        );
        if run == 0 {
            let store_bytes: u64 = std::fs::read_dir(&store)?
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            println!("store: {:.1} MB of Parquet", store_bytes as f64 / 1e6);
        }
        // Each run starts from the same state: the outputs of earlier runs would otherwise
        // pile up in the page cache and tax later runs' writes.
        for output in [format!("baseline-{run}"), format!("store-{run}")] {
            let path = work.path().join(output);
            if path.exists() {
                std::fs::remove_dir_all(path)?;
            }
        }
    }
    let (base, ours) = (
        median(base_times).as_secs_f64(),
        median(ingest_times).as_secs_f64(),
    );
    let (base_cpu, ours_cpu) = (
        median(base_cpu).as_secs_f64(),
        median(ingest_cpu).as_secs_f64(),
    );
    println!("| job | median time | CPU time | patients/s | MB/s |");
    println!("|---|---:|---:|---:|---:|");
    for (job, seconds, cpu) in [
        ("polars CSV -> Parquet (baseline)", base, base_cpu),
        ("ern ingest", ours, ours_cpu),
    ] {
        println!(
            "| {job} | {seconds:.3} s | {cpu:.2} s | {:.0} | {:.1} |",
            patients as f64 / seconds,
            bytes as f64 / 1e6 / seconds
        );
    }
    println!(
        "ingest / baseline = {:.2}x (CPU time {:.2}x)",
        ours / base,
        ours_cpu / base_cpu
    );
    Ok(())
}
