//! Member payloads: zstd-compressed, framed plaintext inside an age v1 file whose one
//! `cbfs1` stanza wraps the file key under the member's group key.
//!
//! Both directions stream: memory stays bounded whatever the content length.

use std::cell::RefCell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::sync::mpsc;

use crate::error::{Error, ObjectKind};
use crate::ids::MemberId;
use crate::keys::{GroupKey, GroupKeys};
use crate::merkle::MAX_PACK_FILES;
use crate::metadata::{MAX_METADATA_LEN, Metadata};
use crate::stanza::{CbfsIdentity, CbfsRecipient, Outcome};
use crate::zframe::FrameDecoder;

/// The zstd level used unless the caller picks another.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
/// Brand of the framed member plaintext.
pub(crate) const PLAINTEXT_BRAND: &[u8; 8] = b"CBFSMEMB";
/// Version of the framed plaintext of a member of one file.
pub(crate) const PLAINTEXT_VERSION: u16 = 1;
/// Version of the framed plaintext of a pack: several small files in one
/// member.
pub(crate) const PACK_VERSION: u16 = 2;
const COPY_BUF: usize = 64 * 1024;

/// Encrypts one member to `output`: metadata first, then exactly `meta.size` bytes of
/// `content`. Returns `output` once the last chunk is written.
///
/// Fails with [`Error::ContentLength`] if `content` gives more or fewer bytes than
/// `meta.size` (the file changed while being read).
pub fn write_member<W: Write>(
    output: W,
    member: MemberId,
    key: &GroupKey,
    meta: &Metadata,
    content: impl Read,
    zstd_level: i32,
) -> Result<W, Error> {
    let mut cctx = zstd::zstd_safe::CCtx::create();
    write_member_with(output, &mut cctx, member, key, meta, content, zstd_level)
}

/// [`write_member`] with a zstd context that the caller keeps from one
/// member to the next.
pub(crate) fn write_member_with<W: Write>(
    output: W,
    cctx: &mut zstd::zstd_safe::CCtx<'static>,
    member: MemberId,
    key: &GroupKey,
    meta: &Metadata,
    content: impl Read,
    zstd_level: i32,
) -> Result<W, Error> {
    let encoded = meta.encode()?;
    let writing = "writing a member payload";
    let mut z = start_payload(output, cctx, member, key, zstd_level)?;
    let mut head = Vec::with_capacity(14 + encoded.len());
    head.extend_from_slice(PLAINTEXT_BRAND);
    head.extend_from_slice(&PLAINTEXT_VERSION.to_be_bytes());
    head.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    head.extend_from_slice(&encoded);
    // Told the size, zstd sizes its tables to the input: small files
    // compress several times faster. A content of another length fails in
    // `copy_exact` before zstd would notice.
    z.set_pledged_src_size(Some(head.len() as u64 + meta.size))
        .map_err(Error::io(writing))?;
    z.write_all(&head).map_err(Error::io(writing))?;
    // The metadata ends a zstd block of its own: a reader that wants only
    // the metadata (a restore's planning pass) then decompresses only that
    // block, not the first 128 KiB of content with it. Still one frame.
    z.flush().map_err(Error::io(writing))?;
    copy_exact(content, &mut z, meta)?;
    let stream = z.finish().map_err(Error::io(writing))?;
    stream.finish().map_err(Error::io(writing))
}

/// The table of a pack: `u16` count, then per file a `u32` length and its
/// metadata record; each content must be as long as its file's size.
fn encode_table(files: &[(&Metadata, &[u8])]) -> Result<Vec<u8>, Error> {
    for (meta, content) in files {
        if content.len() as u64 != meta.size {
            return Err(Error::ContentLength {
                path: meta.path_lossy(),
                declared: meta.size,
                actual: content.len() as u64,
            });
        }
    }
    encode_records(files.iter().map(|(meta, _)| *meta), files.len())
}

