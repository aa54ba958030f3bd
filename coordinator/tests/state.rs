//! The coordinator's SQLite state on a real database file: migrations, hashed tokens, and
//! the per-site state machine that the lifecycle's guarantees rest on.

use ern_coordinator::auth;
use ern_coordinator::db::{Answer, Db, QueryFilter};
use ern_coordinator::lifecycle::SiteStep;
use ern_coordinator::model::{Role, SiteState, StoredQuery};
use ern_proto::approval::Approval;

fn answered(partial: &[u8]) -> Answer<'_> {
    Answer {
        partial: Some(partial),
        ..Answer::default()
    }
}

fn query(id: &str, now: u64, deadline: u64) -> StoredQuery {
    StoredQuery {
        id: id.into(),
        study_id: "study-1".into(),
        title: "t".into(),
        purpose: String::new(),
        sql: "SELECT COUNT(*) AS n FROM patient".into(),
        query_hash: ern_queries::query_hash("SELECT COUNT(*) AS n FROM patient"),
        submitted_by: "ada".into(),
        submitted_at: now,
        deadline,
        complete: false,
        failure: String::new(),
        withdrawn_at: 0,
    }
}

/// An approval for site `site` of question `q`.
fn approval(q: &str, site: &str) -> Approval {
    Approval {
        study_id: q.into(),
        site_id: site.into(),
        query_hash: ern_queries::query_hash("SELECT COUNT(*) AS n FROM patient"),
        expires_at: 2_000_000_000,
        key_id: "0123456789abcdef".into(),
        signature: vec![7u8; 64],
    }
}

fn state(db: &Db, id: &str, site: &str) -> SiteState {
    db.targets(id)
        .expect("targets")
        .into_iter()
        .find(|t| t.site == site)
        .expect("target")
        .state
}

/// The schema version a coordinator database records (`PRAGMA user_version`).
fn schema_version(conn: &rusqlite::Connection) -> i64 {
    conn.pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version")
}

/// Creates a coordinator database at `path` holding question `q-1`, and closes it.
fn create_with_one_question(path: &std::path::Path) {
    let db = Db::open(path).expect("create");
    db.insert_query(&query("q-1", 10, 100), &["a".into()])
        .expect("insert");
}

#[test]
fn the_schema_migrates_once_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.db");
    create_with_one_question(&path);
    let db = Db::open(&path).expect("reopen");
    assert_eq!(db.query("q-1").expect("read").expect("kept").title, "t");
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    assert_eq!(schema_version(&conn), 10);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
}

#[test]
fn a_database_of_the_first_schema_gains_the_later_migrations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.db");
    create_with_one_question(&path);
    // Back to schema 1, as a coordinator of the first version left it.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch(
        "ALTER TABLE nodes DROP COLUMN certificate_serial; DROP TABLE revoked_certificates; ALTER TABLE users DROP COLUMN expires_at; ALTER TABLE targets DROP COLUMN category; ALTER TABLE targets DROP COLUMN reference; ALTER TABLE queries DROP COLUMN withdrawn_at; DROP INDEX queries_by_study; DROP INDEX study_researchers_by_user; DROP TABLE study_researchers; DROP TABLE studies; ALTER TABLE queries DROP COLUMN study_id; DROP INDEX queries_by_submitter; DROP INDEX targets_by_query_state; ALTER TABLE queries DROP COLUMN failure; ALTER TABLE nodes DROP COLUMN audit_head; ALTER TABLE queries DROP COLUMN report; ALTER TABLE queries DROP COLUMN mode; ALTER TABLE queries DROP COLUMN mode_note; ALTER TABLE queries DROP COLUMN secure_totals; PRAGMA user_version = 1;",
    )
    .expect("downgrade");
    drop(conn);
    let db = Db::open(&path).expect("migrate");
    assert_eq!(db.unfinished_sites("q-1").expect("count"), 1);
    // Migration 3: a question that could not be merged keeps its reason.
    assert!(db.fail_merge("q-1", "why", 20).expect("fail"));
    assert_eq!(db.query("q-1").expect("read").expect("kept").failure, "why");
    // Migration 4: the latest audit head a node reported.
    db.node_audit_head("a", &"ab".repeat(32))
        .expect("audit head");
    // Migration 5: a researcher's questions counted and paged by an index.
    assert_eq!(
        db.open_questions_of("ada").expect("open"),
        0,
        "a failed question is not open"
    );
    // Migration 6: a question stored before has an empty report (built again on a look).
    assert_eq!(db.report("q-1").expect("report").as_deref(), Some(""));
    // Migration 7: a question stored before runs per site, with no round's totals.
    assert_eq!(
        db.mode("q-1").expect("mode"),
        Some(("per-site".to_string(), String::new()))
    );
    assert_eq!(db.secure_totals("q-1").expect("totals"), None);
    // Migration 8: a question stored before is its own study.
    assert_eq!(
        db.query("q-1").expect("read").expect("kept").study_id,
        "q-1"
    );
    // Migration 10: tokens that expire, and the revocation list of node certificates.
    assert!(
        db.revoke_certificate("0a1b", "a", 30, "admin")
            .expect("revoke")
    );
    assert!(db.certificate_revoked("0a1b").expect("revoked"));
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    assert_eq!(schema_version(&conn), 10);
    let indexes: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'index' AND name IN ('targets_by_query_state', 'queries_by_submitter')",
            [],
            |r| r.get(0),
        )
        .expect("index");
    assert_eq!(indexes, 2);
}

