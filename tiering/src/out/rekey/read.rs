//! Reading a batch of the scope's files back from the store, into a spool
//! the workers store them from, each noted with its hashes first.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cbfs_core::ScopeLabel;
use cbfs_format::{MemberFiles, MemberId, Metadata, SegmentId};
use cbfs_restore::{FrameFetcher, MemberFile, RestoreOptions, Sink, Snapshot, restore_files};
use sha2::{Digest, Sha256};

use crate::error::{Result, restore_error};
use crate::index::{FileRecord, Index};
use crate::out::diff::Dispatch;
use crate::out::stream::Spool;
use crate::out::{Pushed, Reseal, ResealedFile, Shared, Work};
use crate::scan::Entry;

use super::{Note, Plan, member_file, meta_hash};

/// Reads batches of files back from the store into spools.
pub(super) struct Reader<'a, 'r> {
    pub(super) shared: &'a Shared<'r>,
    pub(super) plan: &'a Plan,
    pub(super) source: &'a dyn cbfs_restore::ObjectSource,
    pub(super) snapshot: &'a Snapshot,
    pub(super) spools: std::sync::atomic::AtomicU64,
}

impl Reader<'_, '_> {
    /// Reads `files` (and `also`, which are read but not stored: the
    /// targets of hard links) back, notes each, and hands them over.
    pub(super) fn read(
        &self,
        files: Vec<(Vec<u8>, FileRecord)>,
        also: &[(Vec<u8>, FileRecord)],
        dispatch: &mut Dispatch<'_, '_, '_>,
    ) -> Result<()> {
        let files = if also.is_empty() {
            self.reseal(files, dispatch)?
        } else {
            files
        };
        if files.is_empty() {
            return Ok(());
        }
        let n = self.spools.fetch_add(1, Ordering::Relaxed);
        let chunk = Arc::new(Spool::create_named(
            &self.shared.spool_dir,
            &format!("rekey-{n}.spool"),
        )?);
        let mut wanted: Vec<MemberFile> = files.iter().map(|(_, r)| member_file(r)).collect();
        let mut seen: BTreeSet<MemberFile> = wanted.iter().copied().collect();
        for (_, r) in also {
            if seen.insert(member_file(r)) {
                wanted.push(member_file(r));
            }
        }
        let mut sink = ChunkSink {
            index: &self.shared.agent.index,
            scope: &self.plan.scope,
            records: files.into_iter().collect(),
            pass: also.iter().map(|(p, _)| p.clone()).collect(),
            chunk: chunk.clone(),
            pos: 0,
            current: None,
            work: Vec::new(),
        };
        let restored = restore_files(
            self.source,
            self.snapshot,
            &self.plan.opener,
            &wanted,
            &RestoreOptions::default(),
            &mut sink,
        )
        .map_err(|e| restore_error(self.snapshot.key(), e))?;
        if !restored.failures.is_empty() {
            self.plan
                .failures
                .lock()
                .expect("failures")
                .extend(restored.failures);
        }
        let work = std::mem::take(&mut sink.work);
        drop(sink);
        dispatch.hand_over(work);
        Ok(())
    }

