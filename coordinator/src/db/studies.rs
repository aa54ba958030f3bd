//! Studies and the researchers on them. A study is created once, with its researchers, in
//! one transaction that also records its event; its questions name it (`queries.study_id`).

use super::*;

/// Whether a study was created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StudyAdmission {
    /// Created, with its researchers and its event.
    Added,
    /// Not created: a study of that id exists.
    Exists,
    /// Not created: no user of this name is enrolled.
    UnknownUser(String),
    /// Not created: this user is enrolled with another role than researcher.
    NotResearcher(String),
}

impl Db {
    /// Creates `study` with its researchers, recording the event by its creator, in one
    /// transaction; nothing is stored unless every researcher is an enrolled researcher
    /// and the id is free.
    pub fn add_study(&self, study: &Study) -> Result<StudyAdmission, DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for name in &study.researchers {
            let role: Option<String> = query_row_cached(
                &tx,
                "SELECT role FROM users WHERE name = ?1",
                params![name],
                |row| row.get(0),
            )
            .optional()?;
            match role.map(role_from).transpose()? {
                None => return Ok(StudyAdmission::UnknownUser(name.clone())),
                Some(Role::Researcher) => {}
                Some(_) => return Ok(StudyAdmission::NotResearcher(name.clone())),
            }
        }
        let inserted = execute_cached(
            &tx,
            "INSERT OR IGNORE INTO studies (id, title, purpose, created_at, created_by) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                study.id,
                study.title,
                study.purpose,
                study.created_at as i64,
                study.created_by
            ],
        )?;
        if inserted == 0 {
            return Ok(StudyAdmission::Exists);
        }
        for name in &study.researchers {
            execute_cached(
                &tx,
                "INSERT OR IGNORE INTO study_researchers (study_id, user) VALUES (?1, ?2)",
                params![study.id, name],
            )?;
        }
        insert_event(
            &tx,
            &Event {
                at: study.created_at,
                actor: study.created_by.clone(),
                kind: EventKind::StudyAdded,
                query_id: String::new(),
                site: String::new(),
                detail: format!("{} ({})", study.id, study.researchers.join(", ")),
            },
        )?;
        tx.commit()?;
        Ok(StudyAdmission::Added)
    }

    /// Puts researcher `user` on study `study_id`; false if the study does not exist or the
    /// user is on it already. (Test networks use it to put every researcher they enrol on
    /// one study; operators create a study with its researchers, [`Db::add_study`].)
    pub fn add_study_researcher(&self, study_id: &str, user: &str) -> Result<bool, DbError> {
        let conn = self.conn();
        let changed = execute_cached(
            &conn,
            "INSERT OR IGNORE INTO study_researchers (study_id, user)
             SELECT id, ?2 FROM studies WHERE id = ?1",
            params![study_id, user],
        )?;
        Ok(changed == 1)
    }

    /// One study, with its researchers.
    pub fn study(&self, id: &str) -> Result<Option<Study>, DbError> {
        let conn = self.conn();
        let study = query_row_cached(
            &conn,
            "SELECT id, title, purpose, created_at, created_by FROM studies WHERE id = ?1",
            params![id],
            study_from_row,
        )
        .optional()?;
        study
            .map(|mut study| {
                study.researchers = researchers_of(&conn, &study.id)?;
                Ok(study)
            })
            .transpose()
    }

    /// Whether `user` is a researcher on study `id`: `None` when there is no such study.
    pub fn on_study(&self, id: &str, user: &str) -> Result<Option<bool>, DbError> {
        let conn = self.conn();
        Ok(query_row_cached(
            &conn,
            "SELECT EXISTS (SELECT 1 FROM study_researchers WHERE study_id = s.id AND user = ?2)
             FROM studies s WHERE s.id = ?1",
            params![id, user],
            |row| row.get::<_, bool>(0),
        )
        .optional()?)
    }

    /// Studies by id, `limit` of them after the id `after` ("" for the first); only those
    /// `researcher` is on when it is given.
    pub fn studies(
        &self,
        researcher: Option<&str>,
        after: &str,
        limit: i64,
    ) -> Result<Vec<Study>, DbError> {
        let conn = self.conn();
        let mut studies = match researcher {
            None => {
                let mut statement = conn.prepare_cached(
                    "SELECT id, title, purpose, created_at, created_by FROM studies
                     WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = statement.query_map(params![after, limit], study_from_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
            Some(user) => {
                let mut statement = conn.prepare_cached(
                    "SELECT s.id, s.title, s.purpose, s.created_at, s.created_by
                     FROM study_researchers r JOIN studies s ON s.id = r.study_id
                     WHERE r.user = ?1 AND r.study_id > ?2 ORDER BY r.study_id LIMIT ?3",
                )?;
                let rows = statement.query_map(params![user, after, limit], study_from_row)?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
        };
        for study in &mut studies {
            study.researchers = researchers_of(&conn, &study.id)?;
        }
        Ok(studies)
    }
}

/// A study without its researchers, from the columns `id, title, purpose, created_at,
/// created_by`.
fn study_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Study> {
    Ok(Study {
        id: row.get(0)?,
        title: row.get(1)?,
        purpose: row.get(2)?,
        researchers: Vec::new(),
        created_at: row.get::<_, i64>(3)? as u64,
        created_by: row.get(4)?,
    })
}

/// The researchers on study `id`, sorted by name.
fn researchers_of(conn: &Connection, id: &str) -> Result<Vec<String>, DbError> {
    let mut statement = conn
        .prepare_cached("SELECT user FROM study_researchers WHERE study_id = ?1 ORDER BY user")?;
    let rows = statement.query_map(params![id], |row| row.get(0))?;
    Ok(rows.collect::<Result<Vec<String>, _>>()?)
}