/// A pack's table of `count` metadata records.
pub(crate) fn encode_records<'m>(
    metas: impl Iterator<Item = &'m Metadata>,
    count: usize,
) -> Result<Vec<u8>, Error> {
    if count == 0 || count > MAX_PACK_FILES {
        return Err(Error::InvalidInput {
            reason: format!("a pack holds 1 to {MAX_PACK_FILES} files, not {count}"),
        });
    }
    let mut table = Vec::with_capacity(2 + count * 96);
    table.extend_from_slice(&(count as u16).to_be_bytes());
    for meta in metas {
        let record = meta.encode()?;
        table.extend_from_slice(&(record.len() as u32).to_be_bytes());
        table.extend_from_slice(&record);
    }
    if table.len() > MAX_METADATA_LEN {
        return Err(Error::InvalidInput {
            reason: format!("a pack's table of {} bytes is over the limit", table.len()),
        });
    }
    Ok(table)
}

/// Encrypts a pack: several small files in one member (plaintext version
/// 2), their metadata in a table first, then their contents one after the
/// other. Returns `output` once the last chunk is written.
pub fn write_pack<W: Write>(
    output: W,
    member: MemberId,
    key: &GroupKey,
    files: &[(&Metadata, &[u8])],
    zstd_level: i32,
) -> Result<W, Error> {
    let mut cctx = zstd::zstd_safe::CCtx::create();
    write_pack_with(output, &mut cctx, member, key, files, zstd_level)
}

/// [`write_pack`] with a zstd context that the caller keeps.
pub(crate) fn write_pack_with<W: Write>(
    output: W,
    cctx: &mut zstd::zstd_safe::CCtx<'static>,
    member: MemberId,
    key: &GroupKey,
    files: &[(&Metadata, &[u8])],
    zstd_level: i32,
) -> Result<W, Error> {
    let table = encode_table(files)?;
    let total: u64 = files.iter().map(|(m, _)| m.size).sum();
    let mut head = Vec::with_capacity(14 + table.len());
    head.extend_from_slice(PLAINTEXT_BRAND);
    head.extend_from_slice(&PACK_VERSION.to_be_bytes());
    head.extend_from_slice(&(table.len() as u32).to_be_bytes());
    head.extend_from_slice(&table);
    let writing = "writing a member payload";
    let mut z = start_payload(output, cctx, member, key, zstd_level)?;
    z.set_pledged_src_size(Some(head.len() as u64 + total))
        .map_err(Error::io(writing))?;
    z.write_all(&head).map_err(Error::io(writing))?;
    // The table ends a zstd block of its own, as a lone file's metadata does.
    z.flush().map_err(Error::io(writing))?;
    for (_, content) in files {
        z.write_all(content).map_err(Error::io(writing))?;
    }
    let stream = z.finish().map_err(Error::io(writing))?;
    stream.finish().map_err(Error::io(writing))
}

type PayloadEncoder<'c, W> = zstd::stream::write::Encoder<'c, age::stream::StreamWriter<W>>;

/// The age layer with the cbfs1 stanza, and a zstd encoder over it.
fn start_payload<'c, W: Write>(
    output: W,
    cctx: &'c mut zstd::zstd_safe::CCtx<'static>,
    member: MemberId,
    key: &GroupKey,
    zstd_level: i32,
) -> Result<PayloadEncoder<'c, W>, Error> {
    let stream = age_writer(output, member, key)?;
    cctx.set_parameter(zstd::zstd_safe::CParameter::CompressionLevel(zstd_level))
        .map_err(|code| Error::InvalidInput {
            reason: format!(
                "zstd level {zstd_level}: {}",
                zstd::zstd_safe::get_error_name(code)
            ),
        })?;
    Ok(zstd::stream::write::Encoder::with_context(stream, cctx))
}

/// Copies exactly `meta.size` bytes, failing if the reader gives more or fewer.
pub(crate) fn copy_exact(
    mut content: impl Read,
    out: &mut impl Write,
    meta: &Metadata,
) -> Result<u64, Error> {
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match content.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io {
                    context: "reading file content",
                    source: e,
                });
            }
        };
        total += n as u64;
        if total > meta.size {
            return Err(Error::ContentLength {
                path: meta.path_lossy(),
                declared: meta.size,
                actual: total,
            });
        }
        out.write_all(&buf[..n])
            .map_err(Error::io("writing a member payload"))?;
    }
    if total != meta.size {
        return Err(Error::ContentLength {
            path: meta.path_lossy(),
            declared: meta.size,
            actual: total,
        });
    }
    Ok(total)
}

