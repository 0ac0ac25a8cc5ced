//! A pushed tar stream as the source of a run.
//!
//! ```text
//! stream ─▶ content to the spool (or memory) ─▶ per entry: check, note its name ─▶ index lookup
//!        ─▶ workers take content from there ─▶ segments wait (deferred)
//!        ─▶ end of stream, all checked: upload and commit the waiting segments
//!        ─▶ what is gone: the index below the prefix, less the names noted
//! ```
//!
//! A host pushes a tar stream through the gateway; nothing about it is
//! trusted. Every entry is checked before it is stored, and the stream is
//! refused whole at the first entry that is not safe: a name that is
//! absolute or climbs with `..`, a name that appears twice, an entry below
//! a symbolic link of the stream, a symbolic link that leads out of the
//! pushed tree, a hard link to anything but a file pushed before it (and,
//! in a stream that marks its linked files, to a file it did not mark), a
//! kind of entry that is not stored, headers of one entry (long names, pax
//! records) over [`HEADERS_MAX`], a stream that ends inside an entry (a
//! header that lies about its size) or without the end-of-archive marker.
//!
//! The content is stored while the stream arrives: workers compress and
//! encrypt from the spool the stream is written to, as they do from files.
//! A stream that marks its linked files (`cbfs-tier push` does, with the
//! pax records [`LINKS_DECLARED`] and [`LINKED`]) spares the spool its
//! small unlinked files: their content goes to the workers in memory, up
//! to [`OutOptions::push_memory`](super::OutOptions::push_memory) bytes
//! waiting at once. Only a linked file's content can be needed again later
//! (by a hard link into another scope, or one whose target was not
//! stored), and only that, with files over [`MEMORY_FILE_MAX`], is kept on
//! the spool. A file with a `CBFS.linked` record of any value counts as
//! marked.
//! But nothing is committed before the whole stream has arrived and passed:
//! closed segments wait on the spool ([`super::segment::Deferred`]), and a
//! refused stream leaves neither an object in the store nor a change in the
//! index. Memory stays bounded whatever the stream's size: the names the
//! checks need are kept in the index (scratch rows, see
//! [`Index::pushed_put`]), not in memory.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cbfs_format::{EntryKind, Metadata, Timestamp};
use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::index::Index;
use crate::scan::{Entry, Stat};

use super::diff::{Dispatch, unchanged};
use super::queue::{CloseOnDrop, WorkQueue};
use super::{ByteBudget, OutReport, Pushed, Shared, Work};

/// Entries looked up in the index at a time.
const BATCH: usize = 256;

/// The pax record of a global header by which a stream says that it marks
/// each regular file with more than one name with [`LINKED`].
pub(crate) const LINKS_DECLARED: (&str, &str) = ("CBFS.links", "marked");
/// The pax record that marks a regular file with more than one name (in a
/// stream that declares [`LINKS_DECLARED`]).
pub(crate) const LINKED: (&str, &str) = ("CBFS.linked", "1");
/// The largest file whose content goes to the workers in memory.
const MEMORY_FILE_MAX: u64 = 1 << 20;
/// The largest pax global header read.
const GLOBAL_HEADER_MAX: u64 = 1 << 20;
/// The most bytes of headers one entry may have (its tar header, a long
/// name or link name, pax records): the tar reader holds them in memory.
pub(crate) const HEADERS_MAX: u64 = 8 << 20;

/// The stream's content as it arrived, on the run's spool, each byte at
/// its offset in the stream: workers read content from it by offset while
/// the stream goes on. What is not needed there (headers, content held in
/// memory) is a hole.
pub(crate) struct Spool {
    file: File,
    path: PathBuf,
    /// The content held in memory instead (between the stream and the
    /// workers).
    memory: Arc<ByteBudget>,
}

impl Spool {
    /// The spool of a pushed stream, which may hold up to `memory` bytes
    /// of content in memory instead.
    pub(crate) fn create(dir: &Path, memory: u64) -> Result<Self> {
        Self::create_in(dir, "pushed.tar", memory)
    }

    /// A spool file `name` in `dir`, deleted when dropped.
    pub(crate) fn create_named(dir: &Path, name: &str) -> Result<Self> {
        Self::create_in(dir, name, 0)
    }

