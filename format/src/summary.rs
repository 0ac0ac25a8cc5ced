//! Segment summaries: plaintext, keyless descriptions of a segment's members.
//!
//! The summary's segment digest is, in version 2, the SHA-256 of the
//! segment's bytes with each member's data replaced by that data's SHA-256
//! (the entry's `sha256`): a writer computes it in one pass even when a
//! member's header is written after its data. Version 1 (still read) held
//! the SHA-256 of all the segment's bytes.

use std::collections::HashSet;
use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::{GroupId, MemberId, SegmentId};
use crate::plain::padded;
use crate::segment_reader::{MAX_PAX_LEN, SegmentReader};
use crate::segment_writer::SegmentMode;
use crate::stanza::group_in_header;
use crate::tar::{BLOCK, GLOBAL_HEADER_LEN};

const BRAND: &[u8; 8] = b"CBFSSUMM";
/// The version this release writes; version 1 is still read.
pub(crate) const VERSION: u16 = 2;
const ENTRY_LEN: usize = 16 + 8 + 8 + 8 + 16 + 32;
/// Offset of the first entry: brand, version, segment id, mode, length, hash, count.
const ENTRIES_AT: usize = 8 + 2 + 16 + 1 + 8 + 32 + 4;
const TRAILER: u64 = 2 * BLOCK as u64;
/// How much of an encrypted payload to look at for its stanza's group id.
const HEADER_PEEK: usize = 4096;

/// One member in a summary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SummaryEntry {
    /// The member's id.
    pub member: MemberId,
    /// Offset of its first header block in the segment.
    pub header_offset: u64,
    /// Offset of its data.
    pub data_offset: u64,
    /// Length of its data, without padding.
    pub data_len: u64,
    /// The group whose key wraps its file key; `None` in plain mode.
    pub group: Option<GroupId>,
    /// SHA-256 of its data bytes (the ciphertext, in encrypted mode).
    pub sha256: [u8; 32],
}

impl SummaryEntry {
    /// Offset just past the member's padded data: where the next member starts.
    pub fn end_offset(&self) -> u64 {
        self.data_offset.saturating_add(padded(self.data_len))
    }
}

/// What a segment holds, without names or keys: enough for GC to work with no key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    segment: SegmentId,
    mode: SegmentMode,
    segment_len: u64,
    segment_sha256: [u8; 32],
    entries: Vec<SummaryEntry>,
    /// 1: `segment_sha256` is of all the bytes; 2: the segment digest.
    version: u16,
    /// Where each member is in `entries`: lookups stay O(1) in big segments.
    by_member: std::collections::HashMap<MemberId, usize>,
}

impl Summary {
    /// A summary of the version this release writes, checked for
    /// consistency (offsets contiguous, ids unique, ...).
    pub(crate) fn new(
        segment: SegmentId,
        mode: SegmentMode,
        segment_len: u64,
        segment_digest: [u8; 32],
        entries: Vec<SummaryEntry>,
    ) -> Result<Self, Error> {
        Self::with_version(VERSION, segment, mode, segment_len, segment_digest, entries)
    }

