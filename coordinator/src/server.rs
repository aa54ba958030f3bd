//! Serves the four ern.v1 services, standard gRPC health checking and server reflection
//! on one listener, over TLS (or, on loopback only, plaintext), under the configured
//! limits, and runs the lifecycle's periodic tick beside them.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ern_proto::v1::node_link_server::NodeLinkServer;
use ern_proto::v1::operator_server::OperatorServer;
use ern_proto::v1::researcher_server::ResearcherServer;
use ern_proto::v1::steward_server::StewardServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ServerTls, Transport};
use crate::core::Coordinator;
use crate::services::{NodeLinkService, OperatorService, ResearcherService, StewardService};

/// How often deadlines, timeouts and unfinished merges are looked at.
const TICK: Duration = Duration::from_millis(500);

/// Errors serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not load the descriptors.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server's TLS: its identity, and the network CA for (optional) client
/// certificates. Researchers, stewards and operators present none; nodes must, and the
/// NodeLink service checks theirs.
fn tls_config(tls: &ServerTls) -> ServerTlsConfig {
    ServerTlsConfig::new()
        .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
        .client_ca_root(Certificate::from_pem(&tls.client_ca_pem))
        .client_auth_optional(true)
        .timeout(HANDSHAKE_TIMEOUT)
}

/// Serves `core` on `listener` until `shutdown` completes.
pub async fn serve(
    core: Arc<Coordinator>,
    listener: TcpListener,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let mut builder = tonic::transport::Server::builder();
    let require_certificate = match &transport {
        Transport::Tls(tls) => {
            builder = builder.tls_config(tls_config(tls))?;
            true
        }
        Transport::Plaintext => {
            tracing::warn!(
                address = ?listener.local_addr().ok(),
                "serving PLAINTEXT on loopback: no encryption, no node certificates"
            );
            false
        }
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ResearcherServer<ResearcherService>>()
        .await;
    health.set_serving::<StewardServer<StewardService>>().await;
    health
        .set_serving::<OperatorServer<OperatorService>>()
        .await;
    health
        .set_serving::<NodeLinkServer<NodeLinkService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ern_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let ticker = {
        let core = Arc::clone(&core);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(TICK);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                core.tick().await;
            }
        })
    };
    let heartbeat = core.timing().heartbeat;
    let limits = core.limits().clone();
    let max = limits.max_message_bytes;
    let result = builder
        .http2_keepalive_interval(Some(heartbeat))
        .http2_keepalive_timeout(Some(heartbeat * 2))
        .timeout(limits.rpc_timeout)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            ResearcherServer::new(ResearcherService::new(Arc::clone(&core)))
                .max_decoding_message_size(max),
        )
        .add_service(
            StewardServer::new(StewardService::new(Arc::clone(&core)))
                .max_decoding_message_size(max),
        )
        .add_service(
            OperatorServer::new(OperatorService::new(Arc::clone(&core)))
                .max_decoding_message_size(max),
        )
        .add_service(
            NodeLinkServer::new(NodeLinkService::new(Arc::clone(&core), require_certificate))
                .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    ticker.abort();
    Ok(result?)
}
