//! A real S3-compatible server (`moto_server`) on 127.0.0.1, and plain-HTTP
//! access to what it holds.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use reqwest::blocking::{Client, RequestBuilder, Response};
use reqwest::{Method, StatusCode};
use tempfile::TempDir;

use crate::bins::{hints, require_tool};
use crate::net::{free_port, http_client, loopback, poll_http};
use crate::process::ServerProcess;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const START_ATTEMPTS: usize = 3;

/// An S3-compatible object store (`moto_server`) on 127.0.0.1, with its
/// state in memory: every test gets an empty store of its own.
///
/// The inspection methods ([`list_objects`](S3Server::list_objects),
/// [`get_object`](S3Server::get_object), ...) use plain path-style HTTP, so a
/// test can see exactly what a cbfs tool stored, or damage it.
///
/// ```no_run
/// let s3 = cbfs_tests::S3Server::start();
/// s3.create_bucket("archive");
/// s3.put_object("archive", "a/b", b"bytes");
/// assert_eq!(s3.list_objects("archive"), vec![("a/b".to_string(), 5)]);
/// ```
pub struct S3Server {
    addr: SocketAddr,
    client: Client,
    // Field order matters: the server goes before its directory.
    server: ServerProcess,
    _dir: TempDir,
}

impl S3Server {
    /// An `Authorization` header value for plain HTTP requests to the server.
    ///
    /// moto does not check signatures, but it treats a request without an
    /// `Authorization` header as anonymous and refuses to read objects for it,
    /// and it takes the region from the header's credential scope. With this
    /// header, an unsigned request is served like a signed one.
    pub const AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
        Credential=test/20240101/us-east-1/s3/aws4_request, \
        SignedHeaders=host;x-amz-date, Signature=0000";