/// Decrypts one member of one file: returns its metadata and a reader over
/// its content. A pack (several files in one member) is refused with
/// [`Error::InvalidInput`]: read it with [`open_member_files`].
///
/// The group key is looked up by the group id in the member's stanza. Read the content
/// to the end (or call [`ContentReader::finish`]): only then is the end of the payload
/// authenticated, and a truncated or altered payload always ends in an error.
pub fn open_member<'a, R: Read + Send + 'a>(
    member: MemberId,
    payload: R,
    keys: &dyn GroupKeys,
) -> Result<(Metadata, ContentReader<'a>), Error> {
    open_member_inner(member, payload, None, keys)?.into_single(member)
}

/// Decrypts one member, of one file or a pack: the files' metadata, and
/// one reader over all their contents one after the other.
pub fn open_member_files<'a, R: Read + Send + 'a>(
    member: MemberId,
    payload: R,
    keys: &dyn GroupKeys,
) -> Result<MemberFiles<'a>, Error> {
    open_member_inner(member, payload, None, keys)
}

/// What a member holds: one file, or a pack of small files.
pub struct MemberFiles<'a> {
    /// The files' metadata, in the member's order (slot 0 first).
    pub entries: Vec<Metadata>,
    /// Their contents, one after the other: exactly the sum of their sizes.
    /// Read it to the end to authenticate the end of the payload.
    pub content: ContentReader<'a>,
}

impl<'a> MemberFiles<'a> {
    /// The one file of a member that holds one.
    pub fn into_single(mut self, member: MemberId) -> Result<(Metadata, ContentReader<'a>), Error> {
        match self.entries.len() {
            1 => Ok((self.entries.pop().expect("one entry"), self.content)),
            n => Err(Error::InvalidInput {
                reason: format!("member {member} is a pack of {n} files, not one file"),
            }),
        }
    }
}

impl std::fmt::Debug for MemberFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberFiles")
            .field("files", &self.entries.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn open_member_inner<'a, R: Read + Send + 'a>(
    member: MemberId,
    payload: R,
    expected_len: Option<u64>,
    keys: &dyn GroupKeys,
) -> Result<MemberFiles<'a>, Error> {
    let age = open_age(member, payload, expected_len, keys)?;
    decode_plain(member, BufReader::new(age))
}

/// Decrypts a member's payload to its plaintext frame, still compressed
/// (re-keying seals the same frame again under a new file key, with no
/// second compression). The whole payload is authenticated: a damaged or
/// truncated one is an error, as for [`open_member`]. Read the frame with
/// [`open_frame`].
pub fn decrypt_frame(
    member: MemberId,
    payload: &[u8],
    keys: &dyn GroupKeys,
) -> Result<Vec<u8>, Error> {
    let mut age = open_age(member, payload, Some(payload.len() as u64), keys)?;
    let mut frame = Vec::with_capacity(payload.len());
    age.read_to_end(&mut frame)
        .map_err(|e| Error::from_io(e, "decrypting a member payload"))?;
    Ok(frame)
}

/// The files of a member's plaintext frame (from [`decrypt_frame`]): their
/// metadata and one reader over their contents, as [`open_member_files`]
/// gives them. Read the content to the end: only then is the end of the
/// frame checked.
pub fn open_frame(member: MemberId, frame: &[u8]) -> Result<MemberFiles<'_>, Error> {
    decode_plain(member, frame)
}

/// Encrypts a member's plaintext frame (compressed, from [`decrypt_frame`])
/// as a new member: a fresh file key, wrapped for `member` under `key`.
pub(crate) fn write_frame<W: Write>(
    output: W,
    member: MemberId,
    key: &GroupKey,
    frame: &[u8],
) -> Result<W, Error> {
    let writing = "writing a member payload";
    let mut stream = age_writer(output, member, key)?;
    stream.write_all(frame).map_err(Error::io(writing))?;
    stream.finish().map_err(Error::io(writing))
}

/// An age stream to `output` whose header wraps a fresh file key for
/// `member` under `key` (the `cbfs1` stanza).
fn age_writer<W: Write>(
    output: W,
    member: MemberId,
    key: &GroupKey,
) -> Result<age::stream::StreamWriter<W>, Error> {
    let recipient = CbfsRecipient { member, key };
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| Error::InvalidInput {
                reason: format!("age refused the cbfs1 recipient: {e}"),
            })?;
    encryptor
        .wrap_output(output)
        .map_err(Error::io("writing a member payload"))
}

