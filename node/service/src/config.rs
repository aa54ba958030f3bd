//! `node.toml`: everything a hospital node trusts, and where its coordinator is.
//!
//! ```toml
//! site_id = "hospital-1"                 # this site's id, as enrolled at the coordinator
//! store = "store"                        # the Parquet store written by `ern ingest`
//! audit_log = "audit.log"                # the node's audit log (default: beside this
//!                                        #   file; never inside the store)
//! stewards = ["alice.pub", "bob.pub"]    # this site's steward public keys
//! k = 5                                  # minimum distinct patients per released group
//! memory_limit_mb = 1024                 # memory for one query
//! time_limit_seconds = 60                # time for one query
//! max_groups = 10000                     # most groups one query may release
//! max_concurrent_queries = 2             # questions run at once
//! dominance_top = 2                      # a released SUM or AVG is dropped where its
//! dominance_percent = 85                 #   2 largest patients hold over 85 % of it
//! coordinator = "https://coordinator.example.org:50051" # where to dial out to
//! token_file = "node.token"              # this node's token (from `ern operator user add`)
//!
//! [tls]                                  # mutual TLS (see `ern keygen tls`)
//! ca = "tls/ca.pem"                      # the network CA: the only root trusted
//! cert = "tls/node-hospital-1.pem"       # this node's certificate (names its site)
//! key = "tls/node-hospital-1.key"        # its private key
//! # domain = "coordinator.example.org"   # if the certificate names another host than the URL
//!
//! [secure_aggregation]                   # k on network totals (DESIGN.md); off by default
//! enabled = true
//! identity_key = "site/site.key"         # this site's identity key (`ern keygen site`)
//! min_secure_sites = 3                   # fewest participants in a round (at least 3)
//! max_cells = 65536                      # largest public domain of a question
//!
//! [secure_aggregation.roster]            # the peer sites' identity public keys: the only
//! hospital-2 = "site-keys/hospital-2.pub" #  participants this node accepts (64 hex
//! hospital-3 = "3f0c…"                   #  characters, or a file holding them)
//!
//! [privacy]                              # differential privacy (DESIGN.md); off by default
//! enabled = true
//! secret = "noise.key"                   # this node's noise secret (`ern keygen noise`),
//!                                        #   beside the pseudonymisation key, not in the store
//! mechanism = "discrete-laplace"         # or "discrete-gaussian"
//! epsilon = 0.5                          # charged per question
//! budget_per_study = 5.0                 # a study's total at this site
//! max_groups_per_patient = 1             # groups one patient counts in
//! max_rows_per_patient = 1               # rows one patient counts with in a group
//! ```
//!
//! Relative paths are relative to the file's directory. Only `site_id`, `store`,
//! `stewards`, `coordinator` and `token_file` are required, and either `[tls]` or, for
//! an `http://` coordinator on a loopback address only, `plaintext = true`. Nothing the
//! coordinator sends can change any of these.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use ern_proto::transport::{BearerToken, ClientTls, is_plaintext};

use ern_queries::Dominance;

use crate::audit::AUDIT_FILE;
use crate::engine::{MIN_K, MIN_SECURE_SITES, NodeFiles, NodePolicy, SecurePolicy};
use crate::privacy::policy::{Epsilon, Mechanism, PrivacyPolicy};
use crate::privacy::secret::NoiseSecret;
use crate::secure::identity::{Roster, SiteIdentity, SitePublicKey};
use crate::steward_key::{StewardKeyError, StewardPublicKey};

