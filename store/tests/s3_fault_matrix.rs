//! The S3 fault matrix: the faults a real S3 server or the network between
//! can throw at the store, each injected on the wire by the fault proxy in
//! front of a real server (moto), each with its expected outcome.
//!
//! - Transient faults (5xx, throttling, connections reset or closed before
//!   or in the middle of an answer, a body shorter than its
//!   `Content-Length`, silence past the request timeout, a `200 OK` whose
//!   body is an `InternalError` or `SlowDown` document, a completion that
//!   took effect but whose answer was lost): the store retries, the
//!   operation succeeds, and the object read back is byte-identical.
//! - Permanent faults (a skewed clock, expired or wrong credentials, a
//!   missing bucket, a wrong part ETag, a listing truncated without a
//!   continuation token, a `200 OK` carrying `AccessDenied`): the store
//!   stops at once (the faulted request is not repeated) with an error that
//!   is not transient, names the object key and the endpoint, and carries
//!   neither the secret key nor the session token.
//! - Whatever happens to a write, the key then holds the whole object or
//!   nothing, and no multipart upload is left behind.
//!
//! Each row prints one summary line (`fault matrix: ...`) with what it
//! expected and what it saw; a failing row is named in the panic message.

mod common;

use std::path::Path;
use std::time::Duration;

use cbfs_store::{Error, PutOutcome, RetryPolicy, SecretString, Store};
use cbfs_tests::{Fault, FaultPlan, FaultyProxy, RequestMatch as Req, S3Server};
use common::{PART, moto, options, pattern, s3_config};

/// The credentials the stores of the matrix use: long and distinctive, so
/// that any trace of them in a message is found.
const SECRET: &str = "Matrix-s3cr3t-0123456789-must-never-be-shown";
const TOKEN: &str = "Matrix-session-token-9876543210-must-never-be-shown";
/// The store's prefix inside each row's bucket.
const PREFIX: &str = "cbfs/fs1";
/// How long a stalled request is kept waiting ...
const STALL: Duration = Duration::from_secs(4);
/// ... and the request timeout of the rows that meet a stall.
const SHORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Permanent faults are given to this many matching requests, so that a
/// store that wrongly repeated the request would meet the fault again (and
/// be caught repeating it).
const EVERY: usize = 100;

/// What a row does through the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `put_new` of 64 KiB: one `PutObject`.
    Put,
    /// `get` of a 64 KiB object.
    Get,
    /// `head` of a 64 KiB object.
    Head,
    /// `list` of five objects under `segments`.
    List,
    /// `put_file_new` of a file of two parts: a multipart upload.
    Upload,
}

/// What a row must end in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Retried; the operation succeeds with the right bytes.
    Retried,
    /// Stopped at once with a permanent error.
    Permanent,
}

struct Row {
    name: &'static str,
    action: Action,
    plan: FaultPlan,
    expect: Expect,
    /// The request timeout, if not the default one.
    timeout: Option<Duration>,
}

fn row(name: &'static str, action: Action, plan: FaultPlan, expect: Expect) -> Row {
    Row {
        name,
        action,
        plan,
        expect,
        timeout: None,
    }
}

fn on(matching: Req, fault: Fault) -> FaultPlan {
    FaultPlan::new().on(matching, fault)
}

fn on_every(matching: Req, fault: Fault) -> FaultPlan {
    FaultPlan::new().on_repeat(matching, fault, EVERY)
}

