//! Deterministic test trees and their checksums.
//!
//! [`TreeGen`] makes a tree from a seed, with every entry type cbfs handles
//! (regular, empty, sparse and compressible files, directories, symlinks,
//! hard links, xattrs, odd modes, sub-second mtimes, unicode and long
//! names), then a series of updates: adds, edits, renames, deletes, mode
//! and xattr changes. [`checksum`] is a Merkle root over every entry's path,
//! metadata and content, so two trees are equal exactly when their
//! checksums are.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

/// What [`checksum`] covers of each entry.
#[derive(Clone, Copy, Debug)]
pub struct Compare {
    /// Compare modification times of regular files (to the nanosecond).
    pub file_mtimes: bool,
    /// Compare extended attributes.
    pub xattrs: bool,
}

impl Default for Compare {
    fn default() -> Self {
        Compare {
            file_mtimes: true,
            xattrs: true,
        }
    }
}

/// A Merkle root over the tree at `root` (its entries, not the root itself).
pub fn checksum(root: &Path, what: Compare) -> [u8; 32] {
    let leaves: Vec<[u8; 32]> = describe(root, what)
        .into_iter()
        .map(|(path, desc)| {
            let mut h = Sha256::new();
            h.update([0u8]);
            h.update((path.len() as u64).to_be_bytes());
            h.update(&path);
            h.update(desc.as_bytes());
            h.finalize().into()
        })
        .collect();
    merkle(&leaves)
}

fn merkle(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => leaves[0],
        n => {
            let k = n.next_power_of_two() / 2;
            let mut h = Sha256::new();
            h.update([1u8]);
            h.update(merkle(&leaves[..k]));
            h.update(merkle(&leaves[k..]));
            h.finalize().into()
        }
    }
}

/// One line per entry: what the checksum covers, readable, for diffs in
/// failure messages.
pub fn describe(root: &Path, what: Compare) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    let mut first_path_of_inode: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, m));
        }
    }
    all.sort_by(|a, b| a.0.as_os_str().as_bytes().cmp(b.0.as_os_str().as_bytes()));
    for (p, m) in all {
        let rel = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        let mode = m.mode() & 0o7777;
        let desc = if m.file_type().is_symlink() {
            format!(
                "symlink -> {}",
                String::from_utf8_lossy(fs::read_link(&p).unwrap().as_os_str().as_bytes())
            )
        } else if m.is_dir() {
            format!("dir {mode:04o}")
        } else if m.is_file() {
            let link = if m.nlink() > 1 {
                let first = first_path_of_inode
                    .entry((m.dev(), m.ino()))
                    .or_insert_with(|| rel.clone());
                format!(" linkgroup={}", String::from_utf8_lossy(first))
            } else {
                String::new()
            };
            let content = hex::encode(Sha256::digest(fs::read(&p).unwrap()));
            let mtime = if what.file_mtimes {
                format!(" mtime={}.{:09}", m.mtime(), m.mtime_nsec())
            } else {
                String::new()
            };
            format!(
                "file {mode:04o} size={} sha256={content}{mtime}{link}",
                m.len()
            )
        } else {
            format!("special {:o}", m.mode())
        };
        let xattrs = if what.xattrs && !m.file_type().is_symlink() {
            let mut names: Vec<_> = xattr::list(&p).map(|l| l.collect()).unwrap_or_default();
            names.sort();
            names
                .iter()
                .map(|n| {
                    let v = xattr::get(&p, n).ok().flatten().unwrap_or_default();
                    format!(" xattr {}={}", n.to_string_lossy(), hex::encode(v))
                })
                .collect::<String>()
        } else {
            String::new()
        };
        out.insert(rel, format!("{desc}{xattrs}"));
    }
    out
}

