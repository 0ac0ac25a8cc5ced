//! Where objects come from: the [`ObjectSource`] trait, the local
//! directory store [`LocalDir`], and [`Buffered`] reads of large objects.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A reader that can also seek; what [`ObjectSource::open`] returns.
pub trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

/// Read access to a store's objects, by key (`segments/<id>.tar`, see
/// `cbfs_format::layout`): a local directory ([`LocalDir`]), an S3 bucket
/// (`S3Source` with the `s3` feature, or the tiering agent's store), or a
/// gateway. Shared by the threads of a restore: each opens its own readers.
///
/// A restore reads whole small objects (keysets, manifests, summaries,
/// lockboxes) and, of segments, only the byte ranges it needs: what
/// [`open`](Self::open) returns reads by [`get_range`](Self::get_range).
///
/// Implementations must report a missing object as [`Error::Missing`]
/// naming the key, a failure worth retrying (network, 5xx, throttling) as
/// [`Error::Unavailable`], and every other failure with the key too.
pub trait ObjectSource: Sync {
    /// What the store is, for messages (never a credential).
    fn describe(&self) -> String;
    /// The keys that start with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// A whole (small) object: a keyset, manifest, summary or lockbox.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Bytes `range` of an object; shorter only at the object's end.
    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>>;
    /// An object's size in bytes.
    fn size(&self, key: &str) -> Result<u64>;
    /// Many ranges of one object, each as [`get_range`](Self::get_range)
    /// gives it, in few requests; `None` if this source has no cheaper way
    /// than a reader (a local directory, where a read is a system call).
    fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Option<Vec<Vec<u8>>>> {
        let _ = (key, ranges);
        Ok(None)
    }
    /// Whether each read of this source is a request of its own (a store
    /// over the network, or through a client library), as with the default
    /// [`open`](Self::open). A restore then fetches the bytes of the members
    /// a worker decodes together as they are laid out, in one request or a
    /// few, rather than through a reader that guesses how far to read
    /// ahead: two workers reading one segment that way each fetched most of
    /// it. `false` where a read is a system call (a local directory read
    /// as files; the agent's store client reads even a local store by
    /// requests, and says `true`).
    fn reads_by_request(&self) -> bool {
        true
    }
    /// A large object (a segment), read with seeks, by ranges.
    fn open(&self, key: &str) -> Result<Box<dyn ReadSeek + '_>> {
        Ok(Box::new(Buffered::remote(ObjectRanges {
            source: self,
            key: key.to_owned(),
            size: None,
        })))
    }
    /// Bytes read from the store so far, by everything this source did.
    fn fetched(&self) -> u64 {
        0
    }
}

/// A reader of one object that serves some of its ranges from memory
/// (read before, together, with [`ObjectSource::get_ranges`]) and the rest
/// from `inner`.
pub(crate) struct Overlay<'a> {
    inner: &'a mut (dyn ReadSeek + 'a),
    /// Bytes of the object by their offset.
    held: &'a std::collections::BTreeMap<u64, Vec<u8>>,
    pos: u64,
}

impl<'a> Overlay<'a> {
    pub(crate) fn new(
        inner: &'a mut (dyn ReadSeek + 'a),
        held: &'a std::collections::BTreeMap<u64, Vec<u8>>,
    ) -> Self {
        Overlay {
            inner,
            held,
            pos: 0,
        }
    }
}

impl Read for Overlay<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some((start, bytes)) = self.held.range(..=self.pos).next_back() {
            let off = (self.pos - start) as usize;
            if off < bytes.len() {
                let n = (bytes.len() - off).min(out.len());
                out[..n].copy_from_slice(&bytes[off..off + n]);
                self.pos += n as u64;
                return Ok(n);
            }
        }
        self.inner.seek(SeekFrom::Start(self.pos))?;
        let n = self.inner.read(out)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Overlay<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "seek to a negative or overflowing position",
                )
            })?,
            SeekFrom::End(_) => self.inner.seek(to)?,
        };
        Ok(self.pos)
    }
}