    /// Starts `moto_server -H 127.0.0.1 -p <free port>` and waits (up to
    /// 30 s) until it answers HTTP.
    ///
    /// # Panics
    ///
    /// If `moto_server` is not installed, or it does not come up; the
    /// message then carries the end of its log.
    pub fn start() -> S3Server {
        let moto = require_tool("moto_server", hints::MOTO);
        let client = http_client();

        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            // Its own directory per attempt: a server removes its directory
            // when it stops, and a failed attempt must not take the next one's.
            let dir = tempfile::Builder::new()
                .prefix("cbfs-s3-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a directory for moto_server: {e}"));
            let port = free_port();
            let addr = loopback(port);
            let log = dir.path().join(format!("moto-{attempt}.log"));
            let mut cmd = Command::new(&moto);
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .env("PYTHONUNBUFFERED", "1")
                .current_dir(dir.path());
            let mut server = ServerProcess::spawn_owning("moto", &cmd, &log, dir.path());
            let url = format!("http://{addr}/");
            let ready = poll_http(&client, &url, START_TIMEOUT, || {
                match server.exit_status() {
                    Some(status) => Err(format!("moto_server exited during start-up ({status})")),
                    None => Ok(()),
                }
            });
            match ready {
                Ok(_) => {
                    return S3Server {
                        addr,
                        client,
                        server,
                        _dir: dir,
                    };
                }
                Err(e) => {
                    let tail = server.log_tail(30);
                    let port_taken = tail.contains("Address already in use");
                    failures.push(format!("attempt {attempt}: {e}\n{tail}"));
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!(
            "moto_server did not start ({}):\n{}",
            moto.display(),
            failures.join("\n")
        );
    }

    /// The endpoint URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's socket address, for a [`FaultyProxy`](crate::FaultyProxy).
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Environment for a child process that talks S3 to this server:
    /// `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID=test`,
    /// `AWS_SECRET_ACCESS_KEY=test`, `AWS_REGION=us-east-1` and
    /// `AWS_ALLOW_HTTP=true`.
    pub fn envs(&self) -> Vec<(String, String)> {
        self.envs_with_endpoint(&self.endpoint())
    }

    /// [`envs`](S3Server::envs) with another endpoint, such as a
    /// [`FaultyProxy`](crate::FaultyProxy) in front of this server.
    pub fn envs_with_endpoint(&self, endpoint: &str) -> Vec<(String, String)> {
        s3_envs(endpoint, "test", "test")
    }

    /// Creates the bucket `name` (`PUT /<name>`).
    pub fn create_bucket(&self, name: &str) {
        let response = self.send(self.request(Method::PUT, name, ""));
        self.expect_success(response, &format!("create bucket {name}"));
    }

    /// Every object in `bucket` as `(key, size)`, in key order.
    pub fn list_objects(&self, bucket: &str) -> Vec<(String, u64)> {
        list_pages(bucket, |query| {
            let request = self.request(Method::GET, bucket, "").query(query);
            self.expect_success(self.send(request), &format!("list bucket {bucket}"))
        })
    }

    /// The bytes of `bucket/key`; fails the test if the object is missing.
    pub fn get_object(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.try_get_object(bucket, key)
            .unwrap_or_else(|| panic!("object {bucket}/{key} does not exist"))
    }

    /// The bytes of `bucket/key`, or `None` if there is no such object.
    pub fn try_get_object(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let response = self.send(self.request(Method::GET, bucket, key));
        if response.status() == StatusCode::NOT_FOUND {
            return None;
        }
        Some(self.expect_success(response, &format!("get object {bucket}/{key}")))
    }

    /// Stores `data` as `bucket/key`, replacing any object there: for damaging
    /// a store on purpose (truncating, flipping bits, rolling back).
    pub fn put_object(&self, bucket: &str, key: &str, data: &[u8]) {
        let request = self
            .request(Method::PUT, bucket, key)
            // Without a content type the server would take the body for a form.
            .header("Content-Type", "application/octet-stream")
            .body(data.to_vec());
        let response = self.send(request);
        self.expect_success(response, &format!("put object {bucket}/{key}"));
    }

    /// Deletes `bucket/key` (no error if it does not exist).
    pub fn delete_object(&self, bucket: &str, key: &str) {
        let response = self.send(self.request(Method::DELETE, bucket, key));
        self.expect_success(response, &format!("delete object {bucket}/{key}"));
    }

    /// Calls moto's KMS (served on the same port), action `TrentService.ACTION`,
    /// and returns the answer's JSON.
    pub fn kms(&self, action: &str, body: serde_json::Value) -> serde_json::Value {
        let request = self
            .client
            .post(format!("{}/", self.endpoint()))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Target", format!("TrentService.{action}"))
            .header(
                "Authorization",
                S3Server::AUTHORIZATION.replace("/s3/", "/kms/"),
            )
            .body(body.to_string());
        let bytes = self.expect_success(self.send(request), &format!("KMS {action}"));
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("KMS {action}: the answer is not JSON: {e}"))
    }

    /// Creates a symmetric KMS key and returns its id.
    pub fn create_kms_key(&self) -> String {
        let v = self.kms("CreateKey", serde_json::json!({}));
        v["KeyMetadata"]["KeyId"]
            .as_str()
            .unwrap_or_else(|| panic!("KMS CreateKey: no key id in {v}"))
            .to_owned()
    }

    /// Disables (or enables again) a KMS key.
    pub fn set_kms_key_enabled(&self, key: &str, enabled: bool) {
        let action = if enabled { "EnableKey" } else { "DisableKey" };
        self.kms(action, serde_json::json!({ "KeyId": key }));
    }

    /// Decrypts a KMS ciphertext blob (base64) as a test's own check, with
    /// the encryption context the `awskms:` source uses.
    pub fn kms_decrypt(&self, blob_b64: &str) -> Vec<u8> {
        use base64::Engine as _;
        let v = self.kms(
            "Decrypt",
            serde_json::json!({
                "CiphertextBlob": blob_b64,
                "EncryptionContext": { "cbfs": "key-source-v1" },
            }),
        );
        base64::engine::general_purpose::STANDARD
            .decode(v["Plaintext"].as_str().expect("a plaintext"))
            .expect("base64 plaintext")
    }

