//! Two-phase deletion.
//!
//! Phase one ([`plan`], then [`record`]) decides what no kept snapshot
//! needs any more and writes it down in a collection record; it deletes
//! nothing. Phase two ([`sweep`], on a later run) deletes what a record
//! lists, once every writer seen in the last days has finished a run that
//! started after the record was written (its signed run record says it saw
//! the record), so no run still going can name what goes. Before it deletes
//! anything, phase two checks each object again against the store as it is
//! then: whatever a snapshot names again (a run that referred to it before
//! phase one, or a forged record) is brought back, that is, left in place.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cbfs_format::{
    CollectReason, CollectedSegment, Collection, ManifestBase, RecordId, SegmentId, Summary,
    SummaryEntry, layout,
};
use serde::Serialize;

use crate::compact::Victim;
use crate::crash::{CrashPoint, TestHooks};
use crate::error::{Error, Result};
use crate::lease::Held;
use crate::mark::{Mark, Pending};

/// What phase one decided.
#[derive(Default)]
pub(crate) struct Plan {
    /// Segments no kept snapshot needs (dead, or never named).
    pub dead: Vec<CollectedSegment>,
    /// Segments to compact first.
    pub victims: Vec<Victim>,
    /// Forgotten manifests, stale relocation records, bases and run records.
    pub objects: Vec<String>,
    /// Bases to write for kept deltas whose previous manifest is forgotten.
    pub bases: Vec<(String, ManifestBase)>,
    /// Segments left alone because they are younger than the grace period.
    pub young: u64,
    /// Segments left alone because something unverifiable may need them.
    pub protected: u64,
    /// Bytes of segment data kept snapshots need.
    pub live_bytes: u64,
}

/// What one segment is, for phase one.
enum Fate {
    Keep,
    Collect(CollectReason),
    Compact(Arc<Summary>, Vec<SummaryEntry>),
}

/// The options phase one works by.
pub(crate) struct PlanOptions {
    pub grace: i64,
    pub min_live: f64,
}

/// The bytes of all the members of a segment (what its live share is a
/// share of).
fn member_bytes(summary: &cbfs_format::Summary) -> u64 {
    summary
        .entries()
        .iter()
        .map(|e| e.end_offset() - e.header_offset)
        .sum()
}

