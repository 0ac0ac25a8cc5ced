//! Reads segments: sequentially from any `Read`, or one member at a known offset.

use std::io::{self, Read, Seek, SeekFrom};

use crate::error::{Error, ObjectKind};
use crate::ids::{MemberId, SegmentId, parse_hex16};
use crate::keys::GroupKeys;
use crate::member::{ContentReader, MemberFiles, PlainSource, open_member_inner};
use crate::metadata::Metadata;
use crate::plain::{padded, plain_headers, plain_metadata};
use crate::segment_writer::SegmentMode;
use crate::summary::{Summary, SummaryEntry};
use crate::tar::{
    BLOCK, GLOBAL_HEADER_LEN, GlobalHeader, Ustar, global_header, member_header,
    parse_global_header, parse_pax,
};

/// Largest pax extended header a plain member may have.
pub(crate) const MAX_PAX_LEN: u64 = 32 * 1024 * 1024;

/// Where one member sits in its segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's id (encrypted mode: its tar name). `None` in plain mode, where the
    /// id is only in the summary.
    pub member: Option<MemberId>,
    /// Offset of the member's first header block.
    pub header_offset: u64,
    /// Offset of the member's data (payload).
    pub data_offset: u64,
    /// Length of the data, without padding.
    pub data_len: u64,
}

/// Iterates over the members of a segment, in order, from any reader. No key needed
/// to iterate; a key is needed to open an encrypted member.
pub struct SegmentReader<R> {
    input: R,
    segment: SegmentId,
    mode: SegmentMode,
    pos: u64,
    data_left: u64,
    pad_left: u64,
    done: bool,
}

impl<R: Read> SegmentReader<R> {
    /// Reads and checks the segment's global header.
    pub fn new(mut input: R) -> Result<Self, Error> {
        let mut head = [0u8; GLOBAL_HEADER_LEN as usize];
        let n = read_full(&mut input, &mut head).map_err(Error::io("reading a segment"))?;
        if n < head.len() {
            return Err(Error::BadBrand {
                object: ObjectKind::Segment,
            });
        }
        let (segment, encrypted) = match parse_global_header(&head) {
            GlobalHeader::NotOurs => {
                return Err(Error::BadBrand {
                    object: ObjectKind::Segment,
                });
            }
            GlobalHeader::Version(found) => {
                return Err(Error::UnknownVersion {
                    object: ObjectKind::Segment,
                    found,
                });
            }
            GlobalHeader::V1(id, encrypted) => (id, encrypted),
        };
        if global_header(&segment, encrypted) != head {
            return Err(Error::Tar {
                segment: Some(segment),
                offset: 0,
                reason: "global header is not in canonical form".into(),
            });
        }
        let mode = if encrypted {
            SegmentMode::Encrypted
        } else {
            SegmentMode::Plain
        };
        Ok(SegmentReader {
            input,
            segment,
            mode,
            pos: GLOBAL_HEADER_LEN,
            data_left: 0,
            pad_left: 0,
            done: false,
        })
    }

    /// The segment's id, from its global header.
    pub fn segment_id(&self) -> SegmentId {
        self.segment
    }