    fn with_version(
        version: u16,
        segment: SegmentId,
        mode: SegmentMode,
        segment_len: u64,
        segment_sha256: [u8; 32],
        entries: Vec<SummaryEntry>,
    ) -> Result<Self, Error> {
        let by_member = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.member, i))
            .collect();
        let s = Summary {
            segment,
            mode,
            segment_len,
            segment_sha256,
            entries,
            version,
            by_member,
        };
        s.check_layout().map_err(|(i, reason)| Error::Malformed {
            object: ObjectKind::Summary,
            offset: (ENTRIES_AT + i * ENTRY_LEN) as u64,
            reason,
        })?;
        Ok(s)
    }

    fn check_layout(&self) -> Result<(), (usize, String)> {
        let mut next = GLOBAL_HEADER_LEN;
        let mut seen = HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            if e.header_offset != next {
                return Err((
                    i,
                    format!(
                        "member {} starts at {}, expected {next}",
                        e.member, e.header_offset
                    ),
                ));
            }
            let header_len = e.data_offset.saturating_sub(e.header_offset);
            if !header_len_fits(self.mode, header_len) {
                return Err((
                    i,
                    format!("member {}: bad header length {header_len}", e.member),
                ));
            }
            if !group_fits(self.mode, e.group) {
                return Err((
                    i,
                    format!("member {}: group does not fit the mode", e.member),
                ));
            }
            if !seen.insert(e.member) {
                return Err((i, format!("member {} listed twice", e.member)));
            }
            next = e
                .data_offset
                .checked_add(padded(e.data_len))
                .filter(|n| *n < u64::MAX / 2)
                .ok_or((i, "offsets overflow".to_string()))?;
        }
        if self.segment_len != next + TRAILER {
            return Err((
                self.entries.len(),
                format!(
                    "segment length {} should be {}",
                    self.segment_len,
                    next + TRAILER
                ),
            ));
        }
        Ok(())
    }

    /// The segment's id.
    pub fn segment_id(&self) -> SegmentId {
        self.segment
    }
    /// The segment's mode.
    pub fn mode(&self) -> SegmentMode {
        self.mode
    }
    /// The segment's total length in bytes.
    pub fn segment_len(&self) -> u64 {
        self.segment_len
    }
    /// The segment digest (version 2: of the segment's bytes with each
    /// member's data replaced by its SHA-256; version 1: of all its bytes).
    pub fn segment_sha256(&self) -> &[u8; 32] {
        &self.segment_sha256
    }
    /// The members, in segment order.
    pub fn entries(&self) -> &[SummaryEntry] {
        &self.entries
    }
    /// The groups whose lockboxes open this segment's members.
    pub fn groups(&self) -> std::collections::BTreeSet<GroupId> {
        self.entries.iter().filter_map(|e| e.group).collect()
    }

    /// The entry of one member.
    pub fn entry(&self, member: &MemberId) -> Option<&SummaryEntry> {
        self.by_member.get(member).map(|&i| &self.entries[i])
    }

    /// The canonical bytes (see `docs/FORMAT.md`, "Summary").
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::with_brand(BRAND, self.version);
        e.raw(self.segment.as_bytes());
        e.u8(match self.mode {
            SegmentMode::Encrypted => 1,
            SegmentMode::Plain => 2,
        });
        e.u64(self.segment_len);
        e.raw(&self.segment_sha256);
        e.u32(self.entries.len() as u32);
        for x in &self.entries {
            write_entry(&mut e, x);
        }
        e.into_vec()
    }

    /// Parses strictly: brand, version, exact length, consistent layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Summary)?;
        if version != 1 && version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::Summary, version));
        }
        let segment = SegmentId::from_bytes(d.array()?);
        let mode_at = d.pos();
        let mode = match d.u8()? {
            1 => SegmentMode::Encrypted,
            2 => SegmentMode::Plain,
            m => return Err(d.err_at(mode_at, format!("unknown mode {m}"))),
        };
        let segment_len = d.u64()?;
        let segment_sha256 = d.array()?;
        let count_at = d.pos();
        let count = d.u32()? as usize;
        if count.checked_mul(ENTRY_LEN) != Some(d.remaining()) {
            return Err(d.err_at(
                count_at,
                format!(
                    "{count} entries do not fill the remaining {} bytes",
                    d.remaining()
                ),
            ));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(read_entry(&mut d)?);
        }
        d.finish()?;
        Summary::with_version(version, segment, mode, segment_len, segment_sha256, entries)
    }

    /// Checks a segment's bytes against this summary, without any key: tar structure,
    /// ids, offsets, lengths, each member's SHA-256 and the whole segment's SHA-256.
    pub fn verify_segment(&self, segment: impl Read) -> Result<(), Error> {
        // Version 1 hashes every byte; version 2 replaces each member's
        // data by its SHA-256 (the one in the entry: that the data hashes
        // to it is checked member by member below).
        let data: Vec<(u64, u64, [u8; 32])> = if self.version == 1 {
            Vec::new()
        } else {
            self.entries
                .iter()
                .map(|e| (e.data_offset, e.data_len, e.sha256))
                .collect()
        };
        let mut hashing = HashReader {
            inner: segment,
            hasher: Sha256::new(),
            count: 0,
            data: &data,
            next: 0,
            inserted: false,
        };
        let mismatch = |offset: u64, reason: String| Error::SummaryMismatch {
            segment: self.segment,
            offset,
            reason,
        };
        {
            let mut reader = SegmentReader::new(&mut hashing)?;
            if reader.segment_id() != self.segment || reader.mode() != self.mode {
                return Err(mismatch(
                    0,
                    format!(
                        "segment header names {} ({:?}), summary is for {} ({:?})",
                        reader.segment_id(),
                        reader.mode(),
                        self.segment,
                        self.mode
                    ),
                ));
            }
            for expected in &self.entries {
                let Some(member) = reader.next_member()? else {
                    return Err(mismatch(
                        expected.header_offset,
                        format!("member {} is missing", expected.member),
                    ));
                };
                let info = member.info().clone();
                if info.header_offset != expected.header_offset
                    || info.data_offset != expected.data_offset
                    || info.data_len != expected.data_len
                    || info.member.is_some_and(|m| m != expected.member)
                {
                    return Err(mismatch(
                        info.header_offset,
                        format!("member {}: position or id differs", expected.member),
                    ));
                }
                let mut hw = HashReader {
                    inner: member.raw(),
                    hasher: Sha256::new(),
                    count: 0,
                    data: &[],
                    next: 0,
                    inserted: false,
                };
                let mut prefix = Vec::with_capacity(HEADER_PEEK);
                (&mut hw)
                    .take(HEADER_PEEK as u64)
                    .read_to_end(&mut prefix)
                    .map_err(|e| Error::from_io(e, "reading a segment"))?;
                io::copy(&mut hw, &mut io::sink())
                    .map_err(|e| Error::from_io(e, "reading a segment"))?;
                let sha: [u8; 32] = hw.hasher.finalize().into();
                if self.mode == SegmentMode::Encrypted && group_in_header(&prefix) != expected.group
                {
                    return Err(mismatch(
                        info.data_offset,
                        format!("member {}: group in its stanza differs", expected.member),
                    ));
                }
                if sha != expected.sha256 {
                    return Err(mismatch(
                        info.data_offset,
                        format!("member {}: SHA-256 differs", expected.member),
                    ));
                }
            }
            if let Some(extra) = reader.next_member()? {
                let at = extra.info().header_offset;
                return Err(mismatch(
                    at,
                    "the segment has members the summary does not list".into(),
                ));
            }
        }
        if hashing.count != self.segment_len {
            return Err(mismatch(
                hashing.count,
                format!(
                    "segment is {} bytes, summary says {}",
                    hashing.count, self.segment_len
                ),
            ));
        }
        let sha: [u8; 32] = hashing.hasher.finalize().into();
        if sha != self.segment_sha256 {
            return Err(mismatch(
                0,
                "the digest of the whole segment differs".into(),
            ));
        }
        Ok(())
    }
}

