//! A scratch directory per test.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// Environment variable: when set (to anything but `0`), [`Workdir`]s are
/// kept after the test, and their paths printed, for a look afterwards.
pub const KEEP_WORKDIR_ENV: &str = "CBFS_TEST_KEEP";

/// A temporary directory for one test, removed when dropped (unless
/// `CBFS_TEST_KEEP` is set).
#[derive(Debug)]
pub struct Workdir {
    dir: TempDir,
}

impl Workdir {
    /// A fresh, empty directory `cbfs-test-*` under the system temporary
    /// directory.
    pub fn new() -> Workdir {
        let dir = tempfile::Builder::new()
            .prefix("cbfs-test-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        Workdir { dir }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the directory (which need not exist yet).
    pub fn path(&self, name: impl AsRef<Path>) -> PathBuf {
        let name = name.as_ref();
        assert!(
            name.is_relative(),
            "Workdir::path wants a relative path, got {}",
            name.display()
        );
        self.dir.path().join(name)
    }

    /// Creates the directory `name` (and its parents) and returns its path.
    pub fn mkdir(&self, name: impl AsRef<Path>) -> PathBuf {
        let path = self.path(name);
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// Writes `contents` to `name`, creating parent directories, and returns
    /// the path.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        self.create_parent(&path);
        fs::write(&path, contents)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Writes `contents` to `name` readable and writable by the owner only
    /// (mode 0600), as the key files cbfs accepts must be. Returns the path.
    pub fn write_private(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.path(name);
        self.create_parent(&path);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        // An existing file keeps its mode on open; set it in any case.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
        file.write_all(contents.as_ref())
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// The contents of `name`.
    pub fn read(&self, name: impl AsRef<Path>) -> Vec<u8> {
        let path = self.path(name);
        fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
    }

    fn create_parent(&self, path: &Path) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", parent.display()));
        }
    }
}

impl Default for Workdir {
    fn default() -> Self {
        Workdir::new()
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let keep = std::env::var_os(KEEP_WORKDIR_ENV).is_some_and(|v| v != "0");
        if keep {
            self.dir.disable_cleanup(true);
            eprintln!("{KEEP_WORKDIR_ENV}: keeping {}", self.dir.path().display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_land_inside_and_private_ones_are_0600() {
        let work = Workdir::new();
        let plain = work.write("a/b.txt", "hello");
        assert!(plain.starts_with(work.root()));
        assert_eq!(work.read("a/b.txt"), b"hello");
        // An existing, world-readable file is made private too.
        let existing = work.write("keys/admin.key", "old");
        fs::set_permissions(&existing, fs::Permissions::from_mode(0o644)).unwrap();
        let key = work.write_private("keys/admin.key", [1u8; 32]);
        assert_eq!(work.read("keys/admin.key"), [1u8; 32]);
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let root = work.root().to_path_buf();
        drop(work);
        assert!(!root.exists() || std::env::var_os(KEEP_WORKDIR_ENV).is_some());
    }

    #[test]
    #[should_panic(expected = "relative path")]
    fn absolute_paths_are_refused() {
        Workdir::new().path("/etc/passwd");
    }
}
