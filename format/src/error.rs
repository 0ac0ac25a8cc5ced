//! The crate's one error type.

use std::fmt;
use std::io;

use crate::ids::{GroupId, MemberId, SegmentId, SnapshotId};

/// The kind of object an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ObjectKind {
    /// An id in its 32-character hex form.
    Id,
    /// A member payload: an age v1 file with one `cbfs1` stanza.
    MemberPayload,
    /// The plaintext inside a member payload (framing and metadata).
    MemberPlaintext,
    /// A segment (a tar file).
    Segment,
    /// A segment summary.
    Summary,
    /// A lockbox.
    Lockbox,
    /// A snapshot manifest.
    Manifest,
    /// A released file's stub record (an extended attribute).
    StubRecord,
    /// A retention record (which snapshots are forgotten), signed.
    Retention,
    /// A relocation record (where garbage collection moved members).
    Relocation,
    /// A collection record (what garbage collection is about to delete).
    Collection,
    /// A manifest base (the whole entry list of a delta snapshot).
    ManifestBase,
    /// A run record (a writer's run that saw pending collections), signed.
    RunRecord,
    /// A garbage collector's lease.
    Lease,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Id => "id",
            ObjectKind::MemberPayload => "member payload",
            ObjectKind::MemberPlaintext => "member plaintext",
            ObjectKind::Segment => "segment",
            ObjectKind::Summary => "summary",
            ObjectKind::Lockbox => "lockbox",
            ObjectKind::Manifest => "snapshot manifest",
            ObjectKind::StubRecord => "stub record",
            ObjectKind::Retention => "retention record",
            ObjectKind::Relocation => "relocation record",
            ObjectKind::Collection => "collection record",
            ObjectKind::ManifestBase => "manifest base",
            ObjectKind::RunRecord => "run record",
            ObjectKind::Lease => "collector lease",
        })
    }
}

/// Everything that can go wrong while writing, reading or checking a cbfs object.
///
/// Each variant names the object it is about. No variant ever carries key bytes.
/// [`Error::code`] gives a stable, machine-readable name for each class.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes do not start with the brand of the expected object.
    #[error("not a cbfs {object}: bad brand (magic bytes)")]
    BadBrand {
        /// What was expected.
        object: ObjectKind,
    },

    /// The brand is right but the version is one this release does not know.
    #[error("{object}: unknown format version {found}; it was probably written by a newer cbfs")]
    UnknownVersion {
        /// The object.
        object: ObjectKind,
        /// The version found, as text.
        found: String,
    },

    /// The bytes break the object's layout (bad length, bad order, trailing bytes, ...).
    #[error("{object}: malformed at byte {offset}: {reason}")]
    Malformed {
        /// The object.
        object: ObjectKind,
        /// Offset of the problem inside the object.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A caller handed in something the format cannot hold.
    #[error("invalid input: {reason}")]
    InvalidInput {
        /// What is wrong.
        reason: String,
    },

    /// The age header of a member cannot be parsed or breaks the cbfs1 rules.
    #[error("member {member}: bad header: {reason}")]
    MemberHeader {
        /// The member.
        member: MemberId,
        /// What is wrong.
        reason: String,
    },

    /// The header MAC of a member does not verify: the header was altered.
    #[error("member {member}: header MAC does not verify (the header was altered)")]
    HeaderMac {
        /// The member.
        member: MemberId,
    },

    /// No stanza of the member unwraps with the keys given.
    #[error(
        "member {member}: no key opens it ({}): wrong group key, missing lockbox, or a key stanza taken from another member",
        fmt_group(.group)
    )]
    WrongKey {
        /// The member.
        member: MemberId,
        /// The group named in the member's stanza, when it could be read.
        group: Option<GroupId>,
    },

    /// A payload chunk does not authenticate: altered, reordered, spliced or cut inside a chunk.
    #[error(
        "member {member}: payload does not authenticate (altered, reordered or spliced chunks, or data after the last chunk)"
    )]
    PayloadAuth {
        /// The member.
        member: MemberId,
    },

    /// The payload ends before its last chunk.
    #[error("member {member}: payload is truncated (the last chunk is missing)")]
    PayloadTruncated {
        /// The member.
        member: MemberId,
    },

    /// The payload authenticated, but the plaintext inside is not a valid cbfs member.
    #[error("member {member}: bad plaintext: {reason}")]
    CorruptPlaintext {
        /// The member.
        member: MemberId,
        /// What is wrong.
        reason: String,
    },

    /// A file gave more or fewer bytes than its metadata said: it changed while being read.
    #[error("{path}: file changed while being read: metadata says {declared} bytes, read {actual}")]
    ContentLength {
        /// The file's path, lossily shown as UTF-8.
        path: String,
        /// The size in the metadata.
        declared: u64,
        /// What the reader gave (at least this many).
        actual: u64,
    },

    /// The tar structure of a segment is broken.
    #[error("segment {}: bad tar structure at offset {offset}: {reason}", fmt_segment(.segment))]
    Tar {
        /// The segment, when known.
        segment: Option<SegmentId>,
        /// Offset in the segment.
        offset: u64,
        /// What is wrong.
        reason: String,
    },

    /// A segment does not match its summary.
    #[error("segment {segment} does not match its summary at offset {offset}: {reason}")]
    SummaryMismatch {
        /// The segment.
        segment: SegmentId,
        /// Offset in the segment.
        offset: u64,
        /// What differs.
        reason: String,
    },

    /// A lockbox does not open: wrong key, wrong capsule fragments, or the lockbox was altered.
    #[error(
        "lockbox of group {group} (segment {segment}, scope {scope:?}) does not open: {reason}"
    )]
    LockboxOpen {
        /// The lockbox's group.
        group: GroupId,
        /// The lockbox's segment.
        segment: SegmentId,
        /// The lockbox's scope label.
        scope: String,
        /// Why.
        reason: &'static str,
    },

    /// A manifest's signature does not verify.
    #[error("snapshot {snapshot}: manifest signature does not verify")]
    BadSignature {
        /// The snapshot.
        snapshot: SnapshotId,
    },

    /// A signed record (retention record, run record) whose signature does
    /// not verify against the key written inside it.
    #[error("{object}: signature does not verify")]
    BadRecordSignature {
        /// The record.
        object: ObjectKind,
    },

    /// A manifest is validly signed, but by a key other than the trusted one.
    #[error("snapshot {snapshot}: manifest is signed by {found}, not by the trusted writer key")]
    UntrustedSigner {
        /// The snapshot.
        snapshot: SnapshotId,
        /// The signer's key, as hex.
        found: String,
    },

    /// A manifest's Merkle root does not match its entries.
    #[error("snapshot {snapshot}: Merkle root does not match the entries")]
    MerkleMismatch {
        /// The snapshot.
        snapshot: SnapshotId,
    },

    /// A manifest does not follow the one it claims to follow.
    #[error("snapshot {snapshot}: does not follow snapshot {previous}: {reason}")]
    BrokenChain {
        /// The later snapshot.
        snapshot: SnapshotId,
        /// The earlier snapshot.
        previous: SnapshotId,
        /// What is wrong.
        reason: &'static str,
    },

    /// An I/O error from the underlying reader or writer.
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn fmt_group(group: &Option<GroupId>) -> String {
    match group {
        Some(g) => format!("stanza is for group {g}"),
        None => "no usable stanza".to_owned(),
    }
}

