//! A network of in-process nodes for the benches that run questions end to end: a
//! coordinator on loopback, one node per site on a runtime of its own (so its CPU is
//! measured apart), questions stored and approved straight in the coordinator's
//! database, and one question run through dispatch (or a secure round) to the merge.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ern_coordinator::auth;
use ern_coordinator::core::Coordinator;
use ern_coordinator::model::{Role, StoredQuery};
use ern_node::approval;
use ern_node::engine::{NodeEngine, NodePolicy, SecurePolicy};
use ern_node::link::{self, LinkSettings};
use ern_node::secure::{Roster, SiteIdentity};
use ern_node::steward_key::StewardSigningKey;
use ern_proto::transport::BearerToken;

/// The study every bench question belongs to (approvals sign it; the work names it).
pub(crate) const BENCH_STUDY: &str = "bench";

/// The coordinator's limits for a bench: the defaults, except that every node dials from
/// the one loopback address, so the per-source connection cap (32) must fit them all.
pub(crate) fn bench_limits() -> ern_coordinator::limits::Limits {
    let mut limits = ern_coordinator::limits::Limits::default();
    limits.connections.per_source = limits.connections.max_connections;
    limits.connections.handshakes_per_source = limits.connections.max_connections;
    limits
}

/// A multi-threaded runtime whose threads are named `name` (for `cpu_by_thread`).
pub(crate) fn runtime(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Everything one question needs at the coordinator: stored, approved by every site.
pub(crate) fn store_question(
    core: &Coordinator,
    steward: &StewardSigningKey,
    ids: &[String],
    query_id: &str,
    mode: &str,
    sql: &str,
) {
    let now = ern_coordinator::model::now_seconds();
    core.db()
        .insert_query_capped(
            &StoredQuery {
                id: query_id.to_string(),
                study_id: BENCH_STUDY.into(),
                title: "bench".into(),
                purpose: String::new(),
                sql: sql.into(),
                query_hash: ern_queries::query_hash(sql),
                submitted_by: "bench".into(),
                submitted_at: now,
                deadline: now + 3600,
                complete: false,
                failure: String::new(),
                withdrawn_at: 0,
            },
            ids,
            "",
            mode,
            u64::MAX,
        )
        .expect("insert");
    for id in ids {
        let signed = approval::sign(steward, sql, id, BENCH_STUDY, now + 3600).expect("sign");
        core.db()
            .approve(query_id, "steward", &signed, now)
            .expect("approve");
    }
}

/// One identity key per site in `dir`, and the roster of all of them.
pub(crate) fn identities(dir: &Path, ids: &[String]) -> (Vec<PathBuf>, Roster) {
    let mut keys = Vec::new();
    let mut entries = Vec::new();
    for id in ids {
        let identity_dir = dir.join(format!("identity-{id}"));
        let public = SiteIdentity::generate(&identity_dir).expect("identity");
        keys.push(SiteIdentity::key_path(&identity_dir));
        entries.push((id.clone(), public));
    }
    (keys, Roster::new(entries).expect("roster"))
}

/// Enrols and starts one node per site on `nodes` (secure aggregation on, every site in
/// its roster, then `configure`), and waits until all are connected.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start_nodes(
    core: &Coordinator,
    address: &str,
    steward: &StewardSigningKey,
    ids: &[String],
    stores: &[PathBuf],
    keys: &[PathBuf],
    roster: &Roster,
    nodes: &tokio::runtime::Handle,
    configure: impl Fn(&str, &mut NodePolicy),
) {
    for ((id, store), key) in ids.iter().zip(stores).zip(keys) {
        let token = auth::enrol(
            core.db(),
            "bench",
            &auth::Enrolment::new(&format!("node-{id}"), Role::Node, id).with_new_site(),
            0,
        )
        .expect("enrol");
        let mut policy = NodePolicy::new(id, vec![steward.public_key()]);
        policy.secure = SecurePolicy {
            enabled: true,
            identity: Some(Arc::new(SiteIdentity::load(key).expect("identity"))),
            roster: roster.clone(),
            ..SecurePolicy::default()
        };
        configure(id, &mut policy);
        let store = store.clone();
        let settings = LinkSettings::new(address, BearerToken::new(&token).expect("token"), None);
        nodes.spawn(async move {
            let engine = NodeEngine::open(&store, policy).await.expect("engine");
            link::run(Arc::new(engine), settings).await
        });
    }
    while !ids.iter().all(|id| core.is_connected(id)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a stored, approved question to its merge (dispatch to every site, or the secure
/// round) and checks every site answered (or aggregated); returns the time it took.
pub(crate) async fn run_question(
    core: &Arc<Coordinator>,
    ids: &[String],
    query_id: &str,
    mode: &str,
) -> Duration {
    let started = Instant::now();
    if mode == "secure" {
        core.advance_secure(query_id).await.expect("round");
    } else {
        let mut dispatches = tokio::task::JoinSet::new();
        for id in ids {
            let (core, id) = (Arc::clone(core), id.clone());
            dispatches.spawn(async move { core.dispatch(&id).await });
        }
        while let Some(done) = dispatches.join_next().await {
            done.expect("join").expect("dispatch");
        }
    }
    core.wait_merged(query_id).await.expect("merged");
    let elapsed = started.elapsed();
    let states = core.db().targets(query_id).expect("targets");
    let expected = if mode == "secure" {
        "aggregated"
    } else {
        "answered"
    };
    assert!(
        states.iter().all(|t| t.state.as_str() == expected),
        "{mode}: {:?}",
        states
            .iter()
            .map(|t| (&t.site, t.state, &t.detail))
            .collect::<Vec<_>>()
    );
    elapsed
}
