//! What the fault proxy says in the server's place (S3 error documents, as
//! S3 words them), and how it reads and rewrites the server's own answers.

use std::io::{self, BufReader, Read};
use std::net::TcpStream;

use super::{Fault, Request, invalid, read_chunked};

/// The ETag [`Fault::WrongETag`] puts in an answer: well formed, but not the
/// MD5 of anything the client sent.
pub(super) const WRONG_ETAG: &str = "\"0123456789abcdef0123456789abcdef\"";

/// The server time a [`Fault::RequestTimeTooSkewed`] answer claims.
const SKEWED_SERVER_TIME: &str = "2001-02-03T04:05:06Z";

/// The whole answer (head and body) the proxy sends in the server's place
/// for `fault`, or `None` for faults that answer nothing themselves.
pub(super) fn instead_of_server(fault: &Fault, request: &Request) -> Option<Vec<u8>> {
    let (status, code, message, details) = match fault {
        Fault::SlowDown => (
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
            String::new(),
        ),
        Fault::InternalError => (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
            String::new(),
        ),
        Fault::TooManyRequests => (
            "429 Too Many Requests",
            "TooManyRequests",
            "Please reduce your request rate.",
            String::new(),
        ),
        Fault::OkWithError(code) => ("200 OK", *code, message_for(code), String::new()),
        Fault::RequestTimeTooSkewed => (
            "403 Forbidden",
            "RequestTimeTooSkewed",
            "The difference between the request time and the current time is too large.",
            format!(
                "<RequestTime>{}</RequestTime><ServerTime>{SKEWED_SERVER_TIME}</ServerTime>\
                 <MaxAllowedSkewMilliseconds>900000</MaxAllowedSkewMilliseconds>",
                escape(request.header("x-amz-date").unwrap_or(""))
            ),
        ),
        // S3 answers an expired session token with 400 and, like this, quotes
        // the token back.
        Fault::ExpiredToken => (
            "400 Bad Request",
            "ExpiredToken",
            "The provided token has expired.",
            format!(
                "<Token-0>{}</Token-0>",
                escape(request.header("x-amz-security-token").unwrap_or(""))
            ),
        ),
        Fault::InvalidAccessKeyId => (
            "403 Forbidden",
            "InvalidAccessKeyId",
            "The AWS Access Key Id you provided does not exist in our records.",
            format!(
                "<AWSAccessKeyId>{}</AWSAccessKeyId>",
                escape(&access_key_id(request))
            ),
        ),
        Fault::SignatureDoesNotMatch => (
            "403 Forbidden",
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. \
             Check your key and signing method.",
            format!(
                "<AWSAccessKeyId>{}</AWSAccessKeyId><SignatureProvided>{}</SignatureProvided>",
                escape(&access_key_id(request)),
                escape(&auth_field(request, "Signature"))
            ),
        ),
        Fault::NoSuchBucket => (
            "404 Not Found",
            "NoSuchBucket",
            "The specified bucket does not exist",
            format!("<BucketName>{}</BucketName>", escape(&bucket_of(request))),
        ),
        Fault::NoSuchUpload => (
            "404 Not Found",
            "NoSuchUpload",
            "The specified upload does not exist. The upload ID may be invalid, or the upload \
             may have been aborted or completed.",
            format!("<UploadId>{}</UploadId>", escape(&upload_id_of(request))),
        ),
        _ => return None,
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message>{details}<RequestId>cbfs-faulty-proxy</RequestId></Error>"
    );
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if request.method != "HEAD" {
        response.push_str(&body);
    }
    Some(response.into_bytes())
}

fn message_for(code: &str) -> &'static str {
    match code {
        "InternalError" => "We encountered an internal error. Please try again.",
        "SlowDown" => "Please reduce your request rate.",
        "AccessDenied" => "Access Denied",
        "InvalidPart" => {
            "One or more of the specified parts could not be found. The part may not have \
             been uploaded, or the specified entity tag may not match the part's entity tag."
        }
        _ => "The request failed.",
    }
}

/// `Credential=ID/...` of a SigV4 `Authorization` header.
fn access_key_id(request: &Request) -> String {
    let credential = auth_field(request, "Credential");
    credential.split('/').next().unwrap_or("").to_string()
}

