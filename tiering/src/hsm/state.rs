//! The tiering state of a file, as Lustre HSM and Robinhood keep them:
//! new, archived, dirty, released, lost; and the flags no-release and
//! no-archive. Worked out from the file itself (its stat and its stub
//! record), the index's record of it, and the path's tiering record.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use cbfs_format::{StubPhase, StubRecord};
use serde::Serialize;

use crate::index::{FileRecord, HsmRecord};
use crate::scan::Stat;

use super::stub::StubAttr;

/// Where a file is in its tiering life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    /// Never archived (or no-archive).
    New,
    /// Resident, and an identical copy is in a committed snapshot.
    Archived,
    /// Changed since its archived copy (or archived but not in a committed
    /// snapshot yet).
    Dirty,
    /// Its content was dropped locally: a stub, recalled on first use.
    Released,
    /// A stub whose stored copy is missing or failed verification.
    Lost,
}

impl FileState {
    /// The name `status` prints.
    pub fn name(self) -> &'static str {
        match self {
            FileState::New => "new",
            FileState::Archived => "archived",
            FileState::Dirty => "dirty",
            FileState::Released => "released",
            FileState::Lost => "lost",
        }
    }
}

/// One file's tiering state, as `cbfs-tier status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct FileStatus {
    /// The path, as given or found below a given directory.
    pub path: String,
    /// Its state.
    pub state: FileState,
    /// Never released.
    pub no_release: bool,
    /// Never archived.
    pub no_archive: bool,
    /// Its size.
    pub size: u64,
    /// Bytes of disk it takes now (`st_blocks` × 512).
    pub allocated: u64,
    /// For an archived or released file: the snapshot that holds it.
    pub snapshot: Option<u64>,
    /// Why it is in this state, when that is not plain.
    pub note: Option<String>,
}

/// Files and bytes in one state.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Totals {
    /// Files.
    pub files: u64,
    /// Their size.
    pub bytes: u64,
    /// The disk they take.
    pub allocated: u64,
}

/// What `cbfs-tier status` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StatusReport {
    /// Each file (regular files and other entries; not directories).
    pub files: Vec<FileStatus>,
    /// Totals per state.
    pub totals: BTreeMap<FileState, Totals>,
    /// Paths that could not be read.
    pub problems: Vec<String>,
}

impl StatusReport {
    pub(crate) fn add(&mut self, f: FileStatus) {
        let t = self.totals.entry(f.state).or_default();
        t.files += 1;
        t.bytes += f.size;
        t.allocated += f.allocated;
        self.files.push(f);
    }
}

/// Whether a stub's record describes the version the index archived:
/// the same member and slot (for a hard link's name, the index record of
/// its first name), the same inode and size.
pub(crate) fn record_matches(stub: &StubRecord, rec: &FileRecord, st: &Stat) -> bool {
    let member_ok = rec.hardlink_to.is_some()
        || (rec.member == stub.member && rec.slot == stub.slot && rec.segment == stub.segment);
    member_ok && st.ino == stub.inode && st.size == stub.size && rec.stat.ino == st.ino
}

/// Whether the stub's times are the archived version's: the file was not
/// written since its release (a release or recall cut short, which did
/// not restore them, counts as not written).
pub(crate) fn times_kept(stub: &StubRecord, st: &Stat) -> bool {
    (st.mtime == stub.mtime.secs && st.mtime_ns == stub.mtime.nanos)
        || stub.phase != StubPhase::Released
}

/// Whether a file with no stub record left is the one a recall filled
/// though the index never learned its new stat (the recall was killed
/// after removing the record and before journaling its end): a recall was
/// under way (`hsm.recalling`), and the file is the archived version in
/// all but its change time (which the recall's writes moved). Only a
/// recall, or root, removes a `trusted.` stub record, and a recall removes
/// it only once the content is whole and durable.
pub(crate) fn recall_ended(hsm: Option<&HsmRecord>, rec: &FileRecord, st: &Stat) -> bool {
    let a = &rec.stat;
    hsm.is_some_and(|h| h.recalling.is_some())
        && rec.hardlink_to.is_none()
        && st.is_file()
        && (st.dev, st.ino, st.mode, st.nlink, st.uid, st.gid, st.size)
            == (a.dev, a.ino, a.mode, a.nlink, a.uid, a.gid, a.size)
        && (st.mtime, st.mtime_ns) == (a.mtime, a.mtime_ns)
}

/// Works out a file's state.
///
/// `committed`: the index's records are all in a committed snapshot (no
/// run died before its manifest). `snapshot`: that snapshot's sequence.
pub(crate) fn classify(
    path: String,
    meta: &std::fs::Metadata,
    rec: Option<&FileRecord>,
    hsm: Option<&HsmRecord>,
    stub: &StubAttr,
    committed: bool,
    snapshot: Option<u64>,
) -> FileStatus {
    let st = Stat::from_metadata(meta);
    let flags = hsm.cloned().unwrap_or_default();
    let mut out = FileStatus {
        path,
        state: FileState::New,
        no_release: flags.no_release,
        no_archive: flags.no_archive,
        size: st.size,
        allocated: meta.blocks() * 512,
        snapshot: None,
        note: None,
    };
    let (state, note, snap) = match (stub, rec) {
        (StubAttr::Damaged(why), _) => (
            FileState::Lost,
            Some(format!(
                "its stub record is damaged ({why}): never read as a resident file"
            )),
            None,
        ),
        (StubAttr::Stub(s), _) if flags.lost.is_some() => (
            FileState::Lost,
            flags.lost.clone().map(|w| format!("stored copy bad: {w}")),
            Some(s.sequence),
        ),
        (StubAttr::Stub(s), Some(r)) if record_matches(s, r, &st) => {
            if times_kept(s, &st) {
                let note = match s.phase {
                    StubPhase::Releasing => {
                        Some("its release was cut short; the next release finishes it".to_owned())
                    }
                    StubPhase::Recalling => Some(
                        "a recall of it was cut short; the next access or recall fills it".to_owned(),
                    ),
                    _ => None,
                };
                (FileState::Released, note, Some(s.sequence))
            } else {
                (
                    FileState::Dirty,
                    Some(
                        "written while released with no fault-in handler running: its content is not the archived one"
                            .into(),
                    ),
                    None,
                )
            }
        }
        (StubAttr::Stub(s), _) if st.ino == s.inode && st.size == s.size && times_kept(s, &st) => (
            FileState::Released,
            Some(format!(
                "released as {:?} of snapshot {}, which this index does not record",
                String::from_utf8_lossy(&s.path),
                s.sequence
            )),
            Some(s.sequence),
        ),
        (StubAttr::Stub(_), _) => (
            FileState::Dirty,
            Some("a stub that was changed or copied: recall it to archive it".into()),
            None,
        ),
        (StubAttr::None, None) => (
            FileState::New,
            flags.no_archive.then(|| "no-archive".to_owned()),
            None,
        ),
        (StubAttr::None, Some(r))
            if (r.stat.same_version(&st) || recall_ended(hsm, r, &st)) && committed =>
        {
            (FileState::Archived, None, snapshot)
        }
        (StubAttr::None, Some(r)) if r.stat.same_version(&st) || recall_ended(hsm, r, &st) => (
            FileState::Dirty,
            Some("stored, but the run that stored it died before its snapshot: the next run commits it".into()),
            None,
        ),
        (StubAttr::None, Some(_)) => (FileState::Dirty, None, None),
    };
    out.state = state;
    out.note = note;
    out.snapshot = snap;
    out
}
