//! Crash safety: a run killed at any point loses nothing committed, and a
//! rerun finishes the job. Every committed snapshot must come back whole.

use std::path::{Path, PathBuf};
use std::process::Command;

use cbfs_tests::{Compare, TreeGen, Workdir, assert_same_tree, cbfs_cmd, run, run_ok};
use serde_json::Value;

struct Setup {
    work: Workdir,
    src: PathBuf,
    store: PathBuf,
    index: PathBuf,
    keys: PathBuf,
}

fn setup(seed: u64) -> (Setup, TreeGen) {
    let work = Workdir::new();
    let keys = work.mkdir("keys");
    run_ok(cbfs_cmd("cbfs-keytool").current_dir(&keys).args([
        "create-user",
        "agent",
        "--secret",
        "file:agent.key",
        "--public",
        "agent.pub",
    ]));
    run_ok(cbfs_cmd("cbfs-keytool").current_dir(&keys).args([
        "create-admin",
        "--fs",
        "crash",
        "--secret",
        "file:admin.key",
        "--keyset",
        "keyset.json",
        "--writer",
        "agent.pub",
    ]));
    let src = work.path("src");
    let mut tree = TreeGen::new(&src, seed);
    tree.populate(30);
    let s = Setup {
        store: work.path("store"),
        index: work.path("index"),
        src,
        keys,
        work,
    };
    (s, tree)
}

fn out_cmd(s: &Setup, crash: Option<&str>) -> Command {
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.arg("--json")
        .arg("out")
        .arg(&s.src)
        .arg("--store")
        .arg(&s.store)
        .arg("--index")
        .arg(&s.index)
        .arg("--keyset")
        .arg(s.keys.join("keyset.json"))
        .arg("--writer-key")
        .arg(format!("file:{}", s.keys.join("agent.key").display()))
        .args(["--segment-size", "64K", "--jobs", "1"]);
    if let Some(c) = crash {
        cmd.args(["--crash-at", c]);
    }
    cmd
}

fn tier(s: &Setup) -> Value {
    serde_json::from_slice(&run_ok(&mut out_cmd(s, None)).stdout).unwrap()
}

fn crash(s: &Setup, point: &str) {
    let out = run(&mut out_cmd(s, Some(point)));
    assert!(!out.status.success(), "the run was to die at {point}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("crashing on purpose"),
        "died for another reason at {point}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn assert_snapshot(s: &Setup, seq: u64, expected: &Path) {
    let tar = s.work.path(format!("s{seq}.tar"));
    let _ = std::fs::remove_file(&tar);
    run_ok(
        cbfs_cmd("cbfs-recover")
            .arg("--identity")
            .arg(format!("file:{}", s.keys.join("admin.key").display()))
            .arg("--store")
            .arg(&s.store)
            .args(["--snapshot", &seq.to_string(), "-o"])
            .arg(&tar),
    );
    let dest = s.work.path(format!("restored-{seq}"));
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).unwrap();
    run_ok(
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&tar)
            .arg("-C")
            .arg(&dest),
    );
    assert_same_tree(expected, &dest, Compare::default());
}

fn sequences(s: &Setup) -> Vec<u64> {
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "snapshots", "--store"])
            .arg(&s.store)
            .arg("--index")
            .arg(&s.index),
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["sequence"].as_u64().unwrap())
        .collect()
}

