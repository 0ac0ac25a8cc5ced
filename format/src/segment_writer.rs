//! Writes a segment to a seekable local spool file, member by member.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::ids::{MemberId, SegmentId};
use crate::keys::GroupKey;
use crate::member::{
    DEFAULT_ZSTD_LEVEL, copy_exact, write_member, write_member_with, write_pack_with,
};
use crate::metadata::Metadata;
use crate::plain::{padded, plain_headers};
use crate::segment_reader::check_header_region;
use crate::summary::{Summary, SummaryEntry};
use crate::tar::{BLOCK, GLOBAL_HEADER_LEN, global_header, member_header};

/// Whether a segment's members are encrypted or plain tar entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SegmentMode {
    /// Opaque member names; each payload is an age file with a `cbfs1` stanza.
    Encrypted,
    /// Real names, modes, owners and times; raw content. GNU tar extracts it as is.
    Plain,
}

/// Length of the end-of-archive marker: two zero blocks.
const TRAILER: u64 = 2 * BLOCK as u64;

const WRITING: &str = "writing a segment";

/// Counts and hashes what goes through to the inner writer.
struct HashWriter<'a, W> {
    inner: &'a mut W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> Write for HashWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Builds one segment.
///
/// The payload length of an encrypted member is only known once it is written, so the
/// writer needs a seekable spool (a local file): it writes a placeholder header,
/// streams the payload, then goes back to fill in the header. If an `append_*` call
/// fails, the writer rewinds to where the member began and stays usable; the spool
/// may then hold stale bytes past the end, so always cut it to
/// [`Summary::segment_len`] after [`finish`](Self::finish) (`File::set_len`).
pub struct SegmentWriter<W> {
    out: W,
    base: u64,
    segment: SegmentId,
    mode: SegmentMode,
    zstd_level: i32,
    pos: u64,
    entries: Vec<SummaryEntry>,
    ids: HashSet<MemberId>,
    broken: bool,
    /// A small member is built here whole, then written with its header in
    /// one call: no placeholder, no seeking back, one system call.
    scratch: Vec<u8>,
    /// One zstd context for every member: allocating and clearing its
    /// tables for each small file costs more than compressing it.
    cctx: Option<zstd::zstd_safe::CCtx<'static>>,
    /// The segment digest so far (see [`crate::summary`]): the bytes
    /// before each member's data, its data's SHA-256, its padding. Updated
    /// once a member is written whole, so that nothing is read back.
    digest: Sha256,
}

/// The summary entry of an encrypted member: one header block, then data.
fn encrypted_entry(
    member: MemberId,
    key: &GroupKey,
    header_offset: u64,
    data_len: u64,
    sha256: [u8; 32],
) -> SummaryEntry {
    SummaryEntry {
        member,
        header_offset,
        data_offset: header_offset + BLOCK as u64,
        data_len,
        group: Some(key.id()),
        sha256,
    }
}

/// Members of files up to this size are built in memory.
const IN_MEMORY_MEMBER: u64 = 1 << 20;

impl<W: Write + Seek> SegmentWriter<W> {
    /// Starts a segment at the spool's current position (normally 0).
    pub fn new(mut out: W, segment: SegmentId, mode: SegmentMode) -> Result<Self, Error> {
        let base = out.stream_position().map_err(Error::io(WRITING))?;
        let header = global_header(&segment, mode == SegmentMode::Encrypted);
        out.write_all(&header).map_err(Error::io(WRITING))?;
        Ok(SegmentWriter {
            out,
            base,
            segment,
            mode,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            pos: GLOBAL_HEADER_LEN,
            entries: Vec::new(),
            ids: HashSet::new(),
            broken: false,
            scratch: Vec::new(),
            cctx: None,
            digest: Sha256::new_with_prefix(&header),
        })
    }

