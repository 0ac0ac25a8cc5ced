//! Pass 2: check every path and link, then write the entries in path order
//! (hard links last), each read again, authenticated and hash-checked
//! before it is committed to the sink.
//!
//! Members up to [`AHEAD_MEMBER_MAX`] are decoded ahead, whole, on worker
//! threads (at most [`AHEAD_BYTES`] of content waiting), while the calling
//! thread writes them to the sink in order; larger members stream through
//! the calling thread as they are decoded.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, mpsc};

use cbfs_format::{EntryKind, Keyring, Metadata};

use crate::engine::{Engine, Location, MemberError, Planned, Visit, read_member};
use crate::error::{Error, Result, lossy};
use crate::paths::{ancestors, check_member_path, check_symlink_target, sort_key};
use crate::report::Report;
use crate::sink::Sink;
use crate::source::{ObjectSource, ReadSeek};

/// A few open segments, most recently used last.
struct Readers<'s> {
    source: &'s dyn ObjectSource,
    open: Vec<(String, Box<dyn ReadSeek + 's>)>,
    /// Decrypt members larger than [`AHEAD_MEMBER_MAX`] on a second thread.
    pipe_large: bool,
}

impl<'s> Readers<'s> {
    const MAX_OPEN: usize = 8;

    fn get(&mut self, key: &str) -> Result<&mut (dyn ReadSeek + 's)> {
        if let Some(i) = self.open.iter().position(|(k, _)| k == key) {
            let entry = self.open.remove(i);
            self.open.push(entry);
        } else {
            let reader = self.source.open(key)?;
            if self.open.len() >= Self::MAX_OPEN {
                self.open.remove(0);
            }
            self.open.push((key.to_owned(), reader));
        }
        Ok(&mut *self.open.last_mut().expect("just pushed").1)
    }
}

/// Streams one file (of a member, or of a pack) into the sink as it is read.
struct Emit<'a> {
    sink: &'a mut dyn Sink,
    planned: &'a Planned,
    /// The path to write it under (a hard link restored as a copy differs).
    out_path: &'a [u8],
    /// Hold the entry back (hard links are checked after reading).
    defer: bool,
    began: bool,
    out_meta: Option<Metadata>,
}

impl Visit for Emit<'_> {
    fn meta(&mut self, slot: usize, meta: &Metadata) -> Result<()> {
        if slot != self.planned.slot {
            return Ok(());
        }
        if meta.path != self.planned.path
            || meta.kind != self.planned.kind
            || meta.size != self.planned.size
        {
            return Err(Error::Unsupported {
                path: lossy(&self.planned.path),
                reason: format!(
                    "the member now holds {:?}, not what the first pass read: the store changed during the restore",
                    lossy(&meta.path)
                ),
            });
        }
        let mut out = meta.clone();
        out.path = self.out_path.to_vec();
        if out.kind == EntryKind::File && !self.defer {
            self.sink.begin_file(&out)?;
            self.began = true;
        }
        self.out_meta = Some(out);
        Ok(())
    }

    fn data(&mut self, slot: usize, data: &[u8]) -> Result<()> {
        if self.began && slot == self.planned.slot {
            self.sink.write_content(data)?;
        }
        Ok(())
    }
}

