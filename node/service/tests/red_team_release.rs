//! Red team: what an untrusted researcher learns by combining releases of real nodes
//! (DESIGN.md, "Secure aggregation: k applies to the network total").
//!
//! The researcher writes SQL and picks target sites; each submission is a new question
//! (under a study the researcher is on, whose id an approval signs), which every target
//! site's steward approves on seeing the SQL. The coordinator runs a secure round
//! when at least three approved sites take part in secure aggregation, and the same
//! question per site otherwise (coordinator/src/rounds.rs, `turn_per_site`). The nodes
//! here are real engines over ingested Parquet stores, driven by hand as an honest
//! coordinator drives them; the releases and merges are the question's own
//! (`SecureLayout::release`, `QueryPlan::merge`).
//!
//! Each test is one attack, with the defence it expects; an attack that succeeds keeps
//! a test asserting the SAFE behaviour, marked `#[ignore = "red team: …"]`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use ern_ingest::progress::NoProgress;
use ern_node::approval;
use ern_node::engine::{NodeEngine, NodePolicy, QueryRequest, SecurePolicy};
use ern_node::pseudonym::Pseudonymiser;
use ern_node::round::{RoundStart, statement_to_proto};
use ern_node::secure::{Roster, RoundStatement, SiteIdentity};
use ern_node::steward_key::StewardSigningKey;
use ern_queries::catalog::planning_state;
use ern_queries::{Planner, QueryPlan};
use ern_test_support::steward::named_steward;

/// k of the default node policy.
const K: i64 = 5;

/// The limit a node with the default (2, 85 %) dominance rule signs, in ppm: 0.85² / 2.
const DEFAULT_PPM: u32 = 361_250;

/// Patients per sex: every key has a value set, so the question is secure.
const BY_SEX: &str =
    "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.sex";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// One patient of a hand-made export: birth year, sex, and optionally one diagnosis
/// (ORPHA:154) with its date, so that ingest computes `age_at_diagnosis`.
#[derive(Clone)]
struct Person {
    id: String,
    birth_year: i32,
    sex: &'static str,
    /// Age at diagnosis: the diagnosis is dated mid-year `birth_year + age`.
    age: Option<i32>,
}

fn women(prefix: &str, n: usize) -> Vec<Person> {
    (0..n)
        .map(|i| Person {
            id: format!("{prefix}{i}"),
            birth_year: 1950 + i as i32,
            sex: "female",
            age: None,
        })
        .collect()
}

fn aged(id: &str, age: i32) -> Person {
    Person {
        id: id.to_string(),
        birth_year: 1900,
        sex: "female",
        age: Some(age),
    }
}

/// An export of `people` ingested into `dir`/store.
fn store_of(dir: &Path, people: &[Person], key: &[u8; 32]) -> PathBuf {
    let export = dir.join("export");
    std::fs::create_dir_all(&export).expect("export dir");
    let mut patient_csv = String::from(
        "local_id,birth_date,sex,vital_status,death_date,first_contact_date,undiagnosed,contact_for_research,consent_data_reuse,biosample_available\n",
    );
    let mut diagnosis_csv = String::from("local_id,code,status,onset,onset_date,diagnosis_date\n");
    for p in people {
        patient_csv.push_str(&format!(
            "{},{},{},alive,,,false,yes,yes,\n",
            p.id, p.birth_year, p.sex
        ));
        let date = p
            .age
            .map(|age| format!("{}-06-01", p.birth_year + age))
            .unwrap_or_default();
        diagnosis_csv.push_str(&format!("{},ORPHA:154,confirmed,,,{date}\n", p.id));
    }
    for (name, text) in [
        ("patient.csv", patient_csv),
        ("diagnosis.csv", diagnosis_csv),
        (
            "genetic_finding.csv",
            "local_id,hgnc_id,gene_symbol,hgvs,zygosity,causative\n".to_string(),
        ),
        ("phenotype.csv", "local_id,hpo_id,excluded\n".to_string()),
    ] {
        std::fs::write(export.join(name), text).expect("write export");
    }
    let store = dir.join("store");
    ern_ingest::ingest(&export, &Pseudonymiser::new(key), &store, &NoProgress).expect("ingest");
    store
}

/// One site: its steward and engine.
struct Site {
    id: String,
    steward: StewardSigningKey,
    engine: NodeEngine,
}

/// Sites that all list each other in their rosters, with secure aggregation on.
struct Sites {
    _dir: tempfile::TempDir,
    sites: Vec<Site>,
}

