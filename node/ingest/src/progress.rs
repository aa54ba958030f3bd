//! Progress reporting for long work (ingest, synth), kept free of any terminal library.
//!
//! The library reports stages and steps; the `ern` binary draws them with indicatif, and
//! tests pass [`NoProgress`].

/// Receives progress of long-running work. Implementations must be cheap to call.
pub trait Progress: Sync {
    /// A new stage begins with `total` steps.
    fn stage(&self, name: &str, total: u64);
    /// `steps` more steps of the current stage are done.
    fn advance(&self, steps: u64);
    /// All stages are done.
    fn finish(&self) {}
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn stage(&self, _name: &str, _total: u64) {}
    fn advance(&self, _steps: u64) {}
}
