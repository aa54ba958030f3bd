//! Secure aggregation at the node, driven by hand as an honest or a hostile coordinator
//! would drive it: real engines over real Parquet stores (hand-made, so every number is
//! known), real steward approvals, real site identity keys and rosters (DESIGN.md,
//! "Secure aggregation: k applies to the network total").
//!
//! Round 1 is `NodeEngine::secure_statement`, round 2 `NodeEngine::secure_masked` with the
//! statements as the wire carries them. Every refusal is checked by its stable rule name,
//! in the result and in the node's own audit log, and the node's record of executions is
//! read back from its store directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ern_node::approval;
use ern_node::audit::{self, AUDIT_FILE, AuditEntry, Outcome};
use ern_node::engine::{ExecuteError, NodeEngine, NodePolicy, QueryRequest, SecurePolicy};
use ern_node::executed::{self, ExecutedApprovals, QueryUse};
use ern_node::round::{RoundStart, statement_to_proto};
use ern_node::secure::{Roster, RoundKeys, RoundStatement, SiteIdentity, SitePublicKey};
use ern_node::steward_key::StewardSigningKey;
use ern_queries::catalog::planning_state;
use ern_queries::{Planner, QueryPlan};
use ern_test_support::fixture::{collect_sql, plain_count_vector, pooled_plain_context};
use ern_test_support::network::{Patient, store_of};
use ern_test_support::rows::canonical_rows;
use ern_test_support::steward::named_steward;

/// Patients per disorder (Orphanet name, from the shipped table: a public domain) and sex.
const DISORDER_BY_SEX: &str = "SELECT t.name AS disorder, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

/// [`DISORDER_BY_SEX`] over the patients born from 1880 + `n` on (every patient of the
/// tests, so the same counts): another question (another plan fingerprint) for each `n`.
/// A node takes part in one round per question, whatever its id, so a test that means
/// several questions on the same engines asks several of these.
fn disorder_by_sex_from(n: usize) -> String {
    DISORDER_BY_SEX.replace(
        " GROUP BY",
        &format!(" WHERE p.birth_year >= {} GROUP BY", 1880 + n),
    )
}

/// The same counts, over every group, for plain DataFusion.
const PLAIN_COUNTS: &str = "SELECT t.name, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex";

/// The network's answer with k = 5 applied by hand to the pooled stores.
const POOLED_AT_K: &str = "SELECT t.name, p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p JOIN diagnosis d ON d.pid = p.pid JOIN orpha_term t ON t.orpha_code = d.code GROUP BY t.name, p.sex HAVING COUNT(DISTINCT p.pid) >= 5";

/// Patients per diagnosis code without a join to the Orphanet table: the code is free
/// text, so the question has no public domain and runs per site.
const NOT_ELIGIBLE: &str =
    "SELECT d.code, COUNT(DISTINCT d.pid) AS patients FROM diagnosis d GROUP BY d.code";

/// Patients per sex: eligible (sex has a value set), a second question for the same sites.
const BY_SEX: &str =
    "SELECT p.sex, COUNT(DISTINCT p.pid) AS patients FROM patient p GROUP BY p.sex";

/// The dominance limit a node with the default (2, 85 %) rule signs: 0.85² / 2.
const MAX_CONCENTRATION: f64 = 0.36125;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The hand-made registries. Totals over site-a, site-b and site-c:
/// - ORPHA:154 (familial isolated DCM), female: 3 + 2 + 2 = 7 (no site reaches k = 5);
/// - ORPHA:154, male: 0 + 1 + 2 = 3 (stays hidden);
/// - ORPHA:130, male: 6 at site-a alone;
/// - ORPHA:130, female 1, unknown 1, undetermined 1 (hidden).
///
/// Site-d holds two women with ORPHA:154 (a fourth site for rounds with other sets).
fn patients_of(site: &str) -> Vec<Patient> {
    let mut patients = Vec::new();
    let mut add = |id: &str, year: u32, sex: &str, codes: &[&str]| {
        patients.push(Patient {
            local_id: id.to_string(),
            birth_date: year.to_string(),
            sex: sex.to_string(),
            codes: codes.iter().map(|c| c.to_string()).collect(),
        });
    };
    match site {
        "site-a" => {
            add("A1", 1970, "female", &["ORPHA:154"]);
            add("A2", 1982, "female", &["ORPHA:154"]);
            for n in 0..6 {
                add(&format!("AM{n}"), 1960 + n, "male", &["ORPHA:130"]);
            }
            // Two diagnoses: counted once in each disorder's cell.
            add("A9", 1990, "female", &["ORPHA:130", "ORPHA:154"]);
        }
        "site-b" => {
            add("B1", 1971, "female", &["ORPHA:154"]);
            add("B2", 1983, "female", &["ORPHA:154"]);
            add("B3", 1955, "male", &["ORPHA:154"]);
            add("B4", 1999, "unknown", &["ORPHA:130"]);
        }
        "site-c" => {
            add("C1", 1972, "female", &["ORPHA:154"]);
            add("C2", 1984, "female", &["ORPHA:154"]);
            add("C3", 1956, "male", &["ORPHA:154"]);
            add("C4", 1957, "male", &["ORPHA:154"]);
            add("C5", 2001, "undetermined", &["ORPHA:130"]);
        }
        _ => {
            add("D1", 1973, "female", &["ORPHA:154"]);
            add("D2", 1985, "female", &["ORPHA:154"]);
        }
    }
    patients
}

