//! Restoring chosen files of a snapshot, by member: what a recall of a
//! released file asks for. The same engine as a whole restore (the same
//! plan, the same authentication of every chunk, the same check of the
//! member's bytes against the SHA-256 the signed manifest gives), over the
//! few manifest entries asked for instead of all of them. And the keyless
//! check of one member's stored bytes, for a release that must not drop a
//! file whose stored copy is not there.

use std::collections::HashMap;

use cbfs_format::{ManifestEntry, MemberId, SegmentId, Slots, Summary, layout};
use sha2::{Digest, Sha256};

use crate::engine::{Engine, RestoreOptions};
use crate::error::{Error, Result};
use crate::opener::LockboxOpener;
use crate::report::{Failure, Report};
use crate::sink::Sink;
use crate::snapshot::Snapshot;
use crate::source::ObjectSource;

/// One file of one member of a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct MemberFile {
    /// The segment that holds the member.
    pub segment: SegmentId,
    /// The member.
    pub member: MemberId,
    /// Which file of the member (0 unless it is a pack).
    pub slot: u16,
    /// The member's SHA-256 the caller knows (a stub record's): it must be
    /// the manifest's, or the file is not the version the caller means.
    pub sha256: [u8; 32],
}

/// The manifest entry `file` names in `snapshot`, or why there is none.
pub(crate) fn entry_of(
    snapshot: &Snapshot,
    file: &MemberFile,
) -> std::result::Result<ManifestEntry, Error> {
    let Some(e) = snapshot.manifest().find(&file.segment, &file.member) else {
        return Err(Error::NoSnapshot(format!(
            "snapshot {} (sequence {}) does not hold member {} of segment {}",
            snapshot.id(),
            snapshot.sequence(),
            file.member,
            file.segment
        )));
    };
    if !e.slots.contains(usize::from(file.slot)) {
        return Err(Error::NoSnapshot(format!(
            "snapshot {} holds member {} but not its file {}",
            snapshot.id(),
            file.member,
            file.slot
        )));
    }
    if e.sha256 != file.sha256 {
        return Err(Error::HashMismatch {
            object: snapshot.key().to_owned(),
            member: file.member.to_string(),
            reason: format!(
                "the signed manifest gives SHA-256 {}, the caller expects {}: another version of the member",
                hex::encode(e.sha256),
                hex::encode(file.sha256)
            ),
        });
    }
    Ok(*e)
}

/// Restores the files `wanted` of a verified snapshot into `sink`, each
/// authenticated and checked against the manifest's SHA-256 before the
/// sink commits it. A file the snapshot does not hold, or holds in another
/// version, is a failure naming it; the others are still restored.
pub fn restore_files(
    source: &dyn ObjectSource,
    snapshot: &Snapshot,
    opener: &dyn LockboxOpener,
    wanted: &[MemberFile],
    opts: &RestoreOptions,
    sink: &mut dyn Sink,
) -> Result<Report> {
    let mut engine = Engine::new(source, opener, opts);
    engine.report.snapshot = Some(snapshot.info());
    engine.report.complete_by_manifest = true;
    let mut entries: Vec<ManifestEntry> = Vec::new();
    // Where each member's entry is in `entries`: a recall asks for
    // thousands of files at once, several of them in one pack.
    let mut at: HashMap<(SegmentId, MemberId), usize> = HashMap::with_capacity(wanted.len());
    for file in wanted {
        match entry_of(snapshot, file) {
            Ok(e) => match at.entry((e.segment, e.member)) {
                std::collections::hash_map::Entry::Occupied(i) => {
                    entries[*i.get()].slots.insert(usize::from(file.slot))
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(entries.len());
                    let mut slots = Slots::empty();
                    slots.insert(usize::from(file.slot));
                    entries.push(ManifestEntry { slots, ..e });
                }
            },
            Err(err) => engine.report.fail(Failure::new(
                snapshot.key().to_owned(),
                Some(file.member.to_string()),
                &err,
            )),
        }
    }
    entries.sort_by_key(|e| (e.segment, e.member));
    crate::restore::plan_entries(&mut engine, source, &entries);
    crate::restore::finish(engine, sink)
}

/// Where the segment's summary places `entry`'s member, if it holds it as
/// the manifest names it.
fn stored_at(
    source: &dyn ObjectSource,
    segment: &SegmentId,
    entry: &ManifestEntry,
) -> Result<cbfs_format::SummaryEntry> {
    let sum_key = layout::summary(segment);
    let summary = Summary::from_bytes(&source.get(&sum_key)?)
        .map_err(|e| Error::format(sum_key.clone(), e))?;
    let Some(at) = summary.entry(&entry.member) else {
        return Err(Error::HashMismatch {
            object: sum_key,
            member: entry.member.to_string(),
            reason: "the segment's summary does not list the member".into(),
        });
    };
    if at.sha256 != entry.sha256 {
        return Err(Error::HashMismatch {
            object: sum_key,
            member: entry.member.to_string(),
            reason: "the summary's SHA-256 differs from the signed manifest's".into(),
        });
    }
    Ok(at.clone())
}

/// Checks, without any key, that the store holds `file`'s member as the
/// verified snapshot names it: the segment's summary locates it, and its
/// stored bytes hash to the manifest's SHA-256. Proves the stored copy is
/// there and unaltered; not that it decrypts (that needs a key).
pub fn check_stored(
    source: &dyn ObjectSource,
    snapshot: &Snapshot,
    file: &MemberFile,
) -> Result<()> {
    let entry = entry_of(snapshot, file)?;
    let (segment, at) = match stored_at(source, &file.segment, &entry) {
        Ok(at) => (file.segment, at),
        // Garbage collection may have moved it: follow the relocation
        // records (unsigned: the SHA-256 below is what proves the copy).
        Err(e) if !e.is_transient() => {
            match crate::relocation::Relocations::load(source)?.locate(source, &entry) {
                Some(moved) => (moved.segment, moved.entry),
                None => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    if at.sha256 != entry.sha256 {
        return Err(Error::HashMismatch {
            object: layout::summary(&segment),
            member: file.member.to_string(),
            reason: "the stored copy's SHA-256 differs from the signed manifest's".into(),
        });
    }
    let seg_key = layout::segment(&segment);
    let mut hasher = Sha256::new();
    let mut offset = at.data_offset;
    let end = at.data_offset + at.data_len;
    const PIECE: u64 = 8 << 20;
    while offset < end {
        let upto = end.min(offset + PIECE);
        let bytes = source.get_range(&seg_key, offset..upto)?;
        if bytes.is_empty() {
            return Err(Error::HashMismatch {
                object: seg_key,
                member: file.member.to_string(),
                reason: format!("the segment ends at {offset}, inside the member's data"),
            });
        }
        offset += bytes.len() as u64;
        hasher.update(&bytes);
    }
    let got: [u8; 32] = hasher.finalize().into();
    if got != entry.sha256 {
        return Err(Error::HashMismatch {
            object: seg_key,
            member: file.member.to_string(),
            reason: format!(
                "its stored bytes hash to {}, the signed manifest says {}",
                hex::encode(got),
                hex::encode(entry.sha256)
            ),
        });
    }
    Ok(())
}
