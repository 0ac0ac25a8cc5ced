//! Release: drop the local content of archived files, leaving stubs that
//! keep their size, mode, owner, times and inode, by policy (age, size,
//! globs, or free space, least recently used first).
//!
//! Only a file that is still exactly the version the index archived in a
//! committed snapshot is released, after its stored copy was checked (its
//! member's bytes against the signed manifest's SHA-256). Per file:
//!
//! ```text
//! write lease (no other process has the file open) ─▶ claim (see stub.rs)
//!     ─▶ stub record (phase releasing) + fsync ─▶ lease still whole? (else
//!        another process opened it: it wins, the record goes, the file stays)
//!     ─▶ lease dropped ─▶ punch the content out ─▶ modification time back
//!     ─▶ stub record (phase released) + fsync ─▶ claim dropped
//!     ─▶ index: the stub's stat
//! ```
//!
//! The lease is not held while the content goes: a fault-in handler opens
//! the file to answer the release's own punch, and that open would wait
//! for the lease. From the moment the lease is dropped, a process that
//! opens the file finds a stub: a handler makes it wait for the claim to
//! go, then fills the file for it.
//!
//! Files go in groups of up to 256: each step above is taken for every
//! file of the group before the next, and the two fsyncs are one `syncfs`
//! each for the whole group (every record durable before any content
//! goes). A pack's stored copy is checked once for all its files.
//!
//! A crash at any point leaves the whole file, or a stub with a valid
//! record: never content dropped without a record.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use cbfs_format::{MemberId, SegmentId, StubPhase, StubRecord, Timestamp};
use cbfs_restore::{MemberFile, Snapshot, check_stored, open_snapshot};
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::agent::Agent;
use crate::error::{Error, Result, restore_error};
use crate::index::{Batch, FileRecord, HsmRecord};
use crate::scan::Stat;

use super::stub::{self, StubAttr};

/// Where a test may make a release die (builds with `crash-points`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseStep {
    /// After the nth file's stub record is durable, before its content goes.
    Record(u32),
    /// After the nth file's content was punched out, before its times.
    Punch(u32),
    /// After the nth file's record says released, before the index knows.
    Released(u32),
}

impl std::str::FromStr for ReleaseStep {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, n) = s.split_once(':').unwrap_or((s, "1"));
        let n: u32 = n.parse().map_err(|_| format!("bad crash point {s}"))?;
        Ok(match name {
            "record" => ReleaseStep::Record(n),
            "punch" => ReleaseStep::Punch(n),
            "released" => ReleaseStep::Released(n),
            _ => {
                return Err(format!(
                    "unknown crash point {s} (record:N, punch:N, released:N)"
                ));
            }
        })
    }
}

/// What to release.
#[derive(Clone, Debug, Default)]
pub struct ReleaseOptions {
    /// The tree the index's paths are relative to.
    pub tree: PathBuf,
    /// Only files at or below these paths (inside the tree); all if empty.
    pub paths: Vec<PathBuf>,
    /// Only files not modified (or, with `by_atime`, not read) for this long.
    pub older_than: Option<Duration>,
    /// Age and least-recently-used order by access time, not modification.
    pub by_atime: bool,
    /// Only files larger than this.
    pub larger_than: Option<u64>,
    /// Only files whose path (relative to the tree) matches one of these.
    pub include: Vec<String>,
    /// Never files whose path matches one of these.
    pub exclude: Vec<String>,
    /// Release least recently used first until the file system has this
    /// percentage free; nothing if it already has.
    pub until_free: Option<f64>,
    /// Say what would go and why; change nothing.
    pub dry_run: bool,
    /// For tests of crash safety: abort the process at this step.
    pub crash_at: Option<ReleaseStep>,
}

/// A file released (or that would be, in a dry run).
#[derive(Clone, Debug, Serialize)]
pub struct ReleasedFile {
    /// Its path in the tree.
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Disk bytes freed (or that would be).
    pub freed: u64,
    /// Why the policy chose it.
    pub reason: String,
}

/// A file the policy chose that stays resident, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Kept {
    /// Its path in the tree.
    pub path: String,
    /// Why it stays.
    pub reason: String,
}

