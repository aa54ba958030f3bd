//! `ern node`: what a hospital's operator and steward run on the node.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use ern_node::audit::{self, AUDIT_FILE};
use ern_node::config::NodeConfig;
use ern_node::engine::NodeEngine;
use ern_node::link::{self, LinkSettings};
use ern_queries::shown::shown;

use crate::table::{ListFormat, new_table, print_json};

/// Node commands.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Dial out to the coordinator and answer approved questions until interrupted. Opens
    /// no listening port.
    Serve {
        /// The node's configuration file (node.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Inspect the node's tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// Audit-log commands.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the whole hash chain of the node's audit log; a broken chain is explained
    /// (where, what it most likely means, what to do) and exits 1.
    Verify {
        #[command(flatten)]
        log: LogArgs,
        /// A head hash reported earlier (the coordinator keeps the latest: `ern operator
        /// nodes`); the log must still hold it, or entries were removed from its end.
        #[arg(long)]
        head: Option<String>,
    },
    /// Show the audit entry a researcher's failure or refusal names by its reference
    /// (`ern status` prints it): the full detail, which never leaves the site.
    Show {
        /// The reference, e.g. f5eab05e12e5222d.
        reference: String,
        #[command(flatten)]
        log: LogArgs,
        /// Print a table, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Archive the audit log as it is (intact or broken) and start a new chain whose
    /// first entry records the archived log's last intact hash and carries its privacy
    /// charges over: the way on after a broken log, itself in the log. Stop the node
    /// first.
    Rotate {
        #[command(flatten)]
        log: LogArgs,
        /// Where the old log goes (default: beside it, named with the time).
        #[arg(long)]
        archive: Option<PathBuf>,
    },
}

/// Which audit log: the one a node's configuration names, or a file.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct LogArgs {
    /// The node's configuration file (node.toml): its `audit_log`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The audit log file itself.
    #[arg(long)]
    log: Option<PathBuf>,
    /// A store of the old layout that still holds its audit.log.
    #[arg(long, hide = true)]
    store: Option<PathBuf>,
}

impl LogArgs {
    /// The log file these arguments name.
    fn path(&self) -> anyhow::Result<PathBuf> {
        if let Some(config) = &self.config {
            return Ok(NodeConfig::load(config)?.audit_log);
        }
        if let Some(log) = &self.log {
            return Ok(log.clone());
        }
        let store = self
            .store
            .as_ref()
            .context("name the log: --config or --log")?;
        Ok(store.join(AUDIT_FILE))
    }

    /// The log file, which must exist.
    fn existing(&self) -> anyhow::Result<PathBuf> {
        let path = self.path()?;
        anyhow::ensure!(
            path.is_file(),
            "no audit log at {}: a node writes it when it starts",
            path.display()
        );
        Ok(path)
    }
}

pub(crate) fn run(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Serve { config } => serve(&config),
        NodeCommand::Audit(AuditCommand::Verify { log, head }) => verify(&log.existing()?, head),
        NodeCommand::Audit(AuditCommand::Show {
            reference,
            log,
            format,
        }) => show_entry(&log.existing()?, &reference, format),
        NodeCommand::Audit(AuditCommand::Rotate { log, archive }) => {
            let path = log.path()?;
            let archive = archive.unwrap_or_else(|| archive_name(&path));
            let rotation = audit::rotate(&path, &archive)
                .with_context(|| format!("rotating {}", path.display()))?;
            let continued = &rotation.continuation;
            if rotation.archive.as_os_str().is_empty() {
                println!(
                    "no audit log at {}: started a new chain whose first entry records the loss",
                    path.display()
                );
            } else {
                println!("archived {} as {}", path.display(), archive.display());
            }
            println!(
                "new chain started: its first entry records {} intact entries, last hash {}",
                continued.entries, continued.last_hash
            );
            if let Some(broken) = &continued.broken {
                println!("the archived log was broken: {broken}");
            }
            println!(
                "{} privacy charges carried over; new head: {} (keep a copy)",
                continued.charges_carried, rotation.head
            );
            Ok(())
        }
    }
}

