//! Collection records: what the first phase of garbage collection found
//! unneeded, to be deleted by a later phase once every active writer has
//! finished a run that started after the record was written.
//!
//! Unsigned (the collector holds no key): the second phase checks every
//! object it lists against the store as it is then, and deletes only what
//! no kept snapshot needs, so a forged record can delete nothing live.
//!
//! ```text
//! "CBFSCOLL" u16 version = 1
//! collection id (16)  i64 created (when phase one ended)
//! u64 newest                  the newest snapshot sequence phase one saw
//! u32 count, count × (segment id (16), u8 reason, u64 length)
//!                             sorted by segment id, unique; each segment goes
//!                             with its summary and its lockboxes
//! u32 count, count × bytes16 object key
//!                             other objects (manifests, relocation records,
//!                             manifest bases, run records); sorted, unique
//! ```

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};
use crate::ids::{RecordId, SegmentId};

const BRAND: &[u8; 8] = b"CBFSCOLL";
pub(crate) const VERSION: u16 = 1;
/// Longest object key a record may name.
pub const MAX_KEY_LEN: usize = 1024;

/// Why a segment is collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CollectReason {
    /// No kept snapshot names any of its members (they were forgotten or
    /// replaced).
    Dead,
    /// Its live members were copied into new segments (relocation records
    /// say where).
    Compacted,
    /// No snapshot ever named it: what an interrupted run left behind.
    Unnamed,
}

impl CollectReason {
    fn byte(self) -> u8 {
        match self {
            CollectReason::Dead => 1,
            CollectReason::Compacted => 2,
            CollectReason::Unnamed => 3,
        }
    }
    fn of(b: u8) -> Option<Self> {
        Some(match b {
            1 => CollectReason::Dead,
            2 => CollectReason::Compacted,
            3 => CollectReason::Unnamed,
            _ => return None,
        })
    }
    /// A short name, for reports.
    pub fn as_str(self) -> &'static str {
        match self {
            CollectReason::Dead => "dead",
            CollectReason::Compacted => "compacted",
            CollectReason::Unnamed => "unnamed",
        }
    }
}

/// A segment a collection deletes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CollectedSegment {
    /// The segment.
    pub segment: SegmentId,
    /// Why.
    pub reason: CollectReason,
    /// Its length, for reports.
    pub length: u64,
}

/// What a first phase of garbage collection decided to delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collection {
    id: RecordId,
    created_unix: i64,
    newest: u64,
    segments: Vec<CollectedSegment>,
    objects: Vec<String>,
}

/// Whether `key` can be an object key of a store: `/`-separated parts of
/// ASCII letters, digits, `-`, `_` and `.`, none empty, `.` or `..`.
fn plausible_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
}

impl Collection {
    /// A record of `segments` and `objects` to delete (at least one of
    /// either; sorted and deduplicated here).
    pub fn new(
        id: RecordId,
        created_unix: i64,
        newest: u64,
        mut segments: Vec<CollectedSegment>,
        mut objects: Vec<String>,
    ) -> Result<Self, Error> {
        segments.sort();
        segments.dedup();
        objects.sort();
        objects.dedup();
        let c = Collection {
            id,
            created_unix,
            newest,
            segments,
            objects,
        };
        c.check().map_err(|reason| Error::InvalidInput { reason })?;
        Ok(c)
    }

    fn check(&self) -> Result<(), String> {
        if self.segments.is_empty() && self.objects.is_empty() {
            return Err("a collection deletes at least one object".into());
        }
        if let Some(w) = self
            .segments
            .windows(2)
            .find(|w| w[0].segment >= w[1].segment)
        {
            return Err(format!("segment {} listed twice", w[1].segment));
        }
        if let Some(k) = self.objects.iter().find(|k| !plausible_key(k)) {
            return Err(format!("{k:?} is not an object key"));
        }
        if self.objects.windows(2).any(|w| w[0] >= w[1]) {
            return Err("object keys are not sorted and unique".into());
        }
        Ok(())
    }

