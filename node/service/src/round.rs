//! Secure aggregation at the node: round 1 (check, compute, sign) and round 2 (verify,
//! record, mask), with the node's own policy deciding everything (DESIGN.md, "Secure
//! aggregation").
//!
//! Round 1 checks the approval as any request does, then this site's policy (secure
//! aggregation on, enough participants, every participant in its roster), that the node
//! never took part in this question before (a second round of the same question could
//! difference one site out), and that the question is eligible; it then runs the secure
//! site plan, writes the vector over the public domain, makes one fresh X25519 key per
//! peer and signs the statement. The vector and the keys wait in memory for round 2.
//!
//! Round 2 checks every relayed statement against the roster (signatures, the same
//! participants, question, domain and length everywhere), records in the node's record of
//! executions that the question's vector is sent (synced to disk) and audits it, and only
//! then masks the vector. The ephemeral keys are consumed by the masking: a round's keys
//! serve one vector.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ern_proto::v1;
use ern_queries::AggregationMode;
use ern_queries::split::Concentration;
use ring::rand::SystemRandom;

use crate::approval::Approval;
use crate::audit::AuditEntry;
use crate::engine::{ExecuteError, NodeEngine, QueryRequest, failure};
use crate::executed;
use crate::privacy::noise::{NoiseSeed, noise_secure_vector};
use crate::privacy::policy::NoiseReport;
use crate::secure::{RoundError, RoundKeys, RoundStatement, RoundTerms, verify_round};

/// How long a round may wait between its statement and its relayed statements.
const ROUND_WAIT: Duration = Duration::from_secs(3600);

/// The study an audit entry names for a round-2 message of no round this node holds (not
/// an id, so no study can be confused with it).
const NO_STUDY: &str = "(no round)";

/// Round 1 as the coordinator asks for it.
#[derive(Debug, Clone)]
pub struct RoundStart {
    /// The question's id.
    pub query_id: String,
    /// The round's id.
    pub round_id: String,
    /// The participants, sorted.
    pub participants: Vec<String>,
}

/// One round between its statement and its masked vector.
struct PendingRound {
    request: QueryRequest,
    keys: RoundKeys,
    own: RoundStatement,
    vector: Vec<u64>,
    noise: Vec<NoiseReport>,
    approval: String,
    query: String,
    generation: String,
    started: Instant,
}

/// The rounds this node signed a statement for and has not masked a vector in yet.
#[derive(Default)]
pub struct PendingRounds {
    rounds: Mutex<HashMap<String, PendingRound>>,
}

impl std::fmt::Debug for PendingRounds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRounds")
            .field("open", &self.lock().len())
            .finish()
    }
}

impl PendingRounds {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PendingRound>> {
        self.rounds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What round 1 holds once it has claimed the question.
struct Claimed {
    approval: String,
    query: String,
    generation: String,
    query_hash: String,
    identity: Arc<crate::secure::SiteIdentity>,
}

/// The refusal of a second round of a question (or of a round after a per-site release).
fn repeated() -> ExecuteError {
    round_refusal(
        "secure-round-repeated",
        "this site already took part in a round of this question, or released it per site; a question gets one round",
    )
}

fn refused(error: RoundError) -> ExecuteError {
    ExecuteError::Round {
        rule: error.rule(),
        message: error.to_string(),
    }
}

fn round_refusal(rule: &'static str, message: impl Into<String>) -> ExecuteError {
    ExecuteError::Round {
        rule,
        message: message.into(),
    }
}

impl NodeEngine {
    /// Round 1: checks, computes this site's vector and signs its statement.
    pub async fn secure_statement(
        &self,
        request: &QueryRequest,
        start: &RoundStart,
    ) -> Result<RoundStatement, ExecuteError> {
        self.audited(
            request,
            |_: &RoundStatement, _: &mut AuditEntry| {},
            async |entry: &mut AuditEntry| self.round_one(request, start, entry).await,
        )
        .await
    }

    async fn round_one(
        &self,
        request: &QueryRequest,
        start: &RoundStart,
        entry: &mut AuditEntry,
    ) -> Result<RoundStatement, ExecuteError> {
        let (approval, generation) = self.verify_approval(request, entry)?;
        let policy = &self.policy.secure;
        let site = self.policy.site_id.as_str();
        let identity = match (&policy.identity, policy.enabled) {
            (Some(identity), true) => Arc::clone(identity),
            _ => {
                return Err(round_refusal(
                    "secure-aggregation-off",
                    "this site's policy does not take part in secure aggregation",
                ));
            }
        };
        if !start.participants.iter().any(|p| p == site) {
            return Err(refused(RoundError::Participants {
                site: site.to_string(),
                problem: "is not among the round's participants",
            }));
        }
        if start.participants.len() < policy.min_sites {
            return Err(refused(RoundError::TooFewSites {
                participants: start.participants.len(),
                min_sites: policy.min_sites,
            }));
        }
        if let Some(stranger) = start
            .participants
            .iter()
            .find(|p| policy.roster.get(p).is_none())
        {
            return Err(refused(RoundError::Roster {
                site: stranger.clone(),
            }));
        }
        let query_hash = ern_queries::query_hash(&request.sql);
        let plan = self.plan(request, entry).await?;
        let query = executed::query_key(&plan.fingerprint());
        // Checked and claimed in one step; held until round 2 records the vector.
        if self.executed.claim_secure(&query).is_err() {
            entry.detail = Some(format!("a second round ({})", start.round_id));
            return Err(repeated());
        }
        let claimed = Claimed {
            approval,
            query,
            generation,
            query_hash,
            identity,
        };
        let query = claimed.query.clone();
        let signed = self.sign_round(request, plan, start, claimed, entry).await;
        if signed.is_err() {
            self.executed.release_secure(&query);
        }
        signed
    }

