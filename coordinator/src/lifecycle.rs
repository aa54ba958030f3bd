//! The question lifecycle as a state machine: every state a question and each site's part
//! in it can be in, every step between them, and the kind of event each step records.
//!
//! The database layer ([`crate::db`]) only persists what this module allows: each of its
//! updates moves a site's part by one [`SiteStep`], from the step's [`SiteStep::from`]
//! states to its [`SiteStep::to`] state, and records the step's [`EventKind`]. A question
//! ends once, merged or not ([`QuestionState`]).
//!
//! ```text
//! awaiting-approval --approve--> approved --dispatch--> dispatched --answer--> answered
//!        |                          ^                     |   |  \--refuse--> refused
//!        \--reject--> rejected      \-------requeue-------/   \--fail, time out--> failed
//! awaiting-approval | approved | dispatched --expire--> expired
//! awaiting-approval | approved | dispatched --withdraw--> withdrawn
//! dispatched (in a secure-aggregation round) --aggregate--> aggregated
//!                                            \--fail round--> round-failed
//! refused (by an approval check) | rejected --re-approve--> approved
//! ```
//!
//! Re-approval is the one step out of a finished part: a steward may approve again a
//! part the node refused for an approval reason (expired, unknown key, other site, ...)
//! or that the same steward rejected, and the question is open again until the new
//! work is answered and merged.
//!
//! Under secure aggregation every participant of a question is dispatched at once, in
//! one round; when one of them refuses, fails or drops out, the others' parts end as
//! round-failed (the round is never run again with fewer sites).

use ern_proto::v1;

/// Where a question stands at one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteState {
    /// Waiting for the site's steward.
    AwaitingApproval,
    /// Approved, waiting for the node.
    Approved,
    /// Sent to the node.
    Dispatched,
    /// The node released aggregates.
    Answered,
    /// The node refused.
    Refused,
    /// The steward rejected.
    Rejected,
    /// The node failed or timed out.
    Failed,
    /// The deadline passed.
    Expired,
    /// The node's masked vector went into the network total of a completed round.
    Aggregated,
    /// The secure-aggregation round did not complete.
    RoundFailed,
    /// The question's researcher withdrew it before the site finished.
    Withdrawn,
}

const ALL_STATES: [SiteState; 11] = [
    SiteState::AwaitingApproval,
    SiteState::Approved,
    SiteState::Dispatched,
    SiteState::Answered,
    SiteState::Refused,
    SiteState::Rejected,
    SiteState::Failed,
    SiteState::Expired,
    SiteState::Aggregated,
    SiteState::RoundFailed,
    SiteState::Withdrawn,
];

impl SiteState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            SiteState::AwaitingApproval => "awaiting-approval",
            SiteState::Approved => "approved",
            SiteState::Dispatched => "dispatched",
            SiteState::Answered => "answered",
            SiteState::Refused => "refused",
            SiteState::Rejected => "rejected",
            SiteState::Failed => "failed",
            SiteState::Expired => "expired",
            SiteState::Aggregated => "aggregated",
            SiteState::RoundFailed => "round-failed",
            SiteState::Withdrawn => "withdrawn",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<SiteState> {
        ALL_STATES.into_iter().find(|state| state.as_str() == text)
    }

    /// Whether the site is done with the question: no step but a steward's re-approval
    /// leads out of it.
    pub fn is_final(self) -> bool {
        !ALL_STEPS
            .iter()
            .any(|step| *step != SiteStep::Reapprove && step.from().contains(&self))
    }

    /// The wire form.
    pub fn to_proto(self) -> v1::SiteState {
        match self {
            SiteState::AwaitingApproval => v1::SiteState::AwaitingApproval,
            SiteState::Approved => v1::SiteState::Approved,
            SiteState::Dispatched => v1::SiteState::Dispatched,
            SiteState::Answered => v1::SiteState::Answered,
            SiteState::Refused => v1::SiteState::Refused,
            SiteState::Rejected => v1::SiteState::Rejected,
            SiteState::Failed => v1::SiteState::Failed,
            SiteState::Expired => v1::SiteState::Expired,
            SiteState::Aggregated => v1::SiteState::Aggregated,
            SiteState::RoundFailed => v1::SiteState::RoundFailed,
            SiteState::Withdrawn => v1::SiteState::Withdrawn,
        }
    }

    /// Whether the site contributed to the merged table (released partials, or a masked
    /// vector in a completed round).
    pub fn contributed(self) -> bool {
        matches!(self, SiteState::Answered | SiteState::Aggregated)
    }
}

