//! # cbfs-client
//!
//! The delegation client: gathers verified capsule fragments from m of n
//! nodes; the key tool's node operations (a node's key, grant uploads,
//! revocations); and the signed requests of a `cbfs-gateway` caller. It is
//! the HTTP side (reqwest on the caller's tokio runtime) of the formats in
//! `cbfs-wire`, and links neither the node's server, nor its policy engine,
//! nor its database.
//!
//! [`fetch_cfrags`] asks every node at once, checks every answer
//! ([`verify_answer`]: the administrator-signed delegation record, then
//! every cfrag), and stops once m distinct shares of one delegation have
//! answered, m being what the administrator signed. A node that is down,
//! slow, refuses, lies, or answers twice under two URLs does not stop the
//! fetch while enough honest shares answer; every such node is named in
//! [`Fetched::failures`], or in the [`FetchError`] when too few answered.
//!
//! ```no_run
//! # async fn demo(keyset: cbfs_core::Keyset, user: cbfs_core::UserSecret,
//! #               lockboxes: Vec<cbfs_format::Lockbox>) -> Result<(), Box<dyn std::error::Error>> {
//! use cbfs_core::{ScopeLabel, UserName};
//! use cbfs_wire::Access;
//! use cbfs_client::{NodeSet, fetch_cfrags};
//!
//! let nodes = NodeSet::new(["http://node1:7600", "http://node2:7600", "http://node3:7600"])?;
//! let access = Access::from_keyset(&keyset, UserName::new("alice")?, ScopeLabel::new("alice")?)?;
//! let capsules: Vec<_> = lockboxes.iter().map(|l| l.capsule().clone()).collect();
//! let fetched = fetch_cfrags(&nodes, &user, &access, "/home/alice/", &capsules).await?;
//! for failure in &fetched.failures {
//!     eprintln!("warning: {failure}"); // e.g. a node that lied, by URL
//! }
//! for (lockbox, cfrags) in lockboxes.iter().zip(fetched.cfrags) {
//!     let group_key = lockbox.open_reencrypted(&user.secret_key(), &access.scope_key, cfrags)?;
//!     # let _ = group_key;
//! }
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cbfs_core::umbral_pre::Signer;
use cbfs_core::umbral_pre::{Capsule, PublicKey, VerifiedCapsuleFrag};
use cbfs_core::{Clock, DelegationRecord, UserName, UserSecret, fingerprint, public_key_from_hex};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use cbfs_wire::{
    Access, Cfrags, ErrorBody, GrantStored, GrantUpload, NodeInfo, ReencryptBody, Rejected,
    RevokeDone, VerifiedAnswer, check_path, verify_answer,
};

/// Default time one node gets to answer one batch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of capsules per request.
pub const DEFAULT_BATCH: usize = 1000;
/// Bytes an answer may take per capsule (a cfrag in base64 is under 500),
/// on top of [`ANSWER_BASE`] for the delegation record and framing.
const ANSWER_PER_CAPSULE: usize = 1024;
const ANSWER_BASE: usize = 64 << 10;

struct Node {
    url: String,
    key: OnceCell<PublicKey>,
}

/// A caller of `cbfs-gateway`: its name and its cbfs signing key, which
/// signs every request (see [`cbfs_wire::gateway`]). `Debug` shows the name only.
#[derive(Clone)]
pub struct GatewayAuth {
    user: UserName,
    signer: Arc<Signer>,
}

