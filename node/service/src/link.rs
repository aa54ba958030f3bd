//! The node's one connection to the world: an outbound gRPC stream to the coordinator.
//!
//! Hospitals accept no inbound connections, so the node dials out, says Hello with its
//! site id and k, and keeps the stream open: approved work arrives on it, answers and
//! heartbeats go back on it. Each piece of work runs through the [`NodeEngine`], which
//! checks the approval against this node's own steward keys before anything else; the
//! coordinator is not trusted to have checked anything. When the stream breaks, the node
//! dials again with exponential backoff.

use std::sync::Arc;
use std::time::Duration;

use ern_proto::arrow_ipc;
use ern_proto::transport::{self, BearerToken, ClientTls, TransportError, error_chain};
use ern_proto::v1;
use ern_proto::v1::node_link_client::NodeLinkClient;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

use crate::approval::Approval;
use crate::engine::{ExecuteError, NodeEngine, QueryRequest, now_seconds};
use crate::failure::FailureCategory;
use crate::privacy::policy::{NoiseReport, PrivacyPolicy};
use crate::round::{RoundStart, statement_to_proto};

/// Largest message the node reads from the coordinator.
const COORDINATOR_MESSAGE_BYTES: usize = 16 << 20;

/// How long the coordinator has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// The version a node reports in its Hello.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How a node reaches its coordinator.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// The coordinator's URL, e.g. `https://coordinator.example.org:50051`.
    pub coordinator: String,
    /// The node's bearer token.
    pub token: BearerToken,
    /// The network CA and this node's certificate (`None`: plaintext on loopback).
    pub tls: Option<ClientTls>,
    /// Questions run at once; announced to the coordinator, enforced here too.
    pub max_concurrent: usize,
    /// First wait after a failed connection.
    pub min_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Wait between attempts while the coordinator refuses this node's credentials
    /// (UNAUTHENTICATED, PERMISSION_DENIED): a refusal no retry cures soon.
    pub refused_backoff: Duration,
}

impl LinkSettings {
    /// Settings with the default backoff (0.2 s doubling to 30 s; 5 minutes while the
    /// coordinator refuses the node's credentials) and two questions at a time.
    pub fn new(coordinator: &str, token: BearerToken, tls: Option<ClientTls>) -> Self {
        LinkSettings {
            coordinator: coordinator.to_string(),
            token,
            tls,
            max_concurrent: 2,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            refused_backoff: Duration::from_secs(300),
        }
    }
}

/// Why one connection ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The coordinator's address or the TLS settings are not usable.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The connection failed.
    #[error("connecting: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The coordinator answered with an error (e.g. an unknown token or another site).
    #[error("the coordinator said {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The coordinator broke the protocol.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

impl LinkError {
    /// Whether a retry cannot help until someone changes a credential or the
    /// coordinator's users: the coordinator refused who this node is.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            LinkError::Status {
                code: tonic::Code::Unauthenticated | tonic::Code::PermissionDenied,
                ..
            }
        )
    }

    /// Whether the coordinator refused this node because another node of its site holds
    /// the site's stream: retried (it is taken over once the other falls silent) but said
    /// once.
    pub fn is_second_node(&self) -> bool {
        matches!(
            self,
            LinkError::Status {
                code: tonic::Code::AlreadyExists,
                ..
            }
        )
    }
}

impl From<tonic::Status> for LinkError {
    fn from(status: tonic::Status) -> Self {
        // A connection that failed underneath carries its root cause as the source.
        let mut message = status.message().to_string();
        if let Some(source) = std::error::Error::source(&status) {
            let cause = error_chain(source);
            if !message.contains(&cause) {
                message = if message.is_empty() {
                    cause
                } else {
                    format!("{message}: {cause}")
                };
            }
        }
        LinkError::Status {
            code: status.code(),
            message,
        }
    }
}

/// The log target of the stream opening and closing, logged at info by default.
pub const LINK_LOG: &str = "ern::link";

