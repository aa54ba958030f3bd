//! What researchers run: `ern studies`, `ern sites`, `ern submit`, `ern status`,
//! `ern results`, `ern list`, `ern withdraw`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ern_proto::arrow_ipc;
use ern_proto::v1;

use crate::client::{
    self, Connection, PAGE_SIZE, all_pages, format_time, parse_duration, rpc_error,
};
use crate::output::{self, Format};
use crate::table::{ListFormat, new_table, print_json};
use ern_node::privacy::policy::Epsilon;
use ern_queries::shown::shown;

/// Arguments of `ern submit`.
#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    question: SqlSource,
    /// The study the question belongs to: one you are a researcher on (`ern studies`
    /// lists them). Stewards approve it under that study.
    #[arg(long)]
    study: String,
    /// A short title stewards see.
    #[arg(long)]
    title: String,
    /// Why you ask, for the stewards.
    #[arg(long, default_value = "")]
    purpose: String,
    /// Sites to ask, comma-separated (default: every enrolled site).
    #[arg(long, value_delimiter = ',')]
    sites: Vec<String>,
    /// How long to wait for approvals and answers (e.g. 7d, 12h; default: the
    /// coordinator's).
    #[arg(long, value_parser = parse_duration)]
    deadline: Option<std::time::Duration>,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The question's id (from `ern submit` or `ern list`).
    id: String,
    /// Print a table, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    /// Wait for the question to finish (complete or failed); the coordinator holds each
    /// call until it does, so nothing polls. Exits non-zero if it is still running at
    /// the timeout.
    #[arg(long)]
    wait: bool,
    /// How long `--wait` waits at most, e.g. 90s, 10m, 2h.
    #[arg(long, value_parser = client::parse_duration, default_value = "10m", requires = "wait")]
    timeout: std::time::Duration,

    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern results`.
#[derive(Debug, Args)]
pub(crate) struct ResultsArgs {
    /// The question's id.
    id: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// CSV cells exactly as released: without it, a text cell that a spreadsheet would
    /// run as a formula (beginning with =, +, -, @, tab or carriage return) gets a
    /// leading single quote.
    #[arg(long)]
    raw: bool,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern withdraw`.
#[derive(Debug, Args)]
pub(crate) struct WithdrawArgs {
    /// The question's id.
    id: String,
    #[command(flatten)]
    connection: Connection,
}

/// A question's state, for `ern list --state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum StateFilter {
    /// Some sites have not finished.
    Running,
    /// Merged: the table is ready.
    Complete,
    /// The answers could not be merged.
    Failed,
    /// Withdrawn by you.
    Withdrawn,
}

impl StateFilter {
    fn to_proto(self) -> v1::QueryState {
        match self {
            StateFilter::Running => v1::QueryState::Running,
            StateFilter::Complete => v1::QueryState::Complete,
            StateFilter::Failed => v1::QueryState::Failed,
            StateFilter::Withdrawn => v1::QueryState::Withdrawn,
        }
    }
}

/// Arguments of `ern list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    /// Only the questions of this study.
    #[arg(long)]
    study: Option<String>,
    /// Only the questions in this state.
    #[arg(long, value_enum)]
    state: Option<StateFilter>,
    /// Only the questions submitted at or after this time: a UTC date (2026-11-30), a
    /// date and time (2026-11-30 14:05:00) or a duration back from now (7d, 12h).
    #[arg(long)]
    since: Option<String>,
    /// Only the questions submitted before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Print a table, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of a researcher's listings (`ern studies`, `ern sites`).
#[derive(Debug, Args)]
pub(crate) struct ListingArgs {
    /// Print a table, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    connection: Connection,
}

/// Where a question's SQL comes from: a file or the command line (one of them).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(crate) struct SqlSource {
    /// A file holding the SQL question.
    #[arg(long)]
    sql: Option<PathBuf>,
    /// The SQL question itself.
    #[arg(long)]
    sql_text: Option<String>,
}

impl SqlSource {
    /// The SQL text.
    pub(crate) fn read(&self) -> anyhow::Result<String> {
        match (&self.sql, &self.sql_text) {
            (Some(path), _) => {
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
            }
            (None, Some(text)) => Ok(text.clone()),
            (None, None) => anyhow::bail!("give --sql FILE or --sql-text TEXT"),
        }
    }
}