    fn create_in(dir: &Path, name: &str, memory: u64) -> Result<Self> {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io("cannot create the push spool", &path, e))?;
        Ok(Spool {
            file,
            path,
            memory: Arc::new(ByteBudget::new(memory)),
        })
    }

    /// Adds `data` at its end (such a spool is written in order, and read
    /// by offset).
    pub(crate) fn append(&self, data: &[u8]) -> io::Result<()> {
        io::Write::write_all(&mut &self.file, data)
    }

    /// Where it is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads `range` of the stream.
    pub(crate) fn reader(&self, range: std::ops::Range<u64>) -> SpoolReader<'_> {
        SpoolReader {
            file: &self.file,
            pos: range.start,
            end: range.end,
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A file's content held in memory; its bytes go back to the budget when
/// a worker takes them (or when it is dropped unused).
pub(crate) struct InMemory {
    bytes: Vec<u8>,
    held: u64,
    budget: Arc<ByteBudget>,
}

impl InMemory {
    /// The content, for the worker that stores it.
    pub(crate) fn into_bytes(mut self) -> Vec<u8> {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for InMemory {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

/// Where a pushed entry's content is.
pub(crate) enum Data {
    /// These bytes of the spool.
    Spool(std::ops::Range<u64>),
    /// In memory.
    Memory(InMemory),
}

/// A range of the spool, read by offset.
pub(crate) struct SpoolReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for SpoolReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.end.saturating_sub(self.pos);
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the push spool ends before the entry's content",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Reads the stream, and writes what it reads while `spooling` to the
/// spool, at its offset in the stream.
struct Tee<'a> {
    inner: &'a mut (dyn Read + Send),
    spool: &'a File,
    spool_path: &'a Path,
    pos: u64,
    /// Whether what is read now goes to the spool (the content of an
    /// entry that a worker or a later hard link reads from there).
    spooling: &'a Cell<bool>,
    /// Whether what is read now is an entry's content (else its headers).
    in_content: &'a Cell<bool>,
    /// Bytes of headers read since the last entry came out.
    headers: &'a Cell<u64>,
    /// Why the spool could not be written (a full disk, say).
    spool_error: Option<io::Error>,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.in_content.get() {
            self.headers.set(self.headers.get() + n as u64);
            if self.headers.get() > HEADERS_MAX {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "an entry's headers (long names, pax records) pass {} MiB",
                        HEADERS_MAX >> 20
                    ),
                ));
            }
        }
        if !self.spooling.get() {
            self.pos += n as u64;
            return Ok(n);
        }
        if let Err(e) = self.spool.write_all_at(&buf[..n], self.pos) {
            let kind = e.kind();
            let message = format!("{}: {e}", self.spool_path.display());
            self.spool_error = Some(e);
            return Err(io::Error::new(kind, message));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// What the push noted of a name, kept in the index while it runs.
#[derive(Debug, PartialEq)]
enum Noted {
    /// A regular file: its content in the spool (`None`: not kept there,
    /// an unlinked file of a stream that marks its linked ones), and its
    /// metadata.
    File {
        data: Option<std::ops::Range<u64>>,
        meta: Metadata,
    },
    Dir,
    Symlink,
    /// A FIFO or a device.
    Other,
    /// A hard link: what it links to (a file noted before), and that
    /// file's content and metadata.
    Link {
        target: Vec<u8>,
        data: std::ops::Range<u64>,
        meta: Metadata,
    },
}

impl Noted {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let file = |out: &mut Vec<u8>, data: &std::ops::Range<u64>, meta: &Metadata| {
            out.extend_from_slice(&data.start.to_le_bytes());
            out.extend_from_slice(&data.end.to_le_bytes());
            out.extend_from_slice(&meta.to_record().expect("checked before it was noted"));
        };
        match self {
            Noted::File {
                data: Some(data),
                meta,
            } => {
                out.push(1);
                file(&mut out, data, meta);
            }
            Noted::File { data: None, meta } => {
                out.push(6);
                out.extend_from_slice(&meta.to_record().expect("checked before it was noted"));
            }
            Noted::Dir => out.push(2),
            Noted::Symlink => out.push(3),
            Noted::Other => out.push(4),
            Noted::Link { target, data, meta } => {
                out.push(5);
                out.extend_from_slice(&(target.len() as u32).to_le_bytes());
                out.extend_from_slice(target);
                file(&mut out, data, meta);
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Noted, String> {
        fn u64_at(b: &[u8], at: usize) -> std::result::Result<u64, String> {
            b.get(at..at + 8)
                .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
                .ok_or_else(|| "short record".to_owned())
        }
        fn file(b: &[u8]) -> std::result::Result<(std::ops::Range<u64>, Metadata), String> {
            let data = u64_at(b, 0)?..u64_at(b, 8)?;
            let meta = Metadata::from_record(&b[16..]).map_err(|e| e.to_string())?;
            Ok((data, meta))
        }
        let (tag, rest) = bytes.split_first().ok_or("empty record")?;
        Ok(match tag {
            1 => {
                let (data, meta) = file(rest)?;
                Noted::File {
                    data: Some(data),
                    meta,
                }
            }
            6 => Noted::File {
                data: None,
                meta: Metadata::from_record(rest).map_err(|e| e.to_string())?,
            },
            2 => Noted::Dir,
            3 => Noted::Symlink,
            4 => Noted::Other,
            5 => {
                let len = rest
                    .get(..4)
                    .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")) as usize)
                    .ok_or("short record")?;
                let target = rest.get(4..4 + len).ok_or("short record")?.to_vec();
                let (data, meta) = file(&rest[4 + len..])?;
                Noted::Link { target, data, meta }
            }
            other => return Err(format!("unknown tag {other}")),
        })
    }

    /// The file a hard link to this name stores: its content (if the
    /// spool kept it) and metadata.
    fn linked_file(self) -> Option<(Option<std::ops::Range<u64>>, Metadata)> {
        match self {
            Noted::File { data, meta } => Some((data, meta)),
            Noted::Link { data, meta, .. } => Some((Some(data), meta)),
            _ => None,
        }
    }
}

/// The names of the stream so far: in the index during a run, in memory in
/// the tests of the checks.
trait Names {
    fn get(&self, path: &[u8]) -> Result<Option<Noted>>;
    fn put(&mut self, path: &[u8], noted: &Noted) -> Result<()>;
    fn any_below(&self, dir: &[u8]) -> Result<bool>;
}

impl Names for &Index {
    fn get(&self, path: &[u8]) -> Result<Option<Noted>> {
        match self.pushed_get(path)? {
            None => Ok(None),
            Some(v) => Noted::decode(&v).map(Some).map_err(|e| Error::Index {
                path: PathBuf::from("(push scratch)"),
                detail: format!("{}: {e}", String::from_utf8_lossy(path)),
            }),
        }
    }
    fn put(&mut self, path: &[u8], noted: &Noted) -> Result<()> {
        self.pushed_put(path, &noted.encode())
    }
    fn any_below(&self, dir: &[u8]) -> Result<bool> {
        self.pushed_any_below(dir)
    }
}

/// One checked entry of the stream.
struct Checked {
    /// Its name in the file system (with the prefix).
    name: Vec<u8>,
    stat: Stat,
    meta: Metadata,
    data: std::ops::Range<u64>,
    /// A file's content, if it is held in memory rather than in `data`.
    memory: Option<InMemory>,
    /// For a hard link: the name it links to.
    link_to: Option<Vec<u8>>,
}

/// The checks of a stream, entry by entry.
struct Checker<N: Names> {
    names: N,
    prefix: Option<Vec<u8>>,
    /// The parent directory of the newest entry, checked to have no
    /// symbolic link of the stream on its way.
    clear_parent: Option<Vec<u8>>,
}

fn refused(why: String) -> Error {
    Error::Refused(why)
}

impl<N: Names> Checker<N> {
    fn new(names: N, prefix: Option<Vec<u8>>) -> Self {
        Checker {
            names,
            prefix,
            clear_parent: None,
        }
    }

    fn named(&self, rel: &[u8]) -> Vec<u8> {
        match &self.prefix {
            None => rel.to_vec(),
            Some(p) => {
                let mut full = Vec::with_capacity(p.len() + 1 + rel.len());
                full.extend_from_slice(p);
                full.push(b'/');
                full.extend_from_slice(rel);
                full
            }
        }
    }

    /// Checks one entry whose content (if any) is `data` of the stream,
    /// kept on the spool if `kept`; `None` for what is not stored (the
    /// root, pax global headers).
    fn check<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        data: std::ops::Range<u64>,
        kept: bool,
    ) -> Result<Option<Checked>> {
        use tar::EntryType as T;
        let raw = entry.path_bytes().into_owned();
        let rel = normalize(&raw);
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink
        ) {
            return Ok(None);
        }
        if rel.is_empty() && kind.is_dir() {
            return Ok(None); // the root itself ("./")
        }
        cbfs_restore::check_member_path(&rel)
            .map_err(|why| refused(format!("entry {shown:?}: {why}")))?;
        let name = self.named(&rel);
        if self.names.get(&name)?.is_some() {
            return Err(refused(format!(
                "entry {shown:?} appears twice in the stream"
            )));
        }
        self.check_parents(&rel, &shown)?;
        let mut meta = metadata(entry, &shown)?;
        meta.path = name.clone();
        let (noted, link_to, data) = match kind {
            T::Regular | T::Continuous => {
                meta.kind = EntryKind::File;
                let noted = Noted::File {
                    data: kept.then(|| data.clone()),
                    meta: meta.clone(),
                };
                (noted, None, data)
            }
            T::Directory => {
                meta.kind = EntryKind::Dir;
                (Noted::Dir, None, 0..0)
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(format!("symbolic link {shown:?} has no target")))?
                    .into_owned();
                let names = &self.names;
                let prefix = self.prefix.clone();
                let is_link = |p: &[u8]| {
                    let full = match &prefix {
                        None => p.to_vec(),
                        Some(pre) => [pre.as_slice(), b"/", p].concat(),
                    };
                    matches!(names.get(&full), Ok(Some(Noted::Symlink)))
                };
                cbfs_restore::check_symlink_target_with(&rel, &target, is_link).map_err(|why| {
                    refused(format!(
                        "symbolic link {shown:?} -> {:?} would lead out of the pushed tree: {why}",
                        String::from_utf8_lossy(&target)
                    ))
                })?;
                if self.names.any_below(&name)? {
                    return Err(refused(format!(
                        "symbolic link {shown:?} comes after entries below it"
                    )));
                }
                meta.kind = EntryKind::Symlink { target };
                (Noted::Symlink, None, 0..0)
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refused(format!("hard link {shown:?} has no target")))?;
                let target = self.named(&normalize(&target));
                let linked = self.names.get(&target)?.and_then(Noted::linked_file);
                let Some((data, file)) = linked else {
                    return Err(refused(format!(
                        "hard link {shown:?} names {:?}, which is not a file pushed before it",
                        String::from_utf8_lossy(&target)
                    )));
                };
                let Some(data) = data else {
                    return Err(refused(format!(
                        "hard link {shown:?} names {:?}, which the stream did not mark as linked \
                         (pax record {}={}, promised by its global header {}={}): its content was \
                         not kept",
                        String::from_utf8_lossy(&target),
                        LINKED.0,
                        LINKED.1,
                        LINKS_DECLARED.0,
                        LINKS_DECLARED.1
                    )));
                };
                // One inode: the link has its target's attributes.
                meta = Metadata {
                    path: name.clone(),
                    ..file.clone()
                };
                let noted = Noted::Link {
                    target: target.clone(),
                    data: data.clone(),
                    meta: file,
                };
                (noted, Some(target), data)
            }
            T::Fifo => {
                meta.kind = EntryKind::Fifo;
                (Noted::Other, None, 0..0)
            }
            T::Char | T::Block => {
                let number = |n: io::Result<Option<u32>>| n.ok().flatten().unwrap_or(0);
                let (major, minor) = (
                    number(entry.header().device_major()),
                    number(entry.header().device_minor()),
                );
                meta.kind = if kind == T::Char {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                };
                (Noted::Other, None, 0..0)
            }
            other => {
                return Err(refused(format!(
                    "entry {shown:?} is of a kind that is not pushed ({other:?})"
                )));
            }
        };
        if meta.kind != EntryKind::File {
            meta.size = 0;
        }
        meta.validate()
            .map_err(|e| refused(format!("entry {shown:?}: {e}")))?;
        self.names.put(&name, &noted)?;
        let ino_of = link_to.as_deref().unwrap_or(&name);
        let stat = stat_of(&meta, ino_of);
        Ok(Some(Checked {
            name,
            stat,
            meta,
            data,
            memory: None,
            link_to,
        }))
    }

    /// No entry may lie below a symbolic link of the stream: its name would
    /// lead wherever the link points once restored.
    fn check_parents(&mut self, rel: &[u8], shown: &str) -> Result<()> {
        let parent = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => &rel[..i],
            None => return Ok(()),
        };
        if self.clear_parent.as_deref() == Some(parent) {
            return Ok(());
        }
        let mut at = 0;
        while at <= parent.len() {
            let end = parent[at..]
                .iter()
                .position(|&b| b == b'/')
                .map_or(parent.len(), |i| at + i);
            let dir = self.named(&parent[..end]);
            if let Some(Noted::Symlink) = self.names.get(&dir)? {
                return Err(refused(format!(
                    "entry {shown:?} lies below symbolic link {:?}",
                    String::from_utf8_lossy(&parent[..end])
                )));
            }
            at = end + 1;
        }
        self.clear_parent = Some(parent.to_vec());
        Ok(())
    }
}

