//! A fault-injecting HTTP/1.1 proxy for retry tests.
//!
//! [`FaultyProxy`] listens on 127.0.0.1 and forwards each request to an
//! upstream server, except that some requests get the faults of a
//! [`FaultPlan`]: the first requests in order of arrival, and requests that
//! match a [`RequestMatch`] (a completion of a multipart upload, a listing,
//! ...). It understands just enough HTTP/1.1 to read a whole request (head,
//! then a `Content-Length` or chunked body) and to find the end of a response
//! head. Every connection carries one request: the proxy asks upstream to
//! close after answering and tells the client the same (`Connection: close`),
//! so it never has to find where a response ends.
//!
//! Every fault is something a real S3 server or network does on the wire:
//! error answers worded as S3 words them (throttling, clock skew, expired or
//! unknown credentials, a missing bucket, a `200 OK` carrying an error
//! document), connections closed or reset before or in the middle of an
//! answer, bodies shorter than their `Content-Length`, silence past the
//! client's timeout, and answers rewritten on their way (a wrong part ETag, a
//! listing truncated without a continuation token).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

mod answer;

use answer::{Answer, WRONG_ETAG};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;

/// How long a connection reset in the middle of an answer waits after the
/// partial answer, so that it reaches the client before the reset (which
/// drops whatever is still queued for sending).
const RESET_GRACE: Duration = Duration::from_millis(50);

/// What the proxy does to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Forward the request and relay the answer.
    Pass,
    /// Answer `503 Slow Down` with an S3 `SlowDown` error body, without
    /// forwarding the request.
    SlowDown,
    /// Answer `500 Internal Server Error` with an S3 `InternalError` body,
    /// without forwarding the request.
    InternalError,
    /// Read the whole request, then close the connection without answering.
    /// Upstream never sees the request.
    DropBeforeResponse,
    /// Forward the request, relay the first half of upstream's answer (head
    /// and body together), then close the connection. Upstream has carried
    /// out the request: a PUT took effect even though the client saw it fail.
    DropMidResponse,
    /// Wait this long, then forward the request as [`Fault::Pass`] does: for
    /// client timeouts.
    Delay(Duration),
    /// Answer `429 Too Many Requests` with an S3 `TooManyRequests` error
    /// body (how S3-compatible servers throttle), without forwarding.
    TooManyRequests,
    /// Read the whole request, then reset the connection (`SO_LINGER` 0 and
    /// close: a TCP RST) before any answer. Upstream never sees the request.
    ResetBeforeResponse,
    /// Forward the request, relay upstream's answer head and the first half
    /// of its body, then reset the connection. Upstream has carried out the
    /// request.
    ResetMidResponse,
    /// Forward the request, relay upstream's answer head (its
    /// `Content-Length` the whole body's) and the first half of the body,
    /// then close the connection normally: a body shorter than its
    /// `Content-Length`. (An empty body cannot be cut.)
    ShortBody,
    /// Read the whole request, stay silent this long (past the client's
    /// timeout), then close without answering. Upstream never sees the
    /// request.
    Stall(Duration),
    /// Answer `200 OK` whose body is an S3 error document with this code
    /// (such as `InternalError`), without forwarding: what S3 does when a
    /// `CompleteMultipartUpload` fails after it has sent its status line.
    OkWithError(&'static str),
    /// Answer `403 Forbidden`, `RequestTimeTooSkewed`, quoting the request's
    /// `x-amz-date`, without forwarding.
    RequestTimeTooSkewed,
    /// Answer `400 Bad Request`, `ExpiredToken`, quoting the request's
    /// session token back as S3 does, without forwarding.
    ExpiredToken,
    /// Answer `403 Forbidden`, `InvalidAccessKeyId`, without forwarding.
    InvalidAccessKeyId,
    /// Answer `403 Forbidden`, `SignatureDoesNotMatch` (wrong secret key),
    /// without forwarding.
    SignatureDoesNotMatch,
    /// Answer `404 Not Found`, `NoSuchBucket`, without forwarding.
    NoSuchBucket,
    /// Answer `404 Not Found`, `NoSuchUpload`, without forwarding: what S3
    /// says to a part or a completion of a multipart upload that has been
    /// completed or aborted.
    NoSuchUpload,
    /// Forward the request and relay the answer with its `ETag` header
    /// replaced by a well-formed but wrong one: an upload-part answer whose
    /// ETag the completion then quotes back.
    WrongETag,
    /// Forward the request and relay the answer; a ListObjectsV2 answer is
    /// rewritten to say `IsTruncated` true with no `NextContinuationToken`.
    TruncatedWithoutToken,
}

