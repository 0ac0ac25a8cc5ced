//! What a node decides, apart from HTTP: grant uploads, revocations and
//! re-encryption requests, each checked, decided and audited.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cbfs_core::umbral_pre::{Capsule, VerifiedCapsuleFrag, VerifiedKeyFrag};
use cbfs_core::{
    Grant, KeySource, Keyset, Revocation, ScopeLabel, SealedGrant, Unlock, UserName, fingerprint,
    public_key_hex,
};

use crate::audit::{AuditLog, Event, audit_dir};
use crate::error::Result;
use crate::identity::NodeIdentity;
use crate::metrics::Metrics;
use crate::policy::{Policies, PolicySource, Question};
use crate::store::Store;
use crate::wire::{
    CFRAGS_FORMAT, Cfrags, GrantStored, NODE_FORMAT, NodeInfo, REENCRYPT_FORMAT, RevokeDone,
    SignedReencrypt, WIRE_VERSION, check_path, decode_capsule, encode_cfrag,
};

/// The limits a node enforces. Every one is a `serve` option.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Most capsules in one re-encryption request.
    pub max_batch: usize,
    /// Re-encryption requests per minute per user (sustained).
    pub rate_per_minute: u32,
    /// Re-encryption requests a user may make at once before the rate applies.
    pub burst: u32,
    /// Longest a request may take, body upload included.
    pub request_timeout: Duration,
    /// How far a request's timestamp may be from the node's clock.
    pub clock_skew: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body: 16 << 20,
            max_batch: 10_000,
            rate_per_minute: 600,
            burst: 60,
            request_timeout: Duration::from_secs(120),
            clock_skew: Duration::from_secs(300),
        }
    }
}

/// How to open a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The data folder: key, database, audit log.
    pub data: PathBuf,
    /// The file system's public keyset (for the administrator's key).
    pub keyset: PathBuf,
    /// Where the policies come from.
    pub policies: PolicySource,
    /// The node's key source (default `file:DATA/node.key`, made if missing).
    pub node_key: Option<KeySource>,
    /// The limits.
    pub limits: Limits,
}

/// A refusal: the HTTP status, a stable code and a reason for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Stable code (see [`crate::wire::ErrorBody`]).
    pub code: &'static str,
    /// Why.
    pub reason: String,
}

impl Refusal {
    pub(crate) fn new(status: u16, code: &'static str, reason: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            reason: reason.into(),
        }
    }
    fn internal(e: impl std::fmt::Display) -> Self {
        Refusal::new(500, "internal", format!("the node failed: {e}"))
    }
}

type GrantKey = (ScopeLabel, UserName);

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A running node's state.
pub struct Node {
    identity: NodeIdentity,
    keyset: Keyset,
    store: Store,
    grants: RwLock<HashMap<GrantKey, Arc<Grant>>>,
    policies: ArcSwap<Policies>,
    policy_source: PolicySource,
    audit: Mutex<AuditLog>,
    limits: Limits,
    rate: Mutex<HashMap<UserName, Bucket>>,
    nonces: Mutex<()>,
    metrics: Metrics,
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn field(value: &impl std::fmt::Display) -> Option<String> {
    Some(value.to_string())
}

impl Node {
    /// Opens the node: its key (made on first use when it is the default
    /// `DATA/node.key`), keyset, database, grants, policies and audit log.
    pub fn open(config: NodeConfig) -> Result<Self> {
        let unlock = Unlock::from_env();
        let identity = match &config.node_key {
            Some(source) => NodeIdentity::load(&config.data, Some(source), &unlock)?,
            None => NodeIdentity::init(&config.data, None, &unlock)?.0,
        };
        let keyset = Keyset::load(&config.keyset)?;
        let policies = Policies::load_from(&config.policies)?;
        let audit = AuditLog::open(&audit_dir(&config.data))?;
        let store = Store::open(&config.data.join("db"))?;
        let node = Node {
            identity,
            keyset,
            store,
            grants: RwLock::new(HashMap::new()),
            policies: ArcSwap::from_pointee(policies),
            policy_source: config.policies,
            audit: Mutex::new(audit),
            limits: config.limits,
            rate: Mutex::new(HashMap::new()),
            nonces: Mutex::new(()),
            metrics: Metrics::new(),
        };
        node.load_grants()?;
        let mut event = Event::new(
            "start",
            true,
            format!(
                "node {} started for file system `{}` with {} grants and {}",
                fingerprint(node.identity.public_key()),
                node.keyset.fs(),
                node.grants.read().expect("lock").len(),
                node.policies.load().source()
            ),
        );
        event.policies = node.policies.load().ids();
        node.audit(&event)?;
        Ok(node)
    }

