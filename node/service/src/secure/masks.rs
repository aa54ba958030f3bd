//! Round 2 of secure aggregation: the masked vector a site sends, and the sum that
//! cancels the masks.
//!
//! Each pair of participants i < j (site ids in byte order) shares a mask m_ij that no
//! one else can compute: the X25519 secret of their round-1 keys, through HKDF-SHA256
//! (salt `"ern secure-aggregation v1"`, info the query id, the round id and the two site
//! ids in sorted order, each with its length as 8 bytes big-endian in front) into a
//! 32-byte seed, expanded by ChaCha20 (`rand_chacha::ChaCha20Rng`, one `next_u64` per
//! slot). Site i sends v_i + Σ_{j>i} m_ij − Σ_{j<i} m_ji, modulo 2^64. Each mask is
//! added once and subtracted once, so the sum of all vectors is Σ v_i; any proper subset
//! of the vectors is uniformly random. No dropout recovery: a round where a participant
//! does not deliver fails.

use rand_chacha::ChaCha20Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use ring::agreement::{UnparsedPublicKey, X25519, agree_ephemeral};
use ring::hkdf;

use super::RoundError;
use super::statement::{PeerKey, RoundKeys, RoundStatement, put_field};

/// The HKDF salt of every pairwise seed.
const SALT: &[u8] = b"ern secure-aggregation v1";

/// Adds `v` to `acc` slot by slot, modulo 2^64: the coordinator's sum of masked
/// vectors. Both must have the vector length every participant signed; the caller checks
/// that before adding (a slot beyond the shorter of the two is left alone).
pub fn sum_vectors(acc: &mut [u64], v: &[u64]) {
    debug_assert_eq!(acc.len(), v.len(), "vectors of one round have one length");
    for (total, value) in acc.iter_mut().zip(v) {
        *total = total.wrapping_add(*value);
    }
}

/// The mask a pair shares: `len` words of ChaCha20 keyed by `seed`.
pub(crate) fn pairwise_mask(seed: &[u8; 32], len: usize) -> Vec<u64> {
    let mut rng = ChaCha20Rng::from_seed(*seed);
    (0..len).map(|_| rng.next_u64()).collect()
}

/// The pair's 32-byte seed from their X25519 secret. Both sides derive the same seed,
/// since the site ids go in sorted order. `None` only if HKDF refused to expand 32
/// bytes, which it does not.
fn derive_seed(
    secret: &[u8],
    query_id: &str,
    round_id: &str,
    site: &str,
    peer: &str,
) -> Option<[u8; 32]> {
    let (low, high) = if site <= peer {
        (site, peer)
    } else {
        (peer, site)
    };
    let mut info = Vec::with_capacity(64);
    for item in [query_id, round_id, low, high] {
        put_field(&mut info, item.as_bytes());
    }
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
    let mut seed = [0u8; 32];
    prk.expand(&[info.as_slice()], hkdf::HKDF_SHA256)
        .ok()?
        .fill(&mut seed)
        .ok()?;
    Some(seed)
}

/// `vector` plus the masks shared with later sites, minus those shared with earlier ones.
fn mask_with_seeds(site: &str, vector: &[u64], seeds: &[(String, [u8; 32])]) -> Vec<u64> {
    let mut out = vector.to_vec();
    for (peer, seed) in seeds {
        let mask = pairwise_mask(seed, out.len());
        let add = site < peer.as_str();
        for (slot, m) in out.iter_mut().zip(mask) {
            *slot = if add {
                slot.wrapping_add(m)
            } else {
                slot.wrapping_sub(m)
            };
        }
    }
    out
}

