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
//! | `m` | member id | [`MemberRecord`] |
//! | `g` | segment id | [`SegmentRecord`] |
//! | `n` | sequence, 8 bytes big-endian | [`SnapshotRecord`] |
//! | `s` | `state` | [`State`] |

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
    /// Bytes the member takes in its segment.
    pub stored: u64,
    /// For a hard link: the path it links to.
    #[serde(default)]
    pub hardlink_to: Option<Vec<u8>>,
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

/// A segment and how much of it is still live.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentRecord {
    /// Size of the segment object.
    pub size: u64,
    /// Members in it.
    pub members: u64,
    /// Members the newest snapshot still uses.
    pub live_members: u64,
    /// Bytes of those members.
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

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("index records serialize")
}

impl Batch {
    /// Records the stored version of a path.
    pub fn put_file(&mut self, path: &[u8], rec: &FileRecord) {
        self.inner.put(key(FILE, path), enc(rec));
    }
    /// Forgets a path (deleted from the tree).
    pub fn delete_file(&mut self, path: &[u8]) {
        self.inner.delete(key(FILE, path));
    }
    /// Records what a member holds.
    pub fn put_member(&mut self, id: &MemberId, rec: &MemberRecord) {
        self.inner.put(key(MEMBER, id.as_bytes()), enc(rec));
    }
    /// Records a segment.
    pub fn put_segment(&mut self, id: &SegmentId, rec: &SegmentRecord) {
        self.inner.put(key(SEGMENT, id.as_bytes()), enc(rec));
    }
    /// Records a snapshot.
    pub fn put_snapshot(&mut self, rec: &SnapshotRecord) {
        self.inner
            .put(key(SNAPSHOT, &rec.sequence.to_be_bytes()), enc(rec));
    }
    /// Replaces the state.
    pub fn put_state(&mut self, state: &State) {
        self.inner.put(key(STATE, b"state"), enc(state));
    }
    /// Whether there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
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
        let db = rocksdb::DB::open(&opts, dir).map_err(|e| Error::Index {
            path: dir.to_owned(),
            detail: if e.to_string().contains("lock") {
                format!("{e} (is another cbfs-tier running on this index?)")
            } else {
                e.to_string()
            },
        })?;
        Ok(Index {
            db,
            path: dir.to_owned(),
        })
    }

    /// Opens an existing index for reading only (while an agent may hold it).
    pub fn open_read_only(dir: &Path) -> Result<Self> {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_for_read_only(&opts, dir, false).map_err(|e| Error::Index {
            path: dir.to_owned(),
            detail: e.to_string(),
        })?;
        Ok(Index {
            db,
            path: dir.to_owned(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Index {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn get<T: DeserializeOwned>(&self, k: Vec<u8>) -> Result<Option<T>> {
        match self.db.get_pinned(&k).map_err(|e| self.err(e))? {
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| self.err(format!("corrupt record: {e}"))),
            None => Ok(None),
        }
    }

    fn scan<T: DeserializeOwned>(
        &self,
        tag: u8,
        mut f: impl FnMut(&[u8], T) -> Result<()>,
    ) -> Result<()> {
        let it = self.db.iterator(rocksdb::IteratorMode::From(
            &[tag],
            rocksdb::Direction::Forward,
        ));
        for item in it {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if k.first() != Some(&tag) {
                break;
            }
            let rec =
                serde_json::from_slice(&v).map_err(|e| self.err(format!("corrupt record: {e}")))?;
            f(&k[1..], rec)?;
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

    /// Every stored path, in byte order.
    pub fn for_each_file(&self, f: impl FnMut(&[u8], FileRecord) -> Result<()>) -> Result<()> {
        self.scan(FILE, f)
    }

    /// A member's record.
    pub fn member(&self, id: &MemberId) -> Result<Option<MemberRecord>> {
        self.get(key(MEMBER, id.as_bytes()))
    }

    /// A segment's record.
    pub fn segment(&self, id: &SegmentId) -> Result<Option<SegmentRecord>> {
        self.get(key(SEGMENT, id.as_bytes()))
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
