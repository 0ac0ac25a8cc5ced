//! A segment being filled by one worker, and closing it: upload the
//! segment, its lockboxes and its summary, then commit the index.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use cbfs_core::ScopeLabel;
use cbfs_format::{GroupKey, Lockbox, SegmentId, SegmentMode, SegmentWriter, SummaryEntry, layout};

use crate::error::{Error, Result};
use crate::index::{Batch, FileRecord, MemberRecord, SegmentRecord};
use crate::scan::Stat;

use super::worker::{Pack, flush_pack, is_resource, spool_error};
use super::{CrashPoint, Shared, release};

/// One entry stored in a segment, waiting for the segment's commit.
pub(crate) struct Stored {
    pub(crate) rel: Vec<u8>,
    pub(crate) stat: Stat,
    pub(crate) scope: ScopeLabel,
    pub(crate) summary: SummaryEntry,
    pub(crate) hardlink_to: Option<Vec<u8>>,
    /// Which file of its member it is (0 unless the member is a pack).
    pub(crate) slot: u16,
    /// Its share of the member's bytes.
    pub(crate) share: u64,
}

/// A segment being filled by one worker.
pub(crate) struct OpenSegment {
    pub(crate) id: SegmentId,
    path: PathBuf,
    pub(crate) writer: SegmentWriter<File>,
    pub(crate) groups: HashMap<ScopeLabel, GroupKey>,
    pub(crate) lockboxes: Vec<Lockbox>,
    pub(crate) stored: Vec<Stored>,
    /// Per scope, the pack being filled.
    pub(crate) packs: HashMap<ScopeLabel, Pack>,
}

pub(crate) fn open_segment(shared: &Shared<'_>) -> Result<OpenSegment> {
    let id = SegmentId::random();
    let path = shared.spool_dir.join(format!("{id}.tar"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| spool_io(shared, "cannot create segment spool", &path, e))?;
    let mode = if shared.opts.plain {
        SegmentMode::Plain
    } else {
        SegmentMode::Encrypted
    };
    let writer = SegmentWriter::new(file, id, mode)
        .map_err(|e| spool_error(shared, e))?
        .with_zstd_level(shared.opts.zstd_level);
    Ok(OpenSegment {
        id,
        path,
        writer,
        groups: HashMap::new(),
        lockboxes: Vec::new(),
        stored: Vec::new(),
        packs: HashMap::new(),
    })
}

fn spool_io(shared: &Shared<'_>, op: &'static str, path: &PathBuf, e: std::io::Error) -> Error {
    if is_resource(&e) {
        Error::Resource {
            what: "the segment spool".into(),
            path: shared.spool_dir.clone(),
            source: e,
        }
    } else {
        Error::io(op, path, e)
    }
}

pub(crate) fn close_segment(shared: &Shared<'_>, mut seg: OpenSegment) -> Result<()> {
    let mut scopes: Vec<ScopeLabel> = seg.packs.keys().cloned().collect();
    scopes.sort();
    for scope in scopes {
        flush_pack(shared, &mut seg, &scope)?;
    }
    let OpenSegment {
        id,
        path,
        writer,
        lockboxes,
        stored,
        ..
    } = seg;
    let (mut file, summary) = writer.finish().map_err(|e| spool_error(shared, e))?;
    if stored.is_empty() {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    // A failed member may have left bytes past the end; cut them.
    file.set_len(summary.segment_len())
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| file.sync_all())
        .map_err(|e| spool_io(shared, "cannot finish segment spool", &path, e))?;
    drop(file);
    let n = {
        let mut done = shared.segments_done.lock().expect("segment counter");
        *done += 1;
        *done
    };
    let agent = shared.agent;
    let mut stored_bytes = summary.segment_len();
    shared.wait(agent.store.put_file_new(&layout::segment(&id), &path))?;
    shared.crash_if(CrashPoint::AfterSegment(n));
    for lb in &lockboxes {
        let bytes = lb.to_bytes();
        stored_bytes += bytes.len() as u64;
        shared.wait(
            agent
                .store
                .put_new(&layout::lockbox(&id, &lb.group_id()), bytes),
        )?;
    }
    shared.crash_if(CrashPoint::AfterLockboxes(n));
    let summary_bytes = summary.to_bytes();
    stored_bytes += summary_bytes.len() as u64;
    shared.wait(agent.store.put_new(&layout::summary(&id), summary_bytes))?;
    shared.crash_if(CrashPoint::AfterSummary(n));

    // Now the index may name what the store holds.
    {
        let _guard = shared.commit_lock.lock().expect("commit lock");
        let mut batch = Batch::default();
        let mut updates: HashMap<SegmentId, SegmentRecord> = HashMap::new();
        let mut live_bytes = 0;
        for s in &stored {
            if let Some(old) = agent.index.file(&s.rel)? {
                release(agent, &mut updates, &old)?;
            }
            let rec = FileRecord {
                stat: s.stat,
                scope: s.scope.to_string(),
                segment: id,
                member: s.summary.member,
                sha256: s.summary.sha256,
                stored: s.share,
                hardlink_to: s.hardlink_to.clone(),
                slot: s.slot,
            };
            live_bytes += s.share;
            batch.put_file(&s.rel, &rec);
            batch.put_member(
                &s.summary.member,
                s.slot,
                &MemberRecord {
                    path: s.rel.clone(),
                    stat: s.stat,
                    scope: s.scope.to_string(),
                    stored: s.share,
                },
            );
        }
        updates.insert(
            id,
            SegmentRecord {
                size: summary.segment_len(),
                members: summary.entries().len() as u64,
                files: stored.len() as u64,
                live_files: stored.len() as u64,
                live_bytes,
            },
        );
        for (sid, rec) in &updates {
            batch.put_segment(sid, rec);
        }
        let mut state = agent.index.state()?;
        state.dirty = true;
        batch.put_state(&state);
        agent.index.commit(batch)?;
    }
    shared.crash_if(CrashPoint::AfterCommit(n));
    let _ = std::fs::remove_file(&path);
    shared
        .bytes_stored
        .fetch_add(stored_bytes, Ordering::Relaxed);
    shared.new_segments.fetch_add(1, Ordering::Relaxed);
    shared.observer.segment_stored(&id, stored_bytes);
    tracing::info!(segment = %id, members = stored.len(), bytes = summary.segment_len(), "segment stored");
    Ok(())
}
