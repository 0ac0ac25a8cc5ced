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
        "invalid key source `{spec}`: {reason} (use file:PATH, keyring:SERVICE/NAME, openbao:KEYNAME:PATH, awskms:KEY_ID:PATH or pkcs11:token=...;object=...?x-wrapped=PATH)"
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

    /// The key management service (OpenBao, AWS KMS, a PKCS#11 token)
    /// refused or failed an operation.
    #[error("{service} {op} for {location} failed: {reason}")]
    Kms {
        service: &'static str,
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

/// An error and its causes on one line, `outer: cause: cause`, leaving out
/// a cause whose text the message already holds (many errors print their
/// cause in their own message and give it as `source()` too).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

#[cfg(test)]
mod chain_tests {
    #[derive(Debug)]
    struct Wraps(std::io::Error, bool);
    impl std::fmt::Display for Wraps {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            if self.1 {
                write!(f, "reading x: {}", self.0)
            } else {
                write!(f, "reading x")
            }
        }
    }
    impl std::error::Error for Wraps {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_show_once() {
        let io = || std::io::Error::other("disk on fire");
        assert_eq!(
            super::error_chain(&Wraps(io(), true)),
            "reading x: disk on fire"
        );
        assert_eq!(
            super::error_chain(&Wraps(io(), false)),
            "reading x: disk on fire"
        );
    }
}
