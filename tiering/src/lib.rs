//! The cbfs tiering agent: moves a POSIX tree to object storage as
//! compressed, encrypted, tar-shaped segments, incrementally, with signed
//! snapshot manifests.
//!
//! The write path holds only public keys: each segment's group keys are
//! sealed in lockboxes under the scope public keys from the administrator's
//! signed keyset. See `docs/FORMAT.md` for the objects and
//! [`out`](crate::run_out) for the order in which they are written.
#![forbid(unsafe_code)]

mod agent;
mod error;
mod index;
mod list;
mod out;
mod progress;
mod remote;
mod restore;
mod rules;
mod scan;
mod source;

pub use agent::{Agent, AgentOptions};
pub use error::{Error, Result};
pub use index::{FileRecord, Index, MemberRecord, SegmentRecord, SnapshotRecord, State};
pub use list::{ListedEntry, SnapshotInfo, list_entries, list_snapshots};
pub use out::{CrashPoint, OutOptions, OutReport, run as run_out};
pub use remote::{NodeOpener, NodeOptions};
pub use restore::{
    Problem as VerifyProblem, RestoreOptions, VerifyReport, opener_for, run_restore, run_verify,
};
pub use rules::{ScopeRule, ScopeRules};
pub use scan::{Problem, Stat};
pub use source::StoreSource;
