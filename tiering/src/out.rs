//! `cbfs-tier out`: one tiering run.
//!
//! ```text
//! scan ─▶ per changed file: zstd ─▶ encrypt ─▶ append to a segment spool
//!      ─▶ full segment: upload segment, lockboxes, summary ─▶ commit index
//!      ─▶ end of run: deletions ─▶ signed snapshot manifest ─▶ commit index
//! ```
//!
//! Objects are written before the index names them, and the manifest after
//! the index, so a crash at any point loses nothing committed; a rerun
//! finishes the job. What a crash leaves behind is garbage for GC.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use cbfs_core::ScopeLabel;
use cbfs_format::{
    GroupKey, Lockbox, ManifestBuilder, ManifestEntry, MemberId, SegmentId, SegmentMode,
    SegmentWriter, SnapshotId, SummaryEntry,
};
use serde::Serialize;

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::index::{Batch, FileRecord, MemberRecord, SegmentRecord, SnapshotRecord};
use crate::progress::Progress;
use crate::rules::ScopeRules;
use crate::scan::{self, Entry, Names, Problem, Stat};
use cbfs_format::layout;

/// What a run is asked to do.
#[derive(Clone, Debug)]
pub struct OutOptions {
    /// The tree to tier out.
    pub source: PathBuf,
    /// Which scope each path goes to.
    pub rules: ScopeRules,
    /// Close a segment once it reaches this many bytes.
    pub segment_size: u64,
    /// zstd level.
    pub zstd_level: i32,
    /// Write plain tars: no compression, no encryption, real names.
    pub plain: bool,
    /// Worker threads (each fills its own segments).
    pub workers: usize,
    /// Show a progress bar.
    pub progress: bool,
    /// For tests of crash safety: stop the process abruptly at this point.
    pub crash_at: Option<CrashPoint>,
}

/// Where a test may make the run die, to check that a rerun recovers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Entries the walk hands over at a time.
const WALK_BATCH: usize = 512;