impl Fault {
    /// Whether the proxy answers (or fails) by itself, never forwarding the
    /// request upstream.
    fn skips_upstream(&self) -> bool {
        matches!(
            self,
            Fault::SlowDown
                | Fault::InternalError
                | Fault::DropBeforeResponse
                | Fault::TooManyRequests
                | Fault::ResetBeforeResponse
                | Fault::Stall(_)
                | Fault::OkWithError(_)
                | Fault::RequestTimeTooSkewed
                | Fault::ExpiredToken
                | Fault::InvalidAccessKeyId
                | Fault::SignatureDoesNotMatch
                | Fault::NoSuchBucket
                | Fault::NoSuchUpload
        )
    }
}

/// Which requests a fault of [`FaultPlan::on`] is for: a method and words
/// the request target must (or must not) contain. The target of a
/// path-style S3 request is `/BUCKET/KEY?QUERY`.
///
/// ```
/// use cbfs_tests::RequestMatch;
/// let parts = RequestMatch::upload_part();
/// assert!(parts.matches("PUT", "/b/k?partNumber=1&uploadId=x"));
/// assert!(!parts.matches("PUT", "/b/k"));
/// assert!(RequestMatch::put_object().matches("PUT", "/b/k"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestMatch {
    method: Option<String>,
    containing: Vec<String>,
    excluding: Vec<String>,
}

impl RequestMatch {
    /// Every request.
    pub fn any() -> RequestMatch {
        RequestMatch::default()
    }

    /// Requests with this method (`PUT`, `GET`, ...).
    pub fn method(method: &str) -> RequestMatch {
        RequestMatch {
            method: Some(method.to_ascii_uppercase()),
            ..RequestMatch::default()
        }
    }

    /// Only requests whose target contains `text`.
    pub fn containing(mut self, text: &str) -> RequestMatch {
        self.containing.push(text.to_string());
        self
    }

    /// Only requests whose target does not contain `text`.
    pub fn excluding(mut self, text: &str) -> RequestMatch {
        self.excluding.push(text.to_string());
        self
    }

    /// `PutObject`: a PUT that is not part of a multipart upload.
    pub fn put_object() -> RequestMatch {
        RequestMatch::method("PUT")
            .excluding("partNumber=")
            .excluding("uploadId=")
    }

    /// `GetObject`: a GET of an object (not a listing).
    pub fn get_object() -> RequestMatch {
        RequestMatch::method("GET").excluding("list-type=")
    }

    /// `HeadObject`.
    pub fn head_object() -> RequestMatch {
        RequestMatch::method("HEAD")
    }

    /// `ListObjectsV2`.
    pub fn list_objects() -> RequestMatch {
        RequestMatch::method("GET").containing("list-type=2")
    }

    /// `CreateMultipartUpload` (`POST ...?uploads`).
    pub fn create_multipart() -> RequestMatch {
        RequestMatch::method("POST").containing("?uploads")
    }

    /// `UploadPart` (`PUT ...?partNumber=N&uploadId=...`).
    pub fn upload_part() -> RequestMatch {
        RequestMatch::method("PUT").containing("partNumber=")
    }

    /// `CompleteMultipartUpload` (`POST ...?uploadId=...`).
    pub fn complete_multipart() -> RequestMatch {
        RequestMatch::method("POST").containing("uploadId=")
    }

    /// `AbortMultipartUpload` (`DELETE ...?uploadId=...`).
    pub fn abort_multipart() -> RequestMatch {
        RequestMatch::method("DELETE").containing("uploadId=")
    }

    /// Whether a request with `method` and `target` matches.
    pub fn matches(&self, method: &str, target: &str) -> bool {
        self.method
            .as_deref()
            .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.containing.iter().all(|t| target.contains(t.as_str()))
            && !self.excluding.iter().any(|t| target.contains(t.as_str()))
    }
}

