//! The stub record: what a released file carries in an extended attribute,
//! so that it is recognisable as a stub (and can be recalled) even without
//! the agent's index.
//!
//! ```text
//! "CBFSSTUB"  u16 version = 1
//! u8  phase          1 releasing (content may still be there), 2 released,
//!                    3 recalling (content being filled back)
//! bytes8 fs          the file system's name (the keyset's), UTF-8, no NUL
//! snapshot id (16)   a snapshot that holds the member
//! u64 sequence       that snapshot's sequence number
//! segment id (16)
//! member id (16)
//! u16 slot           which file of the member (0 unless it is a pack), < 256
//! u64 size           the file's size
//! sha256 (32)        the member's SHA-256, as the signed manifest gives it
//! i64 mtime, u32 ns  the file's modification time when it was archived
//! u64 inode          the file's inode number when it was released
//! bytes16 path       the path it was archived under (1..65535 bytes, no NUL)
//! ```
//!
//! Ids are never all zero. Parsing is strict: anything else, or a byte left
//! over, is refused.

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind, Result};
use crate::ids::{MemberId, SegmentId, SnapshotId};
use crate::merkle::MAX_PACK_FILES;
use crate::metadata::{MAX_PATH_LEN, Timestamp};

const BRAND: &[u8; 8] = b"CBFSSTUB";
pub(crate) const VERSION: u16 = 1;

/// The extended attribute a stub's record is kept in. In the `trusted`
/// namespace: only a process with `CAP_SYS_ADMIN` can read or write it, so
/// a user cannot forge a stub that points at another user's member.
pub const STUB_XATTR: &str = "trusted.cbfs.stub";

/// The extended attribute that marks a stub as being recalled: present,
/// and empty, from before the content is filled back until the record
/// goes. A record that says [`StubPhase::Released`] beside it reads as
/// [`StubPhase::Recalling`]. It is small enough to live in the inode itself
/// (ext4's 256-byte inodes, xfs), where the record often is not: marking a
/// stub then rewrites no attribute block of its own.
pub const RECALL_XATTR: &str = "trusted.cbfs.recall";

/// How far the release of a file got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StubPhase {
    /// The record is written and the content is being dropped: the file's
    /// times may still show the release's own changes.
    Releasing,
    /// The content is dropped and the times are those of the archived
    /// version.
    Released,
    /// The content is being filled back (the times may show the fill);
    /// the record goes once it is all back and verified.
    Recalling,
}

impl StubPhase {
    fn code(self) -> u8 {
        match self {
            StubPhase::Releasing => 1,
            StubPhase::Released => 2,
            StubPhase::Recalling => 3,
        }
    }
}

/// What a released file's extended attribute [`STUB_XATTR`] says.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StubRecord {
    /// How far the release got.
    pub phase: StubPhase,
    /// The file system's name, as its keyset gives it.
    pub fs: String,
    /// A snapshot that holds the member.
    pub snapshot: SnapshotId,
    /// Its sequence number.
    pub sequence: u64,
    /// The segment holding the member.
    pub segment: SegmentId,
    /// The member.
    pub member: MemberId,
    /// Which file of the member.
    pub slot: u16,
    /// The file's size.
    pub size: u64,
    /// The member's SHA-256, as the signed manifest gives it.
    pub sha256: [u8; 32],
    /// The file's modification time, as archived.
    pub mtime: Timestamp,
    /// The file's inode number when it was released.
    pub inode: u64,
    /// The path it was archived under (relative, raw bytes).
    pub path: Vec<u8>,
}

fn zero_id(bytes: &[u8; 16]) -> bool {
    bytes == &[0u8; 16]
}

