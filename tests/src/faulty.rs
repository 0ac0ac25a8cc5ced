//! A fault-injecting HTTP/1.1 proxy for retry tests.
//!
//! [`FaultyProxy`] listens on 127.0.0.1 and forwards each request to an
//! upstream server, except that the first requests it sees get the faults of
//! a [`FaultPlan`], in order. It understands just enough HTTP/1.1 to read a
//! whole request (head, then a `Content-Length` or chunked body) and to find
//! the end of a response head. Every connection carries one request: the
//! proxy asks upstream to close after answering and tells the client the same
//! (`Connection: close`), so it never has to find where a response ends.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_HEAD: usize = 64 * 1024;

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
}

/// The faults for the first requests a [`FaultyProxy`] sees, in order of
/// arrival; requests after those are passed through.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    faults: Vec<Fault>,
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
    /// A fault for every request from now on, whatever the plan says.
    forced: Mutex<Option<Fault>>,
    next: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
    stopping: AtomicBool,
    /// Bytes of answers relayed from upstream to clients.
    relayed: std::sync::atomic::AtomicU64,
}

/// A TCP proxy on 127.0.0.1 that forwards HTTP/1.1 requests to `upstream`
/// and injects the faults of a [`FaultPlan`]. Dropping it stops accepting
/// connections; requests in flight finish on their own.
///
/// ```no_run
/// use cbfs_tests::{FaultPlan, Fault, FaultyProxy, S3Server};
/// let s3 = S3Server::start();
/// let proxy = FaultyProxy::start(s3.socket_addr(), FaultPlan::first(2, Fault::SlowDown));
/// let envs = s3.envs_with_endpoint(&proxy.endpoint());
/// // ... run a cbfs tool with `envs`; it must retry twice, then succeed ...
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
        *self.shared.forced.lock().expect("forced fault") = fault;
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

    let index = shared.next.fetch_add(1, Ordering::SeqCst);
    let forced = shared.forced.lock().expect("forced fault").clone();
    let fault = forced.unwrap_or_else(|| shared.plan.get(index).cloned().unwrap_or(Fault::Pass));
    lock(&shared.seen).push(SeenRequest {
        method: request.method.clone(),
        target: request.target.clone(),
        fault: fault.clone(),
    });

    let answer_early = matches!(
        fault,
        Fault::SlowDown | Fault::InternalError | Fault::DropBeforeResponse
    );
    if answer_early && request.expects_continue() {
        // The client waits for "100 Continue" before sending its body; a
        // final answer now tells it not to send the body at all.
        respond_with_fault(&mut client, &fault, &request)?;
        return close(client);
    }
    if request.expects_continue() {
        client.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let body = read_body(&mut reader, &request)?;

    match fault {
        Fault::SlowDown | Fault::InternalError | Fault::DropBeforeResponse => {
            respond_with_fault(&mut client, &fault, &request)?;
            close(client)
        }
        Fault::Delay(pause) => {
            thread::sleep(pause);
            forward(&mut client, &request, &body, shared, false)?;
            close(client)
        }
        Fault::Pass => {
            forward(&mut client, &request, &body, shared, false)?;
            close(client)
        }
        Fault::DropMidResponse => {
            forward(&mut client, &request, &body, shared, true)?;
            close(client)
        }
    }
}

fn close(client: TcpStream) -> io::Result<()> {
    let _ = client.shutdown(Shutdown::Both);
    Ok(())
}