/// Before studies, a question was its own study: its approvals signed its id. After
/// migration 8 it belongs to a study of that id, with its title and purpose and its
/// researcher on it, so its status, its list entry and a retried approval read as before.
#[test]
fn questions_from_before_studies_become_studies_of_their_own() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.db");
    {
        let db = Db::open(&path).expect("create");
        let mut old = query("q-old", 10, 100);
        old.title = "Patients by sex".into();
        old.purpose = "Why".into();
        db.insert_query(&old, &["a".into()]).expect("insert");
    }
    // Back to schema 7, as the coordinator before studies left it.
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.execute_batch(
        "ALTER TABLE nodes DROP COLUMN certificate_serial; DROP TABLE revoked_certificates; ALTER TABLE users DROP COLUMN expires_at; ALTER TABLE targets DROP COLUMN category; ALTER TABLE targets DROP COLUMN reference; ALTER TABLE queries DROP COLUMN withdrawn_at; DROP INDEX queries_by_study; DROP INDEX study_researchers_by_user; DROP TABLE study_researchers; DROP TABLE studies; ALTER TABLE queries DROP COLUMN study_id; PRAGMA user_version = 7;",
    )
    .expect("downgrade");
    drop(conn);

    let db = Db::open(&path).expect("migrate");
    let old = db.query("q-old").expect("read").expect("kept");
    assert_eq!(old.study_id, "q-old", "the id its approvals signed");
    assert_eq!(old.title, "Patients by sex");
    let study = db
        .study("q-old")
        .expect("read")
        .expect("a study of its own");
    assert_eq!(study.title, "Patients by sex");
    assert_eq!(study.purpose, "Why");
    assert_eq!(study.researchers, vec!["ada".to_string()]);
    assert_eq!(study.created_by, "coordinator");
    assert_eq!(db.on_study("q-old", "ada").expect("on"), Some(true));
    assert_eq!(db.on_study("q-old", "ben").expect("on"), Some(false));
    let listed = db
        .queries_by(
            "ada",
            &QueryFilter {
                study: Some("q-old"),
                ..QueryFilter::default()
            },
            i64::MAX,
            10,
        )
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        db.studies(Some("ada"), "", 10).expect("studies")[0].id,
        "q-old"
    );
    // Its approval, retried, is sent with the study it signed.
    assert!(
        db.approve("q-old", "s", &approval("q-old", "a"), 20)
            .expect("approve")
    );
    let work = db.approved_work("a", 20).expect("work");
    assert_eq!(work.len(), 1);
    assert_eq!(work[0].study_id, "q-old");
    assert_eq!(work[0].approval.study_id, "q-old");
}

#[test]
fn a_database_from_a_newer_version_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.db");
    drop(Db::open(&path).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("sqlite");
    conn.pragma_update(None, "user_version", 99).expect("bump");
    drop(conn);
    let error = Db::open(&path).expect_err("too new");
    assert!(error.to_string().contains("schema version 99"), "{error}");
}

