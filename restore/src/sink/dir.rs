//! Restoring straight into a directory.
//!
//! Parents are created one component at a time and must be real directories
//! (never a symbolic link, even one this restore created); files are written
//! as unnamed files (`O_TMPFILE`, on Linux) or else under a temporary name
//! with `O_CREAT|O_EXCL|O_NOFOLLOW`, and linked into place only once they
//! authenticated; nothing existing is overwritten. An unnamed file that
//! fails, or a restore that is killed, leaves nothing behind.
//! Directory modes and times are set last, deepest first. The checks are
//! made against the file system as it is, so do not restore into a
//! directory that other users can write to while the restore runs.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cbfs_format::{EntryKind, Metadata};

use super::Sink;
use crate::error::{Error, Result, lossy};
use crate::paths::{ancestors, check_member_path};

/// Content pieces from this size on bypass the file's write buffer.
const DIRECT_WRITE: usize = 32 * 1024;

struct Pending {
    meta: Metadata,
    /// The temporary name, or `None` for an unnamed (`O_TMPFILE`) file.
    temp: Option<PathBuf>,
    dest: PathBuf,
    file: BufWriter<File>,
}

/// Writes restored entries into a destination directory.
pub struct DirSink {
    root: PathBuf,
    pending: Option<Pending>,
    dirs: Vec<(PathBuf, Metadata)>,
    warnings: Vec<String>,
    owner_failures: u64,
    /// Entries whose setuid, setgid or sticky bit was dropped because
    /// their owner could not be set.
    special_cleared: u64,
    /// Parents already found to be real directories in this restore: each
    /// is checked once, not once per file under it.
    checked_dirs: std::cell::RefCell<std::collections::HashSet<Vec<u8>>>,
    /// Files can be created unnamed and linked in through `/proc/self/fd`.
    unnamed: bool,
}

impl DirSink {
    /// Restores into `root`, creating it if needed. It may exist, but nothing
    /// in it is overwritten.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| out_err(&root, e))?;
        let meta = fs::metadata(&root).map_err(|e| out_err(&root, e))?;
        if !meta.is_dir() {
            return Err(Error::Usage(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        Ok(DirSink {
            root,
            pending: None,
            dirs: Vec::new(),
            warnings: Vec::new(),
            owner_failures: 0,
            special_cleared: 0,
            checked_dirs: Default::default(),
            unnamed: cfg!(target_os = "linux") && Path::new("/proc/self/fd").is_dir(),
        })
    }

    /// The destination directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn join(&self, rel: &[u8]) -> Result<PathBuf> {
        check_member_path(rel).map_err(|r| Error::unsafe_path("path", rel, r))?;
        Ok(self.root.join(os_path(rel)?))
    }

    /// Makes sure every parent of `rel` is a real directory, creating the
    /// missing ones; never follows a symbolic link.
    fn parents(&self, rel: &[u8], create: bool) -> Result<()> {
        for parent in ancestors(rel) {
            if self.checked_dirs.borrow().contains(parent) {
                continue;
            }
            let p = self.join(parent)?;
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {
                    self.checked_dirs.borrow_mut().insert(parent.to_vec());
                }
                Ok(_) => {
                    return Err(Error::unsafe_path(
                        "path",
                        rel,
                        format!(
                            "its parent {} exists and is not a directory (a symbolic link?)",
                            lossy(parent)
                        ),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&p).map_err(|e| out_err(&p, e))?;
                    self.checked_dirs.borrow_mut().insert(parent.to_vec());
                }
                Err(e) => return Err(out_err(&p, e)),
            }
        }
        Ok(())
    }

    fn refuse_existing(&self, rel: &[u8], dest: &Path) -> Result<()> {
        match fs::symlink_metadata(dest) {
            Ok(_) => Err(Error::Output {
                target: lossy(rel),
                source: io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it already exists; not overwritten",
                ),
                fatal: false,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(out_err(dest, e)),
        }
    }

    fn note_owner(&mut self, result: io::Result<()>) {
        if result.is_err() {
            self.owner_failures += 1;
        }
    }

    fn set_xattrs(&mut self, meta: &Metadata, result: impl Fn(&[u8], &[u8]) -> io::Result<()>) {
        for (name, value) in &meta.xattrs {
            if let Err(e) = result(name, value) {
                self.warnings.push(format!(
                    "{}: xattr {} not set: {e}",
                    lossy(&meta.path),
                    lossy(name)
                ));
            }
        }
    }
}

fn out_err(path: &Path, source: io::Error) -> Error {
    Error::Output {
        target: path.display().to_string(),
        source,
        fatal: false,
    }
}

#[cfg(unix)]
fn os_path(rel: &[u8]) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(rel)))
}

#[cfg(not(unix))]
fn os_path(rel: &[u8]) -> Result<PathBuf> {
    match std::str::from_utf8(rel) {
        Ok(s) => Ok(PathBuf::from(s)),
        Err(_) => Err(Error::Unsupported {
            path: lossy(rel),
            reason: "a name that is not UTF-8 cannot be created on this system".into(),
        }),
    }
}