/// Crash in the second run, rerun, check both snapshots.
fn crash_in_second_run(point: &str) {
    let (s, mut tree) = setup(point.len() as u64 * 31 + 5);
    let state1 = s.work.path("state1");
    tree.copy_to(&state1);
    assert_eq!(tier(&s)["sequence"], 1);
    tree.update(12);
    // Enough incompressible data for several 64 KiB segments.
    for name in ["0-a.bin", "0-b.bin", "0-c.bin"] {
        std::fs::write(s.src.join(name), cbfs_tests::random_bytes(100_000)).unwrap();
    }
    let state2 = s.work.path("state2");
    tree.copy_to(&state2);
    crash(&s, point);
    // What was committed before the crash is intact.
    assert_snapshot(&s, 1, &state1);
    let r = tier(&s);
    assert!(r["skipped"].as_array().unwrap().is_empty(), "{r}");
    let seqs = sequences(&s);
    assert_eq!(seqs.first(), Some(&1));
    let last = *seqs.last().unwrap();
    assert!(last >= 2, "the rerun made the second snapshot: {seqs:?}");
    assert_snapshot(&s, 1, &state1);
    assert_snapshot(&s, last, &state2);
    // And a third run finds nothing to do.
    let again = tier(&s);
    assert_eq!(again["files"], 0, "{again}");
    assert!(again["snapshot"].is_null(), "{again}");
}

/// Crash in the very first run, rerun, check the snapshot.
fn crash_in_first_run(point: &str) {
    let (s, tree) = setup(point.len() as u64 * 17 + 3);
    let state = s.work.path("state");
    tree.copy_to(&state);
    crash(&s, point);
    let r = tier(&s);
    assert!(r["skipped"].as_array().unwrap().is_empty(), "{r}");
    let seqs = sequences(&s);
    assert_snapshot(&s, *seqs.last().unwrap(), &state);
}

macro_rules! crash_tests {
    ($($name:ident: $f:ident($point:literal);)*) => {
        $(#[test] fn $name() { $f($point); })*
    };
}

crash_tests! {
    first_run_after_segment_1: crash_in_first_run("segment:1");
    first_run_after_lockboxes_1: crash_in_first_run("lockboxes:1");
    first_run_after_summary_2: crash_in_first_run("summary:2");
    first_run_after_commit_1: crash_in_first_run("commit:1");
    first_run_after_manifest: crash_in_first_run("manifest");
    second_run_after_segment_1: crash_in_second_run("segment:1");
    second_run_after_lockboxes_1: crash_in_second_run("lockboxes:1");
    second_run_after_summary_1: crash_in_second_run("summary:1");
    second_run_after_commit_1: crash_in_second_run("commit:1");
    second_run_after_segment_2: crash_in_second_run("segment:2");
    second_run_after_commit_2: crash_in_second_run("commit:2");
    second_run_after_manifest: crash_in_second_run("manifest");
}

/// The method of the design notes: a series of updates, each tiered out;
/// random states are brought back and must match their checksums.
#[test]
fn update_series_every_state_comes_back() {
    let (s, mut tree) = setup(2016);
    let mut states = Vec::new();
    for round in 0..6 {
        if round > 0 {
            tree.update(8);
        }
        let copy = s.work.path(format!("state-{round}"));
        tree.copy_to(&copy);
        let checksum = cbfs_tests::checksum(&copy, Compare::default());
        let r = tier(&s);
        let seq = r["sequence"]
            .as_u64()
            .unwrap_or_else(|| panic!("round {round} made no snapshot: {r}"));
        states.push((seq, copy, checksum));
    }
    // Bring back states in a scrambled order, through GNU tar and bsdtar.
    for i in [3usize, 0, 5, 1, 4, 2] {
        let (seq, copy, checksum) = &states[i];
        assert_snapshot(&s, *seq, copy);
        let dest = s.work.path(format!("restored-{seq}"));
        assert_eq!(
            &cbfs_tests::checksum(&dest, Compare::default()),
            checksum,
            "state {i} (snapshot {seq})"
        );
        let bsd = s.work.path(format!("bsdtar-{seq}"));
        std::fs::create_dir_all(&bsd).unwrap();
        run_ok(
            Command::new(cbfs_tests::require_tool(
                "bsdtar",
                "apt-get install libarchive-tools",
            ))
            .env("LC_ALL", "C.UTF-8")
            .arg("-xpf")
            .arg(s.work.path(format!("s{seq}.tar")))
            .arg("-C")
            .arg(&bsd),
        );
        assert_same_tree(copy, &bsd, Compare::default());
    }
}