    /// Seals the members of `files` again as they are, where it can: each
    /// member (up to [`RESEAL_MAX`] of content) whose every file is among
    /// `files` is fetched whole, checked against the signed manifest,
    /// decrypted to its frame (still compressed) and handed to a worker,
    /// which reads the frame to its end to note each file's hashes and
    /// encrypts the same frame under new keys. The files it cannot (a
    /// larger member, a damaged one, a pack with files the snapshot no
    /// longer holds, a hard link) are given back, to be read file by file.
    fn reseal(
        &self,
        files: Vec<(Vec<u8>, FileRecord)>,
        dispatch: &mut Dispatch<'_, '_, '_>,
    ) -> Result<Vec<(Vec<u8>, FileRecord)>> {
        let mut members: BTreeMap<(SegmentId, MemberId), Vec<Named>> = BTreeMap::new();
        let mut rest = Vec::new();
        for (path, rec) in files {
            if rec.hardlink_to.is_none() {
                members
                    .entry((rec.segment, rec.member))
                    .or_default()
                    .push((path, rec));
            } else {
                rest.push((path, rec));
            }
        }
        let mut fetcher = FrameFetcher::new(self.source, self.snapshot, &self.plan.opener);
        for ((_, member), group) in members {
            let content: u64 = group.iter().map(|(_, r)| r.stat.size).sum();
            if content > RESEAL_MAX || self.shared.stop.load(Ordering::SeqCst) {
                rest.extend(group);
                continue;
            }
            // A member's payload is at most its content and a little
            // framing (zstd, age): more is not fetched whole.
            let fetched = match fetcher.fetch(&member_file(&group[0].1), RESEAL_MAX + (1 << 20)) {
                Ok(f) => f,
                Err(e) if e.is_transient() => return Err(restore_error(self.snapshot.key(), e)),
                Err(e) => {
                    // Read file by file, which reports the damage.
                    tracing::debug!(%member, "not sealed again as it is: {e}");
                    rest.extend(group);
                    continue;
                }
            };
            // Only a member whose every file is one of these: a pack that
            // also holds files no longer in the snapshot is stored again
            // file by file, so that their content goes with the old member.
            let whole = cbfs_format::open_frame(member, &fetched.frame)
                .is_ok_and(|m| m.entries.len() == group.len());
            if !whole {
                rest.extend(group);
                continue;
            }
            let frame = fetched.frame;
            self.plan.frames.take(frame.len() as u64, &self.shared.stop);
            let first = &group[0];
            let work = Work {
                entry: Entry {
                    abs: PathBuf::from(String::from_utf8_lossy(&first.0).into_owned()),
                    rel: first.0.clone(),
                    stat: first.1.stat,
                },
                scope: self.plan.scope.clone(),
                hardlink_to: None,
                pushed: None,
                reseal: Some(Box::new(Reseal::new(
                    member,
                    fetched.segment,
                    frame,
                    group
                        .into_iter()
                        .map(|(rel, rec)| ResealedFile::new(rel, rec.stat, rec.slot, rec.segment))
                        .collect(),
                    self.plan.frames.clone(),
                ))),
            };
            dispatch.hand_over(vec![work]);
        }
        Ok(rest)
    }
}

/// A path and its index record.
type Named = (Vec<u8>, FileRecord);

/// A file's content and metadata hashes (SHA-256).
pub(crate) type Hashes = ([u8; 32], [u8; 32]);

/// Members up to this much content are sealed again as they are (their
/// frames are held in memory until a worker writes them); larger ones are
/// read back file by file through a spool.
const RESEAL_MAX: u64 = 4 << 20;

/// Each file's content and metadata hashes, for the files of `group` (the
/// index's records of `member`), from the member's frame read to its end
/// (by the worker that seals it again).
pub(crate) fn frame_hashes(
    member: MemberId,
    frame: &[u8],
    group: &[ResealedFile],
) -> std::result::Result<Vec<Hashes>, String> {
    let MemberFiles {
        entries,
        mut content,
    } = cbfs_format::open_frame(member, frame).map_err(|e| e.to_string())?;
    let want: HashMap<u16, usize> = group
        .iter()
        .enumerate()
        .map(|(k, f)| (f.slot(), k))
        .collect();
    let mut out: Vec<Option<Hashes>> = vec![None; group.len()];
    let mut buf = vec![0u8; 64 * 1024];
    for (slot, meta) in entries.iter().enumerate() {
        let wanted = u16::try_from(slot).ok().and_then(|s| want.get(&s).copied());
        let mut hash = Sha256::new();
        let mut left = meta.size;
        while left > 0 {
            let take = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n =
                std::io::Read::read(&mut content, &mut buf[..take]).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!("the frame ends inside file {slot}"));
            }
            if wanted.is_some() {
                hash.update(&buf[..n]);
            }
            left -= n as u64;
        }
        if let Some(k) = wanted {
            if meta.path != group[k].rel() {
                return Err(format!(
                    "file {slot} of the member is {:?}, the index says {:?}",
                    String::from_utf8_lossy(&meta.path),
                    String::from_utf8_lossy(group[k].rel())
                ));
            }
            out[k] = Some((hash.finalize().into(), meta_hash(meta)));
        }
    }
    content.finish().map_err(|e| e.to_string())?;
    out.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| "a file the index names is not in the member".to_owned())
}