/// The faults a [`FaultyProxy`] injects.
///
/// Two kinds, which can be mixed: faults for the first requests in order of
/// arrival ([`FaultPlan::then`], [`FaultPlan::first`]), and faults for the
/// next requests that match a [`RequestMatch`] ([`FaultPlan::on`]). A
/// request that matches a pending `on` fault gets the first such fault (each
/// is used once) and does not count toward the ordered ones. Everything else
/// is passed through.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    faults: Vec<Fault>,
    rules: Vec<(RequestMatch, Fault)>,
}

impl FaultPlan {
    /// A plan with no faults: everything is passed through.
    pub fn new() -> FaultPlan {
        FaultPlan::default()
    }

    /// The next request gets `fault`.
    pub fn then(mut self, fault: Fault) -> FaultPlan {
        self.faults.push(fault);
        self
    }

    /// The next `count` requests get `fault`.
    pub fn then_repeat(mut self, fault: Fault, count: usize) -> FaultPlan {
        self.faults.extend(std::iter::repeat_n(fault, count));
        self
    }

    /// The first `count` requests get `fault`, the rest pass.
    pub fn first(count: usize, fault: Fault) -> FaultPlan {
        FaultPlan::new().then_repeat(fault, count)
    }

    /// The next request that `matching` matches gets `fault` (after any
    /// earlier `on` faults for requests it matches).
    pub fn on(self, matching: RequestMatch, fault: Fault) -> FaultPlan {
        self.on_repeat(matching, fault, 1)
    }

    /// The next `count` requests that `matching` matches get `fault`.
    pub fn on_repeat(mut self, matching: RequestMatch, fault: Fault, count: usize) -> FaultPlan {
        self.rules
            .extend(std::iter::repeat_n((matching, fault), count));
        self
    }
}

/// One request the proxy has seen, and what it did to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SeenRequest {
    /// The method, such as `PUT`.
    pub method: String,
    /// The request target, such as `/bucket/key?uploads`.
    pub target: String,
    /// The fault applied.
    pub fault: Fault,
}

struct Shared {
    upstream: SocketAddr,
    plan: Vec<Fault>,
    /// The faults for matching requests still to be used, in order.
    rules: Mutex<Vec<(RequestMatch, Fault)>>,
    /// A fault for every request from now on, whatever the plan says.
    forced: Mutex<Option<Fault>>,
    next: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
    stopping: AtomicBool,
    /// Bytes of answers relayed from upstream to clients.
    relayed: std::sync::atomic::AtomicU64,
}

impl Shared {
    /// The fault for `request`: the forced one, else the first pending
    /// fault for requests it matches, else the next in order of arrival.
    fn choose(&self, request: &Request) -> Fault {
        let forced = lock(&self.forced).clone();
        if let Some(fault) = forced {
            self.next.fetch_add(1, Ordering::SeqCst);
            return fault;
        }
        {
            let mut rules = lock(&self.rules);
            let found = rules
                .iter()
                .position(|(m, _)| m.matches(&request.method, &request.target));
            if let Some(i) = found {
                return rules.remove(i).1;
            }
        }
        let index = self.next.fetch_add(1, Ordering::SeqCst);
        self.plan.get(index).cloned().unwrap_or(Fault::Pass)
    }
}

