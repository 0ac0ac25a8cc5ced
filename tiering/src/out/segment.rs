//! A segment being filled by one worker, and closing it: upload the
//! segment, its lockboxes and its summary, then commit the index.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

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

/// A closed segment on the spool, with everything its commit needs.
struct Sealed {
    id: SegmentId,
    path: PathBuf,
    summary: Vec<u8>,
    segment_len: u64,
    members: u64,
    lockboxes: Vec<Lockbox>,
    /// The entries it holds, as the index will record them.
    files: Vec<(Vec<u8>, FileRecord)>,
}

/// Closes a segment: uploads it with its lockboxes and summary, then
/// commits the index. During a pushed stream, the segment waits instead
/// (see [`Deferred`]).
pub(crate) fn close_segment(shared: &Shared<'_>, seg: OpenSegment) -> Result<()> {
    let Some(sealed) = seal(shared, seg)? else {
        return Ok(());
    };
    if let Some(deferred) = &shared.deferred
        && !deferred.released.load(Ordering::SeqCst)
    {
        return deferred.keep(shared, sealed);
    }
    commit(shared, sealed)
}

/// Writes out the segment's last packs and finishes its spool; `None` if
/// nothing was stored in it.
fn seal(shared: &Shared<'_>, mut seg: OpenSegment) -> Result<Option<Sealed>> {
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
        return Ok(None);
    }
    // A failed member may have left bytes past the end; cut them.
    file.set_len(summary.segment_len())
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| file.sync_all())
        .map_err(|e| spool_io(shared, "cannot finish segment spool", &path, e))?;
    drop(file);
    let files = stored
        .into_iter()
        .map(|s| {
            let rec = FileRecord {
                stat: s.stat,
                scope: s.scope.to_string(),
                segment: id,
                member: s.summary.member,
                sha256: s.summary.sha256,
                stored: s.share,
                hardlink_to: s.hardlink_to,
                slot: s.slot,
            };
            (s.rel, rec)
        })
        .collect();
    Ok(Some(Sealed {
        id,
        path,
        summary: summary.to_bytes(),
        segment_len: summary.segment_len(),
        members: summary.entries().len() as u64,
        lockboxes,
        files,
    }))
}