/// Keeps this node connected to its coordinator and serves its work, forever.
pub async fn run(engine: Arc<NodeEngine>, settings: LinkSettings) {
    let mut backoff = settings.min_backoff;
    let slots = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
    // The refusal last reported, so a permanent one is said once, not at every attempt.
    let mut refused: Option<String> = None;
    loop {
        let mut welcomed = false;
        let ended = session(&engine, &settings, &slots, &mut welcomed).await;
        if welcomed {
            backoff = settings.min_backoff;
            refused = None;
        }
        let second_node = matches!(&ended, Err(error) if !welcomed && error.is_second_node());
        match ended {
            Ok(()) => tracing::info!(
                target: LINK_LOG,
                "disconnected: the coordinator closed the stream; reconnecting"
            ),
            Err(error) if welcomed => {
                let error = error_chain(&error);
                tracing::info!(target: LINK_LOG, %error, "disconnected; reconnecting");
            }
            Err(error) if error.is_permanent() => {
                let error = error_chain(&error);
                if refused.as_ref() != Some(&error) {
                    tracing::error!(
                        %error,
                        retry_every = ?settings.refused_backoff,
                        "the coordinator refuses this node: check its token and site (it tries again, rarely)"
                    );
                }
                refused = Some(error);
                tokio::time::sleep(jitter(settings.refused_backoff)).await;
                continue;
            }
            Err(error) if second_node => {
                let error = error_chain(&error);
                if refused.as_ref() != Some(&error) {
                    tracing::warn!(%error, "another node of this site holds its stream; waiting to take over");
                }
                refused = Some(error);
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(settings.max_backoff);
                continue;
            }
            Err(error) => {
                let error = error_chain(&error);
                tracing::warn!(%error, "node link down");
            }
        }
        refused = None;
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// `wait` give or take a fifth, so many nodes do not redial in lockstep.
fn jitter(wait: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let factor = 0.8 + 0.4 * f64::from(nanos % 1000) / 1000.0;
    wait.mul_f64(factor)
}

/// One connection, until it ends. Sets `welcomed` once the coordinator accepted us.
async fn session(
    engine: &Arc<NodeEngine>,
    settings: &LinkSettings,
    slots: &Arc<Semaphore>,
    welcomed: &mut bool,
) -> Result<(), LinkError> {
    let endpoint = transport::endpoint(&settings.coordinator, settings.tls.as_ref())?
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel = endpoint.connect().await?;
    // A secure round's relayed statements grow with the square of its participants
    // (one key per peer in each): 16 MiB holds a round of about 600 sites.
    let mut client = NodeLinkClient::with_interceptor(channel, settings.token.clone())
        .max_decoding_message_size(COORDINATOR_MESSAGE_BYTES);
    let (outbound, receiver) = mpsc::channel(64);
    let policy = engine.policy();
    let hello = v1::NodeMessage {
        message: Some(v1::node_message::Message::Hello(v1::Hello {
            site_id: policy.site_id.clone(),
            k: policy.k,
            version: VERSION.to_string(),
            max_concurrent: settings.max_concurrent as u32,
            secure_aggregation: policy.secure.enabled && policy.secure.identity.is_some(),
            min_secure_sites: policy.secure.min_sites as u32,
            privacy: Some(privacy_to_proto(&policy.privacy)),
        })),
    };
    outbound
        .send(hello)
        .await
        .map_err(|_| LinkError::Protocol("the outbound queue closed"))?;
    let mut inbound = client
        .open_stream(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let welcome = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message())
        .await
        .map_err(|_| LinkError::Protocol("no Welcome within 30 s"))?;
    let heartbeat = match welcome? {
        Some(v1::CoordinatorMessage {
            message: Some(v1::coordinator_message::Message::Welcome(welcome)),
        }) => Duration::from_secs(u64::from(welcome.heartbeat_seconds.max(1))),
        _ => {
            return Err(LinkError::Protocol(
                "the coordinator did not answer Hello with Welcome",
            ));
        }
    };
    *welcomed = true;
    tracing::info!(target: LINK_LOG, site = %policy.site_id, coordinator = %settings.coordinator, "connected");
    if let Some(report) = budget_report(engine) {
        outbound
            .send(report)
            .await
            .map_err(|_| LinkError::Protocol("the outbound queue closed"))?;
    }
    let mut ticker = tokio::time::interval(heartbeat);
    ticker.tick().await;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => {
                        // A message that does not decode ends the stream; it leaves an
                        // audit entry first (tonic reports decoding errors as Internal).
                        if status.code() == tonic::Code::Internal {
                            engine.audit_undecodable("internal", status.message()).await;
                        }
                        return Err(status.into());
                    }
                };
                match message {
                    Some(v1::CoordinatorMessage { message: Some(v1::coordinator_message::Message::Work(work)) }) => {
                        let engine = Arc::clone(engine);
                        let outbound = outbound.clone();
                        let slots = Arc::clone(slots);
                        tokio::spawn(async move {
                            // The coordinator respects the limit too; this holds even if not.
                            let _slot = slots.acquire_owned().await;
                            let result = run_work(&engine, work).await;
                            let _ = outbound.send(v1::NodeMessage {
                                message: Some(v1::node_message::Message::Result(result)),
                            }).await;
                            if let Some(report) = budget_report(&engine) {
                                let _ = outbound.send(report).await;
                            }
                        });
                    }
                    Some(v1::CoordinatorMessage { message: Some(v1::coordinator_message::Message::Round(round)) }) => {
                        let engine = Arc::clone(engine);
                        let outbound = outbound.clone();
                        tokio::spawn(async move {
                            let result = run_round_two(&engine, round).await;
                            let _ = outbound.send(v1::NodeMessage {
                                message: Some(v1::node_message::Message::Result(result)),
                            }).await;
                        });
                    }
                    Some(_) => {}
                    None => return Ok(()),
                }
            }
            _ = ticker.tick() => {
                let store = engine.check_store().await;
                let beat = v1::NodeMessage {
                    message: Some(v1::node_message::Message::Heartbeat(v1::Heartbeat {
                        at: now_seconds(),
                        audit_head: engine.audit_head(),
                        unavailable: store.unavailable().to_string(),
                        store_generation: store.generation_id().to_string(),
                    })),
                };
                if outbound.send(beat).await.is_err() {
                    return Err(LinkError::Protocol("the outbound queue closed"));
                }
            }
        }
    }
}

