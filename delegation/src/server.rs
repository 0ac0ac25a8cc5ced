//! The node's HTTP service (axum on tokio): routes, limits, signals.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /healthz` | 200 `{"status":"ok",...}` once the node is ready |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /v1/node` | the node's public key ([`NodeInfo`](crate::wire::NodeInfo)) |
//! | `POST /v1/grants` | store a grant sealed for this node |
//! | `POST /v1/revoke` | revoke a (scope, user) delegation |
//! | `POST /v1/reencrypt` | re-encrypt a signed batch of capsules |
//!
//! [`serve`] takes a bound listener, a shutdown future and a stream of
//! reload requests. The binary feeds them from signals ([`termination`],
//! [`hangups`]): SIGHUP reloads the policies (requests in flight finish under
//! the old ones; a folder that does not validate is refused and the old
//! policies stay); SIGTERM and SIGINT stop the node gracefully: it stops
//! accepting, finishes the requests it has, records the stop, and exits 0.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cbfs_serve::ServeOptions;
use serde::Serialize;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::{Error, Result};
use crate::node::{Node, Refusal, Ticket};
use cbfs_wire::ErrorBody;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(value).expect("answers serialize"),
    )
        .into_response()
}

fn refusal(r: Refusal) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = json(
        status,
        &ErrorBody {
            error: r.code.to_owned(),
            reason: r.reason,
        },
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    }
    response
}

/// Reads the body within the node's limits, then runs `decide` on a
/// blocking thread (it signs, verifies, fsyncs and re-encrypts), all within
/// the request timeout. `decide` gets a [`Ticket`]: when the time runs out
/// first, the handler gives up on the answer and the node audits a refusal
/// instead of an answer nobody got; when the answer was already claimed,
/// the handler waits for it and sends it.
async fn handle<T, F>(node: Arc<Node>, endpoint: &'static str, body: Body, decide: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(&Node, &[u8], &Ticket) -> Result<T, Refusal> + Send + 'static,
{
    node.metrics().requests.with_label_values(&[endpoint]).inc();
    let limits = node.limits().clone();
    let deadline = tokio::time::Instant::now() + limits.request_timeout;
    let read = tokio::time::timeout_at(deadline, axum::body::to_bytes(body, limits.max_body));
    let bytes = match read.await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return refusal(Refusal::new(
                413,
                "too_large",
                format!(
                    "the request body is larger than this node's limit of {} bytes (or it broke off)",
                    limits.max_body
                ),
            ));
        }
        Err(_) => return refusal(node.timed_out()),
    };
    let ticket = Ticket::default();
    let mut work = {
        let (node, ticket) = (node.clone(), ticket.clone());
        tokio::task::spawn_blocking(move || decide(&node, &bytes, &ticket))
    };
    let joined = match tokio::time::timeout_at(deadline, &mut work).await {
        Ok(joined) => joined,
        // Too late, unless the answer is already on its way.
        Err(_) if ticket.drop_answer() => return refusal(node.timed_out()),
        Err(_) => work.await,
    };
    match joined {
        Ok(Ok(answer)) => json(StatusCode::OK, &answer),
        Ok(Err(r)) => refusal(r),
        Err(e) => refusal(Refusal::new(
            500,
            "internal",
            format!("the node failed: {e}"),
        )),
    }
}

async fn healthz(State(node): State<Arc<Node>>) -> Response {
    node.metrics()
        .requests
        .with_label_values(&["healthz"])
        .inc();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "grants": node.grant_count(),
            "policies": node.policy_ids(),
        }),
    )
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    node.metrics()
        .requests
        .with_label_values(&["metrics"])
        .inc();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
        .into_response()
}

async fn node_info(State(node): State<Arc<Node>>) -> Response {
    node.metrics().requests.with_label_values(&["node"]).inc();
    json(StatusCode::OK, &node.info())
}

async fn upload(State(node): State<Arc<Node>>, body: Body) -> Response {
    handle(node, "grants", body, |n, b, _| n.upload(b)).await
}

