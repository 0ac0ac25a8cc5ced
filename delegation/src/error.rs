//! The one error type of `cbfs-delegation`.
//!
//! Every variant names what it is about (a file, a folder, a node URL) and
//! never carries key material.

use std::path::PathBuf;

/// Errors of the node, its stores and its tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are named for what they hold
pub enum Error {
    /// A key, keyset, grant or revocation problem from `cbfs-core`.
    #[error(transparent)]
    Core(#[from] cbfs_core::Error),

    /// A policy folder does not load or validate.
    #[error("{location}: {reason}")]
    Policy { location: String, reason: String },

    /// The node's database failed.
    #[error("node database {}: {reason}", path.display())]
    Store { path: PathBuf, reason: String },

    /// The audit log cannot be written or read, or it is broken.
    #[error("audit log {}: {reason}", path.display())]
    Audit { path: PathBuf, reason: String },

    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The server could not start or run.
    #[error("{0}")]
    Server(String),
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

/// Result alias for `cbfs-delegation`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
