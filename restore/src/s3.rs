//! A small blocking S3 client: [`S3Source`] reads a store kept in an S3
//! bucket (under an optional key prefix) through the [`ObjectSource`] trait.
//!
//! Requests are signed with AWS Signature Version 4 by `rusty-s3`, as
//! presigned URLs that live for a few minutes (each attempt signs anew), and
//! sent by `ureq` over rustls. There is no async runtime: every call blocks
//! the thread that makes it, and the threads of a restore share one source
//! (and its pool of connections).
//!
//! The settings come from an `s3://BUCKET/PREFIX` spec and the same `AWS_*`
//! environment variables that `cbfs-store` reads, so that the agent and a
//! recovery on another machine find the same store with the same
//! environment ([`S3Config::from_spec_and_env`]).
//!
//! Failures are sorted the way [`ObjectSource`] asks: an absent key is
//! [`Error::Missing`]; network failures, timeouts, 5xx answers and
//! throttling are tried again a few times with growing, jittered pauses and
//! then reported as [`Error::Unavailable`]; everything else (wrong
//! credentials, a missing bucket, a wrong region, a server that answers
//! something this client does not expect) is [`Error::Read`] at once, with
//! the S3 error code and message. Messages name the store and the key, never
//! a credential.
//!
//! `ureq` logs through the `log` crate. At `trace` level it logs the bytes of
//! every request, presigned query strings included; a program that forwards
//! `log` records must not enable `trace` for the `ureq` and `ureq_proto`
//! targets when a session token is in use.

use std::fmt;
use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rusty_s3::actions::{GetObject, HeadObject, ListObjectsV2, ListObjectsV2Response};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use secrecy::{ExposeSecret as _, SecretString};
use url::Url;

use crate::error::{Error, Result};
use crate::source::{ObjectSource, check_key};

/// Time allowed to set up a connection (TCP and TLS).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for one whole request, the answer's body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a signed URL stays valid: longer than a request may take.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Tries per request, the first included.
const ATTEMPTS: u32 = 4;
/// The pause after the first failed try; it doubles after each further one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The largest object [`S3Source::get`] reads whole; larger ones are read by
/// ranges ([`ObjectSource::open`]).
const MAX_GET: u64 = 256 << 20;
/// The most bytes of an error answer that are read.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// The most bytes of one page of a listing (1000 keys take some 300 KiB).
const MAX_LIST_BODY: u64 = 32 << 20;
/// The longest S3 error message kept, in characters.
const MAX_MESSAGE: usize = 400;

/// Where an S3 store is and how to sign for it.
///
/// [`from_spec_and_env`](S3Config::from_spec_and_env) fills it the way
/// `cbfs-store` does; [`from_spec`](S3Config::from_spec) reads no environment
/// variable, for programs and tests that set every field themselves.
/// [`S3Source::new`] checks it. `Debug` never shows the secret key or the
/// session token.
#[derive(Clone)]
#[non_exhaustive]
pub struct S3Config {
    /// The endpoint, such as `http://127.0.0.1:9000`; `None` for AWS
    /// (`https://s3.REGION.amazonaws.com`). With virtual-hosted-style
    /// requests an endpoint must name the bucket (`https://BUCKET.host`), as
    /// for `cbfs-store`.
    pub endpoint: Option<String>,
    /// The region, such as `us-east-1`.
    pub region: String,
    /// The bucket.
    pub bucket: String,
    /// The key prefix inside the bucket, without a `/` at either end; empty
    /// for the whole bucket. The store's key `K` is the object `PREFIX/K`.
    pub prefix: String,
    /// The access key id; `None` for unsigned (anonymous) requests.
    pub access_key_id: Option<String>,
    /// The secret access key, with [`access_key_id`](S3Config::access_key_id).
    pub secret_access_key: Option<SecretString>,
    /// A session token, for temporary credentials.
    pub session_token: Option<SecretString>,
    /// Virtual-hosted-style requests (`BUCKET.host/key`) rather than
    /// path-style ones (`host/BUCKET/key`, the default, which local servers
    /// such as moto and MinIO need).
    pub virtual_hosted_style: bool,
    /// Permit a plain `http://` endpoint.
    pub allow_http: bool,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint.as_deref().map(redact_endpoint))
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl S3Config {
    /// The store of `spec` (`s3://BUCKET` or `s3://BUCKET/PREFIX`) on AWS in
    /// `us-east-1`, path-style, without credentials; no environment variable
    /// is read.
    pub fn from_spec(spec: &str) -> Result<S3Config> {
        let (bucket, prefix) = parse_spec(spec)?;
        Ok(S3Config {
            endpoint: None,
            region: "us-east-1".to_owned(),
            bucket,
            prefix,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            virtual_hosted_style: false,
            allow_http: false,
        })
    }

    /// From a spec `s3://BUCKET` or `s3://BUCKET/PREFIX` and the `AWS_*`
    /// environment variables that `cbfs-store` reads: `AWS_ENDPOINT_URL` (or
    /// `AWS_ENDPOINT`; else AWS), `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION` (default `us-east-1`), `AWS_ALLOW_HTTP` (an
    /// `http://` endpoint is refused unless it is true) and
    /// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST` (path-style unless true). Empty
    /// variables count as unset.
    pub fn from_spec_and_env(spec: &str) -> Result<S3Config> {
        S3Config::from_spec_and_vars(spec, |name| std::env::var(name).ok())
    }

    /// [`from_spec_and_env`](S3Config::from_spec_and_env) with the variables
    /// read by `var`.
    fn from_spec_and_vars(spec: &str, var: impl Fn(&str) -> Option<String>) -> Result<S3Config> {
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let flag = |name: &str| -> Result<bool> {
            match var(name) {
                None => Ok(false),
                Some(v) => parse_bool(&v).ok_or_else(|| {
                    Error::Usage(format!(
                        "{name}={v:?} is neither true nor false (use true or false)"
                    ))
                }),
            }
        };
        let mut config = S3Config::from_spec(spec)?;
        config.endpoint = var("AWS_ENDPOINT_URL").or_else(|| var("AWS_ENDPOINT"));
        if let Some(region) = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")) {
            config.region = region;
        }
        config.access_key_id = var("AWS_ACCESS_KEY_ID");
        config.secret_access_key = var("AWS_SECRET_ACCESS_KEY").map(SecretString::from);
        config.session_token = var("AWS_SESSION_TOKEN").map(SecretString::from);
        config.allow_http = flag("AWS_ALLOW_HTTP")?;
        config.virtual_hosted_style = flag("AWS_VIRTUAL_HOSTED_STYLE_REQUEST")?;
        Ok(config)
    }

    /// Sets the endpoint URL.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> S3Config {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> S3Config {
        self.region = region.into();
        self
    }

    /// Sets static credentials.
    pub fn with_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: SecretString,
    ) -> S3Config {
        self.access_key_id = Some(access_key_id.into());
        self.secret_access_key = Some(secret_access_key);
        self
    }

    /// Sets a session token (temporary credentials).
    pub fn with_session_token(mut self, token: SecretString) -> S3Config {
        self.session_token = Some(token);
        self
    }

    /// Permits or forbids a plain `http://` endpoint.
    pub fn with_allow_http(mut self, allow: bool) -> S3Config {
        self.allow_http = allow;
        self
    }

    /// Chooses virtual-hosted-style (true) or path-style (false) requests.
    pub fn with_virtual_hosted_style(mut self, virtual_hosted: bool) -> S3Config {
        self.virtual_hosted_style = virtual_hosted;
        self
    }

    /// `s3://BUCKET/PREFIX`, for messages.
    fn spec(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// An S3 bucket (or a prefix in one) read as an [`ObjectSource`]: a small
/// blocking client. Shared by the threads of a restore.
pub struct S3Source {
    bucket: Bucket,
    credentials: Option<Credentials>,
    /// The key prefix inside the bucket, without slashes at either end.
    prefix: String,
    agent: ureq::Agent,
    describe: String,
    /// Values that must never show up in a message.
    secrets: Vec<SecretString>,
    retry: Retry,
    fetched: AtomicU64,
}

impl fmt::Debug for S3Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Source")
            .field("store", &self.describe)
            .field("signed", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

/// How often and how patiently a request is tried.
#[derive(Clone, Copy, Debug)]
struct Retry {
    attempts: u32,
    first_backoff: Duration,
    max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: ATTEMPTS,
            first_backoff: FIRST_BACKOFF,
            max_backoff: MAX_BACKOFF,
        }
    }
}

