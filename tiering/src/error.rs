//! The one error type of the tiering agent.

use std::path::PathBuf;

/// Errors of `cbfs-tier`. Each names the file, object or index it is about,
/// and says whether retrying can help ([`Error::is_transient`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are named for what they hold
pub enum Error {
    /// The command line or configuration is wrong.
    #[error("{0}")]
    Usage(String),

    #[error(transparent)]
    Key(#[from] cbfs_core::Error),

    #[error(transparent)]
    Format(#[from] cbfs_format::Error),

    #[error(transparent)]
    Store(#[from] cbfs_store::Error),

    /// Reading the store back (restore, verify, listing).
    /// (The cause is part of the message, not a separate `source()`:
    /// printed with its chain it would show twice.)
    #[error("{context}: {cause}")]
    Restore {
        context: String,
        cause: Box<cbfs_restore::Error>,
    },

    /// The local index failed.
    #[error("index {}: {detail}", path.display())]
    Index { path: PathBuf, detail: String },

    /// Another process has the index open for writing.
    #[error(
        "index {} is in use by {holder}; wait for it to finish (one agent per index)",
        index.display()
    )]
    Busy { index: PathBuf, holder: String },

    /// This machine ran out of room (a full disk or quota): nothing
    /// committed is lost; rerun once there is space.
    #[error(
        "{what} {}: out of space: {source}; nothing committed was lost — free some space and run again",
        path.display()
    )]
    Resource {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The run was asked to stop; what it committed stays, and the next
    /// run finishes the snapshot.
    #[error("the run was cancelled at a safe point; the next run finishes its snapshot")]
    Cancelled,

    /// A pushed tar stream was refused (an unsafe or broken entry): nothing
    /// of it was committed.
    #[error("{0}; nothing was committed")]
    Refused(String),

    /// An object in the store is not what it must be.
    #[error("store object {object}: {reason}")]
    Integrity { object: String, reason: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        if matches!(
            source.kind(),
            std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
        ) {
            return Error::Resource {
                what: op.to_owned(),
                path: path.into(),
                source,
            };
        }
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// Whether retrying later can help: the store or the key service was
    /// unreachable or failing.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Key(k) => k.is_transient(),
            Error::Store(s) => s.is_transient(),
            Error::Restore { cause, .. } => cause.is_transient(),
            _ => false,
        }
    }

    /// Whether a local resource ran out (disk full).
    pub fn is_resource(&self) -> bool {
        match self {
            Error::Resource { .. } => true,
            Error::Store(s) => s.is_resource(),
            Error::Restore { cause, .. } => cause.is_resource(),
            _ => false,
        }
    }

    /// Whether something failed verification (an object is not what it
    /// must be, a snapshot or keyset is not trusted).
    pub fn is_verification(&self) -> bool {
        match self {
            Error::Integrity { .. } | Error::Format(_) => true,
            Error::Restore { cause, .. } => cause.is_verification(),
            _ => false,
        }
    }
}

/// A restore library error, with what was being done.
pub(crate) fn restore_error(context: impl Into<String>, source: cbfs_restore::Error) -> Error {
    Error::Restore {
        context: context.into(),
        cause: Box::new(source),
    }
}

/// Result alias for the tiering agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
