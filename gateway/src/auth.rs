//! Who asks: a request signed with the caller's cbfs signing key (the
//! scheme of `cbfs_wire::gateway`), or a client certificate the
//! configuration maps to a caller. Replays and stale timestamps are refused.

use std::collections::HashMap;
use std::sync::Mutex;

use cbfs_wire::gateway::{Authorization, CONTENT_SHA256_HEADER, SignedParts, UNSIGNED_PAYLOAD};

use crate::config::{Loaded, Principal};

/// A refusal before anything else is decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    /// HTTP status.
    pub status: u16,
    /// Stable code.
    pub code: &'static str,
    /// Why.
    pub reason: String,
}

impl Refused {
    pub(crate) fn new(status: u16, code: &'static str, reason: impl Into<String>) -> Self {
        Refused {
            status,
            code,
            reason: reason.into(),
        }
    }
}

/// The nonces seen within the clock window, and the window itself.
pub struct Replays {
    seen: Mutex<HashMap<String, i64>>,
    /// No request signed before the gateway started is accepted: the nonces
    /// seen before a restart are not kept.
    started: i64,
}

impl Replays {
    /// An empty cache for a gateway started at `now`.
    pub fn new(now: i64) -> Self {
        Replays {
            seen: Mutex::new(HashMap::new()),
            started: now,
        }
    }

    /// Records a nonce; false if it was seen. Forgets nonces too old to be
    /// accepted anyway.
    fn fresh(&self, user: &str, nonce: &str, ts: i64, horizon: i64) -> bool {
        let mut seen = self.seen.lock().expect("replay cache");
        if seen.len() > 10_000 {
            seen.retain(|_, t| *t >= horizon);
        }
        seen.insert(format!("{user}/{nonce}"), ts).is_none()
    }
}

/// What a request brings to be authenticated.
pub struct Presented<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The path and query, as sent.
    pub path_and_query: &'a str,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
    /// The content hash header.
    pub content_sha256: Option<&'a str>,
    /// The SHA-256 of the body, when the body was read ahead (hex).
    pub body_sha256: Option<&'a str>,
    /// The SHA-256 of the client certificate, when there is one (hex).
    pub client_cert: Option<&'a str>,
}

/// Authenticates a request, or says why not.
pub fn authenticate(
    config: &Loaded,
    replays: &Replays,
    now: i64,
    req: &Presented<'_>,
) -> Result<Principal, Refused> {
    if let Some(fp) = req.client_cert
        && let Some(user) = config.config.clients.get(fp)
    {
        return Ok(config.principals[user].clone());
    }
    let Some(header) = req.authorization else {
        return Err(Refused::new(
            401,
            "unauthenticated",
            "the request is not signed (Authorization: cbfs-sig ...) and carries no known client certificate",
        ));
    };
    let auth = Authorization::parse(header).map_err(|e| Refused::new(401, "bad_signature", e))?;
    let Some(who) = config.principals.get(&auth.user) else {
        return Err(Refused::new(
            401,
            "unauthenticated",
            format!(
                "the request does not verify with a key this gateway knows for `{}`",
                auth.user
            ),
        ));
    };
    let Some(key) = &who.verifying_key else {
        return Err(Refused::new(
            401,
            "unauthenticated",
            format!(
                "user `{}` authenticates with a client certificate only",
                auth.user
            ),
        ));
    };
    let content = req.content_sha256.unwrap_or("");
    match (content, req.body_sha256) {
        (UNSIGNED_PAYLOAD, None) => {}
        (UNSIGNED_PAYLOAD, Some(_)) => {
            return Err(Refused::new(
                400,
                "bad_request",
                format!("{CONTENT_SHA256_HEADER}: {UNSIGNED_PAYLOAD} is only for streamed bodies"),
            ));
        }
        (given, Some(actual)) if given.eq_ignore_ascii_case(actual) => {}
        (_, Some(_)) => {
            return Err(Refused::new(
                401,
                "bad_signature",
                format!("the body does not hash to {CONTENT_SHA256_HEADER}"),
            ));
        }
        (_, None) => {
            return Err(Refused::new(
                400,
                "bad_request",
                format!("a streamed body needs {CONTENT_SHA256_HEADER}: {UNSIGNED_PAYLOAD}"),
            ));
        }
    }
    let parts = SignedParts {
        method: req.method,
        path_and_query: req.path_and_query,
        timestamp: auth.timestamp,
        nonce: &auth.nonce,
        content_sha256: content,
    };
    if !auth.verify(key, &parts) {
        return Err(Refused::new(
            401,
            "bad_signature",
            format!(
                "the signature does not verify with the signing key of `{}`: forged or altered",
                auth.user
            ),
        ));
    }
    let skew = i64::try_from(config.config.limits.clock_skew_secs).unwrap_or(i64::MAX / 4);
    let off = auth.timestamp.checked_sub(now).and_then(i64::checked_abs);
    if off.is_none_or(|o| o > skew) {
        return Err(Refused::new(
            401,
            "stale_request",
            format!(
                "the request is dated {} (Unix time), the gateway's clock says {now}; at most {skew} s apart is accepted",
                auth.timestamp
            ),
        ));
    }
    if auth.timestamp < replays.started {
        return Err(Refused::new(
            401,
            "stale_request",
            "the request was signed before the gateway started; sign it again",
        ));
    }
    if !replays.fresh(
        &auth.user,
        &auth.nonce,
        auth.timestamp,
        now.saturating_sub(skew),
    ) {
        return Err(Refused::new(
            409,
            "replayed",
            "this request (its nonce) was already seen: replays are refused",
        ));
    }
    Ok(who.clone())
}
