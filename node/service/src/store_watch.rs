//! Whether the node's store is there, and which generation of it the node answers from.
//!
//! A store can be re-ingested or deleted while the node runs. The node looks at it with
//! every heartbeat and before every question: the first generation it sees, every new
//! one, the store going missing and coming back each leave an audit entry (and a log
//! line), and while the store is missing the node says so in its heartbeats and fails
//! work with the category `store-unavailable`, then recovers by itself when a store is
//! back.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::audit::{AuditEntry, AuditLog, Outcome};
use crate::executed;
use crate::store::GenerationRecord;

/// What the node found when it looked at its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreState {
    /// The store is there.
    Available {
        /// The generation's key (what approvals and noise are tied to).
        key: String,
        /// The generation as operators see it: the id ingest recorded, or
        /// `unrecorded-` and the key for a store written without one.
        id: String,
    },
    /// The store's tables cannot be read.
    Unavailable {
        /// Why, for the node's own log and audit entry (never sent anywhere).
        reason: String,
    },
}

impl StoreState {
    /// What the node reports in its heartbeat: empty when it can answer, else the
    /// failure category of what stops it.
    pub fn unavailable(&self) -> &'static str {
        match self {
            StoreState::Available { .. } => "",
            StoreState::Unavailable { .. } => ern_proto::failure::STORE_UNAVAILABLE,
        }
    }

    /// The generation id, empty while the store is missing.
    pub fn generation_id(&self) -> &str {
        match self {
            StoreState::Available { id, .. } => id,
            StoreState::Unavailable { .. } => "",
        }
    }
}

/// Looks at one store and remembers what it saw last.
#[derive(Debug)]
pub struct StoreWatch {
    store_dir: PathBuf,
    last: Mutex<Option<StoreState>>,
}

impl StoreWatch {
    /// Watches the store in `store_dir`; nothing is seen yet.
    pub fn new(store_dir: &Path) -> Self {
        StoreWatch {
            store_dir: store_dir.to_path_buf(),
            last: Mutex::new(None),
        }
    }

    /// The store's directory.
    pub fn store_dir(&self) -> &Path {
        &self.store_dir
    }

    /// Reads the store's state now.
    fn read(&self) -> StoreState {
        match executed::store_generation(&self.store_dir) {
            Ok(key) => {
                let id = GenerationRecord::read(&self.store_dir)
                    .map_or_else(|| format!("unrecorded-{key}"), |record| record.id);
                StoreState::Available { key, id }
            }
            Err(error) => StoreState::Unavailable {
                reason: error.to_string(),
            },
        }
    }

    /// Looks at the store; a change since the last look (the first look included) is
    /// written to `audit` and logged. The state is remembered only once its entry is
    /// written, so a change whose entry failed is recorded at the next look.
    pub fn observe(&self, audit: &AuditLog) -> StoreState {
        let now = self.read();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = match (&*last, &now) {
            (Some(StoreState::Available { key: a, .. }), StoreState::Available { key: b, .. }) => {
                a != b
            }
            (Some(StoreState::Unavailable { .. }), StoreState::Unavailable { .. }) => false,
            _ => true,
        };
        if !changed {
            return now;
        }
        let mut entry = AuditEntry::new("(none)", "(none)", Outcome::Store);
        let store = self.store_dir.display();
        match (&*last, &now) {
            (None, StoreState::Available { id, .. }) => {
                tracing::info!(store = %store, generation = %id, "store opened");
                entry.detail = Some(format!("opened the store, generation {id}"));
                entry.store_generation = Some(id.clone());
            }
            (Some(StoreState::Unavailable { .. }), StoreState::Available { id, .. }) => {
                tracing::info!(store = %store, generation = %id, "the store is back");
                entry.detail = Some(format!("the store is back, generation {id}"));
                entry.store_generation = Some(id.clone());
            }
            (_, StoreState::Available { id, .. }) => {
                tracing::info!(store = %store, generation = %id, "a new store generation");
                entry.detail = Some(format!("a new store generation {id}"));
                entry.store_generation = Some(id.clone());
            }
            (_, StoreState::Unavailable { reason }) => {
                tracing::warn!(store = %store, %reason, "the store is unavailable: questions fail as store-unavailable until it is back");
                entry.outcome = Outcome::Store;
                entry.rule = Some(ern_proto::failure::STORE_UNAVAILABLE.to_string());
                entry.detail = Some(format!("the store is unavailable: {reason}"));
            }
        }
        match audit.append(entry) {
            Ok(_) => *last = Some(now.clone()),
            Err(error) => tracing::error!(%error, "audit log append failed"),
        }
        now
    }
}
