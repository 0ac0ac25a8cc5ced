//! Opening lockboxes through delegation nodes: `cbfs-tier restore --node`.
//!
//! For each segment the restore reads, [`NodeOpener`] sends the capsules of
//! its lockboxes, one batch per scope, to all n nodes at once
//! ([`cbfs_client::fetch_cfrags`]), takes the first m distinct shares
//! whose every capsule fragment verifies (m as the administrator signed it
//! in the delegation record, never as a node says), and opens the lockboxes
//! with the user's own key. A node that is down, slow, refuses or lies does
//! not stop the restore while m honest nodes answer; each is named in the
//! report.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use cbfs_client::{FetchError, NodeProblem, NodeSet, fetch_cfrags};
use cbfs_core::{Keyset, ScopeLabel, UserName, UserSecret, fingerprint};
use cbfs_format::{GroupKey, Lockbox};
use cbfs_restore::LockboxOpener;
use cbfs_wire::Access;

use crate::error::{Error, Result};

/// What the opener learned about one scope.
enum ScopeState {
    /// No node holds a delegation of it to this user: its members are skipped.
    NotDelegated,
    /// It could not be unlocked; later lockboxes of the scope fail the same
    /// way without asking the nodes again. `transient`: the nodes were only
    /// down or slow (worth retrying).
    Failed { why: String, transient: bool },
}

#[derive(Default)]
struct State {
    scopes: BTreeMap<String, ScopeState>,
    /// Nodes that failed or lied along the way, once each.
    notes: Vec<String>,
}

/// Opens lockboxes with capsule fragments from m of n delegation nodes.
pub struct NodeOpener {
    rt: tokio::runtime::Handle,
    nodes: NodeSet,
    user: UserSecret,
    name: UserName,
    keyset: Keyset,
    path: String,
    state: Mutex<State>,
}

/// How to reach the nodes.
pub struct NodeOptions<'a> {
    /// The nodes' URLs.
    pub urls: &'a [String],
    /// The user's name, as the administrator delegated to it.
    pub user: UserName,
    /// How long one node gets to answer one batch.
    pub timeout: Duration,
    /// The path prefix the restore asks for (policies may limit it).
    pub path: String,
    /// Nodes reached through a gateway's relay: how requests are signed.
    pub gateway: Option<cbfs_client::GatewayAuth>,
}

impl NodeOpener {
    /// An opener for `user` (the secret) on `keyset`'s file system, driving
    /// its requests on `rt`.
    pub fn new(
        rt: tokio::runtime::Handle,
        user: UserSecret,
        keyset: &Keyset,
        opts: NodeOptions<'_>,
    ) -> Result<Self> {
        let mut nodes = NodeSet::new(opts.urls)
            .map_err(|e| Error::Usage(e.to_string()))?
            .with_timeout(opts.timeout);
        if let Some(auth) = opts.gateway {
            nodes = nodes.with_gateway_auth(auth);
        }
        cbfs_wire::check_path(&opts.path)
            .map_err(|e| Error::Usage(format!("path `{}`: {e}", opts.path)))?;
        Ok(NodeOpener {
            rt,
            nodes,
            user,
            name: opts.user,
            keyset: keyset.clone(),
            path: opts.path,
            state: Mutex::new(State::default()),
        })
    }

    /// The nodes that failed, refused or lied while the restore went on
    /// (each once), for the report.
    pub fn notes(&self) -> Vec<String> {
        self.state.lock().expect("opener state").notes.clone()
    }

    fn note(&self, text: String) {
        let mut state = self.state.lock().expect("opener state");
        if !state.notes.contains(&text) {
            state.notes.push(text);
        }
    }