/// Decides phase one: which segments to collect, which to compact, which
/// other objects to collect, which bases to write.
pub(crate) fn plan(mark: &Mark, opts: &PlanOptions) -> Plan {
    let mut p = Plan::default();
    let pending: BTreeSet<SegmentId> = mark
        .pending
        .iter()
        .flat_map(|c| c.record.segments().iter().map(|s| s.segment))
        .collect();
    let pending_objects: BTreeSet<&str> = mark
        .pending
        .iter()
        .flat_map(|c| c.record.objects().iter().map(String::as_str))
        .collect();
    let mut ids: BTreeSet<SegmentId> = mark.segments.keys().copied().collect();
    // Summaries and lockboxes whose segment is gone (a deletion cut short).
    ids.extend(mark.summary_keys.keys());
    ids.extend(mark.lockboxes.keys());
    for id in ids {
        if pending.contains(&id) {
            continue;
        }
        let info = mark.segments.get(&id);
        if info.is_some_and(|i| mark.age(i) < opts.grace) {
            p.young += 1;
            continue;
        }
        if mark.protected.contains(&id) {
            p.protected += 1;
            continue;
        }
        let length = info.map_or(0, |i| i.size);
        let fate = match (info, mark.summary(&id)) {
            // Leftovers of a segment already deleted.
            (None, _) if !mark.has_live(&id) => Fate::Collect(CollectReason::Dead),
            (None, _) => Fate::Keep,
            (Some(_), None) if mark.has_live(&id) => Fate::Keep,
            (Some(_), None) if mark.named.contains(&id) => Fate::Collect(CollectReason::Dead),
            (Some(_), None) => Fate::Collect(CollectReason::Unnamed),
            (Some(_), Some(summary)) => {
                let (live, live_bytes) = mark.live_in(&summary);
                p.live_bytes += live_bytes;
                if live.is_empty() && mark.has_live(&id) {
                    // The summary does not list what the snapshots need:
                    // left alone (verify reports it).
                    Fate::Keep
                } else if live.is_empty() && mark.named.contains(&id) {
                    Fate::Collect(CollectReason::Dead)
                } else if live.is_empty() {
                    Fate::Collect(CollectReason::Unnamed)
                } else if (live_bytes as f64) < opts.min_live * member_bytes(&summary) as f64 {
                    // (The share of the members' bytes: a segment whose
                    // every member is live has nothing to reclaim, whatever
                    // its framing.)
                    Fate::Compact(summary, live)
                } else {
                    Fate::Keep
                }
            }
        };
        match fate {
            Fate::Keep => {}
            Fate::Collect(reason) => p.dead.push(CollectedSegment {
                segment: id,
                reason,
                length,
            }),
            Fate::Compact(summary, live) => p.victims.push(Victim {
                segment: id,
                summary,
                live,
            }),
        }
    }
    let mut objects: BTreeSet<String> = BTreeSet::new();
    let kept: BTreeSet<(u64, cbfs_format::SnapshotId)> = mark
        .listing
        .kept
        .iter()
        .map(|s| (s.sequence(), s.id()))
        .collect();
    let forgotten_keys: BTreeSet<&str> = mark
        .listing
        .forgotten
        .iter()
        .map(|(s, _)| s.key())
        .collect();
    for (s, _) in &mark.listing.forgotten {
        objects.insert(s.key().to_owned());
    }
    for (name, key) in &mark.bases {
        if !kept.contains(name) {
            objects.insert(key.clone());
        }
    }
    for key in &mark.relocation_keys {
        let old = layout::parse_relocation(key).map(|(o, _)| o);
        if !mark.used_relocations.contains(key) && !old.is_some_and(|o| mark.protected.contains(&o))
        {
            objects.insert(key.clone());
        }
    }
    // Run records that acknowledge no pending collection, but the newest
    // of each writer (it says when the writer was last seen).
    let pending_hashes: BTreeSet<[u8; 32]> = mark.pending.iter().map(|c| c.hash).collect();
    let mut newest: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    for (key, r) in &mark.runs {
        let w = r.writer().to_compressed_bytes().to_vec();
        let e = newest.entry(w).or_insert(key);
        if key.as_str() > *e {
            *e = key;
        }
    }
    let newest: BTreeSet<&str> = newest.into_values().collect();
    for (key, r) in &mark.runs {
        if !newest.contains(key.as_str())
            && !r.collections().iter().any(|h| pending_hashes.contains(h))
        {
            objects.insert(key.clone());
        }
    }
    objects.retain(|k| !pending_objects.contains(k.as_str()));
    p.objects = objects.into_iter().collect();
    // Bases: a kept delta whose previous manifest is forgotten must not
    // need that manifest once it is deleted.
    for s in &mark.listing.kept {
        let m = s.manifest();
        let follows_forgotten = s
            .info()
            .follows
            .as_deref()
            .is_some_and(|k| forgotten_keys.contains(k));
        if m.is_delta()
            && follows_forgotten
            && !mark.bases.contains_key(&(m.sequence(), m.snapshot_id()))
            && let Ok(base) = ManifestBase::of(m)
        {
            p.bases
                .push((layout::base(m.sequence(), &m.snapshot_id()), base));
        }
    }
    p
}

/// Writes the bases, then the collection record of phase one (if there is
/// anything to collect). Returns the record's key.
pub(crate) fn record(
    mark: &Mark,
    lease: &mut Held,
    plan: &Plan,
    compacted: &BTreeSet<SegmentId>,
    hooks: &TestHooks,
) -> Result<Option<String>> {
    let (store, rt) = (&mark.store, &mark.rt);
    for (key, base) in &plan.bases {
        lease.check()?;
        rt.block_on(store.put_new(key, base.to_bytes()))?;
    }
    hooks.at(CrashPoint::AfterBases);
    let mut segments = plan.dead.clone();
    for v in &plan.victims {
        if compacted.contains(&v.segment) {
            segments.push(CollectedSegment {
                segment: v.segment,
                reason: CollectReason::Compacted,
                length: v.summary.segment_len(),
            });
        }
    }
    if segments.is_empty() && plan.objects.is_empty() {
        return Ok(None);
    }
    let newest = mark
        .listing
        .kept
        .iter()
        .map(|s| s.sequence())
        .max()
        .unwrap_or(0);
    let id = RecordId::random();
    let created = cbfs_core::now().unix_timestamp();
    let c = Collection::new(id, created, newest, segments, plan.objects.clone())
        .map_err(|e| Error::format("the collection record", e))?;
    let key = layout::collection(created, &id);
    lease.check()?;
    rt.block_on(store.put_new(&key, c.to_bytes()))?;
    hooks.at(CrashPoint::AfterCollection);
    Ok(Some(key))
}

/// What phase two did with one collection record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SweepReport {
    /// The collection record.
    pub collection: String,
    /// Whether its objects were deleted (and the record with them).
    pub done: bool,
    /// The active writers that have not finished a run since the record
    /// was written (phase two waits for them).
    pub waiting_for: Vec<String>,
    /// Segments deleted.
    pub segments_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Other objects deleted.
    pub objects_deleted: u64,
    /// What a snapshot needs again, left in place.
    pub brought_back: Vec<String>,
}

