//! Released files in a tier-out run: a stub is never archived (its
//! content is not on disk, and reading it would store zeros, or recall it),
//! and a release never makes a file look changed. And files flagged
//! no-archive stay out of the store. A file a recall filled is not
//! changed either, even when the recall was killed before the index
//! learned its new stat.

use crate::error::Result;
use crate::hsm::stub::{self, StubAttr};
use crate::index::Batch;

use super::{OutReport, Shared, Work};

/// Takes out of `changed` (entries whose stat differs from the index's):
/// stubs of the archived version (the release changed only their change
/// time: the index takes their new stat, and they count as unchanged),
/// and the other names of a recalled inode (as unchanged as the name the
/// recall went through);
/// other stubs (changed, copied, renamed: skipped with the reason, never
/// read); and files flagged no-archive. Reading a stub's record does not
/// open the file, so it raises no fault-in event.
pub(crate) fn screen(
    shared: &Shared<'_>,
    changed: Vec<Work>,
    report: &mut OutReport,
) -> Result<Vec<Work>> {
    let index = &shared.agent.index;
    let (any_flags, any_recalls) = {
        let (mut flags, mut recalls) = (false, false);
        index.for_each_hsm(|_, h| {
            flags |= h.no_archive;
            recalls |= h.recalling.is_some();
            Ok(())
        })?;
        (flags, recalls)
    };
    let mut batch = Batch::default();
    let mut keep = Vec::with_capacity(changed.len());
    for w in changed {
        if any_flags && index.hsm(&w.entry.rel)?.is_some_and(|h| h.no_archive) {
            continue;
        }
        if !w.entry.stat.is_file() {
            keep.push(w);
            continue;
        }
        match stub::read_at(&w.entry.abs) {
            Ok(StubAttr::None) => {
                // A recall killed after removing the stub record and
                // before journaling the file's new stat: the file is the
                // archived version, whole. Either way the recall is over.
                if any_recalls
                    && let Some(mut h) = index.hsm(&w.entry.rel)?
                    && h.recalling.is_some()
                {
                    let rec = index.file(&w.entry.rel)?;
                    let ended = rec
                        .as_ref()
                        .is_some_and(|r| crate::hsm::recall_ended(Some(&h), r, &w.entry.stat));
                    h.recalling = None;
                    batch.put_hsm(&w.entry.rel, &h);
                    if let (true, Some(mut rec)) = (ended, rec) {
                        rec.stat = w.entry.stat;
                        batch.put_file(&w.entry.rel, &rec);
                        report.unchanged += 1;
                        continue;
                    }
                }
                // Another name of an inode a recall filled: the name the
                // recall went through has the inode's new stat already.
                if let Some(target) = &w.hardlink_to
                    && let Some(mut rec) = index.file(&w.entry.rel)?
                    && rec.hardlink_to.as_ref() == Some(target)
                    && index
                        .file(target)?
                        .is_some_and(|t| t.stat.same_version(&w.entry.stat))
                {
                    rec.stat = w.entry.stat;
                    batch.put_file(&w.entry.rel, &rec);
                    report.unchanged += 1;
                    continue;
                }
                keep.push(w)
            }
            Ok(StubAttr::Stub(s)) => {
                let st = &w.entry.stat;
                match index.file(&w.entry.rel)? {
                    Some(mut rec)
                        if crate::hsm::stub_is_archived_version(&s, &rec, st)
                            && rec.stat.mode == st.mode
                            && rec.stat.uid == st.uid
                            && rec.stat.gid == st.gid
                            && rec.stat.nlink == st.nlink =>
                    {
                        rec.stat = *st;
                        batch.put_file(&w.entry.rel, &rec);
                        report.unchanged += 1;
                    }
                    _ => shared.skip(
                        &w.entry,
                        "a released file (stub) that is not the archived version at this path \
                         (its owner, mode or name changed, or it was written without a fault-in \
                         handler): recall it (cbfs-tier recall) to archive it"
                            .into(),
                    ),
                }
            }
            Ok(StubAttr::Damaged(why)) => {
                shared.skip(&w.entry, format!("its stub record is damaged: {why}"));
            }
            Err(e) => shared.skip(&w.entry, format!("cannot read its stub record: {e}")),
        }
    }
    if !batch.is_empty() {
        index.commit(batch)?;
    }
    Ok(keep)
}