impl Retry {
    /// The pause after failed try number `tries` (1 for the first): doubling
    /// from the first pause up to the longest, each drawn at random from its
    /// upper half so that threads that failed together do not retry together.
    fn pause(&self, tries: u32) -> Duration {
        let factor = 1u32 << tries.saturating_sub(1).min(16);
        let full = self
            .first_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let half = full / 2;
        half + half.mul_f64(random_unit())
    }
}

/// A number in `[0, 1)`, random enough for a pause's jitter.
fn random_unit() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl S3Source {
    /// The store of `spec` (`s3://BUCKET/PREFIX`) with the settings of the
    /// `AWS_*` environment variables: see [`S3Config::from_spec_and_env`].
    pub fn open(spec: &str) -> Result<S3Source> {
        S3Source::new(S3Config::from_spec_and_env(spec)?)
    }

    /// The store `config` describes. Checks the settings; sends nothing.
    pub fn new(config: S3Config) -> Result<S3Source> {
        let spec = config.spec();
        let bad = |reason: String| Error::Usage(format!("S3 store {spec}: {reason}"));
        check_bucket(&config.bucket).map_err(|r| bad(r.to_owned()))?;
        let prefix = normalize_prefix(&config.prefix).map_err(|r| bad(r.to_owned()))?;
        if config.region.trim().is_empty() || config.region.contains(['/', ' ']) {
            return Err(bad(format!("{:?} is not a region", config.region)));
        }
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) if !id.is_empty() => Some(match &config.session_token {
                Some(token) => Credentials::new_with_token(
                    id.clone(),
                    secret.expose_secret(),
                    token.expose_secret(),
                ),
                None => Credentials::new(id.clone(), secret.expose_secret()),
            }),
            (None, None) if config.session_token.is_none() => None,
            _ => {
                return Err(bad(
                    "credentials need both an access key id and a secret access key \
                     (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                        .to_owned(),
                ));
            }
        };

        let (base, style) = endpoint_for(&config).map_err(bad)?;
        let shown = redact_endpoint(base.as_str());
        let bucket = Bucket::new(base, style, config.bucket.clone(), config.region.clone())
            .map_err(|e| bad(format!("no bucket URL can be made ({e:?})")))?;
        let store = if prefix.is_empty() {
            format!("s3://{}", config.bucket)
        } else {
            format!("s3://{}/{prefix}", config.bucket)
        };
        let describe = match &config.endpoint {
            Some(_) => format!("{store} (endpoint {shown}, region {})", config.region),
            None => format!("{store} (AWS, region {})", config.region),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .https_only(!config.allow_http)
            .max_redirects(0)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .user_agent(concat!("cbfs-restore/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        let secrets = [&config.secret_access_key, &config.session_token]
            .into_iter()
            .flatten()
            .filter(|s| !s.expose_secret().is_empty())
            .cloned()
            .collect();
        Ok(S3Source {
            bucket,
            credentials,
            prefix,
            agent,
            describe,
            secrets,
            retry: Retry::default(),
            fetched: AtomicU64::new(0),
        })
    }

    /// The object name of a store key.
    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    /// The store key of an object name, if it is under the prefix.
    fn store_key<'k>(&self, object: &'k str) -> Option<&'k str> {
        if self.prefix.is_empty() {
            Some(object)
        } else {
            object.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    /// Removes every secret from text that came from elsewhere (a server,
    /// the HTTP library), raw or percent-encoded.
    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            let raw = secret.expose_secret();
            let encoded: String = url::form_urlencoded::byte_serialize(raw.as_bytes()).collect();
            let encoded20 = encoded.replace('+', "%20");
            for form in [raw, encoded.as_str(), encoded20.as_str()] {
                if !form.is_empty() && text.contains(form) {
                    text = text.replace(form, "[redacted]");
                }
            }
        }
        text
    }

    /// The error for `key` that `failure` ends as.
    fn error(&self, key: &str, failure: Failure) -> Error {
        match failure {
            Failure::Missing => Error::Missing {
                key: key.to_owned(),
            },
            Failure::Transient(reason) => Error::Unavailable {
                store: self.describe.clone(),
                key: key.to_owned(),
                reason: self.scrub(&reason),
            },
            Failure::Permanent(reason) | Failure::Undocumented(reason) => Error::Read {
                key: key.to_owned(),
                source: io::Error::other(format!("{}: {}", self.describe, self.scrub(&reason))),
            },
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or has been tried
    /// [`Retry::attempts`] times.
    fn retrying<T>(
        &self,
        what: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let mut tries = 0;
        loop {
            tries += 1;
            match attempt() {
                Err(Failure::Transient(reason)) if tries < self.retry.attempts => {
                    let pause = self.retry.pause(tries);
                    tracing::debug!(
                        store = %self.describe,
                        "{what}: {} (try {tries} of {}; again in {} ms)",
                        self.scrub(&reason),
                        self.retry.attempts,
                        pause.as_millis()
                    );
                    std::thread::sleep(pause);
                }
                Err(Failure::Transient(reason)) => {
                    return Err(Failure::Transient(format!(
                        "{reason} (tried {tries} times)"
                    )));
                }
                other => return other,
            }
        }
    }

    fn sign<'a>(&self, action: &impl S3Action<'a>) -> String {
        action.sign(SIGNATURE_LIFETIME).to_string()
    }

    /// Sends a request; any answer is returned, whatever its status.
    fn send(
        &self,
        method: &str,
        url: &str,
        range: Option<&Range<u64>>,
    ) -> Result<ureq::http::Response<ureq::Body>, Failure> {
        let request = match method {
            "HEAD" => self.agent.head(url),
            _ => self.agent.get(url),
        };
        let request = match range {
            Some(r) => request.header("range", format!("bytes={}-{}", r.start, r.end - 1)),
            None => request,
        };
        request
            .call()
            .map_err(|e| transport_failure(&format!("{method} request"), &e))
    }

    /// Reads a body of at most `limit` bytes (an error beyond), counting
    /// what arrives.
    fn read_body(
        &self,
        body: ureq::Body,
        expected: Option<u64>,
        limit: u64,
    ) -> Result<Vec<u8>, Failure> {
        let capacity = expected.unwrap_or(0).min(limit).min(16 << 20);
        let mut out = Vec::with_capacity(capacity as usize);
        let mut reader = body.into_with_config().reader().take(limit + 1);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.fetched.fetch_add(n as u64, Ordering::Relaxed);
                    out.extend_from_slice(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Failure::Transient(format!(
                        "the connection failed after {} bytes of the answer: {}",
                        out.len(),
                        io_text(&e)
                    )));
                }
            }
        }
        if out.len() as u64 > limit {
            return Err(Failure::Permanent(format!(
                "the answer is longer than the {limit} bytes this client reads"
            )));
        }
        if let Some(n) = expected.filter(|&n| out.len() as u64 != n) {
            return Err(Failure::Transient(format!(
                "the answer ended after {} of {n} bytes",
                out.len()
            )));
        }
        Ok(out)
    }

    /// What an error answer (any status but the expected ones) means.
    fn error_answer(
        &self,
        what: &str,
        response: ureq::http::Response<ureq::Body>,
        object: bool,
    ) -> Failure {
        let (parts, body) = response.into_parts();
        let status = parts.status.as_u16();
        // A body that breaks off is read as far as it came.
        let bytes = self.read_partial(body, MAX_ERROR_BODY);
        let mut answer = S3Answer::parse(status, &bytes);
        answer.region = header(&parts.headers, "x-amz-bucket-region").map(str::to_owned);
        match answer.failure(what, object) {
            Failure::Permanent(reason) if status == 403 && self.credentials.is_none() => {
                Failure::Permanent(format!(
                    "{reason} (the requests are unsigned: no AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY were given)"
                ))
            }
            other => other,
        }
    }

    /// Up to `limit` bytes of a body, ignoring a failure to read more.
    fn read_partial(&self, body: ureq::Body, limit: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut reader = body.into_with_config().reader().take(limit);
        let mut buf = [0u8; 8 << 10];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            self.fetched.fetch_add(n as u64, Ordering::Relaxed);
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    /// One try of `GET object`, whole.
    fn get_once(&self, object: &str) -> Result<Vec<u8>, Failure> {
        let action = GetObject::new(&self.bucket, self.credentials.as_ref(), object);
        let response = self.send("GET", &self.sign(&action), None)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(self.error_answer("GET", response, true));
        }
        let length = content_length(response.headers())?;
        if let Some(n) = length.filter(|&n| n > MAX_GET) {
            return Err(Failure::Permanent(format!(
                "the object is {n} bytes, more than the {MAX_GET} bytes read whole; \
                 it must be read by ranges"
            )));
        }
        let xml = is_xml(response.headers());
        let body = self.read_body(response.into_body(), length, MAX_GET)?;
        if xml && let Some(answer) = S3Answer::error_document(200, &body) {
            return Err(answer.failure("GET", true));
        }
        Ok(body)
    }

    /// One try of `GET object` with `Range`; `range` is not empty.
    fn get_range_once(&self, object: &str, range: &Range<u64>) -> Result<Vec<u8>, Failure> {
        let action = GetObject::new(&self.bucket, self.credentials.as_ref(), object);
        let response = self.send("GET", &self.sign(&action), Some(range))?;
        let status = response.status().as_u16();
        if !matches!(status, 200 | 206 | 416) {
            return Err(self.error_answer("GET", response, true));
        }
        let headers = response.headers();
        let expected = check_range_answer(
            range,
            status,
            header(headers, "content-range"),
            content_length(headers)?,
        )
        .map_err(Failure::Permanent)?;
        if status == 416 {
            // Past the end: nothing there. The body is an error document.
            self.read_partial(response.into_body(), MAX_ERROR_BODY);
            return Ok(Vec::new());
        }
        self.read_body(response.into_body(), Some(expected), expected)
    }

    /// One try of `HEAD object`.
    fn head_once(&self, object: &str) -> Result<u64, Failure> {
        let action = HeadObject::new(&self.bucket, self.credentials.as_ref(), object);
        let response = self.send("HEAD", &self.sign(&action), None)?;
        let status = response.status().as_u16();
        if status != 200 {
            // A HEAD answer has no body, so no error code; unless trying
            // again may help, a GET tells what is wrong.
            return match S3Answer::parse(status, &[]).failure("HEAD", true) {
                Failure::Transient(reason) => Err(Failure::Transient(reason)),
                Failure::Permanent(reason) => Err(Failure::Undocumented(reason)),
                Failure::Missing => Err(Failure::Undocumented(format!("HEAD answered {status}"))),
                Failure::Undocumented(reason) => Err(Failure::Undocumented(reason)),
            };
        }
        content_length(response.headers())?
            .ok_or_else(|| Failure::Permanent("the HEAD answer has no Content-Length".to_owned()))
    }

    /// One try of `GET object` for its first byte: the size from
    /// `Content-Range`, or the error document a HEAD answer lacks.
    fn probe_size_once(&self, object: &str) -> Result<u64, Failure> {
        let action = GetObject::new(&self.bucket, self.credentials.as_ref(), object);
        let response = self.send("GET", &self.sign(&action), Some(&(0..1)))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let size = match status {
            200 => content_length(headers)?,
            206 => match header(headers, "content-range").map(parse_content_range) {
                Some(Some(ContentRange::Bytes { total, .. })) => total,
                _ => None,
            },
            416 => match header(headers, "content-range").map(parse_content_range) {
                Some(Some(ContentRange::Unsatisfied { total })) => Some(total),
                _ => Some(0),
            },
            _ => return Err(self.error_answer("GET", response, true)),
        };
        let size = size.ok_or_else(|| {
            Failure::Permanent(format!("the {status} answer to a range GET has no size"))
        })?;
        if status == 206 {
            self.read_partial(response.into_body(), 1);
        }
        Ok(size)
    }

    /// One try of one page of `ListObjectsV2`.
    fn list_page_once(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<ListObjectsV2Response, Failure> {
        let mut action = ListObjectsV2::new(&self.bucket, self.credentials.as_ref());
        if !prefix.is_empty() {
            action.with_prefix(prefix);
        }
        if let Some(token) = token {
            action.with_continuation_token(token);
        }
        let response = self.send("GET", &self.sign(&action), None)?;
        if response.status().as_u16() != 200 {
            return Err(self.error_answer("LIST", response, false));
        }
        let length = content_length(response.headers())?;
        if let Some(n) = length.filter(|&n| n > MAX_LIST_BODY) {
            return Err(Failure::Permanent(format!(
                "a page of the listing is {n} bytes, more than the {MAX_LIST_BODY} bytes read"
            )));
        }
        let body = self.read_body(response.into_body(), length, MAX_LIST_BODY)?;
        parse_listing(&body)
    }
}

