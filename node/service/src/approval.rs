//! Steward approvals: an Ed25519 signature over one query, one site, one study, until a
//! deadline.
//!
//! The signed statement is UTF-8 text, exactly:
//!
//! ```text
//! ern-approval-v1
//! query-hash: <64 hex: ern_queries::query_hash of the exact SQL>
//! site: <site id>
//! study: <study id>
//! expires: <seconds since 1970-01-01 UTC>
//! ```
//!
//! with a newline after every line. Site and study ids are 1-128 ASCII letters, digits,
//! `-`, `_` and `.` (see `ern_queries::ids`), so the statement cannot be forged by a
//! clever id.

use crate::steward_key::{StewardPublicKey, StewardSigningKey};

/// The approval type shared with the coordinator and the wire.
pub use ern_proto::approval::Approval;

/// Why an approval does not authorise a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// The approval's deadline has passed.
    #[error("the approval has expired")]
    Expired,
    /// The approval is for another query text (altered or different query).
    #[error("the approval is for another query: the SQL was altered")]
    QueryAltered,
    /// The approval is for another site.
    #[error("the approval is for another site")]
    OtherSite,
    /// The approval is for another study.
    #[error("the approval is for another study")]
    OtherStudy,
    /// The signing key is not one of this site's steward keys.
    #[error("the approval is signed by a key this site does not know")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the approval's signature is not valid")]
    BadSignature,
    /// An id holds characters an approval may not hold.
    #[error("the approval's site or study id is malformed")]
    Malformed,
    /// The approval was executed on an earlier generation of this site's store.
    #[error(
        "the approval was used on an earlier version of this site's data; a steward must approve again for the refreshed data"
    )]
    Stale,
}

impl ApprovalError {
    /// A short stable name for audit logs.
    pub fn name(self) -> &'static str {
        match self {
            ApprovalError::Expired => "approval-expired",
            ApprovalError::QueryAltered => "approval-other-query",
            ApprovalError::OtherSite => "approval-other-site",
            ApprovalError::OtherStudy => "approval-other-study",
            ApprovalError::UnknownKey => "approval-unknown-key",
            ApprovalError::BadSignature => "approval-bad-signature",
            ApprovalError::Malformed => "approval-malformed",
            ApprovalError::Stale => "approval-stale",
        }
    }
}

/// True for an id that can stand on a line of the statement.
pub use ern_queries::ids::is_valid_id;

/// The exact bytes a steward signs.
pub fn statement(query_hash: &str, site_id: &str, study_id: &str, expires_at: u64) -> Vec<u8> {
    format!("ern-approval-v1\nquery-hash: {query_hash}\nsite: {site_id}\nstudy: {study_id}\nexpires: {expires_at}\n")
        .into_bytes()
}

/// Signs an approval of `sql` for `site_id` and `study_id` until `expires_at`.
pub fn sign(
    key: &StewardSigningKey,
    sql: &str,
    site_id: &str,
    study_id: &str,
    expires_at: u64,
) -> Result<Approval, ApprovalError> {
    if !is_valid_id(site_id) || !is_valid_id(study_id) {
        return Err(ApprovalError::Malformed);
    }
    let query_hash = ern_queries::query_hash(sql);
    let signature = key.sign(&statement(&query_hash, site_id, study_id, expires_at));
    Ok(Approval {
        study_id: study_id.to_string(),
        site_id: site_id.to_string(),
        query_hash,
        expires_at,
        key_id: key.public_key().key_id(),
        signature,
    })
}

/// Checks that `approval` authorises running `sql` for `study_id` at `site_id` at time
/// `now`, signed by one of `stewards`. Returns the key that signed it.
pub fn verify<'a>(
    approval: &Approval,
    sql: &str,
    site_id: &str,
    study_id: &str,
    stewards: &'a [StewardPublicKey],
    now: u64,
) -> Result<&'a StewardPublicKey, ApprovalError> {
    if !is_valid_id(&approval.site_id) || !is_valid_id(&approval.study_id) {
        return Err(ApprovalError::Malformed);
    }
    let key = stewards
        .iter()
        .find(|k| k.key_id() == approval.key_id)
        .ok_or(ApprovalError::UnknownKey)?;
    let message = statement(
        &approval.query_hash,
        &approval.site_id,
        &approval.study_id,
        approval.expires_at,
    );
    if !key.verifies(&message, &approval.signature) {
        return Err(ApprovalError::BadSignature);
    }
    // The signature covers what follows, so these compare signed values.
    if approval.query_hash != ern_queries::query_hash(sql) {
        return Err(ApprovalError::QueryAltered);
    }
    if approval.site_id != site_id {
        return Err(ApprovalError::OtherSite);
    }
    if approval.study_id != study_id {
        return Err(ApprovalError::OtherStudy);
    }
    if now >= approval.expires_at {
        return Err(ApprovalError::Expired);
    }
    Ok(key)
}
