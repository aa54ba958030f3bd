//! `coordinator.toml`: where the coordinator listens, where its state lives, its timing.
//!
//! ```toml
//! listen = "127.0.0.1:50051"      # address:port to serve gRPC on
//! database = "coordinator.db"     # SQLite file; relative to this file's directory
//! site_timeout_seconds = 300      # a dispatched question may take this long at a site
//! default_deadline_hours = 168    # how long a question waits for approvals by default
//! max_deadline_hours = 720        # the longest deadline a researcher may ask for
//! heartbeat_seconds = 10          # nodes send a heartbeat this often
//!
//! [tls]                           # TLS on every endpoint (see `ern keygen tls`)
//! cert = "tls/coordinator.pem"    # the coordinator's certificate
//! key = "tls/coordinator.key"     # its private key
//! client_ca = "tls/ca.pem"        # the network CA: node certificates must chain to it
//!
//! [limits]                        # all optional; these are the defaults
//! max_user_message_bytes = 262144 # largest message of a researcher, steward, operator
//! max_node_message_bytes = 4194304 # largest message of a node (its released partials)
//! max_sql_bytes = 65536           # largest question (the network's one SQL size limit)
//! submits_per_minute = 60         # per user, also the burst
//! max_open_questions = 100        # per researcher: neither complete nor failed
//! rpc_timeout_seconds = 30        # deadline of every call (node streams excepted)
//! max_connections = 4096          # open at once; more wait in the kernel's backlog
//! max_connections_per_source = 32 # open at once from one IPv4 address or IPv6 /64
//! max_handshakes_per_source = 8   # unfinished handshakes (TLS, HTTP/2 preface) per source
//! handshake_timeout_seconds = 10  # time to finish TLS and send the HTTP/2 preface
//! max_connections_per_user = 16   # connections one researcher, steward or operator holds
//! ```
//!
//! The coordinator needs a file descriptor per connection: it raises its soft
//! open-files limit to the hard one at start, and warns when that is below
//! `max_connections` plus a reserve for its database and logs.
//!
//! Without `[tls]` the coordinator refuses to start unless `plaintext = true` is set and
//! `listen` is a loopback address: plaintext never leaves the machine, and it is logged
//! as a warning every start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::Timing;
use crate::limits::{ConnectionLimits, Limits, MESSAGE_ROOM_BESIDE_SQL};

/// Errors reading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file the configuration names (by `key`) could not be read.
    #[error("{config}: {key} = \"{file}\": {source}")]
    NamedFile {
        /// The configuration file.
        config: PathBuf,
        /// The key that names the file, e.g. `tls.cert`.
        key: &'static str,
        /// The file as the configuration names it.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: SocketAddr,
    database: PathBuf,
    #[serde(default = "default_site_timeout")]
    site_timeout_seconds: u64,
    #[serde(default = "default_deadline_hours")]
    default_deadline_hours: u64,
    #[serde(default = "max_deadline_hours")]
    max_deadline_hours: u64,
    #[serde(default = "default_heartbeat")]
    heartbeat_seconds: u64,
    #[serde(default)]
    plaintext: bool,
    tls: Option<RawTls>,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_user_message_bytes: usize,
    max_node_message_bytes: usize,
    max_sql_bytes: usize,
    submits_per_minute: u32,
    max_open_questions: u32,
    rpc_timeout_seconds: u64,
    max_connections: usize,
    max_connections_per_source: usize,
    max_handshakes_per_source: usize,
    handshake_timeout_seconds: u64,
    max_connections_per_user: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let limits = Limits::default();
        RawLimits {
            max_user_message_bytes: limits.max_user_message_bytes,
            max_node_message_bytes: limits.max_node_message_bytes,
            max_sql_bytes: limits.max_sql_bytes,
            submits_per_minute: limits.submits_per_minute,
            max_open_questions: limits.max_open_questions,
            rpc_timeout_seconds: limits.rpc_timeout.as_secs(),
            max_connections: limits.connections.max_connections,
            max_connections_per_source: limits.connections.per_source,
            max_handshakes_per_source: limits.connections.handshakes_per_source,
            handshake_timeout_seconds: limits.connections.handshake_timeout.as_secs(),
            max_connections_per_user: limits.connections.per_user,
        }
    }
}

