//! The HTTP API (JSON, versioned under `/v1`): the handlers of every route
//! of [`crate::openapi::ROUTES`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use cbfs_serve::ClientCert;
use cbfs_wire::gateway::CONTENT_SHA256_HEADER;

use crate::auth::{Presented, Refused};
use crate::gateway::Gateway;
use crate::jobs::Kind;
use crate::policy::Action;

/// An error answer: a status, a stable code and a reason.
pub struct Answer {
    status: StatusCode,
    code: &'static str,
    reason: String,
    retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    reason: &'a str,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&ErrorBody {
            error: self.code,
            reason: &self.reason,
        })
        .expect("errors serialize");
        let mut r = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from_str(&s.to_string()).expect("digits"),
            );
        }
        r
    }
}

impl From<Refused> for Answer {
    fn from(r: Refused) -> Self {
        Answer {
            status: StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: r.code,
            reason: r.reason,
            retry_after: None,
        }
    }
}

pub(crate) fn answer(status: u16, code: &'static str, reason: impl Into<String>) -> Answer {
    Answer {
        status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        reason: reason.into(),
        retry_after: None,
    }
}

/// 503 with Retry-After for what is worth retrying, else 500 or 400.
fn from_tiering(e: cbfs_tiering::Error) -> Answer {
    if e.is_transient() {
        Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            reason: e.to_string(),
            retry_after: Some(5),
        }
    } else if e.is_verification() {
        answer(502, "verification", e.to_string())
    } else {
        match e {
            cbfs_tiering::Error::Usage(u) => answer(400, "bad_request", u),
            e => answer(500, "internal", e.to_string()),
        }
    }
}

pub(crate) fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(v).expect("answers serialize"),
    )
        .into_response()
}

/// Reads a JSON-sized body within the limit; its SHA-256.
async fn read_body(gw: &Gateway, body: Body) -> Result<(bytes::Bytes, String), Answer> {
    let limits = &gw.config().config.limits;
    let read = tokio::time::timeout(
        limits.io_timeout(),
        axum::body::to_bytes(body, limits.max_body),
    )
    .await
    .map_err(|_| answer(408, "timeout", "the request body took too long"))?
    .map_err(|_| {
        answer(
            413,
            "too_large",
            format!(
                "the body is larger than {} bytes (or broke off)",
                limits.max_body
            ),
        )
    })?;
    let hash = cbfs_wire::gateway::content_sha256(&read);
    Ok((read, hash))
}

/// A request's body, once the decision on `action` for file system `fs`
/// allows it (the caller signed the body's hash).
async fn body_under(
    gw: &Gateway,
    req: Request,
    action: Action,
    fs: &str,
) -> Result<bytes::Bytes, Answer> {
    let (parts, body) = req.into_parts();
    let (bytes, hash) = read_body(gw, body).await?;
    guard(gw, &Caller::of(&parts), Some(&hash), action, Some(fs), "/")?;
    Ok(bytes)
}

pub(crate) struct Caller<'a> {
    headers: &'a HeaderMap,
    method: &'a Method,
    path_and_query: String,
    cert: Option<String>,
}

impl<'a> Caller<'a> {
    pub(crate) fn of(req: &'a axum::http::request::Parts) -> Self {
        Caller {
            headers: &req.headers,
            method: &req.method,
            path_and_query: req
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| req.uri.path().to_owned()),
            cert: req.extensions.get::<ClientCert>().and_then(|c| c.0.clone()),
        }
    }

    fn presented<'b>(&'b self, body_sha256: Option<&'b str>) -> Presented<'b> {
        Presented {
            method: self.method.as_str(),
            path_and_query: &self.path_and_query,
            authorization: self
                .headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok()),
            content_sha256: self
                .headers
                .get(CONTENT_SHA256_HEADER)
                .and_then(|v| v.to_str().ok()),
            body_sha256,
            client_cert: self.cert.as_deref(),
        }
    }
}

/// Guards a request with no body (or a JSON body read first).
pub(crate) fn guard(
    gw: &Gateway,
    caller: &Caller<'_>,
    body_sha256: Option<&str>,
    action: Action,
    fs: Option<&str>,
    path: &str,
) -> Result<crate::gateway::Allowed, Answer> {
    let empty = cbfs_wire::gateway::content_sha256(b"");
    let hash = body_sha256.unwrap_or(&empty);
    gw.guard(&caller.presented(Some(hash)), action, fs, path)
        .map_err(Answer::from)
}