    /// Round 1 once the question is claimed: plan, compute the vector, sign, keep.
    async fn sign_round(
        &self,
        request: &QueryRequest,
        plan: ern_queries::QueryPlan,
        start: &RoundStart,
        claimed: Claimed,
        entry: &mut AuditEntry,
    ) -> Result<RoundStatement, ExecuteError> {
        let Claimed {
            approval,
            query,
            generation,
            query_hash,
            identity,
        } = claimed;
        let policy = &self.policy.secure;
        let site = self.policy.site_id.as_str();
        let layout = match plan.mode() {
            AggregationMode::Secure(_) => plan
                .secure_layout()
                .map_err(|e| failure(entry, e.to_string()))?,
            AggregationMode::PerSite { reason } => {
                return Err(round_refusal(
                    "secure-not-eligible",
                    format!("the question is not eligible for secure aggregation: {reason}"),
                ));
            }
        };
        if layout.domain().cells() > policy.max_cells {
            return Err(round_refusal(
                "secure-domain-too-large",
                format!(
                    "the question's domain has {} cells; this site's limit is {}",
                    layout.domain().cells(),
                    policy.max_cells
                ),
            ));
        }
        let site_plan = self.bounded_plan(&plan, Concentration::Moments, entry)?;
        let (noise, secret) = self.calibrated(&site_plan, entry)?;
        if secret.is_some() {
            self.charge(request, &query, &generation, entry)?;
        }
        let batches = self.collect(site_plan.plan, entry).await?;
        self.same_generation(&generation, entry)?;
        let mut vector = layout
            .vector(&batches)
            .map_err(|e| failure(entry, e.to_string()))?;
        let participants = start.participants.len();
        let noised = secret.is_some();
        let noise = match (noise, secret) {
            (Some(noise), Some(secret)) => {
                let seed = NoiseSeed {
                    secret: &secret,
                    question: &query,
                    generation: &generation,
                };
                noise_secure_vector(&mut vector.values, layout, &noise, participants, seed)
                    .map_err(|e| failure(entry, e.to_string()))?;
                noise.share_reports(participants)
            }
            _ => Vec::new(),
        };
        let (keys, public_keys) =
            RoundKeys::new(site, &start.participants, &SystemRandom::new()).map_err(refused)?;
        let terms = RoundTerms {
            query_id: start.query_id.clone(),
            round_id: start.round_id.clone(),
            query_hash,
            domain_digest: layout.domain().digest(),
            vector_len: layout.len() as u64,
            participants: start.participants.clone(),
        };
        let dominance = self.policy.dominance;
        let ppm = (dominance.max_share * dominance.max_share / dominance.top.max(1) as f64 * 1e6)
            .round() as u32;
        let declared = if noised {
            self.policy.privacy.declaration()
        } else {
            String::new()
        };
        let own = RoundStatement::sign_declaring(
            terms,
            site,
            public_keys,
            (self.policy.k, ppm, declared),
            &identity,
        )
        .map_err(refused)?;
        entry.detail = Some(format!(
            "secure round {}: statement signed for {} participants; {} groups, {} outside the domain",
            start.round_id,
            start.participants.len(),
            vector.groups,
            vector.out_of_domain
        ));
        let mut rounds = self.rounds.lock();
        rounds.retain(|_, round| {
            let waiting = round.started.elapsed() < ROUND_WAIT;
            if !waiting {
                self.executed.release_secure(&round.query);
            }
            waiting
        });
        if rounds.contains_key(&start.query_id) {
            return Err(repeated());
        }
        rounds.insert(
            start.query_id.clone(),
            PendingRound {
                request: request.clone(),
                keys,
                own: own.clone(),
                vector: vector.values,
                noise,
                approval,
                query,
                generation,
                started: Instant::now(),
            },
        );
        Ok(own)
    }

