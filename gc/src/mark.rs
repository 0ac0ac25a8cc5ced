//! Mark: what the store holds, what is trusted, and what is live.
//!
//! The live set is every member (with the files of it) that a kept
//! snapshot names, read from manifests verified against the public keyset
//! and from verified retention records, and followed through relocation
//! records to where the member is now. A relocation record is followed only
//! if the summary of the segment it points to lists the member at that
//! very place with the same SHA-256. Whatever an object under `snapshots/`
//! that does not verify might name counts as live.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

use cbfs_core::Keyset;
use cbfs_format::{
    Collection, ManifestEntry, MemberId, Relocation, RunRecord, SegmentId, SnapshotId, Summary,
    SummaryEntry, layout, unverified_entries,
};
use cbfs_restore::{Listing, ObjectSource, Trust, snapshot_listing};
use cbfs_store::{ObjectInfo, Store, StoreSource};
use sha2::{Digest, Sha256};
use tokio::runtime::Handle;

use crate::error::{Error, Result};

/// How many relocation records may lead one member on: more is a loop or
/// a forgery.
const MAX_HOPS: usize = 64;

/// A member a kept snapshot needs, where it is now.
#[derive(Clone, Debug)]
pub(crate) struct LiveMember {
    /// SHA-256 of its data, as the signed manifest gives it.
    pub sha256: [u8; 32],
    /// The files of it that kept snapshots hold (at least one).
    pub files: usize,
}

/// A relocation record that checked out against its new segment's summary.
#[derive(Clone, Debug)]
pub(crate) struct CheckedRelocation {
    pub key: String,
    pub record: Relocation,
}

/// A collection record still waiting for its second phase.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub key: String,
    pub hash: [u8; 32],
    pub record: Collection,
}

