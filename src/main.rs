//! `ern`: one binary for every role of the federated rare-disease registry network.
//!
//! # Layout
//! - `commands`: one module per subcommand, each turning arguments into calls on the
//!   library crates and their results into terminal output.
//! - `client`: connecting to a coordinator with a token.
//! - `output`: result tables as table, CSV, JSON, Parquet or Arrow.
//! - `progress_bar`: indicatif bars for the libraries' progress reports.
//! - `table`: how tables print.

mod client;
mod commands;
mod output;
mod progress_bar;
mod table;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// What is logged without `ERN_LOG`: warnings, but the HTTP/2 and TLS libraries' only when
/// they are errors (red team: they warn once per reset connection, so an unauthenticated
/// client could fill the coordinator's log).
/// Node streams opening and closing (target `ern::link`) are logged at info: an operator
/// sees every connection and disconnection without asking for more.
const DEFAULT_LOG: &str = "warn,ern::link=info,h2=error,hyper=error,hyper_util=error,rustls=error,tokio_rustls=error,tonic=error";

/// The exit status of a program ended by SIGPIPE (128 + 13), as a shell reports it.
const CLOSED_STDOUT_STATUS: i32 = 141;

/// A closed stdout (`ern … | head`) ends the program quietly with the status SIGPIPE
/// gives other Unix tools, instead of a panic message: Rust ignores SIGPIPE, so a print
/// to a pipe whose reader has gone panics.
fn end_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("os error 32") {
            std::process::exit(CLOSED_STDOUT_STATUS);
        }
        default(info);
    }));
}

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
    /// Create keys: a site's pseudonymisation key, a steward's signing key pair, a site's
    /// identity key for secure aggregation, or the network's TLS certificates.
    #[command(subcommand)]
    Keygen(commands::keygen::Keygen),
    /// Generate synthetic site exports in the interchange format.
    Synth(commands::synth::SynthArgs),
    /// Validate a site export and turn it into the node's pseudonymised Parquet store.
    Ingest(commands::ingest::IngestArgs),
    /// Node operations on a hospital's machine.
    #[command(subcommand)]
    Node(commands::node::NodeCommand),
    /// The coordinator: serve the network, enrol the first users.
    #[command(subcommand)]
    Coordinator(commands::coordinator::CoordinatorCommand),
    /// The studies you are a researcher on: the ones you can submit questions under
    /// (researcher).
    Studies(commands::researcher::ListingArgs),
    /// The network's sites: which are online, the k each enforces, which add noise
    /// (researcher).
    Sites(commands::researcher::ListingArgs),
    /// Submit a question to the network under one of your studies (researcher).
    Submit(commands::researcher::SubmitArgs),
    /// Where a question stands, site by site (researcher).
    Status(commands::researcher::StatusArgs),
    /// The merged table of a finished question (researcher).
    Results(commands::researcher::ResultsArgs),
    /// Your questions, filtered by study, state and time (researcher).
    List(commands::researcher::ListArgs),
    /// Withdraw one of your unfinished questions: stewards no longer see it, and nothing
    /// is merged (researcher).
    Withdraw(commands::researcher::WithdrawArgs),
    /// Review, approve or reject the questions for your site (data steward).
    #[command(subcommand)]
    Steward(commands::steward::StewardCommand),
    /// Nodes, users, studies and the audit trail (registry operator).
    #[command(subcommand)]
    Operator(commands::operator::OperatorCommand),
    /// The tables, columns, types and value sets a question can use (offline).
    Schema(commands::explore::SchemaArgs),
    /// Example questions, runnable with `ern submit --sql` or `ern demo --sql` (offline).
    Examples(commands::explore::ExamplesArgs),
    /// Check a question against the disclosure rules as the network will (offline).
    Validate(commands::explore::ValidateArgs),
    /// Run the showcase: a coordinator and synthetic hospitals answer research questions
    /// together over gRPC on loopback.
    Demo(commands::demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    use std::io::IsTerminal;
    end_quietly_on_closed_stdout();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("ERN_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG)),
        )
        // Colour codes only for a person at a terminal, never in a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen(keygen) => commands::keygen::run(keygen),
        Command::Synth(args) => commands::synth::run(args),
        Command::Ingest(args) => commands::ingest::run(args),
        Command::Schema(args) => commands::explore::schema(args),
        Command::Examples(args) => commands::explore::examples(args),
        Command::Validate(args) => commands::explore::validate(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Node(command) => commands::node::run(command),
        Command::Coordinator(command) => commands::coordinator::run(command),
        Command::Studies(args) => commands::researcher::studies(args),
        Command::Sites(args) => commands::researcher::sites(args),
        Command::Submit(args) => commands::researcher::submit(args),
        Command::Status(args) => commands::researcher::status(args),
        Command::Results(args) => commands::researcher::results(args),
        Command::List(args) => commands::researcher::list(args),
        Command::Withdraw(args) => commands::researcher::withdraw(args),
        Command::Steward(command) => commands::steward::run(command),
        Command::Operator(command) => commands::operator::run(command),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Each cause once: outer contexts often quote their source already.
            let chain: &(dyn std::error::Error + 'static) = error.as_ref();
            eprintln!("error: {}", ern_proto::transport::error_chain(chain));
            std::process::ExitCode::FAILURE
        }
    }
}
