//! Walking the source tree.
//!
//! The walk is sorted by name, never follows symbolic links, and reports
//! entries it cannot read instead of stopping. Every directory is listed
//! through a handle opened beneath the tree's root with no symbolic link on
//! the way ([`SourceTree::open_dir`]), and only if it is the directory the
//! listing of its parent found: a directory swapped for a link to somewhere
//! else is never listed, and what the index holds below it is kept (a
//! "changed while read" problem), not called gone.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cbfs_format::{EntryKind, Metadata, Timestamp};
use serde::{Deserialize, Serialize};

use crate::source_tree::{OpenError, SourceTree};

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

    /// From a `stat` made through a directory's descriptor.
    pub fn from_rustix(st: &rustix::fs::Stat) -> Self {
        Stat {
            dev: st.st_dev,
            ino: st.st_ino,
            mode: st.st_mode,
            nlink: st.st_nlink,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            mtime: st.st_mtime,
            mtime_ns: st.st_mtime_nsec as u32,
            ctime: st.st_ctime,
            ctime_ns: st.st_ctime_nsec as u32,
            rdev: st.st_rdev,
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

    /// Whether two stats describe the same entry as a tar header would:
    /// type, permission bits, owner, size, modification time and device
    /// number. For trees that are extracted anew for each run (a pushed
    /// stream), where inode numbers and change times always differ.
    pub fn same_attributes(&self, other: &Stat) -> bool {
        self.mode == other.mode
            && self.uid == other.uid
            && self.gid == other.gid
            && self.size == other.size
            && self.mtime == other.mtime
            && self.mtime_ns == other.mtime_ns
            && self.rdev == other.rdev
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
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Problem {
    /// The path, lossily as text.
    pub path: String,
    /// What went wrong.
    pub reason: String,
    /// The path relative to the root, when the walk knows it: what the
    /// index keeps as it was (a directory that cannot be listed keeps all
    /// below it), since nothing proves it is gone.
    #[serde(skip)]
    pub rel: Option<Vec<u8>>,
}

/// The walk on one thread, entry by entry: the order [`walk_parallel`]
/// keeps.
#[cfg(test)]
pub fn walk(
    tree: &SourceTree,
    root: &Path,
    mut entry: impl FnMut(Entry),
    mut problem: impl FnMut(Problem),
) {
    let mut emit = |w: Walked| match w {
        Walked::Entry(e) => entry(e),
        Walked::Problem(p) => problem(p),
    };
    let first = list(tree, root.to_owned(), Vec::new(), None, &mut emit);
    walk_from(tree, first, &mut emit);
}

/// What a walk gives, in order.
#[derive(Debug)]
pub enum Walked {
    /// An entry of the tree.
    Entry(Entry),
    /// Something the walk could not read.
    Problem(Problem),
}

/// One step of a directory's walk: an entry, or going into a
/// subdirectory. A subdirectory `d` is entered where `d/` sorts among its
/// siblings, so that the whole walk is in the byte order of the paths (the
/// order of the index's keys): `a`, `a.b`, `a.b/y`, `a/x`.
enum Step {
    Entry(std::ffi::OsString, std::io::Result<Stat>),
    /// A subdirectory, and what the listing found there.
    Descend(std::ffi::OsString, Stat),
}

impl Step {
    fn key(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Step::Entry(name, _) => name.as_bytes().into(),
            Step::Descend(name, _) => {
                let mut k = name.as_bytes().to_vec();
                k.push(b'/');
                k.into()
            }
        }
    }
}

/// Walks `tree` (whose root is `root`, excluding the root itself), giving
/// `out` its entries and problems in batches of up to `batch`, in the byte
/// order of their paths relative to `root` (a directory before what it
/// holds). Symbolic links are not followed.
///
/// Entries are `stat`ed relative to their open directory (`fstatat` on the
/// directory's descriptor), not by their full path: on a tree of 20,000
/// files, resolving every path again from the root was a third of a run with
/// nothing to store. Each directory is opened beneath the root with no
/// symbolic link on the way, and listed only if it is the directory its
/// parent's listing found (device, inode, type). A directory's descriptor
/// is closed before the walk goes into its subdirectories, so deep trees do
/// not run out of descriptors.
///
/// The walk runs on up to `threads` threads: each directory at the top of
/// the tree is walked whole by one thread, and this thread hands on their
/// results in order.
pub fn walk_parallel(
    tree: &SourceTree,
    root: &Path,
    threads: usize,
    batch: usize,
    mut out: impl FnMut(Vec<Walked>),
) {
    let batch = batch.max(1);
    let mut head = Vec::new();
    let Some(top) = list(tree, root.to_owned(), Vec::new(), None, &mut |w| {
        head.push(w)
    }) else {
        out(head);
        return;
    };
    let steps: Vec<Step> = top.rest.into_iter().rev().collect();
    // The top directories, walked by the threads in this order.
    let dirs: Vec<(std::ffi::OsString, Stat)> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Descend(name, st) => Some((name.clone(), *st)),
            Step::Entry(..) => None,
        })
        .collect();
    let (senders, receivers): (Vec<_>, Vec<_>) = dirs
        .iter()
        .map(|_| std::sync::mpsc::sync_channel::<Vec<Walked>>(4))
        .unzip();
    let threads = threads.clamp(1, dirs.len().max(1));
    // A thread starts a top directory only while it is at most this many
    // ahead of the one being handed on: otherwise, on a tree of many small
    // top directories (each fits its channel), the threads would walk the
    // whole tree ahead of a slower consumer and hold all of it in memory.
    let gate = Gate {
        state: std::sync::Mutex::new(GateState {
            next: 0,
            handed_on: 0,
            closed: false,
        }),
        moved: std::sync::Condvar::new(),
        window: threads * 2,
    };
    std::thread::scope(|s| {
        // However the hand-on ends (a panic in `out` included), no thread
        // waits at the gate for ever, nor starts another directory.
        let _open = OpenOnDrop(&gate);
        for _ in 0..threads {
            let (dirs, senders, gate) = (&dirs, &senders, &gate);
            s.spawn(move || {
                loop {
                    let Some(j) = gate.claim(dirs.len()) else {
                        return;
                    };
                    let (name, seen) = &dirs[j];
                    let tx = &senders[j];
                    let mut buf = Vec::with_capacity(batch);
                    let mut push = |w: Walked| {
                        buf.push(w);
                        if buf.len() >= batch {
                            let full = std::mem::replace(&mut buf, Vec::with_capacity(batch));
                            let _ = tx.send(full);
                        }
                    };
                    let level = list(
                        tree,
                        root.join(name),
                        name.as_bytes().to_vec(),
                        Some(seen),
                        &mut push,
                    );
                    walk_from(tree, level, &mut push);
                    if !buf.is_empty() {
                        let _ = tx.send(buf);
                    }
                    // An empty batch: this directory is done.
                    let _ = tx.send(Vec::new());
                }
            });
        }
        let mut job = receivers.iter();
        for step in steps {
            match step {
                Step::Entry(name, Ok(stat)) => head.push(Walked::Entry(Entry {
                    rel: name.as_bytes().to_vec(),
                    abs: root.join(&name),
                    stat,
                })),
                Step::Entry(name, Err(err)) => head.push(Walked::Problem(walk_problem(
                    &root.join(&name),
                    name.as_bytes().to_vec(),
                    err,
                    "cannot stat",
                ))),
                Step::Descend(..) => {
                    if !head.is_empty() {
                        out(std::mem::take(&mut head));
                    }
                    let rx = job.next().expect("a job per directory");
                    while let Ok(b) = rx.recv() {
                        if b.is_empty() {
                            break;
                        }
                        out(b);
                    }
                    gate.handed_on(1);
                }
            }
            if head.len() >= batch {
                out(std::mem::take(&mut head));
            }
        }
        if !head.is_empty() {
            out(head);
        }
    });
}