impl ObjectSource for S3Source {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        check_list_prefix(prefix)?;
        let full = self.full_key(prefix);
        let full = if self.prefix.is_empty() || !prefix.is_empty() {
            full
        } else {
            format!("{}/", self.prefix)
        };
        let what = if prefix.is_empty() {
            "(the listing)".to_owned()
        } else {
            format!("{prefix}*")
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .retrying("LIST", || self.list_page_once(&full, token.as_deref()))
                .map_err(|f| self.error(&what, f))?;
            for object in &page.contents {
                let Some(key) = self.store_key(&object.key) else {
                    continue;
                };
                // Names outside the key rules are not objects of a store.
                if key.starts_with(prefix) && check_key(key).is_ok() {
                    keys.push(key.to_owned());
                } else {
                    tracing::debug!(store = %self.describe, "listing: skipping {:?}", object.key);
                }
            }
            match page.next_continuation_token {
                None => break,
                Some(next) if token.as_deref() == Some(next.as_str()) => {
                    return Err(self.error(
                        &what,
                        Failure::Permanent("the listing repeats its continuation token".to_owned()),
                    ));
                }
                Some(next) => token = Some(next),
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        check_key(key)?;
        let object = self.full_key(key);
        self.retrying("GET", || self.get_once(&object))
            .map_err(|f| self.error(key, f))
    }

    fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>> {
        check_key(key)?;
        if range.start >= range.end {
            return Ok(Vec::new());
        }
        if range.end - range.start > MAX_GET {
            return Err(Error::Read {
                key: key.to_owned(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: a range of {} bytes is more than the {MAX_GET} bytes read at once",
                        self.describe,
                        range.end - range.start
                    ),
                ),
            });
        }
        let object = self.full_key(key);
        self.retrying("GET range", || self.get_range_once(&object, &range))
            .map_err(|f| self.error(key, f))
    }

