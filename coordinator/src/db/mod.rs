//! The coordinator's durable state in embedded SQLite: users, questions, their target
//! sites with approvals as received and partials as released, merged results, nodes and
//! the lifecycle audit trail.
//!
//! Durability is the point of this module: the database runs in WAL mode, and every state
//! change that the lifecycle depends on (a submission with its targets, an approval, a
//! released partial, a merged result) commits in one transaction before the caller is
//! answered. A `kill -9` at any moment therefore loses nothing that was acknowledged, and
//! the lifecycle resumes from the tables.
//!
//! What people hand over (users, submissions, approvals, rejections, merged results)
//! commits with `synchronous = FULL`: on disk before the call returns, even across a power
//! cut. Marks that the network can redo (a piece of work sent to a node, a node's answer)
//! commit with `synchronous = NORMAL`, which WAL makes safe against a process crash but not
//! a power cut: after one, such work is simply sent again and answered again, which the
//! nodes and the state machine allow.
//!
//! Migrations are numbered SQL scripts applied in order; `PRAGMA user_version` records
//! how many have run.
//!
//! # Layout
//! - this module: opening, migrations, the stored types and the statement cache.
//! - `users`: users, hashed tokens, enrolled sites.
//! - `studies`: studies and the researchers on them.
//! - `questions`: submissions with their targets and reports, lists, the merged table or
//!   the merge's failure.
//! - `sites`: each site's part in a question, moved only by [`crate::lifecycle`]'s steps.
//! - `nodes`: each node's last known state.
//! - `events`: the event log and its summary.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use ern_proto::approval::Approval;

use crate::lifecycle::{EventKind, SiteStep};
use crate::model::{Role, SiteState, StoredQuery, Study, Target, User};

mod certificates;
mod events;
mod nodes;
mod questions;
mod secure;
mod sites;
mod studies;
mod users;

use events::{insert_event, record_step};
use questions::query_from_row;
pub use questions::{QueryFilter, Withdrawal};
pub use secure::{PER_SITE, REFERENCE, SECURE};
pub use sites::{Answer, Reapproval};
pub use studies::StudyAdmission;