    /// The segment's mode, from its global header.
    pub fn mode(&self) -> SegmentMode {
        self.mode
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Gives back the underlying reader.
    pub fn into_inner(self) -> R {
        self.input
    }

    fn tar_err(&self, offset: u64, reason: impl Into<String>) -> Error {
        Error::Tar {
            segment: Some(self.segment),
            offset,
            reason: reason.into(),
        }
    }

    fn read_block(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = read_full(&mut self.input, buf).map_err(Error::io("reading a segment"))?;
        self.pos += n as u64;
        Ok(n)
    }

    fn read_exact_here(&mut self, buf: &mut [u8], what: &str) -> Result<(), Error> {
        let at = self.pos;
        if self.read_block(buf)? != buf.len() {
            return Err(self.tar_err(at, format!("segment ends inside {what}")));
        }
        Ok(())
    }

    /// Skips what is left of the current member's data, then checks its padding is zero.
    fn skip_rest(&mut self) -> Result<(), Error> {
        if self.data_left > 0 {
            let at = self.pos;
            let left = self.data_left;
            let n = io::copy(&mut (&mut self.input).take(left), &mut io::sink())
                .map_err(Error::io("reading a segment"))?;
            self.pos += n;
            if n != left {
                return Err(self.tar_err(at, "segment ends inside member data"));
            }
            self.data_left = 0;
        }
        if self.pad_left > 0 {
            let mut pad = [0u8; BLOCK];
            let len = self.pad_left as usize;
            self.read_exact_here(&mut pad[..len], "member padding")?;
            if pad[..len].iter().any(|&b| b != 0) {
                return Err(self.tar_err(self.pos - len as u64, "non-zero padding"));
            }
            self.pad_left = 0;
        }
        Ok(())
    }

    /// The next member, or `None` after the end-of-archive marker (which must be the
    /// last bytes of the segment).
    pub fn next_member(&mut self) -> Result<Option<SegmentMember<'_, R>>, Error> {
        if self.done {
            return Ok(None);
        }
        self.skip_rest()?;
        let header_offset = self.pos;
        let mut block = [0u8; BLOCK];
        self.read_exact_here(&mut block, "a header (end-of-archive marker missing?)")?;
        if block == [0u8; BLOCK] {
            self.read_exact_here(&mut block, "the end-of-archive marker")?;
            if block != [0u8; BLOCK] {
                return Err(self.tar_err(header_offset, "lone zero block"));
            }
            let end = self.pos;
            if self.read_block(&mut [0u8; 1])? != 0 {
                return Err(self.tar_err(end, "data after the end-of-archive marker"));
            }
            self.done = true;
            return Ok(None);
        }
        let (info, meta) = match self.mode {
            SegmentMode::Encrypted => (self.encrypted_header(header_offset, &block)?, None),
            SegmentMode::Plain => {
                let (info, meta) = self.plain_header(header_offset, block)?;
                (info, Some(meta))
            }
        };
        self.data_left = info.data_len;
        self.pad_left = padded(info.data_len) - info.data_len;
        Ok(Some(SegmentMember {
            reader: self,
            info,
            meta,
        }))
    }

    fn encrypted_header(&self, at: u64, block: &[u8; BLOCK]) -> Result<MemberInfo, Error> {
        let bad = || self.tar_err(at, "member header is not in canonical form");
        let h = Ustar::decode(block).ok_or_else(bad)?;
        let member = parse_hex16(&h.name)
            .map(MemberId::from_bytes)
            .map_err(|_| bad())?;
        if member_header(&member, h.size) != *block {
            return Err(bad());
        }
        Ok(MemberInfo {
            member: Some(member),
            header_offset: at,
            data_offset: at + BLOCK as u64,
            data_len: h.size,
        })
    }

    fn plain_header(
        &mut self,
        at: u64,
        first: [u8; BLOCK],
    ) -> Result<(MemberInfo, Metadata), Error> {
        let bad = |s: &Self, reason: String| s.tar_err(at, reason);
        let mut raw = first.to_vec();
        let mut h = Ustar::decode(&first).ok_or_else(|| bad(self, "bad header block".into()))?;
        let mut records = Vec::new();
        // Extension blocks, at most three ('L', 'K', 'x'); the canonical check below
        // fixes their order.
        for _ in 0..3 {
            if !matches!(h.typeflag, b'L' | b'K' | b'x') {
                break;
            }
            if h.size > MAX_PAX_LEN {
                return Err(bad(self, "extension header too large".into()));
            }
            let mut data = vec![0u8; padded(h.size) as usize];
            self.read_exact_here(&mut data, "an extension header")?;
            let body = &data[..h.size as usize];
            match h.typeflag {
                b'x' => records.extend(parse_pax(body).map_err(|r| bad(self, r))?),
                flag => {
                    let name = body.strip_suffix(b"\0").unwrap_or(body).to_vec();
                    let key = if flag == b'L' { "path" } else { "linkpath" };
                    records.push((key.to_string(), name));
                }
            }
            raw.extend_from_slice(&data);
            let mut block = [0u8; BLOCK];
            self.read_exact_here(&mut block, "a header")?;
            raw.extend_from_slice(&block);
            h = Ustar::decode(&block).ok_or_else(|| bad(self, "bad header block".into()))?;
        }
        let meta = plain_metadata(&records, &h).map_err(|r| bad(self, r))?;
        if plain_headers(&meta).ok().as_deref() != Some(raw.as_slice()) {
            return Err(bad(self, "member header is not in canonical form".into()));
        }
        let info = MemberInfo {
            member: None,
            header_offset: at,
            data_offset: at + raw.len() as u64,
            data_len: h.size,
        };
        Ok((info, meta))
    }
}

