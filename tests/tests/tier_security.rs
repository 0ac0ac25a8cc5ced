//! `cbfs-tier out` against a hostile tree and a hostile store: entries
//! swapped for symbolic links and FIFOs while a run reads them, hard links
//! across scopes and to names that were skipped, an unregistered writer, a
//! full disk under the index, a manifest at the largest sequence number,
//! and a keyless check that says what it did not prove.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cbfs_tests::{Workdir, cbfs_cmd, random_bytes, require_tool, run, run_ok};
use serde_json::Value;

#[path = "tiering/keys.rs"]
mod keys;
use keys::Keys;

fn out_cmd(keys: &Keys, src: &Path, store: &Path, index: &Path) -> Command {
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.arg("--json")
        .arg("out")
        .arg(src)
        .arg("--store")
        .arg(store)
        .arg("--index")
        .arg(index)
        .arg("--keyset")
        .arg(keys.keyset())
        .arg("--writer-key")
        .arg(keys.writer())
        .args(["--scope", "alice/**=alice", "--scope", "bob/**=bob"]);
    cmd
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every snapshot of `store`, recovered with the root secret as one tar each.
fn recovered_tars(keys: &Keys, work: &Workdir, store: &Path, index: &Path) -> Vec<Vec<u8>> {
    let snaps: Value = serde_json::from_slice(
        &run_ok(
            cbfs_cmd("cbfs-tier")
                .args(["--json", "snapshots", "--store"])
                .arg(store)
                .arg("--index")
                .arg(index),
        )
        .stdout,
    )
    .unwrap();
    let mut out = Vec::new();
    for s in snaps["snapshots"].as_array().unwrap() {
        let seq = s["sequence"].to_string();
        let tar = work.path(format!("snapshot-{seq}.tar"));
        let _ = std::fs::remove_file(&tar);
        let done = run(cbfs_cmd("cbfs-recover")
            .args(["--identity", &keys.admin(), "--snapshot", &seq, "--store"])
            .arg(store)
            .arg("-o")
            .arg(&tar));
        // A file caught as a symbolic link out of the tree was archived as
        // that link (never its target's content); recovery refuses to write
        // such a link (exit 3, naming it) and keeps every other member.
        let said = text(&done.stderr);
        let only_links_refused = done.status.code() == Some(3)
            && said
                .lines()
                .filter(|l| l.contains("FAILED"))
                .all(|l| l.contains("[unsafe_path]: refusing symbolic link target"));
        assert!(
            done.status.success() || only_links_refused,
            "snapshot {seq}: {said}"
        );
        out.push(std::fs::read(&tar).unwrap());
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn files_swapped_for_links_and_fifos_while_read_never_leak_and_never_hang() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let outside = work.mkdir("outside");
    let marker = format!("SECRET-{}", hex_of(&random_bytes(8)));
    std::fs::write(outside.join("secret"), marker.repeat(100)).unwrap();
    let src = work.mkdir("src");
    let victims: Vec<PathBuf> = (0..40)
        .map(|i| {
            let d = src.join(format!("d{}", i % 4));
            std::fs::create_dir_all(&d).unwrap();
            let v = d.join(format!("victim-{i}"));
            std::fs::write(&v, format!("honest content {i}\n").repeat(500)).unwrap();
            v
        })
        .collect();
    for i in 0..300 {
        std::fs::write(src.join(format!("filler-{i}")), random_bytes(2000)).unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps, secret) = (stop.clone(), swaps.clone(), outside.join("secret"));
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let v = &victims[i % victims.len()];
                let kept = v.with_extension("kept");
                if std::fs::rename(v, &kept).is_ok() {
                    // A symbolic link to a file outside the tree ...
                    let _ = std::os::unix::fs::symlink(&secret, v);
                    std::thread::yield_now();
                    let _ = std::fs::remove_file(v);
                    // ... then a FIFO that nobody writes ...
                    let _ = Command::new("mkfifo").arg(v).status();
                    let _ = std::fs::remove_file(v);
                    // ... then the honest file again.
                    let _ = std::fs::rename(&kept, v);
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    let (store, index) = (work.path("store"), work.path("index"));
    // At least eight runs, and as many more as it takes for the swapper to
    // have raced them a few hundred times (a loaded machine swaps slower).
    let mut run_no = 0;
    while run_no < 8 || swaps.load(Ordering::Relaxed) < 200 {
        assert!(
            run_no < 60,
            "the swapper managed only {} swaps in {run_no} runs",
            swaps.load(Ordering::Relaxed)
        );
        // A hung worker would hold this past the command timeout and fail it.
        let out = run(out_cmd(&keys, &src, &store, &index).args(["--jobs", "2"]));
        assert!(
            matches!(out.status.code(), Some(0) | Some(6)),
            "run {run_no}: {}",
            text(&out.stderr)
        );
        // Touch the victims so that the next run reads them again. The
        // swapper still runs: a victim may be a FIFO at this moment, which
        // a plain open for writing would wait on forever.
        for i in 0..40 {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            // Nor may it follow a victim that is a symbolic link just now:
            // that would overwrite the secret outside the tree.
            const O_NONBLOCK: i32 = 0o4000;
            const O_NOFOLLOW: i32 = 0o400000;
            let path = src.join(format!("d{}", i % 4)).join(format!("victim-{i}"));
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(O_NONBLOCK | O_NOFOLLOW)
                .open(&path)
            {
                let _ = f.write_all(
                    format!("honest content {i} run {run_no}\n")
                        .repeat(500)
                        .as_bytes(),
                );
            }
        }
        run_no += 1;
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    for tar in recovered_tars(&keys, &work, &store, &index) {
        assert!(
            !contains(&tar, marker.as_bytes()),
            "a file from outside the tree was archived"
        );
    }
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn an_unregistered_writer_refuses_to_start_and_says_how_to_register() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::write(src.join("f"), b"x").unwrap();
    // The default writer key (made in the index) is registered nowhere.
    let index = work.path("index");
    let out = run(cbfs_cmd("cbfs-tier")
        .arg("out")
        .arg(&src)
        .arg("--store")
        .arg(work.path("store"))
        .arg("--index")
        .arg(&index)
        .arg("--keyset")
        .arg(keys.keyset()));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cbfs-keytool add-writer") && err.contains("writer.pub"),
        "{err}"
    );
    assert!(index.join("writer.pub").is_file());
    assert!(
        !work.path("store").join("snapshots").exists(),
        "nothing was written"
    );
    // Registered with the command it gave, the same agent runs.
    run_ok(
        cbfs_cmd("cbfs-keytool")
            .args(["add-writer", "--admin", &keys.admin(), "--keyset"])
            .arg(keys.keyset())
            .arg("--public")
            .arg(index.join("writer.pub")),
    );
    run_ok(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&src)
            .arg("--store")
            .arg(work.path("store"))
            .arg("--index")
            .arg(&index)
            .arg("--keyset")
            .arg(keys.keyset()),
    );
}

#[test]
fn hard_links_across_scopes_are_stored_as_a_file_per_scope() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::create_dir_all(src.join("alice")).unwrap();
    std::fs::create_dir_all(src.join("bob")).unwrap();
    std::fs::write(src.join("alice/secret-plan.txt"), b"shared content").unwrap();
    std::fs::hard_link(src.join("alice/secret-plan.txt"), src.join("bob/copy.txt")).unwrap();
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    run_ok(cbfs_cmd("cbfs-keytool").current_dir(&keys.dir).args([
        "export-scope",
        "--admin",
        "file:admin.key",
        "--keyset",
        "keyset.json",
        "--scope",
        "bob",
        "--secret",
        "file:bob-scope.key",
    ]));
    // Bob's scope alone brings back bob's name with its content: the link
    // is not to a name of alice's scope, which bob could not open.
    let dest = work.path("bob-restore");
    let out = run_ok(
        cbfs_cmd("cbfs-recover")
            .arg("--json")
            .arg("--identity")
            .arg(format!("file:{}", keys.dir.join("bob-scope.key").display()))
            .arg("--keyset")
            .arg(keys.keyset())
            .arg("--store")
            .arg(&store)
            .arg("-C")
            .arg(&dest),
    );
    let r: Value = serde_json::from_slice(&out.stderr)
        .or_else(|_| serde_json::from_slice(&out.stdout))
        .unwrap();
    assert!(r["failures"].as_array().unwrap().is_empty(), "{r}");
    let meta = std::fs::symlink_metadata(dest.join("bob/copy.txt")).unwrap();
    assert!(meta.is_file());
    assert_eq!(
        std::fs::read(dest.join("bob/copy.txt")).unwrap(),
        b"shared content"
    );
    assert!(!dest.join("alice").exists(), "{r}");
    // With the root secret both names come back whole.
    let tar = work.path("all.tar");
    run_ok(
        cbfs_cmd("cbfs-recover")
            .args(["--identity", &keys.admin(), "--store"])
            .arg(&store)
            .arg("-o")
            .arg(&tar),
    );
    let listing = run_ok(Command::new("tar").arg("tvf").arg(&tar));
    let listing = text(&listing.stdout);
    assert!(
        !listing.contains("link to"),
        "no hard link crosses scopes: {listing}"
    );
}

#[test]
fn a_hard_link_to_a_name_that_was_skipped_is_never_a_link_to_nothing() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::write(src.join("a-first"), random_bytes(1 << 20)).unwrap();
    std::fs::hard_link(src.join("a-first"), src.join("b-second")).unwrap();
    std::fs::write(src.join("other"), b"other").unwrap();
    // The first name changes all the time: a run skips it as "changed
    // while read", and must then not store the second name as a link to it.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, path) = (stop.clone(), src.join("a-first"));
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let _ = f.write_all(b"more");
            }
        })
    };
    let (store, index) = (work.path("store"), work.path("index"));
    let mut skipped_first = 0;
    for _ in 0..5 {
        let out = run(&mut out_cmd(&keys, &src, &store, &index));
        assert!(
            matches!(out.status.code(), Some(0) | Some(6)),
            "{}",
            text(&out.stderr)
        );
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["path"].as_str().unwrap().ends_with("a-first"))
        {
            skipped_first += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(skipped_first > 0, "the first name was never skipped");
    // Every snapshot restores without a dangling link.
    let snaps: Value = serde_json::from_slice(
        &run_ok(
            cbfs_cmd("cbfs-tier")
                .args(["--json", "snapshots", "--store"])
                .arg(&store)
                .arg("--index")
                .arg(&index),
        )
        .stdout,
    )
    .unwrap();
    for s in snaps["snapshots"].as_array().unwrap() {
        let seq = s["sequence"].to_string();
        let dest = work.path(format!("restored-{seq}"));
        let out = run(cbfs_cmd("cbfs-recover")
            .args(["--identity", &keys.admin(), "--snapshot", &seq, "--store"])
            .arg(&store)
            .arg("-C")
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

/// A small ext4 file system mounted at `dir` until dropped.
struct LoopFs {
    dir: PathBuf,
}

impl LoopFs {
    fn new(work: &Workdir, name: &str, mib: u64) -> LoopFs {
        let img = work.path(format!("{name}.img"));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(mib << 20).unwrap();
        run_ok(
            Command::new(require_tool("mkfs.ext4", "apt-get install e2fsprogs"))
                .arg("-q")
                .arg(&img),
        );
        let dir = work.mkdir(name);
        run_ok(
            Command::new("mount")
                .arg("-o")
                .arg("loop")
                .arg(&img)
                .arg(&dir),
        );
        LoopFs { dir }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

#[test]
fn a_full_disk_under_the_index_is_a_resource_error_and_the_next_run_recovers() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let fs = LoopFs::new(&work, "small", 24);
    let index = fs.dir.join("index");
    let store = work.path("store");
    let src = work.mkdir("src");
    // Incompressible: the spool of its segment does not fit on the disk.
    std::fs::write(src.join("big.bin"), random_bytes(40 << 20)).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let out = run(&mut out_cmd(&keys, &src, &store, &index));
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("out of space"), "{err}");
    // The next run clears the old spool before it opens the index, and with
    // the big file gone (space enough) it succeeds on its own.
    std::fs::remove_file(src.join("big.bin")).unwrap();
    let out = run(&mut out_cmd(&keys, &src, &store, &index));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sequence"], 1, "{r}");
}

#[test]
fn a_manifest_at_the_largest_sequence_number_is_an_error_not_an_overflow() {
    use cbfs_core::{Seed, UserSecret};
    use cbfs_format::{ManifestBuilder, SnapshotId, layout};
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::write(src.join("f"), b"one").unwrap();
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    // A manifest of the agent's own key at u64::MAX (as a store that was
    // tampered with, or a bug, could hold).
    let seed = std::fs::read(keys.dir.join("agent.key")).unwrap();
    let signer = UserSecret::from_seed(Seed::from_slice(&seed, "agent.key").unwrap()).signer();
    let id = SnapshotId::random();
    let m = ManifestBuilder::new(id, u64::MAX, Some([7; 32]), 0)
        .sign(&signer)
        .unwrap();
    std::fs::write(store.join(layout::manifest(u64::MAX, &id)), m.to_bytes()).unwrap();
    std::fs::write(src.join("f"), b"two").unwrap();
    let out = run(&mut out_cmd(&keys, &src, &store, &index));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("largest there is"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn the_keyless_check_says_what_it_cannot_prove_and_sees_vanished_snapshots() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::create_dir_all(src.join("alice")).unwrap();
    std::fs::write(src.join("alice/a"), random_bytes(10_000)).unwrap();
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    let verify = |extra: &[&str], index: &Path| {
        run(cbfs_cmd("cbfs-tier")
            .args(["--json", "verify", "--store"])
            .arg(&store)
            .arg("--index")
            .arg(index)
            .args(extra))
    };
    // A bit flipped in a lockbox's sealed key: the keyless check cannot see
    // it, and says so; decrypting finds it.
    let lockbox = walk(&store.join("lockboxes")).pop().unwrap();
    let mut b = std::fs::read(&lockbox).unwrap();
    let last = b.len() - 5;
    b[last] ^= 1;
    std::fs::write(&lockbox, b).unwrap();
    let out = verify(&[], &index);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["not_proven"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str().unwrap().contains("lockboxes")),
        "{v}"
    );
    let admin = keys.admin();
    let out = verify(&["--read-data", "--identity", &admin], &index);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    // Every manifest deleted: the index knows a snapshot was written.
    for m in walk(&store.join("snapshots")) {
        std::fs::remove_file(m).unwrap();
    }
    let out = verify(&[], &index);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("vanished"),
        "{}",
        text(&out.stdout)
    );
    // With no index, the segments without any trusted snapshot are a problem.
    let keyset = keys.keyset().display().to_string();
    let out = verify(&["--keyset", &keyset], &work.path("no-index"));
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("no snapshot a trusted writer signed"),
        "{}",
        text(&out.stdout)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    for i in 0..3000 {
        std::fs::write(src.join(format!("a-file-with-a-longish-name-{i:05}")), b"x").unwrap();
    }
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    let script = format!(
        "set -o pipefail; '{}' --json ls --store '{}' --index '{}' | head -c 100 >/dev/null",
        cbfs_tests::cbfs_bin("cbfs-tier").display(),
        store.display(),
        index.display()
    );
    let out = run(Command::new(require_tool("bash", "apt-get install bash"))
        .arg("-c")
        .arg(script));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}
