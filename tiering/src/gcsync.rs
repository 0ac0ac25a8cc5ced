//! What the agent learns from garbage collection, at the start of a run,
//! and what it tells the collector at the end.
//!
//! Before a run: relocation records move the index's files from old
//! segments to new ones (so incremental runs, `ls` and restores go on as
//! before, and the next manifest names the new places); files whose
//! segment a pending collection is about to delete, or that the store no
//! longer holds, lose their index records and are stored again. After a
//! run that saw pending collections: a run record signed with the writer
//! key, which lets the collector's second phase go ahead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cbfs_format::{Collection, RecordId, Relocation, RunRecord, SegmentId, Summary, layout};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use crate::agent::Agent;
use crate::error::Result;
use crate::index::{Batch, SegmentRecord};

/// What a run saw of garbage collection when it started.
pub(crate) struct Seen {
    started: i64,
    /// Hashes of the collection records pending then.
    collections: Vec<[u8; 32]>,
}

/// Learns what garbage collection did and is about to do (see the module).
pub(crate) fn before_run(agent: &Agent, rt: &Handle) -> Result<Seen> {
    let started = cbfs_core::now().unix_timestamp();
    let mut seen = Seen {
        started,
        collections: Vec::new(),
    };
    let gc = rt.block_on(agent.store.list(layout::GC))?;
    if gc.is_empty() {
        return Ok(seen);
    }
    let applied = apply_relocations(agent, rt, &gc)?;
    let mut doomed: BTreeSet<SegmentId> = BTreeSet::new();
    for o in gc.iter().filter(|o| layout::is_collection(&o.key)) {
        let bytes = rt.block_on(agent.store.get(&o.key))?;
        match Collection::from_bytes(&bytes) {
            Ok(c) => {
                seen.collections.push(Sha256::digest(&bytes).into());
                doomed.extend(c.segments().iter().map(|s| s.segment));
            }
            Err(e) => {
                tracing::warn!(object = %o.key, error = %e, "not a collection record, ignored")
            }
        }
    }
    // Segments this index still uses that are gone from the store, or
    // about to go: their files are stored again.
    let stored: BTreeSet<SegmentId> = rt
        .block_on(agent.store.list(layout::SEGMENTS))?
        .iter()
        .filter_map(|o| layout::parse_segment(&o.key))
        .collect();
    let lost: BTreeSet<SegmentId> = agent
        .index
        .segments()?
        .into_iter()
        .filter(|(id, rec)| rec.live_files > 0 && (doomed.contains(id) || !stored.contains(id)))
        .map(|(id, _)| id)
        .collect();
    if !lost.is_empty() {
        forget_files_in(agent, &lost)?;
    }
    if applied > 0 || !lost.is_empty() {
        tracing::info!(
            relocations = applied,
            segments_lost = lost.len(),
            "learned what garbage collection did"
        );
    }
    Ok(seen)
}

/// Applies the relocation records the index has not applied yet; returns
/// how many. A record is applied once the index has files in its old
/// segment; records are taken in passes until none applies, so that a
/// member moved twice (S to T, then T to U) ends in U whatever the order
/// of the listing.
fn apply_relocations(agent: &Agent, rt: &Handle, gc: &[cbfs_store::ObjectInfo]) -> Result<usize> {
    let mut applied = 0;
    let mut summaries: HashMap<SegmentId, Option<Summary>> = HashMap::new();
    let mut todo: Vec<(&str, SegmentId, SegmentId)> = Vec::new();
    for o in gc {
        if let Some((old, new)) = layout::parse_relocation(&o.key)
            && !agent.index.relocation_applied(&o.key)?
        {
            todo.push((&o.key, old, new));
        }
    }
    loop {
        let mut progress = false;
        for &(key, old, new) in &todo {
            let uses_old = agent.index.segment(&old)?.is_some_and(|r| r.live_files > 0);
            if !uses_old || agent.index.relocation_applied(key)? {
                continue;
            }
            let mut batch = Batch::default();
            batch.put_relocation_applied(key);
            let record = rt
                .block_on(agent.store.get(key))
                .map_err(crate::error::Error::from)
                .and_then(|b| Relocation::from_bytes(&b).map_err(Into::into));
            match record {
                Ok(r) if (r.old_segment(), r.new_segment()) == (old, new) => {
                    let summary = summaries
                        .entry(new)
                        .or_insert_with(|| {
                            rt.block_on(agent.store.get(&layout::summary(&new)))
                                .ok()
                                .and_then(|b| Summary::from_bytes(&b).ok())
                        })
                        .clone();
                    move_files(agent, &r, summary.as_ref(), &mut batch)?;
                    applied += 1;
                    progress = true;
                }
                // Not followed: the files stay where they were (and are
                // stored again if that segment goes).
                _ => tracing::warn!(object = %key, "relocation record not usable, ignored"),
            }
            agent.index.commit(batch)?;
        }
        if !progress {
            return Ok(applied);
        }
    }
}

