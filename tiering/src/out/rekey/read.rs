//! Reading a batch of the scope's files back from the store, into a spool
//! the workers store them from, each noted with its hashes first.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cbfs_core::ScopeLabel;
use cbfs_format::Metadata;
use cbfs_restore::{MemberFile, RestoreOptions, Sink, Snapshot, restore_files};
use sha2::{Digest, Sha256};

use crate::error::{Result, restore_error};
use crate::index::{FileRecord, Index};
use crate::out::diff::Dispatch;
use crate::out::stream::Spool;
use crate::out::{Pushed, Shared, Work};
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
            pushed: Some(Pushed {
                meta,
                data,
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