#[test]
fn tokens_are_stored_only_as_hashes_and_unknown_ones_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.db");
    let db = Db::open(&path).expect("db");
    let token = auth::enrol(
        &db,
        "test",
        &auth::Enrolment::new("ada", Role::Researcher, "").with_new_site(),
        5,
    )
    .expect("enrol");
    assert!(token.starts_with("ern_") && token.len() == 68, "{token}");
    let (user, hash) = db
        .user_by_token_hash(&auth::token_hash(&token))
        .expect("lookup")
        .expect("found");
    assert_eq!(user.name, "ada");
    assert_eq!(hash, auth::token_hash(&token));
    assert!(
        db.user_by_token_hash(&auth::token_hash("ern_guess"))
            .expect("lookup")
            .is_none()
    );
    drop(db);
    for file in std::fs::read_dir(dir.path()).expect("dir") {
        let bytes = std::fs::read(file.expect("entry").path()).expect("read");
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "the token is stored in clear"
        );
    }
    // Names are unique; sites are required exactly for stewards and nodes.
    let db = Db::open(&path).expect("db");
    assert!(
        auth::enrol(
            &db,
            "test",
            &auth::Enrolment::new("ada", Role::Operator, "").with_new_site(),
            5
        )
        .is_err()
    );
    assert!(
        auth::enrol(
            &db,
            "test",
            &auth::Enrolment::new("sam", Role::Steward, "").with_new_site(),
            5
        )
        .is_err()
    );
    assert!(
        auth::enrol(
            &db,
            "test",
            &auth::Enrolment::new("ray", Role::Researcher, "site-a").with_new_site(),
            5
        )
        .is_err()
    );
    assert!(
        auth::enrol(
            &db,
            "test",
            &auth::Enrolment::new("with space", Role::Researcher, "").with_new_site(),
            5
        )
        .is_err()
    );
}

#[test]
fn a_site_moves_only_along_the_lifecycle() {
    let db = Db::open_in_memory().expect("db");
    db.insert_query(&query("q-1", 10, 1000), &["a".into(), "b".into()])
        .expect("insert");
    assert_eq!(state(&db, "q-1", "a"), SiteState::AwaitingApproval);

    // No answer is accepted for work that was never dispatched.
    assert!(
        !db.record_answer("q-1", "a", SiteStep::Answer, &answered(b"x"), 11)
            .expect("answer")
    );
    assert!(
        db.approve("q-1", "steward-a", &approval("q-1", "a"), 12)
            .expect("approve")
    );
    // An approval is recorded once.
    assert!(
        !db.approve("q-1", "steward-a", &approval("q-1", "a"), 13)
            .expect("approve again")
    );
    assert_eq!(db.approved_work("a", 14).expect("work").len(), 1);
    assert!(db.mark_dispatched("q-1", "a", 15).expect("dispatch"));
    // The same work is not dispatched twice.
    assert!(!db.mark_dispatched("q-1", "a", 15).expect("dispatch again"));
    // The node's stream breaks: the work goes back to the queue.
    assert_eq!(db.requeue_dispatched("a", 16).expect("requeue"), 1);
    assert_eq!(state(&db, "q-1", "a"), SiteState::Approved);
    assert!(db.mark_dispatched("q-1", "a", 17).expect("dispatch"));
    assert!(
        db.record_answer("q-1", "a", SiteStep::Answer, &answered(b"ipc"), 18)
            .expect("answer")
    );
    // A late duplicate answer changes nothing.
    assert!(
        !db.record_answer(
            "q-1",
            "a",
            SiteStep::Fail,
            &Answer {
                detail: "late",
                ..Answer::default()
            },
            19
        )
        .expect("dup")
    );
    let a = db.targets("q-1").expect("targets").remove(0);
    assert_eq!(
        (a.state, a.partial.as_deref()),
        (SiteState::Answered, Some(&b"ipc"[..]))
    );

    // A rejection only from awaiting approval.
    assert!(
        db.step("q-1", "b", SiteStep::Reject, "steward-b", "reason", 19)
            .expect("reject")
    );
    assert!(
        !db.approve("q-1", "steward-b", &approval("q-1", "b"), 20)
            .expect("approve rejected")
    );
    let b = db.targets("q-1").expect("targets").remove(1);
    assert_eq!(
        (b.state, b.detail.as_str()),
        (SiteState::Rejected, "reason")
    );
}