    fn size(&self, key: &str) -> Result<u64> {
        check_key(key)?;
        let object = self.full_key(key);
        match self.retrying("HEAD", || self.head_once(&object)) {
            Ok(size) => Ok(size),
            Err(Failure::Undocumented(_)) => self
                .retrying("GET", || self.probe_size_once(&object))
                .map_err(|f| self.error(key, f)),
            Err(f) => Err(self.error(key, f)),
        }
    }

    fn fetched(&self) -> u64 {
        self.fetched.load(Ordering::Relaxed)
    }
}

/// What went wrong with one try.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The object does not exist.
    Missing,
    /// Worth trying again: network, timeout, 5xx, throttling.
    Transient(String),
    /// Trying again will not help.
    Permanent(String),
    /// A HEAD answer that says something is wrong, but not what.
    Undocumented(String),
}

/// An answer that is not what was asked for, with what its S3 error
/// document (if any) says.
#[derive(Debug, Default, PartialEq, Eq)]
struct S3Answer {
    status: u16,
    code: Option<String>,
    message: Option<String>,
    /// The bucket's region, from `x-amz-bucket-region`.
    region: Option<String>,
}

impl S3Answer {
    /// An answer with `status` and (the start of) `body`.
    fn parse(status: u16, body: &[u8]) -> S3Answer {
        S3Answer::error_document(status, body).unwrap_or(S3Answer {
            status,
            ..S3Answer::default()
        })
    }

    /// The answer if `body` is an S3 error document (`<Error>...`).
    fn error_document(status: u16, body: &[u8]) -> Option<S3Answer> {
        let text = String::from_utf8_lossy(body);
        let mut rest = text.trim_start_matches('\u{feff}').trim_start();
        if let Some(after) = rest.strip_prefix("<?xml") {
            rest = after.split_once("?>")?.1.trim_start();
        }
        if !(rest.starts_with("<Error>") || rest.starts_with("<Error ")) {
            return None;
        }
        Some(S3Answer {
            status,
            code: xml_element(rest, "Code").map(|c| clean(&c)),
            message: xml_element(rest, "Message").map(|m| clean(&m)),
            region: None,
        })
    }

    /// What the answer means for a request `what` (an object's, or the
    /// listing's if not `object`).
    fn failure(&self, what: &str, object: bool) -> Failure {
        let text = self.describe(what);
        match self.code.as_deref() {
            Some("NoSuchKey") if object => return Failure::Missing,
            Some(
                "SlowDown"
                | "RequestTimeout"
                | "InternalError"
                | "ServiceUnavailable"
                | "Throttling"
                | "ThrottlingException"
                | "RequestThrottled"
                | "RequestLimitExceeded"
                | "BandwidthLimitExceeded"
                | "TooManyRequests",
            ) => return Failure::Transient(text),
            Some(_) if (200..300).contains(&self.status) => return Failure::Permanent(text),
            _ => {}
        }
        match self.status {
            404 if object && self.code.is_none() => Failure::Missing,
            408 | 429 | 500..=599 => Failure::Transient(text),
            _ => Failure::Permanent(text),
        }
    }

    /// `GET answered 403 Forbidden: SignatureDoesNotMatch: ...`.
    fn describe(&self, what: &str) -> String {
        let mut text = format!("{what} answered {}", self.status);
        if let Some(reason) = ureq::http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
        {
            text.push(' ');
            text.push_str(reason);
        }
        match (&self.code, &self.message) {
            (Some(code), Some(message)) => text.push_str(&format!(": {code}: {message}")),
            (Some(code), None) => text.push_str(&format!(": {code}")),
            (None, Some(message)) => text.push_str(&format!(": {message}")),
            (None, None) => {}
        }
        if let Some(region) = &self.region {
            text.push_str(&format!(" (the bucket is in region {})", clean(region)));
        }
        text
    }
}

/// The first `<tag>...</tag>` of `xml`, unescaped.
fn xml_element(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&close)?;
    Some(xml_unescape(&xml[start..start + len]))
}