    /// Unlocks the lockboxes of one scope: `None` each if the scope is not
    /// delegated to this user.
    fn open_scope(
        &self,
        scope: &str,
        version: u32,
        lockboxes: &[&Lockbox],
    ) -> Vec<Result<Option<GroupKey>, (String, bool)>> {
        let all = |r: Result<(), (String, bool)>| -> Vec<Result<Option<GroupKey>, (String, bool)>> {
            lockboxes.iter().map(|_| r.clone().map(|()| None)).collect()
        };
        let state_key = format!("{scope}#{version}");
        match self
            .state
            .lock()
            .expect("opener state")
            .scopes
            .get(&state_key)
        {
            Some(ScopeState::NotDelegated) => return all(Ok(())),
            Some(ScopeState::Failed { why, transient }) => {
                return all(Err((why.clone(), *transient)));
            }
            None => {}
        }
        let access = match ScopeLabel::new(scope)
            .map_err(|e| format!("scope label `{scope}`: {e}"))
            .and_then(|label| Access::at_version(&self.keyset, self.name.clone(), label, version))
        {
            Ok(a) => a,
            Err(why) => return all(Err((why, false))),
        };
        let capsules: Vec<_> = lockboxes.iter().map(|l| l.capsule().clone()).collect();
        let fetched = self.rt.block_on(fetch_cfrags(
            &self.nodes,
            &self.user,
            &access,
            &self.path,
            &capsules,
        ));
        let fetched = match fetched {
            Ok(f) => f,
            Err(e) => {
                let state = if not_delegated(&e) {
                    ScopeState::NotDelegated
                } else {
                    ScopeState::Failed {
                        why: format!("scope `{scope}`: {e}"),
                        transient: e.is_transient(),
                    }
                };
                let mut guard = self.state.lock().expect("opener state");
                let entry = guard.scopes.entry(state_key).or_insert(state);
                let r = match entry {
                    ScopeState::NotDelegated => Ok(()),
                    ScopeState::Failed { why, transient } => Err((why.clone(), *transient)),
                };
                drop(guard);
                return all(r);
            }
        };
        for failure in &fetched.failures {
            self.note(failure.to_string());
        }
        let user_sk = self.user.secret_key();
        lockboxes
            .iter()
            .zip(fetched.cfrags)
            .map(|(lockbox, cfrags)| {
                lockbox
                    .open_reencrypted(&user_sk, &access.scope_key, cfrags)
                    .map(Some)
                    .map_err(|e| {
                        (
                            format!(
                                "the verified capsule fragments of nodes {} do not open the lockbox of group {}: {e}",
                                fetched.answered.join(", "),
                                lockbox.group_id()
                            ),
                            false,
                        )
                    })
            })
            .collect()
    }
}

/// Whether a failed fetch means "this scope is not delegated to you": no
/// node answered with fragments, at least one said it holds no delegation,
/// and every other one is unreachable (none refused for another reason, or
/// lied).
fn not_delegated(e: &FetchError) -> bool {
    let FetchError::NotEnoughNodes {
        answered: 0,
        failures,
        ..
    } = e
    else {
        return false;
    };
    let says_none = |p: &NodeProblem| matches!(p, NodeProblem::Refused { code, .. } if code == "no_delegation" || code == "other_key_version");
    failures.iter().any(|f| says_none(&f.problem))
        && failures.iter().all(|f| {
            says_none(&f.problem)
                || matches!(f.problem, NodeProblem::Down(_) | NodeProblem::Timeout(_))
        })
}

impl LockboxOpener for NodeOpener {
    fn open(&self, lockbox: &Lockbox) -> cbfs_restore::Result<Option<GroupKey>> {
        self.open_batch(&[lockbox])
            .pop()
            .expect("one result per lockbox")
    }

    fn open_batch(&self, lockboxes: &[&Lockbox]) -> Vec<cbfs_restore::Result<Option<GroupKey>>> {
        let mut by_scope: BTreeMap<(&str, u32), Vec<usize>> = BTreeMap::new();
        for (i, lb) in lockboxes.iter().enumerate() {
            by_scope
                .entry((lb.scope(), lb.key_version()))
                .or_default()
                .push(i);
        }
        let mut results: Vec<Option<cbfs_restore::Result<Option<GroupKey>>>> =
            (0..lockboxes.len()).map(|_| None).collect();
        for ((scope, version), at) in by_scope {
            let batch: Vec<&Lockbox> = at.iter().map(|&i| lockboxes[i]).collect();
            for (i, r) in at.into_iter().zip(self.open_scope(scope, version, &batch)) {
                results[i] = Some(r.map_err(|(why, transient)| {
                    if transient {
                        cbfs_restore::Error::Unavailable {
                            store: "of keys (the delegation nodes)".into(),
                            key: format!("the lockboxes of scope `{scope}`"),
                            reason: why,
                        }
                    } else {
                        cbfs_restore::Error::Delegation(why)
                    }
                }));
            }
        }
        results
            .into_iter()
            .map(|r| r.expect("every lockbox answered"))
            .collect()
    }

    fn notes(&self) -> Vec<String> {
        NodeOpener::notes(self)
    }

    fn describe(&self) -> String {
        format!(
            "user `{}` (key {}) through delegation nodes {}",
            self.name,
            fingerprint(&self.user.public_key()),
            self.nodes.urls().join(", ")
        )
    }
}
