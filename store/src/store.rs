//! [`Store`]: opening a store, reading, listing and deleting objects.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt as _;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{RetryPolicy, S3Config, StoreOptions};
use crate::error::{Error, Kind, Op, Result, classify};
use crate::key::{validate_key, validate_prefix};
use crate::s3;

/// How many times in all the store tries an operation whose failure the HTTP
/// client did not already retry away.
const ATTEMPTS: u32 = 3;

/// What is known about one stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectInfo {
    /// The object's key, relative to the store.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was written.
    pub last_modified: SystemTime,
    /// The store's entity tag, if it gives one. On S3, an object uploaded in
    /// N parts has an ETag ending in `-N`.
    pub e_tag: Option<String>,
}

/// How a write-once put ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PutOutcome {
    /// The object was written now.
    Created,
    /// An identical object was already there (a rerun after a crash);
    /// nothing was written.
    AlreadyPresent,
}

/// An object store: a local directory or an S3 bucket (and prefix), holding
/// write-once objects under `/`-separated keys.
///
/// Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    describe: String,
    options: StoreOptions,
    retry: Option<RetryPolicy>,
    secrets: Vec<SecretString>,
}

pub(crate) enum Backend {
    Local {
        fs: LocalFileSystem,
        root: PathBuf,
    },
    S3 {
        s3: AmazonS3,
        prefix: String,
        conditional: bool,
    },
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Store").field(&self.inner.describe).finish()
    }
}

impl Store {
    /// Opens the store named by `spec`, with default [`StoreOptions`].
    ///
    /// - `s3://BUCKET` or `s3://BUCKET/PREFIX`: an S3 bucket, configured by
    ///   the standard environment variables (`AWS_ENDPOINT_URL`,
    ///   `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
    ///   `AWS_REGION`, `AWS_ALLOW_HTTP`, `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`,
    ///   ...). Requests are path-style unless that last one is `true`.
    /// - anything else without `://`: a local directory, created if missing.
    ///
    /// Nothing is sent over the network yet.
    pub fn open(spec: &str) -> Result<Store> {
        Store::open_with(spec, StoreOptions::default())
    }

    /// [`Store::open`] with explicit options.
    pub fn open_with(spec: &str, options: StoreOptions) -> Result<Store> {
        if let Some(parsed) = s3::parse_spec(spec) {
            let (bucket, prefix) = parsed?;
            return Store::from_s3(
                AmazonS3Builder::from_env(),
                &bucket,
                &prefix,
                &S3Config::default(),
                options,
            );
        }
        if spec.contains("://") {
            return Err(Error::BadSpec {
                spec: s3::redact_spec(spec),
                reason: "not a directory path, and the only URL scheme known is s3://".into(),
            });
        }
        Store::open_local(spec, options)
    }

    /// Opens (creating it if missing) the local directory `dir` as a store.
    pub fn open_local(dir: impl AsRef<FsPath>, options: StoreOptions) -> Result<Store> {
        let dir = dir.as_ref();
        let bad = |reason: String| Error::BadSpec {
            spec: dir.display().to_string(),
            reason,
        };
        if dir.as_os_str().is_empty() {
            return Err(bad("an empty path is no directory".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
        let root = dir
            .canonicalize()
            .map_err(|e| bad(format!("cannot resolve it: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| bad(format!("cannot use it: {e}")))?;
        Ok(Store::new(
            Backend::Local {
                fs,
                root: root.clone(),
            },
            format!("local directory {}", root.display()),
            options,
            None,
            Vec::new(),
        ))
    }

    /// Opens `s3://BUCKET/PREFIX` with exactly the settings in `config`: no
    /// environment variable is read.
    pub fn open_s3(
        bucket: &str,
        prefix: &str,
        config: &S3Config,
        options: StoreOptions,
    ) -> Result<Store> {
        Store::from_s3(AmazonS3Builder::new(), bucket, prefix, config, options)
    }

    fn from_s3(
        builder: AmazonS3Builder,
        bucket: &str,
        prefix: &str,
        config: &S3Config,
        options: StoreOptions,
    ) -> Result<Store> {
        let built = s3::build(builder, bucket, prefix, config)?;
        Ok(Store::new(
            Backend::S3 {
                s3: built.s3,
                prefix: built.prefix,
                conditional: built.conditional,
            },
            built.describe,
            options,
            Some(built.retry),
            built.secrets,
        ))
    }

    fn new(
        backend: Backend,
        describe: String,
        options: StoreOptions,
        retry: Option<RetryPolicy>,
        secrets: Vec<SecretString>,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                backend,
                describe,
                options,
                retry,
                secrets,
            }),
        }
    }

    /// What this store is, for logs and messages: the directory, or the
    /// bucket, prefix, endpoint and region. Never a credential.
    pub fn describe(&self) -> &str {
        &self.inner.describe
    }

    /// The options this store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.options
    }

    /// The whole object under `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let loc = self.location(key)?;
        self.retrying(|| async { self.os().get(&loc).await?.bytes().await })
            .await
            .map_err(|e| self.error(Op::Get, key, e))
    }

    /// The bytes `range` of the object under `key`. A range that reaches
    /// past the end of the object is an error, not a short read.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let loc = self.location(key)?;
        if range.start > range.end {
            return Err(self.permanent(
                Op::Get,
                key,
                format!("invalid range {}..{}", range.start, range.end),
            ));
        }
        if range.start == range.end {
            // Nothing to read, but the object must exist.
            return match self.head(key).await? {
                Some(info) if info.size >= range.end => Ok(Bytes::new()),
                Some(info) => Err(self.past_end(key, &range, info.size)),
                None => Err(self.not_found(key)),
            };
        }
        let bytes = self
            .retrying(|| self.os().get_range(&loc, range.clone()))
            .await
            .map_err(|e| self.error(Op::Get, key, e))?;
        if bytes.len() as u64 != range.end - range.start {
            let size = self.head(key).await?.map_or(0, |i| i.size);
            return Err(self.past_end(key, &range, size));
        }
        Ok(bytes)
    }

