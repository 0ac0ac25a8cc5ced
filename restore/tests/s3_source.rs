//! `S3Source` against a real S3 server (`moto_server`, started by
//! `cbfs-tests`): listings over several pages, whole objects, ranges, sizes,
//! missing objects and buckets, wrong credentials, and retries through a
//! fault-injecting proxy.
//!
//! moto checks no signature of a presigned request, so the credential tests
//! put [`SigV4Gate`] in front of it: it verifies each request's Signature
//! Version 4 query signature as S3 does, answers 403 with S3's error
//! document when it does not match, and forwards the request otherwise.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use cbfs_restore::{Error, ObjectSource, S3Config, S3Source};
use cbfs_tests::{Fault, FaultPlan, FaultyProxy, S3Server, free_port};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

const BUCKET: &str = "cbfs-store";
const PREFIX: &str = "tier/fs1";
/// More than one page of a listing (S3 gives 1000 keys a page).
const SEGMENTS: usize = 1105;

/// Deterministic contents of `len` bytes.
fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A config for `spec` on the server at `endpoint`, with the test
/// credentials moto accepts.
fn config(spec: &str, endpoint: &str) -> S3Config {
    S3Config::from_spec(spec)
        .unwrap()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_credentials("test", SecretString::from("test"))
}

fn source(spec: &str, endpoint: &str) -> S3Source {
    S3Source::new(config(spec, endpoint)).unwrap()
}

/// The message of a permanent read error for `key`, or a panic.
fn permanent(result: Result<impl std::fmt::Debug, Error>, key: &str) -> String {
    match result {
        Err(Error::Read { key: k, source }) => {
            assert_eq!(k, key);
            source.to_string()
        }
        other => panic!("{key}: expected a permanent read error, got {other:?}"),
    }
}

fn segment_key(i: usize) -> String {
    format!("segments/{i:05}.tar")
}

