//! `cbfs-tier out` against a hostile tree and a hostile store: entries
//! swapped for symbolic links and FIFOs while a run reads them, hard links
//! across scopes and to names that were skipped, an unregistered writer, a
//! full disk under the index, a manifest at the largest sequence number,
//! and a keyless check that says what it did not prove.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use cbfs_tests::{FsKind, LoopFs, Workdir, cbfs_cmd, random_bytes, require_tool, run, run_ok};
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
        let done = run(recover_cmd(keys, store)
            .args(["--snapshot", &seq])
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

/// `cbfs-recover` with the root secret, reading `store`.
fn recover_cmd(keys: &Keys, store: &Path) -> Command {
    let mut cmd = cbfs_cmd("cbfs-recover");
    cmd.args(["--identity", &keys.admin(), "--store"])
        .arg(store);
    cmd
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A swap the race harness makes: a file for a link out of the tree and
/// then a FIFO, or a whole directory for a link to a directory out of the
/// tree; each time the honest entry comes back.
fn swap_file(victim: &Path, secret: &Path) -> bool {
    let kept = victim.with_extension("kept");
    if std::fs::rename(victim, &kept).is_err() {
        return false;
    }
    // A symbolic link to a file outside the tree ...
    let _ = std::os::unix::fs::symlink(secret, victim);
    std::thread::yield_now();
    let _ = std::fs::remove_file(victim);
    // ... then a FIFO that nobody writes ...
    let _ = rustix::fs::mknodat(
        rustix::fs::CWD,
        victim,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    );
    std::thread::yield_now();
    let _ = std::fs::remove_file(victim);
    // ... then the honest file again.
    std::fs::rename(&kept, victim).is_ok()
}

fn swap_dir(dir: &Path, outside: &Path) -> bool {
    let kept = dir.with_extension("kept");
    if std::fs::rename(dir, &kept).is_err() {
        return false;
    }
    let _ = std::os::unix::fs::symlink(outside, dir);
    // Long enough for a walk to meet it now and then.
    std::thread::sleep(std::time::Duration::from_micros(300));
    let _ = std::fs::remove_file(dir);
    std::fs::rename(&kept, dir).is_ok()
}

/// Files and directories are swapped for symbolic links out of the tree
/// (and files for FIFOs) thousands of times while runs read the tree. No
/// byte from outside the tree reaches a snapshot, no name from outside is
/// ever listed, no worker hangs, and the runs really met the swaps: they
/// report files and directories "changed while read", a few times at
/// least, or the test fails.
#[test]
fn files_swapped_for_links_and_fifos_while_read_never_leak_and_never_hang() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let outside = work.mkdir("outside");
    let marker = format!("SECRET-{}", hex_of(&random_bytes(8)));
    std::fs::write(outside.join("secret"), marker.repeat(100)).unwrap();
    // A name that exists only outside the tree: a walk that followed a
    // swapped directory would list it.
    let only_outside = format!("only-outside-{marker}");
    std::fs::write(outside.join(&only_outside), b"x").unwrap();
    let src = work.mkdir("src");
    let dirs: Vec<PathBuf> = (0..4).map(|i| src.join(format!("d{i}"))).collect();
    let victims: Vec<PathBuf> = (0..40)
        .map(|i| {
            let d = &dirs[i % dirs.len()];
            std::fs::create_dir_all(d).unwrap();
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
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let (secret, outside) = (outside.join("secret"), outside.clone());
        let (victims, dirs) = (victims.clone(), dirs.clone());
        std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                // One swap at a time: a file is never swapped inside a
                // directory that is a link just now.
                let done = if i.is_multiple_of(3) {
                    swap_dir(&dirs[(i / 3) % dirs.len()], &outside)
                } else {
                    swap_file(&victims[i % victims.len()], &secret)
                };
                if done {
                    swaps.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    let (store, index) = (work.path("store"), work.path("index"));
    let (mut dirs_caught, mut files_caught) = (0usize, 0usize);
    // The paths of the newest snapshot, as `cbfs-tier ls` names them.
    let listing = || -> Vec<String> {
        let out = run_ok(
            cbfs_cmd("cbfs-tier")
                .args(["--json", "ls", "--store"])
                .arg(&store)
                .arg("--index")
                .arg(&index),
        );
        let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
        entries
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut before: Vec<String> = Vec::new();
    let started = std::time::Instant::now();
    let mut run_no = 0;
    // At least eight runs and thousands of swaps, and as many runs more as
    // it takes for the runs to have met a few swaps of each kind.
    while run_no < 8 || swaps.load(Ordering::Relaxed) < 3000 || dirs_caught < 3 || files_caught < 3
    {
        assert!(
            run_no < 80 && started.elapsed() < std::time::Duration::from_secs(150),
            "after {run_no} runs and {} swaps, the runs met only {dirs_caught} directory and \
             {files_caught} file swaps",
            swaps.load(Ordering::Relaxed)
        );
        // A hung worker would hold this past the command timeout and fail it.
        let out = run(out_cmd(&keys, &src, &store, &index).args(["--jobs", "2"]));
        assert!(
            matches!(out.status.code(), Some(0) | Some(6)),
            "run {run_no}: {}",
            text(&out.stderr)
        );
        let said = text(&out.stdout) + &text(&out.stderr);
        assert!(
            !said.contains(&only_outside),
            "run {run_no} listed a directory outside the tree: {said}"
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let now = listing();
        for p in report["skipped"].as_array().unwrap() {
            let (path, reason) = (p["path"].as_str().unwrap(), p["reason"].as_str().unwrap());
            if !reason.contains("changed while read") {
                continue;
            }
            // A directory caught when it was opened to be listed (the
            // listing of its parent found a directory there). One that the
            // parent's listing already found a link, or missing, is what
            // the tree held at that moment: what was below it is gone.
            let listed_dir = reason.contains("the listing found");
            if let Some(d) = dirs.iter().find(|d| listed_dir && Path::new(path) == *d) {
                dirs_caught += 1;
                // What the index held below it is kept as it was, not
                // called gone: the snapshot lists the same entries there.
                let prefix = format!("{}/", d.file_name().unwrap().to_string_lossy());
                let below = |l: &[String]| -> Vec<String> {
                    l.iter()
                        .filter(|p| p.starts_with(&prefix))
                        .cloned()
                        .collect()
                };
                assert_eq!(
                    below(&now),
                    below(&before),
                    "run {run_no}: {path} changed while read, and what was below it changed too"
                );
            } else if path.contains("victim-") {
                files_caught += 1;
            }
        }
        before = now;
        // Touch the victims so that the next run reads them again. The
        // swapper still runs: a victim may be a FIFO at this moment, which
        // a plain open for writing would wait on forever.
        for (i, path) in victims.iter().enumerate() {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            // Nor may it follow a victim (or its directory) that is a
            // symbolic link just now: that would overwrite the secret
            // outside the tree. No new file is made (a missing victim
            // is being swapped): a file made through a directory that is a
            // link just now would land outside the tree.
            const O_NONBLOCK: i32 = 0o4000;
            const O_NOFOLLOW: i32 = 0o400000;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(O_NONBLOCK | O_NOFOLLOW)
                .open(path)
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
    eprintln!(
        "{run_no} runs, {} swaps; the runs reported {dirs_caught} directories and {files_caught} \
         files changed while read",
        swaps.load(Ordering::Relaxed)
    );
    for tar in recovered_tars(&keys, &work, &store, &index) {
        assert!(
            !contains(&tar, marker.as_bytes()),
            "a file or a name from outside the tree was archived"
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

/// Every file's metadata (path, kind) in the members of `scope`, read from
/// the store with the administrator's key for that scope: its lockboxes
/// opened with the scope's secret, then every member of its groups
/// decrypted, as a reader of that scope would.
fn metadata_of_scope(keys: &Keys, store: &Path, scope: &str) -> Vec<cbfs_format::Metadata> {
    use cbfs_core::{AdminSecret, KeySource, ScopeLabel, Unlock};
    use cbfs_format::{GroupId, GroupKey, GroupKeys, Lockbox, SegmentReader};
    struct Groups(Vec<GroupKey>);
    impl GroupKeys for Groups {
        fn group_key(&self, id: &GroupId) -> Option<&GroupKey> {
            self.0.iter().find(|k| k.id() == *id)
        }
    }
    let seed = KeySource::File(keys.dir.join("admin.key"))
        .load(&Unlock::default())
        .unwrap();
    let scope_secret = AdminSecret::from_seed(seed).scope(&ScopeLabel::new(scope).unwrap());
    let scope_sk = scope_secret.secret_key();
    let groups = Groups(
        walk(&store.join("lockboxes"))
            .into_iter()
            .map(|p| Lockbox::from_bytes(&std::fs::read(p).unwrap()).unwrap())
            .filter(|l| l.scope() == scope)
            .map(|l| l.open(scope_sk).unwrap())
            .collect(),
    );
    assert!(!groups.0.is_empty(), "no lockbox of scope {scope}");
    let mut out = Vec::new();
    for segment in walk(&store.join("segments")) {
        let mut reader = SegmentReader::new(std::fs::File::open(segment).unwrap()).unwrap();
        while let Some(member) = reader.next_member().unwrap() {
            // Members of other scopes' groups do not open with these keys.
            if let Ok(mut files) = member.open_files(&groups) {
                std::io::copy(&mut files.content, &mut std::io::sink()).unwrap();
                out.extend(files.entries);
            }
        }
    }
    out
}

/// A hard link group across scopes (alice's `secret-plan.txt`, bob's
/// `copy.txt`) is stored as one file per scope, whichever name the walk
/// meets first: bob restores his name whole with his scope alone, and no
/// metadata of bob's scope (decrypted here with the administrator's key)
/// carries alice's name, as a path or as a link target.
#[test]
fn hard_links_across_scopes_are_stored_as_a_file_per_scope() {
    // Which directory each scope's name is in: alice's first in the walk,
    // then bob's first.
    for (alice_dir, bob_dir) in [("alice", "bob"), ("z-alice", "bob")] {
        let work = Workdir::new();
        let keys = Keys::new(&work);
        let src = work.mkdir("src");
        std::fs::create_dir_all(src.join(alice_dir)).unwrap();
        std::fs::create_dir_all(src.join(bob_dir)).unwrap();
        let (alice_name, bob_name) = (
            format!("{alice_dir}/secret-plan.txt"),
            format!("{bob_dir}/copy.txt"),
        );
        std::fs::write(src.join(&alice_name), b"shared content").unwrap();
        std::fs::hard_link(src.join(&alice_name), src.join(&bob_name)).unwrap();
        let (store, index) = (work.path("store"), work.path("index"));
        let mut out = cbfs_cmd("cbfs-tier");
        out.arg("out")
            .arg(&src)
            .arg("--store")
            .arg(&store)
            .arg("--index")
            .arg(&index)
            .arg("--keyset")
            .arg(keys.keyset())
            .arg("--writer-key")
            .arg(keys.writer())
            .arg("--scope")
            .arg(format!("{alice_dir}/**=alice"))
            .arg("--scope")
            .arg(format!("{bob_dir}/**=bob"));
        run_ok(&mut out);

        let bobs = metadata_of_scope(&keys, &store, "bob");
        let copy = bobs
            .iter()
            .find(|m| m.path == bob_name.as_bytes())
            .unwrap_or_else(|| panic!("{bob_name} is not in bob's scope: {bobs:?}"));
        assert_eq!(
            copy.kind,
            cbfs_format::EntryKind::File,
            "{bob_dir}: {copy:?}"
        );
        for m in &bobs {
            let target = match &m.kind {
                cbfs_format::EntryKind::Hardlink { target }
                | cbfs_format::EntryKind::Symlink { target } => target.clone(),
                _ => Vec::new(),
            };
            for bytes in [&m.path, &target] {
                assert!(
                    !contains(bytes, b"secret-plan"),
                    "alice's name in bob's scope ({alice_dir} and {bob_dir}): {m:?}"
                );
            }
        }

        let bob_scope = keys.export_scope("bob");
        // Bob's scope alone brings back bob's name with its content: the
        // link is not to a name of alice's scope, which bob could not open.
        let dest = work.path("bob-restore");
        let out = run_ok(
            cbfs_cmd("cbfs-recover")
                .arg("--json")
                .arg("--identity")
                .arg(&bob_scope)
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
        let meta = std::fs::symlink_metadata(dest.join(&bob_name)).unwrap();
        assert!(meta.is_file());
        assert_eq!(
            std::fs::read(dest.join(&bob_name)).unwrap(),
            b"shared content"
        );
        assert!(!dest.join(alice_dir).exists(), "{r}");
        // With the root secret both names come back whole.
        let tar = work.path("all.tar");
        run_ok(recover_cmd(&keys, &store).arg("-o").arg(&tar));
        let listing = run_ok(
            Command::new(require_tool("tar", "apt-get install tar"))
                .arg("tvf")
                .arg(&tar),
        );
        let listing = text(&listing.stdout);
        assert!(
            !listing.contains("link to"),
            "no hard link crosses scopes: {listing}"
        );
    }
}

/// A tar output whose only issue is a legitimate symbolic link that leaves
/// the tree (`lib -> /usr/lib`): the tar carries it as it was, the report
/// names it (a warning, `links_that_leave`), and the exit code is 0; a
/// directory output refuses it (exit 3).
#[test]
fn a_tar_whose_only_issue_is_a_link_that_leaves_the_tree_exits_0() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::os::unix::fs::symlink("/usr/lib", src.join("lib")).unwrap();
    std::fs::write(src.join("plain.txt"), b"plain\n").unwrap();
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    let tar = work.path("all.tar");
    let done = run(recover_cmd(&keys, &store).arg("--json").arg("-o").arg(&tar));
    let said = text(&done.stderr);
    assert_eq!(done.status.code(), Some(0), "{said}");
    let report: Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(report["links_that_leave"], 1, "{report:#}");
    assert!(
        report["failures"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    assert!(
        report["warnings"].as_array().unwrap().iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("lib: a link that leaves the tree, carried as it was")),
        "{report:#}"
    );
    let x = work.mkdir("x");
    run_ok(
        Command::new(require_tool("tar", "apt-get install tar"))
            .arg("-xf")
            .arg(&tar)
            .arg("-C")
            .arg(&x),
    );
    assert_eq!(
        std::fs::read_link(x.join("lib")).unwrap(),
        Path::new("/usr/lib")
    );
    assert_eq!(std::fs::read(x.join("plain.txt")).unwrap(), b"plain\n");

    let dest = work.path("dest");
    let done = run(recover_cmd(&keys, &store).arg("-C").arg(&dest));
    assert_eq!(done.status.code(), Some(3), "{}", text(&done.stderr));
    assert!(std::fs::symlink_metadata(dest.join("lib")).is_err());
    assert_eq!(std::fs::read(dest.join("plain.txt")).unwrap(), b"plain\n");
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
        let out = run(recover_cmd(&keys, &store)
            .args(["--snapshot", &seq])
            .arg("-C")
            .arg(&dest));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

#[test]
fn a_full_disk_under_the_index_is_a_resource_error_and_the_next_run_recovers() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let fs = LoopFs::new(&work, "small", FsKind::Ext4, 24);
    let index = fs.dir().join("index");
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

/// The index itself on a file system with no byte left: RocksDB's own
/// "No space left on device" is the same resource error (exit 7), not a
/// damaged index (exit 1), and the run after space is freed succeeds.
#[test]
fn a_full_disk_inside_the_index_database_is_a_resource_error() {
    use std::io::Write;
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let fs = LoopFs::new(&work, "tiny", FsKind::Ext4, 16);
    let index = fs.dir().join("index");
    let store = work.path("store");
    let src = work.mkdir("src");
    std::fs::write(src.join("a.txt"), b"first").unwrap();
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    // Fill every block that is left.
    let filler = fs.dir().join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 64 << 10];
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
            Err(e) => panic!("filling {}: {e}", filler.display()),
        }
    }
    while f
        .write_all(&[0u8; 512])
        .and_then(|()| f.sync_data())
        .is_ok()
    {}
    drop(f);
    std::fs::write(src.join("b.txt"), b"second").unwrap();
    let out = run(&mut out_cmd(&keys, &src, &store, &index));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("out of space"), "{err}");
    std::fs::remove_file(&filler).unwrap();
    let out = run(&mut out_cmd(&keys, &src, &store, &index));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["sequence"], 2, "{r}");
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
    // It follows the real snapshot 1, so that it is a trusted snapshot of
    // the store's history (a stray one is refused before its number counts).
    let first = walk(&store.join("snapshots")).pop().unwrap();
    let previous: [u8; 32] = {
        use sha2::Digest as _;
        sha2::Sha256::digest(std::fs::read(first).unwrap()).into()
    };
    let id = SnapshotId::random();
    let m = ManifestBuilder::new(id, u64::MAX, Some(previous), 0)
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

/// The keyless check reads every lockbox: a truncated one, one whose
/// capsule is not a point on the curve, and a deleted one each fail it
/// (exit 4) with the lockbox's object name, no key needed.
#[test]
fn the_keyless_check_refuses_damaged_and_missing_lockboxes() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::create_dir_all(src.join("alice")).unwrap();
    std::fs::write(src.join("alice/a"), random_bytes(10_000)).unwrap();
    std::fs::write(src.join("d"), random_bytes(5_000)).unwrap();
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    let lockbox = walk(&store.join("lockboxes")).pop().unwrap();
    let name = lockbox
        .strip_prefix(&store)
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let good = std::fs::read(&lockbox).unwrap();
    let verify = || {
        run(cbfs_cmd("cbfs-tier")
            .args(["--json", "verify", "--store"])
            .arg(&store)
            .arg("--index")
            .arg(&index))
    };
    let out = verify();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // The capsule follows the brand and version (10 bytes), the scope (a
    // length byte and the label), the group and segment ids (16 each) and
    // its own length (2, big-endian): all of its bytes 0xff is no capsule.
    let mut capsule = good.clone();
    let at = 10 + 1 + usize::from(good[10]) + 32;
    let len = usize::from(u16::from_be_bytes([good[at], good[at + 1]]));
    assert!(at + 2 + len < good.len(), "capsule length {len} at {at}");
    capsule[at + 2..at + 2 + len].fill(0xff);
    for (what, bytes) in [
        ("truncated", Some(good[..good.len() / 2].to_vec())),
        ("capsule", Some(capsule)),
        ("deleted", None),
    ] {
        match bytes {
            Some(b) => std::fs::write(&lockbox, b).unwrap(),
            None => std::fs::remove_file(&lockbox).unwrap(),
        }
        let out = verify();
        let report = text(&out.stdout);
        assert_eq!(out.status.code(), Some(4), "{what}: {report}");
        assert!(report.contains(&name), "{what}: {report}");
        std::fs::write(&lockbox, &good).unwrap();
    }
}

/// Anyone who can write to the store plants manifests signed by a key of
/// their own: one under the newest sequence number (once "2 manifests
/// claim the newest sequence" and every read failed) and one past it.
/// `snapshots` and `ls` name each as ignored and go on with the real
/// snapshots; `verify` checks the real ones and fails on the planted ones.
/// Neither hides the real snapshots nor is listed as one.
#[test]
fn planted_manifests_are_reported_and_ignored_by_every_listing() {
    use cbfs_core::{Seed, UserSecret};
    use cbfs_format::{ManifestBuilder, SnapshotId, layout};
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::write(src.join("f"), b"one").unwrap();
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    std::fs::write(src.join("g"), b"two").unwrap();
    run_ok(&mut out_cmd(&keys, &src, &store, &index));
    let stranger =
        UserSecret::from_seed(Seed::from_slice(&[9u8; 32], "stranger").unwrap()).signer();
    let mut planted = Vec::new();
    for sequence in [2, 3] {
        let id = SnapshotId::random();
        let m = ManifestBuilder::new(id, sequence, Some([7; 32]), 0)
            .sign(&stranger)
            .unwrap();
        let key = layout::manifest(sequence, &id);
        std::fs::write(store.join(&key), m.to_bytes()).unwrap();
        planted.push(key);
    }
    let tier = |args: &[&str]| {
        run(cbfs_cmd("cbfs-tier")
            .arg("--json")
            .args(args)
            .arg("--store")
            .arg(&store)
            .arg("--index")
            .arg(&index))
    };

    let out = tier(&["snapshots"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let seqs: Vec<u64> = v["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2], "{v}");
    let ignored: Vec<&str> = v["ignored"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["object"].as_str().unwrap())
        .collect();
    for key in &planted {
        assert!(ignored.contains(&key.as_str()), "{key}: {v}");
    }

    let out = tier(&["ls"]);
    let listing = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        listing.contains("\"g\"") || listing.contains("/g"),
        "{listing}"
    );
    for key in &planted {
        assert!(
            text(&out.stderr).contains(key.as_str()),
            "{key}: {}",
            text(&out.stderr)
        );
    }

    // verify checks the real snapshots all the same, and fails (exit 4):
    // an object no trusted writer signed is someone writing to the store.
    let out = tier(&["verify"]);
    let report = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{report}\n{}",
        text(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["snapshots"], 2, "{v}");
    assert_eq!(v["newest"], 2, "{v}");
    let problems: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["object"].as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), planted.len(), "{v}");
    for key in &planted {
        assert!(problems.contains(&key.as_str()), "{key}: {v}");
    }
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

/// A tree with a symbolic link 12 directories deep whose target climbs 12
/// levels (inside the tree, judged at its own depth), a hard link `h` to it
/// at the top (where the same target climbs out to /etc/passwd), and a
/// legitimate link out of the tree (`lib -> /usr/lib`).
fn tree_with_a_disguised_link(work: &Workdir) -> PathBuf {
    let src = work.mkdir("src");
    let mut deep = src.clone();
    for i in 0..12 {
        deep.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&deep).unwrap();
    let target = format!("{}etc/passwd", "../".repeat(12));
    std::os::unix::fs::symlink(&target, deep.join("l")).unwrap();
    // link(2) on a symbolic link links the link itself, as `ln` does.
    std::fs::hard_link(deep.join("l"), src.join("h")).unwrap();
    assert!(
        std::fs::symlink_metadata(src.join("h"))
            .unwrap()
            .is_symlink()
    );
    std::os::unix::fs::symlink("/usr/lib", src.join("lib")).unwrap();
    std::fs::write(src.join("plain.txt"), b"plain\n").unwrap();
    src
}

fn deep_link(root: &Path) -> PathBuf {
    (0..12)
        .fold(root.to_owned(), |p, i| p.join(format!("d{i}")))
        .join("l")
}

#[test]
fn a_hard_link_to_a_symbolic_link_is_judged_from_its_own_name_in_every_output() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = tree_with_a_disguised_link(&work);
    let (store, index) = (work.path("store"), work.path("index"));
    run_ok(&mut out_cmd(&keys, &src, &store, &index));

    // Directory output: neither `h` nor `lib` is created; the deep link,
    // inside the tree where it is, is.
    let dest = work.path("dest");
    let done = run(recover_cmd(&keys, &store).arg("-C").arg(&dest));
    let said = text(&done.stderr);
    assert_eq!(done.status.code(), Some(3), "{said}");
    assert!(std::fs::symlink_metadata(dest.join("h")).is_err(), "{said}");
    assert!(
        std::fs::symlink_metadata(dest.join("lib")).is_err(),
        "{said}"
    );
    assert!(
        said.contains("stays in the tree from its own name"),
        "{said}"
    );
    let l = deep_link(&dest);
    assert_eq!(
        std::fs::read_link(&l).unwrap(),
        Path::new(&format!("{}etc/passwd", "../".repeat(12)))
    );
    assert_eq!(std::fs::read(dest.join("plain.txt")).unwrap(), b"plain\n");

    // `cbfs-tier restore` goes through the same policy: the same refusals.
    let dest = work.path("dest-tier");
    let done = run(cbfs_cmd("cbfs-tier")
        .args(["--json", "restore", "--store"])
        .arg(&store)
        .arg("--identity")
        .arg(keys.admin())
        .arg("--index")
        .arg(&index)
        .arg(".")
        .arg(&dest));
    let said = text(&done.stdout);
    assert_eq!(done.status.code(), Some(3), "{said}{}", text(&done.stderr));
    assert!(std::fs::symlink_metadata(dest.join("h")).is_err(), "{said}");
    assert!(
        std::fs::symlink_metadata(dest.join("lib")).is_err(),
        "{said}"
    );
    assert!(
        said.contains("stays in the tree from its own name"),
        "{said}"
    );
    assert!(std::fs::read_link(deep_link(&dest)).is_ok(), "{said}");
    assert_eq!(std::fs::read(dest.join("plain.txt")).unwrap(), b"plain\n");

    // Tar output: `lib` left the tree where it was made and is carried as
    // it was, named in a warning; `h` is refused there too, so that no
    // extractor creates it.
    let tar = work.path("all.tar");
    let done = run(recover_cmd(&keys, &store).arg("-o").arg(&tar));
    let said = text(&done.stderr);
    assert_eq!(done.status.code(), Some(3), "{said}");
    assert!(
        said.contains("lib: a link that leaves the tree, carried as it was"),
        "{said}"
    );
    assert!(said.contains("1 link(s) leave the tree"), "{said}");
    let failed: Vec<&str> = said.lines().filter(|l| l.contains("FAILED")).collect();
    assert_eq!(failed.len(), 1, "{said}");
    assert!(
        failed[0].contains("h") && failed[0].contains("[unsafe_path]"),
        "{said}"
    );
    for (tool, hint) in [
        ("tar", "apt-get install tar"),
        ("bsdtar", "apt-get install libarchive-tools"),
    ] {
        let exe = require_tool(tool, hint);
        let x = work.mkdir(format!("x-{tool}"));
        run_ok(Command::new(exe).arg("-xf").arg(&tar).arg("-C").arg(&x));
        assert!(
            std::fs::symlink_metadata(x.join("h")).is_err(),
            "{tool} made h"
        );
        assert_eq!(
            std::fs::read_link(x.join("lib")).unwrap(),
            Path::new("/usr/lib")
        );
        assert!(
            std::fs::symlink_metadata(deep_link(&x))
                .unwrap()
                .is_symlink()
        );
        assert_eq!(std::fs::read(x.join("plain.txt")).unwrap(), b"plain\n");
    }
}