/// One site: its store, steward, identity key and engine.
struct Site {
    id: String,
    store: PathBuf,
    steward: StewardSigningKey,
    identity: Arc<SiteIdentity>,
    engine: NodeEngine,
}

/// A few sites that all list each other in their rosters.
struct Sites {
    _dir: tempfile::TempDir,
    sites: Vec<Site>,
}

impl Sites {
    /// `ids` with their stores, each node's policy with secure aggregation on and every
    /// site of `ids` in its roster, then changed by `configure`.
    async fn new(ids: &[&str], configure: impl Fn(&str, &mut NodePolicy)) -> Sites {
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
            let store = store_of(
                &dir.path().join(id),
                &patients_of(id),
                &[index as u8 + 1; 32],
            );
            let steward = named_steward(dir.path(), &format!("steward-{id}"));
            let mut policy = NodePolicy::new(id, vec![steward.public_key()]);
            policy.secure = SecurePolicy {
                enabled: true,
                identity: Some(Arc::clone(&identity)),
                roster: roster.clone(),
                ..SecurePolicy::default()
            };
            configure(id, &mut policy);
            let engine = NodeEngine::open(&store, policy).await.expect("engine");
            sites.push(Site {
                id: id.to_string(),
                store,
                steward,
                identity,
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

    /// Round 1 at every site of `ids` for `sql` under question (and study) `query_id`;
    /// the statements in the order of `ids`.
    async fn round_one(&self, ids: &[&str], sql: &str, start: &RoundStart) -> Vec<RoundStatement> {
        let mut statements = Vec::new();
        for id in ids {
            let site = self.site(id);
            let statement = site
                .engine
                .secure_statement(&site.request(sql, &start.query_id), start)
                .await
                .unwrap_or_else(|e| panic!("round 1 at {id}: {e}"));
            statements.push(statement);
        }
        statements
    }

    /// An honest round over `ids` (sorted): round 1 everywhere, every statement relayed
    /// to everyone, round 2 everywhere; the masked vectors in the order of `ids`.
    async fn honest_round(&self, ids: &[&str], sql: &str, query_id: &str) -> Vec<Vec<u64>> {
        let start = start(query_id, "r-1", ids);
        let statements = self.round_one(ids, sql, &start).await;
        let mut masked = Vec::new();
        for id in ids {
            let vector = self
                .site(id)
                .round_two(query_id, "r-1", &statements)
                .await
                .unwrap_or_else(|e| panic!("round 2 at {id}: {e}"));
            masked.push(vector);
        }
        masked
    }
}

impl Site {
    /// A request for `sql` in study `study` (as the link makes it, the study is the
    /// question's id), approved by this site's steward.
    fn request(&self, sql: &str, study: &str) -> QueryRequest {
        self.request_until(sql, study, now() + 600)
    }

    /// [`Site::request`] expiring at `expires`. Signatures are deterministic: two
    /// requests for one question made within the same second are one approval, so a test
    /// that means another approval of it asks for another expiry.
    fn request_until(&self, sql: &str, study: &str, expires: u64) -> QueryRequest {
        let approval = approval::sign(&self.steward, sql, &self.id, study, expires).expect("sign");
        QueryRequest {
            sql: sql.to_string(),
            study_id: study.to_string(),
            approval,
        }
    }

    /// Round 1 of `sql` for `start`.
    async fn round_one(
        &self,
        sql: &str,
        start: &RoundStart,
    ) -> Result<RoundStatement, ExecuteError> {
        self.engine
            .secure_statement(&self.request(sql, &start.query_id), start)
            .await
    }

    /// Round 2 with `statements` relayed as the wire carries them.
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

    /// The node's audit log.
    /// The node's audit entries for requests (not those recording its store).
    fn audit(&self) -> Vec<AuditEntry> {
        audit::read_entries(&self.store.join(AUDIT_FILE))
            .expect("audit log")
            .into_iter()
            .filter(|entry| entry.outcome != Outcome::Store)
            .collect()
    }

    /// The last entry of the node's audit log.
    fn last_audit(&self) -> AuditEntry {
        self.audit().pop().expect("an audit entry")
    }

    /// How the question text `sql` was released, as the node's record of executions says
    /// when opened afresh from the store directory.
    async fn recorded_use(&self, sql: &str) -> Option<QueryUse> {
        let record = ExecutedApprovals::open(&self.store).expect("record of executions");
        let key = self
            .engine
            .question_key(sql)
            .await
            .expect("a valid question");
        record.query_use(&key)
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

/// "ok" or the stable name of the refusal.
fn rule<T>(result: &Result<T, ExecuteError>) -> String {
    match result {
        Ok(_) => "ok".to_string(),
        Err(error) => error.rule_name(),
    }
}

/// Asserts that the node's last audit entry is the refusal by `expected`.
fn assert_audited_refusal(site: &Site, expected: &str) {
    let entry = site.last_audit();
    assert_eq!(entry.outcome, Outcome::Refused, "{entry:?}");
    assert_eq!(entry.rule.as_deref(), Some(expected), "{entry:?}");
}

/// The question's plan as every party derives it.
async fn plan_of(sql: &str) -> QueryPlan {
    Planner::new()
        .plan(sql, &planning_state().expect("planning state"))
        .await
        .expect("a valid question")
}

fn wrapping_sum(vectors: &[Vec<u64>]) -> Vec<u64> {
    let mut total = vec![0u64; vectors[0].len()];
    for vector in vectors {
        assert_eq!(
            vector.len(),
            total.len(),
            "vectors of one round have one length"
        );
        for (t, v) in total.iter_mut().zip(vector) {
            *t = t.wrapping_add(*v);
        }
    }
    total
}

const ABC: [&str; 3] = ["site-a", "site-b", "site-c"];

// ---------------------------------------------------------------------------------------
// 1. An honest round
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_honest_round_sums_to_the_plain_vectors_and_releases_the_pooled_counts() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let plan = plan_of(DISORDER_BY_SEX).await;
    assert_eq!(plan.mode().name(), "secure");
    let layout = plan.secure_layout().expect("layout");

    let masked = sites.honest_round(&ABC, DISORDER_BY_SEX, "q-honest").await;
    let mut plain = Vec::new();
    for id in ABC {
        plain.push(plain_count_vector(&sites.site(id).store, layout, PLAIN_COUNTS).await);
    }
    for ((id, masked), plain) in ABC.iter().zip(&masked).zip(&plain) {
        assert_eq!(
            masked.len(),
            layout.len(),
            "{id}: the vector covers the domain"
        );
        // Every slot is masked: a slot equal to its plain value has probability 2^-64.
        let exposed = masked.iter().zip(plain).filter(|(m, p)| m == p).count();
        assert_eq!(exposed, 0, "{id}: {exposed} slots left unmasked");
    }
    assert!(plain.iter().all(|v| v.iter().any(|x| *x != 0)));
    // The masks cancel: the network total is the sum of the plain vectors.
    let totals = wrapping_sum(&masked);
    assert_eq!(totals, wrapping_sum(&plain));
    // No proper subset sums to anything plain.
    for skip in 0..3 {
        let some: Vec<Vec<u64>> = masked
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, v)| v.clone())
            .collect();
        let partial_plain: Vec<Vec<u64>> = plain
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, v)| v.clone())
            .collect();
        assert_ne!(wrapping_sum(&some), wrapping_sum(&partial_plain));
    }

