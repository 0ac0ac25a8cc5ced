//! One behaviour suite, run against every backend: a local directory, a real
//! S3 server (`moto_server` on 127.0.0.1), that server behind a proxy that
//! injects 503s, 500s and dropped connections, and a real distributed
//! object store (a one-machine Ceph cluster with radosgw).
//!
//! Each case is an async function taking a [`Fixture`]; the `suite!` macro
//! turns it into one test per backend, and lists every case in [`CASES`].
//! A Ceph cluster takes about 20 s to start, so Ceph gets one test that
//! starts one cluster and runs every case of the list against it, a fresh
//! bucket each, followed by the cases about radosgw's own behaviour
//! (`ceph_only`). A missing `moto_server` or Ceph program is a failure,
//! never a skip.

mod common;

use std::future::Future;
use std::pin::Pin;

use cbfs_store::{Error, ObjectInfo, PutOutcome};
use common::{Fixture, PART, pattern};

/// What a case returns: its future, borrowing the fixture.
type CaseFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;
/// A case of the suite, callable from a list.
type Case = for<'a> fn(&'a Fixture) -> CaseFuture<'a>;

macro_rules! suite {
    (
        all: [$($case:ident),* $(,)?],
        local: [$($local:ident),* $(,)?],
        ceph: [$($ceph:ident),* $(,)?] $(,)?
    ) => {
        mod local {
            $(#[test] fn $case() { let fx = super::Fixture::local(); fx.run(super::$case); })*
            $(#[test] fn $local() { let fx = super::Fixture::local(); fx.run(super::$local); })*
        }
        mod s3 {
            $(#[test] fn $case() { let fx = super::Fixture::s3(); fx.run(super::$case); })*
        }
        mod s3_faulty {
            $(#[test] fn $case() {
                let fx = super::Fixture::faulty();
                fx.run(super::$case);
                let proxy = fx.proxy().expect("a proxy");
                assert!(proxy.faults_injected() > 0, "the proxy injected no fault");
            })*
        }
        /// Every case every backend passes, by name.
        const CASES: &[(&str, Case)] = &[$((stringify!($case), |fx| Box::pin($case(fx)))),*];
        /// The cases Ceph passes beside those (see `suite!`'s list).
        const CEPH_CASES: &[(&str, Case)] = &[$((stringify!($ceph), |fx| Box::pin($ceph(fx)))),*];
    };
}

suite!(
    all: [
        round_trip,
        same_bytes_twice_is_fine,
        different_bytes_are_refused,
        missing_objects_are_not_found,
        list_is_sorted_and_scoped,
        ranges,
        delete_is_idempotent,
        large_file_goes_in_parts,
        small_file_goes_in_one_put,
        download_to_file,
        read_in_pieces,
        bad_keys_are_refused,
        a_batch_gives_each_objects_own_outcome,
    ],
    // Two writers racing for one key: exactly one may win. On S3 that is the
    // server's promise for `If-None-Match: *`; moto checks the condition and
    // then writes, without a lock, so on moto both racers can win. These
    // run on the local store only, where the hard link decides atomically.
    local: [
        racing_writers_one_wins,
        racing_multipart_writers_one_wins,
    ],
    // radosgw decides a conditional PutObject atomically (an exclusive
    // create in RADOS), so single-request racers are tested there too. Not
    // multipart racers: radosgw ignores the condition on the completion
    // (see `ceph_only`).
    ceph: [
        racing_writers_one_wins,
    ],
);

fn keys(list: &[ObjectInfo]) -> Vec<&str> {
    list.iter().map(|o| o.key.as_str()).collect()
}

/// The message names the store and the key.
fn assert_names(err: &Error, fx: &Fixture, key: &str) {
    let msg = err.to_string();
    assert!(msg.contains(fx.store.describe()), "store not named: {msg}");
    assert!(msg.contains(key), "key not named: {msg}");
}

async fn round_trip(fx: &Fixture) {
    let data = pattern(10_000, 1);
    let out = fx.store.put_new("segments/aa.tar", data.clone()).await;
    assert_eq!(out.unwrap(), PutOutcome::Created);
    assert_eq!(fx.store.get("segments/aa.tar").await.unwrap(), data);
    let info = fx.store.head("segments/aa.tar").await.unwrap().unwrap();
    assert_eq!(info.key, "segments/aa.tar");
    assert_eq!(info.size, 10_000);

    // The empty object is an object too.
    let out = fx.store.put_new("empty", Vec::new()).await.unwrap();
    assert_eq!(out, PutOutcome::Created);
    assert!(fx.store.get("empty").await.unwrap().is_empty());
    assert_eq!(fx.store.head("empty").await.unwrap().unwrap().size, 0);
}

async fn same_bytes_twice_is_fine(fx: &Fixture) {
    let data = pattern(3000, 2);
    let first = fx
        .store
        .put_new("lockboxes/g1", data.clone())
        .await
        .unwrap();
    assert_eq!(first, PutOutcome::Created);
    let again = fx
        .store
        .put_new("lockboxes/g1", data.clone())
        .await
        .unwrap();
    assert_eq!(again, PutOutcome::AlreadyPresent);
    assert_eq!(fx.store.get("lockboxes/g1").await.unwrap(), data);
    assert_eq!(fx.store.list("").await.unwrap().len(), 1);
}

async fn different_bytes_are_refused(fx: &Fixture) {
    let key = "snapshots/0001.manifest";
    let original = pattern(500, 3);
    fx.store.put_new(key, original.clone()).await.unwrap();
    for other in [pattern(500, 4), pattern(501, 3), Vec::new()] {
        let err = fx.store.put_new(key, other).await.unwrap_err();
        assert!(
            matches!(&err, Error::AlreadyExists { key: k, .. } if k == key),
            "{err:?}"
        );
        assert!(err.is_already_exists() && !err.is_transient());
        assert_names(&err, fx, key);
    }
    assert_eq!(fx.store.get(key).await.unwrap(), original);
}

/// `put_many_new`: every object written, in the order given, each with the
/// outcome `put_new` would give it (a local store flushes the batch once).
async fn a_batch_gives_each_objects_own_outcome(fx: &Fixture) {
    fx.store
        .put_new("lockboxes/s/taken", pattern(100, 1))
        .await
        .unwrap();
    fx.store
        .put_new("lockboxes/s/same", pattern(100, 2))
        .await
        .unwrap();
    let mut items: Vec<(String, bytes::Bytes)> = (0..40)
        .map(|i| (format!("lockboxes/s/g{i:02}"), pattern(200 + i, 5).into()))
        .collect();
    items.push(("lockboxes/s/taken".into(), pattern(100, 9).into()));
    items.push(("lockboxes/s/same".into(), pattern(100, 2).into()));
    let results = fx.store.put_many_new(items.clone(), 8).await;
    assert_eq!(results.len(), items.len());
    for (i, r) in results.iter().take(40).enumerate() {
        assert_eq!(r.as_ref().unwrap(), &PutOutcome::Created, "object {i}");
    }
    let err = results[40].as_ref().unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_names(err, fx, "lockboxes/s/taken");
    assert_eq!(results[41].as_ref().unwrap(), &PutOutcome::AlreadyPresent);
    for (key, bytes) in items.iter().take(40) {
        assert_eq!(&fx.store.get(key).await.unwrap()[..], &bytes[..]);
    }
    assert!(fx.store.put_many_new(Vec::new(), 8).await.is_empty());
}

async fn missing_objects_are_not_found(fx: &Fixture) {
    let key = "segments/missing.tar";
    let err = fx.store.get(key).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotFound { key: k, .. } if k == key),
        "{err:?}"
    );
    assert!(err.is_not_found() && !err.is_transient());
    assert_names(&err, fx, key);
    assert!(fx.store.head(key).await.unwrap().is_none());
    let err = fx.store.get_range(key, 0..10).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    let err = fx
        .store
        .get_range_into(key, 0..10, Vec::new())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_names(&err, fx, key);
    let dir = tempfile::tempdir().unwrap();
    let err = fx
        .store
        .get_to_file(key, dir.path().join("out"))
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

async fn list_is_sorted_and_scoped(fx: &Fixture) {
    let names = [
        "segments/b.tar",
        "summaries/a.sum",
        "segments/a.tar",
        "segments-old/x",
        "segments/sub/c.tar",
        "segment",
        "z",
    ];
    for (i, name) in names.iter().enumerate() {
        fx.store.put_new(name, pattern(10 + i, 5)).await.unwrap();
    }
    let segments = fx.store.list("segments").await.unwrap();
    assert_eq!(
        keys(&segments),
        ["segments/a.tar", "segments/b.tar", "segments/sub/c.tar"]
    );
    assert_eq!(segments[0].size, 12);
    assert_eq!(
        keys(&fx.store.list("segments/").await.unwrap()),
        keys(&segments)
    );
    assert_eq!(
        keys(&fx.store.list("segments/sub").await.unwrap()),
        ["segments/sub/c.tar"]
    );
    let mut all: Vec<&str> = names.to_vec();
    all.sort();
    assert_eq!(keys(&fx.store.list("").await.unwrap()), all);
    assert!(fx.store.list("nothing").await.unwrap().is_empty());
    assert!(fx.store.list("segm").await.unwrap().is_empty());
}

async fn ranges(fx: &Fixture) {
    let data = pattern(100, 6);
    fx.store.put_new("r", data.clone()).await.unwrap();
    for range in [0..100u64, 10..20, 0..1, 99..100] {
        let got = fx.store.get_range("r", range.clone()).await.unwrap();
        assert_eq!(
            got,
            data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    assert!(fx.store.get_range("r", 5..5).await.unwrap().is_empty());
    for bad in [90..101u64, 100..110, 200..300] {
        let err = fx.store.get_range("r", bad.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Permanent { .. }), "{bad:?}: {err:?}");
        assert_names(&err, fx, "r");
    }
    // The same into a buffer handed back each time: what it held before
    // never shows.
    let mut buf = vec![0xee; 300];
    for range in [0..100u64, 10..20, 0..1, 99..100, 5..5, 0..100] {
        buf = fx
            .store
            .get_range_into("r", range.clone(), buf)
            .await
            .unwrap();
        assert_eq!(
            buf,
            data[range.start as usize..range.end as usize],
            "{range:?}"
        );
    }
    for bad in [90..101u64, 100..110, 200..300] {
        let err = fx
            .store
            .get_range_into("r", bad.clone(), Vec::new())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Permanent { .. }), "{bad:?}: {err:?}");
        assert_names(&err, fx, "r");
    }
    // Many ranges at once: each one's bytes, one after another (overlaps
    // and empty ranges too); one range past the end fails the call, naming
    // the object.
    let many = vec![0..10u64, 95..100, 5..5, 3..40, 0..100, 99..100];
    let got = fx.store.get_ranges("r", many.clone()).await.unwrap();
    let want: Vec<u8> = many
        .iter()
        .flat_map(|r| data[r.start as usize..r.end as usize].to_vec())
        .collect();
    assert_eq!(got, want);
    assert!(
        fx.store
            .get_ranges("r", Vec::new())
            .await
            .unwrap()
            .is_empty()
    );
    for bad in [vec![0..10u64, 90..101], vec![100..110, 0..1]] {
        let err = fx.store.get_ranges("r", bad.clone()).await.unwrap_err();
        assert!(matches!(err, Error::Permanent { .. }), "{bad:?}: {err:?}");
        assert_names(&err, fx, "r");
    }
    let err = fx
        .store
        .get_ranges("none", vec![0..1, 1..2])
        .await
        .unwrap_err();
    assert_names(&err, fx, "none");
}

