//! A restore from S3 reads only the byte ranges it needs: one file out of a
//! store of 1 GiB costs its summary, lockboxes, manifest and that file's
//! member, counted at a proxy between the restore and the server, for both
//! `cbfs-tier restore` (the agent's store client) and `cbfs-recover` (its
//! own blocking client). And a whole restore by ranges, on several
//! threads, fetches each stored byte about once.

use cbfs_tests::{FaultPlan, FaultyProxy, S3Server, Workdir, cbfs_cmd, run_ok, run_ok_within};
use serde_json::Value;

#[path = "tiering/keys.rs"]
mod keys;
use keys::Keys;

const BIG_FILES: usize = 16;
const BIG: usize = 64 << 20;

#[test]
fn a_one_file_restore_from_a_1_gib_store_reads_under_one_percent_of_it() {
    let server = S3Server::start();
    server.create_bucket("ranges");
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    // Incompressible content, written in pieces (no 1 GiB buffer).
    for i in 0..BIG_FILES {
        use std::io::Write;
        let mut f = std::fs::File::create(src.join(format!("big-{i:02}.bin"))).unwrap();
        for _ in 0..(BIG >> 20) {
            f.write_all(&cbfs_tests::random_bytes(1 << 20)).unwrap();
        }
    }
    std::fs::create_dir(src.join("docs")).unwrap();
    std::fs::write(src.join("docs/needle.txt"), b"the one file wanted").unwrap();
    let spec = "s3://ranges/store";
    let index = work.path("index");
    // A gigabyte into moto: slow on a busy 2-core machine, so it gets more
    // than the usual command timeout (this is no timing test).
    run_ok_within(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&src)
            .args(["--store", spec, "--index"])
            .arg(&index)
            .arg("--keyset")
            .arg(keys.keyset())
            .arg("--writer-key")
            .arg(keys.writer())
            .args(["--segment-size", "256M"])
            .envs(server.envs()),
        std::time::Duration::from_secs(900),
    );
    let stored: u64 = server.list_objects("ranges").iter().map(|(_, n)| n).sum();
    assert!(stored > (BIG_FILES * BIG) as u64, "{stored} bytes stored");

    // cbfs-tier restore, through a counting proxy.
    let proxy = FaultyProxy::start(server.socket_addr(), FaultPlan::new());
    let dest = work.path("tier-restore");
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "restore", "--store", spec, "--identity"])
            .arg(keys.admin())
            .arg("--index")
            .arg(&index)
            .arg("docs/needle.txt")
            .arg(&dest)
            .envs(server.envs_with_endpoint(&proxy.endpoint())),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["restored_entries"], 1, "{report}");
    assert_eq!(
        std::fs::read(dest.join("docs/needle.txt")).unwrap(),
        b"the one file wanted"
    );
    let relayed = proxy.bytes_relayed();
    let fetched = report["fetched_bytes"].as_u64().unwrap();
    assert!(
        relayed * 100 < stored && fetched <= relayed,
        "cbfs-tier restore fetched {relayed} bytes through the proxy ({fetched} by its count) of a {stored}-byte store"
    );
    drop(proxy);

    // cbfs-recover, with its own S3 client, through another proxy.
    let proxy = FaultyProxy::start(server.socket_addr(), FaultPlan::new());
    let tar = work.path("needle.tar");
    run_ok(
        cbfs_cmd("cbfs-recover")
            .args(["--identity", &keys.admin(), "--store", spec])
            .args(["--path", "docs/needle.txt", "-o"])
            .arg(&tar)
            .envs(server.envs_with_endpoint(&proxy.endpoint())),
    );
    let relayed = proxy.bytes_relayed();
    assert!(
        relayed * 100 < stored,
        "cbfs-recover fetched {relayed} bytes of a {stored}-byte store"
    );
    let listing = run_ok(std::process::Command::new("tar").arg("tf").arg(&tar));
    assert!(String::from_utf8_lossy(&listing.stdout).contains("docs/needle.txt"));
}

/// Files of the whole-restore test, and their largest size.
const MANY_FILES: usize = 3000;
const MANY_MAX: usize = 24 << 10;

/// A whole restore from a store it reads by ranges (here a local directory
/// through the agent's store client), with four decoding threads: the
/// workers fetch the members they decode as laid out in the store, so
/// every stored byte is fetched about once (the first pass reads only the
/// members' heads). Reading each segment through one reader per worker
/// that guessed how far ahead to read fetched most bytes two or three
/// times.
#[test]
fn a_whole_restore_by_ranges_fetches_each_stored_byte_about_once() {
    let work = Workdir::new();
    let keys = Keys::new(&work);
    let src = work.mkdir("src");
    let mut seed = 7u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..MANY_FILES {
        let dir = src.join(format!("d{:02}", i % 16));
        std::fs::create_dir_all(&dir).unwrap();
        let len = (next() as usize) % MANY_MAX + 1;
        // Half compress well, half not at all: members of every size.
        let data = if i % 2 == 0 {
            format!("line {i} of a text that repeats\n")
                .into_bytes()
                .into_iter()
                .cycle()
                .take(len)
                .collect()
        } else {
            cbfs_tests::random_bytes(len)
        };
        std::fs::write(dir.join(format!("f{i:05}")), data).unwrap();
    }
    let store = work.path("store");
    let index = work.path("index");
    run_ok(
        cbfs_cmd("cbfs-tier")
            .arg("out")
            .arg(&src)
            .arg("--store")
            .arg(&store)
            .arg("--index")
            .arg(&index)
            .arg("--keyset")
            .arg(keys.keyset())
            .arg("--writer-key")
            .arg(keys.writer()),
    );
    let stored = bytes_under(&store);
    let dest = work.path("restored");
    let out = run_ok(
        cbfs_cmd("cbfs-tier")
            .args(["--json", "restore", "--jobs", "4", "--store"])
            .arg(&store)
            .arg("--identity")
            .arg(keys.admin())
            .arg("--index")
            .arg(&index)
            .arg(".")
            .arg(&dest),
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["restored_entries"].as_u64().unwrap() >= MANY_FILES as u64,
        "{report}"
    );
    cbfs_tests::assert_same_tree(&src, &dest, cbfs_tests::Compare::default());
    let fetched = report["fetched_bytes"].as_u64().unwrap();
    assert!(
        fetched <= stored + stored / 10,
        "a whole restore fetched {fetched} bytes of a {stored}-byte store"
    );
}

/// The bytes of the files under `dir`.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            bytes_under(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}
