//! Reading the source tree without a symlink or FIFO race.
//!
//! The agent usually runs as root, and the tree belongs to its users. A user
//! who swaps a file for a symbolic link between the scan and the read would
//! get whatever the link points at (`/etc/shadow`) archived into their own
//! scope; a FIFO swapped in would hang a worker. So every entry is opened
//! relative to the tree's root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)` (no symbolic link anywhere on the way, nothing
//! outside the root) and `O_NOFOLLOW | O_NONBLOCK | O_NOCTTY`, and what was
//! opened is compared with what the scan saw (device, inode, type) before a
//! byte is read. On kernels without `openat2` (before 5.6) the path is
//! walked one component at a time with `O_NOFOLLOW`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};

use crate::scan::Stat;

/// The tree being tiered out, held open by its root.
pub struct SourceTree {
    root: OwnedFd,
    /// Whether the kernel has `openat2`; cleared on the first `ENOSYS`.
    openat2: AtomicBool,
    /// The prefix the tree's paths carry in the index (`PREFIX/`), if any:
    /// it is taken off before a path is opened.
    prefix: Option<Vec<u8>>,
}

/// Why an entry could not be opened as the scan saw it.
#[derive(Debug)]
pub enum OpenError {
    /// It is no longer what the scan found (another inode, another type, a
    /// symbolic link on the way): changed while read, retried next run.
    Changed(String),
    /// It could not be opened at all.
    Io(io::Error),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Changed(why) => write!(f, "changed while read: {why}"),
            OpenError::Io(e) => write!(f, "{e}"),
        }
    }
}

fn flags() -> OFlags {
    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC
}

