//! File metadata carried (encrypted) inside each member, and its binary encoding.

use std::collections::BTreeMap;

use crate::codec::{Dec, Enc};
use crate::error::{Error, ObjectKind};

/// Longest path or link target, in bytes.
pub const MAX_PATH_LEN: usize = 65_535;
/// Longest user or group name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Longest extended attribute name, in bytes.
pub const MAX_XATTR_NAME_LEN: usize = 255;
/// Largest extended attribute value, in bytes (Linux's `XATTR_SIZE_MAX`).
pub const MAX_XATTR_VALUE_LEN: usize = 65_536;
/// Largest encoded metadata record, in bytes.
pub const MAX_METADATA_LEN: usize = 16 * 1024 * 1024;

/// A point in time: seconds since the Unix epoch plus nanoseconds (`0..1_000_000_000`).
///
/// The time is `secs + nanos / 1e9`, also for negative `secs`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds, below one second.
    pub nanos: u32,
}

impl Timestamp {
    /// A timestamp; `nanos` must be below 1e9 (checked when encoding).
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs, nanos }
    }
}

/// What kind of file system entry a member is, with what only that kind has.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A regular file; its content follows the metadata.
    File,
    /// A directory.
    Dir,
    /// A symbolic link and its target (raw bytes).
    Symlink {
        /// The link's target.
        target: Vec<u8>,
    },
    /// A hard link to an earlier entry, named by its path (raw bytes).
    Hardlink {
        /// Path of the entry it links to.
        target: Vec<u8>,
    },
    /// A character device.
    CharDevice {
        /// Major device number.
        major: u32,
        /// Minor device number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Major device number.
        major: u32,
        /// Minor device number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl EntryKind {
    fn code(&self) -> u8 {
        match self {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink { .. } => 3,
            EntryKind::Hardlink { .. } => 4,
            EntryKind::CharDevice { .. } => 5,
            EntryKind::BlockDevice { .. } => 6,
            EntryKind::Fifo => 7,
        }
    }
}