fn crash_if(opts: &OutOptions, point: CrashPoint) {
    if opts.crash_at == Some(point) {
        eprintln!("cbfs-tier: crashing on purpose at {point:?}");
        std::process::abort();
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OutReport {
    /// Entries found in the tree.
    pub scanned: u64,
    /// Entries stored in this run (new or changed).
    pub files: u64,
    /// Entries unchanged since the last run.
    pub unchanged: u64,
    /// Entries gone from the tree since the last run.
    pub deleted: u64,
    /// Content bytes read.
    pub bytes_read: u64,
    /// Bytes added to the store (segments, lockboxes, summaries, manifest).
    pub bytes_stored: u64,
    /// Segments written.
    pub new_segments: u64,
    /// The snapshot made, if anything changed.
    pub snapshot: Option<String>,
    /// Its sequence number.
    pub sequence: Option<u64>,
    /// Entries skipped (unreadable, vanished, changed while read); the next
    /// run tries them again.
    pub skipped: Vec<Problem>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// One entry to store.
struct Work {
    entry: Entry,
    scope: ScopeLabel,
    hardlink_to: Option<Vec<u8>>,
}

impl Work {
    /// The content bytes it will read.
    fn content_len(&self) -> u64 {
        if self.entry.stat.is_file() && self.hardlink_to.is_none() {
            self.entry.stat.size
        } else {
            0
        }
    }
}

/// One entry stored in a segment, waiting for the segment's commit.
struct Stored {
    rel: Vec<u8>,
    stat: Stat,
    scope: ScopeLabel,
    summary: SummaryEntry,
    hardlink_to: Option<Vec<u8>>,
    /// Which file of its member it is (0 unless the member is a pack).
    slot: u16,
    /// Its share of the member's bytes.
    share: u64,
}

/// Regular files up to this size go into packs: one member (one tar
/// entry, one age header, one zstd frame) for many small files, which
/// would otherwise cost about a kilobyte of framing each. So do entries
/// without content (folders, links, devices).
const PACK_FILE_MAX: u64 = 128 << 10;
/// A pack is closed once its files' content reaches this.
const PACK_BYTES: u64 = 1 << 20;
/// An entry whose metadata record (with its extended attributes) is larger
/// than this is stored alone; a pack's table is kept under
/// [`PACK_TABLE_MAX`] (the format allows 16 MiB).
const PACK_META_MAX: usize = 64 << 10;
const PACK_TABLE_MAX: usize = 4 << 20;

/// A file read whole, waiting in a pack.
struct PackFile {
    meta: cbfs_format::Metadata,
    content: Vec<u8>,
    rel: Vec<u8>,
    stat: Stat,
    hardlink_to: Option<Vec<u8>>,
}

/// The small files of one scope waiting to be written as one member.
#[derive(Default)]
struct Pack {
    files: Vec<PackFile>,
    bytes: u64,
    /// The length of their metadata records.
    table: usize,
}

struct Shared<'a> {
    agent: &'a Agent,
    opts: &'a OutOptions,
    commit_lock: Mutex<u32>,
    segments_done: Mutex<u32>,
    stop: AtomicBool,
    bytes_read: AtomicU64,
    bytes_stored: AtomicU64,
    new_segments: AtomicU64,
    files: AtomicU64,
    problems: Mutex<Vec<Problem>>,
    progress: Progress,
    spool_dir: PathBuf,
}

/// Runs one tiering pass over `opts.source`.
pub fn run(agent: &Agent, opts: &OutOptions) -> Result<OutReport> {
    let started = Instant::now();
    check_scopes(agent, opts)?;
    let mut state = agent.index.state()?;
    match state.plain {
        Some(p) if p != opts.plain => {
            return Err(Error::Usage(format!(
                "this index was made with {}; a store is either encrypted or plain",
                if p { "--plain" } else { "encryption" }
            )));
        }
        _ => {}
    }
    if state.plain.is_none() {
        state.plain = Some(opts.plain);
        let mut b = Batch::default();
        b.put_state(&state);
        agent.index.commit(b)?;
    }
    agent.publish_keyset()?;

    let meta = std::fs::metadata(&opts.source)
        .map_err(|e| Error::io("cannot read source", &opts.source, e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            opts.source.display()
        )));
    }

    let recovering = agent.index.state()?.dirty;
    let spool_dir = agent_spool_dir(agent)?;
    let shared = Shared {
        agent,
        opts,
        commit_lock: Mutex::new(0),
        segments_done: Mutex::new(0),
        stop: AtomicBool::new(false),
        bytes_read: AtomicU64::new(0),
        bytes_stored: AtomicU64::new(0),
        new_segments: AtomicU64::new(0),
        files: AtomicU64::new(0),
        problems: Mutex::new(Vec::new()),
        progress: Progress::new(opts.progress),
        spool_dir,
    };
    if recovering {
        // A run died after committing segments and before its manifest:
        // finish its snapshot first (adopting its manifest if it got out).
        let rec = write_manifest(agent, opts, &shared)?;
        tracing::info!(
            sequence = rec.sequence,
            "finished the snapshot of an interrupted run"
        );
    }

    // Scan, decide what changed, and store it: the changed entries go to
    // the workers as the walk finds them.
    let mut report = OutReport::default();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut first_link: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    let mut walk_error = None;
    // The walk (directory reads and stats) runs on threads of its own, one
    // top directory each, handing entries over in order and in batches,
    // while this one looks each batch up in the index.
    let (batches, received) = mpsc::sync_channel::<Vec<scan::Entry>>(16);
    let source = &opts.source;
    let queue = WorkQueue::default();
    let (problems, stored) = std::thread::scope(|s| {
        // However the scan ends (a panic included), the workers are told.
        let _closing = CloseOnDrop(&shared, &queue);
        let walkers = opts.workers.clamp(1, 4);
        let walker = s.spawn(move || {
            let mut problems = Vec::new();
            scan::walk_parallel(source, walkers, WALK_BATCH, |items| {
                let mut entries = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        scan::Walked::Entry(e) => entries.push(e),
                        scan::Walked::Problem(p) => problems.push(p),
                    }
                }
                if !entries.is_empty() {
                    let _ = batches.send(entries);
                }
            });
            problems
        });
        let mut workers = Vec::new();
        let mut queued_bytes = 0u64;
        for batch in received {
            if walk_error.is_some() || shared.stop.load(Ordering::SeqCst) {
                continue;
            }
            let paths: Vec<&[u8]> = batch.iter().map(|e| e.rel.as_slice()).collect();
            let records = match agent.index.files(&paths) {
                Ok(r) => r,
                Err(e) => {
                    walk_error = Some(e);
                    shared.stop.store(true, Ordering::SeqCst);
                    continue;
                }
            };
            let mut changed = Vec::new();
            for (entry, stored) in batch.into_iter().zip(records) {
                report.scanned += 1;
                let st = entry.stat;
                let hardlink_to = if st.nlink > 1 && st.file_type() != libc::S_IFDIR {
                    match first_link.get(&(st.dev, st.ino)) {
                        Some(first) => Some(first.clone()),
                        None => {
                            first_link.insert((st.dev, st.ino), entry.rel.clone());
                            None
                        }
                    }
                } else {
                    None
                };
                let scope = if st.file_type() == libc::S_IFDIR {
                    opts.rules.scope_of_dir(&entry.rel)
                } else {
                    opts.rules.scope_of(&entry.rel)
                };
                seen.insert(entry.rel.clone());
                match stored {
                    Some(rec)
                        if rec.stat.same_version(&st)
                            && rec.scope == scope.as_str()
                            && rec.hardlink_to == hardlink_to =>
                    {
                        report.unchanged += 1;
                    }
                    _ => changed.push(Work {
                        entry,
                        scope,
                        hardlink_to,
                    }),
                }
            }
            if changed.is_empty() {
                continue;
            }
            let bytes: u64 = changed.iter().map(Work::content_len).sum();
            queued_bytes += bytes;
            shared.progress.add_work(changed.len() as u64, bytes);
            // A worker per 8 MiB of changed content at most: each fills a
            // segment of its own, and a small incremental run is better
            // off with one segment (one summary, one lockbox per scope)
            // than with a few almost empty ones.
            let wanted = usize::try_from(queued_bytes.div_ceil(8 << 20))
                .unwrap_or(usize::MAX)
                .clamp(1, opts.workers.clamp(1, 16));
            while workers.len() < wanted {
                let (shared, queue) = (&shared, &queue);
                workers.push(s.spawn(move || {
                    // A worker that fails or panics stops the run: the
                    // scan must not wait on a queue nobody empties.
                    let closing = CloseOnDrop(shared, queue);
                    let result = worker(shared, queue);
                    if result.is_err() {
                        shared.stop.store(true, Ordering::SeqCst);
                    } else {
                        std::mem::forget(closing);
                    }
                    result
                }));
            }
            // Handed over in small batches, so that the workers share a
            // walk batch of large files between them.
            let mut part = Vec::new();
            let mut part_bytes = 0;
            for w in changed {
                part_bytes += w.content_len();
                part.push(w);
                if part.len() >= QUEUE_BATCH_FILES || part_bytes >= QUEUE_BATCH_BYTES {
                    queue.push(std::mem::take(&mut part));
                    part_bytes = 0;
                }
            }
            if !part.is_empty() {
                queue.push(part);
            }
        }
        queue.close();
        let problems = walker.join().expect("the walk panicked");
        let mut stored = Ok(());
        for w in workers {
            let r = w.join().expect("worker thread panicked");
            if stored.is_ok() {
                stored = r;
            }
        }
        (problems, stored)
    });
    if let Some(e) = walk_error {
        return Err(e);
    }
    stored?;
    shared
        .problems
        .lock()
        .expect("problems lock")
        .extend(problems);
    shared.progress.finish();

    // Forget what is gone from the tree.
    let mut gone = Vec::new();
    agent.index.for_each_path(|path| {
        if !seen.contains(path) {
            gone.push(path.to_vec());
        }
        Ok(())
    })?;
    let mut deleted = Vec::with_capacity(gone.len());
    for path in gone {
        if let Some(rec) = agent.index.file(&path)? {
            deleted.push((path, rec));
        }
    }
    let mut state = agent.index.state()?;
    if !deleted.is_empty() {
        let _guard = shared.commit_lock.lock().expect("commit lock");
        let mut batch = Batch::default();
        let mut seg_updates: HashMap<SegmentId, SegmentRecord> = HashMap::new();
        for (path, rec) in &deleted {
            batch.delete_file(path);
            release(agent, &mut seg_updates, rec)?;
        }
        for (id, rec) in &seg_updates {
            batch.put_segment(id, rec);
        }
        state.dirty = true;
        batch.put_state(&state);
        agent.index.commit(batch)?;
        report.deleted = deleted.len() as u64;
    }

    // A snapshot for whatever changed, in this run or in a run that died
    // before its manifest.
    let state = agent.index.state()?;
    if state.dirty {
        let rec = write_manifest(agent, opts, &shared)?;
        report.snapshot = Some(rec.id.to_string());
        report.sequence = Some(rec.sequence);
    }

    agent.index.flush_if_large()?;
    report.files = shared.files.load(Ordering::Relaxed);
    report.bytes_read = shared.bytes_read.load(Ordering::Relaxed);
    report.bytes_stored = shared.bytes_stored.load(Ordering::Relaxed);
    report.new_segments = shared.new_segments.load(Ordering::Relaxed);
    report.skipped = shared.problems.into_inner().expect("problems lock");
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn agent_spool_dir(agent: &Agent) -> Result<PathBuf> {
    let dir = agent.index_dir().join("spool");
    // Spools of a run that died are garbage now.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io("cannot create spool directory", &dir, e))?;
    Ok(dir)
}

