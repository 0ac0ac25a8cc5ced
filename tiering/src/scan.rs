//! Walking the source tree.
//!
//! The walk is sorted by name, never follows symbolic links, and reports
//! entries it cannot read instead of stopping.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cbfs_format::{EntryKind, Metadata, Timestamp};
use serde::{Deserialize, Serialize};

/// What `lstat` says of an entry, as far as change detection needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// Full `st_mode`, type bits included.
    pub mode: u32,
    /// Hard link count.
    pub nlink: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Modification time, nanoseconds.
    pub mtime_ns: u32,
    /// Status change time, seconds.
    pub ctime: i64,
    /// Status change time, nanoseconds.
    pub ctime_ns: u32,
    /// Device number, for device files.
    pub rdev: u64,
}

impl Stat {
    /// From `std::fs::symlink_metadata`.
    pub fn from_metadata(m: &std::fs::Metadata) -> Self {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_ns: m.mtime_nsec() as u32,
            ctime: m.ctime(),
            ctime_ns: m.ctime_nsec() as u32,
            rdev: m.rdev(),
        }
    }

    /// The file type bits.
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// Whether this is a regular file.
    pub fn is_file(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    /// Whether content or metadata may have changed between two stats.
    pub fn same_version(&self, other: &Stat) -> bool {
        self == other
    }
}

/// One entry of the tree.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Path relative to the root, `/`-separated raw bytes.
    pub rel: Vec<u8>,
    /// Absolute path.
    pub abs: PathBuf,
    /// Its stat.
    pub stat: Stat,
}

/// Something the walk could not read.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// The path, lossily as text.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

/// Walks `root` (excluding the root itself), calling `entry` for each entry
/// in sorted order.
pub fn walk(root: &Path, mut entry: impl FnMut(Entry), mut problem: impl FnMut(Problem)) {
    let walker = walkdir::WalkDir::new(root)
        .follow_links(false)
        .min_depth(1)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()));
    for item in walker {
        match item {
            Ok(e) => {
                let rel = match e.path().strip_prefix(root) {
                    Ok(r) => r.as_os_str().as_bytes().to_vec(),
                    Err(_) => continue,
                };
                match std::fs::symlink_metadata(e.path()) {
                    Ok(m) => entry(Entry {
                        rel,
                        abs: e.path().to_owned(),
                        stat: Stat::from_metadata(&m),
                    }),
                    Err(err) => problem(Problem {
                        path: e.path().display().to_string(),
                        reason: err.to_string(),
                    }),
                }
            }
            Err(err) => problem(Problem {
                path: err
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: err.to_string(),
            }),
        }
    }
}

/// Looks up user and group names, remembering them.
#[derive(Default)]
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    /// The user name of `uid`, or "" if none.
    pub fn user(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid)
                    .map(|u| u.name().to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .clone()
    }

    /// The group name of `gid`, or "" if none.
    pub fn group(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid)
                    .map(|g| g.name().to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .clone()
    }
}

/// Reads the extended attributes of `path` (not following a symbolic link).
pub fn read_xattrs(path: &Path) -> std::io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut out = std::collections::BTreeMap::new();
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for name in names {
        if let Some(value) = xattr::get(path, &name)? {
            out.insert(name.as_bytes().to_vec(), value);
        }
    }
    Ok(out)
}

/// The member metadata of an entry. `hardlink_to` makes it a hard link to an
/// earlier path; the caller reads the link target for symbolic links.
pub fn metadata_of(
    entry: &Entry,
    names: &mut Names,
    hardlink_to: Option<&[u8]>,
) -> std::io::Result<Metadata> {
    let st = &entry.stat;
    let kind = if let Some(target) = hardlink_to {
        EntryKind::Hardlink {
            target: target.to_vec(),
        }
    } else {
        match st.file_type() {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink {
                target: std::fs::read_link(&entry.abs)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            },
            libc::S_IFCHR => EntryKind::CharDevice {
                major: libc::major(st.rdev),
                minor: libc::minor(st.rdev),
            },
            libc::S_IFBLK => EntryKind::BlockDevice {
                major: libc::major(st.rdev),
                minor: libc::minor(st.rdev),
            },
            libc::S_IFIFO => EntryKind::Fifo,
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "sockets and other special files are not tiered",
                ));
            }
        }
    };
    let size = if kind == EntryKind::File { st.size } else { 0 };
    let mut meta = Metadata::new(entry.rel.clone(), kind);
    meta.mode = st.mode & 0o7777;
    meta.uid = st.uid;
    meta.gid = st.gid;
    meta.uname = names.user(st.uid);
    meta.gname = names.group(st.gid);
    meta.mtime = Timestamp::new(st.mtime, st.mtime_ns);
    meta.size = size;
    meta.xattrs = read_xattrs(&entry.abs)?;
    Ok(meta)
}
