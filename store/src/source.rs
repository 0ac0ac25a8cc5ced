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
    /// The longest one call may take, retries included (`None`: the
    /// store's own retry window).
    timeout: Option<std::time::Duration>,
}

impl StoreSource {
    /// Reads `store` with `rt` (call from a thread outside the runtime's
    /// async tasks, such as `spawn_blocking`).
    pub fn new(store: Store, rt: Handle) -> Self {
        StoreSource {
            store,
            rt,
            fetched: AtomicU64::new(0),
            timeout: None,
        }
    }

    /// Gives up on a call after `timeout` (retries included), as a store
    /// that is down: a reader waiting on a recall gets its answer in time.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Runs a store call on the runtime, within the timeout.
    fn call<T>(
        &self,
        key: &str,
        f: impl std::future::Future<Output = crate::Result<T>>,
    ) -> cbfs_restore::Result<T> {
        let result = match self.timeout {
            None => self.rt.block_on(f),
            Some(t) => match self.rt.block_on(async { tokio::time::timeout(t, f).await }) {
                Ok(r) => r,
                Err(_) => {
                    return Err(RestoreError::Unavailable {
                        store: self.store.describe().to_owned(),
                        key: key.to_owned(),
                        reason: format!("no answer within {} s", t.as_secs_f64()),
                    });
                }
            },
        };
        result.map_err(|e| self.convert(key, e))
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
            .call(prefix, self.store.list(prefix))?
            .into_iter()
            .map(|o| o.key)
            .collect();
        keys.sort();
        Ok(keys)
    }

    fn get(&self, key: &str) -> cbfs_restore::Result<Vec<u8>> {
        let bytes = self.call(key, self.store.get(key))?;
        self.count(bytes.len());
        Ok(bytes.to_vec())
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> cbfs_restore::Result<Vec<u8>> {
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        // Straight into the vector the engine keeps (no second copy).
        let bytes = self.call(key, self.store.get_range_into(key, range, Vec::new()))?;
        self.count(bytes.len());
        Ok(bytes)
    }

    /// On a local directory: the file opened once and every range read
    /// from it (a restore's first pass reads the heads of a segment's
    /// members this way, instead of the whole segment through a reader).
    /// `None` on S3, where each range would be a request of its own.
    fn get_ranges(
        &self,
        key: &str,
        ranges: &[Range<u64>],
    ) -> cbfs_restore::Result<Option<Vec<Vec<u8>>>> {
        if !self.store.is_local() {
            return Ok(None);
        }
        let all = self.call(key, self.store.get_ranges(key, ranges.to_vec()))?;
        self.count(all.len());
        let mut out = Vec::with_capacity(ranges.len());
        let mut at = 0usize;
        for r in ranges {
            let len = usize::try_from(r.end.saturating_sub(r.start)).unwrap_or(usize::MAX);
            let Some(piece) = all.get(at..at.saturating_add(len)) else {
                return Err(RestoreError::Read {
                    key: key.to_owned(),
                    source: std::io::Error::other(format!(
                        "{} bytes read for {} ranges, fewer than asked for",
                        all.len(),
                        ranges.len()
                    )),
                });
            };
            out.push(piece.to_vec());
            at += len;
        }
        Ok(Some(out))
    }

    fn size(&self, key: &str) -> cbfs_restore::Result<u64> {
        match self.call(key, self.store.head(key))? {
            Some(info) => Ok(info.size),
            None => Err(RestoreError::Missing {
                key: key.to_owned(),
            }),
        }
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}
