//! The local index (RocksDB): what is in the store, by path, member and
//! segment, and the snapshots made so far.
//!
//! It is a cache of the store: everything in it can be rebuilt from the store
//! with the administrator's key. Every change is one atomic, synced write
//! batch, committed only after the objects it names are in the store.
//!
//! Keys are a one-byte table tag, then the record's key:
//!
//! | tag | key | value |
//! |---|---|---|
//! | `f` | path bytes | [`FileRecord`] |
//! | `m` | member id, then for files of a pack after the first a `u16` slot (big-endian) | [`MemberRecord`] |
//! | `g` | segment id | [`SegmentRecord`] |
//! | `n` | sequence, 8 bytes big-endian | [`SnapshotRecord`] |
//! | `s` | `state` | [`State`] |
//! | `p` | path bytes | scratch of the push running now (see [`Index::pushed_put`]) |
//! | `h` | path bytes | [`HsmRecord`]: flags and losses of a path (tiering states) |
//! | `r` | a relocation record's object key | empty: the record was applied |
//! | `k` | path bytes | scratch of a re-key under way: the path's old member and plaintext hashes (see [`Index::rekey_put`]) |
//!
//! The two tables with a record per file (`f`, `m`) hold a compact binary
//! encoding (see [`binary`]): a run over an unchanged tree reads every file
//! record, and decoding them as JSON was most of such a run. The others are
//! JSON. A record that starts with `{` is the JSON of an older index and is
//! still read; it is rewritten in binary when its path next changes.

use std::path::{Path, PathBuf};

use cbfs_format::{MemberId, SegmentId, SnapshotId};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::error::{Error, Result};
use crate::scan::Stat;

const FILE: u8 = b'f';
const MEMBER: u8 = b'm';
const SEGMENT: u8 = b'g';
const SNAPSHOT: u8 = b'n';
const STATE: u8 = b's';
const PUSHED: u8 = b'p';
const HSM: u8 = b'h';
const RELOCATED: u8 = b'r';
const REKEY: u8 = b'k';

/// The stored version of one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The stat it was stored with.
    pub stat: Stat,
    /// Its scope.
    pub scope: String,
    /// The segment holding it.
    #[serde(with = "as_text")]
    pub segment: SegmentId,
    /// The member.
    #[serde(with = "as_text")]
    pub member: MemberId,
    /// SHA-256 of the member's ciphertext.
    #[serde(with = "hex_32")]
    pub sha256: [u8; 32],
    /// Bytes the member takes in its segment (a file of a pack: its share).
    pub stored: u64,
    /// For a hard link: the path it links to.
    #[serde(default)]
    pub hardlink_to: Option<Vec<u8>>,
    /// Which file of its member it is (0 unless the member is a pack).
    #[serde(default)]
    pub slot: u16,
}

/// What `ls` shows of a member, kept so that old snapshots can be listed
/// without a key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// The path, raw bytes.
    pub path: Vec<u8>,
    /// The stat it was stored with.
    pub stat: Stat,
    /// Its scope.
    pub scope: String,
    /// Bytes it takes in the store.
    pub stored: u64,
}

/// A segment and how much of it is still live. Counts are of files (entries
/// of the tree): a pack member holds several, each counted once, and its
/// bytes are shared out among them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Size of the segment object.
    pub size: u64,
    /// Members (tar entries) in it.
    pub members: u64,
    /// Files stored in it (more than `members` when small files are packed;
    /// 0 in records written before this was kept).
    #[serde(default)]
    pub files: u64,
    /// Files of it the agent's tree still uses (older records called this
    /// `live_members`, and counted files already).
    #[serde(alias = "live_members")]
    pub live_files: u64,
    /// Bytes of those files (their shares of the members' bytes).
    pub live_bytes: u64,
}

/// A snapshot made by this agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The snapshot's id.
    #[serde(with = "as_text")]
    pub id: SnapshotId,
    /// Its sequence number.
    pub sequence: u64,
    /// The manifest's object key.
    pub manifest_key: String,
    /// SHA-256 of the manifest.
    #[serde(with = "hex_32")]
    pub manifest_hash: [u8; 32],
    /// Creation time, Unix seconds.
    pub created: i64,
    /// How many entries it holds.
    pub entries: u64,
}