    /// Sets the zstd level for the members appended from now on (default 3).
    pub fn with_zstd_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }

    /// The segment's id.
    pub fn segment_id(&self) -> SegmentId {
        self.segment
    }

    /// The segment's mode.
    pub fn mode(&self) -> SegmentMode {
        self.mode
    }

    /// The segment's length if it were finished now.
    pub fn len(&self) -> u64 {
        self.pos + TRAILER
    }

    /// Whether no member was appended yet.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The members appended so far.
    pub fn entries(&self) -> &[SummaryEntry] {
        &self.entries
    }

    fn check(&self, mode: SegmentMode, member: &MemberId) -> Result<(), Error> {
        if self.broken {
            return Err(Error::InvalidInput {
                reason: format!(
                    "segment {}: an earlier failure left the spool unusable",
                    self.segment
                ),
            });
        }
        if mode != self.mode {
            return Err(Error::InvalidInput {
                reason: format!(
                    "segment {} is {:?}, cannot append a {mode:?} member",
                    self.segment, self.mode
                ),
            });
        }
        if self.ids.contains(member) {
            return Err(Error::InvalidInput {
                reason: format!("segment {}: member {member} appended twice", self.segment),
            });
        }
        Ok(())
    }

    /// Runs one append, which gives the member's summary entry and the
    /// bytes before its data (its headers); on failure, rewinds to where
    /// the member began.
    fn guarded(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<(SummaryEntry, Vec<u8>), Error>,
    ) -> Result<SummaryEntry, Error> {
        let start = self.pos;
        match f(self) {
            Ok((entry, headers)) => {
                self.digest.update(&headers);
                self.digest.update(entry.sha256);
                let pad = padded(entry.data_len) - entry.data_len;
                self.digest.update(&[0u8; BLOCK][..pad as usize]);
                self.pos = entry.data_offset + padded(entry.data_len);
                self.ids.insert(entry.member);
                self.entries.push(entry.clone());
                Ok(entry)
            }
            Err(e) => {
                if self.out.seek(SeekFrom::Start(self.base + start)).is_err() {
                    self.broken = true;
                }
                Err(e)
            }
        }
    }

    /// Pads the data just written and leaves the spool at the next header.
    fn pad(&mut self, data_len: u64) -> Result<(), Error> {
        let pad = (padded(data_len) - data_len) as usize;
        self.out
            .write_all(&[0u8; BLOCK][..pad])
            .map_err(Error::io(WRITING))
    }

    /// Compresses, encrypts and appends one file.
    ///
    /// `content` must give exactly `meta.size` bytes ([`Error::ContentLength`] if not).
    pub fn append_encrypted(
        &mut self,
        member: MemberId,
        key: &GroupKey,
        meta: &Metadata,
        content: impl Read,
    ) -> Result<SummaryEntry, Error> {
        self.check(SegmentMode::Encrypted, &member)?;
        if meta.size <= IN_MEMORY_MEMBER {
            return self.guarded(|w| w.append_in_memory(member, key, meta, content));
        }
        self.guarded(|w| {
            let header_offset = w.pos;
            w.out.write_all(&[0u8; BLOCK]).map_err(Error::io(WRITING))?;
            let hw = HashWriter {
                inner: &mut w.out,
                hasher: Sha256::new(),
                count: 0,
            };
            let hw = write_member(hw, member, key, meta, content, w.zstd_level)?;
            let (sha256, data_len) = (hw.hasher.finalize().into(), hw.count);
            w.pad(data_len)?;
            let at = w.base + header_offset;
            w.out
                .seek(SeekFrom::Start(at))
                .map_err(Error::io(WRITING))?;
            w.out
                .write_all(&member_header(&member, data_len))
                .map_err(Error::io(WRITING))?;
            let end = at + BLOCK as u64 + padded(data_len);
            w.out
                .seek(SeekFrom::Start(end))
                .map_err(Error::io(WRITING))?;
            let entry = encrypted_entry(member, key, header_offset, data_len, sha256);
            Ok((entry, member_header(&member, data_len).to_vec()))
        })
    }

    /// Compresses, encrypts and appends several small files as one member
    /// (a pack): one tar entry, one age header and one zstd frame for all
    /// of them. Each content must be exactly its metadata's size.
    pub fn append_pack(
        &mut self,
        member: MemberId,
        key: &GroupKey,
        files: &[(&Metadata, &[u8])],
    ) -> Result<SummaryEntry, Error> {
        self.check(SegmentMode::Encrypted, &member)?;
        self.guarded(|w| {
            w.append_built(member, key, |buf, cctx, level| {
                write_pack_with(buf, cctx, member, key, files, level).map(|_| ())
            })
        })
    }

    /// Appends a member whose plaintext frame (still compressed, from
    /// [`crate::decrypt_frame`] of another member) is sealed again, under a
    /// fresh file key wrapped for `member` under `key`: re-keying, with no
    /// second compression. The caller has checked the frame
    /// ([`crate::open_frame`] read to its end).
    pub fn append_frame(
        &mut self,
        member: MemberId,
        key: &GroupKey,
        frame: &[u8],
    ) -> Result<SummaryEntry, Error> {
        self.check(SegmentMode::Encrypted, &member)?;
        self.guarded(|w| {
            w.append_built(member, key, |buf, _, _| {
                crate::member::write_frame(buf, member, key, frame).map(|_| ())
            })
        })
    }

    /// [`append_encrypted`](Self::append_encrypted) of a small file: the
    /// member is built in memory, then written with its header at once.
    fn append_in_memory(
        &mut self,
        member: MemberId,
        key: &GroupKey,
        meta: &Metadata,
        content: impl Read,
    ) -> Result<(SummaryEntry, Vec<u8>), Error> {
        self.append_built(member, key, |buf, cctx, level| {
            write_member_with(buf, cctx, member, key, meta, content, level).map(|_| ())
        })
    }

    /// Builds a member's payload in memory with `build`, then writes it
    /// with its header at once.
    fn append_built(
        &mut self,
        member: MemberId,
        key: &GroupKey,
        build: impl FnOnce(&mut Vec<u8>, &mut zstd::zstd_safe::CCtx<'static>, i32) -> Result<(), Error>,
    ) -> Result<(SummaryEntry, Vec<u8>), Error> {
        let header_offset = self.pos;
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(BLOCK, 0);
        let cctx = match &mut self.cctx {
            Some(c) => c,
            none => none.insert(zstd::zstd_safe::CCtx::create()),
        };
        let built = build(&mut buf, cctx, self.zstd_level);
        let result = built.and_then(|()| {
            let data_len = (buf.len() - BLOCK) as u64;
            let sha256: [u8; 32] = Sha256::digest(&buf[BLOCK..]).into();
            buf[..BLOCK].copy_from_slice(&member_header(&member, data_len));
            buf.resize(BLOCK + padded(data_len) as usize, 0);
            self.out.write_all(&buf).map_err(Error::io(WRITING))?;
            let entry = encrypted_entry(member, key, header_offset, data_len, sha256);
            Ok((entry, buf[..BLOCK].to_vec()))
        });
        // Keep the buffer for the next member, unless a rare large one grew it.
        if buf.capacity() <= 2 * IN_MEMORY_MEMBER as usize {
            self.scratch = buf;
        }
        result
    }

    /// Appends one file as an ordinary tar entry (plain mode).
    pub fn append_plain(
        &mut self,
        member: MemberId,
        meta: &Metadata,
        content: impl Read,
    ) -> Result<SummaryEntry, Error> {
        self.check(SegmentMode::Plain, &member)?;
        let headers = plain_headers(meta)?;
        self.guarded(|w| {
            let header_offset = w.pos;
            w.out.write_all(&headers).map_err(Error::io(WRITING))?;
            let mut hw = HashWriter {
                inner: &mut w.out,
                hasher: Sha256::new(),
                count: 0,
            };
            copy_exact(content, &mut hw, meta)?;
            let (sha256, data_len) = (hw.hasher.finalize().into(), hw.count);
            w.pad(data_len)?;
            let entry = SummaryEntry {
                member,
                header_offset,
                data_offset: header_offset + headers.len() as u64,
                data_len,
                group: None,
                sha256,
            };
            Ok((entry, headers))
        })
    }

    /// Copies a member of another segment byte for byte (garbage collection; no key).
    ///
    /// `region` is the old segment's bytes from the member's header offset to the end
    /// of its data (`data_offset + data_len - header_offset` bytes, as a ranged GET
    /// gives them). The header bytes and the data's SHA-256 are checked against `old`
    /// before anything is written; a member that does not match is not kept. To
    /// check members on another thread while this one writes, use [`check_copy`]
    /// and [`SegmentWriter::append_checked`].
    pub fn append_copy(
        &mut self,
        old: &Summary,
        member: &MemberId,
        region: &[u8],
    ) -> Result<SummaryEntry, Error> {
        self.append_checked(check_copy(old, member, region)?)
    }

    /// Writes a member that [`check_copy`] checked (its header bytes and the
    /// SHA-256 of its data against the old segment's summary).
    pub fn append_checked(&mut self, checked: CheckedCopy<'_>) -> Result<SummaryEntry, Error> {
        let CheckedCopy {
            entry,
            header,
            data,
            old_mode,
        } = checked;
        if old_mode != self.mode {
            return Err(Error::InvalidInput {
                reason: format!(
                    "cannot copy a {:?} member into a {:?} segment",
                    old_mode, self.mode
                ),
            });
        }
        self.check(self.mode, &entry.member)?;
        self.guarded(|w| {
            let header_offset = w.pos;
            w.out.write_all(header).map_err(Error::io(WRITING))?;
            w.out
                .write_all(data)
                .map_err(Error::io("copying a member"))?;
            w.pad(entry.data_len)?;
            let entry = SummaryEntry {
                header_offset,
                data_offset: header_offset + header.len() as u64,
                ..entry
            };
            Ok((entry, header.to_vec()))
        })
    }

    /// Writes the end-of-archive marker, completes the segment digest and returns the spool
    /// (positioned at the segment's end) and the summary.
    pub fn finish(mut self) -> Result<(W, Summary), Error> {
        if self.broken {
            return Err(Error::InvalidInput {
                reason: format!("segment {}: the spool is unusable", self.segment),
            });
        }
        self.out
            .seek(SeekFrom::Start(self.base + self.pos))
            .map_err(Error::io(WRITING))?;
        self.out
            .write_all(&[0u8; TRAILER as usize])
            .map_err(Error::io(WRITING))?;
        self.out.flush().map_err(Error::io(WRITING))?;
        let len = self.pos + TRAILER;
        self.digest.update([0u8; TRAILER as usize]);
        let digest = self.digest.finalize().into();
        let summary = Summary::new(self.segment, self.mode, len, digest, self.entries)?;
        Ok((self.out, summary))
    }
}

