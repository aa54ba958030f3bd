//! What data stewards run: `ern steward pending | show | approve | reject`.
//!
//! `approve` signs on the steward's own machine, and only what the steward reviewed: it
//! fetches the question, recomputes the query hash from the SQL it received (never
//! trusting the coordinator's), and signs only when that hash is the one the steward
//! confirmed: given with `--hash` (as `ern steward show` printed it), or confirmed at a
//! prompt after the SQL, the study, the site and the hash are shown again. The site is
//! the steward's own (`--site` or `ERN_SITE`), never the one the coordinator names. The
//! study is the question's, as `ern steward show` printed it; with `--study` nothing is
//! signed unless the coordinator still presents the question under that study. Only the
//! signature is sent.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use ern_node::approval;
use ern_node::steward_key::StewardSigningKey;
use ern_proto::v1;

use ern_proto::v1::steward_client::StewardClient;

use crate::client::{
    self, Authed, Connection, PAGE_SIZE, all_pages, format_time, parse_duration, rpc_error,
};
use crate::commands::researcher::{coverage_table, site_state_name};
use crate::table::{ListFormat, new_table, print_json};
use ern_queries::shown::{shown, shown_lines};

/// Steward commands.
#[derive(Debug, Subcommand)]
pub(crate) enum StewardCommand {
    /// Questions waiting for your site's decision.
    Pending(PendingArgs),
    /// One question: SQL, validation report, the k your node applies.
    Show(ShowArgs),
    /// Sign an approval locally and send it.
    Approve(ApproveArgs),
    /// Reject a question for your site, with a reason the researcher sees.
    Reject(RejectArgs),
}

