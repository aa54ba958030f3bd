//! The audit log is the node's, not the store's (issue #18): it lives outside the store,
//! records the store generations the node answers from, survives the store being
//! deleted and rebuilt, explains a broken chain, and is rotated into a new chain that
//! records the old one and keeps every privacy charge.
//!
//! Real engines over real ingested stores; the store is deleted and re-ingested on disk
//! while an engine runs.

use crate::common::{named_steward, synthetic_store};

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ern_node::approval;
use ern_node::audit::{self, AuditError, BreakKind, Outcome};
use ern_node::engine::{ExecuteError, NodeEngine, NodeFiles, NodePolicy, QueryRequest};
use ern_node::failure::FailureCategory;
use ern_node::privacy::policy::{Epsilon, PrivacyPolicy};
use ern_node::privacy::secret::NoiseSecret;
use ern_node::steward_key::StewardSigningKey;
use ern_node::store::GenerationRecord;
use ern_node::store_watch::StoreState;

const SITE: &str = "site-a";
const STUDY: &str = "study-1";
const COUNT: &str = "SELECT sex, COUNT(DISTINCT pid) AS n FROM patient GROUP BY sex";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A site directory: the store (`store/`), the node's own files (`node/audit.log`,
/// `node/executed.log`) and a steward.
struct Site {
    dir: tempfile::TempDir,
    files: NodeFiles,
    steward: StewardSigningKey,
}

impl Site {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let store = synthetic_store(dir.path(), 200, 4);
        std::fs::create_dir_all(dir.path().join("node")).expect("node dir");
        let files = NodeFiles {
            store,
            audit_log: dir.path().join("node/audit.log"),
        };
        let steward = named_steward(dir.path(), "steward");
        Site {
            dir,
            files,
            steward,
        }
    }

    fn policy(&self) -> NodePolicy {
        NodePolicy::new(SITE, vec![self.steward.public_key()])
    }

    async fn engine(&self, policy: NodePolicy) -> NodeEngine {
        NodeEngine::open_files(&self.files, policy)
            .await
            .expect("engine")
    }

    /// A fresh approval of `sql` (`nonce` makes it another one).
    fn request(&self, sql: &str, nonce: u64) -> QueryRequest {
        QueryRequest {
            sql: sql.to_string(),
            study_id: STUDY.to_string(),
            approval: approval::sign(&self.steward, sql, SITE, STUDY, now() + 600 + nonce)
                .expect("approval"),
        }
    }

    /// Starts a node, has it answer `questions` fresh approvals of [`COUNT`], stops it.
    async fn answer_then_stop(&self, questions: u64) {
        let engine = self.engine(self.policy()).await;
        for nonce in 0..questions {
            engine
                .execute(&self.request(COUNT, nonce))
                .await
                .expect("answered");
        }
    }

    /// Ingests the registry again: a new generation of the store.
    fn reingest(&self) {
        synthetic_store(self.dir.path(), 200, 4);
    }

    fn entries(&self) -> Vec<audit::AuditEntry> {
        audit::read_entries(&self.files.audit_log).expect("intact log")
    }

    fn store_entries(&self) -> Vec<audit::AuditEntry> {
        self.entries()
            .into_iter()
            .filter(|entry| entry.outcome == Outcome::Store)
            .collect()
    }
}

#[tokio::test]
async fn ingest_records_a_generation_the_node_logs_when_it_opens_and_sees_a_new_one() {
    let site = Site::new();
    let first = GenerationRecord::read(&site.files.store).expect("ingest wrote a record");
    assert_eq!(first.id.len(), 32);
    let engine = site.engine(site.policy()).await;
    let opened = site.store_entries();
    assert_eq!(opened.len(), 1, "{opened:?}");
    assert_eq!(
        opened[0].store_generation.as_deref(),
        Some(first.id.as_str())
    );
    // Nothing new: no new entry.
    assert_eq!(
        engine.check_store().await.generation_id(),
        first.id.as_str()
    );
    assert_eq!(site.store_entries().len(), 1);

    site.reingest();
    let second = GenerationRecord::read(&site.files.store).expect("record");
    assert_ne!(first.id, second.id, "every ingest is a new generation");
    // A question notices it before it runs, and is refused as stale only if its
    // approval ran before; a fresh one answers from the new generation.
    engine
        .execute(&site.request(COUNT, 0))
        .await
        .expect("answered");
    let seen = site.store_entries();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].store_generation.as_deref(),
        Some(second.id.as_str())
    );
    assert!(
        seen[1]
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("new store generation")),
        "{seen:?}"
    );
    // Ingest never touched the node's files.
    assert!(!site.files.store.join(audit::AUDIT_FILE).exists());
}