/// Reads the age header and unwraps the file key: the member's payload
/// as a stream of decrypted (still compressed) plaintext.
fn open_age<R: Read>(
    member: MemberId,
    payload: R,
    expected_len: Option<u64>,
    keys: &dyn GroupKeys,
) -> Result<AgeLayer<R>, Error> {
    let source = BufReader::new(Source {
        inner: payload,
        read: 0,
        expected: expected_len,
    });
    let decryptor = age::Decryptor::new_buffered(source)
        .map_err(|e| header_error(member, e, &Outcome::NotCalled))?;
    let identity = CbfsIdentity {
        member,
        keys,
        outcome: RefCell::new(Outcome::NotCalled),
    };
    let stream = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| header_error(member, e, &identity.outcome.borrow()))?;
    Ok(AgeLayer {
        inner: stream,
        member,
    })
}

/// Decompresses the plaintext and reads the metadata at its start (one
/// record, or a pack's table).
pub(crate) fn decode_plain<'a, P: BufRead + Send + 'a>(
    member: MemberId,
    plain: P,
) -> Result<MemberFiles<'a>, Error> {
    let decoder = FrameDecoder::new(plain);
    let mut plain = EncryptedPlain { decoder, member };

    let mut head = [0u8; 14];
    plain.read_exact_checked(&mut head)?;
    let (version, len) = parse_head(&head)?;
    if len > MAX_METADATA_LEN {
        return Err(corrupt(
            member,
            format!("metadata length {len} over the limit"),
        ));
    }
    let mut encoded = vec![0u8; len];
    plain.read_exact_checked(&mut encoded)?;
    let entries = decode_metadata(member, version, &encoded)?;
    let mut total = 0u64;
    for m in &entries {
        total = total
            .checked_add(m.size)
            .ok_or_else(|| corrupt(member, "the pack's sizes overflow"))?;
    }
    Ok(MemberFiles {
        entries,
        content: ContentReader::new(Box::new(plain), total),
    })
}

/// The plaintext version (1 or 2) and the metadata length, from the first
/// 14 plaintext bytes.
pub(crate) fn parse_head(head: &[u8; 14]) -> Result<(u16, usize), Error> {
    if &head[..8] != PLAINTEXT_BRAND {
        return Err(Error::BadBrand {
            object: ObjectKind::MemberPlaintext,
        });
    }
    let version = u16::from_be_bytes([head[8], head[9]]);
    if version != PLAINTEXT_VERSION && version != PACK_VERSION {
        return Err(Error::UnknownVersion {
            object: ObjectKind::MemberPlaintext,
            found: version.to_string(),
        });
    }
    Ok((
        version,
        u32::from_be_bytes([head[10], head[11], head[12], head[13]]) as usize,
    ))
}

/// The files' metadata: one record (version 1) or a pack's table (2).
pub(crate) fn decode_metadata(
    member: MemberId,
    version: u16,
    encoded: &[u8],
) -> Result<Vec<Metadata>, Error> {
    if version == PLAINTEXT_VERSION {
        return Ok(vec![Metadata::decode(encoded)?]);
    }
    let bad = |reason: String| corrupt(member, format!("pack table: {reason}"));
    let (count, mut rest) = match encoded {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as usize, rest),
        _ => return Err(bad("shorter than its count".into())),
    };
    if count == 0 || count > MAX_PACK_FILES {
        return Err(bad(format!(
            "{count} files (a pack holds 1 to {MAX_PACK_FILES})"
        )));
    }
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let Some((len, after)) = rest.split_first_chunk::<4>() else {
            return Err(bad(format!("ends inside entry {i}")));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if after.len() < len {
            return Err(bad(format!("entry {i} runs past the table")));
        }
        let (record, after) = after.split_at(len);
        entries.push(Metadata::decode(record)?);
        rest = after;
    }
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the last entry", rest.len())));
    }
    Ok(entries)
}

/// Decrypted pieces of plaintext queued between the two threads of
/// [`open_member_piped`], at most.
const PIPE_DEPTH: usize = 4;

