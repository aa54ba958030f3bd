//! A whole network in one process: a coordinator on loopback over mutual TLS and real
//! nodes (each its own engine, store, steward key, site identity key and roster) dialling
//! out to it, driven through the researcher's and stewards' gRPC APIs. Its researcher is
//! on the study [`STUDY`], which [`Network::submit`] and [`Network::ask`] name.
//!
//! Stores can be hand-made from a few patients ([`store_of`]) so a test knows every
//! number, or synthetic ([`crate::fixture`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use ern_coordinator::limits::Limits;
use ern_coordinator::model::Role;
use ern_coordinator::pki::IssuedCertificate;
use ern_ingest::progress::NoProgress;
use ern_node::engine::{NodeEngine, NodePolicy, SecurePolicy};
use ern_node::link::{self, LinkSettings};
use ern_node::pseudonym::Pseudonymiser;
use ern_node::secure::{Roster, SiteIdentity};
use ern_node::steward_key::StewardSigningKey;
use ern_proto::arrow_ipc;
use ern_proto::transport::{BearerToken, ClientTls};
use ern_proto::v1;
use tokio::task::JoinHandle;

pub use crate::loopback::STUDY;
use crate::loopback::{Loopback, Security, submit_in};
use crate::steward::named_steward;

/// One patient of a hand-made export: a local id, a birth date (`YYYY`, `YYYY-MM` or
/// `YYYY-MM-DD`), a sex from the value set, and ORPHA codes diagnosed (confirmed).
#[derive(Debug, Clone)]
pub struct Patient {
    /// The hospital's own id.
    pub local_id: String,
    /// The birth date as exported.
    pub birth_date: String,
    /// `female`, `male`, `undetermined` or `unknown`.
    pub sex: String,
    /// Diagnosed codes, e.g. `ORPHA:154`.
    pub codes: Vec<String>,
}

impl Patient {
    /// A patient born in `birth_year` with one diagnosis `code`.
    pub fn new(local_id: &str, birth_year: u32, sex: &str, code: &str) -> Self {
        Patient {
            local_id: local_id.to_string(),
            birth_date: birth_year.to_string(),
            sex: sex.to_string(),
            codes: vec![code.to_string()],
        }
    }
}

/// An export of `patients` written to `dir`/export and ingested into `dir`/store under
/// the pseudonymisation key `key`; returns the store.
pub fn store_of(dir: &Path, patients: &[Patient], key: &[u8; 32]) -> PathBuf {
    let mut patient_csv = String::from(
        "local_id,birth_date,sex,vital_status,death_date,first_contact_date,undiagnosed,contact_for_research,consent_data_reuse,biosample_available\n",
    );
    let mut diagnosis_csv = String::from("local_id,code,status,onset,onset_date,diagnosis_date\n");
    for patient in patients {
        patient_csv.push_str(&format!(
            "{},{},{},alive,,,false,yes,yes,\n",
            patient.local_id, patient.birth_date, patient.sex
        ));
        for code in &patient.codes {
            diagnosis_csv.push_str(&format!("{},{code},confirmed,,,\n", patient.local_id));
        }
    }
    ingest_export(dir, &patient_csv, &diagnosis_csv, key)
}

/// An export of the patient and diagnosis files given (with their headers) and empty
/// genetic and phenotype files, written to `dir`/export and ingested into `dir`/store
/// under the pseudonymisation key `key`; returns the store.
pub fn ingest_export(
    dir: &Path,
    patient_csv: &str,
    diagnosis_csv: &str,
    key: &[u8; 32],
) -> PathBuf {
    let export = dir.join("export");
    std::fs::create_dir_all(&export).expect("export dir");
    let files = [
        ("patient.csv", patient_csv),
        ("diagnosis.csv", diagnosis_csv),
        (
            "genetic_finding.csv",
            "local_id,hgnc_id,gene_symbol,hgvs,zygosity,causative\n",
        ),
        ("phenotype.csv", "local_id,hpo_id,excluded\n"),
    ];
    for (name, text) in files {
        std::fs::write(export.join(name), text).expect("write export");
    }
    let store = dir.join("store");
    ern_ingest::ingest(&export, &Pseudonymiser::new(key), &store, &NoProgress).expect("ingest");
    store
}