/// The metadata a tar header gives (with its pax records): permissions,
/// owner, names, time to the nanosecond, extended attributes. The kind and
/// path are set by the caller.
fn metadata<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Metadata> {
    let bad =
        |what: &str, e: &dyn std::fmt::Display| refused(format!("entry {shown:?}: {what}: {e}"));
    let header = entry.header();
    let id = |v: io::Result<u64>, what: &str| -> Result<u32> {
        let v = v.map_err(|e| bad(what, &e))?;
        u32::try_from(v)
            .map_err(|_| refused(format!("entry {shown:?}: {what} {v} is out of range")))
    };
    let mut meta = Metadata::new(Vec::new(), EntryKind::File);
    meta.mode = header.mode().map_err(|e| bad("mode", &e))? & 0o7777;
    meta.uid = id(header.uid(), "uid")?;
    meta.gid = id(header.gid(), "gid")?;
    let name = |b: Option<&[u8]>| {
        b.and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
            .to_owned()
    };
    meta.uname = name(header.username_bytes());
    meta.gname = name(header.groupname_bytes());
    let secs = header.mtime().map_err(|e| bad("mtime", &e))?;
    meta.mtime = Timestamp::new(
        i64::try_from(secs).map_err(|_| refused(format!("entry {shown:?}: mtime out of range")))?,
        0,
    );
    meta.size = entry.size();
    if let Some(records) = entry.pax_extensions().map_err(|e| bad("pax records", &e))? {
        for record in records {
            let record = record.map_err(|e| bad("pax record", &e))?;
            let key = record.key_bytes();
            let value = record.value_bytes();
            let text = || std::str::from_utf8(value).map_err(|e| bad("pax record", &e));
            match key {
                b"mtime" => {
                    meta.mtime =
                        pax_time(text()?).ok_or_else(|| bad("pax mtime", &text().unwrap_or("")))?
                }
                b"uid" => meta.uid = text()?.parse().map_err(|e| bad("pax uid", &e))?,
                b"gid" => meta.gid = text()?.parse().map_err(|e| bad("pax gid", &e))?,
                b"uname" => meta.uname = text()?.to_owned(),
                b"gname" => meta.gname = text()?.to_owned(),
                _ => {
                    if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                        meta.xattrs.insert(attr.to_vec(), value.to_vec());
                    }
                }
            }
        }
    }
    Ok(meta)
}