/// The length of a summary entry in bytes.
pub(crate) const SUMMARY_ENTRY_LEN: usize = ENTRY_LEN;

/// Writes one entry as a summary (and a relocation record) has it.
pub(crate) fn write_entry(e: &mut Enc, x: &SummaryEntry) {
    e.raw(x.member.as_bytes());
    e.u64(x.header_offset);
    e.u64(x.data_offset);
    e.u64(x.data_len);
    e.raw(x.group.as_ref().map_or(&[0u8; 16], |g| g.as_bytes()));
    e.raw(&x.sha256);
}

/// Reads one entry as a summary (and a relocation record) has it.
pub(crate) fn read_entry(d: &mut Dec<'_>) -> Result<SummaryEntry, Error> {
    let member = MemberId::from_bytes(d.array()?);
    let header_offset = d.u64()?;
    let data_offset = d.u64()?;
    let data_len = d.u64()?;
    let group = GroupId::from_bytes(d.array()?);
    let sha256 = d.array()?;
    Ok(SummaryEntry {
        member,
        header_offset,
        data_offset,
        data_len,
        group: (!group.is_zero()).then_some(group),
        sha256,
    })
}

/// Whether a member's headers may take `header_len` bytes in a segment of
/// `mode`: one block when encrypted; whole blocks, up to a pax record and
/// two more, when plain.
pub(crate) fn header_len_fits(mode: SegmentMode, header_len: u64) -> bool {
    match mode {
        SegmentMode::Encrypted => header_len == BLOCK as u64,
        SegmentMode::Plain => {
            header_len >= BLOCK as u64
                && header_len.is_multiple_of(BLOCK as u64)
                && header_len <= MAX_PAX_LEN + 2 * BLOCK as u64
        }
    }
}