fn transient_rows() -> Vec<Row> {
    use Action::*;
    use Expect::Retried;
    let mut rows = vec![
        row(
            "500 InternalError on PutObject",
            Put,
            on(Req::put_object(), Fault::InternalError),
            Retried,
        ),
        row(
            "503 SlowDown on PutObject",
            Put,
            on(Req::put_object(), Fault::SlowDown),
            Retried,
        ),
        row(
            "429 TooManyRequests on PutObject, twice",
            Put,
            FaultPlan::new().on_repeat(Req::put_object(), Fault::TooManyRequests, 2),
            Retried,
        ),
        row(
            "500 InternalError on ListObjectsV2",
            List,
            on(Req::list_objects(), Fault::InternalError),
            Retried,
        ),
        row(
            "503 SlowDown on HeadObject",
            Head,
            on(Req::head_object(), Fault::SlowDown),
            Retried,
        ),
        row(
            "connection reset before the answer (PutObject)",
            Put,
            on(Req::put_object(), Fault::ResetBeforeResponse),
            Retried,
        ),
        row(
            "connection reset before the answer (GetObject)",
            Get,
            on(Req::get_object(), Fault::ResetBeforeResponse),
            Retried,
        ),
        row(
            "connection reset mid-body (GetObject)",
            Get,
            on(Req::get_object(), Fault::ResetMidResponse),
            Retried,
        ),
        row(
            "connection reset mid-body (ListObjectsV2)",
            List,
            on(Req::list_objects(), Fault::ResetMidResponse),
            Retried,
        ),
        row(
            "connection closed mid-answer after PutObject took effect",
            Put,
            on(Req::put_object(), Fault::DropMidResponse),
            Retried,
        ),
        row(
            "body shorter than its Content-Length (GetObject)",
            Get,
            on(Req::get_object(), Fault::ShortBody),
            Retried,
        ),
        row(
            "body shorter than its Content-Length (ListObjectsV2)",
            List,
            on(Req::list_objects(), Fault::ShortBody),
            Retried,
        ),
        row(
            "CreateMultipartUpload answered 503 SlowDown",
            Upload,
            on(Req::create_multipart(), Fault::SlowDown),
            Retried,
        ),
        row(
            "UploadPart answered 429 TooManyRequests",
            Upload,
            on(Req::upload_part(), Fault::TooManyRequests),
            Retried,
        ),
        row(
            "UploadPart connection reset before the answer",
            Upload,
            on(Req::upload_part(), Fault::ResetBeforeResponse),
            Retried,
        ),
        row(
            "CompleteMultipartUpload throttled (503 SlowDown, twice)",
            Upload,
            FaultPlan::new().on_repeat(Req::complete_multipart(), Fault::SlowDown, 2),
            Retried,
        ),
        row(
            "CompleteMultipartUpload answered 200 OK with an InternalError document",
            Upload,
            on(
                Req::complete_multipart(),
                Fault::OkWithError("InternalError"),
            ),
            Retried,
        ),
        row(
            "CompleteMultipartUpload answered 200 OK with a SlowDown document",
            Upload,
            on(Req::complete_multipart(), Fault::OkWithError("SlowDown")),
            Retried,
        ),
        row(
            "CompleteMultipartUpload took effect, its answer cut mid-body",
            Upload,
            on(Req::complete_multipart(), Fault::ShortBody),
            Retried,
        ),
        row(
            "CompleteMultipartUpload took effect, its answer cut; the retry told NoSuchUpload",
            Upload,
            on(Req::complete_multipart(), Fault::ShortBody)
                .on(Req::complete_multipart(), Fault::NoSuchUpload),
            Retried,
        ),
        row(
            "CompleteMultipartUpload told NoSuchUpload (upload aborted under it)",
            Upload,
            on(Req::complete_multipart(), Fault::NoSuchUpload),
            Retried,
        ),
    ];
    for (name, action, matching) in [
        (
            "stall past the request timeout (GetObject)",
            Get,
            Req::get_object(),
        ),
        (
            "stall past the request timeout (PutObject)",
            Put,
            Req::put_object(),
        ),
    ] {
        rows.push(Row {
            timeout: Some(SHORT_TIMEOUT),
            ..row(name, action, on(matching, Fault::Stall(STALL)), Retried)
        });
    }
    rows
}

fn permanent_rows() -> Vec<Row> {
    use Action::*;
    use Expect::Permanent;
    vec![
        row(
            "403 RequestTimeTooSkewed on PutObject",
            Put,
            on_every(Req::put_object(), Fault::RequestTimeTooSkewed),
            Permanent,
        ),
        row(
            "403 RequestTimeTooSkewed on CompleteMultipartUpload",
            Upload,
            on_every(Req::complete_multipart(), Fault::RequestTimeTooSkewed),
            Permanent,
        ),
        row(
            "400 ExpiredToken on GetObject (the token quoted back)",
            Get,
            on_every(Req::get_object(), Fault::ExpiredToken),
            Permanent,
        ),
        row(
            "400 ExpiredToken on UploadPart (the token quoted back)",
            Upload,
            on(Req::upload_part(), Fault::ExpiredToken),
            Permanent,
        ),
        row(
            "403 InvalidAccessKeyId on ListObjectsV2",
            List,
            on_every(Req::list_objects(), Fault::InvalidAccessKeyId),
            Permanent,
        ),
        row(
            "403 SignatureDoesNotMatch on PutObject",
            Put,
            on_every(Req::put_object(), Fault::SignatureDoesNotMatch),
            Permanent,
        ),
        row(
            "404 NoSuchBucket on PutObject",
            Put,
            on_every(Req::put_object(), Fault::NoSuchBucket),
            Permanent,
        ),
        row(
            "404 NoSuchBucket on GetObject",
            Get,
            on_every(Req::get_object(), Fault::NoSuchBucket),
            Permanent,
        ),
        row(
            "404 NoSuchBucket on CreateMultipartUpload",
            Upload,
            on_every(Req::create_multipart(), Fault::NoSuchBucket),
            Permanent,
        ),
        row(
            "UploadPart answered with a wrong ETag",
            Upload,
            on(Req::upload_part(), Fault::WrongETag),
            Permanent,
        ),
        row(
            "ListObjectsV2 truncated without a continuation token",
            List,
            on_every(Req::list_objects(), Fault::TruncatedWithoutToken),
            Permanent,
        ),
        row(
            "CompleteMultipartUpload answered 200 OK with an AccessDenied document",
            Upload,
            on_every(
                Req::complete_multipart(),
                Fault::OkWithError("AccessDenied"),
            ),
            Permanent,
        ),
    ]
}

