//! The Orphanet classification of rare cardiac diseases, shipped inside the binary: it
//! lives in [`ern_queries::reference`], since the coordinator derives public domains from
//! it too; re-exported here for the node's session, the synthetic generator and tests.

pub use ern_queries::reference::*;
