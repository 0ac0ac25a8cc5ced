//! Where objects come from: the [`ObjectSource`] trait and the local
//! directory store, [`LocalDir`].

use std::fs::File;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A reader that can also seek; what [`ObjectSource::open`] returns.
pub trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

/// Read access to a store's objects, by key (`segments/<id>.tar`, see
/// `cbfs_format::layout`).
///
/// Implementations must report a missing object as [`Error::Missing`] naming
/// the key, and every other failure with the key too. The tiering agent
/// implements this over S3 (ranged GETs behind [`open`](Self::open)).
pub trait ObjectSource {
    /// The keys that start with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// A whole (small) object: a keyset, manifest, summary or lockbox.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// A large object (a segment), read with seeks.
    fn open(&self, key: &str) -> Result<Box<dyn ReadSeek + '_>>;
}

/// A store kept in a local directory, with the layout of `cbfs_format::layout`:
/// the default store kind of the tiering agent.
#[derive(Clone, Debug)]
pub struct LocalDir {
    root: PathBuf,
}

impl LocalDir {
    /// The store in `root`. Fails if it is not a directory.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let meta =
            std::fs::metadata(&root).map_err(|e| Error::read(root.display().to_string(), e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "store {} is not a directory",
                root.display()
            )));
        }
        Ok(LocalDir { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(key
            .split('/')
            .fold(self.root.clone(), |p, part| p.join(part)))
    }
}

/// Accepts the keys a store accepts: relative, `/`-separated parts of ASCII
/// letters, digits, `-`, `_` and `.`, none starting with `.`.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = |reason| Error::BadKey {
        key: key.to_owned(),
        reason,
    };
    if key.is_empty() {
        return Err(bad("it is empty"));
    }
    for part in key.split('/') {
        if part.is_empty() {
            return Err(bad(
                "it has an empty part (leading, trailing or doubled '/')",
            ));
        }
        if part.starts_with('.') {
            return Err(bad("a part starts with '.'"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(bad(
                "only ASCII letters, digits, '-', '_', '.' and '/' are allowed",
            ));
        }
    }
    Ok(())
}

/// Names a store's own bookkeeping uses, never objects: hidden files
/// (partial downloads, the staging area) and `NAME#DIGITS` staging files.
fn is_object_name(name: &str) -> bool {
    if name.starts_with('.') {
        return false;
    }
    let staging = name
        .rsplit_once('#')
        .is_some_and(|(_, s)| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    !staging
}

impl ObjectSource for LocalDir {
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        // Walk the deepest directory the prefix names in full.
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() {
            self.root.clone()
        } else {
            self.path_of(dir_part)?
        };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_owned())];
        while let Some((dir, key_prefix)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::read(format!("{key_prefix}/"), e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| Error::read(format!("{key_prefix}/"), e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !is_object_name(&name) {
                    continue;
                }
                let key = if key_prefix.is_empty() {
                    name
                } else {
                    format!("{key_prefix}/{name}")
                };
                let file_type = entry.file_type().map_err(|e| Error::read(key.clone(), e))?;
                if file_type.is_dir() {
                    if key.starts_with(prefix) || prefix.starts_with(&format!("{key}/")) {
                        stack.push((entry.path(), key));
                    }
                } else if file_type.is_file() && key.starts_with(prefix) && check_key(&key).is_ok()
                {
                    out.push(key);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path_of(key)?;
        std::fs::read(path).map_err(|e| Error::read(key, e))
    }

    fn open(&self, key: &str) -> Result<Box<dyn ReadSeek + '_>> {
        let path = self.path_of(key)?;
        let file = File::open(path).map_err(|e| Error::read(key, e))?;
        Ok(Box::new(std::io::BufReader::with_capacity(
            128 * 1024,
            file,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_objects_and_skips_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("lockboxes/aa")).unwrap();
        std::fs::create_dir_all(root.join("snapshots")).unwrap();
        std::fs::create_dir_all(root.join(".cbfs-staging")).unwrap();
        for f in [
            "lockboxes/aa/g1.lockbox",
            "lockboxes/aa/.g2.lockbox.cbfs-partial-1",
            "lockboxes/aa/g3.lockbox#12",
            "snapshots/1.manifest",
            ".cbfs-staging/x",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        let store = LocalDir::new(root).unwrap();
        assert_eq!(
            store.list("lockboxes/aa/").unwrap(),
            ["lockboxes/aa/g1.lockbox"]
        );
        assert_eq!(
            store.list("lockboxes/").unwrap(),
            ["lockboxes/aa/g1.lockbox"]
        );
        assert_eq!(store.list("snapshots/").unwrap(), ["snapshots/1.manifest"]);
        assert!(store.list("segments/").unwrap().is_empty());
        assert_eq!(store.get("snapshots/1.manifest").unwrap(), b"x");
    }

    #[test]
    fn missing_and_bad_keys_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDir::new(dir.path()).unwrap();
        let err = store.get("segments/nope.tar").unwrap_err();
        assert!(matches!(err, Error::Missing { .. }));
        assert!(err.to_string().contains("segments/nope.tar"), "{err}");
        for key in ["../etc/passwd", "/etc/passwd", "a//b", "a/.hidden", ""] {
            let err = store.get(key).err().unwrap();
            assert!(matches!(err, Error::BadKey { .. }), "{key}: {err}");
        }
    }
}