    /// The record's id.
    pub fn id(&self) -> RecordId {
        self.id
    }
    /// When phase one ended, seconds since the Unix epoch.
    pub fn created_unix(&self) -> i64 {
        self.created_unix
    }
    /// The newest snapshot sequence phase one saw.
    pub fn newest(&self) -> u64 {
        self.newest
    }
    /// The segments to delete, by id.
    pub fn segments(&self) -> &[CollectedSegment] {
        &self.segments
    }
    /// The other objects to delete, by key.
    pub fn objects(&self) -> &[String] {
        &self.objects
    }

    /// The canonical bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.raw(self.id.as_bytes());
        e.i64(self.created_unix);
        e.u64(self.newest);
        e.u32(self.segments.len() as u32);
        for s in &self.segments {
            e.raw(s.segment.as_bytes());
            e.u8(s.reason.byte());
            e.u64(s.length);
        }
        e.u32(self.objects.len() as u32);
        for k in &self.objects {
            e.bytes16(k.as_bytes());
        }
        e.into_vec()
    }

    /// Parses strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::Collection)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::Collection, version));
        }
        let id = RecordId::from_bytes(d.array()?);
        let created_unix = d.i64()?;
        let newest = d.u64()?;
        let at = d.pos();
        let n = d.u32()? as usize;
        if n.checked_mul(25).is_none_or(|len| len > d.remaining()) {
            return Err(d.err_at(at, format!("{n} segments do not fit the length")));
        }
        let mut segments = Vec::with_capacity(n);
        for _ in 0..n {
            let segment = SegmentId::from_bytes(d.array()?);
            let at = d.pos();
            let reason =
                CollectReason::of(d.u8()?).ok_or_else(|| d.err_at(at, "unknown reason"))?;
            segments.push(CollectedSegment {
                segment,
                reason,
                length: d.u64()?,
            });
        }
        let at = d.pos();
        let n = d.u32()? as usize;
        if n.checked_mul(2).is_none_or(|len| len > d.remaining()) {
            return Err(d.err_at(at, format!("{n} object keys do not fit the length")));
        }
        let mut objects = Vec::with_capacity(n);
        for _ in 0..n {
            let at = d.pos();
            let key = std::str::from_utf8(d.bytes16()?)
                .map_err(|_| d.err_at(at, "an object key is not UTF-8"))?;
            objects.push(key.to_owned());
        }
        d.finish()?;
        let c = Collection {
            id,
            created_unix,
            newest,
            segments,
            objects,
        };
        c.check().map_err(|reason| Error::Malformed {
            object: ObjectKind::Collection,
            offset: 0,
            reason,
        })?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_strictness() {
        let segs: Vec<CollectedSegment> = (0..3)
            .map(|i| CollectedSegment {
                segment: SegmentId::random(),
                reason: [
                    CollectReason::Dead,
                    CollectReason::Compacted,
                    CollectReason::Unnamed,
                ][i],
                length: 4096 * i as u64,
            })
            .collect();
        let objects = vec![
            "snapshots/00000000000000000002-0123.manifest".to_string(),
            "gc/bases/x.base".to_string(),
        ];
        let c = Collection::new(RecordId::random(), 1_700_000_000, 9, segs, objects).unwrap();
        assert!(c.objects()[0] < c.objects()[1]);
        let bytes = c.to_bytes();
        let back = Collection::from_bytes(&bytes).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.to_bytes(), bytes);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            if let Ok(parsed) = Collection::from_bytes(&b) {
                assert_eq!(parsed.to_bytes(), b, "flip at {i}");
            }
        }
        let mut longer = bytes.clone();
        longer.push(1);
        assert!(Collection::from_bytes(&longer).is_err());
    }

    #[test]
    fn bad_keys_and_empty_records_are_refused() {
        let id = RecordId::random();
        assert!(Collection::new(id, 0, 0, vec![], vec![]).is_err());
        for bad in ["", "/a", "a//b", "a/../b", "a b", "a/./b", "ü"] {
            assert!(
                Collection::new(id, 0, 0, vec![], vec![bad.to_string()]).is_err(),
                "{bad:?}"
            );
        }
        assert!(Collection::new(id, 0, 0, vec![], vec!["gc/runs/a.run".into()]).is_ok());
    }
}
