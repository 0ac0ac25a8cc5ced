//! # cbfs-recover
//!
//! The free-standing recovery library and tool of cbfs: given the
//! administrator's root secret (or a scope secret, or a user key with
//! delegation grants), it turns a cbfs store, or loose segment files, back
//! into one standard pax tar (or a directory) with real names, modes,
//! owners, sub-second times, symbolic and hard links, xattrs and special
//! files. GNU tar and bsdtar extract the tar.
//!
//! It needs no tokio, no RocksDB and no network: only `cbfs-core` (without
//! its KMS feature) and `cbfs-format`.
//!
//! ```text
//! keyset ─▶ snapshot manifest (signed, chained) ─▶ per segment: summary, lockboxes
//!        ─▶ pass 1: member metadata ─▶ check paths and links, sort
//!        ─▶ pass 2: decrypt + hash each member ─▶ commit to the tar (or directory)
//! ```
//!
//! Damage never stops a restore: each damaged object becomes a [`Failure`]
//! naming it, and every intact member still comes out. Member paths and
//! link targets that would escape the target are refused.
//!
//! ## Worked example
//!
//! ```no_run
//! use cbfs_core::{KeySource, Unlock};
//! use cbfs_recover::{LocalDir, PathFilter, TarSink, identify, load_keyset, open_snapshot, restore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = LocalDir::new("/mnt/archive")?;
//! let keyset = load_keyset(&store, None)?;
//! let seed = "file:/keys/admin.key".parse::<KeySource>()?.load(&Unlock::from_env())?;
//! let identity = identify(seed, &keyset).ok_or("the key belongs to neither the root nor a scope")?;
//! let snapshot = open_snapshot(&store, Some(&keyset), None)?;
//! let out = std::fs::File::create("restore.tar")?;
//! let mut sink = TarSink::new(out, "restore.tar");
//! let report = restore(&store, &snapshot, &identity, &PathFilter::all(), &mut sink)?;
//! sink.into_inner()?;
//! println!("{}", report.human());
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod emit;
mod engine;
mod error;
mod grant;
mod hashing;
mod keyset;
mod opener;
mod paths;
mod plan;
mod report;
mod restore;
mod sink;
mod snapshot;
mod source;

pub use engine::set_decode_threads;
pub use error::{Error, Result};
pub use grant::{CfragCheck, GrantOpener, load_grants, verify_cfrags};
pub use keyset::load_keyset;
pub use opener::{AdminOpener, Identity, LockboxOpener, NoKey, ScopeOpener, identify};
pub use paths::{PathFilter, check_member_path, check_symlink_target};
pub use report::{Failure, Report};
pub use restore::{restore, restore_segments};
pub use sink::{DirSink, Rewind, Sink, TarSink};
pub use snapshot::{Snapshot, SnapshotInfo, open_snapshot};
pub use source::{LocalDir, ObjectSource, ReadSeek, SegmentFile};