impl SourceTree {
    /// Opens the tree at `root`.
    pub fn open(root: &Path) -> io::Result<Self> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(SourceTree {
            root: fd,
            openat2: AtomicBool::new(true),
            prefix: None,
        })
    }

    /// The tree whose entries are named `prefix/...` in the index.
    pub fn with_prefix(mut self, prefix: Option<&[u8]>) -> Self {
        self.prefix = prefix.map(|p| {
            let mut p = p.to_vec();
            p.push(b'/');
            p
        });
        self
    }

    /// A path of the index as a path inside the tree.
    fn local<'r>(&self, rel: &'r [u8]) -> io::Result<&'r [u8]> {
        match &self.prefix {
            None => Ok(rel),
            Some(p) => rel.strip_prefix(p.as_slice()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "not a path below the prefix")
            }),
        }
    }

    fn open_beneath(&self, rel: &[u8], oflags: OFlags) -> io::Result<OwnedFd> {
        if rel.is_empty() || rel.starts_with(b"/") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a path inside the tree",
            ));
        }
        if self.openat2.load(Ordering::Relaxed) {
            match rustix::fs::openat2(
                &self.root,
                OsStr::from_bytes(rel),
                oflags,
                Mode::empty(),
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
            ) {
                Err(rustix::io::Errno::NOSYS) => self.openat2.store(false, Ordering::Relaxed),
                Err(rustix::io::Errno::AGAIN) => {
                    // The kernel asks to retry when a rename raced with the
                    // lookup; once more, then the slow path.
                    if let Ok(fd) = rustix::fs::openat2(
                        &self.root,
                        OsStr::from_bytes(rel),
                        oflags,
                        Mode::empty(),
                        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
                    ) {
                        return Ok(fd);
                    }
                }
                other => return other.map_err(io::Error::from),
            }
        }
        self.open_by_components(rel, oflags)
    }

    /// The fallback: each directory on the way opened with `O_NOFOLLOW |
    /// O_DIRECTORY` relative to the one before; `..` and `.` are refused.
    fn open_by_components(&self, rel: &[u8], oflags: OFlags) -> io::Result<OwnedFd> {
        let parts: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        let mut dir: Option<OwnedFd> = None;
        for (i, part) in parts.iter().enumerate() {
            if part.is_empty() || *part == b"." || *part == b".." {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain path inside the tree",
                ));
            }
            let last = i + 1 == parts.len();
            let how = if last {
                oflags
            } else {
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
            };
            let base = dir.as_ref().unwrap_or(&self.root);
            let fd = rustix::fs::openat(base, OsStr::from_bytes(part), how, Mode::empty())?;
            dir = Some(fd);
        }
        dir.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty path"))
    }

    /// Opens the entry `rel` (a regular file or a directory) for reading and
    /// checks it is the one the scan found: same device, inode and type.
    /// It is first opened as a path only (`O_PATH`), so that a FIFO or a
    /// device swapped in is never opened at all; only the entry that passed
    /// the check is then opened for reading, through its descriptor.
    pub fn open_checked(&self, rel: &[u8], scanned: &Stat) -> Result<File, OpenError> {
        let rel = self.local(rel).map_err(OpenError::Io)?;
        let mut how = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if scanned.file_type() == libc::S_IFDIR {
            how |= OFlags::DIRECTORY;
        }
        // A symbolic link where the scan saw none (on the way or at the end).
        let handle = self
            .open_beneath(rel, how)
            .map_err(|e| in_the_way(e, "a symbolic link or another kind of entry is in the way"))?;
        let st = rustix::fs::fstat(&handle).map_err(|e| OpenError::Io(e.into()))?;
        if !is_seen(&st, scanned) {
            return Err(OpenError::Changed(format!(
                "another entry is at this path now (inode {}, the scan saw inode {})",
                st.st_ino, scanned.ino
            )));
        }
        if scanned.file_type() != libc::S_IFREG && scanned.file_type() != libc::S_IFDIR {
            return Err(OpenError::Changed(
                "only files and directories are opened".into(),
            ));
        }
        // The very inode that passed, opened for reading through its handle.
        let via =
            Path::new("/proc/self/fd").join(std::os::fd::AsRawFd::as_raw_fd(&handle).to_string());
        let file = match std::os::unix::fs::OpenOptionsExt::custom_flags(
            std::fs::OpenOptions::new().read(true),
            libc::O_NONBLOCK | libc::O_NOCTTY,
        )
        .open(&via)
        {
            Ok(f) => f,
            // No /proc: open beneath the root again, and check again below.
            Err(_) => File::from(self.open_beneath(rel, flags()).map_err(OpenError::Io)?),
        };
        let meta = file.metadata().map_err(OpenError::Io)?;
        check_same(&meta, scanned)?;
        Ok(file)
    }

    /// Opens `rel` (a path of the tree itself, without the prefix) as a
    /// path only: beneath the root, with no symbolic link on the way or at
    /// the end. Opening a path raises no fault-in event.
    pub(crate) fn open_path_beneath(&self, rel: &[u8]) -> io::Result<OwnedFd> {
        self.open_beneath(rel, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC)
    }

    /// Opens the directory `rel` for listing: a path inside the tree as the
    /// walk names it (without the index's prefix; empty for the root),
    /// opened beneath the root with no symbolic link on the way and
    /// `O_NOFOLLOW | O_NONBLOCK`, and checked to be the directory `seen`
    /// describes (what the listing of its parent found: device, inode and
    /// type). A directory swapped for a link, or for another directory, is
    /// [`OpenError::Changed`]: never listed.
    pub fn open_dir(&self, rel: &[u8], seen: Option<&Stat>) -> Result<OwnedFd, OpenError> {
        let how = OFlags::RDONLY
            | OFlags::DIRECTORY
            | OFlags::NOFOLLOW
            | OFlags::NONBLOCK
            | OFlags::CLOEXEC;
        let fd = if rel.is_empty() {
            rustix::fs::openat(&self.root, ".", how, Mode::empty()).map_err(io::Error::from)
        } else {
            self.open_beneath(rel, how)
        }
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => {
                OpenError::Changed("the directory the listing found is gone".into())
            }
            _ => in_the_way(
                e,
                "a symbolic link or another kind of entry is where the listing found a directory",
            ),
        })?;
        if let Some(seen) = seen {
            let st = rustix::fs::fstat(&fd).map_err(|e| OpenError::Io(e.into()))?;
            if !is_seen(&st, seen) {
                return Err(OpenError::Changed(format!(
                    "another directory is at this path now (inode {} on device {}, the listing found inode {} on {})",
                    st.st_ino, st.st_dev, seen.ino, seen.dev
                )));
            }
        }
        Ok(fd)
    }

    /// A symbolic link's target, read through its directory (opened beneath
    /// the root with no symbolic link on the way), after checking the link
    /// is the one the scan found.
    pub fn read_link(&self, rel: &[u8], scanned: &Stat) -> Result<Vec<u8>, OpenError> {
        let rel = self.local(rel).map_err(OpenError::Io)?;
        let (dir, name) = self.parent_of(rel)?;
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| OpenError::Io(e.into()))?;
        if !is_seen(&st, scanned) {
            return Err(OpenError::Changed(
                "it is no longer the symbolic link the scan found".into(),
            ));
        }
        let target =
            rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(|e| OpenError::Io(e.into()))?;
        Ok(target.into_bytes())
    }

    /// The extended attributes of an entry that is not opened for reading
    /// (a symbolic link, a device, a FIFO): listed through its directory's
    /// descriptor, never following a link.
    pub fn xattrs_beside(
        &self,
        rel: &[u8],
    ) -> io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
        let rel = self.local(rel)?;
        let (dir, name) = self.parent_of(rel).map_err(|e| match e {
            OpenError::Io(e) => e,
            OpenError::Changed(why) => io::Error::other(why),
        })?;
        let path = Path::new("/proc/self/fd")
            .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
            .join(OsStr::from_bytes(name));
        crate::scan::read_xattrs(&path)
    }

    fn parent_of<'r>(&self, rel: &'r [u8]) -> Result<(OwnedFd, &'r [u8]), OpenError> {
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let how = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = if parent.is_empty() {
            rustix::fs::openat(&self.root, ".", how, Mode::empty())
                .map_err(|e| OpenError::Io(e.into()))?
        } else {
            self.open_beneath(parent, how)
                .map_err(|e| in_the_way(e, "a symbolic link is on the way"))?
        };
        Ok((dir, name))
    }
}

