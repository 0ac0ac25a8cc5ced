//! One tiering run (`cbfs-tier out`).
//!
//! ```text
//! walk ─▶ per batch: index lookup, what changed, what is gone (diff.rs)
//!      ─▶ workers: zstd ─▶ encrypt ─▶ append to a segment spool (worker.rs)
//!      ─▶ full segment: upload segment, lockboxes, summary ─▶ commit index (segment.rs)
//!      ─▶ end of run: deletions, dangling links ─▶ signed snapshot manifest (manifest.rs)
//! ```
//!
//! Objects are written before the index names them, and the manifest after
//! the index, so a crash at any point loses nothing committed; a rerun
//! finishes the job. What a crash leaves behind is garbage for GC.
//!
//! Memory stays bounded whatever the size of the tree: the walk is in the
//! byte order of the index's keys, so what is gone is found by walking a
//! cursor over the index beside it, not by remembering every path seen.

mod crash;
mod diff;
mod manifest;
mod queue;
mod rekey;
mod repack;
mod segment;
mod stream;
pub(crate) use stream::{LINKED, LINKS_DECLARED};
mod stubs;
mod worker;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use cbfs_core::ScopeLabel;
use cbfs_format::SegmentId;
use serde::Serialize;

use crate::agent::Agent;
use crate::error::{Error, Result};
use crate::index::{Batch, FileRecord, SegmentRecord};
use crate::observe::Observer;
use crate::rules::ScopeRules;
use crate::scan::{Entry, Problem};
use crate::source_tree::SourceTree;

#[cfg(feature = "crash-points")]
pub use crash::CrashPoint;
#[cfg(not(feature = "crash-points"))]
use crash::CrashPoint;
pub(crate) use rekey::run as rekey;
pub use rekey::{RekeyReport, RekeyRequest};

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
    /// Where the tree goes in the file system's namespace: its entries are
    /// stored as `PREFIX/...`, and only entries below the prefix can be
    /// found gone (a push of one subtree). `None`: the tree is the root.
    pub prefix: Option<Vec<u8>>,
    /// How an entry counts as unchanged.
    pub change_test: ChangeTest,
    /// A run over a tree stores again, from the tree, the packed small
    /// files of each segment whose live share of files is below this
    /// percentage, so that the collector (which cannot split a pack) can
    /// free the old packs. 0 never does.
    pub min_live: u8,
    /// Set to stop the run at the next safe point: what was committed
    /// stays, the snapshot is finished by the next run.
    pub cancel: Option<std::sync::Arc<AtomicBool>>,
    /// For a pushed stream that marks its linked files (as `cbfs-tier
    /// push` does): the bytes of small files' content held in memory at
    /// most, between the stream and the workers, instead of on the spool.
    pub push_memory: u64,
    /// For tests of crash safety: stop the process abruptly at this point.
    #[cfg(feature = "crash-points")]
    pub crash_at: Option<CrashPoint>,
}

impl OutOptions {
    /// The defaults for `source`: 64 MiB segments, zstd level 3, encrypted,
    /// a worker per core.
    pub fn new(source: impl Into<PathBuf>, rules: ScopeRules) -> Self {
        OutOptions {
            source: source.into(),
            rules,
            segment_size: 64 << 20,
            zstd_level: 3,
            plain: false,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            prefix: None,
            change_test: ChangeTest::Inode,
            min_live: 50,
            cancel: None,
            push_memory: 64 << 20,
            #[cfg(feature = "crash-points")]
            crash_at: None,
        }
    }

    fn crash_at(&self) -> Option<CrashPoint> {
        #[cfg(feature = "crash-points")]
        return self.crash_at;
        #[cfg(not(feature = "crash-points"))]
        None
    }
}

/// How an entry of the tree counts as unchanged since the index's record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ChangeTest {
    /// Same inode, device, size, times (change time too), mode, owner: a
    /// tree that lives on a file system.
    #[default]
    Inode,
    /// Same type, mode, owner, size and modification time, as a tar header
    /// gives them: a tree extracted anew for each run (a pushed stream).
    Attributes,
}

/// What a run did.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct OutReport {
    /// Entries found in the tree.
    pub scanned: u64,
    /// Entries stored in this run (new or changed).
    pub files: u64,
    /// Entries unchanged since the last run.
    pub unchanged: u64,
    /// Of the entries stored, those stored again unchanged from the tree
    /// because their packs had become sparse (see `--min-live`).
    #[serde(default)]
    pub repacked: u64,
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