async fn healthz() -> Response {
    json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.stopping() {
        return answer(503, "stopping", "the gateway is stopping").into_response();
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "status": "ready", "fs": gw.fs_names() }),
    )
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        gw.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    json(StatusCode::OK, &crate::openapi::document())
}

async fn list_fs(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    let caller = Caller::of(&parts);
    guard(&gw, &caller, None, Action::List, None, "/")?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "fs": gw.fs_names() }),
    ))
}

async fn start_job(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, body) = req.into_parts();
    let (_, hash) = read_body(&gw, body).await?;
    let caller = Caller::of(&parts);
    let allowed = guard(&gw, &caller, Some(&hash), Action::TierOut, Some(&fs), "/")?;
    if gw.stopping() {
        return Err(Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "stopping",
            reason: "the gateway is stopping".into(),
            retry_after: Some(30),
        });
    }
    let (job, new) = gw
        .start_tier_out(&fs, allowed.who.name.as_str())
        .map_err(|e| answer(409, "no_source", e.to_string()))?;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(status, &job.record()))
}

async fn list_jobs(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::TierOut,
        Some(&fs),
        "/",
    )?;
    Ok(json(StatusCode::OK, &gw.jobs.of(&fs)))
}

/// A job of `fs` by id, or 404.
fn find_job(gw: &Gateway, fs: &str, id: &str) -> Result<Arc<crate::jobs::Job>, Answer> {
    gw.jobs
        .get(id)
        .filter(|j| j.record().fs == fs)
        .ok_or_else(|| answer(404, "unknown_job", format!("no job `{id}` of `{fs}`")))
}

#[derive(Deserialize)]
struct WaitQuery {
    wait: Option<u64>,
}

async fn get_job(
    State(gw): State<Arc<Gateway>>,
    Path((fs, id)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::TierOut,
        Some(&fs),
        "/",
    )?;
    let job = find_job(&gw, &fs, &id)?;
    let record = match q.wait {
        Some(secs) => {
            let max = gw.config().config.limits.max_wait_secs;
            job.wait(Duration::from_secs(secs.min(max))).await
        }
        None => job.record(),
    };
    Ok(json(StatusCode::OK, &record))
}

async fn cancel_job(
    State(gw): State<Arc<Gateway>>,
    Path((fs, id)): Path<(String, String)>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::TierOut,
        Some(&fs),
        "/",
    )?;
    let job = find_job(&gw, &fs, &id)?;
    job.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(json(StatusCode::ACCEPTED, &job.record()))
}

#[derive(Deserialize)]
struct PushQuery {
    prefix: String,
}

async fn push(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    Query(q): Query<PushQuery>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, body) = req.into_parts();
    crate::paths::check(&q.prefix)
        .map_err(|e| answer(400, "bad_path", format!("prefix `{}`: {e}", q.prefix)))?;
    let caller = Caller::of(&parts);
    let allowed = gw
        .guard(&caller.presented(None), Action::Push, Some(&fs), &q.prefix)
        .map_err(Answer::from)?;
    if gw.stopping() {
        return Err(answer(503, "stopping", "the gateway is stopping"));
    }
    let served = gw.served(&fs).expect("guarded: the file system exists");
    let (job, _) = gw
        .jobs
        .start(
            &fs,
            Kind::Push,
            Some(q.prefix.clone()),
            allowed.who.name.as_str(),
        )
        .map_err(|e| answer(500, "internal", e.to_string()))?;
    let limits = gw.config().config.limits.clone();
    // The stream is read on the run's blocking thread from a bounded
    // channel of body chunks: memory stays bounded whatever its size.
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let feeder = tokio::spawn(crate::push::feed(body, tx, limits.io_timeout()));
    let counted = job.clone();
    let metrics_bytes = gw.metrics.bytes.with_label_values(&["in", "push"]);
    let reader = crate::push::BodyReader::new(
        rx,
        limits.max_push,
        Box::new(move |n| {
            counted.received(n);
            metrics_bytes.inc_by(n);
        }),
    );
    let opts = gw
        .push_options(&served, &q.prefix, &job)
        .map_err(|e| answer(500, "internal", e.to_string()))?;
    let handle = gw
        .clone()
        .run(served, job.clone(), opts, Some(Box::new(reader)));
    let ran = handle.await;
    feeder.abort();
    if let Ok(Err(cbfs_tiering::Error::Refused(why))) = ran {
        return Err(answer(
            400,
            "bad_stream",
            format!("{why}; nothing was committed"),
        ));
    }
    let record = job.record();
    let status = match record.state {
        crate::jobs::State::Succeeded => StatusCode::OK,
        crate::jobs::State::Cancelled => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Ok(json(status, &record))
}

