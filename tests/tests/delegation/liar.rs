//! A lying node: an HTTP proxy in front of a real node that changes every
//! re-encryption answer, as [`Lie`] says. By default it swaps the first two
//! cfrags: each is a real, well-formed cfrag, made by the real kfrag, for
//! the wrong capsule, so only verification against the capsule catches it.
//! An answer of one cfrag gets one bit of that cfrag flipped instead.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How a [`LyingProxy`] changes a re-encryption answer.
#[derive(Clone, Copy, Debug)]
#[allow(dead_code)] // each test binary uses some
pub enum Lie {
    /// Swap the first two cfrags (or flip a bit of the only one).
    SwapCfrags,
    /// Claim in the delegation record that one node's answer is enough
    /// (threshold 1): the record is the administrator's, signed.
    ClaimThresholdOne,
    /// Answer with a body of this many bytes (valid JSON, padded).
    Oversized(usize),
    /// In the answer to a revocation, claim that the deleted share's
    /// delegation needs this many nodes (m) of this many (n), in the
    /// answer's own unsigned fields; the signed record is left alone.
    ClaimRevokeTerms(u32, u32),
    /// In the answer to a revocation, set m in the signed delegation record
    /// itself (its signature then fails).
    ForgeRevokeRecord(u32),
    /// Pass everything on, but answer `GET /v1/node` (the node's public
    /// key) with 503: a node that says it complied, then will not say
    /// which node it is.
    HideKey,
}

pub struct LyingProxy {
    pub url: String,
    /// How many answers it tampered with.
    pub lies: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    port: u16,
}

impl LyingProxy {
    pub fn start(upstream: &str) -> LyingProxy {
        LyingProxy::lying(upstream, Lie::SwapCfrags)
    }

    pub fn lying(upstream: &str, lie: Lie) -> LyingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let lies = Arc::new(AtomicUsize::new(0));
        let upstream = upstream.to_owned();
        let thread = {
            let (stop, lies) = (stop.clone(), lies.clone());
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let (upstream, lies) = (upstream.clone(), lies.clone());
                    thread::spawn(move || {
                        let _ = serve(conn, &upstream, &lies, lie);
                    });
                }
            })
        };
        LyingProxy {
            url: format!("http://127.0.0.1:{port}"),
            lies,
            stop,
            thread: Some(thread),
            port,
        }
    }
}

impl Drop for LyingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, upstream: &str, lies: &AtomicUsize, lie: Lie) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap_or("GET").to_owned(),
        parts.next().unwrap_or("/").to_owned(),
    );
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;

    let client = cbfs_tests::http_client();
    let url = format!("{upstream}{path}");
    let response = if method == "POST" {
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    } else {
        client.get(&url).send()
    };
    let (status, mut answer) = match response {
        Ok(_) if matches!(lie, Lie::HideKey) && path == "/v1/node" => {
            lies.fetch_add(1, Ordering::SeqCst);
            (
                503,
                b"{\"error\":\"unavailable\",\"reason\":\"not now\"}".to_vec(),
            )
        }
        Ok(r) => (
            r.status().as_u16(),
            r.bytes().map(|b| b.to_vec()).unwrap_or_default(),
        ),
        Err(_) => (
            502,
            b"{\"error\":\"internal\",\"reason\":\"upstream down\"}".to_vec(),
        ),
    };
    if path == "/v1/revoke" && status == 200 {
        let mut value: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        match lie {
            Lie::ClaimRevokeTerms(m, n) => {
                value["threshold"] = m.into();
                value["shares"] = n.into();
                lies.fetch_add(1, Ordering::SeqCst);
            }
            Lie::ForgeRevokeRecord(m) => {
                if let Some(record) = value.get_mut("delegation").filter(|r| !r.is_null()) {
                    set_threshold(record, m);
                    lies.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => {}
        }
        answer = serde_json::to_vec(&value).unwrap();
    }
    if path == "/v1/reencrypt" && status == 200 {
        let mut value: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        match lie {
            Lie::SwapCfrags => swap_cfrags(&mut value, lies),
            Lie::ClaimThresholdOne if claim_threshold_one(&mut value["delegation"]) => {
                lies.fetch_add(1, Ordering::SeqCst);
            }
            _ => {}
        }
        answer = serde_json::to_vec(&value).unwrap();
        if let Lie::Oversized(n) = lie {
            answer.resize(n.max(answer.len()), b' ');
            lies.fetch_add(1, Ordering::SeqCst);
        }
    }
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        answer.len()
    )?;
    conn.write_all(&answer)?;
    conn.flush()?;
    conn.shutdown(Shutdown::Both)
}

/// Sets every `threshold` field in the delegation record to 1; whether
/// there was one to change.
fn claim_threshold_one(value: &mut serde_json::Value) -> bool {
    set_threshold(value, 1)
}

/// Sets every `threshold` field in `value` to `m`; whether there was one
/// to change.
fn set_threshold(value: &mut serde_json::Value, m: u32) -> bool {
    let mut changed = false;
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "threshold" && v.as_u64() != Some(u64::from(m)) {
                    *v = serde_json::Value::from(m);
                    changed = true;
                } else {
                    changed |= set_threshold(v, m);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                changed |= set_threshold(v, m);
            }
        }
        _ => {}
    }
    changed
}

fn swap_cfrags(value: &mut serde_json::Value, lies: &AtomicUsize) {
    {
        let cfrags = value["cfrags"].as_array_mut().unwrap();
        if cfrags.len() >= 2 {
            cfrags.swap(0, 1);
            lies.fetch_add(1, Ordering::SeqCst);
        } else if let Some(only) = cfrags.first_mut() {
            // One cfrag: flip a bit of its signature instead.
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD;
            let mut bytes = b64.decode(only.as_str().unwrap()).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            *only = serde_json::Value::String(b64.encode(bytes));
            lies.fetch_add(1, Ordering::SeqCst);
        }
    }
}