impl Sites {
    async fn new(stores: &[(&str, Vec<Person>)]) -> Sites {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut identities = Vec::new();
        for (id, _) in stores {
            let identity_dir = dir.path().join(format!("identity-{id}"));
            SiteIdentity::generate(&identity_dir).expect("identity");
            let identity =
                SiteIdentity::load(&SiteIdentity::key_path(&identity_dir)).expect("load identity");
            identities.push(Arc::new(identity));
        }
        let roster = Roster::new(
            stores
                .iter()
                .zip(&identities)
                .map(|((id, _), identity)| (id.to_string(), identity.public_key())),
        )
        .expect("roster");
        let mut sites = Vec::new();
        for (index, ((id, people), identity)) in stores.iter().zip(identities).enumerate() {
            let store = store_of(&dir.path().join(id), people, &[index as u8 + 1; 32]);
            let steward = named_steward(dir.path(), &format!("steward-{id}"));
            let mut policy = NodePolicy::new(id, vec![steward.public_key()]);
            policy.secure = SecurePolicy {
                enabled: true,
                identity: Some(identity),
                roster: roster.clone(),
                ..SecurePolicy::default()
            };
            let engine = NodeEngine::open(&store, policy).await.expect("engine");
            sites.push(Site {
                id: id.to_string(),
                steward,
                engine,
            });
        }
        Sites { _dir: dir, sites }
    }

    fn site(&self, id: &str) -> &Site {
        self.sites
            .iter()
            .find(|s| s.id == id)
            .expect("a site of the test")
    }

    /// An honest secure round of `sql` over `ids` as question `query_id`: the
    /// statements of round 1 and the plain total of the masked vectors of round 2.
    async fn secure_round(
        &self,
        ids: &[&str],
        sql: &str,
        query_id: &str,
    ) -> (Vec<RoundStatement>, Vec<u64>) {
        let mut participants: Vec<String> = ids.iter().map(|p| p.to_string()).collect();
        participants.sort();
        let start = RoundStart {
            query_id: query_id.to_string(),
            round_id: "r-1".to_string(),
            participants,
        };
        let mut statements = Vec::new();
        for id in ids {
            let site = self.site(id);
            let statement = site
                .engine
                .secure_statement(&site.request(sql, query_id), &start)
                .await
                .unwrap_or_else(|e| panic!("round 1 at {id}: {e}"));
            statements.push(statement);
        }
        let mut total: Option<Vec<u64>> = None;
        for id in ids {
            let masked = self
                .site(id)
                .engine
                .secure_masked(
                    query_id,
                    "r-1",
                    statements.iter().map(statement_to_proto).collect(),
                )
                .await
                .unwrap_or_else(|e| panic!("round 2 at {id}: {e}"))
                .values;
            total = Some(match total {
                None => masked,
                Some(sum) => sum
                    .iter()
                    .zip(&masked)
                    .map(|(a, b)| a.wrapping_add(*b))
                    .collect(),
            });
        }
        (statements, total.expect("participants"))
    }

    /// What the researcher reads of a secure round: the coordinator's release (largest
    /// k, strictest limit signed) merged.
    async fn secure_table(&self, ids: &[&str], sql: &str, query_id: &str) -> Vec<Vec<String>> {
        let (statements, totals) = self.secure_round(ids, sql, query_id).await;
        let k = statements.iter().map(|s| u64::from(s.k)).max().expect("k");
        let limit = statements
            .iter()
            .map(|s| f64::from(s.max_concentration_ppm) / 1e6)
            .fold(f64::INFINITY, f64::min);
        let query = plan_of(sql).await;
        let release = query
            .secure_layout()
            .expect("layout")
            .release(&totals, k, limit)
            .expect("release");
        rows(&query.merge(vec![release.batch]).await.expect("merge"))
    }

    /// What the researcher reads of `sql` run per site at `ids` as question `query_id`
    /// (the coordinator's merge of the sites' releases), or the first refusal.
    async fn per_site_table(
        &self,
        ids: &[&str],
        sql: &str,
        query_id: &str,
    ) -> Result<Vec<Vec<String>>, String> {
        let mut batches = Vec::new();
        for id in ids {
            let site = self.site(id);
            let released = site
                .engine
                .execute(&site.request(sql, query_id))
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            batches.extend(released.batches);
        }
        let query = plan_of(sql).await;
        Ok(rows(&query.merge(batches).await.expect("merge")))
    }
}

impl Site {
    /// A request for `sql` as question (study) `study`, approved by this site's steward.
    fn request(&self, sql: &str, study: &str) -> QueryRequest {
        let approval =
            approval::sign(&self.steward, sql, &self.id, study, now() + 600).expect("sign");
        QueryRequest {
            sql: sql.to_string(),
            study_id: study.to_string(),
            approval,
        }
    }
}

