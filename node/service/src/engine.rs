//! The node engine: runs one approved query on the hospital's data and lets out only
//! aggregated groups of at least k patients.
//!
//! The order of checks is the trust model in code: the approval first (signed by one of
//! this site's stewards, for this exact SQL, this site and study, not expired), then the
//! disclosure rules (validated again here, on this node's own session), then execution
//! under time, memory and output limits, then suppression of every group with fewer than
//! k distinct patients. Every request leaves one audit entry. A failure reaches the caller
//! as a reference id only; its detail stays in the audit log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, Int64Type, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::physical_plan::collect;
use datafusion::prelude::SessionContext;
use ern_proto::arrow_ipc;
use ern_queries::Dominance;
use ern_queries::split::{self, Concentration};
use ern_queries::{Planner, Refusal, Rule, SiteFacts, SitePlan};
use ring::rand::{SecureRandom, SystemRandom};

use crate::approval::{self, Approval, ApprovalError};
use crate::audit::{AuditEntry, AuditError, AuditLog, Outcome};
use crate::executed::{self, ExecutedApprovals, ExecutedError, Previous, QueryUse};
use crate::failure::FailureCategory;
use crate::privacy::ledger::{ChargeRequest, Ledger, LedgerError, Reserved};
use crate::privacy::noise::{NoiseSeed, noise_site_output};
use crate::privacy::policy::{Epsilon, NoiseReport, PrivacyPolicy, QuestionNoise};
use crate::privacy::secret::NoiseSecret;
use crate::secure::identity::{Roster, SiteIdentity};
use crate::session::node_session;
use crate::steward_key::StewardPublicKey;
use crate::stop::{QueryRuntime, StopSignal, stoppable};
use crate::store_watch::{StoreState, StoreWatch};
use crate::total::total_plan;

/// How long a query may take to stop after its time limit before its task is aborted.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The smallest k a node accepts in its own policy.
pub const MIN_K: u32 = 2;

/// A node's own policy: nothing in a request can change it.
#[derive(Debug, Clone)]
pub struct NodePolicy {
    /// This site's id.
    pub site_id: String,
    /// Minimum distinct patients per released group.
    pub k: u32,
    /// Memory for one query, in bytes.
    pub memory_limit: usize,
    /// Time for one query.
    pub time_limit: Duration,
    /// Most groups one query may release.
    pub max_groups: usize,
    /// Public keys of this site's stewards.
    pub stewards: Vec<StewardPublicKey>,
    /// The dominance rule for released sums and averages.
    pub dominance: Dominance,
    /// Whether and how this site takes part in secure aggregation.
    pub secure: SecurePolicy,
    /// Whether and how this site noises what it releases and keeps privacy budgets.
    pub privacy: PrivacyPolicy,
}

/// A node's policy for secure aggregation (DESIGN.md, "Secure aggregation").
#[derive(Clone)]
pub struct SecurePolicy {
    /// Whether the node takes part at all; off, it refuses every round and questions run
    /// per site.
    pub enabled: bool,
    /// The fewest participants it accepts in a round (at least 3).
    pub min_sites: usize,
    /// The most cells a question's domain may have.
    pub max_cells: usize,
    /// This site's identity key, which signs its round statements.
    pub identity: Option<Arc<SiteIdentity>>,
    /// The identity public keys of the sites it accepts as peers (its own included).
    pub roster: Roster,
}

impl std::fmt::Debug for SecurePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurePolicy")
            .field("enabled", &self.enabled)
            .field("min_sites", &self.min_sites)
            .field("max_cells", &self.max_cells)
            .field(
                "identity",
                &self.identity.as_ref().map(|i| i.public_key().key_id()),
            )
            .field(
                "roster",
                &self.roster.iter().map(|(site, _)| site).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// The fewest participants a secure-aggregation round may have (DESIGN.md: collusion of
/// the coordinator with all but one participant reveals that one).
pub const MIN_SECURE_SITES: usize = 3;

impl Default for SecurePolicy {
    /// Off, with the defaults of DESIGN.md once turned on (3 sites, 65,536 cells).
    fn default() -> Self {
        SecurePolicy {
            enabled: false,
            min_sites: MIN_SECURE_SITES,
            max_cells: ern_queries::domain::MAX_SECURE_CELLS,
            identity: None,
            roster: Roster::default(),
        }
    }
}

impl NodePolicy {
    /// The default policy for a site: k = 5, 1 GiB, 60 s, 10,000 groups, the (2, 85 %)
    /// dominance rule.
    pub fn new(site_id: &str, stewards: Vec<StewardPublicKey>) -> Self {
        NodePolicy {
            site_id: site_id.to_string(),
            k: 5,
            memory_limit: 1 << 30,
            time_limit: Duration::from_secs(60),
            max_groups: 10_000,
            stewards,
            dominance: Dominance::default(),
            secure: SecurePolicy::default(),
            privacy: PrivacyPolicy::default(),
        }
    }
}

/// One request from the coordinator.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    /// The exact SQL.
    pub sql: String,
    /// The study it belongs to.
    pub study_id: String,
    /// This site's steward's approval.
    pub approval: Approval,
}