#[test]
fn lists_gets_ranges_and_sizes() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    for i in 0..SEGMENTS {
        s3.put_object(BUCKET, &format!("{PREFIX}/{}", segment_key(i)), &[i as u8]);
    }
    let big = data(300_000, 7);
    let small = data(1000, 1);
    s3.put_object(BUCKET, &format!("{PREFIX}/snapshots/big.bin"), &big);
    s3.put_object(BUCKET, &format!("{PREFIX}/snapshots/small.json"), &small);
    s3.put_object(BUCKET, &format!("{PREFIX}/snapshots/empty"), b"");
    // Beside the prefix: not the store's.
    s3.put_object(BUCKET, "tier/fs10/segments/00000.tar", b"other");
    s3.put_object(BUCKET, "elsewhere", b"x");
    // Under the prefix but not a key of a store.
    s3.put_object(BUCKET, &format!("{PREFIX}/snapshots/.partial"), b"x");

    let store = source(&format!("s3://{BUCKET}/{PREFIX}"), &s3.endpoint());
    assert_eq!(
        store.describe(),
        format!(
            "s3://{BUCKET}/{PREFIX} (endpoint {}, region us-east-1)",
            s3.endpoint()
        )
    );

    // Listings: several pages, relative to the prefix, sorted.
    let segments: Vec<String> = (0..SEGMENTS).map(segment_key).collect();
    let snapshots = [
        "snapshots/big.bin",
        "snapshots/empty",
        "snapshots/small.json",
    ];
    assert_eq!(store.list("segments/").unwrap(), segments);
    assert_eq!(store.list("snapshots/").unwrap(), snapshots);
    let mut everything = segments.clone();
    everything.extend(snapshots.iter().map(|s| s.to_string()));
    assert_eq!(store.list("").unwrap(), everything);
    assert_eq!(
        store.list("segments/0110").unwrap(),
        (1100..SEGMENTS).map(segment_key).collect::<Vec<_>>()
    );
    assert!(store.list("lockboxes/").unwrap().is_empty());
    assert!(matches!(store.list("../"), Err(Error::BadKey { .. })));

    // The whole bucket, as a store without a prefix.
    let bucket = source(&format!("s3://{BUCKET}"), &s3.endpoint());
    let all = bucket.list("").unwrap();
    assert_eq!(all.len(), SEGMENTS + 3 + 2);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    assert!(all.contains(&"elsewhere".to_string()));
    assert!(all.contains(&format!("{PREFIX}/snapshots/small.json")));
    assert_eq!(
        bucket.list("tier/fs10/").unwrap(),
        ["tier/fs10/segments/00000.tar"]
    );

    // Whole objects, and what was fetched.
    let before = store.fetched();
    assert_eq!(store.get("snapshots/small.json").unwrap(), small);
    assert_eq!(store.fetched() - before, small.len() as u64);
    assert_eq!(store.get("snapshots/big.bin").unwrap(), big);
    assert_eq!(store.get("snapshots/empty").unwrap(), b"");
    assert_eq!(store.get(&segment_key(1104)).unwrap(), [1104usize as u8]);

    // Ranges: start, middle, end, across the end, past the end.
    let n = big.len() as u64;
    let before = store.fetched();
    let key = "snapshots/big.bin";
    assert_eq!(store.get_range(key, 0..10).unwrap(), &big[..10]);
    assert_eq!(store.fetched() - before, 10);
    assert_eq!(
        store.get_range(key, 123_456..200_000).unwrap(),
        &big[123_456..200_000]
    );
    assert_eq!(
        store.get_range(key, n - 5..n).unwrap(),
        &big[big.len() - 5..]
    );
    assert_eq!(
        store.get_range(key, n - 5..n + 100).unwrap(),
        &big[big.len() - 5..]
    );
    assert_eq!(store.get_range(key, n..n + 10).unwrap(), b"");
    assert_eq!(store.get_range(key, n + 10..n + 20).unwrap(), b"");
    let before = store.fetched();
    assert_eq!(store.get_range(key, 50..50).unwrap(), b"");
    assert_eq!(store.fetched(), before, "an empty range reads nothing");
    assert_eq!(store.get_range("snapshots/empty", 0..10).unwrap(), b"");
    assert_eq!(
        store.get_range("snapshots/small.json", 0..5000).unwrap(),
        small
    );

    // Sizes.
    assert_eq!(store.size(key).unwrap(), n);
    assert_eq!(store.size("snapshots/empty").unwrap(), 0);
    assert_eq!(store.size(&segment_key(3)).unwrap(), 1);

    // A segment read with seeks, by ranges.
    let mut reader = store.open(key).unwrap();
    reader.seek(SeekFrom::Start(250_000)).unwrap();
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, &big[250_000..]);
    reader.seek(SeekFrom::Start(1)).unwrap();
    let mut some = [0u8; 4];
    reader.read_exact(&mut some).unwrap();
    assert_eq!(some, big[1..5]);

    // Missing objects are Missing, by every call.
    let absent = "segments/absent.tar";
    for err in [
        store.get(absent).unwrap_err(),
        store.get_range(absent, 0..10).unwrap_err(),
        store.size(absent).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Missing { key } if key == absent),
            "{err:?}"
        );
    }
    // The store's prefix is not escaped: the neighbour's object is absent here.
    assert!(matches!(
        store.get("../fs10/segments/00000.tar"),
        Err(Error::BadKey { .. })
    ));
}

#[test]
fn a_missing_bucket_is_not_a_missing_object() {
    let s3 = S3Server::start();
    let store = source("s3://no-such-bucket/p", &s3.endpoint());
    let key = "snapshots/1.manifest";
    for message in [
        permanent(store.get(key), key),
        permanent(store.get_range(key, 0..10), key),
        permanent(store.size(key), key),
    ] {
        assert!(message.contains("NoSuchBucket"), "{message}");
        assert!(message.contains("s3://no-such-bucket/p"), "{message}");
    }
    let message = permanent(store.list("snapshots/"), "snapshots/*");
    assert!(message.contains("NoSuchBucket"), "{message}");
}

