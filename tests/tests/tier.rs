//! End-to-end tests of `cbfs-tier out`: one behaviour suite for the local
//! directory store and a real S3-compatible server, incremental runs,
//! snapshots, crash safety, retries and the update-series method.

use std::path::{Path, PathBuf};
use std::process::Command;

use cbfs_tests::{
    Backend, Compare, Fault, FaultPlan, FaultyProxy, S3Server, TreeGen, Workdir, assert_same_tree,
    cbfs_cmd, require_tool, run, run_ok,
};
use serde_json::Value;

#[path = "tiering/keys.rs"]
mod keys;
use keys::Keys;

fn tier_out(backend: &Backend, keys: &Keys, index: &Path, src: &Path, extra: &[&str]) -> Value {
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.arg("--json")
        .arg("out")
        .arg(src)
        .arg("--store")
        .arg(backend.spec())
        .arg("--index")
        .arg(index)
        .arg("--keyset")
        .arg(keys.keyset())
        .arg("--writer-key")
        .arg(keys.writer())
        .args(["--scope", "alice/**=alice", "--scope", "bob/**=bob"])
        .args(extra)
        .envs(backend.envs());
    let out = run_ok(&mut cmd);
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

/// A read-only command (`ls`, `snapshots`, `verify`): the index pins the
/// administrator, and no writer key is needed.
fn tier_json(backend: &Backend, index: &Path, args: &[&str]) -> Value {
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.arg("--json")
        .args(args)
        .arg("--store")
        .arg(backend.spec())
        .arg("--index")
        .arg(index);
    cmd.envs(backend.envs());
    serde_json::from_slice(&run_ok(&mut cmd).stdout).unwrap()
}

#[test]
fn verify_names_a_damaged_segment_and_restore_still_brings_back_the_rest() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    for i in 0..6 {
        std::fs::write(
            src.join(format!("file-{i}")),
            cbfs_tests::random_bytes(50_000),
        )
        .unwrap();
    }
    let store = work.path("store");
    let backend = Backend::Local(store.clone());
    let index = work.path("index");
    tier_out(
        &backend,
        &keys,
        &index,
        &src,
        &["--segment-size", "64K", "--jobs", "1"],
    );
    let segments: Vec<PathBuf> = std::fs::read_dir(store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(segments.len() >= 3, "{segments:?}");
    let victim = &segments[0];
    let mut bytes = std::fs::read(victim).unwrap();
    let at = 4096; // inside the first member's ciphertext
    bytes[at] ^= 0x40;
    std::fs::write(victim, bytes).unwrap();
    let victim_key = format!("segments/{}", victim.file_name().unwrap().to_string_lossy());

    let out = run(cbfs_cmd("cbfs-tier")
        .args(["--json", "verify", "--store"])
        .arg(&store)
        .arg("--index")
        .arg(&index));
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["object"] == victim_key.as_str()),
        "{v}"
    );

    let dest = work.path("restored");
    let out = run(cbfs_cmd("cbfs-tier")
        .args(["--json", "restore", "--store"])
        .arg(&store)
        .arg("--identity")
        .arg(keys.admin())
        .arg("--index")
        .arg(&index)
        .arg(".")
        .arg(&dest));
    assert_eq!(
        out.status.code(),
        Some(3),
        "partial: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let failures = r["failures"].as_array().unwrap();
    assert!(
        !failures.is_empty() && failures.iter().all(|f| f["object"] == victim_key.as_str()),
        "{r}"
    );
    let restored = std::fs::read_dir(&dest).unwrap().count();
    assert_eq!(
        restored + failures.len(),
        6,
        "every intact file came back: {r}"
    );
}