/// What a node lets out: aggregated partials, each group with at least k patients.
#[derive(Debug, Clone)]
pub struct Released {
    /// Schema of the partials (group keys `__g…`, partials `__p…`).
    pub schema: SchemaRef,
    /// The released groups.
    pub batches: Vec<RecordBatch>,
    /// Groups released.
    pub groups_released: usize,
    /// Groups dropped for having fewer than k patients (known only to the node's audit
    /// log and steward; the caller is not told).
    pub groups_suppressed: usize,
    /// The noise on each released partial, where this site noises its release.
    pub noise: Vec<NoiseReport>,
}

/// Why a request released nothing. Messages name a rule, never a value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecuteError {
    /// The approval does not authorise this request.
    #[error("refused: {0}")]
    Approval(ApprovalError),
    /// The query breaks a disclosure rule.
    #[error("{0}")]
    Refused(Refusal),
    /// A secure-aggregation round was refused (a roster, signature, participant or
    /// once-per-query check, or this site's policy).
    #[error("refused by {rule}: {message}")]
    Round {
        /// The stable check name, e.g. `secure-roster`.
        rule: &'static str,
        /// What failed, naming sites and fields, never a data value.
        message: String,
    },
    /// The question's study has spent its privacy budget at this site.
    #[error("refused by privacy-budget: {message}")]
    Budget {
        /// The study, what it has left and what the question needs; never a data value.
        message: String,
    },
    /// A resource limit stopped the work (rule 8): the time limit, the memory limit or
    /// the cap on released groups.
    #[error("{refusal} (reference {reference})")]
    Limit {
        /// Which limit.
        category: FailureCategory,
        /// The refusal under rule 8, naming the limit, never a value.
        refusal: Refusal,
        /// Reference id of the audit entry.
        reference: String,
    },
    /// Running failed; details are in the node's audit log under `reference`.
    #[error(
        "the query failed at this site ({category}, reference {reference}); the site's data steward can look it up in the audit log"
    )]
    Failed {
        /// Reference id of the audit entry.
        reference: String,
        /// What kind of failure, revealing no value.
        category: FailureCategory,
    },
}

impl ExecuteError {
    /// The stable name of the rule or check, for audit logs and coverage reports.
    pub fn rule_name(&self) -> String {
        match self {
            ExecuteError::Approval(e) => e.name().to_string(),
            ExecuteError::Refused(r) | ExecuteError::Limit { refusal: r, .. } => {
                r.rule.name().to_string()
            }
            ExecuteError::Round { rule, .. } => (*rule).to_string(),
            ExecuteError::Budget { .. } => "privacy-budget".to_string(),
            ExecuteError::Failed { .. } => "failed".to_string(),
        }
    }
}

/// Errors opening a node engine.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The policy is unacceptable.
    #[error("node policy: {0}")]
    Policy(String),
    /// The store could not be opened as a DataFusion session.
    #[error("opening the store: {0}")]
    Store(#[from] datafusion::error::DataFusionError),
    /// The audit log is unreadable or broken.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// The record of executed approvals is unreadable.
    #[error(transparent)]
    Executed(#[from] ExecutedError),
}

/// Where a node's files are: the store ingest writes, and the node's own audit log,
/// with the record of executed approvals beside it (outside the store, so a store
/// deleted or rebuilt takes neither along).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFiles {
    /// The store directory.
    pub store: PathBuf,
    /// The audit log file.
    pub audit_log: PathBuf,
}

impl NodeFiles {
    /// Everything in one directory: the store's, with the audit log as
    /// [`crate::audit::AUDIT_FILE`] in it.
    pub fn in_one_directory(store: &Path) -> Self {
        NodeFiles {
            store: store.to_path_buf(),
            audit_log: store.join(crate::audit::AUDIT_FILE),
        }
    }

    /// Moves an audit log and a record of executed approvals that an older version kept
    /// inside the store to where this configuration keeps them, when nothing is there
    /// yet (a node upgraded in place keeps its history and its budgets). Returns the
    /// moves made.
    pub fn adopt_from_store(&self) -> Result<Vec<(PathBuf, PathBuf)>, std::io::Error> {
        let moves = [
            (
                self.store.join(crate::audit::AUDIT_FILE),
                self.audit_log.clone(),
            ),
            (
                self.store.join(executed::EXECUTED_FILE),
                self.state_dir().join(executed::EXECUTED_FILE),
            ),
        ];
        let mut made = Vec::new();
        for (old, new) in moves {
            if old == new || !old.exists() || new.exists() {
                continue;
            }
            std::fs::rename(&old, &new).map_err(|error| {
                std::io::Error::new(
                    error.kind(),
                    format!(
                        "moving {} out of the store to {}: {error}; move it by hand",
                        old.display(),
                        new.display()
                    ),
                )
            })?;
            made.push((old, new));
        }
        Ok(made)
    }

