//! What registry operators run: `ern operator nodes | user add | user revoke | user
//! rotate | users | study add | study list | audit`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ern_coordinator::model::Role;
use ern_proto::v1;

use crate::client::{self, Connection, PAGE_SIZE, all_pages, format_time, rpc_error};
use crate::commands::researcher::print_studies;
use crate::table::{ListFormat, new_table, print_json};
use ern_queries::shown::shown;

/// Operator commands.
#[derive(Debug, Subcommand)]
pub(crate) enum OperatorCommand {
    /// Every enrolled site and the state of its node.
    Nodes(ConnectionArgs),
    /// Users and node tokens.
    #[command(subcommand)]
    User(UserCommand),
    /// Every user (tokens are never shown again).
    Users(ConnectionArgs),
    /// Studies: the units stewards approve research under; every question belongs to one.
    #[command(subcommand)]
    Study(StudyCommand),
    /// The coordinator's audit trail: counts by kind and the latest events.
    Audit(AuditArgs),
    /// Node certificates.
    #[command(subcommand)]
    Node(NodeCertificateCommand),
}

/// Node certificate commands.
#[derive(Debug, Subcommand)]
pub(crate) enum NodeCertificateCommand {
    /// Put a site's node certificate on the coordinator's revocation list (by serial;
    /// by default the one its node presented last): a node presenting it is refused, and
    /// a live stream on it is closed at once. Issue the site a new certificate with
    /// `ern keygen tls --renew SITE`.
    Revoke(RevokeCertificateArgs),
}

/// Arguments of `ern operator node revoke`.
#[derive(Debug, Args)]
pub(crate) struct RevokeCertificateArgs {
    /// The site.
    site: String,
    /// The certificate's serial (hex, as `ern operator nodes --format json` or `ern
    /// keygen tls --renew` prints it), for one the node is not presenting now.
    #[arg(long)]
    serial: Option<String>,
    #[command(flatten)]
    connection: Connection,
}

/// A listing's connection and format.
#[derive(Debug, Args)]
pub(crate) struct ConnectionArgs {
    /// Print a table, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    connection: Connection,
}

/// User commands.
#[derive(Debug, Subcommand)]
pub(crate) enum UserCommand {
    /// Enrol a user or a node; prints its token once.
    Add(AddUserArgs),
    /// Revoke a user or a node: its token stops working at once, and a node's live
    /// stream is closed.
    Revoke(UserNameArgs),
    /// Give a user or a node a new token, printed once; the old one stops working at
    /// once, and a node's live stream is closed (write the new token into its token file
    /// and restart it).
    Rotate(UserNameArgs),
}

/// Arguments of `ern operator user revoke` and `rotate`.
#[derive(Debug, Args)]
pub(crate) struct UserNameArgs {
    /// The user's name.
    name: String,
    /// `rotate`: write the new token to this file (mode 0600, never over an existing
    /// file) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// `rotate`: the new token stops working after this long (e.g. 90d, 12h); without
    /// it, it never expires.
    #[arg(long, value_parser = parse_lifetime)]
    expires: Option<u64>,
    #[command(flatten)]
    connection: Connection,
}

/// A token's lifetime in seconds, from `90d`, `12h`, `30m` or `90s`.
pub(crate) fn parse_lifetime(text: &str) -> Result<u64, String> {
    client::parse_duration(text).map(|d| d.as_secs())
}

/// Arguments of `ern operator user add`.
#[derive(Debug, Args)]
pub(crate) struct AddUserArgs {
    /// Unique user name.
    name: String,
    /// researcher, steward, operator or node.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// The site, for stewards and nodes.
    #[arg(long, default_value = "")]
    site: String,
    /// The site is new to the network: without it, a steward or node for a site with no
    /// steward or node enrolled yet is refused (a misspelt site would be a site of its
    /// own).
    #[arg(long)]
    new_site: bool,
    /// The token stops working after this long (e.g. 90d, 12h); without it, it never
    /// expires. A node's live stream is closed when its token expires.
    #[arg(long, value_parser = parse_lifetime)]
    expires: Option<u64>,
    /// Write the token to this file (mode 0600, never over an existing file) instead of
    /// printing it.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    connection: Connection,
}

/// Study commands.
#[derive(Debug, Subcommand)]
pub(crate) enum StudyCommand {
    /// Create a study with its researchers; prints its id.
    Add(AddStudyArgs),
    /// Every study of the network.
    List(ConnectionArgs),
}

/// Arguments of `ern operator study add`.
#[derive(Debug, Args)]
pub(crate) struct AddStudyArgs {
    /// The study's id, unique in the network (1-128 ASCII letters, digits, -, _ and .):
    /// the study every approval of its questions signs.
    id: String,
    /// A short title researchers and stewards see.
    #[arg(long)]
    title: String,
    /// What the research is for: what stewards approve its questions under.
    #[arg(long)]
    purpose: String,
    /// A researcher on the study (an enrolled researcher's user name); repeat for more.
    #[arg(long = "researcher", value_name = "NAME", required = true)]
    researchers: Vec<String>,
    #[command(flatten)]
    connection: Connection,
}

