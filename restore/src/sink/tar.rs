//! A pax tar stream that GNU tar and bsdtar extract with real names, modes,
//! owners, sub-second times, links, xattrs and special files.
//!
//! Each entry is a ustar header, preceded where needed by a pax extended
//! header (`path`, `linkpath`, `size`, `uid`, `gid`, `uname`, `gname`,
//! `mtime`, `SCHILY.xattr.<name>`) and, for names too long for ustar that
//! are not plain ASCII, a GNU long-name (`L`) or long-link (`K`) block, as
//! GNU tar writes them. (A pax `path` must be UTF-8, and bsdtar refuses to
//! convert a non-ASCII one in the C locale; `hdrcharset=BINARY` would fix
//! that, but GNU tar 1.34 warns about it. A GNU block carries raw bytes that
//! both read as they are.)
//!
//! Directories that received an entry after extraction has left them (hard
//! links come last) are written once more at the end, so that GNU tar,
//! which sets a directory's time as it leaves it, restores their times.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use cbfs_format::{EntryKind, Metadata};
use tar::{EntryType, Header};

use super::Sink;
use crate::error::{Error, Result, lossy};
use crate::paths::{ancestors, sort_key};

/// Files up to this size are spooled in memory; larger ones in a temporary file.
const MEMORY_SPOOL: usize = 1 << 20;
/// Largest size in an 11-digit octal field.
const MAX_OCTAL_11: u64 = 0o77_777_777_777;
/// Largest id in a 7-digit octal field.
const MAX_OCTAL_7: u64 = 0o7_777_777;

enum Spool {
    Memory(Vec<u8>),
    File {
        file: File,
        len: u64,
    },
    /// Written straight into a rewindable output, from its header at
    /// `start`; taken back by truncating there if it fails.
    Direct {
        start: u64,
        len: u64,
    },
}

/// An output that an entry can be taken back from: a file.
pub trait Rewind: Write {
    /// Where the next byte goes.
    fn position(&mut self) -> io::Result<u64>;
    /// Drops everything from `pos` on; the next byte goes at `pos`.
    fn rewind_to(&mut self, pos: u64) -> io::Result<()>;
}

impl Rewind for io::BufWriter<File> {
    fn position(&mut self) -> io::Result<u64> {
        self.stream_position()
    }

    fn rewind_to(&mut self, pos: u64) -> io::Result<()> {
        self.flush()?;
        let file = self.get_mut();
        file.set_len(pos)?;
        file.seek(SeekFrom::Start(pos)).map(drop)
    }
}

/// The [`Rewind`] methods of a sink's writer, when it has them.
struct Rewinder<W> {
    position: fn(&mut W) -> io::Result<u64>,
    rewind_to: fn(&mut W, u64) -> io::Result<()>,
}

/// Writes restored entries as one pax tar stream to any writer (a file,
/// standard output).
///
/// A file's content is spooled (in memory up to 1 MiB, else in an unnamed
/// temporary file) until it has fully authenticated, and only then appended:
/// a damaged member never leaves a partial entry in the tar. A tar written
/// to a file ([`TarSink::rewindable`]) takes larger files straight into the
/// tar instead, and cuts a failed one off again.
pub struct TarSink<W: Write> {
    builder: Option<tar::Builder<W>>,
    target: String,
    spool_dir: Option<PathBuf>,
    rewinder: Option<Rewinder<W>>,
    /// The output could not be put back after a failed entry.
    broken: Option<io::Error>,
    pending: Option<(Metadata, Spool)>,
    warnings: Vec<String>,
    finished: bool,
    /// Directories written so far, to write again at the end those that
    /// received an entry out of path order (hard links): GNU tar sets a
    /// directory's time when extraction leaves it.
    dirs: HashMap<Vec<u8>, Metadata>,
    touched: BTreeSet<Vec<u8>>,
    last: Vec<u8>,
    /// Flush the writer after every entry.
    flush_each: bool,
}