/// Panics with a readable diff unless the two trees are equal.
pub fn assert_same_tree(expected: &Path, actual: &Path, what: Compare) {
    let a = describe(expected, what);
    let b = describe(actual, what);
    if a == b {
        return;
    }
    let mut diff = String::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diff.push_str(&format!("- missing {}: {v}\n", String::from_utf8_lossy(k))),
            Some(w) if w != v => diff.push_str(&format!(
                "~ {}:\n    expected {v}\n    actual   {w}\n",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for (k, w) in &b {
        if !a.contains_key(k) {
            diff.push_str(&format!("+ extra {}: {w}\n", String::from_utf8_lossy(k)));
        }
    }
    panic!(
        "trees differ ({} vs {}):\n{diff}",
        expected.display(),
        actual.display()
    );
}

/// Makes a tree and a series of updates to it, all from one seed.
pub struct TreeGen {
    root: PathBuf,
    rng: StdRng,
    counter: u64,
    /// A unique string written into every name and every file, to grep for
    /// in the store.
    pub marker: String,
}

const NAMES: &[&str] = &[
    "report",
    "données",
    "日本語",
    "Ελληνικά",
    "notes",
    "a b c",
    "x",
    "emoji-🚀",
    "data.bin",
    "README",
];

impl TreeGen {
    /// A generator for a tree at `root` (created), from `seed`.
    pub fn new(root: &Path, seed: u64) -> Self {
        fs::create_dir_all(root).unwrap();
        TreeGen {
            root: root.to_owned(),
            rng: StdRng::seed_from_u64(seed),
            counter: 0,
            marker: format!("cbfsmarker{seed:08x}"),
        }
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn name(&mut self) -> String {
        self.counter += 1;
        let base = NAMES[self.rng.gen_range(0..NAMES.len())];
        format!("{}-{base}-{}", self.marker, self.counter)
    }

    fn content(&mut self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size + 64);
        if self.rng.gen_bool(0.5) {
            // Compressible text with the marker in it.
            while out.len() < size {
                out.extend_from_slice(
                    format!("{} line {} of text\n", self.marker, self.rng.r#gen::<u16>())
                        .as_bytes(),
                );
            }
            out.truncate(size.max(self.marker.len()));
        } else {
            out.resize(size, 0);
            self.rng.fill(&mut out[..]);
            if size >= self.marker.len() {
                out[..self.marker.len()].copy_from_slice(self.marker.as_bytes());
            }
        }
        out
    }

    fn set_mtime(&mut self, path: &Path) {
        let secs = 1_500_000_000 + self.rng.gen_range(0..200_000_000u64);
        let nanos = self.rng.gen_range(0..1_000_000_000u32);
        let t = SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
            .unwrap();
    }

    fn write_file(&mut self, path: &Path, size: usize) {
        let data = self.content(size);
        fs::write(path, data).unwrap();
        let mode = [0o644, 0o600, 0o755, 0o640, 0o444][self.rng.gen_range(0..5)];
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
        if self.rng.gen_bool(0.3) {
            let v = format!("{}-attr-{}", self.marker, self.rng.r#gen::<u32>());
            xattr::set(path, "user.cbfs.test", v.as_bytes()).unwrap();
        }
        self.set_mtime(path);
    }

    fn random_size(&mut self) -> usize {
        match self.rng.gen_range(0..10) {
            0 => 0,
            1..=6 => self.rng.gen_range(1..8192),
            7 | 8 => self.rng.gen_range(8192..200_000),
            _ => self.rng.gen_range(200_000..1_500_000),
        }
    }

    /// Every regular file in the tree (relative paths), sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                let m = fs::symlink_metadata(&p).unwrap();
                if m.is_dir() {
                    stack.push(p);
                } else if m.is_file() {
                    out.push(p.strip_prefix(&self.root).unwrap().to_owned());
                }
            }
        }
        out.sort();
        out
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut out = vec![self.root.clone()];
        let mut i = 0;
        while i < out.len() {
            for e in fs::read_dir(&out[i]).unwrap() {
                let p = e.unwrap().path();
                if fs::symlink_metadata(&p).unwrap().is_dir() {
                    out.push(p);
                }
            }
            i += 1;
        }
        out.sort();
        out
    }

    /// The first state: about `files` files in nested directories, plus one
    /// of every special case.
    pub fn populate(&mut self, files: usize) {
        let root = self.root.clone();
        let mut dirs = vec![root.clone()];
        for _ in 0..(files / 8).max(2) {
            let parent = dirs[self.rng.gen_range(0..dirs.len())].clone();
            let d = parent.join(self.name());
            fs::create_dir(&d).unwrap();
            dirs.push(d);
        }
        for _ in 0..files {
            let dir = dirs[self.rng.gen_range(0..dirs.len())].clone();
            let name = self.name();
            let size = self.random_size();
            self.write_file(&dir.join(name), size);
        }
        // One of each special case.
        let special = root.join(format!("{}-special", self.marker));
        fs::create_dir(&special).unwrap();
        self.write_file(&special.join("empty"), 0);
        let long = format!("{}-{}", self.marker, "long-name-".repeat(22));
        self.write_file(&special.join(&long), 100);
        let deep = special.join("d1").join("d2").join("d3").join("ü-ñ-深い");
        fs::create_dir_all(&deep).unwrap();
        self.write_file(&deep.join("deep-file.txt"), 3000);
        // Sparse: a hole then data.
        let sparse = special.join("sparse.img");
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(8 << 20).unwrap();
        drop(f);
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = fs::File::options().write(true).open(&sparse).unwrap();
            f.seek(SeekFrom::Start(6 << 20)).unwrap();
            f.write_all(self.marker.as_bytes()).unwrap();
        }
        self.set_mtime(&sparse);
        let target = special.join("empty");
        std::os::unix::fs::symlink("empty", special.join("link-to-empty")).unwrap();
        std::os::unix::fs::symlink("../no/such/target", special.join("dangling")).unwrap();
        fs::hard_link(&target, special.join("hardlink-to-empty")).unwrap();
        self.write_file(&special.join("linked"), 5000);
        fs::hard_link(
            special.join("linked"),
            root.join(format!("{}-hardlink-elsewhere", self.marker)),
        )
        .unwrap();
        let odd = special.join("odd-mode");
        self.write_file(&odd, 10);
        fs::set_permissions(&odd, fs::Permissions::from_mode(0o4751)).unwrap();
        fs::set_permissions(special.join("d1"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    /// One round of changes: `n` operations chosen among add, edit, rename,
    /// delete, chmod and xattr change.
    pub fn update(&mut self, n: usize) {
        for _ in 0..n {
            let files = self.files();
            let op = self.rng.gen_range(0..6);
            if files.is_empty() || op == 0 {
                let dirs = self.dirs();
                let dir = dirs[self.rng.gen_range(0..dirs.len())].clone();
                let name = self.name();
                let size = self.random_size();
                self.write_file(&dir.join(name), size);
                continue;
            }
            let pick = self.root.join(&files[self.rng.gen_range(0..files.len())]);
            match op {
                1 => {
                    let size = self.random_size();
                    let mode = fs::metadata(&pick).unwrap().permissions();
                    fs::set_permissions(&pick, fs::Permissions::from_mode(0o644)).unwrap();
                    let data = self.content(size);
                    fs::write(&pick, data).unwrap();
                    fs::set_permissions(&pick, mode).unwrap();
                    self.set_mtime(&pick);
                }
                2 => {
                    let name = self.name();
                    fs::rename(&pick, pick.with_file_name(name)).unwrap();
                }
                3 => fs::remove_file(&pick).unwrap(),
                4 => {
                    let mode = [0o600, 0o644, 0o755, 0o444][self.rng.gen_range(0..4)];
                    fs::set_permissions(&pick, fs::Permissions::from_mode(mode)).unwrap();
                }
                _ => {
                    let v = format!("{}-changed-{}", self.marker, self.rng.r#gen::<u32>());
                    if fs::metadata(&pick).unwrap().permissions().mode() & 0o200 == 0 {
                        continue;
                    }
                    xattr::set(&pick, "user.cbfs.test", v.as_bytes()).unwrap();
                }
            }
        }
    }

    /// Copies the tree as it is now into `dest` (a snapshot of the state, for
    /// later comparison), with `cp -a`.
    pub fn copy_to(&self, dest: &Path) {
        let status = std::process::Command::new("cp")
            .arg("-a")
            .arg(&self.root)
            .arg(dest)
            .status()
            .expect("cp -a");
        assert!(
            status.success(),
            "cp -a {} {}",
            self.root.display(),
            dest.display()
        );
    }
}