/// What the decrypting thread sends.
enum Piece {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// Plaintext bytes per piece sent between the threads (a few age chunks:
/// fewer hand-overs, fewer wake-ups).
const PIECE: usize = 256 * 1024;

/// Reads `from` to its end (decrypting, or decompressing), sending what it
/// gives on in pieces.
fn send_pieces(mut from: impl Read, tx: mpsc::SyncSender<Piece>) {
    loop {
        let mut buf = vec![0u8; PIECE];
        let mut filled = 0;
        let mut failed = None;
        while filled < PIECE {
            match from.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let ended = filled < PIECE;
        if filled > 0 {
            buf.truncate(filled);
            if tx.send(Piece::Data(buf)).is_err() {
                return;
            }
        }
        if let Some(e) = failed {
            let _ = tx.send(Piece::Failed(e));
            return;
        }
        if ended {
            let _ = tx.send(Piece::End);
            return;
        }
    }
}

/// The plaintext arriving from the decrypting thread.
struct Piped {
    rx: mpsc::Receiver<Piece>,
    buf: Vec<u8>,
    pos: usize,
    ended: bool,
}

impl Read for Piped {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let have = self.fill_buf()?;
        let n = have.len().min(out.len());
        out[..n].copy_from_slice(&have[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Piped {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.buf.len() && !self.ended {
            match self.rx.recv() {
                Ok(Piece::Data(v)) => {
                    self.buf = v;
                    self.pos = 0;
                }
                Ok(Piece::End) => self.ended = true,
                Ok(Piece::Failed(e)) => return Err(e),
                Err(_) => {
                    return Err(Error::Io {
                        context: "decrypting a member payload",
                        source: io::Error::other("the decrypting thread stopped"),
                    }
                    .into_io());
                }
            }
        }
        Ok(&self.buf[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

/// Content decompressed, and checked to its end, by another thread.
struct PipedContent {
    piped: Piped,
    member: MemberId,
}

impl Read for PipedContent {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.piped.read(out)
    }
}

impl PlainSource for PipedContent {
    fn verify_end(&mut self) -> io::Result<()> {
        // The decompressing thread sends the end only once its own reader
        // checked it; an error there arrives here instead.
        let mut probe = [0u8; 1];
        match self.piped.read(&mut probe)? {
            0 => Ok(()),
            _ => Err(corrupt(self.member, "data after the content").into_io()),
        }
    }

    fn ended_early(&self) -> Error {
        corrupt(self.member, "the content ends before its declared length")
    }
}

fn piped(rx: mpsc::Receiver<Piece>) -> Piped {
    Piped {
        rx,
        buf: Vec::new(),
        pos: 0,
        ended: false,
    }
}

/// Opens one member of a segment like [`crate::open_member_at`], but
/// decrypts on a second thread and decompresses on a third while `f`
/// consumes the content on this one: for large members, this uses the
/// cores the way `age -d | zstd -d | tar -x` does. The content reader
/// lives only as long as `f`.
pub fn open_member_piped<R, T>(
    input: &mut R,
    member: MemberId,
    data_offset: u64,
    data_len: u64,
    keys: &dyn GroupKeys,
    f: impl for<'c> FnOnce(Result<MemberFiles<'c>, Error>) -> T,
) -> T
where
    R: Read + io::Seek + Send,
{
    if let Err(e) = input.seek(io::SeekFrom::Start(data_offset)) {
        return f(Err(Error::Io {
            context: "seeking in a segment",
            source: e,
        }));
    }
    let age = match open_age(member, input.take(data_len), Some(data_len), keys) {
        Ok(age) => age,
        Err(e) => return f(Err(e)),
    };
    std::thread::scope(|scope| {
        let (plain_tx, plain_rx) = mpsc::sync_channel(PIPE_DEPTH);
        scope.spawn(move || send_pieces(age, plain_tx));
        let (head_tx, head_rx) = mpsc::sync_channel(1);
        let (content_tx, content_rx) = mpsc::sync_channel(PIPE_DEPTH);
        scope.spawn(move || match decode_plain(member, piped(plain_rx)) {
            Err(e) => drop(head_tx.send(Err(e))),
            Ok(MemberFiles { entries, content }) => {
                let total = content.remaining();
                if head_tx.send(Ok((entries, total))).is_ok() {
                    send_pieces(content, content_tx);
                }
            }
        });
        let head = head_rx.recv().unwrap_or_else(|_| {
            Err(Error::Io {
                context: "decompressing a member payload",
                source: io::Error::other("the decompressing thread stopped"),
            })
        });
        f(head.map(|(entries, total)| MemberFiles {
            entries,
            content: ContentReader::new(
                Box::new(PipedContent {
                    piped: piped(content_rx),
                    member,
                }),
                total,
            ),
        }))
    })
}

fn corrupt(member: MemberId, reason: impl Into<String>) -> Error {
    Error::CorruptPlaintext {
        member,
        reason: reason.into(),
    }
}

fn header_error(member: MemberId, err: age::DecryptError, outcome: &Outcome) -> Error {
    use age::DecryptError as D;
    match (err, outcome) {
        (D::InvalidHeader, Outcome::BadStanza(reason)) => Error::MemberHeader {
            member,
            reason: reason.clone(),
        },
        (D::InvalidHeader, _) => Error::MemberHeader {
            member,
            reason: "not a valid age v1 header".into(),
        },
        (D::InvalidMac, _) => Error::HeaderMac { member },
        (D::NoMatchingKeys, Outcome::NoKey(group)) => Error::WrongKey {
            member,
            group: Some(*group),
        },
        (D::NoMatchingKeys, _) => Error::WrongKey {
            member,
            group: None,
        },
        (D::DecryptionFailed | D::KeyDecryptionFailed, Outcome::Unwrap(group)) => Error::WrongKey {
            member,
            group: Some(*group),
        },
        (D::UnknownFormat, _) => Error::UnknownVersion {
            object: ObjectKind::MemberPayload,
            found: "an age format other than v1".into(),
        },
        (D::Io(e), _) => match classify_source(e) {
            Cause::Short => Error::PayloadTruncated { member },
            Cause::Ours(e) => e,
            Cause::Fault(source) => Error::Io {
                context: READING,
                source,
            },
            Cause::Other(e) => Error::MemberHeader {
                member,
                reason: if e.kind() == io::ErrorKind::UnexpectedEof {
                    "payload ends inside the header".into()
                } else {
                    e.to_string()
                },
            },
        },
        (other, _) => Error::MemberHeader {
            member,
            reason: other.to_string(),
        },
    }
}

/// An I/O error of the underlying reader, marked so that it is never mistaken for an
/// authentication failure on its way up through age and zstd.
#[derive(Debug)]
struct SourceFault(io::Error);

impl std::fmt::Display for SourceFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
impl std::error::Error for SourceFault {}

/// The source ended before the length the segment declared.
#[derive(Debug)]
struct SourceShort;

impl std::fmt::Display for SourceShort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payload source ended early")
    }
}
impl std::error::Error for SourceShort {}

enum Cause {
    /// Already one of this crate's errors (from a segment reader underneath).
    Ours(Error),
    /// The source ended before the length the segment declared.
    Short,
    /// The source itself failed.
    Fault(io::Error),
    /// Anything else: age's or zstd's own error.
    Other(io::Error),
}

/// Sorts out errors that came from the source rather than from age's checks.
fn classify_source(err: io::Error) -> Cause {
    if err.get_ref().is_some_and(|i| i.is::<Error>()) {
        return Cause::Ours(Error::from_io(err, READING));
    }
    if err.get_ref().is_some_and(|i| i.is::<SourceShort>()) {
        return Cause::Short;
    }
    if err.get_ref().is_some_and(|i| i.is::<SourceFault>()) {
        let kind = err.kind();
        let inner = err
            .into_inner()
            .and_then(|b| b.downcast::<SourceFault>().ok())
            .map(|b| b.0)
            .unwrap_or_else(|| io::Error::new(kind, "source error"));
        return Cause::Fault(inner);
    }
    Cause::Other(err)
}

const READING: &str = "reading a member payload";

struct Source<R> {
    inner: R,
    read: u64,
    expected: Option<u64>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() && self.expected.is_some_and(|e| self.read < e) => {
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, SourceShort))
            }
            Ok(n) => {
                self.read += n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) if e.get_ref().is_some_and(|i| i.is::<Error>()) => Err(e),
            Err(e) => Err(io::Error::other(SourceFault(e))),
        }
    }
}

