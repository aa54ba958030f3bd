//! The node's tamper-evident audit log: one JSON line per request, chained by SHA-256.
//!
//! Every request a node receives (accepted, refused or failed) leaves one entry in its
//! audit log, and so does every store generation it opens or sees appear (and the
//! store going missing). The log is the node's, not the store's: its path is in
//! `node.toml` (`audit_log`, beside the configuration by default), so a store deleted
//! and rebuilt leaves the history, and the privacy ledger kept in it, where they were.
//! Each entry carries its sequence number, `prev` (the previous
//! entry's hash; 64 zeros for the first) and `hash`, the SHA-256 (hex) of the entry's
//! JSON line written with an empty `hash`. Editing a byte breaks that entry's hash;
//! deleting, inserting or swapping entries breaks the sequence and the chain there.
//! Deleting entries from the very end cannot be seen from the file alone: the steward's
//! copy of the last hash (printed by `ern node audit verify`) anchors the end.
//!
//! A broken log stops the node from starting. [`inspect`] says where and why it broke
//! (`ern node audit verify` explains it), and [`rotate`] archives it as it is and starts
//! a new chain whose first entry records the archived log's last intact hash and
//! carries its privacy charges over, so a recovery is itself in the log.
//!
//! One process writes a log at a time: an open log holds an exclusive lock on its file.
//!
//! The detail of a failure stays here, with a reference id; the researcher only sees the
//! reference.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use ring::digest;
use serde::{Deserialize, Serialize};

/// The audit log's file name where nothing else names it (beside `node.toml`).
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
    /// The node opened its store, saw a new generation of it, or found it missing
    /// (`store_generation` and `detail` say which).
    Store,
    /// The first entry of a chain that continues an archived log (see [`Continuation`]).
    Rotated,
}

/// What the first entry of a rotated log records about the log it continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// The archived log's file name.
    pub archive: String,
    /// Its intact entries.
    pub entries: u64,
    /// The hash of its last intact entry (64 zeros when it had none).
    pub last_hash: String,
    /// Where and why it was broken, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken: Option<String>,
    /// Privacy charges carried over from it (each one an entry after this one).
    pub charges_carried: u64,
    /// The breaks and losses the archived log itself recorded of the logs before it
    /// (a rotation never washes out an earlier one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<String>,
}

impl Continuation {
    /// What this continuation says went wrong, for the next one's `earlier`.
    fn history(&self) -> Vec<String> {
        let mut all = self.earlier.clone();
        if let Some(broken) = &self.broken {
            let name = if self.archive.is_empty() {
                "(no archive)"
            } else {
                self.archive.as_str()
            };
            all.push(format!("{name}: {broken}"));
        }
        all
    }
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
    /// The store generation a [`Outcome::Store`] entry is about: the id ingest recorded,
    /// or `unrecorded-` and the files' fingerprint for a store written without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_generation: Option<String>,
    /// The log a [`Outcome::Rotated`] entry continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub continues: Option<Continuation>,
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
    #[error("audit log broken at entry {entry} (line {line}): {kind}")]
    Broken {
        /// The sequence number the entry should have.
        entry: u64,
        /// The line in the file.
        line: u64,
        /// What is wrong.
        kind: BreakKind,
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
    /// The log is missing where the node has a history: starting a fresh one would
    /// forget every privacy charge silently.
    #[error(
        "{}: the audit log is missing, but this node has executed approvals before (its executed.log): restore the log from a backup, or record its loss and start a new chain with `ern node audit rotate`",
        path.display()
    )]
    Missing {
        /// The log file.
        path: PathBuf,
    },
    /// Another process has the log open for writing.
    #[error(
        "{}: another process is writing this audit log (a node running on it); stop it first",
        path.display()
    )]
    InUse {
        /// The log file.
        path: PathBuf,
    },
    /// The file the node opened is no longer at its path, or the log was opened again
    /// in this process (a restart in place) and the new one writes it now.
    #[error(
        "{}: the audit log was moved, deleted or opened anew while this node ran; nothing more is released until the node is restarted",
        path.display()
    )]
    Replaced {
        /// The log file.
        path: PathBuf,
    },
}

/// How a chain is broken at an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BreakKind {
    /// The file's last line is cut short: its last write did not finish.
    TornTail(String),
    /// A line that is not an entry, with lines after it.
    NotAnEntry(String),
    /// An entry whose sequence number is not the next one.
    Sequence {
        /// The number found.
        found: u64,
        /// The number expected.
        expected: u64,
    },
    /// An entry whose bytes do not match its hash.
    Altered,
    /// An entry whose `prev` is not the hash of the entry before it.
    Unchained,
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BreakKind::TornTail(error) => {
                write!(f, "the last line is not a whole entry ({error})")
            }
            BreakKind::NotAnEntry(error) => write!(f, "not a valid entry ({error})"),
            BreakKind::Sequence { found, expected } => write!(
                f,
                "sequence number {found} where {expected} was expected (an entry was deleted, inserted or moved)"
            ),
            BreakKind::Altered => f.write_str("its contents were altered"),
            BreakKind::Unchained => f.write_str(
                "does not chain to the entry before it (entries were removed or replaced)",
            ),
        }
    }
}

