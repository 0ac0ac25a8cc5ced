//! Where each object lives in a store: the object names every cbfs tool uses.
//!
//! ```text
//! keysets/<serial, 20 digits>.json            the public keyset, signed
//! segments/<segment id>.tar                   data: a tar of members
//! lockboxes/<segment id>/<group id>.lockbox   one per (segment, scope), key version 1
//! lockboxes/<segment id>/<group id>.v<N>.lockbox   the same group sealed under key version N >= 2
//! summaries/<segment id>.summary              plaintext member index
//! snapshots/<sequence, 20 digits>-<snapshot id>.manifest
//!
//! garbage collection and retention (see docs/FORMAT.md):
//! gc/retention/<created, 20 digits>-<record id>.retention      signed
//! gc/bases/<sequence, 20 digits>-<snapshot id>.base
//! gc/relocations/<old segment id>/<new segment id>.relocation
//! gc/collections/<created, 20 digits>-<record id>.collection
//! gc/runs/<started, 20 digits>-<run id>.run                     signed
//! gc/lease/<generation, 20 digits>.lease
//! ```
//!
//! Object names carry no file names and no key material.

use crate::ids::{GroupId, RecordId, SegmentId, SnapshotId};

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

/// Prefix of everything garbage collection and retention write.
pub const GC: &str = "gc/";
/// Prefix of retention records.
pub const RETENTION: &str = "gc/retention/";
/// Prefix of manifest bases.
pub const BASES: &str = "gc/bases/";
/// Prefix of relocation records.
pub const RELOCATIONS: &str = "gc/relocations/";
/// Prefix of collection records.
pub const COLLECTIONS: &str = "gc/collections/";
/// Prefix of writers' run records.
pub const RUNS: &str = "gc/runs/";
/// Prefix of the collector's lease.
pub const LEASE: &str = "gc/lease/";

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

/// A time as the 20 digits of a key (times before 1970 count as 1970).
fn time20(unix: i64) -> String {
    format!("{:020}", unix.max(0))
}

/// Splits `<20 digits>-<32 hex>` (what is left of a name once its prefix
/// and suffix are cut).
fn number_and_id(name: &str) -> Option<(u64, [u8; 16])> {
    let (num, id) = name.split_once('-')?;
    if num.len() != 20 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((
        num.parse().ok()?,
        crate::ids::parse_hex16(id.as_bytes()).ok()?,
    ))
}

/// The key of a retention record.
pub fn retention(created_unix: i64, id: &RecordId) -> String {
    format!("{RETENTION}{}-{id}.retention", time20(created_unix))
}

/// Whether `key` is named as a retention record.
pub fn is_retention(key: &str) -> bool {
    key.strip_prefix(RETENTION)
        .and_then(|n| n.strip_suffix(".retention"))
        .and_then(number_and_id)
        .is_some()
}

/// The key of the base of a delta snapshot.
pub fn base(sequence: u64, snapshot: &SnapshotId) -> String {
    format!("{BASES}{sequence:020}-{snapshot}.base")
}

/// Parses a base key into (sequence, snapshot id).
pub fn parse_base(key: &str) -> Option<(u64, SnapshotId)> {
    let (seq, id) = key
        .strip_prefix(BASES)?
        .strip_suffix(".base")
        .and_then(number_and_id)?;
    Some((seq, SnapshotId::from_bytes(id)))
}

/// The prefix of the relocation records of segment `old`.
pub fn relocations_of(old: &SegmentId) -> String {
    format!("{RELOCATIONS}{old}/")
}

/// The key of the record of members moved from `old` to `new`.
pub fn relocation(old: &SegmentId, new: &SegmentId) -> String {
    format!("{RELOCATIONS}{old}/{new}.relocation")
}

/// Parses a relocation key into (old segment, new segment).
pub fn parse_relocation(key: &str) -> Option<(SegmentId, SegmentId)> {
    let (old, new) = key
        .strip_prefix(RELOCATIONS)?
        .strip_suffix(".relocation")?
        .split_once('/')?;
    Some((old.parse().ok()?, new.parse().ok()?))
}

/// The key of a collection record.
pub fn collection(created_unix: i64, id: &RecordId) -> String {
    format!("{COLLECTIONS}{}-{id}.collection", time20(created_unix))
}

/// Whether `key` is named as a collection record.
pub fn is_collection(key: &str) -> bool {
    key.strip_prefix(COLLECTIONS)
        .and_then(|n| n.strip_suffix(".collection"))
        .and_then(number_and_id)
        .is_some()
}

/// The key of a writer's run record.
pub fn run_record(started_unix: i64, id: &RecordId) -> String {
    format!("{RUNS}{}-{id}.run", time20(started_unix))
}

/// Whether `key` is named as a run record.
pub fn is_run_record(key: &str) -> bool {
    key.strip_prefix(RUNS)
        .and_then(|n| n.strip_suffix(".run"))
        .and_then(number_and_id)
        .is_some()
}

/// The key of one generation of the collector's lease.
pub fn lease(generation: u64) -> String {
    format!("{LEASE}{generation:020}.lease")
}

/// Parses a lease key into its generation.
pub fn parse_lease(key: &str) -> Option<u64> {
    let n = key.strip_prefix(LEASE)?.strip_suffix(".lease")?;
    (n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
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

    #[test]
    fn gc_keys_round_trip() {
        let (a, b) = (SegmentId::random(), SegmentId::random());
        assert_eq!(parse_relocation(&relocation(&a, &b)), Some((a, b)));
        assert!(relocation(&a, &b).starts_with(&relocations_of(&a)));
        let snap = SnapshotId::random();
        assert_eq!(parse_base(&base(12, &snap)), Some((12, snap)));
        let id = RecordId::random();
        assert!(is_retention(&retention(-5, &id)));
        assert!(retention(9, &id) < retention(10, &id));
        assert!(is_collection(&collection(1_700_000_000, &id)));
        assert!(is_run_record(&run_record(3, &id)));
        assert_eq!(parse_lease(&lease(42)), Some(42));
        assert_eq!(parse_lease("gc/lease/42.lease"), None);
        assert!(!is_retention("gc/retention/1-x.retention"));
    }
}