    // k on the network totals: 7 women with DCM (no site has 5) and site-a's 6 men with
    // ORPHA:130; nothing else.
    let release = layout
        .release(&totals, 5, MAX_CONCENTRATION)
        .expect("release");
    let stores: Vec<&Path> = sites.sites.iter().map(|s| s.store.as_path()).collect();
    let pooled = collect_sql(&pooled_plain_context(&stores).await, POOLED_AT_K).await;
    let released = canonical_rows(std::slice::from_ref(&release.batch));
    assert_eq!(released, canonical_rows(&pooled));
    assert_eq!(released.len(), 2, "{released:?}");
    assert!(
        released.iter().any(|r| r.ends_with("| female | 7")),
        "{released:?}"
    );
    assert!(
        released.iter().any(|r| r.ends_with("| male | 6")),
        "{released:?}"
    );
    assert_eq!(release.cells_released, 2);
    // Hidden: DCM men (3), ORPHA:130 women, unknown and undetermined (1 each).
    assert_eq!(release.cells_suppressed, 4);

    // Each node audited both rounds as accepted.
    for id in ABC {
        let entries = sites.site(id).audit();
        assert_eq!(entries.len(), 2, "{id}: {entries:?}");
        assert!(entries.iter().all(|e| e.outcome == Outcome::Accepted));
        let detail = entries[1].detail.clone().unwrap_or_default();
        assert!(detail.contains("masked vector"), "{id}: {detail}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. Participant lists that differ
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn nodes_shown_different_participant_lists_refuse_round_two() {
    let ids = ["site-a", "site-b", "site-c", "site-d"];
    let sites = Sites::new(&ids, |_, _| {}).await;
    let q = "q-split";
    // The coordinator tells site-a, site-b and site-c the round is {a, b, c}, and site-d
    // that it is {a, b, d}: hoping site-a's vector lands in two sums.
    let abc = start(q, "r-1", &["site-a", "site-b", "site-c"]);
    let abd = start(q, "r-1", &["site-a", "site-b", "site-d"]);
    let a = sites
        .site("site-a")
        .round_one(DISORDER_BY_SEX, &abc)
        .await
        .expect("a");
    let b = sites
        .site("site-b")
        .round_one(DISORDER_BY_SEX, &abc)
        .await
        .expect("b");
    let c = sites
        .site("site-c")
        .round_one(DISORDER_BY_SEX, &abc)
        .await
        .expect("c");
    let d = sites
        .site("site-d")
        .round_one(DISORDER_BY_SEX, &abd)
        .await
        .expect("d");

    // Site-a is relayed site-d's statement in place of site-c's.
    let to_a = [a.clone(), b.clone(), d.clone()];
    let result = sites.site("site-a").round_two(q, "r-1", &to_a).await;
    assert_eq!(rule(&result), "secure-participants", "{result:?}");
    assert_audited_refusal(sites.site("site-a"), "secure-participants");
    // Site-d sees statements signed for another list.
    let to_d = [a.clone(), b.clone(), d.clone()];
    let result = sites.site("site-d").round_two(q, "r-1", &to_d).await;
    assert!(
        matches!(
            rule(&result).as_str(),
            "secure-participants" | "secure-mismatch"
        ),
        "{result:?}"
    );
    assert_audited_refusal(sites.site("site-d"), &rule(&result));
    // Site-b is relayed all four.
    let all = [a.clone(), b.clone(), c.clone(), d.clone()];
    let result = sites.site("site-b").round_two(q, "r-1", &all).await;
    assert_eq!(rule(&result), "secure-participants", "{result:?}");
    assert_audited_refusal(sites.site("site-b"), "secure-participants");

    for id in ["site-a", "site-b", "site-d"] {
        assert_eq!(
            sites.site(id).recorded_use(DISORDER_BY_SEX).await,
            None,
            "{id}"
        );
        // The refused round is over: its keys are gone, a second try finds nothing.
        let again = sites.site(id).round_two(q, "r-1", &all).await;
        assert_eq!(rule(&again), "secure-round-unknown", "{id}: {again:?}");
    }
    // Site-c, shown the honest three, masks.
    let honest = [a, b, c];
    let result = sites.site("site-c").round_two(q, "r-1", &honest).await;
    assert_eq!(rule(&result), "ok", "{result:?}");
}

// ---------------------------------------------------------------------------------------
// 3. Once per question
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_second_round_one_while_the_first_is_pending_is_refused() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let a = sites.site("site-a");
    let q = "q-pending";
    let own = a
        .round_one(DISORDER_BY_SEX, &start(q, "r-1", &ABC))
        .await
        .expect("first round 1");
    let second = a.round_one(DISORDER_BY_SEX, &start(q, "r-2", &ABC)).await;
    assert_eq!(rule(&second), "secure-round-repeated", "{second:?}");
    assert_audited_refusal(a, "secure-round-repeated");
    // The same round id again does not replace the pending round's keys either.
    let same = a.round_one(DISORDER_BY_SEX, &start(q, "r-1", &ABC)).await;
    assert_eq!(rule(&same), "secure-round-repeated", "{same:?}");
    // The first round still completes, with the keys of its first statement.
    let mut statements = vec![own];
    statements.extend(
        sites
            .round_one(
                &["site-b", "site-c"],
                DISORDER_BY_SEX,
                &start(q, "r-1", &ABC),
            )
            .await,
    );
    let masked = a.round_two(q, "r-1", &statements).await;
    assert_eq!(rule(&masked), "ok", "{masked:?}");
}

#[tokio::test]
async fn a_completed_round_uses_the_question_up() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let q = "q-used";
    let a = sites.site("site-a");
    // Site-a's approval, kept to be delivered again.
    let approved = a.request(DISORDER_BY_SEX, q);
    let begun = start(q, "r-1", &ABC);
    let mut statements = vec![
        a.engine
            .secure_statement(&approved, &begun)
            .await
            .expect("a's statement"),
    ];
    statements.extend(
        sites
            .round_one(&["site-b", "site-c"], DISORDER_BY_SEX, &begun)
            .await,
    );
    for id in ABC {
        let masked = sites.site(id).round_two(q, "r-1", &statements).await;
        assert_eq!(rule(&masked), "ok", "{id}: {masked:?}");
    }
    // The same approval as per-site work: refused.
    let per_site = a.engine.execute(&approved).await;
    assert_eq!(rule(&per_site), "secure-round-used", "{per_site:?}");
    assert_audited_refusal(a, "secure-round-used");
    // The same approval for a second round: refused.
    let again_approved = a
        .engine
        .secure_statement(&approved, &start(q, "r-2", &ABC))
        .await;
    assert_eq!(
        rule(&again_approved),
        "secure-round-repeated",
        "{again_approved:?}"
    );
    let again = a.round_one(DISORDER_BY_SEX, &start(q, "r-2", &ABC)).await;
    assert_eq!(rule(&again), "secure-round-repeated", "{again:?}");
    assert_audited_refusal(a, "secure-round-repeated");
    // The same round id again, too.
    let same = a.round_one(DISORDER_BY_SEX, &start(q, "r-1", &ABC)).await;
    assert_eq!(rule(&same), "secure-round-repeated", "{same:?}");
    // Round 2 of the completed round again: the keys are spent.
    let replay = a.round_two(q, "r-1", &[]).await;
    assert_eq!(rule(&replay), "secure-round-unknown", "{replay:?}");
    // And the question is not released per site either, with a fresh approval of it.
    let fresh = a.request_until(DISORDER_BY_SEX, q, now() + 1200);
    assert_ne!(fresh.approval, approved.approval, "another approval");
    let per_site = a.engine.execute(&fresh).await;
    assert_eq!(rule(&per_site), "secure-round-used", "{per_site:?}");
    assert_audited_refusal(a, "secure-round-used");
    // A fresh engine on the same store remembers it.
    let mut policy = a.engine.policy().clone();
    policy.secure.enabled = true;
    let reopened = NodeEngine::open(&a.store, policy).await.expect("reopen");
    let request = a.request(DISORDER_BY_SEX, q);
    assert_eq!(rule(&reopened.execute(&request).await), "secure-round-used");
    assert_eq!(
        rule(
            &reopened
                .secure_statement(&request, &start(q, "r-9", &ABC))
                .await
        ),
        "secure-round-repeated"
    );
}

#[tokio::test]
async fn a_question_released_per_site_gets_no_round() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let a = sites.site("site-a");
    let q = "q-per-site-first";
    a.engine
        .execute(&a.request(DISORDER_BY_SEX, q))
        .await
        .expect("per-site release");
    assert_eq!(
        a.recorded_use(DISORDER_BY_SEX).await,
        Some(QueryUse::PerSite)
    );
    let round = a.round_one(DISORDER_BY_SEX, &start(q, "r-1", &ABC)).await;
    assert_eq!(rule(&round), "secure-round-repeated", "{round:?}");
    assert_audited_refusal(a, "secure-round-repeated");
    // The other sites' round cannot complete without site-a.
    let b = sites
        .site("site-b")
        .round_one(DISORDER_BY_SEX, &start(q, "r-1", &ABC))
        .await
        .expect("b");
    let result = sites.site("site-b").round_two(q, "r-1", &[b]).await;
    assert_eq!(rule(&result), "secure-participants", "{result:?}");
}

