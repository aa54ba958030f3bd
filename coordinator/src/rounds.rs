//! Secure aggregation at the coordinator: one round per question, relayed, summed and
//! released on network totals (DESIGN.md, "Secure aggregation").
//!
//! A secure question waits until no site awaits its steward and every approved site's
//! node is connected. Then, if every one of those nodes takes part in secure aggregation
//! (its Hello says so) and there are enough of them, all are dispatched at once with the
//! round's participant list (round 1); otherwise the question runs per site, and says why.
//! The coordinator relays every participant's signed statement to all of them (round 2),
//! adds their masked vectors as they arrive (each is dropped once added: only the running
//! sum is kept, in memory), and when all have arrived releases the cells whose totals
//! pass the largest k any participant signed and the strictest concentration limit. A
//! participant that refuses, fails, times out or disconnects fails the round for all; a
//! failed round is never run again, with fewer sites or at all.

use std::collections::{BTreeMap, BTreeSet};

use ern_proto::arrow_ipc;
use ern_proto::v1;
use ern_queries::shown::for_log;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::Status;

use crate::core::{Coordinator, internal};
use crate::db::SECURE;
use crate::lifecycle::SiteStep;
use crate::model::{SiteState, now_seconds};

/// A node's privacy policy as its round statement declares it (empty for none); the
/// node's own declaration is what counts, this only avoids rounds bound to fail.
fn privacy_declaration(policy: &v1::PrivacyPolicy) -> String {
    if !policy.enabled {
        return String::new();
    }
    format!(
        "{} eps={} groups={} rows={}",
        policy.mechanism,
        policy.epsilon_micro,
        policy.max_groups_per_patient,
        policy.max_rows_per_patient
    )
}

/// The fewest participants the coordinator starts a round with (nodes may ask for more).
pub const MIN_ROUND_SITES: usize = 3;

/// One question's round, in memory only.
#[derive(Debug)]
pub(crate) struct Round {
    round_id: String,
    participants: Vec<String>,
    statements: BTreeMap<String, v1::RoundStatement>,
    relayed: bool,
    delivered: BTreeSet<String>,
    /// The running sum of the masked vectors received so far.
    sum: Vec<u64>,
    vector_len: usize,
    /// What noise each participant's share carries (empty lists for none).
    noise: Vec<Vec<v1::PartialNoise>>,
}

impl Round {
    fn includes(&self, site: &str) -> bool {
        self.participants.iter().any(|p| p == site)
    }
}

/// What a completed round releases from: the totals, the strictest signed limits, and
/// what noise the participants' shares carry.
struct Release {
    totals: Vec<u64>,
    k: u64,
    max_concentration: f64,
    noise: Vec<Vec<v1::PartialNoise>>,
    /// Every participant signed a noise declaration: the totals are noisy and carry no
    /// exact hidden counts or moments, and k applies to the noisy patient count alone.
    noised: bool,
}

/// What a node's message does to a round.
enum RoundEvent {
    /// Nothing more to do.
    Pending,
    /// Every statement is in: relay them.
    Relay(v1::SecureRound, Vec<String>),
    /// Every masked vector is in: release the totals.
    Complete {
        participants: Vec<String>,
        totals: Vec<u64>,
        k: u64,
        max_concentration: f64,
        noise: Vec<Vec<v1::PartialNoise>>,
        noised: bool,
    },
    /// The round cannot complete.
    Fail {
        culprit: Option<(String, SiteStep, String)>,
        reason: String,
    },
}

fn random_round_id() -> Result<String, Status> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| Status::internal("no random source for a round id"))?;
    Ok(hex::encode(bytes))
}