/// A TCP proxy on 127.0.0.1 that forwards HTTP/1.1 requests to `upstream`
/// and injects the faults of a [`FaultPlan`]. Dropping it stops accepting
/// connections; requests in flight finish on their own.
///
/// ```no_run
/// use cbfs_tests::{FaultPlan, Fault, FaultyProxy, RequestMatch, S3Server};
/// let s3 = S3Server::start();
/// let plan = FaultPlan::first(2, Fault::SlowDown)
///     .on(RequestMatch::complete_multipart(), Fault::OkWithError("InternalError"));
/// let proxy = FaultyProxy::start(s3.socket_addr(), plan);
/// let envs = s3.envs_with_endpoint(&proxy.endpoint());
/// // ... run a cbfs tool with `envs`; it must retry, then succeed ...
/// assert!(proxy.requests_seen() >= 3);
/// ```
pub struct FaultyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultyProxy {
    /// Starts the proxy on a free port of 127.0.0.1.
    pub fn start(upstream: SocketAddr, plan: FaultPlan) -> FaultyProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("FaultyProxy: cannot listen on 127.0.0.1: {e}"));
        let addr = listener.local_addr().expect("bound socket");
        let shared = Arc::new(Shared {
            upstream,
            plan: plan.faults,
            rules: Mutex::new(plan.rules),
            forced: Mutex::new(None),
            next: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            relayed: std::sync::atomic::AtomicU64::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("faulty-proxy-{}", addr.port()))
                .spawn(move || accept_loop(listener, shared))
                .expect("spawn proxy thread")
        };
        FaultyProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's address.
    pub fn socket_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's URL, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, every request gets `fault` (a store that is down:
    /// [`Fault::InternalError`] or [`Fault::DropBeforeResponse`]); `None`
    /// goes back to the plan (past its end: everything passes).
    pub fn force(&self, fault: Option<Fault>) {
        *lock(&self.shared.forced) = fault;
    }

    /// How many requests have arrived so far (faulted or not).
    pub fn requests_seen(&self) -> usize {
        lock(&self.shared.seen).len()
    }

    /// How many requests got a fault other than [`Fault::Pass`].
    pub fn faults_injected(&self) -> usize {
        lock(&self.shared.seen)
            .iter()
            .filter(|r| r.fault != Fault::Pass)
            .count()
    }

    /// How many faults for matching requests ([`FaultPlan::on`]) have not
    /// been used yet.
    pub fn faults_pending(&self) -> usize {
        lock(&self.shared.rules).len()
    }

    /// Bytes of upstream answers relayed to clients so far (heads and
    /// bodies): what the clients fetched through the proxy.
    pub fn bytes_relayed(&self) -> u64 {
        self.shared.relayed.load(Ordering::SeqCst)
    }

    /// The requests seen so far, in order of arrival.
    pub fn requests(&self) -> Vec<SeenRequest> {
        lock(&self.shared.seen).clone()
    }
}

impl Drop for FaultyProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor up so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

impl std::fmt::Debug for FaultyProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        let _ = thread::Builder::new()
            .name("faulty-proxy-conn".to_string())
            .spawn(move || {
                // A connection that breaks is what a fault proxy is for;
                // nothing to report.
                let _ = handle(stream, &shared);
            });
    }
}

/// A parsed request head plus the raw bytes to send upstream.
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn expects_continue(&self) -> bool {
        self.header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    }

    /// The head to send upstream: hop-by-hop headers replaced, one request
    /// per connection.
    fn upstream_head(&self) -> Vec<u8> {
        let mut head = format!("{} {} {}\r\n", self.method, self.target, self.version);
        for (name, value) in &self.headers {
            if ["connection", "keep-alive", "expect", "proxy-connection"]
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h))
            {
                continue;
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        head.into_bytes()
    }
}

fn handle(client: TcpStream, shared: &Shared) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    let Some(request) = read_head(&mut reader)? else {
        return Ok(()); // connected and closed without a request
    };

    let fault = shared.choose(&request);
    lock(&shared.seen).push(SeenRequest {
        method: request.method.clone(),
        target: request.target.clone(),
        fault: fault.clone(),
    });

    if fault.skips_upstream() && request.expects_continue() {
        // The client waits for "100 Continue" before sending its body; a
        // final answer now tells it not to send the body at all.
        drop(reader);
        return act_instead_of_server(client, &fault, &request);
    }
    if request.expects_continue() {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = read_body(&mut reader, &request)?;
    drop(reader);
    if fault.skips_upstream() {
        return act_instead_of_server(client, &fault, &request);
    }

    if let Fault::Delay(pause) = fault {
        thread::sleep(pause);
    }
    let Some((head, mut upstream)) = send_upstream(&mut client, &request, &body, shared)? else {
        return close(client); // upstream unreachable: 502 sent
    };
    match fault {
        Fault::DropMidResponse => {
            let mut answer = rewrite_response_head(&head);
            upstream.read_to_end(&mut answer)?;
            let half = (answer.len() / 2).max(1);
            client.write_all(&answer[..half])?;
            shared.relayed.fetch_add(half as u64, Ordering::SeqCst);
            client.flush()?;
            close(client)
        }
        Fault::ResetMidResponse
        | Fault::ShortBody
        | Fault::WrongETag
        | Fault::TruncatedWithoutToken => {
            let mut answer = Answer::read(&head, &mut upstream, &request.method)?;
            match fault {
                Fault::WrongETag => answer.set_header("ETag", WRONG_ETAG),
                Fault::TruncatedWithoutToken => answer.truncate_listing(),
                _ => {}
            }
            let head = answer.head();
            let cut = matches!(fault, Fault::ResetMidResponse | Fault::ShortBody);
            let body = if cut {
                &answer.body[..answer.body.len() / 2]
            } else {
                &answer.body[..]
            };
            client.write_all(&head)?;
            client.write_all(body)?;
            client.flush()?;
            shared
                .relayed
                .fetch_add((head.len() + body.len()) as u64, Ordering::SeqCst);
            if fault == Fault::ResetMidResponse {
                thread::sleep(RESET_GRACE);
                reset(client)
            } else {
                close(client)
            }
        }
        // Pass, Delay (already waited).
        _ => {
            let head = rewrite_response_head(&head);
            client.write_all(&head)?;
            let copied = io::copy(&mut upstream, &mut client)?;
            shared
                .relayed
                .fetch_add(head.len() as u64 + copied, Ordering::SeqCst);
            client.flush()?;
            close(client)
        }
    }
}

