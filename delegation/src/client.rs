//! The client: gathers verified capsule fragments from m of n nodes.
//!
//! [`fetch_cfrags`] asks every node at once, verifies every cfrag a node
//! returns (against the capsule, the administrator's verifying key, the
//! scope's key and the user's key), and stops at the first `threshold`
//! nodes whose whole answer verified. A node that is down, slow, refuses,
//! or lies (returns a cfrag that does not verify) does not stop the fetch
//! while enough honest nodes answer; every such node is named in
//! [`Fetched::failures`], or in the [`FetchError`] when too few answered.
//!
//! ```no_run
//! # async fn demo(keyset: cbfs_core::Keyset, user: cbfs_core::UserSecret,
//! #               lockboxes: Vec<cbfs_format::Lockbox>) -> Result<(), Box<dyn std::error::Error>> {
//! use cbfs_core::{ScopeLabel, UserName};
//! use cbfs_delegation::client::{Access, NodeSet, fetch_cfrags};
//!
//! let nodes = NodeSet::new(["http://node1:7600", "http://node2:7600", "http://node3:7600"])?;
//! let access = Access::from_keyset(
//!     &keyset,
//!     UserName::new("alice")?,
//!     ScopeLabel::new("alice")?,
//!     2, // m of the m-of-n delegation
//! )?;
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

/// Verified cfrags per answering node (by index), for one delegation.
type NodeAnswers = Vec<(usize, Vec<VerifiedCapsuleFrag>)>;

use std::fmt;
use std::time::Duration;

use cbfs_core::umbral_pre::{Capsule, PublicKey, VerifiedCapsuleFrag};
use cbfs_core::{Keyset, ScopeLabel, UserName, UserSecret, public_key_from_hex};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use tokio::sync::OnceCell;

use crate::wire::{CFRAGS_FORMAT, Cfrags, ErrorBody, NodeInfo, ReencryptBody, decode_cfrag};

/// Default time one node gets to answer one batch.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of capsules per request.
pub const DEFAULT_BATCH: usize = 1000;

struct Node {
    url: String,
    key: OnceCell<PublicKey>,
}

/// The n nodes of a delegation, and how to talk to them.
pub struct NodeSet {
    nodes: Vec<Node>,
    http: reqwest::Client,
    timeout: Duration,
    batch: usize,
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

/// What the client needs to know about a delegation: all public.
#[derive(Clone, Debug)]
pub struct Access {
    /// The user's name, as the administrator delegated to it.
    pub user: UserName,
    /// The delegated scope.
    pub scope: ScopeLabel,
    /// The scope's public key (the delegating key), from the keyset.
    pub scope_key: PublicKey,
    /// The administrator's verifying key, from the keyset: it signed the kfrags.
    pub admin_key: PublicKey,
    /// m: how many nodes must answer; 0 to take m from the nodes' answers
    /// (each says the m of the grant it holds).
    pub threshold: usize,
}

impl Access {
    /// The access to `scope` of `keyset` for `user`, m-of-n with m = `threshold`.
    pub fn from_keyset(
        keyset: &Keyset,
        user: UserName,
        scope: ScopeLabel,
        threshold: usize,
    ) -> Result<Self, FetchError> {
        let scope_key = *keyset.scope(&scope).ok_or_else(|| {
            FetchError::Config(format!(
                "scope `{scope}` is not in the keyset of `{}`",
                keyset.fs()
            ))
        })?;
        Ok(Access {
            user,
            scope,
            scope_key,
            admin_key: *keyset.admin_verifying_key(),
            threshold,
        })
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
    /// It answered with capsule fragments that do not verify (or are not
    /// fragments at all): the node is faulty or malicious.
    Lied(String),
    /// It answered something that is not the protocol.
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
    /// Whether the node returned bad cfrags.
    pub fn lied(&self) -> bool {
        matches!(self.problem, NodeProblem::Lied(_))
    }
}

impl fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let node = &self.node;
        match &self.problem {
            NodeProblem::Down(e) => write!(f, "node {node} is down or unreachable: {e}"),
            NodeProblem::Timeout(d) => {
                write!(f, "node {node} did not answer within {} s", d.as_secs_f32())
            }
            NodeProblem::Refused {
                status,
                code,
                reason,
            } => {
                write!(f, "node {node} refused ({status} {code}): {reason}")
            }
            NodeProblem::Lied(e) => write!(
                f,
                "node {node} LIED: it returned bad capsule fragments: {e}"
            ),
            NodeProblem::Protocol(e) => write!(f, "node {node} answered nonsense: {e}"),
        }
    }
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// Fewer than m nodes answered with verified cfrags.
    #[error("{}", not_enough(*.needed, *.asked, *.answered, .failures))]
    NotEnoughNodes {
        /// m (0 if it was not given and no node answered to tell it).
        needed: usize,
        /// n.
        asked: usize,
        /// How many gave verified cfrags.
        answered: usize,
        /// Every node that did not, and why.
        failures: Vec<NodeFailure>,
    },
    /// The fetch was set up wrong (no nodes, threshold larger than n, ...).
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
    /// For each capsule, in order, `threshold` verified cfrags from distinct nodes.
    pub cfrags: Vec<Vec<VerifiedCapsuleFrag>>,
    /// The nodes whose answers were used.
    pub answered: Vec<String>,
    /// Nodes that failed, refused or lied before enough answered. A node
    /// that lied is named here even when the fetch succeeded.
    pub failures: Vec<NodeFailure>,
}