impl StubRecord {
    /// Serializes the record; fails if a field breaks the rules above.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let bad = |reason: String| Err(Error::InvalidInput { reason });
        if self.fs.is_empty() || self.fs.len() > 255 || self.fs.contains('\0') {
            return bad("a stub's file system name must be 1 to 255 bytes without NUL".into());
        }
        if self.path.is_empty() || self.path.len() > MAX_PATH_LEN || self.path.contains(&0) {
            return bad(format!(
                "a stub's path must be 1 to {MAX_PATH_LEN} bytes without NUL"
            ));
        }
        if usize::from(self.slot) >= MAX_PACK_FILES {
            return bad(format!("slot {} is past the last of a pack", self.slot));
        }
        if self.mtime.nanos >= 1_000_000_000 {
            return bad("nanoseconds of the modification time must be below 10^9".into());
        }
        if zero_id(self.snapshot.as_bytes())
            || zero_id(self.segment.as_bytes())
            || zero_id(self.member.as_bytes())
        {
            return bad("a stub's ids are never all zero".into());
        }
        let mut e = Enc::with_brand(BRAND, VERSION);
        e.u8(self.phase.code());
        e.bytes8(self.fs.as_bytes());
        e.raw(self.snapshot.as_bytes());
        e.u64(self.sequence);
        e.raw(self.segment.as_bytes());
        e.raw(self.member.as_bytes());
        e.u16(self.slot);
        e.u64(self.size);
        e.raw(&self.sha256);
        e.i64(self.mtime.secs);
        e.u32(self.mtime.nanos);
        e.u64(self.inode);
        e.bytes16(&self.path);
        Ok(e.into_vec())
    }

    /// Parses a record, strictly.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (mut d, version) = Dec::brand(bytes, BRAND, ObjectKind::StubRecord)?;
        if version != VERSION {
            return Err(Dec::unknown_version(ObjectKind::StubRecord, version));
        }
        let at = d.pos();
        let phase = match d.u8()? {
            1 => StubPhase::Releasing,
            2 => StubPhase::Released,
            3 => StubPhase::Recalling,
            p => return Err(d.err_at(at, format!("unknown phase {p}"))),
        };
        let at = d.pos();
        let fs = d.bytes8()?;
        let fs = match std::str::from_utf8(fs) {
            Ok(s) if !s.is_empty() && !s.contains('\0') => s.to_owned(),
            _ => return Err(d.err_at(at, "the file system name is empty, not UTF-8 or has NUL")),
        };
        let id = |d: &mut Dec<'_>, what: &str| -> Result<[u8; 16]> {
            let at = d.pos();
            let b: [u8; 16] = d.array()?;
            if zero_id(&b) {
                return Err(d.err_at(at, format!("the {what} id is all zero")));
            }
            Ok(b)
        };
        let snapshot = SnapshotId::from_bytes(id(&mut d, "snapshot")?);
        let sequence = d.u64()?;
        let segment = SegmentId::from_bytes(id(&mut d, "segment")?);
        let member = MemberId::from_bytes(id(&mut d, "member")?);
        let at = d.pos();
        let slot = d.u16()?;
        if usize::from(slot) >= MAX_PACK_FILES {
            return Err(d.err_at(at, format!("slot {slot} is past the last of a pack")));
        }
        let size = d.u64()?;
        let sha256 = d.array()?;
        let secs = d.i64()?;
        let at = d.pos();
        let nanos = d.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(d.err_at(at, "nanoseconds of 10^9 or more"));
        }
        let inode = d.u64()?;
        let at = d.pos();
        let path = d.bytes16()?;
        if path.is_empty() || path.contains(&0) {
            return Err(d.err_at(at, "the path is empty or has NUL"));
        }
        let path = path.to_vec();
        d.finish()?;
        Ok(StubRecord {
            phase,
            fs,
            snapshot,
            sequence,
            segment,
            member,
            slot,
            size,
            sha256,
            mtime: Timestamp::new(secs, nanos),
            inode,
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> StubRecord {
        StubRecord {
            phase: StubPhase::Released,
            fs: "projects".into(),
            snapshot: SnapshotId::random(),
            sequence: 7,
            segment: SegmentId::random(),
            member: MemberId::random(),
            slot: 3,
            size: 1 << 33,
            sha256: [9; 32],
            mtime: Timestamp::new(-5, 999_999_999),
            inode: u64::MAX,
            path: b"home/alice/\xffdata.bin".to_vec(),
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let r = record();
        let bytes = r.to_bytes().unwrap();
        assert_eq!(StubRecord::from_bytes(&bytes).unwrap(), r);
        for cut in 0..bytes.len() {
            assert!(
                StubRecord::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            StubRecord::from_bytes(&longer).unwrap_err().code(),
            "malformed"
        );
        let mut version = bytes.clone();
        version[9] = 2;
        assert_eq!(
            StubRecord::from_bytes(&version).unwrap_err().code(),
            "unknown_version"
        );
        let mut phase = bytes.clone();
        phase[10] = 4;
        assert_eq!(
            StubRecord::from_bytes(&phase).unwrap_err().code(),
            "malformed"
        );
        let mut brand = bytes;
        brand[0] = b'X';
        assert_eq!(
            StubRecord::from_bytes(&brand).unwrap_err().code(),
            "bad_brand"
        );
    }

    #[test]
    fn refuses_to_write_what_it_could_not_read() {
        let cases: Vec<StubRecord> = vec![
            StubRecord {
                fs: String::new(),
                ..record()
            },
            StubRecord {
                path: Vec::new(),
                ..record()
            },
            StubRecord {
                path: b"a\0b".to_vec(),
                ..record()
            },
            StubRecord {
                slot: 256,
                ..record()
            },
            StubRecord {
                mtime: Timestamp::new(0, 1_000_000_000),
                ..record()
            },
            StubRecord {
                member: MemberId::from_bytes([0; 16]),
                ..record()
            },
        ];
        for c in cases {
            assert_eq!(c.to_bytes().unwrap_err().code(), "invalid_input", "{c:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_then_serialize_gives_the_same_bytes(
            phase in 1u8..=3,
            sequence in any::<u64>(),
            slot in 0u16..256,
            size in any::<u64>(),
            secs in any::<i64>(),
            nanos in 0u32..1_000_000_000,
            inode in any::<u64>(),
            path in proptest::collection::vec(1u8..=255, 1..200),
            fs in "[a-z][a-z0-9-]{0,30}",
        ) {
            let r = StubRecord {
                phase: match phase {
                    1 => StubPhase::Releasing,
                    2 => StubPhase::Released,
                    _ => StubPhase::Recalling,
                },
                fs,
                sequence,
                slot,
                size,
                mtime: Timestamp::new(secs, nanos),
                inode,
                path,
                ..record()
            };
            let bytes = r.to_bytes().unwrap();
            let back = StubRecord::from_bytes(&bytes).unwrap();
            prop_assert_eq!(&back, &r);
            prop_assert_eq!(back.to_bytes().unwrap(), bytes);
        }

        #[test]
        fn never_panics_on_any_input(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut b = b"CBFSSTUB\x00\x01".to_vec();
            b.extend_from_slice(&bytes);
            let _ = StubRecord::from_bytes(&b);
            let _ = StubRecord::from_bytes(&bytes);
        }
    }
}
