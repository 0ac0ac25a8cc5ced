//! Tiering proper, end to end on file systems the tests make and
//! loop-mount (ext4 and xfs): release by policy, the states `status`
//! shows, recall by command, and release killed at every step.
//!
//! - A release by policy (age, size, globs) frees the blocks (`du`
//!   drops) and keeps size, mode, owner, times, link count and inode
//!   number; an incremental run after it stores nothing; flags keep files
//!   resident or out of the store; a written released file is dirty and
//!   the next run archives it. A stub written with no watch running is
//!   dirty and never archived (its zeros would be). A file another
//!   process has open stays resident (the release names it, exit 6);
//!   `status` in words gives each file's state and the totals.
//! - A recall fills the same inode, verified, with its times; a member
//!   damaged in the store gives exit 4, marks the file lost and leaves the
//!   stub as it was. A recall of a whole tree fills every good file in
//!   one pass (both names of a hard link) when one stored copy is bad.
//! - `--until-free` releases the least recently used files first; a dry
//!   run changes nothing.
//! - A file removed while its folder is recalled is reported gone, and
//!   the others are filled.
//! - A recall killed mid-fill leaves the stub marked as being recalled,
//!   which reads as released (not written), and the next recall fills it.
//! - Release killed at each of its steps leaves whole files or valid stubs
//!   (every one recalls to its content), and the next release finishes.

#![forbid(unsafe_code)]

#[path = "tiering/hsm.rs"]
mod hsm;
#[path = "tiering/keys.rs"]
mod keys;

use std::collections::BTreeMap;
use std::path::Path;

use cbfs_tests::{FsKind, random_bytes, run};
use hsm::{Tiered, age, allocated, holds_no_data, identity, is_stub, json, released};
use serde_json::Value;
use sha2::{Digest, Sha256};

const DAY: u64 = 86_400;

fn sha(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every regular file of the tree (outside lost+found) and its SHA-256.
fn sums(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                if p.file_name().is_some_and(|n| n != "lost+found") {
                    stack.push(p);
                }
            } else if m.is_file() {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, sha(&p));
            }
        }
    }
    out
}

