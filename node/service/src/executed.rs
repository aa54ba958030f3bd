//! One approval, one execution per store generation.
//!
//! An approval is valid until it expires, and a compromised coordinator can deliver it
//! as often as it likes. Run again on the same data, it would return the same numbers;
//! run again after the store was refreshed, it returns numbers that differ by the
//! patients who came or went (red team: a replay after a refresh that removed one
//! patient released 16 instead of 17 in one group, and so that patient's sex), with no
//! steward involved. So the node records every approval it executed, with the store
//! generation it ran on and the bytes it released:
//!
//! - the same approval on the same generation returns the stored release (a retry after
//!   a lost answer) without running anything;
//! - on another generation it is refused as `approval-stale`: the steward approves again
//!   if the question should see the new data.
//!
//! Under secure aggregation a node sends a masked vector for a question at most once,
//! ever (DESIGN.md: the difference of two sums over different site sets is one site's
//! vector), and a question released one way is never released the other way: the record
//! also keeps, per question ([`query_key`]), whether it was released per site or went
//! into a secure round, and that is checked before either.
//!
//! The record is a file beside the node's audit log, outside the store (`executed.log`,
//! one JSON line per approval, synced before anything is released): ingest never
//! touches it, and a store deleted and rebuilt does not take it along (an approval the
//! record forgot would run again on the rebuilt data).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::digest;
use serde::{Deserialize, Serialize};

use crate::approval::Approval;
use crate::store;

/// The record's file name, in the directory of the node's audit log.
pub const EXECUTED_FILE: &str = "executed.log";

/// Errors of the record.
#[derive(Debug, thiserror::Error)]
pub enum ExecutedError {
    /// Reading or writing the record failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A secure round tried to record a question it had not claimed.
    #[error("a secure round recorded a question it had not claimed")]
    Unclaimed,
    /// A line of the record is not what this version writes.
    #[error("{} line {line}: {message}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The record is missing or empty while the audit log shows approvals executed.
    #[error(
        "{}: the record of executed approvals is missing, but the audit log shows approvals executed: restore it from a backup (without it an approval could run again on refreshed data), or rotate the audit log (`ern node audit rotate`) to start over on the record",
        path.display()
    )]
    Missing {
        /// The file.
        path: PathBuf,
    },
}

/// One executed approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Execution {
    /// [`approval_id`] of the approval.
    approval: String,
    /// The store generation it ran on.
    generation: String,
    /// The released partials, as an Arrow IPC stream (base64).
    released: String,
    /// Groups released and suppressed, for the audit entry of a retry.
    groups_released: u64,
    groups_suppressed: u64,
    /// [`query_key`] of the question (empty in records written before secure
    /// aggregation).
    #[serde(default)]
    query: String,
    /// The secure-aggregation round the node sent its masked vector in, if it did.
    #[serde(default)]
    secure_round: Option<String>,
}

/// How a question was released by this node, if it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryUse {
    /// Its partials were released per site.
    PerSite,
    /// Its masked vector went into this secure-aggregation round.
    Secure {
        /// The round's id.
        round: String,
    },
}

/// What an approval may do on the current store generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Previous {
    /// Never executed: run it.
    None,
    /// Executed on this generation: return these bytes (released, suppressed groups).
    Same {
        /// The released partials, as an Arrow IPC stream.
        released: Vec<u8>,
        /// Groups released.
        groups_released: u64,
        /// Groups suppressed.
        groups_suppressed: u64,
    },
    /// Executed on another generation: refuse as stale.
    Stale,
    /// The approval's question went into a secure round: never released per site.
    Secure,
}

/// The node's record of executed approvals.
#[derive(Debug)]
pub struct ExecutedApprovals {
    path: PathBuf,
    by_approval: Mutex<HashMap<String, Execution>>,
    /// Questions being released now, by [`query_key`]: checked and claimed in one step,
    /// so a per-site release and a secure round of one question never overlap, and a
    /// question never gets two rounds (red team: a per-site release between the rounds,
    /// and a round 1 racing round 2, each let a node release a question twice).
    claims: Mutex<HashMap<String, Claim>>,
}

/// What holds a question while it is being released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    /// This many per-site executions are running.
    PerSite(usize),
    /// A secure round is between its statement and its masked vector.
    Secure,
}