async fn snapshots(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::ReadStore,
        Some(&fs),
        "/",
    )?;
    let served = gw.served(&fs).expect("guarded");
    let (snaps, ignored) = served.agent.snapshots().await.map_err(from_tiering)?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "snapshots": snaps, "ignored": ignored }),
    ))
}

#[derive(Deserialize)]
struct LsQuery {
    snapshot: Option<String>,
    path: Option<String>,
}

async fn ls(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    Query(q): Query<LsQuery>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    let path = q.path.clone().unwrap_or_else(|| "/".into());
    crate::paths::check(&path)
        .map_err(|e| answer(400, "bad_path", format!("path `{path}`: {e}")))?;
    let caller = Caller::of(&parts);
    // Anyone allowed to list something below asks; what they see is
    // filtered entry by entry.
    let empty = cbfs_wire::gateway::content_sha256(b"");
    let who = match gw.guard(
        &caller.presented(Some(&empty)),
        Action::List,
        Some(&fs),
        &path,
    ) {
        Ok(a) => a.who,
        Err(r) if r.code == "denied" => {
            // Not the path itself: perhaps something below it (a home).
            // The signature verified a moment ago (the refusal is audited);
            // its nonce is spent, so it is checked against an empty cache.
            let who = crate::auth::authenticate(
                &gw.config(),
                &crate::auth::Replays::new(0),
                gw.clock.unix(),
                &caller.presented(Some(&empty)),
            )
            .map_err(Answer::from)?;
            let below = |home: &String| {
                path == "/" || home == &path || home.starts_with(&format!("{path}/"))
            };
            let owns_below = who
                .homes
                .get(&fs)
                .is_some_and(|homes| homes.iter().any(below));
            if !owns_below {
                return Err(r.into());
            }
            who
        }
        Err(r) => return Err(r.into()),
    };
    let served = gw.served(&fs).expect("guarded");
    let rel = crate::paths::relative(&path);
    let entries = served
        .agent
        .entries(
            q.snapshot.clone(),
            (!rel.is_empty()).then(|| rel.to_owned()),
        )
        .await
        .map_err(from_tiering)?;
    let mut allowed_dirs: std::collections::HashMap<String, bool> = Default::default();
    let visible: Vec<_> = entries
        .into_iter()
        .filter(|e| {
            let full = format!("/{}", e.path);
            let parent = match full.rfind('/') {
                Some(0) | None => "/".to_owned(),
                Some(i) => full[..i].to_owned(),
            };
            let parent_ok = *allowed_dirs
                .entry(parent.clone())
                .or_insert_with(|| gw.may_list(&who, &fs, &parent));
            parent_ok || gw.may_list(&who, &fs, &full)
        })
        .collect();
    gw.metrics
        .bytes
        .with_label_values(&["out", "ls"])
        .inc_by(visible.len() as u64);
    Ok(json(StatusCode::OK, &visible))
}

#[derive(Deserialize)]
struct StoreQuery {
    prefix: Option<String>,
}

async fn store_list(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    Query(q): Query<StoreQuery>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::ReadStore,
        Some(&fs),
        "/",
    )?;
    let served = gw.served(&fs).expect("guarded");
    let prefix = q.prefix.unwrap_or_default();
    let objects = store_call(&gw, &prefix, served.agent.store.list(&prefix)).await?;
    let list: Vec<_> = objects
        .iter()
        .map(|o| serde_json::json!({ "key": o.key, "size": o.size }))
        .collect();
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "objects": list }),
    ))
}

/// A read of the store within `[limits] store_timeout_secs`: a store that
/// is down or too slow is 503 with Retry-After, naming `what`.
async fn store_call<T>(
    gw: &Gateway,
    what: &str,
    call: impl std::future::Future<Output = cbfs_store::Result<T>>,
) -> Result<T, Answer> {
    let timeout = gw.config().config.limits.store_timeout();
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r.map_err(|e| from_tiering(e.into())),
        Err(_) => Err(Answer {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            reason: format!(
                "the store did not answer about `{what}` within {} s",
                timeout.as_secs()
            ),
            retry_after: Some(5),
        }),
    }
}

/// The largest piece of a store object held in memory while it is served.
const STORE_PIECE: u64 = 1 << 20;