/// Everything about a file but its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Path relative to the tiered tree, as raw bytes (may be non-UTF-8). No NUL, not
    /// empty, no trailing `/`.
    pub path: Vec<u8>,
    /// Entry kind.
    pub kind: EntryKind,
    /// Permission bits, including set-id and sticky bits (`mode & !0o7777 == 0`).
    pub mode: u32,
    /// Owner's user id.
    pub uid: u32,
    /// Owner's group id.
    pub gid: u32,
    /// Owner's user name (may be empty).
    pub uname: String,
    /// Owner's group name (may be empty).
    pub gname: String,
    /// Modification time.
    pub mtime: Timestamp,
    /// Content length in bytes; 0 for everything but regular files.
    pub size: u64,
    /// Extended attributes, name to value.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Metadata {
    /// Metadata with the given path and kind, mode 0644 (0755 for directories),
    /// owner 0:0, no names, time 0, size 0 and no xattrs.
    pub fn new(path: impl Into<Vec<u8>>, kind: EntryKind) -> Self {
        let mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
        Metadata {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            uname: String::new(),
            gname: String::new(),
            mtime: Timestamp::default(),
            size: 0,
            xattrs: BTreeMap::new(),
        }
    }

    /// The path, lossily shown as UTF-8 (for messages).
    pub fn path_lossy(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }

    /// Checks every rule the encoding relies on.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |reason: String| {
            Err(Error::InvalidInput {
                reason: format!("{}: {reason}", self.path_lossy()),
            })
        };
        check_path("path", &self.path).or_else(bad)?;
        if self.path.ends_with(b"/") {
            return bad("path ends with '/'".into());
        }
        if self.mode & !0o7777 != 0 {
            return bad(format!("mode {:o} has bits beyond 0o7777", self.mode));
        }
        for (what, name) in [("user name", &self.uname), ("group name", &self.gname)] {
            if name.len() > MAX_NAME_LEN || name.as_bytes().contains(&0) {
                return bad(format!(
                    "{what} is longer than {MAX_NAME_LEN} bytes or has NUL"
                ));
            }
        }
        if self.mtime.nanos >= 1_000_000_000 {
            return bad(format!("mtime nanoseconds {} >= 1e9", self.mtime.nanos));
        }
        if self.kind != EntryKind::File && self.size != 0 {
            return bad("only regular files have a size".into());
        }
        match &self.kind {
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => {
                check_path("link target", target).or_else(bad)?;
            }
            _ => {}
        }
        for (name, value) in &self.xattrs {
            if name.is_empty() || name.len() > MAX_XATTR_NAME_LEN || name.contains(&0) {
                return bad("xattr name empty, too long or with NUL".into());
            }
            if value.len() > MAX_XATTR_VALUE_LEN {
                return bad(format!("xattr value over {MAX_XATTR_VALUE_LEN} bytes"));
            }
        }
        Ok(())
    }

    /// The canonical encoding (see `docs/FORMAT.md`, "Metadata record").
    /// The length of its encoded record (what it costs in a pack's table),
    /// or why it cannot be encoded.
    pub fn record_len(&self) -> Result<usize, Error> {
        self.encode().map(|r| r.len())
    }

    /// The canonical record (see `docs/FORMAT.md`, "Metadata record"), as
    /// it stands in a member's plaintext or a pack's table.
    pub fn to_record(&self) -> Result<Vec<u8>, Error> {
        self.encode()
    }

    /// Parses a record that [`to_record`](Self::to_record) made, strictly.
    pub fn from_record(record: &[u8]) -> Result<Metadata, Error> {
        Self::decode(record)
    }

    pub(crate) fn encode(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        let mut e = Enc::default();
        e.u8(self.kind.code());
        e.bytes16(&self.path);
        e.u32(self.mode);
        e.u32(self.uid);
        e.u32(self.gid);
        e.bytes8(self.uname.as_bytes());
        e.bytes8(self.gname.as_bytes());
        e.i64(self.mtime.secs);
        e.u32(self.mtime.nanos);
        e.u64(self.size);
        match &self.kind {
            EntryKind::Symlink { target } | EntryKind::Hardlink { target } => e.bytes16(target),
            EntryKind::CharDevice { major, minor } | EntryKind::BlockDevice { major, minor } => {
                e.u32(*major);
                e.u32(*minor);
            }
            EntryKind::File | EntryKind::Dir | EntryKind::Fifo => {}
        }
        e.u32(self.xattrs.len() as u32);
        for (name, value) in &self.xattrs {
            e.bytes8(name);
            e.bytes32(value);
        }
        let out = e.into_vec();
        if out.len() > MAX_METADATA_LEN {
            return Err(Error::InvalidInput {
                reason: format!(
                    "{}: metadata over {MAX_METADATA_LEN} bytes",
                    self.path_lossy()
                ),
            });
        }
        Ok(out)
    }

    /// Parses the canonical encoding strictly.
    pub(crate) fn decode(buf: &[u8]) -> Result<Metadata, Error> {
        let mut d = Dec::new(buf, ObjectKind::MemberPlaintext);
        let code_at = d.pos();
        let code = d.u8()?;
        let path = d.bytes16()?.to_vec();
        let mode = d.u32()?;
        let uid = d.u32()?;
        let gid = d.u32()?;
        let uname = utf8(&mut d)?;
        let gname = utf8(&mut d)?;
        let secs = d.i64()?;
        let nanos = d.u32()?;
        let size = d.u64()?;
        let kind = match code {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink {
                target: d.bytes16()?.to_vec(),
            },
            4 => EntryKind::Hardlink {
                target: d.bytes16()?.to_vec(),
            },
            5 | 6 => {
                let major = d.u32()?;
                let minor = d.u32()?;
                if code == 5 {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                }
            }
            7 => EntryKind::Fifo,
            other => return Err(d.err_at(code_at, format!("unknown entry kind {other}"))),
        };
        let count_at = d.pos();
        let count = d.u32()? as usize;
        // Each xattr takes at least 6 bytes: refuse counts the input cannot hold.
        if count > d.remaining() / 6 {
            return Err(d.err_at(count_at, format!("{count} xattrs cannot fit")));
        }
        let mut xattrs = BTreeMap::new();
        let mut last: Option<Vec<u8>> = None;
        for _ in 0..count {
            let at = d.pos();
            let name = d.bytes8()?.to_vec();
            let value = d.bytes32(MAX_XATTR_VALUE_LEN)?.to_vec();
            if last.as_ref().is_some_and(|l| *l >= name) {
                return Err(d.err_at(at, "xattr names not strictly increasing"));
            }
            last = Some(name.clone());
            xattrs.insert(name, value);
        }
        d.finish()?;
        let meta = Metadata {
            path,
            kind,
            mode,
            uid,
            gid,
            uname,
            gname,
            mtime: Timestamp { secs, nanos },
            size,
            xattrs,
        };
        meta.validate().map_err(|e| Error::Malformed {
            object: ObjectKind::MemberPlaintext,
            offset: 0,
            reason: e.to_string(),
        })?;
        Ok(meta)
    }
}

