//! Questions: a submission with its targets and report, the lists of them, and how a
//! question ends (its merged table stored, or the reason its answers could not be merged).

use super::*;
use crate::lifecycle::QuestionState;

/// Which of a researcher's questions a list shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryFilter<'a> {
    /// Only this study's.
    pub study: Option<&'a str>,
    /// Only the questions in this state.
    pub state: Option<QuestionState>,
    /// Only those submitted at or after this time.
    pub submitted_after: u64,
    /// Only those submitted before this time (0 for no bound).
    pub submitted_before: u64,
}

/// What a withdrawal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// The question is withdrawn.
    Withdrawn,
    /// The question had already finished (merged, failed or withdrawn).
    Finished,
    /// No such question of this researcher.
    NotFound,
}

impl Db {
    /// Stores a submission with its targets, all awaiting approval, in one transaction.
    pub fn insert_query(&self, query: &StoredQuery, sites: &[String]) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_query_in(&tx, query, sites, "", PER_SITE)?;
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
        mode: &str,
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
        insert_query_in(&tx, query, sites, report, mode)?;
        tx.commit()?;
        Ok(Admission::Stored)
    }

    /// Stores a question over the public reference data with its answer, complete, in
    /// one transaction: it has no site, no steward and nothing to wait for.
    pub fn insert_reference_answer(
        &self,
        query: &StoredQuery,
        result: &StoredResult,
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        insert_query_in(&tx, query, &[], "", REFERENCE)?;
        let detail = format!("{} rows of reference data", result.rows);
        complete_with_result(&tx, &query.id, result, &detail)?;
        tx.commit()?;
        Ok(())
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
                "SELECT id, title, purpose, sql, query_hash, submitted_by, submitted_at, deadline, complete, failure, study_id, withdrawn_at
                 FROM queries WHERE id = ?1",
                params![id],
                query_from_row,
            )
            .optional()?)
    }

    /// Questions submitted by `user` that pass `filter`, newest first, with their row
    /// ids: `limit` of them before the row `before_row`.
    pub fn queries_by(
        &self,
        user: &str,
        filter: &QueryFilter<'_>,
        before_row: i64,
        limit: i64,
    ) -> Result<Vec<(i64, StoredQuery)>, DbError> {
        let conn = self.conn();
        // Each condition is on or off; a disabled one is a literal truth, so one prepared
        // statement serves every combination.
        let state_condition = match filter.state {
            None => "1",
            Some(QuestionState::Open) => "complete = 0",
            Some(QuestionState::Merged) => "complete = 1 AND failure = '' AND withdrawn_at = 0",
            Some(QuestionState::MergeFailed) => "failure != ''",
            Some(QuestionState::Withdrawn) => "withdrawn_at != 0",
        };
        let sql = format!(
            "SELECT id, title, purpose, sql, query_hash, submitted_by, submitted_at, deadline, complete, failure, study_id, withdrawn_at, rowid
             FROM queries
             WHERE submitted_by = ?1 AND rowid < ?2 AND (?4 = '' OR study_id = ?4)
               AND submitted_at >= ?5 AND submitted_at < ?6 AND {state_condition}
             ORDER BY rowid DESC LIMIT ?3"
        );
        let mut statement = conn.prepare_cached(&sql)?;
        let rows = statement.query_map(
            params![
                user,
                before_row,
                limit,
                filter.study.unwrap_or(""),
                filter.submitted_after as i64,
                match filter.submitted_before {
                    0 => i64::MAX,
                    before => before.min(i64::MAX as u64) as i64,
                },
            ],
            |row| Ok((row.get::<_, i64>(12)?, query_from_row(row)?)),
        )?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Withdraws `user`'s question `query_id`: every site part still open ends
    /// withdrawn and the question ends with nothing merged, in one transaction.
    pub fn withdraw(&self, query_id: &str, user: &str, now: u64) -> Result<Withdrawal, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let found: Option<(String, i64)> = tx
            .query_row(
                "SELECT submitted_by, complete FROM queries WHERE id = ?1",
                params![query_id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()?;
        match found {
            Some((owner, _)) if owner != user => return Ok(Withdrawal::NotFound),
            None => return Ok(Withdrawal::NotFound),
            Some((_, complete)) if complete != 0 => return Ok(Withdrawal::Finished),
            Some(_) => {}
        }
        let open: Vec<String> = {
            let mut statement = tx.prepare_cached(
                "SELECT site FROM targets WHERE query_id = ?1 AND state IN (?2, ?3, ?4) ORDER BY site",
            )?;
            let from = SiteStep::Withdraw.from();
            let rows = statement.query_map(
                params![
                    query_id,
                    from[0].as_str(),
                    from[1].as_str(),
                    from[2].as_str()
                ],
                |row| row.get(0),
            )?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        for site in &open {
            super::sites::step_in(
                &tx,
                query_id,
                site,
                SiteStep::Withdraw,
                user,
                "withdrawn by its researcher",
                now,
            )?;
        }
        execute_cached(
            &tx,
            "UPDATE queries SET complete = 1, withdrawn_at = ?2 WHERE id = ?1",
            params![query_id, now as i64],
        )?;
        insert_event(
            &tx,
            &Event {
                at: now,
                actor: user.to_string(),
                kind: EventKind::Withdrawn,
                query_id: query_id.to_string(),
                site: String::new(),
                detail: format!("{} open sites", open.len()),
            },
        )?;
        tx.commit()?;
        Ok(Withdrawal::Withdrawn)
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

    /// Stores the merged table and marks the question complete, in one transaction.
    pub fn store_result(&self, query_id: &str, result: &StoredResult) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let stored = complete_with_result(&tx, query_id, result, &format!("{} rows", result.rows))?;
        tx.commit()?;
        Ok(stored)
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
}

/// A question from the columns `id, title, purpose, sql, query_hash, submitted_by,
/// submitted_at, deadline, complete, failure, study_id, withdrawn_at`, in that order.
pub(super) fn query_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredQuery> {
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
        study_id: row.get(10)?,
        withdrawn_at: row.get::<_, i64>(11)? as u64,
    })
}

/// Marks an open question complete with its table and records the merge, inside the
/// caller's transaction; false when it had already ended.
fn complete_with_result(
    tx: &Connection,
    query_id: &str,
    result: &StoredResult,
    detail: &str,
) -> Result<bool, DbError> {
    let changed = execute_cached(
        tx,
        "UPDATE queries SET complete = 1 WHERE id = ?1 AND complete = 0",
        params![query_id],
    )?;
    if changed == 1 {
        execute_cached(
            tx,
            "INSERT INTO results (query_id, arrow_ipc, rows, merged_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                query_id,
                result.arrow_ipc,
                result.rows as i64,
                result.merged_at as i64
            ],
        )?;
        insert_event(
            tx,
            &Event {
                at: result.merged_at,
                actor: "coordinator".into(),
                kind: EventKind::Merged,
                query_id: query_id.to_string(),
                site: String::new(),
                detail: detail.to_string(),
            },
        )?;
    }
    Ok(changed == 1)
}

/// The rows of one submission, inside the caller's transaction.
fn insert_query_in(
    tx: &Connection,
    query: &StoredQuery,
    sites: &[String],
    report: &str,
    mode: &str,
) -> Result<(), DbError> {
    execute_cached(tx,
        "INSERT INTO queries (id, title, purpose, sql, query_hash, submitted_by, submitted_at, deadline, report, mode, study_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        params![
            query.id,
            query.title,
            query.purpose,
            query.sql,
            query.query_hash,
            query.submitted_by,
            query.submitted_at as i64,
            query.deadline as i64,
            report,
            mode,
            query.study_id
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
            detail: format!("study {}", query.study_id),
        },
    )?;
    Ok(())
}