    fn load_grants(&self) -> Result<()> {
        let sk = self.identity.secret_key();
        let admin = self.keyset.admin_verifying_key();
        let mut grants = self.grants.write().expect("lock");
        for (key, sealed) in self.store.grants()? {
            let grant =
                SealedGrant::from_bytes(&sealed, &key).and_then(|s| s.open(&sk, admin, &key));
            match grant {
                Ok(grant) => {
                    grants.insert(
                        (grant.scope().clone(), grant.user().clone()),
                        Arc::new(grant),
                    );
                }
                // A grant this node cannot open is useless here; say so, keep serving the rest.
                Err(e) => tracing::error!("skipping stored grant {key}: {e}"),
            }
        }
        self.metrics.grants.set(grants.len() as i64);
        Ok(())
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// How many grants the node holds.
    pub fn grant_count(&self) -> usize {
        self.grants.read().expect("lock").len()
    }

    /// The ids of the policies in force.
    pub fn policy_ids(&self) -> Vec<String> {
        self.policies.load().ids()
    }

    /// What `GET /v1/node` says.
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            format: NODE_FORMAT.into(),
            version: WIRE_VERSION,
            public_key: public_key_hex(self.identity.public_key()),
            fingerprint: fingerprint(self.identity.public_key()),
            fs: self.keyset.fs().to_string(),
            admin_fingerprint: fingerprint(self.keyset.admin_verifying_key()),
        }
    }

    fn audit(&self, event: &Event) -> Result<()> {
        self.audit.lock().expect("audit lock").append(event)
    }

    /// Audits a decision, counts it, and turns an audit failure into a
    /// refusal: nothing is released that was not logged.
    fn decided<T>(&self, mut event: Event, outcome: Result<T, Refusal>) -> Result<T, Refusal> {
        let (allowed, code) = match &outcome {
            Ok(_) => (true, "ok"),
            Err(r) => (false, r.code),
        };
        event.decision = if allowed { "allow" } else { "deny" }.into();
        if let Err(r) = &outcome {
            event.code = Some(r.code.to_owned());
            event.reason = r.reason.clone();
        }
        self.metrics
            .decisions
            .with_label_values(&[event.event.as_str(), event.decision.as_str(), code])
            .inc();
        if allowed {
            tracing::info!(
                event = %event.event, user = ?event.user, scope = ?event.scope, path = ?event.path,
                capsules = ?event.capsules, "allow: {}", event.reason
            );
        } else {
            tracing::warn!(
                event = %event.event, user = ?event.user, scope = ?event.scope, path = ?event.path,
                capsules = ?event.capsules, code, "deny: {}", event.reason
            );
        }
        if let Err(e) = self.audit(&event) {
            tracing::error!("{e}");
            return Err(Refusal::internal("it could not write its audit log"));
        }
        outcome
    }

    /// Re-reads the policies; on failure the old ones stay in force.
    pub fn reload_policies(&self) -> Result<Vec<String>> {
        match Policies::load_from(&self.policy_source) {
            Ok(policies) => {
                let ids = policies.ids();
                self.policies.store(Arc::new(policies));
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                let mut event = Event::new(
                    "policy-reload",
                    true,
                    format!("reloaded {}", self.policy_source),
                );
                event.policies = ids.clone();
                self.audit(&event)?;
                Ok(ids)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                self.audit(&Event::new(
                    "policy-reload",
                    false,
                    format!("kept the policies in force: {e}"),
                ))?;
                Err(e)
            }
        }
    }

    /// Records the node's stop in the audit log.
    pub fn stopped(&self) -> Result<()> {
        self.audit(&Event::new("stop", true, "the node stopped"))
    }

    /// Forgets nonces old enough to be refused as stale anyway.
    pub fn purge_nonces(&self) -> Result<usize> {
        let _guard = self.nonces.lock().expect("nonce lock");
        let horizon = 2 * self.limits.clock_skew.as_secs() as i64 + 60;
        self.store.purge_nonces(now_unix() - horizon)
    }

