//! Each node's last known state: when it was seen, its k, version and audit head.

use super::*;

impl Db {
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
}