/// What a release did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReleaseReport {
    /// Archived files the policy looked at.
    pub considered: u64,
    /// Released (or, in a dry run, to be released).
    pub released: Vec<ReleasedFile>,
    /// Chosen but kept, each with its reason (retried next time).
    pub kept: Vec<Kept>,
    /// Chosen, but flagged no-release by the user.
    pub no_release: u64,
    /// Disk bytes freed.
    pub freed: u64,
    /// Disk bytes the released files' stubs still take: on a file system
    /// whose inodes cannot hold a stub record (ext4's 256-byte inodes),
    /// each record takes a block of its own. 0 in a dry run.
    pub stub_bytes: u64,
    /// Percentage of the file system free before and after.
    pub free_before: Option<f64>,
    /// After.
    pub free_after: Option<f64>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// The snapshot the released files are in.
    pub snapshot: Option<u64>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

struct Candidate {
    rel: Vec<u8>,
    rec: FileRecord,
    st: Stat,
    blocks: u64,
    atime: i64,
    reason: String,
}

fn globs(patterns: &[String], what: &str) -> Result<Option<GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| Error::Usage(format!("--{what} {p}: {e}")))?);
    }
    Ok(Some(
        b.build()
            .map_err(|e| Error::Usage(format!("--{what}: {e}")))?,
    ))
}

/// The percentage of the file system holding `path` that is free (to
/// unprivileged users, as `df` shows it).
pub fn free_percent(path: &Path) -> Result<f64> {
    let s = rustix::fs::statvfs(path).map_err(|e| Error::io("cannot statvfs", path, e.into()))?;
    if s.f_blocks == 0 {
        return Ok(100.0);
    }
    Ok(s.f_bavail as f64 * 100.0 / s.f_blocks as f64)
}

