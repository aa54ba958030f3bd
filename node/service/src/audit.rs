//! The node's tamper-evident audit log: one JSON line per request, chained by SHA-256.
//!
//! Every request a node receives (accepted, refused or failed) leaves one entry in
//! `STORE_DIR/audit.log`. Each entry carries its sequence number, `prev` (the previous
//! entry's hash; 64 zeros for the first) and `hash`, the SHA-256 (hex) of the entry's
//! JSON line written with an empty `hash`. Editing a byte breaks that entry's hash;
//! deleting, inserting or swapping entries breaks the sequence and the chain there.
//! Deleting entries from the very end cannot be seen from the file alone: the steward's
//! copy of the last hash (printed by `ern node audit verify`) anchors the end.
//!
//! The detail of a failure stays here, with a reference id; the researcher only sees the
//! reference.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::digest;
use serde::{Deserialize, Serialize};

/// File name of the audit log inside a store directory.
pub const AUDIT_FILE: &str = "audit.log";

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The `prev` of a log's first entry (and the head of an empty log).
pub fn genesis() -> &'static str {
    GENESIS
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Ran; aggregates released.
    Accepted,
    /// Refused by a rule or an approval check.
    Refused,
    /// Failed while running.
    Failed,
    /// A question's privacy loss charged to its study's budget at this site, before it
    /// ran (see [`PrivacyCharge`]).
    Charged,
}

/// The privacy loss of one question charged to its study at this site: the node's
/// privacy ledger is these entries, summed per study.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrivacyCharge {
    /// The question, as the node keys its releases (its plan's fingerprint): the same
    /// question again in the same study on the same data is not charged again.
    pub question: String,
    /// The store generation it ran on.
    pub generation: String,
    /// Epsilon charged, in millionths.
    pub epsilon_micro: u64,
    /// The noise mechanism.
    pub mechanism: String,
    /// The noise the question drew, as [`crate::privacy::policy::PrivacyPolicy::noise_tag`]
    /// names it (secret, mechanism, epsilon, bounds): a repeat is free only under the same
    /// one, since under another the same question draws other noise.
    #[serde(default)]
    pub noise: String,
}

/// One audit entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// Study id of the request.
    pub study: String,
    /// Canonical hash of the SQL.
    pub query_hash: String,
    /// Key id of the approving steward key, when the approval verified.
    pub key_id: Option<String>,
    /// How the request ended.
    pub outcome: Outcome,
    /// The rule or approval check that refused it.
    pub rule: Option<String>,
    /// Groups released.
    pub rows_released: u64,
    /// Groups dropped for having fewer than k patients.
    pub groups_suppressed: u64,
    /// Wall-clock time of the request in milliseconds.
    pub duration_ms: u64,
    /// Reference id given to the researcher for a failure.
    pub reference: Option<String>,
    /// What kind of failure or resource refusal it was ([`crate::failure`]), as the
    /// researcher was told (absent from older logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Local detail of a failure or refusal (never sent to the researcher).
    pub detail: Option<String>,
    /// A privacy charge ([`Outcome::Charged`] entries only; absent from older logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<PrivacyCharge>,
    /// A charge reserved for this request, written just before this entry, in the same
    /// write and sync, when the request releases something (never serialised: it is an
    /// entry of its own in the log).
    #[serde(skip)]
    pub charge: Option<Box<AuditEntry>>,
    /// The previous entry's `hash`.
    pub prev: String,
    /// SHA-256 (hex) of this entry's JSON line with `hash` empty.
    pub hash: String,
}

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The chain is broken at an entry.
    #[error("audit log broken at entry {entry} (line {line}): {reason}")]
    Broken {
        /// The sequence number the entry should have.
        entry: u64,
        /// The line in the file.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// The chain is intact but no longer holds a head reported earlier: its tail was
    /// removed.
    #[error(
        "{}: the log's {entries} entries do not include the head {head} reported earlier: entries were removed from its end",
        path.display()
    )]
    Truncated {
        /// The log file.
        path: PathBuf,
        /// The head that is missing.
        head: String,
        /// Entries the log still holds.
        entries: u64,
    },
}

/// What `verify` found in an intact log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Entries in the log.
    pub entries: u64,
    /// The last entry's hash (the value a steward keeps to anchor the end).
    pub head: String,
}

/// The entry's own hash: SHA-256 of its JSON with `hash` empty.
fn entry_hash(entry: &AuditEntry) -> Result<String, serde_json::Error> {
    let mut unsealed = entry.clone();
    unsealed.hash.clear();
    let bytes = serde_json::to_vec(&unsealed)?;
    Ok(hex::encode(
        digest::digest(&digest::SHA256, &bytes).as_ref(),
    ))
}

/// An open audit log that appends chained entries.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    state: Mutex<Chain>,
}

#[derive(Debug)]
struct Chain {
    next_seq: u64,
    prev: String,
}

