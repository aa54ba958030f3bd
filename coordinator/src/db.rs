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

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

use ern_proto::approval::{Approval, study_of};

use crate::lifecycle::{EventKind, SiteStep};
use crate::model::{Role, SiteState, StoredQuery, Target, User};

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

    // -- users -------------------------------------------------------------------------

    /// Adds a user; false if the name is taken.
    pub fn add_user(&self, user: &User, token_hash: &[u8]) -> Result<bool, DbError> {
        let conn = self.conn();
        let changed = execute_cached(
            &conn,
            "INSERT OR IGNORE INTO users (name, role, site, token_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                user.name,
                user.role.as_str(),
                user.site,
                token_hash,
                user.created_at as i64
            ],
        )?;
        Ok(changed == 1)
    }

    /// The user whose token hashes to `token_hash`, with the stored hash.
    pub fn user_by_token_hash(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(User, Vec<u8>)>, DbError> {
        let conn = self.conn();
        let row = query_row_cached(
            &conn,
            "SELECT name, role, site, created_at, token_hash FROM users WHERE token_hash = ?1",
            params![token_hash],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Vec<u8>>(4)?,
                ))
            },
        )
        .optional()?;
        row.map(|(name, role, site, created_at, hash)| {
            Ok((
                User {
                    name,
                    role: role_from(role)?,
                    site,
                    created_at: created_at as u64,
                },
                hash,
            ))
        })
        .transpose()
    }

    /// Users by name, `limit` of them after the name `after` ("" for the first).
    pub fn users(&self, after: &str, limit: i64) -> Result<Vec<User>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT name, role, site, created_at FROM users WHERE name > ?1 ORDER BY name LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?;
        let mut users = Vec::new();
        for row in rows {
            let (name, role, site, created_at) = row?;
            users.push(User {
                name,
                role: role_from(role)?,
                site,
                created_at: created_at as u64,
            });
        }
        Ok(users)
    }

    /// Sites with an enrolled node, sorted, `limit` of them after the site `after`.
    pub fn sites_page(&self, after: &str, limit: i64) -> Result<Vec<String>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT DISTINCT site FROM users WHERE role = 'node' AND site > ?1 ORDER BY site LIMIT ?2",
        )?;
        let sites = statement
            .query_map(params![after, limit], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(sites)
    }

    /// Sites with an enrolled node, sorted.
    pub fn sites(&self) -> Result<Vec<String>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT DISTINCT site FROM users WHERE role = 'node' AND site <> '' ORDER BY site",
        )?;
        let sites = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<Vec<String>, _>>()?;
        Ok(sites)
    }

    // -- queries -----------------------------------------------------------------------

    /// Stores a submission with its targets, all awaiting approval, in one transaction.
    pub fn insert_query(&self, query: &StoredQuery, sites: &[String]) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_query_in(&tx, query, sites, "")?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a submission as [`Db::insert_query`] does, with the steward's report
    /// (`report`, JSON), unless its researcher already has `max_open` questions open
    /// (neither complete nor failed): counted and stored in one transaction, so concurrent
    /// submissions cannot pass the cap together.
    pub fn insert_query_capped(
        &self,
        query: &StoredQuery,
        sites: &[String],
        report: &str,
        max_open: u64,
    ) -> Result<Admission, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let open: i64 = tx.query_row(
            "SELECT COUNT(*) FROM queries WHERE submitted_by = ?1 AND complete = 0 AND failure = ''",
            params![query.submitted_by],
            |row| row.get(0),
        )?;
        if open as u64 >= max_open {
            return Ok(Admission::OverLimit { open: open as u64 });
        }
        insert_query_in(&tx, query, sites, report)?;
        tx.commit()?;
        Ok(Admission::Stored)
    }

    /// The steward's report stored with a question at submission (JSON; empty for a
    /// question stored without one).
    pub fn report(&self, id: &str) -> Result<Option<String>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT report FROM queries WHERE id = ?1",
            params![id],
            |row| row.get(0),
        )
        .optional()?)
    }

    /// One question.
    pub fn query(&self, id: &str) -> Result<Option<StoredQuery>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(&conn,
                "SELECT id, title, purpose, sql, query_hash, submitted_by, submitted_at, deadline, complete, failure
                 FROM queries WHERE id = ?1",
                params![id],
                query_from_row,
            )
            .optional()?)
    }

    /// Questions submitted by `user`, newest first, with their row ids: `limit` of them
    /// before the row `before_row`.
    pub fn queries_by(
        &self,
        user: &str,
        before_row: i64,
        limit: i64,
    ) -> Result<Vec<(i64, StoredQuery)>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT id, title, purpose, sql, query_hash, submitted_by, submitted_at, deadline, complete, failure, rowid
             FROM queries WHERE submitted_by = ?1 AND rowid < ?2 ORDER BY rowid DESC LIMIT ?3",
        )?;
        let rows = statement.query_map(params![user, before_row, limit], |row| {
            Ok((row.get::<_, i64>(10)?, query_from_row(row)?))
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// How many of `user`'s questions are open: neither complete nor failed.
    pub fn open_questions_of(&self, user: &str) -> Result<u64, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT COUNT(*) FROM queries WHERE submitted_by = ?1 AND complete = 0 AND failure = ''",
        )?;
        let open: i64 = statement.query_row(params![user], |row| row.get(0))?;
        Ok(open as u64)
    }

    /// Questions not yet complete.
    pub fn open_queries(&self) -> Result<Vec<String>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached("SELECT id FROM queries WHERE complete = 0")?;
        let rows = statement.query_map([], |row| row.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    /// The targets of one question, by site.
    pub fn targets(&self, query_id: &str) -> Result<Vec<Target>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT site, state, detail, updated_at, partial FROM targets WHERE query_id = ?1 ORDER BY site",
        )?;
        let rows = statement.query_map(params![query_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<Vec<u8>>>(4)?,
            ))
        })?;
        let mut targets = Vec::new();
        for row in rows {
            let (site, state, detail, updated_at, partial) = row?;
            targets.push(Target {
                query_id: query_id.to_string(),
                site,
                state: state_from(state)?,
                detail,
                updated_at: updated_at as u64,
                partial,
            });
        }
        Ok(targets)
    }

    /// How many sites of a question have not finished.
    pub fn unfinished_sites(&self, query_id: &str) -> Result<u32, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT COUNT(*) FROM targets WHERE query_id = ?1 AND state IN (?2, ?3, ?4)",
            params![
                query_id,
                SiteState::AwaitingApproval.as_str(),
                SiteState::Approved.as_str(),
                SiteState::Dispatched.as_str()
            ],
            |row| row.get(0),
        )?)
    }

    /// Questions waiting for `site`'s steward, oldest first, with their row ids: `limit`
    /// of them after the row `after_row`.
    pub fn pending_for_site(
        &self,
        site: &str,
        now: u64,
        after_row: i64,
        limit: i64,
    ) -> Result<Vec<(i64, StoredQuery)>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT q.id, q.title, q.purpose, q.sql, q.query_hash, q.submitted_by, q.submitted_at, q.deadline, q.complete, q.failure, q.rowid
             FROM queries q JOIN targets t ON t.query_id = q.id
             WHERE t.site = ?1 AND t.state = ?2 AND q.deadline > ?3 AND q.rowid > ?4
             ORDER BY q.rowid LIMIT ?5",
        )?;
        let rows = statement.query_map(
            params![
                site,
                SiteState::AwaitingApproval.as_str(),
                now as i64,
                after_row,
                limit
            ],
            |row| Ok((row.get::<_, i64>(10)?, query_from_row(row)?)),
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Takes `step` for `site`'s part in a question, recording the step's event by
    /// `actor` with `detail`, if the part is in a state the step leaves. Returns whether
    /// it moved.
    pub fn step(
        &self,
        query_id: &str,
        site: &str,
        step: SiteStep,
        actor: &str,
        detail: &str,
        now: u64,
    ) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let moved = step_in(&tx, query_id, site, step, actor, detail, now)?;
        tx.commit()?;
        Ok(moved)
    }

    /// Stores a steward's approval and moves the site's part to approved, if it awaits
    /// one ([`SiteStep::Approve`]).
    pub fn approve(
        &self,
        query_id: &str,
        approved_by: &str,
        approval: &Approval,
        now: u64,
    ) -> Result<bool, DbError> {
        let step = SiteStep::Approve;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = execute_cached(&tx,
            "UPDATE targets SET state = ?3, updated_at = ?4, approved_by = ?5, approval_expires = ?6,
                 approval_key_id = ?7, approval_signature = ?8, detail = ''
             WHERE query_id = ?1 AND site = ?2 AND state = ?9",
            params![
                query_id,
                approval.site_id,
                step.to().as_str(),
                now as i64,
                approved_by,
                approval.expires_at as i64,
                approval.key_id,
                approval.signature,
                sole_from(step).as_str()
            ],
        )?;
        if changed == 1 {
            record_step(
                &tx,
                query_id,
                &approval.site_id,
                step,
                approved_by,
                &format!("key {}", approval.key_id),
                now,
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Approved work for `site` whose question has not passed its deadline.
    pub fn approved_work(&self, site: &str, now: u64) -> Result<Vec<WorkItem>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT q.id, q.sql, q.query_hash, t.approval_expires, t.approval_key_id, t.approval_signature
             FROM targets t JOIN queries q ON q.id = t.query_id
             WHERE t.site = ?1 AND t.state = ?2 AND q.deadline > ?3
             ORDER BY t.updated_at, q.rowid",
        )?;
        let rows = statement.query_map(
            params![site, sole_from(SiteStep::Dispatch).as_str(), now as i64],
            |row| {
                let query_id: String = row.get(0)?;
                Ok(WorkItem {
                    sql: row.get(1)?,
                    approval: Approval {
                        study_id: study_of(&query_id).to_string(),
                        site_id: site.to_string(),
                        query_hash: row.get(2)?,
                        expires_at: row.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                        key_id: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        signature: row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                    },
                    query_id,
                })
            },
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Marks approved work as sent to the node; false if it was no longer approved (so
    /// no piece of work is sent twice on one connection).
    pub fn mark_dispatched(&self, query_id: &str, site: &str, now: u64) -> Result<bool, DbError> {
        let conn = self.relaxed_conn()?;
        let changed = execute_cached(
            &conn,
            "UPDATE targets SET state = ?3, dispatched_at = ?4, updated_at = ?4
             WHERE query_id = ?1 AND site = ?2 AND state = ?5",
            params![
                query_id,
                site,
                SiteStep::Dispatch.to().as_str(),
                now as i64,
                sole_from(SiteStep::Dispatch).as_str()
            ],
        )?;
        Ok(changed == 1)
    }

    /// Puts every piece of work dispatched to `site` back to approved (its connection
    /// ended before an answer), so it is sent again on the next connection.
    pub fn requeue_dispatched(&self, site: &str, now: u64) -> Result<usize, DbError> {
        let conn = self.relaxed_conn()?;
        Ok(execute_cached(
            &conn,
            "UPDATE targets SET state = ?2, updated_at = ?3, dispatched_at = NULL WHERE site = ?1 AND state = ?4",
            params![
                site,
                SiteStep::Requeue.to().as_str(),
                now as i64,
                sole_from(SiteStep::Requeue).as_str()
            ],
        )?)
    }

    /// Stores a node's answer for dispatched work, taking `step` ([`SiteStep::Answer`],
    /// [`SiteStep::Refuse`] or [`SiteStep::Fail`]); false if the work was not dispatched
    /// (late, duplicate or unknown answers are ignored).
    pub fn record_answer(
        &self,
        query_id: &str,
        site: &str,
        step: SiteStep,
        detail: &str,
        partial: Option<&[u8]>,
        now: u64,
    ) -> Result<bool, DbError> {
        let mut conn = self.relaxed_conn()?;
        let tx = conn.transaction()?;
        let changed = execute_cached(
            &tx,
            "UPDATE targets SET state = ?3, detail = ?4, partial = ?5, updated_at = ?6
             WHERE query_id = ?1 AND site = ?2 AND state = ?7",
            params![
                query_id,
                site,
                step.to().as_str(),
                detail,
                partial,
                now as i64,
                sole_from(step).as_str()
            ],
        )?;
        if changed == 1 {
            record_step(
                &tx,
                query_id,
                site,
                step,
                &format!("node:{site}"),
                detail,
                now,
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Expires unfinished targets of questions past their deadline
    /// ([`SiteStep::Expire`]) and fails dispatched work older than `dispatched_before`
    /// ([`SiteStep::TimeOut`]). Returns the questions touched.
    pub fn expire(&self, now: u64, dispatched_before: u64) -> Result<Vec<String>, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut touched = Vec::new();
        {
            let mut expired = Vec::new();
            for state in SiteStep::Expire.from() {
                let mut statement = tx.prepare_cached(
                    "SELECT t.query_id, t.site FROM targets t JOIN queries q ON q.id = t.query_id
                     WHERE q.deadline <= ?1 AND t.state = ?2",
                )?;
                let rows = statement.query_map(params![now as i64, state.as_str()], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })?;
                expired.extend(rows.collect::<Result<Vec<_>, _>>()?);
            }
            for (query_id, site) in expired {
                if step_in(
                    &tx,
                    &query_id,
                    &site,
                    SiteStep::Expire,
                    "coordinator",
                    "deadline",
                    now,
                )? {
                    touched.push(query_id);
                }
            }
            let mut statement = tx.prepare_cached(
                "SELECT query_id, site FROM targets WHERE state = ?1 AND dispatched_at < ?2",
            )?;
            let rows = statement.query_map(
                params![
                    sole_from(SiteStep::TimeOut).as_str(),
                    dispatched_before as i64
                ],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
            )?;
            let late = rows.collect::<Result<Vec<_>, _>>()?;
            for (query_id, site) in late {
                if step_in(
                    &tx,
                    &query_id,
                    &site,
                    SiteStep::TimeOut,
                    "coordinator",
                    "timeout",
                    now,
                )? {
                    touched.push(query_id);
                }
            }
        }
        tx.commit()?;
        touched.sort();
        touched.dedup();
        Ok(touched)
    }

    /// Stores the merged table and marks the question complete, in one transaction.
    pub fn store_result(&self, query_id: &str, result: &StoredResult) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = execute_cached(
            &tx,
            "UPDATE queries SET complete = 1 WHERE id = ?1 AND complete = 0",
            params![query_id],
        )?;
        if changed == 1 {
            execute_cached(
                &tx,
                "INSERT INTO results (query_id, arrow_ipc, rows, merged_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    query_id,
                    result.arrow_ipc,
                    result.rows as i64,
                    result.merged_at as i64
                ],
            )?;
            insert_event(
                &tx,
                &Event {
                    at: result.merged_at,
                    actor: "coordinator".into(),
                    kind: EventKind::Merged,
                    query_id: query_id.to_string(),
                    site: String::new(),
                    detail: format!("{} rows", result.rows),
                },
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// Ends a question whose answers could not be merged, with the reason the researcher
    /// sees; false when it had already ended.
    pub fn fail_merge(&self, query_id: &str, reason: &str, at: u64) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = execute_cached(
            &tx,
            "UPDATE queries SET complete = 1, failure = ?2 WHERE id = ?1 AND complete = 0",
            params![query_id, reason],
        )?;
        if changed == 1 {
            insert_event(
                &tx,
                &Event {
                    at,
                    actor: "coordinator".into(),
                    kind: EventKind::MergeFailed,
                    query_id: query_id.to_string(),
                    site: String::new(),
                    detail: reason.to_string(),
                },
            )?;
        }
        tx.commit()?;
        Ok(changed == 1)
    }

    /// A question's merged table.
    pub fn result(&self, query_id: &str) -> Result<Option<StoredResult>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT arrow_ipc, rows, merged_at FROM results WHERE query_id = ?1",
            params![query_id],
            |row| {
                Ok(StoredResult {
                    arrow_ipc: row.get(0)?,
                    rows: row.get::<_, i64>(1)? as u64,
                    merged_at: row.get::<_, i64>(2)? as u64,
                })
            },
        )
        .optional()?)
    }

    // -- nodes and events --------------------------------------------------------------

    /// Records that a site's node was heard from.
    pub fn touch_node(&self, node: &NodeRecord) -> Result<(), DbError> {
        let conn = self.conn();
        execute_cached(&conn,
            "INSERT INTO nodes (site, last_seen, k, version) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(site) DO UPDATE SET last_seen = excluded.last_seen, k = excluded.k, version = excluded.version",
            params![node.site, node.last_seen as i64, node.k, node.version],
        )?;
        Ok(())
    }

    /// Updates only a node's last-seen time.
    pub fn node_seen(&self, site: &str, now: u64) -> Result<(), DbError> {
        // A sign of life is redone by the next one: no need to wait for the disk.
        let conn = self.relaxed_conn()?;
        execute_cached(
            &conn,
            "UPDATE nodes SET last_seen = ?2 WHERE site = ?1",
            params![site, now as i64],
        )?;
        Ok(())
    }

    /// Keeps the latest audit-log head a site's node reported. Redone by the node's next
    /// message, so it does not wait for the disk.
    pub fn node_audit_head(&self, site: &str, head: &str) -> Result<(), DbError> {
        let conn = self.relaxed_conn()?;
        execute_cached(
            &conn,
            "UPDATE nodes SET audit_head = ?2 WHERE site = ?1 AND audit_head <> ?2",
            params![site, head],
        )?;
        Ok(())
    }

    /// What is known of a site's node.
    pub fn node(&self, site: &str) -> Result<Option<NodeRecord>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT site, last_seen, k, version, audit_head FROM nodes WHERE site = ?1",
            params![site],
            |row| {
                Ok(NodeRecord {
                    site: row.get(0)?,
                    last_seen: row.get::<_, i64>(1)? as u64,
                    k: row.get(2)?,
                    version: row.get(3)?,
                    audit_head: row.get(4)?,
                })
            },
        )
        .optional()?)
    }

    /// Dispatched, unanswered work per site.
    pub fn in_flight(&self, site: &str) -> Result<u32, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT COUNT(*) FROM targets WHERE site = ?1 AND state = ?2",
            params![site, SiteState::Dispatched.as_str()],
            |row| row.get(0),
        )?)
    }

    /// Records an event on its own.
    pub fn record_event(&self, event: &Event) -> Result<(), DbError> {
        let conn = self.conn();
        insert_event(&conn, event)?;
        Ok(())
    }

    /// Event counts by kind, and the latest `recent` events, newest first.
    pub fn audit_summary(&self, recent: u32) -> Result<AuditSummary, DbError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached("SELECT kind, COUNT(*) FROM events GROUP BY kind ORDER BY kind")?;
        let counts = statement
            .query_map([], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut statement = conn.prepare_cached(
            "SELECT at, actor, kind, query_id, site, detail FROM events ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = statement
            .query_map(params![recent], |row| {
                Ok((
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                ))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let events = rows
            .into_iter()
            .map(|(at, actor, kind, query_id, site, detail)| {
                Ok(Event {
                    at,
                    actor,
                    kind: EventKind::parse(&kind).ok_or(DbError::Corrupt {
                        what: "event kind",
                        value: kind,
                    })?,
                    query_id,
                    site,
                    detail,
                })
            })
            .collect::<Result<Vec<_>, DbError>>()?;
        Ok(AuditSummary {
            counts,
            recent: events,
        })
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

fn query_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredQuery> {
    Ok(StoredQuery {
        id: row.get(0)?,
        title: row.get(1)?,
        purpose: row.get(2)?,
        sql: row.get(3)?,
        query_hash: row.get(4)?,
        submitted_by: row.get(5)?,
        submitted_at: row.get::<_, i64>(6)? as u64,
        deadline: row.get::<_, i64>(7)? as u64,
        complete: row.get::<_, i64>(8)? != 0,
        failure: row.get(9)?,
    })
}

/// The rows of one submission, inside the caller's transaction.
fn insert_query_in(
    tx: &Connection,
    query: &StoredQuery,
    sites: &[String],
    report: &str,
) -> Result<(), DbError> {
    execute_cached(tx,
        "INSERT INTO queries (id, title, purpose, sql, query_hash, submitted_by, submitted_at, deadline, report)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            query.id,
            query.title,
            query.purpose,
            query.sql,
            query.query_hash,
            query.submitted_by,
            query.submitted_at as i64,
            query.deadline as i64,
            report
        ],
    )?;
    for site in sites {
        execute_cached(
            tx,
            "INSERT INTO targets (query_id, site, state, updated_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                query.id,
                site,
                SiteState::AwaitingApproval.as_str(),
                query.submitted_at as i64
            ],
        )?;
    }
    insert_event(
        tx,
        &Event {
            at: query.submitted_at,
            actor: query.submitted_by.clone(),
            kind: EventKind::Submitted,
            query_id: query.id.clone(),
            site: String::new(),
            detail: String::new(),
        },
    )?;
    Ok(())
}

/// The one state a step leaves, for the steps that leave one.
fn sole_from(step: SiteStep) -> SiteState {
    let from = step.from();
    debug_assert_eq!(from.len(), 1, "{step:?}");
    from[0]
}

/// Takes `step` for a site's part, with `detail`, and records its event.
fn step_in(
    conn: &Connection,
    query_id: &str,
    site: &str,
    step: SiteStep,
    actor: &str,
    detail: &str,
    now: u64,
) -> Result<bool, DbError> {
    for state in step.from() {
        let changed = execute_cached(
            conn,
            "UPDATE targets SET state = ?3, detail = ?4, updated_at = ?5 WHERE query_id = ?1 AND site = ?2 AND state = ?6",
            params![
                query_id,
                site,
                step.to().as_str(),
                detail,
                now as i64,
                state.as_str()
            ],
        )?;
        if changed == 1 {
            record_step(conn, query_id, site, step, actor, detail, now)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// Records the event of a step taken, if the step records one.
fn record_step(
    conn: &Connection,
    query_id: &str,
    site: &str,
    step: SiteStep,
    actor: &str,
    detail: &str,
    now: u64,
) -> Result<(), DbError> {
    let Some(kind) = step.event() else {
        return Ok(());
    };
    insert_event(
        conn,
        &Event {
            at: now,
            actor: actor.to_string(),
            kind,
            query_id: query_id.to_string(),
            site: site.to_string(),
            detail: detail.to_string(),
        },
    )
}

fn insert_event(conn: &Connection, event: &Event) -> Result<(), DbError> {
    execute_cached(
        conn,
        "INSERT INTO events (at, actor, kind, query_id, site, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            event.at as i64,
            event.actor,
            event.kind.as_str(),
            event.query_id,
            event.site,
            event.detail
        ],
    )?;
    Ok(())
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