async fn delete_is_idempotent(fx: &Fixture) {
    fx.store.put_new("gc/old", b"old".to_vec()).await.unwrap();
    fx.store.put_new("gc/keep", b"keep".to_vec()).await.unwrap();
    fx.store.delete("gc/old").await.unwrap();
    assert!(fx.store.head("gc/old").await.unwrap().is_none());
    fx.store.delete("gc/old").await.unwrap();
    fx.store.delete("gc/never-was").await.unwrap();
    assert_eq!(keys(&fx.store.list("gc").await.unwrap()), ["gc/keep"]);
    // A deleted key is free again.
    let out = fx.store.put_new("gc/old", b"new".to_vec()).await.unwrap();
    assert_eq!(out, PutOutcome::Created);
}

async fn large_file_goes_in_parts(fx: &Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("segment.tar");
    let data = pattern(2 * PART + 1_234_567, 7); // three parts, the last short
    std::fs::write(&big, &data).unwrap();
    let key = "segments/big.tar";

    let out = fx.store.put_file_new(key, &big).await.unwrap();
    assert_eq!(out, PutOutcome::Created);
    let got = fx.store.get(key).await.unwrap();
    assert!(got == data, "the object differs from the file");
    let info = fx.store.head(key).await.unwrap().unwrap();
    assert_eq!(info.size, data.len() as u64);
    match &fx.kind {
        common::Kind::S3 { .. } | common::Kind::Faulty { .. } => {
            let etag = info.e_tag.clone().expect("S3 gives an ETag");
            assert!(
                etag.trim_matches('"').ends_with("-3"),
                "not a 3-part upload: ETag {etag}"
            );
        }
        common::Kind::Local(root) => {
            // Same file system: linked into place, not copied.
            use std::os::unix::fs::MetadataExt as _;
            let object = std::fs::metadata(root.path().join("store").join(key)).unwrap();
            assert_eq!(object.ino(), std::fs::metadata(&big).unwrap().ino());
        }
    }
    if let Some(proxy) = fx.proxy() {
        let parts = proxy
            .requests()
            .iter()
            .filter(|r| r.method == "PUT" && r.target.contains("partNumber="))
            .count();
        assert!(parts >= 3, "{parts} part uploads went through the proxy");
    }

    // A rerun is fine; other bytes of the same size are refused.
    let again = fx.store.put_file_new(key, &big).await.unwrap();
    assert_eq!(again, PutOutcome::AlreadyPresent);
    let other = dir.path().join("other.tar");
    let mut changed = data.clone();
    changed[PART + 17] ^= 1;
    std::fs::write(&other, &changed).unwrap();
    let err = fx.store.put_file_new(key, &other).await.unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");
    assert_names(&err, fx, key);
    assert!(
        fx.store.get(key).await.unwrap() == data,
        "the original changed"
    );
    // No staging leftovers are listed.
    assert_eq!(keys(&fx.store.list("").await.unwrap()), [key]);
}