/// A researcher resubmits a question's SQL under a new question id (over fewer sites, or
/// per site, to difference one site out): for a node the question is what its sites
/// compute (`QueryPlan::fingerprint`), not its id. After a completed round of SQL S as
/// q-1, S as q-2 gets no round 1 (`secure-round-repeated`) and no per-site release with
/// a fresh approval (`secure-round-used`), nor does S with only white space, a comment or
/// an output name changed; S with another filter is another question.
#[tokio::test]
async fn the_same_sql_under_another_question_id_is_the_same_question() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let masked = sites.honest_round(&ABC, DISORDER_BY_SEX, "q-1").await;
    let a = sites.site("site-a");
    let key = a.engine.question_key(DISORDER_BY_SEX).await.expect("key");

    for id in ABC {
        let site = sites.site(id);
        let round = site
            .round_one(DISORDER_BY_SEX, &start("q-2", "r-1", &ABC))
            .await;
        assert_eq!(rule(&round), "secure-round-repeated", "{id}: {round:?}");
        assert_audited_refusal(site, "secure-round-repeated");
    }
    let per_site = a.engine.execute(&a.request(DISORDER_BY_SEX, "q-2")).await;
    assert_eq!(rule(&per_site), "secure-round-used", "{per_site:?}");
    assert_audited_refusal(a, "secure-round-used");

    let variants = [
        (
            "white space",
            DISORDER_BY_SEX
                .replace(" FROM ", "\n    FROM   ")
                .replace(" JOIN ", "\n\t JOIN "),
        ),
        (
            "a comment",
            format!(
                "-- patients per disorder and sex\n{}",
                DISORDER_BY_SEX.replace(" GROUP BY", " /* every group */ GROUP BY")
            ),
        ),
        (
            "output names",
            DISORDER_BY_SEX
                .replace("AS disorder", "AS orphanet_disorder")
                .replace("AS patients", "AS n"),
        ),
    ];
    for (n, (change, sql)) in variants.iter().enumerate() {
        assert_ne!(sql, DISORDER_BY_SEX, "{change}");
        assert_eq!(
            a.engine.question_key(sql).await.expect("key"),
            key,
            "{change}: {sql}"
        );
        let q = format!("q-variant-{n}");
        let round = a.round_one(sql, &start(&q, "r-1", &ABC)).await;
        assert_eq!(rule(&round), "secure-round-repeated", "{change}: {round:?}");
        assert_audited_refusal(a, "secure-round-repeated");
        let per_site = a.engine.execute(&a.request(sql, &q)).await;
        assert_eq!(
            rule(&per_site),
            "secure-round-used",
            "{change}: {per_site:?}"
        );
        assert_audited_refusal(a, "secure-round-used");
    }
    assert_eq!(
        a.recorded_use(DISORDER_BY_SEX).await,
        Some(QueryUse::Secure {
            round: "r-1".into()
        })
    );

    // Another filter computes something else: another question, with a round of its own.
    let filtered = disorder_by_sex_from(0);
    assert_ne!(
        a.engine.question_key(&filtered).await.expect("key"),
        key,
        "{filtered}"
    );
    assert_eq!(a.recorded_use(&filtered).await, None);
    let other = sites.honest_round(&ABC, &filtered, "q-filtered").await;
    // Every patient of the sites is born after 1880: the same totals (only noise stops
    // such differencing in general; the node only stops the same question twice).
    assert_eq!(wrapping_sum(&other), wrapping_sum(&masked));
    assert_eq!(
        a.recorded_use(&filtered).await,
        Some(QueryUse::Secure {
            round: "r-1".into()
        })
    );
}