#[tokio::test]
async fn a_store_deleted_under_a_running_node_fails_work_as_store_unavailable_and_recovers() {
    let site = Site::new();
    let engine = site.engine(site.policy()).await;
    engine
        .execute(&site.request(COUNT, 0))
        .await
        .expect("answered");
    std::fs::remove_dir_all(&site.files.store).expect("rm -rf store");

    // The heartbeat's look says so, once in the log however often it looks.
    let state = engine.check_store().await;
    assert_eq!(state.unavailable(), "store-unavailable", "{state:?}");
    assert_eq!(state.generation_id(), "");
    engine.check_store().await;
    // Work fails with the category, and its failure is audited (the log is not in the
    // store, so the reference the researcher gets is really written).
    match engine.execute(&site.request(COUNT, 1)).await {
        Err(ExecuteError::Failed {
            category,
            reference,
        }) => {
            assert_eq!(category, FailureCategory::StoreUnavailable);
            let entries = site.entries();
            let failed = entries
                .iter()
                .find(|entry| entry.reference.as_deref() == Some(reference.as_str()))
                .expect("the failure's entry");
            assert_eq!(failed.category.as_deref(), Some("store-unavailable"));
        }
        other => panic!("expected store-unavailable, got {other:?}"),
    }
    let missing: Vec<_> = site
        .store_entries()
        .into_iter()
        .filter(|entry| entry.rule.as_deref() == Some("store-unavailable"))
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");

    // Re-ingested: the node recovers by itself, on the new generation.
    site.reingest();
    let state = engine.check_store().await;
    assert!(matches!(state, StoreState::Available { .. }), "{state:?}");
    engine
        .execute(&site.request(COUNT, 2))
        .await
        .expect("answered after the store came back");
    let last = site.store_entries().pop().expect("an entry");
    assert!(
        last.detail.as_deref().is_some_and(|d| d.contains("back")),
        "{last:?}"
    );
    // And a restart continues the same chain.
    drop(engine);
    let restarted = site.engine(site.policy()).await;
    restarted
        .execute(&site.request(COUNT, 3))
        .await
        .expect("answered after a restart");
    audit::verify(&site.files.audit_log).expect("one intact chain");
}

#[tokio::test]
async fn an_approval_that_ran_before_the_store_was_rebuilt_is_stale_after_it() {
    // The record of executed approvals lives beside the audit log: a store deleted and
    // rebuilt does not make the node forget what it ran.
    let site = Site::new();
    let engine = site.engine(site.policy()).await;
    let request = site.request(COUNT, 0);
    engine.execute(&request).await.expect("answered");
    std::fs::remove_dir_all(&site.files.store).expect("rm -rf store");
    site.reingest();
    match engine.execute(&request).await {
        Err(ExecuteError::Approval(error)) => assert_eq!(error.name(), "approval-stale"),
        other => panic!("expected approval-stale, got {other:?}"),
    }
}

#[tokio::test]
async fn an_audit_log_deleted_under_a_running_node_releases_nothing_more() {
    let site = Site::new();
    let engine = site.engine(site.policy()).await;
    std::fs::remove_file(&site.files.audit_log).expect("rm audit.log");
    match engine.execute(&site.request(COUNT, 0)).await {
        Err(ExecuteError::Failed { category, .. }) => {
            assert_eq!(category, FailureCategory::Internal);
        }
        other => panic!("released without an audit entry: {other:?}"),
    }
    // Nothing was written to a new file that would start a chain mid-way.
    assert!(!site.files.audit_log.exists());
}