    /// The directory of the node's own state: the audit log's.
    pub fn state_dir(&self) -> PathBuf {
        match self.audit_log.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

/// A node's query engine over one store.
pub struct NodeEngine {
    pub(crate) ctx: SessionContext,
    pub(crate) policy: NodePolicy,
    pub(crate) audit: Arc<AuditLog>,
    pub(crate) executed: Arc<ExecutedApprovals>,
    /// The store, and what the node last saw of it.
    pub(crate) store: Arc<StoreWatch>,
    pub(crate) facts: SiteFacts,
    queries: QueryRuntime,
    pub(crate) planner: Planner,
    /// Secure-aggregation rounds between their statement and their masked vector.
    pub(crate) rounds: crate::round::PendingRounds,
    /// What each study has spent of its privacy budget here.
    pub(crate) ledger: Arc<Ledger>,
}

impl std::fmt::Debug for NodeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeEngine")
            .field("policy", &self.policy)
            .field("audit", &self.audit)
            .field("facts", &self.facts)
            .finish_non_exhaustive()
    }
}

/// Threads for questions: the machine's cores.
fn query_threads() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(crate) fn reference_id() -> String {
    let mut bytes = [0u8; 8];
    // A failed random source still gives a unique-enough id from the clock.
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = now_seconds().to_be_bytes();
    }
    hex::encode(bytes)
}

impl NodeEngine {
    /// Opens the store in `store_dir` under `policy`, with the audit log and the record
    /// of executed approvals in the same directory (for tests and benchmarks that keep
    /// one directory; a node's configuration keeps them apart: [`NodeEngine::open_files`]).
    pub async fn open(store_dir: &Path, policy: NodePolicy) -> Result<Self, OpenError> {
        Self::open_files(&NodeFiles::in_one_directory(store_dir), policy).await
    }

    /// Opens the store and the node's own files under `policy`.
    pub async fn open_files(files: &NodeFiles, policy: NodePolicy) -> Result<Self, OpenError> {
        let store_dir = files.store.as_path();
        if policy.k < MIN_K {
            return Err(OpenError::Policy(format!(
                "k must be at least {MIN_K}, not {}",
                policy.k
            )));
        }
        if !approval::is_valid_id(&policy.site_id) {
            return Err(OpenError::Policy(
                "the site id must be 1-128 ASCII letters, digits, -, _ and . (not first)".into(),
            ));
        }
        let ctx = node_session(store_dir, policy.memory_limit).await?;
        if policy.privacy.enabled && policy.privacy.secret.is_none() {
            return Err(OpenError::Policy(
                "privacy is enabled without a noise secret".into(),
            ));
        }
        let executed = Arc::new(ExecutedApprovals::open(&files.state_dir())?);
        // A node with a history whose log is gone must not start a fresh one (every
        // study's privacy spending would be forgotten without a trace).
        if !files.audit_log.exists() && !executed.is_empty() {
            return Err(OpenError::Audit(AuditError::Missing {
                path: files.audit_log.clone(),
            }));
        }
        let audit = Arc::new(AuditLog::open(&files.audit_log)?);
        let history = match audit.head() == crate::audit::genesis() {
            true => Vec::new(),
            false => crate::audit::read_entries(audit.path())?,
        };
        // The log shows approvals executed, the record none: it was lost (red team: an
        // approval the record forgot runs again on refreshed data).
        // (A round's first step is audited before anything is recorded: only per-site
        // releases count.)
        let executed_before = history.iter().any(|entry| {
            entry.outcome == Outcome::Accepted
                && entry.key_id.is_some()
                && !entry
                    .detail
                    .as_deref()
                    .is_some_and(|d| d.starts_with("secure round"))
        });
        if executed_before && executed.is_empty() {
            return Err(OpenError::Executed(ExecutedError::Missing {
                path: executed.path().to_path_buf(),
            }));
        }
        let ledger = Arc::new(Ledger::from_entries(&history));
        let store = Arc::new(StoreWatch::new(store_dir));
        store.observe(&audit);
        let facts = verified_facts(&ctx).await.unwrap_or_else(|error| {
            tracing::warn!(%error, "could not check the patient table; counting distinct pids");
            SiteFacts::default()
        });
        tracing::info!(
            one_row_per_patient = ?facts.one_row_per_patient,
            "store opened"
        );
        Ok(NodeEngine {
            ctx,
            policy,
            audit,
            executed,
            store,
            facts,
            queries: QueryRuntime::new(query_threads())
                .map_err(|e| OpenError::Policy(format!("starting the query threads: {e}")))?,
            planner: Planner::new(),
            rounds: crate::round::PendingRounds::default(),
            ledger,
        })
    }

