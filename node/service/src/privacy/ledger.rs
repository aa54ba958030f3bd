//! The node's privacy ledger: what each study has spent at this site.
//!
//! Budgets are kept by the nodes (DESIGN.md, "Studies and privacy budgets"): a question's
//! epsilon is reserved for its study before the question runs (so questions running at
//! once cannot overspend), and charged in this node's own audit log, as an entry of its
//! own ([`Outcome::Charged`]) written with the request's entry in one write and one sync,
//! before anything leaves the node; a question that releases nothing gives its
//! reservation back. The ledger is those entries summed
//! per study, rebuilt from the log at every start, so a coordinator can neither reset nor
//! lower it. A question asked again in the same study on the same data (the same plan
//! fingerprint and store generation) under the same noise (secret, mechanism, epsilon,
//! bounds) is not charged again: it draws the same noise, so it reveals nothing new;
//! after a change of secret or policy it draws other noise, and is charged again (red
//! team: a new secret re-released a charged question with fresh noise for free). In another study it is charged to that study; on refreshed data
//! it is a new release and charged again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use crate::audit::{AuditEntry, AuditError, AuditLog, Outcome, PrivacyCharge};

use super::policy::{Epsilon, Mechanism};

/// What one study has spent at this site.
#[derive(Debug, Default, Clone)]
struct StudySpend {
    spent: Epsilon,
    /// `(question, generation, noise tag)` already charged.
    charged: BTreeSet<(String, String, String)>,
}

/// The spend of every study, from the audit log, and what running questions reserved.
#[derive(Debug, Default)]
pub struct Ledger {
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    studies: BTreeMap<String, StudySpend>,
    /// Epsilon reserved per study by questions running now.
    reserved: BTreeMap<String, Epsilon>,
}

/// A question's reservation.
#[derive(Debug, Clone)]
pub enum Reserved {
    /// Charged to this study on this data under this noise already: nothing more.
    Repeat {
        /// Budget left.
        remaining: Epsilon,
    },
    /// Reserved: the charge's audit entry, to be settled with the request's own.
    New {
        /// The charge (outcome `charged`).
        entry: Box<AuditEntry>,
        /// Budget left once it is charged.
        remaining: Epsilon,
    },
}

/// A question's charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Charged now; the study has this much left.
    Charged {
        /// Budget left after the charge.
        remaining: Epsilon,
    },
    /// Already charged to this study on this data: nothing more.
    Repeat {
        /// Budget left.
        remaining: Epsilon,
    },
}

/// Why a question was not charged.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The study has not enough budget left for the question.
    #[error(
        "study {study} has {remaining} of its privacy budget of {budget} left at this site; the question needs {needed}"
    )]
    Spent {
        /// The study.
        study: String,
        /// What is left.
        remaining: Epsilon,
        /// The budget per study.
        budget: Epsilon,
        /// What the question needs.
        needed: Epsilon,
    },
    /// The charge could not be written: nothing runs.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

/// One question to charge.
#[derive(Debug, Clone)]
pub struct ChargeRequest<'a> {
    /// The study.
    pub study: &'a str,
    /// The question's key (its plan fingerprint).
    pub question: &'a str,
    /// The store generation it runs on.
    pub generation: &'a str,
    /// The canonical hash of its SQL (for the audit entry).
    pub query_hash: &'a str,
    /// Epsilon per question.
    pub epsilon: Epsilon,
    /// Budget per study.
    pub budget: Epsilon,
    /// The mechanism (for the audit entry).
    pub mechanism: Mechanism,
    /// The noise the question draws (see `PrivacyPolicy::noise_tag`).
    pub noise: &'a str,
}

