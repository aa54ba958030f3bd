//! A real coordinator over loopback TLS for the transport and hostile-caller tests: a
//! network CA, a server certificate, enrolled users, and clients of each role.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use ern_coordinator::config::ServerTls;
use ern_coordinator::limits::Limits;
use ern_coordinator::model::Role;
use ern_coordinator::pki::{IssuedCertificate, NetworkCa};
use ern_coordinator::{Coordinator, Db, Timing, Transport, auth, server};
use ern_proto::transport::{self, BearerToken, ClientTls};
use ern_proto::v1;
use ern_proto::v1::node_link_client::NodeLinkClient;
use ern_proto::v1::researcher_client::ResearcherClient;
use ern_proto::v1::steward_client::StewardClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// A node stream's sender and inbound messages.
pub type NodeStream = (
    mpsc::Sender<v1::NodeMessage>,
    tonic::Streaming<v1::CoordinatorMessage>,
);

pub const SQL: &str = "SELECT sex, COUNT(*) AS n FROM patient GROUP BY sex";

/// A coordinator serving TLS on loopback, with its CA.
pub struct Network {
    pub core: Arc<Coordinator>,
    pub url: String,
    pub ca: NetworkCa,
    _dir: tempfile::TempDir,
}

/// Starts a coordinator with `limits`, nodes of sites a and b enrolled.
pub async fn start(limits: Limits) -> Network {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = Db::open(&dir.path().join("c.db")).expect("db");
    let core = Arc::new(
        Coordinator::new(db, Timing::default())
            .expect("core")
            .with_limits(limits),
    );
    let (ca, _) = NetworkCa::generate("test").expect("ca");
    let server_cert = ca
        .issue_server(&["localhost".into(), "127.0.0.1".into()])
        .expect("server certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("address"));
    let transport = Transport::Tls(ServerTls {
        cert_pem: server_cert.cert_pem.into_bytes(),
        key_pem: server_cert.key_pem.into_bytes(),
        client_ca_pem: ca.cert_pem().as_bytes().to_vec(),
    });
    tokio::spawn(server::serve(
        Arc::clone(&core),
        listener,
        transport,
        std::future::pending(),
    ));
    for site in ["a", "b"] {
        auth::enrol(core.db(), &format!("node-{site}"), Role::Node, site, 0).expect("enrol");
    }
    Network {
        core,
        url,
        ca,
        _dir: dir,
    }
}

impl Network {
    /// Client TLS trusting the network CA.
    pub fn trust(&self) -> ClientTls {
        ClientTls {
            ca_pem: self.ca.cert_pem().as_bytes().to_vec(),
            ..ClientTls::default()
        }
    }

    /// Enrols a user and returns its token.
    pub fn user(&self, name: &str, role: Role, site: &str) -> BearerToken {
        let token = auth::enrol(self.core.db(), name, role, site, 0).expect("enrol");
        BearerToken::new(&token).expect("token")
    }

    /// A researcher client over TLS.
    pub async fn researcher(
        &self,
        token: BearerToken,
    ) -> ResearcherClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
    > {
        let channel = transport::endpoint(&self.url, Some(&self.trust()))
            .expect("endpoint")
            .connect()
            .await
            .expect("TLS handshake with the network CA");
        ResearcherClient::with_interceptor(channel, token)
    }

    /// A steward client over TLS.
    pub async fn steward(
        &self,
        token: BearerToken,
    ) -> StewardClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
    > {
        let channel = transport::endpoint(&self.url, Some(&self.trust()))
            .expect("endpoint")
            .connect()
            .await
            .expect("TLS handshake with the network CA");
        StewardClient::with_interceptor(channel, token)
    }

    /// The coordinator's database file.
    pub fn db_path(&self) -> std::path::PathBuf {
        self._dir.path().join("c.db")
    }

    /// Opens a node stream presenting `certificate` (if any) with `token`, saying Hello
    /// for `site`; returns the open stream (and its sender, which keeps it open).
    pub async fn open_node_stream(
        &self,
        certificate: Option<&IssuedCertificate>,
        token: &str,
        site: &str,
    ) -> Result<NodeStream, tonic::Status> {
        let hello = v1::Hello {
            site_id: site.into(),
            k: 5,
            version: "test".into(),
            max_concurrent: 1,
        };
        self.open_node_stream_saying(certificate, token, hello)
            .await
    }

    /// Opens a node stream presenting `certificate` (if any) with `token`, saying `hello`.
    pub async fn open_node_stream_saying(
        &self,
        certificate: Option<&IssuedCertificate>,
        token: &str,
        hello: v1::Hello,
    ) -> Result<NodeStream, tonic::Status> {
        let mut tls = self.trust();
        tls.identity = certificate.map(|c| {
            (
                c.cert_pem.clone().into_bytes(),
                c.key_pem.clone().into_bytes(),
            )
        });
        let channel = transport::endpoint(&self.url, Some(&tls))
            .expect("endpoint")
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client =
            NodeLinkClient::with_interceptor(channel, BearerToken::new(token).expect("token"));
        let (sender, receiver) = mpsc::channel(4);
        sender
            .send(v1::NodeMessage {
                message: Some(v1::node_message::Message::Hello(hello)),
            })
            .await
            .expect("queue");
        let inbound = client
            .open_stream(ReceiverStream::new(receiver))
            .await?
            .into_inner();
        Ok((sender, inbound))
    }

    /// Opens a node stream and returns its first message or the error.
    pub async fn node_stream(
        &self,
        certificate: Option<&IssuedCertificate>,
        token: &str,
        site: &str,
    ) -> Result<v1::CoordinatorMessage, tonic::Status> {
        let (sender, mut inbound) = self.open_node_stream(certificate, token, site).await?;
        let first = inbound.message().await?;
        // Keep the stream open a moment so the coordinator registers it.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(sender);
        first.ok_or_else(|| tonic::Status::unavailable("stream closed"))
    }

    /// A fresh token of site `site`'s node.
    pub fn node_token(&self, site: &str) -> String {
        auth::enrol(
            self.core.db(),
            &format!("node-{site}-again"),
            Role::Node,
            site,
            0,
        )
        .expect("enrol")
    }
}

/// A submission of `sql` titled `title`.
pub fn submit(title: &str, sql: &str) -> v1::SubmitRequest {
    v1::SubmitRequest {
        sql: sql.into(),
        title: title.into(),
        ..Default::default()
    }
}