/// Errors reading a node configuration.
#[derive(Debug, thiserror::Error)]
pub enum NodeConfigError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (for TOML errors, with line and column).
        message: String,
    },
    /// A file the configuration names (by `key`) could not be read or used.
    #[error("{config}: {key} = \"{file}\": {message}")]
    NamedFile {
        /// The configuration file.
        config: PathBuf,
        /// The key that names the file, e.g. `stewards[0]` or `tls.cert`.
        key: String,
        /// The file as the configuration names it.
        file: PathBuf,
        /// Why it could not be read or used.
        message: String,
    },
    /// A steward key could not be loaded.
    #[error(transparent)]
    StewardKey(#[from] StewardKeyError),
    /// The site identity key or a roster key could not be loaded.
    #[error("[secure_aggregation] {0}")]
    SecureKey(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeConfig {
    site_id: String,
    store: PathBuf,
    audit_log: Option<PathBuf>,
    stewards: Vec<PathBuf>,
    #[serde(default = "default_k")]
    k: u32,
    #[serde(default = "default_memory")]
    memory_limit_mb: usize,
    #[serde(default = "default_time")]
    time_limit_seconds: u64,
    #[serde(default = "default_groups")]
    max_groups: usize,
    #[serde(default = "default_concurrent")]
    max_concurrent_queries: usize,
    #[serde(default = "default_dominance_top")]
    dominance_top: usize,
    #[serde(default = "default_dominance_percent")]
    dominance_percent: f64,
    coordinator: String,
    token_file: PathBuf,
    #[serde(default)]
    plaintext: bool,
    tls: Option<RawTls>,
    secure_aggregation: Option<RawSecure>,
    privacy: Option<RawPrivacy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrivacy {
    #[serde(default)]
    enabled: bool,
    secret: Option<PathBuf>,
    mechanism: Option<String>,
    epsilon: Option<f64>,
    budget_per_study: Option<f64>,
    max_groups_per_patient: Option<u32>,
    max_rows_per_patient: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecure {
    #[serde(default)]
    enabled: bool,
    identity_key: Option<PathBuf>,
    #[serde(default = "default_min_secure_sites")]
    min_secure_sites: usize,
    #[serde(default = "default_max_cells")]
    max_cells: usize,
    #[serde(default)]
    roster: std::collections::BTreeMap<String, String>,
}

fn default_min_secure_sites() -> usize {
    MIN_SECURE_SITES
}

fn default_max_cells() -> usize {
    ern_queries::domain::MAX_SECURE_CELLS
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    domain: Option<String>,
}

fn default_concurrent() -> usize {
    2
}

fn default_dominance_top() -> usize {
    Dominance::default().top
}

fn default_dominance_percent() -> f64 {
    Dominance::default().max_share * 100.0
}

fn default_k() -> u32 {
    5
}
fn default_memory() -> usize {
    1024
}
fn default_time() -> u64 {
    60
}
fn default_groups() -> usize {
    10_000
}

/// A node's configuration, loaded and checked.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The store directory.
    pub store: PathBuf,
    /// The node's audit log (its record of executed approvals lies beside it).
    pub audit_log: PathBuf,
    /// The node's policy.
    pub policy: NodePolicy,
    /// The coordinator's URL.
    pub coordinator: String,
    /// The node's bearer token.
    pub token: BearerToken,
    /// The network CA and this node's certificate; `None` for loopback plaintext.
    pub tls: Option<ClientTls>,
    /// Questions run at once.
    pub max_concurrent: usize,
}

impl NodeConfig {
    /// Where the node's files are: the store and its own audit log.
    pub fn files(&self) -> NodeFiles {
        NodeFiles {
            store: self.store.clone(),
            audit_log: self.audit_log.clone(),
        }
    }

    /// Reads `path`, the steward keys and the token it names.
    pub fn load(path: &Path) -> Result<Self, NodeConfigError> {
        let read = |file: &Path| {
            std::fs::read_to_string(file).map_err(|source| NodeConfigError::Read {
                path: file.to_path_buf(),
                source,
            })
        };
        let invalid = |message: String| NodeConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawNodeConfig =
            toml::from_str(&read(path)?).map_err(|e| invalid(e.to_string()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if raw.stewards.is_empty() {
            return Err(invalid("at least one steward public key is needed".into()));
        }
        if raw.k < MIN_K {
            return Err(invalid(format!("k must be at least {MIN_K}")));
        }
        if raw.time_limit_seconds == 0
            || raw.memory_limit_mb == 0
            || raw.max_groups == 0
            || raw.max_concurrent_queries == 0
        {
            return Err(invalid("limits must be positive".into()));
        }
        if raw.dominance_top == 0
            || !(raw.dominance_percent > 0.0 && raw.dominance_percent <= 100.0)
        {
            return Err(invalid(
                "dominance_top must be at least 1 and dominance_percent within (0, 100]".into(),
            ));
        }
        let named = |key: String, file: &Path, message: String| NodeConfigError::NamedFile {
            config: path.to_path_buf(),
            key,
            file: file.to_path_buf(),
            message,
        };
        let stewards = raw
            .stewards
            .iter()
            .enumerate()
            .map(|(index, file)| {
                StewardPublicKey::load(&base.join(file)).map_err(|error| {
                    named(
                        format!("stewards[{index}]"),
                        file,
                        without_path(&error, file),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let token = std::fs::read_to_string(base.join(&raw.token_file))
            .map_err(|source| named("token_file".into(), &raw.token_file, source.to_string()))?;
        if token.trim().is_empty() {
            return Err(invalid(format!(
                "the token file {} is empty",
                raw.token_file.display()
            )));
        }
        let token = BearerToken::new(&token).map_err(|e| invalid(e.to_string()))?;
        let tls = transport(&raw, base).map_err(|message| match message {
            TransportProblem::Invalid(message) => invalid(message),
            TransportProblem::Read(error) => error,
            TransportProblem::Named { key, file, message } => named(key, &file, message),
        })?;
        let mut policy = NodePolicy::new(&raw.site_id, stewards);
        policy.k = raw.k;
        policy.memory_limit = raw.memory_limit_mb << 20;
        policy.time_limit = Duration::from_secs(raw.time_limit_seconds);
        policy.max_groups = raw.max_groups;
        policy.dominance = Dominance {
            top: raw.dominance_top,
            max_share: raw.dominance_percent / 100.0,
        };
        policy.secure = secure_policy(raw.secure_aggregation.as_ref(), &raw.site_id, base)
            .map_err(|problem| match problem {
                TransportProblem::Invalid(message) => invalid(message),
                TransportProblem::Read(error) => error,
                TransportProblem::Named { key, file, message } => named(key, &file, message),
            })?;
        policy.privacy = privacy_policy(raw.privacy.as_ref(), base, &base.join(&raw.store))
            .map_err(|problem| match problem {
                TransportProblem::Invalid(message) => invalid(message),
                TransportProblem::Read(error) => error,
                TransportProblem::Named { key, file, message } => named(key, &file, message),
            })?;
        let store = base.join(&raw.store);
        let audit_log = base.join(raw.audit_log.as_deref().unwrap_or(Path::new(AUDIT_FILE)));
        if std::fs::symlink_metadata(&audit_log).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(invalid(format!(
                "audit_log {} is a symbolic link: name the file itself (a link into the store would be lost with it)",
                audit_log.display()
            )));
        }
        if lies_inside(&audit_log, &store) {
            return Err(invalid(format!(
                "audit_log {} lies inside the store: the store is replaced by every ingest and the log must outlive it; keep it beside this file (the default)",
                audit_log.display()
            )));
        }
        Ok(NodeConfig {
            store,
            audit_log,
            policy,
            coordinator: raw.coordinator,
            token,
            tls,
            max_concurrent: raw.max_concurrent_queries,
        })
    }
}

/// Whether the file `path` lies inside the directory `dir` (both resolved as far as
/// they exist, so `store/../store/x` and links count).
fn lies_inside(path: &Path, dir: &Path) -> bool {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved.starts_with(&dir);
    }
    let parent = path.parent().unwrap_or(path);
    std::fs::canonicalize(parent)
        .unwrap_or_else(|_| parent.to_path_buf())
        .starts_with(dir)
}

/// The `[secure_aggregation]` section: off when absent; on, it needs this site's
/// identity key and a roster that holds this site's own public key or two peers at least.
fn secure_policy(
    raw: Option<&RawSecure>,
    site_id: &str,
    base: &Path,
) -> Result<SecurePolicy, TransportProblem> {
    let Some(raw) = raw else {
        return Ok(SecurePolicy::default());
    };
    let invalid =
        |message: String| TransportProblem::Invalid(format!("[secure_aggregation] {message}"));
    if raw.min_secure_sites < MIN_SECURE_SITES {
        return Err(invalid(format!(
            "min_secure_sites must be at least {MIN_SECURE_SITES}"
        )));
    }
    if raw.max_cells == 0 || raw.max_cells > ern_queries::domain::MAX_SECURE_CELLS {
        return Err(invalid(format!(
            "max_cells must be within 1..={}",
            ern_queries::domain::MAX_SECURE_CELLS
        )));
    }
    let identity = match &raw.identity_key {
        Some(path) => Some(std::sync::Arc::new(
            SiteIdentity::load(&base.join(path))
                .map_err(|e| TransportProblem::Read(NodeConfigError::SecureKey(e.to_string())))?,
        )),
        None if raw.enabled => {
            return Err(invalid(
                "identity_key is needed when enabled (make one with `ern keygen site --out DIR`)"
                    .into(),
            ));
        }
        None => None,
    };
    let mut entries = Vec::new();
    for (site, key) in &raw.roster {
        let public = match SitePublicKey::from_hex(key.trim()) {
            Some(public) => public,
            None => SitePublicKey::load(&base.join(key)).map_err(|e| {
                TransportProblem::Read(NodeConfigError::SecureKey(format!(
                    "roster entry {site}: {e}"
                )))
            })?,
        };
        entries.push((site.clone(), public));
    }
    if let Some(identity) = &identity {
        let own = identity.public_key();
        match entries.iter().find(|(site, _)| site == site_id) {
            Some((_, listed)) if listed.to_hex() != own.to_hex() => {
                return Err(invalid(format!(
                    "the roster lists another key for this site ({site_id}) than identity_key"
                )));
            }
            Some(_) => {}
            None => entries.push((site_id.to_string(), own)),
        }
    }
    let roster = Roster::new(entries).map_err(|e| invalid(e.to_string()))?;
    Ok(SecurePolicy {
        enabled: raw.enabled,
        min_sites: raw.min_secure_sites,
        max_cells: raw.max_cells,
        identity,
        roster,
    })
}

/// The `[privacy]` section: off when absent; on, it needs the noise secret.
fn privacy_policy(
    raw: Option<&RawPrivacy>,
    base: &Path,
    store: &Path,
) -> Result<PrivacyPolicy, TransportProblem> {
    let mut policy = PrivacyPolicy::default();
    let Some(raw) = raw else {
        return Ok(policy);
    };
    let invalid = |message: String| TransportProblem::Invalid(format!("[privacy] {message}"));
    policy.enabled = raw.enabled;
    if let Some(name) = &raw.mechanism {
        policy.mechanism = Mechanism::parse(name).ok_or_else(|| {
            invalid(format!(
                "mechanism must be \"discrete-laplace\" or \"discrete-gaussian\", not {name:?}"
            ))
        })?;
    }
    let epsilon = |key: &str, value: Option<f64>, default: Epsilon| match value {
        None => Ok(default),
        Some(value) => match Epsilon::from_decimal(value) {
            Some(epsilon) if epsilon.micro() > 0 => Ok(epsilon),
            _ => Err(invalid(format!(
                "{key} must be a positive number (in millionths at least), not {value}"
            ))),
        },
    };
    policy.epsilon = epsilon("epsilon", raw.epsilon, policy.epsilon)?;
    policy.budget_per_study = epsilon(
        "budget_per_study",
        raw.budget_per_study,
        policy.budget_per_study,
    )?;
    if policy.budget_per_study < policy.epsilon {
        return Err(invalid(
            "budget_per_study must be at least epsilon (one question)".into(),
        ));
    }
    for (key, value, slot) in [
        (
            "max_groups_per_patient",
            raw.max_groups_per_patient,
            &mut policy.bounding.max_groups_per_patient,
        ),
        (
            "max_rows_per_patient",
            raw.max_rows_per_patient,
            &mut policy.bounding.max_rows_per_patient,
        ),
    ] {
        match value {
            None => {}
            Some(value) if (1..=1000).contains(&value) => *slot = value,
            Some(value) => {
                return Err(invalid(format!(
                    "{key} must be within 1..=1000, not {value}"
                )));
            }
        }
    }
    match &raw.secret {
        Some(path) => {
            let path = base.join(path);
            // Beside the pseudonymisation key, never in the store: a store is copied,
            // backed up and replaced by ingest; the secret must not travel with it.
            if lies_inside(&path, store) {
                return Err(invalid(format!(
                    "secret {} lies inside the store; keep it beside the pseudonymisation key",
                    path.display()
                )));
            }
            let secret = NoiseSecret::load(&path).map_err(|e| {
                TransportProblem::Read(NodeConfigError::Invalid {
                    path: path.clone(),
                    message: format!("[privacy] secret: {e}"),
                })
            })?;
            policy.secret = Some(std::sync::Arc::new(secret));
        }
        None if raw.enabled => {
            return Err(invalid(
                "secret is needed when enabled (make one with `ern keygen noise --out FILE`)"
                    .into(),
            ));
        }
        None => {}
    }
    Ok(policy)
}

enum TransportProblem {
    Invalid(String),
    Read(NodeConfigError),
    /// A file the configuration names by `key` could not be read.
    Named {
        key: String,
        file: PathBuf,
        message: String,
    },
}

/// An error's text without the file path it starts with (the caller names the file as
/// the configuration writes it).
fn without_path(error: &dyn std::fmt::Display, file: &Path) -> String {
    let text = error.to_string();
    match text.split_once(": ") {
        Some((head, rest)) if head.ends_with(&*file.to_string_lossy()) => rest.to_string(),
        _ => text,
    }
}

/// TLS for `https://` coordinators, plaintext only when asked for and only to loopback.
fn transport(raw: &RawNodeConfig, base: &Path) -> Result<Option<ClientTls>, TransportProblem> {
    let plaintext = is_plaintext(&raw.coordinator)
        .map_err(|error| TransportProblem::Invalid(format!("coordinator: {error}")))?;
    match (plaintext, &raw.tls, raw.plaintext) {
        (false, Some(tls), false) => {
            let read = |key: &str, file: &Path| {
                std::fs::read(base.join(file)).map_err(|source| TransportProblem::Named {
                    key: format!("tls.{key}"),
                    file: file.to_path_buf(),
                    message: source.to_string(),
                })
            };
            Ok(Some(ClientTls {
                ca_pem: read("ca", &tls.ca)?,
                identity: Some((read("cert", &tls.cert)?, read("key", &tls.key)?)),
                domain: tls.domain.clone(),
            }))
        }
        (true, None, true) => Ok(None),
        (false, None, _) => Err(TransportProblem::Invalid(
            "an https:// coordinator needs a [tls] section (ca, cert, key)".into(),
        )),
        (true, None, false) => Err(TransportProblem::Invalid(
            "an http:// coordinator is plaintext: set plaintext = true to allow it on \
             loopback, or use https:// and [tls]"
                .into(),
        )),
        (_, Some(_), _) => Err(TransportProblem::Invalid(
            "set either [tls] with an https:// coordinator or plaintext = true with an \
             http:// one on loopback"
                .into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steward_key::generate_steward_key;

    fn load(tail: &str) -> Result<NodeConfig, NodeConfigError> {
        load_with(|_| {}, tail)
    }

    /// [`load`] after `prepare` has made files of its own in the configuration's directory.
    fn load_with(prepare: impl FnOnce(&Path), tail: &str) -> Result<NodeConfig, NodeConfigError> {
        let dir = tempfile::tempdir().expect("temp dir");
        generate_steward_key(&dir.path().join("s")).expect("steward key");
        std::fs::write(dir.path().join("node.token"), "ern_abc\n").expect("token");
        for file in ["ca.pem", "n.pem", "n.key"] {
            std::fs::write(dir.path().join(file), "pem").expect("write");
        }
        NoiseSecret::generate(&dir.path().join("noise.key")).expect("noise secret");
        std::fs::create_dir_all(dir.path().join("store")).expect("store");
        NoiseSecret::generate(&dir.path().join("store/noise.key")).expect("secret in store");
        prepare(dir.path());
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            format!(
                "site_id = \"a\"\nstore = \"store\"\nstewards = [\"s.pub\"]\ntoken_file = \"node.token\"\n{tail}"
            ),
        )
        .expect("write");
        NodeConfig::load(&path)
    }

    const TLS: &str = "[tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";

    #[test]
    fn the_audit_log_lies_beside_the_configuration_and_never_in_the_store() {
        let loaded = load(&format!("coordinator = \"https://c.example:1\"\n{TLS}")).expect("load");
        assert_eq!(
            loaded.audit_log.file_name().and_then(|n| n.to_str()),
            Some("audit.log")
        );
        assert_eq!(loaded.audit_log.parent(), loaded.store.parent());
        for inside in ["store/audit.log", "store/../store/x.log", "./store/a.log"] {
            let said = refused(&format!(
                "audit_log = \"{inside}\"\ncoordinator = \"https://c.example:1\"\n{TLS}"
            ));
            assert!(said.contains("inside the store"), "{inside}: {said}");
        }
        // Red team: a link beside the configuration that points into the store.
        #[cfg(unix)]
        {
            let linked = load_with(
                |dir| {
                    std::fs::write(dir.join("store/audit.log"), "").expect("log in store");
                    std::os::unix::fs::symlink(dir.join("store/audit.log"), dir.join("audit.log"))
                        .expect("link");
                },
                &format!("coordinator = \"https://c.example:1\"\n{TLS}"),
            )
            .expect_err("refused")
            .to_string();
            assert!(linked.contains("symbolic link"), "{linked}");
        }
    }

    fn refused(tail: &str) -> String {
        load(tail).expect_err("refused").to_string()
    }

    #[test]
    fn https_needs_tls_and_plaintext_needs_loopback_and_a_say_so() {
        let config = load(&format!(
            "coordinator = \"https://coordinator.example.org:443\"\n{TLS}"
        ))
        .expect("TLS");
        assert!(config.tls.is_some_and(|tls| tls.identity.is_some()));
        let config = load("coordinator = \"http://127.0.0.1:1\"\nplaintext = true\n")
            .expect("loopback plaintext");
        assert!(config.tls.is_none());
        assert!(refused("coordinator = \"https://c.example.org:1\"\n").contains("[tls]"));
        assert!(refused("coordinator = \"http://127.0.0.1:1\"\n").contains("plaintext = true"));
        assert!(
            refused("coordinator = \"http://10.1.2.3:1\"\nplaintext = true\n")
                .contains("not loopback")
        );
        assert!(
            refused(&format!("coordinator = \"http://127.0.0.1:1\"\n{TLS}")).contains("either")
        );
    }

    #[test]
    fn privacy_is_off_by_default_and_on_needs_a_secret_outside_the_store() {
        const PLAIN: &str = "coordinator = \"http://127.0.0.1:1\"\nplaintext = true\n";
        let config = load(PLAIN).expect("no [privacy]");
        assert!(!config.policy.privacy.enabled);
        let config = load(&format!(
            "{PLAIN}[privacy]\nenabled = true\nsecret = \"noise.key\"\nmechanism = \"discrete-gaussian\"\nepsilon = 0.25\nbudget_per_study = 2\nmax_groups_per_patient = 3\nmax_rows_per_patient = 2\n"
        ))
        .expect("privacy on");
        let privacy = &config.policy.privacy;
        assert!(privacy.enabled && privacy.secret.is_some());
        assert_eq!(privacy.mechanism, Mechanism::DiscreteGaussian);
        assert_eq!(privacy.epsilon, Epsilon::from_micro(250_000));
        assert_eq!(privacy.budget_per_study, Epsilon::from_micro(2_000_000));
        assert_eq!(privacy.bounding.max_groups_per_patient, 3);
        assert_eq!(privacy.bounding.max_rows_per_patient, 2);
        for (tail, expected) in [
            ("enabled = true\n", "secret is needed"),
            ("secret = \"store/noise.key\"\n", "inside the store"),
            (
                "secret = \"noise.key\"\nmechanism = \"laplace\"\n",
                "mechanism must be",
            ),
            (
                "secret = \"noise.key\"\nepsilon = 0\n",
                "epsilon must be a positive number",
            ),
            (
                "secret = \"noise.key\"\nepsilon = 2\nbudget_per_study = 1\n",
                "at least epsilon",
            ),
            (
                "secret = \"noise.key\"\nmax_groups_per_patient = 0\n",
                "max_groups_per_patient must be",
            ),
            ("secret = \"missing.key\"\n", "[privacy] secret"),
        ] {
            let message = refused(&format!("{PLAIN}[privacy]\n{tail}"));
            assert!(message.contains(expected), "{tail}: {message}");
        }
    }

    #[test]
    fn the_token_never_prints() {
        let config =
            load("coordinator = \"http://127.0.0.1:1\"\nplaintext = true\n").expect("config");
        assert!(!format!("{config:?}").contains("ern_abc"));
        assert_eq!(config.max_concurrent, 2);
    }
}