pub(crate) fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let sql = args.question.read()?;
    client::runtime()?.block_on(async {
        let mut researcher = client::researcher(&args.connection).await?;
        let response = researcher
            .submit(v1::SubmitRequest {
                sql,
                title: args.title.clone(),
                purpose: args.purpose.clone(),
                sites: args.sites.clone(),
                deadline_seconds: args.deadline.map_or(0, |d| d.as_secs()),
                study_id: args.study.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        println!("{}", response.query_id);
        if response.reference_data {
            eprintln!(
                "answered from the public reference data (Orphanet, CC BY 4.0) by the coordinator: no site was asked, no steward reviews it; `ern results {}` shows it",
                response.query_id
            );
            return Ok(());
        }
        eprintln!(
            "submitted under study {} to {} (waits until {}); query hash {}",
            shown(&args.study),
            response.sites.join(", "),
            format_time(response.deadline),
            response.query_hash
        );
        Ok(())
    })
}

/// Site-by-site coverage as a table.
pub(crate) fn coverage_table(sites: &[v1::SiteStatus]) -> comfy_table::Table {
    let mut table = new_table(&["site", "state", "detail", "since"], &[]);
    for site in sites {
        table.add_row(vec![
            shown(&site.site),
            site_state_name(site.state).to_string(),
            shown(&site_detail(site)),
            format_time(site.updated_at),
        ]);
    }
    table
}

/// What a site's part says beyond its state: the rule, reason or reference, and for a
/// failure or resource refusal its kind and the reference its steward looks up with
/// `ern node audit show REF`.
pub(crate) fn site_detail(site: &v1::SiteStatus) -> String {
    match (site.category.is_empty(), site.reference.is_empty()) {
        (true, _) => site.detail.clone(),
        (false, true) => format!("{} ({})", site.detail, site.category),
        (false, false) if site.detail == site.reference => {
            format!(
                "{}; the site's steward has the detail under reference {}",
                site.category, site.reference
            )
        }
        (false, false) => format!(
            "{} ({}); the site's steward has the detail under reference {}",
            site.detail, site.category, site.reference
        ),
    }
}

/// The noise in each aggregate of a merged table: the sum of the answering sites' noise
/// (or of the secure round's shares), its variance and its 95 % margin.
pub(crate) fn noise_table(noise: &[v1::AggregateNoise]) -> comfy_table::Table {
    let mut table = new_table(
        &["aggregate", "mechanism", "sites", "variance", "95 % margin"],
        &["sites", "variance", "95 % margin"],
    );
    for aggregate in noise {
        table.add_row(vec![
            shown(&aggregate.aggregate),
            shown(&aggregate.mechanism),
            aggregate.sites.to_string(),
            format!("{:.1}", aggregate.variance),
            format!("±{}", aggregate.margin95),
        ]);
    }
    table
}

/// A site state for people.
pub(crate) fn site_state_name(state: i32) -> &'static str {
    match v1::SiteState::try_from(state).unwrap_or(v1::SiteState::Unspecified) {
        v1::SiteState::AwaitingApproval => "awaiting approval",
        v1::SiteState::Approved => "approved, waiting for the node",
        v1::SiteState::Dispatched => "running at the site",
        v1::SiteState::Answered => "answered",
        v1::SiteState::Refused => "refused by the node",
        v1::SiteState::Rejected => "rejected by the steward",
        v1::SiteState::Failed => "failed",
        v1::SiteState::Expired => "expired",
        v1::SiteState::Aggregated => "aggregated (secure: in the network total)",
        v1::SiteState::RoundFailed => "secure round failed",
        v1::SiteState::Withdrawn => "withdrawn",
        v1::SiteState::Unspecified => "unknown",
    }
}

/// A site state's stable name, for scripts (the coordinator's stored name).
fn site_state_key(state: i32) -> &'static str {
    match v1::SiteState::try_from(state).unwrap_or(v1::SiteState::Unspecified) {
        v1::SiteState::AwaitingApproval => "awaiting-approval",
        v1::SiteState::Approved => "approved",
        v1::SiteState::Dispatched => "dispatched",
        v1::SiteState::Answered => "answered",
        v1::SiteState::Refused => "refused",
        v1::SiteState::Rejected => "rejected",
        v1::SiteState::Failed => "failed",
        v1::SiteState::Expired => "expired",
        v1::SiteState::Aggregated => "aggregated",
        v1::SiteState::RoundFailed => "round-failed",
        v1::SiteState::Withdrawn => "withdrawn",
        v1::SiteState::Unspecified => "unknown",
    }
}

