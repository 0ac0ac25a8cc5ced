//! Settings: for every store ([`StoreOptions`]), and for S3 ([`S3Config`]).

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

/// The smallest part S3 accepts in a multipart upload (except the last).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

/// The most parts S3 accepts in one multipart upload.
pub(crate) const MAX_PARTS: u64 = 10_000;

/// Settings that hold for every kind of store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Files up to this size are uploaded in one request; larger files are
    /// uploaded in parts of this size. At least [`MIN_PART_SIZE`]; raised
    /// automatically for files that would need more than 10,000 parts.
    /// Default 16 MiB.
    pub part_size: usize,
    /// How many parts of one file are uploaded at once. Memory use of an
    /// upload is about `part_size * upload_concurrency`. Default 4.
    pub upload_concurrency: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            part_size: 16 * 1024 * 1024,
            upload_concurrency: 4,
        }
    }
}

impl StoreOptions {
    /// The default options.
    pub fn new() -> StoreOptions {
        StoreOptions::default()
    }

    /// Sets [`part_size`](StoreOptions::part_size).
    pub fn with_part_size(mut self, bytes: usize) -> StoreOptions {
        self.part_size = bytes;
        self
    }

    /// Sets [`upload_concurrency`](StoreOptions::upload_concurrency).
    pub fn with_upload_concurrency(mut self, parts: usize) -> StoreOptions {
        self.upload_concurrency = parts;
        self
    }
}

/// How requests to a remote store are retried.
///
/// Retried: 5xx answers, 429 throttling, 408, connection failures and
/// dropped connections; each request up to `max_retries` times with
/// exponential backoff from `initial_backoff`, capped at `max_backoff`, and
/// not after `timeout` has passed since its first try. On top of that, the
/// store repeats an operation whose failure the HTTP client did not retry
/// (such as a connection dropped while an answer's body was being read), as
/// long as that is safe and `timeout` has not passed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries per request. Default 10.
    pub max_retries: usize,
    /// The first pause. Default 100 ms.
    pub initial_backoff: Duration,
    /// The longest pause. Default 15 s.
    pub max_backoff: Duration,
    /// No retry starts after this long. Default 3 minutes.
    pub timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(15),
            timeout: Duration::from_secs(180),
        }
    }
}

impl RetryPolicy {
    /// A policy with `max_retries` retries and the given backoff bounds.
    pub fn new(
        max_retries: usize,
        initial_backoff: Duration,
        max_backoff: Duration,
        timeout: Duration,
    ) -> RetryPolicy {
        RetryPolicy {
            max_retries,
            initial_backoff,
            max_backoff,
            timeout,
        }
    }

    pub(crate) fn to_object_store(&self) -> object_store::RetryConfig {
        object_store::RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: self.initial_backoff,
                max_backoff: self.max_backoff,
                base: 2.0,
            },
            max_retries: self.max_retries,
            retry_timeout: self.timeout,
        }
    }
}

/// Explicit settings for an S3 store, for [`Store::open_s3`](crate::Store::open_s3).
///
/// Fields left `None` are not set; [`Store::open_s3`](crate::Store::open_s3)
/// reads no environment variable, so tests and programs that juggle several
/// stores get exactly what they ask for. [`Store::open`](crate::Store::open)
/// starts from the standard `AWS_*` variables instead.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct S3Config {
    /// The endpoint, such as `http://127.0.0.1:9000`; `None` for AWS.
    pub endpoint: Option<String>,
    /// The region, such as `us-east-1`.
    pub region: Option<String>,
    /// The access key id.
    pub access_key_id: Option<String>,
    /// The secret access key.
    pub secret_access_key: Option<SecretString>,
    /// A session token, for temporary credentials.
    pub session_token: Option<SecretString>,
    /// Permit plain `http://` endpoints.
    pub allow_http: Option<bool>,
    /// Use virtual-hosted-style requests (`BUCKET.host/key`) rather than
    /// path-style ones (`host/BUCKET/key`, the default, which local servers
    /// such as moto and MinIO need).
    pub virtual_hosted_style: Option<bool>,
    /// Whether the server honours `If-None-Match: *` on `PutObject` and
    /// `CompleteMultipartUpload` (AWS since 2024, MinIO, moto). Default true.
    /// (Ceph's radosgw honours it on `PutObject` only; keep the default there:
    /// the store also looks for the key before completing a multipart upload,
    /// see [`Store::put_file_new`](crate::Store::put_file_new).)
    /// With `Some(false)`, a write-once put first checks that the key is free
    /// and then writes: two writers racing on one key could then both
    /// succeed, the later one winning. Also set by
    /// `AWS_CONDITIONAL_PUT=disabled` for [`Store::open`](crate::Store::open).
    pub conditional_writes: Option<bool>,
    /// Retries. Default [`RetryPolicy::default`].
    pub retry: Option<RetryPolicy>,
    /// Time allowed to connect. Default 5 s.
    pub connect_timeout: Option<Duration>,
    /// Time allowed for one whole request, body included. Default 5 minutes
    /// (a part or a streamed download that takes longer is cut and retried).
    pub request_timeout: Option<Duration>,
}

impl fmt::Debug for S3Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "[redacted]"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "[redacted]"),
            )
            .field("allow_http", &self.allow_http)
            .field("virtual_hosted_style", &self.virtual_hosted_style)
            .field("conditional_writes", &self.conditional_writes)
            .field("retry", &self.retry)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl S3Config {
    /// An empty configuration.
    pub fn new() -> S3Config {
        S3Config::default()
    }

    /// Sets the endpoint URL.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> S3Config {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> S3Config {
        self.region = Some(region.into());
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

    /// Permits or forbids plain `http://` endpoints.
    pub fn with_allow_http(mut self, allow: bool) -> S3Config {
        self.allow_http = Some(allow);
        self
    }

    /// Chooses virtual-hosted-style (true) or path-style (false) requests.
    pub fn with_virtual_hosted_style(mut self, virtual_hosted: bool) -> S3Config {
        self.virtual_hosted_style = Some(virtual_hosted);
        self
    }

    /// See [`conditional_writes`](S3Config::conditional_writes).
    pub fn with_conditional_writes(mut self, enabled: bool) -> S3Config {
        self.conditional_writes = Some(enabled);
        self
    }

    /// Sets the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> S3Config {
        self.retry = Some(retry);
        self
    }

    /// Sets the connect and whole-request timeouts.
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> S3Config {
        self.connect_timeout = Some(connect);
        self.request_timeout = Some(request);
        self
    }
}