impl NodeSet {
    /// The nodes at `urls` (`http://host:port`), with the default timeout
    /// and batch size.
    pub fn new<I, S>(urls: I) -> Result<Self, FetchError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut nodes = Vec::new();
        for url in urls {
            let text = url.as_ref().trim_end_matches('/');
            let parsed = url::Url::parse(text)
                .map_err(|e| FetchError::Config(format!("node URL `{text}`: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(FetchError::Config(format!(
                    "node URL `{text}` is not http(s)"
                )));
            }
            if nodes.iter().any(|n: &Node| n.url == text) {
                return Err(FetchError::Config(format!(
                    "node URL `{text}` is given twice"
                )));
            }
            nodes.push(Node {
                url: text.to_owned(),
                key: OnceCell::new(),
            });
        }
        if nodes.is_empty() {
            return Err(FetchError::Config("no delegation nodes given".into()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| FetchError::Config(format!("cannot make an HTTP client: {e}")))?;
        Ok(NodeSet {
            nodes,
            http,
            timeout: DEFAULT_TIMEOUT,
            batch: DEFAULT_BATCH,
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

/// Asks every node of `nodes` at once to re-encrypt `capsules` for `user`
/// under `access`, for the path prefix `path`; returns, per capsule,
/// `access.threshold` verified cfrags, from the first nodes to answer well.
pub async fn fetch_cfrags(
    nodes: &NodeSet,
    user: &UserSecret,
    access: &Access,
    path: &str,
    capsules: &[Capsule],
) -> Result<Fetched, FetchError> {
    if access.threshold > nodes.len() {
        return Err(FetchError::Config(format!(
            "threshold {} is not possible with {} nodes",
            access.threshold,
            nodes.len()
        )));
    }
    crate::wire::check_path(path).map_err(|e| FetchError::Config(format!("path `{path}`: {e}")))?;
    let user_key = user.public_key();
    let mut fetched = Fetched {
        cfrags: Vec::with_capacity(capsules.len()),
        answered: Vec::new(),
        failures: Vec::new(),
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
        // Answers grouped by the delegation (grant issue time and m) that
        // made them: only cfrags of one delegation combine.
        let mut groups: Vec<((String, usize), NodeAnswers)> = Vec::new();
        let mut done = None;
        while let Some((i, answer)) = pending.next().await {
            match answer {
                Ok((issued, cfrags)) => {
                    let at = match groups.iter().position(|(g, _)| *g == issued) {
                        Some(at) => at,
                        None => {
                            groups.push((issued, Vec::new()));
                            groups.len() - 1
                        }
                    };
                    groups[at].1.push((i, cfrags));
                    let need = match access.threshold {
                        0 => groups[at].0.1,
                        m => m,
                    };
                    if groups[at].1.len() >= need {
                        done = Some(at);
                        break;
                    }
                }
                Err(problem) => {
                    let failure = NodeFailure {
                        node: nodes.nodes[i].url.clone(),
                        problem,
                    };
                    tracing::warn!("{failure}");
                    if failure.lied() {
                        liars.push(i);
                    }
                    if !fetched.failures.contains(&failure) {
                        fetched.failures.push(failure);
                    }
                }
            }
        }
        // The slower nodes are not waited for: dropping their futures cancels them.
        drop(pending);
        let Some(done) = done else {
            let answered = groups.iter().map(|(_, g)| g.len()).max().unwrap_or(0);
            let needed = match access.threshold {
                // 0 when no node answered, so m is not known.
                0 => groups.iter().map(|((_, m), _)| *m).max().unwrap_or(0),
                m => m,
            };
            if groups.len() > 1 {
                let newest = groups
                    .iter()
                    .map(|((issued, _), _)| issued.clone())
                    .max()
                    .unwrap_or_default();
                for ((issued, _), members) in &groups {
                    for (i, _) in members {
                        fetched.failures.push(NodeFailure {
                            node: nodes.nodes[*i].url.clone(),
                            problem: NodeProblem::Refused {
                                status: 200,
                                code: "other_delegation".into(),
                                reason: format!(
                                    "it holds the share of the delegation issued {issued}, while other nodes hold another (newest {newest}); shares of different delegations do not combine: rerun `cbfs-keytool delegate` so that every node holds the current one"
                                ),
                            },
                        });
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
        let mut good = groups.swap_remove(done).1;
        good.sort_by_key(|(i, _)| *i);
        for (i, _) in &good {
            let url = &nodes.nodes[*i].url;
            if !fetched.answered.contains(url) {
                fetched.answered.push(url.clone());
            }
        }
        let mut per_node: Vec<std::vec::IntoIter<VerifiedCapsuleFrag>> =
            good.into_iter().map(|(_, c)| c.into_iter()).collect();
        for _ in batch {
            fetched.cfrags.push(
                per_node
                    .iter_mut()
                    .map(|it| it.next().expect("one cfrag per capsule"))
                    .collect(),
            );
        }
    }
    Ok(fetched)
}

async fn node_key(nodes: &NodeSet, node: &Node) -> Result<PublicKey, NodeProblem> {
    node.key
        .get_or_try_init(|| async {
            let response = nodes
                .http
                .get(format!("{}/v1/node", node.url))
                .send()
                .await
                .map_err(|e| NodeProblem::Down(without_url(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(NodeProblem::Protocol(format!(
                    "GET /v1/node answered {status}"
                )));
            }
            let info: NodeInfo = response
                .json()
                .await
                .map_err(|e| NodeProblem::Protocol(format!("GET /v1/node: {}", without_url(&e))))?;
            public_key_from_hex(&info.public_key)
                .map_err(|e| NodeProblem::Protocol(format!("GET /v1/node: {e}")))
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

async fn ask(
    nodes: &NodeSet,
    node: &Node,
    user: &UserSecret,
    user_key: &PublicKey,
    access: &Access,
    path: &str,
    capsules: &[Capsule],
) -> Result<((String, usize), Vec<VerifiedCapsuleFrag>), NodeProblem> {
    let node_pk = node_key(nodes, node).await?;
    let request = ReencryptBody::new(&node_pk, &access.user, &access.scope, path, capsules)
        .sign(&user.signer());
    let response = nodes
        .http
        .post(format!("{}/v1/reencrypt", node.url))
        .json(&request)
        .send()
        .await
        .map_err(|e| NodeProblem::Down(without_url(&e)))?;
    let status = response.status();
    let bytes = response
        .bytes()
        .await
        .map_err(|e| NodeProblem::Down(without_url(&e)))?;
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
    let answer: Cfrags = serde_json::from_slice(&bytes)
        .map_err(|e| NodeProblem::Protocol(format!("not a cfrag answer: {e}")))?;
    if answer.format != CFRAGS_FORMAT {
        return Err(NodeProblem::Protocol(format!(
            "answer format `{}`",
            answer.format
        )));
    }
    if answer.cfrags.len() != capsules.len() {
        return Err(NodeProblem::Lied(format!(
            "{} cfrags for {} capsules",
            answer.cfrags.len(),
            capsules.len()
        )));
    }
    let threshold = answer.threshold as usize;
    if threshold == 0 || (access.threshold == 0 && threshold > nodes.len()) {
        return Err(NodeProblem::Protocol(format!(
            "it holds a {threshold}-of-n share, and {} nodes were given",
            nodes.len()
        )));
    }
    let capsules = capsules.to_vec();
    let (admin, scope, user_key) = (access.admin_key, access.scope_key, *user_key);
    // Verification is elliptic-curve work: keep it off the async threads.
    let cfrags = tokio::task::spawn_blocking(move || {
        verify_all(&answer.cfrags, &capsules, &admin, &scope, &user_key)
    })
    .await
    .map_err(|e| NodeProblem::Protocol(format!("verification failed to run: {e}")))??;
    Ok(((answer.grant_issued, threshold), cfrags))
}

fn verify_all(
    encoded: &[String],
    capsules: &[Capsule],
    admin: &PublicKey,
    scope: &PublicKey,
    user: &PublicKey,
) -> Result<Vec<VerifiedCapsuleFrag>, NodeProblem> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = encoded.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = encoded
            .chunks(chunk)
            .zip(capsules.chunks(chunk))
            .enumerate()
            .map(|(part, (texts, caps))| {
                s.spawn(move || {
                    texts
                        .iter()
                        .zip(caps)
                        .enumerate()
                        .map(|(j, (text, capsule))| {
                            let at = part * chunk + j;
                            let cfrag = decode_cfrag(text)
                                .map_err(|e| NodeProblem::Lied(format!("cfrag {at}: {e}")))?;
                            cfrag.verify(capsule, admin, scope, user).map_err(|(e, _)| {
                                NodeProblem::Lied(format!("cfrag {at} does not verify: {e}"))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(encoded.len());
        for h in handles {
            all.extend(h.join().expect("verification does not panic")?);
        }
        Ok(all)
    })
}