/// A pax time, `SECONDS[.FRACTION]` (may be negative), to the nanosecond.
fn pax_time(text: &str) -> Option<Timestamp> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = whole.parse().ok()?;
    let mut nanos: u32 = 0;
    for (i, d) in fraction.bytes().take(9).enumerate() {
        nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        return Some(Timestamp::new(secs, nanos));
    }
    if nanos == 0 {
        return Some(Timestamp::new(secs.checked_neg()?, 0));
    }
    Some(Timestamp::new(
        secs.checked_neg()?.checked_sub(1)?,
        1_000_000_000 - nanos,
    ))
}

/// The stat an entry of a stream stands for: what the index keeps and the
/// change test compares (type, permissions, owner, size, time, device). The
/// inode number is made from the name of the link group's first file, so
/// that a hard link and its target agree, push after push.
fn stat_of(meta: &Metadata, inode_name: &[u8]) -> Stat {
    let (kind, rdev) = match &meta.kind {
        EntryKind::File | EntryKind::Hardlink { .. } => (libc::S_IFREG, 0),
        EntryKind::Dir => (libc::S_IFDIR, 0),
        EntryKind::Symlink { .. } => (libc::S_IFLNK, 0),
        EntryKind::CharDevice { major, minor } => (libc::S_IFCHR, libc::makedev(*major, *minor)),
        EntryKind::BlockDevice { major, minor } => (libc::S_IFBLK, libc::makedev(*major, *minor)),
        EntryKind::Fifo => (libc::S_IFIFO, 0),
    };
    let digest = sha2::Sha256::digest(inode_name);
    Stat {
        dev: 0,
        ino: u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")),
        mode: kind | meta.mode,
        nlink: 1,
        uid: meta.uid,
        gid: meta.gid,
        size: meta.size,
        mtime: meta.mtime.secs,
        mtime_ns: meta.mtime.nanos,
        ctime: meta.mtime.secs,
        ctime_ns: meta.mtime.nanos,
        rdev,
    }
}

