//! A real coordinator serving gRPC on loopback, in this process, over plaintext or mutual
//! TLS with a fresh network CA; its database in a temporary directory; clients of every
//! role; and node streams driven by hand.
//!
//! Every researcher a test enrols ([`Loopback::user`]) is put on the study [`STUDY`], so
//! that [`submit`] (which names it) works for each of them; a test of studies makes its
//! own with [`Loopback::study`] or the Operator API.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ern_coordinator::config::ServerTls;
use ern_coordinator::db::StudyAdmission;
use ern_coordinator::limits::Limits;
use ern_coordinator::model::{Role, Study};
use ern_coordinator::pki::{IssuedCertificate, NetworkCa};
use ern_coordinator::{Coordinator, Db, Timing, Transport, auth, server};
use ern_proto::transport::{self, BearerToken, ClientTls};
use ern_proto::v1;
use ern_proto::v1::node_link_client::NodeLinkClient;
use ern_proto::v1::operator_client::OperatorClient;
use ern_proto::v1::researcher_client::ResearcherClient;
use ern_proto::v1::steward_client::StewardClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A node stream's sender and inbound messages.
pub type NodeStream = (
    mpsc::Sender<v1::NodeMessage>,
    tonic::Streaming<v1::CoordinatorMessage>,
);

/// A client of one role, sending a bearer token with every call.
pub type Authorised = InterceptedService<Channel, BearerToken>;

/// A question every site can answer.
pub const SQL: &str = "SELECT sex, COUNT(*) AS n FROM patient GROUP BY sex";

/// The study every researcher a test enrols is on, and every [`submit`] names.
pub const STUDY: &str = "study-1";

/// How the loopback coordinator talks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain HTTP/2: tokens only (for tests of the stream protocol and benchmarks).
    Plaintext,
    /// TLS with client certificates from the network CA, as in production.
    MutualTls,
}

/// A coordinator serving on loopback, with its CA and database directory.
#[derive(Debug)]
pub struct Loopback {
    /// The coordinator's core, for reading its state directly.
    pub core: Arc<Coordinator>,
    /// The URL clients dial (`http://` or `https://`).
    pub url: String,
    /// The network CA that issued the server certificate (used under TLS only).
    pub ca: NetworkCa,
    dir: tempfile::TempDir,
}

impl Loopback {
    /// Starts a coordinator with `limits`, database in a new temporary directory.
    pub async fn start(security: Security, limits: Limits) -> Loopback {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = Db::open(&dir.path().join("c.db")).expect("db");
        let core = Arc::new(
            Coordinator::new(db, Timing::default())
                .expect("core")
                .with_limits(limits),
        );
        let (ca, _) = NetworkCa::generate("test").expect("ca");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (url, transport) = match security {
            Security::Plaintext => (format!("http://{address}"), Transport::Plaintext),
            Security::MutualTls => {
                let server_cert = ca
                    .issue_server(&["localhost".into(), "127.0.0.1".into()])
                    .expect("server certificate");
                let transport = Transport::Tls(ServerTls {
                    cert_pem: server_cert.cert_pem.into_bytes(),
                    key_pem: server_cert.key_pem.into_bytes(),
                    client_ca_pem: ca.cert_pem().as_bytes().to_vec(),
                });
                (format!("https://{address}"), transport)
            }
        };
        tokio::spawn(server::serve(
            Arc::clone(&core),
            listener,
            transport,
            std::future::pending(),
        ));
        Loopback { core, url, ca, dir }
    }

    /// Enrols a node user `node-<site>` for each of `sites`.
    pub fn enrol_nodes(&self, sites: &[&str]) {
        for site in sites {
            let enrolment = auth::Enrolment::new(&format!("node-{site}"), Role::Node, site);
            auth::enrol(self.core.db(), "test", &enrolment.with_new_site(), 0).expect("enrol");
        }
    }

