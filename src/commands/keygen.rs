//! `ern keygen`: the two kinds of key a network needs.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use ern_node::{pseudonym, steward_key};

/// Which key to create.
#[derive(Debug, Subcommand)]
pub(crate) enum Keygen {
    /// A site's pseudonymisation key: 32 random bytes as 64 hex characters, mode 0600.
    /// Keep it with the node; without it nobody can link a pid to a patient.
    Pseudonym {
        /// Key file to create; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// A data steward's Ed25519 signing key pair: PREFIX.key (PKCS#8, mode 0600) stays
    /// with the steward; PREFIX.pub goes into the node's configuration.
    Steward {
        /// Path prefix of the two files.
        #[arg(long)]
        out: PathBuf,
    },
}

pub(crate) fn run(keygen: Keygen) -> anyhow::Result<()> {
    match keygen {
        Keygen::Pseudonym { out } => {
            pseudonym::generate_key_file(&out).context("creating the pseudonymisation key")?;
            println!(
                "wrote pseudonymisation key {} (mode 0600); back it up: a lost key cannot re-link pids",
                out.display()
            );
        }
        Keygen::Steward { out } => {
            let public =
                steward_key::generate_steward_key(&out).context("creating the steward key pair")?;
            println!(
                "wrote {0}.key (private, mode 0600) and {0}.pub (public)",
                out.display()
            );
            println!("key id: {}", public.key_id());
        }
    }
    Ok(())
}