/// Which top directory a walking thread takes next, and how far ahead of
/// the hand-on it may be.
struct Gate {
    state: std::sync::Mutex<GateState>,
    moved: std::sync::Condvar,
    window: usize,
}

struct GateState {
    /// The next top directory to walk.
    next: usize,
    /// Top directories handed on whole.
    handed_on: usize,
    /// The hand-on ended: no thread starts another directory.
    closed: bool,
}

impl Gate {
    /// The next top directory to walk, once it is within the window; `None`
    /// when there is none left.
    fn claim(&self, dirs: usize) -> Option<usize> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.closed || st.next >= dirs {
                return None;
            }
            if st.next < st.handed_on.saturating_add(self.window) {
                st.next += 1;
                return Some(st.next - 1);
            }
            st = self.moved.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn handed_on(&self, n: usize) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.handed_on = st.handed_on.saturating_add(n);
        self.moved.notify_all();
    }

    fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.closed = true;
        self.moved.notify_all();
    }
}

struct OpenOnDrop<'g>(&'g Gate);

impl Drop for OpenOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The walk below `first` (a listed directory), in path byte order.
fn walk_from(tree: &SourceTree, first: Option<Level>, emit: &mut impl FnMut(Walked)) {
    let mut stack: Vec<Level> = first.into_iter().collect();
    while let Some(level) = stack.last_mut() {
        let Some(step) = level.rest.pop() else {
            stack.pop();
            continue;
        };
        let name = match &step {
            Step::Entry(name, _) | Step::Descend(name, _) => name,
        };
        let abs = level.abs.join(name);
        let mut rel = Vec::with_capacity(level.rel.len() + 1 + name.len());
        if !level.rel.is_empty() {
            rel.extend_from_slice(&level.rel);
            rel.push(b'/');
        }
        rel.extend_from_slice(name.as_bytes());
        match step {
            Step::Entry(_, Ok(stat)) => emit(Walked::Entry(Entry { rel, abs, stat })),
            Step::Entry(_, Err(err)) => {
                emit(Walked::Problem(walk_problem(&abs, rel, err, "cannot stat")))
            }
            Step::Descend(_, seen) => {
                if let Some(sub) = list(tree, abs, rel, Some(&seen), emit) {
                    stack.push(sub);
                }
            }
        }
    }
}

