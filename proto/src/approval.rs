//! One approval type, from the steward's signature to the node's check.
//!
//! A steward signs an [`Approval`] (`ern steward approve`); the coordinator receives the
//! signature in a `v1::ApproveRequest`, completes it with what it already knows (the
//! site from the steward's token, the question's study and the hash of its stored SQL),
//! stores it, and sends it to the node in a `v1::Work`; the node verifies it against its own steward keys. Every
//! conversion to and from the wire is here, so the fields cannot be shuffled on the way.
//! The signed statement and its check live with the node (`ern_node::approval`): the
//! coordinator never verifies, it cannot (only nodes hold their stewards' public keys).

use crate::v1;

/// A steward's approval of one question's exact SQL for one site and study.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Approval {
    /// The study the question belongs to.
    pub study_id: String,
    /// The site the approval is for.
    pub site_id: String,
    /// `ern_queries::query_hash` of the exact SQL approved.
    pub query_hash: String,
    /// End of validity, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Key id of the signing steward key (16 hex characters).
    pub key_id: String,
    /// Ed25519 signature of the statement (64 bytes).
    pub signature: Vec<u8>,
}

/// Why a received approval cannot be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalShapeError {
    /// The signature is not an Ed25519 signature's length.
    #[error("an approval signature is 64 bytes (Ed25519)")]
    SignatureLength,
    /// The key id is not 16 hex characters.
    #[error("a steward key id is 16 hex characters")]
    KeyId,
}

impl Approval {
    /// The approval a steward's request carries for the question `request.query_id` at
    /// `site_id`, which belongs to study `study_id` and whose stored SQL hashes to
    /// `query_hash`.
    pub fn received(
        request: v1::ApproveRequest,
        site_id: &str,
        study_id: &str,
        query_hash: &str,
    ) -> Result<Self, ApprovalShapeError> {
        let approval = Approval {
            study_id: study_id.to_string(),
            site_id: site_id.to_string(),
            query_hash: query_hash.to_string(),
            expires_at: request.expires_at,
            key_id: request.key_id,
            signature: request.signature,
        };
        approval.check_shape()?;
        Ok(approval)
    }

    /// The steward's request that sends this approval of question `query_id`.
    pub fn to_request(&self, query_id: &str) -> v1::ApproveRequest {
        v1::ApproveRequest {
            query_id: query_id.to_string(),
            expires_at: self.expires_at,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }

    /// Checks the lengths and characters a signature and key id must have.
    pub fn check_shape(&self) -> Result<(), ApprovalShapeError> {
        if self.signature.len() != 64 {
            return Err(ApprovalShapeError::SignatureLength);
        }
        if self.key_id.len() != 16 || !self.key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApprovalShapeError::KeyId);
        }
        Ok(())
    }
}

impl From<Approval> for v1::Approval {
    fn from(approval: Approval) -> Self {
        v1::Approval {
            study_id: approval.study_id,
            site_id: approval.site_id,
            query_hash: approval.query_hash,
            expires_at: approval.expires_at,
            key_id: approval.key_id,
            signature: approval.signature,
        }
    }
}

impl From<v1::Approval> for Approval {
    fn from(approval: v1::Approval) -> Self {
        Approval {
            study_id: approval.study_id,
            site_id: approval.site_id,
            query_hash: approval.query_hash,
            expires_at: approval.expires_at,
            key_id: approval.key_id,
            signature: approval.signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_crosses_the_wire_unchanged() {
        let approval = Approval {
            study_id: "study-1".into(),
            site_id: "site-1".into(),
            query_hash: "ab".repeat(32),
            expires_at: 42,
            key_id: "0123456789abcdef".into(),
            signature: vec![7; 64],
        };
        let request = approval.to_request("q-1");
        let received =
            Approval::received(request, "site-1", "study-1", &"ab".repeat(32)).expect("shape");
        assert_eq!(received, approval);
        assert_eq!(
            Approval::from(v1::Approval::from(approval.clone())),
            approval
        );
    }

    #[test]
    fn a_malformed_signature_or_key_id_is_refused() {
        let request = |key_id: &str, signature: Vec<u8>| v1::ApproveRequest {
            query_id: "q".into(),
            expires_at: 1,
            key_id: key_id.into(),
            signature,
        };
        assert_eq!(
            Approval::received(request("0123456789abcdef", vec![0; 63]), "s", "st", "h"),
            Err(ApprovalShapeError::SignatureLength)
        );
        assert_eq!(
            Approval::received(request("0123456789abcdeg", vec![0; 64]), "s", "st", "h"),
            Err(ApprovalShapeError::KeyId)
        );
    }
}