/// Arguments of `ern steward pending`.
#[derive(Debug, Args)]
pub(crate) struct PendingArgs {
    /// Print a table, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern steward show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The question's id.
    id: String,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern steward approve`.
#[derive(Debug, Args)]
pub(crate) struct ApproveArgs {
    /// The question's id.
    id: String,
    /// Your private key (PREFIX.key from `ern keygen steward`); it never leaves this machine.
    #[arg(long)]
    key: PathBuf,
    /// How long the approval stays valid (e.g. 7d, 12h).
    #[arg(long, default_value = "7d", value_parser = parse_duration)]
    expires: Duration,
    /// Your site: the approval is signed for it, whatever site the coordinator names.
    #[arg(long, env = "ERN_SITE")]
    site: Option<String>,
    /// The query hash you reviewed (printed by `ern steward show`). Without it, the
    /// question is shown again and you confirm at a prompt (a terminal is needed).
    #[arg(long)]
    hash: Option<String>,
    /// The study you reviewed the question under (printed by `ern steward show`): nothing
    /// is signed if the coordinator now presents it under another. The approval signs
    /// the question's study either way.
    #[arg(long)]
    study: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern steward reject`.
#[derive(Debug, Args)]
pub(crate) struct RejectArgs {
    /// The question's id.
    id: String,
    /// Why; the researcher sees it.
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    connection: Connection,
}

pub(crate) fn run(command: StewardCommand) -> anyhow::Result<()> {
    let runtime = client::runtime()?;
    match command {
        StewardCommand::Pending(args) => runtime.block_on(pending(args)),
        StewardCommand::Show(args) => runtime.block_on(show(args)),
        StewardCommand::Approve(args) => runtime.block_on(approve(args)),
        StewardCommand::Reject(args) => runtime.block_on(reject(args)),
    }
}

/// The question as the coordinator shows it to this steward.
async fn fetch_review(
    steward: &mut StewardClient<Authed>,
    id: &str,
) -> anyhow::Result<v1::QueryReview> {
    Ok(steward
        .show_query(v1::ShowQueryRequest {
            query_id: id.to_string(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner())
}

async fn pending(args: PendingArgs) -> anyhow::Result<()> {
    let steward = client::steward(&args.connection).await?;
    let pending = all_pages(|page_token| {
        let mut steward = steward.clone();
        async move {
            let page = steward
                .list_pending(v1::ListPendingRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.queries, page.next_page_token))
        }
    })
    .await
    .map_err(rpc_error)?;
    if args.format == ListFormat::Json {
        let items: Vec<serde_json::Value> = pending
            .iter()
            .map(|query| {
                serde_json::json!({
                    "id": query.query_id,
                    "title": query.title,
                    "study": query.study_id,
                    "study_title": query.study_title,
                    "submitted_by": query.submitted_by,
                    "submitted_at": query.submitted_at,
                    "deadline": query.deadline,
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
            "submitted by",
            "submitted",
            "deadline",
        ],
        &[],
    );
    for query in pending {
        table.add_row(vec![
            shown(&query.query_id),
            shown(&query.title),
            shown(&query.study_id),
            shown(&query.submitted_by),
            format_time(query.submitted_at),
            format_time(query.deadline),
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let mut steward = client::steward(&args.connection).await?;
    let review = fetch_review(&mut steward, &args.id).await?;
    println!("{} — {}", shown(&review.query_id), shown(&review.title));
    if !review.purpose.is_empty() {
        println!("purpose: {}", shown(&review.purpose));
    }
    // The study is what the approval signs beside the hash and the site: the research it
    // is approved under.
    println!("study: {}", shown(&review.study_id));
    println!("study title: {}", shown(&review.study_title));
    println!("study purpose: {}", shown(&review.study_purpose));
    println!(
        "researchers on the study: {}",
        shown(&review.study_researchers.join(", "))
    );
    println!(
        "submitted by {}; deadline {}",
        shown(&review.submitted_by),
        format_time(review.deadline)
    );
    println!("\n{}\n", shown_lines(review.sql.trim()));
    let comments = ern_queries::validate::sql_comments(&review.sql);
    if !comments.is_empty() {
        println!(
            "NOTE: the SQL holds {} comment(s); they do not run, but they can make a question read like another:",
            comments.len()
        );
        for comment in &comments {
            println!("  comment: {}", shown(comment));
        }
        println!();
    }
    let local_hash = ern_queries::query_hash(&review.sql);
    println!("query hash: {local_hash}");
    if local_hash != review.query_hash {
        println!(
            "WARNING: the coordinator reported another hash ({})",
            shown(&review.query_hash)
        );
    }
    let mut report = new_table(&["validation report", ""], &[]);
    report.add_row(vec!["tables".to_string(), shown(&review.tables.join(", "))]);
    report.add_row(vec![
        "columns".to_string(),
        shown(&review.columns.join(", ")),
    ]);
    report.add_row(vec![
        "released aggregates".to_string(),
        shown(&review.aggregates.join(", ")),
    ]);
    report.add_row(vec![
        "grouped by".to_string(),
        shown(&review.group_by.join(", ")),
    ]);
    report.add_row(vec![
        "k at your node".to_string(),
        if review.k == 0 {
            "unknown (your node has not connected yet)".to_string()
        } else {
            format!("{} distinct patients per released group", review.k)
        },
    ]);
    println!("{report}");
    print_mode(&review);
    print_privacy(&review);
    if let Some(status) = review.status {
        println!("your site: {}", site_state_name(status.state));
    }
    Ok(())
}

/// Epsilon in millionths as a decimal: `0.5`, `3` (the node's own notation).
fn epsilon(micro: u64) -> String {
    ern_node::privacy::policy::Epsilon::from_micro(micro).to_string()
}

/// The site's differential-privacy policy and what the question's study has left there,
/// as the site's node last reported (the node enforces its own ledger).
fn print_privacy(review: &v1::QueryReview) {
    let privacy = review.privacy.clone().unwrap_or_default();
    if !privacy.reported {
        println!(
            "privacy at your site: unknown (your node has not connected since the coordinator started)"
        );
        return;
    }
    if !privacy.enabled {
        println!("privacy at your site: no noise, no budgets (the node's [privacy] policy is off)");
        return;
    }
    let left = privacy.budget_micro.saturating_sub(privacy.spent_micro);
    println!(
        "privacy at your site: {} noise, epsilon {} per question; study {} has spent {} of its budget of {}, {} left",
        shown(&privacy.mechanism),
        epsilon(privacy.epsilon_micro),
        shown(&review.study_id),
        epsilon(privacy.spent_micro),
        epsilon(privacy.budget_micro),
        epsilon(left),
    );
    println!(
        "  This question costs {} there (nothing if the study already asked it of the same data); the node refuses it once the budget is spent.",
        epsilon(privacy.epsilon_micro)
    );
}

/// How the sites' numbers will be combined: secure aggregation over the question's public
/// domain, or per-site suppression with the reason. The mode follows from the SQL alone,
/// so the hash the steward signs covers it.
fn print_mode(review: &v1::QueryReview) {
    match review.mode.as_str() {
        "secure" => {
            let plural = if review.cells == 1 { "cell" } else { "cells" };
            println!(
                "mode: secure aggregation: k applies to network totals of {} {plural}",
                review.cells
            );
            for line in &review.domain {
                println!("  {}", shown(line));
            }
            println!(
                "  Your node adds its numbers for every cell, masked, to the total of all participating sites;"
            );
            println!(
                "  nobody sees your site's own numbers, and a cell is released when its network total reaches k."
            );
            println!(
                "  This holds when every approved site's node takes part and at least 3 sites approve;"
            );
            println!("  otherwise the question runs per site, and `ern status` says why.");
        }
        "per-site" => {
            println!("mode: per-site suppression: your node drops its own groups under its k");
            if !review.per_site_reason.is_empty() {
                println!(
                    "  (not eligible for secure aggregation: {})",
                    shown(&review.per_site_reason)
                );
            }
        }
        other => println!("mode: unknown ({})", shown(other)),
    }
}

async fn approve(args: ApproveArgs) -> anyhow::Result<()> {
    let key = StewardSigningKey::load(&args.key)
        .with_context(|| format!("loading {}", args.key.display()))?;
    let mut steward = client::steward(&args.connection).await?;
    let review = fetch_review(&mut steward, &args.id).await?;
    let site = args.site.as_deref().context(
        "name your site with --site (or ERN_SITE): an approval is signed for the steward's own site, never for the one the coordinator names",
    )?;
    if review.site != site {
        anyhow::bail!(
            "not signed: the coordinator presents this question for site {}, and you sign for {site}",
            shown(&review.site)
        );
    }
    let local_hash = ern_queries::query_hash(&review.sql);
    match &args.hash {
        Some(reviewed) if *reviewed == local_hash => {}
        Some(reviewed) => anyhow::bail!(
            "not signed: the question the coordinator returned now (query hash {local_hash}) is not the one you reviewed (query hash {reviewed}); run `ern steward show {}` again",
            args.id
        ),
        None => confirm_at_prompt(&review, site, &local_hash)?,
    }
    if let Some(reviewed) = &args.study
        && *reviewed != review.study_id
    {
        anyhow::bail!(
            "not signed: the coordinator now presents this question under study {}, not the study {} you reviewed; run `ern steward show {}` again",
            shown(&review.study_id),
            shown(reviewed),
            args.id
        );
    }
    let expires_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + args.expires.as_secs();
    let signed = approval::sign(&key, &review.sql, site, &review.study_id, expires_at)
        .context("signing the approval")?;
    let decision = steward
        .approve(signed.to_request(&review.query_id))
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!(
        "approved {} (query hash {local_hash}) for {site} under study {} with key {} until {}",
        shown(&review.query_id),
        shown(&review.study_id),
        signed.key_id,
        format_time(expires_at)
    );
    if let Some(status) = decision.status {
        println!("{}", coverage_table(&[status]));
    }
    Ok(())
}

/// Shows what will be signed and asks the steward to confirm it.
fn confirm_at_prompt(review: &v1::QueryReview, site: &str, hash: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "not signed: without a terminal to confirm at, pass --hash with the query hash `ern steward show {}` printed",
            review.query_id
        );
    }
    eprintln!("You are about to sign an approval of this question for {site}:\n");
    eprintln!("{}\n", shown_lines(review.sql.trim()));
    eprintln!(
        "study: {} — {}",
        shown(&review.study_id),
        shown(&review.study_title)
    );
    eprintln!("query hash: {hash}");
    eprint!("Approve it? Type yes to sign: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        anyhow::bail!("not signed: not confirmed");
    }
    Ok(())
}

async fn reject(args: RejectArgs) -> anyhow::Result<()> {
    let mut steward = client::steward(&args.connection).await?;
    let decision = steward
        .reject(v1::RejectRequest {
            query_id: args.id.clone(),
            reason: args.reason.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("rejected {}", shown(&args.id));
    if let Some(status) = decision.status {
        println!("{}", coverage_table(&[status]));
    }
    Ok(())
}
