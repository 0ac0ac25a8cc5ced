//! cbfs object stores: a local directory or any S3 API, holding write-once
//! objects.
//!
//! The tiering agent writes segments, summaries, lockboxes and snapshot
//! manifests through a [`Store`]. Objects are **never overwritten**:
//! [`Store::put_new`] and [`Store::put_file_new`] succeed when the key is
//! free, succeed without writing when an identical object is already there
//! (a rerun after a crash finishes the job), and fail with
//! [`Error::AlreadyExists`] when the key holds something else. A reader
//! never sees a partial object.
//!
//! On S3 the promise rests on the server refusing a write to a taken key
//! (`If-None-Match: *`). Some servers honour that on `PutObject` but not on
//! `CompleteMultipartUpload` (Ceph's radosgw 16.2 replaces the object), so
//! before completing a multipart upload (a file above the part size) the
//! store looks for the key: an object already there is never replaced. What
//! such a server leaves open is a race: an object created by another writer
//! between that look and the completion is replaced, and both writers are
//! told they created it (docs/THREAT_MODEL.md, "Write-once objects").
//!
//! Both backends are [`object_store`]'s: `LocalFileSystem` for a directory,
//! `AmazonS3` for any S3 API. Requests to S3 are retried on 5xx answers,
//! throttling and dropped connections with bounded exponential backoff
//! ([`RetryPolicy`]); what still fails is [`Error::Transient`]
//! ([`Error::is_transient`]), told apart from [`Error::Permanent`]. Answers
//! that cannot be right are refused as permanent errors rather than taken at
//! their word: a listing marked truncated without a continuation token (a
//! partial listing is never passed off as the whole), and a `200 OK` to the
//! completion of a multipart upload whose body is an error document. Every
//! error names the store ([`Store::describe`]) and the object key, and never
//! a credential.
//!
//! A crash mid-write leaves no partial object, only garbage that
//! [`Store::sweep_leftovers`] removes on a local directory (on S3, a
//! lifecycle rule that aborts incomplete multipart uploads does the same).
//!
//! # Example
//!
//! ```
//! use cbfs_store::{PutOutcome, Store};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cbfs_store::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let dir = dir.path().join("archive");
//! # let dir = dir.to_str().unwrap();
//! // A directory path, or "s3://bucket/prefix" with the usual AWS_* variables.
//! let store = Store::open(dir)?;
//!
//! let key = "summaries/0a1b2c.summary";
//! assert_eq!(store.put_new(key, &b"summary bytes"[..]).await?, PutOutcome::Created);
//! // A rerun writing the same bytes is fine ...
//! assert_eq!(store.put_new(key, &b"summary bytes"[..]).await?, PutOutcome::AlreadyPresent);
//! // ... other bytes under the same key are refused, and the object stays.
//! assert!(store.put_new(key, &b"other"[..]).await.unwrap_err().is_already_exists());
//!
//! assert_eq!(store.get(key).await?, &b"summary bytes"[..]);
//! assert_eq!(store.get_range(key, 0..7).await?, &b"summary"[..]);
//! let listed = store.list("summaries").await?;
//! assert_eq!(listed[0].key, key);
//! store.delete(key).await?;
//! assert!(store.head(key).await?.is_none());
//! # Ok(())
//! # }
//! ```
//!
//! # Keys
//!
//! Keys are relative `/`-separated names such as `segments/0a1b.tar`, made
//! of ASCII letters, digits, `-`, `_` and `.`; see [`validate_key`]. Every
//! method checks its key and refuses a bad one with [`Error::BadKey`].

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod key;
mod local;
mod put;
mod read;
mod s3;
#[cfg(feature = "source")]
mod source;
mod store;

pub use config::{MIN_PART_SIZE, RetryPolicy, S3Config, StoreOptions};
pub use error::{Error, Op, Result};
pub use key::{MAX_KEY_LEN, validate_key};
pub use read::ObjectReader;
#[cfg(feature = "source")]
pub use source::StoreSource;
pub use store::{ObjectInfo, PutOutcome, Store};

/// The secret string type used in [`S3Config`], re-exported for callers.
pub use secrecy::SecretString;