/// A `Range: bytes=A-B` header, as a half-open range within `size`.
fn range_of(headers: &HeaderMap, size: u64) -> Result<Option<std::ops::Range<u64>>, Answer> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let bad = || {
        answer(
            416,
            "bad_range",
            "only one range `bytes=A-B` or `bytes=A-` is served",
        )
    };
    let v = v.to_str().map_err(|_| bad())?;
    let spec = v.strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.parse().map_err(|_| bad())?;
    let end = if b.is_empty() {
        size
    } else {
        b.parse::<u64>()
            .map_err(|_| bad())?
            .saturating_add(1)
            .min(size)
    };
    if start >= size || start >= end {
        return Err(answer(
            416,
            "bad_range",
            format!("range {v} is not within {size} bytes"),
        ));
    }
    Ok(Some(start..end))
}

async fn store_get(
    State(gw): State<Arc<Gateway>>,
    Path((fs, key)): Path<(String, String)>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::ReadStore,
        Some(&fs),
        "/",
    )?;
    cbfs_store::validate_key(&key).map_err(|e| answer(400, "bad_key", e.to_string()))?;
    let served = gw.served(&fs).expect("guarded");
    let store = &served.agent.store;
    // One HEAD (inside the reader) learns the size and pins the version.
    let reader = store_call(&gw, &key, store.reader(&key, None))
        .await?
        .ok_or_else(|| answer(404, "missing_object", format!("no object `{key}`")))?
        .with_piece_size(STORE_PIECE);
    let size = reader.size();
    if parts.method == Method::HEAD {
        return Ok((StatusCode::OK, [(header::CONTENT_LENGTH, size.to_string())]).into_response());
    }
    let range = range_of(&parts.headers, size)?;
    let (status, content_range) = match &range {
        None => (StatusCode::OK, None),
        Some(r) => (
            StatusCode::PARTIAL_CONTENT,
            Some(format!("bytes {}-{}/{}", r.start, r.end - 1, size)),
        ),
    };
    // Streamed in pieces: memory stays one piece per request whatever the
    // object's size. A failure after the first piece cuts the answer short,
    // which the client sees as a short read of a known length.
    let reader = match range {
        Some(r) => reader.with_range(r).map_err(|e| from_tiering(e.into()))?,
        None => reader,
    };
    let length = reader.remaining();
    let gw_for_body = gw.clone();
    let body = futures::stream::unfold(Some(reader), move |reader| {
        let (gw, key) = (gw_for_body.clone(), key.clone());
        async move {
            let mut reader = reader?;
            match store_call(&gw, &key, reader.next()).await {
                Ok(Some(piece)) => {
                    gw.metrics
                        .bytes
                        .with_label_values(&["out", "store"])
                        .inc_by(piece.len() as u64);
                    Some((Ok(piece), Some(reader)))
                }
                Ok(None) => None,
                Err(a) => {
                    tracing::warn!("a store read broke off: {}", a.reason);
                    Some((Err(std::io::Error::other(a.reason)), None))
                }
            }
        }
    });
    let mut resp = (status, Body::from_stream(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, header::HeaderValue::from(length));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    resp.headers_mut().insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    if let Some(cr) = content_range {
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            header::HeaderValue::from_str(&cr).expect("ascii"),
        );
    }
    Ok(resp)
}

/// Most ranges one `ranges` request may ask for, and most bytes its answer
/// may hold (it is held in memory while it is served).
const MAX_RANGES: usize = 4096;
const MAX_RANGES_BYTES: u64 = 16 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RangesAsked {
    /// Half-open `[start, end)` byte ranges, each within the object.
    ranges: Vec<(u64, u64)>,
}

