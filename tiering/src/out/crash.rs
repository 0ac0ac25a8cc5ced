//! Crash points: where a test may make a run die, to check that a rerun
//! recovers. Only in builds with the `crash-points` feature, which the
//! tests turn on; a release build has no way to abort on purpose.

/// Where a test may make the run die.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::enum_variant_names)] // each names the step it follows
pub enum CrashPoint {
    /// After the nth segment is uploaded, before its lockboxes.
    AfterSegment(u32),
    /// After the nth segment's lockboxes, before its summary.
    AfterLockboxes(u32),
    /// After the nth summary, before the index commit.
    AfterSummary(u32),
    /// After the nth index commit.
    AfterCommit(u32),
    /// After the manifest is uploaded, before the index records it.
    AfterManifest,
}

impl std::str::FromStr for CrashPoint {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, n) = s.split_once(':').unwrap_or((s, "1"));
        let n: u32 = n.parse().map_err(|_| format!("bad crash point {s}"))?;
        Ok(match name {
            "segment" => CrashPoint::AfterSegment(n),
            "lockboxes" => CrashPoint::AfterLockboxes(n),
            "summary" => CrashPoint::AfterSummary(n),
            "commit" => CrashPoint::AfterCommit(n),
            "manifest" => CrashPoint::AfterManifest,
            _ => return Err(format!("unknown crash point {s}")),
        })
    }
}

/// Aborts the process if the run was asked to die at `point`.
pub(crate) fn crash_if(at: Option<CrashPoint>, point: CrashPoint) {
    if at == Some(point) {
        eprintln!("cbfs-tier: crashing on purpose at {point:?}");
        std::process::abort();
    }
}