/// The state of the store, as one run of the collector sees it.
pub(crate) struct Mark {
    pub store: Store,
    pub rt: Handle,
    pub source: StoreSource,
    pub keyset: Keyset,
    pub trust: Trust,
    /// Now, by the collector's clock (seconds since the Unix epoch).
    pub now: i64,
    pub listing: Listing,
    /// Segment objects, by id.
    pub segments: BTreeMap<SegmentId, ObjectInfo>,
    /// Keys of summary objects, by segment.
    pub summary_keys: BTreeMap<SegmentId, String>,
    /// Keys of lockbox objects, by segment.
    pub lockboxes: BTreeMap<SegmentId, Vec<String>>,
    /// Manifest bases, by (sequence, snapshot).
    pub bases: BTreeMap<(u64, SnapshotId), String>,
    /// Relocation records that check out, by old segment.
    pub relocations: BTreeMap<SegmentId, Vec<CheckedRelocation>>,
    /// Every relocation record key, checked or not.
    pub relocation_keys: Vec<String>,
    /// Collection records waiting for their second phase, oldest first.
    pub pending: Vec<Pending>,
    /// Verified run records of trusted writers, by key.
    pub runs: Vec<(String, RunRecord)>,
    /// Where each member a kept snapshot needs is now, and how much of it.
    pub live: BTreeMap<SegmentId, BTreeMap<MemberId, LiveMember>>,
    /// Relocation records that lead a kept snapshot's member somewhere.
    pub used_relocations: BTreeSet<String>,
    /// Segments some verified manifest (kept or forgotten) or relocation
    /// record names.
    pub named: BTreeSet<SegmentId>,
    /// Segments an object that does not verify may need: left alone.
    pub protected: BTreeSet<SegmentId>,
    /// Objects that stop every deletion while they stand, and why.
    pub blocking: Vec<(String, String)>,
    /// What was found wrong or ignored, by object (for the report).
    pub notes: Vec<(String, String)>,
    summaries: std::sync::Mutex<HashMap<SegmentId, Option<Arc<Summary>>>>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Mark {
    /// Reads and verifies everything: the keyset (`keyset`, already
    /// trusted), every manifest, retention record, relocation record,
    /// collection record and run record, and works out the live set.
    pub(crate) fn load(store: &Store, rt: &Handle, keyset: Keyset) -> Result<Mark> {
        let source = StoreSource::new(store.clone(), rt.clone());
        let trust = Trust::new(keyset.clone());
        let listing = snapshot_listing(&source, &trust, 0)
            .map_err(|e| Error::restore("cannot read the snapshots", e))?;
        let list = |prefix: &str| rt.block_on(store.list(prefix));
        let mut m = Mark {
            store: store.clone(),
            rt: rt.clone(),
            now: cbfs_core::now().unix_timestamp(),
            segments: BTreeMap::new(),
            summary_keys: BTreeMap::new(),
            lockboxes: BTreeMap::new(),
            bases: BTreeMap::new(),
            relocations: BTreeMap::new(),
            relocation_keys: Vec::new(),
            pending: Vec::new(),
            runs: Vec::new(),
            live: BTreeMap::new(),
            used_relocations: BTreeSet::new(),
            named: BTreeSet::new(),
            protected: BTreeSet::new(),
            blocking: Vec::new(),
            notes: Vec::new(),
            summaries: std::sync::Mutex::new(HashMap::new()),
            source,
            keyset,
            trust,
            listing,
        };
        for o in list(layout::SUMMARIES)? {
            let id = o
                .key
                .strip_prefix(layout::SUMMARIES)
                .and_then(|n| n.strip_suffix(".summary"))
                .and_then(|n| n.parse::<SegmentId>().ok());
            if let Some(id) = id {
                m.summary_keys.insert(id, o.key);
            }
        }
        for o in list(layout::LOCKBOXES)? {
            let id = o
                .key
                .strip_prefix(layout::LOCKBOXES)
                .and_then(|n| n.split_once('/'))
                .and_then(|(s, _)| s.parse::<SegmentId>().ok());
            if let Some(id) = id {
                m.lockboxes.entry(id).or_default().push(o.key);
            }
        }
        // Segments are listed after their summaries and lockboxes: a writer
        // uploads a segment before those, so a summary or lockbox seen here
        // never belongs to a segment written after the listing.
        for o in list(layout::SEGMENTS)? {
            if let Some(id) = layout::parse_segment(&o.key) {
                m.segments.insert(id, o);
            }
        }
        for o in list(layout::BASES)? {
            if let Some(name) = layout::parse_base(&o.key) {
                m.bases.insert(name, o.key);
            }
        }
        m.load_relocations()?;
        m.load_collections()?;
        m.load_runs()?;
        m.mark_live();
        m.mark_unverifiable()?;
        Ok(m)
    }

    /// A segment's summary, read once; `None` if it is missing or damaged.
    pub(crate) fn summary(&self, segment: &SegmentId) -> Option<Arc<Summary>> {
        if let Some(s) = self.summaries.lock().expect("summaries").get(segment) {
            return s.clone();
        }
        let key = layout::summary(segment);
        let s = self
            .source
            .get(&key)
            .ok()
            .and_then(|b| Summary::from_bytes(&b).ok())
            .filter(|s| s.segment_id() == *segment)
            .map(Arc::new);
        self.summaries
            .lock()
            .expect("summaries")
            .insert(*segment, s.clone());
        s
    }

    /// A segment object's age in seconds, by the store's clock of writing
    /// and ours of now.
    pub(crate) fn age(&self, info: &ObjectInfo) -> i64 {
        self.now - unix(info.last_modified)
    }

    fn note(&mut self, object: impl Into<String>, why: impl Into<String>) {
        self.notes.push((object.into(), why.into()));
    }

    fn load_relocations(&mut self) -> Result<()> {
        let mut parsed: Vec<(String, Relocation)> = Vec::new();
        for o in self.rt.block_on(self.store.list(layout::RELOCATIONS))? {
            let Some((old, new)) = layout::parse_relocation(&o.key) else {
                continue;
            };
            self.relocation_keys.push(o.key.clone());
            let record = match self
                .source
                .get(&o.key)
                .map_err(|e| e.to_string())
                .and_then(|b| Relocation::from_bytes(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    self.note(&o.key, format!("not used: {e}"));
                    continue;
                }
            };
            if (record.old_segment(), record.new_segment()) != (old, new) {
                self.note(&o.key, "not used: it does not hold what its name says");
                continue;
            }
            parsed.push((o.key, record));
        }
        // Segments some record moves members out of: a compacted segment
        // compacted again, and deleted since, is a hop on the way.
        let moved_on: BTreeSet<SegmentId> = parsed.iter().map(|(_, r)| r.old_segment()).collect();
        for (key, record) in parsed {
            let new = record.new_segment();
            // Every move must land on the new segment's summary exactly;
            // a move into a segment that is gone only leads on to the
            // records out of it (where the landing is checked in turn).
            let checked = match self.summary(&new) {
                _ if !self.segments.contains_key(&new) && moved_on.contains(&new) => Ok(()),
                None => Err(format!(
                    "the summary of segment {new} is missing or damaged"
                )),
                Some(_) if !self.segments.contains_key(&new) => {
                    Err(format!("segment {new} is not in the store"))
                }
                Some(s) => record
                    .entries()
                    .iter()
                    .find(|e| s.entry(&e.member) != Some(e))
                    .map_or(Ok(()), |e| {
                        Err(format!(
                            "member {} is not where its summary says in segment {new}",
                            e.member
                        ))
                    }),
            };
            match checked {
                Ok(()) => self
                    .relocations
                    .entry(record.old_segment())
                    .or_default()
                    .push(CheckedRelocation { key, record }),
                Err(e) => self.note(&key, format!("not followed: {e}")),
            }
        }
        Ok(())
    }

    fn load_collections(&mut self) -> Result<()> {
        for o in self.rt.block_on(self.store.list(layout::COLLECTIONS))? {
            if !layout::is_collection(&o.key) {
                continue;
            }
            let bytes = self.rt.block_on(self.store.get(&o.key))?;
            match Collection::from_bytes(&bytes) {
                Ok(record) => self.pending.push(Pending {
                    key: o.key,
                    hash: Sha256::digest(&bytes).into(),
                    record,
                }),
                Err(e) => self.note(&o.key, format!("not a collection record, ignored: {e}")),
            }
        }
        self.pending.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(())
    }

    fn load_runs(&mut self) -> Result<()> {
        for o in self.rt.block_on(self.store.list(layout::RUNS))? {
            if !layout::is_run_record(&o.key) {
                continue;
            }
            let bytes = self.rt.block_on(self.store.get(&o.key))?;
            match RunRecord::from_bytes(&bytes) {
                Ok(r) if !self.trust.writer(r.writer()).is_untrusted() => {
                    self.runs.push((o.key, r))
                }
                Ok(_) => self.note(
                    &o.key,
                    "signed by a key the keyset does not register, ignored",
                ),
                Err(e) => self.note(&o.key, format!("ignored: {e}")),
            }
        }
        Ok(())
    }

    /// Where a member a manifest names at (`segment`, `member`) is now,
    /// following checked relocation records; and the records used.
    pub(crate) fn resolve(
        &self,
        segment: SegmentId,
        member: &MemberId,
        sha256: &[u8; 32],
    ) -> (SegmentId, Vec<String>) {
        let mut at = segment;
        let mut used = Vec::new();
        let mut seen = BTreeSet::from([at]);
        for _ in 0..MAX_HOPS {
            let next = self.relocations.get(&at).and_then(|rs| {
                rs.iter()
                    .find(|r| r.record.entry(member).is_some_and(|e| e.sha256 == *sha256))
            });
            let Some(r) = next else { break };
            let to = r.record.new_segment();
            if !seen.insert(to) {
                break;
            }
            used.push(r.key.clone());
            at = to;
        }
        (at, used)
    }

    fn mark_live(&mut self) {
        let mut live: BTreeMap<SegmentId, BTreeMap<MemberId, LiveMember>> = BTreeMap::new();
        let mut used = BTreeSet::new();
        let mut missing: Vec<(String, String)> = Vec::new();
        for snap in &self.listing.kept {
            for e in snap.manifest().entries() {
                let (at, via) = self.resolve(e.segment, &e.member, &e.sha256);
                used.extend(via);
                if !self.segments.contains_key(&at) {
                    missing.push((
                        snap.key().to_owned(),
                        format!(
                            "needs member {} of segment {at}, which the store does not hold",
                            e.member
                        ),
                    ));
                }
                let m = live
                    .entry(at)
                    .or_default()
                    .entry(e.member)
                    .or_insert(LiveMember {
                        sha256: e.sha256,
                        files: 0,
                    });
                m.files = m.files.max(e.slots.len());
            }
        }
        let mut named = BTreeSet::new();
        for snap in self
            .listing
            .kept
            .iter()
            .chain(self.listing.forgotten.iter().map(|(s, _)| s))
        {
            named.extend(snap.manifest().entries().iter().map(|e| e.segment));
        }
        for (old, rs) in &self.relocations {
            named.insert(*old);
            named.extend(rs.iter().map(|r| r.record.new_segment()));
        }
        missing.sort();
        missing.dedup();
        for (object, why) in missing {
            self.note(object, why);
        }
        self.live = live;
        self.used_relocations = used;
        self.named = named;
    }

    /// Objects under `snapshots/` that do not verify: whatever they name is
    /// left alone, unless a pending collection deletes them already (a
    /// forgotten manifest whose chain a crash cut). One that cannot even be
    /// read stops every deletion.
    fn mark_unverifiable(&mut self) -> Result<()> {
        let collected: BTreeSet<&str> = self
            .pending
            .iter()
            .flat_map(|p| p.record.objects().iter().map(String::as_str))
            .collect();
        let ignored: Vec<(String, String)> = self
            .listing
            .ignored
            .iter()
            .filter(|(key, _)| layout::parse_manifest(key).is_some())
            .filter(|(key, _)| !collected.contains(key.as_str()))
            .cloned()
            .collect();
        for (key, why) in ignored {
            let entries: std::result::Result<Vec<ManifestEntry>, String> = self
                .source
                .get(&key)
                .map_err(|e| e.to_string())
                .and_then(|b| unverified_entries(&b).map_err(|e| e.to_string()));
            match entries {
                Ok(entries) => {
                    let mut segments: BTreeSet<SegmentId> =
                        entries.iter().map(|e| e.segment).collect();
                    // And wherever their members were moved.
                    let mut frontier: Vec<SegmentId> = segments.iter().copied().collect();
                    while let Some(s) = frontier.pop() {
                        for r in self.relocations.get(&s).into_iter().flatten() {
                            if segments.insert(r.record.new_segment()) {
                                frontier.push(r.record.new_segment());
                            }
                        }
                    }
                    self.note(
                        &key,
                        format!(
                            "does not verify ({why}): the {} segments it names are left alone",
                            segments.len()
                        ),
                    );
                    self.protected.extend(segments);
                }
                Err(e) => self.blocking.push((
                    key.clone(),
                    format!(
                        "does not verify ({why}) and cannot be read ({e}): it might name any segment, so nothing is deleted while it is in the store; remove it if it is not a manifest of yours"
                    ),
                )),
            }
        }
        Ok(())
    }

    /// The members of `segment` that are live, with their summary entries,
    /// in segment order; and how many bytes of the segment they take.
    pub(crate) fn live_in(&self, summary: &Summary) -> (Vec<SummaryEntry>, u64) {
        let Some(live) = self.live.get(&summary.segment_id()) else {
            return (Vec::new(), 0);
        };
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in summary.entries() {
            if live.get(&e.member).is_some_and(|l| l.sha256 == e.sha256) {
                bytes += e.end_offset() - e.header_offset;
                out.push(e.clone());
            }
        }
        (out, bytes)
    }

    /// Whether a kept snapshot needs a member of `segment`, where it is.
    pub(crate) fn has_live(&self, segment: &SegmentId) -> bool {
        self.live.get(segment).is_some_and(|m| !m.is_empty())
    }

    /// The writers seen in the last `window` seconds: by the manifests they
    /// signed and the run records they wrote. Keys as compressed bytes.
    pub(crate) fn active_writers(&self, window: i64) -> BTreeMap<Vec<u8>, String> {
        let since = self.now - window;
        let mut out = BTreeMap::new();
        let name = |k: &cbfs_core::umbral_pre::PublicKey| {
            self.keyset
                .writers()
                .iter()
                .find(|(_, w)| *w == k)
                .map_or_else(|| cbfs_core::fingerprint(k), |(n, _)| n.to_string())
        };
        for snap in self
            .listing
            .kept
            .iter()
            .chain(self.listing.forgotten.iter().map(|(s, _)| s))
        {
            let m = snap.manifest();
            if m.created_unix() >= since {
                out.insert(
                    m.writer_key().to_compressed_bytes().to_vec(),
                    name(m.writer_key()),
                );
            }
        }
        for (_, r) in &self.runs {
            if r.finished_unix() >= since {
                out.insert(r.writer().to_compressed_bytes().to_vec(), name(r.writer()));
            }
        }
        out
    }
}
