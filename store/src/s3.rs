//! Building an S3 store on `object_store`'s `AmazonS3`, and the small HTTP
//! layer that makes multipart uploads write-once.

use std::time::Duration;

use async_trait::async_trait;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpService, ReqwestConnector,
};
use object_store::{ClientConfigKey, ClientOptions, HeaderValue};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{RetryPolicy, S3Config};
use crate::error::{Error, Result};
use crate::key::validate_prefix;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// An S3 store, ready to use.
pub(crate) struct S3Store {
    pub(crate) s3: AmazonS3,
    /// The key prefix inside the bucket, without slashes at either end; may be empty.
    pub(crate) prefix: String,
    /// Whether puts are made conditional with `If-None-Match: *`.
    pub(crate) conditional: bool,
    pub(crate) retry: RetryPolicy,
    pub(crate) describe: String,
    /// Values that must never show up in an error message.
    pub(crate) secrets: Vec<SecretString>,
}

/// `s3://BUCKET/PREFIX` split into bucket and prefix, or `None` if `spec`
/// is not an `s3://` URL at all.
pub(crate) fn parse_spec(spec: &str) -> Option<Result<(String, String)>> {
    let rest = spec.strip_prefix("s3://")?;
    let bad = |reason: &str| Error::BadSpec {
        spec: redact_spec(spec),
        reason: reason.to_string(),
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.contains('@') {
        return Some(Err(bad(
            "credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        )));
    }
    if let Err(reason) = check_bucket(bucket) {
        return Some(Err(bad(reason)));
    }
    if prefix.contains(['?', '#']) {
        return Some(Err(bad("an s3:// URL takes no query or fragment")));
    }
    Some(
        validate_prefix(prefix)
            .map(|p| (bucket.to_string(), p.to_string()))
            .map_err(|e| bad(&format!("the prefix is not acceptable: {e}"))),
    )
}

/// The spec as it may be shown: anything before an `@` in the authority
/// (credentials someone put there by mistake) is removed.
pub(crate) fn redact_spec(spec: &str) -> String {
    let Some(rest) = spec.strip_prefix("s3://") else {
        return spec.to_string();
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("s3://[redacted]@{host}/{path}"),
        None => spec.to_string(),
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
    Ok(())
}

/// Builds the store on top of `builder` (empty, or filled from the
/// environment), with `config` applied over it.
pub(crate) fn build(
    mut builder: AmazonS3Builder,
    bucket: &str,
    prefix: &str,
    config: &S3Config,
) -> Result<S3Store> {
    let spec = if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    };
    check_bucket(bucket).map_err(|reason| Error::BadSpec {
        spec: spec.clone(),
        reason: reason.to_string(),
    })?;
    let prefix = validate_prefix(prefix)
        .map_err(|e| Error::BadSpec {
            spec: spec.clone(),
            reason: format!("the prefix is not acceptable: {e}"),
        })?
        .to_string();

    builder = builder.with_bucket_name(bucket);
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.region {
        builder = builder.with_region(region);
    }
    if let Some(id) = &config.access_key_id {
        builder = builder.with_access_key_id(id);
    }
    if let Some(secret) = &config.secret_access_key {
        builder = builder.with_secret_access_key(secret.expose_secret());
    }
    if let Some(token) = &config.session_token {
        builder = builder.with_token(token.expose_secret());
    }
    if let Some(allow) = config.allow_http {
        builder = builder.with_allow_http(allow);
    }
    if let Some(virtual_hosted) = config.virtual_hosted_style {
        builder = builder.with_virtual_hosted_style_request(virtual_hosted);
    }
    let conditional = config.conditional_writes.unwrap_or_else(|| {
        builder
            .get_config_value(&AmazonS3ConfigKey::ConditionalPut)
            .is_none_or(|v| v != "disabled")
    });
    let retry = config.retry.clone().unwrap_or_default();
    let connect = config.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let request = config.request_timeout.unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    builder = builder
        .with_conditional_put(if conditional {
            S3ConditionalPut::ETagMatch
        } else {
            S3ConditionalPut::Disabled
        })
        .with_retry(retry.to_object_store())
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            format!("{}ms", connect.as_millis()),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            format!("{}ms", request.as_millis()),
        )
        // Without a content type some servers (moto) take a body for a form.
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::DefaultContentType),
            "application/octet-stream",
        );
    if conditional {
        builder = builder.with_http_connector(WriteOnceConnector);
    }

    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .map(|e| redact_endpoint(&e));
    let region = builder
        .get_config_value(&AmazonS3ConfigKey::Region)
        .unwrap_or_else(|| "us-east-1".to_string());
    let describe = match &endpoint {
        Some(endpoint) => format!("{spec} (endpoint {endpoint}, region {region})"),
        None => format!("{spec} (AWS, region {region})"),
    };
    let secrets = [AmazonS3ConfigKey::SecretAccessKey, AmazonS3ConfigKey::Token]
        .iter()
        .filter_map(|k| builder.get_config_value(k))
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
        .collect();

    let s3 = builder.build().map_err(|e| Error::BadSpec {
        spec: spec.clone(),
        reason: e.to_string(),
    })?;
    Ok(S3Store {
        s3,
        prefix,
        conditional,
        retry,
        describe,
        secrets,
    })
}

/// An endpoint URL without user information or query.
fn redact_endpoint(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) => {
            if !url.username().is_empty() || url.password().is_some() {
                let _ = url.set_username("");
                let _ = url.set_password(None);
            }
            url.set_query(None);
            url.set_fragment(None);
            url.as_str().trim_end_matches('/').to_string()
        }
        Err(_) => "(unparsable endpoint)".to_string(),
    }
}