/// The state of each path in a status report.
fn states(status: &Value, t: &Tiered) -> BTreeMap<String, String> {
    status["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let p = f["path"].as_str().unwrap();
            let rel = Path::new(p)
                .strip_prefix(t.tree())
                .unwrap()
                .display()
                .to_string();
            (rel, f["state"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn release_by_policy(kind: FsKind) {
    let t = Tiered::new(kind, 96);
    let root = t.tree();
    std::fs::create_dir_all(root.join("old")).unwrap();
    std::fs::create_dir_all(root.join("new")).unwrap();
    std::fs::create_dir_all(root.join("alice")).unwrap();
    std::fs::write(root.join("old/a.bin"), random_bytes(2 << 20)).unwrap();
    std::fs::write(root.join("old/b.txt"), b"small and old").unwrap();
    std::fs::write(root.join("old/linked"), random_bytes(3 << 20)).unwrap();
    std::fs::hard_link(root.join("old/linked"), root.join("new/linked-too")).unwrap();
    std::fs::write(root.join("new/c.bin"), random_bytes(1536 << 10)).unwrap();
    // Not a whole number of blocks: its last block is freed too.
    std::fs::write(
        root.join("alice/notes.bin"),
        random_bytes((1536 << 10) + 1234),
    )
    .unwrap();
    std::fs::write(root.join("alice/keep.bin"), random_bytes(2 << 20)).unwrap();
    std::os::unix::fs::chown(root.join("old/a.bin"), Some(1234), Some(2345)).unwrap();
    std::fs::set_permissions(
        root.join("old/a.bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    for p in [
        "old/a.bin",
        "old/b.txt",
        "old/linked",
        "alice/notes.bin",
        "alice/keep.bin",
    ] {
        age(&t.path(p), 40 * DAY, 40 * DAY);
    }
    let before = sums(root);
    let r = t.tier_out();
    assert_eq!(r["sequence"], 1, "{r}");
    let s = t.status(&[]);
    assert!(states(&s, &t).values().all(|v| v == "archived"), "{s}");

    // The user keeps one file resident whatever the policy says.
    let mut flag = cbfs_tests::cbfs_cmd("cbfs-tier");
    flag.args(["flag", "--store", &t.store])
        .arg("--index")
        .arg(&t.index)
        .arg("--tree")
        .arg(root)
        .arg("--no-release")
        .arg(t.path("alice/keep.bin"));
    cbfs_tests::run_ok(&mut flag);

    // A dry run says what would go and why, and changes nothing.
    let kept_ids: Vec<_> = ["old/a.bin", "old/linked", "alice/notes.bin"]
        .iter()
        .map(|p| (identity(&t.path(p)), allocated(&t.path(p))))
        .collect();
    let out = t.release(&["--older-than", "30d", "--larger-than", "1M", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry = json(&out, "release --dry-run");
    // The hard link's first name (in path order) stands for the inode.
    assert_eq!(
        released(&dry),
        ["alice/notes.bin", "new/linked-too", "old/a.bin"],
        "{dry}"
    );
    let why = dry["released"][0]["reason"].as_str().unwrap();
    assert!(
        why.contains("modified 40 days ago") && why.contains("> 1048576"),
        "{why}"
    );
    for (p, (id, blocks)) in ["old/a.bin", "old/linked", "alice/notes.bin"]
        .iter()
        .zip(&kept_ids)
    {
        assert_eq!(&identity(&t.path(p)), id);
        assert_eq!(allocated(&t.path(p)), *blocks);
        assert!(!is_stub(&t.path(p)));
    }

    // Globs choose by path beneath the tree; an exclusion wins.
    let out = t.release(&[
        "--include",
        "alice/**",
        "--include",
        "old/*.txt",
        "--exclude",
        "**/*.txt",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dry = json(&out, "release --dry-run");
    assert_eq!(released(&dry), ["alice/notes.bin"], "{dry}");
    assert!(
        dry["released"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("matches --include"),
        "{dry}"
    );
    assert!(!is_stub(&t.path("alice/notes.bin")));

    // The release: old files over 1 MiB, but not the flagged one.
    let out = t.release(&["--older-than", "30d", "--larger-than", "1M"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep = json(&out, "release");
    assert_eq!(
        released(&rep),
        ["alice/notes.bin", "new/linked-too", "old/a.bin"],
        "{rep}"
    );
    for (p, (id, blocks)) in ["old/a.bin", "old/linked", "alice/notes.bin"]
        .iter()
        .zip(&kept_ids)
    {
        let path = t.path(p);
        assert_eq!(&identity(&path), id, "{p}: stat must not change");
        assert!(is_stub(&path), "{p} carries a stub record");
        // Nothing of the content is left; the record's block, if it
        // does not fit in the inode, is all a stub holds.
        assert!(
            allocated(&path) <= 4096 && allocated(&path) < *blocks / 16,
            "{p}: {} bytes still on disk (was {blocks})",
            allocated(&path)
        );
        assert!(holds_no_data(&path), "{p}: a stub holds no data");
    }
    // What the stubs still take is reported: their records' blocks, on a
    // file system whose inodes cannot hold them.
    let held: u64 = ["old/a.bin", "old/linked", "alice/notes.bin"]
        .iter()
        .map(|p| allocated(&t.path(p)))
        .sum();
    assert_eq!(rep["stub_bytes"], held, "{rep}");
    // The other name of the hard link is the same stub.
    assert!(is_stub(&t.path("new/linked-too")));
    assert_eq!(
        identity(&t.path("new/linked-too")).ino,
        identity(&t.path("old/linked")).ino
    );
    assert!(!is_stub(&t.path("alice/keep.bin")));
    assert!(!is_stub(&t.path("old/b.txt")));
    assert!(!is_stub(&t.path("new/c.bin")));

    // An incremental run after the release stores nothing.
    let r = t.tier_out();
    assert_eq!(
        (r["files"].as_u64(), r["snapshot"].is_null()),
        (Some(0), true),
        "{r}"
    );
    assert!(r["skipped"].as_array().unwrap().is_empty(), "{r}");

    // Every state, with totals.
    std::fs::write(t.path("new/fresh.txt"), b"never archived").unwrap();
    std::fs::write(t.path("new/c.bin"), random_bytes(1000)).unwrap();
    let s = t.status(&[]);
    let st = states(&s, &t);
    for (p, want) in [
        ("old/a.bin", "released"),
        ("old/linked", "released"),
        ("new/linked-too", "released"),
        ("alice/notes.bin", "released"),
        ("old/b.txt", "archived"),
        ("alice/keep.bin", "archived"),
        ("new/c.bin", "dirty"),
        ("new/fresh.txt", "new"),
    ] {
        assert_eq!(st.get(p).map(String::as_str), Some(want), "{p}: {s}");
    }
    let keep = s["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("alice/keep.bin"))
        .unwrap();
    assert_eq!(keep["no_release"], true, "{keep}");
    assert_eq!(s["totals"]["released"]["files"], 4, "{s}");
    assert_eq!(s["totals"]["new"]["files"], 1, "{s}");
    assert_eq!(s["totals"]["dirty"]["files"], 1, "{s}");
    assert!(
        s["totals"]["released"]["allocated"].as_u64().unwrap() < 64 << 10,
        "{s}"
    );

    // no-archive keeps a file out of the store.
    let mut flag = cbfs_tests::cbfs_cmd("cbfs-tier");
    flag.args(["flag", "--store", &t.store])
        .arg("--index")
        .arg(&t.index)
        .arg("--tree")
        .arg(root)
        .arg("--no-archive")
        .arg(t.path("new/fresh.txt"));
    cbfs_tests::run_ok(&mut flag);
    let r = t.tier_out();
    assert_eq!(r["files"], 2, "only new/c.bin and its folder: {r}");
    assert_eq!(t.state("new/fresh.txt"), "new");
    assert_eq!(t.state("new/c.bin"), "archived");

    // A released file written after its recall is dirty, and archived again.
    let out = t.recall(&["old/a.bin"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sha(&t.path("old/a.bin")), before["old/a.bin"]);
    assert_eq!(t.state("old/a.bin"), "archived");
    std::fs::OpenOptions::new()
        .append(true)
        .open(t.path("old/a.bin"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"appended"))
        .unwrap();
    assert_eq!(t.state("old/a.bin"), "dirty");
    let r = t.tier_out();
    assert_eq!(r["files"], 1, "{r}");
    assert_eq!(t.state("old/a.bin"), "archived");

    // Everything still released recalls to its content. The answer names
    // the stubs the walk found; the resident files beside them are left
    // out.
    let out = t.recall(&["."], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep = json(&out, "recall");
    let files = rep["files"].as_array().unwrap();
    assert!(
        files.iter().all(|f| f["result"]["outcome"] == "recalled"),
        "{rep}"
    );
    let named: std::collections::BTreeSet<String> = files
        .iter()
        .map(|f| {
            let p = f["path"].as_str().unwrap();
            p.strip_prefix(&format!("{}/", root.display()))
                .unwrap_or(p)
                .to_owned()
        })
        .collect();
    assert_eq!(
        named,
        ["alice/notes.bin", "new/linked-too", "old/linked"]
            .map(String::from)
            .into(),
        "the stubs, and no resident file: {rep}"
    );
    let after = sums(root);
    for p in [
        "old/linked",
        "new/linked-too",
        "alice/notes.bin",
        "old/b.txt",
        "alice/keep.bin",
    ] {
        assert_eq!(after[p], before[p], "{p}");
        assert!(!is_stub(&t.path(p)));
    }
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "recalled files are not archived again: {r}");
}

#[test]
fn release_by_policy_frees_blocks_and_keeps_each_files_identity_on_ext4() {
    release_by_policy(FsKind::Ext4);
}

#[test]
fn release_by_policy_frees_blocks_and_keeps_each_files_identity_on_xfs() {
    release_by_policy(FsKind::Xfs);
}

/// `status` gives `rel` this state, with a note that says `note`.
fn assert_state_and_note(t: &Tiered, rel: &str, state: &str, note: &str) {
    let s = t.status(&[rel]);
    assert_eq!(s["files"][0]["state"], state, "{s}");
    assert!(
        s["files"][0]["note"].as_str().unwrap_or("").contains(note),
        "{s}"
    );
}

/// Flips one bit in the middle of the store's newest segment; returns it.
fn flip_a_bit_of_the_newest_segment(t: &Tiered) -> std::path::PathBuf {
    let newest = std::fs::read_dir(Path::new(&t.store).join("segments"))
        .unwrap()
        .flatten()
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .unwrap()
        .path();
    flip_middle_bit(&newest);
    newest
}

/// Flips the bit in the middle of `segment` (a second flip puts it back).
fn flip_middle_bit(segment: &Path) {
    let mut bytes = std::fs::read(segment).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(segment, &bytes).unwrap();
}

#[test]
fn a_recall_fills_the_same_inode_and_a_damaged_copy_is_marked_lost() {
    let t = Tiered::new(FsKind::Ext4, 64);
    std::fs::write(t.path("good.bin"), random_bytes(3 << 20)).unwrap();
    std::fs::set_permissions(
        t.path("good.bin"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    age(&t.path("good.bin"), 5 * DAY, 9 * DAY);
    let good = sha(&t.path("good.bin"));
    t.tier_out();
    // A second run: the next file lands in a segment of its own.
    std::fs::write(t.path("bad.bin"), random_bytes(2 << 20)).unwrap();
    let bad = sha(&t.path("bad.bin"));
    let r = t.tier_out();
    assert_eq!(r["new_segments"], 1, "{r}");
    let id = identity(&t.path("good.bin"));
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(is_stub(&t.path("good.bin")) && is_stub(&t.path("bad.bin")));

    let out = t.recall(&["good.bin"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep = json(&out, "recall");
    assert_eq!(rep["files"][0]["result"]["outcome"], "recalled", "{rep}");
    assert_eq!(sha(&t.path("good.bin")), good);
    assert_eq!(
        identity(&t.path("good.bin")),
        id,
        "same inode, mode and times"
    );
    assert!(!is_stub(&t.path("good.bin")));
    assert_eq!(t.state("good.bin"), "archived");
    // A second recall has nothing to do.
    let out = t.recall(&["good.bin"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let rep = json(&out, "recall");
    assert_eq!(rep["files"][0]["result"]["outcome"], "resident", "{rep}");

    // One bit of bad.bin's member flipped in the store: the newest segment.
    let newest = flip_a_bit_of_the_newest_segment(&t);
    let before = allocated(&t.path("bad.bin"));
    let out = t.recall(&["bad.bin"], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let rep = json(&out, "recall");
    let result = &rep["files"][0]["result"];
    assert_eq!(
        (&result["outcome"], &result["kind"]),
        (&"failed".into(), &"lost".into()),
        "{rep}"
    );
    assert!(
        result["reason"]
            .as_str()
            .unwrap()
            .contains("does not authenticate"),
        "{rep}"
    );
    assert!(is_stub(&t.path("bad.bin")), "the stub stays");
    assert_eq!(allocated(&t.path("bad.bin")), before);
    assert_state_and_note(&t, "bad.bin", "lost", "stored copy bad");
    // Put right in the store, the file recalls and is no longer lost.
    flip_middle_bit(&newest);
    let out = t.recall(&["bad.bin"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sha(&t.path("bad.bin")), bad);
    assert_eq!(t.state("bad.bin"), "archived");
}

/// A recall killed once its stub records are gone and before its journal
/// learns the files' new stats: each file is whole and archived, and the
/// next tier-out stores nothing again.
#[test]
fn a_recall_killed_before_its_journal_entry_leaves_archived_files() {
    let t = Tiered::new(FsKind::Ext4, 64);
    for i in 0..5 {
        std::fs::write(t.path(&format!("f{i}")), random_bytes((1 << 20) + i * 777)).unwrap();
    }
    let before = sums(t.tree());
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for p in before.keys() {
        assert!(is_stub(&t.path(p)), "{p}");
    }
    let ids: BTreeMap<String, u64> = before
        .keys()
        .map(|p| (p.clone(), identity(&t.path(p)).ino))
        .collect();
    let mut cmd = t.recall_cmd(&["."], &[]);
    cmd.env("CBFS_TEST_RECALL_CRASH", "cleared");
    let out = run(&mut cmd);
    assert!(!out.status.success(), "the recall was to die");
    assert!(
        text(&out.stderr).contains("crashing on purpose"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(sums(t.tree()), before, "every file is whole");
    let status = t.status(&[]);
    for p in before.keys() {
        assert!(!is_stub(&t.path(p)), "{p}: its record is gone");
        assert_eq!(identity(&t.path(p)).ino, ids[p], "{p} kept its inode");
    }
    for (p, state) in states(&status, &t) {
        assert_eq!(state, "archived", "{p}: {status}");
    }
    // A file written since is dirty, and the only one stored again; the
    // others release as archived files.
    std::fs::write(t.path("f4"), random_bytes(1 << 20)).unwrap();
    assert_eq!(t.state("f4"), "dirty");
    assert_eq!(t.state("f3"), "archived");
    let r = t.tier_out();
    assert_eq!(r["files"], 1, "{r}");
    assert_eq!(
        r["unchanged"].as_u64(),
        Some(r["scanned"].as_u64().unwrap() - 1),
        "the others are unchanged: {r}"
    );
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for p in before.keys() {
        assert!(is_stub(&t.path(p)), "{p} released again");
    }
}

/// The lines of the recall journal beside the index.
fn journal_lines(t: &Tiered) -> Vec<Value> {
    match std::fs::read_to_string(t.index.join("recalls.journal")) {
        Ok(s) => s
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("the recall journal: {e}"),
    }
}

/// `cbfs-tier recall` leaves what it did in the recall journal: `status`
/// reads it, and the next holder of the index (here a tier-out) takes it
/// in, with nothing stored again. Once the journal has
/// grown past its bound, the recall that finds it so takes it in itself.
#[test]
fn a_recall_leaves_its_journal_to_the_next_holder_of_the_index() {
    let t = Tiered::new(FsKind::Ext4, 64);
    for i in 0..4 {
        std::fs::write(t.path(&format!("f{i}")), random_bytes(100_000 + i * 999)).unwrap();
    }
    let before = sums(t.tree());
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = t.recall(&["."], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sums(t.tree()), before);

    // Two entries per file: that each recall is ending, then its new stat.
    let lines = journal_lines(&t);
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l["recalling"] == true).count(),
        4,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l["recalling"] != true)
            .all(|l| l["stat"]["ino"].is_u64()),
        "{lines:?}"
    );
    let status = t.status(&[]);
    for (p, state) in states(&status, &t) {
        assert_eq!(state, "archived", "{p}: {status}");
    }
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "nothing is stored again: {r}");
    assert!(
        journal_lines(&t).is_empty(),
        "the tier-out took the journal in"
    );

    // A journal past its bound (64 MiB; here of lines that do not parse,
    // as a write cut short leaves them, which a reader skips) is taken in
    // by the recall that finds it so, its own entries with it.
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let journal = t.index.join("recalls.journal");
    let mut junk = b"x".repeat((64 << 20) + 1);
    junk.push(b'\n');
    std::fs::write(&journal, &junk).unwrap();
    let out = t.recall(&["."], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sums(t.tree()), before);
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0);
    let status = t.status(&[]);
    for (p, state) in states(&status, &t) {
        assert_eq!(state, "archived", "{p}: {status}");
    }
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "nothing is stored again: {r}");
}

/// A recall of a folder takes its files in the order of the segments'
/// summaries. A summary that is damaged, or gone, leaves that segment's
/// files in the order listed, and the recall fills every file all the
/// same (the restore beneath it finds the members by reading the segment).
/// 80 files: a recall of 64 or fewer is one pass, and reads no summary.
#[test]
fn a_recall_fills_every_file_when_a_segment_summary_is_damaged_or_gone() {
    let t = Tiered::new(FsKind::Ext4, 64);
    for run in 0..2 {
        for i in 0..40 {
            // Small files share packs; the larger ones are members alone.
            let size = if i % 3 == 0 {
                300_000
            } else {
                20_000 + i * 777
            };
            std::fs::write(t.path(&format!("r{run}-{i:02}")), random_bytes(size)).unwrap();
        }
        t.tier_out();
    }
    let before = sums(t.tree());
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let mut summaries: Vec<std::path::PathBuf> =
        std::fs::read_dir(Path::new(&t.store).join("summaries"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    summaries.sort();
    assert_eq!(summaries.len(), 2, "a segment per run: {summaries:?}");
    std::fs::write(&summaries[0], b"not a summary").unwrap();
    std::fs::remove_file(&summaries[1]).unwrap();
    let out = t.recall(&["."], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep = json(&out, "recall");
    let got = outcomes(&rep, &t);
    assert_eq!(got.len(), 80, "{rep}");
    for (p, (outcome, _)) in &got {
        assert_eq!(outcome, "recalled", "{p}: {rep}");
    }
    assert_eq!(sums(t.tree()), before);
}

/// A recall killed while it fills a stub: the stub stays one, marked as
/// being recalled (its record as it was, its time the fill's), and reads
/// as released, not written: a tier-out stores nothing, a release (even
/// after that tier-out) makes it a plain stub again, and the next recall
/// fills it and takes record and mark away.
#[test]
fn a_recall_killed_mid_fill_leaves_a_marked_stub_the_next_recall_fills() {
    let t = Tiered::new(FsKind::Ext4, 64);
    let data = random_bytes(2 << 20);
    std::fs::write(t.path("big.bin"), &data).unwrap();
    let before = sums(t.tree());
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let released = identity(&t.path("big.bin"));
    let record = xattr::get(t.path("big.bin"), "trusted.cbfs.stub")
        .unwrap()
        .expect("a stub record");
    let empty = allocated(&t.path("big.bin"));

    // Each 64 KiB of the fill takes 100 ms more: time to kill it midway.
    let mut cmd = t.recall_cmd(&["big.bin"], &[]);
    cmd.env("CBFS_TEST_FILL_DELAY_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().expect("cbfs-tier recall");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while allocated(&t.path("big.bin")) <= empty + (64 << 10) {
        assert!(std::time::Instant::now() < deadline, "the fill never began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let p = t.path("big.bin");
    assert_eq!(
        xattr::get(&p, "trusted.cbfs.stub").unwrap().as_ref(),
        Some(&record),
        "the record is left as it was"
    );
    assert!(
        xattr::get(&p, "trusted.cbfs.recall").unwrap().is_some(),
        "the stub is marked as being recalled"
    );
    let now = identity(&p);
    assert_eq!(now.ino, released.ino);
    assert_ne!(now.mtime, released.mtime, "the fill moved its time");
    let status = t.status(&["big.bin"]);
    assert_eq!(status["files"][0]["state"], "released", "{status}");
    assert!(
        status["files"][0]["note"]
            .as_str()
            .is_some_and(|n| n.contains("recall of it was cut short")),
        "{status}"
    );
    // A tier-out takes it for the archived version, not a written file
    // (and the index, its stat as it is).
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "nothing is stored: {r}");
    // Not while another process has it open: that process keeps the
    // bytes it may be reading.
    let held = std::fs::File::open(&p).unwrap();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        xattr::get(&p, "trusted.cbfs.recall").unwrap().is_some(),
        "kept as it was while in use"
    );
    assert!(allocated(&p) > empty, "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("in use"),
        "{}",
        text(&out.stderr)
    );
    drop(held);
    // A release finishes it as a stub again: what the fill wrote is
    // dropped, the time is the archived one, and the mark is gone.
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        xattr::get(&p, "trusted.cbfs.stub").unwrap().as_ref(),
        Some(&record)
    );
    assert!(xattr::get(&p, "trusted.cbfs.recall").unwrap().is_none());
    assert_eq!(identity(&p).mtime, released.mtime);
    assert!(allocated(&p) <= empty, "the fill's blocks are freed");
    assert_eq!(t.state("big.bin"), "released");
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "nothing is stored: {r}");

    let out = t.recall(&["big.bin"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(sums(t.tree()), before, "the file is whole");
    assert!(!is_stub(&p));
    assert!(
        xattr::get(&p, "trusted.cbfs.recall").unwrap().is_none(),
        "the mark is gone"
    );
    assert_eq!(
        identity(&p).mtime,
        released.mtime,
        "its time is the archived one"
    );
    assert_eq!(t.state("big.bin"), "archived");
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "nothing is stored again: {r}");
}

/// Files removed while a recall of their folder is under way, before the
/// pass that holds them opens them, are reported gone; the recall goes on
/// and fills every other stub.
#[test]
fn a_file_removed_while_its_folder_is_recalled_is_gone_and_the_others_are_filled() {
    const N: usize = 200;
    let t = Tiered::new(FsKind::Ext4, 64);
    std::fs::create_dir(t.path("d")).unwrap();
    for i in 0..N {
        std::fs::write(t.path(&format!("d/f{i:03}")), random_bytes(64 << 10)).unwrap();
    }
    let before = sums(t.tree());
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // A stub's blocks: its record's, if it has a block of its own.
    let empty: Vec<u64> = (0..N)
        .map(|i| allocated(&t.path(&format!("d/f{i:03}"))))
        .collect();

    // Few descriptors make small passes (a pass holds one per file; 256
    // are kept for the rest): with two cores, four workers and two passes
    // open each, 32 files at most, and 25 a pass make two whole rounds of
    // eight passes; with four or more, eight workers, 16 at most, and 13 a
    // pass two rounds of 16. Either way passes open only once a first one
    // is filled, which takes 0.65 s or more (each 64 KiB filled takes
    // 50 ms more).
    let cmd = t.recall_cmd(&["d"], &[]);
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c")
        .arg("ulimit -n 512 && exec \"$@\"")
        .arg("sh")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(
            cmd.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("CBFS_TEST_FILL_DELAY_MS", "50")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = sh.spawn().expect("cbfs-tier recall");
    let pid = child.id();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(0..N).any(|i| allocated(&t.path(&format!("d/f{i:03}"))) > empty[i] + (32 << 10)) {
        assert!(std::time::Instant::now() < deadline, "the fill never began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The files no pass holds open yet (a first pass may still be opening
    // its files).
    let open: std::collections::BTreeSet<std::path::PathBuf> =
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .collect();
    let mut removed = Vec::new();
    for i in 0..N {
        let rel = format!("d/f{i:03}");
        if !open.contains(&std::fs::canonicalize(t.path(&rel)).unwrap()) {
            std::fs::remove_file(t.path(&rel)).unwrap();
            removed.push(rel);
        }
    }
    assert!(
        !removed.is_empty() && removed.len() < N,
        "some files, not all, wait for a later pass: {} of {N}",
        removed.len()
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = outcomes(&rep, &t);
    // A file a pass opened between the look and its removal was filled
    // (under no name): recalled. The others are gone.
    for rel in &removed {
        assert!(
            ["gone", "recalled"].contains(&got[rel].0.as_str()),
            "{rel}: {rep}"
        );
    }
    assert!(
        removed.iter().any(|rel| got[rel].0 == "gone"),
        "the files of the later passes are gone: {rep}"
    );
    let left: BTreeMap<String, String> = before
        .into_iter()
        .filter(|(p, _)| !removed.contains(p))
        .collect();
    assert_eq!(sums(t.tree()), left, "every other file is whole");
    for rel in left.keys() {
        assert_eq!(got[rel].0, "recalled", "{rel}: {rep}");
        assert!(!is_stub(&t.path(rel)), "{rel}");
    }
}

/// The result of each path of a recall report, by its name beneath the
/// tree: (outcome, failure kind).
fn outcomes(rep: &Value, t: &Tiered) -> BTreeMap<String, (String, String)> {
    rep["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let rel = Path::new(f["path"].as_str().unwrap())
                .strip_prefix(t.tree())
                .unwrap()
                .display()
                .to_string();
            let r = &f["result"];
            let kind = r["kind"].as_str().unwrap_or("").to_owned();
            (rel, (r["outcome"].as_str().unwrap().to_owned(), kind))
        })
        .collect()
}

#[test]
fn a_recall_of_many_files_fills_the_good_ones_when_one_stored_copy_is_bad() {
    let t = Tiered::new(FsKind::Ext4, 64);
    std::fs::create_dir_all(t.path("d")).unwrap();
    let mut want = BTreeMap::new();
    for (p, n) in [("a.bin", 1 << 20), ("d/b.bin", 700_001), ("d/c.txt", 300)] {
        std::fs::write(t.path(p), random_bytes(n)).unwrap();
        want.insert(p, sha(&t.path(p)));
    }
    std::fs::hard_link(t.path("a.bin"), t.path("d/a-too.bin")).unwrap();
    t.tier_out();
    // A second run: this file lands in a segment of its own.
    std::fs::write(t.path("d/bad.bin"), random_bytes(2 << 20)).unwrap();
    let r = t.tier_out();
    assert_eq!(r["new_segments"], 1, "{r}");
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for p in ["a.bin", "d/a-too.bin", "d/b.bin", "d/c.txt", "d/bad.bin"] {
        assert!(is_stub(&t.path(p)), "{p}");
    }
    let ids: BTreeMap<_, _> = want.keys().map(|p| (*p, identity(&t.path(p)))).collect();

    // One bit of the second segment flipped in the store.
    let newest = flip_a_bit_of_the_newest_segment(&t);

    // One command recalls the whole tree in one pass: each good file is
    // back, both names of the hard link say so, and only the file whose
    // stored copy is bad fails (exit 4), marked lost, its stub intact.
    let out = t.recall(&["."], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let rep = json(&out, "recall");
    let got = outcomes(&rep, &t);
    let recalled = ("recalled".to_owned(), String::new());
    for p in ["a.bin", "d/a-too.bin", "d/b.bin", "d/c.txt"] {
        assert_eq!(got.get(p), Some(&recalled), "{p}: {rep}");
    }
    assert_eq!(
        got.get("d/bad.bin"),
        Some(&("failed".to_owned(), "lost".to_owned())),
        "{rep}"
    );
    for (p, sum) in &want {
        assert_eq!(&sha(&t.path(p)), sum, "{p}");
        assert_eq!(identity(&t.path(p)), ids[p], "{p}: same inode and times");
        assert!(!is_stub(&t.path(p)), "{p}");
        assert_eq!(t.state(p), "archived", "{p}");
    }
    assert_eq!(sha(&t.path("d/a-too.bin")), want["a.bin"]);
    assert!(is_stub(&t.path("d/bad.bin")), "the stub stays");
    assert_eq!(t.state("d/bad.bin"), "lost");
    // Nothing recalled is archived again.
    flip_middle_bit(&newest);
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "{r}");
}

#[test]
fn a_stub_written_with_no_watch_running_is_dirty_and_never_archived() {
    let t = Tiered::new(FsKind::Ext4, 32);
    std::fs::write(t.path("f.bin"), random_bytes(1 << 20)).unwrap();
    t.tier_out();
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(t.state("f.bin"), "released");
    // No fault-in handler watches the tree: a write in place (the size
    // stays) lands among the stub's holes, and the content is not the
    // archived one any more.
    std::fs::OpenOptions::new()
        .write(true)
        .open(t.path("f.bin"))
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"head", 0))
        .unwrap();
    assert_state_and_note(&t, "f.bin", "dirty", "written while released");
    // A run never stores those zeros: it skips the file and says why.
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "{r}");
    let skipped = r["skipped"].to_string();
    assert!(
        skipped.contains("f.bin") && skipped.contains("cbfs-tier recall"),
        "{r}"
    );
    assert!(is_stub(&t.path("f.bin")), "the record stays");
}

#[test]
fn a_file_another_process_has_open_stays_resident() {
    let t = Tiered::new(FsKind::Ext4, 32);
    let data = random_bytes(1 << 20);
    std::fs::write(t.path("busy.bin"), &data).unwrap();
    std::fs::write(t.path("idle.bin"), &data).unwrap();
    t.tier_out();
    // This process holds busy.bin open: the release must not take it.
    let held = std::fs::File::open(t.path("busy.bin")).unwrap();
    let blocks = allocated(&t.path("busy.bin"));
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    let rep = json(&out, "release");
    assert_eq!(released(&rep), ["idle.bin"], "{rep}");
    let kept = &rep["kept"][0];
    assert!(
        kept["path"].as_str().unwrap().ends_with("busy.bin")
            && kept["reason"].as_str().unwrap().contains("in use"),
        "{rep}"
    );
    assert!(!is_stub(&t.path("busy.bin")));
    assert_eq!(allocated(&t.path("busy.bin")), blocks);
    let mut read = Vec::new();
    std::io::Read::read_to_end(&mut &held, &mut read).unwrap();
    assert!(read == data, "the holder reads the file's own bytes");
    assert_eq!(t.state("busy.bin"), "archived");
    // Closed, it goes with the next release; the file released already
    // is no concern of it.
    drop(held);
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let rep = json(&out, "release");
    assert_eq!(released(&rep), ["busy.bin"], "{rep}");
    assert_eq!(rep["kept"].as_array().map(Vec::len), Some(0), "{rep}");
    assert!(is_stub(&t.path("busy.bin")));

    // `status` in words: a line per file, then the totals per state.
    let mut status = cbfs_tests::cbfs_cmd("cbfs-tier");
    status
        .args(["status", "--store", &t.store])
        .arg("--index")
        .arg(&t.index)
        .arg("--tree")
        .arg(t.tree());
    let said = text(&cbfs_tests::run_ok(&mut status).stdout);
    for name in ["busy.bin", "idle.bin"] {
        assert!(
            said.lines()
                .any(|l| l.starts_with("released ") && l.ends_with(name)),
            "{said}"
        );
    }
    assert!(
        said.lines()
            .any(|l| l.starts_with("total released  2 files, 2097152 bytes, ")),
        "{said}"
    );
}

#[test]
fn until_free_releases_the_least_recently_used_first() {
    // Mounted noatime: the tier-out's reads leave the access times the
    // test sets.
    let t = Tiered::with_options(FsKind::Ext4, 64, "loop,noatime");
    // Six files of 7 MiB, read longest ago first: f0 ... f5.
    for i in 0..6u64 {
        let p = t.path(&format!("f{i}"));
        std::fs::write(&p, random_bytes(7 << 20)).unwrap();
        age(&p, (10 - i) * DAY, 20 * DAY);
    }
    t.tier_out();
    let free: f64 = {
        let out = t.release(&["--until-free", "1%", "--dry-run"]);
        json(&out, "dry run")["free_before"].as_f64().unwrap()
    };
    // Enough to need about three files back.
    let target = free + 3.0 * 7.0 * 100.0 / 64.0 - 2.0;
    let want = format!("{target:.1}%");
    let out = t.release(&["--until-free", &want, "--atime", "--dry-run"]);
    let dry = json(&out, "dry run");
    let dry_list = released(&dry);
    assert!(!dry_list.is_empty(), "{dry}");
    for i in 0..6 {
        assert!(
            !is_stub(&t.path(&format!("f{i}"))),
            "a dry run changes nothing"
        );
    }
    let out = t.release(&["--until-free", &want, "--atime"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let rep = json(&out, "release");
    let list = released(&rep);
    let n = list.len();
    assert!((2..6).contains(&n), "{rep}");
    let lru: Vec<String> = (0..n).map(|i| format!("f{i}")).collect();
    assert_eq!(list, lru, "least recently read first: {rep}");
    assert_eq!(dry_list, lru, "the dry run said the same");
    assert!(rep["free_after"].as_f64().unwrap() >= target, "{rep}");
    assert!(
        rep["released"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("least recently used")
    );
    // Already free enough: nothing more goes.
    let out = t.release(&["--until-free", &want, "--atime"]);
    assert!(released(&json(&out, "release")).is_empty());
}

/// Archives a tree of six files, kills a release at `point`, and checks
/// that each file is whole or a valid stub that recalls to its content;
/// then the next release finishes the job.
fn release_killed_at(point: &str) {
    let t = Tiered::new(FsKind::Ext4, 64);
    for i in 0..6 {
        std::fs::write(t.path(&format!("f{i}")), random_bytes((1 << 20) + i * 4099)).unwrap();
    }
    let before = sums(t.tree());
    t.tier_out();
    let ids: BTreeMap<String, u64> = before
        .keys()
        .map(|p| (p.clone(), identity(&t.path(p)).ino))
        .collect();
    let out = t.release(&["--crash-at", point]);
    assert!(!out.status.success(), "release was to die at {point}");
    assert!(
        text(&out.stderr).contains("crashing on purpose"),
        "{point}: {}",
        text(&out.stderr)
    );
    let mut stubs = 0;
    for (p, want) in &before {
        let path = t.path(p);
        assert_eq!(identity(&path).ino, ids[p], "{point}: {p} kept its inode");
        if is_stub(&path) {
            stubs += 1;
            let s = t.status(&[p]);
            assert_eq!(s["files"][0]["state"], "released", "{point}: {p}: {s}");
        } else {
            assert_eq!(&sha(&path), want, "{point}: {p} is whole");
        }
    }
    assert!(
        stubs >= 1,
        "{point}: the release died after its first record"
    );
    // Every stub recalls to its content...
    let out = t.recall(&["."], &[]);
    assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out.stderr));
    assert_eq!(sums(t.tree()), before, "{point}");
    // ... and a new release finishes the job.
    let out = t.release(&[]);
    assert_eq!(out.status.code(), Some(0), "{point}: {}", text(&out.stderr));
    for p in before.keys() {
        assert!(is_stub(&t.path(p)), "{point}: {p}");
    }
    let r = t.tier_out();
    assert_eq!(r["files"], 0, "{point}: {r}");
}

#[test]
fn release_killed_at_every_step_leaves_whole_files_or_valid_stubs() {
    for point in [
        "record:1",
        "punch:1",
        "released:1",
        "record:3",
        "punch:4",
        "released:6",
    ] {
        release_killed_at(point);
    }
}

/// A release killed with SIGKILL at random moments, many times over:
/// whatever it was doing, each file is whole or a valid stub.
#[test]
fn release_killed_at_random_moments_leaves_whole_files_or_valid_stubs() {
    let t = Tiered::new(FsKind::Ext4, 128);
    for i in 0..40 {
        std::fs::write(
            t.path(&format!("f{i:02}")),
            random_bytes(300_000 + i * 1001),
        )
        .unwrap();
    }
    let before = sums(t.tree());
    t.tier_out();
    for round in 0..8u64 {
        let mut cmd = cbfs_tests::cbfs_cmd("cbfs-tier");
        cmd.args(["release", "--store", &t.store])
            .arg("--index")
            .arg(&t.index)
            .arg("--tree")
            .arg(t.tree())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let mut child = cmd.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(40 + round * 37));
        let _ = child.kill();
        let _ = child.wait();
        for (p, want) in &before {
            let path = t.path(p);
            if !is_stub(&path) {
                assert_eq!(&sha(&path), want, "round {round}: {p} is whole");
            }
        }
        let s = t.status(&[]);
        for f in s["files"].as_array().unwrap() {
            let state = f["state"].as_str().unwrap();
            assert!(
                state == "released" || state == "archived",
                "round {round}: {f}"
            );
        }
        // Half the rounds recall everything again.
        if round % 2 == 1 {
            let out = t.recall(&["."], &[]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            assert_eq!(sums(t.tree()), before, "round {round}");
        }
    }
}