/// One site of an in-process network.
#[derive(Debug)]
pub struct Site {
    /// The site id.
    pub id: String,
    /// Its store.
    pub store: PathBuf,
    /// Its steward's signing key.
    pub steward: StewardSigningKey,
    /// Its steward's token at the coordinator.
    pub steward_token: BearerToken,
    /// Its node's engine (shared with the node's link).
    pub engine: Arc<NodeEngine>,
    /// The node's link task; aborted to take the node offline.
    pub link: Option<JoinHandle<()>>,
    settings: LinkSettings,
}

/// A coordinator and its nodes in one process.
#[derive(Debug)]
pub struct Network {
    /// The coordinator.
    pub loopback: Loopback,
    /// The sites, in the order given.
    pub sites: Vec<Site>,
    /// A researcher's token.
    pub researcher: BearerToken,
    /// Working directory (identity keys).
    pub dir: tempfile::TempDir,
}

/// How a site's node is set up: its id, store, and a change to its default policy
/// (secure aggregation on, the roster of every site of the network).
#[derive(Debug)]
pub struct SiteSetup<'a> {
    /// The site id.
    pub id: &'a str,
    /// Its store.
    pub store: PathBuf,
}

/// A site of the network whose node a test speaks for by hand: enrolled at the
/// coordinator (so every question targets it), with a steward who approves, and an
/// identity key that every in-process node's roster lists; but no node of it runs.
#[derive(Debug)]
pub struct HandSite {
    /// The site id.
    pub id: String,
    /// Its store.
    pub store: PathBuf,
    /// Its steward's signing key.
    pub steward: StewardSigningKey,
    /// Its steward's token at the coordinator.
    pub steward_token: BearerToken,
    /// Its site identity key (the one the rosters pin).
    pub identity: Arc<SiteIdentity>,
    /// The roster its node would have: every site of the network.
    pub roster: Roster,
    /// Its node's token at the coordinator.
    pub node_token: String,
    /// Its node's client certificate from the network CA.
    pub certificate: IssuedCertificate,
}

impl Network {
    /// Starts a coordinator over mutual TLS and one node per site, each with secure
    /// aggregation on and every site of the network in its roster; `configure` may change
    /// any node's policy first. Returns once every node is connected.
    pub async fn start(
        sites: Vec<SiteSetup<'_>>,
        configure: impl Fn(&str, &mut NodePolicy),
    ) -> Network {
        let (network, _) = Network::start_with_hand_sites(sites, &[], configure).await;
        network
    }

