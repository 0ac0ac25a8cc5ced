//! Building an S3 store on `object_store`'s `AmazonS3`, and the small HTTP
//! layer that makes multipart uploads write-once.

use std::time::Duration;

use async_trait::async_trait;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpService,
    ReqwestConnector,
};
use object_store::{ClientConfigKey, ClientOptions, HeaderValue};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{RetryPolicy, S3Config};
use crate::error::{BadAnswer, Error, Result};
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
    builder = builder.with_http_connector(CheckedConnector {
        write_once: conditional,
    });

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

/// Connects `object_store`'s usual reqwest client, wrapped in [`Checked`].
#[derive(Debug)]
struct CheckedConnector {
    write_once: bool,
}

impl HttpConnector for CheckedConnector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = ReqwestConnector::default().connect(options)?;
        Ok(HttpClient::new(Checked {
            inner,
            write_once: self.write_once,
        }))
    }
}

/// The store's own layer under `object_store`'s S3 client, for what that
/// client does not do itself:
///
/// - With `write_once`, it adds `If-None-Match: *` to every
///   `CompleteMultipartUpload` request. `object_store` 0.12 makes a single
///   `PutObject` conditional (`PutMode::Create`), but completes multipart
///   uploads unconditionally, so a large object could replace an existing
///   one. This store never overwrites, so every completion it sends asks the
///   server to refuse (412) if the key is taken. The header is not part of
///   the SigV4 signature, which S3 permits for standard headers.
/// - It refuses a `ListObjectsV2` answer that says it is truncated but gives
///   no continuation token. `object_store` would end the listing there, and
///   the store would report a partial listing as the whole one (a collector
///   could then take live objects for garbage).
/// - It refuses a `200 OK` to `CompleteMultipartUpload` whose body is an S3
///   error document (S3 sends its status line before the completion is
///   done, so a failure comes as a 200), naming the error's code. The
///   `InternalError` and `SlowDown` ones are left to `object_store`, which
///   retries them.
///
/// A refused answer is a [`BadAnswer`], a permanent error: asking again
/// gets the same answer.
#[derive(Debug)]
struct Checked {
    inner: HttpClient,
    write_once: bool,
}

#[async_trait]
impl HttpService for Checked {
    async fn call(&self, mut req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let complete = is_complete_multipart(&req);
        let list = is_list(&req);
        if complete && self.write_once {
            let headers = req.headers_mut();
            headers.insert("if-none-match", HeaderValue::from_static("*"));
            if !headers.contains_key("content-type") {
                headers.insert("content-type", HeaderValue::from_static("application/xml"));
            }
        }
        let response = self.inner.execute(req).await?;
        if !(complete || list) || !response.status().is_success() {
            return Ok(response);
        }
        let (parts, body) = response.into_parts();
        let body = body.bytes().await?;
        let text = String::from_utf8_lossy(&body);
        let refused = if list {
            truncated_without_token(&text)
        } else {
            error_in_ok_answer(&text)
        };
        if let Some(reason) = refused {
            return Err(HttpError::new(HttpErrorKind::Decode, BadAnswer(reason)));
        }
        Ok(HttpResponse::from_parts(parts, body.into()))
    }
}

/// Why a ListObjectsV2 answer cannot be used: it says more keys follow but
/// not where to fetch them.
fn truncated_without_token(xml: &str) -> Option<String> {
    let truncated = element(xml, "IsTruncated").is_some_and(|v| v.trim() == "true");
    let token = element(xml, "NextContinuationToken").is_some_and(|v| !v.trim().is_empty());
    (truncated && !token).then(|| {
        "the server answered a listing marked truncated (IsTruncated) without a \
         NextContinuationToken, so the rest of it cannot be fetched; a partial \
         listing is not taken for the whole"
            .to_string()
    })
}

/// Why a `200 OK` to CompleteMultipartUpload is a failure: its body is an
/// S3 error document (other than the retried `InternalError` and
/// `SlowDown`).
fn error_in_ok_answer(xml: &str) -> Option<String> {
    let body = xml.trim_start();
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, r)| r).trim_start(),
        None => body,
    };
    if !body.starts_with("<Error>") {
        return None;
    }
    let code = element(body, "Code").unwrap_or("").trim();
    if code == "InternalError" || code == "SlowDown" {
        return None;
    }
    let message = element(body, "Message").unwrap_or("").trim();
    Some(format!(
        "the server answered 200 OK to the completion of the multipart upload, \
         with an error document: {code}: {message}"
    ))
}

/// The text of the first `<name>...</name>` element in `xml`.
fn element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..start + len])
}

/// `GET /?list-type=2...`: ListObjectsV2.
fn is_list(req: &HttpRequest) -> bool {
    req.method() == "GET"
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "list-type=2"))
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
        assert!(is_list(&req("GET", "http://h/b?list-type=2&prefix=p")));
        assert!(!is_list(&req("GET", "http://h/b/k")));
        assert!(!is_list(&req("PUT", "http://h/b?list-type=2")));
    }

    #[test]
    fn listings_truncated_without_a_token_are_refused() {
        let listing =
            |inner: &str| format!("<ListBucketResult><Name>b</Name>{inner}</ListBucketResult>");
        let token = "<NextContinuationToken>t1</NextContinuationToken>";
        assert!(truncated_without_token(&listing("<IsTruncated>true</IsTruncated>")).is_some());
        assert!(
            truncated_without_token(&listing(
                "<IsTruncated>true</IsTruncated><NextContinuationToken> </NextContinuationToken>"
            ))
            .is_some()
        );
        let paged = listing(&format!("<IsTruncated>true</IsTruncated>{token}"));
        assert!(truncated_without_token(&paged).is_none());
        assert!(truncated_without_token(&listing("<IsTruncated>false</IsTruncated>")).is_none());
        assert!(truncated_without_token(&listing("")).is_none());
    }

    #[test]
    fn error_documents_in_ok_answers_are_refused() {
        let doc = |code: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n  <Error><Code>{code}</Code>\
                 <Message>No.</Message></Error>"
            )
        };
        let reason = error_in_ok_answer(&doc("AccessDenied")).unwrap();
        assert!(reason.contains("AccessDenied: No."), "{reason}");
        // Retried by object_store itself.
        assert!(error_in_ok_answer(&doc("InternalError")).is_none());
        assert!(error_in_ok_answer(&doc("SlowDown")).is_none());
        let done = "<?xml version=\"1.0\"?><CompleteMultipartUploadResult><Key>Error</Key>\
                    <ETag>\"e\"</ETag></CompleteMultipartUploadResult>";
        assert!(error_in_ok_answer(done).is_none());
    }
}