/// The archive's default name: the log's, with the time it was archived.
fn archive_name(log: &Path) -> PathBuf {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // "2026-12-02 07:44:34 UTC" as "20261202T074434Z".
    let stamp: String = crate::client::format_time(now)
        .replace(" UTC", "Z")
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .map(|c| if c == ' ' { 'T' } else { c })
        .collect();
    let name = log
        .file_name()
        .map_or_else(|| "audit.log".into(), |n| n.to_string_lossy().into_owned());
    log.with_file_name(format!("{name}.{stamp}"))
}

/// `ern node audit verify`: the chain's summary, or what broke it and what to do.
fn verify(log: &Path, head: Option<String>) -> anyhow::Result<()> {
    let checked = match &head {
        Some(head) => audit::verify_with_head(log, head),
        None => audit::verify(log),
    };
    let summary = match checked {
        Ok(summary) => summary,
        Err(audit::AuditError::Broken { entry, line, kind }) => {
            let found =
                audit::inspect(log).with_context(|| format!("reading {}", log.display()))?;
            eprintln!(
                "audit log {} is BROKEN at entry {entry} (line {line}): {kind}",
                log.display()
            );
            eprintln!("  what it means: {}", kind.explanation(line));
            eprintln!(
                "  intact: entries 1 to {}, the last with hash {}",
                found.intact.entries, found.intact.head
            );
            eprintln!(
                "  what to do: keep this file as evidence and compare that hash with the head the coordinator kept (`ern operator nodes`); then, with the node stopped, `ern node audit rotate` archives the log as it is and starts a new chain whose first entry records it ({} privacy charges are carried over)",
                found.charges.len()
            );
            anyhow::bail!("the audit log's chain is broken at entry {entry}");
        }
        Err(error) => {
            return Err(error).with_context(|| format!("verifying {}", log.display()));
        }
    };
    println!("audit log intact: {} entries", summary.entries);
    if let Some(head) = &head {
        println!("it still holds the head {head} reported earlier");
    }
    println!(
        "head: {} (keep a copy: it anchors the end of the log)",
        summary.head
    );
    Ok(())
}

/// Prints the audit entry with `reference`, from a log whose whole chain checks.
fn show_entry(log: &std::path::Path, reference: &str, format: ListFormat) -> anyhow::Result<()> {
    let entries = audit::read_entries(log).with_context(|| format!("reading {}", log.display()))?;
    let entry = entries
        .iter()
        .find(|entry| entry.reference.as_deref() == Some(reference.trim()))
        .with_context(|| {
            format!(
                "no entry with reference {} in {} ({} entries)",
                shown(reference),
                log.display(),
                entries.len()
            )
        })?;
    let value = serde_json::to_value(entry)?;
    if format == ListFormat::Json {
        return print_json(&value);
    }
    let mut table = new_table(&["field", "value"], &[]);
    if let serde_json::Value::Object(fields) = &value {
        for (field, value) in fields {
            let text = match value {
                serde_json::Value::Null => continue,
                serde_json::Value::Number(number) if field == "time" => number
                    .as_u64()
                    .map_or_else(|| number.to_string(), crate::client::format_time),
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            table.add_row(vec![field.clone(), shown(&text)]);
        }
    }
    println!("{table}");
    Ok(())
}

fn serve(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    let runtime = crate::client::server_runtime()?;
    runtime.block_on(async {
        let site = config.policy.site_id.clone();
        let files = config.files();
        for (old, new) in files.adopt_from_store()? {
            tracing::warn!(from = %old.display(), to = %new.display(), "moved the node's own file out of the store");
        }
        let engine = NodeEngine::open_files(&files, config.policy)
            .await
            .map_err(|error| match error {
                ern_node::engine::OpenError::Audit(audit::AuditError::Broken { .. }) => anyhow::anyhow!(
                    "{error}\n`ern node audit verify --config {0}` explains it; with the node stopped, `ern node audit rotate --config {0}` archives the log and starts a new chain that records it",
                    config_path.display()
                ),
                error => anyhow::Error::new(error),
            })
            .with_context(|| format!("opening the store {} and the audit log {}", files.store.display(), files.audit_log.display()))?;
        eprintln!("node {site} dialling {}", config.coordinator);
        let mut settings = LinkSettings::new(&config.coordinator, config.token, config.tls);
        settings.max_concurrent = config.max_concurrent;
        tokio::select! {
            () = link::run(std::sync::Arc::new(engine), settings) => {}
            _ = tokio::signal::ctrl_c() => eprintln!("node {site} stopped"),
        }
        Ok(())
    })
}
