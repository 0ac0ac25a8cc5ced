//! The one error type of the tiering agent.

use std::path::PathBuf;

/// Errors of `cbfs-tier`. Each names the file, object or index it is about.
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

    /// The local index failed.
    #[error("index {}: {detail}", path.display())]
    Index { path: PathBuf, detail: String },

    /// A local file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// An object in the store is not what it must be.
    #[error("store object {object}: {reason}")]
    Integrity { object: String, reason: String },
}

impl Error {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the tiering agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