/// A hostile coordinator opens a round, then sends the same approved question as
/// ordinary per-site work, then completes the round: the node must not release the
/// question both ways (executed.rs: "a question released one way is never released the
/// other way").
#[tokio::test]
async fn a_per_site_release_while_a_round_is_pending_does_not_also_send_a_vector() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let q = "q-both-ways";
    let begun = start(q, "r-1", &ABC);
    let statements = sites.round_one(&ABC, DISORDER_BY_SEX, &begun).await;
    let a = sites.site("site-a");
    let per_site = a.engine.execute(&a.request(DISORDER_BY_SEX, q)).await;
    let masked = a.round_two(q, "r-1", &statements).await;
    assert!(
        per_site.is_err() || masked.is_err(),
        "site-a released the question per site ({} groups) and sent its masked vector too",
        per_site.as_ref().map_or(0, |r| r.groups_released)
    );
}

/// A hostile coordinator sends round 2 of a question's round and, while the node handles
/// it, round 1 of another round of the same question with other peers (the link runs
/// every message as its own task), under the question's id or another (the same SQL is
/// the same question): the node must not send masked vectors of one question in two
/// rounds (DESIGN.md: "A node sends a masked vector for a query at most once, ever").
///
/// Round 2 runs on a worker thread while this thread asks for round 1 again and again,
/// under either id, until round 2 is done: a node that checks and records atomically
/// refuses every ask (`secure-round-repeated`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_one_racing_round_two_does_not_give_a_second_vector() {
    let ids = ["site-a", "site-b", "site-c", "site-d", "site-e"];
    let sites = Arc::new(Sites::new(&ids, |_, _| {}).await);
    let first_peers = ["site-a", "site-b", "site-c"];
    let second_peers = ["site-a", "site-d", "site-e"];
    for attempt in 0..5 {
        // Each attempt a question of its own: every site gave its one vector of the last.
        let sql = disorder_by_sex_from(attempt);
        let q = format!("q-race-{attempt}");
        let first = start(&q, "r-1", &first_peers);
        let statements = sites.round_one(&first_peers, &sql, &first).await;
        let a = sites.site("site-a");
        // The second round under the question's own id, and under another.
        let seconds = [
            start(&q, "r-2", &second_peers),
            start(&format!("{q}-again"), "r-1", &second_peers),
        ];
        let requests = seconds.each_ref().map(|s| a.request(&sql, &s.query_id));
        let round_two = tokio::spawn({
            let (sites, q) = (Arc::clone(&sites), q.clone());
            async move { sites.site("site-a").round_two(&q, "r-1", &statements).await }
        });
        let mut second_statement = None;
        let mut refusals = Vec::new();
        let mut asks = 0;
        while !round_two.is_finished() {
            let which = asks % seconds.len();
            asks += 1;
            match a
                .engine
                .secure_statement(&requests[which], &seconds[which])
                .await
            {
                Ok(statement) => {
                    second_statement = Some((statement, &seconds[which]));
                    break;
                }
                Err(refusal) => refusals.push(refusal.rule_name()),
            }
        }
        let masked = round_two.await.expect("round 2 task");
        assert_eq!(rule(&masked), "ok", "attempt {attempt}: {masked:?}");
        let mut vectors = usize::from(masked.is_ok());
        let signed_again = second_statement.is_some();
        if let Some((own, second)) = second_statement {
            let mut relayed = vec![own];
            relayed.extend(sites.round_one(&["site-d", "site-e"], &sql, second).await);
            let again = a
                .round_two(&second.query_id, &second.round_id, &relayed)
                .await;
            vectors += usize::from(again.is_ok());
        }
        assert!(
            vectors <= 1,
            "attempt {attempt} (round 1 asked {asks} times): site-a sent masked vectors of question {q} in two rounds, {{a, b, c}} and {{a, d, e}}"
        );
        assert!(
            !signed_again,
            "attempt {attempt} (round 1 asked {asks} times): site-a signed round 1 of a question with a round pending"
        );
        assert!(
            refusals.iter().all(|r| r == "secure-round-repeated"),
            "attempt {attempt}: {refusals:?}"
        );
        // Once round 2 is done, neither id gets a round of the question again.
        for (request, second) in requests.iter().zip(&seconds) {
            let after = a.engine.secure_statement(request, second).await;
            assert_eq!(rule(&after), "secure-round-repeated", "{after:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// 4. The node's own policy
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_nodes_policy_decides_whether_it_takes_part() {
    let ids = ["site-a", "site-b", "site-c", "site-d"];
    let sites = Sites::new(&ids, |id, policy| match id {
        // Site-d's policy is off.
        "site-d" => policy.secure.enabled = false,
        // Site-c asks for four participants.
        "site-c" => policy.secure.min_sites = 4,
        // Site-b's roster lacks site-d.
        "site-b" => {
            let without_d: Vec<(String, SitePublicKey)> = policy
                .secure
                .roster
                .iter()
                .filter(|(peer, _)| *peer != "site-d")
                .map(|(peer, key)| (peer.to_string(), key.clone()))
                .collect();
            policy.secure.roster = Roster::new(without_d).expect("roster");
        }
        _ => {}
    })
    .await;
    let cases: &[(&str, &str, &[&str], &str)] = &[
        // (site, question, participants, rule)
        (
            "site-a",
            DISORDER_BY_SEX,
            &["site-a", "site-b"],
            "secure-too-few-sites",
        ),
        ("site-c", DISORDER_BY_SEX, &ABC, "secure-too-few-sites"),
        (
            "site-b",
            DISORDER_BY_SEX,
            &["site-a", "site-b", "site-d"],
            "secure-roster",
        ),
        (
            "site-d",
            DISORDER_BY_SEX,
            &["site-a", "site-b", "site-d"],
            "secure-aggregation-off",
        ),
        ("site-a", NOT_ELIGIBLE, &ABC, "secure-not-eligible"),
        (
            "site-a",
            DISORDER_BY_SEX,
            &["site-b", "site-c", "site-d"],
            "secure-participants",
        ),
    ];
    for (n, (id, sql, participants, expected)) in cases.iter().enumerate() {
        let q = format!("q-policy-{n}");
        let site = sites.site(id);
        let result = site.round_one(sql, &start(&q, "r-1", participants)).await;
        assert_eq!(
            rule(&result),
            *expected,
            "{id} {participants:?}: {result:?}"
        );
        assert_audited_refusal(site, expected);
        assert_eq!(site.recorded_use(sql).await, None);
    }
    // A participant unknown to everyone.
    let stranger = ["site-a", "site-b", "site-x"];
    let result = sites
        .site("site-a")
        .round_one(DISORDER_BY_SEX, &start("q-stranger", "r-1", &stranger))
        .await;
    assert_eq!(rule(&result), "secure-roster", "{result:?}");
    // The same sites with the policy satisfied take part.
    let ok = sites
        .site("site-a")
        .round_one(BY_SEX, &start("q-fine", "r-1", &ABC))
        .await;
    assert_eq!(rule(&ok), "ok", "{ok:?}");
}

#[tokio::test]
async fn a_domain_over_the_nodes_cell_limit_is_refused() {
    let sites = Sites::new(&ABC, |_, policy| policy.secure.max_cells = 100).await;
    let result = sites
        .site("site-a")
        .round_one(DISORDER_BY_SEX, &start("q-big", "r-1", &ABC))
        .await;
    assert_eq!(rule(&result), "secure-domain-too-large", "{result:?}");
    let small = sites
        .site("site-a")
        .round_one(BY_SEX, &start("q-small", "r-1", &ABC))
        .await;
    assert_eq!(rule(&small), "ok", "{small:?}");
}

// ---------------------------------------------------------------------------------------
// 5. Tampered and mismatched statements
// ---------------------------------------------------------------------------------------

/// Runs round 1 at site-a, site-b and site-c for a fresh question `sql` (one the sites
/// never saw: site-b and site-c keep the round pending), lets `tamper` change what site-a
/// is relayed, and returns site-a's round 2 result.
async fn relayed_to_a(
    sites: &Sites,
    q: &str,
    sql: &str,
    tamper: impl FnOnce(&Sites, &mut Vec<RoundStatement>),
) -> Result<Vec<u64>, ExecuteError> {
    let statements = sites.round_one(&ABC, sql, &start(q, "r-1", &ABC)).await;
    let mut relayed = statements.clone();
    tamper(sites, &mut relayed);
    assert_ne!(relayed, statements, "the case changes something");
    sites.site("site-a").round_two(q, "r-1", &relayed).await
}

#[tokio::test]
async fn statements_changed_after_signing_are_refused() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    type Tamper = fn(&Sites, &mut Vec<RoundStatement>);
    let cases: &[(&str, Tamper)] = &[
        ("k lowered", |_, s| s[1].k = 2),
        ("concentration limit raised", |_, s| {
            s[1].max_concentration_ppm = 1_000_000
        }),
        ("participants changed", |_, s| {
            s[1].participants = vec!["site-a".into(), "site-b".into(), "site-x".into()]
        }),
        ("a peer key swapped", |_, s| {
            let key = s[2].peer_keys[0].1;
            s[1].peer_keys[0].1 = key;
        }),
        ("the own statement's k raised in the relay", |_, s| {
            s[0].k = 50
        }),
        ("a statement signed by another site's key", |sites, s| {
            s[1].signature = sites.site("site-c").identity.sign(&s[1].signed_bytes());
        }),
        ("a vector length changed", |_, s| s[2].vector_len += 2),
    ];
    for (n, (case, tamper)) in cases.iter().enumerate() {
        // Each case a question of its own: site-b and site-c keep the last one pending.
        let q = format!("q-tamper-{n}");
        let sql = disorder_by_sex_from(n);
        let result = relayed_to_a(&sites, &q, &sql, *tamper).await;
        assert_eq!(rule(&result), "secure-signature", "{case}: {result:?}");
        assert_audited_refusal(sites.site("site-a"), "secure-signature");
        assert_eq!(
            sites.site("site-a").recorded_use(&sql).await,
            None,
            "{case}"
        );
    }
}

/// A statement site-b really signed, for `terms` changed by `change`: the keys are fresh
/// and the signature is site-b's own identity key's.
fn signed_by_b(
    sites: &Sites,
    honest: &RoundStatement,
    change: impl FnOnce(&mut RoundStatement),
) -> RoundStatement {
    let b = sites.site("site-b");
    let (_, public) = RoundKeys::new(
        &b.id,
        &honest.participants,
        &ring::rand::SystemRandom::new(),
    )
    .expect("round keys");
    let mut terms = honest.clone();
    change(&mut terms);
    RoundStatement::sign(
        terms.terms(),
        &b.id,
        public,
        honest.k,
        honest.max_concentration_ppm,
        &b.identity,
    )
    .expect("sign")
}

#[tokio::test]
async fn validly_signed_statements_for_something_else_are_refused() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    type Change = fn(&mut RoundStatement);
    let cases: &[(&str, Change)] = &[
        ("round id", |s| s.round_id = "r-0".into()),
        ("query hash", |s| s.query_hash = "ab".repeat(32)),
        ("domain digest", |s| s.domain_digest = "cd".repeat(32)),
        ("query id", |s| s.query_id = "q-other".into()),
        ("vector length", |s| s.vector_len += 2),
    ];
    for (n, (field, change)) in cases.iter().enumerate() {
        // Each case a question of its own: site-b and site-c keep the last one pending.
        let q = format!("q-mismatch-{n}");
        let result = relayed_to_a(&sites, &q, &disorder_by_sex_from(n), |sites, s| {
            s[1] = signed_by_b(sites, &s[1], change);
        })
        .await;
        assert_eq!(rule(&result), "secure-mismatch", "{field}: {result:?}");
        let message = result.expect_err("refused").to_string();
        assert!(message.contains(field), "{field}: {message}");
        assert!(message.contains("site-b"), "{field}: {message}");
        assert_audited_refusal(sites.site("site-a"), "secure-mismatch");
    }

    // Site-b honestly signed round 1 of another round: a replay. Another round of the
    // same question (its SQL under another id) site-b no longer signs while this one is
    // pending, so the replayed statement is of another question, with the same domain.
    let q = "q-replay";
    let replayed_sql = disorder_by_sex_from(cases.len());
    let r1 = sites
        .round_one(&ABC, &replayed_sql, &start(q, "r-1", &ABC))
        .await;
    let q2 = "q-replay-2";
    let same_question = sites
        .site("site-b")
        .round_one(&replayed_sql, &start(q2, "r-1", &ABC))
        .await;
    assert_eq!(
        rule(&same_question),
        "secure-round-repeated",
        "{same_question:?}"
    );
    assert_audited_refusal(sites.site("site-b"), "secure-round-repeated");
    let other = sites
        .site("site-b")
        .round_one(
            &disorder_by_sex_from(cases.len() + 1),
            &start(q2, "r-1", &ABC),
        )
        .await
        .expect("b's other round");
    assert_eq!(other.vector_len, r1[1].vector_len, "one domain");
    assert_eq!(other.domain_digest, r1[1].domain_digest, "one domain");
    let relayed = [r1[0].clone(), other, r1[2].clone()];
    let result = sites.site("site-a").round_two(q, "r-1", &relayed).await;
    assert_eq!(rule(&result), "secure-mismatch", "{result:?}");

    // Site-b honestly signed another question under the same ids: query hash differs.
    let q = "q-other-sql";
    let r1 = sites
        .round_one(
            &["site-a", "site-c"],
            &disorder_by_sex_from(cases.len() + 2),
            &start(q, "r-1", &ABC),
        )
        .await;
    let b_other = sites
        .site("site-b")
        .round_one(BY_SEX, &start(q, "r-1", &ABC))
        .await
        .expect("b's statement for another question");
    let relayed = [r1[0].clone(), b_other, r1[1].clone()];
    let result = sites.site("site-a").round_two(q, "r-1", &relayed).await;
    assert_eq!(rule(&result), "secure-mismatch", "{result:?}");
    assert!(
        result
            .expect_err("refused")
            .to_string()
            .contains("query hash"),
        "the query hash is checked first"
    );
}

// ---------------------------------------------------------------------------------------
// 6. Round 2 of a round the node never signed
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn round_two_of_an_unknown_round_is_refused() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let a = sites.site("site-a");
    let result = a.round_two("q-never", "r-1", &[]).await;
    assert_eq!(rule(&result), "secure-round-unknown", "{result:?}");
    assert_audited_refusal(a, "secure-round-unknown");

    // Statements of a round the other sites really signed, without site-a's.
    let q = "q-without-a";
    let statements = sites
        .round_one(
            &["site-b", "site-c"],
            DISORDER_BY_SEX,
            &start(q, "r-1", &ABC),
        )
        .await;
    let result = a.round_two(q, "r-1", &statements).await;
    assert_eq!(rule(&result), "secure-round-unknown", "{result:?}");
    assert_audited_refusal(a, "secure-round-unknown");

    // A round site-a signed, asked for under another round id: refused, and the round
    // is over (no second chance to mask with the same keys). Another question: site-b and
    // site-c keep the round of the last one pending.
    let q = "q-wrong-round";
    let sql = disorder_by_sex_from(1);
    let statements = sites.round_one(&ABC, &sql, &start(q, "r-1", &ABC)).await;
    let result = a.round_two(q, "r-2", &statements).await;
    assert_eq!(rule(&result), "secure-mismatch", "{result:?}");
    let result = a.round_two(q, "r-1", &statements).await;
    assert_eq!(rule(&result), "secure-round-unknown", "{result:?}");
    assert_eq!(a.recorded_use(&sql).await, None);
}