async fn small_file_goes_in_one_put(fx: &Fixture) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("summary");
    let data = pattern(PART, 8); // exactly the threshold: one request
    std::fs::write(&path, &data).unwrap();
    let out = fx.store.put_file_new("summaries/s1", &path).await.unwrap();
    assert_eq!(out, PutOutcome::Created);
    assert!(fx.store.get("summaries/s1").await.unwrap() == data);
    if !fx.is_local() {
        let info = fx.store.head("summaries/s1").await.unwrap().unwrap();
        let etag = info.e_tag.unwrap();
        assert!(!etag.contains('-'), "a multipart ETag: {etag}");
    }
    let err = fx
        .store
        .put_file_new("summaries/s2", dir.path().join("absent"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::LocalFile { .. }), "{err:?}");
}

async fn download_to_file(fx: &Fixture) {
    let data = pattern(PART + 999, 9);
    fx.store
        .put_new("segments/dl.tar", data.clone())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("restored.tar");
    std::fs::write(&dest, b"stale contents").unwrap();
    let n = fx
        .store
        .get_to_file("segments/dl.tar", &dest)
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == data);
    // Only the destination is left in the directory.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["restored.tar"]);
}

async fn read_in_pieces(fx: &Fixture) {
    let data = pattern(3 * 1000 + 17, 12);
    fx.store
        .put_new("segments/pieces.tar", data.clone())
        .await
        .unwrap();
    let gather = |mut r: cbfs_store::ObjectReader| async move {
        let mut out = Vec::new();
        let mut pieces = 0;
        while let Some(piece) = r.next().await.unwrap() {
            assert!(piece.len() <= 1000, "a piece of {} bytes", piece.len());
            out.extend_from_slice(&piece);
            pieces += 1;
        }
        (out, pieces)
    };
    let whole = fx
        .store
        .reader("segments/pieces.tar", None)
        .await
        .unwrap()
        .expect("the object is there")
        .with_piece_size(1000);
    assert_eq!(whole.size(), data.len() as u64);
    let (got, pieces) = gather(whole).await;
    assert!(got == data);
    assert_eq!(pieces, 4);
    let part = fx
        .store
        .reader("segments/pieces.tar", Some(990..2010))
        .await
        .unwrap()
        .unwrap()
        .with_piece_size(1000);
    assert_eq!(part.remaining(), 1020);
    let (got, pieces) = gather(part).await;
    assert!(got[..] == data[990..2010]);
    assert_eq!(pieces, 2);
    // A range past the end is an error naming the key; no object, None.
    let err = fx
        .store
        .reader("segments/pieces.tar", Some(10..4000))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("segments/pieces.tar"), "{err}");
    assert!(
        fx.store
            .reader("segments/none.tar", None)
            .await
            .unwrap()
            .is_none()
    );
}

