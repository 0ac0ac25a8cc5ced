//! A store read through `cbfs-gateway` (`https://GATEWAY/v1/fs/NAME`),
//! read-only, every request signed with the user's own key; and the push of
//! a tree to a gateway. The gateway serves ciphertext only: the user's key,
//! through the delegation nodes, is still what unlocks.

use std::ops::Range;
use std::time::Duration;

use cbfs_client::GatewayAuth;
use cbfs_core::Clock;
use cbfs_restore::Error as RestoreError;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A user's name from `--user` (a `NAME.pub` file, checked against the
/// secret, or the bare name).
pub fn user_name(arg: &str, secret: &cbfs_core::UserSecret) -> Result<cbfs_core::UserName> {
    crate::restore::user_name(arg, secret)
}

/// `https://GATEWAY` and a file system's name, as a gateway store spec.
pub fn gateway_store(gateway: &str, fs: &str) -> String {
    format!("{}/v1/fs/{fs}", gateway.trim_end_matches('/'))
}

/// One file system of a gateway, for a signed caller.
#[derive(Clone, Debug)]
pub struct GatewayClient {
    base: String,
    auth: GatewayAuth,
    http: reqwest::Client,
    clock: std::sync::Arc<dyn Clock>,
}

impl GatewayClient {
    /// The file system at `base` (`https://GATEWAY/v1/fs/NAME`), as `auth`.
    /// TLS roots are the system's and those of `CBFS_CA_FILE`.
    pub fn new(base: &str, auth: GatewayAuth, timeout: Option<Duration>) -> Result<Self> {
        let base = base.trim_end_matches('/').to_owned();
        if !is_gateway_store(&base) {
            return Err(Error::Usage(format!(
                "`{base}` is not a gateway file system: give https://GATEWAY/v1/fs/NAME"
            )));
        }
        let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        let http = cbfs_client::with_tls_env(b)
            .map_err(Error::Usage)?
            .build()
            .map_err(|e| Error::Usage(format!("cannot make an HTTP client: {e}")))?;
        Ok(GatewayClient {
            base,
            auth,
            http,
            clock: cbfs_core::system_clock(),
        })
    }

    /// Who signs.
    pub fn auth(&self) -> &GatewayAuth {
        &self.auth
    }

    /// The file system's URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URLs of the gateway's relays to the file system's delegation
    /// nodes, `BASE/nodes/I`.
    pub async fn node_relays(&self) -> Result<Vec<String>> {
        #[derive(Deserialize)]
        struct Nodes {
            nodes: usize,
        }
        let (status, body) = self.send("GET", "/nodes", None, None).await?;
        let n: Nodes = self.json(status, &body, "/nodes")?;
        Ok((0..n.nodes)
            .map(|i| format!("{}/nodes/{i}", self.base))
            .collect())
    }

