//! Connecting the command line to a coordinator: address, token and network CA from
//! flags or `ERN_COORDINATOR` / `ERN_TOKEN` / `ERN_CA`, TLS (plaintext only to loopback),
//! a bearer header and a deadline on every call, and gRPC errors turned into plain
//! sentences.

use std::time::Duration;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ern_proto::transport::{self, BearerToken, ClientTls};
use ern_proto::v1::operator_client::OperatorClient;
use ern_proto::v1::researcher_client::ResearcherClient;
use ern_proto::v1::steward_client::StewardClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Where the coordinator is and who is calling.
#[derive(Clone, Args)]
pub(crate) struct Connection {
    /// The coordinator's URL.
    #[arg(
        long,
        env = "ERN_COORDINATOR",
        default_value = "https://127.0.0.1:50051"
    )]
    pub(crate) coordinator: String,
    /// Your bearer token (from `ern operator user add`). On a shared machine prefer
    /// --token-file: a command line is visible to every user.
    #[arg(
        long,
        env = "ERN_TOKEN",
        hide_env_values = true,
        required_unless_present = "token_file",
        conflicts_with = "token_file"
    )]
    pub(crate) token: Option<String>,
    /// A file holding your bearer token (its first line), readable by you alone.
    #[arg(long, env = "ERN_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// The network CA certificate (PEM), needed for https:// coordinators.
    #[arg(long, env = "ERN_CA")]
    pub(crate) ca: Option<PathBuf>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens never reach logs.
        f.debug_struct("Connection")
            .field("coordinator", &self.coordinator)
            .field("ca", &self.ca)
            .finish_non_exhaustive()
    }
}

/// The deadline of every call the command line makes.
const CALL_DEADLINE: Duration = Duration::from_secs(60);

/// A channel with the caller's token.
pub(crate) type Authed = InterceptedService<Channel, BearerToken>;

/// Opens a channel to the coordinator.
pub(crate) async fn channel(connection: &Connection) -> anyhow::Result<(Channel, BearerToken)> {
    let tls = match &connection.ca {
        Some(path) => Some(ClientTls {
            ca_pem: std::fs::read(path)
                .with_context(|| format!("reading the network CA {}", path.display()))?,
            ..ClientTls::default()
        }),
        None => None,
    };
    let endpoint =
        transport::endpoint(&connection.coordinator, tls.as_ref())?.timeout(CALL_DEADLINE);
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "connecting to the coordinator at {}",
            connection.coordinator
        )
    })?;
    Ok((channel, BearerToken::new(&connection.bearer_text()?)?))
}

impl Connection {
    /// The token as given: on the command line or in the environment, or read from the
    /// token file.
    fn bearer_text(&self) -> anyhow::Result<String> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(token.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?;
                let token = text.lines().next().unwrap_or("").trim().to_string();
                anyhow::ensure!(
                    !token.is_empty(),
                    "the token file {} is empty",
                    path.display()
                );
                Ok(token)
            }
            (None, None) => anyhow::bail!(
                "give --token TOKEN or --token-file FILE (or ERN_TOKEN / ERN_TOKEN_FILE)"
            ),
        }
    }
}

/// A researcher's client.
pub(crate) async fn researcher(
    connection: &Connection,
) -> anyhow::Result<ResearcherClient<Authed>> {
    let (channel, bearer) = channel(connection).await?;
    Ok(ResearcherClient::with_interceptor(channel, bearer))
}

/// A steward's client.
pub(crate) async fn steward(connection: &Connection) -> anyhow::Result<StewardClient<Authed>> {
    let (channel, bearer) = channel(connection).await?;
    Ok(StewardClient::with_interceptor(channel, bearer))
}

/// An operator's client.
pub(crate) async fn operator(connection: &Connection) -> anyhow::Result<OperatorClient<Authed>> {
    let (channel, bearer) = channel(connection).await?;
    Ok(OperatorClient::with_interceptor(channel, bearer))
}

/// Entries asked for per page of a list call (the coordinator's maximum).
pub(crate) const PAGE_SIZE: u32 = 1000;

/// Every entry of a paged list call: `page` is called with each page token (empty
/// first) and returns one page's entries and the next token, until that is empty.
pub(crate) async fn all_pages<T, Page, Fut>(mut page: Page) -> Result<Vec<T>, tonic::Status>
where
    Page: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
{
    let mut entries = Vec::new();
    let mut token = String::new();
    loop {
        let (mut found, next) = page(token).await?;
        entries.append(&mut found);
        if next.is_empty() {
            return Ok(entries);
        }
        token = next;
    }
}

/// A gRPC error as a sentence: what kind of failure, then the coordinator's message,
/// escaped.
pub(crate) fn rpc_error(status: tonic::Status) -> anyhow::Error {
    let kind = match status.code() {
        tonic::Code::InvalidArgument => "not accepted",
        tonic::Code::Unauthenticated => "not authenticated",
        tonic::Code::PermissionDenied => "not allowed",
        tonic::Code::NotFound => "not found",
        tonic::Code::FailedPrecondition => "not possible now",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::Unavailable => "coordinator unavailable",
        tonic::Code::ResourceExhausted => "limit reached",
        tonic::Code::DeadlineExceeded => "timed out",
        _ => "coordinator error",
    };
    // The message is the coordinator's, which may quote what others wrote: escaped, and
    // no longer than a screenful.
    anyhow::anyhow!(
        "{kind}: {}",
        ern_queries::shown::shown_bounded(status.message(), 4000)
    )
}

