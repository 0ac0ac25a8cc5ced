//! A store read through `cbfs-gateway` (`https://GATEWAY/v1/fs/NAME`):
//! read-only, every request signed with the caller's own cbfs key (the
//! scheme of `cbfs_wire::gateway`), by a small blocking client (`ureq` over
//! rustls). The gateway serves ciphertext only; what unlocks is still the
//! caller's key.
//!
//! TLS roots are those of `CBFS_CA_FILE` if it is set (a PEM bundle), else
//! the Mozilla roots; `CBFS_CLIENT_IDENTITY` (a PEM certificate followed by
//! its private key) is the client certificate, for gateways that ask for one.

use std::io::Read as _;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cbfs_core::umbral_pre::Signer;
use cbfs_core::{Clock, UserName};
use cbfs_wire::gateway::{CONTENT_SHA256_HEADER, SignedParts, authorization, content_sha256};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::source::{ObjectSource, check_key};

/// The variable naming extra TLS roots (a PEM bundle).
pub const CA_FILE_ENV: &str = "CBFS_CA_FILE";
/// The variable naming a client certificate and its key (PEM).
pub const CLIENT_IDENTITY_ENV: &str = "CBFS_CLIENT_IDENTITY";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);
/// Tries of one request that fails in a way worth retrying.
const ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The largest whole object read with [`ObjectSource::get`] (keysets,
/// manifests, summaries and lockboxes are far smaller).
const WHOLE_OBJECT_LIMIT: u64 = 1 << 30;
/// Most ranges, and most bytes, asked for in one request of
/// [`ObjectSource::get_ranges`] (the gateway takes 4096 and 16 MiB).
const RANGES_PER_REQUEST: usize = 2048;
const RANGES_BYTES_PER_REQUEST: u64 = 8 << 20;
/// Most bytes of an answer made room for before it is read.
const PREALLOCATED: u64 = 8 << 20;
/// How much of an error answer is read.
const ERROR_BODY_LIMIT: u64 = 64 << 10;

/// Whether a store spec names a gateway's file system
/// (`http(s)://HOST[:PORT]/v1/fs/NAME`).
pub fn is_gateway_store(spec: &str) -> bool {
    (spec.starts_with("https://") || spec.starts_with("http://")) && spec.contains("/v1/fs/")
}

/// One file system of a gateway as an [`ObjectSource`], for a signed caller.
pub struct GatewaySource {
    base: String,
    /// The path of `base` on its host (`/v1/fs/NAME`), what is signed.
    base_path: String,
    user: UserName,
    signer: Signer,
    agent: ureq::Agent,
    clock: Arc<dyn Clock>,
    fetched: AtomicU64,
}

impl std::fmt::Debug for GatewaySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySource")
            .field("base", &self.base)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// What a request carries besides its method and path.
#[derive(Clone, Copy)]
enum Ask<'a> {
    Plain,
    /// A `Range` header.
    Range(&'a Range<u64>),
    /// A JSON body.
    Json(&'a [u8]),
}

/// How one request ended, before it becomes an [`Error`] about a key.
enum Failure {
    /// Worth another try: the connection, a timeout, 408, 429, 5xx.
    Transient(String),
    /// 404.
    Missing,
    /// Anything else: the gateway's refusal.
    Refused(String),
}

impl GatewaySource {
    /// The file system at `base` (`https://GATEWAY/v1/fs/NAME`), as `user`
    /// signing with `signer`. Plain `http://` only to a loopback address.
    pub fn open(base: &str, user: UserName, signer: Signer) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        let shown = redact_userinfo(&base);
        let usage = |why: String| Error::Usage(format!("store `{shown}`: {why}"));
        if !is_gateway_store(&base) {
            return Err(usage(
                "not a gateway file system (https://GATEWAY/v1/fs/NAME)".into(),
            ));
        }
        let after_scheme = &base[base.find("://").expect("checked") + 3..];
        let (host, path) = after_scheme.split_at(after_scheme.find('/').expect("has /v1/fs/"));
        if host.is_empty() || host.contains('@') {
            return Err(usage(
                "give a host, and no user or password in the URL".into(),
            ));
        }
        let loopback = ["127.", "localhost", "[::1]"]
            .iter()
            .any(|l| host.starts_with(l));
        if base.starts_with("http://") && !loopback {
            return Err(usage(
                "plain http only to a loopback address: use https://".into(),
            ));
        }
        let tls = tls_config().map_err(Error::Usage)?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .tls_config(tls)
            .user_agent(concat!("cbfs-restore/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(GatewaySource {
            base_path: path.to_owned(),
            base,
            user,
            signer,
            agent,
            clock: cbfs_core::system_clock(),
            fetched: AtomicU64::new(0),
        })
    }

    /// Dates requests by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The caller.
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// One signed request to `BASE` + `rest`, with its retries. On success
    /// the body, read up to `limit` bytes (more is an error); for `HEAD`,
    /// the `Content-Length` as the only content, in decimal.
    fn call(
        &self,
        method: &str,
        rest: &str,
        ask: Ask<'_>,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.call_once(method, rest, ask, limit) {
                Err(Failure::Transient(why)) if tries < ATTEMPTS => {
                    tracing::debug!(store = %self.base, rest, tries, "retrying: {why}");
                    std::thread::sleep(FIRST_BACKOFF * (1 << (tries - 1)));
                }
                other => return other,
            }
        }
    }

    fn call_once(
        &self,
        method: &str,
        rest: &str,
        ask: Ask<'_>,
        limit: u64,
    ) -> std::result::Result<Vec<u8>, Failure> {
        let url = format!("{}{rest}", self.base);
        let path_and_query = format!("{}{rest}", self.base_path);
        let body: &[u8] = match ask {
            Ask::Json(b) => b,
            _ => b"",
        };
        let content = content_sha256(body);
        let nonce = cbfs_wire::gateway::new_nonce();
        let parts = SignedParts {
            method,
            path_and_query: &path_and_query,
            timestamp: self.clock.unix(),
            nonce: &nonce,
            content_sha256: &content,
        };
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header(
                "authorization",
                authorization(&self.user, &self.signer, &parts),
            )
            .header(CONTENT_SHA256_HEADER, &content);
        match ask {
            Ask::Plain => {}
            Ask::Range(r) => {
                request = request.header("range", format!("bytes={}-{}", r.start, r.end - 1));
            }
            Ask::Json(_) => request = request.header("content-type", "application/json"),
        }
        let request = request
            .body(body)
            .map_err(|e| Failure::Refused(format!("cannot make the request: {e}")))?;
        let response = self
            .agent
            .run(request)
            .map_err(|e| Failure::Transient(transport(&e)))?;
        let status = response.status().as_u16();
        if method == "HEAD" && status == 200 {
            let size = response
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Failure::Refused("the gateway did not say the size".into()))?;
            return Ok(size.as_bytes().to_vec());
        }
        // Room for the answer as long as it says it is, up front (growing
        // the vector copied each answer once more).
        let said = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut body = response.into_body();
        let mut read = |limit: u64| -> std::result::Result<Vec<u8>, Failure> {
            let mut out = Vec::with_capacity(said.min(limit).min(PREALLOCATED) as usize);
            body.as_reader()
                .take(limit + 1)
                .read_to_end(&mut out)
                .map_err(|e| Failure::Transient(format!("the answer broke off: {e}")))?;
            Ok(out)
        };
        match status {
            200 | 206 => {
                let out = read(limit)?;
                if out.len() as u64 > limit {
                    return Err(Failure::Refused(format!(
                        "the answer is longer than the {limit} bytes asked for"
                    )));
                }
                Ok(out)
            }
            404 => Err(Failure::Missing),
            408 | 429 | 500..=599 => {
                let out = read(ERROR_BODY_LIMIT).unwrap_or_default();
                Err(Failure::Transient(refusal(status, &out)))
            }
            _ => {
                let out = read(ERROR_BODY_LIMIT).unwrap_or_default();
                Err(Failure::Refused(refusal(status, &out)))
            }
        }
    }

    fn error(&self, key: &str, failure: Failure) -> Error {
        match failure {
            Failure::Transient(reason) => Error::Unavailable {
                store: self.base.clone(),
                key: key.to_owned(),
                reason,
            },
            Failure::Missing => Error::Missing {
                key: key.to_owned(),
            },
            Failure::Refused(reason) => Error::Read {
                key: key.to_owned(),
                source: std::io::Error::other(format!("gateway {}: {reason}", self.base)),
            },
        }
    }
}