fn temp_name(dest: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".cbfs-recover-{}-{n}.partial", std::process::id()))
}

fn system_time(meta: &Metadata) -> Option<std::time::SystemTime> {
    let t = meta.mtime;
    let base = std::time::UNIX_EPOCH;
    if t.secs >= 0 {
        base.checked_add(std::time::Duration::new(t.secs as u64, t.nanos))
    } else {
        base.checked_sub(std::time::Duration::from_secs(t.secs.unsigned_abs()))?
            .checked_add(std::time::Duration::from_nanos(u64::from(t.nanos)))
    }
}

/// Applies owner, mode, xattrs and time to an open file or directory.
fn apply(sink: &mut DirSink, file: &File, meta: &Metadata) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let st = file.metadata()?;
        let mut owned = true;
        if st.uid() != meta.uid || st.gid() != meta.gid {
            let r = std::os::unix::fs::fchown(file, Some(meta.uid), Some(meta.gid));
            owned = r.is_ok();
            sink.note_owner(r);
        }
        // As tar without -p: a file whose owner could not be set does not
        // keep setuid, setgid or sticky, which would grant the restoring
        // user's rights under another's name.
        let mode = if owned {
            meta.mode
        } else {
            meta.mode & !0o7000
        };
        if mode != meta.mode {
            sink.special_cleared += 1;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        sink.set_xattrs(meta, |name, value| {
            use std::os::unix::ffi::OsStrExt;
            xattr::FileExt::set_xattr(file, std::ffi::OsStr::from_bytes(name), value)
        });
    }
    #[cfg(not(unix))]
    {
        let mut perms = file.metadata()?.permissions();
        perms.set_readonly(meta.mode & 0o222 == 0);
        file.set_permissions(perms)?;
        if !meta.xattrs.is_empty() {
            sink.warnings.push(format!(
                "{}: xattrs are not restored on this system",
                lossy(&meta.path)
            ));
        }
    }
    if let Some(t) = system_time(meta) {
        file.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))?;
    }
    Ok(())
}

fn open_new(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    opts.open(path)
}

fn open_dir_nofollow(path: &Path) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY);
    }
    opts.open(path)
}

/// Creates the file for `dest`: unnamed in its directory when the system
/// can, else under a temporary name beside it.
fn create_temp(dest: &Path, unnamed: bool) -> io::Result<(File, Option<PathBuf>)> {
    #[cfg(target_os = "linux")]
    if unnamed && let Some(dir) = dest.parent() {
        use std::os::unix::fs::OpenOptionsExt;
        let opened = OpenOptions::new()
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_TMPFILE)
            .open(dir);
        match opened {
            Ok(f) => return Ok((f, None)),
            // The file system cannot: a named temporary file, then.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
                ) => {}
            Err(e) => return Err(e),
        }
    }
    let _ = unnamed;
    let temp = temp_name(dest);
    open_new(&temp).map(|f| (f, Some(temp)))
}

/// Links an unnamed file in at `dest`; fails if the name exists.
#[cfg(target_os = "linux")]
fn place_unnamed(file: &File, dest: &Path) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, linkat};
    use std::os::unix::io::AsRawFd;
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(CWD, from.as_str(), CWD, dest, AtFlags::SYMLINK_FOLLOW).map_err(io::Error::from)
}

#[cfg(not(target_os = "linux"))]
fn place_unnamed(_file: &File, _dest: &Path) -> io::Result<()> {
    Err(io::Error::other("unnamed files are only made on Linux"))
}

/// Puts the finished temporary file in place without ever replacing an
/// existing entry: a hard link fails if the name exists.
fn place(temp: &Path, dest: &Path) -> io::Result<()> {
    match fs::hard_link(temp, dest) {
        Ok(()) => fs::remove_file(temp),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
        Err(_) => {
            // File systems without hard links: check, then rename.
            if fs::symlink_metadata(dest).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "it already exists",
                ));
            }
            fs::rename(temp, dest)
        }
    }
}

impl Sink for DirSink {
    fn begin_file(&mut self, meta: &Metadata) -> Result<()> {
        self.abort_file();
        let dest = self.join(&meta.path)?;
        self.parents(&meta.path, true)?;
        self.refuse_existing(&meta.path, &dest)?;
        let (file, temp) = create_temp(&dest, self.unnamed).map_err(|e| out_err(&dest, e))?;
        self.pending = Some(Pending {
            meta: meta.clone(),
            temp,
            dest,
            file: BufWriter::with_capacity(256 * 1024, file),
        });
        Ok(())
    }

    fn write_content(&mut self, data: &[u8]) -> Result<()> {
        let Some(p) = self.pending.as_mut() else {
            return Err(Error::Usage("write_content without begin_file".into()));
        };
        if data.len() >= DIRECT_WRITE {
            // Whole pieces of a large file go straight to it: copying them
            // through the buffer first showed in the profile.
            p.file
                .flush()
                .and_then(|()| p.file.get_mut().write_all(data))
                .map_err(|e| out_err(&p.dest, e))
        } else {
            p.file.write_all(data).map_err(|e| out_err(&p.dest, e))
        }
    }