/// The runtime of a coordinator, a node or the demo: its threads plan and run questions,
/// so each gets the stack a question at the depth limit needs.
pub(crate) fn server_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(ern_queries::validate::PLANNING_STACK_BYTES)
        .build()
        .context("starting the runtime")
}

/// A single-threaded runtime for one command's calls.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_time(seconds: u64) -> String {
    if seconds == 0 {
        return "-".into();
    }
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Refuses, before a token is made, an `--out` file that exists: the token could not
/// be written there, and it is shown only once.
pub(crate) fn check_token_out(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(path) = out {
        anyhow::ensure!(
            !path.exists(),
            "{} exists: a token is never written over a file; name a new one",
            path.display()
        );
    }
    Ok(())
}

/// Hands a new token over: printed on stdout, or, with `out`, written to that file with
/// mode 0600 (owner only; never over an existing file) and not printed.
pub(crate) fn hand_over_token(token: &str, out: Option<&std::path::Path>) -> anyhow::Result<()> {
    match out {
        None => println!("{token}"),
        Some(path) => {
            ern_node::pseudonym::write_secret_file(path, format!("{token}\n").as_bytes())
                .with_context(|| format!("writing the token to {}", path.display()))?;
        }
    }
    Ok(())
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm, the inverse of
/// the one in [`format_time`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a point in time for a list filter: a UTC date (`2026-11-30`), a UTC date and
/// time (`2026-11-30 14:05:00`, `2026-11-30T14:05:00Z`, or as [`format_time`] prints
/// it), or a duration back from `now` (`7d`, `12h`). Seconds since 1970.
pub(crate) fn parse_time(text: &str, now: u64) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(ago) = parse_duration(text) {
        return Ok(now.saturating_sub(ago.as_secs()));
    }
    let wrong = || {
        format!(
            "{text:?} is not a time: give a UTC date (2026-11-30), a date and time \
             (2026-11-30 14:05:00) or a duration back from now (7d, 12h)"
        )
    };
    let clean = text.trim_end_matches(" UTC").trim_end_matches('Z');
    let (date, clock) = match clean.split_once(['T', ' ']) {
        Some((date, clock)) => (date, Some(clock)),
        None => (clean, None),
    };
    let numbers = |part: &str, sep: char, count: usize| -> Result<Vec<i64>, String> {
        let fields: Vec<&str> = part.split(sep).collect();
        if fields.len() != count || fields.iter().any(|f| f.is_empty() || f.len() > 4) {
            return Err(wrong());
        }
        fields
            .iter()
            .map(|f| f.parse::<i64>().map_err(|_| wrong()))
            .collect()
    };
    let ymd = numbers(date, '-', 3)?;
    let (year, month, day) = (ymd[0], ymd[1], ymd[2]);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return Err(wrong());
    }
    let seconds_of_day = match clock {
        None => 0,
        Some(clock) => {
            let hms = numbers(clock, ':', 3)?;
            if !(0..24).contains(&hms[0])
                || !(0..60).contains(&hms[1])
                || !(0..60).contains(&hms[2])
            {
                return Err(wrong());
            }
            hms[0] * 3600 + hms[1] * 60 + hms[2]
        }
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + seconds_of_day;
    u64::try_from(seconds).map_err(|_| wrong())
}

/// Parses a duration such as `7d`, `12h`, `30m` or `90s`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 7d, 12h, 30m or 90s"))?;
    let unit_seconds: u64 = match unit {
        "d" => 86_400,
        "h" => 3600,
        "m" => 60,
        "s" | "" => 1,
        _ => return Err(format!("{text:?}: the unit is d, h, m or s")),
    };
    let seconds = value
        .checked_mul(unit_seconds)
        .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    if seconds == 0 {
        return Err("a duration must be positive".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_they_are_printed() {
        for seconds in [0_u64, 86_399, 951_782_400, 1_796_083_200, 1_796_169_599] {
            let printed = format_time(seconds.max(1));
            assert_eq!(parse_time(&printed, 0), Ok(seconds.max(1)), "{printed}");
        }
        assert_eq!(parse_time("2026-12-02", 0), Ok(1_796_169_600));
        assert_eq!(parse_time("2026-12-02T00:00:10Z", 0), Ok(1_796_169_610));
        assert_eq!(parse_time("7d", 1_000_000), Ok(1_000_000 - 7 * 86_400));
        for wrong in [
            "yesterday",
            "2026-13-01",
            "2026-12-02 25:00:00",
            "12/02/2026",
            "",
        ] {
            assert!(parse_time(wrong, 0).is_err(), "{wrong}");
        }
    }
}