    /// `POST /v1/grants`: stores a grant sealed for this node.
    pub fn upload(&self, body: &[u8]) -> Result<GrantStored, Refusal> {
        let mut event = Event::new("grant", false, "");
        let outcome = self.try_upload(body, &mut event);
        self.decided(event, outcome)
    }

    fn try_upload(&self, body: &[u8], event: &mut Event) -> Result<GrantStored, Refusal> {
        let bad = |reason: String| Refusal::new(403, "bad_grant", reason);
        let sealed = SealedGrant::from_bytes(body, "uploaded grant")
            .map_err(|e| Refusal::new(400, "bad_grant", e.to_string()))?;
        if sealed.node() != self.identity.public_key() {
            return Err(Refusal::new(
                403,
                "wrong_node",
                format!(
                    "the grant is sealed for node {}, and this is node {}",
                    fingerprint(sealed.node()),
                    fingerprint(self.identity.public_key())
                ),
            ));
        }
        let grant = sealed
            .open(
                &self.identity.secret_key(),
                self.keyset.admin_verifying_key(),
                "uploaded grant",
            )
            .map_err(|e| bad(e.to_string()))?;
        event.user = field(grant.user());
        event.scope = field(grant.scope());
        if grant.fs() != self.keyset.fs() {
            return Err(bad(format!(
                "the grant is for file system `{}`, and this node serves `{}`",
                grant.fs(),
                self.keyset.fs()
            )));
        }
        if let Some(pk) = self.keyset.scope(grant.scope())
            && pk != grant.scope_public_key()
        {
            return Err(bad(format!(
                "the grant's key of scope `{}` is not the one in the node's keyset",
                grant.scope()
            )));
        }
        if grant.is_expired(time::OffsetDateTime::now_utc()) {
            return Err(Refusal::new(
                403,
                "expired",
                format!(
                    "the delegation expired at {}",
                    grant.expires().unwrap_or("?")
                ),
            ));
        }
        let key = (grant.scope().clone(), grant.user().clone());
        if let Some(revocation) = self.revocation(&key.0, &key.1)?
            && revocation.covers(&grant)
        {
            return Err(Refusal::new(
                403,
                "revoked",
                format!(
                    "the delegation was revoked at {} and this grant was issued at {}; make a new delegation",
                    revocation.revoked(),
                    grant.issued()
                ),
            ));
        }
        let mut grants = self.grants.write().expect("lock");
        if let Some(held) = grants.get(&key) {
            let older = |g: &Grant| cbfs_core::parse_time(g.issued()).ok();
            if older(&grant) < older(held) {
                return Err(Refusal::new(
                    409,
                    "stale_grant",
                    format!(
                        "the node holds a newer grant of this scope for this user (issued {}, this one {})",
                        held.issued(),
                        grant.issued()
                    ),
                ));
            }
        }
        self.store
            .put_grant(&key.0, &key.1, body)
            .map_err(Refusal::internal)?;
        let stored = GrantStored {
            scope: grant.scope().to_string(),
            user: grant.user().to_string(),
            share: grant.share(),
            threshold: grant.threshold(),
            shares: grant.shares(),
            expires: grant.expires().map(str::to_owned),
        };
        event.reason = format!(
            "stored share {} of {} ({} needed), issued {}, {}",
            grant.share(),
            grant.shares(),
            grant.threshold(),
            grant.issued(),
            grant
                .expires()
                .map(|e| format!("expires {e}"))
                .unwrap_or_else(|| "no expiry".into())
        );
        grants.insert(key, Arc::new(grant));
        self.metrics.grants.set(grants.len() as i64);
        Ok(stored)
    }

    fn revocation(
        &self,
        scope: &ScopeLabel,
        user: &UserName,
    ) -> Result<Option<Revocation>, Refusal> {
        let Some(bytes) = self
            .store
            .revocation(scope, user)
            .map_err(Refusal::internal)?
        else {
            return Ok(None);
        };
        Revocation::from_bytes(
            &bytes,
            "stored revocation",
            self.keyset.admin_verifying_key(),
        )
        .map(Some)
        .map_err(Refusal::internal)
    }

    /// `POST /v1/revoke`: deletes a user's grant of a scope, and refuses
    /// it from then on.
    pub fn revoke(&self, body: &[u8]) -> Result<RevokeDone, Refusal> {
        let mut event = Event::new("revoke", false, "");
        let outcome = self.try_revoke(body, &mut event);
        self.decided(event, outcome)
    }

