//! `ern node`: what a hospital's operator and steward run on the node.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use ern_node::audit::{self, AUDIT_FILE};

/// Node commands.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
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
    },
}

pub(crate) fn run(command: NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Audit(AuditCommand::Verify { store }) => {
            let log = store.join(AUDIT_FILE);
            let summary =
                audit::verify(&log).with_context(|| format!("verifying {}", log.display()))?;
            println!("audit log intact: {} entries", summary.entries);
            println!(
                "head: {} (keep a copy: it anchors the end of the log)",
                summary.head
            );
            Ok(())
        }
    }
}