/// Many ranges of one store object in one request: the heads of a
/// segment's members, which a restore's first pass reads. The answer is
/// their bytes one after another; the caller knows each length.
async fn store_ranges(
    State(gw): State<Arc<Gateway>>,
    Path((fs, key)): Path<(String, String)>,
    req: Request,
) -> Result<Response, Answer> {
    let bytes = body_under(&gw, req, Action::ReadStore, &fs).await?;
    cbfs_store::validate_key(&key).map_err(|e| answer(400, "bad_key", e.to_string()))?;
    let asked: RangesAsked = serde_json::from_slice(&bytes).map_err(|e| {
        answer(
            400,
            "bad_request",
            format!("the body is not {{\"ranges\": [[start, end], ...]}}: {e}"),
        )
    })?;
    if asked.ranges.len() > MAX_RANGES {
        return Err(answer(
            400,
            "too_many_ranges",
            format!(
                "{} ranges asked for, at most {MAX_RANGES} per request",
                asked.ranges.len()
            ),
        ));
    }
    let served = gw.served(&fs).expect("guarded");
    let store = &served.agent.store;
    let size = store_call(&gw, &key, store.head(&key))
        .await?
        .ok_or_else(|| answer(404, "missing_object", format!("no object `{key}`")))?
        .size;
    let mut total = 0u64;
    for &(start, end) in &asked.ranges {
        if start >= end || end > size {
            return Err(answer(
                416,
                "bad_range",
                format!("range {start}..{end} is not within {size} bytes"),
            ));
        }
        total += end - start;
    }
    if total > MAX_RANGES_BYTES {
        return Err(answer(
            400,
            "too_many_ranges",
            format!("{total} bytes asked for, at most {MAX_RANGES_BYTES} per request"),
        ));
    }
    let ranges = asked.ranges.into_iter().map(|(a, b)| a..b).collect();
    let out = store_call(&gw, &key, store.get_ranges(&key, ranges)).await?;
    gw.metrics
        .bytes
        .with_label_values(&["out", "store"])
        .inc_by(out.len() as u64);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/octet-stream")],
        out,
    )
        .into_response())
}

async fn relay(
    gw: Arc<Gateway>,
    fs: String,
    node: usize,
    req: Request,
    what: &'static str,
) -> Result<Response, Answer> {
    let bytes = body_under(&gw, req, Action::Unlock, &fs).await?;
    let served = gw.served(&fs).expect("guarded");
    let url = served
        .config
        .nodes
        .get(node)
        .ok_or_else(|| answer(404, "unknown_node", format!("`{fs}` has no node {node}")))?
        .trim_end_matches('/')
        .to_owned();
    let started = std::time::Instant::now();
    let request = match what {
        "node" => gw.http.get(format!("{url}/v1/node")),
        _ => gw
            .http
            .post(format!("{url}/v1/reencrypt"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(bytes),
    };
    let response = request.send().await.map_err(|e| Answer {
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "node_unavailable",
        reason: format!("node {node} ({url}) is unreachable: {e}"),
        retry_after: Some(5),
    })?;
    let status =
        StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let limit = gw.config().config.limits.max_body;
    // Read up to the limit, never the whole answer first: a node that
    // answers without end must not fill the gateway's memory.
    let body =
        cbfs_client::read_limited(response, limit)
            .await
            .map_err(|problem| match problem {
                cbfs_client::NodeProblem::Down(e) => Answer {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "node_unavailable",
                    reason: format!("node {node} ({url}) broke off: {e}"),
                    retry_after: Some(5),
                },
                _ => answer(
                    502,
                    "too_large",
                    format!("node {node} answered more than {limit} bytes"),
                ),
            })?;
    gw.metrics
        .node_latency
        .with_label_values(&[&node.to_string()])
        .observe(started.elapsed().as_secs_f64());
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn node_count(
    State(gw): State<Arc<Gateway>>,
    Path(fs): Path<String>,
    req: Request,
) -> Result<Response, Answer> {
    let (parts, _) = req.into_parts();
    guard(
        &gw,
        &Caller::of(&parts),
        None,
        Action::Unlock,
        Some(&fs),
        "/",
    )?;
    let served = gw.served(&fs).expect("guarded");
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "nodes": served.config.nodes.len() }),
    ))
}

async fn node_info(
    State(gw): State<Arc<Gateway>>,
    Path((fs, node)): Path<(String, usize)>,
    req: Request,
) -> Result<Response, Answer> {
    relay(gw, fs, node, req, "node").await
}

async fn node_reencrypt(
    State(gw): State<Arc<Gateway>>,
    Path((fs, node)): Path<(String, usize)>,
    req: Request,
) -> Result<Response, Answer> {
    relay(gw, fs, node, req, "reencrypt").await
}

async fn reload(State(gw): State<Arc<Gateway>>, req: Request) -> Result<Response, Answer> {
    let (parts, body) = req.into_parts();
    let (_, hash) = read_body(&gw, body).await?;
    guard(
        &gw,
        &Caller::of(&parts),
        Some(&hash),
        Action::Admin,
        None,
        "/",
    )?;
    let insecure = INSECURE_HTTP.load(std::sync::atomic::Ordering::Relaxed);
    let notes = gw
        .reload(insecure)
        .map_err(|e| answer(400, "bad_config", e.to_string()))?;
    Ok(json(
        StatusCode::OK,
        &serde_json::json!({ "reloaded": notes }),
    ))
}