fn ago(secs: i64) -> String {
    let d = secs.max(0);
    if d >= 86_400 {
        format!("{} days", d / 86_400)
    } else if d >= 3600 {
        format!("{} hours", d / 3600)
    } else {
        format!("{d} seconds")
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether the policy wants this file, and why.
fn chosen(
    opts: &ReleaseOptions,
    include: &Option<GlobSet>,
    exclude: &Option<GlobSet>,
    rel: &[u8],
    st: &Stat,
    atime: i64,
    now: i64,
) -> Option<String> {
    let text = String::from_utf8_lossy(rel);
    if let Some(x) = exclude
        && x.is_match(text.as_ref())
    {
        return None;
    }
    let mut why = Vec::new();
    if let Some(i) = include {
        if !i.is_match(text.as_ref()) {
            return None;
        }
        why.push("matches --include".to_owned());
    }
    if let Some(age) = opts.older_than {
        let (t, what) = if opts.by_atime {
            (atime, "read")
        } else {
            (st.mtime, "modified")
        };
        if now - t < age.as_secs() as i64 {
            return None;
        }
        why.push(format!("{what} {} ago", ago(now - t)));
    }
    if let Some(min) = opts.larger_than {
        if st.size <= min {
            return None;
        }
        why.push(format!("{} bytes (> {min})", st.size));
    }
    if why.is_empty() {
        why.push("archived".into());
    }
    Some(why.join(", "))
}

fn under(rel: &[u8], prefixes: &[Vec<u8>]) -> bool {
    prefixes.is_empty()
        || prefixes.iter().any(|p| {
            p.is_empty()
                || rel == p.as_slice()
                || (rel.starts_with(p) && rel.get(p.len()) == Some(&b'/'))
        })
}

/// The paths given, relative to the tree.
pub(crate) fn relative_paths(tree: &Path, paths: &[PathBuf]) -> Result<Vec<Vec<u8>>> {
    let root = std::fs::canonicalize(tree).map_err(|e| Error::io("cannot resolve", tree, e))?;
    paths
        .iter()
        .map(|p| {
            let abs = if p.is_absolute() {
                p.clone()
            } else {
                std::env::current_dir()
                    .map_err(|e| Error::io("cannot resolve", p, e))?
                    .join(p)
            };
            // The parent is resolved (it may hold a link to inside the
            // tree); the name itself is kept as it is.
            let parent = abs.parent().unwrap_or(Path::new("/"));
            let parent = std::fs::canonicalize(parent)
                .map_err(|e| Error::io("cannot resolve", parent, e))?;
            let full = match abs.file_name() {
                Some(n) if n != ".." && n != "." => parent.join(n),
                _ => {
                    std::fs::canonicalize(&abs).map_err(|e| Error::io("cannot resolve", &abs, e))?
                }
            };
            let rel = full.strip_prefix(&root).map_err(|_| {
                Error::Usage(format!(
                    "{} is not inside the tree {}",
                    p.display(),
                    root.display()
                ))
            })?;
            Ok(std::os::unix::ffi::OsStrExt::as_bytes(rel.as_os_str()).to_vec())
        })
        .collect()
}

fn crash_if(opts: &ReleaseOptions, step: ReleaseStep) {
    if cfg!(feature = "crash-points") && opts.crash_at == Some(step) {
        eprintln!("cbfs-tier: crashing on purpose at {step:?}");
        std::process::abort();
    }
}

/// Runs a release on the agent (from a thread that may block).
pub(crate) fn run(
    agent: &Agent,
    opts: &ReleaseOptions,
    rt: tokio::runtime::Handle,
) -> Result<ReleaseReport> {
    let started = Instant::now();
    super::absorb(agent)?;
    let state = agent.index.state()?;
    if state.dirty {
        return Err(Error::Usage(
            "a tier-out run stopped before its snapshot: run cbfs-tier out first (only files in a committed snapshot are released)".into(),
        ));
    }
    let Some(last) = state.last_snapshot.clone() else {
        return Err(Error::Usage(
            "nothing is archived yet: run cbfs-tier out first".into(),
        ));
    };
    let source = agent.source(rt);
    let (keyset, trust) = super::agent_trust(agent, &source)?;
    let include = globs(&opts.include, "include")?;
    let exclude = globs(&opts.exclude, "exclude")?;
    let prefixes = relative_paths(&opts.tree, &opts.paths)?;
    let now = unix_now();
    let mut report = ReleaseReport {
        dry_run: opts.dry_run,
        snapshot: Some(last.sequence),
        ..Default::default()
    };
    let mut candidates = Vec::new();
    let mut repairs = Vec::new();
    // The user's no-release flags, and recalls that never journaled their
    // end (see `HsmRecord::recalling`).
    let mut flagged = HashSet::new();
    let mut recalling = HashMap::new();
    agent.index.for_each_hsm(|path, h| {
        if h.no_release {
            flagged.insert(path.to_vec());
        }
        if h.recalling.is_some() {
            recalling.insert(path.to_vec(), h);
        }
        Ok(())
    })?;
    let mut recalled = Batch::default();
    agent.index.for_each_file(|rel, mut rec| {
        if !under(rel, &prefixes)
            || rec.hardlink_to.is_some()
            || !rec.stat.is_file()
            || rec.stat.size == 0
        {
            return Ok(());
        }
        let abs = opts.tree.join(std::ffi::OsStr::from_bytes(rel));
        let Ok(meta) = std::fs::symlink_metadata(&abs) else {
            return Ok(());
        };
        let st = Stat::from_metadata(&meta);
        // A file a killed recall filled is the archived version: the index
        // takes its new stat.
        if !rec.stat.same_version(&st)
            && let Some(h) = recalling.get(rel)
            && super::state::recall_ended(Some(h), &rec, &st)
            && matches!(stub::read_record_at(&abs), Ok(StubAttr::None))
        {
            rec.stat = st;
            recalled.put_file(rel, &rec);
            recalled.put_hsm(
                rel,
                &HsmRecord {
                    recalling: None,
                    ..h.clone()
                },
            );
        }
        // A stub already, or changed since archived: not a candidate. A
        // stub whose release was cut short is finished.
        if !rec.stat.same_version(&st) {
            if let Ok(StubAttr::Stub(s)) = stub::read_at(&abs)
                && super::state::record_matches(&s, &rec, &st)
                && super::state::times_kept(&s, &st)
            {
                repairs.push((rel.to_vec(), rec, st));
            }
            return Ok(());
        }
        // Released already (the index took the stub's stat): nothing to do,
        // unless a recall of it was cut short (a tier-out since took its
        // stat as it was): it is made a stub again, the blocks the fill
        // wrote freed.
        if let Ok(StubAttr::Stub(s)) = stub::read_record_at(&abs) {
            let recalling = s.phase == StubPhase::Recalling
                || (s.phase == StubPhase::Released && stub::marked_at(&abs).unwrap_or(false));
            if recalling && super::state::record_matches(&s, &rec, &st) {
                repairs.push((rel.to_vec(), rec, st));
            }
            return Ok(());
        }
        report.considered += 1;
        if let Some(reason) = chosen(opts, &include, &exclude, rel, &st, meta.atime(), now) {
            candidates.push(Candidate {
                rel: rel.to_vec(),
                rec,
                st,
                blocks: meta.blocks(),
                atime: meta.atime(),
                reason,
            });
        }
        Ok(())
    })?;
    let before = candidates.len();
    candidates.retain(|c| !flagged.contains(&c.rel));
    report.no_release = (before - candidates.len()) as u64;
    let mut target_free = None;
    if let Some(pct) = opts.until_free {
        let free = free_percent(&opts.tree)?;
        report.free_before = Some(free);
        if free >= pct {
            candidates.clear();
        } else {
            // Least recently used first (access time, as Robinhood's
            // watermarks; a tie by modification time).
            candidates.sort_by_key(|c| (c.atime, c.st.mtime));
            for c in &mut candidates {
                c.reason = format!(
                    "least recently used (read {} ago); {}",
                    ago(now - c.atime),
                    c.reason
                );
            }
            let s = rustix::fs::statvfs(&opts.tree)
                .map_err(|e| Error::io("cannot statvfs", &opts.tree, e.into()))?;
            target_free = Some(((pct / 100.0) * (s.f_blocks as f64) * (s.f_frsize as f64)) as u64);
        }
    }
    if !opts.dry_run {
        if !recalled.is_empty() {
            agent.index.commit(recalled)?;
        }
        repair(agent, &opts.tree, repairs)?;
    }
    let snapshot = open_snapshot(&source, &trust, Some(&last.id.to_string())).map_err(|e| {
        restore_error(
            format!("snapshot {} (the index's newest)", last.sequence),
            e,
        )
    })?;
    let tree = crate::source_tree::SourceTree::open(&opts.tree)
        .map_err(|e| Error::io("cannot open the tree", &opts.tree, e))?;
    let fs = keyset.fs().to_string();
    let mut batch = Batch::default();
    let mut pending = 0;
    let mut n = 0u32;
    let mut freed_estimate = 0u64;
    // Members whose stored copy was checked in this run: the files of a
    // pack share one, checked once.
    let mut checked: HashSet<(SegmentId, MemberId)> = HashSet::new();
    let mut group: Vec<Candidate> = Vec::new();
    let size = group_size();
    let done = |group: &mut Vec<Candidate>,
                n: &mut u32,
                report: &mut ReleaseReport,
                batch: &mut Batch,
                pending: &mut usize|
     -> Result<()> {
        let outcomes = release_group(&tree, group, &snapshot, &fs, opts, n);
        let mut flush_failed = None;
        for (c, outcome) in group.drain(..).zip(outcomes) {
            let path = String::from_utf8_lossy(&c.rel).into_owned();
            match outcome {
                Ok(Released {
                    stat,
                    freed,
                    held,
                    at,
                }) => {
                    let rec = FileRecord { stat, ..c.rec };
                    batch.put_file(&c.rel, &rec);
                    *pending += 1;
                    crash_if(opts, ReleaseStep::Released(at));
                    report.freed += freed;
                    report.stub_bytes += held;
                    report.released.push(ReleasedFile {
                        path,
                        size: c.st.size,
                        freed,
                        reason: c.reason,
                    });
                }
                Err(Outcome::Kept(reason)) => report.kept.push(Kept { path, reason }),
                Err(Outcome::Unflushed(e)) => flush_failed = Some(e),
            }
        }
        commit(agent, batch, pending)?;
        match flush_failed {
            // The stubs are whole stubs; their durable records may still
            // say releasing (the next release finishes them). The file
            // system could not write back: stop.
            Some(e) => Err(Error::io(
                "cannot make the released stubs' records durable",
                &opts.tree,
                e,
            )),
            None => Ok(()),
        }
    };
    for c in candidates {
        if let Some(target) = target_free {
            let s = rustix::fs::statvfs(&opts.tree)
                .map_err(|e| Error::io("cannot statvfs", &opts.tree, e.into()))?;
            let mut avail = s.f_bavail * s.f_frsize + freed_estimate;
            if avail >= target && !opts.dry_run && !group.is_empty() {
                // What the waiting group frees may be enough: release it
                // and look again.
                done(&mut group, &mut n, &mut report, &mut batch, &mut pending)?;
                freed_estimate = 0;
                let s = rustix::fs::statvfs(&opts.tree)
                    .map_err(|e| Error::io("cannot statvfs", &opts.tree, e.into()))?;
                avail = s.f_bavail * s.f_frsize;
            }
            if avail >= target {
                break;
            }
        }
        let path = String::from_utf8_lossy(&c.rel).into_owned();
        let would_free = (c.blocks * 512).saturating_sub(4096);
        if opts.dry_run {
            freed_estimate += would_free;
            report.freed += would_free;
            report.released.push(ReleasedFile {
                path,
                size: c.st.size,
                freed: would_free,
                reason: c.reason,
            });
            continue;
        }
        let file = MemberFile {
            segment: c.rec.segment,
            member: c.rec.member,
            slot: c.rec.slot,
            sha256: c.rec.sha256,
        };
        if !checked.contains(&(file.segment, file.member)) {
            if let Err(e) = check_stored(&source, &snapshot, &file) {
                if e.is_transient() {
                    // The store is down: nothing more can be checked.
                    done(&mut group, &mut n, &mut report, &mut batch, &mut pending)?;
                    return Err(restore_error(
                        format!("checking the stored copy of {path}"),
                        e,
                    ));
                }
                tracing::error!(%path, "not released: its stored copy failed verification: {e}");
                report.kept.push(Kept {
                    path,
                    reason: format!("its stored copy failed verification: {e}"),
                });
                continue;
            }
            checked.insert((file.segment, file.member));
        }
        freed_estimate += would_free;
        group.push(c);
        if group.len() >= size {
            done(&mut group, &mut n, &mut report, &mut batch, &mut pending)?;
            freed_estimate = 0;
        }
    }
    done(&mut group, &mut n, &mut report, &mut batch, &mut pending)?;
    if opts.until_free.is_some() {
        report.free_after = Some(free_percent(&opts.tree)?);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

fn commit(agent: &Agent, batch: &mut Batch, pending: &mut usize) -> Result<()> {
    if *pending > 0 {
        agent.index.commit(std::mem::take(batch))?;
        *pending = 0;
    }
    Ok(())
}

/// Files released together: their stub records made durable by one flush
/// before any of their content goes, and their final records by another.
/// Each holds two descriptors and a lease until its turn: fewer when the
/// descriptor limit is low.
const GROUP: usize = 256;

fn group_size() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(1024) as usize;
    (soft.saturating_sub(64) / 4).clamp(1, GROUP)
}

struct Released {
    stat: Stat,
    freed: u64,
    /// Disk bytes the stub takes (its record's block, if any).
    held: u64,
    /// Its number in the run (for the crash points).
    at: u32,
}

/// Why a chosen file stays resident.
struct Keep(String);

impl<E: std::fmt::Display> From<E> for Keep {
    fn from(e: E) -> Self {
        Keep(e.to_string())
    }
}

/// What became of a file of a group that was not released.
enum Outcome {
    /// It stays resident, for this reason.
    Kept(String),
    /// Released, but the flush of its final record failed.
    Unflushed(std::io::Error),
}

impl From<Keep> for Outcome {
    fn from(k: Keep) -> Self {
        Outcome::Kept(k.0)
    }
}

use std::os::unix::ffi::OsStrExt;

/// A file of a group, leased and claimed, its record (phase releasing)
/// written but not yet durable.
struct Prepared<'f> {
    file: &'f std::fs::File,
    leased: stub::Leased<'f>,
    claimed: stub::Claim<'f>,
    record: StubRecord,
}

/// Opens a chosen file for its release: as a path beneath the tree (no
/// symbolic link on the way), then for reading and writing through it
/// (non-blocking: a lease held by another process refuses the open).
fn open_candidate(
    tree: &crate::source_tree::SourceTree,
    c: &Candidate,
) -> std::result::Result<std::fs::File, Keep> {
    let handle = tree.open_path_beneath(&c.rel)?;
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&proc)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Keep("another process holds a lease on it".into())
            } else {
                Keep(format!("cannot open it: {e}"))
            }
        })
}