/// One step of a site's part in a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SiteStep {
    /// The site's steward approved (and the signed approval is stored).
    Approve,
    /// The site's steward rejected, with a reason.
    Reject,
    /// The work was sent down the node's stream.
    Dispatch,
    /// The node's stream ended before an answer: the work goes again on the next one.
    Requeue,
    /// The node released aggregates.
    Answer,
    /// The node refused, naming a rule.
    Refuse,
    /// The node failed, or its answer was malformed.
    Fail,
    /// Dispatched work went unanswered for longer than the site timeout.
    TimeOut,
    /// The question's deadline passed before the site finished.
    Expire,
    /// The node's masked vector went into the total of a round that completed.
    Aggregate,
    /// The secure-aggregation round the site was in did not complete.
    FailRound,
    /// The question's researcher withdrew it.
    Withdraw,
    /// A steward approved again a part refused for an approval reason or rejected by
    /// that steward: the new approval replaces the old, and the work goes out again.
    Reapprove,
    /// Approved work whose approval expired before it was sent: refused at the
    /// coordinator as the node would (`approval-expired`), without a round trip.
    RefuseExpiredApproval,
}

const ALL_STEPS: [SiteStep; 14] = [
    SiteStep::Approve,
    SiteStep::Reject,
    SiteStep::Dispatch,
    SiteStep::Requeue,
    SiteStep::Answer,
    SiteStep::Refuse,
    SiteStep::Fail,
    SiteStep::TimeOut,
    SiteStep::Expire,
    SiteStep::Aggregate,
    SiteStep::FailRound,
    SiteStep::Withdraw,
    SiteStep::Reapprove,
    SiteStep::RefuseExpiredApproval,
];

impl SiteStep {
    /// The states this step leaves.
    pub fn from(self) -> &'static [SiteState] {
        use SiteState::{Approved, AwaitingApproval, Dispatched, Refused, Rejected};
        match self {
            SiteStep::Approve | SiteStep::Reject => &[AwaitingApproval],
            SiteStep::Dispatch | SiteStep::RefuseExpiredApproval => &[Approved],
            SiteStep::Requeue
            | SiteStep::Answer
            | SiteStep::Refuse
            | SiteStep::Fail
            | SiteStep::TimeOut
            | SiteStep::Aggregate
            | SiteStep::FailRound => &[Dispatched],
            SiteStep::Expire | SiteStep::Withdraw => &[AwaitingApproval, Approved, Dispatched],
            SiteStep::Reapprove => &[Refused, Rejected],
        }
    }

    /// The state this step enters.
    pub fn to(self) -> SiteState {
        match self {
            SiteStep::Approve => SiteState::Approved,
            SiteStep::Reject => SiteState::Rejected,
            SiteStep::Dispatch => SiteState::Dispatched,
            SiteStep::Requeue => SiteState::Approved,
            SiteStep::Answer => SiteState::Answered,
            SiteStep::Refuse | SiteStep::RefuseExpiredApproval => SiteState::Refused,
            SiteStep::Fail | SiteStep::TimeOut => SiteState::Failed,
            SiteStep::Expire => SiteState::Expired,
            SiteStep::Aggregate => SiteState::Aggregated,
            SiteStep::FailRound => SiteState::RoundFailed,
            SiteStep::Withdraw => SiteState::Withdrawn,
            SiteStep::Reapprove => SiteState::Approved,
        }
    }

    /// The event the step records, if any (dispatch and requeue are the coordinator's own
    /// bookkeeping, repeated on every connection, and are logged, not recorded).
    pub fn event(self) -> Option<EventKind> {
        match self {
            SiteStep::Approve => Some(EventKind::Approved),
            SiteStep::Reject => Some(EventKind::Rejected),
            SiteStep::Dispatch | SiteStep::Requeue => None,
            SiteStep::Answer => Some(EventKind::Answered),
            SiteStep::Refuse | SiteStep::RefuseExpiredApproval => Some(EventKind::Refused),
            SiteStep::Fail | SiteStep::TimeOut => Some(EventKind::Failed),
            SiteStep::Expire => Some(EventKind::Expired),
            SiteStep::Aggregate => Some(EventKind::Aggregated),
            SiteStep::FailRound => Some(EventKind::RoundFailed),
            SiteStep::Withdraw => Some(EventKind::Withdrawn),
            SiteStep::Reapprove => Some(EventKind::Reapproved),
        }
    }
}