/// Where a run's entries come from.
pub(crate) enum Input<'a> {
    /// The tree at [`OutOptions::source`], walked.
    Tree,
    /// A tar stream (a push): checked entry by entry and stored as it
    /// arrives, committed only once the whole stream is in and checked.
    Stream(Box<dyn std::io::Read + Send + 'a>),
    /// A re-key: the files of one scope, read back from the store and
    /// stored again under new keys (see `rekey.rs`).
    Rekey(&'a rekey::Plan),
}

/// One entry to store.
pub(crate) struct Work {
    entry: Entry,
    scope: ScopeLabel,
    hardlink_to: Option<Vec<u8>>,
    /// For an entry of a pushed stream: its metadata and where its content
    /// is in the stream's spool.
    pushed: Option<Pushed>,
    /// For a re-key: a whole member sealed again (its files, of which
    /// `entry` is the first).
    reseal: Option<Box<Reseal>>,
}

/// A member a re-key seals again as it is: its plaintext frame, still
/// compressed (decrypted and authenticated, not yet read through), and the
/// files of it that the index names. Its frame counts against the re-key's
/// [`FrameBudget`] until it is dropped.
pub(crate) struct Reseal {
    /// The old member and the segment it was read from.
    member: cbfs_format::MemberId,
    segment: cbfs_format::SegmentId,
    frame: Vec<u8>,
    files: Vec<ResealedFile>,
    budget: std::sync::Arc<FrameBudget>,
}

impl Reseal {
    pub(crate) fn new(
        member: cbfs_format::MemberId,
        segment: cbfs_format::SegmentId,
        frame: Vec<u8>,
        files: Vec<ResealedFile>,
        budget: std::sync::Arc<FrameBudget>,
    ) -> Self {
        Reseal {
            member,
            segment,
            frame,
            files,
            budget,
        }
    }
}

impl Drop for Reseal {
    fn drop(&mut self) {
        self.budget.give(self.frame.len() as u64);
    }
}

/// A file of a member sealed again: its path, stat and slot, and its
/// index record's old segment (to note).
pub(crate) struct ResealedFile {
    rel: Vec<u8>,
    stat: crate::scan::Stat,
    slot: u16,
    old_segment: cbfs_format::SegmentId,
}

impl ResealedFile {
    pub(crate) fn rel(&self) -> &[u8] {
        &self.rel
    }

    pub(crate) fn slot(&self) -> u16 {
        self.slot
    }

    pub(crate) fn new(
        rel: Vec<u8>,
        stat: crate::scan::Stat,
        slot: u16,
        old_segment: cbfs_format::SegmentId,
    ) -> Self {
        ResealedFile {
            rel,
            stat,
            slot,
            old_segment,
        }
    }
}

/// The memory that frames waiting to be sealed again may hold (the reader
/// waits while it is spent; a frame larger than it still goes alone), and
/// the members found malformed once decrypted (they stay under their old
/// keys, and the re-key reports them).
pub(crate) struct FrameBudget {
    bytes: ByteBudget,
    pub(crate) failures: std::sync::Mutex<Vec<cbfs_restore::Failure>>,
    /// Members sealed again as they were.
    pub(crate) resealed: AtomicU64,
}

impl FrameBudget {
    pub(crate) fn new(limit: u64) -> Self {
        FrameBudget {
            bytes: ByteBudget::new(limit),
            failures: std::sync::Mutex::new(Vec::new()),
            resealed: AtomicU64::new(0),
        }
    }

    /// Takes `n` bytes, waiting while they would exceed the limit (not
    /// once `stop` is set: the run is ending).
    pub(crate) fn take(&self, n: u64, stop: &std::sync::atomic::AtomicBool) {
        self.bytes.take(n, stop);
    }

    fn give(&self, n: u64) {
        self.bytes.give(n);
    }
}

/// Bytes held in memory at once, at most: a taker waits while more would
/// not fit (one larger take still goes alone, when nothing else is held).
pub(crate) struct ByteBudget {
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
    limit: u64,
}

impl ByteBudget {
    pub(crate) fn new(limit: u64) -> Self {
        ByteBudget {
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
            limit,
        }
    }

    /// Takes `n` bytes if they fit now.
    pub(crate) fn try_take(&self, n: u64) -> bool {
        let mut used = self.used.lock().expect("byte budget");
        if *used > 0 && *used + n > self.limit {
            return false;
        }
        *used += n;
        true
    }

    /// Takes `n` bytes, waiting while they would not fit (not once `stop`
    /// is set: the run is ending).
    pub(crate) fn take(&self, n: u64, stop: &std::sync::atomic::AtomicBool) {
        let mut used = self.used.lock().expect("byte budget");
        while *used > 0 && *used + n > self.limit && !stop.load(Ordering::SeqCst) {
            used = self
                .freed
                .wait_timeout(used, std::time::Duration::from_millis(100))
                .expect("byte budget")
                .0;
        }
        *used += n;
    }

    pub(crate) fn give(&self, n: u64) {
        let mut used = self.used.lock().expect("byte budget");
        *used = used.saturating_sub(n);
        drop(used);
        self.freed.notify_all();
    }
}

/// What a pushed stream said of an entry: its metadata as it is stored
/// (path, kind and all), and where its content is.
pub(crate) struct Pushed {
    meta: cbfs_format::Metadata,
    data: stream::Data,
    /// For a re-key: the spool that holds the content (instead of the
    /// stream's), deleted once no entry needs it any more.
    chunk: Option<std::sync::Arc<stream::Spool>>,
}

impl Work {
    /// The content bytes it will read.
    fn content_len(&self) -> u64 {
        if let Some(r) = &self.reseal {
            return r.frame.len() as u64;
        }
        if self.entry.stat.is_file() && self.hardlink_to.is_none() {
            self.entry.stat.size
        } else {
            0
        }
    }
}

/// What the run's threads share.
pub(crate) struct Shared<'a> {
    agent: &'a Agent,
    opts: &'a OutOptions,
    rt: tokio::runtime::Handle,
    /// The tree, for a run over one (`None` for a pushed stream).
    tree: Option<SourceTree>,
    /// The spool a pushed stream is written to as it arrives.
    stream: Option<stream::Spool>,
    /// For a pushed stream: closed segments wait here until the whole
    /// stream is in and checked.
    deferred: Option<segment::Deferred>,
    observer: &'a dyn Observer,
    commit_lock: Mutex<()>,
    segments_done: Mutex<u32>,
    stop: AtomicBool,
    bytes_read: AtomicU64,
    bytes_stored: AtomicU64,
    new_segments: AtomicU64,
    files: AtomicU64,
    problems: Mutex<Vec<Problem>>,
    /// Hard links stored in this run: checked at the end against what their
    /// targets became (a target that was skipped leaves a link to nothing).
    links: Mutex<Vec<Vec<u8>>>,
    spool_dir: PathBuf,
}

