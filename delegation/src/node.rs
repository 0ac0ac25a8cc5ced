//! What a node decides, apart from HTTP: grant uploads, revocations and
//! re-encryption requests, each checked, decided and audited.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use cbfs_core::umbral_pre::{Capsule, PublicKey};
use cbfs_core::{
    Clock, DelegationRecord, Grant, KeySource, Keyset, Revocation, ScopeLabel, SealedGrant,
    UserName, fingerprint, public_key_from_hex, public_key_hex,
};
use cbfs_wire::{
    CFRAGS_FORMAT, CFRAGS_VERSION, Cfrags, GrantStored, GrantUpload, NODE_FORMAT, NODE_VERSION,
    NodeInfo, REENCRYPT_FORMAT, REENCRYPT_VERSION, RevokeDone, SignedReencrypt, UPLOAD_FORMAT,
    UPLOAD_VERSION, check_path, decode_capsule, encode_cfrag, record_from_value,
};

use cbfs_wire::admin::{
    DELEGATIONS_FORMAT, Delegations, KEYSET_STORED_FORMAT, KeysetStored, LIST_FORMAT, LIST_VERSION,
    SignedList,
};

use crate::audit::{Event, SharedAuditLog, audit_dir};
use crate::error::Result;
use crate::identity::NodeIdentity;
use crate::metrics::Metrics;
use crate::policy::{Policies, PolicySource, Question};
use crate::store::Store;

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
    /// Requests per minute, from everyone together, that fail before they
    /// are authenticated (unknown user, bad signature, garbage): beyond
    /// this they are refused without an audit record each.
    pub unauthenticated_per_minute: u32,
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
            unauthenticated_per_minute: 120,
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
    /// Where the time comes from (expiry, request timestamps).
    pub clock: Arc<dyn Clock>,
}

/// A refusal: the HTTP status, a stable code and a reason for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// Stable code (see [`cbfs_wire::ErrorBody`]).
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

/// A share the node holds: the grant (with its kfrag) and the public record
/// of its delegation, which every answer carries.
struct Held {
    grant: Grant,
    record: DelegationRecord,
    /// The record as a JSON value, ready to go into answers.
    record_json: serde_json::Value,
}

/// A token bucket: `burst` requests at once, then `per_minute`.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64) -> Self {
        Bucket {
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token if there is one; otherwise the seconds until there is.
    fn take(&mut self, per_minute: u32, burst: f64) -> Result<(), f64> {
        let rate = f64::from(per_minute) / 60.0;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * rate).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if rate > 0.0 {
            Err(((1.0 - self.tokens) / rate).ceil())
        } else {
            Err(60.0)
        }
    }
}

/// The fate of one re-encryption answer, shared by the request's handler
/// and the blocking work that makes the answer: whichever comes first
/// decides whether the answer is sent (and audited as allowed) or dropped
/// on a timeout (and audited as refused). The audit log records what was
/// sent, never an answer nobody got.
#[derive(Clone, Debug, Default)]
pub struct Ticket(Arc<std::sync::atomic::AtomicU8>);

const TICKET_OPEN: u8 = 0;
const TICKET_SENT: u8 = 1;
const TICKET_DROPPED: u8 = 2;

