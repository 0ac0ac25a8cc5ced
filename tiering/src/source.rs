//! The store as the recovery engine's [`ObjectSource`].

use std::path::Path;

use cbfs_recover::{Error as RecoverError, LocalDir, ObjectSource, ReadSeek};
use cbfs_store::Store;
use tokio::runtime::Handle;

/// Reads objects from any store: a local directory directly, S3 through
/// the store client (segments are fetched to a temporary file, so that
/// members can be read at their offsets with bounded memory).
pub enum StoreSource {
    /// A local directory store.
    Local(LocalDir),
    /// Any other store.
    Remote {
        /// The store.
        store: Store,
        /// The runtime to drive it.
        handle: Handle,
        /// Where fetched segments go.
        spool: tempfile::TempDir,
    },
}

impl StoreSource {
    /// A source for `spec` (a directory or `s3://...`).
    pub fn open(spec: &str, store: Store, handle: Handle) -> crate::Result<Self> {
        if !spec.starts_with("s3://") {
            let dir =
                LocalDir::new(Path::new(spec)).map_err(|e| crate::Error::Usage(e.to_string()))?;
            return Ok(StoreSource::Local(dir));
        }
        let spool = tempfile::Builder::new()
            .prefix("cbfs-restore-")
            .tempdir()
            .map_err(|e| {
                crate::Error::io("cannot create a spool directory", std::env::temp_dir(), e)
            })?;
        Ok(StoreSource::Remote {
            store,
            handle,
            spool,
        })
    }
}

fn convert(key: &str, e: cbfs_store::Error) -> RecoverError {
    if e.is_not_found() {
        RecoverError::Missing {
            key: key.to_owned(),
        }
    } else {
        RecoverError::Read {
            key: key.to_owned(),
            source: std::io::Error::other(e.to_string()),
        }
    }
}

impl ObjectSource for StoreSource {
    fn list(&self, prefix: &str) -> cbfs_recover::Result<Vec<String>> {
        match self {
            StoreSource::Local(d) => d.list(prefix),
            StoreSource::Remote { store, handle, .. } => handle
                .block_on(store.list(prefix))
                .map(|objs| objs.into_iter().map(|o| o.key).collect())
                .map_err(|e| convert(prefix, e)),
        }
    }

    fn get(&self, key: &str) -> cbfs_recover::Result<Vec<u8>> {
        match self {
            StoreSource::Local(d) => d.get(key),
            StoreSource::Remote { store, handle, .. } => handle
                .block_on(store.get(key))
                .map(|b| b.to_vec())
                .map_err(|e| convert(key, e)),
        }
    }

    fn open(&self, key: &str) -> cbfs_recover::Result<Box<dyn ReadSeek + '_>> {
        match self {
            StoreSource::Local(d) => d.open(key),
            StoreSource::Remote {
                store,
                handle,
                spool,
            } => {
                let path = spool.path().join(key.replace('/', "_"));
                if !path.exists() {
                    handle
                        .block_on(store.get_to_file(key, &path))
                        .map_err(|e| convert(key, e))?;
                }
                let f = std::fs::File::open(&path).map_err(|e| RecoverError::Read {
                    key: key.to_owned(),
                    source: e,
                })?;
                Ok(Box::new(cbfs_recover::SegmentFile::new(f)))
            }
        }
    }
}
