//! Red team: secure aggregation attacked as an untrusted researcher (who writes the SQL
//! and picks the target sites) and as a compromised coordinator (who can send any message
//! on the node stream, but cannot forge steward approvals or site identity signatures and
//! does not control the nodes' rosters). The goal of every attack: a single patient's
//! data, or one hospital's own (unmasked) numbers, through the secure path.
//!
//! Every test drives real engines over real stores (hand-made exports through the real
//! ingest, or synthetic ones) with real approvals and identity keys, as the node's link
//! would. A test that passes is a defence that holds; a test marked `#[ignore = "red
//! team: …"]` asserts the safe behaviour the code does not have yet (an attack that
//! succeeds), and says in its message what leaked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ern_node::approval;
use ern_node::audit::{self, AUDIT_FILE, AuditEntry};
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy, QueryRequest, SecurePolicy};
use ern_node::round::{RoundStart, statement_to_proto};
use ern_node::secure::{Roster, RoundKeys, RoundStatement, SiteIdentity};
use ern_node::steward_key::StewardSigningKey;
use ern_queries::catalog::planning_state;
use ern_queries::{Planner, QueryPlan};
use ern_test_support::fixture::{plain_count_vector, synthetic_site_store};
use ern_test_support::rows::canonical_rows;
use ern_test_support::steward::named_steward;

/// The dominance limit a node with the default (2, 85 %) rule signs: 0.85² / 2.
const MAX_CONCENTRATION: f64 = 0.36125;

/// The k of every node here (the default).
const K: u64 = 5;

/// Patients per disorder (Orphanet name, a public domain) and sex.
const DISORDER_BY_SEX: &str = "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

/// [`DISORDER_BY_SEX`] over the patients born from 1880 + `n` on: another question
/// (another fingerprint) for each `n`, since a node takes part in one round per question.
fn disorder_by_sex_from(n: usize) -> String {
    DISORDER_BY_SEX.replace(
        " GROUP BY",
        &format!(" WHERE p.birth_year >= {} GROUP BY", 1880 + n),
    )
}

/// The same counts for plain DataFusion (group keys, then the count).
const PLAIN_COUNTS: &str = "SELECT t.name, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

// ---------------------------------------------------------------------------------------
// Hand-made registries
// ---------------------------------------------------------------------------------------

/// One patient of a hand-made export: birth date, sex, and diagnoses (code and an
/// optional diagnosis date, from which ingest computes `age_at_diagnosis`).
#[derive(Debug, Clone)]
struct Person {
    id: String,
    birth: String,
    sex: String,
    diagnoses: Vec<(String, Option<String>)>,
}

fn person(id: &str, birth: &str, sex: &str, diagnoses: &[(&str, Option<&str>)]) -> Person {
    Person {
        id: id.to_string(),
        birth: birth.to_string(),
        sex: sex.to_string(),
        diagnoses: diagnoses
            .iter()
            .map(|(code, date)| (code.to_string(), date.map(str::to_string)))
            .collect(),
    }
}

/// `n` patients `prefix0…` born in `year`, of `sex`, each with one undated `code`.
fn people(prefix: &str, n: usize, year: u32, sex: &str, code: &str) -> Vec<Person> {
    (0..n)
        .map(|i| {
            person(
                &format!("{prefix}{i}"),
                &year.to_string(),
                sex,
                &[(code, None)],
            )
        })
        .collect()
}

/// The export of `persons` written to `dir`/export and ingested into `dir`/store.
fn store_of(dir: &Path, persons: &[Person], key: &[u8; 32]) -> PathBuf {
    let mut patient_csv = String::from(
        "local_id,birth_date,sex,vital_status,death_date,first_contact_date,undiagnosed,contact_for_research,consent_data_reuse,biosample_available\n",
    );
    let mut diagnosis_csv = String::from("local_id,code,status,onset,onset_date,diagnosis_date\n");
    for p in persons {
        patient_csv.push_str(&format!(
            "{},{},{},alive,,,false,yes,yes,\n",
            p.id, p.birth, p.sex
        ));
        for (code, date) in &p.diagnoses {
            diagnosis_csv.push_str(&format!(
                "{},{code},confirmed,,,{}\n",
                p.id,
                date.as_deref().unwrap_or("")
            ));
        }
    }
    ern_test_support::network::ingest_export(dir, &patient_csv, &diagnosis_csv, key)
}

// ---------------------------------------------------------------------------------------
// Sites driven by hand
// ---------------------------------------------------------------------------------------

struct Site {
    id: String,
    store: PathBuf,
    steward: StewardSigningKey,
    engine: NodeEngine,
}

struct Sites {
    _dir: tempfile::TempDir,
    sites: Vec<Site>,
}

/// Where a site's data comes from.
enum Data {
    Hand(Vec<Person>),
    Synthetic { patients: usize, seed: u64 },
}

