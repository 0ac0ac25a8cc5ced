//! # cbfs-gc
//!
//! Garbage collection of a cbfs store by a collector that holds no key of
//! any kind: store credentials and the public keyset only. It reclaims the
//! space of forgotten snapshots and replaced files while tiering agents
//! keep writing and users keep restoring.
//!
//! ```text
//! lease ─▶ phase two of earlier collection records (when every active
//!          writer has finished a run since) ─▶ mark ─▶ compact sparse
//!          segments (copy live members, relocation records) ─▶ manifest
//!          bases ─▶ collection record (phase one) ─▶ release the lease
//! ```
//!
//! - **Mark.** The live set is every member a kept snapshot names: read
//!   from manifests verified against the keyset, and from retention records
//!   (signed by a registered writer or the administrator) that say which
//!   snapshots are forgotten. Whatever an object that does not verify might
//!   name counts as live. Segments younger than the grace period are never
//!   touched; nor is a segment no manifest names yet, until it is older
//!   than the grace period and every writer has since finished a run that
//!   did not name it.
//! - **Compact.** A segment whose live share is below `min_live` has its
//!   live members copied byte for byte (checked against the summary's
//!   SHA-256) into new segments, with new summaries and copies of their
//!   groups' lockboxes. The signed manifests still name the old places, so
//!   unsigned relocation records say where each member went; readers follow
//!   them and still check every member against the manifest's SHA-256.
//! - **Delete in two phases.** Phase one writes down what to delete in a
//!   collection record; phase two, on a later run, deletes it once every
//!   writer seen within the writer window has signed a run record saying it
//!   finished a run that started after it saw the record, and leaves in
//!   place anything a snapshot names again.
//! - **One collector at a time.** A lease object, taken with a conditional
//!   write; the second collector refuses and says who holds it.
//!
//! ```no_run
//! use cbfs_gc::{Anchor, GcOptions, run};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let rt = tokio::runtime::Runtime::new()?;
//! let opts = GcOptions::new("/mnt/archive", Anchor::KeysetFile("keyset.json".into()));
//! let handle = rt.handle().clone();
//! let report = rt.block_on(async move {
//!     tokio::task::spawn_blocking(move || run(&opts, &handle)).await
//! })??;
//! println!("{} bytes to reclaim", report.phase_one.reclaimable_bytes);
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod collect;
mod compact;
mod crash;
mod error;
mod lease;
mod mark;
mod run;

pub use collect::SweepReport;
pub use compact::CompactReport;
pub use crash::{CrashPoint, TestHooks, crash_points_enabled};
pub use error::{Error, Holder, Result};
pub use run::{Anchor, GcOptions, GcReport, Note, PhaseOne, run};
