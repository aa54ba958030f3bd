//! `ern`: one binary for every role of the federated rare-disease registry network.
//!
//! # Layout
//! - `commands`: one module per subcommand, each turning arguments into calls on the
//!   library crates and their results into terminal output.
//! - `progress_bar`: indicatif bars for the libraries' progress reports.
//! - `table`: how tables print.

mod commands;
mod progress_bar;
mod table;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Federated research on rare-disease registries: ask one SQL question of many hospitals,
/// get back only aggregated, thresholded numbers.
#[derive(Debug, Parser)]
#[command(name = "ern", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create keys: a site's pseudonymisation key or a steward's signing key pair.
    #[command(subcommand)]
    Keygen(commands::keygen::Keygen),
    /// Generate synthetic site exports in the interchange format.
    Synth(commands::synth::SynthArgs),
    /// Validate a site export and turn it into the node's pseudonymised Parquet store.
    Ingest(commands::ingest::IngestArgs),
    /// Node operations on a hospital's machine.
    #[command(subcommand)]
    Node(commands::node::NodeCommand),
    /// Run the showcase: synthetic hospitals answer three research questions together.
    Demo(commands::demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("ERN_LOG").unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(keygen) => commands::keygen::run(keygen),
        Command::Synth(args) => commands::synth::run(args),
        Command::Ingest(args) => commands::ingest::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Node(command) => commands::node::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
