//! Retries and failures against a real S3 server behind a fault-injecting
//! proxy.

mod common;

use std::time::Duration;

use cbfs_store::{Error, Op, PutOutcome, RetryPolicy, Store};
use cbfs_tests::{Fault, FaultPlan, free_port};
use common::{Fixture, PART, options, pattern, s3_config};

fn few_retries() -> RetryPolicy {
    RetryPolicy::new(
        2,
        Duration::from_millis(5),
        Duration::from_millis(20),
        Duration::from_secs(10),
    )
}

#[test]
fn put_and_get_survive_503s_and_dropped_connections() {
    let fx = Fixture::behind_proxy(
        FaultPlan::new()
            .then(Fault::SlowDown)
            .then(Fault::DropBeforeResponse)
            .then(Fault::InternalError),
    );
    let data = pattern(2048, 1);
    fx.run(|fx| async move {
        // The PUT meets all three faults, then goes through.
        let out = fx.store.put_new("k", data.clone()).await.unwrap();
        assert_eq!(out, PutOutcome::Created);
        assert_eq!(fx.store.get("k").await.unwrap(), data);
    });
    let proxy = fx.proxy().unwrap();
    assert_eq!(proxy.faults_injected(), 3);
    let seen = proxy.requests();
    assert!(seen[..4].iter().all(|r| r.method == "PUT"), "{seen:?}");
}

#[test]
fn answers_cut_in_the_middle_are_retried() {
    // Every one of these requests is carried out by the server, but the
    // client sees its answer cut off halfway.
    let fx = Fixture::behind_proxy(FaultPlan::first(1, Fault::DropMidResponse));
    let data = pattern(100_000, 2);
    let sent = data.clone();
    fx.run(|fx| async move {
        // The PUT took effect; the retry finds the same bytes there.
        let out = fx.store.put_new("k", sent).await.unwrap();
        assert!(matches!(
            out,
            PutOutcome::Created | PutOutcome::AlreadyPresent
        ));
    });

    let proxy = cbfs_tests::FaultyProxy::start(
        common::moto().socket_addr(),
        FaultPlan::new()
            .then(Fault::DropMidResponse) // GET: body cut
            .then(Fault::Pass)
            .then(Fault::DropMidResponse) // LIST: body cut
            .then(Fault::Pass)
            .then(Fault::DropMidResponse) // HEAD
            .then(Fault::SlowDown),
    );
    let common::Kind::Faulty { bucket, .. } = &fx.kind else {
        unreachable!()
    };
    let config = s3_config(&proxy.endpoint(), "test").with_retry(common::fast_retry());
    let store = Store::open_s3(bucket, "cbfs/fs1", &config, options()).unwrap();
    common::runtime().block_on(async {
        assert_eq!(store.get("k").await.unwrap(), data);
        let listed = store.list("").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(store.head("k").await.unwrap().unwrap().size, 100_000);
    });
    assert!(proxy.faults_injected() >= 3, "{:?}", proxy.requests());
}

#[test]
fn multipart_upload_survives_faults() {
    let fx = Fixture::behind_proxy(
        FaultPlan::new()
            .then(Fault::SlowDown) // CreateMultipartUpload
            .then(Fault::Pass)
            .then(Fault::DropBeforeResponse) // a part
            .then(Fault::InternalError)
            .then(Fault::Pass)
            .then(Fault::SlowDown)
            .then(Fault::Pass)
            .then(Fault::DropBeforeResponse),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("seg");
    let data = pattern(2 * PART + 10, 3);
    std::fs::write(&path, &data).unwrap();
    fx.run(|fx| async move {
        let out = fx
            .store
            .put_file_new("segments/s.tar", &path)
            .await
            .unwrap();
        assert_eq!(out, PutOutcome::Created);
        assert!(fx.store.get("segments/s.tar").await.unwrap() == data);
    });
    let proxy = fx.proxy().unwrap();
    assert_eq!(proxy.faults_injected(), 5, "{:?}", proxy.requests());
    // Exactly one completion went through, with the write-once header.
    let completions = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.target.contains("uploadId="))
        .count();
    assert!(completions >= 1);
}

