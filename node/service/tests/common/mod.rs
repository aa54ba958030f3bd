//! What the node's integration tests share, from the workspace's test-support crate:
//! synthetic stores, plain DataFusion over them (the independent side of every
//! comparison), steward keys and signed requests, batches as comparable text rows.

#![allow(unused_imports)]

pub(crate) use ern_test_support::fixture::{
    plain_context, plain_sql, pooled_plain_context, synthetic_export, synthetic_site_store,
    synthetic_store,
};
pub(crate) use ern_test_support::rows::{canonical_rows, text_rows, text_rows_rounded};
pub(crate) use ern_test_support::steward::{named_steward, signed_request, test_steward};
