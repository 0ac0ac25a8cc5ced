//! Sparse packs stored again from the tree, so that the collector can free
//! them.
//!
//! Small files share a member (a pack), and the collector, which holds no
//! key, copies members byte for byte: a pack with one live file in it is
//! live whole. Only the writer can split it, and it never reads the store
//! back (it holds no secret that decrypts): it stores the pack's live files
//! again from the tree, where they still are, unchanged. After the run's
//! changes and deletions, each segment whose live share of files has fallen
//! below [`OutOptions::min_live`](super::OutOptions::min_live) has its
//! packed files that are still in the tree, unchanged and resident, stored
//! again. The old packs are then named by no new snapshot, and once the
//! older snapshots are forgotten the collector deletes their segments
//! without copying anything. Large members (one file each) are left to the
//! collector, which copies the live ones.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use cbfs_format::SegmentId;

use crate::error::Result;
use crate::hsm::stub::{self, StubAttr};
use crate::index::FileRecord;
use crate::scan::{Entry, Stat};

use super::diff::{Dispatch, unchanged};
use super::queue::{CloseOnDrop, WorkQueue};
use super::worker::PACK_FILE_MAX;
use super::{OutReport, Shared, Work};

/// Files handed to the workers at a time.
const BATCH: usize = 512;

/// The segments whose live share of files is below `min_live` percent,
/// with some file still live (an empty one is garbage already).
fn sparse_segments(shared: &Shared<'_>, min_live: u8) -> Result<HashSet<SegmentId>> {
    Ok(shared
        .agent
        .index
        .segments()?
        .into_iter()
        .filter(|(_, r)| {
            r.files > r.members
                && r.live_files > 0
                && u128::from(r.live_files) * 100 < u128::from(min_live) * u128::from(r.files)
        })
        .map(|(id, _)| id)
        .collect())
}

/// Whether `rec` is one of a pack's files: what the workers pack (a small
/// file, or an entry without content).
fn packed(rec: &FileRecord) -> bool {
    !rec.stat.is_file() || rec.stat.size <= PACK_FILE_MAX
}

/// Stores again the packed files of sparse segments (see the module).
/// Returns how many entries were handed over.
pub(crate) fn store_sparse_packs(shared: &Shared<'_>, report: &mut OutReport) -> Result<u64> {
    let (agent, opts) = (shared.agent, shared.opts);
    if opts.min_live == 0 || opts.plain {
        return Ok(0);
    }
    let Some(tree) = shared.tree.as_ref() else {
        return Ok(0);
    };
    let sparse = sparse_segments(shared, opts.min_live)?;
    if sparse.is_empty() {
        return Ok(0);
    }
    let prefix = opts.prefix.as_ref().map(|p| {
        let mut p = p.clone();
        p.push(b'/');
        p
    });
    // The candidates: packed, not one name of several of an inode, below
    // the run's prefix.
    let mut candidates: Vec<(Vec<u8>, FileRecord)> = Vec::new();
    agent.index.for_each_file(|path, rec| {
        if sparse.contains(&rec.segment)
            && packed(&rec)
            && rec.hardlink_to.is_none()
            && (rec.stat.nlink <= 1 || rec.stat.file_type() == libc::S_IFDIR)
            && prefix.as_ref().is_none_or(|p| path.starts_with(p))
        {
            candidates.push((path.to_vec(), rec));
        }
        Ok(())
    })?;
    let mut handed = 0u64;
    let queue = WorkQueue::default();
    let stored = std::thread::scope(|s| {
        let _closing = CloseOnDrop(shared, &queue);
        let mut dispatch = Dispatch::new(s, shared, &queue);
        for chunk in candidates.chunks(BATCH) {
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let mut work = Vec::with_capacity(chunk.len());
            for (path, rec) in chunk {
                let local = match &prefix {
                    Some(p) => &path[p.len()..],
                    None => path.as_slice(),
                };
                // As it is now, without following a link on the way; a
                // file that is gone or changed is the next run's business.
                let Ok(fd) = tree.open_path_beneath(local) else {
                    continue;
                };
                let Ok(st) = rustix::fs::fstat(&fd) else {
                    continue;
                };
                let stat = Stat::from_rustix(&st);
                let scope = if stat.file_type() == libc::S_IFDIR {
                    opts.rules.scope_of_dir(path)
                } else {
                    opts.rules.scope_of(path)
                };
                if !unchanged(opts, Some(rec), &stat, &scope, None) {
                    continue;
                }
                let abs = opts
                    .source
                    .join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(local));
                // A released file's content is not on disk; a flagged one
                // stays where it is.
                if stat.is_file() && !matches!(stub::read_record_at(&abs), Ok(StubAttr::None)) {
                    continue;
                }
                if agent.index.hsm(path)?.is_some_and(|h| h.no_archive) {
                    continue;
                }
                work.push(Work {
                    entry: Entry {
                        rel: path.clone(),
                        abs,
                        stat,
                    },
                    scope,
                    hardlink_to: None,
                    reseal: None,
                    pushed: None,
                });
            }
            handed += work.len() as u64;
            dispatch.hand_over(work);
        }
        Ok::<_, crate::error::Error>(dispatch.finish())
    })?;
    stored?;
    report.repacked = handed;
    if handed > 0 {
        tracing::info!(
            segments = sparse.len(),
            entries = handed,
            "stored the live files of sparse packs again, so that the collector can free them"
        );
    }
    Ok(handed)
}