#[test]
fn a_store_that_keeps_failing_gives_transient_errors() {
    for fault in [
        Fault::SlowDown,
        Fault::InternalError,
        Fault::DropBeforeResponse,
    ] {
        let fx = Fixture::behind_proxy_with(FaultPlan::first(10_000, fault.clone()), few_retries());
        let f = fault.clone();
        fx.run(|fx| async move {
            let fault = f;
            let key = "segments/doomed.tar";
            let err = fx.store.put_new(key, b"x".to_vec()).await.unwrap_err();
            assert!(
                matches!(&err, Error::Transient { key: k, op: Op::Put, .. } if k == key),
                "{fault:?}: {err:?}"
            );
            assert!(err.is_transient());
            let msg = err.to_string();
            assert!(
                msg.contains(key) && msg.contains(fx.store.describe()),
                "{msg}"
            );

            let err = fx.store.get(key).await.unwrap_err();
            assert!(err.is_transient(), "{fault:?}: {err:?}");
            let err = fx.store.list("segments").await.unwrap_err();
            assert!(err.is_transient(), "{fault:?}: {err:?}");
        });
        let proxy = fx.proxy().unwrap();
        // Bounded: each operation is tried a few times, not forever.
        let seen = proxy.requests_seen();
        assert!((3..=40).contains(&seen), "{fault:?}: {seen} requests");
    }
}

#[test]
fn an_unreachable_endpoint_is_transient() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let config = s3_config(&endpoint, "test").with_retry(few_retries());
    let store = Store::open_s3("bucket", "", &config, options()).unwrap();
    common::runtime().block_on(async {
        let err = store.get("k").await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    });
}

#[test]
fn secrets_stay_out_of_messages() {
    let secret = "Zs3cr3t-v4lue-that-must-not-leak-0123456789";
    let proxy = cbfs_tests::FaultyProxy::start(
        common::moto().socket_addr(),
        FaultPlan::first(10_000, Fault::SlowDown),
    );
    let config = s3_config(&proxy.endpoint(), secret).with_retry(few_retries());
    let store = Store::open_s3("bucket", "p", &config, options()).unwrap();
    let mut texts = vec![
        store.describe().to_string(),
        format!("{store:?}"),
        format!("{config:?}"),
    ];
    common::runtime().block_on(async {
        texts.push(
            store
                .put_new("k", b"x".to_vec())
                .await
                .unwrap_err()
                .to_string(),
        );
        texts.push(format!("{:?}", store.get("k").await.unwrap_err()));
    });
    for text in texts {
        assert!(!text.contains(secret), "secret in {text}");
    }
}

#[test]
fn missing_bucket_is_a_permanent_error() {
    let config = s3_config(&common::moto().endpoint(), "test");
    let store = Store::open_s3("no-such-bucket", "", &config, options()).unwrap();
    common::runtime().block_on(async {
        let err = store.put_new("k", b"x".to_vec()).await.unwrap_err();
        assert!(matches!(err, Error::Permanent { .. }), "{err:?}");
        assert!(err.to_string().contains("no-such-bucket"), "{err}");
        let err = store.get("k").await.unwrap_err();
        assert!(matches!(err, Error::Permanent { .. }), "{err:?}");
        let err = store.list("").await.unwrap_err();
        assert!(matches!(err, Error::Permanent { .. }), "{err:?}");
    });
}

#[test]
fn without_conditional_writes_puts_are_still_write_once() {
    let bucket = common::new_bucket();
    let config = s3_config(&common::moto().endpoint(), "test").with_conditional_writes(false);
    let store = Store::open_s3(&bucket, "", &config, options()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    let data = pattern(PART + 1, 4);
    std::fs::write(&path, &data).unwrap();
    common::runtime().block_on(async {
        let put = |bytes: Vec<u8>| store.put_new("k", bytes);
        assert_eq!(put(b"a".to_vec()).await.unwrap(), PutOutcome::Created);
        assert_eq!(
            put(b"a".to_vec()).await.unwrap(),
            PutOutcome::AlreadyPresent
        );
        assert!(put(b"b".to_vec()).await.unwrap_err().is_already_exists());
        assert_eq!(store.get("k").await.unwrap(), &b"a"[..]);
        let out = store.put_file_new("big", &path).await.unwrap();
        assert_eq!(out, PutOutcome::Created);
        let out = store.put_file_new("big", &path).await.unwrap();
        assert_eq!(out, PutOutcome::AlreadyPresent);
        assert!(store.get("big").await.unwrap() == data);
    });
}

#[test]
fn objects_live_under_the_prefix() {
    let fx = Fixture::s3();
    fx.run(|fx| async move {
        fx.store.put_new("segments/a", b"a".to_vec()).await.unwrap();
    });
    let common::Kind::S3 { bucket } = &fx.kind else {
        unreachable!()
    };
    assert_eq!(
        common::moto().list_objects(bucket),
        vec![("cbfs/fs1/segments/a".to_string(), 1)]
    );
    // An object outside the prefix is not the store's.
    common::moto().put_object(bucket, "elsewhere/x", b"x");
    fx.run(|fx| async move {
        let keys: Vec<_> = fx.store.list("").await.unwrap();
        assert_eq!(keys.len(), 1);
    });
}
