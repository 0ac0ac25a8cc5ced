//! Progress bars on stderr, only when it is a terminal.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-and-file progress bar, or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar over `bytes` bytes in `files` entries, if `enabled` and stderr
    /// is a terminal.
    pub fn new(enabled: bool, files: u64, bytes: u64) -> Self {
        use std::io::IsTerminal;
        if !enabled || !std::io::stderr().is_terminal() || files == 0 {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .expect("valid template"),
        );
        bar.set_message(format!("0/{files} files"));
        bar.set_length(bytes);
        Progress { bar: Some(bar) }
    }

    /// Bytes read.
    pub fn bytes(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    /// One more entry done.
    pub fn file_done(&self) {
        if let Some(b) = &self.bar {
            let msg = b.message();
            let (done, total) = msg
                .split_once('/')
                .map(|(d, t)| (d.parse::<u64>().unwrap_or(0), t.to_owned()))
                .unwrap_or((0, String::new()));
            b.set_message(format!("{}/{total}", done + 1));
        }
    }

    /// Clears the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