    /// How many question plans this engine has built: one per execution whose approval
    /// holds (a retry answered from the stored release plans nothing).
    pub fn plans_built(&self) -> u64 {
        self.planner.plans_built()
    }

    /// The hash of the last entry of this node's audit log, reported with every
    /// heartbeat and result so that a removed tail is found.
    pub fn audit_head(&self) -> String {
        self.audit.head()
    }

    /// Looks at the store now (with every heartbeat): a new generation, or the store
    /// going missing or coming back, is written to the audit log as it is seen.
    pub async fn check_store(&self) -> StoreState {
        let (store, audit) = (Arc::clone(&self.store), Arc::clone(&self.audit));
        tokio::task::spawn_blocking(move || store.observe(&audit))
            .await
            .unwrap_or_else(|error| StoreState::Unavailable {
                reason: error.to_string(),
            })
    }

    /// The key under which this node records how `sql` was released (per site or in a
    /// secure round): its plan's fingerprint on this node's own session.
    pub async fn question_key(&self, sql: &str) -> Result<String, Refusal> {
        let plan = self.planner.plan(sql, &self.ctx.state()).await?;
        Ok(executed::query_key(&plan.fingerprint()))
    }

    /// This node's policy.
    pub fn policy(&self) -> &NodePolicy {
        &self.policy
    }

    /// What this node verified about its store when it opened it.
    pub fn site_facts(&self) -> &SiteFacts {
        &self.facts
    }

    /// Audits a message from the coordinator that could not be decoded: one bounded entry
    /// (the status code and at most 200 characters of the decoder's message), so a
    /// garbled or hostile message leaves a trace without filling the log.
    pub async fn audit_undecodable(&self, code: &str, message: &str) {
        let mut entry = AuditEntry::new("(none)", "(none)", Outcome::Refused);
        entry.rule = Some("undecodable-message".into());
        let message: String = message.chars().take(200).collect();
        entry.detail = Some(format!("{code}: {}", message.escape_default()));
        let audit = Arc::clone(&self.audit);
        match tokio::task::spawn_blocking(move || audit.append(entry)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::error!(%error, "audit log append failed"),
            Err(error) => tracing::error!(%error, "audit log append failed"),
        }
    }

    /// Runs one request end to end and audits it.
    pub async fn execute(&self, request: &QueryRequest) -> Result<Released, ExecuteError> {
        self.audited(
            request,
            |released: &Released, entry: &mut AuditEntry| {
                entry.rows_released = released.groups_released as u64;
                entry.groups_suppressed = released.groups_suppressed as u64;
            },
            async |entry: &mut AuditEntry| self.run(request, entry).await,
        )
        .await
    }