    fn try_revoke(&self, body: &[u8], event: &mut Event) -> Result<RevokeDone, Refusal> {
        let revocation =
            Revocation::from_bytes(body, "revocation", self.keyset.admin_verifying_key())
                .map_err(|e| Refusal::new(403, "bad_revocation", e.to_string()))?;
        let key = (revocation.scope().clone(), revocation.user().clone());
        event.user = field(&key.1);
        event.scope = field(&key.0);
        let mut grants = self.grants.write().expect("lock");
        // Keep the latest revocation: an older one replayed must not shorten it.
        let stored = self
            .store
            .revocation(&key.0, &key.1)
            .map_err(Refusal::internal)?;
        let held_revocation = match &stored {
            Some(bytes) => Some(
                Revocation::from_bytes(
                    bytes,
                    "stored revocation",
                    self.keyset.admin_verifying_key(),
                )
                .map_err(Refusal::internal)?,
            ),
            None => None,
        };
        let (latest, record) = match (held_revocation, stored) {
            (Some(held), Some(bytes)) if held.revoked_at() > revocation.revoked_at() => {
                (held, bytes)
            }
            _ => (revocation, body.to_vec()),
        };
        let held = grants.get(&key).cloned();
        let delete = held.as_ref().is_some_and(|g| latest.covers(g));
        self.store
            .revoke(&key.0, &key.1, &record, delete)
            .map_err(Refusal::internal)?;
        if delete {
            grants.remove(&key);
        }
        self.metrics.grants.set(grants.len() as i64);
        event.reason = match (&held, delete) {
            (Some(g), true) => format!(
                "revoked as of {}: deleted share {} ({} of {})",
                latest.revoked(),
                g.share(),
                g.threshold(),
                g.shares()
            ),
            (Some(g), false) => format!(
                "recorded; kept the grant issued {}, which is newer than the revocation",
                g.issued()
            ),
            (None, _) => format!("revoked as of {}; the node held no grant", latest.revoked()),
        };
        let deleted = delete.then_some(held).flatten();
        Ok(RevokeDone {
            revoked: true,
            deleted: deleted.is_some(),
            threshold: deleted.as_ref().map(|g| g.threshold()),
            shares: deleted.as_ref().map(|g| g.shares()),
        })
    }

    fn check_rate(&self, user: &UserName) -> Result<(), Refusal> {
        let rate = f64::from(self.limits.rate_per_minute) / 60.0;
        let burst = f64::from(self.limits.burst.max(1));
        let mut buckets = self.rate.lock().expect("rate lock");
        let now = Instant::now();
        let bucket = buckets.entry(user.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = if rate > 0.0 {
                ((1.0 - bucket.tokens) / rate).ceil()
            } else {
                60.0
            };
            Err(Refusal::new(
                429,
                "rate_limited",
                format!(
                    "user `{user}` is over {} requests per minute; retry in {wait} s",
                    self.limits.rate_per_minute
                ),
            ))
        }
    }