fn fmt_segment(segment: &Option<SegmentId>) -> String {
    match segment {
        Some(s) => s.to_string(),
        None => "(unknown id)".to_owned(),
    }
}

impl Error {
    /// A stable snake_case name for the error class, for `--json` output and test vectors.
    pub fn code(&self) -> &'static str {
        match self {
            Error::BadBrand { .. } => "bad_brand",
            Error::UnknownVersion { .. } => "unknown_version",
            Error::Malformed { .. } => "malformed",
            Error::InvalidInput { .. } => "invalid_input",
            Error::MemberHeader { .. } => "member_header",
            Error::HeaderMac { .. } => "header_mac",
            Error::WrongKey { .. } => "wrong_key",
            Error::PayloadAuth { .. } => "payload_auth",
            Error::PayloadTruncated { .. } => "payload_truncated",
            Error::CorruptPlaintext { .. } => "corrupt_plaintext",
            Error::ContentLength { .. } => "content_length",
            Error::Tar { .. } => "tar",
            Error::SummaryMismatch { .. } => "summary_mismatch",
            Error::LockboxOpen { .. } => "lockbox_open",
            Error::BadSignature { .. } | Error::BadRecordSignature { .. } => "bad_signature",
            Error::UntrustedSigner { .. } => "untrusted_signer",
            Error::MerkleMismatch { .. } => "merkle_mismatch",
            Error::BrokenChain { .. } => "broken_chain",
            Error::Io { .. } => "io",
        }
    }

    /// Turns an [`io::Error`] returned by one of this crate's readers back into the
    /// [`Error`] it carries; any other I/O error becomes [`Error::Io`].
    pub fn from_io(err: io::Error, context: &'static str) -> Error {
        if err.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            if let Some(inner) = err.into_inner()
                && let Ok(ours) = inner.downcast::<Error>()
            {
                return *ours;
            }
            // Unreachable in practice: we just checked the type.
            return Error::Io {
                context,
                source: io::Error::other("lost error"),
            };
        }
        Error::Io {
            context,
            source: err,
        }
    }

    /// Wraps this error into an [`io::Error`], for `Read`/`Write` implementations.
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |e| Error::from_io(e, context)
    }
}

/// This crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
