//! The cbfs tiering agent, as a library: moves a POSIX tree to object
//! storage as compressed, encrypted, tar-shaped segments, incrementally,
//! with signed snapshot manifests; reads it back through the shared
//! restore engine.
//!
//! The write path holds only public keys: each segment's group keys are
//! sealed in lockboxes under the scope public keys from the administrator's
//! signed keyset. See `docs/FORMAT.md` for the objects and the `out` module
//! for the order in which they are written.
//!
//! Built to live inside one long-running async process as well as behind
//! the `cbfs-tier` command: an [`Agent`] is opened once and shared
//! (`Arc<Agent>`); its methods are `async` and run on the caller's tokio
//! runtime (the heavy work goes to blocking threads); one process holds an
//! index at a time, and one run of an agent goes at a time. Progress goes to
//! an [`Observer`]. Errors keep what kind they are ([`Error::is_transient`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cbfs_tiering::Error> {
//! use std::sync::Arc;
//! use cbfs_tiering::{Agent, AgentOptions, OutOptions, Quiet, ScopeRules};
//!
//! let agent = Agent::open(AgentOptions {
//!     store: "/mnt/archive",
//!     index: std::path::Path::new("/var/lib/cbfs/index"),
//!     keyset: Some(std::path::Path::new("/etc/cbfs/keyset.json")),
//!     writer_key: None,
//! })?;
//! let report = agent
//!     .tier_out(OutOptions::new("/srv/projects", ScopeRules::default()), Arc::new(Quiet))
//!     .await?;
//! println!("snapshot {:?}: {} files stored", report.sequence, report.files);
//! # Ok(()) }
//! ```
#![deny(unsafe_code)]

mod agent;
mod error;
pub mod faultin;
mod forget;
pub mod gateway;
mod gcsync;
pub mod hsm;
mod index;
mod list;
mod lock;
mod observe;
mod out;
mod policy;
mod remote;
mod restore;
mod rules;
mod scan;
mod source;
mod source_tree;
mod verify;

pub use agent::{Agent, AgentOptions};
pub use error::{Error, Result};
pub use forget::{
    ForgetEntry, ForgetReport, ForgetRequest, ForgetSigner, default_writer_key, forget,
};
pub use index::{
    FileRecord, HsmRecord, Index, MemberRecord, RekeyMarker, SegmentRecord, SnapshotRecord, State,
};
pub use list::{Ignored, ListedEntry, SnapshotInfo, list_entries, list_snapshots};
pub use lock::{IndexLock, LOCK_FILE};
pub use observe::{Observer, Quiet};
#[cfg(feature = "crash-points")]
pub use out::CrashPoint;
pub use out::{ChangeTest, OutOptions, OutReport, RekeyReport, RekeyRequest};
pub use policy::{Candidate, Decision, KeepPolicy, KeepWithin, apply as apply_policy};
pub use remote::{NodeOpener, NodeOptions};
pub use restore::{RestoreRequest, TrustOptions, restore};
pub use rules::{ScopeRule, ScopeRules};
pub use scan::{Problem, Stat};
pub use source::StoreSource;
pub use verify::{Problem as VerifyProblem, VerifyReport, VerifyRequest, verify};
