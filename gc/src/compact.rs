//! Compaction: the live members of sparse segments copied byte for byte
//! into new segments, with new summaries, copies of their groups'
//! lockboxes, and relocation records that say where each member went.
//!
//! Order, for crash safety: the new segment, its lockboxes, its summary,
//! then the relocation records. Until a relocation record exists nothing
//! points at the new segment (a crash leaves garbage that a later run
//! collects); once it exists, the member verifies in its new place. The
//! old segment is deleted only by a later phase.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use cbfs_format::{
    GroupId, Relocation, SegmentId, SegmentMode, SegmentWriter, Summary, SummaryEntry, check_copy,
    layout,
};
use futures::{StreamExt as _, TryStreamExt as _};
use serde::Serialize;
use tempfile::NamedTempFile;

use crate::crash::{CrashPoint, TestHooks};
use crate::error::{Error, Result, is_full};
use crate::lease::Held;
use crate::mark::Mark;

/// Live members closer than this are read with one ranged request.
const COALESCE_GAP: u64 = 1 << 20;
/// The longest ranged request.
const MAX_RANGE: u64 = 16 << 20;
/// The longest first request of a segment.
const FIRST_RANGE: u64 = 2 << 20;
/// Members checked ahead of the one being written.
const CHECKED_AHEAD: usize = 8;
/// Small objects (lockboxes, relocation records) read or written at once.
const IN_FLIGHT: usize = 8;

/// Writes new small objects together ([`cbfs_store::Store::put_many_new`]:
/// on a local store one flush for all of them); the first error, if any.
fn put_all(
    store: &cbfs_store::Store,
    rt: &tokio::runtime::Handle,
    items: Vec<(String, Bytes)>,
) -> Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    for outcome in rt.block_on(store.put_many_new(items, IN_FLIGHT)) {
        outcome?;
    }
    Ok(())
}

/// A segment to compact: its summary and its live members, in order.
pub(crate) struct Victim {
    pub segment: SegmentId,
    pub summary: Arc<Summary>,
    pub live: Vec<SummaryEntry>,
}

/// What compaction did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CompactReport {
    /// Segments whose live members were all copied (collected afterwards).
    pub segments_compacted: u64,
    /// Their keys.
    pub compacted: Vec<String>,
    /// New segments written.
    pub segments_written: u64,
    /// Members copied.
    pub members_copied: u64,
    /// Bytes of segment data copied.
    pub bytes_copied: u64,
    /// Seconds spent copying and uploading.
    pub seconds: f64,
    /// Segments left as they are because a member could not be copied.
    pub failed: Vec<(String, String)>,
}

/// One new segment being filled.
struct Filling {
    id: SegmentId,
    spool: NamedTempFile,
    writer: SegmentWriter<File>,
    /// Per old segment, the members moved from it (their new entries).
    moved: BTreeMap<SegmentId, Vec<SummaryEntry>>,
    /// The groups its members need, and the old segment each came from.
    groups: BTreeMap<GroupId, SegmentId>,
    /// Flushes what is written so far, on another thread while the
    /// copying goes on: the flush that publishes the segment then has
    /// only the rest to write back.
    early: Option<Flusher>,
}

/// A thread that flushes a spool file to disk whenever more of it was
/// written since its last flush: the disk writes back one part while the
/// next is being copied. Its file is a descriptor of its own, so that a
/// write-back error it meets is still reported to the flush that publishes
/// the segment, which is the one that counts.
struct Flusher {
    kick: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::JoinHandle<std::io::Result<()>>,
}