    /// Runs `work` for `request` and appends its one audit entry (with `on_success`'s
    /// counts, or the refusal or failure): without the entry nothing leaves the node.
    pub(crate) async fn audited<T>(
        &self,
        request: &QueryRequest,
        on_success: impl FnOnce(&T, &mut AuditEntry),
        work: impl AsyncFnOnce(&mut AuditEntry) -> Result<T, ExecuteError>,
    ) -> Result<T, ExecuteError> {
        let started = Instant::now();
        let query_hash = ern_queries::query_hash(&request.sql);
        // The study id comes from the coordinator: it reaches the audit log only when it
        // has the shape of an id (a 20 MB id would otherwise be written as it came).
        let study = if approval::is_valid_id(&request.study_id) {
            request.study_id.as_str()
        } else {
            "(malformed id)"
        };
        let mut entry = AuditEntry::new(study, &query_hash, Outcome::Accepted);
        let result = work(&mut entry).await;
        entry.duration_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(value) => on_success(value, &mut entry),
            Err(error) => {
                entry.outcome = if matches!(error, ExecuteError::Failed { .. }) {
                    Outcome::Failed
                } else {
                    Outcome::Refused
                };
                entry.rule = Some(error.rule_name());
                if let ExecuteError::Failed {
                    reference,
                    category,
                }
                | ExecuteError::Limit {
                    reference,
                    category,
                    ..
                } = error
                {
                    entry.reference = Some(reference.clone());
                    entry.category = Some(category.as_str().to_string());
                }
            }
        }
        // The append waits for the disk; on a blocking thread, so the runtime's workers
        // go on with other work meanwhile (other questions, the link's messages).
        // A charge the request reserved is written with its entry when it released
        // something, and given back otherwise.
        let (audit, ledger) = (Arc::clone(&self.audit), Arc::clone(&self.ledger));
        let released = result.is_ok();
        let appended = tokio::task::spawn_blocking(move || ledger.settle(&audit, entry, released))
            .await
            .map_err(|join_error| join_error.to_string())
            .and_then(|appended| appended.map_err(|e| e.to_string()));
        if let Err(audit_error) = appended {
            // Without an audit entry nothing may be released.
            tracing::error!(error = %audit_error, "audit log append failed");
            return Err(ExecuteError::Failed {
                reference: reference_id(),
                category: FailureCategory::Internal,
            });
        }
        result
    }

    /// Checks the approval against this site's own steward keys, for this exact SQL,
    /// site and study, unexpired; returns the approval's id and the store generation.
    pub(crate) fn verify_approval(
        &self,
        request: &QueryRequest,
        entry: &mut AuditEntry,
    ) -> Result<(String, String), ExecuteError> {
        let key = approval::verify(
            &request.approval,
            &request.sql,
            &self.policy.site_id,
            &request.study_id,
            &self.policy.stewards,
            now_seconds(),
        )
        .map_err(ExecuteError::Approval)?;
        entry.key_id = Some(key.key_id());
        let approval = executed::approval_id(&request.approval);
        let generation = match self.store.observe(&self.audit) {
            StoreState::Available { key, .. } => key,
            StoreState::Unavailable { reason } => {
                return Err(failure_of(entry, FailureCategory::StoreUnavailable, reason));
            }
        };
        Ok((approval, generation))
    }

    async fn run(
        &self,
        request: &QueryRequest,
        entry: &mut AuditEntry,
    ) -> Result<Released, ExecuteError> {
        let (approval, generation) = self.verify_approval(request, entry)?;
        // One approval, one execution per store generation.
        match self.executed.previous(&approval, &generation) {
            Previous::None => {}
            Previous::Stale => return Err(ExecuteError::Approval(ApprovalError::Stale)),
            Previous::Secure => {
                entry.detail = Some("this approval's question went into a secure round".into());
                return Err(secure_round_used());
            }
            Previous::Same {
                released,
                groups_released,
                groups_suppressed,
            } => {
                entry.detail = Some("a retry: the release stored for this approval".into());
                let (schema, batches) = arrow_ipc::decode(&released).map_err(|e| {
                    let reference = reference_id();
                    entry.detail = Some(e.to_string());
                    ExecuteError::Failed {
                        reference,
                        category: FailureCategory::Internal,
                    }
                })?;
                // The noise of a retry is the stored release's: described again from the
                // plan (the release itself is not drawn again).
                let noise = if self.policy.privacy.enabled {
                    let plan = self.plan(request, entry).await?;
                    let site = self.bounded_plan(
                        &plan,
                        Concentration::TopShare(self.policy.dominance),
                        entry,
                    )?;
                    let (noise, secret) = self.calibrated(&site, entry)?;
                    // A release is charged before it leaves: free when its first
                    // execution's charge was written, charged now when that write failed
                    // after the release was stored (red team: a retry was released
                    // uncharged).
                    if secret.is_some() {
                        let query = executed::query_key(&plan.fingerprint());
                        self.charge(request, &query, &generation, entry)?;
                    }
                    noise.map_or_else(Vec::new, |noise| noise.reports())
                } else {
                    Vec::new()
                };
                return Ok(Released {
                    schema,
                    batches,
                    groups_released: groups_released as usize,
                    groups_suppressed: groups_suppressed as usize,
                    noise,
                });
            }
        }
        let plan = self.plan(request, entry).await?;
        let query = executed::query_key(&plan.fingerprint());
        // Held until the release is recorded: no secure round of the question meanwhile.
        let _claim = self.executed.claim_per_site(&query).map_err(|used| {
            if let QueryUse::Secure { round } = used {
                entry.detail = Some(format!(
                    "a secure round holds or used the question: {round}"
                ));
            }
            secure_round_used()
        })?;
        let site =
            self.bounded_plan(&plan, Concentration::TopShare(self.policy.dominance), entry)?;
        let (noise, secret) = self.calibrated(&site, entry)?;
        if secret.is_some() {
            self.charge(request, &query, &generation, entry)?;
        }
        let batches = self.collect(site.plan, entry).await?;
        self.same_generation(&generation, entry)?;
        let fail = failure;
        let batches = match (&noise, &secret) {
            (Some(noise), Some(secret)) => noise_site_output(
                batches,
                plan.barrier().group_exprs.len(),
                noise,
                NoiseSeed {
                    secret,
                    question: &query,
                    generation: &generation,
                },
            )
            .map_err(|e| fail(entry, e.to_string()))?,
            _ => batches,
        };
        // Under noise, a group whose key comes from the data must clear the release
        // threshold as well as k (a key one patient alone makes is itself a release).
        let k = u64::from(self.policy.k);
        let threshold = match &noise {
            Some(noise) if !plan.barrier().group_exprs.is_empty() => noise.release_threshold(k),
            _ => k,
        };
        let mut released = suppress(
            batches,
            site.released,
            threshold,
            self.policy.dominance,
            noise.is_some(),
        )
        .map_err(|e| fail(entry, e))?;
        released.noise = noise.map_or_else(Vec::new, |noise| noise.reports());
        if released.groups_released > self.policy.max_groups {
            entry.detail = Some(format!("{} groups over the cap", released.groups_released));
            return Err(limit(
                FailureCategory::OutputCap,
                Refusal::new(
                    Rule::ResourceLimits,
                    "the query",
                    format!(
                        "releases more groups than this site's cap of {}",
                        self.policy.max_groups
                    ),
                )
                .hint("group by coarser bands"),
            ));
        }
        let bytes = arrow_ipc::encode(&released.schema, &released.batches)
            .map_err(|e| fail(entry, e.to_string()))?;
        let executed = Arc::clone(&self.executed);
        let (groups_released, groups_suppressed) = (
            released.groups_released as u64,
            released.groups_suppressed as u64,
        );
        tokio::task::spawn_blocking(move || {
            executed.record(
                &approval,
                &query,
                &generation,
                &bytes,
                groups_released,
                groups_suppressed,
            )
        })
        .await
        .map_err(|e| fail(entry, e.to_string()))?
        .map_err(|e| fail(entry, e.to_string()))?;
        Ok(released)
    }

    /// Fails the request when the store changed while its question ran: what was read
    /// may mix two generations, and a release is tied (its approval, its noise) to the
    /// one it was approved and seeded on (red team: an ingest between the look and the
    /// scan gave the same noise on new data).
    pub(crate) fn same_generation(
        &self,
        generation: &str,
        entry: &mut AuditEntry,
    ) -> Result<(), ExecuteError> {
        match executed::store_generation(self.store.store_dir()) {
            Ok(now) if now == generation => Ok(()),
            _ => Err(failure_of(
                entry,
                FailureCategory::StoreUnavailable,
                "the store changed while the question ran".into(),
            )),
        }
    }

    /// The site plan of `plan` for this site: bounded when this site noises its release.
    pub(crate) fn bounded_plan(
        &self,
        plan: &ern_queries::QueryPlan,
        concentration: Concentration,
        entry: &mut AuditEntry,
    ) -> Result<SitePlan, ExecuteError> {
        let privacy = &self.policy.privacy;
        plan.bounded_site_plan(
            &self.facts,
            concentration,
            privacy.enabled.then_some(privacy.bounding),
        )
        .map_err(|e| failure(entry, e.to_string()))
    }

    /// The noise of a bounded site plan and the secret to draw it with; neither where
    /// this site does not noise its release.
    pub(crate) fn calibrated(
        &self,
        site: &SitePlan,
        entry: &mut AuditEntry,
    ) -> Result<(Option<QuestionNoise>, Option<Arc<NoiseSecret>>), ExecuteError> {
        let privacy = &self.policy.privacy;
        let (Some(sensitivity), Some(secret), true) =
            (&site.sensitivity, &privacy.secret, privacy.enabled)
        else {
            return Ok((None, None));
        };
        let noise = QuestionNoise::calibrate(privacy, sensitivity)
            .map_err(|e| failure(entry, e.to_string()))?;
        Ok((Some(noise), Some(Arc::clone(secret))))
    }

    /// Reserves the request's epsilon for its study before the question runs (a repeat
    /// of the question in the study on the same data under the same noise is free), to be
    /// charged in the audit log with the request's own entry (see [`NodeEngine::audited`]);
    /// refuses with `privacy-budget` once the study has spent its budget here.
    pub(crate) fn charge(
        &self,
        request: &QueryRequest,
        question: &str,
        generation: &str,
        entry: &mut AuditEntry,
    ) -> Result<(), ExecuteError> {
        let privacy = &self.policy.privacy;
        let noise = privacy.noise_tag();
        let query_hash = ern_queries::query_hash(&request.sql);
        let reserved = self.ledger.reserve(&ChargeRequest {
            study: &entry.study,
            question,
            generation,
            query_hash: &query_hash,
            epsilon: privacy.epsilon,
            budget: privacy.budget_per_study,
            mechanism: privacy.mechanism,
            noise: &noise,
        });
        match reserved {
            Ok(Reserved::New {
                entry: charge,
                remaining,
            }) => {
                entry.detail = Some(format!(
                    "privacy: {} charged to study {}, {remaining} left",
                    privacy.epsilon, entry.study
                ));
                entry.charge = Some(charge);
                Ok(())
            }
            Ok(Reserved::Repeat { remaining }) => {
                entry.detail = Some(format!(
                    "privacy: a repeat in study {}, not charged, {remaining} left",
                    entry.study
                ));
                Ok(())
            }
            Err(LedgerError::Spent {
                study,
                remaining,
                budget,
                needed,
            }) => Err(ExecuteError::Budget {
                message: format!(
                    "study {study} has {remaining} of its privacy budget of {budget} left at this site; this question needs {needed}"
                ),
            }),
            Err(LedgerError::Audit(error)) => Err(failure(entry, error.to_string())),
        }
    }

    /// What each study has spent of its privacy budget here, and the budget.
    pub fn privacy_budgets(&self) -> (Vec<(String, Epsilon)>, Epsilon) {
        (self.ledger.spent(), self.policy.privacy.budget_per_study)
    }

    /// Plans the request's SQL on this node's own session (rules 1-8 again).
    pub(crate) async fn plan(
        &self,
        request: &QueryRequest,
        entry: &mut AuditEntry,
    ) -> Result<ern_queries::QueryPlan, ExecuteError> {
        self.planner
            .plan(&request.sql, &self.ctx.state())
            .await
            .map_err(|refusal| {
                entry.detail = Some(refusal.to_string());
                ExecuteError::Refused(refusal)
            })
    }

    /// Runs a site plan under this node's time and memory limits.
    pub(crate) async fn collect(
        &self,
        site_plan: datafusion::logical_expr::LogicalPlan,
        entry: &mut AuditEntry,
    ) -> Result<Vec<RecordBatch>, ExecuteError> {
        let fail = |entry: &mut AuditEntry, error: DataFusionError| {
            failure_of(
                entry,
                FailureCategory::of_datafusion(&error),
                error.to_string(),
            )
        };
        let state = self.ctx.state();
        let plan = total_plan(site_plan, &state).map_err(|e| fail(entry, e))?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&plan)
            .map_err(|e| fail(entry, e))?;
        let physical = state
            .create_physical_plan(&plan)
            .await
            .map_err(|e| fail(entry, e))?;
        let stop = StopSignal::default();
        let physical = stoppable(physical, &stop).map_err(|e| fail(entry, e))?;
        // The query runs as its own task; at the time limit the stop signal makes every
        // operator fail at its next batch, and only once the task has ended does this
        // request end (and the node's slot for it come free).
        let work = collect(physical, state.task_ctx());
        let mut running = match self.queries.handle() {
            Some(queries) => queries.spawn(work),
            None => tokio::spawn(work),
        };
        let batches = match tokio::time::timeout(self.policy.time_limit, &mut running).await {
            Ok(Ok(Ok(batches))) => batches,
            Ok(Ok(Err(e))) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                entry.detail = Some(e.to_string());
                return Err(limit(
                    FailureCategory::MemoryLimit,
                    Refusal::new(
                        Rule::ResourceLimits,
                        "the query",
                        "needed more memory than this site's limit",
                    )
                    .hint("narrow the question, or group by coarser bands"),
                ));
            }
            Ok(Ok(Err(e))) => return Err(fail(entry, e)),
            Ok(Err(join_error)) => return Err(failure(entry, join_error.to_string())),
            Err(_) => {
                stop.raise();
                let stopped = tokio::time::timeout(STOP_GRACE, &mut running).await.is_ok();
                if !stopped {
                    running.abort();
                    tracing::error!("a query went on past its stop signal; its task was aborted");
                }
                entry.detail = Some(format!(
                    "time limit of {:?} reached; stopped: {stopped}",
                    self.policy.time_limit
                ));
                return Err(limit(
                    FailureCategory::TimeLimit,
                    Refusal::new(
                        Rule::ResourceLimits,
                        "the query",
                        "ran longer than this site's time limit",
                    ),
                ));
            }
        };
        Ok(batches)
    }
}