/// Whether a member's group fits the mode: a non-zero group when
/// encrypted, none when plain.
pub(crate) fn group_fits(mode: SegmentMode, group: Option<GroupId>) -> bool {
    match (mode, group) {
        (SegmentMode::Encrypted, Some(g)) => !g.is_zero(),
        (SegmentMode::Plain, None) => true,
        _ => false,
    }
}

/// Hashes what it reads: every byte, except the `data` ranges (offset,
/// length, SHA-256), each of which is hashed as its SHA-256 instead.
struct HashReader<'d, R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    data: &'d [(u64, u64, [u8; 32])],
    /// The next range not yet passed.
    next: usize,
    /// Whether that range's SHA-256 was hashed already.
    inserted: bool,
}

impl<R> HashReader<'_, R> {
    /// Hashes `bytes`, which sit at `self.count` in the stream.
    fn hash(&mut self, mut bytes: &[u8]) {
        let mut pos = self.count;
        loop {
            let Some(&(start, len, sha)) = self.data.get(self.next) else {
                self.hasher.update(bytes);
                return;
            };
            if pos < start {
                let n = usize::try_from(start - pos)
                    .unwrap_or(usize::MAX)
                    .min(bytes.len());
                self.hasher.update(&bytes[..n]);
                (bytes, pos) = (&bytes[n..], pos + n as u64);
                if pos < start {
                    return;
                }
            }
            if !self.inserted {
                self.hasher.update(sha);
                self.inserted = true;
            }
            let end = start + len;
            let n = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            (bytes, pos) = (&bytes[n..], pos + n as u64);
            if pos < end {
                return;
            }
            self.next += 1;
            self.inserted = false;
        }
    }
}

impl<R: Read> Read for HashReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_summary() -> impl Strategy<Value = Summary> {
        (
            any::<bool>(),
            any::<[u8; 32]>(),
            proptest::collection::vec((0u64..5_000_000, 0u64..4, any::<[u8; 32]>()), 0..20),
        )
            .prop_map(|(encrypted, seg_sha, members)| {
                let mode = if encrypted {
                    SegmentMode::Encrypted
                } else {
                    SegmentMode::Plain
                };
                let mut next = GLOBAL_HEADER_LEN;
                let mut entries = Vec::new();
                for (len, extra_blocks, sha256) in members {
                    let header_len = BLOCK as u64 * if encrypted { 1 } else { 1 + extra_blocks };
                    let e = SummaryEntry {
                        member: MemberId::random(),
                        header_offset: next,
                        data_offset: next + header_len,
                        data_len: len,
                        group: encrypted.then(GroupId::random),
                        sha256,
                    };
                    next = e.end_offset();
                    entries.push(e);
                }
                Summary::new(SegmentId::random(), mode, next + TRAILER, seg_sha, entries).unwrap()
            })
    }

    /// A member length from the store near `u64::MAX`: refused with a
    /// reason, never a panic or a wrapped offset.
    #[test]
    fn a_member_length_near_the_largest_is_refused() {
        for len in [u64::MAX, u64::MAX - 1, u64::MAX / 2] {
            let e = SummaryEntry {
                member: MemberId::random(),
                header_offset: GLOBAL_HEADER_LEN,
                data_offset: GLOBAL_HEADER_LEN + BLOCK as u64,
                data_len: len,
                group: Some(GroupId::random()),
                sha256: [0; 32],
            };
            let err = Summary::new(
                SegmentId::random(),
                SegmentMode::Encrypted,
                e.end_offset().saturating_add(TRAILER),
                [0; 32],
                vec![e],
            )
            .unwrap_err();
            assert!(err.to_string().contains("overflow"), "{len}: {err}");
        }
    }

    proptest! {
        #[test]
        fn summary_round_trip(s in arb_summary()) {
            let bytes = s.to_bytes();
            let back = Summary::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &s);
            prop_assert_eq!(back.to_bytes(), bytes);
        }

        #[test]
        fn summary_parse_is_canonical_under_bit_flips(s in arb_summary(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = s.to_bytes();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(parsed) = Summary::from_bytes(&bytes) {
                prop_assert_eq!(parsed.to_bytes(), bytes);
            }
        }

        #[test]
        fn summary_parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Summary::from_bytes(&bytes);
            let mut branded = b"CBFSSUMM\0\x01".to_vec();
            branded.extend_from_slice(&bytes);
            let _ = Summary::from_bytes(&branded);
        }
    }
}
