//! Released files of the re-keyed scope: their stub records made to name
//! the new members.

use crate::agent::Agent;
use crate::error::Result;

use super::{Note, RekeyReport};

/// Makes the stub records of released files of the tree at `root` that
/// name a re-keyed path's old member name its new one, in snapshot
/// `newest`. Opens no file (no fault-in event): the record is an extended
/// attribute, set through a path-only descriptor opened beneath the root.
pub(super) fn update_stubs(
    agent: &Agent,
    root: &std::path::Path,
    newest: &crate::index::SnapshotRecord,
    report: &mut RekeyReport,
) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};

    use crate::hsm::stub::{self, StubAttr};

    let index = &agent.index;
    let mut count = 0u64;
    let mut warnings = Vec::new();
    index.rekey_for_each(|path, b| {
        let note = Note::decode(path, b)?;
        let Some(rec) = index.file(path)? else {
            return Ok(());
        };
        if !note.replaced_by(&rec) || !rec.stat.is_file() {
            return Ok(());
        }
        let shown = String::from_utf8_lossy(path);
        let (fd, _) = match crate::hsm::open_path(root, path) {
            Ok(found) => found,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                warnings.push(format!("{shown}: cannot open it beneath the tree: {e}"));
                return Ok(());
            }
        };
        let old = match stub::read_handle(fd.as_fd()) {
            Ok(StubAttr::Stub(s)) => s,
            Ok(_) => return Ok(()),
            Err(e) => {
                warnings.push(format!("{shown}: cannot read its stub record: {e}"));
                return Ok(());
            }
        };
        if old.member != note.old_member || old.slot != note.old_slot {
            return Ok(());
        }
        let record = cbfs_format::StubRecord {
            snapshot: newest.id,
            sequence: newest.sequence,
            segment: rec.segment,
            member: rec.member,
            slot: rec.slot,
            sha256: rec.sha256,
            ..old
        };
        let bytes = record.to_bytes()?;
        let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match rustix::fs::setxattr(
            std::path::Path::new(&link),
            cbfs_format::STUB_XATTR,
            &bytes,
            rustix::fs::XattrFlags::REPLACE,
        ) {
            Ok(()) => count += 1,
            Err(e) => warnings.push(format!(
                "{shown}: cannot update its stub record: {e}; recall it before the older \
                 snapshots are collected"
            )),
        }
        Ok(())
    })?;
    report.stubs_updated = count;
    report.warnings.extend(warnings);
    Ok(())
}