/// A per-site execution's hold on its question; released on drop.
#[derive(Debug)]
pub struct PerSiteClaim<'a> {
    record: &'a ExecutedApprovals,
    query: String,
}

impl Drop for PerSiteClaim<'_> {
    fn drop(&mut self) {
        let mut claims = self.record.claims();
        if let Some(Claim::PerSite(running)) = claims.get_mut(&self.query) {
            *running -= 1;
            if *running == 0 {
                claims.remove(&self.query);
            }
        }
    }
}

/// A stable key of one question: its plan's fingerprint (`QueryPlan::fingerprint`: what
/// the sites compute, whatever question id, study, white space, comments or output names
/// it comes with). Red team: the same SQL resubmitted as a new question, over fewer
/// sites or per site, read one site's numbers off the difference; keyed so, a node gives
/// one vector per question, ever, and never releases a question per site once it went
/// into a round. A question that computes something else (another filter) is another
/// question: only noise (DESIGN.md, "Studies and privacy budgets") stops differencing in
/// general.
pub fn query_key(fingerprint: &str) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(b"ern question v1\0");
    context.update(fingerprint.as_bytes());
    hex::encode(context.finish().as_ref())
}

/// A stable id of one approval: SHA-256 of its key id and signature.
pub fn approval_id(approval: &Approval) -> String {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(approval.key_id.as_bytes());
    context.update(&[0]);
    context.update(&approval.signature);
    hex::encode(context.finish().as_ref())
}

/// The store's generation: SHA-256 over the id ingest recorded for it and each table
/// file's identity (size, modification time, inode), so every ingest (which writes new files and renames them into place)
/// starts a new one. Read before every question: a store re-ingested while the node runs
/// is a new generation at once.
pub fn store_generation(store_dir: &Path) -> Result<String, ExecutedError> {
    let mut context = digest::Context::new(&digest::SHA256);
    // The id ingest wrote with the tables (absent from stores written before it did,
    // whose generations stay what they were).
    if let Some(record) = store::GenerationRecord::read(store_dir) {
        context.update(b"generation:");
        context.update(record.id.as_bytes());
    }
    for table in crate::schema::PATIENT_TABLES {
        let path = store::table_path(store_dir, table);
        let metadata = std::fs::metadata(&path).map_err(|source| ExecutedError::Io {
            path: path.clone(),
            source,
        })?;
        context.update(table.as_bytes());
        context.update(&metadata.len().to_be_bytes());
        let modified = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        context.update(&modified.to_be_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            context.update(&metadata.ino().to_be_bytes());
        }
    }
    Ok(hex::encode(&context.finish().as_ref()[..16]))
}

impl ExecutedApprovals {
    /// Opens (or starts) the record in `dir` (the directory of the node's audit log).
    pub fn open(dir: &Path) -> Result<Self, ExecutedError> {
        let path = dir.join(EXECUTED_FILE);
        let mut by_approval = HashMap::new();
        match File::open(&path) {
            Ok(file) => {
                for (index, line) in BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|source| ExecutedError::Io {
                        path: path.clone(),
                        source,
                    })?;
                    if line.trim().is_empty() {
                        continue;
                    }
                    let execution: Execution =
                        serde_json::from_str(&line).map_err(|e| ExecutedError::Corrupt {
                            path: path.clone(),
                            line: index + 1,
                            message: e.to_string(),
                        })?;
                    by_approval.insert(execution.approval.clone(), execution);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(ExecutedError::Io { path, source }),
        }
        Ok(ExecutedApprovals {
            path,
            by_approval: Mutex::new(by_approval),
            claims: Mutex::new(HashMap::new()),
        })
    }

    fn claims(&self) -> std::sync::MutexGuard<'_, HashMap<String, Claim>> {
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the node has executed no approval yet.
    pub fn is_empty(&self) -> bool {
        self.by_approval
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    /// Claims question `query` for a per-site execution, unless a secure round holds it
    /// or used it (then how it was used). Several per-site executions may hold it at
    /// once (a retry of the same approval).
    pub fn claim_per_site(&self, query: &str) -> Result<PerSiteClaim<'_>, QueryUse> {
        let mut claims = self.claims();
        match claims.get_mut(query) {
            Some(Claim::Secure) => {
                return Err(QueryUse::Secure {
                    round: "(in progress)".into(),
                });
            }
            Some(Claim::PerSite(running)) => *running += 1,
            None => {
                if let Some(used @ QueryUse::Secure { .. }) = self.query_use(query) {
                    return Err(used);
                }
                claims.insert(query.to_string(), Claim::PerSite(1));
            }
        }
        Ok(PerSiteClaim {
            record: self,
            query: query.to_string(),
        })
    }