/// The first step of one file's release: still the archived version, no
/// other process has it open (a write lease), no record yet, claimed; its
/// record (phase releasing) written, not yet durable.
fn prepare<'f>(
    file: &'f std::fs::File,
    c: &Candidate,
    snapshot: &Snapshot,
    fs: &str,
) -> std::result::Result<Prepared<'f>, Keep> {
    let same = |file: &std::fs::File| -> std::result::Result<(), Keep> {
        let st = Stat::from_metadata(&file.metadata()?);
        if !c.rec.stat.same_version(&st) {
            return Err(Keep("changed since it was archived".into()));
        }
        Ok(())
    };
    same(file)?;
    let Some(leased) = stub::lease(file, Duration::from_secs(1))? else {
        return Err(Keep("in use (another process has it open)".into()));
    };
    same(file)?;
    match stub::read_record(file.as_fd())? {
        StubAttr::None => {}
        _ => return Err(Keep("it already carries a stub record".into())),
    }
    let Some(claimed) = stub::claim(file)? else {
        return Err(Keep("another process is releasing or recalling it".into()));
    };
    let record = StubRecord {
        phase: StubPhase::Releasing,
        fs: fs.to_owned(),
        snapshot: snapshot.id(),
        sequence: snapshot.sequence(),
        segment: c.rec.segment,
        member: c.rec.member,
        slot: c.rec.slot,
        size: c.st.size,
        sha256: c.rec.sha256,
        mtime: Timestamp::new(c.st.mtime, c.st.mtime_ns),
        inode: c.st.ino,
        path: c.rel.clone(),
    };
    stub::set(file, &record)?;
    Ok(Prepared {
        file,
        leased,
        claimed,
        record,
    })
}