impl Filling {
    /// Asks for a flush of what the spool holds so far: at once if none is
    /// under way, else as soon as that one ends.
    fn flush_early(&mut self) {
        if self.early.is_none() {
            let Ok(file) = self.spool.reopen() else {
                return;
            };
            let (kick, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let thread = std::thread::spawn(move || {
                while rx.recv().is_ok() {
                    file.sync_data()?;
                }
                Ok(())
            });
            self.early = Some(Flusher { kick, thread });
        }
        if let Some(f) = &self.early {
            // Full: a flush is asked for already, and covers this part.
            let _ = f.kick.try_send(());
        }
    }
}

impl Flusher {
    /// Waits for the flushes under way and asked for, if any; the first
    /// error of any.
    fn finish(self) -> std::io::Result<()> {
        drop(self.kick);
        self.thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// State of one compaction: the copying, on the calling thread.
struct Compactor<'a> {
    mark: &'a Mark,
    spool_dir: &'a Path,
    segment_size: u64,
    report: CompactReport,
    /// Old segments some member of which failed to copy.
    failed: BTreeSet<SegmentId>,
    /// Read buffers given back (two circulate: the run being copied and
    /// the next one being read).
    spare: Vec<Vec<u8>>,
    /// Full segments, to the thread that publishes them (until the
    /// copying is over).
    closer: Option<std::sync::mpsc::SyncSender<Filling>>,
    /// Set by that thread when it stops at an error: the copying stops at
    /// its next run of members instead of at its next hand-over.
    stopped: &'a std::sync::atomic::AtomicBool,
}

/// The publishing of full segments, on a thread of its own: a segment's
/// flush to disk and its upload overlap the copying into the next one.
/// One segment is published at a time, in the order they filled; the
/// copying waits for the thread when the next one is full, so at most two
/// spool files exist at once (the spool needs room for two segments).
struct Closer<'a> {
    mark: &'a Mark,
    lease: &'a mut Held,
    hooks: &'a TestHooks,
    closed: u32,
    segments_written: u64,
    members_copied: u64,
    failed: Vec<(String, String)>,
}

fn spool_err(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::local("cannot write the segment spool", path, e)
}

/// An error of the writer of new segment `id` (spooled at `path`): its
/// writes to the spool are the local disk's (a full disk is exit 7), the
/// rest the segment's.
fn writer_err(id: SegmentId, path: &Path) -> impl Fn(cbfs_format::Error) -> Error + '_ {
    move |e| match e {
        cbfs_format::Error::Io { source, .. } => spool_err(path)(source),
        e => Error::format(format!("new segment {id}"), e),
    }
}

impl Compactor<'_> {
    fn start(&self, mode: SegmentMode) -> Result<Filling> {
        let id = SegmentId::random();
        let spool = NamedTempFile::new_in(self.spool_dir).map_err(spool_err(self.spool_dir))?;
        let file = spool.reopen().map_err(spool_err(spool.path()))?;
        let writer = SegmentWriter::new(file, id, mode).map_err(writer_err(id, spool.path()))?;
        Ok(Filling {
            id,
            spool,
            writer,
            moved: BTreeMap::new(),
            groups: BTreeMap::new(),
            early: None,
        })
    }

    /// Hands a full segment to the thread that publishes it. That thread
    /// stops at its first error, which [`compact`] reports: this one then
    /// only says that the copying stopped.
    fn close(&self, f: Filling) -> Result<()> {
        if f.writer.is_empty() {
            return Ok(());
        }
        let closer = self.closer.as_ref().expect("the copying is not over");
        closer.send(f).map_err(|_| Self::publishing_stopped())
    }

    /// What the copying returns once the publishing stopped at an error
    /// (never shown: [`compact`] reports that error instead).
    fn publishing_stopped() -> Error {
        Error::Unsafe {
            object: "new segments".into(),
            reason: "their publishing stopped".into(),
        }
    }
}