impl fmt::Debug for GatewayAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayAuth")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl GatewayAuth {
    /// `user`, signing with `signer` (its signing key).
    pub fn new(user: UserName, signer: Signer) -> Self {
        GatewayAuth {
            user,
            signer: Arc::new(signer),
        }
    }

    /// The caller's name.
    pub fn user(&self) -> &UserName {
        &self.user
    }

    /// The `Authorization` and content-hash headers of a request to `url`;
    /// `body` is `None` for a streamed body (sent as `UNSIGNED-PAYLOAD`).
    pub fn headers(
        &self,
        method: &str,
        url: &str,
        body: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<[(&'static str, String); 2], String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("URL `{url}`: {e}"))?;
        let path_and_query = match parsed.query() {
            Some(q) => format!("{}?{q}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let content = match body {
            Some(b) => cbfs_wire::gateway::content_sha256(b),
            None => cbfs_wire::gateway::UNSIGNED_PAYLOAD.to_owned(),
        };
        let nonce = cbfs_wire::gateway::new_nonce();
        let parts = cbfs_wire::gateway::SignedParts {
            method,
            path_and_query: &path_and_query,
            timestamp,
            nonce: &nonce,
            content_sha256: &content,
        };
        Ok([
            (
                "authorization",
                cbfs_wire::gateway::authorization(&self.user, &self.signer, &parts),
            ),
            (cbfs_wire::gateway::CONTENT_SHA256_HEADER, content),
        ])
    }

    /// `request` (to `url`, with `body`, see [`headers`](Self::headers)),
    /// signed.
    pub fn sign(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        url: &str,
        body: Option<&[u8]>,
        timestamp: i64,
    ) -> Result<reqwest::RequestBuilder, String> {
        let mut request = request;
        for (name, value) in self.headers(method, url, body, timestamp)? {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

/// The n nodes of a delegation, and how to talk to them.
pub struct NodeSet {
    nodes: Vec<Node>,
    http: reqwest::Client,
    gateway: Option<GatewayAuth>,
    timeout: Duration,
    batch: usize,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for NodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSet")
            .field("nodes", &self.urls())
            .field("timeout", &self.timeout)
            .field("batch", &self.batch)
            .finish()
    }
}

/// Why one node did not help.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeProblem {
    /// It could not be reached, or the connection broke.
    Down(String),
    /// It did not answer in time.
    Timeout(Duration),
    /// It refused: HTTP status, code and reason, as the node gave them.
    Refused {
        /// HTTP status.
        status: u16,
        /// The node's refusal code (`denied`, `revoked`, `expired`, ...).
        code: String,
        /// The node's reason.
        reason: String,
    },
    /// It answered with something provably wrong: capsule fragments that do
    /// not verify, a delegation record that does not verify or is not for
    /// this request. The node is faulty or malicious.
    Lied(String),
    /// It answered with the share another node already gave (one node
    /// under two URLs): counted once.
    Duplicate(String),
    /// It answered something that is not the protocol (or too much of it).
    Protocol(String),
}

/// One node that did not help, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFailure {
    /// The node's URL.
    pub node: String,
    /// What went wrong.
    pub problem: NodeProblem,
}

impl NodeFailure {
    /// Whether the node returned something provably wrong.
    pub fn lied(&self) -> bool {
        matches!(self.problem, NodeProblem::Lied(_))
    }
}

impl fmt::Display for NodeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeProblem::Down(e) => write!(f, "is down or unreachable: {e}"),
            NodeProblem::Timeout(d) => write!(f, "did not answer within {} s", d.as_secs_f32()),
            NodeProblem::Refused {
                status,
                code,
                reason,
            } => write!(f, "refused ({status} {code}): {reason}"),
            NodeProblem::Lied(e) => write!(f, "LIED: {e}"),
            NodeProblem::Duplicate(e) => write!(f, "was not counted: {e}"),
            NodeProblem::Protocol(e) => write!(f, "answered nonsense: {e}"),
        }
    }
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} {}", self.node, self.problem)
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Fewer than m nodes answered with verified cfrags.
    #[error("{}", not_enough(*.needed, *.asked, *.answered, .failures))]
    NotEnoughNodes {
        /// m, as the delegation record says (0 if no node answered with one).
        needed: usize,
        /// n.
        asked: usize,
        /// How many distinct shares gave verified cfrags.
        answered: usize,
        /// Every node that did not, and why.
        failures: Vec<NodeFailure>,
    },
    /// The fetch was set up wrong (no nodes, a bad path, ...).
    #[error("{0}")]
    Config(String),
}