    /// `POST /v1/reencrypt`: checks and decides a user's signed request, and
    /// re-encrypts its capsules.
    pub fn reencrypt(&self, body: &[u8]) -> Result<Cfrags, Refusal> {
        let started = Instant::now();
        let mut event = Event::new("reencrypt", false, "");
        let outcome = self.try_reencrypt(body, &mut event);
        let outcome = self.decided(event, outcome);
        let decision = if outcome.is_ok() { "allow" } else { "deny" };
        self.metrics
            .batch_seconds
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    fn try_reencrypt(&self, body: &[u8], event: &mut Event) -> Result<Cfrags, Refusal> {
        let bad = |reason: String| Refusal::new(400, "bad_request", reason);
        let signed: SignedReencrypt = serde_json::from_slice(body)
            .map_err(|e| bad(format!("not a re-encryption request: {e}")))?;
        let req = &signed.request;
        event.user = field(&req.user);
        event.scope = field(&req.scope);
        event.path = Some(req.path.clone());
        event.capsules = Some(req.capsules.len() as u64);
        if req.format != REENCRYPT_FORMAT || req.version != WIRE_VERSION {
            return Err(bad(format!(
                "unsupported format `{}` version {}",
                req.format, req.version
            )));
        }
        if req.node != public_key_hex(self.identity.public_key()) {
            return Err(Refusal::new(
                400,
                "wrong_node",
                format!(
                    "the request is addressed to another node; this is node {}",
                    fingerprint(self.identity.public_key())
                ),
            ));
        }
        if req.capsules.is_empty() {
            return Err(bad("the request holds no capsules".into()));
        }
        if req.capsules.len() > self.limits.max_batch {
            return Err(Refusal::new(
                413,
                "too_large",
                format!(
                    "the request holds {} capsules; this node takes at most {} per request",
                    req.capsules.len(),
                    self.limits.max_batch
                ),
            ));
        }
        check_path(&req.path).map_err(|e| bad(e.into()))?;
        let key = (req.scope.clone(), req.user.clone());
        let grant = self.grants.read().expect("lock").get(&key).cloned();
        let Some(grant) = grant else {
            if let Some(revocation) = self.revocation(&key.0, &key.1)? {
                return Err(Refusal::new(
                    403,
                    "revoked",
                    format!(
                        "the delegation of scope `{}` to `{}` was revoked at {}",
                        key.0,
                        key.1,
                        revocation.revoked()
                    ),
                ));
            }
            return Err(Refusal::new(
                403,
                "no_delegation",
                format!(
                    "this node holds no delegation of scope `{}` to `{}`",
                    key.0, key.1
                ),
            ));
        };
        if !signed.verify(grant.user_verifying_key()) {
            return Err(Refusal::new(
                401,
                "bad_signature",
                format!(
                    "the signature does not verify with the signing key of `{}` ({}): forged or altered",
                    key.1,
                    fingerprint(grant.user_verifying_key())
                ),
            ));
        }
        let now = now_unix();
        let skew = self.limits.clock_skew.as_secs() as i64;
        if (req.timestamp - now).abs() > skew {
            return Err(Refusal::new(
                401,
                "stale_request",
                format!(
                    "the request is dated {} s from the node's clock; at most {skew} s is accepted (check the clocks)",
                    req.timestamp - now
                ),
            ));
        }
        if req.nonce.len() != 32 || !req.nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the nonce must be 16 bytes in hex".into()));
        }
        {
            let _guard = self.nonces.lock().expect("nonce lock");
            let fresh = self
                .store
                .record_nonce(&req.user, &req.nonce.to_ascii_lowercase(), req.timestamp)
                .map_err(Refusal::internal)?;
            if !fresh {
                return Err(Refusal::new(
                    409,
                    "replayed",
                    "this request (its nonce) was already seen: replays are refused",
                ));
            }
        }
        let now_t = time::OffsetDateTime::now_utc();
        if grant.is_expired(now_t) {
            return Err(Refusal::new(
                403,
                "expired",
                format!(
                    "the delegation of scope `{}` to `{}` expired at {}",
                    key.0,
                    key.1,
                    grant.expires().unwrap_or("?")
                ),
            ));
        }
        self.check_rate(&req.user)?;
        let capsules = req
            .capsules
            .iter()
            .enumerate()
            .map(|(i, c)| decode_capsule(c).map_err(|e| bad(format!("capsule {i}: {e}"))))
            .collect::<Result<Vec<Capsule>, Refusal>>()?;
        let verdict = self.policies.load().decide(&Question {
            user: &req.user,
            scope: &req.scope,
            path: &req.path,
            count: capsules.len(),
            time: now,
            live_delegation: true,
        });
        event.policies = verdict.policies.clone();
        if !verdict.allowed {
            return Err(Refusal::new(
                403,
                "denied",
                format!("policy: {}", verdict.reason),
            ));
        }
        let cfrags = reencrypt_all(&capsules, grant.kfrag());
        self.metrics.capsules.inc_by(cfrags.len() as u64);
        event.reason = format!(
            "policy: {}; re-encrypted with share {}",
            verdict.reason,
            grant.share()
        );
        Ok(Cfrags {
            format: CFRAGS_FORMAT.into(),
            version: WIRE_VERSION,
            grant_issued: grant.issued().to_owned(),
            threshold: grant.threshold(),
            cfrags: cfrags.iter().map(encode_cfrag).collect(),
        })
    }
}

/// Re-encrypts every capsule, on every core.
fn reencrypt_all(capsules: &[Capsule], kfrag: &VerifiedKeyFrag) -> Vec<VerifiedCapsuleFrag> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = capsules.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = capsules
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|c| cbfs_core::umbral_pre::reencrypt(c, kfrag.clone()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("re-encryption does not panic"))
            .collect()
    })
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