/// Why an open beneath the root failed: [`OpenError::Changed`] (saying
/// `why`) when a symbolic link or another kind of entry was in the way,
/// where the scan found none.
fn in_the_way(e: io::Error, why: &str) -> OpenError {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::EXDEV) | Some(libc::ENOTDIR) => {
            OpenError::Changed(why.into())
        }
        _ => OpenError::Io(e),
    }
}

/// Whether `st` (of an entry opened or stated just now) is the entry the
/// scan found: the same device, inode and type.
fn is_seen(st: &rustix::fs::Stat, seen: &Stat) -> bool {
    st.st_dev == seen.dev
        && st.st_ino == seen.ino
        && (st.st_mode & libc::S_IFMT) == seen.file_type()
}

/// Fails unless `meta` (of what was opened) is the entry the scan found.
pub fn check_same(meta: &std::fs::Metadata, scanned: &Stat) -> Result<(), OpenError> {
    if meta.dev() != scanned.dev || meta.ino() != scanned.ino {
        return Err(OpenError::Changed(format!(
            "another file is at this path now (inode {} on device {}, the scan saw inode {} on {})",
            meta.ino(),
            meta.dev(),
            scanned.ino,
            scanned.dev
        )));
    }
    if meta.mode() & libc::S_IFMT != scanned.file_type() {
        return Err(OpenError::Changed(
            "it is another kind of entry than the scan found".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(p: &Path) -> Stat {
        Stat::from_metadata(&std::fs::symlink_metadata(p).unwrap())
    }

    #[test]
    fn opens_what_the_scan_saw_and_refuses_links_and_swaps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), b"inside").unwrap();
        std::fs::write(dir.path().join("secret"), b"outside").unwrap();
        let tree = SourceTree::open(&root).unwrap();
        let st = stat(&root.join("d/f"));
        let mut f = tree.open_checked(b"d/f", &st).unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut f, &mut s).unwrap();
        assert_eq!(s, "inside");

        // Swapped for a symbolic link to a file outside the tree.
        std::fs::rename(root.join("d/f"), root.join("d/f.old")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("d/f")).unwrap();
        assert!(matches!(
            tree.open_checked(b"d/f", &st),
            Err(OpenError::Changed(_))
        ));
        // A directory on the way swapped for a link.
        std::fs::rename(root.join("d"), root.join("d.old")).unwrap();
        std::os::unix::fs::symlink(dir.path(), root.join("d")).unwrap();
        let outside = stat(&dir.path().join("secret"));
        assert!(matches!(
            tree.open_checked(b"d/secret", &outside),
            Err(OpenError::Changed(_))
        ));
        // The slow path refuses the same.
        assert!(tree.open_by_components(b"d/secret", flags()).is_err());
        assert!(tree.open_by_components(b"../secret", flags()).is_err());

        // A FIFO where a file was: opening does not block, and it is refused.
        std::fs::create_dir_all(root.join("p")).unwrap();
        std::fs::write(root.join("p/x"), b"x").unwrap();
        let st = stat(&root.join("p/x"));
        std::fs::rename(root.join("p/x"), root.join("p/x.old")).unwrap();
        let status = std::process::Command::new("mkfifo")
            .arg(root.join("p/x"))
            .status()
            .unwrap();
        assert!(status.success());
        assert!(matches!(
            tree.open_checked(b"p/x", &st),
            Err(OpenError::Changed(_))
        ));
    }

    #[test]
    fn reads_a_link_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("../elsewhere", root.join("d/l")).unwrap();
        let tree = SourceTree::open(root).unwrap();
        let st = stat(&root.join("d/l"));
        assert_eq!(tree.read_link(b"d/l", &st).unwrap(), b"../elsewhere");
        // Kept under another name, so that the new link gets another inode.
        std::fs::rename(root.join("d/l"), root.join("d/l.old")).unwrap();
        std::os::unix::fs::symlink("other", root.join("d/l")).unwrap();
        assert!(matches!(
            tree.read_link(b"d/l", &st),
            Err(OpenError::Changed(_))
        ));
        let xattrs = tree.xattrs_beside(b"d/l").unwrap();
        assert!(xattrs.is_empty());
    }
}