/// The agent's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Index changes were committed that no manifest covers yet.
    pub dirty: bool,
    /// The newest manifest written.
    pub last_snapshot: Option<SnapshotRecord>,
    /// The administrator key of the keyset this index is bound to (hex).
    pub admin_key: Option<String>,
    /// The highest keyset serial seen: an older keyset is refused.
    pub keyset_serial: u64,
    /// Whether segments are written without encryption.
    pub plain: Option<bool>,
    /// A re-key under way (`cbfs-tier rekey`): set before its first
    /// segment, cleared once every re-keyed file is verified. While it is
    /// set, tier-out runs wait for it to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey: Option<RekeyMarker>,
}

/// What a re-key under way is doing, kept so that a rerun after a crash
/// carries on with the same work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RekeyMarker {
    /// The scope being re-keyed.
    pub scope: String,
    /// `--since`: the snapshot named, as given.
    #[serde(default)]
    pub since: Option<String>,
    /// With `since`: the snapshot before it, whose members were never
    /// under keys released after it (not re-keyed). `None`: every member.
    #[serde(default)]
    pub before: Option<String>,
    /// When the re-key began, Unix seconds.
    pub started: i64,
}

/// What the tiering states keep about a path beside its [`FileRecord`]:
/// the user's flags, and a stored copy found bad. Whether a file is
/// released is not kept here: its stub record (an extended attribute of
/// the file) says so, and is checked against the [`FileRecord`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HsmRecord {
    /// Never release this file (`cbfs-tier flag --no-release`).
    #[serde(default)]
    pub no_release: bool,
    /// Never archive this file (`cbfs-tier flag --no-archive`).
    #[serde(default)]
    pub no_archive: bool,
    /// Its stored copy is missing or failed verification: why.
    #[serde(default)]
    pub lost: Option<String>,
    /// When that was found, Unix seconds.
    #[serde(default)]
    pub lost_at: Option<i64>,
    /// A recall of it began then (Unix seconds), and no record of its end
    /// has been taken in: if it ended (no stub record left, and the file is
    /// the archived version but for its change time), the index takes the
    /// file's new stat instead of counting it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recalling: Option<i64>,
}

impl HsmRecord {
    /// Whether it holds nothing worth keeping.
    pub fn is_empty(&self) -> bool {
        *self == HsmRecord::default()
    }
}

/// The index database.
pub struct Index {
    db: rocksdb::DB,
    path: PathBuf,
}

/// Changes to commit together.
#[derive(Default)]
pub struct Batch {
    inner: rocksdb::WriteBatch,
}

fn key(tag: u8, k: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + k.len());
    v.push(tag);
    v.extend_from_slice(k);
    v
}

/// The key of file `slot` of a member: the member id alone for slot 0 (as
/// before packs), then the slot.
fn member_key(id: &MemberId, slot: u16) -> Vec<u8> {
    let mut k = key(MEMBER, id.as_bytes());
    if slot > 0 {
        k.extend_from_slice(&slot.to_be_bytes());
    }
    k
}

/// How a record is kept in the database.
trait Record: Sized + Serialize + DeserializeOwned {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("index records serialize")
    }
    fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

impl Record for SegmentRecord {}
impl Record for SnapshotRecord {}
impl Record for State {}
impl Record for HsmRecord {}

impl Record for FileRecord {
    fn encode(&self) -> Vec<u8> {
        let mut o = binary::Out::new(binary::VERSION_SLOT, 162 + self.scope.len());
        o.stat(&self.stat);
        o.bytes(self.scope.as_bytes());
        o.raw(self.segment.as_bytes());
        o.raw(self.member.as_bytes());
        o.raw(&self.sha256);
        o.u64(self.stored);
        match &self.hardlink_to {
            None => o.u8(0),
            Some(target) => {
                o.u8(1);
                o.bytes(target);
            }
        }
        o.u16(self.slot);
        o.finish()
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.first() == Some(&b'{') {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let mut i = binary::In::new(bytes)?;
        let mut rec = FileRecord {
            stat: i.stat()?,
            scope: i.text()?,
            segment: SegmentId::from_bytes(i.array()?),
            member: MemberId::from_bytes(i.array()?),
            sha256: i.array()?,
            stored: i.u64()?,
            hardlink_to: match i.u8()? {
                0 => None,
                1 => Some(i.bytes()?.to_vec()),
                other => return Err(format!("hard link flag {other}")),
            },
            slot: 0,
        };
        if i.version() >= binary::VERSION_SLOT {
            rec.slot = i.u16()?;
        }
        i.end()?;
        Ok(rec)
    }
}

impl FileRecord {
    /// The record's encoding in the index (for a run's own spill files).
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }

    /// Reads what [`to_bytes`](Self::to_bytes) wrote.
    pub(crate) fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        Self::decode(bytes)
    }
}

impl Record for MemberRecord {
    fn encode(&self) -> Vec<u8> {
        let mut o = binary::Out::new(binary::VERSION, 110 + self.path.len() + self.scope.len());
        o.bytes(&self.path);
        o.stat(&self.stat);
        o.bytes(self.scope.as_bytes());
        o.u64(self.stored);
        o.finish()
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        if bytes.first() == Some(&b'{') {
            return serde_json::from_slice(bytes).map_err(|e| e.to_string());
        }
        let mut i = binary::In::new(bytes)?;
        let rec = MemberRecord {
            path: i.bytes()?.to_vec(),
            stat: i.stat()?,
            scope: i.text()?,
            stored: i.u64()?,
        };
        i.end()?;
        Ok(rec)
    }
}

/// The binary record encoding: a version byte, then the fields in order;
/// integers little-endian and fixed-size, byte strings as a u32 length and
/// the bytes, ids and hashes as their raw bytes. Version 2 of a file
/// record adds the slot at the end.
mod binary {
    use crate::scan::Stat;

    pub(super) const VERSION: u8 = 1;
    /// File records with the member's slot.
    pub(super) const VERSION_SLOT: u8 = 2;

    pub(super) struct Out(Vec<u8>);

    impl Out {
        pub(super) fn new(version: u8, capacity: usize) -> Self {
            let mut v = Vec::with_capacity(capacity);
            v.push(version);
            Out(v)
        }
        pub(super) fn u8(&mut self, v: u8) {
            self.0.push(v);
        }
        pub(super) fn u16(&mut self, v: u16) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(super) fn u32(&mut self, v: u32) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(super) fn u64(&mut self, v: u64) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(super) fn raw(&mut self, v: &[u8]) {
            self.0.extend_from_slice(v);
        }
        pub(super) fn bytes(&mut self, v: &[u8]) {
            self.u32(u32::try_from(v.len()).expect("paths and names are far below 4 GiB"));
            self.raw(v);
        }
        pub(super) fn stat(&mut self, s: &Stat) {
            self.u64(s.dev);
            self.u64(s.ino);
            self.u32(s.mode);
            self.u64(s.nlink);
            self.u32(s.uid);
            self.u32(s.gid);
            self.u64(s.size);
            self.u64(s.mtime as u64);
            self.u32(s.mtime_ns);
            self.u64(s.ctime as u64);
            self.u32(s.ctime_ns);
            self.u64(s.rdev);
        }
        pub(super) fn finish(self) -> Vec<u8> {
            self.0
        }
    }