impl RoundKeys {
    /// Masks `vector` for the round of `own`, the statement made with these keys, given
    /// every relayed statement `all`. Call only after [`super::verify_round`] passed on
    /// the same statements; this re-checks only what it uses (one statement per peer,
    /// for the same query and round, with a key for this site).
    ///
    /// Consumes the keys: each private key does one agreement and is gone, so a node
    /// cannot send a second masked vector for the round.
    pub fn masked_vector(
        self,
        own: &RoundStatement,
        all: &[RoundStatement],
        vector: &[u64],
    ) -> Result<Vec<u64>, RoundError> {
        if own.site != self.site
            || own.participants != self.participants
            || own.peer_keys != self.public_keys()
        {
            return Err(RoundError::Statement {
                site: own.site.clone(),
                problem: "it was not made with these round keys",
            });
        }
        if u64::try_from(vector.len()).ok() != Some(own.vector_len) {
            return Err(RoundError::Mismatch {
                site: own.site.clone(),
                field: "vector length",
            });
        }
        let site = self.site;
        let mut seeds = Vec::with_capacity(self.peers.len());
        for PeerKey { peer, private, .. } in self.peers {
            let mut from = all.iter().filter(|s| s.site == peer);
            let (Some(statement), None) = (from.next(), from.next()) else {
                return Err(RoundError::Participants {
                    site: peer,
                    problem: "did not send exactly one round-1 statement",
                });
            };
            let mismatch = |field| RoundError::Mismatch {
                site: peer.clone(),
                field,
            };
            if statement.query_id != own.query_id {
                return Err(mismatch("query id"));
            }
            if statement.round_id != own.round_id {
                return Err(mismatch("round id"));
            }
            let bad_key = |problem| RoundError::Statement {
                site: peer.clone(),
                problem,
            };
            let their_key = statement
                .key_for(&site)
                .ok_or_else(|| bad_key("it carries no X25519 key for this node"))?;
            let seed = agree_ephemeral(
                private,
                &UnparsedPublicKey::new(&X25519, their_key),
                |secret| derive_seed(secret, &own.query_id, &own.round_id, &site, &peer),
            )
            .ok()
            .flatten()
            .ok_or_else(|| bad_key("its X25519 key for this node is not a valid public key"))?;
            seeds.push((peer, seed));
        }
        Ok(mask_with_seeds(&site, vector, &seeds))
    }
}

#[cfg(test)]
mod tests {
    use rand_chacha::ChaCha8Rng;

    use super::super::testing::{Network, POOL_SIZE, sites, sites_in};
    use super::super::verify_round;
    use super::*;

    fn wrapping_sum(vectors: &[Vec<u64>], len: usize) -> Vec<u64> {
        let mut total = vec![0u64; len];
        for vector in vectors {
            sum_vectors(&mut total, vector);
        }
        total
    }

    /// A value from one of three ranges: small, near 2^64 (so sums wrap), or anywhere.
    fn value(rng: &mut ChaCha8Rng) -> u64 {
        match rng.next_u64() % 3 {
            0 => rng.next_u64() % 1_000,
            1 => u64::MAX - rng.next_u64() % 1_000,
            _ => rng.next_u64(),
        }
    }

    #[test]
    fn masks_cancel_in_the_sum() {
        let mut rng = ChaCha8Rng::seed_from_u64(0x005e_c00e);
        for case in 0..200 {
            let count = 3 + (rng.next_u64() % 10) as usize;
            let mut mask = 0u32;
            while (mask.count_ones() as usize) < count {
                mask |= 1 << (rng.next_u64() % POOL_SIZE as u64);
            }
            let participants = sites_in(mask);
            let len = (rng.next_u64() % 17) as usize;
            let network = Network::new(&participants, len as u64, &format!("r-{case}"));
            if case % 20 == 0 {
                let own = &network.statements[case % participants.len()];
                verify_round(own, &network.statements, &network.roster, 3).expect("verify");
            }
            let plain: Vec<Vec<u64>> = participants
                .iter()
                .map(|_| (0..len).map(|_| value(&mut rng)).collect())
                .collect();
            let masked: Vec<Vec<u64>> = network
                .keys
                .into_iter()
                .zip(&network.statements)
                .zip(&plain)
                .map(|((keys, own), vector)| {
                    keys.masked_vector(own, &network.statements, vector)
                        .expect("masked vector")
                })
                .collect();
            assert_eq!(
                wrapping_sum(&masked, len),
                wrapping_sum(&plain, len),
                "case {case}: {participants:?}, {len} slots"
            );
            if len > 0 {
                assert_ne!(masked, plain, "case {case}: vectors left unmasked");
            }
        }
    }

    #[test]
    fn both_sides_of_a_pair_derive_one_seed() {
        let secret = [9u8; 32];
        let ab = derive_seed(&secret, "q", "r", "a", "b").expect("seed");
        assert_eq!(derive_seed(&secret, "q", "r", "b", "a"), Some(ab));
        assert_ne!(derive_seed(&secret, "q", "r2", "a", "b"), Some(ab));
        assert_ne!(derive_seed(&secret, "q", "r", "a", "c"), Some(ab));
        // Length prefixes: moving a character between the ids changes the seed.
        assert_ne!(derive_seed(&secret, "qr", "", "a", "b"), Some(ab));
    }

    /// Nodes of different versions must expand a seed identically: this is ChaCha20, the
    /// keystream of RFC 8439 appendix A.1 test vector #1 (zero key, nonce and counter),
    /// read as little-endian 64-bit words.
    #[test]
    fn pairwise_mask_is_chacha20() {
        assert_eq!(
            pairwise_mask(&[0u8; 32], 2),
            vec![0x903d_f1a0_ade0_b876, 0x28bd_8653_e56a_5d40]
        );
        assert_eq!(
            pairwise_mask(&[1u8; 32], 5)[..3],
            pairwise_mask(&[1u8; 32], 3)[..]
        );
    }

