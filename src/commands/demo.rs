//! `ern demo`: a whole federated round in one process, over real gRPC on loopback.
//!
//! A coordinator serves on 127.0.0.1 over TLS with a freshly made network CA (as
//! `ern keygen tls` makes it); every hospital gets its registry (synthetic, or an
//! export from `--exports`), a pseudonymisation key, a store, a steward key pair, a site
//! identity key (as `ern keygen site` makes it) and a node that dials out to the
//! coordinator through the production link code, presenting its site's client
//! certificate (mutual TLS), with secure aggregation on and every site's identity key in
//! its roster. The operator creates a study with the demo's researcher on it; the
//! researcher submits each question under it through the Researcher API, each site's
//! steward signs an approval of the question's study locally and sends it through the
//! Steward API, the
//! nodes run the work and the coordinator merges: an eligible question approved by at
//! least three sites under secure aggregation (k on the network totals), any other per
//! site. Each question's mode is printed with its results. For a per-site question of the
//! showcase, the number of suppressed groups is read from the sites' own audit logs, as
//! their stewards would (the coordinator never learns it); a scripted question (`--sql`)
//! is the researcher's, and shows no such count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use ern_coordinator::config::ServerTls;
use ern_coordinator::db::StudyAdmission;
use ern_coordinator::model::{Role, Study, now_seconds as now};
use ern_coordinator::{Coordinator, Db, Timing, Transport, auth, server};
use ern_node::approval;
use ern_node::audit;
use ern_node::engine::{NodeEngine, NodeFiles, NodePolicy, SecurePolicy};
use ern_node::link::{self, LinkSettings};
use ern_node::privacy::policy::{Epsilon, PrivacyPolicy};
use ern_node::privacy::secret::NoiseSecret;
use ern_node::pseudonym;
use ern_node::secure::{Roster, SiteIdentity};
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};
use ern_proto::arrow_ipc;
use ern_proto::transport::{BearerToken, ClientTls};
use ern_proto::v1;
use ern_synth::{self as synth, SynthConfig};

use super::ingest::ingest_export;
use super::keygen::{self, CA_CERT, TlsArgs};
use crate::client::{self, Connection, rpc_error};
use crate::commands::researcher::{coverage_table, mode_words, noise_table};
use crate::output::{self, Format};
use crate::progress_bar::Bar;
use crate::table::new_table;
use ern_queries::examples::EXAMPLES;
use ern_queries::shown::shown;

/// Output formats of the demo's result tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum DemoFormat {
    /// Tables for the terminal.
    Table,
    /// CSV with a header row.
    Csv,
    /// A JSON array of row objects.
    Json,
}

impl From<DemoFormat> for Format {
    fn from(format: DemoFormat) -> Format {
        match format {
            DemoFormat::Table => Format::Table,
            DemoFormat::Csv => Format::Csv,
            DemoFormat::Json => Format::Json,
        }
    }
}

/// Arguments of `ern demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Number of synthetic hospitals (ignored with --exports).
    #[arg(long, default_value_t = 3)]
    sites: usize,
    /// Patients over all synthetic hospitals.
    #[arg(long, default_value_t = 30_000)]
    patients: usize,
    /// Seed of the synthetic registries.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use these exports instead: one sub-directory per site (its name is the site id),
    /// each an export in the interchange format.
    #[arg(long)]
    exports: Option<PathBuf>,
    /// Run the question in this file instead of the showcase. Everything but the merged
    /// table then goes to stderr.
    #[arg(long)]
    sql: Option<PathBuf>,
    /// Minimum distinct patients per released group, at every node (on the network
    /// total under secure aggregation).
    #[arg(long, default_value_t = 5)]
    k: u32,
    /// How result tables print.
    #[arg(long, value_enum, default_value_t = DemoFormat::Table)]
    format: DemoFormat,
}

/// The showcase questions, from the examples (`ern examples`), in this order.
const SHOWCASE: [&str; 4] = [
    "cardiomyopathy-by-decade",
    "delay-top-ten-disorders",
    "hcm-causative-genes",
    "cardiac-disorders-by-sex",
];

/// The study the demo's questions belong to.
const DEMO_STUDY: &str = "demo";

/// How long the demo waits for the nodes to connect and for a question to finish.
const WAIT: Duration = Duration::from_secs(120);

/// One demo hospital: its id, store and steward key, and its steward's token.
struct Site {
    id: String,
    /// Its store and, beside it, its node's audit log.
    files: NodeFiles,
    steward_key: StewardSigningKey,
    steward: Connection,
    /// Its node's policy and link, to restart the node with another policy.
    policy: NodePolicy,
    link: LinkSettings,
}