    /// The coordinator's database file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("c.db")
    }

    /// Client TLS trusting the network CA.
    pub fn trust(&self) -> ClientTls {
        ClientTls {
            ca_pem: self.ca.cert_pem().as_bytes().to_vec(),
            ..ClientTls::default()
        }
    }

    fn client_tls(&self) -> Option<ClientTls> {
        self.url.starts_with("https://").then(|| self.trust())
    }

    /// Enrols a user and returns its token; a researcher is put on study [`STUDY`]
    /// (created with them if it does not exist yet).
    pub fn user(&self, name: &str, role: Role, site: &str) -> BearerToken {
        let enrolment = auth::Enrolment::new(name, role, site).with_new_site();
        let token = auth::enrol(self.core.db(), "test", &enrolment, 0).expect("enrol");
        if role == Role::Researcher
            && !self
                .core
                .db()
                .add_study_researcher(STUDY, name)
                .expect("join")
        {
            self.study(STUDY, &[name]);
        }
        BearerToken::new(&token).expect("token")
    }

    /// Creates study `id` with `researchers` (enrolled researchers) on it, as an operator
    /// does.
    pub fn study(&self, id: &str, researchers: &[&str]) {
        let study = Study {
            id: id.to_string(),
            title: format!("Study {id}"),
            purpose: format!("The purpose of {id}"),
            researchers: researchers.iter().map(|r| r.to_string()).collect(),
            created_at: 0,
            created_by: "op".into(),
        };
        assert_eq!(
            self.core.db().add_study(&study).expect("add study"),
            StudyAdmission::Added,
            "study {id}"
        );
    }

    /// A channel to the coordinator.
    pub async fn channel(&self) -> Channel {
        transport::endpoint(&self.url, self.client_tls().as_ref())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect (and the TLS handshake with the network CA)")
    }

    /// A researcher client.
    pub async fn researcher(&self, token: BearerToken) -> ResearcherClient<Authorised> {
        ResearcherClient::with_interceptor(self.channel().await, token)
    }

    /// An operator client.
    pub async fn operator(&self, token: BearerToken) -> OperatorClient<Authorised> {
        OperatorClient::with_interceptor(self.channel().await, token)
    }

    /// A steward client.
    pub async fn steward(&self, token: BearerToken) -> StewardClient<Authorised> {
        StewardClient::with_interceptor(self.channel().await, token)
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
            ..Default::default()
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
        let first = v1::NodeMessage {
            message: Some(v1::node_message::Message::Hello(hello)),
        };
        self.open_node_stream_sending(certificate, token, first)
            .await
    }

    /// Opens a node stream presenting `certificate` (if any) with `token`, sending `first`
    /// as its first message (a Hello, or anything a hostile node might send instead).
    pub async fn open_node_stream_sending(
        &self,
        certificate: Option<&IssuedCertificate>,
        token: &str,
        first: v1::NodeMessage,
    ) -> Result<NodeStream, tonic::Status> {
        let mut tls = self.client_tls();
        if let Some(tls) = tls.as_mut() {
            tls.identity = certificate.map(|c| {
                (
                    c.cert_pem.clone().into_bytes(),
                    c.key_pem.clone().into_bytes(),
                )
            });
        }
        let channel = transport::endpoint(&self.url, tls.as_ref())
            .expect("endpoint")
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut client =
            NodeLinkClient::with_interceptor(channel, BearerToken::new(token).expect("token"));
        let (sender, receiver) = mpsc::channel(16);
        sender.send(first).await.expect("queue");
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
        let enrolment = auth::Enrolment::new(&format!("node-{site}-again"), Role::Node, site);
        auth::enrol(self.core.db(), "test", &enrolment.with_new_site(), 0).expect("enrol")
    }
}

/// A submission of `sql` titled `title`, under study [`STUDY`].
pub fn submit(title: &str, sql: &str) -> v1::SubmitRequest {
    submit_in(STUDY, title, sql)
}

/// A submission of `sql` titled `title`, under study `study`.
pub fn submit_in(study: &str, title: &str, sql: &str) -> v1::SubmitRequest {
    v1::SubmitRequest {
        sql: sql.into(),
        title: title.into(),
        study_id: study.into(),
        ..Default::default()
    }
}