impl ObjectSource for GatewaySource {
    fn describe(&self) -> String {
        self.base.clone()
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Object {
            key: String,
        }
        #[derive(Deserialize)]
        struct Listing {
            objects: Vec<Object>,
        }
        let rest = format!("/store?prefix={}", percent(prefix));
        let body = self
            .call("GET", &rest, Ask::Plain, WHOLE_OBJECT_LIMIT)
            .map_err(|f| self.error(prefix, f))?;
        let listing: Listing = serde_json::from_slice(&body).map_err(|e| Error::Read {
            key: prefix.to_owned(),
            source: std::io::Error::other(format!(
                "gateway {}: not the listing expected ({e})",
                self.base
            )),
        })?;
        let mut keys: Vec<String> = listing.objects.into_iter().map(|o| o.key).collect();
        keys.sort();
        Ok(keys)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        let body = self
            .call(
                "GET",
                &format!("/store/{key}"),
                Ask::Plain,
                WHOLE_OBJECT_LIMIT,
            )
            .map_err(|f| self.error(key, f))?;
        self.fetched.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        check_key(key)?;
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        tracing::debug!(
            key,
            start = range.start,
            len = range.end - range.start,
            "ranged read"
        );
        let body = self
            .call(
                "GET",
                &format!("/store/{key}"),
                Ask::Range(&range),
                range.end - range.start,
            )
            .map_err(|f| self.error(key, f))?;
        self.fetched.fetch_add(body.len() as u64, Ordering::Relaxed);
        Ok(body)
    }