impl Ticket {
    /// The work claims the answer for sending; false if the handler already
    /// gave up on it.
    fn claim(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(TICKET_OPEN, TICKET_SENT, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
            || self.0.load(Ordering::SeqCst) == TICKET_SENT
    }

    /// The handler gives up on the answer; false if the work already claimed
    /// it (then the answer is on its way and must be sent).
    pub fn drop_answer(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.0
            .compare_exchange(
                TICKET_OPEN,
                TICKET_DROPPED,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
            || self.0.load(Ordering::SeqCst) == TICKET_DROPPED
    }
}

/// A running node's state.
pub struct Node {
    identity: NodeIdentity,
    /// The newest keyset the node was given: from its `--keyset` file, or a
    /// newer one the administrator sent after a rotation (kept in the
    /// database).
    keyset: ArcSwap<Keyset>,
    store: Store,
    grants: RwLock<HashMap<GrantKey, Arc<Held>>>,
    /// Every user's request-verifying key, from the grants the node was
    /// given (kept after a revocation, so that a revoked user's requests
    /// are still authenticated, and refused as revoked).
    user_keys: RwLock<HashMap<UserName, PublicKey>>,
    policies: ArcSwap<Policies>,
    policy_source: PolicySource,
    audit: SharedAuditLog,
    limits: Limits,
    rate: Mutex<HashMap<UserName, Bucket>>,
    unauthenticated: Mutex<Bucket>,
    nonces: Mutex<()>,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
}

fn field(value: &impl std::fmt::Display) -> Option<String> {
    Some(value.to_string())
}

impl Node {
    /// Opens the node: its key (made on first use when it is the default
    /// `DATA/node.key`), keyset, database, grants, policies and audit log.
    pub fn open(config: NodeConfig) -> Result<Self> {
        let unlock = cbfs_keysource::unlock_from_env();
        let identity = match &config.node_key {
            Some(source) => NodeIdentity::load(&config.data, Some(source), &unlock)?,
            None => NodeIdentity::init(&config.data, None, &unlock)?.0,
        };
        let file_keyset = Keyset::load(&config.keyset)?;
        let policies = Policies::load_from(&config.policies)?;
        let audit = SharedAuditLog::open(&audit_dir(&config.data))?;
        let store = Store::open(&config.data.join("db"))?;
        let keyset = newer_stored_keyset(&store, &file_keyset).unwrap_or(file_keyset);
        let unauthenticated = Bucket::full(unauth_burst(&config.limits));
        let node = Node {
            identity,
            keyset: ArcSwap::from_pointee(keyset),
            store,
            grants: RwLock::new(HashMap::new()),
            user_keys: RwLock::new(HashMap::new()),
            policies: ArcSwap::from_pointee(policies),
            policy_source: config.policies,
            audit,
            limits: config.limits,
            rate: Mutex::new(HashMap::new()),
            unauthenticated: Mutex::new(unauthenticated),
            nonces: Mutex::new(()),
            metrics: Metrics::new(),
            clock: config.clock,
        };
        node.load_grants()?;
        let mut event = Event::new(
            "start",
            true,
            format!(
                "node {} started for file system `{}` with {} grants and {}",
                fingerprint(node.identity.public_key()),
                node.keyset.load().fs(),
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
        let keyset = self.keyset.load();
        // Grants of an administrator key that handed over since are kept
        // (to be listed for re-issuing) and refused when used.
        let admins = keyset.admin_history();
        let mut grants = self.grants.write().expect("lock");
        let records: HashMap<String, Vec<u8>> = self.store.records()?.into_iter().collect();
        for (key, sealed) in self.store.grants()? {
            let held = SealedGrant::from_bytes(&sealed, &key)
                .and_then(|s| {
                    let mut last = None;
                    for admin in admins.iter().rev() {
                        match s.open(&sk, admin, &key) {
                            Ok(g) => return Ok(g),
                            Err(e) => last = Some(e),
                        }
                    }
                    Err(last.expect("the history holds the current key"))
                })
                .map_err(|e| e.to_string())
                .and_then(|grant| {
                    let record_key = key.replacen("grant/", "record/", 1);
                    let bytes = records.get(&record_key).ok_or_else(|| {
                        "it has no delegation record (stored by an older node); delegate again"
                            .to_owned()
                    })?;
                    let value: serde_json::Value = serde_json::from_slice(bytes)
                        .map_err(|e| format!("its delegation record is not JSON: {e}"))?;
                    self.held(grant, value)
                });
            match held {
                Ok(held) => {
                    self.user_keys
                        .write()
                        .expect("lock")
                        .insert(held.grant.user().clone(), *held.grant.user_verifying_key());
                    grants.insert(
                        (held.grant.scope().clone(), held.grant.user().clone()),
                        Arc::new(held),
                    );
                }
                // A grant this node cannot open is useless here; say so, keep serving the rest.
                Err(e) => tracing::error!("skipping stored grant {key}: {e}"),
            }
        }
        for (user, hex) in self.store.user_keys()? {
            match (UserName::new(user.as_str()), public_key_from_hex(&hex)) {
                (Ok(name), Ok(key)) => {
                    self.user_keys
                        .write()
                        .expect("lock")
                        .entry(name)
                        .or_insert(key);
                }
                _ => tracing::error!("skipping the stored key of user {user}: malformed"),
            }
        }
        self.metrics.grants.set(grants.len() as i64);
        Ok(())
    }

    /// Pairs a grant with its delegation record, checking that the record
    /// is the administrator's and that both describe the same share.
    fn held(&self, grant: Grant, record_json: serde_json::Value) -> Result<Held, String> {
        let record = record_from_value(
            &record_json,
            "delegation record",
            grant.admin_verifying_key(),
        )?;
        let same = record.fs() == grant.fs()
            && record.scope() == grant.scope()
            && record.user() == grant.user()
            && record.user_public_key() == grant.user_public_key()
            && record.user_verifying_key() == grant.user_verifying_key()
            && record.scope_public_key() == grant.scope_public_key()
            && record.threshold() == grant.threshold()
            && record.shares() == grant.shares()
            && record.issued() == grant.issued()
            && record.expires() == grant.expires();
        if !same {
            return Err(
                "the delegation record and the grant describe different delegations".into(),
            );
        }
        if record.share_of(self.identity.public_key()) != Some(grant.share()) {
            return Err(format!(
                "the delegation record does not give share {} to this node ({})",
                grant.share(),
                fingerprint(self.identity.public_key())
            ));
        }
        Ok(Held {
            grant,
            record,
            record_json,
        })
    }

    /// Why a grant may not be used (or stored) under the node's keyset: an
    /// administrator key that handed over since, or a scope key version that
    /// was retired by a rotation, or one the keyset does not know.
    fn key_refusal(&self, grant: &Grant) -> Option<Refusal> {
        let keyset = self.keyset.load();
        if grant.admin_verifying_key() != keyset.admin_verifying_key() {
            return Some(Refusal::new(
                403,
                "stale_admin",
                format!(
                    "the delegation of scope `{}` to `{}` was issued by administrator key {}, which handed over to {}; the administrator must issue it again (cbfs-keytool delegate --reissue)",
                    grant.scope(),
                    grant.user(),
                    fingerprint(grant.admin_verifying_key()),
                    fingerprint(keyset.admin_verifying_key())
                ),
            ));
        }
        match keyset.find_scope_key(grant.scope_public_key()) {
            Some((label, version)) if &label == grant.scope() => {
                if keyset.is_retired(&label, version) {
                    Some(Refusal::new(
                        403,
                        "retired_key",
                        format!(
                            "the delegation of scope `{label}` to `{}` is for key version {version}, retired by a rotation (the current version is {}); the administrator must issue it again (cbfs-keytool delegate --reissue)",
                            grant.user(),
                            keyset.scope_version(&label).unwrap_or(version)
                        ),
                    ))
                } else {
                    None
                }
            }
            _ if keyset.scope(grant.scope()).is_none() => None,
            _ => Some(Refusal::new(
                403,
                "bad_grant",
                format!(
                    "the grant's key of scope `{}` is not one in the node's keyset",
                    grant.scope()
                ),
            )),
        }
    }

    /// `PUT /v1/keyset`: takes a newer keyset of the same file system, signed
    /// by the administrator the node trusts (or a key it handed over to).
    /// From then on, retired scope keys and a handed-over administrator key
    /// are refused.
    pub fn update_keyset(&self, body: &[u8]) -> Result<KeysetStored, Refusal> {
        let mut event = Event::new("keyset", false, "");
        let outcome = self.try_update_keyset(body, &mut event);
        self.decided(event, outcome, None)
    }

    fn try_update_keyset(&self, body: &[u8], event: &mut Event) -> Result<KeysetStored, Refusal> {
        let bad = |reason: String| Refusal::new(403, "bad_keyset", reason);
        let new = Keyset::from_bytes(body, "uploaded keyset").map_err(|e| bad(e.to_string()))?;
        let current = self.keyset.load();
        if new.fs() != current.fs() {
            return Err(bad(format!(
                "the keyset is of file system `{}`, and this node serves `{}`",
                new.fs(),
                current.fs()
            )));
        }
        if !new.chains_from(current.admin_verifying_key()) {
            return Err(bad(format!(
                "the keyset is signed by administrator key {}, which does not chain to the trusted {}",
                fingerprint(new.admin_verifying_key()),
                fingerprint(current.admin_verifying_key())
            )));
        }
        let stored = |updated| KeysetStored {
            format: KEYSET_STORED_FORMAT.into(),
            version: 1,
            serial: self.keyset.load().serial(),
            updated,
        };
        if new.serial() == current.serial() && new == **current {
            event.reason = format!("keyset serial {} already in force", new.serial());
            return Ok(stored(false));
        }
        if new.serial() <= current.serial() {
            return Err(Refusal::new(
                409,
                "stale_keyset",
                format!(
                    "the node works with keyset serial {}; serial {} is not newer",
                    current.serial(),
                    new.serial()
                ),
            ));
        }
        self.store.put_keyset(body).map_err(Refusal::internal)?;
        event.reason = format!(
            "keyset serial {} -> {} (administrator key {})",
            current.serial(),
            new.serial(),
            fingerprint(new.admin_verifying_key())
        );
        self.keyset.store(Arc::new(new));
        Ok(stored(true))
    }

    /// `POST /v1/delegations`: the records of the delegations of one scope
    /// the node holds, for the administrator alone (to re-issue them after
    /// a rotation).
    pub fn delegations(&self, body: &[u8]) -> Result<Delegations, Refusal> {
        let mut event = Event::new("list", false, "");
        let outcome = self.try_delegations(body, &mut event);
        self.decided(event, outcome, None)
    }

    fn try_delegations(&self, body: &[u8], event: &mut Event) -> Result<Delegations, Refusal> {
        let signed: SignedList = serde_json::from_slice(body)
            .map_err(|e| Refusal::new(400, "bad_request", format!("not a listing request: {e}")))?;
        let req = &signed.request;
        event.scope = field(&req.scope);
        let keyset = self.keyset.load();
        if !signed.verify(keyset.admin_verifying_key()) {
            return Err(Refusal::new(
                401,
                "unauthenticated",
                "the request does not verify with the administrator's key",
            ));
        }
        if req.format != LIST_FORMAT || req.version != LIST_VERSION {
            return Err(Refusal::new(
                400,
                "bad_request",
                format!(
                    "unsupported format `{}` version {}",
                    req.format, req.version
                ),
            ));
        }
        if req.node != public_key_hex(self.identity.public_key()) || &req.fs != keyset.fs() {
            return Err(Refusal::new(
                400,
                "wrong_node",
                "the request is for another node or file system",
            ));
        }
        let skew = self.limits.clock_skew.as_secs();
        if (req.timestamp.checked_sub(self.clock.unix()))
            .and_then(i64::checked_abs)
            .is_none_or(|d| d.unsigned_abs() > skew)
        {
            return Err(Refusal::new(
                401,
                "stale_request",
                "the request's time is too far from the node's clock",
            ));
        }
        let grants = self.grants.read().expect("lock");
        let delegations: Vec<serde_json::Value> = grants
            .iter()
            .filter(|((scope, _), _)| scope == &req.scope)
            .map(|(_, held)| held.record_json.clone())
            .collect();
        drop(grants);
        let revocations: Vec<serde_json::Value> = self
            .store
            .revocations()
            .map_err(Refusal::internal)?
            .iter()
            .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
            .filter(|v| v.get("scope").and_then(|s| s.as_str()) == Some(req.scope.as_str()))
            .collect();
        event.reason = format!(
            "listed {} delegations and {} revocations",
            delegations.len(),
            revocations.len()
        );
        Ok(Delegations {
            format: DELEGATIONS_FORMAT.into(),
            version: 1,
            delegations,
            revocations,
        })
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
            version: NODE_VERSION,
            public_key: public_key_hex(self.identity.public_key()),
            fingerprint: fingerprint(self.identity.public_key()),
            fs: self.keyset.load().fs().to_string(),
            admin_fingerprint: fingerprint(self.keyset.load().admin_verifying_key()),
        }
    }

    fn audit(&self, event: &Event) -> Result<()> {
        self.audit.append(event)
    }

    /// Audits a decision, counts it, and turns an audit failure into a
    /// refusal: nothing is released that was not logged. With a `ticket`,
    /// an answer the request's handler has given up on (a timeout) is
    /// audited and returned as the refusal it became.
    fn decided<T>(
        &self,
        mut event: Event,
        outcome: Result<T, Refusal>,
        ticket: Option<&Ticket>,
    ) -> Result<T, Refusal> {
        let outcome = match outcome {
            Ok(_) if ticket.is_some_and(|t| !t.claim()) => Err(self.timed_out()),
            other => other,
        };
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

    /// The refusal of a request that took longer than the node's limit.
    pub fn timed_out(&self) -> Refusal {
        Refusal::new(
            503,
            "timeout",
            format!(
                "the request took longer than this node's limit of {} s",
                self.limits.request_timeout.as_secs()
            ),
        )
    }

    /// Records the node's stop in the audit log.
    pub fn stopped(&self) -> Result<()> {
        self.audit(&Event::new("stop", true, "the node stopped"))
    }

    /// Forgets nonces old enough to be refused as stale anyway.
    pub fn purge_nonces(&self) -> Result<usize> {
        let _guard = self.nonces.lock().expect("nonce lock");
        let horizon = i64::try_from(self.limits.clock_skew.as_secs())
            .unwrap_or(i64::MAX / 4)
            .saturating_mul(2)
            .saturating_add(60);
        self.store
            .purge_nonces(self.clock.unix().saturating_sub(horizon))
    }

    /// `POST /v1/grants`: stores a grant sealed for this node, with the
    /// record of its delegation ([`GrantUpload`]).
    pub fn upload(&self, body: &[u8]) -> Result<GrantStored, Refusal> {
        let mut event = Event::new("grant", false, "");
        let outcome = self.try_upload(body, &mut event);
        self.decided(event, outcome, None)
    }

    fn try_upload(&self, body: &[u8], event: &mut Event) -> Result<GrantStored, Refusal> {
        let bad = |reason: String| Refusal::new(403, "bad_grant", reason);
        let upload: GrantUpload = serde_json::from_slice(body).map_err(|e| {
            Refusal::new(
                400,
                "bad_grant",
                format!("not a grant upload ({UPLOAD_FORMAT} version {UPLOAD_VERSION}): {e}"),
            )
        })?;
        if upload.format != UPLOAD_FORMAT || upload.version != UPLOAD_VERSION {
            return Err(Refusal::new(
                400,
                "bad_grant",
                format!(
                    "unsupported upload format `{}` version {}",
                    upload.format, upload.version
                ),
            ));
        }
        let (sealed, sealed_bytes) = upload
            .sealed_grant()
            .map_err(|e| Refusal::new(400, "bad_grant", e))?;
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
                self.keyset.load().admin_verifying_key(),
                "uploaded grant",
            )
            .map_err(|e| bad(e.to_string()))?;
        event.user = field(grant.user());
        event.scope = field(grant.scope());
        if grant.fs() != self.keyset.load().fs() {
            return Err(bad(format!(
                "the grant is for file system `{}`, and this node serves `{}`",
                grant.fs(),
                self.keyset.load().fs()
            )));
        }
        if let Some(refusal) = self.key_refusal(&grant) {
            return Err(refusal);
        }
        if grant.is_expired(self.clock.now()) {
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
        let held = self.held(grant, upload.delegation).map_err(bad)?;
        let grant = &held.grant;
        let mut grants = self.grants.write().expect("lock");
        if let Some(old) = grants.get(&key) {
            let issued = |g: &Grant| cbfs_core::parse_time(g.issued()).ok();
            if issued(grant) < issued(&old.grant) {
                return Err(Refusal::new(
                    409,
                    "stale_grant",
                    format!(
                        "the node holds a newer grant of this scope for this user (issued {}, this one {})",
                        old.grant.issued(),
                        grant.issued()
                    ),
                ));
            }
        }
        let record_bytes = serde_json::to_vec(&held.record_json).expect("values serialize");
        self.store
            .put_grant(
                &key.0,
                &key.1,
                &sealed_bytes,
                &record_bytes,
                &public_key_hex(grant.user_verifying_key()),
            )
            .map_err(Refusal::internal)?;
        self.user_keys
            .write()
            .expect("lock")
            .insert(key.1.clone(), *grant.user_verifying_key());
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
        grants.insert(key, Arc::new(held));
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
        self.stored_revocation(&bytes).map(Some)
    }

    /// A revocation the node stored: signed by the administrator key of its
    /// day, which may have handed over since.
    fn stored_revocation(&self, bytes: &[u8]) -> Result<Revocation, Refusal> {
        let keyset = self.keyset.load();
        let mut last = None;
        for admin in keyset.admin_history().iter().rev() {
            match Revocation::from_bytes(bytes, "stored revocation", admin) {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(Refusal::internal(
            last.expect("the history holds the current key"),
        ))
    }

    /// `POST /v1/revoke`: deletes a user's grant of a scope, and refuses
    /// it from then on.
    pub fn revoke(&self, body: &[u8]) -> Result<RevokeDone, Refusal> {
        let mut event = Event::new("revoke", false, "");
        let outcome = self.try_revoke(body, &mut event);
        self.decided(event, outcome, None)
    }

    fn try_revoke(&self, body: &[u8], event: &mut Event) -> Result<RevokeDone, Refusal> {
        let revocation =
            Revocation::from_bytes(body, "revocation", self.keyset.load().admin_verifying_key())
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
            Some(bytes) => Some(self.stored_revocation(bytes)?),
            None => None,
        };
        let (latest, record) = match (held_revocation, stored) {
            (Some(held), Some(bytes)) if held.revoked_at() > revocation.revoked_at() => {
                (held, bytes)
            }
            _ => (revocation, body.to_vec()),
        };
        let held = grants.get(&key).map(|h| h.grant.clone());
        let held_record = grants.get(&key).map(|h| h.record_json.clone());
        let delete = held.as_ref().is_some_and(|g| latest.covers(g));
        // The signed terms of what this revocation took away: the grant
        // deleted now, or the one an earlier revocation deleted (this one
        // is at least as late). The key tool takes m and n from them.
        let revoked_terms = if delete {
            held_record
        } else if held.is_none() {
            self.store
                .revoked_record(&key.0, &key.1)
                .map_err(Refusal::internal)?
                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        } else {
            None
        };
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
            delegation: revoked_terms,
        })
    }

    fn check_rate(&self, user: &UserName) -> Result<(), Refusal> {
        let burst = f64::from(self.limits.burst.max(1));
        let mut buckets = self.rate.lock().expect("rate lock");
        let bucket = buckets
            .entry(user.clone())
            .or_insert_with(|| Bucket::full(burst));
        bucket
            .take(self.limits.rate_per_minute, burst)
            .map_err(|wait| {
                Refusal::new(
                    429,
                    "rate_limited",
                    format!(
                        "user `{user}` is over {} requests per minute; retry in {wait} s",
                        self.limits.rate_per_minute
                    ),
                )
            })
    }

    /// Whether another unauthenticated failure may be audited now; beyond
    /// the limit such requests are refused with 429, counted, not audited.
    fn unauthenticated_allowed(&self) -> bool {
        let burst = unauth_burst(&self.limits);
        self.unauthenticated
            .lock()
            .expect("rate lock")
            .take(self.limits.unauthenticated_per_minute, burst)
            .is_ok()
    }

    /// `POST /v1/reencrypt`: checks and decides a user's signed request, and
    /// re-encrypts its capsules. `ticket` ties the answer to the request's
    /// handler (see [`Ticket`]); `None` when nobody can give up on it.
    pub fn reencrypt(&self, body: &[u8], ticket: Option<&Ticket>) -> Result<Cfrags, Refusal> {
        let started = Instant::now();
        let mut event = Event::new("reencrypt", false, "");
        let outcome = self.try_reencrypt(body, &mut event);
        if let Err(r) = &outcome
            && r.code == "unauthenticated"
            && !self.unauthenticated_allowed()
        {
            self.metrics
                .decisions
                .with_label_values(&["reencrypt", "deny", "rate_limited"])
                .inc();
            return Err(Refusal::new(
                429,
                "rate_limited",
                "too many unauthenticated requests; retry later",
            ));
        }
        let outcome = self.decided(event, outcome, ticket);
        let decision = if outcome.is_ok() { "allow" } else { "deny" };
        self.metrics
            .batch_seconds
            .with_label_values(&[decision])
            .observe(started.elapsed().as_secs_f64());
        outcome
    }

    fn try_reencrypt(&self, body: &[u8], event: &mut Event) -> Result<Cfrags, Refusal> {
        let bad = |reason: String| Refusal::new(400, "bad_request", reason);
        let unauthenticated = |reason: String| Refusal::new(401, "unauthenticated", reason);
        let signed: SignedReencrypt = serde_json::from_slice(body)
            .map_err(|e| unauthenticated(format!("not a re-encryption request: {e}")))?;
        let req = &signed.request;
        event.user = field(&req.user);
        event.scope = field(&req.scope);
        event.path = Some(req.path.clone());
        event.capsules = Some(req.capsules.len() as u64);
        // Who asks comes first: nothing about delegations is told to a
        // request that is not signed by a user this node knows.
        let user_key = self.user_keys.read().expect("lock").get(&req.user).copied();
        if !user_key.is_some_and(|k| signed.verify(&k)) {
            return Err(unauthenticated(format!(
                "the request does not verify with a signing key this node knows for user `{}`: forged, altered, or a user it holds no delegation for",
                req.user
            )));
        }
        if req.format != REENCRYPT_FORMAT || req.version != REENCRYPT_VERSION {
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
        let now = self.clock.unix();
        let skew = self.limits.clock_skew.as_secs();
        match req.skew_from(now) {
            Some(off) if off <= skew => {}
            _ => {
                return Err(Refusal::new(
                    401,
                    "stale_request",
                    format!(
                        "the request is dated {} (Unix time), the node's clock says {now}; at most {skew} s apart is accepted (check the clocks)",
                        req.timestamp
                    ),
                ));
            }
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
        let held = self.grants.read().expect("lock").get(&key).cloned();
        let Some(held) = held else {
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
        let grant = &held.grant;
        if !signed.verify(grant.user_verifying_key()) {
            // The user's key changed since this grant was made: the grant's
            // key is the one that counts for it.
            return Err(unauthenticated(format!(
                "the signature does not verify with the signing key of `{}` in its grant ({})",
                key.1,
                fingerprint(grant.user_verifying_key())
            )));
        }
        if grant.is_expired(self.clock.now()) {
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
        if let Some(refusal) = self.key_refusal(grant) {
            return Err(refusal);
        }
        self.check_rate(&req.user)?;
        // Decoding checks each capsule (a curve operation each): on every
        // core, like the re-encryption.
        let capsules = on_every_core(&req.capsules, |c| decode_capsule(c))
            .into_iter()
            .enumerate()
            .map(|(i, c)| c.map_err(|e| bad(format!("capsule {i}: {e}"))))
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
        let kfrag = grant.kfrag();
        let cfrags = on_every_core(&capsules, |c| {
            encode_cfrag(&cbfs_core::umbral_pre::reencrypt(c, kfrag.clone()))
        });
        self.metrics.capsules.inc_by(cfrags.len() as u64);
        event.reason = format!(
            "policy: {}; re-encrypted with share {} of the delegation issued {}",
            verdict.reason,
            grant.share(),
            held.record.issued()
        );
        Ok(Cfrags {
            format: CFRAGS_FORMAT.into(),
            version: CFRAGS_VERSION,
            delegation: held.record_json.clone(),
            cfrags,
        })
    }
}

/// The keyset the node was given after a rotation, if it is newer than the
/// `--keyset` file and chains to its administrator.
fn newer_stored_keyset(store: &Store, file: &Keyset) -> Option<Keyset> {
    let bytes = store.keyset().ok().flatten()?;
    match Keyset::from_bytes(&bytes, "the node's stored keyset") {
        Ok(ks)
            if ks.fs() == file.fs()
                && ks.serial() > file.serial()
                && file.admin_history().iter().any(|k| ks.chains_from(k)) =>
        {
            Some(ks)
        }
        Ok(_) => None,
        Err(e) => {
            tracing::error!("ignoring the stored keyset: {e}");
            None
        }
    }
}

fn unauth_burst(limits: &Limits) -> f64 {
    f64::from((limits.unauthenticated_per_minute / 4).max(1))
}

/// `f` of every item, in order, on every core.
fn on_every_core<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| s.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("decoding and re-encryption do not panic"))
            .collect()
    })
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