impl RawLimits {
    /// The limits, if each is positive and the SQL limit fits in a user's message.
    fn checked(&self) -> Result<Limits, String> {
        let positive = [
            self.max_user_message_bytes,
            self.max_node_message_bytes,
            self.max_sql_bytes,
            self.submits_per_minute as usize,
            self.max_open_questions as usize,
            self.rpc_timeout_seconds as usize,
            self.max_connections,
            self.max_connections_per_source,
            self.max_handshakes_per_source,
            self.handshake_timeout_seconds as usize,
            self.max_connections_per_user,
        ];
        if positive.contains(&0) {
            return Err("limits must be positive".into());
        }
        if self.max_sql_bytes.saturating_add(MESSAGE_ROOM_BESIDE_SQL) > self.max_user_message_bytes
        {
            return Err(format!(
                "max_sql_bytes ({}) must leave {MESSAGE_ROOM_BESIDE_SQL} bytes of \
                 max_user_message_bytes ({}) for a question's title and purpose",
                self.max_sql_bytes, self.max_user_message_bytes
            ));
        }
        Ok(Limits {
            max_user_message_bytes: self.max_user_message_bytes,
            max_node_message_bytes: self.max_node_message_bytes,
            max_sql_bytes: self.max_sql_bytes,
            submits_per_minute: self.submits_per_minute,
            max_open_questions: self.max_open_questions,
            rpc_timeout: Duration::from_secs(self.rpc_timeout_seconds),
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                per_source: self.max_connections_per_source,
                handshakes_per_source: self.max_handshakes_per_source,
                handshake_timeout: Duration::from_secs(self.handshake_timeout_seconds),
                per_user: self.max_connections_per_user,
                ..ConnectionLimits::default()
            },
        })
    }
}

/// The coordinator's certificate, key and the CA its nodes' certificates chain to, PEM.
#[derive(Clone)]
pub struct ServerTls {
    /// The server certificate (chain).
    pub cert_pem: Vec<u8>,
    /// Its private key. Secret.
    pub key_pem: Vec<u8>,
    /// The network CA, for node client certificates.
    pub client_ca_pem: Vec<u8>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys never reach logs.
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// How the coordinator's endpoints are reached.
#[derive(Debug, Clone)]
pub enum Transport {
    /// TLS on every endpoint; nodes authenticate with client certificates.
    Tls(ServerTls),
    /// Plaintext, on a loopback address only (tests, demos, a single machine).
    Plaintext,
}

fn default_site_timeout() -> u64 {
    300
}
fn default_deadline_hours() -> u64 {
    168
}
fn max_deadline_hours() -> u64 {
    720
}
fn default_heartbeat() -> u64 {
    10
}

/// A coordinator's configuration, paths resolved.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// Address to serve on.
    pub listen: SocketAddr,
    /// The SQLite database file.
    pub database: PathBuf,
    /// Lifecycle timing.
    pub timing: Timing,
    /// TLS or (loopback only) plaintext.
    pub transport: Transport,
    /// Sizes, rates and deadlines.
    pub limits: Limits,
}

