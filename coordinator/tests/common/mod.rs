//! The coordinator tests' network: the shared loopback coordinator over mutual TLS, with
//! nodes of sites a and b enrolled.

#![allow(dead_code, unreachable_pub, unused_imports)]

use ern_coordinator::limits::Limits;
pub use ern_test_support::loopback::{Loopback as Network, SQL, STUDY, submit, submit_in};
use ern_test_support::loopback::{Loopback, Security};

/// Starts a coordinator with `limits` over mutual TLS, nodes of sites a and b enrolled.
pub async fn start(limits: Limits) -> Network {
    let net = Loopback::start(Security::MutualTls, limits).await;
    net.enrol_nodes(&["a", "b"]);
    net
}