/// Arguments of `ern operator audit`.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// How many recent events to show.
    #[arg(long, default_value_t = 20)]
    recent: u32,
    /// Print tables, or JSON for scripts.
    #[arg(long, value_enum, default_value_t = ListFormat::Table)]
    format: ListFormat,
    #[command(flatten)]
    connection: Connection,
}

/// Parses a role name.
pub(crate) fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text)
        .ok_or_else(|| format!("{text:?} is not a role: use researcher, steward, operator or node"))
}

pub(crate) fn run(command: OperatorCommand) -> anyhow::Result<()> {
    let runtime = client::runtime()?;
    runtime.block_on(async {
        match command {
            OperatorCommand::Nodes(args) => nodes(args).await,
            OperatorCommand::User(UserCommand::Add(args)) => add_user(args).await,
            OperatorCommand::User(UserCommand::Revoke(args)) => revoke_user(args).await,
            OperatorCommand::User(UserCommand::Rotate(args)) => rotate_user(args).await,
            OperatorCommand::Users(args) => users(args).await,
            OperatorCommand::Study(StudyCommand::Add(args)) => add_study(args).await,
            OperatorCommand::Study(StudyCommand::List(args)) => studies(args).await,
            OperatorCommand::Audit(args) => audit(args).await,
            OperatorCommand::Node(NodeCertificateCommand::Revoke(args)) => {
                revoke_certificate(args).await
            }
        }
    })
}

