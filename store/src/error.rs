//! The crate's one error type, and how `object_store` errors map onto it.

use std::error::Error as StdError;
use std::fmt;
use std::path::PathBuf;

use object_store::client::{HttpError, HttpErrorKind};

/// What a [`Store`](crate::Store) was doing when an error happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// Writing an object ([`Store::put_new`](crate::Store::put_new),
    /// [`Store::put_file_new`](crate::Store::put_file_new)).
    Put,
    /// Reading an object or a range of it.
    Get,
    /// Reading an object's metadata.
    Head,
    /// Listing objects under a prefix.
    List,
    /// Deleting an object.
    Delete,
    /// Opening the store.
    Open,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Put => "put",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
            Op::Open => "open",
        })
    }
}

/// Everything that can go wrong in a [`Store`](crate::Store).
///
/// Each message names the store (as [`Store::describe`](crate::Store::describe)
/// gives it) and the object key. No message ever carries a credential.
/// [`Error::is_transient`] tells the errors that a later retry may cure
/// (network, 5xx, throttling: already retried with backoff inside the store)
/// from those it will not.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// There is no object under this key.
    #[error("{store}: object {key:?} does not exist")]
    NotFound {
        /// The store, as [`Store::describe`](crate::Store::describe) gives it.
        store: String,
        /// The object key.
        key: String,
    },

    /// A write-once put found an object with different contents under this key.
    /// Objects are never overwritten; the original is intact.
    #[error(
        "{store}: object {key:?} already exists with different contents; \
         objects are never overwritten"
    )]
    AlreadyExists {
        /// The store.
        store: String,
        /// The object key.
        key: String,
    },

    /// The store could not be reached or kept failing (network errors, 5xx,
    /// throttling), and the retries ran out. Trying again later may work.
    #[error("{store}: {op} {key:?} failed for now (retries exhausted): {detail}")]
    Transient {
        /// The store.
        store: String,
        /// The object key or prefix.
        key: String,
        /// What the store was doing.
        op: Op,
        /// What went wrong, from the underlying client.
        detail: String,
    },

    /// The store refused the operation, or it failed in a way that retrying
    /// will not fix (permissions, a malformed answer, a full disk, ...).
    #[error("{store}: {op} {key:?} failed: {detail}")]
    Permanent {
        /// The store.
        store: String,
        /// The object key or prefix.
        key: String,
        /// What the store was doing.
        op: Op,
        /// What went wrong.
        detail: String,
    },

    /// The disk under a local directory store is full, or a quota is
    /// reached. Nothing was written under the key (an object is written
    /// whole or not at all); free some space and try again.
    #[error(
        "{store}: no space to {op} {key:?}: {detail}; nothing was written under this key — free some space and try again"
    )]
    Full {
        /// The store.
        store: String,
        /// The object key.
        key: String,
        /// What the store was doing.
        op: Op,
        /// What went wrong.
        detail: String,
    },

    /// An object key or prefix is not acceptable (see [`validate_key`](crate::validate_key)).
    #[error("bad object key {key:?}: {reason}")]
    BadKey {
        /// The key as given.
        key: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A store specification could not be used.
    #[error("bad store specification {spec:?}: {reason}")]
    BadSpec {
        /// The specification, with any credentials in it removed.
        spec: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// A local file that an object was read from or written to failed.
    #[error("{store}: {op} {key:?}: local file {}: {source}", path.display())]
    LocalFile {
        /// The store.
        store: String,
        /// The object key.
        key: String,
        /// What the store was doing.
        op: Op,
        /// The local file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether a later retry may succeed: network errors, 5xx answers and
    /// throttling that outlasted the store's own retries.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// Whether a local disk ran out of room ([`Error::Full`], or a full
    /// disk under a local file): retrying once there is space may succeed.
    pub fn is_resource(&self) -> bool {
        match self {
            Error::Full { .. } => true,
            Error::LocalFile { source, .. } => is_full(source),
            _ => false,
        }
    }

    /// Whether this is [`Error::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// Whether this is [`Error::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, Error::AlreadyExists { .. })
    }
}

/// A specialised `Result` for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How an `object_store` error is to be reported.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    NotFound,
    /// `AlreadyExists` or a failed precondition: the object is there.
    Exists,
    Transient,
    Permanent,
    /// The local disk is full (a local directory store).
    Full,
}

/// Whether an I/O error is a full disk or an exhausted quota.
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    )
}

/// An S3 answer that is well-formed HTTP but cannot be right (a listing
/// marked truncated with no way to go on, a `200 OK` carrying an error
/// document): refused by the store's HTTP layer (see `s3.rs`). Permanent:
/// asking again gets the same answer.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BadAnswer(pub(crate) String);

/// Sorts an `object_store` error into a [`Kind`].
pub(crate) fn classify(e: &object_store::Error) -> Kind {
    use object_store::Error as E;
    match e {
        // A 404 for a missing bucket is a configuration error, not a missing object.
        E::NotFound { .. } if e.to_string().contains("NoSuchBucket") => Kind::Permanent,
        E::NotFound { .. } => Kind::NotFound,
        E::AlreadyExists { .. } | E::Precondition { .. } => Kind::Exists,
        E::Generic { source, .. } => {
            if chain_has_bad_answer(source.as_ref()) {
                Kind::Permanent
            } else if chain_is_full(source.as_ref()) {
                Kind::Full
            } else if chain_is_transient(source.as_ref()) {
                Kind::Transient
            } else {
                Kind::Permanent
            }
        }
        _ => Kind::Permanent,
    }
}