impl<W: Write> TarSink<W> {
    /// Flushes the writer after every entry: for a pipe (`-o -`), so that a
    /// consumer that is killed has every finished entry whole, not the end
    /// of the last one still in a buffer.
    pub fn flush_each_entry(mut self) -> Self {
        self.flush_each = true;
        self
    }

    fn entry_done(&mut self) -> Result<()> {
        if !self.flush_each {
            return Ok(());
        }
        let target = self.target.clone();
        self.builder()
            .get_mut()
            .flush()
            .map_err(|e| fatal(&target, e))
    }

    fn note_order(&mut self, meta: &Metadata) {
        let out_of_order = sort_key(&meta.path) < sort_key(&self.last);
        if (matches!(meta.kind, EntryKind::Hardlink { .. }) || out_of_order)
            && let Some(parent) = ancestors(&meta.path).last()
        {
            self.touched.insert(parent.to_vec());
        }
        if meta.kind == EntryKind::Dir && !self.finished {
            self.dirs.insert(meta.path.clone(), meta.clone());
        }
        self.last = meta.path.clone();
    }

    /// A tar written to `out`; `target` names it in errors (a path, `stdout`).
    pub fn new(out: W, target: impl Into<String>) -> Self {
        let mut builder = tar::Builder::new(out);
        builder.mode(tar::HeaderMode::Complete);
        TarSink {
            builder: Some(builder),
            target: target.into(),
            spool_dir: None,
            rewinder: None,
            broken: None,
            pending: None,
            warnings: Vec::new(),
            finished: false,
            dirs: HashMap::new(),
            touched: BTreeSet::new(),
            last: Vec::new(),
            flush_each: false,
        }
    }

    /// A tar written to a file: files over 1 MiB go straight into it, with
    /// no spool, and a file that fails is cut off again.
    pub fn rewindable(out: W, target: impl Into<String>) -> Self
    where
        W: Rewind,
    {
        let mut sink = Self::new(out, target);
        sink.rewinder = Some(Rewinder {
            position: W::position,
            rewind_to: W::rewind_to,
        });
        sink
    }

    /// Cuts the output back to `start` (a failed entry written straight in).
    fn take_back(&mut self, start: u64) {
        let Some(r) = &self.rewinder else { return };
        let rewind_to = r.rewind_to;
        if let Err(e) = rewind_to(self.builder().get_mut(), start) {
            self.broken.get_or_insert(e);
        }
    }

    /// Fails if the output could not be put back after a failed entry.
    fn check_broken(&self) -> Result<()> {
        match &self.broken {
            Some(e) => Err(fatal(
                &self.target,
                io::Error::new(e.kind(), format!("cannot take a failed entry back: {e}")),
            )),
            None => Ok(()),
        }
    }

    /// Spools large files in `dir` instead of the system's temporary directory.
    pub fn with_spool_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.spool_dir = Some(dir.into());
        self
    }

    /// Writes the end-of-archive marker (if [`Sink::finish`] was not called)
    /// and gives the writer back.
    pub fn into_inner(mut self) -> Result<W> {
        let builder = self
            .builder
            .take()
            .expect("builder present until into_inner");
        let target = self.target.clone();
        builder.into_inner().map_err(|e| fatal(&target, e))
    }

    fn builder(&mut self) -> &mut tar::Builder<W> {
        self.builder
            .as_mut()
            .expect("builder present until into_inner")
    }

    fn append(&mut self, header: &Header, data: impl Read) -> Result<()> {
        let target = self.target.clone();
        self.builder()
            .append(header, data)
            .map_err(|e| fatal(&target, e))
    }

    /// Writes the extension blocks and returns the ustar header for `meta`.
    fn write_headers(&mut self, meta: &Metadata) -> Result<Header> {
        self.note_order(meta);
        let (header, ext) = headers(meta, &mut self.warnings)?;
        for (h, data) in ext {
            self.append(&h, &data[..])?;
        }
        Ok(header)
    }
}

