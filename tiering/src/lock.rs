//! One writer per index: a lock file that other processes see too.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Held while an agent has its index open for writing; released when
/// dropped (or when the process dies: the lock is the kernel's).
#[derive(Debug)]
pub struct IndexLock {
    _file: File,
    path: PathBuf,
}

/// The lock file's name inside the index directory.
pub const LOCK_FILE: &str = "cbfs.lock";

impl IndexLock {
    /// Takes the lock of the index in `dir`, or fails naming the process
    /// that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io("cannot create index directory", dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("cannot open the index lock", &path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                return Err(Error::Busy {
                    index: dir.to_owned(),
                    holder: if holder.is_empty() {
                        "another process".into()
                    } else {
                        holder.replace('\n', " ")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::io("cannot lock the index", &path, e));
            }
        }
        let cmd = std::fs::read("/proc/self/cmdline")
            .map(|c| {
                c.split(|&b| b == 0)
                    .take(3)
                    .map(|p| String::from_utf8_lossy(p).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let note = format!("process {} ({})\n", std::process::id(), cmd.trim());
        let _ = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(note.as_bytes()))
            .and_then(|()| file.flush());
        Ok(IndexLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = IndexLock::acquire(dir.path()).unwrap();
        let err = IndexLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("process {}", std::process::id())),
            "{err}"
        );
        drop(first);
        IndexLock::acquire(dir.path()).unwrap();
    }
}