    /// The site `id`.
    pub fn site(&self, id: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.id == id)
            .expect("a site of the network")
    }

    /// The site `id`, to change.
    pub fn site_mut(&mut self, id: &str) -> &mut Site {
        self.sites
            .iter_mut()
            .find(|s| s.id == id)
            .expect("a site of the network")
    }

    /// Waits until site `id`'s node is connected.
    pub async fn wait_connected(&self, id: &str) {
        let waited = tokio::time::timeout(Duration::from_secs(30), async {
            while !self.loopback.core.is_connected(id) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "node {id} did not connect");
    }

    /// Submits `sql` to every site under study [`STUDY`]; returns the question's id.
    pub async fn submit(&self, sql: &str) -> String {
        self.submit_in(STUDY, sql).await
    }

    /// Submits `sql` to every site under study `study` (one the researcher is on);
    /// returns the question's id.
    pub async fn submit_in(&self, study: &str, sql: &str) -> String {
        let mut researcher = self.loopback.researcher(self.researcher.clone()).await;
        researcher
            .submit(submit_in(study, "a question", sql))
            .await
            .expect("submitted")
            .into_inner()
            .query_id
    }

    /// Site `site`'s steward approves question `query_id` over `sql`, as the steward's
    /// own tool does: signs the statement locally and sends the signature.
    pub async fn approve(&self, query_id: &str, sql: &str, site: &str) {
        let site = self.site(site);
        self.approve_as(query_id, sql, &site.id, &site.steward, &site.steward_token)
            .await;
    }

    /// `steward` of `site` (logged in with `token`) signs an approval of `query_id` over
    /// `sql`, under the question's study, for ten minutes and sends it.
    async fn approve_as(
        &self,
        query_id: &str,
        sql: &str,
        site: &str,
        steward: &StewardSigningKey,
        token: &BearerToken,
    ) {
        let expires = ern_coordinator::model::now_seconds() + 600;
        let study = self.study_of(query_id);
        let approval = ern_node::approval::sign(steward, sql, site, &study, expires).expect("sign");
        let mut client = self.loopback.steward(token.clone()).await;
        client
            .approve(approval.to_request(query_id))
            .await
            .expect("approved");
    }

    /// The study question `query_id` belongs to, as the coordinator stored it (and shows
    /// it to stewards).
    pub fn study_of(&self, query_id: &str) -> String {
        self.loopback
            .core
            .db()
            .query(query_id)
            .expect("query")
            .expect("a stored question")
            .study_id
    }

    /// Submits `sql`, has every site approve it, and waits until it is complete; returns
    /// the question's id.
    pub async fn ask(&self, sql: &str) -> String {
        let id = self.submit(sql).await;
        self.approve_all(&id, sql).await;
        self.wait_complete(&id).await;
        id
    }

    /// Every site's steward approves.
    pub async fn approve_all(&self, query_id: &str, sql: &str) {
        for site in &self.sites {
            self.approve(query_id, sql, &site.id).await;
        }
    }

    /// Waits until the question is complete (merged or failed), at most 60 s.
    pub async fn wait_complete(&self, query_id: &str) {
        let waited = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let query = self.loopback.core.db().query(query_id).expect("query");
                if query.is_some_and(|q| q.complete) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "question {query_id} did not complete: {:?}",
            self.loopback.core.db().targets(query_id)
        );
    }

    /// The question's status, as the researcher reads it.
    pub async fn status(&self, query_id: &str) -> v1::QueryStatus {
        let mut researcher = self.loopback.researcher(self.researcher.clone()).await;
        researcher
            .get_status(v1::GetStatusRequest {
                query_id: query_id.into(),
                wait_seconds: 0,
            })
            .await
            .expect("status")
            .into_inner()
    }

    /// The question's merged table and its results message, as the researcher reads them.
    pub async fn results(&self, query_id: &str) -> (Vec<RecordBatch>, v1::QueryResults) {
        let mut researcher = self.loopback.researcher(self.researcher.clone()).await;
        let results = researcher
            .get_results(v1::GetResultsRequest {
                query_id: query_id.into(),
            })
            .await
            .expect("results")
            .into_inner();
        let (_, batches) = arrow_ipc::decode(&results.arrow_ipc).expect("decode");
        (batches, results)
    }

    /// Each site's state and detail for the question, by site.
    pub fn site_states(&self, query_id: &str) -> Vec<(String, String, String)> {
        self.loopback
            .core
            .db()
            .targets(query_id)
            .expect("targets")
            .into_iter()
            .map(|t| (t.site, t.state.as_str().to_string(), t.detail))
            .collect()
    }
}