/// Releases a group of files in the crash-safe order of the module's
/// comment, with one flush for all their records before any content goes
/// and one for their final records: one outcome per file, in order. `n`
/// counts the files of the run.
fn release_group(
    tree: &crate::source_tree::SourceTree,
    group: &[Candidate],
    snapshot: &Snapshot,
    fs: &str,
    opts: &ReleaseOptions,
    n: &mut u32,
) -> Vec<std::result::Result<Released, Outcome>> {
    let mut out: Vec<Option<std::result::Result<Released, Outcome>>> =
        group.iter().map(|_| None).collect();
    let opened: Vec<std::result::Result<std::fs::File, Keep>> =
        group.iter().map(|c| open_candidate(tree, c)).collect();
    let mut prepared: Vec<(usize, u32, Prepared<'_>)> = Vec::new();
    for (i, (c, file)) in group.iter().zip(&opened).enumerate() {
        let file = match file {
            Ok(f) => f,
            Err(Keep(why)) => {
                out[i] = Some(Err(Outcome::Kept(why.clone())));
                continue;
            }
        };
        match prepare(file, c, snapshot, fs) {
            Ok(p) => {
                *n += 1;
                prepared.push((i, *n, p));
            }
            Err(k) => out[i] = Some(Err(k.into())),
        }
    }
    // Every record is durable before any content goes.
    let files: Vec<&std::fs::File> = prepared.iter().map(|(_, _, p)| p.file).collect();
    if let Err(e) = stub::make_durable(&files) {
        for (i, _, p) in prepared.drain(..) {
            let _ = stub::clear(p.file);
            out[i] = Some(Err(Outcome::Kept(format!(
                "cannot make its stub record durable: {e}"
            ))));
        }
    }
    for (_, at, _) in &prepared {
        crash_if(opts, ReleaseStep::Record(*at));
    }
    let mut claims = Vec::new();
    let mut released = Vec::new();
    for (i, at, p) in prepared {
        let Prepared {
            file,
            leased,
            claimed,
            mut record,
        } = p;
        let step = || -> std::result::Result<u64, Keep> {
            if !leased.intact() {
                // Another process asked to open it: it wins, the file stays.
                stub::remove(file)?;
                return Err(Keep(
                    "opened by another process while being released".into(),
                ));
            }
            drop(leased);
            let before = file.metadata()?.blocks();
            stub::punch(file, record.size)?;
            crash_if(opts, ReleaseStep::Punch(at));
            stub::set_mtime(file, record.mtime)?;
            record.phase = StubPhase::Released;
            stub::set(file, &record)?;
            Ok(before)
        };
        match step() {
            Ok(before) => {
                released.push((i, at, file, before));
                claims.push(claimed);
            }
            Err(k) => out[i] = Some(Err(k.into())),
        }
    }
    // The final records, durable before the claims go (a crash before
    // leaves records that say releasing: the next release finishes them).
    let files: Vec<&std::fs::File> = released.iter().map(|(_, _, f, _)| *f).collect();
    let flushed = stub::make_durable(&files);
    drop(claims);
    for (i, at, file, before) in released {
        out[i] = Some(match (&flushed, file.metadata()) {
            (Err(e), _) => Err(Outcome::Unflushed(std::io::Error::new(
                e.kind(),
                e.to_string(),
            ))),
            (Ok(()), Err(e)) => Err(Outcome::Unflushed(e)),
            (Ok(()), Ok(meta)) => Ok(Released {
                stat: Stat::from_metadata(&meta),
                freed: before.saturating_sub(meta.blocks()) * 512,
                held: meta.blocks() * 512,
                at,
            }),
        });
    }
    out.into_iter()
        .map(|o| o.expect("an outcome per file"))
        .collect()
}

use std::os::unix::fs::OpenOptionsExt;

/// Finishes the releases a crash cut short (their stubs say `releasing`;
/// a recall cut short, `recalling`, is dropped back to a stub),
/// and gives the index the stat of stubs whose record lags behind (a
/// release that died before its index commit). Each is punched only as
/// the scan saw it (`Stat`), under a write lease, as a release would.
fn repair(agent: &Agent, tree: &Path, stubs: Vec<(Vec<u8>, FileRecord, Stat)>) -> Result<()> {
    if stubs.is_empty() {
        return Ok(());
    }
    let tree = crate::source_tree::SourceTree::open(tree)
        .map_err(|e| Error::io("cannot open the tree", tree, e))?;
    let mut batch = Batch::default();
    for (rel, rec, seen) in stubs {
        let path = String::from_utf8_lossy(&rel).into_owned();
        let fixed = (|| -> std::result::Result<Stat, Keep> {
            let handle = tree.open_path_beneath(&rel)?;
            let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&handle));
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(&proc)?;
            let Some(claimed) = stub::claim(&file)? else {
                return Err(Keep("another process is releasing or recalling it".into()));
            };
            let StubAttr::Stub(record) = stub::read(file.as_fd())? else {
                return Err(Keep("no longer a stub".into()));
            };
            if record.phase != StubPhase::Released {
                // Nobody else has it open, and it is what the scan saw: a
                // process holding it open, or one that wrote it since,
                // keeps its bytes.
                let Some(leased) = stub::lease(&file, Duration::from_secs(1))? else {
                    return Err(Keep("in use (another process has it open)".into()));
                };
                if !Stat::from_metadata(&file.metadata()?).same_version(&seen) || !leased.intact() {
                    return Err(Keep("changed since the scan".into()));
                }
                stub::punch(&file, record.size)?;
                stub::set_mtime(&file, record.mtime)?;
                let done = StubRecord {
                    phase: StubPhase::Released,
                    ..record
                };
                stub::write(&file, &done)?;
            }
            drop(claimed);
            Ok(Stat::from_metadata(&file.metadata()?))
        })();
        match fixed {
            Ok(stat) => {
                tracing::info!(%path, "finished an interrupted release");
                batch.put_file(&rel, &FileRecord { stat, ..rec });
            }
            Err(Keep(why)) => tracing::warn!(%path, "cannot finish its interrupted release: {why}"),
        }
    }
    if !batch.is_empty() {
        agent.index.commit(batch)?;
    }
    Ok(())
}