impl Shared<'_> {
    /// Runs a store future to completion from a run thread.
    pub(crate) fn wait<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    fn crash_if(&self, point: CrashPoint) {
        crash::crash_if(self.opts.crash_at(), point);
    }

    /// Records an entry the run could not store: the next run tries again.
    pub(crate) fn skip(&self, entry: &Entry, reason: String) {
        let path = entry.abs.display().to_string();
        tracing::warn!(%path, %reason, "skipped; the next run tries again");
        self.problems.lock().expect("problems lock").push(Problem {
            path,
            reason,
            rel: Some(entry.rel.clone()),
        });
    }
}

/// Runs one tiering pass over `input` (the tree at `opts.source`, or a
/// pushed tar stream), from a thread that may block (not from an async
/// task): store calls are driven on `rt`.
pub(crate) fn run(
    agent: &Agent,
    opts: &OutOptions,
    input: Input<'_>,
    rt: tokio::runtime::Handle,
    observer: &dyn Observer,
) -> Result<OutReport> {
    let started = Instant::now();
    check_scopes(agent, opts)?;
    let mut state = agent.index.state()?;
    if let Some(m) = &state.rekey
        && !matches!(input, Input::Rekey(_))
    {
        return Err(Error::Usage(format!(
            "a re-key of scope `{}` is under way on this index (it was interrupted): \
             finish it first with cbfs-tier rekey --scope {} --admin ADMIN_SECRET",
            m.scope, m.scope
        )));
    }
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
    rt.block_on(agent.publish_keyset())?;
    // Relocations and collections, before the index is trusted for anything.
    let gc_seen = crate::gcsync::before_run(agent, &rt)?;

    if let Some(p) = &opts.prefix
        && cbfs_restore::check_member_path(p).is_err()
    {
        return Err(Error::Usage(format!(
            "prefix {:?}: a relative path without `.`, `..` or empty parts",
            String::from_utf8_lossy(p)
        )));
    }
    let tree = match &input {
        Input::Tree => Some(open_tree(opts)?),
        Input::Stream(_) | Input::Rekey(_) => None,
    };

    let spool_dir = agent.new_spool()?;
    let (stream, deferred) = match &input {
        Input::Tree | Input::Rekey(_) => (None, None),
        Input::Stream(_) => (
            Some(stream::Spool::create(&spool_dir, opts.push_memory)?),
            Some(segment::Deferred::default()),
        ),
    };
    let shared = Shared {
        agent,
        opts,
        rt,
        tree,
        stream,
        deferred,
        observer,
        commit_lock: Mutex::new(()),
        segments_done: Mutex::new(0),
        stop: AtomicBool::new(false),
        bytes_read: AtomicU64::new(0),
        bytes_stored: AtomicU64::new(0),
        new_segments: AtomicU64::new(0),
        files: AtomicU64::new(0),
        problems: Mutex::new(Vec::new()),
        links: Mutex::new(Vec::new()),
        spool_dir,
    };
    let result = run_shared(&shared, input, started, gc_seen);
    if shared.stream.is_some() {
        // The push's scratch of names goes with it, whatever the outcome.
        let _ = agent.index.pushed_clear();
    }
    let _ = std::fs::remove_dir_all(&shared.spool_dir);
    result
}

