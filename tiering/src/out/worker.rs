//! A worker: takes batches of entries and stores them into segments of its
//! own, small files into packs.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;

use cbfs_core::ScopeLabel;
use cbfs_format::{GroupKey, Lockbox, MemberId, SegmentId};

use crate::error::{Error, Result};
use crate::scan::{self, Entry, Names, Stat};
use crate::source_tree::OpenError;

use super::queue::WorkQueue;
use super::segment::{OpenSegment, Stored, close_segment, open_segment};
use super::{Shared, Work};

/// Regular files up to this size go into packs: one member (one tar
/// entry, one age header, one zstd frame) for many small files, which
/// would otherwise cost about a kilobyte of framing each. So do entries
/// without content (folders, links, devices).
pub(crate) const PACK_FILE_MAX: u64 = 128 << 10;
/// A pack is closed once its files' content reaches this.
const PACK_BYTES: u64 = 1 << 20;
/// An entry whose metadata record (with its extended attributes) is larger
/// than this is stored alone; a pack's table is kept under
/// [`PACK_TABLE_MAX`] (the format allows 16 MiB).
const PACK_META_MAX: usize = 64 << 10;
const PACK_TABLE_MAX: usize = 4 << 20;
/// A segment closes when it holds this many files, however small: what a
/// run keeps in memory for an open segment (one record per file, and the
/// index batch that commits them) stays bounded on a tree of tiny files.
const SEGMENT_MAX_FILES: usize = 16 << 10;

/// A file read whole, waiting in a pack.
pub(crate) struct PackFile {
    meta: cbfs_format::Metadata,
    content: Vec<u8>,
    rel: Vec<u8>,
    stat: Stat,
    hardlink_to: Option<Vec<u8>>,
}

/// The small files of one scope waiting to be written as one member.
#[derive(Default)]
pub(crate) struct Pack {
    files: Vec<PackFile>,
    pub(crate) bytes: u64,
    /// The length of their metadata records.
    table: usize,
}

pub(crate) fn worker(shared: &Shared<'_>, queue: &WorkQueue) -> Result<()> {
    let mut names = Names::default();
    let mut seg: Option<OpenSegment> = None;
    while let Some(batch) = queue.take() {
        for work in batch {
            if shared
                .opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                shared.stop.store(true, Ordering::SeqCst);
            }
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
            let files =
                open.stored.len() + open.packs.values().map(|p| p.files.len()).sum::<usize>();
            if open.writer.len() + packed >= shared.opts.segment_size || files >= SEGMENT_MAX_FILES
            {
                close_segment(shared, seg.take().expect("open"))?;
            }
        }
    }
    if let Some(open) = seg {
        close_segment(shared, open)?;
    }
    Ok(())
}