#[test]
fn transient_faults_are_retried_and_the_operation_succeeds() {
    run_matrix(transient_rows());
}

#[test]
fn permanent_faults_stop_with_an_error_naming_object_and_endpoint() {
    run_matrix(permanent_rows());
}

/// Runs every row, prints the summary, and fails naming the rows that did
/// not hold.
fn run_matrix(rows: Vec<Row>) {
    let runtime = common::runtime();
    let scratch = tempfile::tempdir().expect("scratch directory");
    let mut failed = Vec::new();
    for (n, row) in rows.iter().enumerate() {
        let result = run_row(&runtime, scratch.path(), row, n);
        let (verdict, observed) = match &result {
            Ok(observed) => ("held", observed.replace('\n', " ")),
            Err(problem) => ("FAILED", problem.replace('\n', " ")),
        };
        eprintln!(
            "fault matrix: {:<70} expected {:<9} observed {observed} [{verdict}]",
            row.name,
            format!("{:?}", row.expect),
        );
        if let Err(problem) = result {
            failed.push(format!("{}: {problem}", row.name));
        }
    }
    eprintln!(
        "fault matrix: {} faults tried, {} held",
        rows.len(),
        rows.len() - failed.len()
    );
    assert!(
        failed.is_empty(),
        "fault matrix rows that did not hold:\n{}",
        failed.join("\n")
    );
}

/// What an action returned, for checking.
enum Done {
    Put(PutOutcome),
    Get(bytes::Bytes),
    Head(Option<u64>),
    List(Vec<(String, u64)>),
}

