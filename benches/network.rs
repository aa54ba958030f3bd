//! Network benchmark: dispatch-to-merged-result latency of a count question through the
//! real coordinator and real nodes talking gRPC over loopback (nodes dial out through the
//! production link code), against plain DataFusion over every site's Parquet in one
//! process, measured in the same run.
//!
//! `cargo bench --bench network` runs the configurations: 3, 24 and 200 nodes of
//! 10k patients, and 8 nodes of 250k. `cargo bench --bench network -- SITES PATIENTS
//! [REPEATS]` runs one.
//!
//! Each site's store is the same ingested registry, hard-linked (a node's cost does not
//! depend on whose patients it holds); each node has its own audit log and engine.
//!
//! The coordinator, the nodes and the plain baseline run on three tokio runtimes with
//! named threads, so the CPU each side spends on a question is measured apart from the
//! wall-clock latency: on this bench every node shares the coordinator's cores, while in
//! a network each hospital computes on its own machine and only the coordinator's work
//! is shared.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::SessionContext;
use ern_coordinator::auth;
use ern_coordinator::limits::Limits;
use ern_coordinator::model::{Role, StoredQuery};
use ern_node::approval;
use ern_node::engine::{NodeEngine, NodePolicy};
use ern_node::link::{self, LinkSettings};
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_proto::transport::BearerToken;
use ern_test_support::loopback::{Loopback, Security};

mod common;
use common::{cpu_by_thread, ms, percentile, stores};

/// Thread-name prefixes of the coordinator's, the nodes' and plain DataFusion's runtimes.
const COORDINATOR_THREADS: &str = "ern-coord";
const NODE_THREADS: &str = "ern-node";
const PLAIN_THREADS: &str = "ern-plain";

/// The study every bench question belongs to (approvals sign it; the work names it).
const BENCH_STUDY: &str = "bench";

fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// One configuration's measurements.
struct Measured {
    federated: Vec<Duration>,
    plain: Vec<Duration>,
    /// Coordinator CPU per question and node.
    coordinator_cpu: Duration,
    /// Node CPU per question and node.
    node_cpu: Duration,
    /// Plain DataFusion's CPU per question and site.
    plain_cpu: Duration,
}

const SQL: &str = "SELECT p.sex, COUNT(*) AS patients FROM patient p GROUP BY p.sex";

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let coordinator = runtime(COORDINATOR_THREADS);
    let nodes = runtime(NODE_THREADS);
    let plain = runtime(PLAIN_THREADS);
    let configs: Vec<(usize, usize, usize)> = match args.as_slice() {
        [] => vec![
            (3, 10_000, 30),
            (24, 10_000, 30),
            (200, 10_000, 15),
            (8, 250_000, 15),
        ],
        [sites, patients] => vec![(parse(sites), parse(patients), 20)],
        [sites, patients, repeats, ..] => vec![(parse(sites), parse(patients), parse(repeats))],
        _ => unreachable!(),
    };
    println!(
        "| sites × patients | federated p50 | federated p95 | plain DataFusion p50 | ratio | coordinator CPU / node | node CPU / node | plain CPU / site |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut per_node = Vec::new();
    for (sites, patients, repeats) in configs {
        let task = measure(
            sites,
            patients,
            repeats,
            nodes.handle().clone(),
            plain.handle().clone(),
        );
        let measured = coordinator
            .block_on(coordinator.spawn(task))
            .expect("measure");
        let federated = &measured.federated;
        let (p50, p95) = (percentile(federated, 0.5), percentile(federated, 0.95));
        let base = percentile(&measured.plain, 0.5);
        println!(
            "| {sites} × {patients} | {:.1} ms | {:.1} ms | {:.1} ms | {:.2}× | {:.3} ms | {:.3} ms | {:.3} ms |",
            ms(p50),
            ms(p95),
            ms(base),
            p50.as_secs_f64() / base.as_secs_f64(),
            ms(measured.coordinator_cpu),
            ms(measured.node_cpu),
            ms(measured.plain_cpu),
        );
        if patients == 10_000 {
            per_node.push((sites, p50, measured.coordinator_cpu));
        }
    }
    if let (Some(first), Some(last)) = (per_node.first(), per_node.last())
        && last.0 > first.0
    {
        let added = (last.1.as_secs_f64() - first.1.as_secs_f64()) / (last.0 - first.0) as f64;
        println!(
            "\nadded per extra node ({} → {} nodes of 10k): {:.3} ms of latency on this machine; coordinator CPU per node {:.3} ms at {} nodes",
            first.0,
            last.0,
            added * 1e3,
            ms(last.2),
            last.0
        );
    }
}

fn parse(text: &str) -> usize {
    text.parse().expect("a number")
}

