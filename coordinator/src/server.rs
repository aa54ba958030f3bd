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
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring as ring_provider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};
use tonic::service::interceptor::InterceptedService;

use crate::accept;
use crate::auth::Gate;
use crate::config::{ServerTls, Transport};
use crate::core::Coordinator;
use crate::model::Role;
use crate::services::{NodeLinkService, OperatorService, ResearcherService, StewardService};

/// Largest message the unauthenticated services (health checking, reflection) decode.
const PUBLIC_MESSAGE_BYTES: usize = 16 << 10;

/// Calls open at once on one connection (a node needs one, a client a few): with the
/// message limits, this bounds what one connection can make the coordinator buffer.
const MAX_STREAMS_PER_CONNECTION: u32 = 32;

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
    /// The TLS certificate, key or CA could not be used.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// The server's TLS: its identity, and the network CA for (optional) client
/// certificates. Researchers, stewards and operators present none; nodes must, and the
/// NodeLink service checks theirs. HTTP/2 only, as gRPC needs.
/// Checks that the certificate, its key and the client CA make a TLS configuration (the
/// key matches the certificate, each parses), before anything says it is serving.
pub fn check_tls(tls: &ServerTls) -> Result<(), ServeError> {
    tls_acceptor(tls).map(|_| ())
}

fn tls_acceptor(tls: &ServerTls) -> Result<TlsAcceptor, ServeError> {
    let bad =
        |what: &str, error: &dyn std::fmt::Display| ServeError::Tls(format!("{what}: {error}"));
    let chain = CertificateDer::pem_slice_iter(&tls.cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("the server certificate", &e))?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem).map_err(|e| bad("the server key", &e))?;
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&tls.client_ca_pem) {
        let ca = ca.map_err(|e| bad("the client CA", &e))?;
        roots.add(ca).map_err(|e| bad("the client CA", &e))?;
    }
    let provider = Arc::new(ring_provider::default_provider());
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .allow_unauthenticated()
            .build()
            .map_err(|e| bad("the client CA", &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("protocol versions", &e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("the server certificate and key", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `core` on `listener` until `shutdown` completes.
pub async fn serve(
    core: Arc<Coordinator>,
    listener: TcpListener,
    transport: Transport,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let acceptor = match &transport {
        Transport::Tls(tls) => Some(tls_acceptor(tls)?),
        Transport::Plaintext => {
            tracing::warn!(
                address = ?listener.local_addr().ok(),
                "serving PLAINTEXT on loopback: no encryption, no node certificates"
            );
            None
        }
    };
    let require_certificate = acceptor.is_some();
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
    // Health checks answer without a token, reflection to operators only (its answers
    // are large; red team rounds 3 and 4 filled memory with reflection replies nobody
    // read): both take small messages.
    let health_service = health_service.max_decoding_message_size(PUBLIC_MESSAGE_BYTES);
    // Both versions of reflection: v1, and v1alpha for clients that speak only that
    // (Python's grpcio-reflection, older grpcurl).
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ern_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()?
        .max_decoding_message_size(PUBLIC_MESSAGE_BYTES);
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()?
        .max_decoding_message_size(PUBLIC_MESSAGE_BYTES);

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
    let (user_max, node_max) = (limits.max_user_message_bytes, limits.max_node_message_bytes);
    let gate = |role| Gate::new(core.shared_db(), role);
    accept::raise_open_files_limit(&limits.connections);
    let (incoming, accepting) = accept::incoming(listener, acceptor, limits.connections.clone());
    let result = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(heartbeat))
        .http2_keepalive_timeout(Some(heartbeat * 2))
        .timeout(limits.rpc_timeout)
        .add_service(health_service)
        .add_service(InterceptedService::new(
            reflection,
            Gate::new(core.shared_db(), Role::Operator),
        ))
        .add_service(InterceptedService::new(
            reflection_v1alpha,
            Gate::new(core.shared_db(), Role::Operator),
        ))
        .add_service(InterceptedService::new(
            ResearcherServer::new(ResearcherService::new(Arc::clone(&core)))
                .max_decoding_message_size(user_max),
            gate(Role::Researcher),
        ))
        .add_service(InterceptedService::new(
            StewardServer::new(StewardService::new(Arc::clone(&core)))
                .max_decoding_message_size(user_max),
            gate(Role::Steward),
        ))
        .add_service(InterceptedService::new(
            OperatorServer::new(OperatorService::new(Arc::clone(&core)))
                .max_decoding_message_size(user_max),
            gate(Role::Operator),
        ))
        .add_service(InterceptedService::new(
            NodeLinkServer::new(NodeLinkService::new(Arc::clone(&core), require_certificate))
                .max_decoding_message_size(node_max),
            gate(Role::Node),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    ticker.abort();
    accepting.abort();
    Ok(result?)
}