impl AuditLog {
    /// Opens the log in `store`, verifying the existing chain so appends continue it.
    pub fn open(store: &Path) -> Result<Self, AuditError> {
        let path = store.join(AUDIT_FILE);
        let summary = if path.exists() {
            verify(&path)?
        } else {
            ChainSummary {
                entries: 0,
                head: GENESIS.to_string(),
            }
        };
        Ok(AuditLog {
            path,
            state: Mutex::new(Chain {
                next_seq: summary.entries + 1,
                prev: summary.head,
            }),
        })
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The hash of the last entry (the genesis value for an empty log).
    pub fn head(&self) -> String {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .prev
            .clone()
    }

    /// Appends one entry (its `seq` and `prev` are set here) and syncs it to disk.
    pub fn append(&self, entry: AuditEntry) -> Result<AuditEntry, AuditError> {
        let mut appended = self.append_all(vec![entry])?;
        appended.pop().ok_or_else(|| AuditError::Io {
            path: self.path.clone(),
            source: std::io::Error::other("nothing appended"),
        })
    }

    /// Appends entries in order, chained, in one write and one sync: all or none of them
    /// reach the chain's state (a failed write leaves at most a torn tail, which
    /// verification reports).
    pub fn append_all(&self, entries: Vec<AuditEntry>) -> Result<Vec<AuditEntry>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut chain = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mut next_seq, mut prev) = (chain.next_seq, chain.prev.clone());
        let mut text = String::new();
        let mut sealed = Vec::with_capacity(entries.len());
        for mut entry in entries {
            entry.charge = None;
            entry.seq = next_seq;
            entry.prev = prev.clone();
            entry.hash = entry_hash(&entry).map_err(|e| io(std::io::Error::other(e)))?;
            text.push_str(
                &serde_json::to_string(&entry).map_err(|e| io(std::io::Error::other(e)))?,
            );
            text.push('\n');
            next_seq += 1;
            prev = entry.hash.clone();
            sealed.push(entry);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        chain.next_seq = next_seq;
        chain.prev = prev;
        Ok(sealed)
    }
}

/// Checks the whole chain of the log at `path`; names the first bad entry.
pub fn verify(path: &Path) -> Result<ChainSummary, AuditError> {
    walk(path, |_| ())
}

/// [`verify`], and that the log still holds the entry whose hash is `head` (a head the
/// node reported earlier, kept by the coordinator or a steward): entries removed from
/// the end leave an intact chain, and only a head kept elsewhere shows they are gone.
pub fn verify_with_head(path: &Path, head: &str) -> Result<ChainSummary, AuditError> {
    let mut found = head == GENESIS;
    let summary = walk(path, |entry| found |= entry.hash == head)?;
    if found {
        Ok(summary)
    } else {
        Err(AuditError::Truncated {
            path: path.to_path_buf(),
            head: head.to_string(),
            entries: summary.entries,
        })
    }
}

/// Every entry of the log at `path`, after checking the whole chain (a steward's view:
/// what was asked, what was released, how many groups were suppressed).
pub fn read_entries(path: &Path) -> Result<Vec<AuditEntry>, AuditError> {
    let mut entries = Vec::new();
    walk(path, |entry| entries.push(entry.clone()))?;
    Ok(entries)
}

/// Walks the chain, checking every entry and handing it to `visit`.
fn walk(path: &Path, mut visit: impl FnMut(&AuditEntry)) -> Result<ChainSummary, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let line_number = index as u64 + 1;
        let broken = |reason: String| AuditError::Broken {
            entry: expected_seq,
            line: line_number,
            reason,
        };
        let entry: AuditEntry = serde_json::from_slice(&line)
            .map_err(|e| broken(format!("not a valid entry ({e})")))?;
        if entry.seq != expected_seq {
            return Err(broken(format!(
                "sequence number {} where {expected_seq} was expected (an entry was deleted, inserted or moved)",
                entry.seq
            )));
        }
        // A line that parses but is not byte-identical to its canonical form was edited.
        let canonical = serde_json::to_string(&entry).map_err(|e| broken(e.to_string()))?;
        if canonical.as_bytes() != line.as_slice()
            || entry_hash(&entry).map_err(|e| broken(e.to_string()))? != entry.hash
        {
            return Err(broken("its contents were altered".into()));
        }
        if entry.prev != prev {
            return Err(broken(
                "does not chain to the entry before it (entries were removed or replaced)".into(),
            ));
        }
        visit(&entry);
        prev = entry.hash;
        expected_seq += 1;
    }
    Ok(ChainSummary {
        entries: expected_seq - 1,
        head: prev,
    })
}

impl AuditEntry {
    /// A new entry for a request; `seq` and `prev` are filled in by [`AuditLog::append`].
    pub fn new(study: &str, query_hash: &str, outcome: Outcome) -> Self {
        AuditEntry {
            seq: 0,
            time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            study: study.to_string(),
            query_hash: query_hash.to_string(),
            key_id: None,
            outcome,
            rule: None,
            rows_released: 0,
            groups_suppressed: 0,
            duration_ms: 0,
            reference: None,
            category: None,
            detail: None,
            privacy: None,
            charge: None,
            prev: String::new(),
            hash: String::new(),
        }
    }
}