// ---------------------------------------------------------------------------------------
// 7. Recorded before it is returned
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_masked_vector_is_recorded_before_it_is_returned() {
    let sites = Sites::new(&ABC, |_, _| {}).await;
    let q = "q-recorded";
    assert_eq!(
        sites.site("site-a").recorded_use(DISORDER_BY_SEX).await,
        None
    );
    sites.honest_round(&ABC, DISORDER_BY_SEX, q).await;
    for id in ABC {
        let site = sites.site(id);
        assert_eq!(
            site.recorded_use(DISORDER_BY_SEX).await,
            Some(QueryUse::Secure {
                round: "r-1".into()
            }),
            "{id}"
        );
        let entry = site.last_audit();
        assert_eq!(entry.outcome, Outcome::Accepted, "{entry:?}");
        assert_eq!(entry.study, q);
        assert_eq!(entry.query_hash, ern_queries::query_hash(DISORDER_BY_SEX));
        assert!(
            entry.detail.unwrap_or_default().contains("masked vector"),
            "{id}"
        );
    }

    // When the record cannot be written, no vector leaves the node. Another question:
    // the sites gave their one vector of the first.
    let q = "q-unrecordable";
    let statements = sites
        .round_one(&ABC, &disorder_by_sex_from(1), &start(q, "r-1", &ABC))
        .await;
    let b = sites.site("site-b");
    let record = b.store.join(executed::EXECUTED_FILE);
    std::fs::remove_file(&record).expect("remove the record");
    std::fs::create_dir(&record).expect("a directory in its place");
    let result = b.round_two(q, "r-1", &statements).await;
    assert!(
        matches!(result, Err(ExecuteError::Failed { .. })),
        "{result:?}"
    );
    assert_eq!(b.last_audit().outcome, Outcome::Failed);
    // Site-a's record still works.
    let a = sites.site("site-a").round_two(q, "r-1", &statements).await;
    assert_eq!(rule(&a), "ok");
}