async fn plan_of(sql: &str) -> QueryPlan {
    Planner::new()
        .plan(sql, &planning_state().expect("planning state"))
        .await
        .expect("a valid question")
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            out.push(
                batch
                    .columns()
                    .iter()
                    .map(|c| {
                        ScalarValue::try_from_array(c.as_ref(), row)
                            .expect("cell")
                            .to_string()
                    })
                    .collect(),
            );
        }
    }
    out
}

/// The released value of the row whose first cell is `key`, column `column`; 0 when
/// the row is not released.
fn cell(table: &[Vec<String>], key: &str, column: usize) -> i64 {
    table
        .iter()
        .find(|r| r[0] == key)
        .and_then(|r| r[column].parse::<f64>().ok())
        .map_or(0, |v| v.round() as i64)
}

/// Site-a 5 women, site-b 6, site-c 2, site-d 2: no per-site cell of site-c or site-d
/// reaches k.
fn network() -> Vec<(&'static str, Vec<Person>)> {
    vec![
        ("site-a", women("a", 5)),
        ("site-b", women("b", 6)),
        ("site-c", women("c", 2)),
        ("site-d", women("d", 2)),
    ]
}

/// Sanity of the premises: a node with the default policy signs k = 5 and the limit
/// 0.85² / 2, which the coordinator takes as the largest k and the smallest limit.
///
/// Defence: the signed terms are the node's own policy (the researcher cannot change
/// them); the moments bound they imply is sound (queries/tests/red_team_secure.rs).
#[tokio::test]
async fn nodes_sign_their_own_k_and_the_two_patient_limit() {
    let sites = Sites::new(&network()[..3]).await;
    let (statements, _) = sites
        .secure_round(&["site-a", "site-b", "site-c"], BY_SEX, "q-terms")
        .await;
    for statement in &statements {
        assert_eq!(statement.k, K as u32);
        assert_eq!(statement.max_concentration_ppm, DEFAULT_PPM);
    }
}

/// Attack: the same SQL twice, as two questions. Question 1 targets sites a, b and c
/// and runs securely: the network total of women is 13 (site-c's 2 are inside it).
/// Question 2 targets site-a and site-b only: fewer than three sites, so the
/// coordinator runs it per site (coordinator/src/rounds.rs `turn_per_site`), and each
/// releases its own 5 and 6 (both ≥ k). 13 - 11 = 2: site-c's own count, below k,
/// which per-site suppression hid and secure aggregation promised to hide too.
///
/// Expected defence: a node does not release a secure-eligible question per site
/// once it may be part of a network total, or the difference is never between 1 and
/// k-1.
///
/// BROKEN: nodes keep their once-per-question record by (study, SQL hash)
/// (node/service/src/executed.rs `query_key`, checked in engine.rs `run` and
/// round.rs `secure_statement`), and the study is the question id, so the same SQL in
/// a new question is released per site without regard to the secure round. Mode
/// choice is the researcher's (target fewer than three sites, add a site that is not
/// secure, or inflate the domain past the vector cap: queries/src/plan.rs
/// `derive_mode`). Fix: a node with secure aggregation on never releases per site a
/// question that has a public domain (engine.rs `run`: refuse when `plan.mode()` is
/// secure), and the coordinator refuses to run a secure-eligible question per site
/// (rounds.rs: fail instead of `turn_per_site`); a per-site variant of the SQL with a
/// key without domain still differs, so the lasting fix is noise (DESIGN.md
/// "Differential privacy") or no per-site releases at all on a secure network.
#[tokio::test]
async fn a_secure_total_minus_per_site_releases_reads_a_suppressed_site() {
    let sites = Sites::new(&network()[..3]).await;
    let secure = sites
        .secure_table(&["site-a", "site-b", "site-c"], BY_SEX, "q-secure")
        .await;
    assert_eq!(cell(&secure, "female", 1), 13, "{secure:?}");
    let per_site = sites
        .per_site_table(&["site-a", "site-b"], BY_SEX, "q-per-site")
        .await;
    let Ok(per_site) = per_site else {
        return; // refused per site: safe
    };
    let difference = cell(&secure, "female", 1) - cell(&per_site, "female", 1);
    assert!(
        difference == 0 || difference >= K,
        "site-c's own count of women: {difference} (secure {secure:?}, per site {per_site:?})"
    );
}