    /// Sends a signed request to `BASE` + `rest`; the status and the body.
    pub async fn send(
        &self,
        method: &str,
        rest: &str,
        body: Option<Vec<u8>>,
        range: Option<Range<u64>>,
    ) -> Result<(u16, bytes::Bytes)> {
        let url = format!("{}{rest}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut request = self.http.request(m, &url);
        if let Some(r) = &range {
            request = request.header("range", format!("bytes={}-{}", r.start, r.end - 1));
        }
        let signed_body = body.as_deref().unwrap_or(b"");
        request = self
            .auth
            .sign(request, method, &url, Some(signed_body), self.clock.unix())
            .map_err(Error::Usage)?;
        if let Some(b) = body {
            request = request.header("content-type", "application/json").body(b);
        }
        let response = request.send().await.map_err(|e| self.down(rest, &e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| self.down(rest, &e))?;
        Ok((status, bytes))
    }

    /// A signed `HEAD` of `BASE` + `rest`: the status and the length.
    pub async fn head(&self, rest: &str) -> Result<(u16, Option<u64>)> {
        let url = format!("{}{rest}", self.base);
        let request = self
            .auth
            .sign(
                self.http.head(&url),
                "HEAD",
                &url,
                Some(b""),
                self.clock.unix(),
            )
            .map_err(Error::Usage)?;
        let response = request.send().await.map_err(|e| self.down(rest, &e))?;
        let size = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        Ok((response.status().as_u16(), size))
    }

    fn down(&self, what: &str, e: &reqwest::Error) -> Error {
        Error::Restore {
            context: format!("gateway {}{what}", self.base),
            cause: Box::new(RestoreError::Unavailable {
                store: self.base.clone(),
                key: what.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Decodes a JSON answer, or the gateway's refusal as an error.
    pub fn json<T: serde::de::DeserializeOwned>(
        &self,
        status: u16,
        body: &[u8],
        what: &str,
    ) -> Result<T> {
        if !(200..300).contains(&status) {
            return Err(Error::Usage(format!(
                "gateway {}{what}: {}",
                self.base,
                refusal(status, body)
            )));
        }
        serde_json::from_slice(body).map_err(|e| {
            Error::Usage(format!(
                "gateway {}{what}: not the answer expected ({e})",
                self.base
            ))
        })
    }
}

use cbfs_restore::gateway::percent;
pub use cbfs_restore::gateway::{is_gateway_store, refusal};

/// Bytes of a tar stream made on a blocking thread, handed to the HTTP body
/// in chunks through a bounded channel: memory stays bounded whatever the
/// tree's size.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl ChannelWriter {
    fn flush_chunk(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = bytes::Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the gateway stopped reading the push",
            )
        })
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush_chunk()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.flush_chunk()
    }
}

/// What a push sends: a directory (made into a tar stream here: entries
/// with their modes, owners and times, symbolic links as links) or a tar
/// stream read from elsewhere (standard input).
pub enum PushInput {
    /// A directory.
    Dir(std::path::PathBuf),
    /// A ready tar stream.
    Tar(Box<dyn std::io::Read + Send>),
}

/// Pushes `input` to the gateway's file system under `prefix` (`/PATH`):
/// the gateway unpacks it, refusing the whole stream at the first unsafe
/// entry, and tiers it out as one snapshot (unchanged files keep their
/// stored members). Answers the job record once the job has ended.
pub async fn push(
    client: &GatewayClient,
    prefix: &str,
    input: PushInput,
) -> Result<serde_json::Value> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(8);
    let producer = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CHUNK),
        };
        let made = match input {
            PushInput::Dir(dir) => {
                let mut b = tar::Builder::new(&mut w);
                b.follow_symlinks(false);
                b.mode(tar::HeaderMode::Complete);
                b.append_dir_all(".", &dir)
                    .and_then(|()| b.finish())
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))
            }
            PushInput::Tar(mut r) => std::io::copy(&mut r, &mut w).map(|_| ()),
        };
        let made = made.and_then(|()| std::io::Write::flush(&mut w));
        if let Err(e) = &made {
            // The body ends with an error: the gateway sees a broken stream
            // and commits nothing.
            let _ = tx.blocking_send(Err(std::io::Error::new(e.kind(), e.to_string())));
        }
        made
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let url = format!("{}/push?prefix={}", client.base, percent(prefix));
    let request = client
        .auth
        .sign(
            client.http.put(&url),
            "PUT",
            &url,
            None,
            client.clock.unix(),
        )
        .map_err(Error::Usage)?
        .header("content-type", "application/x-tar")
        .body(reqwest::Body::wrap_stream(stream));
    let sent = request.send().await;
    let made = producer
        .await
        .map_err(|e| Error::Usage(format!("the push stream failed: {e}")))?;
    let response = sent.map_err(|e| client.down("/push", &e))?;
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| client.down("/push", &e))?;
    if let Err(e) = made {
        return Err(Error::Usage(format!(
            "the push stream could not be made: {e}"
        )));
    }
    if status == 200 {
        return client.json(status, &body, "/push");
    }
    // A job that ran and failed is a record too: show it.
    if let Ok(record) = serde_json::from_slice::<serde_json::Value>(&body)
        && record.get("state").is_some()
    {
        return Err(Error::Usage(format!(
            "gateway {}/push: the job ended {}: {}",
            client.base,
            record["state"].as_str().unwrap_or("?"),
            record["error"].as_str().unwrap_or("no reason given")
        )));
    }
    Err(Error::Usage(format!(
        "gateway {}/push: {}",
        client.base,
        refusal(status, &body)
    )))
}
