//! Round 1 of secure aggregation: each participant's signed statement of what it takes
//! part in, and the checks a node makes before it masks anything.
//!
//! A node masks its vector only for peers it knows (its roster), and only when every peer
//! signed the same query, round, query text, domain and participant list as the node
//! did: otherwise a coordinator could show each node a different set of peers, or replay
//! a key from another round, and learn one site's numbers from the difference.
//!
//! # Signed bytes
//! A statement's signature covers, in this order, with `field(x)` the length of `x` as 8
//! bytes big-endian followed by `x`, and integers big-endian:
//!
//! ```text
//! field("ern secure-aggregation round-1 v1")
//! field(query_id) field(round_id) field(query_hash) field(domain_digest)
//! vector_len: 8 bytes
//! number of participants: 8 bytes, then field(site id) for each, in order
//! field(site)
//! number of peer keys: 8 bytes, then field(peer site id) and the 32-byte X25519 key, each
//! k: 4 bytes
//! max_concentration_ppm: 4 bytes
//! field(privacy)
//! ```
//!
//! `privacy` is the signer's noise declaration (empty for none; otherwise its mechanism,
//! epsilon in millionths and bounds): every participant must have signed the same one,
//! since each adds `1/n` of the noise of the network total and the total has the noise
//! the policy asks for only if all do (red team: a noising site's share assumed peers
//! that added none).
//!
//! Every variable-length item carries its length, so no two different statements have
//! the same bytes, whatever the ids hold.

use ring::agreement::{EphemeralPrivateKey, X25519};
use ring::rand::SecureRandom;

use super::RoundError;
use super::identity::{Roster, SiteIdentity};

/// A site's fresh X25519 public keys for one round, one per peer, sorted by peer.
pub type PeerPublicKeys = Vec<(String, [u8; 32])>;

/// The domain separator at the start of every statement's signed bytes.
const DOMAIN: &[u8] = b"ern secure-aggregation round-1 v2";

/// Appends `bytes` with its length (8 bytes, big-endian) in front.
pub(super) fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// True when `items` is sorted and holds no item twice.
fn strictly_sorted<T: Ord>(items: impl IntoIterator<Item = T>) -> bool {
    let mut previous: Option<T> = None;
    for item in items {
        if previous.as_ref().is_some_and(|p| *p >= item) {
            return false;
        }
        previous = Some(item);
    }
    true
}

/// What every participant of one round must sign identically: the question, the round,
/// the cells and who takes part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundTerms {
    /// The query id.
    pub query_id: String,
    /// The round id (a query has at most one round a node takes part in).
    pub round_id: String,
    /// `ern_queries::query_hash` of the approved SQL.
    pub query_hash: String,
    /// A digest of the public domain: the cells and their order.
    pub domain_digest: String,
    /// The number of slots in every site's vector.
    pub vector_len: u64,
    /// The participating sites, sorted and unique.
    pub participants: Vec<String>,
}

/// One participant's signed round-1 statement, relayed by the coordinator to every other
/// participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundStatement {
    /// The query id.
    pub query_id: String,
    /// The round id.
    pub round_id: String,
    /// `ern_queries::query_hash` of the approved SQL.
    pub query_hash: String,
    /// A digest of the public domain: the cells and their order.
    pub domain_digest: String,
    /// The number of slots in every site's vector.
    pub vector_len: u64,
    /// The participating sites: sorted, unique, including `site`.
    pub participants: Vec<String>,
    /// The signer.
    pub site: String,
    /// The signer's fresh X25519 public key for each other participant, sorted by peer.
    pub peer_keys: Vec<(String, [u8; 32])>,
    /// The signer's k: the coordinator applies the largest k any participant signed.
    pub k: u32,
    /// The signer's dominance limit, in parts per million.
    pub max_concentration_ppm: u32,
    /// The signer's noise declaration (empty for none): every participant must sign the
    /// same.
    pub privacy: String,
    /// The signer's Ed25519 identity signature over [`RoundStatement::signed_bytes`].
    pub signature: Vec<u8>,
}

impl RoundStatement {
    /// Builds and signs this node's own statement from the round's terms and the public
    /// keys [`RoundKeys::new`] returned. Fails when the result would be malformed (the
    /// site not among the participants, a list unsorted, a key missing for a peer).
    pub fn sign(
        terms: RoundTerms,
        site: &str,
        peer_keys: PeerPublicKeys,
        k: u32,
        max_concentration_ppm: u32,
        identity: &SiteIdentity,
    ) -> Result<Self, RoundError> {
        Self::sign_declaring(
            terms,
            site,
            peer_keys,
            (k, max_concentration_ppm, String::new()),
            identity,
        )
    }