fn fatal(target: &str, source: io::Error) -> Error {
    Error::Output {
        target: target.to_owned(),
        source,
        fatal: true,
    }
}

fn spool_err(source: io::Error) -> Error {
    Error::Output {
        target: "the spool file".into(),
        source,
        fatal: false,
    }
}

impl<W: Write> Sink for TarSink<W> {
    fn carries_links_that_leave(&self) -> bool {
        true
    }

    fn begin_file(&mut self, meta: &Metadata) -> Result<()> {
        self.abort_file();
        self.check_broken()?;
        let spool = match &self.rewinder {
            Some(r) if meta.size > MEMORY_SPOOL as u64 => {
                let position = r.position;
                let target = self.target.clone();
                let start = position(self.builder().get_mut()).map_err(|e| fatal(&target, e))?;
                // The entry is in the tar from here on; a failure cuts it off.
                self.pending = Some((meta.clone(), Spool::Direct { start, len: 0 }));
                let written = self
                    .write_headers(meta)
                    .and_then(|header| self.append(&header, io::empty()));
                if written.is_err() {
                    self.abort_file();
                }
                return written;
            }
            _ => Spool::Memory(Vec::new()),
        };
        self.pending = Some((meta.clone(), spool));
        Ok(())
    }

    fn write_content(&mut self, data: &[u8]) -> Result<()> {
        let spool_dir = self.spool_dir.clone();
        let target = self.target.clone();
        let Some((meta, spool)) = self.pending.as_mut() else {
            return Err(Error::Usage("write_content without begin_file".into()));
        };
        if let Spool::Direct { len, .. } = spool {
            if *len + data.len() as u64 > meta.size {
                return Err(Error::Unsupported {
                    path: lossy(&meta.path),
                    reason: format!("more content than its size of {}", meta.size),
                });
            }
            *len += data.len() as u64;
            let builder = self.builder.as_mut().expect("builder present");
            return builder
                .get_mut()
                .write_all(data)
                .map_err(|e| fatal(&target, e));
        }
        if let Spool::Memory(buf) = spool {
            if buf.len() + data.len() <= MEMORY_SPOOL {
                buf.extend_from_slice(data);
                return Ok(());
            }
            let mut file = match &spool_dir {
                Some(d) => tempfile::tempfile_in(d),
                None => tempfile::tempfile(),
            }
            .map_err(spool_err)?;
            file.write_all(buf).map_err(spool_err)?;
            let len = buf.len() as u64;
            *spool = Spool::File { file, len };
        }
        if let Spool::File { file, len } = spool {
            file.write_all(data).map_err(spool_err)?;
            *len += data.len() as u64;
        }
        Ok(())
    }