/// Turns age's stream errors into this crate's errors (carried in `io::Error`).
struct AgeLayer<R: Read> {
    inner: age::stream::StreamReader<BufReader<Source<R>>>,
    member: MemberId,
}

impl<R: Read> Read for AgeLayer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::Interrupted {
                return e;
            }
            let member = self.member;
            let ours = match classify_source(e) {
                Cause::Short => Error::PayloadTruncated { member },
                Cause::Ours(e) => e,
                Cause::Fault(source) => Error::Io {
                    context: READING,
                    source,
                },
                Cause::Other(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Error::PayloadTruncated { member }
                }
                Cause::Other(e) if e.kind() == io::ErrorKind::InvalidData => {
                    Error::PayloadAuth { member }
                }
                Cause::Other(e) => Error::Io {
                    context: "decrypting a member payload",
                    source: e,
                },
            };
            ours.into_io()
        })
    }
}

/// A content source that can tell whether it was fully and validly consumed.
pub(crate) trait PlainSource: Read {
    /// Called once all declared content was read: checks that nothing follows and that
    /// the source's own integrity checks pass.
    fn verify_end(&mut self) -> io::Result<()>;

    /// The error for a source that ends before the declared content length.
    fn ended_early(&self) -> Error;
}

fn map_plain_error(member: MemberId, e: io::Error) -> io::Error {
    if e.get_ref().is_some_and(|i| i.is::<Error>()) || e.kind() == io::ErrorKind::Interrupted {
        e
    } else {
        corrupt(member, format!("decompression failed: {e}")).into_io()
    }
}

