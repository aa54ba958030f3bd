//! One module per `ern` subcommand.

pub(crate) mod coordinator;
pub(crate) mod demo;
pub(crate) mod explore;
pub(crate) mod ingest;
pub(crate) mod keygen;
pub(crate) mod node;
pub(crate) mod operator;
pub(crate) mod researcher;
pub(crate) mod steward;
pub(crate) mod synth;
