//! The ern coordinator: one per network.
//!
//! It serves researchers, stewards and operators over gRPC, keeps the streams that
//! hospital nodes open to it, and drives each question through its lifecycle (submit →
//! review → execute → merge → read) with its state in embedded SQLite.
//!
//! # Trust boundary
//! The coordinator is trusted with study metadata and released aggregates only: it never
//! sees a patient row or a pseudonym, and it cannot make or alter an approval (it stores
//! and relays the steward's signature; nodes verify it against their own keys). Everything
//! callers send is untrusted: researchers' SQL is planned once at submission
//! (`ern_queries::Planner`) and refused by rule before any steward sees it; nodes' answers
//! are checked against the question's kept plan before they are stored; every size,
//! rate and connection is bounded ([`limits`], [`accept`]).
//!
//! # Layout
//! - [`lifecycle`]: the question lifecycle as a state machine: site states, the steps
//!   between them, and the event each step records.
//! - [`db`]: SQLite persistence of users, studies, questions, each site's part, results,
//!   nodes and events, and its migrations; it takes only the steps [`lifecycle`] allows.
//! - [`core`]: the shared core: plans kept per question, dispatch to node streams,
//!   answers, merge, deadlines, and [`Coordinator::commit`], the one way a lifecycle
//!   commit runs off the async workers.
//! - [`services`]: the four gRPC services (researcher, steward, operator, node link).
//! - [`auth`]: tokens, roles and the gate in front of every service.
//! - [`model`]: the stored records (users, studies, questions, targets).
//! - [`paging`]: page tokens of the list calls.
//! - [`limits`]: sizes, rates and caps; [`accept`]: the TLS accept loop and per-source
//!   connection caps; [`server`]: the server and its transports; [`config`]: the
//!   coordinator's configuration file; [`pki`]: the network CA.
//! - [`node_text`]: what a node says, checked for shape before it is stored or shown.

pub mod accept;
pub mod auth;
pub mod config;
pub mod core;
pub mod db;
pub mod lifecycle;
pub mod limits;
pub mod model;
pub mod node_text;
pub mod noise;
pub mod paging;
pub mod pki;
pub mod rounds;
pub mod server;
pub mod services;

pub use config::{CoordinatorConfig, Transport};
pub use core::{Coordinator, Timing};
pub use db::Db;