/// Recovers snapshot `seq` with the root secret into `dest`, through a tar
/// that GNU tar extracts. `cbfs-recover` reads S3 stores itself.
fn recover_snapshot(backend: &Backend, keys: &Keys, work: &Workdir, seq: u64, dest: &Path) {
    let tar = work.path(format!("snapshot-{seq}.tar"));
    run_ok(
        cbfs_cmd("cbfs-recover")
            .args(["--identity", &keys.admin(), "--store", &backend.spec()])
            .args(["--snapshot", &seq.to_string(), "-o"])
            .arg(&tar)
            .envs(backend.envs()),
    );
    std::fs::create_dir_all(dest).unwrap();
    run_ok(
        Command::new(require_tool("tar", "apt-get install tar"))
            .args(["--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(&tar)
            .arg("-C")
            .arg(dest),
    );
}

/// The suite every backend passes.
fn behaviour_suite(backend: Backend) {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let index = work.path("index");
    let src = work.path("src");
    let mut tree = TreeGen::new(&src, 7);
    tree.populate(40);
    std::fs::create_dir_all(src.join("alice")).unwrap();
    std::fs::write(
        src.join("alice")
            .join(format!("{}-alice-only", tree.marker)),
        b"alice's data",
    )
    .unwrap();
    std::fs::create_dir_all(src.join("bob")).unwrap();
    std::fs::write(
        src.join("bob").join(format!("{}-bob-only", tree.marker)),
        b"bob's data",
    )
    .unwrap();
    let state1 = work.path("state1");
    tree.copy_to(&state1);

    // First run: everything is stored, in a snapshot.
    let r1 = tier_out(&backend, &keys, &index, &src, &["--segment-size", "1M"]);
    assert!(r1["files"].as_u64().unwrap() > 40, "{r1}");
    assert_eq!(r1["sequence"], 1, "{r1}");
    assert!(
        r1["new_segments"].as_u64().unwrap() >= 2,
        "small segments: {r1}"
    );
    assert!(r1["skipped"].as_array().unwrap().is_empty(), "{r1}");

    // The store holds no name and no content of the tree.
    let objects = backend.objects();
    assert!(objects.keys().any(|k| k.starts_with("segments/")));
    assert!(objects.keys().any(|k| k.starts_with("lockboxes/")));
    assert!(objects.keys().any(|k| k.starts_with("summaries/")));
    assert!(objects.keys().any(|k| k.starts_with("snapshots/")));
    for (key, bytes) in &objects {
        for needle in [
            tree.marker.as_bytes(),
            b"alice's data",
            "données".as_bytes(),
            "日本語".as_bytes(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle)
                    && !key.as_bytes().windows(needle.len()).any(|w| w == needle),
                "object {key} contains {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    // GNU tar lists every segment.
    for (key, bytes) in objects.iter().filter(|(k, _)| k.starts_with("segments/")) {
        let p = work.path("segment-check.tar");
        std::fs::write(&p, bytes).unwrap();
        let out = run_ok(Command::new("tar").arg("tvf").arg(&p));
        assert!(!out.stdout.is_empty(), "tar lists nothing in {key}");
    }

    // A rerun over the unchanged tree adds nothing.
    let before = backend.total_bytes();
    let r2 = tier_out(&backend, &keys, &index, &src, &["--segment-size", "1M"]);
    assert_eq!(r2["files"], 0, "{r2}");
    assert_eq!(r2["bytes_stored"], 0, "{r2}");
    assert!(r2["snapshot"].is_null(), "{r2}");
    assert_eq!(
        backend.total_bytes(),
        before,
        "an unchanged rerun added bytes"
    );

    // One changed file moves only that file.
    let files = tree.files();
    let changed = src.join(&files[files.len() / 2]);
    let mode = std::fs::metadata(&changed).unwrap().permissions();
    std::fs::set_permissions(
        &changed,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(&changed, b"a new version").unwrap();
    std::fs::set_permissions(&changed, mode).unwrap();
    let state2 = work.path("state2");
    tree.copy_to(&state2);
    let r3 = tier_out(&backend, &keys, &index, &src, &["--segment-size", "1M"]);
    assert_eq!(r3["files"], 1, "{r3}");
    assert_eq!(r3["new_segments"], 1, "{r3}");
    assert_eq!(r3["sequence"], 2, "{r3}");

    // A deleted file is gone from the newest snapshot and still in the older ones.
    let gone = src.join("bob").join(format!("{}-bob-only", tree.marker));
    std::fs::remove_file(&gone).unwrap();
    let r4 = tier_out(&backend, &keys, &index, &src, &["--segment-size", "1M"]);
    assert_eq!(r4["deleted"], 1, "{r4}");
    assert_eq!(r4["sequence"], 3, "{r4}");
    let bob_path = format!("bob/{}-bob-only", tree.marker);
    let ls_old = tier_json(&backend, &index, &["ls", "--snapshot", "2"]);
    assert!(
        ls_old
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == bob_path.as_str()),
        "{ls_old}"
    );
    let ls_new = tier_json(&backend, &index, &["ls"]);
    assert!(
        !ls_new
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == bob_path.as_str())
    );
    let alice = ls_new
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"].as_str().unwrap().starts_with("alice/"))
        .unwrap();
    assert_eq!(alice["scope"], "alice");
    let ls_bob = tier_json(&backend, &index, &["ls", "--snapshot", "1", "bob"]);
    assert_eq!(
        ls_bob.as_array().unwrap().len(),
        2,
        "bob and its one file: {ls_bob}"
    );

    let snaps = tier_json(&backend, &index, &["snapshots"]);
    assert!(snaps["ignored"].as_array().unwrap().is_empty(), "{snaps}");
    let seqs: Vec<u64> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);

    // The holder of scope alice's secret restores exactly alice's files,
    // and none of bob's or of the default scope. (Users restore through
    // delegation nodes: restore_nodes.rs.)
    let alice_scope = keys.export_scope("alice");
    let mine = work.path("alice-restore");
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args([
                "--json",
                "restore",
                "--store",
                &backend.spec(),
                "--identity",
            ])
            .arg(&alice_scope)
            .arg("--index")
            .arg(&index)
            .arg(".")
            .arg(&mine)
            .envs(backend.envs()),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["failures"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert!(
        report["skipped_scopes"]["bob"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["skipped_scopes"]["default"].as_u64().unwrap() >= 1,
        "{report}"
    );
    let restored: Vec<String> = cbfs_tests::describe(&mine, Compare::default())
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(
        restored,
        [
            "alice".to_owned(),
            format!("alice/{}-alice-only", tree.marker)
        ],
        "alice gets exactly her scope"
    );
    assert_eq!(
        std::fs::read(mine.join(format!("alice/{}-alice-only", tree.marker))).unwrap(),
        b"alice's data"
    );

    // The store verifies without a key, and with the root secret it decrypts.
    let v = tier_json(&backend, &index, &["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["segments"].as_u64().unwrap() >= 3, "{v}");
    let admin = keys.admin();
    let v = tier_json(
        &backend,
        &index,
        &["verify", "--read-data", "--identity", &admin],
    );
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["decrypted"].as_u64().unwrap() > 40, "{v}");

    // Every snapshot comes back whole.
    for (seq, expected) in [(1, &state1), (2, &state2)] {
        let dest = work.path(format!("restored-{seq}"));
        recover_snapshot(&backend, &keys, &work, seq, &dest);
        assert_same_tree(expected, &dest, Compare::default());
    }
}

#[test]
fn behaviour_local_store() {
    let work = Workdir::new();
    behaviour_suite(Backend::Local(work.path("store")));
    drop(work);
}

#[test]
fn behaviour_s3_store() {
    let server = S3Server::start();
    server.create_bucket("cbfs-behaviour");
    behaviour_suite(Backend::S3 {
        server: Box::new(server),
        bucket: "cbfs-behaviour".into(),
        endpoint: None,
    });
}

#[test]
fn s3_retries_through_faults_and_multipart_upload() {
    let server = S3Server::start();
    server.create_bucket("cbfs-faults");
    let plan = FaultPlan::new()
        .then(Fault::Pass)
        .then(Fault::SlowDown)
        .then(Fault::InternalError)
        .then(Fault::DropBeforeResponse)
        .then(Fault::Pass)
        .then(Fault::SlowDown)
        .then(Fault::DropMidResponse);
    let proxy = FaultyProxy::start(server.socket_addr(), plan);
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    // 24 MiB of random data: one segment, uploaded in parts.
    std::fs::write(src.join("big.bin"), cbfs_tests::random_bytes(24 << 20)).unwrap();
    std::fs::write(src.join("small.txt"), b"small").unwrap();
    let endpoint = proxy.endpoint();
    let backend = Backend::S3 {
        server: Box::new(server),
        bucket: "cbfs-faults".into(),
        endpoint: Some(endpoint),
    };
    let r = tier_out(
        &backend,
        &keys,
        &work.path("index"),
        &src,
        &["--segment-size", "64M"],
    );
    assert_eq!(r["files"], 2, "{r}");
    assert!(
        proxy.faults_injected() >= 5,
        "faults: {}",
        proxy.faults_injected()
    );
    let parts = proxy
        .requests()
        .iter()
        .filter(|r| r.target.contains("partNumber="))
        .count();
    assert!(parts >= 2, "the 24 MiB segment went up in parts: {parts}");
    let dest = work.path("restored");
    recover_snapshot(&backend, &keys, &work, 1, &dest);
    assert_same_tree(&src, &dest, Compare::default());
}

/// S3 settings for an endpoint where nothing answers.
fn nothing_answers_at(port: u16) -> [(&'static str, String); 5] {
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "x".into()),
        ("AWS_SECRET_ACCESS_KEY", "y".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

#[test]
fn store_is_unreachable_gives_a_clear_transient_error() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::write(src.join("f"), b"x").unwrap();
    let port = cbfs_tests::free_port();
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.arg("out")
        .arg(&src)
        .args(["--store", "s3://nobucket/p", "--index"])
        .arg(work.path("index"))
        .arg("--keyset")
        .arg(keys.keyset())
        .arg("--writer-key")
        .arg(keys.writer())
        .envs(nothing_answers_at(port));
    let out = run(&mut cmd);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("127.0.0.1") || err.contains("s3://nobucket"),
        "{err}"
    );
}

/// A restore straight from a store that does not answer is "unavailable,
/// retry" (exit 5), naming the store, like a tier-out run: never a failed
/// verification (4).
#[test]
fn a_restore_from_an_unreachable_store_is_a_transient_error() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let port = cbfs_tests::free_port();
    let mut cmd = cbfs_cmd("cbfs-tier");
    cmd.args(["restore", "--store", "s3://nobucket/p", "--identity"])
        .arg(keys.admin())
        .arg("--keyset")
        .arg(keys.keyset())
        .arg(".")
        .arg(work.path("out"))
        .envs(nothing_answers_at(port));
    let out = run(&mut cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("127.0.0.1") || err.contains("s3://nobucket"),
        "{err}"
    );
}

#[test]
fn ten_thousand_files_one_change_adds_under_one_percent() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    for d in 0..100 {
        let dir = src.join(format!("dir-{d:03}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..100 {
            // Text that does not compress to nothing: the store must be of
            // a size where one percent is more than a segment's framing.
            let noise: String = cbfs_tests::random_bytes(200 + (d * f) % 300)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let text = format!("file {d}/{f}: {noise}");
            std::fs::write(dir.join(format!("file-{f:03}.txt")), text).unwrap();
        }
    }
    let backend = Backend::Local(work.path("store"));
    let index = work.path("index");
    let first = tier_out(&backend, &keys, &index, &src, &[]);
    assert_eq!(
        first["files"], 10_100,
        "10,000 files and 100 directories: {first}"
    );
    let first_bytes = backend.total_bytes();
    std::fs::write(src.join("dir-042").join("file-042.txt"), b"changed").unwrap();
    let second = tier_out(&backend, &keys, &index, &src, &[]);
    assert_eq!(second["files"], 1, "{second}");
    let added = backend.total_bytes() - first_bytes;
    assert_eq!(
        added,
        second["bytes_stored"].as_u64().unwrap(),
        "the report counts what the store gained"
    );
    assert!(
        added * 100 < first_bytes,
        "one changed file added {added} bytes, {:.3}% of the first run's {first_bytes}",
        added as f64 * 100.0 / first_bytes as f64
    );

    // Decoding on one thread or several gives the same tar, byte for byte
    // (enough members here for every thread to get a share of each pass).
    let tar_with = |jobs: &str| {
        let tar = work.path(format!("jobs-{jobs}.tar"));
        run_ok(
            cbfs_cmd("cbfs-recover")
                .args(["--identity", &keys.admin(), "--jobs", jobs, "--store"])
                .arg(work.path("store"))
                .arg("-o")
                .arg(&tar),
        );
        std::fs::read(&tar).unwrap()
    };
    let one = tar_with("1");
    assert!(one.len() > 10_000 * 512, "{} bytes", one.len());
    assert!(
        one == tar_with("3"),
        "1 and 3 decoding threads give different tars"
    );
}

#[test]
fn plain_mode_segments_are_ordinary_tars() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    std::fs::create_dir(src.join("docs")).unwrap();
    std::fs::write(
        src.join("docs").join("readme.txt"),
        b"plain text, readable by anyone",
    )
    .unwrap();
    std::fs::write(src.join("data.bin"), cbfs_tests::random_bytes(10_000)).unwrap();
    std::os::unix::fs::symlink("docs/readme.txt", src.join("link")).unwrap();
    let store = work.path("store");
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "out"])
            .arg(&src)
            .arg("--store")
            .arg(&store)
            .arg("--index")
            .arg(work.path("index"))
            .arg("--keyset")
            .arg(keys.keyset())
            .arg("--writer-key")
            .arg(keys.writer())
            .args(["--plain", "--jobs", "1"]),
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["files"], 4, "{r}");
    let segments: Vec<PathBuf> = std::fs::read_dir(store.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(segments.len(), 1);
    assert!(
        !store.join("lockboxes").exists(),
        "plain mode has no lockboxes"
    );
    let dest = work.mkdir("extracted");
    run_ok(
        Command::new("tar")
            .arg("-xpf")
            .arg(&segments[0])
            .arg("-C")
            .arg(&dest),
    );
    assert_same_tree(&src, &dest, Compare::default());
}

#[test]
fn a_long_history_keeps_its_delta_chain_past_a_full_manifest() {
    // A full manifest is written every 16 snapshots; a run reads the
    // history back only to the newest full one. Twenty runs cross that
    // boundary: every snapshot must still be numbered, chained and whole.
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    for f in 0..30 {
        std::fs::write(src.join(format!("f{f:02}")), format!("first {f}")).unwrap();
    }
    let backend = Backend::Local(work.path("store"));
    let index = work.path("index");
    let mut states = Vec::new();
    for run in 1..=20u64 {
        std::fs::write(src.join(format!("f{:02}", run % 30)), format!("run {run}")).unwrap();
        if run == 5 {
            // The small files share members (packs): a file deleted from
            // one must leave the later snapshots, and the others stay.
            std::fs::remove_file(src.join("f25")).unwrap();
        }
        let r = tier_out(&backend, &keys, &index, &src, &[]);
        assert_eq!(r["sequence"], run, "{r}");
        let state = work.path(format!("state-{run}"));
        copy_tree(&src, &state);
        states.push(state);
    }
    let snaps = tier_json(&backend, &index, &["snapshots"]);
    assert!(snaps["ignored"].as_array().unwrap().is_empty(), "{snaps}");
    let seqs: Vec<u64> = snaps["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    let v = tier_json(&backend, &index, &["verify"]);
    assert!(v["problems"].as_array().unwrap().is_empty(), "{v}");
    for seq in [4u64, 16, 17, 18, 20] {
        let dest = work.path(format!("restored-{seq}"));
        recover_snapshot(&backend, &keys, &work, seq, &dest);
        assert_same_tree(&states[seq as usize - 1], &dest, Compare::default());
    }
}

fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "cp -a {}",
        from.display()
    );
}