#[test]
fn wrong_credentials_fail_at_once() {
    const KEY_ID: &str = "AKIACBFSRESTORETEST";
    const SECRET: &str = "right-secret-4d1f0c9a7b2e6d3c5a8f";
    const WRONG: &str = "wrong-secret-9e8d7c6b5a4f3e2d1c0b";
    const TOKEN: &str = "session-token/with+odd=chars-7f3a";

    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let contents = data(5000, 3);
    s3.put_object(BUCKET, &format!("{PREFIX}/keysets/1.keyset"), &contents);
    for i in 0..3 {
        s3.put_object(BUCKET, &format!("{PREFIX}/snapshots/{i}"), b"s");
    }
    let spec = format!("s3://{BUCKET}/{PREFIX}");
    let key = "keysets/1.keyset";

    // Without a session token.
    let gate = SigV4Gate::start(s3.socket_addr(), KEY_ID, SECRET, None);
    let with = |id: &str, secret: &str| {
        let mut c = config(&spec, &gate.endpoint());
        c.access_key_id = Some(id.into());
        c.secret_access_key = Some(SecretString::from(secret));
        S3Source::new(c).unwrap()
    };
    // The right secret: every signature checks out.
    let good = with(KEY_ID, SECRET);
    assert_eq!(good.get(key).unwrap(), contents);
    assert_eq!(good.get_range(key, 100..200).unwrap(), &contents[100..200]);
    assert_eq!(good.size(key).unwrap(), 5000);
    assert_eq!(good.list("snapshots/").unwrap().len(), 3);
    assert!(matches!(
        good.get("keysets/2.keyset"),
        Err(Error::Missing { .. })
    ));
    assert_eq!(gate.refused(), 0);

    // A wrong secret: refused, not retried, and named.
    let bad = with(KEY_ID, WRONG);
    let seen = gate.requests();
    let message = permanent(bad.get(key), key);
    assert_eq!(
        gate.requests() - seen,
        1,
        "a refused signature is not retried"
    );
    assert!(message.contains("SignatureDoesNotMatch"), "{message}");
    assert!(message.contains("403"), "{message}");
    assert!(message.contains(&spec), "{message}");
    for message in [
        message,
        permanent(bad.get_range(key, 0..10), key),
        // HEAD answers carry no error document: the code comes from a GET.
        permanent(bad.size(key), key),
        permanent(bad.list("snapshots/"), "snapshots/*"),
    ] {
        assert!(message.contains("SignatureDoesNotMatch"), "{message}");
        assert!(
            !message.contains(WRONG) && !message.contains(SECRET),
            "{message}"
        );
    }
    let err = bad.get(key).unwrap_err();
    assert!(!err.is_transient());
    for text in [format!("{err}"), format!("{err:?}"), format!("{bad:?}")] {
        assert!(!text.contains(WRONG), "{text}");
    }

    // An unknown access key id.
    let message = permanent(with("AKIAUNKNOWN", SECRET).get(key), key);
    assert!(message.contains("InvalidAccessKeyId"), "{message}");
    drop(gate);

    // Temporary credentials: the token is signed and sent, never shown.
    let gate = SigV4Gate::start(s3.socket_addr(), KEY_ID, SECRET, Some(TOKEN));
    let mut c = config(&spec, &gate.endpoint());
    c.access_key_id = Some(KEY_ID.into());
    c.secret_access_key = Some(SecretString::from(SECRET));
    c.session_token = Some(SecretString::from(TOKEN));
    let with_token = S3Source::new(c.clone()).unwrap();
    assert_eq!(with_token.get(key).unwrap(), contents);
    c.session_token = Some(SecretString::from("an-expired-session-token-0000"));
    let expired = S3Source::new(c.clone()).unwrap();
    let message = permanent(expired.get(key), key);
    assert!(message.contains("InvalidToken"), "{message}");
    c.session_token = None;
    let message = permanent(S3Source::new(c).unwrap().get(key), key);
    assert!(message.contains("InvalidToken"), "{message}");
    for text in [format!("{with_token:?}"), format!("{expired:?}")] {
        assert!(!text.contains(TOKEN) && !text.contains(SECRET), "{text}");
    }
}