impl<R: Read + Seek> SegmentReader<R> {
    /// Starts reading at a member's header offset (from a summary or an index),
    /// without reading the segment's global header. Iteration goes on from there.
    pub fn resume_at(
        mut input: R,
        segment: SegmentId,
        mode: SegmentMode,
        header_offset: u64,
    ) -> Result<Self, Error> {
        input
            .seek(SeekFrom::Start(header_offset))
            .map_err(Error::io("seeking in a segment"))?;
        Ok(SegmentReader {
            input,
            segment,
            mode,
            pos: header_offset,
            data_left: 0,
            pad_left: 0,
            done: false,
        })
    }
}

/// Opens one encrypted member by its data offset and length, as an index stores them.
/// The member id is checked cryptographically (it is bound into the member's stanza).
pub fn open_member_at<'a, R: Read + Seek + Send>(
    input: &'a mut R,
    member: MemberId,
    data_offset: u64,
    data_len: u64,
    keys: &dyn GroupKeys,
) -> Result<(Metadata, ContentReader<'a>), Error> {
    open_member_files_at(input, member, data_offset, data_len, keys)?.into_single(member)
}

/// [`open_member_at`] for a member of one file or a pack.
pub fn open_member_files_at<'a, R: Read + Seek + Send>(
    input: &'a mut R,
    member: MemberId,
    data_offset: u64,
    data_len: u64,
    keys: &dyn GroupKeys,
) -> Result<MemberFiles<'a>, Error> {
    input
        .seek(SeekFrom::Start(data_offset))
        .map_err(Error::io("seeking in a segment"))?;
    open_member_inner(member, input.take(data_len), Some(data_len), keys)
}

/// One member of a segment, borrowed from its [`SegmentReader`].
pub struct SegmentMember<'a, R> {
    reader: &'a mut SegmentReader<R>,
    info: MemberInfo,
    meta: Option<Metadata>,
}

impl<'a, R: Read> SegmentMember<'a, R> {
    /// Where the member sits.
    pub fn info(&self) -> &MemberInfo {
        &self.info
    }

    /// The metadata of a plain member (from its tar headers); `None` when encrypted.
    pub fn plain_metadata(&self) -> Option<&Metadata> {
        self.meta.as_ref()
    }

    fn data(self) -> (DataReader<'a, R>, MemberInfo, Option<Metadata>) {
        let reader = DataReader {
            segment: self.reader.segment,
            input: &mut self.reader.input,
            pos: &mut self.reader.pos,
            left: &mut self.reader.data_left,
        };
        (reader, self.info, self.meta)
    }

    /// The member's raw data bytes (an encrypted member's ciphertext), exactly
    /// `data_len` of them; for hashing or copying without a key.
    pub fn raw(self) -> RawData<'a, R> {
        RawData(self.data().0)
    }
}