/// Attack: the same SQL as two secure questions, over sites a, b, c, d and over a, b, c
/// (each has the minimum of three participants; stewards of a, b and c see the same
/// SQL twice, site-d's steward sees it once). The totals are 15 and 13: site-d holds 2.
///
/// Expected defence: no hospital's own numbers are learnt (DESIGN.md: "What nobody
/// learns: any hospital's own numbers").
///
/// BROKEN: DESIGN.md and the nodes forbid only a second round *of one question*
/// ("never re-run with fewer sites, since the difference of two sums over different
/// site sets is one site's vector"); the same SQL as a new question is a new key in
/// node/service/src/executed.rs `query_key` (study = question id), and the
/// coordinator does not compare questions. Fix: key the node's once-ever record on the
/// SQL hash alone, not (study, hash), so a node sends one vector per SQL text ever
/// (still defeated by an equivalent rewrite such as `AND 1 = 1`); the lasting fix is
/// noise on every secure total (DESIGN.md "Differential privacy": each node's share of
/// the noise before masking), since any two site sets differ by sites.
#[tokio::test]
#[ignore = "known limit with [privacy] off (the default): the same question over two site sets differs by one site's count; with noise on, each site's part is noised and charged (tests/privacy.rs, red_team_privacy.rs)"]
async fn two_secure_questions_over_different_sites_read_one_site() {
    let sites = Sites::new(&network()).await;
    let four = sites
        .secure_table(&["site-a", "site-b", "site-c", "site-d"], BY_SEX, "q-four")
        .await;
    let three = sites
        .secure_table(&["site-a", "site-b", "site-c"], BY_SEX, "q-three")
        .await;
    assert_eq!(cell(&four, "female", 1), 15, "{four:?}");
    let difference = cell(&four, "female", 1) - cell(&three, "female", 1);
    assert!(
        difference == 0 || difference >= K,
        "site-d's own count of women: {difference}"
    );
}

/// Attack (the same question twice, hostile re-run): the coordinator, or a researcher
/// resubmitting nothing new, asks the nodes for a second round of one question with
/// fewer sites.
///
/// Defence: a node sends one masked vector per question, ever, and refuses a question
/// per site once it went into a round (held: node/service/tests/secure_rounds.rs covers
/// the racing and hostile orders; this is the plain order).
#[tokio::test]
async fn one_question_gets_one_vector_and_no_per_site_release() {
    let sites = Sites::new(&network()).await;
    sites
        .secure_table(&["site-a", "site-b", "site-c", "site-d"], BY_SEX, "q-once")
        .await;
    let a = sites.site("site-a");
    let again = a
        .engine
        .secure_statement(
            &a.request(BY_SEX, "q-once"),
            &RoundStart {
                query_id: "q-once".into(),
                round_id: "r-2".into(),
                participants: vec!["site-a".into(), "site-b".into(), "site-c".into()],
            },
        )
        .await;
    assert!(again.is_err(), "a second round of one question");
    let per_site = a.engine.execute(&a.request(BY_SEX, "q-once")).await;
    assert!(per_site.is_err(), "the question released per site too");
}

/// Attack: on real nodes (ingested Parquet, the node's own total plan), a SUM scaled
/// by a literal whose per-patient squares add past 2^64 across sites: one woman
/// diagnosed at 150 at site-a, with one at 1; 8 and 1 at site-b; 1 at site-c. The top
/// two hold 98 %; the coordinator's concentration, from the wrapped sum of squares, is
/// 0.0006.
///
/// Expected defence: the cell is dropped, as the unscaled question is.
///
/// BROKEN: see queries/tests/red_team_secure.rs
/// `a_scaled_sum_wraps_its_squares_and_escapes_the_dominance_rule` (queries/src/secure.rs
/// `release` reads wrapped u64 moments; `integral` saturates).
#[tokio::test]
async fn a_scaled_sum_escapes_the_dominance_rule_on_real_nodes() {
    let stores = vec![
        ("site-a", vec![aged("t", 150), aged("a1", 1)]),
        ("site-b", vec![aged("b1", 8), aged("b2", 1)]),
        ("site-c", vec![aged("c1", 1)]),
    ];
    let sites = Sites::new(&stores).await;
    let abc = ["site-a", "site-b", "site-c"];
    let plain = "SELECT p.sex, SUM(d.age_at_diagnosis) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let table = sites.secure_table(&abc, plain, "q-plain").await;
    assert!(table.is_empty(), "the plain sum is dominated: {table:?}");
    let scaled = "SELECT p.sex, SUM(d.age_at_diagnosis * 28600000) AS s FROM patient p JOIN diagnosis d ON d.pid = p.pid GROUP BY p.sex";
    let table = sites.secure_table(&abc, scaled, "q-scaled").await;
    assert!(
        table.is_empty(),
        "released {table:?}: / 28600000 = {}",
        cell(&table, "female", 1) / 28_600_000
    );
}
