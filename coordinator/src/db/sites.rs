//! Each site's part in a question, moved only by the steps of [`crate::lifecycle`]:
//! approvals, dispatch, requeue, answers, deadlines and timeouts.

use super::*;

/// Rules a node refuses by that a steward's new approval can cure: the approval's own
/// checks (all named `approval-…`).
const APPROVAL_RULE_PREFIX: &str = "approval-";

/// A node's answer to one piece of work, as kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Answer<'a> {
    /// The rule (refused) or reference (failed); empty when answered.
    pub detail: &'a str,
    /// The released partials (answered only).
    pub partial: Option<&'a [u8]>,
    /// What kind of failure or resource refusal; empty otherwise.
    pub category: &'a str,
    /// The node's audit reference; empty where it gave none.
    pub reference: &'a str,
}

/// What a steward's approval of a part that is not awaiting one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reapproval {
    /// The new approval replaced the old; the work goes out again.
    Reapproved,
    /// The part cannot be approved again; the reason names the state and why.
    Refused(String),
}

impl Db {
    /// The targets of one question, by site.
    pub fn targets(&self, query_id: &str) -> Result<Vec<Target>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT site, state, detail, updated_at, partial, category, reference FROM targets WHERE query_id = ?1 ORDER BY site",
        )?;
        let rows = statement.query_map(params![query_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<Vec<u8>>>(4)?,
                row.get::<_, String>(5)?,
                row.get::<_, String>(6)?,
            ))
        })?;
        let mut targets = Vec::new();
        for row in rows {
            let (site, state, detail, updated_at, partial, category, reference) = row?;
            targets.push(Target {
                query_id: query_id.to_string(),
                site,
                state: state_from(state)?,
                detail,
                category,
                reference,
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
            "SELECT q.id, q.title, q.purpose, q.sql, q.query_hash, q.submitted_by, q.submitted_at, q.deadline, q.complete, q.failure, q.study_id, q.withdrawn_at, q.rowid
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
            |row| Ok((row.get::<_, i64>(12)?, query_from_row(row)?)),
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

    /// Approves again a part refused by an approval check or rejected by `steward`
    /// ([`SiteStep::Reapprove`]): the new approval replaces the old, the part's answer
    /// and the question's merged table (if any) are dropped, and the question is open
    /// again, in one transaction. A secure-aggregation question is re-approved only
    /// before its round started: a round is never run twice nor joined late.
    pub fn reapprove(
        &self,
        query_id: &str,
        steward: &str,
        approval: &Approval,
        now: u64,
    ) -> Result<Reapproval, DbError> {
        let step = SiteStep::Reapprove;
        let site = approval.site_id.as_str();
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let part: Option<(String, String, i64, i64, String)> = tx
            .query_row(
                "SELECT t.state, t.detail, q.deadline, q.withdrawn_at, q.mode
                 FROM targets t JOIN queries q ON q.id = t.query_id
                 WHERE t.query_id = ?1 AND t.site = ?2",
                params![query_id, site],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )
            .optional()?;
        let Some((state, detail, deadline, withdrawn_at, mode)) = part else {
            return Ok(Reapproval::Refused(format!(
                "question {query_id} does not target site {site}"
            )));
        };
        let state = state_from(state)?;
        let refused = |why: String| Ok(Reapproval::Refused(why));
        if !step.from().contains(&state) {
            return refused(format!(
                "question {query_id} is {} at site {site}, not awaiting approval",
                state.as_str()
            ));
        }
        if withdrawn_at != 0 {
            return refused(format!(
                "question {query_id} was withdrawn by its researcher"
            ));
        }
        if deadline as u64 <= now {
            return refused(format!("question {query_id} is past its deadline"));
        }
        if mode == SECURE {
            // A round that started is never run again, nor joined late; before one, the
            // question may still run securely with this site, or per site.
            let round_started: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM targets WHERE query_id = ?1 AND state IN (?2, ?3, ?4))
                     OR EXISTS(SELECT 1 FROM queries WHERE id = ?1 AND secure_totals IS NOT NULL)",
                params![
                    query_id,
                    SiteState::Dispatched.as_str(),
                    SiteState::Aggregated.as_str(),
                    SiteState::RoundFailed.as_str()
                ],
                |row| row.get(0),
            )?;
            if round_started {
                return refused(format!(
                    "question {query_id} is {} at site {site}, and its secure-aggregation round has started, which is never run again nor joined late: the researcher submits it again",
                    state.as_str()
                ));
            }
        }
        if state == SiteState::Refused && !detail.starts_with(APPROVAL_RULE_PREFIX) {
            return refused(format!(
                "question {query_id} was refused at site {site} by rule {detail}, which a new approval does not change"
            ));
        }
        if state == SiteState::Rejected {
            let rejected_by: Option<String> = tx
                .query_row(
                    "SELECT actor FROM events WHERE query_id = ?1 AND site = ?2 AND kind = ?3
                     ORDER BY seq DESC LIMIT 1",
                    params![query_id, site, EventKind::Rejected.as_str()],
                    |row| row.get(0),
                )
                .optional()?;
            if rejected_by.as_deref() != Some(steward) {
                return refused(format!(
                    "question {query_id} was rejected at site {site} by {}; only that steward can approve it again",
                    rejected_by.unwrap_or_else(|| "another steward".into())
                ));
            }
        }
        execute_cached(
            &tx,
            "UPDATE targets SET state = ?3, updated_at = ?4, approved_by = ?5, approval_expires = ?6,
                 approval_key_id = ?7, approval_signature = ?8, detail = '', category = '',
                 reference = '', partial = NULL, dispatched_at = NULL
             WHERE query_id = ?1 AND site = ?2",
            params![
                query_id,
                site,
                step.to().as_str(),
                now as i64,
                steward,
                approval.expires_at as i64,
                approval.key_id,
                approval.signature,
            ],
        )?;
        execute_cached(
            &tx,
            "UPDATE queries SET complete = 0, failure = '' WHERE id = ?1",
            params![query_id],
        )?;
        execute_cached(
            &tx,
            "DELETE FROM results WHERE query_id = ?1",
            params![query_id],
        )?;
        record_step(
            &tx,
            query_id,
            site,
            step,
            steward,
            &format!(
                "key {}; replaces {} ({detail})",
                approval.key_id,
                state.as_str()
            ),
            now,
        )?;
        tx.commit()?;
        Ok(Reapproval::Reapproved)
    }

    /// Refuses `site`'s approved work whose approval has expired, as its node would
    /// (`approval-expired`), without sending it ([`SiteStep::RefuseExpiredApproval`]).
    /// Returns the questions touched.
    pub fn refuse_expired_approvals(&self, site: &str, now: u64) -> Result<Vec<String>, DbError> {
        let step = SiteStep::RefuseExpiredApproval;
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let expired: Vec<String> = {
            let mut statement = tx.prepare_cached(
                "SELECT query_id FROM targets WHERE site = ?1 AND state = ?2 AND approval_expires <= ?3",
            )?;
            let rows = statement
                .query_map(params![site, sole_from(step).as_str(), now as i64], |row| {
                    row.get(0)
                })?;
            rows.collect::<Result<Vec<String>, _>>()?
        };
        let mut touched = Vec::new();
        for query_id in expired {
            if step_in(
                &tx,
                &query_id,
                site,
                step,
                "coordinator",
                "approval-expired",
                now,
            )? {
                touched.push(query_id);
            }
        }
        tx.commit()?;
        Ok(touched)
    }

    /// Approved work for `site` whose question has not passed its deadline.
    pub fn approved_work(&self, site: &str, now: u64) -> Result<Vec<WorkItem>, DbError> {
        let conn = self.conn();
        let mut statement = conn.prepare_cached(
            "SELECT q.id, q.sql, q.query_hash, t.approval_expires, t.approval_key_id, t.approval_signature, q.study_id
             FROM targets t JOIN queries q ON q.id = t.query_id
             WHERE t.site = ?1 AND t.state = ?2 AND q.deadline > ?3 AND q.mode != 'secure'
             ORDER BY t.updated_at, q.rowid",
        )?;
        let rows = statement.query_map(
            params![site, sole_from(SiteStep::Dispatch).as_str(), now as i64],
            |row| {
                let study_id: String = row.get(6)?;
                Ok(WorkItem {
                    query_id: row.get(0)?,
                    sql: row.get(1)?,
                    approval: Approval {
                        study_id: study_id.clone(),
                        site_id: site.to_string(),
                        query_hash: row.get(2)?,
                        expires_at: row.get::<_, Option<i64>>(3)?.unwrap_or(0) as u64,
                        key_id: row.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        signature: row.get::<_, Option<Vec<u8>>>(5)?.unwrap_or_default(),
                    },
                    study_id,
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
    /// ended before an answer), so it is sent again on the next connection. A secure
    /// round is never sent again: its question's round fails instead.
    pub fn requeue_dispatched(&self, site: &str, now: u64) -> Result<usize, DbError> {
        let conn = self.relaxed_conn()?;
        Ok(execute_cached(
            &conn,
            "UPDATE targets SET state = ?2, updated_at = ?3, dispatched_at = NULL WHERE site = ?1 AND state = ?4
             AND query_id NOT IN (SELECT id FROM queries WHERE mode = 'secure')",
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
    /// (late, duplicate or unknown answers, and answers to withdrawn questions, are
    /// ignored).
    pub fn record_answer(
        &self,
        query_id: &str,
        site: &str,
        step: SiteStep,
        answer: &Answer<'_>,
        now: u64,
    ) -> Result<bool, DbError> {
        let detail = answer.detail;
        let mut conn = self.relaxed_conn()?;
        let tx = conn.transaction()?;
        let changed = execute_cached(
            &tx,
            "UPDATE targets SET state = ?3, detail = ?4, partial = ?5, updated_at = ?6, category = ?8, reference = ?9
             WHERE query_id = ?1 AND site = ?2 AND state = ?7",
            params![
                query_id,
                site,
                step.to().as_str(),
                detail,
                answer.partial,
                now as i64,
                sole_from(step).as_str(),
                answer.category,
                answer.reference
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
}

/// The one state a step leaves, for the steps that leave one.
fn sole_from(step: SiteStep) -> SiteState {
    let from = step.from();
    debug_assert_eq!(from.len(), 1, "{step:?}");
    from[0]
}

/// Takes `step` for a site's part, with `detail`, and records its event.
pub(super) fn step_in(
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