impl Engine<'_> {
    /// Drops, each with a failure, the members whose path or link would
    /// escape the target or clash with another member. Sorts what is left.
    ///
    /// A link target is judged from the name being created: a hard link to
    /// a symbolic link is that symbolic link again under another name, so
    /// its target is judged from the hard link's own directory too. With
    /// `carry` (a tar output), a link that leaves the tree is kept as it
    /// was and reported; a directory output refuses it.
    pub(crate) fn vet(&mut self, carry: bool) {
        let mut planned = std::mem::take(&mut self.planned);
        planned.sort_by(|a, b| {
            sort_key(&a.path)
                .cmp(&sort_key(&b.path))
                .then(a.loc.member.cmp(&b.loc.member))
        });
        let symlink_targets: HashMap<Vec<u8>, Vec<u8>> = planned
            .iter()
            .filter_map(|p| match &p.kind {
                EntryKind::Symlink { target } => Some((p.path.clone(), target.clone())),
                _ => None,
            })
            .collect();
        let symlinks: HashSet<Vec<u8>> = symlink_targets.keys().cloned().collect();
        let non_dirs: HashSet<Vec<u8>> = planned
            .iter()
            .filter(|p| p.kind != EntryKind::Dir)
            .map(|p| p.path.clone())
            .collect();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for p in planned {
            let mut leaves = None;
            let refused = if let Err(r) = check_member_path(&p.path) {
                Some(Error::unsafe_path("path", &p.path, r))
            } else if seen.contains(&p.path) {
                Some(Error::unsafe_path(
                    "path",
                    &p.path,
                    "another member of the snapshot has the same path",
                ))
            } else if let Some(parent) = ancestors(&p.path).find(|a| non_dirs.contains(*a)) {
                Some(Error::unsafe_path(
                    "path",
                    &p.path,
                    format!(
                        "its parent {:?} is not a directory in this snapshot (a symbolic link?)",
                        lossy(parent)
                    ),
                ))
            } else {
                match &p.kind {
                    EntryKind::Symlink { target } => {
                        match judge_link(&p.path, target, &symlinks, carry) {
                            Judged::Inside => None,
                            Judged::Leaves(r) => {
                                leaves = Some(format!(
                                    "its target {:?} {}",
                                    lossy(target),
                                    r.trim_start_matches("the target ")
                                ));
                                None
                            }
                            Judged::Refused(r) => {
                                Some(Error::unsafe_path("symbolic link target", target, r))
                            }
                        }
                    }
                    EntryKind::Hardlink { target } => match check_member_path(target) {
                        Err(r) => Some(Error::unsafe_path("hard link target", target, r)),
                        Ok(()) if *target == p.path => Some(Error::unsafe_path(
                            "hard link target",
                            target,
                            "the link points at itself",
                        )),
                        Ok(()) => match symlink_targets.get(target) {
                            None => None,
                            // Another name of a symbolic link: where it
                            // points is seen from this name's directory.
                            Some(to) => match judge_link(&p.path, to, &symlinks, carry) {
                                Judged::Inside => None,
                                // Inside the tree from the symbolic link's own
                                // name, outside from this one: not a link
                                // that left the tree where it was made, but
                                // one disguised to pass a check at its own
                                // depth. No output carries it.
                                Judged::Leaves(r) | Judged::Refused(r)
                                    if check_symlink_target(target, to, &symlinks).is_ok() =>
                                {
                                    Some(Error::unsafe_path(
                                        "hard link target",
                                        target,
                                        format!(
                                            "it is a symbolic link to {:?}, which stays in the \
                                             tree from its own name but, seen from this name, {}",
                                            lossy(to),
                                            r.trim_start_matches("the target ")
                                        ),
                                    ))
                                }
                                Judged::Leaves(r) => {
                                    leaves = Some(format!(
                                        "it is another name of the symbolic link {:?}, whose \
                                         target {:?} {}",
                                        lossy(target),
                                        lossy(to),
                                        r.trim_start_matches("the target ")
                                    ));
                                    None
                                }
                                Judged::Refused(r) => Some(Error::unsafe_path(
                                    "hard link target",
                                    target,
                                    format!(
                                        "it is a symbolic link to {:?}, and seen from this \
                                         name {}",
                                        lossy(to),
                                        r.trim_start_matches("the target ")
                                    ),
                                )),
                            },
                        },
                    },
                    _ => None,
                }
            };
            match refused {
                Some(e) => self.report.fail(p.loc.failure(&e).with_path(&p.path)),
                None => {
                    if let Some(why) = leaves {
                        self.report.links_that_leave += 1;
                        self.report.warnings.push(format!(
                            "{}: a link that leaves the tree, carried as it was ({why}); \
                             a restore into a directory refuses it",
                            lossy(&p.path)
                        ));
                    }
                    seen.insert(p.path.clone());
                    self.planned.push(p);
                }
            }
        }
    }

    /// Reads one member again and writes it; `decoded` is the member
    /// already read whole by a worker. `Ok(None)`: it failed (and the
    /// failure is recorded); `Err`: the output is broken.
    #[allow(clippy::too_many_arguments)]
    fn emit_one(
        report: &mut Report,
        keys: &Keyring,
        readers: &mut Readers<'_>,
        sink: &mut dyn Sink,
        planned: &Planned,
        out_path: &[u8],
        defer: bool,
        decoded: Option<Decoded>,
    ) -> Result<Option<Metadata>> {
        let mut visit = Emit {
            sink,
            planned,
            out_path,
            defer,
            began: false,
            out_meta: None,
        };
        let result = match decoded {
            Some(d) => d.replay(&mut visit).map(|_| ()),
            None => match (
                readers.pipe_large && planned.size > AHEAD_MEMBER_MAX,
                readers.get(&planned.loc.key),
            ) {
                (piped, Ok(reader)) => {
                    read_member(reader, &planned.loc, keys, &mut visit, piped).map(|_| ())
                }
                (_, Err(e)) => {
                    report.fail(planned.loc.failure(&e));
                    return Ok(None);
                }
            },
        };
        let (began, out_meta) = (visit.began, visit.out_meta.take());
        // The member authenticated, but without the file planned: it
        // changed in the store since pass 1.
        let result = match (result, &out_meta) {
            (Ok(()), None) => Err(MemberError::member(Error::Unsupported {
                path: String::new(),
                reason: format!(
                    "member {} no longer holds file {} that the first pass read: \
                     the store changed during the restore",
                    planned.loc.member_text().unwrap_or_default(),
                    planned.slot
                ),
            })),
            (other, _) => other,
        };
        let outcome = match result {
            Ok(_) if defer => return Ok(out_meta),
            Ok(_) => {
                let meta = out_meta.expect("metadata was visited");
                let written = if began {
                    sink.commit_file()
                } else {
                    sink.add_entry(&meta)
                };
                written.map(|()| meta)
            }
            Err(me) => {
                if began {
                    sink.abort_file();
                }
                if me.from_visitor && me.err.is_fatal_output() {
                    return Err(me.into_error());
                }
                // The path planned with is the member's unauthenticated
                // claim: a failure names it only once it authenticated.
                let known = me.from_visitor || out_meta.is_some();
                let failure = me.into_failure(&planned.loc);
                report.fail(if known {
                    failure.with_path(out_path)
                } else {
                    failure
                });
                return Ok(None);
            }
        };
        match outcome {
            Ok(meta) => {
                report.restored_entries += 1;
                report.restored_bytes += meta.size;
                Ok(Some(meta))
            }
            Err(e) if e.is_fatal_output() => Err(e),
            Err(e) => {
                if began {
                    sink.abort_file();
                }
                report.fail(planned.loc.failure(&e).with_path(out_path));
                Ok(None)
            }
        }
    }

    /// Pass 2: writes every planned entry, hard links last.
    pub(crate) fn emit(&mut self, sink: &mut dyn Sink) -> Result<()> {
        let planned = std::mem::take(&mut self.planned);
        let (links, others): (Vec<Planned>, Vec<Planned>) = planned
            .into_iter()
            .partition(|p| matches!(p.kind, EntryKind::Hardlink { .. }));
        let keys = std::mem::take(&mut self.keys);
        let source = self.source;
        let workers = if self.threads > 1 && others.len() > 1 {
            self.threads
        } else {
            0
        };
        let (job_tx, job_rx) = mpsc::channel::<Vec<Job>>();
        let (done_tx, done_rx) = mpsc::channel::<Vec<(usize, Decoded)>>();
        let job_rx = Mutex::new(job_rx);
        let spans = source.reads_by_request();
        let result = std::thread::scope(|scope| {
            for _ in 0..workers {
                let (job_rx, done_tx, keys) = (&job_rx, done_tx.clone(), &keys);
                scope.spawn(move || decode_ahead(source, keys, job_rx, done_tx, spans));
            }
            drop(done_tx);
            let mut ahead = Ahead::new((workers > 0).then_some(job_tx), done_rx, &others);
            ahead.batches = if spans {
                Batches::spans(workers)
            } else {
                Batches::READER
            };
            self.emit_all(sink, &keys, &others, &links, &mut ahead)
        });
        self.keys = keys;
        result
    }

    fn emit_all(
        &mut self,
        sink: &mut dyn Sink,
        keys: &Keyring,
        others: &[Planned],
        links: &[Planned],
        ahead: &mut Ahead,
    ) -> Result<()> {
        let mut readers = Readers {
            source: self.source,
            open: Vec::new(),
            pipe_large: self.threads > 1,
        };
        let mut restored: HashMap<Vec<u8>, bool> = HashMap::new();
        for (i, p) in others.iter().enumerate() {
            ahead.fill(others);
            // A file of a pack not given to a worker (no workers, or the
            // window is full) is still read once for the pack's files.
            ahead.decode_here(i, others, &mut readers, keys);
            let decoded = ahead.take(i, p);
            let report = &mut self.report;
            if let Some(meta) =
                Self::emit_one(report, keys, &mut readers, sink, p, &p.path, false, decoded)?
            {
                restored.insert(meta.path, meta.kind == EntryKind::Dir);
            }
        }
        // The workers stop once the queue is closed and empty.
        ahead.jobs = None;
        for p in links {
            let report = &mut self.report;
            let Some(meta) =
                Self::emit_one(report, keys, &mut readers, sink, p, &p.path, true, None)?
            else {
                continue;
            };
            let EntryKind::Hardlink { target } = &meta.kind else {
                unreachable!("partitioned on the kind, and checked again when read")
            };
            let refuse = |reason: &str| {
                p.loc
                    .failure(&Error::unsafe_path("hard link target", target, reason))
                    .with_path(&p.path)
            };
            match restored.get(target) {
                Some(false) => match sink.add_entry(&meta) {
                    Ok(()) => self.report.restored_entries += 1,
                    Err(e) if e.is_fatal_output() => return Err(e),
                    Err(e) => self.report.fail(p.loc.failure(&e).with_path(&p.path)),
                },
                Some(true) => self.report.fail(refuse("it is a directory")),
                None => match self.excluded.get(target).cloned() {
                    Some(t) => {
                        let report = &mut self.report;
                        let copied = Self::emit_one(
                            report,
                            keys,
                            &mut readers,
                            sink,
                            &t,
                            &p.path,
                            false,
                            None,
                        )?;
                        if copied.is_some() {
                            self.report.warnings.push(format!(
                                "{}: restored as a copy of {}, which the path filter left out",
                                lossy(&p.path),
                                lossy(target)
                            ));
                        }
                    }
                    None => self.report.fail(refuse(
                        "the target was not restored (missing from the snapshot, failed, or refused)",
                    )),
                },
            }
        }
        Ok(())
    }
}

