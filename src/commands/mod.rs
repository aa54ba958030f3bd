//! One module per `ern` subcommand.

pub(crate) mod demo;
pub(crate) mod ingest;
pub(crate) mod keygen;
pub(crate) mod node;
pub(crate) mod synth;
