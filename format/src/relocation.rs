//! Relocation records: where garbage collection copied the live members of
//! a segment. Unsigned: a reader still checks every member it reads against
//! the SHA-256 the signed manifest gives, so a forged or damaged record can
//! make a member fail to restore, never restore other bytes in its place.
//!
//! ```text
//! "CBFSRELO" u16 version = 1
//! old segment (16)  new segment (16)  u8 mode (1 encrypted, 2 plain)
//! u32 count, count × entry (88 bytes, as in a summary): the member's place
//!     in the new segment: member id, u64 header_offset, u64 data_offset,
//!     u64 data_len, group id (zero when plain), sha256
//!                   sorted by member id, unique, count >= 1
//! ```

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::{MemberId, SegmentId};
use crate::plain::padded;
use crate::segment_writer::SegmentMode;
use crate::summary::{
    SUMMARY_ENTRY_LEN, SummaryEntry, group_fits, header_len_fits, read_entry, write_entry,
};
use crate::tar::GLOBAL_HEADER_LEN;

const BRAND: &[u8; 8] = b"CBFSRELO";
pub(crate) const VERSION: u16 = 1;

/// Members of one segment copied, byte for byte, into another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relocation {
    old: SegmentId,
    new: SegmentId,
    mode: SegmentMode,
    entries: Vec<SummaryEntry>,
}

impl Relocation {
    /// A record of `entries` (each member's place in `new`, as `new`'s
    /// summary gives it) moved from `old`. Checked like a summary's entries.
    pub fn new(
        old: SegmentId,
        new: SegmentId,
        mode: SegmentMode,
        mut entries: Vec<SummaryEntry>,
    ) -> Result<Self, Error> {
        entries.sort_by_key(|e| e.member);
        let r = Relocation {
            old,
            new,
            mode,
            entries,
        };
        r.check().map_err(|reason| Error::InvalidInput { reason })?;
        Ok(r)
    }

    fn check(&self) -> Result<(), String> {
        if self.old == self.new {
            return Err(format!("segment {} relocated into itself", self.old));
        }
        if self.entries.is_empty() {
            return Err("a relocation record moves at least one member".into());
        }
        for w in self.entries.windows(2) {
            if w[0].member >= w[1].member {
                return Err(format!("member {} listed twice", w[1].member));
            }
        }
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            let end = e
                .data_offset
                .checked_add(padded(e.data_len))
                .filter(|n| *n < u64::MAX / 2)
                .ok_or_else(|| format!("member {}: offsets overflow", e.member))?;
            if e.header_offset < GLOBAL_HEADER_LEN
                || e.data_offset < e.header_offset
                || !header_len_fits(self.mode, e.data_offset - e.header_offset)
            {
                return Err(format!(
                    "member {}: header at {} and data at {} do not fit a segment",
                    e.member, e.header_offset, e.data_offset
                ));
            }
            if !group_fits(self.mode, e.group) {
                return Err(format!("member {}: group does not fit the mode", e.member));
            }
            spans.push((e.header_offset, end));
        }
        spans.sort_unstable();
        if spans.windows(2).any(|w| w[0].1 > w[1].0) {
            return Err("two members overlap in the new segment".into());
        }
        Ok(())
    }

    /// The segment the members were copied from.
    pub fn old_segment(&self) -> SegmentId {
        self.old
    }
    /// The segment they were copied into.
    pub fn new_segment(&self) -> SegmentId {
        self.new
    }
    /// Both segments' mode.
    pub fn mode(&self) -> SegmentMode {
        self.mode
    }
    /// Each member's place in the new segment, sorted by member id.
    pub fn entries(&self) -> &[SummaryEntry] {
        &self.entries
    }
    /// The place of one member in the new segment, if this record moved it.
    pub fn entry(&self, member: &MemberId) -> Option<&SummaryEntry> {
        self.entries
            .binary_search_by_key(member, |e| e.member)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.raw(self.old.as_bytes());
        e.raw(self.new.as_bytes());
        e.u8(mode_byte(self.mode));
        e.u32(self.entries.len() as u32);
        for x in &self.entries {
            write_entry(&mut e, x);
        }
        e.into_vec()
    }

    /// Parses strictly: brand, version, exact length, consistent entries.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Relocation)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::Relocation, version));
        }
        let old = SegmentId::from_bytes(d.array()?);
        let new = SegmentId::from_bytes(d.array()?);
        let at = d.pos();
        let mode = mode_of(d.u8()?).ok_or_else(|| d.err_at(at, "unknown mode"))?;
        let at = d.pos();
        let count = d.u32()? as usize;
        if count.checked_mul(SUMMARY_ENTRY_LEN) != Some(d.remaining()) {
            return Err(d.err_at(at, format!("{count} entries do not fit the length")));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let at = d.pos();
            let e = read_entry(&mut d)?;
            if entries
                .last()
                .is_some_and(|l: &SummaryEntry| l.member >= e.member)
            {
                return Err(d.err_at(at, "members are not sorted and unique"));
            }
            entries.push(e);
        }
        d.finish()?;
        let r = Relocation {
            old,
            new,
            mode,
            entries,
        };
        r.check().map_err(|reason| Error::Malformed {
            object: ObjectKind::Relocation,
            offset: 0,
            reason,
        })?;
        Ok(r)
    }
}