/// What a link target is, seen from the name being created.
enum Judged {
    Inside,
    /// It leaves the tree, and the output carries it (a tar).
    Leaves(String),
    Refused(String),
}

fn judge_link(path: &[u8], target: &[u8], symlinks: &HashSet<Vec<u8>>, carry: bool) -> Judged {
    // No output carries a target that is not a path at all.
    if target.is_empty() || target.contains(&0) {
        return match check_symlink_target(path, target, symlinks) {
            Err(r) => Judged::Refused(r),
            Ok(()) => Judged::Refused("the target is not a path".into()),
        };
    }
    match check_symlink_target(path, target, symlinks) {
        Ok(()) => Judged::Inside,
        Err(r) if carry => Judged::Leaves(r),
        Err(r) => Judged::Refused(r),
    }
}

/// Members up to this content size are decoded ahead by workers.
const AHEAD_MEMBER_MAX: u64 = 4 << 20;
/// Decoded content waiting for the sink, at most (one member may exceed it).
const AHEAD_BYTES: u64 = 64 << 20;
/// Files waiting for the sink, at most.
const AHEAD_MEMBERS: usize = 4096;
/// What closes a batch of members handed to a worker (one wake-up each
/// way per batch, not per file): its files, its content, and the bytes
/// its members take in the store.
#[derive(Clone, Copy, Debug)]
struct Batches {
    files: usize,
    bytes: u64,
    stored: u64,
}