/// A member of an old segment whose bytes were checked against that
/// segment's summary (see [`check_copy`]): ready for
/// [`SegmentWriter::append_checked`]. Only [`check_copy`] makes one.
pub struct CheckedCopy<'a> {
    entry: SummaryEntry,
    header: &'a [u8],
    data: &'a [u8],
    old_mode: SegmentMode,
}

/// Checks a member of another segment before it is copied (garbage
/// collection; no key): `region` is the old segment's bytes from the
/// member's header offset to the end of its data, as a ranged GET gives
/// them. Its length, its header bytes and the SHA-256 of its data must be
/// what `old` (the old segment's summary) says. Pure: any thread may check
/// while another writes.
pub fn check_copy<'a>(
    old: &Summary,
    member: &MemberId,
    region: &'a [u8],
) -> Result<CheckedCopy<'a>, Error> {
    let mismatch = |offset: u64, reason: String| Error::SummaryMismatch {
        segment: old.segment_id(),
        offset,
        reason,
    };
    let entry = old
        .entry(member)
        .ok_or_else(|| mismatch(0, format!("member {member} is not in the summary")))?
        .clone();
    let header_len = entry.data_offset - entry.header_offset;
    if region.len() as u64 != header_len + entry.data_len {
        return Err(mismatch(
            entry.header_offset,
            format!(
                "member {member}: {} bytes given to copy, the summary says {}",
                region.len(),
                header_len + entry.data_len
            ),
        ));
    }
    let (header, data) = region.split_at(header_len as usize);
    check_header_region(old, &entry, header)?;
    let sha256: [u8; 32] = Sha256::digest(data).into();
    if sha256 != entry.sha256 {
        return Err(mismatch(
            entry.data_offset,
            format!("member {member}: copied data does not match its SHA-256"),
        ));
    }
    Ok(CheckedCopy {
        entry,
        header,
        data,
        old_mode: old.mode(),
    })
}
