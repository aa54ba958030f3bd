//! Steward keys and signed requests, as a site's steward makes them.

use std::path::Path;

use ern_node::engine::QueryRequest;
use ern_node::steward_key::{StewardSigningKey, generate_steward_key};

/// A steward key pair made for a test in `dir` (`steward.key`, `steward.pub`).
pub fn test_steward(dir: &Path) -> StewardSigningKey {
    named_steward(dir, "steward")
}

/// A steward key pair `name.key`, `name.pub` made in `dir`.
pub fn named_steward(dir: &Path, name: &str) -> StewardSigningKey {
    let prefix = dir.join(name);
    generate_steward_key(&prefix).expect("steward key");
    StewardSigningKey::load(&prefix.with_extension("key")).expect("load steward key")
}

/// A request for `sql` at `site`, approved by `key` for ten minutes.
pub fn signed_request(key: &StewardSigningKey, sql: &str, site: &str) -> QueryRequest {
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 600;
    let approval = ern_node::approval::sign(key, sql, site, "study", expires).expect("sign");
    QueryRequest {
        sql: sql.to_string(),
        study_id: "study".into(),
        approval,
    }
}