    pub(super) struct In<'a>(&'a [u8], u8);

    impl<'a> In<'a> {
        pub(super) fn new(bytes: &'a [u8]) -> Result<Self, String> {
            match bytes.split_first() {
                Some((&v, rest)) if v == VERSION || v == VERSION_SLOT => Ok(In(rest, v)),
                Some((v, _)) => Err(format!("unknown record version {v}")),
                None => Err("empty record".into()),
            }
        }
        pub(super) fn version(&self) -> u8 {
            self.1
        }
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err(format!(
                    "record ends early ({} bytes left, {n} needed)",
                    self.0.len()
                ));
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }
        pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
            Ok(self.take(N)?.try_into().expect("took N bytes"))
        }
        pub(super) fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }
        pub(super) fn u16(&mut self) -> Result<u16, String> {
            Ok(u16::from_le_bytes(self.array()?))
        }
        pub(super) fn u32(&mut self) -> Result<u32, String> {
            Ok(u32::from_le_bytes(self.array()?))
        }
        pub(super) fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(self.array()?))
        }
        pub(super) fn bytes(&mut self) -> Result<&'a [u8], String> {
            let n = self.u32()? as usize;
            self.take(n)
        }
        pub(super) fn text(&mut self) -> Result<String, String> {
            String::from_utf8(self.bytes()?.to_vec()).map_err(|_| "a name is not UTF-8".into())
        }
        pub(super) fn stat(&mut self) -> Result<Stat, String> {
            Ok(Stat {
                dev: self.u64()?,
                ino: self.u64()?,
                mode: self.u32()?,
                nlink: self.u64()?,
                uid: self.u32()?,
                gid: self.u32()?,
                size: self.u64()?,
                mtime: self.u64()? as i64,
                mtime_ns: self.u32()?,
                ctime: self.u64()? as i64,
                ctime_ns: self.u32()?,
                rdev: self.u64()?,
            })
        }
        pub(super) fn end(&self) -> Result<(), String> {
            if self.0.is_empty() {
                Ok(())
            } else {
                Err(format!("{} bytes after the record", self.0.len()))
            }
        }
    }
}

impl Batch {
    /// Records the stored version of a path.
    pub fn put_file(&mut self, path: &[u8], rec: &FileRecord) {
        self.inner.put(key(FILE, path), rec.encode());
    }
    /// Forgets a path (deleted from the tree).
    pub fn delete_file(&mut self, path: &[u8]) {
        self.inner.delete(key(FILE, path));
    }
    /// Records what file `slot` of a member is.
    pub fn put_member(&mut self, id: &MemberId, slot: u16, rec: &MemberRecord) {
        self.inner.put(member_key(id, slot), rec.encode());
    }
    /// Records a segment.
    pub fn put_segment(&mut self, id: &SegmentId, rec: &SegmentRecord) {
        self.inner.put(key(SEGMENT, id.as_bytes()), rec.encode());
    }
    /// Records a snapshot.
    pub fn put_snapshot(&mut self, rec: &SnapshotRecord) {
        self.inner
            .put(key(SNAPSHOT, &rec.sequence.to_be_bytes()), rec.encode());
    }
    /// Notes that the relocation record `key` was applied to the index.
    pub fn put_relocation_applied(&mut self, key: &str) {
        self.inner.put(self::key(RELOCATED, key.as_bytes()), []);
    }
    /// Replaces the state.
    pub fn put_state(&mut self, state: &State) {
        self.inner.put(key(STATE, b"state"), state.encode());
    }
    /// Records the tiering flags and losses of a path (forgets them if
    /// there are none).
    pub fn put_hsm(&mut self, path: &[u8], rec: &HsmRecord) {
        if rec.is_empty() {
            self.inner.delete(key(HSM, path));
        } else {
            self.inner.put(key(HSM, path), rec.encode());
        }
    }
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// The stored paths in byte order, as they were when the cursor was made;
/// only those below a prefix, if it has one.
pub struct PathCursor<'a> {
    it: rocksdb::DBRawIteratorWithThreadMode<'a, rocksdb::DB>,
    index: &'a Index,
    /// The key prefix of the paths it covers (`f`, then `PREFIX/`).
    within: Vec<u8>,
}

impl PathCursor<'_> {
    /// The stored paths before `path` (in byte order) not given yet, each
    /// to `gone`, then whether `path` itself is stored (it is skipped).
    pub fn advance_to(&mut self, path: &[u8], mut gone: impl FnMut(&[u8])) -> Result<bool> {
        while let Some(k) = self.it.key() {
            if !k.starts_with(&self.within) {
                break;
            }
            match k[1..].cmp(path) {
                std::cmp::Ordering::Less => gone(&k[1..]),
                std::cmp::Ordering::Equal => {
                    self.it.next();
                    return Ok(true);
                }
                std::cmp::Ordering::Greater => break,
            }
            self.it.next();
        }
        self.it.status().map_err(|e| self.index.err(e))?;
        Ok(false)
    }

    /// Every stored path not given yet.
    pub fn rest(&mut self, mut gone: impl FnMut(&[u8])) -> Result<()> {
        while let Some(k) = self.it.key() {
            if !k.starts_with(&self.within) {
                break;
            }
            gone(&k[1..]);
            self.it.next();
        }
        self.it.status().map_err(|e| self.index.err(e))
    }
}

