//! The NodeLink service: the stream a hospital node opens to the coordinator. The node
//! proves its site with its token (bound to one site at enrolment) and its Hello; the
//! coordinator then pushes approved work down the stream and reads answers and
//! heartbeats from it.

use std::sync::Arc;

use ern_proto::v1;
use ern_proto::v1::node_link_server::NodeLink;
use ern_queries::shown::for_log;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::accept::PeerInfo;
use crate::auth;
use crate::core::Coordinator;
use crate::pki;

/// Messages queued towards one node before the coordinator waits for it to read.
const OUTBOUND_QUEUE: usize = 256;

/// How long a new stream waits for its node's Hello.
const HELLO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The NodeLink service over the shared core.
#[derive(Debug, Clone)]
pub struct NodeLinkService {
    core: Arc<Coordinator>,
    require_certificate: bool,
}

impl NodeLinkService {
    /// A service over `core`. With `require_certificate` (TLS), a node must present a
    /// client certificate of the network CA naming its site.
    pub fn new(core: Arc<Coordinator>, require_certificate: bool) -> Self {
        NodeLinkService {
            core,
            require_certificate,
        }
    }
}

/// Under mutual TLS, the site named by the node's certificate must be its token's, and
/// the certificate must not be on the revocation list; returns its serial and when it
/// expires (`None` without a certificate).
fn check_certificate<T>(
    request: &Request<T>,
    token_site: &str,
    required: bool,
    db: &crate::db::Db,
) -> Result<Option<(String, u64)>, Status> {
    let chain = request
        .extensions()
        .get::<PeerInfo>()
        .and_then(|peer| peer.certificates.clone());
    let Some(chain) = chain else {
        if required {
            return Err(Status::unauthenticated(
                "nodes must present their site's client certificate (mutual TLS)",
            ));
        }
        return Ok(None);
    };
    let leaf = chain.first();
    let serial = leaf.and_then(|leaf| pki::certificate_serial(leaf));
    if let Some(serial) = &serial {
        let revoked = db.certificate_revoked(serial).map_err(|error| {
            tracing::error!(%error, "reading the revocation list");
            Status::internal("the coordinator could not check the certificate")
        })?;
        if revoked {
            tracing::warn!(target: "ern::link", token_site, serial, "a revoked node certificate was refused");
            return Err(Status::permission_denied(format!(
                "this node certificate (serial {serial}) was revoked: the network's operator issues a new one (`ern keygen tls --renew {token_site}`)"
            )));
        }
    }
    let certificate_site = leaf.and_then(|leaf| pki::node_site_of(leaf));
    match certificate_site {
        Some(site) if site == token_site => Ok(serial.map(|serial| {
            let expires = leaf.and_then(|leaf| pki::certificate_not_after(leaf));
            (serial, expires.unwrap_or(0))
        })),
        Some(site) => {
            let site = for_log(&site);
            tracing::warn!(token_site, certificate_site = %site, "node certificate of another site");
            Err(Status::permission_denied(format!(
                "this node's certificate is bound to site {site}, its token to site {token_site}"
            )))
        }
        None => Err(Status::permission_denied(
            "the client certificate is not a node certificate of this network",
        )),
    }
}

#[tonic::async_trait]
impl NodeLink for NodeLinkService {
    type OpenStreamStream = ReceiverStream<Result<v1::CoordinatorMessage, Status>>;

    async fn open_stream(
        &self,
        request: Request<Streaming<v1::NodeMessage>>,
    ) -> Result<Response<Self::OpenStreamStream>, Status> {
        let node = auth::caller(&request)?;
        let serial = check_certificate(
            &request,
            &node.site,
            self.require_certificate,
            self.core.db(),
        )?;
        // Token and certificate checked: the connection may live as long as the stream.
        if let Some(peer) = request.extensions().get::<PeerInfo>() {
            peer.record_node();
        }
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        // A node says Hello at once; one that holds it back does not hold a stream open
        // past a revocation (its credentials are checked again below).
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 30 s"))?;
        let hello = match first? {
            Some(v1::NodeMessage {
                message: Some(v1::node_message::Message::Hello(hello)),
            }) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a node stream must be Hello",
                ));
            }
        };
        if hello.site_id != node.site {
            let claimed = for_log(&hello.site_id);
            tracing::warn!(token_site = %node.site, %claimed, "node claimed another site");
            return Err(Status::permission_denied(format!(
                "this node token is bound to site {}, not {claimed}",
                node.site
            )));
        }
        // The token and certificate again, as they stand now: either may have been
        // revoked, rotated or expired while the Hello was on its way.
        let again = auth::authenticate(self.core.db(), &metadata)?;
        if again.name != node.name {
            return Err(Status::unauthenticated("the token changed hands"));
        }
        if let Some((serial, _)) = &serial
            && self
                .core
                .db()
                .certificate_revoked(serial)
                .map_err(|error| {
                    tracing::error!(%error, "reading the revocation list");
                    Status::internal("the coordinator could not check the certificate")
                })?
        {
            return Err(Status::permission_denied(format!(
                "this node certificate (serial {serial}) was revoked"
            )));
        }
        let site = node.site;
        let (sender, receiver) = mpsc::channel(OUTBOUND_QUEUE);
        sender
            .send(Ok(v1::CoordinatorMessage {
                message: Some(v1::coordinator_message::Message::Welcome(v1::Welcome {
                    site_id: site.clone(),
                    heartbeat_seconds: self.core.timing().heartbeat.as_secs() as u32,
                })),
            }))
            .await
            .map_err(|_| Status::unavailable("the stream closed during the handshake"))?;
        let (certificate_serial, certificate_expires_at) = serial.unwrap_or_default();
        let credentials = crate::core::NodeCredentials {
            expires_at: node.expires_at,
            certificate_serial,
            certificate_expires_at,
        };
        let generation = self
            .core
            .node_connected(&site, &hello, sender, credentials)
            .await?;
        let core = Arc::clone(&self.core);
        tokio::spawn(async move {
            if let Err(status) = core.dispatch(&site).await {
                tracing::error!(site, message = status.message(), "dispatching on connect");
            }
            // Secure questions waiting for this node may start their round.
            core.tick_secure().await;
            loop {
                match inbound.message().await {
                    // A stream the coordinator closed (its credentials were revoked, its
                    // token expired, another took its place) is not listened to: its
                    // messages are dropped and the stream with them.
                    Ok(Some(_)) if !core.is_current_stream(&site, generation) => {
                        tracing::debug!(site, "a message on a closed stream; ending it");
                        break;
                    }
                    Ok(Some(message)) => {
                        core.node_seen(&site, generation);
                        let head = match &message.message {
                            Some(v1::node_message::Message::Heartbeat(beat)) => {
                                beat.audit_head.as_str()
                            }
                            Some(v1::node_message::Message::Result(result)) => {
                                result.audit_head.as_str()
                            }
                            _ => "",
                        };
                        core.node_audit_head(&site, head);
                        match message.message {
                            Some(v1::node_message::Message::Result(result)) => {
                                if let Err(status) = core.handle_result(&site, result).await {
                                    tracing::error!(
                                        site,
                                        message = status.message(),
                                        "storing an answer"
                                    );
                                }
                            }
                            Some(v1::node_message::Message::Budgets(report)) => {
                                core.node_budgets(&site, &report).await;
                            }
                            Some(v1::node_message::Message::Heartbeat(beat)) => {
                                core.node_heartbeat(&site, generation, &beat);
                            }
                            _ => {}
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(site, message = %for_log(status.message()), "node stream ended");
                        break;
                    }
                }
            }
            core.node_disconnected(&site, generation).await;
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}