#[test]
fn faults_are_retried() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let big = data(200_000, 9);
    s3.put_object(BUCKET, &format!("{PREFIX}/segments/a.tar"), &big);
    for i in 0..1003 {
        s3.put_object(BUCKET, &format!("{PREFIX}/lockboxes/{i:04}"), b"l");
    }
    let spec = format!("s3://{BUCKET}/{PREFIX}");
    let key = "segments/a.tar";

    // 503 SlowDown, 500, and a connection dropped before the answer: the
    // fourth try succeeds.
    let plan = FaultPlan::new()
        .then(Fault::SlowDown)
        .then(Fault::InternalError)
        .then(Fault::DropBeforeResponse);
    let proxy = FaultyProxy::start(s3.socket_addr(), plan.clone());
    let store = source(&spec, &proxy.endpoint());
    assert_eq!(store.get(key).unwrap(), big);
    assert_eq!(proxy.requests_seen(), 4);

    // An answer cut in the middle of its body, for a whole object and a range.
    let proxy = FaultyProxy::start(
        s3.socket_addr(),
        FaultPlan::first(2, Fault::DropMidResponse),
    );
    let store = source(&spec, &proxy.endpoint());
    assert_eq!(store.get(key).unwrap(), big);
    assert_eq!(
        store.get_range(key, 1000..150_000).unwrap(),
        &big[1000..150_000]
    );
    assert_eq!(proxy.requests_seen(), 4);

    // HEAD and ranges through 5xx answers.
    let proxy = FaultyProxy::start(
        s3.socket_addr(),
        plan.then(Fault::Pass).then(Fault::SlowDown),
    );
    let store = source(&spec, &proxy.endpoint());
    assert_eq!(store.size(key).unwrap(), big.len() as u64);
    assert_eq!(store.get_range(key, 5..10).unwrap(), &big[5..10]);
    assert_eq!(proxy.requests_seen(), 6);

    // A listing whose second page fails twice.
    let proxy = FaultyProxy::start(
        s3.socket_addr(),
        FaultPlan::new()
            .then(Fault::Pass)
            .then(Fault::SlowDown)
            .then(Fault::DropMidResponse),
    );
    let store = source(&spec, &proxy.endpoint());
    assert_eq!(store.list("lockboxes/").unwrap().len(), 1003);
    assert_eq!(proxy.requests_seen(), 4);
    let targets: Vec<String> = proxy.requests().into_iter().map(|r| r.target).collect();
    assert!(
        targets[1..]
            .iter()
            .all(|t| t.contains("continuation-token=")),
        "{targets:?}"
    );
}