/// Whether the store's HTTP layer refused an answer ([`BadAnswer`]) somewhere
/// down the chain. Looked for first: `object_store` reports it as a
/// transport error ("HTTP error: ..."), which would otherwise read as
/// transient.
fn chain_has_bad_answer(e: &(dyn StdError + 'static)) -> bool {
    chain_any(e, |err| err.is::<BadAnswer>())
}

/// Whether a full disk is somewhere down the chain (`LocalFileSystem`
/// keeps the `io::Error` as a source).
fn chain_is_full(e: &(dyn StdError + 'static)) -> bool {
    chain_any(e, |err| {
        err.downcast_ref::<std::io::Error>().is_some_and(is_full)
    })
}

/// Whether `e` or any of its sources is one that `pred` picks.
fn chain_any(
    e: &(dyn StdError + 'static),
    pred: impl Fn(&(dyn StdError + 'static)) -> bool,
) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if pred(err) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Walks an error chain looking for a cause that retrying may cure.
///
/// `object_store` keeps its retry error type private, so the HTTP status is
/// read from the message of its `RequestError`
/// ("Server returned non-2xx status code: 503 ..."), and transport failures
/// from the public [`HttpError`].
fn chain_is_transient(e: &(dyn StdError + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(http) = err.downcast_ref::<HttpError>()
            && matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            )
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::TimedOut
                    | K::ConnectionReset
                    | K::ConnectionAborted
                    | K::ConnectionRefused
                    | K::BrokenPipe
                    | K::UnexpectedEof
            ) {
                return true;
            }
        }
        if message_is_transient(&err.to_string()) {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Whether an `object_store` request-error message reports a failure worth
/// retrying: a transport failure (no answer at all: refused, reset, closed,
/// timed out; `object_store` retries these itself, so reaching us means its
/// retries ran out), a 5xx, 429 Too Many Requests, 408 Request Timeout, or a
/// 200 whose body is an S3 `InternalError`/`SlowDown`.
///
/// The transport case is matched on the message because `object_store`
/// wraps its [`HttpError`] in a `#[error(transparent)]` variant, which hides
/// it from the `source()` chain.
fn message_is_transient(msg: &str) -> bool {
    if msg.starts_with("Server returned error response:") || msg.starts_with("HTTP error:") {
        return true;
    }
    let Some(rest) = msg.strip_prefix("Server returned non-2xx status code: ") else {
        return false;
    };
    match rest.get(..3).and_then(|s| s.parse::<u16>().ok()) {
        Some(status) => (500..600).contains(&status) || status == 429 || status == 408,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_sorted() {
        assert!(message_is_transient(
            "Server returned non-2xx status code: 503 Service Unavailable: "
        ));
        assert!(message_is_transient(
            "Server returned non-2xx status code: 429 Too Many Requests: x"
        ));
        assert!(message_is_transient(
            "Server returned error response: <Error><Code>SlowDown</Code></Error>"
        ));
        assert!(!message_is_transient(
            "Server returned non-2xx status code: 403 Forbidden: denied"
        ));
        assert!(!message_is_transient(
            "Server returned non-2xx status code: 400 Bad Request: "
        ));
        assert!(message_is_transient("HTTP error: error sending request"));
        assert!(!message_is_transient("something else 503"));
    }

    #[test]
    fn object_store_errors_are_classified() {
        let nf = object_store::Error::NotFound {
            path: "a".into(),
            source: "gone".into(),
        };
        assert_eq!(classify(&nf), Kind::NotFound);
        let nb = object_store::Error::NotFound {
            path: "a".into(),
            source: "404: <Error><Code>NoSuchBucket</Code></Error>".into(),
        };
        assert_eq!(classify(&nb), Kind::Permanent);
        let pre = object_store::Error::Precondition {
            path: "a".into(),
            source: "412".into(),
        };
        assert_eq!(classify(&pre), Kind::Exists);
        let io = object_store::Error::Generic {
            store: "S3",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        };
        assert_eq!(classify(&io), Kind::Transient);
        let other = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 400 Bad Request: no".into(),
        };
        assert_eq!(classify(&other), Kind::Permanent);
        assert_eq!(
            classify(&object_store::Error::NotImplemented),
            Kind::Permanent
        );
        // A refused answer, under a transport error that alone reads as
        // transient.
        let refused = HttpError::new(HttpErrorKind::Decode, BadAnswer("truncated".into()));
        let bad = object_store::Error::Generic {
            store: "S3",
            source: Box::new(refused),
        };
        assert_eq!(classify(&bad), Kind::Permanent);
    }

    #[test]
    fn a_full_disk_is_a_resource_error() {
        let full = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(std::io::Error::from(std::io::ErrorKind::StorageFull)),
        };
        assert_eq!(classify(&full), Kind::Full);
        let e = Error::Full {
            store: "local directory /s".into(),
            key: "segments/x.tar".into(),
            op: Op::Put,
            detail: "No space left on device".into(),
        };
        assert!(e.is_resource() && !e.is_transient());
        let msg = e.to_string();
        assert!(
            msg.contains("segments/x.tar") && msg.contains("free some space"),
            "{msg}"
        );
    }

    #[test]
    fn messages_name_store_and_key() {
        let e = Error::Transient {
            store: "s3://b/p".into(),
            key: "segments/x.tar".into(),
            op: Op::Put,
            detail: "503".into(),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("s3://b/p") && msg.contains("segments/x.tar"),
            "{msg}"
        );
        assert!(e.is_transient());
    }
}