fn xml_unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let decoded = after.find(';').and_then(|semi| {
            let entity = &after[1..semi];
            let c = match entity {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                _ => entity
                    .strip_prefix("#x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                    .and_then(char::from_u32),
            };
            c.map(|c| (c, semi))
        });
        match decoded {
            Some((c, semi)) => {
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

/// Text from a server made fit for a message: one line, bounded.
fn clean(text: &str) -> String {
    let mut out: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE)
        .collect();
    if text.trim().chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

/// A page of a listing, or why it is not one.
fn parse_listing(body: &[u8]) -> Result<ListObjectsV2Response, Failure> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Failure::Permanent("the listing is not UTF-8".to_owned()))?;
    if let Some(answer) = S3Answer::error_document(200, body) {
        return Err(answer.failure("LIST", false));
    }
    ListObjectsV2::parse_response(text).map_err(|e| {
        Failure::Permanent(format!(
            "the listing cannot be read ({e}); a truncated listing must carry a continuation token"
        ))
    })
}

/// A `Content-Range` header of an answer.
#[derive(Debug, PartialEq, Eq)]
enum ContentRange {
    /// `bytes START-END/TOTAL` (`TOTAL` may be `*`, unknown).
    Bytes {
        start: u64,
        end: u64,
        total: Option<u64>,
    },
    /// `bytes */TOTAL`, with a 416 answer.
    Unsatisfied { total: u64 },
}

fn parse_content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let total = total.trim();
    if span.trim() == "*" {
        return Some(ContentRange::Unsatisfied {
            total: total.parse().ok()?,
        });
    }
    let (start, end) = span.trim().split_once('-')?;
    let (start, end): (u64, u64) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    let total = match total {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if end < start || total.is_some_and(|t| end >= t) {
        return None;
    }
    Some(ContentRange::Bytes { start, end, total })
}

/// Checks the answer to a GET of bytes `range` (not empty) and returns how
/// many body bytes it must have: 206 with the `Content-Range` asked for
/// (shorter only at the object's end), 200 only when the range covers the
/// whole object, 416 when the range starts at or past the end (nothing).
fn check_range_answer(
    range: &Range<u64>,
    status: u16,
    content_range: Option<&str>,
    content_length: Option<u64>,
) -> Result<u64, String> {
    let last = range.end - 1;
    let asked = format!("bytes {}-{last}", range.start);
    match status {
        206 => {
            let value = content_range
                .ok_or_else(|| format!("a 206 answer to {asked} has no Content-Range"))?;
            let Some(ContentRange::Bytes { start, end, total }) = parse_content_range(value) else {
                return Err(format!(
                    "a 206 answer to {asked} has Content-Range {:?}",
                    clean(value)
                ));
            };
            let at_end = total.is_some_and(|t| end + 1 == t);
            if start != range.start || end > last || (end < last && !at_end) {
                return Err(format!(
                    "asked for {asked}, the server sent {:?}",
                    clean(value)
                ));
            }
            let n = end - start + 1;
            if content_length.is_some_and(|len| len != n) {
                return Err(format!(
                    "a 206 answer with Content-Range {:?} has Content-Length {}",
                    clean(value),
                    content_length.unwrap_or_default()
                ));
            }
            Ok(n)
        }
        200 => match content_length {
            Some(len) if range.start == 0 && len <= range.end => Ok(len),
            Some(len) => Err(format!(
                "asked for {asked}, the server sent the whole object ({len} bytes)"
            )),
            None => Err(format!(
                "asked for {asked}, the server sent the whole object"
            )),
        },
        416 => match content_range.map(parse_content_range) {
            Some(Some(ContentRange::Unsatisfied { total })) if range.start < total => Err(format!(
                "asked for {asked} of {total} bytes, the server answered 416"
            )),
            _ => Ok(0),
        },
        other => Err(format!("asked for {asked}, the server answered {other}")),
    }
}

fn header<'h>(headers: &'h ureq::http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &ureq::http::HeaderMap) -> Result<Option<u64>, Failure> {
    match header(headers, "content-length") {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            Failure::Permanent(format!("the answer has Content-Length {:?}", clean(v)))
        }),
    }
}

fn is_xml(headers: &ureq::http::HeaderMap) -> bool {
    header(headers, "content-type").is_some_and(|t| {
        let t = t.split(';').next().unwrap_or("").trim();
        t.eq_ignore_ascii_case("application/xml") || t.eq_ignore_ascii_case("text/xml")
    })
}

/// A failure to exchange a request and its answer.
fn transport_failure(what: &str, e: &ureq::Error) -> Failure {
    use ureq::Error as E;
    let text = match e {
        // The URI is a signed URL.
        E::BadUri(_) | E::RequireHttpsOnly(_) => "a URL the HTTP client refuses".to_owned(),
        E::Io(io) => io_text(io),
        other => other.to_string(),
    };
    let text = format!("{what} failed: {text}");
    match e {
        E::Io(_)
        | E::Timeout(_)
        | E::HostNotFound
        | E::ConnectionFailed
        | E::Protocol(_)
        | E::BodyStalled
        | E::ConnectProxyFailed(_) => Failure::Transient(text),
        _ => Failure::Permanent(text),
    }
}

fn io_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => format!("the connection closed early ({e})"),
        _ => e.to_string(),
    }
}

/// `true`/`false` the way `object_store` reads them.
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "on" | "yes" | "y" => Some(true),
        "0" | "false" | "off" | "no" | "n" => Some(false),
        _ => None,
    }
}

/// `s3://BUCKET/PREFIX` split into bucket and prefix (without slashes at
/// its ends).
fn parse_spec(spec: &str) -> Result<(String, String)> {
    let shown = redact_spec(spec);
    let bad = |reason: &str| Error::Usage(format!("S3 store {shown}: {reason}"));
    let rest = spec
        .strip_prefix("s3://")
        .ok_or_else(|| bad("an S3 store is given as s3://BUCKET or s3://BUCKET/PREFIX"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') {
        return Err(bad(
            "credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ));
    }
    check_bucket(bucket).map_err(bad)?;
    if prefix.contains(['?', '#']) {
        return Err(bad("an s3:// URL takes no query or fragment"));
    }
    let prefix = normalize_prefix(prefix).map_err(bad)?;
    Ok((bucket.to_owned(), prefix))
}

/// The spec as it may be shown: anything before an `@` in the authority is
/// removed.
fn redact_spec(spec: &str) -> String {
    let Some(rest) = spec.strip_prefix("s3://") else {
        return spec.to_owned();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("s3://[redacted]@{host}/{path}"),
        None => spec.to_owned(),
    }
}

fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if bucket.len() < 3 || bucket.len() > 63 {
        return Err("a bucket name has 3 to 63 characters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err("a bucket name uses lowercase letters, digits, '-' and '.'");
    }
    if !bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
        || bucket.contains("..")
    {
        return Err("a bucket name starts and ends with a letter or digit, without '..'");
    }
    Ok(())
}

/// A store prefix without one trailing `/`, checked like a key.
fn normalize_prefix(prefix: &str) -> Result<String, &'static str> {
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    if trimmed.is_empty() {
        return if prefix.is_empty() {
            Ok(String::new())
        } else {
            Err("the prefix is not acceptable: it must not start with '/'")
        };
    }
    check_key(trimmed).map_err(|e| match e {
        Error::BadKey { reason, .. } => reason,
        _ => "the prefix is not acceptable",
    })?;
    Ok(trimmed.to_owned())
}

/// Checks the prefix given to [`ObjectSource::list`]: empty, or key
/// characters whose last part may be partial, with an optional trailing `/`.
fn check_list_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        return Ok(());
    }
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    check_key(trimmed).map_err(|e| match e {
        Error::BadKey { reason, .. } => Error::BadKey {
            key: prefix.to_owned(),
            reason,
        },
        other => other,
    })
}