/// Runs one row in a bucket of its own and checks its outcome: `Ok` with
/// what was observed, or `Err` with what is wrong.
fn run_row(
    runtime: &tokio::runtime::Runtime,
    scratch: &Path,
    row: &Row,
    n: usize,
) -> Result<String, String> {
    let bucket = common::new_bucket();
    let key = match row.action {
        Action::List => "segments".to_string(),
        Action::Upload => format!("segments/upload-{n}.tar"),
        _ => format!("segments/object-{n}.bin"),
    };
    let size = match row.action {
        Action::Upload => PART + 10,
        _ => 64 * 1024,
    };
    let data = pattern(size, n as u64 + 1);
    let listed: Vec<(String, u64)> = (0..5)
        .map(|i| (format!("segments/s{i}.tar"), 1000 + i as u64))
        .collect();

    // What the action reads is put there directly, not through the proxy.
    match row.action {
        Action::Get | Action::Head => moto().put_object(&bucket, &full(&key), &data),
        Action::List => {
            for (i, (k, len)) in listed.iter().enumerate() {
                moto().put_object(&bucket, &full(k), &pattern(*len as usize, i as u64));
            }
        }
        Action::Put | Action::Upload => {}
    }
    let file = scratch.join(format!("upload-{n}"));
    if row.action == Action::Upload {
        std::fs::write(&file, &data).expect("write the file to upload");
    }

    let proxy = FaultyProxy::start(moto().socket_addr(), row.plan.clone());
    let store = open(&bucket, &proxy, row.timeout);
    let outcome = runtime.block_on(async {
        match row.action {
            Action::Put => store.put_new(&key, data.clone()).await.map(Done::Put),
            Action::Get => store.get(&key).await.map(Done::Get),
            Action::Head => store
                .head(&key)
                .await
                .map(|info| Done::Head(info.map(|i| i.size))),
            Action::List => store
                .list(&key)
                .await
                .map(|all| Done::List(all.into_iter().map(|i| (i.key, i.size)).collect())),
            Action::Upload => store.put_file_new(&key, &file).await.map(Done::Put),
        }
    });
    let faults = proxy.faults_injected();
    let pending = proxy.faults_pending();
    let requests = proxy.requests();
    let endpoint = proxy.endpoint();
    drop(proxy);

    let mut problems = Vec::new();
    if faults == 0 || (row.expect == Expect::Retried && pending != 0) {
        problems.push(format!(
            "the faults planned were not all met ({faults} met, {pending} not); \
             requests: {requests:?}"
        ));
    }
    // Whatever happened, a write left the whole object or nothing.
    if matches!(row.action, Action::Put | Action::Upload) {
        match moto().try_get_object(&bucket, &full(&key)) {
            Some(stored) if stored != data => problems.push(format!(
                "the key holds {} bytes that are not the object written",
                stored.len()
            )),
            None if row.expect == Expect::Retried => {
                problems.push("the object is not in the store".to_string())
            }
            _ => {}
        }
    }
    if row.action == Action::Upload {
        let left = uploads_left(&bucket);
        if left != 0 {
            problems.push(format!("{left} multipart uploads left behind"));
        }
    }

    let observed = match (row.expect, outcome) {
        (Expect::Retried, Ok(done)) => {
            let observed = match done {
                Done::Put(outcome) => format!("succeeded ({outcome:?}), object whole"),
                Done::Get(bytes) if bytes == data => {
                    format!("succeeded, {} bytes identical", bytes.len())
                }
                Done::Get(bytes) => {
                    problems.push(format!("read {} bytes that differ", bytes.len()));
                    String::new()
                }
                Done::Head(Some(len)) if len == size as u64 => {
                    format!("succeeded, size {len}")
                }
                Done::Head(other) => {
                    problems.push(format!("head gave {other:?}"));
                    String::new()
                }
                Done::List(all) if all == listed => {
                    format!("succeeded, all {} objects listed", all.len())
                }
                Done::List(all) => {
                    problems.push(format!("listed {all:?}"));
                    String::new()
                }
            };
            format!("{observed} after {} requests", requests.len())
        }
        (Expect::Retried, Err(e)) => {
            problems.push(format!("failed: {e}"));
            String::new()
        }
        (Expect::Permanent, Ok(_)) => {
            problems.push("succeeded, where it must fail".to_string());
            String::new()
        }
        (Expect::Permanent, Err(e)) => {
            check_permanent(&e, &key, &endpoint, &mut problems);
            // Stopped at once: the faulted request was not repeated.
            if faults != 1 {
                problems.push(format!(
                    "the faulted request was repeated ({faults} faults met)"
                ));
            }
            format!("permanent error: {e}")
        }
    };
    if problems.is_empty() {
        Ok(observed)
    } else {
        Err(problems.join("; "))
    }
}

/// An error that is not transient, names the key and the endpoint, and
/// carries no secret.
fn check_permanent(e: &Error, key: &str, endpoint: &str, problems: &mut Vec<String>) {
    if e.is_transient() {
        problems.push(format!("transient, where it must be permanent: {e}"));
    }
    let message = e.to_string();
    if !message.contains(key) {
        problems.push(format!(
            "the message does not name the key {key:?}: {message}"
        ));
    }
    if !message.contains(endpoint) {
        problems.push(format!(
            "the message does not name the endpoint {endpoint}: {message}"
        ));
    }
    for text in [message, format!("{e:?}")] {
        for secret in [SECRET, TOKEN] {
            if text.contains(secret) {
                problems.push(format!("a credential is in the message: {text}"));
            }
        }
    }
}

/// A store in `bucket` reached through `proxy`, with a secret key and a
/// session token, short backoffs, and `timeout` for each request if given.
fn open(bucket: &str, proxy: &FaultyProxy, timeout: Option<Duration>) -> Store {
    let mut config = s3_config(&proxy.endpoint(), SECRET).with_retry(RetryPolicy::new(
        4,
        Duration::from_millis(10),
        Duration::from_millis(100),
        Duration::from_secs(30),
    ));
    config.session_token = Some(SecretString::from(TOKEN.to_string()));
    if let Some(timeout) = timeout {
        config = config.with_timeouts(Duration::from_secs(5), timeout);
    }
    Store::open_s3(bucket, PREFIX, &config, options()).expect("open the store")
}

/// The key as stored in the bucket.
fn full(key: &str) -> String {
    format!("{PREFIX}/{key}")
}

/// How many multipart uploads are in progress in `bucket`.
fn uploads_left(bucket: &str) -> usize {
    let url = format!("{}/{bucket}?uploads", moto().endpoint());
    let body = cbfs_tests::http_client()
        .get(url)
        .header("Authorization", S3Server::AUTHORIZATION)
        .send()
        .and_then(|r| r.error_for_status())
        .and_then(|r| r.text())
        .unwrap_or_else(|e| panic!("list the multipart uploads of {bucket}: {e}"));
    body.matches("<Upload>").count()
}
