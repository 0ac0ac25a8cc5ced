//! The collector's one error type.

use std::path::PathBuf;

/// Everything that can stop a collection. Each variant names the object or
/// path it is about; none carries a credential (the collector holds no key).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),

    /// The store failed (its error says whether a retry may cure it).
    #[error(transparent)]
    Store(#[from] cbfs_store::Error),

    /// Reading or verifying through the restore library failed.
    #[error("{context}: {cause}")]
    Restore {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        cause: Box<cbfs_restore::Error>,
    },

    /// An object of the store failed to parse or check.
    #[error("{object}: {source}")]
    Format {
        /// The object's key.
        object: String,
        /// What the format layer found.
        #[source]
        source: cbfs_format::Error,
    },

    /// Another collector holds the lease.
    #[error(
        "another collector holds the lease ({}): run {} on host {}, process {}, \
         since {}, until {} unless renewed; wait for it to finish (or, if that \
         process is gone for good, for the lease to run out)",
        .0.lease, .0.holder, .0.host, .0.pid, .0.acquired, .0.expires
    )]
    LeaseHeld(Box<Holder>),

    /// This collector lost the lease (it ran out, and another took it):
    /// it stops before deleting anything more.
    #[error(
        "the lease was taken over by another collector ({lease}): stopped before deleting more"
    )]
    LeaseLost {
        /// The newest lease object's key.
        lease: String,
    },

    /// Something the collector must not act around: an object under
    /// `snapshots/` it can neither verify nor read (it might name anything),
    /// a kept snapshot that needs an object the store lacks, ...
    #[error("{object}: {reason}")]
    Unsafe {
        /// The object.
        object: String,
        /// Why nothing is deleted while it stands.
        reason: String,
    },

    /// A local file (the segment spool).
    #[error("{what} {}: {source}", .path.display())]
    Local {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed (the store was unreachable).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store(e) => e.is_transient(),
            Error::Restore { cause, .. } => cause.is_transient(),
            _ => false,
        }
    }

    /// Whether a local disk is full: the spool's, or a local store's.
    pub fn is_resource(&self) -> bool {
        match self {
            Error::Local { source, .. } => is_full(source),
            Error::Store(e) => e.is_resource(),
            _ => false,
        }
    }

    pub(crate) fn restore(context: impl Into<String>, cause: cbfs_restore::Error) -> Self {
        Error::Restore {
            context: context.into(),
            cause: Box::new(cause),
        }
    }

    pub(crate) fn format(object: impl Into<String>, source: cbfs_format::Error) -> Self {
        Error::Format {
            object: object.into(),
            source,
        }
    }

    pub(crate) fn local(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Local {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Whether an I/O error is a full disk or an exhausted quota.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// Who holds the collector's lease.
#[derive(Debug, Clone)]
pub struct Holder {
    /// The lease object's key.
    pub lease: String,
    /// The holder's run id.
    pub holder: String,
    /// Its host.
    pub host: String,
    /// Its process id.
    pub pid: u32,
    /// When it took the lease (RFC 3339).
    pub acquired: String,
    /// When the lease runs out (RFC 3339).
    pub expires: String,
}

/// Result alias for the collector.
pub type Result<T, E = Error> = std::result::Result<T, E>;
