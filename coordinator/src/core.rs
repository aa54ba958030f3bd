//! The query lifecycle at the coordinator: submissions, decisions, dispatch to connected
//! nodes, answers, deadlines and the merge.
//!
//! Every step writes the database first and acts second, so the tables are always the
//! truth: a piece of work is marked dispatched before it is sent (and put back if the
//! node's stream ends), an answer is stored before the question is merged, and a merge
//! that a crash interrupted is simply done again by the next tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::execution::SessionState;
use ern_proto::arrow_ipc;
use ern_proto::v1;
use ern_queries::shown::for_log;
use ern_queries::{Planner, QueryPlan, Refusal};
use tokio::sync::{Notify, OnceCell, mpsc};
use tonic::Status;

use crate::db::{Db, DbError, Event, NodeRecord, StoredResult};
use crate::lifecycle::{EventKind, SiteStep};
use crate::limits::{Limits, SubmitLimiter};
use crate::model::{SiteState, StoredQuery, now_seconds};

/// Lifecycle timing.
#[derive(Debug, Clone)]
pub struct Timing {
    /// How long a dispatched piece of work may go unanswered.
    pub site_timeout: Duration,
    /// A question's deadline when the researcher gives none.
    pub default_deadline: Duration,
    /// The longest deadline a researcher may ask for.
    pub max_deadline: Duration,
    /// Seconds between node heartbeats.
    pub heartbeat: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            site_timeout: Duration::from_secs(300),
            default_deadline: Duration::from_secs(7 * 24 * 3600),
            max_deadline: Duration::from_secs(30 * 24 * 3600),
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// The sender of one node's stream.
type NodeSender = mpsc::Sender<Result<v1::CoordinatorMessage, Status>>;

/// One open node stream.
#[derive(Debug)]
struct Connection {
    generation: u64,
    sender: NodeSender,
    last_seen: u64,
    /// Most pieces of work the node runs at once (from its Hello).
    max_concurrent: usize,
    /// Whether the node takes part in secure aggregation, and the fewest participants
    /// it accepts (from its Hello).
    secure: (bool, usize),
    /// What stops the node from answering, from its last heartbeat (empty: nothing).
    unavailable: String,
    /// The store generation it last reported.
    store_generation: String,
    /// The node's credentials on this stream: its token's expiry (0: never) and the
    /// serial of its certificate (empty without mutual TLS).
    credentials: NodeCredentials,
}

/// What a node's stream was opened with, checked again while it lives: a token that
/// expires or a certificate revoked closes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeCredentials {
    /// When the node's token expires; 0 if never.
    pub expires_at: u64,
    /// The serial of the certificate it presented; empty without mutual TLS.
    pub certificate_serial: String,
    /// When that certificate stops being valid; 0 without one. The handshake checked
    /// it once; a stream outliving it is closed.
    pub certificate_expires_at: u64,
}

impl NodeCredentials {
    /// Whether the token or the certificate has expired at `now`.
    fn expired(&self, now: u64) -> bool {
        [self.expires_at, self.certificate_expires_at]
            .into_iter()
            .any(|at| at != 0 && now >= at)
    }
}

/// The coordinator's shared core, behind every service.
#[derive(Debug)]
pub struct Coordinator {
    db: Arc<Db>,
    timing: Timing,
    limits: Limits,
    submissions: SubmitLimiter,
    /// Serialises dispatch per site, so a node's concurrency limit holds when an approval
    /// and an answer arrive at the same moment; sites do not wait for each other.
    dispatching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    planning: SessionState,
    planner: Planner,
    nodes: Mutex<HashMap<String, Connection>>,
    generations: AtomicU64,
    /// The plans of open questions, built at submission (or once from the stored SQL
    /// after a restart), so answers are checked and merged without planning again.
    plans: Mutex<HashMap<String, Arc<OnceCell<Arc<QueryPlan>>>>>,
    merged: Notify,
    /// Open secure-aggregation rounds, by question (see [`crate::rounds`]).
    pub(crate) rounds: Mutex<HashMap<String, crate::rounds::Round>>,
    /// What each node reported of its privacy policy and its studies' spend, kept
    /// across its reconnections (the node keeps the ledger; this is what stewards see).
    privacy: Mutex<HashMap<String, SitePrivacy>>,
    /// Second nodes refused per site while its stream was live: how many, and when last.
    duplicates: Mutex<HashMap<String, (u64, u64)>>,
}