    /// Round 2: verifies every relayed statement, records that this question's vector
    /// is sent, and masks it.
    pub async fn secure_masked(
        &self,
        query_id: &str,
        round_id: &str,
        statements: Vec<v1::RoundStatement>,
    ) -> Result<Masked, ExecuteError> {
        let pending = self.rounds.lock().remove(query_id);
        let Some(pending) = pending else {
            // No round, so no study: round 2's message names none (the study comes with
            // round 1's work), and the question's id is not a study's.
            let request = QueryRequest {
                sql: String::new(),
                study_id: String::new(),
                approval: Approval::default(),
            };
            return self
                .audited(
                    &request,
                    |_: &Masked, _: &mut AuditEntry| {},
                    async |entry: &mut AuditEntry| {
                        entry.study = NO_STUDY.to_string();
                        Err(round_refusal(
                            "secure-round-unknown",
                            "this site signed no statement for this round, or already sent its vector",
                        ))
                    },
                )
                .await;
        };
        let request = pending.request.clone();
        self.audited(
            &request,
            |_: &Masked, _: &mut AuditEntry| {},
            async |entry: &mut AuditEntry| match statements_from_proto(statements) {
                Ok(statements) => self.round_two(pending, round_id, &statements, entry).await,
                Err(refusal) => {
                    self.executed.release_secure(&pending.query);
                    Err(refusal)
                }
            },
        )
        .await
    }

    async fn round_two(
        &self,
        pending: PendingRound,
        round_id: &str,
        statements: &[RoundStatement],
        entry: &mut AuditEntry,
    ) -> Result<Masked, ExecuteError> {
        let verified = if round_id != pending.own.round_id {
            Err(refused(RoundError::Mismatch {
                site: self.policy.site_id.clone(),
                field: "round id",
            }))
        } else {
            verify_round(
                &pending.own,
                statements,
                &self.policy.secure.roster,
                self.policy.secure.min_sites,
            )
            .map_err(refused)
        };
        if let Err(refusal) = verified {
            // No vector left the node: the question is free again (the coordinator
            // never runs a second round, and a node gives one vector at most).
            self.executed.release_secure(&pending.query);
            return Err(refusal);
        }
        let executed = Arc::clone(&self.executed);
        let (approval, query, generation, round) = (
            pending.approval.clone(),
            pending.query.clone(),
            pending.generation.clone(),
            round_id.to_string(),
        );
        tokio::task::spawn_blocking(move || {
            executed.record_secure(&approval, &query, &generation, &round)
        })
        .await
        .map_err(|e| failure(entry, e.to_string()))?
        .map_err(|e| failure(entry, e.to_string()))?;
        let length = pending.vector.len();
        let masked = pending
            .keys
            .masked_vector(&pending.own, statements, &pending.vector)
            .map_err(refused)?;
        entry.detail = Some(format!(
            "secure round {round_id}: masked vector of {length} values sent to {} participants",
            statements.len()
        ));
        Ok(Masked {
            values: masked,
            noise: pending.noise,
        })
    }
}

/// What round 2 sends: the masked vector and, where this site noised it, what noise its
/// share carries.
#[derive(Debug, Clone)]
pub struct Masked {
    /// The masked vector.
    pub values: Vec<u64>,
    /// The noise of this site's share on each released partial (empty without noise).
    pub noise: Vec<NoiseReport>,
}

/// A statement for the wire.
pub fn statement_to_proto(statement: &RoundStatement) -> v1::RoundStatement {
    v1::RoundStatement {
        query_id: statement.query_id.clone(),
        round_id: statement.round_id.clone(),
        query_hash: statement.query_hash.clone(),
        domain_digest: statement.domain_digest.clone(),
        vector_len: statement.vector_len,
        participants: statement.participants.clone(),
        site: statement.site.clone(),
        peer_keys: statement
            .peer_keys
            .iter()
            .map(|(peer, key)| v1::PeerKey {
                peer: peer.clone(),
                public_key: key.to_vec(),
            })
            .collect(),
        k: statement.k,
        max_concentration_ppm: statement.max_concentration_ppm,
        privacy: statement.privacy.clone(),
        signature: statement.signature.clone(),
    }
}

/// A relayed statement from the wire; a key that is not 32 bytes is malformed.
pub fn statement_from_proto(statement: v1::RoundStatement) -> Result<RoundStatement, RoundError> {
    let site = statement.site.clone();
    let peer_keys = statement
        .peer_keys
        .into_iter()
        .map(|key| {
            let bytes: [u8; 32] =
                key.public_key
                    .as_slice()
                    .try_into()
                    .map_err(|_| RoundError::Statement {
                        site: site.clone(),
                        problem: "a peer key is not 32 bytes",
                    })?;
            Ok((key.peer, bytes))
        })
        .collect::<Result<Vec<_>, RoundError>>()?;
    Ok(RoundStatement {
        query_id: statement.query_id,
        round_id: statement.round_id,
        query_hash: statement.query_hash,
        domain_digest: statement.domain_digest,
        vector_len: statement.vector_len,
        participants: statement.participants,
        site: statement.site,
        peer_keys,
        k: statement.k,
        max_concentration_ppm: statement.max_concentration_ppm,
        privacy: statement.privacy,
        signature: statement.signature,
    })
}

/// Round 2's statements from the wire, or the refusal for the first malformed one.
pub fn statements_from_proto(
    statements: Vec<v1::RoundStatement>,
) -> Result<Vec<RoundStatement>, ExecuteError> {
    statements
        .into_iter()
        .map(statement_from_proto)
        .collect::<Result<Vec<_>, _>>()
        .map_err(refused)
}
