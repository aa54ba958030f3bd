//! Scoped worker threads: ingest and synth spread independent files over the cores.

use std::thread::ScopedJoinHandle;

/// Waits for a scoped thread; a panic in it continues in the caller, so a failed worker
/// can never pass for an empty result.
pub fn join<T>(handle: ScopedJoinHandle<'_, T>) -> T {
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
