//! A real tree goes through a store and comes back out as a tar that GNU tar
//! and bsdtar both extract into the same tree: content, modes, owners,
//! nanosecond mtimes (GNU tar), symlink targets, hard-link inodes, xattrs,
//! fifos, empty and multi-MiB files, unicode and very long names.

mod support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use cbfs_format::{EntryKind, SegmentMode};
use support::*;

fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let t = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    let f = fs::File::options()
        .write(true)
        .open(path)
        .or_else(|_| fs::File::open(path))
        .unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t)).unwrap();
}

fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Builds the source tree. Directory times are set last.
fn build_tree(root: &Path) {
    let long_dir = "d".repeat(120);
    let long_file = format!("{}-{}", "f".repeat(150), "é");
    let dirs = [
        "alice".to_owned(),
        "alice/projects".to_owned(),
        "docs".to_owned(),
        "links".to_owned(),
        "modes".to_owned(),
        "café".to_owned(),
        format!("docs/{long_dir}"),
        format!("docs/{long_dir}/{}", "e".repeat(99)),
    ];
    for d in &dirs {
        fs::create_dir(root.join(d)).unwrap();
    }
    let files: Vec<(String, Vec<u8>)> = vec![
        ("alice/empty".into(), Vec::new()),
        ("alice/small.txt".into(), b"hello, alice\n".to_vec()),
        (
            "alice/projects/big.bin".into(),
            bytes(1, 3 * 1024 * 1024 + 17),
        ),
        ("docs/readme.md".into(), b"# docs\n".to_vec()),
        ("docs/medium.bin".into(), bytes(2, 200_000)),
        (
            "café/naïve-文件.txt".into(),
            "unicode ✓\n".as_bytes().to_vec(),
        ),
        (
            format!("docs/{long_dir}/{long_file}"),
            b"long name\n".to_vec(),
        ),
        (
            format!("docs/{long_dir}/{}/{}", "e".repeat(99), "g".repeat(100)),
            b"deep and long\n".to_vec(),
        ),
        ("modes/setuid".into(), b"#!/bin/sh\n".to_vec()),
        ("modes/readonly".into(), b"ro\n".to_vec()),
        ("modes/private".into(), b"secret-ish\n".to_vec()),
        ("modes/owned".into(), b"owned by someone else\n".to_vec()),
    ];
    for (name, content) in &files {
        fs::write(root.join(name), content).unwrap();
    }
    let mode =
        |p: &str, m: u32| fs::set_permissions(root.join(p), fs::Permissions::from_mode(m)).unwrap();
    mode("modes/setuid", 0o4755);
    mode("modes/readonly", 0o444);
    mode("modes/private", 0o600);
    mode("modes/owned", 0o640);
    if is_root() {
        std::os::unix::fs::chown(root.join("modes/owned"), Some(1234), Some(5678)).unwrap();
    }
    // Hard links: three names for one inode, across directories.
    fs::hard_link(root.join("docs/readme.md"), root.join("links/readme-hard")).unwrap();
    fs::hard_link(root.join("docs/readme.md"), root.join("alice/readme-too")).unwrap();
    // Symbolic links, one with a target longer than 100 bytes.
    std::os::unix::fs::symlink("../alice/small.txt", root.join("links/to-small")).unwrap();
    std::os::unix::fs::symlink(
        format!("../docs/{long_dir}/{long_file}"),
        root.join("links/to-long"),
    )
    .unwrap();
    std::os::unix::fs::symlink("projects", root.join("alice/proj-link")).unwrap();
    // A fifo.
    let status = Command::new("mkfifo")
        .arg(root.join("docs/pipe"))
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo failed");
    // xattrs on a file and a directory, one with a binary value.
    xattr::set(root.join("alice/small.txt"), "user.cbfs.note", b"kept").unwrap();
    xattr::set(
        root.join("alice/small.txt"),
        "user.cbfs.bin",
        &[0, 1, 2, 255, b'\n'],
    )
    .unwrap();
    xattr::set(root.join("docs"), "user.cbfs.dir", b"on a directory").unwrap();
    // Sub-second times on files, then directories (deepest first).
    for (i, (name, _)) in files.iter().enumerate() {
        set_mtime(
            &root.join(name),
            1_600_000_000 + i as u64 * 1000,
            100_000_007 * (i as u32 % 9) + 1,
        );
    }
    let mut all_dirs = dirs.clone();
    all_dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for (i, d) in all_dirs.iter().enumerate() {
        set_mtime(
            &root.join(d),
            1_500_000_000 + i as u64,
            987_654_321 - i as u32,
        );
    }
    mode("docs", 0o2775);
    mode("links", 0o1777);
}