fn respond_with_fault(client: &mut TcpStream, fault: &Fault, request: &Request) -> io::Result<()> {
    let (status, code, message) = match fault {
        Fault::SlowDown => (
            "503 Slow Down",
            "SlowDown",
            "Please reduce your request rate.",
        ),
        Fault::InternalError => (
            "500 Internal Server Error",
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        // Nothing at all.
        _ => return Ok(()),
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>cbfs-faulty-proxy</RequestId></Error>"
    );
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    if request.method != "HEAD" {
        response.push_str(&body);
    }
    client.write_all(response.as_bytes())?;
    client.flush()
}

/// Sends the request upstream and relays the answer, with `Connection:
/// close` in its head. With `drop_half`, only the first half of the answer is
/// relayed.
fn forward(
    client: &mut TcpStream,
    request: &Request,
    body: &[u8],
    shared: &Shared,
    drop_half: bool,
) -> io::Result<()> {
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
            return client.write_all(response.as_bytes());
        }
    };
    server.set_read_timeout(Some(IO_TIMEOUT))?;
    server.set_write_timeout(Some(IO_TIMEOUT))?;
    server.write_all(&request.upstream_head())?;
    server.write_all(body)?;
    server.flush()?;

    let mut upstream_reader = BufReader::new(server);
    let head = read_response_head(&mut upstream_reader)?;
    let head = rewrite_response_head(&head);
    if drop_half {
        let mut answer = head;
        upstream_reader.read_to_end(&mut answer)?;
        let half = (answer.len() / 2).max(1);
        client.write_all(&answer[..half])?;
        shared.relayed.fetch_add(half as u64, Ordering::SeqCst);
        return client.flush();
    }
    client.write_all(&head)?;
    let copied = io::copy(&mut upstream_reader, client)?;
    shared
        .relayed
        .fetch_add(head.len() as u64 + copied, Ordering::SeqCst);
    client.flush()
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
        return read_chunked(reader);
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

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    loop {
        let mut size_line = String::new();
        if reader.read_line(&mut size_line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body cut short",
            ));
        }
        raw.extend_from_slice(size_line.as_bytes());
        let size_text = size_line.trim().split(';').next().unwrap_or("");
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| invalid("bad chunk size line"))?;
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line)? == 0 {
                    return Ok(raw);
                }
                raw.extend_from_slice(line.as_bytes());
                if line.trim().is_empty() {
                    return Ok(raw);
                }
            }
        }
        let start = raw.len();
        raw.resize(start + size + 2, 0); // data and its CRLF
        reader.read_exact(&mut raw[start..])?;
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
                             Content-Length: {}\r\n\r\n",
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

    fn exchange(proxy: &FaultyProxy, request: &[u8]) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(proxy.socket_addr())?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        Ok(answer)
    }

    #[test]
    fn plan_is_applied_in_order_then_passes() {
        let plan = FaultPlan::new()
            .then(Fault::SlowDown)
            .then(Fault::InternalError)
            .then(Fault::DropBeforeResponse)
            .then(Fault::DropMidResponse);
        let proxy = FaultyProxy::start(echo_upstream(), plan);
        let put = b"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n\
                    0123456789012345678901234567890123456789";

        let a = String::from_utf8(exchange(&proxy, put).unwrap()).unwrap();
        assert!(a.starts_with("HTTP/1.1 503 Slow Down\r\n"), "{a}");
        assert!(a.contains("<Code>SlowDown</Code>"));
        let b = String::from_utf8(exchange(&proxy, put).unwrap()).unwrap();
        assert!(
            b.starts_with("HTTP/1.1 500 Internal Server Error\r\n"),
            "{b}"
        );
        let c = exchange(&proxy, put).unwrap();
        assert!(c.is_empty(), "dropped connection answered {c:?}");
        let full = b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\nConnection: close\r\n\r\n\
                     0123456789012345678901234567890123456789";
        let d = exchange(&proxy, put).unwrap();
        assert_eq!(d, &full[..full.len() / 2]);
        let e = exchange(&proxy, put).unwrap();
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
        let answer = String::from_utf8(exchange(&proxy, request).unwrap()).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"));
        assert_eq!(proxy.requests_seen(), 2);
    }

    #[test]
    fn unreachable_upstream_gives_502() {
        let port = crate::free_port();
        let proxy = FaultyProxy::start(crate::net::loopback(port), FaultPlan::new());
        let answer = exchange(&proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 502 Bad Gateway\r\n"));
    }
}
