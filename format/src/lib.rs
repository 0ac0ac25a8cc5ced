//! # cbfs-format
//!
//! The byte formats of cbfs, and nothing else: no network, no database, no async
//! runtime, so the free-standing recovery tool can build from this crate alone.
//! The byte-level specification is `docs/FORMAT.md`; committed test vectors are in
//! `format/vectors/`.
//!
//! | object | type | in the store |
//! |---|---|---|
//! | member payload | [`write_member`] / [`open_member`] | inside a segment |
//! | pack (small files in one member) | [`write_pack`] / [`open_member_files`] | inside a segment |
//! | segment (a tar file) | [`SegmentWriter`] / [`SegmentReader`] | object of its own |
//! | summary | [`Summary`] | object of its own, plaintext, keyless |
//! | lockbox | [`Lockbox`] | object of its own |
//! | snapshot manifest | [`ManifestBuilder`] / [`Manifest`] | object of its own, signed |
//! | stub record | [`StubRecord`] | no: an extended attribute of a released file |
//! | retention record | [`RetentionRecord`] | object of its own, signed |
//! | manifest base | [`ManifestBase`] | object of its own, checked against a signed root |
//! | relocation record | [`Relocation`] | object of its own, unsigned |
//! | collection record | [`Collection`] | object of its own, unsigned |
//! | run record | [`RunRecord`] | object of its own, signed |
//! | collector lease | [`Lease`] | object of its own |
//!
//! A member payload is an age v1 file with one `cbfs1` stanza that wraps age's
//! per-file key under a *group key*; the plaintext inside is zstd-compressed file
//! metadata and content. A group key belongs to one (segment, scope) and is sealed
//! under the scope's Umbral public key in a [`Lockbox`].
//!
//! ## Worked example
//!
//! Seal a lockbox, write a segment with one member, then read it back as the
//! recovery tool would: open the lockbox with the scope's secret key, check the
//! segment against its summary without any key, and decrypt the member.
//!
//! ```
//! use std::io::{Cursor, Read};
//! use cbfs_format::{
//!     EntryKind, Lockbox, MemberId, Metadata, SegmentId, SegmentMode, SegmentReader,
//!     SegmentWriter, Summary, Timestamp,
//! };
//! use umbral_pre::SecretKey;
//!
//! # fn main() -> Result<(), cbfs_format::Error> {
//! // The administrator's scope key; the tiering agent only ever has the public half.
//! let scope_sk = SecretKey::random();
//! let scope_pk = scope_sk.public_key();
//!
//! // Tiering out: one group key per (segment, scope), sealed in a lockbox.
//! let segment_id = SegmentId::random();
//! let (lockbox, group_key) = Lockbox::seal("projects/apollo", &scope_pk, segment_id)?;
//!
//! let content = b"hello, cbfs\n";
//! let mut meta = Metadata::new("apollo/readme.txt", EntryKind::File);
//! meta.size = content.len() as u64;
//! meta.mode = 0o640;
//! meta.mtime = Timestamp::new(1_700_000_000, 0);
//!
//! // A real agent spools to a local file (`tempfile::tempfile()`); a Cursor works too.
//! let mut writer = SegmentWriter::new(Cursor::new(Vec::new()), segment_id, SegmentMode::Encrypted)?;
//! let member_id = MemberId::random();
//! writer.append_encrypted(member_id, &group_key, &meta, &content[..])?;
//! let (spool, summary) = writer.finish()?;
//! let segment = spool.into_inner();
//!
//! // Upload these three objects (and the segment); none shows a name or a key.
//! let (lockbox_bytes, summary_bytes) = (lockbox.to_bytes(), summary.to_bytes());
//!
//! // Garbage collection and audits: check the segment with no key at all.
//! let summary = Summary::from_bytes(&summary_bytes)?;
//! summary.verify_segment(&segment[..])?;
//!
//! // Recovery: open the lockbox, then walk the segment.
//! let key = Lockbox::from_bytes(&lockbox_bytes)?.open(&scope_sk)?;
//! let mut reader = SegmentReader::new(&segment[..])?;
//! while let Some(member) = reader.next_member()? {
//!     assert_eq!(member.info().member, Some(member_id));
//!     let (meta, mut data) = member.open(&key)?;
//!     let mut restored = Vec::new();
//!     data.read_to_end(&mut restored).map_err(|e| cbfs_format::Error::from_io(e, "reading"))?;
//!     assert_eq!(meta.path, b"apollo/readme.txt");
//!     assert_eq!(restored, content);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! ## Errors
//!
//! Every fallible call returns [`Error`]. Readers (`impl Read`) return
//! [`std::io::Error`]s that carry an [`Error`]: get it back with [`Error::from_io`].
//! [`Error::code`] names the class in a stable way (`payload_auth`, `wrong_key`, ...).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod base;
mod codec;
mod collection;
mod delta;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ids;
mod kem;
mod keys;
pub mod layout;
mod lease;
mod lockbox;
mod manifest;
mod member;
mod merkle;
mod metadata;
mod peek;
mod plain;
mod relocation;
mod retention;
mod run_record;
mod segment_reader;
mod segment_writer;
mod signing;
mod stanza;
mod stub;
mod summary;
mod tar;
pub mod versions;
mod zframe;

pub use base::ManifestBase;
pub use collection::{CollectReason, CollectedSegment, Collection};
pub use delta::{
    FULL_MANIFEST_EVERY, ManifestHeader, delta_writer, gather_manifest_chain,
    gather_manifest_chain_until, resolve_manifest_chain, resolve_manifest_chain_from,
    unverified_entries,
};
pub use error::{Error, ObjectKind, Result};
pub use ids::{GroupId, MemberId, RecordId, SegmentId, SnapshotId};
pub use kem::{OpeningKey, SealingKey};
pub use keys::{GROUP_KEY_LEN, GroupKey, GroupKeys, Keyring};
pub use lease::Lease;
pub use lockbox::{Header as LockboxHeader, Lockbox, MAX_SCOPE_LABEL_LEN, StoredLockbox};
pub use manifest::{Manifest, ManifestBuilder};
pub use member::{
    ContentReader, DEFAULT_ZSTD_LEVEL, MemberFiles, decrypt_frame, open_frame, open_member,
    open_member_files, open_member_piped, write_member, write_pack,
};
pub use merkle::{MAX_PACK_FILES, ManifestEntry, MerkleProof, Slots, merkle_root};
pub use metadata::{
    EntryKind, MAX_METADATA_LEN, MAX_NAME_LEN, MAX_PATH_LEN, MAX_XATTR_NAME_LEN,
    MAX_XATTR_VALUE_LEN, Metadata, Timestamp,
};
pub use peek::{PEEK_LEN, peek_metadata};
pub use plain::format_mtime as pax_mtime;
pub use relocation::Relocation;
pub use retention::{ForgottenSnapshot, MAX_POLICY_LEN, RetentionRecord};
pub use run_record::RunRecord;
pub use segment_reader::{
    MemberInfo, RawData, SegmentMember, SegmentReader, open_member_at, open_member_files_at,
};
pub use segment_writer::{CheckedCopy, SegmentMode, SegmentWriter, check_copy};
pub use stub::{RECALL_XATTR, STUB_XATTR, StubPhase, StubRecord};
pub use summary::{Summary, SummaryEntry};

/// Re-exported so callers name the same Umbral types this crate uses.
pub use umbral_pre;

#[cfg(test)]
mod member_tests;