impl Index {
    /// Opens (or creates) the index in `dir`. Only one process may have it open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("cannot create index directory", dir, e))?;
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.set_max_open_files(256);
        opts.set_write_buffer_size(8 << 20);
        opts.set_max_write_buffer_number(2);
        opts.set_keep_log_file_num(3);
        opts.set_compression_type(rocksdb::DBCompressionType::None);
        // The default column family is named so that batched lookups have
        // its handle; the database is the same as one opened without it.
        // It is given the same options: a column family named without them
        // gets RocksDB's defaults (a 64 MiB write buffer, two of them), and
        // a run over a million files then holds 128 MiB of memtables.
        let family =
            rocksdb::ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, opts.clone());
        let db = rocksdb::DB::open_cf_descriptors(&opts, dir, [family]).map_err(|e| {
            if e.to_string().contains("lock") {
                Error::Index {
                    path: dir.to_owned(),
                    detail: format!("{e} (is another cbfs-tier running on this index?)"),
                }
            } else {
                index_error(dir, e)
            }
        })?;
        Ok(Index {
            db,
            path: dir.to_owned(),
        })
    }

    /// Opens an existing index for reading only (while an agent may hold it).
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf_for_read_only(
            &opts,
            dir,
            [rocksdb::DEFAULT_COLUMN_FAMILY_NAME],
            false,
        )
        .map_err(|e| index_error(dir, e))?;
        Ok(Index {
            db,
            path: dir.to_owned(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        index_detail(&self.path, e.to_string())
    }

    fn get<T: Record>(&self, k: Vec<u8>) -> Result<Option<T>> {
        match self.db.get_pinned(&k).map_err(|e| self.err(e))? {
            Some(v) => T::decode(&v).map(Some).map_err(|e| self.corrupt(&k, e)),
            None => Ok(None),
        }
    }

    fn corrupt(&self, k: &[u8], e: String) -> Error {
        let (tag, rest) = k.split_first().unwrap_or((&b'?', &[]));
        let name = match *tag {
            FILE | HSM => String::from_utf8_lossy(rest).into_owned(),
            _ => hex::encode(rest),
        };
        self.err(format!("corrupt record {}:{name}: {e}", *tag as char))
    }

    fn scan<T: Record>(&self, tag: u8, mut f: impl FnMut(&[u8], T) -> Result<()>) -> Result<()> {
        let it = self.db.iterator(rocksdb::IteratorMode::From(
            &[tag],
            rocksdb::Direction::Forward,
        ));
        for item in it {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.first() != Some(&tag) {
                break;
            }
            let rec = T::decode(&v).map_err(|e| self.corrupt(&k, e))?;
            f(&k[1..], rec)?;
        }
        Ok(())
    }

    /// Writes the in-memory table out if it holds much: otherwise the next
    /// open replays the whole write-ahead log (after a first run over 20,000
    /// files, a quarter of the next run's time).
    pub fn flush_if_large(&self) -> Result<()> {
        const LARGE: u64 = 1 << 20;
        let held = self
            .db
            .property_int_value("rocksdb.cur-size-all-mem-tables")
            .map_err(|e| self.err(e))?
            .unwrap_or(0);
        if held >= LARGE {
            self.db.flush().map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Commits a batch atomically and durably.
    pub fn commit(&self, batch: Batch) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch.inner, &wo).map_err(|e| self.err(e))
    }

    /// The stored version of a path.
    pub fn file(&self, path: &[u8]) -> Result<Option<FileRecord>> {
        self.get(key(FILE, path))
    }

    /// The stored versions of many paths at once (one batched lookup:
    /// cheaper than as many single ones), in the order given.
    pub fn files(&self, paths: &[&[u8]]) -> Result<Vec<Option<FileRecord>>> {
        self.get_many(FILE, paths)
    }

    /// The records of one kind for many keys at once (one batched lookup),
    /// in the order given.
    fn get_many<T: Record>(&self, tag: u8, names: &[&[u8]]) -> Result<Vec<Option<T>>> {
        let keys: Vec<Vec<u8>> = names.iter().map(|p| key(tag, p)).collect();
        let cf = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| self.err("no default column family"))?;
        self.db
            .batched_multi_get_cf(&cf, &keys, false)
            .into_iter()
            .zip(&keys)
            .map(|(got, k)| match got.map_err(|e| self.err(e))? {
                Some(v) => T::decode(&v).map(Some).map_err(|e| self.corrupt(k, e)),
                None => Ok(None),
            })
            .collect()
    }

    /// Every stored path, in byte order.
    pub fn for_each_file(&self, f: impl FnMut(&[u8], FileRecord) -> Result<()>) -> Result<()> {
        self.scan(FILE, f)
    }

    /// Every stored path, in byte order, without reading the records.
    pub fn for_each_path(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut it = self.db.raw_iterator();
        it.seek([FILE]);
        while let Some(k) = it.key() {
            if k.first() != Some(&FILE) {
                break;
            }
            f(&k[1..])?;
            it.next();
        }
        it.status().map_err(|e| self.err(e))
    }

    /// A cursor over the stored paths as they are now, in byte order: what
    /// a run compares its walk with to find what is gone, without holding
    /// every path in memory. Later commits do not show in it.
    pub fn paths_cursor(&self) -> PathCursor<'_> {
        self.paths_cursor_below(None)
    }

    /// [`paths_cursor`](Self::paths_cursor) over the paths below `prefix`
    /// only (`prefix/...`), or all of them for `None`.
    pub fn paths_cursor_below(&self, prefix: Option<&[u8]>) -> PathCursor<'_> {
        let mut within = vec![FILE];
        if let Some(p) = prefix {
            within.extend_from_slice(p);
            within.push(b'/');
        }
        let mut it = self.db.raw_iterator();
        it.seek(&within);
        PathCursor {
            it,
            index: self,
            within,
        }
    }

    /// What file `slot` of a member is.
    pub fn member(&self, id: &MemberId, slot: u16) -> Result<Option<MemberRecord>> {
        self.get(member_key(id, slot))
    }

    /// The tiering flags and losses of a path.
    pub fn hsm(&self, path: &[u8]) -> Result<Option<HsmRecord>> {
        self.get(key(HSM, path))
    }

    /// The tiering records of many paths at once, in the order given.
    pub fn hsms(&self, paths: &[&[u8]]) -> Result<Vec<Option<HsmRecord>>> {
        self.get_many(HSM, paths)
    }

    /// Every path with tiering flags or losses, in byte order.
    pub fn for_each_hsm(&self, f: impl FnMut(&[u8], HsmRecord) -> Result<()>) -> Result<()> {
        self.scan(HSM, f)
    }

    /// A segment's record.
    pub fn segment(&self, id: &SegmentId) -> Result<Option<SegmentRecord>> {
        self.get(key(SEGMENT, id.as_bytes()))
    }

    /// Every segment record.
    pub fn segments(&self) -> Result<Vec<(SegmentId, SegmentRecord)>> {
        let mut out = Vec::new();
        self.scan(SEGMENT, |k, rec: SegmentRecord| {
            if let Ok(id) = <[u8; 16]>::try_from(k) {
                out.push((SegmentId::from_bytes(id), rec));
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Whether the relocation record `key` was applied to the index.
    pub fn relocation_applied(&self, key: &str) -> Result<bool> {
        self.db
            .get_pinned(self::key(RELOCATED, key.as_bytes()))
            .map(|v| v.is_some())
            .map_err(|e| self.err(e))
    }

    /// All snapshots, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        let mut out = Vec::new();
        self.scan(SNAPSHOT, |_, rec| {
            out.push(rec);
            Ok(())
        })?;
        Ok(out)
    }

    /// The agent's state.
    pub fn state(&self) -> Result<State> {
        Ok(self.get(key(STATE, b"state"))?.unwrap_or_default())
    }

    /// Forgets the scratch of a push (one that ended, or died).
    pub(crate) fn pushed_clear(&self) -> Result<()> {
        let cf = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| self.err("no default column family"))?;
        self.db
            .delete_range_cf(&cf, [PUSHED], [PUSHED + 1])
            .map_err(|e| self.err(e))
    }

    /// Notes a name a pushed stream brought, with what the push needs to
    /// know of it later. Scratch: written without the write-ahead log (a
    /// push that dies is refused whole, and its scratch cleared by the next).
    pub(crate) fn pushed_put(&self, path: &[u8], value: &[u8]) -> Result<()> {
        let mut wo = rocksdb::WriteOptions::default();
        wo.disable_wal(true);
        self.db
            .put_opt(key(PUSHED, path), value, &wo)
            .map_err(|e| self.err(e))
    }

    /// What [`pushed_put`](Self::pushed_put) noted of a name.
    pub(crate) fn pushed_get(&self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key(PUSHED, path)).map_err(|e| self.err(e))
    }

    /// Whether the push brought a name below `dir` (`dir/...`).
    pub(crate) fn pushed_any_below(&self, dir: &[u8]) -> Result<bool> {
        let mut within = key(PUSHED, dir);
        within.push(b'/');
        let mut it = self.db.raw_iterator();
        it.seek(&within);
        let found = it.key().is_some_and(|k| k.starts_with(&within));
        it.status().map_err(|e| self.err(e))?;
        Ok(found)
    }

    /// Notes what a re-key found of a path before storing it again (its
    /// old member and the hashes of its plaintext), for the resumption and
    /// the verification of the re-key. Written to the write-ahead log, and
    /// so durable with the next synced commit (the segment commit that
    /// re-keys the path comes after it).
    pub(crate) fn rekey_put(&self, path: &[u8], value: &[u8]) -> Result<()> {
        self.db
            .put(key(REKEY, path), value)
            .map_err(|e| self.err(e))
    }

    /// What [`rekey_put`](Self::rekey_put) noted of a path.
    pub(crate) fn rekey_get(&self, path: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get(key(REKEY, path)).map_err(|e| self.err(e))
    }

    /// Every path a re-key noted, in byte order, with its note.
    pub(crate) fn rekey_for_each(
        &self,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
    ) -> Result<()> {
        let mut it = self.db.raw_iterator();
        it.seek([REKEY]);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if k.first() != Some(&REKEY) {
                break;
            }
            f(&k[1..], v)?;
            it.next();
        }
        it.status().map_err(|e| self.err(e))
    }

    /// Forgets a re-key's notes, with the same commit as `batch` (the one
    /// that clears its marker).
    pub(crate) fn rekey_clear(&self, mut batch: Batch) -> Result<()> {
        let cf = self
            .db
            .cf_handle(rocksdb::DEFAULT_COLUMN_FAMILY_NAME)
            .ok_or_else(|| self.err("no default column family"))?;
        batch.inner.delete_range_cf(&cf, [REKEY], [REKEY + 1]);
        self.commit(batch)
    }

    /// Every name the push brought, in byte order.
    pub(crate) fn pushed_for_each(&self, mut f: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        let mut it = self.db.raw_iterator();
        it.seek([PUSHED]);
        while let Some(k) = it.key() {
            if k.first() != Some(&PUSHED) {
                break;
            }
            f(&k[1..])?;
            it.next();
        }
        it.status().map_err(|e| self.err(e))
    }
}