    /// The bytes `range` of the object under `key`, as
    /// [`get_range`](Self::get_range) gives them, in `buf` (emptied first,
    /// its allocation kept). A caller that reads range after range and
    /// hands its buffers back keeps the same memory instead of mapping
    /// (and the kernel zeroing) fresh pages for every range. On a local
    /// store the bytes go from the file straight into `buf`.
    pub async fn get_range_into(
        &self,
        key: &str,
        range: Range<u64>,
        mut buf: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.location(key)?;
        let path = match self.local_path(key) {
            Some(path) if range.start < range.end => path,
            _ => {
                let bytes = self.get_range(key, range).await?;
                buf.clear();
                buf.extend_from_slice(&bytes);
                return Ok(buf);
            }
        };
        let (read, buf) = tokio::task::spawn_blocking(move || {
            let read = read_range_into(&path, &range, &mut buf);
            (read.map_err(|e| (e, range)), buf)
        })
        .await
        .map_err(|e| self.permanent(Op::Get, key, format!("the read stopped: {e}")))?;
        match read {
            Ok(()) => Ok(buf),
            Err((RangeRead::Missing, _)) => Err(self.not_found(key)),
            Err((RangeRead::Short(size), range)) => Err(self.past_end(key, &range, size)),
            Err((RangeRead::Io(e), _)) => Err(self.permanent(Op::Get, key, e.to_string())),
        }
    }

    /// The bytes of every range of `ranges` of the object under `key`, one
    /// after another, as [`get_range`](Self::get_range) gives each: many
    /// small reads (the heads of a segment's members) in one call. On a
    /// local store the file is opened once; on S3 a few ranges are read at
    /// a time.
    pub async fn get_ranges(&self, key: &str, ranges: Vec<Range<u64>>) -> Result<Vec<u8>> {
        self.location(key)?;
        if let Some(bad) = ranges.iter().find(|r| r.start > r.end) {
            return Err(self.permanent(
                Op::Get,
                key,
                format!("invalid range {}..{}", bad.start, bad.end),
            ));
        }
        let Some(path) = self.local_path(key) else {
            use futures::StreamExt as _;
            let pieces: Vec<Result<Bytes>> = futures::stream::iter(ranges)
                .map(|r| self.get_range(key, r))
                .buffered(8)
                .collect()
                .await;
            let mut out = Vec::new();
            for p in pieces {
                out.extend_from_slice(&p?);
            }
            return Ok(out);
        };
        let (read, ranges) = tokio::task::spawn_blocking(move || {
            let read = read_ranges(&path, &ranges);
            (read, ranges)
        })
        .await
        .map_err(|e| self.permanent(Op::Get, key, format!("the read stopped: {e}")))?;
        match read {
            Ok(out) => Ok(out),
            Err((RangeRead::Missing, _)) => Err(self.not_found(key)),
            Err((RangeRead::Short(size), i)) => Err(self.past_end(key, &ranges[i], size)),
            Err((RangeRead::Io(e), _)) => Err(self.permanent(Op::Get, key, e.to_string())),
        }
    }

