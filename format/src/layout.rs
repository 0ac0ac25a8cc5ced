//! Where each object lives in a store: the object names every cbfs tool uses.
//!
//! ```text
//! keysets/<serial, 20 digits>.json            the public keyset, signed
//! segments/<segment id>.tar                   data: a tar of members
//! lockboxes/<segment id>/<group id>.lockbox   one per (segment, scope)
//! summaries/<segment id>.summary              plaintext member index
//! snapshots/<sequence, 20 digits>-<snapshot id>.manifest
//! ```
//!
//! Object names carry no file names and no key material.

use crate::ids::{GroupId, SegmentId, SnapshotId};

/// Prefix of keyset objects.
pub const KEYSETS: &str = "keysets/";
/// Prefix of segment objects.
pub const SEGMENTS: &str = "segments/";
/// Prefix of lockbox objects.
pub const LOCKBOXES: &str = "lockboxes/";
/// Prefix of summary objects.
pub const SUMMARIES: &str = "summaries/";
/// Prefix of snapshot manifests.
pub const SNAPSHOTS: &str = "snapshots/";

/// The key of a keyset object.
pub fn keyset(serial: u64) -> String {
    format!("{KEYSETS}{serial:020}.json")
}

/// The key of a segment.
pub fn segment(id: &SegmentId) -> String {
    format!("{SEGMENTS}{id}.tar")
}

/// The key of a summary.
pub fn summary(id: &SegmentId) -> String {
    format!("{SUMMARIES}{id}.summary")
}

/// The prefix of a segment's lockboxes.
pub fn lockboxes_of(id: &SegmentId) -> String {
    format!("{LOCKBOXES}{id}/")
}

/// The key of a lockbox.
pub fn lockbox(segment: &SegmentId, group: &GroupId) -> String {
    format!("{LOCKBOXES}{segment}/{group}.lockbox")
}

/// The key of a snapshot manifest.
pub fn manifest(sequence: u64, id: &SnapshotId) -> String {
    format!("{SNAPSHOTS}{sequence:020}-{id}.manifest")
}

/// Parses a manifest key into (sequence, snapshot id).
pub fn parse_manifest(key: &str) -> Option<(u64, SnapshotId)> {
    let name = key.strip_prefix(SNAPSHOTS)?.strip_suffix(".manifest")?;
    let (seq, id) = name.split_once('-')?;
    if seq.len() != 20 {
        return None;
    }
    Some((seq.parse().ok()?, id.parse().ok()?))
}

/// Parses a segment key into its id.
pub fn parse_segment(key: &str) -> Option<SegmentId> {
    key.strip_prefix(SEGMENTS)?
        .strip_suffix(".tar")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_keys_round_trip_and_sort_by_sequence() {
        let id = SnapshotId::random();
        let k = manifest(7, &id);
        assert_eq!(parse_manifest(&k), Some((7, id)));
        assert!(manifest(9, &id) < manifest(10, &id));
        assert_eq!(parse_manifest("snapshots/7-x.manifest"), None);
        let s = SegmentId::random();
        assert_eq!(parse_segment(&segment(&s)), Some(s));
    }
}
