//! A restore from S3 reads only the byte ranges it needs: one file out of a
//! store of 1 GiB costs its summary, lockboxes, manifest and that file's
//! member, counted at a proxy between the restore and the server, for both
//! `cbfs-tier restore` (the agent's store client) and `cbfs-recover` (its
//! own blocking client).

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
