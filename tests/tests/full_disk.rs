//! A full disk under each place cbfs writes, each a small ext4 file system
//! the test makes and fills: the store (a local directory store), the
//! agent's spool (in its index folder), the target of `cbfs-tier restore`
//! and `cbfs-recover`, and the collector's spool. Each run that meets the
//! full disk exits 7 and names the object or file it could not write;
//! nothing committed is lost (the store verifies, the last good snapshot
//! restores bit for bit, no partly written file or object is left under
//! its name); and the run after space is freed succeeds. (A full disk
//! under the index database itself: `tier_security.rs`.)

#[path = "gc/env.rs"]
mod env;

use std::path::{Path, PathBuf};
use std::process::Command;

use cbfs_tests::{
    Backend, Compare, FsKind, LoopFs, Workdir, assert_same_tree, cbfs_cmd, random_bytes, run,
};
use env::{Env, stderr};
use serde_json::Value;

/// The size of the small file systems of the store and the agent's spool.
const DISK_MIB: u64 = 32;
/// The size of the restore target's: the whole tree fits, once emptied.
const TARGET_MIB: u64 = 48;

/// Every regular file below `root`, relative to it.
fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// No write of the store was left half done under any name: no staging
/// file of a local write (`NAME#DIGITS`), no partial download, nothing in
/// the staging area.
fn assert_no_partial_objects(store: &Path) {
    for f in files_under(store) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let staging = name
            .rsplit_once('#')
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        assert!(
            !staging && !name.contains(".cbfs-partial") && !f.starts_with(".cbfs-staging"),
            "a partly written object is left in the store: {}",
            f.display()
        );
    }
}

/// Every file a failed restore left in `dest` is whole: the same bytes as
/// in `expected` (a partly written file is never left under its name), and
/// no temporary file is left either. Returns how many there are.
fn assert_only_whole_files(dest: &Path, expected: &Path) -> usize {
    if !dest.exists() {
        return 0;
    }
    let files = files_under(dest);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.starts_with(".cbfs-recover-") && !name.ends_with(".partial"),
            "a temporary file is left: {}",
            f.display()
        );
        let want = std::fs::read(expected.join(f))
            .unwrap_or_else(|e| panic!("{} is no file of the snapshot: {e}", f.display()));
        let got = std::fs::read(dest.join(f)).unwrap();
        assert!(
            got == want,
            "{} is left under its name with {} of its {} bytes, or other bytes",
            f.display(),
            got.len(),
            want.len()
        );
    }
    files.len()
}

/// The store verifies and each snapshot the test knows the tree of
/// restores bit for bit with `cbfs-tier restore` (and `snap` with
/// `cbfs-recover` too).
fn assert_store_whole(env: &Env, snap: u64) {
    env.verify();
    let listed = env.sequences();
    for (seq, _) in env.states.iter().filter(|(s, _)| listed.contains(s)) {
        env.assert_restores(*seq);
    }
    env.assert_recovers(snap);
}

/// Fills `fs` but for 4 MiB, adds `big` files of `size` bytes that cannot
/// be compressed to the tree, and runs the agent: it exits 7 (its JSON
/// says so too). Returns what it said on stderr, and the filler.
fn out_on_a_full_disk(env: &mut Env, fs: &LoopFs, big: usize, size: usize) -> (String, PathBuf) {
    let filler = fs.fill(4 << 20);
    env.change(6, big, size);
    let out = run(&mut env.tier_cmd());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {err}"));
    assert_eq!(v["exit_code"], 7, "{v}");
    (err, filler)
}

/// Frees the disk again (removes `filler`): the next run succeeds with a
/// snapshot after `first`, which restores bit for bit.
fn out_with_space(env: &mut Env, filler: &Path, first: u64) -> u64 {
    std::fs::remove_file(filler).unwrap();
    let r = env.tier();
    let last = r["sequence"].as_u64().unwrap_or_else(|| panic!("{r:#}"));
    assert!(last > first, "{r:#}");
    assert_eq!(env.sequences().last(), Some(&last));
    assert_store_whole(env, last);
    last
}

