//! # cbfs-delegation
//!
//! A delegation node holds key fragments (kfrags) of scope keys, one share
//! of each m-of-n delegation, and turns lockbox capsules sealed for a scope
//! into capsule fragments (cfrags) that the delegated user, and only that
//! user, can open with m of them. It never sees a file key. Every request is
//! signed by the user, checked against Cedar policies, and written to a
//! hash-chained audit log.
//!
//! - [`Node`] and [`server`]: the node itself, behind `cbfs-delegation serve`.
//! - [`Policies`]: Cedar policy folders (`policies/default` is built in).
//! - [`audit`]: the audit log and its verification.
//! - What travels is in `cbfs-wire`; the client that asks m of n nodes is
//!   `cbfs-client` (which needs neither this crate's server, its policy
//!   engine nor its database); TLS serving is `cbfs-serve`.
//!
//! Revocation (`cbfs-keytool revoke`) stops new unlocks once n − m + 1 nodes
//! have deleted their kfrags. A file key that a user has already unlocked
//! cannot be taken back: re-key (new group keys) when that matters.
//!
//! ## Worked example
//!
//! One node, in this process, a 1-of-1 delegation, and one lockbox opened
//! through it:
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use cbfs_core::*;
//! use cbfs_delegation::{Limits, Node, NodeConfig, PolicySource};
//! use cbfs_format::{Lockbox, SegmentId};
//! use cbfs_wire::{Access, GrantUpload};
//!
//! let dir = tempfile::tempdir()?;
//! // The administrator: a keyset with a scope, and a user.
//! let admin = AdminSecret::generate();
//! let scope = ScopeLabel::new("proj")?;
//! let mut keyset = Keyset::new(FsName::new("fs")?, &admin);
//! keyset.add_scope(&admin, &scope)?;
//! std::fs::write(dir.path().join("keyset.json"), keyset.to_signed_bytes(&admin)?)?;
//! let alice = UserSecret::generate();
//! let alice_pub = UserPublic::from_secret(UserName::new("alice")?, &alice);
//!
//! // The node, on a port of its own.
//! let node = Arc::new(Node::open(NodeConfig {
//!     data: dir.path().join("node"),
//!     keyset: dir.path().join("keyset.json"),
//!     policies: PolicySource::BuiltIn,
//!     node_key: None,
//!     limits: Limits::default(),
//!     clock: system_clock(),
//! })?);
//! let node_pk = public_key_from_hex(&node.info().public_key)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let never = futures::stream::pending::<()>();
//! tokio::spawn(cbfs_delegation::server::serve(node.clone(), listener, std::future::pending(), never));
//!
//! // Delegate: one share, bound to the node and sealed for it.
//! let terms = DelegationTerms { threshold: 1, shares: 1, expires: None };
//! let d = delegate(&admin, &keyset, &scope, &alice_pub, &terms, &[node_pk], &SystemClock)?;
//! node.upload(&serde_json::to_vec(&GrantUpload::new(&d.grants[0].seal_for_node(&admin)?, &d.record))?)
//!     .unwrap();
//!
//! // The write path seals a lockbox; alice opens it through the node.
//! let (lockbox, key) = Lockbox::seal("proj", keyset.scope(&scope).unwrap(), SegmentId::random())?;
//! let nodes = cbfs_client::NodeSet::new([format!("http://{addr}")])?;
//! let access = Access::from_keyset(&keyset, UserName::new("alice")?, scope)?;
//! let fetched = cbfs_client::fetch_cfrags(&nodes, &alice, &access, "/", &[lockbox.capsule().clone()]).await?;
//! let opened = lockbox.open_reencrypted(
//!     &alice.secret_key(),
//!     &access.scope_key,
//!     fetched.cfrags.into_iter().next().unwrap(),
//! )?;
//! assert_eq!(opened.expose_secret(), key.expose_secret());
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
mod error;
mod identity;
mod metrics;
mod node;
mod policy;
pub mod server;
mod store;

pub use cbfs_wire::NodePublicFile;
pub use error::{Error, Result};
pub use identity::{Init, NodeIdentity, default_key_source};
pub use metrics::Metrics;
pub use node::{Limits, Node, NodeConfig, Refusal, Ticket};
pub use policy::{DEFAULT_POLICIES, Policies, PolicySource, Question, Verdict};
pub use store::Store;
