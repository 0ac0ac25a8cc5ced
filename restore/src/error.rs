//! The one error type of `cbfs-restore`.
//!
//! Every variant names the object (store key or file) or the path it is
//! about. None carries key material.

use std::io;

/// Errors of the recovery library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An object the store should hold is not there.
    #[error("object {key} is missing from the store")]
    Missing {
        /// The object's key (or file).
        key: String,
    },

    /// The store could not be reached, or failed in a way worth retrying
    /// (network, 5xx, throttling, a local resource).
    #[error("the store {store} is unavailable reading {key} (retry later): {reason}")]
    Unavailable {
        /// The store, as its source describes it.
        store: String,
        /// The object's key.
        key: String,
        /// What happened.
        reason: String,
    },

    /// Reading an object failed.
    #[error("cannot read object {key}: {source}")]
    Read {
        /// The object's key (or file).
        key: String,
        /// The I/O error.
        #[source]
        source: io::Error,
    },

    /// An object key that this source refuses (it would leave the store).
    #[error("refusing object key `{key}`: {reason}")]
    BadKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },

    /// An object failed to parse or verify.
    #[error("{object}: {source}")]
    Format {
        /// The object's key (or file).
        object: String,
        /// What the format layer found.
        #[source]
        source: cbfs_format::Error,
    },

    /// Keys, keysets, grants or key sources.
    #[error("{context}: {source}")]
    Key {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: cbfs_core::Error,
    },

    /// No keyset could be found or trusted.
    #[error("{0}")]
    Keyset(String),

    /// A snapshot manifest signed by a key the trusted keyset does not
    /// register as a writer.
    #[error(
        "snapshot manifest {object} is signed by writer key {fingerprint}, which {keyset} does not register: \
         a forgery by someone who can write to the store, or a writer not registered yet. \
         If you know this is your own agent's key (compare it with the agent's writer.pub), \
         register it (cbfs-keytool add-writer), or accept it for this one command with \
         --accept-unregistered-writer {fingerprint}; otherwise treat the object as planted"
    )]
    UntrustedWriter {
        /// The manifest's key.
        object: String,
        /// The fingerprint of the key that signed it.
        fingerprint: String,
        /// Which keyset (file system and serial).
        keyset: String,
    },

    /// The store holds less than the reader has already seen: an older
    /// keyset, or fewer snapshots.
    #[error("{0}")]
    Rollback(String),

    /// No snapshot matches, or the selector is ambiguous.
    #[error("{0}")]
    NoSnapshot(String),

    /// A manifest stored under a name that does not match its contents.
    #[error(
        "snapshot manifest {key} does not match its object name: {reason} \
         (an older manifest served under a newer name?)"
    )]
    ManifestName {
        /// The manifest's key.
        key: String,
        /// What differs.
        reason: String,
    },

    /// A manifest does not follow the previous one in the store.
    #[error("snapshot manifest {key} does not follow {previous}: {reason}")]
    BrokenChain {
        /// The manifest's key.
        key: String,
        /// The previous manifest's key.
        previous: String,
        /// What is wrong.
        reason: String,
    },

    /// Two manifests that trusted writers signed claim the same sequence:
    /// two histories, and nothing says which is the store's.
    #[error(
        "{} manifests signed by trusted writers claim sequence {sequence}: {} (a fork: two histories of one file system); \
         every reader refuses that sequence — pick one by its id with --snapshot ID if you know which is right",
        objects.len(),
        objects.join(" and ")
    )]
    Fork {
        /// The sequence both claim.
        sequence: u64,
        /// The manifests' keys.
        objects: Vec<String>,
    },

    /// A member's bytes do not hash to what the manifest (or summary) says.
    #[error("{object}: member {member}: {reason}")]
    HashMismatch {
        /// The object holding the member.
        object: String,
        /// The member id.
        member: String,
        /// What differs.
        reason: String,
    },

    /// A delegation cannot be used (too few shares, another user, ...).
    #[error("{0}")]
    Delegation(String),

    /// A member path, link target or output path that would escape the target.
    #[error("refusing {what} {path:?}: {reason}")]
    UnsafePath {
        /// "path", "symlink target", "hard link target".
        what: &'static str,
        /// The path, lossily as UTF-8.
        path: String,
        /// Why.
        reason: String,
    },

    /// Something the output cannot represent or create.
    #[error("{path:?}: {reason}")]
    Unsupported {
        /// The entry's path, lossily as UTF-8.
        path: String,
        /// What is not supported.
        reason: String,
    },

    /// Writing the output failed. Fatal for a tar; one entry for a directory.
    #[error("cannot write {target}: {source}")]
    Output {
        /// The output file or the entry's path.
        target: String,
        /// The I/O error.
        #[source]
        source: io::Error,
        /// Whether the whole output is broken (a tar stream), not just one entry.
        fatal: bool,
    },

    /// Bad arguments to a library call.
    #[error("{0}")]
    Usage(String),
}