/// A directory's steps not taken yet, last first.
struct Level {
    abs: PathBuf,
    rel: Vec<u8>,
    rest: Vec<Step>,
}

fn walk_problem(path: &Path, rel: Vec<u8>, err: std::io::Error, what: &str) -> Problem {
    Problem {
        path: path.display().to_string(),
        reason: format!("{what}: {err}"),
        rel: Some(rel),
    }
}

/// Reads a directory's entries and stats each through the open directory.
/// The directory is opened beneath the root with no symbolic link on the
/// way, and must be what the parent's listing found (`seen`; `None` for the
/// root). A directory that cannot be listed, or that is no longer the one
/// found, is a problem about everything below it: its `rel` is the
/// directory's own path.
fn list(
    tree: &SourceTree,
    abs: PathBuf,
    rel: Vec<u8>,
    seen: Option<&Stat>,
    emit: &mut impl FnMut(Walked),
) -> Option<Level> {
    let listing = "cannot list the directory";
    let dir = match tree.open_dir(&rel, seen) {
        Ok(fd) => fd,
        Err(OpenError::Changed(why)) => {
            emit(Walked::Problem(Problem {
                path: abs.display().to_string(),
                reason: format!("changed while read: {why}"),
                rel: Some(rel),
            }));
            return None;
        }
        Err(OpenError::Io(err)) => {
            emit(Walked::Problem(walk_problem(&abs, rel, err, listing)));
            return None;
        }
    };
    let mut dir = match rustix::fs::Dir::new(dir) {
        Ok(d) => d,
        Err(err) => {
            emit(Walked::Problem(walk_problem(
                &abs,
                rel,
                err.into(),
                listing,
            )));
            return None;
        }
    };
    let mut rest = Vec::new();
    while let Some(item) = dir.read() {
        let item = match item {
            Ok(item) => item,
            Err(err) => {
                emit(Walked::Problem(walk_problem(
                    &abs,
                    rel.clone(),
                    err.into(),
                    listing,
                )));
                break;
            }
        };
        let name = item.file_name();
        if name == c"." || name == c".." {
            continue;
        }
        let stat = dir
            .fd()
            .and_then(|fd| rustix::fs::statat(fd, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW))
            .map(|st| Stat::from_rustix(&st))
            .map_err(std::io::Error::from);
        let name = std::ffi::OsStr::from_bytes(name.to_bytes()).to_owned();
        if let Ok(st) = &stat
            && st.file_type() == libc::S_IFDIR
        {
            rest.push(Step::Descend(name.clone(), *st));
        }
        rest.push(Step::Entry(name, stat));
    }
    rest.sort_by(|a, b| b.key().cmp(&a.key()));
    Some(Level { abs, rel, rest })
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
/// earlier path. Everything is read through `tree`, never by the entry's
/// path: a symbolic link's target through its directory, extended
/// attributes from `opened` (the entry's own open file, for files and
/// directories) or through the directory.
pub fn metadata_of(
    entry: &Entry,
    names: &mut Names,
    hardlink_to: Option<&[u8]>,
    tree: &crate::source_tree::SourceTree,
    opened: Option<&std::fs::File>,
) -> Result<Metadata, crate::source_tree::OpenError> {
    use crate::source_tree::OpenError;
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
                target: tree.read_link(&entry.rel, st)?,
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
                return Err(OpenError::Io(std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "sockets and other special files are not tiered",
                )));
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
    meta.xattrs = match opened {
        Some(f) => read_fd_xattrs(f),
        None => tree.xattrs_beside(&entry.rel),
    }
    .map_err(OpenError::Io)?;
    Ok(meta)
}