impl CoordinatorConfig {
    /// Reads `path`; relative paths inside are relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let invalid = |message: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: message.to_string(),
        };
        if raw.site_timeout_seconds == 0
            || raw.heartbeat_seconds == 0
            || raw.default_deadline_hours == 0
        {
            return Err(invalid(
                "timeouts, deadlines and heartbeats must be positive",
            ));
        }
        // Beyond ten years a deadline is a mistake; the cap also keeps seconds in range.
        if raw.max_deadline_hours > 24 * 366 * 10 {
            return Err(invalid("max_deadline_hours is at most 87840 (ten years)"));
        }
        if raw.default_deadline_hours > raw.max_deadline_hours {
            return Err(invalid(
                "default_deadline_hours must not exceed max_deadline_hours",
            ));
        }
        let limits = raw.limits.checked().map_err(|message| invalid(&message))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let transport = match (&raw.tls, raw.plaintext) {
            (Some(_), true) => {
                return Err(invalid("set either [tls] or plaintext = true, not both"));
            }
            (None, false) => {
                return Err(invalid(
                    "no [tls] section: configure TLS (see `ern keygen tls`), or set \
                     plaintext = true to serve without encryption on a loopback address",
                ));
            }
            (None, true) if !raw.listen.ip().is_loopback() => {
                return Err(invalid(
                    "plaintext = true is allowed only on a loopback listen address \
                     (127.0.0.1 or ::1); configure [tls] to serve a network",
                ));
            }
            (None, true) => Transport::Plaintext,
            (Some(tls), false) => {
                let read = |key: &'static str, file: &Path| {
                    std::fs::read(base.join(file)).map_err(|source| ConfigError::NamedFile {
                        config: path.to_path_buf(),
                        key,
                        file: file.to_path_buf(),
                        source,
                    })
                };
                Transport::Tls(ServerTls {
                    cert_pem: read("tls.cert", &tls.cert)?,
                    key_pem: read("tls.key", &tls.key)?,
                    client_ca_pem: read("tls.client_ca", &tls.client_ca)?,
                })
            }
        };
        Ok(CoordinatorConfig {
            listen: raw.listen,
            database: base.join(raw.database),
            transport,
            limits,
            timing: Timing {
                site_timeout: Duration::from_secs(raw.site_timeout_seconds),
                default_deadline: Duration::from_secs(raw.default_deadline_hours * 3600),
                max_deadline: Duration::from_secs(raw.max_deadline_hours * 3600),
                heartbeat: Duration::from_secs(raw.heartbeat_seconds),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<CoordinatorConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["c.pem", "c.key", "ca.pem"] {
            std::fs::write(dir.path().join(file), "pem").expect("write");
        }
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).expect("write");
        CoordinatorConfig::load(&path)
    }

    const TLS: &str = "[tls]\ncert = \"c.pem\"\nkey = \"c.key\"\nclient_ca = \"ca.pem\"\n";

    fn message(result: Result<CoordinatorConfig, ConfigError>) -> String {
        result.expect_err("refused").to_string()
    }

    #[test]
    fn plaintext_only_when_asked_for_and_only_on_loopback() {
        let base = "database = \"c.db\"\n";
        let config = load(&format!(
            "listen = \"127.0.0.1:1\"\n{base}plaintext = true\n"
        ))
        .expect("loopback plaintext");
        assert!(matches!(config.transport, Transport::Plaintext));
        assert!(message(load(&format!("listen = \"127.0.0.1:1\"\n{base}"))).contains("no [tls]"));
        assert!(
            message(load(&format!(
                "listen = \"0.0.0.0:1\"\n{base}plaintext = true\n"
            )))
            .contains("only on a loopback")
        );
        assert!(
            message(load(&format!(
                "listen = \"127.0.0.1:1\"\n{base}plaintext = true\n{TLS}"
            )))
            .contains("not both")
        );
        let config =
            load(&format!("listen = \"0.0.0.0:1\"\n{base}{TLS}")).expect("TLS on any address");
        assert!(matches!(config.transport, Transport::Tls(_)));
        assert_eq!(config.limits, Limits::default());
    }

    #[test]
    fn limits_are_read_and_must_be_positive() {
        let base = "listen = \"127.0.0.1:1\"\ndatabase = \"c.db\"\nplaintext = true\n";
        let config = load(&format!(
            "{base}[limits]\nmax_sql_bytes = 100\nsubmits_per_minute = 2\n"
        ))
        .expect("limits");
        assert_eq!(config.limits.max_sql_bytes, 100);
        assert_eq!(config.limits.submits_per_minute, 2);
        assert!(
            message(load(&format!("{base}[limits]\nrpc_timeout_seconds = 0\n")))
                .contains("positive")
        );
        assert!(
            load(&format!("{base}[limits]\nmax_sql = 1\n")).is_err(),
            "unknown key"
        );
        assert!(
            message(load(&format!("{base}[limits]\nmax_sql_bytes = 300000\n")))
                .contains("max_user_message_bytes")
        );
        let config = load(&format!(
            "{base}[limits]\nmax_user_message_bytes = 1048576\nmax_sql_bytes = 300000\n"
        ))
        .expect("room for the SQL");
        assert_eq!(config.limits.max_sql_bytes, 300_000);
    }

    #[test]
    fn deadlines_have_a_ceiling() {
        let base = "listen = \"127.0.0.1:1\"\ndatabase = \"c.db\"\nplaintext = true\n";
        let config = load(base).expect("defaults");
        assert_eq!(config.timing.max_deadline.as_secs(), 30 * 24 * 3600);
        assert!(
            message(load(&format!("{base}default_deadline_hours = 800\n")))
                .contains("max_deadline_hours")
        );
        assert!(
            message(load(&format!("{base}max_deadline_hours = 10000000\n"))).contains("ten years")
        );
    }
}