/// Whether the gateway was started with `--insecure-http` (a reload keeps it).
pub static INSECURE_HTTP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

async fn not_found() -> Answer {
    answer(404, "not_found", "no such endpoint (see /v1/openapi.json)")
}

/// Counts every answer by route and status.
async fn count(
    State(gw): State<Arc<Gateway>>,
    matched: Option<axum::extract::MatchedPath>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let route = matched.map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let resp = next.run(req).await;
    gw.metrics
        .requests
        .with_label_values(&[&route, resp.status().as_str()])
        .inc();
    resp
}

/// Every route, with the request-count layer and the concurrency bound.
pub fn router(gw: Arc<Gateway>) -> Router {
    let limit = gw.config().config.limits.max_concurrent.max(1);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/fs", get(list_fs))
        .route("/v1/fs/{fs}/jobs", post(start_job).get(list_jobs))
        .route("/v1/fs/{fs}/jobs/{id}", get(get_job).delete(cancel_job))
        .route("/v1/fs/{fs}/push", put(push))
        .route("/v1/fs/{fs}/snapshots", get(snapshots))
        .route("/v1/fs/{fs}/ls", get(ls))
        .route("/v1/fs/{fs}/recall", post(crate::recall::start_recall))
        .route("/v1/fs/{fs}/recall/{id}", get(crate::recall::get_recall))
        .route("/v1/fs/{fs}/store", get(store_list))
        .route("/v1/fs/{fs}/store/{*key}", get(store_get).head(store_get))
        .route("/v1/fs/{fs}/ranges/{*key}", post(store_ranges))
        .route("/v1/fs/{fs}/nodes", get(node_count))
        .route("/v1/fs/{fs}/nodes/{node}/v1/node", get(node_info))
        .route(
            "/v1/fs/{fs}/nodes/{node}/v1/reencrypt",
            post(node_reencrypt),
        )
        .route("/v1/admin/reload", post(reload))
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(gw.clone(), count))
        .layer(tower::limit::ConcurrencyLimitLayer::new(limit))
        .with_state(gw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loaded;
    use tower::ServiceExt as _;

    /// The `.route(...)` calls of [`router`], read from this file: each
    /// path (OpenAPI spelling) with its methods.
    fn routed() -> std::collections::BTreeSet<(String, String)> {
        let source = include_str!("server.rs");
        let body = &source[source.find("pub fn router(").expect("router")..];
        let body = &body[..body.find(".fallback(").expect("fallback")];
        let mut out = std::collections::BTreeSet::new();
        for call in body.split(".route(").skip(1) {
            let call: String = call.split_whitespace().collect();
            let path = call.split('"').nth(1).expect("a path").replace("{*", "{");
            let methods = &call[call.find(',').expect("handlers") + 1..];
            for m in ["get", "post", "put", "delete", "head"] {
                if methods.starts_with(&format!("{m}(")) || methods.contains(&format!(".{m}(")) {
                    out.insert((m.to_owned(), path.clone()));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn the_openapi_document_and_the_router_name_the_same_routes() {
        let documented: std::collections::BTreeSet<(String, String)> = crate::openapi::ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(
            documented,
            routed(),
            "the OpenAPI table and the router differ"
        );
        let doc = crate::openapi::document();
        for r in crate::openapi::ROUTES {
            assert!(
                doc["paths"][r.path][r.method].is_object(),
                "{} {} is not in the served document",
                r.method,
                r.path
            );
        }

        // Every documented route reaches a handler (not the fallback's 404
        // or a 405), on a real router.
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, "listen = \"127.0.0.1:0\"\nstate = \"state\"\n").unwrap();
        let loaded = Loaded::read(&config, false).unwrap();
        let gw = Gateway::open(loaded, cbfs_core::system_clock()).unwrap();
        let app = router(gw);
        for r in crate::openapi::ROUTES {
            let path = r
                .path
                .replace("{fs}", "fs1")
                .replace("{id}", "0123")
                .replace("{key}", "segments/x")
                .replace("{node}", "0");
            let request = axum::http::Request::builder()
                .method(r.method.to_uppercase().as_str())
                .uri(&path)
                .body(Body::empty())
                .unwrap();
            let answer = app.clone().oneshot(request).await.unwrap();
            let status = answer.status();
            let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&body);
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{} {path}",
                r.method
            );
            assert!(
                !text.contains("\"not_found\""),
                "{} {path} fell through to the fallback: {text}",
                r.method
            );
        }
    }
}
