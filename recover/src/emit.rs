//! Pass 2: check every path and link, then write the entries in path order
//! (hard links last), each read again, authenticated and hash-checked
//! before it is committed to the sink.

use std::collections::{HashMap, HashSet};

use cbfs_format::{EntryKind, Metadata};

use crate::engine::{Engine, Planned, Visit, read_member};
use crate::error::{Error, Result, lossy};
use crate::paths::{ancestors, check_member_path, check_symlink_target, sort_key};
use crate::sink::Sink;
use crate::source::{ObjectSource, ReadSeek};

/// A few open segments, most recently used last.
struct Readers<'s> {
    source: &'s dyn ObjectSource,
    open: Vec<(String, Box<dyn ReadSeek + 's>)>,
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
        if meta.path != self.planned.path || meta.kind != self.planned.kind {
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

    /// Reads one member again and writes it. `Ok(None)`: it failed (and the
    /// failure is recorded); `Err`: the output is broken.
    fn emit_one(
        &mut self,
        readers: &mut Readers<'_>,
        sink: &mut dyn Sink,
        planned: &Planned,
        out_path: &[u8],
        defer: bool,
    ) -> Result<Option<Metadata>> {
        let reader = match readers.get(&planned.loc.key) {
            Ok(r) => r,
            Err(e) => {
                self.report
                    .fail(planned.loc.failure(&e).with_path(out_path));
                return Ok(None);
            }
        };
        let mut visit = Emit {
            sink,
            planned,
            out_path,
            defer,
            began: false,
            out_meta: None,
        };
        let result = read_member(reader, &planned.loc, &self.keys, &mut visit);
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
                self.report
                    .fail(me.into_failure(&planned.loc).with_path(out_path));
                return Ok(None);
            }
        };
        match outcome {
            Ok(meta) => {
                self.report.restored_entries += 1;
                self.report.restored_bytes += meta.size;
                Ok(Some(meta))
            }
            Err(e) if e.is_fatal_output() => Err(e),
            Err(e) => {
                if began {
                    sink.abort_file();
                }
                self.report
                    .fail(planned.loc.failure(&e).with_path(out_path));
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
        let mut readers = Readers {
            source: self.source,
            open: Vec::new(),
        };
        let mut restored: HashMap<Vec<u8>, bool> = HashMap::new();
        for p in &others {
            if let Some(meta) = self.emit_one(&mut readers, sink, p, &p.path, false)? {
                restored.insert(meta.path, meta.kind == EntryKind::Dir);
            }
        }
        for p in &links {
            let Some(meta) = self.emit_one(&mut readers, sink, p, &p.path, true)? else {
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
                        if self.emit_one(&mut readers, sink, &t, &p.path, false)?.is_some() {
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
