//! The revocation list of node certificates, by serial, and the serial each site's node
//! last presented (what `ern operator node revoke SITE` revokes when no serial is given).

use super::*;

impl Db {
    /// Adds `serial` (of a certificate of `site`) to the revocation list; false if it was
    /// on it already.
    pub fn revoke_certificate(
        &self,
        serial: &str,
        site: &str,
        at: u64,
        by: &str,
    ) -> Result<bool, DbError> {
        let conn = self.conn();
        Ok(execute_cached(
            &conn,
            "INSERT OR IGNORE INTO revoked_certificates (serial, site, revoked_at, revoked_by) VALUES (?1, ?2, ?3, ?4)",
            params![serial, site, at as i64, by],
        )? == 1)
    }

    /// Whether the certificate with `serial` is revoked.
    pub fn certificate_revoked(&self, serial: &str) -> Result<bool, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT 1 FROM revoked_certificates WHERE serial = ?1",
            params![serial],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }

    /// Keeps the serial of the certificate `site`'s node presented.
    pub fn node_certificate(&self, site: &str, serial: &str) -> Result<(), DbError> {
        let conn = self.conn();
        execute_cached(
            &conn,
            "UPDATE nodes SET certificate_serial = ?2 WHERE site = ?1",
            params![site, serial],
        )?;
        Ok(())
    }

    /// The serial of the certificate `site`'s node last presented, if any.
    pub fn last_certificate(&self, site: &str) -> Result<Option<String>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT certificate_serial FROM nodes WHERE site = ?1 AND certificate_serial <> ''",
            params![site],
            |row| row.get(0),
        )
        .optional()?)
    }
}