fn compare(src: &Path, out: &Path, tool: &str, nanos: bool) {
    let source = scan_tree(src);
    let restored = scan_tree(out);
    let names = |v: &Vec<(cbfs_format::Metadata, Vec<u8>)>| {
        v.iter().map(|(m, _)| m.path_lossy()).collect::<Vec<_>>()
    };
    assert_eq!(
        names(&source),
        names(&restored),
        "{tool}: the restored tree has other entries"
    );
    let mut inode_of: HashMap<Vec<u8>, u64> = HashMap::new();
    for (meta, _) in &restored {
        let st = fs::symlink_metadata(out.join(OsStr::from_bytes(&meta.path))).unwrap();
        inode_of.insert(meta.path.clone(), st.ino());
    }
    for ((want, want_content), (got, got_content)) in source.iter().zip(&restored) {
        let what = format!("{tool}: {}", want.path_lossy());
        match (&want.kind, &got.kind) {
            (EntryKind::Hardlink { target }, EntryKind::Hardlink { .. }) => {
                assert_eq!(
                    inode_of[&want.path], inode_of[target],
                    "{what}: hard link shares no inode"
                );
                continue;
            }
            (EntryKind::Symlink { target }, EntryKind::Symlink { target: t2 }) => {
                assert_eq!(target, t2, "{what}: symlink target");
                continue;
            }
            (a, b) => assert_eq!(a, b, "{what}: kind"),
        }
        assert_eq!(want_content, got_content, "{what}: content");
        assert_eq!(
            want.mode, got.mode,
            "{what}: mode {:o} vs {:o}",
            want.mode, got.mode
        );
        if is_root() {
            assert_eq!((want.uid, want.gid), (got.uid, got.gid), "{what}: owner");
        }
        assert_eq!(want.mtime.secs, got.mtime.secs, "{what}: mtime seconds");
        if nanos {
            assert_eq!(
                want.mtime.nanos, got.mtime.nanos,
                "{what}: mtime nanoseconds"
            );
        }
        assert_eq!(want.xattrs, got.xattrs, "{what}: xattrs");
    }
}

#[test]
fn gnu_tar_and_bsdtar_extract_the_restored_tree() {
    need(GNU_TAR, "tar");
    need(BSDTAR, "libarchive-tools");
    let dir = TestDir::new();
    let src = dir.path().join("src");
    fs::create_dir(&src).unwrap();
    build_tree(&src);
    let scanned = scan_tree(&src);
    assert!(
        scanned.iter().any(|(m, _)| !m.xattrs.is_empty()),
        "the file system keeps no user xattrs"
    );

    // Two segments; alice/ goes to scope alice, the rest to default.
    let keys = Keys::random(true);
    let store = dir.path().join("store");
    let mut w = StoreWriter::new(&store, &keys);
    let items: Vec<Item> = scanned
        .iter()
        .map(|(meta, content)| Item {
            meta: meta.clone(),
            content: content.clone(),
            scope: if meta.path.starts_with(b"alice") {
                "alice"
            } else {
                "default"
            }
            .into(),
        })
        .collect();
    let (first, second) = items.split_at(items.len() / 2);
    w.segment(SegmentMode::Encrypted, first);
    w.segment(SegmentMode::Encrypted, second);
    w.snapshot();

    let key = key_file(
        dir.path(),
        "admin.key",
        keys.admin.seed().expose_secret_bytes(),
    );
    let tar_path = dir.path().join("out.tar");
    let out = run(recover_cmd(dir.path())
        .arg("--identity")
        .arg(format!("file:{}", key.display()))
        .arg("--store")
        .arg(&store)
        .arg("-o")
        .arg(&tar_path)
        .arg("--json"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "cbfs-recover failed: {stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["restored_entries"],
        scanned.len() as u64,
        "{report:#}"
    );
    assert_eq!(
        report["failures"].as_array().unwrap().len(),
        0,
        "{report:#}"
    );
    assert!(!stderr.contains(&hex::encode(keys.admin.seed().expose_secret_bytes())));

    for (tool, args, nanos) in [
        (
            GNU_TAR,
            vec!["--xattrs", "--xattrs-include=*", "-xpf"],
            true,
        ),
        (BSDTAR, vec!["-xpf"], true),
    ] {
        let dest = dir.path().join(if tool == GNU_TAR { "gnu" } else { "bsd" });
        fs::create_dir(&dest).unwrap();
        let out = run(Command::new(tool)
            .args(&args)
            .arg(&tar_path)
            .arg("-C")
            .arg(&dest)
            .env("LC_ALL", "C"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{tool} failed: {stderr}");
        assert!(stderr.trim().is_empty(), "{tool} warned: {stderr}");
        compare(&src, &dest, tool, nanos);
    }
}