/// The file being read back.
struct Current {
    meta: Metadata,
    start: u64,
    hash: Sha256,
    store: bool,
}

/// Takes what the restore engine reads back: each file's content into a
/// spool, noted with its hashes, and the work that stores it again.
struct ChunkSink<'a> {
    index: &'a Index,
    scope: &'a ScopeLabel,
    /// The files to store again, by path.
    records: HashMap<Vec<u8>, FileRecord>,
    /// Files read only for their links.
    pass: HashSet<Vec<u8>>,
    chunk: Arc<Spool>,
    pos: u64,
    current: Option<Current>,
    work: Vec<Work>,
}

pub(super) fn unasked(path: &[u8]) -> cbfs_restore::Error {
    cbfs_restore::Error::Unsupported {
        path: String::from_utf8_lossy(path).into_owned(),
        reason: "the member holds an entry this re-key did not ask for".into(),
    }
}

fn fatal(target: String, e: impl std::fmt::Display) -> cbfs_restore::Error {
    cbfs_restore::Error::Output {
        target,
        source: std::io::Error::other(e.to_string()),
        fatal: true,
    }
}

impl ChunkSink<'_> {
    fn take(
        &mut self,
        meta: Metadata,
        data: std::ops::Range<u64>,
        content: [u8; 32],
    ) -> cbfs_restore::Result<()> {
        let Some(rec) = self.records.remove(&meta.path) else {
            return Ok(());
        };
        let note = Note {
            old_segment: rec.segment,
            old_member: rec.member,
            old_slot: rec.slot,
            content,
            meta: meta_hash(&meta),
        };
        self.index
            .rekey_put(&meta.path, &note.encode())
            .map_err(|e| fatal("the index".into(), e))?;
        let path = meta.path.clone();
        self.work.push(Work {
            entry: Entry {
                abs: PathBuf::from(String::from_utf8_lossy(&path).into_owned()),
                rel: path,
                stat: rec.stat,
            },
            scope: self.scope.clone(),
            hardlink_to: rec.hardlink_to.clone(),
            reseal: None,
            pushed: Some(Pushed {
                meta,
                data: crate::out::stream::Data::Spool(data),
                chunk: Some(self.chunk.clone()),
            }),
        });
        Ok(())
    }
}

impl Sink for ChunkSink<'_> {
    fn begin_file(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        let store = self.records.contains_key(&meta.path);
        if !store && !self.pass.contains(&meta.path) {
            return Err(unasked(&meta.path));
        }
        self.current = Some(Current {
            meta: meta.clone(),
            start: self.pos,
            hash: Sha256::new(),
            store,
        });
        Ok(())
    }

    fn write_content(&mut self, data: &[u8]) -> cbfs_restore::Result<()> {
        let c = self.current.as_mut().expect("a file was begun");
        c.hash.update(data);
        if c.store {
            self.chunk
                .append(data)
                .map_err(|e| cbfs_restore::Error::Output {
                    target: self.chunk.path().display().to_string(),
                    source: e,
                    fatal: true,
                })?;
            self.pos += data.len() as u64;
        }
        Ok(())
    }

    fn commit_file(&mut self) -> cbfs_restore::Result<()> {
        let c = self.current.take().expect("a file was begun");
        if c.store {
            let content: [u8; 32] = c.hash.finalize().into();
            self.take(c.meta, c.start..self.pos, content)?;
        }
        Ok(())
    }

    fn abort_file(&mut self) {
        // Its bytes stay in the spool, unused.
        self.current = None;
    }

    fn add_entry(&mut self, meta: &Metadata) -> cbfs_restore::Result<()> {
        if self.records.contains_key(&meta.path) {
            let empty: [u8; 32] = Sha256::digest([]).into();
            return self.take(meta.clone(), 0..0, empty);
        }
        if self.pass.contains(&meta.path) {
            return Ok(());
        }
        Err(unasked(&meta.path))
    }

    fn finish(&mut self) -> cbfs_restore::Result<()> {
        Ok(())
    }

    fn carries_links_that_leave(&self) -> bool {
        // Symbolic links are stored again as they were, wherever they point.
        true
    }
}