/// Schema migrations, in order. Never edit one that has shipped; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE users (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        site TEXT NOT NULL DEFAULT '',
        token_hash BLOB NOT NULL UNIQUE,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE queries (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        purpose TEXT NOT NULL,
        sql TEXT NOT NULL,
        query_hash TEXT NOT NULL,
        submitted_by TEXT NOT NULL,
        submitted_at INTEGER NOT NULL,
        deadline INTEGER NOT NULL,
        complete INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE targets (
        query_id TEXT NOT NULL REFERENCES queries(id),
        site TEXT NOT NULL,
        state TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        updated_at INTEGER NOT NULL,
        dispatched_at INTEGER,
        approved_by TEXT,
        approval_expires INTEGER,
        approval_key_id TEXT,
        approval_signature BLOB,
        partial BLOB,
        PRIMARY KEY (query_id, site)
    );
    CREATE INDEX targets_by_site ON targets(site, state);
    CREATE TABLE results (
        query_id TEXT PRIMARY KEY REFERENCES queries(id),
        arrow_ipc BLOB NOT NULL,
        rows INTEGER NOT NULL,
        merged_at INTEGER NOT NULL
    );
    CREATE TABLE nodes (
        site TEXT PRIMARY KEY,
        last_seen INTEGER NOT NULL,
        k INTEGER NOT NULL,
        version TEXT NOT NULL
    );
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        actor TEXT NOT NULL,
        kind TEXT NOT NULL,
        query_id TEXT NOT NULL DEFAULT '',
        site TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT ''
    );",
    // 2: every answer asks how many of its question's sites are still open; this index
    // answers from the index alone, without reading each target's row.
    "CREATE INDEX targets_by_query_state ON targets(query_id, state);",
    // 3: a question whose answers could not be merged ends with the reason, instead of
    // being merged again and again.
    "ALTER TABLE queries ADD COLUMN failure TEXT NOT NULL DEFAULT '';",
    // 4: the latest audit-log head each node reported, to find a log whose tail was
    // removed.
    "ALTER TABLE nodes ADD COLUMN audit_head TEXT NOT NULL DEFAULT '';",
    // 5: a researcher's questions are listed a page at a time and their open ones
    // counted at every submission.
    "CREATE INDEX queries_by_submitter ON queries(submitted_by, complete);",
    // 6: the steward's report, derived once at submission (JSON of
    // `ern_queries::ValidationReport`); empty for questions stored before.
    "ALTER TABLE queries ADD COLUMN report TEXT NOT NULL DEFAULT '';",
    // 7: secure aggregation. How a question's numbers are combined ('secure' or
    // 'per-site', and why an eligible one runs per site), and the network totals a
    // completed round released (after k; never a site's own vector).
    "ALTER TABLE queries ADD COLUMN mode TEXT NOT NULL DEFAULT 'per-site';
     ALTER TABLE queries ADD COLUMN mode_note TEXT NOT NULL DEFAULT '';
     ALTER TABLE queries ADD COLUMN secure_totals BLOB;",
    // 8: studies. Every question belongs to one, and approvals sign its id. A question
    // stored before was its own study (its approvals signed its id), so each gets a study
    // of that id, with its title and purpose and its researcher on it, created by the
    // coordinator.
    "CREATE TABLE studies (
        id TEXT PRIMARY KEY,
        title TEXT NOT NULL,
        purpose TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE study_researchers (
        study_id TEXT NOT NULL REFERENCES studies(id),
        user TEXT NOT NULL,
        PRIMARY KEY (study_id, user)
    );
    CREATE INDEX study_researchers_by_user ON study_researchers(user, study_id);
    ALTER TABLE queries ADD COLUMN study_id TEXT NOT NULL DEFAULT '';
    UPDATE queries SET study_id = id;
    INSERT INTO studies (id, title, purpose, created_at, created_by)
        SELECT id, title, purpose, submitted_at, 'coordinator' FROM queries;
    INSERT INTO study_researchers (study_id, user) SELECT id, submitted_by FROM queries;
    CREATE INDEX queries_by_study ON queries(submitted_by, study_id);",
    // 9: what kind of failure or resource refusal a node reported and its audit
    // reference (neither names a value); when a researcher withdrew a question.
    "ALTER TABLE targets ADD COLUMN category TEXT NOT NULL DEFAULT '';
     ALTER TABLE targets ADD COLUMN reference TEXT NOT NULL DEFAULT '';
     ALTER TABLE queries ADD COLUMN withdrawn_at INTEGER NOT NULL DEFAULT 0;",
    // 10: credentials that end: a token's expiry (0: never); node certificates revoked
    // by serial, and the serial each site's node last presented.
    "ALTER TABLE users ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 0;
     CREATE TABLE revoked_certificates (
        serial TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        revoked_at INTEGER NOT NULL,
        revoked_by TEXT NOT NULL
     );
     ALTER TABLE nodes ADD COLUMN certificate_serial TEXT NOT NULL DEFAULT '';",
];

/// Whether a capped submission was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Stored, awaiting approval.
    Stored,
    /// Not stored: the researcher has this many questions open already.
    OverLimit {
        /// Questions open.
        open: u64,
    },
}

/// Storage errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite failed.
    #[error("coordinator database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A row holds a value this version does not understand.
    #[error("coordinator database holds an unknown {what} {value:?}")]
    Corrupt {
        /// Which kind of value.
        what: &'static str,
        /// The value.
        value: String,
    },
    /// The database was written by a newer version.
    #[error("the coordinator database has schema version {found}; this build knows {known}")]
    TooNew {
        /// Version found.
        found: usize,
        /// Latest version known.
        known: usize,
    },
}

/// One lifecycle event for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When.
    pub at: u64,
    /// Who.
    pub actor: String,
    /// What kind.
    pub kind: EventKind,
    /// The question, or empty.
    pub query_id: String,
    /// The site, or empty.
    pub site: String,
    /// A rule, reason or reference; never a data value.
    pub detail: String,
}