async fn racing_writers_one_wins(fx: &Fixture) {
    let key = "manifests/race";
    let (a, b) = (pattern(4000, 10), pattern(4000, 11));
    let (ra, rb) = tokio::join!(
        fx.store.put_new(key, a.clone()),
        fx.store.put_new(key, b.clone())
    );
    let stored = fx.store.get(key).await.unwrap();
    match (ra, rb) {
        (Ok(PutOutcome::Created), Err(e)) => {
            assert!(e.is_already_exists(), "{e:?}");
            assert!(stored == a);
        }
        (Err(e), Ok(PutOutcome::Created)) => {
            assert!(e.is_already_exists(), "{e:?}");
            assert!(stored == b);
        }
        other => panic!("both or neither won: {other:?}"),
    }
}

async fn racing_multipart_writers_one_wins(fx: &Fixture) {
    let key = "segments/race.tar";
    let dir = tempfile::tempdir().unwrap();
    let (pa, pb) = (dir.path().join("a"), dir.path().join("b"));
    let (a, b) = (pattern(PART + 4096, 12), pattern(PART + 4096, 13));
    std::fs::write(&pa, &a).unwrap();
    std::fs::write(&pb, &b).unwrap();
    let (ra, rb) = tokio::join!(
        fx.store.put_file_new(key, &pa),
        fx.store.put_file_new(key, &pb)
    );
    let stored = fx.store.get(key).await.unwrap();
    match (ra, rb) {
        (Ok(PutOutcome::Created), Err(e)) => {
            assert!(e.is_already_exists(), "{e:?}");
            assert!(stored == a);
        }
        (Err(e), Ok(PutOutcome::Created)) => {
            assert!(e.is_already_exists(), "{e:?}");
            assert!(stored == b);
        }
        other => panic!("both or neither won: {other:?}"),
    }
    assert_eq!(keys(&fx.store.list("").await.unwrap()), [key]);
}

