//! Transparent fault-in with fanotify pre-content events (Linux 6.14 and
//! later; ext4, xfs and btrfs, not tmpfs): a process that opens, reads,
//! writes, maps or executes a released file waits while the handler
//! recalls it, then goes on with the real bytes, or fails with `EIO` if the
//! recall failed. A stub never reads as zeros while a guard watches it:
//! the group is owned by a guard process ([`guard`]) that answers for a
//! handler that died.
//!
//! What the handler learned the hard way (see also `handler.rs`):
//!
//! - The group is `FAN_CLASS_PRE_CONTENT`; marks are mount marks with
//!   `FAN_PRE_ACCESS | FAN_OPEN_PERM` (a copy with `cp` seeks over holes
//!   without reading, so stubs are filled at open).
//! - The handler fills through the event's own descriptor, which raises no
//!   event; any other I/O of the handler on a watched mount raises events
//!   only it can answer. The store, spool and index live elsewhere.
//! - An ignore mark keeps a resident file's accesses away from the
//!   handler; it does not survive a modification, so the release that
//!   punches the file's content out brings the events back.

pub mod guard;
mod handler;
pub(crate) mod sys;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use guard::{GuardOptions, HANDOVER_ENV, Handover, handed_down, run_guard};
pub use handler::{Handler, Stats};

use crate::hsm::Recaller;

/// Why fault-in cannot watch a tree here.
#[derive(Debug, thiserror::Error)]
#[error("fault-in cannot watch {tree}: {reason}; explicit recall (cbfs-tier recall) still works")]
pub struct Unsupported {
    /// The tree.
    pub tree: String,
    /// Why.
    pub reason: String,
}

/// Checks that this kernel and the file system of `tree` support
/// pre-content events, with a group of its own that is gone afterwards.
pub fn check_support(tree: &Path) -> Result<(), Unsupported> {
    let fail = |reason: String| Unsupported {
        tree: tree.display().to_string(),
        reason,
    };
    let group = sys::Group::new().map_err(|e| {
        fail(match e.raw_os_error() {
            Some(libc::EPERM) => {
                "fanotify permission events need CAP_SYS_ADMIN (run as root)".into()
            }
            _ => format!("fanotify_init: {e}"),
        })
    })?;
    group.mark_mount(tree).map_err(|e| {
        fail(match e.raw_os_error() {
            Some(libc::EINVAL) => {
                "this kernel has no fanotify pre-content events (FAN_PRE_ACCESS needs Linux 6.14 or later)"
                    .into()
            }
            Some(libc::EOPNOTSUPP) => {
                "its file system does not support pre-content events (ext4, xfs and btrfs do; tmpfs does not)"
                    .into()
            }
            _ => format!("fanotify_mark: {e}"),
        })
    })
}

/// Runs the handler on `handover` for `trees` until `stop` resolves, then
/// lets the recalls in flight finish (up to a minute). The trees' mounts
/// are marked first.
pub async fn serve(
    handover: &Handover,
    trees: &[&Path],
    recallers: Vec<Arc<Recaller>>,
    workers: usize,
    stop: impl std::future::Future<Output = ()>,
) -> crate::Result<Handler> {
    for t in trees {
        check_support(t).map_err(|e| crate::Error::Usage(e.to_string()))?;
        handover
            .watch(t)
            .map_err(|e| crate::Error::io("cannot watch", *t, e))?;
    }
    let handler = Handler::start(
        handover.group.clone(),
        handover.journal.clone(),
        recallers,
        workers,
    );
    tracing::info!(
        trees = %trees.iter().map(|t| t.display().to_string()).collect::<Vec<_>>().join(", "),
        guarded = handover.guarded,
        "fault-in handler watching"
    );
    if !handover.guarded {
        tracing::warn!(
            "no guard owns the fanotify group: if this process dies while a reader waits, the reader reads zeros"
        );
    }
    stop.await;
    let until = Instant::now() + Duration::from_secs(60);
    while handler.busy() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(handler)
}