/// The extended attributes of an open file.
pub fn read_fd_xattrs(
    file: &std::fs::File,
) -> std::io::Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>> {
    use xattr::FileExt as _;
    let mut out = std::collections::BTreeMap::new();
    let names = match file.list_xattr() {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => return Err(e),
    };
    for name in names {
        if let Some(value) = file.get_xattr(&name)? {
            out.insert(name.as_bytes().to_vec(), value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walked(root: &Path) -> (Vec<String>, Vec<Problem>) {
        let mut seen = Vec::new();
        let mut problems = Vec::new();
        let tree = SourceTree::open(root).unwrap();
        walk(
            &tree,
            root,
            |e| {
                assert_eq!(e.abs, root.join(std::ffi::OsStr::from_bytes(&e.rel)));
                seen.push(String::from_utf8(e.rel).unwrap());
            },
            |p| problems.push(p),
        );
        (seen, problems)
    }

    #[test]
    fn walks_depth_first_in_name_order_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["b/z", "b/a", "a.b", "a"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for f in ["b/z/1", "b/a/2", "a/x", "c", "a.b/y"] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("b", r.join("link")).unwrap();
        let (seen, problems) = walked(r);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            seen,
            [
                "a", "a.b", "a.b/y", "a/x", "b", "b/a", "b/a/2", "b/z", "b/z/1", "c", "link"
            ]
        );
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "the walk is in the byte order of the paths");
    }

    #[test]
    fn the_parallel_walk_gives_what_the_walk_gives_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        for d in ["b/z", "b/a", "a.b", "a", "e", "c/d/e/f"] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        for i in 0..50 {
            std::fs::write(r.join(format!("b/a/{i}")), b"x").unwrap();
            std::fs::write(r.join(format!("c/d/f{i}")), b"y").unwrap();
        }
        for f in ["a/x", "top", "a.b/y", "zz"] {
            std::fs::write(r.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink("b", r.join("link")).unwrap();
        let (want, no_problems) = walked(r);
        assert!(no_problems.is_empty());
        let tree = SourceTree::open(r).unwrap();
        for (threads, batch) in [(1, 1), (2, 3), (4, 512), (3, 7)] {
            let mut got = Vec::new();
            walk_parallel(&tree, r, threads, batch, |items| {
                assert!(!items.is_empty() && items.len() <= batch);
                for w in items {
                    match w {
                        Walked::Entry(e) => got.push(String::from_utf8(e.rel).unwrap()),
                        Walked::Problem(p) => panic!("{p:?}"),
                    }
                }
            });
            assert_eq!(got, want, "{threads} threads, batches of {batch}");
        }
    }

    #[test]
    fn a_deep_tree_is_walked_and_a_missing_root_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_owned();
        for _ in 0..300 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("f"), b"x").unwrap();
        let (seen, problems) = walked(dir.path());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(seen.len(), 301);
        assert!(seen.last().unwrap().ends_with("/d/f"));

        assert!(SourceTree::open(&dir.path().join("nope")).is_err());
    }

    /// What [`list`] gives for `rel` below `root`: its steps' names, and
    /// the problems it reported.
    fn listed(
        tree: &SourceTree,
        root: &Path,
        rel: &str,
        seen: Option<&Stat>,
    ) -> (Vec<String>, Vec<Problem>) {
        let mut problems = Vec::new();
        let level = list(
            tree,
            root.join(rel),
            rel.as_bytes().to_vec(),
            seen,
            &mut |w| match w {
                Walked::Problem(p) => problems.push(p),
                Walked::Entry(e) => panic!("{e:?}"),
            },
        );
        let names = level
            .map(|l| {
                l.rest
                    .iter()
                    .filter_map(|s| match s {
                        Step::Entry(name, _) => Some(name.to_string_lossy().into_owned()),
                        Step::Descend(..) => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        (names, problems)
    }

    #[test]
    fn a_directory_swapped_after_its_parent_was_listed_is_not_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/mine"), b"x").unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("only-outside"), b"secret").unwrap();
        let tree = SourceTree::open(&root).unwrap();
        let seen = Stat::from_metadata(&std::fs::symlink_metadata(root.join("d")).unwrap());
        let (names, problems) = listed(&tree, &root, "d", Some(&seen));
        assert_eq!(names, ["mine"]);
        assert!(problems.is_empty(), "{problems:?}");

        // Swapped for a symbolic link to a directory outside the tree: not
        // listed (a read_dir by path would list `outside`), and the problem
        // is about `d`, so that what the index holds below it is kept.
        std::fs::rename(root.join("d"), root.join("d.kept")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        let (names, problems) = listed(&tree, &root, "d", Some(&seen));
        assert!(names.is_empty(), "{names:?}");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].rel.as_deref(), Some(&b"d"[..]));
        assert!(
            problems[0].reason.starts_with("changed while read"),
            "{}",
            problems[0].reason
        );
        // A link on the way to a deeper directory is refused the same way.
        std::fs::create_dir(outside.join("sub")).unwrap();
        let (names, problems) = listed(&tree, &root, "d/sub", None);
        assert!(names.is_empty() && problems.len() == 1, "{problems:?}");
        assert!(problems[0].reason.starts_with("changed while read"));

        // Swapped for another directory: its inode is not the one found.
        std::fs::remove_file(root.join("d")).unwrap();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("d/planted"), b"x").unwrap();
        let (names, problems) = listed(&tree, &root, "d", Some(&seen));
        assert!(names.is_empty(), "{names:?}");
        assert!(
            problems.len() == 1 && problems[0].reason.contains("another directory"),
            "{problems:?}"
        );
    }
}