/// A node's privacy policy and what each study has spent there, as the node reported.
#[derive(Debug, Clone, Default)]
pub struct SitePrivacy {
    /// The policy from its Hello.
    pub policy: v1::PrivacyPolicy,
    /// Epsilon spent per study, in millionths, from its last budget report.
    pub spent_micro: HashMap<String, u64>,
}

/// Why a coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The schema-only catalogue that questions are planned against could not be built.
    #[error("the planning catalogue could not be built: {0}")]
    Planning(String),
}

/// Storage failures become a generic internal error; the detail goes to the log.
pub(crate) fn internal(error: DbError) -> Status {
    tracing::error!(%error, "coordinator storage");
    Status::internal("the coordinator's storage failed; the operator can see the detail in its log")
}

impl From<DbError> for Status {
    fn from(error: DbError) -> Self {
        internal(error)
    }
}

/// A caller's own input quoted back in an error: escaped, and at most 64 characters of
/// it (a 917 KB id once came back as a 917 KB error).
pub(crate) fn echoed(text: &str) -> String {
    ern_queries::shown::shown_bounded(text, 64)
}

impl Coordinator {
    /// A coordinator over `db`.
    pub fn new(db: Db, timing: Timing) -> Result<Self, StartError> {
        let limits = Limits::default();
        Ok(Coordinator {
            db: Arc::new(db),
            timing,
            submissions: SubmitLimiter::new(limits.submits_per_minute),
            limits,
            dispatching: Mutex::new(HashMap::new()),
            planning: ern_queries::catalog::planning_state()
                .map_err(|e| StartError::Planning(e.to_string()))?,
            planner: Planner::new(),
            nodes: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(1),
            plans: Mutex::new(HashMap::new()),
            merged: Notify::new(),
            rounds: Mutex::new(HashMap::new()),
            privacy: Mutex::new(HashMap::new()),
            duplicates: Mutex::new(HashMap::new()),
        })
    }

    fn privacy(&self) -> std::sync::MutexGuard<'_, HashMap<String, SitePrivacy>> {
        self.privacy
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A node's budget report: what each study has spent at its site. Spending only
    /// grows: a study reported lower than before was forgotten by the node (its audit
    /// log lost, or rotated with charges missing), which is logged and put in the audit
    /// trail (`budget-decreased`) for the operator.
    pub async fn node_budgets(&self, site: &str, report: &v1::BudgetReport) {
        let spent = report
            .studies
            .iter()
            .take(100_000)
            .map(|study| {
                (
                    study.study_id.chars().take(128).collect(),
                    study.spent_micro,
                )
            })
            .collect::<HashMap<String, u64>>();
        let decreased: Vec<(String, u64, u64)> = {
            let mut privacy = self.privacy();
            let known = privacy.entry(site.to_string()).or_default();
            let decreased = known
                .spent_micro
                .iter()
                .filter_map(|(study, before)| {
                    let now = spent.get(study).copied().unwrap_or(0);
                    (now < *before).then(|| (study.clone(), *before, now))
                })
                .collect();
            known.spent_micro = spent;
            decreased
        };
        for (study, before, now) in decreased {
            let study = for_log(&study).to_string();
            tracing::warn!(
                target: "ern::link",
                site,
                study = %study,
                before,
                now,
                "a study's privacy spending went down at this site: its node forgot charges (audit log lost or rotated)"
            );
            let event = Event {
                at: now_seconds(),
                actor: format!("node:{site}"),
                kind: EventKind::BudgetDecreased,
                query_id: String::new(),
                site: site.to_string(),
                detail: format!("study {study}: {before} -> {now} micro-epsilon"),
            };
            if let Err(status) = self
                .commit("a budget decrease", move |db| db.record_event(&event))
                .await
            {
                tracing::error!(
                    site,
                    message = status.message(),
                    "recording a budget decrease"
                );
            }
        }
    }

    /// What a site's node last reported of its privacy policy and budgets.
    pub fn site_privacy(&self, site: &str) -> Option<SitePrivacy> {
        self.privacy().get(site).cloned()
    }

