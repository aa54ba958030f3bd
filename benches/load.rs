//! Load test: many researchers at once against a coordinator and its nodes, over mutual
//! TLS on loopback, through the public gRPC APIs only.
//!
//! `cargo bench --bench load` runs 50 concurrent researchers who submit 1000 questions
//! in all to 8 nodes; for each question the 8 sites' stewards review it (ShowQuery), sign
//! an approval on "their machine" and send it (Approve); the researcher polls GetStatus
//! until the question is complete and reads the merged table (GetResults). It reports the
//! latency of every kind of call (p50, p99, max), the end-to-end time from submission to
//! merged result, and every error. Bounded: `-- RESEARCHERS QUESTIONS SITES` changes the
//! size, and the run gives up after ten minutes.
//!
//! Target: zero errors, and p99 under 5× p50 for every kind of call.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ern_coordinator::auth;
use ern_coordinator::limits::Limits;
use ern_coordinator::model::{Role, Study};
use ern_node::approval;
use ern_node::engine::{NodeEngine, NodePolicy};
use ern_node::link::{self, LinkSettings};
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_proto::transport::{self, BearerToken, ClientTls};
use ern_proto::v1;
use ern_proto::v1::researcher_client::ResearcherClient;
use ern_proto::v1::steward_client::StewardClient;
use ern_test_support::loopback::{Loopback, Security};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

mod common;
use common::{ms, percentile, stores};

/// The study every researcher of the load test is on and submits under.
const LOAD_STUDY: &str = "load";

/// Questions the researchers take turns to ask.
const QUESTIONS: [&str; 3] = [
    "SELECT p.sex, COUNT(*) AS patients FROM patient p GROUP BY p.sex",
    "SELECT p.vital_status, COUNT(*) AS patients FROM patient p GROUP BY p.vital_status",
    "SELECT COUNT(DISTINCT d.pid) AS patients FROM diagnosis d",
];
const PATIENTS_PER_SITE: usize = 2000;
const GIVE_UP_AFTER: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_millis(50);

type Authed = InterceptedService<Channel, BearerToken>;

/// Latencies per kind of call, and errors.
#[derive(Default)]
struct Record {
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    errors: BTreeMap<String, usize>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Record>>);

impl Recorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Times `call`, recording its latency under `kind` or its error.
    async fn time<T>(
        &self,
        kind: &'static str,
        call: impl Future<Output = Result<T, tonic::Status>>,
    ) -> Option<T> {
        let started = Instant::now();
        match call.await {
            Ok(value) => {
                let elapsed = started.elapsed();
                self.lock().latencies.entry(kind).or_default().push(elapsed);
                Some(value)
            }
            Err(status) => {
                *self
                    .lock()
                    .errors
                    .entry(format!("{kind}: {:?} {}", status.code(), status.message()))
                    .or_default() += 1;
                None
            }
        }
    }

    fn note(&self, kind: &'static str, elapsed: Duration) {
        self.lock().latencies.entry(kind).or_default().push(elapsed);
    }

    fn error(&self, what: String) {
        *self.lock().errors.entry(what).or_default() += 1;
    }
}

