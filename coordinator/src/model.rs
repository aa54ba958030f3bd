//! The coordinator's vocabulary: roles, users, questions and their per-site states, with
//! their stored names and their wire (proto) forms.

use ern_proto::v1;

/// What a user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Submits questions and reads results.
    Researcher,
    /// Approves or rejects questions for one site.
    Steward,
    /// Runs the network.
    Operator,
    /// A hospital node of one site.
    Node,
}

impl Role {
    /// The stored and command-line name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Researcher => "researcher",
            Role::Steward => "steward",
            Role::Operator => "operator",
            Role::Node => "node",
        }
    }

    /// Parses a stored or command-line name.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "researcher" => Some(Role::Researcher),
            "steward" => Some(Role::Steward),
            "operator" => Some(Role::Operator),
            "node" => Some(Role::Node),
            _ => None,
        }
    }

    /// Whether users of this role belong to one site.
    pub fn has_site(self) -> bool {
        matches!(self, Role::Steward | Role::Node)
    }

    /// The wire form.
    pub fn to_proto(self) -> v1::Role {
        match self {
            Role::Researcher => v1::Role::Researcher,
            Role::Steward => v1::Role::Steward,
            Role::Operator => v1::Role::Operator,
            Role::Node => v1::Role::Node,
        }
    }

    /// From the wire form.
    pub fn from_proto(role: v1::Role) -> Option<Role> {
        match role {
            v1::Role::Researcher => Some(Role::Researcher),
            v1::Role::Steward => Some(Role::Steward),
            v1::Role::Operator => Some(Role::Operator),
            v1::Role::Node => Some(Role::Node),
            v1::Role::Unspecified => None,
        }
    }
}

/// A user (or node) known to the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Unique name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Site, for stewards and nodes; empty otherwise.
    pub site: String,
    /// When enrolled.
    pub created_at: u64,
    /// When its token stops working; 0 if never.
    pub expires_at: u64,
}

impl User {
    /// Whether its token has expired at `now`.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && now >= self.expires_at
    }
}

pub use crate::lifecycle::SiteState;

/// A study: the unit stewards approve research under (DESIGN.md, "Studies and privacy
/// budgets"). Every question belongs to one, and approvals sign its id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Study {
    /// Id, unique in the network; the `study` of every approval of its questions.
    pub id: String,
    /// Title.
    pub title: String,
    /// Purpose: what stewards approve its questions under.
    pub purpose: String,
    /// The researchers on it (user names), sorted.
    pub researchers: Vec<String>,
    /// When created.
    pub created_at: u64,
    /// Who created it: an operator, or `coordinator` for the study of a question stored
    /// before studies existed (migration 8).
    pub created_by: String,
}

impl Study {
    /// The wire form.
    pub fn to_proto(&self) -> v1::Study {
        v1::Study {
            id: self.id.clone(),
            title: self.title.clone(),
            purpose: self.purpose.clone(),
            researchers: self.researchers.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
        }
    }
}

/// A submitted question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredQuery {
    /// Id.
    pub id: String,
    /// The study it belongs to: the `study` its approvals sign.
    pub study_id: String,
    /// Title.
    pub title: String,
    /// Purpose.
    pub purpose: String,
    /// Exact SQL.
    pub sql: String,
    /// Canonical hash.
    pub query_hash: String,
    /// Submitting user.
    pub submitted_by: String,
    /// Submission time.
    pub submitted_at: u64,
    /// Deadline.
    pub deadline: u64,
    /// Whether finished: merged, or failed to merge.
    pub complete: bool,
    /// Why its answers could not be merged (empty when they were).
    pub failure: String,
    /// When its researcher withdrew it; 0 if they did not.
    pub withdrawn_at: u64,
}

impl StoredQuery {
    /// Where the question stands as a whole.
    pub fn state(&self) -> crate::lifecycle::QuestionState {
        crate::lifecycle::QuestionState::of(self.complete, &self.failure, self.withdrawn_at != 0)
    }
}

/// One site's part in a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The question.
    pub query_id: String,
    /// The site.
    pub site: String,
    /// Its state.
    pub state: SiteState,
    /// Rule, reason or reference.
    pub detail: String,
    /// What kind of failure or resource refusal the node reported; empty otherwise.
    pub category: String,
    /// The node's audit reference for it; empty where none was given.
    pub reference: String,
    /// Last change.
    pub updated_at: u64,
    /// Released partials (Arrow IPC), once answered.
    pub partial: Option<Vec<u8>>,
}

impl Target {
    /// The wire form.
    pub fn to_proto(&self) -> v1::SiteStatus {
        v1::SiteStatus {
            site: self.site.clone(),
            state: self.state.to_proto() as i32,
            detail: self.detail.clone(),
            updated_at: self.updated_at,
            category: self.category.clone(),
            reference: self.reference.clone(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
