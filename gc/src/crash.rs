//! Crash points: where a test may make the collector die, to check that a
//! rerun finishes the job and that a store killed at any point still
//! verifies. Only in test builds (`cbfs-core/test-clock`, which the test
//! suite builds with); a release build refuses `--crash-at`.

use std::str::FromStr;

/// Where a test may make a collection die.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashPoint {
    /// Once the lease is held, before anything else.
    AfterLease,
    /// Compaction: after the nth new segment is uploaded, before its lockboxes.
    AfterSegment(u32),
    /// After the nth new segment's lockboxes, before its summary.
    AfterLockboxes(u32),
    /// After the nth new segment's summary, before its relocation records.
    AfterSummary(u32),
    /// After the first relocation record of the nth new segment.
    AfterRelocation(u32),
    /// After the manifest bases, before the collection record.
    AfterBases,
    /// After the collection record of phase one.
    AfterCollection,
    /// Phase two: after the nth segment object is deleted, before its
    /// summary and lockboxes.
    DeletedSegment(u32),
    /// After the nth segment's summary and lockboxes are deleted.
    DeletedLockboxes(u32),
    /// After the nth forgotten manifest is deleted.
    DeletedManifest(u32),
    /// After the other objects (relocation records, bases, run records).
    DeletedObjects,
    /// Before the collection record itself is deleted.
    BeforeRecordDelete,
    /// After the collection record is deleted, before the lease is released.
    AfterRecordDelete,
}

impl FromStr for CrashPoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = s.split_once(':').unwrap_or((s, "1"));
        let n: u32 = n.parse().map_err(|_| format!("bad crash point {s}"))?;
        Ok(match name {
            "lease" => CrashPoint::AfterLease,
            "segment" => CrashPoint::AfterSegment(n),
            "lockboxes" => CrashPoint::AfterLockboxes(n),
            "summary" => CrashPoint::AfterSummary(n),
            "relocation" => CrashPoint::AfterRelocation(n),
            "bases" => CrashPoint::AfterBases,
            "collection" => CrashPoint::AfterCollection,
            "delete-segment" => CrashPoint::DeletedSegment(n),
            "delete-lockboxes" => CrashPoint::DeletedLockboxes(n),
            "delete-manifest" => CrashPoint::DeletedManifest(n),
            "delete-objects" => CrashPoint::DeletedObjects,
            "before-record-delete" => CrashPoint::BeforeRecordDelete,
            "after-record-delete" => CrashPoint::AfterRecordDelete,
            _ => return Err(format!("unknown crash point {s}")),
        })
    }
}

/// Whether this build may crash on purpose (test builds only).
pub fn crash_points_enabled() -> bool {
    cbfs_core::TEST_HOOKS
}

/// What a test asks of a run: to die at a point, or to wait at one (so
/// that a test can run a tier-out or a restore while the collector stands
/// there). Honoured in test builds only.
#[derive(Clone, Debug, Default)]
pub struct TestHooks {
    /// Abort the process here.
    pub crash_at: Option<CrashPoint>,
    /// Stand still here: write `pause_file`, and go on once it is removed.
    pub pause_at: Option<CrashPoint>,
    /// See `pause_at`.
    pub pause_file: Option<std::path::PathBuf>,
}

impl TestHooks {
    /// Whether any hook is asked for.
    pub fn any(&self) -> bool {
        self.crash_at.is_some() || self.pause_at.is_some()
    }

    /// Dies or waits if a test asked for it at `point`.
    pub(crate) fn at(&self, point: CrashPoint) {
        if !crash_points_enabled() {
            return;
        }
        if self.crash_at == Some(point) {
            eprintln!("cbfs-gc: crashing on purpose at {point:?}");
            std::process::abort();
        }
        if self.pause_at == Some(point)
            && let Some(file) = &self.pause_file
        {
            eprintln!(
                "cbfs-gc: pausing at {point:?} until {} is removed",
                file.display()
            );
            if std::fs::write(file, b"paused\n").is_ok() {
                while file.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }
}
