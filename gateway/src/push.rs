//! A pushed tar stream, handed from the request's body to the tiering run
//! that reads it (`Agent::tier_out_stream`, which checks every entry and
//! commits nothing of a stream it refuses), in bounded memory, with a bound
//! on its length and on how long the client may keep it waiting.

use std::io::{self, Read};
use std::time::Duration;

use bytes::Bytes;

/// Reads a stream of body chunks handed over by the async side, with a
/// bound on the total.
pub struct BodyReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
    total: u64,
    limit: u64,
    on_bytes: Box<dyn Fn(u64) + Send>,
}

impl BodyReader {
    /// A reader of what `rx` brings, refusing more than `limit` bytes.
    pub fn new(
        rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
        limit: u64,
        on_bytes: Box<dyn Fn(u64) + Send>,
    ) -> Self {
        BodyReader {
            rx,
            buf: Bytes::new(),
            total: 0,
            limit,
            on_bytes,
        }
    }
}

impl Read for BodyReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.total += chunk.len() as u64;
                    if self.total > self.limit {
                        return Err(io::Error::other(format!(
                            "the stream is longer than this gateway's limit of {} bytes",
                            self.limit
                        )));
                    }
                    (self.on_bytes)(chunk.len() as u64);
                    self.buf = chunk;
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = self.buf.len().min(out.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

/// Feeds `body` into a channel for a [`BodyReader`], chunk by chunk; a
/// chunk that takes longer than `timeout` to come ends the stream with an
/// error (a slow client cannot hold the push forever).
pub async fn feed(
    body: axum::body::Body,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
    timeout: Duration,
) {
    use futures::StreamExt as _;
    let mut stream = body.into_data_stream();
    loop {
        let next = tokio::time::timeout(timeout, stream.next()).await;
        let item = match next {
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client sent nothing for {} s", timeout.as_secs()),
            )),
            Ok(None) => return,
            Ok(Some(Ok(chunk))) => Ok(chunk),
            Ok(Some(Err(e))) => Err(io::Error::other(format!("the stream broke: {e}"))),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}
