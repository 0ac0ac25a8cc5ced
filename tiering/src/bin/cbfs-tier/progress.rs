//! Progress bars on stderr, only when it is a terminal: the command line's
//! [`Observer`] of runs and restores.

use std::sync::atomic::{AtomicU64, Ordering};

use cbfs_tiering::Observer;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A byte-and-file progress bar, or nothing. Its totals grow as the scan
/// finds work: storing starts before the scan ends.
pub struct Progress {
    bar: Option<ProgressBar>,
    files_done: AtomicU64,
    files_total: AtomicU64,
}

impl Progress {
    /// A bar, if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Self {
        use std::io::IsTerminal;
        let bar = (enabled && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            files_done: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
        }
    }

    fn show_files(&self, bar: &ProgressBar) {
        bar.set_message(format!(
            "{}/{} files",
            self.files_done.load(Ordering::Relaxed),
            self.files_total.load(Ordering::Relaxed)
        ));
    }
}

impl Observer for Progress {
    fn work_found(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            b.inc_length(bytes);
            self.show_files(b);
        }
    }

    fn bytes_read(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }

    fn file_stored(&self) {
        self.files_done.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = &self.bar {
            self.show_files(b);
        }
    }

    fn finished(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
