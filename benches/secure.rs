//! Secure aggregation against the per-site path: the same question ("patients per
//! Orphanet disorder and sex", a domain of every shipped disorder × 4 sexes), the same
//! nodes, the same run, through the real coordinator and real nodes over gRPC on
//! loopback.
//!
//! `cargo bench --bench secure` runs 3, 24 and 200 nodes of 10k patients;
//! `cargo bench --bench secure -- SITES PATIENTS [REPEATS]` runs one. For each it reports
//! the dispatch-to-merged latency of both paths, the coordinator's and the nodes' CPU per
//! answer (threads named per runtime, as in the network bench), the bytes a node receives
//! and sends per question, and the CPU of one node's masking (X25519 agreement, HKDF and
//! ChaCha20 expansion per peer) measured on its own.
//!
//! Every node shares this machine's cores with the coordinator, so latency here is the
//! sum of all nodes' work; in a network each hospital computes on its own machine.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ern_node::round::statement_to_proto;
use ern_node::secure::{RoundKeys, RoundStatement, RoundTerms, SiteIdentity};
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_proto::v1;
use ern_test_support::loopback::{Loopback, Security};
use prost::Message;

mod common;
use common::nodes::{
    BENCH_STUDY, bench_limits, identities, run_question, runtime, start_nodes, store_question,
};
use common::{cpu_by_thread, ms, percentile, stores};

const COORDINATOR_THREADS: &str = "ern-coord";
const NODE_THREADS: &str = "ern-node";

const SQL: &str = "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

/// The bench question over the patients born from `year` on: a question of its own for
/// each run (a node releases a question once, one way), with the same work.
fn question(year: usize) -> String {
    SQL.replace(
        " GROUP BY",
        &format!(" WHERE p.birth_year >= {year} GROUP BY"),
    )
}

/// One path's measurements over the repeats.
#[derive(Default)]
struct PathMeasure {
    latency: Vec<Duration>,
    coordinator_cpu: Duration,
    node_cpu: Duration,
}

struct Measured {
    per_site: PathMeasure,
    secure: PathMeasure,
    /// Bytes one node receives and sends for one question, per path.
    per_site_bytes: (usize, usize),
    secure_bytes: (usize, usize),
    released_rows: (usize, usize),
}

fn parse(text: &str) -> usize {
    text.parse().expect("a number")
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let coordinator = runtime(COORDINATOR_THREADS);
    let nodes = runtime(NODE_THREADS);
    let configs: Vec<(usize, usize, usize)> = match args.as_slice() {
        [] => vec![(3, 10_000, 20), (24, 10_000, 15), (200, 10_000, 5)],
        [sites, patients] => vec![(parse(sites), parse(patients), 10)],
        [sites, patients, repeats, ..] => vec![(parse(sites), parse(patients), parse(repeats))],
        _ => unreachable!(),
    };
    println!(
        "| sites × patients | per-site p50 | secure p50 | secure ÷ per-site | coordinator CPU / answer (per-site, secure) | node CPU / answer (per-site, secure) | bytes in/out per node (per-site) | bytes in/out per node (secure) | rows released (per-site, secure) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (sites, patients, repeats) in configs {
        let task = measure(sites, patients, repeats, nodes.handle().clone());
        let m = coordinator
            .block_on(coordinator.spawn(task))
            .expect("measure");
        let (p, s) = (
            percentile(&m.per_site.latency, 0.5),
            percentile(&m.secure.latency, 0.5),
        );
        println!(
            "| {sites} × {patients} | {:.1} ms | {:.1} ms | {:.2}× | {:.3} / {:.3} ms | {:.3} / {:.3} ms | {} / {} B | {} / {} B | {} / {} |",
            ms(p),
            ms(s),
            s.as_secs_f64() / p.as_secs_f64(),
            ms(m.per_site.coordinator_cpu),
            ms(m.secure.coordinator_cpu),
            ms(m.per_site.node_cpu),
            ms(m.secure.node_cpu),
            m.per_site_bytes.0,
            m.per_site_bytes.1,
            m.secure_bytes.0,
            m.secure_bytes.1,
            m.released_rows.0,
            m.released_rows.1,
        );
    }
    println!();
    println!(
        "| participants | values per vector | masking CPU (one node) | per 10,000 values and peer |"
    );
    println!("|---|---|---|---|");
    for participants in [3, 24, 200] {
        for len in [1_816, 10_000] {
            let elapsed = masking_time(participants, len);
            let per =
                elapsed.as_secs_f64() * 1e3 * 10_000.0 / (len as f64 * (participants - 1) as f64);
            println!(
                "| {participants} | {len} | {:.3} ms | {per:.3} ms |",
                ms(elapsed)
            );
        }
    }
}