/// The node's privacy policy as it reports it in Hello.
fn privacy_to_proto(policy: &PrivacyPolicy) -> v1::PrivacyPolicy {
    v1::PrivacyPolicy {
        enabled: policy.enabled,
        mechanism: policy.mechanism.name().to_string(),
        epsilon_micro: policy.epsilon.micro(),
        budget_micro: policy.budget_per_study.micro(),
        max_groups_per_patient: policy.bounding.max_groups_per_patient,
        max_rows_per_patient: policy.bounding.max_rows_per_patient,
    }
}

/// What the studies have spent here, for a node that keeps budgets.
fn budget_report(engine: &NodeEngine) -> Option<v1::NodeMessage> {
    if !engine.policy().privacy.enabled {
        return None;
    }
    let (spent, _) = engine.privacy_budgets();
    Some(v1::NodeMessage {
        message: Some(v1::node_message::Message::Budgets(v1::BudgetReport {
            studies: spent
                .into_iter()
                .map(|(study_id, spent)| v1::StudySpend {
                    study_id,
                    spent_micro: spent.micro(),
                })
                .collect(),
        })),
    })
}

/// The wire form of a release's noise.
fn noise_to_proto(noise: &[NoiseReport]) -> Vec<v1::PartialNoise> {
    noise
        .iter()
        .map(|report| v1::PartialNoise {
            partial: report.partial as u32,
            mechanism: report.mechanism.to_string(),
            scale: report.scale,
            variance: report.variance,
            margin95: report.margin95,
        })
        .collect()
}

/// The wire form of a refusal or failure.
fn error_outcome(error: ExecuteError) -> v1::work_result::Outcome {
    use v1::work_result::Outcome;
    match error {
        ExecuteError::Failed {
            reference,
            category,
        } => Outcome::Failed(v1::Failed {
            reference,
            category: category.as_str().to_string(),
        }),
        ExecuteError::Limit {
            category,
            ref refusal,
            ref reference,
        } => Outcome::Refused(v1::Refused {
            rule: error.rule_name(),
            message: refusal.to_string(),
            category: category.as_str().to_string(),
            reference: reference.clone(),
        }),
        error => Outcome::Refused(v1::Refused {
            rule: error.rule_name(),
            message: error.to_string(),
            ..Default::default()
        }),
    }
}

/// Round 2 of a secure-aggregation round: the masked vector, or a refusal.
pub async fn run_round_two(engine: &NodeEngine, round: v1::SecureRound) -> v1::WorkResult {
    use v1::work_result::Outcome;
    let outcome = match engine
        .secure_masked(&round.query_id, &round.round_id, round.statements)
        .await
    {
        Ok(masked) => Outcome::Masked(v1::MaskedVector {
            round_id: round.round_id,
            values: masked.values,
            noise: noise_to_proto(&masked.noise),
        }),
        Err(error) => error_outcome(error),
    };
    v1::WorkResult {
        query_id: round.query_id,
        outcome: Some(outcome),
        audit_head: engine.audit_head(),
    }
}

/// Runs one piece of work through the engine and shapes the answer for the wire: a
/// release, or for a secure-aggregation question the round-1 statement. The study is the
/// one the work names: the approval must be signed for it (the engine checks the id's
/// shape before the audit log records it).
pub async fn run_work(engine: &NodeEngine, work: v1::Work) -> v1::WorkResult {
    use v1::work_result::Outcome;
    let request = QueryRequest {
        sql: work.sql,
        study_id: work.study_id,
        approval: Approval::from(work.approval.unwrap_or_default()),
    };
    if let Some(start) = work.secure_round {
        let start = RoundStart {
            query_id: work.query_id.clone(),
            round_id: start.round_id,
            participants: start.participants,
        };
        let outcome = match engine.secure_statement(&request, &start).await {
            Ok(statement) => Outcome::Statement(statement_to_proto(&statement)),
            Err(error) => error_outcome(error),
        };
        return v1::WorkResult {
            query_id: work.query_id,
            outcome: Some(outcome),
            audit_head: engine.audit_head(),
        };
    }
    let outcome = match engine.execute(&request).await {
        Ok(released) => match arrow_ipc::encode(&released.schema, &released.batches) {
            Ok(arrow_ipc) => Outcome::Released(v1::Released {
                arrow_ipc,
                groups: released.groups_released as u64,
                noise: noise_to_proto(&released.noise),
            }),
            Err(error) => {
                tracing::error!(%error, "encoding released partials");
                Outcome::Failed(v1::Failed {
                    reference: "encoding".into(),
                    category: FailureCategory::Internal.as_str().to_string(),
                })
            }
        },
        Err(error) => error_outcome(error),
    };
    v1::WorkResult {
        query_id: work.query_id,
        outcome: Some(outcome),
        audit_head: engine.audit_head(),
    }
}