async fn nodes(args: ConnectionArgs) -> anyhow::Result<()> {
    let operator = client::operator(&args.connection).await?;
    let nodes = all_pages(|page_token| {
        let mut operator = operator.clone();
        async move {
            let page = operator
                .list_nodes(v1::ListNodesRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.nodes, page.next_page_token))
        }
    })
    .await
    .map_err(rpc_error)?;
    if args.format == ListFormat::Json {
        let items: Vec<serde_json::Value> = nodes
            .iter()
            .map(|node| {
                serde_json::json!({
                    "site": node.site,
                    "connected": node.connected,
                    "last_seen": node.last_seen,
                    "k": node.k,
                    "version": node.version,
                    "in_flight": node.in_flight,
                    "audit_head": node.audit_head,
                    "duplicates_refused": node.duplicates_refused,
                    "last_duplicate_at": node.last_duplicate_at,
                    "unavailable": node.unavailable,
                    "store_generation": node.store_generation,
                    "certificate_serial": node.certificate_serial,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    let mut table = new_table(
        &[
            "site",
            "connected",
            "health",
            "last seen",
            "k",
            "version",
            "in flight",
            "audit head",
            "second nodes refused",
        ],
        &["k", "in flight", "second nodes refused"],
    );
    for node in nodes {
        table.add_row(vec![
            shown(&node.site),
            if node.connected { "yes" } else { "no" }.to_string(),
            node_health(&node),
            format_time(node.last_seen),
            node.k.to_string(),
            shown(&node.version),
            node.in_flight.to_string(),
            shown(&node.audit_head),
            match node.duplicates_refused {
                0 => "0".to_string(),
                refused => format!("{refused} (last {})", format_time(node.last_duplicate_at)),
            },
        ]);
    }
    println!("{table}");
    Ok(())
}

/// A node's health as operators read it: `ok`, what stops it, or `-` when it is not
/// connected (nothing is known).
fn node_health(node: &v1::NodeInfo) -> String {
    match (node.connected, node.unavailable.as_str()) {
        (false, _) => "-".to_string(),
        (true, "") => "ok".to_string(),
        (true, reason) => shown(reason),
    }
}

async fn add_user(args: AddUserArgs) -> anyhow::Result<()> {
    client::check_token_out(args.out.as_deref())?;
    let mut operator = client::operator(&args.connection).await?;
    let added = operator
        .add_user(v1::AddUserRequest {
            name: args.name.clone(),
            role: args.role.to_proto() as i32,
            site: args.site.clone(),
            new_site: args.new_site,
            expires_in_seconds: args.expires.unwrap_or(0),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    client::hand_over_token(&added.token, args.out.as_deref())?;
    eprintln!(
        "enrolled {} as {}; its token is shown only once",
        added.name,
        args.role.as_str()
    );
    Ok(())
}

async fn revoke_user(args: UserNameArgs) -> anyhow::Result<()> {
    let mut operator = client::operator(&args.connection).await?;
    let revoked = operator
        .revoke_user(v1::UserRequest {
            name: args.name.clone(),
            expires_in_seconds: 0,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    eprintln!(
        "revoked {}: its token no longer works{}",
        shown(&revoked.name),
        if revoked.role == v1::Role::Node as i32 {
            format!(
                ", and the stream of site {} is closed",
                shown(&revoked.site)
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

async fn rotate_user(args: UserNameArgs) -> anyhow::Result<()> {
    client::check_token_out(args.out.as_deref())?;
    let mut operator = client::operator(&args.connection).await?;
    let rotated = operator
        .rotate_user(v1::UserRequest {
            name: args.name.clone(),
            expires_in_seconds: args.expires.unwrap_or(0),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    client::hand_over_token(&rotated.token, args.out.as_deref())?;
    eprintln!(
        "new token for {}; the old one no longer works; the new one is shown only once",
        shown(&rotated.name)
    );
    Ok(())
}

async fn revoke_certificate(args: RevokeCertificateArgs) -> anyhow::Result<()> {
    let mut operator = client::operator(&args.connection).await?;
    let revoked = operator
        .revoke_node_certificate(v1::RevokeCertificateRequest {
            site: args.site.clone(),
            serial: args.serial.clone().unwrap_or_default(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", shown(&revoked.serial));
    eprintln!(
        "revoked the certificate {} of site {}{}; issue a new one with `ern keygen tls --renew {}`",
        shown(&revoked.serial),
        shown(&revoked.site),
        if revoked.stream_closed {
            ": its node's stream is closed"
        } else {
            ""
        },
        shown(&revoked.site)
    );
    Ok(())
}

async fn add_study(args: AddStudyArgs) -> anyhow::Result<()> {
    let mut operator = client::operator(&args.connection).await?;
    let study = operator
        .add_study(v1::AddStudyRequest {
            id: args.id.clone(),
            title: args.title.clone(),
            purpose: args.purpose.clone(),
            researchers: args.researchers.clone(),
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    println!("{}", shown(&study.id));
    eprintln!(
        "added study {} ({}) with researchers {}",
        shown(&study.id),
        shown(&study.title),
        shown(&study.researchers.join(", "))
    );
    Ok(())
}

async fn studies(args: ConnectionArgs) -> anyhow::Result<()> {
    let operator = client::operator(&args.connection).await?;
    let studies = all_pages(|page_token| {
        let mut operator = operator.clone();
        async move {
            let page = operator
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
}

async fn users(args: ConnectionArgs) -> anyhow::Result<()> {
    let operator = client::operator(&args.connection).await?;
    let users = all_pages(|page_token| {
        let mut operator = operator.clone();
        async move {
            let page = operator
                .list_users(v1::ListUsersRequest {
                    page_size: PAGE_SIZE,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.users, page.next_page_token))
        }
    })
    .await
    .map_err(rpc_error)?;
    let role_of = |user: &v1::UserInfo| {
        v1::Role::try_from(user.role)
            .ok()
            .and_then(Role::from_proto)
            .map_or("unknown", Role::as_str)
    };
    if args.format == ListFormat::Json {
        let items: Vec<serde_json::Value> = users
            .iter()
            .map(|user| {
                serde_json::json!({
                    "name": user.name,
                    "role": role_of(user),
                    "site": user.site,
                    "enrolled_at": user.created_at,
                    "expires_at": user.expires_at,
                })
            })
            .collect();
        return print_json(&serde_json::Value::Array(items));
    }
    let mut table = new_table(&["name", "role", "site", "enrolled", "expires"], &[]);
    for user in users {
        let role = role_of(&user);
        table.add_row(vec![
            shown(&user.name),
            role.to_string(),
            shown(&user.site),
            format_time(user.created_at),
            match user.expires_at {
                0 => "never".to_string(),
                at => format_time(at),
            },
        ]);
    }
    println!("{table}");
    Ok(())
}

async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let mut operator = client::operator(&args.connection).await?;
    let summary = operator
        .audit_summary(v1::AuditSummaryRequest {
            recent: args.recent,
        })
        .await
        .map_err(rpc_error)?
        .into_inner();
    if args.format == ListFormat::Json {
        let counts: serde_json::Map<String, serde_json::Value> = summary
            .counts
            .iter()
            .map(|count| (count.kind.clone(), count.count.into()))
            .collect();
        let recent: Vec<serde_json::Value> = summary
            .recent
            .iter()
            .map(|event| {
                serde_json::json!({
                    "at": event.at,
                    "actor": event.actor,
                    "event": event.kind,
                    "question": event.query_id,
                    "site": event.site,
                    "detail": event.detail,
                })
            })
            .collect();
        return print_json(&serde_json::json!({ "counts": counts, "recent": recent }));
    }
    let mut counts = new_table(&["event", "count"], &["count"]);
    for count in summary.counts {
        counts.add_row(vec![shown(&count.kind), count.count.to_string()]);
    }
    println!("{counts}");
    let mut recent = new_table(
        &["time", "actor", "event", "question", "site", "detail"],
        &[],
    );
    for event in summary.recent {
        recent.add_row(vec![
            format_time(event.at),
            shown(&event.actor),
            shown(&event.kind),
            shown(&event.query_id),
            shown(&event.site),
            shown(&event.detail),
        ]);
    }
    println!("{recent}");
    Ok(())
}