    /// What is known about the object under `key`, or `None` if there is none.
    /// (On S3 a missing bucket reads as `None` too: a HEAD answer has no body
    /// to tell the two apart.)
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let loc = self.location(key)?;
        match self.retrying(|| self.os().head(&loc)).await {
            Ok(meta) => Ok(Some(self.info(key.to_string(), meta))),
            Err(e) if classify(&e) == Kind::NotFound => Ok(None),
            Err(e) => Err(self.error(Op::Head, key, e)),
        }
    }

    /// Every object whose key is `prefix` or lies under `prefix/`, sorted by
    /// key. `prefix` matches whole key parts: `"seg"` does not match
    /// `segments/x`. A trailing `/` is allowed; `""` lists everything.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = validate_prefix(prefix)?;
        let full = self.full_key(prefix);
        let loc = (!full.is_empty())
            .then(|| Path::parse(&full))
            .transpose()
            .map_err(|_| Error::BadKey {
                key: prefix.to_string(),
                reason: "not a valid object path",
            })?;
        let metas: Vec<ObjectMeta> = self
            .retrying(|| self.os().list(loc.as_ref()).try_collect())
            .await
            .map_err(|e| self.error(Op::List, prefix, e))?;
        let mut out: Vec<ObjectInfo> = metas
            .into_iter()
            .filter_map(|meta| {
                let key = self.key_of(&meta.location)?;
                // Names outside the key rules are not objects of ours (the
                // local store's staging area, foreign files).
                validate_key(&key).ok()?;
                Some(self.info(key, meta))
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes the object under `key`. Deleting an object that does not
    /// exist succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let loc = self.location(key)?;
        match self.retrying(|| self.os().delete(&loc)).await {
            Ok(()) => Ok(()),
            Err(e) if classify(&e) == Kind::NotFound => Ok(()),
            Err(e) => Err(self.error(Op::Delete, key, e)),
        }
    }

    /// Removes what interrupted writes left behind, if older than
    /// `older_than`, and returns how many files went.
    ///
    /// On a local directory: partial uploads in the staging area
    /// (`.cbfs-staging/`) and half-written objects (`NAME#N` files, which
    /// listings never show). Pick `older_than` well above the longest upload
    /// (an hour, say), so that writes in progress are left alone. On S3 this
    /// does nothing and returns 0: give the bucket a lifecycle rule that
    /// aborts incomplete multipart uploads instead.
    pub async fn sweep_leftovers(&self, older_than: Duration) -> Result<usize> {
        let Backend::Local { root, .. } = &self.inner.backend else {
            return Ok(0);
        };
        let root = root.clone();
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        tokio::task::spawn_blocking(move || crate::local::sweep(&root, cutoff))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| self.permanent(Op::Delete, "", format!("sweeping leftovers: {e}")))
    }

    // ---- shared helpers

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub(crate) fn os(&self) -> &dyn ObjectStore {
        match &self.inner.backend {
            Backend::Local { fs, .. } => fs,
            Backend::S3 { s3, .. } => s3,
        }
    }

    /// The key with the store's prefix in front.
    fn full_key(&self, key: &str) -> String {
        match &self.inner.backend {
            Backend::S3 { prefix, .. } if !prefix.is_empty() => {
                if key.is_empty() {
                    prefix.clone()
                } else {
                    format!("{prefix}/{key}")
                }
            }
            _ => key.to_string(),
        }
    }

    /// The key of a full location, or `None` if it is outside the prefix.
    fn key_of(&self, location: &Path) -> Option<String> {
        let full = location.as_ref();
        match &self.inner.backend {
            Backend::S3 { prefix, .. } if !prefix.is_empty() => full
                .strip_prefix(prefix.as_str())?
                .strip_prefix('/')
                .map(str::to_string),
            _ => Some(full.to_string()),
        }
    }

    /// Validates `key` and turns it into a full `object_store` path.
    pub(crate) fn location(&self, key: &str) -> Result<Path> {
        validate_key(key)?;
        Path::parse(self.full_key(key)).map_err(|_| Error::BadKey {
            key: key.to_string(),
            reason: "not a valid object path",
        })
    }

    /// Whether the store is a local directory (a read is a system call,
    /// not a request).
    pub fn is_local(&self) -> bool {
        matches!(self.inner.backend, Backend::Local { .. })
    }

    pub(crate) fn local_path(&self, key: &str) -> Option<PathBuf> {
        match &self.inner.backend {
            Backend::Local { root, .. } => Some(root.join(key)),
            Backend::S3 { .. } => None,
        }
    }

    fn info(&self, key: String, meta: ObjectMeta) -> ObjectInfo {
        ObjectInfo {
            key,
            size: meta.size,
            last_modified: meta.last_modified.into(),
            e_tag: meta.e_tag,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the retry policy
    /// runs out. The HTTP client already retries each request; this catches
    /// what it does not (a connection dropped while a body was being read).
    /// Only for operations that are safe to repeat.
    pub(crate) async fn retrying<T, F, Fut>(&self, mut attempt: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let Some(policy) = &self.inner.retry else {
            return attempt().await;
        };
        let start = Instant::now();
        let mut pause = policy.initial_backoff;
        let mut tries = 1;
        loop {
            match attempt().await {
                Err(e)
                    if classify(&e) == Kind::Transient
                        && tries < ATTEMPTS
                        && start.elapsed() + pause < policy.timeout =>
                {
                    tracing::warn!(
                        store = %self.describe(),
                        error = %self.redact(e.to_string()),
                        "retrying after a transient failure"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2)
                        .min(policy.max_backoff)
                        .max(Duration::from_millis(1));
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    /// Maps an `object_store` error about `key` to ours.
    pub(crate) fn error(&self, op: Op, key: &str, e: object_store::Error) -> Error {
        match classify(&e) {
            Kind::NotFound => self.not_found(key),
            Kind::Exists => Error::AlreadyExists {
                store: self.describe().to_string(),
                key: key.to_string(),
            },
            Kind::Transient => self.transient(op, key, e.to_string()),
            Kind::Permanent => self.permanent(op, key, e.to_string()),
            Kind::Full => self.full(op, key, e.to_string()),
        }
    }

    pub(crate) fn full(&self, op: Op, key: &str, detail: String) -> Error {
        Error::Full {
            store: self.describe().to_string(),
            key: key.to_string(),
            op,
            detail: self.redact(detail),
        }
    }

    pub(crate) fn not_found(&self, key: &str) -> Error {
        Error::NotFound {
            store: self.describe().to_string(),
            key: key.to_string(),
        }
    }

    pub(crate) fn transient(&self, op: Op, key: &str, detail: String) -> Error {
        Error::Transient {
            store: self.describe().to_string(),
            key: key.to_string(),
            op,
            detail: self.redact(detail),
        }
    }

    pub(crate) fn permanent(&self, op: Op, key: &str, detail: String) -> Error {
        Error::Permanent {
            store: self.describe().to_string(),
            key: key.to_string(),
            op,
            detail: self.redact(detail),
        }
    }

    pub(crate) fn past_end(&self, key: &str, range: &Range<u64>, size: u64) -> Error {
        self.permanent(
            Op::Get,
            key,
            format!(
                "range {}..{} reaches past the end of the object ({size} bytes)",
                range.start, range.end
            ),
        )
    }

    /// `text` with every known secret value cut out.
    fn redact(&self, mut text: String) -> String {
        for secret in &self.inner.secrets {
            let secret = secret.expose_secret();
            if secret.len() >= 4 && text.contains(secret) {
                text = text.replace(secret, "[redacted]");
            }
        }
        text
    }
}

/// Why a ranged read of a local object failed.
enum RangeRead {
    /// There is no such object.
    Missing,
    /// The object ends (at this size) before the range does.
    Short(u64),
    Io(std::io::Error),
}

/// Reads every range of the file at `path`, one after another, with
/// positional reads of one open file; an error says which range failed.
fn read_ranges(
    path: &FsPath,
    ranges: &[Range<u64>],
) -> std::result::Result<Vec<u8>, (RangeRead, usize)> {
    use std::os::unix::fs::FileExt as _;
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => RangeRead::Missing,
        _ => RangeRead::Io(e),
    };
    let file = std::fs::File::open(path).map_err(|e| (io(e), 0))?;
    let size = file.metadata().map_err(|e| (io(e), 0))?.len();
    let total: u64 = ranges.iter().map(|r| r.end - r.start).sum();
    let mut out = vec![
        0u8;
        usize::try_from(total)
            .map_err(|e| (RangeRead::Io(std::io::Error::other(e)), 0))?
    ];
    let mut at = 0usize;
    for (i, r) in ranges.iter().enumerate() {
        if size < r.end {
            return Err((RangeRead::Short(size), i));
        }
        let len = (r.end - r.start) as usize;
        file.read_exact_at(&mut out[at..at + len], r.start)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => (RangeRead::Short(size), i),
                _ => (io(e), i),
            })?;
        at += len;
    }
    Ok(out)
}

/// Reads `range` of the file at `path` into `buf` (emptied first), with no
/// zeroing of the memory it fills.
fn read_range_into(
    path: &FsPath,
    range: &Range<u64>,
    buf: &mut Vec<u8>,
) -> std::result::Result<(), RangeRead> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let io = |e: std::io::Error| match e.kind() {
        std::io::ErrorKind::NotFound => RangeRead::Missing,
        _ => RangeRead::Io(e),
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size < range.end {
        return Err(RangeRead::Short(size));
    }
    let len = range.end - range.start;
    buf.clear();
    buf.reserve(usize::try_from(len).map_err(|e| RangeRead::Io(std::io::Error::other(e)))?);
    file.seek(SeekFrom::Start(range.start)).map_err(io)?;
    let got = file.take(len).read_to_end(buf).map_err(io)?;
    if got as u64 != len {
        // Cut short while it was read.
        return Err(RangeRead::Short(range.start + got as u64));
    }
    Ok(())
}