    /// The same coordinator under `limits`.
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.submissions = SubmitLimiter::new(limits.submits_per_minute);
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The per-user submission allowance.
    pub fn submissions(&self) -> &SubmitLimiter {
        &self.submissions
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs a write on a blocking thread and waits for it: a commit waits for the disk
    /// (`synchronous = FULL` for what people hand over), and the async workers must serve
    /// other calls meanwhile. Every durable lifecycle commit of a service or of the core
    /// goes through here (the redoable marks, dispatch and a node's answer, commit without
    /// waiting for the disk and run inline); storage failures become a generic internal
    /// error, logged.
    pub async fn commit<T: Send + 'static, E: Send + 'static>(
        &self,
        what: &'static str,
        write: impl FnOnce(&Db) -> Result<T, E> + Send + 'static,
    ) -> Result<T, Status>
    where
        Status: From<E>,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || write(&db))
            .await
            .map_err(|join_error| {
                tracing::error!(%join_error, what, "a commit's thread failed");
                Status::internal(
                    "the coordinator's storage failed; the operator can see the detail in its log",
                )
            })?
            .map_err(Status::from)
    }

    /// The database, shared (for the services' authentication gates).
    pub fn shared_db(&self) -> Arc<Db> {
        Arc::clone(&self.db)
    }

    /// The timing settings.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Plans a submitted question (rules 1-8): the one validation a question gets at the
    /// coordinator. The caller keeps the plan with [`Coordinator::keep_plan`] once the
    /// question has an id.
    pub async fn plan_submission(&self, sql: &str) -> Result<QueryPlan, Refusal> {
        self.planner.plan(sql, &self.planning).await
    }

    /// Keeps the plan of a stored question for its answers and merge.
    pub fn keep_plan(&self, query_id: &str, plan: Arc<QueryPlan>) {
        self.plan_cache().insert(
            query_id.to_string(),
            Arc::new(OnceCell::new_with(Some(plan))),
        );
    }

    /// How many plans this coordinator has built (one per submission, one per open
    /// question after a restart).
    pub fn plans_built(&self) -> u64 {
        self.planner.plans_built()
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a site's node has an open stream.
    pub fn is_connected(&self, site: &str) -> bool {
        self.nodes().contains_key(site)
    }

    /// Whether `generation` is `site`'s current stream (not closed or replaced).
    pub fn is_current_stream(&self, site: &str, generation: u64) -> bool {
        self.nodes()
            .get(site)
            .is_some_and(|connection| connection.generation == generation)
    }

    /// A connected node's secure-aggregation policy from its Hello: whether it takes
    /// part, and the fewest participants it accepts; `None` if not connected.
    pub fn node_secure_policy(&self, site: &str) -> Option<(bool, usize)> {
        self.nodes().get(site).map(|connection| connection.secure)
    }

    /// Sends a message down a site's stream; false if the site is not connected or its
    /// stream ended.
    pub(crate) async fn send_to(&self, site: &str, message: v1::CoordinatorMessage) -> bool {
        let sender = match self.nodes().get(site) {
            Some(connection) => connection.sender.clone(),
            None => return false,
        };
        sender.send(Ok(message)).await.is_ok()
    }

    /// Second nodes refused for `site` while its stream was live, and when the last was.
    pub fn duplicates_refused(&self, site: &str) -> (u64, u64) {
        self.duplicates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(site)
            .copied()
            .unwrap_or((0, 0))
    }

    /// Refuses a second node for a site whose stream is live (open and heard from within
    /// three heartbeats): two nodes for one site would take turns holding the stream and
    /// answer from two stores. A stream that has gone silent is taken over.
    fn refuse_second_node(&self, site: &str, now: u64) -> Result<(), Status> {
        let stale_after = 3 * self.timing.heartbeat.as_secs().max(1);
        let live = self.nodes().get(site).is_some_and(|connection| {
            !connection.sender.is_closed()
                && now.saturating_sub(connection.last_seen) <= stale_after
        });
        if !live {
            return Ok(());
        }
        {
            let mut duplicates = self
                .duplicates
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = duplicates.entry(site.to_string()).or_default();
            entry.0 += 1;
            entry.1 = now;
        }
        tracing::warn!(target: "ern::link", site, "a second node for the site was refused: its stream is live");
        Err(Status::already_exists(format!(
            "site {site} already has a node connected; one node per site: stop the other node (its stream is taken over {stale_after} s after it falls silent)"
        )))
    }

    /// Registers a node's new stream and returns its generation; refused while another
    /// node of the site holds a live one. Work sent on an older, dead stream is sent
    /// again.
    pub async fn node_connected(
        &self,
        site: &str,
        hello: &v1::Hello,
        sender: NodeSender,
        credentials: NodeCredentials,
    ) -> Result<u64, Status> {
        self.refuse_second_node(site, now_seconds())?;
        let (k, version) = (hello.k, crate::node_text::version(&hello.version));
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        // A new stream for a site ends its old one: a round it was in cannot complete.
        self.fail_rounds_of(site, "reconnected during the round")
            .await;
        let now = now_seconds();
        let node = NodeRecord {
            site: site.to_string(),
            last_seen: now,
            k,
            version: version.clone(),
            audit_head: String::new(),
        };
        let event = Event {
            at: now,
            actor: format!("node:{site}"),
            kind: EventKind::Connected,
            query_id: String::new(),
            site: site.to_string(),
            detail: format!("k={k}"),
        };
        let serial = credentials.certificate_serial.clone();
        self.commit("a node's connection", move |db| {
            db.touch_node(&node)?;
            if !serial.is_empty() {
                db.node_certificate(&node.site, &serial)?;
            }
            db.requeue_dispatched(&node.site, now)?;
            db.record_event(&event)
        })
        .await?;
        self.nodes().insert(
            site.to_string(),
            Connection {
                generation,
                sender,
                last_seen: now,
                max_concurrent: hello.max_concurrent.max(1) as usize,
                secure: (hello.secure_aggregation, hello.min_secure_sites as usize),
                unavailable: String::new(),
                store_generation: String::new(),
                credentials,
            },
        );
        self.privacy().entry(site.to_string()).or_default().policy =
            hello.privacy.clone().unwrap_or_default();
        tracing::info!(target: "ern::link", site, k, %version, "node connected");
        Ok(generation)
    }

    /// Closes `site`'s live stream, if any (its node's credentials were revoked or
    /// replaced): the node sees its stream end, and must dial again with a token that
    /// works.
    pub async fn close_node_stream(&self, site: &str) {
        let generation = self.nodes().get(site).map(|c| c.generation);
        if let Some(generation) = generation {
            tracing::info!(target: "ern::link", site, "closing the node's stream: its credentials changed");
            self.node_disconnected(site, generation).await;
        }
    }

    /// Closes every live stream opened with the certificate `serial` (just revoked),
    /// whichever site it is at; true if one was closed.
    pub async fn close_certificate_stream(&self, serial: &str) -> bool {
        let on_it: Vec<(String, u64)> = self
            .nodes()
            .iter()
            .filter(|(_, c)| c.credentials.certificate_serial == serial)
            .map(|(site, c)| (site.clone(), c.generation))
            .collect();
        for (site, generation) in &on_it {
            self.node_disconnected(site, *generation).await;
        }
        !on_it.is_empty()
    }

    /// Closes the streams of nodes whose token or certificate has expired, each with an
    /// event.
    async fn close_expired_streams(&self, now: u64) {
        let expired: Vec<(String, u64)> = self
            .nodes()
            .iter()
            .filter(|(_, c)| c.credentials.expired(now))
            .map(|(site, c)| (site.clone(), c.generation))
            .collect();
        for (site, generation) in expired {
            tracing::warn!(target: "ern::link", site, "the node's token or certificate expired: closing its stream");
            let event = Event {
                at: now,
                actor: "coordinator".into(),
                kind: EventKind::TokenExpired,
                query_id: String::new(),
                site: site.clone(),
                detail: String::new(),
            };
            if let Err(status) = self
                .commit("a token's expiry", move |db| db.record_event(&event))
                .await
            {
                tracing::error!(
                    site,
                    message = status.message(),
                    "recording a token's expiry"
                );
            }
            self.node_disconnected(&site, generation).await;
        }
    }

    /// Forgets a node's stream, if it is still the current one, and puts its unanswered
    /// work back in the queue.
    pub async fn node_disconnected(&self, site: &str, generation: u64) {
        let removed = {
            let mut nodes = self.nodes();
            match nodes.get(site) {
                Some(connection) if connection.generation == generation => {
                    nodes.remove(site);
                    true
                }
                _ => false,
            }
        };
        if removed {
            tracing::info!(target: "ern::link", site, "node disconnected");
            self.fail_rounds_of(site, "disconnected during the round")
                .await;
            let now = now_seconds();
            let event = Event {
                at: now,
                actor: format!("node:{site}"),
                kind: EventKind::Disconnected,
                query_id: String::new(),
                site: site.to_string(),
                detail: String::new(),
            };
            let committed = self
                .commit("a node's disconnection", move |db| {
                    db.requeue_dispatched(&event.site, now)?;
                    db.record_event(&event)
                })
                .await;
            if let Err(status) = committed {
                tracing::error!(
                    site,
                    message = status.message(),
                    "requeueing work of a disconnected node"
                );
            }
        }
    }

    /// Notes a sign of life from a node (every message it sends). The database keeps the
    /// time to the second, so it is written once per second at most, not once per answer.
    pub fn node_seen(&self, site: &str, generation: u64) {
        let now = now_seconds();
        let changed = match self.nodes().get_mut(site) {
            Some(connection) if connection.generation == generation => {
                let changed = connection.last_seen != now;
                connection.last_seen = now;
                changed
            }
            _ => true,
        };
        if changed && let Err(error) = self.db.node_seen(site, now) {
            tracing::warn!(%error, site, "recording a heartbeat");
        }
    }

    /// Keeps what a node's heartbeat says of its health: whether it can answer, and the
    /// store generation it answers from (work sent to a node that cannot answer fails
    /// there with the category it names, so the researcher learns it is the site's to
    /// fix).
    pub fn node_heartbeat(&self, site: &str, generation: u64, beat: &v1::Heartbeat) {
        let unavailable = crate::node_text::failure_category(&beat.unavailable);
        let store_generation = crate::node_text::store_generation(&beat.store_generation);
        let mut nodes = self.nodes();
        let Some(connection) = nodes.get_mut(site).filter(|c| c.generation == generation) else {
            return;
        };
        let was = std::mem::replace(&mut connection.unavailable, unavailable.clone());
        connection.store_generation = store_generation;
        if was != unavailable && !unavailable.is_empty() {
            tracing::warn!(target: "ern::link", site, reason = %unavailable, "the node reports it cannot answer");
        } else if !was.is_empty() && unavailable.is_empty() {
            tracing::info!(target: "ern::link", site, "the node can answer again");
        }
    }

    /// What a connected node last said of its health: what stops it (empty: nothing)
    /// and its store generation; `None` when it is not connected.
    pub fn node_health(&self, site: &str) -> Option<(String, String)> {
        self.nodes()
            .get(site)
            .map(|c| (c.unavailable.clone(), c.store_generation.clone()))
    }

    /// Keeps the latest audit-log head a node reported: 64 hex characters, or nothing is
    /// kept (a node's string is never stored unchecked).
    pub fn node_audit_head(&self, site: &str, head: &str) {
        let well_formed = head.len() == 64 && head.bytes().all(|b| b.is_ascii_hexdigit());
        if !well_formed {
            return;
        }
        if let Err(error) = self.db.node_audit_head(site, head) {
            tracing::warn!(%error, site, "recording an audit head");
        }
    }

    /// Sends approved work of `site` to its node, if connected, as far as the node's
    /// concurrency allows; the rest goes when answers come back.
    pub async fn dispatch(&self, site: &str) -> Result<usize, Status> {
        let site_lock = Arc::clone(
            self.dispatching
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(site.to_string())
                .or_default(),
        );
        let _one_at_a_time = site_lock.lock().await;
        let (sender, max_concurrent) = match self.nodes().get(site) {
            Some(connection) => (connection.sender.clone(), connection.max_concurrent),
            None => return Ok(0),
        };
        let room =
            max_concurrent.saturating_sub(self.db.in_flight(site).map_err(internal)? as usize);
        if room == 0 {
            return Ok(0);
        }
        let now = now_seconds();
        // An expired approval would be refused by the node: refused here, unsent.
        let expired = self
            .db
            .refuse_expired_approvals(site, now)
            .map_err(internal)?;
        for query_id in expired {
            tracing::info!(site, query = %query_id, "approval expired before dispatch");
            Box::pin(self.finalize(&query_id)).await?;
        }
        let work = self.db.approved_work(site, now).map_err(internal)?;
        let mut sent = 0;
        for item in work.into_iter().take(room) {
            if !self
                .db
                .mark_dispatched(&item.query_id, site, now)
                .map_err(internal)?
            {
                continue;
            }
            let message = v1::CoordinatorMessage {
                message: Some(v1::coordinator_message::Message::Work(v1::Work {
                    query_id: item.query_id.clone(),
                    sql: item.sql,
                    approval: Some(v1::Approval::from(item.approval)),
                    secure_round: None,
                    study_id: item.study_id,
                })),
            };
            if sender.send(Ok(message)).await.is_err() {
                // The stream ended under us; the next connection gets the work.
                self.db.requeue_dispatched(site, now).map_err(internal)?;
                break;
            }
            tracing::debug!(site, query = %item.query_id, "dispatched");
            sent += 1;
        }
        Ok(sent)
    }

    /// Stores a node's answer and merges the question if it was the last one.
    pub async fn handle_result(&self, site: &str, result: v1::WorkResult) -> Result<(), Status> {
        use v1::work_result::Outcome;
        if self.round_open(&result.query_id) {
            let in_round = self.handle_round_result(site, result.clone()).await?;
            if in_round {
                // The node has room again.
                return self.dispatch(site).await.map(|_| ());
            }
        }
        if matches!(
            result.outcome,
            Some(Outcome::Statement(_) | Outcome::Masked(_))
        ) {
            tracing::warn!(site, query = %for_log(&result.query_id), "a round message for no open round");
            return Ok(());
        }
        let now = now_seconds();
        let (mut category, mut reference) = (String::new(), String::new());
        let (step, detail, partial) = match result.outcome {
            Some(Outcome::Released(released)) => match self
                .check_partial(&result.query_id, &released.arrow_ipc)
                .await
            {
                Ok(()) => {
                    match crate::noise::with_site_noise(released.arrow_ipc, &[released.noise]) {
                        Ok(bytes) => (SiteStep::Answer, String::new(), Some(bytes)),
                        Err(reason) => {
                            tracing::warn!(site, query = %for_log(&result.query_id), reason, "noise description");
                            (SiteStep::Fail, "malformed-result".to_string(), None)
                        }
                    }
                }
                Err(reason) => {
                    tracing::warn!(site, query = %for_log(&result.query_id), reason, "malformed partials");
                    (SiteStep::Fail, "malformed-result".to_string(), None)
                }
            },
            Some(Outcome::Refused(refused)) => {
                category = crate::node_text::failure_category(&refused.category);
                if !refused.reference.is_empty() {
                    reference = crate::node_text::failure_reference(&refused.reference);
                }
                (
                    SiteStep::Refuse,
                    crate::node_text::rule_name(&refused.rule),
                    None,
                )
            }
            Some(Outcome::Failed(failed)) => {
                category = crate::node_text::failure_category(&failed.category);
                reference = crate::node_text::failure_reference(&failed.reference);
                (SiteStep::Fail, reference.clone(), None)
            }
            None | Some(Outcome::Statement(_) | Outcome::Masked(_)) => {
                (SiteStep::Fail, "empty-result".to_string(), None)
            }
        };
        // A redoable mark (see `db`): it commits without waiting for the disk, so inline.
        let recorded = self
            .db
            .record_answer(
                &result.query_id,
                site,
                step,
                &crate::db::Answer {
                    detail: &detail,
                    partial: partial.as_deref(),
                    category: &category,
                    reference: &reference,
                },
                now,
            )
            .map_err(internal)?;
        if recorded {
            tracing::info!(site, query = %for_log(&result.query_id), state = step.to().as_str(), "answer");
            // The node has room again.
            self.dispatch(site).await?;
            self.finalize(&result.query_id).await?;
        }
        Ok(())
    }

    /// A released partial must decode and have the columns the question implies.
    async fn check_partial(&self, query_id: &str, bytes: &[u8]) -> Result<(), String> {
        let (schema, _) = arrow_ipc::decode(bytes).map_err(|e| e.to_string())?;
        // The kept plan, without reading the question's row; the row only after a restart.
        let kept = self
            .plan_cache()
            .get(query_id)
            .and_then(|cell| cell.get().cloned());
        let plan = match kept {
            Some(plan) => plan,
            None => {
                let query = self
                    .db
                    .query(query_id)
                    .map_err(|e| e.to_string())?
                    .ok_or("unknown question")?;
                self.plan_of(&query)
                    .await
                    .map_err(|refusal| refusal.to_string())?
            }
        };
        plan.check_released(&schema).map_err(|e| e.to_string())
    }

    /// Merges a question whose sites have all finished, and stores the table.
    pub async fn finalize(&self, query_id: &str) -> Result<bool, Status> {
        // Cheap first: most answers are not the last one, and a count of open sites reads
        // one index where the question's row carries its SQL text.
        if self.db.unfinished_sites(query_id).map_err(internal)? > 0 {
            return Ok(false);
        }
        let Some(query) = self.db.query(query_id).map_err(internal)? else {
            return Ok(false);
        };
        if query.complete {
            return Ok(false);
        }
        let targets = self.db.targets(query_id).map_err(internal)?;
        if !targets.iter().all(|t| t.state.is_final()) {
            return Ok(false);
        }
        let result = match self.merge(&query, &targets).await {
            Ok(result) => result,
            Err(reason) => {
                // Merging the same stored answers again would fail again: the question
                // ends here, with the reason, instead of being retried on every tick.
                let id = query_id.to_string();
                let failed = self
                    .commit("a failed merge", move |db| {
                        db.fail_merge(&id, &reason, now_seconds())
                    })
                    .await?;
                if failed {
                    self.plan_cache().remove(query_id);
                    self.merged.notify_waiters();
                }
                return Ok(failed);
            }
        };
        let rows = result.rows;
        // The table must survive a crash once the question shows as complete.
        let id = query_id.to_string();
        let stored = self
            .commit("the merged table", move |db| db.store_result(&id, &result))
            .await?;
        if stored {
            tracing::info!(query = query_id, rows, "merged");
            self.plan_cache().remove(query_id);
            self.merged.notify_waiters();
        }
        Ok(stored)
    }

    /// Merges a question's stored answers. An error is the reason the researcher sees
    /// (it names no value); the detail goes to the log.
    async fn merge(
        &self,
        query: &StoredQuery,
        targets: &[crate::model::Target],
    ) -> Result<StoredResult, String> {
        let merge_failed = |reason: &str, detail: String| {
            tracing::error!(query = %query.id, reason, detail, "merge");
            reason.to_string()
        };
        let plan = self.plan_of(query).await.map_err(|refusal| {
            merge_failed(
                "the question no longer passes validation",
                refusal.to_string(),
            )
        })?;
        let mut batches = Vec::new();
        let mut schemas = Vec::new();
        if let Some(bytes) = self
            .db
            .secure_totals(&query.id)
            .map_err(|e| merge_failed("the round's totals could not be read", e.to_string()))?
        {
            let (schema, totals) = arrow_ipc::decode(&bytes).map_err(|e| {
                merge_failed("the round's totals could not be decoded", e.to_string())
            })?;
            schemas.push(schema);
            batches.extend(totals);
        }
        for target in targets {
            if let (SiteState::Answered, Some(bytes)) = (target.state, &target.partial) {
                let (schema, site_batches) = arrow_ipc::decode(bytes).map_err(|e| {
                    merge_failed("a site's answer could not be decoded", e.to_string())
                })?;
                schemas.push(schema);
                batches.extend(site_batches);
            }
        }
        let merged = plan
            .merge(batches)
            .await
            .map_err(|e| merge_failed(merge_failure_reason(&e), e.to_string()))?;
        let schema = match merged.first() {
            Some(batch) => batch.schema(),
            None => plan.result_schema(),
        };
        let noise = crate::noise::merged_noise(&plan, schemas.iter().map(|s| s.as_ref()));
        let schema = crate::noise::with_merged_noise(schema, &noise);
        let merged = merged
            .into_iter()
            .map(|batch| batch.with_schema(Arc::clone(&schema)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| merge_failed("the merged table could not be encoded", e.to_string()))?;
        let rows = merged.iter().map(|b| b.num_rows() as u64).sum();
        let arrow_ipc = arrow_ipc::encode(&schema, &merged)
            .map_err(|e| merge_failed("the merged table could not be encoded", e.to_string()))?;
        Ok(StoredResult {
            arrow_ipc,
            rows,
            merged_at: now_seconds(),
        })
    }

    fn plan_cache(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<OnceCell<Arc<QueryPlan>>>>> {
        self.plans
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The plan of a question: the one kept since submission, or (after a restart, or for
    /// a question stored without one) built once from the stored SQL and kept.
    pub async fn plan_of(&self, query: &StoredQuery) -> Result<Arc<QueryPlan>, Refusal> {
        // One cell per question: answers racing after a restart wait for one build.
        let cell = Arc::clone(self.plan_cache().entry(query.id.clone()).or_default());
        cell.get_or_try_init(|| async {
            Ok(Arc::new(
                self.planner.plan(&query.sql, &self.planning).await?,
            ))
        })
        .await
        .cloned()
    }

    /// Forgets what is kept in memory for a question its researcher withdrew (its plan,
    /// an open round) and wakes whoever waits on it.
    pub fn withdrawn(&self, query_id: &str) {
        self.plan_cache().remove(query_id);
        self.drop_round(query_id);
        self.merged.notify_waiters();
    }

    /// Waits until `query_id` has a merged result stored.
    pub async fn wait_merged(&self, query_id: &str) -> Result<(), Status> {
        loop {
            let notified = self.merged.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self
                .db
                .query(query_id)
                .map_err(internal)?
                .is_some_and(|q| q.complete)
            {
                return Ok(());
            }
            notified.await;
        }
    }

    /// Periodic work: deadlines, site timeouts, stale streams, merges a crash left undone.
    pub async fn tick(&self) {
        let now = now_seconds();
        let timeout = self.timing.site_timeout.as_secs();
        match self
            .commit("deadlines and timeouts", move |db| {
                db.expire(now, now.saturating_sub(timeout))
            })
            .await
        {
            Ok(touched) => {
                for query_id in touched {
                    tracing::info!(query = %query_id, "deadline or site timeout");
                }
            }
            Err(status) => tracing::error!(message = status.message(), "expiring work"),
        }
        self.tick_secure().await;
        self.close_expired_streams(now).await;
        // Timeouts free room on nodes; also catches any work a race left approved.
        let connected: Vec<String> = self.nodes().keys().cloned().collect();
        for site in connected {
            if let Err(status) = self.dispatch(&site).await {
                tracing::error!(site, message = status.message(), "dispatching on tick");
            }
        }
        // A stream silent for three heartbeats is dead even if TCP has not noticed.
        let stale_after = 3 * self.timing.heartbeat.as_secs().max(1);
        let stale: Vec<(String, u64)> = self
            .nodes()
            .iter()
            .filter(|(_, c)| now.saturating_sub(c.last_seen) > stale_after)
            .map(|(site, c)| (site.clone(), c.generation))
            .collect();
        for (site, generation) in stale {
            tracing::warn!(
                site,
                "node silent for three heartbeats; dropping its stream"
            );
            self.node_disconnected(&site, generation).await;
        }
        match self.db.open_queries() {
            Ok(open) => {
                for query_id in open {
                    if let Err(status) = self.finalize(&query_id).await {
                        tracing::error!(query = %query_id, message = status.message(), "finalizing");
                    }
                }
            }
            Err(error) => tracing::error!(%error, "listing open questions"),
        }
    }
}

/// Why a merge failed, in words a researcher can act on, from the error's kind (never its
/// text, which may quote a value).
fn merge_failure_reason(error: &ern_queries::split::SplitError) -> &'static str {
    use datafusion::arrow::error::ArrowError;
    use datafusion::error::DataFusionError;
    use ern_queries::split::SplitError;
    match error {
        SplitError::BadPartials(_) => {
            "a site's answer does not have the shape the question implies"
        }
        SplitError::TooSensitive(_) => "a released value is too sensitive to noise",
        SplitError::DataFusion(error) => match error.find_root() {
            DataFusionError::ArrowError(arrow, _)
                if matches!(**arrow, ArrowError::DivideByZero) =>
            {
                "an expression over the merged totals divides by zero"
            }
            DataFusionError::ArrowError(arrow, _)
                if matches!(**arrow, ArrowError::ArithmeticOverflow(_)) =>
            {
                "an expression over the merged totals overflows"
            }
            _ => "an expression over the merged totals failed",
        },
    }
}