    /// [`RoundStatement::sign`] with the signer's limits and noise declaration:
    /// `(k, max_concentration_ppm, privacy)`.
    pub fn sign_declaring(
        terms: RoundTerms,
        site: &str,
        peer_keys: PeerPublicKeys,
        (k, max_concentration_ppm, privacy): (u32, u32, String),
        identity: &SiteIdentity,
    ) -> Result<Self, RoundError> {
        let mut statement = RoundStatement {
            query_id: terms.query_id,
            round_id: terms.round_id,
            query_hash: terms.query_hash,
            domain_digest: terms.domain_digest,
            vector_len: terms.vector_len,
            participants: terms.participants,
            site: site.to_string(),
            peer_keys,
            k,
            max_concentration_ppm,
            privacy,
            signature: Vec::new(),
        };
        statement.check_form()?;
        statement.signature = identity.sign(&statement.signed_bytes());
        Ok(statement)
    }

    /// The exact bytes the signature covers (see the module documentation).
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        put_field(&mut out, DOMAIN);
        put_field(&mut out, self.query_id.as_bytes());
        put_field(&mut out, self.round_id.as_bytes());
        put_field(&mut out, self.query_hash.as_bytes());
        put_field(&mut out, self.domain_digest.as_bytes());
        put_u64(&mut out, self.vector_len);
        put_u64(&mut out, self.participants.len() as u64);
        for participant in &self.participants {
            put_field(&mut out, participant.as_bytes());
        }
        put_field(&mut out, self.site.as_bytes());
        put_u64(&mut out, self.peer_keys.len() as u64);
        for (peer, key) in &self.peer_keys {
            put_field(&mut out, peer.as_bytes());
            out.extend_from_slice(key);
        }
        put_u32(&mut out, self.k);
        put_u32(&mut out, self.max_concentration_ppm);
        put_field(&mut out, self.privacy.as_bytes());
        out
    }

    /// The round's terms as this statement states them.
    pub fn terms(&self) -> RoundTerms {
        RoundTerms {
            query_id: self.query_id.clone(),
            round_id: self.round_id.clone(),
            query_hash: self.query_hash.clone(),
            domain_digest: self.domain_digest.clone(),
            vector_len: self.vector_len,
            participants: self.participants.clone(),
        }
    }

    /// The signer's X25519 public key for `peer`, if it carries one.
    pub fn key_for(&self, peer: &str) -> Option<&[u8; 32]> {
        self.peer_keys
            .iter()
            .find(|(site, _)| site == peer)
            .map(|(_, key)| key)
    }

    /// Checks the shape of the statement on its own: participants sorted and unique, the
    /// signer among them, and exactly one key per other participant, sorted by peer.
    fn check_form(&self) -> Result<(), RoundError> {
        let malformed = |problem| RoundError::Statement {
            site: self.site.clone(),
            problem,
        };
        if !strictly_sorted(&self.participants) {
            return Err(malformed("its participant list is not sorted and unique"));
        }
        if self.participants.binary_search(&self.site).is_err() {
            return Err(RoundError::Participants {
                site: self.site.clone(),
                problem: "is not in the participant list it signed",
            });
        }
        if !strictly_sorted(self.peer_keys.iter().map(|(peer, _)| peer)) {
            return Err(malformed("its peer keys are not sorted by peer"));
        }
        let others = self.participants.iter().filter(|p| **p != self.site);
        if !others.eq(self.peer_keys.iter().map(|(peer, _)| peer)) {
            return Err(malformed(
                "it does not carry exactly one X25519 key for each other participant",
            ));
        }
        Ok(())
    }
}

/// A node's fresh X25519 private keys for one round, one per peer. They are consumed by
/// [`RoundKeys::masked_vector`], so a node cannot mask twice with the same keys.
pub struct RoundKeys {
    pub(super) site: String,
    pub(super) participants: Vec<String>,
    pub(super) peers: Vec<PeerKey>,
}

/// One peer's private key and the public key sent to it.
pub(super) struct PeerKey {
    pub(super) peer: String,
    pub(super) private: EphemeralPrivateKey,
    pub(super) public: [u8; 32],
}