/// A node's last known state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// Site id.
    pub site: String,
    /// Last message, seconds since the epoch.
    pub last_seen: u64,
    /// The k it reported.
    pub k: u32,
    /// Its version.
    pub version: String,
    /// The latest audit-log head it reported (empty if none yet).
    pub audit_head: String,
}

/// A piece of approved work ready for a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    /// The question.
    pub query_id: String,
    /// Its study (the approval's `study`).
    pub study_id: String,
    /// Its SQL.
    pub sql: String,
    /// The site steward's approval, as signed (the coordinator cannot verify it: only
    /// the node holds its stewards' public keys).
    pub approval: Approval,
}

/// The audit trail in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    /// Events by kind.
    pub counts: Vec<(String, u64)>,
    /// The latest events, newest first.
    pub recent: Vec<Event>,
}

/// A stored merged result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    /// Arrow IPC stream bytes.
    pub arrow_ipc: Vec<u8>,
    /// Rows.
    pub rows: u64,
    /// When merged.
    pub merged_at: u64,
}

/// The coordinator database. One connection behind a mutex: every operation is a short
/// transaction, and SQLite serialises writers anyway.
#[derive(Debug)]
pub struct Db {
    conn: Mutex<Connection>,
}

fn role_from(text: String) -> Result<Role, DbError> {
    Role::parse(&text).ok_or(DbError::Corrupt {
        what: "role",
        value: text,
    })
}

fn state_from(text: String) -> Result<SiteState, DbError> {
    SiteState::parse(&text).ok_or(DbError::Corrupt {
        what: "site state",
        value: text,
    })
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies migrations.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory database, for tests of this crate.
    pub fn open_in_memory() -> Result<Self, DbError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Self, DbError> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        let version: usize = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(DbError::TooNew {
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (index, script) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction()?;
            tx.execute_batch(script)?;
            tx.pragma_update(None, "user_version", index + 1)?;
            tx.commit()?;
        }
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    /// The connection, for a change that can be redone by the network (see the module
    /// documentation): committed without waiting for the disk. Back to FULL on drop.
    fn relaxed_conn(&self) -> Result<RelaxedGuard<'_>, DbError> {
        let guard = self.conn();
        execute_cached(&guard, "PRAGMA synchronous = NORMAL", [])?;
        Ok(RelaxedGuard(guard))
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-applied (SQLite
        // rolls back an uncommitted transaction), so a poisoned lock is still usable.
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The connection with `synchronous = NORMAL`, restored to FULL when dropped.
struct RelaxedGuard<'a>(MutexGuard<'a, Connection>);

impl std::ops::Deref for RelaxedGuard<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for RelaxedGuard<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl Drop for RelaxedGuard<'_> {
    fn drop(&mut self) {
        // Through the statement cache, as every relaxed change pays for both pragmas.
        if let Err(error) = execute_cached(&self.0, "PRAGMA synchronous = FULL", []) {
            tracing::error!(%error, "restoring synchronous = FULL");
        }
    }
}

/// `conn.execute`, through the connection's cache of prepared statements: the hot paths
/// (every dispatch and every answer) run the same few statements over and over, and
/// parsing each again cost more than running it.
fn execute_cached(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// `conn.query_row`, through the cache of prepared statements (see [`execute_cached`]).
fn query_row_cached<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    conn.prepare_cached(sql)?.query_row(params, map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synchronous(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("pragma")
    }

    #[test]
    fn relaxed_changes_leave_the_connection_at_full_durability() {
        // 2 = FULL, 1 = NORMAL (SQLite's numbering).
        let db = Db::open_in_memory().expect("db");
        assert_eq!(synchronous(&db.conn()), 2);
        {
            let relaxed = db.relaxed_conn().expect("relaxed");
            assert_eq!(synchronous(&relaxed), 1);
        }
        assert_eq!(synchronous(&db.conn()), 2);
        // Twice more, now through the statement cache.
        for _ in 0..2 {
            drop(db.relaxed_conn().expect("relaxed"));
            assert_eq!(synchronous(&db.conn()), 2);
        }
    }
}