/// How a question's numbers are combined, for people.
pub(crate) fn mode_words(mode: &str) -> &'static str {
    match mode {
        "secure" => {
            "secure aggregation: k applies to the network total of each cell; no one sees a site's own numbers"
        }
        "per-site" => "per-site suppression: each site drops its own groups under its k",
        "reference" => {
            "reference data: public Orphanet tables, answered row by row by the coordinator; no site was asked"
        }
        _ => "unknown",
    }
}

/// A question state's stable name, for scripts.
fn query_state_key(state: i32) -> &'static str {
    match v1::QueryState::try_from(state).unwrap_or(v1::QueryState::Unspecified) {
        v1::QueryState::Running => "running",
        v1::QueryState::Complete => "complete",
        v1::QueryState::Failed => "failed",
        v1::QueryState::Withdrawn => "withdrawn",
        v1::QueryState::Unspecified => "unknown",
    }
}

fn query_state_name(state: i32) -> &'static str {
    match v1::QueryState::try_from(state).unwrap_or(v1::QueryState::Unspecified) {
        v1::QueryState::Running => "running",
        v1::QueryState::Complete => "complete",
        v1::QueryState::Failed => "failed: the answers could not be merged",
        v1::QueryState::Withdrawn => "withdrawn by you; nothing was merged",
        v1::QueryState::Unspecified => "unknown",
    }
}

pub(crate) fn status(args: StatusArgs) -> anyhow::Result<()> {
    client::runtime()?.block_on(async {
        let mut researcher = client::researcher(&args.connection).await?;
        let until = std::time::Instant::now() + args.timeout;
        let status = loop {
            // Each call waits on the coordinator, at most what is left of the timeout.
            let left = until.saturating_duration_since(std::time::Instant::now());
            let wait_seconds = if args.wait {
                u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX)
            } else {
                0
            };
            let status = researcher
                .get_status(v1::GetStatusRequest {
                    query_id: args.id.clone(),
                    wait_seconds,
                })
                .await
                .map_err(rpc_error)?
                .into_inner();
            let running = status.state == v1::QueryState::Running as i32;
            if !args.wait || !running || left.is_zero() {
                break status;
            }
        };
        if args.format == ListFormat::Json {
            let sites: Vec<serde_json::Value> = status
                .sites
                .iter()
                .map(|site| {
                    serde_json::json!({
                        "site": site.site,
                        "state": site_state_key(site.state),
                        "detail": site.detail,
                        "category": site.category,
                        "reference": site.reference,
                        "since": site.updated_at,
                    })
                })
                .collect();
            print_json(&serde_json::json!({
                "id": status.query_id,
                "title": status.title,
                "study": status.study_id,
                "study_title": status.study_title,
                "state": query_state_key(status.state),
                "failure": status.failure,
                "mode": status.mode,
                "mode_note": status.mode_note,
                "submitted_at": status.submitted_at,
                "deadline": status.deadline,
                "sites": sites,
            }))?;
            return still_running(&args, &status);
        }
        println!("{} — {}", shown(&status.query_id), shown(&status.title));
        println!(
            "study: {} — {}",
            shown(&status.study_id),
            shown(&status.study_title)
        );
        println!(
            "state: {}; submitted {}; deadline {}",
            query_state_name(status.state),
            format_time(status.submitted_at),
            format_time(status.deadline)
        );
        if !status.failure.is_empty() {
            println!("why: {}", shown(&status.failure));
        }
        println!("mode: {}", mode_words(&status.mode));
        if !status.mode_note.is_empty() {
            println!(
                "      (eligible for secure aggregation, but {})",
                shown(&status.mode_note)
            );
        }
        println!("{}", coverage_table(&status.sites));
        still_running(&args, &status)
    })
}

/// With `--wait`, a question still running at the timeout is an error (after its status
/// is printed).
fn still_running(args: &StatusArgs, status: &v1::QueryStatus) -> anyhow::Result<()> {
    let running = status.state == v1::QueryState::Running as i32;
    anyhow::ensure!(
        !(args.wait && running),
        "question {} is still running after {}s of waiting",
        status.query_id,
        args.timeout.as_secs()
    );
    Ok(())
}