impl Coordinator {
    fn rounds(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Round>> {
        self.rounds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether a round of `query_id` is open.
    pub fn round_open(&self, query_id: &str) -> bool {
        self.rounds().contains_key(query_id)
    }

    /// Forgets the open round of a question that was withdrawn: what its participants
    /// send afterwards goes nowhere (their parts are no longer dispatched either).
    pub(crate) fn drop_round(&self, query_id: &str) {
        self.rounds().remove(query_id);
    }

    /// Starts the round of a secure question once every site has decided and every
    /// approved node is connected (or, after the site timeout, with the approved nodes
    /// that are), or turns it per-site as soon as a round is known to be impossible: an
    /// approved node whose policy does not take part, or too few approved sites.
    pub async fn advance_secure(&self, query_id: &str) -> Result<(), Status> {
        if self.round_open(query_id) {
            return Ok(());
        }
        let Some((mode, _)) = self.db().mode(query_id).map_err(internal)? else {
            return Ok(());
        };
        if mode != SECURE {
            return Ok(());
        }
        let targets = self.db().targets(query_id).map_err(internal)?;
        if targets.iter().any(|t| t.state == SiteState::Dispatched) {
            return Ok(());
        }
        let approved: Vec<&crate::model::Target> = targets
            .iter()
            .filter(|t| t.state == SiteState::Approved)
            .collect();
        let opted_out = approved.iter().find(|t| {
            self.node_secure_policy(&t.site)
                .is_some_and(|(takes_part, _)| !takes_part)
        });
        if let Some(target) = opted_out {
            let reason = format!(
                "site {}'s policy does not take part in secure aggregation",
                target.site
            );
            return self.turn_per_site(query_id, reason, &targets).await;
        }
        if targets
            .iter()
            .any(|t| t.state == SiteState::AwaitingApproval)
        {
            return Ok(());
        }
        let connected: Vec<(String, usize)> = approved
            .iter()
            .filter_map(|t| {
                self.node_secure_policy(&t.site)
                    .map(|(_, min_sites)| (t.site.clone(), min_sites))
            })
            .collect();
        let offline: Vec<String> = approved
            .iter()
            .map(|t| t.site.clone())
            .filter(|site| !connected.iter().any(|(c, _)| c == site))
            .collect();
        if !offline.is_empty() {
            let last_decision = targets.iter().map(|t| t.updated_at).max().unwrap_or(0);
            let waited = now_seconds().saturating_sub(last_decision);
            if waited < self.timing().site_timeout.as_secs() {
                // Wait for every approved node, up to the site timeout.
                return Ok(());
            }
        }
        if approved.is_empty() {
            return Ok(());
        }
        let needed = connected
            .iter()
            .map(|(_, min_sites)| *min_sites)
            .max()
            .unwrap_or(MIN_ROUND_SITES)
            .max(MIN_ROUND_SITES);
        if connected.len() < needed {
            let reason = format!(
                "{} approved site(s) online; secure aggregation needs at least {needed}",
                connected.len()
            );
            return self.turn_per_site(query_id, reason, &targets).await;
        }
        // Every participant adds its share of the noise of the total: a round needs one
        // privacy policy (the nodes check it again in the signed statements).
        let policies: Vec<Option<String>> = connected
            .iter()
            .map(|(site, _)| {
                self.site_privacy(site)
                    .map(|p| privacy_declaration(&p.policy))
            })
            .collect();
        if policies.windows(2).any(|pair| pair[0] != pair[1]) {
            let reason = "the approved sites' privacy policies differ (noise on or off, mechanism, epsilon or bounds); a secure round needs one"
                .to_string();
            return self.turn_per_site(query_id, reason, &targets).await;
        }
        if !offline.is_empty() {
            let (id, sites) = (query_id.to_string(), offline.clone());
            self.commit("approved sites offline at a round", move |db| {
                for site in &sites {
                    db.step(
                        &id,
                        site,
                        SiteStep::Expire,
                        "coordinator",
                        "offline when the secure round started",
                        now_seconds(),
                    )?;
                }
                Ok::<_, crate::db::DbError>(())
            })
            .await?;
        }
        let participants = connected.into_iter().map(|(site, _)| site).collect();
        self.start_round(query_id, participants).await
    }

    /// Runs a secure question per site from now on (the floor every node applies), with
    /// the reason, and sends the approved work.
    async fn turn_per_site(
        &self,
        query_id: &str,
        reason: String,
        targets: &[crate::model::Target],
    ) -> Result<(), Status> {
        let (id, note) = (query_id.to_string(), reason.clone());
        let changed = self
            .commit("a question turned per-site", move |db| {
                db.run_per_site(&id, &note)
            })
            .await?;
        if changed {
            tracing::info!(query = query_id, reason, "runs per site");
            for target in targets.iter().filter(|t| t.state == SiteState::Approved) {
                self.dispatch(&target.site).await?;
            }
        }
        Ok(())
    }

    /// Dispatches a secure question to all its participants at once (round 1).
    async fn start_round(&self, query_id: &str, participants: Vec<String>) -> Result<(), Status> {
        let Some(query) = self.db().query(query_id).map_err(internal)? else {
            return Ok(());
        };
        let work = {
            let mut work = Vec::new();
            for site in &participants {
                let Some(item) = self
                    .db()
                    .approved_secure_work(query_id, site)
                    .map_err(internal)?
                else {
                    return Ok(());
                };
                work.push((site.clone(), item));
            }
            work
        };
        let round_id = random_round_id()?;
        {
            let mut rounds = self.rounds();
            if rounds.contains_key(query_id) {
                return Ok(());
            }
            rounds.insert(
                query_id.to_string(),
                Round {
                    round_id: round_id.clone(),
                    participants: participants.clone(),
                    statements: BTreeMap::new(),
                    relayed: false,
                    delivered: BTreeSet::new(),
                    sum: Vec::new(),
                    noise: Vec::new(),
                    vector_len: 0,
                },
            );
        }
        let (id, sites, round) = (query_id.to_string(), participants.clone(), round_id.clone());
        let started = self
            .commit("a secure round's start", move |db| {
                db.start_round(&id, &sites, &round, now_seconds())
            })
            .await;
        match started {
            Ok(true) => {}
            Ok(false) => {
                self.rounds().remove(query_id);
                return Ok(());
            }
            Err(status) => {
                self.rounds().remove(query_id);
                return Err(status);
            }
        }
        tracing::info!(query = query_id, round = %round_id, sites = participants.len(), "secure round started");
        for (site, item) in work {
            let message = v1::CoordinatorMessage {
                message: Some(v1::coordinator_message::Message::Work(v1::Work {
                    query_id: query.id.clone(),
                    study_id: query.study_id.clone(),
                    sql: query.sql.clone(),
                    approval: Some(v1::Approval::from(item.approval)),
                    secure_round: Some(v1::SecureRoundStart {
                        round_id: round_id.clone(),
                        participants: participants.clone(),
                    }),
                })),
            };
            if !self.send_to(&site, message).await {
                self.fail_round(
                    query_id,
                    None,
                    format!("site {site} disconnected before round 1"),
                )
                .await?;
                return Ok(());
            }
        }
        Ok(())
    }

    /// Takes a node's answer to a question whose round is open: a statement, a masked
    /// vector, or a refusal or failure that ends the round. Returns false if no round of
    /// the question includes the site (the caller handles the answer as per-site).
    pub(crate) async fn handle_round_result(
        &self,
        site: &str,
        result: v1::WorkResult,
    ) -> Result<bool, Status> {
        use v1::work_result::Outcome;
        let query_id = result.query_id.clone();
        let event = {
            let mut rounds = self.rounds();
            let Some(round) = rounds.get_mut(&query_id) else {
                return Ok(false);
            };
            if !round.includes(site) {
                return Ok(false);
            }
            match result.outcome {
                Some(Outcome::Statement(statement)) => take_statement(round, site, statement),
                Some(Outcome::Masked(masked)) => take_masked(round, site, masked),
                Some(Outcome::Refused(refused)) => {
                    let rule = crate::node_text::rule_name(&refused.rule);
                    RoundEvent::Fail {
                        reason: format!("site {site} refused ({rule})"),
                        culprit: Some((site.to_string(), SiteStep::Refuse, rule)),
                    }
                }
                Some(Outcome::Failed(failed)) => {
                    let reference = crate::node_text::failure_reference(&failed.reference);
                    RoundEvent::Fail {
                        reason: format!("site {site} failed"),
                        culprit: Some((site.to_string(), SiteStep::Fail, reference)),
                    }
                }
                Some(Outcome::Released(_)) | None => RoundEvent::Fail {
                    reason: format!("site {site} broke the round's protocol"),
                    culprit: Some((
                        site.to_string(),
                        SiteStep::Fail,
                        "malformed-result".to_string(),
                    )),
                },
            }
        };
        match event {
            RoundEvent::Pending => {}
            RoundEvent::Relay(message, participants) => {
                tracing::info!(query = %for_log(&query_id), "secure round: statements relayed");
                for participant in participants {
                    let message = v1::CoordinatorMessage {
                        message: Some(v1::coordinator_message::Message::Round(message.clone())),
                    };
                    if !self.send_to(&participant, message).await {
                        self.fail_round(
                            &query_id,
                            None,
                            format!("site {participant} disconnected between the rounds"),
                        )
                        .await?;
                        break;
                    }
                }
            }
            RoundEvent::Complete {
                participants,
                totals,
                k,
                max_concentration,
                noise,
                noised,
            } => {
                let release = Release {
                    totals,
                    k,
                    max_concentration,
                    noise,
                    noised,
                };
                self.complete_round(&query_id, participants, release)
                    .await?;
            }
            RoundEvent::Fail { culprit, reason } => {
                self.fail_round(&query_id, culprit, reason).await?;
            }
        }
        Ok(true)
    }

    /// Releases a completed round's totals: k and concentration on the network totals,
    /// then the ordinary merge on the kept cells.
    async fn complete_round(
        &self,
        query_id: &str,
        participants: Vec<String>,
        release: Release,
    ) -> Result<(), Status> {
        let Release {
            totals,
            k,
            max_concentration,
            noise,
            noised,
        } = release;
        // The round stays open until its steps are committed: a tick meanwhile must not
        // take its dispatched sites for a round the coordinator lost.
        let release = match self.db().query(query_id).map_err(internal)? {
            Some(query) => match self.plan_of(&query).await {
                Ok(plan) => plan
                    .secure_layout()
                    .and_then(|layout| {
                        if noised {
                            layout.release_noised(&totals, k)
                        } else {
                            layout.release(&totals, k, max_concentration)
                        }
                    })
                    .map_err(|e| e.to_string())
                    .and_then(|release| {
                        arrow_ipc::encode(&release.batch.schema(), &[release.batch])
                            .map_err(|e| e.to_string())
                            .and_then(|bytes| crate::noise::with_site_noise(bytes, &noise))
                            .map(|bytes| (bytes, release.cells_released))
                    }),
                Err(refusal) => Err(refusal.to_string()),
            },
            None => {
                self.rounds().remove(query_id);
                return Ok(());
            }
        };
        drop(totals);
        let (bytes, cells) = match release {
            Ok(release) => release,
            Err(detail) => {
                tracing::error!(
                    query = query_id,
                    detail,
                    "releasing a secure round's totals"
                );
                return self
                    .fail_round(
                        query_id,
                        None,
                        "the round's totals could not be released".into(),
                    )
                    .await;
            }
        };
        let id = query_id.to_string();
        let completed = self
            .commit("a secure round's totals", move |db| {
                db.complete_round(&id, &participants, &bytes, now_seconds())
            })
            .await;
        self.rounds().remove(query_id);
        let completed = completed?;
        tracing::info!(
            query = query_id,
            completed,
            cells,
            k,
            "secure round complete"
        );
        self.finalize(query_id).await?;
        Ok(())
    }

    /// Ends a round that cannot complete: the sum is dropped, the site that broke it
    /// takes its own step, every other participant ends round-failed.
    pub(crate) async fn fail_round(
        &self,
        query_id: &str,
        culprit: Option<(String, SiteStep, String)>,
        reason: String,
    ) -> Result<(), Status> {
        self.rounds().remove(query_id);
        tracing::warn!(query = %for_log(query_id), reason, "secure round failed");
        let id = query_id.to_string();
        let detail = format!("round-incomplete: {reason}");
        self.commit("a failed secure round", move |db| {
            let culprit = culprit
                .as_ref()
                .map(|(site, step, detail)| (site.as_str(), *step, detail.as_str()));
            db.fail_round(&id, culprit, &detail, now_seconds())
        })
        .await?;
        self.finalize(query_id).await?;
        Ok(())
    }

    /// Fails every open round that includes `site` (its stream ended or was replaced).
    pub(crate) async fn fail_rounds_of(&self, site: &str, why: &str) {
        let open: Vec<String> = self
            .rounds()
            .iter()
            .filter(|(_, round)| round.includes(site))
            .map(|(query_id, _)| query_id.clone())
            .collect();
        for query_id in open {
            let reason = format!("site {site} {why}");
            if let Err(status) = self.fail_round(&query_id, None, reason).await {
                tracing::error!(query = %query_id, message = status.message(), "failing a round");
            }
        }
    }

    /// Periodic checks of secure questions: a round whose participant is no longer
    /// dispatched (timed out, expired) fails; a dispatched secure question without a
    /// round in memory (the coordinator restarted mid-round) fails; questions whose
    /// sites have all decided start their round.
    pub(crate) async fn tick_secure(&self) {
        let open = match self.db().open_secure_queries() {
            Ok(open) => open,
            Err(error) => {
                tracing::error!(%error, "listing secure questions");
                return;
            }
        };
        for query_id in open {
            let targets = match self.db().targets(&query_id) {
                Ok(targets) => targets,
                Err(error) => {
                    tracing::error!(%error, "reading a secure question's sites");
                    continue;
                }
            };
            let round = self
                .rounds()
                .get(&query_id)
                .map(|round| round.participants.clone());
            let outcome = match round {
                Some(participants) => {
                    match participants.iter().find(|site| {
                        targets
                            .iter()
                            .any(|t| &t.site == *site && t.state.is_final())
                    }) {
                        Some(site) => {
                            self.fail_round(
                                &query_id,
                                None,
                                format!("site {site} did not answer in time"),
                            )
                            .await
                        }
                        None => Ok(()),
                    }
                }
                None if targets.iter().any(|t| t.state == SiteState::Dispatched) => {
                    self.fail_round(
                        &query_id,
                        None,
                        "the coordinator restarted during the round".into(),
                    )
                    .await
                }
                None => self.advance_secure(&query_id).await,
            };
            if let Err(status) = outcome {
                tracing::error!(query = %query_id, message = status.message(), "secure round tick");
            }
        }
    }
}

/// A participant's round-1 statement.
fn take_statement(round: &mut Round, site: &str, statement: v1::RoundStatement) -> RoundEvent {
    let fail = |why: &str| RoundEvent::Fail {
        reason: format!("site {site} {why}"),
        culprit: Some((site.to_string(), SiteStep::Fail, "round-protocol".into())),
    };
    if round.relayed || round.statements.contains_key(site) {
        return fail("sent a second statement");
    }
    if statement.site != site || statement.round_id != round.round_id {
        return fail("sent a statement for another site or round");
    }
    if statement.participants != round.participants {
        return fail("signed another participant list");
    }
    round.statements.insert(site.to_string(), statement);
    if round.statements.len() < round.participants.len() {
        return RoundEvent::Pending;
    }
    let lengths: BTreeSet<u64> = round.statements.values().map(|s| s.vector_len).collect();
    let length = match lengths.into_iter().collect::<Vec<_>>().as_slice() {
        [only] => *only,
        _ => {
            return RoundEvent::Fail {
                reason: "the participants computed vectors of different lengths".into(),
                culprit: None,
            };
        }
    };
    round.vector_len = length as usize;
    round.sum = vec![0; round.vector_len];
    round.relayed = true;
    let message = v1::SecureRound {
        query_id: round
            .statements
            .values()
            .next()
            .map(|s| s.query_id.clone())
            .unwrap_or_default(),
        round_id: round.round_id.clone(),
        statements: round.statements.values().cloned().collect(),
    };
    RoundEvent::Relay(message, round.participants.clone())
}

/// A participant's round-2 masked vector: added to the sum, then dropped.
fn take_masked(round: &mut Round, site: &str, masked: v1::MaskedVector) -> RoundEvent {
    let fail = |why: &str| RoundEvent::Fail {
        reason: format!("site {site} {why}"),
        culprit: Some((site.to_string(), SiteStep::Fail, "round-protocol".into())),
    };
    if !round.relayed || round.delivered.contains(site) {
        return fail("sent a masked vector out of turn");
    }
    if masked.round_id != round.round_id || masked.values.len() != round.vector_len {
        return fail("sent a masked vector of another round or length");
    }
    for (total, value) in round.sum.iter_mut().zip(&masked.values) {
        *total = total.wrapping_add(*value);
    }
    round.noise.push(masked.noise);
    round.delivered.insert(site.to_string());
    if round.delivered.len() < round.participants.len() {
        return RoundEvent::Pending;
    }
    let k = round
        .statements
        .values()
        .map(|s| u64::from(s.k))
        .max()
        .unwrap_or(u64::MAX);
    let max_concentration = round
        .statements
        .values()
        .map(|s| f64::from(s.max_concentration_ppm) / 1e6)
        .fold(f64::INFINITY, f64::min);
    RoundEvent::Complete {
        participants: round.participants.clone(),
        totals: std::mem::take(&mut round.sum),
        k,
        max_concentration,
        noise: std::mem::take(&mut round.noise),
        noised: round.statements.values().all(|s| !s.privacy.is_empty()),
    }
}