    fn commit_file(&mut self) -> Result<()> {
        self.check_broken()?;
        let Some((meta, spool)) = self.pending.take() else {
            return Err(Error::Usage("commit_file without begin_file".into()));
        };
        let len = match &spool {
            Spool::Memory(b) => b.len() as u64,
            Spool::File { len, .. } | Spool::Direct { len, .. } => *len,
        };
        if len != meta.size {
            if let Spool::Direct { start, .. } = spool {
                self.take_back(start);
            }
            return Err(Error::Unsupported {
                path: lossy(&meta.path),
                reason: format!("{len} content bytes for a size of {}", meta.size),
            });
        }
        if let Spool::Direct { .. } = spool {
            let pad = (512 - (len % 512) as usize) % 512;
            let target = self.target.clone();
            self.builder()
                .get_mut()
                .write_all(&[0u8; 512][..pad])
                .map_err(|e| fatal(&target, e))?;
            return self.entry_done();
        }
        let header = self.write_headers(&meta)?;
        match spool {
            Spool::Memory(buf) => self.append(&header, &buf[..])?,
            Spool::File { mut file, len } => {
                file.seek(SeekFrom::Start(0)).map_err(spool_err)?;
                let mut exact = ExactReader {
                    inner: io::BufReader::with_capacity(1 << 20, file.take(len)),
                    left: len,
                };
                self.append(&header, &mut exact)?;
                if exact.left != 0 {
                    return Err(spool_err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the spool file shrank",
                    )));
                }
            }
            Spool::Direct { .. } => unreachable!("handled above"),
        }
        self.entry_done()
    }

    fn abort_file(&mut self) {
        // Dropping a spool frees the memory or the unnamed temporary file; a
        // file written straight into the tar is cut off.
        if let Some((_, Spool::Direct { start, .. })) = self.pending.take() {
            self.take_back(start);
        }
    }

    fn add_entry(&mut self, meta: &Metadata) -> Result<()> {
        self.check_broken()?;
        if meta.kind == EntryKind::File {
            self.begin_file(meta)?;
            return self.commit_file();
        }
        let header = self.write_headers(meta)?;
        self.append(&header, io::empty())?;
        self.entry_done()
    }

    fn finish(&mut self) -> Result<()> {
        self.abort_file();
        self.check_broken()?;
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        let mut again: Vec<Metadata> = std::mem::take(&mut self.touched)
            .iter()
            .filter_map(|p| self.dirs.get(p).cloned())
            .collect();
        again.sort_by(|a, b| sort_key(&a.path).cmp(&sort_key(&b.path)));
        for meta in again {
            let header = self.write_headers(&meta)?;
            self.append(&header, io::empty())?;
        }
        let target = self.target.clone();
        let b = self.builder();
        b.finish().map_err(|e| fatal(&target, e))?;
        b.get_mut().flush().map_err(|e| fatal(&target, e))
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

/// Fails the copy if the spool gives fewer bytes than the header announced.
struct ExactReader<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "spool ended early",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Splits a name into ustar `prefix` and `name` fields, if it fits.
fn split_ustar(p: &[u8]) -> Option<(&[u8], &[u8])> {
    if p.len() <= 100 {
        return Some((&[], p));
    }
    p.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'/')
        .map(|(i, _)| i)
        .find(|&i| i <= 155 && p.len() - i - 1 <= 100 && p.len() - i - 1 > 0)
        .map(|i| (&p[..i], &p[i + 1..]))
}

fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

/// One pax record: `<len> <key>=<value>\n`, the length counting itself.
fn pax_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let rest = 3 + key.len() + value.len();
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// The pax `mtime` value: seconds and exactly nine fraction digits, with a
/// leading `-` before 1970.
fn pax_time(secs: i64, nanos: u32) -> String {
    if secs < 0 && nanos > 0 {
        let whole = -(secs + 1);
        format!("-{whole}.{:09}", 1_000_000_000 - nanos)
    } else if nanos > 0 {
        format!("{secs}.{nanos:09}")
    } else {
        secs.to_string()
    }
}

