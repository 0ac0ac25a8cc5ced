//! # cbfs-restore
//!
//! Reading a cbfs store back: the restore engine that `cbfs-recover` and the
//! tiering agent share. Given the administrator's root secret, a scope
//! secret, or a user key with capsule fragments from delegation nodes, it
//! turns a snapshot back into one standard pax tar (or a directory) with
//! real names, modes, owners, sub-second times, symbolic and hard links,
//! xattrs and special files. GNU tar and bsdtar extract the tar.
//!
//! It needs no tokio, no RocksDB and no network of its own: objects come
//! through an [`ObjectSource`] (a local directory, [`LocalDir`]; an S3
//! bucket with the `s3` feature, a small blocking client; the agent's
//! store; a gateway), which reads whole small objects and only the byte
//! ranges of segments that a restore needs. Nothing it does is set for the
//! whole process: two restores in one process do not share any setting.
//!
//! ```text
//! pin ─▶ keyset (the pinned administrator's newest) ─▶ trusted writers
//!     ─▶ snapshot manifest (signed by one of them, chained)
//!     ─▶ per segment: summary, lockboxes ─▶ pass 1: member metadata
//!     ─▶ check paths and links, sort ─▶ pass 2: decrypt + hash each member
//!     ─▶ commit to the tar (or directory)
//! ```
//!
//! Trust fails closed: a keyset that does not chain to the pinned
//! administrator ([`Pin`], [`TrustRecords`]), a manifest that no registered
//! writer signed ([`Trust`]), a keyset or snapshot older than one seen
//! before: each is refused, never accepted with a warning. Damage never
//! stops a restore: each damaged object becomes a [`Failure`] naming it, and
//! every intact member still comes out. Nothing is created that resolves
//! outside the destination.
//!
//! ## Worked example
//!
//! ```no_run
//! use cbfs_core::{KeySource, Unlock, AdminSecret};
//! use cbfs_restore::{LocalDir, Pin, RestoreOptions, TarSink, Trust, identify, load_keyset, open_snapshot, restore};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = LocalDir::new("/mnt/archive")?;
//! let seed = "file:/keys/admin.key".parse::<KeySource>()?.load(&Unlock::from_env())?;
//! // The root secret pins its own administrator key.
//! let admin = AdminSecret::from_seed(cbfs_core::Seed::from_slice(seed.expose_secret_bytes(), "key")?);
//! let keyset = load_keyset(&store, &Pin::Root(admin.verifying_key()), None)?;
//! let identity = identify(seed, &keyset).ok_or("the key belongs to neither the root nor a scope")?;
//! let snapshot = open_snapshot(&store, &Trust::new(keyset), None)?;
//! let out = std::fs::File::create("restore.tar")?;
//! let mut sink = TarSink::new(out, "restore.tar");
//! let report = restore(&store, &snapshot, &identity, &RestoreOptions::default(), &mut sink)?;
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
mod fetch;
#[cfg(feature = "gateway")]
pub mod gateway;
mod hashing;
mod keyset;
mod opener;
mod paths;
mod plan;
mod relocation;
mod report;
mod restore;
mod retention;
#[cfg(feature = "s3")]
mod s3;
mod select;
mod sink;
mod snapshot;
mod source;

pub use engine::RestoreOptions;
pub use error::{Error, Result};
pub use fetch::{Frame, FrameFetcher};
#[cfg(feature = "gateway")]
pub use gateway::{GatewaySource, is_gateway_store};
#[cfg(feature = "secrets")]
pub use keyset::{Anchors, trusted_keyset};
pub use keyset::{Pin, Pinned, TrustRecords, load_keyset};
#[cfg(feature = "secrets")]
pub use opener::{AdminOpener, Identity, ScopeOpener, identify};
pub use opener::{LockboxOpener, NoKey};
pub use paths::{PathFilter, check_member_path, check_symlink_target, check_symlink_target_with};
pub use relocation::{Moved, Relocations};
pub use report::{Failure, Report};
pub use restore::{restore, restore_unauthenticated_segments};
pub use retention::Retention;
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Source};
pub use select::{MemberFile, check_stored, restore_files};
pub use sink::{DirSink, Rewind, Sink, TarSink};
pub use snapshot::{
    Ignored, Listing, Snapshot, SnapshotInfo, Trust, WriterTrust, open_snapshot, snapshot_listing,
    snapshots,
};
pub use source::{Buffered, LocalDir, ObjectSource, ReadAt, ReadSeek, SegmentFile};