/// Positional reads: what [`Buffered`] reads from.
pub trait ReadAt: Send {
    /// Reads up to `buf.len()` bytes at `offset`; 0 at the end.
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// The total length.
    fn total_len(&mut self) -> io::Result<u64>;
}

impl ReadAt for File {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
    fn total_len(&mut self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// An object of a source, read by ranges.
struct ObjectRanges<'s, S: ObjectSource + ?Sized> {
    source: &'s S,
    key: String,
    size: Option<u64>,
}

impl<S: ObjectSource + ?Sized> ReadAt for ObjectRanges<'_, S> {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let size = self.total_len()?;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let end = size.min(offset.saturating_add(buf.len() as u64));
        let bytes = self
            .source
            .get_range(&self.key, offset..end)
            .map_err(io::Error::other)?;
        if bytes.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: the store returned no bytes at offset {offset}",
                    self.key
                ),
            ));
        }
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        Ok(n)
    }

    fn total_len(&mut self) -> io::Result<u64> {
        if let Some(n) = self.size {
            return Ok(n);
        }
        let n = self.source.size(&self.key).map_err(io::Error::other)?;
        self.size = Some(n);
        Ok(n)
    }
}

/// A store kept in a local directory, with the layout of `cbfs_format::layout`:
/// the default store kind of the tiering agent.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store in `root`. Fails if it is not a directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let meta =
            std::fs::metadata(&root).map_err(|e| Error::read(root.display().to_string(), e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "store {} is not a directory",
                root.display()
            )));
        }
        Ok(LocalDir { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(key
            .split('/')
            .fold(self.root.clone(), |p, part| p.join(part)))
    }
}

/// Accepts the keys a store accepts: relative, `/`-separated parts of ASCII
/// letters, digits, `-`, `_` and `.`, none starting with `.`.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = |reason| Error::BadKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    for part in key.split('/') {
        if part.is_empty() {
            return Err(bad(
                "it has an empty part (leading, trailing or doubled '/')",
            ));
        }
        if part.starts_with('.') {
            return Err(bad("a part starts with '.'"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "only ASCII letters, digits, '-', '_', '.' and '/' are allowed",
            ));
        }
    }
    Ok(())
}