/// A tar name as a plain relative path: `./` and trailing `/` taken off.
fn normalize(raw: &[u8]) -> Vec<u8> {
    let mut p = raw;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p == b"." {
        return Vec::new();
    }
    p.to_vec()
}

/// Reads the pushed stream, storing every new or changed entry as it
/// arrives; once the whole stream has arrived and passed every check,
/// commits what was stored. Returns the indexed paths below the prefix
/// that the stream did not bring (gone).
pub(crate) fn store_stream(
    shared: &Shared<'_>,
    mut input: Box<dyn Read + Send + '_>,
    report: &mut OutReport,
) -> Result<Vec<Vec<u8>>> {
    let (agent, opts) = (shared.agent, shared.opts);
    let spool = shared.stream.as_ref().expect("a stream run has a spool");
    agent.index.pushed_clear()?;
    // The paths below the prefix as they were before this push.
    let mut cursor = agent.index.paths_cursor_below(opts.prefix.as_deref());
    let cancelled = || {
        opts.cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
    };
    let queue = WorkQueue::default();
    let spooling = Cell::new(false);
    let in_content = Cell::new(false);
    let headers = Cell::new(0u64);
    let mut tee = Tee {
        inner: input.as_mut(),
        spool: &spool.file,
        spool_path: &spool.path,
        pos: 0,
        spooling: &spooling,
        in_content: &in_content,
        headers: &headers,
        spool_error: None,
    };
    // Whether the stream marks its linked files (see LINKS_DECLARED).
    let mut declared = false;
    let mut content_end = 0u64;
    let (parsed, stored) = std::thread::scope(|s| {
        let _closing = CloseOnDrop(shared, &queue);
        let mut dispatch = Dispatch::new(s, shared, &queue);
        let parsed = (|| -> Result<()> {
            let mut checker = Checker::new(&agent.index, opts.prefix.clone());
            let mut archive = tar::Archive::new(&mut tee);
            let entries = archive
                .entries()
                .map_err(|e| refused(format!("not a tar stream: {e}")))?;
            let mut batch: Vec<Checked> = Vec::with_capacity(BATCH);
            for entry in entries {
                if cancelled() {
                    shared.stop.store(true, Ordering::SeqCst);
                }
                if shared.stop.load(Ordering::SeqCst) {
                    return Err(if cancelled() {
                        Error::Cancelled
                    } else {
                        Error::Usage("the run stopped early".into())
                    });
                }
                let mut entry = entry.map_err(|e| refused(format!("a broken tar stream: {e}")))?;
                headers.set(0);
                let start = entry.raw_file_position();
                let size = entry.size();
                let kind = entry.header().entry_type();
                let shown = |entry: &tar::Entry<'_, _>| {
                    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
                };
                let broke = |entry: &tar::Entry<'_, _>, e: io::Error| {
                    refused(format!("entry {:?}: the stream broke: {e}", shown(entry)))
                };
                let short = |entry: &tar::Entry<'_, _>, got: u64| {
                    refused(format!(
                        "entry {:?}: its header says {size} bytes, the stream ends after {got}",
                        shown(entry)
                    ))
                };
                // The entry's content, all of it: into `into`, or (`None`)
                // through to the spool.
                let content = |entry: &mut tar::Entry<'_, _>, into: Option<&mut Vec<u8>>| {
                    in_content.set(true);
                    spooling.set(into.is_none());
                    let got = match into {
                        Some(v) => entry.read_to_end(v).map(|n| n as u64),
                        None => io::copy(entry, &mut io::sink()),
                    };
                    spooling.set(false);
                    in_content.set(false);
                    let got = got.map_err(|e| broke(entry, e))?;
                    if got != size {
                        return Err(short(entry, got));
                    }
                    Ok(())
                };
                content_end = start + size.div_ceil(512) * 512;
                if kind == tar::EntryType::XGlobalHeader {
                    if size > GLOBAL_HEADER_MAX {
                        return Err(refused(format!(
                            "a pax global header of {size} bytes (at most {GLOBAL_HEADER_MAX})"
                        )));
                    }
                    let mut records = Vec::with_capacity(size as usize);
                    content(&mut entry, Some(&mut records))?;
                    declared |= tar::PaxExtensions::new(&records).flatten().any(|x| {
                        x.key_bytes() == LINKS_DECLARED.0.as_bytes()
                            && x.value_bytes() == LINKS_DECLARED.1.as_bytes()
                    });
                    continue;
                }
                let file = matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous);
                let in_memory = declared && file && size <= MEMORY_FILE_MAX && {
                    let marked = match entry.pax_extensions() {
                        Ok(x) => x.is_some_and(|mut x| {
                            x.any(|x| x.is_ok_and(|x| x.key_bytes() == LINKED.0.as_bytes()))
                        }),
                        Err(e) => {
                            return Err(refused(format!("entry {:?}: {e}", shown(&entry))));
                        }
                    };
                    !marked
                };
                let memory = if in_memory {
                    // What the scan holds must reach the workers before it
                    // waits for them to give memory back.
                    if !spool.memory.try_take(size) {
                        let work = changed(shared, std::mem::take(&mut batch), report)?;
                        dispatch.hand_over(work);
                        spool.memory.take(size, &shared.stop);
                    }
                    let mut held = InMemory {
                        bytes: Vec::with_capacity(size as usize),
                        held: size,
                        budget: spool.memory.clone(),
                    };
                    content(&mut entry, Some(&mut held.bytes))?;
                    Some(held)
                } else {
                    // The content goes to the spool on its way through.
                    content(&mut entry, None)?;
                    None
                };
                let kept = memory.is_none();
                if let Some(mut checked) = checker.check(&mut entry, start..start + size, kept)? {
                    checked.memory = memory;
                    batch.push(checked);
                }
                if batch.len() >= BATCH {
                    let work = changed(shared, std::mem::take(&mut batch), report)?;
                    dispatch.hand_over(work);
                }
            }
            let work = changed(shared, batch, report)?;
            dispatch.hand_over(work);
            // tar ends with two zero blocks; the first ended the entries.
            // A stream cut short at an entry's end would otherwise pass as
            // whole, and what it did not bring would be called gone.
            let tee = archive.into_inner();
            let mut second = [0u8; 512];
            let marked = tee.pos >= content_end + 512
                && tee.read_exact(&mut second).is_ok()
                && second.iter().all(|&b| b == 0);
            if !marked {
                return Err(refused(
                    "the stream ends without tar's end-of-archive marker: it may have been cut short"
                        .into(),
                ));
            }
            Ok(())
        })();
        if parsed.is_err() {
            // The workers stop at their next entry: nothing is committed.
            shared.stop.store(true, Ordering::SeqCst);
        }
        (parsed, dispatch.finish())
    });
    if let Some(e) = tee.spool_error.take() {
        return Err(Error::io("cannot write the push spool", &spool.path, e));
    }
    parsed?;
    stored?;
    if shared.stop.load(Ordering::SeqCst) {
        return Err(if cancelled() {
            Error::Cancelled
        } else {
            Error::Usage("the run stopped early".into())
        });
    }
    // The whole stream is in, and passed: what waited is committed now.
    super::segment::commit_deferred(shared)?;
    let mut gone = Vec::new();
    agent.index.pushed_for_each(|name| {
        cursor.advance_to(name, |path| gone.push(path.to_vec()))?;
        Ok(())
    })?;
    cursor.rest(|path| gone.push(path.to_vec()))?;
    Ok(gone)
}

