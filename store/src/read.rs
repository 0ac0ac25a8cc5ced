//! Reading large objects piece by piece: [`Store::reader`],
//! [`Store::get_to_file`], and the
//! comparison of an object with a local file.

use std::ops::Range;
use std::path::Path as FsPath;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{GetOptions, GetRange};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::error::{Error, Kind, Op, Result, classify};
use crate::local::{RemoveOnDrop, sibling_temp_path};
use crate::store::Store;

/// Reads one object (or a range of it) in pieces of bounded size, each a
/// request of its own (retried on its own, and short enough for the request
/// timeout), all pinned to the same version of the object by its ETag: what
/// [`Store::reader`] returns. Memory stays one piece whatever the object's
/// size.
pub struct ObjectReader {
    store: Store,
    key: String,
    loc: Path,
    size: u64,
    e_tag: Option<String>,
    offset: u64,
    end: u64,
    chunk: u64,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("store", &self.store.describe())
            .field("key", &self.key)
            .field("range", &(self.offset..self.end))
            .finish()
    }
}

impl Store {
    /// A reader of the object under `key` in pieces of
    /// [`StoreOptions::part_size`](crate::StoreOptions::part_size): the
    /// whole object, or the bytes `range` of it (which must lie within it).
    /// `None` if there is no object.
    pub async fn reader(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<ObjectReader>> {
        let Some(reader) = ObjectReader::open(self, key).await? else {
            return Ok(None);
        };
        match range {
            None => Ok(Some(reader)),
            Some(r) => reader.with_range(r).map(Some),
        }
    }
}

impl ObjectReader {
    /// Opens the object under `key`; `None` if there is none.
    pub(crate) async fn open(store: &Store, key: &str) -> Result<Option<ObjectReader>> {
        let loc = store.location(key)?;
        let Some(info) = store.head(key).await? else {
            return Ok(None);
        };
        Ok(Some(ObjectReader {
            store: store.clone(),
            key: key.to_owned(),
            loc,
            size: info.size,
            e_tag: info.e_tag,
            offset: 0,
            end: info.size,
            chunk: store.options().part_size.max(1) as u64,
        }))
    }

    /// Only the bytes `range` of the object, which must lie within it.
    pub fn with_range(self, range: Range<u64>) -> Result<Self> {
        if range.start > range.end || range.end > self.size {
            return Err(self.store.past_end(&self.key, &range, self.size));
        }
        Ok(ObjectReader {
            offset: range.start,
            end: range.end,
            ..self
        })
    }

    /// Pieces of at most `bytes` (at least 1) instead.
    pub fn with_piece_size(mut self, bytes: u64) -> Self {
        self.chunk = bytes.max(1);
        self
    }

    /// The object's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How many bytes are left to read.
    pub fn remaining(&self) -> u64 {
        self.end - self.offset
    }

    /// The next piece, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        if self.offset >= self.end {
            return Ok(None);
        }
        let end = (self.offset + self.chunk).min(self.end);
        let range = self.offset..end;
        let options = || GetOptions {
            if_match: self.e_tag.clone(),
            range: Some(GetRange::Bounded(range.clone())),
            ..GetOptions::default()
        };
        let bytes = self
            .store
            .retrying(|| async {
                self.store
                    .os()
                    .get_opts(&self.loc, options())
                    .await?
                    .bytes()
                    .await
            })
            .await
            .map_err(|e| match classify(&e) {
                Kind::Exists => self.store.transient(
                    Op::Get,
                    &self.key,
                    "the object was replaced while being read".to_string(),
                ),
                _ => self.store.error(Op::Get, &self.key, e),
            })?;
        if bytes.len() as u64 != end - self.offset {
            return Err(self.store.transient(
                Op::Get,
                &self.key,
                format!(
                    "asked for bytes {}..{end}, got {} bytes",
                    self.offset,
                    bytes.len()
                ),
            ));
        }
        self.offset = end;
        Ok(Some(bytes))
    }
}

impl Store {
    /// Downloads the object under `key` into the local file `path` and
    /// returns its size.
    ///
    /// Memory stays bounded whatever the object's size: the object is read in
    /// ranges of [`StoreOptions::part_size`](crate::StoreOptions::part_size),
    /// each its own request, retried on its own. The data goes to a temporary
    /// file beside `path`, which replaces `path` (if it exists) only once
    /// complete and flushed to disk.
    pub async fn get_to_file(&self, key: &str, path: impl AsRef<FsPath>) -> Result<u64> {
        let path = path.as_ref();
        let local = |source| Error::LocalFile {
            store: self.describe().to_string(),
            key: key.to_string(),
            op: Op::Get,
            path: path.to_path_buf(),
            source,
        };
        let mut reader = ObjectReader::open(self, key)
            .await?
            .ok_or_else(|| self.not_found(key))?;
        let tmp = sibling_temp_path(path)
            .ok_or_else(|| local(std::io::Error::other("the path has no file name")))?;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .await
            .map_err(local)?;
        let guard = RemoveOnDrop::new(tmp.clone());
        while let Some(chunk) = reader.next().await? {
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.sync_all().await.map_err(local)?;
        drop(file);
        tokio::fs::rename(&tmp, path).await.map_err(local)?;
        guard.disarm();
        Ok(reader.size())
    }

    /// Whether the object under `key` holds exactly the bytes of the local
    /// file (`len` bytes long); `None` if there is no object.
    pub(crate) async fn same_as_file(
        &self,
        key: &str,
        path: &FsPath,
        len: u64,
    ) -> Result<Option<bool>> {
        let Some(mut reader) = ObjectReader::open(self, key).await? else {
            return Ok(None);
        };
        if reader.size() != len {
            return Ok(Some(false));
        }
        let local = |source| Error::LocalFile {
            store: self.describe().to_string(),
            key: key.to_string(),
            op: Op::Put,
            path: path.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(local)?;
        let mut buf = Vec::new();
        while let Some(chunk) = reader.next().await? {
            buf.resize(chunk.len(), 0);
            file.read_exact(&mut buf).await.map_err(local)?;
            if buf[..] != chunk[..] {
                return Ok(Some(false));
            }
        }
        Ok(Some(true))
    }
}