    fn commit_file(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Err(Error::Usage("commit_file without begin_file".into()));
        };
        let Pending {
            meta,
            temp,
            dest,
            file,
        } = p;
        let result = file
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| apply(self, &f, &meta).map(|()| f))
            .and_then(|f| match &temp {
                Some(temp) => place(temp, &dest),
                None => place_unnamed(&f, &dest),
            });
        if let Err(e) = result {
            if let Some(temp) = &temp {
                let _ = fs::remove_file(temp);
            }
            return Err(Error::Output {
                target: lossy(&meta.path),
                source: e,
                fatal: false,
            });
        }
        Ok(())
    }

    fn abort_file(&mut self) {
        if let Some(p) = self.pending.take() {
            drop(p.file);
            if let Some(temp) = &p.temp {
                let _ = fs::remove_file(temp);
            }
        }
    }

    fn add_entry(&mut self, meta: &Metadata) -> Result<()> {
        if meta.kind == EntryKind::File {
            self.begin_file(meta)?;
            return self.commit_file();
        }
        let dest = self.join(&meta.path)?;
        self.parents(&meta.path, true)?;
        let fail = |e: io::Error| Error::Output {
            target: lossy(&meta.path),
            source: e,
            fatal: false,
        };
        match &meta.kind {
            EntryKind::Dir => {
                match fs::symlink_metadata(&dest) {
                    // Made earlier as the parent of an entry.
                    Ok(m) if m.file_type().is_dir() => {}
                    Ok(_) => self.refuse_existing(&meta.path, &dest)?,
                    Err(_) => fs::create_dir(&dest).map_err(fail)?,
                }
                self.dirs.push((dest, meta.clone()));
                Ok(())
            }
            EntryKind::Symlink { target } => {
                self.refuse_existing(&meta.path, &dest)?;
                make_symlink(self, target, &dest, meta).map_err(fail)
            }
            EntryKind::Hardlink { target } => {
                self.refuse_existing(&meta.path, &dest)?;
                let src = self.join(target)?;
                self.parents(target, false)?;
                fs::hard_link(&src, &dest).map_err(fail)
            }
            EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. } | EntryKind::Fifo => {
                Err(Error::Unsupported {
                    path: lossy(&meta.path),
                    reason: "directory output does not create devices or fifos; \
                             restore to a tar (-o) and extract it with tar"
                        .into(),
                })
            }
            EntryKind::File => unreachable!("handled above"),
        }
    }

    fn finish(&mut self) -> Result<()> {
        self.abort_file();
        let mut dirs = std::mem::take(&mut self.dirs);
        // Deepest first, so that setting a parent's time comes after its children.
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        for (path, meta) in dirs {
            let result = open_dir_nofollow(&path).and_then(|f| apply(self, &f, &meta));
            if let Err(e) = result {
                self.warnings.push(format!(
                    "{}: directory mode, owner or time not set: {e}",
                    lossy(&meta.path)
                ));
            }
        }
        if self.owner_failures > 0 {
            self.warnings.push(format!(
                "the owner of {} entr{} could not be set (not running as root?)",
                self.owner_failures,
                if self.owner_failures == 1 { "y" } else { "ies" }
            ));
            self.owner_failures = 0;
        }
        if self.special_cleared > 0 {
            self.warnings.push(format!(
                "{} entr{} lost the setuid, setgid or sticky bit, because the owner \
                 could not be set",
                self.special_cleared,
                if self.special_cleared == 1 {
                    "y"
                } else {
                    "ies"
                }
            ));
            self.special_cleared = 0;
        }
        Ok(())
    }

    fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }
}

#[cfg(unix)]
fn make_symlink(sink: &mut DirSink, target: &[u8], dest: &Path, meta: &Metadata) -> io::Result<()> {
    std::os::unix::fs::symlink(os_path(target).map_err(io::Error::other)?, dest)?;
    let r = std::os::unix::fs::lchown(dest, Some(meta.uid), Some(meta.gid));
    if r.is_err() {
        sink.note_owner(r);
    }
    sink.set_xattrs(meta, |name, value| {
        use std::os::unix::ffi::OsStrExt;
        // The xattr crate acts on the link itself (lsetxattr).
        xattr::set(dest, std::ffi::OsStr::from_bytes(name), value)
    });
    // std cannot set a symbolic link's own time without unsafe code; the
    // tar output carries it.
    Ok(())
}

#[cfg(not(unix))]
fn make_symlink(
    _sink: &mut DirSink,
    _target: &[u8],
    _dest: &Path,
    meta: &Metadata,
) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!(
            "{}: symbolic links are restored to directories on Unix only; use tar output",
            lossy(&meta.path)
        ),
    ))
}
