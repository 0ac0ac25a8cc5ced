//! GNU tar and bsdtar read our segments: they list every segment and extract plain
//! ones with the right names, content, modes, links and times.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use cbfs_format::{
    EntryKind, GroupKey, MemberId, Metadata, SegmentId, SegmentMode, SegmentWriter, Timestamp,
};
use common::*;

const GNU_TAR: &str = "/usr/bin/tar";
const BSDTAR: &str = "/usr/bin/bsdtar";

fn run(tool: &str, args: &[&OsStr]) -> String {
    assert!(
        Path::new(tool).exists(),
        "{tool} is needed by this test: install GNU tar (Debian 'tar') and bsdtar (Debian 'libarchive-tools')"
    );
    let out = Command::new(tool).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{tool} {args:?} failed: {stderr}");
    assert!(stderr.trim().is_empty(), "{tool} {args:?} warned: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn write_segment(path: &Path, mode: SegmentMode, entries: &[(Metadata, Vec<u8>)]) -> Vec<MemberId> {
    let key = GroupKey::generate();
    let spool = fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut w = SegmentWriter::new(spool, SegmentId::random(), mode).unwrap();
    let mut ids = Vec::new();
    for (meta, content) in entries {
        let id = MemberId::random();
        match mode {
            SegmentMode::Encrypted => w.append_encrypted(id, &key, meta, &content[..]).unwrap(),
            SegmentMode::Plain => w.append_plain(id, meta, &content[..]).unwrap(),
        };
        ids.push(id);
    }
    let (spool, summary) = w.finish().unwrap();
    spool.set_len(summary.segment_len()).unwrap();
    ids
}

#[test]
fn gnu_tar_and_bsdtar_list_an_encrypted_segment() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("seg.tar");
    let ids = write_segment(&seg, SegmentMode::Encrypted, &sample_entries());
    for tool in [GNU_TAR, BSDTAR] {
        let listing = run(tool, &[OsStr::new("tvf"), seg.as_os_str()]);
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        let expected: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        assert_eq!(names, expected, "{tool} listing:\n{listing}");
    }
}

fn plain_entries() -> Vec<(Metadata, Vec<u8>)> {
    let mut exec = file(b"top/run.sh", b"#!/bin/sh\necho hi\n");
    exec.0.mode = 0o755;
    exec.0.mtime = Timestamp::new(1_500_000_000, 0);
    let mut sub = file(b"top/subsecond", b"tick");
    sub.0.mtime = Timestamp::new(1_700_000_123, 987_654_321);
    let long_dir = b"top/"
        .iter()
        .chain(b"d".repeat(120).iter())
        .copied()
        .collect::<Vec<u8>>();
    let long_name = [long_dir.as_slice(), b"/", &b"f".repeat(150)].concat();
    let mut xattr = file(b"top/xattr", b"x");
    xattr
        .0
        .xattrs
        .insert(b"user.cbfs".to_vec(), b"value".to_vec());
    vec![
        entry(b"top", EntryKind::Dir),
        file(b"top/a.txt", b"alpha\n"),
        file(b"top/empty", b""),
        exec,
        sub,
        file(b"top/caf\xe9-latin1", b"not utf-8 name"),
        entry(
            b"top/link",
            EntryKind::Symlink {
                target: b"a.txt".to_vec(),
            },
        ),
        entry(
            b"top/hard",
            EntryKind::Hardlink {
                target: b"top/a.txt".to_vec(),
            },
        ),
        entry(&long_dir, EntryKind::Dir),
        file(&long_name, b"long"),
        file(
            &[long_dir.as_slice(), b"/", &b"\xff".repeat(150)].concat(),
            b"long binary",
        ),
        xattr,
        file(b"top/big", &random_bytes(5, 300_000)),
    ]
}

fn check_extracted(root: &Path, entries: &[(Metadata, Vec<u8>)], tool: &str) {
    for (meta, content) in entries {
        let path = root.join(OsStr::from_bytes(&meta.path));
        let st = fs::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("{tool}: {} missing: {e}", meta.path_lossy()));
        match &meta.kind {
            EntryKind::File => {
                assert!(st.is_file());
                assert_eq!(
                    &fs::read(&path).unwrap(),
                    content,
                    "{tool}: {}",
                    meta.path_lossy()
                );
            }
            EntryKind::Dir => assert!(st.is_dir()),
            EntryKind::Symlink { target } => {
                assert!(st.file_type().is_symlink());
                assert_eq!(
                    fs::read_link(&path).unwrap().as_os_str().as_bytes(),
                    target.as_slice()
                );
                continue;
            }
            EntryKind::Hardlink { target } => {
                let other = fs::metadata(root.join(OsStr::from_bytes(target))).unwrap();
                assert_eq!(st.ino(), other.ino(), "{tool}: hard link");
                continue;
            }
            _ => unreachable!(),
        }
        assert_eq!(
            st.mode() & 0o7777,
            meta.mode,
            "{tool}: mode of {}",
            meta.path_lossy()
        );
        if meta.kind == EntryKind::File {
            assert_eq!(
                st.mtime(),
                meta.mtime.secs,
                "{tool}: mtime of {}",
                meta.path_lossy()
            );
            if tool == GNU_TAR {
                assert_eq!(
                    st.mtime_nsec() as u32,
                    meta.mtime.nanos,
                    "{tool}: {}",
                    meta.path_lossy()
                );
            }
        }
    }
}

#[test]
fn gnu_tar_and_bsdtar_extract_a_plain_segment() {
    let dir = tempfile::tempdir().unwrap();
    let seg = dir.path().join("plain.tar");
    let entries = plain_entries();
    write_segment(&seg, SegmentMode::Plain, &entries);
    for tool in [GNU_TAR, BSDTAR] {
        let listing = run(tool, &[OsStr::new("tvf"), seg.as_os_str()]);
        assert_eq!(listing.lines().count(), entries.len(), "{tool}:\n{listing}");
        let out = dir.path().join(if tool == GNU_TAR { "gnu" } else { "bsd" });
        fs::create_dir(&out).unwrap();
        run(
            tool,
            &[
                OsStr::new("-x"),
                OsStr::new("-p"),
                OsStr::new("--no-same-owner"),
                OsStr::new("-f"),
                seg.as_os_str(),
                OsStr::new("-C"),
                out.as_os_str(),
            ],
        );
        check_extracted(&out, &entries, tool);
    }
    // GNU tar sees the xattr record.
    let listing = run(
        GNU_TAR,
        &[OsStr::new("--xattrs"), OsStr::new("-tvvf"), seg.as_os_str()],
    );
    assert!(listing.contains("top/xattr"), "{listing}");
}
