//! What a run tells whoever watches it: the command line draws a progress
//! bar, a service keeps job records.

use cbfs_format::SegmentId;

/// Receives a run's progress. Every method has a default that ignores it.
/// Called from the run's threads, so it must be cheap and `Sync`.
pub trait Observer: Send + Sync {
    /// The scan found `files` more entries to store, with `bytes` of content.
    fn work_found(&self, files: u64, bytes: u64) {
        let _ = (files, bytes);
    }
    /// Content bytes read.
    fn bytes_read(&self, bytes: u64) {
        let _ = bytes;
    }
    /// One more entry stored (or packed).
    fn file_stored(&self) {}
    /// A segment and its objects are in the store and the index names them.
    fn segment_stored(&self, segment: &SegmentId, bytes: u64) {
        let _ = (segment, bytes);
    }
    /// The scan and the workers are done (the snapshot is still to come).
    fn finished(&self) {}
}

/// Watches nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Quiet;

impl Observer for Quiet {}