impl std::fmt::Debug for RoundKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoundKeys")
            .field("site", &self.site)
            .field(
                "peers",
                &self.peers.iter().map(|p| &p.peer).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl RoundKeys {
    /// Makes one fresh X25519 key per other participant; returns the keys and their
    /// public halves, sorted by peer, for [`RoundStatement::sign`]. `participants` must
    /// be sorted, unique, and include `site`.
    pub fn new(
        site: &str,
        participants: &[String],
        rng: &dyn SecureRandom,
    ) -> Result<(RoundKeys, PeerPublicKeys), RoundError> {
        if !strictly_sorted(participants) {
            return Err(RoundError::Statement {
                site: site.to_string(),
                problem: "its participant list is not sorted and unique",
            });
        }
        if participants
            .binary_search_by(|p| p.as_str().cmp(site))
            .is_err()
        {
            return Err(RoundError::Participants {
                site: site.to_string(),
                problem: "is not in the participant list",
            });
        }
        let mut peers = Vec::with_capacity(participants.len().saturating_sub(1));
        for peer in participants.iter().filter(|p| *p != site) {
            let private =
                EphemeralPrivateKey::generate(&X25519, rng).map_err(|_| RoundError::Random)?;
            let public = private
                .compute_public_key()
                .ok()
                .and_then(|key| <[u8; 32]>::try_from(key.as_ref()).ok())
                .ok_or(RoundError::Random)?;
            peers.push(PeerKey {
                peer: peer.clone(),
                private,
                public,
            });
        }
        let public_keys = peers.iter().map(|p| (p.peer.clone(), p.public)).collect();
        let keys = RoundKeys {
            site: site.to_string(),
            participants: participants.to_vec(),
            peers,
        };
        Ok((keys, public_keys))
    }

    /// The public keys sent to the peers, sorted by peer.
    pub fn public_keys(&self) -> PeerPublicKeys {
        self.peers
            .iter()
            .map(|p| (p.peer.clone(), p.public))
            .collect()
    }
}

/// Checks round 1 from one node's side before it masks anything: `own` is the statement
/// the node signed, `all` every statement the coordinator relayed (the node's own
/// included), `roster` the node's pinned identity keys (its own site included), and
/// `min_sites` its `min_secure_sites`.
///
/// Passes when the node is a participant; there are at least `min_sites` participants,
/// all in the roster; there is exactly one statement per participant and none from
/// anyone else; every statement is signed by its site's roster key, is well formed, and
/// names the same query id, round id, query hash, domain digest, vector length and
/// participant list as `own`; and the relayed copy of `own` is `own`.
pub fn verify_round(
    own: &RoundStatement,
    all: &[RoundStatement],
    roster: &Roster,
    min_sites: usize,
) -> Result<(), RoundError> {
    own.check_form()?;
    if own.participants.len() < min_sites {
        return Err(RoundError::TooFewSites {
            participants: own.participants.len(),
            min_sites,
        });
    }
    for participant in &own.participants {
        if roster.get(participant).is_none() {
            return Err(RoundError::Roster {
                site: participant.clone(),
            });
        }
    }
    if let Some(stranger) = all
        .iter()
        .find(|s| own.participants.binary_search(&s.site).is_err())
    {
        return Err(RoundError::Participants {
            site: stranger.site.clone(),
            problem: "sent a round-1 statement but is not a participant",
        });
    }
    for participant in &own.participants {
        let mut from = all.iter().filter(|s| s.site == *participant);
        let statement = from.next().ok_or_else(|| RoundError::Participants {
            site: participant.clone(),
            problem: "sent no round-1 statement",
        })?;
        if from.next().is_some() {
            return Err(RoundError::Participants {
                site: participant.clone(),
                problem: "sent more than one round-1 statement",
            });
        }
        check_peer(own, statement, roster)?;
    }
    Ok(())
}

/// The checks of one relayed statement against the node's own; the site is known to be a
/// participant in the roster.
fn check_peer(
    own: &RoundStatement,
    statement: &RoundStatement,
    roster: &Roster,
) -> Result<(), RoundError> {
    let site = &statement.site;
    let signed = roster
        .get(site)
        .is_some_and(|key| key.verifies(&statement.signed_bytes(), &statement.signature));
    if !signed {
        return Err(RoundError::Signature { site: site.clone() });
    }
    let mismatch = |field| RoundError::Mismatch {
        site: site.clone(),
        field,
    };
    if statement.query_id != own.query_id {
        return Err(mismatch("query id"));
    }
    if statement.round_id != own.round_id {
        return Err(mismatch("round id"));
    }
    if statement.query_hash != own.query_hash {
        return Err(mismatch("query hash"));
    }
    if statement.domain_digest != own.domain_digest {
        return Err(mismatch("domain digest"));
    }
    if statement.vector_len != own.vector_len {
        return Err(mismatch("vector length"));
    }
    if statement.privacy != own.privacy {
        return Err(mismatch("privacy policy"));
    }
    if statement.participants != own.participants {
        return Err(RoundError::Participants {
            site: site.clone(),
            problem: "signed a different participant list than this node",
        });
    }
    statement.check_form()?;
    if statement.site == own.site && statement != own {
        return Err(mismatch("statement"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{Network, identity, roster_of, sites, terms};
    use super::*;

    fn rule(result: Result<(), RoundError>) -> &'static str {
        match result {
            Ok(()) => "ok",
            Err(error) => {
                // Messages name sites and fields, and must render.
                assert!(!error.to_string().is_empty());
                error.rule()
            }
        }
    }

    /// The format in the module documentation, re-derived by hand so it cannot drift.
    #[test]
    fn signed_bytes_follow_the_documented_format() {
        let statement = RoundStatement {
            query_id: "q".into(),
            round_id: "r1".into(),
            query_hash: "h".into(),
            domain_digest: "dd".into(),
            vector_len: 3,
            participants: vec!["a".into(), "b".into()],
            site: "a".into(),
            peer_keys: vec![("b".into(), [7u8; 32])],
            k: 5,
            max_concentration_ppm: 360_000,
            privacy: "discrete-laplace".into(),
            signature: vec![1, 2, 3],
        };
        let field = |bytes: &[u8]| {
            let mut out = (bytes.len() as u64).to_be_bytes().to_vec();
            out.extend_from_slice(bytes);
            out
        };
        let mut expected = field(b"ern secure-aggregation round-1 v2");
        for item in [&b"q"[..], b"r1", b"h", b"dd"] {
            expected.extend(field(item));
        }
        expected.extend(3u64.to_be_bytes());
        expected.extend(2u64.to_be_bytes());
        expected.extend(field(b"a"));
        expected.extend(field(b"b"));
        expected.extend(field(b"a"));
        expected.extend(1u64.to_be_bytes());
        expected.extend(field(b"b"));
        expected.extend([7u8; 32]);
        expected.extend(5u32.to_be_bytes());
        expected.extend(360_000u32.to_be_bytes());
        expected.extend(field(b"discrete-laplace"));
        assert_eq!(statement.signed_bytes(), expected);

        // Moving a character from one id to the next changes the bytes.
        let mut shifted = statement.clone();
        shifted.query_id = "qr".into();
        shifted.round_id = "1".into();
        assert_ne!(shifted.signed_bytes(), statement.signed_bytes());
    }

    #[test]
    fn an_honest_round_verifies_at_every_node() {
        let network = Network::new(&sites(4), 6, "r-1");
        for own in &network.statements {
            assert_eq!(rule(network.verify(own)), "ok");
        }
    }

    #[test]
    fn a_participant_missing_from_the_roster_is_refused() {
        let network = Network::new(&sites(4), 6, "r-1");
        let roster = roster_of(&sites(4)[..3]);
        let result = verify_round(&network.statements[0], &network.statements, &roster, 3);
        assert_eq!(rule(result), "secure-roster");
    }

    #[test]
    fn a_statement_signed_by_the_wrong_key_is_refused() {
        let mut network = Network::new(&sites(4), 6, "r-1");
        let forged = &mut network.statements[2];
        forged.signature = identity(0).sign(&forged.signed_bytes());
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-signature"
        );
        // The node's own statement is checked too, against its own roster key.
        assert_eq!(
            rule(network.verify(&network.statements[2])),
            "secure-signature"
        );
    }

    #[test]
    fn a_k_tampered_after_signing_is_refused() {
        let mut network = Network::new(&sites(3), 6, "r-1");
        network.statements[1].k = 1;
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-signature"
        );
    }

    #[test]
    fn nodes_given_different_participant_lists_are_refused() {
        let all = sites(4);
        let mut network = Network::new(&all[..3], 6, "r-1");
        // The coordinator tells the third site that a fourth takes part.
        let (_, keys) =
            RoundKeys::new(&all[2], &all, &ring::rand::SystemRandom::new()).expect("round keys");
        network.statements[2] = RoundStatement::sign(
            terms(&all, 6, "r-1"),
            &all[2],
            keys,
            5,
            360_000,
            identity(2),
        )
        .expect("sign");
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-participants"
        );
        assert_eq!(
            rule(network.verify(&network.statements[2])),
            "secure-participants"
        );
    }

    #[test]
    fn a_statement_for_another_round_is_refused() {
        let mut network = Network::new(&sites(3), 6, "r-1");
        let replayed = Network::new(&sites(3), 6, "r-0");
        network.statements[1] = replayed.statements[1].clone();
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-mismatch"
        );
    }

    #[test]
    fn a_statement_for_another_vector_length_is_refused() {
        let mut network = Network::new(&sites(3), 6, "r-1");
        let other = Network::new(&sites(3), 7, "r-1");
        network.statements[2] = other.statements[2].clone();
        let result = network.verify(&network.statements[0]);
        assert!(matches!(
            result,
            Err(RoundError::Mismatch { field, .. }) if field == "vector length"
        ));
    }

    #[test]
    fn fewer_than_the_minimum_of_sites_is_refused() {
        let network = Network::new(&sites(3), 6, "r-1");
        let result = verify_round(
            &network.statements[0],
            &network.statements,
            &network.roster,
            4,
        );
        assert_eq!(rule(result), "secure-too-few-sites");
    }

    #[test]
    fn a_missing_statement_is_refused() {
        let mut network = Network::new(&sites(4), 6, "r-1");
        network.statements.remove(3);
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-participants"
        );
    }

    #[test]
    fn a_duplicate_statement_is_refused() {
        let mut network = Network::new(&sites(4), 6, "r-1");
        let copy = network.statements[1].clone();
        network.statements.push(copy);
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-participants"
        );
    }

    #[test]
    fn a_statement_from_a_non_participant_is_refused() {
        let all = sites(4);
        let mut network = Network::new(&all[..3], 6, "r-1");
        let stranger = Network::new(&all, 6, "r-1");
        network.statements.push(stranger.statements[3].clone());
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-participants"
        );
    }

    #[test]
    fn a_node_outside_the_participant_list_is_refused() {
        let network = Network::new(&sites(4), 6, "r-1");
        let mut own = network.statements[0].clone();
        own.participants.remove(0);
        assert_eq!(rule(network.verify(&own)), "secure-participants");
        let error = RoundKeys::new(
            &own.site,
            &own.participants,
            &ring::rand::SystemRandom::new(),
        )
        .expect_err("not a participant");
        assert_eq!(error.rule(), "secure-participants");
    }

    #[test]
    fn a_relayed_copy_of_the_own_statement_must_be_the_own_statement() {
        let network = Network::new(&sites(3), 6, "r-1");
        let mut own = network.statements[0].clone();
        own.k = 9;
        own.signature = identity(0).sign(&own.signed_bytes());
        assert_eq!(rule(network.verify(&own)), "secure-mismatch");
    }

    #[test]
    fn malformed_statements_are_refused() {
        let all = sites(3);
        let terms = terms(&all, 6, "r-1");
        let (_, mut keys) =
            RoundKeys::new(&all[0], &all, &ring::rand::SystemRandom::new()).expect("keys");
        keys.reverse();
        let error = RoundStatement::sign(terms.clone(), &all[0], keys.clone(), 5, 0, identity(0))
            .expect_err("unsorted keys");
        assert_eq!(error.rule(), "secure-statement");
        keys.pop();
        let error = RoundStatement::sign(terms.clone(), &all[0], keys, 5, 0, identity(0))
            .expect_err("a key missing");
        assert_eq!(error.rule(), "secure-statement");

        // A peer that signed a statement without a key for this node.
        let mut network = Network::new(&all, 6, "r-1");
        let peer = &mut network.statements[1];
        peer.peer_keys.retain(|(p, _)| *p != all[0]);
        peer.signature = identity(1).sign(&peer.signed_bytes());
        assert_eq!(
            rule(network.verify(&network.statements[0])),
            "secure-statement"
        );

        let mut unsorted = all.clone();
        unsorted.swap(0, 1);
        let error = RoundKeys::new(&all[0], &unsorted, &ring::rand::SystemRandom::new())
            .expect_err("unsorted participants");
        assert_eq!(error.rule(), "secure-statement");
    }
}