/// The [`Error::code`] of an output whose disk is full.
pub(crate) const NO_SPACE: &str = "no_space";

/// Whether an I/O error is a full disk or an exhausted quota.
fn is_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

impl Error {
    /// A stable snake_case name for the error class, used in `--json` output.
    /// Errors from `cbfs-format` keep that crate's codes (`payload_auth`, ...).
    pub fn code(&self) -> &'static str {
        match self {
            Error::Missing { .. } => "missing_object",
            Error::Unavailable { .. } => "unavailable",
            Error::Read { .. } => "io",
            Error::Output { source, .. } if is_full(source) => NO_SPACE,
            Error::BadKey { .. } => "bad_key",
            Error::Format { source, .. } => source.code(),
            Error::Key { .. } => "key",
            Error::Keyset(_) => "keyset",
            Error::UntrustedWriter { .. } => "untrusted_writer",
            Error::Rollback(_) => "rollback",
            Error::NoSnapshot(_) => "no_snapshot",
            Error::ManifestName { .. } => "manifest_name",
            Error::BrokenChain { .. } => "broken_chain",
            Error::Fork { .. } => "fork",
            Error::HashMismatch { .. } => "hash_mismatch",
            Error::Delegation(_) => "delegation",
            Error::UnsafePath { .. } => "unsafe_path",
            Error::Unsupported { .. } => "unsupported",
            Error::Output { .. } => "output",
            Error::Usage(_) => "usage",
        }
    }

    /// Whether this error means the snapshot could not be verified (as
    /// opposed to an object that could not be read at all).
    pub fn is_verification(&self) -> bool {
        match self {
            Error::ManifestName { .. }
            | Error::BrokenChain { .. }
            | Error::Fork { .. }
            | Error::HashMismatch { .. }
            | Error::UntrustedWriter { .. }
            | Error::Rollback(_)
            | Error::Keyset(_) => true,
            Error::Format { source, .. } => !matches!(source, cbfs_format::Error::Io { .. }),
            _ => false,
        }
    }

    /// Whether trying again later could succeed: the store was unreachable.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    /// Whether the error is a full disk or another exhausted resource of
    /// this machine (`ENOSPC`, `EDQUOT`): worth retrying once there is room.
    pub fn is_resource(&self) -> bool {
        let io = match self {
            Error::Read { source, .. } | Error::Output { source, .. } => Some(source),
            _ => None,
        };
        io.is_some_and(is_full)
    }

    /// Whether the output as a whole is broken and the restore must stop.
    pub fn is_fatal_output(&self) -> bool {
        matches!(self, Error::Output { fatal: true, .. })
    }

    pub(crate) fn format(object: impl Into<String>, source: cbfs_format::Error) -> Self {
        Error::Format {
            object: object.into(),
            source,
        }
    }

    pub(crate) fn key(context: impl Into<String>, source: cbfs_core::Error) -> Self {
        Error::Key {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn unsafe_path(what: &'static str, path: &[u8], reason: impl Into<String>) -> Self {
        Error::UnsafePath {
            what,
            path: lossy(path),
            reason: reason.into(),
        }
    }

    pub(crate) fn read(key: impl Into<String>, source: io::Error) -> Self {
        let key = key.into();
        if source.kind() == io::ErrorKind::NotFound {
            Error::Missing { key }
        } else {
            Error::Read { key, source }
        }
    }
}

/// A path as text, for messages.
pub(crate) fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

/// Result alias for `cbfs-restore`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