impl Sites {
    /// `ids` with the data `data` gives each, secure aggregation on, every site of `ids`
    /// in every roster.
    async fn new(ids: &[&str], data: impl Fn(&str) -> Data) -> Sites {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut identities = Vec::new();
        for id in ids {
            let identity_dir = dir.path().join(format!("identity-{id}"));
            SiteIdentity::generate(&identity_dir).expect("identity");
            let identity =
                SiteIdentity::load(&SiteIdentity::key_path(&identity_dir)).expect("load identity");
            identities.push(Arc::new(identity));
        }
        let roster = Roster::new(
            ids.iter()
                .zip(&identities)
                .map(|(id, identity)| (id.to_string(), identity.public_key())),
        )
        .expect("roster");
        let mut sites = Vec::new();
        for (index, (id, identity)) in ids.iter().zip(identities).enumerate() {
            let key = [index as u8 + 1; 32];
            let site_dir = dir.path().join(id);
            let store = match data(id) {
                Data::Hand(persons) => store_of(&site_dir, &persons, &key),
                Data::Synthetic { patients, seed } => {
                    synthetic_site_store(&site_dir, patients, seed, &key)
                }
            };
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
                store,
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

    /// Round 1 at every site of `ids`; the first refusal, or the statements in order.
    async fn round_one(
        &self,
        ids: &[&str],
        sql: &str,
        start: &RoundStart,
    ) -> Result<Vec<RoundStatement>, (String, ExecuteError)> {
        let mut statements = Vec::new();
        for id in ids {
            let statement = self
                .site(id)
                .round_one(sql, start)
                .await
                .map_err(|e| (id.to_string(), e))?;
            statements.push(statement);
        }
        Ok(statements)
    }

    /// An honest round over `ids`: the network totals (the sum of the masked vectors), or
    /// the first site that refused and why.
    async fn round(
        &self,
        ids: &[&str],
        sql: &str,
        query_id: &str,
    ) -> Result<Vec<u64>, (String, ExecuteError)> {
        let start = start(query_id, "r-1", ids);
        let statements = self.round_one(ids, sql, &start).await?;
        let mut masked = Vec::new();
        for id in ids {
            let vector = self
                .site(id)
                .round_two(query_id, "r-1", &statements)
                .await
                .map_err(|e| (id.to_string(), e))?;
            masked.push(vector);
        }
        Ok(wrapping_sum(&masked))
    }
}

impl Site {
    fn request(&self, sql: &str, study: &str) -> QueryRequest {
        let approval =
            approval::sign(&self.steward, sql, &self.id, study, now() + 600).expect("sign");
        QueryRequest {
            sql: sql.to_string(),
            study_id: study.to_string(),
            approval,
        }
    }

    async fn round_one(
        &self,
        sql: &str,
        start: &RoundStart,
    ) -> Result<RoundStatement, ExecuteError> {
        self.engine
            .secure_statement(&self.request(sql, &start.query_id), start)
            .await
    }

    async fn round_two(
        &self,
        query_id: &str,
        round_id: &str,
        statements: &[RoundStatement],
    ) -> Result<Vec<u64>, ExecuteError> {
        self.engine
            .secure_masked(
                query_id,
                round_id,
                statements.iter().map(statement_to_proto).collect(),
            )
            .await
            .map(|masked| masked.values)
    }

    fn last_audit(&self) -> AuditEntry {
        audit::read_entries(&self.store.join(AUDIT_FILE))
            .expect("audit log")
            .pop()
            .expect("an audit entry")
    }
}

/// Round 1 as a coordinator asks for it: participants sorted.
fn start(query_id: &str, round_id: &str, participants: &[&str]) -> RoundStart {
    let mut participants: Vec<String> = participants.iter().map(|p| p.to_string()).collect();
    participants.sort();
    RoundStart {
        query_id: query_id.to_string(),
        round_id: round_id.to_string(),
        participants,
    }
}

/// A start whose participant list is taken as given (not sorted, not cleaned).
fn raw_start(query_id: &str, participants: &[&str]) -> RoundStart {
    RoundStart {
        query_id: query_id.to_string(),
        round_id: "r-1".to_string(),
        participants: participants.iter().map(|p| p.to_string()).collect(),
    }
}

fn rule<T>(result: &Result<T, ExecuteError>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(error) => error.rule_name(),
    }
}

async fn plan_of(sql: &str) -> QueryPlan {
    Planner::new()
        .plan(sql, &planning_state().expect("planning state"))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn wrapping_sum(vectors: &[Vec<u64>]) -> Vec<u64> {
    let mut total = vec![0u64; vectors[0].len()];
    for vector in vectors {
        assert_eq!(vector.len(), total.len(), "one length per round");
        for (t, v) in total.iter_mut().zip(vector) {
            *t = t.wrapping_add(*v);
        }
    }
    total
}

fn wrapping_sub(a: &[u64], b: &[u64]) -> Vec<u64> {
    a.iter().zip(b).map(|(x, y)| x.wrapping_sub(*y)).collect()
}

/// The researcher's table from a round's totals, at k and the default dominance limit.
async fn released_rows(plan: &QueryPlan, totals: &[u64]) -> Vec<String> {
    let release = plan
        .secure_layout()
        .expect("layout")
        .release(totals, K, MAX_CONCENTRATION)
        .expect("release");
    canonical_rows(&plan.merge(vec![release.batch]).await.expect("merge"))
}

/// The last number of the first released row that contains `needle`.
fn count_of(rows: &[String], needle: &str) -> Option<i64> {
    rows.iter()
        .find(|row| row.contains(needle))
        .and_then(|row| row.rsplit(" | ").next())
        .and_then(|n| n.trim().parse().ok())
}

const ABC: [&str; 3] = ["site-a", "site-b", "site-c"];

// ---------------------------------------------------------------------------------------
// 1. Dominance under masks: the moments wrap modulo 2^64
// ---------------------------------------------------------------------------------------

/// A released SUM the researcher scales up by a literal, as rule 4 allows: 150 (the
/// declared largest age) × 28,000,000 = 4.2e9 stays under validation's 2^32 bound per
/// row, but a patient's contribution (the sum over their rows) squared passes 2^64.
const SCALED_SUM: &str = "SELECT COUNT(DISTINCT d.pid) AS patients, SUM(d.age_at_diagnosis * 28000000) AS scaled FROM diagnosis d";

/// The same question unscaled: the control, whose moments stay small.
const PLAIN_SUM: &str =
    "SELECT COUNT(DISTINCT d.pid) AS patients, SUM(d.age_at_diagnosis) AS ages FROM diagnosis d";

/// A patient with two diagnoses at 60 (a contribution of 120 years) or one at 1.
fn dominant(id: &str) -> Person {
    person(
        id,
        "1950",
        "female",
        &[
            ("ORPHA:154", Some("2010-06-01")),
            ("ORPHA:130", Some("2010-06-01")),
        ],
    )
}

fn small(id: &str) -> Person {
    person(id, "2000", "male", &[("ORPHA:154", Some("2001-06-01"))])
}

/// Runs the control and the scaled question over {a, b, c} with `data`, and returns the
/// researcher's rows of each: the control is checked to be dominated (suppressed).
async fn dominance_rounds(data: impl Fn(&str) -> Data) -> Vec<String> {
    let sites = Sites::new(&ABC, data).await;
    let control = plan_of(PLAIN_SUM).await;
    assert_eq!(control.mode().name(), "secure");
    let totals = sites
        .round(&ABC, PLAIN_SUM, "q-control")
        .await
        .expect("control round");
    assert_eq!(
        released_rows(&control, &totals).await,
        Vec::<String>::new(),
        "the control: two patients hold 98 % of the total, so the cell is dominated"
    );
    let plan = plan_of(SCALED_SUM).await;
    assert_eq!(plan.mode().name(), "secure", "{:?}", plan.mode());
    let totals = sites
        .round(&ABC, SCALED_SUM, "q-scaled")
        .await
        .expect("scaled round");
    released_rows(&plan, &totals).await
}

/// Attack (researcher): the dominance rule under masks adds each site's sum of squared
/// patient contributions modulo 2^64. Scaling a SUM's argument by a literal (allowed:
/// validation bounds one row at 2^32) makes two dominant patients' squares at one site
/// exceed 2^64; the node's float-to-u64 conversion saturates, the small sites' squares
/// wrap the total past zero, and the concentration the coordinator computes is ~0.
/// Expected defence: the scaled question is dominated exactly as the unscaled one (the
/// concentration is scale-free), so its cell is suppressed.
#[tokio::test]
async fn dominance_holds_when_the_moments_overflow_at_one_site() {
    let released = dominance_rounds(|id| {
        Data::Hand(match id {
            "site-a" => vec![dominant("A1"), dominant("A2")],
            "site-b" => vec![small("B1"), small("B2")],
            _ => vec![small("C1")],
        })
    })
    .await;
    assert_eq!(
        released,
        Vec::<String>::new(),
        "a dominated cell was released: two patients hold 240 of its 243 years \
         (scaled by 28,000,000), which the per-site rule and the unscaled question suppress"
    );
}

/// Attack (researcher): as above, with each dominant patient at a site of their own:
/// no site's squares overflow, but their sum across sites wraps modulo 2^64 in the
/// coordinator's running sum. Expected defence: the cell is suppressed.
#[tokio::test]
async fn dominance_holds_when_the_moments_wrap_across_sites() {
    let released = dominance_rounds(|id| {
        Data::Hand(match id {
            "site-a" => vec![dominant("A1")],
            "site-b" => vec![dominant("B1"), small("B2")],
            _ => vec![small("C1"), small("C2")],
        })
    })
    .await;
    assert_eq!(
        released,
        Vec::<String>::new(),
        "a dominated cell was released: two patients hold 240 of its 243 years"
    );
}

// ---------------------------------------------------------------------------------------
// 2. Hidden counts of rule 6 on network totals
// ---------------------------------------------------------------------------------------

/// Attack (researcher): `COUNT(*) - COUNT(x)` over a cell where one patient lacks `x`
/// (site-c's patient without a diagnosis date), with every site's own count below k so
/// that no site could check it alone. Expected defence: the count of patients lacking a
/// value applies to the network total (none or at least k), so the cell is suppressed;
/// the same question without that patient is released.
#[tokio::test]
async fn patients_lacking_a_value_are_counted_on_network_totals() {
    const SQL: &str = "SELECT COUNT(*) AS diagnoses, COUNT(d.age_at_diagnosis) AS dated FROM diagnosis d WHERE d.code = 'ORPHA:154'";
    let dated = |prefix: &str, n: usize| -> Vec<Person> {
        (0..n).map(|i| small(&format!("{prefix}{i}"))).collect()
    };
    let sites = Sites::new(&ABC, |id| {
        Data::Hand(match id {
            "site-a" => dated("A", 3),
            "site-b" => dated("B", 2),
            _ => {
                let mut c = dated("C", 2);
                c.push(person("C9", "1990", "female", &[("ORPHA:154", None)]));
                c
            }
        })
    })
    .await;
    let plan = plan_of(SQL).await;
    assert_eq!(plan.mode().name(), "secure");
    let totals = sites.round(&ABC, SQL, "q-lacking").await.expect("round");
    assert_eq!(released_rows(&plan, &totals).await, Vec::<String>::new());

    const WITHOUT: &str = "SELECT COUNT(*) AS diagnoses, COUNT(d.age_at_diagnosis) AS dated FROM diagnosis d WHERE d.code = 'ORPHA:154' AND d.age_at_diagnosis IS NOT NULL";
    let plan = plan_of(WITHOUT).await;
    let totals = sites
        .round(&ABC, WITHOUT, "q-lacking-none")
        .await
        .expect("round");
    assert_eq!(
        released_rows(&plan, &totals).await,
        vec!["7 | 7".to_string()]
    );
}

// ---------------------------------------------------------------------------------------
// 3. Once per question: the same question again
// ---------------------------------------------------------------------------------------

/// The network of secure_rounds.rs: women with ORPHA:154 are 3 + 2 + 2 + 2 over sites
/// a-d (no site reaches k), men with ORPHA:130 are 6 at site-a.
fn four_sites(id: &str) -> Data {
    let mut persons = Vec::new();
    match id {
        "site-a" => {
            persons.extend(people("A", 3, 1970, "female", "ORPHA:154"));
            persons.extend(people("AM", 6, 1960, "male", "ORPHA:130"));
        }
        "site-b" => persons.extend(people("B", 2, 1971, "female", "ORPHA:154")),
        "site-c" => persons.extend(people("C", 2, 1972, "female", "ORPHA:154")),
        _ => persons.extend(people("D", 2, 1973, "female", "ORPHA:154")),
    }
    Data::Hand(persons)
}

/// Attack (researcher, with the coordinator's view): the researcher submits the same
/// SQL twice, to {a, b, c, d} and then to {a, b, c} (a resubmission: a new question id,
/// hence a new "study" at the node, and approvals the stewards sign again for an
/// identical question). The difference of the two released tables is site-d's own
/// count of women with ORPHA:154 (2, below k); the difference of the two rounds' totals,
/// which a compromised coordinator holds, is site-d's whole plain vector. DESIGN.md: a
/// round "is never re-run with fewer sites, since the difference of two sums over
/// different site sets is one site's vector". Expected defence: a node that sent a masked
/// vector for a question's SQL takes part in no second round of that SQL, whatever the
/// question id.
#[tokio::test]
async fn the_same_question_resubmitted_gets_no_second_round_over_fewer_sites() {
    let abcd = ["site-a", "site-b", "site-c", "site-d"];
    let sites = Sites::new(&abcd, four_sites).await;
    let plan = plan_of(DISORDER_BY_SEX).await;
    let layout = plan.secure_layout().expect("layout");
    let all = sites
        .round(&abcd, DISORDER_BY_SEX, "q-first")
        .await
        .expect("first round");
    let first = released_rows(&plan, &all).await;
    assert_eq!(count_of(&first, "| female |"), Some(9), "{first:?}");

    let second = sites.round(&ABC, DISORDER_BY_SEX, "q-again").await;
    let Ok(fewer) = second else {
        return; // The defence: some participant refused the second round.
    };
    let rows = released_rows(&plan, &fewer).await;
    let d_plain = plain_count_vector(&sites.site("site-d").store, layout, PLAIN_COUNTS).await;
    let difference = wrapping_sub(&all, &fewer);
    panic!(
        "sites a, b and c sent a second masked vector for the same SQL: the researcher \
         reads site-d's own count of women with ORPHA:154 as {:?} - {:?} (k = {K}); the \
         coordinator's T1 - T2 is site-d's plain vector: {}",
        count_of(&first, "| female |"),
        count_of(&rows, "| female |"),
        difference == d_plain
    );
}

/// Attack (researcher): the same SQL once securely over {a, b, c} and once per site
/// under another question id. The per-site releases are each site's cells of at least
/// k; subtracted from the secure total they leave the suppressed site's small cell: here
/// site-c's one woman with ORPHA:154. Expected defence: a node that sent a masked vector
/// for a question's SQL does not release that SQL per site under another id (executed.rs:
/// "a question released one way is never released the other way").
#[tokio::test]
async fn a_question_sent_in_a_round_is_not_released_per_site_under_another_id() {
    let sites = Sites::new(&ABC, |id| {
        Data::Hand(match id {
            "site-a" => people("A", 6, 1970, "female", "ORPHA:154"),
            "site-b" => people("B", 5, 1971, "female", "ORPHA:154"),
            _ => people("C", 1, 1972, "female", "ORPHA:154"),
        })
    })
    .await;
    let plan = plan_of(DISORDER_BY_SEX).await;
    let totals = sites
        .round(&ABC, DISORDER_BY_SEX, "q-secure")
        .await
        .expect("round");
    let secure = count_of(&released_rows(&plan, &totals).await, "| female |");
    assert_eq!(secure, Some(12));
    let mut per_site = Vec::new();
    let mut refused = Vec::new();
    for id in ABC {
        let site = sites.site(id);
        match site
            .engine
            .execute(&site.request(DISORDER_BY_SEX, "q-per-site"))
            .await
        {
            Ok(released) => per_site.extend(released.batches),
            Err(error) => refused.push((id, error.rule_name())),
        }
    }
    let merged = canonical_rows(&plan.merge(per_site).await.expect("merge"));
    let released = count_of(&merged, "| female |");
    assert_eq!(
        refused.len(),
        ABC.len(),
        "the per-site run of the secure round's SQL was released: secure total {secure:?} \
         minus per-site {released:?} is site-c's own suppressed count; refused only at {refused:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 4. Rosters and participant lists
// ---------------------------------------------------------------------------------------

/// Attack (coordinator with one hospital): site-a's roster lists hospital C under two
/// ids (`site-c` and `site-c2`, one identity key: a hospital running two nodes, or a
/// copy-paste in the roster). The coordinator opens a round {a, c, c2}; hospital C signs
/// both statements, masks zero vectors for both ids, and with the coordinator unmasks
/// site-a's vector: "collusion with all but one participant" with a single other
/// hospital, while site-a asks for 3 participants. Expected defence: a roster (or a
/// round) where two sites share one identity key is refused.
#[tokio::test]
async fn one_hospital_under_two_roster_ids_does_not_make_up_the_minimum() {
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = |name: &str| {
        let path = dir.path().join(name);
        SiteIdentity::generate(&path).expect("identity");
        SiteIdentity::load(&SiteIdentity::key_path(&path)).expect("load")
    };
    let a_identity = Arc::new(identity("a"));
    let c_identity = identity("c");
    let roster = Roster::new([
        ("site-a".to_string(), a_identity.public_key()),
        ("site-c".to_string(), c_identity.public_key()),
        ("site-c2".to_string(), c_identity.public_key()),
    ]);
    let Ok(roster) = roster else {
        return; // The defence: the roster is refused.
    };
    let store = store_of(
        &dir.path().join("site-a"),
        &people("A", 3, 1970, "female", "ORPHA:154"),
        &[1; 32],
    );
    let steward = named_steward(dir.path(), "steward-a");
    let mut policy = NodePolicy::new("site-a", vec![steward.public_key()]);
    policy.secure = SecurePolicy {
        enabled: true,
        identity: Some(a_identity),
        roster,
        ..SecurePolicy::default()
    };
    let a = Site {
        id: "site-a".into(),
        store: store.clone(),
        steward,
        engine: NodeEngine::open(&store, policy).await.expect("engine"),
    };
    let ids = ["site-a", "site-c", "site-c2"];
    let begun = start("q-twice", "r-1", &ids);
    let Ok(own) = a.round_one(DISORDER_BY_SEX, &begun).await else {
        return; // The defence: round 1 refused.
    };
    // Hospital C, by hand, for both of its ids.
    let rng = ring::rand::SystemRandom::new();
    let mut keys = Vec::new();
    let mut statements = vec![own.clone()];
    for site in ["site-c", "site-c2"] {
        let (round_keys, public) = RoundKeys::new(site, &begun.participants, &rng).expect("keys");
        let statement =
            RoundStatement::sign(own.terms(), site, public, 5, 361_250, &c_identity).expect("sign");
        statements.push(statement);
        keys.push(round_keys);
    }
    let Ok(masked) = a.round_two("q-twice", "r-1", &statements).await else {
        return; // The defence: round 2 refused.
    };
    let zeros = vec![0u64; masked.len()];
    let mut vectors = vec![masked];
    for (round_keys, statement) in keys.into_iter().zip(&statements[1..]) {
        vectors.push(
            round_keys
                .masked_vector(statement, &statements, &zeros)
                .expect("mask"),
        );
    }
    let recovered = wrapping_sum(&vectors);
    let plan = plan_of(DISORDER_BY_SEX).await;
    let layout = plan.secure_layout().expect("layout");
    let plain = plain_count_vector(&store, layout, PLAIN_COUNTS).await;
    panic!(
        "site-a masked its vector in a round whose other participants are one hospital; \
         the coordinator and that hospital unmask it: recovered == plain: {}",
        recovered == plain
    );
}

/// Attack (coordinator): participant lists with site ids in another case, with white
/// space, repeated, or unsorted, hoping the node takes a variant of a peer (or of
/// itself) as a second participant. Expected defence: every variant is refused before
/// the node signs anything, and the question stays free for an honest round.
#[tokio::test]
async fn participant_id_variants_are_refused() {
    let sites = Sites::new(&ABC, four_sites).await;
    let a = sites.site("site-a");
    let cases: &[(&[&str], &str)] = &[
        (&["Site-B", "site-a", "site-c"], "secure-roster"),
        (&["site-a", "site-b", "site-c "], "secure-roster"),
        (&[" site-b", "site-a", "site-c"], "secure-roster"),
        (&["SITE-A", "site-b", "site-c"], "secure-participants"),
        (&["site-a", "site-a", "site-b"], "secure-statement"),
        (&["site-a", "site-a", "site-a"], "secure-statement"),
        (&["site-b", "site-a", "site-c"], "secure-statement"),
        (&["site-a", "site-b"], "secure-too-few-sites"),
    ];
    for (n, (participants, expected)) in cases.iter().enumerate() {
        let result = a
            .round_one(DISORDER_BY_SEX, &raw_start("q-variants", participants))
            .await;
        assert_eq!(rule(&result), *expected, "case {n}: {participants:?}");
    }
    // Nothing was claimed or recorded: the honest round still runs.
    sites
        .round(&ABC, DISORDER_BY_SEX, "q-variants")
        .await
        .expect("honest round after the refusals");
}

// ---------------------------------------------------------------------------------------
// 5. Round 2 with doctored statement lists
// ---------------------------------------------------------------------------------------

/// A coordinator's change to a round's relayed statements.
type Doctor = Box<dyn Fn(&[RoundStatement]) -> Vec<RoundStatement>>;

/// Attack (coordinator): round 2 lists carrying the node's own statement twice, in
/// place of a peer's, or a peer's statement twice; the node's own statement relabelled
/// as a peer's; an empty list. With the node's own key standing for a peer, the node
/// would mask with itself (masks that cancel within its own vector). Expected defence:
/// every list is refused and no vector leaves.
#[tokio::test]
async fn statement_lists_with_the_nodes_own_statement_doubled_are_refused() {
    let sites = Sites::new(&ABC, four_sites).await;
    let mut refusals = Vec::new();
    let lists: Vec<(&str, Doctor)> = vec![
        (
            "own twice",
            Box::new(|s: &[RoundStatement]| {
                vec![s[0].clone(), s[0].clone(), s[1].clone(), s[2].clone()]
            }),
        ),
        (
            "own in place of a peer",
            Box::new(|s: &[RoundStatement]| vec![s[0].clone(), s[0].clone(), s[2].clone()]),
        ),
        (
            "a peer twice",
            Box::new(|s: &[RoundStatement]| {
                vec![s[0].clone(), s[1].clone(), s[1].clone(), s[2].clone()]
            }),
        ),
        (
            "own relabelled as a peer",
            Box::new(|s: &[RoundStatement]| {
                let mut fake = s[0].clone();
                fake.site = "site-b".into();
                vec![s[0].clone(), fake, s[2].clone()]
            }),
        ),
        ("empty", Box::new(|_: &[RoundStatement]| Vec::new())),
        (
            "own only",
            Box::new(|s: &[RoundStatement]| vec![s[0].clone()]),
        ),
    ];
    for (n, (name, doctor)) in lists.iter().enumerate() {
        // Each list in a question of its own: the peers of the last one still hold theirs.
        let query_id = format!("q-doctored-{n}");
        let begun = start(&query_id, "r-1", &ABC);
        let statements = sites
            .round_one(&ABC, &disorder_by_sex_from(n), &begun)
            .await
            .expect("round 1");
        let result = sites
            .site("site-a")
            .round_two(&query_id, "r-1", &doctor(&statements))
            .await;
        assert!(result.is_err(), "{name}: site-a sent a masked vector");
        refusals.push((name.to_string(), rule(&result)));
    }
    assert!(
        refusals.iter().all(|(_, r)| r.starts_with("secure-")),
        "{refusals:?}"
    );
}

/// Attack (coordinator): replaying, in a round of question q-2, the peers' validly signed
/// statements of question q-1 (same sites, same SQL, same round id), so that the node
/// masks with keys whose other halves already served another round. Expected defence:
/// the statements name another question and are refused.
#[tokio::test]
async fn statements_replayed_from_another_question_are_refused() {
    let sites = Sites::new(&ABC, four_sites).await;
    let first = start("q-one", "r-1", &ABC);
    let old = sites
        .round_one(&ABC, DISORDER_BY_SEX, &first)
        .await
        .expect("round 1 of q-one");
    // Another question (the same one would be refused at round 1 while q-one is open).
    let second = start("q-two", "r-1", &ABC);
    let own = sites
        .site("site-a")
        .round_one(&disorder_by_sex_from(1), &second)
        .await
        .expect("round 1 of q-two");
    let replayed = vec![own, old[1].clone(), old[2].clone()];
    let result = sites
        .site("site-a")
        .round_two("q-two", "r-1", &replayed)
        .await;
    assert_eq!(rule(&result), "secure-mismatch", "{result:?}");
    // And q-one's round 2 with q-two's own statement in place of site-a's.
    let result = sites
        .site("site-b")
        .round_two(
            "q-one",
            "r-1",
            &[replayed[0].clone(), old[1].clone(), old[2].clone()],
        )
        .await;
    assert!(
        result.is_err(),
        "site-b masked with another question's statement"
    );
}

/// Attack (coordinator): one question id, two SQL texts: site-a is asked round 1 of
/// question X under query id q-1, sites b and c round 1 of question Y under the same id.
/// Expected defence: the statements carry different query hashes and domains; round 2
/// is refused.
#[tokio::test]
async fn one_question_id_with_two_sql_texts_is_refused() {
    const BY_SEX: &str =
        "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.sex";
    let sites = Sites::new(&ABC, four_sites).await;
    let begun = start("q-mixed", "r-1", &ABC);
    let a = sites
        .site("site-a")
        .round_one(DISORDER_BY_SEX, &begun)
        .await
        .expect("a");
    let others = sites
        .round_one(&["site-b", "site-c"], BY_SEX, &begun)
        .await
        .expect("b, c");
    let statements = vec![a, others[0].clone(), others[1].clone()];
    for id in ABC {
        let result = sites
            .site(id)
            .round_two("q-mixed", "r-1", &statements)
            .await;
        assert_eq!(rule(&result), "secure-mismatch", "{id}: {result:?}");
    }
}

// ---------------------------------------------------------------------------------------
// 6. Restarts and per-site work around a round
// ---------------------------------------------------------------------------------------

/// Attack (coordinator): round 1 at site-a, then the node restarts (a new engine on the
/// same store), then round 2 of the old round; then a new round 1 of the question; then,
/// after a completed round, round 1 and per-site work again on a third engine, under the
/// question's id and another. Expected defence: the old round's keys died with the
/// process (round 2 is unknown), a new round may start (no vector ever left), and once a
/// vector has left, no engine on that store gives another or a per-site release, whatever
/// the question id.
#[tokio::test]
async fn a_restart_between_the_rounds_gives_no_second_vector() {
    let sites = Sites::new(&ABC, four_sites).await;
    let a = sites.site("site-a");
    let q = "q-restart";
    let _ = a
        .round_one(DISORDER_BY_SEX, &start(q, "r-1", &ABC))
        .await
        .expect("round 1");
    let reopen = || async {
        NodeEngine::open(&a.store, a.engine.policy().clone())
            .await
            .expect("reopen")
    };
    let restarted = reopen().await;
    let stale = restarted.secure_masked(q, "r-1", Vec::new()).await;
    assert_eq!(rule(&stale), "secure-round-unknown", "{stale:?}");
    let own = restarted
        .secure_statement(&a.request(DISORDER_BY_SEX, q), &start(q, "r-2", &ABC))
        .await
        .expect("a new round 1 after a restart: no vector left the node");
    let mut statements = vec![own];
    statements.extend(
        sites
            .round_one(
                &["site-b", "site-c"],
                DISORDER_BY_SEX,
                &start(q, "r-2", &ABC),
            )
            .await
            .expect("b, c"),
    );
    restarted
        .secure_masked(
            q,
            "r-2",
            statements.iter().map(statement_to_proto).collect(),
        )
        .await
        .expect("the new round's vector");
    let again = reopen().await;
    let round = again
        .secure_statement(&a.request(DISORDER_BY_SEX, q), &start(q, "r-3", &ABC))
        .await;
    assert_eq!(rule(&round), "secure-round-repeated", "{round:?}");
    // Nor under another question id: the same SQL is the same question.
    let other = "q-restart-again";
    let round = again
        .secure_statement(
            &a.request(DISORDER_BY_SEX, other),
            &start(other, "r-1", &ABC),
        )
        .await;
    assert_eq!(rule(&round), "secure-round-repeated", "{round:?}");
    let per_site = again.execute(&a.request(DISORDER_BY_SEX, other)).await;
    assert_eq!(rule(&per_site), "secure-round-used", "{per_site:?}");
    let per_site = again.execute(&a.request(DISORDER_BY_SEX, q)).await;
    assert_eq!(rule(&per_site), "secure-round-used", "{per_site:?}");
}

// ---------------------------------------------------------------------------------------
// 7. The vector does not depend on which cells a site has
// ---------------------------------------------------------------------------------------

/// Attack (coordinator): compare statements and masked vectors of a site with data in
/// many cells, one in a single cell and one with no patient in the domain at all, hoping
/// that the length, the domain or the vector's shape tells which cells a site has.
/// Expected defence: every statement signs the same length and domain digest, every
/// masked vector has that length, and no slot of any vector equals its plain value.
#[tokio::test]
async fn the_vector_does_not_depend_on_which_cells_a_site_has() {
    let sites = Sites::new(&ABC, |id| {
        Data::Hand(match id {
            "site-a" => {
                let mut persons = people("A", 4, 1970, "female", "ORPHA:154");
                persons.extend(people("AM", 3, 1960, "male", "ORPHA:130"));
                persons.extend(people("AU", 2, 1980, "unknown", "ORPHA:154"));
                persons
            }
            "site-b" => people("B", 1, 1971, "female", "ORPHA:154"),
            // No ORPHA code of the shipped table: no patient in the domain.
            _ => people("C", 3, 1972, "female", "ICD10:Q87.4"),
        })
    })
    .await;
    let begun = start("q-shape", "r-1", &ABC);
    let statements = sites
        .round_one(&ABC, DISORDER_BY_SEX, &begun)
        .await
        .expect("round 1");
    let plan = plan_of(DISORDER_BY_SEX).await;
    let layout = plan.secure_layout().expect("layout");
    for statement in &statements {
        assert_eq!(statement.vector_len, layout.len() as u64);
        assert_eq!(statement.domain_digest, statements[0].domain_digest);
    }
    for id in ABC {
        let masked = sites
            .site(id)
            .round_two("q-shape", "r-1", &statements)
            .await
            .expect("round 2");
        let plain = plain_count_vector(&sites.site(id).store, layout, PLAIN_COUNTS).await;
        assert_eq!(masked.len(), layout.len(), "{id}");
        let exposed = masked.iter().zip(&plain).filter(|(m, p)| m == p).count();
        assert_eq!(exposed, 0, "{id}: {exposed} slots unmasked");
    }
}

// ---------------------------------------------------------------------------------------
// 8. Domain proofs against real data
// ---------------------------------------------------------------------------------------

/// The number of groups a round-1 audit entry says fell outside the domain.
fn outside_the_domain(entry: &AuditEntry) -> Option<u64> {
    let detail = entry.detail.as_deref()?;
    let (_, tail) = detail.rsplit_once(", ")?;
    tail.strip_suffix(" outside the domain")?.parse().ok()
}

/// Attack (researcher): GROUP BY keys whose public domain is proved through joins
/// (inner and outer), filters, subqueries, per-patient MIN/MAX, casts and integer
/// arithmetic (negation, `/` and `%` on negative values, differences of two bounded
/// columns), hoping for a proof that misses values in-range data can take (rows would
/// silently fall out of the cells). Round 1 at a node over a synthetic registry reports
/// in its audit log how many groups fell outside the domain. Expected defence: none, for
/// every question the planner calls secure; questions it cannot prove run per site.
#[tokio::test]
async fn domain_proofs_hold_on_real_data() {
    let sites = Sites::new(&ABC, |id| Data::Synthetic {
        patients: if id == "site-a" { 600 } else { 5 },
        seed: 11,
    })
    .await;
    let a = sites.site("site-a");
    let keys: &[(&str, &str, &str)] = &[
        ("p.birth_year % 7", "patient p", "p"),
        ("(p.birth_year - 1990) / 7", "patient p", "p"),
        ("(p.birth_year - 1990) % 7", "patient p", "p"),
        ("-p.birth_year", "patient p", "p"),
        ("CAST(p.birth_year AS SMALLINT)", "patient p", "p"),
        (
            "CAST(p.birth_year - 1880 AS TINYINT UNSIGNED)",
            "patient p",
            "p",
        ),
        ("p.birth_month", "patient p", "p"),
        ("p.birth_year * 12 + p.birth_month", "patient p", "p"),
        ("d.age_at_diagnosis - d.age_at_onset", "diagnosis d", "d"),
        ("d.age_at_onset / 10", "diagnosis d", "d"),
        ("d.onset", "diagnosis d", "d"),
        ("d.status", "diagnosis d", "d"),
        ("d.code_system", "diagnosis d", "d"),
        ("p.sex", "patient p JOIN diagnosis d ON d.pid = p.pid", "p"),
        ("p.vital_status", "patient p", "p"),
        ("p.undiagnosed", "patient p", "p"),
        ("p.contact_for_research", "patient p", "p"),
        ("g.zygosity", "genetic_finding g", "g"),
        ("g.causative", "genetic_finding g", "g"),
        ("f.excluded", "phenotype f", "f"),
        (
            "t.name",
            "diagnosis d LEFT JOIN orpha_term t ON t.orpha_code = d.code",
            "d",
        ),
        (
            "t.name",
            "orpha_term t RIGHT JOIN diagnosis d ON d.code = t.orpha_code",
            "d",
        ),
        (
            "d.code",
            "diagnosis d JOIN orpha_term t ON t.orpha_code = d.code",
            "d",
        ),
        (
            "c.ancestor",
            "diagnosis d JOIN orpha_closure c ON c.descendant = d.code",
            "d",
        ),
        (
            "c.depth",
            "diagnosis d JOIN orpha_closure c ON c.descendant = d.code",
            "d",
        ),
        (
            "t.disorder_type",
            "diagnosis d JOIN orpha_term t ON t.orpha_code = d.code",
            "d",
        ),
        (
            "d.code",
            "diagnosis d LEFT JOIN orpha_term t ON t.orpha_code = d.code",
            "d",
        ),
        (
            "x.first_age",
            "(SELECT d.pid, MIN(d.age_at_diagnosis) AS first_age FROM diagnosis d GROUP BY d.pid) x",
            "x",
        ),
        (
            "x.y / 10",
            "(SELECT p.pid, p.birth_year AS y FROM patient p WHERE p.birth_year >= 1950) x",
            "x",
        ),
        (
            "d.age_at_onset",
            "diagnosis d WHERE d.age_at_onset < 40 AND d.age_at_onset IS NOT NULL",
            "d",
        ),
        (
            "p.birth_year",
            "patient p WHERE p.birth_year BETWEEN 1950 AND 1990",
            "p",
        ),
        (
            "p.birth_year",
            "patient p JOIN diagnosis d ON d.pid = p.pid WHERE d.age_at_onset = p.birth_year - 1900",
            "p",
        ),
    ];
    let mut secure = 0;
    let mut per_site = Vec::new();
    for (n, (key, from, pid)) in keys.iter().enumerate() {
        // A WHERE clause goes after FROM, before GROUP BY.
        let sql = format!(
            "SELECT {key} AS k, COUNT(DISTINCT {pid}.pid) AS patients FROM {from} GROUP BY {key}"
        );
        let plan = Planner::new()
            .plan(&sql, &planning_state().expect("state"))
            .await;
        let Ok(plan) = plan else {
            per_site.push(format!("refused: {sql}"));
            continue;
        };
        if plan.mode().name() != "secure" {
            per_site.push(format!("per-site: {sql}"));
            continue;
        }
        let query_id = format!("q-domain-{n}");
        let result = a.round_one(&sql, &start(&query_id, "r-1", &ABC)).await;
        match result {
            Ok(_) => secure += 1,
            // The node derives no domain where the coordinator does (see
            // nodes_and_the_coordinator_derive_the_same_mode): no rows at risk.
            Err(ref e) if e.rule_name() == "secure-not-eligible" => {
                per_site.push(format!("node per-site, coordinator secure: {sql}"));
                continue;
            }
            Err(e) => panic!("{sql}: {e}"),
        }
        let entry = a.last_audit();
        assert_eq!(
            outside_the_domain(&entry),
            Some(0),
            "rows fell out of the proved domain of {sql}: {entry:?}"
        );
    }
    assert!(
        secure >= 20,
        "only {secure} secure; per site: {per_site:#?}"
    );
}

/// Attack (researcher, on availability and on what stewards are told): the coordinator
/// derives a question's mode and domain from its planning catalogue (in-memory tables,
/// `Utf8`), a node from its Parquet store (`Utf8View`). Expected: both derive the same
/// mode and the same domain (digest), since "both sides derive [it] from the plan"; a
/// question the coordinator runs (and shows the stewards) as secure must not be one every
/// node refuses as not eligible, failing its only round.
#[tokio::test]
async fn nodes_and_the_coordinator_derive_the_same_mode() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = synthetic_site_store(dir.path(), 50, 3, &[1; 32]);
    let ctx = ern_node::session::node_session(&store, 1 << 30)
        .await
        .expect("node session");
    let mut differ = Vec::new();
    for sql in [
        DISORDER_BY_SEX,
        "SELECT d.code AS k, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d JOIN orpha_term t ON t.orpha_code = d.code GROUP BY d.code",
        "SELECT p.sex, COUNT(*) AS n FROM patient p WHERE p.sex IN ('female', 'male') GROUP BY p.sex",
    ] {
        let node = Planner::new()
            .plan(sql, &ctx.state())
            .await
            .expect("node plan");
        let coordinator = plan_of(sql).await;
        let digest = |plan: &QueryPlan| plan.mode().domain().map(|d| d.digest());
        if digest(&node) != digest(&coordinator) {
            differ.push(format!(
                "{sql}: node {:?}, coordinator {:?}",
                node.mode().domain().map(|d| d.describe()),
                coordinator.mode().domain().map(|d| d.describe())
            ));
        }
    }
    assert!(differ.is_empty(), "{differ:#?}");
}

/// Attack (researcher, on correctness): a domain proved from the data model's declared
/// ranges (ages 0-150) assumes the data respects them, but ingest computes a prenatal
/// diagnosis (dated before the birth month) as age -1 and stores it. Under secure
/// aggregation those rows fall outside the domain and vanish without a word to the
/// researcher (only the node's audit log counts them), while the same question per site
/// releases them. Expected: ingest refuses (or clamps) an age outside the declared range,
/// or the node refuses the round rather than dropping rows silently. Defence: ingest
/// clamps computed ages into the declared 0-150 (data-model.md), so the five prenatal
/// diagnoses are age 0, inside the domain, and released.
#[tokio::test]
async fn data_outside_the_declared_ranges_is_not_dropped_silently() {
    const SQL: &str = "SELECT d.age_at_diagnosis AS age, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY d.age_at_diagnosis";
    let prenatal = |prefix: &str, n: usize| -> Vec<Person> {
        (0..n)
            .map(|i| {
                person(
                    &format!("{prefix}{i}"),
                    "2020-03",
                    "female",
                    &[("ORPHA:154", Some("2019-12-01"))],
                )
            })
            .collect()
    };
    let sites = Sites::new(&ABC, |id| {
        Data::Hand(match id {
            "site-a" => prenatal("A", 3),
            "site-b" => prenatal("B", 2),
            _ => vec![small("C1")],
        })
    })
    .await;
    let plan = plan_of(SQL).await;
    assert_eq!(plan.mode().name(), "secure", "{:?}", plan.mode());
    let totals = sites.round(&ABC, SQL, "q-prenatal").await.expect("round");
    let rows = released_rows(&plan, &totals).await;
    let out: Vec<u64> = audit::read_entries(&sites.site("site-a").store.join(AUDIT_FILE))
        .expect("audit log")
        .iter()
        .filter_map(outside_the_domain)
        .collect();
    assert!(
        rows.iter().any(|row| row == "0 | 5"),
        "5 patients diagnosed before birth are missing from the network answer {rows:?}; \
         site-a's audit log says {out:?} group(s) fell outside the domain"
    );
    assert!(out.iter().all(|&n| n == 0), "{out:?}");
}