/// One `NAME=value` field of a SigV4 `Authorization` header.
fn auth_field(request: &Request, name: &str) -> String {
    let header = request.header("authorization").unwrap_or("");
    let fields = header.split_once(' ').map_or("", |(_, rest)| rest);
    fields
        .split(',')
        .filter_map(|f| f.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default()
}

/// The bucket of a path-style request target (`/BUCKET/key?query`).
fn bucket_of(request: &Request) -> String {
    let path = request.target.split('?').next().unwrap_or("");
    path.trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_string()
}

/// The `uploadId` query parameter of a request target.
fn upload_id_of(request: &Request) -> String {
    let query = request.target.split_once('?').map_or("", |(_, q)| q);
    query
        .split('&')
        .find_map(|p| p.strip_prefix("uploadId="))
        .unwrap_or("")
        .to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An answer from upstream, read whole: its status line, headers and body
/// (with any chunked framing removed).
pub(super) struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    /// The body, empty for answers that have none.
    pub(super) body: Vec<u8>,
    /// Whether the answer has a body at all: not for HEAD, 1xx, 204 or 304,
    /// whose `Content-Length` (if any) is passed on untouched.
    has_body: bool,
}

impl Answer {
    /// Reads the rest of an answer whose head is `head`, to a request with
    /// `method`. Upstream was asked to close after answering, so an answer
    /// without length or chunked framing ends where the connection does.
    pub(super) fn read(
        head: &[u8],
        reader: &mut BufReader<TcpStream>,
        method: &str,
    ) -> io::Result<Answer> {
        let text = String::from_utf8_lossy(head);
        let mut lines = text.split("\r\n").flat_map(|l| l.split('\n'));
        let status_line = lines.next().unwrap_or("").to_string();
        let headers = lines
            .filter(|l| !l.is_empty())
            .map(|line| {
                line.split_once(':')
                    .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                    .ok_or_else(|| invalid("malformed response header"))
            })
            .collect::<io::Result<Vec<_>>>()?;
        let mut answer = Answer {
            status_line,
            headers,
            body: Vec::new(),
            has_body: false,
        };
        let status = answer.status();
        answer.has_body =
            method != "HEAD" && !(100..200).contains(&status) && status != 204 && status != 304;
        if !answer.has_body {
            return Ok(answer);
        }
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            answer.body = read_chunked(reader, false)?;
        } else if let Some(length) = answer.header("content-length") {
            let length = length
                .parse::<usize>()
                .map_err(|_| invalid("bad Content-Length in answer"))?;
            answer.body = vec![0; length];
            reader.read_exact(&mut answer.body)?;
        } else {
            reader.read_to_end(&mut answer.body)?;
        }
        Ok(answer)
    }

    /// The status code, 0 if the status line is malformed.
    pub(super) fn status(&self) -> u16 {
        self.status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets header `name` (replacing every header of that name) to `value`.
    pub(super) fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    /// Rewrites a ListObjectsV2 answer to say that more keys follow
    /// (`IsTruncated` true) while giving no `NextContinuationToken` to fetch
    /// them with. Other answers are left alone.
    pub(super) fn truncate_listing(&mut self) {
        let Ok(text) = std::str::from_utf8(&self.body) else {
            return;
        };
        if !text.contains("<ListBucketResult") {
            return;
        }
        let mut text = cut_element(text, "NextContinuationToken");
        text = cut_element(&text, "IsTruncated");
        // The flag goes first inside the result element.
        if let Some(start) = text.find("<ListBucketResult")
            && let Some(end) = text[start..].find('>')
        {
            text.insert_str(start + end + 1, "<IsTruncated>true</IsTruncated>");
        }
        self.body = text.into_bytes();
    }

    /// The head to send to the client: `Connection: close`, and for an
    /// answer with a body, its `Content-Length` (no chunked framing: the
    /// body goes as one piece).
    pub(super) fn head(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.status_line);
        for (name, value) in &self.headers {
            let hop = ["connection", "keep-alive"];
            let framing = ["content-length", "transfer-encoding"];
            if hop.iter().any(|h| name.eq_ignore_ascii_case(h))
                || (self.has_body && framing.iter().any(|h| name.eq_ignore_ascii_case(h)))
            {
                continue;
            }
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        if self.has_body {
            out.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// `text` without the element `<name>...</name>` (its first occurrence).
fn cut_element(text: &str, name: &str) -> String {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    match text.find(&open) {
        Some(start) => match text[start..].find(&close) {
            Some(len) => format!("{}{}", &text[..start], &text[start + len + close.len()..]),
            None => text.to_string(),
        },
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_are_truncated_without_a_token() {
        let mut answer = Answer {
            status_line: "HTTP/1.1 200 OK".into(),
            headers: vec![("Content-Length".into(), "1".into())],
            body: b"<?xml version=\"1.0\"?><ListBucketResult xmlns=\"x\"><Name>b</Name>\
                    <IsTruncated>false</IsTruncated><Contents><Key>k</Key></Contents>\
                    <NextContinuationToken>abc</NextContinuationToken></ListBucketResult>"
                .to_vec(),
            has_body: true,
        };
        answer.truncate_listing();
        let text = String::from_utf8(answer.body.clone()).unwrap();
        assert_eq!(
            text,
            "<?xml version=\"1.0\"?><ListBucketResult xmlns=\"x\"><IsTruncated>true</IsTruncated>\
             <Name>b</Name><Contents><Key>k</Key></Contents></ListBucketResult>"
        );
        let head = String::from_utf8(answer.head()).unwrap();
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                text.len()
            )
        );
    }

    #[test]
    fn other_bodies_are_not_listings() {
        let mut answer = Answer {
            status_line: "HTTP/1.1 200 OK".into(),
            headers: Vec::new(),
            body: b"<IsTruncated>false</IsTruncated>".to_vec(),
            has_body: true,
        };
        answer.truncate_listing();
        assert_eq!(answer.body, b"<IsTruncated>false</IsTruncated>");
    }
}
