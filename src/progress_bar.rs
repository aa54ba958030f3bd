//! Progress bars on stderr for the libraries' [`Progress`] reports; hidden when stderr is
//! not a terminal, so scripts and CI logs stay clean.

use ern_ingest::progress::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// An indicatif bar that follows a library's stages.
#[derive(Debug)]
pub(crate) struct Bar {
    bar: ProgressBar,
}

impl Bar {
    pub(crate) fn new() -> Self {
        let bar = ProgressBar::new(0);
        let style =
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {human_pos}/{human_len} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        Bar { bar }
    }
}

impl Progress for Bar {
    fn stage(&self, name: &str, total: u64) {
        self.bar.set_message(name.to_string());
        self.bar.set_length(total);
        self.bar.set_position(0);
    }

    fn advance(&self, steps: u64) {
        self.bar.inc(steps);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