impl Batches {
    /// Read through a reader of the segment: small batches.
    const READER: Batches = Batches {
        files: 32,
        bytes: 1 << 20,
        stored: u64::MAX,
    };
    /// Fetched as laid out in the store, a request or a few per batch
    /// ([`ObjectSource::reads_by_request`]): batches of a few MiB stored,
    /// so that requests stay few, and small enough that the window holds
    /// two for each of up to 8 `workers` (a restore's most by default;
    /// more only share the window).
    fn spans(workers: usize) -> Batches {
        let share = 2 * workers.max(1);
        Batches {
            files: (AHEAD_MEMBERS / share).clamp(Self::READER.files, 1024),
            bytes: (AHEAD_BYTES / share as u64).clamp(Self::READER.bytes, 16 << 20),
            stored: SPAN_MAX / 2,
        }
    }
}

/// The longest span of a segment fetched as one: a member whose bytes the
/// segment's summary makes longer is read through the segment's reader
/// (a summary is not signed: a lying one must not make a worker hold a
/// whole segment), and a span that would grow past it is cut.
const SPAN_MAX: u64 = 8 << 20;

/// Bytes between two members of a batch that are fetched with them rather
/// than asked for apart: more than the padding and headers between two
/// members written one after the other, and little enough that the bytes
/// of members left out (by a path filter) cost a batch at most 4 MiB.
const SPAN_GAP: u64 = 4 << 10;

fn ahead_eligible(p: &Planned) -> bool {
    !matches!(p.kind, EntryKind::Hardlink { .. }) && p.size <= AHEAD_MEMBER_MAX
}

/// One member to decode whole, and which of its files the restore wants:
/// (index in the restore's order, slot in the member, size planned).
pub(crate) struct Job {
    loc: Location,
    wanted: Vec<(usize, usize, u64)>,
}

/// A file a worker read whole: authenticated and hash-checked, or why not.
pub(crate) struct Decoded {
    result: std::result::Result<(Metadata, Vec<u8>), MemberError>,
    /// The authenticated metadata, also when the rest of the member failed.
    meta: Option<Metadata>,
    /// Which file of its member it is.
    slot: usize,
}

impl Decoded {
    /// Gives the file to `visit` as if it were being read now: the
    /// metadata if it authenticated, then the content or the failure.
    fn replay(self, visit: &mut dyn Visit) -> std::result::Result<Metadata, MemberError> {
        let slot = self.slot;
        let (meta, content) = match self.result {
            Ok(done) => done,
            Err(e) => {
                if let Some(meta) = &self.meta {
                    visit.meta(slot, meta).map_err(MemberError::visitor)?;
                }
                return Err(e);
            }
        };
        visit.meta(slot, &meta).map_err(MemberError::visitor)?;
        if !content.is_empty() {
            visit.data(slot, &content).map_err(MemberError::visitor)?;
        }
        Ok(meta)
    }
}

/// Collects the wanted files of a member, each up to the size pass 1 read.
struct Collect {
    /// Slot → the size planned.
    wanted: HashMap<usize, u64>,
    got: HashMap<usize, (Metadata, Vec<u8>)>,
}

impl Visit for Collect {
    fn meta(&mut self, slot: usize, meta: &Metadata) -> Result<()> {
        if let Some(limit) = self.wanted.get(&slot) {
            let content = Vec::with_capacity(meta.size.min(*limit) as usize);
            self.got.insert(slot, (meta.clone(), content));
        }
        Ok(())
    }

    fn data(&mut self, slot: usize, data: &[u8]) -> Result<()> {
        let (Some(limit), Some((meta, content))) =
            (self.wanted.get(&slot), self.got.get_mut(&slot))
        else {
            return Ok(());
        };
        if (content.len() + data.len()) as u64 > *limit {
            return Err(Error::Unsupported {
                path: lossy(&meta.path),
                reason: "the member is larger than the first pass read: \
                         the store changed during the restore"
                    .into(),
            });
        }
        content.extend_from_slice(data);
        Ok(())
    }
}

/// A worker: decodes the members it is given, whole, until the queue closes.
/// With `spans`, the bytes of each batch's members are fetched first, as
/// laid out in the store ([`fetch_spans`]).
fn decode_ahead(
    source: &dyn ObjectSource,
    keys: &Keyring,
    jobs: &Mutex<mpsc::Receiver<Vec<Job>>>,
    done: mpsc::Sender<Vec<(usize, Decoded)>>,
    spans: bool,
) {
    let mut readers = Readers {
        source,
        open: Vec::new(),
        pipe_large: false,
    };
    loop {
        let job = jobs.lock().map(|rx| rx.recv());
        let Ok(Ok(batch)) = job else { return };
        let held = if spans {
            fetch_spans(source, &batch)
        } else {
            HashMap::new()
        };
        let decoded = batch
            .iter()
            .flat_map(|job| decode_job(&mut readers, keys, job, held.get(job.loc.key.as_str())))
            .collect();
        if done.send(decoded).is_err() {
            return;
        }
    }
}