async fn bad_keys_are_refused(fx: &Fixture) {
    for key in [
        "../x",
        "/abs",
        "a//b",
        "",
        "a/../../etc/passwd",
        ".hidden",
        "a b",
    ] {
        let bad = |e: Error| assert!(matches!(e, Error::BadKey { .. }), "{key:?}: {e:?}");
        bad(fx.store.put_new(key, b"x".to_vec()).await.unwrap_err());
        bad(fx.store.get(key).await.unwrap_err());
        bad(fx.store.get_range(key, 0..1).await.unwrap_err());
        bad(fx.store.head(key).await.unwrap_err());
        bad(fx.store.delete(key).await.unwrap_err());
        bad(fx
            .store
            .put_file_new(key, "/nonexistent")
            .await
            .unwrap_err());
        bad(fx
            .store
            .get_to_file(key, "/nonexistent/out")
            .await
            .unwrap_err());
    }
    for prefix in ["../", "/", "a//", "."] {
        let e = fx.store.list(prefix).await.unwrap_err();
        assert!(matches!(e, Error::BadKey { .. }), "{prefix:?}: {e:?}");
    }
    let err = fx.store.get("../x").await.unwrap_err();
    assert!(err.to_string().contains("../x"), "{err}");
    assert!(fx.store.list("").await.unwrap().is_empty());
}