impl Closer<'_> {
    fn crash(&self, point: CrashPoint) {
        self.hooks.at(point);
    }

    /// Finishes a new segment and publishes it: segment, lockboxes,
    /// summary, relocation records.
    fn close(&mut self, f: Filling) -> Result<()> {
        if f.writer.is_empty() {
            return Ok(());
        }
        let Filling {
            id,
            spool,
            writer,
            moved,
            groups,
            early,
        } = f;
        if let Some(f) = early {
            f.finish().map_err(spool_err(spool.path()))?;
        }
        let (mut file, summary) = writer.finish().map_err(writer_err(id, spool.path()))?;
        file.set_len(summary.segment_len())
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| file.sync_all())
            .map_err(spool_err(spool.path()))?;
        drop(file);
        let (store, rt) = (&self.mark.store, &self.mark.rt);
        self.lease.check()?;
        self.closed += 1;
        let n = self.closed;
        rt.block_on(store.put_file_new(&layout::segment(&id), spool.path()))?;
        self.crash(CrashPoint::AfterSegment(n));
        // The lockboxes of the groups whose members moved: read from the
        // old segment's and written under the new one's, several at a time.
        let mut copies: Vec<(&String, String)> = Vec::new();
        for (group, from) in &groups {
            let wanted = group.to_string();
            let before = copies.len();
            for key in self.mark.lockboxes.get(from).into_iter().flatten() {
                let name = key.rsplit('/').next().expect("a key has a last part");
                if name.starts_with(&wanted) {
                    copies.push((key, format!("{}{name}", layout::lockboxes_of(&id))));
                }
            }
            if copies.len() == before {
                self.failed.push((
                    layout::lockbox(from, group),
                    format!("missing: members of group {group} moved to segment {id} cannot be opened there either"),
                ));
            }
        }
        let read: Vec<Bytes> = rt.block_on(
            futures::stream::iter(copies.iter().map(|(from, _)| store.get(from)))
                .buffered(IN_FLIGHT)
                .try_collect(),
        )?;
        let lockboxes = copies.into_iter().map(|(_, to)| to).zip(read).collect();
        put_all(store, rt, lockboxes)?;
        self.crash(CrashPoint::AfterLockboxes(n));
        rt.block_on(store.put_new(&layout::summary(&id), summary.to_bytes()))?;
        self.crash(CrashPoint::AfterSummary(n));
        // The relocation records: the first on its own (a crash test stops
        // between it and the others), the others together.
        let mut records = Vec::new();
        for (old, entries) in moved {
            self.members_copied += entries.len() as u64;
            let record = Relocation::new(old, id, summary.mode(), entries)
                .map_err(|e| Error::format(layout::relocation(&old, &id), e))?;
            records.push((
                layout::relocation(&old, &id),
                Bytes::from(record.to_bytes()),
            ));
        }
        let mut records = records.into_iter();
        if let Some((key, bytes)) = records.next() {
            rt.block_on(store.put_new(&key, bytes))?;
            self.crash(CrashPoint::AfterRelocation(n));
        }
        put_all(store, rt, records.collect())?;
        self.segments_written += 1;
        tracing::info!(segment = %id, bytes = summary.segment_len(), "compacted segment written");
        Ok(())
    }
}

impl Compactor<'_> {
    /// Copies the live members of one old segment into `into`, closing
    /// and starting new segments as they fill.
    fn copy(&mut self, v: &Victim, into: &mut Option<Filling>) -> Result<()> {
        let key = layout::segment(&v.segment);
        // One ranged read for each run of members close to each other.
        // The first runs are short, so that the copying starts soon after
        // the first read: each may be twice the one before, up to the
        // longest request.
        let mut runs = Vec::new();
        let mut i = 0;
        let mut longest = FIRST_RANGE;
        while i < v.live.len() {
            let start = v.live[i].header_offset;
            let mut j = i + 1;
            while j < v.live.len()
                && v.live[j].header_offset - v.live[j - 1].end_offset() <= COALESCE_GAP
                && v.live[j].end_offset() - start <= longest
            {
                j += 1;
            }
            let end = v.live[j - 1].data_offset + v.live[j - 1].data_len;
            runs.push((i..j, start..end));
            longest = (longest * 2).min(MAX_RANGE);
            i = j;
        }
        // The next run is read while this one is copied, into a buffer
        // that an earlier run gave back.
        let mark = self.mark;
        let fetch = |range: &std::ops::Range<u64>, buf: Vec<u8>| {
            let (store, key, range) = (mark.store.clone(), key.clone(), range.clone());
            mark.rt
                .spawn(async move { store.get_range_into(&key, range, buf).await })
        };
        let mut next = runs
            .first()
            .map(|(_, range)| fetch(range, self.spare.pop().unwrap_or_default()));
        for (k, (members, range)) in runs.iter().enumerate() {
            if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(Self::publishing_stopped());
            }
            let read = next.take().expect("a read per run");
            let bytes = mark
                .rt
                .block_on(read)
                .expect("a ranged read does not panic")?;
            next = runs
                .get(k + 1)
                .map(|(_, range)| fetch(range, self.spare.pop().unwrap_or_default()));
            let start = range.start;
            let live = &v.live[members.clone()];
            // Each member is checked (header and SHA-256 against its
            // summary) on a second thread while this one writes the ones
            // checked before it.
            std::thread::scope(|scope| -> Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel(CHECKED_AHEAD);
                let (summary, bytes) = (&v.summary, &bytes);
                scope.spawn(move || {
                    for e in live {
                        let from = (e.header_offset - start) as usize;
                        let to = (e.data_offset + e.data_len - start) as usize;
                        let checked = check_copy(summary, &e.member, &bytes[from..to]);
                        if tx.send(checked).is_err() {
                            break;
                        }
                    }
                });
                for e in live {
                    let checked = rx.recv().expect("a check per member");
                    let need = e.end_offset() - e.header_offset;
                    let full = into.as_ref().is_some_and(|f| {
                        !f.writer.is_empty() && f.writer.len() + need > self.segment_size
                    });
                    if full {
                        let f = into.take().expect("checked");
                        self.close(f)?;
                    }
                    if into.is_none() {
                        *into = Some(self.start(v.summary.mode())?);
                    }
                    let f = into.as_mut().expect("just made");
                    match checked.and_then(|c| f.writer.append_checked(c)) {
                        Ok(placed) => {
                            self.report.bytes_copied += e.data_len;
                            if let Some(g) = placed.group {
                                f.groups.insert(g, v.segment);
                            }
                            f.moved.entry(v.segment).or_default().push(placed);
                        }
                        // A full spool is no fault of the member: the run
                        // stops (what it published stands, as after a crash).
                        Err(cbfs_format::Error::Io { source, .. }) if is_full(&source) => {
                            return Err(spool_err(f.spool.path())(source));
                        }
                        Err(err) => {
                            self.failed.insert(v.segment);
                            self.report
                                .failed
                                .push((key.clone(), format!("member {}: {err}", e.member)));
                        }
                    }
                }
                Ok(())
            })?;
            if let Some(f) = into.as_mut() {
                f.flush_early();
            }
            self.spare.push(bytes);
        }
        Ok(())
    }
}