fn extension_header(name: &[u8], kind: EntryType, len: usize) -> Header {
    let mut h = Header::new_ustar();
    put(&mut h.as_ustar_mut().expect("ustar").name, name);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(len as u64);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

type Extensions = Vec<(Header, Vec<u8>)>;

/// The ustar header of `meta`, and the extension blocks that must precede it.
fn headers(meta: &Metadata, warnings: &mut Vec<String>) -> Result<(Header, Extensions)> {
    let mut ext: Extensions = Vec::new();
    let mut pax = Vec::new();
    let mut name = meta.path.clone();
    if meta.kind == EntryKind::Dir {
        name.push(b'/');
    }
    let mut h = Header::new_ustar();
    {
        let ustar = h.as_ustar_mut().expect("ustar");
        match split_ustar(&name) {
            Some((prefix, short)) => {
                put(&mut ustar.prefix, prefix);
                put(&mut ustar.name, short);
            }
            None => {
                put(&mut ustar.name, &name);
                if name.is_ascii() {
                    pax_record(&mut pax, "path", &name);
                } else {
                    let mut data = name.clone();
                    data.push(0);
                    ext.push((
                        extension_header(b"././@LongLink", EntryType::GNULongName, data.len()),
                        data,
                    ));
                }
            }
        }
    }
    let (kind, link) = match &meta.kind {
        EntryKind::File => (EntryType::Regular, None),
        EntryKind::Dir => (EntryType::Directory, None),
        EntryKind::Symlink { target } => (EntryType::Symlink, Some(target)),
        EntryKind::Hardlink { target } => (EntryType::Link, Some(target)),
        EntryKind::CharDevice { .. } => (EntryType::Char, None),
        EntryKind::BlockDevice { .. } => (EntryType::Block, None),
        EntryKind::Fifo => (EntryType::Fifo, None),
    };
    if let Some(target) = link {
        put(&mut h.as_old_mut().linkname, target);
        if target.len() > 100 {
            if target.is_ascii() {
                pax_record(&mut pax, "linkpath", target);
            } else {
                let mut data = target.clone();
                data.push(0);
                ext.push((
                    extension_header(b"././@LongLink", EntryType::GNULongLink, data.len()),
                    data,
                ));
            }
        }
    }
    if meta.size > MAX_OCTAL_11 {
        pax_record(&mut pax, "size", meta.size.to_string().as_bytes());
    }
    for (key, id) in [("uid", meta.uid), ("gid", meta.gid)] {
        if u64::from(id) > MAX_OCTAL_7 {
            pax_record(&mut pax, key, id.to_string().as_bytes());
        }
    }
    for (key, owner) in [("uname", &meta.uname), ("gname", &meta.gname)] {
        if owner.len() > 31 || !owner.is_ascii() {
            pax_record(&mut pax, key, owner.as_bytes());
        }
    }
    let t = meta.mtime;
    if t.nanos != 0 || t.secs < 0 || t.secs as u64 > MAX_OCTAL_11 {
        pax_record(&mut pax, "mtime", pax_time(t.secs, t.nanos).as_bytes());
    }
    for (xname, value) in &meta.xattrs {
        match std::str::from_utf8(xname) {
            Ok(n) if !n.contains('=') => {
                pax_record(&mut pax, &format!("SCHILY.xattr.{n}"), value);
            }
            _ => warnings.push(format!(
                "{}: xattr {:?} left out of the tar: its name is not UTF-8 or holds '='",
                lossy(&meta.path),
                lossy(xname)
            )),
        }
    }
    if !pax.is_empty() {
        let len = pax.len();
        ext.push((
            extension_header(b"././@PaxHeader", EntryType::XHeader, len),
            pax,
        ));
    }
    h.set_mode(meta.mode);
    h.set_uid(u64::from(meta.uid));
    h.set_gid(u64::from(meta.gid));
    h.set_size(if meta.kind == EntryKind::File {
        meta.size
    } else {
        0
    });
    h.set_mtime(u64::try_from(t.secs).unwrap_or(0));
    h.set_entry_type(kind);
    {
        let ustar = h.as_ustar_mut().expect("ustar");
        put(&mut ustar.uname, meta.uname.as_bytes());
        put(&mut ustar.gname, meta.gname.as_bytes());
    }
    if let EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } =
        meta.kind
    {
        h.set_device_major(major)
            .map_err(|e| unsupported(meta, e))?;
        h.set_device_minor(minor)
            .map_err(|e| unsupported(meta, e))?;
    } else {
        h.set_device_major(0).map_err(|e| unsupported(meta, e))?;
        h.set_device_minor(0).map_err(|e| unsupported(meta, e))?;
    }
    h.set_cksum();
    Ok((h, ext))
}

