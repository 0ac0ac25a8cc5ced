//! The tools end to end on a real distributed object store: a one-machine
//! Ceph cluster (monitor, manager, one OSD on memstore) with radosgw as the
//! S3 server. One cluster, one test (a cluster takes about 15 s to start):
//! `cbfs-tier out` (a segment above the part size goes up as a multipart
//! upload), an incremental run after changes, `cbfs-tier verify`, `cbfs-tier
//! restore` of each snapshot compared bit for bit with the tree as it was,
//! then `cbfs-tier forget` and both phases of `cbfs-gc` with no key at all,
//! and every kept snapshot restored again.

#[path = "gc/env.rs"]
mod env;

use std::time::Instant;

use cbfs_tests::{Backend, CephServer, random_bytes};
use env::{Env, gc_without_any_key, phase_two};

#[test]
fn tier_verify_restore_and_collect_on_ceph() {
    let began = Instant::now();
    let ceph = CephServer::start();
    eprintln!("ceph: cluster started in {:.1?}", ceph.started_in());
    ceph.create_bucket("cbfs-e2e");
    let mut env = Env::new(4711, 30, |_| Backend::Ceph {
        server: Box::new(ceph),
        bucket: "cbfs-e2e".into(),
    });

    // First run: 17 MiB of random data in one segment, above the store's
    // 16 MiB part size, so it goes up in parts.
    std::fs::write(env.src.join("huge.bin"), random_bytes(17 << 20)).unwrap();
    env.segment_size = "64M";
    let r1 = env.tier();
    assert_eq!(r1["sequence"], 1, "{r1}");
    assert!(r1["files"].as_u64().unwrap() > 30, "{r1}");
    let biggest = listed(&env).into_iter().map(|(_, size)| size).max();
    let biggest = biggest.unwrap();
    assert!(biggest > 17 << 20, "no multipart-sized segment: {biggest}");

    // Incremental runs after changes store only what changed.
    env.segment_size = "64K";
    let stored = stored_bytes(&env, "segments/");
    env.change(6, 2, 120_000);
    let r2 = env.tier();
    assert_eq!(r2["sequence"], 2, "{r2}");
    let changed = r2["files"].as_u64().unwrap();
    assert!((1..20).contains(&changed), "{r2}");
    let added = stored_bytes(&env, "segments/") - stored;
    assert!(added < 2 << 20, "an incremental run stored {added} bytes");
    for seq in [3, 4] {
        env.change(6, 2, 120_000);
        let r = env.tier();
        assert_eq!(r["sequence"], seq, "{r}");
    }

    // The store verifies without a key; every snapshot restores bit for bit.
    let v = env.verify();
    assert!(v["segments"].as_u64().unwrap() >= 3, "{v}");
    for seq in [1, 4] {
        env.assert_restores(seq);
    }
    step("tier out four times, verify, restore two", &began);

    // Forget the two oldest (the files replaced since are garbage then);
    // the collector, with no key anywhere, records a collection, waits for
    // the agent's next run, then deletes.
    let f = env.forget(&["--keep-last", "2"]);
    assert_eq!(f["forgotten"], 2, "{f:#}");
    assert_eq!(env.sequences(), [3, 4]);
    let before = stored_bytes(&env, "");
    let one = gc_without_any_key(&env, &["--min-live", "90"]);
    let collection = one["phase_one"]["collection"]
        .as_str()
        .unwrap_or_else(|| panic!("phase one records a collection: {one:#}"))
        .to_owned();
    env.verify();
    let r4 = env.tier();
    assert!(r4["snapshot"].is_null(), "{r4}");
    let two = gc_without_any_key(&env, &["--min-live", "90"]);
    let p2 = phase_two(&two, &collection);
    assert_eq!(p2["done"], true, "{two:#}");
    assert!(p2["segments_deleted"].as_u64().unwrap() > 0, "{two:#}");
    let after = stored_bytes(&env, "");
    assert!(
        after < before,
        "the collector freed nothing: {before} -> {after}"
    );

    // Everything kept still restores bit for bit; the forgotten one is gone.
    env.verify();
    for seq in [3, 4] {
        env.assert_restores(seq);
    }
    env.recover_fails(1);
    env.recover_fails(2);
    step("forget, collect in two phases, verify, restore two", &began);
    eprintln!(
        "ceph: store {before} -> {after} bytes after the collection; test took {:.1?}",
        began.elapsed()
    );
}

/// The store's objects as `(key, size)`, from a listing (without fetching
/// them, as `Env::bytes_under` does).
fn listed(env: &Env) -> Vec<(String, u64)> {
    let Backend::Ceph { server, bucket } = &env.backend else {
        unreachable!("a Ceph store")
    };
    server.list_objects(bucket)
}

/// Bytes of the store's objects under `prefix` (relative to the store).
fn stored_bytes(env: &Env, prefix: &str) -> u64 {
    listed(env)
        .into_iter()
        .filter(|(key, _)| {
            key.strip_prefix("cbfs/")
                .is_some_and(|k| k.starts_with(prefix))
        })
        .map(|(_, size)| size)
        .sum()
}

fn step(what: &str, began: &Instant) {
    eprintln!("ceph: {what}: {:.1?} since the start", began.elapsed());
}
