//! Differential privacy's cost: the same questions, in the same run, through one
//! coordinator, to two sets of nodes on copies of the same stores: one with `[privacy]`
//! off, one with it on (bounded site plans, exact discrete noise from the node's secret,
//! the ledger's charge appended and synced to the audit log before each question runs).
//! Per site and under secure aggregation.
//!
//! `cargo bench --bench privacy` runs 24 nodes of 10k patients per set;
//! `cargo bench --bench privacy -- SITES PATIENTS [REPEATS]` runs one size. It reports
//! the dispatch-to-merged latency p50 of each path with and without noise, and the CPU
//! the nodes of each set spend per answer (their link runtimes' threads are named apart,
//! and the query threads' CPU during a question is that question's).
//! Every node of both sets shares this machine's cores with the coordinator.

use std::sync::Arc;
use std::time::Duration;

use ern_node::privacy::policy::{Epsilon, PrivacyPolicy};
use ern_node::privacy::secret::NoiseSecret;
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_test_support::loopback::{Loopback, Security};

mod common;
use common::nodes::{bench_limits, identities, run_question, runtime, start_nodes, store_question};
use common::{cpu_by_thread, ms, percentile, stores};

const COORDINATOR_THREADS: &str = "ern-coord";
const PLAIN_THREADS: &str = "ern-plain";
const NOISED_THREADS: &str = "ern-noised";
/// Every node runs its questions on threads of this name (`ern_node::stop`); questions
/// run one at a time here, so their CPU during a question is that question's.
const QUERY_THREADS: &str = "ern-query";

/// A question of its own for a year of birth.
type Question = fn(usize) -> String;

/// The two questions measured, each a question of its own for every run (so every
/// noised run is charged) with the same work: patients per disorder and sex, where a
/// patient is in as many groups as they have disorders and the node bounds them to one
/// first (the cost of bounding shows here), and patients per sex and year of birth from
/// the patient table alone, one row per patient, where nothing needs bounding (the cost
/// of the noise and the ledger alone).
const QUESTIONS: [(&str, Question); 2] = [
    ("per disorder and sex (bounded)", |year| {
        format!(
            "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code WHERE p.birth_year >= {year} GROUP BY t.name, p.sex"
        )
    }),
    ("per sex and birth year (one row per patient)", |year| {
        format!(
            "SELECT p.sex, p.birth_year, COUNT(*) AS patients FROM patient p WHERE p.birth_year >= {year} GROUP BY p.sex, p.birth_year"
        )
    }),
];

fn parse(text: &str) -> usize {
    text.parse().expect("a number")
}

