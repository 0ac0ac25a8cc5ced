//! Where each object lives in a store: the object names every cbfs tool uses.
//!
//! ```text
//! keysets/<serial, 20 digits>.json            the public keyset, signed
//! segments/<segment id>.tar                   data: a tar of members
//! lockboxes/<segment id>/<group id>.lockbox   one per (segment, scope), key version 1
//! lockboxes/<segment id>/<group id>.v<N>.lockbox   the same group sealed under key version N >= 2
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

/// The key of a lockbox (scope key version 1).
pub fn lockbox(segment: &SegmentId, group: &GroupId) -> String {
    format!("{LOCKBOXES}{segment}/{group}.lockbox")
}

/// The key of a lockbox sealed under scope key version `version`: a
/// rotation writes a new object beside the old one, never over it.
pub fn lockbox_at(segment: &SegmentId, group: &GroupId, version: u32) -> String {
    if version <= 1 {
        lockbox(segment, group)
    } else {
        format!("{LOCKBOXES}{segment}/{group}.v{version}.lockbox")
    }
}

/// Parses the last part of a lockbox key, `<group>.lockbox` or
/// `<group>.v<N>.lockbox`, into (group id, key version).
pub fn parse_lockbox_name(name: &str) -> Option<(GroupId, u32)> {
    let stem = name.strip_suffix(".lockbox")?;
    match stem.split_once('.') {
        None => Some((stem.parse().ok()?, 1)),
        Some((group, v)) => {
            let digits = v.strip_prefix('v')?;
            if digits.starts_with('0') || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let version: u32 = digits.parse().ok()?;
            (version >= 2).then_some(())?;
            Some((group.parse().ok()?, version))
        }
    }
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
        let g = GroupId::random();
        for v in [1, 2, 17] {
            let key = lockbox_at(&s, &g, v);
            let name = key.rsplit('/').next().unwrap();
            assert_eq!(parse_lockbox_name(name), Some((g, v)));
        }
        assert_eq!(lockbox_at(&s, &g, 1), lockbox(&s, &g));
        for bad in [
            "x.lockbox",
            "{g}.v1.lockbox",
            "{g}.v02.lockbox",
            "{g}.w2.lockbox",
        ] {
            assert_eq!(
                parse_lockbox_name(&bad.replace("{g}", &g.to_string())),
                None,
                "{bad}"
            );
        }
    }
}