pub(crate) fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = crate::client::server_runtime()?;
    runtime.block_on(demo(args))
}

/// Narration goes to stdout for the showcase, to stderr when stdout holds a result.
fn narrator(scripted: bool) -> Box<dyn Write> {
    if scripted {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let scripted = args.sql.is_some();
    let mut say = narrator(scripted);
    let questions: Vec<(String, String)> = match &args.sql {
        Some(path) => {
            let sql = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            vec![(format!("Question from {}", path.display()), sql)]
        }
        None => SHOWCASE
            .iter()
            .filter_map(|name| EXAMPLES.iter().find(|example| example.name == *name))
            .map(|example| (example.title.to_string(), example.sql.to_string()))
            .collect(),
    };
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let exports = site_exports(&args, work.path(), &mut say)?;

    // The coordinator, on a loopback port of its own.
    let db = Db::open(&work.path().join("coordinator.db"))
        .context("creating the coordinator database")?;
    let core = Arc::new(Coordinator::new(db, Timing::default())?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")?;
    let address = format!("https://{}", listener.local_addr()?);
    let tls_dir = work.path().join("tls");
    keygen::generate_tls(&TlsArgs {
        out: tls_dir.clone(),
        network: "demo".into(),
        server_names: Vec::new(),
        sites: exports.iter().map(|(id, _)| id.clone()).collect(),
        renew: Vec::new(),
    })?;
    let read = |name: &str| {
        let path = tls_dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let transport = Transport::Tls(ServerTls {
        cert_pem: read(keygen::SERVER_CERT)?,
        key_pem: read(keygen::SERVER_KEY)?,
        client_ca_pem: read(CA_CERT)?,
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        Arc::clone(&core),
        listener,
        transport,
        async {
            let _ = stopped.await;
        },
    ));
    writeln!(
        say,
        "Coordinator serving gRPC on {address} (TLS; nodes authenticate with certificates of a network CA made for this demo)"
    )?;
    // The demo builds its network from nothing: every site is new to it.
    let enrol = |name: &str, role: Role, site: &str| {
        let enrolment = auth::Enrolment {
            name: name.to_string(),
            role,
            site: site.to_string(),
            new_site: true,
            expires_at: 0,
        };
        auth::enrol(core.db(), "demo", &enrolment, now())
            .map_err(|status| anyhow::anyhow!("enrolling {name}: {}", status.message()))
    };
    let researcher = Connection {
        coordinator: address.clone(),
        token: Some(enrol("researcher", Role::Researcher, "")?),
        token_file: None,
        ca: Some(tls_dir.join(CA_CERT)),
    };
    // The study every question of the demo belongs to, as an operator creates it
    // (`ern operator study add`): stewards approve its questions under it.
    let study = Study {
        id: DEMO_STUDY.to_string(),
        title: "ern demo".into(),
        purpose: "Showcase questions over synthetic cardiac registries".into(),
        researchers: vec!["researcher".into()],
        created_at: now(),
        created_by: "demo".into(),
    };
    let added = core
        .db()
        .add_study(&study)
        .context("creating the demo's study")?;
    anyhow::ensure!(
        added == StudyAdmission::Added,
        "creating the demo's study: {added:?}"
    );

    // Every site's identity key, and the roster of all of them that every node pins.
    let mut identities = Vec::with_capacity(exports.len());
    for (id, _) in &exports {
        let dir = work.path().join(id).join("identity");
        let public = SiteIdentity::generate(&dir)
            .with_context(|| format!("creating the identity key of {id}"))?;
        identities.push((id.clone(), dir, public));
    }
    let roster = Roster::new(
        identities
            .iter()
            .map(|(id, _, public)| (id.clone(), public.clone())),
    )?;

    // The hospitals: store, steward, node dialling out.
    let mut stores = new_table(
        &["site", "patients read", "left out (consent)", "stored"],
        &["patients read", "left out (consent)", "stored"],
    );
    let mut sites = Vec::with_capacity(exports.len());
    let mut nodes = Vec::with_capacity(exports.len());
    for ((id, export), (_, identity_dir, _)) in exports.iter().zip(&identities) {
        let dir = work.path().join(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = dir.join("pseudonym.key");
        pseudonym::generate_key_file(&key).context("creating a site key")?;
        let store = dir.join("store");
        let ingested = ingest_export(export, &key, &store)?;
        stores.add_row(vec![
            id.clone(),
            ingested.patients_read.to_string(),
            ingested.patients_left_out.to_string(),
            (ingested.patients_read - ingested.patients_left_out).to_string(),
        ]);
        generate_steward_key(&dir.join("steward")).context("creating a steward key")?;
        let steward_key =
            StewardSigningKey::load(&dir.join("steward.key")).context("loading the steward key")?;
        let mut policy = NodePolicy::new(id, vec![steward_key.public_key()]);
        policy.k = args.k;
        let identity = SiteIdentity::load(&SiteIdentity::key_path(identity_dir))
            .context("loading the site identity key")?;
        policy.secure = SecurePolicy {
            enabled: true,
            identity: Some(Arc::new(identity)),
            roster: roster.clone(),
            ..SecurePolicy::default()
        };
        let node_token = enrol(&format!("node-{id}"), Role::Node, id)?;
        let stem = keygen::node_stem(id)?;
        let node_tls = ClientTls {
            ca_pem: read(CA_CERT)?,
            identity: Some((read(&format!("{stem}.pem"))?, read(&format!("{stem}.key"))?)),
            domain: None,
        };
        let link = LinkSettings::new(&address, BearerToken::new(&node_token)?, Some(node_tls));
        let files = NodeFiles {
            audit_log: dir.join("audit.log"),
            store,
        };
        nodes.push(start_node(id, &files, policy.clone(), link.clone()).await?);
        sites.push(Site {
            id: id.clone(),
            files,
            policy,
            link,
            steward_key,
            steward: Connection {
                coordinator: address.clone(),
                token: Some(enrol(&format!("steward-{id}"), Role::Steward, id)?),
                token_file: None,
                ca: Some(tls_dir.join(CA_CERT)),
            },
        });
    }
    writeln!(say, "{stores}")?;
    wait_for_nodes(&core, &sites).await?;
    writeln!(
        say,
        "{} nodes connected (each dialled out; none listens), secure aggregation on at each, with the {} sites' identity keys in its roster",
        sites.len(),
        sites.len()
    )?;

    let mut outcome = Ok(());
    let mut modes = Vec::new();
    for (number, (title, sql)) in questions.iter().enumerate() {
        writeln!(say, "\nQuestion {}: {title}\n  {}", number + 1, sql.trim())?;
        match ask(
            &researcher,
            &sites,
            title,
            sql,
            args.format.into(),
            scripted,
            &mut say,
        )
        .await
        {
            Ok(mode) => modes.push(mode),
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
    }
    if outcome.is_ok() && !scripted {
        outcome = privacy_act(&core, &researcher, &mut sites, &mut nodes, args.k, &mut say).await;
    }
    if outcome.is_ok() {
        writeln!(say)?;
        if modes.iter().any(|mode| mode == "secure") {
            writeln!(
                say,
                "Under secure aggregation, every cell above has at least k = {} patients in the network total, and no one but a hospital saw that hospital's own numbers; smaller cells were never released.",
                args.k
            )?;
        }
        if modes.iter().any(|mode| mode != "secure") {
            writeln!(
                say,
                "Under per-site suppression, every group above has at least k = {} patients at each hospital that contributed to it; smaller groups never left their hospital.",
                args.k
            )?;
        }
        writeln!(say, "Done in {:.1} s.", started.elapsed().as_secs_f64())?;
    }
    for node in nodes {
        node.abort();
    }
    let _ = stop.send(());
    let _ = server.await;
    outcome
}

/// Starts a site's node on its store under `policy`, dialling out with `link`.
async fn start_node(
    id: &str,
    files: &NodeFiles,
    policy: NodePolicy,
    link: LinkSettings,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let engine = NodeEngine::open_files(files, policy)
        .await
        .with_context(|| format!("opening the node of {id}"))?;
    Ok(tokio::spawn(link::run(Arc::new(engine), link)))
}

/// Epsilon per question and budget per study of the demo's privacy act.
const DEMO_EPSILON: f64 = 1.0;
const DEMO_BUDGET: f64 = 10.0;

/// The question the privacy act asks: patients per sex, a public domain.
const PRIVACY_QUESTION: &str =
    "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.sex ORDER BY p.sex";

/// The last act of the showcase: every node restarts with differential privacy on
/// (`[privacy]` in node.toml: a noise secret, epsilon per question, a budget per study)
/// and a question runs again under noise, with the noise described beside the table and
/// each study's spend in the sites' audit logs.
async fn privacy_act(
    core: &Coordinator,
    researcher: &Connection,
    sites: &mut [Site],
    nodes: &mut Vec<tokio::task::JoinHandle<()>>,
    k: u32,
    say: &mut dyn Write,
) -> anyhow::Result<()> {
    writeln!(
        say,
        "\nEvery node restarts with differential privacy on ([privacy] in node.toml): exact discrete Laplace noise from a noise secret of its own (`ern keygen noise`), epsilon {DEMO_EPSILON} per question charged to the study in the node's audit log, {DEMO_BUDGET} per study."
    )?;
    for node in nodes.drain(..) {
        node.abort();
        // Its audit log stays locked until the aborted task is gone.
        let _ = node.await;
    }
    for site in sites.iter_mut() {
        let secret_path = site.files.state_dir().join("noise.key");
        let secret = NoiseSecret::generate(&secret_path)
            .with_context(|| format!("creating the noise secret of {}", site.id))?;
        site.policy.privacy = PrivacyPolicy {
            enabled: true,
            epsilon: Epsilon::from_decimal(DEMO_EPSILON).unwrap_or_default(),
            budget_per_study: Epsilon::from_decimal(DEMO_BUDGET).unwrap_or_default(),
            secret: Some(Arc::new(secret)),
            ..PrivacyPolicy::default()
        };
        nodes.push(
            start_node(
                &site.id,
                &site.files,
                site.policy.clone(),
                site.link.clone(),
            )
            .await?,
        );
    }
    // The restarted nodes have said Hello once their policy shows noise.
    let deadline = Instant::now() + WAIT;
    while !sites.iter().all(|site| {
        core.is_connected(&site.id)
            && core
                .site_privacy(&site.id)
                .is_some_and(|privacy| privacy.policy.enabled)
    }) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes did not reconnect in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writeln!(
        say,
        "\nQuestion 5: patients per sex, under differential privacy\n  {PRIVACY_QUESTION}"
    )?;
    let mode = ask(
        researcher,
        sites,
        "Patients per sex, noised",
        PRIVACY_QUESTION,
        Format::Table,
        false,
        say,
    )
    .await?;
    let how = if mode == "secure" {
        "Each site added its share of Skellam noise to every cell before masking, so even the coordinator saw only noisy totals"
    } else {
        "Each site added discrete Laplace noise to every group it released"
    };
    writeln!(
        say,
        "{how}; k = {k} applied to the noisy count. Asked again, the question returns the same numbers and costs the study nothing: the noise is seeded by the node's secret, the question and the data."
    )?;
    let mut spent = new_table(
        &["site", "study", "epsilon spent (the site's audit log)"],
        &[],
    );
    for site in sites.iter() {
        let entries = audit::read_entries(&site.files.audit_log)?;
        let total: u64 = entries
            .iter()
            .filter_map(|entry| entry.privacy.as_ref().filter(|_| entry.study == DEMO_STUDY))
            .map(|charge| charge.epsilon_micro)
            .sum();
        spent.add_row(vec![
            site.id.clone(),
            DEMO_STUDY.to_string(),
            Epsilon::from_micro(total).to_string(),
        ]);
    }
    writeln!(say, "{spent}")?;
    Ok(())
}

/// The exports to serve: `--exports DIR`'s sub-directories, or fresh synthetic ones.
fn site_exports(
    args: &DemoArgs,
    work: &Path,
    say: &mut dyn Write,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    if let Some(dir) = &args.exports {
        let mut exports = Vec::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                let id = entry.file_name().to_string_lossy().into_owned();
                anyhow::ensure!(
                    approval::is_valid_id(&id),
                    "{}: a site directory's name is its site id: 1-128 ASCII letters, digits, -, _ and . (not first)",
                    entry.path().display()
                );
                exports.push((id, entry.path()));
            }
        }
        exports.sort();
        anyhow::ensure!(
            !exports.is_empty(),
            "{} holds no site directories",
            dir.display()
        );
        writeln!(
            say,
            "Serving {} site exports from {}",
            exports.len(),
            dir.display()
        )?;
        return Ok(exports);
    }
    writeln!(
        say,
        "Building {} synthetic hospital registries ({} patients of rare cardiac diseases)",
        args.sites, args.patients
    )?;
    let config = SynthConfig {
        sites: args.sites,
        patients: args.patients,
        seed: args.seed,
    };
    let exports = synth::synthesize(config, &work.join("exports"), &Bar::new())
        .context("generating synthetic exports")?;
    Ok(exports
        .into_iter()
        .enumerate()
        .map(|(index, export)| (format!("hospital-{}", index + 1), export.dir))
        .collect())
}

async fn wait_for_nodes(core: &Coordinator, sites: &[Site]) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    while !sites.iter().all(|s| core.is_connected(&s.id)) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the nodes did not connect in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// One question through the whole lifecycle, printed; returns its mode ("secure" or
/// "per-site").
async fn ask(
    researcher: &Connection,
    sites: &[Site],
    title: &str,
    sql: &str,
    format: Format,
    scripted: bool,
    say: &mut dyn Write,
) -> anyhow::Result<String> {
    let mut client = client::researcher(researcher).await?;
    let submitted = client
        .submit(v1::SubmitRequest {
            sql: sql.to_string(),
            title: title.to_string(),
            purpose: "ern demo".into(),
            sites: Vec::new(),
            deadline_seconds: 3600,
            study_id: DEMO_STUDY.into(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let (query_id, query_hash) = (submitted.query_id, submitted.query_hash);
    let expires = now() + 3600;
    // The public domain's size, from a steward's review (it follows from the SQL alone).
    let mut cells = None;
    for site in sites {
        let mut steward = client::steward(&site.steward).await?;
        let review = steward
            .show_query(v1::ShowQueryRequest {
                query_id: query_id.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        if review.mode == "secure" {
            cells = Some(review.cells);
        }
        let signed = approval::sign(
            &site.steward_key,
            &review.sql,
            &review.site,
            &review.study_id,
            expires,
        )?;
        steward
            .approve(v1::ApproveRequest {
                query_id: query_id.clone(),
                expires_at: expires,
                key_id: signed.key_id,
                signature: signed.signature,
            })
            .await
            .map_err(rpc_error)?;
    }
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let status = client
            .get_status(v1::GetStatusRequest {
                query_id: query_id.clone(),
                // The coordinator holds the call until the question finishes.
                wait_seconds: u32::try_from(
                    deadline.saturating_duration_since(Instant::now()).as_secs(),
                )
                .unwrap_or(u32::MAX)
                .max(1),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        if status.state == v1::QueryState::Complete as i32 {
            break status;
        }
        if status.state == v1::QueryState::Failed as i32 {
            anyhow::bail!("question {query_id} failed: {}", status.failure);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "question {query_id} did not finish in time"
        );
    };
    let results = client
        .get_results(v1::GetResultsRequest {
            query_id: query_id.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    let secure = status.mode == "secure";
    writeln!(say, "mode: {}", mode_words(&status.mode))?;
    if !status.mode_note.is_empty() {
        writeln!(
            say,
            "      (eligible for secure aggregation, but {})",
            shown(&status.mode_note)
        )?;
    }
    writeln!(say, "{}", coverage_table(&results.coverage))?;
    if !results.noise.is_empty() {
        writeln!(
            say,
            "noise added by the sites (differential privacy):\n{}",
            noise_table(&results.noise)
        )?;
    }
    if secure {
        // What per-site suppression would have released is not known to anyone: it
        // depends on each site's own count of each cell, which secure aggregation hides
        // from the coordinator and the researcher alike.
        let domain = cells.map_or_else(String::new, |cells| {
            format!(" from a public domain of {cells} cells")
        });
        writeln!(
            say,
            "{} row(s) released{domain}: the cells whose network total reached k (HAVING and LIMIT apply after that).",
            results.rows
        )?;
        writeln!(
            say,
            "How many sites each cell's patients come from is known to nobody, so how many of these rows per-site suppression would have released is not known."
        )?;
    }
    // How many groups a site suppressed is the steward's to know, never the researcher's
    // (whether a one-patient group existed is exactly what suppression hides): the
    // showcase shows it as the stewards' view; a scripted question (`--sql`, the
    // researcher's own) never does. Under secure aggregation no site suppresses anything.
    if !scripted && !secure {
        let mut suppressed = new_table(
            &[
                "site",
                "groups suppressed (the steward's view: the site's audit log)",
            ],
            &[],
        );
        for site in sites {
            let entries = audit::read_entries(&site.files.audit_log)?;
            let count: u64 = entries
                .iter()
                .filter(|e| e.study == DEMO_STUDY && e.query_hash == query_hash)
                .map(|e| e.groups_suppressed)
                .sum();
            suppressed.add_row(vec![site.id.clone(), count.to_string()]);
        }
        writeln!(say, "{suppressed}")?;
    }
    let (schema, batches) = arrow_ipc::decode(&results.arrow_ipc).context("decoding the result")?;
    if scripted {
        say.flush()?;
        output::write_to(&schema, &batches, format, output::Cells::Safe, None)?;
    } else {
        output::write_table(&schema, &batches, format, output::Cells::Safe, say)?;
    }
    Ok(status.mode)
}