/// One path's samples, with and without noise.
#[derive(Default)]
struct Samples {
    plain: Vec<Duration>,
    noised: Vec<Duration>,
    plain_cpu: Duration,
    noised_cpu: Duration,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (sites, patients, repeats) = match args.as_slice() {
        [] => (24, 10_000, 10),
        [sites, patients] => (parse(sites), parse(patients), 10),
        [sites, patients, repeats, ..] => (parse(sites), parse(patients), parse(repeats)),
        _ => unreachable!(),
    };
    let coordinator = runtime(COORDINATOR_THREADS);
    let plain_nodes = runtime(PLAIN_THREADS);
    let noised_nodes = runtime(NOISED_THREADS);
    let task = measure(
        sites,
        patients,
        repeats,
        plain_nodes.handle().clone(),
        noised_nodes.handle().clone(),
    );
    let paths = coordinator
        .block_on(coordinator.spawn(task))
        .expect("measure");
    println!(
        "| sites × patients | question | path | without noise p50 | with noise p50 | with ÷ without | node CPU / answer (without, with) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for ((question, path), samples) in QUESTIONS
        .iter()
        .flat_map(|(question, _)| ["per-site", "secure"].map(|path| (question, path)))
        .zip(paths)
    {
        let (plain, noised) = (
            percentile(&samples.plain, 0.5),
            percentile(&samples.noised, 0.5),
        );
        println!(
            "| {sites} × {patients} | {question} | {path} | {:.1} ms | {:.1} ms | {:.2}× | {:.3} / {:.3} ms |",
            ms(plain),
            ms(noised),
            noised.as_secs_f64() / plain.as_secs_f64(),
            ms(samples.plain_cpu),
            ms(samples.noised_cpu),
        );
    }
}

async fn measure(
    sites: usize,
    patients: usize,
    repeats: usize,
    plain_nodes: tokio::runtime::Handle,
    noised_nodes: tokio::runtime::Handle,
) -> Vec<Samples> {
    let work = tempfile::tempdir().expect("temp dir");
    eprintln!("preparing 2 × {sites} sites of {patients} patients");
    let plain_stores = stores(&work.path().join("plain"), sites, patients);
    let noised_stores = stores(&work.path().join("noised"), sites, patients);
    let coordinator = Loopback::start(Security::Plaintext, bench_limits()).await;
    let (core, address) = (Arc::clone(&coordinator.core), coordinator.url.clone());
    generate_steward_key(&work.path().join("steward")).expect("steward key");
    let steward = StewardSigningKey::load(&work.path().join("steward.key")).expect("key");
    let plain_ids: Vec<String> = (0..sites).map(|i| format!("plain-{i:03}")).collect();
    let noised_ids: Vec<String> = (0..sites).map(|i| format!("noised-{i:03}")).collect();
    let (plain_keys, plain_roster) = identities(&work.path().join("plain"), &plain_ids);
    let (noised_keys, noised_roster) = identities(&work.path().join("noised"), &noised_ids);
    start_nodes(
        &core,
        &address,
        &steward,
        &plain_ids,
        &plain_stores,
        &plain_keys,
        &plain_roster,
        &plain_nodes,
        |_, _| {},
    )
    .await;
    start_nodes(
        &core,
        &address,
        &steward,
        &noised_ids,
        &noised_stores,
        &noised_keys,
        &noised_roster,
        &noised_nodes,
        |site, policy| {
            let mut secret = [0u8; 32];
            for (byte, source) in secret.iter_mut().zip(site.bytes().cycle()) {
                *byte = source;
            }
            policy.privacy = PrivacyPolicy {
                enabled: true,
                epsilon: Epsilon::from_micro(500_000),
                budget_per_study: Epsilon::from_micro(1_000_000_000),
                secret: Some(Arc::new(NoiseSecret::from_bytes(&secret))),
                ..PrivacyPolicy::default()
            };
        },
    )
    .await;
    let mut paths: Vec<Samples> = (0..2 * QUESTIONS.len())
        .map(|_| Samples::default())
        .collect();
    for round in 0..repeats + 1 {
        for (path, (kind, mode)) in (0..QUESTIONS.len())
            .flat_map(|kind| ["per-site", "secure"].map(|mode| (kind, mode)))
            .enumerate()
        {
            let sql = QUESTIONS[kind].1(1800 + 4 * round + path);
            for (noised, ids) in [(false, &plain_ids), (true, &noised_ids)] {
                let query_id = format!("q-{kind}-{mode}-{noised}-{round}");
                store_question(&core, &steward, ids, &query_id, mode, &sql);
                let threads = [PLAIN_THREADS, NOISED_THREADS, QUERY_THREADS];
                let before = cpu_by_thread(&threads);
                let elapsed = run_question(&core, ids, &query_id, mode).await;
                let after = cpu_by_thread(&threads);
                let queries = after[2].saturating_sub(before[2]);
                // The first round warms caches.
                if round == 0 {
                    continue;
                }
                let samples = &mut paths[path];
                if noised {
                    samples.noised.push(elapsed);
                    samples.noised_cpu += after[1].saturating_sub(before[1]) + queries;
                } else {
                    samples.plain.push(elapsed);
                    samples.plain_cpu += after[0].saturating_sub(before[0]) + queries;
                }
            }
        }
    }
    let answers = (repeats * sites) as u32;
    for samples in &mut paths {
        samples.plain_cpu /= answers;
        samples.noised_cpu /= answers;
    }
    paths
}