fn unsupported(meta: &Metadata, e: io::Error) -> Error {
    Error::Unsupported {
        path: lossy(&meta.path),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, size: u64) -> Metadata {
        let mut m = Metadata::new(path, EntryKind::File);
        m.size = size;
        m
    }

    /// Committed, failed and unfinished files, large and small.
    fn feed(sink: &mut dyn Sink) {
        let big = |seed: u8| -> Vec<u8> { (0..(2 << 20) + 7).map(|i| (i as u8) ^ seed).collect() };
        sink.add_entry(&Metadata::new("d", EntryKind::Dir)).unwrap();
        sink.begin_file(&file("d/a", 3)).unwrap();
        sink.write_content(b"abc").unwrap();
        sink.commit_file().unwrap();
        // Fails halfway (the member did not authenticate).
        let b = big(1);
        sink.begin_file(&file("d/b1", b.len() as u64)).unwrap();
        sink.write_content(&b[..1 << 20]).unwrap();
        sink.write_content(&b[1 << 20..(3 << 19)]).unwrap();
        sink.abort_file();
        // Gives fewer bytes than its size: refused at commit.
        sink.begin_file(&file("d/b2", b.len() as u64)).unwrap();
        sink.write_content(&b[..b.len() - 1]).unwrap();
        assert!(sink.commit_file().is_err());
        let c = big(3);
        sink.begin_file(&file("d/b3", c.len() as u64)).unwrap();
        sink.write_content(&c).unwrap();
        sink.commit_file().unwrap();
        // Begun, never committed: finishing drops it.
        sink.begin_file(&file("d/b4", c.len() as u64)).unwrap();
        sink.write_content(&c[..10]).unwrap();
        sink.finish().unwrap();
    }

    #[test]
    fn a_rewindable_tar_equals_the_spooled_one() {
        let mut spooled = TarSink::new(Vec::new(), "memory");
        feed(&mut spooled);
        let spooled = spooled.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.tar");
        let out = io::BufWriter::new(File::create(&path).unwrap());
        let mut direct = TarSink::rewindable(out, "out.tar");
        feed(&mut direct);
        direct.into_inner().unwrap().flush().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert!(written == spooled, "the two tars differ");

        let mut archive = tar::Archive::new(&written[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["d/", "d/a", "d/b3"]);
    }

    #[test]
    fn a_rewindable_tar_refuses_more_content_than_the_size() {
        let dir = tempfile::tempdir().unwrap();
        let out = io::BufWriter::new(File::create(dir.path().join("t.tar")).unwrap());
        let mut sink = TarSink::rewindable(out, "t.tar");
        sink.begin_file(&file("x", 2 << 20)).unwrap();
        sink.write_content(&vec![0u8; 2 << 20]).unwrap();
        let err = sink.write_content(b"!").unwrap_err();
        assert!(err.to_string().contains("more content"), "{err}");
        sink.abort_file();
        sink.finish().unwrap();
        let len = sink
            .into_inner()
            .unwrap()
            .into_inner()
            .unwrap()
            .metadata()
            .unwrap()
            .len();
        assert_eq!(len, 1024, "only the end-of-archive blocks are left");
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for value_len in [0usize, 1, 4, 5, 6, 90, 91, 92, 93, 994, 995, 996, 9_990] {
            let mut out = Vec::new();
            pax_record(&mut out, "path", &vec![b'x'; value_len]);
            let (len, _) = std::str::from_utf8(&out).unwrap().split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), out.len(), "{value_len}");
        }
    }

    #[test]
    fn times_and_splits() {
        assert_eq!(pax_time(1_700_000_000, 5), "1700000000.000000005");
        assert_eq!(pax_time(-2, 500_000_000), "-1.500000000");
        assert_eq!(pax_time(-2, 0), "-2");
        let long = [b"d".repeat(120), b"/".to_vec(), b"f".repeat(90)].concat();
        let (prefix, name) = split_ustar(&long).unwrap();
        assert_eq!((prefix.len(), name.len()), (120, 90));
        assert!(split_ustar(&b"f".repeat(101)).is_none());
    }
}
