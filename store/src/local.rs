//! Local-file helpers: unique temporary names, clean-up, and flushing the
//! local store's files to disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The local store's staging area for large uploads, under its root. Keys
/// never start with `.`, so it can collide with no object, and listings skip it.
pub(crate) const STAGING_DIR: &str = ".cbfs-staging";

/// A name no other process or thread is using right now.
pub(crate) fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos:x}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh temporary path in the same directory as `path`.
pub(crate) fn sibling_temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".cbfs-partial-{}", unique_name()));
    Some(path.with_file_name(tmp))
}

/// Removes a file when dropped, unless disarmed.
pub(crate) struct RemoveOnDrop(Option<PathBuf>);

impl RemoveOnDrop {
    pub(crate) fn new(path: PathBuf) -> RemoveOnDrop {
        RemoveOnDrop(Some(path))
    }

    pub(crate) fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Flushes the file at `path` and every directory from its parent up to
/// `root` to disk, so that a written object survives a power cut.
pub(crate) fn sync_path(root: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::File::open(path)?.sync_all()?;
    let mut dir = path.parent();
    while let Some(d) = dir {
        std::fs::File::open(d)?.sync_all()?;
        if d == root || !d.starts_with(root) {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Whether a file name is a leftover of an interrupted write: an
/// `object_store` staging file (`NAME#DIGITS`) or one of our partial downloads.
pub(crate) fn is_leftover_name(name: &str) -> bool {
    name.rsplit_once('#')
        .is_some_and(|(_, suffix)| !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit()))
}

/// Removes, under `root`, the leftovers of interrupted writes that are older
/// than `cutoff`: everything in the staging area, and `object_store` staging
/// files (`NAME#DIGITS`) anywhere. Returns how many files went.
pub(crate) fn sweep(root: &Path, cutoff: SystemTime) -> std::io::Result<usize> {
    fn walk(
        dir: &Path,
        in_staging: bool,
        cutoff: SystemTime,
        n: &mut usize,
    ) -> std::io::Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let meta = entry.metadata()?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if meta.is_dir() {
                walk(&entry.path(), in_staging || name == STAGING_DIR, cutoff, n)?;
            } else if meta.is_file()
                && (in_staging || is_leftover_name(&name))
                && meta.modified()? < cutoff
            {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => *n += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
    let mut n = 0;
    walk(root, false, cutoff, &mut n)?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_temp_paths_are_siblings() {
        assert_ne!(unique_name(), unique_name());
        let tmp = sibling_temp_path(Path::new("/a/b/file.tar")).unwrap();
        assert_eq!(tmp.parent(), Some(Path::new("/a/b")));
        let name = tmp.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with(".file.tar.cbfs-partial-"), "{name}");
        assert!(sibling_temp_path(Path::new("/")).is_none());
    }

    #[test]
    fn remove_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"x").unwrap();
        drop(RemoveOnDrop::new(a.clone()));
        RemoveOnDrop::new(b.clone()).disarm();
        assert!(!a.exists());
        assert!(b.exists());
        sync_path(dir.path(), &b).unwrap();
    }
}