/// Carries out a fault that never reaches upstream.
fn act_instead_of_server(
    mut client: TcpStream,
    fault: &Fault,
    request: &Request,
) -> io::Result<()> {
    match fault {
        Fault::DropBeforeResponse => close(client),
        Fault::ResetBeforeResponse => reset(client),
        Fault::Stall(pause) => {
            thread::sleep(*pause);
            close(client)
        }
        _ => {
            if let Some(answer) = answer::instead_of_server(fault, request) {
                client.write_all(&answer)?;
                client.flush()?;
            }
            close(client)
        }
    }
}

fn close(client: TcpStream) -> io::Result<()> {
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

/// Closes the connection with a TCP reset: `SO_LINGER` 0, then close (the
/// caller holds no other handle on the socket).
fn reset(client: TcpStream) -> io::Result<()> {
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO))?;
    drop(client);
    Ok(())
}

/// Sends the request upstream and returns the answer's head as upstream
/// sent it, and a reader on the rest. If upstream cannot be reached, the
/// client gets a `502 Bad Gateway` and the result is `None`.
fn send_upstream(
    client: &mut TcpStream,
    request: &Request,
    body: &[u8],
    shared: &Shared,
) -> io::Result<Option<(Vec<u8>, BufReader<TcpStream>)>> {
    let upstream = shared.upstream;
    let mut server = match TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) {
        Ok(server) => server,
        Err(e) => {
            let message = format!("FaultyProxy: upstream {upstream} unreachable: {e}");
            let response = format!(
                "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{message}",
                message.len()
            );
            client.write_all(response.as_bytes())?;
            return Ok(None);
        }
    };
    server.set_read_timeout(Some(IO_TIMEOUT))?;
    server.set_write_timeout(Some(IO_TIMEOUT))?;
    server.write_all(&request.upstream_head())?;
    server.write_all(body)?;
    server.flush()?;

    let mut upstream_reader = BufReader::new(server);
    let head = read_response_head(&mut upstream_reader)?;
    Ok(Some((head, upstream_reader)))
}

/// Reads a request head. `None` if the connection closed before any byte.
fn read_head(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut lines = Vec::new();
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request head cut short",
            ));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue; // stray CRLF between requests is allowed
            }
            break;
        }
        lines.push(line);
    }
    let mut parts = lines[0].split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid("malformed request line"));
    };
    let headers = lines[1..]
        .iter()
        .map(|line| {
            line.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| invalid("malformed header"))
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
    }))
}

/// Reads the request body as it came: chunked bodies keep their framing.
fn read_body(reader: &mut BufReader<TcpStream>, request: &Request) -> io::Result<Vec<u8>> {
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        return read_chunked(reader, true);
    }
    let length = match request.header("content-length") {
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| invalid("bad Content-Length"))?,
        None => 0,
    };
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(body)
}