/// The bytes of a batch's members, by segment key and offset: each
/// segment's member extents (header to end of data) in order, those at
/// most [`SPAN_GAP`] apart fetched as one span of at most [`SPAN_MAX`], the
/// spans of a segment in one request where the source can
/// ([`ObjectSource::get_ranges`]). A member longer than [`SPAN_MAX`] is
/// not fetched here, nor is a span that cannot be: their members are read
/// through the segment's reader, which reports a failure as it would have.
/// A store that is down, or a segment that is gone, is asked no further
/// for that segment's spans.
fn fetch_spans<'j>(
    source: &dyn ObjectSource,
    batch: &'j [Job],
) -> HashMap<&'j str, std::collections::BTreeMap<u64, Vec<u8>>> {
    let mut extents: HashMap<&str, Vec<std::ops::Range<u64>>> = HashMap::new();
    for job in batch {
        let (start, end) = (
            job.loc.header_offset,
            job.loc.data_offset.saturating_add(job.loc.data_len),
        );
        if start < end && end - start <= SPAN_MAX {
            extents
                .entry(job.loc.key.as_str())
                .or_default()
                .push(start..end);
        }
    }
    let mut held = HashMap::new();
    for (key, mut ranges) in extents {
        ranges.sort_by_key(|r| r.start);
        let mut spans: Vec<std::ops::Range<u64>> = Vec::new();
        for r in ranges {
            match spans.last_mut() {
                Some(last)
                    if r.start <= last.end.saturating_add(SPAN_GAP)
                        && r.end.max(last.end) - last.start <= SPAN_MAX =>
                {
                    last.end = last.end.max(r.end);
                }
                _ => spans.push(r),
            }
        }
        // A store that is down, or an object that is gone, is met once
        // here: the members are then read through the reader, which
        // reports it as it would have.
        let gave_up = |e: &Error| {
            tracing::debug!(key, "the members of a batch were not read together: {e}");
            e.is_transient() || matches!(e, Error::Missing { .. })
        };
        let mut fetched: Vec<Option<Vec<u8>>> = Vec::with_capacity(spans.len());
        let together = match spans.len() {
            1 => Ok(None),
            _ => source.get_ranges(key, &spans),
        };
        match together {
            Ok(Some(all)) if all.len() == spans.len() => fetched.extend(all.into_iter().map(Some)),
            Err(e) if gave_up(&e) => {}
            _ => {
                for r in &spans {
                    match source.get_range(key, r.clone()) {
                        Ok(bytes) => fetched.push(Some(bytes)),
                        Err(e) if gave_up(&e) => break,
                        Err(_) => fetched.push(None),
                    }
                }
            }
        }
        let bytes: std::collections::BTreeMap<u64, Vec<u8>> = spans
            .iter()
            .zip(fetched)
            .filter_map(|(r, b)| Some((r.start, b?)))
            .collect();
        held.insert(key, bytes);
    }
    held
}

/// Reads one member whole, keeping the files the job wants, from `held`
/// where it holds the member's bytes (else from the segment's reader). The
/// files of a member stand or fall together: one failure is every wanted
/// file's.
fn decode_job(
    readers: &mut Readers<'_>,
    keys: &Keyring,
    job: &Job,
    held: Option<&std::collections::BTreeMap<u64, Vec<u8>>>,
) -> Vec<(usize, Decoded)> {
    let failed = |e: &MemberError, meta: Option<Metadata>, slot| Decoded {
        result: Err(e.clone()),
        meta,
        slot,
    };
    let reader = match readers.get(&job.loc.key) {
        Ok(r) => r,
        Err(err) => {
            let e = MemberError::member(err);
            return job
                .wanted
                .iter()
                .map(|&(i, slot, _)| (i, failed(&e, None, slot)))
                .collect();
        }
    };
    let mut collect = Collect {
        wanted: job
            .wanted
            .iter()
            .map(|&(_, slot, size)| (slot, size))
            .collect(),
        got: HashMap::new(),
    };
    let result = match held {
        Some(held) => {
            let mut from = crate::source::Overlay::new(reader, held);
            read_member(&mut from, &job.loc, keys, &mut collect, false)
        }
        None => read_member(reader, &job.loc, keys, &mut collect, false),
    };
    job.wanted
        .iter()
        .map(|&(i, slot, _)| {
            let got = collect.got.remove(&slot);
            let decoded = match (&result, got) {
                (Ok(_), Some(done)) => Decoded {
                    result: Ok(done),
                    meta: None,
                    slot,
                },
                (Ok(table), None) => failed(
                    &MemberError::member(Error::Unsupported {
                        path: String::new(),
                        reason: format!(
                            "the member now holds {} file(s), not file {slot} as the first pass read: \
                             the store changed during the restore",
                            table.len()
                        ),
                    }),
                    None,
                    slot,
                ),
                (Err(e), got) => {
                    // A visitor's error is of the file it was visiting: the
                    // others fail with it, as the member's failure.
                    let mut e = e.clone();
                    if got.is_none() {
                        e.from_visitor = false;
                    }
                    failed(&e, got.map(|(m, _)| m), slot)
                }
            };
            (i, decoded)
        })
        .collect()
}

/// The files given to the workers (or decoded here) and not yet written.
struct Ahead {
    /// `None`: no workers; packs are decoded on the writing thread.
    jobs: Option<mpsc::Sender<Vec<Job>>>,
    done: mpsc::Receiver<Vec<(usize, Decoded)>>,
    /// The next file to consider giving out.
    next: usize,
    /// Decoded files that came back before their turn.
    waiting: HashMap<usize, Decoded>,
    in_flight: usize,
    in_flight_bytes: u64,
    /// Whether each file was given out (or decoded here).
    given: Vec<bool>,
    /// Each file's member: an index into `members`.
    member_of: Vec<usize>,
    /// Per member, its files in the restore (indices, in order).
    members: Vec<Vec<usize>>,
    /// What closes a batch.
    batches: Batches,
}

impl Ahead {
    fn new(
        jobs: Option<mpsc::Sender<Vec<Job>>>,
        done: mpsc::Receiver<Vec<(usize, Decoded)>>,
        planned: &[Planned],
    ) -> Self {
        let mut by_member: HashMap<(&str, u64), usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut member_of = Vec::with_capacity(planned.len());
        for (i, p) in planned.iter().enumerate() {
            let n = *by_member
                .entry((p.loc.key.as_str(), p.loc.data_offset))
                .or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
            members[n].push(i);
            member_of.push(n);
        }
        Ahead {
            jobs,
            done,
            next: 0,
            waiting: HashMap::new(),
            in_flight: 0,
            in_flight_bytes: 0,
            batches: Batches::READER,
            given: vec![false; planned.len()],
            member_of,
            members,
        }
    }