/// The refusal of a per-site release of a question that went (or is going) into a
/// secure round at this node.
fn secure_round_used() -> ExecuteError {
    ExecuteError::Round {
        rule: "secure-round-used",
        message: "this site adds this question to a secure-aggregation round; it is not released per site as well".into(),
    }
}

/// A run-time failure: a fresh reference for the researcher, the detail for the audit
/// log only.
pub(crate) fn failure(entry: &mut AuditEntry, detail: String) -> ExecuteError {
    failure_of(entry, FailureCategory::Internal, detail)
}

/// A run-time failure of a known kind: a fresh reference and the category for the
/// researcher, the detail for the audit log only.
pub(crate) fn failure_of(
    entry: &mut AuditEntry,
    category: FailureCategory,
    detail: String,
) -> ExecuteError {
    let reference = reference_id();
    tracing::warn!(%reference, %category, "query failed at run time");
    entry.detail = Some(detail);
    ExecuteError::Failed {
        reference,
        category,
    }
}

/// A refusal by a resource limit (rule 8), with a fresh reference to its audit entry.
fn limit(category: FailureCategory, refusal: Refusal) -> ExecuteError {
    ExecuteError::Limit {
        category,
        refusal,
        reference: reference_id(),
    }
}

/// Checks, once per opening, that the patient table holds each pid exactly once (ingest
/// guarantees it: local ids are unique in the export, and a store is only ever replaced
/// by a whole new ingest). Only then do site plans count patient rows instead of distinct
/// pids there; a store that fails the check (or a check that cannot run, e.g. under a
/// tiny memory limit) is still served, with distinct counts.
async fn verified_facts(ctx: &SessionContext) -> Result<SiteFacts, DataFusionError> {
    let table = "patient";
    let counts = ctx
        .sql(&format!(
            "SELECT COUNT(*) = COUNT(DISTINCT pid) AS unique_pids FROM {table}"
        ))
        .await?
        .collect()
        .await?;
    let unique = counts.first().is_some_and(|batch| {
        batch.num_rows() == 1
            && batch
                .column(0)
                .as_boolean_opt()
                .is_some_and(|column| column.is_valid(0) && column.value(0))
    });
    if !unique {
        tracing::warn!("the store's patient table holds a pid more than once");
        return Ok(SiteFacts::default());
    }
    Ok(SiteFacts::with_unique_pid_tables([table]))
}