    fn get_ranges(&self, key: &str, ranges: &[Range<u64>]) -> Result<Option<Vec<Vec<u8>>>> {
        check_key(key)?;
        let mut out = Vec::with_capacity(ranges.len());
        // As many ranges per request as the gateway takes.
        let mut rest = ranges;
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0u64;
            while n < rest.len()
                && n < RANGES_PER_REQUEST
                && (n == 0 || bytes + (rest[n].end - rest[n].start) <= RANGES_BYTES_PER_REQUEST)
            {
                bytes += rest[n].end.saturating_sub(rest[n].start);
                n += 1;
            }
            let (batch, after) = rest.split_at(n);
            rest = after;
            tracing::debug!(key, ranges = batch.len(), bytes, "ranges read");
            let asked = serde_json::json!({
                "ranges": batch.iter().map(|r| [r.start, r.end]).collect::<Vec<_>>(),
            });
            let body = self
                .call(
                    "POST",
                    &format!("/ranges/{key}"),
                    Ask::Json(asked.to_string().as_bytes()),
                    bytes,
                )
                .map_err(|f| self.error(key, f))?;
            if body.len() as u64 != bytes {
                return Err(Error::Read {
                    key: key.to_owned(),
                    source: std::io::Error::other(format!(
                        "the gateway answered {} bytes for {} ranges of {bytes} bytes",
                        body.len(),
                        batch.len()
                    )),
                });
            }
            self.fetched.fetch_add(bytes, Ordering::Relaxed);
            let mut at = 0usize;
            for r in batch {
                let len = (r.end - r.start) as usize;
                out.push(body[at..at + len].to_vec());
                at += len;
            }
        }
        Ok(Some(out))
    }

    fn size(&self, key: &str) -> Result<u64> {
        check_key(key)?;
        let body = self
            .call("HEAD", &format!("/store/{key}"), Ask::Plain, 0)
            .map_err(|f| self.error(key, f))?;
        std::str::from_utf8(&body)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Read {
                key: key.to_owned(),
                source: std::io::Error::other("the gateway gave a size that is not a number"),
            })
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// `STATUS CODE: REASON` of a gateway's error answer.
pub fn refusal(status: u16, body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Body {
        error: String,
        reason: String,
    }
    match serde_json::from_slice::<Body>(body) {
        Ok(b) => format!("refused ({status} {}): {}", b.error, b.reason),
        Err(_) => format!("answered {status}"),
    }
}

/// A transport failure, without the URL's query (there is none to hide, but
/// the error is kept short).
fn transport(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Timeout(_) => "timed out".into(),
        ureq::Error::ConnectionFailed => "could not connect".into(),
        ureq::Error::Io(io) => format!("connection: {io}"),
        other => other.to_string(),
    }
}

/// `url` without a `user:password@` part, for messages.
fn redact_userinfo(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    match url[start..end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_owned(),
    }
}

