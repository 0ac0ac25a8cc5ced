//! cbfs object formats (work in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod error;
mod ids;
mod keys;
mod member;
mod metadata;
mod plain;
mod segment_reader;
mod segment_writer;
mod stanza;
mod summary;
mod tar;

pub use error::{Error, ObjectKind, Result};
pub use ids::{GroupId, MemberId, SegmentId, SnapshotId};
pub use keys::{GROUP_KEY_LEN, GroupKey, GroupKeys, Keyring};
pub use member::{ContentReader, DEFAULT_ZSTD_LEVEL, open_member, write_member};
pub use metadata::{EntryKind, Metadata, Timestamp};
pub use segment_reader::{MemberInfo, RawData, SegmentMember, SegmentReader, open_member_at};
pub use segment_writer::{SegmentMode, SegmentWriter};
pub use summary::{Summary, SummaryEntry};

#[cfg(test)]
mod member_tests;