struct Steward {
    site: String,
    key: StewardSigningKey,
    client: StewardClient<Authed>,
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .map(|a| a.parse().expect("a number"))
        .collect();
    let (researchers, questions, sites) = match args.as_slice() {
        [] => (50, 1000, 8),
        [r, q, s, ..] => (*r, *q, *s),
        _ => panic!("usage: cargo bench --bench load [-- RESEARCHERS QUESTIONS SITES]"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run(researchers, questions, sites));
}

async fn run(researchers: usize, questions: usize, sites: usize) {
    let work = tempfile::tempdir().expect("temp dir");
    eprintln!("preparing {sites} sites of {PATIENTS_PER_SITE} patients");
    let stores = stores(work.path(), sites, PATIENTS_PER_SITE);

    // A TLS coordinator on loopback, with the network's CA.
    // Every simulated researcher, steward and node dials from 127.0.0.1: the per-source
    // connection caps, made for one host among many, are raised to the whole crowd.
    let mut limits = Limits::default();
    let crowd = researchers + 2 * sites + 8;
    limits.connections.per_source = limits.connections.per_source.max(crowd);
    limits.connections.handshakes_per_source = limits.connections.handshakes_per_source.max(crowd);
    let coordinator = Loopback::start(Security::MutualTls, limits.clone()).await;
    let (core, url, ca, trust) = (
        Arc::clone(&coordinator.core),
        coordinator.url.clone(),
        &coordinator.ca,
        coordinator.trust(),
    );
    let connect = |token: String| {
        let trust = trust.clone();
        let url = url.clone();
        async move {
            let channel = transport::endpoint(&url, Some(&trust))
                .expect("endpoint")
                .connect()
                .await
                .expect("TLS connect");
            (channel, BearerToken::new(&token).expect("token"))
        }
    };

    // Hospitals: a steward key each, a node with its certificate dialling out.
    let mut stewards = Vec::with_capacity(sites);
    for (index, store) in stores.iter().enumerate() {
        let site = format!("site-{index}");
        let prefix = work.path().join(format!("steward-{index}"));
        generate_steward_key(&prefix).expect("steward key");
        let key = StewardSigningKey::load(&prefix.with_extension("key")).expect("key");
        let engine = NodeEngine::open(store, NodePolicy::new(&site, vec![key.public_key()]))
            .await
            .expect("engine");
        let node_token = auth::enrol(
            core.db(),
            "bench",
            &auth::Enrolment::new(&format!("node-{site}"), Role::Node, &site).with_new_site(),
            0,
        )
        .expect("enrol");
        let certificate = ca.issue_node(&site).expect("node certificate");
        let node_tls = ClientTls {
            identity: Some((
                certificate.cert_pem.into_bytes(),
                certificate.key_pem.into_bytes(),
            )),
            ..trust.clone()
        };
        tokio::spawn(link::run(
            Arc::new(engine),
            LinkSettings::new(
                &url,
                BearerToken::new(&node_token).expect("token"),
                Some(node_tls),
            ),
        ));
        let token = auth::enrol(
            core.db(),
            "bench",
            &auth::Enrolment::new(&format!("steward-{site}"), Role::Steward, &site),
            0,
        )
        .expect("enrol");
        let (channel, bearer) = connect(token).await;
        stewards.push(Steward {
            site,
            key,
            client: StewardClient::with_interceptor(channel, bearer),
        });
    }
    while !stewards.iter().all(|s| core.is_connected(&s.site)) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stewards = Arc::new(stewards);

    eprintln!("{researchers} researchers, {questions} questions, {sites} nodes, mutual TLS");
    let bar = indicatif::ProgressBar::new(questions as u64);
    let recorder = Recorder::default();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    core.db()
        .add_study(&Study {
            id: LOAD_STUDY.into(),
            title: "load".into(),
            purpose: "load test".into(),
            ..Study::default()
        })
        .expect("study");
    for researcher in 0..researchers {
        let share = questions / researchers + usize::from(researcher < questions % researchers);
        let name = format!("researcher-{researcher}");
        let token = auth::enrol(
            core.db(),
            "bench",
            &auth::Enrolment::new(&name, Role::Researcher, ""),
            0,
        )
        .expect("enrol");
        core.db()
            .add_study_researcher(LOAD_STUDY, &name)
            .expect("on the study");
        let (channel, bearer) = connect(token).await;
        let client = ResearcherClient::with_interceptor(channel, bearer);
        let (stewards, recorder, bar) = (Arc::clone(&stewards), recorder.clone(), bar.clone());
        tasks.spawn(async move {
            let mut client = client;
            for round in 0..share {
                let sql = QUESTIONS[(researcher + round) % QUESTIONS.len()];
                ask(&mut client, &stewards, sql, &recorder).await;
                bar.inc(1);
            }
        });
    }
    let finished = tokio::time::timeout(GIVE_UP_AFTER, async {
        while let Some(done) = tasks.join_next().await {
            done.expect("researcher task");
        }
    })
    .await;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if finished.is_err() {
        recorder.error(format!("gave up after {} s", GIVE_UP_AFTER.as_secs()));
    }
    report(&recorder, questions, elapsed);
}

/// One question through its whole life, as its researcher and the sites' stewards do it.
async fn ask(
    client: &mut ResearcherClient<Authed>,
    stewards: &[Steward],
    sql: &str,
    recorder: &Recorder,
) {
    let submitted_at = Instant::now();
    let Some(submitted) = recorder
        .time(
            "Submit",
            client.submit(v1::SubmitRequest {
                sql: sql.into(),
                title: "load".into(),
                study_id: LOAD_STUDY.into(),
                ..Default::default()
            }),
        )
        .await
    else {
        return;
    };
    let query_id = submitted.into_inner().query_id;

    // Every site's steward reviews and approves, each on their own.
    let approvals = stewards.iter().map(|steward| {
        let query_id = query_id.clone();
        let mut client = steward.client.clone();
        async move {
            let review = recorder
                .time(
                    "ShowQuery",
                    client.show_query(v1::ShowQueryRequest {
                        query_id: query_id.clone(),
                    }),
                )
                .await?
                .into_inner();
            let expires_at = ern_coordinator::model::now_seconds() + 3600;
            let signed = approval::sign(
                &steward.key,
                &review.sql,
                &review.site,
                &review.study_id,
                expires_at,
            )
            .ok()?;
            recorder
                .time(
                    "Approve",
                    client.approve(v1::ApproveRequest {
                        query_id,
                        expires_at,
                        key_id: signed.key_id,
                        signature: signed.signature,
                    }),
                )
                .await
        }
    });
    futures::future::join_all(approvals).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let Some(status) = recorder
            .time(
                "GetStatus",
                client.get_status(v1::GetStatusRequest {
                    query_id: query_id.clone(),
                    wait_seconds: 0,
                }),
            )
            .await
        else {
            return;
        };
        if status.into_inner().state == v1::QueryState::Complete as i32 {
            break;
        }
        if Instant::now() > deadline {
            recorder.error(format!("{query_id} not complete after 60 s"));
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    recorder.note("submit → complete", submitted_at.elapsed());
    if let Some(results) = recorder
        .time(
            "GetResults",
            client.get_results(v1::GetResultsRequest {
                query_id: query_id.clone(),
            }),
        )
        .await
    {
        let results = results.into_inner();
        match ern_proto::arrow_ipc::decode(&results.arrow_ipc) {
            Ok((_, batches)) if batches.iter().map(|b| b.num_rows()).sum::<usize>() > 0 => {}
            Ok(_) => recorder.error(format!("{query_id}: an empty merged table")),
            Err(error) => recorder.error(format!("{query_id}: undecodable result: {error}")),
        }
    }
}

fn report(recorder: &Recorder, questions: usize, elapsed: Duration) {
    let record = recorder.lock();
    println!(
        "{questions} questions in {:.1} s ({:.1} questions/s)\n",
        elapsed.as_secs_f64(),
        questions as f64 / elapsed.as_secs_f64()
    );
    println!("| call | count | p50 | p99 | max | p99 / p50 |");
    println!("|---|---|---|---|---|---|");
    for (kind, samples) in &record.latencies {
        let (p50, p99) = (percentile(samples, 0.5), percentile(samples, 0.99));
        let max = samples.iter().max().copied().unwrap_or_default();
        println!(
            "| {kind} | {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.1}× |",
            samples.len(),
            ms(p50),
            ms(p99),
            ms(max),
            p99.as_secs_f64() / p50.as_secs_f64().max(1e-9)
        );
    }
    let errors: usize = record.errors.values().sum();
    println!("\nerrors: {errors}");
    for (what, count) in &record.errors {
        println!("  {count} × {what}");
    }
}