/// Where a question stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuestionState {
    /// Some site has not finished, or the merge has not run yet.
    Open,
    /// Every site finished and the answers were merged into the stored table.
    Merged,
    /// Every site finished but the answers could not be merged; the reason is stored.
    MergeFailed,
    /// Its researcher withdrew it before it finished; nothing was merged.
    Withdrawn,
}

impl QuestionState {
    /// The wire form.
    pub fn to_proto(self) -> v1::QueryState {
        match self {
            QuestionState::Open => v1::QueryState::Running,
            QuestionState::Merged => v1::QueryState::Complete,
            QuestionState::MergeFailed => v1::QueryState::Failed,
            QuestionState::Withdrawn => v1::QueryState::Withdrawn,
        }
    }

    /// The state a question's stored flags describe.
    pub fn of(complete: bool, failure: &str, withdrawn: bool) -> Self {
        match (withdrawn, complete, failure.is_empty()) {
            (true, _, _) => QuestionState::Withdrawn,
            (false, false, _) => QuestionState::Open,
            (false, true, true) => QuestionState::Merged,
            (false, true, false) => QuestionState::MergeFailed,
        }
    }
}

/// What the coordinator's event log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A question was stored.
    Submitted,
    /// A submission was refused by a rule (the rule is the detail).
    RefusedAtSubmit,
    /// A steward approved for a site.
    Approved,
    /// A steward rejected for a site.
    Rejected,
    /// A node released aggregates.
    Answered,
    /// A node refused.
    Refused,
    /// A node failed, or its work timed out.
    Failed,
    /// A question's deadline passed at a site.
    Expired,
    /// A question's answers were merged.
    Merged,
    /// A question's answers could not be merged.
    MergeFailed,
    /// An operator enrolled a user.
    UserAdded,
    /// A node's stream opened.
    Connected,
    /// A node's stream ended.
    Disconnected,
    /// A secure-aggregation round started (the detail lists its participants).
    RoundStarted,
    /// A node's masked vector went into a completed round's total.
    Aggregated,
    /// A secure-aggregation round did not complete.
    RoundFailed,
    /// An operator created a study (the detail names it and its researchers).
    StudyAdded,
    /// A researcher withdrew a question (one event for the question, one per site whose
    /// part was still open).
    Withdrawn,
    /// A steward approved again a part refused for an approval reason or rejected.
    Reapproved,
    /// An operator revoked a user's token (the user is removed).
    UserRevoked,
    /// An operator replaced a user's token.
    UserRotated,
    /// An operator put a node certificate on the revocation list (the detail is its
    /// serial).
    CertificateRevoked,
    /// A node's token or certificate expired and its live stream was closed.
    TokenExpired,
    /// A node reported a study's privacy spending lower than before: it forgot charges.
    BudgetDecreased,
}

