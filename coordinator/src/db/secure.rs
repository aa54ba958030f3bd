//! Secure-aggregation questions: their mode, their one round's steps, and the network
//! totals a completed round released. A round itself (statements, the running sum of
//! masked vectors) lives only in memory: a round a restart interrupted fails, and is
//! never run again.

use super::*;

/// The stored name of the secure mode.
pub const SECURE: &str = "secure";

/// The stored name of the per-site mode.
pub const PER_SITE: &str = "per-site";

/// The stored name of a question over the public reference data alone, answered by the
/// coordinator without any site.
pub const REFERENCE: &str = "reference";

impl Db {
    /// A question's mode (`secure` or `per-site`) and why an eligible one runs per site.
    pub fn mode(&self, query_id: &str) -> Result<Option<(String, String)>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT mode, mode_note FROM queries WHERE id = ?1",
            params![query_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?)
    }

    /// Open questions that run under secure aggregation.
    pub fn open_secure_queries(&self) -> Result<Vec<String>, DbError> {
        let conn = self.conn();
        let mut statement =
            conn.prepare_cached("SELECT id FROM queries WHERE complete = 0 AND mode = ?1")?;
        let rows = statement.query_map(params![SECURE], |row| row.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    /// Turns a secure question per-site before any round started (a participant's policy
    /// turns secure aggregation off, or too few sites approved), with the reason.
    pub fn run_per_site(&self, query_id: &str, note: &str) -> Result<bool, DbError> {
        let conn = self.conn();
        let changed = execute_cached(
            &conn,
            "UPDATE queries SET mode = ?2, mode_note = ?3 WHERE id = ?1 AND mode = ?4",
            params![query_id, PER_SITE, note, SECURE],
        )?;
        Ok(changed == 1)
    }

    /// Dispatches a secure question to every participant at once, in one transaction,
    /// recording the round's start; false (and nothing changed) unless every participant
    /// was approved.
    pub fn start_round(
        &self,
        query_id: &str,
        participants: &[String],
        round_id: &str,
        now: u64,
    ) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for site in participants {
            let changed = execute_cached(
                &tx,
                "UPDATE targets SET state = ?3, dispatched_at = ?4, updated_at = ?4
                 WHERE query_id = ?1 AND site = ?2 AND state = ?5",
                params![
                    query_id,
                    site,
                    SiteStep::Dispatch.to().as_str(),
                    now as i64,
                    SiteState::Approved.as_str()
                ],
            )?;
            if changed != 1 {
                return Ok(false);
            }
        }
        insert_event(
            &tx,
            &Event {
                at: now,
                actor: "coordinator".into(),
                kind: EventKind::RoundStarted,
                query_id: query_id.to_string(),
                site: String::new(),
                detail: format!("round {round_id}: {}", participants.join(", ")),
            },
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// A completed round: every participant aggregated, and the released totals stored,
    /// in one transaction.
    pub fn complete_round(
        &self,
        query_id: &str,
        participants: &[String],
        totals: &[u8],
        now: u64,
    ) -> Result<bool, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for site in participants {
            if !sites::step_in(
                &tx,
                query_id,
                site,
                SiteStep::Aggregate,
                &format!("node:{site}"),
                "",
                now,
            )? {
                return Ok(false);
            }
        }
        execute_cached(
            &tx,
            "UPDATE queries SET secure_totals = ?2 WHERE id = ?1",
            params![query_id, totals],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// A round that did not complete: the site that broke it takes its own step (a
    /// refusal or failure, with its detail), every other participant still dispatched
    /// ends round-failed with `reason`, in one transaction.
    pub fn fail_round(
        &self,
        query_id: &str,
        culprit: Option<(&str, SiteStep, &str)>,
        reason: &str,
        now: u64,
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some((site, step, detail)) = culprit {
            sites::step_in(
                &tx,
                query_id,
                site,
                step,
                &format!("node:{site}"),
                detail,
                now,
            )?;
        }
        let dispatched: Vec<String> = {
            let mut statement = tx.prepare_cached(
                "SELECT site FROM targets WHERE query_id = ?1 AND state = ?2 ORDER BY site",
            )?;
            let rows = statement
                .query_map(params![query_id, SiteState::Dispatched.as_str()], |row| {
                    row.get(0)
                })?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        for site in dispatched {
            sites::step_in(
                &tx,
                query_id,
                &site,
                SiteStep::FailRound,
                "coordinator",
                reason,
                now,
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The network totals a completed round released (an Arrow IPC stream), if any.
    pub fn secure_totals(&self, query_id: &str) -> Result<Option<Vec<u8>>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT secure_totals FROM queries WHERE id = ?1",
            params![query_id],
            |row| row.get::<_, Option<Vec<u8>>>(0),
        )
        .optional()?
        .flatten())
    }

    /// The approved work of one secure question for one site (its approval, as signed),
    /// if the site's part is approved.
    pub fn approved_secure_work(
        &self,
        query_id: &str,
        site: &str,
    ) -> Result<Option<WorkItem>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT q.sql, q.query_hash, t.approval_expires, t.approval_key_id, t.approval_signature, q.study_id
             FROM targets t JOIN queries q ON q.id = t.query_id
             WHERE t.query_id = ?1 AND t.site = ?2 AND t.state = ?3",
            params![query_id, site, SiteState::Approved.as_str()],
            |row| {
                let study_id: String = row.get(5)?;
                Ok(WorkItem {
                    query_id: query_id.to_string(),
                    sql: row.get(0)?,
                    approval: Approval {
                        study_id: study_id.clone(),
                        site_id: site.to_string(),
                        query_hash: row.get(1)?,
                        expires_at: row.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
                        key_id: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                        signature: row.get::<_, Option<Vec<u8>>>(4)?.unwrap_or_default(),
                    },
                    study_id,
                })
            },
        )
        .optional()?)
    }
}