#[test]
fn persistent_failures_end_as_unavailable() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    s3.put_object(BUCKET, &format!("{PREFIX}/k"), b"x");
    let spec = format!("s3://{BUCKET}/{PREFIX}");

    let proxy = FaultyProxy::start(s3.socket_addr(), FaultPlan::first(1000, Fault::SlowDown));
    let store = source(&spec, &proxy.endpoint());
    let err = store.get("k").unwrap_err();
    match &err {
        Error::Unavailable {
            store: s,
            key,
            reason,
        } => {
            assert_eq!(key, "k");
            assert!(s.contains(&spec) && s.contains(&proxy.endpoint()), "{s}");
            assert!(reason.contains("SlowDown"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(err.is_transient());
    assert_eq!(proxy.requests_seen(), 4, "four tries, then give up");
    for err in [
        store.size("k").unwrap_err(),
        store.get_range("k", 0..1).unwrap_err(),
        store.list("").unwrap_err(),
    ] {
        assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
    }

    // Nothing listening at all.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let err = source(&spec, &nowhere).get("k").unwrap_err();
    assert!(matches!(err, Error::Unavailable { .. }), "{err:?}");
}

// --- a front that checks SigV4 query signatures

/// What a [`SigV4Gate`] accepts.
struct Expect {
    key_id: String,
    secret: String,
    token: Option<String>,
}

/// A proxy on 127.0.0.1 that checks the AWS Signature Version 4 of each
/// presigned request as S3 does, answers `403` with S3's error document
/// (no body for HEAD) when it is wrong, and forwards it to `upstream`
/// otherwise. One request per connection.
struct SigV4Gate {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    stopping: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl SigV4Gate {
    fn start(upstream: SocketAddr, key_id: &str, secret: &str, token: Option<&str>) -> SigV4Gate {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let expect = Arc::new(Expect {
            key_id: key_id.into(),
            secret: secret.into(),
            token: token.map(str::to_owned),
        });
        let requests = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stopping = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (requests, refused, stopping) =
                (requests.clone(), refused.clone(), stopping.clone());
            thread::spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let (expect, requests, refused) =
                        (expect.clone(), requests.clone(), refused.clone());
                    thread::spawn(move || {
                        let _ = gate_one(stream, upstream, &expect, &requests, &refused);
                    });
                }
            })
        };
        SigV4Gate {
            addr,
            requests,
            refused,
            stopping,
            acceptor: Some(acceptor),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}

impl Drop for SigV4Gate {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn gate_one(
    client: TcpStream,
    upstream: SocketAddr,
    expect: &Expect,
    requests: &AtomicUsize,
    refused: &AtomicUsize,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_string();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    requests.fetch_add(1, Ordering::SeqCst);
    let mut parts = lines[0].split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let headers: Vec<(String, String)> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();

    if let Err((code, message)) = verify(method, target, &headers, expect) {
        refused.fetch_add(1, Ordering::SeqCst);
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>sigv4-gate</RequestId></Error>"
        );
        let mut answer = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        if method != "HEAD" {
            answer.push_str(&body);
        }
        client.write_all(answer.as_bytes())?;
        return client.shutdown(Shutdown::Both);
    }

    // Requests of a reader carry no body.
    let mut server = TcpStream::connect(upstream)?;
    let mut head = format!("{}\r\n", lines[0]);
    for line in &lines[1..] {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            head.push_str(line);
            head.push_str("\r\n");
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    server.write_all(head.as_bytes())?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer)?;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |p| p + 4);
    let (head, body) = answer.split_at(split);
    let mut out = String::new();
    for line in String::from_utf8_lossy(head).split("\r\n") {
        if !line.is_empty() && !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    client.write_all(out.as_bytes())?;
    client.write_all(body)?;
    client.shutdown(Shutdown::Both)
}

/// Checks a presigned request; the S3 error code and message if it fails.
fn verify(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    expect: &Expect,
) -> Result<(), (&'static str, &'static str)> {
    const DENIED: (&str, &str) = ("AccessDenied", "Access Denied");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if param("X-Amz-Algorithm") != Some("AWS4-HMAC-SHA256") {
        return Err(DENIED);
    }
    let credential = param("X-Amz-Credential").ok_or(DENIED)?;
    let timestamp = param("X-Amz-Date").ok_or(DENIED)?;
    let signed_headers = param("X-Amz-SignedHeaders").ok_or(DENIED)?;
    let signature = param("X-Amz-Signature").ok_or(DENIED)?;
    param("X-Amz-Expires").ok_or(DENIED)?;
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, "s3", "aws4_request"] = scope[..] else {
        return Err(("AuthorizationQueryParametersError", "Bad credential scope."));
    };
    if key_id != expect.key_id {
        return Err((
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    }
    if param("X-Amz-Security-Token") != expect.token.as_deref() {
        return Err((
            "InvalidToken",
            "The provided token is malformed or otherwise invalid.",
        ));
    }
    let expected = presigned_signature(
        method,
        path,
        &params,
        signed_headers,
        headers,
        &expect.secret,
        timestamp,
        date,
        region,
    )
    .ok_or(DENIED)?;
    if expected != signature {
        return Err((
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. \
             Check your key and signing method.",
        ));
    }
    Ok(())
}

/// The SigV4 signature of a presigned request (`UNSIGNED-PAYLOAD`).
#[allow(clippy::too_many_arguments)]
fn presigned_signature(
    method: &str,
    path: &str,
    params: &[(String, String)],
    signed_headers: &str,
    headers: &[(String, String)],
    secret: &str,
    timestamp: &str,
    date: &str,
    region: &str,
) -> Option<String> {
    let mut query: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "X-Amz-Signature")
        .map(|(k, v)| (aws_encode(k), aws_encode(v)))
        .collect();
    query.sort();
    let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = headers.iter().find(|(k, _)| k == name)?.1.as_str();
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let canonical_request = format!(
        "{method}\n{path}\n{}\n{canonical_headers}\n{signed_headers}\nUNSIGNED-PAYLOAD",
        query.join("&")
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{timestamp}\n{date}/{region}/s3/aws4_request\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    let k_signing = hmac(&k_service, b"aws4_request");
    Some(hex::encode(hmac(&k_signing, string_to_sign.as_bytes())))
}

/// Percent-encoding of SigV4: everything but `A-Za-z0-9-_.~`.
fn aws_encode(text: &str) -> String {
    let mut out = String::new();
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The gate's check reproduces the example of AWS's documentation
/// ("Authenticating Requests: Using Query Parameters").
#[test]
fn the_gate_checks_signatures_like_aws() {
    let target = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
        &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
        &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";
    let headers = [(
        "host".to_string(),
        "examplebucket.s3.amazonaws.com".to_string(),
    )];
    let expect = |secret: &str| Expect {
        key_id: "AKIAIOSFODNN7EXAMPLE".into(),
        secret: secret.into(),
        token: None,
    };
    verify(
        "GET",
        target,
        &headers,
        &expect("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    )
    .unwrap();
    assert_eq!(
        verify("GET", target, &headers, &expect("another"))
            .unwrap_err()
            .0,
        "SignatureDoesNotMatch"
    );
    assert_eq!(
        verify(
            "HEAD",
            target,
            &headers,
            &expect("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
        )
        .unwrap_err()
        .0,
        "SignatureDoesNotMatch"
    );
}