/// Uploads a sealed segment, its lockboxes and its summary, then commits
/// the index: the store holds what the index names before it names it.
fn commit(shared: &Shared<'_>, sealed: Sealed) -> Result<()> {
    let Sealed {
        id,
        path,
        summary,
        segment_len,
        members,
        lockboxes,
        files,
    } = sealed;
    let n = {
        let mut done = shared.segments_done.lock().expect("segment counter");
        *done += 1;
        *done
    };
    let agent = shared.agent;
    let mut stored_bytes = segment_len;
    shared.wait(agent.store.put_file_new(&layout::segment(&id), &path))?;
    shared.crash_if(CrashPoint::AfterSegment(n));
    for lb in &lockboxes {
        let bytes = lb.to_bytes();
        stored_bytes += bytes.len() as u64;
        shared.wait(agent.store.put_new(
            &layout::lockbox_at(&id, &lb.group_id(), lb.key_version()),
            bytes,
        ))?;
    }
    shared.crash_if(CrashPoint::AfterLockboxes(n));
    stored_bytes += summary.len() as u64;
    shared.wait(agent.store.put_new(&layout::summary(&id), summary))?;
    shared.crash_if(CrashPoint::AfterSummary(n));

    // Now the index may name what the store holds.
    {
        let _guard = shared.commit_lock.lock().expect("commit lock");
        let mut batch = Batch::default();
        let mut updates: HashMap<SegmentId, SegmentRecord> = HashMap::new();
        let mut live_bytes = 0;
        for (rel, rec) in &files {
            if let Some(old) = agent.index.file(rel)? {
                release(agent, &mut updates, &old)?;
            }
            live_bytes += rec.stored;
            batch.put_file(rel, rec);
            batch.put_member(
                &rec.member,
                rec.slot,
                &MemberRecord {
                    path: rel.clone(),
                    stat: rec.stat,
                    scope: rec.scope.clone(),
                    stored: rec.stored,
                },
            );
        }
        updates.insert(
            id,
            SegmentRecord {
                size: segment_len,
                members,
                files: files.len() as u64,
                live_files: files.len() as u64,
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
    tracing::info!(segment = %id, members = files.len(), bytes = segment_len, "segment stored");
    Ok(())
}

/// The segments of a pushed stream that wait, sealed on the spool, until
/// the whole stream has arrived and passed its checks: a refused stream
/// leaves nothing in the store or the index. What a waiting segment's
/// commit needs is spilled beside it, so that memory does not grow with
/// the stream.
#[derive(Default)]
pub(crate) struct Deferred {
    waiting: Mutex<Vec<Waiting>>,
    /// Set once the waiting segments are committed: segments closed later
    /// in the run commit at once.
    released: AtomicBool,
}

/// A sealed segment waiting for its stream: the segment spool, and the
/// spill file of the rest.
struct Waiting {
    id: SegmentId,
    path: PathBuf,
    spill: PathBuf,
}

impl Deferred {
    fn keep(&self, shared: &Shared<'_>, sealed: Sealed) -> Result<()> {
        let spill = sealed.path.with_extension("wait");
        let mut out = Vec::new();
        put(&mut out, &sealed.summary);
        out.extend_from_slice(&sealed.segment_len.to_le_bytes());
        out.extend_from_slice(&sealed.members.to_le_bytes());
        out.extend_from_slice(&(sealed.lockboxes.len() as u32).to_le_bytes());
        for lb in &sealed.lockboxes {
            put(&mut out, &lb.to_bytes());
        }
        out.extend_from_slice(&(sealed.files.len() as u32).to_le_bytes());
        for (rel, rec) in &sealed.files {
            put(&mut out, rel);
            put(&mut out, &rec.to_bytes());
        }
        std::fs::write(&spill, &out)
            .map_err(|e| spool_io(shared, "cannot write segment spill", &spill, e))?;
        self.waiting
            .lock()
            .expect("waiting segments")
            .push(Waiting {
                id: sealed.id,
                path: sealed.path,
                spill,
            });
        Ok(())
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads back what [`Deferred::keep`] spilled.
fn unspill(w: &Waiting) -> Result<Sealed> {
    let bytes =
        std::fs::read(&w.spill).map_err(|e| Error::io("cannot read segment spill", &w.spill, e))?;
    let bad = |what: &str| Error::Io {
        op: "cannot read segment spill",
        path: w.spill.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned()),
    };
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let part = bytes.get(at..at + n).ok_or_else(|| bad("it ends early"))?;
        at += n;
        Ok(part)
    };
    let u32_of = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize;
    let u64_of = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
    let n = u32_of(take(4)?);
    let summary = take(n)?.to_vec();
    let segment_len = u64_of(take(8)?);
    let members = u64_of(take(8)?);
    let mut lockboxes = Vec::new();
    for _ in 0..u32_of(take(4)?) {
        let n = u32_of(take(4)?);
        lockboxes.push(Lockbox::from_bytes(take(n)?)?);
    }
    let mut files = Vec::new();
    for _ in 0..u32_of(take(4)?) {
        let n = u32_of(take(4)?);
        let rel = take(n)?.to_vec();
        let n = u32_of(take(4)?);
        let rec = FileRecord::from_bytes(take(n)?).map_err(|e| bad(&e))?;
        files.push((rel, rec));
    }
    Ok(Sealed {
        id: w.id,
        path: w.path.clone(),
        summary,
        segment_len,
        members,
        lockboxes,
        files,
    })
}

/// Uploads and commits the segments that waited for a pushed stream, on
/// as many threads as the run has workers; afterwards segments commit as
/// they close.
pub(crate) fn commit_deferred(shared: &Shared<'_>) -> Result<()> {
    let Some(deferred) = &shared.deferred else {
        return Ok(());
    };
    let waiting = std::mem::take(&mut *deferred.waiting.lock().expect("waiting segments"));
    let queue = Mutex::new(waiting.into_iter());
    let threads = shared.opts.workers.clamp(1, 16);
    let result = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        if shared.stop.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        let next = queue.lock().expect("waiting queue").next();
                        let Some(w) = next else { return Ok(()) };
                        let done = unspill(&w).and_then(|sealed| commit(shared, sealed));
                        if done.is_err() {
                            shared.stop.store(true, Ordering::SeqCst);
                            return done;
                        }
                        let _ = std::fs::remove_file(&w.spill);
                    }
                })
            })
            .collect();
        let mut result = Ok(());
        for h in handles {
            let r = h.join().expect("commit thread panicked");
            if result.is_ok() {
                result = r;
            }
        }
        result
    });
    deferred.released.store(true, Ordering::SeqCst);
    result
}
