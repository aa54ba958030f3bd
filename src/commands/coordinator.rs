//! What the registry operator runs on the coordinator's machine: `ern coordinator serve`
//! and, to enrol the first operator before anyone holds a token, `ern coordinator user
//! add` (it writes to the coordinator's database directly).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use ern_coordinator::model::{Role, now_seconds};
use ern_coordinator::{Coordinator, CoordinatorConfig, Db, auth, server};

use super::operator::parse_role;

/// Who the audit trail names for users enrolled on the coordinator's machine.
const LOCAL_ACTOR: &str = "coordinator-console";

/// Coordinator commands.
#[derive(Debug, Subcommand)]
pub(crate) enum CoordinatorCommand {
    /// Serve the network's gRPC API until interrupted.
    Serve(ServeArgs),
    /// Users, on the coordinator's machine.
    #[command(subcommand)]
    User(LocalUserCommand),
}

/// Arguments of `ern coordinator serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The coordinator's configuration file.
    #[arg(long)]
    config: PathBuf,
}

/// Local user commands.
#[derive(Debug, Subcommand)]
pub(crate) enum LocalUserCommand {
    /// Enrol a user or node directly in the database (e.g. the first operator); prints
    /// its token once.
    Add(LocalAddArgs),
}

/// Arguments of `ern coordinator user add`.
#[derive(Debug, Args)]
pub(crate) struct LocalAddArgs {
    /// Unique user name.
    name: String,
    /// researcher, steward, operator or node.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// The site, for stewards and nodes.
    #[arg(long, default_value = "")]
    site: String,
    /// The site is new to the network (see `ern operator user add --new-site`).
    #[arg(long)]
    new_site: bool,
    /// The token stops working after this long (e.g. 90d); without it, never.
    #[arg(long, value_parser = super::operator::parse_lifetime)]
    expires: Option<u64>,
    /// The coordinator's configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Write the token to this file (mode 0600, never over an existing file) instead of
    /// printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub(crate) fn run(command: CoordinatorCommand) -> anyhow::Result<()> {
    match command {
        CoordinatorCommand::Serve(args) => serve(args),
        CoordinatorCommand::User(LocalUserCommand::Add(args)) => {
            crate::client::check_token_out(args.out.as_deref())?;
            let config = CoordinatorConfig::load(&args.config)?;
            let db = Db::open(&config.database)
                .with_context(|| format!("opening {}", config.database.display()))?;
            let now = now_seconds();
            let enrolment = auth::Enrolment {
                name: args.name.clone(),
                role: args.role,
                site: args.site.trim().to_string(),
                new_site: args.new_site,
                expires_at: args
                    .expires
                    .map_or(0, |seconds| now.saturating_add(seconds)),
            };
            let token = auth::enrol(&db, LOCAL_ACTOR, &enrolment, now)
                .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
            crate::client::hand_over_token(&token, args.out.as_deref())?;
            eprintln!(
                "enrolled {} as {}; its token is shown only once",
                args.name,
                args.role.as_str()
            );
            Ok(())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = CoordinatorConfig::load(&args.config)?;
    if let ern_coordinator::config::Transport::Tls(tls) = &config.transport {
        server::check_tls(tls)
            .with_context(|| format!("the [tls] section of {}", args.config.display()))?;
    }
    let runtime = crate::client::server_runtime()?;
    runtime.block_on(async {
        let db = Db::open(&config.database)
            .with_context(|| format!("opening {}", config.database.display()))?;
        let core = Arc::new(
            Coordinator::new(db, config.timing.clone())?.with_limits(config.limits.clone()),
        );
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listening on {}", config.listen))?;
        let address = listener.local_addr()?;
        tracing::info!(%address, "coordinator serving");
        eprintln!("coordinator serving on {address}");
        server::serve(core, listener, config.transport.clone(), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
        eprintln!("coordinator stopped");
        Ok(())
    })
}