/// Compacts `victims`; returns the old segments whose live members are
/// now all in new segments (with their relocation records written).
pub(crate) fn compact(
    mark: &Mark,
    lease: &mut Held,
    victims: &[Victim],
    spool_dir: &Path,
    segment_size: u64,
    hooks: &TestHooks,
) -> Result<(BTreeSet<SegmentId>, CompactReport)> {
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Filling>(0);
    let stopped = std::sync::atomic::AtomicBool::new(false);
    let mut c = Compactor {
        mark,
        spool_dir,
        segment_size,
        report: CompactReport::default(),
        failed: BTreeSet::new(),
        spare: Vec::new(),
        closer: Some(tx),
        stopped: &stopped,
    };
    let mut closer = Closer {
        mark,
        lease,
        hooks,
        closed: 0,
        segments_written: 0,
        members_copied: 0,
        failed: Vec::new(),
    };
    let (copied, published) = std::thread::scope(|scope| {
        let publishing = scope.spawn(|| -> Result<()> {
            // Its first error ends it; the copying stops at its next run
            // of members (or hand-over).
            for f in rx {
                if let Err(e) = closer.close(f) {
                    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(e);
                }
            }
            Ok(())
        });
        // A panic of the copying must still end the publishing thread (by
        // dropping the channel) before the scope waits for it.
        let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<()> {
            for mode in [SegmentMode::Encrypted, SegmentMode::Plain] {
                let mut filling: Option<Filling> = None;
                for v in victims.iter().filter(|v| v.summary.mode() == mode) {
                    c.copy(v, &mut filling)?;
                }
                if let Some(f) = filling {
                    c.close(f)?;
                }
            }
            Ok(())
        }));
        // Whatever was handed over is published (or fails) before this
        // returns.
        c.closer = None;
        let published = publishing.join();
        let copied = copied.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        let published = published.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (copied, published)
    });
    // The publishing's error is the cause; the copying's, if that is all,
    // its own.
    published?;
    copied?;
    c.report.segments_written = closer.segments_written;
    c.report.members_copied = closer.members_copied;
    c.report.failed.extend(closer.failed);
    let done: BTreeSet<SegmentId> = victims
        .iter()
        .map(|v| v.segment)
        .filter(|s| !c.failed.contains(s))
        .collect();
    c.report.segments_compacted = done.len() as u64;
    c.report.compacted = done.iter().map(layout::segment).collect();
    c.report.seconds = started.elapsed().as_secs_f64();
    Ok((done, c.report))
}