    /// Claims question `query` for a secure round, unless it was ever released (per site
    /// or in a round) or is being released now. The claim holds until
    /// [`ExecutedApprovals::record_secure`] records the round or
    /// [`ExecutedApprovals::release_secure`] gives it up.
    pub fn claim_secure(&self, query: &str) -> Result<(), QueryUse> {
        let mut claims = self.claims();
        match claims.get(query) {
            Some(Claim::Secure) => {
                return Err(QueryUse::Secure {
                    round: "(in progress)".into(),
                });
            }
            Some(Claim::PerSite(_)) => return Err(QueryUse::PerSite),
            None => {}
        }
        if let Some(used) = self.query_use(query) {
            return Err(used);
        }
        claims.insert(query.to_string(), Claim::Secure);
        Ok(())
    }

    /// Gives up a secure claim whose round sent no vector (refused, or never finished).
    pub fn release_secure(&self, query: &str) {
        let mut claims = self.claims();
        if claims.get(query) == Some(&Claim::Secure) {
            claims.remove(query);
        }
    }

    fn executions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Execution>> {
        self.by_approval
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What `approval` may do on `generation`.
    pub fn previous(&self, approval: &str, generation: &str) -> Previous {
        match self.executions().get(approval) {
            None => Previous::None,
            Some(execution) if execution.secure_round.is_some() => Previous::Secure,
            Some(execution) if execution.generation == generation => {
                match STANDARD.decode(&execution.released) {
                    Ok(released) => Previous::Same {
                        released,
                        groups_released: execution.groups_released,
                        groups_suppressed: execution.groups_suppressed,
                    },
                    // A record that cannot be read back never allows a second run.
                    Err(_) => Previous::Stale,
                }
            }
            Some(_) => Previous::Stale,
        }
    }

    /// How the question `query` ([`query_key`]) was released by this node, if it was;
    /// a secure round wins over a per-site release in the answer.
    pub fn query_use(&self, query: &str) -> Option<QueryUse> {
        let executions = self.executions();
        let mut found = None;
        for execution in executions.values().filter(|e| e.query == query) {
            match &execution.secure_round {
                Some(round) => {
                    return Some(QueryUse::Secure {
                        round: round.clone(),
                    });
                }
                None => found = Some(QueryUse::PerSite),
            }
        }
        found
    }

    /// Records a per-site execution of question `query`, synced to disk before the
    /// release leaves the node.
    pub fn record(
        &self,
        approval: &str,
        query: &str,
        generation: &str,
        released: &[u8],
        groups_released: u64,
        groups_suppressed: u64,
    ) -> Result<(), ExecutedError> {
        self.append(Execution {
            approval: approval.to_string(),
            generation: generation.to_string(),
            released: STANDARD.encode(released),
            groups_released,
            groups_suppressed,
            query: query.to_string(),
            secure_round: None,
        })
    }

    /// Records that the node's masked vector for question `query` goes into `round`,
    /// synced to disk before the vector leaves the node, and ends the round's claim: no
    /// second vector for the question is ever sent. Refused unless the round holds the
    /// claim ([`ExecutedApprovals::claim_secure`]).
    pub fn record_secure(
        &self,
        approval: &str,
        query: &str,
        generation: &str,
        round: &str,
    ) -> Result<(), ExecutedError> {
        let mut claims = self.claims();
        if claims.get(query) != Some(&Claim::Secure) {
            return Err(ExecutedError::Unclaimed);
        }
        self.append(Execution {
            approval: approval.to_string(),
            generation: generation.to_string(),
            released: String::new(),
            groups_released: 0,
            groups_suppressed: 0,
            query: query.to_string(),
            secure_round: Some(round.to_string()),
        })?;
        claims.remove(query);
        Ok(())
    }

    fn append(&self, execution: Execution) -> Result<(), ExecutedError> {
        let io = |source| ExecutedError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line = serde_json::to_string(&execution).map_err(|e| io(e.into()))?;
        line.push('\n');
        let mut executions = self.executions();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        executions.insert(execution.approval.clone(), execution);
        Ok(())
    }
}
