//! Rule 8: a time limit stops the work (red team, 2026-12: a legal 8-way self-join kept a
//! core at 100 % after its refusal, a time oracle and a way to starve the node).
//!
//! The only test in its own process, so the process's CPU time and memory are this
//! query's. The watchdog of the approval-integrity issue: the heavy self-join under a
//! 256 MB memory pool and a time limit is refused in time, stops computing within a
//! second, stays far below 1.5 GB of resident memory, and a small question is answered
//! right after.

mod common;

use std::time::{Duration, Instant};

use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy};
use ern_queries::Rule;

use common::{signed_request, synthetic_store, test_steward};

/// The most resident memory this process has had, from /proc/self/status (VmHWM).
fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("VmHWM");
    kib * 1024
}

/// CPU time this process has used (user and system), from /proc/self/stat.
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    let after_name = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3) here.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

/// Eight joins of one table on pid: legal under every rule, and minutes of work.
const HEAVY: &str = "SELECT p.sex, COUNT(*) AS n FROM patient p \
    JOIN phenotype a ON a.pid = p.pid JOIN phenotype b ON b.pid = a.pid \
    JOIN phenotype c ON c.pid = b.pid JOIN phenotype d ON d.pid = c.pid \
    JOIN phenotype e ON e.pid = d.pid JOIN phenotype f ON f.pid = e.pid \
    JOIN phenotype g ON g.pid = f.pid JOIN phenotype h ON h.pid = g.pid \
    GROUP BY p.sex";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_stops_computing_at_the_time_limit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = synthetic_store(dir.path(), 10_000, 5);
    let steward = test_steward(dir.path());
    let mut policy = NodePolicy::new("site-a", vec![steward.public_key()]);
    policy.time_limit = Duration::from_secs(5);
    policy.memory_limit = 256 << 20;
    let engine = NodeEngine::open(&store, policy).await.expect("open");

    let started = Instant::now();
    match engine
        .execute(&signed_request(&steward, HEAVY, "site-a"))
        .await
    {
        Err(ExecuteError::Limit { refusal, .. }) => {
            assert_eq!(refusal.rule, Rule::ResourceLimits, "{refusal}")
        }
        other => panic!("expected a time-limit refusal, got {other:?}"),
    }
    let answered = started.elapsed();
    assert!(
        answered < Duration::from_secs(6),
        "refused after {answered:?}"
    );

    // Within a second after the refusal the work has stopped: under a fifth of a core.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = process_cpu();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = process_cpu().saturating_sub(before);
    assert!(
        used < Duration::from_millis(200),
        "{used:?} of CPU in the second after the refusal"
    );
    let peak = peak_resident_bytes();
    eprintln!("peak resident memory: {} MB", peak >> 20);
    assert!(peak < 1_500 << 20, "{} MB resident at the peak", peak >> 20);

    // And the node answers the next question.
    let small = "SELECT p.sex, COUNT(*) AS n FROM patient p GROUP BY p.sex";
    let released = engine
        .execute(&signed_request(&steward, small, "site-a"))
        .await
        .expect("a small question right after");
    assert!(released.groups_released > 0);
}
