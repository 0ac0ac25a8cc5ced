//! The one error type of `cbfs-core`.
//!
//! Every variant names the object it is about (a key source, a file, a keyset)
//! and, where one exists, what to do next. No variant ever carries key bytes,
//! passphrases or tokens.

use std::path::PathBuf;

/// Errors from key handling, key sources and signed key documents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[allow(missing_docs)] // the fields are named for what they hold
pub enum Error {
    /// A key source string could not be parsed.
    #[error(
        "invalid key source `{spec}`: {reason} (use file:PATH, keyring:SERVICE/NAME or openbao:KEYNAME:PATH)"
    )]
    BadSource { spec: String, reason: String },

    /// A name (scope label, file system name, user name) is not acceptable.
    #[error("invalid {kind} `{value}`: {reason}")]
    InvalidName {
        kind: &'static str,
        value: String,
        reason: &'static str,
    },

    /// A key file is readable or writable by group or others.
    #[error(
        "key file {} has mode {mode:04o}, so group or others can read it; \
         refusing to use it: run `chmod 600 {}` and check who has seen it",
        path.display(), path.display()
    )]
    InsecurePermissions { path: PathBuf, mode: u32 },

    /// A key already exists where a new one was to be stored.
    #[error(
        "a key already exists at {location}; refusing to overwrite it (choose another location, or remove the old key deliberately)"
    )]
    AlreadyExists { location: String },

    /// No key was found at the given location.
    #[error("no key found at {location}{hint}")]
    NotFound {
        location: String,
        hint: &'static str,
    },

    /// Reading or writing a file failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// Key material is malformed (wrong length, unknown encoding).
    #[error("key material at {location} is malformed: {reason}")]
    Malformed { location: String, reason: String },

    /// An age-wrapped key could not be unwrapped.
    #[error("cannot unwrap the age-protected key in {}: {reason}", path.display())]
    AgeUnwrap { path: PathBuf, reason: String },

    /// A passphrase or identity was needed and none was available.
    #[error("{location} is protected by {what}: {hint}")]
    LockedKey {
        location: String,
        what: &'static str,
        hint: &'static str,
    },

    /// The OS keyring refused an operation.
    #[error("keyring entry {location}: {reason}")]
    Keyring { location: String, reason: String },

    /// The key management service refused or failed an operation.
    #[error("OpenBao/Vault {op} for {location} failed: {reason}")]
    Kms {
        op: &'static str,
        location: String,
        reason: String,
        /// True for network errors, 5xx and throttling: worth retrying.
        transient: bool,
    },

    /// A signed document (keyset, user key, grant) failed to parse or verify.
    #[error("{kind} {location}: {reason}")]
    Document {
        kind: &'static str,
        location: String,
        reason: String,
    },

    /// A request that cannot be carried out as asked (bad terms, unknown scope).
    #[error("{0}")]
    Usage(String),

    /// A secret does not belong to the document it is used with.
    #[error("{what}")]
    KeyMismatch { what: String },

    /// Proxy re-encryption failed.
    #[error("re-encryption: {0}")]
    Reencryption(String),
}

impl Error {
    /// Whether retrying the same operation could succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Kms {
                transient: true,
                ..
            }
        )
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn doc(
        kind: &'static str,
        location: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Document {
            kind,
            location: location.into(),
            reason: reason.into(),
        }
    }
}

/// Result alias for `cbfs-core`.
pub type Result<T, E = Error> = std::result::Result<T, E>;