fn check_scopes(agent: &Agent, opts: &OutOptions) -> Result<()> {
    if opts.plain {
        return Ok(());
    }
    let Some(ks) = &agent.keyset else {
        return Err(Error::Usage(
            "encrypted tiering needs the public keyset: give --keyset KEYSET.json".into(),
        ));
    };
    for label in opts.rules.scopes() {
        if ks.scope(label).is_none() {
            return Err(Error::Usage(format!(
                "scope `{label}` is not in the keyset of `{}`; add it with cbfs-keytool add-scope",
                ks.fs()
            )));
        }
    }
    Ok(())
}

/// Lowers the liveness of the segment holding an old version.
fn release(
    agent: &Agent,
    updates: &mut HashMap<SegmentId, SegmentRecord>,
    old: &FileRecord,
) -> Result<()> {
    let rec = match updates.get_mut(&old.segment) {
        Some(r) => r,
        None => {
            let r = agent.index.segment(&old.segment)?.unwrap_or_default();
            updates.entry(old.segment).or_insert(r)
        }
    };
    rec.live_members = rec.live_members.saturating_sub(1);
    rec.live_bytes = rec.live_bytes.saturating_sub(old.stored);
    Ok(())
}

/// Batches of entries to store, between the scan and the workers. The
/// scan waits while it is full; a worker takes a whole batch at a time
/// (one wake-up per batch, not per file).
#[derive(Default)]
struct WorkQueue {
    state: Mutex<QueueState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct QueueState {
    batches: std::collections::VecDeque<Vec<Work>>,
    closed: bool,
}

/// Closes the queue when dropped (also while unwinding from a panic), and
/// then stops the run if a panic is the reason.
struct CloseOnDrop<'a>(&'a Shared<'a>, &'a WorkQueue);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.stop.store(true, Ordering::SeqCst);
        }
        self.1.close();
    }
}