/// Looks a batch of checked entries up in the index: the work for those
/// that changed.
fn changed(shared: &Shared<'_>, batch: Vec<Checked>, report: &mut OutReport) -> Result<Vec<Work>> {
    let opts = shared.opts;
    let names: Vec<&[u8]> = batch.iter().map(|c| c.name.as_slice()).collect();
    let records = shared.agent.index.files(&names)?;
    drop(names);
    let mut work = Vec::new();
    for (c, stored) in batch.into_iter().zip(records) {
        report.scanned += 1;
        let scope = if c.stat.file_type() == libc::S_IFDIR {
            opts.rules.scope_of_dir(&c.name)
        } else {
            opts.rules.scope_of(&c.name)
        };
        // A link into another scope is stored as a file of its own, so that
        // no name of one scope is written into another's metadata.
        let hardlink_to = c
            .link_to
            .filter(|target| opts.rules.scope_of(target) == scope);
        if unchanged(
            opts,
            stored.as_ref(),
            &c.stat,
            &scope,
            hardlink_to.as_deref(),
        ) {
            report.unchanged += 1;
            continue;
        }
        let mut meta = c.meta;
        if let Some(target) = &hardlink_to {
            meta.kind = EntryKind::Hardlink {
                target: target.clone(),
            };
            meta.size = 0;
        }
        work.push(Work {
            entry: Entry {
                abs: PathBuf::from(String::from_utf8_lossy(&c.name).into_owned()),
                rel: c.name,
                stat: c.stat,
            },
            scope,
            hardlink_to,
            reseal: None,
            pushed: Some(Pushed {
                meta,
                data: match c.memory {
                    Some(m) => Data::Memory(m),
                    None => Data::Spool(c.data),
                },
                chunk: None,
            }),
        });
    }
    Ok(work)
}

