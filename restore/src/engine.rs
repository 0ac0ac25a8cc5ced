//! The restore engine's state, and reading one member at a known place.
//!
//! A restore runs in two passes, so that the output can be in path order
//! while memory stays bounded:
//!
//! 1. `plan.rs`: per segment, open the lockboxes this identity can, and read
//!    each member's metadata (the path is encrypted inside the member).
//! 2. `emit.rs`: check every path and link, sort, then read each member again
//!    by offset, streaming its content to the sink while hashing the
//!    ciphertext; commit it only once it authenticated and the hash matched.

use std::collections::HashMap;
use std::io::{self, Read, SeekFrom};
use std::sync::Arc;

use cbfs_format::{
    EntryKind, Keyring, MemberFiles, MemberId, Metadata, PEEK_LEN, SegmentId, SegmentMode,
    SegmentReader, open_member_files_at, open_member_piped, peek_metadata,
};

use crate::error::{Error, Result};
use crate::hashing::HashingReader;
use crate::opener::LockboxOpener;
use crate::paths::PathFilter;
use crate::report::{Failure, Report};
use crate::source::{ObjectSource, ReadSeek};

/// Where a member's bytes are.
#[derive(Clone, Debug)]
pub(crate) struct Location {
    /// The key to open the segment by.
    pub key: String,
    /// How to name the segment in reports (the key, or a file path).
    pub object: String,
    pub segment: SegmentId,
    pub member: Option<MemberId>,
    pub mode: SegmentMode,
    pub header_offset: u64,
    pub data_offset: u64,
    pub data_len: u64,
    /// The SHA-256 the manifest gives for the data; `None` for loose segments.
    pub sha256: Option<[u8; 32]>,
    /// The relocation records that led here, when garbage collection moved
    /// the member out of the segment its manifest names.
    pub via: Option<Arc<str>>,
}

impl Location {
    pub(crate) fn member_text(&self) -> Option<String> {
        self.member.map(|m| m.to_string())
    }

    pub(crate) fn failure(&self, err: &Error) -> Failure {
        let mut f = Failure::new(self.object.clone(), self.member_text(), err);
        if let Some(via) = &self.via {
            f.error.push_str(&format!(
                "; the member was read where {via} says it was moved"
            ));
        }
        f
    }
}

/// A file found in pass 1, to be written in pass 2.
#[derive(Clone)]
pub(crate) struct Planned {
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// The content size the metadata gave in pass 1.
    pub size: u64,
    pub loc: Location,
    /// Which file of its member it is (0 unless the member is a pack).
    pub slot: usize,
}

/// What pass 2 does with a member's files as they are read.
pub(crate) trait Visit {
    /// File `slot`'s metadata, before any of its content.
    fn meta(&mut self, slot: usize, meta: &Metadata) -> Result<()>;
    /// A piece of file `slot`'s content.
    fn data(&mut self, slot: usize, data: &[u8]) -> Result<()>;
}

/// Why reading a member failed. Shared by the files of a pack, which fail
/// together.
#[derive(Clone)]
pub(crate) struct MemberError {
    pub err: Arc<Error>,
    /// The error came from the visitor (the sink), not from the member.
    pub from_visitor: bool,
    /// The member's bytes were also found to differ from the manifest.
    pub hash_differs: bool,
}

impl MemberError {
    pub(crate) fn member(err: Error) -> Self {
        MemberError {
            err: Arc::new(err),
            from_visitor: false,
            hash_differs: false,
        }
    }

    pub(crate) fn visitor(err: Error) -> Self {
        MemberError {
            err: Arc::new(err),
            from_visitor: true,
            hash_differs: false,
        }
    }

    /// The error itself (a copy of its text if it is shared).
    pub(crate) fn into_error(self) -> Error {
        Arc::try_unwrap(self.err).unwrap_or_else(|shared| Error::Usage(shared.to_string()))
    }

    pub(crate) fn into_failure(self, loc: &Location) -> Failure {
        let mut f = loc.failure(&self.err);
        if self.hash_differs {
            f.error.push_str(
                "; its bytes also differ from the SHA-256 in the manifest (altered in the store)",
            );
        }
        f
    }
}