#[test]
fn a_full_store_disk_is_exit_7_naming_the_object_and_the_run_with_space_succeeds() {
    // Dropped last: the file system holds the store until the end.
    let disk = Workdir::new();
    let fs = LoopFs::new(&disk, "store-disk", FsKind::Ext4, DISK_MIB);
    let store = fs.dir().join("store");
    let mut env = Env::new(0xf011, 24, |_| Backend::Local(store.clone()));
    let first = env.tier()["sequence"].as_u64().unwrap();

    // 12 MiB that cannot be compressed, with 4 MiB left on the disk.
    let (err, filler) = out_on_a_full_disk(&mut env, &fs, 3, 4 << 20);
    eprintln!("a full store disk: {err}");
    assert!(
        err.contains(&format!(
            "local directory {}: no space to put \"",
            store.display()
        )) && err.contains("No space left on device")
            && err.contains("free some space and try again"),
        "the error names the store and the object: {err}"
    );
    // No snapshot names what did not get out, nothing is half written, and
    // what was committed before still restores, while the disk is full.
    assert_eq!(env.sequences(), vec![first]);
    assert_no_partial_objects(&store);
    assert_store_whole(&env, first);

    // With space again the next run finishes the job.
    out_with_space(&mut env, &filler, first);
    assert_no_partial_objects(&store);
}

#[test]
fn a_full_spool_disk_is_exit_7_naming_the_spool_and_the_run_with_space_succeeds() {
    let disk = Workdir::new();
    let fs = LoopFs::new(&disk, "index-disk", FsKind::Ext4, DISK_MIB);
    let mut env = Env::local(0xf012, 24);
    // The agent spools its segments in its index folder.
    env.index = fs.dir().join("index");
    let first = env.tier()["sequence"].as_u64().unwrap();

    // Files of 6 MiB, each a segment of its own, with 4 MiB left.
    let (err, filler) = out_on_a_full_disk(&mut env, &fs, 2, 6 << 20);
    eprintln!("a full spool disk: {err}");
    assert!(
        err.contains(&format!("{}/", env.index.display()))
            && err.contains("out of space")
            && err.contains("nothing committed was lost"),
        "the error names the spool or the index: {err}"
    );
    // Reading the store needs no room on that disk.
    assert_eq!(env.sequences(), vec![first]);
    assert_store_whole(&env, first);

    out_with_space(&mut env, &filler, first);
    // The spools of both runs are gone.
    let spool = env.index.join("spool");
    assert!(
        !spool.exists() || files_under(&spool).is_empty(),
        "{:?}",
        files_under(&spool)
    );
}

/// `cbfs-recover` of snapshot `seq` with the root secret into `to` (`flag`:
/// `-C` for a directory, `-o` for a tar file): its exit code, and what it
/// said on stderr.
fn recover(env: &Env, seq: u64, flag: &str, to: &Path) -> (Option<i32>, String) {
    let out = run(cbfs_cmd("cbfs-recover")
        .arg("--identity")
        .arg(env.keys.admin())
        .args(["--store", &env.backend.spec()])
        .args(["--snapshot", &seq.to_string(), flag])
        .arg(to));
    (out.status.code(), stderr(&out))
}

/// What a filled file system holds besides its filler.
fn besides_filler(fs: &LoopFs) -> Vec<PathBuf> {
    files_under(fs.dir())
        .into_iter()
        .filter(|f| !f.starts_with("lost+found") && f != Path::new("filler"))
        .collect()
}