impl BreakKind {
    /// What a break of this kind at line `line` most likely means, in words for the
    /// node's operator and steward.
    pub fn explanation(&self, line: u64) -> String {
        match self {
            BreakKind::TornTail(_) => "the node stopped (a crash, a full disk, a power cut) while writing its last entry: everything before it is intact".into(),
            BreakKind::NotAnEntry(_) => "a line in the middle of the log is not an entry: the file was edited, or something else wrote into it".into(),
            BreakKind::Sequence { found, expected } if line == 1 => format!(
                "the file starts at entry {found}, not {expected}: it continues a log whose first entries are elsewhere (a log moved or deleted while a node ran, or a copy of part of one)"
            ),
            BreakKind::Sequence { found, expected } if found > expected => format!(
                "entries {expected} to {} are missing: they were deleted from the file",
                found - 1
            ),
            BreakKind::Sequence { .. } => "an entry is out of place: entries were inserted, repeated or moved".into(),
            BreakKind::Altered => "the entry was edited after it was written: its bytes no longer match its hash".into(),
            BreakKind::Unchained => "the entry does not follow the one before it: entries between them were removed, or one was replaced with an entry from another log".into(),
        }
    }
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

/// An open audit log that appends chained entries. It holds the file open under an
/// exclusive lock (no other process writes it while it lives); opened again in the same
/// process (a node restarted in place), the new one takes the file over and this one
/// can write no more.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    holder: Arc<Holder>,
    /// This log's turn: appends are refused once another has taken the file over.
    turn: u64,
    state: Mutex<Chain>,
}

#[derive(Debug)]
struct Chain {
    next_seq: u64,
    prev: String,
}

/// The locked file of a log, shared by every [`AuditLog`] this process opened on it.
#[derive(Debug)]
struct Holder {
    /// The file, opened for appending, under the lock; writes hold this mutex.
    file: Mutex<File>,
    /// The turn of the [`AuditLog`] that may write.
    turn: AtomicU64,
}

/// Logs open in this process, by canonical path.
fn open_logs() -> &'static Mutex<HashMap<PathBuf, Weak<Holder>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<Holder>>>> = OnceLock::new();
    OPEN.get_or_init(Mutex::default)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Opens `path` for appending (created if missing) and locks it against every other
