//! The one error type of the gateway, and how each becomes an HTTP answer.

use std::path::{Path, PathBuf};

/// Errors of the gateway. Each names what it is about; none carries a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Error {
    /// The configuration file is wrong.
    #[error("configuration {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },

    /// The policies do not load.
    #[error(transparent)]
    Policies(#[from] cbfs_delegation::Error),

    /// Key material or a keyset.
    #[error(transparent)]
    Key(#[from] cbfs_core::Error),

    /// The agent failed.
    #[error(transparent)]
    Tiering(#[from] cbfs_tiering::Error),

    /// A local file operation failed.
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
    pub(crate) fn config(path: &Path, reason: impl Into<String>) -> Self {
        Error::Config {
            path: path.to_owned(),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result alias for the gateway.
pub type Result<T, E = Error> = std::result::Result<T, E>;
