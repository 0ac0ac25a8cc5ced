//! Opening stores from a specification, and what the local store leaves on
//! disk.

mod common;

use std::process::Command;

use cbfs_store::{Error, PutOutcome, Store};
use common::{PART, pattern};

#[test]
fn specs_that_are_refused() {
    for spec in [
        "",
        "ftp://host/x",
        "s3://",
        "s3://Upper",
        "s3://ab",
        "s3://bucket/../x",
    ] {
        let err = Store::open(spec).unwrap_err();
        assert!(matches!(err, Error::BadSpec { .. }), "{spec:?}: {err:?}");
    }
    let err = Store::open("s3://AKIAXXXX:hunter2-secret@bucket/p").unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
}

#[test]
fn a_directory_spec_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("a/b/store");
    let store = Store::open(root.to_str().unwrap()).unwrap();
    assert!(root.is_dir());
    assert!(
        store.describe().contains("local directory"),
        "{}",
        store.describe()
    );
    assert!(store.describe().contains("store"), "{}", store.describe());
}

#[test]
fn the_local_store_keeps_plain_files_and_no_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open_with(
        root.to_str().unwrap(),
        cbfs_store::StoreOptions::new().with_part_size(PART),
    )
    .unwrap();
    let src = dir.path().join("src");
    let data = pattern(2 * PART + 5, 1);
    std::fs::write(&src, &data).unwrap();
    common::runtime().block_on(async {
        assert_eq!(
            store.put_file_new("segments/x.tar", &src).await.unwrap(),
            PutOutcome::Created
        );
        store.put_new("summaries/x", b"sum".to_vec()).await.unwrap();
        assert!(
            store
                .put_new("summaries/x", b"other".to_vec())
                .await
                .is_err()
        );
    });
    assert!(std::fs::read(root.join("segments/x.tar")).unwrap() == data);
    assert_eq!(std::fs::read(root.join("summaries/x")).unwrap(), b"sum");
    // Nothing but the objects (and the empty staging area) remains.
    let staging = root.join(".cbfs-staging");
    if staging.exists() {
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    }
    for sub in ["segments", "summaries"] {
        let names: Vec<_> = std::fs::read_dir(root.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1, "{sub}: {names:?}");
    }
}

/// `Store::open("s3://...")` reads the standard `AWS_*` variables. The
/// environment is per process, so the check runs in a child process: this
/// test binary again, running only the ignored helper below.
#[test]
fn s3_spec_reads_the_aws_environment() {
    let s3 = common::moto();
    let bucket = common::new_bucket();
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe)
        .args(["--exact", "s3_env_child", "--ignored", "--nocapture"])
        .envs(s3.envs())
        .env("CBFS_STORE_TEST_BUCKET", &bucket)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "the child ran no test:\n{stdout}"
    );
    assert_eq!(
        s3.get_object(&bucket, "from-env/objects/k"),
        b"written by the child"
    );
}

#[test]
#[ignore = "helper: run by s3_spec_reads_the_aws_environment in a child process"]
fn s3_env_child() {
    let bucket = std::env::var("CBFS_STORE_TEST_BUCKET").expect("run by the parent test");
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let store = Store::open(&format!("s3://{bucket}/from-env")).unwrap();
    assert!(store.describe().contains(&endpoint), "{}", store.describe());
    common::runtime().block_on(async {
        let out = store
            .put_new("objects/k", b"written by the child".to_vec())
            .await;
        assert_eq!(out.unwrap(), PutOutcome::Created);
        assert_eq!(store.list("objects").await.unwrap().len(), 1);
    });
}

#[test]
fn leftovers_of_interrupted_writes_are_swept() {
    use std::time::{Duration, SystemTime};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = Store::open_local(&root, cbfs_store::StoreOptions::new()).unwrap();
    let old = SystemTime::now() - Duration::from_secs(7200);
    let make = |rel: &str, age: SystemTime| {
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(age).unwrap();
        path
    };
    let stale_part = make(".cbfs-staging/123-abc-0#1", old);
    let stale_staged = make(".cbfs-staging/123-abc-1", old);
    let stale_put = make("segments/x.tar#1", old);
    let fresh_put = make("segments/y.tar#1", SystemTime::now());
    let object = make("segments/z.tar", old);
    let odd = make("segments/w#x", old);
    let swept = common::runtime()
        .block_on(store.sweep_leftovers(Duration::from_secs(3600)))
        .unwrap();
    assert_eq!(swept, 3);
    for gone in [&stale_part, &stale_staged, &stale_put] {
        assert!(!gone.exists(), "{}", gone.display());
    }
    for kept in [&fresh_put, &object, &odd] {
        assert!(kept.exists(), "{}", kept.display());
    }
}