impl FetchError {
    /// The nodes that did not help, if any.
    pub fn failures(&self) -> &[NodeFailure] {
        match self {
            FetchError::NotEnoughNodes { failures, .. } => failures,
            FetchError::Config(_) => &[],
        }
    }

    /// Whether waiting and trying again could help: every node that did not
    /// answer was down or slow (none refused or lied).
    pub fn is_transient(&self) -> bool {
        match self {
            FetchError::NotEnoughNodes { failures, .. } => {
                !failures.is_empty()
                    && failures.iter().all(|f| {
                        matches!(f.problem, NodeProblem::Down(_) | NodeProblem::Timeout(_))
                    })
            }
            FetchError::Config(_) => false,
        }
    }
}

fn not_enough(needed: usize, asked: usize, answered: usize, failures: &[NodeFailure]) -> String {
    let mut s = if needed == 0 {
        format!(
            "cannot unlock: none of the {asked} delegation nodes answered with verified capsule fragments"
        )
    } else {
        format!(
            "cannot unlock: {needed} of the {asked} delegation nodes must answer with verified capsule fragments, and only {answered} did"
        )
    };
    for failure in failures {
        s.push_str("\n  - ");
        s.push_str(&failure.to_string());
    }
    if failures.iter().any(NodeFailure::lied) {
        s.push_str(
            "\nA node that lied is faulty or compromised: tell its operator and the administrator.",
        );
    } else {
        s.push_str("\nBring enough nodes back (or wait for them), then try again.");
    }
    s
}

/// The verified cfrags, and the nodes that did not help along the way.
#[derive(Debug)]
pub struct Fetched {
    /// For each capsule, in order, m verified cfrags from distinct shares.
    pub cfrags: Vec<Vec<VerifiedCapsuleFrag>>,
    /// The delegation record the cfrags were made under (of the last batch).
    pub record: Option<DelegationRecord>,
    /// The nodes whose answers were used.
    pub answered: Vec<String>,
    /// Nodes that failed, refused, lied or answered twice before enough
    /// answered. A node that lied is named here even when the fetch succeeded.
    pub failures: Vec<NodeFailure>,
}