const ALL_EVENTS: [EventKind; 24] = [
    EventKind::Submitted,
    EventKind::RefusedAtSubmit,
    EventKind::Approved,
    EventKind::Rejected,
    EventKind::Answered,
    EventKind::Refused,
    EventKind::Failed,
    EventKind::Expired,
    EventKind::Merged,
    EventKind::MergeFailed,
    EventKind::UserAdded,
    EventKind::Connected,
    EventKind::Disconnected,
    EventKind::RoundStarted,
    EventKind::Aggregated,
    EventKind::RoundFailed,
    EventKind::StudyAdded,
    EventKind::Withdrawn,
    EventKind::Reapproved,
    EventKind::UserRevoked,
    EventKind::UserRotated,
    EventKind::CertificateRevoked,
    EventKind::TokenExpired,
    EventKind::BudgetDecreased,
];

impl EventKind {
    /// The stored name (also what `ern audit` shows).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Submitted => "submitted",
            EventKind::RefusedAtSubmit => "refused-at-submit",
            EventKind::Approved => "approved",
            EventKind::Rejected => "rejected",
            EventKind::Answered => "answered",
            EventKind::Refused => "refused",
            EventKind::Failed => "failed",
            EventKind::Expired => "expired",
            EventKind::Merged => "merged",
            EventKind::MergeFailed => "merge-failed",
            EventKind::UserAdded => "user-added",
            EventKind::Connected => "connected",
            EventKind::Disconnected => "disconnected",
            EventKind::RoundStarted => "round-started",
            EventKind::Aggregated => "aggregated",
            EventKind::RoundFailed => "round-failed",
            EventKind::StudyAdded => "study-added",
            EventKind::Withdrawn => "withdrawn",
            EventKind::Reapproved => "reapproved",
            EventKind::UserRevoked => "user-revoked",
            EventKind::UserRotated => "user-rotated",
            EventKind::CertificateRevoked => "certificate-revoked",
            EventKind::TokenExpired => "token-expired",
            EventKind::BudgetDecreased => "budget-decreased",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<EventKind> {
        ALL_EVENTS.into_iter().find(|kind| kind.as_str() == text)
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in ALL_STATES {
            assert_eq!(SiteState::parse(state.as_str()), Some(state));
        }
        for kind in ALL_EVENTS {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(SiteState::parse("done"), None);
        assert_eq!(EventKind::parse("dispatched"), None);
    }

    #[test]
    fn final_states_are_the_ones_no_step_leaves() {
        let open: Vec<SiteState> = ALL_STATES.into_iter().filter(|s| !s.is_final()).collect();
        assert_eq!(
            open,
            [
                SiteState::AwaitingApproval,
                SiteState::Approved,
                SiteState::Dispatched
            ]
        );
    }

    #[test]
    fn every_state_is_reachable_and_only_dispatched_work_is_answered() {
        for state in ALL_STATES {
            assert!(
                state == SiteState::AwaitingApproval || ALL_STEPS.iter().any(|s| s.to() == state),
                "{state:?}"
            );
        }
        for step in [SiteStep::Answer, SiteStep::Refuse, SiteStep::Fail] {
            assert_eq!(step.from(), &[SiteState::Dispatched]);
        }
    }

    #[test]
    fn a_question_ends_merged_or_failed() {
        assert_eq!(QuestionState::of(false, "", false), QuestionState::Open);
        assert_eq!(QuestionState::of(true, "", false), QuestionState::Merged);
        assert_eq!(
            QuestionState::of(true, "why", false),
            QuestionState::MergeFailed
        );
        assert_eq!(QuestionState::of(true, "", true), QuestionState::Withdrawn);
    }

    #[test]
    fn only_an_approval_refusal_or_a_rejection_is_approved_again() {
        assert_eq!(
            SiteStep::Reapprove.from(),
            &[SiteState::Refused, SiteState::Rejected]
        );
        assert_eq!(SiteStep::Reapprove.to(), SiteState::Approved);
        // Re-approval does not make a part open: a question whose parts are all refused
        // or rejected is finished (and merged) until a steward approves again.
        assert!(SiteState::Refused.is_final() && SiteState::Rejected.is_final());
        assert!(SiteState::Withdrawn.is_final());
    }
}