    /// The job for file `i`'s member: its files in the restore not given
    /// out yet (only `i` itself with `alone`), if they may be decoded
    /// ahead.
    fn job_of(&self, i: usize, planned: &[Planned], alone: bool) -> Option<(Job, u64)> {
        if self.given[i] {
            return None;
        }
        let files: Vec<usize> = if alone {
            vec![i]
        } else {
            self.members[self.member_of[i]]
                .iter()
                .copied()
                .filter(|&j| !self.given[j])
                .collect()
        };
        if files.iter().any(|&j| !ahead_eligible(&planned[j])) {
            return None;
        }
        let bytes: u64 = files.iter().map(|&j| planned[j].size).sum();
        if files.len() > 1 && bytes > AHEAD_MEMBER_MAX {
            return None;
        }
        let wanted = files
            .iter()
            .map(|&j| (j, planned[j].slot, planned[j].size))
            .collect();
        let loc = planned[i].loc.clone();
        Some((Job { loc, wanted }, bytes))
    }

    fn mark_given(&mut self, job: &Job, bytes: u64) {
        for &(j, _, _) in &job.wanted {
            self.given[j] = true;
        }
        self.in_flight += job.wanted.len();
        self.in_flight_bytes += bytes;
    }

    /// Decodes file `i`'s member here if `i` is a file of a pack not given
    /// out (no workers, or the window was full): the pack is read once for
    /// all its files in the restore not given out yet.
    fn decode_here(
        &mut self,
        i: usize,
        planned: &[Planned],
        readers: &mut Readers<'_>,
        keys: &Keyring,
    ) {
        if self.given[i] || self.members[self.member_of[i]].len() < 2 {
            return;
        }
        // While the window is full, only this file is kept.
        let full = self.in_flight >= AHEAD_MEMBERS || self.in_flight_bytes >= AHEAD_BYTES;
        if let Some((job, bytes)) = self.job_of(i, planned, full) {
            self.mark_given(&job, bytes);
            let decoded = decode_job(readers, keys, &job, None);
            self.waiting.extend(decoded);
        }
    }

    /// Gives out members, in batches, while the window has room.
    fn fill(&mut self, planned: &[Planned]) {
        if self.jobs.is_none() {
            return;
        }
        // Wait until a whole batch fits: refilling one member at a time
        // would wake a worker per member.
        if self.in_flight > 0
            && (self.in_flight + self.batches.files > AHEAD_MEMBERS
                || self.in_flight_bytes + self.batches.bytes > AHEAD_BYTES)
        {
            return;
        }
        let mut batch = Vec::new();
        let (mut batch_files, mut batch_bytes, mut batch_stored) = (0, 0, 0u64);
        while self.next < planned.len() {
            let i = self.next;
            if self.given[i] {
                self.next += 1;
                continue;
            }
            let job = self.job_of(i, planned, false);
            if let Some((_, bytes)) = &job
                && (self.in_flight >= AHEAD_MEMBERS
                    || (self.in_flight > 0 && self.in_flight_bytes + bytes > AHEAD_BYTES))
            {
                break;
            }
            self.next += 1;
            if let Some((job, bytes)) = job {
                self.mark_given(&job, bytes);
                batch_files += job.wanted.len();
                batch_bytes += bytes;
                batch_stored += (job.loc.data_offset)
                    .saturating_add(job.loc.data_len)
                    .saturating_sub(job.loc.header_offset);
                batch.push(job);
            }
            if batch_files >= self.batches.files
                || batch_bytes >= self.batches.bytes
                || batch_stored >= self.batches.stored
            {
                if !self.send(std::mem::take(&mut batch)) {
                    return;
                }
                (batch_files, batch_bytes, batch_stored) = (0, 0, 0);
            }
        }
        if !batch.is_empty() {
            self.send(batch);
        }
    }

    fn send(&mut self, batch: Vec<Job>) -> bool {
        let sent = self.jobs.as_ref().is_some_and(|j| j.send(batch).is_ok());
        if !sent {
            self.jobs = None;
        }
        sent
    }