/// A node URL without the trailing slash, or why it is not one.
pub fn check_url(url: &str) -> Result<String, String> {
    let text = url.trim_end_matches('/');
    let parsed = url::Url::parse(text).map_err(|e| format!("node URL `{text}`: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "node URL `{text}` must start with http:// or https://"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("node URL `{text}` has no host"));
    }
    Ok(text.to_owned())
}

/// Whether a server's answer at `url` is authenticated by its transport:
/// HTTPS (the server's certificate), or a loopback address (this machine).
/// A key taken from plain HTTP to another machine is whatever answered.
pub fn transport_is_trusted(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    if parsed.scheme() == "https" {
        return true;
    }
    match parsed.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// The environment variable naming a PEM file of extra CA certificates
/// that HTTPS servers (gateways, nodes) may be signed by, beside the system's.
pub const CA_FILE_ENV: &str = "CBFS_CA_FILE";
/// The environment variable naming a PEM file with a client certificate
/// and its private key, presented to servers that ask for one (mTLS).
pub const CLIENT_IDENTITY_ENV: &str = "CBFS_CLIENT_IDENTITY";

/// `builder` with the extra CA certificates of [`CA_FILE_ENV`] and the
/// client certificate of [`CLIENT_IDENTITY_ENV`], if set.
pub fn with_tls_env(mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, String> {
    if let Some(path) = std::env::var_os(CA_FILE_ENV) {
        let pem = std::fs::read(&path)
            .map_err(|e| format!("{CA_FILE_ENV}={}: {e}", path.to_string_lossy()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("{CA_FILE_ENV}={}: {e}", path.to_string_lossy()))?;
        if certs.is_empty() {
            return Err(format!(
                "{CA_FILE_ENV}={}: no PEM certificate in it",
                path.to_string_lossy()
            ));
        }
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    if let Some(path) = std::env::var_os(CLIENT_IDENTITY_ENV) {
        let pem = std::fs::read(&path)
            .map_err(|e| format!("{CLIENT_IDENTITY_ENV}={}: {e}", path.to_string_lossy()))?;
        // The error says what is wrong with the file's framing, never its key.
        let identity = reqwest::Identity::from_pem(&pem).map_err(|_| {
            format!(
                "{CLIENT_IDENTITY_ENV}={}: not a PEM certificate followed by its private key",
                path.to_string_lossy()
            )
        })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

/// An HTTP client for cbfs servers: TLS roots of the system and of
/// [`CA_FILE_ENV`], the client certificate of [`CLIENT_IDENTITY_ENV`].
pub fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    with_tls_env(b)?
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))
}

impl NodeSet {
    /// The nodes at `urls` (`http://host:port`), with the default timeout
    /// and batch size, and the system clock.
    pub fn new<I, S>(urls: I) -> Result<Self, FetchError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nodes = Vec::new();
        for url in urls {
            let text = check_url(url.as_ref()).map_err(FetchError::Config)?;
            if nodes.iter().any(|n: &Node| n.url == text) {
                return Err(FetchError::Config(format!(
                    "node URL `{text}` is given twice"
                )));
            }
            nodes.push(Node {
                url: text,
                key: OnceCell::new(),
            });
        }
        if nodes.is_empty() {
            return Err(FetchError::Config("no delegation nodes given".into()));
        }
        Ok(NodeSet {
            nodes,
            http: http_client(None).map_err(FetchError::Config)?,
            gateway: None,
            timeout: DEFAULT_TIMEOUT,
            batch: DEFAULT_BATCH,
            clock: cbfs_core::system_clock(),
        })
    }

    /// How long one node gets to answer one batch (fetching its key included).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many capsules go in one request (at least 1).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Uses `client` for HTTP (for proxies, TLS roots, ...).
    pub fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.http = client;
        self
    }

    /// Signs every request as `auth`: for nodes reached through a
    /// gateway's relay (`https://GATEWAY/v1/fs/NAME/nodes/I`).
    pub fn with_gateway_auth(mut self, auth: GatewayAuth) -> Self {
        self.gateway = Some(auth);
        self
    }

    /// Dates requests and judges expiry by `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<&str> {
        self.nodes.iter().map(|n| n.url.as_str()).collect()
    }

    /// n.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes (never: [`new`](Self::new) refuses that).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// One delegation's answers in a batch: who answered, with which share.
struct Group {
    record: DelegationRecord,
    answers: Vec<(usize, VerifiedAnswer)>,
}

/// Asks every node of `nodes` at once to re-encrypt `capsules` for `user`
/// under `access`, for the path prefix `path`; returns, per capsule, m
/// verified cfrags of distinct shares, from the first nodes to answer well.
pub async fn fetch_cfrags(
    nodes: &NodeSet,
    user: &UserSecret,
    access: &Access,
    path: &str,
    capsules: &[Capsule],
) -> Result<Fetched, FetchError> {
    check_path(path).map_err(|e| FetchError::Config(format!("path `{path}`: {e}")))?;
    let user_key = user.public_key();
    let mut fetched = Fetched {
        cfrags: Vec::with_capacity(capsules.len()),
        record: None,
        answered: Vec::new(),
        failures: Vec::new(),
    };
    let fail = |fetched: &mut Fetched, i: usize, problem: NodeProblem| {
        let failure = NodeFailure {
            node: nodes.nodes[i].url.clone(),
            problem,
        };
        // A scope not delegated to this user is the normal case for most
        // scopes of a tree: not worth a warning.
        if matches!(&failure.problem, NodeProblem::Refused { code, .. } if code == "no_delegation")
        {
            tracing::debug!("{failure}");
        } else {
            tracing::warn!("{failure}");
        }
        if !fetched.failures.contains(&failure) {
            fetched.failures.push(failure);
        }
    };
    // Nodes that lied are not asked again for later batches.
    let mut liars: Vec<usize> = Vec::new();
    for batch in capsules.chunks(nodes.batch) {
        let mut pending: FuturesUnordered<_> = nodes
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !liars.contains(i))
            .map(|(i, node)| async move {
                let answer = tokio::time::timeout(
                    nodes.timeout,
                    ask(nodes, node, user, &user_key, access, path, batch),
                )
                .await
                .unwrap_or(Err(NodeProblem::Timeout(nodes.timeout)));
                (i, answer)
            })
            .collect();
        // Answers grouped by the delegation that made them: only cfrags of
        // one delegation combine.
        let mut groups: Vec<Group> = Vec::new();
        let mut done = None;
        while let Some((i, answer)) = pending.next().await {
            let answer = match answer {
                Ok(a) => a,
                Err(problem) => {
                    if matches!(problem, NodeProblem::Lied(_)) {
                        liars.push(i);
                    }
                    fail(&mut fetched, i, problem);
                    continue;
                }
            };
            let at = match groups.iter().position(|g| g.record == answer.record) {
                Some(at) => at,
                None => {
                    groups.push(Group {
                        record: answer.record.clone(),
                        answers: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let group = &mut groups[at];
            if let Some((j, _)) = group
                .answers
                .iter()
                .find(|(_, a)| a.kfrag_id == answer.kfrag_id || a.share == answer.share)
            {
                let other = nodes.nodes[*j].url.clone();
                fail(
                    &mut fetched,
                    i,
                    NodeProblem::Duplicate(format!(
                        "it answered with share {} of the delegation, which {other} already gave (the same node under two URLs?)",
                        answer.share
                    )),
                );
                continue;
            }
            group.answers.push((i, answer));
            if group.answers.len() >= group.record.threshold() as usize {
                done = Some(at);
                break;
            }
        }
        // The slower nodes are not waited for: dropping their futures cancels them.
        drop(pending);
        let Some(done) = done else {
            let answered = groups.iter().map(|g| g.answers.len()).max().unwrap_or(0);
            let needed = groups
                .iter()
                .map(|g| g.record.threshold() as usize)
                .max()
                .unwrap_or(0);
            if groups.len() > 1 {
                let newest = groups
                    .iter()
                    .map(|g| g.record.issued().to_owned())
                    .max()
                    .unwrap_or_default();
                for g in &groups {
                    for (i, _) in &g.answers {
                        fail(
                            &mut fetched,
                            *i,
                            NodeProblem::Refused {
                                status: 200,
                                code: "other_delegation".into(),
                                reason: format!(
                                    "it holds a share of the delegation issued {}, while other nodes hold another (newest {newest}); shares of different delegations do not combine: rerun `cbfs-keytool delegate` so that every node holds the current one",
                                    g.record.issued()
                                ),
                            },
                        );
                    }
                }
            }
            return Err(FetchError::NotEnoughNodes {
                needed,
                asked: nodes.len(),
                answered,
                failures: fetched.failures,
            });
        };
        let Group {
            record,
            answers: mut good,
        } = groups.swap_remove(done);
        good.sort_by_key(|(i, _)| *i);
        for (i, _) in &good {
            let url = &nodes.nodes[*i].url;
            if !fetched.answered.contains(url) {
                fetched.answered.push(url.clone());
            }
        }
        let mut per_node: Vec<std::vec::IntoIter<VerifiedCapsuleFrag>> = good
            .into_iter()
            .map(|(_, a)| a.cfrags.into_iter())
            .collect();
        for _ in batch {
            fetched.cfrags.push(
                per_node
                    .iter_mut()
                    .map(|it| it.next().expect("one cfrag per capsule"))
                    .collect(),
            );
        }
        fetched.record = Some(record);
    }
    Ok(fetched)
}

async fn node_key(nodes: &NodeSet, node: &Node) -> Result<PublicKey, NodeProblem> {
    node.key
        .get_or_try_init(|| async {
            let url = format!("{}/v1/node", node.url);
            let mut get = nodes.http.get(&url);
            if let Some(auth) = &nodes.gateway {
                get = auth
                    .sign(get, "GET", &url, Some(b""), nodes.clock.unix())
                    .map_err(NodeProblem::Protocol)?;
            }
            Ok(checked_info(exchange(get, 16 << 10).await?)?.0)
        })
        .await
        .copied()
}

/// reqwest's message, without the URL it repeats (the failure names the node).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text
            .replace(&format!(" ({url})"), "")
            .replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Reads a response body of at most `limit` bytes; a longer one is refused
/// without reading it all.
/// Reads the body of `response`, at most `limit` bytes: a longer answer is
/// refused as soon as it is known to be longer (from its `Content-Length`,
/// or once `limit` bytes have come), without reading the rest.
pub async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, NodeProblem> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(NodeProblem::Protocol(format!(
            "its answer is {} bytes, more than the {limit} this request can need",
            response.content_length().unwrap_or_default()
        )));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| NodeProblem::Down(without_url(&e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(NodeProblem::Protocol(format!(
                "its answer is longer than the {limit} bytes this request can need"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Sends a request and reads a JSON answer of at most `limit` bytes, or the
/// node's refusal.
async fn exchange<T: DeserializeOwned>(
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<T, NodeProblem> {
    let response = request
        .send()
        .await
        .map_err(|e| NodeProblem::Down(without_url(&e)))?;
    let status = response.status();
    let bytes = read_limited(response, limit).await?;
    if !status.is_success() {
        return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => NodeProblem::Refused {
                status: status.as_u16(),
                code: body.error,
                reason: body.reason,
            },
            Err(_) => NodeProblem::Protocol(format!("answered {status} without a cbfs error body")),
        });
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| NodeProblem::Protocol(format!("unexpected answer: {e}")))
}

/// A node's key and description (`GET /v1/node`), the key checked against
/// the fingerprint the node states.
pub async fn node_info(
    http: &reqwest::Client,
    url: &str,
) -> Result<(PublicKey, NodeInfo), NodeProblem> {
    checked_info(exchange(http.get(format!("{url}/v1/node")), 16 << 10).await?)
}

fn checked_info(info: NodeInfo) -> Result<(PublicKey, NodeInfo), NodeProblem> {
    let key = public_key_from_hex(&info.public_key)
        .map_err(|e| NodeProblem::Protocol(format!("GET /v1/node: {e}")))?;
    if fingerprint(&key) != info.fingerprint {
        return Err(NodeProblem::Protocol(
            "GET /v1/node: its key and fingerprint disagree".into(),
        ));
    }
    Ok((key, info))
}

async fn ask(
    nodes: &NodeSet,
    node: &Node,
    user: &UserSecret,
    user_key: &PublicKey,
    access: &Access,
    path: &str,
    capsules: &[Capsule],
) -> Result<VerifiedAnswer, NodeProblem> {
    let node_pk = node_key(nodes, node).await?;
    let request = ReencryptBody::new(
        &node_pk,
        &access.user,
        &access.scope,
        path,
        capsules,
        nodes.clock.unix(),
    )
    .sign(&user.signer());
    let limit = ANSWER_BASE + capsules.len() * ANSWER_PER_CAPSULE;
    let url = format!("{}/v1/reencrypt", node.url);
    let body = serde_json::to_vec(&request).expect("requests serialize");
    let mut post = nodes
        .http
        .post(&url)
        .header("content-type", "application/json");
    if let Some(auth) = &nodes.gateway {
        post = auth
            .sign(post, "POST", &url, Some(&body), nodes.clock.unix())
            .map_err(NodeProblem::Protocol)?;
    }
    let answer: Cfrags = exchange(post.body(body), limit).await?;
    let capsules = capsules.to_vec();
    let (access, user_key, clock) = (access.clone(), *user_key, nodes.clock.clone());
    // Verification is elliptic-curve work: keep it off the async threads.
    tokio::task::spawn_blocking(move || {
        verify_answer(
            &answer,
            &node_pk,
            &access,
            &user_key,
            &capsules,
            clock.as_ref(),
        )
    })
    .await
    .map_err(|e| NodeProblem::Protocol(format!("verification failed to run: {e}")))?
    .map_err(|r| match r {
        Rejected::Lied(e) => NodeProblem::Lied(e),
        Rejected::Protocol(e) => NodeProblem::Protocol(e),
        Rejected::OtherKeyVersion(e) => NodeProblem::Refused {
            status: 200,
            code: "other_key_version".into(),
            reason: e,
        },
        Rejected::Expired(e) => NodeProblem::Refused {
            status: 200,
            code: "expired".into(),
            reason: e,
        },
    })
}

/// The key tool's side of a node: its key, grant uploads, revocations.
#[derive(Clone, Debug)]
pub struct NodeAdmin {
    http: reqwest::Client,
}

impl NodeAdmin {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, String> {
        Ok(NodeAdmin {
            http: http_client(Some(timeout))?,
        })
    }

    /// The node's public key (`GET /v1/node`).
    pub async fn key(&self, url: &str) -> Result<PublicKey, NodeProblem> {
        Ok(node_info(&self.http, url).await?.0)
    }

    /// Uploads one share (`POST /v1/grants`).
    pub async fn upload(
        &self,
        url: &str,
        upload: &GrantUpload,
    ) -> Result<GrantStored, NodeProblem> {
        exchange(
            self.http.post(format!("{url}/v1/grants")).json(upload),
            16 << 10,
        )
        .await
    }

    /// Gives the node a newer keyset (`PUT /v1/keyset`): after a rotation,
    /// so that it refuses retired keys and knows the new ones.
    pub async fn keyset(
        &self,
        url: &str,
        keyset: Vec<u8>,
    ) -> Result<cbfs_wire::admin::KeysetStored, NodeProblem> {
        exchange(
            self.http
                .put(format!("{url}/v1/keyset"))
                .header("content-type", "application/json")
                .body(keyset),
            16 << 10,
        )
        .await
    }

    /// The delegations of a scope the node holds (`POST /v1/delegations`,
    /// signed by the administrator).
    pub async fn delegations(
        &self,
        url: &str,
        request: &cbfs_wire::admin::SignedList,
    ) -> Result<cbfs_wire::admin::Delegations, NodeProblem> {
        exchange(
            self.http
                .post(format!("{url}/v1/delegations"))
                .json(request),
            16 << 20,
        )
        .await
    }

    /// Sends a signed revocation (`POST /v1/revoke`).
    pub async fn revoke(&self, url: &str, revocation: Vec<u8>) -> Result<RevokeDone, NodeProblem> {
        exchange(
            self.http
                .post(format!("{url}/v1/revoke"))
                .header("content-type", "application/json")
                .body(revocation),
            16 << 10,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert_eq!(
            check_url("http://127.0.0.1:7600/").unwrap(),
            "http://127.0.0.1:7600"
        );
        assert_eq!(
            check_url("https://node.example").unwrap(),
            "https://node.example"
        );
        assert!(check_url("127.0.0.1:7600").is_err());
        assert!(check_url("ftp://node").is_err());
        assert!(check_url("http://").is_err());
        assert!(NodeSet::new(["http://a:1", "http://a:1/"]).is_err());
    }

    #[test]
    fn only_https_and_loopback_answers_are_authenticated_by_their_transport() {
        for url in [
            "https://node.example",
            "https://10.0.0.5:7600",
            "http://127.0.0.1:7600",
            "http://127.8.9.10:1",
            "http://localhost:7600",
            "http://[::1]:7600",
        ] {
            assert!(transport_is_trusted(url), "{url}");
        }
        for url in [
            "http://node.example",
            "http://10.0.0.5:7600",
            "http://[2001:db8::1]:7600",
            "http://localhost.example:7600",
            "not a url",
        ] {
            assert!(!transport_is_trusted(url), "{url}");
        }
    }

    #[tokio::test]
    async fn a_node_that_is_not_there_is_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let nodes = NodeAdmin::new(Duration::from_secs(2)).unwrap();
        let err = nodes
            .key(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(matches!(err, NodeProblem::Down(_)), "{err}");
    }
}