/// process.
fn open_locked(path: &Path) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::InUse {
            path: path.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(AuditError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The holder of the log at `path`: this process's, if it has the log open, else a new
/// one under a fresh lock.
fn holder_of(path: &Path) -> Result<Arc<Holder>, AuditError> {
    let mut open = lock(open_logs());
    open.retain(|_, holder| holder.strong_count() > 0);
    let canonical = std::fs::canonicalize(path).ok();
    if let Some(holder) = canonical.as_ref().and_then(|c| open.get(c)?.upgrade()) {
        return Ok(holder);
    }
    let file = open_locked(path)?;
    let canonical = std::fs::canonicalize(path).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let holder = Arc::new(Holder {
        file: Mutex::new(file),
        turn: AtomicU64::new(0),
    });
    open.insert(canonical, Arc::downgrade(&holder));
    Ok(holder)
}

/// Whether `file` is still the file at `path` (not moved, deleted or replaced).
fn still_at(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(open), Ok(named)) => open.dev() == named.dev() && open.ino() == named.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

impl AuditLog {
    /// Opens the log at `path` (created if missing), verifying the existing chain so
    /// appends continue it. Refused with [`AuditError::InUse`] while another process
    /// writes it; in this process, it takes the log over from the one that had it.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let holder = holder_of(path)?;
        // No write is under way while the chain is read and the turn passes here.
        let writing = lock(&holder.file);
        let turn = holder.turn.fetch_add(1, Ordering::SeqCst) + 1;
        let summary = verify(path)?;
        drop(writing);
        Ok(AuditLog {
            path: path.to_path_buf(),
            holder,
            turn,
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
    /// verification reports). Refused once the file is no longer at its path: entries
    /// written to a deleted file would be lost, and a new file would break the chain.
    pub fn append_all(&self, entries: Vec<AuditEntry>) -> Result<Vec<AuditEntry>, AuditError> {
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut chain = lock(&self.state);
        let mut file = lock(&self.holder.file);
        if self.holder.turn.load(Ordering::SeqCst) != self.turn || !still_at(&file, &self.path) {
            return Err(AuditError::Replaced {
                path: self.path.clone(),
            });
        }
        let (text, sealed) = seal(entries, chain.next_seq, &chain.prev).map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        if let Some(last) = sealed.last() {
            chain.next_seq = last.seq + 1;
            chain.prev = last.hash.clone();
        }
        Ok(sealed)
    }
}

/// Chains `entries` after the entry numbered `next_seq - 1` whose hash is `prev`: each
/// gets its number, `prev` and hash; returns their lines and the sealed entries.
fn seal(
    entries: Vec<AuditEntry>,
    mut next_seq: u64,
    prev: &str,
) -> Result<(String, Vec<AuditEntry>), std::io::Error> {
    let mut prev = prev.to_string();
    let mut text = String::new();
    let mut sealed = Vec::with_capacity(entries.len());
    for mut entry in entries {
        entry.charge = None;
        entry.seq = next_seq;
        entry.prev = prev.clone();
        entry.hash = entry_hash(&entry).map_err(std::io::Error::other)?;
        text.push_str(&serde_json::to_string(&entry).map_err(std::io::Error::other)?);
        text.push('\n');
        next_seq += 1;
        prev = entry.hash.clone();
        sealed.push(entry);
    }
    Ok((text, sealed))
}

/// Checks the whole chain of the log at `path`; names the first bad entry. A log that
/// does not exist is an empty chain.
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

/// What [`inspect`] found in a log, intact or not.
#[derive(Debug)]
pub struct Inspection {
    /// The intact part: every entry up to the break (all of them when there is none).
    pub intact: ChainSummary,
    /// Where and why the chain breaks, if it does ([`AuditError::Broken`]).
    pub broken: Option<AuditError>,
    /// Every privacy charge in the file, past a break too (each line that parses):
    /// what a study has spent is never under-counted because the log is damaged.
    pub charges: Vec<AuditEntry>,
    /// What the file's own first entry records of the logs before it, when it continues
    /// a rotated log.
    pub earlier: Vec<String>,
}

/// Reads the log at `path` to the end whether or not its chain holds: the intact part,
/// the break, and every charge.
pub fn inspect(path: &Path) -> Result<Inspection, AuditError> {
    let mut last_intact = ChainSummary {
        entries: 0,
        head: GENESIS.to_string(),
    };
    let broken = match walk(path, |entry| {
        last_intact = ChainSummary {
            entries: entry.seq,
            head: entry.hash.clone(),
        };
    }) {
        Ok(_) => None,
        Err(error @ AuditError::Broken { .. }) => Some(error),
        Err(error) => return Err(error),
    };
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let parsed: Vec<AuditEntry> = text
        .split(|b| *b == b'\n')
        .filter_map(|line| serde_json::from_slice::<AuditEntry>(line).ok())
        .collect();
    let earlier = parsed
        .iter()
        .find_map(|entry| entry.continues.as_ref())
        .map(Continuation::history)
        .unwrap_or_default();
    let charges = parsed
        .into_iter()
        .filter(|entry| entry.outcome == Outcome::Charged && entry.privacy.is_some())
        .collect();
    Ok(Inspection {
        intact: last_intact,
        broken,
        charges,
        earlier,
    })
}

/// What [`rotate`] did.
#[derive(Debug, Clone)]
pub struct Rotation {
    /// Where the old log went.
    pub archive: PathBuf,
    /// What the new chain's first entry records about it.
    pub continuation: Continuation,
    /// The new log's head.
    pub head: String,
}

/// Archives the log at `path` as it is (intact or broken) to `archive`, and starts a new
/// chain at `path` whose first entry records the archived log's intact entries, its last
/// intact hash and its break, followed by every privacy charge it held (so no study's
/// spending is forgotten). Refused while a node is writing the log, or when `archive`
/// exists. The new log is written whole beside the old one before either is renamed.
pub fn rotate(path: &Path, archive: &Path) -> Result<Rotation, AuditError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AuditError::Io { path, source }
    };
    if !path.exists() {
        return start_after_loss(path);
    }
    if archive.exists() {
        return Err(io(archive)(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "the archive exists already; name another one",
        )));
    }
    // The lock proves no node writes the log; it is held until the new log is in place.
    let _held = open_locked(path)?;
    let fresh = path.with_extension("rotating");
    if archive == path || archive == fresh {
        return Err(io(archive)(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the archive must be another file than the log and its staging file",
        )));
    }
    let found = inspect(path)?;
    let continuation = Continuation {
        earlier: found.earlier.clone(),
        archive: archive
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        entries: found.intact.entries,
        last_hash: found.intact.head.clone(),
        broken: found.broken.as_ref().map(ToString::to_string),
        charges_carried: found.charges.len() as u64,
    };
    let mut first = AuditEntry::new("(none)", "(none)", Outcome::Rotated);
    first.detail = Some(format!(
        "continues {}: {} intact entries, last hash {}{}",
        continuation.archive,
        continuation.entries,
        continuation.last_hash,
        continuation
            .broken
            .as_deref()
            .map(|broken| format!("; {broken}"))
            .unwrap_or_default()
    ));
    first.continues = Some(continuation.clone());
    let mut entries = vec![first];
    for charge in found.charges {
        let mut carried = AuditEntry::new(&charge.study, &charge.query_hash, Outcome::Charged);
        carried.time = charge.time;
        carried.privacy = charge.privacy;
        carried.detail = Some(format!(
            "carried over from {} entry {}",
            continuation.archive, charge.seq
        ));
        entries.push(carried);
    }
    let (text, sealed) = seal(entries, 1, GENESIS).map_err(io(path))?;
    // The staging file is this rotation's own (under the lock): one a crash left is
    // written over.
    let staged = std::fs::write(&fresh, text.as_bytes())
        .and_then(|()| File::open(&fresh)?.sync_all())
        .map_err(io(&fresh));
    // The archive is a second name of the old log, and the new log replaces the old
    // name in one step: at no moment is there no log at `path`.
    let placed = staged
        .and_then(|()| std::fs::hard_link(path, archive).map_err(io(archive)))
        .and_then(|()| std::fs::rename(&fresh, path).map_err(io(path)));
    if let Err(error) = placed {
        let _ = std::fs::remove_file(&fresh);
        return Err(error);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(Rotation {
        archive: archive.to_path_buf(),
        continuation,
        head: sealed.last().map(|e| e.hash.clone()).unwrap_or_default(),
    })
}

/// Starts a new chain at `path` where the log is missing: its first entry records that
/// the log was lost (its entries and privacy charges with it), so the loss is in the
/// log that follows.
fn start_after_loss(path: &Path) -> Result<Rotation, AuditError> {
    let continuation = Continuation {
        archive: String::new(),
        entries: 0,
        last_hash: GENESIS.to_string(),
        broken: Some("the log was missing: its entries and privacy charges are lost".into()),
        charges_carried: 0,
        earlier: Vec::new(),
    };
    let mut first = AuditEntry::new("(none)", "(none)", Outcome::Rotated);
    first.detail = continuation.broken.clone();
    first.continues = Some(continuation.clone());
    let (text, sealed) = seal(vec![first], 1, GENESIS).map_err(|source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Rotation {
        archive: PathBuf::new(),
        continuation,
        head: sealed.last().map(|e| e.hash.clone()).unwrap_or_default(),
    })
}

/// Walks the chain, checking every entry and handing it to `visit`.
fn walk(path: &Path, mut visit: impl FnMut(&AuditEntry)) -> Result<ChainSummary, AuditError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(ChainSummary {
                entries: 0,
                head: GENESIS.to_string(),
            });
        }
        Err(source) => {
            return Err(AuditError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut prev = GENESIS.to_string();
    let mut expected_seq = 1u64;
    let mut lines = BufReader::new(file).split(b'\n').enumerate().peekable();
    while let Some((index, line)) = lines.next() {
        let line = line.map_err(|source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let line_number = index as u64 + 1;
        let broken = |kind: BreakKind| AuditError::Broken {
            entry: expected_seq,
            line: line_number,
            kind,
        };
        let entry: AuditEntry = match serde_json::from_slice(&line) {
            Ok(entry) => entry,
            Err(e) if lines.peek().is_none() => {
                return Err(broken(BreakKind::TornTail(e.to_string())));
            }
            Err(e) => return Err(broken(BreakKind::NotAnEntry(e.to_string()))),
        };
        if entry.seq != expected_seq {
            return Err(broken(BreakKind::Sequence {
                found: entry.seq,
                expected: expected_seq,
            }));
        }
        // A line that parses but is not byte-identical to its canonical form was edited.
        let canonical = serde_json::to_string(&entry).map_err(|_| broken(BreakKind::Altered))?;
        if canonical.as_bytes() != line.as_slice()
            || entry_hash(&entry).map_err(|_| broken(BreakKind::Altered))? != entry.hash
        {
            return Err(broken(BreakKind::Altered));
        }
        if entry.prev != prev {
            return Err(broken(BreakKind::Unchained));
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
            store_generation: None,
            continues: None,
            charge: None,
            prev: String::new(),
            hash: String::new(),
        }
    }
}