#[test]
fn deadlines_expire_waiting_sites_and_site_timeouts_fail_silent_ones() {
    let db = Db::open_in_memory().expect("db");
    db.insert_query(&query("q-old", 10, 100), &["a".into(), "b".into()])
        .expect("insert");
    db.insert_query(&query("q-new", 10, 10_000), &["a".into()])
        .expect("insert");
    assert!(
        db.approve("q-old", "steward-b", &approval("q-old", "b"), 20)
            .expect("approve")
    );
    assert!(
        db.approve("q-new", "steward-a", &approval("q-new", "a"), 20)
            .expect("approve")
    );
    assert!(db.mark_dispatched("q-new", "a", 30).expect("dispatch"));

    // At t = 50 nothing is due yet.
    assert!(db.expire(50, 0).expect("expire").is_empty());
    // At t = 200 q-old is past its deadline; q-new's dispatch (t = 30) is older than the
    // site timeout allows (dispatched before t = 40).
    let touched = db.expire(200, 40).expect("expire");
    assert_eq!(touched, vec!["q-new".to_string(), "q-old".to_string()]);
    assert_eq!(state(&db, "q-old", "a"), SiteState::Expired);
    assert_eq!(state(&db, "q-old", "b"), SiteState::Expired);
    let new = db.targets("q-new").expect("targets").remove(0);
    assert_eq!(
        (new.state, new.detail.as_str()),
        (SiteState::Failed, "timeout")
    );
    // Expired work is not handed to a node that connects later.
    assert!(db.approved_work("b", 201).expect("work").is_empty());
    assert!(
        db.pending_for_site("a", 201, 0, 100)
            .expect("pending")
            .is_empty()
    );
}

/// Issue 17: a withdrawal ends every open part at once; an answer arriving afterwards is
/// discarded, and the question lists as withdrawn.
#[test]
fn a_withdrawn_question_discards_late_answers() {
    use ern_coordinator::db::Withdrawal;
    use ern_coordinator::lifecycle::QuestionState;
    let db = Db::open_in_memory().expect("db");
    db.insert_query(&query("q-1", 10, 1000), &["a".into(), "b".into()])
        .expect("insert");
    assert!(
        db.approve("q-1", "steward-a", &approval("q-1", "a"), 12)
            .expect("approve")
    );
    assert!(db.mark_dispatched("q-1", "a", 13).expect("dispatch"));
    // Only its researcher withdraws it.
    assert_eq!(
        db.withdraw("q-1", "ben", 14).expect("withdraw"),
        Withdrawal::NotFound
    );
    assert_eq!(
        db.withdraw("q-1", "ada", 14).expect("withdraw"),
        Withdrawal::Withdrawn
    );
    assert_eq!(state(&db, "q-1", "a"), SiteState::Withdrawn);
    assert_eq!(state(&db, "q-1", "b"), SiteState::Withdrawn);
    // The node that had it answers into nothing.
    assert!(
        !db.record_answer("q-1", "a", SiteStep::Answer, &answered(b"ipc"), 15)
            .expect("late answer")
    );
    assert!(db.targets("q-1").expect("targets")[0].partial.is_none());
    assert!(db.approved_work("a", 16).expect("work").is_empty());
    assert!(
        db.pending_for_site("b", 16, 0, 100)
            .expect("pending")
            .is_empty()
    );
    let query = db.query("q-1").expect("query").expect("stored");
    assert_eq!(query.state(), QuestionState::Withdrawn);
    assert_eq!(
        db.withdraw("q-1", "ada", 17).expect("withdraw"),
        Withdrawal::Finished
    );
    let withdrawn = QueryFilter {
        state: Some(QuestionState::Withdrawn),
        ..QueryFilter::default()
    };
    assert_eq!(
        db.queries_by("ada", &withdrawn, i64::MAX, 10)
            .expect("list")
            .len(),
        1
    );
    let open = QueryFilter {
        state: Some(QuestionState::Open),
        ..QueryFilter::default()
    };
    assert!(
        db.queries_by("ada", &open, i64::MAX, 10)
            .expect("list")
            .is_empty()
    );
    // Time bounds: submitted at 10.
    let before = QueryFilter {
        submitted_before: 10,
        ..QueryFilter::default()
    };
    assert!(
        db.queries_by("ada", &before, i64::MAX, 10)
            .expect("list")
            .is_empty()
    );
    let after = QueryFilter {
        submitted_after: 10,
        submitted_before: 11,
        ..QueryFilter::default()
    };
    assert_eq!(
        db.queries_by("ada", &after, i64::MAX, 10)
            .expect("list")
            .len(),
        1
    );
}

