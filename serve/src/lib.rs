//! # cbfs-serve
//!
//! Serving the cbfs HTTP APIs (the gateway's and the delegation node's):
//! TLS with rustls and optional client certificates, or plain HTTP where the
//! caller allows it (loopback); bounded connections, timeouts on the TLS
//! handshake and on request headers, and a graceful stop that lets requests
//! in flight finish.
//!
//! The SHA-256 of a client's certificate reaches every request of its
//! connection as a [`ClientCert`] extension: the service maps it to a
//! caller.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tower::ServiceExt as _;

/// The SHA-256 (hex) of the certificate the client presented on this
/// connection, if it presented one (and it verified against the client CA).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert(pub Option<String>);

/// The TLS files of a listener, as a configuration names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates whose client certificates are accepted. A client
    /// without a certificate is still served (it signs its requests); one
    /// with a certificate that does not verify is refused in the handshake.
    pub client_ca: Option<PathBuf>,
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{what} {}: no PEM certificate in it",
            path.display()
        ));
    }
    Ok(certs)
}

/// The rustls configuration for `files`: TLS 1.2 and 1.3, HTTP/2 and
/// HTTP/1.1 by ALPN. Errors name the file; none shows key material.
pub fn tls_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let chain = certs(&files.cert, "TLS certificate")?;
    // The error of a key file that does not parse says what is wrong with
    // its framing, never its contents.
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        format!(
            "TLS key {}: not a PEM private key ({e})",
            files.key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs(ca, "client CA")? {
                roots
                    .add(c)
                    .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| format!("client CA {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "TLS certificate {} and key {} do not go together: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS settings that a reload can replace: connections accepted after
/// [`store`](ArcSwap::store) use the new certificate.
pub type SharedTls = Arc<ArcSwap<ServerConfig>>;

/// How a listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS, or `None` for plain HTTP (the caller decides where that is
    /// allowed).
    pub tls: Option<SharedTls>,
    /// Connections served at once; more are closed as they come.
    pub max_connections: usize,
    /// Time a client gets to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client gets to send a request's headers (HTTP/1.1).
    pub header_timeout: Duration,
    /// Time requests in flight get to finish once the stop is asked for.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and waits (up to the drain timeout) for the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(options.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                "refusing a connection from {peer}: {} are open already",
                options.max_connections
            );
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let watcher = graceful.watcher();
        let options = options.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match &options.tls {
                None => connection(stream, app, ClientCert(None), watcher, &options).await,
                Some(tls) => {
                    let acceptor = TlsAcceptor::from(tls.load_full());
                    let tls = match tokio::time::timeout(
                        options.handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!("TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake with {peer} timed out");
                            return;
                        }
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| hex::encode(Sha256::digest(c.as_ref())));
                    connection(tls, app, ClientCert(cert), watcher, &options).await
                }
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!(
                "requests still in flight after {} s: stopping anyway",
                options.drain_timeout.as_secs()
            );
        }
    }
    Ok(())
}

/// The largest HTTP/2 frame a client may send.
const MAX_FRAME: u32 = 256 << 10;

async fn connection<I>(
    io: I,
    app: axum::Router,
    cert: ClientCert,
    watcher: hyper_util::server::graceful::Watcher,
    options: &ServeOptions,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(cert.clone());
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    // A large upload (a push) comes in frames of up to 256 KiB rather than
    // HTTP/2's default 16 KiB: each frame is handed on (a wake-up of the
    // thread that reads the body) on its own, and at 16 KiB the thread
    // switches cost a push about a tenth of the gateway's CPU. The windows
    // (how much a client may send ahead) stay at 1 MiB a stream; a
    // connection may hold one frame of 256 KiB partly received.
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_frame_size(MAX_FRAME);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!("connection ended: {e}");
    }
}