mod hex_32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("expected 32 bytes"))
    }
}

/// Ids as their text form.
mod as_text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An index error, or [`Error::Resource`] when RocksDB ran out of space:
/// a full disk is retryable, not a damaged index.
fn index_error(path: &Path, e: rocksdb::Error) -> Error {
    index_detail(path, e.into_string())
}

fn index_detail(path: &Path, detail: String) -> Error {
    // RocksDB reports an errno only as text.
    if detail.contains("No space left on device") || detail.contains("Disk quota exceeded") {
        return Error::Resource {
            what: "the index".into(),
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::StorageFull, detail),
        };
    }
    Error::Index {
        path: path.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(mtime: i64) -> Stat {
        Stat {
            dev: 66305,
            ino: 1 << 40,
            mode: libc::S_IFREG | 0o4755,
            nlink: 2,
            uid: 1000,
            gid: u32::MAX,
            size: 12345,
            mtime,
            mtime_ns: 999_999_999,
            ctime: 1_700_000_000,
            ctime_ns: 1,
            rdev: 0,
        }
    }

    fn file(hardlink_to: Option<Vec<u8>>) -> FileRecord {
        FileRecord {
            stat: stat(-86_400),
            scope: "proj".into(),
            segment: SegmentId::random(),
            member: MemberId::random(),
            sha256: [7; 32],
            stored: 4096,
            hardlink_to,
            slot: 0,
        }
    }

    #[test]
    fn file_and_member_records_round_trip_in_binary() {
        let packed = FileRecord {
            slot: 255,
            ..file(None)
        };
        for rec in [file(None), file(Some(b"a/\xffb".to_vec())), packed] {
            let bytes = rec.encode();
            assert_eq!(bytes[0], 2, "binary, version 2");
            assert_eq!(FileRecord::decode(&bytes).unwrap(), rec);
            // Version 1, written before packs: the same without the slot.
            let mut v1 = bytes[..bytes.len() - 2].to_vec();
            v1[0] = 1;
            assert_eq!(
                FileRecord::decode(&v1).unwrap(),
                FileRecord { slot: 0, ..rec }
            );
        }
        let m = MemberRecord {
            path: b"dir/\x00odd name".to_vec(),
            stat: stat(i64::MIN),
            scope: String::new(),
            stored: u64::MAX,
        };
        assert_eq!(MemberRecord::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn json_records_of_an_older_index_are_still_read() {
        let rec = file(Some(b"x".to_vec()));
        let json = serde_json::to_vec(&rec).unwrap();
        assert_eq!(FileRecord::decode(&json).unwrap(), rec);
        let m = MemberRecord {
            path: b"p".to_vec(),
            stat: stat(5),
            scope: "default".into(),
            stored: 3,
        };
        assert_eq!(
            MemberRecord::decode(&serde_json::to_vec(&m).unwrap()).unwrap(),
            m
        );
    }

    #[test]
    fn damaged_binary_records_are_refused() {
        let bytes = file(None).encode();
        for cut in [0, 1, 40, bytes.len() - 1] {
            let err = FileRecord::decode(&bytes[..cut]).unwrap_err();
            assert!(err.contains("empty") || err.contains("ends early"), "{err}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            FileRecord::decode(&longer)
                .unwrap_err()
                .contains("after the record")
        );
        let mut version = bytes.clone();
        version[0] = 9;
        assert!(
            FileRecord::decode(&version)
                .unwrap_err()
                .contains("version 9")
        );
        let mut flag = bytes;
        let at = flag.len() - 3; // the hard link flag, before the slot
        flag[at] = 2;
        assert!(
            FileRecord::decode(&flag)
                .unwrap_err()
                .contains("hard link flag")
        );
    }

    #[test]
    fn the_index_reads_both_encodings_and_names_a_corrupt_record() {
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(dir.path()).unwrap();
        let (a, b) = (file(None), file(Some(b"a".to_vec())));
        let mut batch = Batch::default();
        batch.put_file(b"a", &a);
        batch
            .inner
            .put(key(FILE, b"b"), serde_json::to_vec(&b).unwrap());
        batch.inner.put(key(FILE, b"c"), b"\x01\x02");
        batch.put_segment(&SegmentId::random(), &SegmentRecord::default());
        index.commit(batch).unwrap();

        assert_eq!(index.file(b"a").unwrap(), Some(a.clone()));
        assert_eq!(index.file(b"b").unwrap(), Some(b.clone()));
        let err = index.file(b"c").unwrap_err().to_string();
        assert!(err.contains("corrupt record f:c"), "{err}");

        let got = index.files(&[b"b", b"nope", b"a"]).unwrap();
        assert_eq!(got, [Some(b), None, Some(a)]);
        let err = index.files(&[b"a", b"c"]).unwrap_err().to_string();
        assert!(err.contains("corrupt record f:c"), "{err}");

        let mut paths = Vec::new();
        index
            .for_each_path(|p| {
                paths.push(p.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(paths, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    }
}
