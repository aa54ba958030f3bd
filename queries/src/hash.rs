//! The canonical query hash: what a steward's signature commits to.
//!
//! Encoding, byte by byte (all integers big-endian):
//!
//! ```text
//! "ern-query-hash-v1" (17 bytes ASCII)
//! policy version      (u32)
//! SQL length in bytes (u64)
//! SQL text            (UTF-8, exactly as submitted: no trimming, no normalisation)
//! ```
//!
//! The hash is SHA-256 (ring) of that encoding, written as 64 lowercase hex characters.
//! Any change to the text, even white space, gives another hash, so an approval covers
//! exactly the query the steward read. The policy version changes when the rules of this
//! crate change meaning, so old approvals do not carry over to new rules.

use ring::digest;

/// The version of the disclosure rules that a hash binds to. 2: one pid class, plain
/// whole-number values in released aggregates, total functions, the dominance rule.
pub const POLICY_VERSION: u32 = 2;

const DOMAIN: &[u8] = b"ern-query-hash-v1";

/// SHA-256 of the canonical encoding of `sql` under `policy_version`.
pub fn query_hash_bytes(sql: &str, policy_version: u32) -> [u8; 32] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(DOMAIN);
    context.update(&policy_version.to_be_bytes());
    context.update(&(sql.len() as u64).to_be_bytes());
    context.update(sql.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

/// The canonical hash of `sql` under the current policy, as lowercase hex.
pub fn query_hash(sql: &str) -> String {
    hex::encode(query_hash_bytes(sql, POLICY_VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_follows_the_documented_encoding() {
        let sql = "SELECT COUNT(*) FROM patient";
        let mut encoding = b"ern-query-hash-v1".to_vec();
        encoding.extend_from_slice(&2u32.to_be_bytes());
        encoding.extend_from_slice(&(sql.len() as u64).to_be_bytes());
        encoding.extend_from_slice(sql.as_bytes());
        let expected = hex::encode(digest::digest(&digest::SHA256, &encoding).as_ref());
        assert_eq!(query_hash(sql), expected);
    }

    #[test]
    fn any_change_changes_the_hash() {
        let base = query_hash("SELECT COUNT(*) FROM patient");
        assert_ne!(base, query_hash("SELECT COUNT(*) FROM patient "));
        assert_ne!(base, query_hash("select COUNT(*) FROM patient"));
        assert_ne!(
            hex::encode(query_hash_bytes("x", 1)),
            hex::encode(query_hash_bytes("x", 2))
        );
        assert_eq!(base.len(), 64);
    }
}