    /// Everything the server has logged (one line per request).
    pub fn log_contents(&self) -> Vec<u8> {
        self.server.log_contents()
    }

    fn request(&self, method: Method, bucket: &str, key: &str) -> RequestBuilder {
        let mut url = format!("{}/{}", self.endpoint(), encode_path(bucket));
        if !key.is_empty() {
            url.push('/');
            url.push_str(&encode_path(key));
        }
        self.client
            .request(method, url)
            .header("Authorization", S3Server::AUTHORIZATION)
    }

    fn send(&self, request: RequestBuilder) -> Response {
        let request = request.build().expect("well-formed S3 request");
        let what = format!("{} {}", request.method(), request.url());
        self.client
            .execute(request)
            .unwrap_or_else(|e| panic!("S3 {what}: {e}"))
    }

    fn expect_success(&self, response: Response, what: &str) -> Vec<u8> {
        let status = response.status();
        let body = response
            .bytes()
            .unwrap_or_else(|e| panic!("S3 {what}: reading the answer: {e}"))
            .to_vec();
        if !status.is_success() {
            panic!(
                "S3 {what}: server answered {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        body
    }
}

impl std::fmt::Debug for S3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Server")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The environment of a child process that talks S3 to `endpoint` as the
/// user `access_key` (region `us-east-1`, plain HTTP allowed).
pub(crate) fn s3_envs(endpoint: &str, access_key: &str, secret: &str) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ACCESS_KEY_ID", access_key),
        ("AWS_SECRET_ACCESS_KEY", secret),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Every object of `bucket` as `(key, size)`, in key order, from a
/// ListObjectsV2 listing whose pages `fetch` gets (given the query) and
/// returns the XML of.
pub(crate) fn list_pages(
    bucket: &str,
    mut fetch: impl FnMut(&[(&str, &str)]) -> Vec<u8>,
) -> Vec<(String, u64)> {
    let mut objects = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut query = vec![("list-type", "2")];
        if let Some(token) = &token {
            query.push(("continuation-token", token));
        }
        let body = fetch(&query);
        let xml = String::from_utf8_lossy(&body);
        for contents in elements(&xml, "Contents") {
            let key = element(contents, "Key")
                .map(xml_unescape)
                .unwrap_or_else(|| panic!("list bucket {bucket}: <Contents> without <Key>"));
            let size = element(contents, "Size")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("list bucket {bucket}: no <Size> for {key}"));
            objects.push((key, size));
        }
        let truncated = element(&xml, "IsTruncated").is_some_and(|s| s.trim() == "true");
        token = element(&xml, "NextContinuationToken").map(xml_unescape);
        if !truncated || token.is_none() {
            break;
        }
    }
    objects.sort();
    objects
}

/// Percent-encodes an object key for a URL path, keeping `/` as it is.
pub(crate) fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for &b in key.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The text inside each `<tag>...</tag>` in `xml`, in order. Enough for the
/// flat answers of S3 listings; not a general XML parser.
fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut found = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        found.push(&after[..end]);
        rest = &after[end + close.len()..];
    }
    found
}

pub(crate) fn element<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    elements(xml, tag).into_iter().next()
}

pub(crate) fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            break;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &after[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &after[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_percent_encoded_except_slashes() {
        assert_eq!(encode_path("a b/c+d%é"), "a%20b/c%2Bd%25%C3%A9");
    }

    #[test]
    fn listing_xml_is_read() {
        let xml = "<ListBucketResult><IsTruncated>false</IsTruncated>\
            <Contents><Key>a&amp;b &lt;1&gt; &#x41;&#66;</Key><Size>12</Size></Contents>\
            <Contents><Key>z</Key><Size>0</Size></Contents></ListBucketResult>";
        let contents = elements(xml, "Contents");
        assert_eq!(contents.len(), 2);
        assert_eq!(
            element(contents[0], "Key").map(xml_unescape).as_deref(),
            Some("a&b <1> AB")
        );
        assert_eq!(element(contents[1], "Size"), Some("0"));
        assert_eq!(xml_unescape("a & b &bogus; c"), "a & b &bogus; c");
    }
}
