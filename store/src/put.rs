//! Write-once puts: [`Store::put_new`] and [`Store::put_file_new`].

use std::path::Path as FsPath;

use bytes::Bytes;
use object_store::aws::AmazonS3;
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore as _, PartId};
use object_store::path::Path;
use object_store::{ObjectStore as _, PutMode};
use tokio::io::AsyncReadExt as _;
use tokio::task::JoinSet;

use crate::config::{MAX_PARTS, MIN_PART_SIZE};
use crate::error::{Error, Kind, Op, Result, classify, is_full};
use crate::local::{STAGING_DIR, sync_path, unique_name};
use crate::store::{Backend, PutOutcome, Store};

/// Why an upload failed: the store, or the local file being uploaded.
enum Failure {
    Store(object_store::Error),
    Local(std::io::Error),
}

impl From<object_store::Error> for Failure {
    fn from(e: object_store::Error) -> Failure {
        Failure::Store(e)
    }
}

impl Store {
    /// Writes `bytes` under `key`, once.
    ///
    /// - No object under `key`: it is written atomically (a reader sees the
    ///   whole object or none) and [`PutOutcome::Created`] is returned.
    /// - An object with the same bytes: nothing is written, and
    ///   [`PutOutcome::AlreadyPresent`] is returned. A rerun after a crash
    ///   thus finishes the job.
    /// - An object with other bytes: [`Error::AlreadyExists`]; the object is
    ///   left as it was.
    ///
    /// On S3 the write is a `PutObject` with `If-None-Match: *`, so two
    /// writers cannot both win (see
    /// [`S3Config::conditional_writes`](crate::S3Config::conditional_writes)
    /// for servers without it). On a local directory the object is written to
    /// a temporary file, hard-linked into place (which fails if the name is
    /// taken) and flushed to disk.
    pub async fn put_new(&self, key: &str, bytes: impl Into<Bytes>) -> Result<PutOutcome> {
        self.put_new_synced(key, bytes.into(), true).await
    }

