//! The cryptographic core of secure aggregation: k applies to the network total, while no
//! one but a hospital sees that hospital's own numbers (DESIGN.md, "Secure aggregation").
//!
//! Pairwise masks after Bonawitz et al. (2017), without dropout recovery. Round 1: each
//! participant makes a fresh X25519 key per peer and signs a [`RoundStatement`] (query,
//! round, participant list, its keys, its k) with its long-term identity key; each node
//! checks every peer's statement against its own [`Roster`] ([`verify_round`]). Round 2:
//! each pair derives a seed from its X25519 secret, expands it with ChaCha20 into a mask,
//! and each site sends its vector plus the masks shared with later sites minus those
//! shared with earlier ones ([`RoundKeys::masked_vector`]); the masks cancel in the sum
//! ([`sum_vectors`]).
//!
//! # Trust boundary
//! Everything relayed by the coordinator is untrusted: a statement counts only when the
//! key the node's own roster pins for its site signed it, and only when every peer signed
//! the same query, round and participant list as the node did. This module does no I/O
//! besides the identity key files, and keeps no state: recording that a node sent its
//! masked vector for a query (at most once, ever) is the caller's job, as is refusing to
//! re-run a round with fewer sites. The ephemeral keys are consumed when the masked
//! vector is made, so one [`RoundKeys`] cannot mask twice.
//!
//! # Layout
//! - [`identity`]: site identity keys (Ed25519) and the roster of peers' public keys.
//! - [`statement`]: round 1, the signed statement and its verification.
//! - [`masks`]: round 2, pairwise masks and the masked vector.

pub mod identity;
pub mod masks;
pub mod statement;

pub use identity::{IdentityError, Roster, SiteIdentity, SitePublicKey};
pub use masks::sum_vectors;
pub use statement::{PeerPublicKeys, RoundKeys, RoundStatement, RoundTerms, verify_round};

/// Why a secure-aggregation round cannot go on. Messages name sites and fields, never a
/// data value; [`RoundError::rule`] gives a stable name for audit logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoundError {
    /// A participant is not in this node's roster.
    #[error("site {site} is a participant but not in this node's roster of identity keys")]
    Roster {
        /// The site.
        site: String,
    },
    /// A statement's signature does not verify with its site's roster key.
    #[error("the round-1 statement of site {site} is not signed by its roster key")]
    Signature {
        /// The site.
        site: String,
    },
    /// The participants differ, a statement is missing or doubled, or this node is not in
    /// the round.
    #[error("participants: site {site} {problem}")]
    Participants {
        /// The site concerned.
        site: String,
        /// What is wrong, e.g. "sent no round-1 statement".
        problem: &'static str,
    },
    /// A statement is for another query, round, query text, domain or vector length.
    #[error("site {site} signed a different {field} than this node")]
    Mismatch {
        /// The site.
        site: String,
        /// The field that differs: "query id", "round id", "query hash",
        /// "domain digest", "vector length" or "statement".
        field: &'static str,
    },
    /// Fewer participants than this node's minimum.
    #[error("the round has {participants} participants; this node requires at least {min_sites}")]
    TooFewSites {
        /// Participants in the round.
        participants: usize,
        /// This node's minimum (`min_secure_sites`).
        min_sites: usize,
    },
    /// A statement is malformed.
    #[error("the round-1 statement of site {site} is malformed: {problem}")]
    Statement {
        /// The site.
        site: String,
        /// What is wrong, e.g. "its peer keys are not sorted by peer".
        problem: &'static str,
    },
    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

impl RoundError {
    /// A short stable name for audit logs and coverage reports.
    pub fn rule(&self) -> &'static str {
        match self {
            RoundError::Roster { .. } => "secure-roster",
            RoundError::Signature { .. } => "secure-signature",
            RoundError::Participants { .. } => "secure-participants",
            RoundError::Mismatch { .. } => "secure-mismatch",
            RoundError::TooFewSites { .. } => "secure-too-few-sites",
            RoundError::Statement { .. } => "secure-statement",
            RoundError::Random => "secure-random",
        }
    }
}