async fn measure(
    sites: usize,
    patients: usize,
    repeats: usize,
    nodes: tokio::runtime::Handle,
) -> Measured {
    let work = tempfile::tempdir().expect("temp dir");
    eprintln!("preparing {sites} sites of {patients} patients");
    let stores = stores(work.path(), sites, patients);
    let coordinator = Loopback::start(Security::Plaintext, bench_limits()).await;
    let (core, address) = (Arc::clone(&coordinator.core), coordinator.url.clone());
    generate_steward_key(&work.path().join("steward")).expect("steward key");
    let steward = StewardSigningKey::load(&work.path().join("steward.key")).expect("key");
    let ids: Vec<String> = (0..sites).map(|i| format!("site-{i:03}")).collect();
    let (keys, roster) = identities(work.path(), &ids);
    start_nodes(
        &core,
        &address,
        &steward,
        &ids,
        &stores,
        &keys,
        &roster,
        &nodes,
        |_, _| {},
    )
    .await;
    let mut per_site = PathMeasure::default();
    let mut secure = PathMeasure::default();
    let mut released_rows = (0, 0);
    let mut per_site_bytes = (0, 0);
    for round in 0..repeats + 1 {
        for (offset, mode) in ["per-site", "secure"].into_iter().enumerate() {
            let query_id = format!("q-{mode}-{round}");
            let sql = question(1800 + 2 * round + offset);
            store_question(&core, &steward, &ids, &query_id, mode, &sql);
            let before = cpu_by_thread(&[COORDINATOR_THREADS, NODE_THREADS]);
            let elapsed = run_question(&core, &ids, &query_id, mode).await;
            let after = cpu_by_thread(&[COORDINATOR_THREADS, NODE_THREADS]);
            let states = core.db().targets(&query_id).expect("targets");
            let rows = core
                .db()
                .result(&query_id)
                .expect("result")
                .map_or(0, |r| r.rows as usize);
            if mode == "per-site" {
                released_rows.0 = rows;
                let work = v1::Work {
                    query_id: query_id.clone(),
                    sql: SQL.into(),
                    approval: None,
                    secure_round: None,
                    study_id: BENCH_STUDY.into(),
                };
                per_site_bytes = (
                    work.encoded_len() + 100,
                    states[0].partial.as_ref().map_or(0, Vec::len),
                );
            } else {
                released_rows.1 = rows;
            }
            // The first round of each warms caches.
            if round > 0 {
                let path = if mode == "secure" {
                    &mut secure
                } else {
                    &mut per_site
                };
                path.latency.push(elapsed);
                path.coordinator_cpu += after[0].saturating_sub(before[0]);
                path.node_cpu += after[1].saturating_sub(before[1]);
            }
        }
    }
    let answers = (repeats * sites) as u32;
    for path in [&mut per_site, &mut secure] {
        path.coordinator_cpu /= answers;
        path.node_cpu /= answers;
    }
    let secure_bytes = secure_message_bytes(&ids, &keys, SQL).await;
    Measured {
        per_site,
        secure,
        per_site_bytes,
        secure_bytes,
        released_rows,
    }
}