/// Percent-encodes a query value.
pub fn percent(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The TLS settings of [`CA_FILE_ENV`] and [`CLIENT_IDENTITY_ENV`].
fn tls_config() -> std::result::Result<ureq::tls::TlsConfig, String> {
    use ureq::tls::{Certificate, ClientCert, PemItem, RootCerts, TlsConfig, parse_pem};
    let mut tls = TlsConfig::builder();
    if let Some(path) = std::env::var_os(CA_FILE_ENV) {
        let shown = path.to_string_lossy().into_owned();
        let pem = std::fs::read(&path).map_err(|e| format!("{CA_FILE_ENV}={shown}: {e}"))?;
        let certs: Vec<Certificate<'static>> = parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(format!("{CA_FILE_ENV}={shown}: no PEM certificate in it"));
        }
        tls = tls.root_certs(RootCerts::new_with_certs(&certs));
    }
    if let Some(path) = std::env::var_os(CLIENT_IDENTITY_ENV) {
        let shown = path.to_string_lossy().into_owned();
        let pem =
            std::fs::read(&path).map_err(|e| format!("{CLIENT_IDENTITY_ENV}={shown}: {e}"))?;
        let mut chain = Vec::new();
        let mut key = None;
        for item in parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(c)) => chain.push(c),
                Ok(PemItem::PrivateKey(k)) => key = Some(k),
                _ => {}
            }
        }
        // The error says what is wrong with the file's framing, never its key.
        let (false, Some(key)) = (chain.is_empty(), key) else {
            return Err(format!(
                "{CLIENT_IDENTITY_ENV}={shown}: not a PEM certificate followed by its private key"
            ));
        };
        tls = tls.client_cert(Some(ClientCert::new_with_certs(&chain, key)));
    }
    Ok(tls.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> (UserName, Signer) {
        let secret = cbfs_core::UserSecret::generate();
        (UserName::new("alice").unwrap(), secret.signer())
    }

    #[test]
    fn only_gateway_urls_and_no_plain_http_off_loopback() {
        let (u, s) = user();
        let ok = GatewaySource::open("https://gw.example:8443/v1/fs/fs1/", u.clone(), s).unwrap();
        assert_eq!(ok.describe(), "https://gw.example:8443/v1/fs/fs1");
        assert_eq!(ok.base_path, "/v1/fs/fs1");
        let (_, s) = user();
        assert!(GatewaySource::open("http://127.0.0.1:9/v1/fs/fs1", u.clone(), s).is_ok());
        for bad in [
            "http://gw.example/v1/fs/fs1",
            "https://gw.example/fs1",
            "https://u:pw@gw.example/v1/fs/fs1",
        ] {
            let (_, s) = user();
            let e = GatewaySource::open(bad, u.clone(), s)
                .unwrap_err()
                .to_string();
            assert!(!e.contains("pw@"), "{e}");
            assert!(matches!(
                GatewaySource::open(bad, u.clone(), user().1),
                Err(Error::Usage(_))
            ));
        }
    }

    #[test]
    fn a_gateway_that_is_down_is_unavailable_naming_the_key() {
        let (u, s) = user();
        // Nothing listens on port 9 of loopback.
        let src = GatewaySource::open("http://127.0.0.1:9/v1/fs/fs1", u, s).unwrap();
        match src.get("keysets/a.json") {
            Err(Error::Unavailable { key, store, .. }) => {
                assert_eq!(key, "keysets/a.json");
                assert_eq!(store, "http://127.0.0.1:9/v1/fs/fs1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(src.get("../x"), Err(Error::BadKey { .. })));
    }

    /// A one-connection-at-a-time HTTP/1.1 server on loopback that answers
    /// every request with `status` and `body` (its length as said), and
    /// the source it serves.
    fn answering(status: &'static str, body: Vec<u8>) -> GatewaySource {
        use std::io::{BufRead as _, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    // The request's head, to its blank line.
                    let mut line = String::new();
                    let mut first = None;
                    let mut ended = false;
                    while reader.read_line(&mut line).unwrap_or(0) > 0 {
                        if line == "\r\n" {
                            ended = true;
                            break;
                        }
                        first.get_or_insert_with(|| line.clone());
                        line.clear();
                    }
                    if !ended {
                        break;
                    }
                    // A HEAD learns the size, with no body.
                    let head_only = first.is_some_and(|l| l.starts_with("HEAD "));
                    let head = format!(
                        "HTTP/1.1 {}\r\ncontent-length: {}\r\n\r\n",
                        if head_only { "200 OK" } else { status },
                        body.len()
                    );
                    if conn.write_all(head.as_bytes()).is_err()
                        || (!head_only && conn.write_all(&body).is_err())
                    {
                        break;
                    }
                }
            }
        });
        let (u, s) = user();
        GatewaySource::open(&format!("http://127.0.0.1:{port}/v1/fs/fs1"), u, s).unwrap()
    }

    #[test]
    fn a_range_is_read_whole_and_a_longer_answer_is_refused_naming_the_object() {
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let src = answering("206 Partial Content", body.clone());
        assert_eq!(src.get_range("segments/a.tar", 5..100_005).unwrap(), body);
        assert_eq!(src.fetched(), 100_000);
        // At the object's end the answer is shorter than the range.
        assert_eq!(src.get_range("segments/a.tar", 5..100_010).unwrap(), body);
        // A gateway that answers more than was asked is refused.
        match src.get_range("segments/a.tar", 0..1000) {
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains("segments/a.tar"), "{e}");
                assert!(e.contains("longer than the 1000 bytes"), "{e}");
            }
            Ok(got) => panic!("a longer answer was taken ({} bytes)", got.len()),
        }
        // Its size is what a HEAD says.
        assert_eq!(src.size("segments/a.tar").unwrap(), 100_000);
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent("segments/a b&c"), "segments%2Fa%20b%26c");
    }
}
