//! The end of a run: the signed snapshot manifest of what the index holds.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use cbfs_format::{ManifestBuilder, ManifestEntry, MemberId, SegmentId, SnapshotId, layout};

use crate::error::{Error, Result};
use crate::index::{Batch, SnapshotRecord};

use super::{CrashPoint, Shared};

pub(crate) fn write_manifest(shared: &Shared<'_>) -> Result<SnapshotRecord> {
    let agent = shared.agent;
    let mut state = agent.index.state()?;
    // One entry per member, with the slots of its files still in the tree.
    let mut members: HashMap<(SegmentId, MemberId), ManifestEntry> = HashMap::new();
    agent.index.for_each_file(|_, rec| {
        members
            .entry((rec.segment, rec.member))
            .or_insert(ManifestEntry {
                slots: cbfs_format::Slots::empty(),
                ..ManifestEntry::single(rec.segment, rec.member, rec.sha256)
            })
            .slots
            .insert(usize::from(rec.slot));
        Ok(())
    })?;
    let mut entries: Vec<ManifestEntry> = members.into_values().collect();
    entries.sort();
    let next = |seq: u64, what: &str| {
        seq.checked_add(1).ok_or_else(|| Error::Integrity {
            object: what.to_owned(),
            reason: format!("sequence {seq} cannot be followed: it is the largest there is"),
        })
    };
    let mut sequence = match &state.last_snapshot {
        Some(s) => next(s.sequence, &s.manifest_key)?,
        None => 1,
    };
    let previous = state.last_snapshot.as_ref().map(|s| s.manifest_hash);
    let root = cbfs_format::merkle_root(&entries);

    // A run that died after uploading its manifest and before recording it
    // left that manifest behind: adopt it if it is this very state, else
    // number past it. The newest manifest recorded is the base of a delta.
    // Only manifests of trusted writers count: anything else in the store
    // is ignored (and reported by verify).
    let mut adopted = None;
    let mut base = None;
    let since = state.last_snapshot.as_ref().map_or(0, |s| s.sequence);
    let source = agent.source(shared.rt.clone());
    let (known, _ignored) = cbfs_restore::snapshots(&source, &agent.trust()?, since)
        .map_err(|e| crate::error::restore_error("snapshots/", e))?;
    for snap in known {
        let m = snap.manifest();
        if Some(m.hash()) == previous {
            base = Some(m.clone());
        } else if m.sequence() >= sequence {
            if m.sequence() == sequence
                && m.merkle_root() == &root
                && m.previous_hash() == previous
                && m.writer_key() == &agent.writer_key()
            {
                adopted = Some((snap.key().to_owned(), m.clone()));
            } else {
                sequence = sequence.max(next(m.sequence(), snap.key())?);
            }
        }
    }
    let (key, manifest) = match adopted {
        Some(found) => found,
        None => {
            let id = SnapshotId::random();
            let created = time::OffsetDateTime::now_utc().unix_timestamp();
            let mut builder = ManifestBuilder::new(id, sequence, previous, created);
            builder.extend(entries.iter().copied());
            let manifest = match &base {
                Some(b) if b.sequence().checked_add(1) == Some(sequence) => {
                    builder.sign_delta(agent.writer(), b)?
                }
                _ => builder.sign(agent.writer())?,
            };
            let bytes = manifest.to_bytes();
            let key = layout::manifest(sequence, &id);
            shared.wait(agent.store.put_new(&key, bytes.clone()))?;
            shared
                .bytes_stored
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            shared.crash_if(CrashPoint::AfterManifest);
            (key, manifest)
        }
    };
    let id = manifest.snapshot_id();
    let created = manifest.created_unix();
    let rec = SnapshotRecord {
        id,
        sequence,
        manifest_key: key,
        manifest_hash: manifest.hash(),
        created,
        entries: entries.iter().map(|e| e.slots.len() as u64).sum(),
    };
    state.dirty = false;
    state.last_snapshot = Some(rec.clone());
    let mut batch = Batch::default();
    batch.put_snapshot(&rec);
    batch.put_state(&state);
    agent.index.commit(batch)?;
    Ok(rec)
}
