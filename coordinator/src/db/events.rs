//! The event log of the lifecycle, and its summary for operators.

use super::*;

impl Db {
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

/// Records the event of a step taken, if the step records one.
pub(super) fn record_step(
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

pub(super) fn insert_event(conn: &Connection, event: &Event) -> Result<(), DbError> {
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