    #[test]
    fn keys_mask_only_their_own_statement_and_length() {
        let participants = sites(3);
        let mut network = Network::new(&participants, 4, "r-1");
        let other = Network::new(&participants, 4, "r-1");
        let keys = network.keys.remove(0);
        let error = keys
            .masked_vector(&other.statements[0], &network.statements, &[0; 4])
            .expect_err("another statement");
        assert_eq!(error.rule(), "secure-statement");

        let keys = network.keys.remove(0);
        let error = keys
            .masked_vector(&network.statements[1], &network.statements, &[0; 5])
            .expect_err("another length");
        assert_eq!(error.rule(), "secure-mismatch");

        let keys = network.keys.remove(0);
        let own = network.statements[2].clone();
        network.statements.remove(0);
        let error = keys
            .masked_vector(&own, &network.statements, &[0; 4])
            .expect_err("a peer missing");
        assert_eq!(error.rule(), "secure-participants");
    }

    /// The masked vectors of site "b" in rounds with "a" and "c", for one plain vector:
    /// fresh X25519 secrets per round stand for fresh keys (drawn from a seeded generator
    /// so the test is deterministic), then the real seed derivation and masking.
    fn masked_rounds(vector: &[u64], rounds: usize, seed: u64) -> Vec<u64> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(rounds * vector.len());
        for round in 0..rounds {
            let round_id = format!("r-{round}");
            let seeds: Vec<(String, [u8; 32])> = ["a", "c"]
                .iter()
                .map(|peer| {
                    let mut secret = [0u8; 32];
                    rng.fill_bytes(&mut secret);
                    let seed = derive_seed(&secret, "q-1", &round_id, "b", peer).expect("seed");
                    (peer.to_string(), seed)
                })
                .collect();
            out.extend(mask_with_seeds("b", vector, &seeds));
        }
        out
    }

    /// How many words have each bit set.
    fn bit_counts(words: &[u64]) -> [u64; 64] {
        let mut counts = [0u64; 64];
        for word in words {
            for (bit, count) in counts.iter_mut().enumerate() {
                *count += (word >> bit) & 1;
            }
        }
        counts
    }

    /// Every bit set in half the words, within 4 standard deviations.
    fn assert_bits_balanced(words: &[u64]) {
        let n = words.len() as f64;
        let sigma = n.sqrt() / 2.0;
        for (bit, count) in bit_counts(words).iter().enumerate() {
            let z = (*count as f64 - n / 2.0) / sigma;
            assert!(
                z.abs() < 4.0,
                "bit {bit} set in {count} of {n} words (z = {z:.2})"
            );
        }
    }

    /// Chi-square of the top 4 bits over 16 buckets. 15 degrees of freedom: the 1e-6
    /// tail starts near 48; 60 is generous.
    fn assert_top_bits_uniform(words: &[u64]) {
        let mut buckets = [0u64; 16];
        for word in words {
            buckets[(word >> 60) as usize] += 1;
        }
        let expected = words.len() as f64 / 16.0;
        let chi2: f64 = buckets
            .iter()
            .map(|b| (*b as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 60.0, "chi-square {chi2:.1} over buckets {buckets:?}");
    }

    #[test]
    fn a_masked_vector_is_indistinguishable_from_random() {
        const ROUNDS: usize = 2_000;
        const LEN: usize = 8;
        let zero = masked_rounds(&[0; LEN], ROUNDS, 1);
        let plain: Vec<u64> = (0..LEN as u64).map(|i| i * 1_000 + 3).collect();
        let other: Vec<u64> = (0..LEN as u64).map(|i| u64::MAX - i * 7).collect();
        let masked = masked_rounds(&plain, ROUNDS, 2);
        let masked_other = masked_rounds(&other, ROUNDS, 3);
        for words in [&zero, &masked, &masked_other] {
            assert_bits_balanced(words);
            assert_top_bits_uniform(words);
        }
        // The same tests cannot tell v from v': bit frequencies agree within 4 sigma of
        // their difference.
        let n = (ROUNDS * LEN) as f64;
        let sigma = (n / 2.0).sqrt();
        for (bit, (a, b)) in bit_counts(&masked)
            .iter()
            .zip(bit_counts(&masked_other))
            .enumerate()
        {
            let z = (*a as f64 - b as f64) / sigma;
            assert!(z.abs() < 4.0, "bit {bit}: {a} against {b} (z = {z:.2})");
        }
    }
}