/// Names a store's own bookkeeping uses, never objects: hidden files
/// (partial downloads, the staging area) and `NAME#DIGITS` staging files.
fn is_object_name(name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    let staging = name
        .rsplit_once('#')
        .is_some_and(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    !staging
}

impl ObjectSource for LocalDir {
    fn describe(&self) -> String {
        format!("directory {}", self.root.display())
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // Walk the deepest directory the prefix names in full.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_owned())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::read(format!("{key_prefix}/"), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::read(format!("{key_prefix}/"), e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !is_object_name(&name) {
                    continue;
                }
                let key = if key_prefix.is_empty() {
                    name
                } else {
                    format!("{key_prefix}/{name}")
                };
                let file_type = entry.file_type().map_err(|e| Error::read(key.clone(), e))?;
                if file_type.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((entry.path(), key));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) && check_key(&key).is_ok()
                {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path_of(key)?;
        std::fs::read(path).map_err(|e| Error::read(key, e))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        let path = self.path_of(key)?;
        let file = File::open(path).map_err(|e| Error::read(key, e))?;
        let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(usize::MAX);
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match FileExt::read_at(&file, &mut buf[got..], range.start + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::read(key, e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn size(&self, key: &str) -> Result<u64> {
        let path = self.path_of(key)?;
        std::fs::metadata(path)
            .map(|m| m.len())
            .map_err(|e| Error::read(key, e))
    }

    fn reads_by_request(&self) -> bool {
        false
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadSeek + '_>> {
        let path = self.path_of(key)?;
        let file = File::open(path).map_err(|e| Error::read(key, e))?;
        Ok(Box::new(SegmentFile::new(file)))
    }
}

/// A buffered reader over positional reads that keeps its buffer across
/// seeks.
///
/// A restore reads members by offset: in the order they were written while
/// planning, in path order while writing. `std::io::BufReader` drops its
/// buffer on every seek, so each small member cost a fresh read. Here a seek
/// inside the buffer costs nothing, a seek is never a system call or a
/// request, and the first read after a jump is short: most members are a few
/// KiB, and reading on grows the reads again (up to the capacity).
pub struct Buffered<R: ReadAt> {
    inner: R,
    buf: Box<[u8]>,
    /// Offset of `buf[0]`.
    start: u64,
    /// Valid bytes in `buf`.
    len: usize,
    /// The reader's position.
    pos: u64,
    /// Bytes the next fill asks for.
    fill: usize,
    first_fill: usize,
    /// A forward jump of at most this many bytes past the buffer reads on
    /// as if sequential (the fills keep growing, the gap is not read).
    skip: u64,
}

/// A segment file of a local store, read with `pread`.
pub type SegmentFile = Buffered<File>;

impl Buffered<File> {
    /// Reads `file` from its start: fills of 16 KiB growing to 128 KiB.
    pub fn new(file: File) -> Self {
        Buffered::with_sizes(file, 16 << 10, 128 << 10)
    }
}

impl<R: ReadAt> Buffered<R> {
    /// Reads `inner` with fills of `first_fill` bytes after a jump, growing
    /// to `capacity` while the reads go on sequentially.
    pub fn with_sizes(inner: R, first_fill: usize, capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Buffered {
            inner,
            buf: vec![0u8; capacity].into_boxed_slice(),
            start: 0,
            len: 0,
            pos: 0,
            fill: first_fill.clamp(1, capacity),
            first_fill: first_fill.clamp(1, capacity),
            skip: 0,
        }
    }

    /// For an object behind a network: a request costs far more than its
    /// bytes, so fills start at 64 KiB and grow to 4 MiB, and a jump forward
    /// of up to 1 MiB keeps them growing. Reading the heads of a segment's
    /// members one after another (a restore's first pass) then takes a few
    /// long requests rather than one short request per member.
    pub fn remote(inner: R) -> Self {
        let mut b = Buffered::with_sizes(inner, 64 << 10, 4 << 20);
        b.skip = 1 << 20;
        b
    }

    /// The buffered bytes at the position, if any.
    fn buffered(&self) -> &[u8] {
        match self.pos.checked_sub(self.start) {
            Some(off) if off < self.len as u64 => &self.buf[off as usize..self.len],
            _ => &[],
        }
    }
}

impl<R: ReadAt> Read for Buffered<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let have = self.buffered();
        if !have.is_empty() {
            let n = have.len().min(out.len());
            out[..n].copy_from_slice(&have[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if out.len() >= self.buf.len() {
            let n = self.inner.read_at(out, self.pos)?;
            self.pos += n as u64;
            return Ok(n);
        }
        // Reading on from the end of the buffer (or a little past it) is
        // sequential: read more.
        let end = self.start + self.len as u64;
        let sequential = self.len > 0 && self.pos >= end && self.pos - end <= self.skip;
        self.fill = if sequential {
            (self.fill * 2).min(self.buf.len())
        } else {
            self.first_fill
        };
        self.len = 0;
        self.start = self.pos;
        let want = self.fill.max(out.len()).min(self.buf.len());
        self.len = self.inner.read_at(&mut self.buf[..want], self.pos)?;
        let n = self.len.min(out.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: ReadAt> Seek for Buffered<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.inner.total_len()?.checked_add_signed(d),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )
        })?;
        Ok(self.pos)
    }

    fn stream_position(&mut self) -> io::Result<u64> {
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    /// A read of `len` bytes at `at` (or from where the last read ended).
    #[derive(Clone, Debug)]
    struct Step {
        at: Option<u64>,
        len: usize,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            proptest::option::of(0u64..300_000),
            prop_oneof![1usize..64, 1usize..20_000, 100_000usize..200_000],
        )
            .prop_map(|(at, len)| Step { at, len })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Any mix of seeks and reads gives the bytes a plain cursor gives,
        /// including reads that straddle the buffer, bypass it, or start
        /// past the end of the file.
        #[test]
        fn segment_file_reads_like_a_cursor(
            size in 0usize..260_000,
            steps in proptest::collection::vec(step(), 1..40),
        ) {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("seg");
            std::fs::write(&path, &data).unwrap();
            let mut got = SegmentFile::new(File::open(&path).unwrap());
            let mut want = std::io::Cursor::new(&data);
            for s in steps {
                if let Some(at) = s.at {
                    prop_assert_eq!(got.seek(SeekFrom::Start(at)).unwrap(), at);
                    want.seek(SeekFrom::Start(at)).unwrap();
                }
                let mut a = vec![0u8; s.len];
                let mut b = vec![0u8; s.len];
                let n = read_full(&mut got, &mut a);
                let m = read_full(&mut want, &mut b);
                prop_assert_eq!(n, m);
                prop_assert_eq!(&a[..n], &b[..m]);
                prop_assert_eq!(got.stream_position().unwrap(), want.position());
            }
            let end = got.seek(SeekFrom::End(-1)).ok();
            prop_assert_eq!(end, (size as u64).checked_sub(1));
        }
    }

    /// Bytes in memory, read by ranges, counting the reads.
    struct Counted {
        data: Vec<u8>,
        reads: usize,
    }

    impl ReadAt for Counted {
        fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.reads += 1;
            let from = (offset as usize).min(self.data.len());
            let n = buf.len().min(self.data.len() - from);
            buf[..n].copy_from_slice(&self.data[from..from + n]);
            Ok(n)
        }
        fn total_len(&mut self) -> io::Result<u64> {
            Ok(self.data.len() as u64)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// A remote reader, which reads on through short jumps forward,
        /// gives the bytes a plain cursor gives.
        #[test]
        fn a_remote_reader_reads_like_a_cursor(
            size in 0usize..3_000_000,
            steps in proptest::collection::vec(
                (proptest::option::of(0u64..3_100_000), 1usize..300_000), 1..40),
        ) {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 251) as u8).collect();
            let mut got = Buffered::remote(Counted { data: data.clone(), reads: 0 });
            let mut want = std::io::Cursor::new(&data);
            for (at, len) in steps {
                if let Some(at) = at {
                    prop_assert_eq!(got.seek(SeekFrom::Start(at)).unwrap(), at);
                    want.seek(SeekFrom::Start(at)).unwrap();
                }
                let mut a = vec![0u8; len];
                let mut b = vec![0u8; len];
                let n = read_full(&mut got, &mut a);
                let m = read_full(&mut want, &mut b);
                prop_assert_eq!(n, m);
                prop_assert_eq!(&a[..n], &b[..m]);
            }
        }
    }

    proptest! {
        /// Bytes held in memory read exactly as the object's own, whatever
        /// the mix of seeks and reads, in and out of what is held.
        #[test]
        fn an_overlay_reads_like_the_object(
            data in prop::collection::vec(any::<u8>(), 1..4000),
            held in prop::collection::vec((any::<prop::sample::Index>(), 1usize..300), 0..8),
            steps in prop::collection::vec(step(), 1..40),
        ) {
            let mut pieces = std::collections::BTreeMap::new();
            let mut taken = 0usize;
            let mut starts: Vec<usize> = held.iter().map(|(at, _)| at.index(data.len())).collect();
            starts.sort_unstable();
            for (start, (_, len)) in starts.into_iter().zip(&held) {
                // Held pieces do not overlap, as the heads of members do not.
                let start = start.max(taken);
                let end = (start + len).min(data.len());
                if start < end {
                    pieces.insert(start as u64, data[start..end].to_vec());
                    taken = end;
                }
            }
            let mut inner: Box<dyn ReadSeek> = Box::new(io::Cursor::new(data.clone()));
            let mut overlay = Overlay::new(&mut *inner, &pieces);
            let mut cursor = io::Cursor::new(data.clone());
            for s in steps {
                if let Some(at) = s.at {
                    let to = SeekFrom::Start(at % (data.len() as u64 + 10));
                    prop_assert_eq!(overlay.seek(to).unwrap(), cursor.seek(to).unwrap());
                }
                let len = s.len.min(5000);
                let mut a = vec![0u8; len];
                let mut b = vec![0u8; len];
                let (na, nb) = (read_full(&mut overlay, &mut a), read_full(&mut cursor, &mut b));
                prop_assert_eq!(&a[..na], &b[..nb]);
            }
        }
    }

    /// The heads of members 150 KiB apart, read one after another: a few
    /// long requests, not one per member; members far apart still cost one
    /// short request each.
    #[test]
    fn a_remote_reader_reads_on_through_short_jumps() {
        let data: Vec<u8> = (0..32usize << 20).map(|i| (i % 253) as u8).collect();
        let mut r = Buffered::remote(Counted {
            data: data.clone(),
            reads: 0,
        });
        let heads: Vec<u64> = (0..200u64).map(|i| i * (150 << 10)).collect();
        for &at in &heads {
            r.seek(SeekFrom::Start(at)).unwrap();
            let mut head = [0u8; 512];
            r.read_exact(&mut head).unwrap();
            assert_eq!(&head[..], &data[at as usize..at as usize + 512]);
        }
        assert!(
            r.inner.reads <= 20,
            "{} requests for 200 heads",
            r.inner.reads
        );

        let mut r = Buffered::remote(Counted {
            data: data.clone(),
            reads: 0,
        });
        for i in 0..10u64 {
            let at = i * (3 << 20);
            r.seek(SeekFrom::Start(at)).unwrap();
            let mut head = [0u8; 512];
            r.read_exact(&mut head).unwrap();
        }
        assert_eq!(r.inner.reads, 10);
        assert_eq!(r.fill, 64 << 10, "far jumps start short again");
    }

    fn read_full(r: &mut impl Read, buf: &mut [u8]) -> usize {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        n
    }

    #[test]
    fn segment_file_refuses_a_negative_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        std::fs::write(&path, b"abc").unwrap();
        let mut f = SegmentFile::new(File::open(&path).unwrap());
        assert_eq!(
            f.seek(SeekFrom::Current(-1)).unwrap_err().kind(),
            std::io::ErrorKind::InvalidInput
        );
        assert_eq!(f.seek(SeekFrom::End(-3)).unwrap(), 0);
        let mut all = Vec::new();
        f.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abc");
    }

    #[test]
    fn lists_objects_and_skips_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("lockboxes/aa")).unwrap();
        std::fs::create_dir_all(root.join("snapshots")).unwrap();
        std::fs::create_dir_all(root.join(".cbfs-staging")).unwrap();
        for f in [
            "lockboxes/aa/g1.lockbox",
            "lockboxes/aa/.g2.lockbox.cbfs-partial-1",
            "lockboxes/aa/g3.lockbox#12",
            "snapshots/1.manifest",
            ".cbfs-staging/x",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let store = LocalDir::new(root).unwrap();
        assert_eq!(
            store.list("lockboxes/aa/").unwrap(),
            ["lockboxes/aa/g1.lockbox"]
        );
        assert_eq!(
            store.list("lockboxes/").unwrap(),
            ["lockboxes/aa/g1.lockbox"]
        );
        assert_eq!(store.list("snapshots/").unwrap(), ["snapshots/1.manifest"]);
        assert!(store.list("segments/").unwrap().is_empty());
        assert_eq!(store.get("snapshots/1.manifest").unwrap(), b"x");
    }

    #[test]
    fn missing_and_bad_keys_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path()).unwrap();
        let err = store.get("segments/nope.tar").unwrap_err();
        assert!(matches!(err, Error::Missing { .. }));
        assert!(err.to_string().contains("segments/nope.tar"), "{err}");
        for key in ["../etc/passwd", "/etc/passwd", "a//b", "a/.hidden", ""] {
            let err = store.get(key).err().unwrap();
            assert!(matches!(err, Error::BadKey { .. }), "{key}: {err}");
        }
    }
}
