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

use crate::engine::{Engine, MemberError, Planned, Visit, read_member};
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

/// Streams one member into the sink as it is read.
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
    fn meta(&mut self, meta: &Metadata) -> Result<()> {
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

    fn data(&mut self, data: &[u8]) -> Result<()> {
        if self.began {
            self.sink.write_content(data)?;
        }
        Ok(())
    }
}

impl Engine<'_> {
    /// Drops, each with a failure, the members whose path or link would
    /// escape the target or clash with another member. Sorts what is left.
    pub(crate) fn vet(&mut self) {
        let mut planned = std::mem::take(&mut self.planned);
        planned.sort_by(|a, b| {
            sort_key(&a.path)
                .cmp(&sort_key(&b.path))
                .then(a.loc.member.cmp(&b.loc.member))
        });
        let symlinks: HashSet<Vec<u8>> = planned
            .iter()
            .filter(|p| matches!(p.kind, EntryKind::Symlink { .. }))
            .map(|p| p.path.clone())
            .collect();
        let non_dirs: HashSet<Vec<u8>> = planned
            .iter()
            .filter(|p| p.kind != EntryKind::Dir)
            .map(|p| p.path.clone())
            .collect();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for p in planned {
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
                        check_symlink_target(&p.path, target, &symlinks)
                            .err()
                            .map(|r| Error::unsafe_path("symbolic link target", target, r))
                    }
                    EntryKind::Hardlink { target } => match check_member_path(target) {
                        Err(r) => Some(Error::unsafe_path("hard link target", target, r)),
                        Ok(()) if *target == p.path => Some(Error::unsafe_path(
                            "hard link target",
                            target,
                            "the link points at itself",
                        )),
                        Ok(()) => None,
                    },
                    _ => None,
                }
            };
            match refused {
                Some(e) => self.report.fail(p.loc.failure(&e).with_path(&p.path)),
                None => {
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
            Some(d) => d.replay(&mut visit),
            None => match (
                readers.pipe_large && planned.size > AHEAD_MEMBER_MAX,
                readers.get(&planned.loc.key),
            ) {
                (piped, Ok(reader)) => read_member(reader, &planned.loc, keys, &mut visit, piped),
                (_, Err(e)) => {
                    report.fail(planned.loc.failure(&e));
                    return Ok(None);
                }
            },
        };
        let (began, out_meta) = (visit.began, visit.out_meta.take());
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
                    return Err(me.err);
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
        let (job_tx, job_rx) = mpsc::channel::<Vec<(usize, Planned)>>();
        let (done_tx, done_rx) = mpsc::channel::<Vec<(usize, Decoded)>>();
        let job_rx = Mutex::new(job_rx);
        let result = std::thread::scope(|scope| {
            for _ in 0..workers {
                let (job_rx, done_tx, keys) = (&job_rx, done_tx.clone(), &keys);
                scope.spawn(move || decode_ahead(source, keys, job_rx, done_tx));
            }
            drop(done_tx);
            let mut ahead = Ahead {
                jobs: (workers > 0).then_some(job_tx),
                done: done_rx,
                next: 0,
                waiting: HashMap::new(),
                in_flight: 0,
                in_flight_bytes: 0,
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

/// Members up to this content size are decoded ahead by workers.
const AHEAD_MEMBER_MAX: u64 = 4 << 20;
/// Decoded content waiting for the sink, at most (one member may exceed it).
const AHEAD_BYTES: u64 = 64 << 20;
/// Members waiting for the sink, at most.
const AHEAD_MEMBERS: usize = 4096;
/// Members handed to a worker at a time (one wake-up each way per batch,
/// not per member), and the content size that closes a batch early.
const BATCH_MEMBERS: usize = 32;
const BATCH_BYTES: u64 = 1 << 20;

fn ahead_eligible(p: &Planned) -> bool {
    !matches!(p.kind, EntryKind::Hardlink { .. }) && p.size <= AHEAD_MEMBER_MAX
}

/// A member a worker read whole: authenticated and hash-checked, or why not.
pub(crate) struct Decoded {
    result: std::result::Result<(Metadata, Vec<u8>), MemberError>,
    /// The authenticated metadata, also when the rest of the member failed.
    meta: Option<Metadata>,
}

impl Decoded {
    /// Gives the member to `visit` as if it were being read now: the
    /// metadata if it authenticated, then the content or the failure.
    fn replay(self, visit: &mut dyn Visit) -> std::result::Result<Metadata, MemberError> {
        let from_visitor = |err| MemberError {
            err,
            from_visitor: true,
            hash_differs: false,
        };
        let (meta, content) = match self.result {
            Ok(done) => done,
            Err(e) => {
                if let Some(meta) = &self.meta {
                    visit.meta(meta).map_err(from_visitor)?;
                }
                return Err(e);
            }
        };
        visit.meta(&meta).map_err(from_visitor)?;
        if !content.is_empty() {
            visit.data(&content).map_err(from_visitor)?;
        }
        Ok(meta)
    }
}

/// Collects a member's content, up to the size pass 1 read.
struct Collect {
    limit: u64,
    meta: Option<Metadata>,
    content: Vec<u8>,
}

impl Visit for Collect {
    fn meta(&mut self, meta: &Metadata) -> Result<()> {
        self.content
            .reserve_exact(meta.size.min(self.limit) as usize);
        self.meta = Some(meta.clone());
        Ok(())
    }

    fn data(&mut self, data: &[u8]) -> Result<()> {
        if (self.content.len() + data.len()) as u64 > self.limit {
            return Err(Error::Unsupported {
                path: self
                    .meta
                    .as_ref()
                    .map(|m| lossy(&m.path))
                    .unwrap_or_default(),
                reason: "the member is larger than the first pass read: \
                         the store changed during the restore"
                    .into(),
            });
        }
        self.content.extend_from_slice(data);
        Ok(())
    }
}

/// A worker: decodes the members it is given, whole, until the queue closes.
fn decode_ahead(
    source: &dyn ObjectSource,
    keys: &Keyring,
    jobs: &Mutex<mpsc::Receiver<Vec<(usize, Planned)>>>,
    done: mpsc::Sender<Vec<(usize, Decoded)>>,
) {
    let mut readers = Readers {
        source,
        open: Vec::new(),
        pipe_large: false,
    };
    loop {
        let job = jobs.lock().map(|rx| rx.recv());
        let Ok(Ok(batch)) = job else { return };
        let decoded = batch
            .into_iter()
            .map(|(i, p)| (i, decode_whole(&mut readers, keys, &p)))
            .collect();
        if done.send(decoded).is_err() {
            return;
        }
    }
}

/// Reads one member whole, for [`decode_ahead`].
fn decode_whole(readers: &mut Readers<'_>, keys: &Keyring, p: &Planned) -> Decoded {
    match readers.get(&p.loc.key) {
        Err(err) => Decoded {
            result: Err(MemberError {
                err,
                from_visitor: false,
                hash_differs: false,
            }),
            meta: None,
        },
        Ok(reader) => {
            let mut collect = Collect {
                limit: p.size,
                meta: None,
                content: Vec::new(),
            };
            let result = read_member(reader, &p.loc, keys, &mut collect, false);
            match result {
                Ok(meta) => Decoded {
                    result: Ok((meta, collect.content)),
                    meta: None,
                },
                Err(e) => Decoded {
                    result: Err(e),
                    meta: collect.meta,
                },
            }
        }
    }
}

/// The members given to the workers and not yet written.
struct Ahead {
    /// `None`: no workers, every member is read on the writing thread.
    jobs: Option<mpsc::Sender<Vec<(usize, Planned)>>>,
    done: mpsc::Receiver<Vec<(usize, Decoded)>>,
    /// The next member to consider giving out.
    next: usize,
    /// Decoded members that came back before their turn.
    waiting: HashMap<usize, Decoded>,
    in_flight: usize,
    in_flight_bytes: u64,
}

impl Ahead {
    /// Gives out members, in batches, while the window has room.
    fn fill(&mut self, planned: &[Planned]) {
        let Some(jobs) = &self.jobs else { return };
        // Wait until a whole batch fits: refilling one member at a time
        // would wake a worker per member.
        if self.in_flight > 0
            && (self.in_flight + BATCH_MEMBERS > AHEAD_MEMBERS
                || self.in_flight_bytes + BATCH_BYTES > AHEAD_BYTES)
        {
            return;
        }
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while let Some(p) = planned.get(self.next) {
            if self.in_flight >= AHEAD_MEMBERS
                || (self.in_flight > 0 && self.in_flight_bytes + p.size > AHEAD_BYTES)
            {
                break;
            }
            if ahead_eligible(p) {
                batch.push((self.next, p.clone()));
                batch_bytes += p.size;
                self.in_flight += 1;
                self.in_flight_bytes += p.size;
            }
            self.next += 1;
            if batch.len() >= BATCH_MEMBERS || batch_bytes >= BATCH_BYTES {
                if jobs.send(std::mem::take(&mut batch)).is_err() {
                    self.jobs = None;
                    return;
                }
                batch_bytes = 0;
            }
        }
        if !batch.is_empty() && jobs.send(batch).is_err() {
            self.jobs = None;
        }
    }

    /// Member `i`, decoded, if it was given out; waits for it.
    fn take(&mut self, i: usize, p: &Planned) -> Option<Decoded> {
        if i >= self.next || !ahead_eligible(p) || self.jobs.is_none() {
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
        self.in_flight_bytes -= p.size;
        Some(decoded)
    }
}