/// Opens a member at its location and visits each of its files' metadata
/// and content in turn. Succeeds only if the member authenticated to its
/// end and, when the location has a SHA-256, its data bytes hash to it.
/// With `piped`, decryption runs on a second thread (for large members).
pub(crate) fn read_member(
    reader: &mut (dyn ReadSeek + '_),
    loc: &Location,
    keys: &Keyring,
    visit: &mut dyn Visit,
    piped: bool,
) -> Result<Vec<Metadata>, MemberError> {
    let mut hashing = HashingReader::new(reader, loc.data_offset, loc.data_len);
    let result = stream(&mut hashing, loc, keys, visit, piped);
    let digest = hashing.finish();
    let hash_ok = match (&digest, loc.sha256) {
        (_, None) => true,
        (Ok(Some((got, true))), Some(want)) => *got == want,
        _ => false,
    };
    match result {
        Err(mut e) => {
            e.hash_differs = !hash_ok && !e.from_visitor && matches!(digest, Ok(Some(_)));
            Err(e)
        }
        Ok(_) if !hash_ok => {
            let reason = match digest {
                Ok(Some((got, true))) => format!(
                    "its data hashes to {}, but the manifest says {}: altered in the store, \
                     or a member swapped in from another segment",
                    hex::encode(got),
                    hex::encode(loc.sha256.unwrap_or_default())
                ),
                Ok(Some((_, false))) => "the segment ends inside the member's data".to_owned(),
                Ok(None) => "the member's data was read out of order".to_owned(),
                Err(e) => format!("cannot read the member's data to hash it: {e}"),
            };
            Err(MemberError::member(Error::HashMismatch {
                object: loc.object.clone(),
                member: loc.member_text().unwrap_or_default(),
                reason,
            }))
        }
        Ok(meta) => Ok(meta),
    }
}

fn stream(
    input: &mut HashingReader<'_, '_>,
    loc: &Location,
    keys: &Keyring,
    visit: &mut dyn Visit,
    piped: bool,
) -> Result<Vec<Metadata>, MemberError> {
    let fmt = |e: cbfs_format::Error| MemberError::member(Error::format(loc.object.clone(), e));
    match (loc.mode, loc.member) {
        (SegmentMode::Encrypted, Some(member)) if piped => open_member_piped(
            input,
            member,
            loc.data_offset,
            loc.data_len,
            keys,
            |opened| match opened {
                Ok(files) => pump(files, loc, visit),
                Err(e) => Err(fmt(e)),
            },
        ),
        (SegmentMode::Encrypted, Some(member)) => {
            let files = open_member_files_at(input, member, loc.data_offset, loc.data_len, keys)
                .map_err(fmt)?;
            pump(files, loc, visit)
        }
        (SegmentMode::Encrypted, None) => Err(MemberError::member(Error::Usage(
            "an encrypted member without an id".into(),
        ))),
        (SegmentMode::Plain, _) => {
            let mut seg =
                SegmentReader::resume_at(input, loc.segment, SegmentMode::Plain, loc.header_offset)
                    .map_err(fmt)?;
            let Some(m) = seg.next_member().map_err(fmt)? else {
                return Err(fmt(cbfs_format::Error::Tar {
                    segment: Some(loc.segment),
                    offset: loc.header_offset,
                    reason: "no member at this offset".into(),
                }));
            };
            if m.info().data_offset != loc.data_offset || m.info().data_len != loc.data_len {
                return Err(fmt(cbfs_format::Error::SummaryMismatch {
                    segment: loc.segment,
                    offset: loc.header_offset,
                    reason: format!(
                        "the member here has its data at {} ({} bytes), not at {} ({} bytes)",
                        m.info().data_offset,
                        m.info().data_len,
                        loc.data_offset,
                        loc.data_len
                    ),
                }));
            }
            let files = m.open_files(&Keyring::new()).map_err(fmt)?;
            pump(files, loc, visit)
        }
    }
}

fn pump(
    files: MemberFiles<'_>,
    loc: &Location,
    visit: &mut dyn Visit,
) -> Result<Vec<Metadata>, MemberError> {
    let MemberFiles {
        entries,
        mut content,
    } = files;
    let fmt = |e: io::Error| {
        let e = cbfs_format::Error::from_io(e, "reading a member");
        MemberError::member(Error::format(loc.object.clone(), e))
    };
    // Sized to the largest file (most are small; a zeroed 64 KiB buffer
    // per member showed in the profile).
    let largest = entries.iter().map(|m| m.size).max().unwrap_or(0);
    let mut buf = vec![0u8; (largest as usize).clamp(4096, 64 * 1024)];
    for (slot, meta) in entries.iter().enumerate() {
        visit.meta(slot, meta).map_err(MemberError::visitor)?;
        let mut left = meta.size;
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match content.read(&mut buf[..want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fmt(e)),
            };
            left -= n as u64;
            visit.data(slot, &buf[..n]).map_err(MemberError::visitor)?;
        }
    }
    // The end of the payload is checked once all content was read.
    loop {
        match content.read(&mut buf[..1]) {
            Ok(0) => break,
            Ok(_) => return Err(fmt(io::Error::other("content past the files' sizes"))),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(fmt(e)),
        }
    }
    Ok(entries)
}