/// The URL `rusty-s3` builds the bucket's URLs on, and their style.
///
/// Like `cbfs-store` (`object_store`): without an endpoint, AWS's
/// `https://s3.REGION.amazonaws.com`; path-style requests go to
/// `ENDPOINT/BUCKET/KEY`; virtual-hosted-style ones to `ENDPOINT/KEY`, where
/// the endpoint names the bucket (`https://BUCKET.host`), or to
/// `https://BUCKET.s3.REGION.amazonaws.com/KEY` without an endpoint.
fn endpoint_for(config: &S3Config) -> Result<(Url, UrlStyle), String> {
    let style = if config.virtual_hosted_style {
        UrlStyle::VirtualHost
    } else {
        UrlStyle::Path
    };
    let Some(endpoint) = &config.endpoint else {
        let url = Url::parse(&format!("https://s3.{}.amazonaws.com", config.region))
            .map_err(|_| format!("{:?} is not a region", config.region))?;
        return Ok((url, style));
    };
    let shown = redact_endpoint(endpoint);
    let mut url =
        Url::parse(endpoint).map_err(|e| format!("the endpoint {shown} is not a URL ({e})"))?;
    match url.scheme() {
        "https" => {}
        "http" if config.allow_http => {}
        "http" => {
            return Err(format!(
                "refusing the plain http:// endpoint {shown}: set AWS_ALLOW_HTTP=true to permit it"
            ));
        }
        other => return Err(format!("the endpoint {shown} is {other}://, not https://")),
    }
    if url.host_str().is_none() {
        return Err(format!("the endpoint {shown} has no host"));
    }
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_query(None);
    url.set_fragment(None);
    if config.virtual_hosted_style {
        let host = url.host_str().unwrap_or_default().to_owned();
        let Some(rest) = host.strip_prefix(&format!("{}.", config.bucket)) else {
            return Err(format!(
                "with virtual-hosted-style requests the endpoint names the bucket, \
                 like https://{}.s3.example.com; {shown} does not",
                config.bucket
            ));
        };
        url.set_host(Some(rest))
            .map_err(|e| format!("the endpoint {shown} has no usable host ({e})"))?;
    }
    Ok((url, style))
}