    /// File `i`, decoded, if it was given out; waits for it.
    fn take(&mut self, i: usize, p: &Planned) -> Option<Decoded> {
        if !self.given[i] {
            // The caller reads it; it is never given out later.
            self.given[i] = true;
            return None;
        }
        let decoded = loop {
            if let Some(d) = self.waiting.remove(&i) {
                break d;
            }
            match self.done.recv() {
                Ok(batch) => self.waiting.extend(batch),
                // Workers gone (a panic): read it here.
                Err(_) => return None,
            }
        };
        self.in_flight -= 1;
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(p.size);
        Some(decoded)
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use cbfs_format::{MemberId, SegmentId, SegmentMode};

    fn planned(i: usize, packs: usize) -> Planned {
        let pack = i % packs;
        Planned {
            path: format!("f{i:06}").into_bytes(),
            kind: EntryKind::File,
            size: 0,
            loc: Location {
                key: "seg".into(),
                object: "seg".into(),
                segment: SegmentId::from_bytes([1; 16]),
                member: Some(MemberId::from_bytes([pack as u8 + 1; 16])),
                mode: SegmentMode::Encrypted,
                header_offset: 0,
                data_offset: (pack as u64 + 1) * 1000,
                data_len: 10,
                sha256: None,
                via: None,
            },
            slot: i / packs,
        }
    }

    /// Packs whose files are interleaved in restore order (pack = i % 250,
    /// 200 files each): far more than the window holds. Runs emit_all's
    /// loop with a fake worker that answers every job: no file may be
    /// given out after it was written, and the window must drain.
    #[test]
    fn ahead_accounting_with_interleaved_packs() {
        let packs = 250;
        let n = packs * 200;
        let planned: Vec<Planned> = (0..n).map(|i| planned(i, packs)).collect();
        let (job_tx, job_rx) = mpsc::channel::<Vec<Job>>();
        let (done_tx, done_rx) = mpsc::channel::<Vec<(usize, Decoded)>>();
        let given_late = std::sync::Arc::new(Mutex::new(Vec::<usize>::new()));
        let cursor = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (late, cur) = (given_late.clone(), cursor.clone());
        let worker = std::thread::spawn(move || {
            for batch in job_rx {
                let mut out = Vec::new();
                for job in batch {
                    for &(i, slot, _) in &job.wanted {
                        if i < cur.load(std::sync::atomic::Ordering::SeqCst) {
                            late.lock().unwrap().push(i);
                        }
                        out.push((
                            i,
                            Decoded {
                                result: Err(MemberError::member(Error::Usage("fake".into()))),
                                meta: None,
                                slot,
                            },
                        ));
                    }
                }
                if done_tx.send(out).is_err() {
                    return;
                }
            }
        });
        let mut ahead = Ahead::new(Some(job_tx), done_rx, &planned);
        let mut direct = 0;
        for (i, p) in planned.iter().enumerate() {
            cursor.store(i, std::sync::atomic::Ordering::SeqCst);
            ahead.fill(&planned);
            if ahead.take(i, p).is_none() {
                direct += 1;
            }
        }
        cursor.store(n, std::sync::atomic::Ordering::SeqCst);
        let (in_flight, waiting) = (ahead.in_flight, ahead.waiting.len());
        ahead.jobs = None;
        drop(ahead);
        worker.join().unwrap();
        let late = given_late.lock().unwrap().clone();
        assert!(direct < n, "every file was read on the writing thread");
        assert_eq!(waiting, 0, "decoded files left waiting");
        assert!(
            late.is_empty(),
            "files given to a worker after they were written: {late:?}"
        );
        assert_eq!(in_flight, 0, "in_flight leaked");
    }
}

#[cfg(test)]
mod span_tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// An object of `len` zero bytes, counting what is asked of it; down
    /// (every read unavailable) with `down`.
    struct Counted {
        len: u64,
        down: bool,
        calls: AtomicU64,
        bytes: AtomicU64,
    }