/// Connects `object_store`'s usual reqwest client, wrapped in [`WriteOnce`].
#[derive(Debug)]
struct WriteOnceConnector;

impl HttpConnector for WriteOnceConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(WriteOnce { inner }))
    }
}

/// Adds `If-None-Match: *` to every `CompleteMultipartUpload` request.
///
/// `object_store` 0.12 makes a single `PutObject` conditional
/// (`PutMode::Create`), but completes multipart uploads unconditionally, so a
/// large object could replace an existing one. This store never overwrites,
/// so every completion it sends asks the server to refuse (412) if the key is
/// taken. The header is not part of the SigV4 signature, which S3 permits for
/// standard headers.
#[derive(Debug)]
struct WriteOnce {
    inner: HttpClient,
}

#[async_trait]
impl HttpService for WriteOnce {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        if is_complete_multipart(&req) {
            let headers = req.headers_mut();
            headers.insert("if-none-match", HeaderValue::from_static("*"));
            if !headers.contains_key("content-type") {
                headers.insert("content-type", HeaderValue::from_static("application/xml"));
            }
        }
        self.inner.execute(req).await
    }
}

/// `POST /key?uploadId=...`: CompleteMultipartUpload. (`?uploads` creates an
/// upload, `?delete` deletes objects in bulk.)
fn is_complete_multipart(req: &HttpRequest) -> bool {
    req.method() == "POST"
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.starts_with("uploadId=")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let (b, p) = parse_spec("s3://bucket/a/b/").unwrap().unwrap();
        assert_eq!((b.as_str(), p.as_str()), ("bucket", "a/b"));
        let (b, p) = parse_spec("s3://bucket").unwrap().unwrap();
        assert_eq!((b.as_str(), p.as_str()), ("bucket", ""));
        assert!(parse_spec("/tmp/x").is_none());
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Bucket",
            "s3://bucket/../x",
            "s3://bucket/a?x=1",
        ] {
            assert!(
                matches!(parse_spec(bad), Some(Err(Error::BadSpec { .. }))),
                "{bad}"
            );
        }
        let err = parse_spec("s3://AKIA:sekrit@bucket/p")
            .unwrap()
            .unwrap_err();
        assert!(!err.to_string().contains("sekrit"), "{err}");
    }

    #[test]
    fn endpoints_lose_credentials() {
        assert_eq!(
            redact_endpoint("http://user:pw@127.0.0.1:9000/?x=1"),
            "http://127.0.0.1:9000"
        );
        assert_eq!(
            redact_endpoint("https://s3.example.com"),
            "https://s3.example.com"
        );
    }

    #[test]
    fn completion_is_recognised() {
        let req = |method: &str, uri: &str| {
            let mut r = HttpRequest::new(object_store::client::HttpRequestBody::empty());
            *r.method_mut() = method.parse().unwrap();
            *r.uri_mut() = uri.parse().unwrap();
            r
        };
        assert!(is_complete_multipart(&req(
            "POST",
            "http://h/b/k?uploadId=abc"
        )));
        assert!(!is_complete_multipart(&req("POST", "http://h/b/k?uploads")));
        assert!(!is_complete_multipart(&req(
            "PUT",
            "http://h/b/k?partNumber=1&uploadId=abc"
        )));
        assert!(!is_complete_multipart(&req("POST", "http://h/b?delete")));
    }
}