/// Points the index's files of the members `record` moved at their new
/// segment, and moves their live counts along.
fn move_files(
    agent: &Agent,
    record: &Relocation,
    summary: Option<&Summary>,
    batch: &mut Batch,
) -> Result<()> {
    let (old, new) = (record.old_segment(), record.new_segment());
    let mut old_rec = agent.index.segment(&old)?.unwrap_or_default();
    let mut new_rec = agent.index.segment(&new)?.unwrap_or_else(|| SegmentRecord {
        size: summary.map_or(0, Summary::segment_len),
        members: summary.map_or(0, |s| s.entries().len() as u64),
        ..SegmentRecord::default()
    });
    for e in record.entries() {
        for slot in 0..=u16::MAX {
            let Some(member) = agent.index.member(&e.member, slot)? else {
                break;
            };
            let Some(mut file) = agent.index.file(&member.path)? else {
                continue;
            };
            if file.segment != old || file.member != e.member || file.slot != slot {
                continue;
            }
            file.segment = new;
            batch.put_file(&member.path, &file);
            old_rec.live_files = old_rec.live_files.saturating_sub(1);
            old_rec.live_bytes = old_rec.live_bytes.saturating_sub(file.stored);
            new_rec.files += 1;
            new_rec.live_files += 1;
            new_rec.live_bytes += file.stored;
        }
    }
    batch.put_segment(&old, &old_rec);
    batch.put_segment(&new, &new_rec);
    Ok(())
}

/// Removes the index records of every file stored in `segments`: the next
/// scan finds those files new and stores them again.
fn forget_files_in(agent: &Agent, segments: &BTreeSet<SegmentId>) -> Result<()> {
    let mut paths = Vec::new();
    agent.index.for_each_file(|path, rec| {
        if segments.contains(&rec.segment) {
            paths.push(path.to_vec());
        }
        Ok(())
    })?;
    let mut emptied: BTreeMap<SegmentId, SegmentRecord> = BTreeMap::new();
    for id in segments {
        let mut rec = agent.index.segment(id)?.unwrap_or_default();
        rec.live_files = 0;
        rec.live_bytes = 0;
        emptied.insert(*id, rec);
    }
    for chunk in paths.chunks(10_000) {
        let mut batch = Batch::default();
        for p in chunk {
            batch.delete_file(p);
        }
        agent.index.commit(batch)?;
    }
    let mut batch = Batch::default();
    for (id, rec) in &emptied {
        batch.put_segment(id, rec);
    }
    let mut state = agent.index.state()?;
    state.dirty = true;
    batch.put_state(&state);
    agent.index.commit(batch)?;
    tracing::warn!(
        files = paths.len(),
        segments = segments.len(),
        "files whose segments garbage collection deletes (or the store lost) are stored again"
    );
    Ok(())
}

/// After a run that saw pending collections: the signed run record that
/// tells the collector this writer has moved on.
pub(crate) fn after_run(
    agent: &Agent,
    rt: &Handle,
    seen: Seen,
    snapshot: Option<u64>,
) -> Result<()> {
    if seen.collections.is_empty() {
        return Ok(());
    }
    let id = RecordId::random();
    let finished = cbfs_core::now().unix_timestamp().max(seen.started);
    let record = RunRecord::sign(
        id,
        seen.started,
        finished,
        snapshot,
        seen.collections,
        agent.writer(),
    )?;
    let key = layout::run_record(seen.started, &id);
    rt.block_on(agent.store.put_new(&key, record.to_bytes()))?;
    tracing::info!(record = %key, "run record written for the collector");
    Ok(())
}