/// The writers phase two still waits for before it may delete what `c`
/// lists: every writer seen in the last `window` seconds must have signed
/// a run record acknowledging it.
pub(crate) fn waiting_for(mark: &Mark, c: &Pending, window: i64) -> Vec<String> {
    let acked: BTreeSet<Vec<u8>> = mark
        .runs
        .iter()
        .filter(|(_, r)| r.acknowledges(&c.hash))
        .map(|(_, r)| r.writer().to_compressed_bytes().to_vec())
        .collect();
    mark.active_writers(window)
        .into_iter()
        .filter(|(k, _)| !acked.contains(k))
        .map(|(_, name)| name)
        .collect()
}

/// Whether phase two may delete an object a collection record lists:
/// only the kinds of object a collection deletes, and only if nothing
/// kept needs it now.
fn deletable(mark: &Mark, c: &Pending, key: &str) -> bool {
    if layout::parse_manifest(key).is_some() {
        return !mark.listing.kept.iter().any(|s| s.key() == key);
    }
    if let Some(name) = layout::parse_base(key) {
        return !mark
            .listing
            .kept
            .iter()
            .any(|s| (s.sequence(), s.id()) == name);
    }
    if let Some((old, _)) = layout::parse_relocation(key) {
        return !mark.used_relocations.contains(key) && !mark.protected.contains(&old);
    }
    if layout::is_run_record(key) {
        return !mark.runs.iter().any(|(k, r)| {
            k == key
                && mark
                    .pending
                    .iter()
                    .any(|p| p.key != c.key && r.acknowledges(&p.hash))
        });
    }
    false
}

/// Phase two of one collection record (see the module).
pub(crate) fn sweep(
    mark: &Mark,
    lease: &mut Held,
    c: &Pending,
    window: i64,
    grace: i64,
    hooks: &TestHooks,
) -> Result<SweepReport> {
    let mut r = SweepReport {
        collection: c.key.clone(),
        waiting_for: waiting_for(mark, c, window),
        ..SweepReport::default()
    };
    if !r.waiting_for.is_empty() {
        return Ok(r);
    }
    if let Some((object, reason)) = mark.blocking.first() {
        return Err(Error::Unsafe {
            object: object.clone(),
            reason: reason.clone(),
        });
    }
    let (store, rt) = (&mark.store, &mark.rt);
    let mut n = 0;
    for s in c.record.segments() {
        let id = s.segment;
        let young = mark.segments.get(&id).is_some_and(|i| mark.age(i) < grace);
        if mark.has_live(&id) || mark.protected.contains(&id) || young {
            r.brought_back.push(layout::segment(&id));
            continue;
        }
        lease.check()?;
        n += 1;
        let size = mark.segments.get(&id).map_or(0, |i| i.size);
        rt.block_on(store.delete(&layout::segment(&id)))?;
        hooks.at(CrashPoint::DeletedSegment(n));
        rt.block_on(store.delete(&layout::summary(&id)))?;
        for o in rt.block_on(store.list(&layout::lockboxes_of(&id)))? {
            rt.block_on(store.delete(&o.key))?;
        }
        hooks.at(CrashPoint::DeletedLockboxes(n));
        r.segments_deleted += 1;
        r.bytes_deleted += size;
    }
    // Forgotten manifests newest first, so that every one left still
    // verifies (a later delta needs the one before it); then the rest.
    let mut manifests: Vec<(u64, &String)> = c
        .record
        .objects()
        .iter()
        .filter_map(|k| layout::parse_manifest(k).map(|(seq, _)| (seq, k)))
        .collect();
    manifests.sort_by(|a, b| b.cmp(a));
    let mut m = 0;
    for (_, key) in manifests {
        if !deletable(mark, c, key) {
            r.brought_back.push(key.clone());
            continue;
        }
        lease.check()?;
        rt.block_on(store.delete(key))?;
        m += 1;
        r.objects_deleted += 1;
        hooks.at(CrashPoint::DeletedManifest(m));
    }
    for key in c.record.objects() {
        if layout::parse_manifest(key).is_some() {
            continue;
        }
        if !deletable(mark, c, key) {
            r.brought_back.push(key.clone());
            continue;
        }
        lease.check()?;
        rt.block_on(store.delete(key))?;
        r.objects_deleted += 1;
    }
    hooks.at(CrashPoint::DeletedObjects);
    lease.check()?;
    hooks.at(CrashPoint::BeforeRecordDelete);
    rt.block_on(store.delete(&c.key))?;
    hooks.at(CrashPoint::AfterRecordDelete);
    r.done = true;
    Ok(r)
}