async fn measure(
    sites: usize,
    patients: usize,
    repeats: usize,
    nodes: tokio::runtime::Handle,
    plain_runtime: tokio::runtime::Handle,
) -> Measured {
    let work = tempfile::tempdir().expect("temp dir");
    eprintln!("preparing {sites} sites of {patients} patients");
    let stores = stores(work.path(), sites, patients);

    let coordinator = Loopback::start(Security::Plaintext, Limits::default()).await;
    let (core, address) = (Arc::clone(&coordinator.core), coordinator.url.clone());
    generate_steward_key(&work.path().join("steward")).expect("steward key");
    let steward = StewardSigningKey::load(&work.path().join("steward.key")).expect("key");
    let ids: Vec<String> = (0..sites).map(|i| format!("site-{i}")).collect();
    for (id, store) in ids.iter().zip(&stores) {
        let token = auth::enrol(
            core.db(),
            "bench",
            &auth::Enrolment::new(&format!("node-{id}"), Role::Node, id).with_new_site(),
            0,
        )
        .expect("enrol");
        let (store, policy) = (
            store.clone(),
            NodePolicy::new(id, vec![steward.public_key()]),
        );
        let settings = LinkSettings::new(&address, BearerToken::new(&token).expect("token"), None);
        nodes.spawn(async move {
            let engine = NodeEngine::open(&store, policy).await.expect("engine");
            link::run(Arc::new(engine), settings).await
        });
    }
    while !ids.iter().all(|id| core.is_connected(id)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let plain = plain_context(&stores).await;
    let mut federated = Vec::with_capacity(repeats);
    let mut baseline = Vec::with_capacity(repeats);
    let (mut coordinator_cpu, mut node_cpu, mut plain_cpu) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..repeats + 2 {
        let query_id = format!("q-bench{round}");
        let now = ern_coordinator::model::now_seconds();
        core.db()
            .insert_query(
                &StoredQuery {
                    id: query_id.clone(),
                    study_id: BENCH_STUDY.into(),
                    title: "bench".into(),
                    purpose: String::new(),
                    sql: SQL.into(),
                    query_hash: ern_queries::query_hash(SQL),
                    submitted_by: "bench".into(),
                    submitted_at: now,
                    deadline: now + 3600,
                    complete: false,
                    failure: String::new(),
                    withdrawn_at: 0,
                },
                &ids,
            )
            .expect("insert");
        for id in &ids {
            let signed = approval::sign(&steward, SQL, id, BENCH_STUDY, now + 3600).expect("sign");
            core.db()
                .approve(&query_id, "steward", &signed, now)
                .expect("approve");
        }
        let cpu_before = cpu_by_thread(&[COORDINATOR_THREADS, NODE_THREADS]);
        let started = Instant::now();
        let mut dispatches = tokio::task::JoinSet::new();
        for id in &ids {
            let core = Arc::clone(&core);
            let id = id.clone();
            dispatches.spawn(async move { core.dispatch(&id).await });
        }
        while let Some(done) = dispatches.join_next().await {
            done.expect("join").expect("dispatch");
        }
        core.wait_merged(&query_id).await.expect("merged");
        let elapsed = started.elapsed();
        let cpu_after = cpu_by_thread(&[COORDINATOR_THREADS, NODE_THREADS]);

        let ctx = plain.clone();
        let plain_before = cpu_by_thread(&[PLAIN_THREADS]);
        let (plain_elapsed, batches) = plain_runtime
            .spawn(async move {
                let started = Instant::now();
                let batches = ctx
                    .sql(SQL)
                    .await
                    .expect("plan")
                    .collect()
                    .await
                    .expect("run");
                (started.elapsed(), batches)
            })
            .await
            .expect("plain");
        let plain_after = cpu_by_thread(&[PLAIN_THREADS]);
        assert!(!batches.is_empty());
        // The first two rounds warm caches on both sides.
        if round >= 2 {
            federated.push(elapsed);
            baseline.push(plain_elapsed);
            coordinator_cpu += cpu_after[0].saturating_sub(cpu_before[0]);
            node_cpu += cpu_after[1].saturating_sub(cpu_before[1]);
            plain_cpu += plain_after[0].saturating_sub(plain_before[0]);
        }
    }
    let answers = (repeats * sites) as u32;
    let mut node_ms: Vec<u64> = Vec::new();
    for store in &stores {
        let entries = ern_node::audit::read_entries(&store.join(ern_node::audit::AUDIT_FILE))
            .expect("audit log");
        node_ms.extend(entries.iter().map(|e| e.duration_ms));
    }
    node_ms.sort_unstable();
    eprintln!(
        "node execute time (audit log): p50 {} ms, max {} ms over {} runs",
        node_ms[node_ms.len() / 2],
        node_ms[node_ms.len() - 1],
        node_ms.len()
    );
    Measured {
        federated,
        plain: baseline,
        coordinator_cpu: coordinator_cpu / answers,
        node_cpu: node_cpu / answers,
        plain_cpu: plain_cpu / answers,
    }
}

/// Plain DataFusion with every site's patient table as one listing table.
async fn plain_context(stores: &[PathBuf]) -> SessionContext {
    let ctx = SessionContext::new();
    let urls = stores
        .iter()
        .map(|s| {
            ListingTableUrl::parse(s.join("patient.parquet").to_str().expect("utf-8")).expect("url")
        })
        .collect::<Vec<_>>();
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .infer_schema(&ctx.state())
        .await
        .expect("schema");
    let table = ListingTable::try_new(config).expect("table");
    ctx.register_table("patient", Arc::new(table))
        .expect("register");
    ctx
}