/// Rule 6: drops every group whose smallest hidden patient count is under `k`, whose
/// patients with a row without a value behind a `COUNT(x)`, `SUM(x)` or `AVG(x)` are more
/// than none but fewer than `k`, or whose largest patient contributions to a released
/// sum hold more than the dominance rule allows; then the hidden columns.
///
/// A `noised` release (the site's `[privacy]` policy) is suppressed by its noisy count of
/// all patients alone: the other counts and the dominance shares are exact, and each of
/// their decisions would hang on one patient's presence (red team); the noise, scaled to
/// each patient's bounded contribution, protects what they protected.
fn suppress(
    batches: Vec<RecordBatch>,
    schema: SchemaRef,
    k: u64,
    dominance: Dominance,
    noised: bool,
) -> Result<Released, String> {
    let all_patients = format!("{}_0", split::HIDDEN_PATIENTS);
    let mut released = Vec::with_capacity(batches.len());
    let (mut kept, mut dropped) = (0usize, 0usize);
    for batch in batches {
        let batch_schema = batch.schema();
        let named = |prefix: &str| -> Vec<usize> {
            (0..batch.num_columns())
                .filter(|&i| batch_schema.field(i).name().starts_with(prefix))
                .collect()
        };
        let counts = named(split::HIDDEN_PATIENTS);
        let lacking = named(split::HIDDEN_LACKING);
        let shares = named(split::HIDDEN_DOMINANCE);
        let hidden: Vec<usize> = counts
            .iter()
            .chain(&lacking)
            .chain(&shares)
            .copied()
            .collect();
        let (counts, lacking, shares) = if noised {
            let noisy: Vec<usize> = counts
                .into_iter()
                .filter(|&i| *batch_schema.field(i).name() == all_patients)
                .collect();
            (noisy, Vec::new(), Vec::new())
        } else {
            (counts, lacking, shares)
        };
        if counts.is_empty() {
            return Err("the site plan has no hidden patient count".into());
        }
        let mut keep = vec![true; batch.num_rows()];
        // A count of patients must reach k. Behind COUNT(x), SUM(x) and AVG(x), the
        // patients with a row without a value must be none or at least k:
        // `COUNT(*) - COUNT(x)` read their number (red team round 3),
        // `SUM(a) - SUM(a + y - y)` their values (rounds 4 and 5).
        let reaches_k = |count: i64| count >= 0 && count as u64 >= k;
        let none_or_k = |count: i64| count == 0 || reaches_k(count);
        for (columns, allowed) in [
            (&counts, &reaches_k as &dyn Fn(i64) -> bool),
            (&lacking, &none_or_k),
        ] {
            for &index in columns {
                let column = batch
                    .column(index)
                    .as_primitive_opt::<Int64Type>()
                    .ok_or("a hidden count is not Int64")?;
                for (row, count) in column.iter().enumerate() {
                    keep[row] &= allowed(count.unwrap_or(0));
                }
            }
        }
        for &index in &shares {
            let column = batch
                .column(index)
                .as_primitive_opt::<Float64Type>()
                .ok_or("a dominance share is not Float64")?;
            for (row, share) in column.iter().enumerate() {
                // No share (a total of zero) is no dominance: such a group has no
                // patient with a non-zero contribution, and its count drops it.
                keep[row] &= !share.is_some_and(|share| share > dominance.max_share);
            }
        }
        let keep: arrow::array::BooleanArray = keep.into_iter().map(Some).collect();
        let filtered = filter_record_batch(&batch, &keep).map_err(|e| e.to_string())?;
        kept += filtered.num_rows();
        dropped += batch.num_rows() - filtered.num_rows();
        let visible: Vec<usize> = (0..batch.num_columns())
            .filter(|i| !hidden.contains(i))
            .collect();
        let filtered = filtered.project(&visible).map_err(|e| e.to_string())?;
        if filtered.num_rows() > 0 {
            released.push(filtered);
        }
    }
    Ok(Released {
        schema,
        batches: released,
        groups_released: kept,
        groups_suppressed: dropped,
        noise: Vec::new(),
    })
}