/// Reads a chunked body: as it came, framing and all (to forward it), or
/// with `keep_framing` false, just its data.
fn read_chunked(reader: &mut BufReader<TcpStream>, keep_framing: bool) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            ));
        }
        if keep_framing {
            out.extend_from_slice(size_line.as_bytes());
        }
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size line"))?;
        if size == 0 {
            // Trailers, up to an empty line (or the end).
            loop {
                let mut line = String::new();
                let n = reader.read_line(&mut line)?;
                if keep_framing {
                    out.extend_from_slice(line.as_bytes());
                }
                if n == 0 || line.trim().is_empty() {
                    return Ok(out);
                }
            }
        }
        let start = out.len();
        out.resize(start + size, 0);
        reader.read_exact(&mut out[start..])?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf)?;
        if keep_framing {
            out.extend_from_slice(&crlf);
        }
    }
}

fn read_response_head(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "upstream closed before answering",
            ));
        }
        if head.len() > MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
    }
}

/// The response head with `Connection: close` in place of any connection
/// management headers.
fn rewrite_response_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(text.len() + 20);
    for line in text.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.is_empty() {
            continue;
        }
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-shot upstream that answers every request with `200 OK` and the
    /// request's body, keeping the connection open (HTTP/1.1 keep-alive).
    fn echo_upstream() -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    while let Ok(Some(request)) = read_head(&mut reader) {
                        let body = read_body(&mut reader, &request).unwrap();
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\
                             ETag: \"right\"\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        stream.write_all(reply.as_bytes()).unwrap();
                        stream.write_all(&body).unwrap();
                        let close = request
                            .header("connection")
                            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
                        if close {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    /// An upstream that answers every request with `answer`, then closes.
    fn fixed_upstream(answer: &'static [u8]) -> SocketAddr {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                if let Ok(Some(request)) = read_head(&mut reader) {
                    let _ = read_body(&mut reader, &request);
                    let _ = stream.write_all(answer);
                }
            }
        });
        addr
    }

    fn exchange(proxy: &FaultyProxy, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(proxy.socket_addr())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer)
    }

    fn text(answer: io::Result<Vec<u8>>) -> String {
        String::from_utf8(answer.unwrap()).unwrap()
    }

    const PUT: &[u8] = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n\
                         0123456789012345678901234567890123456789";

    #[test]
    fn plan_is_applied_in_order_then_passes() {
        let plan = FaultPlan::new()
            .then(Fault::SlowDown)
            .then(Fault::InternalError)
            .then(Fault::DropBeforeResponse)
            .then(Fault::DropMidResponse);
        let proxy = FaultyProxy::start(echo_upstream(), plan);

        let a = text(exchange(&proxy, PUT));
        assert!(a.starts_with("HTTP/1.1 503 Slow Down\r\n"), "{a}");
        assert!(a.contains("<Code>SlowDown</Code>"));
        let b = text(exchange(&proxy, PUT));
        assert!(
            b.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{b}"
        );
        let c = exchange(&proxy, PUT).unwrap();
        assert!(c.is_empty(), "dropped connection answered {c:?}");
        let full = b"HTTP/1.1 200 OK\r\nETag: \"right\"\r\nContent-Length: 40\r\n\
                     Connection: close\r\n\r\n0123456789012345678901234567890123456789";
        let d = exchange(&proxy, PUT).unwrap();
        assert_eq!(d, &full[..full.len() / 2]);
        let e = exchange(&proxy, PUT).unwrap();
        assert_eq!(e, full, "{}", String::from_utf8_lossy(&e));

        assert_eq!(proxy.requests_seen(), 5);
        assert_eq!(proxy.faults_injected(), 4);
        let seen = proxy.requests();
        assert_eq!(seen[0].method, "PUT");
        assert_eq!(seen[0].target, "/b/k");
        assert_eq!(seen[4].fault, Fault::Pass);
    }

    #[test]
    fn chunked_bodies_and_expect_continue_are_handled() {
        let proxy = FaultyProxy::start(
            echo_upstream(),
            FaultPlan::first(1, Fault::SlowDown).then(Fault::Delay(Duration::from_millis(50))),
        );
        // A faulted request with Expect: the answer comes before the body.
        let mut stream = TcpStream::connect(proxy.socket_addr()).unwrap();
        stream
            .write_all(b"PUT /k HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 503 "));

        // A chunked body is forwarded with its framing; the echo upstream
        // gets the chunked request and sends back what it parsed.
        let request = b"POST /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n";
        let answer = text(exchange(&proxy, request));
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"));
        assert_eq!(proxy.requests_seen(), 2);
    }

    #[test]
    fn chunked_answers_are_cut_by_their_data() {
        let upstream = fixed_upstream(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: \"e\"\r\n\r\n\
              4\r\nabcd\r\n4;x=y\r\nefgh\r\n0\r\nTrailer: t\r\n\r\n",
        );
        let proxy = FaultyProxy::start(upstream, FaultPlan::first(2, Fault::ShortBody));
        let get = b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n";
        let short = text(exchange(&proxy, get));
        assert_eq!(
            short,
            "HTTP/1.1 200 OK\r\nETag: \"e\"\r\nContent-Length: 8\r\nConnection: close\r\n\r\nabcd"
        );
        // HEAD: no body, and the head passes as it came.
        let head = text(exchange(&proxy, b"HEAD /b/k HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }

    #[test]
    fn unreachable_upstream_gives_502() {
        let port = crate::free_port();
        let proxy = FaultyProxy::start(crate::net::loopback(port), FaultPlan::new());
        let answer = exchange(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
    }

    #[test]
    fn matching_faults_go_to_matching_requests() {
        let plan = FaultPlan::first(1, Fault::InternalError)
            .on(RequestMatch::complete_multipart(), Fault::TooManyRequests)
            .on(RequestMatch::complete_multipart(), Fault::NoSuchBucket);
        let proxy = FaultyProxy::start(echo_upstream(), plan);
        let complete = b"POST /b/k?uploadId=u1 HTTP/1.1\r\nHost: x\r\n\r\n";

        // The first completion takes the first matching fault, and does not
        // use up the ordered one; the next request in order gets that.
        let a = text(exchange(&proxy, complete));
        assert!(a.starts_with("HTTP/1.1 429 Too Many Requests\r\n"), "{a}");
        assert!(a.contains("<Code>TooManyRequests</Code>"));
        let b = text(exchange(&proxy, PUT));
        assert!(b.starts_with("HTTP/1.1 500 "), "{b}");
        let c = text(exchange(&proxy, PUT));
        assert!(c.starts_with("HTTP/1.1 200 OK\r\n"), "{c}");
        assert_eq!(proxy.faults_pending(), 1);
        let d = text(exchange(&proxy, complete));
        assert!(d.starts_with("HTTP/1.1 404 Not Found\r\n"), "{d}");
        assert!(d.contains("<BucketName>b</BucketName>"), "{d}");
        let e = text(exchange(&proxy, complete));
        assert!(e.starts_with("HTTP/1.1 200 OK\r\n"), "{e}");
        assert_eq!(proxy.faults_pending(), 0);
        assert_eq!(proxy.faults_injected(), 3);

        let m = RequestMatch::method("get").containing("list-type=2");
        assert!(m.matches("GET", "/b?list-type=2&prefix=x"));
        assert!(!m.matches("PUT", "/b?list-type=2"));
        assert!(RequestMatch::any().matches("DELETE", "/"));
        assert!(RequestMatch::create_multipart().matches("POST", "/b/k?uploads"));
        assert!(!RequestMatch::create_multipart().matches("POST", "/b/k?uploadId=1"));
        assert!(RequestMatch::get_object().matches("GET", "/b/k"));
        assert!(!RequestMatch::get_object().matches("GET", "/b?list-type=2"));
        assert!(RequestMatch::abort_multipart().matches("DELETE", "/b/k?uploadId=1"));
        assert!(RequestMatch::head_object().matches("HEAD", "/b/k"));
    }

    #[test]
    fn s3_error_answers_quote_the_request() {
        let plan = FaultPlan::new()
            .then(Fault::RequestTimeTooSkewed)
            .then(Fault::ExpiredToken)
            .then(Fault::InvalidAccessKeyId)
            .then(Fault::SignatureDoesNotMatch)
            .then(Fault::OkWithError("InternalError"))
            .then(Fault::NoSuchUpload)
            .then(Fault::NoSuchBucket);
        let proxy = FaultyProxy::start(echo_upstream(), plan);
        let signed = b"GET /bkt/k HTTP/1.1\r\nHost: x\r\nx-amz-date: 20240101T000000Z\r\n\
                       x-amz-security-token: tok-123\r\nAuthorization: AWS4-HMAC-SHA256 \
                       Credential=AKID/20240101/us-east-1/s3/aws4_request, \
                       SignedHeaders=host, Signature=abcd\r\n\r\n";
        let skew = text(exchange(&proxy, signed));
        assert!(skew.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{skew}");
        assert!(skew.contains("<Code>RequestTimeTooSkewed</Code>"), "{skew}");
        assert!(
            skew.contains("<RequestTime>20240101T000000Z</RequestTime>"),
            "{skew}"
        );
        let expired = text(exchange(&proxy, signed));
        assert!(
            expired.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{expired}"
        );
        assert!(expired.contains("<Token-0>tok-123</Token-0>"), "{expired}");
        let unknown = text(exchange(&proxy, signed));
        assert!(unknown.starts_with("HTTP/1.1 403 "), "{unknown}");
        assert!(
            unknown.contains("<AWSAccessKeyId>AKID</AWSAccessKeyId>"),
            "{unknown}"
        );
        let signature = text(exchange(&proxy, signed));
        assert!(
            signature.contains("<SignatureProvided>abcd</SignatureProvided>"),
            "{signature}"
        );
        let ok = text(exchange(&proxy, signed));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("<Error><Code>InternalError</Code>"), "{ok}");
        let upload = text(exchange(
            &proxy,
            b"POST /bkt/k?uploadId=u-1 HTTP/1.1\r\nHost: x\r\n\r\n",
        ));
        assert!(upload.starts_with("HTTP/1.1 404 Not Found\r\n"), "{upload}");
        assert!(upload.contains("<UploadId>u-1</UploadId>"), "{upload}");
        // HEAD answers carry no body.
        let head = text(exchange(&proxy, b"HEAD /bkt/k HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(proxy.requests().iter().all(|r| r.fault != Fault::Pass));
    }

    #[test]
    fn answers_are_cut_reset_and_rewritten() {
        let plan = FaultPlan::new()
            .then(Fault::ShortBody)
            .then(Fault::ResetMidResponse)
            .then(Fault::ResetBeforeResponse)
            .then(Fault::WrongETag)
            .then(Fault::TruncatedWithoutToken)
            .then(Fault::Stall(Duration::from_secs(3)));
        let proxy = FaultyProxy::start(echo_upstream(), plan);

        // Short: the head promises 40 bytes, 20 come, then the end.
        let short = text(exchange(&proxy, PUT));
        let (head, body) = short.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Content-Length: 40"), "{short}");
        assert_eq!(body, "01234567890123456789");

        // Reset mid-answer: the head and part of the body, then a reset.
        let mut stream = TcpStream::connect(proxy.socket_addr()).unwrap();
        stream.write_all(PUT).unwrap();
        let mut got = Vec::new();
        let err = stream.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{got:?}");

        // Reset before any answer.
        let mut stream = TcpStream::connect(proxy.socket_addr()).unwrap();
        stream.write_all(PUT).unwrap();
        let mut got = Vec::new();
        let err = stream.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(got.is_empty(), "{got:?}");

        let etag = text(exchange(&proxy, PUT));
        assert!(etag.contains(&format!("ETag: {WRONG_ETAG}\r\n")), "{etag}");
        assert!(!etag.contains("\"right\""), "{etag}");

        let listing = "<ListBucketResult><IsTruncated>false</IsTruncated>\
                       <KeyCount>0</KeyCount></ListBucketResult>";
        let list = format!(
            "POST /b HTTP/1.1\r\nContent-Length: {}\r\n\r\n{listing}",
            listing.len()
        );
        let truncated = text(exchange(&proxy, list.as_bytes()));
        let want = "<ListBucketResult><IsTruncated>true</IsTruncated>\
                    <KeyCount>0</KeyCount></ListBucketResult>";
        assert!(truncated.ends_with(want), "{truncated}");
        assert!(
            truncated.contains(&format!("Content-Length: {}\r\n", want.len())),
            "{truncated}"
        );

        // A stall: nothing at all within the client's patience.
        let mut stream = TcpStream::connect(proxy.socket_addr()).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        stream.write_all(PUT).unwrap();
        let mut byte = [0u8; 1];
        let err = stream.read(&mut byte).unwrap_err();
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ),
            "{err:?}"
        );
        assert_eq!(proxy.faults_injected(), 6);
    }
}