fn utf8(d: &mut Dec<'_>) -> Result<String, Error> {
    let at = d.pos();
    let bytes = d.bytes8()?;
    String::from_utf8(bytes.to_vec()).map_err(|_| d.err_at(at, "name is not UTF-8"))
}

fn check_path(what: &str, path: &[u8]) -> Result<(), String> {
    if path.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("{what} is longer than {MAX_PATH_LEN} bytes"));
    }
    if path.contains(&0) {
        return Err(format!("{what} contains NUL"));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_path() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(1u8..=255, 1..300)
            .prop_filter("no trailing slash", |p| !p.ends_with(b"/"))
    }

    pub(crate) fn arb_kind() -> impl Strategy<Value = EntryKind> {
        prop_oneof![
            Just(EntryKind::File),
            Just(EntryKind::Dir),
            arb_path().prop_map(|target| EntryKind::Symlink { target }),
            arb_path().prop_map(|target| EntryKind::Hardlink { target }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(major, minor)| EntryKind::CharDevice { major, minor }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(major, minor)| EntryKind::BlockDevice { major, minor }),
            Just(EntryKind::Fifo),
        ]
    }

    pub(crate) fn arb_metadata() -> impl Strategy<Value = Metadata> {
        (
            arb_path(),
            arb_kind(),
            0u32..=0o7777,
            any::<u32>(),
            any::<u32>(),
            "[a-z_][a-z0-9_-]{0,40}",
            "[a-zé]{0,10}",
            any::<i64>(),
            0u32..1_000_000_000,
            any::<u64>(),
            proptest::collection::btree_map(
                proptest::collection::vec(1u8..=255, 1..40),
                proptest::collection::vec(any::<u8>(), 0..100),
                0..4,
            ),
        )
            .prop_map(
                |(path, kind, mode, uid, gid, uname, gname, secs, nanos, size, xattrs)| {
                    let size = if kind == EntryKind::File { size } else { 0 };
                    Metadata {
                        path,
                        kind,
                        mode,
                        uid,
                        gid,
                        uname,
                        gname,
                        mtime: Timestamp { secs, nanos },
                        size,
                        xattrs,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn metadata_round_trip(meta in arb_metadata()) {
            let bytes = meta.encode().unwrap();
            let back = Metadata::decode(&bytes).unwrap();
            prop_assert_eq!(&back, &meta);
            prop_assert_eq!(back.encode().unwrap(), bytes);
        }

        #[test]
        fn metadata_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(meta) = Metadata::decode(&bytes) {
                prop_assert_eq!(meta.encode().unwrap(), bytes);
            }
        }

        #[test]
        fn metadata_bit_flips_never_panic(meta in arb_metadata(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = meta.encode().unwrap();
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(back) = Metadata::decode(&bytes) {
                prop_assert_eq!(back.encode().unwrap(), bytes);
            }
        }
    }

    #[test]
    fn validation_refuses_what_cannot_be_encoded() {
        let mut m = Metadata::new("a\0b", EntryKind::File);
        assert!(m.validate().is_err());
        m.path = b"dir/".to_vec();
        assert!(m.validate().is_err());
        m.path = b"ok".to_vec();
        m.mode = 0o10644;
        assert!(m.validate().is_err());
        m.mode = 0o644;
        m.kind = EntryKind::Dir;
        m.size = 3;
        assert!(m.validate().is_err());
        m.size = 0;
        m.mtime.nanos = 1_000_000_000;
        assert!(m.validate().is_err());
        m.mtime.nanos = 0;
        assert!(m.validate().is_ok());
    }

    #[test]
    fn decode_refuses_unsorted_xattrs_and_trailing_bytes() {
        let mut m = Metadata::new("f", EntryKind::File);
        m.xattrs.insert(b"user.a".to_vec(), b"1".to_vec());
        m.xattrs.insert(b"user.b".to_vec(), b"2".to_vec());
        let bytes = m.encode().unwrap();
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Metadata::decode(&extra).is_err());
        // Swap the two names: both records are 6+1+4+1 bytes long.
        let mut swapped = bytes.clone();
        let a = swapped.len() - 24;
        swapped[a + 6] = b'b';
        swapped[a + 12 + 6] = b'a';
        assert!(Metadata::decode(&swapped).is_err());
    }
}
