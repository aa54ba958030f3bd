//! `ern node`: what a hospital's operator and steward run on the node.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use ern_node::audit::{self, AUDIT_FILE};
use ern_node::config::NodeConfig;
use ern_node::engine::NodeEngine;
use ern_node::link::{self, LinkSettings};

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
    }
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