impl Network {
    /// As [`Network::start`], except that the sites named in `by_hand` get no node: each
    /// is enrolled, has a steward, and has an identity key in every roster, and is
    /// returned as a [`HandSite`] (in the order of `sites`) for the test to speak for.
    /// Returns once every in-process node is connected.
    pub async fn start_with_hand_sites(
        sites: Vec<SiteSetup<'_>>,
        by_hand: &[&str],
        configure: impl Fn(&str, &mut NodePolicy),
    ) -> (Network, Vec<HandSite>) {
        let loopback = Loopback::start(Security::MutualTls, Limits::default()).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let mut identities = Vec::new();
        for setup in &sites {
            let identity_dir = dir.path().join(format!("identity-{}", setup.id));
            let public = SiteIdentity::generate(&identity_dir).expect("identity");
            let identity =
                Arc::new(SiteIdentity::load(&SiteIdentity::key_path(&identity_dir)).expect("load"));
            identities.push((public, identity));
        }
        let roster = Roster::new(
            sites
                .iter()
                .zip(&identities)
                .map(|(setup, (public, _))| (setup.id.to_string(), public.clone())),
        )
        .expect("roster");
        let researcher = loopback.user("researcher", Role::Researcher, "");
        let (mut built, mut hand) = (Vec::new(), Vec::new());
        for (setup, (_, identity)) in sites.into_iter().zip(identities) {
            let steward = named_steward(dir.path(), &format!("steward-{}", setup.id));
            let steward_token =
                loopback.user(&format!("steward-{}", setup.id), Role::Steward, setup.id);
            let certificate = loopback.ca.issue_node(setup.id).expect("node certificate");
            let node_user = format!("node-{}", setup.id);
            if by_hand.contains(&setup.id) {
                let enrolment =
                    ern_coordinator::auth::Enrolment::new(&node_user, Role::Node, setup.id);
                let node_token = ern_coordinator::auth::enrol(
                    loopback.core.db(),
                    "test",
                    &enrolment.with_new_site(),
                    0,
                )
                .expect("enrol");
                hand.push(HandSite {
                    id: setup.id.to_string(),
                    store: setup.store,
                    steward,
                    steward_token,
                    identity,
                    roster: roster.clone(),
                    node_token,
                    certificate,
                });
                continue;
            }
            let mut policy = NodePolicy::new(setup.id, vec![steward.public_key()]);
            policy.secure = SecurePolicy {
                enabled: true,
                identity: Some(identity),
                roster: roster.clone(),
                ..SecurePolicy::default()
            };
            configure(setup.id, &mut policy);
            let engine = Arc::new(
                NodeEngine::open(&setup.store, policy)
                    .await
                    .expect("node engine"),
            );
            let token = loopback.user(&node_user, Role::Node, setup.id);
            let tls = ClientTls {
                identity: Some((
                    certificate.cert_pem.into_bytes(),
                    certificate.key_pem.into_bytes(),
                )),
                ..loopback.trust()
            };
            let settings = LinkSettings::new(&loopback.url, token, Some(tls));
            let mut site = Site {
                id: setup.id.to_string(),
                store: setup.store,
                steward,
                steward_token,
                engine,
                link: None,
                settings,
            };
            site.go_online();
            built.push(site);
        }
        let network = Network {
            loopback,
            sites: built,
            researcher,
            dir,
        };
        for site in &network.sites {
            network.wait_connected(&site.id).await;
        }
        (network, hand)
    }

    /// A hand site's steward approves question `query_id` over `sql`, as
    /// [`Network::approve`] does for a site with a node.
    pub async fn approve_by_hand(&self, query_id: &str, sql: &str, site: &HandSite) {
        self.approve_as(query_id, sql, &site.id, &site.steward, &site.steward_token)
            .await;
    }
}

impl HandSite {
    /// Opens the site's node stream with its certificate and token, saying Hello as a
    /// node that takes part in secure aggregation with a minimum of 3 sites, and reads
    /// the coordinator's Welcome.
    pub async fn connect(&self, loopback: &Loopback) -> crate::loopback::NodeStream {
        let hello = v1::Hello {
            site_id: self.id.clone(),
            k: 5,
            version: "test".into(),
            max_concurrent: 1,
            secure_aggregation: true,
            min_secure_sites: 3,
            privacy: None,
        };
        let (sender, mut inbound) = loopback
            .open_node_stream_saying(Some(&self.certificate), &self.node_token, hello)
            .await
            .expect("the hand site's stream");
        let welcome = inbound
            .message()
            .await
            .expect("welcome")
            .expect("a message");
        assert!(
            matches!(
                welcome.message,
                Some(v1::coordinator_message::Message::Welcome(_))
            ),
            "{welcome:?}"
        );
        (sender, inbound)
    }
}

impl Site {
    /// Starts (or restarts) the node's link.
    pub fn go_online(&mut self) {
        let (engine, settings) = (Arc::clone(&self.engine), self.settings.clone());
        self.link = Some(tokio::spawn(async move {
            link::run(engine, settings).await;
        }));
    }

    /// Takes the node offline: its link task ends and its stream closes.
    pub fn go_offline(&mut self) {
        if let Some(link) = self.link.take() {
            link.abort();
        }
    }
}
