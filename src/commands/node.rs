//! `ern node`: what a hospital's operator and steward run on the node.

use std::path::PathBuf;

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
    /// Check the whole hash chain of STORE/audit.log and name the first bad entry.
    Verify {
        /// The node's store directory.
        #[arg(long)]
        store: PathBuf,
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
        /// The node's store directory.
        #[arg(long)]
        store: PathBuf,
        /// Print a table, or JSON for scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

pub(crate) fn run(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Serve { config } => serve(&config),
        NodeCommand::Audit(AuditCommand::Verify { store, head }) => {
            let log = store.join(AUDIT_FILE);
            let summary = match &head {
                Some(head) => audit::verify_with_head(&log, head),
                None => audit::verify(&log),
            }
            .with_context(|| format!("verifying {}", log.display()))?;
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
        NodeCommand::Audit(AuditCommand::Show {
            reference,
            store,
            format,
        }) => show_entry(&store.join(AUDIT_FILE), &reference, format),
    }
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
        let engine = NodeEngine::open(&config.store, config.policy)
            .await
            .with_context(|| format!("opening the store {}", config.store.display()))?;
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