/// Batches waiting for the workers, at most.
const QUEUED_BATCHES: usize = 64;
/// A batch holds at most this many entries, or this much content (one
/// file may exceed it).
const QUEUE_BATCH_FILES: usize = 64;
const QUEUE_BATCH_BYTES: u64 = 4 << 20;

impl WorkQueue {
    /// Adds a batch; waits while the queue is full (unless it was closed).
    fn push(&self, batch: Vec<Work>) {
        let mut st = self.state.lock().expect("work queue");
        while st.batches.len() >= QUEUED_BATCHES && !st.closed {
            st = self.changed.wait(st).expect("work queue");
        }
        if !st.closed {
            st.batches.push_back(batch);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// No more batches: the workers finish what is queued and stop.
    fn close(&self) {
        self.state.lock().expect("work queue").closed = true;
        self.changed.notify_all();
    }

    /// The next batch, waiting for one; `None` once closed and empty.
    fn take(&self) -> Option<Vec<Work>> {
        let mut st = self.state.lock().expect("work queue");
        loop {
            if let Some(batch) = st.batches.pop_front() {
                drop(st);
                self.changed.notify_all();
                return Some(batch);
            }
            if st.closed {
                return None;
            }
            st = self.changed.wait(st).expect("work queue");
        }
    }
}

/// A segment being filled by one worker.
struct OpenSegment {
    id: SegmentId,
    path: PathBuf,
    writer: SegmentWriter<File>,
    groups: HashMap<ScopeLabel, GroupKey>,
    lockboxes: Vec<Lockbox>,
    stored: Vec<Stored>,
    /// Per scope, the pack being filled.
    packs: HashMap<ScopeLabel, Pack>,
}

fn worker(shared: &Shared<'_>, queue: &WorkQueue) -> Result<()> {
    let mut names = Names::default();
    let mut seg: Option<OpenSegment> = None;
    while let Some(batch) = queue.take() {
        for work in batch {
            if shared.stop.load(Ordering::SeqCst) {
                // Another worker failed: the run ends; this spool is
                // garbage the next run clears.
                return Ok(());
            }
            if seg.is_none() {
                seg = Some(open_segment(shared)?);
            }
            let open = seg.as_mut().expect("just opened");
            store_one(shared, open, &mut names, work)?;
            let packed: u64 = open.packs.values().map(|p| p.bytes).sum();
            if open.writer.len() + packed >= shared.opts.segment_size {
                close_segment(shared, seg.take().expect("open"))?;
            }
        }
    }
    if let Some(open) = seg {
        close_segment(shared, open)?;
    }
    Ok(())
}

fn open_segment(shared: &Shared<'_>) -> Result<OpenSegment> {
    let id = SegmentId::random();
    let path = shared.spool_dir.join(format!("{id}.tar"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| Error::io("cannot create segment spool", &path, e))?;
    let mode = if shared.opts.plain {
        SegmentMode::Plain
    } else {
        SegmentMode::Encrypted
    };
    let writer = SegmentWriter::new(file, id, mode)?.with_zstd_level(shared.opts.zstd_level);
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

fn skip(shared: &Shared<'_>, entry: &Entry, reason: String) {
    let path = entry.abs.display().to_string();
    tracing::warn!(%path, %reason, "skipped; the next run tries again");
    shared
        .problems
        .lock()
        .expect("problems lock")
        .push(Problem { path, reason });
}

fn store_one(
    shared: &Shared<'_>,
    seg: &mut OpenSegment,
    names: &mut Names,
    work: Work,
) -> Result<()> {
    let Work {
        entry,
        scope,
        hardlink_to,
    } = work;
    let regular = entry.stat.is_file() && hardlink_to.is_none();
    // Open first, then take the stat from the open file, so that what is
    // recorded is what was read.
    let (file, stat) = if regular {
        match File::open(&entry.abs) {
            Ok(f) => match f.metadata() {
                Ok(m) => {
                    let st = Stat::from_metadata(&m);
                    (Some(f), st)
                }
                Err(e) => {
                    skip(shared, &entry, format!("cannot stat: {e}"));
                    return Ok(());
                }
            },
            Err(e) => {
                let why = if e.kind() == std::io::ErrorKind::NotFound {
                    "vanished before it could be read".to_owned()
                } else {
                    format!("cannot open: {e}")
                };
                skip(shared, &entry, why);
                return Ok(());
            }
        }
    } else {
        (None, entry.stat)
    };
    let entry = Entry { stat, ..entry };
    let meta = match scan::metadata_of(&entry, names, hardlink_to.as_deref()) {
        Ok(m) => m,
        Err(e) => {
            skip(shared, &entry, format!("cannot read metadata: {e}"));
            return Ok(());
        }
    };
    let small = !regular || stat.size <= PACK_FILE_MAX;
    if !shared.opts.plain && small {
        let record = meta.record_len().map_or(usize::MAX, |n| n + 4);
        if record <= PACK_META_MAX {
            let meta = (meta, record);
            return add_to_pack(shared, seg, file.as_ref(), entry, meta, scope, hardlink_to);
        }
    }
    // From the thread's CSPRNG (seeded from the OS): ids are public.
    let member = MemberId::random_with_rng(&mut rand::thread_rng());
    let counted = CountingReader {
        inner: file.as_ref(),
        shared,
    };
    let result = if shared.opts.plain {
        seg.writer.append_plain(member, &meta, counted)
    } else {
        let key = group_key(shared, &mut seg.groups, &mut seg.lockboxes, seg.id, &scope)?;
        seg.writer.append_encrypted(member, key, &meta, counted)
    };
    let summary = match result {
        Ok(s) => s,
        Err(cbfs_format::Error::ContentLength { .. }) => {
            skip(shared, &entry, "changed while being read".into());
            return Ok(());
        }
        Err(cbfs_format::Error::Io { source, .. })
            if regular && source.kind() != std::io::ErrorKind::StorageFull =>
        {
            // A read error of the source file; a write error of the spool
            // (disk full) ends the run instead.
            skip(shared, &entry, format!("cannot read: {source}"));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(f) = &file {
        let after = f.metadata().map(|m| Stat::from_metadata(&m));
        if after.map(|a| a != stat).unwrap_or(true) {
            skip(shared, &entry, "changed while being read".into());
            return Ok(());
        }
    }
    shared.files.fetch_add(1, Ordering::Relaxed);
    shared.progress.file_done();
    seg.stored.push(Stored {
        rel: entry.rel,
        stat,
        scope,
        share: summary.data_len,
        summary,
        hardlink_to,
        slot: 0,
    });
    Ok(())
}

/// Reads a small file (or takes an entry without content) into its
/// scope's pack; writes the pack out once it is full. `meta` comes with
/// the length of its record in the pack's table.
fn add_to_pack(
    shared: &Shared<'_>,
    seg: &mut OpenSegment,
    file: Option<&File>,
    entry: Entry,
    (meta, record): (cbfs_format::Metadata, usize),
    scope: ScopeLabel,
    hardlink_to: Option<Vec<u8>>,
) -> Result<()> {
    let stat = entry.stat;
    let mut content = Vec::new();
    if let Some(mut f) = file {
        content.reserve_exact(meta.size as usize + 1);
        let read = std::io::Read::read_to_end(
            &mut std::io::Read::take(&mut f, meta.size + 1),
            &mut content,
        );
        if let Err(e) = read {
            skip(shared, &entry, format!("cannot read: {e}"));
            return Ok(());
        }
        shared
            .bytes_read
            .fetch_add(content.len() as u64, Ordering::Relaxed);
        shared.progress.bytes(content.len() as u64);
        let after = f.metadata().map(|m| Stat::from_metadata(&m));
        if content.len() as u64 != meta.size || after.map(|a| a != stat).unwrap_or(true) {
            skip(shared, &entry, "changed while being read".into());
            return Ok(());
        }
    }
    shared.files.fetch_add(1, Ordering::Relaxed);
    shared.progress.file_done();
    if seg
        .packs
        .get(&scope)
        .is_some_and(|p| p.table + record > PACK_TABLE_MAX)
    {
        flush_pack(shared, seg, &scope)?;
    }
    let pack = seg.packs.entry(scope.clone()).or_default();
    pack.bytes += meta.size;
    pack.table += record;
    pack.files.push(PackFile {
        meta,
        content,
        rel: entry.rel,
        stat,
        hardlink_to,
    });
    if pack.files.len() >= cbfs_format::MAX_PACK_FILES || pack.bytes >= PACK_BYTES {
        flush_pack(shared, seg, &scope)?;
    }
    Ok(())
}

/// Writes the pack of `scope` into the segment as one member.
fn flush_pack(shared: &Shared<'_>, seg: &mut OpenSegment, scope: &ScopeLabel) -> Result<()> {
    let Some(pack) = seg.packs.remove(scope) else {
        return Ok(());
    };
    if pack.files.is_empty() {
        return Ok(());
    }
    let member = MemberId::random_with_rng(&mut rand::thread_rng());
    let key = group_key(shared, &mut seg.groups, &mut seg.lockboxes, seg.id, scope)?;
    let files: Vec<(&cbfs_format::Metadata, &[u8])> = pack
        .files
        .iter()
        .map(|f| (&f.meta, f.content.as_slice()))
        .collect();
    let summary = seg.writer.append_pack(member, key, &files)?;
    let n = pack.files.len() as u64;
    let len = summary.data_len;
    for (i, f) in pack.files.into_iter().enumerate() {
        let i = i as u64;
        seg.stored.push(Stored {
            rel: f.rel,
            stat: f.stat,
            scope: scope.clone(),
            summary: summary.clone(),
            hardlink_to: f.hardlink_to,
            slot: i as u16,
            share: len * (i + 1) / n - len * i / n,
        });
    }
    Ok(())
}

/// The segment's group key for `scope`, sealing a lockbox for it on first use.
fn group_key<'s>(
    shared: &Shared<'_>,
    groups: &'s mut HashMap<ScopeLabel, GroupKey>,
    lockboxes: &mut Vec<Lockbox>,
    segment: SegmentId,
    scope: &ScopeLabel,
) -> Result<&'s GroupKey> {
    if !groups.contains_key(scope) {
        let ks = shared
            .agent
            .keyset
            .as_ref()
            .expect("checked before the run");
        let pk = ks.scope(scope).expect("checked before the run");
        let (lockbox, key) = Lockbox::seal(scope.as_str(), pk, segment)?;
        lockboxes.push(lockbox);
        groups.insert(scope.clone(), key);
    }
    Ok(groups.get(scope).expect("just inserted"))
}

struct CountingReader<'a, 'b> {
    inner: Option<&'a File>,
    shared: &'a Shared<'b>,
}

impl std::io::Read for CountingReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(mut f) = self.inner else {
            return Ok(0);
        };
        let n = std::io::Read::read(&mut f, buf)?;
        self.shared
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        self.shared.progress.bytes(n as u64);
        Ok(n)
    }
}

fn close_segment(shared: &Shared<'_>, mut seg: OpenSegment) -> Result<()> {
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
    let (mut file, summary) = writer.finish()?;
    if stored.is_empty() {
        drop(file);
        let _ = std::fs::remove_file(&path);
        return Ok(());
    }
    // A failed member may have left bytes past the end; cut them.
    file.set_len(summary.segment_len())
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io("cannot finish segment spool", &path, e))?;
    drop(file);
    let n = {
        let mut done = shared.segments_done.lock().expect("segment counter");
        *done += 1;
        *done
    };
    let agent = shared.agent;
    let handle = agent.handle();
    let mut stored_bytes = summary.segment_len();
    handle.block_on(agent.store.put_file_new(&layout::segment(&id), &path))?;
    crash_if(shared.opts, CrashPoint::AfterSegment(n));
    for lb in &lockboxes {
        let bytes = lb.to_bytes();
        stored_bytes += bytes.len() as u64;
        handle.block_on(
            agent
                .store
                .put_new(&layout::lockbox(&id, &lb.group_id()), bytes),
        )?;
    }
    crash_if(shared.opts, CrashPoint::AfterLockboxes(n));
    let summary_bytes = summary.to_bytes();
    stored_bytes += summary_bytes.len() as u64;
    handle.block_on(agent.store.put_new(&layout::summary(&id), summary_bytes))?;
    crash_if(shared.opts, CrashPoint::AfterSummary(n));

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
                live_members: stored.len() as u64,
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
    crash_if(shared.opts, CrashPoint::AfterCommit(n));
    let _ = std::fs::remove_file(&path);
    shared
        .bytes_stored
        .fetch_add(stored_bytes, Ordering::Relaxed);
    shared.new_segments.fetch_add(1, Ordering::Relaxed);
    tracing::info!(segment = %id, members = stored.len(), bytes = summary.segment_len(), "segment stored");
    Ok(())
}

fn write_manifest(agent: &Agent, opts: &OutOptions, shared: &Shared<'_>) -> Result<SnapshotRecord> {
    let mut state = agent.index.state()?;
    // One entry per member, with the slots of its files still in the tree.
    let mut members: HashMap<(SegmentId, MemberId), ManifestEntry> = HashMap::new();
    agent.index.for_each_file(|_, rec| {
        members
            .entry((rec.segment, rec.member))
            .or_insert(ManifestEntry {
                slots: cbfs_format::Slots::empty(),
                ..ManifestEntry::single(rec.segment, rec.member, rec.sha256)
            })
            .slots
            .insert(usize::from(rec.slot));
        Ok(())
    })?;
    let mut entries: Vec<ManifestEntry> = members.into_values().collect();
    entries.sort();
    let mut sequence = state
        .last_snapshot
        .as_ref()
        .map(|s| s.sequence + 1)
        .unwrap_or(1);
    let previous = state.last_snapshot.as_ref().map(|s| s.manifest_hash);
    let root = cbfs_format::merkle_root(&entries);

    // A run that died after uploading its manifest and before recording it
    // left that manifest behind: adopt it if it is this very state, else
    // number past it. The newest manifest recorded is the base of a delta.
    let mut adopted = None;
    let mut base = None;
    let since = state.last_snapshot.as_ref().map_or(0, |s| s.sequence);
    for (key, m) in crate::list::load_manifests_since(agent, since)? {
        if Some(m.hash()) == previous {
            base = Some(m);
        } else if m.sequence() >= sequence {
            if m.sequence() == sequence
                && m.merkle_root() == &root
                && m.previous_hash() == previous
                && m.writer_key() == &agent.writer_key()
            {
                adopted = Some((key, m));
            } else {
                sequence = sequence.max(m.sequence() + 1);
            }
        }
    }
    let (key, manifest) = match adopted {
        Some(found) => found,
        None => {
            let id = SnapshotId::random();
            let created = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut builder = ManifestBuilder::new(id, sequence, previous, created);
            builder.extend(entries.iter().copied());
            let manifest = match &base {
                Some(b) if b.sequence() + 1 == sequence => builder.sign_delta(agent.writer(), b)?,
                _ => builder.sign(agent.writer())?,
            };
            let bytes = manifest.to_bytes();
            let key = layout::manifest(sequence, &id);
            agent.block_on(agent.store.put_new(&key, bytes.clone()))?;
            shared
                .bytes_stored
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            crash_if(opts, CrashPoint::AfterManifest);
            (key, manifest)
        }
    };
    let id = manifest.snapshot_id();
    let created = manifest.created_unix();
    let rec = SnapshotRecord {
        id,
        sequence,
        manifest_key: key,
        manifest_hash: manifest.hash(),
        created,
        entries: entries.iter().map(|e| e.slots.len() as u64).sum(),
    };
    state.dirty = false;
    state.last_snapshot = Some(rec.clone());
    let mut batch = Batch::default();
    batch.put_snapshot(&rec);
    batch.put_state(&state);
    agent.index.commit(batch)?;
    Ok(rec)
}
