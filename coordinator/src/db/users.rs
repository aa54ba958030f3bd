//! Users and their hashed tokens, and the sites that have enrolled someone.

use super::*;

impl Db {
    /// Adds a user; false if the name is taken.
    pub fn add_user(&self, user: &User, token_hash: &[u8]) -> Result<bool, DbError> {
        let conn = self.conn();
        let changed = execute_cached(
            &conn,
            "INSERT OR IGNORE INTO users (name, role, site, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                user.name,
                user.role.as_str(),
                user.site,
                token_hash,
                user.created_at as i64,
                user.expires_at as i64
            ],
        )?;
        Ok(changed == 1)
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> Result<Option<User>, DbError> {
        let conn = self.conn();
        let row = query_row_cached(
            &conn,
            "SELECT role, site, created_at, expires_at FROM users WHERE name = ?1",
            params![name],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
        row.map(|(role, site, created_at, expires_at)| {
            Ok(User {
                name: name.to_string(),
                role: role_from(role)?,
                site,
                created_at: created_at as u64,
                expires_at: expires_at as u64,
            })
        })
        .transpose()
    }

    /// Removes the user named `name` (its token stops working at once); false if there
    /// is none.
    pub fn remove_user(&self, name: &str) -> Result<bool, DbError> {
        let conn = self.conn();
        Ok(execute_cached(&conn, "DELETE FROM users WHERE name = ?1", params![name])? == 1)
    }

    /// Replaces the token of the user named `name` (the old one stops working at once);
    /// false if there is none.
    pub fn replace_token(
        &self,
        name: &str,
        token_hash: &[u8],
        expires_at: u64,
    ) -> Result<bool, DbError> {
        let conn = self.conn();
        Ok(execute_cached(
            &conn,
            "UPDATE users SET token_hash = ?2, expires_at = ?3 WHERE name = ?1",
            params![name, token_hash, expires_at as i64],
        )? == 1)
    }

    /// Whether any steward or node is enrolled for `site`: a site the network knows.
    pub fn site_known(&self, site: &str) -> Result<bool, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT 1 FROM users WHERE site = ?1 LIMIT 1",
            params![site],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
    }

    /// The user whose token hashes to `token_hash`, with the stored hash.
    pub fn user_by_token_hash(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<(User, Vec<u8>)>, DbError> {
        let conn = self.conn();
        let row = query_row_cached(
            &conn,
            "SELECT name, role, site, created_at, token_hash, expires_at FROM users WHERE token_hash = ?1",
            params![token_hash],
            |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Vec<u8>>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()?;
        row.map(|(name, role, site, created_at, hash, expires_at)| {
            Ok((
                User {
                    name,
                    role: role_from(role)?,
                    site,
                    created_at: created_at as u64,
                    expires_at: expires_at as u64,
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
            "SELECT name, role, site, created_at, expires_at FROM users WHERE name > ?1 ORDER BY name LIMIT ?2",
        )?;
        let rows = statement.query_map(params![after, limit], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })?;
        let mut users = Vec::new();
        for row in rows {
            let (name, role, site, created_at, expires_at) = row?;
            users.push(User {
                name,
                role: role_from(role)?,
                site,
                created_at: created_at as u64,
                expires_at: expires_at as u64,
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
}
