//! cbfs object formats (work in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod error;
mod ids;
mod keys;
mod member;
mod metadata;
mod stanza;

pub use error::{Error, ObjectKind, Result};
pub use ids::{GroupId, MemberId, SegmentId, SnapshotId};
pub use keys::{GROUP_KEY_LEN, GroupKey, GroupKeys, Keyring};
pub use member::{ContentReader, DEFAULT_ZSTD_LEVEL, open_member, write_member};
pub use metadata::{EntryKind, Metadata, Timestamp};

#[cfg(test)]
mod member_tests;