/// The work that stores again, as a file of its own, a hard link of this
/// push whose target did not end up in the index: the content of the file
/// it linked to, from the spool.
pub(crate) fn relinked(
    shared: &Shared<'_>,
    path: &[u8],
    scope: cbfs_core::ScopeLabel,
) -> Result<Option<Work>> {
    let index = &shared.agent.index;
    let Some(noted) = Names::get(&index, path)? else {
        return Ok(None);
    };
    // A link's target was kept on the spool, or the link was refused.
    let Some((Some(data), file)) = noted.linked_file() else {
        return Ok(None);
    };
    let meta = Metadata {
        path: path.to_vec(),
        ..file
    };
    let stat = stat_of(&meta, path);
    Ok(Some(Work {
        entry: Entry {
            abs: PathBuf::from(String::from_utf8_lossy(path).into_owned()),
            rel: path.to_vec(),
            stat,
        },
        scope,
        hardlink_to: None,
        reseal: None,
        pushed: Some(Pushed {
            meta,
            data: Data::Spool(data),
            chunk: None,
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Memory(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Names for Memory {
        fn get(&self, path: &[u8]) -> Result<Option<Noted>> {
            Ok(self.0.get(path).map(|v| Noted::decode(v).unwrap()))
        }
        fn put(&mut self, path: &[u8], noted: &Noted) -> Result<()> {
            self.0.insert(path.to_vec(), noted.encode());
            Ok(())
        }
        fn any_below(&self, dir: &[u8]) -> Result<bool> {
            let mut below = dir.to_vec();
            below.push(b'/');
            Ok(self
                .0
                .range(below.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&below)))
        }
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn add(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], data: &[u8]) {
        let mut h = header(kind, data.len() as u64);
        // Names written raw, as an attacker would.
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &[u8], target: &[u8]) {
        let mut h = header(kind, 0);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
        h.as_gnu_mut().unwrap().linkname[..target.len()].copy_from_slice(target);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    /// Checks every entry of `stream` as a run does.
    fn check_all(stream: &[u8], prefix: Option<&[u8]>) -> Result<Vec<Checked>> {
        let mut checker = Checker::new(Memory::default(), prefix.map(<[u8]>::to_vec));
        let mut archive = tar::Archive::new(stream);
        let mut out = Vec::new();
        for entry in archive.entries().map_err(|e| refused(e.to_string()))? {
            let mut entry = entry.map_err(|e| refused(e.to_string()))?;
            let start = entry.raw_file_position();
            let size = entry.size();
            let got = io::copy(&mut entry, &mut io::sink()).map_err(|e| refused(e.to_string()))?;
            if got != size {
                return Err(refused("short".into()));
            }
            if let Some(c) = checker.check(&mut entry, start..start + size, true)? {
                out.push(c);
            }
        }
        Ok(out)
    }

    #[test]
    fn a_good_stream_passes_with_links_resolved_and_names_prefixed() {
        let good = tar_of(|b| {
            add(b, tar::EntryType::Directory, b"./docs/", b"");
            add(b, tar::EntryType::Regular, b"./docs/a.txt", b"hello");
            link(b, tar::EntryType::Symlink, b"./docs/l", b"a.txt");
            link(b, tar::EntryType::Link, b"./h", b"docs/a.txt");
        });
        let got = check_all(&good, Some(b"home/alice")).unwrap();
        let names: Vec<&[u8]> = got.iter().map(|c| c.name.as_slice()).collect();
        assert_eq!(
            names,
            [
                &b"home/alice/docs"[..],
                b"home/alice/docs/a.txt",
                b"home/alice/docs/l",
                b"home/alice/h"
            ]
        );
        let file = &got[1];
        assert_eq!(file.meta.kind, EntryKind::File);
        assert_eq!(file.data.end - file.data.start, 5);
        let hard = &got[3];
        assert_eq!(hard.link_to.as_deref(), Some(&b"home/alice/docs/a.txt"[..]));
        assert_eq!(
            hard.data, file.data,
            "a hard link reads its target's content"
        );
        assert_eq!(hard.stat.ino, file.stat.ino, "one inode for the link group");
        assert_eq!(hard.meta.path, b"home/alice/h");
        assert_eq!(
            got[2].meta.kind,
            EntryKind::Symlink {
                target: b"a.txt".to_vec()
            }
        );
    }

    #[test]
    fn unsafe_streams_are_refused() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "climbs",
                tar_of(|b| add(b, tar::EntryType::Regular, b"../evil", b"x")),
            ),
            (
                "absolute",
                tar_of(|b| add(b, tar::EntryType::Regular, b"/etc/evil", b"x")),
            ),
            (
                "link out",
                tar_of(|b| link(b, tar::EntryType::Symlink, b"l", b"../../etc/passwd")),
            ),
            (
                "absolute link",
                tar_of(|b| link(b, tar::EntryType::Symlink, b"l", b"/etc/passwd")),
            ),
            (
                "hard link to nothing",
                tar_of(|b| link(b, tar::EntryType::Link, b"h", b"etc/passwd")),
            ),
            (
                "hard link to a folder",
                tar_of(|b| {
                    add(b, tar::EntryType::Directory, b"d/", b"");
                    link(b, tar::EntryType::Link, b"h", b"d");
                }),
            ),
            (
                "through a link",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, b"d", b".");
                    link(b, tar::EntryType::Symlink, b"d/e", b"../..");
                }),
            ),
            (
                "below a link",
                tar_of(|b| {
                    link(b, tar::EntryType::Symlink, b"d", b"x");
                    add(b, tar::EntryType::Regular, b"d/f", b"x");
                }),
            ),
            (
                "a link over what came before",
                tar_of(|b| {
                    add(b, tar::EntryType::Regular, b"d/f", b"x");
                    link(b, tar::EntryType::Symlink, b"d", b"x");
                }),
            ),
            (
                "twice",
                tar_of(|b| {
                    add(b, tar::EntryType::Regular, b"f", b"x");
                    add(b, tar::EntryType::Regular, b"./f", b"y");
                }),
            ),
        ];
        for (what, stream) in cases {
            match check_all(&stream, None) {
                Err(Error::Refused(why)) => assert!(!why.is_empty(), "{what}"),
                other => panic!("{what}: {:?}", other.map(|v| v.len())),
            }
        }
    }

    #[test]
    fn pax_times_and_attributes_are_kept() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 3);
        h.set_path("f").unwrap();
        h.set_cksum();
        b.append_pax_extensions([
            ("mtime", &b"1700000000.123456789"[..]),
            ("SCHILY.xattr.user.note", b"hi"),
            ("uname", b"alice"),
        ])
        .unwrap();
        b.append(&h, &b"abc"[..]).unwrap();
        let stream = b.into_inner().unwrap();
        let got = check_all(&stream, None).unwrap();
        assert_eq!(
            got[0].meta.mtime,
            Timestamp::new(1_700_000_000, 123_456_789)
        );
        assert_eq!(got[0].stat.mtime_ns, 123_456_789);
        assert_eq!(got[0].meta.uname, "alice");
        assert_eq!(
            got[0].meta.xattrs.get(&b"user.note"[..]).map(Vec::as_slice),
            Some(&b"hi"[..])
        );
    }

    #[test]
    fn pax_times_parse_to_the_nanosecond_both_sides_of_the_epoch() {
        assert_eq!(pax_time("12"), Some(Timestamp::new(12, 0)));
        assert_eq!(pax_time("12.5"), Some(Timestamp::new(12, 500_000_000)));
        assert_eq!(pax_time("-1.25"), Some(Timestamp::new(-2, 750_000_000)));
        assert_eq!(pax_time("-3"), Some(Timestamp::new(-3, 0)));
        assert_eq!(
            pax_time("1.1234567891"),
            Some(Timestamp::new(1, 123_456_789))
        );
        for bad in ["", ".5", "1.x", "x", "1e3", "--1"] {
            assert_eq!(pax_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn noted_names_round_trip() {
        let meta = Metadata::new(b"a/b".to_vec(), EntryKind::File);
        for n in [
            Noted::File {
                data: Some(512..1024),
                meta: meta.clone(),
            },
            Noted::File {
                data: None,
                meta: meta.clone(),
            },
            Noted::Dir,
            Noted::Symlink,
            Noted::Other,
            Noted::Link {
                target: b"a/b".to_vec(),
                data: 0..7,
                meta,
            },
        ] {
            assert_eq!(Noted::decode(&n.encode()).unwrap(), n);
        }
    }
}