struct EncryptedPlain<P: BufRead> {
    decoder: FrameDecoder<P>,
    member: MemberId,
}

impl<P: BufRead> EncryptedPlain<P> {
    fn map(&self, e: io::Error) -> io::Error {
        map_plain_error(self.member, e)
    }

    fn read_exact_checked(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(corrupt(self.member, "plaintext ends inside the metadata"));
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_io(e, "reading a member")),
            }
        }
        Ok(())
    }
}

impl<P: BufRead> Read for EncryptedPlain<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.decoder.read(buf).map_err(|e| self.map(e))
    }
}

impl<P: BufRead> PlainSource for EncryptedPlain<P> {
    fn verify_end(&mut self) -> io::Result<()> {
        let mut probe = [0u8; 1];
        loop {
            match self.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => return Err(corrupt(self.member, "data after the content").into_io()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // The zstd frame is over; nothing may follow it, and age must see its last chunk.
        let member = self.member;
        let rest = self
            .decoder
            .get_mut()
            .fill_buf()
            .map_err(|e| map_plain_error(member, e))?;
        if !rest.is_empty() {
            return Err(corrupt(self.member, "data after the compressed frame").into_io());
        }
        Ok(())
    }

    fn ended_early(&self) -> Error {
        corrupt(
            self.member,
            "plaintext ends before the size in its metadata",
        )
    }
}

/// Reads a member's content: exactly the size in its metadata, then checks the end.
///
/// Every error is an [`io::Error`] carrying an [`Error`]; get it back with
/// [`Error::from_io`].
pub struct ContentReader<'a> {
    inner: Box<dyn PlainSource + Send + 'a>,
    remaining: u64,
    verified: bool,
}

impl<'a> ContentReader<'a> {
    pub(crate) fn new(inner: Box<dyn PlainSource + Send + 'a>, size: u64) -> Self {
        ContentReader {
            inner,
            remaining: size,
            verified: false,
        }
    }

    /// Content bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Reads and drops what is left, then checks the end of the payload.
    pub fn finish(mut self) -> Result<(), Error> {
        io::copy(&mut self, &mut io::sink()).map_err(Error::io("reading member content"))?;
        Ok(())
    }
}

impl Read for ContentReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            if !self.verified {
                self.inner.verify_end()?;
                self.verified = true;
            }
            return Ok(0);
        }
        let max = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(self.inner.ended_early().into_io());
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

impl std::fmt::Debug for ContentReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentReader")
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}
