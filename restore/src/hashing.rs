//! Hashing a member's data bytes while they are decrypted.

use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::source::ReadSeek;

/// Passes reads and seeks through, and hashes the bytes that fall in one
/// window of the object (a member's data), in order.
pub(crate) struct HashingReader<'r, 'a> {
    inner: &'r mut (dyn ReadSeek + 'a),
    pos: u64,
    start: u64,
    len: u64,
    hashed: u64,
    hasher: Sha256,
    out_of_order: bool,
}

impl<'r, 'a> HashingReader<'r, 'a> {
    /// Hashes `[start, start + len)` of `inner`. Call [`finish`](Self::finish)
    /// after the consumer is done to read (and hash) what it left.
    pub(crate) fn new(inner: &'r mut (dyn ReadSeek + 'a), start: u64, len: u64) -> Self {
        HashingReader {
            inner,
            pos: u64::MAX,
            start,
            len,
            hashed: 0,
            hasher: Sha256::new(),
            out_of_order: false,
        }
    }

    fn note(&mut self, buf: &[u8]) {
        let end = self.pos + buf.len() as u64;
        let next = self.start + self.hashed;
        let window_end = self.start + self.len;
        if end <= next || self.pos >= window_end {
            return;
        }
        if self.pos > next {
            self.out_of_order = true;
            return;
        }
        let from = (next - self.pos) as usize;
        let to = (end.min(window_end) - self.pos) as usize;
        self.hasher.update(&buf[from..to]);
        self.hashed += (to - from) as u64;
    }

    /// Reads the rest of the window, then returns its SHA-256 and whether all
    /// of it could be read. `None` if the window was read out of order.
    pub(crate) fn finish(mut self) -> io::Result<Option<([u8; 32], bool)>> {
        if self.out_of_order {
            return Ok(None);
        }
        if self.hashed < self.len {
            let at = self.start + self.hashed;
            self.seek(SeekFrom::Start(at))?;
            let mut buf = vec![0u8; 64 * 1024];
            while self.hashed < self.len {
                let want = (self.len - self.hashed).min(buf.len() as u64) as usize;
                let n = match self.read(&mut buf[..want]) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                let _ = n;
            }
        }
        let complete = self.hashed == self.len;
        Ok(Some((self.hasher.finalize().into(), complete)))
    }
}

impl Read for HashingReader<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.pos != u64::MAX {
            self.note(&buf[..n]);
            self.pos += n as u64;
        }
        Ok(n)
    }
}

impl Seek for HashingReader<'_, '_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let pos = self.inner.seek(to)?;
        self.pos = pos;
        Ok(pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn hashes_exactly_the_window() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let want: [u8; 32] = Sha256::digest(&data[1000..5000]).into();
        let mut cur = Cursor::new(data.clone());
        let mut h = HashingReader::new(&mut cur, 1000, 4000);
        h.seek(SeekFrom::Start(500)).unwrap();
        let mut buf = vec![0u8; 2000];
        h.read_exact(&mut buf).unwrap();
        assert_eq!(h.finish().unwrap(), Some((want, true)));

        // A source shorter than the window.
        let mut short = Cursor::new(data[..3000].to_vec());
        let mut h = HashingReader::new(&mut short, 1000, 4000);
        h.seek(SeekFrom::Start(1000)).unwrap();
        let (_, complete) = h.finish().unwrap().unwrap();
        assert!(!complete);
    }
}