impl<'a, R: Read + Send> SegmentMember<'a, R> {
    /// The metadata and a reader over the content of a member of one file
    /// (a pack is refused: use [`open_files`](Self::open_files)). Encrypted
    /// members need the group key named in their stanza; plain members
    /// ignore `keys`.
    pub fn open(self, keys: &dyn GroupKeys) -> Result<(Metadata, ContentReader<'a>), Error> {
        let member = self.info.member;
        let files = self.open_files(keys)?;
        match member {
            Some(id) => files.into_single(id),
            None => {
                let MemberFiles {
                    mut entries,
                    content,
                } = files;
                Ok((entries.pop().expect("a plain member is one file"), content))
            }
        }
    }

    /// The files' metadata (one, or a pack's) and a reader over all their
    /// contents.
    pub fn open_files(self, keys: &dyn GroupKeys) -> Result<MemberFiles<'a>, Error> {
        let (data, info, meta) = self.data();
        match (info.member, meta) {
            (Some(member), _) => open_member_inner(member, data, Some(info.data_len), keys),
            (None, Some(meta)) => {
                let size = meta.size;
                Ok(MemberFiles {
                    entries: vec![meta],
                    content: ContentReader::new(Box::new(PlainData(data)), size),
                })
            }
            (None, None) => Err(Error::InvalidInput {
                reason: "member has neither id nor metadata".into(),
            }),
        }
    }
}

/// Reads the current member's data; `Ok(0)` early if the segment ends early.
struct DataReader<'a, R> {
    segment: SegmentId,
    input: &'a mut R,
    pos: &'a mut u64,
    left: &'a mut u64,
}

impl<R: Read> Read for DataReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = usize::try_from(*self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if max == 0 {
            return Ok(0);
        }
        let n = self.input.read(&mut buf[..max])?;
        *self.left -= n as u64;
        *self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read> DataReader<'_, R> {
    fn short(&self) -> Error {
        Error::Tar {
            segment: Some(self.segment),
            offset: *self.pos,
            reason: "segment ends inside member data".into(),
        }
    }
}

/// A member's raw data bytes; an error if the segment ends before them.
pub struct RawData<'a, R>(DataReader<'a, R>);

impl<R: Read> Read for RawData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() && *self.0.left > 0 {
            return Err(self.0.short().into_io());
        }
        Ok(n)
    }
}

struct PlainData<'a, R>(DataReader<'a, R>);

impl<R: Read> Read for PlainData<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read> PlainSource for PlainData<'_, R> {
    fn verify_end(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn ended_early(&self) -> Error {
        self.0.short()
    }
}

/// Checks the header bytes of a member about to be copied (GC) against its summary.
pub(crate) fn check_header_region(
    old: &Summary,
    entry: &SummaryEntry,
    header: &[u8],
) -> Result<(), Error> {
    let mismatch = |reason: &str| Error::SummaryMismatch {
        segment: old.segment_id(),
        offset: entry.header_offset,
        reason: format!("member {}: {reason}", entry.member),
    };
    let ok = match old.mode() {
        SegmentMode::Encrypted => member_header(&entry.member, entry.data_len).as_slice() == header,
        SegmentMode::Plain => {
            parse_plain_region(old.segment_id(), entry.header_offset, header)?
                .0
                .data_len
                == entry.data_len
        }
    };
    if ok {
        Ok(())
    } else {
        Err(mismatch("header bytes differ from the summary"))
    }
}

/// Parses a plain member's header region (exactly: no bytes may be left over).
pub(crate) fn parse_plain_region(
    segment: SegmentId,
    header_offset: u64,
    header: &[u8],
) -> Result<(MemberInfo, Metadata), Error> {
    let mut r = SegmentReader {
        input: header,
        segment,
        mode: SegmentMode::Plain,
        pos: header_offset,
        data_left: 0,
        pad_left: 0,
        done: false,
    };
    let mut first = [0u8; BLOCK];
    r.read_exact_here(&mut first, "a header")?;
    let parsed = r.plain_header(header_offset, first)?;
    if !r.input.is_empty() {
        return Err(r.tar_err(r.pos, "bytes left after the member's headers"));
    }
    Ok(parsed)
}

fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