pub(crate) fn mode_byte(mode: SegmentMode) -> u8 {
    match mode {
        SegmentMode::Encrypted => 1,
        SegmentMode::Plain => 2,
    }
}

pub(crate) fn mode_of(b: u8) -> Option<SegmentMode> {
    match b {
        1 => Some(SegmentMode::Encrypted),
        2 => Some(SegmentMode::Plain),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::GroupId;

    fn entry(at: u64, len: u64) -> SummaryEntry {
        SummaryEntry {
            member: MemberId::random(),
            header_offset: at,
            data_offset: at + 512,
            data_len: len,
            group: Some(GroupId::random()),
            sha256: [7; 32],
        }
    }

    #[test]
    fn round_trip_is_canonical_and_sorted() {
        let a = entry(1024, 100);
        let b = entry(2048, 5000);
        let r = Relocation::new(
            SegmentId::random(),
            SegmentId::random(),
            SegmentMode::Encrypted,
            vec![b.clone(), a.clone()],
        )
        .unwrap();
        let bytes = r.to_bytes();
        let back = Relocation::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.entry(&a.member), Some(&a));
        assert!(back.entry(&MemberId::random()).is_none());
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x80;
            if let Ok(parsed) = Relocation::from_bytes(&b) {
                assert_eq!(parsed.to_bytes(), b, "flip at {i} parsed non-canonically");
            }
        }
    }

    #[test]
    fn inconsistent_records_are_refused() {
        let (old, new) = (SegmentId::random(), SegmentId::random());
        let enc = SegmentMode::Encrypted;
        assert!(Relocation::new(old, old, enc, vec![entry(1024, 1)]).is_err());
        assert!(Relocation::new(old, new, enc, vec![]).is_err());
        assert!(Relocation::new(old, new, enc, vec![entry(512, 1)]).is_err());
        assert!(Relocation::new(old, new, enc, vec![entry(1024, 4096), entry(2048, 1)]).is_err());
        assert!(Relocation::new(old, new, SegmentMode::Plain, vec![entry(1024, 1)]).is_err());
        let mut plain = entry(1024, 1);
        plain.group = None;
        assert!(Relocation::new(old, new, enc, vec![plain.clone()]).is_err());
        assert!(Relocation::new(old, new, SegmentMode::Plain, vec![plain]).is_ok());
        let mut huge = entry(1024, u64::MAX - 10);
        huge.data_len = u64::MAX - 10;
        assert!(Relocation::new(old, new, enc, vec![huge]).is_err());
        let mut bytes = Relocation::new(old, new, enc, vec![entry(1024, 1)])
            .unwrap()
            .to_bytes();
        bytes[9] = 9;
        assert_eq!(
            Relocation::from_bytes(&bytes).unwrap_err().code(),
            "unknown_version"
        );
    }
}