/// Stores again, as files of their own, the hard links of this run whose
/// target did not end up in the index as the same inode of the same scope
/// (it was skipped, or changed): a link to nothing is never committed.
pub(crate) fn store_dangling_links(shared: &Shared<'_>) -> Result<()> {
    let links = std::mem::take(&mut *shared.links.lock().expect("links lock"));
    if links.is_empty() {
        return Ok(());
    }
    let index = &shared.agent.index;
    let mut again = Vec::new();
    for path in links {
        let Some(rec) = index.file(&path)? else {
            continue;
        };
        let Some(target) = &rec.hardlink_to else {
            continue;
        };
        let fine = index.file(target)?.is_some_and(|t| {
            t.stat.dev == rec.stat.dev
                && t.stat.ino == rec.stat.ino
                && t.scope == rec.scope
                && t.hardlink_to.is_none()
        });
        if fine {
            continue;
        }
        tracing::info!(
            path = %String::from_utf8_lossy(&path),
            "the target of this hard link is not in the snapshot: stored as a file"
        );
        let scope = ScopeLabel::new(rec.scope.clone())
            .map_err(|e| Error::Usage(format!("the index holds a bad scope label: {e}")))?;
        if shared.stream.is_some() {
            // A pushed link: the content of what it linked to is in the
            // stream's spool.
            again.extend(super::stream::relinked(shared, &path, scope)?);
            continue;
        }
        let local = match &shared.opts.prefix {
            Some(p) => path
                .strip_prefix(p.as_slice())
                .and_then(|r| r.strip_prefix(b"/"))
                .unwrap_or(&path),
            None => &path,
        };
        let abs = shared.opts.source.join(std::ffi::OsStr::from_bytes(local));
        let stat = match std::fs::symlink_metadata(&abs) {
            Ok(m) => Stat::from_metadata(&m),
            Err(e) => {
                let entry = Entry {
                    rel: path.clone(),
                    abs,
                    stat: rec.stat,
                };
                shared.skip(&entry, format!("cannot stat: {e}"));
                continue;
            }
        };
        again.push(Work {
            entry: Entry {
                rel: path,
                abs,
                stat,
            },
            scope,
            hardlink_to: None,
            reseal: None,
            pushed: None,
        });
    }
    if again.is_empty() {
        return Ok(());
    }
    let paths: Vec<Vec<u8>> = again.iter().map(|w| w.entry.rel.clone()).collect();
    let queue = WorkQueue::default();
    queue.push(again);
    queue.close();
    worker(shared, &queue)?;
    // Links stored now are files, not links: nothing more to check.
    shared.links.lock().expect("links lock").clear();
    // A name that could not be stored as a file either (it changed while
    // read, too) must not stay a link to nothing: it leaves the snapshot,
    // and the next run stores it again.
    let mut batch = crate::index::Batch::default();
    let mut updates = HashMap::new();
    let _guard = shared.commit_lock.lock().expect("commit lock");
    for path in paths {
        if let Some(rec) = index.file(&path)?
            && rec.hardlink_to.is_some()
        {
            batch.delete_file(&path);
            super::release(shared.agent, &mut updates, &rec)?;
        }
    }
    if !batch.is_empty() {
        for (id, rec) in &updates {
            batch.put_segment(id, rec);
        }
        let mut state = index.state()?;
        state.dirty = true;
        batch.put_state(&state);
        index.commit(batch)?;
    }
    Ok(())
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
        pushed,
        reseal,
    } = work;
    if let Some(r) = reseal {
        return store_resealed(shared, seg, scope, *r);
    }
    let regular = entry.stat.is_file() && hardlink_to.is_none();
    // A re-key's content is in a spool of its own, kept while it is read.
    let chunk = pushed.as_ref().and_then(|p| p.chunk.clone());
    let (entry, meta, file, pushed) = match pushed {
        // Checked when the stream came in (or read back from the store and
        // verified, for a re-key); the content is in its spool, or in
        // memory.
        Some(p) => {
            let spool = match &chunk {
                Some(c) => &**c,
                None => shared.stream.as_ref().expect("a stream run has a spool"),
            };
            let content = match p.data {
                _ if !regular => Content::None,
                super::stream::Data::Spool(range) => Content::Spool(spool.reader(range)),
                super::stream::Data::Memory(m) => {
                    Content::Memory(std::io::Cursor::new(m.into_bytes()))
                }
            };
            (entry, p.meta, None, Some(content))
        }
        None => match from_tree(shared, names, entry, hardlink_to.as_deref(), regular) {
            Some((entry, meta, file)) => (entry, meta, file, None),
            None => return Ok(()),
        },
    };
    let content = match (&file, pushed) {
        (Some(f), _) => Content::File(f),
        (None, Some(c)) => c,
        (None, None) => Content::None,
    };
    if hardlink_to.is_some() {
        shared
            .links
            .lock()
            .expect("links lock")
            .push(entry.rel.clone());
    }
    let stat = entry.stat;
    let small = !regular || stat.size <= PACK_FILE_MAX;
    if !shared.opts.plain && small {
        let record = meta.record_len().map_or(usize::MAX, |n| n + 4);
        if record <= PACK_META_MAX {
            let meta = (meta, record);
            return add_to_pack(shared, seg, content, entry, meta, scope, hardlink_to);
        }
    }
    // From the thread's CSPRNG (seeded from the OS): ids are public.
    let member = MemberId::random_with_rng(&mut rand::thread_rng());
    let opened = file.as_ref();
    let counted = CountingReader {
        inner: content,
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
            shared.skip(&entry, "changed while being read".into());
            return Ok(());
        }
        Err(cbfs_format::Error::Io { source, .. }) if is_resource(&source) => {
            return Err(Error::Resource {
                what: "the segment spool".into(),
                path: shared.spool_dir.clone(),
                source,
            });
        }
        Err(cbfs_format::Error::Io { source, .. }) if regular && opened.is_some() => {
            // A read error of the source file; a write error of the spool
            // (disk full) ends the run instead.
            shared.skip(&entry, format!("cannot read: {source}"));
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(f) = opened {
        let after = f.metadata().map(|m| Stat::from_metadata(&m));
        if after.map(|a| a != stat).unwrap_or(true) {
            shared.skip(&entry, "changed while being read".into());
            return Ok(());
        }
    }
    shared.files.fetch_add(1, Ordering::Relaxed);
    shared.observer.file_stored();
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

/// Seals a re-keyed member again as it was (its frame, still compressed)
/// under a new member id and this segment's group key of its scope: each
/// of its files the index names is stored with its slot.
fn store_resealed(
    shared: &Shared<'_>,
    seg: &mut OpenSegment,
    scope: ScopeLabel,
    mut r: crate::out::Reseal,
) -> Result<()> {
    // The frame read through: each file's hashes, noted before its new
    // copy can be committed. A malformed frame stays under its old keys.
    let hashes = match crate::out::rekey::frame_hashes(r.member, &r.frame, &r.files) {
        Ok(h) => h,
        Err(why) => {
            let first = r
                .files
                .first()
                .map(|f| String::from_utf8_lossy(&f.rel).into_owned());
            r.budget
                .failures
                .lock()
                .expect("failures")
                .push(cbfs_restore::Failure {
                    object: cbfs_format::layout::segment(&r.segment),
                    member: Some(r.member.to_string()),
                    path: first,
                    code: "corrupt_plaintext".into(),
                    error: why,
                });
            return Ok(());
        }
    };
    for (f, (content, meta)) in r.files.iter().zip(hashes) {
        crate::out::rekey::put_note(
            &shared.agent.index,
            &f.rel,
            (f.old_segment, r.member, f.slot),
            content,
            meta,
        )?;
    }
    let member = MemberId::random_with_rng(&mut rand::thread_rng());
    let key = group_key(shared, &mut seg.groups, &mut seg.lockboxes, seg.id, &scope)?;
    let summary = seg
        .writer
        .append_frame(member, key, &r.frame)
        .map_err(|e| spool_error(shared, e))?;
    r.budget.resealed.fetch_add(1, Ordering::Relaxed);
    let n = r.files.len() as u64;
    let len = summary.data_len;
    for (i, f) in std::mem::take(&mut r.files).into_iter().enumerate() {
        let i = i as u64;
        let bytes = if f.stat.is_file() { f.stat.size } else { 0 };
        shared.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        shared.observer.bytes_read(bytes);
        shared.files.fetch_add(1, Ordering::Relaxed);
        shared.observer.file_stored();
        seg.stored.push(Stored {
            rel: f.rel,
            stat: f.stat,
            scope: scope.clone(),
            summary: summary.clone(),
            hardlink_to: None,
            slot: f.slot,
            share: len * (i + 1) / n - len * i / n,
        });
    }
    Ok(())
}

/// An entry of the tree, opened beneath the root with no symbolic link on
/// the way, checked to be what the scan found, with its metadata; the stat
/// recorded is the open file's, and the file is given for a regular one's
/// content. `None` if it was skipped (reported).
fn from_tree(
    shared: &Shared<'_>,
    names: &mut Names,
    entry: Entry,
    hardlink_to: Option<&[u8]>,
    regular: bool,
) -> Option<(Entry, cbfs_format::Metadata, Option<File>)> {
    let tree = shared.tree.as_ref().expect("a tree run has a tree");
    let is_dir = entry.stat.file_type() == libc::S_IFDIR;
    let (file, stat) = if regular || is_dir {
        match tree.open_checked(&entry.rel, &entry.stat) {
            Ok(f) => match f.metadata() {
                Ok(m) => {
                    let st = Stat::from_metadata(&m);
                    (Some(f), st)
                }
                Err(e) => {
                    shared.skip(&entry, format!("cannot stat: {e}"));
                    return None;
                }
            },
            Err(OpenError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                shared.skip(&entry, "vanished before it could be read".into());
                return None;
            }
            Err(e) => {
                shared.skip(&entry, format!("cannot open: {e}"));
                return None;
            }
        }
    } else {
        (None, entry.stat)
    };
    let entry = Entry { stat, ..entry };
    let meta = match scan::metadata_of(&entry, names, hardlink_to, tree, file.as_ref()) {
        Ok(m) => m,
        Err(e) => {
            shared.skip(&entry, format!("cannot read metadata: {e}"));
            return None;
        }
    };
    Some((entry, meta, file.filter(|_| regular)))
}

/// Where an entry's content comes from.
pub(crate) enum Content<'a> {
    /// None: not a regular file (or a hard link).
    None,
    /// A file of the tree, opened and checked.
    File(&'a File),
    /// Bytes of a pushed stream's spool.
    Spool(super::stream::SpoolReader<'a>),
    /// A pushed file's content, held in memory.
    Memory(std::io::Cursor<Vec<u8>>),
}

/// Whether an I/O error is this machine running out of room.
pub(crate) fn is_resource(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Reads a small file (or takes an entry without content) into its
/// scope's pack; writes the pack out once it is full. `meta` comes with
/// the length of its record in the pack's table.
fn add_to_pack(
    shared: &Shared<'_>,
    seg: &mut OpenSegment,
    content_from: Content<'_>,
    entry: Entry,
    (meta, record): (cbfs_format::Metadata, usize),
    scope: ScopeLabel,
    hardlink_to: Option<Vec<u8>>,
) -> Result<()> {
    let stat = entry.stat;
    let mut content = Vec::new();
    let pushed = match content_from {
        Content::None => false,
        Content::File(mut f) => {
            content.reserve_exact(meta.size as usize + 1);
            let read = std::io::Read::read_to_end(
                &mut std::io::Read::take(&mut f, meta.size + 1),
                &mut content,
            );
            if let Err(e) = read {
                shared.skip(&entry, format!("cannot read: {e}"));
                return Ok(());
            }
            shared
                .bytes_read
                .fetch_add(content.len() as u64, Ordering::Relaxed);
            shared.observer.bytes_read(content.len() as u64);
            let after = f.metadata().map(|m| Stat::from_metadata(&m));
            if content.len() as u64 != meta.size || after.map(|a| a != stat).unwrap_or(true) {
                shared.skip(&entry, "changed while being read".into());
                return Ok(());
            }
            false
        }
        Content::Spool(mut r) => {
            content.reserve_exact(meta.size as usize);
            std::io::Read::read_to_end(&mut r, &mut content).map_err(|e| {
                let path = shared.spool_dir.clone();
                Error::io("cannot read the push spool", path, e)
            })?;
            true
        }
        Content::Memory(c) => {
            content = c.into_inner();
            true
        }
    };
    if pushed {
        if content.len() as u64 != meta.size {
            return Err(Error::Usage(format!(
                "{}: the push spool holds {} of its {} bytes",
                entry.abs.display(),
                content.len(),
                meta.size
            )));
        }
        shared
            .bytes_read
            .fetch_add(content.len() as u64, Ordering::Relaxed);
        shared.observer.bytes_read(content.len() as u64);
    }
    shared.files.fetch_add(1, Ordering::Relaxed);
    shared.observer.file_stored();
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
pub(crate) fn flush_pack(
    shared: &Shared<'_>,
    seg: &mut OpenSegment,
    scope: &ScopeLabel,
) -> Result<()> {
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
    let summary = seg
        .writer
        .append_pack(member, key, &files)
        .map_err(|e| spool_error(shared, e))?;
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

/// A write error of the spool: a full disk is a resource error of its own.
pub(crate) fn spool_error(shared: &Shared<'_>, e: cbfs_format::Error) -> Error {
    match e {
        cbfs_format::Error::Io { source, .. } if is_resource(&source) => Error::Resource {
            what: "the segment spool".into(),
            path: shared.spool_dir.clone(),
            source,
        },
        e => e.into(),
    }
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
        // Always the scope's current key version: a retired one is never
        // sealed to again.
        let pk = ks.scope(scope).expect("checked before the run");
        let version = ks.scope_version(scope).expect("checked before the run");
        let (lockbox, key) = Lockbox::seal_at(scope.as_str(), version, pk, segment)?;
        lockboxes.push(lockbox);
        groups.insert(scope.clone(), key);
    }
    Ok(groups.get(scope).expect("just inserted"))
}

struct CountingReader<'a, 'b> {
    inner: Content<'a>,
    shared: &'a Shared<'b>,
}

impl std::io::Read for CountingReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = match &mut self.inner {
            Content::None => return Ok(0),
            Content::File(f) => std::io::Read::read(f, buf)?,
            Content::Spool(r) => r.read(buf)?,
            Content::Memory(c) => c.read(buf)?,
        };
        self.shared
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        self.shared.observer.bytes_read(n as u64);
        Ok(n)
    }
}