/// Sites, identities and honest rounds shared by this module's tests.
#[cfg(test)]
mod testing {
    use std::sync::OnceLock;

    use super::{Roster, RoundError, RoundKeys, RoundStatement, RoundTerms, SiteIdentity};

    /// The pool of site ids the tests draw participants from, sorted.
    const POOL: [&str; 16] = [
        "aachen", "bergamo", "bordeaux", "brno", "cork", "gent", "graz", "kaunas", "leiden",
        "lille", "lund", "porto", "riga", "tartu", "turku", "utrecht",
    ];

    /// The number of sites in the pool.
    pub(super) const POOL_SIZE: usize = POOL.len();

    /// The identities of the pool, generated once per test binary.
    fn identities() -> &'static [SiteIdentity] {
        static IDENTITIES: OnceLock<Vec<SiteIdentity>> = OnceLock::new();
        IDENTITIES.get_or_init(|| {
            POOL.iter()
                .map(|site| {
                    let dir = tempfile::tempdir().expect("temp dir");
                    SiteIdentity::generate(dir.path()).expect(site);
                    SiteIdentity::load(&SiteIdentity::key_path(dir.path())).expect(site)
                })
                .collect()
        })
    }

    /// The identity of the `index`th site of the pool.
    pub(super) fn identity(index: usize) -> &'static SiteIdentity {
        &identities()[index]
    }

    fn identity_of(site: &str) -> &'static SiteIdentity {
        let index = POOL.iter().position(|s| *s == site).expect("a pool site");
        identity(index)
    }

    /// The first `n` sites of the pool.
    pub(super) fn sites(n: usize) -> Vec<String> {
        POOL[..n].iter().map(|s| s.to_string()).collect()
    }

    /// The sites of the pool whose indices are set in `mask`, in order.
    pub(super) fn sites_in(mask: u32) -> Vec<String> {
        (0..POOL_SIZE)
            .filter(|i| mask & (1 << i) != 0)
            .map(|i| POOL[i].to_string())
            .collect()
    }

    /// A roster of `sites` with their true keys.
    pub(super) fn roster_of(sites: &[String]) -> Roster {
        Roster::new(
            sites
                .iter()
                .map(|site| (site.clone(), identity_of(site).public_key())),
        )
        .expect("roster")
    }

    /// The terms of a test round.
    pub(super) fn terms(participants: &[String], vector_len: u64, round_id: &str) -> RoundTerms {
        RoundTerms {
            query_id: "q-7".into(),
            round_id: round_id.into(),
            query_hash: "ab".repeat(32),
            domain_digest: "cd".repeat(32),
            vector_len,
            participants: participants.to_vec(),
        }
    }

    /// An honest round 1: every participant's keys and signed statement, in participant
    /// order, and a roster of the whole pool.
    pub(super) struct Network {
        pub(super) statements: Vec<RoundStatement>,
        pub(super) keys: Vec<RoundKeys>,
        pub(super) roster: Roster,
    }

    impl Network {
        pub(super) fn new(participants: &[String], vector_len: u64, round_id: &str) -> Self {
            let rng = ring::rand::SystemRandom::new();
            let mut statements = Vec::new();
            let mut keys = Vec::new();
            for site in participants {
                let (round_keys, public) =
                    RoundKeys::new(site, participants, &rng).expect("round keys");
                let terms = terms(participants, vector_len, round_id);
                let statement =
                    RoundStatement::sign(terms, site, public, 5, 360_000, identity_of(site))
                        .expect("sign");
                statements.push(statement);
                keys.push(round_keys);
            }
            Network {
                statements,
                keys,
                roster: roster_of(&sites(POOL_SIZE)),
            }
        }

        /// Round 1 checked at the node whose statement is `own`, with a minimum of 3.
        pub(super) fn verify(&self, own: &RoundStatement) -> Result<(), RoundError> {
            super::verify_round(own, &self.statements, &self.roster, 3)
        }
    }
}