fn open_tree(opts: &OutOptions) -> Result<SourceTree> {
    let meta = std::fs::metadata(&opts.source)
        .map_err(|e| Error::io("cannot read source", &opts.source, e))?;
    if !meta.is_dir() {
        return Err(Error::Usage(format!(
            "{} is not a directory",
            opts.source.display()
        )));
    }
    Ok(SourceTree::open(&opts.source)
        .map_err(|e| Error::io("cannot open source", &opts.source, e))?
        .with_prefix(opts.prefix.as_deref()))
}

fn run_shared(
    shared: &Shared<'_>,
    input: Input<'_>,
    started: Instant,
    gc_seen: crate::gcsync::Seen,
) -> Result<OutReport> {
    let agent = shared.agent;
    let mut report = OutReport::default();
    // A re-key that resumes finishes its own snapshot at its end.
    let own_dirt = matches!(&input, Input::Rekey(plan) if plan.resumed());
    if agent.index.state()?.dirty && !own_dirt {
        // A run died after committing segments and before its manifest:
        // finish its snapshot first (adopting its manifest if it got out).
        let rec = manifest::write_manifest(shared)?;
        tracing::info!(
            sequence = rec.sequence,
            "finished the snapshot of an interrupted run"
        );
        report.snapshot = Some(rec.id.to_string());
        report.sequence = Some(rec.sequence);
    }

    let over_tree = matches!(input, Input::Tree);
    let gone = match input {
        Input::Tree => diff::store_changes(shared, &mut report)?,
        Input::Stream(reader) => stream::store_stream(shared, reader, &mut report)?,
        Input::Rekey(plan) => {
            rekey::store_rekey(shared, plan, &mut report)?;
            Vec::new()
        }
    };
    let deleted = forget(shared, gone)?;
    report.deleted = deleted;
    if over_tree {
        repack::store_sparse_packs(shared, &mut report)?;
    }
    shared.observer.finished();
    worker::store_dangling_links(shared)?;

    // A snapshot for whatever changed, in this run or in a run that died
    // before its manifest.
    if agent.index.state()?.dirty {
        let rec = manifest::write_manifest(shared)?;
        report.snapshot = Some(rec.id.to_string());
        report.sequence = Some(rec.sequence);
    }

    agent.index.flush_if_large()?;
    crate::gcsync::after_run(agent, &shared.rt, gc_seen, report.sequence)?;
    report.files = shared.files.load(Ordering::Relaxed);
    report.bytes_read = shared.bytes_read.load(Ordering::Relaxed);
    report.bytes_stored = shared.bytes_stored.load(Ordering::Relaxed);
    report.new_segments = shared.new_segments.load(Ordering::Relaxed);
    report.skipped = std::mem::take(&mut *shared.problems.lock().expect("problems lock"));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Removes what is gone from the tree from the index, a bounded batch at a
/// time; returns how many entries went.
fn forget(shared: &Shared<'_>, gone: Vec<Vec<u8>>) -> Result<u64> {
    let agent = shared.agent;
    let mut deleted = 0;
    for chunk in gone.chunks(10_000) {
        let paths: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        let records = agent.index.files(&paths)?;
        let _guard = shared.commit_lock.lock().expect("commit lock");
        let mut batch = Batch::default();
        let mut seg_updates: HashMap<SegmentId, SegmentRecord> = HashMap::new();
        for (path, rec) in chunk.iter().zip(records) {
            let Some(rec) = rec else { continue };
            batch.delete_file(path);
            release(agent, &mut seg_updates, &rec)?;
            deleted += 1;
        }
        if batch.is_empty() {
            continue;
        }
        for (id, rec) in &seg_updates {
            batch.put_segment(id, rec);
        }
        let mut state = agent.index.state()?;
        state.dirty = true;
        batch.put_state(&state);
        agent.index.commit(batch)?;
    }
    Ok(deleted)
}

fn check_scopes(agent: &Agent, opts: &OutOptions) -> Result<()> {
    let Some(ks) = &agent.keyset else {
        return Err(Error::Usage(
            "tiering out needs the public keyset (it registers this agent's writer key): give --keyset KEYSET.json".into(),
        ));
    };
    if opts.plain {
        return Ok(());
    }
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
pub(crate) fn release(
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
    rec.live_files = rec.live_files.saturating_sub(1);
    rec.live_bytes = rec.live_bytes.saturating_sub(old.stored);
    Ok(())
}
