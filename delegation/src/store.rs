//! The node's RocksDB: grants (still sealed for the node), revocations and
//! the nonces of recent requests.
//!
//! | key | value |
//! |---|---|
//! | `grant/<scope>/<user>` | the `SealedGrant` bytes as uploaded: encrypted for the node |
//! | `record/<scope>/<user>` | the delegation record of that grant (public, signed) |
//! | `userkey/<user>` | hex of the user's request-verifying key, from the newest grant |
//! | `revoked/<scope>/<user>` | the latest signed `Revocation` of that (scope, user) |
//! | `revoked-record/<scope>/<user>` | the delegation record of the grant that revocation deleted (public, signed): what the node answers to the same revocation sent again |
//! | `nonce/<user>/<nonce>` | the request's timestamp, 8 bytes big-endian |
//! | `keyset` | the newest keyset the administrator sent (after a rotation) |
//!
//! Scope and user names cannot contain `/` (see `cbfs_core::ScopeLabel`).
//! Grant and revocation writes are synced before the node answers.

use std::path::{Path, PathBuf};

use cbfs_core::{ScopeLabel, UserName};
use rocksdb::{DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::error::{Error, Result};

/// The node's database.
pub struct Store {
    db: DB,
    path: PathBuf,
}

fn grant_key(scope: &ScopeLabel, user: &UserName) -> Vec<u8> {
    format!("grant/{scope}/{user}").into_bytes()
}

fn record_key(scope: &ScopeLabel, user: &UserName) -> Vec<u8> {
    format!("record/{scope}/{user}").into_bytes()
}

fn revoked_record_key(scope: &ScopeLabel, user: &UserName) -> Vec<u8> {
    format!("revoked-record/{scope}/{user}").into_bytes()
}

fn user_key(user: &UserName) -> Vec<u8> {
    format!("userkey/{user}").into_bytes()
}

fn revoked_key(scope: &ScopeLabel, user: &UserName) -> Vec<u8> {
    format!("revoked/{scope}/{user}").into_bytes()
}

fn nonce_key(user: &UserName, nonce: &str) -> Vec<u8> {
    format!("nonce/{user}/{nonce}").into_bytes()
}

impl Store {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        let db = DB::open(&opts, path).map_err(|e| Error::Store {
            path: path.to_path_buf(),
            reason: format!("{e} (is another cbfs-delegation using this data folder?)"),
        })?;
        Ok(Store {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(&self, e: rocksdb::Error) -> Error {
        Error::Store {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    fn synced() -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(true);
        w
    }

    fn scan(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// The keyset the administrator sent, if any.
    pub fn keyset(&self) -> Result<Option<Vec<u8>>> {
        self.db.get(b"keyset").map_err(|e| self.err(e))
    }

    /// Keeps a newer keyset (synced).
    pub fn put_keyset(&self, bytes: &[u8]) -> Result<()> {
        self.db
            .put_opt(b"keyset", bytes, &Self::synced())
            .map_err(|e| self.err(e))
    }

    /// Stores the sealed grant of (scope, user) with its delegation record,
    /// replacing any older one, and remembers the user's verifying key, in
    /// one synced write.
    pub fn put_grant(
        &self,
        scope: &ScopeLabel,
        user: &UserName,
        sealed: &[u8],
        record: &[u8],
        verifying_key: &str,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(grant_key(scope, user), sealed);
        batch.put(record_key(scope, user), record);
        batch.put(user_key(user), verifying_key);
        self.db
            .write_opt(batch, &Self::synced())
            .map_err(|e| self.err(e))
    }

    /// The delegation record of the grant of (scope, user) that a
    /// revocation deleted, if one did.
    pub fn revoked_record(&self, scope: &ScopeLabel, user: &UserName) -> Result<Option<Vec<u8>>> {
        self.db
            .get(revoked_record_key(scope, user))
            .map_err(|e| self.err(e))
    }

    /// Every stored delegation record, with the key it is stored under.
    pub fn records(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .scan(b"record/")?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// Every user key the node learned: (user name, verifying key hex).
    pub fn user_keys(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .scan(b"userkey/")?
            .into_iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(&k["userkey/".len()..]).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            })
            .collect())
    }

    /// Every stored sealed grant, with the key it is stored under.
    pub fn grants(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .scan(b"grant/")?
            .into_iter()
            .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
            .collect())
    }

    /// Records a revocation and deletes the grant of (scope, user) in one
    /// synced write (`delete_grant` false keeps a newer grant). The deleted
    /// grant's delegation record is kept apart (`revoked-record/`), to
    /// answer the same revocation sent again with the terms it revoked.
    pub fn revoke(
        &self,
        scope: &ScopeLabel,
        user: &UserName,
        revocation: &[u8],
        delete_grant: bool,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(revoked_key(scope, user), revocation);
        if delete_grant {
            let record = self
                .db
                .get(record_key(scope, user))
                .map_err(|e| self.err(e))?;
            if let Some(record) = record {
                batch.put(revoked_record_key(scope, user), record);
            }
            batch.delete(grant_key(scope, user));
            batch.delete(record_key(scope, user));
        }
        self.db
            .write_opt(batch, &Self::synced())
            .map_err(|e| self.err(e))
    }

    /// The latest revocation of (scope, user), if any.
    pub fn revocation(&self, scope: &ScopeLabel, user: &UserName) -> Result<Option<Vec<u8>>> {
        self.db
            .get(revoked_key(scope, user))
            .map_err(|e| self.err(e))
    }

    /// Every stored revocation.
    pub fn revocations(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .scan(b"revoked/")?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Records `nonce` of `user` unless it is already there; false if it
    /// was (a replay). The caller serializes calls.
    pub fn record_nonce(&self, user: &UserName, nonce: &str, timestamp: i64) -> Result<bool> {
        let key = nonce_key(user, nonce);
        if self.db.get_pinned(&key).map_err(|e| self.err(e))?.is_some() {
            return Ok(false);
        }
        self.db
            .put_opt(key, timestamp.to_be_bytes(), &Self::synced())
            .map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Forgets nonces of requests made before `before` (seconds since the
    /// epoch): such requests are refused as stale anyway. Returns how many.
    pub fn purge_nonces(&self, before: i64) -> Result<usize> {
        let mut batch = WriteBatch::default();
        let mut n = 0;
        for (k, v) in self.scan(b"nonce/")? {
            let ts = <[u8; 8]>::try_from(v.as_slice())
                .map(i64::from_be_bytes)
                .unwrap_or(i64::MIN);
            if ts < before {
                batch.delete(k);
                n += 1;
            }
        }
        if n > 0 {
            self.db.write(batch).map_err(|e| self.err(e))?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_revocations_and_nonces() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (s, u) = (
            ScopeLabel::new("proj").unwrap(),
            UserName::new("alice").unwrap(),
        );
        let other = UserName::new("bob").unwrap();
        store
            .put_grant(&s, &u, b"sealed-a", b"rec-a", "vk-a")
            .unwrap();
        store
            .put_grant(&s, &other, b"sealed-b", b"rec-b", "vk-b")
            .unwrap();
        assert_eq!(store.grants().unwrap().len(), 2);
        assert_eq!(store.records().unwrap().len(), 2);
        store.revoke(&s, &u, b"rev", true).unwrap();
        assert_eq!(
            store.grants().unwrap(),
            [("grant/proj/bob".to_owned(), b"sealed-b".to_vec())]
        );
        assert_eq!(
            store.records().unwrap(),
            [("record/proj/bob".to_owned(), b"rec-b".to_vec())]
        );
        // The user's key outlives the revoked grant: a revoked user's
        // requests are still authenticated, and refused as revoked.
        assert_eq!(store.user_keys().unwrap().len(), 2);
        assert_eq!(
            store.revocation(&s, &u).unwrap().as_deref(),
            Some(&b"rev"[..])
        );
        assert_eq!(store.revocations().unwrap().len(), 1);
        assert!(store.revocation(&s, &other).unwrap().is_none());

        assert!(store.record_nonce(&u, "n1", 100).unwrap());
        assert!(!store.record_nonce(&u, "n1", 100).unwrap());
        assert!(store.record_nonce(&other, "n1", 100).unwrap());
        assert!(store.record_nonce(&u, "n2", 200).unwrap());
        assert_eq!(store.purge_nonces(150).unwrap(), 2);
        assert!(store.record_nonce(&u, "n1", 300).unwrap());
        assert!(!store.record_nonce(&u, "n2", 300).unwrap());
        drop(store);
        let again = Store::open(dir.path()).unwrap();
        assert_eq!(again.grants().unwrap().len(), 1);
        assert!(
            Store::open(dir.path()).is_err(),
            "a second opener is locked out"
        );
    }
}
