//! Talking to delegation nodes: `cbfs-client`, driven from this
//! synchronous tool on a small runtime of its own. The key tool links
//! neither the node's server, nor its policy engine, nor its database.

use std::time::Duration;

use cbfs_client::{NodeAdmin, NodeProblem};
use cbfs_core::umbral_pre::PublicKey;
use cbfs_wire::{GrantStored, GrantUpload, RevokeDone};

pub use cbfs_client::{check_url, transport_is_trusted};

/// Fewer nodes did what was asked than the operation needs (exit code 6).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TooFewNodes(pub String);

/// A node answered a key other than the one the administrator pinned for
/// it, or one its signed delegations do not name (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NodeKeyMismatch(pub String);

/// The nodes of one command, all asked at once.
pub struct Nodes {
    admin: NodeAdmin,
    rt: tokio::runtime::Runtime,
}

impl Nodes {
    /// A client whose every request gives up after `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok(Nodes {
            admin: NodeAdmin::new(timeout).map_err(anyhow::Error::msg)?,
            rt,
        })
    }

    /// Runs `f` on every node at once; results in the order of `urls`.
    fn on_each<'a, T, F, Fut>(&'a self, urls: &'a [String], f: F) -> Vec<T>
    where
        F: Fn(usize, &'a str) -> Fut,
        Fut: std::future::Future<Output = T> + 'a,
    {
        let all = urls.iter().enumerate().map(|(i, u)| f(i, u.as_str()));
        self.rt.block_on(futures::future::join_all(all))
    }

    /// Every node's public key.
    pub fn keys(&self, urls: &[String]) -> Vec<Result<PublicKey, NodeProblem>> {
        self.on_each(urls, |_, url| self.admin.key(url))
    }

    /// Every node's public key, or [`TooFewNodes`] naming those that did not
    /// give one: `nothing` begins the message (what was not done).
    pub fn all_keys(&self, urls: &[String], nothing: &str) -> anyhow::Result<Vec<PublicKey>> {
        let mut keys = Vec::new();
        let mut down = Vec::new();
        for (url, answer) in urls.iter().zip(self.keys(urls)) {
            match answer {
                Ok(k) => keys.push(k),
                Err(e) => down.push(format!("  {url}: {e}")),
            }
        }
        if !down.is_empty() {
            return Err(TooFewNodes(format!("{nothing}:\n{}", down.join("\n"))).into());
        }
        Ok(keys)
    }

    /// Gives every node the keyset; a node that does not take it is logged
    /// (it still refuses what the keyset's newer keys sign until it has it).
    pub fn offer_keyset(&self, urls: &[String], keyset: &[u8]) {
        for (url, r) in urls.iter().zip(self.keyset(urls, keyset)) {
            if let Err(e) = r {
                tracing::warn!("node {url} did not take the keyset: {e}");
            }
        }
    }

    /// Uploads share i to node i.
    pub fn upload(
        &self,
        urls: &[String],
        uploads: &[GrantUpload],
    ) -> Vec<Result<GrantStored, NodeProblem>> {
        self.on_each(urls, |i, url| self.admin.upload(url, &uploads[i]))
    }

    /// Gives every node the same keyset.
    pub fn keyset(
        &self,
        urls: &[String],
        keyset: &[u8],
    ) -> Vec<Result<cbfs_wire::admin::KeysetStored, NodeProblem>> {
        self.on_each(urls, |_, url| self.admin.keyset(url, keyset.to_vec()))
    }

    /// Asks every node for the delegations of a scope, each request signed
    /// for its node.
    pub fn delegations(
        &self,
        urls: &[String],
        requests: &[cbfs_wire::admin::SignedList],
    ) -> Vec<Result<cbfs_wire::admin::Delegations, NodeProblem>> {
        self.on_each(urls, |i, url| self.admin.delegations(url, &requests[i]))
    }

    /// Sends the same revocation to every node.
    pub fn revoke(
        &self,
        urls: &[String],
        revocation: &[u8],
    ) -> Vec<Result<RevokeDone, NodeProblem>> {
        self.on_each(urls, |_, url| self.admin.revoke(url, revocation.to_vec()))
    }
}