/// How a restore runs (the same output whatever is chosen).
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// What to restore: everything by default.
    pub filter: PathFilter,
    /// Threads that decode members: `None` for one per core (at most 8),
    /// `Some(1)` for everything on the calling thread. The output is
    /// written in order by the calling thread either way. Each restore has
    /// its own: nothing is set for the whole process.
    pub threads: Option<usize>,
}

impl RestoreOptions {
    /// The decoding threads this restore uses.
    pub(crate) fn decode_threads(&self) -> usize {
        match self.threads {
            Some(n) => n.max(1),
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(8),
        }
    }
}

/// The restore's working state, shared by both passes.
///
/// Members are decoded on up to [`threads`](Self::threads) threads in both
/// passes; everything that decides or writes (the report, the vetting, the
/// sink) stays on the calling thread, in order.
pub(crate) struct Engine<'s> {
    pub source: &'s dyn ObjectSource,
    pub opener: &'s dyn LockboxOpener,
    pub filter: &'s PathFilter,
    /// Every group key opened so far.
    pub keys: Keyring,
    /// Members to write.
    pub planned: Vec<Planned>,
    /// Members the filter left out, kept to restore a hard link whose target
    /// was left out as a copy.
    pub excluded: HashMap<Vec<u8>, Planned>,
    pub report: Report,
    /// Threads that decode members (1: all on the calling thread).
    pub threads: usize,
}

impl<'s> Engine<'s> {
    pub(crate) fn new(
        source: &'s dyn ObjectSource,
        opener: &'s dyn LockboxOpener,
        opts: &'s RestoreOptions,
    ) -> Self {
        Engine {
            source,
            opener,
            filter: &opts.filter,
            keys: Keyring::new(),
            planned: Vec::new(),
            excluded: HashMap::new(),
            report: Report::default(),
            threads: opts.decode_threads(),
        }
    }

    /// Records a file whose metadata pass 1 read: file `slot` of the
    /// member at `loc`.
    pub(crate) fn found(&mut self, meta: &Metadata, loc: Location, slot: usize) {
        let planned = Planned {
            path: meta.path.clone(),
            kind: meta.kind.clone(),
            size: meta.size,
            loc,
            slot,
        };
        if self.filter.matches(&meta.path) {
            self.planned.push(planned);
        } else {
            self.report.filtered_out += 1;
            if meta.kind == EntryKind::File {
                self.excluded.insert(meta.path.clone(), planned);
            }
        }
    }
}

/// Reads only a member's metadata (pass 1): its one file's, or a pack's
/// table. Nothing is proven yet: an encrypted member's metadata is read
/// without authentication ([`peek_metadata`]), or if that fails, from its
/// authenticated first chunk(s). Pass 2 authenticates everything and holds
/// it to what pass 1 read.
pub(crate) fn peek_meta(
    reader: &mut (dyn ReadSeek + '_),
    loc: &Location,
    keys: &Keyring,
) -> Result<Vec<Metadata>, cbfs_format::Error> {
    match (loc.mode, loc.member) {
        (SegmentMode::Encrypted, Some(member)) => {
            // The claim is checked when the member is read again: pass 2
            // authenticates it and refuses it unless it is what was planned.
            let mut head = vec![0u8; (loc.data_len as usize).min(PEEK_LEN)];
            let read = reader
                .seek(SeekFrom::Start(loc.data_offset))
                .and_then(|_| reader.read_exact(&mut head));
            if read.is_ok()
                && let Some(meta) = peek_metadata(member, &head, loc.data_len, keys)
            {
                return Ok(meta);
            }
            let mut input = &mut *reader;
            let files =
                open_member_files_at(&mut input, member, loc.data_offset, loc.data_len, keys)?;
            Ok(files.entries)
        }
        (SegmentMode::Encrypted, None) => Err(cbfs_format::Error::InvalidInput {
            reason: "an encrypted member without an id".into(),
        }),
        (SegmentMode::Plain, _) => {
            let mut seg = SegmentReader::resume_at(
                &mut *reader,
                loc.segment,
                SegmentMode::Plain,
                loc.header_offset,
            )?;
            let m = seg.next_member()?.ok_or_else(|| cbfs_format::Error::Tar {
                segment: Some(loc.segment),
                offset: loc.header_offset,
                reason: "no member at this offset".into(),
            })?;
            if m.info().data_offset != loc.data_offset || m.info().data_len != loc.data_len {
                return Err(cbfs_format::Error::SummaryMismatch {
                    segment: loc.segment,
                    offset: loc.header_offset,
                    reason: "the member here does not have the summary's offsets".into(),
                });
            }
            Ok(vec![
                m.plain_metadata()
                    .cloned()
                    .expect("plain members carry metadata"),
            ])
        }
    }
}