pub(crate) fn results(args: ResultsArgs) -> anyhow::Result<()> {
    client::runtime()?.block_on(async {
        let mut researcher = client::researcher(&args.connection).await?;
        let results = researcher
            .get_results(v1::GetResultsRequest {
                query_id: args.id.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        let (schema, batches) =
            arrow_ipc::decode(&results.arrow_ipc).context("decoding the result table")?;
        if args.format.is_binary() && args.out.is_none() {
            use std::io::IsTerminal;
            anyhow::ensure!(
                !std::io::stdout().is_terminal(),
                "{:?} is binary: give --out FILE or redirect stdout",
                args.format
            );
        }
        if args.format == Format::Table {
            println!("mode: {}", mode_words(&results.mode));
            println!("{}", coverage_table(&results.coverage));
        }
        let cells = if args.raw {
            output::Cells::Raw
        } else {
            output::Cells::Safe
        };
        output::write_to(&schema, &batches, args.format, cells, args.out.as_deref())?;
        if !results.noise.is_empty() {
            // Beside a table on the terminal; on stderr where stdout is data.
            let noise = noise_table(&results.noise);
            if args.format == Format::Table {
                println!("noise added by the sites (differential privacy):\n{noise}");
            } else {
                eprintln!("noise added by the sites (differential privacy):\n{noise}");
            }
        }
        if let Some(path) = &args.out {
            eprintln!("{} rows written to {}", results.rows, path.display());
        }
        if results.mode == "reference" {
            // Public data: shown row by row, with the attribution its licence asks for.
            eprintln!("{}", ern_queries::reference::ATTRIBUTION);
            return Ok(());
        }
        let answered = results.coverage.iter().any(|site| {
            matches!(
                v1::SiteState::try_from(site.state),
                Ok(v1::SiteState::Answered | v1::SiteState::Aggregated)
            )
        });
        anyhow::ensure!(
            answered,
            "no site answered question {}: the table holds nothing from any site \
             (the coverage says why each site did not; `ern status {}` too)",
            results.query_id,
            results.query_id
        );
        Ok(())
    })
}

pub(crate) fn withdraw(args: WithdrawArgs) -> anyhow::Result<()> {
    client::runtime()?.block_on(async {
        let mut researcher = client::researcher(&args.connection).await?;
        let status = researcher
            .withdraw(v1::WithdrawRequest {
                query_id: args.id.clone(),
            })
            .await
            .map_err(rpc_error)?
            .into_inner();
        println!(
            "withdrawn: {} — {}; stewards no longer see it, and what sites answer from now on is discarded",
            shown(&status.query_id),
            shown(&status.title)
        );
        println!("{}", coverage_table(&status.sites));
        Ok(())
    })
}

pub(crate) fn list(args: ListArgs) -> anyhow::Result<()> {
    let now = ern_coordinator::model::now_seconds();
    let bound = |text: &Option<String>, flag: &str| -> anyhow::Result<u64> {
        text.as_deref().map_or(Ok(0), |text| {
            client::parse_time(text, now).map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        })
    };
    let (since, until) = (
        bound(&args.since, "--since")?,
        bound(&args.until, "--until")?,
    );
    let state = args
        .state
        .map_or(v1::QueryState::Unspecified, StateFilter::to_proto) as i32;
    client::runtime()?.block_on(async {
        let researcher = client::researcher(&args.connection).await?;
        let study = args.study.clone().unwrap_or_default();
        let list = all_pages(|page_token| {
            let mut researcher = researcher.clone();
            let study_id = study.clone();
            async move {
                let page = researcher
                    .list_queries(v1::ListQueriesRequest {
                        page_size: PAGE_SIZE,
                        page_token,
                        study_id,
                        state,
                        submitted_after: since,
                        submitted_before: until,
                    })
                    .await?
                    .into_inner();
                Ok((page.queries, page.next_page_token))
            }
        })
        .await
        .map_err(rpc_error)?;
        if args.format == ListFormat::Json {
            let items: Vec<serde_json::Value> = list
                .iter()
                .map(|query| {
                    serde_json::json!({
                        "id": query.query_id,
                        "title": query.title,
                        "study": query.study_id,
                        "study_title": query.study_title,
                        "state": query_state_key(query.state),
                        "sites": query.sites,
                        "answered": query.answered,
                        "submitted_at": query.submitted_at,
                    })
                })
                .collect();
            return print_json(&serde_json::Value::Array(items));
        }
        let mut table = new_table(
            &[
                "id",
                "title",
                "study",
                "state",
                "sites",
                "answered",
                "submitted",
            ],
            &["sites", "answered"],
        );
        for query in list {
            table.add_row(vec![
                shown(&query.query_id),
                shown(&query.title),
                shown(&query.study_id),
                query_state_name(query.state).to_string(),
                query.sites.to_string(),
                query.answered.to_string(),
                format_time(query.submitted_at),
            ]);
        }
        println!("{table}");
        Ok(())
    })
}

pub(crate) fn studies(args: ListingArgs) -> anyhow::Result<()> {
    client::runtime()?.block_on(async {
        let researcher = client::researcher(&args.connection).await?;
        let studies = all_pages(|page_token| {
            let mut researcher = researcher.clone();
            async move {
                let page = researcher
                    .list_studies(v1::ListStudiesRequest {
                        page_size: PAGE_SIZE,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((page.studies, page.next_page_token))
            }
        })
        .await
        .map_err(rpc_error)?;
        print_studies(&studies, args.format)
    })
}

/// Studies as a table (id, title, purpose, researchers, when and by whom created) or as
/// JSON for scripts.
pub(crate) fn print_studies(studies: &[v1::Study], format: ListFormat) -> anyhow::Result<()> {
    if format == ListFormat::Json {
        let items: Vec<serde_json::Value> = studies
            .iter()
            .map(|study| {
                serde_json::json!({
                    "id": study.id,
                    "title": study.title,
                    "purpose": study.purpose,
                    "researchers": study.researchers,
                    "created_at": study.created_at,
                    "created_by": study.created_by,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    let mut table = new_table(
        &[
            "id",
            "title",
            "purpose",
            "researchers",
            "created",
            "created by",
        ],
        &[],
    );
    for study in studies {
        table.add_row(vec![
            shown(&study.id),
            shown(&study.title),
            shown(&study.purpose),
            shown(&study.researchers.join(", ")),
            format_time(study.created_at),
            shown(&study.created_by),
        ]);
    }
    println!("{table}");
    Ok(())
}

pub(crate) fn sites(args: ListingArgs) -> anyhow::Result<()> {
    client::runtime()?.block_on(async {
        let researcher = client::researcher(&args.connection).await?;
        let sites = all_pages(|page_token| {
            let mut researcher = researcher.clone();
            async move {
                let page = researcher
                    .list_sites(v1::ListSitesRequest {
                        page_size: PAGE_SIZE,
                        page_token,
                    })
                    .await?
                    .into_inner();
                Ok((page.sites, page.next_page_token))
            }
        })
        .await
        .map_err(rpc_error)?;
        print_sites(&sites, args.format)
    })
}

/// The network's sites as a table (site, online, k, noise, last seen) or as JSON.
fn print_sites(sites: &[v1::SiteInfo], format: ListFormat) -> anyhow::Result<()> {
    let epsilon = |site: &v1::SiteInfo| {
        site.noised
            .then(|| Epsilon::from_micro(site.epsilon_micro).to_string())
    };
    if format == ListFormat::Json {
        let items: Vec<serde_json::Value> = sites
            .iter()
            .map(|site| {
                serde_json::json!({
                    "site": site.site,
                    "online": site.online,
                    "k": (site.k > 0).then_some(site.k),
                    "noised": site.noised,
                    "epsilon": epsilon(site),
                    "last_seen": site.last_seen,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    let mut table = new_table(&["site", "online", "k", "noise", "last seen"], &["k"]);
    for site in sites {
        table.add_row(vec![
            shown(&site.site),
            if site.online { "yes" } else { "no" }.to_string(),
            if site.k > 0 {
                site.k.to_string()
            } else {
                "not yet reported".to_string()
            },
            epsilon(site).map_or_else(|| "none".to_string(), |e| format!("ε = {e} per question")),
            format_time(site.last_seen),
        ]);
    }
    println!("{table}");
    Ok(())
}
