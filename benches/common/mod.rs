//! What the benchmarks share: percentiles, and site stores made from one ingested
//! registry.

#![allow(dead_code)]

use std::time::Duration;

pub(crate) mod nodes;

/// Milliseconds of a duration.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The `q` quantile (0..=1) of `samples`, nearest rank.
pub(crate) fn percentile(samples: &[Duration], q: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// One registry of `patients`, ingested once and hard-linked into `sites` stores.
pub(crate) use ern_test_support::fixture::linked_stores as stores;

/// CPU time this process's threads have used, by the first `prefix` their name starts
/// with (Linux: `/proc/self/task/*/schedstat`, nanoseconds). Threads that have exited
/// are not counted; threads matching no prefix are left out.
pub(crate) fn cpu_by_thread(prefixes: &[&str]) -> Vec<Duration> {
    let mut totals = vec![Duration::ZERO; prefixes.len()];
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return totals;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let Some(index) = prefixes.iter().position(|p| name.trim().starts_with(p)) else {
            continue;
        };
        let nanos = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        totals[index] += Duration::from_nanos(nanos);
    }
    totals
}