    /// Writes many small objects, each as [`Store::put_new`] would,
    /// `in_flight` at a time; the outcomes come in the order given. On a
    /// local directory the objects are flushed to disk together, once all
    /// are written (one `syncfs` of the store's file system, where
    /// [`Store::put_new`] flushes each object's file and directories): a
    /// batch of thousands of lockboxes costs one flush instead of thousands.
    /// Nothing is reported written before that flush succeeded.
    pub async fn put_many_new(
        &self,
        items: Vec<(String, Bytes)>,
        in_flight: usize,
    ) -> Vec<Result<PutOutcome>> {
        use futures::StreamExt as _;
        let local = matches!(self.backend(), Backend::Local { .. });
        let mut results: Vec<Result<PutOutcome>> = futures::stream::iter(
            items
                .iter()
                .map(|(key, bytes)| self.put_new_synced(key, bytes.clone(), !local)),
        )
        .buffered(in_flight.max(1))
        .collect()
        .await;
        if let (Backend::Local { root, .. }, false) = (self.backend(), items.is_empty()) {
            let root = root.clone();
            let synced = tokio::task::spawn_blocking(move || {
                let dir = std::fs::File::open(&root)?;
                rustix::fs::syncfs(&dir).map_err(std::io::Error::from)
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
            if let Err(e) = synced {
                for ((key, _), r) in items.iter().zip(&mut results) {
                    if r.is_ok() {
                        *r = Err(self.flush_failed(
                            key,
                            &e,
                            format!("cannot flush a batch of {} objects to disk", items.len()),
                        ));
                    }
                }
            }
        }
        results
    }

    async fn put_new_synced(&self, key: &str, bytes: Bytes, sync: bool) -> Result<PutOutcome> {
        let loc = self.location(key)?;
        // Twice at most: once more if the object vanished while compared.
        for _ in 0..2 {
            match self.create(&loc, &bytes).await {
                Ok(()) => {
                    if sync {
                        self.sync_local(key).await?;
                    }
                    tracing::debug!(store = %self.describe(), key, size = bytes.len(), "object written");
                    return Ok(PutOutcome::Created);
                }
                Err(e) if classify(&e) == Kind::Exists => match self.get(key).await {
                    Ok(existing) if existing == bytes => {
                        if sync {
                            self.sync_local(key).await?;
                        }
                        tracing::debug!(store = %self.describe(), key, "identical object already there");
                        return Ok(PutOutcome::AlreadyPresent);
                    }
                    Ok(_) => return Err(self.already_exists(key)),
                    Err(Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(self.error(Op::Put, key, e)),
            }
        }
        Err(self.vanished(key))
    }

    /// Uploads the local file `path` under `key`, once, with the same
    /// outcomes as [`Store::put_new`].
    ///
    /// Memory stays bounded whatever the file's size: a file up to
    /// [`StoreOptions::part_size`](crate::StoreOptions::part_size) is sent in
    /// one request; a larger one in parts of that size, at most
    /// [`StoreOptions::upload_concurrency`](crate::StoreOptions::upload_concurrency)
    /// at a time. On S3 that is a multipart upload whose completion carries
    /// `If-None-Match: *`, preceded by a look for the key (servers such as
    /// Ceph's radosgw ignore the header on the completion and would replace
    /// an existing object; two writers racing on the key between the look
    /// and the completion can then both succeed, the later one's object
    /// kept); a failed upload is aborted (a crash can still leave
    /// an incomplete upload behind: give the bucket a lifecycle rule that
    /// aborts them after a day or so). On a local directory the file is
    /// hard-linked into place when it is on the store's file system (no
    /// copy: do not change the file afterwards), else copied into a staging
    /// area under the root (`.cbfs-staging/`, where a crash may leave
    /// garbage), then hard-linked into place.
    ///
    /// The file must not change during the upload; if its size does, the
    /// upload fails.
    pub async fn put_file_new(&self, key: &str, path: impl AsRef<FsPath>) -> Result<PutOutcome> {
        let path = path.as_ref();
        let loc = self.location(key)?;
        if let Some(target) = self.local_path(key) {
            let source = path.to_path_buf();
            let linked = tokio::task::spawn_blocking(move || link_into_place(&source, &target))
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
            match linked {
                Ok(true) => {
                    self.sync_local(key).await?;
                    tracing::debug!(store = %self.describe(), key, "file linked into place");
                    return Ok(PutOutcome::Created);
                }
                // Another file system: copy below. Already there: the copy
                // below finds it and compares.
                Ok(false) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                // No room for the object's directory: the store's disk.
                Err(e) if is_full(&e) => return Err(self.full(Op::Put, key, e.to_string())),
                Err(e) => return Err(self.local_error(key, path, e)),
            }
        }
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| self.local_error(key, path, e))?;
        if !meta.is_file() {
            return Err(self.local_error(key, path, std::io::Error::other("not a regular file")));
        }
        let len = meta.len();
        let part_size = self.part_size_for(len);
        if len <= part_size as u64 {
            let data = tokio::fs::read(path)
                .await
                .map_err(|e| self.local_error(key, path, e))?;
            if data.len() as u64 != len {
                return Err(self.local_error(key, path, changed()));
            }
            return self.put_new(key, data).await;
        }

        let mut upload_gone = None;
        for _ in 0..2 {
            let reader = PartReader::open(path, len, part_size)
                .await
                .map_err(|e| self.local_error(key, path, e))?;
            let result = match self.backend() {
                Backend::Local { fs, .. } => self.upload_local(fs, &loc, reader).await,
                Backend::S3 {
                    s3, conditional, ..
                } => {
                    if !conditional && self.head(key).await?.is_some() {
                        Err(Failure::Store(exists(&loc)))
                    } else {
                        self.upload_s3(s3, &loc, reader).await
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.sync_local(key).await?;
                    tracing::debug!(store = %self.describe(), key, size = len, "file uploaded");
                    return Ok(PutOutcome::Created);
                }
                // The key is taken (412); or, on S3, the upload is gone (404
                // NoSuchUpload): an earlier try of its completion may have
                // gone through with the answer lost, or the upload was
                // aborted. Either way, what is under the key now decides.
                Err(Failure::Store(e)) if matches!(classify(&e), Kind::Exists | Kind::NotFound) => {
                    match self.same_as_file(key, path, len).await? {
                        Some(true) => {
                            self.sync_local(key).await?;
                            tracing::debug!(store = %self.describe(), key, "identical object already there");
                            return Ok(PutOutcome::AlreadyPresent);
                        }
                        Some(false) => return Err(self.already_exists(key)),
                        // Vanished meanwhile, or never written: upload again.
                        None => {
                            if classify(&e) == Kind::NotFound {
                                upload_gone = Some(e);
                            }
                            continue;
                        }
                    }
                }
                Err(Failure::Store(e)) => return Err(self.error(Op::Put, key, e)),
                Err(Failure::Local(e)) => return Err(self.local_error(key, path, e)),
            }
        }
        Err(match upload_gone {
            Some(e) => self.transient(
                Op::Put,
                key,
                format!("the multipart upload vanished before it was completed: {e}"),
            ),
            None => self.vanished(key),
        })
    }

    /// One create-only put of `bytes`.
    async fn create(&self, loc: &Path, bytes: &Bytes) -> object_store::Result<()> {
        if let Backend::S3 {
            conditional: false, ..
        } = self.backend()
        {
            // The server cannot refuse an existing key: look first, then
            // write. Another writer between the two steps would be overwritten.
            match self.retrying(|| self.os().head(loc)).await {
                Ok(_) => return Err(exists(loc)),
                Err(e) if classify(&e) == Kind::NotFound => {}
                Err(e) => return Err(e),
            }
            return self
                .retrying(|| {
                    self.os()
                        .put_opts(loc, bytes.clone().into(), PutMode::Overwrite.into())
                })
                .await
                .map(|_| ());
        }
        self.retrying(|| {
            self.os()
                .put_opts(loc, bytes.clone().into(), PutMode::Create.into())
        })
        .await
        .map(|_| ())
    }

    /// Multipart upload to S3; the completion is create-only (see `s3.rs`).
    async fn upload_s3(
        &self,
        s3: &AmazonS3,
        loc: &Path,
        reader: PartReader,
    ) -> Result<(), Failure> {
        let id = self.retrying(|| s3.create_multipart(loc)).await?;
        let result = self.upload_s3_parts(s3, loc, &id, reader).await;
        if result.is_err() {
            // Best effort: the parts would otherwise be kept (and billed).
            if let Err(e) = s3.abort_multipart(loc, &id).await {
                tracing::warn!(store = %self.describe(), key = %loc, error = %e,
                    "could not abort a failed multipart upload");
            }
        }
        result
    }

    async fn upload_s3_parts(
        &self,
        s3: &AmazonS3,
        loc: &Path,
        id: &str,
        mut reader: PartReader,
    ) -> Result<(), Failure> {
        let concurrency = self.options().upload_concurrency.max(1);
        let mut tasks: JoinSet<object_store::Result<(usize, PartId)>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut index = 0;
        while let Some(data) = reader.next().await.map_err(Failure::Local)? {
            while tasks.len() >= concurrency {
                parts.push(joined(tasks.join_next().await)?);
            }
            let store = self.clone();
            let (loc, id) = (loc.clone(), id.to_string());
            tasks.spawn(async move {
                let Backend::S3 { s3, .. } = store.backend() else {
                    unreachable!("an S3 upload runs on an S3 store")
                };
                let part = store
                    .retrying(|| s3.put_part(&loc, &id, index, data.clone().into()))
                    .await?;
                Ok((index, part))
            });
            index += 1;
        }
        while !tasks.is_empty() {
            parts.push(joined(tasks.join_next().await)?);
        }
        parts.sort_by_key(|(i, _)| *i);
        let parts: Vec<PartId> = parts.into_iter().map(|(_, p)| p).collect();
        // Not every server honours `If-None-Match: *` on the completion:
        // Ceph's radosgw (16.2) ignores it and replaces the object. Looking
        // first keeps an object that is already there from being replaced
        // on such a server; one created between this look and the
        // completion still is (docs/THREAT_MODEL.md, "Write-once objects").
        match self.retrying(|| self.os().head(loc)).await {
            Ok(_) => return Err(Failure::Store(exists(loc))),
            Err(e) if classify(&e) == Kind::NotFound => {}
            Err(e) => return Err(Failure::Store(e)),
        }
        let id = id.to_string();
        self.retrying(|| s3.complete_multipart(loc, &id, parts.clone()))
            .await?;
        Ok(())
    }

    /// Local upload: into the staging area, then hard-linked into place.
    async fn upload_local(
        &self,
        fs: &LocalFileSystem,
        loc: &Path,
        mut reader: PartReader,
    ) -> Result<(), Failure> {
        let staging = Path::from(format!("{STAGING_DIR}/{}", unique_name()));
        let result = async {
            let mut upload = fs.put_multipart(&staging).await?;
            let written = async {
                while let Some(data) = reader.next().await.map_err(Failure::Local)? {
                    upload.put_part(data.into()).await?;
                }
                upload.complete().await?;
                Ok::<_, Failure>(())
            }
            .await;
            if written.is_err() {
                let _ = upload.abort().await;
            }
            written?;
            fs.copy_if_not_exists(&staging, loc).await?;
            Ok(())
        }
        .await;
        let _ = fs.delete(&staging).await;
        result
    }

    /// Flushes a freshly written local object to disk; nothing on S3.
    async fn sync_local(&self, key: &str) -> Result<()> {
        let (Some(path), Backend::Local { root, .. }) = (self.local_path(key), self.backend())
        else {
            return Ok(());
        };
        let root = root.clone();
        let synced = tokio::task::spawn_blocking(move || sync_path(&root, &path))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        synced.map_err(|e| self.flush_failed(key, &e, "cannot flush to disk".to_string()))
    }

    /// A failed flush of a local object: a full disk, or else permanent.
    fn flush_failed(&self, key: &str, e: &std::io::Error, what: String) -> Error {
        let detail = format!("{what}: {e}");
        if is_full(e) {
            self.full(Op::Put, key, detail)
        } else {
            self.permanent(Op::Put, key, detail)
        }
    }

    /// The part size for a file of `len` bytes: the configured one, at least
    /// the S3 minimum, raised if the file would need more than 10,000 parts.
    fn part_size_for(&self, len: u64) -> usize {
        let size = self.options().part_size.max(MIN_PART_SIZE);
        if len.div_ceil(size as u64) <= MAX_PARTS {
            return size;
        }
        const MIB: u64 = 1024 * 1024;
        let needed = len.div_ceil(MAX_PARTS).div_ceil(MIB) * MIB;
        usize::try_from(needed).unwrap_or(usize::MAX)
    }

    fn already_exists(&self, key: &str) -> Error {
        Error::AlreadyExists {
            store: self.describe().to_string(),
            key: key.to_string(),
        }
    }

    fn vanished(&self, key: &str) -> Error {
        self.transient(
            Op::Put,
            key,
            "another writer keeps creating and deleting this key".to_string(),
        )
    }

    fn local_error(&self, key: &str, path: &FsPath, source: std::io::Error) -> Error {
        Error::LocalFile {
            store: self.describe().to_string(),
            key: key.to_string(),
            op: Op::Put,
            path: path.to_path_buf(),
            source,
        }
    }
}

fn exists(loc: &Path) -> object_store::Error {
    object_store::Error::AlreadyExists {
        path: loc.to_string(),
        source: "an object exists under this key".into(),
    }
}

fn changed() -> std::io::Error {
    std::io::Error::other("the file changed size while being read")
}

fn joined(
    next: Option<Result<object_store::Result<(usize, PartId)>, tokio::task::JoinError>>,
) -> Result<(usize, PartId), Failure> {
    match next {
        Some(Ok(Ok(part))) => Ok(part),
        Some(Ok(Err(e))) => Err(Failure::Store(e)),
        Some(Err(e)) => Err(Failure::Store(e.into())),
        None => unreachable!("joined only while tasks run"),
    }
}

/// Reads a file of known length in parts, and notices if it changes size.
struct PartReader {
    file: tokio::fs::File,
    len: u64,
    offset: u64,
    part_size: usize,
}

impl PartReader {
    async fn open(path: &FsPath, len: u64, part_size: usize) -> std::io::Result<PartReader> {
        Ok(PartReader {
            file: tokio::fs::File::open(path).await?,
            len,
            offset: 0,
            part_size,
        })
    }

    /// The next part, or `None` at the end.
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        if self.offset == self.len {
            let mut probe = [0u8; 1];
            return match self.file.read(&mut probe).await? {
                0 => Ok(None),
                _ => Err(changed()),
            };
        }
        let n = (self.len - self.offset).min(self.part_size as u64) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact(&mut buf).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                changed()
            } else {
                e
            }
        })?;
        self.offset += n as u64;
        Ok(Some(Bytes::from(buf)))
    }
}

/// Hard-links `source` to `target` (never replacing it): `Ok(false)` when
/// the two cannot be linked (another file system, no hard links), so the
/// caller copies instead.
fn link_into_place(source: &FsPath, target: &FsPath) -> std::io::Result<bool> {
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::hard_link(source, target) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "cannot hard-link into the store; copying");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreOptions};

    #[test]
    fn part_sizes_respect_s3_limits() {
        let dir = tempfile::tempdir().unwrap();
        let small = StoreOptions::new().with_part_size(1024);
        let store = Store::open_local(dir.path(), small).unwrap();
        assert_eq!(store.part_size_for(100), crate::MIN_PART_SIZE);

        let store = Store::open_local(dir.path(), StoreOptions::new()).unwrap();
        let part = store.options().part_size;
        assert_eq!(store.part_size_for(10 << 30), part);
        for len in [10_000 * part as u64, 10_000 * part as u64 + 1, 5 << 40] {
            let size = store.part_size_for(len) as u64;
            assert!(size >= part as u64);
            assert!(len.div_ceil(size) <= 10_000, "{len}: {size}");
        }
    }
}