/// Ceph: one cluster for every case (a cluster takes about 20 s to start).
mod ceph {
    use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
    use std::time::{Duration, Instant};

    use cbfs_store::{PutOutcome, Store};
    use cbfs_tests::reqwest::Method;
    use cbfs_tests::{CephServer, Fault, FaultPlan, FaultyProxy, RequestMatch};

    use super::common::{self, Fixture, Kind, PART, pattern};

    /// Runs `case`, saying which one failed if it panics.
    fn named(name: &str, case: impl FnOnce()) {
        let began = Instant::now();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(case)) {
            eprintln!("ceph: case {name} failed");
            resume_unwind(panic);
        }
        eprintln!("ceph: {name} ({:.1?})", began.elapsed());
    }

    #[test]
    fn every_case_on_one_cluster() {
        let ceph = CephServer::start();
        eprintln!("ceph: cluster started in {:.1?}", ceph.started_in());
        let began = Instant::now();
        for (name, case) in super::CASES.iter().chain(super::CEPH_CASES) {
            let fx = Fixture::ceph(&ceph, &ceph.endpoint());
            named(name, || fx.run(*case));
        }
        named("the_server_ignores_the_condition_on_completion", || {
            the_server_ignores_the_condition_on_completion(&ceph)
        });
        named("a_writer_between_the_look_and_the_completion", || {
            a_writer_between_the_look_and_the_completion(&ceph)
        });
        let (rss, each) = ceph.resident_bytes();
        let each: Vec<String> = each
            .iter()
            .map(|(name, bytes)| format!("{name} {} MiB", bytes >> 20))
            .collect();
        eprintln!(
            "ceph: every case in {:.1?}; the cluster's resident memory {} MiB ({})",
            began.elapsed(),
            rss >> 20,
            each.join(", ")
        );
    }

    /// What radosgw (16.2) does with `If-None-Match: *`: a `PutObject` onto
    /// an existing key is refused (412), but a `CompleteMultipartUpload`
    /// carrying the same header replaces the object. This is why the store
    /// looks for the key before it completes an upload. (If a later radosgw
    /// refuses the completion, this check fails: then the store's look is
    /// a second guard, and docs/THREAT_MODEL.md's residual race is gone on
    /// that server.)
    fn the_server_ignores_the_condition_on_completion(ceph: &CephServer) {
        let bucket = "raw-conditions";
        let key = "k";
        ceph.create_bucket(bucket);
        ceph.put_object(bucket, key, b"first");
        let none_match = [("If-None-Match", "*")];
        let put = ceph.send(
            Method::PUT,
            bucket,
            key,
            &[],
            &none_match,
            b"second".to_vec(),
        );
        assert_eq!(put.status.as_u16(), 412, "{put:?}");
        assert_eq!(ceph.get_object(bucket, key), b"first");

        let created = ceph.send(Method::POST, bucket, key, &[("uploads", "")], &[], vec![]);
        assert!(created.status.is_success(), "{created:?}");
        let id = created.element("UploadId").expect("an upload id");
        let part = ceph.send(
            Method::PUT,
            bucket,
            key,
            &[("partNumber", "1"), ("uploadId", &id)],
            &[],
            b"multipart".to_vec(),
        );
        assert!(part.status.is_success(), "{part:?}");
        let etag = part.headers["etag"].to_str().unwrap().to_owned();
        let body = format!(
            "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber>\
             <ETag>{etag}</ETag></Part></CompleteMultipartUpload>"
        );
        let done = ceph.send(
            Method::POST,
            bucket,
            key,
            &[("uploadId", &id)],
            &none_match,
            body.into_bytes(),
        );
        assert!(
            done.status.is_success(),
            "radosgw now refuses the completion: {done:?}"
        );
        assert_eq!(
            ceph.get_object(bucket, key),
            b"multipart",
            "radosgw did not replace the object"
        );
    }

    /// The race the store cannot close on radosgw: another writer creates
    /// the key after the store looked for it and before its
    /// `CompleteMultipartUpload` arrives (held back here by a proxy). Both
    /// writers are told `Created`, and the upload has replaced the other
    /// writer's object. docs/THREAT_MODEL.md states this residual risk.
    fn a_writer_between_the_look_and_the_completion(ceph: &CephServer) {
        let proxy = FaultyProxy::start(
            ceph.socket_addr(),
            FaultPlan::new().on(
                RequestMatch::complete_multipart(),
                Fault::Delay(Duration::from_secs(2)),
            ),
        );
        let slow = Fixture::ceph(ceph, &proxy.endpoint());
        let Kind::S3 { bucket } = &slow.kind else {
            unreachable!("a Ceph fixture is an S3 one")
        };
        let config = common::s3_config_as(&ceph.endpoint(), ceph.access_key(), ceph.secret_key());
        let direct = Store::open_s3(bucket, "cbfs/fs1", &config, common::options()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("big");
        let big = pattern(PART + 4096, 31);
        std::fs::write(&file, &big).unwrap();
        let key = "segments/raced.tar";
        let small = pattern(1000, 32);

        let (upload, other) = common::runtime().block_on(async {
            let store = slow.store.clone();
            let upload = tokio::spawn(async move { store.put_file_new(key, &file).await });
            let completing = RequestMatch::complete_multipart();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !proxy
                .requests()
                .iter()
                .any(|r| completing.matches(&r.method, &r.target))
            {
                assert!(Instant::now() < deadline, "the upload never completed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let other = direct.put_new(key, small.clone()).await.unwrap();
            (upload.await.unwrap().unwrap(), other)
        });
        assert_eq!(other, PutOutcome::Created);
        assert_eq!(upload, PutOutcome::Created, "the residual race is closed?");
        let stored = common::runtime().block_on(direct.get(key)).unwrap();
        assert!(stored == big, "the upload did not replace the other object");
        // The store looked before it completed.
        let seen = proxy.requests();
        let complete = seen
            .iter()
            .position(|r| completing_matches(&r.method, &r.target))
            .expect("a completion");
        assert!(
            seen[..complete].iter().any(|r| r.method == "HEAD"),
            "no HEAD before the completion: {seen:?}"
        );
    }

    fn completing_matches(method: &str, target: &str) -> bool {
        RequestMatch::complete_multipart().matches(method, target)
    }
}