/// Writes `lines` as the log's text.
fn write_lines(log: &Path, lines: &[&str]) {
    std::fs::write(
        log,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .expect("write log");
}

#[tokio::test]
async fn a_broken_chain_is_explained_by_its_kind() {
    let site = Site::new();
    site.answer_then_stop(3).await;
    let log = &site.files.audit_log;
    let text = std::fs::read_to_string(log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4);

    let kind_of = |log: &Path| match audit::verify(log) {
        Err(AuditError::Broken {
            entry, line, kind, ..
        }) => (entry, line, kind),
        other => panic!("expected a broken chain, got {other:?}"),
    };
    // The case: a log that starts mid-way (its first entries are elsewhere).
    write_lines(log, &lines[2..]);
    let (entry, line, kind) = kind_of(log);
    assert_eq!((entry, line), (1, 1));
    assert_eq!(
        kind,
        BreakKind::Sequence {
            found: 3,
            expected: 1
        }
    );
    assert!(
        kind.explanation(line).contains("starts at entry 3"),
        "{kind}"
    );
    // Entries deleted from the middle.
    write_lines(log, &[lines[0], lines[3]]);
    let (_, line, kind) = kind_of(log);
    assert!(
        kind.explanation(line)
            .contains("entries 2 to 3 are missing")
    );
    // A write cut short at the end.
    let torn = &lines[3][..lines[3].len() / 2];
    std::fs::write(
        log,
        format!("{}\n{}\n{}\n{torn}", lines[0], lines[1], lines[2]),
    )
    .expect("write");
    let (entry, _, kind) = kind_of(log);
    assert_eq!(entry, 4);
    assert!(matches!(kind, BreakKind::TornTail(_)), "{kind:?}");
    let found = audit::inspect(log).expect("inspect");
    assert_eq!(found.intact.entries, 3);
    // An edited entry.
    write_lines(
        log,
        &[
            lines[0],
            &lines[1].replacen("\"rows_released\":", "\"rows_released\":9", 1),
        ],
    );
    assert_eq!(kind_of(log).2, BreakKind::Altered);
}

/// A node whose study has spent some of its budget.
fn private_policy(site: &Site) -> NodePolicy {
    let secret = NoiseSecret::generate(&site.dir.path().join("noise.key")).expect("secret");
    let mut policy = site.policy();
    policy.privacy = PrivacyPolicy {
        enabled: true,
        epsilon: Epsilon::from_decimal(1.0).expect("epsilon"),
        budget_per_study: Epsilon::from_decimal(3.0).expect("budget"),
        secret: Some(Arc::new(secret)),
        ..PrivacyPolicy::default()
    };
    policy
}

fn spent(engine: &NodeEngine) -> Epsilon {
    engine
        .privacy_budgets()
        .0
        .into_iter()
        .find(|(study, _)| study == STUDY)
        .map(|(_, spent)| spent)
        .unwrap_or_default()
}

#[tokio::test]
async fn a_broken_log_rotated_starts_a_chain_that_records_it_and_keeps_every_charge() {
    let site = Site::new();
    let policy = private_policy(&site);
    let engine = site.engine(policy.clone()).await;
    let questions = [COUNT, "SELECT COUNT(DISTINCT pid) AS n FROM patient"];
    for (nonce, sql) in questions.iter().enumerate() {
        engine
            .execute(&site.request(sql, nonce as u64))
            .await
            .expect("answered");
    }
    assert_eq!(spent(&engine), Epsilon::from_decimal(2.0).expect("two"));
    // Rotating is refused while a node writes the log.
    let archive = site.dir.path().join("node/audit.log.old");
    match audit::rotate(&site.files.audit_log, &archive) {
        Err(AuditError::InUse { .. }) => {}
        other => panic!("rotated under a running node: {other:?}"),
    }
    drop(engine);

    // The log breaks (its second entry is edited): the node cannot start.
    let log = &site.files.audit_log;
    let text = std::fs::read_to_string(log).expect("log");
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[1] = lines[1].replacen("\"duration_ms\":", "\"duration_ms\":1", 1);
    std::fs::write(log, lines.join("\n") + "\n").expect("tamper");
    assert!(
        NodeEngine::open_files(&site.files, policy.clone())
            .await
            .is_err()
    );
    let intact_head = audit::inspect(log).expect("inspect").intact.head;

    let rotation = audit::rotate(log, &archive).expect("rotate");
    assert!(archive.exists());
    let continued = &rotation.continuation;
    assert_eq!(continued.entries, 1);
    assert_eq!(continued.last_hash, intact_head);
    assert!(
        continued
            .broken
            .as_deref()
            .is_some_and(|b| b.contains("entry 2")),
        "{continued:?}"
    );
    assert_eq!(continued.charges_carried, 2);
    let entries = audit::read_entries(log).expect("the new chain is intact");
    assert_eq!(entries[0].outcome, Outcome::Rotated);
    assert_eq!(entries[0].continues.as_ref(), Some(continued));
    assert_eq!(entries[0].prev, audit::genesis());

    // The node starts on the new chain with the study's spending as it was.
    let engine = site.engine(policy).await;
    assert_eq!(spent(&engine), Epsilon::from_decimal(2.0).expect("two"));
    engine
        .execute(&site.request("SELECT COUNT(*) AS n FROM patient", 9))
        .await
        .expect("the last epsilon");
    let refused = engine
        .execute(&site.request("SELECT COUNT(*) AS rows FROM diagnosis", 10))
        .await;
    assert!(
        matches!(refused, Err(ExecuteError::Budget { .. })),
        "the budget was forgotten: {refused:?}"
    );
    // An existing archive is never overwritten.
    drop(engine);
    assert!(audit::rotate(log, &archive).is_err());
}

#[tokio::test]
async fn the_node_takes_its_old_files_out_of_the_store() {
    // A node upgraded in place: its audit log and record of executions were in the store.
    let site = Site::new();
    let legacy = NodeFiles::in_one_directory(&site.files.store);
    let engine = NodeEngine::open_files(&legacy, site.policy())
        .await
        .expect("engine");
    let request = site.request(COUNT, 0);
    engine.execute(&request).await.expect("answered");
    let head = engine.audit_head();
    drop(engine);
    let moved = site.files.adopt_from_store().expect("moved");
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert!(!legacy.audit_log.exists());
    let engine = site.engine(site.policy()).await;
    assert!(
        site.entries().iter().any(|entry| entry.hash == head),
        "the history came along"
    );
    // And so did the record of executions: a retry gets the stored release.
    engine.execute(&request).await.expect("a retry");
    let retried = site.entries().pop().expect("entry");
    assert!(
        retried
            .detail
            .as_deref()
            .is_some_and(|d| d.contains("retry")),
        "{retried:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Red team (issue #18 review): budgets and releases around a damaged or missing log
// ---------------------------------------------------------------------------------------

/// Attack: the release is stored as executed, then its audit append fails (the log was
/// moved away meanwhile), so its charge is never written; the same approval again is a
/// retry that answered from the stored release without charging. Safe: the retry is
/// charged before it leaves.
#[tokio::test]
async fn a_retry_after_a_failed_audit_append_is_charged() {
    let site = Site::new();
    let policy = private_policy(&site);
    let engine = site.engine(policy).await;
    let request = site.request(COUNT, 0);
    let aside = site.dir.path().join("node/aside.log");
    std::fs::rename(&site.files.audit_log, &aside).expect("move the log away");
    let failed = engine.execute(&request).await;
    assert!(
        matches!(failed, Err(ExecuteError::Failed { .. })),
        "{failed:?}"
    );
    assert_eq!(spent(&engine), Epsilon::default(), "nothing was charged");
    std::fs::rename(&aside, &site.files.audit_log).expect("the log is back");
    engine.execute(&request).await.expect("the retry");
    assert_eq!(
        spent(&engine),
        Epsilon::from_decimal(1.0).expect("one"),
        "the retry released without a charge"
    );
    let charged = site
        .entries()
        .iter()
        .filter(|entry| entry.outcome == Outcome::Charged)
        .count();
    assert_eq!(charged, 1);
}

/// Attack: `rm audit.log` on a node with a history, then start it: a fresh log would
/// start every study's spending from zero, without a trace. Safe: the node refuses to
/// start; `ern node audit rotate` starts a new chain whose first entry records the loss.
#[tokio::test]
async fn a_missing_log_of_a_node_with_a_history_stops_it_until_the_loss_is_recorded() {
    let site = Site::new();
    let engine = site.engine(site.policy()).await;
    engine
        .execute(&site.request(COUNT, 0))
        .await
        .expect("answered");
    drop(engine);
    std::fs::remove_file(&site.files.audit_log).expect("rm audit.log");
    match NodeEngine::open_files(&site.files, site.policy()).await {
        Err(ern_node::engine::OpenError::Audit(AuditError::Missing { .. })) => {}
        other => panic!("started on a fresh log: {other:?}"),
    }
    let archive = site.dir.path().join("node/none");
    let rotation = audit::rotate(&site.files.audit_log, &archive).expect("record the loss");
    assert!(!archive.exists());
    assert!(
        rotation
            .continuation
            .broken
            .as_deref()
            .is_some_and(|b| b.contains("missing")),
        "{rotation:?}"
    );
    let entries = site.entries();
    assert_eq!(entries[0].outcome, Outcome::Rotated);
    site.engine(site.policy()).await;
}

/// A rotation never leaves a moment without a log at its path, and never takes the log
/// itself (or its staging file) as the archive.
#[tokio::test]
async fn rotating_refuses_an_archive_that_is_the_log_and_keeps_a_log_in_place() {
    let site = Site::new();
    drop(site.engine(site.policy()).await);
    let log = &site.files.audit_log;
    assert!(audit::rotate(log, log).is_err());
    assert!(audit::rotate(log, &log.with_extension("rotating")).is_err());
    audit::verify(log).expect("untouched");
    let archive = site.dir.path().join("node/archive.log");
    audit::rotate(log, &archive).expect("rotate");
    audit::verify(&archive).expect("the archive is the old log, intact");
    assert_eq!(audit::verify(log).expect("the new chain").entries, 1);
}

/// Attack: `rm executed.log` (or an `audit_log` moved to another directory without it),
/// then a re-ingest: every approval the node ran would run again on the new data (the
/// differencing of two releases). Safe: the node does not start while its audit log
/// shows approvals executed and the record shows none.
#[tokio::test]
async fn a_lost_record_of_executed_approvals_stops_the_node() {
    let site = Site::new();
    let engine = site.engine(site.policy()).await;
    let request = site.request(COUNT, 0);
    engine.execute(&request).await.expect("answered");
    drop(engine);
    std::fs::remove_file(
        site.files
            .state_dir()
            .join(ern_node::executed::EXECUTED_FILE),
    )
    .expect("rm executed.log");
    site.reingest();
    match NodeEngine::open_files(&site.files, site.policy()).await {
        Err(ern_node::engine::OpenError::Executed(error)) => {
            assert!(error.to_string().contains("missing"), "{error}");
        }
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("started without its record: the approval would run again"),
    }
}

/// A second rotation keeps what the first recorded: archiving a broken log, then
/// rotating again and deleting both archives, leaves a chain that still says so.
#[tokio::test]
async fn a_second_rotation_keeps_the_first_break() {
    let site = Site::new();
    site.answer_then_stop(2).await;
    let log = &site.files.audit_log;
    let text = std::fs::read_to_string(log).expect("log");
    let lines: Vec<&str> = text.lines().collect();
    write_lines(log, &[lines[0], lines[2]]);
    let first = site.dir.path().join("node/first.log");
    audit::rotate(log, &first).expect("first rotation");
    let second = site.dir.path().join("node/second.log");
    let rotation = audit::rotate(log, &second).expect("second rotation");
    std::fs::remove_file(&first).expect("rm");
    std::fs::remove_file(&second).expect("rm");
    assert!(
        rotation.continuation.broken.is_none(),
        "the first chain was intact"
    );
    let earlier = &audit::read_entries(log).expect("intact")[0]
        .continues
        .clone()
        .expect("a continuation")
        .earlier;
    assert_eq!(earlier.len(), 1, "{earlier:?}");
    assert!(earlier[0].contains("first.log"), "{earlier:?}");
}