/// Issue 17: a steward approves again a part refused by an approval check or rejected by
/// that same steward; never another refusal, another steward's rejection, or a part of a
/// secure round that has started.
#[test]
fn only_approval_refusals_and_ones_own_rejections_are_approved_again() {
    use ern_coordinator::db::{Reapproval, SECURE};
    let db = Db::open_in_memory().expect("db");
    let refused_by = |db: &Db, q: &str, site: &str, rule: &str| {
        assert!(
            db.approve(q, "steward", &approval(q, site), 11)
                .expect("approve")
        );
        assert!(db.mark_dispatched(q, site, 12).expect("dispatch"));
        let answer = Answer {
            detail: rule,
            ..Answer::default()
        };
        assert!(
            db.record_answer(q, site, SiteStep::Refuse, &answer, 13)
                .expect("refuse")
        );
    };
    db.insert_query(
        &query("q-1", 10, 1000),
        &["a".into(), "b".into(), "c".into()],
    )
    .expect("insert");
    refused_by(&db, "q-1", "a", "approval-unknown-key");
    refused_by(&db, "q-1", "b", "minimum-group-size");
    assert!(
        db.step("q-1", "c", SiteStep::Reject, "steward-c", "no", 14)
            .expect("reject")
    );
    assert_eq!(
        db.reapprove("q-1", "steward", &approval("q-1", "a"), 20)
            .expect("reapprove"),
        Reapproval::Reapproved
    );
    assert_eq!(state(&db, "q-1", "a"), SiteState::Approved);
    let Reapproval::Refused(why) = db
        .reapprove("q-1", "steward", &approval("q-1", "b"), 20)
        .expect("reapprove")
    else {
        panic!("a disclosure refusal was approved again")
    };
    assert!(why.contains("minimum-group-size"), "{why}");
    let Reapproval::Refused(why) = db
        .reapprove("q-1", "steward-c2", &approval("q-1", "c"), 20)
        .expect("reapprove")
    else {
        panic!("another steward overturned a rejection")
    };
    assert!(why.contains("only that steward"), "{why}");
    assert_eq!(
        db.reapprove("q-1", "steward-c", &approval("q-1", "c"), 20)
            .expect("reapprove"),
        Reapproval::Reapproved
    );
    // Past the deadline, nothing is approved again.
    assert!(db.mark_dispatched("q-1", "a", 21).expect("dispatch"));
    let expired = Answer {
        detail: "approval-expired",
        ..Answer::default()
    };
    assert!(
        db.record_answer("q-1", "a", SiteStep::Refuse, &expired, 22)
            .expect("refuse")
    );
    assert!(matches!(
        db.reapprove("q-1", "steward", &approval("q-1", "a"), 1000),
        Ok(Reapproval::Refused(_))
    ));

    // A secure question: before its round, yes; once a participant is dispatched, no.
    db.insert_query_capped(
        &query("q-2", 10, 1000),
        &["a".into(), "b".into()],
        "",
        SECURE,
        100,
    )
    .expect("insert");
    assert!(
        db.step("q-2", "b", SiteStep::Reject, "steward-b", "not yet", 14)
            .expect("reject")
    );
    assert!(
        db.approve("q-2", "steward-a", &approval("q-2", "a"), 15)
            .expect("approve")
    );
    assert!(db.mark_dispatched("q-2", "a", 16).expect("round"));
    let Reapproval::Refused(why) = db
        .reapprove("q-2", "steward-b", &approval("q-2", "b"), 20)
        .expect("reapprove")
    else {
        panic!("a site joined a secure round late")
    };
    assert!(why.contains("round has started"), "{why}");
}