#[test]
fn a_full_restore_target_is_exit_7_naming_each_file_and_leaves_only_whole_files() {
    let mut env = Env::local(0xf013, 24);
    env.change(4, 3, 3 << 20);
    let seq = env.tier()["sequence"].as_u64().unwrap();
    let state = env.states[&seq].clone();
    let disk = Workdir::new();
    let fs = LoopFs::new(&disk, "restore-disk", FsKind::Ext4, TARGET_MIB);
    // Room for part of the tree only.
    let filler = fs.fill(5 << 20);

    // cbfs-tier restore: every file it could not write is a failure of its
    // own, naming the file; each is the full disk, so the exit code is 7.
    let tier_dest = fs.dir().join("tier");
    let out = run(&mut env.restore_cmd(seq, &tier_dest));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failures = report["failures"].as_array().unwrap();
    assert!(!failures.is_empty(), "{report:#}");
    for f in failures {
        let path = f["path"].as_str().unwrap_or_else(|| panic!("{f}"));
        let error = f["error"].as_str().unwrap();
        assert_eq!(f["code"], "no_space", "{f}");
        assert!(
            error.contains(path) && error.contains("No space left on device"),
            "{f}"
        );
    }
    let whole = assert_only_whole_files(&tier_dest, &state);
    assert!(whole < files_under(&state).len(), "the disk did not fill");
    std::fs::remove_dir_all(&tier_dest).unwrap();

    // cbfs-recover into a directory: the same, in words.
    let recover_dest = fs.dir().join("recover");
    let (code, err) = recover(&env, seq, "-C", &recover_dest);
    assert_eq!(code, Some(7), "{err}");
    eprintln!("cbfs-recover -C on a full disk:\n{err}");
    let failed: Vec<&str> = err.lines().filter(|l| l.contains("FAILED")).collect();
    assert!(!failed.is_empty(), "{err}");
    for l in &failed {
        assert!(
            l.contains("[no_space]: cannot write ") && l.contains("No space left on device"),
            "{err}"
        );
    }
    assert!(err.contains("the output's disk is full"), "{err}");
    assert_only_whole_files(&recover_dest, &state);
    std::fs::remove_dir_all(&recover_dest).unwrap();

    // cbfs-recover to a tar file: nothing is kept, not even a temporary.
    let tar = fs.dir().join("out.tar");
    let (code, err) = recover(&env, seq, "-o", &tar);
    eprintln!("cbfs-recover -o on a full disk: {err}");
    assert_eq!(code, Some(7), "{err}");
    assert!(
        err.contains("nothing was kept") && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(besides_filler(&fs), Vec::<PathBuf>::new());

    // With space, the same commands restore the whole tree bit for bit.
    std::fs::remove_file(&filler).unwrap();
    let out = run(&mut env.restore_cmd(seq, &tier_dest));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_same_tree(&state, &tier_dest, Compare::default());
    std::fs::remove_dir_all(&tier_dest).unwrap();
    let (code, err) = recover(&env, seq, "-C", &recover_dest);
    assert_eq!(code, Some(0), "{err}");
    assert_same_tree(&state, &recover_dest, Compare::default());
}

/// `cbfs-gc` spooling its new segments in `spool`, compacting segments
/// less than 90% live.
fn gc_cmd(env: &Env, spool: &Path) -> Command {
    let mut c = cbfs_cmd("cbfs-gc");
    c.args(["--json", "--store", &env.backend.spec()])
        .arg("--keyset")
        .arg(env.keys.keyset())
        .args(["--grace", "0s", "--min-live", "90", "--spool"])
        .arg(spool);
    c
}

#[test]
fn a_full_collector_spool_stops_it_with_exit_7_and_the_store_stays_whole() {
    let mut env = Env::local(0xf014, 10);
    // Segments of four files each.
    env.segment_size = "2M";
    let big: Vec<PathBuf> = (0..8)
        .map(|i| env.src.join(format!("big-{i}.bin")))
        .collect();
    for p in &big {
        std::fs::write(p, random_bytes(512 << 10)).unwrap();
    }
    env.tier();
    // Every other one replaced: their segments are half live.
    for p in big.iter().step_by(2) {
        std::fs::write(p, random_bytes(512 << 10)).unwrap();
    }
    let kept = env.tier()["sequence"].as_u64().unwrap();
    env.forget(&["--keep-last", "1"]);

    let disk = Workdir::new();
    let fs = LoopFs::new(&disk, "spool-disk", FsKind::Ext4, 16);
    let filler = fs.fill(0);
    let out = run(&mut gc_cmd(&env, fs.dir()));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(7), "{err}");
    eprintln!("cbfs-gc on a full spool disk: {err}");
    assert!(
        err.contains(&format!(
            "cannot write the segment spool {}",
            fs.dir().display()
        )) && err.contains("No space left on device"),
        "the error names the spool: {err}"
    );
    // Its spool file went with it.
    assert_eq!(besides_filler(&fs), Vec::<PathBuf>::new());
    assert_store_whole(&env, kept);

    // With space it compacts, and the kept snapshot still restores.
    std::fs::remove_file(&filler).unwrap();
    let out = run(&mut gc_cmd(&env, fs.dir()));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &r["compaction"];
    assert!(c["segments_written"].as_u64().unwrap() >= 1, "{r:#}");
    assert_eq!(c["failed"], serde_json::json!([]), "{r:#}");
    assert_store_whole(&env, kept);
}
