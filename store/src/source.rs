//! A store as the restore engine's [`ObjectSource`] (feature `source`):
//! how the tiering agent and the collector read and verify what a store
//! holds. Local directories and S3 alike; segments are read by the byte
//! ranges a restore needs (never downloaded whole).

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};

use cbfs_restore::{Error as RestoreError, ObjectSource};
use tokio::runtime::Handle;

use crate::Store;

/// A store, read from threads that may block, its requests driven on a
/// runtime given by the caller (the process's own: no runtime is made here).
pub struct StoreSource {
    store: Store,
    rt: Handle,
    fetched: AtomicU64,
}

impl StoreSource {
    /// Reads `store` with `rt` (call from a thread outside the runtime's
    /// async tasks, such as `spawn_blocking`).
    pub fn new(store: Store, rt: Handle) -> Self {
        StoreSource {
            store,
            rt,
            fetched: AtomicU64::new(0),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn convert(&self, key: &str, e: crate::Error) -> RestoreError {
        if e.is_not_found() {
            RestoreError::Missing {
                key: key.to_owned(),
            }
        } else if e.is_transient() {
            RestoreError::Unavailable {
                store: self.store.describe().to_owned(),
                key: key.to_owned(),
                reason: e.to_string(),
            }
        } else {
            RestoreError::Read {
                key: key.to_owned(),
                source: std::io::Error::other(e.to_string()),
            }
        }
    }

    fn count(&self, n: usize) {
        self.fetched.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl ObjectSource for StoreSource {
    fn describe(&self) -> String {
        self.store.describe().to_owned()
    }

    fn list(&self, prefix: &str) -> cbfs_restore::Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .rt
            .block_on(self.store.list(prefix))
            .map(|objs| objs.into_iter().map(|o| o.key).collect())
            .map_err(|e| self.convert(prefix, e))?;
        keys.sort();
        Ok(keys)
    }

    fn get(&self, key: &str) -> cbfs_restore::Result<Vec<u8>> {
        let bytes = self
            .rt
            .block_on(self.store.get(key))
            .map_err(|e| self.convert(key, e))?;
        self.count(bytes.len());
        Ok(bytes.to_vec())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> cbfs_restore::Result<Vec<u8>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        let bytes = self
            .rt
            .block_on(self.store.get_range(key, range))
            .map_err(|e| self.convert(key, e))?;
        self.count(bytes.len());
        Ok(bytes.to_vec())
    }

    fn size(&self, key: &str) -> cbfs_restore::Result<u64> {
        match self.rt.block_on(self.store.head(key)) {
            Ok(Some(info)) => Ok(info.size),
            Ok(None) => Err(RestoreError::Missing {
                key: key.to_owned(),
            }),
            Err(e) => Err(self.convert(key, e)),
        }
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}