/// Real round messages for `ids`: statements signed with the sites' keys, the relayed
/// round, and a masked vector of the question's length. Returns the bytes one node
/// receives (round-1 work and the relayed statements) and sends (its statement and its
/// masked vector).
async fn secure_message_bytes(ids: &[String], keys: &[PathBuf], sql: &str) -> (usize, usize) {
    let (statements, vector_len) = signed_statements(ids, keys, sql).await;
    let work = v1::Work {
        query_id: "q-bench".into(),
        sql: sql.into(),
        approval: None,
        secure_round: Some(v1::SecureRoundStart {
            round_id: "0".repeat(32),
            participants: ids.to_vec(),
        }),
        study_id: BENCH_STUDY.into(),
    };
    let round = v1::SecureRound {
        query_id: "q-bench".into(),
        round_id: "0".repeat(32),
        statements: statements.iter().map(statement_to_proto).collect(),
    };
    let masked = v1::MaskedVector {
        round_id: "0".repeat(32),
        values: vec![u64::MAX / 3; vector_len],
        noise: Vec::new(),
    };
    (
        work.encoded_len() + 100 + round.encoded_len(),
        statement_to_proto(&statements[0]).encoded_len() + masked.encoded_len(),
    )
}

/// Every participant's signed statement for the bench question.
async fn signed_statements(
    ids: &[String],
    keys: &[PathBuf],
    sql: &str,
) -> (Vec<RoundStatement>, usize) {
    let state = ern_queries::catalog::planning_state().expect("catalogue");
    let plan = ern_queries::Planner::new()
        .plan(sql, &state)
        .await
        .expect("plan");
    let layout = plan.secure_layout().expect("secure");
    let vector_len = layout.len();
    let rng = ring::rand::SystemRandom::new();
    let statements = ids
        .iter()
        .zip(keys)
        .map(|(id, key)| {
            let (_, public) = RoundKeys::new(id, ids, &rng).expect("keys");
            let terms = RoundTerms {
                query_id: "q-bench".into(),
                round_id: "0".repeat(32),
                query_hash: ern_queries::query_hash(sql),
                domain_digest: layout.domain().digest(),
                vector_len: vector_len as u64,
                participants: ids.to_vec(),
            };
            let identity = SiteIdentity::load(key).expect("identity");
            RoundStatement::sign(terms, id, public, 5, 361_250, &identity).expect("sign")
        })
        .collect();
    (statements, vector_len)
}

/// One node's masking of a vector of `len` values in a round of `participants`: the
/// X25519 agreements, HKDF seeds and ChaCha20 expansion, median of 5.
fn masking_time(participants: usize, len: usize) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let ids: Vec<String> = (0..participants).map(|i| format!("site-{i:03}")).collect();
    let rng = ring::rand::SystemRandom::new();
    let mut samples = Vec::new();
    let mut identities_made = Vec::new();
    for id in &ids {
        let identity_dir = dir.path().join(id);
        SiteIdentity::generate(&identity_dir).expect("identity");
        identities_made
            .push(SiteIdentity::load(&SiteIdentity::key_path(&identity_dir)).expect("load"));
    }
    for _ in 0..5 {
        let mut own = None;
        let mut statements = Vec::new();
        for (index, (id, identity)) in ids.iter().zip(&identities_made).enumerate() {
            let (keys, public) = RoundKeys::new(id, &ids, &rng).expect("keys");
            let terms = RoundTerms {
                query_id: "q".into(),
                round_id: "r".into(),
                query_hash: "h".into(),
                domain_digest: "d".into(),
                vector_len: len as u64,
                participants: ids.clone(),
            };
            let statement =
                RoundStatement::sign(terms, id, public, 5, 361_250, identity).expect("sign");
            if index == 0 {
                own = Some((keys, statement.clone()));
            }
            statements.push(statement);
        }
        let (keys, own) = own.expect("site 0");
        let vector = vec![7u64; len];
        let started = Instant::now();
        let masked = keys
            .masked_vector(&own, &statements, &vector)
            .expect("mask");
        samples.push(started.elapsed());
        assert_eq!(masked.len(), len);
    }
    percentile(&samples, 0.5)
}