impl Ledger {
    /// The ledger of an audit log's entries.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = &'a AuditEntry>) -> Self {
        let mut studies: BTreeMap<String, StudySpend> = BTreeMap::new();
        for entry in entries {
            if entry.outcome != Outcome::Charged {
                continue;
            }
            let Some(charge) = &entry.privacy else {
                continue;
            };
            let spend = studies.entry(entry.study.clone()).or_default();
            spend.spent = spend.spent.plus(Epsilon::from_micro(charge.epsilon_micro));
            spend.charged.insert((
                charge.question.clone(),
                charge.generation.clone(),
                charge.noise.clone(),
            ));
        }
        Ledger {
            state: Mutex::new(LedgerState {
                studies,
                reserved: BTreeMap::new(),
            }),
        }
    }

    /// Reserves `request`'s epsilon for its study (in memory, before the question runs):
    /// a repeat needs nothing; otherwise the charge's audit entry is returned, to be
    /// written with the request's own entry by [`Ledger::settle`]. Refuses once the
    /// study's spend and reservations would pass its budget.
    pub fn reserve(&self, request: &ChargeRequest<'_>) -> Result<Reserved, LedgerError> {
        let mut state = self.lock();
        let spend = state
            .studies
            .get(request.study)
            .cloned()
            .unwrap_or_default();
        let reserved = state
            .reserved
            .get(request.study)
            .copied()
            .unwrap_or_default();
        let remaining = request.budget.minus(spend.spent);
        let key = (
            request.question.to_string(),
            request.generation.to_string(),
            request.noise.to_string(),
        );
        if spend.charged.contains(&key) {
            return Ok(Reserved::Repeat { remaining });
        }
        if spend.spent.plus(reserved).plus(request.epsilon) > request.budget {
            return Err(LedgerError::Spent {
                study: request.study.to_string(),
                remaining: remaining.minus(reserved),
                budget: request.budget,
                needed: request.epsilon,
            });
        }
        let mut entry = AuditEntry::new(request.study, request.query_hash, Outcome::Charged);
        entry.privacy = Some(PrivacyCharge {
            question: request.question.to_string(),
            generation: request.generation.to_string(),
            epsilon_micro: request.epsilon.micro(),
            mechanism: request.mechanism.name().to_string(),
            noise: request.noise.to_string(),
        });
        state
            .reserved
            .insert(request.study.to_string(), reserved.plus(request.epsilon));
        Ok(Reserved::New {
            entry: Box::new(entry),
            remaining: remaining.minus(reserved).minus(request.epsilon),
        })
    }

    /// Appends a request's audit `entry`, preceded (in the same write and sync) by the
    /// charge it reserved when it `released` something; a reservation of a request that
    /// released nothing is given back. Blocking (it writes the log).
    pub fn settle(
        &self,
        audit: &AuditLog,
        mut entry: AuditEntry,
        released: bool,
    ) -> Result<AuditEntry, AuditError> {
        let Some(charge) = entry.charge.take() else {
            return audit.append(entry);
        };
        let mut state = self.lock();
        let (Some(privacy), study) = (charge.privacy.clone(), charge.study.clone()) else {
            return audit.append(entry);
        };
        let epsilon = Epsilon::from_micro(privacy.epsilon_micro);
        if let Some(reserved) = state.reserved.get_mut(&study) {
            *reserved = reserved.minus(epsilon);
        }
        let key = (privacy.question, privacy.generation, privacy.noise);
        let charged = state
            .studies
            .get(&study)
            .is_some_and(|spend| spend.charged.contains(&key));
        if !released || charged {
            return audit.append(entry);
        }
        let mut appended = audit.append_all(vec![*charge, entry])?;
        let spend = state.studies.entry(study).or_default();
        spend.spent = spend.spent.plus(epsilon);
        spend.charged.insert(key);
        appended.pop().ok_or_else(|| AuditError::Io {
            path: audit.path().to_path_buf(),
            source: std::io::Error::other("nothing appended"),
        })
    }

    /// Charges `request` to its study at once, in an audit entry of its own (a
    /// reservation settled on the spot); refuses once the study's budget would be
    /// exceeded. Blocking (it writes the log).
    pub fn charge(
        &self,
        audit: &AuditLog,
        request: &ChargeRequest<'_>,
    ) -> Result<Charge, LedgerError> {
        match self.reserve(request)? {
            Reserved::Repeat { remaining } => Ok(Charge::Repeat { remaining }),
            Reserved::New { entry, remaining } => {
                let mut state = self.lock();
                if let Some(reserved) = state.reserved.get_mut(request.study) {
                    *reserved = reserved.minus(request.epsilon);
                }
                audit.append(*entry)?;
                let spend = state.studies.entry(request.study.to_string()).or_default();
                spend.spent = spend.spent.plus(request.epsilon);
                spend.charged.insert((
                    request.question.to_string(),
                    request.generation.to_string(),
                    request.noise.to_string(),
                ));
                Ok(Charge::Charged { remaining })
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every study that has spent something here, with what it spent.
    pub fn spent(&self) -> Vec<(String, Epsilon)> {
        self.lock()
            .studies
            .iter()
            .map(|(study, spend)| (study.clone(), spend.spent))
            .collect()
    }

    /// What `study` has spent here.
    pub fn spent_by(&self, study: &str) -> Epsilon {
        self.lock()
            .studies
            .get(study)
            .map_or(Epsilon::default(), |spend| spend.spent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(study: &'a str, question: &'a str, generation: &'a str) -> ChargeRequest<'a> {
        ChargeRequest {
            study,
            question,
            generation,
            query_hash: "hash",
            epsilon: Epsilon::from_micro(400_000),
            budget: Epsilon::from_micro(1_000_000),
            mechanism: Mechanism::DiscreteLaplace,
            noise: "tag",
        }
    }

    #[test]
    fn charges_once_per_question_study_and_generation_and_refuses_past_the_budget() {
        let dir = tempfile::tempdir().expect("dir");
        let audit = AuditLog::open(&dir.path().join(crate::audit::AUDIT_FILE)).expect("log");
        let ledger = Ledger::default();
        assert_eq!(
            ledger
                .charge(&audit, &request("s1", "q1", "g1"))
                .expect("first"),
            Charge::Charged {
                remaining: Epsilon::from_micro(600_000)
            }
        );
        assert!(matches!(
            ledger
                .charge(&audit, &request("s1", "q1", "g1"))
                .expect("repeat"),
            Charge::Repeat { .. }
        ));
        // The same question in another study, or on new data, is charged again.
        assert!(matches!(
            ledger
                .charge(&audit, &request("s2", "q1", "g1"))
                .expect("other study"),
            Charge::Charged { .. }
        ));
        assert!(matches!(
            ledger
                .charge(&audit, &request("s1", "q1", "g2"))
                .expect("new data"),
            Charge::Charged { .. }
        ));
        let refused = ledger.charge(&audit, &request("s1", "q2", "g2"));
        assert!(
            matches!(refused, Err(LedgerError::Spent { remaining, .. }) if remaining == Epsilon::from_micro(200_000)),
            "{refused:?}"
        );
        // Rebuilt from the log, the ledger holds the same.
        let entries = crate::audit::read_entries(&dir.path().join(crate::audit::AUDIT_FILE))
            .expect("entries");
        assert_eq!(entries.len(), 3, "a refusal writes no charge");
        let rebuilt = Ledger::from_entries(&entries);
        assert_eq!(rebuilt.spent_by("s1"), Epsilon::from_micro(800_000));
        assert_eq!(rebuilt.spent_by("s2"), Epsilon::from_micro(400_000));
        assert!(matches!(
            rebuilt
                .charge(&audit, &request("s1", "q1", "g2"))
                .expect("repeat after restart"),
            Charge::Repeat { .. }
        ));
    }
}