/// An endpoint URL without user information, query or fragment.
fn redact_endpoint(endpoint: &str) -> String {
    match Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => "(unparsable endpoint)".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn source(config: S3Config) -> S3Source {
        S3Source::new(config).unwrap()
    }

    /// The unsigned URL of `key`, as requests would use it.
    fn url_of(s: &S3Source, key: &str) -> String {
        GetObject::new(&s.bucket, None, &s.full_key(key))
            .sign(SIGNATURE_LIFETIME)
            .to_string()
    }

    #[test]
    fn specs_are_parsed() {
        let c = S3Config::from_spec("s3://bucket/a/b/").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("bucket", "a/b"));
        let c = S3Config::from_spec("s3://my.bucket-1").unwrap();
        assert_eq!((c.bucket.as_str(), c.prefix.as_str()), ("my.bucket-1", ""));
        let c = S3Config::from_spec("s3://bucket/").unwrap();
        assert_eq!(c.prefix, "");
        for bad in [
            "/tmp/x",
            "s3://",
            "s3://ab",
            "s3://Bucket",
            "s3://-bucket",
            "s3://bucket/../x",
            "s3://bucket/a//b",
            "s3://bucket//",
            "s3://bucket/.hidden",
            "s3://bucket/a?x=1",
            "s3://bucket/a#f",
            "https://bucket/a",
        ] {
            assert!(
                matches!(S3Config::from_spec(bad), Err(Error::Usage(_))),
                "{bad}"
            );
        }
        let err = S3Config::from_spec("s3://AKIA:sekrit-value@bucket/p").unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }

    #[test]
    fn environment_is_read_like_the_store_does() {
        let c = S3Config::from_spec_and_vars("s3://bkt/pre", vars(&[])).unwrap();
        assert_eq!(c.endpoint, None);
        assert_eq!(c.region, "us-east-1");
        assert!(c.access_key_id.is_none() && c.secret_access_key.is_none());
        assert!(!c.allow_http && !c.virtual_hosted_style);

        let c = S3Config::from_spec_and_vars(
            "s3://bkt/pre",
            vars(&[
                ("AWS_ENDPOINT_URL", "http://127.0.0.1:9000"),
                ("AWS_ENDPOINT", "http://ignored:1"),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", "secret-value-1234"),
                ("AWS_SESSION_TOKEN", "token-value-5678"),
                ("AWS_DEFAULT_REGION", "eu-west-3"),
                ("AWS_ALLOW_HTTP", "TRUE"),
                ("AWS_VIRTUAL_HOSTED_STYLE_REQUEST", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(c.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(c.region, "eu-west-3");
        assert_eq!(c.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(
            c.secret_access_key.as_ref().unwrap().expose_secret(),
            "secret-value-1234"
        );
        assert_eq!(
            c.session_token.as_ref().unwrap().expose_secret(),
            "token-value-5678"
        );
        assert!(c.allow_http && !c.virtual_hosted_style);

        // AWS_REGION wins over AWS_DEFAULT_REGION; empty variables are unset.
        let c = S3Config::from_spec_and_vars(
            "s3://bkt",
            vars(&[
                ("AWS_REGION", "ap-south-1"),
                ("AWS_DEFAULT_REGION", "eu-west-3"),
                ("AWS_ENDPOINT_URL", ""),
                ("AWS_ENDPOINT", "https://minio.example"),
                ("AWS_SESSION_TOKEN", " "),
            ]),
        )
        .unwrap();
        assert_eq!(c.region, "ap-south-1");
        assert_eq!(c.endpoint.as_deref(), Some("https://minio.example"));
        assert!(c.session_token.is_none());

        let err = S3Config::from_spec_and_vars("s3://bkt", vars(&[("AWS_ALLOW_HTTP", "maybe")]))
            .unwrap_err();
        assert!(err.to_string().contains("AWS_ALLOW_HTTP"), "{err}");
    }

    #[test]
    fn settings_are_checked() {
        let base = || S3Config::from_spec("s3://bkt/pre").unwrap();
        // Plain HTTP only when allowed.
        let err = S3Source::new(base().with_endpoint("http://127.0.0.1:9000")).unwrap_err();
        assert!(err.to_string().contains("AWS_ALLOW_HTTP"), "{err}");
        S3Source::new(
            base()
                .with_endpoint("http://127.0.0.1:9000")
                .with_allow_http(true),
        )
        .unwrap();
        // Half of a credential is refused.
        let mut c = base();
        c.access_key_id = Some("AKID".into());
        assert!(matches!(S3Source::new(c), Err(Error::Usage(_))));
        let mut c = base();
        c.secret_access_key = Some(SecretString::from("only-the-secret"));
        let err = S3Source::new(c).unwrap_err();
        assert!(!err.to_string().contains("only-the-secret"), "{err}");
        // Odd endpoints, prefixes and buckets.
        for c in [
            base().with_endpoint("ftp://host"),
            base().with_endpoint("not a url"),
            base().with_region(""),
            base().with_region("a/b"),
            S3Config {
                prefix: "/abs".into(),
                ..base()
            },
            S3Config {
                prefix: "a/../b".into(),
                ..base()
            },
            S3Config {
                bucket: "UPPER".into(),
                ..base()
            },
        ] {
            assert!(
                matches!(S3Source::new(c.clone()), Err(Error::Usage(_))),
                "{c:?}"
            );
        }
        // A prefix given with a trailing slash is the same store.
        let s = source(S3Config {
            prefix: "pre/".into(),
            ..base()
        });
        assert_eq!(s.describe(), "s3://bkt/pre (AWS, region us-east-1)");
    }

    #[test]
    fn urls_path_style_and_virtual_hosted() {
        let base = || S3Config::from_spec("s3://bkt/pre/fix").unwrap();

        let s = source(base());
        assert!(
            url_of(&s, "segments/a.tar")
                .starts_with("https://s3.us-east-1.amazonaws.com/bkt/pre/fix/segments/a.tar"),
            "{}",
            url_of(&s, "segments/a.tar")
        );
        let s = source(
            base()
                .with_virtual_hosted_style(true)
                .with_region("eu-west-1"),
        );
        assert!(
            url_of(&s, "k").starts_with("https://bkt.s3.eu-west-1.amazonaws.com/pre/fix/k"),
            "{}",
            url_of(&s, "k")
        );
        let s = source(
            base()
                .with_endpoint("http://user:pw@127.0.0.1:9000/?x=1")
                .with_allow_http(true),
        );
        assert_eq!(url_of(&s, "k"), "http://127.0.0.1:9000/bkt/pre/fix/k");
        assert_eq!(
            s.describe(),
            "s3://bkt/pre/fix (endpoint http://127.0.0.1:9000, region us-east-1)"
        );
        // An endpoint with a path keeps it in front.
        let s = source(base().with_endpoint("https://gw.example/s3"));
        assert_eq!(url_of(&s, "k"), "https://gw.example/s3/bkt/pre/fix/k");
        // Virtual-hosted with an endpoint: the endpoint names the bucket.
        let s = source(
            base()
                .with_endpoint("https://bkt.minio.example:9443")
                .with_virtual_hosted_style(true),
        );
        assert_eq!(url_of(&s, "k"), "https://bkt.minio.example:9443/pre/fix/k");
        let err = S3Source::new(
            base()
                .with_endpoint("https://minio.example")
                .with_virtual_hosted_style(true),
        )
        .unwrap_err();
        assert!(err.to_string().contains("names the bucket"), "{err}");
        // Without a prefix, keys are object names.
        let s = source(S3Config::from_spec("s3://bkt").unwrap());
        assert_eq!(
            url_of(&s, "a/b"),
            "https://s3.us-east-1.amazonaws.com/bkt/a/b"
        );
        assert_eq!(s.store_key("a/b"), Some("a/b"));
        let s = source(base());
        assert_eq!(s.store_key("pre/fix/a/b"), Some("a/b"));
        assert_eq!(s.store_key("pre/fixa/b"), None);
        assert_eq!(s.store_key("other/a"), None);
    }

    #[test]
    fn signed_urls_carry_the_credential_not_the_secret() {
        let s = source(
            S3Config::from_spec("s3://bkt")
                .unwrap()
                .with_credentials("AKIDEXAMPLE", SecretString::from("wJalrXUtnFEMI/K7MDENG"))
                .with_session_token(SecretString::from("FwoGZXIvYXdzEXAMPLE/token+=")),
        );
        let action = GetObject::new(&s.bucket, s.credentials.as_ref(), "k");
        let url = s.sign(&action);
        assert!(url.contains("X-Amz-Credential=AKIDEXAMPLE%2F"), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        assert!(!url.contains("wJalrXUtnFEMI"), "{url}");
        // The token is part of a presigned URL: scrubbing removes it in
        // either encoding.
        assert!(url.contains("X-Amz-Security-Token="), "{url}");
        let scrubbed = s.scrub(&url);
        assert!(!scrubbed.contains("FwoGZXIvYXdzEXAMPLE"), "{scrubbed}");
        assert!(
            s.scrub("a FwoGZXIvYXdzEXAMPLE/token+= b")
                .contains("[redacted]")
        );
    }

    #[test]
    fn content_ranges_are_parsed() {
        use ContentRange::*;
        assert_eq!(
            parse_content_range("bytes 0-9/100"),
            Some(Bytes {
                start: 0,
                end: 9,
                total: Some(100)
            })
        );
        assert_eq!(
            parse_content_range("bytes 5-5/*"),
            Some(Bytes {
                start: 5,
                end: 5,
                total: None
            })
        );
        assert_eq!(
            parse_content_range("bytes */42"),
            Some(Unsatisfied { total: 42 })
        );
        for bad in [
            "",
            "bytes",
            "bytes 9-0/100",
            "bytes 0-100/100",
            "items 0-1/2",
            "bytes a-b/c",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn range_answers_are_checked() {
        // 206 with exactly the range asked for.
        assert_eq!(
            check_range_answer(&(10..20), 206, Some("bytes 10-19/100"), Some(10)),
            Ok(10)
        );
        // Shorter only at the object's end.
        assert_eq!(
            check_range_answer(&(90..200), 206, Some("bytes 90-99/100"), Some(10)),
            Ok(10)
        );
        for (range, value, len) in [
            (10..20, Some("bytes 10-14/100"), Some(5)), // short, not at the end
            (10..20, Some("bytes 11-20/100"), Some(10)), // another start
            (10..20, Some("bytes 10-25/100"), Some(16)), // longer
            (10..20, Some("bytes 10-14/*"), Some(5)),   // short, end unknown
            (10..20, Some("bytes 10-19/100"), Some(11)), // length disagrees
            (10..20, None, Some(10)),
            (10..20, Some("garbage"), Some(10)),
        ] {
            assert!(
                check_range_answer(&range, 206, value, len).is_err(),
                "{range:?} {value:?} {len:?}"
            );
        }
        // 200: only when the range covers the whole object.
        assert_eq!(check_range_answer(&(0..100), 200, None, Some(60)), Ok(60));
        assert_eq!(check_range_answer(&(0..60), 200, None, Some(60)), Ok(60));
        assert!(check_range_answer(&(0..10), 200, None, Some(60)).is_err());
        assert!(check_range_answer(&(5..100), 200, None, Some(60)).is_err());
        assert!(check_range_answer(&(0..100), 200, None, None).is_err());
        // 416: the range starts at or past the end.
        assert_eq!(
            check_range_answer(&(100..200), 416, Some("bytes */100"), None),
            Ok(0)
        );
        assert_eq!(check_range_answer(&(0..1), 416, None, None), Ok(0));
        assert!(check_range_answer(&(50..60), 416, Some("bytes */100"), None).is_err());
    }

    fn error_xml(code: &str, message: &str) -> Vec<u8> {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
             <Message>{message}</Message><RequestId>4442587FB7D0A2F9</RequestId>\
             <StringToSign>AWS4-HMAC-SHA256 secret-ish</StringToSign></Error>"
        )
        .into_bytes()
    }

    fn failure(status: u16, body: &[u8], object: bool) -> Failure {
        S3Answer::parse(status, body).failure("GET", object)
    }

    #[test]
    fn errors_are_classified() {
        assert_eq!(
            failure(
                404,
                &error_xml("NoSuchKey", "The specified key does not exist."),
                true
            ),
            Failure::Missing
        );
        assert_eq!(failure(404, b"", true), Failure::Missing);
        // A missing bucket is not a missing object.
        let f = failure(
            404,
            &error_xml("NoSuchBucket", "The specified bucket does not exist"),
            true,
        );
        assert!(
            matches!(&f, Failure::Permanent(m) if m.contains("NoSuchBucket") && m.contains("404")),
            "{f:?}"
        );
        assert!(matches!(failure(404, b"", false), Failure::Permanent(_)));
        // Throttling and server errors are worth retrying.
        for (status, code) in [
            (503, "SlowDown"),
            (500, "InternalError"),
            (503, "ServiceUnavailable"),
            (400, "RequestTimeout"),
            (429, "TooManyRequests"),
            (400, "ThrottlingException"),
        ] {
            assert!(
                matches!(failure(status, &error_xml(code, "m"), true), Failure::Transient(m) if m.contains(code)),
                "{status} {code}"
            );
        }
        for status in [500, 502, 503, 504, 429, 408] {
            assert!(
                matches!(
                    failure(status, b"<html>busy</html>", true),
                    Failure::Transient(_)
                ),
                "{status}"
            );
        }
        // Credentials, clocks and the like are not.
        for (status, code) in [
            (403, "SignatureDoesNotMatch"),
            (403, "InvalidAccessKeyId"),
            (403, "AccessDenied"),
            (403, "RequestTimeTooSkewed"),
            (400, "AuthorizationHeaderMalformed"),
            (301, "PermanentRedirect"),
            (409, "Conflict"),
        ] {
            let f = failure(
                status,
                &error_xml(code, "Check your key &amp; signing method."),
                true,
            );
            match f {
                Failure::Permanent(m) => {
                    assert!(m.contains(code), "{m}");
                    assert!(m.contains("Check your key & signing method."), "{m}");
                    assert!(!m.contains("secret-ish"), "{m}");
                }
                other => panic!("{status} {code}: {other:?}"),
            }
        }
        assert!(
            matches!(failure(403, b"", true), Failure::Permanent(m) if m.contains("403 Forbidden"))
        );
        // A 200 that carries an error document is an error.
        assert!(matches!(
            parse_listing(&error_xml("InternalError", "try again")),
            Err(Failure::Transient(_))
        ));
        assert!(matches!(
            parse_listing(&error_xml("AccessDenied", "no")),
            Err(Failure::Permanent(_))
        ));
        assert!(S3Answer::error_document(200, b"\x00\x01binary").is_none());
        assert!(S3Answer::error_document(200, b"{\"json\": 1}").is_none());
        // The bucket's region is named when the server gives it.
        let mut answer = S3Answer::parse(301, &error_xml("PermanentRedirect", "Use the endpoint."));
        answer.region = Some("eu-central-1".into());
        assert!(answer.describe("GET").contains("region eu-central-1"));
        // Long or multi-line messages are bounded.
        let long = "x\ny".repeat(1000);
        let f = failure(400, &error_xml("InvalidArgument", &long), true);
        assert!(
            matches!(&f, Failure::Permanent(m) if m.len() < 600 && !m.contains('\n')),
            "{f:?}"
        );
    }

    #[test]
    fn listings_are_parsed_and_must_be_complete() {
        let page = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
            <ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
            <Name>bkt</Name><Prefix>pre/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys>\
            <EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>\
            <NextContinuationToken>tok/1+=</NextContinuationToken>\
            <Contents><Key>pre/a%2Fb</Key><Size>3</Size></Contents>\
            <Contents><Key>pre/c</Key><Size>0</Size></Contents></ListBucketResult>";
        let parsed = parse_listing(page).unwrap();
        let keys: Vec<_> = parsed.contents.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["pre/a/b", "pre/c"]);
        assert_eq!(parsed.next_continuation_token.as_deref(), Some("tok/1+="));

        let truncated = b"<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
            <IsTruncated>true</IsTruncated><Contents><Key>a</Key></Contents></ListBucketResult>";
        assert!(matches!(
            parse_listing(truncated),
            Err(Failure::Permanent(_))
        ));
        assert!(matches!(
            parse_listing(b"<html>"),
            Err(Failure::Permanent(_))
        ));
        assert!(matches!(
            parse_listing(b"\xff\xfe"),
            Err(Failure::Permanent(_))
        ));
    }

    #[test]
    fn list_prefixes_and_keys_are_checked() {
        for ok in ["", "segments/", "segments/ab", "lockboxes/aa/"] {
            check_list_prefix(ok).unwrap();
        }
        for bad in ["/", "/etc", "a//", "../x", "a b"] {
            assert!(
                matches!(check_list_prefix(bad), Err(Error::BadKey { .. })),
                "{bad}"
            );
        }
        let s = source(S3Config::from_spec("s3://bkt").unwrap());
        for key in ["../x", "", "a//b", "/abs"] {
            assert!(matches!(s.get(key), Err(Error::BadKey { .. })), "{key}");
            assert!(matches!(s.size(key), Err(Error::BadKey { .. })), "{key}");
        }
        // An empty range needs no request (there is no server here).
        assert_eq!(s.get_range("k", 5..5).unwrap(), Vec::<u8>::new());
        assert_eq!(s.fetched(), 0);
    }

    #[test]
    fn pauses_grow_and_stay_bounded() {
        let r = Retry::default();
        for tries in 1..=3 {
            let full = FIRST_BACKOFF * (1 << (tries - 1));
            for _ in 0..20 {
                let p = r.pause(tries);
                assert!(p >= full / 2 && p <= full, "{tries}: {p:?}");
            }
        }
        assert!(r.pause(40) <= MAX_BACKOFF);
    }

    #[test]
    fn transport_failures_are_transient_unless_configuration() {
        assert!(matches!(
            transport_failure("GET", &ureq::Error::ConnectionFailed),
            Failure::Transient(_)
        ));
        assert!(matches!(
            transport_failure(
                "GET",
                &ureq::Error::Io(io::ErrorKind::ConnectionReset.into())
            ),
            Failure::Transient(_)
        ));
        assert!(matches!(
            transport_failure("GET", &ureq::Error::Timeout(ureq::Timeout::Global)),
            Failure::Transient(_)
        ));
        let f = transport_failure(
            "GET",
            &ureq::Error::BadUri("https://h/k?X-Amz-Security-Token=tok".into()),
        );
        assert!(
            matches!(&f, Failure::Permanent(m) if !m.contains("tok")),
            "{f:?}"
        );
    }

    #[test]
    fn secrets_never_show() {
        const SECRET: &str = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY";
        const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE-session-token";
        let config = S3Config::from_spec_and_vars(
            "s3://bkt/pre",
            vars(&[
                ("AWS_ENDPOINT_URL", "https://u:pw-in-url@s3.example.com"),
                ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
                ("AWS_SECRET_ACCESS_KEY", SECRET),
                ("AWS_SESSION_TOKEN", TOKEN),
            ]),
        )
        .unwrap();
        let s = S3Source::new(config.clone()).unwrap();
        // An error whose server text echoes the secrets.
        let echo = format!(
            "{SECRET} {TOKEN} {}",
            url::form_urlencoded::byte_serialize(TOKEN.as_bytes()).collect::<String>()
        );
        let errors = [
            s.error("k", Failure::Permanent(echo.clone())),
            s.error("k", Failure::Transient(echo.clone())),
            s.error("k", Failure::Missing),
        ];
        let mut shown = vec![format!("{config:?}"), format!("{s:?}"), s.describe()];
        for e in &errors {
            shown.push(format!("{e}"));
            shown.push(format!("{e:?}"));
        }
        for text in &shown {
            for secret in [SECRET, TOKEN, "pw-in-url"] {
                assert!(!text.contains(secret), "{secret} in {text}");
            }
        }
        assert!(shown[0].contains("AKIDEXAMPLE"), "{}", shown[0]);
        assert!(
            format!("{}", errors[0]).contains("s3://bkt/pre"),
            "{}",
            errors[0]
        );
    }
}