    impl ObjectSource for Counted {
        fn describe(&self) -> String {
            "counted".into()
        }
        fn list(&self, _: &str) -> Result<Vec<String>> {
            Ok(vec![])
        }
        fn get(&self, _: &str) -> Result<Vec<u8>> {
            unreachable!("no whole object is read")
        }
        fn get_range(&self, key: &str, r: std::ops::Range<u64>) -> Result<Vec<u8>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down {
                return Err(Error::Unavailable {
                    store: "counted".into(),
                    key: key.into(),
                    reason: "down".into(),
                });
            }
            let end = r.end.min(self.len);
            let n = end.saturating_sub(r.start);
            self.bytes.fetch_add(n, Ordering::SeqCst);
            Ok(vec![0; n as usize])
        }
        fn size(&self, _: &str) -> Result<u64> {
            Ok(self.len)
        }
    }

    fn job(key: &str, header: u64, data: u64, len: u64) -> Job {
        Job {
            loc: Location {
                key: key.into(),
                object: key.into(),
                segment: cbfs_format::SegmentId::from_bytes([1; 16]),
                member: None,
                mode: cbfs_format::SegmentMode::Encrypted,
                header_offset: header,
                data_offset: data,
                data_len: len,
                sha256: None,
                via: None,
            },
            wanted: Vec::new(),
        }
    }

    /// Members close together are fetched as one span, those apart as
    /// spans of their own, and one the summary makes longer than a span
    /// may be is left to the segment's reader: a lying summary does not
    /// make a worker hold a whole segment.
    #[test]
    fn spans_join_neighbours_and_leave_an_overlong_member_to_the_reader() {
        let source = Counted {
            len: 1 << 30,
            down: false,
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        let batch = vec![
            job("seg", 1024, 1536, 1000),
            job("seg", 3000, 3512, 500),
            job("seg", 1 << 20, (1 << 20) + 512, 100),
            job("seg", 100 << 20, (100 << 20) + 512, SPAN_MAX),
            job("other", 0, 512, 10),
        ];
        let held = fetch_spans(&source, &batch);
        let seg: Vec<(u64, usize)> = held["seg"].iter().map(|(&at, b)| (at, b.len())).collect();
        assert_eq!(seg, vec![(1024, 4012 - 1024), (1 << 20, 612)]);
        let other: Vec<(u64, usize)> = held["other"].iter().map(|(&at, b)| (at, b.len())).collect();
        assert_eq!(other, vec![(0, 522)]);
        assert_eq!(
            source.bytes.load(Ordering::SeqCst),
            (4012 - 1024) + 612 + 522
        );
    }

    /// Two neighbours whose span would grow past [`SPAN_MAX`] are fetched
    /// as two spans; a member of exactly [`SPAN_MAX`] is still fetched.
    #[test]
    fn a_span_is_cut_at_its_most_and_a_member_of_that_length_is_fetched() {
        let source = Counted {
            len: 1 << 30,
            down: false,
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        let half = SPAN_MAX / 2;
        let batch = vec![
            job("seg", 0, 512, half),
            job("seg", half + 512, half + 1024, half),
            job("seg", 64 << 20, (64 << 20) + 512, SPAN_MAX - 512),
        ];
        let held = fetch_spans(&source, &batch);
        let seg: Vec<(u64, u64)> = held["seg"]
            .iter()
            .map(|(&at, b)| (at, b.len() as u64))
            .collect();
        assert_eq!(
            seg,
            vec![
                (0, half + 512),
                (half + 512, half + 512),
                (64 << 20, SPAN_MAX)
            ]
        );
    }

    /// A store that is down is asked once per segment of a batch, not once
    /// per span: its members then go to the reader, which reports it.
    #[test]
    fn a_store_that_is_down_is_asked_once_per_segment() {
        let source = Counted {
            len: 1 << 30,
            down: true,
            calls: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        };
        let batch: Vec<Job> = (0..10u64)
            .map(|i| job("seg", i << 20, (i << 20) + 512, 100))
            .collect();
        let held = fetch_spans(&source, &batch);
        assert!(held.get("seg").is_none_or(|h| h.is_empty()));
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }
}

#[cfg(test)]
mod slot_tests {
    use super::*;
    use cbfs_format::{GroupKey, MemberId, SegmentId, SegmentMode, SegmentWriter};
    use std::io::Cursor;

    struct Mem(Vec<u8>);
    impl ObjectSource for Mem {
        fn describe(&self) -> String {
            "memory".into()
        }
        fn list(&self, _: &str) -> Result<Vec<String>> {
            Ok(vec![])
        }
        fn get(&self, _: &str) -> Result<Vec<u8>> {
            Ok(self.0.clone())
        }
        fn get_range(&self, _: &str, r: std::ops::Range<u64>) -> Result<Vec<u8>> {
            let end = (r.end as usize).min(self.0.len());
            Ok(self.0[(r.start as usize).min(end)..end].to_vec())
        }
        fn size(&self, _: &str) -> Result<u64> {
            Ok(self.0.len() as u64)
        }
        fn open(&self, _: &str) -> Result<Box<dyn ReadSeek + '_>> {
            Ok(Box::new(Cursor::new(self.0.clone())))
        }
    }

    #[derive(Default)]
    struct Rec(Vec<String>);
    impl Sink for Rec {
        fn begin_file(&mut self, m: &Metadata) -> Result<()> {
            self.0.push(format!("begin {}", lossy(&m.path)));
            Ok(())
        }
        fn write_content(&mut self, _: &[u8]) -> Result<()> {
            Ok(())
        }
        fn commit_file(&mut self) -> Result<()> {
            self.0.push("commit".into());
            Ok(())
        }
        fn abort_file(&mut self) {
            self.0.push("abort".into());
        }
        fn add_entry(&mut self, m: &Metadata) -> Result<()> {
            self.0.push(format!("entry {}", lossy(&m.path)));
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    /// A pack that (now) holds 2 files, while pass 1 planned its file 5
    /// (as when a loose segment file was replaced between the passes).
    fn setup(kind: EntryKind) -> (Mem, Keyring, Planned) {
        let key = GroupKey::generate();
        let seg = SegmentId::random();
        let member = MemberId::random();
        let mut w =
            SegmentWriter::new(Cursor::new(Vec::new()), seg, SegmentMode::Encrypted).unwrap();
        let mut a = Metadata::new("a", EntryKind::File);
        a.size = 2;
        let b = Metadata::new("b", EntryKind::Dir);
        let e = w
            .append_pack(member, &key, &[(&a, &b"aa"[..]), (&b, &b""[..])])
            .unwrap();
        let (cur, _) = w.finish().unwrap();
        let mut keys = Keyring::new();
        keys.insert(key);
        let planned = Planned {
            path: b"c".to_vec(),
            kind,
            size: 0,
            loc: Location {
                key: "seg".into(),
                object: "seg".into(),
                segment: seg,
                member: Some(member),
                mode: SegmentMode::Encrypted,
                header_offset: e.header_offset,
                data_offset: e.data_offset,
                data_len: e.data_len,
                sha256: None,
                via: None,
            },
            slot: 5,
        };
        (Mem(cur.into_inner()), keys, planned)
    }

    /// Writes the planned file through `emit_one`: its report, and what
    /// `emit_one` returned.
    fn emit_planned(kind: EntryKind, defer: bool) -> (Report, Result<Option<Metadata>>) {
        let (src, keys, p) = setup(kind);
        let mut readers = Readers {
            source: &src,
            open: Vec::new(),
            pipe_large: false,
        };
        let mut report = Report::default();
        let mut sink = Rec::default();
        let got = Engine::emit_one(
            &mut report,
            &keys,
            &mut readers,
            &mut sink,
            &p,
            b"c",
            defer,
            None,
        );
        (report, got)
    }

    #[test]
    fn a_planned_slot_missing_in_pass_2_is_a_failure_not_a_panic() {
        let (report, got) = emit_planned(EntryKind::File, false);
        assert!(got.unwrap().is_none());
        assert_eq!(report.failures.len(), 1);
        assert!(
            report.failures[0].error.contains("no longer holds file 5"),
            "{}",
            report.failures[0].error
        );
    }

    #[test]
    fn a_hard_link_whose_slot_is_missing_in_pass_2_is_reported() {
        let target = b"a".to_vec();
        let (report, got) = emit_planned(EntryKind::Hardlink { target }, true);
        assert!(got.unwrap().is_none());
        assert_eq!(
            report.failures.len(),
            1,
            "the link vanished without a failure"
        );
    }
}