async fn revoke(State(node): State<Arc<Node>>, body: Body) -> Response {
    handle(node, "revoke", body, |n, b, _| n.revoke(b)).await
}

async fn keyset(State(node): State<Arc<Node>>, body: Body) -> Response {
    handle(node, "keyset", body, |n, b, _| n.update_keyset(b)).await
}

async fn delegations(State(node): State<Arc<Node>>, body: Body) -> Response {
    handle(node, "delegations", body, |n, b, _| n.delegations(b)).await
}

async fn reencrypt(State(node): State<Arc<Node>>, body: Body) -> Response {
    handle(node, "reencrypt", body, |n, b, t| n.reencrypt(b, Some(t))).await
}

async fn not_found() -> Response {
    refusal(Refusal::new(
        404,
        "not_found",
        "no such endpoint (see cbfs-delegation --help)",
    ))
}

/// The node's routes.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/node", get(node_info))
        .route("/v1/grants", post(upload))
        .route("/v1/revoke", post(revoke))
        .route("/v1/keyset", axum::routing::put(keyset))
        .route("/v1/delegations", post(delegations))
        .route("/v1/reencrypt", post(reencrypt))
        .fallback(not_found)
        .with_state(node)
}

/// Serves `node` on `listener` in plain HTTP until `shutdown` completes:
/// [`serve_with`] with the default options.
pub async fn serve<S, R>(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    shutdown: S,
    reload: R,
) -> Result<()>
where
    S: std::future::Future<Output = ()> + Send + 'static,
    R: futures::Stream<Item = ()> + Send + Unpin + 'static,
{
    serve_with(node, listener, ServeOptions::default(), shutdown, reload).await
}

/// Serves `node` on `listener` (TLS if `options` say so) until `shutdown`
/// completes: then it stops accepting, finishes the requests it has, and
/// records the stop. Policies are reloaded whenever `reload` yields (the
/// binary feeds it SIGHUP).
pub async fn serve_with<S, R>(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    options: ServeOptions,
    shutdown: S,
    mut reload: R,
) -> Result<()>
where
    S: std::future::Future<Output = ()> + Send + 'static,
    R: futures::Stream<Item = ()> + Send + Unpin + 'static,
{
    use futures::StreamExt as _;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("cannot read the listening address: {e}")))?;
    let reloader = {
        let node = node.clone();
        tokio::spawn(async move {
            while reload.next().await.is_some() {
                let n = node.clone();
                match tokio::task::spawn_blocking(move || n.reload_policies()).await {
                    Ok(Ok(ids)) => tracing::info!("policies reloaded: {}", ids.join(", ")),
                    Ok(Err(e)) => {
                        tracing::error!("policies NOT reloaded, the old ones stay in force: {e}")
                    }
                    Err(e) => tracing::error!("policy reload failed: {e}"),
                }
            }
        })
    };
    let janitor = {
        let node = node.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                let n = node.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || n.purge_nonces()).await {
                    tracing::error!("cannot purge old nonces: {e}");
                }
            }
        })
    };
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!("listening on {scheme}://{local}");
    let served = if options.tls.is_some() {
        cbfs_serve::serve(listener, router(node.clone()), options, shutdown).await
    } else {
        axum::serve(listener, router(node.clone()))
            .with_graceful_shutdown(shutdown)
            .await
    }
    .map_err(|e| Error::Server(format!("serving on {local} failed: {e}")));
    reloader.abort();
    janitor.abort();
    served?;
    node.stopped()?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM or SIGINT, whichever comes first: the binary's shutdown signal.
pub fn termination() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    let mut term = signal(SignalKind::terminate()).map_err(|e| Error::Server(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Error::Server(e.to_string()))?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping gracefully"),
            _ = int.recv() => tracing::info!("SIGINT: stopping gracefully"),
        }
    })
}

/// Every SIGHUP, as a stream: the binary's reload signal.
pub fn hangups() -> Result<impl futures::Stream<Item = ()> + Send + Unpin + 'static> {
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Error::Server(e.to_string()))?;
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        hup.poll_recv(cx)
    })))
}
